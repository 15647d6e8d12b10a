"""Object-detection building blocks by hand in NumPy: the IoU family, box encodings, non-max suppression, anchors,
sliding windows as a convolution, and mean average precision.

Boxes are corners (x1, y1, x2, y2) in continuous pixel coordinates, area (x2 - x1)(y2 - y1). A the prediction,
B the ground truth, C the smallest box enclosing both, rho the distance of their centres, c C's diagonal:

    IoU  = |A n B| / |A u B|                        GIoU = IoU - (|C| - |A u B|) / |C|
    DIoU = IoU - rho^2 / c^2                        CIoU = DIoU - alpha v,    alpha = v / (1 - IoU + v),
    v = 4 / pi^2 (atan(wB / hB) - atan(wA / hA))^2  (aspect-ratio consistency)
    anchor offsets (Faster R-CNN): tx = (x - xa) / wa, ty = (y - ya) / ha, tw = log(w / wa), th = log(h / ha)
    NMS: keep the best-scoring box, drop every other whose IoU with it is > threshold, repeat on the rest
    AP = sum_i (r_i - r_{i-1}) p_interp(r_i),  p_interp(r) = max_{r' >= r} p(r')   (VOC 2010+, all points);
    VOC 2007 averages p_interp at 11 recalls 0, 0.1, .., 1; COCO at 101, and over IoU 0.50:0.05:0.95.

Reading: R. Girshick et al., "Rich feature hierarchies..." (R-CNN, 2014), https://arxiv.org/abs/1311.2524;
S. Ren et al., "Faster R-CNN" (2015), https://arxiv.org/abs/1506.01497; P. Sermanet et al., "OverFeat" (2014),
https://arxiv.org/abs/1312.6229; J. Redmon et al., "You Only Look Once" (2016), https://arxiv.org/abs/1506.02640;
H. Rezatofighi et al., "Generalized Intersection over Union" (2019), https://arxiv.org/abs/1902.09630;
Z. Zheng et al., "Distance-IoU Loss" (2020), https://arxiv.org/abs/1911.08287; M. Everingham et al., "The PASCAL
VOC Challenge" (2010), https://doi.org/10.1007/s11263-009-0275-4; COCO detection evaluation,
https://cocodataset.org/#detection-eval; d2l 14.3-14.8, https://d2l.ai/chapter_computer-vision/.
Arc: Object detection -- convolutional sliding windows, bounding boxes, intersection over union, non-max
suppression, anchor boxes, region proposals (read), and the mAP a detector is judged by.

Run:  python 04-cnns/detection_numpy.py            (figures and metrics.json in runs/detection_numpy/)
      python 04-cnns/detection_numpy.py --smoke
Look first at `nms` and `match_image` (the two greedy loops), then at nms.png: a made-up detector's
duplicates before and after NMS, and what they cost in AP.
"""

# %%
import argparse
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from data import nonneg_int, save_metrics

# %% [markdown]
# ## Intersection over union and its relatives, for every pair at once
#
# All four functions are pairwise: a (N, 4) and b (M, 4) give (N, M), entry [i, j] comparing a[i] with b[j]
# (for one array of pairs, take the diagonal of a square call or write the same lines elementwise).
# Degenerate boxes (x2 = x1 or y2 = y1: zero area) are legal: a ratio whose denominator is 0 (the union of
# two zero-area boxes, the enclosing box of two points) is defined as 0, never NaN.


# %%
def safe_div(num, den):
    """num / den, and 0 where den == 0 (a 0/0 of degenerate boxes), with no NaN and no warning."""
    return np.divide(num, den, out=np.zeros(np.broadcast_shapes(num.shape, den.shape)), where=den != 0)


def intersection_union(a, b):
    """|A n B| and |A u B| of every pair: a (N, 4), b (M, 4) -> two (N, M)."""
    a, b = a[:, None], b[None]  # (N, 1, 4), (1, M, 4): broadcasting pairs every a with every b
    top_left = np.maximum(a[..., :2], b[..., :2])  # (N, M, 2) corners of the overlap
    bottom_right = np.minimum(a[..., 2:], b[..., 2:])  # (N, M, 2)
    wh = np.clip(bottom_right - top_left, 0, None)  # (N, M, 2) overlap sides, 0 where the boxes miss each other
    inter = wh[..., 0] * wh[..., 1]
    area_a, area_b = ((x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1]) for x in (a, b))  # (N, 1), (1, M)
    return inter, area_a + area_b - inter


def enclosing_wh(a, b):
    """Width and height (N, M, 2) of C, the smallest box enclosing a[i] and b[j]."""
    return np.maximum(a[:, None, 2:], b[None, :, 2:]) - np.minimum(a[:, None, :2], b[None, :, :2])


def box_iou(a, b):
    """IoU = |A n B| / |A u B|, (N, M); 0 where the union is empty (both boxes of zero area)."""
    inter, union = intersection_union(a, b)
    return safe_div(inter, union)


