"""A first convolutional network by hand in NumPy: LeNet-style layers trained on Fashion-MNIST.

Every layer is written out, forward and backward side by side: the convolution (as im2col and one
matrix product), the ReLU, max pooling, the linear layers and the softmax cross-entropy, with Adam
updating the weights. Nothing is differentiated automatically; tests/test_cnn.py checks every
backward, and the whole network's gradients, against torch autograd in float64.

The network, for a batch of B standardised 28x28 images (flags --channels c1 c2 and --hidden h1 [h2 ...]):

    x                                       (B, 1, 28, 28)
    conv 5x5, pad 2 -> ReLU -> maxpool 2    (B, c1, 28, 28) -> (B, c1, 14, 14)
    conv 5x5, pad 0 -> ReLU -> maxpool 2    (B, c2, 10, 10) -> (B, c2, 5, 5)
    flatten -> (linear -> ReLU) per width   (B, c2 * 25) -> (B, h1) -> ... -> (B, h_last)
    linear                                  (B, 10) logits, mean softmax cross-entropy loss

Convolution (cross-correlation, as every framework computes it), stride s, padding p, xp = x padded:

    out[n, f, i, j] = b[f] + sum_{c, u, v} W[f, c, u, v] * xp[n, c, s*i + u, s*j + v]

A kernel of size k fits in the padded length n + 2p at the offsets 0, s, 2s, ... while offset + k <= n + 2p:
floor((n + 2p - k) / s) + 1 outputs. Training: Adam at the rate lr (1 + cos(pi (e - 1) / E)) / 2 in epoch e of E.

Reading: S. J. D. Prince, "Understanding Deep Learning" (2023), chapter 10 "Convolutional networks",
https://udlbook.github.io/udlbook/; A. Ng, "Convolutional Neural Networks" (deeplearning.ai), week 1;
Y. LeCun et al., "Gradient-Based Learning Applied to Document Recognition" (1998),
http://yann.lecun.com/exdb/publis/pdf/lecun-98.pdf (LeNet-5); CS231n notes "Convolutional Neural
Networks", https://cs231n.github.io/convolutional-networks/ (im2col); K. He et al. (2015),
https://arxiv.org/abs/1502.01852 (He initialisation); Kingma and Ba (2015), https://arxiv.org/abs/1412.6980.
Arc: Foundations of CNNs -- one layer of a convolutional network and a CNN example (LeNet style), in NumPy.

Run:  python 04-cnns/cnn_numpy.py              (10 epochs on all 60k training images, then the test set)
      python 04-cnns/cnn_numpy.py --smoke      (seconds: 2k images, narrow net, 1 epoch)
      python 04-cnns/cnn_numpy.py --channels 32 64 --hidden 256 128 --epochs 5
Look first at `conv2d_forward`: the convolution becomes one matrix product once every receptive field
is copied into a column (im2col); then at `conv2d_backward`, where the same product runs backwards and
`add_windows` (col2im) sends each column's gradient back to the pixels it was read from.
"""

# %%
import argparse
import sys
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.lib.stride_tricks import sliding_window_view
from tqdm import tqdm

from data import (
    FASHION_MNIST_CLASSES,
    DataError,
    fashion_mnist,
    minibatches,
    nonneg_int,
    positive_float,
    positive_int,
    save_metrics,
)

# %% [markdown]
# ## Geometry shared by convolution and pooling: windows of a padded input, and the way back


# %%
def pair(v, name):
    """An int or (h, w) pair -> (h, w), as non-negative ints."""
    h, w = (v, v) if np.isscalar(v) else tuple(v)
    if int(h) != h or int(w) != w or h < 0 or w < 0:
        raise ValueError(f"{name} must be a non-negative integer or a pair of them, got {v!r}")
    return int(h), int(w)


def output_size(n, k, s, p):
    """floor((n + 2p - k) / s) + 1: how many offsets 0, s, 2s, ... leave a k-window inside n + 2p."""
    return (n + 2 * p - k) // s + 1


