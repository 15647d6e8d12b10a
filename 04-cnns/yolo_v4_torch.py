"""YOLO v4 (Bochkovskiy et al. 2020): CSPDarknet53 + SPP + PANet + YOLOv3's heads, and its bag of freebies.

Backbone: Darknet-53 whose five stages are Cross-Stage-Partial: a stride-2 conv, then two 1x1 branches, residual
blocks on one, concatenation and a 1x1 fusion; activation Mish(x) = x tanh(softplus(x)). Neck: SPP (max-pools
5, 9, 13, stride 1, concatenated) on the stride-32 map, then PANet: top-down (upsample + lateral) to stride 8,
bottom-up (stride-2 convs) back to 32, leaky ReLU 0.1. Heads (YOLOv3's): per cell and anchor (t_x, t_y, t_w, t_h,
objectness, C class logits) at strides 8, 16, 32, 3 anchors each, from k-means (distance 1 - IoU) on box shapes:

    b_x = (s sigmoid(t_x) - (s - 1) / 2 + c_x) * stride      s: grid sensitivity (s = 1 is YOLOv3's)
    b_w = p_w exp(t_w)                                         p_w: the anchor's width
    score = sigmoid(objectness) sigmoid(class)

Each truth goes to the anchor (of all 9) whose shape has the best IoU with it, in the cell holding its centre;
an unassigned prediction whose box has IoU > 0.5 with some truth is ignored by the objectness loss. The loss
(sums over the batch / N): box + BCE(objectness) + BCE(classes, targets (1 - eps) onehot + eps / C), box =

    CIoU (Zheng et al. 2020): 1 - IoU + rho^2(b, b_gt) / c^2 + alpha v,  v = 4/pi^2 (atan(w_gt/h_gt) - atan(w/h))^2,
                              alpha = v / ((1 - IoU) + v), a constant in the gradient
    or mse (YOLOv3's):        (offset - offset_gt)^2 + (t_w - log(w_gt / p_w))^2, summed over x, y

Freebies, each a flag: CIoU (--box-loss), mosaic (four scenes cropped around a random centre into one canvas),
label smoothing, grid sensitivity, cosine schedule (vs steps), DropBlock (zeroes b x b blocks; off by default).
`cspdarknet53()` (ImageNet classifier, 27,642,184 parameters; the paper's Table 1 says 27.6M) and `yolov4()`
(80 classes: 64,363,101, as PyTorch ports count: convs without bias + BatchNorm, biases on the 3 output convs)
are full size; what trains is `yolov4(10, width=0.125, blocks=(1, 1, 1, 1, 1), in_channels=1)` on 96x96
canvases of Fashion-MNIST items (data.detection_scenes).

Reading: A. Bochkovskiy, C.-Y. Wang, H.-Y. M. Liao (2020), "YOLOv4: Optimal Speed and Accuracy of Object
Detection", https://arxiv.org/abs/2004.10934; Z. Zheng et al. (2020), "Distance-IoU Loss", AAAI,
https://arxiv.org/abs/1911.08287 (CIoU); G. Ghiasi, T.-Y. Lin, Q. V. Le (2018), "DropBlock",
https://arxiv.org/abs/1810.12890; J. Redmon, A. Farhadi (2018), "YOLOv3", https://arxiv.org/abs/1804.02767.
Arc: Object detection -- YOLO v4.

Run:  python 04-cnns/yolo_v4_torch.py          (20 epochs of 5000 fresh scenes; not yet timed quiet)
      python 04-cnns/yolo_v4_torch.py --smoke  (seconds: a small run on a few hundred scenes)
      python 04-cnns/yolo_v4_torch.py --box-loss mse --mosaic 0 --label-smoothing 0 --grid-sensitivity 1
Look first at `YOLOv4.forward`, then `ciou`, `build_targets` and `yolo_loss`; `mosaic` for the augmentation.
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
# ## The network: CSPDarknet53 (Mish), SPP, PANet (leaky ReLU), YOLOv3's heads


# %%
class Mish(nn.Module):
    def forward(self, x):
        return x * torch.tanh(F.softplus(x))  # Mish(x) = x tanh(ln(1 + e^x))


def conv(c_in, c_out, k, stride=1, act="mish"):
    """Conv (no bias: BatchNorm's shift replaces it) -> BatchNorm -> Mish or leaky ReLU 0.1; padding k // 2."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out),
                         Mish() if act == "mish" else nn.LeakyReLU(0.1))  # fmt: skip


class ResBlock(nn.Module):
    def __init__(self, c, mid):
        super().__init__()
        self.cv1, self.cv2 = conv(c, mid, 1), conv(mid, c, 3)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))  # x + F(x), F = 1x1 then 3x3


