"""LLaMA (Touvron et al. 2023a) as a list of changes to gpt2_torch.py; then what LLaMA-2 and LLaMA-3 changed.

LLaMA-1 keeps GPT-2's decoder (names and order as in gpt2_torch.py) and changes five things:
    RMSNorm     pre-normalisation without mean or shift: RMSNorm(x) = x / sqrt(mean_i x_i^2 + eps) * g
                (attention_norm, ffn_norm and the final norm replace ln_1, ln_2, ln_f)
    SwiGLU      FFN(x) = w2(SiLU(w1 x) * w3 x),  SiLU(z) = z sigmoid(z);  hidden h = 2/3 * 4d (three matrices
                instead of two), times ffn_dim_multiplier, rounded up to a multiple of multiple_of: 11008 at d 4096
    RoPE        no learned positions (no wpe): q and k of position m turn each pair (2i, 2i+1) by the angle
                m theta_i, theta_i = rope_theta^(-2i / d_head);  q_m . k_n then depends on m - n only
    no biases   in any Linear or norm
    untied      the output matrix `output` is its own parameter, not tok_embeddings^T
LLaMA-2 (2023b): context 2048 -> 4096, eps 1e-5, and in the 70B grouped-query attention:
    GQA         n_kv_heads < n_heads heads of k and v, each shared by n_heads / n_kv_heads query heads
                (repeated before attention): the KV cache shrinks by that factor
LLaMA-3 (2024): GQA in every size (8 KV heads), a 128,256-token vocabulary, rope_theta 500,000, context 8192.

--version picks the family's settings for the small model (4 layers, d 128, 4 heads, characters):
    1   n_kv_heads = n_heads, rope_theta 1e4, eps 1e-6, context 64, batch 12
    2   eps 1e-5, context doubled to 128 at batch 6 (the same tokens per step); GQA only with --n-kv-heads
    3   n_kv_heads = n_heads / 2, rope_theta 5e5, eps 1e-5, context 256 at batch 3
Its SwiGLU width h is the one that gives it GPT-2's parameter count (h = 341 = 2/3 * 4d at version 1; more with
GQA, as ffn_dim_multiplier 1.3 does for Meta), and --compare-gpt2 (on by default) then runs gpt2_torch.py on the
same batches for as many steps: validation loss at equal parameters and equal tokens. Init and recipe: GPT-2's.

Reading: H. Touvron et al. (2023a), "LLaMA: Open and Efficient Foundation Language Models", https://arxiv.org/abs/2302.13971;
H. Touvron et al. (2023b), "Llama 2: Open Foundation and Fine-Tuned Chat Models", https://arxiv.org/abs/2307.09288;
Llama Team, AI @ Meta (2024), "The Llama 3 Herd of Models", https://arxiv.org/abs/2407.21783;
B. Zhang, R. Sennrich (2019), "Root Mean Square Layer Normalization", https://arxiv.org/abs/1910.07467;
N. Shazeer (2020), "GLU Variants Improve Transformer", https://arxiv.org/abs/2002.05202;
J. Su et al. (2021), "RoFormer: Enhanced Transformer with Rotary Position Embedding", https://arxiv.org/abs/2104.09864;
J. Ainslie et al. (2023), "GQA: Training Generalized Multi-Query Transformer Models", https://arxiv.org/abs/2305.13245
Arc: Translation, attention and transformers -- LLaMA-1 / LLaMA-2 / LLaMA-3.

Run:  python 06-transformers/llama_torch.py                   (LLaMA-1, then GPT-2: about 7.5 minutes on two CPU cores)
      python 06-transformers/llama_torch.py --version 3 --sdpa; then --sample --prompt "ROMEO:" (its checkpoint)
Released weights: a Hugging Face Llama folder (`hf download meta-llama/Llama-3.2-1B --local-dir llama`), then
      python 06-transformers/llama_torch.py --init-from llama --sample --prompt "The capital of France is"
Look first at `apply_rope`, `Attention.forward`, `FeedForward.forward` and `Llama.from_hf`, then the loop in `main`.
"""

# %%
import argparse
import importlib.util
import inspect
import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from tqdm import tqdm

