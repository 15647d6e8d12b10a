"""Two-dimensional convolution by hand in NumPy: forward and backward, with stride and padding, over volumes.

A convolutional layer slides F small kernels over an input volume x of N images with C channels
and, at every position, takes the dot product of each kernel with the window under it. Like every
deep-learning framework, we compute the cross-correlation (the kernel is not flipped; a learned
kernel does not care which convention it is learned in):

    out[n, f, i, j] = b[f] + sum_{c, u, v} W[f, c, u, v] * xp[n, c, i*sh + u, j*sw + v]

    x  (N, C, H, W)        input volume; xp is x with pad rows/columns of zeros on each side
    W  (F, C, kh, kw)      F kernels, each spanning all C input channels ("convolution over volume")
    b  (F,)                one bias per kernel
    out (N, F, Ho, Wo)     one output channel ("feature map") per kernel

Output size. Padded with p zeros on both sides, an axis of n positions has n + 2p; output position i
places the kernel's k taps at s*i .. s*i + k - 1, which fits while i <= (n + 2p - k) / s:

    n_out = floor((n + 2p - k) / s) + 1                                            (conv_output_size)

(the floor skips the last rows that do not start a full window). "valid", p = 0: n_out = n - k + 1
at stride 1, every layer shrinks the image. "same", p = (k - 1)/2 for odd k: n_out = n at stride 1,
ceil(n / s) at stride s. A kernel larger than the padded input, or a stride of 0, raises ValueError.
`conv2d_forward_naive` loops over every output number as the sum reads; `conv2d_forward` rewrites the
sum as one matrix product ("im2col", Chellapilla et al. 2006) for BLAS. Each has its backward pass.

Reading: I. Goodfellow, Y. Bengio, A. Courville, "Deep Learning" (MIT Press, 2016), chapter 9,
https://www.deeplearningbook.org/contents/convnets.html; V. Dumoulin and F. Visin, "A guide to
convolution arithmetic for deep learning" (2016), https://arxiv.org/abs/1603.07285 (the output
size, padding and stride, with pictures); CS231n notes, https://cs231n.github.io/convolutional-networks/;
K. Chellapilla, S. Puri, P. Simard, "High Performance Convolutional Neural Networks for Document
Processing" (2006), https://inria.hal.science/inria-00112631 (convolution as one matrix product).
Arc: Foundations of CNNs -- edge detection, padding, strided convolutions, convolutions over volume,
one layer of a convolutional network.

Run:  python 04-cnns/conv_numpy.py             (Sobel edges on Fashion-MNIST test images -> conv_demo.png)
      python 04-cnns/conv_numpy.py --smoke
Look first at `conv2d_backward_naive` (each output number hands its gradient back to the window it
read), then at conv_demo.png: vertical and horizontal edges, and what padding and stride do to the size.
"""

# %%
import argparse
import sys
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from data import DataError, fashion_mnist, nonneg_int, positive_int, save_metrics

# %% [markdown]
# ## Geometry: the output size, and clear errors for shapes that cannot work


