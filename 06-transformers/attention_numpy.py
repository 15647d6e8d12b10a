"""Attention by hand in NumPy: kernel regression, scoring functions, multi-head attention, a Transformer block.

Attention is a weighted mean of values, with weights from how well a query matches each key. The script
builds it in d2l's order, every backward written by hand right after its forward (tests/test_attention_numpy.py
checks each one against torch autograd in float64): attention pooling (Nadaraya-Watson kernel regression);
the scoring functions and the masked softmax; scaled dot-product and multi-head attention with padding and
causal masks; sinusoidal positional encoding; layer norm and the feed-forward net, making one pre-LN
Transformer block; then a small Transformer, trained with Adam, reverses sequences of symbols, a task that
no position-wise network can do: output t has to fetch the input at position T - 1 - t.

    y_hat(x) = sum_i softmax_i(-(x - x_i)^2 / (2 sigma^2)) y_i        Nadaraya-Watson, Gaussian kernel
    score(q, k) = q.k  |  q.k / sqrt(d)  |  w_v^T tanh(q W_q + k W_k)  dot, scaled dot, additive
    S = Q K^T / sqrt(d), S_ij = -inf where mask_ij is False           Q (T_q, d), K (T_k, d), V (T_k, d_v)
    P = softmax(S) row by row (a row with nothing to attend to is 0),  O = P V          (T_q, d_v)
    backward: dV = P^T dO, dP = dO V^T, dS = P * (dP - sum_j dP * P), dQ = dS K / sqrt(d), dK = dS^T Q / sqrt(d)
    head_i = attention(x_q W_q^i, x_kv W_k^i, x_kv W_v^i);   MHA = concat_i(head_i) W_o    (plus biases)
    block (pre-LN): x = x + MHA(LN1(x)); x = x + FFN(LN2(x)),   FFN(x) = relu(x W_1 + b_1) W_2 + b_2
    PE[t, 2i] = sin(t / 10000^(2i/d)),   PE[t, 2i+1] = cos(t / 10000^(2i/d))

Reading: d2l 11.1-11.7, https://d2l.ai/chapter_attention-mechanisms-and-transformers/index.html;
A. Vaswani et al., "Attention Is All You Need" (2017), https://arxiv.org/abs/1706.03762;
R. Xiong et al., "On Layer Normalization in the Transformer Architecture" (2020) (pre-LN),
https://arxiv.org/abs/2002.04745; E. Nadaraya (1964) and G. Watson (1964), kernel regression.
Arc: Attention -- attention scoring functions, multi-head self-attention, positional encoding (NumPy).

Run:  python 06-transformers/attention_numpy.py                  (under a minute on one core)
      python 06-transformers/attention_numpy.py --n-layer 1      (one block can reverse too)
      python 06-transformers/attention_numpy.py --smoke          (seconds)
Look first at `attention_forward` and `attention_backward` (the softmax backward is the only new step),
then at `block_backward`, which walks the block's two residual branches in reverse. Then the figures in
runs/attention_numpy/: nadaraya_watson.png (kernel weights as an attention matrix),
positional_encoding.png, and attention_maps.png, where in one of the layers each output position of the
trained model looks at its mirror position: an anti-diagonal.
"""

# %%
import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from tqdm import tqdm

from data import nonneg_int, positive_float, positive_int, save_metrics

# %% [markdown]
# ## Attention pooling: Nadaraya-Watson kernel regression (d2l 11.2)


# %%
def softmax(x):
    """softmax over the last axis. An entry of -inf gets weight exactly 0, and a row that is all -inf
    (a query with no key it may attend to) gets all 0 rather than 0 / 0 = NaN."""
    m = x.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # subtract the row's max so that exp cannot overflow
    e = np.exp(x - m)  # exp(-inf) = 0
    s = e.sum(axis=-1, keepdims=True)
    return e / np.where(s > 0, s, 1.0)


