"""Attention from first principles in PyTorch: scoring functions, masked softmax, multi-head attention.

An attention layer answers each query q_i with a weighted mean of values v_j; the weights come from
a score a(q_i, k_j) of the query against every key (d2l 11.1-11.5):

    weights      alpha_ij = softmax_j a(q_i, k_j)     over the allowed keys only: a masked key gets 0
    output       o_i = sum_j alpha_ij v_j
    dot product  a(q, k) = q^T k
    scaled       a(q, k) = q^T k / sqrt(d)            q^T k of N(0, 1) entries has variance d; this keeps it 1
    additive     a(q, k) = w_v^T tanh(W_q q + W_k k)  (Bahdanau) queries and keys may differ in size
    multi-head   head_h = Attention(X_q W_h^Q, X_k W_h^K, X_v W_h^V),  h = 1..H,  d = E / H
                 MultiHead(X_q, X_k, X_v) = [head_1; ...; head_H] W^O

`MultiHeadAttention` is a twin of nn.MultiheadAttention(batch_first=True): the same arguments, masks
and outputs, and `copy_from` loads an nn.MultiheadAttention's weights. Its core is
`scaled_dot_product_attention`, written out; `sdpa=True` calls F.scaled_dot_product_attention (fused
kernels; it returns no weights). Two mask conventions meet here: nn.MultiheadAttention's
key_padding_mask and attn_mask say True = masked out, F.scaled_dot_product_attention's and ours say
True = may attend; a float mask is added to the scores in both. A query whose keys are all masked
gets output 0 here, where nn.MultiheadAttention gives NaN (torch 2.13's SDPA on the CPU gives 0 too).
`main` trains a small model of self-attention blocks, with no recurrence or convolution, to sort a
random sequence of symbols (output i is the i-th smallest input: each position must find the right
input by its content), then draws every head's attention map.

Reading: A. Vaswani et al. (2017), "Attention Is All You Need", NeurIPS, https://arxiv.org/abs/1706.03762;
d2l 11.1-11.5, https://d2l.ai/chapter_attention-mechanisms-and-transformers/index.html;
D. Bahdanau, K. Cho, Y. Bengio (2015), https://arxiv.org/abs/1409.0473 (additive attention)
Arc: Attention -- attention scoring functions and multi-head self-attention.

Run:  python 06-transformers/attention_torch.py                 (about a minute on two CPU cores)
      python 06-transformers/attention_torch.py --sdpa --n-head 2
      python 06-transformers/attention_torch.py --smoke         (seconds)
Look first at `scaled_dot_product_attention` and `softmax`, then `MultiHeadAttention.forward` (the
head split and the masks), then runs/attention_torch/attention.png.
"""

# %%
import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from tqdm import tqdm

from data import nonneg_int, positive_float, positive_int, probability, save_metrics

# %% [markdown]
# ## Masked softmax


# %%
def softmax(scores, mask=None):
    """softmax over the last axis where `mask` allows: bool True = may attend, or a float mask added to the scores.

    alpha_j = exp(s_j - m) / sum_j' exp(s_j' - m) over the allowed j, with m the row's largest score: a
    constant, so it changes nothing but keeps exp from overflowing. A masked key gets exactly 0. A row
    with no allowed key gets weights 0 (F.softmax would give 0 / 0 = NaN); elsewhere the sum is >= 1.
    """
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, -math.inf)  # exp(-inf) = 0
    elif mask is not None:
        scores = scores + mask  # a float mask: -inf forbids a key, other values bias it
    m = scores.amax(dim=-1, keepdim=True).detach()  # (..., 1), no gradient: the result does not depend on m
    e = torch.exp(scores - m.clamp_min(torch.finfo(scores.dtype).min))  # a row of -inf keeps m finite: e = 0
    return e / e.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)  # 0 / tiny = 0


def lengths_to_mask(valid_lens, S):
    """valid_lens (B,) or (B, T) -> bool (B, 1, S) or (B, T, S): key j may be attended where j < valid_len."""
    lens = valid_lens[:, None] if valid_lens.dim() == 1 else valid_lens  # (B, 1) or (B, T)
    return torch.arange(S, device=valid_lens.device) < lens[..., None]


