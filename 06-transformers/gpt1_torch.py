"""GPT-1 (Radford et al. 2018): a Transformer decoder pre-trained as a language model, then fine-tuned on a task.

Stage 1, generative pre-training, maximises L1 on unlabelled text; stage 2, discriminative fine-tuning,
puts a linear classifier on the last hidden state of an extract token and keeps L1 as an auxiliary loss:

    input       h_0 = U W_e + W_p                   token embeddings + learned positions (512 in GPT-1)
    block       a = LN(h + attn(h)),  h' = LN(a + mlp(a))     post-LN as published: no final LayerNorm
    attention   softmax(Q K^T / sqrt(d_head) + M) V,  M = -inf above the diagonal (causal); 12 heads
    mlp         GELU(a W_fc + b_fc) W_proj + b_proj,  GELU(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    output      P(u) = softmax(h_n W_e^T)             the output matrix is the token embedding (tied)
    L1(U)       = sum_i log P(u_i | u_<i)             language modelling: stage 1, and auxiliary in stage 2
    L2(C)       = sum_(x,y) log P(y | x),  P(y | x) = softmax(h_n[<e>] W_y)       x framed as <s> text <e>
    L3(C)       = L2(C) + lambda L1(C)                lambda = 0.5 (--lm-coef); all weights start N(0, 0.02)

Here (minimising the negative log-likelihoods, as means): stage 1 is character-level Tiny Shakespeare, its
first 90% for training and its last 10% for validation. Stage 2 asks which of the --n-speakers speakers with
most speeches says a speech (GLOUCESTER or DUKE VINCENTIO by default). Every second speech of each is a test
speech, cut out of stage 1's text so that the language model never reads one; the others are the labelled
training set. The fine-tuned model is compared with the same model trained on the task alone (same steps)
and with the majority class.
<s> and <e> are two new tokens with random embeddings.

Reading: A. Radford, K. Narasimhan, T. Salimans, I. Sutskever (2018), "Improving Language Understanding by
Generative Pre-Training", OpenAI, https://cdn.openai.com/research-covers/language-unsupervised/language_understanding_paper.pdf;
D. Hendrycks, K. Gimpel (2016), "Gaussian Error Linear Units", https://arxiv.org/abs/1606.08415
Arc: Translation, attention and transformers -- GPT-1.

Run:  python 06-transformers/gpt1_torch.py                     (about 7 minutes on two CPU cores)
      python 06-transformers/gpt1_torch.py --sample --prompt "ROMEO:"      (from the run's checkpoint)
      hf download openai-community/openai-gpt config.json model.safetensors vocab.json merges.txt --local-dir gpt1
      python 06-transformers/gpt1_torch.py --init-from gpt1 --block-size 128     (fine-tune the released GPT-1)
The `hf` command comes with `pip install huggingface_hub`; any folder written by Hugging Face's
`OpenAIGPTLMHeadModel.save_pretrained` (plus the tokenizer's vocab.json and merges.txt) works as well.
Look first at `Block.forward` (post-LN), `CausalSelfAttention.forward`, `finetune` (L3), then at
runs/gpt1_torch/gpt1.png and the three accuracies in metrics.json.
"""

# %%
import argparse
import json
import math
import shlex
import string
import sys
import time
import unicodedata
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
    DataError,
    minibatches,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    probability,
    save_metrics,
    tinyshakespeare,
)

# %% [markdown]
# ## The model: a config, causal self-attention by hand, post-LN blocks


# %%
@dataclass
class GPTConfig:
    block_size: int = 128  # longest context; GPT-1: 512
    vocab_size: int = 65  # Tiny Shakespeare's characters; GPT-1: 40,478 BPE tokens
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128  # d_model; the MLP is 4 d_model wide
    dropout: float = 0.1  # on the embeddings, the attention weights and each residual branch (the paper's 0.1)
    bias: bool = True  # biases in the Linear and LayerNorm layers (GPT-1 has them)
    sdpa: bool = False  # F.scaled_dot_product_attention instead of the hand-written attention


# 116,534,784 parameters (tested): 40,478 x 768 + 512 x 768 embeddings, 12 blocks of 7,087,872, output tied.
PRESETS = {"gpt1": GPTConfig(block_size=512, vocab_size=40478, n_layer=12, n_head=12, n_embd=768)}