def windows(x, kernel, stride, pad, fill=0.0):
    """Every (kh, kw) window of x padded by `pad` with `fill`: a (N, C, Ho, Wo, kh, kw) view, no copy.

    sliding_window_view lists the windows at every offset; keeping every s-th gives the strided ones.
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    if sh < 1 or sw < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")
    H, W = x.shape[2] + 2 * ph, x.shape[3] + 2 * pw
    if kh > H or kw > W:
        raise ValueError(f"kernel {kernel} is larger than the padded input {(H, W)}")
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    win = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    assert win.shape[2:4] == (output_size(H - 2 * ph, kh, sh, ph), output_size(W - 2 * pw, kw, sw, pw))
    return win


def add_windows(dwin, x_shape, stride, pad):
    """The adjoint of `windows` (col2im): add each window's gradient back where the window was read.

    dwin (N, C, Ho, Wo, kh, kw) -> dx (N, C, H, W). A pixel read by several windows (overlap when
    s < k) collects the sum of their gradients. One strided slice-add per kernel offset (u, v):
    window (i, j) read xp[s*i + u, s*j + v] at offset (u, v).
    """
    N, C, Ho, Wo, kh, kw = dwin.shape
    (sh, sw), (ph, pw) = stride, pad
    dxp = np.zeros((N, C, x_shape[2] + 2 * ph, x_shape[3] + 2 * pw), dwin.dtype)
    for u in range(kh):
        for v in range(kw):
            dxp[:, :, u : u + sh * Ho : sh, v : v + sw * Wo : sw] += dwin[:, :, :, :, u, v]
    return dxp[:, :, ph : ph + x_shape[2], pw : pw + x_shape[3]]  # drop the padding's gradient


# %% [markdown]
# ## Layers: each forward beside its backward


# %%
def conv2d_forward(x, W, b, stride=1, pad=0):
    """out = conv(x, W) + b.   x (N, C, H, W), W (F, C, kh, kw), b (F,) -> out (N, F, Ho, Wo).

    im2col: copy every receptive field into one column of `cols` (C*kh*kw, N*Ho*Wo); the convolution
    is then one matrix product with the kernels flattened to rows, W (F, C*kh*kw):
        out[f, (n, i, j)] = sum_{(c, u, v)} W[f, (c, u, v)] * cols[(c, u, v), (n, i, j)] + b[f]
    (Columns, not rows, per position: then each row of `cols` is read from x in memory order, and
    the product comes out channel-major, one cheap transpose away from (N, F, Ho, Wo).)
    """
    F, C, kh, kw = W.shape
    if x.ndim != 4 or x.shape[1] != C:
        raise ValueError(f"x must be (N, {C}, H, W) for W of shape {W.shape}, got {x.shape}")
    stride, pad = pair(stride, "stride"), pair(pad, "pad")
    win = windows(x, (kh, kw), stride, pad)  # (N, C, Ho, Wo, kh, kw), a view
    N, _, Ho, Wo = win.shape[:4]
    cols = win.transpose(1, 4, 5, 0, 2, 3).reshape(C * kh * kw, N * Ho * Wo)  # (C*kh*kw, N*Ho*Wo), a copy
    out = W.reshape(F, -1) @ cols + b[:, None]  # (F, N*Ho*Wo): one BLAS matmul
    out = np.ascontiguousarray(out.reshape(F, N, Ho, Wo).transpose(1, 0, 2, 3))  # (N, F, Ho, Wo)
    return out, (x.shape, cols, W, stride, pad)


def conv2d_backward(dout, cache, need_dx=True):
    """From dL/dout (N, F, Ho, Wo) to dL/dx, dL/dW, dL/db; the forward's product, run backwards.

    With out = W cols + b (columns = output positions):
      dL/dW    = dout cols^T         (F, C*kh*kw)    summed over every position of every image
      dL/db    = sum of dout         (F,)
      dL/dcols = W^T dout            (C*kh*kw, N*Ho*Wo), then col2im adds each column back onto x
    The first layer's dL/dx is not needed (the images are not parameters), so it is skipped there.
    """
    x_shape, cols, W, stride, pad = cache
    N, F, Ho, Wo = dout.shape
    d = dout.transpose(1, 0, 2, 3).reshape(F, N * Ho * Wo)  # columns in the order of cols
    dW = (d @ cols.T).reshape(W.shape)
    db = d.sum(axis=1)
    if not need_dx:
        return None, dW, db
    C, kh, kw = W.shape[1:]
    dcols = W.reshape(F, -1).T @ d  # (C*kh*kw, N*Ho*Wo)
    dwin = dcols.reshape(C, kh, kw, N, Ho, Wo).transpose(3, 0, 4, 5, 1, 2)  # (N, C, Ho, Wo, kh, kw), a view
    return add_windows(dwin, x_shape, stride, pad), dW, db


def maxpool_forward(x, kernel, stride=None, pad=0):
    """out[n, c, i, j] = max of the (kh, kw) window at (s*i, s*j) of x padded with -inf.   (N, C, Ho, Wo)

    stride defaults to the kernel (windows side by side). A scan over the kh*kw offsets keeps the
    running maximum and where it was (idx, the argmax) for the backward pass: only the winner
    influenced the output. A strict > keeps the first of equal maxima, as torch does.
    """
    kernel = pair(kernel, "kernel")
    stride, pad = pair(kernel if stride is None else stride, "stride"), pair(pad, "pad")
    (kh, kw), (ph, pw) = kernel, pad
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel must be at least 1, got {kernel}")
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"pad {pad} must be at most half the kernel {kernel}")  # else a window sees only padding
    win = windows(x, kernel, stride, pad, fill=-np.inf)  # (N, C, Ho, Wo, kh, kw), a view
    out = win[..., 0, 0]
    idx = np.zeros(out.shape, np.int32)  # (N, C, Ho, Wo): offset k = u*kw + v of each window's maximum
    for k in range(1, kh * kw):
        w = win[..., k // kw, k % kw]
        better = w > out  # strictly greater: of equal maxima the first stays the winner
        out = np.maximum(out, w)
        idx[better] = k
    return out, (x.shape, idx, kernel, stride, pad)


def maxpool_backward(dout, cache):
    """dL/dx: each window's gradient goes to its argmax, 0 to the other pixels; overlaps add up."""
    x_shape, idx, (kh, kw), stride, pad = cache
    offsets = np.arange(kh * kw).reshape(-1, 1, 1, 1, 1)
    dwin = np.where(idx == offsets, dout, 0)  # (kh*kw, N, C, Ho, Wo): offset-major, so slices are contiguous
    dwin = dwin.reshape(kh, kw, *idx.shape).transpose(2, 3, 4, 5, 0, 1)  # (N, C, Ho, Wo, kh, kw), a view
    return add_windows(dwin, x_shape, stride, pad)


