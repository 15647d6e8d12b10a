"""04-cnns/yolo_v4_torch.py: CSPDarknet53 + SPP + PANet + YOLOv3 heads, and the bag of freebies.

Full-size parameter counts on the meta device against a count derived here from yolov4.cfg's list of conv
shapes (64,363,101 at 80 classes, as PyTorch ports publish; CSPDarknet53's classifier 27,642,184, the paper's
27.6M); output shapes at every scale; CIoU against its formula, alpha constant in the gradient, finite gradients
at identical and at disjoint boxes; mosaic's pixels, shifts, clipping and dropping rule; label smoothing, grid
sensitivity, the schedules, DropBlock; k-means anchors; target assignment and the ignore rule; the small-object
mAP rule by hand; smoke runs (default, and each freebie switched the other way), bad flags, missing data.
"""

import json
import math

import numpy as np
import pytest
import torch
from detection_checks import check_map_against_detection_numpy

PAPER_YOLOV4 = 64_363_101  # PyTorch ports of yolov4.cfg, 80 classes
PAPER_CSPDARKNET53 = 27_600_000  # the paper's Table 1: 27.6M


@pytest.fixture(scope="module")
def yolo(load_script):
    return load_script("04-cnns/yolo_v4_torch.py")


@pytest.fixture(scope="module")
def dn(load_script):
    return load_script("04-cnns/detection_numpy.py")


def cfg_convs(classes=80, head=True):
    """yolov4.cfg (darknet) as a list of (c_in, c_out, k, has_bias): BatchNorm convs carry 2 c_out parameters
    (scale, shift) and no bias; the three output convs carry a bias and no BatchNorm."""
    L = [(3, 32, 3, False)]  # stem
    c_in = 32
    for c, n in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)):
        h = c if c == 64 else c // 2
        mid = h // 2 if c == 64 else h
        L += [(c_in, c, 3, False), (c, h, 1, False), (c, h, 1, False)]  # downsample, part 1, part 2
        L += [(h, mid, 1, False), (mid, h, 3, False)] * n  # residual blocks
        L += [(h, h, 1, False), (2 * h, c, 1, False)]  # transition, fuse
        c_in = c
    if not head:
        return L
    five = lambda ci, c: [(ci, c, 1, 0), (c, 2 * c, 3, 0), (2 * c, c, 1, 0), (c, 2 * c, 3, 0), (2 * c, c, 1, 0)]  # noqa: E731
    L += [(1024, 512, 1, False), (512, 1024, 3, False), (1024, 512, 1, False)]  # before SPP
    L += [(2048, 512, 1, False), (512, 1024, 3, False), (1024, 512, 1, False)]  # after SPP (4 x 512 in)
    L += [(512, 256, 1, False), (512, 256, 1, False), *five(512, 256)]  # top-down to stride 16
    L += [(256, 128, 1, False), (256, 128, 1, False), *five(256, 128)]  # top-down to stride 8
    L += [(128, 256, 3, False), *five(512, 256), (256, 512, 3, False), *five(1024, 512)]  # bottom-up
    for c in (128, 256, 512):
        L += [(c, 2 * c, 3, False), (2 * c, 3 * (5 + classes), 1, True)]
    return L


def count(layers):
    return sum(ci * co * k * k + (co if bias else 2 * co) for ci, co, k, bias in layers)


