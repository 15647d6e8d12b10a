"""Speed of the hand-written NumPy convolution against PyTorch's, and of one CNN training epoch, as ratios.

Part 1: forward + backward (dx, dW, db) of 04-cnns/conv_numpy.py's vectorised `conv2d_forward` /
`conv2d_backward` against `torch.nn.functional.conv2d` and its autograd backward (x, W and b all
require gradients, so torch computes the same three gradients), float32, at LeNet shapes and at the
3x3 convolutions of ResNet's four stages. Goals: NumPy within 2x of torch at LeNet shapes and within
3x at ResNet-stage shapes. To show where NumPy's time goes, the three matrix products the layer does
(forward, dW, dcols) are also timed alone at the layer's shapes: that is OpenBLAS's floor, and the
rest of the layer's time is im2col, col2im and the layout transposes.

Part 2: seconds for one training epoch of the LeNet-style CNN of cnn_numpy.py, cnn_torch.py and
cnn_jax.py (whichever exist), each with its own `train_epoch`, on the same data, batch size and
minibatch order (Adam, float32). Each gets an untimed warm-up: a few batches, or for JAX a whole
epoch (its step is compiled for the shapes of the whole training array).

Timing: one untimed warm-up, then `--repeats` interleaved rounds (a slow spell of the machine hits
all contenders alike); the median is reported (every time is kept in the JSON). Frameworks never
run at the same time. NumPy's OpenBLAS takes its thread count from OPENBLAS_NUM_THREADS (or OMP_NUM_THREADS; all
cores if neither is set); torch is given the same number with torch.set_num_threads, and JAX's CPU
backend uses what XLA_FLAGS allows.

Memory: the NumPy layer allocates its im2col matrices afresh on every call, and glibc hands large
freed blocks back to the OS, so each call also pays page faults on fresh memory; --keep-freed-memory
(mallopt) shows the times without them, for both libraries.

    python benchmarks/conv.py [--repeats 7] [--epoch-repeats 2] [--n-train N] [--quick] [--only conv|epoch]
                              [--keep-freed-memory]
"""

import argparse
import ctypes
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from data import nonneg_int, positive_float, positive_int

ROOT = Path(__file__).resolve().parent.parent

# (name, x shape (N, C, H, W), W shape (F, C, kh, kw), padding); stride 1 throughout
LENET = [
    ("LeNet conv1", (128, 1, 28, 28), (16, 1, 5, 5), 2),
    ("LeNet conv2", (128, 16, 14, 14), (32, 16, 5, 5), 0),
]
RESNET = [
    ("ResNet stage 1", (32, 64, 56, 56), (64, 64, 3, 3), 1),
    ("ResNet stage 2", (32, 128, 28, 28), (128, 128, 3, 3), 1),
    ("ResNet stage 3", (32, 256, 14, 14), (256, 256, 3, 3), 1),
    ("ResNet stage 4", (32, 512, 7, 7), (512, 512, 3, 3), 1),
]
GOALS = {"LeNet": 2.0, "ResNet": 3.0}


def import_script(relpath):
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def blas_threads():
    """The thread count NumPy's OpenBLAS uses: its environment variables, else every core."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var):
            return int(os.environ[var]), var
    return os.cpu_count(), "all cores"


def keep_freed_memory():
    """Ask glibc's malloc to keep freed memory for reuse rather than return it to the OS (Linux, glibc).

    By default a large freed block goes back to the OS, and the next allocation of that size is
    fresh memory whose every page faults on first touch (the kernel zeroes it). The NumPy layer
    allocates C*kh*kw times its input per call (cols, dcols), so at LeNet conv2 these faults are
    about a quarter of its time, and at ResNet stage 1 (hundreds of MB per call) up to half of it
    when the kernel cannot back the memory with huge pages. M_MMAP_MAX = 0: every block comes from
    the heap, never from a fresh mmap; M_TRIM_THRESHOLD large: the heap is never given back.
    Torch's allocations benefit too.
    """
    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    if not (libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)):
        raise RuntimeError("mallopt failed")


def time_rounds(contenders, repeats):
    """Warm each contender up once, then time `repeats` interleaved rounds; {name: list of seconds}."""
    for run in contenders.values():
        run()
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return times


# --- part 1: one convolution layer, forward + backward ------------------------------------------------


def conv_contenders(conv, x_shape, W_shape, pad, seed):
    """Closures for the NumPy layer, torch's conv2d + autograd, and the NumPy layer's three matrix products."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    W = rng.standard_normal(W_shape, dtype=np.float32)
    b = rng.standard_normal(W_shape[0], dtype=np.float32)
    out, _ = conv.conv2d_forward(x, W, b, 1, pad)
    dout = rng.standard_normal(out.shape, dtype=np.float32)

    def numpy_layer():
        _, cache = conv.conv2d_forward(x, W, b, 1, pad)
        conv.conv2d_backward(dout, cache)

    xt, Wt, bt = (torch.from_numpy(a).requires_grad_() for a in (x, W, b))
    doutt = torch.from_numpy(dout)

    def torch_layer():
        torch.autograd.grad(F.conv2d(xt, Wt, bt, padding=pad), (xt, Wt, bt), doutt)

    # The layer's matrix products at its shapes: W2 (F, K) @ cols (K, P), (cols @ d^T)^T, W2^T @ d
    Fo, K, P = W_shape[0], int(np.prod(W_shape[1:])), out.size // W_shape[0]
    W2 = rng.standard_normal((Fo, K), dtype=np.float32)
    cols = rng.standard_normal((K, P), dtype=np.float32)
    d = rng.standard_normal((Fo, P), dtype=np.float32)

    def numpy_matmuls():
        W2 @ cols
        cols @ d.T
        W2.T @ d

    return {"numpy": numpy_layer, "torch": torch_layer, "numpy_matmuls": numpy_matmuls}


