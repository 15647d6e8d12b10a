"""04-cnns/yolo_v1_torch.py: YOLO v1's network, loss, targets, decoding and evaluation.

The paper's network has Figure 3's 271,703,550 parameters (meta device); each term of equation (3) equals its
value worked by hand on a 2x2 grid (the responsible predictor chosen by IoU, the confidence target equal to
that IoU and detached, lambda_coord on the square roots, lambda_noobj on every other predictor, the class
loss only in object cells); targets land in the right cell with the right offsets, and decoding them gives
the boxes back; the flip moves boxes with the pixels; the script's IoU, NMS and mAP copies agree with brute
force, a hand-worked example and 04-cnns/detection_numpy.py; a smoke run beats its own untrained model;
Ctrl-C and --resume; bad flags and missing data.
"""

import json

import numpy as np
import pytest
import torch
from detection_checks import check_map_against_detection_numpy, random_boxes

from data import detection_scenes

PAPER_PARAMS = 271_703_550  # Figure 3: 24 convs with biases, FC 7*7*1024 -> 4096, FC 4096 -> 7*7*30


@pytest.fixture(scope="module")
def yolo(load_script):
    return load_script("04-cnns/yolo_v1_torch.py")


@pytest.fixture(scope="module")
def dn(load_script):
    return load_script("04-cnns/detection_numpy.py")


def test_paper_network_on_meta(yolo):
    """271,703,550 parameters; 24 convs with biases, leaky ReLU 0.1, 4 max-pools, a 7x7x1024 map at 448x448,
    dropout 0.5, output (N, 7, 7, 30)."""
    with torch.device("meta"):
        model = yolo.yolov1(S=7, B=2, C=20)
        assert sum(w.numel() for w in model.parameters()) == PAPER_PARAMS
        assert model.features(torch.empty(1, 3, 448, 448)).shape == (1, 1024, 7, 7)
        assert model(torch.empty(2, 3, 448, 448)).shape == (2, 7, 7, 30)
        assert yolo.yolov1(S=5, B=3, C=4)(torch.empty(1, 3, 448, 448)).shape == (1, 5, 5, 19)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 24 and all(c.bias is not None for c in convs)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 4
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert {m.negative_slope for m in model.modules() if isinstance(m, torch.nn.LeakyReLU)} == {0.1}
    assert model.dropout.p == 0.5 and model.fc1.out_features == 4096


def test_small_network_shapes(yolo):
    """The reduced network on 96x96 grayscale: (N, 6, 6, 2 * 5 + 10), finite, with either head; BatchNorm after
    each conv, which then has no bias (all but the linear output conv)."""
    torch.manual_seed(0)
    for head in ("conv", "fc"):
        model = yolo.yolov1_small(head=head).eval()
        with torch.no_grad():
            out = model(torch.rand(3, 1, 96, 96))
        assert out.shape == (3, 6, 6, 20) and torch.isfinite(out).all()
    model = yolo.yolov1_small()
    *convs, last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == len(convs) and all(c.bias is None for c in convs) and last.out_channels == 20


