"""Finding, downloading and checking dataset files: the part every loader shares.

A dataset file is looked for, in this order:

1. the ``data_dir`` passed to the loader: the dataset's own folder, or a folder holding ``<name>/``;
2. ``$ARC_DATA_DIR/<name>/``: offline copies (CI points it at its offline copy of every dataset);
3. ``data/cache/<name>/``: this repository's download cache (git-ignored).

If it is in none of them it is downloaded into ``data/cache/<name>/`` from its canonical URL
(mirrors tried in turn). A download streams into a temporary file beside the target, is checked
against the file's pinned checksum, and only then renamed into place (``os.replace`` is atomic), so
an interrupted or corrupted download never leaves a file that looks complete. Some files are
published inside an archive (PTB's ``ptb.zip``): then the archive is found or downloaded the same
way, and the one member wanted is extracted into the cache, atomically too.

A checksum is written ``"algorithm:hexdigest"`` (``"sha256:8424..."``, ``"sha1:..."``, ``"md5:..."``,
any algorithm ``hashlib`` guarantees); a bare hexdigest names its algorithm by its length (32 hex
digits: md5, 40: sha1, 64: sha256).

Files found locally are not hashed against the official checksum (an offline copy may be a faithful
rebuild); each loader validates their structure instead. Every failure raises ``DataError`` with
one message that names the file, where it comes from, and ``ARC_DATA_DIR``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.request
import zipfile
import zlib
from pathlib import Path

from tqdm import tqdm

CACHE_DIR = Path(__file__).resolve().parent / "cache"
CHUNK = 1 << 16


class DataError(RuntimeError):
    """A dataset file is missing, cannot be downloaded, or is not what it should be."""


def data_error(problem: str, path: Path | str, url: str) -> DataError:
    """Build the one error message every loader uses: what went wrong, which file, from where, what to do.

    A file that exists here is never downloaded again, so the fix for a damaged local file is to
    delete or replace it; for a missing file it is the internet or ``ARC_DATA_DIR``.
    """
    path = Path(path)
    arc = os.environ.get("ARC_DATA_DIR") or "<unset>"
    if path.is_file():
        fix = (
            f"delete or replace {path} with a good copy (a deleted file is downloaded again into "
            f"{CACHE_DIR / path.parent.name} when the internet is reachable)"
        )
    else:
        fix = (
            "connect to the internet so the file can be downloaded, or set ARC_DATA_DIR to a folder "
            f"that holds {path.parent.name}/{path.name}"
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
        arc = Path(os.environ["ARC_DATA_DIR"])
        if not arc.is_dir():  # a mistyped or missing offline folder: say so rather than download
            raise DataError(
                f"ARC_DATA_DIR={arc} is not a folder: point it at a folder that holds {name}/, or unset it "
                "to use data/cache and downloads"
            )
        dirs.append(arc / name)
    dirs.append(CACHE_DIR / name)
    return dirs


def find(name: str, filename: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first of ``candidate_dirs(name, data_dir)`` that holds ``filename``, as a path; else None."""
    for d in candidate_dirs(name, data_dir):
        if (d / filename).is_file():
            return d / filename
    return None


def fetch(
    name: str,
    filename: str,
    urls: list[str],
    checksum: str,
    data_dir=None,
    member_of: tuple[str, str] | None = None,
) -> Path:
    """Return the path of ``filename`` of dataset ``name``: found locally, else downloaded.

    ``urls`` and ``checksum`` are those of the download. With ``member_of=(archive, member)`` the
    download is the zip ``archive`` (itself found locally or downloaded), and ``filename`` is its
    ``member``, extracted into ``data/cache/<name>/``.
    """
    parse_checksum(checksum)  # a malformed checksum is a bug: say so before any lookup
    found = find(name, filename, data_dir)
    if found:
        return found
    if member_of is None:
        return download(urls, CACHE_DIR / name / filename, checksum)
    archive, member = member_of
    return extract(fetch(name, archive, urls, checksum, data_dir), member, CACHE_DIR / name / filename, urls[0])


def parse_checksum(checksum: str) -> tuple[str, str]:
    """``"sha1:09ab..."`` -> ("sha1", "09ab..."); a bare hexdigest -> its algorithm by length."""
    algorithm, _, hexdigest = checksum.rpartition(":")
    hexdigest = hexdigest.lower()
    algorithm = algorithm.lower() or {32: "md5", 40: "sha1", 64: "sha256"}.get(len(hexdigest), "")
    if algorithm not in hashlib.algorithms_guaranteed:
        raise ValueError(f"checksum {checksum!r}: write it as 'algorithm:hexdigest', e.g. 'sha256:8424...'")
    size = hashlib.new(algorithm).digest_size
    if len(hexdigest) != 2 * size or not all(c in "0123456789abcdef" for c in hexdigest):
        raise ValueError(f"checksum {checksum!r}: a {algorithm} hexdigest is {2 * size} hex digits")
    return algorithm, hexdigest


def download(urls: list[str], dest: Path, checksum: str, timeout: float = 30.0) -> Path:
    """Download the first mirror in ``urls`` whose bytes match ``checksum`` into ``dest``, atomically."""
    parse_checksum(checksum)
    dest = Path(dest)
    made = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]  # folders we create
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        try:
            _download_one(url, dest, checksum, timeout)
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


def _download_one(url: str, dest: Path, checksum: str, timeout: float) -> None:
    algorithm, expected = parse_checksum(checksum)
    digest = hashlib.new(algorithm)
    with atomic_write(dest) as f, urllib.request.urlopen(url, timeout=timeout) as r:
        total = int(r.headers.get("Content-Length") or 0) or None
        bar = tqdm(
            total=total, unit="B", unit_scale=True, desc=f"download {dest.name}", disable=not sys.stdout.isatty()
        )
        with bar:
            while chunk := r.read(CHUNK):
                f.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        if digest.hexdigest() != expected:  # raised inside atomic_write: the bytes are thrown away
            raise data_error(
                f"checksum mismatch for {dest.name}: {algorithm} {digest.hexdigest()}, expected {expected}",
                dest,
                url,
            )


def extract(archive: Path, member: str, dest: Path, url: str) -> Path:
    """Extract ``member`` of the zip ``archive`` to ``dest``, atomically; a bad archive is a DataError.

    Every member of a zip carries a CRC-32 that ``zipfile`` checks while reading, so a damaged
    archive is caught here even when it was found locally rather than downloaded and hashed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_write(dest) as f, zipfile.ZipFile(archive) as z, z.open(member) as m:
            while chunk := m.read(CHUNK):
                f.write(chunk)
    except KeyError:
        raise data_error(f"{Path(archive).name} has no member {member}", archive, url) from None
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:  # truncated, not a zip, or a CRC error
        raise data_error(f"{Path(archive).name} is truncated, damaged or not a zip ({exc})", archive, url) from None
    return dest


@contextlib.contextmanager
def atomic_write(dest: Path):
    """Open a temporary file beside ``dest`` for writing; rename it to ``dest`` only if the block succeeds.

    The temporary file lives in dest's folder so that the final rename stays on one filesystem
    (``os.replace`` is then atomic). Any failure, Ctrl-C included, deletes it: nothing half-written
    is ever left under the name ``dest``.
    """
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
