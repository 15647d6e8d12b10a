"""The Transformer (Vaswani et al. 2017): an encoder-decoder made of attention only, English to French.

No recurrence: every position attends to every other in one step, so a sentence is processed in
parallel and the path between two words is one attention hop long. N layers of each stack:

    attention   Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + M) V        M = -inf where masked
    multi-head  MultiHead(x, m) = Concat(head_1..head_h) W_O,  head_i = Attention(x W_Q^i, m W_K^i, m W_V^i)
    ffn         FFN(x) = max(0, x W_1 + b_1) W_2 + b_2                        d_model -> d_ff -> d_model
    post-LN     x = LayerNorm(x + Dropout(Sublayer(x)))     (the paper)
    pre-LN      x = x + Dropout(Sublayer(LayerNorm(x)))     (--pre-ln; a LayerNorm ends each stack)
    encoder     self-attention over the source (padding masked), FFN
    decoder     causal self-attention, cross-attention to the encoder output, FFN
    input       x_t = sqrt(d_model) E[y_t] + PE_t,  PE_(t, 2i) = sin(t / 10000^(2i/d)), PE_(t, 2i+1) = cos(..)
    output      p(y_t | y_<t, x) = softmax(h_t E^T)       one matrix E for source, target and output
    loss        cross-entropy with label smoothing 0.1;  Adam(0.9, 0.98, 1e-9)
    schedule    lr = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)   (--lr rescales its peak)

Why pre-LN trains more easily: in post-LN every gradient to a lower layer passes through the
LayerNorm of each layer above, and at initialisation the gradients near the output are large, so
post-LN needs the warm-up; pre-LN keeps an identity path from the loss to every layer (Xiong et
al. 2020). Source and target share one byte-level BPE vocabulary (data.BPETokenizer) trained on
the training pairs; test BLEU is on words, on the same split as seq2seq_torch.py and bahdanau_torch.py.
`--task copy` is the sanity run: the model learns to copy random sequences exactly.

Reading: A. Vaswani et al. (2017), "Attention Is All You Need", NeurIPS, https://arxiv.org/abs/1706.03762;
d2l 11.7, https://d2l.ai/chapter_attention-mechanisms-and-transformers/transformer.html;
R. Xiong et al. (2020), "On Layer Normalization in the Transformer Architecture", https://arxiv.org/abs/2002.04745
Arc: Attention -- The Transformer (implement it in PyTorch).

Run:  python 06-transformers/transformer_torch.py                 (about 25 minutes on two CPU cores)
      python 06-transformers/transformer_torch.py --task copy     (a few minutes)
      python 06-transformers/transformer_torch.py --translate "i am cold ."
Look first at `MultiHeadAttention.forward`, `residual` and `Transformer.decode`, then at
runs/transformer_torch/attention.png and the BLEU table beside the two recurrent models'.
"""

# %%
import argparse
import math
import shlex
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from tqdm import tqdm

from data import (
    BPETokenizer,
    DataError,
    bpe_text,
    fra_eng,
    id_arrays,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    probability,
    save_metrics,
    shared_bpe,
    split_by_source,
    tokenize_nmt,
)

# %% [markdown]
# ## The model: a config, attention by hand, the two stacks


# %%
@dataclass
class TransformerConfig:
    vocab_size: int = 37000  # one vocabulary shared by source and target (the paper's EN-DE BPE)
    n_layer: int = 6  # N: layers in the encoder, and as many in the decoder
    n_head: int = 8  # h
    n_embd: int = 512  # d_model; d_k = d_v = d_model / h
    d_ff: int = 2048  # inner width of the feed-forward network
    block_size: int = 256  # positions the sinusoid table covers
    dropout: float = 0.1  # P_drop: on each sublayer's output, the summed embeddings and the attention weights
    pre_ln: bool = False  # False: post-LN as published; True: pre-LN
    sdpa: bool = False  # F.scaled_dot_product_attention instead of the hand-written attention


PRESETS = {
    "base": TransformerConfig(),  # the paper's Table 3
    "big": TransformerConfig(n_head=16, n_embd=1024, d_ff=4096, dropout=0.3),
    "cpu": TransformerConfig(n_layer=2, n_head=4, n_embd=256, d_ff=1024, block_size=128),  # this script's default
}
# base counts 63,082,496 parameters (tested): E 37,000 x 512, shared by both inputs and the output, 6 encoder
# layers of 3,152,384 and 6 decoder layers of 4,204,032, no output bias, and no final LayerNorm (post-LN ends
# each layer with one; pre-LN adds 2 x 1,024). The paper says 65M without itemising it: an output bias and a
# final LayerNorm per stack add only 39,048; a vocabulary of about 40,700 tokens would give 65M.


def positional_encoding(T, d):
    """PE (T, d): PE[t, 2i] = sin(t / 10000^(2i/d)), PE[t, 2i+1] = cos(t / 10000^(2i/d))."""
    t = torch.arange(T, dtype=torch.float32)[:, None]  # (T, 1)
    freq = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)  # (d/2,)
    pe = torch.zeros(T, d)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(t * freq), torch.cos(t * freq)
    return pe


