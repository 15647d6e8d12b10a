"""ResNet (He et al. 2015) in PyTorch, trained on Fashion-MNIST by the project's complete training script.

BasicBlock and Bottleneck, the ImageNet ResNet-18..152 and the paper's CIFAR ResNet-20..110; the trainer `run`
adds hand-written augmentation, warm-up + cosine SGD, label smoothing, bf16, checkpoints with exact resume, a
NaN guard and multi-process DistributedDataParallel. Plain nets get worse as they get deeper, with higher
*training* error (the degradation problem, Figure 1), though the extra layers could learn the identity.
A residual block makes the identity the default; the layers learn only the residual F(x) = H(x) - x:

    y = ReLU(F(x) + x)             identity shortcut (eq. 1)
    y = ReLU(F(x) + W_s x)         projection shortcut (eq. 2), where the shape changes
    dL/dx = dL/dy (I + dF/dx)      the gradient reaches every earlier block through the identity, intact
    lr(s) = peak (s + 1) / W  for s < W,   peak (1 + cos(pi (s - W) / (T - W))) / 2  after   (step s of T)

ImageNet models (Table 1): 7x7/2 stem and 3x3/2 max-pool, four stages of widths 64..512 at 56..7 pixels,
BasicBlock [3x3, 3x3] (18, 34) or Bottleneck [1x1 w, 3x3 w, 1x1 4w] (50, 101, 152), projection shortcuts
(option B), the Bottleneck's stride in its 3x3 (v1.5). CIFAR models (section 4.2), depth 6n + 2: three stages
of n BasicBlocks at 16, 32, 64 channels, option A shortcuts (subsampled identity, zero channels appended: no
parameters). small_input (28x28): a 3x3/1 stem, no max-pool. Every epoch writes checkpoint.pt atomically, and
each epoch's minibatches and augmentation come from (seed, epoch) alone, so `--resume` reaches the same
weights (same device and precision); it refuses a checkpoint trained with other values of the recipe flags.
Ctrl-C stops with the command that resumes; a non-finite loss stops before it reaches weights or checkpoint.

Reading: K. He, X. Zhang, S. Ren and J. Sun (2015), "Deep Residual Learning for Image Recognition", CVPR 2016,
https://arxiv.org/abs/1512.03385; D. Balduzzi et al. (2017), "The Shattered Gradients Problem",
https://arxiv.org/abs/1702.08591; S. J. D. Prince (2023), "Understanding Deep Learning", chapter 11
"Residual networks", https://udlbook.github.io/udlbook/; P. Goyal et al. (2017), "Accurate, Large Minibatch
SGD" (warm-up), https://arxiv.org/abs/1706.02677; PyTorch DDP tutorial,
https://docs.pytorch.org/tutorials/intermediate/ddp_tutorial.html.
Arc: Deep convolutional models: case studies -- ResNets (and the project's flagship trainer).

Run:  python 04-cnns/resnet_torch.py --smoke      (seconds: 2k images, ResNet-20 at width 8, 1 epoch)
      python 04-cnns/resnet_torch.py --arch resnet18 --epochs 40 --device cuda     (add --resume to continue)
      torchrun --nproc_per_node 2 04-cnns/resnet_torch.py    (ResNet-20, 4 epochs, data-parallel on 2 processes)
Look first at `BasicBlock.forward` (the residual in one line: out + self.shortcut(x)), then at the training
loop in `run`.
"""

# %%
import argparse
import math
import os
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from data import (
    DataError,
    fashion_mnist,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    probability,
    save_metrics,
)

# %% [markdown]
# ## Residual blocks


# %%
def conv_bn(c_in, c_out, k, stride=1):
    """conv k x k (no bias: the BN after it has a shift) followed by BatchNorm."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, bias=False), nn.BatchNorm2d(c_out))


class PadShortcut(nn.Module):
    """Option A: the identity, subsampled by `stride` and zero-padded from c_in to c_out channels; no parameters."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.pad, self.stride = c_out - c_in, stride

    def forward(self, x):  # (B, c_in, H, W) -> (B, c_out, H / stride, W / stride)
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.pad))  # zeros appended on the channel axis


