"""L1 regularisation from scratch in NumPy: lam * sum |W| drives weights to zero, in an MLP on Fashion-MNIST.

The loss gains the sum of absolute values of every weight matrix (not the biases: a bias shifts a
unit's output and does not make the function wigglier, so it is left free, as d2l 3.7 does):

    L_total(theta) = L_data(theta) + lam * sum_l sum_ij |W_l,ij|
    dL_total/dW_l  = dL_data/dW_l + lam * sign(W_l)          sign(0) = 0: a subgradient, as torch.sign
    dL_total/db_l  = dL_data/db_l

Why it gives exactly zero weights (UDL 9.1, d2l 3.7). L2's pull lam * w shrinks with w, so a weight
only approaches zero; L1's pull lam * sign(w) has the same size however small w is, so a weight whose
data gradient is smaller than lam is pushed all the way to zero. Geometrically, minimising L_data
subject to sum |w| <= c puts the solution on a diamond whose corners lie on the axes, where some
coordinates are exactly zero; L2's ball has no corners. As a prior, L1 is the MAP estimate under a
Laplace prior p(w) ~ exp(-|w| / b), sharply peaked at zero, against L2's Gaussian.

What Adam does to it. Adam divides each coordinate's gradient by its running RMS, so the constant pull
lam becomes a step of about lr toward zero for every weight the data do not hold up; a fixed-size step
overshoots (a weight at +1e-4 moves by up to about lr = 1e-3 and crosses zero), so weights hover in a
band of about lr around zero instead of landing on it. The run therefore counts the fraction of
first-layer weights with |w| < 1e-3 (`sparsity`) and draws the histogram of log10 |w|. Exact zeros
would need a proximal (soft-threshold) step, w <- sign(w) max(|w| - lr lam, 0), after each update.

The run: the 784-256-128-10 MLP on the first 5,000 training images, trained with Adam (lr 1e-3, batch
128, 30 epochs) from the same initial weights and minibatch order, once with lam = 1e-4 and once without.

Reading: S. J. D. Prince, "Understanding Deep Learning" (2023), section 9.1 "Explicit regularization",
https://udlbook.github.io/udlbook/; d2l 3.7 "Weight Decay", https://d2l.ai/chapter_linear-regression/weight-decay.html;
R. Tibshirani (1996), "Regression Shrinkage and Selection via the Lasso", JRSS B.
Arc: Regularization -- L1 in NumPy.

Run:  python 03-regularization/l1_numpy.py [--lam 1e-4 --lr 1e-3 --epochs 30 --batch-size 128]
      python 03-regularization/l1_numpy.py --smoke
Look first at `l1_penalty` and `l1_grad`: the penalty's forward and backward; then at the right
panel of l1.png: where the first-layer weights of the two runs lie on the log10 |w| axis.
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

NEAR_ZERO = 1e-3  # |w| below this counts as "near zero" in the sparsity metric

# %% [markdown]
# ## The penalty: forward beside backward


# %%
def check_lam(lam):
    if not lam >= 0:  # also rejects NaN
        raise ValueError(f"Invalid L1 strength lam: {lam} (must be >= 0)")


def l1_penalty(params, lam):
    """lam * sum_l sum |W_l| over the weight matrices (names starting with "W"), biases excluded."""
    check_lam(lam)
    return lam * sum(np.abs(p).sum() for name, p in params.items() if name.startswith("W"))


def l1_grad(params, lam):
    """d penalty / d W_l = lam * sign(W_l) (0 at W = 0, a subgradient); no entry for the biases."""
    check_lam(lam)
    return {name: lam * np.sign(p) for name, p in params.items() if name.startswith("W")}


def near_zero_fraction(W, tol=NEAR_ZERO):
    """Fraction of entries with |w| < tol."""
    return float((np.abs(W) < tol).mean())


# %% [markdown]
# ## The network: a 784-256-128-10 MLP with hand-written backward, and Adam


# %%
def init_params(sizes, rng, dtype=np.float32):
    """He initialisation: W_l ~ N(0, 2 / D_{l-1}), b_l = 0."""
    params = {}
    for l, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        params[f"W{l}"] = (rng.standard_normal((d_in, d_out)) * np.sqrt(2.0 / d_in)).astype(dtype)
        params[f"b{l}"] = np.zeros(d_out, dtype)
    return params


def loss_and_grads(params, x, y, lam=0.0):
    """Cross-entropy + L1 penalty, its gradients {"W1": ..., "b1": ...}, the logits and the data loss alone."""
    L = len(params) // 2
    hs, h = [], x
    for l in range(1, L + 1):  # forward: z_l = h_{l-1} W_l + b_l, h_l = max(z_l, 0) below the top
        hs.append(h)
        h = h @ params[f"W{l}"] + params[f"b{l}"]  # (B, D_l)
        if l < L:
            h = np.maximum(h, 0)
    logits = h
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    data_loss = -log_p[np.arange(len(y)), y].mean()
    dz = np.exp(log_p)  # dL/dlogits = (softmax - onehot) / B
    dz[np.arange(len(y)), y] -= 1
    dz /= len(y)
    grads = {}
    for l in range(L, 0, -1):  # backward: dW = h^T dz, db = sum dz, dh = dz W^T, through the ReLU
        grads[f"W{l}"], grads[f"b{l}"] = hs[l - 1].T @ dz, dz.sum(axis=0)
        if l > 1:
            dz = (dz @ params[f"W{l}"].T) * (hs[l - 1] > 0)
    for name, g in l1_grad(params, lam).items():  # the penalty's backward: + lam * sign(W)
        grads[name] += g
    return data_loss + l1_penalty(params, lam), grads, logits, data_loss


# Adam, as taught in 02-optimization/adam_numpy.py
class Adam:
    """theta <- theta - lr * mhat / (sqrt(vhat) + eps), as 02-optimization/adam_numpy.py, on a dict in place."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.lr, self.betas, self.eps, self.t = lr, betas, eps, 0
        self.m = {k: np.zeros_like(p) for k, p in params.items()}  # first moment, m_0 = 0
        self.v = {k: np.zeros_like(p) for k, p in params.items()}  # second moment, v_0 = 0

    def step(self, params, grads):
        self.t += 1
        b1, b2 = self.betas
        for k, p in params.items():
            g = grads[k]
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            mhat, vhat = self.m[k] / (1 - b1**self.t), self.v[k] / (1 - b2**self.t)  # bias corrections
            p -= self.lr * mhat / (np.sqrt(vhat) + self.eps)


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


