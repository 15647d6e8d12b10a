"""An encoder-decoder GRU that translates English to French, decoded by greedy and by beam search.

Sutskever et al. read the source into a fixed vector and generate the target from it (d2l 10.6-10.7):

    encoder   h_t = GRU(e(x_t), h_{t-1})              c = h_S of the top layer (the whole source)  (B, H)
    decoder   s_t = GRU([e(y_{t-1}); c], s_{t-1})     s_0 = the encoder's final state           (L, B, H)
              p(y_t | y_<t, x) = softmax(W s_t + b)   trained with teacher forcing: y_{t-1} is the reference
    loss      sum_t m_t * -log p(y_t) / sum_t m_t     m_t = 1 on real tokens, 0 on padding

At test time the reference is gone and the decoder must search (d2l 10.8). Greedy search takes the
argmax token at every step; beam search keeps the k best prefixes by sum_t log p(y_t | y_<t, x) and
ranks finished ones by score / L^alpha (or GNMT's score / ((5 + L) / 6)^alpha), since an unnormalised
sum of log-probabilities always favours short sentences. Beam size 1 is greedy search.
BLEU (Papineni et al. 2002): exp(min(0, 1 - len_ref / len_hyp)) * prod_n p_n^w_n, p_n the clipped
n-gram precision; d2l's sentence BLEU uses w_n = 1/2^n, corpus BLEU sums the counts over all
sentences and uses w_n = 1/4 for n <= 4 (as sacreBLEU).

Reading: I. Sutskever, O. Vinyals, Q. V. Le (2014), "Sequence to Sequence Learning with Neural
Networks", https://arxiv.org/abs/1409.3215; K. Cho et al. (2014), https://arxiv.org/abs/1406.1078;
K. Papineni et al. (2002), "BLEU", https://aclanthology.org/P02-1040; Y. Wu et al. (2016), GNMT,
https://arxiv.org/abs/1609.08144; d2l 10.5-10.8, https://d2l.ai/chapter_recurrent-modern/seq2seq.html
Arc: Translation -- encoder-decoder RNN with greedy search; beam search.

Run:  python 05-rnns/seq2seq_torch.py                      (a quarter of an hour on two CPU cores)
      python 05-rnns/seq2seq_torch.py --reverse-source --out-dir runs/seq2seq_reversed
      python 05-rnns/seq2seq_torch.py --translate "i am cold ."   (uses the run's checkpoint)
Look first at `Decoder.forward` (the context fed at every step), `masked_loss`, then `beam_search`
against `greedy_search`; then the example table that the run prints.
"""

# %%
import argparse
import math
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from data import (
    DataError,
    Vocab,
    fra_eng,
    nmt_arrays,
    nmt_vocab,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    probability,
    save_metrics,
    split_by_source,
    tokenize_nmt,
)

PAD, BOS, EOS = 1, 2, 3  # nmt_vocab's indices (<unk> is 0)

# %% [markdown]
# ## BLEU, written out


# %%
def ngrams(tokens, n):
    """Counter of the n-grams of a token list: ngrams(["a", "b", "a", "b"], 2) = {("a","b"): 2, ("b","a"): 1}."""
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu_d2l(pred, label, k=2):
    """d2l's sentence BLEU: exp(min(0, 1 - len_label / len_pred)) * prod_{n<=k} p_n^(1/2^n)."""
    if len(pred) == 0:
        return 0.0
    score = math.exp(min(0.0, 1 - len(label) / len(pred)))  # brevity penalty
    for n in range(1, k + 1):
        if len(pred) - n + 1 <= 0:  # no n-grams to count
            return 0.0
        matches = sum((ngrams(pred, n) & ngrams(label, n)).values())  # clipped: min of the two counts
        score *= (matches / (len(pred) - n + 1)) ** (0.5**n)  # p_n^(1/2^n)
    return score


