"""Inverted dropout in JAX: a pure function of an explicit PRNG key, in an MLP on Fashion-MNIST, with Adam by hand.

In training, every hidden unit is kept with probability 1 - p and zeroed with probability p, afresh
for every example and every step; the kept units are scaled up by 1 / (1 - p) (elementwise):

    u ~ U[0, 1)          mask = (u >= p)          P(mask = 1) = 1 - p
    out = h * mask / (1 - p)                      so E[out] = h
    dL/dh = dL/dout * mask / (1 - p)              (jax.grad derives it; the mask is a constant of the trace)
In evaluation, out = h: the identity.

JAX has no hidden random state: `dropout(key, h, p, training)` draws its mask from the key it is
given, so the same key gives the same mask. The training loop splits a fresh key per step, and the
forward pass splits that into one key per hidden layer: reusing a key would drop the same units
everywhere it was used. Adam is written as pure functions (`adam_init`, `adam_update`).

Why it regularizes (UDL 9.3.3; d2l 5.6; Srivastava et al. 2014): no unit can count on any other being
present, so units cannot co-adapt to fit the training set together; and each step trains one of the
2^n "thinned" subnetworks of n units, all sharing weights, an implicit ensemble whose average the
full network approximates at evaluation. Why "inverted": scaling by 1 / (1 - p) at training time
keeps each activation's expectation, so evaluation needs no change. Why off in evaluation: the noise
only serves training; a prediction should be deterministic.

The run: the 784-256-128-10 MLP, Adam lr 1e-3, on the first 5,000 training images, once without and
once with dropout p = 0.5 after each hidden ReLU, from the same initial weights and minibatch order.

Reading: N. Srivastava et al. (2014), "Dropout: A Simple Way to Prevent Neural Networks from
Overfitting", JMLR 15, https://jmlr.org/papers/v15/srivastava14a.html; d2l 5.6 "Dropout",
https://d2l.ai/chapter_multilayer-perceptrons/dropout.html; S. J. D. Prince, "Understanding Deep
Learning" (2023), section 9.3.3, https://udlbook.github.io/udlbook/; JAX "Pseudorandom numbers".
Arc: Regularization -- dropout in JAX.

Run:  python 03-regularization/dropout_jax.py [--dropout 0.5 --epochs 30 --lr 1e-3 --batch-size 128]
      python 03-regularization/dropout_jax.py --smoke
Look first at `dropout` and at how `forward` splits one key per layer;
then at dropout.png: the gap between train and test accuracy, with and without dropout.
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
    nonneg_int,
    positive_float,
    positive_int,
    probability,
    save_metrics,
)

# %% [markdown]
# ## Dropout and the network as pure functions


# %%
def dropout(key, h, p, training):
    """out = h * mask / (1 - p), mask = (u >= p) with u ~ U[0, 1) drawn from key; identity if not training.

    p and training are Python values (static under jit): they choose the computation, not its inputs.
    """
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability p must be in [0, 1), got {p} (p = 1 would divide by 1 - p = 0)")
    if not training:
        return h
    mask = jax.random.uniform(key, h.shape) >= p  # (B, D) True = kept, with probability 1 - p
    return jnp.where(mask, h / (1 - p), 0).astype(h.dtype)


def init_params(key, sizes, dtype=jnp.float32):
    """He initialisation, W_l ~ N(0, 2 / D_{l-1}), b_l = 0, with one fresh key per layer."""
    params = {}
    for l, (k, d_in, d_out) in enumerate(zip(jax.random.split(key, len(sizes) - 1), sizes[:-1], sizes[1:]), start=1):
        params[f"W{l}"] = jax.random.normal(k, (d_in, d_out), dtype) * jnp.sqrt(2.0 / d_in).astype(dtype)
        params[f"b{l}"] = jnp.zeros(d_out, dtype)
    return params


def forward(params, x, key, p, training):
    """logits (B, 10) for x (B, 784): Linear-ReLU-dropout hidden layers, each with its own key."""
    L = len(params) // 2
    keys = jax.random.split(key, L - 1)  # one key per hidden layer: independent masks
    h = x
    for l in range(1, L + 1):
        h = h @ params[f"W{l}"] + params[f"b{l}"]  # (B, D_l)
        if l < L:
            h = dropout(keys[l - 1], jnp.maximum(h, 0), p, training)
    return h


def loss_fn(params, x, y, key, p, training):
    """Mean softmax cross-entropy (what jax.grad differentiates), with the logits as aux."""
    logits = forward(params, x, key, p, training)
    log_p = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)
    return -jnp.take_along_axis(log_p, y[:, None], axis=1).mean(), logits


# Adam, as taught in 02-optimization/adam_numpy.py (here as pure functions)
def adam_init(params):
    """Adam's state: first and second moments (zeros like the parameters) and the step count."""
    zeros = jax.tree.map(jnp.zeros_like, params)
    return {"m": zeros, "v": zeros, "t": jnp.zeros((), jnp.int32)}