class MultiHeadAttention(nn.Module):
    """h heads of scaled dot-product attention in subspaces of size d_k, concatenated, then W_O (out_proj)."""

    def __init__(self, config):
        super().__init__()
        C = config.n_embd
        assert C % config.n_head == 0, "n_embd must be a multiple of n_head"
        self.n_head, self.dropout, self.sdpa = config.n_head, config.dropout, config.sdpa
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(C, C) for _ in range(4))
        self.weights = None  # the last attention weights (B, h, T, S) of the hand-written path, for the figures

    def forward(self, x, m, mask):
        """Queries from x (B, T, C), keys and values from m (B, S, C); mask (B|1, 1, T|1, S), True = may attend."""
        B, T, C = x.shape
        S, h = m.shape[1], self.n_head
        q = self.q_proj(x).view(B, T, h, C // h).transpose(1, 2)  # (B, h, T, d_k)
        k = self.k_proj(m).view(B, S, h, C // h).transpose(1, 2)  # (B, h, S, d_k)
        v = self.v_proj(m).view(B, S, h, C // h).transpose(1, 2)  # (B, h, S, d_v)
        p = self.dropout if self.training else 0.0
        if self.sdpa:  # the fused kernel: the same numbers (tested), without materialising the weights
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            att = q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1])  # (B, h, T, S)   Q K^T / sqrt(d_k)
            att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)  # masked keys get weight exactly 0
            self.weights = att.detach()
            y = F.dropout(att, p, self.training) @ v  # (B, h, T, d_v)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))  # Concat(heads) W_O   (B, T, C)


