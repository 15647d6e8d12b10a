"""Tests of 06-transformers/attention_torch.py: multi-head attention against nn.MultiheadAttention, the
hand-written path against F.scaled_dot_product_attention, the masks, dropout, the scoring functions of
d2l 11.3 against their formulas written as loops, and a smoke run of the sorting model.

The twin tests copy an nn.MultiheadAttention(batch_first=True)'s weights into ours (with random biases,
so that a mis-split in_proj_bias shows) and compare, in float64, the output, the averaged and the
per-head weights, and the gradients of query, key, value and every parameter for a random upstream
gradient on both the output and the weights: relative error at most 1e-10.
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradcheck import rel_error
from torch import nn

TOL = 1e-10


@pytest.fixture(scope="module")
def att(load_script):
    return load_script("06-transformers/attention_torch.py")


def twins(att, E, H, bias=True, dropout=0.0, seed=0):
    """(nn.MultiheadAttention, our MultiHeadAttention with its weights copied), float64."""
    torch.manual_seed(seed)
    ref = nn.MultiheadAttention(E, H, dropout=dropout, bias=bias, batch_first=True).double()
    if bias:
        with torch.no_grad():  # nn.MultiheadAttention starts its biases at 0, which would hide a mis-split
            ref.in_proj_bias.normal_()
            ref.out_proj.bias.normal_()
    return ref, att.MultiHeadAttention(E, H, dropout=dropout, bias=bias).double().copy_from(ref)


def causal(T):
    """nn.MultiheadAttention's causal mask: True above the diagonal (key j > query i is masked out)."""
    return torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)


def padding(lengths, S):
    """key_padding_mask (B, S): True at keys j >= length."""
    return torch.arange(S)[None, :] >= torch.tensor(lengths)[:, None]


def random_bool_mask(B, H, T, S, seed):
    """(B*H, T, S) random bool attn_mask (True = masked out) that leaves key 0 to every query."""
    m = torch.rand(B * H, T, S, generator=torch.Generator().manual_seed(seed)) < 0.5
    m[..., 0] = False
    return m


# name: (B, T, S, E, H, key_padding_mask, attn_mask); no query loses all its keys.
CASES = {
    "no mask": (3, 5, 5, 12, 3, None, None),
    "key padding": (3, 5, 5, 12, 3, padding([5, 3, 1], 5), None),
    "causal": (2, 6, 6, 8, 2, None, causal(6)),
    "causal + key padding": (3, 6, 6, 8, 2, padding([6, 4, 2], 6), causal(6)),
    "float attn_mask": (2, 4, 4, 8, 4, None, torch.randn(4, 4, dtype=torch.float64)),
    "float attn_mask (B*H)": (2, 4, 4, 8, 4, None, torch.randn(8, 4, 4, dtype=torch.float64)),
    "bool attn_mask (B*H)": (2, 5, 5, 8, 2, None, random_bool_mask(2, 2, 5, 5, seed=3)),
    "float masks, -inf padding": (
        2,
        4,
        4,
        8,
        2,
        torch.zeros(2, 4, dtype=torch.float64).masked_fill(padding([4, 2], 4), -math.inf),
        torch.randn(4, 4, dtype=torch.float64),
    ),
    "T != S": (3, 4, 7, 12, 3, padding([7, 2, 5], 7), None),
    "T != S, bool attn_mask": (2, 3, 6, 8, 2, None, torch.rand(3, 6) < 0.5),
    "batch 1": (1, 5, 5, 8, 2, padding([3], 5), causal(5)),
    "one head": (3, 5, 5, 8, 1, padding([5, 4, 2], 5), causal(5)),
}
CASES["T != S, bool attn_mask"][-1][:, 0] = False


