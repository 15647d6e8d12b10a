"""Attention on long sequences: time and memory of full attention, Linformer and LSH attention against T.

Contenders, each a forward and a backward (autograd, one random upstream gradient) on the CPU, float32,
q, k, v of shape (B, nh, T, d) = (1, 4, T, 64) by default:
  full       06-transformers/linformer_torch.py's `full_attention`: softmax(q k^T / sqrt(d)) v, (T, T) weights
  linformer  its `linformer_attention` with E, F of shape (nh, k, T), k = 128 (--k), one per head; the gradients
             of E and F are part of the backward
  lsh        06-transformers/reformer_torch.py's `lsh_attention(qk, v, n_buckets, n_hashes, chunk_len)` with qk = q,
             n_buckets = 2 T / chunk_len (a chunk of 64 then holds about two buckets' worth of keys), 1 hash;
             skipped with a printed note while that script or function is missing, or if it fails
Full attention is skipped where its (B nh T^2) float32 weights alone would exceed --max-scores-mib (512 MiB by
default: T up to 4096 at B nh = 4); the output says which lengths were skipped.

Time: for each T, `--repeats` interleaved rounds; in each round every contender in turn pauses `--pause`
seconds, makes one untimed call, then `--block` timed calls (as benchmarks/attention.py); medians. The fitted
exponent of each contender is the slope of a least-squares line through (log T, log median time): about 2 for
full attention (its T x T products and softmax), about 1 for Linformer and LSH once the fixed costs are small.
Memory: the bytes of the tensors autograd saves for the backward during one forward (counted once per storage
by torch.autograd.graph.saved_tensors_hooks, the inputs q, k, v, E, F themselves left out), plus the output's.
That is what a layer holds between its forward and its backward; transient buffers inside one operation (the
scores before the softmax, the gradients during the backward) come on top, so it is a lower bound of the peak.

    python benchmarks/long_attention.py [--seq-lens 512 1024 ... 16384] [--k 128] [--repeats 3]
Writes runs/benchmarks/long_attention.json and runs/benchmarks/long_attention.png (log-log axes).
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
from matplotlib.figure import Figure

from data import nonneg_float, nonneg_int, positive_int

ROOT = Path(__file__).resolve().parent.parent


def import_script(relpath):
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_lsh():
    """reformer_torch.py's lsh_attention, or (None, why not)."""
    path = ROOT / "06-transformers" / "reformer_torch.py"
    if not path.exists():
        return None, f"{path.relative_to(ROOT)} does not exist yet"
    try:
        reformer = import_script("06-transformers/reformer_torch.py")
    except Exception as exc:  # a script being written may not import yet: say so and go on without it
        return None, f"{path.relative_to(ROOT)} does not import ({type(exc).__name__}: {exc})"
    if not hasattr(reformer, "lsh_attention"):
        return None, f"{path.relative_to(ROOT)} has no lsh_attention"
    return reformer.lsh_attention, None


def saved_bytes(fn, inputs):
    """Bytes of the tensors autograd saves for backward in one call fn(*inputs), each storage once, inputs left
    out, plus the output's storage."""
    own = {t.untyped_storage().data_ptr() for t in inputs}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in own:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(*inputs)
    seen[y.untyped_storage().data_ptr()] = y.untyped_storage().nbytes()
    return sum(seen.values())


def make_step(fn, inputs, dy):
    """A closure running fn(*inputs) and its backward with upstream gradient dy once."""

    def step():
        for t in inputs:
            t.grad = None
        fn(*inputs).backward(dy)

    return step


def fit_exponent(Ts, ms):
    """The slope of the least-squares line through (log T, log t): t ~ T^slope."""
    return float(np.polyfit(np.log(Ts), np.log(ms), 1)[0]) if len(Ts) >= 2 else None


