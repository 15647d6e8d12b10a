"""GPT-2 in JAX: the model of gpt2_torch.py as pure functions of a parameter pytree, trained with jit.

The parameters are nested dicts named as GPT-2's checkpoint (params["h"][0]["attn"]["c_attn"]["weight"]
is the state_dict's `h.0.attn.c_attn.weight`); `forward` is a function of them, jax.grad gives the
backward pass, AdamW is written out, and one `jax.jit` program does a whole optimizer step. Randomness
is explicit: a PRNG key in, fresh keys split off for every batch and every dropout mask.

    x_0 = wte[idx] + wpe[0..T-1]                                  (B, T, C) token + position embeddings
    x = x + attn(ln_1(x));   x = x + mlp(ln_2(x))                 pre-LN block, n_layer times
    attn(x) = concat_j softmax(q_j k_j^T / sqrt(d) + M) v_j W_proj   M = -inf above the diagonal (causal)
    mlp(x) = GELU(x W_fc) W_proj,  GELU(u) = u/2 (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3)))
    LayerNorm(x) = (x - mean) / sqrt(var + 1e-5) w + b;   logits = ln_f(x) wte^T   (lm_head tied to wte)
    L = -(1/BT) sum_{b,t} log softmax(logits_bt)[y_bt],   y = idx shifted left by one
    AdamW: theta <- theta (1 - lr lambda) [matrices only];  m, v as Adam;  theta -= lr m_hat / (sqrt(v_hat) + eps)
    lr: linear warm-up for warmup_iters, cosine down to min_lr at lr_decay_iters, then min_lr
    clipping: g <- g min(1, max_norm / (||g||_2 + 1e-6)), ||g|| over all parameters together

A linear layer keeps nn.Linear's layout, weight (out, in) and y = x W^T + b, so weights move between
this script, gpt2_torch.py and Hugging Face (whose Conv1D stores W^T) by name: `from_state_dict`.
The data are gpt2_torch.py's: character-level Tiny Shakespeare, the first 90% to train on, the last
10% to validate on, batches of block_size characters at random offsets; the defaults are nanoGPT's
CPU recipe. Speed: the step is compiled ahead of the clock, losses stay on the device between
evaluations, so tokens/s counts training alone.

Reading: A. Radford et al. (2019), "Language Models are Unsupervised Multitask Learners",
https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf;
A. Karpathy, nanoGPT, https://github.com/karpathy/nanoGPT (model.py, train.py: the recipe);
I. Loshchilov and F. Hutter (2019), "Decoupled Weight Decay Regularization", https://arxiv.org/abs/1711.05101;
JAX docs, "Pseudorandom numbers", https://docs.jax.dev/en/latest/random-numbers.html.
Arc: Translation, attention and transformers -- GPT-2, the same model in JAX beside gpt2_torch.py.

Run:  python 06-transformers/gpt_jax.py                       (2,000 steps of nanoGPT's CPU recipe)
      python 06-transformers/gpt_jax.py --smoke               (seconds: a smaller model, 200 steps)
      python 06-transformers/gpt_jax.py --init-from DIR       (fine-tune a Hugging Face GPT-2 folder: weights,
                                                                tokenizer.json; see gpt2_torch.py for fetching gpt2)
Look first at `attention` and `forward`, then `adamw_step` and `train_step`; then at loss.png and the
sample in metrics.json.
"""

# %%
import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure
from tqdm import tqdm

from data import (
    DataError,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    probability,
    save_metrics,
    tinyshakespeare,
)

# %% [markdown]
# ## The model: a config, parameters as a pytree, GPT-2 as pure functions


# %%
@dataclass(frozen=True)  # frozen, so hashable: jax.jit takes it as a static argument
class GPTConfig:
    block_size: int = 64  # longest sequence: the positions wpe has
    vocab_size: int = 65  # Tiny Shakespeare's characters
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128  # C; each head has d = C / n_head
    dropout: float = 0.0
    bias: bool = False  # biases in the linear layers and LayerNorms (GPT-2: True)