def relu_forward(z):
    """h = max(z, 0), elementwise."""
    return np.maximum(z, 0), z


def relu_backward(dh, z):
    """dL/dz = dL/dh * 1[z > 0]: the gradient passes where the unit was active (0 at z = 0, as torch)."""
    return dh * (z > 0)


def linear_forward(x, W, b):
    """z = x W + b.   x (B, D_in), W (D_in, D_out), b (D_out,) -> z (B, D_out)."""
    return x @ W + b, (x, W)


def linear_backward(dz, cache):
    """dL/dx = dz W^T (B, D_in),  dL/dW = x^T dz (D_in, D_out),  dL/db = sum_i dz_i (D_out,)."""
    x, W = cache
    return dz @ W.T, x.T @ dz, dz.sum(axis=0)


def cross_entropy_forward(logits, y):
    """Mean softmax cross-entropy L = -(1/B) sum_i log softmax(logits_i)[y_i].   logits (B, K), y (B,).

    Subtracting max_j z_j first changes nothing (softmax is shift-invariant) but keeps exp finite.
    """
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))  # (B, K)
    return -log_p[np.arange(len(y)), y].mean(), (log_p, y)


def cross_entropy_backward(dloss, cache):
    """dL/dlogits = dloss * (softmax(logits) - onehot(y)) / B   (B, K)."""
    log_p, y = cache
    dlogits = np.exp(log_p)  # p
    dlogits[np.arange(len(y)), y] -= 1
    dlogits *= dloss / len(y)
    return dlogits