def box_giou(a, b):
    """GIoU = IoU - (|C| - |A u B|) / |C| (Rezatofighi et al. 2019), (N, M), in [-1, 1]: disjoint boxes still
    get a gradient, pulling them together as C shrinks."""
    inter, union = intersection_union(a, b)
    c_wh = enclosing_wh(a, b)  # (N, M, 2)
    c_area = c_wh[..., 0] * c_wh[..., 1]  # (N, M) |C|, 0 only if both boxes are degenerate
    return safe_div(inter, union) - safe_div(c_area - union, c_area)


def box_diou(a, b):
    """DIoU = IoU - rho^2 / c^2 (Zheng et al. 2020), (N, M): the penalty is the centre distance relative to the
    diagonal c of the enclosing box."""
    ca, cb = (a[:, None, :2] + a[:, None, 2:]) / 2, (b[None, :, :2] + b[None, :, 2:]) / 2  # (N, 1, 2), (1, M, 2)
    rho2 = ((ca - cb) ** 2).sum(-1)  # (N, M) squared distance of the centres
    c2 = (enclosing_wh(a, b) ** 2).sum(-1)  # (N, M) squared diagonal of C
    return box_iou(a, b) - safe_div(rho2, c2)


def box_ciou(a, b):
    """CIoU = DIoU - alpha v (Zheng et al. 2020), (N, M), with a the prediction and b the ground truth (the
    value is symmetric). v compares the aspect ratios through atan(w / h), written arctan2(w, h) so that h = 0
    gives pi/2; alpha = v / (1 - IoU + v) is 0 where 0/0 (identical boxes)."""
    wa, ha = (a[:, 2] - a[:, 0])[:, None], (a[:, 3] - a[:, 1])[:, None]  # (N, 1)
    wb, hb = (b[:, 2] - b[:, 0])[None], (b[:, 3] - b[:, 1])[None]  # (1, M)
    v = 4 / np.pi**2 * (np.arctan2(wb, hb) - np.arctan2(wa, ha)) ** 2  # (N, M), in [0, 1]
    alpha = safe_div(v, 1 - box_iou(a, b) + v)
    return box_diou(a, b) - alpha * v


# %% [markdown]
# ## Box encodings and their inverses
#
# A network does not regress corners in pixels: it predicts offsets that are small and scale-free.
# Faster R-CNN encodes a box relative to an anchor (centre shift in anchor widths, log of the size ratio);
# YOLO v1 encodes it relative to the grid cell holding its centre: the centre's offset inside the cell in
# [0, 1] and the size as a fraction of the image (the square roots of w, h are the loss's business).


# %%
def corners_to_centre(b):
    """(x1, y1, x2, y2) -> (cx, cy, w, h), (N, 4)."""
    return np.concatenate([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], axis=1)


def centre_to_corners(c):
    """(cx, cy, w, h) -> (x1, y1, x2, y2), (N, 4)."""
    return np.concatenate([c[:, :2] - c[:, 2:] / 2, c[:, :2] + c[:, 2:] / 2], axis=1)


def encode_anchor(boxes, anchors):
    """t = (tx, ty, tw, th) of corner boxes (N, 4) relative to their anchors (N, 4): Faster R-CNN's eq. (2)."""
    x, xa = corners_to_centre(boxes), corners_to_centre(anchors)  # (N, 4) each, centre-size
    return np.concatenate([(x[:, :2] - xa[:, :2]) / xa[:, 2:], np.log(x[:, 2:] / xa[:, 2:])], axis=1)


def decode_anchor(t, anchors):
    """The inverse: x = xa + tx wa, y = ya + ty ha, w = wa exp(tw), h = ha exp(th) -> corners (N, 4)."""
    xa = corners_to_centre(anchors)
    return centre_to_corners(np.concatenate([xa[:, :2] + t[:, :2] * xa[:, 2:], xa[:, 2:] * np.exp(t[:, 2:])], 1))


def encode_cell(boxes, S, image_hw):
    """YOLO v1 targets of corner boxes (N, 4) on an S x S grid over an image (H, W): the cell (row, col) holding
    each centre, and (x, y) the centre's offset inside that cell in [0, 1], (w, h) the size over the image's.
    A centre on the image's far edge belongs to the last cell (offset 1)."""
    H, W = image_hw
    c = corners_to_centre(boxes)  # (N, 4)
    gx, gy = c[:, 0] * S / W, c[:, 1] * S / H  # (N,) centres in cell units
    col, row = np.minimum(np.floor(gx), S - 1).astype(int), np.minimum(np.floor(gy), S - 1).astype(int)
    return row, col, np.stack([gx - col, gy - row, c[:, 2] / W, c[:, 3] / H], axis=1)


