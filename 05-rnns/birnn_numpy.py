"""A bidirectional RNN by hand in NumPy: two RNNs, one reading forwards and one backwards, 2 layers.

A unidirectional RNN's output at step t has seen x_1..x_t only. A bidirectional RNN runs a second
RNN over the reversed sequence and concatenates the two states, so the output at t has seen the
whole sequence: the past through the forward direction, the future through the backward one. The
script trains a 2-layer bidirectional RNN and its unidirectional twin on a tagging task that needs
both: is the symbol at position t seen both before t AND after t? tests/test_rnn_numpy.py checks
every gradient against torch's nn.RNN(bidirectional=True) in float64.
One layer, for x (T, B, D), with a forward RNN (W_xh, W_hh, b_h) and a backward one (W_xh', W_hh', b_h'):

    hf_t = tanh(x_t W_xh  + hf_{t-1} W_hh  + b_h),     t = 1..T      (reads x_1, x_2, ...)
    hb_t = tanh(x_t W_xh' + hb_{t+1} W_hh' + b_h'),    t = T..1      (reads x_T, x_{T-1}, ...)
    out_t = [hf_t | hb_t]                               (B, 2H)
    logits_t = out_t W_hy + b_y,   L = mean over the T*B positions of -log softmax(logits_t)[y_t]
Layer 2 reads out_t (2H features) of layer 1 (a deep RNN, d2l 10.3).
Why a bidirectional model cannot be a language model (d2l 10.4): at training time the backward
state at t has already read x_{t+1}, so predicting it is copying; at generation time x_{t+1} does
not exist yet. Bidirectional models fit tasks where the whole sequence is given: tagging, filling
in a blank, encoding a sentence. `main` computes the accuracy of the best forward-only rule exactly,
the ceiling the unidirectional twin cannot pass.

Reading: M. Schuster and K. Paliwal, "Bidirectional Recurrent Neural Networks" (1997),
https://doi.org/10.1109/78.650093; A. Graves and J. Schmidhuber, "Framewise phoneme classification
with bidirectional LSTM and other neural network architectures" (2005); d2l 10.3 "Deep Recurrent
Neural Networks" and 10.4 "Bidirectional Recurrent Neural Networks",
https://d2l.ai/chapter_recurrent-modern/bi-rnn.html.
Arc: Modern recurrent neural networks -- implement bidirectional RNNs (d2l 10.4), in NumPy.

Run:  python 05-rnns/birnn_numpy.py              (bidirectional and unidirectional, under a minute)
      python 05-rnns/birnn_numpy.py --seq-len 20 --symbols 10
      python 05-rnns/birnn_numpy.py --smoke      (seconds: narrow nets, few steps)
Look first at `birnn_layer_forward` and `birnn_layer_backward`: the backward direction is the same
RNN run on x reversed in time, and its gradient is reversed back; then at
runs/birnn_numpy/learning_curves.png.
"""

# %%
import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tqdm import tqdm

from data import nonneg_float, nonneg_int, positive_float, positive_int, save_metrics

# %% [markdown]
# ## One direction: the vanilla RNN over T steps, forward and BPTT


# %%
def rnn_forward(x, h0, p):
    """h_t = tanh(x_t W_xh + h_{t-1} W_hh + b_h).   x (T, B, D), h0 (B, H) -> outputs (T, B, H), h_T, cache.

    x_t W_xh + b_h for every t is one (T*B, D) @ (D, H) product before the loop.
    """
    W_xh, W_hh, b_h = p["W_xh"], p["W_hh"], p["b_h"]
    T, B, D = x.shape
    H = W_hh.shape[0]
    ax = (x.reshape(T * B, D) @ W_xh + b_h).reshape(T, B, H)
    hs = np.empty((T + 1, B, H), x.dtype)  # h_0..h_T
    hs[0] = h0
    for t in range(T):
        hs[t + 1] = np.tanh(ax[t] + hs[t] @ W_hh)
    return hs[1:], hs[T], (x, p, hs)


def rnn_backward(dhs, dh_T, cache):
    """BPTT: dh_t = dhs[t] + dh_next,  da_t = dh_t (1 - h_t^2),  dh_next = da_t W_hh^T, backwards in t;
    then dW_xh = sum_t x_t^T da_t, dW_hh = sum_t h_{t-1}^T da_t, db_h = sum_t da_t, dx_t = da_t W_xh^T.

    Returns dx (T, B, D), dL/dh_0 (B, H) and the gradients {W_xh, W_hh, b_h}.
    """
    x, p, hs = cache
    T, B, D = x.shape
    H = hs.shape[2]
    W_hh_T = np.ascontiguousarray(p["W_hh"].T)  # a copy: OpenBLAS multiplies by it faster than by the view
    da = np.empty((T, B, H), x.dtype)
    dh_next = dh_T
    for t in reversed(range(T)):
        da[t] = (dhs[t] + dh_next) * (1 - hs[t + 1] ** 2)
        dh_next = da[t] @ W_hh_T
    da2 = da.reshape(T * B, H)
    grads = {"W_xh": x.reshape(T * B, D).T @ da2, "W_hh": hs[:-1].reshape(T * B, H).T @ da2, "b_h": da2.sum(axis=0)}
    return (da2 @ p["W_xh"].T).reshape(T, B, D), dh_next, grads