def rect_iou(a, b):
    """IoU of two corner boxes, written out for the hand-worked loss test."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def hand_case():
    """Two images on a 2x2 grid, B = 2, C = 3. Image 0: one object in cell (row 0, col 1), class 2, centre
    offsets (0.5, 0.25), w = 0.36, h = 0.16 (square roots 0.6, 0.4). Image 1: no object. Every other output is
    nonzero, so a term applied to the wrong cells or predictors changes its value."""
    S, B, C = 2, 2, 3
    target = torch.zeros(2, S, S, 5 + C, dtype=torch.float64)
    target[0, 0, 1, :5] = torch.tensor([0.5, 0.25, 0.36, 0.16, 1.0], dtype=torch.float64)
    target[0, 0, 1, 5 + 2] = 1.0
    g = torch.Generator().manual_seed(0)
    pred = 0.3 * torch.randn(2, S, S, B * 5 + C, generator=g, dtype=torch.float64)
    # predictor 0 of the object cell: far off (small IoU); predictor 1: close (large IoU)
    pred[0, 0, 1, 0:5] = torch.tensor([0.1, 0.9, 0.3, 0.3, 0.7], dtype=torch.float64)
    pred[0, 0, 1, 5:10] = torch.tensor([0.45, 0.3, 0.5, 0.5, 0.8], dtype=torch.float64)
    pred[0, 0, 1, 10:13] = torch.tensor([0.2, -0.1, 0.6], dtype=torch.float64)
    return pred, target, B


def test_each_loss_term_by_hand(yolo):
    """Equation (3) on hand_case: every term computed here by hand, divided by the 2 images."""
    pred, target, B = hand_case()
    loss, terms = yolo.yolo_loss(pred, target, B)
    # the truth in image units: centre ((1 + 0.5) / 2, (0 + 0.25) / 2) = (0.75, 0.125), w 0.36, h 0.16
    truth = (0.75 - 0.18, 0.125 - 0.08, 0.75 + 0.18, 0.125 + 0.08)

    def box(x, y, sw, sh):  # a predictor of cell (row 0, col 1): centre ((1 + x) / 2, y / 2), w = sw^2, h = sh^2
        cx, cy, w, h = (1 + x) / 2, y / 2, sw**2, sh**2
        return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)

    iou0, iou1 = rect_iou(box(0.1, 0.9, 0.3, 0.3), truth), rect_iou(box(0.45, 0.3, 0.5, 0.5), truth)
    assert iou0 == 0.0 and iou1 > 0.4  # so predictor 1 is responsible
    xy = 5 * ((0.45 - 0.5) ** 2 + (0.3 - 0.25) ** 2)
    wh = 5 * ((0.5 - 0.6) ** 2 + (0.5 - 0.4) ** 2)  # square roots: sqrt(0.36) = 0.6, sqrt(0.16) = 0.4
    conf_obj = (0.8 - iou1) ** 2  # target: the IoU of the responsible box
    others = [
        pred[n, i, j, 5 * b + 4].item()
        for n in range(2)
        for i in range(2)
        for j in range(2)
        for b in range(2)
        if (n, i, j, b) != (0, 0, 1, 1)
    ]  # 15 predictors: predictor 0 of the object cell and all of the rest
    conf_noobj = 0.5 * sum(c**2 for c in others)
    cls = (0.2 - 0) ** 2 + (-0.1 - 0) ** 2 + (0.6 - 1) ** 2  # the object cell only
    expected = {"xy": xy, "wh": wh, "conf_obj": conf_obj, "conf_noobj": conf_noobj, "cls": cls}
    for k, v in expected.items():
        assert terms[k].item() == pytest.approx(v / 2, rel=1e-12), k
    assert loss.item() == pytest.approx(sum(expected.values()) / 2, rel=1e-12)


def test_responsibility_follows_the_iou(yolo):
    """Swap the two predictors of the object cell: the other one is now responsible and the terms follow it."""
    pred, target, B = hand_case()
    swapped = pred.clone()
    swapped[0, 0, 1, 0:5], swapped[0, 0, 1, 5:10] = pred[0, 0, 1, 5:10], pred[0, 0, 1, 0:5]
    a, b = yolo.yolo_loss(pred, target, B)[1], yolo.yolo_loss(swapped, target, B)[1]
    for k in a:
        assert b[k].item() == pytest.approx(a[k].item(), rel=1e-12), k


def test_iou_target_is_detached(yolo):
    """The confidence target is a constant: conf_obj's gradient touches only the responsible confidence, never
    the box outputs that made the IoU."""
    pred, target, B = hand_case()
    pred.requires_grad_(True)
    _, terms = yolo.yolo_loss(pred, target, B)
    (g,) = torch.autograd.grad(terms["conf_obj"], pred)
    nonzero = torch.nonzero(g).tolist()
    assert nonzero == [[0, 0, 1, 9]]  # the confidence of predictor 1 in cell (0, 1), and nothing else


def test_build_targets_cells_and_offsets(yolo):
    """A box centred at (20, 32) of a 96-pixel canvas, S = 6 (cells of 16): column 1, row 2, offsets (0.25, 0);
    w, h relative to the image. A second centre in the same cell is dropped (the paper keeps one)."""
    boxes = [np.array([[10, 20, 30, 44], [80, 86, 96, 96], [12, 24, 28, 40]], np.float32), np.zeros((0, 4))]
    labels = [np.array([3, 7, 1]), np.zeros(0, np.int64)]
    T, dropped = yolo.build_targets(boxes, labels, 6, 96, 10)
    assert T.shape == (2, 6, 6, 15) and dropped == 1  # the third box: centre (20, 32) again
    assert T[0, 2, 1, :5].tolist() == pytest.approx([0.25, 0.0, 20 / 96, 24 / 96, 1.0])
    assert T[0, 2, 1, 5:].argmax().item() == 3 and T[0, 2, 1, 5:].sum().item() == 1
    # (88, 91) -> column 5, row 5, offsets (0.5, 0.6875)
    assert T[0, 5, 5, :5].tolist() == pytest.approx([0.5, 0.6875, 16 / 96, 10 / 96, 1.0])
    assert T[0, ..., 4].sum().item() == 2 and T[1].abs().sum().item() == 0


def targets_as_prediction(T, B):
    """A prediction that says exactly the targets: predictor 0 = (x, y, sqrt w, sqrt h, 1 in object cells),
    the other predictors confidence 0, the one-hot class."""
    N, S = T.shape[:2]
    pred = torch.zeros(N, S, S, B * 5 + T.shape[-1] - 5)
    pred[..., 0:2], pred[..., 2:4], pred[..., 4] = T[..., 0:2], T[..., 2:4].sqrt(), T[..., 4]
    pred[..., B * 5 :] = T[..., 5:]
    return pred


def test_targets_decode_back_to_the_boxes(yolo):
    """Real scenes -> build_targets -> decode and detect: the same boxes (to float precision) and labels, in
    every scene whose objects sit in distinct cells."""
    _, boxes, labels = detection_scenes("train", 60, 96, 4, seed=3)
    T, dropped = yolo.build_targets(boxes, labels, 6, 96, 10)
    dets = yolo.detect(targets_as_prediction(T, 2), 2, 96, 0.5, 0.5)
    checked = 0
    for (pb, ps, pl), tb, tl in zip(dets, boxes, labels):
        if len(pb) != len(tb):
            continue  # a collision
        a, b = np.lexsort(pb.T[::-1]), np.lexsort(tb.T[::-1])
        np.testing.assert_allclose(pb[a], tb[b], atol=1e-4)
        assert (pl[a] == tl[b]).all() and np.allclose(ps, 1.0)
        checked += 1
    assert checked >= 60 - dropped and checked >= 50


def test_flip_moves_boxes_with_pixels(yolo):
    """After hflip, each box is again the tight box of its item's nonzero pixels (single-object scenes)."""
    X, boxes, _ = detection_scenes("train", 20, 96, 1, seed=1, single=True)
    flip = np.arange(20) % 2 == 0
    Xf, bf = yolo.hflip(torch.from_numpy(X).unsqueeze(1), boxes, flip)
    for img, b, f, b0 in zip(Xf[:, 0].numpy(), bf, flip, boxes):
        ys, xs = np.nonzero(img > 0)
        assert b[0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert f or b[0].tolist() == b0[0].tolist()


def test_box_iou_against_brute_force_and_detection_numpy(yolo, dn):
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 30), random_boxes(rng, 20)
    b[:3] = a[:3]  # identical boxes
    b[3] = [a[4, 0] + 1, a[4, 1] + 1, a[4, 2] - 1, a[4, 3] - 1]  # nested
    iou = yolo.box_iou(a, b)
    for i in range(30):
        for j in range(20):
            inter = max(0, min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0])) * max(
                0, min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]))  # fmt: skip
            union = (a[i, 2] - a[i, 0]) * (a[i, 3] - a[i, 1]) + (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1]) - inter
            assert iou[i, j] == pytest.approx(inter / union if union > 0 else 0.0, abs=1e-12)
    np.testing.assert_allclose(iou, dn.box_iou(a, b), atol=1e-12)
    paired = yolo.paired_iou(torch.from_numpy(a[:20]), torch.from_numpy(b))  # (20,): box i with box i
    np.testing.assert_allclose(paired.numpy(), np.diag(iou[:20]), atol=1e-12)


