"""Shared test helpers: import a script by its path (topic folders start with digits); no internet;
a local HTTP server for the download tests of data/."""

import functools
import http.server
import importlib.util
import os
import socket
import sys
import threading
from pathlib import Path

# `pytest -n auto` runs one worker per core. Each worker's BLAS, OpenMP and XLA thread pools must
# then use one thread: several multi-threaded processes on two cores busy-wait against each other
# and run tens of times slower. (Set before numpy, torch or jax is first imported.)
if os.environ.get("PYTEST_XDIST_WORKER"):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    assert "numpy" not in sys.modules, "numpy was imported before conftest could limit its threads"

import pytest

ROOT = Path(__file__).resolve().parent.parent


def import_script(relpath: str):
    """Import ``relpath`` (for example "01-foundations/mlp_numpy.py") as a module, once per process."""
    path = ROOT / relpath
    name = "arc_" + path.stem + "_" + path.parent.name.replace("-", "_")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def load_script():
    """The ``import_script`` function as a fixture: ``mlp = load_script("01-foundations/mlp_numpy.py")``."""
    return import_script


LOCAL_HOSTS = {None, "127.0.0.1", "::1", "localhost"}


@pytest.fixture(autouse=True)
def no_internet(monkeypatch):
    """Tests never touch the internet: looking up or connecting to any host but this machine fails at once.

    Datasets come from $ARC_DATA_DIR or data/cache (`make data` fills it); download tests use a
    local HTTP server.
    """
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOCAL_HOSTS:
            raise socket.gaierror(f"tests must not use the network (looked up {host!r})")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL_HOSTS:
            raise ConnectionRefusedError(f"tests must not use the network (connected to {address!r})")
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder, records every requested path on its server, and logs nothing."""

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


class LocalServer:
    """A ThreadingHTTPServer on 127.0.0.1 (free port) serving ``root`` from a background thread."""

    def __init__(self, root: Path):
        self.root = root
        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root))
        )
        self.httpd.requests = []
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        # A short poll interval lets shutdown() return at once instead of after the default 0.5 s.
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests

    def serve(self, name: str, content: bytes) -> str:
        """Put ``content`` at ``name`` and return its URL."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return self.url + name

    def close(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join()
            self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    """A quiet local HTTP server serving tmp_path/www, shut down after the test."""
    root = tmp_path / "www"
    root.mkdir()
    srv = LocalServer(root)
    yield srv
    srv.close()


@pytest.fixture
def offline(monkeypatch, tmp_path) -> Path:
    """No ARC_DATA_DIR and an empty download cache at tmp_path/cache (returned): only a download, or a
    data_dir, can supply a dataset."""
    import data.files

    monkeypatch.delenv("ARC_DATA_DIR", raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setattr(data.files, "CACHE_DIR", cache)
    return cache


def everything(folder: Path) -> list[Path]:
    """Every file and folder below ``folder``, hidden ``.part`` files included ([] if it is absent)."""
    return sorted(folder.rglob("*"))


@pytest.fixture
def missing_data_error(tmp_path, monkeypatch):
    """``missing_data_error(main)``: run ``main(["--smoke", ...])`` with no dataset anywhere (an empty
    ARC_DATA_DIR and download cache, no network) and return its one-line ``error: ...`` exit message.

    A script must answer missing data with that message (SystemExit with a string), never a traceback.
    """
    import data.files

    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("ARC_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(data.files, "CACHE_DIR", tmp_path / "cache")

    def run(main):
        with pytest.raises(SystemExit) as exc:
            main(["--smoke", "--out-dir", str(tmp_path / "out")])
        message = exc.value.code
        assert isinstance(message, str) and message.startswith("error: ") and "ARC_DATA_DIR" in message
        return message

    return run


@pytest.fixture
def usage_error(monkeypatch, capsys, tmp_path):
    """``usage_error(module, argv, loader="load_data")``: run ``module.main(["--smoke", ..., *argv])`` with its
    data loader made to fail the test, assert that it stops with exit code 2 before reading any data, and return
    the last line of stderr (argparse's ``error:`` line; the usage lines above it list every flag)."""

    def run(module, argv, loader="load_data"):
        monkeypatch.setattr(module, loader, lambda *a, **k: pytest.fail("data loaded before the flags were checked"))
        with pytest.raises(SystemExit) as exc:
            module.main(["--smoke", "--out-dir", str(tmp_path), *argv])
        assert exc.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert ": error:" in error, error
        return error

    return run


# Bad values of the flags every training script shares (argv, the flag its error must name).
COMMON_BAD_VALUES = [
    (["--batch-size", "0"], "--batch-size"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "0"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--hidden", "0"], "--hidden"),
    (["--seed", "-1"], "--seed"),
]

# The two GroupNorm scripts (JAX and PyTorch) share their flags, so their bad values too.
GROUPNORM_BAD_VALUES = [
    (["--bs-n-train", "0"], "--bs-n-train"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--batch-size", "0"], "--batch-size"),
    (["--folds", "1"], "--folds"),
    (["--hidden", "32", "32"], "--hidden"),
    (["--groups", "0"], "--groups"),
]
