"""Speed of scaled dot-product attention, forward + backward: hand NumPy, hand PyTorch and fused SDPA, as ratios.

Contenders, each computing out = softmax(Q K^T / sqrt(d)) V and dQ, dK, dV for the same random upstream
gradient, with Q, K, V of shape (B, H, T, d) = (8, 8, T, 64), float32 inputs, on the CPU:
  numpy  06-transformers/attention_numpy.py's `attention_forward` + `attention_backward` (the backward
         written by hand: dV = P^T dO, the softmax Jacobian, dQ, dK)
  hand   06-transformers/attention_torch.py's `scaled_dot_product_attention` (scores, masked softmax,
         weights @ V, every T x T intermediate stored) with autograd's backward
  sdpa   torch.nn.functional.scaled_dot_product_attention with autograd's backward: a fused kernel
         that the profiler names (recorded in the JSON as `sdpa_kernels`)
No mask by default; --causal hands the same causal bool mask (True = may attend) to all three, so
every contender still computes all T x T scores. The first call of each contender at each T is
checked against sdpa (output and the three gradients, relative error max|a-b| / (max|a|+max|b|)),
and the dtype each returns is recorded: a contender that computes in float64 is flagged.

Timing, for each T in --seq-lens: `--repeats` rounds; in each round every contender in turn pauses
`--pause` seconds, makes one untimed call, then `--block` timed calls (interleaved, as in
benchmarks/rnn.py, so a slow spell of the machine hits all alike). Medians are reported, ratios
to sdpa at each T, and each contender's growth t(T') / t(T) between consecutive lengths beside
(T'/T)^2: the scores and the weights are T x T, so doubling T should cost about 4x once the T^2
terms dominate. NumPy's OpenBLAS takes its thread count from OPENBLAS_NUM_THREADS (or
OMP_NUM_THREADS; all cores if neither is set); torch is given the same number.

    python benchmarks/attention.py [--seq-lens 128 256 512 1024] [--repeats 5] [--block 2] [--causal]
"""

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from data import nonneg_float, nonneg_int, positive_int

ROOT = Path(__file__).resolve().parent.parent


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
            return int(os.environ[var])
    return os.cpu_count()


def rel_error(a, b):
    """max|a - b| / max(max|a| + max|b|, 1e-12), in float64."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max() + np.abs(b).max(), 1e-12))


def numpy_step(numpy_attention, Q, K, V, dout, mask):
    """A closure running the hand-written NumPy forward and backward once: -> (out, dQ, dK, dV)."""

    def step():
        out, cache = numpy_attention.attention_forward(Q, K, V, mask)
        return (out, *numpy_attention.attention_backward(dout, cache))

    return step


def torch_step(fn, Q, K, V, dout, mask):
    """A closure running fn(q, k, v, mask) -> out and autograd's backward once: -> (out, dQ, dK, dV)."""
    import torch

    q, k, v = (torch.from_numpy(a).requires_grad_(True) for a in (Q, K, V))
    d = torch.from_numpy(dout)
    m = None if mask is None else torch.from_numpy(mask)

    def step():
        for t in (q, k, v):
            t.grad = None
        out = fn(q, k, v, m)
        out.backward(d)
        return out.detach(), q.grad, k.grad, v.grad

    return step


