"""Batch normalization as a from-scratch torch nn.Module, in a small CNN on Fashion-MNIST, with and without it.

For a minibatch of activations, each feature (channel) c is standardised with the batch's own statistics
and then given back a learned scale and shift (Ioffe and Szegedy 2015, Algorithm 1):

    mu_c      = (1/m) sum_i x_ic                        batch mean over the m values of channel c
    sigma2_c  = (1/m) sum_i (x_ic - mu_c)^2             batch variance (biased: divides by m)
    xhat_ic   = (x_ic - mu_c) / sqrt(sigma2_c + eps)    zero mean, unit variance per channel
    y_ic      = gamma_c * xhat_ic + beta_c              learned scale (`weight`) and shift (`bias`)

For (N, C) inputs the m = N values are the batch's examples; for conv feature maps (N, C, H, W) a
channel's statistics pool the batch AND all positions, m = N * H * W, and gamma, beta have one entry
per channel: every position of a feature map is normalised the same way.

Train vs eval: in training the statistics come from the current batch and gradients flow through them
(autograd handles it here). Eval mode uses running estimates of the population statistics instead,
updated after each training batch, in place and outside autograd:

    running_mean <- (1 - momentum) * running_mean + momentum * mu
    running_var  <- (1 - momentum) * running_var  + momentum * sigma2 * m / (m - 1)   (unbiased)

so in eval mode the layer is a fixed per-channel affine map. (torch's "momentum" is the weight of the
NEW value, the opposite of the optimizer's convention.)

Why it helps: larger learning rates train, and the initialisation's scale matters far less; the paper
credited "internal covariate shift", which Santurkar et al. (2018) dispute: BatchNorm makes the loss
and its gradients smoother, so large steps are safe. Caveats: small batches give noisy statistics, and
training and eval behave differently; LayerNorm (layernorm_torch.py) avoids both.

Reading: S. Ioffe and C. Szegedy (2015), "Batch Normalization: Accelerating Deep Network Training by
Reducing Internal Covariate Shift", ICML, https://arxiv.org/abs/1502.03167; S. Santurkar et al. (2018),
"How Does Batch Normalization Help Optimization?", NeurIPS, https://arxiv.org/abs/1805.11604; d2l 8.5,
https://d2l.ai/chapter_convolutional-modern/batch-norm.html. As torch.nn.BatchNorm1d / BatchNorm2d.
Arc: Optimization -- batch normalization in PyTorch.

Run:  python 02-optimization/batchnorm_torch.py [--lr 0.02 --momentum 0.9 --batch-size 128 --epochs 3]
      python 02-optimization/batchnorm_torch.py --smoke
Look first at `BatchNorm.forward`, then at learning_curves.png: the same CNN, initial weights, minibatch
order and learning rate, with and without the BatchNorm layers.
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
class BatchNorm(nn.Module):
    """y = gamma * (x - mu) / sqrt(sigma2 + eps) + beta per channel, for (N, C), (N, C, L) or (N, C, H, W) inputs.

    Parameters `weight` (gamma, ones) and `bias` (beta, zeros); buffers `running_mean` (zeros),
    `running_var` (ones) and `num_batches_tracked` (training batches seen), as torch.nn.BatchNorm1d/2d.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"Invalid num_features: {num_features!r} (must be a positive int)")
        if not eps > 0:
            raise ValueError(f"Invalid eps: {eps} (must be > 0)")
        if not 0 <= momentum <= 1:
            raise ValueError(f"Invalid momentum: {momentum} (must be in [0, 1])")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))  # gamma
        self.bias = nn.Parameter(torch.zeros(num_features))  # beta
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x):
        if x.dim() not in (2, 3, 4):
            raise ValueError(f"BatchNorm expects (N, C), (N, C, L) or (N, C, H, W) input, got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm({self.num_features}) got {x.shape[1]} channels (input shape {tuple(x.shape)})")
        dims = [0, *range(2, x.dim())]  # every axis but the channel axis: N, or N and H, W
        shape = [1, -1] + [1] * (x.dim() - 2)  # (C,) -> (1, C) or (1, C, 1, 1), to broadcast over x
        if self.training:
            m = x.numel() // self.num_features  # values per channel
            if m < 2:
                raise ValueError(f"BatchNorm in training needs more than 1 value per channel, got {tuple(x.shape)}")
            mean = x.mean(dims)  # mu (C,)
            var = (x - mean.view(shape)).square().mean(dims)  # sigma2 (C,), biased
            with torch.no_grad():  # the running estimates are bookkeeping, not part of the graph
                self.running_mean.mul_(1 - self.momentum).add_(mean, alpha=self.momentum)
                self.running_var.mul_(1 - self.momentum).add_(var * (m / (m - 1)), alpha=self.momentum)  # unbiased
                self.num_batches_tracked.add_(1)
        else:
            mean, var = self.running_mean, self.running_var
        xhat = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return self.weight.view(shape) * xhat + self.bias.view(shape)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


# %% [markdown]
# ## The network and data


