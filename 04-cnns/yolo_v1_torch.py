"""YOLO v1 (Redmon et al. 2016): detection as one regression from pixels to boxes and classes, in PyTorch.

The image is cut into an S x S grid; the cell holding an object's centre is responsible for it. Each cell
predicts B boxes (x, y: the centre's offset inside the cell; sqrt(w), sqrt(h) relative to the image; a
confidence, target Pr(Object) * IoU(pred, truth)) and one set of C class probabilities Pr(Class_i | Object):
an S x S x (B * 5 + C) tensor. The loss is squared error, equation (3) of the paper:

    lambda_coord sum_ij 1obj_ij [(x_i - x^_i)^2 + (y_i - y^_i)^2]
  + lambda_coord sum_ij 1obj_ij [(sqrt w_i - sqrt w^_i)^2 + (sqrt h_i - sqrt h^_i)^2]
  + sum_ij 1obj_ij (C_i - C^_i)^2  +  lambda_noobj sum_ij 1noobj_ij (C_i - C^_i)^2
  + sum_i 1obj_i sum_c (p_i(c) - p^_i(c))^2                lambda_coord = 5, lambda_noobj = 0.5

1obj_ij: predictor j of cell i is "responsible" (the one of the B with the highest IoU with the truth);
1noobj_ij: every other predictor. At test time, class-specific confidence = Pr(Class_i | Object) * C,
then a threshold and per-class non-max suppression.

`yolov1(S=7, B=2, C=20)` is the paper's network (Figure 3: 24 convs with biases and leaky ReLU 0.1, four
max-pools, FC 4096, dropout 0.5, FC to 7 x 7 x 30; 271,703,550 parameters at 448x448). What trains here is
`yolov1_small`: the same conv pattern for 96x96 grayscale canvases of Fashion-MNIST items (data.detection_scenes),
S = 6 (cells of 16 pixels), B = 2, C = 10, with two changes that YOLO v2 made: BatchNorm after each conv (no
conv bias), and a convolutional head instead of the two FC layers (`head="fc"` builds the paper's). The loss,
targets and decoding are the paper's. Fresh scenes every epoch (new seeds) and horizontal flips augment.

Reading: J. Redmon, S. Divvala, R. Girshick, A. Farhadi (2016), "You Only Look Once: Unified, Real-Time Object
Detection", CVPR 2016, https://arxiv.org/abs/1506.02640 (section 2: the model, equation (3); Figure 3).
Arc: Object detection -- YOLO v1.

Run:  python 04-cnns/yolo_v1_torch.py          (6 to 18 minutes on two CPU cores, as busy as they are)
      python 04-cnns/yolo_v1_torch.py --smoke  (seconds: a small run on a few hundred scenes)
      python 04-cnns/yolo_v1_torch.py --min-objects 3 --max-objects 8 --scale 0.35 1.2  (YOLO v3/v4's scenes)
      python 04-cnns/yolo_v1_torch.py --epochs 60 --device cuda
Look first at `yolo_loss`: each term of equation (3) is one line; then `build_targets` and `decode`.
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
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    probability,
    save_metrics,
)

# %% [markdown]
# ## The network: Figure 3 of the paper, and a reduced one for 96x96 canvases


# %%
# (kernel, out channels, stride) of each conv, "M" a 2x2 max-pool of stride 2. Padding is kernel // 2.
PAPER_LAYERS = [
    (7, 64, 2), "M",
    (3, 192, 1), "M",
    (1, 128, 1), (3, 256, 1), (1, 256, 1), (3, 512, 1), "M",
    *[(1, 256, 1), (3, 512, 1)] * 4, (1, 512, 1), (3, 1024, 1), "M",
    *[(1, 512, 1), (3, 1024, 1)] * 2, (3, 1024, 1), (3, 1024, 2),
    (3, 1024, 1), (3, 1024, 1),
]  # fmt: skip   24 convs; 448 -> 224 -> 112 -> 56 -> 28 -> 14 -> 7: a 7x7x1024 map
SMALL_LAYERS = [
    (3, 8, 1), "M",
    (3, 16, 1), "M",
    (3, 48, 1), "M",
    (3, 96, 1), (1, 48, 1), (3, 96, 1), "M",
    (3, 192, 1), (1, 96, 1), (3, 192, 1),
]  # fmt: skip   9 convs; 96 -> 48 -> 24 -> 12 -> 6: a 6x6x192 map, the paper's 1x1-reduce / 3x3 pattern


class YOLOv1(nn.Module):
    """convs (+ leaky ReLU 0.1) and max-pools, then a head giving (N, S, S, B * 5 + C). Per cell: B times
    (x, y, sqrt w, sqrt h, confidence), then C class probabilities; the last layer is linear, as in the paper.

    head "fc" (the paper): flatten -> FC hidden -> leaky ReLU -> dropout -> FC S*S*(B*5+C).
    head "conv" (YOLO v2's): a 3x3 conv of `hidden` channels, then a 1x1 conv to B*5+C on the S x S map: every
    cell is predicted by the same weights from the features around it, so that a small dataset teaches
    every cell at once (the FC head must learn each of the S*S cells from the objects that land in it).
    """

    def __init__(self, layers, S=7, B=2, C=20, in_channels=3, image_size=448, hidden=4096, dropout=0.5,
                 batch_norm=False, head="fc"):  # fmt: skip
        super().__init__()
        self.S, self.B, self.C, self.image_size, self.head = S, B, C, image_size, head
        convs, c_in, side = [], in_channels, image_size
        for v in layers:
            if v == "M":
                convs.append(nn.MaxPool2d(2))  # (N, c, h, w) -> (N, c, h/2, w/2)
                side //= 2
                continue
            k, c_out, stride = v
            convs.append(nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, bias=not batch_norm))
            convs += [nn.BatchNorm2d(c_out)] if batch_norm else []
            convs.append(nn.LeakyReLU(0.1))  # phi(x) = x if x > 0 else 0.1 x
            c_in, side = c_out, (side + 2 * (k // 2) - k) // stride + 1
        self.features = nn.Sequential(*convs)
        self.dropout = nn.Dropout(dropout)  # "a dropout layer with rate = .5 after the first connected layer"
        if head == "fc":
            self.fc1 = nn.Linear(c_in * side * side, hidden)
            self.fc2 = nn.Linear(hidden, S * S * (B * 5 + C))
        else:
            assert side == S, f"a conv head needs a {S}x{S} feature map, got {side}x{side}"
            self.conv1 = nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden))
            self.conv2 = nn.Conv2d(hidden, B * 5 + C, 1)

    def forward(self, x):  # (N, in_channels, H, W)
        h = self.features(x)  # (N, c, side, side)
        if self.head == "fc":
            h = self.dropout(F.leaky_relu(self.fc1(h.flatten(1)), 0.1))  # (N, hidden)
            return self.fc2(h).view(-1, self.S, self.S, self.B * 5 + self.C)  # (N, S, S, B*5+C), linear
        h = self.dropout(F.leaky_relu(self.conv1(h), 0.1))  # (N, hidden, S, S)
        return self.conv2(h).permute(0, 2, 3, 1)  # (N, S, S, B*5+C), linear


def yolov1(S=7, B=2, C=20, in_channels=3):
    """The paper's network at 448x448 (Figure 3): 271,703,550 parameters for S=7, B=2, C=20."""
    return YOLOv1(PAPER_LAYERS, S, B, C, in_channels, image_size=448, hidden=4096, dropout=0.5)


def yolov1_small(S=6, B=2, C=10, in_channels=1, image_size=96, hidden=256, dropout=0.0, head="conv"):
    """The reduced network trained here: 9 convs with BatchNorm (YOLO v2's addition), then the head."""
    return YOLOv1(SMALL_LAYERS, S, B, C, in_channels, image_size, hidden, dropout, batch_norm=True, head=head)


# %% [markdown]
# ## Targets: which cell is responsible, and what it should predict


# %%
def build_targets(boxes, labels, S, image_size, C):
    """Per image (k, 4) corner boxes in pixels and (k,) labels -> (N, S, S, 5 + C) float32 targets.

    Per cell: x, y (the box centre's offset inside the cell, in [0, 1)), w, h (relative to the image), 1obj_i,
    then the one-hot class. Two objects whose centres fall in one cell: the cell keeps the first in the list
    and the other one is dropped (the paper's limit: "each grid cell only predicts two boxes and can only
    have one class"); the number dropped is returned too.
    """
    T = np.zeros((len(boxes), S, S, 5 + C), np.float32)
    dropped = 0
    for n, (bx, lb) in enumerate(zip(boxes, labels)):
        for (x1, y1, x2, y2), c in zip(np.asarray(bx, np.float64) / image_size, lb):
            cx, cy = (x1 + x2) / 2 * S, (y1 + y2) / 2 * S  # the centre in cell units
            col, row = min(int(cx), S - 1), min(int(cy), S - 1)  # the cell holding it (row i = y, column j = x)
            if T[n, row, col, 4] == 1:
                dropped += 1
                continue
            T[n, row, col, :5] = cx - col, cy - row, x2 - x1, y2 - y1, 1.0
            T[n, row, col, 5 + c] = 1.0
    return torch.from_numpy(T), dropped


def cell_to_corners(xy, wh, S):
    """Cell offsets xy (N, S, S, B, 2) and image-relative sizes wh (N, S, S, B, 2) -> corners (N, S, S, B, 4)
    (x1, y1, x2, y2) in image units: the centre of row i, column j is ((j + x) / S, (i + y) / S)."""
    grid = torch.arange(S, dtype=xy.dtype, device=xy.device)
    cx, cy = (grid.view(1, S, 1) + xy[..., 0]) / S, (grid.view(S, 1, 1) + xy[..., 1]) / S  # (N, S, S, B)
    return torch.stack([cx - wh[..., 0] / 2, cy - wh[..., 1] / 2, cx + wh[..., 0] / 2, cy + wh[..., 1] / 2], -1)


def paired_iou(a, b):
    """IoU of a[..., 4] with b[..., 4], elementwise (corner boxes); 0 where both are empty."""
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = iw * ih
    area = lambda z: (z[..., 2] - z[..., 0]).clamp(min=0) * (z[..., 3] - z[..., 1]).clamp(min=0)  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp(min=1e-12)


# %% [markdown]
# ## The loss, equation (3), term by term


# %%
def yolo_loss(pred, target, B, lambda_coord=5.0, lambda_noobj=0.5):
    """pred (N, S, S, B*5+C), target (N, S, S, 5+C) from build_targets -> (loss, terms): the sum of equation (3)
    over cells and predictors, divided by N (a mean over images); `terms` holds each of its five sums / N."""
    N, S = pred.shape[0], pred.shape[1]
    p = pred[..., : B * 5].view(N, S, S, B, 5)  # (N, S, S, B, 5): x, y, sqrt w, sqrt h, confidence
    p_cls = pred[..., B * 5 :]  # (N, S, S, C)
    t_xy, t_wh, obj, t_cls = target[..., 0:2], target[..., 2:4], target[..., 4], target[..., 5:]
    with torch.no_grad():  # which predictor is responsible, and its confidence target: IoU(pred, truth), detached
        pred_box = cell_to_corners(p[..., 0:2], p[..., 2:4] ** 2, S)  # (N, S, S, B, 4); w = (sqrt w)^2
        true_box = cell_to_corners(t_xy.unsqueeze(3), t_wh.unsqueeze(3), S)  # (N, S, S, 1, 4)
        iou = paired_iou(pred_box, true_box)  # (N, S, S, B)
        best = iou.argmax(-1)  # the highest IoU in the cell (a tie: the first predictor)
        resp = F.one_hot(best, B).to(pred.dtype) * obj.unsqueeze(-1)  # 1obj_ij (N, S, S, B)
    noobj = 1 - resp  # 1noobj_ij: every predictor not responsible for an object, in any cell
    terms = {
        "xy": lambda_coord * (resp * ((p[..., 0:2] - t_xy.unsqueeze(3)) ** 2).sum(-1)).sum() / N,
        "wh": lambda_coord * (resp * ((p[..., 2:4] - t_wh.sqrt().unsqueeze(3)) ** 2).sum(-1)).sum() / N,
        "conf_obj": (resp * (p[..., 4] - iou) ** 2).sum() / N,  # target C^ = IoU of the responsible box
        "conf_noobj": lambda_noobj * (noobj * p[..., 4] ** 2).sum() / N,  # target 0
        "cls": (obj * ((p_cls - t_cls) ** 2).sum(-1)).sum() / N,  # squared error of probabilities, 1obj_i cells
    }
    return sum(terms.values()), terms


# %% [markdown]
# ## Decoding, IoU, non-max suppression and mAP (compact copies; 04-cnns/detection_numpy.py teaches them)


# %%
def decode(pred, B, image_size):
    """pred (N, S, S, B*5+C) -> corner boxes (N, S*S*B, 4) in pixels clipped to the canvas, and
    class-specific confidences (N, S*S*B, C) = Pr(Class | Object) * confidence (each cell's classes for its B)."""
    N, S = pred.shape[0], pred.shape[1]
    p = pred[..., : B * 5].view(N, S, S, B, 5)
    boxes = cell_to_corners(p[..., 0:2], p[..., 2:4] ** 2, S).clamp(0, 1) * image_size  # (N, S, S, B, 4)
    scores = pred[..., B * 5 :].unsqueeze(3) * p[..., 4:5]  # (N, S, S, B, C)
    return boxes.reshape(N, S * S * B, 4), scores.reshape(N, S * S * B, -1)


def box_iou(a, b):
    """(n, 4) and (m, 4) corner boxes -> (n, m) IoU (NumPy); 0 where both boxes are empty."""
    iw = (np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])).clip(min=0)
    ih = (np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])).clip(min=0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]).clip(min=0) * (a[:, 3] - a[:, 1]).clip(min=0)
    area_b = (b[:, 2] - b[:, 0]).clip(min=0) * (b[:, 3] - b[:, 1]).clip(min=0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes, scores, iou_threshold):
    """Greedy: keep the best box, drop every box whose IoU with it is > iou_threshold (equal is kept), repeat.
    Returns the kept indices by descending score."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        i, order = order[0], order[1:]
        keep.append(i)
        order = order[box_iou(boxes[i : i + 1], boxes[order])[0] <= iou_threshold]
    return np.array(keep, dtype=np.int64)


def detect(pred, B, image_size, conf_threshold, nms_threshold, max_dets=100):
    """pred (N, S, S, B*5+C) -> per image (boxes (k, 4), scores (k,), labels (k,)): every (box, class) whose
    class-specific confidence exceeds conf_threshold, per-class NMS, then the best max_dets (COCO's 100)."""
    boxes, scores = (t.detach().cpu().numpy() for t in decode(pred, B, image_size))
    out = []
    for bx, sc in zip(boxes, scores):  # one image: (S*S*B, 4), (S*S*B, C)
        i, c = np.nonzero(sc > conf_threshold)  # candidates: box i with class c
        kept = []
        for cls in np.unique(c):  # NMS within each class
            k = np.nonzero(c == cls)[0]
            kept += k[nms(bx[i[k]], sc[i[k], cls], nms_threshold)].tolist()
        kept = np.array(kept, dtype=np.int64)
        kept = kept[np.argsort(-sc[i[kept], c[kept]], kind="stable")[:max_dets]]
        out.append((bx[i[kept]].reshape(-1, 4), sc[i[kept], c[kept]], c[kept]))
    return out


def average_precision(recall, precision, points=None):
    """Area under the precision envelope (precision made non-increasing from the right). points=None: VOC
    2010+ all-point (a sum over the recall steps); points=101: COCO's mean at recall 0, 0.01, ..., 1."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # envelope: p(r) = max over r' >= r
    if points is None:
        step = np.nonzero(r[1:] != r[:-1])[0]  # where recall changes
        return float(np.sum((r[step + 1] - r[step]) * p[step + 1]))
    at = np.searchsorted(r[1:-1], np.linspace(0, 1, points), side="left")  # first rank reaching each recall
    return float(np.mean(np.where(at < len(recall), p[1:-1][np.minimum(at, len(recall) - 1)], 0.0)))


def area(b):
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def mean_ap(dets, truths, C, iou_threshold=0.5, points=None, max_area=None):
    """dets: per image (boxes, scores, labels); truths: per image (boxes, labels). Per image and class, detections
    by descending score each take the unmatched truth with the highest IoU, a true positive if that IoU >=
    iou_threshold (each truth matched once); then per class, all images' detections by descending score give
    precision and recall, and AP. Returns the mean over classes that have a truth, and the per-class APs (nan
    where a class has none). max_area: COCO's area range (small objects: area < max_area). A truth outside it
    is ignored: it is not counted, and the detection it matches (only one with no counted truth left) is
    dropped; so is an unmatched detection outside the range."""
    aps = np.full(C, np.nan)
    for c in range(C):
        scores, tps, n_gt = [], [], 0
        for (bx, sc, lb), (tb, tl) in zip(dets, truths):
            d, g = np.argsort(-sc[lb == c], kind="stable"), tb[tl == c]
            big = area(g) >= max_area if max_area else np.zeros(len(g), bool)  # ignored truths
            iou = box_iou(bx[lb == c][d], g)  # (D, G), best detection first
            used, tp, keep = np.zeros(len(g), bool), np.zeros(len(d)), np.ones(len(d), bool)
            det_big = area(bx[lb == c][d]) >= max_area if max_area else np.zeros(len(d), bool)
            for k in range(len(d)):
                counted = np.where(~used & ~big, iou[k], -1.0)  # counted truths first, then ignored ones
                ignored = np.where(~used & big, iou[k], -1.0)
                if len(g) and counted.max() >= iou_threshold:
                    tp[k], used[counted.argmax()] = 1, True
                elif len(g) and ignored.max() >= iou_threshold:
                    keep[k], used[ignored.argmax()] = False, True
                elif det_big[k]:  # unmatched, outside the range: not a false positive either
                    keep[k] = False
            scores.append(sc[lb == c][d][keep]), tps.append(tp[keep])
            n_gt += int((~big).sum())
        if n_gt == 0:
            continue
        order = np.argsort(-np.concatenate(scores), kind="stable")
        ctp = np.cumsum(np.concatenate(tps)[order])
        aps[c] = average_precision(ctp / n_gt, ctp / np.arange(1, len(ctp) + 1), points) if len(ctp) else 0.0
    return float(np.nanmean(aps)), aps


def coco_map(dets, truths, C):
    """COCO's mAP@[.5:.95]: the 101-point AP averaged over IoU thresholds 0.50, 0.55, ..., 0.95 and classes."""
    return float(np.mean([mean_ap(dets, truths, C, t, points=101)[0] for t in np.linspace(0.5, 0.95, 10)]))


# %% [markdown]
# ## Data: scenes, flips, evaluation, checkpoints


# %%
IMAGE_SIZE = 96  # canvases of data.detection_scenes; S = 6 cells of 16 pixels
EVAL_THRESHOLD = 0.005  # mAP ranks all detections: this only trims the list (the paper's figure-level is 0.2)
SMALL_AREA = 16**2  # "small" objects: a tight box under 256 px^2, one cell's area (the YOLO v3/v4 comparison)


def load_data(split, n, seed, data_dir=None, min_objects=1, max_objects=4, scale=(0.6, 1.4)):
    """n scenes of `split` (Fashion-MNIST's train or test items): images (n, 1, 96, 96), boxes, labels."""
    images, boxes, labels = detection_scenes(split, n, IMAGE_SIZE, max_objects, seed, min_objects=min_objects,
                                             scale=scale, data_dir=data_dir)  # fmt: skip
    return torch.from_numpy(images).unsqueeze(1), boxes, labels


def hflip(images, boxes, flip):
    """Mirror the images where flip[i]; a box (x1, y1, x2, y2) becomes (W - x2, y1, W - x1, y2)."""
    W = images.shape[-1]
    images = torch.where(torch.as_tensor(flip).view(-1, 1, 1, 1), images.flip(-1), images)
    boxes = [np.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], 1) if f else b for b, f in zip(boxes, flip)]
    return images, boxes


