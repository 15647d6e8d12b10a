"""Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017): 70,000 28x28 grayscale images of clothing, 10 classes.

https://github.com/zalandoresearch/fashion-mnist. 60,000 training and 10,000 test images, 6,000 and
1,000 per class. The files are IDX, gzip-compressed: a big-endian header, then raw uint8 bytes.

    images: magic 2051 (0x00000803), count, rows=28, cols=28, then count*28*28 pixels, row-major
    labels: magic 2049 (0x00000801), count, then count labels in 0..9

``fashion_mnist(split)`` finds or downloads the two files of a split (see ``data.files``) and
validates each by its structure: readable gzip, magic number, declared count and size, exact byte
length, label range. Anything off raises ``DataError`` naming the file.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .files import data_error, fetch

NAME = "fashion-mnist"
MIRRORS = [
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
]
# Official md5 of each file, checked after every download.
FILES = {
    "train": {
        "images": ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        "labels": ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
    },
    "test": {
        "images": ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        "labels": ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    },
}
COUNTS = {"train": 60_000, "test": 10_000}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")  # fmt: skip
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049


def fashion_mnist(split: str = "train", data_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """Load one split: images uint8 (N, 28, 28) and labels int64 (N,), N = 60,000 or 10,000.

    ``data_dir``: a folder holding the four ``*-ubyte.gz`` files (or a ``fashion-mnist/`` folder
    with them); if not given, ``$ARC_DATA_DIR/fashion-mnist/``, then ``data/cache/fashion-mnist/``,
    then a download into that cache.
    """
    paths = files(split, data_dir)  # checks the split's name first
    n = COUNTS[split]
    urls = {kind: [m + fname for m in MIRRORS] for kind, (fname, _) in FILES[split].items()}
    images = read_idx(paths["images"], IMAGES_MAGIC, (n, 28, 28), urls["images"][0])
    labels = read_idx(paths["labels"], LABELS_MAGIC, (n,), urls["labels"][0])
    if labels.max() > 9:
        raise data_error(
            f"{paths['labels'].name} holds a label {labels.max()} outside 0..9",
            paths["labels"],
            urls["labels"][0],
        )
    return images, labels.astype(np.int64)


def files(split: str = "train", data_dir=None) -> dict:
    """The paths of a split's two files, {"images": Path, "labels": Path}, downloaded if need be."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    return {
        kind: fetch(NAME, fname, [m + fname for m in MIRRORS], md5, data_dir)
        for kind, (fname, md5) in FILES[split].items()
    }


def read_idx(path, magic: int, shape: tuple[int, ...], url: str = "") -> np.ndarray:
    """Read a gzip-compressed IDX file of uint8 values and check it holds exactly ``shape``."""
    path = Path(path)
    if not path.is_file():
        raise data_error(f"{path.name} does not exist", path, url)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # truncated or not gzip at all
        raise data_error(f"{path.name} is truncated or not a gzip file ({exc})", path, url) from None
    header = 4 * (1 + len(shape))  # magic, then one big-endian int32 per dimension
    if len(raw) < header:
        raise data_error(f"{path.name} is truncated: {len(raw)} bytes, shorter than its header", path, url)
    found_magic, *dims = np.frombuffer(raw[:header], dtype=">i4").tolist()
    if found_magic != magic:
        raise data_error(f"{path.name} has magic number {found_magic}, expected {magic}", path, url)
    if tuple(dims) != shape:
        raise data_error(f"{path.name} declares shape {tuple(dims)}, expected {shape}", path, url)
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise data_error(
            f"{path.name} is {len(raw)} bytes after decompression, expected {expected} "
            f"({'truncated' if len(raw) < expected else 'trailing bytes'})",
            path,
            url,
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()
