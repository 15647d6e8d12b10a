"""Transposed convolution from scratch in NumPy: forward and backward, with stride and padding.

A strided convolution shrinks a feature map; a transposed convolution grows one, with a learned
kernel: U-Net's decoder uses it to go back up to the input's resolution ("up-conv 2x2").
x (N, C_in, H, W), W (C_in, C_out, kh, kw) as torch lays it out, b (C_out,). Each input pixel stamps
a copy of its kernel W[ci], scaled by its value, at (i*sh, j*sw); overlapping stamps add up; then
p rows and columns are cropped from each border:

    full[n, co, i*sh + a, j*sw + b] += x[n, ci, i, j] W[ci, co, a, b]     for all i, j, ci, a, b
    out[n, co, y, z] = full[n, co, y + ph, z + pw] + b[co]
    H_out = (H - 1) sh - 2 ph + kh        (conv2d at the same s, p, k maps H_out back to H)

It is the gradient of convolution with respect to its input. Flattened, a convolution is y = C x
for a sparse C holding copies of the kernel; the transposed convolution multiplies by C^T. In 1-D,
input length 5, kernel (w1, w2, w3), stride 2:

    conv:       [y1]   [w1 w2 w3 0  0 ] [x1 .. x5]^T          y = C x      5 -> 2
                [y2] = [0  0  w1 w2 w3]
    transposed: C^T [u1, u2]^T = [w1 u1, w2 u1, w3 u1 + w1 u2, w2 u2, w3 u2]       2 -> 5

Since backpropagation through y = C x gives dL/dx = C^T dL/dy, this layer's forward is a
convolution's dx, and its own dx is C dL/dout, an ordinary strided convolution of dout with W.
Checkerboard artefacts (Odena et al. 2016): when k is not divisible by s the stamps overlap unevenly
(above: position 2 gets two, its neighbours one), so a constant input gives a periodic pattern; k=4,
s=2 overlaps evenly and, initialised bilinear, upsamples a constant to a constant (the figure shows both).

Reading: V. Dumoulin and F. Visin (2016), "A guide to convolution arithmetic for deep learning",
chapter 4, https://arxiv.org/abs/1603.07285; A. Odena, V. Dumoulin and C. Olah (2016),
"Deconvolution and Checkerboard Artifacts", Distill, https://distill.pub/2016/deconv-checkerboard/;
O. Ronneberger, P. Fischer and T. Brox (2015), "U-Net", https://arxiv.org/abs/1505.04597;
d2l 14.10 "Transposed Convolution", https://d2l.ai/chapter_computer-vision/transposed-conv.html.
Arc: Foundations of CNNs -- transposed convolution (the upsampling U-Net needs).

Run:  python 04-cnns/transposed_conv_numpy.py
      python 04-cnns/transposed_conv_numpy.py --smoke
Look first at `conv_transpose2d_forward` (the stamps) beside `conv_transpose2d_backward` (the
gather); then at transposed_conv.png, where a constant input shows the checkerboard of k=3, s=2.
"""

# %%
import argparse
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from data import FASHION_MNIST_CLASSES, DataError, fashion_mnist, nonneg_int, save_metrics

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
    """Output length along one axis: (n - 1) s - 2p + k (stamps at 0, s, ..., (n - 1) s, each k long; crop p)."""
    return (n - 1) * s - 2 * p + k


