"""MobileNet v2 (Sandler et al. 2018): inverted residuals with linear bottlenecks and ReLU6, in PyTorch.

What the paper adds. MobileNet v1 is a plain stack of depthwise separable layers. v2 keeps the depthwise
3x3 convolution but rebuilds the block around it (Table 1 of the paper), for k inputs, k' outputs,
expansion factor t and stride s:

    1x1 conv, k -> t k, BN, ReLU6        expand: a wide space where the nonlinearity can act
    3x3 depthwise conv, stride s, BN, ReLU6
    1x1 conv, t k -> k', BN              project back to a narrow bottleneck: LINEAR, no ReLU
    + the input, when s = 1 and k = k'   the shortcut joins the narrow bottlenecks

  - Inverted residual. A ResNet bottleneck is wide -> narrow -> wide with the shortcut between the wide
    ends. Here the block is narrow -> wide (t = 6) -> narrow and the shortcut links the narrow ends: the
    tensors that travel between blocks are the small ones; the wide tensor lives only inside the block,
    where the depthwise conv keeps it cheap (its cost is linear in the width, not quadratic).
  - Linear bottleneck (section 3.2, Figure 1): the "manifold of interest" of a layer's activations lies
    in a low-dimensional subspace, and ReLU, zeroing every negative coordinate, collapses much of it in a
    space of few dimensions (a 2-D spiral embedded in n dimensions, passed through ReLU and mapped back,
    is destroyed for n = 2 or 3 and survives for n = 15 or 30). So the nonlinearity acts only in the
    expanded space, and the narrow output stays linear (a ReLU there costs accuracy, Figure 6a).
  - ReLU6, min(max(x, 0), 6): bounded activations, robust for low-precision (mobile) arithmetic.
  - Width multiplier and rounding: every channel count c becomes make_divisible(alpha c), the nearest
    multiple of 8 (never below 8, never more than 10% below alpha c); the last conv keeps 1280 channels
    when alpha < 1 ("except the very last convolutional layer").

The network (Table 2): conv 3x3/2 of 32, then 17 bottleneck blocks in 7 sequences (t, c, n, s) =
(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)
(the first block of a sequence has stride s, the others 1; t = 1 has no expansion conv), a 1x1 conv to
1280, global average pool, dropout 0.2, a linear classifier. 3,504,872 parameters at alpha = 1 (the
torchvision count; the paper prints 3.4M) and about 300M mult-adds at 224x224. Init: Kaiming normal
(fan_out) convs, BN 1 and 0, the classifier N(0, 0.01). Small input (28x28): the first conv has stride 1.

Reading: M. Sandler, A. Howard, M. Zhu, A. Zhmoginov and L.-C. Chen (2018), "MobileNetV2: Inverted
Residuals and Linear Bottlenecks", CVPR, https://arxiv.org/abs/1801.04381 (Tables 1, 2: block, network).
Arc: Deep convolutional models: case studies -- MobileNet (v2).

Run:  python 04-cnns/mobilenet_v2_torch.py          (width 0.5, 10k images, 3 epochs: minutes)
      python 04-cnns/mobilenet_v2_torch.py --smoke  (seconds: width 0.25, 2,000 images, 1 epoch at lr 0.03)
      python 04-cnns/mobilenet_v2_torch.py --width 1 --n-train 60000 --epochs 30 --device cuda
Look first at `InvertedResidual.forward`: expand, filter, project, and the ReLU that is not there.
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
# ## Channel rounding and the inverted residual block


# %%
def make_divisible(c, divisor=8):
    """The multiple of `divisor` nearest to c (halves round up), at least `divisor`, and not more than
    10% below c (else one more step): 32 * 0.35 = 11.2 -> 16 (8 would lose 29%), 24 * 0.75 = 18 -> 24."""
    rounded = max(divisor, int(c + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * c else rounded


def conv_bn(c_in, c_out, kernel=1, stride=1, groups=1, relu6=True):
    """conv (no bias: BN follows) -> BN -> ReLU6, or no activation for a linear bottleneck."""
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.ReLU6()) if relu6 else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """y = x + project(dw(expand(x))) when stride 1 and c_in = c_out, else project(dw(expand(x))).

    (B, c_in, H, W) -> expand 1x1 (B, t c_in, H, W) -> 3x3 depthwise (B, t c_in, H/s, W/s) -> project 1x1,
    linear (B, c_out, H/s, W/s). With t = 1 there is nothing to expand and the block starts at the 3x3.
    """

    def __init__(self, c_in, c_out, stride, expand_ratio):
        super().__init__()
        hidden = c_in * expand_ratio
        self.expand = conv_bn(c_in, hidden) if expand_ratio != 1 else nn.Identity()
        self.dw = conv_bn(hidden, hidden, 3, stride, groups=hidden)  # one 3x3 filter per channel
        self.project = conv_bn(hidden, c_out, relu6=False)  # the linear bottleneck: no ReLU in low dimension
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):  # (B, c_in, H, W)
        h = self.project(self.dw(self.expand(x)))  # (B, c_out, H/s, W/s)
        return x + h if self.residual else h  # no activation after the addition either


# %% [markdown]
# ## The network: Table 2 of the paper


# %%
# (t: expansion, c: output channels, n: blocks, s: stride of the first block) of the 7 sequences
SEQUENCES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1)]


class MobileNetV2(nn.Module):
    """conv 3x3/2 (32) -> 17 inverted residual blocks -> conv 1x1 (1280) -> global average pool -> dropout -> fc.

    ImageNet: (B, in_channels, 224, 224) -> (B, 32, 112, 112) -> ... -> (B, 320, 7, 7) -> (B, 1280, 7, 7)
    -> (B, num_classes). small_input: the first conv has stride 1 (28 -> 28 -> 14 -> 7 -> 4 -> 2).
    """

    def __init__(self, num_classes=1000, in_channels=3, small_input=False, width_mult=1.0, dropout=0.2):
        super().__init__()
        c = make_divisible(32 * width_mult)
        self.stem = conv_bn(in_channels, c, 3, 1 if small_input else 2)  # (B, 32, 112, 112); 28x28 when small
        blocks = []
        for t, c_out, n, s in SEQUENCES:
            c_out = make_divisible(c_out * width_mult)
            for i in range(n):
                blocks.append(InvertedResidual(c, c_out, s if i == 0 else 1, t))
                c = c_out
        self.blocks = nn.Sequential(*blocks)
        c_last = make_divisible(1280 * max(1.0, width_mult))  # alpha < 1 leaves the last conv at 1280
        self.head = conv_bn(c, c_last)  # (B, 1280, 7, 7)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_last, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight), nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc.weight, 0, 0.01), nn.init.zeros_(self.fc.bias)

    def forward(self, x):  # (B, in_channels, H, W)
        h = self.head(self.blocks(self.stem(x)))  # (B, 1280, H/32, W/32)
        return self.fc(self.dropout(h.mean(dim=(2, 3))))  # global average pool -> (B, num_classes)


def mobilenet_v2(num_classes=1000, in_channels=3, small_input=False, **config):
    """MobileNet v2 (Table 2), width multiplier `width_mult` (default 1: 3,504,872 parameters)."""
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels, small_input=small_input, **config)


MODELS = {"mobilenet_v2": mobilenet_v2}
RESOLUTION = {"mobilenet_v2": 224}  # the canonical input size (the paper also trains 96 .. 224)

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
    p.add_argument("--arch", default="mobilenet_v2", choices=sorted(MODELS), help="model (default mobilenet_v2)")
    p.add_argument("--width", type=positive_float, default=None,
                   help="width multiplier alpha (default 0.5; 0.25 with --smoke)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 3; 1 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="minibatch size (default 128; 32 with --smoke)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="peak SGD learning rate, cosine-decayed (default 0.05: 0.1 makes the first steps diverge; "
                        "0.03 with --smoke, whose 63 steps are too few to recover from a rough start)")
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
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/mobilenet_v2_torch)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = p.parse_args(argv)
    defaults = dict(width=0.25, epochs=1, batch_size=32, lr=0.03, n_train=2000, n_test=1000) if args.smoke else \
        dict(width=0.5, epochs=3, batch_size=128, lr=0.05, n_train=10000, n_test=10000)
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
    print(f"mobilenet_v2_torch: {args.arch} width {args.width:g} ({n_params:,} parameters), {len(Xtr)} train / "
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

    plot_learning_curves(hist, out_dir / "learning_curves.png", f"mobilenet_v2_torch {args.arch}, width {args.width:g}")
    metrics = {
        "script": "mobilenet_v2_torch", "arch": args.arch, "test_acc": test_acc, "test_loss": test_loss,
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
