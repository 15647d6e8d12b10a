"""DenseNet-BC (Huang et al. 2017): every layer reads the feature maps of all layers before it, in PyTorch.

What the paper adds. In a ResNet a block adds its output to its input, x_l = x_{l-1} + F_l(x_{l-1}).
In a dense block each layer concatenates: layer l receives the maps of ALL preceding layers of its block,

    x_l = H_l([x_0, x_1, ..., x_{l-1}])        [ ]: concatenation along channels (eq. 2 of the paper)

and adds k new maps of its own (k, the growth rate, is small: 12 to 48). A block of L layers that starts
from c_0 channels ends with c_0 + L k. DenseNet-BC is the efficient version used for ImageNet:
  - B (bottleneck): H_l = BN-ReLU-conv1x1 (-> bn_size k = 4k maps) - BN-ReLU-conv3x3 (-> k maps). The 1x1
    conv caps the cost of a layer whose input has grown to hundreds of channels.
  - C (compression): between blocks a transition, BN-ReLU-conv1x1 (c -> floor(theta c), theta = 0.5) then
    a 2x2 average pool, halves the maps and the channel count.

Why dense connectivity works (sections 3 and 5): a layer need not relearn what earlier layers computed,
it reads it (feature reuse), so layers can be narrow; every layer has a short path to the loss through
the block's output (implicit deep supervision), like ResNet's identity paths; and the parameters go far:
DenseNet-121 has 7,978,856 (1000 classes), under a third of ResNet-50's 25.6M, and in Figure 3
DenseNet-201 (20M) matches the error of ResNet-101 (over 40M). 121 weight layers: the stem conv,
2 x (6 + 12 + 24 + 16) = 116 in the blocks, 3 transitions, the classifier. The concatenation here is
the plain one (`torch.cat` at every layer): memory quadratic in depth; Pleiss et al. share one buffer.

Configurations: blocks (6, 12, 24, 16) DenseNet-121, (6, 12, 32, 32) -169, (6, 12, 48, 32) -201, all with
k = 32; DenseNet-161 has k = 48 and (6, 12, 36, 24). The stem is a 7x7 stride-2 conv with 2k maps, BN,
ReLU, 3x3 stride-2 max-pool; after the last block BN-ReLU, global average pool and a linear layer.
Small input (28x28): a 3x3 stride-1 stem conv with 2k maps and no pool (the paper's CIFAR stem); the
blocks run at 28, 14, 7 and 3 pixels. Init: Kaiming normal (fan_out) convs, BN 1 and 0, zero fc bias.

Reading: G. Huang, Z. Liu, L. van der Maaten and K. Q. Weinberger (2017), "Densely Connected Convolutional
Networks", CVPR, https://arxiv.org/abs/1608.06993 (Table 1: the ImageNet configurations); G. Pleiss et
al. (2017), "Memory-Efficient Implementation of DenseNets", https://arxiv.org/abs/1707.06990.
Arc: Deep convolutional models -- DenseNet.

Run:  python 04-cnns/densenet_torch.py          (DenseNet-121 with k = 8, 6k images, 3 epochs: minutes)
      python 04-cnns/densenet_torch.py --smoke  (seconds: k = 4, 1,000 images, 1 epoch)
      python 04-cnns/densenet_torch.py --arch densenet169 --growth-rate 32 --n-train 60000 --epochs 30 --device cuda
Look first at `DenseBlock.forward`: the list of features that every layer reads and appends to.
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
# ## The pieces: a bottleneck layer, a dense block, a transition


# %%
class DenseLayer(nn.Module):
    """H_l: BN-ReLU-conv1x1 (c_in -> bn_size k) - BN-ReLU-conv3x3 (-> k).  (B, c_in, H, W) -> (B, k, H, W)."""

    def __init__(self, c_in, growth_rate, bn_size):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, bn_size * growth_rate, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, x):
        h = self.conv1(F.relu(self.bn1(x)))  # (B, 4k, H, W): the bottleneck
        return self.conv2(F.relu(self.bn2(h)))  # (B, k, H, W): k new maps


class DenseBlock(nn.Module):
    """n_layers DenseLayers; layer l reads [x_0, ..., x_{l-1}].  (B, c_in, H, W) -> (B, c_in + n k, H, W)."""

    def __init__(self, n_layers, c_in, growth_rate, bn_size):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(c_in + i * growth_rate, growth_rate, bn_size) for i in range(n_layers))

    def forward(self, x):
        features = [x]  # x_0
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))  # x_l = H_l([x_0, ..., x_{l-1}])
        return torch.cat(features, dim=1)


class Transition(nn.Sequential):
    """BN-ReLU-conv1x1 (c_in -> c_out = floor(theta c_in)) - avgpool 2x2.  (B, c_in, H, W) -> (B, c_out, H/2, W/2)."""

    def __init__(self, c_in, c_out):
        super().__init__(nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, c_out, 1, bias=False), nn.AvgPool2d(2))


# %% [markdown]
# ## The network


# %%
class DenseNet(nn.Module):
    """stem -> [dense block -> transition] x (n - 1) -> dense block -> BN-ReLU -> global avg pool -> linear.

    ImageNet: (B, in_channels, 224, 224) -> stem (B, 2k, 56, 56) -> blocks at 56, 28, 14, 7 -> (B, c, 7, 7)
    -> (B, num_classes). small_input: (B, in_channels, 28, 28) -> stem (B, 2k, 28, 28) -> blocks at 28, 14, 7, 3.
    """

    def __init__(self, block_config, growth_rate=32, num_classes=1000, in_channels=3, small_input=False,
                 bn_size=4, compression=0.5, num_init_features=None):
        super().__init__()
        if not 0 < compression <= 1:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        c = num_init_features or 2 * growth_rate  # the paper's BC stem: 2k maps
        if small_input:
            self.stem = nn.Conv2d(in_channels, c, 3, padding=1, bias=False)  # (B, c, 28, 28); BN-ReLU open the block
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 7, 2, padding=3, bias=False), nn.BatchNorm2d(c),
                                      nn.ReLU(), nn.MaxPool2d(3, 2, padding=1))  # (B, c, 56, 56)
        stages = []
        for i, n in enumerate(block_config):
            stages.append(DenseBlock(n, c, growth_rate, bn_size))
            c += n * growth_rate  # each layer adds k maps
            if i < len(block_config) - 1:
                stages.append(Transition(c, int(compression * c)))
                c = int(compression * c)
        self.features = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(c)  # the last block's maps have not been normalised yet
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight), nn.init.zeros_(m.bias)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):  # (B, in_channels, H, W)
        h = F.relu(self.norm(self.features(self.stem(x))))  # (B, c, H/32, W/32), or (B, c, 3, 3) small
        return self.fc(h.mean(dim=(2, 3)))  # (B, num_classes)


def densenet121(num_classes=1000, in_channels=3, small_input=False, **config):
    """DenseNet-121: k = 32, blocks (6, 12, 24, 16) (7,978,856 parameters)."""
    config = {"growth_rate": 32, **config}
    return DenseNet((6, 12, 24, 16), num_classes=num_classes, in_channels=in_channels, small_input=small_input,
                    **config)


def densenet161(num_classes=1000, in_channels=3, small_input=False, **config):
    """DenseNet-161: k = 48, blocks (6, 12, 36, 24), stem of 96 = 2k maps."""
    config = {"growth_rate": 48, **config}
    return DenseNet((6, 12, 36, 24), num_classes=num_classes, in_channels=in_channels, small_input=small_input,
                    **config)


def densenet169(num_classes=1000, in_channels=3, small_input=False, **config):
    """DenseNet-169: k = 32, blocks (6, 12, 32, 32)."""
    config = {"growth_rate": 32, **config}
    return DenseNet((6, 12, 32, 32), num_classes=num_classes, in_channels=in_channels, small_input=small_input,
                    **config)


def densenet201(num_classes=1000, in_channels=3, small_input=False, **config):
    """DenseNet-201: k = 32, blocks (6, 12, 48, 32)."""
    config = {"growth_rate": 32, **config}
    return DenseNet((6, 12, 48, 32), num_classes=num_classes, in_channels=in_channels, small_input=small_input,
                    **config)


MODELS = {f.__name__: f for f in (densenet121, densenet161, densenet169, densenet201)}

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
    p.add_argument("--arch", default="densenet121", choices=sorted(MODELS), help="model (default densenet121)")
    p.add_argument("--growth-rate", type=positive_int, default=None,
                   help="k, maps added per layer (default 8; 4 with --smoke)")
    p.add_argument("--bn-size", type=positive_int, default=4, help="bottleneck width in multiples of k (default 4)")
    p.add_argument("--compression", type=positive_float, default=0.5,
                   help="theta of the transitions, in (0, 1] (default 0.5)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 3; 1 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="minibatch size (default 128; 32 with --smoke)")
    p.add_argument("--lr", type=positive_float, default=0.1,
                   help="peak SGD learning rate, cosine-decayed (default 0.1)")
    p.add_argument("--weight-decay", type=nonneg_float, default=5e-4, help="L2 weight decay (default 5e-4)")
    p.add_argument("--n-train", type=positive_int, default=None,
                   help="training images (default 6000; 1000 with --smoke)")
    p.add_argument("--n-test", type=positive_int, default=None, help="test images (default 10000; 1000 with --smoke)")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seeds weights, minibatch order and augmentation (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where to train (default auto: cuda, then mps, then cpu)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/densenet_torch)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = p.parse_args(argv)
    defaults = dict(growth_rate=4, epochs=1, batch_size=32, n_train=1000, n_test=1000) if args.smoke else \
        dict(growth_rate=8, epochs=3, batch_size=128, n_train=6000, n_test=10000)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not 0 < args.compression <= 1:
        p.error(f"argument --compression: must lie in (0, 1], got {args.compression}")
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
    model = MODELS[args.arch](num_classes=10, in_channels=1, small_input=True, growth_rate=args.growth_rate,
                               bn_size=args.bn_size, compression=args.compression).to(device)
    Xtr, ytr, Xte, yte = (t.to(device) for t in (Xtr, ytr, Xte, yte))
    n_params = sum(q.numel() for q in model.parameters())
    steps_per_epoch = -(-len(Xtr) // args.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * steps_per_epoch)  # per step
    print(f"densenet_torch: {args.arch} k {args.growth_rate} ({n_params:,} parameters), {len(Xtr)} train / "
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

    plot_learning_curves(hist, out_dir / "learning_curves.png", f"densenet_torch {args.arch} (k {args.growth_rate})")
    metrics = {
        "script": "densenet_torch", "arch": args.arch, "test_acc": test_acc, "test_loss": test_loss,
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