def softmax_backward(dP, P):
    """dL/dS from dL/dP for P = softmax(S) over the last axis.

    The Jacobian is dP_j / dS_k = P_j (delta_jk - P_k), so
        dS_k = sum_j dP_j P_j (delta_jk - P_k) = P_k (dP_k - sum_j dP_j P_j).
    A masked entry has P_k = 0, hence dS_k = 0: no gradient reaches a score that was masked.
    """
    return P * (dP - (dP * P).sum(axis=-1, keepdims=True))


def nadaraya_watson(x_query, x_train, y_train, sigma=1.0):
    """y_hat(x) = sum_i alpha(x, x_i) y_i with alpha = softmax_i(-(x - x_i)^2 / (2 sigma^2)).

    The queries are the x, the keys the x_i, the values the y_i: attention pooling with a fixed
    (Gaussian) similarity and nothing learned. x_query (Q,), x_train, y_train (N,) -> y_hat (Q,), weights (Q, N).
    """
    d = x_query[:, None] - x_train[None, :]  # (Q, N)
    weights = softmax(-(d**2) / (2 * sigma**2))  # the Gaussian kernel, normalised: every row sums to 1
    return weights @ y_train, weights


# %% [markdown]
# ## Scoring functions and the masked softmax (d2l 11.3)


# %%
def dot_score(q, k):
    """q.k for every pair: q (..., T_q, d), k (..., T_k, d) -> (..., T_q, T_k)."""
    return q @ np.swapaxes(k, -1, -2)


def scaled_dot_score(q, k):
    """q.k / sqrt(d): for q, k of unit-variance entries q.k has variance d; the scale brings it back to 1,
    so the softmax does not saturate (and its gradient vanish) as d grows."""
    return dot_score(q, k) / math.sqrt(q.shape[-1])  # a Python float keeps float32 float32


def additive_score(q, k, W_q, W_k, w_v):
    """w_v^T tanh(q W_q + k W_k) (Bahdanau): q (..., T_q, d_q), k (..., T_k, d_k), W_q (d_q, h), W_k (d_k, h),
    w_v (h,) -> (..., T_q, T_k). Queries and keys may have different widths."""
    feat = np.tanh((q @ W_q)[..., :, None, :] + (k @ W_k)[..., None, :, :])  # (..., T_q, T_k, h)
    return feat @ w_v


def masked_softmax(scores, valid_lens):
    """softmax over the last axis that keeps only the first valid_lens keys: scores (B, T_q, T_k), valid_lens
    (B,) (one length per sequence) or (B, T_q) (one per query). Weights beyond a length are exactly 0
    (d2l fills -1e6, we fill -inf); a length of 0 gives a row of zeros."""
    valid_lens = np.asarray(valid_lens)
    if valid_lens.ndim == 1:
        valid_lens = valid_lens[:, None]  # (B, 1): the same length for every query
    keep = np.arange(scores.shape[-1]) < valid_lens[..., None]  # (B, T_q or 1, T_k)
    return softmax(np.where(keep, scores, -np.inf))


def causal_mask(T):
    """(T, T) bool, True on and below the diagonal: position t may attend to positions 0..t only."""
    return np.tril(np.ones((T, T), dtype=bool))


def padding_mask(valid_lens, T_k):
    """(B, 1, 1, T_k) bool, True for the first valid_lens[b] keys of sequence b. It broadcasts over the heads
    and queries of multi-head scores (B, h, T_q, T_k); for single-head scores (B, T_q, T_k) use mask[:, 0]."""
    return np.arange(T_k) < np.asarray(valid_lens)[:, None, None, None]


# %% [markdown]
# ## Scaled dot-product attention, forward and backward (d2l 11.3)


# %%
def attention_forward(Q, K, V, mask=None):
    """softmax(Q K^T / sqrt(d)) V: Q (..., T_q, d), K (..., T_k, d), V (..., T_k, d_v), the same leading
    (batch, head) dims; mask bool broadcastable to (..., T_q, T_k), True = may attend, None = all.
    Returns out (..., T_q, d_v) and the cache (Q, K, V, P) with P the attention weights (..., T_q, T_k)."""
    S = scaled_dot_score(Q, K)  # (..., T_q, T_k)
    if mask is not None:
        S = np.where(mask, S, -np.inf)  # a masked key gets weight exp(-inf) = 0
    P = softmax(S)  # each row sums to 1, or is all 0 if every key is masked
    return P @ V, (Q, K, V, P)


