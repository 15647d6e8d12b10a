"""A recurrent neural network by hand in NumPy: forward over time, backpropagation through time, a character model.

The vanilla (Elman) RNN reads a sequence one step at a time and carries a hidden state h_t; the same
weights serve every step. Training unrolls it over T steps and runs the chain rule backwards through
the unrolled graph (BPTT), written out here step by step. A 2-layer RNN learns a character model of a
short text kept in this file (truncated BPTT, clipping by global norm, Adam), then writes new text.
One layer, for x_t (B, D), h_{t-1} (B, H), W_xh (D, H), W_hh (H, H), b_h (H,); layer l > 1 reads the
outputs of layer l - 1 as its x_t (a deep RNN, d2l 10.3); on top, a linear layer and the softmax:

    h_t = tanh(a_t),  a_t = x_t W_xh + h_{t-1} W_hh + b_h           (B, H), t = 1..T, h_0 given
    logits_t = h_t W_hy + b_y                                        (B, V): the next character's scores
    L = -(1 / (T B)) sum_{t, b} log softmax(logits_t)[b, y_t]        perplexity = exp(L)
BPTT, backwards from t = T with dh_next = 0 (truncated: the segment's end stops the gradient):
    dh_t = dL/dh_t (from above) + dh_next,   da_t = dh_t * (1 - h_t^2),   dh_next <- da_t W_hh^T
    dW_xh = sum_t x_t^T da_t,  dW_hh = sum_t h_{t-1}^T da_t,  db_h = sum_t da_t,  dx_t = da_t W_xh^T
The product of T factors diag(1 - h_t^2) W_hh^T makes far gradients vanish or explode; clipping the
global norm, g <- g * min(1, c / ||g||), tames the explosions (lstm_numpy.py and gru_numpy.py the
vanishing). With one page of text to learn from, the net memorises it: the validation curve turns
up while the training curve falls (rnn_torch.py trains on a million characters).

Reading: d2l 9.4-9.7 "Recurrent Neural Networks", https://d2l.ai/chapter_recurrent-neural-networks/;
J. Elman, "Finding Structure in Time" (1990); R. Pascanu, T. Mikolov and Y. Bengio, "On the difficulty
of training recurrent neural networks" (2013), https://arxiv.org/abs/1211.5063 (gradient clipping);
A. Karpathy, "The Unreasonable Effectiveness of Recurrent Neural Networks" (2015),
https://karpathy.github.io/2015/05/21/rnn-effectiveness/; CS224n notes on language models and RNNs.
Arc: Recurrent neural networks -- implement a recurrent neural network with backpropagation through time by hand.

Run:  python 05-rnns/rnn_numpy.py                                  (2 x 64 units, seconds on a CPU)
      python 05-rnns/rnn_numpy.py --hidden-size 128 --seq-len 50
      python 05-rnns/rnn_numpy.py --smoke
Look first at `rnn_layer_backward` (the BPTT loop), then `lm_loss_and_grads` (the head and its
softmax gradient), then at the sampled text and runs/rnn_numpy/perplexity.png.
"""

# %%
import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter
from tqdm import tqdm

from data import nonneg_float, nonneg_int, positive_float, positive_int, save_metrics

# A short text to model (written for this script). Small enough to learn in minutes on a CPU;
# rnn_torch.py trains the same kind of model on Tiny Shakespeare and The Time Machine.
TEXT = """\
the river runs down from the hills to the sea. in the morning the river is cold and grey, and the
birds sit on the stones and wait for the sun. at noon the river is warm and bright, and the children
run along the bank and throw small stones into the water. in the evening the river is dark and quiet,
and the old men sit by the water and talk about the days when the river was wide and the boats came
up from the sea with salt and fish and cloth. the river does not remember the boats. the river does
not remember the children or the old men or the birds. the river only runs down from the hills to the
sea, in the morning and at noon and in the evening, and the stones in the water grow smooth and round.
the hills remember the rain. the sea remembers the river. the stones remember the water that made
them round. and the children who threw the stones grow old and sit by the water in the evening and
talk about the days when they were young and the river was wide and bright and the boats came up from
the sea. a network that reads this text one letter at a time must remember what it has read: which
word it is in, which words came before, whether the sentence is near its end. it keeps that memory in
its hidden state, and it learns what to keep by running the chain rule backwards through time.
"""