def adam_update(params, grads, state, lr, b1=0.9, b2=0.999, eps=1e-8):
    """One Adam step; returns the new parameters and state (nothing is changed in place)."""
    t = state["t"] + 1
    m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
    v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)
    step = lambda p, m, v: p - lr * (m / (1 - b1**t)) / (jnp.sqrt(v / (1 - b2**t)) + eps)
    return jax.tree.map(step, params, m, v), {"m": m, "v": v, "t": t}


@partial(jax.jit, static_argnames="p")
def train_step(params, opt_state, X, y, idx, key, lr, p):
    """Forward with dropout (key: this step's masks), backward by jax.grad, Adam update; returns the loss."""
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, X[idx], y[idx], key, p, True)
    params, opt_state = adam_update(params, grads, opt_state, lr)
    return params, opt_state, loss


@jax.jit
def evaluate(params, X, y):
    """Loss and accuracy in evaluation mode (dropout off: the key is unused)."""
    loss, logits = loss_fn(params, X, y, jax.random.PRNGKey(0), 0.0, False)
    return loss, (logits.argmax(axis=1) == y).mean()


# %% [markdown]
# ## Data, training and the figure


# %%
def load_data(data_dir=None, smoke=False):
    """The first 5,000 training images (1,000 with --smoke) and the test images, standardised, float32 (N, 784)."""
    Xtr, ytr = fashion_mnist("train", data_dir)
    Xte, yte = fashion_mnist("test", data_dir)
    n_train, n_test = (1000, 1000) if smoke else (5000, len(Xte))
    Xtr, ytr, Xte, yte = Xtr[:n_train], ytr[:n_train], Xte[:n_test], yte[:n_test]
    Xtr = Xtr.reshape(len(Xtr), -1).astype(np.float32) / 255
    Xte = Xte.reshape(len(Xte), -1).astype(np.float32) / 255
    mean, std = Xtr.mean(), Xtr.std()
    return (Xtr - mean) / std, ytr, (Xte - mean) / std, yte


def train(params, data, args, p, key, tag):
    """Adam for args.epochs with dropout probability p; key is split once per step for the masks."""
    Xtr, ytr, Xte, yte = data
    data_rng = np.random.default_rng(args.seed)  # the same minibatch order for both runs
    opt_state = adam_init(params)
    hist = {"step_loss": [], "train_loss": [], "train_acc": [], "test_loss": [], "test_acc": [], "epoch_s": []}
    steps = -(-len(Xtr) // args.batch_size)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        losses = []
        for idx in tqdm(minibatches(len(Xtr), args.batch_size, data_rng), total=steps, desc=f"{tag} epoch {epoch}",
                        leave=False, disable=not sys.stdout.isatty()):
            key, step_key = jax.random.split(key)  # a fresh key every step: fresh masks
            params, opt_state, loss = train_step(params, opt_state, Xtr, ytr, idx, step_key, args.lr, p)
            losses.append(loss)
        hist["step_loss"] += np.asarray(jnp.stack(losses)).tolist()  # one transfer per epoch
        hist["epoch_s"].append(time.perf_counter() - t0)
        for split, X, y in [("train", Xtr, ytr), ("test", Xte, yte)]:
            loss, acc = evaluate(params, X, y)
            hist[f"{split}_loss"].append(float(loss))
            hist[f"{split}_acc"].append(float(acc))
        print(f"[{tag}] epoch {epoch:2d}/{args.epochs}  train loss {hist['train_loss'][-1]:.4f} acc "
              f"{hist['train_acc'][-1]:.4f} | test loss {hist['test_loss'][-1]:.4f} acc {hist['test_acc'][-1]:.4f}"
              f" | {hist['epoch_s'][-1]:.2f} s", flush=True)
    return params, hist


def plot_dropout(hists, weights, path, title):
    """Train (dashed) and test (solid) accuracy per epoch for both runs; histograms of the first-layer weights."""
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ax_acc, ax_w = fig.subplots(1, 2)
    for (label, h), color in zip(hists.items(), ["C0", "C1"]):
        epochs = range(1, len(h["train_acc"]) + 1)
        ax_acc.plot(epochs, h["train_acc"], "--x", color=color, label=f"{label}: train")  # markers: one epoch shows
        ax_acc.plot(epochs, h["test_acc"], "-o", ms=4, color=color, label=f"{label}: test")
        ax_w.hist(weights[label].ravel(), bins=100, histtype="step", color=color, label=label)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (evaluation mode)", title="train dashed, test solid")
    ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax_acc.set_xlim(0.5, len(epochs) + 0.5)  # one epoch (--epochs 1) is a point, not an empty axis
    ax_w.set(xlabel="first-layer weight", ylabel="count", yscale="log", title="trained first-layer weights")
    for ax in (ax_acc, ax_w):
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=120)


