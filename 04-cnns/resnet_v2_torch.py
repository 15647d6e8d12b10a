"""Pre-activation ResNet (He et al. 2016, "Identity Mappings in Deep Residual Networks"), in PyTorch.

What the paper adds. The original residual unit computes y = ReLU(x + F(x)), with F = conv-BN-ReLU-conv-BN:
the ReLU after the addition sits on the shortcut, so the signal that crosses a unit is changed by it.
The paper moves BN and ReLU to the front of F ("pre-activation"), and leaves the shortcut clean:

    x_{l+1} = x_l + F(x_l, W_l),    F = conv(ReLU(BN(conv(ReLU(BN(x_l))))))     (basic unit; eq. 1-2)

Unrolled from a shallow unit l to a deep unit L, this is a sum (eq. 4), and so is the gradient (eq. 5):
    x_L = x_l + sum_{i=l}^{L-1} F(x_i, W_i),    dE/dx_l = dE/dx_L * (1 + d/dx_l sum_{i=l}^{L-1} F(x_i, W_i))

The "1" carries dE/dx_L to every unit unchanged, through no weight and no non-linearity: it cannot vanish,
whatever the weights (the other term would have to be exactly -1 for every example of a minibatch).
Anything on the shortcut breaks this: a scaling lambda gives prod lambda_i (vanishing or exploding,
section 3), and a ReLU after the addition (the original design) truncates the signal at every unit; the
paper's ResNet-1001 on CIFAR-10 trains to a markedly lower error with pre-activation units (Table 3).

Why identity shortcuts help at all (UDL chapter 11; Balduzzi et al. 2017): the input gradient of a deep
plain network "shatters" (its correlation between neighbouring inputs decays exponentially with depth,
only like 1 / sqrt(depth) in a residual one). Pre-activation also normalises every weight layer's input.

The ordering here: every unit is BN-ReLU-conv(-BN-ReLU-conv ...) with nothing after the addition. The
first unit's pre-activation is the stem's BN-ReLU (section 4.1); after the last unit an extra BN-ReLU
comes before pooling. Projection shortcuts (1x1 conv, stride 2) read the pre-activated input.
ImageNet models keep ResNet v1's layout: stem 7x7/2 + max-pool 3x3/2; basic units (2,2,2,2) and (3,4,6,3)
for 18 and 34, bottleneck units (3,4,6,3), (3,4,23,3), (3,8,36,3) for 50, 101, 152; widths 64 -> 512.
The paper's CIFAR models: a 3x3 stem of 16, stages of 16 / 32 / 64 channels, preact_resnet110 (18 basic
units per stage) and preact_resnet164 (18 bottleneck units), both 1.7M parameters (Table 3). Small input
(28x28): a 3x3 stride-1 stem, no max-pool; `width` scales channels. Init: Kaiming normal convs, BN 1 and 0.

Reading: K. He, X. Zhang, S. Ren and J. Sun (2016), "Identity Mappings in Deep Residual Networks", ECCV,
https://arxiv.org/abs/1603.05027 (Figure 4e: the full pre-activation unit; eq. 4-5); D. Balduzzi et al.
(2017), "The Shattered Gradients Problem", ICML, https://arxiv.org/abs/1702.08591; S. J. D. Prince
(2023), "Understanding Deep Learning", chapter 11, https://udlbook.github.io/udlbook/.
Arc: Deep convolutional models: case studies -- ResNets: ResNet v2 (pre-activation).

Run:  python 04-cnns/resnet_v2_torch.py          (preact_resnet18 at width 1/4, 10k images, 3 epochs: minutes)
      python 04-cnns/resnet_v2_torch.py --smoke  (seconds: width 1/8, 2,000 images, 1 epoch)
      python 04-cnns/resnet_v2_torch.py --arch preact_resnet164 --width 1 --n-train 60000 --device cuda
Look first at `PreActBlock.forward`: the addition is the last thing a unit does; nothing touches x.
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
# ## The units: BN-ReLU-conv twice (basic) or three times (bottleneck), then x + F(x)


# %%
class PreActBlock(nn.Module):
    """x + conv3x3(ReLU(BN(conv3x3(ReLU(BN(x)))))).   (B, c_in, H, W) -> (B, c_out, H/stride, W/stride).

    preact=False: the caller has already applied BN-ReLU (the first unit after the stem), so the unit
    does not repeat it. A projection shortcut (1x1 conv) replaces x where the shape changes.
    """

    expansion = 1

    def __init__(self, c_in, planes, stride=1, preact=True):
        super().__init__()
        c_out = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(c_in) if preact else None
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, c_out, 3, padding=1, bias=False)
        self.shortcut = None if stride == 1 and c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):  # (B, c_in, H, W)
        a = F.relu(self.bn1(x)) if self.bn1 is not None else x  # pre-activation
        h = self.conv1(a)  # (B, planes, H/s, W/s)
        h = self.conv2(F.relu(self.bn2(h)))  # (B, c_out, H/s, W/s) = F(x)
        return (x if self.shortcut is None else self.shortcut(a)) + h  # nothing after the addition


class PreActBottleneck(nn.Module):
    """x + conv1x1(ReLU(BN(conv3x3(ReLU(BN(conv1x1(ReLU(BN(x))))))))), planes -> 4 planes outputs.

    (B, c_in, H, W) -> (B, 4 planes, H/stride, W/stride); the stride sits in the 3x3 conv.
    """

    expansion = 4

    def __init__(self, c_in, planes, stride=1, preact=True):
        super().__init__()
        c_out = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(c_in) if preact else None
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.shortcut = None if stride == 1 and c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):  # (B, c_in, H, W)
        a = F.relu(self.bn1(x)) if self.bn1 is not None else x
        h = self.conv1(a)  # (B, planes, H, W)
        h = self.conv2(F.relu(self.bn2(h)))  # (B, planes, H/s, W/s)
        h = self.conv3(F.relu(self.bn3(h)))  # (B, 4 planes, H/s, W/s)
        return (x if self.shortcut is None else self.shortcut(a)) + h


# %% [markdown]
# ## The network: stem (conv-BN-ReLU), stages of units, a final BN-ReLU, pool, linear


# %%
class PreActResNet(nn.Module):
    """ImageNet: (B, in_channels, 224, 224) -> stem 7x7/2, BN-ReLU, max-pool (B, 64, 56, 56) -> stages at 56, 28,
    14, 7 -> BN-ReLU -> pool -> (B, num_classes). small_input or cifar: a 3x3 stride-1 stem, no max-pool.
    cifar: the paper's CIFAR layout (stem of 16, stage widths 16 / 32 / 64) whatever small_input says.
    """

    def __init__(self, block, layers, num_classes=1000, in_channels=3, small_input=False, widths=(64, 128, 256, 512),
                 stem_width=64, cifar=False, width=1.0):
        super().__init__()
        scale = lambda c: max(1, round(c * width))  # noqa: E731  (channel multiplier for CPU runs)
        c = scale(stem_width)
        if small_input or cifar:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                      nn.ReLU())  # (B, c, H, W); this BN-ReLU is the first unit's pre-activation
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 7, 2, padding=3, bias=False), nn.BatchNorm2d(c),
                                      nn.ReLU(), nn.MaxPool2d(3, 2, padding=1))  # (B, c, H/4, W/4)
        units = []
        for i, (n, planes) in enumerate(zip(layers, widths)):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                units.append(block(c, scale(planes), stride, preact=bool(units)))  # the first: the stem's BN-ReLU
                c = scale(planes) * block.expansion
        self.stages = nn.Sequential(*units)
        self.norm = nn.BatchNorm2d(c)  # the extra BN-ReLU after the last unit (section 4.1)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight), nn.init.zeros_(m.bias)

    def forward(self, x):  # (B, in_channels, H, W)
        h = F.relu(self.norm(self.stages(self.stem(x))))  # (B, c, 7, 7) at 224; (B, c, 4, 4) small, 28x28
        return self.fc(h.mean(dim=(2, 3)))  # global average pool -> (B, num_classes)


def _imagenet(block, layers, num_classes, in_channels, small_input, config):
    return PreActResNet(block, layers, num_classes, in_channels, small_input, **config)


def preact_resnet18(num_classes=1000, in_channels=3, small_input=False, **config):
    """Basic units, (2, 2, 2, 2) per stage: ResNet-18's layout, pre-activated."""
    return _imagenet(PreActBlock, (2, 2, 2, 2), num_classes, in_channels, small_input, config)


