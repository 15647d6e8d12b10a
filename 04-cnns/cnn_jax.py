"""A first convolutional network in JAX: the LeNet-style Fashion-MNIST CNN as pure functions, grad and jit.

The convolution is `lax.conv_general_dilated` (the same cross-correlation cnn_numpy.py computes with
im2col), max pooling is `lax.reduce_window` with `max`, `jax.grad` derives the backward pass that
cnn_numpy.py writes by hand, and Adam is written out as a pure function of its state. `jax.jit`
compiles gather, forward, backward and update into one XLA program per step.

    x (B, 1, 28, 28) -> conv 5x5 pad 2 -> ReLU -> maxpool 2     (B, c1, 14, 14)
                     -> conv 5x5       -> ReLU -> maxpool 2     (B, c2, 5, 5)
                     -> flatten -> (linear -> ReLU) per width   (B, h1) -> ... -> (B, h_last)
                     -> linear                                  (B, 10) logits
    L = -(1/B) sum_i log softmax(logits_i)[y_i]
    Adam: m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,
          theta <- theta - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    lr of epoch e of E: lr_e = lr (1 + cos(pi (e - 1) / E)) / 2        (cosine decay, `cosine_lr`)

Reading: S. J. D. Prince, "Understanding Deep Learning" (2023), chapter 10 "Convolutional networks",
https://udlbook.github.io/udlbook/; A. Ng, "Convolutional Neural Networks" (deeplearning.ai), week 1;
Y. LeCun et al. (1998), http://yann.lecun.com/exdb/publis/pdf/lecun-98.pdf (LeNet-5); JAX docs for
jax.lax.conv_general_dilated, https://docs.jax.dev/en/latest/_autosummary/jax.lax.conv_general_dilated.html;
He init: https://arxiv.org/abs/1502.01852; Adam: https://arxiv.org/abs/1412.6980.
Arc: Foundations of CNNs -- one layer of a convolutional network and a CNN example (LeNet style), in JAX.

Run:  python 04-cnns/cnn_jax.py              (10 epochs on all 60k training images, then the test set)
      python 04-cnns/cnn_jax.py --smoke      (seconds: 2k images, narrow net, 1 epoch)
      python 04-cnns/cnn_jax.py --channels 32 64 --hidden 256 128 --epochs 5
Look first at `conv2d` and its dimension numbers ("NCHW", "OIHW", "NCHW"): the layouts the NumPy
and PyTorch scripts use; then at `train_step`.
"""

# %%
import argparse
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
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
# ## The network as pure functions of a parameter pytree


# %%
def init_params(key, channels=(16, 32), hidden=(128,), dtype=jnp.float32):
    """He initialisation, W ~ N(0, 2 / fan_in), b = 0, one fresh key per weight.

    Returns {"W1": (c1, 1, 5, 5), "b1": (c1,), "W2": (c2, c1, 5, 5), ..., "W3": (c2*25, hidden[0]), ...,
    "WL": (hidden[-1], 10), ...}: the same layout as cnn_numpy.py (linear weights (D_in, D_out)).
    """
    c1, c2 = channels
    widths = [c2 * 25, *hidden, 10]
    shapes = [(c1, 1, 5, 5), (c2, c1, 5, 5), *zip(widths[:-1], widths[1:])]
    params = {}
    for l, (k, shape) in enumerate(zip(jax.random.split(key, len(shapes)), shapes), start=1):
        fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]  # C*kh*kw, or D_in
        params[f"W{l}"] = jax.random.normal(k, shape, dtype) * jnp.sqrt(2.0 / fan_in).astype(dtype)
        params[f"b{l}"] = jnp.zeros(shape[0] if len(shape) == 4 else shape[1], dtype)
    return params