def residual(x, norm, sublayer, dropout, pre_ln):
    """Post-LN LayerNorm(x + Dropout(f(x))) as published, or pre-LN x + Dropout(f(LayerNorm(x)))."""
    return x + dropout(sublayer(norm(x))) if pre_ln else norm(x + dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    """Self-attention, then the feed-forward network, each inside `residual`. Names as nn.TransformerEncoderLayer."""

    def __init__(self, config):
        super().__init__()
        C = config.n_embd
        self.self_attn = MultiHeadAttention(config)
        self.linear1, self.linear2 = nn.Linear(C, config.d_ff), nn.Linear(config.d_ff, C)
        self.norm1, self.norm2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.dropout, self.pre_ln = nn.Dropout(config.dropout), config.pre_ln

    def ff(self, x):
        return self.linear2(self.dropout(F.relu(self.linear1(x))))  # max(0, x W_1 + b_1) W_2 + b_2

    def forward(self, x, src_mask):
        x = residual(x, self.norm1, lambda y: self.self_attn(y, y, src_mask), self.dropout, self.pre_ln)
        return residual(x, self.norm2, self.ff, self.dropout, self.pre_ln)


class DecoderLayer(EncoderLayer):
    """Causal self-attention, cross-attention (queries from the decoder, keys and values from the encoder), FFN."""

    def __init__(self, config):
        super().__init__(config)
        self.cross_attn, self.norm3 = MultiHeadAttention(config), nn.LayerNorm(config.n_embd)

    def forward(self, x, memory, src_mask, causal):
        x = residual(x, self.norm1, lambda y: self.self_attn(y, y, causal), self.dropout, self.pre_ln)
        x = residual(x, self.norm2, lambda y: self.cross_attn(y, memory, src_mask), self.dropout, self.pre_ln)
        return residual(x, self.norm3, self.ff, self.dropout, self.pre_ln)


class Transformer(nn.Module):
    """The encoder-decoder. `encode` once per sentence, `decode` for teacher forcing and for every search step."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        C = config.n_embd
        self.embed = nn.Embedding(config.vocab_size, C)  # E: source, target and output (tied)
        self.register_buffer("pe", positional_encoding(config.block_size, C), persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(config) for _ in range(config.n_layer))
        self.decoder = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layer))
        # pre-LN leaves the residual stream unnormalised: one LayerNorm closes each stack
        self.enc_norm = nn.LayerNorm(C) if config.pre_ln else nn.Identity()
        self.dec_norm = nn.LayerNorm(C) if config.pre_ln else nn.Identity()
        for name, w in self.named_parameters():
            if w.dim() == 2 and name != "embed.weight":
                nn.init.xavier_uniform_(w)
        nn.init.normal_(self.embed.weight, std=C**-0.5)  # so that sqrt(d_model) E[y] has entries of size about 1

    def inputs(self, ids):
        """sqrt(d_model) E[ids] + PE, then dropout.   ids (B, T) -> (B, T, C)."""
        T = ids.shape[1]
        assert T <= self.config.block_size, f"{T} tokens: more than block_size {self.config.block_size}"
        return self.drop(self.embed(ids) * math.sqrt(self.config.n_embd) + self.pe[:T])

    def encode(self, src, src_len):
        """src (B, S) padded, src_len (B,) -> memory (B, S, C) and the padding mask (B, 1, 1, S)."""
        src_mask = (torch.arange(src.shape[1], device=src.device) < src_len[:, None])[:, None, None, :]
        x = self.inputs(src)
        for layer in self.encoder:
            x = layer(x, src_mask)
        return self.enc_norm(x), src_mask

    def decode(self, tgt, memory, src_mask, last=False):
        """tgt (B, T) = BOS y_1 .. y_{T-1} -> logits (B, T, V); position t sees tgt[:, :t+1] and the whole source.
        last=True: the logits of the last position only (B, 1, V), all that a search step needs."""
        T = tgt.shape[1]
        # target padding comes after the real tokens, so the causal mask already keeps real positions off it
        causal = torch.ones(T, T, dtype=torch.bool, device=tgt.device).tril()[None, None]  # (1, 1, T, T)
        x = self.inputs(tgt)
        for layer in self.decoder:
            x = layer(x, memory, src_mask, causal)
        x = x[:, -1:] if last else x
        return self.dec_norm(x) @ self.embed.weight.T  # (B, T, V): the output layer is E^T, no bias

    def forward(self, src, src_len, tgt):
        memory, src_mask = self.encode(src, src_len)
        return self.decode(tgt, memory, src_mask)


def noam(step, n_embd, warmup, peak=None):
    """The paper's d_model^-0.5 min(step^-0.5, step warmup^-1.5); `peak` replaces its maximum d^-0.5 warmup^-0.5."""
    lr = n_embd**-0.5 * min(step**-0.5, step * warmup**-1.5)
    return lr if peak is None else lr * peak / (n_embd**-0.5 * warmup**-0.5)


# %% [markdown]
# ## Greedy search, beam search, BLEU


# %%
@torch.no_grad()
def greedy_search(model, src, src_len, max_len, bos, eos):
    """The argmax token at every step, for a batch. -> one id list per sentence, ending with EOS if it finished."""
    model.eval()
    memory, src_mask = model.encode(src, src_len)
    ys = torch.full((src.shape[0], 1), bos, dtype=torch.long, device=src.device)
    for _ in range(max_len):
        y = model.decode(ys, memory, src_mask, last=True)[:, -1].argmax(-1)  # (B,): the last position's prediction
        ys = torch.cat([ys, y[:, None]], dim=1)
        if (ys == eos).any(dim=1).all():
            break
    out = ys[:, 1:].tolist()
    return [seq[: seq.index(eos) + 1] if eos in seq else seq for seq in out]


def length_penalty(L, alpha, penalty="power"):
    """The divisor of a finished hypothesis's log-probability: L^alpha, or GNMT's ((5 + L) / 6)^alpha."""
    return L**alpha if penalty == "power" else ((5 + L) / 6) ** alpha


@torch.no_grad()
def beam_search(model, src, beam_size, max_len, bos, eos, alpha=0.75, penalty="power"):
    """Beam search for one source src (S,). -> (ids, score), as in bahdanau_torch.py's beam_search.

    The beam_size best unfinished prefixes by log p survive each step; an EOS among the beam_size
    best candidates finishes its prefix; it stops when beam_size are finished. The answer has the
    best score = log p(y) / length_penalty(L). With beam_size 1 this is exactly greedy search.
    """
    model.eval()
    memory, src_mask = model.encode(src[None], torch.tensor([len(src)], device=src.device))
    prefixes, logp, finished = [[]], torch.zeros(1, device=src.device), []
    for _ in range(max_len):
        ys = torch.tensor([[bos] + p for p in prefixes], device=src.device)  # (k, t)
        logits = model.decode(ys, memory.expand(len(prefixes), -1, -1), src_mask, last=True)[:, -1]  # (k, V)
        cand = (logp[:, None] + F.log_softmax(logits, dim=-1)).flatten()  # (k * V,) log p(prefix + w)
        top = cand.topk(min(2 * beam_size, len(cand)))
        keep = []
        for rank, (lp, i) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            beam, w = divmod(i, logits.shape[1])
            if w == eos:
                if rank < beam_size:
                    ids = prefixes[beam] + [eos]
                    finished.append((lp / length_penalty(len(ids), alpha, penalty), ids))
            elif len(keep) < beam_size:
                keep.append((beam, w, lp))
        if len(finished) >= beam_size:
            break
        prefixes = [prefixes[b] + [w] for b, w, _ in keep]
        logp = torch.tensor([lp for _, _, lp in keep], device=src.device)
    if not finished:
        finished = [(lp / length_penalty(len(p), alpha, penalty), p) for p, lp in zip(prefixes, logp.tolist())]
    score, ids = max(finished, key=lambda f: f[0])
    return ids, score


def ngrams(tokens, n):
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses, references, max_n=4):
    """Corpus BLEU (0-100) of word lists, one reference each: sacreBLEU's, exp smoothing (as seq2seq_torch.py)."""
    correct, total, hyp_len, ref_len = [0] * max_n, [0] * max_n, 0, 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        hyp_len, ref_len = hyp_len + len(hyp), ref_len + len(ref)
        for n in range(1, max_n + 1):
            correct[n - 1] += sum((ngrams(hyp, n) & ngrams(ref, n)).values())  # clipped matches
            total[n - 1] += max(len(hyp) - n + 1, 0)
    if not any(correct) or not all(total):
        return 0.0
    bp = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)  # brevity penalty
    log_p, halvings = 0.0, 1
    for c, t in zip(correct, total):
        if c == 0:  # no match of this order: p_n = 1 / (2^j total_n) for the j-th such order
            halvings *= 2
        log_p += math.log(c / t if c else 1 / (halvings * t)) / max_n
    return 100 * bp * math.exp(log_p)


