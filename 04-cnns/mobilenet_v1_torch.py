"""MobileNet v1 (Howard et al. 2017): depthwise separable convolutions, width and resolution multipliers, in PyTorch.

What the paper adds. A standard convolution does two jobs at once: it filters space (a D_K x D_K window)
and mixes channels (every output channel reads every input channel). MobileNet splits them:
  - a depthwise convolution: one D_K x D_K filter per input channel, channel m of the output reads only
    channel m of the input (`nn.Conv2d(M, M, 3, groups=M)`, weight (M, 1, 3, 3));
  - a pointwise convolution: a 1x1 convolution, M -> N channels, that mixes channels and nothing else.
Each is followed by BatchNorm and ReLU. Cost (mult-adds) on a D_F x D_F output map, M inputs, N outputs:

    standard:             D_K^2 M N D_F^2
    depthwise separable:  D_K^2 M D_F^2  +  M N D_F^2              (depthwise + pointwise)
    ratio:                (D_K^2 M D_F^2 + M N D_F^2) / (D_K^2 M N D_F^2)  =  1/N + 1/D_K^2

For 3x3 kernels 1/D_K^2 = 1/9 dominates: 8 to 9 times fewer operations. The 14x14, 512 -> 512 layers:
standard 3*3*512*512*14*14 = 462,422,016; separable 903,168 + 51,380,224 = 52,283,392, 8.8 times fewer
(parameters likewise: 2,359,296 against 4,608 + 262,144). Almost all of the cost is now in the 1x1
convolutions (95% of the mult-adds, Table 2), plain matrix products.

Two hyperparameters trade accuracy for cost:
  - width multiplier alpha: alpha M inputs and alpha N outputs per layer, about alpha^2 of the cost and
    parameters; alpha in {1, 0.75, 0.5, 0.25}: 4.2M, 2.6M, 1.3M, 0.5M parameters (Table 6).
  - resolution multiplier rho: the input is 224 rho pixels, the cost falls by rho^2 (Table 7), parameters
    stay. Here rho is simply the size of the image you feed: a global average pool ends the network.

The network (Table 1): a standard 3x3 stride-2 conv of 32, then 13 depthwise separable layers (64, 128,
128, 256, 256, 512, 5 x 512, 1024, 1024; stride 2 where the map halves: 112 -> 56 -> 28 -> 14 -> 7),
global average pool, a 1024 -> 1000 linear layer. 4,231,976 parameters at alpha = 1 (convs without bias,
BN follows them). Channels at alpha < 1 are int(alpha c). Init: Kaiming normal (fan_out) convs, BN 1 and 0.
Small input (28x28): the first conv has stride 1, so the map goes 28 -> 14 -> 7 -> 4 -> 2.

Reading: A. G. Howard, M. Zhu, B. Chen, D. Kalenichenko, W. Wang, T. Weyand, M. Andreetto and H. Adam
(2017), "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications",
https://arxiv.org/abs/1704.04861 (section 3.1: the cost; Table 1: the network; Tables 6-7: alpha, rho).
Arc: Deep convolutional models: case studies -- MobileNet (v1).

Run:  python 04-cnns/mobilenet_v1_torch.py          (width 0.5, 10k images, 3 epochs: minutes)
      python 04-cnns/mobilenet_v1_torch.py --smoke  (seconds: width 0.25, 2,000 images, 1 epoch)
      python 04-cnns/mobilenet_v1_torch.py --width 1 --n-train 60000 --epochs 30 --device cuda
Look first at `DepthwiseSeparable.forward` (the depthwise conv is the `groups=c_in` argument), then at
the cost ratio above, which the code's two convs make concrete.
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
# ## The depthwise separable layer: 3x3 depthwise conv (space), 1x1 pointwise conv (channels)


# %%
class DepthwiseSeparable(nn.Module):
    """y = ReLU(BN(pw(ReLU(BN(dw(x)))))), dw: 3x3 conv with groups = c_in, pw: 1x1 conv c_in -> c_out.

    (B, c_in, H, W) -> (B, c_out, H/stride, W/stride). Parameters 9 c_in + c_in c_out (+ 2 per BN channel).
    """

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.dw = nn.Conv2d(c_in, c_in, 3, stride, padding=1, groups=c_in, bias=False)  # W (c_in, 1, 3, 3)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.pw = nn.Conv2d(c_in, c_out, 1, bias=False)  # W (c_out, c_in, 1, 1): a matrix product per pixel
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x):  # (B, c_in, H, W)
        h = F.relu(self.bn1(self.dw(x)))  # (B, c_in, H/s, W/s): channel m filtered by its own 3x3 kernel
        return F.relu(self.bn2(self.pw(h)))  # (B, c_out, H/s, W/s): channels mixed, nothing spatial


# %% [markdown]
# ## The network: Table 1 of the paper


# %%
# (output channels, stride) of the 13 depthwise separable layers, after the 3x3 stride-2 conv of 32
LAYERS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1)]


class MobileNetV1(nn.Module):
    """conv 3x3/2 (32 alpha) -> 13 depthwise separable layers -> global average pool -> fc.

    ImageNet: (B, in_channels, 224 rho, 224 rho) -> (B, 32 alpha, 112 rho, 112 rho) -> ... -> (B, 1024 alpha,
    7 rho, 7 rho) -> (B, num_classes). small_input: the first conv has stride 1 (28 -> 28 -> ... -> 2).
    """

    def __init__(self, num_classes=1000, in_channels=3, small_input=False, width_mult=1.0):
        super().__init__()
        scale = lambda c: max(1, int(c * width_mult))  # noqa: E731  (alpha: every layer's channel count)
        c = scale(32)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, 1 if small_input else 2, padding=1, bias=False),
                                  nn.BatchNorm2d(c), nn.ReLU())  # (B, 32 alpha, 112, 112); 28x28 when small
        layers = []
        for c_out, stride in LAYERS:
            layers.append(DepthwiseSeparable(c, scale(c_out), stride))
            c = scale(c_out)
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight), nn.init.zeros_(m.bias)

    def forward(self, x):  # (B, in_channels, H, W)
        h = self.layers(self.stem(x))  # (B, 1024 alpha, H/32, W/32)
        return self.fc(h.mean(dim=(2, 3)))  # global average pool -> (B, num_classes)


def mobilenet_v1(num_classes=1000, in_channels=3, small_input=False, **config):
    """MobileNet v1 (Table 1), width multiplier `width_mult` = alpha (default 1: 4,231,976 parameters)."""
    return MobileNetV1(num_classes=num_classes, in_channels=in_channels, small_input=small_input, **config)


MODELS = {"mobilenet_v1": mobilenet_v1}
RESOLUTION = {"mobilenet_v1": 224}  # the canonical input size; 224 rho for the resolution multiplier rho

# %% [markdown]
# ## Data: Fashion-MNIST, augmentation written out (random crop with padding, horizontal flip)


# %%
def load_data(data_dir=None, n_train=None, n_test=None):
    """The first n_train / n_test images as float32 (N, 1, 28, 28) in [0, 1], labels int64, and the
    training set's pixel mean and std (normalisation happens per batch, after augmentation)."""
    Xtr, ytr = fashion_mnist("train", data_dir)
    Xte, yte = fashion_mnist("test", data_dir)
    Xtr, ytr, Xte, yte = Xtr[:n_train], ytr[:n_train], Xte[:n_test], yte[:n_test]
    Xtr, Xte = (X.reshape(len(X), 1, 28, 28).astype(np.float32) / 255 for X in (Xtr, Xte))
    mean, std = float(Xtr.mean()), float(Xtr.std())
    return (*(torch.from_numpy(a) for a in (Xtr, ytr.astype(np.int64), Xte, yte.astype(np.int64))), mean, std)


