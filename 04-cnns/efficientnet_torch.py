"""EfficientNet (Tan and Le 2019): MBConv blocks with squeeze-and-excitation, and compound scaling, in PyTorch.

What the paper adds. Scaling a network's depth, its width or its input resolution alone saturates
quickly (Figure 3); the three interact (a larger image needs more layers and more channels), so
EfficientNet scales all three together with ONE coefficient phi (eq. 3, section 3.3):

    depth d = alpha^phi,   width w = beta^phi,   resolution r = gamma^phi
    alpha beta^2 gamma^2 ~ 2,   alpha = 1.2, beta = 1.1, gamma = 1.15   (found by a small grid search at phi = 1)

FLOPs grow as d w^2 r^2, so each unit of phi about doubles them. The baseline B0 (Table 1, `B0` below)
was found by architecture search; B1..B7 scale it by the reference implementation's (w, d, resolution,
dropout) (`COEFFICIENTS`), close to but not exactly the powers above. A stage of n blocks gets ceil(d n)
blocks; c channels become w c rounded to a multiple of 8, at most 10% below w c (`round_filters`).

The block, MBConv_t (MobileNet v2's inverted residual, with three additions):
  - 1x1 expansion to t c_in channels, BN, Swish (x sigmoid(x), Ramachandran et al. 2017); k x k
    depthwise conv, BN, Swish; then
  - squeeze-and-excitation (Hu et al. 2018): s = sigmoid(W2 swish(W1 mean_hw(x))), one gate in (0, 1)
    per channel (bottleneck t c_in -> max(1, c_in / 4) -> t c_in), and x_c <- x_c s_c: channels
    reweighted by global context for a few parameters; 1x1 projection to c_out, BN, no activation;
  - the identity shortcut when stride 1 and c_in = c_out, through stochastic depth (Huang et al. 2016):
    in training each example's branch is zeroed with probability p_drop, else scaled by 1/(1 - p_drop)
    (the expectation is unchanged); in evaluation it is kept as is. p_drop rises linearly with depth,
    0.2 i / N for block i of N, as in the reference code (the paper quotes survival 0.8).
Counts (1000 classes): B0 5,288,548, B1 7,794,184 (torchvision's), 0.39B multiply-adds at 224 for B0.
BatchNorm: the reference's eps 1e-3, PyTorch's momentum 0.1. Init: Kaiming normal (fan_out) convs,
BN 1 and 0. Small input (28x28): the stem has stride 1 (28 -> 14 -> 7 -> 4 -> 2); `width_mult` narrows.

Reading: M. Tan and Q. V. Le (2019), "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks", ICML, https://arxiv.org/abs/1905.11946 (eq. 3: compound scaling; Table 1: B0); J. Hu, L. Shen
and G. Sun (2018), "Squeeze-and-Excitation Networks", https://arxiv.org/abs/1709.01507; G. Huang et al.
(2016), "Deep Networks with Stochastic Depth", https://arxiv.org/abs/1603.09382; P. Ramachandran, B. Zoph
and Q. V. Le (2017), "Searching for Activation Functions", https://arxiv.org/abs/1710.05941.
Arc: Deep convolutional models: case studies -- EfficientNet.

Run:  python 04-cnns/efficientnet_torch.py          (B0 at width 0.5, 6k images, 3 epochs: minutes)
      python 04-cnns/efficientnet_torch.py --smoke  (seconds: B0 at width 0.25, 2,000 images, 1 epoch)
      python 04-cnns/efficientnet_torch.py --arch efficientnet_b3 --width 1 --n-train 60000 --device cuda
Look first at `MBConv.forward` (expand, depthwise, excite, project, drop the branch), then at
`EfficientNet.__init__`, where `round_filters` and `round_repeats` turn (w, d) into channels and blocks.
"""

# %%
import argparse
import math
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
# ## The pieces: squeeze-and-excitation, stochastic depth, the MBConv block


# %%
class SqueezeExcite(nn.Module):
    """x * s, s = sigmoid(W2 swish(W1 mean_hw(x) + b1) + b2): one gate in (0, 1) per channel and example.

    (B, C, H, W) -> (B, C, H, W); W1 (c_squeeze, C), W2 (C, c_squeeze), written as 1x1 convs with bias.
    """

    def __init__(self, channels, c_squeeze):
        super().__init__()
        self.reduce = nn.Conv2d(channels, c_squeeze, 1)
        self.expand = nn.Conv2d(c_squeeze, channels, 1)

    def gates(self, x):  # (B, C, H, W)
        z = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1): squeeze, global average pool
        return torch.sigmoid(self.expand(F.silu(self.reduce(z))))  # (B, C, 1, 1): excitation, in (0, 1)

    def forward(self, x):
        return x * self.gates(x)  # each channel rescaled by its gate


