"""L2 regularization from scratch in NumPy: the penalty's forward and backward beside the MLP's, and weight decay.

L2 regularization adds the squared norm of the weights (not the biases) to the training loss:

    R(theta)   = (lam / 2) sum_l ||W_l||^2                  sum of squares of every weight entry
    dR/dW_l    = lam W_l                                     the gradient: a pull toward 0, proportional to W
    L_total    = L_data + R(theta)

Why it regularizes (UDL 9.1, d2l 3.7): the penalty shrinks every weight toward 0 unless the data pay
for it, so the network can fit only the structure that lowers the data loss by more than it costs.
Small weights give a function that changes slowly with its input (smoother), which generalises
better. In the Bayesian reading, minimising L_data + R is MAP estimation under a Gaussian prior
W ~ N(0, 1/lam) on every weight.

Relation to weight decay. With plain SGD the L2 gradient step IS weight decay:

    theta <- theta - lr (g + lam theta) = (1 - lr lam) theta - lr g         (shrink, then the data step)

With Adam it is not: the lam theta term enters the gradient, so it is averaged into m and divided by
sqrt(vhat) like the rest, and a weight with a large data gradient is barely decayed. Loshchilov and
Hutter's AdamW decouples the two (every weight shrinks by the same factor 1 - lr wd per step):

    theta <- theta - lr (mhat / (sqrt(vhat) + eps) + wd theta)             (AdamW, decoupled decay)

The run: the 784-256-128-10 MLP trained with Adam on the first 5,000 Fashion-MNIST training images
(so that it overfits), three times from the same initial weights and minibatch order: without any
penalty, with L2 in the loss (Adam), and with decoupled weight decay (AdamW, written here by hand).
Decay acts on the weights W_l only, never the biases, in both regularized runs.

Reading: S. J. D. Prince, "Understanding Deep Learning" (2023), section 9.1 "Explicit
regularization", https://udlbook.github.io/udlbook/; d2l 3.7 "Weight Decay",
https://d2l.ai/chapter_linear-regression/weight-decay.html; I. Loshchilov and F. Hutter (2019),
"Decoupled Weight Decay Regularization", ICLR, https://arxiv.org/abs/1711.05101.
Arc: Regularization -- L2 regularization (and weight decay) in NumPy.

Run:  python 03-regularization/l2_numpy.py [--lam 1e-3 --weight-decay 0.1 --epochs 30]
      python 03-regularization/l2_numpy.py --smoke
Look first at `l2_penalty` (forward and backward in four lines) and `adam_step` (where the decay
goes for AdamW); then at l2.png: the train/test gap, the weight histograms and the weight norms.
"""

# %%
import argparse
import sys
import time
from pathlib import Path

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
# ## The penalty: forward beside backward


# %%
def l2_penalty(params, lam):
    """R = (lam / 2) sum_l ||W_l||^2 over the weights W_l (biases excluded) and dR/dW_l = lam W_l.

    Returns (R, {"W1": lam W1, ...}): the gradient only has entries for the weights.
    """
    if lam < 0:
        raise ValueError(f"the L2 coefficient lam must be >= 0, got {lam}")
    weights = {name: W for name, W in params.items() if name.startswith("W")}
    R = 0.5 * lam * sum(float(np.sum(W * W)) for W in weights.values())  # forward
    return R, {name: lam * W for name, W in weights.items()}  # backward: d/dW (lam/2) W^2 = lam W


def weight_norm(params):
    """sqrt(sum_l ||W_l||^2): the size of all weights together (biases excluded)."""
    return float(np.sqrt(sum(np.sum(np.asarray(W, np.float64) ** 2) for n, W in params.items() if n[0] == "W")))


# %% [markdown]
# ## The network: Linear-ReLU layers, forward and backward by hand


# %%
def init_params(sizes, rng, dtype=np.float32):
    """He-initialised W_l ~ N(0, 2 / D_{l-1}) (D_{l-1}, D_l), zero b_l (D_l,)."""
    params = {}
    for l, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        params[f"W{l}"] = (rng.standard_normal((d_in, d_out)) * np.sqrt(2.0 / d_in)).astype(dtype)
        params[f"b{l}"] = np.zeros(d_out, dtype)
    return params


def forward(params, x):
    """logits (B, 10) for x (B, 784) and, per layer, the (input, pre-activation) pair the backward needs."""
    L = len(params) // 2
    h, caches = x, []
    for l in range(1, L + 1):
        z = h @ params[f"W{l}"] + params[f"b{l}"]  # (B, D_l)
        caches.append((h, z))
        h = np.maximum(z, 0) if l < L else z  # no ReLU on the logits
    return h, caches