def bench_conv(args):
    conv = import_script("04-cnns/conv_numpy.py")
    rows = []
    for group, shapes in [("LeNet", LENET), ("ResNet", RESNET)]:
        for name, x_shape, W_shape, pad in shapes:
            if group == "ResNet" and args.resnet_batch != x_shape[0]:
                x_shape = (args.resnet_batch, *x_shape[1:])
            times = time_rounds(conv_contenders(conv, x_shape, W_shape, pad, args.seed), args.repeats)
            med = {k: statistics.median(t) for k, t in times.items()}
            row = {
                "group": group,
                "name": name,
                "x": list(x_shape),
                "W": list(W_shape),
                "pad": pad,
                "numpy_s": med["numpy"],
                "torch_s": med["torch"],
                "matmuls_s": med["numpy_matmuls"],
                "ratio": med["numpy"] / med["torch"],
                "numpy_min_s": min(times["numpy"]),
                "torch_min_s": min(times["torch"]),
                "times": times,
            }
            rows.append(row)
            print(
                f"  {name:15s} x {str(tuple(x_shape)):18s} W {str(tuple(W_shape)):18s} "
                f"numpy {1e3 * row['numpy_s']:8.2f} ms (matmuls {1e3 * row['matmuls_s']:7.2f}, rest "
                f"{1e3 * (row['numpy_s'] - row['matmuls_s']):6.2f})  torch {1e3 * row['torch_s']:8.2f} ms  "
                f"ratio {row['ratio']:.2f}",
                flush=True,
            )
    summary = {}
    for group, goal in GOALS.items():
        g = [r for r in rows if r["group"] == group]
        total = sum(r["numpy_s"] for r in g) / sum(r["torch_s"] for r in g)
        worst = max(r["ratio"] for r in g)
        summary[group] = {"goal": goal, "worst_ratio": worst, "total_ratio": total, "met": worst <= goal}
        print(
            f"{group}: worst ratio {worst:.2f}, all shapes together {total:.2f} (goal <= {goal:.0f}x): "
            f"{'met' if worst <= goal else 'missed'}"
        )
    return {"rows": rows, "summary": summary}


# --- part 2: one training epoch of the CNN scripts ---------------------------------------------------


def numpy_epoch(args):
    cnn = import_script("04-cnns/cnn_numpy.py")
    params = cnn.init_params(np.random.default_rng(args.seed), channels=args.channels, hidden=args.hidden)
    opt_state = cnn.adam_init(params)

    def run_epoch(X, y, rng):
        cnn.train_epoch(params, opt_state, X, y, args.batch_size, args.lr, rng)

    return run_epoch


def torch_epoch(args):
    import torch

    cnn = import_script("04-cnns/cnn_torch.py")
    torch.manual_seed(args.seed)
    model = cnn.CNN(channels=args.channels, hidden=args.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)

    def run_epoch(X, y, rng):
        cnn.train_epoch(model, opt, torch.from_numpy(X), torch.from_numpy(y), args.batch_size, rng)

    return run_epoch


def jax_epoch(args):
    import jax
    import jax.numpy as jnp

    cnn = import_script("04-cnns/cnn_jax.py")
    params = cnn.init_params(jax.random.PRNGKey(args.seed), channels=args.channels, hidden=args.hidden)
    state = {"params": params, "opt": cnn.adam_init(params)}

    def run_epoch(X, y, rng):
        # train_epoch returns after reading the epoch's mean loss back: the timing is complete
        state["params"], state["opt"], _ = cnn.train_epoch(
            state["params"], state["opt"], jnp.asarray(X), jnp.asarray(y), args.batch_size, args.lr, rng
        )

    return run_epoch