def plot(results, exponents, path):
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax = fig.subplots(1, 2)
    for name in exponents:
        Ts = [int(T) for T, r in results.items() if name in r]
        ms = [results[str(T)][name]["ms"] for T in Ts]
        mib = [results[str(T)][name]["saved_mib"] for T in Ts]
        slope = exponents[name]
        label = name if slope is None else f"{name} (slope {slope:.2f})"
        line = ax[0].plot(Ts, ms, "o-", label=label)[0]
        if slope is not None:  # the fitted line through the points
            c = np.polyfit(np.log(Ts), np.log(ms), 1)
            ax[0].plot(Ts, np.exp(np.polyval(c, np.log(Ts))), ":", color=line.get_color())
        ax[1].plot(Ts, mib, "o-", label=name, color=line.get_color())
    ax[0].set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="ms, forward + backward (median)",
              title="time against T (dotted: least-squares fit)")  # fmt: skip
    ax[1].set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="MiB saved for backward",
              title="memory held between forward and backward")  # fmt: skip
    for a in ax:
        a.set_xscale("log", base=2)
        a.legend()
    fig.savefig(path, dpi=110)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seq-lens", type=positive_int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384],
                   help="T (default 512 1024 2048 4096 8192 16384)")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=1, help="B (default 1)")
    p.add_argument("--n-head", type=positive_int, default=4, help="nh (default 4)")
    p.add_argument("--head-dim", type=positive_int, default=64, help="d (default 64)")
    p.add_argument("--k", type=positive_int, default=128, help="Linformer's projected length (default 128)")
    p.add_argument("--chunk-len", type=positive_int, default=64, help="LSH attention's chunk length (default 64)")
    p.add_argument("--n-hashes", type=positive_int, default=1, help="LSH attention's hash rounds (default 1)")
    p.add_argument("--max-scores-mib", type=positive_int, default=512,
                   help="skip full attention where its B nh T^2 float32 weights exceed this (default 512)")  # fmt: skip
    p.add_argument("--repeats", type=positive_int, default=3, help="rounds (default 3)")
    p.add_argument("--block", type=positive_int, default=1, help="timed calls per contender and round (default 1)")
    p.add_argument("--pause", type=nonneg_float, default=0.1, help="seconds of pause before each block (default 0.1)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--out", default=str(ROOT / "runs" / "benchmarks" / "long_attention.json"),
                   help="the JSON; the figure goes beside it as .png")  # fmt: skip
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    lin = import_script("06-transformers/linformer_torch.py")
    lsh, lsh_note = load_lsh()
    B, nh, d, kp = args.batch_size, args.n_head, args.head_dim, args.k
    print(f"long attention: forward + backward, B {B}, nh {nh}, d {d}, float32, Linformer k {kp}, LSH chunk "
          f"{args.chunk_len}, {args.n_hashes} hash(es); median of {args.repeats} rounds x {args.block} calls; "
          f"{torch.get_num_threads()} torch threads, {platform.processor() or platform.machine()}")  # fmt: skip
    if lsh_note:
        print(f"note: LSH attention skipped: {lsh_note}")
    results, skipped = {}, []
    for T in args.seq_lens:
        g = torch.Generator().manual_seed(args.seed * 100_003 + T)
        q, k, v, dy = (torch.randn(B, nh, T, d, generator=g) for _ in range(4))
        for t in (q, k, v):
            t.requires_grad_(True)
        contenders = {}
        scores_mib = B * nh * T * T * 4 / 2**20
        if scores_mib <= args.max_scores_mib:
            contenders["full"] = (lin.full_attention, [q, k, v])
        else:
            skipped.append({"contender": "full", "T": T, "why": f"its weights would take {scores_mib:,.0f} MiB "
                            f"> --max-scores-mib {args.max_scores_mib}"})  # fmt: skip
            print(f"  T {T}: full attention skipped: its (B nh T^2) weights would take {scores_mib:,.0f} MiB, "
                  f"over the cap of {args.max_scores_mib} MiB")  # fmt: skip
        if kp <= T:
            E, F = (torch.randn(nh, kp, T, generator=g).div_(T**0.5).requires_grad_(True) for _ in range(2))
            contenders["linformer"] = (lin.linformer_attention, [q, k, v, E, F])
        else:
            skipped.append({"contender": "linformer", "T": T, "why": f"k {kp} > T"})
        if lsh is not None:
            n_buckets = max(2, 2 * T // args.chunk_len)
            lsh_gen = torch.Generator().manual_seed(args.seed)

            def lsh_fn(qk, v, n_buckets=n_buckets, gen=lsh_gen, lsh=lsh):
                return lsh(qk, v, n_buckets, n_hashes=args.n_hashes, chunk_len=args.chunk_len, generator=gen)

            contenders["lsh"] = (lsh_fn, [q, v])
        steps, memory = {}, {}
        for name, (fn, inputs) in contenders.items():
            try:
                memory[name] = saved_bytes(fn, inputs) / 2**20
                steps[name] = make_step(fn, inputs, dy)
                steps[name]()  # the first call, untimed: a failure shows here
            except Exception as exc:  # noqa: BLE001 (reformer_torch.py is written beside this: report, go on)
                if name != "lsh":
                    raise
                lsh, lsh_note = None, f"lsh_attention failed at T {T}: {type(exc).__name__}: {exc}"
                print(f"note: LSH attention dropped from here on: {lsh_note}")
                steps.pop(name, None)
        times = {name: [] for name in steps}
        for _ in range(args.repeats):
            for name, step in steps.items():
                time.sleep(args.pause)  # the previous contender's worker threads go idle
                step()  # untimed
                for _ in range(args.block):
                    t0 = time.perf_counter()
                    step()
                    times[name].append(time.perf_counter() - t0)
        results[str(T)] = {name: {"ms": 1e3 * statistics.median(t), "times_s": t, "saved_mib": memory[name]}
                           for name, t in times.items()}  # fmt: skip
        print(f"  T {T:6d}: " + ", ".join(f"{n} {r['ms']:9.1f} ms, {r['saved_mib']:8.1f} MiB saved"
                                          for n, r in results[str(T)].items()), flush=True)  # fmt: skip
    names = [n for n in ("full", "linformer", "lsh") if any(n in r for r in results.values())]
    exponents = {}
    for name in names:
        Ts = [int(T) for T, r in results.items() if name in r]
        exponents[name] = fit_exponent(Ts, [results[str(T)][name]["ms"] for T in Ts])
        shown = "n/a (one length)" if exponents[name] is None else f"{exponents[name]:.2f}"
        print(f"{name:>9}: time ~ T^{shown} over T {Ts[0]}..{Ts[-1]} (least squares on log-log; goal: "
              f"{'about 2' if name == 'full' else 'about 1'})")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(results, exponents, out.with_suffix(".png"))
    result = {"config": vars(args) | {"torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                                      "machine": platform.processor() or platform.machine()},
              "results": results, "exponents": exponents, "skipped": skipped, "lsh_note": lsh_note,
              "memory_method": "bytes saved for backward (saved_tensors_hooks, inputs left out) + output"}  # fmt: skip
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
