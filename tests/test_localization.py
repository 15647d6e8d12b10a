"""Tests of 04-cnns/localization_torch.py: object localization and landmark detection on single-item scenes.

The combined loss term by term on hand-made outputs and targets (each term its formula; with p_c = 0 the class, box
and landmark terms and their gradients vanish), the target vector of a hand-made scene, the IoU against a
brute-force pixel count on integer boxes, shapes, then a smoke run on real scenes whose metrics beat what no
learning gives (chance class accuracy, the IoU of a constant centred box of the mean size, the landmark error of
that box's centre, the objectness of always saying "object"), Ctrl-C and --resume, bad flags, missing data.
"""

import json

import numpy as np
import pytest
import torch

from data import detection_scenes, extreme_points


@pytest.fixture(scope="module")
def loc(load_script):
    return load_script("04-cnns/localization_torch.py")


def hand_batch():
    """Three scenes: two with an object (classes 3 and 7), one empty; raw outputs drawn at random."""
    g = torch.Generator().manual_seed(0)
    out = torch.randn(3, 23, generator=g, dtype=torch.float64)
    t = {
        "pc": torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64),
        "box": torch.tensor([[0.5, 0.4, 0.3, 0.2], [0, 0, 0, 0], [0.2, 0.7, 0.1, 0.25]], dtype=torch.float64),
        "cls": torch.tensor([3, 0, 7]),
        "lm": torch.rand(3, 8, generator=g, dtype=torch.float64) * torch.tensor([1.0, 0, 1])[:, None],
    }
    return out, t


def test_loss_term_by_term(loc):
    """BCE(sigmoid(z), p_c) over all scenes; -log softmax(c)_y, sum (sigmoid(b) - b*)^2 and sum (sigmoid(l) - l*)^2
    over the scenes with an object; each divided by the batch size; L = obj + cls + lambda_box box + lambda_lm lm."""
    out, t = hand_batch()
    total, terms = loc.localization_loss(out, t, lambda_box=2.0, lambda_lm=3.0)
    sig = lambda z: 1 / (1 + np.exp(-z))
    o = out.numpy()
    q = sig(o[:, 0])
    obj = -np.mean([np.log(q[0]), np.log(1 - q[1]), np.log(q[2])])
    logp = o[:, 5:15] - np.log(np.exp(o[:, 5:15]).sum(1, keepdims=True))
    cls = -(logp[0, 3] + logp[2, 7]) / 3
    box = sum(((sig(o[i, 1:5]) - t["box"][i].numpy()) ** 2).sum() for i in (0, 2)) / 3
    lm = sum(((sig(o[i, 15:23]) - t["lm"][i].numpy()) ** 2).sum() for i in (0, 2)) / 3
    for name, ref in (("obj", obj), ("cls", cls), ("box", box), ("lm", lm)):
        assert terms[name].item() == pytest.approx(ref, rel=1e-12), name
    assert total.item() == pytest.approx(obj + cls + 2 * box + 3 * lm, rel=1e-12)
    default, _ = loc.localization_loss(out, t)  # lambda_box = lambda_lm = 5 by default
    assert default.item() == pytest.approx(obj + cls + 5 * box + 5 * lm, rel=1e-12)


def test_no_object_leaves_only_objectness(loc):
    """With p_c = 0 the scene's class, box and landmark outputs do not change the loss and get no gradient; its
    objectness logit does. With every p_c = 0 the loss is the BCE alone."""
    out, t = hand_batch()
    out.requires_grad_(True)
    total, _ = loc.localization_loss(out, t)
    total.backward()
    assert (out.grad[1, 1:] == 0).all() and out.grad[1, 0] != 0
    assert (out.grad[0, 1:] != 0).all()  # a scene with an object: every output is pulled
    moved = out.detach().clone()
    moved[1, 1:] += 10.0
    assert loc.localization_loss(moved, t)[0].item() == pytest.approx(total.item(), rel=1e-14)
    empty = {k: v * 0 for k, v in t.items()}
    total, terms = loc.localization_loss(out.detach(), empty)
    bce = -np.log(1 - 1 / (1 + np.exp(-out.detach()[:, 0].numpy()))).mean()
    assert total.item() == pytest.approx(bce, rel=1e-12) and terms["box"] == terms["lm"] == terms["cls"] == 0


