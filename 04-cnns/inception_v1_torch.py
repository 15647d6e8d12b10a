"""GoogLeNet / Inception v1 (Szegedy et al. 2014): parallel 1x1, 3x3, 5x5 and pooling branches, made cheap
by 1x1 convolutions (the Network in Network idea), with two auxiliary classifiers, in PyTorch.

Network in Network (Lin et al. 2013). A 1x1 convolution applies one fully connected layer W (c_out x c_in)
to the channel vector of every pixel; followed by a ReLU it is a small per-pixel MLP (NiN's "mlpconv"):

    y[:, i, j] = W x[:, i, j] + b                      (no spatial mixing; a per-pixel linear layer)

GoogLeNet uses it mostly to REDUCE the channels before an expensive conv. Inception 3a at 28x28 reads 192
channels and its 5x5 branch writes 32: directly, 28*28 * 32*192*25 = 120,422,400 mult-adds and 153,600
weights; with a 1x1 to 16 first, 28*28 * (16*192 + 32*16*25) = 12,443,648 and 15,872: 9.7 times less.
NiN's second idea, global average pooling (one number per final map, then one linear layer), replaces
AlexNet/VGG's huge FC layers (VGG-16's first alone has 102.8M weights; GoogLeNet's classifier 1.0M).

What GoogLeNet adds. The Inception module runs four branches on one input and concatenates them along
channels: a 1x1 conv; 1x1 reduce -> 3x3; 1x1 reduce -> 5x5; 3x3 max-pool -> 1x1 projection (Figure 2b),
so each layer mixes receptive-field sizes at about the cost of a plain conv. Nine modules (Table 1, `MODULES`)
sit between a stem and a global average pool, 22 layers deep. Two auxiliary classifiers on the outputs
of 4a and 4d (5x5/3 avg-pool -> 1x1 conv 128 -> FC 1024 -> dropout 0.7 -> FC) add their losses, weighted
0.3, in training: extra gradient into the middle of the network. `forward` returns (logits, aux1, aux2) in
training mode, the logits alone in eval mode; `googlenet_loss` is the weighted sum.

Counts (1000 classes, 224x224; convs without bias, then BatchNorm (eps 1e-3) and ReLU, as every modern
reimplementation; the paper predates BN): paper's 5x5 convs 7,005,832 (13,385,816 with the auxiliary
heads); torchvision, whose "5x5" branch is a 3x3 (`googlenet(kernel5=3)`), 6,624,904 (13,004,888). The
difference, 25 - 9 = 16 weights per (reduce, out) channel pair over the nine modules:
    16 * (16*32 + 32*96 + 16*48 + 24*64 + 24*64 + 32*64 + 32*128 + 32*128 + 48*128) = 16 * 23,808 = 380,928.
Compute at 224x224: 1.58 billion mult-adds, 1.50 billion with the 3x3 (the paper's "1.5 billion").
Small input (28x28): the stem's 7x7/2 conv becomes 3x3 stride 1 and its first max-pool goes; the modules
run at 14, 7 and 3 pixels. Init: Kaiming normal (fan_out) convs, BN 1 and 0. `width` scales channels.

Reading: C. Szegedy, W. Liu, Y. Jia et al. (2014), "Going Deeper with Convolutions", CVPR 2015,
https://arxiv.org/abs/1409.4842 (Figure 2: the module; Table 1: the configuration; section 5: auxiliary
classifiers); M. Lin, Q. Chen and S. Yan (2013), "Network In Network", https://arxiv.org/abs/1312.4400.
Arc: Deep convolutional models: case studies II -- Inception Network (V1); Network in Network: 1x1 convolutions.

Run:  python 04-cnns/inception_v1_torch.py          (GoogLeNet at width 1/8, 10k images, 3 epochs: minutes)
      python 04-cnns/inception_v1_torch.py --smoke  (seconds: width 1/8, 1,000 images, 1 epoch)
      python 04-cnns/inception_v1_torch.py --width 1 --n-train 60000 --epochs 30 --device cuda
Look first at `Inception.forward` (four branches, one concatenation), then at `googlenet_loss`.
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
# ## Building blocks: conv-BN-ReLU, the Inception module, the auxiliary classifier


# %%
def conv(c_in, c_out, k, stride=1, padding=0):
    """Conv (no bias: BN's shift replaces it) -> BatchNorm -> ReLU. k = 1 is NiN's per-pixel linear layer."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, padding, bias=False), nn.BatchNorm2d(c_out, eps=1e-3),
                         nn.ReLU(inplace=True))


