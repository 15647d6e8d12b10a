"""04-cnns/detection_numpy.py: the IoU family, box encodings, NMS, anchors, sliding windows as a convolution, mAP.

References are written independently here: IoU by counting pixels (integer boxes), GIoU/DIoU/CIoU one pair at
a time with `math`, NMS as "keep a box if no kept box overlaps it too much", CIoU in torch for autograd, and
COCO AP from pycocotools itself (COCO objects built in memory).
"""

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

SCRIPT = "04-cnns/detection_numpy.py"


@pytest.fixture(scope="module")
def det(load_script):
    return load_script(SCRIPT)


# %% IoU family: brute-force references


def int_boxes(n_min=1, n_max=6, size=10):
    """Lists of integer corner boxes inside [0, size]^2, widths and heights from 0 (degenerate) up: small ranges
    make disjoint, touching, nested and identical pairs common."""
    box = st.tuples(st.integers(0, size - 1), st.integers(0, size - 1), st.integers(0, 5), st.integers(0, 5)).map(
        lambda t: (t[0], t[1], min(t[0] + t[2], size), min(t[1] + t[3], size))
    )
    return st.lists(box, min_size=n_min, max_size=n_max)


def mask(box, size=10):
    """The unit pixels [x1, x2) x [y1, y2) a box covers, (size, size) booleans (rows y, columns x)."""
    m = np.zeros((size, size), bool)
    m[box[1] : box[3], box[0] : box[2]] = True
    return m


def pixel_iou_giou(a, b):
    """IoU and GIoU of two integer boxes by counting pixels; 0 where a denominator is 0."""
    inter, union = (mask(a) & mask(b)).sum(), (mask(a) | mask(b)).sum()
    c = mask((min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])), size=10).sum()
    iou = inter / union if union else 0.0
    return iou, iou - ((c - union) / c if c else 0.0)


def scalar_family(a, b):
    """IoU, GIoU, DIoU, CIoU of one pair of boxes from their definitions, with Python floats."""
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = map(float, a), map(float, b)
    wa, ha, wb, hb = ax2 - ax1, ay2 - ay1, bx2 - bx1, by2 - by1
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = wa * ha + wb * hb - inter
    iou = inter / union if union > 0 else 0.0
    cw, ch = max(ax2, bx2) - min(ax1, bx1), max(ay2, by2) - min(ay1, by1)
    giou = iou - ((cw * ch - union) / (cw * ch) if cw * ch > 0 else 0.0)
    rho2 = ((ax1 + ax2) / 2 - (bx1 + bx2) / 2) ** 2 + ((ay1 + ay2) / 2 - (by1 + by2) / 2) ** 2
    diou = iou - (rho2 / (cw**2 + ch**2) if cw**2 + ch**2 > 0 else 0.0)

    def angle(w, h):  # atan(w / h), with its limits for h = 0
        return math.atan(w / h) if h > 0 else (math.pi / 2 if w > 0 else 0.0)

    v = 4 / math.pi**2 * (angle(wb, hb) - angle(wa, ha)) ** 2
    alpha = v / (1 - iou + v) if (1 - iou + v) > 0 else 0.0
    return iou, giou, diou, diou - alpha * v


def family(det, a, b):
    return [f(a, b) for f in (det.box_iou, det.box_giou, det.box_diou, det.box_ciou)]


@settings(max_examples=150, deadline=None)
@given(a=int_boxes(), b=int_boxes())
def test_iou_family_matches_brute_force_on_integer_boxes(det, a, b):
    """Pixel counting for IoU and GIoU, per-pair formulas for all four, on every (N, M) pair; no NaN ever, even
    for zero-area boxes."""
    A, B = np.array(a, float), np.array(b, float)
    got = family(det, A, B)
    for values in got:
        assert values.shape == (len(a), len(b)) and np.isfinite(values).all()
    for i, j in np.ndindex(len(a), len(b)):
        iou, giou = pixel_iou_giou(a[i], b[j])
        ref = scalar_family(a[i], b[j])
        assert abs(got[0][i, j] - iou) <= 1e-12 and abs(got[1][i, j] - giou) <= 1e-12
        for k in range(4):
            assert abs(got[k][i, j] - ref[k]) <= 1e-12, (k, a[i], b[j])


