"""L2 regularization in JAX: the penalty added to the loss, jax.grad derives lam W; Adam and AdamW as pure functions.

    R(theta)   = (lam / 2) sum_l ||W_l||^2          weights only, no biases;   dR/dW_l = lam W_l
    L_total    = L_data + R(theta)

Why it regularizes (UDL 9.1, d2l 3.7): every weight is pulled toward 0 unless the data pay for it,
so the network keeps only the structure that lowers the data loss by more than it costs; small
weights give a smoother function of the input, which generalises better. Minimising L_data + R is
MAP estimation under a Gaussian prior W ~ N(0, 1/lam).

Weight decay. With plain SGD, theta - lr (g + lam theta) = (1 - lr lam) theta - lr g: L2 in the loss
is exactly weight decay. With Adam the lam theta term is averaged into m and divided by sqrt(vhat)
like the rest of the gradient, so weights with large data gradients are barely decayed. AdamW
(Loshchilov and Hutter) decouples it: theta <- theta - lr (mhat / (sqrt(vhat) + eps) + wd theta),
the same shrink factor (1 - lr wd) for every weight.

The run: the 784-256-128-10 MLP with Adam on the first 5,000 Fashion-MNIST training images, from the
same initial weights and minibatch order, without a penalty, with L2 in the loss, and with
decoupled decay (AdamW, hand-written below); decay on the weights W_l only.

Reading: S. J. D. Prince, "Understanding Deep Learning" (2023), section 9.1,
https://udlbook.github.io/udlbook/; d2l 3.7 "Weight Decay",
https://d2l.ai/chapter_linear-regression/weight-decay.html; I. Loshchilov and F. Hutter (2019),
"Decoupled Weight Decay Regularization", ICLR, https://arxiv.org/abs/1711.05101.
Arc: Regularization -- L2 regularization (and weight decay) in JAX.

Run:  python 03-regularization/l2_jax.py [--lam 1e-3 --weight-decay 0.1 --epochs 30]
      python 03-regularization/l2_jax.py --smoke
Look first at `loss_fn` (the penalty is one added term) and `adam_update` (where AdamW's decay
goes); then at l2.png.
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
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tqdm import tqdm

from data import (
    DataError,
    fashion_mnist,
    minibatches,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    save_metrics,
)

# %% [markdown]
# ## The network, the penalty and the loss as pure functions


# %%
def init_params(key, sizes, dtype=jnp.float32):
    """He initialisation W_l ~ N(0, 2 / D_{l-1}), b_l = 0, one fresh key per layer."""
    params = {}
    for l, (k, d_in, d_out) in enumerate(zip(jax.random.split(key, len(sizes) - 1), sizes[:-1], sizes[1:]), 1):
        params[f"W{l}"] = jax.random.normal(k, (d_in, d_out), dtype) * jnp.sqrt(2.0 / d_in).astype(dtype)
        params[f"b{l}"] = jnp.zeros(d_out, dtype)
    return params


def forward(params, x):
    """logits (B, 10) for x (B, 784): linear layers with ReLU between them."""
    L = len(params) // 2
    h = x
    for l in range(1, L + 1):
        h = h @ params[f"W{l}"] + params[f"b{l}"]  # (B, D_l)
        if l < L:
            h = jnp.maximum(h, 0)
    return h


def l2_penalty(params, lam):
    """(lam / 2) sum_l ||W_l||^2 over the weights only; jax.grad of it is lam W_l (and 0 for biases).

    A concrete lam < 0 raises ValueError; under jit lam is a tracer and `train` has checked it.
    """
    if isinstance(lam, (int, float)):
        check_lam(lam)
    return 0.5 * lam * sum(jnp.sum(W * W) for name, W in params.items() if name.startswith("W"))


def check_lam(lam):
    """lam itself, or ValueError when lam < 0 (a negative penalty rewards large weights)."""
    if lam < 0:
        raise ValueError(f"the L2 coefficient lam must be >= 0, got {lam}")
    return lam


def cross_entropy(logits, y):
    log_p = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)  # (B, K)
    return -jnp.take_along_axis(log_p, y[:, None], axis=1).mean()


def loss_fn(params, x, y, lam):
    """L_data + (lam/2) sum ||W||^2: what jax.grad differentiates. Returns it with the logits as aux."""
    logits = forward(params, x)
    return cross_entropy(logits, y) + l2_penalty(params, lam), logits


def weight_norm(params):
    """sqrt(sum_l ||W_l||^2), biases excluded."""
    return float(jnp.sqrt(sum(jnp.sum(W.astype(jnp.float32) ** 2) for n, W in params.items() if n[0] == "W")))


# %% [markdown]
# ## Adam with optional decoupled decay, as pure functions


# %%
# Adam as taught in 02-optimization/adam_numpy.py, and AdamW as taught in 02-optimization/adamw_numpy.py
def adam_init(params):
    """Zero moments m and v (separate buffers: train_step donates both) and the step count t = 0."""
    return {"t": jnp.zeros((), jnp.int32), "m": jax.tree.map(jnp.zeros_like, params),
            "v": jax.tree.map(jnp.zeros_like, params)}


def adam_update(params, grads, state, lr, wd, b1=0.9, b2=0.999, eps=1e-8):
    """One Adam step; wd > 0 adds decoupled decay -lr wd W to the weights (AdamW). Returns (params, state).

    An L2 term in the loss arrives inside grads and is divided by sqrt(vhat) with the rest;
    the decoupled decay never passes through m or v.
    """
    t = state["t"] + 1
    m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
    v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)

    def step(name, p):
        decay = lr * wd * p if name.startswith("W") else 0.0  # decoupled: weights only
        mhat, vhat = m[name] / (1 - b1**t), v[name] / (1 - b2**t)
        return p - decay - lr * mhat / (jnp.sqrt(vhat) + eps)

    return {name: step(name, p) for name, p in params.items()}, {"t": t, "m": m, "v": v}


@partial(jax.jit, donate_argnums=(0, 1))
def train_step(params, state, X, y, idx, lr, lam, wd):
    """Forward, backward (jax.grad through the data loss AND the penalty) and the Adam update, one XLA program."""
    x, t = X[idx], y[idx]
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, t, lam)
    params, state = adam_update(params, grads, state, lr, wd)
    return params, state, loss


@jax.jit
def accuracy(params, X, y):
    return (forward(params, X).argmax(axis=1) == y).mean()


# %% [markdown]
# ## Data, training and the figure


# %%
def load_data(data_dir=None, smoke=False):
    """The first 5,000 training images (1,000 with smoke) and the test set (1,000 with smoke), standardised."""
    Xtr, ytr = fashion_mnist("train", data_dir)
    Xte, yte = fashion_mnist("test", data_dir)
    n_train, n_test = (1000, 1000) if smoke else (5000, len(Xte))
    Xtr, ytr, Xte, yte = Xtr[:n_train], ytr[:n_train], Xte[:n_test], yte[:n_test]
    Xtr = Xtr.reshape(len(Xtr), -1).astype(np.float32) / 255
    Xte = Xte.reshape(len(Xte), -1).astype(np.float32) / 255
    mean, std = Xtr.mean(), Xtr.std()
    return (Xtr - mean) / std, ytr, (Xte - mean) / std, yte


def train(params, data, args, lam, wd, tag):
    """Adam for args.epochs with L2 coefficient lam in the loss and decoupled decay wd; returns params, history."""
    Xtr, ytr, Xte, yte = data
    check_lam(lam)
    data_rng = np.random.default_rng(args.seed)  # the same minibatch order for all three runs
    state = adam_init(params)
    hist = {"step_loss": [], "train_loss": [], "train_acc": [], "test_acc": [], "weight_norm": [], "epoch_s": []}
    steps = -(-len(Xtr) // args.batch_size)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        losses = []
        for idx in tqdm(minibatches(len(Xtr), args.batch_size, data_rng), total=steps, desc=f"{tag} epoch {epoch}",
                        leave=False, disable=not sys.stdout.isatty()):
            params, state, loss = train_step(params, state, Xtr, ytr, idx, args.lr, lam, wd)
            losses.append(loss)
        hist["step_loss"].extend(np.asarray(jnp.stack(losses)).tolist())  # one transfer per epoch
        hist["epoch_s"].append(time.perf_counter() - t0)
        hist["train_loss"].append(float(np.mean(hist["step_loss"][-steps:])))
        hist["train_acc"].append(float(accuracy(params, Xtr, ytr)))
        hist["test_acc"].append(float(accuracy(params, Xte, yte)))
        hist["weight_norm"].append(weight_norm(params))
        print(f"[{tag}] epoch {epoch:2d}/{args.epochs}  train loss {hist['train_loss'][-1]:.4f} acc "
              f"{hist['train_acc'][-1]:.4f} | test acc {hist['test_acc'][-1]:.4f} | ||W|| "
              f"{hist['weight_norm'][-1]:.2f} | {hist['epoch_s'][-1]:.2f} s", flush=True)
    return params, hist


def plot_results(hists, first_weights, path, title):
    """Train (dashed) and test (solid) accuracy, first-layer weight histograms, and the weight norm per epoch."""
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    ax_acc, ax_hist, ax_norm = fig.subplots(1, 3)
    for (label, h), color in zip(hists.items(), ["C0", "C1", "C2"]):
        epochs = range(1, len(h["test_acc"]) + 1)
        ax_acc.plot(epochs, h["train_acc"], "--x", color=color)  # markers: a one-epoch run still shows
        ax_acc.plot(epochs, h["test_acc"], "-o", ms=4, color=color, label=label)
        ax_hist.hist(first_weights[label].ravel(), bins=120, histtype="step", color=color, label=label)
        ax_norm.plot(epochs, h["weight_norm"], "o-", ms=3, color=color, label=label)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy: train dashed, test solid")
    ax_hist.set(xlabel="first-layer weight", ylabel="count (log)", yscale="log", title="trained W1")
    ax_norm.set(xlabel="epoch", ylabel="sqrt(sum_l ||W_l||^2)", title="weight norm")
    for ax in (ax_acc, ax_norm):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(0.5, len(epochs) + 0.5)  # one epoch (--epochs 1) is a point, not an empty axis
    for ax in (ax_acc, ax_hist, ax_norm):
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=120)


# %% [markdown]
# ## Main: the same MLP without a penalty, with L2 in the loss, and with decoupled decay


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 30; 2 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                 help="minibatch size (default 128; 32 with --smoke)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate, for all runs (default 1e-3)")
    p.add_argument("--lam", type=nonneg_float, default=1e-3, help="L2 coefficient lam in the loss (default 1e-3)")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.1,
                   help="decoupled weight decay of the AdamW run (default 0.1)")
    p.add_argument("--hidden", type=positive_int, nargs="+", default=None,
                 help="hidden widths (default 256 128; 64 smoke)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds weights and minibatch order (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/<script>)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = 2 if args.smoke else 30
    if args.hidden is None:
        args.hidden = [64] if args.smoke else [256, 128]
    if args.batch_size is None:
        args.batch_size = 32 if args.smoke else 128
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        Xtr, ytr, Xte, yte = load_data(args.data_dir, args.smoke)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    data = tuple(jnp.asarray(a) for a in (Xtr, ytr, Xte, yte))

    sizes = [Xtr.shape[1], *args.hidden, 10]
    print(f"l2_jax: {' -> '.join(map(str, sizes))}, {len(Xtr)} train / {len(Xte)} test images, "
          f"Adam lr {args.lr}, L2 lam {args.lam}, AdamW wd {args.weight_decay}")
    runs = {"without": (0.0, 0.0), f"L2 lam={args.lam} (Adam)": (args.lam, 0.0),
            f"decoupled wd={args.weight_decay} (AdamW)": (0.0, args.weight_decay)}
    hists, first_weights = {}, {}
    for label, (lam, wd) in runs.items():
        params = init_params(jax.random.PRNGKey(args.seed), sizes)  # the same W for every run
        params, hists[label] = train(params, data, args, lam, wd, tag=label)
        first_weights[label] = np.asarray(params["W1"])
    plain, l2, dec = hists.values()

    plot_results(hists, first_weights, out_dir / "l2.png",
                 f"MLP {'-'.join(map(str, sizes))}, {len(Xtr)} train images: test accuracy {plain['test_acc'][-1]:.4f}"
                 f" without, {l2['test_acc'][-1]:.4f} L2, {dec['test_acc'][-1]:.4f} decoupled")
    metrics = {"script": Path(__file__).stem,
               "test_acc": l2["test_acc"][-1], "train_acc": l2["train_acc"][-1],
               "test_acc_without": plain["test_acc"][-1], "train_acc_without": plain["train_acc"][-1],
               "test_acc_decoupled": dec["test_acc"][-1], "train_acc_decoupled": dec["train_acc"][-1],
               "weight_norm": l2["weight_norm"][-1], "weight_norm_without": plain["weight_norm"][-1],
               "weight_norm_decoupled": dec["weight_norm"][-1],
               "first_loss": l2["step_loss"][0], "final_train_loss": l2["train_loss"][-1],
               "final_train_loss_without": plain["train_loss"][-1],
               "sec_per_epoch": float(np.median(l2["epoch_s"])),
               "config": {**vars(args), "sizes": sizes},
               "history": {label: {k: v for k, v in h.items() if k != "step_loss"} for label, h in hists.items()}}
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"wrote {out_dir}/metrics.json and l2.png")
    return metrics


if __name__ == "__main__":
    main()
