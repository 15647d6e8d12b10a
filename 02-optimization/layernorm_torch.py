"""Layer normalization as a from-scratch torch nn.Module, in an MLP on Fashion-MNIST, with and without it.

Each example is standardised over its own features (the trailing dims given by `normalized_shape`),
then given a learned elementwise scale and shift (Ba, Kiros and Hinton 2016). For one example's
H = prod(normalized_shape) values x_1..x_H:

    mu       = (1/H) sum_j x_j                        mean over the example's features
    sigma2   = (1/H) sum_j (x_j - mu)^2               variance (biased: divides by H)
    xhat_j   = (x_j - mu) / sqrt(sigma2 + eps)
    y_j      = gamma_j * xhat_j + beta_j              `weight` and `bias`, of shape normalized_shape

Against BatchNorm (batchnorm_torch.py), which normalises each FEATURE over the batch, LayerNorm
normalises each EXAMPLE over its features:
  - no dependence on the rest of the batch: the same computation for batch size 1 or 1000, in training
    and at test time, so there are no running statistics, no buffers, and no train/eval difference;
  - it works where batch statistics are poor or awkward: small or variable batches, sequences of
    varying length, and autoregressive decoding one token at a time;
  - gamma and beta are per feature (as BatchNorm's are per channel), but mu and sigma2 are per example.
Why transformers use it: each token's vector is normalised on its own, so statistics never mix
tokens of different sequences or positions (nor padding), batches can be tiny per device, and inference
equals training; it keeps the residual stream's scale in check through depth (pre-LN blocks normalise
each sublayer's input). Its price: all features of an example share one mean and scale, which suits
fully-connected and attention layers better than conv feature maps, where BatchNorm usually wins.

Reading: J. L. Ba, J. R. Kiros and G. E. Hinton (2016), "Layer Normalization",
https://arxiv.org/abs/1607.06450 (section 3); d2l 8.5.2, https://d2l.ai/chapter_convolutional-modern/batch-norm.html;
R. Xiong et al. (2020), "On Layer Normalization in the Transformer Architecture", https://arxiv.org/abs/2002.04745.
As torch.nn.LayerNorm with elementwise_affine=True (tests/test_norm_torch.py checks outputs and gradients).
Arc: Optimization -- layer normalization in PyTorch.

Run:  python 02-optimization/layernorm_torch.py [--lr 0.02 --momentum 0.9 --batch-size 128 --epochs 10]
      python 02-optimization/layernorm_torch.py --smoke
Look first at `LayerNorm.forward` (two lines of statistics over the last dims), then at the figure:
the same MLP, initial weights, minibatch order and learning rate with and without the LayerNorm layers.
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
from data.cli import nonneg_int, positive_float, positive_int, probability

# %% [markdown]
# ## The layer


# %%
class LayerNorm(nn.Module):
    """y = gamma * (x - mu) / sqrt(sigma2 + eps) + beta, with mu, sigma2 over the trailing dims `normalized_shape`.

    `normalized_shape` is an int (the last dim) or a tuple of the last dims; `weight` (gamma, ones) and
    `bias` (beta, zeros) have that shape. No buffers: train and eval modes compute the same thing.
    """

    def __init__(self, normalized_shape, eps=1e-5):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
        shape = tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else ()
        if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
            raise ValueError(f"Invalid normalized_shape: {normalized_shape!r} (a positive int or a tuple of them)")
        if not eps > 0:
            raise ValueError(f"Invalid eps: {eps} (must be > 0)")
        self.normalized_shape, self.eps = shape, eps
        self.weight = nn.Parameter(torch.ones(shape))  # gamma
        self.bias = nn.Parameter(torch.zeros(shape))  # beta

    def forward(self, x):
        k = len(self.normalized_shape)
        if x.dim() < k or tuple(x.shape[-k:]) != self.normalized_shape:
            raise ValueError(f"LayerNorm{self.normalized_shape}: input must end in those dims, got {tuple(x.shape)}")
        dims = tuple(range(-k, 0))  # the trailing dims: one (mu, sigma2) per example (per token)
        mean = x.mean(dims, keepdim=True)  # (..., 1, ..., 1)
        var = (x - mean).square().mean(dims, keepdim=True)  # biased, as in the normalisation of BatchNorm
        return self.weight * ((x - mean) * torch.rsqrt(var + self.eps)) + self.bias

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


# %% [markdown]
# ## The network and data


# %%
class MLP(nn.Module):
    """[Linear - (LayerNorm) - ReLU] per hidden layer, then a linear output.   (B, 784) -> (B, 10).

    Weights are He-initialised from `generator`, so the nets with and without LayerNorm start from the
    same weights. The linear biases stay: LayerNorm removes the mean over features, not each feature's bias.
    """

    def __init__(self, sizes, layernorm=True, generator=None):
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(d_in, d_out) for d_in, d_out in zip(sizes[:-1], sizes[1:]))
        self.norms = nn.ModuleList(LayerNorm(d) if layernorm else nn.Identity() for d in sizes[1:-1])
        for layer in self.linears:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu", generator=generator)
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        for linear, norm in zip(self.linears, self.norms):
            x = F.relu(norm(linear(x)))  # (B, D_l)
        return self.linears[-1](x)


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


# %% [markdown]
# ## Training (the same loop for both nets)


# %%
def train(model, data, args, device, label):
    """SGD with momentum for args.epochs; the per-step training losses and per-epoch test metrics."""
    Xtr, ytr, Xte, yte = data
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    data_rng = np.random.default_rng(args.seed)  # the same minibatch order for both nets
    steps_per_epoch = -(-len(Xtr) // args.batch_size)
    hist = {"step_losses": [], "epoch_losses": [], "test_acc": [], "test_loss": [], "epoch_s": []}
    test_loss, test_acc = evaluate(model, Xte, yte)  # epoch 0: the untrained net, about chance
    hist["test_loss"].append(test_loss), hist["test_acc"].append(test_acc)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        losses = []
        for idx in tqdm(minibatches(len(Xtr), args.batch_size, data_rng), total=steps_per_epoch,
                        desc=f"{label} epoch {epoch}", leave=False, disable=not sys.stdout.isatty()):
            idx = torch.from_numpy(idx).to(device)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(Xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        hist["step_losses"] += torch.stack(losses).tolist()  # one read from the device per epoch
        hist["epoch_s"].append(time.perf_counter() - t0)
        hist["epoch_losses"].append(float(np.mean(hist["step_losses"][-steps_per_epoch:])))
        test_loss, test_acc = evaluate(model, Xte, yte)
        hist["test_loss"].append(test_loss), hist["test_acc"].append(test_acc)
        print(f"{label:>10}  epoch {epoch:2d}/{args.epochs}  train loss {hist['epoch_losses'][-1]:.4f} | "
              f"test loss {test_loss:.4f} acc {test_acc:.4f} | {hist['epoch_s'][-1]:.2f} s", flush=True)
    return hist


def plot_curves(hists, steps_per_epoch, path, title):
    """Training loss per step (moving average) and test accuracy per epoch, one colour per net."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    k = max(1, steps_per_epoch // 10)
    for i, (label, h) in enumerate(hists.items()):
        losses = np.asarray(h["step_losses"])
        epochs = np.arange(1, len(h["epoch_losses"]) + 1)
        ax_loss.plot(np.arange(k, len(losses) + 1) / steps_per_epoch, np.convolve(losses, np.ones(k) / k, "valid"),
                     color=f"C{i}", lw=0.8, alpha=0.7, label=f"{label}: mean of {k} steps")
        ax_loss.plot(epochs, h["epoch_losses"], "o", color=f"C{i}", label=f"{label}: epoch mean")
        ax_acc.plot(np.arange(len(h["test_acc"])), h["test_acc"], "o-", color=f"C{i}", label=label)
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", ylim=(0, 1), title="test accuracy")
    ax_acc.xaxis.get_major_locator().set_params(integer=True)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=120)


