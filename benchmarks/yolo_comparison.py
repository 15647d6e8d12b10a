"""YOLO v1, v3 and v4 on the same test scenes: one figure of what each trained detector finds.

Each script's own recorded run (a folder with checkpoint.pt and metrics.json) is loaded through the script's
`model_from_config` and `detect_images`, so the figure shows exactly the models whose figures are in
RESULTS.md's detection table. The runs must have been trained on the same scenes (--min-objects, --max-objects,
--scale, --seed, --n-test): this is checked, and a mismatch is an error. The test scenes are regenerated from
those flags (data.detection_scenes, split "test", seed 20,000 + seed, as the scripts do) and the first
--n-images are drawn, one row per scene and one column per detector: truth dashed green, detections with a
class-specific score above --conf-threshold red. A panel's title counts the truths found: a drawn detection of
the right class with IoU >= 0.5 (each detection finds one truth).

    python 04-cnns/yolo_v1_torch.py --min-objects 3 --max-objects 8 --scale 0.35 1.2 --out-dir runs/yolo_v1_crowded
    python 04-cnns/yolo_v3_torch.py && python 04-cnns/yolo_v4_torch.py
    python benchmarks/yolo_comparison.py [--runs runs/yolo_v1_crowded runs/yolo_v3_torch runs/yolo_v4_torch]
Writes benchmarks/results/yolo_comparison.png (--out) and prints each run's headline metrics.
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from data import FASHION_MNIST_CLASSES, DataError, detection_scenes, positive_int, probability

ROOT = Path(__file__).resolve().parent.parent
SCENE_FLAGS = ("min_objects", "max_objects", "scale", "seed", "n_test")


def import_script(relpath):
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def iou(a, b):
    """(n, 4) and (m, 4) corner boxes -> (n, m) IoU."""
    iw = (np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])).clip(min=0)
    ih = (np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])).clip(min=0)
    inter = iw * ih
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def found(det, truth):
    """Truths found by detections (boxes, scores, labels) drawn in the figure: best score first, each takes the
    unfound truth of its class with the highest IoU, if that IoU >= 0.5."""
    (db, ds, dl), (tb, tl) = det, truth
    taken = np.zeros(len(tb), bool)
    for k in np.argsort(-ds, kind="stable"):
        ov = np.where(~taken & (tl == dl[k]), iou(db[k : k + 1], tb)[0], -1.0) if len(tb) else np.zeros(0)
        if len(ov) and ov.max() >= 0.5:
            taken[ov.argmax()] = True
    return int(taken.sum())


def load_run(run):
    """(script module, trained model in eval mode, config, metrics) of a run folder."""
    ckpt_path, metrics_path = run / "checkpoint.pt", run / "metrics.json"
    for path in (ckpt_path, metrics_path):
        if not path.is_file():
            raise SystemExit(f"error: {path} is missing: train the script first (see --help)")
    metrics = json.loads(metrics_path.read_text())
    script = metrics["provenance"]["command"].split()[1]
    module = import_script(script)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)  # our own file
    model = module.model_from_config(ckpt["config"])
    model.load_state_dict(ckpt["model"])
    return module, model.eval(), ckpt["config"], metrics


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_runs = [ROOT / "runs" / n for n in ("yolo_v1_crowded", "yolo_v3_torch", "yolo_v4_torch")]
    p.add_argument("--runs", nargs="+", type=Path, default=default_runs, help="run folders, one per detector "
                   "(default runs/yolo_v1_crowded runs/yolo_v3_torch runs/yolo_v4_torch)")  # fmt: skip
    p.add_argument("--n-images", type=positive_int, default=4, help="test scenes in the figure (default 4)")
    p.add_argument("--conf-threshold", type=probability, default=0.2, help="score above which a detection is drawn "
                   "(default 0.2, the scripts' figure threshold)")  # fmt: skip
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "yolo_comparison.png",
                   help="the figure (default benchmarks/results/yolo_comparison.png)")  # fmt: skip
    args = p.parse_args(argv)
    runs = [load_run(run) for run in args.runs]
    scenes = {k: runs[0][2][k] for k in SCENE_FLAGS}
    for run, (_, _, config, _) in zip(args.runs, runs):
        other = {k: config.get(k) for k in SCENE_FLAGS}
        if other != scenes:
            p.error(f"{run} was trained and tested on other scenes: {other} against {scenes}")
    try:
        X, boxes, labels = detection_scenes("test", scenes["n_test"], 96, scenes["max_objects"],
                                            20_000 + scenes["seed"], min_objects=scenes["min_objects"],
                                            scale=tuple(scenes["scale"]), data_dir=args.data_dir)  # fmt: skip
    except DataError as exc:
        sys.exit(f"error: {exc}")
    k = args.n_images
    X = torch.from_numpy(X[:k]).unsqueeze(1)
    truths = list(zip(boxes[:k], labels[:k]))
    names = []
    for *_, metrics in runs:
        names.append(metrics["script"].replace("_torch", "").replace("yolo_v", "YOLO v"))
        print(f"{names[-1]:8s}  mAP@0.5 {metrics['test_map50']:.3f}  COCO {metrics['test_coco_map']:.3f}  small "
              f"{metrics['test_small_map50']:.3f}  {metrics['inference_images_per_s']:.0f} images/s  "
              f"{metrics['params']:,} parameters  {metrics['train_minutes']:.1f} min")  # fmt: skip
    dets = [module.detect_images(model, X, torch.device("cpu"), args.conf_threshold, 0.5) for module, model, *_ in runs]

    fig = Figure(figsize=(3.1 * len(runs), 3.2 * k), layout="constrained")
    axes = fig.subplots(k, len(runs), squeeze=False)
    for i in range(k):
        for j, name in enumerate(names):
            ax, tb = axes[i, j], truths[i][0]
            ax.imshow(X[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            for x1, y1, x2, y2 in tb:
                ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color="lime", ls="--"))
            db, ds, dl = dets[j][i]
            for (x1, y1, x2, y2), s, c in zip(db, ds, dl):
                ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color="red", lw=1))
                ax.text(x1, y1 - 1, f"{FASHION_MNIST_CLASSES[c]} {s:.2f}", color="red", fontsize=5)
            ax.set_title(f"{name}: {found(dets[j][i], truths[i])} of {len(tb)} found, {len(db)} drawn", fontsize=8)
            ax.set_axis_off()
    fig.suptitle(f"the same test scenes: truth (green, dashed), detections with score > {args.conf_threshold} (red)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return [sum(found(x, t) for x, t in zip(d, truths)) for d in dets]  # truths found, per detector


if __name__ == "__main__":
    main()