class CausalSelfAttention(nn.Module):
    """n_head heads of scaled dot-product attention, position t attending to positions <= t."""

    def __init__(self, config):
        super().__init__()
        C = config.n_embd
        assert C % config.n_head == 0, "n_embd must be a multiple of n_head"
        self.c_attn = nn.Linear(C, 3 * C, bias=config.bias)  # W_Q, W_K, W_V side by side
        self.c_proj = nn.Linear(C, C, bias=config.bias)  # W_O
        self.attn_dropout, self.resid_dropout = nn.Dropout(config.dropout), nn.Dropout(config.dropout)
        self.n_head, self.dropout, self.sdpa = config.n_head, config.dropout, config.sdpa
        T = config.block_size
        self.register_buffer("mask", torch.ones(T, T, dtype=torch.bool).tril(), persistent=False)  # True: may attend

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, C) each
        q, k, v = (z.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for z in (q, k, v))  # (B, h, T, d)
        if self.sdpa:  # the fused kernel: the same numbers (tested)
            p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            att = q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1])  # (B, h, T, T)   Q K^T / sqrt(d_head)
            att = att.masked_fill(~self.mask[:T, :T], float("-inf")).softmax(dim=-1)  # future keys get weight 0
            y = self.attn_dropout(att) @ v  # (B, h, T, d)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, C)))  # Concat(heads) W_O


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        # GELU in its tanh form: OpenAI's code, and Hugging Face's afn="gelu" (gelu_new), not the erf form
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attn, self.ln_1 = CausalSelfAttention(config), nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp, self.ln_2 = MLP(config), nn.LayerNorm(config.n_embd, bias=config.bias)

    def forward(self, x):
        x = self.ln_1(x + self.attn(x))  # post-LN: normalise after adding the branch (GPT-2 moved LN before it)
        return self.ln_2(x + self.mlp(x))


class GPT(nn.Module):
    """Token and position embeddings, n_layer post-LN blocks, the tied output. Names as Hugging Face's openai-gpt."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.tokens_embed = nn.Embedding(config.vocab_size, config.n_embd)  # W_e
        self.positions_embed = nn.Embedding(config.block_size, config.n_embd)  # W_p, learned
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.tokens_embed.weight  # tied: one matrix, counted once
        for m in self.modules():  # the paper: "a simple weight initialization of N(0, 0.02)"
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def hidden(self, idx):
        """idx (B, T) token ids -> the last block's states h_n (B, T, C)."""
        T = idx.shape[1]
        assert T <= self.config.block_size, f"{T} tokens: more than block_size {self.config.block_size}"
        x = self.drop(self.tokens_embed(idx) + self.positions_embed(torch.arange(T, device=idx.device)))  # h_0
        for block in self.h:
            x = block(x)
        return x

    def forward(self, idx, targets=None):
        """-> logits (B, T, V) and, given targets (B, T) (-1: no target), the mean cross-entropy -L1 / tokens."""
        logits = self.lm_head(self.hidden(idx))
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=0):
        """Append max_new_tokens tokens to idx (B, T): each drawn from softmax(logits / temperature) over the top_k
        likeliest (0: all), or the argmax where temperature is 0; the context is cropped to block_size."""
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.config.block_size :])[0][:, -1]  # (B, V): the last position's prediction
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    kth = logits.topk(min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(logits.softmax(-1), 1)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
        return idx

    def add_tokens(self, n):
        """n new tokens (stage 2's <s> and <e>) with embeddings drawn N(0, 0.02); the output stays tied."""
        old = self.tokens_embed.weight.data
        self.tokens_embed = nn.Embedding(len(old) + n, self.config.n_embd).to(old.device, old.dtype)
        nn.init.normal_(self.tokens_embed.weight, std=0.02)
        self.tokens_embed.weight.data[: len(old)] = old
        self.lm_head = nn.Linear(self.config.n_embd, len(old) + n, bias=False).to(old.device, old.dtype)
        self.lm_head.weight = self.tokens_embed.weight
        self.config = replace(self.config, vocab_size=len(old) + n)

    def crop_block_size(self, block_size):
        """Keep the first block_size positions (a shorter context: less work, the same weights)."""
        self.positions_embed.weight = nn.Parameter(self.positions_embed.weight.data[:block_size].clone())
        self.config = replace(self.config, block_size=block_size)

    @classmethod
    def from_hf(cls, path, **overrides):
        """A Hugging Face openai-gpt folder (config.json, model.safetensors) -> GPT with its weights (and the
        config's fields in overrides changed: dropout, sdpa).

        The names are ours after the prefix "transformer."; Hugging Face's Conv1D stores W as (in, out) where
        nn.Linear holds (out, in), so those four matrices are transposed; lm_head is tokens_embed (tied)."""
        from safetensors.torch import load_file

        path = Path(path)
        hf = json.loads((path / "config.json").read_text())
        kind, afn, eps = hf.get("model_type"), hf.get("afn"), hf.get("layer_norm_epsilon")
        if (kind, afn, eps) != ("openai-gpt", "gelu", 1e-5):
            raise ValueError(f"{path}: a {kind} model with afn {afn} and eps {eps}, not GPT-1 (openai-gpt, gelu, 1e-5)")
        config = GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
                           n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=hf.get("resid_pdrop", 0.1), bias=True)
        model = cls(replace(config, **overrides))
        sd = {k.removeprefix("transformer."): w for k, w in load_file(path / "model.safetensors").items()}
        masks = (".attn.bias", ".attn.masked_bias")  # older checkpoints also store the causal masks
        sd = {k: w for k, w in sd.items() if k != "lm_head.weight" and not k.endswith(masks)}
        ours = {k: w for k, w in model.state_dict().items() if k != "lm_head.weight"}  # buffers: the causal masks
        if sd.keys() != ours.keys():
            raise ValueError(f"{path}: weights differ from GPT-1's: {sorted(sd.keys() ^ ours.keys())[:4]}")
        with torch.no_grad():
            for k, w in ours.items():
                conv1d = k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
                w.copy_(sd[k].t() if conv1d else sd[k])  # Conv1D (in, out) -> Linear (out, in)
        return model


