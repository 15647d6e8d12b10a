"""U-Net (Ronneberger et al. 2015): segmenting neuronal membranes in the ISBI 2012 EM slices, in PyTorch.

A contracting path (two unpadded 3x3 convs + ReLU, then a 2x2 max-pool, four times; channels doubled at
each level) and an expanding path (a 2x2 up-convolution that halves the channels, the skip connection's
map cropped to its size and concatenated, two 3x3 convs), then a 1x1 conv to the classes. Unpadded, the
output is smaller than the input: 572x572 -> 388x388. A valid tile side is 124 + 16 b (b >= 4).
Overlap-tile: a large image is cut into output tiles; the input tile around each is read from the image
mirrored at its border, so every output pixel sees its whole context. The loss (equations 1 and 2):

    E = sum_x w(x) log p_l(x)(x),   p_k(x) = exp(a_k(x)) / sum_k' exp(a_k'(x))   (pixel-wise softmax, negated)
    w(x) = w_c(x) + w0 exp(-(d1(x) + d2(x))^2 / (2 sigma^2)),   w0 = 10, sigma = 5 pixels

d1, d2: distances to the nearest and second-nearest cell; w_c balances the classes (each carries half of
the total weight here). The border term is put on membrane pixels: the thin walls between touching cells.
Augmentation: elastic deformation (displacements N(0, 10^2) on a coarse 3x3 grid, bicubic in between),
flips and rotations. Scores (the challenge's old metrics, those of the paper's Table 1), each at the best of
the thresholds t = 0.1, ..., 0.9 on P(cell), one t for all slices, as the challenge took the best:
  pixel error = fraction of pixels whose class (cell where P(cell) > t) differs from the truth;
  Rand error = 1 - max over thresholds t of V_Rand = sum_ij n_ij^2 / (1/2 sum_i s_i^2 + 1/2 sum_j t_j^2),
    n_ij pixels in predicted segment i (4-connected components of P(cell) > t) and true cell j, counted
    only on true-cell pixels (the "foreground-restricted" Rand index); s_i, t_j the row and column sums; a
    pixel predicted membrane is a segment of its own. V_Rand is the F-score of split and merge scores;
  warping error (not computed): warp the truth towards the prediction by flipping only "simple" pixels
    (those that change no topology), then count the pixels still different: splits and mergers (Jain 2010).

Reading: O. Ronneberger, P. Fischer, T. Brox (2015), "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI, https://arxiv.org/abs/1505.04597; I. Arganda-Carreras et al. (2015), "Crowdsourcing
the creation of image segmentation algorithms for connectomics", Front. Neuroanat. (the challenge, its metrics).
Arc: Semantic segmentation -- U-Net architecture, transpose convolutions, implement U-Net from scratch.

Run:  python 04-cnns/unet_torch.py            (16 minutes on two CPU cores: 12 epochs of 70-95 s)
      python 04-cnns/unet_torch.py --smoke    (seconds: a tiny U-Net, a few steps)
      python 04-cnns/unet_torch.py --base 64 --tile 572 --epochs 40 --device cuda   (the paper's width)
Look first at `UNet.forward` and `crop_and_concat`, then `weight_map` and `stitch` (overlap-tile).
"""

# %%
import argparse
import math
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import image as mpimg
from matplotlib.figure import Figure
from scipy import ndimage
from torch import nn
from tqdm import tqdm

from data import DataError, isbi2012, nonneg_int, positive_float, positive_int, save_metrics

# %% [markdown]
# ## The network: contracting path, expanding path, skip connections cropped and concatenated


