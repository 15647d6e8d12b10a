"""Inception-v4 (Szegedy et al. 2016): a uniform stack of Inception-A, -B and -C blocks with explicit
reduction blocks, behind a multi-branch stem, in PyTorch.

What the paper adds. Inception v3's layout had been changed conservatively, because the model had to be
partitioned across machines for training. Moved to TensorFlow, the authors simplify: one block design per
grid size, repeated, and uniform choices throughout (Figure 9):
    stem (Figure 3)        299 -> 35x35x384: convs, then three places where two branches run side by side
                           and are concatenated (max-pool | stride-2 conv; two factorised stacks; conv | pool)
    4 x Inception-A (Fig. 4)   35x35x384: [avg-pool -> 1x1 96 | 1x1 96 | 1x1 64 -> 3x3 96 |
                                          1x1 64 -> 3x3 96 -> 3x3 96]
    Reduction-A (Fig. 7)       35 -> 17, 1024 channels: [max-pool | 3x3/2 n | 1x1 k -> 3x3 l -> 3x3/2 m],
                               (k, l, m, n) = (192, 224, 256, 384) for Inception-v4 (Table 1)
    7 x Inception-B (Fig. 5)   17x17x1024: 7x7s factorised into 1x7 / 7x1 pairs, as in Inception v3
    Reduction-B (Fig. 8)       17 -> 8, 1536 channels
    3 x Inception-C (Fig. 6)   8x8x1536: 3x3s split into parallel 1x3 and 3x1 outputs
    average pool -> dropout (keep 0.8) -> linear
The ideas are v3's (factorisation, grid reduction by parallel conv and pool branches, BatchNorm everywhere);
what is new is the regular, deeper, wider layout, which by itself matches the residual Inception-ResNet-v2
in the paper (Table 2), though residual connections made training markedly faster. The paper trains with
RMSProp; the loop here is SGD with plain cross-entropy, at lr 0.05 in batches of 64: this deep (75 convs
on the longest path) network without residual connections diverges at lr 0.1.

Counts (1000 classes, 299x299; convs without bias, each followed by BatchNorm, eps 1e-3): 42,679,816
parameters, the figure of the imgclsmob and timm implementations. Its pieces: stem 605,728 + Inception-A
4 x 317,632 + Reduction-A 2,306,112 + Inception-B 7 x 2,936,256 + Reduction-B 2,747,392 + Inception-C
3 x 4,553,088 + classifier 1536 * 1000 + 1000 = 1,537,000. "Valid" convs and pools of the figures
(marked V) have no padding; the others keep the size. Init: Kaiming normal (fan_out) convs, BN 1 and 0.
Small input (28x28): the stem's first conv becomes 3x3 stride 1, its valid convs are padded and its first
reduction keeps stride 1: the blocks run at 13, 6 and 2 pixels (299: 35, 17, 8). `width` scales channels.

Reading: C. Szegedy, S. Ioffe, V. Vanhoucke and A. Alemi (2016), "Inception-v4, Inception-ResNet and the
Impact of Residual Connections on Learning", AAAI 2017, https://arxiv.org/abs/1602.07261 (Figures 3-9:
the blocks; Table 1: the Reduction-A filter counts).
Arc: Deep convolutional models: case studies II -- Inception V4.

Run:  python 04-cnns/inception_v4_torch.py          (Inception-v4 at width 1/16, 10k images, 3 epochs: minutes)
      python 04-cnns/inception_v4_torch.py --smoke  (seconds: width 1/16, 2,000 images, 1 epoch, batches of 16)
      python 04-cnns/inception_v4_torch.py --width 1 --n-train 60000 --epochs 30 --device cuda
Look first at `InceptionV4.__init__` (the whole network is 4 A, 7 B, 3 C blocks), then at `Stem`.
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
# ## Building blocks: conv-BN-ReLU, the stem, the three Inception blocks and the two reductions


# %%
def conv(c_in, c_out, k, stride=1, padding=0):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU; k and padding may be (kh, kw) pairs: (1, 7), (0, 3)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, padding, bias=False), nn.BatchNorm2d(c_out, eps=1e-3),
                         nn.ReLU(inplace=True))


def row(c_in, c_out, n):
    """1 x n conv, size kept."""
    return conv(c_in, c_out, (1, n), padding=(0, n // 2))


def col(c_in, c_out, n):
    """n x 1 conv, size kept."""
    return conv(c_in, c_out, (n, 1), padding=(n // 2, 0))


class Stem(nn.Module):
    """Figure 3: (B, in_channels, 299, 299) -> (B, 384, 35, 35).

    3x3/2 V 32 -> 3x3 V 32 -> 3x3 64 -> [3x3/2 V max-pool | 3x3/2 V 96] (160, 73x73)
    -> [1x1 64 -> 3x3 V 96 | 1x1 64 -> 7x1 64 -> 1x7 64 -> 3x3 V 96] (192, 71x71) -> [3x3/2 V 192 | max-pool] (384).
    small_input: stride 1 and padding for the first conv and the first split, padding for the valid convs.
    """

    def __init__(self, in_channels, s, small_input=False):
        super().__init__()
        p, r = (1, 1) if small_input else (0, 2)  # padding of the "V" convs; stride of the first conv and first split
        self.convs = nn.Sequential(conv(in_channels, s(32), 3, r, p), conv(s(32), s(32), 3, padding=p),
                                   conv(s(32), s(64), 3, padding=1))  # (B, 64, 147, 147)
        self.pool1, self.conv1 = nn.MaxPool2d(3, r, padding=p), conv(s(64), s(96), 3, r, p)  # (B, 64 + 96, 73, 73)
        c = s(64) + s(96)
        self.b1 = nn.Sequential(conv(c, s(64), 1), conv(s(64), s(96), 3, padding=p))
        self.b2 = nn.Sequential(conv(c, s(64), 1), col(s(64), s(64), 7), row(s(64), s(64), 7),
                                conv(s(64), s(96), 3, padding=p))  # (B, 96 + 96, 71, 71)
        self.conv2, self.pool2 = conv(2 * s(96), s(192), 3, 2), nn.MaxPool2d(3, 2)  # (B, 192 + 192, 35, 35)
        self.c_out = s(192) + 2 * s(96)

    def forward(self, x):  # (B, in_channels, H, W)
        h = self.convs(x)
        h = torch.cat([self.pool1(h), self.conv1(h)], dim=1)
        h = torch.cat([self.b1(h), self.b2(h)], dim=1)
        return torch.cat([self.conv2(h), self.pool2(h)], dim=1)


def avg_pool_proj(c_in, c_out):
    """The pooling branch of blocks A, B, C: 3x3 stride-1 average pool, then a 1x1 conv."""
    return nn.Sequential(nn.AvgPool2d(3, 1, padding=1, count_include_pad=False), conv(c_in, c_out, 1))


class InceptionA(nn.Module):
    """Figure 4: [avg-pool -> 1x1 96 | 1x1 96 | 1x1 64 -> 3x3 96 | 1x1 64 -> 3x3 96 -> 3x3 96]: (B, c_in, H, W)
    -> (B, 4 x 96, H, W)."""

    def __init__(self, c_in, s):
        super().__init__()
        self.bp, self.b1 = avg_pool_proj(c_in, s(96)), conv(c_in, s(96), 1)
        self.b3 = nn.Sequential(conv(c_in, s(64), 1), conv(s(64), s(96), 3, padding=1))
        self.bd = nn.Sequential(conv(c_in, s(64), 1), conv(s(64), s(96), 3, padding=1),
                                conv(s(96), s(96), 3, padding=1))
        self.c_out = 4 * s(96)

    def forward(self, x):
        return torch.cat([self.bp(x), self.b1(x), self.b3(x), self.bd(x)], dim=1)


class ReductionA(nn.Module):
    """Figure 7: [3x3/2 V max-pool | 3x3/2 V n | 1x1 k -> 3x3 l -> 3x3/2 V m]: (B, c_in, H, W)
    -> (B, c_in + n + m, (H - 3) // 2 + 1, same)."""

    def __init__(self, c_in, s, k=192, l=224, m=256, n=384):  # noqa: E741  (the paper's letters)
        super().__init__()
        self.pool, self.b3 = nn.MaxPool2d(3, 2), conv(c_in, s(n), 3, 2)
        self.bd = nn.Sequential(conv(c_in, s(k), 1), conv(s(k), s(l), 3, padding=1), conv(s(l), s(m), 3, 2))
        self.c_out = c_in + s(n) + s(m)

    def forward(self, x):
        return torch.cat([self.pool(x), self.b3(x), self.bd(x)], dim=1)


class InceptionB(nn.Module):
    """Figure 5: [avg-pool -> 1x1 128 | 1x1 384 | 1x1 192 -> 1x7 224 -> 7x1 256 |
    1x1 192 -> 1x7 192 -> 7x1 224 -> 1x7 224 -> 7x1 256]: (B, c_in, H, W) -> (B, 1024, H, W)."""

    def __init__(self, c_in, s):
        super().__init__()
        self.bp, self.b1 = avg_pool_proj(c_in, s(128)), conv(c_in, s(384), 1)
        self.b7 = nn.Sequential(conv(c_in, s(192), 1), row(s(192), s(224), 7), col(s(224), s(256), 7))
        self.bd = nn.Sequential(conv(c_in, s(192), 1), row(s(192), s(192), 7), col(s(192), s(224), 7),
                                row(s(224), s(224), 7), col(s(224), s(256), 7))
        self.c_out = s(128) + s(384) + 2 * s(256)

    def forward(self, x):
        return torch.cat([self.bp(x), self.b1(x), self.b7(x), self.bd(x)], dim=1)


class ReductionB(nn.Module):
    """Figure 8: [3x3/2 V max-pool | 1x1 192 -> 3x3/2 V 192 | 1x1 256 -> 1x7 256 -> 7x1 320 -> 3x3/2 V 320]:
    (B, c_in, H, W) -> (B, c_in + 192 + 320, (H - 3) // 2 + 1, same)."""

    def __init__(self, c_in, s):
        super().__init__()
        self.pool = nn.MaxPool2d(3, 2)
        self.b3 = nn.Sequential(conv(c_in, s(192), 1), conv(s(192), s(192), 3, 2))
        self.b7 = nn.Sequential(conv(c_in, s(256), 1), row(s(256), s(256), 7), col(s(256), s(320), 7),
                                conv(s(320), s(320), 3, 2))
        self.c_out = c_in + s(192) + s(320)

    def forward(self, x):
        return torch.cat([self.pool(x), self.b3(x), self.b7(x)], dim=1)


class InceptionC(nn.Module):
    """Figure 6: [avg-pool -> 1x1 256 | 1x1 256 | 1x1 384 -> (1x3 256, 3x1 256) |
    1x1 384 -> 1x3 448 -> 3x1 512 -> (1x3 256, 3x1 256)]: (B, c_in, H, W) -> (B, 6 x 256, H, W)."""

    def __init__(self, c_in, s):
        super().__init__()
        c = s(256)
        self.bp, self.b1 = avg_pool_proj(c_in, c), conv(c_in, c, 1)
        self.b3 = conv(c_in, s(384), 1)
        self.b3_row, self.b3_col = row(s(384), c, 3), col(s(384), c, 3)
        self.bd = nn.Sequential(conv(c_in, s(384), 1), row(s(384), s(448), 3), col(s(448), s(512), 3))
        self.bd_row, self.bd_col = row(s(512), c, 3), col(s(512), c, 3)
        self.c_out = 6 * c

    def forward(self, x):
        h3, hd = self.b3(x), self.bd(x)  # (B, 384, H, W), (B, 512, H, W)
        return torch.cat([self.bp(x), self.b1(x), self.b3_row(h3), self.b3_col(h3), self.bd_row(hd),
                          self.bd_col(hd)], dim=1)


# %% [markdown]
# ## The network (Figure 9)


# %%
class InceptionV4(nn.Module):
    """stem -> 4 x A -> Reduction-A -> 7 x B -> Reduction-B -> 3 x C -> average pool -> dropout -> linear.

    (B, in_channels, 299, 299) -> (B, 384, 35, 35) -> (B, 1024, 17, 17) -> (B, 1536, 8, 8) -> (B, 1536)
    -> (B, num_classes). small_input: the blocks run at 13, 6 and 2 pixels for a 28x28 image.
    """

    def __init__(self, num_classes=1000, in_channels=3, small_input=False, width=1.0):
        super().__init__()
        s = lambda c: max(1, round(c * width))  # noqa: E731  (channel multiplier for CPU runs)
        blocks = [Stem(in_channels, s, small_input)]
        for make, n in [(InceptionA, 4), (ReductionA, 1), (InceptionB, 7), (ReductionB, 1), (InceptionC, 3)]:
            for _ in range(n):
                blocks.append(make(blocks[-1].c_out, s))
        self.features = nn.Sequential(*blocks)
        self.drop = nn.Dropout(0.2)  # keep probability 0.8 (Figure 9)
        self.fc = nn.Linear(blocks[-1].c_out, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight), nn.init.zeros_(m.bias)

    def forward(self, x):  # (B, in_channels, H, W)
        h = self.features(x)  # (B, 1536, 8, 8)
        return self.fc(self.drop(h.mean(dim=(2, 3))))  # global average pool -> (B, num_classes)


def inception_v4(num_classes=1000, in_channels=3, small_input=False, **config):
    """Inception-v4 at 299x299: 42,679,816 parameters."""
    return InceptionV4(num_classes=num_classes, in_channels=in_channels, small_input=small_input, **config)


MODELS = {"inception_v4": inception_v4}


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
    p.add_argument("--arch", default="inception_v4", choices=sorted(MODELS), help="model (default inception_v4)")
    p.add_argument("--width", type=positive_float, default=None,
                   help="channel multiplier (default and with --smoke 1/16)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 3; 1 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="minibatch size (default 64; 16 with --smoke)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="peak SGD learning rate, cosine-decayed (default 0.05)")
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
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/inception_v4_torch)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = p.parse_args(argv)
    defaults = dict(width=1 / 16, epochs=1, batch_size=16, lr=0.05, n_train=2000, n_test=1000) if args.smoke \
        else dict(width=1 / 16, epochs=3, batch_size=64, lr=0.05, n_train=10000, n_test=10000)
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
    print(f"inception_v4_torch: {args.arch} width {args.width:g} ({n_params:,} parameters), {len(Xtr)} train / "
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

    plot_learning_curves(hist, out_dir / "learning_curves.png",
                         f"inception_v4_torch {args.arch} (width {args.width:g})")
    metrics = {
        "script": "inception_v4_torch", "arch": args.arch, "test_acc": test_acc, "test_loss": test_loss,
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