PRESETS = {  # the four released GPT-2 sizes (Radford et al. 2019, Table 2)
    "gpt2": GPTConfig(1024, 50257, 12, 12, 768, 0.0, True),
    "gpt2-medium": GPTConfig(1024, 50257, 24, 16, 1024, 0.0, True),
    "gpt2-large": GPTConfig(1024, 50257, 36, 20, 1280, 0.0, True),
    "gpt2-xl": GPTConfig(1024, 50257, 48, 25, 1600, 0.0, True),
}


@partial(jax.jit, static_argnames=("config", "dtype"))  # one compiled program instead of one per weight
def init_params(config, key, dtype=jnp.float32):
    """GPT-2's initialisation: weights and embeddings N(0, 0.02^2), the two residual projections c_proj
    N(0, (0.02 / sqrt(2 n_layer))^2) (each block adds two terms to the residual stream), biases 0,
    LayerNorm w = 1. Every leaf's path, joined by dots, is its state_dict name in gpt2_torch.py."""
    C, L = config.n_embd, config.n_layer
    keys = iter(jax.random.split(key, 2 + 4 * L))  # one fresh key per weight matrix

    def normal(shape, std=0.02):
        return std * jax.random.normal(next(keys), shape, dtype)

    def linear(n_out, n_in, std=0.02):  # nn.Linear's layout: weight (out, in)
        p = {"weight": normal((n_out, n_in), std)}
        return {**p, "bias": jnp.zeros(n_out, dtype)} if config.bias else p

    def layer_norm():
        p = {"weight": jnp.ones(C, dtype)}
        return {**p, "bias": jnp.zeros(C, dtype)} if config.bias else p

    proj_std = 0.02 / math.sqrt(2 * L)
    return {
        "wte": {"weight": normal((config.vocab_size, C))},  # (V, C), also the output layer
        "wpe": {"weight": normal((config.block_size, C))},  # (block_size, C)
        "h": [{"ln_1": layer_norm(),
               "attn": {"c_attn": linear(3 * C, C), "c_proj": linear(C, C, proj_std)},
               "ln_2": layer_norm(),
               "mlp": {"c_fc": linear(4 * C, C), "c_proj": linear(C, 4 * C, proj_std)}} for _ in range(L)],
        "ln_f": layer_norm(),
    }


def split(key, n):
    """n fresh keys from `key`, or n Nones when key is None (no dropout: evaluation, generation)."""
    return [None] * n if key is None else list(jax.random.split(key, n))


def dropout(x, rate, key):
    """Inverted dropout: zero each unit with probability `rate`, scale the rest by 1 / (1 - rate)."""
    if key is None or rate == 0:
        return x
    keep = jax.random.bernoulli(key, 1 - rate, x.shape)
    return jnp.where(keep, x / (1 - rate), 0)


def linear(p, x):
    """y = x W^T + b, with W (out, in) as nn.Linear stores it.   (..., in) -> (..., out)"""
    y = x @ p["weight"].T
    return y + p["bias"] if "bias" in p else y


def layer_norm(p, x, eps=1e-5):
    """(x - mean) / sqrt(var + eps) w + b over the last axis (biased variance, as nn.LayerNorm)."""
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    y = (x - mu) / jnp.sqrt(var + eps) * p["weight"]
    return y + p["bias"] if "bias" in p else y


def gelu(u):
    """GPT-2's GELU, the tanh form: u/2 (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3)))."""
    return 0.5 * u * (1 + jnp.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))