# %%
def output_size(size):
    """Output side for an input tile side: 572 -> 388. Each level's two 3x3 convs take 4 pixels and a pool
    halves (so the side before it must be even): a valid side is 124 + 16 b, b >= 4 the side at the bottom."""
    b, r = divmod(size - 124, 16)
    if r or b < 4:
        lo, hi = max(188, 124 + 16 * ((size - 124) // 16)), 124 + 16 * max(4, -(-(size - 124) // 16))
        raise ValueError(f"a U-Net input side must be 124 + 16 b with b >= 4 (188, 204, ..., 572, ...), so that "
                         f"every 2x2 max-pool halves an even side; got {size} (nearest valid: {lo}, {hi})")
    return size - 184


def double_conv(c_in, c_out):
    """Two unpadded 3x3 convs, each followed by a ReLU: (N, c_in, H, W) -> (N, c_out, H - 4, W - 4)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3), nn.ReLU(inplace=True), nn.Conv2d(c_out, c_out, 3),
                         nn.ReLU(inplace=True))  # fmt: skip


def center_crop(x, h, w):
    """The central h x w window of x (N, C, H, W)."""
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w]


def crop_and_concat(skip, up):
    """"Copy and crop": skip (N, C1, Hs, Ws) cropped to up's (H, W), then joined: (N, C1 + C2, H, W)."""
    return torch.cat([center_crop(skip, up.shape[-2], up.shape[-1]), up], dim=1)


class UNet(nn.Module):
    """Figure 1 of the paper at widths base, 2 base, 4 base, 8 base, 16 base (64 ... 1024)."""

    def __init__(self, in_channels=1, num_classes=2, base=64, depth=4):
        super().__init__()
        widths = [base * 2**i for i in range(depth + 1)]  # 64 128 256 512 1024
        self.down = nn.ModuleList(double_conv(c, w) for c, w in zip([in_channels, *widths[:-1]], widths))
        # up-conv 2x2: doubles the side, halves the channels (x W of shape (2w, w, 2, 2), stride 2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(2 * w, w, 2, stride=2) for w in widths[:-1])
        self.dec = nn.ModuleList(double_conv(2 * w, w) for w in widths[:-1])  # after the concatenation
        self.head = nn.Conv2d(base, num_classes, 1)  # 1x1: a feature vector -> class scores a_k(x)
        for m in self.modules():  # "Gaussian with standard deviation sqrt(2 / N), N incoming nodes" (He init)
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_in = m.weight[0].numel() if isinstance(m, nn.Conv2d) else m.weight.shape[0]  # up-conv: 1 tap
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in))
                nn.init.zeros_(m.bias)

    def forward(self, x):  # (N, in_channels, H, W), H and W valid sides (output_size)
        output_size(x.shape[-2]), output_size(x.shape[-1])  # a side that cannot be tiled: a clear ValueError
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)  # (N, w_i, h - 4, w - 4)
            if i < len(self.up):
                skips.append(x)
                x = F.max_pool2d(x, 2)  # (N, w_i, h / 2, w / 2)
        for i in reversed(range(len(self.up))):
            x = self.dec[i](crop_and_concat(skips[i], self.up[i](x)))  # up (N, w_i, 2h, 2w) -> (N, w_i, 2h-4, 2w-4)
        return self.head(x)  # (N, num_classes, H - 184, W - 184)


def unet(in_channels=1, num_classes=2, base=64):
    """The paper's network for base = 64: 31,030,658 parameters for 1 input channel and 2 classes."""
    return UNet(in_channels, num_classes, base)


# %% [markdown]
# ## Overlap-tile: predict a whole image tile by tile, the input mirrored at the border


# %%
def stitch(model, image, tile, batch=4):
    """model's output over a whole image (H, W): output tiles of side out = output_size(tile), each read from
    the tile x tile input window around it in the image mirrored by m = (tile - out) / 2 at every border;
    the last row and column of tiles are shifted back to end at the border (they overlap the previous ones).
    Returns (C, H, W) as a NumPy array."""
    out = output_size(tile)
    m, (H, W) = (tile - out) // 2, image.shape
    eh, ew = max(out - H, 0), max(out - W, 0)  # an image smaller than one output tile: mirror it up to one
    padded = np.pad(image, ((m, m + eh), (m, m + ew)), mode="symmetric")  # mirror: (H + 2m + eh, W + 2m + ew)
    starts = lambda n: sorted({*range(0, n - out, out), max(n - out, 0)})  # noqa: E731
    corners = [(y, x) for y in starts(H) for x in starts(W)]
    device = next(model.parameters()).device if isinstance(model, nn.Module) else "cpu"
    result = None
    for k in range(0, len(corners), batch):
        chunk = corners[k : k + batch]
        x = torch.from_numpy(np.stack([padded[y : y + tile, x : x + tile] for y, x in chunk])[:, None])
        with torch.no_grad():
            y_hat = model(x.to(device)).float().cpu().numpy()  # (n, C, out, out)
        if result is None:
            result = np.zeros((y_hat.shape[1], H + eh, W + ew), np.float32)
        for (y, x), o in zip(chunk, y_hat):  # o (C, out, out) covers image pixels [y, y + out) x [x, x + out)
            result[:, y : y + out, x : x + out] = o
    return result[:, :H, :W]