def corpus_bleu(hypotheses, references, max_n=4, smooth="exp"):
    """Corpus BLEU on a 0-100 scale from token lists, one reference each, as sacreBLEU computes it.

    Clipped n-gram matches and n-gram totals are summed over all sentences, then
    BLEU = BP * exp(mean_n log p_n), BP = exp(1 - ref_len / hyp_len) when the hypotheses are shorter.
    smooth="exp" (sacreBLEU's default, NIST's mteval): an order with no match gets p_n = 1 / (2^j * total_n)
    for its j-th occurrence instead of 0; smooth="none": any order with no match gives BLEU 0.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    correct, total, hyp_len, ref_len = [0] * max_n, [0] * max_n, 0, 0
    for hyp, ref in zip(hypotheses, references):
        hyp_len, ref_len = hyp_len + len(hyp), ref_len + len(ref)
        for n in range(1, max_n + 1):
            correct[n - 1] += sum((ngrams(hyp, n) & ngrams(ref, n)).values())
            total[n - 1] += max(len(hyp) - n + 1, 0)
    if not any(correct):
        return 0.0
    bp = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    log_p, halvings = 0.0, 1
    for c, t in zip(correct, total):
        if t == 0:  # hypotheses too short to have n-grams of this order
            return 0.0
        if c == 0:
            if smooth != "exp":
                return 0.0
            halvings *= 2
            log_p += math.log(1 / (halvings * t)) / max_n
        else:
            log_p += math.log(c / t) / max_n
    return 100 * bp * math.exp(log_p)


# %% [markdown]
# ## The encoder, the decoder and the masked loss


# %%
class Encoder(nn.Module):
    """Embedding -> L-layer GRU over the source. src (B, S), src_len (B,) -> outputs (B, S, H), state (L, B, H)."""

    def __init__(self, vocab_size, embed_dim, hidden_size, layers, dropout):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.rnn = nn.GRU(embed_dim, hidden_size, layers, dropout=dropout, batch_first=True)

    def forward(self, src, src_len):
        x = self.embedding(src)  # (B, S, E)
        # packing stops each sentence's GRU at its last real token: the state is h_{len}, not h after padding
        packed = nn.utils.rnn.pack_padded_sequence(x, src_len.cpu(), batch_first=True, enforce_sorted=False)
        outputs, state = self.rnn(packed)
        outputs, _ = nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True, total_length=src.shape[1])
        return outputs, state  # (B, S, H) zero past src_len, (L, B, H)


class Decoder(nn.Module):
    """GRU over [e(y_{t-1}); c] with state s_0 = the encoder's final state, then a linear layer to the vocabulary."""

    def __init__(self, vocab_size, embed_dim, hidden_size, layers, dropout):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.rnn = nn.GRU(embed_dim + hidden_size, hidden_size, layers, dropout=dropout, batch_first=True)
        self.dense = nn.Linear(hidden_size, vocab_size)

    def forward(self, y, state, context):
        """y (B, T) tokens, state (L, B, H), context c (B, H) -> logits (B, T, V), state (L, B, H)."""
        x = self.embedding(y)  # (B, T, E)
        c = context[:, None, :].expand(-1, y.shape[1], -1)  # (B, T, H): the same c at every step
        out, state = self.rnn(torch.cat([x, c], dim=-1), state)  # (B, T, H)
        return self.dense(out), state


