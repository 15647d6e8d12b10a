"""Object localization and landmark detection (Ng's course, C4W3): one CNN finds, names and boxes one object.

A 96x96 scene (data.detection_scenes, single=True) holds one Fashion-MNIST item, or nothing. The network
outputs 23 numbers for it, the course's target vector y plus four landmarks:

    y^ = [p_c, b_x, b_y, b_h, b_w, c_1..c_10, l_1x, l_1y, .., l_4x, l_4y]
    p_c  objectness: is there an object? (sigmoid of a logit)
    b    the box: centre (b_x, b_y), height b_h and width b_w, all divided by the canvas side (sigmoid)
    c    class logits (softmax); l the item's top-, bottom-, left-, right-most pixel centres / side (sigmoid)

The loss of one scene, averaged over the batch: objectness always, the rest only where an object is:

    L = BCE(p^_c, p_c) + p_c [ CE(c^, c) + lambda_box sum_k (b^_k - b_k)^2 + lambda_lm sum_j (l^_j - l_j)^2 ]
    BCE(q, p) = -[p log q + (1 - p) log(1 - q)],   CE(c^, c) = -log softmax(c^)_c

(the course writes squared error for every term; BCE and CE are its "in practice" variants). With p_c = 0
the box, class and landmarks are unknown and must not be pulled anywhere: their terms vanish (tested).
Empty scenes: --empty-fraction of the training and test scenes are blank canvases, p_c = 0, so that
objectness has negatives to learn from. Boxes are scored by IoU = |A n B| / |A u B| of the corner boxes.

Training: Adam, cosine learning rate; every epoch draws --n-train new scenes of training items (seed
and epoch), so the generator is the augmentation; test scenes are made of test items and read once per
epoch for the curves (nothing is chosen on them), the last epoch's figures are the result.

Reading: A. Ng, Deep Learning Specialization, Course 4 week 3: "Object localization", "Landmark detection"
(https://www.coursera.org/learn/convolutional-neural-networks); P. Sermanet et al. (2014), "OverFeat:
Integrated Recognition, Localization and Detection using Convolutional Networks",
https://arxiv.org/abs/1312.6229 (a regression head for boxes beside the classifier).
Arc: Object detection -- object localization; landmark detection.

Run:  python 04-cnns/localization_torch.py          (2 to 5 minutes on two CPU cores)
      python 04-cnns/localization_torch.py --smoke  (seconds)
Look first at `localization_loss` (each term one line), `targets` (what y is), then the figures
runs/localization_torch/predictions.png and train_scenes.png.
"""

# %%
import argparse
import math
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn
from tqdm import tqdm

from data import (
    FASHION_MNIST_CLASSES,
    DataError,
    detection_scenes,
    extreme_points,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    probability,
    save_metrics,
)

SIZE = 96  # canvas side in pixels
MEAN, STD = 0.025, 0.13  # of a single-item scene's pixels: the input is standardised with them
N_OUT = 1 + 4 + 10 + 8  # p_c, box, classes, landmarks


# %% [markdown]
# ## The target vector y and the loss


# %%
def targets(images, boxes, labels, empty):
    """Scenes -> the model's input and its targets, all tensors. empty (N,) bool marks blank canvases.

    x (N, 1, S, S); pc (N,) 1 or 0; box (N, 4) = (b_x, b_y, b_h, b_w) / S; cls (N,) int64; lm (N, 8) the
    four extreme points' pixel centres (x + 0.5, y + 0.5) / S. Where pc = 0 the others are 0 (never read)."""
    S = images.shape[-1]
    corners = np.concatenate(boxes).astype(np.float32)  # (N, 4) x1, y1, x2, y2 in pixels
    points = extreme_points(images, boxes)  # (N, 4, 2) pixel indices (x, y): top, bottom, left, right
    x = images.copy()
    x[empty] = 0.0  # a blank canvas: no object
    keep = (~empty).astype(np.float32)
    x1, y1, x2, y2 = corners.T
    box = np.stack([(x1 + x2) / 2, (y1 + y2) / 2, y2 - y1, x2 - x1], 1) / S  # b_x, b_y, b_h, b_w
    t = {
        "pc": keep,
        "box": box * keep[:, None],
        "cls": np.concatenate(labels) * (~empty),
        "lm": (points.reshape(-1, 8) + 0.5) / S * keep[:, None],
    }
    return torch.from_numpy(x[:, None]), {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in t.items()}