def predict(model, image, tile):
    """P(cell) (H, W): the softmax of the stitched class scores, class 1 = cell interior."""
    was_training = model.training
    model.eval()
    p = torch.softmax(torch.from_numpy(stitch(model, image, tile)), dim=0)[1].numpy()
    model.train(was_training)
    return p


# %% [markdown]
# ## The weighted loss: class balance plus a border term between touching cells


# %%
def weight_map(mask, w0=10.0, sigma=5.0):
    """w(x) = w_c(x) + w0 exp(-(d1 + d2)^2 / (2 sigma^2)) for a mask (H, W) with 1 = cell, 0 = membrane.

    Cells are the 4-connected components of the mask. d_k(x) is the distance from x to cell k, computed in a
    window around cell k of margin 6 sigma (beyond it the term is below 1e-7); d1 <= d2 the two smallest.
    w_c: 1 / (2 f_c) for class c of frequency f_c, so that each class carries half of the total weight.
    """
    cells, _ = ndimage.label(mask)  # (H, W) labels 1..n
    f = mask.mean()  # fraction of cell pixels
    w_c = np.where(mask == 1, 0.5 / f, 0.5 / (1 - f))
    d1, d2 = np.full(mask.shape, np.inf), np.full(mask.shape, np.inf)
    r = int(6 * sigma)
    for k, box in enumerate(ndimage.find_objects(cells), start=1):
        win = tuple(slice(max(s.start - r, 0), s.stop + r) for s in box)
        d = ndimage.distance_transform_edt(cells[win] != k)  # Euclidean distance to the nearest pixel of cell k
        a, b = d1[win], d2[win]  # views into d1, d2
        b[...] = np.minimum(b, np.maximum(a, d))  # the second-smallest so far
        a[...] = np.minimum(a, d)  # the smallest so far
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))  # 0 where fewer than two cells are near
    return (w_c + np.where(mask == 0, border, 0.0)).astype(np.float32)


def weighted_cross_entropy(logits, target, weight):
    """Equation (1): mean over pixels of w(x) (-log p_l(x)(x)). logits (N, K, h, w), target (N, h, w), weight too."""
    return (weight * F.cross_entropy(logits, target, reduction="none")).mean()


# %% [markdown]
# ## Augmentation: elastic deformation on a coarse grid, flips and rotations


# %%
def elastic_deform(image, mask, weight, rng, sigma=10.0, grid=3):
    """Displacements (dy, dx) ~ N(0, sigma^2) at a grid x grid lattice of control points spanning the tile,
    bicubic (spline order 3) in between; each output pixel reads the input at its position + displacement:
    the image bicubically, the weight map linearly, the mask linearly then thresholded at 1/2 (so it stays
    binary); outside the tile, the tile mirrored. sigma = 0 is the identity."""
    H, W = image.shape
    coarse = rng.normal(0.0, sigma, (2, grid, grid)) if sigma > 0 else np.zeros((2, grid, grid))
    gy, gx = np.meshgrid(np.linspace(0, grid - 1, H), np.linspace(0, grid - 1, W), indexing="ij")
    dy, dx = (ndimage.map_coordinates(c, [gy, gx], order=3, mode="nearest") for c in coarse)  # (H, W) each
    yy, xx = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    at = [yy + dy, xx + dx]
    warp = lambda a, order: ndimage.map_coordinates(a, at, order=order, mode="mirror")  # noqa: E731
    return warp(image, 3), (warp(mask.astype(np.float32), 1) > 0.5).astype(mask.dtype), warp(weight, 1)