def conv2d(x, W, b, pad):
    """Cross-correlation of x (N, C, H, W) with W (F, C, kh, kw), stride 1, `pad` zeros each side, plus b."""
    out = lax.conv_general_dilated(x, W, window_strides=(1, 1), padding=((pad, pad), (pad, pad)),
                                   dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return out + b[None, :, None, None]  # (N, F, Ho, Wo)


def maxpool2(x):
    """2x2 max pooling with stride 2 over the last two axes: (N, C, H, W) -> (N, C, H/2, W/2)."""
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")


def forward(params, x):
    """logits (B, 10) for x (B, 1, 28, 28)."""
    h = maxpool2(jax.nn.relu(conv2d(x, params["W1"], params["b1"], pad=2)))  # (B, c1, 14, 14)
    h = maxpool2(jax.nn.relu(conv2d(h, params["W2"], params["b2"], pad=0)))  # (B, c2, 5, 5)
    h = h.reshape(len(h), -1)  # (B, c2*25), C-order flatten
    L = len(params) // 2  # layers: two convolutions, then the fully connected layers 3 .. L
    for l in range(3, L):
        h = jax.nn.relu(h @ params[f"W{l}"] + params[f"b{l}"])  # (B, hidden[l - 3])
    return h @ params[f"W{L}"] + params[f"b{L}"]  # (B, 10)


def cross_entropy(logits, y):
    """Mean softmax cross-entropy: -(1/B) sum_i log softmax(logits_i)[y_i].   logits (B, K), y (B,)."""
    log_p = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)  # (B, K), stable log-softmax
    return -jnp.take_along_axis(log_p, y[:, None], axis=1).mean()


def loss_fn(params, x, y):
    """The loss as a function of the parameters: what jax.grad differentiates."""
    return cross_entropy(forward(params, x), y)


# %% [markdown]
# ## Adam as a pure function of its state, and the jitted training step


# %%
def adam_init(params):
    """Adam's state: step count t = 0 and zero moments m, v shaped like the parameters."""
    return {"t": jnp.zeros((), jnp.int32), "m": jax.tree.map(jnp.zeros_like, params),
            "v": jax.tree.map(jnp.zeros_like, params)}  # two separate buffers: train_step donates both


def adam_step(params, grads, state, lr, betas=(0.9, 0.999), eps=1e-8):
    """One Adam step (Kingma and Ba, Algorithm 1, as torch.optim.Adam); returns new params and state."""
    b1, b2 = betas
    t = state["t"] + 1
    m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)  # leaky mean of g
    v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)  # leaky mean of g^2
    c1, c2 = 1 - b1**t, 1 - b2**t  # bias corrections: m and v started at 0
    params = jax.tree.map(lambda p, m, v: p - lr * (m / c1) / (jnp.sqrt(v / c2) + eps), params, m, v)
    return params, {"t": t, "m": m, "v": v}


@partial(jax.jit, donate_argnums=(0, 1))
def train_step(params, opt_state, X, y, idx, lr):
    """One Adam step on the minibatch X[idx], y[idx]; returns new parameters, optimizer state and the loss.

    The training set lives on the device; only the B indices travel per step. donate_argnums lets
    XLA write the new parameters and moments into the old ones' memory.
    """
    loss, grads = jax.value_and_grad(loss_fn)(params, X[idx], y[idx])  # the whole backward pass
    params, opt_state = adam_step(params, grads, opt_state, lr)
    return params, opt_state, loss


@jax.jit
def evaluate_logits(params, X):
    return forward(params, X)


@jax.jit
def feature_maps(params, x):
    """The post-ReLU maps of conv1 (c1, 28, 28) and conv2 (c2, 10, 10) for one image x (1, 1, 28, 28)."""
    h1 = jax.nn.relu(conv2d(x, params["W1"], params["b1"], pad=2))
    h2 = jax.nn.relu(conv2d(maxpool2(h1), params["W2"], params["b2"], pad=0))
    return h1[0], h2[0]


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
# The cosine schedule, as taught in 04-cnns/cnn_numpy.py.
def cosine_lr(lr, epoch, epochs):
    """The learning rate of epoch 1..E: lr (1 + cos(pi (epoch - 1) / E)) / 2, from lr down towards 0.

    (Loshchilov and Hutter, "SGDR", 2017, https://arxiv.org/abs/1608.03983, without restarts.)
    """
    return float(lr * (1 + np.cos(np.pi * (epoch - 1) / epochs)) / 2)