def inputs(B, T, S, E, seed=1):
    """query (B, T, E), key and value (B, S, E): three different float64 leaf tensors."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, n, E, dtype=torch.float64, generator=g, requires_grad=True) for n in (T, S, S)]


def run(module, x, kpm, mask, average, sdpa=None, weights_grad=True):
    """Forward, then backward of sum(out * g) + sum(weights * gw) (the second term if weights_grad), with
    fixed random g, gw: (out, weights, input gradients); the parameter gradients stay in module."""
    for t in x:
        t.grad = None
    module.zero_grad(set_to_none=True)
    kwargs = {} if sdpa is None else {"sdpa": sdpa}
    out, w = module(*x, key_padding_mask=kpm, attn_mask=mask, average_attn_weights=average, **kwargs)
    g = torch.Generator().manual_seed(7)
    loss = (out * torch.randn(out.shape, dtype=out.dtype, generator=g)).sum()
    if w is not None and weights_grad:
        loss = loss + (w * torch.randn(w.shape, dtype=w.dtype, generator=g)).sum()
    loss.backward()
    return out.detach(), None if w is None else w.detach(), [t.grad.clone() for t in x]


def our_grads(ours):
    """Our parameter gradients laid out as nn.MultiheadAttention's parameters."""
    grads = {
        "in_proj_weight": torch.cat([ours.q_proj.weight.grad, ours.k_proj.weight.grad, ours.v_proj.weight.grad]),
        "out_proj.weight": ours.out_proj.weight.grad,
    }
    if ours.q_proj.bias is not None:
        grads["in_proj_bias"] = torch.cat([ours.q_proj.bias.grad, ours.k_proj.bias.grad, ours.v_proj.bias.grad])
        grads["out_proj.bias"] = ours.out_proj.bias.grad
    return grads


# %% nn.MultiheadAttention twin


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("average", [True, False], ids=["averaged", "per head"])
@pytest.mark.parametrize("case", list(CASES))
def test_equals_nn_multihead_attention(att, case, average):
    """Output, weights (averaged (B, T, S) or per head (B, H, T, S)), and the gradients of query, key,
    value and every parameter equal nn.MultiheadAttention's with copied weights (float64, <= 1e-10)."""
    B, T, S, E, H, kpm, mask = CASES[case]
    ref, ours = twins(att, E, H)
    x = inputs(B, T, S, E)
    out_r, w_r, dx_r = run(ref, x, kpm, mask, average)
    out_o, w_o, dx_o = run(ours, x, kpm, mask, average)
    assert w_o.shape == ((B, T, S) if average else (B, H, T, S))
    assert rel_error(out_o, out_r) <= TOL
    assert rel_error(w_o, w_r) <= TOL
    for a, b in zip(dx_o, dx_r):
        assert rel_error(a, b) <= TOL
    ref_params = dict(ref.named_parameters())
    grads = our_grads(ours)
    assert set(grads) == set(ref_params)
    for name, g in grads.items():
        assert rel_error(g, ref_params[name].grad) <= TOL, name
    if kpm is not None and kpm.dtype == torch.bool:  # a padded key gets weight exactly 0
        assert (w_o * kpm.view(B, *[1] * (w_o.dim() - 2), S)).abs().max() == 0


def test_equals_nn_multihead_attention_without_bias(att):
    """bias=False on both sides: the same output and gradients."""
    ref, ours = twins(att, 8, 2, bias=False)
    assert ours.q_proj.bias is None and ours.out_proj.bias is None
    x = inputs(2, 5, 5, 8)
    out_r, w_r, dx_r = run(ref, x, padding([5, 3], 5), causal(5), True)
    out_o, w_o, dx_o = run(ours, x, padding([5, 3], 5), causal(5), True)
    assert rel_error(out_o, out_r) <= TOL and rel_error(w_o, w_r) <= TOL
    assert all(rel_error(a, b) <= TOL for a, b in zip(dx_o, dx_r))
    grads = our_grads(ours)
    assert rel_error(grads["in_proj_weight"], ref.in_proj_weight.grad) <= TOL
    assert rel_error(grads["out_proj.weight"], ref.out_proj.weight.grad) <= TOL


def test_need_weights_false_and_copy_from_checks(att):
    """need_weights=False returns None for the weights (same output); copy_from refuses a mismatched twin."""
    ref, ours = twins(att, 8, 2)
    x = inputs(2, 4, 4, 8)
    out, w = ours(*x, need_weights=False)
    assert w is None and rel_error(out, ours(*x)[0]) == 0
    with pytest.raises(ValueError):
        att.MultiHeadAttention(8, 4).double().copy_from(ref)  # other num_heads
    with pytest.raises(ValueError):
        att.MultiHeadAttention(8, 2, bias=False).double().copy_from(ref)
    with pytest.raises(ValueError):
        att.MultiHeadAttention(8, 2).copy_from(nn.MultiheadAttention(8, 2, kdim=4, vdim=4))
    with pytest.raises(ValueError):
        att.MultiHeadAttention(10, 4)


# %% the hand-written path against F.scaled_dot_product_attention


