"""06-transformers/attention_numpy.py: every hand-written backward against torch autograd, the masks, the run.

In float64, with random non-uniform upstream gradients, each backward (softmax, scaled dot-product
attention, multi-head attention, layer norm, feed-forward, the pre-LN block, the whole model) must agree
with autograd to a relative error of 1e-7 (tests/gradcheck.py). Hypothesis draws the shapes: batch 1,
one head, T_q != T_k, widths down to 1, and masks of every kind (padding, causal, random), including
rows where every key is masked, whose output and gradients must be 0, never NaN. The reference for
attention is torch's F.scaled_dot_product_attention (boolean mask, True = may attend), which also
returns 0 for a fully masked row; nn.MultiheadAttention with copied weights is a second twin.
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradcheck import check_adam_step, rel_error, torch_vjp
from hypothesis import given, settings
from hypothesis import strategies as st

SCRIPT = "06-transformers/attention_numpy.py"
TOL = 1e-7
EXAMPLES = settings(max_examples=40, deadline=None)


@pytest.fixture(scope="module")
def att(load_script):
    return load_script(SCRIPT)


def tree_items(tree, prefix=""):
    """Nested dicts and lists -> [("blocks.0.attn.W_q", array), ...], for feeding autograd and comparing."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    out = []
    for k, v in items:
        out += tree_items(v, f"{prefix}{k}.") if isinstance(v, (dict, list)) else [(f"{prefix}{k}", v)]
    return out


def check_key_bias(db_k, db_k_ref, scale):
    """The key bias b_k adds q.b_k to a whole row of scores, which softmax ignores: its gradient is exactly 0,
    so ours and autograd's are both rounding noise, which a relative error cannot compare. Both must be
    below 1e-12 of the largest gradient instead (a wrong db_k, summing a non-zero dS, is far above)."""
    assert np.abs(db_k).max() <= 1e-12 * scale and np.abs(np.asarray(db_k_ref)).max() <= 1e-12 * scale


def check_grads(ours: dict, inputs: dict, torch_fn, dout, out=None):
    """Autograd's vjp of torch_fn({name: tensor}) at `inputs` with upstream dout, against our output and gradients."""
    names = list(inputs)
    out_ref, grads_ref = torch_vjp(lambda *ts: torch_fn(dict(zip(names, ts))), [inputs[n] for n in names], dout)
    if out is not None:
        assert rel_error(out, out_ref) <= 1e-12
    scale = max(np.abs(g).max() for g in grads_ref)
    for name, g_ref in zip(names, grads_ref):
        assert np.isfinite(ours[name]).all(), name
        if name.endswith("b_k"):
            check_key_bias(ours[name], g_ref, scale)
        else:
            assert rel_error(ours[name], g_ref) <= TOL, name


# --- reference implementations in torch -------------------------------------------------------


def torch_mha(t, prefix, x_q, x_kv, n_head, mask):
    """Multi-head attention from t[prefix + "W_q"] etc. (x @ W + b), torch's SDPA for the attention itself."""

    def heads(x, W, b):
        B, T, E = x.shape
        return (x @ t[prefix + W] + t[prefix + b]).reshape(B, T, n_head, E // n_head).transpose(1, 2)

    q, k, v = heads(x_q, "W_q", "b_q"), heads(x_kv, "W_k", "b_k"), heads(x_kv, "W_v", "b_v")
    mask = None if mask is None else torch.from_numpy(mask)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, T_q, d)
    B, _, T_q, _ = o.shape
    return o.transpose(1, 2).reshape(B, T_q, -1) @ t[prefix + "W_o"] + t[prefix + "b_o"]


def torch_block(t, prefix, x, n_head, mask):
    E = x.shape[-1]

    def ln(x, name):
        return F.layer_norm(x, (E,), t[f"{prefix}{name}.g"], t[f"{prefix}{name}.b"], eps=1e-5)

    h = ln(x, "ln1")
    x = x + torch_mha(t, prefix + "attn.", h, h, n_head, mask)
    h = ln(x, "ln2")
    f = torch.relu(h @ t[prefix + "ffn.W_1"] + t[prefix + "ffn.b_1"]) @ t[prefix + "ffn.W_2"] + t[prefix + "ffn.b_2"]
    return x + f


