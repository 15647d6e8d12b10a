"""Tests of 06-transformers/reformer_torch.py: LSH attention, reversible layers, chunked feed-forward, memory.

LSH attention with one bucket and one chunk against full shared-QK attention with the same self rule, and that
rule against a softmax written out; several buckets, chunks and rounds against a brute-force reference that builds
every query's allowed keys from the buckets and the sorted order; the rounds' combination by their log-sum-exp;
causality; the reversible stack's hand-written backward against autograd through the ordinary blocks (float64,
with dropout and fresh hashes, so the replayed random numbers matter) and the inputs it rebuilds; the chunked
feed-forward; the saved bytes of reversible and ordinary models of several depths; a smoke run and the refusals.
"""

import json
import math

import pytest
import torch

SCRIPT = "06-transformers/reformer_torch.py"


@pytest.fixture(scope="module")
def rf(load_script):
    return load_script(SCRIPT)


def qkv(B=2, nh=2, T=32, d=8, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    qk = scale * torch.randn(B, nh, T, d, generator=g, dtype=torch.float64)
    return qk, torch.randn(B, nh, T, d, generator=g, dtype=torch.float64)


def self_rule_reference(qk, v, allowed):
    """softmax over the allowed keys j != i of q_i . k_j / sqrt(d), k = q / |q|; a query with no such key gets its
    own value. allowed (..., T, T) bool; also returns the log-sum-exp, with -1e5 as the score of oneself."""
    d = qk.size(-1)
    scores = qk @ torch.nn.functional.normalize(qk, dim=-1).transpose(-2, -1) / math.sqrt(d)
    eye = torch.eye(qk.size(-2), dtype=torch.bool)
    others = allowed & ~eye
    y = torch.where(others, scores, -torch.inf).softmax(-1).nan_to_num(0.0) @ v
    alone = ~others.any(-1, keepdim=True)
    y = torch.where(alone, v, y)
    z = torch.where(others, scores, torch.where(eye, -1e5, -torch.inf)).logsumexp(-1)
    return y, z


# %% LSH attention


@pytest.mark.parametrize("causal", [False, True])
def test_one_bucket_one_chunk_is_full_attention(rf, causal):
    qk, v = qkv(scale=3.0)
    T = qk.size(2)
    y = rf.lsh_attention(qk, v, n_buckets=1, n_hashes=1, chunk_len=T, causal=causal)
    want = rf.full_attention(qk, v, causal)
    assert (y - want).abs().max() < 1e-12
    allowed = torch.ones(T, T, dtype=torch.bool).tril() if causal else torch.ones(T, T, dtype=torch.bool)
    ref, _ = self_rule_reference(qk, v, allowed)  # the self rule, written out
    assert (want - ref).abs().max() < 1e-12
    if causal:  # the first query has nothing but itself
        assert torch.equal(want[:, :, 0], v[:, :, 0])


def brute_force(rf, qk, v, buckets, chunk_len, causal):
    """Every round: sorted rank s_i of position i by (bucket, position), found with Python's sorted; i may attend j
    when h(i) = h(j), floor(s_j / L) is floor(s_i / L) or the chunk before it, and j <= i if causal. Then the
    rounds are combined by softmax over their log-sum-exps."""
    B, nh, T, d = qk.shape
    R = buckets.size(2)
    y = torch.zeros_like(v)
    frac_allowed = []
    for b in range(B):
        for h in range(nh):
            outs, zs = [], []
            for r in range(R):
                bk = buckets[b, h, r].tolist()
                rank = {i: s for s, i in enumerate(sorted(range(T), key=lambda i: (bk[i], i)))}
                allowed = torch.zeros(T, T, dtype=torch.bool)
                for i in range(T):
                    for j in range(T):
                        ci, cj = rank[i] // chunk_len, rank[j] // chunk_len
                        allowed[i, j] = bk[i] == bk[j] and cj in (ci - 1, ci) and (j <= i or not causal)
                frac_allowed.append(allowed.float().mean().item())
                o, z = self_rule_reference(qk[b, h], v[b, h], allowed)
                outs.append(o)
                zs.append(z)
            w = torch.stack(zs).softmax(0)  # (R, T)
            y[b, h] = (w[..., None] * torch.stack(outs)).sum(0)
    return y, frac_allowed


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_hashes", [1, 3])
def test_lsh_attention_equals_the_brute_force_mask(rf, causal, n_hashes):
    """4 buckets of 32 positions in chunks of 8: each query attends only within its bucket and its chunk window."""
    qk, v = qkv(B=2, nh=2, T=32, d=8, seed=1, scale=2.0)
    y = rf.lsh_attention(qk, v, 4, n_hashes, 8, causal, generator=torch.Generator().manual_seed(5))
    buckets = rf.hash_buckets(qk, 4, n_hashes, torch.Generator().manual_seed(5))  # the same rotations
    assert buckets.shape == (2, 2, n_hashes, 32) and len(buckets.unique()) == 4
    want, frac = brute_force(rf, qk, v, buckets, 8, causal)
    assert (y - want).abs().max() < 1e-12
    assert max(frac) < 0.4  # most pairs are forbidden: the mask is not trivial


def test_hash_is_argmax_of_the_signed_rotations(rf):
    x, _ = qkv(B=1, nh=2, T=16, d=8)
    buckets = rf.hash_buckets(x, 6, 2, torch.Generator().manual_seed(3))
    R = torch.randn(2, 2, 8, 3, generator=torch.Generator().manual_seed(3)).double()  # (nh, rounds, d, n_buckets/2)
    for h in range(2):
        for r in range(2):
            xR = x[0, h] @ R[h, r]  # (T, 3)
            assert buckets[0, h, r].tolist() == torch.cat([xR, -xR], -1).argmax(-1).tolist()
    assert torch.equal(rf.hash_buckets(3 * x, 6, 2, torch.Generator().manual_seed(3)), buckets)  # angular


def test_rounds_combine_by_their_log_sum_exp(rf):
    """y = sum_r exp(z^r - logsumexp_r z^r) o^r, with o^r and z^r from each round alone."""
    qk, v = qkv(T=64, seed=2, scale=2.0)
    y = rf.lsh_attention(qk, v, 8, 3, 16, True, generator=torch.Generator().manual_seed(7))
    buckets = rf.hash_buckets(qk, 8, 3, torch.Generator().manual_seed(7))
    rounds = [rf.lsh_attend(qk, v, buckets[:, :, r : r + 1], 16, True) for r in range(3)]
    o = torch.cat([o for o, _ in rounds], dim=2)  # (B, nh, 3, T, d)
    z = torch.cat([z for _, z in rounds], dim=2)  # (B, nh, 3, T)
    want = (torch.exp(z - z.logsumexp(2, keepdim=True))[..., None] * o).sum(2)
    assert (y - want).abs().max() < 1e-12
    assert (o[:, :, 0] - o[:, :, 1]).abs().max() > 0.1  # the rounds differ: the weighting matters


def test_causal_later_tokens_change_no_earlier_output(rf):
    """Later values never reach earlier outputs (several buckets and rounds: values do not move the hashes); with
    one bucket the sorted order is the positions, and later queries/keys change no earlier output either."""
    qk, v = qkv(T=64, seed=3)
    v2 = v.clone()
    v2[:, :, 40:] += 1.0
    y1 = rf.lsh_attention(qk, v, 8, 2, 16, True, generator=torch.Generator().manual_seed(1))
    y2 = rf.lsh_attention(qk, v2, 8, 2, 16, True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(y1[:, :, :40], y2[:, :, :40]) and (y1[:, :, 40:] - y2[:, :, 40:]).abs().max() > 0.1
    qk2 = qk.clone()
    qk2[:, :, 40:] = torch.randn_like(qk2[:, :, 40:])
    a = rf.lsh_attention(qk, v, 1, 1, 16, True)
    b = rf.lsh_attention(qk2, v2, 1, 1, 16, True)
    assert torch.equal(a[:, :, :40], b[:, :, :40]) and (a[:, :, 40:] - b[:, :, 40:]).abs().max() > 0.1


def test_bad_lengths_are_clear_errors(rf):
    qk, v = qkv(T=30)
    with pytest.raises(ValueError, match="not a multiple of chunk_len 16"):
        rf.lsh_attention(qk, v, 4, chunk_len=16)
    with pytest.raises(ValueError, match="must be even"):
        rf.lsh_attention(qk, v, 3, chunk_len=10)


# %% reversible layers and chunked feed-forward


def tiny(rf, **kw):
    fields = {"vocab_size": 11, "block_size": 32, "n_layer": 3, "n_head": 2, "n_embd": 16, "chunk_len": 8,
              "n_buckets": 4, "n_hashes": 2, "dropout": 0.1}  # fmt: skip
    return rf.ReformerConfig(**{**fields, **kw})


def grads(model, idx, seed):
    torch.manual_seed(seed)  # the same hashes and dropout masks for both models
    model.zero_grad(set_to_none=True)
    _, loss = model(idx, idx)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("attention", ["lsh", "full"])
def test_reversible_backward_equals_autograd(rf, attention):
    """float64, dropout 0.1 and fresh LSH rotations in every forward: the backward must replay the same draws."""
    torch.manual_seed(0)
    rev = rf.Reformer(tiny(rf, attention=attention)).double()
    for p in rev.parameters():  # weights far from the init, so that a wrong term shows
        p.data.normal_(0.0, 0.3)
    plain = rf.Reformer(tiny(rf, attention=attention, reversible=False)).double()
    plain.load_state_dict(rev.state_dict())
    idx = torch.randint(0, 11, (2, 32), generator=torch.Generator().manual_seed(1))
    loss_a, ga = grads(rev, idx, seed=4)
    loss_b, gb = grads(plain, idx, seed=4)
    assert loss_a == pytest.approx(loss_b, abs=1e-12)
    for name in ga:
        err = (ga[name] - gb[name]).abs().max() / max(ga[name].abs().max() + gb[name].abs().max(), 1e-12)
        assert err <= 1e-10, name
    assert all(gb[n].abs().max() > 0 for n in gb if "blocks.0" in n)
    torch.manual_seed(5)  # other hashes and masks: another loss, so the seed did matter
    assert rev(idx, idx)[1].item() != pytest.approx(loss_a, abs=1e-6)


def test_reversible_backward_rebuilds_each_blocks_inputs(rf, monkeypatch):
    """The x2 = y2 - G(y1) and x1 = y1 - F(x2) of the backward are the inputs the ordinary forward saw."""
    torch.manual_seed(0)
    rev = rf.Reformer(tiny(rf)).double()
    idx = torch.randint(0, 11, (2, 32), generator=torch.Generator().manual_seed(1))
    seen = []  # what the ordinary forward feeds F (x2) and G (y1), block by block
    for block in rev.blocks:
        for m in (block.attention, block.feed_forward):
            m.register_forward_hook(lambda m, args, out: seen.append((m, args[0].detach().clone())))
    rev.config.reversible = False
    torch.manual_seed(3)
    rev(idx, idx)
    forward_inputs = seen[:]
    seen.clear()
    rev.config.reversible = True
    rebuilt = []
    real = rf.replay
    monkeypatch.setattr(rf, "replay", lambda f, x, *a: rebuilt.append((f, x.detach().clone())) or real(f, x, *a))
    torch.manual_seed(3)
    rev(idx, idx)[1].backward()
    assert len(rebuilt) == len(forward_inputs) == 6
    for m, x in forward_inputs:
        (got,) = [r for f, r in rebuilt if f is m]
        assert (got - x).abs().max() < 1e-10 * x.abs().max()


def test_chunked_feed_forward_equals_unchunked(rf):
    torch.manual_seed(0)
    ff = rf.FeedForward(tiny(rf, chunk_len=8, dropout=0.0)).double()
    x = torch.randn(2, 32, 16, dtype=torch.float64)
    chunked = ff(x)
    ff.chunk_len = 32
    assert (chunked - ff(x)).abs().max() < 1e-13 and chunked.shape == x.shape


def test_reversible_saved_bytes_stay_flat_in_depth(rf):
    mem = rf.measure_memory(tiny(rf, dropout=0.0), [1, 2, 4], batch_size=2, device=torch.device("cpu"), seed=0)
    r, o = mem["reversible"], mem["ordinary"]
    assert r[0] == r[1] == r[2] and r[0] > 0
    assert o[0] < o[1] < o[2] and o[2] - o[1] == 2 * (o[1] - o[0])  # each layer adds the same bytes
    assert o[1] - o[0] > r[0]  # one ordinary layer keeps more than the whole reversible stack


# %% the script


@pytest.fixture(scope="module")
def smoke(rf, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    return out, rf.main(["--smoke", "--out-dir", str(out)])


def test_smoke_run(smoke):
    out, m = smoke
    for model in ("reformer", "full"):
        h = m[f"shakespeare_{model}_history"]
        assert h["iter"] == [0, 15, 30] and h["val_loss"][-1] < h["val_loss"][0] - 0.4  # characters are learned
        assert m[f"shakespeare_{model}_val_acc"] > 0.12
        d = m[f"duplication_{model}_history"]
        assert d["val_loss"][0] == pytest.approx(math.log(17), abs=0.1) and 0 < m[f"duplication_{model}_val_acc"] < 1
    assert m["shakespeare_reformer_params"] == m["shakespeare_full_params"]  # twins
    assert m["shakespeare_reformer_val_loss"] != m["shakespeare_full_val_loss"]  # but not the same attention
    mem = m["memory"]
    assert mem["n_layer"] == [2, 4, 8, 12] and len(set(mem["reversible"])) == 1
    assert mem["ordinary"] == sorted(mem["ordinary"]) and mem["ordinary"][-1] > 5 * mem["ordinary"][0]
    assert {"metrics.json", "duplication.png", "shakespeare.png", "memory.png"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "metrics.json").read_text())["memory"] == mem
    assert list(m)[:2] == ["shakespeare_reformer_val_loss", "shakespeare_full_val_loss"]  # RESULTS.md's row
    assert m["reversible_mib"] == mem["reversible"][-1] / 2**20 and m["ordinary_mib"] == mem["ordinary"][-1] / 2**20


def test_missing_data_is_one_line(rf, missing_data_error):
    assert "tinyshakespeare" in missing_data_error(rf.main)


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--seq-len", "72"], "--seq-len"),
        (["--n-buckets", "3"], "--n-buckets"),
        (["--n-embd", "33"], "--n-embd"),
        (["--n-hashes", "0"], "--n-hashes"),
        (["--task", "copy"], "--task"),
        (["--lr", "nan"], "--lr"),
    ],
)
def test_bad_flags(rf, usage_error, argv, flag):
    assert flag in usage_error(rf, argv, loader="tinyshakespeare")