def decode_cell(targets, row, col, S, image_hw):
    """The inverse of `encode_cell`: cell offsets (N, 4) in cells (row, col) -> corner boxes (N, 4) in pixels."""
    H, W = image_hw
    cx, cy = (col + targets[:, 0]) * W / S, (row + targets[:, 1]) * H / S
    return centre_to_corners(np.stack([cx, cy, targets[:, 2] * W, targets[:, 3] * H], axis=1))


# %% [markdown]
# ## Non-max suppression
#
# A detector fires many overlapping boxes on one object. Greedy NMS keeps the best-scoring box, removes every
# remaining box whose IoU with it is greater than the threshold (equal is kept, torchvision's rule), and
# repeats on what is left. Per class (`batched_nms`): boxes of different classes never suppress each other.


# %%
def nms(boxes, scores, iou_threshold):
    """Indices of the kept boxes (K,), by descending score; equal scores are taken in index order."""
    order = np.argsort(-scores, kind="stable")  # (N,) best first
    keep = []
    while order.size > 0:
        best, order = order[0], order[1:]
        keep.append(best)
        iou = box_iou(boxes[best][None], boxes[order])[0]  # (remaining,)
        order = order[iou <= iou_threshold]  # suppress only IoU > threshold
    return np.array(keep, dtype=np.int64)


def batched_nms(boxes, scores, classes, iou_threshold):
    """`nms` within each class; the kept indices of all classes together, by descending score (ties by index)."""
    keep = [np.flatnonzero(classes == c)[nms(boxes[classes == c], scores[classes == c], iou_threshold)]
            for c in np.unique(classes)]
    keep = np.concatenate([np.zeros(0, np.int64), *keep])
    return keep[np.lexsort((keep, -scores[keep]))]  # primary key -score, then the index


# %% [markdown]
# ## Anchor boxes (Faster R-CNN)
#
# At every cell of a feature map of stride s, k = len(scales) x len(ratios) boxes centred on the cell's centre
# ((col + 0.5) s, (row + 0.5) s); a scale is the side of a square of equal area, a ratio is h / w:
# w = scale / sqrt(ratio), h = scale sqrt(ratio). The RPN's labels (Faster R-CNN 3.1.2, as its code does it):
# positive if IoU >= 0.7 with some ground truth, or if it is a ground truth's best anchor (ties included; it
# regresses to the ground truth it overlaps most); negative if IoU < 0.3 with all; ignored otherwise. (Ignoring
# anchors that cross the border and sampling 256 per image are left to a training script.)


# %%
def anchors(feature_size, stride, scales, ratios):
    """All anchors (H * W * len(scales) * len(ratios), 4) of an (H, W) feature map (an int: square), corners in
    pixels. Order: cells row-major, then scales, then ratios: anchor ((row * W + col) * S + s) * R + r."""
    H, W = (feature_size, feature_size) if np.isscalar(feature_size) else feature_size
    scales, ratios = np.asarray(scales, float), np.asarray(ratios, float)
    wh = np.stack([(scales[:, None] / np.sqrt(ratios)).ravel(), (scales[:, None] * np.sqrt(ratios)).ravel()], 1)
    cy, cx = np.meshgrid((np.arange(H) + 0.5) * stride, (np.arange(W) + 0.5) * stride, indexing="ij")  # (H, W)
    centres = np.stack([cx, cy], -1).reshape(H * W, 1, 2)  # (H*W, 1, 2)
    return np.concatenate([centres - wh / 2, centres + wh / 2], -1).reshape(-1, 4)  # (H*W, S*R, 4) -> (A, 4)


def assign_anchors(anchors, gt_boxes, pos_thresh=0.7, neg_thresh=0.3):
    """Faster R-CNN's labels (A,) (1 positive, 0 negative, -1 ignored) and the matched ground truth (A,) of each
    positive (-1 elsewhere)."""
    labels, matched = np.full(len(anchors), -1), np.full(len(anchors), -1)
    if len(gt_boxes) == 0:
        labels[:] = 0  # nothing to find: every anchor is background
        return labels, matched
    iou = box_iou(anchors, gt_boxes)  # (A, G)
    best_gt = iou.argmax(1)  # (A,)
    best_iou = iou[np.arange(len(anchors)), best_gt]  # (A,)
    labels[best_iou < neg_thresh] = 0  # (ii) negative: IoU < 0.3 with every ground truth
    labels[best_iou >= pos_thresh] = 1  # (i) positive: IoU >= 0.7 with some ground truth
    gt_best = iou.max(0)  # (G,) each ground truth's best IoU
    labels[((iou == gt_best) & (gt_best > 0)).any(1)] = 1  # (i) each ground truth's best anchor(s), even if < 0.7
    matched[labels == 1] = best_gt[labels == 1]
    return labels, matched