# %% [markdown]
# ## One RNN layer: forward over T steps, and BPTT backwards over the same steps


# %%
def rnn_layer_forward(x, h0, p):
    """h_t = tanh(x_t W_xh + h_{t-1} W_hh + b_h) for t = 1..T.   x (T, B, D), h0 (B, H).

    Returns the outputs h_1..h_T (T, B, H), the final state h_T and the cache for the backward.
    The input's part x_t W_xh + b_h does not depend on h, so it is one (T*B, D) @ (D, H) product
    before the loop; only h_{t-1} W_hh has to wait for the previous step.
    """
    W_xh, W_hh, b_h = p["W_xh"], p["W_hh"], p["b_h"]
    T, B, D = x.shape
    H = W_hh.shape[0]
    ax = (x.reshape(T * B, D) @ W_xh + b_h).reshape(T, B, H)  # x_t W_xh + b_h for every t
    hs = np.empty((T + 1, B, H), x.dtype)  # h_0..h_T
    hs[0] = h0
    for t in range(T):
        hs[t + 1] = np.tanh(ax[t] + hs[t] @ W_hh)  # (B, H)
    return hs[1:], hs[T], (x, p, hs)


def rnn_layer_backward(dhs, dh_T, cache):
    """BPTT: from dL/dh_t for every t (T, B, H) and dL/dh_T (the final state) to dL/dx, dL/dh_0, weights.

    The loop carries one (B, H) array backwards, dh_next = dL/dh_t through h_{t+1}; the da_t it
    produces are kept, so that each weight gradient, a sum over t, is one matrix product afterwards.
    """
    x, p, hs = cache
    T, B, D = x.shape
    H = hs.shape[2]
    W_hh_T = np.ascontiguousarray(p["W_hh"].T)  # a copy: OpenBLAS multiplies by it faster than by the view
    da = np.empty((T, B, H), x.dtype)  # dL/da_t
    dh_next = dh_T
    for t in reversed(range(T)):
        dh = dhs[t] + dh_next  # both paths into h_t
        da[t] = dh * (1 - hs[t + 1] ** 2)  # through tanh
        dh_next = da[t] @ W_hh_T  # dL/dh_{t-1}
    da2 = da.reshape(T * B, H)
    grads = {
        "W_xh": x.reshape(T * B, D).T @ da2,  # sum_t x_t^T da_t          (D, H)
        "W_hh": hs[:-1].reshape(T * B, H).T @ da2,  # sum_t h_{t-1}^T da_t  (H, H)
        "b_h": da2.sum(axis=0),
    }
    dx = (da2 @ p["W_xh"].T).reshape(T, B, D)
    return dx, dh_next, grads


# %% [markdown]
# ## The deep (stacked) RNN, and the language model on top


# %%
def init_layers(rng, input_size, hidden_size, num_layers, dtype=np.float32):
    """Weights ~ U(-1/sqrt(H), 1/sqrt(H)) as torch initialises nn.RNN, biases 0."""
    if input_size < 1 or hidden_size < 1 or num_layers < 1:
        raise ValueError("input_size, hidden_size and num_layers must be >= 1, "
                         f"got {input_size}, {hidden_size}, {num_layers}")
    H, k = hidden_size, 1 / np.sqrt(hidden_size)
    return [{"W_xh": rng.uniform(-k, k, (input_size if l == 0 else H, H)).astype(dtype),
             "W_hh": rng.uniform(-k, k, (H, H)).astype(dtype), "b_h": np.zeros(H, dtype)} for l in range(num_layers)]