@pytest.mark.parametrize("case", list(CASES))
def test_hand_and_sdpa_paths_agree(att, case):
    """sdpa=True (F.scaled_dot_product_attention) gives the hand path's output and the same gradients of
    query, key, value and every parameter (upstream gradient on the output only), and no weights."""
    B, T, S, E, H, kpm, mask = CASES[case]
    _, ours = twins(att, E, H)
    x = inputs(B, T, S, E)
    results = {}
    for sdpa in (False, True):
        out, w, dx = run(ours, x, kpm, mask, True, sdpa=sdpa, weights_grad=False)
        results[sdpa] = out, w, dx, {k: v.clone() for k, v in our_grads(ours).items()}
    (out_h, w_h, dx_h, g_h), (out_s, w_s, dx_s, g_s) = results[False], results[True]
    assert w_h is not None and w_s is None
    assert rel_error(out_s, out_h) <= TOL
    for a, b in zip(dx_s, dx_h):
        assert rel_error(a, b) <= TOL
    for name, grad in g_s.items():
        assert rel_error(grad, g_h[name]) <= TOL, name


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_scaled_dot_product_attention_equals_torch(att, dtype, tol):
    """The function on (B, H, T, d) with a broadcast bool mask (True = may attend), a float mask, no mask
    and an explicit scale equals F.scaled_dot_product_attention, and its weights are softmax(q k^T / sqrt(d))."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 4, generator=g, dtype=dtype) for n in (5, 6, 6))
    allowed = torch.rand(2, 1, 5, 6, generator=g) < 0.6
    allowed[..., 0] = True
    for mask, scale in [
        (None, None),
        (allowed, None),
        (torch.randn(5, 6, generator=g, dtype=dtype), None),
        (None, 0.3),
    ]:
        out, w = att.scaled_dot_product_attention(q, k, v, mask, scale=scale)
        assert rel_error(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)) <= tol
        s = q @ k.transpose(-2, -1) * (0.5 if scale is None else scale)  # 1/sqrt(4)
        if mask is not None:
            s = s.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else s + mask
        assert rel_error(w, torch.softmax(s, dim=-1)) <= tol


def test_fully_masked_query_gives_zero_not_nan(att):
    """A query with every key masked: weights 0, output 0, finite gradients, and the other rows unchanged;
    F.scaled_dot_product_attention agrees on the rows that keep a key (nn.MultiheadAttention gives NaN)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    allowed = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    allowed[..., 2, :] = False  # query 2 sees nothing
    out, w = att.scaled_dot_product_attention(q, k, v, allowed)
    assert (w[..., 2, :] == 0).all() and (out[..., 2, :] == 0).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert (q.grad[..., 2, :] == 0).all()
    full, _ = att.scaled_dot_product_attention(q, k, v)
    keep = [0, 1, 3]
    assert rel_error(out[..., keep, :], full[..., keep, :]) == 0
    fused = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    assert rel_error(out[..., keep, :], fused[..., keep, :]) <= 1e-12
    ours = att.MultiHeadAttention(6, 2).double()
    x = torch.randn(1, 4, 6, dtype=torch.float64)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[2] = True  # nn.MultiheadAttention's convention: True = masked out
    out, w = ours(x, x, x, attn_mask=mask)
    assert torch.isfinite(out).all() and (w[0, 2] == 0).all()


# %% masks, dropout


def test_masked_keys_change_nothing(att):
    """Other values of key and value at padded positions: the same output, and zero gradient there."""
    _, ours = twins(att, 8, 2)
    kpm = padding([6, 3, 4], 6)
    outs = []
    for trial in range(2):
        q, k, v = inputs(3, 5, 6, 8, seed=1)
        if trial:
            with torch.no_grad():
                k[kpm] = 100 * torch.randn(int(kpm.sum()), 8, dtype=torch.float64)
                v[kpm] = 100 * torch.randn(int(kpm.sum()), 8, dtype=torch.float64)
        out, _ = ours(q, k, v, key_padding_mask=kpm)
        out.pow(2).sum().backward()
        outs.append(out.detach())
        assert (k.grad[kpm] == 0).all() and (v.grad[kpm] == 0).all()
        assert k.grad[~kpm].abs().max() > 0
    assert rel_error(outs[0], outs[1]) <= 1e-14