# %% [markdown]
# ## Sliding windows, and the same windows as one convolutional pass (OverFeat)
#
# A classifier of 14 x 14 windows: conv 5x5 (16) -> ReLU -> max-pool 2 -> FC 400 -> ReLU -> FC 400 -> ReLU -> FC K
# -> softmax. Slid over a larger image it repeats work: neighbouring windows share pixels. OverFeat writes each FC
# layer as a convolution: FC 400 over the flattened 5 x 5 x 16 map is a conv of 400 kernels 5 x 5 x 16 (the same
# numbers, reshaped), the next ones 1 x 1 convs. The net is then fully convolutional: a 28 x 28 image gives an
# 8 x 8 map of scores, entry (i, j) the window at (2i, 2j) (2: the max-pool's stride), and the shared conv runs
# once. (Here the FC layers, run once per window either way, hold most multiply-adds: `multiply_adds` counts
# them.) The weights are random: the lesson is the equality; training is the localization and YOLO scripts' job.


# %%
def conv2d(x, W, b):
    """Valid convolution at stride 1: x (N, C, H, W), W (F, C, kh, kw), b (F,) -> (N, F, H-kh+1, W-kw+1), one einsum
    over strided views of the windows (04-cnns/conv_numpy.py teaches convolution, im2col and its backward)."""
    win = np.lib.stride_tricks.sliding_window_view(x, W.shape[2:], axis=(2, 3))  # (N, C, Ho, Wo, kh, kw), no copy
    return np.einsum("nchwuv,fcuv->nfhw", win, W, optimize=True) + b[:, None, None]