# %% [markdown]
# ## Tokens: characters, or GPT-1's own BPE for its released weights


# %%
class Chars:
    """One token per character of the corpus."""

    def __init__(self, chars):
        self.chars, self.index = chars, {c: i for i, c in enumerate(chars)}

    def __len__(self):
        return len(self.chars)

    def encode(self, text):
        return [self.index[c] for c in text if c in self.index]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids if i < len(self.chars))


class GPT1BPE:
    """GPT-1's tokenizer (vocab.json, merges.txt): lower case without accents, words and punctuation marks split
    apart (BERT's pre-tokenizer, as Hugging Face's OpenAIGPTTokenizer does), then byte-pair merges inside each
    word, whose last symbol carries "</w>". Merges apply in the order they were learned."""

    def __init__(self, folder):
        self.vocab = json.loads((Path(folder) / "vocab.json").read_text(encoding="utf-8"))
        lines = (Path(folder) / "merges.txt").read_text(encoding="utf-8").splitlines()
        self.ranks = {tuple(m.split()): r for r, m in enumerate(m for m in lines if m and not m.startswith("#"))}
        self.inverse, self.cache = {i: t for t, i in self.vocab.items()}, {}

    def __len__(self):
        return len(self.vocab)

    def word(self, w):
        parts = [*w[:-1], w[-1] + "</w>"]
        while len(parts) > 1:
            pair = min(zip(parts, parts[1:]), key=lambda p: self.ranks.get(p, math.inf))  # the earliest merge
            if pair not in self.ranks:
                break
            i, merged = 0, []
            while i < len(parts):
                both = i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair
                merged.append(parts[i] + parts[i + 1] if both else parts[i])
                i += 2 if both else 1
            parts = merged
        return parts

    def encode(self, text):
        text = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
        text = "".join(f" {c} " if c in string.punctuation or unicodedata.category(c)[0] == "P" else c for c in text)
        pieces = []
        for w in text.split():  # words, and each punctuation mark on its own
            if w not in self.cache:
                self.cache[w] = self.word(w)
            pieces += self.cache[w]
        unk = self.vocab.get("<unk>")
        return [i for i in (self.vocab.get(p, unk) for p in pieces) if i is not None]

    def decode(self, ids):
        return "".join(self.inverse.get(i, "") for i in ids).replace("</w>", " ").strip()


# %% [markdown]
# ## Data: random windows for stage 1, the speaker task for stage 2


# %%
def get_batch(d, block_size, batch_size, rng):
    """batch_size windows at random offsets of the token tensor d -> x (B, T) and the next tokens y (B, T)."""
    at = torch.from_numpy(rng.integers(0, len(d) - block_size, batch_size))[:, None] + torch.arange(block_size)
    return d[at], d[at + 1]


def speeches(text):
    """(speaker, speech, start, end) of every block 'NAME:' + lines between blank lines, but empty ones; text[start:end]
    is the block with its name and the blank line after it."""
    out, at = [], 0
    for block in text.split("\n\n"):
        head, _, body = block.partition("\n")
        if head.endswith(":") and body.strip():
            out.append((head[:-1], body, at, at + len(block) + 2))
        at += len(block) + 2
    return out