# %% [markdown]
# ## Data: the translation split in BPE tokens, or the copy task


# %%
def load_translation(max_len, n_train, n_test, n_val, vocab_size, seed, data_dir=None):
    """seq2seq_torch.py's split (max_len words a side, split by source), in one BPE trained on its train pairs."""
    pairs = fra_eng(data_dir)
    src, tgt = [tokenize_nmt(en) for en, _ in pairs], [tokenize_nmt(fr) for _, fr in pairs]
    kept = [i for i in range(len(pairs)) if 0 < len(src[i]) <= max_len and 0 < len(tgt[i]) <= max_len]
    src, tgt = [src[i] for i in kept], [tgt[i] for i in kept]
    split = split_by_source(src, n_test=n_test, n_val=n_val, seed=seed)
    n_available = len(split["train"])
    split["train"] = split["train"][:n_train]
    words = {name: ([src[i] for i in idx], [tgt[i] for i in idx]) for name, idx in split.items()}
    tok = shared_bpe(words["train"][0] + words["train"][1], vocab_size)  # English and French in one vocabulary
    arrays = {name: id_arrays([tok.encode(bpe_text(s)) for s in en], [tok.encode(bpe_text(s)) for s in fr],
                              *tok.specials.values()) for name, (en, fr) in words.items()}
    stats = {"pairs_in_file": len(pairs), "pairs_within_max_len": len(kept), "train_available": n_available}
    return arrays, words, tok, stats


def copy_data(n, seq_len, symbols, rng):
    """The copy task: n random sequences of 1..seq_len symbols (ids 0..symbols-1); the target is the source."""
    seqs = [rng.integers(0, symbols, rng.integers(1, seq_len + 1)).tolist() for _ in range(n)]
    return id_arrays(seqs, seqs, symbols, symbols + 1, symbols + 2)  # pad, bos, eos after the symbols


def to_tensors(arrays, device):
    return {k: torch.from_numpy(v).long().to(device) for k, v in arrays.items()}


