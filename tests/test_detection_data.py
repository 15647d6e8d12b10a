"""Tests of data/detection.py, the synthetic detection scenes made of Fashion-MNIST items (issue 20).

The oracle: every scene is rebuilt here object by object, with plain loops, from the source items it reports
(its split's image at "index", resized to "side"): the canvas must be exactly the max() of the pasted items, each
box exactly the tight box of its item's nonzero pixels (enclosing them, each edge touching one), each label the
source's label. Resizing is checked against torch's bilinear interpolation. Then splits, determinism, overlap,
counts, the single mode, bad arguments, the cache, and the extreme points against a brute-force scan.
"""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import data.files
from data import detection as det
from data import detection_scenes, extreme_points, fashion_mnist


@pytest.fixture(scope="module")
def fmnist():
    return {split: fashion_mnist(split) for split in ("train", "test")}


@pytest.fixture(scope="module")
def scenes():
    return detection_scenes("train", n=300, seed=3, return_sources=True)


def rebuild(X, boxes, sources, size):
    """The canvases (n, size, size) uint8 rebuilt item by item, asserting each box is its item's tight box."""
    out = np.zeros((len(boxes), size, size), np.uint8)
    for i, (bx, idx, side) in enumerate(zip(boxes, sources["index"], sources["side"])):
        for (x1, y1, x2, y2), j, m in zip(bx.astype(int), idx, side):
            patch = np.rint(det.resize_bilinear(X[j][None], int(m))[0]).astype(np.uint8)
            ys, xs = np.nonzero(patch)
            crop = patch[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]  # the item's tight box
            assert crop.shape == (y2 - y1, x2 - x1), (i, crop.shape, (x1, y1, x2, y2))
            assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
            out[i, y1:y2, x1:x2] = np.maximum(out[i, y1:y2, x1:x2], crop)
    return out


def pair_ious(bx):
    """Every pairwise IoU of one scene's boxes, by the definition."""
    out = []
    for a, b in itertools.combinations(bx, 2):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
        out.append(iw * ih / union)
    return out


def test_resize_is_torchs_bilinear():
    """Up and down, to every side the default scales give: torch's bilinear with align_corners=False."""
    x = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    for m in (17, 28, 39, 56):
        ref = F.interpolate(torch.from_numpy(x).float()[:, None], size=(m, m), mode="bilinear", align_corners=False)
        assert np.abs(det.resize_bilinear(x, m) - ref[:, 0].numpy()).max() < 1e-3


def test_types_shapes_and_ranges(scenes):
    images, boxes, labels, sources = scenes
    assert images.shape == (300, 96, 96) and images.dtype == np.float32 and 0 <= images.min() and images.max() <= 1
    assert len(boxes) == len(labels) == len(sources["index"]) == 300
    for bx, lb in zip(boxes, labels):
        assert bx.dtype == np.float32 and bx.shape == (len(lb), 4) and lb.dtype == np.int64
        assert ((0 <= lb) & (lb <= 9)).all()
        assert (bx[:, :2] >= 0).all() and (bx[:, 2:] <= 96).all() and (bx[:, 2:] > bx[:, :2]).all()  # inside
    # every pixel value is a uint8 level: the canvas is made of rounded items
    assert np.abs(images * 255 - np.rint(images * 255)).max() < 1e-3


def test_scenes_rebuild_from_their_items(scenes, fmnist):
    """The canvas is the max() of its items, each box their tight box, each label the item's label: the boxes
    enclose the item pixels and each edge touches one."""
    images, boxes, labels, sources = scenes
    X, y = fmnist["train"]
    assert np.array_equal(rebuild(X, boxes, sources, 96), np.rint(images * 255).astype(np.uint8))
    for lb, idx in zip(labels, sources["index"]):
        assert np.array_equal(lb, y[idx])
    sides = np.concatenate(sources["side"])
    assert sides.min() >= round(28 * 0.6) and sides.max() <= round(28 * 1.4) and len(np.unique(sides)) > 15