def augment(x, gen, pad=2):
    """Random crop after zero (black) padding, then a horizontal flip with probability 1/2, per image.

    x (B, C, H, W) -> (B, C, H, W). Offsets and flips come from the CPU generator `gen` (reproducible).
    """
    B, C, H, W = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2 pad, W + 2 pad)
    dy, dx = torch.randint(0, 2 * pad + 1, (2, B), generator=gen).to(x.device)  # top-left corner of each crop
    rows = (dy[:, None] + torch.arange(H, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(W, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    b = torch.arange(B, device=x.device)[:, None, None, None]
    c = torch.arange(C, device=x.device)[None, :, None, None]
    out = xp[b, c, rows, cols]  # (B, C, H, W): image b's window at (dy_b, dx_b)
    flip = (torch.rand(B, generator=gen) < 0.5).to(x.device)[:, None, None, None]
    return torch.where(flip, out.flip(3), out)


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
# ## Training: SGD with Nesterov momentum, cosine schedule, one flat loop


# %%
def train_epoch(model, opt, sched, X, y, mean, std, batch_size, rng, gen, desc="train"):
    """One pass over (X, y) in shuffled, augmented minibatches; the lr follows `sched` step by step.
    Returns the per-step training losses."""
    model.train()
    losses = []
    for idx in tqdm(minibatches(len(X), batch_size, rng), total=-(-len(X) // batch_size), desc=desc,
                    leave=False, disable=not sys.stdout.isatty()):
        idx = torch.from_numpy(idx).to(X.device)
        x = (augment(X[idx], gen) - mean) / std  # (B, 1, 28, 28), standardised after padding with black
        loss = F.cross_entropy(model(x), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def evaluate(model, X, y, mean, std, chunk=250):
    """Mean loss and accuracy on (X, y) in eval mode (BatchNorm: running statistics; dropout off)."""
    model.eval()
    logits = torch.cat([model((X[i : i + chunk] - mean) / std) for i in range(0, len(X), chunk)])
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def plot_learning_curves(hist, path, title):
    """Left: training loss per step and per epoch, test loss per epoch. Right: test accuracy per epoch."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    steps = np.arange(1, len(hist["step_loss"]) + 1) / hist["steps_per_epoch"]  # in epochs
    epochs = np.arange(1, len(hist["test_acc"]) + 1)
    ax1.plot(steps, hist["step_loss"], color="C0", alpha=0.5, lw=0.8, label="train, per step")
    ax1.plot(epochs, hist["train_loss"], "o-", color="C0", label="train, epoch mean")
    ax1.plot(epochs, hist["test_loss"], "s-", color="C1", label="test, after the epoch")
    ax1.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title=f"{title}: loss")
    ax2.plot(epochs, hist["test_acc"], "s-", color="C1")
    ax2.axhline(0.1, color="gray", ls=":", label="chance")
    ax2.set(xlabel="epoch", ylabel="test accuracy", ylim=(0, 1), xlim=(0.5, len(epochs) + 0.5), xticks=epochs,
            title=f"test accuracy after each epoch (final {hist['test_acc'][-1]:.4f})")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax1.legend(), ax2.legend(loc="lower right")
    fig.savefig(path, dpi=120)


# %% [markdown]
# ## Main


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="mobilenet_v1", choices=sorted(MODELS), help="model (default mobilenet_v1)")
    p.add_argument("--width", type=positive_float, default=None,
                   help="width multiplier alpha (default 0.5; 0.25 with --smoke)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 3; 1 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="minibatch size (default 128; 32 with --smoke)")
    p.add_argument("--lr", type=positive_float, default=0.1,
                   help="peak SGD learning rate, cosine-decayed (default 0.1)")
    p.add_argument("--weight-decay", type=nonneg_float, default=5e-4, help="L2 weight decay (default 5e-4)")
    p.add_argument("--n-train", type=positive_int, default=None,
                   help="training images (default 10000; 2000 with --smoke)")
    p.add_argument("--n-test", type=positive_int, default=None, help="test images (default 10000; 1000 with --smoke)")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seeds weights, minibatch order and augmentation (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where to train (default auto: cuda, then mps, then cpu)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/mobilenet_v1_torch)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = p.parse_args(argv)
    defaults = dict(width=0.25, epochs=1, batch_size=32, n_train=2000, n_test=1000) if args.smoke else \
        dict(width=0.5, epochs=3, batch_size=128, n_train=10000, n_test=10000)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)

    try:
        Xtr, ytr, Xte, yte, mean, std = load_data(args.data_dir, args.n_train, args.n_test)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    torch.manual_seed(args.seed)  # the weights
    rng, gen = np.random.default_rng(args.seed), torch.Generator().manual_seed(args.seed)  # order, augmentation
    model = MODELS[args.arch](num_classes=10, in_channels=1, small_input=True, width_mult=args.width).to(device)
    Xtr, ytr, Xte, yte = (t.to(device) for t in (Xtr, ytr, Xte, yte))
    n_params = sum(q.numel() for q in model.parameters())
    steps_per_epoch = -(-len(Xtr) // args.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * steps_per_epoch)  # per step
    print(f"mobilenet_v1_torch: {args.arch} width {args.width:g} ({n_params:,} parameters), {len(Xtr)} train / "
          f"{len(Xte)} test images on {device}")

    hist = {"step_loss": [], "train_loss": [], "test_loss": [], "test_acc": [], "epoch_s": [],
            "steps_per_epoch": steps_per_epoch}
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        losses = train_epoch(model, opt, sched, Xtr, ytr, mean, std, args.batch_size, rng, gen, f"epoch {epoch}")
        hist["epoch_s"].append(time.perf_counter() - t0)
        test_loss, test_acc = evaluate(model, Xte, yte, mean, std)
        for key, value in [("train_loss", float(np.mean(losses))), ("test_loss", test_loss), ("test_acc", test_acc)]:
            hist[key].append(value)
        hist["step_loss"] += losses
        print(f"epoch {epoch:2d}/{args.epochs}  train loss {hist['train_loss'][-1]:.4f} | test loss {test_loss:.4f} "
              f"acc {test_acc:.4f} | {hist['epoch_s'][-1]:.1f} s", flush=True)

    plot_learning_curves(hist, out_dir / "learning_curves.png", f"mobilenet_v1_torch {args.arch}, width {args.width:g}")
    metrics = {
        "script": "mobilenet_v1_torch", "arch": args.arch, "test_acc": test_acc, "test_loss": test_loss,
        "first_loss": hist["step_loss"][0], "final_train_loss": hist["train_loss"][-1], "params": int(n_params),
        "sec_per_epoch": float(np.median(hist["epoch_s"])),
        "config": {**vars(args), "device": str(device)}, "history": hist,
    }
    save_metrics(out_dir, metrics, __file__, argv)
    torch.save(model.state_dict(), out_dir / "model.pt")
    print(f"wrote {out_dir}/metrics.json, model.pt and learning_curves.png")
    return metrics


if __name__ == "__main__":
    main()