def masked_softmax(scores, valid_lens=None):
    """d2l's masked softmax: scores (B, T, S), valid_lens None, (B,) or (B, T); keys j >= valid_len get 0.

    d2l fills masked scores with -1e6, so its rows with valid_len 0 come out uniform; here they are 0.
    """
    return softmax(scores, None if valid_lens is None else lengths_to_mask(valid_lens, scores.shape[-1]))


# %% [markdown]
# ## Scaled dot-product attention: the lesson, and the scoring functions of d2l 11.3


# %%
def scaled_dot_product_attention(q, k, v, mask=None, dropout_p=0.0, training=False, scale=None):
    """softmax(q k^T / sqrt(d), masked) v, written out. q (B, H, T, d), k (B, H, S, d), v (B, H, S, d_v).

    Any leading axes work. mask broadcasts to (B, H, T, S): bool True = may attend, or float added to the
    scores (F.scaled_dot_product_attention's convention). scale=None is 1/sqrt(d); scale=1 is the plain dot
    product. -> output (B, H, T, d_v), weights (B, H, T, S): the weights that multiply v, after dropout.
    A query with no allowed key gets weights 0 and output 0.
    """
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale  # a(q_i, k_j) = q_i^T k_j / sqrt(d)    (B, H, T, S)
    weights = softmax(scores, mask)  # alpha_ij, 0 where masked    (B, H, T, S)
    if training and dropout_p > 0:
        weights = F.dropout(weights, dropout_p)  # zero a weight with probability p, scale the rest by 1 / (1 - p)
    return weights @ v, weights  # o_i = sum_j alpha_ij v_j    (B, H, T, d_v)


class DotProductAttention(nn.Module):
    """d2l's DotProductAttention: softmax(Q K^T / sqrt(d)) V with valid_lens; scaled=False drops the 1/sqrt(d)."""

    def __init__(self, dropout=0.0, scaled=True):
        super().__init__()
        self.dropout, self.scaled = dropout, scaled

    def forward(self, queries, keys, values, valid_lens=None):
        """queries (B, T, d), keys (B, S, d), values (B, S, v), valid_lens (B,) or (B, T) -> (B, T, v), (B, T, S)."""
        mask = None if valid_lens is None else lengths_to_mask(valid_lens, keys.shape[1])
        return scaled_dot_product_attention(queries, keys, values, mask, self.dropout, self.training,
                                            scale=None if self.scaled else 1.0)


class AdditiveAttention(nn.Module):
    """a(q, k) = w_v^T tanh(W_q q + W_k k): a one-hidden-layer network scores each query-key pair (d2l 11.3.2)."""

    def __init__(self, query_size, key_size, num_hiddens, dropout=0.0):
        super().__init__()
        self.W_q = nn.Linear(query_size, num_hiddens, bias=False)
        self.W_k = nn.Linear(key_size, num_hiddens, bias=False)
        self.w_v = nn.Linear(num_hiddens, 1, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries, keys, values, valid_lens=None):
        """queries (B, T, q), keys (B, S, k), values (B, S, v) -> output (B, T, v), weights (B, T, S)."""
        features = torch.tanh(self.W_q(queries)[:, :, None, :] + self.W_k(keys)[:, None, :, :])  # (B, T, S, h)
        weights = self.dropout(masked_softmax(self.w_v(features)[..., 0], valid_lens))  # (B, T, S)
        return weights @ values, weights


# %% [markdown]
# ## Multi-head attention, a twin of nn.MultiheadAttention(batch_first=True)