# %% [markdown]
# ## Main: the same MLP trained without and with dropout


# %%
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dropout", type=probability, default=0.5,
                    help="dropout probability p on hidden units, in [0, 1) (default 0.5)")
    ap.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 30; 2 with --smoke)")
    ap.add_argument("--batch-size", type=positive_int, default=None,
                  help="minibatch size (default 128; 32 with --smoke)")
    ap.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    ap.add_argument("--hidden", type=positive_int, nargs="+", default=None,
                    help="hidden widths (default 256 128; 64 smoke)")
    ap.add_argument("--seed", type=nonneg_int, default=0, help="seeds weights, minibatch order and masks (default 0)")
    ap.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    ap.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/<script>)")
    ap.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = ap.parse_args(argv)
    if args.epochs is None:
        args.epochs = 2 if args.smoke else 30
    if args.batch_size is None:
        args.batch_size = 32 if args.smoke else 128
    if args.hidden is None:
        args.hidden = [64] if args.smoke else [256, 128]
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        arrays = load_data(args.data_dir, args.smoke)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    data = [jnp.asarray(a) for a in arrays]  # on the device once; only indices travel per step

    sizes = [data[0].shape[1], *args.hidden, 10]
    print(f"dropout_jax: {' -> '.join(map(str, sizes))}, {len(data[0])} train / {len(data[2])} test images "
          f"on {jax.devices()[0].platform}, Adam lr {args.lr}, dropout p {args.dropout}")
    init_key, drop_key = jax.random.split(jax.random.PRNGKey(args.seed))
    hists, weights = {}, {}
    for label, p in [("without dropout", 0.0), (f"dropout p={args.dropout}", args.dropout)]:
        params = init_params(init_key, sizes)  # the same initial weights for both runs
        params, hists[label] = train(params, data, args, p, drop_key, tag=label)
        weights[label] = np.asarray(params["W1"])
    plain, drop = hists["without dropout"], hists[f"dropout p={args.dropout}"]

    gap, gap_without = drop["train_acc"][-1] - drop["test_acc"][-1], plain["train_acc"][-1] - plain["test_acc"][-1]
    plot_dropout(hists, weights, out_dir / "dropout.png",
                 f"MLP {'-'.join(map(str, sizes))}, {len(data[0])} train images: train-test gap {gap:.3f} with dropout "
                 f"p={args.dropout}, {gap_without:.3f} without")
    metrics = {"script": Path(__file__).stem, "test_acc": drop["test_acc"][-1], "train_acc": drop["train_acc"][-1],
               "test_acc_without": plain["test_acc"][-1], "train_acc_without": plain["train_acc"][-1],
               "gap": gap, "gap_without": gap_without, "test_loss": drop["test_loss"][-1],
               "test_loss_without": plain["test_loss"][-1], "first_loss": drop["step_loss"][0],
               "final_train_loss": drop["train_loss"][-1], "final_train_loss_without": plain["train_loss"][-1],
               "sec_per_epoch": float(np.median(drop["epoch_s"])),
               "config": {**vars(args), "sizes": sizes, "n_train": len(data[0]), "n_test": len(data[2]),
                          "device": jax.devices()[0].platform},
               "history": {label: {k: v for k, v in h.items() if k != "step_loss"} for label, h in hists.items()}}
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"test accuracy {metrics['test_acc']:.4f} with dropout, {metrics['test_acc_without']:.4f} without; "
          f"wrote {out_dir}/metrics.json and dropout.png")
    return metrics


if __name__ == "__main__":
    main()
