"""Reformer (Kitaev, Kaiser, Levskaya 2020): LSH attention, reversible residual layers, chunked feed-forward.

LSH attention, with one shared projection for queries and keys (the keys are the normalised queries):
    k_j = q_j / |q_j|,  score(i, j) = q_i . k_j / sqrt(d)
    h(x) = argmax([xR; -xR]),  R a random (d, n_buckets/2) matrix drawn at every call (one per head and round)
    sort the positions by (bucket, position); cut the sorted sequence into chunks of chunk_len; query i attends
    to the keys of its own bucket in its chunk and in the chunk before it, never to a later position (causal),
    and to itself only when nothing else is allowed (its own score is -1e5 instead of -inf)
    o_i^r = sum_j softmax_j(score) v_j in round r,  z_i^r = logsumexp_j score(i, j)  (the round's log-sum-exp)
    y_i = sum_r exp(z_i^r - logsumexp_r z_i^r) o_i^r     (n_hashes rounds, weighted by their normalisers)
Memory and time are linear in T: each query scores 2 chunk_len keys per round instead of T.
Reversible residual layers (Gomez et al. 2017), F = attention, G = feed-forward, each with its own LayerNorm:
    y1 = x1 + F(x2),  y2 = x2 + G(y1)      and back:  x2 = y2 - G(y1),  x1 = y1 - F(x2)
so the backward recomputes each layer's input from its output: activations are stored once, not once per layer.
Chunked feed-forward: G(x) = concat_c FFN(x_c) over chunks of positions (the hidden 4d layer of one chunk at a time).

Two tasks, each trained twice on the same batches from the same initialisation: the Reformer (LSH attention) and
its full-attention twin (the same model, shared-QK attention over all earlier positions, the same self rule):
    duplication   the paper's synthetic task: 0 w 0 w, w random symbols; loss and accuracy on the second w
    shakespeare   a character language model on Tiny Shakespeare (90% train, 10% validation)
The default length is 128 (batches of 16, 600 steps, lr 3e-3): there both models learn the copy, abruptly, after
300-400 steps. Longer copies need far more steps than two CPU cores give: at 256 (600 steps of 8) and at 512 (300
steps of 4) neither model left chance (1/16). The long-sequence costs are measured by benchmarks/long_attention.py
(T up to 16,384) and by the memory figure below.
and a memory measurement: bytes of the tensors autograd saves for backward (saved_tensors_hooks) while training
a reversible and an ordinary model of N = 2, 4, 8, 12 layers. Caveat, kept as in the paper: with several buckets
the sorted order, hence which earlier keys share a query's chunk, depends on the hashes of later tokens.

Reading: N. Kitaev, L. Kaiser, A. Levskaya (2020), "Reformer: The Efficient Transformer",
https://arxiv.org/abs/2001.04451; A. Gomez et al. (2017), "The Reversible Residual Network: Backpropagation
Without Storing Activations", https://arxiv.org/abs/1707.04585
Arc: Translation, attention and transformers -- Reformer.

Run:  python 06-transformers/reformer_torch.py                 (both tasks, both models, the memory figure)
      python 06-transformers/reformer_torch.py --task duplication --n-hashes 4 --seq-len 1024
Look first at `lsh_attention`, `ReversibleStack` (forward, then the hand-written backward) and
`saved_activation_bytes`, then the loop in `train`.
"""

# %%
import argparse
import functools
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
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
# ## LSH attention


# %%
SELF_SCORE = -1e5  # a query's score for its own key: below any real score, above the -inf of a forbidden key