def augment(image, mask, weight, rng):
    """One of the 8 flips and quarter turns of the square tile, then an elastic deformation."""
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    arrays = [np.rot90(a, k) for a in (image, mask, weight)]
    arrays = [np.ascontiguousarray(a[:, ::-1] if flip else a) for a in arrays]
    return elastic_deform(*arrays, rng)


def sample_tile(padded, tile, out, rng):
    """A random training tile from one mirror-padded slice (image, mask, weight), each (H + 2m, W + 2m): the
    input tile (tile, tile), augmented, and its central (out, out) mask and weight."""
    image, mask, weight = padded
    y, x = (int(rng.integers(0, n - tile + 1)) for n in image.shape)
    image, mask, weight = augment(image[y : y + tile, x : x + tile], mask[y : y + tile, x : x + tile],
                                  weight[y : y + tile, x : x + tile], rng)  # fmt: skip
    m = (tile - out) // 2
    return image, mask[m : m + out, m : m + out], weight[m : m + out, m : m + out]


# %% [markdown]
# ## Metrics by hand: pixel error and the foreground-restricted Rand error


# %%
def pixel_error(prob, mask, threshold=0.5):
    """Fraction of pixels whose predicted class (cell where P(cell) > threshold) differs from the mask's."""
    return float(np.mean((prob > threshold) != (mask == 1)))


def rand_index(pred_labels, true_labels):
    """V_Rand = sum_ij n_ij^2 / (1/2 sum_i s_i^2 + 1/2 sum_j t_j^2) on the pixels where true_labels > 0.

    n_ij: pixels with predicted label i and true label j; s_i = sum_j n_ij, t_j = sum_i n_ij. A pixel with
    predicted label 0 (membrane) is a segment of its own: it adds 1 to sum n_ij^2 and to sum s_i^2.
    """
    fg = true_labels > 0
    s, t = pred_labels[fg].astype(np.int64), true_labels[fg].astype(np.int64)
    alone = s == 0
    n_ij = np.unique(s[~alone] * (t.max() + 1) + t[~alone], return_counts=True)[1]
    sum_n2 = (n_ij.astype(np.float64) ** 2).sum() + alone.sum()
    sum_s2 = (np.bincount(s[~alone]).astype(np.float64) ** 2).sum() + alone.sum()
    sum_t2 = (np.bincount(t).astype(np.float64) ** 2).sum()
    return float(sum_n2 / (0.5 * sum_s2 + 0.5 * sum_t2))


THRESHOLDS = np.round(np.arange(0.1, 1.0, 0.1), 1)  # 0.1, 0.2, ..., 0.9


def rand_scores(prob, mask, thresholds=THRESHOLDS):
    """V_Rand at each threshold t: the connected components of P(cell) > t against the true cells."""
    true_labels = ndimage.label(mask)[0]
    return np.array([rand_index(ndimage.label(prob > t)[0], true_labels) for t in thresholds])


def rand_error(prob, mask, thresholds=THRESHOLDS):
    """1 - max over thresholds of V_Rand (the challenge's foreground-restricted Rand error of one slice)."""
    return 1.0 - float(rand_scores(prob, mask, thresholds).max())


def evaluate(model, images, masks, tile):
    """Scores of whole slices. As the challenge, the best of the thresholds, one threshold for all slices:
    pixel error = min over t of the mean pixel error, Rand error = 1 - max over t of the mean V_Rand; also the
    pixel error at t = 0.5 (the weighted loss favours membrane, so a lower t is often better). P(cell) (N, H, W)."""
    probs = np.stack([predict(model, im, tile) for im in images])
    pix = np.mean([[pixel_error(p, m, t) for t in THRESHOLDS] for p, m in zip(probs, masks)], axis=0)  # (T,)
    v_rand = np.mean([rand_scores(p, m) for p, m in zip(probs, masks)], axis=0)  # (T,)
    scores = {"pixel_error": float(pix.min()), "rand_error": 1 - float(v_rand.max()),
              "pixel_error_at_half": float(pix[list(THRESHOLDS).index(0.5)]),
              "pixel_threshold": float(THRESHOLDS[pix.argmin()]), "rand_threshold": float(THRESHOLDS[v_rand.argmax()])}
    return scores, probs


