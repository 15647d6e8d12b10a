"""Max and average pooling from scratch in NumPy: forward and backward, with stride and padding.

A pooling layer slides a kh x kw window over each channel of x (N, C, H, W) at stride (sh, sw)
and replaces the window by one number: its maximum (max pooling) or its mean (average pooling).
Channels never mix, and there is nothing to learn. With P the padded input and (i, j) an output
position, per example n and channel c:

    max:      out[n, c, i, j] = max_{a < kh, b < kw} P[n, c, i*sh + a, j*sw + b]
    average:  out[n, c, i, j] = (1 / (kh kw)) sum_{a, b} P[n, c, i*sh + a, j*sw + b]

Output size per axis (input n, kernel k, stride s, padding p): windows start at 0, s, 2s, ... up to
n + 2p - k, so there are n_out = floor((n + 2p - k) / s) + 1 of them (floor: a last partial window is
dropped, torch's default ceil_mode=False). Padding is -inf for max pooling (it never wins a window)
and 0 for average pooling, where it counts in the divisor kh*kw (torch's count_include_pad=True). As
torch, we require p <= k/2 (every window holds a real pixel); stride defaults to the kernel size.

Why pool (d2l 7.5; Goodfellow et al. 9.3): the maximum of a window does not change when its strongest
response moves inside it (invariance to small shifts); 2x2 / stride 2 quarters the activations, so
later layers see more of the image at a lower cost; and there are no parameters, nothing to overfit.

The backward passes. Average pooling is linear: each output spreads dout / (kh kw) over its window.
Max pooling is, around a given x, a selection out[i, j] = P[argmax of its window], so dL/dP is
dout[i, j] at that argmax and 0 elsewhere; a cell that wins several overlapping windows collects the
sum. Ties: the first maximum in row-major order takes the gradient, as in torch (any one choice is a
valid subgradient). Both loop over the kh*kw window offsets, a strided add each, then crop the padding.

Reading: d2l 7.5 "Pooling", https://d2l.ai/chapter_convolutional-neural-networks/pooling.html;
I. Goodfellow, Y. Bengio, A. Courville, "Deep Learning" (2016), 9.3 "Pooling",
https://www.deeplearningbook.org/contents/convnets.html; CS231n "Convolutional Neural Networks",
https://cs231n.github.io/convolutional-networks/#pool.
Arc: Foundations of CNNs -- pooling layers.

Run:  python 04-cnns/pooling_numpy.py [--n-images 2]
      python 04-cnns/pooling_numpy.py --smoke
Look first at `maxpool_backward`: the gradient is routed back to the argmax of each window; then
at pooling.png, images and their edge maps pooled at kernel 2 and 3, stride 2.
"""

# %%
import argparse
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from numpy.lib.stride_tricks import sliding_window_view

from data import FASHION_MNIST_CLASSES, DataError, fashion_mnist, nonneg_int, positive_int, save_metrics

# %% [markdown]
# ## Geometry: int-or-pair arguments, checks, the output size


# %%
def pair(v, name):
    """(v, v) for an int v, (v[0], v[1]) for a pair of ints; anything else is a ValueError."""
    hw = (v, v) if isinstance(v, (int, np.integer)) else tuple(v) if isinstance(v, (tuple, list)) else None
    if hw is None or len(hw) != 2 or not all(isinstance(t, (int, np.integer)) for t in hw):
        raise ValueError(f"{name} must be an int or a pair of ints (h, w), got {v!r}")
    return int(hw[0]), int(hw[1])


def output_size(n, k, s, p):
    """Windows that fit along one axis: floor((n + 2p - k) / s) + 1 (a last partial window is dropped)."""
    return (n + 2 * p - k) // s + 1