def shortcut(c_in, c_out, stride, option):
    """x itself when the shape is kept; else option "A" (zero padding) or "B" (projection: 1x1 conv + BN, eq. 2)."""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return PadShortcut(c_in, c_out, stride) if option == "A" else conv_bn(c_in, c_out, 1, stride)


class BasicBlock(nn.Module):
    """y = ReLU(F(x) + shortcut(x)), F = conv3x3 - BN - ReLU - conv3x3 - BN. Output width `width` (expansion 1)."""

    expansion = 1

    def __init__(self, c_in, width, stride=1, option="B"):
        super().__init__()
        self.conv1 = conv_bn(c_in, width, 3, stride)  # the stride, if any, halves H and W here
        self.conv2 = conv_bn(width, width, 3)
        self.shortcut = shortcut(c_in, width, stride, option)

    def forward(self, x):  # (B, c_in, H, W) -> (B, width, H / stride, W / stride)
        out = self.conv2(F.relu(self.conv1(x)))  # F(x)
        return F.relu(out + self.shortcut(x))  # the residual connection


class Bottleneck(nn.Module):
    """F = 1x1 (reduce to width) - 3x3 (stride) - 1x1 (restore to 4 * width), each with BN, ReLU between."""

    expansion = 4

    def __init__(self, c_in, width, stride=1, option="B"):
        super().__init__()
        self.conv1 = conv_bn(c_in, width, 1)
        self.conv2 = conv_bn(width, width, 3, stride)  # v1.5: the stride in the 3x3, not the first 1x1
        self.conv3 = conv_bn(width, 4 * width, 1)
        self.shortcut = shortcut(c_in, 4 * width, stride, option)

    def forward(self, x):  # (B, c_in, H, W) -> (B, 4 width, H / stride, W / stride)
        out = self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


# %% [markdown]
# ## The networks


# %%
class ResNet(nn.Module):
    """stem - stages of residual blocks (the first block of every stage but the first has stride 2) - pool - fc.

    blocks: blocks per stage; widths: the blocks' width per stage; stem: "imagenet" (7x7/2 conv, 3x3/2
    max-pool) or "small" (3x3/1 conv, no pool); option: "A" or "B" shortcuts where the shape changes.
    """

    def __init__(self, block, blocks, widths, num_classes=1000, in_channels=3, stem="imagenet", option="B"):
        super().__init__()
        c = widths[0]
        if stem == "imagenet":  # (B, C, 224, 224) -> (B, 64, 112, 112) -> (B, 64, 56, 56)
            self.stem = nn.Sequential(conv_bn(in_channels, c, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1))
        else:  # (B, C, 28, 28) -> (B, c, 28, 28)
            self.stem = nn.Sequential(conv_bn(in_channels, c, 3), nn.ReLU())
        stages = []
        for i, (n, w) in enumerate(zip(blocks, widths)):
            stage = []
            for j in range(n):
                stage.append(block(c, w, 2 if i > 0 and j == 0 else 1, option))
                c = w * block.expansion
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He et al. 2015 (arXiv:1502.01852), preserving the backward variance
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight), nn.init.zeros_(m.bias)

    def forward(self, x):  # (B, C, H, W) -> (B, num_classes)
        x = self.stages(self.stem(x))  # (B, c, H / 32, W / 32) for the ImageNet stem
        return self.fc(x.mean(dim=(2, 3)))  # global average pool -> (B, c)


def imagenet_resnet(block, blocks, num_classes, in_channels, small_input, width):
    """ImageNet ResNet of Table 1; `width` is the first stage's (64), doubled at every following stage."""
    return ResNet(block, blocks, [width, 2 * width, 4 * width, 8 * width], num_classes, in_channels,
                  "small" if small_input else "imagenet")


def resnet18(num_classes=1000, in_channels=3, small_input=False, width=64):
    return imagenet_resnet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, small_input, width)


def resnet34(num_classes=1000, in_channels=3, small_input=False, width=64):
    return imagenet_resnet(BasicBlock, [3, 4, 6, 3], num_classes, in_channels, small_input, width)


def resnet50(num_classes=1000, in_channels=3, small_input=False, width=64):
    return imagenet_resnet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, small_input, width)