class CSPStage(nn.Module):
    """Downsample (3x3, stride 2), then part 1 = a 1x1 conv (the shortcut), part 2 = 1x1 conv -> n residual blocks
    -> 1x1 transition; concatenate and fuse with a 1x1. The first stage keeps full width (hidden = c_out)."""

    def __init__(self, c_in, c_out, n, first=False):
        super().__init__()
        h = c_out if first else c_out // 2
        self.down = conv(c_in, c_out, 3, 2)
        self.part1, self.part2 = conv(c_out, h, 1), conv(c_out, h, 1)
        self.blocks = nn.Sequential(*[ResBlock(h, h // 2 if first else h) for _ in range(n)])
        self.trans, self.fuse = conv(h, h, 1), conv(2 * h, c_out, 1)

    def forward(self, x):  # (N, c_in, H, W)
        x = self.down(x)  # (N, c_out, H/2, W/2)
        return self.fuse(torch.cat([self.trans(self.blocks(self.part2(x))), self.part1(x)], 1))


def widths(width):
    """The paper's channels (stem 32, stages 64 ... 1024) times the multiplier, at least 2."""
    return [max(2, round(c * width)) for c in (32, 64, 128, 256, 512, 1024)]


class CSPDarknet(nn.Module):
    """Stem conv 3x3, five CSP stages (strides 2 ... 32). `features` gives the stride 8, 16, 32 maps; with
    num_classes, forward is the ImageNet classifier: global average pool, 1x1 conv with bias (darknet's)."""

    def __init__(self, width=1.0, blocks=(1, 2, 8, 8, 4), in_channels=3, num_classes=None):
        super().__init__()
        c = widths(width)
        self.stem = conv(in_channels, c[0], 3)
        self.stages = nn.ModuleList(CSPStage(c[i], c[i + 1], n, first=i == 0) for i, n in enumerate(blocks))
        self.fc = nn.Conv2d(c[5], num_classes, 1) if num_classes else None

    def features(self, x):
        x = self.stem(x)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out[2:]  # (N, c3, H/8, W/8), (N, c4, H/16, W/16), (N, c5, H/32, W/32)

    def forward(self, x):
        return self.fc(self.features(x)[-1].mean((2, 3), keepdim=True)).flatten(1)  # (N, num_classes)


def cspdarknet53(num_classes=1000, width=1.0, blocks=(1, 2, 8, 8, 4), in_channels=3):
    """The ImageNet classifier of the paper's Table 1: 27,642,184 parameters (27.6M) at 1000 classes."""
    return CSPDarknet(width, blocks, in_channels, num_classes)


class SPP(nn.Module):
    def forward(self, x):  # (N, c, h, w) -> (N, 4c, h, w): max-pools 13, 9, 5 (stride 1, same padding) and x
        return torch.cat([F.max_pool2d(x, k, 1, k // 2) for k in (13, 9, 5)] + [x], 1)


class DropBlock(nn.Module):
    """Ghiasi et al. 2018: in training, zero b x b blocks around seeds drawn with rate gamma (only where a whole
    block fits), gamma = p / b^2 * HW / ((H - b + 1)(W - b + 1)), then rescale by numel / kept; eval: identity."""

    def __init__(self, p=0.0, block=3):
        super().__init__()
        self.p, self.block = p, block

    def forward(self, x):  # (N, C, H, W)
        if not self.training or self.p == 0:
            return x
        H, W = x.shape[-2:]
        b = min(self.block, H, W)
        gamma = self.p / b**2 * H * W / ((H - b + 1) * (W - b + 1))
        seeds = (torch.rand(*x.shape[:2], H - b + 1, W - b + 1, device=x.device) < gamma).to(x.dtype)
        dropped = F.max_pool2d(F.pad(seeds, (b - 1,) * 4), b, stride=1)  # (N, C, H, W): 1 inside every block
        keep = 1 - dropped
        return x * keep * keep.numel() / keep.sum().clamp(min=1)


def five(c_in, c):
    """PANet's five convs: 1x1 c, 3x3 2c, 1x1 c, 3x3 2c, 1x1 c (leaky)."""
    return nn.Sequential(conv(c_in, c, 1, act="leaky"), conv(c, 2 * c, 3, act="leaky"), conv(2 * c, c, 1, act="leaky"),
                         conv(c, 2 * c, 3, act="leaky"), conv(2 * c, c, 1, act="leaky"))  # fmt: skip


# yolov4.cfg's anchors for 608x608 inputs (w, h in pixels), 3 per scale, smallest on stride 8
PAPER_ANCHORS = [[12, 16], [19, 36], [40, 28], [36, 75], [76, 55], [72, 146], [142, 110], [192, 243], [459, 401]]
STRIDES = (8, 16, 32)


class YOLOv4(nn.Module):
    """Backbone -> SPP -> PANet -> three heads; forward returns, per stride 8, 16, 32, a (N, 3, H/s, W/s, 5 + C)
    tensor of raw outputs (t_x, t_y, t_w, t_h, objectness, C class logits) for the scale's 3 anchors."""

    def __init__(self, num_classes=80, width=1.0, blocks=(1, 2, 8, 8, 4), in_channels=3, anchors=PAPER_ANCHORS,
                 grid_sensitivity=1.0, dropblock=0.0):  # fmt: skip
        super().__init__()
        self.C, self.grid_sensitivity = num_classes, grid_sensitivity
        self.register_buffer("anchors", torch.as_tensor(anchors, dtype=torch.float32).view(3, 3, 2))  # pixels
        self.backbone = CSPDarknet(width, blocks, in_channels)
        self.dropblock = DropBlock(dropblock)
        _, _, _, c3, c4, c5 = widths(width)
        a, b, d = c3 // 2, c4 // 2, c5 // 2  # neck widths at strides 8, 16, 32: 128, 256, 512 at full size
        L = "leaky"
        self.pre_spp = nn.Sequential(conv(c5, d, 1, act=L), conv(d, 2 * d, 3, act=L), conv(2 * d, d, 1, act=L))
        self.spp = SPP()
        self.post_spp = nn.Sequential(conv(4 * d, d, 1, act=L), conv(d, 2 * d, 3, act=L), conv(2 * d, d, 1, act=L))
        self.up5, self.lat4, self.td4 = conv(d, b, 1, act=L), conv(c4, b, 1, act=L), five(2 * b, b)  # top-down
        self.up4, self.lat3, self.td3 = conv(b, a, 1, act=L), conv(c3, a, 1, act=L), five(2 * a, a)
        self.down3, self.bu4 = conv(a, b, 3, 2, act=L), five(2 * b, b)  # bottom-up
        self.down4, self.bu5 = conv(b, d, 3, 2, act=L), five(2 * d, d)
        self.heads = nn.ModuleList(nn.Sequential(conv(c, 2 * c, 3, act=L), nn.Conv2d(2 * c, 3 * (5 + num_classes), 1))
                                   for c in (a, b, d))  # fmt: skip   YOLOv3's: 3x3 conv, linear 1x1 with bias
        for head in self.heads:  # start from priors: P(object) = 0.01 per anchor, P(class) = 1 / C (no huge early loss)
            bias = head[-1].bias.detach().view(3, 5 + num_classes)
            bias[:, 4], bias[:, 5:] = -math.log(99), -math.log(max(num_classes - 1, 1))

    def forward(self, x):  # (N, in_channels, H, W), H and W multiples of 32
        x3, x4, x5 = (self.dropblock(f) for f in self.backbone.features(x))  # strides 8, 16, 32
        p5 = self.post_spp(self.spp(self.pre_spp(x5)))  # (N, d, H/32, W/32)
        up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
        p4 = self.td4(torch.cat([self.lat4(x4), up(self.up5(p5))], 1))  # (N, b, H/16, W/16)
        n3 = self.td3(torch.cat([self.lat3(x3), up(self.up4(p4))], 1))  # (N, a, H/8, W/8)
        n4 = self.bu4(torch.cat([self.down3(n3), p4], 1))  # (N, b, H/16, W/16)
        n5 = self.bu5(torch.cat([self.down4(n4), p5], 1))  # (N, d, H/32, W/32)
        outs = []
        for head, n in zip(self.heads, (n3, n4, n5)):
            o = head(n)  # (N, 3 (5 + C), h, w)
            outs.append(o.view(o.shape[0], 3, 5 + self.C, *o.shape[-2:]).permute(0, 1, 3, 4, 2))  # (N, 3, h, w, 5+C)
        return outs


def yolov4(num_classes=80, width=1.0, blocks=(1, 2, 8, 8, 4), in_channels=3, anchors=PAPER_ANCHORS,
           grid_sensitivity=1.0, dropblock=0.0):  # fmt: skip
    """The paper's detector (64,363,101 parameters at 80 classes); width and blocks give the reduced ones."""
    return YOLOv4(num_classes, width, blocks, in_channels, anchors, grid_sensitivity, dropblock)


def model_from_config(config):
    """The reduced network a run's config (vars(args)) describes, untrained; the anchors are a buffer that a
    checkpoint's state_dict replaces (here: the paper's scaled to the 96-pixel canvas)."""
    anchors = np.array(PAPER_ANCHORS) * IMAGE_SIZE / 608
    return yolov4(len(FASHION_MNIST_CLASSES), config["width"], tuple(config["blocks"]), 1, anchors,
                  config["grid_sensitivity"], config["dropblock"])  # fmt: skip


# %% [markdown]
# ## Anchors: k-means on box shapes with the distance 1 - IoU (YOLOv2's)


# %%
def shape_iou(wh, anchors):
    """(n, 2) and (k, 2) box shapes, both centred at the origin -> (n, k) IoU (NumPy or torch)."""
    inter = np.minimum(wh[:, None, 0], anchors[None, :, 0]) * np.minimum(wh[:, None, 1], anchors[None, :, 1])
    return inter / (wh[:, None, 0] * wh[:, None, 1] + anchors[None, :, 0] * anchors[None, :, 1] - inter)


def kmeans_anchors(wh, k=9, iters=300):
    """Lloyd's k-means with d(box, centre) = 1 - IoU: assign each shape to its highest-IoU centre, move each centre
    to the mean of its shapes, until nothing changes. Starts from the shapes at the k area quantiles (1/2k, 3/2k,
    ...): deterministic, and spread over the sizes. Returns (k, 2) sorted by area (smallest first)."""
    wh = np.asarray(wh, np.float64)
    centres = wh[np.argsort(wh.prod(1), kind="stable")][((np.arange(k) + 0.5) * len(wh) / k).astype(int)]
    assign = None
    for _ in range(iters):
        new = shape_iou(wh, centres).argmax(1)  # min of 1 - IoU
        if assign is not None and (new == assign).all():
            break
        assign = new
        centres = np.array([wh[assign == j].mean(0) if (assign == j).any() else centres[j] for j in range(k)])
    return centres[np.argsort(centres.prod(1), kind="stable")]


# %% [markdown]
# ## Boxes: decoding with grid sensitivity, CIoU


# %%
def decode_boxes(out, anchors, stride, s):
    """Raw (N, 3, h, w, 5+C) and the scale's anchors (3, 2) -> corner boxes (N, 3, h, w, 4) in pixels:
    b_x = (s sigmoid(t_x) - (s - 1) / 2 + c_x) * stride, b_w = p_w exp(t_w)."""
    h, w = out.shape[2:4]
    cy, cx = torch.meshgrid(torch.arange(h, device=out.device), torch.arange(w, device=out.device), indexing="ij")
    xy = s * torch.sigmoid(out[..., 0:2]) - (s - 1) / 2  # the offset inside the cell, in (-(s-1)/2, (s+1)/2)
    bx, by = (xy[..., 0] + cx) * stride, (xy[..., 1] + cy) * stride
    wh = anchors.view(1, 3, 1, 1, 2) * torch.exp(out[..., 2:4].clamp(max=8))  # clamp: no overflow early on
    return torch.stack([bx - wh[..., 0] / 2, by - wh[..., 1] / 2, bx + wh[..., 0] / 2, by + wh[..., 1] / 2], -1)


def ciou(a, b, eps=1e-9):
    """Complete IoU of corner boxes a[..., 4] (predictions) and b[..., 4] (truths), elementwise:
    IoU - rho^2 / c^2 - alpha v, alpha detached (Zheng et al.: a constant in the gradient)."""
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    wa, ha, wb, hb = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1], b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    inter = iw * ih
    iou = inter / (wa * ha + wb * hb - inter + eps)
    dx, dy = a[..., 0] + a[..., 2] - b[..., 0] - b[..., 2], a[..., 1] + a[..., 3] - b[..., 1] - b[..., 3]
    rho2 = (dx**2 + dy**2) / 4  # squared distance of the centres
    cw = torch.maximum(a[..., 2], b[..., 2]) - torch.minimum(a[..., 0], b[..., 0])  # the enclosing box
    ch = torch.maximum(a[..., 3], b[..., 3]) - torch.minimum(a[..., 1], b[..., 1])
    c2 = cw**2 + ch**2 + eps  # its squared diagonal
    v = 4 / math.pi**2 * (torch.atan(wb / (hb + eps)) - torch.atan(wa / (ha + eps))) ** 2  # aspect-ratio term
    with torch.no_grad():
        alpha = v / ((1 - iou) + v + eps)
    return iou - rho2 / c2 - alpha * v


# %% [markdown]
# ## Targets, the ignore rule and the loss (YOLOv3's, with CIoU or squared error on the box)


# %%
IGNORE_THRESHOLD = 0.5  # YOLOv3's: an unassigned prediction overlapping a truth this much is not a negative


def build_targets(boxes, labels, anchors, grids, C, eps=0.0):
    """Per image (k, 4) pixel corner boxes and (k,) labels; anchors (3, 3, 2) pixels; grids: the (h, w) of each
    scale. Each truth goes to the best-shape-IoU anchor of all 9, in the cell of its centre at that anchor's
    scale. Returns per scale (obj (N, 3, h, w), box (N, 3, h, w, 4) pixels, cls (N, 3, h, w, C) smoothed:
    (1 - eps) onehot + eps / C), the truths padded to (N, K, 4) with a validity mask (N, K), and the number of
    truths dropped because an earlier one took their anchor and cell."""
    N, K = len(boxes), max([len(b) for b in boxes] + [1])
    T = [(torch.zeros(N, 3, h, w), torch.zeros(N, 3, h, w, 4), torch.zeros(N, 3, h, w, C)) for h, w in grids]
    truth, valid, dropped = torch.zeros(N, K, 4), torch.zeros(N, K, dtype=torch.bool), 0
    flat = anchors.view(9, 2).numpy()
    for n, (bx, lb) in enumerate(zip(boxes, labels)):
        bx = np.asarray(bx, np.float64).reshape(-1, 4)
        truth[n, : len(bx)], valid[n, : len(bx)] = torch.from_numpy(bx), True
        best = shape_iou(bx[:, 2:] - bx[:, :2], flat).argmax(1)  # (k,) anchor 0..8
        for (x1, y1, x2, y2), c, j in zip(bx, lb, best):
            scale, a = divmod(int(j), 3)
            (h, w), stride = grids[scale], STRIDES[scale]
            col, row = min(int((x1 + x2) / 2 / stride), w - 1), min(int((y1 + y2) / 2 / stride), h - 1)
            obj, box, cls = T[scale]
            if obj[n, a, row, col]:
                dropped += 1
                continue
            obj[n, a, row, col] = 1
            box[n, a, row, col] = torch.tensor([x1, y1, x2, y2])
            cls[n, a, row, col] = eps / C
            cls[n, a, row, col, c] = 1 - eps + eps / C
    return T, truth, valid, dropped


def pairwise_iou(a, b):
    """(N, M, 4) and (N, K, 4) corner boxes -> (N, M, K) IoU, torch."""
    lt, rb = torch.maximum(a[:, :, None, :2], b[:, None, :, :2]), torch.minimum(a[:, :, None, 2:], b[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda z: (z[..., 2] - z[..., 0]).clamp(min=0) * (z[..., 3] - z[..., 1]).clamp(min=0)  # noqa: E731
    return inter / (area(a)[:, :, None] + area(b)[:, None, :] - inter).clamp(min=1e-9)


def yolo_loss(outs, targets, truth, valid, anchors, s, box_loss="ciou"):
    """outs: the model's list of (N, 3, h, w, 5+C); targets from build_targets. Returns (loss, terms), every term
    summed over anchors and cells and divided by N: box (1 - CIoU, or squared error on offsets and log sizes),
    obj (BCE: 1 where assigned, 0 where neither assigned nor ignored), cls (BCE, assigned cells only)."""
    N = outs[0].shape[0]
    terms = dict.fromkeys(("box", "obj", "cls"), 0.0)
    for k, (out, (obj, box, cls)) in enumerate(zip(outs, targets)):
        stride = STRIDES[k]
        pred = decode_boxes(out, anchors[k], stride, s)  # (N, 3, h, w, 4)
        with torch.no_grad():  # the ignore rule: the best IoU of each prediction with its image's truths
            iou = pairwise_iou(pred.view(N, -1, 4), truth).masked_fill(~valid[:, None, :], 0)
            ignore = (iou.max(-1).values.view(obj.shape) > IGNORE_THRESHOLD) & (obj == 0)
        bce = F.binary_cross_entropy_with_logits(out[..., 4], obj, reduction="none")  # (N, 3, h, w)
        terms["obj"] = terms["obj"] + (bce * ~ignore).sum() / N
        pos = obj.bool()
        if box_loss == "ciou":
            terms["box"] = terms["box"] + (1 - ciou(pred[pos], box[pos])).sum() / N
        else:  # YOLOv3's squared error on the offsets inside the cell and on t_w, t_h against log(w_gt / p_w)
            n, a, r, c = pos.nonzero(as_tuple=True)
            g = box[pos]
            off = torch.stack([(g[:, 0] + g[:, 2]) / 2 / stride - c, (g[:, 1] + g[:, 3]) / 2 / stride - r], -1)
            t_wh = torch.log((g[:, 2:] - g[:, :2]) / anchors[k][a])
            p = out[pos]
            p_off = s * torch.sigmoid(p[:, 0:2]) - (s - 1) / 2
            terms["box"] = terms["box"] + (((p_off - off) ** 2).sum() + ((p[:, 2:4] - t_wh) ** 2).sum()) / N
        bce_cls = F.binary_cross_entropy_with_logits(out[..., 5:][pos], cls[pos], reduction="sum")
        terms["cls"] = terms["cls"] + bce_cls / N
    return sum(terms.values()), terms


# %% [markdown]
# ## Detection, IoU, NMS and mAP (compact copies; 04-cnns/detection_numpy.py teaches them)


# %%
def decode(outs, anchors, s, size):
    """outs -> corner boxes (N, M, 4) pixels clipped to the canvas and scores (N, M, C) = sigmoid(obj) sigmoid(cls),
    M = 3 (h8 w8 + h16 w16 + h32 w32) predictions."""
    boxes, scores = [], []
    for k, out in enumerate(outs):
        N = out.shape[0]
        boxes.append(decode_boxes(out, anchors[k], STRIDES[k], s).clamp(0, size).reshape(N, -1, 4))
        scores.append((torch.sigmoid(out[..., 4:5]) * torch.sigmoid(out[..., 5:])).reshape(N, -1, out.shape[-1] - 5))
    return torch.cat(boxes, 1), torch.cat(scores, 1)


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
    """Greedy: keep the best box, drop every box whose IoU with it is > iou_threshold (equal is kept), repeat."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        i, order = order[0], order[1:]
        keep.append(i)
        order = order[box_iou(boxes[i : i + 1], boxes[order])[0] <= iou_threshold]
    return np.array(keep, dtype=np.int64)


def detect(outs, anchors, s, size, conf_threshold, nms_threshold, max_dets=100):
    """outs -> per image (boxes (k, 4), scores (k,), labels (k,)): every (box, class) scoring above
    conf_threshold, per-class NMS, then the best max_dets (COCO's 100)."""
    boxes, scores = (t.detach().cpu().numpy() for t in decode(outs, anchors, s, size))
    out = []
    for bx, sc in zip(boxes, scores):  # one image: (M, 4), (M, C)
        i, c = np.nonzero(sc > conf_threshold)
        kept = []
        for cls in np.unique(c):
            k = np.nonzero(c == cls)[0]
            kept += k[nms(bx[i[k]], sc[i[k], cls], nms_threshold)].tolist()
        kept = np.array(kept, dtype=np.int64)
        kept = kept[np.argsort(-sc[i[kept], c[kept]], kind="stable")[:max_dets]]
        out.append((bx[i[kept]].reshape(-1, 4), sc[i[kept], c[kept]], c[kept]))
    return out


def average_precision(recall, precision, points=None):
    """Area under the precision envelope. points=None: VOC all-point; points=101: COCO's 101 recall points."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # envelope: p(r) = max over r' >= r
    if points is None:
        step = np.nonzero(r[1:] != r[:-1])[0]
        return float(np.sum((r[step + 1] - r[step]) * p[step + 1]))
    at = np.searchsorted(r[1:-1], np.linspace(0, 1, points), side="left")
    return float(np.mean(np.where(at < len(recall), p[1:-1][np.minimum(at, len(recall) - 1)], 0.0)))


SMALL_AREA = 16**2  # COCO's "small": area < 32^2 at COCO's scale; 16^2 on 96-pixel canvases


def mean_ap(dets, truths, C, iou_threshold=0.5, points=None, max_area=None):
    """Per image and class, detections by descending score take the unmatched truth with the highest IoU, a TP if
    IoU >= iou_threshold. max_area (COCO's area range, simplified): truths of area >= max_area are "ignored": not
    counted, and a detection that matches none of the counted truths but overlaps an ignored one by
    >= iou_threshold is neither TP nor FP; so is an unmatched detection whose own area is >= max_area. Returns the
    mean AP over classes that have a counted truth, and the per-class APs (nan where none)."""
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    aps = np.full(C, np.nan)
    for c in range(C):
        scores, tps, n_gt = [], [], 0
        for (bx, sc, lb), (tb, tl) in zip(dets, truths):
            d, g = np.argsort(-sc[lb == c], kind="stable"), tb[tl == c]
            db = bx[lb == c][d]
            small = area(g) < max_area if max_area else np.ones(len(g), bool)
            iou = box_iou(db, g)  # (D, G), best detection first
            used, tp, skip = ~small, np.zeros(len(d)), np.zeros(len(d), bool)  # ignored truths start "used"
            for k in range(len(d)):
                j = np.where(used, -1.0, iou[k]).argmax() if len(g) else 0
                if len(g) and iou[k, j] >= iou_threshold and not used[j]:
                    tp[k], used[j] = 1, True
                elif max_area and ((iou[k] >= iou_threshold) & ~small).any() | (area(db[k : k + 1])[0] >= max_area):
                    skip[k] = True  # matched an ignored truth, or too big itself: left out
            scores.append(sc[lb == c][d][~skip]), tps.append(tp[~skip])
            n_gt += int(small.sum())
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
# ## Data: scenes, flips, mosaic, multi-scale, evaluation, schedules


# %%
IMAGE_SIZE = 96  # canvases of data.detection_scenes; grids of 12, 6 and 3 cells at strides 8, 16, 32
EVAL_THRESHOLD = 0.005  # mAP ranks all detections: this only trims the list
MIN_SIDE, MIN_KEEP = 2.0, 0.25  # mosaic keeps a clipped box with both sides >= 2 px and >= 25% of its area


def load_data(split, n, seed, args):
    """n scenes of `split`: images (n, 1, 96, 96), boxes (pixel corners), labels."""
    images, boxes, labels = detection_scenes(split, n, IMAGE_SIZE, args.max_objects, seed, data_dir=args.data_dir,
                                             min_objects=args.min_objects, scale=tuple(args.scale))  # fmt: skip
    return torch.from_numpy(images).unsqueeze(1), boxes, labels


def hflip(images, boxes, flip):
    """Mirror the images where flip[i]; a box (x1, y1, x2, y2) becomes (W - x2, y1, W - x1, y2)."""
    W = images.shape[-1]
    images = torch.where(torch.as_tensor(flip).view(-1, 1, 1, 1), images.flip(-1), images)
    boxes = [np.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], 1) if f else b for b, f in zip(boxes, flip)]
    return images, boxes


def mosaic(images, boxes, labels, centre):
    """Four scenes (4, 1, S, S) -> one (1, S, S) canvas split at the integer point centre = (cx, cy): quadrant q
    shows scene q (top-left, top-right, bottom-left, bottom-right) at its own scale, shifted so that it meets
    the centre with its far corner: the top-left quadrant holds scene 0's bottom-right cx x cy pixels, etc.
    Boxes are shifted and clipped to their quadrant; a clipped box is kept when both its sides are >= MIN_SIDE
    and it keeps >= MIN_KEEP of its area."""
    S, (cx, cy) = images.shape[-1], centre
    canvas, out_b, out_l = torch.zeros_like(images[0]), [], []
    for q, (x0, y0, x1, y1) in enumerate([(0, 0, cx, cy), (cx, 0, S, cy), (0, cy, cx, S), (cx, cy, S, S)]):
        ox, oy = (cx - S if x0 == 0 else cx), (cy - S if y0 == 0 else cy)  # canvas = scene shifted by (ox, oy)
        canvas[:, y0:y1, x0:x1] = images[q, :, y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        b = np.asarray(boxes[q], np.float32).reshape(-1, 4) + np.float32([ox, oy, ox, oy])
        clipped = np.clip(b, [x0, y0, x0, y0], [x1, y1, x1, y1]).astype(np.float32)
        w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
        keep = (w >= MIN_SIDE) & (h >= MIN_SIDE) & (w * h >= MIN_KEEP * (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
        out_b.append(clipped[keep]), out_l.append(np.asarray(labels[q])[keep])
    return canvas, np.concatenate(out_b), np.concatenate(out_l)


def mosaic_epoch(X, boxes, labels, prob, rng):
    """With probability prob, canvas i becomes a mosaic of scene i and three other scenes of the epoch around a
    centre uniform in [S/4, 3S/4]^2: still len(X) canvases per epoch, each scene used once plus as a filler."""
    X, boxes, labels, S = X.clone(), list(boxes), list(labels), X.shape[-1]
    src_b, src_l, src_X = list(boxes), list(labels), X.clone()
    for i in np.nonzero(rng.random(len(X)) < prob)[0]:
        idx = [i, *rng.integers(0, len(X), 3)]
        centre = rng.integers(S // 4, 3 * S // 4 + 1, 2)
        X[i], boxes[i], labels[i] = mosaic(src_X[idx], [src_b[j] for j in idx], [src_l[j] for j in idx], centre)
    return X, boxes, labels


@torch.no_grad()
def detect_images(model, X, device, conf_threshold, nms_threshold, chunk=250):
    """Detections per image on (N, 1, 96, 96) canvases, in eval mode (restored after): (boxes, scores, labels)."""
    was, out = model.training, []
    model.eval()
    for s in range(0, len(X), chunk):
        outs = model(X[s : s + chunk].to(device))
        out += detect(outs, model.anchors, model.grid_sensitivity, X.shape[-1], conf_threshold, nms_threshold)
    model.train(was)
    return out


def evaluate(model, X, boxes, labels, device, nms_threshold):
    """mAP@0.5 (VOC all-point), COCO mAP@[.5:.95], small-object AP@0.5, per-class AP@0.5, the detections."""
    dets = detect_images(model, X, device, EVAL_THRESHOLD, nms_threshold)
    truths = list(zip(boxes, labels))
    m50, aps = mean_ap(dets, truths, model.C)
    small = mean_ap(dets, truths, model.C, max_area=SMALL_AREA)[0]
    return m50, coco_map(dets, truths, model.C), small, aps, dets


def lr_factor(step, warmup, total, schedule):
    """Linear warm-up, then cosine: 0.5 (1 + cos(pi t)), t the fraction of the rest done; or step: constant,
    x0.1 at 80% and again at 90% of the steps (darknet's steps=0.8,0.9 of max_batches, scales=.1,.1)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "step":
        return 0.1 ** ((step >= 0.8 * total) + (step >= 0.9 * total))
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# The device picker, as taught in 01-foundations/mlp_torch.py.
def pick_device(name):
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
# ## Figures


# %%
def plot_detections(images, dets, truths, path, threshold):
    """Test scenes: true boxes dashed green, predictions (score > threshold) red with class name and score."""
    n, cols = len(images), min(len(images), 4)
    fig = Figure(figsize=(3.2 * cols, 3.4 * math.ceil(n / cols)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(math.ceil(n / cols), cols, squeeze=False)).ravel()
    rect = lambda b, c, ls: Rectangle((b[0] - 0.5, b[1] - 0.5), b[2] - b[0], b[3] - b[1], fill=False, color=c,  # noqa: E731
                                      ls=ls, lw=1)  # fmt: skip
    for ax, img, (pb, ps, pl), (tb, _) in zip(axes, images, dets, truths):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        for b in tb:
            ax.add_patch(rect(b, "lime", "--"))
        for b, s, c in zip(pb, ps, pl):
            if s > threshold:
                ax.add_patch(rect(b, "red", "-"))
                ax.text(b[0], b[1] - 1, f"{FASHION_MNIST_CLASSES[c]} {s:.2f}", color="red", fontsize=6)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(f"test scenes: truth (green, dashed) and detections with score > {threshold} (red)")
    fig.savefig(path, dpi=110)


def plot_curves(hist, path, title):
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax = fig.subplots(1, 3)
    epochs = np.arange(1, len(hist["val_map50"]) + 1)
    for k in ("box", "obj", "cls", "loss"):
        ax[0].plot(epochs, hist[k], "o-" if k == "loss" else ".-", label=k, lw=2 if k == "loss" else 1)
    for k, name in (("val_map50", "mAP@0.5"), ("val_coco", "COCO mAP"), ("val_small", "small mAP@0.5")):
        ax[1].plot(epochs, hist[k], "o-", label=name)
    ax[2].plot(np.arange(len(hist["lr"])) / max(1, len(hist["lr"]) // len(epochs)), hist["lr"])
    ax[0].set(xlabel="epoch", ylabel="loss per image", yscale="log", title="training loss")
    ax[1].set(xlabel="epoch", ylabel="mAP", ylim=(0, 1), title="validation scenes")
    ax[2].set(xlabel="epoch", ylabel="learning rate", title="schedule")
    ax[0].legend(fontsize=7), ax[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)


# %% [markdown]
# ## Main: flags, one flat training loop, the test scenes at the end


# %%
RESUME_MAY_CHANGE = {"resume", "device", "threads", "data_dir", "out_dir", "n_test", "n_images", "conf_threshold",
                     "nms_threshold"}  # fmt: skip


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--epochs", type=positive_int, default=None, help="epochs of fresh scenes (default 20; 2 with --smoke)")
    add("--n-train", type=positive_int, default=None, help="training canvases per epoch (default 5000; 600 --smoke)")
    add("--n-val", type=positive_int, default=None, help="validation scenes (default 500; 100 with --smoke)")
    add("--n-test", type=positive_int, default=None, help="test scenes (default 2000; 200 with --smoke)")
    add("--min-objects", type=positive_int, default=3, help="fewest items per scene (default 3)")
    add("--max-objects", type=positive_int, default=8, help="most items per scene (default 8)")
    add("--scale", type=positive_float, nargs=2, default=[0.35, 1.2], metavar=("LOW", "HIGH"),
        help="items are 28 s pixels, s ~ U(LOW, HIGH) (default 0.35 1.2)")
    add("--batch-size", type=positive_int, default=16, help="canvases per step (default 16)")
    add("--lr", type=positive_float, default=2e-3, help="peak learning rate of Adam (default 2e-3)")
    add("--weight-decay", type=nonneg_float, default=5e-4, help="L2 folded into the gradient (default 5e-4)")
    add("--warmup-epochs", type=nonneg_float, default=1.0, help="linear warm-up (default 1 epoch)")
    add("--width", type=positive_float, default=0.125, help="channel multiplier, 1 = the paper's (default 0.125)")
    add("--blocks", type=positive_int, nargs=5, default=[1, 1, 1, 1, 1], help="residual blocks of the five CSP "
        "stages (default 1 1 1 1 1; the paper's: 1 2 8 8 4)")
    add("--sizes", type=positive_int, nargs="+", default=[64, 96, 128], help="multi-scale training: every 10 steps "
        "the batch is resized to one of these (multiples of 32; default 64 96 128; 96 alone turns it off)")
    add("--box-loss", choices=["ciou", "mse"], default="ciou", help="ciou: 1 - CIoU; mse: YOLOv3's squared error on "
        "offsets and log sizes (default ciou)")
    add("--mosaic", type=nonneg_float, default=0.5, help="probability (0 to 1) that a canvas is a mosaic of four "
        "scenes (default 0.5; 0 turns it off)")
    add("--label-smoothing", type=probability, default=0.1, help="class targets (1 - eps) onehot + eps / C "
        "(default 0.1; 0 turns it off)")
    add("--grid-sensitivity", type=positive_float, default=1.1, help="s of b_x = s sigmoid(t) - (s - 1)/2 + c_x, at "
        "least 1 (default 1.1; 1 is YOLOv3's)")
    add("--schedule", choices=["cosine", "step"], default="cosine", help="after the warm-up: cosine to 0, or step "
        "(constant, x0.1 at 80%% and 90%% of the steps) (default cosine)")
    add("--dropblock", type=probability, default=0.0, help="DropBlock rate on the three backbone outputs, blocks of "
        "3x3 (default 0: off)")
    add("--conf-threshold", type=probability, default=0.2, help="score above which a detection is drawn in the "
        "figure (default 0.2; mAP ranks every detection above 0.005)")
    add("--nms-threshold", type=probability, default=0.5, help="NMS drops a box whose IoU with a better one of its "
        "class is greater (default 0.5)")
    add("--n-images", type=positive_int, default=8, help="test scenes in the figure (default 8)")
    add("--resume", action="store_true", help="continue from <out-dir>/checkpoint.pt; a changed config is refused")
    add("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    add("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    add("--seed", type=nonneg_int, default=0, help="seeds weights, scenes, flips, mosaics (default 0)")
    add("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    add("--out-dir", default=None, help="metrics, figures, checkpoint (default runs/yolo_v4_torch)")
    add("--smoke", action="store_true", help="a seconds-long run on a few hundred real scenes")
    args = p.parse_args(argv)
    for name, (smoke, full) in {"epochs": (2, 20), "n_train": (600, 5000), "n_val": (100, 500),
                                "n_test": (200, 2000)}.items():  # fmt: skip
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    if args.warmup_epochs > args.epochs:
        p.error(f"--warmup-epochs {args.warmup_epochs} must not exceed --epochs {args.epochs}")
    if args.min_objects > args.max_objects:
        p.error(f"--min-objects {args.min_objects} must not exceed --max-objects {args.max_objects}")
    if not 0.25 <= args.scale[0] <= args.scale[1] <= IMAGE_SIZE / 28:
        p.error(f"--scale {args.scale[0]} {args.scale[1]}: need 0.25 <= LOW <= HIGH <= {IMAGE_SIZE / 28:.3f}")
    if any(s % 32 for s in args.sizes):
        p.error(f"--sizes {' '.join(map(str, args.sizes))}: each must be a multiple of 32")
    if args.mosaic > 1:
        p.error(f"--mosaic {args.mosaic} is a probability: at most 1")
    if args.grid_sensitivity < 1:
        p.error(f"--grid-sensitivity {args.grid_sensitivity} must be at least 1")
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

    try:
        Xva, bva, lva = load_data("train", args.n_val, 10_000 + args.seed, args)
        Xte, bte, lte = load_data("test", args.n_test, 20_000 + args.seed, args)
        first = load_data("train", args.n_train, args.seed * 1000 + 1, args)  # epoch 1's scenes: the anchors
    except DataError as exc:
        sys.exit(f"error: {exc}")
    wh = np.concatenate(first[1])[:, 2:] - np.concatenate(first[1])[:, :2]
    anchors = kmeans_anchors(wh, 9)  # (9, 2) by area: 3 for stride 8, 3 for 16, 3 for 32
    torch.manual_seed(args.seed)
    model = yolov4(len(FASHION_MNIST_CLASSES), args.width, tuple(args.blocks), 1, anchors, args.grid_sensitivity,
                   args.dropblock).to(device)  # fmt: skip
    C, s = model.C, args.grid_sensitivity
    out_dir.mkdir(parents=True, exist_ok=True)
    n_params = sum(w.numel() for w in model.parameters())
    print(f"YOLO v4 (width {args.width}, blocks {args.blocks}): {n_params:,} parameters; anchors (w, h) "
          f"{np.round(anchors, 1).tolist()}; {args.n_train} training canvases per epoch on {device}")
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(args.n_train / args.batch_size)
    total, warmup = args.epochs * steps_per_epoch, round(args.warmup_epochs * steps_per_epoch)
    keys = ("loss", "box", "obj", "cls", "val_map50", "val_coco", "val_small", "epoch_s", "lr")
    hist = {k: [] for k in keys} | {"dropped_objects": 0, "train_objects": 0}
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
            # augmentation: fresh scenes every epoch, a flip of half of them, mosaics, multi-scale batches
            X, boxes, labels = first if epoch == 1 else load_data("train", args.n_train, args.seed * 1000 + epoch, args)
            rng = np.random.default_rng([args.seed, epoch])
            X, boxes = hflip(X, boxes, rng.random(len(X)) < 0.5)
            X, boxes, labels = mosaic_epoch(X, boxes, labels, args.mosaic, rng)
            order = rng.permutation(len(X))
            sums = dict.fromkeys(keys[:4], 0.0)
            bar = tqdm(range(0, len(X), args.batch_size), desc=f"epoch {epoch}/{args.epochs}", leave=False,
                       disable=not sys.stdout.isatty())  # fmt: skip
            for i, b0 in enumerate(bar):
                if i % 10 == 0:
                    size = int(rng.choice(args.sizes))
                lr = args.lr * lr_factor(step, warmup, total, args.schedule)
                for group in opt.param_groups:
                    group["lr"] = lr
                idx = order[b0 : b0 + args.batch_size]
                xb, f = X[idx], size / IMAGE_SIZE
                if size != IMAGE_SIZE:
                    xb = F.interpolate(xb, size=(size, size), mode="bilinear", align_corners=False)
                grids = [(size // st, size // st) for st in STRIDES]
                T, truth, valid, dropped = build_targets([boxes[j] * f for j in idx], [labels[j] for j in idx],
                                                         model.anchors.cpu(), grids, C,
                                                         args.label_smoothing)  # fmt: skip
                hist["dropped_objects"] += dropped
                hist["train_objects"] += int(valid.sum())
                T = [tuple(t.to(device) for t in ts) for ts in T]
                loss, terms = yolo_loss(model(xb.to(device)), T, truth.to(device), valid.to(device), model.anchors,
                                        s, args.box_loss)  # fmt: skip
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                hist["lr"].append(lr)
                for k, v in (("loss", loss), *terms.items()):
                    sums[k] += v.item() * len(idx) / len(X)
                if not bar.disable:
                    bar.set_postfix(loss=f"{loss.item():.3f}", size=size)
            val_map50, val_coco, val_small = evaluate(model, Xva, bva, lva, device, args.nms_threshold)[:3]
            train_s += time.perf_counter() - t0
            for k, v in (*sums.items(), ("val_map50", val_map50), ("val_coco", val_coco), ("val_small", val_small),
                         ("epoch_s", time.perf_counter() - t0)):  # fmt: skip
                hist[k].append(float(v))
            print(f"epoch {epoch:2d}/{args.epochs}  loss {sums['loss']:.3f} (box {sums['box']:.3f} obj "
                  f"{sums['obj']:.3f} cls {sums['cls']:.3f}) | val mAP@0.5 {val_map50:.4f} COCO {val_coco:.4f} "
                  f"small {val_small:.4f} | {hist['epoch_s'][-1]:.1f} s, {train_s / 60:.1f} min", flush=True)
            save_checkpoint(ckpt_path, model=model.state_dict(), opt=opt.state_dict(), epoch=epoch, hist=hist,
                            torch_rng=torch.get_rng_state(), config=vars(args), train_s=train_s)
            saved = epoch
    except KeyboardInterrupt:
        flags = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--resume"]
        where = f"{ckpt_path} holds epoch {saved}. Resume with" if saved else "nothing saved. Start again with"
        print(f"\ninterrupted in epoch {epoch}; {where}:\n  " + shlex.join(
            ["python", "04-cnns/yolo_v4_torch.py", *flags] + (["--resume"] if saved else [])), file=sys.stderr)
        sys.exit(130)

    test_map50, test_coco, test_small, aps, dets = evaluate(model, Xte, bte, lte, device, args.nms_threshold)
    t0 = time.perf_counter()  # inference speed: forward passes, decoding, threshold and NMS, batches of 64
    for b0 in range(0, len(Xte), 64):
        detect_images(model, Xte[b0 : b0 + 64], device, EVAL_THRESHOLD, args.nms_threshold)
    images_per_s = len(Xte) / (time.perf_counter() - t0)
    k = args.n_images
    plot_detections(Xte[:k, 0].numpy(), dets[:k], list(zip(bte[:k], lte[:k])), out_dir / "detections.png",
                    args.conf_threshold)  # fmt: skip
    plot_curves(hist, out_dir / "learning_curves.png", f"YOLO v4 (reduced) on synthetic scenes: test mAP@0.5 "
                f"{test_map50:.3f}, COCO mAP {test_coco:.3f}, small mAP@0.5 {test_small:.3f}")  # fmt: skip
    with torch.device("meta"):
        full = {"yolov4": sum(w.numel() for w in yolov4().parameters()),
                "cspdarknet53": sum(w.numel() for w in cspdarknet53().parameters())}  # fmt: skip
    metrics = {"script": Path(__file__).stem, "test_map50": test_map50, "test_coco_map": test_coco,  # headline first
               "test_small_map50": test_small, "inference_images_per_s": images_per_s, "train_minutes": train_s / 60,
               "params": n_params, "val_map50": hist["val_map50"][-1], "val_coco_map": hist["val_coco"][-1],
               "val_small_map50": hist["val_small"][-1], "init_val_map50": hist["init_val_map50"],
               "test_ap50_per_class": dict(zip(FASHION_MNIST_CLASSES, aps.tolist())),
               "sec_per_epoch": float(np.median(hist["epoch_s"])), "first_loss": hist["loss"][0],
               "final_train_loss": hist["loss"][-1], "anchors": anchors.tolist(),
               "dropped_object_fraction": hist["dropped_objects"] / max(1, hist["train_objects"]),
               "full_size_params": full, "paper_params": PAPER_PARAMS,
               "device": str(device), "threads": torch.get_num_threads(), "config": vars(args),
               "history": hist}  # fmt: skip
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"test mAP@0.5 {test_map50:.4f}, COCO {test_coco:.4f}, small mAP@0.5 {test_small:.4f} after "
          f"{train_s / 60:.1f} min; {images_per_s:.0f} images/s on {device}; wrote {out_dir}/metrics.json")
    return metrics


# Published counts: CSPDarknet53 27.6M (the paper's Table 1); YOLOv4 64,363,101 (PyTorch ports, 80 classes, BN
# scale + shift per conv, biases only on the 3 output convs; darknet's weight file also stores BN's running stats).
PAPER_PARAMS = {"cspdarknet53": 27_600_000, "yolov4": 64_363_101}

if __name__ == "__main__":
    main()