def maxpool2(x):
    """2 x 2 max-pooling at stride 2: (N, C, H, W) -> (N, C, H // 2, W // 2) (04-cnns/pooling_numpy.py)."""
    N, C, H, W = x.shape
    return x[:, :, : H // 2 * 2, : W // 2 * 2].reshape(N, C, H // 2, 2, W // 2, 2).max(axis=(3, 5))


def relu(x):
    return np.maximum(x, 0)


def softmax(z, axis):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def init_classifier(rng, channels=3, n_classes=4, window=14, conv=16, hidden=400, k=5):
    """He-initialised weights of the window classifier: W1 (conv, C, k, k), then the FC layers (out, in)."""
    side = (window - k + 1) // 2  # 5: the pooled map's side
    shapes = {"W1": (conv, channels, k, k), "W2": (hidden, conv * side * side), "W3": (hidden, hidden),
              "W4": (n_classes, hidden)}
    P = {n: rng.standard_normal(s) * np.sqrt(2 / np.prod(s[1:])) for n, s in shapes.items()}
    P.update({f"b{i}": 0.1 * rng.standard_normal(shapes[f"W{i}"][0]) for i in range(1, 5)})
    return P


def classify_windows(P, x):
    """Class probabilities (N, K) of windows x (N, C, 14, 14), with fully connected layers."""
    h = maxpool2(relu(conv2d(x, P["W1"], P["b1"])))  # (N, 16, 5, 5)
    h = relu(h.reshape(len(x), -1) @ P["W2"].T + P["b2"])  # (N, 400) FC over the flattened map
    h = relu(h @ P["W3"].T + P["b3"])  # (N, 400)
    return softmax(h @ P["W4"].T + P["b4"], axis=1)  # (N, K)


def sliding_windows_loop(P, image, window=14, stride=2):
    """The explicit loop: crop every window (at `stride`, the network's) and classify it -> (N, K, rows, cols)."""
    N, _, H, W = image.shape
    rows, cols = (H - window) // stride + 1, (W - window) // stride + 1
    out = np.empty((N, len(P["b4"]), rows, cols))
    for i in range(rows):
        for j in range(cols):
            out[:, :, i, j] = classify_windows(P, image[:, :, i * stride : i * stride + window,
                                                            j * stride : j * stride + window])
    return out


def fc_as_conv(P, side=5):
    """The same weights for a fully convolutional net: FC 1 as a side x side conv over the map, the rest 1 x 1."""
    C = P["W1"].shape[0]
    return {**P, "W2": P["W2"].reshape(-1, C, side, side), "W3": P["W3"][:, :, None, None],
            "W4": P["W4"][:, :, None, None]}


def sliding_windows_conv(P, image):
    """Every window's probabilities in one pass: image (N, C, H, W) -> (N, K, (H - 14) // 2 + 1, (W - 14) // 2 + 1)."""
    Q = fc_as_conv(P)
    h = maxpool2(relu(conv2d(image, Q["W1"], Q["b1"])))  # (N, 16, (H - 4) // 2, (W - 4) // 2)
    h = relu(conv2d(h, Q["W2"], Q["b2"]))  # (N, 400, rows, cols): FC 1, one 400-vector per window
    h = relu(conv2d(h, Q["W3"], Q["b3"]))  # (N, 400, rows, cols): FC 2 as a 1 x 1 conv
    return softmax(conv2d(h, Q["W4"], Q["b4"]), axis=1)  # (N, K, rows, cols)


def multiply_adds(P, image_hw, window=14, stride=2):
    """Multiply-adds of the loop and of the one pass on an (H, W) image. Only the convolution before the first
    FC layer is shared between overlapping windows; the FC layers, now convolutions, still run once per window."""
    (F1, C, k, _), (H, W) = P["W1"].shape, image_hw
    fc = sum(P[f"W{i}"].size for i in (2, 3, 4))  # per window
    windows = ((H - window) // stride + 1) * ((W - window) // stride + 1)
    return {"loop": windows * ((window - k + 1) ** 2 * F1 * C * k * k + fc),
            "one_pass": (H - k + 1) * (W - k + 1) * F1 * C * k * k + windows * fc}


# %% [markdown]
# ## Region proposals, and where YOLO differs
#
# Sliding windows at every position, scale and aspect ratio are too many to classify with a large CNN. R-CNN
# (Girshick et al. 2014) classifies only ~2,000 region proposals per image from selective search (a bottom-up
# grouping of superpixels by colour, texture and size, no learning), warping each to 227 x 227 and running the
# CNN once per region: seconds per image on a GPU. Fast R-CNN (Girshick 2015) runs the CNN once per image
# and crops each proposal from the feature map (RoI pooling), classifying and refining the box in one network.
# Faster R-CNN (Ren et al. 2015) replaces selective search by a Region Proposal Network: a small conv net slid
# over the feature map scores k anchors per cell as object or not and regresses their offsets (the anchors and
# `encode_anchor` above); the best proposals after NMS go to the Fast R-CNN head. Two stages, both learned.
# YOLO (Redmon et al. 2016) drops proposals: one pass of one network over the whole image, which is divided into
# an S x S grid; each cell predicts B boxes (offsets relative to the cell, `encode_cell`), their confidences and
# class probabilities, and NMS cleans up. It sees the whole image at once (fewer background false positives)
# and runs in real time, at the price of coarser localisation and trouble with small, crowded objects.

# %% [markdown]
# ## Mean average precision
#
# Matching, per image and class: detections taken by descending score; each one is a true positive if some
# still unmatched ground truth has IoU >= threshold with it (the one with the highest IoU is taken), else a
# false positive (a second detection of a matched object is a false positive). Then, per class over all images,
# detections by descending score give precision TP / (TP + FP) and recall TP / (number of ground truths) after
# each one. (COCO's rule; the VOC devkit matches a detection only to its best-IoU ground truth, even a taken one.)


# %%
def match_image(boxes, scores, gt_boxes, iou_threshold, max_dets=None):
    """One image and class: the scores (D,) of its detections by descending score (the best max_dets) and
    their TP flags (D,)."""
    order = np.argsort(-scores, kind="stable")[:max_dets]  # (D,)
    iou = box_iou(boxes[order], gt_boxes)  # (D, G)
    taken, tp = np.zeros(len(gt_boxes), bool), np.zeros(len(order), bool)
    for d in range(len(order) if len(gt_boxes) else 0):
        candidates = np.where(taken, -1.0, iou[d])  # (G,) a matched ground truth is out of reach
        g = candidates.argmax()
        if candidates[g] >= iou_threshold:
            tp[d] = taken[g] = True
    return scores[order], tp


def average_precision(tp, n_gt, method):
    """AP of one class from the TP flags (D,) of its detections by descending score, n_gt ground truths.
    method: "voc07" (11-point), "voc" (all points, VOC 2010+) or "coco" (101 points)."""
    if len(tp) == 0:
        return 0.0
    tp_sum, fp_sum = np.cumsum(tp), np.cumsum(~tp)  # (D,) after each detection
    recall, precision = tp_sum / n_gt, tp_sum / (tp_sum + fp_sum)  # (D,), recall non-decreasing
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # p_interp(r_i) = max_{j >= i} p_j, non-increasing
    if method == "voc07":  # mean over r in {0, 0.1, .., 1} of max precision at recall >= r (0 if never reached)
        return float(np.mean([precision[recall >= r].max() if recall[-1] >= r else 0.0 for r in np.linspace(0, 1, 11)]))
    if method == "voc":  # area under the envelope: a step at each recall
        return float(np.sum(np.diff(recall, prepend=0.0) * envelope))
    if method == "coco":  # mean over r in {0, 0.01, .., 1} of the envelope at the first detection with recall >= r
        i = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")  # (101,)
        return float(np.mean(np.where(i < len(tp), envelope[np.minimum(i, len(tp) - 1)], 0.0)))
    raise ValueError(f"method must be voc07, voc or coco, got {method!r}")


def mean_average_precision(detections, ground_truths, iou_threshold=0.5, method="voc", max_dets=None):
    """(mAP, {class: AP}) over the classes that have a ground truth (COCO excludes the others; so do we).

    detections: per image a dict of "boxes" (D, 4), "scores" (D,), "labels" (D,); ground_truths: per image a
    dict of "boxes" (G, 4), "labels" (G,), in the same image order. max_dets keeps the best detections per
    image and class (COCO: 100); None keeps all."""
    classes = np.unique(np.concatenate([np.asarray(g["labels"]) for g in ground_truths]))
    if len(classes) == 0:
        raise ValueError("mean_average_precision: no ground-truth boxes, AP is undefined")
    ap = {}
    for c in classes:
        scores, tps, n_gt = [], [], 0
        for det, gt in zip(detections, ground_truths, strict=True):
            d, g = det["labels"] == c, gt["labels"] == c
            s, tp = match_image(det["boxes"][d], det["scores"][d], gt["boxes"][g], iou_threshold, max_dets)
            scores.append(s)
            tps.append(tp)
            n_gt += int(g.sum())
        order = np.argsort(-np.concatenate(scores), kind="stable")  # all images' detections, best first
        ap[int(c)] = average_precision(np.concatenate(tps)[order], n_gt, method)
    return float(np.mean(list(ap.values()))), ap


def coco_map(detections, ground_truths):
    """COCO's AP (101-point, averaged over IoU 0.50:0.05:0.95 and the classes; 100 detections per image and
    class; areas "all"), AP50 and AP75."""
    per_iou = [mean_average_precision(detections, ground_truths, t, "coco", max_dets=100)[0]
               for t in np.linspace(0.5, 0.95, 10)]
    return {"AP": float(np.mean(per_iou)), "AP50": per_iou[0], "AP75": per_iou[5]}


# %% [markdown]
# ## A made-up scene and a made-up detector, for the figures


# %%
def make_scene(rng, size=128, n_objects=4, max_iou=0.1):
    """A grey image (size, size) with up to n_objects rectangles (class 0) and ellipses (class 1), each
    overlapping the others by IoU <= max_iou; their boxes (n, 4) and labels (n,)."""
    image, boxes = 0.1 * rng.random((size, size)), np.zeros((0, 4))
    for _ in range(20 * n_objects):  # rejection sampling: draw a box, keep it if it overlaps little
        wh = rng.uniform(18, 48, 2)
        x1y1 = rng.uniform(0, size - wh)
        box = np.concatenate([x1y1, x1y1 + wh])[None]
        if len(boxes) < n_objects and (len(boxes) == 0 or box_iou(box, boxes).max() <= max_iou):
            boxes = np.concatenate([boxes, box])
    labels = rng.integers(0, 2, len(boxes))
    yy, xx = np.mgrid[:size, :size] + 0.5  # pixel centres
    for (x1, y1, x2, y2), c in zip(boxes, labels):
        if c == 0:
            inside = (xx >= x1) & (xx <= x2) & (yy >= y1) & (yy <= y2)
        else:
            inside = ((xx - (x1 + x2) / 2) / ((x2 - x1) / 2)) ** 2 + ((yy - (y1 + y2) / 2) / ((y2 - y1) / 2)) ** 2 <= 1
        image[inside] = rng.uniform(0.5, 1)
    return image, boxes, labels


def fake_detections(rng, gt_boxes, gt_labels, size, per_object=6, n_false=4):
    """What a detector outputs before NMS: boxes jittered around each object, scored by their IoU plus noise,
    and a few low-scoring false alarms."""
    wh = np.repeat(gt_boxes[:, 2:] - gt_boxes[:, :2], per_object, 0)  # (n * per_object, 2)
    boxes = np.repeat(gt_boxes, per_object, 0) + rng.normal(0, 0.12, (len(wh), 4)) * np.tile(wh, 2)
    iou = box_iou(boxes, gt_boxes)[np.arange(len(boxes)), np.repeat(np.arange(len(gt_boxes)), per_object)]
    x1y1 = rng.uniform(0, size - 30, (n_false, 2))
    boxes = np.concatenate([boxes, np.concatenate([x1y1, x1y1 + rng.uniform(10, 30, (n_false, 2))], 1)])
    scores = np.clip(np.concatenate([iou, rng.uniform(0, 0.4, n_false)]) + rng.normal(0, 0.05, len(boxes)), 0, 1)
    labels = np.concatenate([np.repeat(gt_labels, per_object), rng.integers(0, 2, n_false)])
    return {"boxes": boxes, "scores": scores, "labels": labels}


COLOURS = ["tab:orange", "tab:cyan"]


def draw_boxes(ax, boxes, colours, alphas=None, lw=1.5, ls="-"):
    """Corner boxes (n, 4) as rectangles; colours and alphas: one for all, or one per box."""
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=lw, ls=ls,
                               ec=colours if isinstance(colours, str) else colours[k],
                               alpha=1.0 if alphas is None else alphas[k]))