def test_full_size_parameter_counts_on_meta(yolo):
    """YOLOv4 = the cfg's 110 convs (64,363,101 at 80 classes, the published figure); CSPDarknet53's classifier
    = its 72 backbone convs + the 1x1 conv 1024 -> 1000 with bias (27,642,184 against the paper's 27.6M)."""
    assert len(cfg_convs()) == 110 and count(cfg_convs()) == PAPER_YOLOV4
    with torch.device("meta"):
        net, cls = yolo.yolov4(), yolo.cspdarknet53()
        assert sum(w.numel() for w in net.parameters()) == count(cfg_convs()) == PAPER_YOLOV4
        assert sum(w.numel() for w in yolo.yolov4(20).parameters()) == count(cfg_convs(20))
        n_cls = sum(w.numel() for w in cls.parameters())
        assert n_cls == count(cfg_convs(head=False)) + 1024 * 1000 + 1000 == 27_642_184
        assert abs(n_cls - PAPER_CSPDARKNET53) < 0.05e6  # 27.6M when rounded
        assert cls(torch.empty(2, 3, 256, 256)).shape == (2, 1000)
        for size in (416, 608):
            outs = net(torch.empty(1, 3, size, size))
            assert [tuple(o.shape) for o in outs] == [(1, 3, size // s, size // s, 85) for s in (8, 16, 32)]
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 110 and sum(c.bias is not None for c in convs) == 3
    assert sum(isinstance(m, yolo.Mish) for m in net.backbone.modules()) == 72
    assert not any(isinstance(m, torch.nn.LeakyReLU) for m in net.backbone.modules())


def test_reduced_network_shapes(yolo):
    """The reduced default on grayscale inputs of several sizes (multiples of 32): (N, 3, H/s, W/s, 15) at strides
    8, 16, 32, finite; a few hundred thousand to 2M parameters."""
    torch.manual_seed(0)
    model = yolo.yolov4(10, 0.125, (1, 1, 1, 1, 1), 1).eval()
    assert 3e5 < sum(w.numel() for w in model.parameters()) < 2e6
    with torch.no_grad():
        for H, W in ((64, 64), (96, 96), (128, 160)):
            outs = model(torch.rand(2, 1, H, W))
            assert [tuple(o.shape) for o in outs] == [(2, 3, H // s, W // s, 15) for s in (8, 16, 32)]
            assert all(torch.isfinite(o).all() for o in outs)


def test_mish_and_spp(yolo):
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    assert torch.allclose(yolo.Mish()(x), x * torch.tanh(torch.log1p(torch.exp(x))))
    y = yolo.SPP()(torch.arange(9.0).view(1, 1, 3, 3))  # a 3x3 map: every pool sees all of it
    assert y.shape == (1, 4, 3, 3) and (y[0, :3] == 8).all() and (y[0, 3] == torch.arange(9.0).view(3, 3)).all()


def test_ciou_against_its_formula(yolo):
    """a = (0, 0, 3.5, 2), b = (1, 1, 4, 5): IoU 2.5 / 16.5, rho^2 = 0.75^2 + 2^2, c^2 = 4^2 + 5^2; v, alpha by hand.
    The gradient is that of IoU - rho^2 / c^2 - alpha v with alpha held constant."""
    a = torch.tensor([0.0, 0, 3.5, 2], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([1.0, 1, 4, 5], dtype=torch.float64)
    iou, rho2, c2 = 2.5 / 16.5, 0.75**2 + 2**2, 4**2 + 5**2
    v = 4 / math.pi**2 * (math.atan(3 / 4) - math.atan(3.5 / 2)) ** 2
    alpha = v / ((1 - iou) + v)
    value = yolo.ciou(a, b)
    assert value.item() == pytest.approx(iou - rho2 / c2 - alpha * v, rel=1e-9)
    (g,) = torch.autograd.grad(value, a)

    def formula(a):  # written out for these boxes: a's right and bottom edges inside b's span, b's top inside a's
        inter = (a[2] - 1) * (a[3] - 1)
        iou = inter / ((a[2] - a[0]) * (a[3] - a[1]) + 12 - inter)
        rho2 = ((a[0] + a[2]) / 2 - 2.5) ** 2 + ((a[1] + a[3]) / 2 - 3) ** 2
        c2 = (4 - a[0]) ** 2 + (5 - a[1]) ** 2  # enclosing box (a0, a1, 4, 5)
        v = 4 / math.pi**2 * (math.atan(3 / 4) - torch.atan((a[2] - a[0]) / (a[3] - a[1]))) ** 2
        return iou - rho2 / c2 - alpha * v  # alpha: the float computed above, a constant

    a2 = a.detach().clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(formula(a2), a2)
    torch.testing.assert_close(g, g2, rtol=1e-6, atol=1e-9)


def test_ciou_gradients_finite_at_identical_and_disjoint_boxes(yolo):
    a = torch.tensor([[2.0, 3, 10, 7], [0, 0, 2, 2]], requires_grad=True)
    b = torch.tensor([[2.0, 3, 10, 7], [5, 6, 9, 8]])
    loss = 1 - yolo.ciou(a, b)
    assert loss[0].item() == pytest.approx(0.0, abs=1e-6) and loss[1].item() > 1  # disjoint: IoU 0 plus distance
    loss.sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad[1].abs().sum() > 0  # disjoint boxes still pulled together


def test_mosaic_pixels_and_boxes_by_hand(yolo):
    """Centre (40, 50) of 96: quadrant q shows scene q shifted by (ox, oy) = (-56 or 40, -46 or 50). A box cut by
    the split is clipped (kept: 70% of its area); one left with 11% (sides 2 x 10) is dropped; a box clipped at the
    canvas edge keeps 36% (kept)."""
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(4, 1, 96, 96, generator=g)
    boxes = [np.float32([[50, 60, 70, 80], [40, 60, 58, 70]]), np.float32([[0, 50, 10, 60]]), np.zeros((0, 4)),
             np.float32([[10, 10, 30, 30], [50, 40, 60, 50]])]  # fmt: skip
    labels = [np.array([1, 2]), np.array([3]), np.zeros(0, np.int64), np.array([4, 5])]
    canvas, b, lb = yolo.mosaic(imgs, boxes, labels, (40, 50))
    assert torch.equal(canvas[0, :50, :40], imgs[0, 0, 46:, 56:]) and torch.equal(
        canvas[0, :50, 40:], imgs[1, 0, 46:, :56]
    )
    assert torch.equal(canvas[0, 50:, :40], imgs[2, 0, :46, 56:]) and torch.equal(
        canvas[0, 50:, 40:], imgs[3, 0, :46, :56]
    )
    np.testing.assert_allclose(b, [[0, 14, 14, 34], [40, 4, 50, 14], [50, 60, 70, 80], [90, 90, 96, 96]])
    assert lb.tolist() == [1, 3, 4, 5]  # label 2 (clipped to 2 x 10 of 18 x 10) dropped


def test_mosaic_epoch_keeps_boxes_inside(yolo):
    """Real scenes, every canvas a mosaic: the same number of canvases, every box inside the canvas with sides
    >= 2, and each canvas's pixels are a rearrangement of its source scenes (the first scene's quadrant)."""
    from data import detection_scenes

    X, boxes, labels = detection_scenes("train", 40, 96, 8, seed=5, min_objects=3, scale=(0.35, 1.2))
    X = torch.from_numpy(X).unsqueeze(1)
    Xm, bm, lm = yolo.mosaic_epoch(X, boxes, labels, 1.0, np.random.default_rng(0))
    assert len(Xm) == len(bm) == len(lm) == 40 and not torch.equal(Xm, X)
    for b, lb in zip(bm, lm):
        assert len(b) == len(lb) and (b >= 0).all() and (b <= 96).all()
        assert ((b[:, 2:] - b[:, :2]) >= 2).all()
    none = yolo.mosaic_epoch(X, boxes, labels, 0.0, np.random.default_rng(0))
    assert torch.equal(none[0], X) and all(np.array_equal(p, q) for p, q in zip(none[1], boxes))


def test_label_smoothing_and_assignment_by_hand(yolo):
    """Anchors (pixels) 4x4 ... 36x36: a 10x10 box centred at (20, 28) goes to anchor 2 (10x10) at stride 8,
    cell (row 3, col 2); a 30x14 box centred at (60, 40) to anchor 7 (30x15) at stride 32 cell (1, 1). Class
    targets: (1 - eps) + eps / C on the true class, eps / C on the others."""
    anchors = torch.tensor([[4, 4], [6, 6], [10, 10], [12, 24], [24, 12], [20, 20], [15, 30], [30, 15], [36, 36.0]])
    boxes = [np.float32([[15, 23, 25, 33], [45, 33, 75, 47]]), np.zeros((0, 4))]
    labels = [np.array([3, 9]), np.zeros(0, np.int64)]
    T, truth, valid, dropped = yolo.build_targets(boxes, labels, anchors.view(3, 3, 2), [(12, 12), (6, 6), (3, 3)],
                                                  10, 0.1)  # fmt: skip
    (o8, b8, c8), (o16, _, _), (o32, b32, c32) = T
    assert o8.sum() == 1 and o8[0, 2, 3, 2] == 1 and o16.sum() == 0 and o32.sum() == 1 and o32[0, 1, 1, 1] == 1
    assert b8[0, 2, 3, 2].tolist() == [15, 23, 25, 33] and b32[0, 1, 1, 1].tolist() == [45, 33, 75, 47]
    assert c8[0, 2, 3, 2, 3].item() == pytest.approx(0.91) and c8[0, 2, 3, 2].sum().item() == pytest.approx(1)
    assert c32[0, 1, 1, 1, 9].item() == pytest.approx(0.91) and c32[0, 1, 1, 1, 0].item() == pytest.approx(0.01)
    assert valid.tolist() == [[True, True], [False, False]] and dropped == 0
    T2, *_, dropped = yolo.build_targets([np.float32([[15, 23, 25, 33], [16, 24, 26, 32]])], [np.array([1, 2])],
                                         anchors.view(3, 3, 2), [(12, 12), (6, 6), (3, 3)], 10, 0.0)  # fmt: skip
    assert dropped == 1 and T2[0][2][0, 2, 3, 2, 1] == 1  # the first keeps the anchor and cell; eps 0: one-hot


def test_ignore_rule(yolo):
    """One truth assigned at stride 8. An unassigned anchor whose decoded box overlaps it with IoU > 0.5 gets no
    objectness gradient; an unassigned anchor far away does (its target is 0); the assigned one does too."""
    anchors = torch.tensor([[10, 10], [12, 12], [40, 40], [12, 24], [24, 12], [20, 20], [15, 30], [30, 15], [36, 36.0]])
    T, truth, valid, _ = yolo.build_targets([np.float32([[15, 23, 25, 33]])], [np.array([0])], anchors.view(3, 3, 2),
                                            [(12, 12), (6, 6), (3, 3)], 2)  # fmt: skip
    outs = [torch.zeros(1, 3, n, n, 7, requires_grad=True) for n in (12, 6, 3)]
    loss, terms = yolo.yolo_loss(outs, T, truth, valid, anchors.view(3, 3, 2), 1.0)
    (g,) = torch.autograd.grad(terms["obj"], outs[0])
    # anchor 0 (10x10) is assigned; anchor 1 (12x12) in the same cell decodes to IoU 100/144 > 0.5: ignored;
    # anchor 2 (40x40): IoU 100/1600 < 0.5, a negative
    assert T[0][0][0, 0, 3, 2] == 1
    assert g[0, 0, 3, 2, 4] < 0 and g[0, 1, 3, 2, 4] == 0 and g[0, 2, 3, 2, 4] > 0 and g[0, 0, 0, 0, 4] > 0
    assert all(torch.isfinite(v) for v in terms.values()) and loss.item() > 0


def test_grid_sensitivity_decoding(yolo):
    """b_x = (s sigmoid(t) - (s - 1) / 2 + c_x) * stride; s = 1 is YOLOv3's sigmoid(t) + c_x; t = 0 is the centre
    of the cell for any s; with s = 1.2 a large t reaches past the cell's edge (1.1), which s = 1 never does."""
    out = torch.zeros(1, 3, 2, 2, 6)
    out[0, 0, 1, 0, 0] = t = 1.3  # anchor 0, row 1, col 0
    out[0, 0, 1, 0, 2:4] = torch.tensor([0.5, -0.5])
    anchors = torch.tensor([[4.0, 6], [1, 1], [1, 1]])
    for s in (1.0, 1.2):
        bx = yolo.decode_boxes(out, anchors, 16, s)
        cx = (s / (1 + math.exp(-t)) - (s - 1) / 2 + 0) * 16
        w, h = 4 * math.exp(0.5), 6 * math.exp(-0.5)
        assert bx[0, 0, 1, 0].tolist() == pytest.approx([cx - w / 2, 24 - h / 2, cx + w / 2, 24 + h / 2], rel=1e-6)
        assert bx[0, 1, 0, 1].tolist() == pytest.approx([24 - 0.5, 8 - 0.5, 24 + 0.5, 8 + 0.5])  # t = 0: centre
    out[..., 0] = 20.0
    assert yolo.decode_boxes(out, anchors, 1, 1.2)[0, 0, 0, 0, [0, 2]].mean() == pytest.approx(1.1)
    assert yolo.decode_boxes(out, anchors, 1, 1.0)[0, 0, 0, 0, [0, 2]].mean() <= 1.0


def test_schedules(yolo):
    """Warm-up (step + 1) / warmup; cosine: 1 right after, 0.5 halfway, near 0 at the end; step: 1, then 0.1 from
    80% of the steps, 0.01 from 90%."""
    f = yolo.lr_factor
    assert [f(i, 4, 104, "cosine") for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4, 4, 104, "cosine") == 1 and f(54, 4, 104, "cosine") == pytest.approx(0.5)
    assert f(103, 4, 104, "cosine") < 1e-3
    assert f(4, 4, 100, "step") == f(79, 4, 100, "step") == 1
    assert f(80, 4, 100, "step") == pytest.approx(0.1) and f(90, 4, 100, "step") == pytest.approx(0.01)


def test_dropblock(yolo):
    """Training: every zero lies in an all-zero 3x3 block inside the map, the rest is scaled by numel / kept, the
    dropped fraction is near p; eval (and p = 0): the identity."""
    torch.manual_seed(0)
    db = yolo.DropBlock(0.2, 3).train()
    y = db(torch.ones(8, 4, 12, 12))
    zero = (y == 0).numpy()
    assert 0.1 < zero.mean() < 0.3
    full = np.zeros_like(zero)  # union of the all-zero 3x3 windows
    for i in range(10):
        for j in range(10):
            win = zero[..., i : i + 3, j : j + 3].all((-1, -2))
            full[..., i : i + 3, j : j + 3] |= win[..., None, None]
    assert (full == zero).all()
    assert torch.allclose(y[y > 0], torch.tensor(y.numel() / (y > 0).sum().item()))
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(db.eval()(x), x) and torch.equal(yolo.DropBlock(0.0).train()(x), x)


def test_kmeans_anchors(yolo):
    """Three tight clusters of shapes -> their means, sorted by area; 1 - IoU assigns by shape, not position."""
    rng = np.random.default_rng(0)
    centres = np.array([[30, 10], [5, 5], [12, 20.0]])
    wh = np.concatenate([c * rng.uniform(0.97, 1.03, (50, 2)) for c in centres])
    got = yolo.kmeans_anchors(wh[rng.permutation(150)], 3)
    np.testing.assert_allclose(got, centres[[1, 2, 0]], rtol=0.02)
    assert yolo.shape_iou(np.array([[2.0, 8]]), np.array([[4.0, 4], [2, 8]]))[0].tolist() == pytest.approx(
        [8 / 24, 1.0]
    )


def test_small_object_map_by_hand(yolo):
    """Truths: a small box (10x10) and a big one (30x30) of class 0. Detections: on the big one (0.9), a false
    small one (0.8), a false big one (0.75), on the small one (0.7). All sizes: TP, FP, FP, TP -> AP 1/2 + 1/2 * 2/4.
    Small only: the big truth is ignored, so is the detection on it and the false big one; left: FP, TP ->
    precision 1/2 at recall 1: AP 1/2 (1/3 if the false big detection counted)."""
    truths = [(np.array([[0, 0, 10, 10], [40, 40, 70, 70.0]]), np.zeros(2, np.int64))]
    det = np.array([[40, 40, 70, 70], [80, 80, 88, 88], [0, 40, 30, 70], [0, 0, 10, 10.0]])
    dets = [(det, np.array([0.9, 0.8, 0.75, 0.7]), np.zeros(4, np.int64))]
    assert yolo.mean_ap(dets, truths, 1)[0] == pytest.approx(0.5 + 0.5 * 2 / 4)
    assert yolo.mean_ap(dets, truths, 1, max_area=yolo.SMALL_AREA)[0] == pytest.approx(0.5)
    assert yolo.SMALL_AREA == 256


def test_map_against_detection_numpy(yolo, dn):
    """Random detection sets: VOC mAP@0.5 and COCO mAP@[.5:.95] equal 04-cnns/detection_numpy.py's."""
    check_map_against_detection_numpy(yolo, dn)


SMOKE = ["--smoke", "--threads", "1"]
TINY = ["--smoke", "--threads", "1", "--epochs", "1", "--n-train", "32", "--n-val", "16", "--n-test", "16",
        "--sizes", "64", "--warmup-epochs", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def smoke(yolo, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    return out, yolo.main([*SMOKE, "--out-dir", str(out)])


def test_smoke_run_learns(yolo, smoke):
    """Loss falls, test mAP@0.5 is many times the untrained model's, headline order, files written; the checkpoint
    rebuilds through model_from_config and detect_images gives the same detections."""
    out, m = smoke
    assert list(m)[:8] == ["script", "test_map50", "test_coco_map", "test_small_map50", "inference_images_per_s",
                           "train_minutes", "params", "val_map50"]  # fmt: skip
    # measured (seed 0, 1 thread): loss 57.4 -> 52.0; val mAP@0.5 5e-6 -> 0.0026; test 0.0017 (untrained: 0.0)
    assert m["final_train_loss"] < 0.95 * m["first_loss"]
    h = m["history"]["val_map50"]
    assert h[1] > 100 * h[0] and m["test_map50"] > 5e-4 and m["test_map50"] > m["init_val_map50"]
    assert 0 <= m["test_coco_map"] < m["test_map50"] and m["full_size_params"]["yolov4"] == PAPER_YOLOV4
    assert json.loads((out / "metrics.json").read_text())["test_map50"] == m["test_map50"]
    for name in ("detections.png", "learning_curves.png"):
        assert (out / name).stat().st_size > 10_000
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    model = yolo.model_from_config(ck["config"])
    model.load_state_dict(ck["model"])
    assert torch.equal(model.anchors.view(9, 2), torch.tensor(m["anchors"], dtype=torch.float32))
    X = torch.rand(3, 1, 96, 96)
    dets = yolo.detect_images(model.train(), X, torch.device("cpu"), 0.01, 0.5)
    assert model.training and len(dets) == 3 and all(d[0].shape[1] == 4 for d in dets)


# every freebie the other way round
SWITCHED = "--box-loss mse --mosaic 0 --label-smoothing 0 --grid-sensitivity 1 --schedule step --dropblock 0.1".split()


@pytest.fixture(scope="module")
def switched(yolo, tmp_path_factory):
    out = tmp_path_factory.mktemp("switched")
    return out, yolo.main([*TINY, *SWITCHED, "--out-dir", str(out)])


def test_every_switch_the_other_way_runs(switched):
    """mse box loss, no mosaic, no label smoothing, s = 1, step schedule, DropBlock on: a finite run, recorded."""
    _, m = switched
    c = m["config"]
    assert (c["box_loss"], c["mosaic"], c["label_smoothing"], c["grid_sensitivity"], c["schedule"], c["dropblock"]) == (
        "mse", 0.0, 0.0, 1.0, "step", 0.1)  # fmt: skip
    assert np.isfinite(m["final_train_loss"]) and np.isfinite(m["history"]["box"]).all()


def test_resume_refuses_a_changed_config(yolo, switched, capsys):
    out, _ = switched
    with pytest.raises(SystemExit) as exc:
        yolo.main([*TINY, *SWITCHED, "--out-dir", str(out), "--resume", "--mosaic", "0.3"])
    assert exc.value.code == 2 and "--mosaic 0.0 -> 0.3" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--epochs", "0"], "--epochs"),
        (["--mosaic", "1.5"], "--mosaic"),
        (["--label-smoothing", "-0.1"], "--label-smoothing"),
        (["--grid-sensitivity", "0.9"], "--grid-sensitivity"),
        (["--box-loss", "giou"], "--box-loss"),
        (["--schedule", "linear"], "--schedule"),
        (["--sizes", "100"], "--sizes"),
        (["--scale", "0.2", "1"], "--scale"),
        (["--min-objects", "5", "--max-objects", "4"], "--min-objects"),
        (["--blocks", "1", "1"], "--blocks"),
        (["--resume"], "--resume"),
    ],
)
def test_bad_flags(yolo, usage_error, argv, flag):
    assert flag in usage_error(yolo, argv)


def test_missing_data_is_one_line(yolo, missing_data_error):
    assert "fashion" in missing_data_error(yolo.main).lower()