# %% [markdown]
# ## The network: parameters, forward, backward, Adam


# %%
def init_params(rng, channels=(16, 32), hidden=(128,), dtype=np.float32):
    """He initialisation, W ~ N(0, 2 / fan_in), b = 0; fan_in = C*kh*kw for a convolution, D_in for a linear layer.

    Layers 1 and 2 are the convolutions, W1 (c1, 1, 5, 5) and W2 (c2, c1, 5, 5); layers 3 .. L the fully
    connected ones, of widths c2*25 -> hidden[0] -> ... -> hidden[-1] -> 10, W (D_in, D_out).
    Each output of a layer sums fan_in products; with ReLU halving the signal's power, Var(W) = 2 / fan_in
    keeps the activations' scale the same from layer to layer.
    """
    c1, c2 = channels
    widths = [c2 * 25, *hidden, 10]
    shapes = [(c1, 1, 5, 5), (c2, c1, 5, 5), *zip(widths[:-1], widths[1:])]
    params = {}
    for l, shape in enumerate(shapes, start=1):
        fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
        params[f"W{l}"] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)
        params[f"b{l}"] = np.zeros(shape[0] if len(shape) == 4 else shape[1], dtype)
    return params


def forward(params, x):
    """logits (B, 10) for x (B, 1, 28, 28), and every layer's cache for the backward pass."""
    caches = {}
    z, caches["conv1"] = conv2d_forward(x, params["W1"], params["b1"], pad=2)  # (B, c1, 28, 28)
    h, caches["relu1"] = relu_forward(z)
    h, caches["pool1"] = maxpool_forward(h, 2)  # (B, c1, 14, 14)
    z, caches["conv2"] = conv2d_forward(h, params["W2"], params["b2"])  # (B, c2, 10, 10)
    h, caches["relu2"] = relu_forward(z)
    h, caches["pool2"] = maxpool_forward(h, 2)  # (B, c2, 5, 5)
    caches["flat"] = h.shape
    h = h.reshape(len(h), -1)  # (B, c2*25), C order: (c, i, j)
    L = len(params) // 2  # layers: two convolutions, then the fully connected layers 3 .. L
    for l in range(3, L):  # hidden layers: linear -> ReLU   (B, hidden[l - 3])
        z, caches[f"fc{l}"] = linear_forward(h, params[f"W{l}"], params[f"b{l}"])
        h, caches[f"relu{l}"] = relu_forward(z)
    logits, caches[f"fc{L}"] = linear_forward(h, params[f"W{L}"], params[f"b{L}"])  # (B, 10)
    return logits, caches


def backward(dlogits, caches):
    """Gradients {"W1": dL/dW1, "b1": ..., ...} from dL/dlogits, through the layers in reverse."""
    g = {}
    L = 2 + sum(name.startswith("fc") for name in caches)  # the last layer
    dh, g[f"W{L}"], g[f"b{L}"] = linear_backward(dlogits, caches[f"fc{L}"])
    for l in range(L - 1, 2, -1):  # the hidden layers, last to first
        dz = relu_backward(dh, caches[f"relu{l}"])
        dh, g[f"W{l}"], g[f"b{l}"] = linear_backward(dz, caches[f"fc{l}"])
    dh = maxpool_backward(dh.reshape(caches["flat"]), caches["pool2"])  # un-flatten, (B, c2, 10, 10)
    dz = relu_backward(dh, caches["relu2"])
    dh, g["W2"], g["b2"] = conv2d_backward(dz, caches["conv2"])  # (B, c1, 14, 14)
    dh = maxpool_backward(dh, caches["pool1"])  # (B, c1, 28, 28)
    dz = relu_backward(dh, caches["relu1"])
    _, g["W1"], g["b1"] = conv2d_backward(dz, caches["conv1"], need_dx=False)
    return {f"{w}{l}": g[f"{w}{l}"] for l in range(1, L + 1) for w in "Wb"}  # W1, b1, ..., WL, bL


