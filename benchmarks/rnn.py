"""Speed of the hand-written LSTMs against torch's nn.LSTM: forward + BPTT at a language-model size, as ratios.

Contenders, all float32 on the CPU, 1 layer, batch 32, 35 steps, input 256 (an embedding), hidden 256:
  numpy    05-rnns/lstm_numpy.py's `forward` + `backward` (hand-written BPTT: every weight gradient
           and dx), with the input projection hoisted out of the time loop
  scratch  05-rnns/lstm_torch.py's from-scratch `LSTM` module, forward + autograd backward
  torch    torch.nn.LSTM as shipped, forward + autograd backward. On an x86 CPU with float32 it runs
           oneDNN's fused RNN primitive (aten::mkldnn_rnn_layer and its backward: one native call
           per layer and direction, weights packed once for all time steps)
  aten     torch.nn.LSTM with oneDNN switched off (torch.backends.mkldnn.flags(enabled=False)):
           ATen's own LSTM, the same algorithm as the NumPy version (one input GEMM, a GEMM per
           step, fused gate kernels) in C++
For the torch modules x requires a gradient, so they compute the same gradients as the NumPy
backward (weights, biases, dx); the upstream gradient on the outputs is the same random array.
Goal: numpy / torch <= 1.3.

Timing: `--repeats` rounds; in each round every contender in turn pauses `--pause` seconds, makes
one untimed call, then `--block` timed calls. The rounds interleave the contenders, so a slow
spell of the machine hits all alike; the pause lets the previous library's worker threads, which
spin for a while after each call (OpenBLAS, OpenMP), go idle first: timed back to back, the
contender that follows another library pays for its spinning threads (the NumPy LSTM is slower
right after nn.LSTM than after a pause). Medians are reported, every time kept in
the JSON. NumPy's OpenBLAS takes its thread count from OPENBLAS_NUM_THREADS (or OMP_NUM_THREADS;
all cores if neither is set); torch is given the same number with torch.set_num_threads. If
lstm_torch.py is missing, the scratch contender is skipped and said so.

    python benchmarks/rnn.py [--repeats 6] [--block 5] [--batch-size 32] [--seq-len 35] [--hidden-size 256]
"""

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from data import nonneg_float, nonneg_int, positive_int

ROOT = Path(__file__).resolve().parent.parent
GOAL = 1.3


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


def numpy_step(x, dout, hidden, seed):
    """A closure running lstm_numpy's forward and hand-written BPTT once."""
    lstm = import_script("05-rnns/lstm_numpy.py")
    layers = lstm.init_layers(np.random.default_rng(seed), x.shape[2], hidden, 1, "lstm", dtype=np.float32)

    def step():
        out, _, caches = lstm.forward(layers, x, cell="lstm")
        return lstm.backward(dout, None, caches, cell="lstm")

    return step


def torch_step(module, x, dout, onednn=True):
    """A closure running a torch LSTM module's forward and autograd backward once (weights and x).

    onednn=False runs it with oneDNN (mkldnn) switched off, so nn.LSTM takes ATen's own path.
    """
    import torch

    xt, dt = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(dout)

    def step():
        module.zero_grad(set_to_none=True)
        xt.grad = None
        with warnings.catch_warnings():  # flags() warns that TF32 on oneDNN is for Intel GPUs only
            warnings.simplefilter("ignore", UserWarning)
            with torch.backends.mkldnn.flags(enabled=onednn):
                out, _ = module(xt)
                out.backward(dt)

    return step


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=positive_int, default=6, help="rounds (default 6)")
    p.add_argument("--block", type=positive_int, default=5, help="timed calls per contender and round (default 5)")
    p.add_argument("--pause", type=nonneg_float, default=0.3, help="seconds of pause before each block (default 0.3)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="batch size (default 32)")
    p.add_argument("--seq-len", type=positive_int, default=35, help="time steps (default 35)")
    p.add_argument("--input-size", type=positive_int, default=256, help="input features (default 256)")
    p.add_argument("--hidden-size", type=positive_int, default=256, help="hidden units (default 256)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--out", default=str(ROOT / "runs" / "benchmarks" / "rnn.json"))
    args = p.parse_args(argv)
    import torch

    threads = blas_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.seq_len, args.batch_size, args.input_size)).astype(np.float32)
    dout = rng.standard_normal((args.seq_len, args.batch_size, args.hidden_size)).astype(np.float32)

    steps = {"numpy": numpy_step(x, dout, args.hidden_size, args.seed)}
    scratch_path = ROOT / "05-rnns" / "lstm_torch.py"
    if scratch_path.exists():
        steps["scratch"] = torch_step(
            import_script("05-rnns/lstm_torch.py").LSTM(args.input_size, args.hidden_size), x, dout
        )
    else:
        print("05-rnns/lstm_torch.py not found: the from-scratch torch LSTM is not timed")
    lstm = torch.nn.LSTM(args.input_size, args.hidden_size)
    steps["torch"] = torch_step(lstm, x, dout)
    steps["aten"] = torch_step(lstm, x, dout, onednn=False)

    print(
        f"rnn: LSTM forward + BPTT, batch {args.batch_size}, {args.seq_len} steps, input {args.input_size}, "
        f"hidden {args.hidden_size}, 1 layer, float32, median of {args.repeats} rounds x {args.block} calls"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {threads} BLAS / torch threads; "
        f"numpy {np.__version__}, torch {torch.__version__}"
    )
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            time.sleep(args.pause)  # the previous contender's spinning worker threads go idle
            step()  # untimed: caches and allocators warm up for this contender
            for _ in range(args.block):
                t0 = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - t0)
    results = {
        name: {"ms": 1e3 * statistics.median(t), "min_ms": 1e3 * min(t), "times_s": t} for name, t in times.items()
    }
    for name, r in results.items():
        print(f"  {name:8s} {r['ms']:8.2f} ms (median; min {r['min_ms']:.2f})")
    ratios = {f"{k}/torch": results[k]["ms"] / results["torch"]["ms"] for k in steps if k != "torch"}
    ratios["numpy/aten"] = results["numpy"]["ms"] / results["aten"]["ms"]
    print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()) + f" (goal numpy/torch <= {GOAL})")
    out = {
        "config": vars(args) | {"threads": threads, "python": sys.version.split()[0]},
        "results": results,
        "ratios": ratios,
        "goal_numpy_over_torch": GOAL,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