def pool_geometry(x, kernel, stride, pad):
    """Checks x and the window; returns (kh, kw), (sh, sw), (ph, pw), (Ho, Wo)."""
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.dtype.kind != "f":
        raise ValueError(f"x must be a float array (N, C, H, W), got {getattr(x, 'dtype', type(x))} "
                         f"of shape {np.shape(x)}")
    (kh, kw), (ph, pw) = pair(kernel, "kernel"), pair(pad, "pad")
    sh, sw = pair(kernel if stride is None else stride, "stride")  # stride defaults to the kernel size
    H, W = x.shape[2:]
    if min(kh, kw) < 1:
        raise ValueError(f"kernel must be at least 1, got {(kh, kw)}")
    if min(sh, sw) < 1:
        raise ValueError(f"stride must be at least 1, got {(sh, sw)}")
    if min(ph, pw) < 0:
        raise ValueError(f"pad must be non-negative, got {(ph, pw)}")
    if 2 * ph > kh or 2 * pw > kw:  # else a window could hold padding only (torch refuses it too)
        raise ValueError(f"pad {(ph, pw)} must be at most half the kernel {(kh, kw)}")
    if kh > H + 2 * ph or kw > W + 2 * pw:
        raise ValueError(f"kernel {(kh, kw)} is larger than the padded input {(H + 2 * ph, W + 2 * pw)}")
    return (kh, kw), (sh, sw), (ph, pw), (output_size(H, kh, sh, ph), output_size(W, kw, sw, pw))


def windows(xp, kernel, stride):
    """All pooling windows of the padded input xp (N, C, Hp, Wp) as a view (N, C, Ho, Wo, kh, kw).

    sliding_window_view gives the windows at every start (stride 1); keeping every sh-th row and
    every sw-th column of starts gives the strided ones. No data is copied.
    """
    return sliding_window_view(xp, kernel, axis=(2, 3))[:, :, ::stride[0], ::stride[1]]


def scatter_to_windows(dwin, x_shape, kernel, stride, pad):
    """The adjoint of `windows`: add dwin[..., a, b] (N, C, Ho, Wo) back onto the cells it came from.

    Window (i, j) read cell (i*sh + a, j*sw + b) at offset (a, b); one strided add per offset
    handles all windows at once, and overlapping windows accumulate. Then the padding is cropped.
    """
    (N, C, H, W), (kh, kw), (sh, sw), (ph, pw) = x_shape, kernel, stride, pad
    Ho, Wo = dwin.shape[2:4]
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dwin.dtype)  # (N, C, Hp, Wp)
    for a in range(kh):
        for b in range(kw):
            dxp[:, :, a:a + sh * (Ho - 1) + 1:sh, b:b + sw * (Wo - 1) + 1:sw] += dwin[..., a, b]
    return dxp[:, :, ph:ph + H, pw:pw + W]  # (N, C, H, W)


# %% [markdown]
# ## Max pooling: forward beside backward


# %%
def maxpool_forward(x, kernel, stride=None, pad=0):
    """out = max over each window.   x (N, C, H, W) -> out (N, C, Ho, Wo); kernel, stride, pad: int or (h, w)."""
    kernel, stride, pad, (Ho, Wo) = pool_geometry(x, kernel, stride, pad)
    (ph, pw), (kh, kw) = pad, kernel
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)  # padding never wins
    win = windows(xp, kernel, stride).reshape(*x.shape[:2], Ho, Wo, kh * kw)  # (N, C, Ho, Wo, kh*kw)
    idx = win.argmax(axis=-1)  # (N, C, Ho, Wo) the first maximum in row-major order, as torch
    out = win.max(axis=-1)  # (N, C, Ho, Wo) the values at idx
    return out, (x.shape, idx, kernel, stride, pad)


def maxpool_backward(dout, cache):
    """dL/dx (N, C, H, W) from dL/dout (N, C, Ho, Wo): each output's gradient goes to its window's argmax."""
    x_shape, idx, (kh, kw), stride, pad = cache
    # dL/dwindow[..., a, b] = dout where (a, b) is the argmax, else 0    (N, C, Ho, Wo, kh, kw)
    dwin = (dout[..., None] * (idx[..., None] == np.arange(kh * kw))).reshape(*dout.shape, kh, kw)
    return scatter_to_windows(dwin, x_shape, (kh, kw), stride, pad)


# %% [markdown]
# ## Average pooling: forward beside backward