def test_targets_of_a_hand_made_scene(loc):
    """An L-shaped item in a 96x96 canvas: box x 10..19, y 20..49 -> b = (15, 35, 30, 10) / 96; extreme points
    top (10, 20), bottom (10, 49), left (10, 20), right (19, 40); landmark targets at pixel centres (+0.5) / 96.
    A scene marked empty becomes a blank canvas with p_c = 0 and zero targets."""
    img = np.zeros((2, 96, 96), np.float32)
    img[:, 20:50, 10:12] = 1.0  # the vertical bar of the L
    img[:, 40:42, 10:20] = 0.5  # its foot, to the right
    boxes = [np.array([[10, 20, 20, 50]], np.float32)] * 2
    x, t = loc.targets(img, boxes, [np.array([4]), np.array([6])], np.array([False, True]))
    assert x.shape == (2, 1, 96, 96) and torch.equal(x[0, 0], torch.from_numpy(img[0])) and (x[1] == 0).all()
    assert torch.allclose(t["box"][0], torch.tensor([15, 35, 30, 10]) / 96)
    pts = torch.tensor([[10, 20], [10, 49], [10, 20], [19, 40]], dtype=torch.float32)
    assert torch.allclose(t["lm"][0], ((pts + 0.5) / 96).reshape(8))
    assert t["pc"].tolist() == [1, 0] and t["cls"].tolist() == [4, 0]
    assert (t["box"][1] == 0).all() and (t["lm"][1] == 0).all()
    assert torch.allclose(loc.to_corners(t["box"][:1]), torch.tensor([[10.0, 20, 20, 50]]))


def test_iou_against_pixel_count(loc):
    """Integer boxes on a 24x24 grid, random plus disjoint, touching, nested, identical and zero-area ones: the IoU
    equals |A n B| / |A u B| counted over pixels (0 where both are empty)."""
    rng = np.random.default_rng(0)
    corners = np.sort(rng.integers(0, 25, (300, 2, 2)), axis=1)  # (x1, x2), (y1, y2) sorted, may be equal
    a = np.stack([corners[:, 0, 0], corners[:, 1, 0], corners[:, 0, 1], corners[:, 1, 1]], 1)
    b = np.roll(a, 1, axis=0)
    special = [([0, 0, 5, 5], [5, 0, 9, 5]), ([0, 0, 5, 5], [6, 6, 9, 9]), ([0, 0, 10, 10], [2, 3, 4, 8]),
               ([3, 3, 7, 9], [3, 3, 7, 9]), ([2, 2, 2, 8], [0, 0, 9, 9]), ([4, 4, 4, 4], [4, 4, 4, 4])]  # fmt: skip
    a = np.concatenate([a, [s[0] for s in special]])
    b = np.concatenate([b, [s[1] for s in special]])

    def mask(box):
        m = np.zeros((24, 24), bool)
        m[box[1] : box[3], box[0] : box[2]] = True  # rows y, columns x
        return m

    ref = []
    for u, v in zip(a, b):
        inter, union = (mask(u) & mask(v)).sum(), (mask(u) | mask(v)).sum()
        ref.append(inter / union if union else 0.0)
    got = loc.box_iou(torch.from_numpy(a).double(), torch.from_numpy(b).double()).numpy()
    assert np.allclose(got, ref, atol=1e-12, rtol=0)
    assert got[-6:].tolist() == pytest.approx([0, 0, 10 / 100, 1, 0, 0])
    assert 0.05 < np.mean(np.array(ref) > 0) < 0.95  # the random pairs overlap sometimes, not always


def test_evaluate_on_hand_made_outputs(loc):
    """evaluate()'s figures on outputs built from the targets: exact boxes (IoU 1), one class right of two, every
    landmark moved by (3, 4) pixels (error 5 px), objectness right on all three scenes."""
    _, t = hand_batch()
    t = {k: v.float() if v.is_floating_point() else v for k, v in t.items()}
    t["lm"][[0, 2]] = t["lm"][[0, 2]].clamp(0.1, 0.8)  # room for the shift inside (0, 1)
    logit = lambda p: torch.log(p / (1 - p))  # noqa: E731, the inverse of split_output's sigmoid
    out = torch.zeros(3, 23)
    out[:, 0] = torch.tensor([10.0, -10.0, 10.0])  # p_c: object, none, object
    out[[0, 2], 1:5] = logit(t["box"][[0, 2]])
    out[0, 5 + 3], out[2, 5 + 1] = 5.0, 5.0  # class 3 (right), class 1 where the truth is 7 (wrong)
    out[[0, 2], 15:23] = logit(t["lm"][[0, 2]] + torch.tensor([3.0, 4.0]).repeat(4) / loc.SIZE)

    class Fixed(torch.nn.Module):  # returns the outputs above, row i for the input holding i
        def forward(self, x):
            return out[x.flatten(1)[:, 0].long()]

    m, _ = loc.evaluate(Fixed(), torch.arange(3.0)[:, None, None, None], t, 5.0, 5.0)
    assert m["mean_iou"] == pytest.approx(1, abs=1e-5) and m["iou_above_0.5"] == 1
    assert m["class_acc"] == 0.5 and m["objectness_acc"] == 1
    assert m["landmark_px"] == pytest.approx(5, abs=1e-3)


def test_shapes(loc):
    """(B, 1, 96, 96) -> (B, 23); the split outputs have their shapes, box and landmarks in (0, 1)."""
    torch.manual_seed(0)
    model = loc.Localizer()
    out = model(torch.rand(4, 1, 96, 96))
    assert out.shape == (4, 23)
    pc, box, cls, lm = loc.split_output(out)
    assert pc.shape == (4,) and box.shape == (4, 4) and cls.shape == (4, 10) and lm.shape == (4, 8)
    assert ((box > 0) & (box < 1)).all() and ((lm > 0) & (lm < 1)).all()
    assert [m.out_channels for m in model.features if isinstance(m, torch.nn.Conv2d)] == [8, 16, 32, 64, 128]