def check_geometry(x, W, stride, pad):
    """Checks the arguments; returns (sh, sw), (ph, pw), (Ho, Wo)."""
    if np.ndim(x) != 4 or np.ndim(W) != 4:
        raise ValueError(f"x must be (N, C_in, H, W) and W (C_in, C_out, kh, kw), got shapes {np.shape(x)} "
                         f"and {np.shape(W)}")
    if x.shape[1] != W.shape[0]:
        raise ValueError(f"x has {x.shape[1]} channels but W expects C_in = {W.shape[0]} (W is (C_in, C_out, kh, kw))")
    (sh, sw), (ph, pw) = pair(stride, "stride"), pair(pad, "pad")
    if min(sh, sw) < 1:
        raise ValueError(f"stride must be at least 1, got {(sh, sw)}")
    if min(ph, pw) < 0:
        raise ValueError(f"pad must be non-negative, got {(ph, pw)}")
    if min(W.shape) < 1:
        raise ValueError(f"W has an empty axis: shape {W.shape}")
    (H, Wd), (kh, kw) = x.shape[2:], W.shape[2:]
    Ho, Wo = output_size(H, kh, sh, ph), output_size(Wd, kw, sw, pw)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"pad {(ph, pw)} crops everything: the output would be {Ho}x{Wo} "
                         f"((H - 1) s - 2p + k for H, W = {H}, {Wd})")
    return (sh, sw), (ph, pw), (Ho, Wo)


# %% [markdown]
# ## The layer: forward (scatter the stamps) beside backward (gather them)


# %%
def conv_transpose2d_forward(x, W, b, stride=1, pad=0):
    """out = C^T x + b.   x (N, C_in, H, W), W (C_in, C_out, kh, kw), b (C_out,) -> out (N, C_out, Ho, Wo).

    Ho = (H - 1) sh - 2 ph + kh, Wo likewise; stride and pad: an int or a pair (h, w).
    """
    (sh, sw), (ph, pw), (Ho, Wo) = check_geometry(x, W, stride, pad)
    N, C_in, H, Wd = x.shape
    _, C_out, kh, kw = W.shape
    if np.shape(b) not in [(), (C_out,)]:
        raise ValueError(f"b must have shape (C_out,) = ({C_out},) or be a scalar, got shape {np.shape(b)}")
    b = np.broadcast_to(b, (C_out,))  # (C_out,)
    # every stamp at once: cols[n, i, j, co, a, b] = sum_ci x[n, ci, i, j] W[ci, co, a, b]
    cols = x.transpose(0, 2, 3, 1) @ W.reshape(C_in, C_out * kh * kw)  # (N, H, W, C_out*kh*kw)
    cols = cols.reshape(N, H, Wd, C_out, kh, kw).transpose(0, 3, 1, 2, 4, 5)  # (N, C_out, H, W, kh, kw)
    full = np.zeros((N, C_out, (H - 1) * sh + kh, (Wd - 1) * sw + kw), dtype=cols.dtype)
    for a in range(kh):  # kernel offset (a, b) of pixel (i, j) lands at (i sh + a, j sw + b)
        for c in range(kw):
            full[:, :, a:a + sh * (H - 1) + 1:sh, c:c + sw * (Wd - 1) + 1:sw] += cols[..., a, c]
    out = full[:, :, ph:ph + Ho, pw:pw + Wo] + b[:, None, None]  # crop the padding   (N, C_out, Ho, Wo)
    return out, (x, W, (sh, sw), (ph, pw))