class Seq2Seq(nn.Module):
    """The encoder-decoder. Decoding goes through `start` and `step`, which beam search also uses."""

    def __init__(self, src_vocab, tgt_vocab, embed_dim, hidden_size, layers, dropout):
        super().__init__()
        self.encoder = Encoder(src_vocab, embed_dim, hidden_size, layers, dropout)
        self.decoder = Decoder(tgt_vocab, embed_dim, hidden_size, layers, dropout)
        for name, w in self.named_parameters():  # Xavier for every matrix, as d2l's seq2seq (biases stay)
            if w.dim() == 2 and "embedding" not in name:
                nn.init.xavier_uniform_(w)

    def start(self, src, src_len):
        """Encode the source: (the decoder's first state (L, B, H), memory: a tuple of (B, ...) tensors)."""
        _, state = self.encoder(src, src_len)
        return state, (state[-1],)  # memory: the context c = h_S of the top layer

    def step(self, y, state, memory):
        """One decoding step: y (B,) -> logits (B, V), state (L, B, H)."""
        logits, state = self.decoder(y[:, None], state, *memory)
        return logits[:, 0], state

    def forward(self, src, src_len, dec_in):
        """Teacher forcing: the whole reference prefix at once. -> logits (B, T, V)."""
        state, (context,) = self.start(src, src_len)
        return self.decoder(dec_in, state, context)[0]


def masked_loss(logits, label, label_len):
    """Mean cross-entropy over real tokens only: sum_t m_t * -log p(y_t) / sum_t m_t.   logits (B, T, V)."""
    mask = (torch.arange(label.shape[1], device=label.device)[None, :] < label_len[:, None]).float()  # (B, T)
    nll = F.cross_entropy(logits.transpose(1, 2), label, reduction="none")  # (B, T)
    return (nll * mask).sum() / mask.sum()


# %% [markdown]
# ## Greedy search and beam search


# %%
@torch.no_grad()
def greedy_search(model, src, src_len, max_len):
    """The argmax token at every step, for a batch. -> one id list per sentence, ending with EOS if it finished."""
    model.eval()
    state, memory = model.start(src, src_len)
    y = torch.full((src.shape[0],), BOS, dtype=torch.long, device=src.device)
    out, done = [], torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    for _ in range(max_len):
        logits, state = model.step(y, state, memory)
        y = logits.argmax(-1)  # (B,)
        out.append(y)
        done |= y == EOS
        if done.all():
            break
    out = torch.stack(out, dim=1).tolist()  # (B, steps)
    return [seq[: seq.index(EOS) + 1] if EOS in seq else seq for seq in out]


def length_penalty(L, alpha, penalty="power"):
    """The divisor of a finished hypothesis's log-probability: L^alpha, or GNMT's ((5 + L) / 6)^alpha."""
    return L**alpha if penalty == "power" else ((5 + L) / 6) ** alpha


@torch.no_grad()
def beam_search(model, src, beam_size, max_len, alpha=0.75, penalty="power"):
    """Beam search for one source sentence src (S,) of ids ending with EOS. -> (ids, score).

    Keeps the beam_size best unfinished prefixes by log p(prefix); a prefix that emits EOS among the
    beam_size best candidates of a step is finished. The search stops when beam_size are finished
    (or after max_len steps, when the unfinished ones compete too if none finished). The answer is
    the finished hypothesis with the best score = sum_t log p(y_t | y_<t, x) / length_penalty(L),
    L = its length with EOS. With beam_size 1 this is exactly greedy search.
    """
    model.eval()
    state, memory = model.start(src[None], torch.tensor([len(src)], device=src.device))
    prefixes, logp = [[]], torch.zeros(1, device=src.device)  # the live beam: ids after BOS, log p of each
    finished = []  # (score, ids)
    for _ in range(max_len):
        y = torch.tensor([p[-1] if p else BOS for p in prefixes], device=src.device)  # (k,)
        logits, state = model.step(y, state, memory)  # (k, V)
        cand = (logp[:, None] + F.log_softmax(logits, dim=-1)).flatten()  # (k * V,) log p(prefix + w)
        top = cand.topk(min(2 * beam_size, len(cand)))  # enough that beam_size survive EOS
        keep = []
        for rank, (lp, i) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            beam, w = divmod(i, logits.shape[1])
            if w == EOS:
                if rank < beam_size:  # only an EOS among the beam_size best candidates finishes
                    ids = prefixes[beam] + [EOS]
                    finished.append((lp / length_penalty(len(ids), alpha, penalty), ids))
            elif len(keep) < beam_size:
                keep.append((beam, w, lp))
        if len(finished) >= beam_size:
            break
        rows = torch.tensor([b for b, _, _ in keep], device=src.device)
        prefixes = [prefixes[b] + [w] for b, w, _ in keep]
        logp = torch.tensor([lp for _, _, lp in keep], device=src.device)
        state, memory = state[:, rows], tuple(m[rows] for m in memory)  # each survivor carries its parent's state
    if not finished:  # nothing ended within max_len: rank the unfinished prefixes the same way
        finished = [(lp / length_penalty(len(p), alpha, penalty), p) for p, lp in zip(prefixes, logp.tolist())]
    score, ids = max(finished, key=lambda f: f[0])
    return ids, score