def test_causal_mask_hides_the_future(att):
    """With a causal mask, output t depends on inputs 0..t only: changing x after t leaves it alone and
    its gradient with respect to later positions is exactly 0 (and not 0 for earlier ones)."""
    _, ours = twins(att, 8, 2)
    T = 6
    x = torch.randn(2, T, 8, dtype=torch.float64, requires_grad=True)
    out, _ = ours(x, x, x, attn_mask=causal(T))
    for t in range(T):
        (dx,) = torch.autograd.grad(out[:, t].sum(), x, retain_graph=True)
        assert (dx[:, t + 1 :] == 0).all()
        assert (dx[:, : t + 1].abs().amax(dim=(0, 2)) > 0).all()
    y = x.detach().clone()
    y[:, 3:] = torch.randn(2, T - 3, 8, dtype=torch.float64)
    out2, _ = ours(y, y, y, attn_mask=causal(T))
    assert rel_error(out2[:, :3], out[:, :3]) <= 1e-14
    assert rel_error(out2[:, 3:], out[:, 3:]) > 1e-3


def test_dropout(att):
    """Eval: deterministic and equal to dropout 0. Training: the returned weights are the ones applied; each is 0
    with probability about p, the others are the eval weights / (1 - p)."""
    p = 0.3
    ref, ours = twins(att, 16, 4, dropout=p)
    x = inputs(4, 32, 32, 16)
    ours.eval()
    out_a, w_a = ours(*x, average_attn_weights=False)
    out_b, _ = ours(*x, average_attn_weights=False)
    out_0, _ = att.MultiHeadAttention(16, 4).double().copy_from(ref)(*x)
    assert torch.equal(out_a, out_b) and rel_error(out_a, out_0) == 0
    ours.train()
    torch.manual_seed(0)
    out_t, w_t = ours(*x, average_attn_weights=False)  # (B, H, T, S)
    zero = w_t == 0
    assert abs(zero.float().mean().item() - p) < 0.02  # 16384 weights: the share's std is 0.004
    assert rel_error(w_t[~zero], w_a[~zero] / (1 - p)) <= 1e-14
    v = ours.v_proj(x[2]).view(4, 32, 4, 4).transpose(1, 2)  # (B, H, S, d)
    by_hand = ours.out_proj((w_t @ v).transpose(1, 2).reshape(4, 32, 16))
    assert rel_error(out_t, by_hand) <= 1e-14
    torch.manual_seed(1)
    out_s, _ = ours(*x, sdpa=True)  # the fused path drops too in training
    assert rel_error(out_s, out_a) > 1e-3


# %% scoring functions of d2l 11.3 against their formulas


def softmax_rows(s, n):
    """softmax of the first n entries of a 1-D array, zeros after (all zeros for n = 0)."""
    w = np.zeros_like(s)
    if n:
        e = np.exp(s[:n] - s[:n].max())
        w[:n] = e / e.sum()
    return w


def test_masked_softmax(att):
    """valid_lens of shape (B,) and (B, T), a length 0 included: the softmax of the first valid_len scores of
    each row and 0 after; no valid_lens: the plain softmax."""
    rng = np.random.default_rng(0)
    s = rng.standard_normal((3, 4, 5))
    for lens in [np.array([5, 2, 0]), rng.integers(0, 6, (3, 4))]:
        got = att.masked_softmax(torch.from_numpy(s), torch.from_numpy(lens)).numpy()
        for b in range(3):
            for i in range(4):
                n = lens[b] if lens.ndim == 1 else lens[b, i]
                assert np.abs(got[b, i] - softmax_rows(s[b, i], n)).max() <= 1e-15
    assert rel_error(att.masked_softmax(torch.from_numpy(s)), torch.softmax(torch.from_numpy(s), -1)) <= 1e-15


@pytest.mark.parametrize("scaled", [True, False])
def test_dot_product_attention_formula(att, scaled):
    """o_i = sum_j softmax_j(q_i . k_j / sqrt(d), or q_i . k_j) v_j over j < valid_len, as a loop."""
    rng = np.random.default_rng(1)
    B, T, S, d, dv = 2, 3, 5, 4, 6
    q, k, v = rng.standard_normal((B, T, d)), rng.standard_normal((B, S, d)), rng.standard_normal((B, S, dv))
    lens = np.array([5, 2])
    out, w = att.DotProductAttention(scaled=scaled).eval()(*map(torch.from_numpy, (q, k, v, lens)))
    for b in range(B):
        for i in range(T):
            score = np.array([q[b, i] @ k[b, j] for j in range(S)]) / (math.sqrt(d) if scaled else 1)
            alpha = softmax_rows(score, lens[b])
            assert np.abs(w[b, i].numpy() - alpha).max() <= 1e-15
            assert np.abs(out[b, i].numpy() - alpha @ v[b]).max() <= 1e-14


