"""The reference COCO AP: pycocotools' COCOeval on detections and truths built in memory, in the format of the
YOLO scripts (per image: dets (boxes, scores, labels), truths (boxes, labels); corner boxes in pixels)."""

import contextlib
import io

import numpy as np


def pycocotools_ap(dets, truths, n_classes, iou_thresholds=(0.5,), area_range=(0, 1e10)):
    """COCO's 101-point AP (maxDets 100), averaged over `iou_thresholds` and the classes that have a truth in
    `area_range` (COCO's rule: truths of area outside it are ignored, and so are the unmatched detections)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    anns = [
        {"image_id": i + 1, "category_id": int(c) + 1, "bbox": xywh(b), "area": float((b[2] - b[0]) * (b[3] - b[1])),
         "iscrowd": 0}
        for i, (tb, tl) in enumerate(truths)
        for b, c in zip(tb, tl)
    ]  # fmt: skip
    for k, a in enumerate(anns):  # ids from 1: pycocotools reads id 0 as "unmatched"
        a["id"] = k + 1
    results = [
        {"image_id": i + 1, "category_id": int(c) + 1, "bbox": xywh(b), "score": float(s)}
        for i, (db, ds, dl) in enumerate(dets)
        for b, s, c in zip(db, ds, dl)
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {
            "images": [{"id": i + 1} for i in range(len(truths))],
            "annotations": anns,
            "categories": [{"id": c + 1, "name": str(c)} for c in range(n_classes)],
        }
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(results), "bbox")
        ev.params.iouThrs = np.array(iou_thresholds, dtype=float)
        ev.params.areaRng, ev.params.areaRngLbl = [list(area_range)], ["range"]
        ev.evaluate(), ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, -1]  # (T, 101 recalls, K), -1 where a class has no truth
    per_class = precision.mean(axis=(0, 1))
    return float(per_class[precision[0, 0] > -1].mean())
