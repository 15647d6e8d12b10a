"""The first neural network in PyTorch: the same Fashion-MNIST MLP as an nn.Module, autograd, torch.optim.

What mlp_numpy.py writes by hand, PyTorch provides: `nn.Linear` holds W and b, autograd records
the forward pass and `loss.backward()` runs the chain rule through it, and `torch.optim.SGD`
applies theta <- theta - lr * grad. The network, initialisation, data and minibatch order are the
same as in the NumPy and JAX scripts, so the three can be compared line by line. `pick_device` is
the device picker that every PyTorch script of the arc carries a copy of.

    h_0 = x,  z_l = h_{l-1} W_l^T + b_l,  h_l = ReLU(z_l) for l < L,  logits = z_L
    L = -(1/B) sum_i log softmax(logits_i)[y_i]        (F.cross_entropy)
    theta <- theta - lr * dL/dtheta                     (torch.optim.SGD)
nn.Linear stores W_l as (D_out, D_in) and computes x W^T; the NumPy and JAX scripts store the
transpose, (D_in, D_out), and compute x W.

Reading: S. J. D. Prince, "Understanding Deep Learning" (2023), chapters 3-5,
https://udlbook.github.io/udlbook/; PyTorch "Learn the Basics" (autograd, optimisation),
https://docs.pytorch.org/tutorials/beginner/basics/intro.html. He init: https://arxiv.org/abs/1502.01852.
Arc: Recap to neural networks -- the same network in PyTorch.

Run:  python 01-foundations/mlp_torch.py              (5-fold CV, then train on all 60k, test)
      python 01-foundations/mlp_torch.py --no-cv --device cuda
      python 01-foundations/mlp_torch.py --smoke      (seconds: 2k images, small net, 1 epoch)
Look first at `train_step`: zero_grad, forward, loss, backward, step -- the five lines of every
PyTorch training loop.
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
    FASHION_MNIST_CLASSES,
    DataError,
    fashion_mnist,
    kfold_splits,
    minibatches,
    nonneg_int,
    positive_float,
    positive_int,
    save_metrics,
)

# %% [markdown]
# ## The network


# %%
class MLP(nn.Module):
    """Linear layers of widths sizes = [784, *hidden, 10] with ReLU between them, He-initialised."""

    def __init__(self, sizes):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(d_in, d_out) for d_in, d_out in zip(sizes[:-1], sizes[1:]))
        for layer in self.layers:
            # W ~ N(0, 2 / D_in), b = 0, as in the NumPy and JAX scripts (nn.Linear's own default
            # is uniform with a smaller scale, chosen for backward compatibility, not for ReLU).
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, x):  # x (B, 784) -> logits (B, 10)
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


def train_step(model, opt, x, y):
    """One minibatch SGD step; returns the loss and the logits (both detached)."""
    opt.zero_grad(set_to_none=True)  # gradients accumulate in .grad unless cleared
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()  # autograd: dL/dtheta for every parameter, into .grad
    opt.step()  # theta <- theta - lr * theta.grad
    return loss.detach(), logits.detach()


def pick_device(name):
    """'auto' picks cuda, then mps, then cpu; asking for a device this machine lacks is an error."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(d for d, ok in available.items() if ok)
    if not available[name]:
        raise ValueError(f"--device {name}: not available on this machine")
    return torch.device(name)


# %% [markdown]
# ## Data


# %%
def load_data(data_dir=None, smoke=False):
    """Fashion-MNIST as float32 (N, 784) pixels standardised with the training split's mean and std."""
    Xtr, ytr = fashion_mnist("train", data_dir)
    Xte, yte = fashion_mnist("test", data_dir)
    if smoke:  # a small real subset: the first 2,000 training and 1,000 test images
        Xtr, ytr, Xte, yte = Xtr[:2000], ytr[:2000], Xte[:1000], yte[:1000]
    Xtr = Xtr.reshape(len(Xtr), -1).astype(np.float32) / 255
    Xte = Xte.reshape(len(Xte), -1).astype(np.float32) / 255
    mean, std = Xtr.mean(), Xtr.std()
    return (Xtr - mean) / std, ytr, (Xte - mean) / std, yte


