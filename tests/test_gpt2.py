"""Tests of 06-transformers/gpt2_torch.py, GPT-2 from scratch.

The presets' parameter counts on the meta device; the model against Hugging Face's GPT2LMHeadModel
(a tiny random one saved with save_pretrained and read back through GPT.from_hf and --init-from):
equal logits in float32 and float64, at Hugging Face's initialisation and with weights redrawn at
std 0.2, and equal greedy generations; the KV cache against full recomputation at every step, the
hand-written attention against SDPA, causality, GPT-2's initialisation, top-k and top-p sampling,
the learning-rate schedule, the batches; smoke runs on Tiny Shakespeare (characters and BPE), --sample,
--resume against an uninterrupted run, and two gloo processes under torchrun ending with equal weights.
"""

import json
import math
import os
import socket
import subprocess
import sys

import decoder_checks
import pytest
import torch
from conftest import ROOT

transformers = pytest.importorskip("transformers")  # a dev dependency: always installed in CI
from safetensors.torch import load_file, save_file  # noqa: E402
from tiny_tokenizer import byte_level_tokenizer  # noqa: E402

SCRIPT = "06-transformers/gpt2_torch.py"


@pytest.fixture(scope="module")
def g2(load_script):
    return load_script(SCRIPT)


def tiny(g2, **kw):
    return g2.GPTConfig(
        **{
            "block_size": 16,
            "vocab_size": 37,
            "n_layer": 2,
            "n_head": 3,
            "n_embd": 12,
            "dropout": 0.0,
            "bias": True,
            **kw,
        }
    )


def redraw(model, std=0.2, seed=0):
    return decoder_checks.redraw(model, ("ln_1.weight", "ln_2.weight", "ln_f.weight"), std, seed)


# %% parameter counts