# %% real data


@pytest.fixture(scope="module")
def smoke(loc, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    return out, loc.main(["--smoke", "--out-dir", str(out)])


def constant_baselines(n_test):
    """What no learning gets on the smoke run's test scenes: the IoU of one box of the mean training size at the
    canvas centre, and the landmark error of putting all four points at that centre."""
    _, b, _ = detection_scenes("train", 1000, seed=99, single=True)
    b = np.concatenate(b)
    w, h = (b[:, 2] - b[:, 0]).mean(), (b[:, 3] - b[:, 1]).mean()
    images, t, _ = detection_scenes("test", n_test, seed=0, single=True)
    pts = extreme_points(images, t)
    t = np.concatenate(t)
    c = np.array([48 - w / 2, 48 - h / 2, 48 + w / 2, 48 + h / 2])
    iw = np.clip(np.minimum(t[:, 2], c[2]) - np.maximum(t[:, 0], c[0]), 0, None)
    ih = np.clip(np.minimum(t[:, 3], c[3]) - np.maximum(t[:, 1], c[1]), 0, None)
    iou = iw * ih / ((t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1]) + w * h - iw * ih)
    return iou.mean(), np.linalg.norm(pts + 0.5 - 48, axis=2).mean()


def test_smoke_run(smoke):
    """Two epochs of 512 real scenes: the loss falls, and every metric beats no learning by far."""
    out, m = smoke
    iou0, lm0 = constant_baselines(200)
    assert iou0 < 0.12 and lm0 > 20
    h = m["history"]
    assert len(h["step_loss"]) == 2 * 16 and m["n_test"] == 200
    assert h["test"][-1]["loss"] < h["test"][0]["loss"] < h["init_test"]["loss"]
    assert h["train_loss"][1] < h["train_loss"][0]
    assert m["test_class_acc"] > 0.25  # chance: 0.1
    assert m["test_mean_iou"] > iou0 + 0.15 and m["test_landmark_px"] < lm0 / 1.5
    assert m["test_objectness_acc"] > 0.9  # always "object": 0.8
    assert {"metrics.json", "checkpoint.pt", "predictions.png", "train_scenes.png", "learning_curves.png"} <= {
        p.name for p in out.iterdir()
    }
    assert json.loads((out / "metrics.json").read_text())["test_mean_iou"] == m["test_mean_iou"]


def test_ctrl_c_then_resume_equals_uninterrupted(loc, tmp_path, monkeypatch, capsys):
    """Ctrl-C in epoch 2 exits 130 naming the checkpoint of epoch 1 and the --resume command; --resume then gives the
    uninterrupted run's losses and metrics; a changed setting is refused. (Two epochs of 64 scenes.)"""
    tiny = ["--smoke", "--n-train", "64", "--n-test", "40", "--n-images", "2"]
    m = loc.main([*tiny, "--out-dir", str(tmp_path / "whole")])
    real, calls = loc.load_data, []

    def ctrl_c_in_epoch_2(*a, **k):
        calls.append(1)
        if len(calls) == 4:  # test scenes, the training files' check, epoch 1, epoch 2
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(loc, "load_data", ctrl_c_in_epoch_2)
    argv = [*tiny, "--out-dir", str(tmp_path / "cut")]
    with pytest.raises(SystemExit) as exc:
        loc.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 130 and "holds epoch 1" in err and err.rstrip().endswith("--resume")
    monkeypatch.setattr(loc, "load_data", real)
    resumed = loc.main([*argv, "--resume"])
    assert len(m["history"]["step_loss"]) == 4 and resumed["history"]["step_loss"] == m["history"]["step_loss"]
    assert resumed["history"]["test"] == m["history"]["test"] and resumed["test_mean_iou"] == m["test_mean_iou"]
    with pytest.raises(SystemExit) as exc:
        loc.main([*argv, "--resume", "--lr", "0.5"])
    assert exc.value.code == 2 and "--lr 0.002 -> 0.5" in capsys.readouterr().err


def test_missing_data_is_one_line(loc, missing_data_error):
    assert "fashion-mnist" in missing_data_error(loc.main).lower()


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--epochs", "0"], "--epochs"),
        (["--lr", "nan"], "--lr"),
        (["--empty-fraction", "1"], "--empty-fraction"),
        (["--empty-fraction", "0.999"], "--empty-fraction"),  # rounds to 200 blank scenes of 200
        (["--lambda-box", "-1"], "--lambda-box"),
        (["--n-test", "0"], "--n-test"),
        (["--resume", "--out-dir", "/no/such/run"], "--resume"),
    ],
)
def test_bad_flags(loc, usage_error, argv, flag):
    assert flag in usage_error(loc, argv)
