"""GPT-2 (Radford et al. 2019): a decoder-only Transformer that learns to predict the next token.

A stack of pre-LN blocks over token and learned position embeddings; the output reuses the token
embedding. Trained on characters of Tiny Shakespeare at nanoGPT's CPU recipe by default.

    input       x_0 = wte[idx] + wpe[0..T-1]                                   (B, T, C)
    attention   causal: y_t = sum_{s<=t} softmax_s(q_t . k_s / sqrt(d_head)) v_s,  heads concatenated
    block       x = x + c_proj(attn(ln_1(x)));   x = x + mlp(ln_2(x))          (pre-LN)
    mlp         mlp(x) = c_proj(GELU(c_fc(x))),  C -> 4C -> C,  GELU(x) = 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))
    output      p(x_{t+1} | x_<=t) = softmax(ln_f(x_t) wte^T)                  tied to wte
    init        N(0, 0.02); the residual projections c_proj N(0, 0.02 / sqrt(2 n_layer))
    KV cache    at generation step t only the new token's q, k, v are computed; k, v of
                earlier positions are kept, so a step costs O(t) instead of O(t^2)
    schedule    linear warm-up to --lr, cosine decay to --min-lr at --lr-decay-iters; AdamW,
                weight decay on matrices only; clipping of the global gradient norm

Why the residual projections start smaller: each of the 2 n_layer sublayers adds to the residual
stream, so with N(0, 0.02) its variance would grow with depth. Past block_size tokens the cache
cannot help: learned absolute positions shift when the window slides, so every step recomputes.

Reading: A. Radford et al. (2019), "Language Models are Unsupervised Multitask Learners",
https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf;
A. Karpathy, nanoGPT (the training recipe we measure against), https://github.com/karpathy/nanoGPT
Arc: Transformers -- GPT-2 PyTorch implementation.

Run:  python 06-transformers/gpt2_torch.py --sdpa                         (nanoGPT's CPU recipe, minutes)
      python 06-transformers/gpt2_torch.py --sample --prompt "ROMEO:"     (sample from the checkpoint)
      torchrun --nproc_per_node 2 06-transformers/gpt2_torch.py --sdpa    (DistributedDataParallel)
Real GPT-2 weights: `hf download gpt2 --local-dir gpt2` (huggingface_hub), then
      python 06-transformers/gpt2_torch.py --init-from gpt2 --sample --prompt "Hello, I'm a language model,"
Look first at `CausalSelfAttention.forward`, `Block.forward` and `GPT.generate`, then at the loop in `main`.
"""

# %%
import argparse
import inspect
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
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
    ptb,
    save_metrics,
    timemachine,
    tinyshakespeare,
)

# %% [markdown]
# ## The model: a config, causal self-attention by hand, pre-LN blocks


# %%
@dataclass
class GPTConfig:
    block_size: int = 64  # longest context: positions that have an embedding
    vocab_size: int = 65  # the 65 characters of Tiny Shakespeare
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128  # C, the width of the residual stream
    dropout: float = 0.0
    bias: bool = False  # biases in Linear and LayerNorm (GPT-2: True; nanoGPT's small runs: False)


PRESETS = {
    "gpt2": GPTConfig(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768, bias=True),  # 124M
    "gpt2-medium": GPTConfig(block_size=1024, vocab_size=50257, n_layer=24, n_head=16, n_embd=1024, bias=True),
    "gpt2-large": GPTConfig(block_size=1024, vocab_size=50257, n_layer=36, n_head=20, n_embd=1280, bias=True),
    "gpt2-xl": GPTConfig(block_size=1024, vocab_size=50257, n_layer=48, n_head=25, n_embd=1600, bias=True),
}