def hash_buckets(x, n_buckets, n_hashes=1, generator=None):
    """h(x) = argmax([xR; -xR]) for each of n_hashes random R (d, n_buckets/2): x (B, nh, T, d) -> (B, nh, n_hashes,
    T) ids in [0, n_buckets). Angular LSH: nearby directions tend to share the axis of largest projection.
    n_buckets 1 puts everything in bucket 0 (no hashing)."""
    B, nh, T, d = x.shape
    if n_buckets == 1:
        return torch.zeros(B, nh, n_hashes, T, dtype=torch.long, device=x.device)
    device = generator.device if generator is not None else x.device
    R = torch.randn(nh, n_hashes, d, n_buckets // 2, generator=generator, device=device).to(x)  # one per head, round
    xR = torch.einsum("bhtd,hrdk->bhrtk", x.detach(), R)  # (B, nh, n_hashes, T, n_buckets/2)
    return torch.cat([xR, -xR], dim=-1).argmax(dim=-1)  # (B, nh, n_hashes, T)


def lsh_attend(qk, v, buckets, chunk_len, causal=False):
    """Attention within buckets of the sorted, chunked sequence, one result per round: qk, v (B, nh, T, d), buckets
    (B, nh, n_hashes, T) -> o (B, nh, n_hashes, T, d) and the log-sum-exp z (B, nh, n_hashes, T) of each query."""
    B, nh, T, d = qk.shape
    R, L = buckets.size(2), chunk_len
    n = T // L  # chunks per round
    pos = torch.arange(T, device=qk.device)
    order = (buckets * T + pos).argsort(dim=-1)  # (B, nh, R, T): positions sorted by bucket, then position
    undo = order.argsort(dim=-1)  # where each position went

    def take(x):  # (B, nh, T, d) -> (B, nh, R, T, d) in each round's sorted order
        return x[:, :, None].expand(B, nh, R, T, d).gather(3, order[..., None].expand(B, nh, R, T, d))

    def chunks(x):  # (B, nh, R, T, ...) -> (B, nh, R, n, L, ...)
        return x.reshape(B, nh, R, n, L, *x.shape[4:])

    def with_previous(x):  # keys of the chunk before, then of the chunk: (B, nh, R, n, L, ...) -> (.., n, 2L, ..)
        return torch.cat([x.roll(1, dims=3), x], dim=4)

    q = chunks(take(qk))  # (B, nh, R, n, L, d)
    k = with_previous(chunks(take(F.normalize(qk, dim=-1))))  # (B, nh, R, n, 2L, d): k_j = q_j / |q_j|
    vw = with_previous(chunks(take(v)))  # (B, nh, R, n, 2L, d)
    qpos, kpos = chunks(order), with_previous(chunks(order))  # original positions (B, nh, R, n, L) and (.., 2L)
    sb = buckets.gather(3, order)  # sorted buckets
    qb, kb = chunks(sb), with_previous(chunks(sb))
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (B, nh, R, n, L, 2L): q_i . k_j / sqrt(d)
    allowed = qb[..., :, None] == kb[..., None, :]  # the same bucket
    no_previous = torch.zeros(n, 1, 2 * L, dtype=torch.bool, device=qk.device)
    no_previous[0, :, :L] = True  # the first chunk has no chunk before it (roll brought the last one)
    allowed = allowed & ~no_previous
    if causal:
        allowed = allowed & (kpos[..., None, :] <= qpos[..., :, None])  # no key after the query
    is_self = kpos[..., None, :] == qpos[..., :, None]
    scores = scores.masked_fill(~allowed | is_self, float("-inf"))
    scores = scores.masked_fill(allowed & is_self, SELF_SCORE)  # oneself: only when nothing else is allowed
    z = torch.logsumexp(scores, dim=-1, keepdim=True)  # (B, nh, R, n, L, 1): finite, oneself is always allowed
    o = torch.exp(scores - z) @ vw  # (B, nh, R, n, L, d): softmax_j(score) v_j
    o = o.reshape(B, nh, R, T, d).gather(3, undo[..., None].expand(B, nh, R, T, d))  # back to the original order
    z = z.reshape(B, nh, R, T).gather(3, undo)
    return o, z


def lsh_attention(qk, v, n_buckets, n_hashes=1, chunk_len=64, causal=False, generator=None):
    """Shared-QK LSH attention: qk, v (B, nh, T, d) -> y (B, nh, T, d); T a multiple of chunk_len. The rounds'
    outputs are combined with weights softmax_r(z^r): the softmax over every key found in any round (a key found in
    two rounds counts twice: the paper's correction for duplicates is left out)."""
    T = qk.size(2)
    if T % chunk_len:
        raise ValueError(f"sequence length {T} is not a multiple of chunk_len {chunk_len}")
    if n_buckets < 1 or (n_buckets > 1 and n_buckets % 2):
        raise ValueError(f"n_buckets {n_buckets}: must be even (argmax over [xR; -xR]), or 1")
    buckets = hash_buckets(qk, n_buckets, n_hashes, generator)  # (B, nh, n_hashes, T)
    o, z = lsh_attend(qk, v, buckets, chunk_len, causal)
    w = torch.softmax(z, dim=2)  # (B, nh, n_hashes, T): exp(z^r - logsumexp_r z^r)
    return (w[..., None] * o).sum(dim=2)  # (B, nh, T, d)


def full_attention(qk, v, causal=False):
    """The twin: shared-QK attention over every (earlier) position, with LSH attention's self rule."""
    T, d = qk.size(2), qk.size(3)
    scores = qk @ F.normalize(qk, dim=-1).transpose(-2, -1) / math.sqrt(d)  # (B, nh, T, T)
    if causal:
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool, device=qk.device).triu(1), float("-inf"))
    scores = scores.masked_fill(torch.eye(T, dtype=torch.bool, device=qk.device), SELF_SCORE)
    return scores.softmax(dim=-1) @ v


