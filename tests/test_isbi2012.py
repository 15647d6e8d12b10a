"""Tests of ``data.isbi2012``: the real slices and masks, the fixed train/val split, the lookup order, the
structural checks on damaged local files, and the download path (checksums) against a local HTTP server."""

import hashlib
import importlib
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg
from PIL import Image

import data.files
from data import DataError, isbi2012

isbi = importlib.import_module("data.membranes")  # the module of data.isbi2012


@pytest.fixture(scope="module")
def real_dir() -> Path:
    """$ARC_DATA_DIR/isbi2012-membrane/ (or the download cache); missing files fail, never skip."""
    root = Path(os.environ["ARC_DATA_DIR"]) if os.environ.get("ARC_DATA_DIR") else data.files.CACHE_DIR
    path = root.resolve() / isbi.NAME
    if not (path / "train/label/29.png").is_file():
        pytest.fail(f"no ISBI 2012 files in {path}: set ARC_DATA_DIR")
    return path


def copy_val(real_dir, dst) -> Path:
    """Copy the 10 files of the val split (slices 25-29, images and masks) into dst/isbi2012-membrane/."""
    for folder in ("train/image", "train/label"):
        (dst / isbi.NAME / folder).mkdir(parents=True)
        for i in isbi.SPLITS["val"]:
            shutil.copy(real_dir / folder / f"{i}.png", dst / isbi.NAME / folder)
    return dst / isbi.NAME


def test_real_splits(real_dir, monkeypatch):
    """25 + 5 labelled slices and 30 test slices, float32 in [0, 1]; masks uint8 {0, 1} with 1 = cell (the
    PNG's 255); ~22% membrane (the README), measured 0.2238 on train and 0.1990 on val."""
    monkeypatch.setenv("ARC_DATA_DIR", str(real_dir.parent))
    (Xtr, Ytr), (Xva, Yva), (Xte, Yte) = (isbi2012(s) for s in ("train", "val", "test"))
    assert Xtr.shape == Ytr.shape == (25, 512, 512) and Xva.shape == Yva.shape == (5, 512, 512)
    assert Xte.shape == (30, 512, 512) and Yte is None
    for X in (Xtr, Xva, Xte):
        assert X.dtype == np.float32 and 0 <= X.min() < 0.1 and 0.9 < X.max() <= 1
    for Y in (Ytr, Yva):
        assert Y.dtype == np.uint8 and set(np.unique(Y)) == {0, 1}
    assert 1 - Ytr.mean() == pytest.approx(0.2238, abs=1e-4) and 1 - Yva.mean() == pytest.approx(0.1990, abs=1e-4)
    # the split is slices 0-24 / 25-29 of the files, and cell = 255 in the PNG
    label = mpimg.imread(real_dir / "train/label/27.png")
    np.testing.assert_array_equal(Yva[2], (label == 1).astype(np.uint8))
    np.testing.assert_array_equal(Xtr[24], mpimg.imread(real_dir / "train/image/24.png"))
    np.testing.assert_array_equal(Xte[3], mpimg.imread(real_dir / "test/image/3.png"))
    assert not any(np.array_equal(a, b) for a in Xva for b in Xtr)


def test_pinned_checksums_are_the_readme_and_the_files(real_dir):
    """The 90 pinned sha256s are those of the dataset README and of the real files."""
    readme = (real_dir / "README.md").read_text()
    listed = {f"{f}/{i}": h for f, i, h in re.findall(r"`(\w+/\w+)/(\d+)\.png` \| \d+ \| `([0-9a-f]{64})`", readme)}
    assert len(listed) == 90
    for folder, digests in isbi.SHA256.items():
        assert len(digests) == 30
        for i, h in enumerate(digests):
            digest = hashlib.sha256((real_dir / folder / f"{i}.png").read_bytes()).hexdigest()
            assert listed[f"{folder}/{i}"] == h == digest, f"{folder}/{i}.png"


@pytest.mark.parametrize("as_root", [False, True], ids=["dataset-folder", "root-folder"])
def test_data_dir_argument(real_dir, offline, tmp_path, as_root):
    """With no ARC_DATA_DIR and an empty cache, data_dir (the dataset folder or a root holding it) supplies it."""
    folder = copy_val(real_dir, tmp_path / "local")
    X, Y = isbi2012("val", data_dir=folder.parent if as_root else folder)
    np.testing.assert_array_equal(X[0], mpimg.imread(real_dir / "train/image/25.png"))
    assert Y.shape == (5, 512, 512) and not offline.exists()  # nothing downloaded


def test_bad_split_and_missing_folder(offline, tmp_path):
    with pytest.raises(ValueError, match="'valid'"):
        isbi2012("valid")
    with pytest.raises(DataError, match="no-such-folder"):
        isbi2012("val", data_dir=tmp_path / "no-such-folder")


@pytest.mark.parametrize("case", ["truncated", "not-a-png", "wrong-size", "not-binary"])
def test_damaged_local_files(real_dir, offline, tmp_path, case):
    """A half PNG, a text file, a 256x256 slice or a mask holding a 128: a DataError naming the file and its source."""
    folder = copy_val(real_dir, tmp_path / "local")
    victim = folder / ("train/label/26.png" if case == "not-binary" else "train/image/26.png")
    if case == "truncated":
        victim.write_bytes(victim.read_bytes()[:5000])
    elif case == "not-a-png":
        victim.write_text("<html>404</html>")
    else:  # a valid 8-bit grayscale PNG (Pillow's mode "L"), of the wrong size or with a gray stripe in a mask
        a = np.rint(mpimg.imread(victim) * 255).astype(np.uint8)
        a = a[:256, :256] if case == "wrong-size" else np.where(np.arange(512) < 3, 128, a).astype(np.uint8)
        Image.fromarray(a).save(victim)
    with pytest.raises(DataError) as exc:
        isbi2012("val", data_dir=folder)
    message = str(exc.value)
    assert str(victim) in message and "raw.githubusercontent.com/zhixuhao/unet" in message
    words = {"truncated": "readable PNG", "not-a-png": "readable PNG", "wrong-size": "shape", "not-binary": "binary"}
    assert words[case] in message


def test_download_checks_the_pinned_sha256(real_dir, offline, server, monkeypatch):
    """Nothing local: the val split is downloaded from the mirror (its own layout: test/N.png) into the cache,
    10 files, equal to the real ones; a mirror serving a changed byte is refused and leaves no file."""
    for folder in ("train/image", "train/label"):
        for i in isbi.SPLITS["val"]:
            server.serve(f"{isbi.REMOTE[folder]}/{i}.png", (real_dir / folder / f"{i}.png").read_bytes())
    monkeypatch.setattr(isbi, "MIRRORS", [server.url])
    X, Y = isbi2012("val")
    assert sorted(server.requests) == sorted(f"/train/{k}/{i}.png" for k in ("image", "label") for i in range(25, 30))
    assert (offline / isbi.NAME / "train/label/29.png").read_bytes() == (real_dir / "train/label/29.png").read_bytes()
    np.testing.assert_array_equal(Y[4], (mpimg.imread(real_dir / "train/label/29.png") == 1).astype(np.uint8))
    raw = bytearray((real_dir / "test/image/0.png").read_bytes())
    raw[-20] ^= 1
    server.serve("test/0.png", bytes(raw))
    with pytest.raises(DataError, match="checksum mismatch for 0.png"):
        isbi2012("test")
    assert not (offline / isbi.NAME / "test").exists()