from data import (
    BPETokenizer,
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
# ## The model: Meta's ModelArgs, RMSNorm, RoPE, grouped-query attention, SwiGLU


# %%
@dataclass
class LlamaConfig:
    """The fields of Meta's ModelArgs, plus hidden_dim and dropout."""

    dim: int = 128  # d, the width of the residual stream
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: as many as n_heads (multi-head attention)
    vocab_size: int = 65
    multiple_of: int = 256  # the SwiGLU width is rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 64  # positions that RoPE has angles for; the longest context
    hidden_dim: int | None = None  # the SwiGLU width itself (Hugging Face's intermediate_size); None: the rule above
    dropout: float = 0.0  # not in LLaMA (trained without): for experiments with the small model


PRESETS = {
    "llama1-7b": LlamaConfig(4096, 32, 32, None, 32000, 256, None, 1e-6, 1e4, 2048),
    "llama2-7b": LlamaConfig(4096, 32, 32, None, 32000, 256, None, 1e-5, 1e4, 4096),
    "llama2-70b": LlamaConfig(8192, 80, 64, 8, 32000, 4096, 1.3, 1e-5, 1e4, 4096),
    "llama3-8b": LlamaConfig(4096, 32, 32, 8, 128256, 1024, 1.3, 1e-5, 5e5, 8192),
    "llama3-70b": LlamaConfig(8192, 80, 64, 8, 128256, 4096, 1.3, 1e-5, 5e5, 8192),
}


def ffn_hidden_dim(config):
    """SwiGLU's width: h = 2/3 * 4d, times ffn_dim_multiplier, rounded up to a multiple of multiple_of."""
    if config.hidden_dim is not None:
        return config.hidden_dim
    h = int(2 * 4 * config.dim / 3)
    if config.ffn_dim_multiplier is not None:
        h = int(config.ffn_dim_multiplier * h)
    return config.multiple_of * ((h + config.multiple_of - 1) // config.multiple_of)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))  # g, the gain; no shift

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight  # x / RMS(x) * g


def rope_tables(head_dim, max_seq_len, theta):
    """cos and sin of the angles m theta_i, theta_i = theta^(-2i / head_dim), for positions m < max_seq_len."""
    theta_i = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (hd/2,)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), theta_i)  # (T, hd/2): m theta_i
    return angles.cos().float(), angles.sin().float()


def apply_rope(x, cos, sin):
    """Rotate each pair (x_2i, x_2i+1) of x (B, nh, T, hd) by its position's angle: Meta's interleaved pairs."""
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, nh, T, hd/2): the two coordinates of each pair
    y = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)  # (B, nh, T, hd)
    return y.type_as(x)  # bf16 under autocast, like v


