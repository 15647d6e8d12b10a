"""L1 regularisation in JAX: add lam * sum |W| to the loss and let jax.grad differentiate it; Adam as pure functions.

The same experiment as l1_numpy.py, where the penalty's backward is written by hand; here it is one
term in the loss, and jax.grad finds its gradient:

    L_total(theta) = L_data(theta) + lam * sum_l sum_ij |W_l,ij|       (weights only, not biases)
    dL_total/dW_l  = dL_data/dW_l + lam * sign(W_l)

Why it gives zero weights (UDL 9.1, d2l 3.7): the pull lam * sign(w) keeps its full size however
small w gets (L2's lam * w fades), so any weight whose data gradient is weaker than lam is pushed to
zero; minimising L_data inside the diamond sum |w| <= c lands on its corners, which lie on the axes;
and the penalty is the negative log of a Laplace prior, p(w) ~ exp(-|w| / b), peaked at zero. With
Adam and a subgradient the weights do not land on zero: Adam scales the constant pull to a step of
about lr, so they overshoot and hover within about lr of it. The run reports the fraction of
first-layer weights with |w| < 1e-3.

JAX's derivative of |w| at exactly w = 0 is 1, where torch's (and l1_numpy.py's sign) is 0; any value
in [-1, 1] is a valid subgradient there, and a float weight that lands exactly on 0 is rare enough
that the three scripts follow the same trajectory up to rounding.

Adam, as pure functions: `adam_init` makes the state (m, v, t) as pytrees of zeros, `adam_update`
returns new parameters and a new state, nothing is mutated; the whole step (gather, forward, backward
including the penalty, update) is one jitted XLA program. lam is a static argument: a negative value
raises a ValueError when the step is traced, before any training.

The run: 784-256-128-10 MLP, 5,000 train images, Adam lr 1e-3, batch 128, 30 epochs, lam 1e-4, from the
same initial weights and minibatch order with and without the penalty (lam as in l1_numpy.py).

Reading: S. J. D. Prince, "Understanding Deep Learning" (2023), section 9.1 "Explicit regularization",
https://udlbook.github.io/udlbook/; d2l 3.7 "Weight Decay", https://d2l.ai/chapter_linear-regression/weight-decay.html;
R. Tibshirani (1996), "Regression Shrinkage and Selection via the Lasso", JRSS B.
Arc: Regularization -- L1 in JAX.

Run:  python 03-regularization/l1_jax.py [--lam 1e-4 --lr 1e-3 --epochs 30 --batch-size 128]
      python 03-regularization/l1_jax.py --smoke
Look first at `loss_fn`: the penalty is one added term, and `train_step` differentiates it with the
rest; then at l1.png's right panel, the first-layer weights on the log10 |w| axis.
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

NEAR_ZERO = 1e-3  # |w| below this counts as "near zero" in the sparsity metric

# %% [markdown]
# ## The penalty and the network as pure functions


# %%
def l1_penalty(params, lam):
    """lam * sum_l sum |W_l| over the weight matrices (names starting with "W"), biases excluded."""
    if not lam >= 0:  # a Python float (static under jit); also rejects NaN
        raise ValueError(f"Invalid L1 strength lam: {lam} (must be >= 0)")
    return lam * sum(jnp.abs(p).sum() for name, p in params.items() if name.startswith("W"))


def near_zero_fraction(W, tol=NEAR_ZERO):
    return float((np.abs(np.asarray(W)) < tol).mean())


def init_params(key, sizes, dtype=jnp.float32):
    """He initialisation, W_l ~ N(0, 2 / D_{l-1}), b_l = 0, one fresh key per layer."""
    params = {}
    for l, (k, d_in, d_out) in enumerate(zip(jax.random.split(key, len(sizes) - 1), sizes[:-1], sizes[1:]), start=1):
        params[f"W{l}"] = jax.random.normal(k, (d_in, d_out), dtype) * jnp.sqrt(2.0 / d_in).astype(dtype)
        params[f"b{l}"] = jnp.zeros(d_out, dtype)
    return params


def forward(params, x):
    """logits (B, 10) for x (B, 784): linear layers with ReLU between them."""
    L = len(params) // 2
    for l in range(1, L + 1):
        x = x @ params[f"W{l}"] + params[f"b{l}"]  # (B, D_l)
        if l < L:
            x = jnp.maximum(x, 0)
    return x


def loss_fn(params, x, y, lam):
    """Mean softmax cross-entropy + lam * sum |W|; the logits as aux."""
    logits = forward(params, x)
    log_p = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)
    data_loss = -jnp.take_along_axis(log_p, y[:, None], axis=1).mean()
    return data_loss + l1_penalty(params, lam), logits


# %% [markdown]
# ## Adam as pure functions


# %%
# Adam, as taught in 02-optimization/adam_numpy.py (here as pure functions)
def adam_init(params):
    """m_0 = v_0 = 0 (pytrees shaped like params), t = 0."""
    zeros = jax.tree.map(jnp.zeros_like, params)
    return {"m": zeros, "v": zeros, "t": jnp.zeros((), jnp.int32)}


def adam_update(params, grads, state, lr, b1=0.9, b2=0.999, eps=1e-8):
    """One Adam step: returns the new parameters and the new state."""
    t = state["t"] + 1
    m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)  # leaky mean of g
    v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)  # leaky mean of g^2
    c1, c2 = 1 - b1**t, 1 - b2**t  # bias corrections: m and v started at 0
    params = jax.tree.map(lambda p, m, v: p - lr * (m / c1) / (jnp.sqrt(v / c2) + eps), params, m, v)
    return params, {"m": m, "v": v, "t": t}


@partial(jax.jit, static_argnames="lam")
def train_step(params, state, X, y, idx, lr, lam):
    """One Adam step on the minibatch X[idx], y[idx] of loss + L1; returns params, state, loss."""
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, X[idx], y[idx], lam)
    params, state = adam_update(params, grads, state, lr)
    return params, state, loss


@jax.jit
def accuracy(params, X, y):
    return (forward(params, X).argmax(axis=1) == y).mean()


# %% [markdown]
# ## Data, training and the figure


# %%
def load_data(data_dir=None, n_train=5000, n_test=10000):
    """The first n_train training and n_test test images, float32 (N, 784), standardised with the train mean/std."""
    Xtr, ytr = fashion_mnist("train", data_dir)
    Xte, yte = fashion_mnist("test", data_dir)
    Xtr, ytr, Xte, yte = Xtr[:n_train], ytr[:n_train], Xte[:n_test], yte[:n_test]
    Xtr = Xtr.reshape(len(Xtr), -1).astype(np.float32) / 255
    Xte = Xte.reshape(len(Xte), -1).astype(np.float32) / 255
    mean, std = Xtr.mean(), Xtr.std()
    return (Xtr - mean) / std, ytr, (Xte - mean) / std, yte


def train(params, data, args, lam, tag):
    """Adam on loss + lam * sum|W| for args.epochs; train and test accuracy after each epoch."""
    Xtr, ytr, Xte, yte = (jnp.asarray(a) for a in data)
    state = adam_init(params)
    data_rng = np.random.default_rng(args.seed)  # the same minibatch order for both runs
    hist = {"step_loss": [], "train_loss": [], "train_acc": [], "test_acc": [], "near_zero": []}
    steps = -(-len(Xtr) // args.batch_size)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        losses = []
        for idx in tqdm(minibatches(len(Xtr), args.batch_size, data_rng), total=steps, desc=f"{tag} epoch {epoch}",
                        leave=False, disable=not sys.stdout.isatty()):
            params, state, loss = train_step(params, state, Xtr, ytr, idx, args.lr, lam)
            losses.append(loss)
        hist["step_loss"] += np.asarray(jnp.stack(losses)).tolist()  # one transfer per epoch
        hist["train_loss"].append(float(np.mean(hist["step_loss"][-steps:])))
        hist["train_acc"].append(float(accuracy(params, Xtr, ytr)))
        hist["test_acc"].append(float(accuracy(params, Xte, yte)))
        hist["near_zero"].append(near_zero_fraction(params["W1"]))
        print(f"[{tag}] epoch {epoch:2d}/{args.epochs}  train loss {hist['train_loss'][-1]:.4f} acc "
              f"{hist['train_acc'][-1]:.4f} | test acc {hist['test_acc'][-1]:.4f} | W1 near zero "
              f"{hist['near_zero'][-1]:.3f} | {time.perf_counter() - t0:.2f} s", flush=True)
    return params, hist


def plot(hists, W1s, path, title):
    """Accuracy curves (train dashed, test solid), the W1 histogram (log counts) and the log10|w| histogram."""
    fig = Figure(figsize=(15, 4), layout="constrained")
    ax_acc, ax_w, ax_log = fig.subplots(1, 3)
    for (label, h), color in zip(hists.items(), ["C0", "C1"]):
        epochs = range(1, len(h["train_acc"]) + 1)
        ax_acc.plot(epochs, h["train_acc"], "--x", color=color, label=f"{label} (train)")  # markers: one epoch shows
        ax_acc.plot(epochs, h["test_acc"], "-o", ms=4, color=color, label=f"{label} (test)")
    lim = max(np.abs(W).max() for W in W1s.values())
    for (label, W), color in zip(W1s.items(), ["C0", "C1"]):
        W = W.ravel()
        ax_w.hist(W, bins=np.linspace(-lim, lim, 121), color=color, alpha=0.5, label=label, log=True)
        ax_log.hist(np.log10(np.abs(W) + 1e-12), bins=np.linspace(-9, 0, 91), color=color, alpha=0.5,
                    label=f"{label}: {near_zero_fraction(W):.1%} below {NEAR_ZERO:g}")
    ax_log.axvline(np.log10(NEAR_ZERO), color="k", ls=":")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="train (dashed) and test (solid) accuracy")
    ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax_acc.set_xlim(0.5, len(epochs) + 0.5)  # one epoch (--epochs 1) is a point, not an empty axis
    ax_w.set(xlabel="w", ylabel="count (log)", title="first-layer weights")
    ax_log.set(xlabel="log10 |w|", ylabel="count", title="first-layer |w|: L1 piles them up near zero")
    for ax in (ax_acc, ax_w, ax_log):
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=120)


# %% [markdown]
# ## Main: the same MLP trained with and without the L1 penalty


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lam", type=nonneg_float, default=1e-4, help="L1 strength lam >= 0 (default 1e-4)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 30; 2 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                 help="minibatch size (default 128; 32 with --smoke)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--hidden", type=positive_int, nargs="+", default=None,
                 help="hidden widths (default 256 128; 64 smoke)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds weights and minibatch order (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/<script>)")
    p.add_argument("--smoke", action="store_true", help="seconds: 1,000 train / 1,000 test images, small net")
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
        data = load_data(args.data_dir, *((1000, 1000) if args.smoke else (5000, 10000)))
    except DataError as exc:
        sys.exit(f"error: {exc}")

    sizes = [data[0].shape[1], *args.hidden, 10]
    print(f"l1_jax: {' -> '.join(map(str, sizes))}, {len(data[0])} train / {len(data[2])} test images, "
          f"Adam lr {args.lr}, lam {args.lam}, on {jax.devices()[0].platform}")
    init_key = jax.random.PRNGKey(args.seed)  # the same initial weights for both runs
    hists, W1s = {}, {}
    for label, lam in [("L1", args.lam), ("without", 0.0)]:
        params, hists[label] = train(init_params(init_key, sizes), data, args, lam, tag=label)
        W1s[label] = np.asarray(params["W1"])
    l1, plain = hists["L1"], hists["without"]
    metrics = {"script": Path(__file__).stem, "lam": args.lam,
               "test_acc": l1["test_acc"][-1], "train_acc": l1["train_acc"][-1],
               "test_acc_without": plain["test_acc"][-1], "train_acc_without": plain["train_acc"][-1],
               "first_loss": l1["step_loss"][0], "final_train_loss": l1["train_loss"][-1],
               "final_train_loss_without": plain["train_loss"][-1],
               "sparsity": near_zero_fraction(W1s["L1"]), "sparsity_without": near_zero_fraction(W1s["without"]),
               "exact_zero_fraction": float((W1s["L1"] == 0).mean()),
               "W1_l1_norm": float(np.abs(W1s["L1"]).sum()), "W1_l1_norm_without": float(np.abs(W1s["without"]).sum()),
               "config": {**vars(args), "sizes": sizes, "device": jax.devices()[0].platform},
               "history": {label: {k: v for k, v in h.items() if k != "step_loss"} for label, h in hists.items()}}
    plot(hists, W1s, out_dir / "l1.png",
         f"JAX MLP {'-'.join(map(str, sizes))}, Adam, {len(data[0])} train images: L1 (lam {args.lam:g}) test acc "
         f"{metrics['test_acc']:.4f}, W1 {metrics['sparsity']:.1%} near 0 | without {metrics['test_acc_without']:.4f}, "
         f"{metrics['sparsity_without']:.1%}")
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"L1: test acc {metrics['test_acc']:.4f} (train {metrics['train_acc']:.4f}), W1 near zero "
          f"{metrics['sparsity']:.3f} | without: test acc {metrics['test_acc_without']:.4f} "
          f"(train {metrics['train_acc_without']:.4f}), {metrics['sparsity_without']:.3f}")
    print(f"wrote {out_dir}/metrics.json and l1.png")
    return metrics


if __name__ == "__main__":
    main()