def attention(p, x, n_head, rate=0.0, key=None):
    """Causal multi-head self-attention. x (B, T, C) -> (B, T, C)."""
    B, T, C = x.shape
    d = C // n_head
    k_att, k_out = split(key, 2)
    q, k, v = jnp.split(linear(p["c_attn"], x), 3, axis=-1)  # 3 x (B, T, C): one fused matmul makes all three
    q, k, v = (z.reshape(B, T, n_head, d).transpose(0, 2, 1, 3) for z in (q, k, v))  # (B, h, T, d): head j
    att = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)  # (B, h, T, T)   q k^T / sqrt(d)   is columns j*d:(j+1)*d
    causal = jnp.tril(jnp.ones((T, T), dtype=bool))  # position t may attend to 0..t
    att = jax.nn.softmax(jnp.where(causal, att, -jnp.inf), axis=-1)  # the future gets weight exactly 0
    y = dropout(att, rate, k_att) @ v  # (B, h, T, d)
    y = y.transpose(0, 2, 1, 3).reshape(B, T, C)  # concatenate the heads
    return dropout(linear(p["c_proj"], y), rate, k_out)


def mlp(p, x, rate=0.0, key=None):
    """GELU(x W_fc + b) W_proj + b: C -> 4C -> C, at every position alone."""
    return dropout(linear(p["c_proj"], gelu(linear(p["c_fc"], x))), rate, key)


def block(p, x, config, key=None):
    """One pre-LN block: x + attn(ln_1(x)), then + mlp(ln_2(x))."""
    k_attn, k_mlp = split(key, 2)
    x = x + attention(p["attn"], layer_norm(p["ln_1"], x), config.n_head, config.dropout, k_attn)
    return x + mlp(p["mlp"], layer_norm(p["ln_2"], x), config.dropout, k_mlp)


def forward(params, idx, config, key=None):
    """idx (B, T) token ids -> logits (B, T, V). key: dropout masks are drawn from it; None: no dropout."""
    T = idx.shape[1]
    assert T <= config.block_size, f"{T} tokens: more than block_size {config.block_size}"
    keys = split(key, 1 + config.n_layer)
    x = params["wte"]["weight"][idx] + params["wpe"]["weight"][:T]  # (B, T, C)
    x = dropout(x, config.dropout, keys[0])
    for p, k in zip(params["h"], keys[1:]):
        x = block(p, x, config, k)
    return layer_norm(params["ln_f"], x) @ params["wte"]["weight"].T  # (B, T, V): lm_head is wte


