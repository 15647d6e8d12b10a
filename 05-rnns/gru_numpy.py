"""Gated recurrent units by hand in NumPy: the GRU cell, forward and backpropagation through time, 2 layers.

The GRU keeps the LSTM's idea -- gates that let the state pass through unchanged -- with one state
and two gates: the update gate z_t interpolates between the old state and a candidate, the reset gate
r_t decides how much of the old state the candidate may read. Where z_t = 1 the state is copied,
h_t = h_{t-1}, and so is its gradient. The script trains a 2-layer GRU and a 2-layer vanilla RNN on a
task where that matters: read a symbol, then `--gap` random symbols of the same alphabet, then answer
with the first one. tests/test_rnn_numpy.py checks every gradient against torch in float64.
One layer, for x_t (B, D), h_{t-1} (B, H), gates stacked in torch's order r, z, n in W_xh (D, 3H),
W_hh (H, 3H), b_xh (3H,), b_hh (3H,):

    r_t = sigmoid(x_t W_xr + b_xr + h_{t-1} W_hr + b_hr)          reset gate
    z_t = sigmoid(x_t W_xz + b_xz + h_{t-1} W_hz + b_hz)          update gate
    n_t = tanh(x_t W_xn + b_xn + r_t * (h_{t-1} W_hn + b_hn))     candidate state
    h_t = (1 - z_t) * n_t + z_t * h_{t-1}
This is torch's nn.GRU variant: r_t multiplies (h_{t-1} W_hn + b_hn), after the matrix product (Cho
et al. and d2l 10.2 write r_t * h_{t-1} inside it); so the product can be computed for all gates at
once. Layer l > 1 reads the outputs h_t of layer l - 1 (d2l 10.3); the head reads the top layer's
last h_T: logits = h_T W_hy + b_y, mean cross-entropy. The update-gate bias starts at +2 (`init_layers`).

Reading: K. Cho et al., "Learning Phrase Representations using RNN Encoder-Decoder for Statistical
Machine Translation" (2014), https://arxiv.org/abs/1406.1078; J. Chung et al., "Empirical Evaluation
of Gated Recurrent Neural Networks on Sequence Modeling" (2014), https://arxiv.org/abs/1412.3555;
d2l 10.2 "Gated Recurrent Units (GRU)", https://d2l.ai/chapter_recurrent-modern/gru.html.
Arc: Modern recurrent neural networks -- implement GRU (Cho et al. 2014), in NumPy.

Run:  python 05-rnns/gru_numpy.py              (GRU and RNN, gap 35, about a minute on a CPU)
      python 05-rnns/gru_numpy.py --gap 10     (a short gap: the RNN copes too)
      python 05-rnns/gru_numpy.py --smoke      (seconds: short gap, narrow nets)
Look first at `gru_layer_backward`: dh_{t-1} = dh * z + ..., the direct path the update gate opens;
then at runs/gru_numpy/learning_curves.png.
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

from data import nonneg_float, nonneg_int, positive_float, positive_int, save_metrics

# %% [markdown]
# ## The cells: each layer's forward beside its backward through time


# %%
def sigmoid(z):
    """1 / (1 + exp(-z)), written as (1 + tanh(z / 2)) / 2: the same function, no overflow for large |z|."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def gru_layer_forward(x, state0, p):
    """One GRU layer over all T steps.   x (T, B, D), state0 = (h0,) with h0 (B, H).

    Returns the outputs h_1..h_T (T, B, H), the final state (h_T,) and the cache for the backward.
    x_t W_xh + b_xh for every t is one (T*B, D) @ (D, 3H) product before the loop; the loop only
    computes h_{t-1} W_hh + b_hh, which must wait for the previous step.
    """
    W_xh, W_hh, b_xh, b_hh = p["W_xh"], p["W_hh"], p["b_xh"], p["b_hh"]
    T, B, D = x.shape
    H = W_hh.shape[0]
    ax = (x.reshape(T * B, D) @ W_xh + b_xh).reshape(T, B, 3 * H)  # [x W_xr + b_xr | x W_xz + b_xz | x W_xn + b_xn]
    hs = np.empty((T + 1, B, H), x.dtype)  # h_0..h_T
    gates = np.empty((T, B, 3 * H), x.dtype)  # [r | z | n] after their nonlinearities
    ah_n = np.empty((T, B, H), x.dtype)  # h_{t-1} W_hn + b_hn, which r multiplies
    hs[0] = state0[0]
    for t in range(T):
        ah = hs[t] @ W_hh + b_hh  # (B, 3H)
        gates[t, :, : 2 * H] = sigmoid(ax[t, :, : 2 * H] + ah[:, : 2 * H])  # r_t, z_t
        r, z = gates[t, :, :H], gates[t, :, H : 2 * H]
        ah_n[t] = ah[:, 2 * H :]
        gates[t, :, 2 * H :] = n = np.tanh(ax[t, :, 2 * H :] + r * ah_n[t])  # n_t
        hs[t + 1] = n + z * (hs[t] - n)  # h_t = (1 - z) n + z h_{t-1}
    return hs[1:], (hs[T],), (x, p, hs, gates, ah_n)