class CausalSelfAttention(nn.Module):
    """Multi-head attention in which position t sees positions <= t; one Linear makes q, k and v at once."""

    def __init__(self, config, sdpa=False):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be a multiple of n_head"
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # [W_q | W_k | W_v]
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)  # W_O
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.dropout, self.sdpa = config.n_head, config.dropout, sdpa
        T = config.block_size
        self.register_buffer("causal", torch.ones(T, T, dtype=torch.bool).tril(), persistent=False)  # s <= t

    def forward(self, x, cache=None):
        """x (B, T, C) -> (B, T, C). With `cache` (a dict, empty at first) the keys and values of earlier
        calls are kept in it and attended to: x then holds only the new positions."""
        B, T, C = x.shape
        hd = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_head, hd).transpose(1, 2)
        v = v.view(B, T, self.n_head, hd).transpose(1, 2)
        if cache is not None:
            if "k" in cache:  # the earlier positions' keys and values, then ours
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        S = k.size(2)  # positions attended to; ours are the last T of them
        mask = self.causal[S - T : S, :S]  # (T, S): query i (position S-T+i) sees keys s <= S-T+i
        p = self.dropout if self.training else 0.0
        if self.sdpa:  # the fast path: the same computation in one fused kernel
            causal = T == S  # no cache: SDPA builds the lower-triangular mask itself, faster than reading ours
            mask = None if causal else mask
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)  # (B, nh, T, S): q_t . k_s / sqrt(d_head)
            att = att.masked_fill(~mask, float("-inf"))  # no looking ahead
            att = self.attn_dropout(att.softmax(dim=-1))
            y = att @ v  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, C)  # concatenate the heads
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        x = F.gelu(self.c_fc(x), approximate="tanh")  # GELU(x) = 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))
        return self.dropout(self.c_proj(x))


class Block(nn.Module):
    def __init__(self, config, sdpa=False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, sdpa)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)  # pre-LN: the residual stream itself is never normalised
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """GPT-2. Module names are those of the released checkpoint (without its "transformer." prefix)."""

    def __init__(self, config, sdpa=False):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embedding, also the output matrix
        self.wpe = nn.Embedding(config.block_size, config.n_embd)  # learned position embedding
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config, sdpa) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: one matrix reads tokens in and writes them out
        for name, p in self.named_parameters():  # GPT-2's initialisation
            if p.dim() == 1:
                nn.init.zeros_(p) if name.endswith("bias") else nn.init.ones_(p)  # LayerNorm: gain 1, shift 0
            else:
                std = 0.02 / math.sqrt(2 * config.n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # the tied matrix is counted once

    def forward(self, idx, targets=None, cache=None):
        """idx (B, T) token ids -> logits (B, T, vocab) and the mean cross-entropy against targets (B, T).
        `cache`, a list of one dict per block, makes idx the continuation of what the cache has seen."""
        B, T = idx.shape
        t0 = cache[0]["k"].size(2) if cache is not None and "k" in cache[0] else 0  # positions already seen
        if t0 + T > self.config.block_size:
            raise ValueError(f"{t0 + T} positions, more than block_size {self.config.block_size}")
        pos = torch.arange(t0, t0 + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.h):
            x = block(x, None if cache is None else cache[i])
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, use_cache=True, generator=None):
        """idx (B, T) followed by max_new_tokens sampled tokens. temperature 0 is greedy. The context is the
        last block_size tokens; with use_cache each step feeds one token and reuses the keys and values."""
        cache = None
        for _ in range(max_new_tokens):
            seen = 0 if cache is None else cache[0]["k"].size(2)
            if use_cache and 0 < seen < self.config.block_size:
                logits, _ = self(idx[:, -1:], cache=cache)  # one new position
            else:  # first step, no cache, or the window slides: positions shift, so recompute them all
                cache = [{} for _ in self.h] if use_cache else None
                logits, _ = self(idx[:, -self.config.block_size :], cache=cache)
            next_id = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B, 1)
            idx = torch.cat([idx, next_id], dim=1)
        return idx

    def crop_block_size(self, block_size):
        """Keep the first block_size positions (fine-tuning released weights on shorter windows)."""
        if block_size > self.config.block_size:
            raise ValueError(f"block_size {block_size}: the model has positions for {self.config.block_size}")
        self.config.block_size = block_size
        self.wpe.weight = nn.Parameter(self.wpe.weight[:block_size].detach().clone())
        for block in self.h:
            block.attn.causal = block.attn.causal[:block_size, :block_size]

    @classmethod
    def from_hf(cls, path, sdpa=False, dropout=0.0):
        """GPT-2 from a Hugging Face folder (config.json, model.safetensors). Its Conv1D layers store W as
        (in, out), ours (nn.Linear) as (out, in): those four matrices per block are transposed."""
        from safetensors.torch import load_file

        path = Path(path)
        try:
            hf = json.loads((path / "config.json").read_text())
            tensors = load_file(path / "model.safetensors")
        except (OSError, ValueError) as exc:
            raise DataError(f"--init-from {path}: needs config.json and model.safetensors of a GPT-2 ({exc})") from None
        kind, act = hf.get("model_type", "gpt2"), hf.get("activation_function", "gelu_new")
        if kind != "gpt2" or act != "gelu_new":  # gelu_new is Hugging Face's name for the tanh GELU
            raise DataError(f"--init-from {path}: a {kind} model with activation {act}, not a GPT-2")
        config = GPTConfig(hf["n_positions"], hf["vocab_size"], hf["n_layer"], hf["n_head"], hf["n_embd"],
                           dropout=dropout, bias=True)
        model = cls(config, sdpa)
        sd = {}
        for name, w in tensors.items():
            name = name.removeprefix("transformer.")
            if name.endswith(("attn.bias", "attn.masked_bias")) and not name.endswith("c_attn.bias"):
                continue  # old checkpoints store the causal mask as a buffer
            if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
                w = w.t()  # Conv1D (in, out) -> Linear (out, in)
            sd[name] = w
        sd.setdefault("lm_head.weight", sd["wte.weight"])  # tied
        model.load_state_dict(sd)
        return model