def loss_and_grads(params, x, y):
    """Forward, loss, backward: the mean loss over the batch and its gradients."""
    logits, caches = forward(params, x)
    loss, ce_cache = cross_entropy_forward(logits, y)
    return loss, backward(cross_entropy_backward(1.0, ce_cache), caches)


def adam_init(params):
    """Adam's state: step count t = 0 and zero first and second moments m, v for every parameter."""
    return {"t": 0, "m": {k: np.zeros_like(v) for k, v in params.items()},
            "v": {k: np.zeros_like(v) for k, v in params.items()}}


def adam_step(params, grads, state, lr, betas=(0.9, 0.999), eps=1e-8):
    """One Adam step, in place (Kingma and Ba, Algorithm 1, as torch.optim.Adam):

        m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2                 leaky means of g and g^2
        theta <- theta - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)   bias-corrected step
    """
    b1, b2 = betas
    state["t"] += 1
    c1, c2 = 1 - b1 ** state["t"], 1 - b2 ** state["t"]
    for name, g in grads.items():
        m, v = state["m"][name], state["v"][name]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        params[name] -= lr * (m / c1) / (np.sqrt(v / c2) + eps)


# %% [markdown]
# ## Data


# %%
def load_data(data_dir=None, smoke=False):
    """Fashion-MNIST as float32 (N, 1, 28, 28) images standardised with the training split's mean and std."""
    Xtr, ytr = fashion_mnist("train", data_dir)
    Xte, yte = fashion_mnist("test", data_dir)
    if smoke:  # a small real subset: the first 2,000 training and 1,000 test images
        Xtr, ytr, Xte, yte = Xtr[:2000], ytr[:2000], Xte[:1000], yte[:1000]
    Xtr = Xtr.reshape(len(Xtr), 1, 28, 28).astype(np.float32) / 255
    Xte = Xte.reshape(len(Xte), 1, 28, 28).astype(np.float32) / 255
    mean, std = Xtr.mean(), Xtr.std()
    return (Xtr - mean) / std, ytr, (Xte - mean) / std, yte


# %% [markdown]
# ## Training: one epoch of minibatch Adam, evaluation


# %%
def cosine_lr(lr, epoch, epochs):
    """The learning rate of epoch 1..E: lr (1 + cos(pi (epoch - 1) / E)) / 2, from lr down towards 0.

    (Loshchilov and Hutter, "SGDR", 2017, https://arxiv.org/abs/1608.03983, without restarts.) With
    a constant rate the test accuracy jitters from epoch to epoch; decaying it lets the last epochs
    settle, so the final number is the model's and not the luck of the last step.
    """
    return float(lr * (1 + np.cos(np.pi * (epoch - 1) / epochs)) / 2)