def split_output(out):
    """(B, 23) raw outputs -> p_c logit (B,), box (B, 4) in (0, 1), class logits (B, 10), landmarks (B, 8)."""
    return out[:, 0], torch.sigmoid(out[:, 1:5]), out[:, 5:15], torch.sigmoid(out[:, 15:23])


def localization_loss(out, t, lambda_box=5.0, lambda_lm=5.0):
    """The combined loss L (the docstring's formula), averaged over the batch; returns (L, its four terms)."""
    pc_logit, box, cls, lm = split_output(out)
    pc = t["pc"]  # (B,) 1: an object, 0: none
    B = len(pc)
    obj = F.binary_cross_entropy_with_logits(pc_logit, pc, reduction="sum") / B  # BCE(p^_c, p_c)
    ce = (pc * F.cross_entropy(cls, t["cls"], reduction="none")).sum() / B  # p_c CE(c^, c)
    box_se = (pc * ((box - t["box"]) ** 2).sum(1)).sum() / B  # p_c sum_k (b^_k - b_k)^2
    lm_se = (pc * ((lm - t["lm"]) ** 2).sum(1)).sum() / B  # p_c sum_j (l^_j - l_j)^2
    total = obj + ce + lambda_box * box_se + lambda_lm * lm_se
    return total, {"obj": obj, "cls": ce, "box": box_se, "lm": lm_se}


# Intersection over union, as taught in 04-cnns/detection_numpy.py (here: corresponding pairs, torch).
def box_iou(a, b):
    """IoU of corresponding corner boxes a, b (N, 4) = (x1, y1, x2, y2) -> (N,); 0 where both are empty."""
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = iw * ih  # |A n B|
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def to_corners(box, S=SIZE):
    """(N, 4) normalised (b_x, b_y, b_h, b_w) -> corners (x1, y1, x2, y2) in pixels."""
    bx, by, bh, bw = (box * S).unbind(1)
    return torch.stack([bx - bw / 2, by - bh / 2, bx + bw / 2, by + bh / 2], 1)


# %% [markdown]
# ## The network: conv-BN-ReLU-pool blocks, then a fully connected head that keeps the layout


# %%
class Localizer(nn.Module):
    """(B, 1, 96, 96) -> (B, 23). Five blocks conv 3x3 - BN - ReLU - max-pool 2 halve the side 96 -> 3; the
    flattened 3x3 map keeps *where* things are (a global average pool would throw that away), and two
    linear layers read the 23 outputs from it."""

    def __init__(self, channels=(8, 16, 32, 64, 128), hidden=256):
        super().__init__()
        blocks, c_in = [], 1
        for c in channels:
            blocks += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*blocks)
        side = SIZE // 2 ** len(channels)  # 3
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, hidden), nn.ReLU(),
                                  nn.Linear(hidden, N_OUT - 10))  # fmt: skip
        self.classifier = nn.Linear(c_in, 10)  # reads the global max pool: what, not where

    def forward(self, x):  # (B, 1, 96, 96) in [0, 1]
        # Standardised input: raw scenes (mostly black) give the first conv outputs of variance ~0.01, far
        # below BatchNorm's initial running variance 1, and its eval-mode statistics would lag for hundreds
        # of steps.
        h = self.features((x - MEAN) / STD)  # (B, C, 3, 3)
        where = self.head(h)  # (B, 13): p_c, box, landmarks
        what = self.classifier(h.amax((2, 3)))  # (B, 10)
        return torch.cat([where[:, :5], what, where[:, 5:]], 1)  # (B, 23) in the order of y


# %% [markdown]
# ## Data: single-item scenes, a fraction of them blank