def cross_entropy(logits, targets):
    """Mean over all B*T positions of -log softmax(logits)[target].   logits (B, T, V), targets (B, T)."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_p, targets[..., None], axis=-1).mean()


def loss_fn(params, idx, targets, config, key=None):
    """The loss as a function of the parameters: what jax.grad differentiates."""
    return cross_entropy(forward(params, idx, config, key), targets)


def n_params(params):
    """Parameters, the tied wte/lm_head once."""
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


# %% [markdown]
# ## Weights by name: gpt2_torch.py's state_dict and Hugging Face folders


# %%
def name_of(path):
    """A pytree path ('h', 0, 'attn', 'c_attn', 'weight') as its state_dict name 'h.0.attn.c_attn.weight'."""
    return jax.tree_util.keystr(path, simple=True, separator=".")


def to_state_dict(params):
    """{name: NumPy array}, keyed exactly as gpt2_torch.py's GPT.state_dict() (lm_head.weight is wte's)."""
    sd = {name_of(path): np.asarray(p) for path, p in jax.tree_util.tree_flatten_with_path(params)[0]}
    return {**sd, "lm_head.weight": sd["wte.weight"]}


def from_state_dict(sd, config, dtype=None):
    """The parameter pytree of `config` from {name: array} keyed as gpt2_torch.py's state_dict (NumPy arrays,
    or anything np.asarray takes). Every name must be there with its shape, and nothing else."""
    template = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))  # shapes only, no work
    names = {name_of(path): leaf.shape for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]}
    sd = dict(sd)
    if "lm_head.weight" in sd:  # tied: the output layer is wte, so it must hold the same numbers
        lm_head = np.asarray(sd.pop("lm_head.weight"))
        if "wte.weight" in sd and not np.array_equal(lm_head, np.asarray(sd["wte.weight"])):
            raise ValueError("lm_head.weight differs from wte.weight: this GPT ties them")
    missing, unexpected = sorted(names.keys() - sd.keys()), sorted(sd.keys() - names.keys())
    if missing or unexpected:
        raise ValueError(f"state_dict does not fit {config}: missing {missing}, unexpected {unexpected}")
    for name, shape in names.items():
        if tuple(np.shape(sd[name])) != tuple(shape):
            raise ValueError(f"{name}: shape {tuple(np.shape(sd[name]))}, the config needs {tuple(shape)}")
    return jax.tree_util.tree_map_with_path(lambda path, _: jnp.asarray(sd[name_of(path)], dtype), template)


CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


def hf_to_state_dict(tensors):
    """Hugging Face GPT2LMHeadModel names and layouts -> gpt2_torch.py's: drop the `transformer.` prefix and
    the causal-mask buffers (attn.bias, attn.masked_bias), transpose the Conv1D weights (in, out) -> (out, in)."""
    sd = {}
    for name, w in tensors.items():
        name = name.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        sd[name] = np.asarray(w).T if name.endswith(CONV1D) else np.asarray(w)
    return sd


def load_hf(path):
    """(config, params) from a Hugging Face GPT-2 folder: config.json and model.safetensors."""
    from safetensors.numpy import load_file  # only --init-from needs it

    path = Path(path)
    files = [path / "config.json", path / "model.safetensors"]
    for f in files:
        if not f.is_file():
            raise ValueError(f"{f} is missing: --init-from takes a Hugging Face GPT-2 folder (config.json and "
                             "model.safetensors, as save_pretrained writes)")
    hf = json.loads(files[0].read_text())
    if hf.get("activation_function", "gelu_new") != "gelu_new" or hf.get("layer_norm_epsilon", 1e-5) != 1e-5:
        raise ValueError(f"{files[0]}: this GPT has GELU's tanh form and LayerNorm eps 1e-5, not "
                         f"{hf.get('activation_function')} and {hf.get('layer_norm_epsilon')}")
    config = GPTConfig(hf["n_positions"], hf["vocab_size"], hf["n_layer"], hf["n_head"], hf["n_embd"], 0.0, True)
    return config, from_state_dict(hf_to_state_dict(load_file(files[1])), config)


# %% [markdown]
# ## AdamW, the schedule, clipping, and the jitted training step


# %%
@jax.jit  # one program for all the zeros
def adamw_init(params):
    """AdamW's state: step count t = 0 and zero moments m, v shaped like the parameters."""
    return {"t": jnp.zeros((), jnp.int32), "m": jax.tree.map(jnp.zeros_like, params),
            "v": jax.tree.map(jnp.zeros_like, params)}  # two separate buffers: train_step donates both


# AdamW as taught in 02-optimization/adamw_numpy.py, here decaying matrices only (as gpt2_torch.py's groups)
def adamw_step(params, grads, state, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """One step of torch.optim.AdamW: decoupled decay theta (1 - lr lambda) on the matrices (weights and
    embeddings; never biases or LayerNorm gains), then Adam's bias-corrected step. -> new params, state."""
    b1, b2 = betas
    t = state["t"] + 1
    m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)  # leaky mean of g
    v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)  # leaky mean of g^2
    c1, c2 = 1 - b1**t, 1 - b2**t  # bias corrections: m and v started at 0

    def update(p, m, v):
        p = p * (1 - lr * weight_decay) if p.ndim >= 2 else p  # decay, apart from the gradient
        return p - lr * (m / c1) / (jnp.sqrt(v / c2) + eps)

    return jax.tree.map(update, params, m, v), {"t": t, "m": m, "v": v}