def plot_nms(image, gt, det, keep, path, ap_before, ap_after):
    fig = Figure(figsize=(10, 5.4), layout="constrained")
    for ax, idx, title in zip(fig.subplots(1, 2), [np.arange(len(det["boxes"])), keep],
                              [f"before NMS: {len(det['boxes'])} boxes, VOC AP50 {ap_before:.3f}",
                               f"after batched_nms(0.5): {len(keep)} boxes, VOC AP50 {ap_after:.3f}"]):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, extent=(0, image.shape[1], image.shape[0], 0))
        draw_boxes(ax, gt["boxes"], [COLOURS[c] for c in gt["labels"]], lw=1, ls=":")
        draw_boxes(ax, det["boxes"][idx], [COLOURS[c] for c in det["labels"][idx]], 0.25 + 0.75 * det["scores"][idx])
        ax.set(title=title, xticks=[], yticks=[])
    fig.suptitle("A made-up detector (orange: rectangles, cyan: ellipses; opacity = score; dotted: ground truth)")
    fig.savefig(path, dpi=100)


def plot_anchors(image, gt_boxes, A, labels, stride, path):
    fig = Figure(figsize=(6.5, 6.5), layout="constrained")
    ax = fig.subplots()
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, extent=(0, image.shape[1], image.shape[0], 0))
    for t in range(0, image.shape[0] + 1, stride):
        ax.axhline(t, color="0.4", lw=0.4), ax.axvline(t, color="0.4", lw=0.4)
    centres = (A[:, :2] + A[:, 2:]) / 2
    ax.plot(centres[:, 0], centres[:, 1], ".", color="0.6", ms=2)
    n = image.shape[0] // stride  # cells per side
    k = len(A) // n**2  # anchors per cell
    cell = (n // 2) * n + n // 2  # the cell below and right of the middle (row-major order)
    draw_boxes(ax, A[cell * k : (cell + 1) * k], "yellow", lw=0.8)
    draw_boxes(ax, A[labels == 1], "lime", lw=1)
    draw_boxes(ax, gt_boxes, "red", lw=2)
    ax.set(xlim=(0, image.shape[1]), ylim=(image.shape[0], 0), xticks=[], yticks=[],
           title=f"{len(A)} anchors ({k} per cell, stride {stride}): one cell's in yellow;\n"
                 f"positives in green ({(labels == 1).sum()}), ground truth in red; negatives {(labels == 0).sum()}")
    fig.savefig(path, dpi=100)


def plot_curves(offsets, curves, recall, precision, path):
    """Left: the IoU family on a moving pair of boxes. Right: a precision-recall curve, its envelope, VOC07's points."""
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ax, bx = fig.subplots(1, 2)
    for name, values in curves.items():
        ax.plot(offsets, values, label=name)
    ax.axhline(0, color="0.5", lw=0.5)
    ax.set(xlabel="horizontal offset of B's centre from A's (pixels)", ylabel="value", ylim=(-1.05, 1.05),
           title="A = (0, 0, 40, 40) fixed, B 20 x 60 sliding across it at the same height")
    ax.legend()
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    bx.plot(recall, precision, "o-", label="precision after each detection")
    bx.step(np.concatenate([[0], recall]), np.concatenate([envelope[:1], envelope]), where="pre",
            label="envelope: VOC all-point AP is its area")
    r11 = np.linspace(0, 1, 11)
    bx.plot(r11, [precision[recall >= r].max() if recall[-1] >= r else 0 for r in r11], "s", label="VOC 2007 points")
    bx.set(xlabel="recall", ylabel="precision", xlim=(-0.02, 1.02), ylim=(-0.02, 1.05),
           title="Hand-worked AP: 3 ground truths, detections TP, FP, TP")
    bx.legend(loc="lower left")
    fig.savefig(path, dpi=100)


# %% [markdown]
# ## Main: the figures and a few checks computed on the spot


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seeds the made-up scenes, detections and classifier weights (default 0)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/detection_numpy)")
    p.add_argument("--smoke", action="store_true",
                   help="a seconds-long run: 5 scenes for the mAP demo instead of 100, a 32 x 32 sliding-window "
                        "image instead of 64 x 64")
    args = p.parse_args(argv)
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    metrics = {"script": Path(__file__).stem, "config": vars(args)}

    # The IoU family on a moving pair of boxes.
    offsets = np.linspace(-70, 70, 141)
    a = np.array([[0.0, 0.0, 40.0, 40.0]])
    b = np.stack([10 + offsets, np.full_like(offsets, -10), 30 + offsets, np.full_like(offsets, 50)], 1)  # (141, 4)
    curves = {f.__name__.removeprefix("box_"): f(a, b)[0] for f in (box_iou, box_giou, box_diou, box_ciou)}
    metrics["iou_family_at_offset_0"] = {k: float(v[70]) for k, v in curves.items()}  # figure below, with the AP
    print("A and B centred on each other: " + ", ".join(f"{k} {v[70]:.4f}" for k, v in curves.items()))

    # NMS on a made-up scene, and the AP it buys over many such scenes.
    image, gt_boxes, gt_labels = make_scene(rng)
    det = fake_detections(rng, gt_boxes, gt_labels, image.shape[0])
    keep = batched_nms(det["boxes"], det["scores"], det["labels"], 0.5)
    scenes = [make_scene(rng) for _ in range(5 if args.smoke else 100)]
    gts = [{"boxes": s[1], "labels": s[2]} for s in scenes]
    dets = [fake_detections(rng, g["boxes"], g["labels"], 128) for g in gts]
    kept = [{k: v[batched_nms(d["boxes"], d["scores"], d["labels"], 0.5)] for k, v in d.items()} for d in dets]
    for name, ds in [("before_nms", dets), ("after_nms", kept)]:
        metrics[name] = {"voc07_ap50": mean_average_precision(ds, gts, 0.5, "voc07")[0],
                         "voc_ap50": mean_average_precision(ds, gts, 0.5, "voc")[0], **coco_map(ds, gts)}
        print(f"{len(scenes)} scenes, {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics[name].items()))
    one = [{"boxes": gt_boxes, "labels": gt_labels}]
    plot_nms(image, one[0], det, keep, out_dir / "nms.png", mean_average_precision([det], one)[0],
             mean_average_precision([{k: v[keep] for k, v in det.items()}], one)[0])
    metrics["nms_scene"] = {"boxes_before": len(det["boxes"]), "boxes_after": len(keep), "objects": len(gt_boxes)}

    # Anchors over the scene: 8 x 8 cells of stride 16, 3 scales x 3 ratios.
    A = anchors(8, 16, scales=(24, 40, 64), ratios=(0.5, 1, 2))
    labels, matched = assign_anchors(A, gt_boxes)
    plot_anchors(image, gt_boxes, A, labels, 16, out_dir / "anchors.png")
    metrics["anchors"] = {"count": len(A), "positive": int((labels == 1).sum()), "negative": int((labels == 0).sum()),
                          "ignored": int((labels == -1).sum()),
                          "objects_with_a_positive": len(np.unique(matched[labels == 1]))}
    print(f"anchors: {metrics['anchors']}")

    # Hand-worked AP: 3 ground truths, detections TP (IoU 1), FP (nowhere), TP (IoU 1), by descending score.
    gt = [{"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50.0]]), "labels": np.zeros(3, int)}]
    hand = [{"boxes": np.array([[0, 0, 10, 10], [60, 60, 70, 70], [20, 20, 30, 30.0]]),
             "scores": np.array([0.9, 0.8, 0.7]), "labels": np.zeros(3, int)}]
    metrics["hand_ap"] = {m: mean_average_precision(hand, gt, 0.5, m)[0] for m in ("voc07", "voc", "coco")}
    print(f"hand-worked AP (expected 6/11 = 0.5455, 5/9 = 0.5556, 56/101 = 0.5545): {metrics['hand_ap']}")
    _, tp = match_image(hand[0]["boxes"], hand[0]["scores"], gt[0]["boxes"], 0.5)  # TP, FP, TP
    recall, precision = np.cumsum(tp) / 3, np.cumsum(tp) / np.arange(1, 4)
    plot_curves(offsets, curves, recall, precision, out_dir / "iou_and_ap.png")

    # Sliding windows: the explicit loop against one convolutional pass, same weights.
    P = init_classifier(rng)
    side = 32 if args.smoke else 64
    x = rng.random((1, 3, side, side))
    t0 = time.perf_counter()
    loop = sliding_windows_loop(P, x)
    loop_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    conv = sliding_windows_conv(P, x)
    conv_s = time.perf_counter() - t0
    diff, macs = float(np.abs(loop - conv).max()), multiply_adds(P, (side, side))
    metrics["sliding_windows"] = {"image": [side, side], "windows": int(loop.shape[2] * loop.shape[3]),
                                  "max_abs_diff": diff, "loop_s": loop_s, "conv_s": conv_s, "multiply_adds": macs}
    print(f"sliding windows on {side} x {side}: {loop.shape[2]} x {loop.shape[3]} windows, loop {loop_s:.3f} s "
          f"({macs['loop'] / 1e6:.0f}M multiply-adds), one pass {conv_s:.4f} s ({macs['one_pass'] / 1e6:.0f}M), "
          f"max |difference| {diff:.1e}")

    headline = {"hand_ap": metrics["hand_ap"], "sliding_windows_max_abs_diff": diff,
                "voc_ap50": {k: metrics[k]["voc_ap50"] for k in ("before_nms", "after_nms")}}
    metrics = {"script": metrics["script"], **headline, **metrics}  # RESULTS.md's row shows the first 8 figures
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"wrote {out_dir}/metrics.json, iou_and_ap.png, nms.png, anchors.png")
    return metrics


if __name__ == "__main__":
    main()
