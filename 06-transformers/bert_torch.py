"""BERT (Devlin et al. 2019): a Transformer encoder pre-trained to fill in masked words and to spot sentence pairs.

Pre-training reads a pair [CLS] A [SEP] B [SEP] with some words hidden; fine-tuning adds a classifier on [CLS]:

    embeddings  h_0 = LN(E_tok[x] + E_seg[s] + E_pos[0..T-1]),  s = 0 on [CLS] A [SEP], 1 on B [SEP]; dropout 0.1
    attention   softmax(Q K^T / sqrt(d_head) + M) V,  M = -inf at the keys of [PAD] (both directions, no causal mask)
    block       a = LN(h + attn(h)),  h' = LN(a + W_2 GELU(W_1 a + b_1) + b_2)      post-LN, as the Transformer
    GELU        GELU(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))                     the exact form (GPT: tanh)
    pooler      p = tanh(W_p h_L[CLS] + b_p)
    MLM head    P(w | x) = softmax(E_tok LN(GELU(W_t h_L + b_t)) + b_V)       the decoder is E_tok (tied)
    NSP head    P(label | x) = softmax(W_nsp p + b_nsp)              label 0: B follows A; 1: B is a random sentence
    masking     each token but [CLS] [SEP] [PAD] is chosen with p = 0.15; a chosen one becomes [MASK] (80%),
                a random word (10%) or stays (10%); only chosen positions enter the MLM loss
    loss        L = mean_chosen -log P(w_t | x~) + mean_pairs -log P(NSP label | x~)
    training    AdamW (decay 0.01 on matrices), linear warm-up then linear decay to 0, clipping at 1; N(0, 0.02)

Here the corpus is PTB (data.ptb_sentences), one sentence per line in article order: B is the next line half the
time, else a line at least 100 lines away. The vocabulary is PTB's own words from its training split, <unk> as [UNK],
plus [PAD] [CLS] [SEP] [MASK]: PTB is already tokenised, lower-cased and cut to 10,000 words, so WordPiece would
find nothing left to split, and whole words make the masked predictions and the MLM accuracy readable.
Pre-training reads the training split; held-out pairs come from the validation split. Fine-tuning asks "is this
sentence as written, or was one of its words replaced by a random word?" (labels 50/50, one version of each
sentence): an acceptability task in the spirit of CoLA, labelled without a download, where knowing which word fits
its context helps (MLM's 10% of random words teach just that). It trains on the validation split and is tested on
the test split, which pre-training never reads, beside the same model from scratch (same steps) and the majority
class. Dropout is 0 by default: a ten-minute run underfits (the paper's 0.1: --dropout 0.1).

Reading: J. Devlin, M.-W. Chang, K. Lee, K. Toutanova (2019), "BERT: Pre-training of Deep Bidirectional
Transformers for Language Understanding", https://arxiv.org/abs/1810.04805; D. Hendrycks, K. Gimpel (2016),
"Gaussian Error Linear Units", https://arxiv.org/abs/1606.08415
Arc: Translation, attention and transformers -- BERT (implement it in PyTorch).

Run:  python 06-transformers/bert_torch.py                                  (about 8.5 minutes on two CPU cores)
      python 06-transformers/bert_torch.py --fill-mask "the dow jones industrial [MASK] fell"   (the checkpoint)
      hf download google-bert/bert-base-uncased config.json model.safetensors vocab.txt --local-dir bert
      python 06-transformers/bert_torch.py --init-from bert --fill-mask "the capital of france is [MASK] ."
      python 06-transformers/bert_torch.py --init-from bert --block-size 64        (fine-tune the released BERT)
The `hf` command comes with `pip install huggingface_hub`; a folder written by Hugging Face's save_pretrained of a
BertForPreTraining (plus its vocab.txt) works as well.
Look first at `Layer.forward` (post-LN), `SelfAttention.forward` (the padding mask), `mask_tokens`, `nsp_pairs`,
`pretrain_loss`, then at runs/bert_torch/bert.png and the accuracies and predictions in metrics.json.
"""

# %%
import argparse
import json
import math
import re
import shlex
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
    ptb_sentences,
    save_metrics,
)

# %% [markdown]
# ## The model: embeddings, post-LN blocks with a padding mask, the pooler, the MLM and NSP heads


# %%
@dataclass
class BertConfig:
    block_size: int = 64  # positions with an embedding (max_position_embeddings); BERT: 512
    vocab_size: int = 10003  # PTB's 9,998 words, <unk> as [UNK], [PAD] [CLS] [SEP] [MASK]; BERT: 30,522 WordPiece
    type_vocab_size: int = 2  # segments A and B
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128  # the hidden size H
    n_inner: int = 512  # the feed-forward width, 4 H (intermediate_size)
    dropout: float = 0.1  # on the embeddings, the attention weights and each branch, as the paper (--dropout)
    ln_eps: float = 1e-12  # BERT's LayerNorm epsilon
    sdpa: bool = False  # F.scaled_dot_product_attention instead of the hand-written attention


# BertForPreTraining, the MLM decoder tied (tested): bert-base 110,106,428 (109,482,240 without the two heads),
# bert-large 336,226,108.
PRESETS = {"bert-base": BertConfig(512, 30522, 2, 12, 12, 768, 3072),
           "bert-large": BertConfig(512, 30522, 2, 24, 16, 1024, 4096)}  # fmt: skip