def strip(ids, vocab):
    """Ids up to (not including) EOS as words."""
    ids = ids[: ids.index(EOS)] if EOS in ids else ids
    return vocab.decode(ids)


# %% [markdown]
# ## Data: the split, the vocabularies, the arrays


# %%
def load_translation(max_len, n_train, n_test, n_val, min_freq, seed, data_dir=None):
    """Pairs with at most max_len words a side, split by source sentence; vocabularies from the training pairs."""
    pairs = fra_eng(data_dir)
    src = [tokenize_nmt(en) for en, _ in pairs]
    tgt = [tokenize_nmt(fr) for _, fr in pairs]
    kept = [i for i in range(len(pairs)) if 0 < len(src[i]) <= max_len and 0 < len(tgt[i]) <= max_len]
    src, tgt = [src[i] for i in kept], [tgt[i] for i in kept]
    split = split_by_source(src, n_test=n_test, n_val=n_val, seed=seed)
    n_available = len(split["train"])
    split["train"] = split["train"][:n_train]  # a random sample: train indices come in shuffled order
    src_vocab = nmt_vocab([src[i] for i in split["train"]], min_freq)
    tgt_vocab = nmt_vocab([tgt[i] for i in split["train"]], min_freq)
    arrays = {name: nmt_arrays([src[i] for i in idx], [tgt[i] for i in idx], src_vocab, tgt_vocab, max_len + 1)
              for name, idx in split.items()}
    words = {name: ([src[i] for i in idx], [tgt[i] for i in idx]) for name, idx in split.items()}
    stats = {"pairs_in_file": len(pairs), "pairs_within_max_len": len(kept), "train_available": n_available}
    return arrays, words, src_vocab, tgt_vocab, stats


def reverse_source(src, src_len):
    """Sutskever's trick: the source words in reverse order, <eos> and padding left in place."""
    out = src.clone()
    for i, n in enumerate(src_len.tolist()):
        out[i, : n - 1] = src[i, : n - 1].flip(0)
    return out


def to_tensors(arrays, device):
    return {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}