def gru_layer_backward(dhs, dstate, cache):
    """BPTT through one GRU layer: from dL/dh_t for every t (T, B, H) and dL/dh_T to dL/dx (T, B, D),
    dL/dh_0 and the weight gradients.

    Going backwards in time, with dh = dL/dh_t (from above, dhs[t], plus from step t+1):

        dn   = dh * (1 - z)                        h_t = (1 - z) n + z h_{t-1}
        dz   = dh * (h_{t-1} - n)
        da_n = dn * (1 - n^2)                      n = tanh(a_n),  a_n = x W_xn + b_xn + r * ah_n
        dr   = da_n * ah_n                         ah_n = h_{t-1} W_hn + b_hn
        da_r = dr * r (1 - r),   da_z = dz * z (1 - z)
        dah  = [da_r | da_z | da_n * r]            the gradient reaching h_{t-1} W_hh + b_hh
        dh_{t-1} = dh * z + dah W_hh^T             directly through z h_{t-1}, and through the gates
    and after the loop, with dax = [da_r | da_z | da_n] and dah stacked over t into (T*B, 3H):
        dW_xh = sum_t x_t^T dax_t,  db_xh = sum_t dax_t,  dW_hh = sum_t h_{t-1}^T dah_t,  db_hh = sum_t dah_t
    """
    x, p, hs, gates, ah_n = cache
    T, B, D = x.shape
    H = hs.shape[2]
    W_hh_T = np.ascontiguousarray(p["W_hh"].T)  # a copy: OpenBLAS multiplies by it faster than by the view
    dax = np.empty_like(gates)  # dL/d(x_t W_xh + b_xh)
    dah = np.empty_like(gates)  # dL/d(h_{t-1} W_hh + b_hh)
    (dh_next,) = dstate
    for t in reversed(range(T)):
        r, z, n = gates[t, :, :H], gates[t, :, H : 2 * H], gates[t, :, 2 * H :]
        dh = dhs[t] + dh_next
        da_n = dh * (1 - z) * (1 - n * n)
        dax[t, :, :H] = da_n * ah_n[t] * r * (1 - r)  # da_r
        dax[t, :, H : 2 * H] = dh * (hs[t] - n) * z * (1 - z)  # da_z
        dax[t, :, 2 * H :] = da_n
        dah[t, :, : 2 * H] = dax[t, :, : 2 * H]
        dah[t, :, 2 * H :] = da_n * r
        dh_next = dh * z + dah[t] @ W_hh_T  # dL/dh_{t-1} (B, H)
    dax2, dah2 = dax.reshape(T * B, 3 * H), dah.reshape(T * B, 3 * H)
    grads = {
        "W_xh": x.reshape(T * B, D).T @ dax2,  # (D, 3H)
        "W_hh": hs[:-1].reshape(T * B, H).T @ dah2,  # (H, 3H): h_0..h_{T-1}
        "b_xh": dax2.sum(axis=0),
        "b_hh": dah2.sum(axis=0),
    }
    dx = (dax2 @ p["W_xh"].T).reshape(T, B, D)
    return dx, (dh_next,), grads


def rnn_layer_forward(x, state0, p):
    """One vanilla (Elman) RNN layer, the baseline: h_t = tanh(x_t W_xh + h_{t-1} W_hh + b_h).

    x (T, B, D), state0 = (h0,) with h0 (B, H) -> outputs (T, B, H), final state (h_T,), cache.
    """
    W_xh, W_hh, b_h = p["W_xh"], p["W_hh"], p["b_h"]
    T, B, D = x.shape
    H = W_hh.shape[0]
    ax = (x.reshape(T * B, D) @ W_xh + b_h).reshape(T, B, H)  # hoisted input projection
    hs = np.empty((T + 1, B, H), x.dtype)
    hs[0] = state0[0]
    for t in range(T):
        hs[t + 1] = np.tanh(ax[t] + hs[t] @ W_hh)
    return hs[1:], (hs[T],), (x, p, hs)