def forward(layers, x, h0=None):
    """The stack over T steps: x (T, B, D), h0 (L, B, H) or None (zeros), as torch's nn.RNN.

    Returns the top layer's outputs (T, B, H), the final states h_T (L, B, H) and the caches.
    """
    L, B, H = len(layers), x.shape[1], layers[0]["W_hh"].shape[0]
    h0 = np.zeros((L, B, H), x.dtype) if h0 is None else h0
    h_T, caches = np.empty_like(h0), []
    for l, p in enumerate(layers):
        x, h_T[l], cache = rnn_layer_forward(x, h0[l], p)  # x becomes (T, B, H)
        caches.append(cache)
    return x, h_T, caches


def backward(dout, dh_T, caches):
    """BPTT through the stack, top layer first: a layer's dx is dL/dh_t of the layer below.

    dout (T, B, H), dh_T (L, B, H) or None -> gradients (one dict per layer), dx (T, B, D), dh0 (L, B, H).
    """
    L = len(caches)
    dh_T = np.zeros((L, *dout.shape[1:]), dout.dtype) if dh_T is None else dh_T
    grads, dh0 = [None] * L, np.empty_like(dh_T)
    for l in reversed(range(L)):
        dout, dh0[l], grads[l] = rnn_layer_backward(dout, dh_T[l], caches[l])
    return grads, dout, dh0


def lm_loss_and_grads(params, X, Y, h0):
    """Character LM on a segment: X, Y (B, T) character indices, Y = X shifted by one; h0 (L, B, H).

    x_t is the one-hot of X[:, t]; logits_t = h_t W_hy + b_y; mean cross-entropy over all T*B
    predictions. Returns the loss, the gradients (same structure as params) and h_T, which the next
    segment starts from (truncated BPTT: its gradient is not carried over).
    """
    V = params["W_hy"].shape[1]
    x = np.eye(V, dtype=params["W_hy"].dtype)[X.T]  # (T, B, V)
    out, h_T, caches = forward(params["layers"], x, h0)
    T, B, H = out.shape
    logits = out.reshape(T * B, H) @ params["W_hy"] + params["b_y"]  # (T*B, V)
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    y = Y.T.reshape(-1)  # (T*B,) in the order of the rows of logits
    n = len(y)
    loss = -log_p[np.arange(n), y].mean()
    dlogits = np.exp(log_p)
    dlogits[np.arange(n), y] -= 1
    dlogits /= n  # dL/dlogits = (p - onehot(y)) / (T B)
    dout = (dlogits @ params["W_hy"].T).reshape(T, B, H)
    layer_grads, _, _ = backward(dout, None, caches)
    grads = {"layers": layer_grads, "W_hy": out.reshape(T * B, H).T @ dlogits, "b_y": dlogits.sum(axis=0)}
    return float(loss), grads, h_T


# %% [markdown]
# ## Clipping by global norm, Adam


# %%
def flat(tree):
    """{"layers": [{...}, ...], "W_hy": ..., "b_y": ...} -> {"0.W_xh": ..., ..., "W_hy": ..., "b_y": ...}."""
    out = {f"{l}.{k}": v for l, p in enumerate(tree["layers"]) for k, v in p.items()}
    return out | {k: v for k, v in tree.items() if k != "layers"}


def clip_grad_norm(grads, max_norm):
    """Scale every gradient by max_norm / ||g|| if the global norm ||g|| = sqrt(sum of all g^2) exceeds
    max_norm (in place, as torch.nn.utils.clip_grad_norm_, with its 1e-6). Returns ||g|| before clipping.

    The update keeps its direction; only its length is capped, so one exploding gradient (a long
    product of W_hh's) cannot throw the weights far away (Pascanu et al. 2013).
    """
    norm = float(np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values())))
    if norm > max_norm:
        for g in grads.values():
            g *= max_norm / (norm + 1e-6)
    return norm


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
# ## Data: characters, sequential segments; sampling