def train_epoch(params, opt_state, X, y, batch_size, lr, rng, desc="train"):
    """One pass over (X, y) in shuffled minibatches, updating params in place; returns the mean training loss."""
    total = 0.0
    n_batches = -(-len(X) // batch_size)
    for idx in tqdm(minibatches(len(X), batch_size, rng), total=n_batches, desc=desc, leave=False,
                    disable=not sys.stdout.isatty()):
        loss, grads = loss_and_grads(params, X[idx], y[idx])
        adam_step(params, grads, opt_state, lr)
        total += float(loss) * len(idx)
    return total / len(X)


def evaluate(params, X, y, chunk=1000):
    """Mean loss, accuracy and predicted classes on (X, y), in chunks (im2col of 10k images is large)."""
    logits = np.concatenate([forward(params, X[i : i + chunk])[0] for i in range(0, len(X), chunk)])
    loss, _ = cross_entropy_forward(logits, y)
    pred = logits.argmax(axis=1)
    return float(loss), float((pred == y).mean()), pred


def feature_maps(params, x):
    """The post-ReLU maps of conv1 (c1, 28, 28) and conv2 (c2, 10, 10) for one image x (1, 1, 28, 28)."""
    _, caches = forward(params, x)
    return np.maximum(caches["relu1"][0], 0), np.maximum(caches["relu2"][0], 0)


# %% [markdown]
# ## Figures


# %%
def plot_learning_curves(hist, path, title):
    """Training and test loss, and test accuracy, per epoch (test at epoch 0: the untrained network)."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    epochs = np.arange(len(hist["test_loss"]))
    ax1.plot(epochs[1:], hist["train_loss"], "o-", label="train (mean over the epoch)")
    ax1.plot(epochs, hist["test_loss"], "s-", label="test (after the epoch)")
    ax1.set(xlabel="epoch", ylabel="cross-entropy loss", yscale="log", title=f"{title}: loss")
    ax2.plot(epochs[1:], hist["test_acc"][1:], "s-", color="C1")
    ax2.set(xlabel="epoch", ylabel="test accuracy", title=f"{title}: test accuracy (final {hist['test_acc'][-1]:.4f})")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax1.legend()
    fig.savefig(path, dpi=120)


def plot_filters(W1, path, title):
    """The first layer's kernels W1 (c1, 1, 5, 5) as images: red positive, blue negative, white 0."""
    n = len(W1)
    cols = int(np.ceil(np.sqrt(n)))
    rows = -(-n // cols)
    vmax = np.abs(W1).max()
    fig = Figure(figsize=(1.3 * cols + 1.2, 1.3 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for k, ax in enumerate(axes):
        ax.set_axis_off()
        if k < n:
            im = ax.imshow(W1[k, 0], cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            ax.set_title(f"filter {k}", fontsize=8)
    fig.colorbar(im, ax=axes.tolist(), shrink=0.8, label="weight")
    fig.suptitle(title)
    fig.savefig(path, dpi=120)


def plot_feature_maps(image, maps1, maps2, path, title):
    """One test image, the maps conv1 + ReLU makes of it, and those of conv2 + ReLU (one colour scale per layer)."""
    fig = Figure(figsize=(14, 6), layout="constrained")
    sub_img, sub1, sub2 = fig.subfigures(1, 3, width_ratios=[1, 2.2, 2.2])
    ax = sub_img.subplots()
    ax.imshow(image, cmap="gray")
    ax.set_title("input (standardised)")
    ax.set_axis_off()
    for sub, maps, name in [(sub1, maps1, "conv1 + ReLU"), (sub2, maps2, "conv2 + ReLU")]:
        cols = int(np.ceil(np.sqrt(len(maps))))
        axes = np.atleast_1d(sub.subplots(-(-len(maps) // cols), cols)).ravel()
        for k, ax in enumerate(axes):
            ax.set_axis_off()
            if k < len(maps):
                im = ax.imshow(maps[k], cmap="viridis", vmin=0, vmax=maps.max() + 1e-12)
        sub.colorbar(im, ax=axes.tolist(), shrink=0.6, label="activation")
        sub.suptitle(f"{name}: {maps.shape[0]} maps of {maps.shape[1]}x{maps.shape[2]}")
    fig.suptitle(title)
    fig.savefig(path, dpi=120)


def plot_confusion(y_true, y_pred, path, title):
    """Confusion matrix of the test set: row = true class, column = predicted class, counts annotated."""
    K = len(FASHION_MNIST_CLASSES)
    cm = np.zeros((K, K), dtype=int)
    np.add.at(cm, (y_true, y_pred), 1)
    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues")
    for i in range(K):
        for j in range(K):
            ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set(xticks=range(K), yticks=range(K), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(FASHION_MNIST_CLASSES, rotation=45, ha="right")
    ax.set_yticklabels(FASHION_MNIST_CLASSES)
    fig.colorbar(im, ax=ax)
    fig.savefig(path, dpi=120)
    return cm


# %% [markdown]
# ## Main: train on all 60k training images, test after every epoch, figures


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 10; 1 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="minibatch size (default 128; 32 with --smoke)")
    p.add_argument("--lr", type=positive_float, default=1e-3,
                   help="Adam learning rate of the first epoch, cosine-decayed over the epochs (default 1e-3)")
    p.add_argument("--channels", type=positive_int, nargs=2, default=None, metavar=("C1", "C2"),
                   help="feature maps of conv1 and conv2 (default 16 32; 8 16 with --smoke)")
    p.add_argument("--hidden", type=positive_int, nargs="+", default=None,
                   help="widths of the fully connected hidden layers, one per layer (default 128; 64 with --smoke)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds weights and minibatch order (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/cnn_numpy)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = p.parse_args(argv)
    defaults = dict(epochs=1, batch_size=32, channels=[8, 16], hidden=[64]) if args.smoke else \
        dict(epochs=10, batch_size=128, channels=[16, 32], hidden=[128])
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)

    try:
        Xtr, ytr, Xte, yte = load_data(args.data_dir, args.smoke)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    params = init_params(np.random.default_rng([args.seed, 1]), args.channels, args.hidden)  # the weights
    data_rng = np.random.default_rng(args.seed)  # minibatch order: the same stream in all three CNN scripts
    opt_state = adam_init(params)
    n_params = sum(v.size for v in params.values())
    c1, c2 = args.channels
    fcs = "".join(f"-fc{h}" for h in args.hidden)
    print(f"cnn_numpy: conv{c1}-pool-conv{c2}-pool{fcs}-fc10 ({n_params:,} parameters), "
          f"{len(Xtr)} train / {len(Xte)} test images")

    # The test set is evaluated after every epoch for the learning curves; nothing is chosen by it.
    test_loss, test_acc, _ = evaluate(params, Xte, yte)
    hist = {"train_loss": [], "test_loss": [test_loss], "test_acc": [test_acc], "epoch_s": []}
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        lr = cosine_lr(args.lr, epoch, args.epochs)
        train_loss = train_epoch(params, opt_state, Xtr, ytr, args.batch_size, lr, data_rng, f"epoch {epoch}")
        hist["epoch_s"].append(time.perf_counter() - t0)
        test_loss, test_acc, pred = evaluate(params, Xte, yte)
        for key, value in [("train_loss", train_loss), ("test_loss", test_loss), ("test_acc", test_acc)]:
            hist[key].append(value)
        print(f"epoch {epoch:2d}/{args.epochs}  train loss {train_loss:.4f} | test loss {test_loss:.4f} "
              f"acc {test_acc:.4f} | {hist['epoch_s'][-1]:.2f} s", flush=True)

    plot_learning_curves(hist, out_dir / "learning_curves.png", "cnn_numpy")
    plot_filters(params["W1"], out_dir / "filters.png", f"cnn_numpy: conv1's {c1} learned 5x5 kernels")
    plot_feature_maps(Xte[0, 0], *feature_maps(params, Xte[:1]), out_dir / "feature_maps.png",
                      f"cnn_numpy: feature maps of test image 0 ({FASHION_MNIST_CLASSES[yte[0]]})")
    plot_confusion(yte, pred, out_dir / "confusion_matrix.png", f"cnn_numpy: test accuracy {test_acc:.4f}")
    metrics = {
        "script": "cnn_numpy", "test_acc": test_acc, "test_loss": test_loss,
        "init_test_loss": hist["test_loss"][0], "first_train_loss": hist["train_loss"][0],
        "final_train_loss": hist["train_loss"][-1],
        "sec_per_epoch": float(np.median(hist["epoch_s"])),
        "n_params": int(n_params),
        "config": {**vars(args), "n_train": len(Xtr), "n_test": len(Xte)},
        "history": hist,
    }
    save_metrics(out_dir, metrics, __file__, argv)
    np.savez(out_dir / "params.npz", **params)
    print(f"wrote {out_dir}/metrics.json, params.npz and figures")
    return metrics


if __name__ == "__main__":
    main()