def rnn_layer_backward(dhs, dstate, cache):
    """BPTT through the RNN layer: da_t = (dhs[t] + dh_next) * (1 - h_t^2), dh_next <- da_t W_hh^T.

    Each step multiplies the gradient by diag(1 - h_t^2) W_hh^T: over a gap of 35 steps that product
    shrinks it (or blows it up) geometrically -- the vanishing gradient the GRU's update gate avoids.
    """
    x, p, hs = cache
    T, B, D = x.shape
    H = hs.shape[2]
    W_hh_T = np.ascontiguousarray(p["W_hh"].T)  # a copy: OpenBLAS multiplies by it faster than by the view
    da = np.empty((T, B, H), x.dtype)
    (dh_next,) = dstate
    for t in reversed(range(T)):
        da[t] = (dhs[t] + dh_next) * (1 - hs[t + 1] ** 2)  # through tanh
        dh_next = da[t] @ W_hh_T
    da2 = da.reshape(T * B, H)
    grads = {"W_xh": x.reshape(T * B, D).T @ da2, "W_hh": hs[:-1].reshape(T * B, H).T @ da2, "b_h": da2.sum(axis=0)}
    return (da2 @ p["W_xh"].T).reshape(T, B, D), (dh_next,), grads


# cell name -> (layer forward, layer backward, gates per unit, arrays in the state)
CELLS = {"gru": (gru_layer_forward, gru_layer_backward, 3, 1), "rnn": (rnn_layer_forward, rnn_layer_backward, 1, 1)}


# %% [markdown]
# ## A deep (stacked) recurrent network: layer l reads the outputs of layer l - 1


# %%
def init_layers(rng, input_size, hidden_size, num_layers, cell="gru", update_bias=2.0, dtype=np.float32):
    """Weights and biases ~ U(-1/sqrt(H), 1/sqrt(H)) as torch initialises them (RNN biases 0), and
    `update_bias` added to the GRU's update-gate bias b_xz.

    The update gate plays the LSTM forget gate's part: z_t = sigmoid(2) = 0.88 at the start keeps 88%
    of the state per step, so what was written 35 steps ago is still there, and so is its gradient
    (0.88^35 = 1%, against 0.5^35 = 3e-11 with torch's default, z_t near 0.5): from torch's default
    the gradient from the first symbol all but vanishes over the default gap of 35.
    """
    if input_size < 1 or hidden_size < 1 or num_layers < 1:
        raise ValueError("input_size, hidden_size and num_layers must be >= 1, "
                         f"got {input_size}, {hidden_size}, {num_layers}")
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
    G, H, k = CELLS[cell][2], hidden_size, 1 / np.sqrt(hidden_size)
    layers = []
    for l in range(num_layers):
        D = input_size if l == 0 else H
        p = {"W_xh": rng.uniform(-k, k, (D, G * H)), "W_hh": rng.uniform(-k, k, (H, G * H))}
        if cell == "gru":  # two biases: b_hn sits inside r_t * (h W_hn + b_hn), so it is not redundant
            p |= {"b_xh": rng.uniform(-k, k, G * H), "b_hh": rng.uniform(-k, k, G * H)}
            p["b_xh"][H : 2 * H] += update_bias  # z_t starts near sigmoid(update_bias): copy by default
        else:
            p["b_h"] = np.zeros(G * H)
        layers.append({name: v.astype(dtype) for name, v in p.items()})
    return layers


def forward(layers, x, state=None, cell="gru"):
    """The stack over T steps.   x (T, B, D); state: a tuple (h0,) with h0 (L, B, H), zeros if None
    (torch's layout, wrapped in a tuple so that the GRU and the RNN share this code).

    Returns the top layer's outputs (T, B, H), the final state (same layout as state) and the caches.
    """
    layer_forward, _, _, n_state = CELLS[cell]
    L, B, H = len(layers), x.shape[1], layers[0]["W_hh"].shape[0]
    if state is None:
        state = tuple(np.zeros((L, B, H), x.dtype) for _ in range(n_state))
    finals, caches = [], []
    for l, p in enumerate(layers):
        x, final, cache = layer_forward(x, tuple(s[l] for s in state), p)  # x becomes (T, B, H)
        finals.append(final)
        caches.append(cache)
    return x, tuple(np.stack(s) for s in zip(*finals)), caches


