"""Tests of 06-transformers/linformer_torch.py (Linformer against full attention on 784-pixel sequences) and of
benchmarks/long_attention.py.

Linformer's attention with k = T and E = F = I (or one permutation P for both) is full attention, in float64; with
random E, F it is the paper's formula computed head by head in NumPy; the fused SDPA path equals the hand-written
one for every sharing option. The sharing options compute what they say (a headwise model with F set to E is the
key-value model, and so on) and remove exactly the parameters they should, at the paper's size on the meta
device and at the script's size. Then the encoder's shapes, smoke runs on real Fashion-MNIST, bad flags, missing
data, and a tiny run of the benchmark whose saved-for-backward bytes are checked against the count by hand.
"""

import json
import math

import numpy as np
import pytest
import torch
from gradcheck import rel_error


@pytest.fixture(scope="module")
def lf(load_script):
    return load_script("06-transformers/linformer_torch.py")


def qkv(B=2, nh=3, T=10, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, nh, T, d, generator=g, dtype=torch.float64) for _ in range(3)]


def test_identity_projections_give_full_attention(lf):
    """k = T, E = F = I (shared by the heads, or one per head): softmax(q k^T / sqrt d) v exactly, in float64;
    a permutation P as both E and F too (it reorders keys and values alike)."""
    q, k, v = qkv()
    T, nh = q.shape[2], q.shape[1]
    full = lf.full_attention(q, k, v)
    ref = torch.softmax(q @ k.transpose(-2, -1) / 2.0, dim=-1) @ v  # d = 4: sqrt(d) = 2
    assert full.shape == q.shape and rel_error(full, ref) < 1e-14
    eye = torch.eye(T, dtype=torch.float64)
    P = eye[torch.randperm(T, generator=torch.Generator().manual_seed(1))]
    for E in (eye, eye.expand(nh, T, T), P):
        assert rel_error(lf.linformer_attention(q, k, v, E, E), full) < 1e-14


def test_linformer_attention_is_the_papers_formula(lf):
    """Random E_i != F_i per head, kp = 5 < T = 10: head i of batch b is softmax(Q (E_i K)^T / sqrt d) (F_i V),
    computed head by head in NumPy; (kp, T) matrices are shared by all heads."""
    q, k, v = qkv(d=6)
    B, nh, T, d = q.shape
    g = torch.Generator().manual_seed(2)
    E, F = (torch.randn(nh, 5, T, generator=g, dtype=torch.float64) for _ in range(2))
    y = lf.linformer_attention(q, k, v, E, F)
    assert y.shape == (B, nh, T, d)
    for Ei, Fi, per_head in ((E, F, True), (E[0], F[0], False)):
        y = lf.linformer_attention(q, k, v, Ei, Fi).numpy()
        for b in range(B):
            for i in range(nh):
                Eb, Fb = (M[i] if per_head else M for M in (Ei.numpy(), Fi.numpy()))
                s = q[b, i].numpy() @ (Eb @ k[b, i].numpy()).T / math.sqrt(d)  # (T, kp)
                w = np.exp(s - s.max(1, keepdims=True))
                head = (w / w.sum(1, keepdims=True)) @ (Fb @ v[b, i].numpy())
                assert rel_error(y[b, i], head) < 1e-13


def small_config(lf, **kw):
    return lf.LinformerConfig(block_size=12, n_layer=2, n_head=2, n_embd=8, k=4, **kw)


def redrawn(lf, config, seed=0):
    """The encoder in float64 with every parameter redrawn at std 0.2 (E, F at 1/sqrt(T)), in eval mode."""
    torch.manual_seed(seed)
    model = lf.PixelEncoder(config).double().eval()
    with torch.no_grad():
        for name, w in model.named_parameters():
            w.normal_(0, 1 / math.sqrt(config.block_size) if name.split(".")[-1] in "EF" else 0.2)
    return model


@pytest.mark.parametrize("share", ["none", "headwise", "kv", "layerwise", "full"])
def test_sdpa_path_equals_hand_written(lf, share):
    """--sdpa (F.scaled_dot_product_attention, on E k and F v for Linformer) gives the hand-written logits."""
    kw = {"attention": "full"} if share == "full" else {"share": share}
    hand = redrawn(lf, small_config(lf, **kw))
    fused = lf.PixelEncoder(small_config(lf, **kw, sdpa=True)).double().eval()
    fused.load_state_dict(hand.state_dict())
    x = torch.randn(3, 12, dtype=torch.float64)
    with torch.no_grad():
        a, b = hand(x), fused(x)
    assert a.abs().max() > 0.1 and rel_error(a, b) < 1e-12


