"""ResNeXt (Xie et al. 2017): residual blocks that split, transform and merge, as one grouped convolution.

What the paper adds. A ResNet bottleneck is one 1x1 -> 3x3 -> 1x1 path. ResNeXt makes it a sum of C
("cardinality") identical, narrow paths, each 1x1 (in -> d) -> 3x3 (d -> d) -> 1x1 (d -> out), added
to the identity shortcut:

    y = x + sum_{k=1}^{C} T_k(x)                  (eq. 3 of the paper; T_k: branch k, its own weights)

The paper's Figure 3 draws three forms of this block that compute the same function:
  (a) split-transform-merge: the C branches, summed.
  (b) early concatenation: a sum of linear maps of different inputs is ONE linear map of their
      concatenation, sum_k W_k h_k = [W_1 ... W_C] [h_1; ...; h_C], so the C last 1x1 convs become
      one 1x1 conv from C d channels to out.
  (c) grouped convolution: the C first 1x1 convs read the same x, so they stack into one 1x1 conv to
      C d channels; the C 3x3 convs each read only their own d channels: one 3x3 conv with `groups=C`,
      weight (C d, d, 3, 3), output group k seeing input group k only.
  Form (c), built here, is a ResNet bottleneck of width D = C d whose middle conv is block-diagonal
  (BatchNorm is per channel, so it splits too). `split_block` rebuilds form (a) with the same weights.

Why it works. At equal parameters and FLOPs the paper finds that more, narrower paths beat a wider or
deeper ResNet (ResNeXt-50 32x4d against ResNet-50, Table 3). The grouped 3x3 conv costs 1/C of a dense
one of the same width, so the budget pays for a wider bottleneck (32 x 4 = 128 channels against ResNet's
64 in stage 1). The template stays ResNet's: each stage halves the map (stride 2 in the first block's 3x3)
and doubles the widths; the shortcut is the identity or a 1x1 projection where shapes change.

Counts (1000 classes, 224x224): ResNeXt-50 32x4d 25,028,904 parameters; with C = 1, d = 64 the block
is the ResNet-50 bottleneck and the count is ResNet-50's 25,557,032. The CIFAR models of section 5.2
(ResNeXt-29: 3 stages of 3 blocks, 3x3 stem of 64, outputs 256 / 512 / 1024) have 34.4M (8x64d) and
68.1M (16x64d) parameters with 10 classes (here 34,426,698 and 68,155,210: the paper truncates to 0.1M).
Small input (28x28): a 3x3 stride-1 stem of 64, no max-pool; `width` scales channels (d too; C stays).

Reading: S. Xie, R. Girshick, P. Dollar, Z. Tu and K. He (2017), "Aggregated Residual Transformations for
Deep Neural Networks", CVPR, https://arxiv.org/abs/1611.05431 (Figure 3; Table 1: the ResNeXt-50 template).
Arc: Deep convolutional models: case studies -- ResNets: ResNeXt.

Run:  python 04-cnns/resnext_torch.py          (ResNeXt-29 8x64d at width 1/16, 10k images, 3 epochs: minutes)
      python 04-cnns/resnext_torch.py --smoke  (seconds: width 1/32, 1,000 images, 1 epoch)
      python 04-cnns/resnext_torch.py --arch resnext50_32x4d --width 1 --n-train 60000 --device cuda
Look first at `Block.forward` (three convs and a shortcut: the grouped conv is the whole idea), then at
`split_block`, which unfolds it into the C branches of Figure 3(a).
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
# ## The block, form (c): 1x1 conv, grouped 3x3 conv, 1x1 conv, plus the shortcut


# %%
class Block(nn.Module):
    """y = ReLU(x' + BN(1x1(ReLU(BN(grouped3x3(ReLU(BN(1x1(x))))))))), x' = x or BN(1x1 conv(x)) (projection).

    (B, c_in, H, W) -> (B, c_out, H/stride, W/stride); `cardinality` groups of `d` channels in the middle.
    """

    def __init__(self, c_in, c_out, cardinality, d, stride=1):
        super().__init__()
        D = cardinality * d  # bottleneck width: C paths of d channels, side by side
        self.conv1 = nn.Conv2d(c_in, D, 1, bias=False)  # the C first 1x1 convs, stacked (Figure 3c)
        self.bn1 = nn.BatchNorm2d(D)
        self.conv2 = nn.Conv2d(D, D, 3, stride, padding=1, groups=cardinality, bias=False)  # W (D, d, 3, 3)
        self.bn2 = nn.BatchNorm2d(D)
        self.conv3 = nn.Conv2d(D, c_out, 1, bias=False)  # the C last 1x1 convs, summed (Figure 3b)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:  # projection where the shape changes (ResNet option B)
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):  # (B, c_in, H, W)
        h = F.relu(self.bn1(self.conv1(x)))  # (B, D, H, W)
        h = F.relu(self.bn2(self.conv2(h)))  # (B, D, H/s, W/s): group k reads and writes channels k d .. k d + d
        h = self.bn3(self.conv3(h))  # (B, c_out, H/s, W/s)
        return F.relu(h + self.shortcut(x))


# %% [markdown]
# ## Form (a): the same block as C separate branches, built from a form-(c) block's weights


# %%
class SplitBlock(nn.Module):
    """Figure 3(a): y = ReLU(x' + BN(sum_k conv3_k(ReLU(BN_k(conv2_k(ReLU(BN_k(conv1_k(x))))))))).

    Each branch k is a plain 1x1 (c_in -> d), 3x3 (d -> d), 1x1 (d -> c_out) path; the C outputs are summed.
    Written for the lesson and the test (a loop over C small convs is slow); `split_block` fills it.
    """

    def __init__(self, c_in, c_out, cardinality, d, stride=1):
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(
            nn.Conv2d(c_in, d, 1, bias=False), nn.BatchNorm2d(d), nn.ReLU(),
            nn.Conv2d(d, d, 3, stride, padding=1, bias=False), nn.BatchNorm2d(d), nn.ReLU(),
            nn.Conv2d(d, c_out, 1, bias=False),
        ) for _ in range(cardinality))
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        h = sum(branch(x) for branch in self.branches)  # (B, c_out, H/s, W/s): merge by summation
        return F.relu(self.bn3(h) + self.shortcut(x))


@torch.no_grad()
def split_block(block):
    """The SplitBlock (form a) computing the same function as `block` (form c): slice its weights per path.

    Path k owns channels k d .. (k + 1) d - 1 of the bottleneck: rows of conv1's weight, the same entries
    of bn1 and bn2 (parameters and running statistics), group k of conv2 (rows k d .. of its (D, d, 3, 3)
    weight) and columns of conv3's weight (the (b) step: one 1x1 conv over the concatenation = the sum).
    """
    C = block.conv2.groups
    d = block.conv2.out_channels // C
    split = SplitBlock(block.conv1.in_channels, block.conv3.out_channels, C, d, block.conv2.stride[0])
    split.to(block.conv1.weight.device, block.conv1.weight.dtype)
    split.bn3.load_state_dict(block.bn3.state_dict())
    split.shortcut.load_state_dict(block.shortcut.state_dict())
    for k, (conv1, bn1, _, conv2, bn2, _, conv3) in enumerate(split.branches):
        s = slice(k * d, (k + 1) * d)
        conv1.weight.copy_(block.conv1.weight[s])  # (d, c_in, 1, 1)
        conv2.weight.copy_(block.conv2.weight[s])  # (d, d, 3, 3): group k
        conv3.weight.copy_(block.conv3.weight[:, s])  # (c_out, d, 1, 1)
        for bn, big in [(bn1, block.bn1), (bn2, block.bn2)]:
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, name).copy_(getattr(big, name)[s])
    return split.train(block.training)


# %% [markdown]
# ## The network: a stem, stages of blocks, global average pool, a linear classifier


# %%
class ResNeXt(nn.Module):
    """stem -> stages (widths[i] outputs, cardinality x d_i bottleneck, d doubling per stage) -> pool -> fc.

    ImageNet: (B, in_channels, 224, 224) -> stem 7x7/2 + max-pool 3x3/2 (B, 64, 56, 56) -> stages at 56, 28,
    14, 7 -> (B, 2048) -> (B, num_classes). small_input: a 3x3 stride-1 stem and no max-pool (28x28 stays).
    """

    def __init__(self, layers, cardinality, base_width, num_classes=1000, in_channels=3, small_input=False,
                 widths=(256, 512, 1024, 2048), stem_width=64, width=1.0):
        super().__init__()
        scale = lambda c: max(1, round(c * width))  # noqa: E731  (channel multiplier for CPU runs)
        c = scale(stem_width)
        if small_input:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                      nn.ReLU())  # (B, c, 28, 28)
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 7, 2, padding=3, bias=False), nn.BatchNorm2d(c),
                                      nn.ReLU(), nn.MaxPool2d(3, 2, padding=1))  # (B, c, 56, 56)
        blocks = []
        for i, (n, c_out) in enumerate(zip(layers, widths)):
            d = scale(base_width * 2**i)  # path width doubles with each stage, as the output width
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1  # first block of stages 2.. halves the map
                blocks.append(Block(c, scale(c_out), cardinality, d, stride))
                c = scale(c_out)
        self.stages = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight), nn.init.zeros_(m.bias)

    def forward(self, x):  # (B, in_channels, H, W)
        h = self.stages(self.stem(x))  # (B, widths[-1], 7, 7) at 224; (B, widths[-1], 4, 4) small, 28x28
        return self.fc(h.mean(dim=(2, 3)))  # global average pool -> (B, num_classes)


def resnext50_32x4d(num_classes=1000, in_channels=3, small_input=False, **config):
    """ResNeXt-50 (32x4d), Table 1: blocks (3, 4, 6, 3), C = 32 paths of d = 4 (25,028,904 parameters)."""
    config = {"cardinality": 32, "base_width": 4, **config}
    return ResNeXt((3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels, small_input=small_input, **config)


def resnext101_32x8d(num_classes=1000, in_channels=3, small_input=False, **config):
    """ResNeXt-101 (32x8d): blocks (3, 4, 23, 3), C = 32, d = 8."""
    config = {"cardinality": 32, "base_width": 8, **config}
    return ResNeXt((3, 4, 23, 3), num_classes=num_classes, in_channels=in_channels, small_input=small_input,
                   **config)


def resnext101_64x4d(num_classes=1000, in_channels=3, small_input=False, **config):
    """ResNeXt-101 (64x4d): blocks (3, 4, 23, 3), C = 64, d = 4."""
    config = {"cardinality": 64, "base_width": 4, **config}
    return ResNeXt((3, 4, 23, 3), num_classes=num_classes, in_channels=in_channels, small_input=small_input,
                   **config)


def resnext29_8x64d(num_classes=1000, in_channels=3, small_input=False, **config):
    """CIFAR ResNeXt-29 (8x64d), section 5.2: 3 stages of 3 blocks, a 3x3 stem whatever small_input says
    (a CIFAR model); 34.4M parameters with the paper's 10 classes."""
    config = {"cardinality": 8, "base_width": 64, "widths": (256, 512, 1024), **config}
    return ResNeXt((3, 3, 3), num_classes=num_classes, in_channels=in_channels, small_input=True, **config)


def resnext29_16x64d(num_classes=1000, in_channels=3, small_input=False, **config):
    """CIFAR ResNeXt-29 (16x64d): as 8x64d with C = 16; 68.1M parameters with 10 classes."""
    config = {"cardinality": 16, "base_width": 64, "widths": (256, 512, 1024), **config}
    return ResNeXt((3, 3, 3), num_classes=num_classes, in_channels=in_channels, small_input=True, **config)


MODELS = {f.__name__: f for f in (resnext50_32x4d, resnext101_32x8d, resnext101_64x4d, resnext29_8x64d,
                                  resnext29_16x64d)}

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
    p.add_argument("--arch", default="resnext29_8x64d", choices=sorted(MODELS), help="model (default resnext29_8x64d)")
    p.add_argument("--width", type=positive_float, default=None,
                   help="channel multiplier (default 1/16; 1/32 with --smoke)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 3; 1 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="minibatch size (default 128; 32 with --smoke)")
    p.add_argument("--lr", type=positive_float, default=0.1,
                   help="peak SGD learning rate, cosine-decayed (default 0.1)")
    p.add_argument("--weight-decay", type=nonneg_float, default=5e-4, help="L2 weight decay (default 5e-4)")
    p.add_argument("--n-train", type=positive_int, default=None,
                   help="training images (default 10000; 1000 with --smoke)")
    p.add_argument("--n-test", type=positive_int, default=None, help="test images (default 10000; 1000 with --smoke)")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seeds weights, minibatch order and augmentation (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where to train (default auto: cuda, then mps, then cpu)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/resnext_torch)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = p.parse_args(argv)
    defaults = dict(width=1 / 32, epochs=1, batch_size=32, n_train=1000, n_test=1000) if args.smoke else \
        dict(width=1 / 16, epochs=3, batch_size=128, n_train=10000, n_test=10000)
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
    model = MODELS[args.arch](num_classes=10, in_channels=1, small_input=True, width=args.width).to(device)
    Xtr, ytr, Xte, yte = (t.to(device) for t in (Xtr, ytr, Xte, yte))
    n_params = sum(q.numel() for q in model.parameters())
    steps_per_epoch = -(-len(Xtr) // args.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * steps_per_epoch)  # per step
    print(f"resnext_torch: {args.arch} width {args.width:g} ({n_params:,} parameters), {len(Xtr)} train / "
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

    plot_learning_curves(hist, out_dir / "learning_curves.png", f"resnext_torch {args.arch} (width {args.width:g})")
    metrics = {
        "script": "resnext_torch", "arch": args.arch, "test_acc": test_acc, "test_loss": test_loss,
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