# %% [markdown]
# ## Main


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=positive_int, help="epochs (default 10; 1 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, help="minibatch size (default 128; 32 with --smoke)")
    p.add_argument("--lr", type=positive_float, default=0.02, help="learning rate of both nets (default 0.02)")
    p.add_argument("--momentum", type=probability, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--hidden", type=positive_int, nargs="+",
                   help="hidden widths (default 256 128; 64 with --smoke)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds weights and minibatch order (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/<script>)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = p.parse_args(argv)
    args.epochs = (1 if args.smoke else 10) if args.epochs is None else args.epochs
    args.hidden = ([64] if args.smoke else [256, 128]) if args.hidden is None else args.hidden
    args.batch_size = (32 if args.smoke else 128) if args.batch_size is None else args.batch_size
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    device = next(d for d, ok in available.items() if ok) if args.device == "auto" else args.device
    if not available[device]:
        p.error(f"--device {device}: not available on this machine")
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        data = tuple(torch.from_numpy(a).to(device) for a in load_data(args.data_dir, args.smoke))
    except DataError as exc:
        sys.exit(f"error: {exc}")

    sizes = [data[0].shape[1], *args.hidden, 10]
    hists, models = {}, {}
    for label, layernorm in [("LayerNorm", True), ("no norm", False)]:
        generator = torch.Generator().manual_seed(args.seed)  # the same initial linear weights
        models[label] = MLP(sizes, layernorm, generator).to(device)
        hists[label] = train(models[label], data, args, device, label)

    steps_per_epoch = -(-len(data[0]) // args.batch_size)
    plot_curves(hists, steps_per_epoch, out_dir / "learning_curves.png",
                f"{Path(__file__).stem}: MLP {'-'.join(map(str, sizes))}, SGD lr {args.lr} momentum {args.momentum}")
    ln, plain = hists["LayerNorm"], hists["no norm"]
    metrics = {"script": Path(__file__).stem, "test_acc": ln["test_acc"][-1], "test_acc_without": plain["test_acc"][-1],
               "test_loss": ln["test_loss"][-1], "test_loss_without": plain["test_loss"][-1],
               "first_loss": ln["step_losses"][0], "final_train_loss": ln["epoch_losses"][-1],
               "final_train_loss_without": plain["epoch_losses"][-1],
               "sec_per_epoch": float(np.median(ln["epoch_s"])),
               "sec_per_epoch_without": float(np.median(plain["epoch_s"])), "config": vars(args),
               "history": {label: {k: h[k] for k in ("epoch_losses", "test_acc", "test_loss")}
                           for label, h in hists.items()}}
    save_metrics(out_dir, metrics, __file__, argv)
    torch.save({label: m.state_dict() for label, m in models.items()}, out_dir / "checkpoint.pt")
    return metrics


if __name__ == "__main__":
    main()