# %% [markdown]
# ## A (bi)directional layer, and the stack


# %%
def birnn_layer_forward(x, h0, ps):
    """One layer with len(ps) directions (2: bidirectional, 1: forward only).   x (T, B, D), h0 (dirs, B, H).

    The backward direction is the same RNN code on x[::-1] (time reversed); its outputs are reversed
    back, so that out[t] = [hf_t | hb_t] describes position t. Returns out (T, B, dirs*H), h_T (dirs, B, H).
    """
    outs, h_T, caches = [], [], []
    for k, p in enumerate(ps):
        xs = x if k == 0 else x[::-1]  # direction 1 reads x_T first
        hs, hT, cache = rnn_forward(xs, h0[k], p)
        outs.append(hs if k == 0 else hs[::-1])  # hb in the order of positions
        h_T.append(hT)  # the forward RNN's h_T, the backward RNN's state after reading x_1
        caches.append(cache)
    return np.concatenate(outs, axis=2), np.stack(h_T), caches


def birnn_layer_backward(dout, dh_T, caches):
    """Split dL/dout (T, B, dirs*H) into the directions' shares; the backward direction's share is
    reversed in time (it ran on x[::-1]) and its dx reversed back; x fed both, so dx is the sum."""
    H = dh_T.shape[2]
    dx, dh0, grads = 0, [], []
    for k, cache in enumerate(caches):
        dhs = dout[:, :, k * H : (k + 1) * H]
        dxk, dh0k, g = rnn_backward(dhs if k == 0 else dhs[::-1], dh_T[k], cache)
        dx = dx + (dxk if k == 0 else dxk[::-1])
        dh0.append(dh0k)
        grads.append(g)
    return dx, np.stack(dh0), grads


def init_layers(rng, input_size, hidden_size, num_layers, bidirectional=True, dtype=np.float32):
    """[[forward params, backward params], ...] per layer; W ~ U(-1/sqrt(H), 1/sqrt(H)) as torch, b = 0.

    Layer l > 1 reads dirs * H features: both directions of the layer below.
    """
    if input_size < 1 or hidden_size < 1 or num_layers < 1:
        raise ValueError("input_size, hidden_size and num_layers must be >= 1, "
                         f"got {input_size}, {hidden_size}, {num_layers}")
    H, dirs, k = hidden_size, 2 if bidirectional else 1, 1 / np.sqrt(hidden_size)
    return [[{"W_xh": rng.uniform(-k, k, (input_size if l == 0 else dirs * H, H)).astype(dtype),
              "W_hh": rng.uniform(-k, k, (H, H)).astype(dtype), "b_h": np.zeros(H, dtype)} for _ in range(dirs)]
            for l in range(num_layers)]


def forward(layers, x, h0=None):
    """The stack: x (T, B, D), h0 (L * dirs, B, H) in torch's order (layer 1 forward, layer 1 backward,
    layer 2 forward, ...) or None for zeros. Returns out (T, B, dirs*H), h_T (L * dirs, B, H), caches."""
    dirs, H = len(layers[0]), layers[0][0]["W_hh"].shape[0]
    h0 = np.zeros((len(layers) * dirs, x.shape[1], H), x.dtype) if h0 is None else h0
    h_T, caches = np.empty_like(h0), []
    for l, ps in enumerate(layers):
        x, h_T[l * dirs : (l + 1) * dirs], cache = birnn_layer_forward(x, h0[l * dirs : (l + 1) * dirs], ps)
        caches.append(cache)
    return x, h_T, caches


def backward(dout, dh_T, caches):
    """BPTT through the stack, top layer first. dout (T, B, dirs*H), dh_T (L * dirs, B, H) or None.

    Returns the gradients ([[forward dict, backward dict], ...]), dx (T, B, D) and dh0 (L * dirs, B, H).
    """
    dirs, L = len(caches[0]), len(caches)
    H = dout.shape[2] // dirs
    dh_T = np.zeros((L * dirs, dout.shape[1], H), dout.dtype) if dh_T is None else dh_T
    grads, dh0 = [None] * L, np.empty_like(dh_T)
    for l in reversed(range(L)):
        dout, dh0[l * dirs : (l + 1) * dirs], grads[l] = birnn_layer_backward(dout, dh_T[l * dirs : (l + 1) * dirs],
                                                                               caches[l])
    return grads, dout, dh0


