"""Synthetic detection scenes made of real Fashion-MNIST items (issue 20): canvases, boxes, classes, landmarks.

No detection dataset can be downloaded here, so we build one from real images. A scene is a black
``size x size`` grayscale canvas holding k items (k uniform in min_objects..max_objects), each item a
Fashion-MNIST image of the matching split resized by a factor s ~ U(scale) and pasted with max():

    side   m = round(28 s)                                  the resized item is m x m (bilinear)
    box    (x1, y1, x2, y2) = the tight box of the item's nonzero pixels: x1, y1 the first column and
           row holding one, x2, y2 the last ones + 1 (width x2 - x1; a single pixel has width 1)
    place  uniform over the positions that keep the box inside the canvas, redrawn until its IoU with
           every box already in the scene is <= max_overlap; after TRIES draws the item is dropped

    images, boxes, labels = detection_scenes("train", n=1000, size=96, max_objects=4, seed=0)
    images, boxes, labels = detection_scenes("test", n=500, single=True)      # localization: one item
    points = extreme_points(images, boxes)     # (n, 4, 2): top-, bottom-, left-, right-most pixel (x, y)

Bilinear resizing uses half-pixel centres (source coordinate (i + 0.5) 28 / m - 0.5), the result is
rounded to uint8 levels before the box is read, so the box is exactly that of the pixels one sees.
Everything is vectorised over items (one resize per distinct side m, one placement step per object
slot and try), so 10,000 scenes take seconds. ``python -m data.detection`` draws example scenes.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np

from . import files
from .fmnist import CLASSES, fashion_mnist

TRIES = 50  # placements drawn per object before it is dropped
VERSION = 1  # part of the cache key: bump when the generator changes


def _check(split, n, size, max_objects, min_objects, scale, max_overlap):
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    for name, value in (("n", n), ("size", size), ("max_objects", max_objects), ("min_objects", min_objects)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if min_objects > max_objects:
        raise ValueError(f"min_objects ({min_objects}) must not exceed max_objects ({max_objects})")
    if len(scale) != 2 or not all(math.isfinite(s) for s in scale):
        raise ValueError(f"scale must be two finite numbers (low, high), got {scale!r}")
    if not 0.25 <= scale[0] <= scale[1]:
        raise ValueError(f"scale must satisfy 0.25 <= low <= high, got {tuple(scale)}")
    if size < 28 * scale[1]:
        raise ValueError(f"size {size} is smaller than the largest item, 28 * {scale[1]} = {28 * scale[1]:g} pixels")
    if not (math.isfinite(max_overlap) and 0 <= max_overlap <= 1):
        raise ValueError(f"max_overlap must lie in [0, 1], got {max_overlap!r}")


# %% resizing and tight boxes, vectorised over a batch of items
def resize_bilinear(items: np.ndarray, m: int) -> np.ndarray:
    """(G, h, w) -> (G, m, m) float32, bilinear with half-pixel centres (no anti-aliasing)."""
    G, h, w = items.shape

    def taps(src_len):  # the two source indices and the weight of the second, for each output index
        pos = np.clip((np.arange(m) + 0.5) * src_len / m - 0.5, 0, src_len - 1)
        i0 = np.floor(pos).astype(np.int64)
        i1 = np.minimum(i0 + 1, src_len - 1)
        return i0, i1, (pos - i0).astype(np.float32)

    y0, y1, wy = taps(h)
    x0, x1, wx = taps(w)
    x = items.astype(np.float32)
    rows = x[:, y0, :] * (1 - wy)[None, :, None] + x[:, y1, :] * wy[None, :, None]  # (G, m, w)
    return rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx  # (G, m, m)


def tight_boxes(masks: np.ndarray) -> np.ndarray:
    """(G, H, W) boolean -> (G, 4) int64 (x1, y1, x2, y2): first column/row holding a True, last + 1.

    Each mask must hold at least one True."""
    rows, cols = masks.any(2), masks.any(1)  # (G, H), (G, W)
    H, W = rows.shape[1], cols.shape[1]
    y1, y2 = rows.argmax(1), H - rows[:, ::-1].argmax(1)
    x1, x2 = cols.argmax(1), W - cols[:, ::-1].argmax(1)
    return np.stack([x1, y1, x2, y2], 1).astype(np.int64)


def box_iou_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of corresponding corner boxes (..., 4) and (..., 4) (broadcast); 0 where both are empty."""
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda z: (z[..., 2] - z[..., 0]) * (z[..., 3] - z[..., 1])
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