def brute_nms(boxes, scores, thr):
    """NMS by its definition: walk the boxes by descending score, keep one unless a kept box overlaps it > thr."""
    keep = []
    for i in sorted(range(len(scores)), key=lambda k: (-scores[k], k)):
        if all(yolo_iou(boxes[i], boxes[k]) <= thr for k in keep):
            keep.append(i)
    return keep


def yolo_iou(a, b):
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_nms_against_brute_force_and_detection_numpy(yolo, dn):
    rng = np.random.default_rng(1)
    for _ in range(20):
        boxes = random_boxes(rng, 25, size=30)
        scores = rng.integers(0, 8, 25).astype(float)  # ties included
        for thr in (0.0, 0.3, 0.5):
            keep = yolo.nms(boxes, scores, thr)
            assert keep.tolist() == brute_nms(boxes, scores, thr) == dn.nms(boxes, scores, thr).tolist()
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10.0]])  # IoU exactly 1/3: kept at 1/3, suppressed below
    assert yolo.nms(boxes, np.array([2.0, 1.0]), 1 / 3).tolist() == [0, 1]
    assert yolo.nms(boxes, np.array([2.0, 1.0]), 0.33).tolist() == [0]


def test_detect_is_per_class_nms(yolo):
    """Two predictors of one cell with the same box: one detection per class, the better one kept."""
    pred = torch.zeros(1, 1, 1, 2 * 5 + 2)
    pred[0, 0, 0, 0:5] = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.9])
    pred[0, 0, 0, 5:10] = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.6])
    pred[0, 0, 0, 10:] = torch.tensor([0.5, 0.4])  # scores: 0.45, 0.36 (box 0), 0.30, 0.24 (box 1)
    boxes, scores, labels = yolo.detect(pred, 2, 96, 0.2, 0.5)[0]
    assert sorted(zip(labels.tolist(), scores.tolist())) == [(0, pytest.approx(0.45)), (1, pytest.approx(0.36))]
    np.testing.assert_allclose(boxes, [[36, 36, 60, 60]] * 2, atol=1e-5)  # centre 48, w = 0.25 * 96