# %% [markdown]
# ## The task: is x_t seen both before and after position t?


# %%
def make_batch(rng, batch_size, seq_len, n_symbols):
    """Random sequences (T, B) of n_symbols symbols, one-hot x (T, B, K), and per-position labels
    y[t] = 1 if x_t also occurs somewhere before t AND somewhere after t, else 0.

    A forward-only reader at t knows the "before" half; the "after" half is a coin it cannot see.
    """
    seq = rng.integers(0, n_symbols, (seq_len, batch_size))  # (T, B)
    same = seq[:, None, :] == seq[None, :, :]  # (T, T, B): same[t, s] = x_t == x_s
    t = np.arange(seq_len)
    before = (same & (t[None, :] < t[:, None])[:, :, None]).any(axis=1)  # some s < t
    after = (same & (t[None, :] > t[:, None])[:, :, None]).any(axis=1)  # some s > t
    return np.eye(n_symbols, dtype=np.float32)[seq], (before & after).astype(np.int64)


def flat(tree):
    """{"layers": [[{...}, {...}], ...], ...} -> {"0.0.W_xh": ..., ..., "W_hy": ..., "b_y": ...}."""
    out = {f"{l}.{k}.{n}": v for l, ps in enumerate(tree["layers"]) for k, p in enumerate(ps) for n, v in p.items()}
    return out | {k: v for k, v in tree.items() if k != "layers"}


def loss_and_grads(params, x, y):
    """Per-position logits_t = out_t W_hy + b_y (2 classes), mean cross-entropy over T*B positions."""
    out, _, caches = forward(params["layers"], x)
    T, B, F = out.shape
    logits = out.reshape(T * B, F) @ params["W_hy"] + params["b_y"]
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    y, n = y.reshape(-1), T * B
    loss = -log_p[np.arange(n), y].mean()
    dlogits = np.exp(log_p)
    dlogits[np.arange(n), y] -= 1
    dlogits /= n
    layer_grads, _, _ = backward((dlogits @ params["W_hy"].T).reshape(T, B, F), None, caches)
    grads = {"layers": layer_grads, "W_hy": out.reshape(n, F).T @ dlogits, "b_y": dlogits.sum(axis=0)}
    return float(loss), grads, logits.argmax(axis=1).reshape(T, B)


# clipping by global norm, as taught in 05-rnns/rnn_numpy.py
def clip_grad_norm(grads, max_norm):
    """Scale all gradients by max_norm / ||g|| if the global norm exceeds max_norm (in place, as torch's
    clip_grad_norm_); returns the norm before clipping."""
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


def train(bidirectional, args, x_val, y_val):
    """Adam on fresh batches; held-out per-position accuracy after every epoch of `--steps-per-epoch` batches."""
    rng, data_rng = np.random.default_rng([args.seed, 1]), np.random.default_rng(args.seed)
    dirs = 2 if bidirectional else 1
    params = {"layers": init_layers(rng, args.symbols, args.hidden_size, args.layers, bidirectional)}
    F = dirs * args.hidden_size  # features the head reads: [hf | hb] or hf
    params["W_hy"] = (rng.standard_normal((F, 2)) / np.sqrt(F)).astype(np.float32)
    params["b_y"] = np.zeros(2, np.float32)
    p_flat, opt, name = flat(params), {}, "birnn" if bidirectional else "uni"
    hist = {"train_loss": [], "val_acc": []}
    for epoch in range(1, args.epochs + 1):
        losses = []
        for _ in tqdm(range(args.steps_per_epoch), desc=f"{name} epoch {epoch}", leave=False,
                      disable=not sys.stdout.isatty()):
            x, y = make_batch(data_rng, args.batch_size, args.seq_len, args.symbols)
            loss, grads, _ = loss_and_grads(params, x, y)
            g = flat(grads)
            clip_grad_norm(g, args.clip or math.inf)  # --clip 0: never clipped
            adam_step(p_flat, g, opt, args.lr)
            losses.append(loss)
        _, _, pred = loss_and_grads(params, x_val, y_val)
        hist["train_loss"].append(float(np.mean(losses)))
        hist["val_acc"].append(float((pred == y_val).mean()))
        print(f"{name:5s} epoch {epoch:2d}/{args.epochs}  train loss {hist['train_loss'][-1]:.4f} | "
              f"val acc {hist['val_acc'][-1]:.4f}", flush=True)
    return params, hist