def random_block(rng, E, F_=None):
    """One block's parameters, every one random and non-zero (gains near 1)."""
    F_ = F_ or 2 * E
    attn = {f"{w}_{n}": rng.standard_normal((E, E) if w == "W" else E) * 0.5 for n in "qkvo" for w in "Wb"}

    def ln():
        return {"g": 1 + 0.3 * rng.standard_normal(E), "b": 0.3 * rng.standard_normal(E)}

    ffn = {"W_1": rng.standard_normal((E, F_)) * 0.5, "b_1": rng.standard_normal(F_) * 0.5}
    ffn |= {"W_2": rng.standard_normal((F_, E)) * 0.5, "b_2": rng.standard_normal(E) * 0.5}
    return {"ln1": ln(), "attn": attn, "ln2": ln(), "ffn": ffn}


# --- strategies: shapes and masks ----------------------------------------------------------------


@st.composite
def masks(draw, B, T_q, T_k, rng, lead_ndim=2):
    """None, a padding mask (lengths may be 0: fully masked rows), a causal mask (T_q == T_k), or a random
    mask over (B, 1, T_q, T_k) with one row forced fully masked. Returns (kind, mask)."""
    kinds = ["none", "padding", "random"] + (["causal"] if T_q == T_k else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "none":
        return kind, None
    if kind == "causal":
        return kind, np.tril(np.ones((T_q, T_k), dtype=bool))
    if kind == "padding":
        lens = np.array(draw(st.lists(st.integers(0, T_k), min_size=B, max_size=B)))
        return kind, (np.arange(T_k) < lens[:, None, None, None]).reshape((B,) + (1,) * (lead_ndim - 1) + (1, T_k))
    mask = rng.random((B,) + (1,) * (lead_ndim - 1) + (T_q, T_k)) < 0.6
    mask[0, ..., draw(st.integers(0, T_q - 1)), :] = False
    return kind, mask


@st.composite
def attention_cases(draw):
    """Q, K, V with 1 or 2 leading dims (batch, heads), T_q, T_k, d, d_v from 1, and a mask."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    lead = (draw(st.integers(1, 3)),) + ((draw(st.integers(1, 3)),) if draw(st.booleans()) else ())
    T_q, T_k, d, d_v = (draw(st.integers(1, n)) for n in (5, 5, 6, 4))
    if draw(st.booleans()):
        T_k = T_q  # self-attention shapes, where a causal mask applies
    kind, mask = draw(masks(lead[0], T_q, T_k, rng, lead_ndim=len(lead)))
    Q, K, V = (rng.standard_normal((*lead, T, n)) for T, n in ((T_q, d), (T_k, d), (T_k, d_v)))
    return Q, K, V, mask, rng


# --- softmax ------------------------------------------------------------------------------------


@EXAMPLES
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), seed=st.integers(0, 2**16))
def test_softmax_and_its_backward_equal_torch(att, shape, seed):
    """Random scores with some -inf entries (never a whole row): P and dS = P * (dP - sum dP * P) against autograd."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 3
    x[(rng.random(shape) < 0.3) & (np.arange(shape[-1]) > 0)] = -np.inf  # column 0 stays finite
    P = att.softmax(x)
    dP = rng.standard_normal(shape)
    P_ref, (dx_ref,) = torch_vjp(lambda t: torch.softmax(t, -1), (x,), dP)
    assert rel_error(P, P_ref) <= 1e-12 and np.all(P[np.isinf(x)] == 0)
    assert rel_error(att.softmax_backward(dP, P), dx_ref) <= TOL


def test_softmax_of_a_fully_masked_row_is_zero(att):
    """A row of -inf (nothing to attend to): weights 0 and gradient 0, not NaN; the other rows are normal."""
    x = np.array([[-np.inf, -np.inf, -np.inf], [1.0, -np.inf, 2.0]])
    P = att.softmax(x)
    assert np.array_equal(P[0], np.zeros(3)) and abs(P[1].sum() - 1) < 1e-15 and P[1, 1] == 0
    dS = att.softmax_backward(np.array([[1.0, -2.0, 3.0], [0.5, 1.0, -1.0]]), P)
    assert np.array_equal(dS[0], np.zeros(3)) and np.isfinite(dS).all()


# --- scaled dot-product attention ---------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(case=attention_cases())
def test_attention_forward_and_backward_equal_torch(att, case):
    """softmax(Q K^T / sqrt(d)) V and dQ, dK, dV against F.scaled_dot_product_attention under autograd."""
    Q, K, V, mask, rng = case
    out, cache = att.attention_forward(Q, K, V, mask)
    dout = rng.standard_normal(out.shape)
    dQ, dK, dV = att.attention_backward(dout, cache)
    m = None if mask is None else torch.from_numpy(mask)
    check_grads({"Q": dQ, "K": dK, "V": dV}, {"Q": Q, "K": K, "V": V},
                lambda t: F.scaled_dot_product_attention(t["Q"], t["K"], t["V"], attn_mask=m), dout, out)  # fmt: skip


def test_fully_masked_rows_give_zero_output_and_gradient(att):
    """A query with every key masked: output 0, dQ 0, no NaN anywhere; its keys get no gradient from it."""
    rng = np.random.default_rng(0)
    Q, K, V = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 3))
    mask = np.ones((2, 3, 5), dtype=bool)
    mask[0, 1] = False  # query 1 of sequence 0 sees nothing
    mask[1] = False  # sequence 1 sees nothing at all
    out, cache = att.attention_forward(Q, K, V, mask)
    dQ, dK, dV = att.attention_backward(rng.standard_normal(out.shape), cache)
    assert all(np.isfinite(a).all() for a in (out, dQ, dK, dV))
    assert np.array_equal(out[0, 1], np.zeros(3)) and np.array_equal(out[1], np.zeros((3, 3)))
    assert np.array_equal(dQ[0, 1], np.zeros(4)) and not dK[1].any() and not dV[1].any() and dQ[0, 0].any()
    assert np.array_equal(cache[3][0, 1], np.zeros(5)) and np.allclose(cache[3][0, [0, 2]].sum(-1), 1)