def test_sharing_options_compute_what_they_say(lf):
    """A layerwise model's one E, copied into each layer's E of a key-value model, into E and F of a headwise model
    and into every head's E_i and F_i of a model without sharing (the other weights copied too): equal logits in
    float64. Then a changed F of one layer changes the headwise model's logits: F is used."""
    x = torch.randn(3, 12, dtype=torch.float64)
    ref = redrawn(lf, small_config(lf, share="layerwise"))
    weights = {k: w for k, w in ref.state_dict().items() if k != "E"}
    with torch.no_grad():
        expected = ref(x)
        for share in ("kv", "headwise", "none"):
            model = lf.PixelEncoder(small_config(lf, share=share)).double().eval()
            missing, unexpected = model.load_state_dict(weights, strict=False)
            assert not unexpected and sorted(missing) == sorted(
                f"h.{i}.attn.{M}" for i in range(2) for M in ("E" if share == "kv" else "EF")
            )
            for block in model.h:
                for M in ("E",) if share == "kv" else ("E", "F"):
                    getattr(block.attn, M).copy_(ref.E.expand_as(getattr(block.attn, M)))
            assert rel_error(model(x), expected) < 1e-12, share
        assert expected.abs().max() > 0.1
        model = lf.PixelEncoder(small_config(lf, share="headwise")).double().eval()
        model.load_state_dict(weights, strict=False)
        for block in model.h:
            block.attn.E.copy_(ref.E)
            block.attn.F.copy_(ref.E)
        model.h[1].attn.F.mul_(-1)
        assert rel_error(model(x), expected) > 1e-3


def projection_counts(L, nh, k, T):
    """Parameters in E and F for each sharing option, from the paper's definitions."""
    return {"none": L * nh * 2 * k * T, "headwise": L * 2 * k * T, "kv": L * k * T, "layerwise": k * T}


@pytest.mark.parametrize("size", ["paper", "script"])
def test_sharing_removes_exactly_the_expected_parameters(lf, size):
    """The paper's size (n 512, k 256, 12 layers, 12 heads, width 768; on the meta device) and the script's: each
    model has the full-attention model's parameters plus the projections its sharing option keeps."""
    if size == "paper":
        base = lf.LinformerConfig(block_size=512, n_layer=12, n_head=12, n_embd=768, k=256)
    else:
        base = lf.LinformerConfig()
    L, nh, k, T = base.n_layer, base.n_head, base.k, base.block_size
    with torch.device("meta"):
        full = lf.n_params(lf.PixelEncoder(lf.LinformerConfig(**{**base.__dict__, "attention": "full"})))
        counts = {s: lf.n_params(lf.PixelEncoder(lf.LinformerConfig(**{**base.__dict__, "share": s})))
                  for s in lf.SHARE}  # fmt: skip
    expected = projection_counts(L, nh, k, T)
    assert {s: c - full for s, c in counts.items()} == expected
    assert counts["none"] - counts["headwise"] == L * (nh - 1) * 2 * k * T
    assert counts["headwise"] - counts["kv"] == L * k * T and counts["kv"] - counts["layerwise"] == (L - 1) * k * T
    if size == "paper":
        assert expected["none"] == 37_748_736 and expected["layerwise"] == 131_072
    C = base.n_embd  # the full model itself: embeddings, blocks, ln_f, classifier
    assert full == 2 * C + T * C + L * (12 * C * C + 13 * C) + 2 * C + 10 * C + 10


def test_encoder_shapes(lf):
    """encode: (B, 784) pixels -> (B, 784, C) states; forward -> (B, 10) logits; Linformer needs T = 784."""
    for kw in ({"attention": "full"}, {"k": 32, "share": "kv"}):
        model = lf.PixelEncoder(lf.LinformerConfig(n_layer=1, n_embd=16, **kw))
        x = torch.randn(2, 784)
        with torch.no_grad():
            assert model.encode(x).shape == (2, 784, 16) and model(x).shape == (2, 10)
    with pytest.raises(AssertionError, match="784"):
        model(torch.randn(2, 700))


def test_smoke_run_trains_full_and_each_k(lf, tmp_path):
    """The default --smoke: full attention, then k = 32, 64, 128, on 64 real images; each loss falls, each row has
    its accuracy, time and parameter count (projections added to the full model's), on the same batches."""
    m = lf.main(["--smoke", "--out-dir", str(tmp_path)])
    rows = {r["model"]: r for r in m["rows"]}
    assert list(rows) == ["full", "linformer k=32", "linformer k=64", "linformer k=128"]
    for r in rows.values():
        assert r["final_train_loss"] < r["first_loss"] and math.isfinite(r["test_loss"])
        assert 0 <= r["test_acc"] <= 1 and r["sec_per_epoch"] > 0 and len(r["history"]["test_acc"]) == 2
    L, nh = m["model_config"]["n_layer"], m["model_config"]["n_head"]
    for k in (32, 64, 128):
        assert rows[f"linformer k={k}"]["params"] - rows["full"]["params"] == projection_counts(L, nh, k, 784)["none"]
    assert m["n_train"] == 64 and m["n_test"] == 64
    assert [m["full_test_acc"], m["k128_sec_per_epoch"]] == [
        rows["full"]["test_acc"],
        rows["linformer k=128"]["sec_per_epoch"],
    ]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["test_acc"] for r in saved["rows"]] == [r["test_acc"] for r in m["rows"]]
    assert (tmp_path / "linformer.png").stat().st_size > 10_000