def preact_resnet34(num_classes=1000, in_channels=3, small_input=False, **config):
    """Basic units, (3, 4, 6, 3)."""
    return _imagenet(PreActBlock, (3, 4, 6, 3), num_classes, in_channels, small_input, config)


def preact_resnet50(num_classes=1000, in_channels=3, small_input=False, **config):
    """Bottleneck units, (3, 4, 6, 3)."""
    return _imagenet(PreActBottleneck, (3, 4, 6, 3), num_classes, in_channels, small_input, config)


def preact_resnet101(num_classes=1000, in_channels=3, small_input=False, **config):
    """Bottleneck units, (3, 4, 23, 3)."""
    return _imagenet(PreActBottleneck, (3, 4, 23, 3), num_classes, in_channels, small_input, config)


def preact_resnet152(num_classes=1000, in_channels=3, small_input=False, **config):
    """Bottleneck units, (3, 8, 36, 3)."""
    return _imagenet(PreActBottleneck, (3, 8, 36, 3), num_classes, in_channels, small_input, config)


def preact_resnet110(num_classes=1000, in_channels=3, small_input=False, **config):
    """CIFAR, 6n+2 = 110 layers: 3 stages of n = 18 basic units, 16 / 32 / 64 channels (1.7M with 10 classes)."""
    config = {"widths": (16, 32, 64), "stem_width": 16, "cifar": True, **config}
    return PreActResNet(PreActBlock, (18, 18, 18), num_classes, in_channels, small_input, **config)