def test_iou_family_matches_scalar_formulas_on_random_float_boxes(det):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (2, 40, 2))
    A, B = (np.concatenate([p, p + rng.uniform(0, 30, (40, 2))], 1) for p in xy)
    A[:5, 2] = A[:5, 0]  # zero width
    got = family(det, A, B)
    for i, j in np.ndindex(40, 40):
        for k, value in enumerate(scalar_family(A[i], B[j])):
            assert abs(got[k][i, j] - value) <= 1e-12


@pytest.mark.parametrize(
    "a, b, expected",
    [
        # identical: every member is 1
        ((0, 0, 4, 2), (0, 0, 4, 2), (1, 1, 1, 1)),
        # nested, same centre and aspect ratio: IoU 1/4, C = the outer box, centres coincide, v = 0
        ((1, 1, 3, 3), (0, 0, 4, 4), (0.25, 0.25, 0.25, 0.25)),
        # disjoint side by side: IoU 0; C 3 x 1 (GIoU -1/3); centres 2 apart, c^2 = 10 (DIoU -0.4); v = 0
        ((0, 0, 1, 1), (2, 0, 3, 1), (0, -1 / 3, -0.4, -0.4)),
        # zero-area boxes: two identical points, and a line inside a box
        ((1, 1, 1, 1), (1, 1, 1, 1), (0, 0, 0, 0)),
    ],
)
def test_iou_family_hand_values(det, a, b, expected):
    got = [float(v[0, 0]) for v in family(det, np.array([a], float), np.array([b], float))]
    assert got == pytest.approx(expected, abs=1e-15)


def test_iou_axes_are_not_swapped(det):
    """A 4 x 1 box against a 1 x 4 box sharing a corner overlap 1, against itself shifted down by 2 it overlaps 2."""
    wide, tall = np.array([[0.0, 0, 4, 1]]), np.array([[0.0, 0, 1, 4]])
    assert det.box_iou(wide, tall)[0, 0] == pytest.approx(1 / 7)
    assert det.box_iou(wide, wide + [2, 0, 2, 0])[0, 0] == pytest.approx(2 / 6)
    assert det.box_iou(wide, wide + [0, 2, 0, 2])[0, 0] == 0
    assert det.box_ciou(wide, tall)[0, 0] < det.box_diou(wide, tall)[0, 0]  # aspect ratios differ: v > 0


# %% CIoU in torch: autograd gives finite gradients, equal to finite differences of the NumPy formula


def ciou_torch(a, b):
    """CIoU of pairs a[i], b[i] (N, 4) in torch, term by term as the formula reads (positive-area boxes)."""
    wa, ha, wb, hb = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = iw * ih
    iou = inter / (wa * ha + wb * hb - inter)
    cw = torch.maximum(a[:, 2], b[:, 2]) - torch.minimum(a[:, 0], b[:, 0])
    ch = torch.maximum(a[:, 3], b[:, 3]) - torch.minimum(a[:, 1], b[:, 1])
    rho2 = ((a[:, 0] + a[:, 2] - b[:, 0] - b[:, 2]) ** 2 + (a[:, 1] + a[:, 3] - b[:, 1] - b[:, 3]) ** 2) / 4
    v = 4 / math.pi**2 * (torch.atan2(wb, hb) - torch.atan2(wa, ha)) ** 2
    den = 1 - iou + v
    alpha = v / torch.where(den > 0, den, torch.ones_like(den))  # identical boxes: 0 / 0 -> 0
    return iou - rho2 / (cw**2 + ch**2) - alpha * v