def attention_backward(dout, cache):
    """dL/dQ, dL/dK, dL/dV from dL/dout (..., T_q, d_v), one matrix product per line of the forward:

        O = P V            dV = P^T dO                   dP = dO V^T
        P = softmax(S)     dS = P * (dP - sum_j dP * P)  (softmax_backward)
        S = Q K^T / s      dQ = dS K / s                 dK = dS^T Q / s,       s = sqrt(d)
    The mask needs no step of its own: masked entries have P = 0, so their dS is 0 and neither the
    masked key nor the query sees a gradient through them. A fully masked row has dQ = 0.
    """
    Q, K, V, P = cache
    dV = np.swapaxes(P, -1, -2) @ dout  # (..., T_k, d_v)
    dP = dout @ np.swapaxes(V, -1, -2)  # (..., T_q, T_k)
    dS = softmax_backward(dP, P) / math.sqrt(Q.shape[-1])
    dQ = dS @ K  # (..., T_q, d)
    dK = np.swapaxes(dS, -1, -2) @ Q  # (..., T_k, d)
    return dQ, dK, dV


# %% [markdown]
# ## Multi-head attention (d2l 11.5)


# %%
def linear_backward(dy, x, W):
    """For y = x @ W + b over any leading dims: dx = dy W^T, dW = sum over rows of x^T dy, db = sum of dy."""
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    return dy @ W.T, x2.T @ dy2, dy2.sum(axis=0)


def split_heads(x, n_head):
    """(B, T, E) -> (B, h, T, E / h): head i reads features i E/h .. (i + 1) E/h - 1."""
    B, T, E = x.shape
    return x.reshape(B, T, n_head, E // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, h, T, d) -> (B, T, h d), the inverse of split_heads: the heads' outputs side by side."""
    B, h, T, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, h * d)


def mha_forward(x_q, x_kv, p, mask=None, *, n_head):
    """Multi-head attention: queries from x_q (B, T_q, E), keys and values from x_kv (B, T_k, E)
    (self-attention: the same array). p = {W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o}, every W (E, E) applied
    as x @ W + b (torch's nn.Linear stores the transpose). Each of the n_head heads attends in its own
    E / n_head-wide slice; mask broadcasts to (B, h, T_q, T_k). Returns out (B, T_q, E) and the cache."""
    Q = split_heads(x_q @ p["W_q"] + p["b_q"], n_head)  # (B, h, T_q, E/h)
    K = split_heads(x_kv @ p["W_k"] + p["b_k"], n_head)  # (B, h, T_k, E/h)
    V = split_heads(x_kv @ p["W_v"] + p["b_v"], n_head)  # (B, h, T_k, E/h)
    heads, attn_cache = attention_forward(Q, K, V, mask)  # (B, h, T_q, E/h)
    O = merge_heads(heads)  # (B, T_q, E): concat_i head_i
    return O @ p["W_o"] + p["b_o"], (x_q, x_kv, p, O, attn_cache, n_head)


def mha_backward(dout, cache):
    """dL/dx_q, dL/dx_kv and the parameters' gradients (a dict keyed as p) from dL/dout (B, T_q, E).

    Backwards through the forward: the output projection, the split into heads, attention, and the three
    input projections. x_kv feeds both K and V, so its gradient is the sum of the two paths; for
    self-attention the caller adds dx_q and dx_kv (x feeds all three).
    """
    x_q, x_kv, p, O, attn_cache, n_head = cache
    dO, dW_o, db_o = linear_backward(dout, O, p["W_o"])  # (B, T_q, E)
    dQ, dK, dV = (merge_heads(g) for g in attention_backward(split_heads(dO, n_head), attn_cache))
    dx_q, dW_q, db_q = linear_backward(dQ, x_q, p["W_q"])
    dx_k, dW_k, db_k = linear_backward(dK, x_kv, p["W_k"])  # db_k = 0 up to rounding: b_k adds q.b_k to a
    # whole row of scores, which softmax ignores (each row of dS sums to 0). torch keeps the bias; so do we.
    dx_v, dW_v, db_v = linear_backward(dV, x_kv, p["W_v"])
    grads = {"W_q": dW_q, "b_q": db_q, "W_k": dW_k, "b_k": db_k, "W_v": dW_v, "b_v": db_v, "W_o": dW_o, "b_o": db_o}
    return dx_q, dx_k + dx_v, grads