def preact_resnet164(num_classes=1000, in_channels=3, small_input=False, **config):
    """CIFAR, 9n+2 = 164 layers: 3 stages of n = 18 bottleneck units, outputs 64 / 128 / 256 (1.7M, 10 classes)."""
    config = {"widths": (16, 32, 64), "stem_width": 16, "cifar": True, **config}
    return PreActResNet(PreActBottleneck, (18, 18, 18), num_classes, in_channels, small_input, **config)


MODELS = {f.__name__: f for f in (preact_resnet18, preact_resnet34, preact_resnet50, preact_resnet101,
                                  preact_resnet152, preact_resnet110, preact_resnet164)}

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
    p.add_argument("--arch", default="preact_resnet18", choices=sorted(MODELS), help="model (default preact_resnet18)")
    p.add_argument("--width", type=positive_float, default=None,
                   help="channel multiplier (default 1/4; 1/8 with --smoke)")
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
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/resnet_v2_torch)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = p.parse_args(argv)
    defaults = dict(width=0.125, epochs=1, batch_size=32, n_train=2000, n_test=1000) if args.smoke else \
        dict(width=0.25, epochs=3, batch_size=128, n_train=10000, n_test=10000)
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
    print(f"resnet_v2_torch: {args.arch} width {args.width:g} ({n_params:,} parameters), {len(Xtr)} train / "
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

    plot_learning_curves(hist, out_dir / "learning_curves.png", f"resnet_v2_torch {args.arch} (width {args.width:g})")
    metrics = {
        "script": "resnet_v2_torch", "arch": args.arch, "test_acc": test_acc, "test_loss": test_loss,
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