def test_map_on_a_hand_worked_example(yolo):
    """3 truths, detections ranked TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3; all-point AP =
    1/3 * 1 + 1/3 * 2/3 = 5/9; COCO's 101 points: recall 0..0.33 (34 points) at 1, 0.34..0.66 (33) at 2/3."""
    truths = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50.0]]), np.zeros(3, np.int64))]
    det_boxes = np.array([[0, 0, 10, 10], [60, 60, 70, 70], [20, 20, 30, 30.0]])
    dets = [(det_boxes, np.array([0.9, 0.8, 0.7]), np.zeros(3, np.int64))]
    m, aps = yolo.mean_ap(dets, truths, 2)
    assert m == pytest.approx(5 / 9) and np.isnan(aps[1])  # class 1 has no truth: left out of the mean
    assert yolo.mean_ap(dets, truths, 2, points=101)[0] == pytest.approx((34 + 33 * 2 / 3) / 101)
    twice = [(np.array([[0, 0, 10, 10], [0, 0, 10, 10.0]]), np.array([0.9, 0.8]), np.zeros(2, np.int64))]
    assert yolo.mean_ap(twice, truths, 1)[0] == pytest.approx(1 / 3)  # a second hit on one truth is a FP
    half = [(np.array([[0, 0, 10, 5.0]]), np.array([0.9]), np.zeros(1, np.int64))]  # IoU exactly 0.5: a hit
    assert yolo.mean_ap(half, truths, 1)[0] == pytest.approx(1 / 3)