def gelu(x):
    """GELU(x) = x Phi(x), Phi the standard normal CDF: BERT's exact form, not GPT's tanh approximation."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


class SelfAttention(nn.Module):
    """n_head heads of scaled dot-product attention: every position reads every real token, none reads [PAD]."""

    def __init__(self, config):
        super().__init__()
        C = config.n_embd
        assert C % config.n_head == 0, "n_embd must be a multiple of n_head"
        self.query, self.key, self.value = nn.Linear(C, C), nn.Linear(C, C), nn.Linear(C, C)  # W_Q, W_K, W_V
        self.dropout = nn.Dropout(config.dropout)
        self.n_head, self.p, self.sdpa = config.n_head, config.dropout, config.sdpa

    def forward(self, x, keep):
        """x (B, T, C), keep (B, T) True at real tokens -> the heads' outputs side by side (B, T, C)."""
        B, T, C = x.shape
        q, k, v = (w(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for w in (self.query, self.key, self.value))  # (B, h, T, d) each
        m = keep[:, None, None, :]  # (B, 1, 1, T): the keys each query may read
        if self.sdpa:  # the fused kernel: the same numbers (tested)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=self.p if self.training else 0.0)
        else:
            att = q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1])  # (B, h, T, T)   Q K^T / sqrt(d_head)
            att = att.masked_fill(~m, float("-inf")).softmax(dim=-1)  # + M: [PAD] keys get weight 0
            y = self.dropout(att) @ v  # (B, h, T, d)
        return y.transpose(1, 2).reshape(B, T, C)  # Concat(heads); W_O is the `dense` of AddNorm


class AddNorm(nn.Module):
    """The end of a sublayer, post-LN: LN(x + dropout(y W + b)). Hugging Face names it `output` in both places."""

    def __init__(self, d_in, config):
        super().__init__()
        self.dense = nn.Linear(d_in, config.n_embd)  # W_O after attention, W_2 after the feed-forward
        self.LayerNorm = nn.LayerNorm(config.n_embd, eps=config.ln_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, y, x):
        return self.LayerNorm(x + self.dropout(self.dense(y)))


class Layer(nn.Module):
    """One encoder block, names as Hugging Face's BertLayer: attention.self, attention.output, intermediate, output."""

    def __init__(self, config):
        super().__init__()
        self.attention = nn.ModuleDict({"self": SelfAttention(config), "output": AddNorm(config.n_embd, config)})
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(config.n_embd, config.n_inner)})  # W_1
        self.output = AddNorm(config.n_inner, config)

    def forward(self, h, keep):
        a = self.attention.output(self.attention.self(h, keep), h)  # a = LN(h + attn(h))       post-LN
        return self.output(gelu(self.intermediate.dense(a)), a)  # h' = LN(a + W_2 GELU(W_1 a + b_1) + b_2)


class Embeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        C = config.n_embd
        self.word_embeddings = nn.Embedding(config.vocab_size, C)  # E_tok, also the MLM decoder
        self.position_embeddings = nn.Embedding(config.block_size, C)  # E_pos, learned
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, C)  # E_seg: sentence A or B
        self.LayerNorm = nn.LayerNorm(C, eps=config.ln_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids, token_type_ids):
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids) + self.position_embeddings(pos)
        return self.dropout(self.LayerNorm(x))  # h_0 (B, T, C)


class BertModel(nn.Module):
    """The encoder: embeddings, n_layer post-LN blocks, the pooler (Hugging Face's BertModel, its `bert.`)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = nn.ModuleDict({"layer": nn.ModuleList(Layer(config) for _ in range(config.n_layer))})
        self.pooler = nn.ModuleDict({"dense": nn.Linear(config.n_embd, config.n_embd)})  # W_p

    def forward(self, input_ids, token_type_ids=None, attention_mask=None):
        """input_ids (B, T), token_type_ids (B, T) 0/1 (None: all 0), attention_mask (B, T) 1 at real tokens
        (None: all) -> the last block's states h_L (B, T, C) and the pooled [CLS] state p (B, C)."""
        assert input_ids.shape[1] <= self.config.block_size, f"more than block_size {self.config.block_size} tokens"
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        h = self.embeddings(input_ids, token_type_ids)
        for layer in self.encoder.layer:
            h = layer(h, keep)
        return h, torch.tanh(self.pooler.dense(h[:, 0]))  # p = tanh(W_p h_L[CLS] + b_p)


class MLMHead(nn.Module):
    """cls.predictions: transform (dense, GELU, LayerNorm), then the decoder E_tok^T plus its own bias b_V."""

    def __init__(self, config, word_embeddings):
        super().__init__()
        C, V = config.n_embd, config.vocab_size
        self.transform = nn.ModuleDict({"dense": nn.Linear(C, C), "LayerNorm": nn.LayerNorm(C, eps=config.ln_eps)})
        self.decoder = nn.Linear(C, V, bias=False)
        self.decoder.weight = word_embeddings.weight  # tied: one matrix, counted once
        self.bias = nn.Parameter(torch.zeros(V))

    def forward(self, h):
        return self.decoder(self.transform.LayerNorm(gelu(self.transform.dense(h)))) + self.bias  # (..., V)


