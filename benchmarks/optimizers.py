"""The ten 02-optimization methods compared: 2-D trajectories, Fashion-MNIST training, and step() time.

1. Trajectories on two 2-D functions, drawn on contour plots: an ill-conditioned quadratic
   f(x, y) = 0.1 x^2 + 2 y^2 (d2l 12.6) and Rosenbrock's f(x, y) = (1 - x)^2 + 100 (y - x^2)^2.
   Uses the NumPy optimizers with exact gradients and default hyperparameters; each method's learning
   rate is the best of a grid from 1e-4 to 10 (lowest final f among paths that stay in the plotted
   window), per function.
2. The same MLP (784-256-128-10), seed and data trained with each PyTorch optimizer at its script's
   default learning rate for `--epochs` epochs: one figure of training loss, one table of test accuracy.
3. Time per `step()` of our PyTorch optimizers against torch.optim's (`foreach=False`, and the
   default) on the parameter list of ResNet-50 (25,557,032 parameters, random gradients), as ratios.

    python benchmarks/optimizers.py [--epochs 10] [--skip-training]
Figures go to benchmarks/results/ (shown in the README); numbers to runs/benchmarks/optimizers.json.
"""

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from data import positive_int

ROOT = Path(__file__).resolve().parent.parent
METHODS = {  # script stem -> class name, in the arc's order
    "minibatch_sgd": "MinibatchSGD", "momentum": "Momentum", "nesterov": "Nesterov", "adagrad": "Adagrad",
    "rmsprop": "RMSProp", "adadelta": "Adadelta", "adam": "Adam", "yogi": "Yogi", "adamw": "AdamW", "nadam": "NAdam",
}  # fmt: skip


def import_script(relpath):
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def optimizer(method, framework):
    return getattr(import_script(f"02-optimization/{method}_{framework}.py"), METHODS[method])


# %% 1. Trajectories on 2-D functions

FUNCTIONS = {
    "ill-conditioned quadratic 0.1x² + 2y²": (
        lambda x, y: 0.1 * x**2 + 2 * y**2,
        lambda x, y: np.array([0.2 * x, 4 * y]),
        np.array([-5.0, -2.0]), (-5.5, 5.5), (-2.5, 2.5), 100,
    ),
    "Rosenbrock (1-x)² + 100(y-x²)²": (
        lambda x, y: (1 - x) ** 2 + 100 * (y - x**2) ** 2,
        lambda x, y: np.array([-2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)]),
        np.array([-1.5, 2.0]), (-2.0, 2.0), (-1.0, 3.0), 2000,
    ),
}  # fmt: skip
LR_GRID = np.geomspace(1e-4, 10.0, 11)  # 1e-4, 3e-4, ..., 10: each method gets its best lr per function


def run_2d(method, lr, grad, start, steps):
    """The path of the NumPy optimizer `method` (default hyperparameters but lr) from `start`."""
    kwargs = dict(lr=lr, weight_decay=0.0) if method == "adamw" else dict(lr=lr)  # no regularisation in 2-D
    opt = optimizer(method, "numpy")(**kwargs)
    xy = [start.copy()]
    path = [start.copy()]
    with np.errstate(all="ignore"):  # a too-large lr diverges: that lr is simply not chosen
        for _ in range(steps):
            opt.step(xy, [grad(*xy[0])])
            path.append(xy[0].copy())
    return np.array(path)


def trajectories(out_png):
    """For each function and method: among the lrs of LR_GRID whose path stays in the plotted window,
    the one with the lowest final f, and its path drawn."""
    fig = Figure(figsize=(14, 6), layout="constrained")
    finals = {}
    for ax, (name, (f, grad, start, xlim, ylim, steps)), i in zip(fig.subplots(1, 2), FUNCTIONS.items(), (0, 1)):
        X, Y = np.meshgrid(np.linspace(*xlim, 300), np.linspace(*ylim, 300))
        ax.contour(X, Y, f(X, Y), levels=np.geomspace(1e-2, f(X, Y).max(), 25), cmap="Greys", linewidths=0.6)
        for k, method in enumerate(METHODS):
            scores = []
            for lr in LR_GRID:  # keep the lrs whose whole path stays in view, then take the lowest final f
                path = run_2d(method, lr, grad, start, steps)
                inside = np.all((path >= (xlim[0], ylim[0])) & (path <= (xlim[1], ylim[1])))
                if inside:
                    scores.append((float(f(*path[-1])), lr))
            best, lr = min(scores)
            path = run_2d(method, lr, grad, start, steps)
            finals[(name, method)] = {"lr": float(lr), "f": float(best)}
            ax.plot(path[:, 0], path[:, 1], "-", lw=1.2, color=f"C{k}", label=f"{method} lr {lr:.0e}: f={best:.2g}")
        ax.plot(*start, "ko")
        ax.plot(*((0, 0) if i == 0 else (1, 1)), "r*", ms=12)
        ax.set(xlim=xlim, ylim=ylim, title=f"{name}: {steps} steps, best lr per method", xlabel="x", ylabel="y")
        ax.legend(fontsize=7, loc="lower right")
    fig.savefig(out_png, dpi=110)
    return finals


# %% 2. Fashion-MNIST: the same MLP and seed with each method