def test_map_against_detection_numpy(yolo, dn):
    """Random detection sets: VOC mAP@0.5 and COCO mAP@[.5:.95] equal 04-cnns/detection_numpy.py's."""
    check_map_against_detection_numpy(yolo, dn)


@pytest.fixture(scope="module")
def smoke(yolo, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    return out, yolo.main(["--smoke", "--out-dir", str(out)])


def test_smoke_run_learns(smoke):
    """The smoke run: the loss falls, test mAP@0.5 clears both a floor and 5 times its own untrained model's;
    metrics.json and both figures are written."""
    out, m = smoke
    assert m["final_train_loss"] < 0.7 * m["first_loss"]
    assert m["test_map50"] > 0.02 and m["test_map50"] > 5 * m["init_val_map50"]
    assert 0 <= m["test_coco_map"] < m["test_map50"] and m["paper_params"] == PAPER_PARAMS
    assert m["inference_images_per_s"] > 0 and len(m["history"]["val_map50"]) == 2
    assert json.loads((out / "metrics.json").read_text())["test_map50"] == m["test_map50"]
    for name in ("detections.png", "learning_curves.png"):
        assert (out / name).stat().st_size > 10_000


def test_ctrl_c_then_resume_equals_uninterrupted(yolo, tmp_path, monkeypatch, capsys):
    """A tiny run: Ctrl-C in epoch 2 exits 130 naming epoch 1's checkpoint and the --resume command; --resume then
    gives the uninterrupted run's losses and mAPs; a changed setting is refused."""
    tiny = ["--smoke", "--n-train", "48", "--n-val", "16", "--n-test", "16"]
    m = yolo.main([*tiny, "--out-dir", str(tmp_path / "whole")])
    real, calls = yolo.build_targets, []

    def ctrl_c_in_epoch_2(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(yolo, "build_targets", ctrl_c_in_epoch_2)
    argv = [*tiny, "--out-dir", str(tmp_path / "cut")]
    with pytest.raises(SystemExit) as exc:
        yolo.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 130 and "holds epoch 1" in err and err.rstrip().endswith("--resume")
    monkeypatch.setattr(yolo, "build_targets", real)
    resumed = yolo.main([*argv, "--resume"])
    for k in ("loss", "xy", "wh", "conf_obj", "conf_noobj", "cls", "val_map50", "val_coco", "lr", "init_val_map50"):
        assert resumed["history"][k] == m["history"][k], k
    assert resumed["test_map50"] == m["test_map50"]
    with pytest.raises(SystemExit) as exc:
        yolo.main([*argv, "--resume", "--lr", "0.5"])
    assert exc.value.code == 2 and "--lr 0.002 -> 0.5" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--epochs", "0"], "--epochs"),
        (["--n-train", "0"], "--n-train"),
        (["--lr", "nan"], "--lr"),
        (["--conf-threshold", "1"], "--conf-threshold"),
        (["--nms-threshold", "-0.1"], "--nms-threshold"),
        (["--epochs", "2", "--warmup-epochs", "3"], "--warmup-epochs"),
        (["--resume"], "--resume"),
    ],
)
def test_bad_flags(yolo, usage_error, argv, flag):
    assert flag in usage_error(yolo, argv)


def test_missing_data_is_one_line(yolo, missing_data_error):
    assert "fashion" in missing_data_error(yolo.main).lower()


def test_small_object_map_ignores_large_truths_and_detections(yolo):
    """max_area: a large truth is not counted and the detection on it is dropped (not a false positive); an
    unmatched large detection is dropped; an unmatched small one is a false positive."""
    truths = [(np.array([[0, 0, 10, 10], [20, 20, 50, 50.0]]), np.zeros(2, np.int64))]  # areas 100 and 900
    ranked = np.array([[20, 20, 50, 50], [60, 60, 70, 70], [0, 0, 10, 10.0]])  # on the large one, stray, small
    dets = [(ranked, np.array([0.9, 0.8, 0.7]), np.zeros(3, np.int64))]
    assert yolo.mean_ap(dets, truths, 1)[0] == pytest.approx(1 / 2 + 1 / 2 * 2 / 3)  # TP, FP, TP
    assert yolo.mean_ap(dets, truths, 1, max_area=256)[0] == pytest.approx(1 / 2)  # (dropped), FP, TP
    stray_large = [(np.array([[60, 60, 90, 90], [0, 0, 10, 10.0]]), np.array([0.9, 0.8]), np.zeros(2, np.int64))]
    assert yolo.mean_ap(stray_large, truths, 1, max_area=256)[0] == pytest.approx(1.0)
    stray_small = [(np.array([[60, 60, 70, 70], [0, 0, 10, 10.0]]), np.array([0.9, 0.8]), np.zeros(2, np.int64))]
    assert yolo.mean_ap(stray_small, truths, 1, max_area=256)[0] == pytest.approx(0.5)  # FP first, then TP