class Bert(nn.Module):
    """The pre-training model (Hugging Face's BertForPreTraining): `bert` the encoder, `cls` the MLM and NSP heads."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.cls = nn.ModuleDict({"predictions": MLMHead(config, self.bert.embeddings.word_embeddings),
                                  "seq_relationship": nn.Linear(config.n_embd, 2)})  # W_nsp
        for m in self.modules():  # BERT: weights N(0, 0.02), biases 0, LayerNorm gains 1
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, mlm_positions=None):
        """-> MLM logits (B, T, V) and NSP logits (B, 2). With mlm_positions (B, T) bool, the MLM logits of those
        positions alone (N, V): BERT's own code gathers the chosen positions and skips the rest of the decoder."""
        h, pooled = self.bert(input_ids, token_type_ids, attention_mask)
        if mlm_positions is not None:
            h = h[mlm_positions]  # (N, C)
        return self.cls.predictions(h), self.cls.seq_relationship(pooled)

    @classmethod
    def from_hf(cls, path, **overrides):
        """A Hugging Face BERT folder (config.json, model.safetensors) -> Bert with its weights (and the config's
        fields in overrides changed: dropout, sdpa).

        The names are ours: a BertForPreTraining's as they are, a bare BertModel's after "bert."; old checkpoints
        converted from TensorFlow call LayerNorm's weight and bias gamma and beta; the decoder's weight is the word
        embedding and its bias cls.predictions.bias. What this script does not build is refused in one line."""
        from safetensors.torch import load_file

        path = Path(path)
        hf = json.loads((path / "config.json").read_text())
        for key, want in (("model_type", "bert"), ("hidden_act", "gelu"), ("position_embedding_type", "absolute")):
            if hf.get(key, "absolute" if key == "position_embedding_type" else None) != want:
                raise ValueError(f"{path}: {key} {hf.get(key)!r} is not supported here (only {want!r})")
        if hf.get("is_decoder") or hf.get("add_cross_attention"):
            raise ValueError(f"{path}: a BERT decoder (is_decoder, add_cross_attention) is not supported here")
        config = BertConfig(hf["max_position_embeddings"], hf["vocab_size"], hf.get("type_vocab_size", 2),
                            hf["num_hidden_layers"], hf["num_attention_heads"], hf["hidden_size"],
                            hf["intermediate_size"], hf.get("hidden_dropout_prob", 0.1),
                            hf.get("layer_norm_eps", 1e-12))
        model = cls(replace(config, **overrides))
        sd = {}
        for k, w in load_file(path / "model.safetensors").items():
            k = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k))
            sd[k if k.startswith(("bert.", "cls.")) else "bert." + k] = w
        for buffer in ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids"):
            sd.pop(buffer, None)
        if "cls.predictions.decoder.bias" in sd:  # the same tensor as cls.predictions.bias in Hugging Face's model
            sd.setdefault("cls.predictions.bias", sd.pop("cls.predictions.decoder.bias"))
        decoder = sd.pop("cls.predictions.decoder.weight", None)
        word = sd.get("bert.embeddings.word_embeddings.weight")
        if decoder is not None and word is not None and not torch.equal(decoder, word):
            raise ValueError(f"{path}: its MLM decoder is not tied to the word embedding, as BERT's is")
        ours = {k: w for k, w in model.state_dict().items() if k != "cls.predictions.decoder.weight"}
        if sd.keys() != ours.keys():
            missing, extra = sorted(ours.keys() - sd.keys()), sorted(sd.keys() - ours.keys())
            raise ValueError(f"{path}: not BertForPreTraining's weights: missing {missing[:3]}, unexpected {extra[:3]}")
        with torch.no_grad():
            for k, w in ours.items():
                if sd[k].shape != w.shape:
                    raise ValueError(f"{path}: {k} has shape {tuple(sd[k].shape)}, config.json says {tuple(w.shape)}")
                w.copy_(sd[k])
        return model


# %% [markdown]
# ## Tokens: PTB's words, or BERT's WordPiece for the released vocab.txt


# %%
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


class Words:
    """A vocabulary of whole tokens (PTB's words here), BERT's special tokens among them; <unk> is [UNK]."""

    def __init__(self, tokens):
        self.tokens, self.index = list(tokens), {t: i for i, t in enumerate(tokens)}
        self.pad, self.unk, self.cls, self.sep, self.mask = (self.index[t] for t in SPECIALS)
        self.never = np.array([self.pad, self.cls, self.sep])  # never chosen for masking
        self.word_ids = np.array([i for i, t in enumerate(self.tokens)  # the random replacements: not [..] tokens
                                  if not (t.startswith("[") and t.endswith("]"))])  # fmt: skip

    def __len__(self):
        return len(self.tokens)

    def split(self, text):
        return ["[UNK]" if w == "<unk>" else w for w in text.split()]

    def encode(self, text):
        return [self.index.get(t, self.unk) for t in self.split(text)]

    def decode(self, ids):
        return " ".join(self.tokens[i] for i in ids)


def build_vocab(sentences):
    """The special tokens, then every word of the sentences (PTB's training split), the most frequent first."""
    counts = Counter(w for s in sentences for w in s if w != "<unk>")
    return Words(SPECIALS + sorted(counts, key=lambda w: (-counts[w], w)))


def is_punctuation(c):
    """BERT's punctuation: every ASCII non-letter, non-digit, non-space printable, and Unicode's P categories."""
    return c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~" or unicodedata.category(c).startswith("P")


CJK = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
       (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)]  # fmt: skip   ideographs: one token each