def length_batches(lengths, batch_size, rng, window=50):
    """Minibatches of pairs of similar length, as the paper batches "by approximate sequence length": shuffle,
    sort each window of `window` batches by length, cut it into batches, shuffle the batches. Less padding."""
    order = rng.permutation(len(lengths))
    batches = []
    for i in range(0, len(order), window * batch_size):
        w = order[i : i + window * batch_size]
        w = w[np.argsort(lengths[w], kind="stable")]
        batches += [w[j : j + batch_size] for j in range(0, len(w), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def batch(t, idx):
    """Rows idx of a split, cut to the longest sentence among them (less padding, less work)."""
    b = {k: v[idx] for k, v in t.items()}
    S, T = b["src_len"].max().item(), b["label_len"].max().item()
    return {**b, "src": b["src"][:, :S], "dec_in": b["dec_in"][:, :T], "label": b["label"][:, :T]}


@torch.no_grad()
def evaluate_loss(model, t, pad, batch_size=512):
    """Mean cross-entropy per target token over a split, without smoothing and dropout."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(t["src"]), batch_size):
        b = batch(t, torch.arange(i, min(i + batch_size, len(t["src"])), device=t["src"].device))
        logits = model(b["src"], b["src_len"], b["dec_in"])
        total += F.cross_entropy(logits.flatten(0, 1), b["label"].flatten(), ignore_index=pad, reduction="sum").item()
        count += b["label_len"].sum().item()
    model.train()
    return total / count


def translate_split(model, t, max_len, bos, eos, beam_size=0, alpha=0.75, penalty="power", desc=None):
    """Id lists for every source of a split: batched greedy search (beam_size 0) or beam search one by one."""
    if beam_size == 0:
        return [ids for i in range(0, len(t["src"]), 256)
                for ids in greedy_search(model, t["src"][i : i + 256], t["src_len"][i : i + 256], max_len, bos, eos)]
    rows = tqdm(range(len(t["src"])), desc=desc, leave=False, disable=not sys.stdout.isatty())
    return [beam_search(model, t["src"][i, : t["src_len"][i]], beam_size, max_len, bos, eos, alpha, penalty)[0]
            for i in rows]


def words_of(ids, tok):
    """Token ids up to EOS -> the words of the decoded text."""
    eos = tok.specials["<eos>"]
    return tok.decode(ids[: ids.index(eos)] if eos in ids else ids).split()


@torch.no_grad()
def plot_attention(model, t, rows, tok, max_len, path):
    """For test sentences `rows`: the last layer's encoder self-, decoder self- and cross-attention, mean over heads."""
    model.eval()
    fig = Figure(figsize=(12, 4 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), 3, squeeze=False)
    bos, eos = tok.specials["<bos>"], tok.specials["<eos>"]
    for ax, i in zip(axes, rows):
        src = t["src"][i : i + 1, : t["src_len"][i]]
        ids = greedy_search(model, src, t["src_len"][i : i + 1], max_len, bos, eos)[0]
        model(src, t["src_len"][i : i + 1], torch.tensor([[bos] + ids[:-1]], device=src.device))  # fills .weights
        src_toks, out_toks = [tok.decode([j]) for j in src[0].tolist()], [tok.decode([j]) for j in ids]
        in_toks = ["<bos>", *out_toks[:-1]]  # the decoder reads these; row t is the query that predicts out_toks[t]
        maps = [(model.encoder[-1].self_attn, src_toks, src_toks, "encoder self-attention"),
                (model.decoder[-1].self_attn, in_toks, out_toks, "decoder self-attention (causal)"),
                (model.decoder[-1].cross_attn, src_toks, out_toks, "cross-attention")]
        for a, (attn, xs, ys, title) in zip(ax, maps):
            a.imshow(attn.weights[0].mean(0).cpu().numpy(), cmap="Greys", vmin=0, vmax=1)  # mean over heads
            a.set_xticks(range(len(xs)), xs, rotation=70, fontsize=7)
            a.set_yticks(range(len(ys)), ys, fontsize=7)
            a.set_title(f"{title}, test sentence {i}", fontsize=9)
    fig.savefig(path, dpi=110)


# %% [markdown]
# ## Device and checkpoint


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


def translate_sentence(args, ckpt, device):
    """--translate: the run's checkpoint translates one sentence, greedy and with each beam size."""
    tok = BPETokenizer(ckpt["merges"], ckpt["specials"])
    model = Transformer(TransformerConfig(**ckpt["model_config"])).to(device)
    model.load_state_dict(ckpt["model"])
    words = tokenize_nmt(args.translate)
    src = torch.tensor([*tok.encode(bpe_text(words)), tok.specials["<eos>"]], device=device)
    if len(src) > model.config.block_size:
        sys.exit(f"error: --translate: {len(src)} tokens, more than the model's block size {model.config.block_size}")
    bos, eos, max_len = tok.specials["<bos>"], tok.specials["<eos>"], ckpt["decode_len"]
    ids = greedy_search(model, src[None], torch.tensor([len(src)], device=device), max_len, bos, eos)[0]
    out = {"source": " ".join(words), "greedy": " ".join(words_of(ids, tok))}
    for k in args.beam_sizes:
        ids, score = beam_search(model, src, k, max_len, bos, eos, args.length_alpha, args.length_penalty)
        out[f"beam {k}"] = f"{' '.join(words_of(ids, tok))}   (score {score:.3f})"
    for name, text in out.items():
        print(f"{name:>8}: {text}")
    return out


# %% [markdown]
# ## Main: one flat training loop with the warm-up schedule, then decoding and BLEU


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=["translate", "copy"], default="translate",
                   help="English to French (default), or copying random sequences (the sanity run)")
    p.add_argument("--arch", choices=list(PRESETS), default="cpu",
                   help="model preset: base and big are the paper's; cpu (default) is 2 + 2 layers of width 256")
    p.add_argument("--n-layer", type=positive_int, default=None, help="layers per stack (default: the preset's)")
    p.add_argument("--n-head", type=positive_int, default=None, help="attention heads (default: the preset's)")
    p.add_argument("--n-embd", type=positive_int, default=None,
                   help="d_model; d_ff becomes 4 d_model (default: the preset's; 64 with --smoke)")
    p.add_argument("--block-size", type=positive_int, default=None, help="longest sequence (default: the preset's)")
    p.add_argument("--dropout", type=probability, default=None, help="P_drop (default: the preset's, 0.1 for cpu)")
    p.add_argument("--pre-ln", action="store_true", help="pre-LN instead of the paper's post-LN")
    p.add_argument("--sdpa", action="store_true", help="F.scaled_dot_product_attention instead of the hand-written")
    p.add_argument("--epochs", type=positive_int, default=None, help="passes over the training set (default 8; 6 "
                   "with --smoke; copy: 10)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="sentence pairs per minibatch (default 128)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="peak learning rate (default: the paper's d_model^-0.5 warmup^-0.5; 5e-3 with --smoke; copy: "
                   "1e-3, as post-LN at width 256 collapses at the paper's peak after 100 warm-up steps)")
    p.add_argument("--warmup-steps", type=positive_int, default=None,
                   help="steps of linear warm-up (default 600; 100 with --smoke or copy)")
    p.add_argument("--label-smoothing", type=probability, default=0.1, help="default 0.1, as the paper")
    p.add_argument("--clip", type=nonneg_float, default=1.0,
                   help="max global gradient norm, 0: no clipping as in the paper (default 1)")
    p.add_argument("--max-len", type=positive_int, default=None,
                   help="keep pairs with at most this many words a side (default 8; 5 with --smoke)")
    p.add_argument("--n-train", type=positive_int, default=None,
                   help="training pairs, a random sample of the training split; more than there are: all "
                   "(default 30000; 6000 with --smoke; copy: 10000 sequences)")
    p.add_argument("--n-test", type=positive_int, default=None,
                   help="test pairs, never trained on (default 2000; 300 with --smoke; copy: 500)")
    p.add_argument("--vocab-size", type=positive_int, default=None,
                   help="shared BPE vocabulary: 256 bytes + merges + 3 special tokens (default 4000; 600 with --smoke)")
    p.add_argument("--seq-len", type=positive_int, default=10, help="copy task: longest sequence (default 10)")
    p.add_argument("--symbols", type=positive_int, default=10, help="copy task: alphabet size (default 10)")
    p.add_argument("--beam-sizes", type=positive_int, nargs="+", default=[1, 2, 4, 8],
                   help="beam sizes reported (default 1 2 4 8)")
    p.add_argument("--length-alpha", type=nonneg_float, default=0.75, help="alpha of the length penalty (default 0.75)")
    p.add_argument("--length-penalty", choices=["power", "gnmt"], default="power",
                   help="divide log p by L^alpha (power, default) or ((5 + L) / 6)^alpha (gnmt)")
    p.add_argument("--translate", default=None, metavar="SENTENCE",
                   help="translate SENTENCE with the checkpoint in --out-dir, then stop (no training)")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/checkpoint.pt up to --epochs")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seeds the split, the weights, dropout and batch order (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with fra-eng/fra.txt (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="for metrics, figures, checkpoint (default runs/<script>)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run: short pairs, a small model")
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    copy = args.task == "copy"
    defaults = {"epochs": (6, 10 if copy else 8), "warmup_steps": (100, 100 if copy else 600),
                "lr": (5e-3, 1e-3 if copy else None),
                "max_len": (5, 8), "n_train": (6000, 10_000 if copy else 30_000),
                "n_test": (300, 500 if copy else 2000), "vocab_size": (600, 4000)}
    if args.smoke:
        defaults.update(n_layer=(2, None), n_embd=(64, None))
    for name, (smoke, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    if args.vocab_size < 259:
        p.error(f"--vocab-size {args.vocab_size}: at least 259 (256 bytes and 3 special tokens)")
    sizes = {k: getattr(args, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "dropout")}
    config = replace(PRESETS[args.arch], **{k: v for k, v in sizes.items() if v is not None},
                     pre_ln=args.pre_ln, sdpa=args.sdpa)
    if args.n_embd is not None:
        config = replace(config, d_ff=4 * args.n_embd)
    if config.n_embd % config.n_head:
        p.error(f"--n-embd {config.n_embd} is not a multiple of --n-head {config.n_head}")
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    ckpt_path = out_dir / "checkpoint.pt"
    if args.translate is not None:
        n_words = len(tokenize_nmt(args.translate))
        if not 0 < n_words <= 50:
            p.error(f"--translate: {n_words} words; give a sentence of 1 to 50 words (the sentence is empty or long)")
        if not ckpt_path.exists():
            p.error(f"--translate: no checkpoint at {ckpt_path}: train first (same --out-dir)")
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt["config"]["task"] != "translate":
            p.error(f"--translate: {ckpt_path} was trained on the copy task")
        return translate_sentence(args, ckpt, device)
    ckpt = None
    if args.resume:
        if not ckpt_path.exists():
            p.error(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        may_change = {"epochs", "resume", "device", "data_dir", "out_dir", "beam_sizes", "translate", "length_alpha",
                      "length_penalty", "sdpa"}  # where to run and how to decode; every other flag shapes the training
        diff = [f"--{k.replace('_', '-')} {ckpt['config'].get(k)} -> {v}" for k, v in vars(args).items()
                if k not in may_change and ckpt["config"].get(k) != v]
        if diff:
            p.error(f"--resume: {ckpt_path} was trained with other settings: {'; '.join(diff)}")
        if ckpt["epoch"] >= args.epochs:
            p.error(f"nothing to do: the checkpoint has {ckpt['epoch']} epochs, --epochs is {args.epochs}")

    if copy:
        rng = np.random.default_rng(args.seed)
        arrays = {name: copy_data(n, args.seq_len, args.symbols, rng)
                  for name, n in (("train", args.n_train), ("val", args.n_test), ("test", args.n_test))}
        tok, stats, V = None, {}, args.symbols + 3
        pad, bos, eos = args.symbols, args.symbols + 1, args.symbols + 2
        print(f"copy task: sequences of 1 to {args.seq_len} of {args.symbols} symbols; train {args.n_train:,}")
    else:
        try:
            arrays, words, tok, stats = load_translation(args.max_len, args.n_train, args.n_test,
                                                         200 if args.smoke else 1000, args.vocab_size, args.seed,
                                                         args.data_dir)
        except DataError as exc:
            sys.exit(f"error: {exc}")
        V, (pad, bos, eos) = len(tok), tok.specials.values()
        tokens = {side: arrays["train"][f"{side}_len"].mean() for side in ("src", "label")}
        print(f"{stats['pairs_within_max_len']:,} of {stats['pairs_in_file']:,} pairs have at most {args.max_len} "
              f"words a side; train {len(arrays['train']['src']):,}, val {len(arrays['val']['src']):,}, test "
              f"{len(arrays['test']['src']):,}; shared BPE vocabulary {V:,} tokens; {tokens['src']:.1f} English and "
              f"{tokens['label']:.1f} French tokens a sentence (with EOS)")
    config = replace(config, vocab_size=V)
    longest = max(a[k].shape[1] for a in arrays.values() for k in ("src", "dec_in"))
    if longest > config.block_size:
        p.error(f"--block-size {config.block_size}: the data has sequences of {longest} tokens")
    decode_len = arrays["train"]["label"].shape[1]  # the longest training target, EOS included
    out_dir.mkdir(parents=True, exist_ok=True)
    t = {name: to_tensors(a, device) for name, a in arrays.items()}
    n_train = len(t["train"]["src"])
    lengths = arrays["train"]["src_len"] + arrays["train"]["label_len"]  # batched by length, see length_batches

    torch.manual_seed(args.seed)
    model = Transformer(config).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)  # lr is set at every step
    n_params = sum(q.numel() for q in model.parameters())
    print(f"Transformer {args.arch}: {config.n_layer} + {config.n_layer} layers, d_model {config.n_embd}, "
          f"{config.n_head} heads, d_ff {config.d_ff}, {'pre' if config.pre_ln else 'post'}-LN; {n_params:,} params")
    hist = {"train_loss": [], "val_loss": [], "val_score": [], "epoch_s": [], "lr": []}
    start, step = 1, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        hist, start, step = ckpt["hist"], ckpt["epoch"] + 1, ckpt["step"]
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        print(f"resumed from {ckpt_path} after epoch {ckpt['epoch']}")
    saved = start - 1

    def val_score():
        """Validation: greedy BLEU (translation) or the share of sequences copied exactly (copy)."""
        hyps = translate_split(model, t["val"], decode_len, bos, eos)
        if copy:
            return float(np.mean([h == lab[: n].tolist() for h, lab, n in
                                  zip(hyps, arrays["val"]["label"], arrays["val"]["label_len"])]))
        return corpus_bleu([words_of(h, tok) for h in hyps], words["val"][1])

    try:
        for epoch in range(start, args.epochs + 1):
            t0 = time.perf_counter()
            batches = length_batches(lengths, args.batch_size, np.random.default_rng([args.seed, epoch]))
            losses = []
            model.train()
            for idx in tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=not sys.stdout.isatty()):
                step += 1
                lr = noam(step, config.n_embd, args.warmup_steps, args.lr)  # warm-up, then 1/sqrt(step)
                for g in opt.param_groups:
                    g["lr"] = lr
                b = batch(t["train"], torch.from_numpy(idx).to(device))
                logits = model(b["src"], b["src_len"], b["dec_in"])  # (B, T, V), teacher forcing
                loss = F.cross_entropy(logits.flatten(0, 1), b["label"].flatten(), ignore_index=pad,
                                       label_smoothing=args.label_smoothing)  # padding positions do not count
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if args.clip > 0:  # clipping by global norm, as taught in 05-rnns/rnn_numpy.py
                    nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                opt.step()
                losses.append(loss.detach())
            hist["train_loss"].append(torch.stack(losses).mean().item())
            hist["val_loss"].append(evaluate_loss(model, t["val"], pad))
            hist["val_score"].append(val_score())
            hist["epoch_s"].append(time.perf_counter() - t0)
            hist["lr"].append(lr)
            print(f"epoch {epoch:2d}/{args.epochs}  train loss {hist['train_loss'][-1]:.3f} (smoothed) | val loss "
                  f"{hist['val_loss'][-1]:.3f} | val {'exact copies' if copy else 'BLEU (greedy)'} "
                  f"{hist['val_score'][-1]:.3f} | lr {lr:.2e} | {hist['epoch_s'][-1]:.1f} s", flush=True)
            save_checkpoint(ckpt_path, model=model.state_dict(), opt=opt.state_dict(), epoch=epoch, step=step,
                            hist=hist, torch_rng=torch.get_rng_state(), config=vars(args), model_config=asdict(config),
                            decode_len=decode_len, merges=tok.merges if tok else None,
                            specials=list(tok.specials) if tok else None)
            saved = epoch
    except KeyboardInterrupt:  # Ctrl-C: say what is saved and how to go on, without a traceback
        flags = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--resume"]
        script = f"{Path(__file__).resolve().parent.name}/{Path(__file__).name}"
        where = f"{ckpt_path} holds epoch {saved}. Resume with" if saved else "nothing saved. Start again with"
        print(f"\ninterrupted in epoch {epoch}; {where}:\n  " + shlex.join(["python", script, *flags]
              + (["--resume"] if saved else [])), file=sys.stderr)
        sys.exit(130)

    # the results first (RESULTS.md shows a run's first metrics), then the training, then the details
    common = {"val_loss": hist["val_loss"][-1], "train_loss": hist["train_loss"][-1],
              "train_minutes": sum(hist["epoch_s"]) / 60, "params": n_params, "n_train": n_train}
    with torch.device("meta"):  # the paper's base model at its 37,000-token vocabulary, counted without memory
        common["params_base_37k"] = sum(q.numel() for q in Transformer(PRESETS["base"]).parameters())
    details = {"task": args.task, "model_config": asdict(config), "device": str(device), "config": vars(args),
               "history": {k: hist[k] for k in ("train_loss", "val_loss", "val_score", "lr")}}
    t0 = time.perf_counter()
    hyps = {"greedy": translate_split(model, t["test"], decode_len, bos, eos)}
    if copy:
        labels = [lab[:n].tolist() for lab, n in zip(arrays["test"]["label"], arrays["test"]["label_len"])]
        exact = float(np.mean([h == lab for h, lab in zip(hyps["greedy"], labels)]))
        token_acc = float(np.mean([a == b for h, lab in zip(hyps["greedy"], labels)
                                   for a, b in zip(h + [-1] * len(lab), lab)]))
        print(f"test: {exact:.3f} of the sequences copied exactly, {token_acc:.3f} of the tokens")
        metrics = {"script": Path(__file__).stem, "test_exact": exact, "test_token_acc": token_acc, **common, **details}
        save_metrics(out_dir, metrics, __file__, argv)
        return metrics
    for k in args.beam_sizes:
        hyps[f"beam {k}"] = translate_split(model, t["test"], decode_len, bos, eos, k, args.length_alpha,
                                            args.length_penalty, desc=f"beam {k}")
    decode_s = time.perf_counter() - t0
    test_src, test_refs = words["test"]
    hyp_words = {name: [words_of(h, tok) for h in hs] for name, hs in hyps.items()}
    bleu = {name: corpus_bleu(hw, test_refs) for name, hw in hyp_words.items()}
    print("test BLEU  " + " | ".join(f"{name} {b:.2f}" for name, b in bleu.items()))
    by_length = {}  # greedy BLEU by source length, in the buckets of seq2seq_torch.py and bahdanau_torch.py
    for lo in range(1, args.max_len + 1, 4):
        idx = [i for i, s in enumerate(test_src) if lo <= len(s) < lo + 4]
        if idx:
            by_length[f"{lo}-{lo + 3} words"] = {"pairs": len(idx), "bleu": corpus_bleu(
                [hyp_words["greedy"][i] for i in idx], [test_refs[i] for i in idx])}
    print("greedy BLEU by source length  " + " | ".join(f"{k} ({v['pairs']} pairs) {v['bleu']:.2f}"
                                                      for k, v in by_length.items()))
    best_beam = max(args.beam_sizes)
    rows = np.linspace(0, len(test_src) - 1, 12).astype(int)
    examples = [{"source": " ".join(test_src[i]), "reference": " ".join(test_refs[i]),
                 "greedy": " ".join(hyp_words["greedy"][i]),
                 f"beam {best_beam}": " ".join(hyp_words[f"beam {best_beam}"][i])} for i in rows]
    table = [f"| source | reference | greedy | beam {best_beam} |", "|---|---|---|---|"]
    table += ["| " + " | ".join(e.values()) + " |" for e in examples]
    (out_dir / "examples.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    for m in model.modules():  # the figure needs the attention weights, which only the hand-written path keeps
        if isinstance(m, MultiHeadAttention):
            m.sdpa = False
    plot_attention(model, t["test"], rows[[2, 5, 8]], tok, decode_len, out_dir / "attention.png")
    metrics = {"script": Path(__file__).stem, "test_bleu": bleu["greedy"],
               "test_bleu_beam": {str(k): bleu[f"beam {k}"] for k in args.beam_sizes}, **common, "decode_s": decode_s,
               "n_test": len(test_src), "vocab_size": V, **stats, "test_bleu_by_length": by_length,
               "examples": examples, **details}
    save_metrics(out_dir, metrics, __file__, argv)
    return metrics


if __name__ == "__main__":
    main()
