"""Seconds per training epoch of the three 01-foundations MLPs, in one process, as ratios to PyTorch.

Times each script's own `train_epoch` (not a copy of it) on the same data, architecture, batch
size and minibatch order: full Fashion-MNIST training split (60,000 images), 784-256-128-10,
batch 128, SGD lr 0.1, float32. Each framework gets one untimed warm-up epoch (JAX compiles its
step there); then `--repeats` rounds each time one epoch of every framework in turn, and the
median per framework is reported (with the minimum: on a shared machine the spread is real).
Frameworks never run at the same time (on two cores, concurrent thread pools slow each other
many-fold).

    python benchmarks/mlp_epoch.py [--repeats 5] [--batch-size 128]
"""

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def import_script(relpath):
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def numpy_epoch(X, y, sizes, batch_size, lr, seed):
    """A closure that trains mlp_numpy's network for one epoch with the script's own train_epoch."""
    mlp = import_script("01-foundations/mlp_numpy.py")
    params = mlp.init_params(sizes, np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    return lambda: mlp.train_epoch(params, X, y, batch_size, lr, rng)


def jax_epoch(X, y, sizes, batch_size, lr, seed):
    import jax
    import jax.numpy as jnp

    mlp = import_script("01-foundations/mlp_jax.py")
    state = {"params": mlp.init_params(jax.random.PRNGKey(seed), sizes)}
    Xd, yd = jnp.asarray(X), jnp.asarray(y)
    rng = np.random.default_rng(seed)

    def run_epoch():  # train_epoch returns after reading the epoch's losses back: the timing is complete
        state["params"], _, _ = mlp.train_epoch(state["params"], Xd, yd, batch_size, lr, rng)

    return run_epoch


def torch_epoch(X, y, sizes, batch_size, lr, seed):
    import torch

    mlp = import_script("01-foundations/mlp_torch.py")
    torch.manual_seed(seed)
    model = mlp.MLP(sizes)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    rng = np.random.default_rng(seed)
    return lambda: mlp.train_epoch(model, opt, Xt, yt, batch_size, rng)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed epochs per framework (default 5)")
    p.add_argument("--batch-size", type=int, default=128, help="minibatch size (default 128)")
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 128], help="hidden widths (default 256 128)")
    p.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--out", default=str(ROOT / "runs" / "benchmarks" / "mlp_epoch.json"))
    args = p.parse_args(argv)

    X, y, _, _ = import_script("01-foundations/mlp_numpy.py").load_data()
    X, y = X[: args.n_train], y[: args.n_train]
    sizes = [X.shape[1], *args.hidden, 10]
    import jax
    import torch

    print(
        f"mlp_epoch: {' -> '.join(map(str, sizes))}, {len(X)} images, batch {args.batch_size}, float32, "
        f"median of {args.repeats} rounds after 1 warm-up"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads; "
        f"numpy {np.__version__}, jax {jax.__version__}, torch {torch.__version__}"
    )
    epochs = {
        name: make(X, y, sizes, args.batch_size, args.lr, args.seed)
        for name, make in [("numpy", numpy_epoch), ("jax", jax_epoch), ("torch", torch_epoch)]
    }
    for run_epoch in epochs.values():  # warm-up: JAX compiles its step, caches and allocators fill
        run_epoch()
    times = {name: [] for name in epochs}
    for _ in range(args.repeats):  # rounds: a slow spell of the machine hits all three alike
        for name, run_epoch in epochs.items():
            t0 = time.perf_counter()
            run_epoch()
            times[name].append(time.perf_counter() - t0)
    results = {name: {"sec_per_epoch": statistics.median(t), "min": min(t), "times": t} for name, t in times.items()}
    for name, r in results.items():
        print(
            f"  {name:6s} {r['sec_per_epoch']:.3f} s/epoch (median; min {r['min']:.3f}; "
            f"runs {', '.join(f'{t:.3f}' for t in r['times'])})"
        )
    ratios = {f"{k}/torch": results[k]["sec_per_epoch"] / results["torch"]["sec_per_epoch"] for k in ("numpy", "jax")}
    print(
        f"ratios: numpy/torch {ratios['numpy/torch']:.2f} (goal <= 1.0), "
        f"jax/torch {ratios['jax/torch']:.2f} (goal <= 0.6)"
    )
    out = {
        "config": vars(args) | {"sizes": sizes, "n_train": len(X), "python": sys.version.split()[0]},
        "results": results,
        "ratios": ratios,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