def test_a_masked_key_changes_nothing(att):
    """Padding: new keys and values at masked positions leave the output and dQ exactly as they were, and
    the masked keys and values get gradient exactly 0."""
    rng = np.random.default_rng(1)
    B, h, T_q, T_k, d = 3, 2, 4, 6, 5
    lens = np.array([6, 2, 4])
    mask = att.padding_mask(lens, T_k)
    assert mask.shape == (B, 1, 1, T_k) and mask.dtype == bool
    Q, K, V = (rng.standard_normal((B, h, T, d)) for T in (T_q, T_k, T_k))
    dout = rng.standard_normal((B, h, T_q, d))
    out, cache = att.attention_forward(Q, K, V, mask)
    dQ, dK, dV = att.attention_backward(dout, cache)
    padded = ~mask[:, 0, 0, :]  # (B, T_k)
    K2, V2 = K.copy(), V.copy()
    K2.transpose(0, 2, 1, 3)[padded] = 100 * rng.standard_normal((padded.sum(), h, d))
    V2.transpose(0, 2, 1, 3)[padded] = 100 * rng.standard_normal((padded.sum(), h, d))
    out2, cache2 = att.attention_forward(Q, K2, V2, mask)
    assert np.array_equal(out, out2) and np.array_equal(dQ, att.attention_backward(dout, cache2)[0])
    for g in (dK, dV):
        assert not g.transpose(0, 2, 1, 3)[padded].any() and g.transpose(0, 2, 1, 3)[~padded].any()