CASES = {  # (prediction, ground truth)
    "identical": ([2.0, 3.0, 7.0, 5.0], [2.0, 3.0, 7.0, 5.0]),
    "nested": ([3.0, 3.5, 5.5, 4.5], [2.0, 3.0, 7.0, 6.0]),
    "disjoint": ([0.0, 0.0, 1.0, 3.0], [4.0, 5.0, 8.0, 6.5]),
    "partial": ([0.0, 0.0, 4.0, 3.0], [1.5, 1.0, 6.0, 3.5]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ciou_torch_autograd_finite_and_equal_to_numpy(det, case):
    a, b = (np.array([box]) for box in CASES[case])
    ta, tb = (torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in (a, b))
    value = ciou_torch(ta, tb)
    assert value.item() == pytest.approx(det.box_ciou(a, b)[0, 0], abs=1e-14)
    ga, gb = torch.autograd.grad(value.sum(), (ta, tb))
    assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
    if case == "identical":  # a maximum with kinks (min/max ties): only finiteness is defined
        assert value.item() == 1
        return
    h = 1e-6  # elsewhere the function is smooth: autograd equals central differences of the NumPy formula
    for x, g, other, first in ((a, ga, b, True), (b, gb, a, False)):
        for k in range(4):
            e = np.zeros_like(x)
            e[0, k] = h

            def f(y, other=other, first=first):
                return det.box_ciou(y, other)[0, 0] if first else det.box_ciou(other, y)[0, 0]

            assert abs((f(x + e) - f(x - e)) / (2 * h) - g[0, k].item()) <= 1e-7


# %% Box encodings


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_encodings_round_trip(det, seed):
    rng = np.random.default_rng(seed)
    x1y1 = rng.uniform(0, 90, (20, 2))
    boxes = np.concatenate([x1y1, x1y1 + rng.uniform(0.5, 40, (20, 2))], 1)
    anchors_ = np.concatenate([x1y1 + 3, x1y1 + 3 + rng.uniform(1, 50, (20, 2))], 1)
    c = det.corners_to_centre(boxes)
    assert np.allclose(c[:, 2:], boxes[:, 2:] - boxes[:, :2]) and np.allclose(det.centre_to_corners(c), boxes)
    assert np.allclose(det.decode_anchor(det.encode_anchor(boxes, anchors_), anchors_), boxes, atol=1e-10)
    row, col, t = det.encode_cell(boxes, 7, (112, 140))
    assert ((t[:, :2] >= 0) & (t[:, :2] <= 1)).all() and ((row >= 0) & (row < 7) & (col >= 0) & (col < 7)).all()
    assert np.allclose(det.decode_cell(t, row, col, 7, (112, 140)), boxes, atol=1e-10)


def test_encodings_hand_values(det):
    anchor = np.array([[10.0, 20.0, 30.0, 60.0]])  # centre (20, 40), 20 x 40
    box = np.array([[15.0, 20.0, 75.0, 40.0]])  # centre (45, 30), 60 x 20
    assert det.encode_anchor(box, anchor) == pytest.approx(np.array([[25 / 20, -10 / 40, np.log(3), np.log(0.5)]]))
    assert np.array_equal(det.encode_anchor(anchor, anchor), np.zeros((1, 4)))
    # 7 x 7 grid on a 70 (high) x 140 (wide) image: cells 20 wide, 10 high; centre (45, 30) is in column 2, row 3
    row, col, t = det.encode_cell(box, 7, (70, 140))
    assert (row[0], col[0]) == (3, 2) and t[0] == pytest.approx([0.25, 0.0, 60 / 140, 20 / 70])
    row, col, t = det.encode_cell(np.array([[120.0, 60.0, 160.0, 80.0]]), 7, (70, 140))  # centre (140, 70): far edges
    assert (row[0], col[0]) == (6, 6) and t[0, :2] == pytest.approx([1.0, 1.0])


# %% NMS


def iou_scalar(a, b):
    return scalar_family(a, b)[0]


def nms_reference(boxes, scores, threshold):
    """Visit boxes best first (ties: lower index first); keep one unless a kept box has IoU > threshold with it."""
    kept = []
    for i in sorted(range(len(boxes)), key=lambda i: (-scores[i], i)):
        if all(iou_scalar(boxes[i], boxes[k]) <= threshold for k in kept):
            kept.append(i)
    return kept


@settings(max_examples=150, deadline=None)
@given(boxes=int_boxes(1, 12), data=st.data())
def test_nms_matches_brute_force(det, boxes, data):
    """Integer boxes (exact IoUs) with integer scores (ties), and a threshold often equal to one of their IoUs."""
    b = np.array(boxes, float)
    scores = np.array(data.draw(st.lists(st.integers(0, 4), min_size=len(boxes), max_size=len(boxes))), float)
    ious = sorted({iou_scalar(p, q) for p in boxes for q in boxes})
    threshold = data.draw(st.sampled_from(ious) | st.floats(0, 1))
    keep = det.nms(b, scores, threshold)
    assert keep.tolist() == nms_reference(boxes, scores, threshold)
    classes = np.array(data.draw(st.lists(st.integers(0, 2), min_size=len(boxes), max_size=len(boxes))))
    expected = [
        i
        for c in range(3)
        for i in np.flatnonzero(classes == c)[
            nms_reference([boxes[i] for i in np.flatnonzero(classes == c)], scores[classes == c], threshold)
        ]
    ]
    assert det.batched_nms(b, scores, classes, threshold).tolist() == sorted(expected, key=lambda i: (-scores[i], i))


def test_nms_keeps_equal_iou_and_suppresses_greater(det):
    boxes = np.array([[0, 0, 2, 1], [0, 0, 1, 1], [0.0, 0, 1.9, 1]])  # IoU with box 0: exactly 0.5, and 0.95
    scores = np.array([0.9, 0.8, 0.7])
    assert det.box_iou(boxes[:1], boxes[1:2])[0, 0] == 0.5
    assert det.nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert det.nms(boxes, scores, 0.49).tolist() == [0]
    assert det.nms(boxes, np.array([0.1, 0.8, 0.7]), 0.5).tolist() == [1, 0]  # kept by descending score
    assert det.batched_nms(boxes, scores, np.array([0, 1, 0]), 0.5).tolist() == [0, 1]
    assert det.nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    assert det.batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 0.5).tolist() == []


# %% Anchors


def test_anchor_counts_centres_sizes_and_order(det):
    scales, ratios = (32, 64, 128), (0.5, 1, 2)
    A = det.anchors((3, 5), 16, scales, ratios)
    assert A.shape == (3 * 5 * 9, 4)
    A = A.reshape(3, 5, 3, 3, 4)  # (row, col, scale, ratio, 4): the documented order
    centres = (A[..., :2] + A[..., 2:]) / 2
    assert np.allclose(centres[..., 0], (np.arange(5)[None, :, None, None] + 0.5) * 16)
    assert np.allclose(centres[..., 1], (np.arange(3)[:, None, None, None] + 0.5) * 16)
    w, h = A[..., 2] - A[..., 0], A[..., 3] - A[..., 1]
    assert np.allclose(w * h, np.array(scales, float)[:, None] ** 2)  # the area is scale^2 at every ratio
    assert np.allclose(h / w, np.array(ratios)[None, :])  # ratio = h / w
    assert det.anchors(4, 8, [10], [1]).shape == (16, 4)


def test_assign_anchors_rules(det):
    gt = np.array([[0.0, 0, 10, 10], [50.0, 50, 60, 60]])
    A = np.array(
        [
            [0, 0, 10, 10],  # IoU 1 with gt 0: positive
            [0, 0, 10, 7],  # IoU 0.7 exactly: positive (>= 0.7)
            [0, 0, 10, 5],  # IoU 0.5: ignored
            [0, 0, 10, 3],  # IoU 0.3 exactly: ignored (negative is < 0.3)
            [0, 0, 10, 2],  # IoU 0.2: negative
            [50, 50, 60, 55],  # IoU 0.5, the best for gt 1: positive although < 0.7
            [50, 50, 60, 54],  # IoU 0.4 with gt 1: ignored
            [100, 100, 110, 110],  # no overlap: negative
        ],
        float,
    )
    labels, matched = det.assign_anchors(A, gt)
    assert labels.tolist() == [1, 1, -1, -1, 0, 1, -1, 0]
    assert matched.tolist() == [0, 0, -1, -1, -1, 1, -1, -1]
    # a ground truth that no anchor touches gives no spurious positives; no ground truth: all negative
    labels, _ = det.assign_anchors(A[4:5], gt[1:])
    assert labels.tolist() == [0]
    labels, matched = det.assign_anchors(A, np.zeros((0, 4)))
    assert (labels == 0).all() and (matched == -1).all()
    # ties for a ground truth's best anchor: all of them are positive; thresholds are parameters
    labels, _ = det.assign_anchors(np.array([[0, 0, 10, 5], [0, 5, 10, 10], [0, 0, 10, 1]], float), gt[:1])
    assert labels.tolist() == [1, 1, 0]
    labels, _ = det.assign_anchors(A[:5], gt[:1], pos_thresh=0.45, neg_thresh=0.35)
    assert labels.tolist() == [1, 1, 1, 0, 0]


# %% Sliding windows: the explicit loop and one convolutional pass


@pytest.mark.parametrize("shape", [(2, 3, 14, 14), (1, 3, 28, 28), (2, 3, 21, 30)])
def test_sliding_windows_conv_equals_loop(det, shape):
    rng = np.random.default_rng(sum(shape))
    P = det.init_classifier(rng)
    x = rng.standard_normal(shape)
    loop, conv = det.sliding_windows_loop(P, x), det.sliding_windows_conv(P, x)
    assert loop.shape == conv.shape == (shape[0], 4, (shape[2] - 14) // 2 + 1, (shape[3] - 14) // 2 + 1)
    assert np.abs(loop - conv).max() <= 1e-10
    assert np.allclose(loop.sum(1), 1)
    i, j = loop.shape[2] - 1, loop.shape[3] - 1  # the last window, by hand
    assert np.allclose(conv[:, :, i, j], det.classify_windows(P, x[:, :, 2 * i : 2 * i + 14, 2 * j : 2 * j + 14]))


def test_conv2d_and_maxpool_against_torch(det):
    rng = np.random.default_rng(1)
    x, W, b = rng.standard_normal((2, 3, 9, 8)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)
    ref = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(W), torch.tensor(b)).numpy()
    assert np.abs(det.conv2d(x, W, b) - ref).max() <= 1e-12
    ref = torch.nn.functional.max_pool2d(torch.tensor(x), 2).numpy()
    assert np.array_equal(det.maxpool2(x), ref)


# %% mAP: hand-worked examples


def boxes_at(*corners):
    return np.array(corners, float).reshape(-1, 4)


def test_map_hand_worked_tp_fp_tp(det):
    """3 ground truths; detections TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3.
    VOC07: r = 0..0.3 -> 1 (4 points), 0.4..0.6 -> 2/3 (3 points), the rest 0: 6/11. All-point: 1/3 + 1/3 * 2/3 = 5/9.
    COCO 101-point: r = 0..0.33 -> 1 (34 points), 0.34..0.66 -> 2/3 (33 points): 56/101."""
    gt = [{"boxes": boxes_at(0, 0, 10, 10, 20, 20, 30, 30, 40, 40, 50, 50), "labels": np.zeros(3, int)}]
    d = [
        {
            "boxes": boxes_at(1, 0, 10, 10, 60, 60, 70, 70, 20, 20, 30, 31),
            "scores": np.array([0.9, 0.8, 0.7]),
            "labels": np.zeros(3, int),
        }
    ]
    got = {m: det.mean_average_precision(d, gt, 0.5, m)[0] for m in ("voc07", "voc", "coco")}
    assert got["voc07"] == pytest.approx(6 / 11, abs=1e-12) and round(got["voc07"], 4) == 0.5455
    assert got["voc"] == pytest.approx(5 / 9, abs=1e-12) and round(got["voc"], 4) == 0.5556
    assert got["coco"] == pytest.approx(56 / 101, abs=1e-12)


def test_map_two_images_duplicate_and_two_classes(det):
    """Class 0: 3 ground truths over two images; by score: TP, duplicate of the same object (FP), FP on the other
    image, TP, TP -> precision 1, 1/2, 1/3, 1/2, 3/5 at recall 1/3, 1/3, 1/3, 2/3, 1; envelope 1, .6, .6, .6, .6.
    VOC all-point 1/3 + 2/3 * 0.6 = 11/15; VOC07 (4 * 1 + 7 * 0.6) / 11 = 41/55; COCO (34 + 67 * 0.6) / 101.
    Class 1: one ground truth found at once: AP 1. Class 2 has detections and no ground truth: excluded."""
    gt = [
        {"boxes": boxes_at(0, 0, 10, 10, 30, 30, 40, 40), "labels": np.array([0, 1])},
        {"boxes": boxes_at(0, 0, 10, 10, 50, 0, 60, 10), "labels": np.array([0, 0])},
    ]
    d = [
        {
            "boxes": boxes_at(0, 0, 10, 10, 0, 1, 10, 10, 30, 30, 40, 40, 80, 80, 90, 90),
            "scores": np.array([0.95, 0.9, 0.5, 0.99]),
            "labels": np.array([0, 0, 1, 2]),
        },
        {
            "boxes": boxes_at(20, 20, 30, 30, 50, 0, 60, 10, 0, 0, 10, 10.5),
            "scores": np.array([0.8, 0.7, 0.6]),
            "labels": np.array([0, 0, 0]),
        },
    ]
    for method, ap0 in [("voc", 11 / 15), ("voc07", 41 / 55), ("coco", (34 + 67 * 0.6) / 101)]:
        mean, per_class = det.mean_average_precision(d, gt, 0.5, method)
        assert sorted(per_class) == [0, 1]
        assert per_class[0] == pytest.approx(ap0, abs=1e-12) and per_class[1] == 1.0
        assert mean == pytest.approx((ap0 + 1) / 2, abs=1e-12)


def test_matching_threshold_is_inclusive_and_takes_the_best_free_ground_truth(det):
    gt = [{"boxes": boxes_at(0, 0, 2, 1), "labels": np.array([0])}]
    d = [{"boxes": boxes_at(0, 0, 1, 1), "scores": np.array([1.0]), "labels": np.array([0])}]  # IoU exactly 0.5
    assert det.mean_average_precision(d, gt, 0.5, "voc")[0] == 1.0
    assert det.mean_average_precision(d, gt, 0.55, "voc")[0] == 0.0
    # two overlapping objects. The first detection has IoU 0.54 with object 0 and 0.82 with object 1: it takes
    # object 1, leaving object 0 to the second detection (IoU 1). Taking the first object above 0.5 would lose it.
    boxes = boxes_at(0, 0, 10, 10, 4, 0, 14, 10)
    s, tp = det.match_image(boxes_at(3, 0, 13, 10, 0, 0, 10, 10), np.array([0.9, 0.8]), boxes, 0.5)
    assert tp.tolist() == [True, True]
    # a duplicate of object 0 (given first, scored higher): object 1 is free but only at IoU 0.43, so a FP
    s, tp = det.match_image(boxes_at(0, 0, 10, 10, 0, 0, 10, 10), np.array([0.8, 0.9]), boxes, 0.5)
    assert s.tolist() == [0.9, 0.8] and tp.tolist() == [True, False]


# %% COCO AP against pycocotools


def pycocotools_stats(dets, gts, n_classes):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    anns = []
    for i, g in enumerate(gts):
        for b, c in zip(g["boxes"], g["labels"]):  # ids from 1: pycocotools reads id 0 as "unmatched"
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": int(c) + 1,
                    "bbox": xywh(b),
                    "area": float((b[2] - b[0]) * (b[3] - b[1])),
                    "iscrowd": 0,
                }
            )
    results = [
        {"image_id": i + 1, "category_id": int(c) + 1, "bbox": xywh(b), "score": float(s)}
        for i, d in enumerate(dets)
        for b, s, c in zip(d["boxes"], d["scores"], d["labels"])
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {
            "images": [{"id": i + 1} for i in range(len(gts))],
            "annotations": anns,
            "categories": [{"id": c + 1, "name": str(c)} for c in range(n_classes)],
        }
        coco.createIndex()
        evaluation = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    return evaluation.stats


def random_detection_set(rng, n_images=6, n_classes=3):
    """Images with 0-5 objects of classes 0..n_classes-1, detections jittered around them (some twice, some
    missed), false alarms of every class and of one more class that has no ground truth, and one image with
    130 detections of class 0 whose true positives score lowest (COCO keeps only the best 100)."""
    gts, dets = [], []
    for i in range(n_images):
        n = rng.integers(0, 6) if i else 4
        xy = rng.uniform(0, 80, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(4, 30, (n, 2))], 1)
        labels = rng.integers(0, n_classes, n)
        gts.append({"boxes": boxes, "labels": labels})
        pick = rng.integers(0, max(n, 1), 2 * n) if n else np.zeros(0, int)
        pick = pick[rng.random(len(pick)) < 0.8]
        wh = boxes[pick, 2:] - boxes[pick, :2]
        jit = boxes[pick] + rng.normal(0, 0.15, (len(pick), 4)) * np.tile(wh, 2)
        fxy = rng.uniform(0, 90, (4, 2))
        false = np.concatenate([fxy, fxy + rng.uniform(3, 25, (4, 2))], 1)
        dets.append(
            {
                "boxes": np.concatenate([jit, false]),
                "scores": rng.random(len(pick) + 4),
                "labels": np.concatenate([labels[pick], rng.integers(0, n_classes + 1, 4)]),
            }
        )
    crowd_xy = rng.uniform(0, 90, (130, 2))
    crowd = np.concatenate([crowd_xy, crowd_xy + rng.uniform(2, 20, (130, 2))], 1)
    crowd[-6:] = np.repeat(gts[0]["boxes"][:1], 6, 0) + rng.normal(0, 0.5, (6, 4))
    gts[0]["labels"][0] = 0
    dets[0] = {
        "boxes": np.concatenate([dets[0]["boxes"], crowd]),
        "scores": np.concatenate([dets[0]["scores"], rng.uniform(0.5, 1, 124), rng.uniform(0, 0.4, 6)]),
        "labels": np.concatenate([dets[0]["labels"], np.zeros(130, int)]),
    }
    return dets, gts


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_coco_ap_equals_pycocotools(det, seed):
    dets, gts = random_detection_set(np.random.default_rng(seed))
    stats = pycocotools_stats(dets, gts, n_classes=5)  # categories 3 (no ground truth) and 4 (nothing) too
    got = det.coco_map(dets, gts)
    assert got["AP"] == pytest.approx(stats[0], abs=1e-12)
    assert got["AP50"] == pytest.approx(stats[1], abs=1e-12)
    assert got["AP75"] == pytest.approx(stats[2], abs=1e-12)
    assert 0.05 < got["AP"] < 0.95  # a non-trivial case


# %% main


def test_main_smoke(det, tmp_path):
    m = det.main(["--smoke", "--out-dir", str(tmp_path)])
    assert m["hand_ap"]["voc07"] == pytest.approx(6 / 11) and m["hand_ap"]["voc"] == pytest.approx(5 / 9)
    assert m["sliding_windows"]["max_abs_diff"] <= 1e-10 and m["sliding_windows"]["windows"] == 100
    assert m["after_nms"]["voc_ap50"] > m["before_nms"]["voc_ap50"]  # duplicates are false positives
    assert m["nms_scene"]["boxes_after"] < m["nms_scene"]["boxes_before"]
    assert m["anchors"]["count"] == 8 * 8 * 9 and m["anchors"]["positive"] >= m["nms_scene"]["objects"] > 0
    assert m["iou_family_at_offset_0"]["iou"] == pytest.approx(0.4)
    assert json.loads((tmp_path / "metrics.json").read_text())["hand_ap"] == m["hand_ap"]
    for name in ("iou_and_ap", "nms", "anchors"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