def speaker_task(text, n_speakers):
    """Stage 2's labelled data: which of the n_speakers who speak most often says a speech. Every second speech of
    each is a test speech, the others train. -> the classes, {"train", "test"} lists of (speech, label), and the
    (start, end) spans of the test speeches, which stage 1 must never read."""
    rows = speeches(text)
    classes = [who for who, _ in Counter(who for who, *_ in rows).most_common(n_speakers)]  # ties: the first seen
    seen, split, cut = Counter(), {"train": [], "test": []}, []
    for who, said, start, end in rows:
        if who in classes:
            seen[who] += 1
            test = seen[who] % 2 == 0
            split["test" if test else "train"].append((said, classes.index(who)))
            if test:
                cut.append((start, end))
    return classes, split, cut


def without(text, spans):
    """text with the characters of the (start, end) spans taken out (spans in order, not overlapping)."""
    keep, at = [], 0
    for start, end in spans:
        keep.append(text[at:start])
        at = max(at, end)
    return "".join(keep) + text[at:]


def task_tensors(examples, tok, start, extract, block_size):
    """(speech, label) pairs -> x (N, block_size) '<s> text <e>' right-padded with 0, y (N, block_size) the next
    text token at each text position (-1 elsewhere: L1 skips it), last (N,) the position of <e>, label (N,)."""
    x = torch.zeros(len(examples), block_size, dtype=torch.long)
    y = torch.full_like(x, -1)
    last = torch.zeros(len(examples), dtype=torch.long)
    for i, (said, _) in enumerate(examples):
        ids = tok.encode(said)[: block_size - 2]  # long speeches keep their beginning
        x[i, : len(ids) + 2] = torch.tensor([start, *ids, extract])
        y[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)  # position t (0: <s>) predicts text token t
        last[i] = len(ids) + 1
    return {"x": x, "y": y, "last": last, "label": torch.tensor([lab for _, lab in examples])}


# %% [markdown]
# ## Training pieces: AdamW, the schedule, loss estimates, the fine-tuning loop


# %%
def adamw(params, lr, weight_decay):
    """AdamW with decoupled weight decay on the matrices only (the paper: "all non bias or gain weights")."""
    params = list(params)
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99))


def get_lr(it, lr, min_lr, warmup_iters, lr_decay_iters):
    """Linear warm-up to lr over warmup_iters steps, cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if it < warmup_iters:
        return lr * (it + 1) / (warmup_iters + 1)
    if it >= lr_decay_iters:
        return min_lr
    progress = (it - warmup_iters) / (lr_decay_iters - warmup_iters)  # 0 -> 1
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)


@torch.no_grad()
def estimate_loss(model, data, block_size, batch_size, eval_iters, seed):
    """Mean loss over eval_iters random batches of each split (the same batches at every call), dropout off."""
    model.eval()
    out = {}
    for name, d in data.items():
        rng = np.random.default_rng([seed, 1])
        out[name] = float(np.mean([model(*get_batch(d, block_size, batch_size, rng))[1].item()
                                   for _ in range(eval_iters)]))
    model.train()
    return out


@torch.no_grad()
def accuracy(model, head, t, batch_size=256):
    """Share of the examples of t whose argmax of P(y | x) is the label."""
    model.eval()
    right = 0
    for i in range(0, len(t["label"]), batch_size):
        last = t["last"][i : i + batch_size]
        h = model.hidden(t["x"][i : i + batch_size, : int(last.max()) + 1])  # (B, T, C)
        right += (head(h[torch.arange(len(last)), last]).argmax(-1) == t["label"][i : i + batch_size]).sum().item()
    model.train()
    return right / len(t["label"])


def l3(model, head, b, lm_coef, p_drop):
    """Stage 2's loss on a batch b of task_tensors: -L3 = -L2 - lm_coef L1, as means. -> (loss, L2 term, L1 term)."""
    T = int(b["last"].max()) + 1  # cut the padding that no example needs
    h = model.hidden(b["x"][:, :T])  # (B, T, C)
    lm = F.cross_entropy(model.lm_head(h).flatten(0, 1), b["y"][:, :T].flatten(), ignore_index=-1)  # -L1 per token
    h_e = F.dropout(h[torch.arange(len(h)), b["last"]], p_drop, model.training)  # (B, C): h_n at <e>, dropout 0.1
    clf = F.cross_entropy(head(h_e), b["label"])  # -L2 per example: softmax(h_n W_y)
    return clf + lm_coef * lm, clf, lm