# %% [markdown]
# ## The model: attention F and feed-forward G in reversible blocks


# %%
@dataclass
class ReformerConfig:
    vocab_size: int = 65
    block_size: int = 512  # positions with a learned embedding: the longest sequence
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    chunk_len: int = 64  # LSH chunks, and the chunks of the feed-forward
    n_buckets: int = 16  # the paper's rule: 2 * block_size / chunk_len (average bucket: half a chunk)
    n_hashes: int = 2
    attention: str = "lsh"  # "lsh" or "full" (the twin)
    reversible: bool = True  # False: the same blocks with ordinary autograd (every activation stored)
    dropout: float = 0.0


PRESETS = {  # the paper's duplication model: 1 layer, d 256, 4 heads, length 1024, N = 127 (chunk 64: our choice)
    "duplication-paper": ReformerConfig(128, 1024, 1, 4, 256, 64, 32, 4),
}


class Attention(nn.Module):
    """F(x): LayerNorm, the shared query-key projection and the value projection, attention, the output dense."""

    def __init__(self, config):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.n_embd)
        self.query_key = nn.Linear(config.n_embd, config.n_embd, bias=False)  # one projection for q and k
        self.value = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.dense = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)
        self.config = config

    def forward(self, x):
        c = self.config
        B, T, C = x.shape
        x = self.layer_norm(x)
        qk = self.query_key(x).view(B, T, c.n_head, C // c.n_head).transpose(1, 2)  # (B, nh, T, hd)
        v = self.value(x).view(B, T, c.n_head, C // c.n_head).transpose(1, 2)
        if c.attention == "lsh":  # the hashes come from torch's global generator (the reversible backward replays it)
            y = lsh_attention(qk, v, c.n_buckets, c.n_hashes, c.chunk_len, causal=True)
        else:
            y = full_attention(qk, v, causal=True)
        return self.dropout(self.dense(y.transpose(1, 2).reshape(B, T, C)))


class FeedForward(nn.Module):
    """G(x) = concat_c FFN(LayerNorm(x_c)) over chunks of chunk_len positions, FFN(x) = W2 gelu(W1 x + b1) + b2."""

    def __init__(self, config):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.n_embd)
        self.dense = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.output = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
        self.chunk_len = config.chunk_len

    def forward(self, x):  # (B, T, C) -> (B, T, C); positions are independent, so chunks change nothing but memory
        return torch.cat([self.ffn(c) for c in x.split(self.chunk_len, dim=1)], dim=1)

    def ffn(self, x):
        return self.dropout(self.output(F.gelu(self.dense(self.layer_norm(x)))))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = Attention(config)  # F
        self.feed_forward = FeedForward(config)  # G

    def forward(self, x1, x2):  # the ordinary (stored) computation: y1 = x1 + F(x2), y2 = x2 + G(y1)
        y1 = x1 + self.attention(x2)
        return y1, x2 + self.feed_forward(y1)


def rng_state(device):
    """torch's generator state (and CUDA's): replayed to draw the same hashes and dropout masks again."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def replay(f, x, state, device):
    """f(x) with autograd on, drawing the random numbers that were drawn after `state`, leaving the generator alone."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.enable_grad():
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        return f(x)


class ReversibleStack(torch.autograd.Function):
    """The blocks run without storing anything but the last outputs; the backward rebuilds each block's inputs."""

    @staticmethod
    def forward(ctx, x1, x2, blocks, *params):
        ctx.blocks, ctx.states = blocks, []
        with torch.no_grad():
            for block in blocks:
                state_f = rng_state(x1.device)
                f = block.attention(x2)
                state_g = rng_state(x1.device)  # G draws after F
                x1 = x1 + f  # y1 = x1 + F(x2)
                x2 = x2 + block.feed_forward(x1)  # y2 = x2 + G(y1)
                ctx.states.append((state_f, state_g))
        ctx.save_for_backward(x1, x2)  # the outputs: all that is kept, whatever the depth
        return x1, x2

    @staticmethod
    def backward(ctx, dy1, dy2):
        y1, y2 = ctx.saved_tensors
        grads = []  # per block, last block first: the gradients of F's parameters, then G's
        for block, (state_f, state_g) in zip(reversed(ctx.blocks), reversed(ctx.states)):
            G, Fn = block.feed_forward, block.attention
            y1 = y1.detach().requires_grad_(True)
            g = replay(G, y1, state_g, y1.device)  # G(y1) again, this time with its graph
            dg = torch.autograd.grad(g, [y1, *G.parameters()], dy2, allow_unused=True)
            x2 = (y2 - g).detach().requires_grad_(True)  # x2 = y2 - G(y1)
            dy1 = dy1 + dg[0]  # y1 reaches the loss directly and through G
            f = replay(Fn, x2, state_f, y1.device)  # F(x2)
            df = torch.autograd.grad(f, [x2, *Fn.parameters()], dy1, allow_unused=True)
            y1, y2 = (y1 - f).detach(), x2.detach()  # x1 = y1 - F(x2): this block's inputs, the next one's outputs
            dy2 = dy2 + df[0]  # dL/dx2 = dL/dy2 + dF/dx2^T dL/dy1;  dL/dx1 = dL/dy1
            grads.append((df[1:], dg[1:]))
        flat = [g for df, dg in reversed(grads) for g in (*df, *dg)]  # the order of `params` in forward
        return (dy1, dy2, None, *flat)


class Reformer(nn.Module):
    """Token and learned position embeddings, copied into the two streams x1 = x2; N reversible blocks; the mean of
    the two streams, a final LayerNorm and the output tied to the token embeddings."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        for name, p in self.named_parameters():  # GPT-2's initialisation
            if name.endswith(("attention.dense.weight", "feed_forward.output.weight")):  # into the residual streams
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * config.n_layer))
            elif p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None):
        """idx (B, T) -> logits (B, T, vocab) and the mean cross-entropy over targets (B, T) that are not -1."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"{T} positions, more than block_size {self.config.block_size}")
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(T, device=idx.device)))  # (B, T, C)
        if self.config.reversible:
            params = [p for block in self.blocks for m in (block.attention, block.feed_forward) for p in m.parameters()]
            x1, x2 = ReversibleStack.apply(x, x, self.blocks, *params)
        else:
            x1, x2 = x, x
            for block in self.blocks:
                x1, x2 = block(x1, x2)
        logits = self.ln_f((x1 + x2) / 2) @ self.wte.weight.T  # (B, T, vocab)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        return logits, loss