def test_additive_attention_formula(att):
    """a(q, k) = w_v . tanh(W_q q + W_k k), queries and keys of different sizes, masked by valid_lens (B, T)."""
    torch.manual_seed(0)
    B, T, S, dq, dk, h, dv = 2, 3, 4, 5, 7, 6, 3
    m = att.AdditiveAttention(dq, dk, h).double().eval()
    rng = np.random.default_rng(2)
    q, k, v = rng.standard_normal((B, T, dq)), rng.standard_normal((B, S, dk)), rng.standard_normal((B, S, dv))
    lens = np.array([[4, 1, 3], [2, 4, 0]])
    out, w = m(*map(torch.from_numpy, (q, k, v, lens)))
    Wq, Wk, wv = (p.detach().numpy() for p in (m.W_q.weight, m.W_k.weight, m.w_v.weight[0]))
    for b in range(B):
        for i in range(T):
            score = np.array([wv @ np.tanh(Wq @ q[b, i] + Wk @ k[b, j]) for j in range(S)])
            alpha = softmax_rows(score, lens[b, i])
            assert np.abs(w[b, i].detach().numpy() - alpha).max() <= 1e-15
            assert np.abs(out[b, i].detach().numpy() - alpha @ v[b]).max() <= 1e-14


# %% the script


def test_smoke_run(att, tmp_path):
    """Seconds of training sort 5 symbols of 6 almost always right (chance 1/6); the two attention paths give
    the trained model the same predictions; metrics.json and the attention figure are written."""
    m = att.main(["--smoke", "--out-dir", str(tmp_path)])
    assert m["test_acc"] > 0.97 and m["test_seq_acc"] > 0.9 and m["chance_acc"] == pytest.approx(1 / 6)
    assert m["train_loss"] < m["first_loss"] / 5
    assert m["hand_vs_sdpa_max_abs_diff"] < 1e-4 and m["hand_vs_sdpa_same_predictions"] == 1.0
    assert len(m["history"]["test_acc"]) == 2 and m["params"] > 10_000
    assert json.loads((tmp_path / "metrics.json").read_text())["test_acc"] == m["test_acc"]
    assert (tmp_path / "attention.png").stat().st_size > 10_000


def test_sdpa_flag_trains_and_runs_repeat(att, tmp_path):
    """--sdpa trains the same model through the fused path; a CPU run repeated with one seed gives the same numbers."""
    flags = ["--smoke", "--epochs", "1", "--steps-per-epoch", "30"]
    a = att.main([*flags, "--sdpa", "--out-dir", str(tmp_path / "a")])
    b = att.main([*flags, "--sdpa", "--out-dir", str(tmp_path / "b")])
    assert a["config"]["sdpa"] and a["test_acc"] > 0.5
    assert a["history"]["train_loss"] == b["history"]["train_loss"] and a["test_acc"] == b["test_acc"]


def test_n_embd_must_divide_by_n_head(att, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        att.main(["--smoke", "--n-embd", "30", "--n-head", "4", "--out-dir", str(tmp_path)])
    assert exc.value.code == 2 and "--n-head" in capsys.readouterr().err


@pytest.mark.parametrize("causal", [False, True])
def test_attention_benchmark_runs(load_script, tmp_path, causal):
    """benchmarks/attention.py at a tiny size: every contender computes what F.scaled_dot_product_attention
    computes (output and the three gradients) in float32, and the ratios and growth are reported."""
    argv = ["--seq-lens", "16", "32", "--batch-size", "2", "--n-head", "2", "--head-dim", "8", "--repeats", "1"]
    argv += ["--block", "1", "--pause", "0", "--out", str(tmp_path / "a.json"), *(["--causal"] if causal else [])]
    out = load_script("benchmarks/attention.py").main(argv)
    assert out["contenders"] == ["numpy", "hand", "sdpa"]
    for T in ("16", "32"):
        assert set(out["ratios"][T]) == {"numpy/sdpa", "hand/sdpa"}
        for c in out["checks"][T].values():
            assert c["rel_error_vs_sdpa"] < 1e-5 and c["dtypes"] == ["float32"] * 4
    assert (
        out["growth"]["16->32"]["T^2"] == 4 and json.loads((tmp_path / "a.json").read_text())["ratios"] == out["ratios"]
    )
