"""Inverted dropout from scratch in NumPy: forward, backward with the same mask, in an MLP on Fashion-MNIST.

In training, every hidden unit is kept with probability 1 - p and zeroed with probability p, afresh
for every example and every step; the kept units are scaled up by 1 / (1 - p) (elementwise):

    u ~ U[0, 1)          mask = (u >= p)          P(mask = 1) = 1 - p
    out = h * mask / (1 - p)                      so E[out] = h (1 - p) / (1 - p) = h
    dL/dh = dL/dout * mask / (1 - p)              the backward reuses the forward's mask
In evaluation, out = h: the identity.

Why it regularizes (UDL 9.3.3; d2l 5.6; Srivastava et al. 2014): a unit cannot rely on any particular
other unit being present, so units cannot co-adapt (fix each other's mistakes in ways that fit only
the training set). Each step trains one of the 2^n "thinned" subnetworks that n units can form, all
sharing weights: an implicit ensemble, whose average prediction evaluation approximates with the full
network (exact for one linear layer). Why "inverted": the paper multiplies by 1 - p at test time;
scaling by 1 / (1 - p) at training time keeps every activation's expectation, so evaluation needs no
change. Why off in evaluation: the noise only serves training; a prediction should be deterministic.

The run: the 784-256-128-10 MLP, Adam lr 1e-3, on the first 5,000 training images (few enough that
this network overfits), once without and once with dropout p = 0.5 after each hidden ReLU, from the
same initial weights and minibatch order. The figure shows train and test accuracy per epoch for
both, and the first-layer weights' histograms.

Reading: N. Srivastava, G. Hinton, A. Krizhevsky, I. Sutskever, R. Salakhutdinov (2014), "Dropout: A
Simple Way to Prevent Neural Networks from Overfitting", JMLR 15, https://jmlr.org/papers/v15/srivastava14a.html;
d2l 5.6 "Dropout", https://d2l.ai/chapter_multilayer-perceptrons/dropout.html; S. J. D. Prince,
"Understanding Deep Learning" (2023), section 9.3.3, https://udlbook.github.io/udlbook/.
Arc: Regularization -- dropout in NumPy.

Run:  python 03-regularization/dropout_numpy.py [--dropout 0.5 --epochs 30 --lr 1e-3 --batch-size 128]
      python 03-regularization/dropout_numpy.py --smoke
Look first at `dropout_forward` / `dropout_backward`: the mask is drawn once and kept in the cache;
then at dropout.png: the gap between train and test accuracy, with and without dropout.
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
    nonneg_int,
    positive_float,
    positive_int,
    probability,
    save_metrics,
)

# %% [markdown]
# ## The layer: forward beside backward


# %%
def check_p(p):
    """Dropout probabilities live in [0, 1): p = 1 would drop every unit and divide by 1 - p = 0."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability p must be in [0, 1), got {p} (p = 1 would divide by 1 - p = 0)")


def dropout_forward(h, p, training, rng):
    """out = h * mask / (1 - p) with mask = (u >= p), u ~ U[0, 1) from rng; identity in evaluation.

    The cache holds the mask, so the backward multiplies by exactly the units the forward kept.
    """
    check_p(p)
    if not training:
        return h, None
    mask = rng.random(h.shape) >= p  # (B, D) True = kept, with probability 1 - p
    scale = 1.0 / (1.0 - p)
    return h * mask * np.asarray(scale, h.dtype), (mask, scale)


def dropout_backward(dout, cache):
    """dL/dh = dL/dout * mask / (1 - p): dropped units get no gradient; identity in evaluation."""
    if cache is None:
        return dout
    mask, scale = cache
    return dout * mask * np.asarray(scale, dout.dtype)


# %% [markdown]
# ## The network: Linear-ReLU-Dropout hidden layers, with a hand-written backward


# %%
def init_params(sizes, rng, dtype=np.float32):
    """He initialisation: W_l ~ N(0, 2 / D_{l-1}), b_l = 0."""
    params = {}
    for l, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        params[f"W{l}"] = (rng.standard_normal((d_in, d_out)) * np.sqrt(2.0 / d_in)).astype(dtype)
        params[f"b{l}"] = np.zeros(d_out, dtype)
    return params


def forward(params, x, p, training, rng):
    """logits (B, 10) for x (B, 784), and per layer the cache (input, pre-activation, dropout cache)."""
    L = len(params) // 2
    h, caches = x, []
    for l in range(1, L + 1):
        h_in = h
        z = h @ params[f"W{l}"] + params[f"b{l}"]  # (B, D_l)
        drop_cache = None
        if l < L:  # hidden layer: ReLU, then dropout; none on the logits
            h, drop_cache = dropout_forward(np.maximum(z, 0), p, training, rng)
        else:
            h = z
        caches.append((h_in, z, drop_cache))
    return h, caches