# %%
def avgpool_forward(x, kernel, stride=None, pad=0):
    """out = mean over each window, padding zeros included.   x (N, C, H, W) -> out (N, C, Ho, Wo)."""
    kernel, stride, (ph, pw), _ = pool_geometry(x, kernel, stride, pad)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))  # zeros, counted in the divisor kh*kw
    out = windows(xp, kernel, stride).mean(axis=(-2, -1))  # (N, C, Ho, Wo)
    return out, (x.shape, kernel, stride, (ph, pw))


def avgpool_backward(dout, cache):
    """dL/dx (N, C, H, W) from dL/dout (N, C, Ho, Wo): each output spreads dout / (kh kw) over its window."""
    x_shape, (kh, kw), stride, pad = cache
    # out = (1 / (kh kw)) sum_{a, b} window[a, b], so dL/dwindow[a, b] = dout / (kh kw) for every (a, b)
    dwin = np.broadcast_to((dout / (kh * kw))[..., None, None], (*dout.shape, kh, kw))
    return scatter_to_windows(dwin, x_shape, (kh, kw), stride, pad)


# %% [markdown]
# ## A self-check without torch: the backward passes against central finite differences


# %%
def gradient_check(rng, eps=1e-6):
    """max relative error of each backward against (L(x + eps e) - L(x - eps e)) / (2 eps), L = sum(out dout).

    Overlapping windows with padding (kernel 3, stride 2, pad 1) on random float64 inputs;
    continuous random values have no ties, so max pooling is differentiable at x.
    """
    x = rng.standard_normal((2, 3, 7, 6))
    errors = {}
    for name, fwd, bwd in [("max", maxpool_forward, maxpool_backward), ("avg", avgpool_forward, avgpool_backward)]:
        out, cache = fwd(x, 3, 2, 1)
        dout = rng.standard_normal(out.shape)
        dx = bwd(dout, cache)
        num = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            e = np.zeros_like(x)
            e[i] = eps
            num[i] = ((fwd(x + e, 3, 2, 1)[0] - fwd(x - e, 3, 2, 1)[0]) * dout).sum() / (2 * eps)
        errors[name] = float(np.abs(dx - num).max() / max(np.abs(dx).max() + np.abs(num).max(), 1e-12))
    return errors


# %% [markdown]
# ## Data: images and their edge maps, and how much a one-pixel shift changes each representation


# %%
def sobel_magnitude(images):
    """|grad| = sqrt(gx^2 + gy^2) with the 3x3 Sobel kernels, zero padding 1 ("same" size).   (N, H, W)."""
    gx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=images.dtype)  # responds to vertical edges
    gy = gx.T  # horizontal edges
    win = sliding_window_view(np.pad(images, ((0, 0), (1, 1), (1, 1))), (3, 3), axis=(1, 2))  # (N, H, W, 3, 3)
    return np.sqrt(np.einsum("nhwab,ab->nhw", win, gx) ** 2 + np.einsum("nhwab,ab->nhw", win, gy) ** 2)


def pool2d(maps, kind, k):
    """Pool a stack of single-channel maps (N, H, W) with kernel k and stride 2; kind is "max" or "avg"."""
    forward = maxpool_forward if kind == "max" else avgpool_forward
    return forward(maps[:, None], k, 2)[0][:, 0]  # (N, 1, H, W) -> (N, 1, Ho, Wo) -> (N, Ho, Wo)


def shift_change(maps, kind=None, k=None):
    """Mean relative change ||f(shift(m)) - f(m)|| / ||f(m)|| when m (N, H, W) moves one pixel to the right.

    f is pooling (kind "max" or "avg", kernel k, stride 2), or the identity when kind is None. The
    shift brings in a zero column on the left, which for Fashion-MNIST's black background changes
    nothing else.
    """
    shifted = np.pad(maps, ((0, 0), (0, 0), (1, 0)))[:, :, :-1]
    a, b = (maps, shifted) if kind is None else (pool2d(maps, kind, k), pool2d(shifted, kind, k))
    return float(np.mean(np.linalg.norm((b - a).reshape(len(a), -1), axis=1)
                         / np.linalg.norm(a.reshape(len(a), -1), axis=1)))


# %% [markdown]
# ## The figure