class Inception(nn.Module):
    """Figure 2(b): [1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max-pool -> 1x1], concatenated along channels.

    (B, c_in, H, W) -> (B, c1 + c3 + c5 + cp, H, W); every branch keeps H and W (padding k // 2).
    """

    def __init__(self, c_in, c1, c3_red, c3, c5_red, c5, cp, kernel5=5):
        super().__init__()
        self.b1 = conv(c_in, c1, 1)
        self.b3 = nn.Sequential(conv(c_in, c3_red, 1), conv(c3_red, c3, 3, padding=1))  # reduce, then 3x3
        self.b5 = nn.Sequential(conv(c_in, c5_red, 1), conv(c5_red, c5, kernel5, padding=kernel5 // 2))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, padding=1), conv(c_in, cp, 1))  # pool, then project

    def forward(self, x):  # (B, c_in, H, W)
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1)  # (B, c1+c3+c5+cp, H, W)


class AuxHead(nn.Module):
    """Section 5: 5x5/3 average pool (14x14 -> 4x4) -> 1x1 conv 128 -> FC 1024 -> ReLU -> dropout 0.7 -> FC.

    (B, c_in, 14, 14) -> (B, num_classes). small_input: the 7x7 map is pooled to 4x4 adaptively instead.
    """

    def __init__(self, c_in, num_classes, small_input=False, c=128, hidden=1024):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4) if small_input else nn.AvgPool2d(5, 3)  # (B, c_in, 4, 4)
        self.conv = conv(c_in, c, 1)  # (B, c, 4, 4)
        self.fc1 = nn.Linear(16 * c, hidden)
        self.drop = nn.Dropout(0.7)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        h = self.conv(self.pool(x)).flatten(1)  # (B, 16 c)
        return self.fc2(self.drop(F.relu(self.fc1(h))))  # (B, num_classes)


# %% [markdown]
# ## The network (Table 1)


# %%
# Table 1: name -> (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj); "M" = 3x3 stride-2 max-pool
MODULES = [
    ("3a", (64, 96, 128, 16, 32, 32)),
    ("3b", (128, 128, 192, 32, 96, 64)),
    "M",
    ("4a", (192, 96, 208, 16, 48, 64)),
    ("4b", (160, 112, 224, 24, 64, 64)),
    ("4c", (128, 128, 256, 24, 64, 64)),
    ("4d", (112, 144, 288, 32, 64, 64)),
    ("4e", (256, 160, 320, 32, 128, 128)),
    "M",
    ("5a", (256, 160, 320, 32, 128, 128)),
    ("5b", (384, 192, 384, 48, 128, 128)),
]