def loss_and_grads(params, x, y, p=0.0, training=False, rng=None):
    """Mean softmax cross-entropy, the gradient of every parameter, and the logits."""
    logits, caches = forward(params, x, p, training, rng)
    B = len(y)
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -log_p[np.arange(B), y].mean()
    dz = np.exp(log_p)  # dL/dlogits = (softmax - onehot) / B
    dz[np.arange(B), y] -= 1
    dz /= B
    grads = {}
    for l in range(len(caches), 0, -1):
        h_in, z, drop_cache = caches[l - 1]
        if l < len(caches):  # dL/dh_l -> through dropout (same mask) -> through the ReLU
            dz = dropout_backward(dz, drop_cache) * (z > 0)
        grads[f"W{l}"], grads[f"b{l}"] = h_in.T @ dz, dz.sum(axis=0)
        if l > 1:
            dz = dz @ params[f"W{l}"].T  # dL/dh_{l-1}
    return loss, grads, logits


# Adam, as taught in 02-optimization/adam_numpy.py
class Adam:
    """theta <- theta - lr * mhat / (sqrt(vhat) + eps), with bias-corrected moments m and v."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.lr, self.betas, self.eps, self.t = lr, betas, eps, 0
        self.m = self.v = None

    def step(self, params, grads):
        if self.m is None:
            self.m = {k: np.zeros_like(v) for k, v in params.items()}
            self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t += 1
        b1, b2 = self.betas
        for k, g in grads.items():
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            mhat, vhat = self.m[k] / (1 - b1**self.t), self.v[k] / (1 - b2**self.t)
            params[k] -= (self.lr * mhat / (np.sqrt(vhat) + self.eps)).astype(params[k].dtype)


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


def evaluate(params, X, y):
    """Loss and accuracy in evaluation mode (dropout off)."""
    loss, _, logits = loss_and_grads(params, X, y)
    return float(loss), float((logits.argmax(axis=1) == y).mean())


def train(params, data, args, p, tag):
    """Adam for args.epochs with dropout probability p; after each epoch, evaluate train and test sets."""
    Xtr, ytr, Xte, yte = data
    data_rng = np.random.default_rng(args.seed)  # the same minibatch order for both runs
    drop_rng = np.random.default_rng([args.seed, 2])  # the dropout masks
    opt = Adam(args.lr)
    hist = {"step_loss": [], "train_loss": [], "train_acc": [], "test_loss": [], "test_acc": [], "epoch_s": []}
    steps = -(-len(Xtr) // args.batch_size)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        for idx in tqdm(minibatches(len(Xtr), args.batch_size, data_rng), total=steps, desc=f"{tag} epoch {epoch}",
                        leave=False, disable=not sys.stdout.isatty()):
            loss, grads, _ = loss_and_grads(params, Xtr[idx], ytr[idx], p, training=True, rng=drop_rng)
            opt.step(params, grads)
            hist["step_loss"].append(float(loss))
        hist["epoch_s"].append(time.perf_counter() - t0)
        for split, X, y in [("train", Xtr, ytr), ("test", Xte, yte)]:
            loss, acc = evaluate(params, X, y)
            hist[f"{split}_loss"].append(loss)
            hist[f"{split}_acc"].append(acc)
        print(f"[{tag}] epoch {epoch:2d}/{args.epochs}  train loss {hist['train_loss'][-1]:.4f} acc "
              f"{hist['train_acc'][-1]:.4f} | test loss {hist['test_loss'][-1]:.4f} acc {hist['test_acc'][-1]:.4f}"
              f" | {hist['epoch_s'][-1]:.2f} s", flush=True)
    return hist


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
        data = load_data(args.data_dir, args.smoke)
    except DataError as exc:
        sys.exit(f"error: {exc}")

    sizes = [data[0].shape[1], *args.hidden, 10]
    print(f"dropout_numpy: {' -> '.join(map(str, sizes))}, {len(data[0])} train / {len(data[2])} test images, "
          f"Adam lr {args.lr}, dropout p {args.dropout}")
    hists, weights = {}, {}
    for label, p in [("without dropout", 0.0), (f"dropout p={args.dropout}", args.dropout)]:
        params = init_params(sizes, np.random.default_rng([args.seed, 1]))  # the same initial weights for both
        hists[label] = train(params, data, args, p, tag=label)
        weights[label] = params["W1"]
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
               "config": {**vars(args), "sizes": sizes, "n_train": len(data[0]), "n_test": len(data[2])},
               "history": {label: {k: v for k, v in h.items() if k != "step_loss"} for label, h in hists.items()}}
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"test accuracy {metrics['test_acc']:.4f} with dropout, {metrics['test_acc_without']:.4f} without; "
          f"wrote {out_dir}/metrics.json and dropout.png")
    return metrics


if __name__ == "__main__":
    main()
