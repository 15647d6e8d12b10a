"""04-cnns/yolo_v3_torch.py: Darknet-53, YOLO v3's three-scale detector, k-means anchors, targets, loss, mAP.

The paper's networks have their reference parameter counts (meta device) and shapes at every scale; k-means
with 1 - IoU finds planted anchor shapes, follows IoU rather than Euclidean distance, and is deterministic;
each truth goes to exactly one anchor, the best by centred IoU, at that anchor's scale, and decoding the
targets gives the boxes back; each loss term (with the ignore rule) equals its value worked by hand; the
small-object mAP's area rule on a hand-made case; IoU, NMS and mAP copies against brute force and
04-cnns/detection_numpy.py; a smoke run beats its untrained model; Ctrl-C and --resume; bad flags, missing data.
"""

import json
import math

import numpy as np
import pytest
import torch
from detection_checks import check_map_against_detection_numpy, random_boxes

from data import detection_scenes

DARKNET53_PARAMS = 41_609_928  # Table 1 of the paper, ImageNet classifier (1000 classes), BatchNorm included
YOLOV3_PARAMS = 61_949_149  # the 80-class COCO detector (yolov3.cfg)


@pytest.fixture(scope="module")
def yolo(load_script):
    return load_script("04-cnns/yolo_v3_torch.py")


@pytest.fixture(scope="module")
def dn(load_script):
    return load_script("04-cnns/detection_numpy.py")


