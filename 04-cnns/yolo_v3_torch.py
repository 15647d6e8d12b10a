"""YOLO v3 (Redmon & Farhadi 2018): Darknet-53 and predictions at three scales from anchor boxes, in PyTorch.

Darknet-53 is a stack of 3x3 convs (BatchNorm, leaky ReLU 0.1) of stride 2, each followed by residual
blocks x + conv3x3(conv1x1(x)). The detector takes its maps at strides 8, 16 and 32; the coarsest is read
first, then upsampled and concatenated with the finer map (a feature pyramid). Each cell of each scale
predicts, for each of its 3 anchors (priors of size p_w, p_h found by k-means on the training boxes with
d(box, centroid) = 1 - IoU, YOLOv2's method), 4 box numbers, an objectness and C class scores:

    b_x = sigmoid(t_x) + c_x,   b_y = sigmoid(t_y) + c_y   (cells)      b_w = p_w e^{t_w},  b_h = p_h e^{t_h}

A truth is assigned to the ONE anchor (of the 9, so one scale) whose shape overlaps its shape best, both
centred together, in the cell holding its centre. The loss, summed and divided by the images N:

    sum_obj [(sigmoid t_xy - g_xy)^2 + (t_wh - log(g_wh / p_wh))^2]      squared error on the box
  + sum_obj BCE(o, 1) + sum_noobj BCE(o, 0)                               objectness (logistic regression)
  + sum_obj sum_c BCE(s_c, 1[c = class])                                  independent logistic classes

noobj: every anchor that is not assigned, except those whose predicted box overlaps a truth with IoU > 0.5
(ignored: no objectness loss). Score of a detection: sigmoid(o) * sigmoid(s_c), then per-class NMS.

`darknet53()` (41,609,928 parameters) and `yolov3(80)` (61,949,149) build the paper's networks. What trains
here is the same network at a quarter of the width and depth [1, 1, 2, 2, 1] on 96x96 grayscale canvases of
Fashion-MNIST items (data.detection_scenes, 10 classes): 12x12, 6x6 and 3x3 grids. Multi-scale training
redraws the input size from --sizes every 10 steps; evaluation is at 96.

Reading: J. Redmon, A. Farhadi (2018), "YOLOv3: An Incremental Improvement", https://arxiv.org/abs/1804.02767
(section 2: bounding box prediction, class prediction, predictions across scales, Darknet-53 in Table 1);
J. Redmon, A. Farhadi (2017), "YOLO9000: Better, Faster, Stronger", https://arxiv.org/abs/1612.08242
(dimension clusters: k-means with 1 - IoU).
Arc: Object detection -- YOLO v3.

Run:  python 04-cnns/yolo_v3_torch.py          (20 epochs of 5000 fresh scenes; not yet timed quiet)
      python 04-cnns/yolo_v3_torch.py --smoke  (seconds: a small run on a few hundred scenes)
      python 04-cnns/yolo_v3_torch.py --width 0.5 --depth 1 2 4 4 2 --device cuda
Look first at `yolo_loss`: each term is one line; then `build_targets` and `kmeans_anchors`.
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
# ## The network: Darknet-53 (Table 1) and the three-scale detector


# %%
def conv_bn(c_in, c_out, k, stride=1):
    """Darknet's unit: conv (no bias) -> BatchNorm -> leaky ReLU 0.1; padding k // 2."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out),
                         nn.LeakyReLU(0.1))  # fmt: skip