def train_epoch(params, opt_state, X, y, batch_size, lr, rng, desc="train"):
    """One pass over the device arrays (X, y) in shuffled minibatches; returns params, opt_state, mean loss.

    Losses stay on the device until the epoch ends: reading one back per step would make the host
    wait for every step instead of queueing the next one.
    """
    losses, sizes = [], []
    n_batches = -(-len(X) // batch_size)
    for idx in tqdm(minibatches(len(X), batch_size, rng), total=n_batches, desc=desc, leave=False,
                    disable=not sys.stdout.isatty()):
        params, opt_state, loss = train_step(params, opt_state, X, y, idx, lr)
        losses.append(loss)
        sizes.append(len(idx))
    losses = np.asarray(jnp.stack(losses))  # one transfer
    return params, opt_state, float(losses @ np.array(sizes)) / len(X)


def evaluate(params, X, y, chunk=2000):
    """Mean loss, accuracy and predicted classes on the device arrays (X, y)."""
    logits = jnp.concatenate([evaluate_logits(params, X[i : i + chunk]) for i in range(0, len(X), chunk)])
    pred = np.asarray(logits.argmax(axis=1))
    return float(cross_entropy(logits, y)), float((pred == np.asarray(y)).mean()), pred


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
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/cnn_jax)")
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
    params = init_params(jax.random.PRNGKey(args.seed), args.channels, args.hidden)  # the weights
    data_rng = np.random.default_rng(args.seed)  # minibatch order: the same stream in all three CNN scripts
    opt_state = adam_init(params)
    Xtr_d, ytr_d, Xte_d, yte_d = (jnp.asarray(a) for a in (Xtr, ytr, Xte, yte))
    n_params = sum(v.size for v in params.values())
    c1, c2 = args.channels
    fcs = "".join(f"-fc{h}" for h in args.hidden)
    print(f"cnn_jax: conv{c1}-pool-conv{c2}-pool{fcs}-fc10 ({n_params:,} parameters), "
          f"{len(Xtr)} train / {len(Xte)} test images on {jax.devices()[0].platform}")

    # The test set is evaluated after every epoch for the learning curves; nothing is chosen by it.
    test_loss, test_acc, _ = evaluate(params, Xte_d, yte_d)
    hist = {"train_loss": [], "test_loss": [test_loss], "test_acc": [test_acc], "epoch_s": []}
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        lr = cosine_lr(args.lr, epoch, args.epochs)
        params, opt_state, train_loss = train_epoch(params, opt_state, Xtr_d, ytr_d, args.batch_size, lr, data_rng,
                                                    f"epoch {epoch}")
        hist["epoch_s"].append(time.perf_counter() - t0)  # the float() above waits for the device
        test_loss, test_acc, pred = evaluate(params, Xte_d, yte_d)
        for key, value in [("train_loss", train_loss), ("test_loss", test_loss), ("test_acc", test_acc)]:
            hist[key].append(value)
        print(f"epoch {epoch:2d}/{args.epochs}  train loss {train_loss:.4f} | test loss {test_loss:.4f} "
              f"acc {test_acc:.4f} | {hist['epoch_s'][-1]:.2f} s", flush=True)

    plot_learning_curves(hist, out_dir / "learning_curves.png", "cnn_jax")
    plot_filters(np.asarray(params["W1"]), out_dir / "filters.png", f"cnn_jax: conv1's {c1} learned 5x5 kernels")
    maps1, maps2 = (np.asarray(m) for m in feature_maps(params, Xte_d[:1]))
    plot_feature_maps(Xte[0, 0], maps1, maps2, out_dir / "feature_maps.png",
                      f"cnn_jax: feature maps of test image 0 ({FASHION_MNIST_CLASSES[yte[0]]})")
    plot_confusion(yte, pred, out_dir / "confusion_matrix.png", f"cnn_jax: test accuracy {test_acc:.4f}")
    metrics = {
        "script": "cnn_jax", "test_acc": test_acc, "test_loss": test_loss,
        "init_test_loss": hist["test_loss"][0], "first_train_loss": hist["train_loss"][0],
        "final_train_loss": hist["train_loss"][-1],
        "sec_per_epoch": float(np.median(hist["epoch_s"])),  # median: robust to a first-epoch compile
        "n_params": int(n_params),
        "config": {**vars(args), "n_train": len(Xtr), "n_test": len(Xte), "device": jax.devices()[0].platform},
        "history": hist,
    }
    save_metrics(out_dir, metrics, __file__, argv)
    np.savez(out_dir / "params.npz", **{k: np.asarray(v) for k, v in params.items()})
    print(f"wrote {out_dir}/metrics.json, params.npz and figures")
    return metrics


if __name__ == "__main__":
    main()