def test_mask_helpers(att):
    assert np.array_equal(att.causal_mask(3), np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=bool))
    m = att.padding_mask(np.array([0, 2]), 3)
    assert m.shape == (2, 1, 1, 3) and np.array_equal(m[:, 0, 0], [[False] * 3, [True, True, False]])


# --- scoring functions and the masked softmax ---------------------------------------------------


def test_scoring_functions(att):
    """dot and scaled dot against torch; additive against its formula, pair by pair."""
    rng = np.random.default_rng(2)
    q, k = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4))
    ref = (torch.from_numpy(q) @ torch.from_numpy(k).transpose(1, 2)).numpy()
    assert rel_error(att.dot_score(q, k), ref) <= 1e-14
    assert rel_error(att.scaled_dot_score(q, k), ref / 2.0) <= 1e-14  # sqrt(4)
    qa, W_q, W_k, w_v = (
        rng.standard_normal((2, 3, 6)),
        rng.standard_normal((6, 7)),
        rng.standard_normal((4, 7)),
        rng.standard_normal(7),
    )
    s = att.additive_score(qa, k, W_q, W_k, w_v)
    assert s.shape == (2, 3, 5)
    for b, i, j in np.ndindex(2, 3, 5):
        assert abs(s[b, i, j] - w_v @ np.tanh(W_q.T @ qa[b, i] + W_k.T @ k[b, j])) <= 1e-13


@pytest.mark.parametrize("per_query", [False, True])
def test_masked_softmax(att, per_query):
    """Exactly 0 beyond each valid length, softmax of the valid prefix within it, a zero row for length 0."""
    rng = np.random.default_rng(3)
    B, T_q, T_k = 3, 4, 5
    scores = rng.standard_normal((B, T_q, T_k))
    lens = rng.integers(0, T_k + 1, (B, T_q)) if per_query else np.array([2, 5, 0])
    P = att.masked_softmax(scores, lens)
    full = lens if per_query else np.repeat(lens[:, None], T_q, axis=1)
    for b, i in np.ndindex(B, T_q):
        n = full[b, i]
        assert np.all(P[b, i, n:] == 0)
        if n:
            assert rel_error(P[b, i, :n], torch.softmax(torch.from_numpy(scores[b, i, :n]), 0)) <= 1e-14


# --- multi-head attention -----------------------------------------------------------------------


@st.composite
def mha_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    B, T_q, T_k, n_head, dh = (draw(st.integers(1, n)) for n in (3, 5, 5, 3, 3))
    if draw(st.booleans()):
        T_k = T_q
    kind, mask = draw(masks(B, T_q, T_k, rng))
    return rng, B, T_q, T_k, n_head, n_head * dh, mask


@EXAMPLES
@given(case=mha_cases())
def test_mha_forward_and_backward_equal_torch(att, case):
    """Cross-attention (x_q and x_kv differ, T_q != T_k allowed): output, dx_q, dx_kv and all 8 parameter gradients."""
    rng, B, T_q, T_k, n_head, E, mask = case
    p = random_block(rng, E)["attn"]
    x_q, x_kv = rng.standard_normal((B, T_q, E)), rng.standard_normal((B, T_k, E))
    out, cache = att.mha_forward(x_q, x_kv, p, mask, n_head=n_head)
    dout = rng.standard_normal(out.shape)
    dx_q, dx_kv, grads = att.mha_backward(dout, cache)
    check_grads({"x_q": dx_q, "x_kv": dx_kv} | grads, {"x_q": x_q, "x_kv": x_kv} | p,
                lambda t: torch_mha(t, "", t["x_q"], t["x_kv"], n_head, mask), dout, out)  # fmt: skip