def repeat_kv(x, n_rep):
    """(B, n_kv, S, hd) -> (B, n_kv * n_rep, S, hd): query head h reads key/value head h // n_rep."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


class Attention(nn.Module):
    """Causal self-attention with rotary positions and n_kv_heads <= n_heads key/value heads (GQA)."""

    def __init__(self, config, sdpa=False):
        super().__init__()
        assert config.dim % config.n_heads == 0, "dim must be a multiple of n_heads"
        self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads or config.n_heads
        assert self.n_heads % self.n_kv_heads == 0, "n_heads must be a multiple of n_kv_heads"
        self.head_dim = config.dim // config.n_heads
        self.wq = nn.Linear(config.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=False)  # fewer heads with GQA
        self.wv = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, config.dim, bias=False)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout, self.sdpa = config.dropout, sdpa

    def forward(self, x, cos, sin, cache=None):
        """x (B, T, C) at the positions whose angles are cos, sin (T, hd/2) -> (B, T, C). With `cache` (a dict,
        empty at first) the rotated keys and the values of earlier calls are kept and attended to."""
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, n_kv, T, hd)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # positions enter here, and only here
        if cache is not None:  # the cache holds n_kv heads: GQA's saving
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        k, v = repeat_kv(k, self.n_heads // self.n_kv_heads), repeat_kv(v, self.n_heads // self.n_kv_heads)
        S = k.size(2)  # positions attended to; ours are the last T of them
        mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)  # query i sees keys s <= S-T+i
        p = self.dropout if self.training else 0.0
        if self.sdpa:  # the fast path: the same computation in one fused kernel
            causal = T == S
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask, dropout_p=p,
                                               is_causal=causal)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, nh, T, S): q_t . k_s / sqrt(d_head)
            att = att.masked_fill(~mask, float("-inf"))  # no looking ahead
            att = self.attn_dropout(att.softmax(dim=-1))
            y = att @ v  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # concatenate the heads
        return self.resid_dropout(self.wo(y))


class FeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden = ffn_hidden_dim(config)
        self.w1 = nn.Linear(config.dim, hidden, bias=False)  # the gate
        self.w2 = nn.Linear(hidden, config.dim, bias=False)  # back to d
        self.w3 = nn.Linear(config.dim, hidden, bias=False)  # the value that the gate scales
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))  # SwiGLU: w2(SiLU(w1 x) * w3 x)


class Block(nn.Module):
    def __init__(self, config, sdpa=False):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config, sdpa)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x, cos, sin, cache=None):
        x = x + self.attention(self.attention_norm(x), cos, sin, cache)  # pre-norm, as GPT-2
        x = x + self.feed_forward(self.ffn_norm(x))
        return x


class Llama(nn.Module):
    """LLaMA. Module names are those of Meta's checkpoints (consolidated.*.pth)."""

    def __init__(self, config, sdpa=False):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)  # no position embedding
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([Block(config, sdpa) for _ in range(config.n_layers)])
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)  # untied
        cos, sin = rope_tables(config.dim // config.n_heads, config.max_seq_len, config.rope_theta)
        self.register_buffer("cos", cos, persistent=False)  # (max_seq_len, hd/2)
        self.register_buffer("sin", sin, persistent=False)
        for name, p in self.named_parameters():  # GPT-2's initialisation (the papers do not give theirs)
            if p.dim() == 1:
                nn.init.ones_(p)  # RMSNorm gains
            else:
                std = 0.02 / math.sqrt(2 * config.n_layers) if name.endswith(("wo.weight", "w2.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None, cache=None):
        """idx (B, T) token ids -> logits (B, T, vocab) and the mean cross-entropy against targets (B, T).
        `cache`, a list of one dict per block, makes idx the continuation of what the cache has seen."""
        B, T = idx.shape
        t0 = cache[0]["k"].size(2) if cache is not None and "k" in cache[0] else 0  # positions already seen
        if t0 + T > self.config.max_seq_len:
            raise ValueError(f"{t0 + T} positions, more than max_seq_len {self.config.max_seq_len}")
        x = self.drop(self.tok_embeddings(idx))  # (B, T, C)
        cos, sin = self.cos[t0 : t0 + T], self.sin[t0 : t0 + T]  # the angles of positions t0 .. t0+T-1
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, None if cache is None else cache[i])
        logits = self.output(self.norm(x))  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, use_cache=True, generator=None):
        """idx (B, T) followed by max_new_tokens sampled tokens (as gpt2_torch.py's). temperature 0 is greedy.
        Past max_seq_len the window slides and every step recomputes: each position then sees another context."""
        cache, window = None, self.config.max_seq_len
        for _ in range(max_new_tokens):
            seen = 0 if cache is None else cache[0]["k"].size(2)
            if use_cache and 0 < seen < window:
                logits, _ = self(idx[:, -1:], cache=cache)  # one new position
            else:
                cache = [{} for _ in self.layers] if use_cache else None
                logits, _ = self(idx[:, -window:], cache=cache)
            next_id = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B, 1)
            idx = torch.cat([idx, next_id], dim=1)
        return idx

    @classmethod
    def from_hf(cls, path, sdpa=False, dropout=0.0):
        """LLaMA from a Hugging Face folder (config.json, model.safetensors or its shards). Names map as
            model.embed_tokens                    -> tok_embeddings
            model.layers.N.self_attn.q/k/v/o_proj -> layers.N.attention.wq/wk/wv/wo     (wq, wk un-permuted)
            model.layers.N.mlp.gate/down/up_proj  -> layers.N.feed_forward.w1/w2/w3
            model.layers.N.input_layernorm        -> layers.N.attention_norm;  post_attention_layernorm -> ffn_norm
            model.norm, lm_head                   -> norm, output   (tied embeddings: output starts as a copy)
        Hugging Face rotates the halves (x_i, x_i+hd/2) of a head, Meta the pairs (x_2i, x_2i+1): its converter
        moved row 2i+p of each head of wq and wk to row p*hd/2+i. Undone per head by
        W.view(heads, 2, hd/2, C).transpose(1, 2): row (p, i) goes back to (i, p) = 2i+p.
        config: hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, vocab_size,
        intermediate_size (hidden_dim), rms_norm_eps, max_position_embeddings, and the RoPE base from
        rope_parameters["rope_theta"] (transformers 5) or rope_theta (earlier)."""
        from safetensors.torch import load_file

        path = Path(path)
        files = sorted(path.glob("model*.safetensors"))
        try:
            hf = json.loads((path / "config.json").read_text())
            if not files:
                raise OSError(f"no model.safetensors in {path}")
            tensors = {k: v for f in files for k, v in load_file(f).items()}
        except (OSError, ValueError) as exc:
            raise DataError(f"--init-from {path}: needs config.json and model.safetensors of a Llama ({exc})") from None
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                               "intermediate_size") if k not in hf]
        if missing:
            raise DataError(f"--init-from {path}: config.json lacks {', '.join(missing)}: not a Llama config")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        kind = rope.get("rope_type", rope.get("type", "default"))
        dim, heads = hf["hidden_size"], hf["num_attention_heads"]
        refusals = [(hf.get("model_type") != "llama", f"a {hf.get('model_type')} model, not a Llama"),
                    (hf.get("hidden_act", "silu") != "silu", f"activation {hf.get('hidden_act')}, not SiLU"),
                    (kind != "default", f"RoPE scaling {kind!r} (only plain RoPE is implemented)"),
                    (hf.get("attention_bias") or hf.get("mlp_bias"), "biases in attention or MLP (LLaMA has none)"),
                    (hf.get("head_dim", dim // heads) != dim // heads, "head_dim is not hidden_size / heads")]
        for refused, why in refusals:
            if refused:
                raise ValueError(f"--init-from {path}: {why}")
        config = LlamaConfig(dim, hf["num_hidden_layers"], heads, hf.get("num_key_value_heads") or heads,
                             hf["vocab_size"], 1, None, hf.get("rms_norm_eps", 1e-6),
                             rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
                             hf.get("max_position_embeddings", 2048), hf["intermediate_size"], dropout)
        model = cls(config, sdpa)
        names = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
                 "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
                 "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
                 "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
                 "post_attention_layernorm": "ffn_norm", "embed_tokens": "tok_embeddings", "lm_head": "output"}
        hd, sd = dim // heads, {}
        for name, w in tensors.items():
            if name.endswith("rotary_emb.inv_freq"):
                continue  # old checkpoints store RoPE's frequencies: ours come from rope_theta
            name = name.removeprefix("model.")
            for theirs, ours in names.items():
                name = name.replace(theirs, ours)
            if name.endswith(("wq.weight", "wk.weight")):
                n = w.size(0) // hd  # heads of q, or of k
                w = w.view(n, 2, hd // 2, dim).transpose(1, 2).reshape(n * hd, dim)  # back to Meta's pairs
            sd[name] = w
        if "output.weight" not in sd and "tok_embeddings.weight" in sd:  # tie_word_embeddings: no lm_head stored
            sd["output.weight"] = sd["tok_embeddings.weight"]
        try:
            model.load_state_dict(sd)
        except RuntimeError as exc:
            raise ValueError(f"--init-from {path}: the weights do not fit its config ({str(exc)[:300]})") from None
        return model


def sample_next(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    """One token per row of logits (B, vocab), as in gpt2_torch.py: argmax at temperature 0, else drawn from
    softmax(logits / temperature) restricted to the top_k likeliest and to the smallest set of mass >= top_p."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        before = sorted_logits.softmax(dim=-1).cumsum(dim=-1) - sorted_logits.softmax(dim=-1)  # mass ahead of each
        drop = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, before >= top_p)
        logits = logits.masked_fill(drop, float("-inf"))  # the likeliest token always stays
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


# %% [markdown]
# ## Equal parameters: the SwiGLU width that matches GPT-2


# %%
def gpt2_params(vocab_size, block_size, n_layer, n_embd):
    """gpt2_torch.py's parameter count without biases: wte (tied to the output) + wpe + per block
    c_attn 3C^2, c_proj C^2, c_fc 4C^2, c_proj 4C^2 and two LayerNorm gains, + ln_f."""
    C = n_embd
    return vocab_size * C + block_size * C + n_layer * (12 * C * C + 2 * C) + C


def matched_hidden_dim(config, target):
    """The SwiGLU width whose model has closest to `target` parameters: each unit of h adds 3 d n_layers."""
    with torch.device("meta"):
        base = Llama(replace(config, hidden_dim=1)).num_params()
    return max(1, 1 + round((target - base) / (3 * config.dim * config.n_layers)))


# the small model of each --version: (n_kv_heads given n_heads, rope_theta, norm_eps, context multiple)
VERSIONS = {
    1: (lambda nh: nh, 1e4, 1e-6, 1),
    2: (lambda nh: nh, 1e4, 1e-5, 2),
    3: (lambda nh: nh // 2 if nh % 2 == 0 else 1, 5e5, 1e-5, 4),
}


def run_gpt2(args, out_dir):
    """gpt2_torch.py's main, run with this run's flags: the same seed draws the same batches for as many steps."""
    spec = importlib.util.spec_from_file_location("gpt2_torch", Path(__file__).with_name("gpt2_torch.py"))
    g2 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(g2)
    flags = {"--tokenizer": args.tokenizer, "--n-layer": args.n_layer, "--n-head": args.n_head,
             "--n-embd": args.n_embd, "--block-size": args.block_size, "--dropout": args.dropout,
             "--batch-size": args.batch_size, "--grad-accum": args.grad_accum, "--max-iters": args.max_iters,
             "--lr": args.lr, "--min-lr": args.min_lr, "--warmup-iters": args.warmup_iters,
             "--lr-decay-iters": args.lr_decay_iters, "--weight-decay": args.weight_decay,
             "--grad-clip": args.grad_clip, "--eval-interval": args.eval_interval, "--eval-iters": args.eval_iters,
             "--prompt": args.prompt, "--sample-len": args.sample_len, "--temperature": args.temperature,
             "--top-k": args.top_k, "--top-p": args.top_p, "--device": args.device, "--seed": args.seed,
             "--out-dir": out_dir, "--data-dir": args.data_dir, "--threads": args.threads,
             "--vocab-size": args.vocab_size if args.tokenizer == "bpe" else None}
    argv = [str(a) for k, v in flags.items() if v is not None for a in (k, v)]
    argv += ["--betas", *map(str, args.betas)] + ["--sdpa"] * args.sdpa + ["--compile"] * args.compile
    argv += ["--smoke"] * args.smoke
    return g2.main(argv)


# %% [markdown]
# ## Data and training helpers, as in gpt2_torch.py


# %%
class CharTokenizer:
    """One token per character of the corpus (as in gpt2_torch.py): ids in sorted order."""

    def __init__(self, chars):
        self.chars = sorted(set(chars))
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    def __len__(self):
        return len(self.chars)

    def encode(self, text):
        missing = sorted(set(text) - self.stoi.keys())
        if missing:
            raise ValueError(f"characters not in the vocabulary: {''.join(missing)!r}")
        return [self.stoi[c] for c in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


class HFTokenizer:
    """The tokenizer.json of a Hugging Face folder, read with the `tokenizers` package."""

    def __init__(self, tok):
        self.tok = tok

    def __len__(self):
        return self.tok.get_vocab_size()

    def encode(self, text):
        return self.tok.encode(text).ids

    def decode(self, ids):
        return self.tok.decode(list(ids))


def make_tokenizer(kind, train_text, text, vocab_size, init_from=None):
    """char: the corpus's characters; bpe: data.BPETokenizer trained on the training split; with
    --init-from the folder's own tokenizer.json (its ids are what the released weights were trained on)."""
    if init_from is not None:
        path = Path(init_from) / "tokenizer.json"
        if not path.exists():
            raise DataError(f"--init-from: {path} is missing (it comes with the model: hf download fetches it)")
        from tokenizers import Tokenizer

        return HFTokenizer(Tokenizer.from_file(str(path)))
    if kind == "bpe":
        return BPETokenizer.train(train_text, vocab_size)
    return CharTokenizer(text)


def tokenizer_state(tok):
    """What a checkpoint keeps to rebuild the tokenizer."""
    if isinstance(tok, CharTokenizer):
        return {"kind": "char", "chars": "".join(tok.chars)}
    if isinstance(tok, BPETokenizer):
        return {"kind": "bpe", "merges": tok.merges}
    return {"kind": "hf", "json": tok.tok.to_str()}


def tokenizer_from_state(state):
    if state["kind"] == "char":
        return CharTokenizer(state["chars"])
    if state["kind"] == "bpe":
        return BPETokenizer(state["merges"])
    from tokenizers import Tokenizer

    return HFTokenizer(Tokenizer.from_str(state["json"]))


def get_batch(data, batch_size, block_size, generator, device):
    """batch_size windows at random offsets: x = data[i : i+T], y = data[i+1 : i+T+1] (as in gpt2_torch.py)."""
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    rows = ix[:, None] + torch.arange(block_size + 1)  # (B, T+1)
    xy = data[rows].to(device, non_blocking=True)
    return xy[:, :-1], xy[:, 1:]


@torch.no_grad()
def estimate_loss(model, splits, eval_iters, batch_size, block_size, generator, device, ctx):
    """Mean loss over eval_iters random batches of each split, in eval mode (no dropout)."""
    model.eval()
    out = {}
    for name, data in splits.items():
        losses = torch.zeros(eval_iters)
        for i in range(eval_iters):
            x, y = get_batch(data, batch_size, block_size, generator, device)
            with ctx:
                losses[i] = model(x, y)[1].float()
        out[name] = losses.mean().item()
    model.train()
    return out


def get_lr(it, lr, min_lr, warmup_iters, lr_decay_iters):
    """Linear warm-up to lr, then a cosine down to min_lr at lr_decay_iters (as in gpt2_torch.py)."""
    if it < warmup_iters:
        return lr * (it + 1) / warmup_iters
    if it >= lr_decay_iters:
        return min_lr
    progress = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def configure_optimizer(model, lr, weight_decay, betas, device):
    """AdamW with decay on the matrices (embeddings and output included) only; RMSNorm gains are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


# device picker, as taught in 01-foundations/mlp_torch.py
def pick_device(name):
    """'auto' picks cuda, then mps, then cpu; asking for a device this machine lacks is an error."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(d for d, ok in available.items() if ok)
    if not available[name]:
        raise ValueError(f"--device {name}: not available on this machine")
    return torch.device(name)


def save_checkpoint(path, **state):
    """torch.save to a temporary file, then rename: an interrupt during the save leaves the old checkpoint whole."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def plot_losses(history, path, gpt2_history=None):
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(history["iter"], history["train_loss"], "o-", label="LLaMA train")
    ax.plot(history["iter"], history["val_loss"], "o-", label="LLaMA validation")
    if gpt2_history is not None:
        ax.plot(gpt2_history["iter"], gpt2_history["val_loss"], "s--", label="GPT-2 validation (same batches)")
    ax.set(xlabel="iteration", ylabel="cross-entropy (nats per token)", title="LLaMA language model")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def sample_text(model, tok, prompt, n, temperature, top_k, top_p, device, generator):
    ids = tok.encode(prompt) or [0]
    idx = torch.tensor([ids], device=device)
    out = model.generate(idx, n, temperature, top_k, top_p, use_cache=True, generator=generator)
    return tok.decode(out[0].tolist())


# %% [markdown]
# ## Main: gpt2_torch.py's training loop, then GPT-2 itself on the same batches


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--version", type=positive_int, choices=[1, 2, 3], default=1,
                   help="LLaMA-1, -2 or -3's settings for the small model (see the docstring)")
    p.add_argument("--tokenizer", choices=["char", "bpe"], default="char",
                   help="char (one token per character) or a BPE trained on the training split")
    p.add_argument("--vocab-size", type=positive_int, default=None, help="BPE vocabulary (default 512)")
    p.add_argument("--n-layer", type=positive_int, default=None, help="transformer blocks (default 4)")
    p.add_argument("--n-head", type=positive_int, default=None, help="query heads (default 4)")
    p.add_argument("--n-kv-heads", type=positive_int, default=None,
                   help="key/value heads, a divisor of --n-head (default: --version's)")
    p.add_argument("--n-embd", type=positive_int, default=None, help="model width d (default 128)")
    p.add_argument("--block-size", type=positive_int, default=None, help="context length (default 64 x version's)")
    p.add_argument("--dropout", type=probability, default=None, help="dropout (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="sequences per micro-batch (default 12 / ..)")
    p.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--max-iters", type=positive_int, default=None, help="optimizer steps (default 2000)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate")
    p.add_argument("--min-lr", type=nonneg_float, default=1e-4, help="learning rate at the end of the cosine")
    p.add_argument("--warmup-iters", type=nonneg_int, default=None, help="steps of linear warm-up (default 100)")
    p.add_argument("--lr-decay-iters", type=positive_int, default=None, help="end of the cosine (default: --max-iters)")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.1, help="AdamW's decoupled decay, matrices only")
    p.add_argument("--betas", type=probability, nargs=2, default=[0.9, 0.99], help="AdamW's beta1 beta2")
    p.add_argument("--grad-clip", type=nonneg_float, default=1.0, help="max global gradient norm (0: off)")
    p.add_argument("--eval-interval", type=positive_int, default=None, help="steps between evaluations (default 250)")
    p.add_argument("--eval-iters", type=positive_int, default=None, help="batches per loss estimate (default 20)")
    p.add_argument("--sdpa", action="store_true", help="F.scaled_dot_product_attention instead of the hand-written one")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (off by default)")
    p.add_argument("--compare-gpt2", action=argparse.BooleanOptionalAction, default=None,
                   help="then train gpt2_torch.py at the same parameter count on the same batches (default: on, "
                        "off with --init-from)")
    p.add_argument("--init-from", default=None, help="a Hugging Face Llama folder: start from its weights")
    p.add_argument("--sample", action="store_true", help="generate from the checkpoint in --out-dir (or --init-from)")
    p.add_argument("--prompt", default="\n", help="text the samples continue")
    p.add_argument("--sample-len", type=positive_int, default=500, help="tokens generated")
    p.add_argument("--temperature", type=positive_float, default=0.8, help="sampling temperature")
    p.add_argument("--top-k", type=nonneg_int, default=200, help="sample among the k likeliest tokens (0: all)")
    p.add_argument("--top-p", type=positive_float, default=1.0, help="nucleus sampling mass (1: off)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--data-dir", default=None, help="folder holding the corpus (else $ARC_DATA_DIR, data/cache)")
    p.add_argument("--out-dir", default="runs/llama_torch", help="metrics, figure and checkpoint.pt go here")
    p.add_argument("--seed", type=nonneg_int, default=1337)
    p.add_argument("--smoke", action="store_true", help="a tiny model for a few steps on a slice of the corpus")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/checkpoint.pt")
    args = p.parse_args(argv)
    if args.top_p > 1:
        p.error(f"--top-p {args.top_p}: a probability mass, at most 1")
    if args.vocab_size is not None and args.tokenizer != "bpe":
        p.error("--vocab-size sets the BPE vocabulary: use it with --tokenizer bpe")
    if args.init_from is not None and args.resume:
        p.error("--init-from starts from released weights, --resume from this run's checkpoint: pick one")
    if args.init_from is not None and any(v is not None for v in (args.n_layer, args.n_head, args.n_kv_heads,
                                                                  args.n_embd)):
        p.error("--init-from: the released model's architecture is used; drop --n-layer, --n-head, --n-kv-heads, "
                "--n-embd")
    if args.init_from is not None and args.compare_gpt2:
        p.error("--compare-gpt2 compares two small models trained from scratch: not with --init-from")
    kv_heads, rope_theta, norm_eps, context = VERSIONS[args.version]
    small = args.smoke  # the smoke run: a tiny model, a few steps
    defaults = {"n_layer": 2 if small else 4, "n_head": 2 if small else 4, "n_embd": 32 if small else 128,
                "block_size": (32 if small else 64) * context, "batch_size": 12 // context, "dropout": 0.0,
                "max_iters": 60 if small else 2000, "warmup_iters": 5 if small else 100,
                "eval_interval": 30 if small else 250, "eval_iters": 4 if small else 20,
                "vocab_size": 300 if small else 512, "compare_gpt2": args.init_from is None}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.n_kv_heads is None:
        args.n_kv_heads = kv_heads(args.n_head)
    if args.n_embd % args.n_head or (args.n_embd // args.n_head) % 2:
        p.error(f"--n-embd {args.n_embd}: must be --n-head ({args.n_head}) times an even head width (RoPE pairs)")
    if args.n_head % args.n_kv_heads:
        p.error(f"--n-kv-heads {args.n_kv_heads}: must divide --n-head {args.n_head}")
    if args.lr_decay_iters is None:
        args.lr_decay_iters = args.max_iters
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()  # bf16 on CUDA
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    torch.manual_seed(args.seed)

    if args.sample:  # generation only, from this run's checkpoint or from released weights
        if args.init_from is not None:
            try:
                tok = make_tokenizer(None, None, None, None, args.init_from)
                model = Llama.from_hf(args.init_from, args.sdpa)
            except (DataError, ValueError) as exc:
                sys.exit(f"error: {exc}")
        else:
            if not ckpt_path.exists():
                p.error(f"--sample: no checkpoint in {out} (train first, or give --init-from)")
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            tok = tokenizer_from_state(ckpt["tokenizer"])
            model = Llama(LlamaConfig(**ckpt["model_config"]), args.sdpa)
            model.load_state_dict(ckpt["model"])
        model.to(device).eval()
        gen = torch.Generator(device=device).manual_seed(args.seed)
        text = sample_text(model, tok, args.prompt, args.sample_len, args.temperature, args.top_k, args.top_p,
                           device, gen)
        print(text)
        return {"sample": text}

    # data: the first 90% of Tiny Shakespeare trains, the last 10% validates (nanoGPT's split)
    try:
        text = tinyshakespeare(args.data_dir)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    if args.smoke:
        text = text[:100_000]
    n = int(0.9 * len(text))
    resumed = torch.load(ckpt_path, map_location="cpu", weights_only=False) if args.resume else None
    if args.resume and resumed is None:
        p.error(f"--resume: no checkpoint in {out}")
    try:
        tok = tokenizer_from_state(resumed["tokenizer"]) if resumed is not None else make_tokenizer(
            args.tokenizer, text[:n], text, args.vocab_size, args.init_from)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    try:
        tok.encode(args.prompt)
    except ValueError as exc:
        p.error(f"--prompt {args.prompt!r}: {exc}")
    train_data = torch.tensor(tok.encode(text[:n]), dtype=torch.long)
    val_data = torch.tensor(tok.encode(text[n:]), dtype=torch.long)
    T = args.block_size  # the training windows

    if args.init_from is not None:  # fine-tune released weights on windows of --block-size
        try:
            model = Llama.from_hf(args.init_from, args.sdpa, args.dropout)
        except (DataError, ValueError) as exc:
            sys.exit(f"error: {exc}")
        config = model.config
        if T > config.max_seq_len:
            p.error(f"--block-size {T}: the model has angles for {config.max_seq_len} positions")
    else:  # the small model of --version, as wide as GPT-2 and as many parameters
        config = LlamaConfig(args.n_embd, args.n_layer, args.n_head, args.n_kv_heads, len(tok), 1, None, norm_eps,
                             rope_theta, T, None, args.dropout)
        config.hidden_dim = matched_hidden_dim(config, gpt2_params(len(tok), T, args.n_layer, args.n_embd))
        model = Llama(config, args.sdpa)
    if min(len(train_data), len(val_data)) <= T:
        p.error(f"--block-size {T}: longer than the validation text ({len(val_data)} tokens)")
    model.to(device)
    optimizer = configure_optimizer(model, args.lr, args.weight_decay, tuple(args.betas), device)
    # what must not change across --resume: the model and its data
    run_config = {"model": asdict(config), "tokenizer": tokenizer_state(tok)["kind"], "block_size": T,
                  "init_from": args.init_from, "batch_size": args.batch_size, "grad_accum": args.grad_accum}
    data_gen = torch.Generator().manual_seed(args.seed)  # gpt2_torch.py's seeds: the same batches
    eval_gen = torch.Generator().manual_seed(args.seed + 10_000)
    start_iter, best_val, history = 0, float("inf"), {"iter": [], "train_loss": [], "val_loss": [], "lr": []}
    if resumed is not None:
        if resumed["run_config"] != run_config:
            p.error(f"--resume: the checkpoint in {out} was made with {resumed['run_config']}, not {run_config}")
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        start_iter, best_val, history = resumed["iter"], resumed["best_val_loss"], resumed["history"]
        data_gen.set_state(resumed["data_gen"])
        eval_gen.set_state(resumed["eval_gen"])
        torch.set_rng_state(resumed["torch_rng"])
    train_model = torch.compile(model) if args.compile else model
    tokens_per_iter = args.grad_accum * args.batch_size * T
    print(f"{model.num_params():,} parameters (SwiGLU width {ffn_hidden_dim(config)}, {config.n_kv_heads} KV heads "
          f"of {config.n_heads}), vocab {len(tok)}, {len(train_data):,} training tokens, {tokens_per_iter:,} tokens "
          f"per step, {device}")

    # the loop: evaluate every eval_interval steps (and at the end), then one optimizer step
    splits = {"train": train_data, "val": val_data}
    train_time, timed_iters = 0.0, 0
    val_loss = history["val_loss"][-1] if history["val_loss"] else None
    bar = tqdm(range(start_iter, args.max_iters + 1), desc="train", disable=not sys.stdout.isatty(),
               initial=start_iter, total=args.max_iters + 1)
    it = start_iter
    try:
        for it in bar:
            lr = get_lr(it, args.lr, args.min_lr, args.warmup_iters, args.lr_decay_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
            evaluate = it % args.eval_interval == 0 or it == args.max_iters
            if evaluate and not (resumed is not None and it == start_iter):  # a resumed run has this one already
                losses = estimate_loss(model, splits, args.eval_iters, args.batch_size, T, eval_gen, device, ctx)
                val_loss = losses["val"]
                for key, value in [("iter", it), ("train_loss", losses["train"]), ("val_loss", val_loss), ("lr", lr)]:
                    history[key].append(value)
                tqdm.write(f"step {it:5d}: train loss {losses['train']:.4f}, val loss {val_loss:.4f}, lr {lr:.2e}")
                if val_loss < best_val:
                    best_val = val_loss
                    if it > 0:
                        save_checkpoint(ckpt_path, model=model.state_dict(), optimizer=optimizer.state_dict(),
                                        model_config=asdict(config), run_config=run_config, iter=it,
                                        best_val_loss=best_val, history=history, tokenizer=tokenizer_state(tok),
                                        data_gen=data_gen.get_state(), eval_gen=eval_gen.get_state(),
                                        torch_rng=torch.get_rng_state())
            if it == args.max_iters:
                break
            t0 = time.perf_counter()
            for _ in range(args.grad_accum):
                x, y = get_batch(train_data, args.batch_size, T, data_gen, device)
                with ctx:
                    _, loss = train_model(x, y)
                    (loss / args.grad_accum).backward()  # the mean over all micro-batches
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            train_time += time.perf_counter() - t0
            timed_iters += 1
    except KeyboardInterrupt:
        where = f"{ckpt_path} (its best step)" if ckpt_path.exists() else "no checkpoint yet"
        sys.exit(f"\ninterrupted at step {it}: {where}; continue with the same flags and --resume")

    model.eval()
    gen = torch.Generator(device=device).manual_seed(args.seed)
    sample = sample_text(model, tok, args.prompt, 200 if small else args.sample_len, args.temperature, args.top_k,
                         args.top_p, device, gen)
    print(f"sample:\n{sample}")
    iters_run = max(1, timed_iters)
    metrics = {"val_loss": val_loss, "gpt2_val_loss": None, "best_val_loss": best_val, "gpt2_best_val_loss": None,
               "llama_params": model.num_params(), "gpt2_params": None,
               "train_tokens": args.max_iters * tokens_per_iter,
               "ms_per_iter": 1000 * train_time / iters_run, "param_gap": None, "gpt2_ms_per_iter": None,
               "tokens_per_sec": tokens_per_iter * iters_run / max(train_time, 1e-9), "params": model.num_params(),
               "train_loss": history["train_loss"][-1], "version": args.version, "hidden_dim": ffn_hidden_dim(config),
               "config": asdict(config), "tokenizer": tokenizer_state(tok)["kind"], "vocab_size": len(tok),
               "iters": args.max_iters, "sdpa": args.sdpa, "device": str(device), "history": history,
               "sample": sample, "gpt2_history": None}
    if args.compare_gpt2:  # GPT-2 at the same width, depth, heads and context: the same count to within 3 d L / 2
        print("GPT-2 on the same batches, for as many steps:")
        try:
            g2 = run_gpt2(args, out / "gpt2")
        except SystemExit as exc:
            sys.exit(f"error: the GPT-2 comparison in {out / 'gpt2'} stopped ({exc.code}); LLaMA's checkpoint is "
                     f"{ckpt_path}: the same flags and --resume run the comparison again")
        gap = (metrics["llama_params"] - g2["params"]) / g2["params"]
        metrics.update(gpt2_val_loss=g2["val_loss"], gpt2_best_val_loss=g2["best_val_loss"], gpt2_params=g2["params"],
                       param_gap=gap, gpt2_ms_per_iter=g2["ms_per_iter"], gpt2_history=g2["history"])
        print(f"LLaMA {metrics['llama_params']:,} parameters, GPT-2 {g2['params']:,} (gap {100 * gap:+.3f}%), "
              f"{metrics['train_tokens']:,} training tokens each: val loss {val_loss:.4f} beside {g2['val_loss']:.4f}")
    plot_losses(history, out / "loss.png", metrics["gpt2_history"])
    save_metrics(out, metrics, __file__, argv)
    print(f"val loss {val_loss:.4f} (best {best_val:.4f}), {metrics['ms_per_iter']:.1f} ms per step")
    return metrics


if __name__ == "__main__":
    main()