# %% [markdown]
# ## Layer norm, the position-wise feed-forward net and one pre-LN Transformer block (d2l 11.7)


# %%
def layernorm_forward(x, p, eps=1e-5):
    """y = g * (x - mean) / sqrt(var + eps) + b over the last axis (E features); p = {g, b}, each (E,).
    var is the biased variance, as torch's LayerNorm. Returns y and the cache (x_hat, 1 / std, g)."""
    mu = x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(x.var(axis=-1, keepdims=True) + eps)
    x_hat = (x - mu) * rstd
    return x_hat * p["g"] + p["b"], (x_hat, rstd, p["g"])


def layernorm_backward(dy, cache):
    """dx and {g, b} gradients. With dx_hat = dy * g, and mean() over the E features,

        dx = (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)) / std
    the two means are the gradient through mu and through var: shifting x or scaling it changes nothing.
    """
    x_hat, rstd, g = cache
    dx_hat = dy * g
    dx = rstd * (dx_hat - dx_hat.mean(axis=-1, keepdims=True) - x_hat * (dx_hat * x_hat).mean(axis=-1, keepdims=True))
    E = dy.shape[-1]
    return dx, {"g": (dy * x_hat).reshape(-1, E).sum(axis=0), "b": dy.reshape(-1, E).sum(axis=0)}


def ffn_forward(x, p):
    """Position-wise feed-forward: relu(x W_1 + b_1) W_2 + b_2, the same net at every position.
    x (B, T, E), W_1 (E, F), W_2 (F, E). Returns y (B, T, E) and the cache."""
    a = np.maximum(x @ p["W_1"] + p["b_1"], 0.0)  # (B, T, F)
    return a @ p["W_2"] + p["b_2"], (x, a, p)


def ffn_backward(dy, cache):
    """dx and {W_1, b_1, W_2, b_2} gradients: two linear backwards with relu' = 1 where a > 0 between them."""
    x, a, p = cache
    da, dW_2, db_2 = linear_backward(dy, a, p["W_2"])
    dx, dW_1, db_1 = linear_backward(da * (a > 0), x, p["W_1"])
    return dx, {"W_1": dW_1, "b_1": db_1, "W_2": dW_2, "b_2": db_2}


def block_forward(x, p, mask=None, *, n_head):
    """One pre-LN Transformer block on x (B, T, E): x1 = x + MHA(LN1(x)) (self-attention), y = x1 + FFN(LN2(x1)).
    p = {ln1, attn, ln2, ffn}, the parameter dicts of the layers above. Returns y (B, T, E) and the cache."""
    h1, c_ln1 = layernorm_forward(x, p["ln1"])
    a, c_attn = mha_forward(h1, h1, p["attn"], mask, n_head=n_head)
    x1 = x + a
    h2, c_ln2 = layernorm_forward(x1, p["ln2"])
    f, c_ffn = ffn_forward(h2, p["ffn"])
    return x1 + f, (c_ln1, c_attn, c_ln2, c_ffn)


