"""Tests of 06-transformers/llama_torch.py, LLaMA as a list of changes to GPT-2.

The presets' parameter counts on the meta device; the model against Hugging Face's LlamaForCausalLM (tiny
random ones with grouped-query attention and a RoPE base of 1000, saved with save_pretrained and read back
through Llama.from_hf and --init-from, from a config with rope_parameters and from one with the old rope_theta
key): equal logits in float32 and float64, at Hugging Face's initialisation and with weights redrawn at std 0.2,
equal greedy generations; RMSNorm and RoPE against Hugging Face's pieces; the KV cache against recomputation,
grouped-query attention against multi-head attention, the hand-written attention against SDPA, causality;
the small model's parameter count against gpt2_torch.py's; smoke runs on Tiny Shakespeare with the GPT-2
comparison, --sample, --resume against an uninterrupted run, and the refusals.
"""

import json
import math

import decoder_checks
import pytest
import torch
from tiny_tokenizer import byte_level_tokenizer

transformers = pytest.importorskip("transformers")  # a dev dependency: always installed in CI
from transformers.models.llama import modeling_llama  # noqa: E402

SCRIPT = "06-transformers/llama_torch.py"
HF = {"vocab_size": 37, "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4,
      "num_key_value_heads": 2, "max_position_embeddings": 32, "rms_norm_eps": 1e-5}  # fmt: skip


@pytest.fixture(scope="module")
def ll(load_script):
    return load_script(SCRIPT)


def tiny(ll, **kw):
    """4 query heads of width 8 sharing 2 key/value heads, a SwiGLU width off Meta's rule, 16 positions."""
    fields = {"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 37, "norm_eps": 1e-5}
    return ll.LlamaConfig(**{**fields, "rope_theta": 100.0, "max_seq_len": 16, "hidden_dim": 40, **kw})


def redraw(model, std=0.2, seed=0):
    return decoder_checks.redraw(model, "norm.weight", std, seed)


def hf_llama(seed=0, **kw):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        **{**HF, **kw},
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
        bos_token_id=0,
        eos_token_id=None,
        pad_token_id=0,
        attn_implementation="eager",
    )
    return transformers.LlamaForCausalLM(config).eval()


# %% parameter counts


@pytest.mark.parametrize(
    "name, count",
    [
        ("llama1-7b", 6_738_415_616),
        ("llama2-7b", 6_738_415_616),
        ("llama2-70b", 68_976_648_192),
        ("llama3-8b", 8_030_261_248),
        ("llama3-70b", 70_553_706_496),
    ],
)
def test_preset_parameter_counts(ll, name, count):
    with torch.device("meta"):
        model = ll.Llama(ll.PRESETS[name])
    assert model.num_params() == count
    assert model.output.weight is not model.tok_embeddings.weight  # untied


def test_swiglu_width_rule(ll):
    """2/3 * 4d, times ffn_dim_multiplier, rounded up to multiple_of: the released models' widths."""
    widths = {name: ll.ffn_hidden_dim(c) for name, c in ll.PRESETS.items()}
    assert widths == {"llama1-7b": 11008, "llama2-7b": 11008, "llama2-70b": 28672, "llama3-8b": 14336,
                      "llama3-70b": 28672}  # fmt: skip


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("vocab", [65, 512])
def test_small_model_has_gpt2s_parameter_count(ll, load_script, version, vocab):
    """gpt2_params is gpt2_torch.py's count, and the matched SwiGLU width lands within half a unit of it
    (3 d n_layers / 2 parameters); at version 1 on characters it is Meta's rule, 2/3 * 4d = 341."""
    g2 = load_script("06-transformers/gpt2_torch.py")
    kv_heads, theta, eps, context = ll.VERSIONS[version]
    T = 64 * context
    target = ll.gpt2_params(vocab, T, 4, 128)
    assert target == g2.GPT(g2.GPTConfig(T, vocab, 4, 4, 128, 0.0, False)).num_params()
    config = ll.LlamaConfig(128, 4, 4, kv_heads(4), vocab, 1, None, eps, theta, T)
    config.hidden_dim = ll.matched_hidden_dim(config, target)
    with torch.device("meta"):
        count = ll.Llama(config).num_params()
    assert abs(count - target) <= 1.5 * 128 * 4
    if version == 1 and vocab == 65:
        assert config.hidden_dim == int(2 * 4 * 128 / 3) == 341