# %%
def pair(value, name):
    """An int or an (h, w) pair, as a (h, w) tuple of ints."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (int, np.integer)) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"{name} must be an int or a pair of ints (h, w), got {value!r}")


def conv_output_size(n, k, stride, pad):
    """floor((n + 2 pad - k) / stride) + 1 along one axis (derived in the module docstring)."""
    if stride < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")
    if pad < 0:
        raise ValueError(f"padding must be non-negative, got {pad}")
    if k < 1:
        raise ValueError(f"kernel size must be at least 1, got {k}")
    if k > n + 2 * pad:
        raise ValueError(f"kernel size {k} is larger than the padded input {n} + 2*{pad} = {n + 2 * pad}")
    return (n + 2 * pad - k) // stride + 1


def conv_geometry(x, W, b, stride, pad):
    """Check x (N, C, H, W), W (F, C, kh, kw), b (F,); return (sh, sw), (ph, pw), (Ho, Wo)."""
    if x.ndim != 4 or W.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W) and W (F, C, kh, kw), got shapes {x.shape} and {W.shape}")
    if x.shape[1] != W.shape[1]:
        raise ValueError(f"channel mismatch: x has {x.shape[1]} channels but W expects {W.shape[1]}")
    if b.shape != (W.shape[0],):
        raise ValueError(f"b must have shape ({W.shape[0]},), one bias per kernel, got {b.shape}")
    (sh, sw), (ph, pw) = pair(stride, "stride"), pair(pad, "pad")
    Ho = conv_output_size(x.shape[2], W.shape[2], sh, ph)
    Wo = conv_output_size(x.shape[3], W.shape[3], sw, pw)
    return (sh, sw), (ph, pw), (Ho, Wo)


# %% [markdown]
# ## The definition, as loops: forward beside backward


# %%
def conv2d_forward_naive(x, W, b, stride=1, pad=0):
    """out[n, f, i, j] = b[f] + sum_{c,u,v} W[f, c, u, v] xp[n, c, i*sh + u, j*sw + v], one number at a time."""
    (sh, sw), (ph, pw), (Ho, Wo) = conv_geometry(x, W, b, stride, pad)
    N, F, (kh, kw) = len(x), len(W), W.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))  # (N, C, H + 2ph, W + 2pw), zeros around
    out = np.empty((N, F, Ho, Wo), np.result_type(x, W))
    for n in range(N):
        for f in range(F):
            for i in range(Ho):
                for j in range(Wo):
                    window = xp[n, :, i * sh : i * sh + kh, j * sw : j * sw + kw]  # (C, kh, kw)
                    out[n, f, i, j] = b[f] + np.sum(W[f] * window)
    return out, (xp, W, (sh, sw), (ph, pw))


def conv2d_backward_naive(dout, cache):
    """From dL/dout (N, F, Ho, Wo) to dL/dx, dL/dW, dL/db, one output number at a time.

    Output number out[n, f, i, j] was computed as b[f] + sum W[f] * window, where window is
    xp[n, :, i*sh : i*sh + kh, j*sw : j*sw + kw]. Its gradient g = dout[n, f, i, j] therefore flows
      to b[f]:      g                      db[f]  = sum_{n,i,j} dout[n, f, i, j]
      to W[f]:      g * window             dW[f]  = sum_{n,i,j} dout[n, f, i, j] * window
                                           (a correlation of the input with dout)
      to the window: g * W[f]              dxp[n, :, window] += dout[n, f, i, j] * W[f]
                                           (scatter-add: windows overlap, so contributions add up)
    At stride 1 the scatter-add is dxp[n, c, y, z] = sum_{f,u,v} dout[n, f, y-u, z-v] W[f, c, u, v]:
    a "full" convolution of dout with the kernel flipped, hence "the gradient of a convolution is a
    convolution". The padding zeros are constants; their gradient is cut off at the end.
    """
    xp, W, (sh, sw), (ph, pw) = cache
    N, F, Ho, Wo = dout.shape
    kh, kw = W.shape[2:]
    dxp, dW, db = np.zeros(xp.shape, dout.dtype), np.zeros(W.shape, dout.dtype), np.zeros(F, dout.dtype)
    for n in range(N):
        for f in range(F):
            for i in range(Ho):
                for j in range(Wo):
                    rows, cols = slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw)
                    db[f] += dout[n, f, i, j]
                    dW[f] += dout[n, f, i, j] * xp[n, :, rows, cols]
                    dxp[n, :, rows, cols] += dout[n, f, i, j] * W[f]
    dx = dxp[:, :, ph : xp.shape[2] - ph, pw : xp.shape[3] - pw]  # (N, C, H, W): drop the padding's gradient
    return dx, dW, db


# %% [markdown]
# ## The same layer as one matrix product (im2col), for speed
#
# Gather every window the kernel visits into the columns of one matrix, and the whole layer is one
# matrix product that BLAS runs near the processor's peak. Index each window by its kernel offset
# (c, u, v) and its output position (i, j, n):
#
#     cols[(c, u, v), (i, j, n)] = xp[n, c, i*sh + u, j*sw + v]        (C*kh*kw, Ho*Wo*N)
#     out[f, (i, j, n)] = sum_{(c,u,v)} W[f, (c, u, v)] cols[(c, u, v), (i, j, n)] + b[f]
#                       = (W2 @ cols)[f, (i, j, n)] + b[f]              W2 = W as (F, C*kh*kw)
#
# The backward pass is then two more matrix products and the scatter-add of the naive version:
#     dW2   = d @ cols^T          d = dout as (F, Ho*Wo*N): sums over every (i, j, n) at once
#     dcols = W2^T @ d            the gradient of each gathered copy of an input pixel
#     dxp[n, c, i*sh + u, j*sw + v] += dcols[(c, u, v), (i, j, n)]      ("col2im": copies add up)
#
# Both im2col and col2im loop over the kh*kw kernel offsets only: for a fixed (u, v), the pixels
# xp[:, :, u + sh*i, v + sw*j] over all (n, i, j) are one strided slice of xp, copied (or added)
# by NumPy in one statement. Layout decides the speed of these copies. We keep the batch axis LAST
# inside the layer, x as (C, H, W, N) (the layout of Krizhevsky's cuda-convnet): then a slice
# xp[:, u + sh*i, v + sw*j, :] moves runs of whole image batches (N numbers, or Wo*N at stride 1)
# contiguous in memory, instead of rows of Wo numbers. Only the layer's input, output and their
# gradients are transposed between (N, C, H, W) and this layout, copies many times smaller than cols
# (the input, kh*kw times at stride 1).


# %%
def conv2d_forward(x, W, b, stride=1, pad=0):
    """out = W2 @ im2col(x) + b, vectorised.   x (N, C, H, W), W (F, C, kh, kw), b (F,) -> out (N, F, Ho, Wo)."""
    (sh, sw), (ph, pw), (Ho, Wo) = conv_geometry(x, W, b, stride, pad)
    N, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    xp = np.zeros((C, H + 2 * ph, Wd + 2 * pw, N), x.dtype)  # (C, Hp, Wp, N): batch last, zero border
    xp[:, ph : ph + H, pw : pw + Wd, :] = x.transpose(1, 2, 3, 0)
    cols = np.empty((C, kh, kw, Ho, Wo, N), x.dtype)
    # One strided copy per kernel offset: cols[c, u, v, i, j, n] = xp[c, u + sh*i, v + sw*j, n], the
    # slice u : u + sh*(Ho-1) + 1 : sh picking rows u, u + sh, ..., u + sh*(Ho-1) (and columns alike).
    for u in range(kh):
        for v in range(kw):
            cols[:, u, v] = xp[:, u : u + sh * (Ho - 1) + 1 : sh, v : v + sw * (Wo - 1) + 1 : sw, :]
    cols = cols.reshape(C * kh * kw, Ho * Wo * N)
    out = W.reshape(F, C * kh * kw) @ cols  # (F, Ho*Wo*N): the whole layer in one product
    out += b[:, None]
    out = out.reshape(F, Ho, Wo, N).transpose(3, 0, 1, 2)  # (N, F, Ho, Wo)
    return np.ascontiguousarray(out), (cols, W, x.shape, (sh, sw), (ph, pw))


def conv2d_backward(dout, cache):
    """dL/dx (N, C, H, W), dL/dW (F, C, kh, kw), dL/db (F,) from dL/dout (N, F, Ho, Wo), vectorised."""
    cols, W, (N, C, H, Wd), (sh, sw), (ph, pw) = cache
    F, _, kh, kw = W.shape
    _, _, Ho, Wo = dout.shape
    d = dout.transpose(1, 2, 3, 0).reshape(F, Ho * Wo * N)  # (F, Ho*Wo*N), columns ordered as cols'
    db = d.sum(axis=1)  # (F,)
    # dW2 = d @ cols^T (F, C*kh*kw): every window times its output's gradient, summed over (i, j, n).
    # Computed as (cols @ d^T)^T, the same numbers in the orientation OpenBLAS runs faster.
    dW = (cols @ d.T).T.reshape(W.shape)
    dcols = (W.reshape(F, C * kh * kw).T @ d).reshape(C, kh, kw, Ho, Wo, N)
    dxp = np.zeros((C, H + 2 * ph, Wd + 2 * pw, N), dcols.dtype)  # (C, Hp, Wp, N)
    for u in range(kh):  # col2im: each copy of a pixel in cols returns its gradient to the pixel
        for v in range(kw):
            dxp[:, u : u + sh * (Ho - 1) + 1 : sh, v : v + sw * (Wo - 1) + 1 : sw, :] += dcols[:, u, v]
    dx = dxp[:, ph : ph + H, pw : pw + Wd, :].transpose(3, 0, 1, 2)  # (N, C, H, W), padding dropped
    return np.ascontiguousarray(dx), dW, db


# %% [markdown]
# ## Edge detection on real images: hand-set Sobel kernels


# %%
def sobel_kernels():
    """W (2, 1, 3, 3): a vertical-edge and a horizontal-edge detector for one input channel.

    Kernel 0 takes the difference right column minus left column (weighted 1, 2, 1 down the rows,
    a little smoothing): large where brightness changes from left to right, that is on a VERTICAL
    edge, positive for dark-to-bright and negative for bright-to-dark. Kernel 1 is its transpose:
    bottom minus top, horizontal edges. Both sum to 0, so a flat region gives 0.
    """
    gx = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    return np.stack([gx, gx.T])[:, None]  # (F=2, C=1, 3, 3)


def edge_maps(x, stride, pad):
    """The Sobel responses (N, 2, Ho, Wo) of images x (N, 1, H, W) and the edge strength sqrt(gx^2 + gy^2)."""
    out, _ = conv2d_forward(x, sobel_kernels(), np.zeros(2), stride, pad)
    return out, np.sqrt(out[:, 0] ** 2 + out[:, 1] ** 2)


def plot_demo(x, path):
    """One row per image: the image, vertical and horizontal edges ("valid"), edge strength "same" at stride 1 and 2."""
    valid, _ = edge_maps(x, stride=1, pad=0)
    _, same = edge_maps(x, stride=1, pad=1)
    _, same2 = edge_maps(x, stride=2, pad=1)
    H = x.shape[2]
    signed, strength = np.abs(valid).max(), max(same.max(), same2.max())  # one colour scale per kind of map
    panels = [  # (title, maps (N, h, w), colour map, colour range)
        (f"input image\n{H}x{H}", x[:, 0], "gray", (0, 1)),
        (f"vertical edges (kernel 0)\nvalid p=0, s=1: {valid.shape[2]}x{valid.shape[3]}", valid[:, 0], "RdBu_r",
         (-signed, signed)),
        (f"horizontal edges (kernel 1)\nvalid p=0, s=1: {valid.shape[2]}x{valid.shape[3]}", valid[:, 1], "RdBu_r",
         (-signed, signed)),
        (f"edge strength\nsame p=1, s=1: {same.shape[1]}x{same.shape[2]}", same, "magma", (0, strength)),
        (f"edge strength\nsame p=1, s=2: {same2.shape[1]}x{same2.shape[2]}", same2, "magma", (0, strength)),
    ]
    n = len(x)
    fig = Figure(figsize=(13, 2.3 * n + 2.6), layout="constrained")
    axes = fig.subplots(n + 1, len(panels), squeeze=False)
    for ax, k, name in zip(axes[0, 1:3], sobel_kernels()[:, 0], ["kernel 0: Sobel x", "kernel 1: Sobel y"]):
        ax.imshow(k, cmap="RdBu_r", vmin=-2, vmax=2)
        for (r, c), value in np.ndenumerate(k):
            ax.text(c, r, f"{value:+.0f}", ha="center", va="center", fontsize=11)
        ax.set(title=name, xticks=[], yticks=[])
    for ax in (axes[0, 0], *axes[0, 3:]):
        ax.axis("off")
    axes[0, 0].text(0, 0.5, "out = floor((n + 2p - k) / s) + 1\nn = 28, k = 3:\n  valid (p=0): 26\n"
                    "  same (p=1): 28\n  same, s=2: 14", fontsize=10, family="monospace", va="center")
    for col, (title, maps, cmap, (vmin, vmax)) in enumerate(panels):
        h, w = maps.shape[1:]
        top, left = (H - h) / 2, (x.shape[3] - w) / 2  # every map drawn one array entry per pixel, centred
        for row in range(n):                            # in the input's frame: the sizes compare at a glance
            ax = axes[row + 1, col]
            im = ax.imshow(maps[row], cmap=cmap, vmin=vmin, vmax=vmax,
                           extent=(left - 0.5, left + w - 0.5, top + h - 0.5, top - 0.5))
            ax.set(xlim=(-0.5, x.shape[3] - 0.5), ylim=(H - 0.5, -0.5), xticks=[], yticks=[], facecolor="0.85")
            if row == 0:
                ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=axes[-1, col], location="bottom", label="pixel value" if col == 0 else "response")
    fig.suptitle("Sobel kernels by conv2d_forward on Fashion-MNIST test images: output height x width in the titles,\n"
                 "each map drawn at one pixel per entry inside the 28x28 input frame (grey: no output there)")
    fig.savefig(path, dpi=110)


# %% [markdown]
# ## Main: the demonstration, and the loop version against the vectorised one on real images


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-images", type=positive_int, default=None,
                   help="test images in the figure (default 4; 2 with --smoke)")
    p.add_argument("--n-check", type=positive_int, default=None,
                   help="test images on which the loop and vectorised versions are compared and timed "
                        "(default 64; 8 with --smoke)")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="picks the images and the random upstream gradient (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and the figure go (default runs/conv_numpy)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on fewer images")
    args = p.parse_args(argv)
    if args.n_images is None:
        args.n_images = 2 if args.smoke else 4
    if args.n_check is None:
        args.n_check = 8 if args.smoke else 64
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)

    try:
        X, _ = fashion_mnist("test", args.data_dir)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(len(X), size=max(args.n_images, args.n_check), replace=False)
    x = X[idx, None].astype(np.float64) / 255  # (N, 1, 28, 28), pixels in [0, 1]

    shapes = {}
    for name, stride, pad in [("valid", 1, 0), ("same", 1, 1), ("same_stride2", 2, 1), ("valid_stride2", 2, 0)]:
        out, _ = edge_maps(x[: args.n_images], stride, pad)
        shapes[name] = list(out.shape)
        print(f"{name:14s} stride {stride} pad {pad}: x {x[: args.n_images].shape} -> out {out.shape}")
    plot_demo(x[: args.n_images], out_dir / "conv_demo.png")

    # The loop version and the vectorised one on the same real images, a 3-channel input (the image
    # and its two Sobel responses stacked), random kernels, stride 2 and padding 1.
    edges, _ = edge_maps(x[: args.n_check], 1, 1)
    volume = np.concatenate([x[: args.n_check], edges], axis=1)  # (n, 3, 28, 28)
    W, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    t0 = time.perf_counter()
    out_naive, cache_naive = conv2d_forward_naive(volume, W, b, stride=2, pad=1)
    dout = rng.standard_normal(out_naive.shape)
    grads_naive = conv2d_backward_naive(dout, cache_naive)
    naive_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out_vec, cache_vec = conv2d_forward(volume, W, b, stride=2, pad=1)
    grads_vec = conv2d_backward(dout, cache_vec)
    vectorised_s = time.perf_counter() - t0
    diff = max(np.abs(got - ref).max() for got, ref in zip([out_naive, *grads_naive], [out_vec, *grads_vec]))
    print(f"loop vs vectorised on {volume.shape} -> {out_vec.shape}, forward + backward: "
          f"max |difference| {diff:.2e}; {naive_s:.3f} s vs {vectorised_s:.4f} s ({naive_s / vectorised_s:.0f}x)")

    metrics = {
        "script": "conv_numpy", "shapes": shapes,
        "max_abs_diff_naive_vs_vectorised": float(diff),
        "naive_s": naive_s, "vectorised_s": vectorised_s, "speedup": naive_s / vectorised_s,
        "config": vars(args),
    }
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"wrote {out_dir}/metrics.json and conv_demo.png")
    return metrics


if __name__ == "__main__":
    main()