# %% [markdown]
# ## Figures and small helpers


# %%
def plot_augmentation(image, mask, aug_image, aug_mask, path):
    """An input tile and its mask, then the same after a flip or turn and an elastic deformation."""
    fig = Figure(figsize=(10, 2.9), layout="constrained")
    titles = ("tile (mirrored past the border)", "mask (white: cell)", "augmented tile", "augmented mask")
    for ax, img, title in zip(fig.subplots(1, 4), (image, mask, aug_image, aug_mask), titles):
        ax.imshow(img, cmap="gray")
        ax.set(title=title, xticks=[], yticks=[])
    fig.suptitle("augmentation: flips, quarter turns, elastic deformation (3x3 grid, 10 px, bicubic)")
    fig.savefig(path, dpi=100)


def plot_validation(images, probs, masks, path, title):
    """Per validation slice: the image, P(membrane) predicted, the true membranes."""
    fig = Figure(figsize=(9, 3 * len(images)), layout="constrained")
    axes = fig.subplots(len(images), 3, squeeze=False)
    for row, img, p, m in zip(axes, images, probs, masks):
        for ax, a, t in zip(row, (img, 1 - p, 1 - m), ("slice", "predicted P(membrane)", "true membrane")):
            ax.imshow(a, cmap="gray", vmin=0, vmax=1)
            ax.set(title=t, xticks=[], yticks=[])
    fig.suptitle(title)
    fig.savefig(path, dpi=80)