class Residual(nn.Module):
    """x + conv3x3(conv1x1(x)): the 1x1 halves the channels, the 3x3 gives them back."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.conv2 = conv_bn(c, c // 2, 1), conv_bn(c // 2, c, 3)

    def forward(self, x):  # (N, c, h, w) -> (N, c, h, w)
        return x + self.conv2(self.conv1(x))


class Darknet53(nn.Module):
    """A 3x3 conv of 32 channels, then 5 stages: a 3x3 conv of stride 2 doubling the channels, then depth[i]
    residual blocks (the paper: 1, 2, 8, 8, 4; 52 convs), then global average pooling and a linear classifier
    (num_classes=0: none, the detector's backbone). width multiplies every channel count."""

    def __init__(self, num_classes=1000, in_channels=3, width=1.0, depth=(1, 2, 8, 8, 4)):
        super().__init__()
        self.channels = [max(2, round(c * width)) for c in (32, 64, 128, 256, 512, 1024)]
        ch = self.channels
        self.stem = conv_bn(in_channels, ch[0], 3)
        self.stages = nn.ModuleList(
            nn.Sequential(conv_bn(ch[i], ch[i + 1], 3, 2), *[Residual(ch[i + 1]) for _ in range(n)])
            for i, n in enumerate(depth)
        )
        self.fc = nn.Linear(ch[-1], num_classes) if num_classes else None

    def features(self, x):  # (N, in, H, W) -> the 5 stage outputs, strides 2, 4, 8, 16, 32
        x, out = self.stem(x), []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

    def forward(self, x):  # (N, in, H, W) -> (N, num_classes) logits
        return self.fc(self.features(x)[-1].mean((2, 3)))


def neck(c_in, c):
    """The 5 convs before each output: 1x1 to c, 3x3 to 2c, 1x1 to c, 3x3 to 2c, 1x1 to c."""
    return nn.Sequential(conv_bn(c_in, c, 1), conv_bn(c, 2 * c, 3), conv_bn(2 * c, c, 1), conv_bn(c, 2 * c, 3),
                         conv_bn(2 * c, c, 1))  # fmt: skip


class YOLOv3(nn.Module):
    """Darknet-53's stride 8, 16, 32 maps x3, x4, x5 -> three outputs (N, A, G, G, 5 + C), finest first.
    Per anchor: t_x, t_y, t_w, t_h, objectness, C class logits (the last convs are linear, with a bias)."""

    def __init__(self, num_classes=80, in_channels=3, width=1.0, depth=(1, 2, 8, 8, 4), num_anchors=3):
        super().__init__()
        self.C, self.A = num_classes, num_anchors
        self.backbone = Darknet53(0, in_channels, width, depth)
        c3, c4, c5 = self.backbone.channels[3:]  # 256, 512, 1024 at width 1
        out = num_anchors * (5 + num_classes)  # 255 for 80 classes
        self.neck5 = neck(c5, c5 // 2)
        self.head5 = nn.Sequential(conv_bn(c5 // 2, c5, 3), nn.Conv2d(c5, out, 1))
        self.lat5 = conv_bn(c5 // 2, c4 // 2, 1)  # before the 2x upsampling to stride 16
        self.neck4 = neck(c4 // 2 + c4, c4 // 2)
        self.head4 = nn.Sequential(conv_bn(c4 // 2, c4, 3), nn.Conv2d(c4, out, 1))
        self.lat4 = conv_bn(c4 // 2, c3 // 2, 1)  # before the 2x upsampling to stride 8
        self.neck3 = neck(c3 // 2 + c3, c3 // 2)
        self.head3 = nn.Sequential(conv_bn(c3 // 2, c3, 3), nn.Conv2d(c3, out, 1))
        self.register_buffer("anchors", torch.zeros(3 * num_anchors, 2))  # (w, h) in pixels, set by k-means
        with torch.no_grad():  # objectness starts at sigmoid(o) = 0.01, the prior of RetinaNet (arXiv 1708.02002):
            for head in (self.head3, self.head4, self.head5):  # else the hundreds of empty anchors swamp the loss
                head[1].bias.view(num_anchors, 5 + num_classes)[:, 4] = math.log(0.01 / 0.99)

    def forward(self, x):  # (N, in, H, W), H and W multiples of 32
        x3, x4, x5 = self.backbone.features(x)[2:]  # (N, c3, H/8, W/8), (N, c4, H/16, .), (N, c5, H/32, .)
        h5 = self.neck5(x5)
        h4 = self.neck4(torch.cat([F.interpolate(self.lat5(h5), scale_factor=2.0), x4], 1))  # upsample, concat
        h3 = self.neck3(torch.cat([F.interpolate(self.lat4(h4), scale_factor=2.0), x3], 1))
        outs = [self.head3(h3), self.head4(h4), self.head5(h5)]  # (N, A * (5 + C), G, G) each
        return [o.view(o.shape[0], self.A, 5 + self.C, *o.shape[2:]).permute(0, 1, 3, 4, 2) for o in outs]


def darknet53(num_classes=1000, in_channels=3, width=1.0, depth=(1, 2, 8, 8, 4)):
    """The paper's classifier (Table 1): 41,609,928 parameters for 1000 classes."""
    return Darknet53(num_classes, in_channels, width, depth)


def yolov3(num_classes=80, in_channels=3, width=1.0, depth=(1, 2, 8, 8, 4)):
    """The paper's detector: 61,949,149 parameters for 80 classes (255 output channels per scale)."""
    return YOLOv3(num_classes, in_channels, width, depth)


def model_from_config(config):
    """The reduced network a run's config (vars(args)) describes, untrained."""
    return yolov3(10, 1, config["width"], tuple(config["depth"]))


# %% [markdown]
# ## Anchors: k-means on the box shapes with the distance 1 - IoU (YOLOv2's dimension clusters)


# %%
def shape_iou(a, b):
    """(n, 2) and (k, 2) shapes (w, h) -> (n, k) IoU of the two boxes centred on one point."""
    inter = np.minimum(a[:, None, 0], b[None, :, 0]) * np.minimum(a[:, None, 1], b[None, :, 1])
    return inter / (a[:, None].prod(-1) + b[None, :].prod(-1) - inter)


def kmeans_anchors(wh, k=9, seed=0, iters=300):
    """(n, 2) box shapes -> (k, 2) centroids sorted by area. d(box, c) = 1 - IoU(box, c): a big box is not
    'far' from a big centroid just because its sides are long (Euclidean distance would favour large boxes).
    Seeding as k-means++ (each next centroid drawn with probability ~ d^2 to the nearest chosen one), then
    Lloyd's steps: assign each box to its nearest centroid, move each centroid to the mean of its boxes."""
    rng = np.random.default_rng(seed)
    wh = np.asarray(wh, np.float64)
    cent = wh[[rng.integers(len(wh))]]
    while len(cent) < k:
        d2 = (1 - shape_iou(wh, cent)).min(1) ** 2
        cent = np.concatenate([cent, wh[[rng.choice(len(wh), p=d2 / d2.sum())]]])
    assign = None
    for _ in range(iters):
        new = (1 - shape_iou(wh, cent)).argmin(1)  # the nearest centroid of each box
        if assign is not None and (new == assign).all():
            break
        assign = new
        cent = np.stack([wh[assign == j].mean(0) if (assign == j).any() else cent[j] for j in range(k)])
    return cent[np.argsort(cent.prod(1), kind="stable")]


# %% [markdown]
# ## Targets: each truth to its best anchor, at that anchor's scale, in the cell of its centre


# %%
def build_targets(boxes, labels, anchors, size, C, A=3):
    """Per image (k, 4) corner boxes in pixels of the `size` input, (k,) labels; anchors (3 A, 2) in pixels,
    smallest first (A per scale: strides 8, 16, 32). Returns T (N, P, 5 + C), P = sum over scales of A * G^2
    in the order of `flatten`: per position g_x, g_y (centre offset in its cell, [0, 1)), log(g_w / p_w),
    log(g_h / p_h), 1obj, one-hot class; and the number of truths dropped because an earlier truth of the
    image already took the same anchor of the same cell."""
    grids = [size // s for s in (8, 16, 32)]
    starts = np.cumsum([0] + [A * g * g for g in grids])
    T = np.zeros((len(boxes), starts[-1], 5 + C), np.float32)
    dropped = 0
    for n, (bx, lb) in enumerate(zip(boxes, labels)):
        bx = np.asarray(bx, np.float64).reshape(-1, 4)
        wh = bx[:, 2:] - bx[:, :2]
        best = shape_iou(wh, anchors).argmax(1)  # the anchor (of all 3 A) whose shape fits best
        for (x1, y1, x2, y2), (w, h), a, c in zip(bx, wh, best, lb):
            s, stride = a // A, 8 * 2 ** (a // A)  # its scale
            cx, cy, G = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride, grids[s]
            col, row = min(int(cx), G - 1), min(int(cy), G - 1)
            i = starts[s] + ((a % A) * G + row) * G + col
            if T[n, i, 4] == 1:
                dropped += 1
                continue
            T[n, i, :5] = cx - col, cy - row, np.log(w / anchors[a, 0]), np.log(h / anchors[a, 1]), 1.0
            T[n, i, 5 + c] = 1.0
    return torch.from_numpy(T), dropped


def flatten(outs):
    """Three outputs (N, A, G, G, 5 + C) -> (N, P, 5 + C), P = sum A G^2, anchor-major within each scale."""
    return torch.cat([o.reshape(o.shape[0], -1, o.shape[-1]) for o in outs], 1)


def decode_boxes(outs, anchors, size):
    """Corner boxes (N, P, 4) in pixels: b_x = (sigmoid(t_x) + c_x) * stride, b_w = p_w exp(t_w)."""
    boxes = []
    for s, o in enumerate(outs):  # o: (N, A, G, G, 5 + C)
        A, G = o.shape[1], o.shape[2]
        stride, g = size / G, torch.arange(G, dtype=o.dtype, device=o.device)
        cx = (torch.sigmoid(o[..., 0]) + g.view(1, 1, 1, G)) * stride  # column c_x
        cy = (torch.sigmoid(o[..., 1]) + g.view(1, 1, G, 1)) * stride  # row c_y
        p = torch.as_tensor(anchors[s * A : (s + 1) * A], dtype=o.dtype, device=o.device).view(1, A, 1, 1, 2)
        wh = p * torch.exp(o[..., 2:4].clamp(max=10))  # (N, A, G, G, 2); the clamp keeps e^t finite
        b = torch.stack([cx - wh[..., 0] / 2, cy - wh[..., 1] / 2, cx + wh[..., 0] / 2, cy + wh[..., 1] / 2], -1)
        boxes.append(b.reshape(o.shape[0], -1, 4))
    return torch.cat(boxes, 1)


def pad_truths(boxes, device):
    """Per image (k, 4) boxes -> (N, max k, 4) tensor, zero boxes as padding (they overlap nothing)."""
    M = max([1] + [len(b) for b in boxes])
    out = torch.zeros(len(boxes), M, 4)
    for n, b in enumerate(boxes):
        out[n, : len(b)] = torch.as_tensor(np.asarray(b, np.float32).reshape(-1, 4))
    return out.to(device)


def pairwise_iou(a, b):
    """(N, P, 4) and (N, M, 4) corner boxes -> (N, P, M) IoU (torch); 0 where a union is empty."""
    iw = (torch.minimum(a[..., :, None, 2], b[..., None, :, 2]) - torch.maximum(a[..., :, None, 0], b[..., None, :, 0]))
    ih = (torch.minimum(a[..., :, None, 3], b[..., None, :, 3]) - torch.maximum(a[..., :, None, 1], b[..., None, :, 1]))
    inter = iw.clamp(min=0) * ih.clamp(min=0)
    area = lambda z: (z[..., 2] - z[..., 0]).clamp(min=0) * (z[..., 3] - z[..., 1]).clamp(min=0)  # noqa: E731
    union = area(a)[..., :, None] + area(b)[..., None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


# %% [markdown]
# ## The loss: squared error on the box, logistic objectness with the ignore rule, logistic classes


# %%
def yolo_loss(outs, T, truths, anchors, size, ignore_threshold=0.5):
    """outs: the model's three outputs; T (N, P, 5 + C) from build_targets; truths (N, M, 4) pixel boxes
    (pad_truths). Returns (loss, terms): sums over anchors and positions divided by N."""
    N, p = outs[0].shape[0], flatten(outs)  # p: (N, P, 5 + C)
    obj = T[..., 4]  # 1obj (N, P): the assigned anchors
    with torch.no_grad():  # which unassigned anchors are ignored: their predicted box overlaps a truth > 0.5
        best_iou = pairwise_iou(decode_boxes(outs, anchors, size), truths).amax(-1)  # (N, P)
    noobj = (1 - obj) * (best_iou <= ignore_threshold).to(p.dtype)
    bce = F.binary_cross_entropy_with_logits
    terms = {
        "xy": (obj * ((torch.sigmoid(p[..., 0:2]) - T[..., 0:2]) ** 2).sum(-1)).sum() / N,  # the sigmoid offsets
        "wh": (obj * ((p[..., 2:4] - T[..., 2:4]) ** 2).sum(-1)).sum() / N,  # t_w vs log(g_w / p_w)
        "obj": (obj * bce(p[..., 4], torch.ones_like(obj), reduction="none")).sum() / N,
        "noobj": (noobj * bce(p[..., 4], torch.zeros_like(obj), reduction="none")).sum() / N,
        "cls": (obj * bce(p[..., 5:], T[..., 5:], reduction="none").sum(-1)).sum() / N,  # multi-label
    }
    return sum(terms.values()), terms


# %% [markdown]
# ## Detection, IoU, non-max suppression and mAP (compact copies; 04-cnns/detection_numpy.py teaches them)


# %%
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


def detect(outs, anchors, size, conf_threshold, nms_threshold, max_dets=100, pre_nms=300):
    """Three outputs -> per image (boxes (k, 4) pixels clipped to the canvas, scores (k,), labels (k,)): the
    (box, class) pairs whose score sigmoid(o) sigmoid(s_c) exceeds conf_threshold, at most the best pre_nms of
    them (NMS is a Python loop), per-class NMS, then the best max_dets (COCO's 100)."""
    boxes = decode_boxes(outs, anchors, size).clamp(0, size).detach().cpu().numpy()  # (N, P, 4)
    p = flatten(outs).detach()
    scores = (torch.sigmoid(p[..., 4:5]) * torch.sigmoid(p[..., 5:])).cpu().numpy()  # (N, P, C)
    out = []
    for bx, sc in zip(boxes, scores):
        i, c = np.nonzero(sc > conf_threshold)  # candidates: box i with class c
        top = np.argsort(-sc[i, c], kind="stable")[:pre_nms]
        i, c, kept = i[top], c[top], []
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


SMALL_AREA = 16**2  # a "small" truth: area (x2 - x1)(y2 - y1) < 256 px^2 (COCO's 32^2, for 96x96 canvases)


def mean_ap(dets, truths, C, iou_threshold=0.5, points=None, max_area=None):
    """dets: per image (boxes, scores, labels); truths: per image (boxes, labels). Per image and class,
    detections by descending score each take an unmatched truth, a true positive if IoU >= iou_threshold (each
    truth matched once); then per class all detections by descending score give precision, recall and AP.
    max_area (COCO's area range [0, max_area)): truths outside it are ignored (not counted); a detection
    prefers the best in-range truth, else takes the best ignored one and is then neither TP nor FP, and an
    unmatched detection outside the range is dropped too. Returns the mean over classes that have a truth,
    and the per-class APs (nan where a class has none)."""
    aps = np.full(C, np.nan)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    for c in range(C):
        scores, tps, n_gt = [], [], 0
        for (bx, sc, lb), (tb, tl) in zip(dets, truths):
            d, g = np.argsort(-sc[lb == c], kind="stable"), tb[tl == c]
            db = bx[lb == c][d]
            iou = box_iou(db, g)  # (D, G), best detection first
            big = area(g) >= max_area if max_area else np.zeros(len(g), bool)  # the ignored truths
            used, tp, keep = np.zeros(len(g), bool), np.zeros(len(d)), np.ones(len(d), bool)
            for k in range(len(d)):
                free = iou[k] * ~used >= iou_threshold  # unmatched truths it overlaps enough
                if (free & ~big).any():  # a truth in range: a true positive
                    j = np.where(free & ~big, iou[k], -1).argmax()
                    tp[k], used[j] = 1, True
                elif free.any():  # only ignored truths: matched, neither TP nor FP
                    used[np.where(free, iou[k], -1).argmax()], keep[k] = True, False
                elif max_area and area(db[k : k + 1])[0] >= max_area:  # an unmatched detection out of range
                    keep[k] = False
            scores.append(sc[lb == c][d][keep]), tps.append(tp[keep])
            n_gt += int((~big).sum())
        if n_gt == 0:
            continue
        order = np.argsort(-np.concatenate(scores), kind="stable")
        ctp = np.cumsum(np.concatenate(tps)[order])
        aps[c] = average_precision(ctp / n_gt, ctp / np.arange(1, len(ctp) + 1), points) if len(ctp) else 0.0
    return float(np.nanmean(aps)) if not np.isnan(aps).all() else 0.0, aps


def coco_map(dets, truths, C):
    """COCO's mAP@[.5:.95]: the 101-point AP averaged over IoU thresholds 0.50, 0.55, ..., 0.95 and classes."""
    return float(np.mean([mean_ap(dets, truths, C, t, points=101)[0] for t in np.linspace(0.5, 0.95, 10)]))


# %% [markdown]
# ## Data: scenes, flips, multi-scale resizing, evaluation, checkpoints


# %%
IMAGE_SIZE = 96  # canvases of data.detection_scenes; grids 12, 6, 3 at strides 8, 16, 32
EVAL_THRESHOLD = 0.005  # mAP ranks all detections: this only trims the list
SIZE_EVERY = 10  # multi-scale training: a new input size every 10 steps


def load_data(split, n, seed, args):
    """n scenes of `split` (Fashion-MNIST's train or test items): images (n, 1, 96, 96), boxes, labels."""
    images, boxes, labels = detection_scenes(split, n, IMAGE_SIZE, args.max_objects, seed,
                                             min_objects=args.min_objects, scale=tuple(args.scale),
                                             data_dir=args.data_dir)  # fmt: skip
    return torch.from_numpy(images).unsqueeze(1), boxes, labels


def hflip(images, boxes, flip):
    """Mirror the images where flip[i]; a box (x1, y1, x2, y2) becomes (W - x2, y1, W - x1, y2)."""
    W = images.shape[-1]
    images = torch.where(torch.as_tensor(flip).view(-1, 1, 1, 1), images.flip(-1), images)
    boxes = [np.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], 1) if f else b for b, f in zip(boxes, flip)]
    return images, boxes


def resize(images, boxes, size):
    """Bilinear resize of a batch to size x size; the boxes scale with it."""
    if size == images.shape[-1]:
        return images, boxes
    r = size / images.shape[-1]
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False), [b * r for b in boxes]


def detect_images(model, X, device, conf_threshold, nms_threshold, chunk=250):
    """Detections on (N, 1, 96, 96) images in eval mode (BatchNorm's running statistics), no gradient."""
    was = model.training
    model.eval()
    dets = []
    with torch.no_grad():
        for s in range(0, len(X), chunk):
            outs = model(X[s : s + chunk].to(device))
            dets += detect(outs, model.anchors.cpu().numpy(), X.shape[-1], conf_threshold, nms_threshold)
    model.train(was)
    return dets


def evaluate(model, X, boxes, labels, device, nms_threshold):
    """mAP@0.5 (VOC all-point), COCO mAP@[.5:.95], small-object mAP@0.5, per-class AP@0.5, and the detections."""
    dets = detect_images(model, X, device, EVAL_THRESHOLD, nms_threshold)
    truths = list(zip(boxes, labels))
    m50, aps = mean_ap(dets, truths, model.C)
    small = mean_ap(dets, truths, model.C, max_area=SMALL_AREA)[0]
    return m50, coco_map(dets, truths, model.C), small, aps, dets


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
# ## Figures: detections on test scenes, training curves (as in yolo_v1_torch.py)


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
    for k in ("xy", "wh", "obj", "noobj", "cls", "loss"):
        ax[0].plot(epochs, hist[k], "o-" if k == "loss" else ".-", label=k, lw=2 if k == "loss" else 1)
    ax[1].plot(epochs, hist["val_map50"], "o-", label="mAP@0.5 (VOC all-point)")
    ax[1].plot(epochs, hist["val_coco"], "s-", label="mAP@[.5:.95] (COCO)")
    ax[1].plot(epochs, hist["val_small_map50"], "^-", label="mAP@0.5, small objects")
    ax[2].plot(np.arange(len(hist["lr"])) / max(1, len(hist["lr"]) // len(epochs)), hist["lr"])
    ax[0].set(xlabel="epoch", ylabel="loss per image", yscale="log", title="training loss")
    ax[1].set(xlabel="epoch", ylabel="mAP", ylim=(0, 1), title="validation scenes (training items)")
    ax[2].set(xlabel="epoch", ylabel="learning rate", title="warm-up, then cosine")
    ax[0].legend(fontsize=7), ax[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)


# %% [markdown]
# ## Main: flags, anchors, one flat training loop, the test scenes at the end


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
    p.add_argument("--min-objects", type=positive_int, default=3, help="fewest items per scene (default 3)")
    p.add_argument("--max-objects", type=positive_int, default=8, help="most items per scene (default 8)")
    p.add_argument("--scale", type=positive_float, nargs=2, default=[0.35, 1.2], metavar=("LOW", "HIGH"),
                   help="range of an item's size relative to 28 pixels (default 0.35 1.2)")
    p.add_argument("--width", type=positive_float, default=0.25, help="channel multiplier of Darknet-53 and the "
                   "heads (default 0.25; 1 is the paper's)")
    p.add_argument("--depth", type=positive_int, nargs=5, default=[1, 1, 2, 2, 1], help="residual blocks of the "
                   "five stages (default 1 1 2 2 1; the paper's 1 2 8 8 4)")
    p.add_argument("--sizes", type=positive_int, nargs="+", default=[64, 96, 128], help="multi-scale training: "
                   f"input sizes, multiples of 32, one drawn every {SIZE_EVERY} steps (default 64 96 128; 96 "
                   "alone switches it off); evaluation is at 96")
    p.add_argument("--batch-size", type=positive_int, default=16, help="scenes per step (default 16)")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="peak learning rate of Adam (default 2e-3)")
    p.add_argument("--weight-decay", type=nonneg_float, default=5e-4, help="L2 folded into the gradient, the "
                   "paper's 5e-4 (default 5e-4)")
    p.add_argument("--warmup-epochs", type=nonneg_float, default=1.0, help="linear warm-up (default 1 epoch)")
    p.add_argument("--conf-threshold", type=probability, default=0.2, help="score above which a detection is "
                   "drawn in the figure (default 0.2; mAP ranks every detection above 0.005)")
    p.add_argument("--nms-threshold", type=probability, default=0.5, help="NMS drops a box whose IoU with a "
                   "better one of its class is greater (default 0.5)")
    p.add_argument("--n-images", type=positive_int, default=8, help="test scenes in the figure (default 8)")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/checkpoint.pt (written every "
                   "epoch); a changed configuration is refused")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds weights, scenes, flips, anchors (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="metrics, figures, checkpoint (default runs/yolo_v3_torch)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a few hundred real scenes")
    args = p.parse_args(argv)
    defaults = {"epochs": (2, 20), "n_train": (600, 5000), "n_val": (100, 500), "n_test": (200, 2000)}
    for name, (smoke, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    if args.warmup_epochs > args.epochs:
        p.error(f"--warmup-epochs {args.warmup_epochs} must not exceed --epochs {args.epochs}")
    if args.min_objects > args.max_objects:
        p.error(f"--min-objects {args.min_objects} must not exceed --max-objects {args.max_objects}")
    if not args.scale[0] <= args.scale[1]:
        p.error(f"--scale {args.scale[0]} {args.scale[1]}: LOW must not exceed HIGH")
    if any(s % 32 for s in args.sizes):
        p.error(f"--sizes {' '.join(map(str, args.sizes))}: each must be a multiple of 32 (the coarsest stride)")
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
        Xva, bva, lva = load_data("train", args.n_val, seeds["val"], args)
        Xte, bte, lte = load_data("test", args.n_test, seeds["test"], args)
        first = load_data("train", args.n_train, args.seed * 1000 + 1, args)  # epoch 1's scenes
    except DataError as exc:
        sys.exit(f"error: {exc}")
    # Anchors: k-means (1 - IoU) over the shapes of epoch 1's training boxes; 3 per scale, smallest at stride 8.
    wh = np.concatenate([b[:, 2:] - b[:, :2] for b in first[1]])
    anchors = kmeans_anchors(wh, 9, args.seed) if ckpt is None else ckpt["anchors"]
    torch.manual_seed(args.seed)
    model = model_from_config(vars(args)).to(device)
    model.anchors.copy_(torch.as_tensor(anchors))  # (9, 2) pixels, saved in the state_dict and the checkpoint
    C = model.C
    out_dir.mkdir(parents=True, exist_ok=True)
    n_params = sum(w.numel() for w in model.parameters())
    print(f"YOLO v3 (reduced, width {args.width}, depth {args.depth}): {n_params:,} parameters; anchors (w, h) "
          f"{np.round(anchors, 1).tolist()}; {args.n_train} fresh training scenes per epoch, {args.n_val} "
          f"validation, {args.n_test} test scenes on {device}")  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(args.n_train / args.batch_size)
    total, warmup = args.epochs * steps_per_epoch, round(args.warmup_epochs * steps_per_epoch)
    keys = ("loss", "xy", "wh", "obj", "noobj", "cls", "val_map50", "val_coco", "val_small_map50", "epoch_s", "lr")
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
            X, boxes, labels = first if epoch == 1 else load_data("train", args.n_train, args.seed * 1000 + epoch,
                                                                  args)  # fmt: skip
            rng = np.random.default_rng([args.seed, epoch])
            X, boxes = hflip(X, boxes, rng.random(len(X)) < 0.5)  # ... and a horizontal flip of half of them
            order = rng.permutation(len(X))
            sums = dict.fromkeys(keys[:6], 0.0)
            bar = tqdm(range(0, len(X), args.batch_size), desc=f"epoch {epoch}/{args.epochs}", leave=False,
                       disable=not sys.stdout.isatty())  # fmt: skip
            for b, s in enumerate(bar):
                if b % SIZE_EVERY == 0:  # multi-scale: a new input size every SIZE_EVERY steps
                    size = int(rng.choice(args.sizes))
                lr = args.lr * warmup_cosine(step, warmup, total)
                for group in opt.param_groups:
                    group["lr"] = lr
                idx = order[s : s + args.batch_size]
                xb, bb = resize(X[idx], [boxes[i] for i in idx], size)  # (n, 1, size, size), pixel boxes
                T, dropped = build_targets(bb, [labels[i] for i in idx], anchors, size, C)  # (n, P, 5 + C)
                hist["dropped_objects"] += dropped
                hist["train_objects"] += sum(len(x) for x in bb)
                loss, terms = yolo_loss(model(xb.to(device)), T.to(device), pad_truths(bb, device), anchors, size)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                hist["lr"].append(lr)
                for k, v in (("loss", loss), *terms.items()):
                    sums[k] += v.item() * len(idx) / len(X)
                if not bar.disable:
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", size=size)
            val_map50, val_coco, val_small = evaluate(model, Xva, bva, lva, device, args.nms_threshold)[:3]
            train_s += time.perf_counter() - t0
            for k, v in (*sums.items(), ("val_map50", val_map50), ("val_coco", val_coco),
                         ("val_small_map50", val_small), ("epoch_s", time.perf_counter() - t0)):  # fmt: skip
                hist[k].append(float(v))
            print(f"epoch {epoch:2d}/{args.epochs}  loss {sums['loss']:.3f} (xy {sums['xy']:.3f} wh {sums['wh']:.3f} "
                  f"obj {sums['obj']:.3f} noobj {sums['noobj']:.3f} cls {sums['cls']:.3f}) | val mAP@0.5 "
                  f"{val_map50:.4f} COCO {val_coco:.4f} small {val_small:.4f} | {hist['epoch_s'][-1]:.1f} s, "
                  f"{train_s / 60:.1f} min", flush=True)  # fmt: skip
            save_checkpoint(ckpt_path, model=model.state_dict(), opt=opt.state_dict(), epoch=epoch, hist=hist,
                            torch_rng=torch.get_rng_state(), config=vars(args), train_s=train_s, anchors=anchors)
            saved = epoch
    except KeyboardInterrupt:  # Ctrl-C: say what is saved and how to go on, without a traceback
        flags = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--resume"]
        where = f"{ckpt_path} holds epoch {saved}. Resume with" if saved else "nothing saved. Start again with"
        print(f"\ninterrupted in epoch {epoch}; {where}:\n  " + shlex.join(
            ["python", "04-cnns/yolo_v3_torch.py", *flags] + (["--resume"] if saved else [])), file=sys.stderr)
        sys.exit(130)

    test_map50, test_coco, test_small, aps, dets = evaluate(model, Xte, bte, lte, device, args.nms_threshold)
    t0 = time.perf_counter()  # inference speed: forward passes, decoding, threshold and NMS, batches of 64
    for s in range(0, len(Xte), 64):
        detect_images(model, Xte[s : s + 64], device, EVAL_THRESHOLD, args.nms_threshold)
    images_per_s = len(Xte) / (time.perf_counter() - t0)
    k = args.n_images
    plot_detections(Xte[:k, 0].numpy(), dets[:k], list(zip(bte[:k], lte[:k])), out_dir / "detections.png",
                    args.conf_threshold)  # fmt: skip
    plot_curves(hist, out_dir / "learning_curves.png", f"YOLO v3 (reduced) on synthetic scenes: test mAP@0.5 "
                f"{test_map50:.3f}, COCO mAP {test_coco:.3f}, small-object mAP@0.5 {test_small:.3f}")  # fmt: skip
    with torch.device("meta"):
        paper_params = {"darknet53": sum(w.numel() for w in darknet53().parameters()),
                        "yolov3": sum(w.numel() for w in yolov3().parameters())}  # fmt: skip
    metrics = {"script": Path(__file__).stem, "test_map50": test_map50, "test_coco_map": test_coco,  # headline first
               "test_small_map50": test_small, "inference_images_per_s": images_per_s,
               "train_minutes": train_s / 60, "params": n_params, "val_map50": hist["val_map50"][-1],
               "init_val_map50": hist["init_val_map50"], "anchors": np.asarray(anchors).round(3).tolist(),
               "dropped_object_fraction": hist["dropped_objects"] / max(1, hist["train_objects"]),
               "test_ap50_per_class": dict(zip(FASHION_MNIST_CLASSES, aps.tolist())),
               "val_coco_map": hist["val_coco"][-1], "first_loss": hist["loss"][0],
               "final_train_loss": hist["loss"][-1], "paper_params": paper_params,
               "sec_per_epoch": float(np.median(hist["epoch_s"])),
               "device": str(device), "threads": torch.get_num_threads(), "config": vars(args),
               "history": hist}  # fmt: skip
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"test mAP@0.5 {test_map50:.4f}, COCO mAP@[.5:.95] {test_coco:.4f}, small-object mAP@0.5 {test_small:.4f} "
          f"after {train_s / 60:.1f} min; {images_per_s:.0f} images/s inference on {device}; wrote "
          f"{out_dir}/metrics.json, detections.png, learning_curves.png")
    return metrics


if __name__ == "__main__":
    main()