def finetune(model, t, n_classes, args, desc):
    """Stage 2: the head W_y reads h_n at <e>; minimise -L3 on the task's training examples t for --epochs passes,
    the learning rate decaying linearly from --ft-lr to 0. -> the head, and the L2 and L1 terms at every step."""
    torch.manual_seed(args.seed)
    head = nn.Linear(model.config.n_embd, n_classes).to(t["x"].device)  # W_y (and a bias)
    nn.init.normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    params = [*model.parameters(), *head.parameters()]
    opt = adamw(params, args.ft_lr, args.weight_decay)
    n = len(t["label"])
    steps, step, hist = args.epochs * math.ceil(n / args.ft_batch_size), 0, {"clf_loss": [], "lm_loss": []}
    rng = np.random.default_rng([args.seed, 2])
    model.train()
    for epoch in range(args.epochs):
        batches = list(minibatches(n, args.ft_batch_size, rng))
        for idx in tqdm(batches, desc=f"{desc} {epoch + 1}", leave=False, disable=not sys.stdout.isatty()):
            loss, clf, lm = l3(model, head, {k: v[idx] for k, v in t.items()}, args.lm_coef, args.dropout)
            for g in opt.param_groups:
                g["lr"] = args.ft_lr * (1 - step / steps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.grad_clip > 0:  # clipping by global norm, as taught in 05-rnns/rnn_numpy.py
                nn.utils.clip_grad_norm_(params, args.grad_clip)
            opt.step()
            step += 1
            hist["clf_loss"].append(clf.item())
            hist["lm_loss"].append(lm.item())
        print(f"{desc} epoch {epoch + 1}/{args.epochs}  L2 term {np.mean(hist['clf_loss'][-len(batches):]):.3f} | "
              f"L1 term {np.mean(hist['lm_loss'][-len(batches):]):.3f} (means over the epoch)", flush=True)
    return head, hist


# %% [markdown]
# ## Device, checkpoint, sampling, the figure


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


def sample(model, tok, prompt, length, temperature, top_k):
    """prompt + length tokens drawn at temperature among the top_k likeliest (0: all; 1: greedy), as text and ids."""
    model.eval()
    idx = torch.tensor([tok.encode(prompt)], device=next(model.parameters()).device)
    out = model.generate(idx, length, temperature, top_k)[0].tolist()
    model.train()
    return tok.decode(out), out


def plot(pre, fine, scratch, accs, path):
    """Stage 1's loss curves, stage 2's classification loss per step, and the three test accuracies."""
    fig = Figure(figsize=(15, 4), layout="constrained")
    ax = fig.subplots(1, 3)
    for name in ("train", "val"):
        ax[0].plot(pre["iter"], pre[f"{name}_loss"], label=name)
    ax[0].set(xlabel="iteration", ylabel="cross-entropy per token", title="stage 1: language modelling")
    for hist, name in ((fine, "fine-tuned"), (scratch, "from scratch")):
        ax[1].plot(np.convolve(hist["clf_loss"], np.ones(5) / 5, mode="valid"), label=name)  # mean of 5 steps
    ax[1].set(xlabel="step", ylabel="L2: cross-entropy of the speaker", title="stage 2 (means of 5 steps)")
    ax[2].bar(list(accs), list(accs.values()), color=["grey", "tab:orange", "tab:blue"])
    ax[2].set(ylabel="test accuracy", title="which speaker? (test speeches)", ylim=(0, 1))
    for a in ax[:2]:
        a.legend()
    fig.savefig(path, dpi=110)


# %% [markdown]
# ## Main: stage 1 in one flat loop, then stage 2 twice (pre-trained and from scratch)


# %%
# Flags a resumed run may change: how long stage 1 runs, where, how it samples, and stage 2's training.
RESUME_MAY_CHANGE = {"max_iters", "eval_interval", "resume", "device", "data_dir", "out_dir", "sdpa", "sample",
                     "prompt", "sample_len", "temperature", "top_k", "lm_coef", "ft_lr",
                     "ft_batch_size", "epochs"}
DOWNLOAD = "hf download openai-community/openai-gpt config.json model.safetensors vocab.json merges.txt --local-dir DIR"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog=f"The released GPT-1 for --init-from (pip install huggingface_hub): {DOWNLOAD}")
    p.add_argument("--n-layer", type=positive_int, default=None, help="blocks (default 4; 2 with --smoke)")
    p.add_argument("--n-head", type=positive_int, default=4, help="attention heads (default 4)")
    p.add_argument("--n-embd", type=positive_int, default=None, help="d_model (default 128; 32 with --smoke)")
    p.add_argument("--block-size", type=positive_int, default=None,
                   help="context (default 128; 32 with --smoke; --init-from: its 512, or this many positions of it)")
    p.add_argument("--dropout", type=probability, default=0.1, help="default 0.1, as the paper")
    p.add_argument("--sdpa", action="store_true", help="F.scaled_dot_product_attention instead of the hand-written")
    p.add_argument("--max-iters", type=positive_int, default=None, help="stage 1 steps (default 2000; 60 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=12, help="stage 1 sequences per step (default 12)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="stage 1 peak learning rate (default 1e-3)")
    p.add_argument("--min-lr", type=nonneg_float, default=1e-4, help="end of the cosine decay (default 1e-4)")
    p.add_argument("--warmup-iters", type=nonneg_int, default=None, help="warm-up steps (default 100; 10 --smoke)")
    p.add_argument("--lr-decay-iters", type=positive_int, default=None, help="end of the cosine (default --max-iters)")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.01, help="AdamW's, on matrices (default 0.01)")
    p.add_argument("--grad-clip", type=nonneg_float, default=1.0, help="max global gradient norm, 0: off (default 1)")
    p.add_argument("--eval-interval", type=positive_int, default=None, help="steps between evaluations (default 250)")
    p.add_argument("--eval-iters", type=positive_int, default=None, help="batches per estimate (default 20; 4 --smoke)")
    p.add_argument("--n-speakers", type=positive_int, default=2, help="classes of stage 2's task (default 2)")
    p.add_argument("--lm-coef", type=nonneg_float, default=0.5, help="lambda of L3 = L2 + lambda L1 (default 0.5)")
    p.add_argument("--ft-lr", type=positive_float, default=None, help="stage 2 learning rate (default 3e-4)")
    p.add_argument("--ft-batch-size", type=positive_int, default=32, help="stage 2 speeches per step (default 32)")
    p.add_argument("--epochs", type=positive_int, default=None, help="stage 2 passes (default 10; 1 with --smoke)")
    p.add_argument("--init-from", default=None, metavar="DIR", help="skip stage 1: fine-tune the released GPT-1 in DIR "
                   "(config.json, model.safetensors; vocab.json, merges.txt: its BPE)")
    p.add_argument("--sample", action="store_true", help="generate from --init-from or the checkpoint, then stop")
    p.add_argument("--prompt", default="ROMEO:\n", help="what --sample continues (default 'ROMEO:\\n')")
    p.add_argument("--sample-len", type=positive_int, default=300, help="tokens sampled (default 300)")
    p.add_argument("--temperature", type=positive_float, default=0.8, help="default 0.8")
    p.add_argument("--top-k", type=nonneg_int, default=0, help="sample among the k likeliest (0: all; 1: greedy)")
    p.add_argument("--resume", action="store_true", help="continue stage 1 from <out-dir>/checkpoint.pt; when it is "
                   "complete, go straight to stage 2")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds the weights, dropout and batches (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with tinyshakespeare/input.txt (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="for metrics, figure, checkpoint (default runs/<script>)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on the real text: a small model, few steps")
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    defaults = {"n_layer": (2, 4), "n_embd": (32, 128), "max_iters": (60, 2000), "warmup_iters": (10, 100),
                "eval_interval": (30, 250), "eval_iters": (4, 20), "ft_lr": (1e-3, 3e-4), "epochs": (1, 10)}
    for name, (smoke, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    if args.lr_decay_iters is None:
        args.lr_decay_iters = args.max_iters
    if args.lr_decay_iters <= args.warmup_iters:
        p.error(f"--lr-decay-iters {args.lr_decay_iters}: must be larger than --warmup-iters {args.warmup_iters}")
    if args.min_lr > args.lr:
        p.error(f"--min-lr {args.min_lr}: larger than --lr {args.lr}")
    if args.n_embd % args.n_head:
        p.error(f"--n-embd {args.n_embd} is not a multiple of --n-head {args.n_head}")
    files = ("config.json", "model.safetensors", "vocab.json", "merges.txt")
    if args.init_from is not None and not all((Path(args.init_from) / f).is_file() for f in files):
        p.error(f"--init-from {args.init_from}: needs {', '.join(files)} (to download them: {DOWNLOAD})")
    if args.init_from is not None and args.resume:
        p.error("--resume continues stage 1, which --init-from skips")
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    ckpt_path, ckpt = out_dir / "checkpoint.pt", None
    if (args.resume or args.sample) and args.init_from is None:
        if not ckpt_path.exists():
            flag = "--resume" if args.resume else "--sample"
            p.error(f"{flag}: no checkpoint at {ckpt_path}; train first (same --out-dir)")
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
    if args.resume:
        diff = [f"--{k.replace('_', '-')} {ckpt['config'].get(k)} -> {v}" for k, v in vars(args).items()
                if k not in RESUME_MAY_CHANGE and ckpt["config"].get(k) != v]
        if diff:
            p.error(f"--resume: {ckpt_path} was trained with other settings: {'; '.join(diff)}")

    def load_model():  # the released GPT-1 with its BPE (context cropped to --block-size), or the checkpoint's
        if args.init_from is not None:
            try:
                model, tok = GPT.from_hf(args.init_from, dropout=args.dropout, sdpa=args.sdpa), GPT1BPE(args.init_from)
            except (ValueError, KeyError, OSError) as exc:
                sys.exit(f"error: --init-from {args.init_from}: {exc}")
            if args.block_size is not None and args.block_size < model.config.block_size:
                model.crop_block_size(args.block_size)
        else:
            model, tok = GPT(GPTConfig(**{**ckpt["model_config"], "sdpa": args.sdpa})), Chars(ckpt["chars"])
            model.load_state_dict(ckpt["model"])
        return model.to(device), tok

    if args.sample:
        torch.manual_seed(args.seed)
        model, tok = load_model()
        if not tok.encode(args.prompt):
            p.error(f"--prompt {args.prompt!r}: no token of the vocabulary in it")
        text, ids = sample(model, tok, args.prompt, args.sample_len, args.temperature, args.top_k)
        print(text)
        return {"sample": text, "ids": ids}

    try:
        text = tinyshakespeare(args.data_dir)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    out_dir.mkdir(parents=True, exist_ok=True)
    split_at = int(0.9 * len(text))  # the first 90% (less the test speeches) trains the model, the rest validates it
    torch.manual_seed(args.seed)
    if args.init_from is not None or ckpt is not None:
        model, tok = load_model()
    else:
        tok = Chars("".join(sorted(set(text))))
        model = GPT(GPTConfig(args.block_size or (32 if args.smoke else 128), len(tok), args.n_layer, args.n_head,
                              args.n_embd, args.dropout, sdpa=args.sdpa)).to(device)
    config, T = model.config, model.config.block_size
    classes, split, cut = speaker_task(text, args.n_speakers)
    data = {"train": tok.encode(without(text[:split_at], cut)), "val": tok.encode(text[split_at:])}  # no test speech
    data = {k: torch.tensor(v, device=device) for k, v in data.items()}
    n_params = sum(q.numel() for q in model.parameters())
    print(f"GPT-1{' (released weights)' if args.init_from else ''}: {config.n_layer} post-LN blocks, d_model "
          f"{config.n_embd}, {config.n_head} heads, context {T}, vocabulary {config.vocab_size:,}; {n_params:,} "
          f"params; {len(data['train']):,} training and {len(data['val']):,} validation tokens")

    # ---- stage 1: generative pre-training, max L1 on the first 90% of the text ----
    opt = adamw(model.parameters(), args.lr, args.weight_decay)
    hist, start, saved = {"iter": [], "train_loss": [], "val_loss": [], "lr": []}, 0, None
    pre_s = 0.0
    if ckpt is not None:
        opt.load_state_dict(ckpt["opt"])
        hist, start, saved, pre_s = ckpt["hist"], ckpt["iter"], ckpt["iter"], ckpt["pre_s"]
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        print(f"resumed from {ckpt_path} at step {start}{': stage 1 is complete' if start >= args.max_iters else ''}")
    iters = range(start, args.max_iters) if args.init_from is None else range(0)  # released weights: stage 1 done
    t0 = time.perf_counter()
    try:
        for it in tqdm(iters, desc="stage 1", disable=not sys.stdout.isatty()):
            lr = get_lr(it, args.lr, args.min_lr, args.warmup_iters, args.lr_decay_iters)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = get_batch(data["train"], T, args.batch_size, np.random.default_rng([args.seed, 0, it]))
            _, loss = model(x, y)  # -L1 per token
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            opt.step()
            if (it + 1) % args.eval_interval == 0 or it + 1 == args.max_iters:
                losses = estimate_loss(model, data, T, args.batch_size, args.eval_iters, args.seed)
                point = {"iter": it + 1, "train_loss": losses["train"], "val_loss": losses["val"], "lr": lr}
                for k, v in point.items():
                    hist[k].append(v)
                elapsed = pre_s + time.perf_counter() - t0
                tqdm.write(f"step {it + 1:5d}/{args.max_iters}  train loss {losses['train']:.3f} | val loss "
                           f"{losses['val']:.3f} | lr {lr:.2e} | {elapsed / 60:.1f} min")
                save_checkpoint(ckpt_path, model=model.state_dict(), opt=opt.state_dict(), iter=it + 1, hist=hist,
                                torch_rng=torch.get_rng_state(), config=vars(args), model_config=asdict(config),
                                chars=tok.chars, pre_s=elapsed)
                saved = it + 1
    except KeyboardInterrupt:  # Ctrl-C: say what is saved and how to go on, without a traceback
        flags = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--resume"]
        script = f"{Path(__file__).resolve().parent.name}/{Path(__file__).name}"
        where = f"{ckpt_path} holds step {saved}. Resume with" if saved else "nothing saved. Start again with"
        print(f"\ninterrupted in stage 1; {where}:\n  " + shlex.join(["python", script, *flags]
              + (["--resume"] if saved else [])), file=sys.stderr)
        sys.exit(130)
    pre_s += time.perf_counter() - t0
    final = estimate_loss(model, data, T, args.batch_size, args.eval_iters, args.seed)
    torch.manual_seed(args.seed)
    text_sample, _ = sample(model, tok, "\n" if isinstance(tok, Chars) else "the", 200, args.temperature, args.top_k)
    print(f"stage 1: val loss {final['val']:.3f} (train {final['train']:.3f}) after {pre_s / 60:.1f} min; a sample:\n"
          f"{text_sample}\n")

    # ---- stage 2: discriminative fine-tuning, max L3 = L2 + lambda L1 on the speaker task ----
    start_tok, extract_tok = config.vocab_size, config.vocab_size + 1  # <s> and <e>: new ids after the vocabulary
    t = {k: {n: v.to(device) for n, v in task_tensors(ex, tok, start_tok, extract_tok, T).items()}
         for k, ex in split.items()}
    counts = Counter(lab for _, lab in split["train"])
    majority = float((t["test"]["label"] == counts.most_common(1)[0][0]).float().mean())
    print(f"stage 2: which of {', '.join(classes)} speaks? {len(split['train'])} training and {len(split['test'])} "
          f"test speeches; the majority class, {classes[counts.most_common(1)[0][0]]}, is right on {majority:.3f}")
    scratch_model = GPT(replace(config, vocab_size=config.vocab_size + 2))  # the same network, not pre-trained
    model.add_tokens(2)
    results = {}
    try:
        for name, m in (("finetune", model), ("scratch", scratch_model.to(device))):
            t0 = time.perf_counter()
            head, ft_hist = finetune(m, t["train"], len(classes), args, "fine-tuning" if m is model else "from scratch")
            results[name] = {"acc": accuracy(m, head, t["test"]), "train_acc": accuracy(m, head, t["train"]),
                             "hist": ft_hist, "minutes": (time.perf_counter() - t0) / 60}
            print(f"{name}: test accuracy {results[name]['acc']:.3f} (train {results[name]['train_acc']:.3f})")
    except KeyboardInterrupt:
        kept = f"stage 1 is saved in {ckpt_path}; run again with --resume to go straight to stage 2" if saved else ""
        print(f"\ninterrupted in stage 2; {kept or 'nothing saved'}", file=sys.stderr)
        sys.exit(130)

    accs = {"majority class": majority, "from scratch": results["scratch"]["acc"],
            "fine-tuned": results["finetune"]["acc"]}
    plot(hist, results["finetune"]["hist"], results["scratch"]["hist"], accs, out_dir / "gpt1.png")
    with torch.device("meta"):
        params_gpt1 = sum(q.numel() for q in GPT(PRESETS["gpt1"]).parameters())
    metrics = {"script": Path(__file__).stem, "finetune_test_acc": results["finetune"]["acc"],
               "scratch_test_acc": results["scratch"]["acc"], "majority_acc": majority, "val_loss": final["val"],
               "train_loss": final["train"], "pretrain_minutes": pre_s / 60,
               "finetune_minutes": results["finetune"]["minutes"], "scratch_minutes": results["scratch"]["minutes"],
               "finetune_train_acc": results["finetune"]["train_acc"],
               "scratch_train_acc": results["scratch"]["train_acc"],
               "params": n_params, "params_gpt1": params_gpt1, "classes": classes, "n_task_train": len(split["train"]),
               "n_task_test": len(split["test"]), "train_tokens": len(data["train"]), "init_from": args.init_from,
               "sample": text_sample,
               "model_config": asdict(config), "device": str(device), "config": vars(args),
               "history": {"pretrain": hist, "finetune": results["finetune"]["hist"],
                           "scratch": results["scratch"]["hist"]}}
    save_metrics(out_dir, metrics, __file__, argv)
    return metrics


if __name__ == "__main__":
    main()