# %%
def sequential_segments(corpus, batch_size, seq_len):
    """Cut the corpus into batch_size rows laid side by side; segment i is columns [i T, (i+1) T).

    Row b of segment i + 1 continues row b of segment i, so the hidden state h_T of one segment is
    the right h_0 of the next (d2l 9.3, sequential partitioning). Yields X, Y (B, T), Y = X shifted by one.
    """
    n = (len(corpus) - 1) // batch_size
    X = np.asarray(corpus[: n * batch_size]).reshape(batch_size, n)
    Y = np.asarray(corpus[1 : n * batch_size + 1]).reshape(batch_size, n)
    for i in range(0, n - seq_len + 1, seq_len):
        yield X[:, i : i + seq_len], Y[:, i : i + seq_len]


def evaluate(params, corpus, batch_size, seq_len):
    """Perplexity exp(mean cross-entropy) over the corpus, reading it in order with the state carried."""
    h, total, count = None, 0.0, 0
    for X, Y in sequential_segments(corpus, batch_size, seq_len):
        h = np.zeros((len(params["layers"]), len(X), params["W_hy"].shape[0]), np.float32) if h is None else h
        loss, _, h = lm_loss_and_grads(params, X, Y, h)  # (gradients unused: a forward would do; kept simple)
        total, count = total + loss * X.size, count + X.size
    return float(np.exp(total / count))


def sample(params, chars, prefix, n, rng, temperature=0.8):
    """Generate n characters after prefix: feed each sampled character back in as the next input.

    p(next) = softmax(logits / temperature): below 1 sharpens the distribution (safer, more
    repetitive text), above 1 flattens it (more surprising, more mistakes).
    """
    idx = {c: i for i, c in enumerate(chars)}
    V, L, H = len(chars), len(params["layers"]), params["W_hy"].shape[0]
    h, out = np.zeros((L, 1, H), np.float32), list(prefix)
    tokens = [idx[c] for c in prefix]
    for step in range(len(prefix) - 1 + n):
        x = np.eye(V, dtype=np.float32)[[[tokens[step]]]]  # (1, 1, V): one step, one sequence
        top, h, _ = forward(params["layers"], x, h)
        if step >= len(prefix) - 1:  # the prefix only warms the state up
            logits = (top[0, 0] @ params["W_hy"] + params["b_y"]) / temperature
            p = np.exp(logits - logits.max())
            tokens.append(int(rng.choice(V, p=p / p.sum())))
            out.append(chars[tokens[-1]])
    return "".join(out)


def plot_perplexity(hist, V, path):
    """Training and validation perplexity per epoch (epoch 0: the untrained net, about V)."""
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot(range(1, len(hist["train_ppl"]) + 1), hist["train_ppl"], "o-", ms=3, label="train (mean over the epoch)")
    ax.plot(range(len(hist["val_ppl"])), hist["val_ppl"], "s-", ms=3, label="validation (last 10% of the text)")
    ax.axhline(V, color="gray", ls="--", label=f"uniform guess: V = {V}")
    ax.set(xlabel="epoch", ylabel="perplexity (log scale)", yscale="log",
           title="rnn_numpy: a character model memorises its short text")
    lo, hi = ax.get_ylim()
    ax.set_yticks([v for v in (1, 1.5, 2, 3, 5, 10, 20, 30, 50, 100, 200, 500) if lo <= v <= hi])
    ax.yaxis.set_major_formatter(ScalarFormatter())  # 2, 5, 10 rather than 2x10^0, ...
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)


