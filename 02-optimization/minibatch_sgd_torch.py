"""Minibatch stochastic gradient descent as a from-scratch torch.optim.Optimizer, training an MLP on Fashion-MNIST.

Each step estimates the gradient from a random minibatch and moves against it:

    g_t = grad of the minibatch loss at theta_{t-1}  (+ weight_decay * theta_{t-1})
    theta_t = theta_{t-1} - lr * g_t

Why minibatches: the full-batch gradient costs a pass over all data per step; one example per step
is cheap but noisy and leaves the hardware idle. A minibatch's gradient is unbiased with variance
falling as 1/|B|, and its matrix products keep vector units busy (d2l 12.5). What it cannot fix,
and the next scripts do: one learning rate for every direction of a badly conditioned valley.

How a PyTorch optimizer works: `torch.optim.Optimizer` keeps `param_groups` (lists of tensors with
their hyperparameters) and a per-parameter `state` dict; `step()` reads each `p.grad` (filled by
`loss.backward()`) and updates `p` in place under `torch.no_grad()`. `state_dict()` and
`load_state_dict()` come from the base class and save both, so training resumes exactly.

Reading: d2l 12.5, https://d2l.ai/chapter_optimization/minibatch-sgd.html; PyTorch docs "torch.optim".
Arc: Optimization -- minibatch gradient descent in PyTorch on Fashion-MNIST.

Run:  python 02-optimization/minibatch_sgd_torch.py [--lr 0.1 --batch-size 128 --epochs 10 --device auto]
      python 02-optimization/minibatch_sgd_torch.py --smoke
Look first at `MinibatchSGD.step`.
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
from torch import nn
from tqdm import tqdm

from data import DataError, fashion_mnist, minibatches, save_metrics

# %% [markdown]
# ## The optimizer


# %%
class MinibatchSGD(torch.optim.Optimizer):
    """theta <- theta - lr * (g + weight_decay * theta), written from scratch (no torch.optim update function)."""

    def __init__(self, params, lr=1e-3, weight_decay=0.0):
        if lr < 0:
            raise ValueError(f"Invalid learning rate: {lr} (must be >= 0)")
        if weight_decay < 0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay} (must be >= 0)")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:  # some methods re-evaluate the loss; the API allows it
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])  # L2 penalty folded into the gradient
                p.add_(g, alpha=-group["lr"])
        return loss


# %% [markdown]
# ## The network and data (as 01-foundations/mlp_torch.py)


# %%
class MLP(nn.Module):
    """Linear layers of widths sizes = [784, *hidden, 10] with ReLU between them, He-initialised."""

    def __init__(self, sizes):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(d_in, d_out) for d_in, d_out in zip(sizes[:-1], sizes[1:]))
        for layer in self.layers:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, x):  # (B, 784) -> (B, 10)
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


def load_data(data_dir=None, smoke=False):
    """Fashion-MNIST as float32 (N, 784) pixels standardised with the training split's mean and std."""
    Xtr, ytr = fashion_mnist("train", data_dir)
    Xte, yte = fashion_mnist("test", data_dir)
    if smoke:  # a small real subset
        Xtr, ytr, Xte, yte = Xtr[:2000], ytr[:2000], Xte[:1000], yte[:1000]
    Xtr = Xtr.reshape(len(Xtr), -1).astype(np.float32) / 255
    Xte = Xte.reshape(len(Xte), -1).astype(np.float32) / 255
    mean, std = Xtr.mean(), Xtr.std()
    return (Xtr - mean) / std, ytr, (Xte - mean) / std, yte


@torch.no_grad()
def evaluate(model, X, y):
    """Mean loss and accuracy on the device tensors (X, y)."""
    logits = model(X)
    return F.cross_entropy(logits, y).item(), (logits.argmax(dim=1) == y).sum().item() / len(y)