@torch.no_grad()
def predict(model, X, device, chunk=250):
    """Raw predictions (N, S, S, B*5+C) in eval mode (BatchNorm's running statistics, no dropout)."""
    was = model.training
    model.eval()
    out = torch.cat([model(X[s : s + chunk].to(device)).cpu() for s in range(0, len(X), chunk)])
    model.train(was)
    return out


def evaluate(model, X, boxes, labels, device, nms_threshold):
    """mAP@0.5 (VOC all-point), COCO mAP@[.5:.95], per-class AP@0.5 and the detections on a scene set."""
    dets = detect(predict(model, X, device), model.B, IMAGE_SIZE, EVAL_THRESHOLD, nms_threshold)
    truths = list(zip(boxes, labels))
    m50, aps = mean_ap(dets, truths, model.C)
    return m50, coco_map(dets, truths, model.C), aps, dets


def model_from_config(config):  # for benchmarks/yolo_comparison.py: the network a checkpoint's config describes
    return yolov1_small(dropout=config["dropout"])


def detect_images(model, X, device, conf_threshold, nms_threshold):
    return detect(predict(model, X, device), model.B, IMAGE_SIZE, conf_threshold, nms_threshold)


# The schedule, as taught in 04-cnns/resnet_torch.py.
def warmup_cosine(step, warmup, total):
    """lr multiplier of step `step` (from 0): linear warm-up to 1 over `warmup` steps, then a cosine down to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# The device picker, as taught in 01-foundations/mlp_torch.py.
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
# ## Figures: detections on test scenes, training curves


# %%
def plot_detections(images, dets, truths, path, threshold):
    """Test scenes: true boxes dashed green, predictions (score > threshold) red with class name and score."""
    n = len(images)
    cols = min(n, 4)
    fig = Figure(figsize=(3.2 * cols, 3.4 * math.ceil(n / cols)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(math.ceil(n / cols), cols, squeeze=False)).ravel()
    for ax, img, (pb, ps, pl), (tb, tl) in zip(axes, images, dets, truths):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        for (x1, y1, x2, y2), c in zip(tb, tl):
            ax.add_patch(_rect(x1, y1, x2, y2, "lime", "--"))
            ax.text(x1, y2 + 3, FASHION_MNIST_CLASSES[c], color="lime", fontsize=6, va="top")
        for (x1, y1, x2, y2), s, c in zip(pb, ps, pl):
            if s > threshold:
                ax.add_patch(_rect(x1, y1, x2, y2, "red", "-"))
                ax.text(x1, y1 - 1, f"{FASHION_MNIST_CLASSES[c]} {s:.2f}", color="red", fontsize=6)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(f"test scenes: truth (green, dashed) and detections with score > {threshold} (red)")
    fig.savefig(path, dpi=110)


def _rect(x1, y1, x2, y2, color, ls):  # pixel (x, y) covers [x - 0.5, x + 0.5] in imshow's coordinates
    return Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color=color, ls=ls, lw=1)


def plot_curves(hist, path, title):
    """Left: the five loss terms per epoch (training); middle: validation mAP; right: the learning rate."""
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax = fig.subplots(1, 3)
    epochs = np.arange(1, len(hist["val_map50"]) + 1)
    for k in ("xy", "wh", "conf_obj", "conf_noobj", "cls", "loss"):
        ax[0].plot(epochs, hist[k], "o-" if k == "loss" else ".-", label=k, lw=2 if k == "loss" else 1)
    ax[1].plot(epochs, hist["val_map50"], "o-", label="mAP@0.5 (VOC all-point)")
    ax[1].plot(epochs, hist["val_coco"], "s-", label="mAP@[.5:.95] (COCO)")
    ax[2].plot(np.arange(len(hist["lr"])) / max(1, len(hist["lr"]) // len(epochs)), hist["lr"])
    ax[0].set(xlabel="epoch", ylabel="loss per image", yscale="log", title="training loss, equation (3)")
    ax[1].set(xlabel="epoch", ylabel="mAP", ylim=(0, 1), title="validation scenes (training items)")
    ax[2].set(xlabel="epoch", ylabel="learning rate", title="warm-up, then cosine")
    ax[0].legend(fontsize=7), ax[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)


# %% [markdown]
# ## Main: flags, one flat training loop, the test scenes at the end


# %%
# Flags a resumed run may change: where it runs and what it reports after training.
RESUME_MAY_CHANGE = {"resume", "device", "threads", "data_dir", "out_dir", "n_test", "n_images", "conf_threshold",
                     "nms_threshold"}  # fmt: skip


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs of fresh scenes (default 20; 2 with "
                   "--smoke)")
    p.add_argument("--n-train", type=positive_int, default=None, help="training scenes per epoch, new ones every "
                   "epoch (default 5000; 600 with --smoke)")
    p.add_argument("--n-val", type=positive_int, default=None, help="validation scenes from training items, "
                   "scored each epoch (default 500; 100 with --smoke)")
    p.add_argument("--n-test", type=positive_int, default=None, help="test scenes from test items (default 2000; "
                   "200 with --smoke)")
    p.add_argument("--min-objects", type=positive_int, default=1, help="items per scene, at least (default 1)")
    p.add_argument("--max-objects", type=positive_int, default=4, help="items per scene, at most (default 4; the "
                   "YOLO v3/v4 comparison uses 3 to 8)")
    p.add_argument("--scale", type=positive_float, nargs=2, default=[0.6, 1.4], metavar=("LOW", "HIGH"),
                   help="item side / 28 px, drawn in [LOW, HIGH] (default 0.6 1.4; the comparison: 0.35 1.2)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="scenes per step (default 16: more steps "
                   "per minute of CPU than 64)")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="peak learning rate of Adam (default 2e-3)")
    p.add_argument("--weight-decay", type=nonneg_float, default=5e-4, help="L2 folded into the gradient, the "
                   "paper's 5e-4 (default 5e-4)")
    p.add_argument("--warmup-epochs", type=nonneg_float, default=1.0, help="linear warm-up (default 1 epoch)")
    p.add_argument("--dropout", type=probability, default=None, help="after the first FC layer (default 0.0: the "
                   "paper's 0.5 slows a short run on fresh scenes)")
    p.add_argument("--conf-threshold", type=probability, default=0.2, help="class-specific confidence above which "
                   "a detection is drawn in the figure (default 0.2; mAP ranks every detection above 0.005)")
    p.add_argument("--nms-threshold", type=probability, default=0.5, help="NMS drops a box whose IoU with a "
                   "better one of its class is greater (default 0.5)")
    p.add_argument("--n-images", type=positive_int, default=8, help="test scenes in the figure (default 8)")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/checkpoint.pt (written every "
                   "epoch); a changed configuration is refused")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds weights, scenes, flips (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="metrics, figures, checkpoint (default runs/yolo_v1_torch)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a few hundred real scenes")
    args = p.parse_args(argv)
    defaults = {"epochs": (2, 20), "n_train": (600, 5000), "n_val": (100, 500), "n_test": (200, 2000),
                "batch_size": (16, 16), "dropout": (0.0, 0.0)}  # fmt: skip
    for name, (smoke, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    if args.min_objects > args.max_objects or not 0.25 <= args.scale[0] <= args.scale[1] <= IMAGE_SIZE / 28:
        p.error(f"need --min-objects <= --max-objects and 0.25 <= LOW <= HIGH <= {IMAGE_SIZE / 28:.2f} for --scale")
    if args.warmup_epochs > args.epochs:
        p.error(f"--warmup-epochs {args.warmup_epochs} must not exceed --epochs {args.epochs}")
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

    seeds = {"val": 10_000 + args.seed, "test": 20_000 + args.seed}  # training epochs use seed * 1000 + epoch
    try:
        scenes = {"min_objects": args.min_objects, "max_objects": args.max_objects, "scale": tuple(args.scale)}
        Xva, bva, lva = load_data("train", args.n_val, seeds["val"], args.data_dir, **scenes)
        Xte, bte, lte = load_data("test", args.n_test, seeds["test"], args.data_dir, **scenes)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    torch.manual_seed(args.seed)
    model = yolov1_small(dropout=args.dropout).to(device)
    S, B, C = model.S, model.B, model.C
    out_dir.mkdir(parents=True, exist_ok=True)
    n_params = sum(w.numel() for w in model.parameters())
    print(f"YOLO v1 (reduced): {S}x{S} cells, B={B}, C={C}, {n_params:,} parameters; {args.n_train} fresh "
          f"training scenes per epoch, {args.n_val} validation, {args.n_test} test scenes on {device}")
    # Adam, not the paper's SGD + momentum: five loss terms of unlike scales, no room for an lr search.
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(args.n_train / args.batch_size)
    total, warmup = args.epochs * steps_per_epoch, round(args.warmup_epochs * steps_per_epoch)
    keys = ("loss", "xy", "wh", "conf_obj", "conf_noobj", "cls", "val_map50", "val_coco", "epoch_s", "lr")
    hist = {k: [] for k in keys}
    hist["dropped_objects"], hist["train_objects"] = 0, 0
    hist["init_val_map50"] = evaluate(model, Xva, bva, lva, device, args.nms_threshold)[0] if ckpt is None else None
    start, saved, train_s = 1, 0, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"]), opt.load_state_dict(ckpt["opt"])
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        hist, start, saved, train_s = ckpt["hist"], ckpt["epoch"] + 1, ckpt["epoch"], ckpt["train_s"]
        print(f"resumed from {ckpt_path} after epoch {saved}")
    step, epoch = (start - 1) * steps_per_epoch, start
    try:
        for epoch in range(start, args.epochs + 1):
            t0 = time.perf_counter()
            # augmentation: new scenes every epoch (seeded by seed and epoch alone, so --resume repeats them) ...
            X, boxes, labels = load_data("train", args.n_train, args.seed * 1000 + epoch, args.data_dir, **scenes)
            rng = np.random.default_rng([args.seed, epoch])
            X, boxes = hflip(X, boxes, rng.random(len(X)) < 0.5)  # ... and a horizontal flip of half of them
            T, dropped = build_targets(boxes, labels, S, IMAGE_SIZE, C)  # (n, S, S, 5 + C)
            hist["dropped_objects"] += dropped
            hist["train_objects"] += sum(len(b) for b in boxes)
            order = rng.permutation(len(X))
            sums = dict.fromkeys(keys[:6], 0.0)
            bar = tqdm(range(0, len(X), args.batch_size), desc=f"epoch {epoch}/{args.epochs}", leave=False,
                       disable=not sys.stdout.isatty())  # fmt: skip
            for s in bar:
                lr = args.lr * warmup_cosine(step, warmup, total)
                for group in opt.param_groups:
                    group["lr"] = lr
                idx = torch.from_numpy(order[s : s + args.batch_size])
                loss, terms = yolo_loss(model(X[idx].to(device)), T[idx].to(device), B)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                hist["lr"].append(lr)
                for k, v in (("loss", loss), *terms.items()):
                    sums[k] += v.item() * len(idx) / len(X)
                if not bar.disable:
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
            val_map50, val_coco = evaluate(model, Xva, bva, lva, device, args.nms_threshold)[:2]
            train_s += time.perf_counter() - t0
            for k, v in (*sums.items(), ("val_map50", val_map50), ("val_coco", val_coco),
                         ("epoch_s", time.perf_counter() - t0)):  # fmt: skip
                hist[k].append(float(v))
            print(f"epoch {epoch:2d}/{args.epochs}  loss {sums['loss']:.3f} (xy {sums['xy']:.3f} wh {sums['wh']:.3f} "
                  f"obj {sums['conf_obj']:.3f} noobj {sums['conf_noobj']:.3f} cls {sums['cls']:.3f}) | val mAP@0.5 "
                  f"{val_map50:.4f} COCO {val_coco:.4f} | {hist['epoch_s'][-1]:.1f} s, {train_s / 60:.1f} min",
                  flush=True)  # fmt: skip
            save_checkpoint(ckpt_path, model=model.state_dict(), opt=opt.state_dict(), epoch=epoch, hist=hist,
                            torch_rng=torch.get_rng_state(), config=vars(args), train_s=train_s)
            saved = epoch
    except KeyboardInterrupt:  # Ctrl-C: say what is saved and how to go on, without a traceback
        flags = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--resume"]
        where = f"{ckpt_path} holds epoch {saved}. Resume with" if saved else "nothing saved. Start again with"
        print(f"\ninterrupted in epoch {epoch}; {where}:\n  " + shlex.join(
            ["python", "04-cnns/yolo_v1_torch.py", *flags] + (["--resume"] if saved else [])), file=sys.stderr)
        sys.exit(130)

    test_map50, test_coco, aps, dets = evaluate(model, Xte, bte, lte, device, args.nms_threshold)  # once
    test_small = mean_ap(dets, list(zip(bte, lte)), C, max_area=SMALL_AREA)[0]
    t0 = time.perf_counter()  # inference speed: forward passes, decoding, threshold and NMS, batches of 64
    for s in range(0, len(Xte), 64):
        detect(predict(model, Xte[s : s + 64], device), B, IMAGE_SIZE, EVAL_THRESHOLD, args.nms_threshold)
    images_per_s = len(Xte) / (time.perf_counter() - t0)
    k = args.n_images
    plot_detections(Xte[:k, 0].numpy(), dets[:k], list(zip(bte[:k], lte[:k])), out_dir / "detections.png",
                    args.conf_threshold)  # fmt: skip
    plot_curves(hist, out_dir / "learning_curves.png", f"YOLO v1 (reduced) on synthetic scenes: test mAP@0.5 "
                f"{test_map50:.3f}, COCO mAP {test_coco:.3f}")  # fmt: skip
    with torch.device("meta"):
        paper_params = sum(w.numel() for w in yolov1().parameters())
    metrics = {"script": Path(__file__).stem, "test_map50": test_map50, "test_coco_map": test_coco,  # headline first
               "test_small_map50": test_small, "inference_images_per_s": images_per_s,
               "train_minutes": train_s / 60, "params": n_params, "val_map50": hist["val_map50"][-1],
               "init_val_map50": hist["init_val_map50"],
               "dropped_object_fraction": hist["dropped_objects"] / max(1, hist["train_objects"]),
               "test_ap50_per_class": dict(zip(FASHION_MNIST_CLASSES, aps.tolist())),
               "val_coco_map": hist["val_coco"][-1], "first_loss": hist["loss"][0],
               "final_train_loss": hist["loss"][-1], "paper_params": paper_params,
               "sec_per_epoch": float(np.median(hist["epoch_s"])),
               "device": str(device), "threads": torch.get_num_threads(), "config": vars(args),
               "history": hist}  # fmt: skip
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"test mAP@0.5 {test_map50:.4f}, COCO mAP@[.5:.95] {test_coco:.4f} after {train_s / 60:.1f} min; "
          f"{images_per_s:.0f} images/s inference on {device}; wrote {out_dir}/metrics.json, detections.png, "
          f"learning_curves.png")
    return metrics


if __name__ == "__main__":
    main()