def test_mha_equals_torch_multihead_attention(att):
    """nn.MultiheadAttention (batch_first) holding our weights: in_proj_weight = [W_q^T; W_k^T; W_v^T], a causal
    attn_mask and a key_padding_mask (torch's True = may NOT attend); outputs and every gradient agree."""
    rng = np.random.default_rng(4)
    B, T, E, n_head = 3, 5, 6, 3
    p = random_block(rng, E)["attn"]
    x = rng.standard_normal((B, T, E))
    lens = np.array([5, 3, 1])
    mask = att.causal_mask(T) & att.padding_mask(lens, T)  # (B, 1, T, T)
    out, cache = att.mha_forward(x, x, p, mask, n_head=n_head)
    dout = rng.standard_normal(out.shape)
    dx_q, dx_kv, grads = att.mha_backward(dout, cache)

    m = torch.nn.MultiheadAttention(E, n_head, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        m.in_proj_weight.copy_(torch.from_numpy(np.concatenate([p["W_q"].T, p["W_k"].T, p["W_v"].T])))
        m.in_proj_bias.copy_(torch.from_numpy(np.concatenate([p["b_q"], p["b_k"], p["b_v"]])))
        m.out_proj.weight.copy_(torch.from_numpy(p["W_o"].T))
        m.out_proj.bias.copy_(torch.from_numpy(p["b_o"]))
    xt = torch.tensor(x, requires_grad=True)
    ref, _ = m(xt, xt, xt, attn_mask=torch.from_numpy(~att.causal_mask(T)),
               key_padding_mask=torch.from_numpy(np.arange(T) >= lens[:, None]))  # fmt: skip
    (ref * torch.from_numpy(dout)).sum().backward()
    assert rel_error(out, ref) <= 1e-12
    assert rel_error(dx_q + dx_kv, xt.grad) <= TOL
    W_in, b_in = m.in_proj_weight.grad.numpy(), m.in_proj_bias.grad.numpy()
    for i, n in enumerate("qkv"):
        assert rel_error(grads[f"W_{n}"], W_in[i * E : (i + 1) * E].T) <= TOL
    assert rel_error(grads["b_q"], b_in[:E]) <= TOL and rel_error(grads["b_v"], b_in[2 * E :]) <= TOL
    check_key_bias(grads["b_k"], b_in[E : 2 * E], np.abs(W_in).max())
    assert rel_error(grads["W_o"], m.out_proj.weight.grad.T) <= TOL
    assert rel_error(grads["b_o"], m.out_proj.bias.grad) <= TOL


# --- layer norm, feed-forward, the block --------------------------------------------------------


@EXAMPLES
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), E=st.integers(3, 7), seed=st.integers(0, 2**16))
def test_layernorm_equals_torch(att, shape, E, seed):
    """From E = 3 features: with 1 or 2 the normalised x_hat can only be 0 or +-1, dx is 0 in exact arithmetic
    and both sides are rounding noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*shape, E)) * 2 + 1
    p = {"g": 1 + 0.3 * rng.standard_normal(E), "b": 0.3 * rng.standard_normal(E)}
    y, cache = att.layernorm_forward(x, p)
    dy = rng.standard_normal(y.shape)
    dx, grads = att.layernorm_backward(dy, cache)
    check_grads({"x": dx} | grads, {"x": x} | p, lambda t: F.layer_norm(t["x"], (E,), t["g"], t["b"], 1e-5), dy, y)


@EXAMPLES
@given(B=st.integers(1, 3), T=st.integers(1, 4), E=st.integers(1, 5), F_=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_ffn_equals_torch(att, B, T, E, F_, seed):
    rng = np.random.default_rng(seed)
    p = random_block(rng, E, F_)["ffn"]
    x = rng.standard_normal((B, T, E))
    y, cache = att.ffn_forward(x, p)
    dy = rng.standard_normal(y.shape)
    dx, grads = att.ffn_backward(dy, cache)
    check_grads({"x": dx} | grads, {"x": x} | p,
                lambda t: torch.relu(t["x"] @ t["W_1"] + t["b_1"]) @ t["W_2"] + t["b_2"], dy, y)  # fmt: skip


@st.composite
def block_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    B, T, n_head = (draw(st.integers(1, n)) for n in (3, 5, 3))
    dh = draw(st.integers(math.ceil(3 / n_head), 3))  # width E >= 3: see test_layernorm_equals_torch
    kind, mask = draw(masks(B, T, T, rng))
    return rng, B, T, n_head, n_head * dh, mask


@EXAMPLES
@given(case=block_cases())
def test_block_forward_and_backward_equal_torch(att, case):
    """The pre-LN block x + MHA(LN1(x)), then + FFN(LN2(.)): output, dx and all 16 parameter gradients."""
    rng, B, T, n_head, E, mask = case
    p = random_block(rng, E)
    x = rng.standard_normal((B, T, E))
    y, cache = att.block_forward(x, p, mask, n_head=n_head)
    dy = rng.standard_normal(y.shape)
    dx, grads = att.block_backward(dy, cache)
    check_grads({"x": dx} | dict(tree_items(grads)), {"x": x} | dict(tree_items(p)),
                lambda t: torch_block(t, "", t["x"], n_head, mask), dy, y)  # fmt: skip


def test_causal_position_t_does_not_see_the_future(att):
    """Causal block: changing the inputs after t leaves outputs 0..t unchanged, and an upstream gradient on
    output t alone sends exactly 0 to every input after t (and something to those up to t)."""
    rng = np.random.default_rng(5)
    B, T, E, n_head, t = 2, 6, 8, 2, 2
    p = random_block(rng, E)
    x = rng.standard_normal((B, T, E))
    mask = att.causal_mask(T)
    y, cache = att.block_forward(x, p, mask, n_head=n_head)
    x2 = x.copy()
    x2[:, t + 1 :] = 10 * rng.standard_normal((B, T - t - 1, E))
    y2, _ = att.block_forward(x2, p, mask, n_head=n_head)
    assert np.abs(y2[:, : t + 1] - y[:, : t + 1]).max() <= 1e-13 and np.abs(y2[:, t + 1 :] - y[:, t + 1 :]).max() > 0.1
    dy = np.zeros_like(y)
    dy[:, t] = rng.standard_normal((B, E))
    dx, _ = att.block_backward(dy, cache)
    assert not dx[:, t + 1 :].any() and np.abs(dx[:, :t]).min(axis=-1).all()
    _, cache_full = att.block_forward(x, p, None, n_head=n_head)  # without the mask, the future does matter
    assert att.block_backward(dy, cache_full)[0][:, t + 1 :].any()


# --- the whole model and its optimizer ----------------------------------------------------------


def test_model_loss_and_grads_equal_autograd(att):
    """Embedding + positional encoding, 2 blocks, final layer norm, head, mean cross-entropy: the loss, the
    logits and every gradient (the embedding's through repeated symbols) against the same model in torch."""
    rng = np.random.default_rng(6)
    B, T, K, E, n_head = 3, 5, 4, 6, 2
    params = att.init_model(rng, K, E, 2)
    for _, v in tree_items(params):  # move every parameter away from its initial 0 or 1
        v += 0.3 * rng.standard_normal(v.shape)
    tokens, targets = rng.integers(0, K, (B, T)), rng.integers(0, K, (B, T))
    loss, grads, logits = att.loss_and_grads(params, tokens, targets, n_head)
    pe = torch.from_numpy(att.positional_encoding(T, E))

    def model(t):
        x = t["W_emb"][torch.from_numpy(tokens)] + pe
        for l in range(2):
            x = torch_block(t, f"blocks.{l}.", x, n_head, None)
        h = F.layer_norm(x, (E,), t["ln_f.g"], t["ln_f.b"], 1e-5)
        return h @ t["W_out"] + t["b_out"]

    inputs = dict(tree_items(params))
    ts = {k: torch.tensor(v, requires_grad=True) for k, v in inputs.items()}
    logits_ref = model(ts)
    loss_ref = F.cross_entropy(logits_ref.reshape(-1, K), torch.from_numpy(targets).reshape(-1))
    loss_ref.backward()
    assert abs(loss - loss_ref.item()) <= 1e-12 * loss_ref.item() and rel_error(logits, logits_ref) <= 1e-12
    ours = dict(tree_items(grads))
    assert set(ours) == set(ts)
    scale = max(t.grad.abs().max().item() for t in ts.values())
    for k, t in ts.items():
        if k.endswith("b_k"):
            check_key_bias(ours[k], t.grad, scale)
        else:
            assert rel_error(ours[k], t.grad) <= TOL, k


def test_adam_step_follows_torch_adam(att):
    """100 steps of the script's adam_step beside torch.optim.Adam fed the same gradients (non-default betas
    and eps, one tensor with gradients small enough that eps matters): parameters agree to 1e-10 every step."""
    check_adam_step(att.adam_step, seed=7)


# --- attention pooling and positional encoding --------------------------------------------------


def test_nadaraya_watson(att):
    """Weights = Gaussian kernel normalised over the training points (rows sum to 1); y_hat = weights @ y."""
    rng = np.random.default_rng(8)
    x_train, y_train, x_query = rng.uniform(0, 5, 20), rng.standard_normal(20), rng.uniform(0, 5, 7)
    y_hat, w = att.nadaraya_watson(x_query, x_train, y_train, sigma=0.7)
    k = np.exp(-((x_query[:, None] - x_train[None, :]) ** 2) / (2 * 0.7**2))
    assert w.shape == (7, 20) and np.allclose(w.sum(axis=1), 1, atol=1e-14)
    assert rel_error(w, k / k.sum(axis=1, keepdims=True)) <= 1e-14 and rel_error(y_hat, w @ y_train) <= 1e-14
    y_narrow, _ = att.nadaraya_watson(x_train, x_train, y_train, sigma=1e-4)  # a narrow kernel interpolates
    assert np.allclose(y_narrow, y_train, atol=1e-8)


@pytest.mark.parametrize("d", [8, 7])
def test_positional_encoding(att, d):
    P = att.positional_encoding(50, d)
    assert P.shape == (50, d)
    for t, i in [(0, 0), (1, 0), (3, 1), (17, 2), (49, 3)]:
        w = 1 / 10000 ** (2 * i / d)
        assert abs(P[t, 2 * i] - math.sin(t * w)) <= 1e-15
        if 2 * i + 1 < d:
            assert abs(P[t, 2 * i + 1] - math.cos(t * w)) <= 1e-15


# --- the run --------------------------------------------------------------------------------------


def test_smoke_run_learns_to_reverse(att, tmp_path):
    m = att.main(["--smoke", "--seed", "0", "--out-dir", str(tmp_path)])
    assert m["final_loss"] < 0.5 * m["first_loss"]
    assert m["token_acc"] > m["chance_token_acc"] + 0.4 and m["seq_acc"] > 0.2  # chance of a whole sequence: 6^-6
    assert m["nw_mse"]["0.5"] < m["nw_mse"]["2.0"]  # a too-wide kernel flattens the curve
    assert 0.9 < m["score_std"]["scaled_dot"] < 1.1 and m["score_std"]["dot"] > 2
    assert json.loads((tmp_path / "metrics.json").read_text())["token_acc"] == m["token_acc"]
    for name in ("nadaraya_watson", "positional_encoding", "attention_maps"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000


def test_same_seed_same_run(att, tmp_path):
    argv = ["--smoke", "--epochs", "1", "--steps-per-epoch", "5", "--seed", "3"]
    a = att.main([*argv, "--out-dir", str(tmp_path / "a")])
    b = att.main([*argv, "--out-dir", str(tmp_path / "b")])
    assert a["history"] == b["history"] and a["nw_mse"] == b["nw_mse"]


@pytest.mark.parametrize(
    "argv, flag", [(["--n-embd", "10", "--n-head", "4"], "--n-head"), (["--symbols", "1"], "--symbols")]
)
def test_bad_flags_exit_2(att, tmp_path, capsys, argv, flag):
    with pytest.raises(SystemExit) as exc:
        att.main([*argv, "--smoke", "--out-dir", str(tmp_path)])
    assert exc.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists()