# %%
def load_data(split, n, seed, empty_fraction, data_dir=None):
    """n single-object scenes of `split`, round(empty_fraction n) of them (chosen at random) made blank.
    -> x, targets (see `targets`), and the scenes' pixel boxes (N, 4) and extreme points (N, 4, 2)."""
    images, boxes, labels = detection_scenes(split, n, SIZE, seed=seed, single=True, data_dir=data_dir)
    empty = np.zeros(n, bool)
    empty[np.random.default_rng([seed, 7]).permutation(n)[: round(empty_fraction * n)]] = True
    x, t = targets(images, boxes, labels, empty)
    return x, t, np.concatenate(boxes), extreme_points(images, boxes)


# %% [markdown]
# ## Evaluation: class accuracy, mean IoU, landmark error in pixels, objectness accuracy


# %%
@torch.no_grad()
def evaluate(model, x, t, lambda_box, lambda_lm, chunk=500):
    """Metrics of the model on (x, t), BN in eval mode. Class, IoU and landmark figures are over the scenes
    with an object; objectness accuracy (p^_c > 0.5) over all. Also returns the raw outputs (N, 23)."""
    model.eval()
    out = torch.cat([model(x[s : s + chunk]) for s in range(0, len(x), chunk)])
    model.train()
    loss, terms = localization_loss(out, t, lambda_box, lambda_lm)
    pc_logit, box, cls, lm = split_output(out)
    has = t["pc"] > 0
    iou = box_iou(to_corners(box[has]), to_corners(t["box"][has]))
    lm_px = ((lm[has] - t["lm"][has]) * SIZE).reshape(-1, 4, 2).norm(dim=2)  # (n_obj, 4) Euclidean, pixels
    m = {
        "loss": loss.item(),
        **{f"loss_{k}": v.item() for k, v in terms.items()},
        "class_acc": (cls[has].argmax(1) == t["cls"][has]).float().mean().item(),
        "mean_iou": iou.mean().item(),
        "iou_above_0.5": (iou > 0.5).float().mean().item(),
        "landmark_px": lm_px.mean().item(),
        "objectness_acc": ((pc_logit > 0) == has).float().mean().item(),
    }
    return m, out


# The schedule, as taught in 04-cnns/resnet_torch.py (here without warm-up).
def cosine(step, total):
    """lr multiplier of optimizer step `step` (from 0): a cosine from 1 down to 0 over `total` steps."""
    return 0.5 * (1 + math.cos(math.pi * step / max(1, total)))


# device picker, as taught in 01-foundations/mlp_torch.py
def pick_device(name):
    """'auto' picks cuda, then mps, then cpu; asking for a device this machine lacks is an error."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(d for d, ok in available.items() if ok)
    if not available[name]:
        raise ValueError(f"--device {name}: not available on this machine")
    return torch.device(name)


def save_checkpoint(path, **state):
    """torch.save to a temporary file, then rename: an interrupt during the save leaves the old checkpoint whole."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


# %% [markdown]
# ## Figures: scenes with boxes and landmarks, predictions beside the truth, learning curves


# %%
def plot_scenes(path, images, boxes, points, labels, title, pred=None):
    """A grid of scenes: the true box (green) and landmarks (green dots) with the class name; with `pred`
    (boxes, points, classes, p_c), the prediction in red (box, crosses) and 'true -> predicted (p_c)'."""
    n = len(images)
    cols = min(4, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(3 * cols, 3.2 * rows))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.5 / (3.2 * rows), wspace=0.05, hspace=0.15)
    axes = fig.subplots(rows, cols, squeeze=False).flat
    for k, ax in enumerate(axes):
        ax.set_axis_off()
        if k >= n:
            continue
        ax.imshow(images[k], cmap="gray", vmin=0, vmax=1)
        name = FASHION_MNIST_CLASSES[labels[k]] if labels[k] >= 0 else "(empty)"
        if labels[k] >= 0:  # a pixel (x, y) covers [x, x + 1): its centre is at x in imshow's coordinates
            x1, y1, x2, y2 = boxes[k]
            ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color="lime", lw=1.2))
            ax.plot(points[k][:, 0], points[k][:, 1], "o", color="lime", ms=3)
        if pred is not None:
            pb, pp, pc_, pcls = pred[0][k], pred[1][k], pred[2][k], pred[3][k]
            if pcls >= 0:
                ax.add_patch(Rectangle((pb[0] - 0.5, pb[1] - 0.5), pb[2] - pb[0], pb[3] - pb[1], fill=False,
                                       color="red", lw=1.2, ls="--"))  # fmt: skip
                ax.plot(pp[:, 0], pp[:, 1], "x", color="red", ms=5)
            name += f" -> {FASHION_MNIST_CLASSES[pcls] if pcls >= 0 else '(empty)'} ({pc_:.2f})"
        ax.set_title(name, fontsize=8)
        ax.set_xlim(-0.5, images.shape[-1] - 0.5), ax.set_ylim(images.shape[-1] - 0.5, -0.5)
    fig.suptitle(title)
    fig.savefig(path, dpi=100)