def plot_loss(step_losses, epoch_losses, steps_per_epoch, path, title):
    """Training loss per step (light) with its moving average, and per epoch (dots)."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    steps = np.arange(1, len(step_losses) + 1)
    k = max(1, steps_per_epoch // 10)
    ax.plot(steps, step_losses, color="C0", alpha=0.25, lw=0.6, label="minibatch loss")
    ax.plot(steps[k - 1 :], np.convolve(step_losses, np.ones(k) / k, "valid"), color="C0", label=f"mean of {k} steps")
    ax.plot(steps_per_epoch * np.arange(1, len(epoch_losses) + 1), epoch_losses, "ko", label="epoch mean")
    ax.set(xlabel="step", ylabel="training loss", yscale="log", title=title)
    ax.legend()
    fig.savefig(path, dpi=120)


# %% [markdown]
# ## Training


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 10; 1 with --smoke)")
    p.add_argument("--batch-size", type=int, default=None, help="minibatch size (default 128; 32 with --smoke)")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate (default 0.1)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay (default 0)")
    p.add_argument("--hidden", type=int, nargs="+", default=None,
                   help="hidden widths (default 256 128; 64 with --smoke)")
    p.add_argument("--seed", type=int, default=0, help="seeds weights and minibatch order (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/<script>)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = p.parse_args(argv)
    args.epochs = args.epochs if args.epochs is not None else (1 if args.smoke else 10)
    args.hidden = args.hidden or ([64] if args.smoke else [256, 128])
    args.batch_size = args.batch_size or (32 if args.smoke else 128)
    if min(args.epochs, args.batch_size, *args.hidden) < 1:
        p.error("--epochs, --batch-size and --hidden must be positive")
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    device = next(d for d, ok in available.items() if ok) if args.device == "auto" else args.device
    if not available[device]:
        p.error(f"--device {device}: not available on this machine")
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        Xtr, ytr, Xte, yte = (torch.from_numpy(a).to(device) for a in load_data(args.data_dir, args.smoke))
    except DataError as exc:
        sys.exit(f"error: {exc}")

    torch.manual_seed(args.seed)
    model = MLP([Xtr.shape[1], *args.hidden, 10]).to(device)
    try:
        opt = MinibatchSGD(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    except ValueError as exc:
        p.error(str(exc))
    data_rng = np.random.default_rng(args.seed)
    step_losses, epoch_losses, epoch_s = [], [], []
    steps_per_epoch = -(-len(Xtr) // args.batch_size)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        losses = []
        for idx in tqdm(minibatches(len(Xtr), args.batch_size, data_rng), total=steps_per_epoch,
                        desc=f"epoch {epoch}", leave=False, disable=not sys.stdout.isatty()):
            idx = torch.from_numpy(idx).to(device)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(Xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        step_losses += torch.stack(losses).tolist()  # one read from the device per epoch
        epoch_s.append(time.perf_counter() - t0)
        epoch_losses.append(float(np.mean(step_losses[-steps_per_epoch:])))
        test_loss, test_acc = evaluate(model, Xte, yte)
        print(f"epoch {epoch:2d}/{args.epochs}  train loss {epoch_losses[-1]:.4f} | test loss {test_loss:.4f} "
              f"acc {test_acc:.4f} | {epoch_s[-1]:.2f} s", flush=True)

    plot_loss(step_losses, epoch_losses, steps_per_epoch, out_dir / "loss.png", f"{Path(__file__).stem}, lr {args.lr}")
    metrics = {"script": Path(__file__).stem, "test_acc": test_acc, "test_loss": test_loss,
               "first_loss": step_losses[0], "final_train_loss": epoch_losses[-1],
               "sec_per_epoch": float(np.median(epoch_s)), "config": vars(args), "epoch_losses": epoch_losses}
    save_metrics(out_dir, metrics, __file__, argv)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, out_dir / "checkpoint.pt")
    return metrics


if __name__ == "__main__":
    main()
