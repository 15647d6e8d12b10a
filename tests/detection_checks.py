"""Checks shared by the YOLO tests (test_yolo_v1.py, test_yolo_v3.py, test_yolo_v4.py): random boxes, and each
script's own mAP copy against the reference implementation of 04-cnns/detection_numpy.py."""

import numpy as np
import pytest


def random_boxes(rng, n, size=50):
    """(n, 4) corner boxes in [0, size + 20], about one in ten degenerate (zero area)."""
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(0, 20, (n, 2)) * (rng.random((n, 1)) > 0.1)
    return np.concatenate([xy, xy + wh], 1).round(1)


def check_map_against_detection_numpy(yolo, dn, seed=2, rounds=5):
    """Random detection sets over 6 images and 3 classes (each truth found twice with jitter, plus false alarms):
    the script's VOC all-point mAP@0.5 and COCO mAP@[.5:.95] equal detection_numpy's."""
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        truths, dets = [], []
        for _ in range(6):
            k = rng.integers(0, 5)
            tb, tl = random_boxes(rng, k, 60), rng.integers(0, 3, k)
            jitter = np.repeat(tb, 2, 0) + rng.normal(0, 2, (2 * k, 4))
            db = np.concatenate([jitter, random_boxes(rng, 3, 60)])
            dl = np.concatenate([np.repeat(tl, 2), rng.integers(0, 3, 3)])
            truths.append((tb, tl)), dets.append((db, rng.random(len(db)), dl))
        ref_dets = [{"boxes": b, "scores": s, "labels": lb} for b, s, lb in dets]
        ref_truths = [{"boxes": b, "labels": lb} for b, lb in truths]
        voc = dn.mean_average_precision(ref_dets, ref_truths, 0.5, "voc")[0]
        assert yolo.mean_ap(dets, truths, 3)[0] == pytest.approx(voc, abs=1e-12)
        assert yolo.coco_map(dets, truths, 3) == pytest.approx(dn.coco_map(ref_dets, ref_truths)["AP"], abs=1e-12)