# %%
def merge_masks(key_padding_mask, attn_mask, B, H, T, S):
    """nn.MultiheadAttention's masks (True = masked out, or float added) as one mask for the attention
    functions (True = may attend, or float added), broadcastable to (B, H, T, S); None if there is none.

    key_padding_mask (B, S): key j of sequence b is padding. attn_mask (T, S) or (B*H, T, S), row b*H + h:
    query i may not see key j (causal: j > i).
    """
    masks = []
    if key_padding_mask is not None:
        masks.append(key_padding_mask.view(B, 1, 1, S))
    if attn_mask is not None:
        masks.append(attn_mask.view(B, H, T, S) if attn_mask.dim() == 3 else attn_mask.view(1, 1, T, S))
    if not masks:
        return None
    if all(m.dtype == torch.bool for m in masks):
        blocked = masks[0] if len(masks) == 1 else masks[0] | masks[1]  # (B, H or 1, T or 1, S)
        return ~blocked  # True = may attend
    dtype = next(m.dtype for m in masks if m.dtype != torch.bool)
    return sum(torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, -math.inf)
               if m.dtype == torch.bool else m for m in masks)  # bool -> 0 or -inf, then the masks add


class MultiHeadAttention(nn.Module):
    """H heads of scaled dot-product attention over (B, T, E) batch-first inputs, each in its own d = E / H
    slice of the projections: W^Q = q_proj, W^K = k_proj, W^V = v_proj, W^O = out_proj (nn.Linear, E -> E)."""

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.head_dim = embed_dim // num_heads  # d
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def forward(self, query, key, value, key_padding_mask=None, attn_mask=None, need_weights=True,
                average_attn_weights=True, sdpa=False):
        """query (B, T, E), key and value (B, S, E); masks as nn.MultiheadAttention's (see `merge_masks`).

        -> output (B, T, E) and the attention weights after dropout: averaged over the heads (B, T, S), or
        per head (B, H, T, S) with average_attn_weights=False; None with need_weights=False or sdpa=True
        (F.scaled_dot_product_attention does not return them).
        """
        B, T, E = query.shape
        S, H, d = key.shape[1], self.num_heads, self.head_dim
        q = self.q_proj(query).view(B, T, H, d).transpose(1, 2)  # Q W^Q, head h = features h*d .. h*d+d-1: (B, H, T, d)
        k = self.k_proj(key).view(B, S, H, d).transpose(1, 2)  # (B, H, S, d)
        v = self.v_proj(value).view(B, S, H, d).transpose(1, 2)  # (B, H, S, d)
        mask = merge_masks(key_padding_mask, attn_mask, B, H, T, S)  # True = may attend, or float added
        p = self.dropout if self.training else 0.0
        if sdpa:
            out, weights = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p), None
        else:
            out, weights = scaled_dot_product_attention(q, k, v, mask, p, self.training)  # (B, H, T, d)
        out = self.out_proj(out.transpose(1, 2).reshape(B, T, E))  # [head_1; ...; head_H] W^O    (B, T, E)
        if not need_weights or weights is None:
            return out, None
        return out, weights.mean(dim=1) if average_attn_weights else weights

    @torch.no_grad()
    def copy_from(self, mha):
        """Load an nn.MultiheadAttention's weights: its in_proj_weight (3E, E) stacks W^Q, W^K, W^V (rows
        0..E-1, E..2E-1, 2E..3E-1) and in_proj_bias (3E,) their biases; out_proj is the same nn.Linear."""
        if mha.in_proj_weight is None or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("copy_from takes an nn.MultiheadAttention without kdim, vdim, add_bias_kv, add_zero_attn")
        if (mha.embed_dim, mha.num_heads, mha.in_proj_bias is None) != (
                self.embed_dim, self.num_heads, self.q_proj.bias is None):
            raise ValueError("copy_from: embed_dim, num_heads and bias must match")
        for proj, W in zip((self.q_proj, self.k_proj, self.v_proj), mha.in_proj_weight.chunk(3)):
            proj.weight.copy_(W)  # (E, E)
        if mha.in_proj_bias is not None:
            for proj, b in zip((self.q_proj, self.k_proj, self.v_proj), mha.in_proj_bias.chunk(3)):
                proj.bias.copy_(b)
            self.out_proj.bias.copy_(mha.out_proj.bias)
        self.out_proj.weight.copy_(mha.out_proj.weight)
        return self


# %% [markdown]
# ## The model: self-attention blocks that sort a sequence