def test_smoke_run_of_one_model(lf, tmp_path):
    """--attention linformer --k 16 --share layerwise trains that one model, with one (16, 784) E in all."""
    m = lf.main(["--smoke", "--attention", "linformer", "--k", "16", "--share", "layerwise", "--out-dir",
                 str(tmp_path)])  # fmt: skip
    (row,) = m["rows"]
    assert row["model"] == "linformer k=16" and row["share"] == "layerwise"
    assert row["final_train_loss"] < row["first_loss"]
    c = m["model_config"]
    with torch.device("meta"):
        full = lf.n_params(lf.PixelEncoder(lf.LinformerConfig(**{**c, "attention": "full"})))
    assert row["params"] - full == 16 * 784


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--k", "785"], "--k"),
        (["--k", "0"], "--k"),
        (["--k", "32", "32"], "--k"),
        (["--attention", "full", "--k", "32"], "--k"),
        (["--attention", "sparse"], "--attention"),
        (["--share", "rows"], "--share"),
        (["--n-head", "3"], "--n-head"),
        (["--dropout", "1"], "--dropout"),
        (["--batch-size", "0"], "--batch-size"),
        (["--lr", "nan"], "--lr"),
        (["--threads", "0"], "--threads"),
    ],
)
def test_bad_flags(lf, usage_error, argv, flag):
    assert flag in usage_error(lf, argv)


def test_missing_data_is_one_line(lf, missing_data_error):
    assert "train-images" in missing_data_error(lf.main)


def test_long_attention_benchmark_runs(load_script, tmp_path):
    """benchmarks/long_attention.py at T 64, 128 and 512: every contender is timed and has its fitted exponent;
    full attention is skipped above the memory cap (at 512: 4 MiB > 1 MiB); the saved-for-backward bytes of full
    attention and Linformer are those counted by hand (the weights, the scaled q, the projected keys and values,
    the output)."""
    bench = load_script("benchmarks/long_attention.py")
    out = bench.main(["--seq-lens", "64", "128", "512", "--k", "16", "--chunk-len", "16", "--repeats", "1",
                      "--pause", "0", "--max-scores-mib", "1", "--out", str(tmp_path / "long.json")])  # fmt: skip
    B, nh, d, kp = 1, 4, 64, 16
    assert set(out["results"]["64"]) >= {"full", "linformer"} and "full" not in out["results"]["512"]
    assert out["skipped"][0]["contender"] == "full" and out["skipped"][0]["T"] == 512
    assert isinstance(out["exponents"]["full"], float) and isinstance(out["exponents"]["linformer"], float)
    if out["lsh_note"] is None:  # reformer_torch.py's lsh_attention was there and ran
        assert isinstance(out["exponents"]["lsh"], float) and "lsh" in out["results"]["512"]
    for T in (64, 128):
        r = out["results"][str(T)]
        assert r["full"]["saved_mib"] * 2**20 == 4 * (B * nh * T * T + 2 * B * nh * T * d)
        assert r["linformer"]["saved_mib"] * 2**20 == 4 * (B * nh * T * kp + 2 * B * nh * T * d + 2 * B * nh * kp * d)
    assert json.loads((tmp_path / "long.json").read_text())["exponents"] == out["exponents"]
    assert (tmp_path / "long.png").stat().st_size > 10_000


def test_mean_pooled_full_attention_ignores_pixel_order_and_linformer_does_not(lf):
    """With the positions zeroed, full attention and mean pooling make the logits invariant to a permutation of the
    pixels (float64); Linformer's E, F weight each position by its own column, so its logits change."""
    x = torch.randn(3, 12, dtype=torch.float64)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    for kw, invariant in (({"attention": "full"}, True), ({"share": "kv"}, False)):
        model = redrawn(lf, small_config(lf, **kw))
        with torch.no_grad():
            model.wpe.weight.zero_()
            a, b = model(x), model(x[:, perm])
        assert a.abs().max() > 0.1
        assert (rel_error(a, b) < 1e-12) if invariant else (rel_error(a, b) > 1e-3)