def conv_transpose2d_backward(dout, cache):
    """From dL/dout (N, C_out, Ho, Wo) to dL/dx (N, C_in, H, W), dL/dW (C_in, C_out, kh, kw), dL/db (C_out,).

    out is full cropped, so dL/dfull is dout with the cropped border put back as zeros. Each stamp
    value cols[n, co, i, j, a, b] went to full[n, co, i sh + a, j sw + b], so its gradient is read
    back from there (the gather that undoes the scatter), and cols = x W gives, as for a linear layer,
      dL/dx[n, ci, i, j] = sum_{co, a, b} dcols[n, co, i, j, a, b] W[ci, co, a, b]
                         = sum_{co, a, b} dfull[n, co, i sh + a, j sw + b] W[ci, co, a, b]
    which is the convolution of dout (padded by p) with W at stride s: the matrix C of the
    docstring, the transpose of this layer's C^T.
      dL/dW[ci, co, a, b] = sum_{n, i, j} x[n, ci, i, j] dcols[n, co, i, j, a, b]
      dL/db[co] = sum_{n, y, z} dout[n, co, y, z]
    """
    x, W, (sh, sw), (ph, pw) = cache
    N, C_in, H, Wd = x.shape
    _, C_out, kh, kw = W.shape
    db = dout.sum(axis=(0, 2, 3))  # (C_out,)
    dfull = np.pad(dout, ((0, 0), (0, 0), (ph, ph), (pw, pw)))  # (N, C_out, (H-1) sh + kh, (W-1) sw + kw)
    dcols = np.empty((N, H, Wd, C_out, kh, kw), dtype=dout.dtype)
    for a in range(kh):
        for c in range(kw):
            dcols[..., a, c] = dfull[:, :, a:a + sh * (H - 1) + 1:sh, c:c + sw * (Wd - 1) + 1:sw].transpose(0, 2, 3, 1)
    dcols = dcols.reshape(N * H * Wd, C_out * kh * kw)
    dx = (dcols @ W.reshape(C_in, -1).T).reshape(N, H, Wd, C_in).transpose(0, 3, 1, 2)  # (N, C_in, H, W)
    dW = (x.transpose(1, 0, 2, 3).reshape(C_in, -1) @ dcols).reshape(W.shape)  # (C_in, C_out, kh, kw)
    return dx, dW, db


# %% [markdown]
# ## Kernels for the demonstration, and a self-check without torch