class GoogLeNet(nn.Module):
    """stem -> 3a 3b pool 4a .. 4e pool 5a 5b -> global average pool -> dropout 0.4 -> linear.

    ImageNet: (B, in_channels, 224, 224) -> stem 7x7/2, pool, 1x1 64, 3x3 192, pool (B, 192, 28, 28) -> 3x at 28,
    4x at 14, 5x at 7 -> (B, 1024) -> (B, num_classes). small_input: 3x3/1 conv, no first pool: 3x at 14, 4x at
    7, 5x at 3. Training mode with aux_logits: returns (logits, aux1 (after 4a), aux2 (after 4d)).
    """

    def __init__(self, num_classes=1000, in_channels=3, small_input=False, aux_logits=True, kernel5=5, width=1.0):
        super().__init__()
        scale = lambda c: max(1, round(c * width))  # noqa: E731  (channel multiplier for CPU runs)
        c64, c192 = scale(64), scale(192)
        if small_input:
            first = [conv(in_channels, c64, 3, padding=1)]  # (B, 64, 28, 28)
        else:
            first = [conv(in_channels, c64, 7, 2, padding=3), nn.MaxPool2d(3, 2, ceil_mode=True)]  # (B, 64, 56, 56)
        self.stem = nn.Sequential(*first, conv(c64, c64, 1), conv(c64, c192, 3, padding=1),
                                  nn.MaxPool2d(3, 2, ceil_mode=True))  # (B, 192, 28, 28); small: (B, 192, 14, 14)
        blocks, c, widths = {}, c192, {}
        for i, m in enumerate(MODULES):
            if m == "M":
                blocks[f"pool{i}"] = nn.MaxPool2d(3, 2, ceil_mode=True)  # 28 -> 14 -> 7 (small: 14 -> 7 -> 3)
                continue
            name, cfg = m
            cfg = [scale(v) for v in cfg]
            blocks[name] = Inception(c, *cfg, kernel5=kernel5)
            c = widths[name] = cfg[0] + cfg[2] + cfg[4] + cfg[5]  # concatenated output channels
        self.blocks = nn.ModuleDict(blocks)
        self.aux1 = self.aux2 = None  # on the outputs of 4a (512 channels) and 4d (528)
        if aux_logits:
            self.aux1, self.aux2 = (AuxHead(widths[n], num_classes, small_input, scale(128), scale(1024))
                                    for n in ("4a", "4d"))
        self.drop = nn.Dropout(0.4)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight), nn.init.zeros_(m.bias)

    def forward(self, x):  # (B, in_channels, H, W)
        h, aux = self.stem(x), []
        for name, block in self.blocks.items():
            h = block(h)
            if self.training and self.aux1 is not None and name in ("4a", "4d"):
                aux.append((self.aux1 if name == "4a" else self.aux2)(h))  # (B, num_classes)
        logits = self.fc(self.drop(h.mean(dim=(2, 3))))  # global average pool (B, 1024) -> (B, num_classes)
        return (logits, *aux) if aux else logits


def googlenet(num_classes=1000, in_channels=3, small_input=False, **config):
    """GoogLeNet, Table 1 with the paper's 5x5 convs and both auxiliary heads: 13,385,816 parameters
    (7,005,832 with aux_logits=False; kernel5=3 gives torchvision's 13,004,888 / 6,624,904)."""
    return GoogLeNet(num_classes=num_classes, in_channels=in_channels, small_input=small_input, **config)


MODELS = {"googlenet": googlenet}


def googlenet_loss(outputs, y, aux_weight=0.3):
    """Training: CE(logits) + 0.3 (CE(aux1) + CE(aux2)) (section 5); evaluation (logits only): CE(logits)."""
    if isinstance(outputs, torch.Tensor):
        return F.cross_entropy(outputs, y)
    logits, *aux = outputs
    return F.cross_entropy(logits, y) + aux_weight * sum(F.cross_entropy(a, y) for a in aux)


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
    Returns the per-step training losses (with the auxiliary terms)."""
    model.train()
    losses = []
    for idx in tqdm(minibatches(len(X), batch_size, rng), total=-(-len(X) // batch_size), desc=desc,
                    leave=False, disable=not sys.stdout.isatty()):
        idx = torch.from_numpy(idx).to(X.device)
        x = (augment(X[idx], gen) - mean) / std  # (B, 1, 28, 28), standardised after padding with black
        loss = googlenet_loss(model(x), y[idx])  # main + 0.3 (aux1 + aux2) in training mode
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
    ax1.plot(steps, hist["step_loss"], color="C0", alpha=0.5, lw=0.8,
             label="train loss with 0.3 x aux losses, per step")
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
    p.add_argument("--arch", default="googlenet", choices=sorted(MODELS), help="model (default googlenet)")
    p.add_argument("--width", type=positive_float, default=None,
                   help="channel multiplier (default and with --smoke 1/8)")
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
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/inception_v1_torch)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = p.parse_args(argv)
    defaults = dict(width=1 / 8, epochs=1, batch_size=32, n_train=1000, n_test=1000) if args.smoke else \
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
    print(f"inception_v1_torch: {args.arch} width {args.width:g} ({n_params:,} parameters), {len(Xtr)} train / "
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
                         f"inception_v1_torch {args.arch} (width {args.width:g})")
    metrics = {
        "script": "inception_v1_torch", "arch": args.arch, "test_acc": test_acc, "test_loss": test_loss,
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