@torch.no_grad()
def evaluate_loss(model, t, batch_size):
    """Mean masked cross-entropy per target token over a split (dropout off)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(t["src"]), batch_size):
        b = {k: v[i : i + batch_size] for k, v in t.items()}
        n = b["label_len"].sum().item()
        total += masked_loss(model(b["src"], b["src_len"], b["dec_in"]), b["label"], b["label_len"]).item() * n
        count += n
    model.train()
    return total / count


def translate_split(model, t, max_len, beam_size, alpha, penalty, batch_size=256, desc=None):
    """Id lists for every source of a split: batched greedy search (beam_size 0) or beam search one by one."""
    if beam_size == 0:
        return [ids for i in range(0, len(t["src"]), batch_size)
                for ids in greedy_search(model, t["src"][i : i + batch_size], t["src_len"][i : i + batch_size],
                                         max_len)]
    rows = tqdm(range(len(t["src"])), desc=desc, leave=False, disable=not sys.stdout.isatty())
    return [beam_search(model, t["src"][i, : t["src_len"][i]], beam_size, max_len, alpha, penalty)[0] for i in rows]


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


def translate_sentence(args, ckpt_path, device):
    """--translate: the run's checkpoint translates one sentence, greedy and with each beam size."""
    ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
    cfg, (src_words, tgt_words) = ckpt["config"], ckpt["vocab"]
    src_vocab, tgt_vocab = Vocab((), 0, src_words[1:]), Vocab((), 0, tgt_words[1:])  # the same lists, <unk> first
    model = Seq2Seq(len(src_words), len(tgt_words), cfg["embed_dim"], cfg["hidden_size"], cfg["layers"], 0.0)
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    words = tokenize_nmt(args.translate)
    unknown = [w for w in words if w not in src_vocab.token_to_idx]
    if unknown:
        print(f"unknown to the model (read as <unk>): {' '.join(unknown)}")
    src = torch.from_numpy(np.append(src_vocab.encode(words), EOS)).to(device)
    if cfg["reverse_source"]:
        src[:-1] = src[:-1].flip(0)
    src_len = torch.tensor([len(src)], device=device)
    out = {"source": " ".join(words),
           "greedy": " ".join(strip(greedy_search(model, src[None], src_len, cfg["max_len"] + 1)[0], tgt_vocab))}
    for k in args.beam_sizes:
        ids, score = beam_search(model, src, k, cfg["max_len"] + 1, args.length_alpha, args.length_penalty)
        out[f"beam {k}"] = f"{' '.join(strip(ids, tgt_vocab))}   (score {score:.3f})"
    for name, text in out.items():
        print(f"{name:>8}: {text}")
    return out


