"""Inception v3 (Szegedy et al. 2015, "Rethinking the Inception Architecture"): factorised convolutions,
efficient grid-size reduction, a BatchNorm'ed auxiliary head and label smoothing, in PyTorch.

What the paper adds (covering the arc's "Inception V2/V3" item).
  - Factorisation into smaller convolutions (section 3.1, Figure 5): two stacked 3x3 convs see a 5x5
    window for 18/25 of its cost, with an extra non-linearity between them.
  - Asymmetric factorisation (section 3.2, Figures 6 and 7): an n x n conv becomes 1 x n then n x 1, for
    n = 7 14 weights per channel pair instead of 49. The 17x17 modules use 1x7 / 7x1 pairs (`InceptionB`);
    the 8x8 modules split their 3x3s into parallel 1x3 and 3x1 branches to widen the output (`InceptionC`).
  - Efficient grid-size reduction (section 5, Figure 10): pooling first loses information, convolving
    first costs four times more (2 d^2 k^2 against 2 (d/2)^2 k^2); instead a stride-2 conv branch and a
    stride-2 pooling branch run side by side and are concatenated (`ReductionA` 35 -> 17, `ReductionB` 17 -> 8).
  - Auxiliary classifier as a regulariser (section 4): one head on the 17x17 grid, batch-normalised
    ("BN-auxiliary"); its 5x5 valid conv on the 5x5 pooled map is a fully connected layer written as a conv.
  - Label-smoothing regularisation, LSR (section 7): train against q' = (1 - eps) onehot(y) + eps / K,
    eps = 0.1, so the loss stops pushing the correct logit to infinity:
        H(q', p) = (1 - eps) (-log p_y) + eps * mean_k (-log p_k)          (`smoothed_cross_entropy`)
    which is what F.cross_entropy(..., label_smoothing=eps) computes (the test checks).
"v2" or "v3": BN-Inception (Ioffe and Szegedy 2015, often called v2) brought BatchNorm and two 3x3s for
each 5x5. The Rethinking paper calls its factorised network of Table 1 "Inception-v2", and "Inception-v3"
that network plus (Table 3) RMSProp, label smoothing, a factorised 7x7 stem conv and the BN-auxiliary
head. The model here is Table 3's v3 in the layout of the authors' reference code (which keeps a 5x5
branch in the 35x35 modules); the loop is SGD with LSR and the auxiliary loss (weight 0.3, as in
GoogLeNet: the paper gives none), without RMSProp.

Counts (1000 classes, 299x299, convs without bias, BatchNorm eps 1e-3): 27,161,264 parameters with the
auxiliary head, 23,834,568 without. `forward` returns (logits, aux) in training mode with aux_logits and
the logits alone in eval mode. Init: Kaiming normal (fan_out) convs, BN 1 and 0; dropout 0.5 before the
classifier. Small input (28x28): the first stem conv becomes 3x3 stride 1, every stem conv is padded and
its first max-pool goes: the stages run at 13, 6 and 2 pixels (299: 35, 17, 8). `width` scales channels.

Reading: C. Szegedy, V. Vanhoucke, S. Ioffe, J. Shlens and Z. Wojna (2015), "Rethinking the Inception
Architecture for Computer Vision", CVPR 2016, https://arxiv.org/abs/1512.00567; S. Ioffe and C. Szegedy
(2015), "Batch Normalization", https://arxiv.org/abs/1502.03167 (BN-Inception).
Arc: Deep convolutional models: case studies II -- Inception Network (V2/V3).

Run:  python 04-cnns/inception_v3_torch.py          (Inception v3 at width 1/8, 10k images, 3 epochs: minutes)
      python 04-cnns/inception_v3_torch.py --smoke  (seconds: width 1/16, 2,000 images, 1 epoch)
      python 04-cnns/inception_v3_torch.py --label-smoothing 0 --width 1 --n-train 60000 --device cuda
Look first at `InceptionB` (7x7 as 1x7 then 7x1), `ReductionA` (conv and pool side by side), `smoothed_cross_entropy`.
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
    probability,
    save_metrics,
)

# %% [markdown]
# ## Building blocks: conv-BN-ReLU and the five module types


# %%
def conv(c_in, c_out, k, stride=1, padding=0):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU; k and padding may be (kh, kw) pairs: (1, 7), (0, 3)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, padding, bias=False), nn.BatchNorm2d(c_out, eps=1e-3),
                         nn.ReLU(inplace=True))


def avg_pool_proj(c_in, c_out):
    """The pooling branch of the Inception modules: 3x3 stride-1 average pool, then a 1x1 projection."""
    return nn.Sequential(nn.AvgPool2d(3, 1, padding=1), conv(c_in, c_out, 1))


class InceptionA(nn.Module):
    """35x35 module (Figure 5): [1x1 64 | 1x1 48 -> 5x5 64 | 1x1 64 -> 3x3 96 -> 3x3 96 | pool -> 1x1 pool_c].

    (B, c_in, H, W) -> (B, 64 + 64 + 96 + pool_c, H, W). `s` scales channel counts (width multiplier).
    """

    def __init__(self, c_in, pool_c, s):
        super().__init__()
        self.b1 = conv(c_in, s(64), 1)
        self.b5 = nn.Sequential(conv(c_in, s(48), 1), conv(s(48), s(64), 5, padding=2))
        self.b3 = nn.Sequential(conv(c_in, s(64), 1), conv(s(64), s(96), 3, padding=1),
                                conv(s(96), s(96), 3, padding=1))  # a 5x5 receptive field from two 3x3s
        self.bp = avg_pool_proj(c_in, s(pool_c))
        self.c_out = 2 * s(64) + s(96) + s(pool_c)

    def forward(self, x):  # (B, c_in, H, W)
        return torch.cat([self.b1(x), self.b5(x), self.b3(x), self.bp(x)], dim=1)


class ReductionA(nn.Module):
    """35 -> 17 (Figure 10): [3x3/2 384 | 1x1 64 -> 3x3 96 -> 3x3/2 96 | 3x3/2 max-pool], concatenated.

    (B, c_in, H, W) -> (B, 384 + 96 + c_in, (H - 3) // 2 + 1, same): the pool passes c_in channels through.
    """

    def __init__(self, c_in, s):
        super().__init__()
        self.b3 = conv(c_in, s(384), 3, stride=2)
        self.bd = nn.Sequential(conv(c_in, s(64), 1), conv(s(64), s(96), 3, padding=1), conv(s(96), s(96), 3, 2))
        self.pool = nn.MaxPool2d(3, 2)
        self.c_out = s(384) + s(96) + c_in

    def forward(self, x):
        return torch.cat([self.b3(x), self.bd(x), self.pool(x)], dim=1)


class InceptionB(nn.Module):
    """17x17 module (Figure 6, n = 7): every 7x7 factorised into 1x7 then 7x1 (14 weights instead of 49).

    [1x1 192 | 1x1 c7 -> 1x7 c7 -> 7x1 192 | 1x1 c7 -> 7x1 c7 -> 1x7 c7 -> 7x1 c7 -> 1x7 192 | pool -> 1x1 192]
    (B, c_in, H, W) -> (B, 768, H, W).
    """

    def __init__(self, c_in, c7, s):
        super().__init__()
        c7, c = s(c7), s(192)
        row, col = dict(k=(1, 7), padding=(0, 3)), dict(k=(7, 1), padding=(3, 0))  # 1x7 and 7x1, size kept
        self.b1 = conv(c_in, c, 1)
        self.b7 = nn.Sequential(conv(c_in, c7, 1), conv(c7, c7, **row), conv(c7, c, **col))
        self.bd = nn.Sequential(conv(c_in, c7, 1), conv(c7, c7, **col), conv(c7, c7, **row), conv(c7, c7, **col),
                                conv(c7, c, **row))  # two factorised 7x7s in a row
        self.bp = avg_pool_proj(c_in, c)
        self.c_out = 4 * c

    def forward(self, x):
        return torch.cat([self.b1(x), self.b7(x), self.bd(x), self.bp(x)], dim=1)


class ReductionB(nn.Module):
    """17 -> 8: [1x1 192 -> 3x3/2 320 | 1x1 192 -> 1x7 192 -> 7x1 192 -> 3x3/2 192 | 3x3/2 max-pool].

    (B, c_in, H, W) -> (B, 320 + 192 + c_in, (H - 3) // 2 + 1, same).
    """

    def __init__(self, c_in, s):
        super().__init__()
        self.b3 = nn.Sequential(conv(c_in, s(192), 1), conv(s(192), s(320), 3, stride=2))
        self.b7 = nn.Sequential(conv(c_in, s(192), 1), conv(s(192), s(192), (1, 7), padding=(0, 3)),
                                conv(s(192), s(192), (7, 1), padding=(3, 0)), conv(s(192), s(192), 3, stride=2))
        self.pool = nn.MaxPool2d(3, 2)
        self.c_out = s(320) + s(192) + c_in

    def forward(self, x):
        return torch.cat([self.b3(x), self.b7(x), self.pool(x)], dim=1)


class InceptionC(nn.Module):
    """8x8 module (Figure 7): 3x3s split into parallel 1x3 and 3x1 branches, concatenated (a wider output).

    [1x1 320 | 1x1 384 -> (1x3 384, 3x1 384) | 1x1 448 -> 3x3 384 -> (1x3 384, 3x1 384) | pool -> 1x1 192]
    (B, c_in, H, W) -> (B, 2048, H, W).
    """

    def __init__(self, c_in, s):
        super().__init__()
        c = s(384)
        self.b1 = conv(c_in, s(320), 1)
        self.b3 = conv(c_in, c, 1)
        self.b3_row, self.b3_col = conv(c, c, (1, 3), padding=(0, 1)), conv(c, c, (3, 1), padding=(1, 0))
        self.bd = nn.Sequential(conv(c_in, s(448), 1), conv(s(448), c, 3, padding=1))
        self.bd_row, self.bd_col = conv(c, c, (1, 3), padding=(0, 1)), conv(c, c, (3, 1), padding=(1, 0))
        self.bp = avg_pool_proj(c_in, s(192))
        self.c_out = s(320) + 4 * c + s(192)

    def forward(self, x):
        h3, hd = self.b3(x), self.bd(x)  # (B, 384, H, W) each
        return torch.cat([self.b1(x), self.b3_row(h3), self.b3_col(h3), self.bd_row(hd), self.bd_col(hd),
                          self.bp(x)], dim=1)  # (B, 320 + 4 * 384 + 192, H, W)


class AuxHead(nn.Module):
    """On the 17x17 grid: 5x5/3 average pool (-> 5x5) -> 1x1 conv 128 -> 5x5 conv 768 (the FC layer, BN'ed)
    -> FC. (B, c_in, 17, 17) -> (B, num_classes); small_input: the 6x6 map is pooled to 5x5 adaptively."""

    def __init__(self, c_in, num_classes, small_input, s):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(5) if small_input else nn.AvgPool2d(5, 3)  # (B, c_in, 5, 5)
        self.conv0 = conv(c_in, s(128), 1)
        self.conv1 = conv(s(128), s(768), 5)  # (B, 768, 1, 1): a fully connected layer, batch-normalised
        self.fc = nn.Linear(s(768), num_classes)

    def forward(self, x):
        return self.fc(self.conv1(self.conv0(self.pool(x))).flatten(1))  # (B, num_classes)


# %% [markdown]
# ## The network (Table 1 of the paper, in the reference implementation's layout)


# %%
class InceptionV3(nn.Module):
    """stem -> 3 x A (35x35) -> ReductionA -> 4 x B (17x17) [aux] -> ReductionB -> 2 x C (8x8) -> pool -> fc.

    (B, in_channels, 299, 299) -> stem (B, 192, 35, 35) -> (B, 288, 35, 35) -> (B, 768, 17, 17)
    -> (B, 2048, 8, 8) -> (B, 2048) -> (B, num_classes). small_input: grids 13, 6, 2 for a 28x28 image.
    """

    def __init__(self, num_classes=1000, in_channels=3, small_input=False, aux_logits=True, width=1.0):
        super().__init__()
        s = lambda c: max(1, round(c * width))  # noqa: E731  (channel multiplier for CPU runs)
        p = 1 if small_input else 0  # small input: every stem conv padded, none strided, no first max-pool
        self.stem = nn.Sequential(
            conv(in_channels, s(32), 3, stride=1 if small_input else 2, padding=p),  # (B, 32, 149, 149)
            conv(s(32), s(32), 3, padding=p),  # (B, 32, 147, 147)
            conv(s(32), s(64), 3, padding=1),  # (B, 64, 147, 147)
            nn.Identity() if small_input else nn.MaxPool2d(3, 2),  # (B, 64, 73, 73)
            conv(s(64), s(80), 1),  # (B, 80, 73, 73)
            conv(s(80), s(192), 3, padding=p),  # (B, 192, 71, 71)
            nn.MaxPool2d(3, 2),  # (B, 192, 35, 35); small: (B, 192, 13, 13)
        )
        blocks, c = [], s(192)
        for pool_c in (32, 64, 64):  # 35x35: 256, 288, 288 channels
            blocks.append(InceptionA(c, pool_c, s))
            c = blocks[-1].c_out
        blocks.append(ReductionA(c, s))  # -> 17x17, 768 channels
        c = blocks[-1].c_out
        for c7 in (128, 160, 160, 192):  # width of the factorised 7x7 branches
            blocks.append(InceptionB(c, c7, s))
            c = blocks[-1].c_out
        self.blocks17 = nn.Sequential(*blocks)  # (B, 768, 17, 17)
        self.aux = AuxHead(c, num_classes, small_input, s) if aux_logits else None
        blocks = [ReductionB(c, s)]  # -> 8x8, 1280 channels
        for _ in range(2):
            blocks.append(InceptionC(blocks[-1].c_out, s))
        self.blocks8 = nn.Sequential(*blocks)  # (B, 2048, 8, 8)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(blocks[-1].c_out, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight), nn.init.zeros_(m.bias)

    def forward(self, x):  # (B, in_channels, H, W)
        h = self.blocks17(self.stem(x))  # (B, 768, 17, 17)
        aux = self.aux(h) if self.training and self.aux is not None else None
        h = self.blocks8(h)  # (B, 2048, 8, 8)
        logits = self.fc(self.drop(h.mean(dim=(2, 3))))  # global average pool -> (B, num_classes)
        return (logits, aux) if aux is not None else logits


def inception_v3(num_classes=1000, in_channels=3, small_input=False, **config):
    """Inception v3 at 299x299: 27,161,264 parameters with the auxiliary head, 23,834,568 with aux_logits=False."""
    return InceptionV3(num_classes=num_classes, in_channels=in_channels, small_input=small_input, **config)


MODELS = {"inception_v3": inception_v3}


# %% [markdown]
# ## Label-smoothing regularisation (section 7)


# %%
def smoothed_cross_entropy(logits, y, eps=0.1):
    """H(q', p) with q' = (1 - eps) onehot(y) + eps / K: (1 - eps) (-log p_y) + eps mean_k (-log p_k), batch mean.

    logits (B, K), y (B,) -> scalar. eps = 0 is the plain cross-entropy.
    """
    logp = F.log_softmax(logits, dim=1)  # (B, K)
    nll = -logp.gather(1, y[:, None])[:, 0]  # (B,): -log p_y
    uniform = -logp.mean(dim=1)  # (B,): cross-entropy against the uniform distribution u(k) = 1 / K
    return ((1 - eps) * nll + eps * uniform).mean()


def inception_v3_loss(outputs, y, eps=0.1, aux_weight=0.3):
    """Training: LSR(logits) + 0.3 LSR(aux); evaluation (logits only): LSR(logits)."""
    if isinstance(outputs, torch.Tensor):
        return smoothed_cross_entropy(outputs, y, eps)
    logits, aux = outputs
    return smoothed_cross_entropy(logits, y, eps) + aux_weight * smoothed_cross_entropy(aux, y, eps)


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
def train_epoch(model, opt, sched, X, y, mean, std, batch_size, rng, gen, eps=0.1, desc="train"):
    """One pass over (X, y) in shuffled, augmented minibatches; the lr follows `sched` step by step.
    Returns the per-step training losses (label-smoothed, with the auxiliary term)."""
    model.train()
    losses = []
    for idx in tqdm(minibatches(len(X), batch_size, rng), total=-(-len(X) // batch_size), desc=desc,
                    leave=False, disable=not sys.stdout.isatty()):
        idx = torch.from_numpy(idx).to(X.device)
        x = (augment(X[idx], gen) - mean) / std  # (B, 1, 28, 28), standardised after padding with black
        loss = inception_v3_loss(model(x), y[idx], eps)  # LSR(main) + 0.3 LSR(aux) in training mode
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
    """Left: training loss (what SGD minimises) per step and per epoch, test cross-entropy per epoch.
    Right: test accuracy per epoch."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    steps = np.arange(1, len(hist["step_loss"]) + 1) / hist["steps_per_epoch"]  # in epochs
    epochs = np.arange(1, len(hist["test_acc"]) + 1)
    ax1.plot(steps, hist["step_loss"], color="C0", alpha=0.5, lw=0.8, label="smoothed train loss + 0.3 x aux, per step")
    ax1.plot(epochs, hist["train_loss"], "o-", color="C0", label="the same, epoch mean")
    ax1.plot(epochs, hist["test_loss"], "s-", color="C1", label="test cross-entropy, after the epoch")
    ax1.set(xlabel="epoch", ylabel="loss", yscale="log", title=f"{title}: loss")
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
    p.add_argument("--arch", default="inception_v3", choices=sorted(MODELS), help="model (default inception_v3)")
    p.add_argument("--width", type=positive_float, default=None,
                   help="channel multiplier (default 1/8; 1/16 with --smoke)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 3; 1 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="minibatch size (default 128; 32 with --smoke)")
    p.add_argument("--lr", type=positive_float, default=0.1,
                   help="peak SGD learning rate, cosine-decayed (default 0.1)")
    p.add_argument("--weight-decay", type=nonneg_float, default=5e-4, help="L2 weight decay (default 5e-4)")
    p.add_argument("--label-smoothing", type=probability, default=0.1, help="LSR epsilon (default 0.1, the paper's)")
    p.add_argument("--n-train", type=positive_int, default=None,
                   help="training images (default 10000; 2000 with --smoke)")
    p.add_argument("--n-test", type=positive_int, default=None, help="test images (default 10000; 1000 with --smoke)")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seeds weights, minibatch order and augmentation (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where to train (default auto: cuda, then mps, then cpu)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/inception_v3_torch)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = p.parse_args(argv)
    defaults = dict(width=1 / 16, epochs=1, batch_size=32, n_train=2000, n_test=1000) if args.smoke else \
        dict(width=1 / 8, epochs=3, batch_size=128, n_train=10000, n_test=10000)
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
    print(f"inception_v3_torch: {args.arch} width {args.width:g} ({n_params:,} parameters), {len(Xtr)} train / "
          f"{len(Xte)} test images on {device}")

    hist = {"step_loss": [], "train_loss": [], "test_loss": [], "test_acc": [], "epoch_s": [],
            "steps_per_epoch": steps_per_epoch}
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        losses = train_epoch(model, opt, sched, Xtr, ytr, mean, std, args.batch_size, rng, gen,
                             args.label_smoothing, f"epoch {epoch}")
        hist["epoch_s"].append(time.perf_counter() - t0)
        test_loss, test_acc = evaluate(model, Xte, yte, mean, std)
        for key, value in [("train_loss", float(np.mean(losses))), ("test_loss", test_loss), ("test_acc", test_acc)]:
            hist[key].append(value)
        hist["step_loss"] += losses
        print(f"epoch {epoch:2d}/{args.epochs}  train loss {hist['train_loss'][-1]:.4f} | test loss {test_loss:.4f} "
              f"acc {test_acc:.4f} | {hist['epoch_s'][-1]:.1f} s", flush=True)

    plot_learning_curves(hist, out_dir / "learning_curves.png",
                         f"inception_v3_torch {args.arch} (width {args.width:g})")
    metrics = {
        "script": "inception_v3_torch", "arch": args.arch, "test_acc": test_acc, "test_loss": test_loss,
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
