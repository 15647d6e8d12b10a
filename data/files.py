"""Finding, downloading and checking dataset files: the part every loader shares.

A dataset file is looked for, in this order:

1. the ``data_dir`` passed to the loader: the dataset's own folder, or a folder holding ``<name>/``;
2. ``$ARC_DATA_DIR/<name>/``: offline copies (contributors point it at ``../shared/datasets``);
3. ``data/cache/<name>/``: this repository's download cache (git-ignored).

If it is in none of them it is downloaded into ``data/cache/<name>/`` from its canonical URL
(mirrors tried in turn). A download streams into a temporary file beside the target, is checked
against the file's pinned md5, and only then renamed into place (``os.replace`` is atomic), so an
interrupted or corrupted download never leaves a file that looks complete.

Files found locally are not hashed against the official md5 (an offline copy may be a faithful
rebuild); each loader validates their structure instead. Every failure raises ``DataError`` with
one message that names the file, where it comes from, and ``ARC_DATA_DIR``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

CACHE_DIR = Path(__file__).resolve().parent / "cache"
CHUNK = 1 << 16


class DataError(RuntimeError):
    """A dataset file is missing, cannot be downloaded, or is not what it should be."""


def data_error(problem: str, path: Path | str, url: str) -> DataError:
    """Build the one error message every loader uses: what went wrong, which file, from where."""
    arc = os.environ.get("ARC_DATA_DIR") or "<unset>"
    fix = (
        "connect to the internet so the file can be downloaded, or set ARC_DATA_DIR to a folder "
        f"that holds {Path(path).parent.name}/{Path(path).name}"
    )
    return DataError(
        f"{problem}\n  file:         {path}\n  source:       {url}\n  ARC_DATA_DIR: {arc}\n  fix:          {fix}"
    )


def candidate_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for dataset ``name``, in order (see the module docstring)."""
    dirs = []
    if data_dir:
        if not Path(data_dir).is_dir():  # a mistyped --data-dir: say so rather than download
            raise DataError(
                f"data_dir {data_dir} is not a folder (it should hold the {name} files or a {name}/ folder with them)"
            )
        dirs += [Path(data_dir) / name, Path(data_dir)]
    if os.environ.get("ARC_DATA_DIR"):
        dirs.append(Path(os.environ["ARC_DATA_DIR"]) / name)
    dirs.append(CACHE_DIR / name)
    return dirs


def fetch(name: str, filename: str, urls: list[str], md5: str, data_dir=None) -> Path:
    """Return the path of ``filename`` of dataset ``name``: found locally, else downloaded."""
    for d in candidate_dirs(name, data_dir):
        if (d / filename).is_file():
            return d / filename
    return download(urls, CACHE_DIR / name / filename, md5)


def download(urls: list[str], dest: Path, md5: str, timeout: float = 30.0) -> Path:
    """Download the first mirror in ``urls`` whose bytes hash to ``md5`` into ``dest``, atomically."""
    dest = Path(dest)
    made = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]  # folders we create
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        try:
            _download_one(url, dest, md5, timeout)
            return dest
        except DataError as exc:  # checksum mismatch: say so, try the next mirror
            failures.append(f"  - {url}: {str(exc).splitlines()[0]}")
        # no network, HTTP error, refused connection, truncated response, bad URL, disk full
        except (OSError, http.client.HTTPException, ValueError) as exc:
            failures.append(f"  - {url}: {type(exc).__name__}: {exc}")
    for d in made:  # innermost first; a failed download leaves no empty folders either
        if not any(d.iterdir()):
            d.rmdir()
    raise data_error(f"could not download {dest.name}:\n" + "\n".join(failures), dest, " or ".join(urls))


def _download_one(url: str, dest: Path, md5: str, timeout: float) -> None:
    # The temporary file lives beside dest so the final rename stays on one filesystem (atomic).
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as r:
            total = int(r.headers.get("Content-Length") or 0) or None
            bar = tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=f"download {dest.name}",
                disable=not sys.stdout.isatty(),
            )
            with bar:
                while chunk := r.read(CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != md5:
            raise data_error(
                f"checksum mismatch for {dest.name}: md5 {digest.hexdigest()}, expected {md5}",
                dest,
                url,
            )
        os.replace(tmp, dest)
    except BaseException:  # any failure, Ctrl-C included, leaves nothing behind
        Path(tmp).unlink(missing_ok=True)
        raise