def resnet101(num_classes=1000, in_channels=3, small_input=False, width=64):
    return imagenet_resnet(Bottleneck, [3, 4, 23, 3], num_classes, in_channels, small_input, width)


def resnet152(num_classes=1000, in_channels=3, small_input=False, width=64):
    return imagenet_resnet(Bottleneck, [3, 8, 36, 3], num_classes, in_channels, small_input, width)


def cifar_resnet(depth, num_classes=1000, in_channels=3, small_input=True, width=16):
    """The paper's CIFAR ResNet (section 4.2) of depth 6n + 2: stages of n BasicBlocks at width, 2 width, 4 width,
    option A shortcuts. It is a small-input net already: `small_input` is accepted for a uniform signature and
    changes nothing."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, [n, n, n], [width, 2 * width, 4 * width], num_classes, in_channels, "small", "A")


def resnet20(num_classes=1000, in_channels=3, small_input=True, width=16):
    return cifar_resnet(20, num_classes, in_channels, small_input, width)


def resnet32(num_classes=1000, in_channels=3, small_input=True, width=16):
    return cifar_resnet(32, num_classes, in_channels, small_input, width)


def resnet44(num_classes=1000, in_channels=3, small_input=True, width=16):
    return cifar_resnet(44, num_classes, in_channels, small_input, width)


def resnet56(num_classes=1000, in_channels=3, small_input=True, width=16):
    return cifar_resnet(56, num_classes, in_channels, small_input, width)


def resnet110(num_classes=1000, in_channels=3, small_input=True, width=16):
    return cifar_resnet(110, num_classes, in_channels, small_input, width)


MODELS = {f.__name__: f for f in [resnet18, resnet34, resnet50, resnet101, resnet152,
                                  resnet20, resnet32, resnet44, resnet56, resnet110]}
CIFAR = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]  # first-stage width 16; the others 64

# %% [markdown]
# ## Data: Fashion-MNIST, hand-written augmentation, this rank's minibatches


# %%
def load_data(data_dir=None, n_train=None, smoke=False):
    """Training and test images as float32 (N, 1, 28, 28) in [0, 1], labels int64, and the training set's
    pixel mean and std (the standardisation is applied after augmentation, so padding is black)."""
    Xtr, ytr = fashion_mnist("train", data_dir)
    Xte, yte = fashion_mnist("test", data_dir)
    if n_train is None:
        n_train = 2048 if smoke else len(Xtr)
    Xtr, ytr = Xtr[:n_train], ytr[:n_train]
    if smoke:
        Xte, yte = Xte[:500], yte[:500]
    Xtr = Xtr.reshape(len(Xtr), 1, 28, 28).astype(np.float32) / 255
    Xte = Xte.reshape(len(Xte), 1, 28, 28).astype(np.float32) / 255
    return Xtr, ytr.astype(np.int64), Xte, yte.astype(np.int64), float(Xtr.mean()), float(Xtr.std())


def augment(x, gen, pad=2):
    """Random crop of the zero-padded image and a random horizontal flip, per image; random numbers from `gen`.

    x (B, C, H, W) -> (B, C, H, W). Image b is read from rows i_b .. i_b + H - 1 and columns j_b .. j_b + W - 1
    of the padded image, with i_b, j_b uniform in {0, ..., 2 pad}: shifts of up to `pad` pixels either way.
    """
    B, C, H, W = x.shape
    i, j = (torch.randint(0, 2 * pad + 1, (2, B), generator=gen)).to(x.device)
    flip = (torch.rand(B, generator=gen) < 0.5).to(x.device)
    xp = F.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2 pad, W + 2 pad), zeros around
    rows = i[:, None] + torch.arange(H, device=x.device)  # (B, H)
    cols = j[:, None] + torch.arange(W, device=x.device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flipped image reads its columns backwards
    b = torch.arange(B, device=x.device)
    crop = xp[b[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C): indexed axes come first
    return crop.permute(0, 3, 1, 2).contiguous()


def epoch_batches(n, batch_size, seed, epoch, rank=0, world=1):
    """This rank's minibatches of one epoch, from a permutation that depends on (seed, epoch) alone.

    Every rank draws the same permutation and takes every world-th index of it, so the shards are disjoint and
    each step's global batch of `batch_size` is split evenly; the last n % world indices of the permutation
    (a different few each epoch) are left out so that every rank runs the same number of steps.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n)
    mine = order[rank : n - n % world : world]
    b = batch_size // world
    return [mine[s : s + b] for s in range(0, len(mine), b)]


