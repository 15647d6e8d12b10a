"""The CNN case studies side by side: parameters, forward multiply-adds and CPU latency of every constructor,
next to the figures their papers report, and training throughput of ResNet-20 and ResNet-18 on Fashion-MNIST.

Part 1: parameters at the default configuration (1000 classes; CIFAR models with their papers' 10
classes) and forward multiply-adds for one image, counted on the meta device (nothing is allocated)
by torch.utils.flop_counter.FlopCounterMode, which counts 2 FLOPs per multiply-add; the papers count
multiply-adds, so the table shows FLOPs / 2. Each model at its canonical input: 224x224, Inception v3
and v4 at 299x299, EfficientNet-Bk at its own resolution (240 ... 600), the CIFAR models of the papers
(resnet20..110, preact_resnet110/164, resnext29_*) at 32x32. FlopCounterMode counts convolutions and
matrix products only (not BN, activations, pooling, additions, SE's elementwise scaling), as the
papers do. The last column is the CPU latency of one eval-mode forward of a single image (batch 1,
float32, median of `--repeats` after a warm-up), with real weights.

Part 2: training throughput, images per second of forward + backward + SGD step (Nesterov momentum,
weight decay) on standardised Fashion-MNIST batches of 28x28, for resnet20 and resnet18 with
small_input (1 channel, 10 classes), on this machine's CPU, median over `--repeats` timed rounds of
`--steps` steps after one untimed warm-up round. Augmentation is left out: it is the same for any model.

Writes a markdown table to runs/benchmarks/cnn_zoo.md (and .json) and prints it.

    python benchmarks/cnn_zoo.py [--steps 10] [--repeats 3] [--batch-size 128] [--threads N]
                                 [--skip-throughput] [--skip-latency]
"""

import argparse
import importlib.util
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from data import nonneg_int, positive_int

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = [
    "04-cnns/vgg_torch.py",
    "04-cnns/resnet_torch.py",
    "04-cnns/resnet_v2_torch.py",
    "04-cnns/resnext_torch.py",
    "04-cnns/densenet_torch.py",
    "04-cnns/inception_v1_torch.py",
    "04-cnns/inception_v3_torch.py",
    "04-cnns/inception_v4_torch.py",
    "04-cnns/mobilenet_v1_torch.py",
    "04-cnns/mobilenet_v2_torch.py",
    "04-cnns/efficientnet_torch.py",
]
CIFAR = {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110"} | {
    "preact_resnet110",
    "preact_resnet164",
    "resnext29_8x64d",
    "resnext29_16x64d",
}
# (parameters, multiply-adds, where) as the papers print them; None where a paper gives no figure.
PAPER = {
    "vgg11": ("133M", None, "Simonyan & Zisserman 2014, Table 2 (A)"),
    "vgg13": ("133M", None, "Table 2 (B)"),
    "vgg16": ("138M", None, "Table 2 (D)"),
    "vgg19": ("144M", None, "Table 2 (E)"),
    "resnet18": (None, "1.8G", "He et al. 2015, Table 1"),
    "resnet34": (None, "3.6G", "Table 1"),
    "resnet50": (None, "3.8G", "Table 1"),
    "resnet101": (None, "7.6G", "Table 1"),
    "resnet152": (None, "11.3G", "Table 1"),
    "resnet20": ("0.27M", None, "He et al. 2015, Table 6"),
    "resnet32": ("0.46M", None, "Table 6"),
    "resnet44": ("0.66M", None, "Table 6"),
    "resnet56": ("0.85M", None, "Table 6"),
    "resnet110": ("1.7M", None, "Table 6"),
    "preact_resnet110": ("1.7M", None, "He et al. 2016, Table 3"),
    "preact_resnet164": ("1.7M", None, "He et al. 2016, Table 3"),
    "resnext50_32x4d": ("25.0M", "4.2G", "Xie et al. 2017, Table 3"),
    "resnext101_64x4d": ("83.5M", "15.5G", "torchvision's ResNeXt101_64X4D_Weights (83,455,272; 15.46 GFLOPS)"),
    "resnext29_8x64d": ("34.4M", None, "Xie et al. 2017, Table 7"),
    "resnext29_16x64d": ("68.1M", None, "Xie et al. 2017, Table 7"),
    "googlenet": (None, "1.5G", "Szegedy et al. 2014, section 1 (budget)"),
    "inception_v3": ("<25M", "5G", "Szegedy et al. 2015, abstract"),
    "mobilenet_v1": ("4.2M", "569M", "Howard et al. 2017, Table 8"),
    "mobilenet_v2": ("3.4M", "300M", "Sandler et al. 2018, Table 4"),
    "efficientnet_b0": ("5.3M", "0.39G", "Tan & Le 2019, Table 2"),
    "efficientnet_b1": ("7.8M", "0.70G", "Table 2"),
    "efficientnet_b2": ("9.2M", "1.0G", "Table 2"),
    "efficientnet_b3": ("12M", "1.8G", "Table 2"),
    "efficientnet_b4": ("19M", "4.2G", "Table 2"),
    "efficientnet_b5": ("30M", "9.9G", "Table 2"),
    "efficientnet_b6": ("43M", "19G", "Table 2"),
    "efficientnet_b7": ("66M", "37G", "Table 2"),
}
# canonical input sides other than 224 (CIFAR models: 32); a script may also list its own in RESOLUTION
SIDE = {"inception_v3": 299, "inception_v4": 299, "inception_resnet_v2": 299}
THROUGHPUT = [("04-cnns/resnet_torch.py", "resnet20"), ("04-cnns/resnet_torch.py", "resnet18")]


