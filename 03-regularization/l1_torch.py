"""L1 regularisation in PyTorch: lam * sum |W| added to the loss, autograd differentiates it, torch.optim.Adam.

The same experiment as l1_numpy.py (hand-written penalty backward) and l1_jax.py (jax.grad):

    L_total(theta) = L_data(theta) + lam * sum_l sum_ij |W_l,ij|       (weights only, not biases)
    dL_total/dW_l  = dL_data/dW_l + lam * sign(W_l)                     autograd's |w|' at 0 is 0, as sign(0)

torch.optim has no L1 option (its weight_decay is L2), so the penalty goes into the loss, and
loss.backward() adds lam * sign(W) to every weight's .grad.

Why it gives zero weights (UDL 9.1, d2l 3.7): the pull lam * sign(w) keeps its full size however
small w gets (L2's lam * w fades with w), so every weight whose data gradient is weaker than lam is
pushed to zero; minimising L_data inside the diamond sum |w| <= c lands on its corners, on the axes,
where coordinates are exactly zero; and the penalty is the negative log of a Laplace prior
p(w) ~ exp(-|w| / b), peaked at zero, where L2's Gaussian is flat. With Adam and a subgradient the
weights do not land on zero: Adam turns the constant pull into a step of about lr, so they overshoot
and hover within about lr of zero (exact zeros would take a proximal soft-threshold step). The run
reports the fraction of first-layer weights with |w| < 1e-3, and the histogram of log10 |w|.

The run: 784-256-128-10 MLP, 5,000 train images, Adam lr 1e-3, batch 128, 30 epochs, lam 1e-4, from the
same initial weights and minibatch order with and without the penalty (lam as in l1_numpy.py).

Reading: S. J. D. Prince, "Understanding Deep Learning" (2023), section 9.1 "Explicit regularization",
https://udlbook.github.io/udlbook/; d2l 3.7 "Weight Decay", https://d2l.ai/chapter_linear-regression/weight-decay.html;
R. Tibshirani (1996), "Regression Shrinkage and Selection via the Lasso", JRSS B.
Arc: Regularization -- L1 in PyTorch.

Run:  python 03-regularization/l1_torch.py [--lam 1e-4 --lr 1e-3 --epochs 30 --batch-size 128 --device cpu]
      python 03-regularization/l1_torch.py --smoke
Look first at `l1_penalty` and `train_step`: one added term in the loss; then at l1.png's right panel.
Note: nn.Linear stores W_l as (D_out, D_in); the NumPy and JAX scripts store its transpose.
"""

# %%
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import nn
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
# ## The network and the penalty


# %%
class MLP(nn.Module):
    """Linear layers of widths sizes = [784, *hidden, 10] with ReLU between them, He-initialised."""

    def __init__(self, sizes):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(d_in, d_out) for d_in, d_out in zip(sizes[:-1], sizes[1:]))
        for layer in self.layers:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")  # W ~ N(0, 2 / D_in)
            nn.init.zeros_(layer.bias)

    def forward(self, x):  # x (B, 784) -> logits (B, 10)
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


def l1_penalty(model, lam):
    """lam * sum_l sum |W_l| over the Linear layers' weights, biases excluded (a tensor, part of the graph)."""
    if not lam >= 0:  # also rejects NaN
        raise ValueError(f"Invalid L1 strength lam: {lam} (must be >= 0)")
    return lam * sum(layer.weight.abs().sum() for layer in model.layers)


def near_zero_fraction(W, tol=NEAR_ZERO):
    return float((np.abs(np.asarray(W)) < tol).mean())


def train_step(model, opt, x, y, lam):
    """One Adam step on cross-entropy + L1; returns the total loss (detached)."""
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y) + l1_penalty(model, lam)
    loss.backward()  # .grad of each W gains lam * sign(W)
    opt.step()
    return loss.detach()