# %% [markdown]
# ## Training pieces: schedule, evaluation, checkpoints, distributed setup


# %%
# The cosine schedule, as taught in 04-cnns/cnn_numpy.py (here per step, after a linear warm-up).
def warmup_cosine(step, warmup, total):
    """lr multiplier of optimizer step `step` (from 0): linear warm-up to 1 over `warmup` steps, cosine to 0 after.

    Warm-up (Goyal et al. 2017): the first steps from a random init have large, erratic gradients, and
    BN's statistics are still settling; a full learning rate at once can throw the weights far away.
    """
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def evaluate(net, X, y, mean, std, amp, rank=0, world=1, chunk=1000):
    """Mean loss (no label smoothing) and accuracy on (X, y); each rank scores every world-th example and the
    sums are all-reduced, so every rank returns the numbers of the whole set."""
    net.eval()
    X, y = X[rank::world], y[rank::world]
    sums = torch.zeros(3, device=X.device)  # summed loss, correct, count
    for s in range(0, len(X), chunk):
        with torch.autocast(X.device.type, torch.bfloat16, enabled=amp):
            logits = net((X[s : s + chunk] - mean) / std).float()
        t = y[s : s + chunk]
        sums += torch.stack([F.cross_entropy(logits, t, reduction="sum"), (logits.argmax(1) == t).sum().float(),
                             torch.tensor(float(len(t)), device=X.device)])
    if world > 1:
        dist.all_reduce(sums)
    net.train()
    return (sums[0] / sums[2]).item(), (sums[1] / sums[2]).item()


def save_checkpoint(path, state):
    """torch.save to a temp file, then os.replace: a kill mid-write never leaves a half-written checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def rng_states():
    """Every global random state: Python, NumPy, torch (CPU and CUDA). Our own streams come from (seed, epoch)."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# The device picker, as taught in 01-foundations/mlp_torch.py (here with the GPU of this process under torchrun).
