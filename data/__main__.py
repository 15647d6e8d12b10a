"""Fetch and check the datasets: ``python -m data [fashion-mnist timemachine ...]`` (``make data``).

Each dataset is resolved exactly as the loaders resolve it (``data_dir``, ``$ARC_DATA_DIR``,
``data/cache``, else a checksummed download into ``data/cache``), then loaded once so that its
files are validated, and the folder each file came from is printed. Run it once with the internet
to have everything offline afterwards; ``make test`` runs it first, so tests never download.
"""

import argparse
import sys

from . import fmnist, text, translation
from .files import DataError


def fetch_fashion_mnist(data_dir=None) -> list[str]:
    lines = []
    for split in ("train", "test"):
        images, _ = fmnist.fashion_mnist(split, data_dir)
        paths = fmnist.files(split, data_dir)
        lines.append(f"  {split}: {len(images)} images  {paths['images'].parent}")
    return lines


def fetch_text(*files: text.TextFile):
    """The fetcher of a text corpus made of ``files`` (PTB: its three splits)."""

    def fetch(data_dir=None) -> list[str]:
        return [f"  {f.filename}: {len(f.read(data_dir)):,} characters  {f.path(data_dir).parent}" for f in files]

    return fetch


def fetch_fra_eng(data_dir=None) -> list[str]:
    path = translation.fetch(
        "fra-eng",
        "fra.txt",
        [translation.FRA_ENG_URL],
        translation.FRA_ENG_CHECKSUM,
        data_dir,
        translation.FRA_ENG_MEMBER,
    )
    return [f"  fra.txt: {len(translation.fra_eng(data_dir)):,} pairs  {path.parent}"]


DATASETS = {
    "fashion-mnist": fetch_fashion_mnist,
    "timemachine": fetch_text(text.TIMEMACHINE),
    "tinyshakespeare": fetch_text(text.TINYSHAKESPEARE),
    "ptb": fetch_text(*text.PTB.values()),
    "fra-eng": fetch_fra_eng,
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m data", description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", metavar="NAME", help=f"datasets to fetch (default all: {', '.join(DATASETS)})")
    p.add_argument("--data-dir", default=None, help="a folder to look in first")
    args = p.parse_args(argv)
    unknown = sorted(set(args.names) - set(DATASETS))
    if unknown:
        p.error(f"unknown dataset(s) {', '.join(unknown)}; known: {', '.join(DATASETS)}")
    for name in args.names or DATASETS:
        try:
            lines = DATASETS[name](args.data_dir)
        except DataError as exc:
            sys.exit(f"error: {exc}")
        print(f"{name}: ok", *lines, sep="\n")


if __name__ == "__main__":
    main()