class WordPiece(Words):
    """BERT's uncased tokenizer for a vocab.txt: basic splitting (control characters dropped, lower case, accents
    stripped, ideographs and punctuation marks apart), then greedy longest-match-first pieces inside each word,
    continuations marked "##"; a word with no split into pieces (or over 100 characters) is [UNK]."""

    def __init__(self, path):
        super().__init__(Path(path).read_text(encoding="utf-8").rstrip("\n").split("\n"))
        self.cache = {}

    def basic(self, text):
        if text.isascii():  # the same steps at regex speed: controls out, lower case, [a-z0-9] runs and marks apart
            return re.findall(r"[a-z0-9]+|[^a-z0-9\s]", re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", "", text.lower()))
        text = "".join(" " if c.isspace() else c for c in text
                       if ord(c) not in (0, 0xFFFD) and (c in "\t\n\r" or not unicodedata.category(c).startswith("C")))
        text = "".join(f" {c} " if any(a <= ord(c) <= b for a, b in CJK) else c for c in text)
        words = []
        for w in text.split():
            w = "".join(c for c in unicodedata.normalize("NFD", w.lower()) if unicodedata.category(c) != "Mn")
            words += "".join(f" {c} " if is_punctuation(c) else c for c in w).split()
        return words

    def pieces(self, word):
        if len(word) > 100:
            return ["[UNK]"]
        out, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start and ("##" * (start > 0) + word[start:end]) not in self.index:
                end -= 1  # the longest piece that the vocabulary has
            if end == start:
                return ["[UNK]"]
            out.append("##" * (start > 0) + word[start:end])
            start = end
        return out

    def split(self, text):  # special tokens ([MASK] ...) and PTB's <unk> pass whole
        out = []
        for part in re.split(r"(\[(?:PAD|UNK|CLS|SEP|MASK)\]|<unk>)", text):
            if part in SPECIALS or part == "<unk>":
                out.append("[UNK]" if part == "<unk>" else part)
            else:
                for w in self.basic(part):
                    if w not in self.cache:
                        self.cache[w] = self.pieces(w)
                    out += self.cache[w]
        return out


# %% [markdown]
# ## Data: NSP pairs of PTB sentences, masked words, the word-order task


# %%
def nsp_pairs(n, batch_size, rng, far=100):
    """batch_size index pairs (A, B) of n sentences in order, and their NSP labels: with probability 1/2 label 0
    (IsNext) and B = A + 1; else label 1 (NotNext) and B at least `far` lines from A, most likely another article."""
    a = rng.integers(0, n - 1, batch_size)  # every A has a next sentence
    label = rng.integers(0, 2, batch_size)
    b = np.where(label == 0, a + 1, (a + rng.integers(far, n - far, batch_size)) % n)  # circular distance >= far
    return a, b, label


def frame(pairs, tok, block_size):
    """(A, B) id lists -> [CLS] A [SEP] B [SEP] ([CLS] A [SEP] where B is None) as input_ids, token_type_ids (0 up
    to the first [SEP], 1 after it) and attention_mask (1 at tokens) (N, T) right-padded with [PAD] to the longest.
    A pair too long loses tokens from the end of its longer side (BERT's truncate_seq_pair)."""
    rows = []
    for A, B in pairs:
        A, B = list(A), None if B is None else list(B)
        while len(A) + len(B or []) + (2 if B is None else 3) > block_size:
            (A if B is None or len(A) >= len(B) else B).pop()
        a, b = [tok.cls, *A, tok.sep], [] if B is None else [*B, tok.sep]
        rows.append((a + b, [0] * len(a) + [1] * len(b)))
    ids = np.full((len(rows), max(len(x) for x, _ in rows)), tok.pad)
    seg, att = np.zeros_like(ids), np.zeros_like(ids)
    for i, (x, s) in enumerate(rows):
        ids[i, : len(x)], seg[i, : len(x)], att[i, : len(x)] = x, s, 1
    return ids, seg, att


def mask_tokens(ids, tok, rng, p=0.15):
    """BERT's masked-LM input: each token but [CLS], [SEP], [PAD] is chosen with probability p; a chosen token
    becomes [MASK] (80%), a random word (10%) or stays itself (10%). -> the new ids, and the targets (original
    ids at the chosen positions, -100 elsewhere)."""
    chosen = (rng.random(ids.shape) < p) & ~np.isin(ids, tok.never)
    r = rng.random(ids.shape)
    out = np.where(chosen & (r < 0.8), tok.mask, ids)
    out = np.where(chosen & (r >= 0.8) & (r < 0.9), rng.choice(tok.word_ids, ids.shape), out)
    return out, np.where(chosen, ids, -100)


def pretrain_batch(sents, batch_size, block_size, tok, rng, p=0.15):
    """One pre-training batch from the id arrays of sentences in order: NSP pairs, framed, then masked."""
    a, b, label = nsp_pairs(len(sents), batch_size, rng)
    ids, seg, att = frame([(sents[i], sents[j]) for i, j in zip(a, b)], tok, block_size)
    x, y = mask_tokens(ids, tok, rng, p)
    return {"input_ids": x, "token_type_ids": seg, "attention_mask": att, "mlm_labels": y, "nsp_labels": label}


def replaced_word_task(sentences, tok, max_len, rng):
    """The fine-tuning task: label 1 if a sentence is as written, 0 if one of its tokens was replaced by another word
    drawn uniformly from the vocabulary; a fair coin for each sentence, each sentence used once, sentences longer
    than max_len tokens left out. -> a list of (ids, label)."""
    out = []
    for words in sentences:
        ids = tok.encode(" ".join(words))
        if not ids or len(ids) > max_len:
            continue
        intact = int(rng.random() < 0.5)
        if not intact:
            t = rng.integers(len(ids))
            ids[t] = int(rng.choice(tok.word_ids[tok.word_ids != ids[t]]))
        out.append((ids, intact))
    return out


def to_device(batch, device):
    return {k: torch.as_tensor(v, device=device) for k, v in batch.items()}


# %% [markdown]
# ## Training pieces: the losses, AdamW, the schedule, evaluation, fine-tuning


# %%
def pretrain_loss(model, b):
    """L = MLM cross-entropy (mean over the chosen positions) + NSP cross-entropy (mean over the pairs).
    -> (L, MLM term, NSP term, MLM right and counted, NSP right)."""
    chosen = b["mlm_labels"] >= 0  # (B, T)
    mlm_logits, nsp_logits = model(b["input_ids"], b["token_type_ids"], b["attention_mask"], chosen)  # (N, V), (B, 2)
    target = b["mlm_labels"][chosen]  # (N,)
    mlm, nsp = F.cross_entropy(mlm_logits, target), F.cross_entropy(nsp_logits, b["nsp_labels"])
    right = ((mlm_logits.argmax(-1) == target).sum().item(), len(target),
             (nsp_logits.argmax(-1) == b["nsp_labels"]).sum().item())  # fmt: skip
    return mlm + nsp, mlm, nsp, right


@torch.no_grad()
def evaluate(model, batches):
    """Dropout off: MLM and NSP losses (means over batches) and accuracies on fixed batches of pairs."""
    model.eval()
    rows = [pretrain_loss(model, b) for b in batches]
    model.train()
    return {"mlm_loss": float(np.mean([r[1].item() for r in rows])),
            "nsp_loss": float(np.mean([r[2].item() for r in rows])),
            "mlm_acc": sum(r[3][0] for r in rows) / sum(r[3][1] for r in rows),
            "nsp_acc": sum(r[3][2] for r in rows) / sum(len(b["nsp_labels"]) for b in batches)}  # fmt: skip


def adamw(params, lr, weight_decay):
    """AdamW as BERT: decoupled weight decay on the matrices, not on biases or LayerNorm; eps 1e-6."""
    params = list(params)
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]  # fmt: skip
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-6)


