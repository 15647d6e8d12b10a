"""Speed of the GPT scripts, as ratios within one run: generation with and without the KV cache, and training.

Generation (06-transformers/gpt2_torch.py, `GPT.generate`, greedy, batch 1, float32, CPU): a model of
nanoGPT's Shakespeare GPU size (6 layers, 6 heads, 384 wide, 65 tokens) with a 1,024-token context, so
512 new tokens stay inside it; random weights (speed does not depend on them). For each count of new
tokens in --new-tokens, `--repeats` interleaved rounds of: generate with the cache, generate without;
the medians give tokens/s and the speed-up. The two generations are checked to be the same tokens.

Training (nanoGPT's CPU recipe: 4 layers, 4 heads, 128 wide, block 64, batch 12, AdamW, clipping):
one optimizer step of gpt2_torch.py (hand attention and --sdpa) and the jitted `train_step` of
06-transformers/gpt_jax.py on the same random batches, --steps steps each after a warm-up (JAX's
compile is outside the clock; `block_until_ready` ends each JAX timing), interleaved in rounds;
training tokens/s = batch * block / median seconds per step, and the ratios to gpt2_torch.py --sdpa.

    python benchmarks/gpt.py [--new-tokens 128 256 512] [--repeats 3] [--steps 20]
Writes runs/benchmarks/gpt.json.
"""

import argparse
import importlib.util
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from data import positive_int

ROOT = Path(__file__).resolve().parent.parent


def import_script(relpath):
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def generation(g2, new_tokens, repeats):
    torch.manual_seed(0)
    model = g2.GPT(g2.GPTConfig(block_size=1024, vocab_size=65, n_layer=6, n_head=6, n_embd=384), sdpa=True).eval()
    idx = torch.zeros(1, 1, dtype=torch.long)
    rows = []
    for n in new_tokens:
        times, outs = {True: [], False: []}, {}
        for _ in range(repeats):
            for use_cache in (True, False):
                t, out = timed(lambda: model.generate(idx, n, temperature=0, use_cache=use_cache))  # noqa: B023
                times[use_cache].append(t)
                outs[use_cache] = out
        same = torch.equal(outs[True], outs[False])
        cached, full = statistics.median(times[True]), statistics.median(times[False])
        rows.append(
            {
                "new_tokens": n,
                "cache_tokens_per_s": n / cached,
                "no_cache_tokens_per_s": n / full,
                "speedup": full / cached,
                "same_tokens": same,
            }
        )
        print(
            f"{n:4d} new tokens: cache {n / cached:8.1f} tok/s, no cache {n / full:8.1f} tok/s, "
            f"speed-up {full / cached:5.2f}x, same tokens: {same}"
        )
    return rows


def training(g2, gj, steps, repeats):
    import jax

    B, T = 12, 64
    data = torch.randint(0, 65, (100_000,), generator=torch.Generator().manual_seed(0))
    contenders = {}
    for name, sdpa in [("torch_sdpa", True), ("torch_hand", False)]:
        torch.manual_seed(0)
        model = g2.GPT(g2.GPTConfig(), sdpa=sdpa)
        opt = g2.configure_optimizer(model, 1e-3, 0.1, (0.9, 0.99), torch.device("cpu"))
        gen = torch.Generator().manual_seed(0)

        def step(model=model, opt=opt, gen=gen):
            x, y = g2.get_batch(data, B, T, gen, torch.device("cpu"))
            _, loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        contenders[name] = step
    config = gj.GPTConfig()
    state = {"params": gj.init_params(config, jax.random.PRNGKey(0))}
    state["opt"] = gj.adamw_init(state["params"])
    jdata = jax.numpy.asarray(data.numpy())
    state["key"] = jax.random.PRNGKey(1)

    def jax_step():
        state["key"], kb, kd = jax.random.split(state["key"], 3)
        x, y = gj.get_batch(jdata, kb, B, T)
        state["params"], state["opt"], loss, _ = gj.train_step(state["params"], state["opt"], x, y, 1e-3, kd, config)
        loss.block_until_ready()

    contenders["jax"] = jax_step
    for step in contenders.values():  # warm-up: JAX compiles here, torch allocates
        for _ in range(3):
            step()
    per_step = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, step in contenders.items():
            t, _ = timed(lambda: [step() for _ in range(steps)])  # noqa: B023
            per_step[name].append(t / steps)
    ref = statistics.median(per_step["torch_sdpa"])
    rows = []
    for name, ts in per_step.items():
        s = statistics.median(ts)
        rows.append(
            {"contender": name, "ms_per_step": 1000 * s, "tokens_per_s": B * T / s, "ratio_to_torch_sdpa": ref / s}
        )
        print(
            f"{name:>11}: {1000 * s:7.2f} ms per step, {B * T / s:8.0f} training tokens/s, {ref / s:4.2f}x torch sdpa"
        )
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--new-tokens", type=positive_int, nargs="+", default=[128, 256, 512])
    p.add_argument("--repeats", type=positive_int, default=3, help="interleaved rounds; medians are reported")
    p.add_argument("--steps", type=positive_int, default=20, help="training steps per timing")
    p.add_argument("--out", default="runs/benchmarks/gpt.json")
    args = p.parse_args(argv)
    g2 = import_script("06-transformers/gpt2_torch.py")
    gj = import_script("06-transformers/gpt_jax.py")
    result = {
        "generation": generation(g2, args.new_tokens, args.repeats),
        "training": training(g2, gj, args.steps, args.repeats),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "argv": argv,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