# device picker, as taught in 01-foundations/mlp_torch.py
def pick_device(name):
    """'auto' picks cuda, then mps, then cpu; asking for a device this machine lacks is an error."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(d for d, ok in available.items() if ok)
    if not available[name]:
        raise ValueError(f"--device {name}: not available on this machine")
    return torch.device(name)


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


@torch.no_grad()
def accuracy(model, X, y):
    model.eval()
    return (model(X).argmax(dim=1) == y).float().mean().item()


def train(model, data, args, lam, tag):
    """torch.optim.Adam on loss + lam * sum|W| for args.epochs; train and test accuracy after each epoch."""
    Xtr, ytr, Xte, yte = data
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    data_rng = np.random.default_rng(args.seed)  # the same minibatch order for both runs
    hist = {"step_loss": [], "train_loss": [], "train_acc": [], "test_acc": [], "near_zero": []}
    steps = -(-len(Xtr) // args.batch_size)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        losses = []
        for idx in tqdm(minibatches(len(Xtr), args.batch_size, data_rng), total=steps, desc=f"{tag} epoch {epoch}",
                        leave=False, disable=not sys.stdout.isatty()):
            idx = torch.from_numpy(idx).to(Xtr.device)
            losses.append(train_step(model, opt, Xtr[idx], ytr[idx], lam))
        hist["step_loss"] += torch.stack(losses).tolist()  # one transfer per epoch
        hist["train_loss"].append(float(np.mean(hist["step_loss"][-steps:])))
        hist["train_acc"].append(accuracy(model, Xtr, ytr))
        hist["test_acc"].append(accuracy(model, Xte, yte))
        hist["near_zero"].append(near_zero_fraction(model.layers[0].weight.detach().cpu()))
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
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where to train (default auto: cuda, then mps, then cpu)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/<script>)")
    p.add_argument("--smoke", action="store_true", help="seconds: 1,000 train / 1,000 test images, small net")
    args = p.parse_args(argv)
    try:  # before anything is loaded: a device this machine lacks is a usage error
        device = pick_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
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
    data = [torch.from_numpy(a).to(device) for a in data]

    sizes = [data[0].shape[1], *args.hidden, 10]
    print(f"l1_torch: {' -> '.join(map(str, sizes))}, {len(data[0])} train / {len(data[2])} test images, "
          f"Adam lr {args.lr}, lam {args.lam}, on {device}")
    hists, W1s = {}, {}
    for label, lam in [("L1", args.lam), ("without", 0.0)]:
        torch.manual_seed(args.seed)  # the same initial weights for both runs
        model = MLP(sizes).to(device)
        hists[label] = train(model, data, args, lam, tag=label)
        W1s[label] = model.layers[0].weight.detach().cpu().numpy()
    l1, plain = hists["L1"], hists["without"]
    metrics = {"script": Path(__file__).stem, "lam": args.lam,
               "test_acc": l1["test_acc"][-1], "train_acc": l1["train_acc"][-1],
               "test_acc_without": plain["test_acc"][-1], "train_acc_without": plain["train_acc"][-1],
               "first_loss": l1["step_loss"][0], "final_train_loss": l1["train_loss"][-1],
               "final_train_loss_without": plain["train_loss"][-1],
               "sparsity": near_zero_fraction(W1s["L1"]), "sparsity_without": near_zero_fraction(W1s["without"]),
               "exact_zero_fraction": float((W1s["L1"] == 0).mean()),
               "W1_l1_norm": float(np.abs(W1s["L1"]).sum()), "W1_l1_norm_without": float(np.abs(W1s["without"]).sum()),
               "config": {**vars(args), "sizes": sizes, "device": str(device)},
               "history": {label: {k: v for k, v in h.items() if k != "step_loss"} for label, h in hists.items()}}
    plot(hists, W1s, out_dir / "l1.png",
         f"PyTorch MLP {'-'.join(map(str, sizes))}, Adam, {len(data[0])} train images: L1 (lam {args.lam:g}) "
         f"test acc {metrics['test_acc']:.4f}, W1 {metrics['sparsity']:.1%} near 0 | without "
         f"{metrics['test_acc_without']:.4f}, {metrics['sparsity_without']:.1%}")
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"L1: test acc {metrics['test_acc']:.4f} (train {metrics['train_acc']:.4f}), W1 near zero "
          f"{metrics['sparsity']:.3f} | without: test acc {metrics['test_acc_without']:.4f} "
          f"(train {metrics['train_acc_without']:.4f}), {metrics['sparsity_without']:.3f}")
    print(f"wrote {out_dir}/metrics.json and l1.png")
    return metrics


if __name__ == "__main__":
    main()