def pick_device(name):
    """torch.device for --device: auto picks CUDA, then MPS, then the CPU; a device this machine lacks is an error."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(d for d, ok in available.items() if ok)
    if not available[name]:
        raise ValueError(f"--device {name}: not available on this machine")
    return torch.device(name)


def load_data(n_train, n_val, n_test, data_dir):
    """The first n_train training slices, n_val validation slices and n_test test slices."""
    (Xtr, Ytr), (Xva, Yva) = isbi2012("train", data_dir), isbi2012("val", data_dir)
    return Xtr[:n_train], Ytr[:n_train], Xva[:n_val], Yva[:n_val], isbi2012("test", data_dir)[0][:n_test]


# %% [markdown]
# ## Main: flags, one flat training loop, validation and the test predictions


# %%
RESUME_MAY_CHANGE = {"resume", "device", "threads", "data_dir", "out_dir", "n_test"}  # where it runs, what it reports


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs, each followed by the validation "
                   "scores and a checkpoint (default 12; 2 with --smoke)")
    p.add_argument("--steps-per-epoch", type=positive_int, default=None, help="optimizer steps per epoch, each "
                   "on --batch-size random augmented tiles (default 50; 15 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="tiles per step (default 1, as the "
                   "paper: one large tile)")
    p.add_argument("--base", type=positive_int, default=None, help="channels of the first level; the paper's is "
                   "64 (default 16; 4 with --smoke)")
    p.add_argument("--tile", type=positive_int, default=None, help="input tile side, 124 + 16 b with b >= 4 "
                   "(default 572, the paper's: 388 output pixels; 380 with --smoke)")
    p.add_argument("--lr", type=positive_float, default=None, help="learning rate of Adam (default 1e-3; 3e-3 with "
                   "--smoke)")
    p.add_argument("--n-train", type=positive_int, default=None, help="training slices used, the first N of 25 "
                   "(default 25; 4 with --smoke)")
    p.add_argument("--n-val", type=positive_int, default=None, help="validation slices scored, the first N of 5 "
                   "(default 5; 2 with --smoke)")
    p.add_argument("--n-test", type=positive_int, default=None, help="unlabelled test slices predicted as PNGs "
                   "(default 30; 2 with --smoke)")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/checkpoint.pt (written every "
                   "epoch); a changed configuration is refused")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds weights, tiles, augmentation (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with isbi2012-membrane/ (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="metrics, figures, checkpoint (default runs/unet_torch)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run: a tiny U-Net on 4 slices")
    args = p.parse_args(argv)
    defaults = {"epochs": (2, 12), "steps_per_epoch": (50, 200), "lr": (3e-3, 1e-3), "batch_size": (1, 1),
                "base": (4, 16), "tile": (380, 572), "n_train": (4, 25), "n_val": (2, 5),
                "n_test": (2, 30)}  # fmt: skip
    for name, (smoke, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    try:
        out = output_size(args.tile)
    except ValueError as exc:
        p.error(f"--tile: {exc}")
    if out > 512:
        p.error(f"--tile {args.tile}: its output side {out} is larger than a 512x512 slice")
    for flag, n in (("n_train", 25), ("n_val", 5), ("n_test", 30)):
        if getattr(args, flag) > n:
            p.error(f"--{flag.replace('_', '-')} is at most {n}, the slices there are")
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    ckpt_path, ckpt = out_dir / "checkpoint.pt", None
    if args.resume:
        if not ckpt_path.exists():
            p.error(f"--resume: no checkpoint at {ckpt_path}; train first (same --out-dir)")
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)  # our own file
        diff = [f"--{k.replace('_', '-')} {ckpt['config'].get(k)} -> {v}" for k, v in vars(args).items()
                if k not in RESUME_MAY_CHANGE and ckpt["config"].get(k) != v]  # fmt: skip
        if diff:
            p.error(f"--resume: {ckpt_path} was trained with other settings: {'; '.join(diff)}")
    try:
        Xtr, Ytr, Xva, Yva, Xte = load_data(args.n_train, args.n_val, args.n_test, args.data_dir)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    out_dir.mkdir(parents=True, exist_ok=True)
    m = (args.tile - out) // 2
    t0 = time.perf_counter()
    W = [weight_map(y) for y in Ytr]  # precomputed once per ground truth, as in the paper
    padded = [[np.pad(a, m, mode="symmetric") for a in trio] for trio in zip(Xtr, Ytr.astype(np.int64), W)]
    weight_s = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    model = unet(1, 2, args.base).to(device)
    n_params = sum(w.numel() for w in model.parameters())
    print(f"U-Net base {args.base}: {n_params:,} parameters; tile {args.tile} -> {out}; {len(Xtr)} training, "
          f"{len(Xva)} validation slices on {device}; weight maps in {weight_s:.1f} s")
    # Adam, not the paper's SGD with momentum 0.99: a few hundred steps of a CPU run, no time for an lr search.
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    hist = {k: [] for k in ("loss", "val_pixel_error", "val_rand_error", "val_pixel_error_at_half", "train_pixel_error",
                            "step_s", "epoch_s")}  # fmt: skip
    start, saved, train_s = 1, 0, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"]), opt.load_state_dict(ckpt["opt"])
        rng.bit_generator.state, hist = ckpt["rng"], ckpt["hist"]
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        start, saved, train_s = ckpt["epoch"] + 1, ckpt["epoch"], ckpt["train_s"]
        print(f"resumed from {ckpt_path} after epoch {saved}")
    else:
        a = augment(*(t[: args.tile, : args.tile] for t in padded[0]), np.random.default_rng(args.seed + 1))
        plot_augmentation(padded[0][0][: args.tile, : args.tile], padded[0][1][: args.tile, : args.tile], a[0], a[1],
                          out_dir / "augmentation.png")  # fmt: skip
    epoch, probs = start, None
    try:
        for epoch in range(start, args.epochs + 1):
            t0, total = time.perf_counter(), 0.0
            bar = tqdm(range(args.steps_per_epoch), desc=f"epoch {epoch}/{args.epochs}", leave=False,
                       disable=not sys.stdout.isatty())  # fmt: skip
            for _ in bar:
                batch = [sample_tile(padded[int(rng.integers(len(padded)))], args.tile, out, rng)
                         for _ in range(args.batch_size)]  # fmt: skip
                x, y, w = (torch.from_numpy(np.stack(a)).to(device) for a in zip(*batch))
                loss = weighted_cross_entropy(model(x[:, None].float()), y.long(), w.float())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() / args.steps_per_epoch
                if not bar.disable:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
            step_s = (time.perf_counter() - t0) / args.steps_per_epoch
            train_s += step_s * args.steps_per_epoch
            val, probs = evaluate(model, Xva, Yva, args.tile)
            train_pix = np.mean([pixel_error(predict(model, x, args.tile), y) for x, y in zip(Xtr[:2], Ytr)])  # t 0.5
            row = (total, val["pixel_error"], val["rand_error"], val["pixel_error_at_half"], train_pix, step_s,
                   time.perf_counter() - t0)
            for k, v in zip(hist, row):
                hist[k].append(float(v))
            print(f"epoch {epoch:2d}/{args.epochs}  loss {total:.4f} | train pixel error {train_pix:.4f} | val pixel "
                  f"error {val['pixel_error']:.4f} (at 0.5: {val['pixel_error_at_half']:.4f}), Rand error "
                  f"{val['rand_error']:.4f} | {hist['epoch_s'][-1]:.0f} s, "
                  f"{train_s / 60:.1f} min training", flush=True)  # fmt: skip
            tmp = ckpt_path.with_name("checkpoint.pt.tmp")  # written, then renamed: an interrupt keeps the old one
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch, "hist": hist,
                        "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "config": vars(args),
                        "train_s": train_s}, tmp)  # fmt: skip
            os.replace(tmp, ckpt_path)
            saved = epoch
    except KeyboardInterrupt:  # Ctrl-C: say what is saved and how to go on, without a traceback
        flags = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--resume"]
        where = f"{ckpt_path} holds epoch {saved}. Resume with" if saved else "nothing saved. Start again with"
        print(f"\ninterrupted in epoch {epoch}; {where}:\n  " + shlex.join(
            ["python", "04-cnns/unet_torch.py", *flags] + (["--resume"] if saved else [])), file=sys.stderr)
        sys.exit(130)

    if probs is None:  # a resumed run that had already finished: score it again
        val, probs = evaluate(model, Xva, Yva, args.tile)
    plot_validation(Xva, probs, Yva, out_dir / "validation.png", f"U-Net (base {args.base}) on {len(Xva)} validation "
                    f"slices: pixel error {val['pixel_error']:.4f}, Rand error {val['rand_error']:.4f}")  # fmt: skip
    (out_dir / "test_predictions").mkdir(exist_ok=True)
    for i, x in enumerate(Xte):  # the challenge's unlabelled slices: P(cell), white = cell, as the labels
        mpimg.imsave(out_dir / "test_predictions" / f"{i}.png", predict(model, x, args.tile), cmap="gray",
                     vmin=0, vmax=1)  # fmt: skip
    with torch.device("meta"):
        paper_params = sum(w.numel() for w in unet().parameters())
    metrics = {"script": Path(__file__).stem, "val_pixel_error": val["pixel_error"],
               "val_rand_error": val["rand_error"], "val_pixel_error_at_half": val["pixel_error_at_half"],
               "val_pixel_threshold": val["pixel_threshold"], "val_rand_threshold": val["rand_threshold"],
               "train_minutes": train_s / 60, "paper_test_pixel_error": 0.0611, "paper_test_rand_error": 0.0382,
               "all_cell_val_pixel_error": float(1 - Yva.mean()), "params": n_params, "paper_params": paper_params,
               "first_loss": hist["loss"][0], "final_train_loss": hist["loss"][-1],
               "sec_per_step": float(np.median(hist["step_s"])), "sec_per_epoch": float(np.median(hist["epoch_s"])),
               "weight_map_s": weight_s, "device": str(device), "threads": torch.get_num_threads(),
               "config": vars(args), "history": hist}  # fmt: skip
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"validation pixel error {val['pixel_error']:.4f}, Rand error {val['rand_error']:.4f} (paper, challenge "
          f"test set: 0.0611, 0.0382) after {train_s / 60:.1f} min; wrote {out_dir}/metrics.json, validation.png, "
          f"augmentation.png, test_predictions/")
    return metrics


if __name__ == "__main__":
    main()