def test_splits_use_their_own_items(fmnist):
    """Test scenes are made of test items (they rebuild from fashion_mnist('test'), not from the training images at
    the same rows) and train scenes of training items; the split's whole set is drawn from."""
    for split, other in (("test", "train"), ("train", "test")):
        images, boxes, labels, src = detection_scenes(split, n=60, seed=1, single=True, return_sources=True)
        canvas = np.rint(images * 255).astype(np.uint8)
        assert np.array_equal(rebuild(fmnist[split][0], boxes, src, 96), canvas)
        for lb, idx in zip(labels, src["index"]):
            assert np.array_equal(lb, fmnist[split][1][idx])
        Xo = fmnist[other][0]
        wrong = {"index": [i % len(Xo) for i in src["index"]], "side": src["side"]}
        with pytest.raises(AssertionError):  # the other split's items at those rows do not give these scenes
            assert np.array_equal(rebuild(Xo, boxes, wrong, 96), canvas)
    _, _, _, src = detection_scenes("train", n=2000, seed=0, return_sources=True)
    index = np.concatenate(src["index"])
    assert index.max() > 50_000 and len(np.unique(index)) == len(index)  # without repeats while the split lasts


def test_every_item_is_used_before_any_repeats():
    """More objects than test items: the items are used in whole permutations, so no item is used three times
    before every item was used once (25,000 single-item scenes use each test item 2 or 3 times)."""
    _, _, _, src = detection_scenes("test", n=25_000, size=40, seed=0, single=True, return_sources=True)
    counts = np.bincount(np.concatenate(src["index"]), minlength=10_000)
    assert counts.min() == 2 and counts.max() == 3 and (counts == 3).sum() == 5000


def test_determinism_by_seed():
    a = detection_scenes("train", n=50, seed=7)
    b = detection_scenes("train", n=50, seed=7)
    c = detection_scenes("train", n=50, seed=8)
    assert np.array_equal(a[0], b[0]) and all(np.array_equal(u, v) for u, v in zip(a[1] + a[2], b[1] + b[2]))
    assert not np.array_equal(a[0], c[0]) and any(len(u) != len(v) or (u != v).any() for u, v in zip(a[1], c[1]))
    d = detection_scenes("train", n=50, seed=7, scale=(0.6, 1.3))  # every argument enters the draw
    assert not np.array_equal(a[0], d[0])


@pytest.mark.parametrize("max_overlap", [0.0, 0.2, 0.5])
def test_overlap_bound(max_overlap):
    """No two boxes of a scene overlap by more than max_overlap (IoU), even with crowded scenes of 6; at 0 the
    boxes are disjoint; a looser bound lets more overlap in."""
    _, boxes, _ = detection_scenes("train", n=300, max_objects=6, min_objects=6, seed=2, max_overlap=max_overlap)
    ious = [v for bx in boxes for v in pair_ious(bx.astype(np.float64))]
    assert max(ious) <= max_overlap + 1e-9
    if max_overlap > 0:
        assert max(ious) > max_overlap / 2  # the bound is reached, not avoided altogether
    counts = np.array([len(b) for b in boxes])
    assert counts.max() == 6 and counts.min() >= 1 and counts.mean() > (4 if max_overlap == 0 else 5)


def test_object_counts_are_uniform_in_range():
    _, boxes, _ = detection_scenes("train", n=2000, seed=0, min_objects=2, max_objects=5)
    counts = np.bincount([len(b) for b in boxes], minlength=6)
    assert counts[0] == 0 and counts[6:].sum() == 0
    assert counts[1] < 20 and all(430 < c < 570 for c in counts[2:6])  # drops are rare at IoU <= 0.2 in 96x96