def plot_curves(hists, ceiling, args, path):
    """Held-out per-position accuracy of both nets, with the best a forward-only reader can do."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for name, hist in hists.items():
        epochs = np.arange(1, len(hist["val_acc"]) + 1)
        ax1.plot(epochs, hist["train_loss"], "o-", ms=3, label=name)
        ax2.plot(epochs, hist["val_acc"], "o-", ms=3, label=name)
    ax2.axhline(ceiling, color="gray", ls="--", label=f"best forward-only rule: {ceiling:.3f}")
    ax1.set(xlabel=f"epoch ({args.steps_per_epoch} batches of {args.batch_size})", ylabel="cross-entropy",
            title="training loss")
    ax2.set(xlabel="epoch", ylabel="accuracy per position", title="held-out accuracy (2,000 sequences)")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"birnn_numpy: is x_t seen before AND after t?  T = {args.seq_len}, {args.symbols} symbols, "
                 f"{args.layers} layers x {args.hidden_size} units per direction")
    fig.savefig(path, dpi=120)


# %% [markdown]
# ## Main: the bidirectional RNN and its unidirectional twin on the same batches


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seq-len", type=positive_int, default=12, help="sequence length T (default 12)")
    p.add_argument("--symbols", type=positive_int, default=6, help="alphabet size, >= 2 (default 6)")
    p.add_argument("--hidden-size", type=positive_int, default=None,
                   help="units per direction and layer (default 64; 16 with --smoke)")
    p.add_argument("--layers", type=positive_int, default=2, help="stacked layers (default 2)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 20; 3 with --smoke)")
    p.add_argument("--steps-per-epoch", type=positive_int, default=None,
                   help="batches per epoch (default 50; 30 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="sequences per batch (default 64)")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="Adam learning rate (default 3e-3)")
    p.add_argument("--clip", type=nonneg_float, default=1.0,
                   help="max global gradient norm, 0: no clipping (default 1.0)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds weights and batches (default 0)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/birnn_numpy)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run: narrow nets, few steps")
    args = p.parse_args(argv)
    defaults = dict(hidden_size=16, epochs=3, steps_per_epoch=30) if args.smoke else \
        dict(hidden_size=64, epochs=20, steps_per_epoch=50)
    for flag, value in defaults.items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)
    if args.symbols < 2:
        p.error("--symbols must be at least 2")
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)

    x_val, y_val = make_batch(np.random.default_rng([args.seed, 2]), 2000, args.seq_len, args.symbols)
    # The best a forward-only reader can do: where x_t was seen before, guess "seen after too" iff
    # that is likelier than not, P(seen after) = 1 - (1 - 1/K)^(T-1-t); where it was not, answer 0.
    t = np.arange(args.seq_len)[:, None]
    p_after = 1 - (1 - 1 / args.symbols) ** (args.seq_len - 1 - t)
    seen_before = (x_val.argmax(axis=2)[:, None, :] == x_val.argmax(axis=2)[None, :, :])
    seen_before = (seen_before & (np.arange(args.seq_len)[None, :] < t)[:, :, None]).any(axis=1)
    ceiling = float(((seen_before & (p_after > 0.5)).astype(int) == y_val).mean())
    print(f"birnn_numpy: T = {args.seq_len}, {args.symbols} symbols, {args.layers} layers x {args.hidden_size} units; "
          f"{y_val.mean():.3f} of positions are 1; forward-only ceiling {ceiling:.3f}")
    hists, secs = {}, {}
    for name, bidirectional in (("birnn", True), ("uni", False)):
        t0 = time.perf_counter()
        _, hists[name] = train(bidirectional, args, x_val, y_val)
        secs[name] = time.perf_counter() - t0
    plot_curves(hists, ceiling, args, out_dir / "learning_curves.png")
    metrics = {"script": "birnn_numpy", "forward_only_ceiling": ceiling, "positive_rate": float(y_val.mean())}
    for name, hist in hists.items():
        metrics[f"{name}_val_acc"] = hist["val_acc"][-1]
        metrics[f"{name}_first_loss"], metrics[f"{name}_final_loss"] = hist["train_loss"][0], hist["train_loss"][-1]
        metrics[f"{name}_seconds"] = secs[name]
    metrics |= {"config": vars(args), "history": hists}
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"held-out accuracy per position: bidirectional {metrics['birnn_val_acc']:.4f}, unidirectional "
          f"{metrics['uni_val_acc']:.4f} (forward-only ceiling {ceiling:.4f}); wrote {out_dir}/metrics.json")
    return metrics


if __name__ == "__main__":
    main()