# %% [markdown]
# ## Training: one epoch of minibatch SGD, evaluation, and the loop over epochs


# %%
def train_epoch(model, opt, X, y, batch_size, rng, desc="train"):
    """One pass over the device tensors (X, y) in shuffled minibatches. Returns mean loss and accuracy.

    Loss and correct counts are summed on the device and read once at the end, so the host never
    waits for a step to finish (on a GPU that keeps the steps queued back to back).
    """
    model.train()
    total_loss = torch.zeros((), device=X.device)
    correct = torch.zeros((), dtype=torch.long, device=X.device)
    n_batches = -(-len(X) // batch_size)
    for idx in tqdm(minibatches(len(X), batch_size, rng), total=n_batches, desc=desc, leave=False,
                    disable=not sys.stdout.isatty()):
        idx = torch.from_numpy(idx).to(X.device)
        x, t = X[idx], y[idx]
        loss, logits = train_step(model, opt, x, t)
        total_loss += loss * len(idx)
        correct += (logits.argmax(dim=1) == t).sum()
    return total_loss.item() / len(X), correct.item() / len(X)


@torch.no_grad()
def evaluate(model, X, y):
    """Mean loss, accuracy and predicted classes (NumPy) on the device tensors (X, y)."""
    model.eval()
    logits = model(X)
    pred = logits.argmax(dim=1)
    return F.cross_entropy(logits, y).item(), (pred == y).sum().item() / len(y), pred.cpu().numpy()


def fit(model, X, y, Xval, yval, epochs, batch_size, lr, rng, tag):
    """Train for `epochs` with SGD, validating after each one when validation data are given; return the history."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    hist = {"train_loss": [], "train_acc": [], "val_loss": [], "val_acc": [], "epoch_s": []}
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        train_loss, train_acc = train_epoch(model, opt, X, y, batch_size, rng, desc=f"{tag} epoch {epoch}")
        hist["epoch_s"].append(time.perf_counter() - t0)  # .item() above waits for the device
        hist["train_loss"].append(train_loss)
        hist["train_acc"].append(train_acc)
        line = f"[{tag}] epoch {epoch:2d}/{epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}"
        if Xval is not None:
            val_loss, val_acc, _ = evaluate(model, Xval, yval)
            hist["val_loss"].append(val_loss)
            hist["val_acc"].append(val_acc)
            line += f" | val loss {val_loss:.4f} acc {val_acc:.4f}"
        print(f"{line} | {hist['epoch_s'][-1]:.2f} s", flush=True)
    return hist


# %% [markdown]
# ## Figures


# %%
def plot_learning_curves(folds, final, path):
    """Loss and accuracy per epoch: train (dashed, x) and validation (solid, o) for each fold, and the final run.

    Every epoch is a marker, so a one-epoch run (--smoke) still shows its points, not empty lines.
    """
    fig = Figure(figsize=(11, 4), layout="constrained")
    for ax, key in zip(fig.subplots(1, 2), ["loss", "acc"]):
        for i, h in enumerate(folds):
            epochs = range(1, len(h["train_loss"]) + 1)
            ax.plot(epochs, h[f"train_{key}"], "--x", color=f"C{i}", alpha=0.7)
            ax.plot(epochs, h[f"val_{key}"], "-o", ms=4, color=f"C{i}", label=f"fold {i + 1} (val)")
        ax.plot(range(1, len(final["train_loss"]) + 1), final[f"train_{key}"], "k--s", ms=4, label="final run (train)")
        ax.set(xlabel="epoch", ylabel=key, xlim=(0.5, len(final["train_loss"]) + 0.5),
               title=f"{'loss' if key == 'loss' else 'accuracy'}: train dashed (x), validation solid (o)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.legend(fontsize=8)
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
# ## Main: K-fold cross-validation, then the final model on all training data, then the test set


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs per run (default 20; 1 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="minibatch size (default 128; 32 with --smoke)")
    p.add_argument("--lr", type=positive_float, default=0.1, help="SGD learning rate (default 0.1)")
    p.add_argument("--hidden", type=positive_int, nargs="+", default=None,
                   help="hidden layer widths (default 256 128; 64 with --smoke)")
    p.add_argument("--folds", type=positive_int, default=5, help="K of K-fold cross-validation, K >= 2 (default 5)")
    p.add_argument("--no-cv", action="store_true", help="skip cross-validation: only the final run and the test")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds weights and minibatch order (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where to train (default auto: cuda, then mps, then cpu)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/mlp_torch)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = p.parse_args(argv)
    defaults = dict(epochs=1, batch_size=32, hidden=[64]) if args.smoke else dict(epochs=20, batch_size=128,
                                                                                 hidden=[256, 128])
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.folds < 2:
        p.error(f"--folds must be at least 2, got {args.folds} (--no-cv skips cross-validation)")
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)

    try:
        Xtr, ytr, Xte, yte = load_data(args.data_dir, args.smoke)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    sizes = [Xtr.shape[1], *args.hidden, 10]
    torch.manual_seed(args.seed)  # the weights
    data_rng = np.random.default_rng(args.seed)  # minibatch order: the same stream in all three MLP scripts
    to = lambda a: torch.from_numpy(a).to(device)  # NumPy array -> tensor on the training device
    print(f"mlp_torch: {' -> '.join(map(str, sizes))}, {len(Xtr)} train / {len(Xte)} test images on {device}")

    fold_hists = []
    for k, (tr, va) in enumerate([] if args.no_cv else kfold_splits(len(Xtr), args.folds, args.seed)):
        model = MLP(sizes).to(device)
        fold_hists.append(fit(model, to(Xtr[tr]), to(ytr[tr]), to(Xtr[va]), to(ytr[va]), args.epochs,
                              args.batch_size, args.lr, data_rng, tag=f"fold {k + 1}/{args.folds}"))
    cv_acc = [h["val_acc"][-1] for h in fold_hists]
    if cv_acc:
        print(f"cross-validation accuracy: {np.mean(cv_acc):.4f} +- {np.std(cv_acc, ddof=1):.4f} "
              f"({', '.join(f'{a:.4f}' for a in cv_acc)})")

    model = MLP(sizes).to(device)
    final = fit(model, to(Xtr), to(ytr), None, None, args.epochs, args.batch_size, args.lr, data_rng, tag="final")
    test_loss, test_acc, pred = evaluate(model, to(Xte), to(yte))
    print(f"test accuracy {test_acc:.4f}, test loss {test_loss:.4f}")

    plot_learning_curves(fold_hists, final, out_dir / "learning_curves.png")
    plot_confusion(yte, pred, out_dir / "confusion_matrix.png", f"mlp_torch: test accuracy {test_acc:.4f}")
    metrics = {
        "script": "mlp_torch", "test_acc": test_acc, "test_loss": test_loss,
        "cv_fold_acc": cv_acc,
        "cv_acc_mean": float(np.mean(cv_acc)) if cv_acc else None,
        "cv_acc_std": float(np.std(cv_acc, ddof=1)) if cv_acc else None,
        "final_train_loss": final["train_loss"][-1], "final_train_acc": final["train_acc"][-1],
        "sec_per_epoch": float(np.median(final["epoch_s"])),  # median: robust to a first-epoch compile or a hiccup
        "config": {**vars(args), "sizes": sizes, "n_train": len(Xtr), "n_test": len(Xte), "device": str(device)},
        "history": {"folds": fold_hists, "final": final},
    }
    save_metrics(out_dir, metrics, __file__, argv)
    torch.save(model.state_dict(), out_dir / "model.pt")
    print(f"wrote {out_dir}/metrics.json, model.pt and figures")
    return metrics


if __name__ == "__main__":
    main()