# %% [markdown]
# ## Memory: the bytes autograd keeps for the backward


# %%
def saved_activation_bytes(model, idx, targets):
    """One training step's forward under saved_tensors_hooks: the bytes of every tensor saved for the backward,
    each storage once, parameters left out (they are there anyway); then the backward, which frees them."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            saved[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(idx, targets)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(saved.values())


def measure_memory(config, layers, batch_size, device, seed):
    """Saved bytes of reversible and ordinary models of each depth in `layers`, on one batch of random tokens."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(config.vocab_size, (batch_size, config.block_size), generator=gen).to(device)
    out = {"n_layer": list(layers), "reversible": [], "ordinary": []}
    for n in layers:
        for kind in ("reversible", "ordinary"):
            torch.manual_seed(seed)
            model = Reformer(replace(config, n_layer=n, reversible=kind == "reversible")).to(device)
            out[kind].append(saved_activation_bytes(model, idx, idx))
    return out


# %% [markdown]
# ## Data: the duplication task and Tiny Shakespeare


# %%
def duplication_batch(batch_size, T, symbols, generator):
    """0 w 0 w, w of T/2 - 1 symbols drawn from 1..symbols: x (B, T) and targets y[t] = x[t+1] on the second w only
    (the first w is random, unpredictable: its targets are -1)."""
    w = torch.randint(1, symbols + 1, (batch_size, T // 2 - 1), generator=generator)
    zero = torch.zeros(batch_size, 1, dtype=torch.long)
    x = torch.cat([zero, w, zero, w], dim=1)  # (B, T)
    y = torch.full_like(x, -1)
    y[:, T // 2 : T - 1] = x[:, T // 2 + 1 :]  # from the second 0, predict the copy
    return x, y


def text_batch(data, batch_size, T, generator):
    """batch_size windows at random offsets: x = data[i : i+T], y = data[i+1 : i+T+1] (as in gpt2_torch.py)."""
    ix = torch.randint(len(data) - T, (batch_size,), generator=generator)
    xy = data[ix[:, None] + torch.arange(T + 1)]  # (B, T+1)
    return xy[:, :-1], xy[:, 1:]


def get_batch(task, B, T, generator, symbols, splits, split):
    """A batch of the task: fresh 0 w 0 w sequences (held out by their generator's seed), or windows of a split."""
    if task == "duplication":
        return duplication_batch(B, T, symbols, generator)
    return text_batch(splits[split], B, T, generator)


# %% [markdown]
# ## Training, the same for the Reformer and its twin


# %%
def get_lr(it, lr, warmup_iters, max_iters):
    """Linear warm-up to lr, then a cosine to lr / 10 (as in gpt2_torch.py)."""
    if it < warmup_iters:
        return lr * (it + 1) / warmup_iters
    progress = (it - warmup_iters) / max(1, max_iters - warmup_iters)
    return lr / 10 + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - lr / 10)


@torch.no_grad()
def evaluate(model, batches, device):
    """Mean loss and accuracy (argmax = target) over the targets that are not -1 of the fixed `batches`."""
    model.eval()
    loss_sum, hits, count = 0.0, 0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits, _ = model(x)
        keep = y != -1
        loss_sum += F.cross_entropy(logits[keep], y[keep], reduction="sum").item()
        hits += (logits[keep].argmax(-1) == y[keep]).sum().item()
        count += keep.sum().item()
    model.train()
    return loss_sum / count, hits / count


def train(config, next_batch, eval_batches, args, device, desc):
    """AdamW with warm-up and cosine for args.max_iters steps on next_batch(); evaluation every eval_interval."""
    torch.manual_seed(args.seed)  # the same initialisation and the same hashes for every model of a task
    model = Reformer(config).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))  # fmt: skip
    history = {"iter": [], "train_loss": [], "val_loss": [], "val_acc": []}
    train_time, losses = 0.0, []
    bar = tqdm(range(args.max_iters + 1), desc=desc, disable=not sys.stdout.isatty())
    for it in bar:
        if it % args.eval_interval == 0 or it == args.max_iters:
            val_loss, val_acc = evaluate(model, eval_batches, device)
            train_loss = sum(losses) / len(losses) if losses else None  # the mean since the last evaluation
            for key, value in zip(history, (it, train_loss, val_loss, val_acc)):
                history[key].append(value)
            losses, shown = [], "-" if train_loss is None else f"{train_loss:.4f}"
            tqdm.write(f"{desc} step {it:5d}: train loss {shown}, val loss {val_loss:.4f}, acc {val_acc:.3f}")
        if it == args.max_iters:
            break
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it, args.lr, args.warmup_iters, args.max_iters)
        t0 = time.perf_counter()
        x, y = next_batch()
        _, loss = model(x.to(device), y.to(device))
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        train_time += time.perf_counter() - t0
        losses.append(loss.item())
    return {"val_loss": history["val_loss"][-1], "val_acc": history["val_acc"][-1], "history": history,
            "ms_per_iter": 1000 * train_time / max(1, args.max_iters), "params": model.num_params()}  # fmt: skip