def sdpa_kernels(step):
    """The aten ops whose names mention attention in one profiled call: which kernel F.sdpa picked."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    return sorted({e.key for e in prof.key_averages() if "attention" in e.key and e.key.startswith("aten::")})


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--seq-lens", type=positive_int, nargs="+", default=[128, 256, 512, 1024], help="T (default 128 256 512 1024)"
    )
    p.add_argument("--batch-size", type=positive_int, default=8, help="B (default 8)")
    p.add_argument("--n-head", type=positive_int, default=8, help="H (default 8)")
    p.add_argument("--head-dim", type=positive_int, default=64, help="d (default 64)")
    p.add_argument("--causal", action="store_true", help="a causal mask for all three (default: no mask)")
    p.add_argument("--repeats", type=positive_int, default=5, help="rounds (default 5)")
    p.add_argument("--block", type=positive_int, default=2, help="timed calls per contender and round (default 2)")
    p.add_argument("--pause", type=nonneg_float, default=0.3, help="seconds of pause before each block (default 0.3)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--out", default=str(ROOT / "runs" / "benchmarks" / "attention.json"))
    args = p.parse_args(argv)
    import torch
    import torch.nn.functional as F

    threads = blas_threads()
    torch.set_num_threads(threads)
    hand = import_script("06-transformers/attention_torch.py")
    numpy_attention = import_script("06-transformers/attention_numpy.py")
    fns = {"numpy": numpy_attention}
    fns["hand"] = lambda q, k, v, m: hand.scaled_dot_product_attention(q, k, v, m)[0]
    fns["sdpa"] = lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    B, H, d = args.batch_size, args.n_head, args.head_dim
    print(
        f"attention: forward + backward (dQ, dK, dV), B {B}, H {H}, d {d}, float32 inputs, "
        f"{'causal mask' if args.causal else 'no mask'}, median of {args.repeats} rounds x {args.block} calls"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {threads} BLAS / torch threads; "
        f"numpy {np.__version__}, torch {torch.__version__}"
    )
    results, checks = {}, {}
    for T in args.seq_lens:
        rng = np.random.default_rng([args.seed, T])
        Q, K, V, dout = (rng.standard_normal((B, H, T, d)).astype(np.float32) for _ in range(4))
        mask = np.tril(np.ones((T, T), dtype=bool)) if args.causal else None
        steps = {
            name: numpy_step(fn, Q, K, V, dout, mask) if name == "numpy" else torch_step(fn, Q, K, V, dout, mask)
            for name, fn in fns.items()
        }
        first = {name: [np.asarray(a) for a in step()] for name, step in steps.items()}  # also a warm-up
        checks[T] = {
            name: {
                "rel_error_vs_sdpa": max(rel_error(a, b) for a, b in zip(got, first["sdpa"])),
                "dtypes": [str(a.dtype) for a in got],
            }
            for name, got in first.items()
        }
        for name, c in checks[T].items():
            if any(t != "float32" for t in c["dtypes"]):
                print(f"  note: {name} returns {', '.join(c['dtypes'])} for float32 inputs at T {T}")
        times = {name: [] for name in steps}
        for _ in range(args.repeats):
            for name, step in steps.items():
                time.sleep(args.pause)  # the previous contender's spinning worker threads go idle
                step()  # untimed: caches and allocators warm up for this contender
                for _ in range(args.block):
                    t0 = time.perf_counter()
                    step()
                    times[name].append(time.perf_counter() - t0)
        results[T] = {
            name: {"ms": 1e3 * statistics.median(t), "min_ms": 1e3 * min(t), "times_s": t} for name, t in times.items()
        }
        others = [n for n in results[T] if n != "sdpa"]
        print(
            f"  T {T:5d}: "
            + ", ".join(f"{n} {r['ms']:.1f} ms" for n, r in results[T].items())
            + " | "
            + ", ".join(f"{n}/sdpa {results[T][n]['ms'] / results[T]['sdpa']['ms']:.2f}" for n in others)
            + " | rel error vs sdpa "
            + ", ".join(f"{n} {checks[T][n]['rel_error_vs_sdpa']:.1e}" for n in others),
            flush=True,
        )
        for n in others:
            if checks[T][n]["rel_error_vs_sdpa"] > 1e-4:
                print(f"  WARNING: {n} disagrees with sdpa at T {T}: its timing is of a different computation")
    kernels = sdpa_kernels(steps["sdpa"])
    print(f"sdpa ran: {', '.join(kernels) or 'no attention op recorded'}")
    ratios = {str(T): {f"{n}/sdpa": r[n]["ms"] / r["sdpa"]["ms"] for n in r if n != "sdpa"} for T, r in results.items()}
    growth = {}
    for T1, T2 in zip(args.seq_lens, args.seq_lens[1:]):
        growth[f"{T1}->{T2}"] = {n: results[T2][n]["ms"] / results[T1][n]["ms"] for n in fns} | {"T^2": (T2 / T1) ** 2}
        print(
            f"growth T {T1} -> {T2} (T^2 gives {(T2 / T1) ** 2:.1f}x): "
            + ", ".join(f"{n} {g:.2f}x" for n, g in growth[f"{T1}->{T2}"].items() if n != "T^2")
        )
    out = {
        "config": vars(args) | {"threads": threads, "python": sys.version.split()[0], "torch": torch.__version__},
        "contenders": list(fns),
        "results": {str(T): r for T, r in results.items()},
        "ratios": ratios,
        "growth": growth,
        "checks": {str(T): c for T, c in checks.items()},
        "sdpa_kernels": kernels,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