def loss_and_grads(params, x, y, lam=0.0):
    """L_data + (lam/2) sum ||W||^2, its gradients (data part + lam W), the data loss, and the logits."""
    logits, caches = forward(params, x)
    B = len(y)
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))  # (B, 10) stable log-softmax
    data_loss = -log_p[np.arange(B), y].mean()
    dz = np.exp(log_p)  # dL/dlogits = (softmax - onehot) / B
    dz[np.arange(B), y] -= 1
    dz /= B
    grads = {}
    for l in range(len(caches), 0, -1):
        h_in, z = caches[l - 1]
        if l < len(caches):
            dz = dz * (z > 0)  # through the ReLU
        grads[f"W{l}"], grads[f"b{l}"] = h_in.T @ dz, dz.sum(axis=0)
        if l > 1:
            dz = dz @ params[f"W{l}"].T  # dL/dh_{l-1}
    R, dR = l2_penalty(params, lam)
    for name, g in dR.items():  # the penalty's gradient adds to the data gradient
        grads[name] = grads[name] + g
    return data_loss + R, grads, data_loss, logits


# %% [markdown]
# ## Adam, with optional decoupled weight decay (AdamW)


# %%
# Adam as taught in 02-optimization/adam_numpy.py, and AdamW as taught in 02-optimization/adamw_numpy.py
def adam_init(params):
    """Zero first and second moments for every parameter, and the step count t = 0."""
    return {"t": 0, "m": {k: np.zeros_like(v) for k, v in params.items()},
            "v": {k: np.zeros_like(v) for k, v in params.items()}}


def adam_step(params, grads, state, lr, wd=0.0, betas=(0.9, 0.999), eps=1e-8):
    """One Adam step in place; wd > 0 adds decoupled decay theta <- theta - lr wd theta on the weights W_l.

    m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,  mhat = m / (1 - b1^t),  vhat = v / (1 - b2^t)
    theta <- theta - lr mhat / (sqrt(vhat) + eps)
    An L2 term in the loss arrives here inside g, and is divided by sqrt(vhat) like the rest; the
    decoupled decay never passes through m or v.
    """
    b1, b2 = betas
    state["t"] += 1
    t = state["t"]
    for name, g in grads.items():
        m, v = state["m"][name], state["v"][name]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        if wd and name.startswith("W"):
            params[name] -= lr * wd * params[name]  # decoupled: the same factor (1 - lr wd) for every weight
        params[name] -= lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)


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


def accuracy(params, X, y):
    return float((forward(params, X)[0].argmax(axis=1) == y).mean())


def train(params, data, args, lam, wd, tag):
    """Adam for args.epochs with L2 coefficient lam in the loss and decoupled decay wd; returns the history."""
    Xtr, ytr, Xte, yte = data
    data_rng = np.random.default_rng(args.seed)  # the same minibatch order for all three runs
    state = adam_init(params)
    hist = {"step_loss": [], "train_loss": [], "train_acc": [], "test_acc": [], "weight_norm": [], "epoch_s": []}
    steps = -(-len(Xtr) // args.batch_size)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        for idx in tqdm(minibatches(len(Xtr), args.batch_size, data_rng), total=steps, desc=f"{tag} epoch {epoch}",
                        leave=False, disable=not sys.stdout.isatty()):
            loss, grads, _, _ = loss_and_grads(params, Xtr[idx], ytr[idx], lam)
            adam_step(params, grads, state, args.lr, wd)
            hist["step_loss"].append(float(loss))
        hist["epoch_s"].append(time.perf_counter() - t0)
        hist["train_loss"].append(float(np.mean(hist["step_loss"][-steps:])))
        hist["train_acc"].append(accuracy(params, Xtr, ytr))
        hist["test_acc"].append(accuracy(params, Xte, yte))
        hist["weight_norm"].append(weight_norm(params))
        print(f"[{tag}] epoch {epoch:2d}/{args.epochs}  train loss {hist['train_loss'][-1]:.4f} acc "
              f"{hist['train_acc'][-1]:.4f} | test acc {hist['test_acc'][-1]:.4f} | ||W|| "
              f"{hist['weight_norm'][-1]:.2f} | {hist['epoch_s'][-1]:.2f} s", flush=True)
    return hist


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
        data = load_data(args.data_dir, args.smoke)
    except DataError as exc:
        sys.exit(f"error: {exc}")

    sizes = [data[0].shape[1], *args.hidden, 10]
    print(f"l2_numpy: {' -> '.join(map(str, sizes))}, {len(data[0])} train / {len(data[2])} test images, "
          f"Adam lr {args.lr}, L2 lam {args.lam}, AdamW wd {args.weight_decay}")
    runs = {"without": (0.0, 0.0), f"L2 lam={args.lam} (Adam)": (args.lam, 0.0),
            f"decoupled wd={args.weight_decay} (AdamW)": (0.0, args.weight_decay)}
    hists, first_weights = {}, {}
    for label, (lam, wd) in runs.items():
        params = init_params(sizes, np.random.default_rng([args.seed, 1]))  # the same W for every run
        hists[label] = train(params, data, args, lam, wd, tag=label)
        first_weights[label] = params["W1"]
    plain, l2, dec = hists.values()

    plot_results(hists, first_weights, out_dir / "l2.png",
                 f"MLP {'-'.join(map(str, sizes))}, {len(data[0])} train images: test accuracy "
                 f"{plain['test_acc'][-1]:.4f} without, {l2['test_acc'][-1]:.4f} L2, "
                 f"{dec['test_acc'][-1]:.4f} decoupled")
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