def test_paper_networks_on_meta(yolo):
    """Darknet-53: 52 convs + the classifier, 41,609,928 parameters; YOLO v3 at 416: grids 52, 26, 13 with
    3 x 85 = 255 outputs per cell for 80 classes, 61,949,149 parameters; BatchNorm and leaky ReLU 0.1."""
    with torch.device("meta"):
        net = yolo.darknet53()
        assert sum(w.numel() for w in net.parameters()) == DARKNET53_PARAMS
        assert net(torch.empty(2, 3, 256, 256)).shape == (2, 1000)
        det = yolo.yolov3(80)
        assert sum(w.numel() for w in det.parameters()) == YOLOV3_PARAMS
        outs = det(torch.empty(1, 3, 416, 416))
    assert [tuple(o.shape) for o in outs] == [(1, 3, g, g, 85) for g in (52, 26, 13)]
    assert det.head3[1].out_channels == 255 and det.head5[1].bias is not None
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 52 and all(c.bias is None for c in convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 52
    assert {m.negative_slope for m in det.modules() if isinstance(m, torch.nn.LeakyReLU)} == {0.1}
    assert len(net.stages) == 5 and [len(s) - 1 for s in net.stages] == [1, 2, 8, 8, 4]


def test_reduced_network_at_several_sizes(yolo):
    """The reduced default on grayscale: grids size / 8, / 16, / 32 with 3 x (5 + 10) outputs, finite; the
    targets of each size have one row per output position; objectness starts at the 0.01 prior."""
    torch.manual_seed(0)
    model = yolo.model_from_config({"width": 0.25, "depth": [1, 1, 2, 2, 1]}).eval()
    assert 300_000 < sum(w.numel() for w in model.parameters()) < 2_500_000
    for size in (32, 64, 96, 128, 160):
        with torch.no_grad():
            outs = model(torch.rand(2, 1, size, size))
        assert [tuple(o.shape) for o in outs] == [(2, 3, size // s, size // s, 15) for s in (8, 16, 32)]
        assert all(torch.isfinite(o).all() for o in outs)
        T, _ = yolo.build_targets([np.zeros((0, 4))] * 2, [np.zeros(0, np.int64)] * 2, np.ones((9, 2)), size, 10)
        assert T.shape == (2, yolo.flatten(outs).shape[1], 15)
    p = yolo.flatten(outs)
    assert torch.sigmoid(p[..., 4]).mean().item() == pytest.approx(0.01, abs=0.005)


def test_shape_iou_is_iou_of_centred_boxes(yolo):
    rng = np.random.default_rng(0)
    a, b = rng.uniform(1, 30, (20, 2)), rng.uniform(1, 30, (9, 2))
    iou = yolo.shape_iou(a, b)
    for i in range(20):
        for j in range(9):
            ra = [-a[i, 0] / 2, -a[i, 1] / 2, a[i, 0] / 2, a[i, 1] / 2]
            rb = [-b[j, 0] / 2, -b[j, 1] / 2, b[j, 0] / 2, b[j, 1] / 2]
            assert iou[i, j] == pytest.approx(yolo_iou(ra, rb), rel=1e-12)


def test_kmeans_recovers_planted_shapes_and_is_deterministic(yolo):
    """Boxes drawn around 9 known shapes (+-4% jitter, shuffled): the centroids come back, sorted by area;
    the same seed gives the same anchors."""
    true = np.array([[4, 6], [8, 5], [7, 12], [14, 9], [12, 20], [24, 14], [20, 34], [40, 24], [45, 60.0]])
    rng = np.random.default_rng(1)
    wh = np.repeat(true, 40, 0) * rng.uniform(0.96, 1.04, (360, 2))
    wh = wh[rng.permutation(360)]
    for seed in range(3):
        got = yolo.kmeans_anchors(wh, 9, seed)
        np.testing.assert_allclose(got, true, rtol=0.02)
        assert (np.diff(got.prod(1)) > 0).all()
    np.testing.assert_array_equal(yolo.kmeans_anchors(wh, 9, 5), yolo.kmeans_anchors(wh, 9, 5))


def test_kmeans_distance_is_one_minus_iou(yolo):
    """Ten 10x10 boxes, ten 40x40 and one 22x22: it is nearer the 40x40 by 1 - IoU (1 - 484/1600 = 0.70 vs
    1 - 100/484 = 0.79) but nearer the 10x10 by Euclidean distance. With 1 - IoU it joins the big cluster."""
    wh = np.array([[10, 10.0]] * 10 + [[40, 40.0]] * 10 + [[22, 22.0]])
    for seed in range(4):
        np.testing.assert_allclose(yolo.kmeans_anchors(wh, 2, seed), [[10, 10], [(400 + 22) / 11] * 2])


ANCHORS = np.array([[4, 4], [6, 10], [10, 6], [12, 12], [14, 24], [24, 14], [28, 28], [40, 60], [60, 40.0]])


def test_build_targets_by_hand(yolo):
    """size 96, grids 12, 6, 3. A 14 x 24 box centred at (40, 20) fits anchor 4 (scale 1, stride 16) best:
    cell column 2, row 1, offsets (0.5, 0.25), log sizes 0; a 5 x 5 box at (90, 90) goes to anchor 0 of
    stride 8, cell (11, 11), offsets (0.25, 0.25). A second truth on the same anchor of the same cell is dropped."""
    boxes = [np.array([[33, 8, 47, 32], [87.5, 87.5, 92.5, 92.5], [34, 9, 46, 31]]), np.zeros((0, 4))]
    labels = [np.array([3, 7, 1]), np.zeros(0, np.int64)]
    T, dropped = yolo.build_targets(boxes, labels, ANCHORS, 96, 10)
    assert T.shape == (2, 3 * (144 + 36 + 9), 15) and dropped == 1
    i = 3 * 144 + (1 * 6 + 1) * 6 + 2  # after scale 0: anchor 1 of the scale, row 1, column 2
    assert T[0, i, :5].tolist() == pytest.approx([0.5, 0.25, 0.0, 0.0, 1.0])
    assert T[0, i, 5:].argmax().item() == 3 and T[0, i, 5:].sum().item() == 1
    j = (0 * 12 + 11) * 12 + 11
    assert T[0, j, :5].tolist() == pytest.approx([0.25, 0.25, math.log(5 / 4), math.log(5 / 4), 1.0])
    assert T[0, :, 4].sum().item() == 2 and T[1].abs().sum().item() == 0


def test_each_truth_goes_to_its_best_anchor_and_decodes_back(yolo):
    """Real crowded scenes and their k-means anchors: every truth owns exactly one target row, at the scale and
    anchor of highest centred IoU (brute force), in the cell holding its centre; turning the targets back into
    logits and detecting gives the truths (boxes and labels) in every scene without a collision."""
    _, boxes, labels = detection_scenes("train", 40, 96, 8, seed=4, min_objects=3, scale=(0.35, 1.2))
    anchors = yolo.kmeans_anchors(np.concatenate([b[:, 2:] - b[:, :2] for b in boxes]), 9, 0)
    sizes = [(s, 96 // s) for s in (8, 16, 32)]
    starts = np.cumsum([0] + [3 * g * g for _, g in sizes])
    checked, n_dropped = 0, 0
    for bx, lb in zip(boxes, labels):
        T, dropped = yolo.build_targets([bx], [lb], anchors, 96, 10)
        n_dropped += dropped
        assert T[0, :, 4].sum().item() == len(bx) - dropped
        for (x1, y1, x2, y2), c in zip(bx, lb):
            ious = [yolo_iou([0, 0, x2 - x1, y2 - y1], [0, 0, w, h]) for w, h in anchors]
            a = int(np.argmax(ious))
            stride, G = sizes[a // 3]
            col, row = int((x1 + x2) / 2 // stride), int((y1 + y2) / 2 // stride)
            i = starts[a // 3] + ((a % 3) * G + row) * G + col
            assert T[0, i, 4] == 1 and (dropped or T[0, i, 5 + c] == 1)
        if dropped:
            continue
        p = torch.full((1, T.shape[1], 15), -30.0)  # every other objectness and class: sigmoid ~ 0
        p[..., 0:2] = torch.logit(T[..., 0:2].clamp(1e-6, 1 - 1e-6))
        p[..., 2:4] = T[..., 2:4]
        p[..., 4] = torch.where(T[..., 4] == 1, 30.0, -30.0)
        p[..., 5:] = torch.where(T[..., 5:] == 1, 30.0, -30.0)
        outs = [p[:, starts[k] : starts[k + 1]].reshape(1, 3, G, G, 15) for k, (_, G) in enumerate(sizes)]
        ((pb, ps, pl),) = yolo.detect(outs, anchors, 96, 0.5, 0.5)
        a, b = np.lexsort(pb.T[::-1]), np.lexsort(bx.T[::-1])
        np.testing.assert_allclose(pb[a], bx[b], atol=1e-3)
        assert (pl[a] == lb[b]).all() and np.allclose(ps, 1.0)
        checked += 1
    assert checked >= 35 and n_dropped <= 5


def hand_case(yolo, offset):
    """size 32 (grids 4, 2, 1), one image, one 6 x 10 truth centred at (12, 12): anchor 1 of stride 8, cell
    (1, 1), offsets (0.5, 0.5). A non-best anchor, anchor 2 of the same cell (10 x 6), is made to predict the
    truth's box moved right by `offset` pixels; every other output is random and nonzero."""
    torch.manual_seed(0)
    outs = [0.5 * torch.randn(1, 3, g, g, 8, dtype=torch.float64) for g in (4, 2, 1)]  # C = 3
    outs[0][0, 1, 1, 1, :] = torch.tensor([0.3, -0.2, 0.1, -0.4, 0.7, 0.2, -0.1, 0.6], dtype=torch.float64)
    # anchor 2 (10 x 6) predicting a 6 x 10 box at (12 + offset, 12): sigmoid t_x = 0.5 + offset / 8
    tx = math.log((0.5 + offset / 8) / (0.5 - offset / 8))
    outs[0][0, 2, 1, 1, :4] = torch.tensor([tx, 0.0, math.log(0.6), math.log(10 / 6)], dtype=torch.float64)
    boxes, labels = [np.array([[9, 7, 15, 17.0]])], [np.array([2])]
    T, _ = yolo.build_targets(boxes, labels, ANCHORS, 32, 3)
    return outs, T.double(), yolo.pad_truths(boxes, "cpu").double()


def softplus(x):
    return math.log1p(math.exp(x))  # BCE(o, 0) = log(1 + e^o); BCE(o, 1) = softplus(-o)


@pytest.mark.parametrize("offset", [1.0, 2.5])
def test_each_loss_term_by_hand_and_the_ignore_rule(yolo, offset):
    """offset 1: the non-best anchor's box has IoU 5/7 > 0.5 with the truth, so it is ignored (no objectness
    loss); offset 2.5: IoU 3.5/8.5 < 0.5, and its BCE(o, 0) counts. Every term by hand."""
    outs, T, truths = hand_case(yolo, offset)
    loss, terms = yolo.yolo_loss(outs, T, truths, ANCHORS, 32)
    t = outs[0][0, 1, 1, 1].tolist()
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    xy = (sig(t[0]) - 0.5) ** 2 + (sig(t[1]) - 0.5) ** 2
    wh = (t[2] - 0) ** 2 + (t[3] - 0) ** 2  # the truth's shape is anchor 1's: log(6 / 6) = log(10 / 10) = 0
    cls = softplus(-t[5 + 2]) + softplus(t[5]) + softplus(t[6])  # target class 2
    iou_other = (6 - offset) * 10 / (2 * 60 - (6 - offset) * 10)
    assert (iou_other > 0.5) == (offset == 1.0)
    noobj = 0.0
    for s, o in enumerate(outs):
        for a in range(3):
            for r in range(o.shape[2]):
                for c in range(o.shape[3]):
                    if (s, a, r, c) == (0, 1, 1, 1) or ((s, a, r, c) == (0, 2, 1, 1) and iou_other > 0.5):
                        continue
                    noobj += softplus(o[0, a, r, c, 4].item())
    expected = {"xy": xy, "wh": wh, "obj": softplus(-t[4]), "noobj": noobj, "cls": cls}
    for k, v in expected.items():
        assert terms[k].item() == pytest.approx(v, rel=1e-10), k
    assert loss.item() == pytest.approx(sum(expected.values()), rel=1e-10)


def test_resize_scales_boxes(yolo):
    X = torch.rand(2, 1, 96, 96)
    boxes = [np.array([[10, 20, 30, 40.0]]), np.zeros((0, 4))]
    Xr, br = yolo.resize(X, boxes, 128)
    assert Xr.shape == (2, 1, 128, 128) and br[0][0].tolist() == pytest.approx([40 / 3, 80 / 3, 40, 160 / 3])
    assert yolo.resize(X, boxes, 96)[0] is X


def test_small_object_map_rule(yolo):
    """Small: area < 256. Truths: a 12 x 12 (small), a 16 x 16 (area 256: not small, ignored), a 20 x 20 far
    away (ignored). Detections: 0.97 an unmatched 16 x 16 and 0.95 an unmatched 20 x 20 (out of range:
    dropped); 0.9 on the 20 x 20 truth
    (matched to an ignored truth: dropped); 0.85 an unmatched 8 x 8 (in range: a false positive); 0.8 a 14 x 14
    box overlapping the 16 x 16 truth best (IoU 0.766) and the 12 x 12 one enough (0.735): the in-range truth
    is preferred, a true positive. Ranked FP, TP: precision 0, 1/2 at recall 0, 1: AP 1/2."""
    truths = [(np.array([[0, 0, 12, 12], [0, 0, 16, 16], [50, 50, 70, 70.0]]), np.zeros(3, np.int64))]
    db = np.array([[70, 30, 86, 46], [70, 0, 90, 20], [51, 51, 71, 71], [30, 30, 38, 38], [0, 0, 14, 14.0]])
    dets = [(db, np.array([0.97, 0.95, 0.9, 0.85, 0.8]), np.zeros(5, np.int64))]
    assert yolo.mean_ap(dets, truths, 1, max_area=yolo.SMALL_AREA)[0] == pytest.approx(0.5)
    assert yolo.SMALL_AREA == 256
    # all areas: FP, FP, TP, FP, TP on 3 truths: precision 1/3 at recall 1/3, 2/5 at 2/3: AP = 2/3 * 2/5
    assert yolo.mean_ap(dets, truths, 1)[0] == pytest.approx(4 / 15)


def yolo_iou(a, b):
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_box_iou_against_brute_force_and_detection_numpy(yolo, dn):
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 30), random_boxes(rng, 20)
    b[:3] = a[:3]  # identical boxes
    iou = yolo.box_iou(a, b)
    for i in range(30):
        for j in range(20):
            assert iou[i, j] == pytest.approx(yolo_iou(a[i], b[j]), abs=1e-12)
    np.testing.assert_allclose(iou, dn.box_iou(a, b), atol=1e-12)
    batched = yolo.pairwise_iou(torch.from_numpy(a)[None], torch.from_numpy(b)[None])[0]  # (30, 20)
    np.testing.assert_allclose(batched.numpy(), iou, atol=1e-12)


def brute_nms(boxes, scores, thr):
    """NMS by its definition: walk the boxes by descending score, keep one unless a kept box overlaps it > thr."""
    keep = []
    for i in sorted(range(len(scores)), key=lambda k: (-scores[k], k)):
        if all(yolo_iou(boxes[i], boxes[k]) <= thr for k in keep):
            keep.append(i)
    return keep


def test_nms_against_brute_force_and_detection_numpy(yolo, dn):
    rng = np.random.default_rng(1)
    for _ in range(20):
        boxes = random_boxes(rng, 25, size=30)
        scores = rng.integers(0, 8, 25).astype(float)  # ties included
        for thr in (0.0, 0.3, 0.5):
            keep = yolo.nms(boxes, scores, thr)
            assert keep.tolist() == brute_nms(boxes, scores, thr) == dn.nms(boxes, scores, thr).tolist()


def test_map_on_a_hand_worked_example(yolo):
    """3 truths, detections ranked TP, FP, TP: all-point AP = 1/3 * 1 + 1/3 * 2/3 = 5/9; COCO's 101 points:
    recall 0..0.33 (34 points) at 1, 0.34..0.66 (33) at 2/3."""
    truths = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50.0]]), np.zeros(3, np.int64))]
    dets = [(np.array([[0, 0, 10, 10], [60, 60, 70, 70], [20, 20, 30, 30.0]]), np.array([0.9, 0.8, 0.7]),
             np.zeros(3, np.int64))]  # fmt: skip
    m, aps = yolo.mean_ap(dets, truths, 2)
    assert m == pytest.approx(5 / 9) and np.isnan(aps[1])
    assert yolo.mean_ap(dets, truths, 2, points=101)[0] == pytest.approx((34 + 33 * 2 / 3) / 101)


def test_map_against_detection_numpy(yolo, dn):
    """Random detection sets: VOC mAP@0.5 and COCO mAP@[.5:.95] equal 04-cnns/detection_numpy.py's."""
    check_map_against_detection_numpy(yolo, dn)


@pytest.fixture(scope="module")
def smoke(yolo, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    return out, yolo.main(["--smoke", "--out-dir", str(out)])


def test_smoke_run_learns(yolo, smoke):
    """The smoke run: the loss falls, test mAP@0.5 clears a floor and 3 times its untrained model's; the headline
    keys come first; anchors (9, sorted by area) are in the metrics and the checkpoint, which loads into
    model_from_config and detects on test-like images."""
    out, m = smoke
    assert list(m)[:8] == ["script", "test_map50", "test_coco_map", "test_small_map50", "inference_images_per_s",
                           "train_minutes", "params", "val_map50"]  # fmt: skip
    assert m["final_train_loss"] < 0.8 * m["first_loss"]
    assert m["test_map50"] > 0.006 and m["test_map50"] > 3 * m["init_val_map50"]
    assert 0 <= m["test_coco_map"] < m["test_map50"] and m["test_small_map50"] > 0
    assert m["paper_params"] == {"darknet53": DARKNET53_PARAMS, "yolov3": YOLOV3_PARAMS}
    anchors = np.array(m["anchors"])
    assert anchors.shape == (9, 2) and (np.diff(anchors.prod(1)) > 0).all()
    assert json.loads((out / "metrics.json").read_text())["test_map50"] == m["test_map50"]
    for name in ("detections.png", "learning_curves.png"):
        assert (out / name).stat().st_size > 10_000
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    model = yolo.model_from_config(ckpt["config"])
    model.load_state_dict(ckpt["model"])
    np.testing.assert_allclose(model.anchors.numpy(), anchors, atol=1e-3)
    model.train()
    dets = yolo.detect_images(model, torch.rand(3, 1, 96, 96), "cpu", 0.2, 0.5)
    assert len(dets) == 3 and model.training


def test_ctrl_c_then_resume_equals_uninterrupted(yolo, tmp_path, monkeypatch, capsys):
    """A tiny run (3 steps per epoch): Ctrl-C in epoch 2 exits 130 naming epoch 1's checkpoint and the --resume
    command; --resume then gives the uninterrupted run's history; a changed setting is refused."""
    tiny = ["--smoke", "--n-train", "48", "--n-val", "16", "--n-test", "16"]
    m = yolo.main([*tiny, "--out-dir", str(tmp_path / "whole")])
    real, calls = yolo.build_targets, []

    def ctrl_c_in_epoch_2(*a, **k):
        calls.append(1)
        if len(calls) == 5:  # the second step of epoch 2
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
    for k in ("loss", "xy", "wh", "obj", "noobj", "cls", "val_map50", "val_coco", "lr", "init_val_map50"):
        assert resumed["history"][k] == m["history"][k], k
    assert resumed["test_map50"] == m["test_map50"] and resumed["anchors"] == m["anchors"]
    with pytest.raises(SystemExit) as exc:
        yolo.main([*argv, "--resume", "--sizes", "96"])
    assert exc.value.code == 2 and "--sizes [64, 96, 128] -> [96]" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--epochs", "0"], "--epochs"),
        (["--width", "0"], "--width"),
        (["--depth", "1", "2"], "--depth"),
        (["--sizes", "96", "100"], "--sizes"),
        (["--min-objects", "9"], "--min-objects"),
        (["--scale", "1.2", "0.5"], "--scale"),
        (["--lr", "nan"], "--lr"),
        (["--conf-threshold", "1"], "--conf-threshold"),
        (["--epochs", "2", "--warmup-epochs", "3"], "--warmup-epochs"),
        (["--resume"], "--resume"),
    ],
)
def test_bad_flags(yolo, usage_error, argv, flag):
    assert flag in usage_error(yolo, argv)


def test_missing_data_is_one_line(yolo, missing_data_error):
    assert "fashion" in missing_data_error(yolo.main).lower()