# %%
def plot_pooling(images, edges, labels, results, path):
    """Per image, two rows: the image and its Sobel edge map, each beside its four pooled versions."""
    n = len(images)
    fig = Figure(figsize=(13, 2.6 * 2 * n), layout="constrained")
    axes = fig.subplots(2 * n, 1 + len(results), squeeze=False)
    for i in range(n):
        for r, (kind, src, cmap) in enumerate([("image", images, "gray"), ("edges", edges, "magma")]):
            row = axes[2 * i + r]
            vmax = src[i].max()
            im = row[0].imshow(src[i], cmap=cmap, vmin=0, vmax=vmax)
            row[0].set_title(f"{kind} {src[i].shape[0]}x{src[i].shape[1]}", fontsize=9)
            row[0].set_ylabel(f"{FASHION_MNIST_CLASSES[labels[i]]}\n{'pixels' if r == 0 else '|Sobel gradient|'}")
            for ax, (name, maps) in zip(row[1:], results.items()):
                m = maps[kind][i]
                ax.imshow(m, cmap=cmap, vmin=0, vmax=vmax)  # one colour scale per row: pooled values stay in range
                ax.set_title(f"{name} -> {m.shape[0]}x{m.shape[1]}", fontsize=9)
            for ax in row:
                ax.set(xticks=[], yticks=[])
            fig.colorbar(im, ax=row, shrink=0.9, label="pixel value" if r == 0 else "edge strength")
    fig.suptitle("Max and average pooling of Fashion-MNIST images and of their Sobel edge maps: kernel k, "
                 "stride s, no padding; output size floor((n + 2p - k) / s) + 1")
    fig.savefig(path, dpi=110)


# %% [markdown]
# ## Main: pool real images and edge maps at kernel 2 and 3, stride 2


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-images", type=positive_int, default=None,
                   help="test images in the figure (default 2; 1 with --smoke); the shift statistic uses "
                        "the first 1,000 test images (200 with --smoke)")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seeds the choice of images and the self-check (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/pooling_numpy)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a few real images")
    args = p.parse_args(argv)
    if args.n_images is None:
        args.n_images = 1 if args.smoke else 2
    if args.n_images > 8:
        p.error(f"argument --n-images: at most 8, got {args.n_images}")
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        X, y = fashion_mnist("test", args.data_dir)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    rng = np.random.default_rng(args.seed)

    X = X[:200 if args.smoke else 1000].astype(np.float32) / 255  # (N, 28, 28) pixels in [0, 1]
    edges = sobel_magnitude(X)  # (N, 28, 28)
    pick = rng.choice(len(X), args.n_images, replace=False)
    configs = [("max", 2), ("avg", 2), ("max", 3), ("avg", 3)]  # (kind, kernel), all at stride 2
    results = {f"{kind} k{k} s2": {"image": pool2d(X[pick], kind, k), "edges": pool2d(edges[pick], kind, k)}
               for kind, k in configs}
    shapes = {name: list(r["image"].shape[1:]) for name, r in results.items()}
    for name, shape in shapes.items():
        print(f"{name}: (N, C, 28, 28) -> (N, C, {shape[0]}, {shape[1]})")

    # Invariance to small shifts: how much does a one-pixel shift of the edge map change each representation?
    shift = {"none": shift_change(edges), **{f"{kind} k{k} s2": shift_change(edges, kind, k) for kind, k in configs}}
    print("relative change of the edge map under a one-pixel shift: "
          + ", ".join(f"{name} {v:.3f}" for name, v in shift.items()))
    check = gradient_check(np.random.default_rng([args.seed, 1]))
    print(f"self-check, backward vs finite differences (relative error): max {check['max']:.1e}, "
          f"avg {check['avg']:.1e}")

    plot_pooling(X[pick], edges[pick], y[pick], results, out_dir / "pooling.png")
    metrics = {"script": Path(__file__).stem, "input_shape": [28, 28], "output_shapes": shapes,
               "shift_change": shift, "gradcheck_rel_error": check, "images": [int(i) for i in pick],
               "config": vars(args)}
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"wrote {out_dir}/metrics.json and pooling.png")
    return metrics


if __name__ == "__main__":
    main()