class StochasticDepth(nn.Module):
    """Training: h * m / (1 - p) with m ~ Bernoulli(1 - p) per example (the whole branch kept or dropped);
    evaluation: h. E[h * m / (1 - p)] = h, so the two agree on average."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, h):  # (B, C, H, W): a residual branch
        if not self.training or self.p == 0:
            return h
        keep = 1 - self.p
        m = torch.empty(h.shape[0], 1, 1, 1, dtype=h.dtype, device=h.device).bernoulli_(keep)  # (B, 1, 1, 1)
        return h * m / keep


def conv_bn(c_in, c_out, kernel=1, stride=1, groups=1, swish=True):
    """conv (no bias: BN follows) -> BN (the reference's eps) -> Swish, or linear."""
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(c_out, eps=1e-3)]
    return nn.Sequential(*layers, nn.SiLU()) if swish else nn.Sequential(*layers)


class MBConv(nn.Module):
    """y = x + drop(project(SE(dw(expand(x))))) when stride 1 and c_in = c_out, else the branch alone.

    (B, c_in, H, W) -> expand 1x1 (B, t c_in, H, W) -> k x k depthwise (B, t c_in, H/s, W/s) -> SE (same)
    -> project 1x1, linear (B, c_out, H/s, W/s). t = 1: no expansion conv.
    """

    def __init__(self, c_in, c_out, expand_ratio, kernel, stride, drop_prob):
        super().__init__()
        hidden = c_in * expand_ratio
        self.expand = conv_bn(c_in, hidden) if expand_ratio != 1 else nn.Identity()
        self.dw = conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self.se = SqueezeExcite(hidden, max(1, c_in // 4))  # squeeze width: a quarter of the block's INPUT
        self.project = conv_bn(hidden, c_out, swish=False)
        self.residual = stride == 1 and c_in == c_out
        self.drop = StochasticDepth(drop_prob) if self.residual else nn.Identity()

    def forward(self, x):  # (B, c_in, H, W)
        h = self.project(self.se(self.dw(self.expand(x))))  # (B, c_out, H/s, W/s)
        return x + self.drop(h) if self.residual else h


# %% [markdown]
# ## Compound scaling of the B0 table


# %%
# B0, Table 1 (stages 2-8): (expansion t, kernel, stride of the first block, output channels, blocks)
B0 = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
      (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
# (width w, depth d, resolution, dropout) as the reference implementation lists them
COEFFICIENTS = {
    "efficientnet_b0": (1.0, 1.0, 224, 0.2), "efficientnet_b1": (1.0, 1.1, 240, 0.2),
    "efficientnet_b2": (1.1, 1.2, 260, 0.3), "efficientnet_b3": (1.2, 1.4, 300, 0.3),
    "efficientnet_b4": (1.4, 1.8, 380, 0.4), "efficientnet_b5": (1.6, 2.2, 456, 0.4),
    "efficientnet_b6": (1.8, 2.6, 528, 0.5), "efficientnet_b7": (2.0, 3.1, 600, 0.5),
}
RESOLUTION = {name: c[2] for name, c in COEFFICIENTS.items()}  # the canonical input size of each model


def round_filters(c, width_mult, divisor=8):
    """w c to the nearest multiple of 8 (at least 8; one step up if that lost more than 10%)."""
    c = c * width_mult
    rounded = max(divisor, int(c + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * c else rounded


def round_repeats(n, depth_mult):
    """d n blocks, rounded up: a stage never loses its last block."""
    return int(math.ceil(depth_mult * n))


class EfficientNet(nn.Module):
    """stem conv 3x3/2 -> 7 stages of MBConv blocks -> conv 1x1 -> global average pool -> dropout -> fc.

    B0 at 224: (B, in_channels, 224, 224) -> (B, 32, 112, 112) -> stages at 112, 56, 28, 14, 14, 7, 7 ->
    (B, 1280, 7, 7) -> (B, num_classes). small_input: the stem has stride 1 (28 -> ... -> 2).
    `stages[i]` is stage i + 2 of Table 1, an nn.Sequential of its blocks.
    """

    def __init__(self, width_mult, depth_mult, dropout, num_classes=1000, in_channels=3, small_input=False,
                 drop_path=0.2):
        super().__init__()
        c = round_filters(32, width_mult)
        self.stem = conv_bn(in_channels, c, 3, 1 if small_input else 2)  # (B, 32 w, 112, 112); 28x28 when small
        n_blocks = sum(round_repeats(n, depth_mult) for *_, n in B0)
        stages, i = [], 0
        for t, k, s, c_out, n in B0:
            c_out, blocks = round_filters(c_out, width_mult), []
            for j in range(round_repeats(n, depth_mult)):
                blocks.append(MBConv(c, c_out, t, k, s if j == 0 else 1, drop_path * i / n_blocks))
                c, i = c_out, i + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        c_last = round_filters(1280, width_mult)
        self.head = conv_bn(c, c_last)  # (B, 1280 w, 7, 7)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_last, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight), nn.init.zeros_(m.bias)

    def forward(self, x):  # (B, in_channels, H, W)
        h = self.head(self.stages(self.stem(x)))  # (B, 1280 w, H/32, W/32)
        return self.fc(self.dropout(h.mean(dim=(2, 3))))  # global average pool -> (B, num_classes)


def _efficientnet(name, num_classes, in_channels, small_input, config):
    """EfficientNet-Bk with the coefficients of COEFFICIENTS[name]; `config` may override any of width_mult,
    depth_mult, dropout and drop_path."""
    w, d, _, dropout = COEFFICIENTS[name]
    config = {"width_mult": w, "depth_mult": d, "dropout": dropout, **config}
    return EfficientNet(num_classes=num_classes, in_channels=in_channels, small_input=small_input, **config)


def efficientnet_b0(num_classes=1000, in_channels=3, small_input=False, **config):
    """EfficientNet-B0, the searched baseline (Table 1): 5,288,548 parameters, input 224."""
    return _efficientnet("efficientnet_b0", num_classes, in_channels, small_input, config)


def efficientnet_b1(num_classes=1000, in_channels=3, small_input=False, **config):
    """EfficientNet-B1: depth 1.1 (7,794,184 parameters), input 240."""
    return _efficientnet("efficientnet_b1", num_classes, in_channels, small_input, config)


def efficientnet_b2(num_classes=1000, in_channels=3, small_input=False, **config):
    """EfficientNet-B2: width 1.1, depth 1.2, input 260."""
    return _efficientnet("efficientnet_b2", num_classes, in_channels, small_input, config)


def efficientnet_b3(num_classes=1000, in_channels=3, small_input=False, **config):
    """EfficientNet-B3: width 1.2, depth 1.4, input 300."""
    return _efficientnet("efficientnet_b3", num_classes, in_channels, small_input, config)


def efficientnet_b4(num_classes=1000, in_channels=3, small_input=False, **config):
    """EfficientNet-B4: width 1.4, depth 1.8, input 380."""
    return _efficientnet("efficientnet_b4", num_classes, in_channels, small_input, config)


def efficientnet_b5(num_classes=1000, in_channels=3, small_input=False, **config):
    """EfficientNet-B5: width 1.6, depth 2.2, input 456."""
    return _efficientnet("efficientnet_b5", num_classes, in_channels, small_input, config)


def efficientnet_b6(num_classes=1000, in_channels=3, small_input=False, **config):
    """EfficientNet-B6: width 1.8, depth 2.6, input 528."""
    return _efficientnet("efficientnet_b6", num_classes, in_channels, small_input, config)


def efficientnet_b7(num_classes=1000, in_channels=3, small_input=False, **config):
    """EfficientNet-B7: width 2.0, depth 3.1, input 600."""
    return _efficientnet("efficientnet_b7", num_classes, in_channels, small_input, config)


MODELS = {f.__name__: f for f in (efficientnet_b0, efficientnet_b1, efficientnet_b2, efficientnet_b3,
                                  efficientnet_b4, efficientnet_b5, efficientnet_b6, efficientnet_b7)}

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
    p.add_argument("--arch", default="efficientnet_b0", choices=sorted(MODELS), help="model (default efficientnet_b0)")
    p.add_argument("--width", type=positive_float, default=None,
                   help="multiplies the model's width coefficient w for CPU runs (default 0.5; 0.25 with --smoke)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 3; 1 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="minibatch size (default 128; 16 with --smoke)")
    p.add_argument("--lr", type=positive_float, default=0.05,
                   help="peak SGD learning rate, cosine-decayed (default 0.05: 0.1 makes the first steps diverge)")
    p.add_argument("--weight-decay", type=nonneg_float, default=5e-4, help="L2 weight decay (default 5e-4)")
    p.add_argument("--n-train", type=positive_int, default=None,
                   help="training images (default 6000; 2000 with --smoke)")
    p.add_argument("--n-test", type=positive_int, default=None, help="test images (default 10000; 1000 with --smoke)")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seeds weights, minibatch order and augmentation (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where to train (default auto: cuda, then mps, then cpu)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/efficientnet_torch)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = p.parse_args(argv)
    defaults = dict(width=0.25, epochs=1, batch_size=16, n_train=2000, n_test=1000) if args.smoke else \
        dict(width=0.5, epochs=3, batch_size=128, n_train=6000, n_test=10000)
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
    width_mult = COEFFICIENTS[args.arch][0] * args.width
    model = MODELS[args.arch](num_classes=10, in_channels=1, small_input=True, width_mult=width_mult).to(device)
    Xtr, ytr, Xte, yte = (t.to(device) for t in (Xtr, ytr, Xte, yte))
    n_params = sum(q.numel() for q in model.parameters())
    steps_per_epoch = -(-len(Xtr) // args.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * steps_per_epoch)  # per step
    print(f"efficientnet_torch: {args.arch} width {args.width:g} ({n_params:,} parameters), {len(Xtr)} train / "
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

    plot_learning_curves(hist, out_dir / "learning_curves.png", f"efficientnet_torch {args.arch}, width {args.width:g}")
    metrics = {
        "script": "efficientnet_torch", "arch": args.arch, "test_acc": test_acc, "test_loss": test_loss,
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