# the schedule of gpt2_torch.py (nanoGPT's)
def get_lr(it, lr, min_lr, warmup_iters, lr_decay_iters):
    """The learning rate of step it = 0, 1, ...: linear warm-up to lr over warmup_iters steps, then a cosine
    from lr down to min_lr at lr_decay_iters, and min_lr after it."""
    if it < warmup_iters:
        return lr * (it + 1) / warmup_iters
    if it >= lr_decay_iters:
        return min_lr
    progress = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)  # 0 -> 1
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)


# clipping by global norm, as taught in 05-rnns/rnn_numpy.py (torch's clip_grad_norm_, 1e-6 included)
def clip_by_global_norm(grads, max_norm):
    """g <- g min(1, max_norm / (||g|| + 1e-6)), the norm over every parameter at once. -> grads, ||g||."""
    norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda g: g * scale, grads), norm


@partial(jax.jit, static_argnames=("config", "betas", "weight_decay", "grad_clip"), donate_argnums=(0, 1))
def train_step(params, opt_state, x, y, lr, key, config, betas=(0.9, 0.99), weight_decay=0.1, grad_clip=1.0):
    """One AdamW step on the batch (x, y), dropout drawn from `key`: forward, backward, clipping, update,
    all one XLA program. -> new params, new optimizer state, the batch's loss, the gradient norm (before
    clipping). donate_argnums: the new parameters and moments are written into the old ones' memory."""
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y, config, key)
    if grad_clip > 0:
        grads, norm = clip_by_global_norm(grads, grad_clip)
    else:
        norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))
    params, opt_state = adamw_step(params, grads, opt_state, lr, betas, weight_decay=weight_decay)
    return params, opt_state, loss, norm


# %% [markdown]
# ## Data: Tiny Shakespeare as token ids, batches at random offsets, sampling


# %%
def char_tokenizer(text):
    """One token per character (nanoGPT's shakespeare_char), ids in sorted order. -> encode, decode, vocab size."""
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    return (lambda s: [stoi[c] for c in s]), (lambda ids: "".join(chars[i] for i in ids)), len(chars)


def hf_tokenizer(folder):
    """The tokenizer.json of a Hugging Face folder (GPT-2's BPE), read with `tokenizers` as gpt2_torch.py reads
    it: the ids the released weights were trained on. -> encode, decode, vocab size."""
    from tokenizers import Tokenizer  # only --init-from needs it (installed with transformers)

    tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    return (lambda s: tok.encode(s).ids), tok.decode, tok.get_vocab_size()


def load_data(data_dir=None, tokenizer=None):
    """Tiny Shakespeare split as gpt2_torch.py (and nanoGPT) split it: the first 90% of the characters train, the
    last 10% validate. -> (train ids, validation ids) as int32 arrays, encode, decode, vocab size."""
    text = tinyshakespeare(data_dir)
    encode, decode, V = tokenizer or char_tokenizer(text)
    n = int(0.9 * len(text))
    return np.array(encode(text[:n]), np.int32), np.array(encode(text[n:]), np.int32), encode, decode, V


@partial(jax.jit, static_argnames=("batch_size", "block_size"))
def get_batch(data, key, batch_size, block_size):
    """batch_size windows of block_size + 1 tokens at random offsets: x (B, T) and y = x shifted by one."""
    ix = jax.random.randint(key, (batch_size,), 0, len(data) - block_size)  # offsets 0 .. N - T - 1
    rows = ix[:, None] + jnp.arange(block_size)  # (B, T)
    return data[rows], data[rows + 1]


eval_loss = jax.jit(loss_fn, static_argnames="config")  # the loss of one batch, no dropout


def estimate_loss(params, data, key, config, batch_size, eval_iters):
    """The mean loss of eval_iters random batches, without dropout (nanoGPT's estimate_loss)."""
    losses = [eval_loss(params, *get_batch(data, k, batch_size, config.block_size), config)
              for k in np.asarray(jax.random.split(key, eval_iters))]  # keys as NumPy rows: cheap to iterate
    return float(jnp.mean(jnp.stack(losses)))  # one transfer