def bench_epochs(args):
    cnn_numpy = import_script("04-cnns/cnn_numpy.py")
    X, y, _, _ = cnn_numpy.load_data(args.data_dir)
    X, y = X[: args.n_train], y[: args.n_train]
    makers = {"numpy": numpy_epoch, "jax": jax_epoch, "torch": torch_epoch}
    makers = {k: make for k, make in makers.items() if k in args.frameworks}
    missing = [k for k in makers if not (ROOT / "04-cnns" / f"cnn_{k}.py").exists()]
    for k in missing:
        print(f"  cnn_{k}.py not found: skipped")
        del makers[k]
    print(
        f"CNN epoch: channels {tuple(args.channels)}, hidden {args.hidden}, {len(X)} images, batch {args.batch_size}, "
        f"Adam lr {args.lr}, float32, median of {args.epoch_repeats} after a warm-up"
    )
    epochs = {name: make(args) for name, make in makers.items()}
    rngs = {name: np.random.default_rng(args.seed) for name in epochs}  # the same minibatch order for all
    # Warm-up, untimed. JAX compiles its step for the shapes of the whole training array and of the
    # full and the last minibatch, so its warm-up is a whole epoch; the others warm up on a few batches.
    n_warm = 2 * args.batch_size + len(X) % args.batch_size
    for name, run_epoch in epochs.items():
        n = len(X) if name == "jax" else n_warm
        run_epoch(X[:n], y[:n], np.random.default_rng(args.seed))
    times = {name: [] for name in epochs}
    for _ in range(args.epoch_repeats):
        for name, run_epoch in epochs.items():
            t0 = time.perf_counter()
            run_epoch(X, y, rngs[name])
            times[name].append(time.perf_counter() - t0)
    results = {name: {"sec_per_epoch": statistics.median(t), "min": min(t), "times": t} for name, t in times.items()}
    for name, r in results.items():
        print(
            f"  {name:6s} {r['sec_per_epoch']:7.2f} s/epoch (median; min {r['min']:.2f}; "
            f"runs {', '.join(f'{t:.2f}' for t in r['times'])})"
        )
    ratios = {}
    if "torch" in results:
        ratios = {
            f"{k}/torch": results[k]["sec_per_epoch"] / results["torch"]["sec_per_epoch"]
            for k in results
            if k != "torch"
        }
        print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    return {"n_train": len(X), "results": results, "ratios": ratios, "skipped": missing}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--repeats", type=positive_int, default=None, help="timed rounds per convolution shape (default 7; 3 quick)"
    )
    p.add_argument(
        "--epoch-repeats", type=positive_int, default=None, help="timed epochs per framework (default 2; 1 quick)"
    )
    p.add_argument(
        "--resnet-batch", type=positive_int, default=None, help="batch of the ResNet-stage shapes (default 32; 8 quick)"
    )
    p.add_argument(
        "--n-train", type=positive_int, default=None, help="training images per epoch (default all 60,000; 6,000 quick)"
    )
    p.add_argument("--batch-size", type=positive_int, default=128, help="CNN minibatch size (default 128)")
    p.add_argument(
        "--channels", type=positive_int, nargs=2, default=[16, 32], metavar=("C1", "C2"), help="(default 16 32)"
    )
    p.add_argument(
        "--hidden", type=positive_int, nargs="+", default=[128], help="CNN hidden layer widths (default 128)"
    )
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument(
        "--frameworks",
        nargs="+",
        choices=["numpy", "jax", "torch"],
        default=["numpy", "jax", "torch"],
        help="CNN scripts to time an epoch of (default all three)",
    )
    p.add_argument(
        "--threads", type=positive_int, default=None, help="torch threads (default: as many as NumPy's OpenBLAS)"
    )
    p.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="glibc keeps freed memory (mallopt): no page faults on re-allocated buffers, for both libraries",
    )
    p.add_argument("--only", choices=["conv", "epoch"], default=None, help="run one part only")
    p.add_argument("--quick", action="store_true", help="fewer repeats, smaller ResNet batch and epoch")
    p.add_argument("--out", default=str(ROOT / "runs" / "benchmarks" / "conv.json"))
    args = p.parse_args(argv)
    quick = args.quick
    defaults = dict(repeats=3 if quick else 7, epoch_repeats=1 if quick else 2, resnet_batch=8 if quick else 32)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.n_train is None and quick:
        args.n_train = 6000
    if args.n_train is not None and args.n_train < 2 * args.batch_size:
        p.error(f"argument --n-train: must be at least two batches ({2 * args.batch_size}), got {args.n_train}")

    if args.keep_freed_memory:
        keep_freed_memory()
    import torch

    threads, source = blas_threads()
    torch.set_num_threads(threads if args.threads is None else args.threads)
    print(
        f"conv benchmark: float32; numpy's OpenBLAS threads {threads} ({source}), torch threads "
        f"{torch.get_num_threads()}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"numpy {np.__version__}, torch {torch.__version__}"
        + ("; glibc keeps freed memory" if args.keep_freed_memory else "")
    )
    out = {"config": vars(args) | {"blas_threads": threads, "torch_threads": torch.get_num_threads()}}
    if args.only != "epoch":
        print(f"forward + backward (dx, dW, db), median of {args.repeats} rounds:")
        out["conv"] = bench_conv(args)
    if args.only != "conv":
        out["epoch"] = bench_epochs(args)
    out["config"]["python"] = sys.version.split()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
