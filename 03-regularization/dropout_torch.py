"""Inverted dropout from scratch as a PyTorch nn.Module, in an MLP on Fashion-MNIST; autograd does the backward.

In training, every hidden unit is kept with probability 1 - p and zeroed with probability p, afresh
for every example and every step; the kept units are scaled up by 1 / (1 - p) (elementwise):

    u ~ U[0, 1)          mask = (u >= p)          P(mask = 1) = 1 - p
    out = h * mask / (1 - p)                      so E[out] = h
    dL/dh = dL/dout * mask / (1 - p)              (autograd derives it, with the forward's mask)
In evaluation (model.eval()), out = h: the identity.

Why it regularizes (UDL 9.3.3; d2l 5.6; Srivastava et al. 2014): no unit can count on any other being
present, so units cannot co-adapt to fit the training set together; and each step trains one of the
2^n "thinned" subnetworks of n units, all sharing weights, an implicit ensemble whose average the
full network approximates at evaluation. Why "inverted": the scaling by 1 / (1 - p) happens at
training time, keeping each activation's expectation, so evaluation needs no change (the paper instead
scales the weights by 1 - p at test time). Why off in evaluation: the noise only serves training; a
prediction should be deterministic and use the whole (averaged) ensemble.

The run: the 784-256-128-10 MLP, torch.optim.Adam lr 1e-3, on the first 5,000 training images, once
without and once with `Dropout(p=0.5)` after each hidden ReLU, from the same initial weights and
minibatch order. The figure shows train and test accuracy per epoch and the first-layer weights.

Reading: N. Srivastava et al. (2014), "Dropout: A Simple Way to Prevent Neural Networks from
Overfitting", JMLR 15, https://jmlr.org/papers/v15/srivastava14a.html; d2l 5.6 "Dropout",
https://d2l.ai/chapter_multilayer-perceptrons/dropout.html; S. J. D. Prince, "Understanding Deep
Learning" (2023), section 9.3.3, https://udlbook.github.io/udlbook/.
Arc: Regularization -- dropout in PyTorch.

Run:  python 03-regularization/dropout_torch.py [--dropout 0.5 --epochs 30 --lr 1e-3 --batch-size 128]
      python 03-regularization/dropout_torch.py --smoke
      python 03-regularization/dropout_torch.py --device cuda
Look first at `Dropout.forward`: three lines, and `self.training` switches them off;
then at dropout.png: the gap between train and test accuracy, with and without dropout.
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
    nonneg_int,
    positive_float,
    positive_int,
    probability,
    save_metrics,
)

# %% [markdown]
# ## The layer and the network


# %%
class Dropout(nn.Module):
    """out = x * mask / (1 - p), mask = (u >= p) with u ~ U[0, 1) from torch's generator; identity in eval mode.

    generator: a torch.Generator for the masks (default: torch's global one, seeded by torch.manual_seed).
    """

    def __init__(self, p=0.5, generator=None):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability p must be in [0, 1), got {p} (p = 1 would divide by 1 - p = 0)")
        self.p, self.generator = p, generator

    def forward(self, x):
        if not self.training or self.p == 0:  # evaluation: the identity
            return x
        u = torch.rand(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)
        mask = (u >= self.p).to(x.dtype)  # 1 = kept, with probability 1 - p
        # No backward to write: autograd records the product x * mask and keeps `mask` as a saved
        # constant of that multiplication, so d out / d x = mask / (1 - p) uses the very mask drawn
        # here (nothing is redrawn in the backward), and dropped units get exactly zero gradient.
        return x * mask / (1 - self.p)

    def extra_repr(self):
        return f"p={self.p}"


class MLP(nn.Module):
    """Linear-ReLU-Dropout hidden layers and a Linear output, He-initialised."""

    def __init__(self, sizes, p=0.5):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(d_in, d_out) for d_in, d_out in zip(sizes[:-1], sizes[1:]))
        self.drop = Dropout(p)
        for layer in self.layers:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")  # W ~ N(0, 2 / D_in), b = 0
            nn.init.zeros_(layer.bias)

    def forward(self, x):  # x (B, 784) -> logits (B, 10)
        for layer in self.layers[:-1]:
            x = self.drop(F.relu(layer(x)))  # a fresh mask at every call, i.e. per layer and per step
        return self.layers[-1](x)


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


@torch.no_grad()
def evaluate(model, X, y):
    """Loss and accuracy in evaluation mode (dropout off)."""
    model.eval()
    logits = model(X)
    return F.cross_entropy(logits, y).item(), (logits.argmax(dim=1) == y).float().mean().item()


def train(model, data, args, tag):
    """Adam for args.epochs; after each epoch, evaluate on the train and test sets."""
    Xtr, ytr, Xte, yte = data
    data_rng = np.random.default_rng(args.seed)  # the same minibatch order for both runs
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    hist = {"step_loss": [], "train_loss": [], "train_acc": [], "test_loss": [], "test_acc": [], "epoch_s": []}
    steps = -(-len(Xtr) // args.batch_size)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        losses = []
        for idx in tqdm(minibatches(len(Xtr), args.batch_size, data_rng), total=steps, desc=f"{tag} epoch {epoch}",
                        leave=False, disable=not sys.stdout.isatty()):
            idx = torch.from_numpy(idx).to(Xtr.device)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(Xtr[idx]), ytr[idx])  # dropout on: model.train()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        hist["step_loss"] += torch.stack(losses).tolist()  # one transfer per epoch
        hist["epoch_s"].append(time.perf_counter() - t0)
        for split, X, y in [("train", Xtr, ytr), ("test", Xte, yte)]:
            loss, acc = evaluate(model, X, y)
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
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                    help="where to train (default auto: cuda, then mps, then cpu)")
    ap.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    ap.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/<script>)")
    ap.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = ap.parse_args(argv)
    try:  # before anything is loaded: a device this machine lacks is a usage error
        device = pick_device(args.device)
    except ValueError as exc:
        ap.error(str(exc))
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
    data = [torch.as_tensor(a, device=device) for a in arrays]
    data[1], data[3] = data[1].long(), data[3].long()

    sizes = [data[0].shape[1], *args.hidden, 10]
    print(f"dropout_torch: {' -> '.join(map(str, sizes))}, {len(data[0])} train / {len(data[2])} test images "
          f"on {device}, Adam lr {args.lr}, dropout p {args.dropout}")
    hists, weights = {}, {}
    for label, p in [("without dropout", 0.0), (f"dropout p={args.dropout}", args.dropout)]:
        torch.manual_seed(args.seed)  # the same initial weights for both runs; then the masks
        model = MLP(sizes, p).to(device)
        hists[label] = train(model, data, args, tag=label)
        weights[label] = model.layers[0].weight.detach().cpu().numpy()
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
                          "device": str(device)},
               "history": {label: {k: v for k, v in h.items() if k != "step_loss"} for label, h in hists.items()}}
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"test accuracy {metrics['test_acc']:.4f} with dropout, {metrics['test_acc_without']:.4f} without; "
          f"wrote {out_dir}/metrics.json and dropout.png")
    return metrics


if __name__ == "__main__":
    main()