def test_small_object_map_against_pycocotools(yolo):
    """Random detection sets with boxes of 3 to 30 px sides: AP@0.5 on truths under 256 px^2 (101 points, COCO's
    area-range rule) equals pycocotools' COCOeval with that area range."""
    from coco_reference import pycocotools_ap

    rng = np.random.default_rng(4)
    for _ in range(4):
        truths, dets = [], []
        for _ in range(8):
            k = rng.integers(0, 6)
            xy = rng.uniform(0, 60, (k, 2))
            tb, tl = np.concatenate([xy, xy + rng.uniform(3, 30, (k, 2))], 1), rng.integers(0, 3, k)
            jitter = np.repeat(tb, 2, 0) + rng.normal(0, 1.5, (2 * k, 4))
            jitter[:, 2:] = np.maximum(jitter[:, 2:], jitter[:, :2] + 1)  # no inverted box
            fxy = rng.uniform(0, 60, (3, 2))
            db = np.concatenate([jitter, np.concatenate([fxy, fxy + rng.uniform(3, 30, (3, 2))], 1)])
            dl = np.concatenate([np.repeat(tl, 2), rng.integers(0, 3, 3)])
            truths.append((tb, tl)), dets.append((db, rng.random(len(db)), dl))
        ours = yolo.mean_ap(dets, truths, 3, points=101, max_area=256)[0]
        assert ours == pytest.approx(pycocotools_ap(dets, truths, 3, area_range=(0, 256)), abs=1e-12)
        assert yolo.mean_ap(dets, truths, 3, points=101)[0] == pytest.approx(pycocotools_ap(dets, truths, 3))


def test_comparison_figure_counts_found_truths_by_hand(load_script):
    """benchmarks/yolo_comparison.py's count: a detection finds the unfound truth of its class with IoU >= 0.5;
    a wrong class, a duplicate and a loose box find nothing."""
    found = load_script("benchmarks/yolo_comparison.py").found
    truth = (np.array([[0, 0, 10, 10], [20, 20, 30, 30.0]]), np.array([0, 1]))
    det = (np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [20, 20, 40, 40.0]]),
           np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 0, 0, 1]))  # fmt: skip
    assert found(det, truth) == 1  # the duplicate, the wrong class and the IoU-0.25 box find nothing
    det[2][2] = 1
    assert found(det, truth) == 2


def test_comparison_figure_from_the_smoke_run(load_script, smoke, tmp_path):
    """The figure script loads the smoke run through model_from_config and detect_images, regenerates its test
    scenes and writes the figure; a run trained on other scenes is refused."""
    cmp = load_script("benchmarks/yolo_comparison.py")
    out, _ = smoke
    counts = cmp.main(["--runs", str(out), str(out), "--n-images", "2", "--out", str(tmp_path / "c.png")])
    assert len(counts) == 2 and counts[0] == counts[1] and (tmp_path / "c.png").stat().st_size > 10_000
    other = tmp_path / "other"
    other.mkdir()
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    ckpt["config"]["max_objects"] += 1
    torch.save(ckpt, other / "checkpoint.pt")
    (other / "metrics.json").write_text((out / "metrics.json").read_text())
    with pytest.raises(SystemExit):
        cmp.main(["--runs", str(out), str(other), "--out", str(tmp_path / "d.png")])
    assert not (tmp_path / "d.png").exists()