def import_script(relpath):
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def size_and_cost(fn, side, classes):
    """Parameters and forward multiply-adds of one image, on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        model = fn(num_classes=classes).eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, side, side))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 2


@torch.no_grad()
def latency(fn, side, classes, repeats):
    """Milliseconds of one eval-mode forward of a batch of 1 image on the CPU, median over `repeats` after a warm-up."""
    torch.manual_seed(0)
    model = fn(num_classes=classes).eval()
    x = torch.randn(1, 3, side, side)
    model(x)  # warm-up: allocator, kernel selection
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def train_throughput(fn, X, y, batch_size, steps, repeats, seed):
    """Images per second of SGD training steps (small_input, 1 channel, 10 classes); median over rounds."""
    torch.manual_seed(seed)
    model = fn(num_classes=10, in_channels=1, small_input=True).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    rng = np.random.default_rng(seed)

    def run(n):
        for _ in range(n):
            idx = torch.from_numpy(rng.integers(0, len(X), batch_size))
            loss = F.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    run(2)  # warm-up: allocator, kernels
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(steps)
        times.append(time.perf_counter() - t0)
    rates = [steps * batch_size / t for t in times]
    return statistics.median(rates), rates, sum(p.numel() for p in model.parameters())


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=positive_int, default=10, help="training steps per timed round (default 10)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed rounds (default 3)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="minibatch size (default 128)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--skip-throughput", action="store_true", help="no training-throughput table")
    p.add_argument("--skip-latency", action="store_true", help="no batch-1 latency column (it builds every model)")
    p.add_argument("--out", default=str(ROOT / "runs" / "benchmarks" / "cnn_zoo.md"))
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    modules = {s: import_script(s) for s in SCRIPTS if (ROOT / s).exists()}

    rows, lines = [], []
    lines += [
        "| model | script | input | parameters | paper | GMACs (forward) | paper | source | CPU ms, batch 1 |",
        "|---|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for script, module in modules.items():
        for name, fn in module.MODELS.items():
            side = 32 if name in CIFAR else {**SIDE, **getattr(module, "RESOLUTION", {})}.get(name, 224)
            classes = 10 if name in CIFAR else 1000
            params, macs = size_and_cost(fn, side, classes)
            ms = None if args.skip_latency else latency(fn, side, classes, args.repeats)
            paper_params, paper_macs, source = PAPER.get(name, (None, None, ""))
            rows.append({"model": name, "script": script, "input": side, "params": params, "macs": macs, "ms": ms})
            lines.append(
                f"| {name} | {Path(script).name} | {side}x{side} | {params:,} | {paper_params or '-'} | "
                f"{macs / 1e9:.2f} | {paper_macs or '-'} | {source} | {'-' if ms is None else f'{ms:.1f}'} |"
            )
            print(lines[-1], flush=True)

    speed = []
    if not args.skip_throughput:
        from data import fashion_mnist

        X, y = fashion_mnist("train")
        X = X.reshape(-1, 1, 28, 28).astype(np.float32) / 255
        X = torch.from_numpy((X - X.mean()) / X.std())
        y = torch.from_numpy(y.astype(np.int64))
        lines += [
            "",
            f"Training throughput on this CPU ({platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}), Fashion-MNIST 28x28, "
            f"batch {args.batch_size}, small_input stem:",
            "",
            "| model | parameters (10 classes) | images/s (median) | rounds |",
            "|---|---:|---:|---|",
        ]
        for script, name in THROUGHPUT:
            if script not in modules:
                continue
            rate, rates, params = train_throughput(
                modules[script].MODELS[name], X, y, args.batch_size, args.steps, args.repeats, args.seed
            )
            speed.append({"model": name, "images_per_s": rate, "rounds": rates, "params": params})
            lines.append(f"| {name} | {params:,} | {rate:.0f} | {', '.join(f'{r:.0f}' for r in rates)} |")
            print(lines[-1], flush=True)

    table = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    result = {"config": vars(args), "models": rows, "throughput": speed}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    print(f"\n{table}\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