# %%
class Block(nn.Module):
    """x + MHA(LN(x)), then x + MLP(LN(x)): a pre-norm Transformer encoder block (every position sees every other)."""

    def __init__(self, n_embd, n_head, dropout):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = MultiHeadAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x, sdpa=False):
        """x (B, T, E) -> (B, T, E), the per-head attention weights (B, H, T, T) (None with sdpa)."""
        h = self.ln_1(x)
        a, weights = self.attn(h, h, h, average_attn_weights=False, sdpa=sdpa)  # self-attention: q, k, v from x
        x = x + a
        return x + self.mlp(self.ln_2(x)), weights


class Sorter(nn.Module):
    """Symbol and position embeddings, n_layer blocks, then each position's logits over the symbols."""

    def __init__(self, symbols, seq_len, n_embd, n_head, n_layer, dropout=0.0):
        super().__init__()
        self.wte = nn.Embedding(symbols, n_embd)
        self.wpe = nn.Embedding(seq_len, n_embd)  # attention alone ignores order: positions come in here
        self.h = nn.ModuleList([Block(n_embd, n_head, dropout) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, symbols)

    def forward(self, x, sdpa=False):
        """x (B, T) symbols -> logits (B, T, symbols), a list of each layer's weights (B, H, T, T) (None with sdpa)."""
        h = self.wte(x) + self.wpe(torch.arange(x.shape[1], device=x.device))  # (B, T, E)
        weights = []
        for block in self.h:
            h, w = block(h, sdpa)
            weights.append(w)
        return self.head(self.ln_f(h)), weights


def sort_batch(rng, n, seq_len, symbols, device):
    """n sequences of seq_len symbols drawn uniformly (repeats allowed) and their sorted copies, (n, T) each."""
    x = rng.integers(0, symbols, (n, seq_len))
    return torch.from_numpy(x).to(device), torch.from_numpy(np.sort(x, axis=1)).to(device)


@torch.no_grad()
def evaluate(model, x, y, sdpa=False):
    """(token accuracy, share of sequences sorted without a mistake, logits) on held-out sequences, in eval mode."""
    model.eval()
    logits, _ = model(x, sdpa)
    model.train()
    right = logits.argmax(-1) == y  # (N, T)
    return right.float().mean().item(), right.all(dim=1).float().mean().item(), logits


@torch.no_grad()
def plot_attention(model, x, path):
    """Every head's weights for one held-out sequence x (1, T): a row per layer, inputs across, outputs down."""
    model.eval()
    logits, weights = model(x)
    model.train()
    inputs, outputs = x[0].tolist(), logits[0].argmax(-1).tolist()
    L, H = len(weights), weights[0].shape[1]
    fig = Figure(figsize=(2.6 * H, 2.6 * L + 0.4), layout="constrained")
    axes = np.array(fig.subplots(L, H, squeeze=False))
    for l, row in enumerate(axes):
        for h, ax in enumerate(row):
            ax.imshow(weights[l][0, h].cpu().numpy(), cmap="Greys", vmin=0, vmax=1)
            ax.set_xticks(range(len(inputs)), inputs, fontsize=7, rotation=90)
            ax.set_yticks(range(len(outputs)), outputs, fontsize=7)
            ax.set_title(f"layer {l + 1}, head {h + 1}", fontsize=9)
    fig.suptitle("attention weights: input symbols (keys) across, sorted output (queries) down", fontsize=10)
    fig.savefig(path, dpi=120)


# %% [markdown]
# ## Device


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


# %% [markdown]
# ## Main: one flat training loop on fresh random sequences, then held-out accuracy and the two paths compared


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--seq-len", type=positive_int, default=None, help="sequence length (default 16; 5 with --smoke)")
    p.add_argument("--symbols", type=positive_int, default=None, help="alphabet size (default 20; 6 with --smoke)")
    p.add_argument("--n-embd", type=positive_int, default=None, help="model width E (default 64; 32 with --smoke)")
    p.add_argument("--n-head", type=positive_int, default=4, help="attention heads per layer (default 4)")
    p.add_argument("--n-layer", type=positive_int, default=2, help="self-attention blocks (default 2)")
    p.add_argument("--dropout", type=probability, default=0.0, help="dropout on the attention weights (default 0)")
    p.add_argument("--sdpa", action="store_true", help="train with F.scaled_dot_product_attention, not the hand path")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 10; 2 with --smoke)")
    p.add_argument("--steps-per-epoch", type=positive_int, default=None,
                   help="minibatches of fresh sequences per epoch (default 300; 60 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="sequences per minibatch (default 128)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="peak Adam learning rate, cosine decay to 0 (default 1e-3; 3e-3 with --smoke)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds the weights, the sequences, dropout (default 0)")
    p.add_argument("--out-dir", default=None, help="for metrics.json and attention.png (default runs/<script>)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run: short sequences, a small model")
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    defaults = {"seq_len": (5, 16), "symbols": (6, 20), "n_embd": (32, 64), "epochs": (2, 10),
                "steps_per_epoch": (60, 300), "lr": (3e-3, 1e-3)}
    for name, (smoke, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    if args.n_embd % args.n_head:
        p.error(f"--n-embd {args.n_embd} must be a multiple of --n-head {args.n_head}")
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)  # the training sequences
    test_x, test_y = sort_batch(np.random.default_rng([args.seed, 1]), 2000, args.seq_len, args.symbols, device)
    model = Sorter(args.symbols, args.seq_len, args.n_embd, args.n_head, args.n_layer, args.dropout).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = args.epochs * args.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    params = sum(q.numel() for q in model.parameters())
    path = "F.scaled_dot_product_attention" if args.sdpa else "hand-written"
    print(f"sort {args.seq_len} symbols of {args.symbols}: {args.n_layer} blocks, {args.n_head} heads, width "
          f"{args.n_embd}, {params:,} parameters, {path} attention")
    hist = {"train_loss": [], "test_acc": [], "test_seq_acc": [], "epoch_s": []}
    first_loss = None
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        losses = []
        for _ in tqdm(range(args.steps_per_epoch), desc=f"epoch {epoch}", leave=False, disable=not sys.stdout.isatty()):
            x, y = sort_batch(rng, args.batch_size, args.seq_len, args.symbols, device)  # (B, T) each
            logits, _ = model(x, sdpa=args.sdpa)  # (B, T, symbols)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.detach())
        first_loss = losses[0].item() if first_loss is None else first_loss
        acc, seq_acc, _ = evaluate(model, test_x, test_y, args.sdpa)
        hist["train_loss"].append(torch.stack(losses).mean().item())
        hist["test_acc"].append(acc)
        hist["test_seq_acc"].append(seq_acc)
        hist["epoch_s"].append(time.perf_counter() - t0)
        print(f"epoch {epoch:2d}/{args.epochs}  train loss {hist['train_loss'][-1]:.4f} | held-out accuracy "
              f"{acc:.4f} per symbol, {seq_acc:.4f} per sequence | {hist['epoch_s'][-1]:.1f} s", flush=True)

    # The trained model once more through each path: the same logits up to rounding, the same answers.
    _, _, hand = evaluate(model, test_x, test_y, sdpa=False)
    _, _, fused = evaluate(model, test_x, test_y, sdpa=True)
    diff = (hand - fused).abs().max().item()
    same = (hand.argmax(-1) == fused.argmax(-1)).float().mean().item()
    print(f"hand-written vs F.scaled_dot_product_attention on the trained model: max |logit difference| {diff:.2e}, "
          f"same prediction for {100 * same:.2f}% of the held-out symbols")
    plot_attention(model, test_x[:1], out_dir / "attention.png")
    metrics = {"script": Path(__file__).stem, "test_acc": hist["test_acc"][-1],
               "test_seq_acc": hist["test_seq_acc"][-1], "train_loss": hist["train_loss"][-1],
               "first_loss": first_loss, "chance_acc": 1 / args.symbols,
               "hand_vs_sdpa_max_abs_diff": diff, "hand_vs_sdpa_same_predictions": same, "params": params,
               "n_test": len(test_x), "train_minutes": sum(hist["epoch_s"]) / 60, "device": str(device),
               "config": vars(args), "history": hist}
    save_metrics(out_dir, metrics, __file__, argv)
    return metrics


if __name__ == "__main__":
    main()