def test_single_mode_and_scale():
    """single=True: one (1, 4) box per scene, the tight box of all the canvas's nonzero pixels. scale (1, 1): every
    item keeps its 28x28 side, so boxes are its own tight box, at most 28 wide."""
    images, boxes, labels, src = detection_scenes("test", n=100, seed=0, single=True, scale=(1, 1), return_sources=True)
    X, _ = fashion_mnist("test")
    for img, bx, lb, idx in zip(images, boxes, labels, src["index"]):
        assert bx.shape == (1, 4) and lb.shape == (1,)
        ys, xs = np.nonzero(img)
        assert np.array_equal(bx[0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        ys, xs = np.nonzero(X[idx[0]])
        assert bx[0, 2] - bx[0, 0] == xs.max() + 1 - xs.min() and bx[0, 3] - bx[0, 1] == ys.max() + 1 - ys.min()
    assert all((s == 28).all() for s in src["side"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"split": "val"}, "split"),
        ({"n": 0}, "n must"),
        ({"size": 32}, "size 32"),  # 28 * 1.4 = 39.2 pixels
        ({"min_objects": 3, "max_objects": 2}, "min_objects"),
        ({"max_objects": 0}, "max_objects"),
        ({"scale": (1.2, 0.8)}, "scale"),
        ({"scale": (0.1, 1.0)}, "scale"),
        ({"scale": (0.5,)}, "scale"),
        ({"max_overlap": 1.5}, "max_overlap"),
        ({"max_overlap": float("nan")}, "max_overlap"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message, monkeypatch):
    monkeypatch.setattr(det, "fashion_mnist", lambda *a, **k: pytest.fail("data loaded before the check"))
    with pytest.raises(ValueError, match=message):
        detection_scenes(**kwargs)


def test_cache_round_trip(tmp_path, monkeypatch):
    """cache=True writes one .npz under <cache>/detection/ and the next call reads it (no generation), giving equal
    scenes and sources; other arguments get another file; without cache=True nothing is written."""
    monkeypatch.setattr(data.files, "CACHE_DIR", tmp_path)
    detection_scenes("train", n=20, seed=5)
    assert not (tmp_path / "detection").exists()
    a = detection_scenes("train", n=20, seed=5, cache=True, return_sources=True)
    written = list((tmp_path / "detection").iterdir())
    assert len(written) == 1 and written[0].suffix == ".npz"
    monkeypatch.setattr(det, "_generate", lambda *a, **k: pytest.fail("regenerated despite the cache"))
    b = detection_scenes("train", n=20, seed=5, cache=True, return_sources=True)
    assert np.array_equal(a[0], b[0]) and a[0].dtype == b[0].dtype
    for u, v in zip(a[1] + a[2] + a[3]["index"] + a[3]["side"], b[1] + b[2] + b[3]["index"] + b[3]["side"]):
        assert np.array_equal(u, v) and u.dtype == v.dtype
    monkeypatch.undo()
    monkeypatch.setattr(data.files, "CACHE_DIR", tmp_path)
    detection_scenes("train", n=20, seed=6, cache=True)
    assert len(list((tmp_path / "detection").iterdir())) == 2


def brute_extremes(img, box):
    """Scan the box's pixels in row-major order; keep the first pixel that beats the current extreme."""
    x1, y1, x2, y2 = box.astype(int)
    best = [None] * 4  # top, bottom, left, right
    better = [lambda p, q: p[1] < q[1], lambda p, q: p[1] > q[1], lambda p, q: p[0] < q[0], lambda p, q: p[0] > q[0]]
    for yy in range(y1, y2):
        for xx in range(x1, x2):
            if img[yy, xx] > 0:
                for k in range(4):
                    if best[k] is None or better[k]((xx, yy), best[k]):
                        best[k] = (xx, yy)
    return np.array(best, np.float32)


def test_extreme_points_against_brute_force():
    images, boxes, _ = detection_scenes("test", n=40, seed=4, single=True)
    points = extreme_points(images, boxes)
    assert points.shape == (40, 4, 2) and points.dtype == np.float32
    for img, bx, p in zip(images, boxes, points):
        assert np.array_equal(p, brute_extremes(img, bx[0]))
        x1, y1, x2, y2 = bx[0]
        assert p[0, 1] == y1 and p[1, 1] == y2 - 1 and p[2, 0] == x1 and p[3, 0] == x2 - 1  # on the box's edges
        assert all(img[int(y), int(x)] > 0 for x, y in p)  # on item pixels


def test_extreme_points_by_hand():
    """A 6x6 image with ties everywhere: top row 1 holds x 2 and 3 (first: x 2); bottom row 4 holds x 1 and 4
    (first: x 1); left column 1 holds y 3 and 4 (first: y 3); right column 4 holds y 2 and 4 (first: y 2)."""
    img = np.zeros((1, 6, 6), np.float32)
    for x, y in [(2, 1), (3, 1), (1, 3), (1, 4), (4, 4), (4, 2), (2, 2)]:
        img[0, y, x] = 0.5
    img[0, 0, 5] = 1.0  # outside the box: ignored
    points = extreme_points(img, [np.array([[1, 1, 5, 5]], np.float32)])
    assert np.array_equal(points[0], [[2, 1], [1, 4], [1, 3], [4, 2]])


def test_extreme_points_refuse_multi_object_scenes():
    images, boxes, _ = detection_scenes("train", n=10, seed=0, min_objects=2, max_objects=2)
    with pytest.raises(ValueError, match="single-object"):
        extreme_points(images, boxes)


def test_figure_of_example_scenes(tmp_path):
    det.main(["--n-images", "4", "--out", str(tmp_path / "scenes.png")])
    assert (tmp_path / "scenes.png").stat().st_size > 5000