# %%
def bilinear_kernel(k):
    """A k x k kernel (k = 2s, s even) that, at stride s and pad s / 2, upsamples by s bilinearly.

    1-D: output position y sits at input coordinate (y + 1/2) / s - 1/2 (pixel centres aligned), and
    bilinear interpolation weighs the input pixel at distance d (in input pixels) by 1 - d. Pixel i
    stamps offset a at y = i s + a - p, i.e. at distance |(a - p + 1/2) / s - 1/2|; for k = 4, s = 2,
    p = 1 that is 3/4, 1/4, 1/4, 3/4, weights (1/4, 3/4, 3/4, 1/4). 2-D: the outer product.
    """
    s = k // 2
    w = 1 - np.abs((np.arange(k) - s // 2 + 0.5) / s - 0.5)
    return np.outer(w, w)


def gradient_check(rng, eps=1e-6):
    """Max relative error of dx, dW, db against central differences of L = sum(out dout), and the adjoint test.

    The adjoint (dot-product) test: for b = 0 the layer is out = C^T x and its dx is C dout, so
    <C^T x, dout> must equal <x, C dout> to rounding.
    """
    x, W, b = rng.standard_normal((2, 3, 4, 3)), rng.standard_normal((3, 2, 3, 2)), rng.standard_normal(2)
    stride, pad = (2, 1), (1, 0)
    out, cache = conv_transpose2d_forward(x, W, b, stride, pad)
    dout = rng.standard_normal(out.shape)
    grads = conv_transpose2d_backward(dout, cache)
    errors = {}
    for k, (name, grad) in enumerate(zip(["dx", "dW", "db"], grads)):
        num = np.zeros_like(grad)
        for i in np.ndindex(grad.shape):
            args_plus, args_minus = [x.copy(), W.copy(), b.copy()], [x.copy(), W.copy(), b.copy()]
            args_plus[k][i] += eps
            args_minus[k][i] -= eps
            num[i] = ((conv_transpose2d_forward(*args_plus, stride, pad)[0]
                       - conv_transpose2d_forward(*args_minus, stride, pad)[0]) * dout).sum() / (2 * eps)
        errors[name] = float(np.abs(grad - num).max() / max(np.abs(grad).max() + np.abs(num).max(), 1e-12))
    lhs = (conv_transpose2d_forward(x, W, 0, stride, pad)[0] * dout).sum()  # <C^T x, dout>
    rhs = (x * grads[0]).sum()  # <x, C dout>
    errors["adjoint"] = float(abs(lhs - rhs) / max(abs(lhs) + abs(rhs), 1e-12))
    return errors


# %% [markdown]
# ## The figure


# %%
def per_channel(kernel, C):
    """W (C, C, k, k) that applies `kernel` to each channel separately (no mixing): W[c, c] = kernel."""
    W = np.zeros((C, C, *kernel.shape), dtype=kernel.dtype)
    W[np.arange(C), np.arange(C)] = kernel
    return W


def plot_upsampling(rows, path):
    """One row per input: the input, then each upsampled output, with shapes in the titles and colorbars."""
    fig = Figure(figsize=(12, 3.6 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), 1 + len(rows[0][2]), squeeze=False)
    for row_axes, (label, inp, outputs) in zip(axes, rows):
        panels = [(f"input {inp.shape[0]}x{inp.shape[1]}", inp), *outputs.items()]
        for ax, (title, img) in zip(row_axes, panels):
            title = title if title.startswith("input") else f"{title}\n-> {img.shape[0]}x{img.shape[1]}"
            im = ax.imshow(img, cmap="gray" if inp.std() > 0 else "viridis")
            ax.set(title=title, xticks=[], yticks=[])
            fig.colorbar(im, ax=ax, shrink=0.8)
        row_axes[0].set_ylabel(label)
    fig.suptitle("Upsampling x (1, 2, 28, 28) by 2 with transposed convolutions, per channel: a bilinear kernel "
                 "with k = 4, s = 2 overlaps evenly;\na box kernel of ones with k = 3, s = 2 overlaps 1, 2 or 4 "
                 "times: the checkerboard of Odena et al. (2016)")
    fig.savefig(path, dpi=110)


# %% [markdown]
# ## Main: upsample a real image and a constant map by 2


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seeds the choice of image and the self-check (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/transposed_conv_numpy)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run (the same small demonstration)")
    args = p.parse_args(argv)
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        X, y = fashion_mnist("test", args.data_dir)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    rng = np.random.default_rng(args.seed)
    i = int(rng.integers(len(X)))
    image = X[i].astype(np.float64) / 255  # (28, 28) in [0, 1]
    # Two channels, upsampled separately: the image, and a constant map whose upsampling shows what
    # the layer itself adds (any pattern there comes from how the stamps overlap).
    x = np.stack([image, np.ones_like(image)])[None]  # (1, 2, 28, 28)

    layers = {"(a) bilinear k=4 s=2 p=1": (bilinear_kernel(4), 2, 1), "(b) ones k=3 s=2 p=1": (np.ones((3, 3)), 2, 1)}
    outs, shapes, interior = {}, {}, {}
    for name, (kernel, s, pad) in layers.items():
        out, _ = conv_transpose2d_forward(x, per_channel(kernel, 2), np.zeros(2), s, pad)  # (1, 2, Ho, Wo)
        outs[name], shapes[name] = out[0], list(out.shape[2:])
        inner = out[0, 1, 2:-2, 2:-2]  # the constant channel away from the borders (2 pixels)
        interior[name] = {"min": float(inner.min()), "max": float(inner.max())}
    rows = [(f"channel 0: Fashion-MNIST image ({FASHION_MNIST_CLASSES[y[i]]})", image,
             {name: o[0] for name, o in outs.items()}),
            ("channel 1: constant 1", x[0, 1], {name: o[1] for name, o in outs.items()})]
    for name in layers:
        print(f"{name}: 28x28 -> {shapes[name][0]}x{shapes[name][1]}; constant 1 input -> interior values "
              f"{interior[name]['min']:g} .. {interior[name]['max']:g}")
    check = gradient_check(np.random.default_rng([args.seed, 1]))
    print("self-check, backward vs finite differences (relative error): "
          + ", ".join(f"{k} {v:.1e}" for k, v in check.items()))

    plot_upsampling(rows, out_dir / "transposed_conv.png")
    metrics = {"script": Path(__file__).stem, "image": i, "input_shape": [28, 28], "output_shapes": shapes,
               "constant_input_interior": interior, "gradcheck_rel_error": check, "config": vars(args)}
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"wrote {out_dir}/metrics.json and transposed_conv.png")
    return metrics


if __name__ == "__main__":
    main()