def get_lr(it, lr, warmup, total):
    """BERT's schedule: linear warm-up to lr over warmup steps, then linear decay towards 0 at step total."""
    if it < warmup:
        return lr * (it + 1) / warmup
    return lr * max(0, total - it) / max(1, total - warmup)


def classify_batch(examples, tok, block_size):
    ids, seg, att = frame([(x, None) for x, _ in examples], tok, block_size)
    return {"input_ids": ids, "token_type_ids": seg, "attention_mask": att, "label": [y for _, y in examples]}


@torch.no_grad()
def accuracy(model, head, examples, tok, block_size, device, batch_size=256):
    """Share of the examples whose argmax of softmax(W_c p) is the label."""
    model.eval()
    right = 0
    for i in range(0, len(examples), batch_size):
        b = to_device(classify_batch(examples[i : i + batch_size], tok, block_size), device)
        pooled = model.bert(b["input_ids"], b["token_type_ids"], b["attention_mask"])[1]
        right += (head(pooled).argmax(-1) == b["label"]).sum().item()
    model.train()
    return right / len(examples)


def finetune(model, examples, tok, args, block_size, device, desc):
    """Fine-tuning as BERT's: a new classifier W_c on the pooled [CLS] state (dropout before it), every weight
    trained for --epochs passes, warm-up over the first 10% of the steps then linear decay. -> the head, losses."""
    torch.manual_seed(args.seed)
    head = nn.Linear(model.config.n_embd, 2).to(device)
    nn.init.normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    params = [*model.parameters(), *head.parameters()]
    opt = adamw(params, args.ft_lr, args.weight_decay)
    n, step, losses = len(examples), 0, []
    steps = args.epochs * math.ceil(n / args.ft_batch_size)
    rng = np.random.default_rng([args.seed, 3])
    model.train()
    for epoch in range(args.epochs):
        batches = list(minibatches(n, args.ft_batch_size, rng))
        for idx in tqdm(batches, desc=f"{desc} {epoch + 1}", leave=False, disable=not sys.stdout.isatty()):
            b = to_device(classify_batch([examples[i] for i in idx], tok, block_size), device)
            pooled = model.bert(b["input_ids"], b["token_type_ids"], b["attention_mask"])[1]
            loss = F.cross_entropy(head(F.dropout(pooled, args.dropout, model.training)), b["label"])
            for g in opt.param_groups:
                g["lr"] = get_lr(step, args.ft_lr, steps // 10, steps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.grad_clip > 0:  # clipping by global norm, as taught in 05-rnns/rnn_numpy.py
                nn.utils.clip_grad_norm_(params, args.grad_clip)
            opt.step()
            step += 1
            losses.append(loss.item())
        print(f"{desc} epoch {epoch + 1}/{args.epochs}  loss {np.mean(losses[-len(batches) :]):.3f}", flush=True)
    return head, losses


@torch.no_grad()
def fill_mask(model, tok, text, k=5):
    """The k likeliest tokens and their probabilities at each [MASK] of text, read as [CLS] text [SEP]."""
    model.eval()
    ids = [tok.cls, *tok.encode(text), tok.sep][: model.config.block_size]
    logits = model(torch.tensor([ids], device=next(model.parameters()).device))[0][0]  # (T, V)
    model.train()
    top = [logits[t].softmax(-1).topk(k) for t in range(len(ids)) if ids[t] == tok.mask]
    return [[(tok.tokens[i], round(q, 4)) for q, i in zip(t.values.tolist(), t.indices.tolist())] for t in top]


# %% [markdown]
# ## Device, checkpoint, the figure


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


def plot(hist, fine, scratch, accs, path):
    """Pre-training losses and held-out accuracies; fine-tuning losses; the three test accuracies."""
    fig = Figure(figsize=(18, 4), layout="constrained")
    ax = fig.subplots(1, 4)
    for task, style in (("mlm", "-"), ("nsp", "--")):
        for split in ("train", "val"):
            ax[0].plot(hist["iter"], hist[f"{split}_{task}_loss"], style, label=f"{task.upper()} {split}")
            ax[1].plot(hist["iter"], hist[f"{split}_{task}_acc"], style, label=f"{task.upper()} {split}")
    ax[0].set(xlabel="step", ylabel="cross-entropy", title="pre-training losses")
    ax[1].set(xlabel="step", ylabel="accuracy", title="pre-training accuracies (val: held-out pairs)", ylim=(0, 1))
    for losses, name in ((fine, "pre-trained"), (scratch, "from scratch")):
        ax[2].plot(np.convolve(losses, np.ones(5) / 5, mode="valid"), label=name)  # means of 5 steps
    ax[2].set(xlabel="step", ylabel="cross-entropy", title="fine-tuning: a word replaced? (means of 5 steps)")
    ax[3].bar(list(accs), list(accs.values()), color=["grey", "tab:orange", "tab:blue"])
    ax[3].set(ylabel="test accuracy", title="a word replaced? (PTB test split)", ylim=(0, 1))
    for a in ax[:3]:
        a.legend()
    fig.savefig(path, dpi=110)


# %% [markdown]
# ## Main: pre-training in one flat loop, then fine-tuning twice (pre-trained and from scratch)


# %%
EXAMPLES = ["the dow jones industrial [MASK] fell N points", "he is the chief executive [MASK] of the company",
            "the company said its net [MASK] rose to $ N million in the third quarter",
            "shares of the company [MASK] N cents to $ N in new york stock exchange trading"]  # fmt: skip
# Flags a resumed run may change: where it runs, how often it reports, and the fine-tuning.
RESUME_MAY_CHANGE = {"eval_interval", "resume", "device", "data_dir", "out_dir", "sdpa", "fill_mask", "ft_lr",
                     "ft_batch_size", "epochs", "n_train", "n_test"}  # fmt: skip
FILES = ("config.json", "model.safetensors", "vocab.txt")
DOWNLOAD = f"hf download google-bert/bert-base-uncased {' '.join(FILES)} --local-dir DIR"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog=f"The released BERT for --init-from (pip install huggingface_hub): {DOWNLOAD}")
    p.add_argument("--n-layer", type=positive_int, default=None, help="blocks (default 4; 2 with --smoke)")
    p.add_argument("--n-head", type=positive_int, default=4, help="attention heads (default 4)")
    p.add_argument("--n-embd", type=positive_int, default=None, help="hidden size (default 128; 32 with --smoke)")
    p.add_argument("--block-size", type=positive_int, default=None,
                   help="longest input (default 64; --init-from: its 512, or this many tokens of it)")
    p.add_argument("--dropout", type=probability, default=0.0, help="default 0 (a short run underfits); BERT: 0.1")
    p.add_argument("--sdpa", action="store_true", help="F.scaled_dot_product_attention instead of the hand-written")
    p.add_argument("--max-iters", type=positive_int, default=None, help="pre-training steps (default 1400; 60 --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="sentence pairs per step (default 32)")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="peak pre-training learning rate (default 2e-3)")
    p.add_argument("--warmup-iters", type=nonneg_int, default=None, help="warm-up steps (default 10%% of --max-iters)")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.01, help="AdamW's, on matrices (default 0.01)")
    p.add_argument("--grad-clip", type=nonneg_float, default=1.0, help="max global gradient norm, 0: off (default 1)")
    p.add_argument("--eval-interval", type=positive_int, default=None, help="steps between evaluations (default 250)")
    p.add_argument("--eval-iters", type=positive_int, default=None, help="held-out batches (default 20; 4 --smoke)")
    p.add_argument("--mask-prob", type=probability, default=0.15, help="share of tokens chosen for MLM (default 0.15)")
    p.add_argument("--ft-lr", type=positive_float, default=1e-4, help="fine-tuning learning rate (default 1e-4)")
    p.add_argument("--ft-batch-size", type=positive_int, default=32, help="fine-tuning sentences per step (default 32)")
    p.add_argument("--epochs", type=positive_int, default=None, help="fine-tuning passes (default 3; 1 with --smoke)")
    p.add_argument("--n-train", type=positive_int, default=None, help="task training sentences (all; 256 --smoke)")
    p.add_argument("--n-test", type=positive_int, default=None, help="test sentences (default all; 256 with --smoke)")
    p.add_argument("--init-from", default=None, metavar="DIR", help="skip pre-training: fine-tune the released BERT "
                   "in DIR (config.json, model.safetensors, vocab.txt)")
    p.add_argument("--fill-mask", default=None, metavar="TEXT", help="print the likeliest words at each [MASK] of TEXT "
                   "(from --init-from or the checkpoint), then stop")
    p.add_argument("--resume", action="store_true", help="continue pre-training from <out-dir>/checkpoint.pt; when "
                   "it is complete, go straight to fine-tuning")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds the weights, dropout, pairs, masks (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with ptb/ptb.{train,valid,test}.txt (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="for metrics, figure, checkpoint (default runs/<script>)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on real PTB: a small model, few steps")
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    defaults = {"n_layer": (2, 4), "n_embd": (32, 128), "max_iters": (60, 1400), "eval_interval": (30, 250),
                "eval_iters": (4, 20), "epochs": (1, 3), "n_train": (256, None), "n_test": (256, None)}
    for name, (smoke, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    if args.warmup_iters is None:
        args.warmup_iters = args.max_iters // 10
    if args.warmup_iters >= args.max_iters:
        p.error(f"--warmup-iters {args.warmup_iters}: must be smaller than --max-iters {args.max_iters}")
    if args.n_embd % args.n_head:
        p.error(f"--n-embd {args.n_embd} is not a multiple of --n-head {args.n_head}")
    if args.block_size is not None and args.block_size < 8:
        p.error(f"--block-size {args.block_size}: at least 8, for [CLS] A [SEP] B [SEP]")
    if args.fill_mask is not None and "[MASK]" not in args.fill_mask:
        p.error(f"--fill-mask {args.fill_mask!r}: no [MASK] in it")
    if args.init_from is not None and not all((Path(args.init_from) / f).is_file() for f in FILES):
        p.error(f"--init-from {args.init_from}: needs {', '.join(FILES)} (to download them: {DOWNLOAD})")
    if args.init_from is not None and args.resume:
        p.error("--resume continues pre-training, which --init-from skips")
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    ckpt_path, ckpt = out_dir / "checkpoint.pt", None
    if (args.resume or args.fill_mask is not None) and args.init_from is None:
        if not ckpt_path.exists():
            flag = "--resume" if args.resume else "--fill-mask"
            p.error(f"{flag}: no checkpoint at {ckpt_path}; train first (same --out-dir)")
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
    if args.resume:
        diff = [f"--{k.replace('_', '-')} {ckpt['config'].get(k)} -> {v}" for k, v in vars(args).items()
                if k not in RESUME_MAY_CHANGE and ckpt["config"].get(k) != v]
        if diff:
            p.error(f"--resume: {ckpt_path} was trained with other settings: {'; '.join(diff)}")

    def load_model():  # the released BERT with its WordPiece, or the checkpoint's model and words
        if args.init_from is not None:
            try:
                return Bert.from_hf(args.init_from, dropout=args.dropout, sdpa=args.sdpa).to(device), WordPiece(
                    Path(args.init_from) / "vocab.txt")
            except (ValueError, KeyError, OSError) as exc:
                sys.exit(f"error: --init-from {args.init_from}: {str(exc).splitlines()[0]}")
        model = Bert(BertConfig(**{**ckpt["model_config"], "sdpa": args.sdpa}))
        model.load_state_dict(ckpt["model"])
        return model.to(device), Words(ckpt["tokens"])

    if args.fill_mask is not None:
        model, tok = load_model()
        preds = fill_mask(model, tok, args.fill_mask)
        for i, top in enumerate(preds):
            print(f"[MASK] {i + 1}: " + ", ".join(f"{w} {q:.3f}" for w, q in top))
        return {"fill_mask": args.fill_mask, "predictions": preds}

    try:
        sents = {split: ptb_sentences(split, args.data_dir) for split in ("train", "valid", "test")}
    except DataError as exc:
        sys.exit(f"error: {exc}")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    if args.init_from is not None or ckpt is not None:
        model, tok = load_model()
    else:
        tok = build_vocab(sents["train"])
        model = Bert(BertConfig(args.block_size or 64, len(tok), 2, args.n_layer, args.n_head, args.n_embd,
                                4 * args.n_embd, args.dropout, sdpa=args.sdpa)).to(device)  # fmt: skip
    config = model.config
    T = min(args.block_size or config.block_size, config.block_size)
    ids = {k: [np.array(tok.encode(" ".join(s))) for s in v] for k, v in sents.items()}
    eval_sets = {name: [to_device(pretrain_batch(ids[split], args.batch_size, T, tok, np.random.default_rng(
        [args.seed, 1 + j, i]), args.mask_prob), device) for i in range(args.eval_iters)]
        for j, (name, split) in enumerate((("train", "train"), ("val", "valid")))}  # fmt: skip
    n_params = sum(q.numel() for q in model.parameters())
    print(f"BERT{' (released weights)' if args.init_from else ''}: {config.n_layer} post-LN blocks, hidden "
          f"{config.n_embd}, {config.n_head} heads, inputs of at most {T} tokens, vocabulary {len(tok):,}; "
          f"{n_params:,} params; {len(ids['train']):,} training and {len(ids['valid']):,} held-out sentences")

    # ---- pre-training: MLM + NSP on pairs of PTB training sentences ----
    opt = adamw(model.parameters(), args.lr, args.weight_decay)
    keys = [f"{s}_{k}" for s in ("train", "val") for k in ("mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc")]
    hist, start, saved, pre_s = {"iter": [], "lr": [], **{k: [] for k in keys}}, 0, None, 0.0
    if ckpt is not None:
        opt.load_state_dict(ckpt["opt"])
        hist, start, saved, pre_s = ckpt["hist"], ckpt["iter"], ckpt["iter"], ckpt["pre_s"]
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        print(f"resumed from {ckpt_path} at step {start}{': pre-training is done' if start >= args.max_iters else ''}")
    iters = range(start, args.max_iters) if args.init_from is None else range(0)  # released weights: done
    t0 = time.perf_counter()
    try:
        for it in tqdm(iters, desc="pre-training", disable=not sys.stdout.isatty()):
            lr = get_lr(it, args.lr, args.warmup_iters, args.max_iters)
            for g in opt.param_groups:
                g["lr"] = lr
            b = pretrain_batch(ids["train"], args.batch_size, T, tok, np.random.default_rng([args.seed, 0, it]),
                               args.mask_prob)  # fmt: skip
            loss = pretrain_loss(model, to_device(b, device))[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            opt.step()
            if (it + 1) % args.eval_interval == 0 or it + 1 == args.max_iters:
                point = {"iter": it + 1, "lr": lr}
                for split, batches in eval_sets.items():
                    point.update({f"{split}_{k}": v for k, v in evaluate(model, batches).items()})
                for k, v in point.items():
                    hist[k].append(v)
                elapsed = pre_s + time.perf_counter() - t0
                tqdm.write(f"step {it + 1:5d}/{args.max_iters}  MLM loss {point['train_mlm_loss']:.3f} | val MLM "
                           f"{point['val_mlm_loss']:.3f}, acc {point['val_mlm_acc']:.3f} | val NSP "
                           f"{point['val_nsp_loss']:.3f}, acc {point['val_nsp_acc']:.3f} | {elapsed / 60:.1f} min")
                save_checkpoint(ckpt_path, model=model.state_dict(), opt=opt.state_dict(), iter=it + 1, hist=hist,
                                torch_rng=torch.get_rng_state(), config=vars(args), model_config=asdict(config),
                                tokens=tok.tokens, pre_s=elapsed)
                saved = it + 1
    except KeyboardInterrupt:  # Ctrl-C: say what is saved and how to go on, without a traceback
        flags = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--resume"]
        script = f"{Path(__file__).resolve().parent.name}/{Path(__file__).name}"
        where = f"{ckpt_path} holds step {saved}. Resume with" if saved else "nothing saved. Start again with"
        print(f"\ninterrupted in pre-training; {where}:\n  " + shlex.join(["python", script, *flags]
              + (["--resume"] if saved else [])), file=sys.stderr)
        sys.exit(130)
    pre_s += time.perf_counter() - t0
    final = evaluate(model, eval_sets["val"])
    top_word = np.bincount(np.concatenate(ids["train"])).argmax()  # "the": what a model without context would say
    targets = torch.cat([b["mlm_labels"][b["mlm_labels"] >= 0] for b in eval_sets["val"]])
    unigram = (targets == int(top_word)).float().mean().item()
    predictions = {text: fill_mask(model, tok, text)[0] for text in EXAMPLES}
    print(f"pre-training: held-out MLM accuracy {final['mlm_acc']:.3f} (loss {final['mlm_loss']:.3f}; always "
          f"{tok.tokens[top_word]!r}: {unigram:.3f}), NSP accuracy {final['nsp_acc']:.3f} after {pre_s / 60:.1f} min; "
          f"masked words:")
    for text, top in predictions.items():
        print(f"  {text}\n    -> " + ", ".join(f"{w} {q:.2f}" for w, q in top))

    # ---- fine-tuning: as written or one word replaced? trained on the validation split, tested on the test split ----
    task = {k: replaced_word_task(sents[split][:n], tok, T - 2, np.random.default_rng([args.seed, 4, j]))
            for j, (k, split, n) in enumerate((("train", "valid", args.n_train), ("test", "test", args.n_test)))}
    if not task["train"] or not task["test"]:
        sys.exit(f"error: no PTB sentence of the fine-tuning task fits in {T} tokens; raise --block-size")
    top_label = Counter(y for _, y in task["train"]).most_common(1)[0][0]
    majority = float(np.mean([y == top_label for _, y in task["test"]]))
    print(f"fine-tuning: as written, or one word replaced? {len(task['train'])} training and "
          f"{len(task['test'])} test sentences; the majority class ({top_label}) is right on {majority:.3f}")
    torch.manual_seed(args.seed)
    scratch_model = Bert(config).to(device)  # the same network, not pre-trained
    results = {}
    try:
        for name, m in (("finetune", model), ("scratch", scratch_model)):
            t0 = time.perf_counter()
            head, losses = finetune(m, task["train"], tok, args, T, device, "pre-trained" if m is model else "scratch")
            results[name] = {"acc": accuracy(m, head, task["test"], tok, T, device), "losses": losses,
                             "train_acc": accuracy(m, head, task["train"], tok, T, device),
                             "minutes": (time.perf_counter() - t0) / 60}  # fmt: skip
            print(f"{name}: test accuracy {results[name]['acc']:.3f} (train {results[name]['train_acc']:.3f})")
    except KeyboardInterrupt:
        kept = f"pre-training is saved in {ckpt_path}; run again with --resume to go straight to fine-tuning"
        print(f"\ninterrupted in fine-tuning; {kept if saved else 'nothing saved'}", file=sys.stderr)
        sys.exit(130)

    accs = {"majority class": majority, "from scratch": results["scratch"]["acc"],
            "pre-trained": results["finetune"]["acc"]}  # fmt: skip
    plot(hist, results["finetune"]["losses"], results["scratch"]["losses"], accs, out_dir / "bert.png")
    with torch.device("meta"):
        presets = {name: sum(q.numel() for q in Bert(c).parameters()) for name, c in PRESETS.items()}
    metrics = {"script": Path(__file__).stem, "mlm_acc": final["mlm_acc"], "nsp_acc": final["nsp_acc"],
               "mlm_loss": final["mlm_loss"], "nsp_loss": final["nsp_loss"], "mlm_unigram_acc": unigram,
               "finetune_test_acc": results["finetune"]["acc"], "scratch_test_acc": results["scratch"]["acc"],
               "majority_acc": majority, "finetune_train_acc": results["finetune"]["train_acc"],
               "scratch_train_acc": results["scratch"]["train_acc"], "pretrain_minutes": pre_s / 60,
               "finetune_minutes": results["finetune"]["minutes"], "scratch_minutes": results["scratch"]["minutes"],
               "predictions": predictions, "params": n_params, "params_presets": presets, "vocab_size": len(tok),
               "n_task_train": len(task["train"]), "n_task_test": len(task["test"]), "init_from": args.init_from,
               "model_config": asdict(config), "device": str(device), "config": vars(args),
               "history": {"pretrain": hist, "finetune": results["finetune"]["losses"],
                           "scratch": results["scratch"]["losses"]}}  # fmt: skip
    save_metrics(out_dir, metrics, __file__, argv)
    return metrics


if __name__ == "__main__":
    main()