def plot_task(results, path, title, key, ylabel):
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name, r in results.items():
        ax.plot(r["history"]["iter"], r["history"][key], "o-", label=name)
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_memory(mem, path):
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for kind, marker in (("ordinary", "s-"), ("reversible", "o-")):
        ax.plot(mem["n_layer"], [b / 2**20 for b in mem[kind]], marker, label=kind)
    ax.set(xlabel="layers N", ylabel="MiB saved for backward", title="activation memory of one training step")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def pick_device(name):
    """As in gpt2_torch.py: 'auto' picks cuda, then mps, then cpu; a device this machine lacks is an error."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(d for d, ok in available.items() if ok)
    if not available[name]:
        raise ValueError(f"--device {name}: not available on this machine")
    return torch.device(name)


# %% [markdown]
# ## Main
# %%
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=["duplication", "shakespeare", "both"], default="both")
    p.add_argument("--max-iters", type=positive_int, default=None, help="steps of each training (default 600)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="sequences per step (default 16; 4 --smoke)")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="peak learning rate (default 3e-3)")
    p.add_argument("--warmup-iters", type=nonneg_int, default=None, help="warm-up steps (default 50)")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.01, help="AdamW's decoupled decay, matrices only")
    p.add_argument("--grad-clip", type=nonneg_float, default=1.0, help="max global gradient norm (0: off)")
    p.add_argument("--n-layer", type=positive_int, default=None, help="reversible blocks (default 2)")
    p.add_argument("--n-head", type=positive_int, default=None, help="attention heads (default 2)")
    p.add_argument("--n-embd", type=positive_int, default=None, help="model width (default 64)")
    p.add_argument("--seq-len", type=positive_int, default=None, help="training sequence length (default 128; the "
                   "docstring says what longer copies need)")
    p.add_argument("--symbols", type=positive_int, default=16, help="duplication: alphabet size of w")
    p.add_argument("--dropout", type=probability, default=0.0)
    p.add_argument("--chunk-len", type=positive_int, default=None, help="LSH and feed-forward chunk (default 32)")
    p.add_argument("--n-buckets", type=positive_int, default=None,
                   help="LSH buckets, even (default 2 * seq-len / chunk-len, the paper's rule)")
    p.add_argument("--n-hashes", type=positive_int, default=2, help="LSH rounds")
    p.add_argument("--eval-interval", type=positive_int, default=None, help="steps between evaluations (default 50)")
    p.add_argument("--eval-iters", type=positive_int, default=None, help="batches per evaluation (default 8)")
    p.add_argument("--memory-layers", type=positive_int, nargs="+", default=[2, 4, 8, 12],
                   help="depths N whose saved bytes are measured")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--data-dir", default=None, help="folder holding Tiny Shakespeare (else $ARC_DATA_DIR, data/cache)")
    p.add_argument("--out-dir", default="runs/reformer_torch", help="metrics and figures go here")
    p.add_argument("--seed", type=nonneg_int, default=1337)
    p.add_argument("--smoke", action="store_true", help="a tiny model, short sequences, a few steps")
    args = p.parse_args(argv)
    small = args.smoke
    defaults = {"max_iters": 30 if small else 600, "batch_size": 4 if small else 16, "n_layer": 2,
                "warmup_iters": 5 if small else 50, "n_head": 2, "n_embd": 32 if small else 64,
                "seq_len": 64 if small else 128, "chunk_len": 16 if small else 32,
                "eval_interval": 15 if small else 50, "eval_iters": 2 if small else 8}  # fmt: skip
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.n_buckets is None:
        args.n_buckets = max(2, 2 * args.seq_len // args.chunk_len)
    if args.seq_len % args.chunk_len:
        p.error(f"--seq-len {args.seq_len}: must be a multiple of --chunk-len {args.chunk_len}")
    if args.n_buckets > 1 and args.n_buckets % 2:
        p.error(f"--n-buckets {args.n_buckets}: must be even (h(x) = argmax([xR; -xR])) or 1")
    if args.n_embd % args.n_head:
        p.error(f"--n-embd {args.n_embd}: must be a multiple of --n-head {args.n_head}")
    if args.seq_len < 4 or args.seq_len % 2:
        p.error(f"--seq-len {args.seq_len}: the duplication task needs an even length of at least 4")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = ["duplication", "shakespeare"] if args.task == "both" else [args.task]
    text = None
    if "shakespeare" in tasks:
        try:
            text = tinyshakespeare(args.data_dir)
        except DataError as exc:
            sys.exit(f"error: {exc}")
        if small:
            text = text[:100_000]
    T, B = args.seq_len, args.batch_size
    config = ReformerConfig(args.symbols + 1, T, args.n_layer, args.n_head, args.n_embd, args.chunk_len,
                            args.n_buckets, args.n_hashes, "lsh", True, args.dropout)  # fmt: skip
    metrics = {"config": asdict(config), "tasks": tasks, "iters": args.max_iters, "device": str(device)}
    t_start = time.perf_counter()

    for task in tasks:
        splits, cfg = None, config
        if task == "shakespeare":  # characters: ids in sorted order; the first 90% trains, the last 10% validates
            chars = sorted(set(text))
            stoi = {c: i for i, c in enumerate(chars)}
            data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
            splits = {"train": data[: int(0.9 * len(data))], "val": data[int(0.9 * len(data)) :]}
            cfg = replace(config, vocab_size=len(chars))
        eval_gen = torch.Generator().manual_seed(args.seed + 10_000)
        eval_batches = [get_batch(task, B, T, eval_gen, args.symbols, splits, "val") for _ in range(args.eval_iters)]
        results = {}
        for name, attention in (("reformer", "lsh"), ("full", "full")):
            gen = torch.Generator().manual_seed(args.seed)  # the same training batches
            next_batch = functools.partial(get_batch, task, B, T, gen, args.symbols, splits, "train")
            results[name] = train(replace(cfg, attention=attention), next_batch, eval_batches, args, device,
                                  f"{task} {name}")  # fmt: skip
        for name, r in results.items():
            metrics.update({f"{task}_{name}_{k}": v for k, v in r.items() if k != "history"})
            metrics[f"{task}_{name}_history"] = r["history"]
        if task == "duplication":
            plot_task(results, out / "duplication.png", "duplication: 0 w 0 w", "val_acc", "accuracy on the copy")
        else:
            plot_task(results, out / "shakespeare.png", "Tiny Shakespeare, characters", "val_loss",
                      "validation cross-entropy (nats)")  # fmt: skip
        print(f"{task}: Reformer loss {results['reformer']['val_loss']:.4f} acc {results['reformer']['val_acc']:.3f}"
              f"; full attention loss {results['full']['val_loss']:.4f} acc {results['full']['val_acc']:.3f}")

    mem = measure_memory(replace(config, vocab_size=65), args.memory_layers, B, device, args.seed)
    metrics["memory"] = mem
    plot_memory(mem, out / "memory.png")
    for n, r, o in zip(mem["n_layer"], mem["reversible"], mem["ordinary"]):
        print(f"N = {n:2d}: saved for backward {r / 2**20:7.2f} MiB reversible, {o / 2**20:7.2f} MiB ordinary")
    metrics["minutes"] = (time.perf_counter() - t_start) / 60
    tasks_keys = (("shakespeare", "val_loss"), ("duplication", "val_acc"))
    keys = [f"{t}_{m}_{k}" for t, k in tasks_keys for m in ("reformer", "full")]
    headline = {k: metrics[k] for k in keys if k in metrics}  # RESULTS.md's row: these first, then the memory
    headline.update(reversible_mib=mem["reversible"][-1] / 2**20, ordinary_mib=mem["ordinary"][-1] / 2**20)
    metrics = {**headline, **metrics}
    save_metrics(out, metrics, __file__, argv)
    return metrics


if __name__ == "__main__":
    main()
