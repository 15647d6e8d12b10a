"""A first convolutional network in PyTorch: the LeNet-style Fashion-MNIST CNN with nn.Conv2d and autograd.

What cnn_numpy.py writes by hand, PyTorch provides: `nn.Conv2d` holds the kernels W (F, C, kh, kw)
and biases and computes the same cross-correlation, `F.max_pool2d` pools, autograd derives every
backward pass, and `torch.optim.Adam` updates the weights. Network, He initialisation, data and
minibatch order are the same as in the NumPy and JAX scripts, so the three can be read side by side.

    x (B, 1, 28, 28) -> conv 5x5 pad 2 -> ReLU -> maxpool 2     (B, c1, 14, 14)
                     -> conv 5x5       -> ReLU -> maxpool 2     (B, c2, 5, 5)
                     -> flatten -> (linear -> ReLU) per width   (B, h1) -> ... -> (B, h_last)
                     -> linear                                  (B, 10) logits
    L = -(1/B) sum_i log softmax(logits_i)[y_i]                 (F.cross_entropy)
    Adam, lr of epoch e of E: lr (1 + cos(pi (e - 1) / E)) / 2  (cosine decay, `cosine_lr`)
Note: nn.Linear stores W as (D_out, D_in) and computes x W^T; the NumPy and JAX scripts store the transpose.

Reading: S. J. D. Prince, "Understanding Deep Learning" (2023), chapter 10 "Convolutional networks",
https://udlbook.github.io/udlbook/; A. Ng, "Convolutional Neural Networks" (deeplearning.ai), week 1;
Y. LeCun et al. (1998), http://yann.lecun.com/exdb/publis/pdf/lecun-98.pdf (LeNet-5); PyTorch docs for
torch.nn.Conv2d, https://docs.pytorch.org/docs/stable/generated/torch.nn.Conv2d.html; He init:
https://arxiv.org/abs/1502.01852; Adam: https://arxiv.org/abs/1412.6980.
Arc: Foundations of CNNs -- one layer of a convolutional network and a CNN example (LeNet style), in PyTorch.

Run:  python 04-cnns/cnn_torch.py              (10 epochs on all 60k training images, then the test set)
      python 04-cnns/cnn_torch.py --smoke      (seconds: 2k images, narrow net, 1 epoch)
      python 04-cnns/cnn_torch.py --hidden 256 128 --device cuda
Look first at `CNN.forward`: the whole network in a few lines, each a layer cnn_numpy.py spells out.
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
    minibatches,
    nonneg_int,
    positive_float,
    positive_int,
    save_metrics,
)

# %% [markdown]
# ## The network


# %%
class CNN(nn.Module):
    """conv(1 -> c1, 5x5, pad 2) - ReLU - pool 2 - conv(c1 -> c2, 5x5) - ReLU - pool 2
    - (fc(h) - ReLU for each width h in hidden) - fc(10)."""

    def __init__(self, channels=(16, 32), hidden=(128,)):
        super().__init__()
        c1, c2 = channels
        widths = [c2 * 5 * 5, *hidden, 10]
        self.conv1 = nn.Conv2d(1, c1, kernel_size=5, padding=2)  # W (c1, 1, 5, 5)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=5)  # W (c2, c1, 5, 5)
        # W (hidden[0], c2*25), ..., W (10, hidden[-1])
        self.fc = nn.ModuleList(nn.Linear(d_in, d_out) for d_in, d_out in zip(widths[:-1], widths[1:]))
        for layer in (self.conv1, self.conv2, *self.fc):
            # W ~ N(0, 2 / fan_in), b = 0, as in the NumPy and JAX scripts (fan_in = C*kh*kw for a
            # convolution); PyTorch's own default is a smaller uniform, kept for backward compatibility.
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, x):  # x (B, 1, 28, 28) -> logits (B, 10)
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, c1, 14, 14)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # (B, c2, 5, 5)
        h = h.flatten(1)  # (B, c2*25); flatten keeps (c, i, j) in C order
        for fc in self.fc[:-1]:
            h = F.relu(fc(h))  # (B, h) for each hidden width h
        return self.fc[-1](h)


def train_step(model, opt, x, y):
    """One Adam step on a minibatch; returns the loss (detached)."""
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()  # autograd: dL/dtheta for every parameter, into .grad
    opt.step()
    return loss.detach()


# The device picker, as taught in 01-foundations/mlp_torch.py.
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
    """Fashion-MNIST as float32 (N, 1, 28, 28) images standardised with the training split's mean and std."""
    Xtr, ytr = fashion_mnist("train", data_dir)
    Xte, yte = fashion_mnist("test", data_dir)
    if smoke:  # a small real subset: the first 2,000 training and 1,000 test images
        Xtr, ytr, Xte, yte = Xtr[:2000], ytr[:2000], Xte[:1000], yte[:1000]
    Xtr = Xtr.reshape(len(Xtr), 1, 28, 28).astype(np.float32) / 255
    Xte = Xte.reshape(len(Xte), 1, 28, 28).astype(np.float32) / 255
    mean, std = Xtr.mean(), Xtr.std()
    return (Xtr - mean) / std, ytr, (Xte - mean) / std, yte