# %% against Hugging Face


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Saved Hugging Face models: at their own initialisation, with weights redrawn at std 0.2, and the redrawn
    one again with config.json in the old layout (rope_theta at the top level, no rope_parameters)."""
    dirs = {}
    for name, std in [("init", None), ("std0.2", 0.2)]:
        model = hf_llama()
        if std is not None:
            redraw(model, std)
        dirs[name] = tmp_path_factory.mktemp(name)
        model.save_pretrained(dirs[name])
    old = tmp_path_factory.mktemp("old")
    config = json.loads((dirs["std0.2"] / "config.json").read_text())
    assert config.pop("rope_parameters") == {"rope_type": "default", "rope_theta": 1000.0}
    (old / "config.json").write_text(json.dumps({**config, "rope_theta": 1000.0, "rope_scaling": None}))
    (old / "model.safetensors").write_bytes((dirs["std0.2"] / "model.safetensors").read_bytes())
    dirs["old_rope_theta"] = old
    return dirs


@pytest.mark.parametrize("weights", ["init", "std0.2", "old_rope_theta"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-6)])
def test_from_hf_logits_equal_huggingface(ll, hf_dirs, weights, dtype, tol):
    """float64 agrees to about 1e-7 only: Hugging Face computes RMSNorm and RoPE in float32 in any model."""
    reference = hf_dirs["std0.2" if weights == "old_rope_theta" else weights]
    hf = transformers.LlamaForCausalLM.from_pretrained(reference).to(dtype).eval()
    ours = ll.Llama.from_hf(hf_dirs[weights]).to(dtype).eval()
    assert ours.config.rope_theta == 1000.0 and ours.config.n_kv_heads == 2 and ours.config.hidden_dim == 40
    idx = torch.randint(0, 37, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(idx).logits
        got, _ = ours(idx)
    assert got.shape == (3, 16, 37)
    assert (got - want).abs().max().item() <= tol * max(1.0, want.abs().max().item())
    if weights != "init":  # the redrawn weights make the logits large: a wrong nonlinearity would show
        assert want.abs().max().item() > 1.0


def test_from_hf_loss_and_greedy_generation_equal_huggingface(ll, hf_dirs):
    hf = transformers.LlamaForCausalLM.from_pretrained(hf_dirs["std0.2"]).double().eval()
    ours = ll.Llama.from_hf(hf_dirs["std0.2"]).double().eval()
    idx = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hf_loss = torch.nn.functional.cross_entropy(hf(idx).logits.flatten(0, 1), idx.flatten())
        assert abs(ours(idx, idx)[1].item() - hf_loss.item()) < 1e-6
        want = hf.generate(idx, max_new_tokens=20, do_sample=False, attention_mask=torch.ones_like(idx))
    for use_cache in (True, False):
        assert torch.equal(ours.generate(idx, 20, temperature=0, use_cache=use_cache), want)


def test_tied_embeddings_load_as_a_copy(ll, tmp_path):
    hf = redraw(hf_llama(tie_word_embeddings=True))
    hf.save_pretrained(tmp_path)
    ours = ll.Llama.from_hf(tmp_path).eval()
    assert torch.equal(ours.output.weight, ours.tok_embeddings.weight)
    idx = torch.randint(0, 37, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (ours(idx)[0] - hf(idx).logits).abs().max().item() < 1e-4


def test_rmsnorm_equals_huggingface(ll):
    torch.manual_seed(4)
    x = torch.randn(3, 5, 32) * 3
    ours, hf = ll.RMSNorm(32, 1e-5), modeling_llama.LlamaRMSNorm(32, eps=1e-5)
    with torch.no_grad():
        ours.weight.normal_()
        hf.weight.copy_(ours.weight)
    assert (ours(x) - hf(x)).abs().max().item() < 1e-6


def test_rope_equals_huggingface_up_to_the_layout(ll):
    """Hugging Face rotates the halves (x_i, x_i+hd/2), Meta the pairs (x_2i, x_2i+1): with the coordinates of
    each head reordered into HF's layout, HF's rotation is ours, also at positions that do not start at 0."""
    hd = 8
    config = transformers.LlamaConfig(**HF, rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
    q, k = torch.randn(2, 4, 16, hd), torch.randn(2, 2, 16, hd)
    positions = torch.arange(5, 21)
    cos_hf, sin_hf = modeling_llama.LlamaRotaryEmbedding(config)(q, positions[None])
    to_hf = torch.cat([torch.arange(0, hd, 2), torch.arange(1, hd, 2)])  # HF coordinate j holds our to_hf[j]
    want_q, want_k = modeling_llama.apply_rotary_pos_emb(q[..., to_hf], k[..., to_hf], cos_hf, sin_hf)
    cos, sin = ll.rope_tables(hd, 32, 1000.0)
    got_q, got_k = ll.apply_rope(q, cos[positions], sin[positions]), ll.apply_rope(k, cos[positions], sin[positions])
    assert (got_q[..., to_hf] - want_q).abs().max().item() < 1e-5
    assert (got_k[..., to_hf] - want_k).abs().max().item() < 1e-5


def test_rope_scores_depend_on_the_offset_only(ll):
    """q_m . k_n after RoPE is a function of m - n: shifting both positions by 7 changes no score."""
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)
    cos, sin = (t.double() for t in ll.rope_tables(8, 32, 100.0))

    def score(m, n):  # q at position m, k at position n
        return (ll.apply_rope(q, cos[m, None], sin[m, None]) * ll.apply_rope(k, cos[n, None], sin[n, None])).sum()

    assert abs(score(9, 3) - score(16, 10)) < 1e-6 and abs(score(9, 3) - score(3, 9)) > 1e-3


def test_init_from_samples_and_fine_tunes(ll, tmp_path):
    """--init-from DIR: --sample with top-k 1 is Hugging Face's greedy generation, decoded by the folder's
    tokenizer; training starts from the released weights (their loss, not a fresh model's) and lowers it."""
    tok = byte_level_tokenizer(270)
    hf = redraw(hf_llama(vocab_size=270, hidden_size=16, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=64))  # fmt: skip
    hf.save_pretrained(tmp_path / "hf")
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    common = ["--init-from", str(tmp_path / "hf"), "--device", "cpu"]
    m = ll.main([*common, "--sample", "--prompt", "To be", "--top-k", "1", "--sample-len", "12", "--out-dir",
                 str(tmp_path / "s")])  # fmt: skip
    ids = torch.tensor([tok.encode("To be").ids])
    with torch.no_grad():
        want = hf.generate(ids, max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(ids))
    assert m["sample"] == tok.decode(want[0].tolist())

    m = ll.main([*common, "--smoke", "--block-size", "32", "--out-dir", str(tmp_path / "ft")])
    assert m["params"] == hf.num_parameters() and m["tokenizer"] == "hf" and m["gpt2_params"] is None
    assert m["val_loss"] < m["history"]["val_loss"][0]
    # at step 0 the loss is that of the loaded weights (large, std 0.2), not a fresh model's ln(270) = 5.6
    assert m["history"]["val_loss"][0] > math.log(270) + 0.3


def test_from_hf_refuses_what_it_does_not_implement(ll, hf_dirs, tmp_path):
    with pytest.raises(ll.DataError, match="config.json and model.safetensors"):
        ll.Llama.from_hf(tmp_path)
    config = json.loads((hf_dirs["init"] / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes((hf_dirs["init"] / "model.safetensors").read_bytes())
    for change, message in [
        ({"model_type": "mistral"}, "not a Llama"),
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, "RoPE scaling 'llama3'"),
        ({"rope_parameters": None, "rope_theta": 1e4, "rope_scaling": {"type": "linear", "factor": 2}}, "'linear'"),
        ({"attention_bias": True}, "biases"),
        ({"hidden_act": "gelu"}, "not SiLU"),
        ({"intermediate_size": 41}, "do not fit"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ValueError, match=message):
            ll.Llama.from_hf(tmp_path)


def test_init_from_refusals(ll, tmp_path, capsys):
    for flags in (["--n-kv-heads", "1"], ["--compare-gpt2"]):
        with pytest.raises(SystemExit) as exc:
            ll.main(["--init-from", str(tmp_path), *flags, "--smoke", "--out-dir", str(tmp_path)])
        assert exc.value.code == 2 and flags[0] in capsys.readouterr().err
    for extra in ([], ["--sample"]):  # a folder that holds no model: one line, no traceback
        with pytest.raises(SystemExit) as exc:
            ll.main(["--init-from", str(tmp_path / "nothing"), *extra, "--smoke", "--out-dir", str(tmp_path)])
        assert isinstance(exc.value.code, str) and exc.value.code.startswith("error: ")
        assert "\n" not in exc.value.code


# %% KV cache, grouped-query attention, SDPA, causality


@pytest.mark.parametrize("sdpa", [False, True])
def test_cached_logits_equal_recomputation_at_every_step(ll, sdpa):
    torch.manual_seed(0)
    model = redraw(ll.Llama(tiny(ll), sdpa=sdpa)).double().eval()
    idx = torch.randint(0, 37, (2, 16))
    with torch.no_grad():
        full, _ = model(idx)
    cache = [{} for _ in model.layers]
    steps = decoder_checks.cached_steps(model, idx, cache, [4, 7])  # a prompt in two chunks, then token by token
    assert (steps - full).abs().max().item() < 1e-12
    assert cache[0]["k"].shape == (2, 2, 16, 8)  # the cache holds the 2 key/value heads, not the 4 query heads


def test_generation_with_and_without_cache_is_the_same_past_max_seq_len(ll):
    torch.manual_seed(1)
    decoder_checks.assert_generation_is_recomputation(redraw(ll.Llama(tiny(ll))).double().eval(), 37, 16)


def test_grouped_query_attention_is_multi_head_attention_with_repeated_heads(ll):
    """repeat_kv gives query head h the key/value head h // n_rep; a GQA model whose wk, wv rows are duplicated
    head by head into a model with as many KV heads as query heads gives the same logits."""
    x = torch.randn(2, 3, 5, 8)
    assert ll.repeat_kv(x, 1) is x
    assert all(torch.equal(ll.repeat_kv(x, 2)[:, h], x[:, h // 2]) for h in range(6))
    torch.manual_seed(2)
    gqa = redraw(ll.Llama(tiny(ll))).double().eval()
    mha = ll.Llama(tiny(ll, n_kv_heads=4)).double().eval()
    sd = gqa.state_dict()
    for name in sd:
        if name.endswith(("wk.weight", "wv.weight")):
            sd[name] = sd[name].view(2, 8, 32).repeat_interleave(2, dim=0).reshape(32, 32)
    mha.load_state_dict(sd)
    idx = torch.randint(0, 37, (2, 16))
    with torch.no_grad():
        assert (gqa(idx)[0] - mha(idx)[0]).abs().max().item() < 1e-12


def test_sdpa_equals_hand_written_attention(ll):
    torch.manual_seed(3)
    decoder_checks.assert_sdpa_is_hand_written(
        redraw(ll.Llama(tiny(ll))).double(), ll.Llama(tiny(ll), sdpa=True).double(), 37
    )


@pytest.mark.parametrize("sdpa", [False, True])
def test_causal_later_tokens_change_nothing_before_them(ll, sdpa):
    torch.manual_seed(4)
    decoder_checks.assert_causal(redraw(ll.Llama(tiny(ll), sdpa=sdpa)).double().eval(), 37)


def test_too_long_input_is_refused(ll):
    with pytest.raises(ValueError, match="max_seq_len 16"):
        ll.Llama(tiny(ll))(torch.zeros(1, 17, dtype=torch.long))


# %% runs on the real corpus


def test_smoke_run_beside_gpt2_and_sample(ll, tmp_path):
    """LLaMA-1's small model and gpt2_torch.py on the same batches: equal steps and tokens, parameter counts
    within half a SwiGLU unit, both losses falling; the figure, checkpoints and both metrics.json written."""
    out = tmp_path / "run"
    m = ll.main(["--smoke", "--sdpa", "--device", "cpu", "--out-dir", str(out)])
    first = m["history"]["val_loss"][0]
    assert abs(first - math.log(m["vocab_size"])) < 0.3  # at initialisation: about uniform over the vocabulary
    assert m["val_loss"] < first - 0.6 and m["best_val_loss"] <= m["val_loss"]
    assert m["config"]["n_kv_heads"] == m["config"]["n_heads"] == 2 and m["config"]["rope_theta"] == 1e4
    assert m["train_tokens"] == 60 * 12 * 32 and m["ms_per_iter"] > 0
    gpt2 = json.loads((out / "gpt2" / "metrics.json").read_text())
    assert m["gpt2_params"] == gpt2["params"] == ll.gpt2_params(m["vocab_size"], 32, 2, 32)
    assert abs(m["llama_params"] - m["gpt2_params"]) <= 1.5 * 32 * 2
    assert m["param_gap"] == pytest.approx((m["llama_params"] - m["gpt2_params"]) / m["gpt2_params"])
    assert m["gpt2_val_loss"] == gpt2["val_loss"] < gpt2["history"]["val_loss"][0] - 0.5
    assert gpt2["history"]["iter"] == m["history"]["iter"] and gpt2["iters"] == 60
    assert gpt2["history"]["train_loss"][0] != m["history"]["train_loss"][0]  # two models, not one run twice
    assert json.loads((out / "metrics.json").read_text())["val_loss"] == m["val_loss"]
    assert (out / "loss.png").stat().st_size > 10_000 and (out / "checkpoint.pt").exists()
    s = ll.main(["--sample", "--prompt", "ROMEO:", "--sample-len", "40", "--device", "cpu", "--out-dir", str(out)])
    assert s["sample"].startswith("ROMEO:") and len(s["sample"]) == 46


def test_version_3_bpe_smoke_run(ll, tmp_path):
    """--version 3: grouped-query attention, RoPE base 500,000, a context four times longer at a quarter of the
    batch (the same tokens per step); here on a BPE vocabulary."""
    m = ll.main(["--smoke", "--version", "3", "--tokenizer", "bpe", "--no-compare-gpt2", "--out-dir", str(tmp_path)])
    assert m["config"]["n_kv_heads"] == 1 and m["config"]["n_heads"] == 2 and m["config"]["rope_theta"] == 5e5
    assert m["config"]["max_seq_len"] == 128 and m["train_tokens"] == 60 * 3 * 128
    assert m["tokenizer"] == "bpe" and m["vocab_size"] == 300 and m["gpt2_val_loss"] is None
    assert m["val_loss"] < m["history"]["val_loss"][0] - 0.5


def test_resume_gives_the_weights_of_an_uninterrupted_run(ll, tmp_path):
    common = ["--smoke", "--no-compare-gpt2", "--dropout", "0.1", "--lr-decay-iters", "20", "--eval-interval", "10"]
    whole = ll.main([*common, "--max-iters", "20", "--out-dir", str(tmp_path / "a")])
    ll.main([*common, "--max-iters", "10", "--out-dir", str(tmp_path / "b")])
    resumed = ll.main([*common, "--max-iters", "20", "--resume", "--out-dir", str(tmp_path / "b")])
    assert resumed["history"] == whole["history"]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert a["iter"] == b["iter"] == 20
    for name, p in a["model"].items():
        assert torch.equal(p, b["model"][name]), name
    with pytest.raises(SystemExit) as exc:  # a changed model is refused
        ll.main([*common, "--n-kv-heads", "1", "--resume", "--out-dir", str(tmp_path / "b")])
    assert exc.value.code == 2


# %% refusals


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--n-kv-heads", "3"], "--n-kv-heads"),
        (["--n-embd", "30"], "--n-embd"),
        (["--version", "4"], "--version"),
        (["--top-p", "1.5"], "--top-p"),
        (["--max-iters", "0"], "--max-iters"),
        (["--vocab-size", "300"], "--vocab-size"),
        (["--grad-clip", "nan"], "--grad-clip"),
        (["--init-from", "x", "--resume"], "--init-from"),
    ],
)
def test_bad_flags(ll, usage_error, argv, flag):
    assert flag in usage_error(ll, argv, loader="tinyshakespeare")


def test_missing_data_is_one_line(ll, missing_data_error):
    assert "tinyshakespeare" in missing_data_error(ll.main)