@pytest.mark.parametrize(
    "name, count",
    [("gpt2", 124_439_808), ("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)],
)
def test_preset_parameter_counts(g2, name, count):
    with torch.device("meta"):
        model = g2.GPT(g2.PRESETS[name])
    assert model.num_params() == count
    assert model.lm_head.weight is model.wte.weight  # tied: counted once


def test_default_config_is_nanogpts_cpu_recipe(g2):
    """4 layers, 4 heads, 128 wide, 64 positions, 65 characters, no biases: nanoGPT's 804,096 parameters."""
    assert g2.GPT(g2.GPTConfig()).num_params() == 804_096


# %% against Hugging Face


def hf_gpt2(n_positions=16, vocab_size=37, n_layer=2, n_head=3, n_embd=12, seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_positions=n_positions,
        vocab_size=vocab_size,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Two saved Hugging Face models: at their own initialisation, and with weights redrawn at std 0.2."""
    dirs = {}
    for name, std in [("init", None), ("std0.2", 0.2)]:
        model = hf_gpt2()
        if std is not None:
            redraw(model, std)
        d = tmp_path_factory.mktemp(name)
        model.save_pretrained(d)
        dirs[name] = d
    return dirs


@pytest.mark.parametrize("weights", ["init", "std0.2"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_from_hf_logits_equal_huggingface(g2, hf_dirs, weights, dtype, tol):
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dirs[weights]).to(dtype).eval()
    ours = g2.GPT.from_hf(hf_dirs[weights]).to(dtype).eval()
    idx = torch.randint(0, 37, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(idx).logits
        got, _ = ours(idx)
    assert got.shape == (3, 16, 37)
    assert (got - want).abs().max().item() <= tol * max(1.0, want.abs().max().item())
    if weights == "std0.2":  # the redrawn weights make the logits large: a wrong GELU would show
        assert want.abs().max().item() > 1.0


def test_from_hf_loss_and_greedy_generation_equal_huggingface(g2, hf_dirs):
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dirs["std0.2"]).double().eval()
    ours = g2.GPT.from_hf(hf_dirs["std0.2"]).double().eval()
    idx = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (
            abs(
                ours(idx, idx)[1].item()
                - torch.nn.functional.cross_entropy(hf(idx).logits.flatten(0, 1), idx.flatten()).item()
            )
            < 1e-12
        )
        want = hf.generate(idx, max_new_tokens=11, do_sample=False, attention_mask=torch.ones_like(idx))
    for use_cache in (True, False):
        assert torch.equal(ours.generate(idx, 11, temperature=0, use_cache=use_cache), want)


def test_from_hf_reads_the_released_layout(g2, hf_dirs, tmp_path):
    """The released gpt2 files name tensors without "transformer.", omit lm_head and carry each block's causal
    mask as a buffer "h.i.attn.bias": from_hf reads that layout too."""
    tensors = load_file(hf_dirs["std0.2"] / "model.safetensors")
    released = {k.removeprefix("transformer."): v for k, v in tensors.items() if k != "lm_head.weight"}
    for i in range(2):
        released[f"h.{i}.attn.bias"] = torch.ones(1, 1, 16, 16).tril()
    save_file(released, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((hf_dirs["std0.2"] / "config.json").read_text())
    a, b = g2.GPT.from_hf(tmp_path), g2.GPT.from_hf(hf_dirs["std0.2"])
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_from_hf_refuses_what_is_not_a_gpt2(g2, tmp_path):
    with pytest.raises(g2.DataError, match="config.json and model.safetensors"):
        g2.GPT.from_hf(tmp_path)
    model = transformers.OpenAIGPTLMHeadModel(
        transformers.OpenAIGPTConfig(n_positions=8, vocab_size=11, n_layer=1, n_head=2, n_embd=4)
    )
    model.save_pretrained(tmp_path)
    with pytest.raises(g2.DataError, match="not a GPT-2"):
        g2.GPT.from_hf(tmp_path)


def test_init_from_samples_and_fine_tunes(g2, tmp_path):
    """--init-from DIR: --sample with top-k 1 is Hugging Face's greedy generation, decoded by the folder's
    tokenizer; training starts from the released weights (their loss, not a fresh model's) and lowers it."""
    tok = byte_level_tokenizer(270)
    hf = hf_gpt2(n_positions=64, vocab_size=270, n_layer=2, n_head=2, n_embd=16)
    redraw(hf, 0.2)
    hf.save_pretrained(tmp_path / "hf")
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    prompt = "To be"
    m = g2.main(
        [
            "--init-from",
            str(tmp_path / "hf"),
            "--sample",
            "--prompt",
            prompt,
            "--top-k",
            "1",
            "--sample-len",
            "12",
            "--device",
            "cpu",
            "--out-dir",
            str(tmp_path / "s"),
        ]
    )
    ids = torch.tensor([tok.encode(prompt).ids])
    with torch.no_grad():
        want = hf.generate(ids, max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(ids))
    assert m["sample"] == tok.decode(want[0].tolist())

    m = g2.main(
        [
            "--init-from",
            str(tmp_path / "hf"),
            "--smoke",
            "--block-size",
            "32",
            "--device",
            "cpu",
            "--out-dir",
            str(tmp_path / "ft"),
        ]
    )
    assert m["params"] == hf.num_parameters() - (64 - 32) * 16  # the position table cropped to 32
    assert m["config"]["block_size"] == 32 and m["tokenizer"] == "hf"
    assert m["val_loss"] < m["history"]["val_loss"][0]
    # at step 0 the loss is that of the loaded weights (large, std 0.2), not a fresh model's ln(270) = 5.6
    assert m["history"]["val_loss"][0] > math.log(270) + 0.3


def test_init_from_refusals(g2, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        g2.main(["--init-from", str(tmp_path), "--n-layer", "2", "--smoke", "--out-dir", str(tmp_path)])
    assert exc.value.code == 2 and "--n-layer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # a folder that holds no model: one line, no traceback
        g2.main(["--init-from", str(tmp_path / "nothing"), "--smoke", "--out-dir", str(tmp_path)])
    assert isinstance(exc.value.code, str) and exc.value.code.startswith("error: ")


# %% KV cache, SDPA, causality


@pytest.mark.parametrize("sdpa", [False, True])
def test_cached_logits_equal_recomputation_at_every_step(g2, sdpa):
    torch.manual_seed(0)
    model = redraw(g2.GPT(tiny(g2), sdpa=sdpa)).double().eval()
    idx = torch.randint(0, 37, (2, 16))
    with torch.no_grad():
        full, _ = model(idx)
    cache = [{} for _ in model.h]
    steps = decoder_checks.cached_steps(model, idx, cache, [4])  # a prompt of 4, then one token at a time
    assert (steps - full).abs().max().item() < 1e-12
    assert cache[0]["k"].shape == (2, 3, 16, 4)


def test_generation_with_and_without_cache_is_the_same_past_block_size(g2):
    torch.manual_seed(1)
    decoder_checks.assert_generation_is_recomputation(redraw(g2.GPT(tiny(g2))).double().eval(), 37, 16)


def test_sdpa_equals_hand_written_attention(g2):
    torch.manual_seed(2)
    decoder_checks.assert_sdpa_is_hand_written(
        redraw(g2.GPT(tiny(g2))).double(), g2.GPT(tiny(g2), sdpa=True).double(), 37
    )


@pytest.mark.parametrize("sdpa", [False, True])
def test_causal_later_tokens_change_nothing_before_them(g2, sdpa):
    torch.manual_seed(3)
    decoder_checks.assert_causal(redraw(g2.GPT(tiny(g2), sdpa=sdpa)).double().eval(), 37)


def test_too_long_input_is_refused(g2):
    model = g2.GPT(tiny(g2))
    with pytest.raises(ValueError, match="block_size 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


# %% initialisation, sampling, schedule, batches, optimizer


def test_gpt2_initialisation(g2):
    torch.manual_seed(4)
    config = g2.GPTConfig(block_size=64, vocab_size=300, n_layer=6, n_head=4, n_embd=256, bias=True)
    model = g2.GPT(config)
    assert model.lm_head.weight is model.wte.weight
    stds = {name: p.std().item() for name, p in model.named_parameters() if p.dim() == 2}
    for name, std in stds.items():
        want = 0.02 / math.sqrt(2 * 6) if name.endswith("c_proj.weight") else 0.02
        assert abs(std / want - 1) < 0.06, name
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.all(p == 0), name
        elif p.dim() == 1:
            assert torch.all(p == 1), name


def test_sample_next_temperature_top_k_top_p(g2):
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert g2.sample_next(logits, temperature=0).item() == 0
    g = torch.Generator().manual_seed(0)

    def draw(**kw):  # 4000 draws from the same distribution
        return g2.sample_next(logits.expand(4000, 4), generator=g, **kw).flatten()

    assert set(draw(top_k=2).tolist()) == {0, 1}
    assert set(draw(top_p=0.75).tolist()) == {0, 1}  # 0.5 + 0.3 >= 0.75: the nucleus is {0, 1}
    assert set(draw(top_p=0.85).tolist()) == {0, 1, 2}
    assert set(draw(top_p=0.1).tolist()) == {0}  # the likeliest token always stays
    freq = torch.bincount(draw(), minlength=4) / 4000
    assert (freq - torch.tensor([0.5, 0.3, 0.15, 0.05])).abs().max() < 0.03
    cold = torch.bincount(draw(temperature=0.5), minlength=4) / 4000  # p^2, renormalised
    want = torch.tensor([0.5, 0.3, 0.15, 0.05]) ** 2
    assert (cold - want / want.sum()).abs().max() < 0.03


def test_learning_rate_schedule(g2):
    lr = lambda it: g2.get_lr(it, 1e-3, 1e-4, 100, 2000)  # noqa: E731
    assert lr(0) == pytest.approx(1e-5) and lr(49) == pytest.approx(5e-4) and lr(99) == pytest.approx(1e-3)
    assert lr(100) == pytest.approx(1e-3)
    assert lr(1050) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half way down the cosine
    assert lr(2000) == lr(5000) == 1e-4
    assert all(lr(t) >= lr(t + 1) for t in range(100, 2100))


def test_get_batch_targets_are_the_next_tokens(g2):
    data = torch.arange(1000)
    x, y = g2.get_batch(data, 8, 16, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert x.shape == y.shape == (8, 16)
    assert torch.equal(y, x + 1)  # data[i] = i: each target is the next token
    assert torch.equal(x, x[:, :1] + torch.arange(16))  # contiguous windows
    assert int(x[:, 0].max()) + 16 < 1000


def test_weight_decay_on_matrices_only(g2):
    model = g2.GPT(tiny(g2))
    opt = g2.configure_optimizer(model, 1e-3, 0.1, (0.9, 0.99), torch.device("cpu"))
    decayed, plain = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    assert {names[id(p)] for p in decayed["params"]} >= {"wte.weight", "wpe.weight", "h.0.attn.c_attn.weight"}
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


# %% runs on the real corpus


def test_smoke_run_and_sample(g2, tmp_path):
    out = tmp_path / "run"
    m = g2.main(["--smoke", "--sdpa", "--device", "cpu", "--out-dir", str(out)])
    first = m["history"]["val_loss"][0]
    assert abs(first - math.log(m["vocab_size"])) < 0.3  # at initialisation: about uniform over the vocabulary
    assert m["val_loss"] < first - 0.6 and m["best_val_loss"] <= m["val_loss"]
    assert m["params"] > 10_000 and m["ms_per_iter"] > 0 and m["tokens_per_sec"] > 0
    assert json.loads((out / "metrics.json").read_text())["val_loss"] == m["val_loss"]
    assert (out / "loss.png").stat().st_size > 10_000 and (out / "checkpoint.pt").exists()
    s = g2.main(["--sample", "--prompt", "ROMEO:", "--sample-len", "40", "--device", "cpu", "--out-dir", str(out)])
    assert s["sample"].startswith("ROMEO:") and len(s["sample"]) == 46


def test_bpe_smoke_run(g2, tmp_path):
    m = g2.main(["--smoke", "--tokenizer", "bpe", "--device", "cpu", "--out-dir", str(tmp_path)])
    assert m["tokenizer"] == "bpe" and m["vocab_size"] == 300
    assert m["val_loss"] < m["history"]["val_loss"][0] - 0.5


def test_resume_gives_the_weights_of_an_uninterrupted_run(g2, tmp_path):
    common = ["--smoke", "--dropout", "0.1", "--lr-decay-iters", "20", "--eval-interval", "10", "--device", "cpu"]
    whole = g2.main([*common, "--max-iters", "20", "--out-dir", str(tmp_path / "a")])
    g2.main([*common, "--max-iters", "10", "--out-dir", str(tmp_path / "b")])
    resumed = g2.main([*common, "--max-iters", "20", "--resume", "--out-dir", str(tmp_path / "b")])
    assert resumed["history"] == whole["history"]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert a["iter"] == b["iter"] == 20
    for name, p in a["model"].items():
        assert torch.equal(p, b["model"][name]), name


def test_resume_refuses_a_changed_model(g2, tmp_path, capsys):
    g2.main(["--smoke", "--max-iters", "10", "--eval-interval", "10", "--device", "cpu", "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        g2.main(["--smoke", "--n-embd", "16", "--resume", "--device", "cpu", "--out-dir", str(tmp_path)])
    assert exc.value.code == 2 and "--resume" in capsys.readouterr().err


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_end_with_equal_weights(tmp_path):
    """torchrun with 2 processes on the CPU: each rank draws its own batches, DDP averages the gradients, and
    at the end every rank holds the same weights (ddp_weight_spread, measured across ranks, is exactly 0)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(ROOT / SCRIPT),
        "--smoke",
        "--max-iters",
        "20",
        "--eval-interval",
        "10",
        "--device",
        "cpu",
        "--out-dir",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["ddp_weight_spread"] == 0.0
    assert m["val_loss"] < m["history"]["val_loss"][0]


# %% refusals


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--top-p", "1.5"], "--top-p"),
        (["--top-p", "0"], "--top-p"),
        (["--max-iters", "0"], "--max-iters"),
        (["--grad-accum", "0"], "--grad-accum"),
        (["--min-lr", "-1"], "--min-lr"),
        (["--vocab-size", "300"], "--vocab-size"),
        (["--grad-clip", "nan"], "--grad-clip"),
        (["--init-from", "x", "--resume"], "--init-from"),
    ],
)
def test_bad_flags(g2, usage_error, argv, flag):
    assert flag in usage_error(g2, argv, loader="load_text")


def test_sample_without_checkpoint_and_a_prompt_outside_the_vocabulary(g2, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        g2.main(["--sample", "--device", "cpu", "--out-dir", str(tmp_path / "none")])
    assert exc.value.code == 2 and "no checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        g2.main(["--smoke", "--prompt", "\u00e9t\u00e9", "--device", "cpu", "--out-dir", str(tmp_path)])
    assert exc.value.code == 2 and "--prompt" in capsys.readouterr().err


def test_missing_data_is_one_line(g2, missing_data_error):
    assert "tinyshakespeare" in missing_data_error(g2.main)


def test_gpt_benchmark_runs(load_script, tmp_path):
    """benchmarks/gpt.py at a tiny size: the cached and uncached generations are the same tokens, and the three
    training contenders are timed with their ratios to gpt2_torch.py --sdpa."""
    out = load_script("benchmarks/gpt.py").main(
        ["--new-tokens", "4", "8", "--repeats", "1", "--steps", "1", "--out", str(tmp_path / "gpt.json")]
    )
    assert [r["new_tokens"] for r in out["generation"]] == [4, 8]
    assert all(r["same_tokens"] and r["speedup"] > 0 for r in out["generation"])
    rows = {r["contender"]: r for r in out["training"]}
    assert rows.keys() == {"torch_sdpa", "torch_hand", "jax"} and rows["torch_sdpa"]["ratio_to_torch_sdpa"] == 1
    assert json.loads((tmp_path / "gpt.json").read_text())["training"] == out["training"]