@partial(jax.jit, static_argnames=("config",))
def next_token(params, window, t, key, config, temperature=1.0):
    """A token drawn from p(. | window[:t]). window (block_size,) holds the context, then padding: causal
    attention keeps position t - 1 blind to the padding after it, so one compiled shape serves every t."""
    logits = forward(params, window[None], config)[0, t - 1]  # (V,)
    return jax.random.categorical(key, logits / temperature)


def generate(params, idx, max_new_tokens, config, key, temperature=1.0):
    """idx (list of ids) followed by max_new_tokens sampled ones, the context cropped to block_size (no cache)."""
    tokens = list(idx)
    for k in np.asarray(jax.random.split(key, max_new_tokens)):
        context = tokens[-config.block_size:]
        window = np.zeros(config.block_size, np.int32)
        window[: len(context)] = context
        tokens.append(int(next_token(params, window, len(context), k, config, temperature)))
    return tokens


def plot_losses(hist, path, title):
    """The loss of every training batch, and the eval estimates of training and validation loss."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(np.arange(len(hist["batch_loss"])), hist["batch_loss"], color="0.75", lw=0.8, label="training batch")
    ax.plot(hist["iter"], hist["train_loss"], "o-", label=f"train (mean of {hist['eval_iters']} batches)")
    ax.plot(hist["iter"], hist["val_loss"], "s-", label=f"validation (best {min(hist['val_loss']):.4f})")
    ax.set(xlabel="optimizer step", ylabel="cross-entropy (nats per character)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)


# %% [markdown]
# ## Main: nanoGPT's CPU recipe in one flat loop


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-layer", type=positive_int, default=None, help="blocks (default 4; 2 with --smoke)")
    p.add_argument("--n-head", type=positive_int, default=None, help="attention heads (default 4; 2 with --smoke)")
    p.add_argument("--n-embd", type=positive_int, default=None, help="width C (default 128; 32 with --smoke)")
    p.add_argument("--block-size", type=positive_int, default=None,
                   help="context length (default 64; 32 with --smoke; with --init-from: the folder's, or cropped)")
    p.add_argument("--dropout", type=probability, default=0.0, help="default 0 (nanoGPT's CPU recipe)")
    p.add_argument("--batch-size", type=positive_int, default=12, help="sequences per step (default 12)")
    p.add_argument("--max-iters", type=positive_int, default=None, help="optimizer steps (default 2000; 200 smoke)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--min-lr", type=nonneg_float, default=1e-4, help="lr at the end of the cosine (default 1e-4)")
    p.add_argument("--warmup-iters", type=nonneg_int, default=None, help="warm-up steps (default 100; 20 smoke)")
    p.add_argument("--lr-decay-iters", type=positive_int, default=None,
                   help="step where the cosine reaches --min-lr (default: --max-iters)")
    p.add_argument("--betas", type=probability, nargs=2, default=[0.9, 0.99], help="AdamW's (default 0.9 0.99)")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.1,
                   help="AdamW's decoupled decay of the matrices, never of biases and LayerNorm (default 0.1)")
    p.add_argument("--grad-clip", type=nonneg_float, default=1.0, help="max global gradient norm, 0: off (default 1)")
    p.add_argument("--eval-interval", type=positive_int, default=None,
                   help="steps between evaluations (default 250; 100 with --smoke)")
    p.add_argument("--eval-iters", type=positive_int, default=None, help="batches per estimate (default 20; 4 smoke)")
    p.add_argument("--init-from", default=None, metavar="DIR",
                   help="start from a Hugging Face GPT-2 folder (config.json, model.safetensors, tokenizer.json): "
                   "its sizes, weights and tokenizer")
    p.add_argument("--sample-len", type=positive_int, default=None, help="tokens sampled at the end (default 500; "
                   "100 with --smoke)")
    p.add_argument("--temperature", type=positive_float, default=0.8, help="sampling temperature (default 0.8)")
    p.add_argument("--seed", type=nonneg_int, default=1337, help="seeds weights, batches and dropout (default 1337)")
    p.add_argument("--data-dir", default=None, help="folder with tinyshakespeare/input.txt (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="for metrics, figure and weights (default runs/gpt_jax)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run: a smaller model, 200 steps")
    args = p.parse_args(argv)
    sizes = {"n_layer": (2, 4), "n_head": (2, 4), "n_embd": (32, 128)}
    if args.init_from is not None:
        given = [f"--{k.replace('_', '-')}" for k in sizes if getattr(args, k) is not None]
        if given:
            p.error(f"--init-from: the released model's sizes are used; drop {' '.join(given)}")
    else:
        sizes["block_size"] = (32, 64)
    defaults = {"max_iters": (200, 2000), "warmup_iters": (20, 100), "eval_interval": (100, 250),
                "eval_iters": (4, 20), "sample_len": (100, 500), **({} if args.init_from else sizes)}
    for name, (smoke, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    if args.lr_decay_iters is None:
        args.lr_decay_iters = args.max_iters
    if args.init_from is None and args.n_embd % args.n_head:
        p.error(f"--n-embd {args.n_embd} is not a multiple of --n-head {args.n_head}")
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)

    key = jax.random.PRNGKey(args.seed)
    init_key, train_key, eval_key, sample_key = jax.random.split(key, 4)
    tokenizer = None
    if args.init_from is not None:  # released weights: their sizes, their tokenizer; a shorter context if asked
        try:
            config, params = load_hf(args.init_from)
            tokenizer = hf_tokenizer(args.init_from)
        except Exception as exc:  # a missing or broken file; safetensors and tokenizers raise their own types
            sys.exit(f"error: --init-from {args.init_from}: {exc}")
        block = args.block_size or config.block_size
        if block > config.block_size:
            p.error(f"--block-size {block}: the model has positions for {config.block_size}")
        if tokenizer[2] > config.vocab_size:
            sys.exit(f"error: --init-from {args.init_from}: the tokenizer has {tokenizer[2]:,} tokens, the model "
                     f"{config.vocab_size:,}")
        config = replace(config, block_size=block, dropout=args.dropout)
        params["wpe"]["weight"] = params["wpe"]["weight"][:block]  # the first `block` positions
    try:
        train_ids, val_ids, encode, decode, V = load_data(args.data_dir, tokenizer)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    if args.init_from is None:
        config = GPTConfig(args.block_size, V, args.n_layer, args.n_head, args.n_embd, args.dropout, False)
        params = init_params(config, init_key)
    B, T = args.batch_size, config.block_size
    if len(val_ids) <= T:
        p.error(f"--block-size {T}: longer than the validation text ({len(val_ids)} tokens)")
    out_dir.mkdir(parents=True, exist_ok=True)
    train_data, val_data = jnp.asarray(train_ids), jnp.asarray(val_ids)  # on the device, once
    opt_state = adamw_init(params)
    hp = {"config": config, "betas": tuple(args.betas), "weight_decay": args.weight_decay, "grad_clip": args.grad_clip}
    print(f"gpt_jax: {config.n_layer} layers, {config.n_head} heads, width {config.n_embd}, block {T}, "
          f"{n_params(params):,} parameters on {jax.devices()[0].platform}; {len(train_ids):,} training and "
          f"{len(val_ids):,} validation tokens, a vocabulary of {V:,}")

    # Compile the step before the clock starts: tokens/s then measures training, not XLA.
    x, y = get_batch(train_data, train_key, B, T)
    step = train_step.lower(params, opt_state, x, y, args.lr, train_key, **hp).compile()
    hist = {"iter": [], "train_loss": [], "val_loss": [], "lr": [], "batch_loss": [], "grad_norm": [],
            "eval_iters": args.eval_iters}
    losses, norms, train_s, best, it = [], [], 0.0, math.inf, 0
    bar = tqdm(total=args.max_iters, desc="train", leave=False, disable=not sys.stdout.isatty())
    try:
        t0 = time.perf_counter()
        for it in range(args.max_iters + 1):
            lr = get_lr(it, args.lr, args.min_lr, args.warmup_iters, args.lr_decay_iters)
            if it % args.eval_interval == 0 or it == args.max_iters:
                jax.block_until_ready(params)  # every step queued so far has finished: stop the clock
                train_s += time.perf_counter() - t0
                k_train, k_val = jax.random.split(jax.random.fold_in(eval_key, it))
                hist["iter"].append(it)
                hist["lr"].append(lr)
                hist["train_loss"].append(estimate_loss(params, train_data, k_train, config, B, args.eval_iters))
                hist["val_loss"].append(estimate_loss(params, val_data, k_val, config, B, args.eval_iters))
                if losses:  # the batch losses and gradient norms since the last evaluation: one transfer each
                    hist["batch_loss"] += np.asarray(jnp.stack(losses)).tolist()
                    hist["grad_norm"] += np.asarray(jnp.stack(norms)).tolist()
                    losses, norms = [], []
                speed = f" | {it * B * T / train_s:,.0f} tokens/s" if it else ""
                tqdm.write(f"step {it:5d}/{args.max_iters}  train loss {hist['train_loss'][-1]:.4f} | val loss "
                           f"{hist['val_loss'][-1]:.4f} | lr {lr:.2e}{speed}")
                if hist["val_loss"][-1] < best:
                    best = hist["val_loss"][-1]
                    if it > 0:
                        np.savez(out_dir / "model.npz", **to_state_dict(params))  # keyed as gpt2_torch.py's
                t0 = time.perf_counter()
            if it == args.max_iters:
                break
            k_batch, k_drop = jax.random.split(jax.random.fold_in(train_key, it))
            x, y = get_batch(train_data, k_batch, B, T)
            params, opt_state, loss, norm = step(params, opt_state, x, y, lr, k_drop)
            losses.append(loss)  # stays on the device: the loop never waits for a step to finish
            norms.append(norm)
            bar.update()
    except KeyboardInterrupt:  # Ctrl-C: say what is saved, without a traceback
        saved = f"{out_dir / 'model.npz'} holds the best weights so far" if best < math.inf else "nothing saved"
        flags = sys.argv[1:] if argv is None else argv
        sys.exit(f"\ninterrupted at step {it}; {saved}. Start again with:\n  "
                 + shlex.join(["python", "06-transformers/gpt_jax.py", *flags]))
    finally:
        bar.close()

    sample = decode(generate(params, encode("\n") or [0], args.sample_len, config, sample_key, args.temperature))
    print(f"sample:\n{sample}")
    plot_losses(hist, out_dir / "loss.png", f"gpt_jax: {n_params(params):,} parameters, Tiny Shakespeare")
    metrics = {"script": Path(__file__).stem, "val_loss": hist["val_loss"][-1], "best_val_loss": best,
               "train_loss": hist["train_loss"][-1], "params": n_params(params), "iters": args.max_iters,
               "ms_per_iter": 1000 * train_s / args.max_iters, "tokens_per_sec": args.max_iters * B * T / train_s,
               "train_seconds": train_s, "vocab_size": V, "tokenizer": "hf" if args.init_from else "char",
               "device": jax.devices()[0].platform, "config": asdict(config), "args": vars(args),
               "history": hist, "sample": sample}
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"val loss {metrics['val_loss']:.4f} (best {best:.4f}); {metrics['tokens_per_sec']:,.0f} training "
          f"tokens/s, {metrics['ms_per_iter']:.2f} ms per step; wrote {out_dir}/metrics.json, loss.png, model.npz")
    return metrics


if __name__ == "__main__":
    main()