def sample_next(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    """One token per row of logits (B, vocab): argmax at temperature 0, else drawn from
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
# ## Data: one long sequence of token ids, random windows of it


# %%
CORPORA = ["tinyshakespeare", "timemachine", "ptb"]


def load_text(corpus, data_dir=None):
    """The corpus as one string: Tiny Shakespeare, The Time Machine, or the training text of PTB."""
    if corpus == "timemachine":
        return timemachine(data_dir)
    if corpus == "ptb":
        return ptb("train", data_dir)
    return tinyshakespeare(data_dir)


class CharTokenizer:
    """One token per character of the corpus (nanoGPT's shakespeare_char): ids in sorted order."""

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
    """The tokenizer.json of a Hugging Face folder (GPT-2's BPE), read with the `tokenizers` package."""

    def __init__(self, path):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise DataError("--init-from: reading the folder's tokenizer.json needs `pip install tokenizers`") from None
        self.tok = Tokenizer.from_file(str(path))

    def __len__(self):
        return self.tok.get_vocab_size()

    def encode(self, text):
        return self.tok.encode(text).ids

    def decode(self, ids):
        return self.tok.decode(list(ids))


def make_tokenizer(kind, train_text, text, vocab_size, init_from=None):
    """char: the corpus's characters; bpe: data.BPETokenizer trained on the training split; with
    --init-from the folder's own tokenizer (its ids are what the released weights were trained on)."""
    if init_from is not None:
        path = Path(init_from) / "tokenizer.json"
        if not path.exists():
            raise DataError(f"--init-from: {path} is missing (`hf download gpt2 --local-dir DIR` fetches it)")
        return HFTokenizer(path)
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

    tok = HFTokenizer.__new__(HFTokenizer)
    tok.tok = Tokenizer.from_str(state["json"])
    return tok


def get_batch(data, batch_size, block_size, generator, device):
    """batch_size windows at random offsets: x = data[i : i+T], y = data[i+1 : i+T+1] (the next tokens)."""
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
    """Linear warm-up to lr over warmup_iters steps, then a cosine from lr down to min_lr at lr_decay_iters."""
    if it < warmup_iters:
        return lr * (it + 1) / warmup_iters
    if it >= lr_decay_iters:
        return min_lr
    progress = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def configure_optimizer(model, lr, weight_decay, betas, device):
    """AdamW with decay on the matrices (and embeddings) only; biases and LayerNorm gains are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)  # fused: one kernel for all parameters


# %% [markdown]
# ## Device, checkpoints, figures


# %%
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


def plot_losses(history, path):
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(history["iter"], history["train_loss"], "o-", label="train")
    ax.plot(history["iter"], history["val_loss"], "o-", label="validation")
    ax.set(xlabel="iteration", ylabel="cross-entropy (nats per token)", title="GPT-2 language model")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def sample_text(model, tok, prompt, n, temperature, top_k, top_p, device, generator):
    ids = tok.encode(prompt) or [0]
    idx = torch.tensor([ids], device=device)
    out = model.generate(idx, n, temperature, top_k, top_p, use_cache=True, generator=generator)
    return tok.decode(out[0].tolist())


# %% [markdown]
# ## Main: nanoGPT's training loop, flat


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", choices=CORPORA, default="tinyshakespeare", help="the text to model")
    p.add_argument("--tokenizer", choices=["char", "bpe"], default="char",
                   help="char (nanoGPT's shakespeare_char) or a BPE trained on the training split")
    p.add_argument("--vocab-size", type=positive_int, default=None, help="BPE vocabulary (default 512)")
    p.add_argument("--n-layer", type=positive_int, default=None, help="override the config (default 4)")
    p.add_argument("--n-head", type=positive_int, default=None, help="override the config (default 4)")
    p.add_argument("--n-embd", type=positive_int, default=None, help="override the config (default 128)")
    p.add_argument("--block-size", type=positive_int, default=None, help="context length (default 64)")
    p.add_argument("--dropout", type=probability, default=None, help="dropout (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=12, help="sequences per micro-batch")
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
    p.add_argument("--init-from", default=None, help="a Hugging Face GPT-2 folder: start from its weights")
    p.add_argument("--sample", action="store_true", help="generate from the checkpoint in --out-dir (or --init-from)")
    p.add_argument("--prompt", default="\n", help="text the samples continue")
    p.add_argument("--sample-len", type=positive_int, default=500, help="tokens generated")
    p.add_argument("--temperature", type=positive_float, default=0.8, help="sampling temperature")
    p.add_argument("--top-k", type=nonneg_int, default=200, help="sample among the k likeliest tokens (0: all)")
    p.add_argument("--top-p", type=positive_float, default=1.0, help="nucleus sampling mass (1: off)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--data-dir", default=None, help="folder holding the corpus (else $ARC_DATA_DIR, data/cache)")
    p.add_argument("--out-dir", default="runs/gpt2_torch", help="metrics, figure and checkpoint.pt go here")
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
    if args.init_from is not None and any(v is not None for v in (args.n_layer, args.n_head, args.n_embd)):
        p.error("--init-from: the released model's architecture is used; drop --n-layer, --n-head, --n-embd")
    keep_block = args.init_from is not None and args.block_size is None  # released weights: their own context
    small = args.smoke  # the smoke run: a tiny model, a few steps
    defaults = {"n_layer": 2 if small else 4, "n_head": 2 if small else 4, "n_embd": 32 if small else 128,
                "block_size": 32 if small else 64, "dropout": 0.0, "max_iters": 60 if small else 2000,
                "warmup_iters": 5 if small else 100,
                "eval_interval": 30 if small else 250, "eval_iters": 4 if small else 20,
                "vocab_size": 300 if small else 512}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.lr_decay_iters is None:
        args.lr_decay_iters = args.max_iters
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    # DistributedDataParallel under torchrun: one process per device, gradients averaged in backward
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    if ddp:
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    master = rank == 0
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()  # bf16 on CUDA
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    torch.manual_seed(args.seed)

    if args.sample:  # generation only, from this run's checkpoint or from released weights
        if args.init_from is not None:
            tok = make_tokenizer(None, None, None, None, args.init_from)
            model = GPT.from_hf(args.init_from, args.sdpa)
        else:
            if not ckpt_path.exists():
                p.error(f"--sample: no checkpoint in {out} (train first, or give --init-from)")
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            tok = tokenizer_from_state(ckpt["tokenizer"])
            model = GPT(GPTConfig(**ckpt["model_config"]), args.sdpa)
            model.load_state_dict(ckpt["model"])
        model.to(device).eval()
        gen = torch.Generator(device=device).manual_seed(args.seed)
        text = sample_text(model, tok, args.prompt, args.sample_len, args.temperature, args.top_k, args.top_p,
                           device, gen)
        print(text)
        return {"sample": text}

    # data: the first 90% of the corpus trains, the last 10% validates (nanoGPT's split)
    try:
        text = load_text(args.corpus, args.data_dir)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    if args.smoke:
        text = text[:100_000]
    n = int(0.9 * len(text))
    resumed = torch.load(ckpt_path, map_location="cpu", weights_only=False) if args.resume else None
    if args.resume and resumed is None:
        p.error(f"--resume: no checkpoint in {out}")
    if resumed is not None:
        tok = tokenizer_from_state(resumed["tokenizer"])
    else:
        try:
            tok = make_tokenizer(args.tokenizer, text[:n], text, args.vocab_size, args.init_from)
        except DataError as exc:
            sys.exit(f"error: {exc}")
    try:
        tok.encode(args.prompt)
    except ValueError as exc:
        p.error(f"--prompt {args.prompt!r}: {exc}")
    train_data = torch.tensor(tok.encode(text[:n]), dtype=torch.long)
    val_data = torch.tensor(tok.encode(text[n:]), dtype=torch.long)

    if args.init_from is not None:  # fine-tune released weights: their architecture, a shorter context if asked
        try:
            model = GPT.from_hf(args.init_from, args.sdpa, args.dropout)
        except DataError as exc:
            sys.exit(f"error: {exc}")
        if not keep_block:
            model.crop_block_size(args.block_size)
        config = model.config
    else:
        config = GPTConfig(args.block_size, len(tok), args.n_layer, args.n_head, args.n_embd, args.dropout, False)
        model = GPT(config, args.sdpa)
    if min(len(train_data), len(val_data)) <= config.block_size:
        p.error(f"--block-size {config.block_size}: longer than the validation text ({len(val_data)} tokens)")
    model.to(device)
    optimizer = configure_optimizer(model, args.lr, args.weight_decay, tuple(args.betas), device)
    # what must not change across --resume: the model and its data
    run_config = {"model": asdict(config), "corpus": args.corpus, "tokenizer": tokenizer_state(tok)["kind"],
                  "init_from": args.init_from, "batch_size": args.batch_size, "grad_accum": args.grad_accum}
    data_gen = torch.Generator().manual_seed(args.seed + rank)  # each rank draws its own batches
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
    raw_model = model
    if args.compile:
        model = torch.compile(model)
    if ddp:
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    tokens_per_iter = world * args.grad_accum * args.batch_size * config.block_size
    if master:
        print(f"{raw_model.num_params():,} parameters, vocab {len(tok)}, {len(train_data):,} training tokens, "
              f"{tokens_per_iter:,} tokens per step on {world} process(es), {device}")

    # the loop: evaluate every eval_interval steps (and at the end), then one optimizer step
    splits = {"train": train_data, "val": val_data}
    train_time, timed_iters, val_loss = 0.0, 0, None
    bar = tqdm(range(start_iter, args.max_iters + 1), desc="train", disable=not (master and sys.stdout.isatty()),
               initial=start_iter, total=args.max_iters + 1)
    it = start_iter
    try:
        for it in bar:
            lr = get_lr(it, args.lr, args.min_lr, args.warmup_iters, args.lr_decay_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
            evaluate = it % args.eval_interval == 0 or it == args.max_iters
            if evaluate and not (resumed is not None and it == start_iter):  # a resumed run has this one already
                losses = estimate_loss(raw_model, splits, args.eval_iters, args.batch_size, config.block_size,
                                       eval_gen, device, ctx)
                val_loss = losses["val"]
                for key, value in [("iter", it), ("train_loss", losses["train"]), ("val_loss", val_loss), ("lr", lr)]:
                    history[key].append(value)
                if master:
                    tqdm.write(f"step {it:5d}: train loss {losses['train']:.4f}, val loss {val_loss:.4f}, lr {lr:.2e}")
                if val_loss < best_val:
                    best_val = val_loss
                    if master and it > 0:
                        save_checkpoint(ckpt_path, model=raw_model.state_dict(), optimizer=optimizer.state_dict(),
                                        model_config=asdict(config), run_config=run_config, iter=it,
                                        best_val_loss=best_val, history=history, tokenizer=tokenizer_state(tok),
                                        data_gen=data_gen.get_state(), eval_gen=eval_gen.get_state(),
                                        torch_rng=torch.get_rng_state())
            if it == args.max_iters:
                break
            t0 = time.perf_counter()
            for micro in range(args.grad_accum):
                x, y = get_batch(train_data, args.batch_size, config.block_size, data_gen, device)
                sync = not ddp or micro == args.grad_accum - 1  # DDP averages gradients on the last micro-batch
                with ctx, (nullcontext() if sync else model.no_sync()):
                    _, loss = model(x, y)
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

    # after training: the spread of weights across ranks (0 when DDP kept them equal), a sample, the figure
    spread = 0.0
    if ddp:
        flat = torch.cat([p.detach().float().flatten() for p in raw_model.parameters()])
        ref = flat.clone()
        torch.distributed.broadcast(ref, src=0)
        diff = (flat - ref).abs().max()
        torch.distributed.all_reduce(diff, op=torch.distributed.ReduceOp.MAX)
        spread = diff.item()
        torch.distributed.destroy_process_group()
    if not master:
        return {"val_loss": val_loss, "best_val_loss": best_val, "rank": rank}
    raw_model.eval()
    gen = torch.Generator(device=device).manual_seed(args.seed)
    sample = sample_text(raw_model, tok, args.prompt, 200 if small else args.sample_len, args.temperature, args.top_k,
                         args.top_p, device, gen)
    print(f"sample:\n{sample}")
    plot_losses(history, out / "loss.png")
    iters_run = max(1, timed_iters)
    metrics = {
        "val_loss": val_loss,
        "best_val_loss": best_val,
        "ms_per_iter": 1000 * train_time / iters_run,
        "tokens_per_sec": tokens_per_iter * iters_run / max(train_time, 1e-9),
        "params": raw_model.num_params(),
        "train_loss": history["train_loss"][-1],
        "config": asdict(config),
        "tokenizer": tokenizer_state(tok)["kind"],
        "vocab_size": len(tok),
        "iters": args.max_iters,
        "world_size": world,
        "ddp_weight_spread": spread,
        "sdpa": args.sdpa,
        "device": str(device),
        "history": history,
        "sample": sample,
    }
    save_metrics(out, metrics, __file__, argv)
    print(f"val loss {val_loss:.4f} (best {best_val:.4f}), {metrics['ms_per_iter']:.1f} ms per step")
    return metrics


if __name__ == "__main__":
    main()