# %% [markdown]
# ## Training: one epoch of minibatch Adam, evaluation


# %%
# The cosine schedule, as taught in 04-cnns/cnn_numpy.py.
def cosine_lr(lr, epoch, epochs):
    """The learning rate of epoch 1..E: lr (1 + cos(pi (epoch - 1) / E)) / 2, from lr down towards 0.

    (Loshchilov and Hutter, "SGDR", 2017, https://arxiv.org/abs/1608.03983, without restarts.)
    """
    return float(lr * (1 + np.cos(np.pi * (epoch - 1) / epochs)) / 2)


def train_epoch(model, opt, X, y, batch_size, rng, desc="train"):
    """One pass over the device tensors (X, y) in shuffled minibatches; returns the mean training loss.

    The loss is summed on the device and read once at the end, so the host never waits for a step.
    """
    model.train()
    total = torch.zeros((), dtype=X.dtype, device=X.device)
    n_batches = -(-len(X) // batch_size)
    for idx in tqdm(minibatches(len(X), batch_size, rng), total=n_batches, desc=desc, leave=False,
                    disable=not sys.stdout.isatty()):
        idx = torch.from_numpy(idx).to(X.device)
        total += train_step(model, opt, X[idx], y[idx]) * len(idx)
    return total.item() / len(X)


@torch.no_grad()
def evaluate(model, X, y, chunk=2000):
    """Mean loss, accuracy and predicted classes (NumPy) on the device tensors (X, y)."""
    model.eval()
    logits = torch.cat([model(X[i : i + chunk]) for i in range(0, len(X), chunk)])
    pred = logits.argmax(dim=1)
    return F.cross_entropy(logits, y).item(), (pred == y).sum().item() / len(y), pred.cpu().numpy()


@torch.no_grad()
def feature_maps(model, x):
    """The post-ReLU maps of conv1 (c1, 28, 28) and conv2 (c2, 10, 10) for one image x (1, 1, 28, 28)."""
    h1 = F.relu(model.conv1(x))
    h2 = F.relu(model.conv2(F.max_pool2d(h1, 2)))
    return h1[0].cpu().numpy(), h2[0].cpu().numpy()


# %% [markdown]
# ## Figures


# %%
def plot_learning_curves(hist, path, title):
    """Training and test loss, and test accuracy, per epoch (test at epoch 0: the untrained network)."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    epochs = np.arange(len(hist["test_loss"]))
    ax1.plot(epochs[1:], hist["train_loss"], "o-", label="train (mean over the epoch)")
    ax1.plot(epochs, hist["test_loss"], "s-", label="test (after the epoch)")
    ax1.set(xlabel="epoch", ylabel="cross-entropy loss", yscale="log", title=f"{title}: loss")
    ax2.plot(epochs[1:], hist["test_acc"][1:], "s-", color="C1")
    ax2.set(xlabel="epoch", ylabel="test accuracy", title=f"{title}: test accuracy (final {hist['test_acc'][-1]:.4f})")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax1.legend()
    fig.savefig(path, dpi=120)


def plot_filters(W1, path, title):
    """The first layer's kernels W1 (c1, 1, 5, 5) as images: red positive, blue negative, white 0."""
    n = len(W1)
    cols = int(np.ceil(np.sqrt(n)))
    rows = -(-n // cols)
    vmax = np.abs(W1).max()
    fig = Figure(figsize=(1.3 * cols + 1.2, 1.3 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for k, ax in enumerate(axes):
        ax.set_axis_off()
        if k < n:
            im = ax.imshow(W1[k, 0], cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            ax.set_title(f"filter {k}", fontsize=8)
    fig.colorbar(im, ax=axes.tolist(), shrink=0.8, label="weight")
    fig.suptitle(title)
    fig.savefig(path, dpi=120)


def plot_feature_maps(image, maps1, maps2, path, title):
    """One test image, the maps conv1 + ReLU makes of it, and those of conv2 + ReLU (one colour scale per layer)."""
    fig = Figure(figsize=(14, 6), layout="constrained")
    sub_img, sub1, sub2 = fig.subfigures(1, 3, width_ratios=[1, 2.2, 2.2])
    ax = sub_img.subplots()
    ax.imshow(image, cmap="gray")
    ax.set_title("input (standardised)")
    ax.set_axis_off()
    for sub, maps, name in [(sub1, maps1, "conv1 + ReLU"), (sub2, maps2, "conv2 + ReLU")]:
        cols = int(np.ceil(np.sqrt(len(maps))))
        axes = np.atleast_1d(sub.subplots(-(-len(maps) // cols), cols)).ravel()
        for k, ax in enumerate(axes):
            ax.set_axis_off()
            if k < len(maps):
                im = ax.imshow(maps[k], cmap="viridis", vmin=0, vmax=maps.max() + 1e-12)
        sub.colorbar(im, ax=axes.tolist(), shrink=0.6, label="activation")
        sub.suptitle(f"{name}: {maps.shape[0]} maps of {maps.shape[1]}x{maps.shape[2]}")
    fig.suptitle(title)
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
# ## Main: train on all 60k training images, test after every epoch, figures


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 10; 1 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="minibatch size (default 128; 32 with --smoke)")
    p.add_argument("--lr", type=positive_float, default=1e-3,
                   help="Adam learning rate of the first epoch, cosine-decayed over the epochs (default 1e-3)")
    p.add_argument("--channels", type=positive_int, nargs=2, default=None, metavar=("C1", "C2"),
                   help="feature maps of conv1 and conv2 (default 16 32; 8 16 with --smoke)")
    p.add_argument("--hidden", type=positive_int, nargs="+", default=None,
                   help="widths of the fully connected hidden layers, one per layer (default 128; 64 with --smoke)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds weights and minibatch order (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where to train (default auto: cuda, then mps, then cpu)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/cnn_torch)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = p.parse_args(argv)
    defaults = dict(epochs=1, batch_size=32, channels=[8, 16], hidden=[64]) if args.smoke else \
        dict(epochs=10, batch_size=128, channels=[16, 32], hidden=[128])
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
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
    torch.manual_seed(args.seed)  # the weights
    data_rng = np.random.default_rng(args.seed)  # minibatch order: the same stream in all three CNN scripts
    model = CNN(args.channels, args.hidden).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    Xtr_d, ytr_d, Xte_d, yte_d = (torch.from_numpy(a).to(device) for a in (Xtr, ytr, Xte, yte))
    n_params = sum(p.numel() for p in model.parameters())
    c1, c2 = args.channels
    fcs = "".join(f"-fc{h}" for h in args.hidden)
    print(f"cnn_torch: conv{c1}-pool-conv{c2}-pool{fcs}-fc10 ({n_params:,} parameters), "
          f"{len(Xtr)} train / {len(Xte)} test images on {device}")

    # The test set is evaluated after every epoch for the learning curves; nothing is chosen by it.
    test_loss, test_acc, _ = evaluate(model, Xte_d, yte_d)
    hist = {"train_loss": [], "test_loss": [test_loss], "test_acc": [test_acc], "epoch_s": []}
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = cosine_lr(args.lr, epoch, args.epochs)
        train_loss = train_epoch(model, opt, Xtr_d, ytr_d, args.batch_size, data_rng, f"epoch {epoch}")
        hist["epoch_s"].append(time.perf_counter() - t0)  # .item() above waits for the device
        test_loss, test_acc, pred = evaluate(model, Xte_d, yte_d)
        for key, value in [("train_loss", train_loss), ("test_loss", test_loss), ("test_acc", test_acc)]:
            hist[key].append(value)
        print(f"epoch {epoch:2d}/{args.epochs}  train loss {train_loss:.4f} | test loss {test_loss:.4f} "
              f"acc {test_acc:.4f} | {hist['epoch_s'][-1]:.2f} s", flush=True)

    plot_learning_curves(hist, out_dir / "learning_curves.png", "cnn_torch")
    plot_filters(model.conv1.weight.detach().cpu().numpy(), out_dir / "filters.png",
                 f"cnn_torch: conv1's {c1} learned 5x5 kernels")
    plot_feature_maps(Xte[0, 0], *feature_maps(model, Xte_d[:1]), out_dir / "feature_maps.png",
                      f"cnn_torch: feature maps of test image 0 ({FASHION_MNIST_CLASSES[yte[0]]})")
    plot_confusion(yte, pred, out_dir / "confusion_matrix.png", f"cnn_torch: test accuracy {test_acc:.4f}")
    metrics = {
        "script": "cnn_torch", "test_acc": test_acc, "test_loss": test_loss,
        "init_test_loss": hist["test_loss"][0], "first_train_loss": hist["train_loss"][0],
        "final_train_loss": hist["train_loss"][-1],
        "sec_per_epoch": float(np.median(hist["epoch_s"])),  # median: robust to a first-epoch warm-up
        "n_params": int(n_params),
        "config": {**vars(args), "n_train": len(Xtr), "n_test": len(Xte), "device": str(device)},
        "history": hist,
    }
    save_metrics(out_dir, metrics, __file__, argv)
    torch.save(model.state_dict(), out_dir / "model.pt")
    print(f"wrote {out_dir}/metrics.json, model.pt and figures")
    return metrics


if __name__ == "__main__":
    main()