def pick_device(name, local_rank=0):
    """'auto' picks cuda, then mps, then cpu; under torchrun each process takes the GPU of its LOCAL_RANK."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(d for d, ok in available.items() if ok)
    if not available[name]:
        raise ValueError(f"--device {name}: not available on this machine")
    return torch.device(name, local_rank) if name == "cuda" else torch.device(name)


# %% [markdown]
# ## The training run (one flat loop)


# %%
def run(args, device, rank, world, argv=None):
    """Train args.arch on Fashion-MNIST; rank 0 writes checkpoints, metrics and the figure. Returns the metrics."""
    main_rank = rank == 0
    say = print if main_rank else (lambda *a, **k: None)
    out_dir = Path(args.out_dir)
    ckpt_path = out_dir / "checkpoint.pt"
    Xtr, ytr, Xte, yte, mean, std = load_data(args.data_dir, args.n_train, args.smoke)
    Xtr, ytr, Xte, yte = (torch.from_numpy(a).to(device) for a in (Xtr, ytr, Xte, yte))
    # What fixes the run's trajectory: --resume refuses a checkpoint trained with other values. (--device, --amp,
    # --compile, --threads, --data-dir may change; the very same weights need the same device and precision.)
    recipe = ["arch", "base_channels", "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs",
              "label_smoothing", "clip", "seed"]
    config = {k: getattr(args, k) for k in recipe} | {"n_train": len(Xtr), "nproc_per_node": world}

    torch.manual_seed(args.seed)  # the initial weights: the same on every rank (DDP also broadcasts rank 0's)
    net = MODELS[args.arch](num_classes=10, in_channels=1, small_input=True, width=args.base_channels).to(device)
    n_params = sum(p.numel() for p in net.parameters())
    model = DistributedDataParallel(net) if world > 1 else net  # averages the gradients across ranks in backward
    if args.compile:
        model = torch.compile(model)
    decay = [p for p in net.parameters() if p.ndim > 1]  # conv and fc weights
    no_decay = [p for p in net.parameters() if p.ndim <= 1]  # BN scales and shifts, the fc bias
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, nesterov=True)
    steps_per_epoch = len(epoch_batches(len(Xtr), args.batch_size, args.seed, 1, rank, world))
    total, warmup = args.epochs * steps_per_epoch, round(args.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, warmup, total))
    hist = {k: [] for k in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_s", "step_loss")}
    start = 1
    if args.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)  # our own file, with NumPy RNG state
        saved = ck.get("config", {})
        if differ := [k for k in config if saved.get(k) != config[k]]:
            flags = lambda c: " ".join(f"--{k.replace('_', '-')} {c.get(k, '(not recorded)')}" for k in differ)
            say(f"error: {ckpt_path} was trained with {flags(saved)}, not {flags(config)}: resume with the "
                "checkpoint's values, or train afresh without --resume or with another --out-dir", file=sys.stderr)
            raise SystemExit(2)
        net.load_state_dict(ck["model"]), opt.load_state_dict(ck["optimizer"]), sched.load_state_dict(ck["scheduler"])
        set_rng_states(ck["rng"])
        hist, start = ck["history"], ck["epoch"] + 1
        say(f"resumed from {ckpt_path} after epoch {ck['epoch']}")
    elif args.resume:
        say(f"--resume: no {ckpt_path} yet, starting from scratch")
    say(f"resnet_torch: {args.arch} ({n_params:,} parameters), {len(Xtr)} train / {len(Xte)} test images, "
        f"{world} process(es) on {device}, {'bf16 autocast' if args.amp else 'float32'}")

    step, saved_epoch, bar = (start - 1) * steps_per_epoch, start - 1, None  # saved_epoch 0: no checkpoint yet
    try:
        for epoch in range(start, args.epochs + 1):
            t0 = time.perf_counter()
            seed = np.random.SeedSequence([args.seed, epoch, rank]).generate_state(1)[0]
            gen = torch.Generator().manual_seed(int(seed))  # this rank's augmentation stream of this epoch
            sums = torch.zeros(3, device=device)  # summed loss, correct, count of this rank's training examples
            batches = epoch_batches(len(Xtr), args.batch_size, args.seed, epoch, rank, world)
            bar = tqdm(batches, desc=f"epoch {epoch}/{args.epochs}", leave=False,
                       disable=not (main_rank and sys.stdout.isatty()))
            for idx in bar:
                step += 1
                idx = torch.from_numpy(idx).to(device)
                x, t = (augment(Xtr[idx], gen) - mean) / std, ytr[idx]  # (b, 1, 28, 28), (b,)
                with torch.autocast(device.type, torch.bfloat16, enabled=args.amp):
                    logits = model(x).float()  # (b, 10)
                loss = F.cross_entropy(logits, t, label_smoothing=args.label_smoothing)
                hist["step_loss"].append(loss.item())  # one host-device sync per step, for this check and the figure
                if not math.isfinite(hist["step_loss"][-1]):  # stop before the bad step reaches weights or checkpoint
                    kept = (f"the checkpoint of epoch {saved_epoch} in {ckpt_path} is kept" if saved_epoch
                            else "no checkpoint was written")
                    raise SystemExit(f"error: loss is {hist['step_loss'][-1]} at epoch {epoch}, step {step}: training "
                                     f"diverged; {kept}. Lower --lr, raise --warmup-epochs or lower --clip, then "
                                     "run again.")
                opt.zero_grad(set_to_none=True)
                loss.backward()  # under DDP the gradients are all-reduced (averaged) here, bucket by bucket
                if args.clip:  # rescale g to norm clip if ||g|| > clip (0: no clipping)
                    nn.utils.clip_grad_norm_(net.parameters(), args.clip)
                opt.step()
                sched.step()
                sums += torch.stack([loss.detach() * len(t), (logits.argmax(1) == t).sum().float(),
                                     torch.tensor(float(len(t)), device=device)])
                if not bar.disable:
                    bar.set_postfix(loss=f"{hist['step_loss'][-1]:.3f}", lr=f"{sched.get_last_lr()[0]:.4f}")
            if world > 1:
                dist.all_reduce(sums)
                for b in net.buffers():  # BN running statistics were updated locally: take rank 0's everywhere
                    dist.broadcast(b, 0)
            test_loss, test_acc = evaluate(net, Xte, yte, mean, std, args.amp, rank, world)
            for key, value in [("train_loss", (sums[0] / sums[2]).item()), ("train_acc", (sums[1] / sums[2]).item()),
                               ("test_loss", test_loss), ("test_acc", test_acc), ("lr", sched.get_last_lr()[0]),
                               ("epoch_s", time.perf_counter() - t0)]:
                hist[key].append(value)
            say(f"epoch {epoch:2d}/{args.epochs}  train loss {hist['train_loss'][-1]:.4f} acc "
                f"{hist['train_acc'][-1]:.4f} | test loss {test_loss:.4f} acc {test_acc:.4f} | lr {hist['lr'][-1]:.4f}"
                f" | {hist['epoch_s'][-1]:.1f} s", flush=True)
            if main_rank:
                save_checkpoint(ckpt_path, {"model": net.state_dict(), "optimizer": opt.state_dict(),
                                            "scheduler": sched.state_dict(), "rng": rng_states(), "epoch": epoch,
                                            "history": hist, "config": config})
            saved_epoch = epoch
    except KeyboardInterrupt:  # Ctrl-C: no traceback, but where the last checkpoint is and the command that resumes
        if bar is not None:
            bar.close()
        say(interrupted_message(epoch, step, saved_epoch, ckpt_path, argv, world), file=sys.stderr)
        raise SystemExit(130) from None  # 128 + SIGINT, the shell's code for a run stopped by Ctrl-C

    metrics = {"script": Path(__file__).stem, "arch": args.arch, "params": n_params,
               "test_acc": hist["test_acc"][-1], "test_loss": hist["test_loss"][-1],
               "first_loss": hist["step_loss"][0], "final_train_loss": hist["train_loss"][-1],
               "final_train_acc": hist["train_acc"][-1], "world_size": world,
               "sec_per_epoch": float(np.median(hist["epoch_s"])),  # median: robust to a compile or a hiccup
               "config": {**vars(args), "device": str(device), "n_train": len(Xtr), "n_test": len(Xte)},
               "history": hist}
    if main_rank:
        save_metrics(out_dir, metrics, __file__, argv)
        lrs = [args.lr * warmup_cosine(s, warmup, total) for s in range(total)]
        plot_curves(hist, lrs, steps_per_epoch, out_dir / "learning_curves.png",
                    f"{args.arch} on Fashion-MNIST: test accuracy {metrics['test_acc']:.4f}")
        print(f"test accuracy {metrics['test_acc']:.4f}; wrote {out_dir}/metrics.json, checkpoint.pt and "
              "learning_curves.png")
    return metrics


def interrupted_message(epoch, step, saved_epoch, ckpt_path, argv, world):
    """Two lines for a run stopped by Ctrl-C: where its last checkpoint is, and the exact command that continues."""
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--resume"]
    launcher = ["python"] if world == 1 else ["torchrun", "--nproc_per_node", str(world)]
    command = shlex.join([*launcher, os.path.relpath(__file__), *argv] + (["--resume"] if saved_epoch else []))
    if saved_epoch:
        return (f"interrupted in epoch {epoch} (step {step}); the checkpoint of epoch {saved_epoch} is {ckpt_path}. "
                f"Resume with:\n  {command}")
    return f"interrupted in epoch {epoch} (step {step}), before the first checkpoint. Start again with:\n  {command}"


def plot_curves(hist, lrs, steps_per_epoch, path, title):
    """Training loss per step (rank 0's batches) with epoch means, test loss; accuracies; the learning rate."""
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    epochs = np.arange(1, len(hist["test_acc"]) + 1)
    steps = np.arange(1, len(hist["step_loss"]) + 1) / steps_per_epoch
    ax_loss.plot(steps, hist["step_loss"], lw=0.5, alpha=0.5, color="C0", label="train, per step")
    ax_loss.plot(epochs, hist["train_loss"], "o", color="C0", label="train, epoch mean (augmented, smoothed labels)")
    ax_loss.plot(epochs, hist["test_loss"], "o-", color="C1", label="test (plain cross-entropy)")
    ax_acc.plot(epochs, hist["train_acc"], "o--", color="C0", label="train (augmented)")
    ax_acc.plot(epochs, hist["test_acc"], "o-", color="C1", label="test")
    ax_lr.plot(np.arange(1, len(lrs) + 1) / steps_per_epoch, lrs)
    ax_loss.set(ylabel="loss", title="loss")
    ax_acc.set(ylabel="accuracy", title="accuracy", xlim=(0.5, len(epochs) + 0.5))
    ax_lr.set(ylabel="learning rate", title="warm-up, then cosine (per step)")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=8), ax_acc.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=120)