def backward(dout, dstate, caches, cell="gru"):
    """BPTT through the stack, top layer first: each layer's dx is the dL/dh_t of the layer below.

    dout (T, B, H) = dL/d(outputs), dstate = dL/d(final state) (tuple of (L, B, H), or None for 0).
    Returns the gradients (one dict per layer), dL/dx (T, B, D) and dL/d(initial state).
    """
    layer_backward = CELLS[cell][1]
    L = len(caches)
    if dstate is None:
        dstate = tuple(np.zeros((L, *dout.shape[1:]), dout.dtype) for _ in range(CELLS[cell][3]))
    grads, dstate0 = [None] * L, [None] * L
    for l in reversed(range(L)):
        dout, dstate0[l], grads[l] = layer_backward(dout, tuple(s[l] for s in dstate), caches[l])
    return grads, dout, tuple(np.stack(s) for s in zip(*dstate0))


# %% [markdown]
# ## The task's head and loss, clipping, Adam


# %%
def loss_and_grads(params, x, y, cell):
    """Read the top layer's last output h_T, classify it: logits = h_T W_hy + b_y, mean cross-entropy.

    x (T, B, K) one-hot, y (B,). Only the last step has a target, so dL/dh_t = 0 for t < T and the
    whole gradient must travel back through the recurrence to reach the first symbol.
    """
    out, _, caches = forward(params["layers"], x, cell=cell)
    h_T = out[-1]  # (B, H)
    logits = h_T @ params["W_hy"] + params["b_y"]  # (B, K)
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    B = len(y)
    loss = -log_p[np.arange(B), y].mean()
    dlogits = np.exp(log_p)
    dlogits[np.arange(B), y] -= 1
    dlogits /= B  # dL/dlogits = (p - onehot(y)) / B
    dout = np.zeros_like(out)
    dout[-1] = dlogits @ params["W_hy"].T
    layer_grads, _, _ = backward(dout, None, caches, cell)
    grads = {"layers": layer_grads, "W_hy": h_T.T @ dlogits, "b_y": dlogits.sum(axis=0)}
    return float(loss), grads, logits


def flat(tree):
    """{"layers": [{...}, ...], "W_hy": ..., "b_y": ...} -> {"0.W_xh": ..., ..., "W_hy": ..., "b_y": ...}."""
    out = {f"{l}.{k}": v for l, p in enumerate(tree["layers"]) for k, v in p.items()}
    return out | {k: v for k, v in tree.items() if k != "layers"}


# clipping by global norm, as taught in 05-rnns/rnn_numpy.py
def clip_grad_norm(grads, max_norm):
    """Scale every gradient by max_norm / ||g|| if the global norm ||g|| = sqrt(sum of all g^2) exceeds
    max_norm (in place, as torch.nn.utils.clip_grad_norm_, with its 1e-6). Returns ||g|| before clipping.

    The direction of the update is kept; only its length is capped, so one exploding step (a large
    product of W_hh's along the sequence) cannot throw the weights far away.
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
# ## The task: remember the first symbol over a gap of distractors


# %%
def make_batch(rng, batch_size, gap, n_symbols):
    """A sequence of gap + 1 random symbols; the target is the first one, y = x_0.

    The distractors come from the same alphabet, so "remember the last symbol seen" fails: the net
    must write x_0 into memory and then protect it from every later symbol, which is what an update
    gate near 1 does. Returns x (gap + 1, B, n_symbols) one-hot and y (B,).
    Chance accuracy: 1 / n_symbols.
    """
    seq = rng.integers(0, n_symbols, (gap + 1, batch_size))  # (T, B)
    return np.eye(n_symbols, dtype=np.float32)[seq], seq[0]


def train(cell, args, rng_init, data_rng, x_val, y_val):
    """Adam on fresh batches; after every epoch (`--steps-per-epoch` batches) the accuracy on the held-out set."""
    K = args.symbols
    params = {"layers": init_layers(rng_init, x_val.shape[2], args.hidden_size, args.layers, cell)}
    params["W_hy"] = (rng_init.standard_normal((args.hidden_size, K)) / np.sqrt(args.hidden_size)).astype(np.float32)
    params["b_y"] = np.zeros(K, np.float32)
    p_flat, opt = flat(params), {}
    hist = {"train_loss": [], "val_acc": [], "grad_norm": []}
    for epoch in range(1, args.epochs + 1):
        losses, norms = [], []
        for _ in tqdm(range(args.steps_per_epoch), desc=f"{cell} epoch {epoch}", leave=False,
                      disable=not sys.stdout.isatty()):
            x, y = make_batch(data_rng, args.batch_size, args.gap, K)
            loss, grads, _ = loss_and_grads(params, x, y, cell)
            g_flat = flat(grads)
            norms.append(clip_grad_norm(g_flat, args.clip or math.inf))  # --clip 0: never clipped
            adam_step(p_flat, g_flat, opt, args.lr)
            losses.append(loss)
        _, _, logits = loss_and_grads(params, x_val, y_val, cell)
        hist["train_loss"].append(float(np.mean(losses)))
        hist["val_acc"].append(float((logits.argmax(axis=1) == y_val).mean()))
        hist["grad_norm"].append(float(np.median(norms)))
        print(f"{cell:4s} epoch {epoch:2d}/{args.epochs}  train loss {hist['train_loss'][-1]:.4f} | "
              f"val acc {hist['val_acc'][-1]:.3f} | grad norm {hist['grad_norm'][-1]:.3g}", flush=True)
    return params, hist


def plot_curves(hists, args, path):
    """Training loss and held-out accuracy per epoch of the GRU and the RNN, chance marked."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for cell, hist in hists.items():
        epochs = np.arange(1, len(hist["val_acc"]) + 1)
        ax1.plot(epochs, hist["train_loss"], "o-", ms=3, label=cell.upper())
        ax2.plot(epochs, hist["val_acc"], "o-", ms=3, label=cell.upper())
    ax1.axhline(np.log(args.symbols), color="gray", ls="--", label=f"chance: log {args.symbols}")
    ax2.axhline(1 / args.symbols, color="gray", ls="--", label="chance")
    ax1.set(xlabel=f"epoch ({args.steps_per_epoch} batches of {args.batch_size})", ylabel="cross-entropy",
            title="training loss")
    ax2.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.05), title="held-out accuracy (1,000 sequences)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"gru_numpy: recall the first of {args.gap + 1} symbols, "
                 f"{args.layers} layers x {args.hidden_size} units")
    fig.savefig(path, dpi=120)