def plot_curves(hist, path, title):
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax = fig.subplots(1, 3)
    epochs = np.arange(1, len(hist["test"]) + 1)
    steps = np.arange(1, len(hist["step_loss"]) + 1) / max(1, len(hist["step_loss"]) // max(1, len(epochs)))
    ax[0].plot(steps, hist["step_loss"], lw=0.5, alpha=0.5, label="train, per step")
    ax[0].plot(epochs, [m["loss"] for m in hist["test"]], "o-", label="test")
    ax[0].set(xlabel="epoch", ylabel="L", title="combined loss", yscale="log")
    for key in ("class_acc", "mean_iou", "objectness_acc"):
        ax[1].plot(epochs, [m[key] for m in hist["test"]], "o-", label=key)
    ax[1].set(xlabel="epoch", title="test scenes", ylim=(0, 1.02))
    ax[2].plot(epochs, [m["landmark_px"] for m in hist["test"]], "o-")
    ax[2].set(xlabel="epoch", ylabel="pixels", title="test landmark error (mean Euclidean)")
    ax[0].legend(fontsize=8), ax[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)


# %% [markdown]
# ## Main: flags, one flat training loop over fresh scenes, test metrics every epoch


# %%
RESUME_MAY_CHANGE = {"resume", "device", "threads", "data_dir", "out_dir", "n_images"}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs of fresh scenes (default 6; 2 with "
                   "--smoke)")  # fmt: skip
    p.add_argument("--n-train", type=positive_int, default=None, help="training scenes per epoch, new ones every "
                   "epoch (default 8000; 512 with --smoke)")  # fmt: skip
    p.add_argument("--n-test", type=positive_int, default=None, help="test scenes of test items (default 2000; 200 "
                   "with --smoke)")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=None, help="scenes per step (default 64; 32 with "
                   "--smoke)")  # fmt: skip
    p.add_argument("--lr", type=positive_float, default=2e-3, help="peak learning rate of Adam, cosine to 0 "
                   "(default 2e-3)")  # fmt: skip
    p.add_argument("--weight-decay", type=nonneg_float, default=0.0, help="L2 folded into Adam's gradient "
                   "(default 0: fresh scenes every epoch leave little to overfit)")  # fmt: skip
    p.add_argument("--empty-fraction", type=probability, default=0.2, help="fraction of the scenes made blank "
                   "canvases with p_c = 0 (default 0.2)")  # fmt: skip
    p.add_argument("--lambda-box", type=nonneg_float, default=5.0, help="weight of the box's squared error "
                   "(default 5)")  # fmt: skip
    p.add_argument("--lambda-lm", type=nonneg_float, default=5.0, help="weight of the landmarks' squared error "
                   "(default 5)")  # fmt: skip
    p.add_argument("--n-images", type=positive_int, default=8, help="scenes in each figure (default 8)")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/checkpoint.pt (written every "
                   "epoch); a changed configuration is refused")  # fmt: skip
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds weights, scenes, batch order (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="metrics, figures, checkpoint (default runs/localization_torch)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on about a thousand real scenes")
    args = p.parse_args(argv)
    defaults = {"epochs": (2, 6), "n_train": (512, 8000), "n_test": (200, 2000), "batch_size": (32, 64)}
    for name, (smoke, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    for name in ("n_train", "n_test"):
        if round(args.empty_fraction * getattr(args, name)) == getattr(args, name):
            p.error(f"--empty-fraction {args.empty_fraction}: leaves no scene with an object among the "
                    f"--{name.replace('_', '-')} {getattr(args, name)}")  # fmt: skip
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    ckpt_path, ckpt = out_dir / "checkpoint.pt", None
    if args.resume:
        if not ckpt_path.exists():
            p.error(f"--resume: no checkpoint at {ckpt_path}; train first (same --out-dir)")
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)  # our own file
        diff = [f"--{k.replace('_', '-')} {ckpt['config'].get(k)} -> {v}" for k, v in vars(args).items()
                if k not in RESUME_MAY_CHANGE and ckpt["config"].get(k) != v]  # fmt: skip
        if diff:
            p.error(f"--resume: {ckpt_path} was trained with other settings: {'; '.join(diff)}")

    torch.manual_seed(args.seed)
    model = Localizer().to(device)
    try:  # test scenes: test items only; each epoch's training scenes come from (seed, epoch) below
        x_te, t_te, boxes_te, points_te = load_data("test", args.n_test, args.seed, args.empty_fraction, args.data_dir)
        load_data("train", 1, args.seed, 0.0, args.data_dir)  # the training files too, before any work
    except DataError as exc:
        sys.exit(f"error: {exc}")
    x_te, t_te = x_te.to(device), {k: v.to(device) for k, v in t_te.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    n_params = sum(w.numel() for w in model.parameters())
    print(f"Localizer: 5 conv-BN-ReLU-pool blocks, FC 256, 23 outputs; {n_params:,} params; {args.epochs} epochs "
          f"of {args.n_train:,} fresh training scenes, {args.n_test:,} test scenes ({args.empty_fraction:.0%} blank) "
          f"on {device}")  # fmt: skip

    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(args.n_train / args.batch_size)
    total = args.epochs * steps_per_epoch
    hist = {"step_loss": [], "train_loss": [], "test": [], "epoch_s": []}
    hist["init_test"] = evaluate(model, x_te, t_te, args.lambda_box, args.lambda_lm)[0] if ckpt is None else None
    start, saved, train_s = 1, 0, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"]), opt.load_state_dict(ckpt["opt"])
        hist, start, saved, train_s = ckpt["hist"], ckpt["epoch"] + 1, ckpt["epoch"], ckpt["train_s"]
        print(f"resumed from {ckpt_path} after epoch {saved}")
    step, epoch = (start - 1) * steps_per_epoch, start
    try:
        for epoch in range(start, args.epochs + 1):
            t0 = time.perf_counter()
            scene_seed = args.seed * 1000 + epoch  # new scenes each epoch, from (seed, epoch) alone: --resume
            x_tr, t_tr, _, _ = load_data("train", args.n_train, scene_seed, args.empty_fraction, args.data_dir)
            order = torch.from_numpy(np.random.default_rng([args.seed, epoch]).permutation(args.n_train))
            summed = 0.0
            bar = tqdm(range(0, args.n_train, args.batch_size), desc=f"epoch {epoch}/{args.epochs}", leave=False,
                       disable=not sys.stdout.isatty())  # fmt: skip
            for s in bar:
                lr = args.lr * cosine(step, total)
                for group in opt.param_groups:
                    group["lr"] = lr
                idx = order[s : s + args.batch_size]
                x, t = x_tr[idx].to(device), {k: v[idx].to(device) for k, v in t_tr.items()}  # (b, 1, 96, 96)
                loss, _ = localization_loss(model(x), t, args.lambda_box, args.lambda_lm)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                hist["step_loss"].append(loss.item())
                summed += loss.item() * len(idx)
                if not bar.disable:
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
            m, _ = evaluate(model, x_te, t_te, args.lambda_box, args.lambda_lm)
            train_s += time.perf_counter() - t0
            hist["train_loss"].append(summed / args.n_train), hist["test"].append(m)
            hist["epoch_s"].append(time.perf_counter() - t0)
            print(f"epoch {epoch:2d}/{args.epochs}  train L {hist['train_loss'][-1]:.4f} | test L {m['loss']:.4f} "
                  f"class {m['class_acc']:.3f} IoU {m['mean_iou']:.3f} landmarks {m['landmark_px']:.2f} px "
                  f"objectness {m['objectness_acc']:.3f} | {hist['epoch_s'][-1]:.1f} s, {train_s / 60:.1f} min",
                  flush=True)  # fmt: skip
            save_checkpoint(ckpt_path, model=model.state_dict(), opt=opt.state_dict(), epoch=epoch, hist=hist,
                            config=vars(args), train_s=train_s)  # fmt: skip
            saved = epoch
    except KeyboardInterrupt:  # Ctrl-C: say what is saved and how to go on, without a traceback
        flags = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--resume"]
        where = f"{ckpt_path} holds epoch {saved}. Resume with" if saved else "nothing saved. Start again with"
        print(f"\ninterrupted in epoch {epoch}; {where}:\n  " + shlex.join(
            ["python", "04-cnns/localization_torch.py", *flags] + (["--resume"] if saved else [])), file=sys.stderr)
        sys.exit(130)

    test, out = evaluate(model, x_te, t_te, args.lambda_box, args.lambda_lm)  # the final model's figures
    k = min(args.n_images, len(x_te))
    pc_logit, box, cls, lm = split_output(out[:k].cpu())
    has = t_te["pc"][:k].cpu() > 0
    labels = torch.where(has, t_te["cls"][:k].cpu(), -1).tolist()
    pred = (to_corners(box).numpy(), (lm * SIZE - 0.5).reshape(-1, 4, 2).numpy(), torch.sigmoid(pc_logit).numpy(),
            torch.where(pc_logit > 0, cls.argmax(1), -1).tolist())  # fmt: skip
    plot_scenes(out_dir / "predictions.png", x_te[:k, 0].cpu().numpy(), boxes_te[:k], points_te[:k], labels,
                f"test scenes: true (green) and predicted (red); mean IoU {test['mean_iou']:.3f}", pred)  # fmt: skip
    x_tr, t_tr, boxes_tr, points_tr = load_data("train", k, args.seed * 1000 + 1, args.empty_fraction, args.data_dir)
    plot_scenes(out_dir / "train_scenes.png", x_tr[:, 0].numpy(), boxes_tr, points_tr,
                torch.where(t_tr["pc"] > 0, t_tr["cls"], -1).tolist(),
                "training scenes: tight boxes and extreme points (top, bottom, left, right)")  # fmt: skip
    plot_curves(hist, out_dir / "learning_curves.png", f"localization: test IoU {test['mean_iou']:.3f}, class "
                f"accuracy {test['class_acc']:.3f}, landmarks {test['landmark_px']:.2f} px")  # fmt: skip
    first = ["class_acc", "mean_iou", "landmark_px", "iou_above_0.5", "objectness_acc"]  # RESULTS.md's headline
    metrics = {"script": Path(__file__).stem, **{f"test_{k}": test[k] for k in first}, "train_minutes": train_s / 60,
               "params": n_params, **{f"test_{k}": v for k, v in test.items() if k not in first},
               "sec_per_epoch": float(np.median(hist["epoch_s"])),
               "first_loss": hist["step_loss"][0], "final_train_loss": hist["train_loss"][-1],
               "device": str(device), "config": vars(args), "history": hist,
               "n_train_scenes_seen": args.epochs * args.n_train, "n_test": len(x_te)}  # fmt: skip
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"test: class accuracy {test['class_acc']:.4f}, mean IoU {test['mean_iou']:.4f}, landmarks "
          f"{test['landmark_px']:.2f} px, objectness {test['objectness_acc']:.4f} after {train_s / 60:.1f} min; wrote "
          f"{out_dir}/metrics.json, predictions.png, train_scenes.png, learning_curves.png")  # fmt: skip
    return metrics


if __name__ == "__main__":
    main()
