"""VGG (Simonyan and Zisserman 2014): depth from stacks of 3x3 convolutions, in PyTorch, trained on Fashion-MNIST.

What the paper adds. Before VGG, ImageNet networks opened with large kernels (AlexNet: 11x11 stride 4,
then 5x5). VGG fixes every convolution to 3x3, stride 1, padding 1, and gets depth by stacking them,
with a 2x2 max-pool halving the map between stages (and the width doubling, 64 -> 128 -> 256 -> 512):

    A (VGG-11):  64 M 128 M 256 256 M 512 512 M 512 512 M                     8 convs
    B (VGG-13):  64 64 M 128 128 M 256 256 M 512 512 M 512 512 M              10 convs
    D (VGG-16):  64 64 M 128 128 M 256 256 256 M 512 512 512 M 512 512 512 M  13 convs
    E (VGG-19):  64 64 M 128 128 M 256 256 256 256 M 512 x 4 M 512 x 4 M      16 convs
    then FC 4096 - FC 4096 - FC 1000, dropout 0.5 after each hidden FC: 3 more weight layers

Why it works (section 2.3): two stacked 3x3 convolutions see a 5x5 window, three see 7x7, with fewer
weights and more non-linearities: a 7x7 conv from C to C channels has 49 C^2 weights, three 3x3 convs
27 C^2 with a ReLU between each. The same layer everywhere makes depth the one knob.

Counts (1000 classes, 224x224): VGG-11 132,863,336; VGG-16 138,357,544; 102.8M of it in the first FC
layer, 25,088 x 4,096. The `_bn` variants put BatchNorm (Ioffe and Szegedy 2015) after each conv and
keep the conv biases, as torchvision's published counts assume. An adaptive average pool to 7x7 before
the classifier is the identity at 224x224. Initialisation: He (Kaiming normal, fan_out) convs, He
(fan_in) hidden FCs (the paper's N(0, 0.01) shrinks the signal by 0.01 sqrt(fan_in) per layer, fatal
in a narrow net), N(0, 0.01) output layer, zero biases. Without BatchNorm (`--arch vgg11`) the plain
stack trains slowly: the paper initialised deep nets from net A, BN keeps each layer's input standardised.

Small input (`small_input=True`, 28x28): five pools would take 28 to 0, so the first pool is dropped
(28, 28, 14, 7, 3, 1), the classifier pools to 1x1 and its hidden layers have 512 units (times
`width`); `width` scales every channel count for CPU runs.

Reading: K. Simonyan and A. Zisserman (2014), "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015, https://arxiv.org/abs/1409.1556 (Table 1: the configurations; Table 2: counts).
Arc: Deep convolutional models: case studies -- classic networks: VGGNet.

Run:  python 04-cnns/vgg_torch.py          (VGG-11-BN at width 0.25, 10k training images, 3 epochs: minutes)
      python 04-cnns/vgg_torch.py --smoke  (seconds: VGG-11-BN at width 0.125, 2,000 images, 1 epoch)
      python 04-cnns/vgg_torch.py --arch vgg16_bn --width 1 --n-train 60000 --epochs 30 --device cuda
Look first at CONFIGS and `VGG.__init__`: the whole family is one list of widths and pools each.
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
# ## The network: one list per configuration (Table 1 of the paper)


# %%
CONFIGS = {  # output channels of each 3x3 conv; "M" = 2x2 max-pool, stride 2
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """features (3x3 convs + ReLU [+ BN], max-pools) -> adaptive avg-pool -> FC-ReLU-dropout x 2 -> FC.

    (B, in_channels, 224, 224) -> (B, 512, 7, 7) -> (B, num_classes); with small_input
    (B, in_channels, 28, 28) -> (B, 512, 1, 1) -> (B, num_classes). `width` scales all channel counts.
    """

    def __init__(self, cfg, num_classes=1000, in_channels=3, small_input=False, batch_norm=False, width=1.0,
                 dropout=0.5):
        super().__init__()
        layers, c_in = [], in_channels
        if small_input:
            cfg = cfg[:cfg.index("M")] + cfg[cfg.index("M") + 1:]  # drop the first pool: 28 -> 28 after stage 1
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))  # (B, C, H, W) -> (B, C, H/2, W/2), floor
                continue
            c_out = max(1, round(v * width))
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))  # same size: pad 1
            layers += [nn.BatchNorm2d(c_out), nn.ReLU()] if batch_norm else [nn.ReLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        side, hidden = (1, 512) if small_input else (7, 4096)
        hidden = max(1, round(hidden * width))
        self.pool = nn.AdaptiveAvgPool2d(side)  # identity at 224x224 (and at 28x28 with small_input)
        self.classifier = nn.Sequential(
            nn.Linear(c_in * side * side, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):  # hidden FCs: He (fan_in); the output FC: N(0, 0.01), small logits
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight), nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier[-1].weight, 0, 0.01)

    def forward(self, x):  # (B, in_channels, H, W)
        h = self.pool(self.features(x))  # (B, 512, 7, 7), or (B, 512, 1, 1) with small_input
        return self.classifier(h.flatten(1))  # (B, num_classes)


def vgg11(num_classes=1000, in_channels=3, small_input=False, **config):
    """Configuration A: 8 convs + 3 FC = 11 weight layers (132,863,336 parameters)."""
    return VGG(CONFIGS["A"], num_classes, in_channels, small_input, **config)


def vgg13(num_classes=1000, in_channels=3, small_input=False, **config):
    """Configuration B: 10 convs + 3 FC."""
    return VGG(CONFIGS["B"], num_classes, in_channels, small_input, **config)


def vgg16(num_classes=1000, in_channels=3, small_input=False, **config):
    """Configuration D: 13 convs + 3 FC (138,357,544 parameters)."""
    return VGG(CONFIGS["D"], num_classes, in_channels, small_input, **config)


def vgg19(num_classes=1000, in_channels=3, small_input=False, **config):
    """Configuration E: 16 convs + 3 FC."""
    return VGG(CONFIGS["E"], num_classes, in_channels, small_input, **config)


def vgg11_bn(num_classes=1000, in_channels=3, small_input=False, **config):
    """VGG-11 with BatchNorm after each conv (convs keep their bias)."""
    return VGG(CONFIGS["A"], num_classes, in_channels, small_input, batch_norm=True, **config)


def vgg13_bn(num_classes=1000, in_channels=3, small_input=False, **config):
    return VGG(CONFIGS["B"], num_classes, in_channels, small_input, batch_norm=True, **config)


def vgg16_bn(num_classes=1000, in_channels=3, small_input=False, **config):
    return VGG(CONFIGS["D"], num_classes, in_channels, small_input, batch_norm=True, **config)


def vgg19_bn(num_classes=1000, in_channels=3, small_input=False, **config):
    return VGG(CONFIGS["E"], num_classes, in_channels, small_input, batch_norm=True, **config)


MODELS = {f.__name__: f for f in (vgg11, vgg13, vgg16, vgg19, vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn)}


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
    p.add_argument("--arch", default="vgg11_bn", choices=sorted(MODELS), help="configuration (default vgg11_bn)")
    p.add_argument("--width", type=positive_float, default=None,
                   help="channel multiplier (default 0.25; 0.125 with --smoke)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 3; 1 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="minibatch size (default 128; 32 with --smoke)")
    p.add_argument("--lr", type=positive_float, default=0.05,
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
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/vgg_torch)")
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
    print(f"vgg_torch: {args.arch} width {args.width} ({n_params:,} parameters), {len(Xtr)} train / "
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

    plot_learning_curves(hist, out_dir / "learning_curves.png", f"vgg_torch {args.arch} (width {args.width})")
    metrics = {
        "script": "vgg_torch", "arch": args.arch, "test_acc": test_acc, "test_loss": test_loss,
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