# %% [markdown]
# ## Main: the GRU and the RNN on the same batches


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gap", type=positive_int, default=None,
                   help="random symbols between the first one and the answer (default 35; 5 with --smoke)")
    p.add_argument("--symbols", type=positive_int, default=4, help="symbols to remember, >= 2 (default 4: chance 0.25)")
    p.add_argument("--hidden-size", type=positive_int, default=None,
                   help="units per layer (default 64; 16 with --smoke)")
    p.add_argument("--layers", type=positive_int, default=2, help="stacked layers (default 2)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 15; 4 with --smoke)")
    p.add_argument("--steps-per-epoch", type=positive_int, default=None,
                   help="batches per epoch (default 50; 40 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="sequences per batch (default 64)")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="Adam learning rate (default 3e-3)")
    p.add_argument("--clip", type=nonneg_float, default=1.0,
                   help="max global gradient norm, 0: no clipping (default 1.0)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds weights and batches (default 0)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/gru_numpy)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run: short gap, narrow nets")
    args = p.parse_args(argv)
    defaults = dict(gap=5, hidden_size=16, epochs=4, steps_per_epoch=40) if args.smoke else \
        dict(gap=35, hidden_size=64, epochs=15, steps_per_epoch=50)
    for flag, value in defaults.items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)
    if args.symbols < 2:
        p.error("--symbols must be at least 2")
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)

    x_val, y_val = make_batch(np.random.default_rng([args.seed, 2]), 1000, args.gap, args.symbols)
    print(f"gru_numpy: recall 1 of {args.symbols} symbols after {args.gap} distractors, "
          f"{args.layers} x {args.hidden_size} units, GRU vs RNN")
    hists, secs = {}, {}
    for cell in ("gru", "rnn"):  # the same initial-weight stream and the same batches for both
        t0 = time.perf_counter()
        _, hists[cell] = train(cell, args, np.random.default_rng([args.seed, 1]),
                               np.random.default_rng(args.seed), x_val, y_val)
        secs[cell] = time.perf_counter() - t0
    plot_curves(hists, args, out_dir / "learning_curves.png")
    metrics = {"script": "gru_numpy", "chance": 1 / args.symbols}
    for cell, hist in hists.items():
        metrics[f"{cell}_val_acc"] = hist["val_acc"][-1]
        metrics[f"{cell}_first_loss"], metrics[f"{cell}_final_loss"] = hist["train_loss"][0], hist["train_loss"][-1]
        metrics[f"{cell}_seconds"] = secs[cell]
    metrics |= {"config": vars(args), "history": hists}
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"final held-out accuracy: GRU {metrics['gru_val_acc']:.3f}, RNN {metrics['rnn_val_acc']:.3f} "
          f"(chance {1 / args.symbols:.2f}); wrote {out_dir}/metrics.json and learning_curves.png")
    return metrics


if __name__ == "__main__":
    main()