def accuracy(params, X, y):
    return float((loss_and_grads(params, X, y)[2].argmax(axis=1) == y).mean())


def train(params, data, args, lam, tag):
    """Adam on loss + lam * sum|W| for args.epochs; train and test accuracy after each epoch."""
    Xtr, ytr, Xte, yte = data
    opt = Adam(params, lr=args.lr)
    data_rng = np.random.default_rng(args.seed)  # the same minibatch order for both runs
    hist = {"step_loss": [], "train_loss": [], "train_acc": [], "test_acc": [], "near_zero": []}
    steps = -(-len(Xtr) // args.batch_size)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        for idx in tqdm(minibatches(len(Xtr), args.batch_size, data_rng), total=steps, desc=f"{tag} epoch {epoch}",
                        leave=False, disable=not sys.stdout.isatty()):
            loss, grads, _, _ = loss_and_grads(params, Xtr[idx], ytr[idx], lam)
            opt.step(params, grads)
            hist["step_loss"].append(float(loss))
        hist["train_loss"].append(float(np.mean(hist["step_loss"][-steps:])))
        hist["train_acc"].append(accuracy(params, Xtr, ytr))
        hist["test_acc"].append(accuracy(params, Xte, yte))
        hist["near_zero"].append(near_zero_fraction(params["W1"]))
        print(f"[{tag}] epoch {epoch:2d}/{args.epochs}  train loss {hist['train_loss'][-1]:.4f} acc "
              f"{hist['train_acc'][-1]:.4f} | test acc {hist['test_acc'][-1]:.4f} | W1 near zero "
              f"{hist['near_zero'][-1]:.3f} | {time.perf_counter() - t0:.2f} s", flush=True)
    return hist


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
        W = np.asarray(W).ravel()
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
    print(f"l1_numpy: {' -> '.join(map(str, sizes))}, {len(data[0])} train / {len(data[2])} test images, "
          f"Adam lr {args.lr}, lam {args.lam}")
    hists, W1s = {}, {}
    for label, lam in [("L1", args.lam), ("without", 0.0)]:
        params = init_params(sizes, np.random.default_rng([args.seed, 1]))  # the same initial weights for both
        hists[label] = train(params, data, args, lam, tag=label)
        W1s[label] = params["W1"]
    l1, plain = hists["L1"], hists["without"]
    metrics = {"script": Path(__file__).stem, "lam": args.lam,
               "test_acc": l1["test_acc"][-1], "train_acc": l1["train_acc"][-1],
               "test_acc_without": plain["test_acc"][-1], "train_acc_without": plain["train_acc"][-1],
               "first_loss": l1["step_loss"][0], "final_train_loss": l1["train_loss"][-1],
               "final_train_loss_without": plain["train_loss"][-1],
               "sparsity": near_zero_fraction(W1s["L1"]), "sparsity_without": near_zero_fraction(W1s["without"]),
               "exact_zero_fraction": float((W1s["L1"] == 0).mean()),
               "W1_l1_norm": float(np.abs(W1s["L1"]).sum()), "W1_l1_norm_without": float(np.abs(W1s["without"]).sum()),
               "config": {**vars(args), "sizes": sizes},
               "history": {label: {k: v for k, v in h.items() if k != "step_loss"} for label, h in hists.items()}}
    plot(hists, W1s, out_dir / "l1.png",
         f"MLP {'-'.join(map(str, sizes))}, Adam, {len(data[0])} train images: L1 (lam {args.lam:g}) test acc "
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