# %% [markdown]
# ## Main: one flat training loop, then decoding and BLEU on the test set


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="passes over the training pairs (default 8; 5 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="sentence pairs per minibatch (default 128)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="Adam learning rate (default 3e-3; 1e-2 with --smoke)")
    p.add_argument("--clip", type=nonneg_float, default=1.0,
                   help="max global gradient norm, 0: no clipping (default 1)")
    p.add_argument("--embed-dim", type=positive_int, default=None,
                   help="word embedding size (default 256; 64 with --smoke)")
    p.add_argument("--hidden-size", type=positive_int, default=None,
                   help="GRU state size H (default 256; 128 with --smoke)")
    p.add_argument("--layers", type=positive_int, default=2, help="GRU layers in encoder and decoder (default 2)")
    p.add_argument("--dropout", type=probability, default=0.2, help="dropout between GRU layers (default 0.2)")
    p.add_argument("--max-len", type=positive_int, default=None,
                   help="keep pairs with at most this many words a side; decode at most this + 1 tokens "
                   "(default 8; 5 with --smoke)")
    p.add_argument("--n-train", type=positive_int, default=None,
                   help="training pairs, a random sample of the training split; more than there are: all "
                   "(default 30000; 6000 with --smoke)")
    p.add_argument("--n-test", type=positive_int, default=None,
                   help="test pairs, never trained on (default 2000; 300 with --smoke)")
    p.add_argument("--min-freq", type=positive_int, default=None,
                   help="words seen fewer times in training become <unk> (default 3; 2 with --smoke)")
    p.add_argument("--reverse-source", action="store_true",
                   help="feed the source words in reverse order (Sutskever et al.)")
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
    p.add_argument("--out-dir", default=None, help="for metrics, examples, checkpoint (default runs/<script>)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run: short pairs, a small net")
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    defaults = {"epochs": (5, 8), "lr": (1e-2, 3e-3), "embed_dim": (64, 256), "hidden_size": (128, 256),
                "max_len": (5, 8), "min_freq": (2, 3), "n_train": (6000, 30_000), "n_test": (300, 2000)}
    for name, (smoke, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    ckpt_path = out_dir / "checkpoint.pt"
    if args.translate is not None:
        n_words = len(tokenize_nmt(args.translate))
        if not 0 < n_words <= 50:
            p.error(f"--translate: {n_words} words; give a sentence of 1 to 50 words (the sentence is empty or long)")
        if not ckpt_path.exists():
            p.error(f"--translate: no checkpoint at {ckpt_path}: train first (same --out-dir)")
        return translate_sentence(args, ckpt_path, device)
    ckpt = None
    if args.resume:
        if not ckpt_path.exists():
            p.error(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        may_change = {"epochs", "resume", "device", "data_dir", "out_dir", "beam_sizes", "translate", "length_alpha",
                      "length_penalty"}  # where to run and how to decode; every other flag shapes the training
        diff = [f"--{k.replace('_', '-')} {ckpt['config'].get(k)} -> {v}" for k, v in vars(args).items()
                if k not in may_change and ckpt["config"].get(k) != v]
        if diff:
            p.error(f"--resume: {ckpt_path} was trained with other settings: {'; '.join(diff)}")
        if ckpt["epoch"] >= args.epochs:
            p.error(f"nothing to do: the checkpoint has {ckpt['epoch']} epochs, --epochs is {args.epochs}")
    try:
        n_val = 200 if args.smoke else 1000
        arrays, words, src_vocab, tgt_vocab, stats = load_translation(
            args.max_len, args.n_train, args.n_test, n_val, args.min_freq, args.seed, args.data_dir)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    out_dir.mkdir(parents=True, exist_ok=True)
    t = {name: to_tensors(a, device) for name, a in arrays.items()}
    if args.reverse_source:
        for name in t:
            t[name]["src"] = reverse_source(t[name]["src"], t[name]["src_len"])
    n_train = len(t["train"]["src"])
    print(f"{stats['pairs_within_max_len']:,} of {stats['pairs_in_file']:,} pairs have at most {args.max_len} words "
          f"a side; train {n_train:,} (of {stats['train_available']:,}), val {len(t['val']['src']):,}, "
          f"test {len(t['test']['src']):,}; vocabularies {len(src_vocab):,} English, {len(tgt_vocab):,} French")

    torch.manual_seed(args.seed)
    model = Seq2Seq(len(src_vocab), len(tgt_vocab), args.embed_dim, args.hidden_size, args.layers, args.dropout)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    hist = {"train_loss": [], "val_loss": [], "val_bleu": [], "epoch_s": []}
    start = 1
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        hist, start = ckpt["hist"], ckpt["epoch"] + 1
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        print(f"resumed from {ckpt_path} after epoch {ckpt['epoch']}")
    saved = start - 1
    val_refs = words["val"][1]

    try:
        for epoch in range(start, args.epochs + 1):
            t0 = time.perf_counter()
            order = torch.from_numpy(np.random.default_rng([args.seed, epoch]).permutation(n_train)).to(device)
            losses = []
            batches = range(0, n_train, args.batch_size)
            for i in tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=not sys.stdout.isatty()):
                b = {k: v[order[i : i + args.batch_size]] for k, v in t["train"].items()}
                logits = model(b["src"], b["src_len"], b["dec_in"])  # (B, T, V), teacher forcing
                loss = masked_loss(logits, b["label"], b["label_len"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if args.clip > 0:  # clipping by global norm, as taught in 05-rnns/rnn_numpy.py
                    nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                opt.step()
                losses.append(loss.detach())
            hist["train_loss"].append(torch.stack(losses).mean().item())
            hist["val_loss"].append(evaluate_loss(model, t["val"], 512))
            hyps = translate_split(model, t["val"], args.max_len + 1, 0, args.length_alpha, args.length_penalty)
            hist["val_bleu"].append(corpus_bleu([strip(h, tgt_vocab) for h in hyps], val_refs))
            hist["epoch_s"].append(time.perf_counter() - t0)
            print(f"epoch {epoch:2d}/{args.epochs}  train loss {hist['train_loss'][-1]:.3f} | val loss "
                  f"{hist['val_loss'][-1]:.3f} | val BLEU (greedy) {hist['val_bleu'][-1]:.2f} | "
                  f"{hist['epoch_s'][-1]:.1f} s", flush=True)
            save_checkpoint(ckpt_path, model=model.state_dict(), opt=opt.state_dict(), epoch=epoch, hist=hist,
                            torch_rng=torch.get_rng_state(), config=vars(args),
                            vocab=(src_vocab.idx_to_token, tgt_vocab.idx_to_token))
            saved = epoch
    except KeyboardInterrupt:  # Ctrl-C: say what is saved and how to go on, without a traceback
        flags = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--resume"]
        script = f"{Path(__file__).resolve().parent.name}/{Path(__file__).name}"
        where = f"{ckpt_path} holds epoch {saved}. Resume with" if saved else "nothing saved. Start again with"
        print(f"\ninterrupted in epoch {epoch}; {where}:\n  " + shlex.join(["python", script, *flags]
              + (["--resume"] if saved else [])), file=sys.stderr)
        sys.exit(130)

    # Decoding the test set: greedy, then each beam size; corpus BLEU against the one reference of each pair.
    t0 = time.perf_counter()
    test_src, test_refs = words["test"]
    hyps = {"greedy": translate_split(model, t["test"], args.max_len + 1, 0, args.length_alpha, args.length_penalty)}
    for k in args.beam_sizes:
        hyps[f"beam {k}"] = translate_split(model, t["test"], args.max_len + 1, k, args.length_alpha,
                                            args.length_penalty, desc=f"beam {k}")
    bleu = {name: corpus_bleu([strip(h, tgt_vocab) for h in hs], test_refs) for name, hs in hyps.items()}
    decode_s = time.perf_counter() - t0
    print("test BLEU  " + " | ".join(f"{name} {b:.2f}" for name, b in bleu.items()))
    # greedy BLEU by source length, 4 words a bucket: where a fixed-size context (or attention) helps or not
    by_length = {}
    for lo in range(1, args.max_len + 1, 4):
        idx = [i for i, s in enumerate(test_src) if lo <= len(s) < lo + 4]
        if idx:
            by_length[f"{lo}-{lo + 3} words"] = {"pairs": len(idx), "bleu": corpus_bleu(
                [strip(hyps["greedy"][i], tgt_vocab) for i in idx], [test_refs[i] for i in idx])}
    print("greedy BLEU by source length  " + " | ".join(f"{k} ({v['pairs']} pairs) {v['bleu']:.2f}"
                                                      for k, v in by_length.items()))
    best_beam = max(args.beam_sizes)
    rows = np.linspace(0, len(test_src) - 1, 12).astype(int)
    examples = [{"source": " ".join(test_src[i]), "reference": " ".join(test_refs[i]),
                 "greedy": " ".join(strip(hyps["greedy"][i], tgt_vocab)),
                 f"beam {best_beam}": " ".join(strip(hyps[f"beam {best_beam}"][i], tgt_vocab))} for i in rows]
    table = ["| source | reference | greedy | beam " + str(best_beam) + " |", "|---|---|---|---|"]
    table += ["| " + " | ".join(e.values()) + " |" for e in examples]
    (out_dir / "examples.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))

    metrics = {"script": Path(__file__).stem, "test_bleu": bleu["greedy"],
               "test_bleu_beam": {str(k): bleu[f"beam {k}"] for k in args.beam_sizes},
               "val_loss": hist["val_loss"][-1], "train_loss": hist["train_loss"][-1],
               "train_minutes": sum(hist["epoch_s"]) / 60, "decode_s": decode_s, "n_train": n_train,
               "n_test": len(test_src), "src_vocab": len(src_vocab), "tgt_vocab": len(tgt_vocab), **stats,
               "params": sum(q.numel() for q in model.parameters()), "reverse_source": args.reverse_source,
               "test_bleu_by_length": by_length, "examples": examples, "device": str(device), "config": vars(args),
               "history": {k: hist[k] for k in ("train_loss", "val_loss", "val_bleu")}}
    save_metrics(out_dir, metrics, __file__, argv)
    return metrics


if __name__ == "__main__":
    main()