# %% [markdown]
# ## Main: truncated BPTT over the text, epoch by epoch


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden-size", type=positive_int, default=None,
                   help="units per layer (default 64; 32 with --smoke)")
    p.add_argument("--layers", type=positive_int, default=2, help="stacked RNN layers (default 2)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="passes over the text (default 40; 10 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=4, help="parallel rows of the text (default 4)")
    p.add_argument("--seq-len", type=positive_int, default=25, help="BPTT length T of a segment (default 25)")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="Adam learning rate (default 3e-3)")
    p.add_argument("--clip", type=nonneg_float, default=1.0,
                   help="max global gradient norm, 0: no clipping (default 1.0)")
    p.add_argument("--temperature", type=positive_float, default=0.8, help="sampling temperature (default 0.8)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds weights and sampling (default 0)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/rnn_numpy)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run: narrow net, 10 epochs")
    args = p.parse_args(argv)
    if args.hidden_size is None:
        args.hidden_size = 32 if args.smoke else 64
    if args.epochs is None:
        args.epochs = 10 if args.smoke else 40
    chars = sorted(set(TEXT))
    corpus = np.array([chars.index(c) for c in TEXT])
    split = int(0.9 * len(corpus))
    train, val = corpus[:split], corpus[split:]
    if (len(train) - args.seq_len) // args.batch_size < args.seq_len or len(val) <= args.seq_len:
        p.error(f"--batch-size {args.batch_size} x --seq-len {args.seq_len}: the text ({len(train)} training, "
                f"{len(val)} validation characters) is too short for one segment")
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    V, rng = len(chars), np.random.default_rng(args.seed)
    params = {"layers": init_layers(rng, V, args.hidden_size, args.layers)}
    params["W_hy"] = (rng.standard_normal((args.hidden_size, V)) / np.sqrt(args.hidden_size)).astype(np.float32)
    params["b_y"] = np.zeros(V, np.float32)
    p_flat, opt = flat(params), {}
    print(f"rnn_numpy: {args.layers} x {args.hidden_size} tanh RNN, {V} characters, {len(train)} train / {len(val)} "
          f"validation characters, segments of {args.seq_len}")

    val_bs = max(1, min(args.batch_size, len(val) // (args.seq_len + 1)))
    hist = {"train_ppl": [], "val_ppl": [evaluate(params, val, val_bs, args.seq_len)], "epoch_s": []}
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        offset = int(rng.integers(args.seq_len))  # a random start, so segment borders move between epochs
        h, losses = np.zeros((args.layers, args.batch_size, args.hidden_size), np.float32), []
        segments = list(sequential_segments(train[offset:], args.batch_size, args.seq_len))
        for X, Y in tqdm(segments, desc=f"epoch {epoch}", leave=False, disable=not sys.stdout.isatty()):
            loss, grads, h = lm_loss_and_grads(params, X, Y, h)  # h: carried over, its gradient is not
            g = flat(grads)
            clip_grad_norm(g, args.clip or math.inf)  # --clip 0: never clipped
            adam_step(p_flat, g, opt, args.lr)
            losses.append(loss)
        hist["epoch_s"].append(time.perf_counter() - t0)
        hist["train_ppl"].append(float(np.exp(np.mean(losses))))
        hist["val_ppl"].append(evaluate(params, val, val_bs, args.seq_len))
        print(f"epoch {epoch:3d}/{args.epochs}  train ppl {hist['train_ppl'][-1]:7.2f} | "
              f"val ppl {hist['val_ppl'][-1]:7.2f} | {hist['epoch_s'][-1]:.2f} s", flush=True)

    text = sample(params, chars, "the river ", 300, np.random.default_rng([args.seed, 3]), args.temperature)
    print(f"sample (temperature {args.temperature}):\n{text}")
    plot_perplexity(hist, V, out_dir / "perplexity.png")
    metrics = {
        "script": "rnn_numpy", "vocab_size": V, "train_ppl": hist["train_ppl"][-1], "val_ppl": hist["val_ppl"][-1],
        "init_val_ppl": hist["val_ppl"][0], "best_val_ppl": min(hist["val_ppl"]),
        "best_val_epoch": int(np.argmin(hist["val_ppl"])), "sample": text,
        "sec_per_epoch": float(np.median(hist["epoch_s"])),
        "config": vars(args), "history": hist,
    }
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"wrote {out_dir}/metrics.json and perplexity.png")
    return metrics


if __name__ == "__main__":
    main()
