"""Tests of ``data``: the Fashion-MNIST loader on the real offline files, its structural checks on
corrupt files, and the download path against a real local HTTP server (the ``server`` fixture of
conftest.py). No test touches the internet: every test that could download points ``MIRRORS`` at
a local address first.
"""

import functools
import gzip
import hashlib
import os
import shutil
import socket
import struct
from pathlib import Path

import numpy as np
import pytest

import data.files
import data.fmnist as fm
from data import DataError, fashion_mnist

# The official counts: 6,000 (train) and 1,000 (test) images per class.
SPLITS = {"train": 60_000, "test": 10_000}


# %% helpers: IDX files, folders, a port nobody listens on


def idx_bytes(magic: int, dims: tuple[int, ...], body: bytes) -> bytes:
    """Uncompressed IDX bytes: big-endian int32 magic number and dimensions, then the uint8 body."""
    return struct.pack(f">{1 + len(dims)}i", magic, *dims) + body


def contents(folder: Path) -> list[Path]:
    """Everything below ``folder``: files, hidden ``.part`` files, folders (an absent folder: [])."""
    return sorted(folder.rglob("*"))


def closed_port_url() -> str:
    """A URL on 127.0.0.1 whose port was just free and is closed again: a connection is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def redirect_downloads(mp: pytest.MonkeyPatch, cache: Path, mirror: str) -> str:
    """Make ``cache`` the download cache and ``mirror`` the only Fashion-MNIST mirror; return it."""
    mp.setattr(data.files, "CACHE_DIR", cache)
    mp.setattr(fm, "MIRRORS", [mirror])
    return mirror


def copy_split(src: Path, dst: Path, split: str = "test") -> dict[str, Path]:
    """Copy the two files of ``split`` from ``src`` into ``dst``; return their new paths by kind."""
    dst.mkdir(parents=True, exist_ok=True)
    return {kind: Path(shutil.copy(src / fname, dst)) for kind, (fname, _) in fm.FILES[split].items()}


# %% fixtures


@pytest.fixture(scope="module")
def real_dir() -> Path:
    """The folder with the real Fashion-MNIST files: $ARC_DATA_DIR/fashion-mnist/ (CI: the offline copies)
    or, without ARC_DATA_DIR, the download cache that `make data` fills. Missing files fail, never skip."""
    root = Path(os.environ["ARC_DATA_DIR"]) if os.environ.get("ARC_DATA_DIR") else data.files.CACHE_DIR
    path = root.resolve() / fm.NAME
    missing = [f for split in fm.FILES.values() for f, _ in split.values() if not (path / f).is_file()]
    if missing:
        pytest.fail(f"no real Fashion-MNIST files {missing} in {path}: run `make data` or set ARC_DATA_DIR")
    return path


@pytest.fixture(scope="module")
def load_real(real_dir, tmp_path_factory):
    """``load_real(split)``: the split read from $ARC_DATA_DIR, at most once per module.

    The cache is an empty folder and the mirrors a closed port, so the arrays can only come from
    $ARC_DATA_DIR, and a missing file is a DataError, never a download. ARC_DATA_DIR is set afresh
    for the call: the first call may come from inside a test that has unset it.
    """

    @functools.cache
    def load(split: str):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("ARC_DATA_DIR", str(real_dir.parent))
            redirect_downloads(mp, tmp_path_factory.mktemp("empty-cache"), closed_port_url())
            return fashion_mnist(split)

    return load


@pytest.fixture
def offline(monkeypatch, tmp_path) -> str:
    """No ARC_DATA_DIR, an empty cache at tmp_path/cache, mirrors on a closed port (returned)."""
    monkeypatch.delenv("ARC_DATA_DIR", raising=False)
    return redirect_downloads(monkeypatch, tmp_path / "cache", closed_port_url())


@pytest.fixture
def dest(tmp_path) -> Path:
    """Where a test download goes: tmp_path/cache/blob/blob.bin, its folder not yet made."""
    return tmp_path / "cache" / "blob" / "blob.bin"


# %% the real files


@pytest.mark.parametrize("split", SPLITS)
def test_real_split_shapes_dtypes_and_class_counts(load_real, split):
    """Each real split is uint8 (N, 28, 28) images and int64 (N,) labels, N/10 of every class 0..9."""
    images, labels = load_real(split)
    n = SPLITS[split]
    assert images.dtype == np.uint8 and images.shape == (n, 28, 28)
    assert labels.dtype == np.int64 and labels.shape == (n,)
    assert labels.min() == 0 and labels.max() == 9
    assert np.bincount(labels, minlength=10).tolist() == [n // 10] * 10


def test_real_train_pixels_match_readme(load_real):
    """The train pixels are real images: full 0..255 range, mean 0.28611 as the dataset README says."""
    images, _ = load_real("train")
    assert images.min() == 0 and images.max() == 255
    assert images.mean() / 255 == pytest.approx(0.28611, abs=1e-5)


@pytest.mark.parametrize("as_root", [False, True], ids=["dataset-folder", "root-folder"])
def test_data_dir_argument(real_dir, offline, load_real, as_root):
    """``data_dir`` works as the fashion-mnist/ folder itself and as a root holding it.

    ARC_DATA_DIR is unset and the cache empty, so only ``data_dir`` can supply the files.
    """
    images, labels = fashion_mnist("test", data_dir=real_dir.parent if as_root else real_dir)
    expected_images, expected_labels = load_real("test")
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)


def test_missing_data_dir_is_reported_not_downloaded(offline, tmp_path):
    """A data_dir that does not exist (a mistyped --data-dir) is a DataError naming it."""
    with pytest.raises(DataError, match="no-such-folder"):
        fashion_mnist("test", data_dir=tmp_path / "no-such-folder")


def test_unknown_split_is_a_value_error(offline):
    """Only 'train' and 'test' exist: 'valid' is a ValueError, not a file lookup."""
    with pytest.raises(ValueError, match="valid"):
        fashion_mnist("valid")


# %% corrupt local files

SHAPE = (4, 3, 3)  # small images: read_idx is called directly, fashion_mnist() wants 10,000
BODY = bytes(range(36))
GOOD = idx_bytes(fm.IMAGES_MAGIC, SHAPE, BODY)
GOOD_GZ = gzip.compress(GOOD, mtime=0)
SOURCE = "http://mirror.invalid/sample-idx3-ubyte.gz"
# case -> (bytes on disk, words the error message must contain)
CORRUPT = {
    "truncated-gzip": (GOOD_GZ[: len(GOOD_GZ) // 2], "truncated or not a gzip"),
    "not-gzip": (GOOD, "truncated or not a gzip"),
    "shorter-than-header": (gzip.compress(GOOD[:6]), "shorter than its header"),
    "wrong-magic": (gzip.compress(idx_bytes(fm.LABELS_MAGIC, SHAPE, BODY)), "magic number 2049"),
    "count-mismatch": (gzip.compress(idx_bytes(fm.IMAGES_MAGIC, (5, 3, 3), BODY + bytes(9))), "declares"),
    "body-short": (gzip.compress(GOOD[:-1]), "truncated"),
    "trailing-bytes": (gzip.compress(GOOD + b"\0"), "trailing bytes"),
}


def test_read_idx_reads_a_valid_file(tmp_path):
    """The IDX writer used below makes valid files: read_idx returns exactly the body, reshaped."""
    path = tmp_path / "sample-idx3-ubyte.gz"
    path.write_bytes(GOOD_GZ)
    array = fm.read_idx(path, fm.IMAGES_MAGIC, SHAPE, SOURCE)
    np.testing.assert_array_equal(array, np.arange(36, dtype=np.uint8).reshape(SHAPE))


@pytest.mark.parametrize("case", CORRUPT)
def test_read_idx_rejects_corrupt_file(tmp_path, case):
    """Each kind of damage is a DataError naming the problem, the file and its source."""
    content, problem = CORRUPT[case]
    path = tmp_path / "sample-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(DataError) as exc:
        fm.read_idx(path, fm.IMAGES_MAGIC, SHAPE, SOURCE)
    message = str(exc.value)
    assert problem in message and str(path) in message and SOURCE in message


@pytest.mark.parametrize("case", ["truncated-download", "small-file"])
def test_loader_rejects_corrupt_local_images(real_dir, offline, tmp_path, monkeypatch, case):
    """Through fashion_mnist(): a half file, or a valid IDX with 3 images instead of the official
    10,000, is a DataError naming the file, its source URL and ARC_DATA_DIR with its value. The
    good copies under ARC_DATA_DIR are not used instead: data_dir comes first."""
    monkeypatch.setenv("ARC_DATA_DIR", str(real_dir.parent))
    paths = copy_split(real_dir, tmp_path / "local")
    images = paths["images"]
    if case == "truncated-download":
        images.write_bytes(images.read_bytes()[: images.stat().st_size // 2])
    else:
        images.write_bytes(gzip.compress(idx_bytes(fm.IMAGES_MAGIC, (3, 28, 28), bytes(3 * 784))))
    with pytest.raises(DataError) as exc:
        fashion_mnist("test", data_dir=images.parent)
    message = str(exc.value)
    assert str(images) in message and offline + images.name in message
    assert f"ARC_DATA_DIR: {real_dir.parent}" in message
    # a local file is never downloaded again: the fix is to delete or replace it, not the internet
    assert f"fix:          delete or replace {images}" in message and "connect to the internet" not in message


def test_loader_rejects_label_outside_0_to_9(real_dir, offline, tmp_path):
    """A structurally valid label file holding a 10 is a DataError naming the label, the file, its
    source URL and ARC_DATA_DIR."""
    paths = copy_split(real_dir, tmp_path / "local")
    with gzip.open(paths["labels"]) as f:
        labels = bytearray(f.read()[8:])
    labels[123] = 10
    paths["labels"].write_bytes(gzip.compress(idx_bytes(fm.LABELS_MAGIC, (len(labels),), bytes(labels))))
    with pytest.raises(DataError) as exc:
        fashion_mnist("test", data_dir=paths["labels"].parent)
    message = str(exc.value)
    assert "label 10" in message and str(paths["labels"]) in message
    assert offline + paths["labels"].name in message and "ARC_DATA_DIR" in message


# %% the download path, against a local HTTP server

CONTENT = np.random.default_rng(0).bytes(200_000)  # several 64 KiB chunks
CONTENT_MD5 = hashlib.md5(CONTENT).hexdigest()


def test_download_fetches_and_verifies(server, dest):
    """A download whose md5 matches lands at dest with exactly the served bytes, and nothing else."""
    url = server.serve("blob.bin", CONTENT)
    assert data.files.download([url], dest, CONTENT_MD5) == dest
    assert dest.read_bytes() == CONTENT
    assert contents(dest.parent) == [dest]


def test_download_checksum_mismatch_leaves_nothing(server, dest):
    """Served bytes that do not hash to the pinned md5 are a 'checksum' DataError; nothing is left,
    not even the folder the download made."""
    url = server.serve("blob.bin", CONTENT)
    with pytest.raises(DataError, match="checksum") as exc:
        data.files.download([url], dest, "0" * 32)
    assert server.requests == ["/blob.bin"]  # the bytes were fetched, then rejected
    assert str(dest) in str(exc.value) and url in str(exc.value)
    assert contents(dest.parent.parent) == []


def test_download_404_leaves_nothing(server, dest):
    """A missing file on the server (HTTP 404) is a DataError naming the URL; nothing is left."""
    url = server.url + "blob.bin"
    with pytest.raises(DataError, match="404") as exc:
        data.files.download([url], dest, CONTENT_MD5)
    assert str(dest) in str(exc.value) and url in str(exc.value)
    assert contents(dest.parent.parent) == []


@pytest.mark.parametrize("first", ["404", "wrong-bytes"])
def test_download_falls_back_to_second_mirror(server, dest, first):
    """When the first mirror answers 404, or serves bytes with the wrong md5, the second mirror is
    tried and its verified bytes are kept, with no leftover from the first attempt."""
    if first == "wrong-bytes":
        server.serve("bad/blob.bin", CONTENT[::-1])
    good = server.serve("good/blob.bin", CONTENT)
    data.files.download([server.url + "bad/blob.bin", good], dest, CONTENT_MD5)
    assert server.requests == ["/bad/blob.bin", "/good/blob.bin"]
    assert dest.read_bytes() == CONTENT
    assert contents(dest.parent) == [dest]


def test_download_without_network_leaves_nothing(dest):
    """A refused connection (the no-network case) is a DataError naming the file; nothing is left."""
    url = closed_port_url() + "blob.bin"
    with pytest.raises(DataError) as exc:
        data.files.download([url], dest, CONTENT_MD5)
    assert str(dest) in str(exc.value) and url in str(exc.value)
    assert contents(dest.parent.parent) == []


def test_fashion_mnist_downloads_then_reads_cache(real_dir, load_real, server, tmp_path, monkeypatch):
    """With no ARC_DATA_DIR, fashion_mnist() downloads the split into the cache, checks its md5s and
    returns the right arrays; a second call, with the server shut down, reads the cache and makes
    no request at all."""
    served = copy_split(real_dir, server.root)
    monkeypatch.delenv("ARC_DATA_DIR", raising=False)
    redirect_downloads(monkeypatch, tmp_path / "cache", server.url)
    # The served files are the rebuilt offline copies, so pin their md5s instead of the official ones.
    md5s = {kind: (p.name, hashlib.md5(p.read_bytes()).hexdigest()) for kind, p in served.items()}
    monkeypatch.setitem(fm.FILES, "test", md5s)
    expected_images, expected_labels = load_real("test")

    images, labels = fashion_mnist("test")
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)
    assert sorted(server.requests) == sorted("/" + p.name for p in served.values())
    cache = tmp_path / "cache" / fm.NAME
    assert contents(cache) == sorted(cache / p.name for p in served.values())
    assert all((cache / p.name).read_bytes() == p.read_bytes() for p in served.values())

    server.close()
    requests = list(server.requests)
    images, labels = fashion_mnist("test")
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)
    assert server.requests == requests


def test_fashion_mnist_without_network_or_files(offline, tmp_path):
    """No ARC_DATA_DIR, an empty cache, no network: one DataError naming the file, its source URL and
    ARC_DATA_DIR, and the cache is left empty (not even a fashion-mnist/ folder)."""
    with pytest.raises(DataError) as exc:
        fashion_mnist("test")
    message = str(exc.value)
    assert "t10k-images-idx3-ubyte.gz" in message
    assert offline + "t10k-images-idx3-ubyte.gz" in message and "ARC_DATA_DIR" in message
    assert "fix:          connect to the internet" in message
    assert contents(tmp_path / "cache") == []


def test_arc_data_dir_that_is_not_a_folder_is_reported(offline, tmp_path, monkeypatch):
    """A mistyped ARC_DATA_DIR is named in one DataError, not silently skipped for a download."""
    monkeypatch.setenv("ARC_DATA_DIR", str(tmp_path / "no-such-folder"))
    with pytest.raises(DataError, match=r"ARC_DATA_DIR=.*no-such-folder is not a folder"):
        fashion_mnist("test")
    assert not (tmp_path / "cache").exists()


def test_tests_cannot_reach_the_internet():
    """The autouse guard in conftest.py: a lookup of a real host fails at once, so no test can download."""
    import urllib.request

    with pytest.raises(OSError, match="must not use the network"):
        urllib.request.urlopen("http://example.com/", timeout=5)
