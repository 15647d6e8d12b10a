"""L2 regularization in PyTorch: the penalty in the loss and autograd, against torch.optim.AdamW's decoupled decay.

    R(theta)   = (lam / 2) sum_l ||W_l||^2          weights only, no biases;   dR/dW_l = lam W_l
    L_total    = L_data + R(theta)

Why it regularizes (UDL 9.1, d2l 3.7): every weight is pulled toward 0 unless the data pay for it,
so the network keeps only the structure that lowers the data loss by more than it costs; small
weights give a smoother function of the input, which generalises better. Minimising L_data + R is
MAP estimation under a Gaussian prior W ~ N(0, 1/lam).

Weight decay. With plain SGD, theta - lr (g + lam theta) = (1 - lr lam) theta - lr g: L2 in the loss
is exactly weight decay, which is why torch.optim.SGD(weight_decay=lam) simply adds lam theta to the
gradient. With Adam the lam theta term is averaged into m and divided by sqrt(vhat) like the rest of
the gradient, so weights with large data gradients are barely decayed (torch.optim.Adam's own
weight_decay is this coupled L2). torch.optim.AdamW decouples it:
theta <- theta - lr (mhat / (sqrt(vhat) + eps) + wd theta), the same shrink (1 - lr wd) for every weight.

The run: the 784-256-128-10 MLP with Adam on the first 5,000 Fashion-MNIST training images, from the
same initial weights and minibatch order, without a penalty, with L2 in the loss (torch.optim.Adam),
and with decoupled decay (torch.optim.AdamW, weight_decay on the weights only).

Reading: S. J. D. Prince, "Understanding Deep Learning" (2023), section 9.1,
https://udlbook.github.io/udlbook/; d2l 3.7 "Weight Decay",
https://d2l.ai/chapter_linear-regression/weight-decay.html; I. Loshchilov and F. Hutter (2019),
"Decoupled Weight Decay Regularization", ICLR, https://arxiv.org/abs/1711.05101.
Arc: Regularization -- L2 regularization (and weight decay) in PyTorch.

Run:  python 03-regularization/l2_torch.py [--lam 1e-3 --weight-decay 0.1 --epochs 30 --device auto]
      python 03-regularization/l2_torch.py --smoke
Look first at `l2_penalty` and `make_optimizer` (decay in the loss vs decay in the optimizer);
then at l2.png.
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


def weights(model):
    """The weight matrices W_l (what L2 and the decay act on); biases are left alone."""
    return [layer.weight for layer in model.layers]


def l2_penalty(ws, lam):
    """(lam / 2) sum_l ||W_l||^2 over the tensors ws; autograd gives lam W_l. lam < 0 raises ValueError."""
    if lam < 0:
        raise ValueError(f"the L2 coefficient lam must be >= 0, got {lam}")
    return 0.5 * lam * sum((W * W).sum() for W in ws)


def weight_norm(model):
    """sqrt(sum_l ||W_l||^2), biases excluded."""
    return float(torch.sqrt(sum((W.detach().double() ** 2).sum() for W in weights(model))))


def make_optimizer(model, lr, wd):
    """torch.optim.Adam when wd = 0 (any L2 lives in the loss); torch.optim.AdamW with decay on the weights only."""
    if wd == 0:
        return torch.optim.Adam(model.parameters(), lr=lr)
    biases = [layer.bias for layer in model.layers]
    return torch.optim.AdamW([{"params": weights(model), "weight_decay": wd},
                              {"params": biases, "weight_decay": 0.0}], lr=lr)


def train_step(model, opt, x, y, lam):
    """One step on L_data + (lam/2) sum ||W||^2; returns the total loss (detached)."""
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y) + l2_penalty(weights(model), lam)
    loss.backward()  # autograd: the data gradient plus lam W
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


@torch.no_grad()
def accuracy(model, X, y):
    return (model(X).argmax(dim=1) == y).float().mean().item()


def train(model, data, args, lam, wd, tag):
    """Adam (AdamW when wd > 0) for args.epochs with L2 coefficient lam in the loss; returns the history."""
    Xtr, ytr, Xte, yte = data
    l2_penalty([], lam)  # validates lam before any training
    opt = make_optimizer(model, args.lr, wd)
    data_rng = np.random.default_rng(args.seed)  # the same minibatch order for all three runs
    hist = {"step_loss": [], "train_loss": [], "train_acc": [], "test_acc": [], "weight_norm": [], "epoch_s": []}
    steps = -(-len(Xtr) // args.batch_size)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        losses = []
        for idx in tqdm(minibatches(len(Xtr), args.batch_size, data_rng), total=steps, desc=f"{tag} epoch {epoch}",
                        leave=False, disable=not sys.stdout.isatty()):
            idx = torch.from_numpy(idx).to(Xtr.device)
            losses.append(train_step(model, opt, Xtr[idx], ytr[idx], lam))
        hist["step_loss"].extend(torch.stack(losses).tolist())  # one transfer per epoch
        hist["epoch_s"].append(time.perf_counter() - t0)
        hist["train_loss"].append(float(np.mean(hist["step_loss"][-steps:])))
        hist["train_acc"].append(accuracy(model, Xtr, ytr))
        hist["test_acc"].append(accuracy(model, Xte, yte))
        hist["weight_norm"].append(weight_norm(model))
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
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where to train (default auto: cuda, then mps, then cpu)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/<script>)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
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
        Xtr, ytr, Xte, yte = load_data(args.data_dir, args.smoke)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    data = (torch.from_numpy(Xtr).to(device), torch.from_numpy(ytr).long().to(device),
            torch.from_numpy(Xte).to(device), torch.from_numpy(yte).long().to(device))

    sizes = [Xtr.shape[1], *args.hidden, 10]
    print(f"l2_torch: {' -> '.join(map(str, sizes))}, {len(Xtr)} train / {len(Xte)} test images on {device}, "
          f"Adam lr {args.lr}, L2 lam {args.lam}, AdamW wd {args.weight_decay}")
    runs = {"without": (0.0, 0.0), f"L2 lam={args.lam} (Adam)": (args.lam, 0.0),
            f"decoupled wd={args.weight_decay} (AdamW)": (0.0, args.weight_decay)}
    hists, first_weights = {}, {}
    for label, (lam, wd) in runs.items():
        torch.manual_seed(args.seed)  # the same initial weights for every run
        model = MLP(sizes).to(device)
        hists[label] = train(model, data, args, lam, wd, tag=label)
        first_weights[label] = model.layers[0].weight.detach().cpu().numpy()
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
               "config": {**vars(args), "sizes": sizes, "device": str(device)},
               "history": {label: {k: v for k, v in h.items() if k != "step_loss"} for label, h in hists.items()}}
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"wrote {out_dir}/metrics.json and l2.png")
    return metrics


if __name__ == "__main__":
    main()