def fashion_mnist_comparison(epochs, out_png):
    results = {}
    for method in METHODS:
        script = import_script(f"02-optimization/{method}_torch.py")
        m = script.main(["--epochs", str(epochs), "--out-dir", str(ROOT / "runs" / "benchmarks" / f"{method}_torch")])
        results[method] = {"lr": m["config"]["lr"], "test_acc": m["test_acc"], "epoch_losses": m["epoch_losses"],
                           "sec_per_epoch": m["sec_per_epoch"]}  # fmt: skip
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for k, (method, r) in enumerate(results.items()):
        ax.plot(range(1, epochs + 1), r["epoch_losses"], "o-", ms=3, color=f"C{k}", label=f"{method} (lr {r['lr']:g})")
    ax.set(xlabel="epoch", ylabel="training loss (epoch mean)", yscale="log",
           title="Fashion-MNIST, MLP 784-256-128-10, batch 128, seed 0")  # fmt: skip
    ax.legend(fontsize=8)
    fig.savefig(out_png, dpi=110)
    return results


# %% 3. step() time on ResNet-50's parameter list


def resnet50_shapes():
    """Shapes of ResNet-50's parameters (He et al. 2016, Table 1; BatchNorm weight and bias per conv)."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    c_in = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for b in range(blocks):
            for shape in [(width, c_in, 1, 1), (width, width, 3, 3), (4 * width, width, 1, 1)]:
                shapes += [shape, shape[:1], shape[:1]]
            if b == 0:  # projection shortcut
                shapes += [(4 * width, c_in, 1, 1), (4 * width,), (4 * width,)]
            c_in = 4 * width
    return shapes + [(1000, 2048), (1000,)]


def step_times(repeats=5):
    shapes = resnet50_shapes()
    assert sum(int(np.prod(s)) for s in shapes) == 25_557_032  # docs/references.md
    g = torch.Generator().manual_seed(0)
    references = {
        "minibatch_sgd": lambda ps, **kw: torch.optim.SGD(ps, lr=1e-3, **kw),
        "momentum": lambda ps, **kw: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, **kw),
        "nesterov": lambda ps, **kw: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, nesterov=True, **kw),
        "adagrad": torch.optim.Adagrad, "rmsprop": torch.optim.RMSprop, "adadelta": torch.optim.Adadelta,
        "adam": torch.optim.Adam, "yogi": None, "adamw": torch.optim.AdamW, "nadam": torch.optim.NAdam,
    }  # fmt: skip

    def time_step(opt_class, **kwargs):
        ps = [torch.randn(s, generator=g).requires_grad_() for s in shapes]
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g)
        opt = opt_class(ps, **kwargs)
        opt.step()  # first step creates the state
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    results = {}
    for method, ref in references.items():
        r = {"ours_ms": 1e3 * time_step(optimizer(method, "torch"))}  # defaults on both sides: the same update
        if ref is not None:
            r["torch_loop_ms"] = 1e3 * time_step(ref, foreach=False)
            r["torch_default_ms"] = 1e3 * time_step(ref)
            r["ratio_vs_loop"] = r["ours_ms"] / r["torch_loop_ms"]
            r["ratio_vs_default"] = r["ours_ms"] / r["torch_default_ms"]
        results[method] = r
    return results


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=positive_int, default=10, help="Fashion-MNIST epochs per method (default 10)")
    p.add_argument("--skip-training", action="store_true", help="only the trajectories and the step times")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed step() calls per optimizer (default 5)")
    p.add_argument("--fig-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--out", default=str(ROOT / "runs" / "benchmarks" / "optimizers.json"))
    args = p.parse_args(argv)
    fig_dir = Path(args.fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    finals = trajectories(fig_dir / "optimizer_trajectories.png")
    out = {"trajectories": {f"{name} / {method}": f for (name, method), f in finals.items()}}
    print(f"1. trajectories -> {fig_dir / 'optimizer_trajectories.png'}")
    if not args.skip_training:
        out["fashion_mnist"] = fashion_mnist_comparison(args.epochs, fig_dir / "optimizer_fashion_mnist.png")
        print(f"2. Fashion-MNIST, {args.epochs} epochs -> {fig_dir / 'optimizer_fashion_mnist.png'}")
        print("   | method | lr | test accuracy | s/epoch |\n   |---|---:|---:|---:|")
        for method, r in out["fashion_mnist"].items():
            print(f"   | {method} | {r['lr']:g} | {r['test_acc']:.4f} | {r['sec_per_epoch']:.2f} |")
    out["step_times"] = step_times(args.repeats)
    print(f"3. step() on ResNet-50's {len(resnet50_shapes())} parameter tensors (25.6M), median of {args.repeats}:")
    print("   | method | ours (ms) | torch foreach=False (ms) | torch default (ms) | ours / loop | ours / default |")
    print("   |---|---:|---:|---:|---:|---:|")
    for method, r in out["step_times"].items():
        if "torch_loop_ms" in r:
            print(f"   | {method} | {r['ours_ms']:.1f} | {r['torch_loop_ms']:.1f} | {r['torch_default_ms']:.1f} | "
                  f"{r['ratio_vs_loop']:.2f} | {r['ratio_vs_default']:.2f} |")  # fmt: skip
        else:
            print(f"   | {method} | {r['ours_ms']:.1f} | n/a | n/a | n/a | n/a |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