# %% the generator
def _generate(split, n, size, max_objects, seed, min_objects, scale, max_overlap, single, data_dir):
    """uint8 canvases (n, size, size) and per-object arrays in scene order: scene, box, label, index, side."""
    X, y = fashion_mnist(split, data_dir)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    lo, hi = (1, 1) if single else (min_objects, max_objects)
    slots = hi
    k = rng.integers(lo, hi + 1, size=n)  # objects wanted per scene
    active = np.arange(slots)[None, :] < k[:, None]  # (n, slots)
    K = int(active.sum())
    # Source items: whole random permutations of the split, one after another, so items repeat evenly.
    perms = [rng.permutation(len(X)) for _ in range(-(-K // len(X)))]
    index = np.full((n, slots), -1, np.int64)
    index[active] = np.concatenate(perms)[:K]
    side = np.zeros((n, slots), np.int64)
    side[active] = np.maximum(1, np.rint(28 * rng.uniform(scale[0], scale[1], size=K))).astype(np.int64)
    u = rng.random((n, slots, TRIES, 2))  # the placement draws

    # Resize: one vectorised call per distinct side m; keep each item's uint8 patch and its tight box.
    patches = {}  # m -> (rows of the (n, slots) grid, cols, (G, m, m) uint8)
    inner = np.zeros((n, slots, 4), np.int64)  # tight box inside the patch
    for m in np.unique(side[active]):
        r, c = np.nonzero(active & (side == m))
        patch = np.rint(resize_bilinear(X[index[r, c]], int(m))).astype(np.uint8)  # (G, m, m)
        inner[r, c] = tight_boxes(patch > 0)
        patches[int(m)] = (r, c, patch)
    bw, bh = inner[..., 2] - inner[..., 0], inner[..., 3] - inner[..., 1]  # (n, slots)

    # Place slot by slot: all scenes at once, TRIES draws each, accepting the first that overlaps little.
    boxes = np.zeros((n, slots, 4), np.int64)
    placed = np.zeros((n, slots), bool)
    for j in range(slots):
        todo = active[:, j].copy()
        for t in range(TRIES):
            if not todo.any():
                break
            x1 = np.floor(u[:, j, t, 0] * (size - bw[:, j] + 1)).astype(np.int64)
            y1 = np.floor(u[:, j, t, 1] * (size - bh[:, j] + 1)).astype(np.int64)
            cand = np.stack([x1, y1, x1 + bw[:, j], y1 + bh[:, j]], 1)  # (n, 4)
            iou = box_iou_pairs(cand[:, None, :], boxes[:, :j])  # (n, j)
            ok = todo & ~(placed[:, :j] & (iou > max_overlap)).any(1)
            boxes[ok, j], placed[ok, j] = cand[ok], True
            todo &= ~ok
    assert placed[:, 0].all() == active[:, 0].all()  # the first item of a scene always fits

    # Paste with max(): one vectorised step per side m and slot (a slot holds one item per scene).
    canvas = np.zeros((n, size, size), np.uint8)
    for m, (r, c, patch) in patches.items():
        origin = boxes[r, c, :2] - inner[r, c, :2]  # where the patch's corner lands (may be off-canvas)
        ar = np.arange(m)
        for j in np.unique(c):
            g = (c == j) & placed[r, c]
            yy = origin[g, 1, None, None] + ar[None, :, None]  # (G, m, 1)
            xx = origin[g, 0, None, None] + ar[None, None, :]  # (G, 1, m)
            keep = patch[g] > 0  # only the item's pixels, which lie inside the canvas by construction
            sc = np.broadcast_to(r[g, None, None], keep.shape)[keep]
            yy, xx = np.broadcast_to(yy, keep.shape)[keep], np.broadcast_to(xx, keep.shape)[keep]
            canvas[sc, yy, xx] = np.maximum(canvas[sc, yy, xx], patch[g][keep])

    s, j = np.nonzero(placed)  # row-major: scene by scene, slot order within a scene
    return canvas, s, boxes[s, j], y[index[s, j]], index[s, j], side[s, j]


def _cache_path(key: str) -> Path:
    return Path(files.CACHE_DIR) / "detection" / f"scenes-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def detection_scenes(split="train", n=1000, size=96, max_objects=4, seed=0, *, min_objects=1,
                     scale=(0.6, 1.4), max_overlap=0.2, single=False, data_dir=None, cache=False,
                     return_sources=False):  # fmt: skip
    """Scenes of Fashion-MNIST items from ``split``: (images, boxes, labels) [, sources].

    images: float32 (n, size, size) in [0, 1]; boxes: n float32 arrays (k_i, 4) of pixel corners (x1, y1,
    x2, y2); labels: n int64 arrays (k_i,) of class ids (names: data.FASHION_MNIST_CLASSES). k_i is drawn
    uniformly in min_objects..max_objects (exactly 1 with ``single=True``); an item that finds no place
    keeps IoU <= max_overlap is dropped, the first one always fits. ``cache=True`` stores the scenes in
    ``data/cache/detection/`` keyed by every argument and reuses them. ``return_sources=True`` adds a
    dict of per-scene int64 arrays: "index" (the item's row in ``fashion_mnist(split)``) and "side" (m).
    """
    scale = tuple(float(s) for s in scale)
    _check(split, n, size, max_objects, min_objects, scale, float(max_overlap))
    key = repr((VERSION, split, int(n), int(size), int(max_objects), int(seed), int(min_objects), scale,
                float(max_overlap), bool(single)))  # fmt: skip
    path = _cache_path(key)
    arrays = None
    if cache and path.is_file():
        try:
            with np.load(path) as f:
                if str(f["key"]) == key:  # a hash collision, however unlikely, is not a hit
                    arrays = {name: f[name] for name in ("canvas", "scene", "box", "label", "index", "side")}
        except (OSError, ValueError, KeyError):  # a broken cache file is regenerated
            arrays = None
    if arrays is None:
        out = _generate(split, int(n), int(size), int(max_objects), int(seed), int(min_objects), scale,
                        float(max_overlap), bool(single), data_dir)  # fmt: skip
        arrays = dict(zip(("canvas", "scene", "box", "label", "index", "side"), out))
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.part.npz")
            np.savez_compressed(tmp, key=np.array(key), **arrays)
            os.replace(tmp, path)
    images = arrays["canvas"].astype(np.float32) / 255  # (n, size, size)
    cuts = np.cumsum(np.bincount(arrays["scene"], minlength=int(n)))[:-1]
    boxes = np.split(arrays["box"].astype(np.float32), cuts)
    labels = np.split(arrays["label"].astype(np.int64), cuts)
    if not return_sources:
        return images, boxes, labels
    sources = {"index": np.split(arrays["index"], cuts), "side": np.split(arrays["side"], cuts)}
    return images, boxes, labels, sources


# %% landmarks of single-object scenes
def extreme_points(images, boxes) -> np.ndarray:
    """(n, 4, 2) float32: the (x, y) pixel indices of the top-most, bottom-most, left-most and right-most
    nonzero pixel inside each scene's one box; ties go to the first pixel in row-major order."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must be (n, H, W), got shape {images.shape}")
    b = [np.asarray(x, np.float64).reshape(-1, 4) for x in boxes]
    if any(len(x) != 1 for x in b):
        raise ValueError("extreme_points takes single-object scenes: every scene must hold exactly one box")
    b = np.concatenate(b)  # (n, 4)
    if len(b) != len(images):
        raise ValueError(f"{len(images)} images but {len(b)} boxes")
    n, H, W = images.shape
    ys, xs = np.arange(H)[None, :, None], np.arange(W)[None, None, :]
    inside_x = (xs >= b[:, 0, None, None]) & (xs < b[:, 2, None, None])  # (n, 1, W)
    inside_y = (ys >= b[:, 1, None, None]) & (ys < b[:, 3, None, None])  # (n, H, 1)
    mask = (images > 0) & inside_x & inside_y  # (n, H, W)
    if not mask.any((1, 2)).all():
        raise ValueError("a box holds no nonzero pixel")
    rows, cols = mask.any(2), mask.any(1)  # (n, H), (n, W)
    i = np.arange(n)
    top = mask.reshape(n, -1).argmax(1)  # first True in row-major order
    y_bot = H - 1 - rows[:, ::-1].argmax(1)
    x_left, x_right = cols.argmax(1), W - 1 - cols[:, ::-1].argmax(1)
    points = [
        (top % W, top // W),
        (mask[i, y_bot].argmax(1), y_bot),  # the first (left-most) pixel of the bottom row
        (x_left, mask[i, :, x_left].argmax(1)),  # the first (top-most) pixel of the left column
        (x_right, mask[i, :, x_right].argmax(1)),
    ]
    return np.stack([np.stack(p, 1) for p in points], 1).astype(np.float32)


# %% a figure of example scenes
def plot_scenes(images, boxes, labels, path, n_images=8, title=None):
    """Save a grid of the first ``n_images`` scenes with their boxes and class names to ``path`` (PNG)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing global
    from matplotlib.patches import Rectangle

    n_images = min(n_images, len(images))
    cols = min(4, n_images)
    rows = -(-n_images // cols)
    fig = Figure(figsize=(3 * cols, 3 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, bx, lb in zip(axes.flat, images, boxes, labels):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        for (x1, y1, x2, y2), c in zip(bx, lb):  # a pixel (x, y) covers [x, x+1): edges at -0.5 in imshow
            ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color="lime", lw=1))
            ax.text(x1 - 0.5, y1 - 1.5, CLASSES[c], color="yellow", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> None:
    import argparse

    from .cli import nonneg_int, positive_int

    p = argparse.ArgumentParser(prog="python -m data.detection", description="Draw example detection scenes.")
    p.add_argument("--split", choices=("train", "test"), default="train")
    p.add_argument("--n-images", type=positive_int, default=8, help="scenes drawn (default 8)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--single", action="store_true", help="one item per scene (localization)")
    p.add_argument("--out", default="detection_scenes.png", help="the PNG written (default detection_scenes.png)")
    p.add_argument("--data-dir", default=None, help="a folder holding Fashion-MNIST (else $ARC_DATA_DIR, data/cache)")
    args = p.parse_args(argv)
    images, boxes, labels = detection_scenes(
        args.split, args.n_images, seed=args.seed, single=args.single, data_dir=args.data_dir
    )
    plot_scenes(images, boxes, labels, args.out, args.n_images)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