# %% [markdown]
# ## Main: flags, the process group under torchrun, the run


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="resnet20", choices=list(MODELS), help="constructor to train (default resnet20)")
    p.add_argument("--base-channels", type=positive_int, default=None,
                   help="first-stage channels, doubled at every later stage (default: the paper's, 16 for the CIFAR "
                        "nets, 64 for the ImageNet ones; 8 for resnet20 with --smoke)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 4; 1 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="global minibatch (default 128; 32 with --smoke)")
    p.add_argument("--lr", type=positive_float, default=0.1, help="peak learning rate after warm-up (default 0.1)")
    p.add_argument("--weight-decay", type=nonneg_float, default=5e-4, help="L2 on conv/fc weights (default 5e-4)")
    p.add_argument("--warmup-epochs", type=nonneg_float, default=None,
                   help="linear warm-up length (default 1 epoch, or a fifth of the run if that is shorter)")
    p.add_argument("--label-smoothing", type=probability, default=0.1, help="target 1 - eps + eps/K (default 0.1)")
    p.add_argument("--clip", type=nonneg_float, default=5.0,
                   help="max global gradient norm; 0 turns clipping off (default 5)")
    p.add_argument("--n-train", type=positive_int, default=None,
                   help="train on the first N images (default all; 2048 with --smoke)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default on for CUDA, off elsewhere)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (off by default)")
    p.add_argument("--resume", action="store_true",
                   help="continue from out_dir/checkpoint.pt if it exists; the flags that fix the run (all but "
                        "--device, --amp, --compile, --threads, --data-dir) must equal the checkpoint's")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seeds weights, minibatch order and augmentation (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="checkpoint, metrics and figure (default runs/resnet_torch)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = p.parse_args(argv)
    for name, normal, smoke in [("epochs", 4, 1), ("batch_size", 128, 32)]:
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else normal)
    args.warmup_epochs = min(1.0, args.epochs / 5) if args.warmup_epochs is None else args.warmup_epochs
    if args.base_channels is None:
        args.base_channels = 8 if args.smoke and args.arch == "resnet20" else 16 if args.arch in CIFAR else 64
    if args.warmup_epochs > args.epochs:
        p.error(f"--warmup-epochs {args.warmup_epochs} must not exceed --epochs {args.epochs}")
    if args.n_train is not None and args.n_train < args.batch_size:
        p.error("--n-train must be at least --batch-size")
    world = int(os.environ.get("WORLD_SIZE", 1))  # set by torchrun, with RANK, LOCAL_RANK, MASTER_ADDR/PORT
    if args.batch_size % world:
        p.error(f"--batch-size {args.batch_size} must divide among {world} processes")
    try:
        device = pick_device(args.device, int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as exc:
        p.error(str(exc))
    args.amp = device.type == "cuda" if args.amp is None else args.amp
    if args.amp and device.type != "cuda":
        p.error("--amp (bf16 autocast) is for CUDA devices")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.out_dir is None:
        args.out_dir = str(Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)

    distributed = "RANK" in os.environ
    if distributed:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        metrics = run(args, device, dist.get_rank() if distributed else 0, world, argv)
        if distributed:
            dist.barrier()  # nobody leaves while rank 0 still writes
        return metrics
    except DataError as exc:
        sys.exit(f"error: {exc}")
    finally:
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