def block_backward(dout, cache):
    """dx and the gradients (keyed as p) from dout = dL/dy. Each residual x + f(x) passes dout straight
    through AND into f's branch, so dL/dx = dout + (f's backward of dout): the identity path is why deep
    pre-LN stacks train."""
    c_ln1, c_attn, c_ln2, c_ffn = cache
    dh2, g_ffn = ffn_backward(dout, c_ffn)
    dx1, g_ln2 = layernorm_backward(dh2, c_ln2)
    dx1 = dx1 + dout  # y = x1 + FFN(LN2(x1))
    dh1_q, dh1_kv, g_attn = mha_backward(dx1, c_attn)
    dx, g_ln1 = layernorm_backward(dh1_q + dh1_kv, c_ln1)  # LN1(x) fed the queries, keys and values
    return dx + dx1, {"ln1": g_ln1, "attn": g_attn, "ln2": g_ln2, "ffn": g_ffn}  # x1 = x + MHA(LN1(x))


def attention_weights(block_cache):
    """The attention weights P (B, h, T, T) of a block_forward: from its MHA cache, the attention cache (Q, K, V, P)."""
    return block_cache[1][4][3]


# %% [markdown]
# ## Sinusoidal positional encoding (d2l 11.6)


# %%
def positional_encoding(T, d):
    """(T, d): PE[t, 2i] = sin(t / 10000^(2i/d)), PE[t, 2i+1] = cos(t / 10000^(2i/d)).

    Column pair i is a clock turning at frequency 1 / 10000^(2i/d), from once per 2 pi positions down to
    very slowly. PE[t + k] is a rotation of PE[t] by an angle that depends on k only, so a linear map
    (W_q, W_k) can turn "look k positions away" into a dot product.
    """
    t = np.arange(T)[:, None]  # (T, 1)
    freq = 1.0 / 10000 ** (np.arange(0, d, 2) / d)  # (ceil(d/2),) 1 / 10000^(2i/d)
    P = np.zeros((T, d))
    P[:, 0::2] = np.sin(t * freq)
    P[:, 1::2] = np.cos(t * freq[: d // 2])  # an odd d has one sine column more than cosines
    return P


# %% [markdown]
# ## The model: embedding + positional encoding, pre-LN blocks, a final layer norm, a linear head


# %%
def init_model(rng, n_symbols, n_embd, n_layer, ffn_mult=4):
    """Weights ~ N(0, 1 / fan_in), biases 0, layer-norm gains 1; the token embedding ~ N(0, 1), the scale of
    the positional encoding it is added to. Everything float64."""

    def W(n_in, n_out):
        return rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)

    def ln():
        return {"g": np.ones(n_embd), "b": np.zeros(n_embd)}

    E, F = n_embd, ffn_mult * n_embd
    blocks = []
    for _ in range(n_layer):
        attn = {}
        for n in "qkvo":  # the query, key, value and output projections
            attn[f"W_{n}"], attn[f"b_{n}"] = W(E, E), np.zeros(E)
        ffn = {"W_1": W(E, F), "b_1": np.zeros(F), "W_2": W(F, E), "b_2": np.zeros(E)}
        blocks.append({"ln1": ln(), "attn": attn, "ln2": ln(), "ffn": ffn})
    return {"W_emb": rng.standard_normal((n_symbols, E)), "blocks": blocks, "ln_f": ln(),
            "W_out": W(E, n_symbols), "b_out": np.zeros(n_symbols)}  # fmt: skip


def model_forward(params, tokens, n_head, mask=None):
    """tokens (B, T) ints -> logits (B, T, K) and the caches. x_0 = W_emb[tokens] + PE, the blocks, LN_f, head."""
    T, E = tokens.shape[1], params["W_emb"].shape[1]
    x = params["W_emb"][tokens] + positional_encoding(T, E)  # (B, T, E)
    caches = []
    for blk in params["blocks"]:
        x, cache = block_forward(x, blk, mask, n_head=n_head)
        caches.append(cache)
    h, c_ln = layernorm_forward(x, params["ln_f"])
    return h @ params["W_out"] + params["b_out"], (tokens, h, c_ln, caches)


def cross_entropy(logits, targets):
    """Mean cross-entropy over every position, logits (B, T, K), targets (B, T) -> loss, dL/dlogits."""
    z = logits - logits.max(axis=-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    b, t = np.indices(targets.shape)
    dlogits = np.exp(log_p)
    dlogits[b, t, targets] -= 1.0
    return float(-log_p[b, t, targets].mean()), dlogits / targets.size  # (softmax - onehot) / (B T)


def model_backward(dlogits, params, cache):
    """Every parameter's gradient, nested as params, from dL/dlogits, walking model_forward in reverse."""
    tokens, h, c_ln, caches = cache
    dh, dW_out, db_out = linear_backward(dlogits, h, params["W_out"])
    dx, g_ln = layernorm_backward(dh, c_ln)
    g_blocks = [None] * len(caches)
    for l in reversed(range(len(caches))):
        dx, g_blocks[l] = block_backward(dx, caches[l])
    dW_emb = np.zeros_like(params["W_emb"])
    np.add.at(dW_emb, tokens, dx)  # a symbol's row collects the gradient of every position that looked it up
    return {"W_emb": dW_emb, "blocks": g_blocks, "ln_f": g_ln, "W_out": dW_out, "b_out": db_out}


def loss_and_grads(params, tokens, targets, n_head):
    """Mean cross-entropy of the model on (tokens, targets), its gradients (nested as params) and the logits."""
    logits, cache = model_forward(params, tokens, n_head)
    loss, dlogits = cross_entropy(logits, targets)
    return loss, model_backward(dlogits, params, cache), logits


def flat(tree, prefix=""):
    """Nested dicts and lists of arrays -> {"blocks.0.attn.W_q": array, ...}: the same arrays, not copies."""
    out = {}
    for k, v in tree.items() if isinstance(tree, dict) else enumerate(tree):
        out |= flat(v, f"{prefix}{k}.") if isinstance(v, (dict, list)) else {f"{prefix}{k}": v}
    return out


# Adam, as taught in 02-optimization/adam_numpy.py
def adam_step(params, grads, state, lr, betas=(0.9, 0.999), eps=1e-8):
    """One Adam step in place on flat dicts: m, v leaky means of g, g^2; theta -= lr m_hat / (sqrt(v_hat) + eps)."""
    b1, b2 = betas
    state["t"] = t = state.get("t", 0) + 1
    for name, g in grads.items():
        m = state.setdefault("m." + name, np.zeros_like(g))
        v = state.setdefault("v." + name, np.zeros_like(g))
        m += (1 - b1) * (g - m)
        v += (1 - b2) * (g * g - v)
        params[name] -= lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)


# %% [markdown]
# ## The task: reverse a sequence of symbols


# %%
def make_batch(rng, batch_size, seq_len, n_symbols):
    """Random sequences (B, T) and their reversals: y_t = x_{T-1-t}. Chance token accuracy: 1 / n_symbols."""
    x = rng.integers(0, n_symbols, (batch_size, seq_len))
    return x, x[:, ::-1].copy()


def evaluate(params, x, y, n_head):
    """Loss, token accuracy and exact-sequence accuracy (every symbol right) on (x, y)."""
    logits, _ = model_forward(params, x, n_head)
    loss, _ = cross_entropy(logits, y)
    hit = logits.argmax(axis=-1) == y
    return loss, float(hit.mean()), float(hit.all(axis=1).mean())


# %% [markdown]
# ## Figures


# %%
def plot_nadaraya_watson(x_train, y_train, x_query, y_true, sigmas, path):
    """Left: the kernel-regression fits for several widths. Right: the weights of the narrowest and widest."""
    fig = Figure(figsize=(14, 4), layout="constrained")
    ax, *maps = fig.subplots(1, 3)
    ax.plot(x_train, y_train, "o", ms=3, color="gray", alpha=0.6, label="training data")
    ax.plot(x_query, y_true, "k--", label="truth")
    for sigma in sigmas:
        ax.plot(x_query, nadaraya_watson(x_query, x_train, y_train, sigma)[0], label=f"sigma = {sigma}")
    ax.set(xlabel="x", ylabel="y", title="Nadaraya-Watson: y_hat(x) = sum_i alpha(x, x_i) y_i")
    ax.legend(fontsize=8)
    for ax, sigma in zip(maps, (sigmas[0], sigmas[-1])):
        im = ax.imshow(nadaraya_watson(x_query, x_train, y_train, sigma)[1], cmap="Reds", aspect="auto")
        ax.set(xlabel="training input x_i (sorted)", ylabel="query x", title=f"attention weights, sigma = {sigma}")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(path, dpi=110)


def plot_positional_encoding(T, d, path):
    """Left: the encoding as an image (positions down, dimensions across). Right: four of its columns."""
    P = positional_encoding(T, d)
    fig = Figure(figsize=(12, 4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    im = ax1.imshow(P, cmap="RdBu", aspect="auto", vmin=-1, vmax=1)
    ax1.set(xlabel="encoding dimension j", ylabel="position t", title=f"sinusoidal positional encoding ({T} x {d})")
    fig.colorbar(im, ax=ax1, shrink=0.8)
    for j in range(6, 10):
        ax2.plot(P[:, j], label=f"column {j}")
    ax2.set(xlabel="position t", title="columns 6-9: lower frequency further right")
    ax2.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def plot_attention_maps(caches, x, pred, path):
    """The trained model's attention weights on one held-out sequence x (T,), one panel per layer and head;
    the rows are labelled with the model's output pred (T,), the columns with the input."""
    maps = [attention_weights(c)[0] for c in caches]  # per layer (h, T, T)
    L, H = len(maps), maps[0].shape[0]
    fig = Figure(figsize=(3.2 * H, 3.2 * L), layout="constrained")
    axes = np.array(fig.subplots(L, H, squeeze=False))
    for l in range(L):
        for i in range(H):
            ax = axes[l, i]
            ax.imshow(maps[l][i], cmap="Greys", vmin=0, vmax=1)
            ax.set_xticks(range(len(x)), [str(s) for s in x], fontsize=7)
            ax.set_yticks(range(len(x)), [str(s) for s in pred], fontsize=7)
            ax.set(title=f"layer {l + 1}, head {i + 1}", xlabel="key: input symbol", ylabel="query: output symbol")
    fig.suptitle("attention weights on a held-out sequence (reversal: output t reads input T-1-t)")
    fig.savefig(path, dpi=110)


# %% [markdown]
# ## Main: the figures, then the Transformer trained to reverse sequences


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seq-len", type=positive_int, default=None, help="length of the sequences (default 20; 6 smoke)")
    p.add_argument("--symbols", type=positive_int, default=None, help="alphabet size, >= 2 (default 16; 6 smoke)")
    p.add_argument("--n-embd", type=positive_int, default=None, help="model width (default 32; 16 with --smoke)")
    p.add_argument("--n-head", type=positive_int, default=2, help="attention heads, divide --n-embd (default 2)")
    p.add_argument("--n-layer", type=positive_int, default=None, help="Transformer blocks (default 2; 1 smoke)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 10; 3 with --smoke)")
    p.add_argument("--steps-per-epoch", type=positive_int, default=None,
                   help="batches per epoch (default 100; 50 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="sequences per batch (default 64)")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="Adam learning rate (default 3e-3)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds weights, batches and the toy data (default 0)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/attention_numpy)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run: short sequences, a small model")
    args = p.parse_args(argv)
    defaults = dict(seq_len=6, symbols=6, n_embd=16, n_layer=1, epochs=3, steps_per_epoch=50) if args.smoke else \
        dict(seq_len=20, symbols=16, n_embd=32, n_layer=2, epochs=10, steps_per_epoch=100)
    for flag, value in defaults.items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)
    if args.symbols < 2:
        p.error("--symbols must be at least 2")
    if args.n_embd % args.n_head:
        p.error(f"--n-head {args.n_head} must divide --n-embd {args.n_embd}")
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {}  # the reversal's results go first in metrics.json (RESULTS.md shows a run's first metrics)

    # Attention pooling on d2l's toy regression: y = 2 sin x + x^0.8 + noise
    rng = np.random.default_rng([args.seed, 3])
    x_train = np.sort(rng.uniform(0, 5, 50))
    y_train = 2 * np.sin(x_train) + x_train**0.8 + rng.normal(0, 0.5, 50)
    x_query = np.linspace(0, 5, 50)
    y_true = 2 * np.sin(x_query) + x_query**0.8
    sigmas = (0.1, 0.5, 2.0)
    metrics["nw_mse"] = {str(s): float(((nadaraya_watson(x_query, x_train, y_train, s)[0] - y_true) ** 2).mean())
                         for s in sigmas}  # fmt: skip
    plot_nadaraya_watson(x_train, y_train, x_query, y_true, sigmas, out_dir / "nadaraya_watson.png")
    plot_positional_encoding(60, 32, out_dir / "positional_encoding.png")
    d = args.n_embd // args.n_head  # why sqrt(d): scores of unit-variance q, k at a head's width
    q, k = rng.standard_normal((2, 1000, d))
    metrics["score_std"] = {"d": d, "dot": float(np.sum(q * k, 1).std()),
                            "scaled_dot": float((np.sum(q * k, 1) / np.sqrt(d)).std())}  # fmt: skip
    print("Nadaraya-Watson test MSE: " + ", ".join(f"sigma {s} {v:.3f}" for s, v in metrics["nw_mse"].items())
          + f"; score std at d = {d}: dot {metrics['score_std']['dot']:.2f}, scaled "
          f"{metrics['score_std']['scaled_dot']:.2f}")

    # The Transformer on the reversal task
    T, K = args.seq_len, args.symbols
    params = init_model(np.random.default_rng([args.seed, 1]), K, args.n_embd, args.n_layer)
    p_flat, opt = flat(params), {}
    data_rng = np.random.default_rng(args.seed)
    x_val, y_val = make_batch(np.random.default_rng([args.seed, 2]), 1000, T, K)
    print(f"reverse {T} symbols of {K}: {args.n_layer} pre-LN blocks, width {args.n_embd}, {args.n_head} heads, "
          f"{sum(v.size for v in p_flat.values()):,} parameters")
    hist = {"train_loss": [], "val_loss": [], "token_acc": [], "seq_acc": []}
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        losses = []
        for _ in tqdm(range(args.steps_per_epoch), desc=f"epoch {epoch}", leave=False, disable=not sys.stdout.isatty()):
            x, y = make_batch(data_rng, args.batch_size, T, K)
            loss, grads, _ = loss_and_grads(params, x, y, args.n_head)
            adam_step(p_flat, flat(grads), opt, args.lr)
            losses.append(loss)
        val_loss, token_acc, seq_acc = evaluate(params, x_val, y_val, args.n_head)
        for key, v in zip(hist, (float(np.mean(losses)), val_loss, token_acc, seq_acc)):
            hist[key].append(v)
        print(f"epoch {epoch:2d}/{args.epochs}  train loss {hist['train_loss'][-1]:.4f} | val loss {val_loss:.4f} | "
              f"token acc {token_acc:.3f} | sequence acc {seq_acc:.3f}", flush=True)
    seconds = time.perf_counter() - t0
    logits, cache = model_forward(params, x_val[:1], args.n_head)
    plot_attention_maps(cache[3], x_val[0], logits[0].argmax(axis=-1), out_dir / "attention_maps.png")

    metrics = {"script": "attention_numpy", "token_acc": hist["token_acc"][-1], "seq_acc": hist["seq_acc"][-1],
               "chance_token_acc": 1 / K, "first_loss": hist["train_loss"][0], "final_loss": hist["train_loss"][-1],
               "train_seconds": seconds, **metrics, "config": vars(args), "history": hist}  # fmt: skip
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"held-out token accuracy {metrics['token_acc']:.3f}, sequence accuracy {metrics['seq_acc']:.3f} "
          f"(chance {1 / K:.2f}); wrote {out_dir}/metrics.json and 3 figures")
    return metrics


if __name__ == "__main__":
    main()