# %%
class CNN(nn.Module):
    """[conv3x3 - (BatchNorm) - ReLU - maxpool2] x 2, then linear to 10 classes.   (B, 1, 28, 28) -> (B, 10).

    Weights are He-initialised from `generator`, so the nets with and without BatchNorm start from the
    same weights. The convs keep their bias in both: before a BatchNorm it is cancelled by the mean
    subtraction, gets a zero gradient (up to rounding) and stays at its initial 0.
    """

    def __init__(self, channels=(16, 32), batchnorm=True, bn_momentum=0.1, generator=None):
        super().__init__()
        c1, c2 = channels
        norm = (lambda c: BatchNorm(c, momentum=bn_momentum)) if batchnorm else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), norm(c1), nn.ReLU(), nn.MaxPool2d(2),  # (B, c1, 14, 14)
            nn.Conv2d(c1, c2, 3, padding=1), norm(c2), nn.ReLU(), nn.MaxPool2d(2),  # (B, c2, 7, 7)
        )
        self.head = nn.Linear(c2 * 7 * 7, 10)
        for layer in [*self.features, self.head]:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu", generator=generator)
                nn.init.zeros_(layer.bias)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def load_data(data_dir=None, smoke=False):
    """Fashion-MNIST as float32 (N, 1, 28, 28) images standardised with the training split's mean and std."""
    Xtr, ytr = fashion_mnist("train", data_dir)
    Xte, yte = fashion_mnist("test", data_dir)
    if smoke:  # a small real subset
        Xtr, ytr, Xte, yte = Xtr[:2000], ytr[:2000], Xte[:1000], yte[:1000]
    Xtr = Xtr.reshape(len(Xtr), 1, 28, 28).astype(np.float32) / 255
    Xte = Xte.reshape(len(Xte), 1, 28, 28).astype(np.float32) / 255
    mean, std = Xtr.mean(), Xtr.std()
    return (Xtr - mean) / std, ytr, (Xte - mean) / std, yte


@torch.no_grad()
def evaluate(model, X, y, batch_size=1000):
    """Mean loss and accuracy on the device tensors (X, y), in eval mode (BatchNorm uses its running statistics)."""
    was_training = model.training
    model.eval()
    logits = torch.cat([model(X[i : i + batch_size]) for i in range(0, len(X), batch_size)])
    model.train(was_training)
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
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", ylim=(0, 1), title="test accuracy (eval mode)")
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
    p.add_argument("--epochs", type=positive_int, help="epochs (default 3; 1 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, help="minibatch size (default 128; 32 with --smoke)")
    p.add_argument("--lr", type=positive_float, default=0.02, help="learning rate of both nets (default 0.02)")
    p.add_argument("--momentum", type=probability, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--bn-momentum", type=probability, default=0.1, help="weight of the new value in the running stats")
    p.add_argument("--channels", type=positive_int, nargs=2, metavar=("C1", "C2"),
                   help="channels of the two convs (default 16 32; 8 16 with --smoke)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds weights and minibatch order (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/<script>)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = p.parse_args(argv)
    args.epochs = (1 if args.smoke else 3) if args.epochs is None else args.epochs
    args.channels = ([8, 16] if args.smoke else [16, 32]) if args.channels is None else args.channels
    args.batch_size = (32 if args.smoke else 128) if args.batch_size is None else args.batch_size
    if args.batch_size < 2:  # a batch of one image still has H x W values per channel, but keep BN's usual floor
        p.error("argument --batch-size: batch normalization needs at least 2 examples per batch")
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

    hists, models = {}, {}
    for label, batchnorm in [("BatchNorm", True), ("no norm", False)]:
        generator = torch.Generator().manual_seed(args.seed)  # the same initial conv and linear weights
        models[label] = CNN(args.channels, batchnorm, args.bn_momentum, generator).to(device)
        hists[label] = train(models[label], data, args, device, label)

    steps_per_epoch = -(-len(data[0]) // args.batch_size)
    plot_curves(hists, steps_per_epoch, out_dir / "learning_curves.png",
                f"{Path(__file__).stem}: CNN, SGD lr {args.lr} momentum {args.momentum}")
    bn, plain = hists["BatchNorm"], hists["no norm"]
    metrics = {"script": Path(__file__).stem, "test_acc": bn["test_acc"][-1], "test_acc_without": plain["test_acc"][-1],
               "test_loss": bn["test_loss"][-1], "test_loss_without": plain["test_loss"][-1],
               "first_loss": bn["step_losses"][0], "final_train_loss": bn["epoch_losses"][-1],
               "final_train_loss_without": plain["epoch_losses"][-1],
               "sec_per_epoch": float(np.median(bn["epoch_s"])),
               "sec_per_epoch_without": float(np.median(plain["epoch_s"])), "config": vars(args),
               "history": {label: {k: h[k] for k in ("epoch_losses", "test_acc", "test_loss")}
                           for label, h in hists.items()}}
    save_metrics(out_dir, metrics, __file__, argv)
    torch.save({label: m.state_dict() for label, m in models.items()}, out_dir / "checkpoint.pt")
    return metrics


if __name__ == "__main__":
    main()
