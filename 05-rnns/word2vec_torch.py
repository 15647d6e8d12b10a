"""word2vec in PyTorch: skip-gram with negative sampling on the Penn Treebank, then similarity and analogy.

Skip-gram (Mikolov et al. 2013a) learns two vectors per word w: a centre vector v_w (a row of V) and
a context vector u_w (a row of U), such that u_o . v_c is large when o occurs near c. The full model
p(o | c) = softmax_o(u_o . v_c) needs a sum over the whole vocabulary for every pair; negative
sampling (Mikolov et al. 2013b; d2l 15.2) replaces it by K binary questions per true pair: is (c, o)
a real pair (label 1), and is each of K noise words w_k ~ P_n(w) proportional to count(w)^0.75 one
(label 0)? With s = u . v_c and sigma(s) = 1 / (1 + exp(-s)):

    l(c, o) = -log sigma(u_o . v_c) - sum_k log sigma(-u_{w_k} . v_c)
    l(s, y) = -[y log sigma(s) + (1 - y) log sigma(-s)],        dl/ds = sigma(s) - y     (one entry)
    L = sum(mask * l) / sum(mask)                                (over the real entries of the batch)
The model is two nn.Embedding tables and a dot product; autograd gives the gradients (word2vec_numpy.py
writes them by hand). Batches (d2l 15.3, `data.skipgram_batches`): row b holds centre c_b's contexts,
then their noise words, then padding. Word vectors are the centre vectors V (as d2l 15.4); the script
also reports V + U, the sum GloVe uses. Similarity (d2l 15.7) is the cosine; a : b :: c : ? is the word
nearest to b - a + c (unit vectors, 3CosAdd), excluding a, b and c. A held-out check the loss alone does
not give: on PTB's validation sentences, how often a true context outscores a noise word of the same
centre (pair AUC; 0.5 = chance, the untrained model's exact value since all its scores are 0).

Reading: T. Mikolov, K. Chen, G. Corrado and J. Dean (2013a), "Efficient Estimation of Word
Representations in Vector Space", https://arxiv.org/abs/1301.3781 ; T. Mikolov, I. Sutskever, K. Chen,
G. Corrado and J. Dean (2013b), "Distributed Representations of Words and Phrases and their
Compositionality", https://arxiv.org/abs/1310.4546 ; d2l 15.1-15.4 and 15.7,
https://d2l.ai/chapter_natural-language-processing-pretraining/word2vec-pretraining.html ;
CS224n lecture notes 1 (word vectors).
Arc: NLP pretraining (word embeddings) -- word2vec, skip-gram with negative sampling on PTB, in PyTorch.

Run:  python 05-rnns/word2vec_torch.py                  (full PTB, 5 epochs, minutes on one CPU core)
      python 05-rnns/word2vec_torch.py --vectors sum --probes stock,japan,monday --embed-dim 50
      python 05-rnns/word2vec_torch.py --smoke          (seconds: 3,000 sentences, d = 32)
Look first at `SkipGram.forward` and `sgns_loss` (the whole model and objective in a dozen lines),
then at the neighbours printed at the end and at runs/word2vec_torch/embeddings_pca.png.
"""

# %%
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from tqdm import tqdm

from data import (
    DataError,
    centers_and_contexts,
    noise_distribution,
    nonneg_int,
    positive_float,
    positive_int,
    ptb_sentences,
    ptb_word2vec,
    save_metrics,
    skipgram_batches,
    subsample,
)

PROBES = ("chip", "baby", "beautiful", "intel")
# a : b :: c : d, all in PTB's 6,719-word vocabulary (gender, comparatives, tense, plurals, nationality)
ANALOGIES = (
    ("he", "she", "his", "her"),
    ("man", "woman", "father", "mother"),
    ("big", "bigger", "small", "smaller"),
    ("good", "better", "bad", "worse"),
    ("buy", "bought", "sell", "sold"),
    ("rise", "rose", "fall", "fell"),
    ("year", "years", "month", "months"),
    ("company", "companies", "bank", "banks"),
    ("japan", "japanese", "germany", "german"),
    ("britain", "british", "france", "french"),
)
# the word set of the PCA figure: a few groups that a good embedding should keep apart
WORD_GROUPS = {
    "weekdays": ("monday", "tuesday", "wednesday", "thursday", "friday"),
    "months": ("january", "march", "april", "june", "july", "october", "december"),
    "numbers": ("two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "tech": ("ibm", "intel", "apple", "computer", "computers", "software", "chip", "chips"),
    "family": ("man", "woman", "father", "mother", "son", "daughter", "husband", "wife", "baby", "children"),
    "markets": ("stock", "stocks", "shares", "bonds", "prices", "rose", "fell", "higher", "lower"),
}

# %% [markdown]
# ## The model and the loss


# %%
class SkipGram(nn.Module):
    """Centre vectors V and context vectors U, both (vocab_size, d); a score s = u_o . v_c per entry."""

    def __init__(self, vocab_size, embed_size):
        super().__init__()
        for name, value in [("vocab_size", vocab_size), ("embed_size", embed_size)]:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SkipGram: {name} must be a positive int, got {value!r}")
        self.V = nn.Embedding(vocab_size, embed_size)  # v_w: the word as a centre
        self.U = nn.Embedding(vocab_size, embed_size)  # u_w: the word as a context (or noise word)
        with torch.no_grad():  # word2vec's own init: small random V, zero U, so every score starts at 0
            self.V.weight.uniform_(-0.5 / embed_size, 0.5 / embed_size)
            self.U.weight.zero_()

    def forward(self, center, ctx_neg):
        """center (B,) and ctx_neg (B, L) word indices -> scores (B, L), s[b, j] = u_{ctx_neg[b, j]} . v_{center[b]}."""
        v = self.V(center)  # (B, d)
        u = self.U(ctx_neg)  # (B, L, d)
        return torch.bmm(u, v.unsqueeze(2)).squeeze(2)  # (B, L, d) @ (B, d, 1) -> (B, L)


def sgns_loss(scores, label, mask):
    """Masked binary cross-entropy with logits, averaged over the real entries: sum(mask * l) / sum(mask).

    scores, label, mask (B, L); label 1 on true contexts, 0 on noise words; mask 0 on padding.
    """
    # Averaged over all real entries of the batch, not first within each row as d2l does: that would give
    # a pair of a centre with a 1-word window up to five times the weight of a pair of a centre with a
    # 5-word window; this way every (centre, word) pair counts the same, as in Mikolov's code, where each
    # pair is one SGD step. F.logsigmoid is log sigma(s) = -log(1 + exp(-s)) without overflow.
    # l = -[y log sigma(s) + (1 - y) log sigma(-s)]                                     (B, L)
    l = -(label * F.logsigmoid(scores) + (1 - label) * F.logsigmoid(-scores))
    return (l * mask).sum() / mask.sum()  # padding (mask 0) adds nothing to the loss or the gradient


# %% [markdown]
# ## Similarity, analogy and a 2-D projection (d2l 15.7)


# %%
def word_index(vocab, word):
    """The index of `word`; a ValueError naming the word if the vocabulary lacks it."""
    i = vocab.token_to_idx.get(word, vocab.unk)
    if i == vocab.unk:
        raise ValueError(f"{word!r} is not in the vocabulary ({len(vocab)} words, min_freq applied)")
    return i


def unit_rows(W):
    """Each row scaled to length 1, so that a dot product is a cosine.   (N, d) -> (N, d)"""
    return W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)


def nearest(W, vocab, x, k, exclude=()):
    """The k words whose rows of W have the largest cosine with the vector x: [[word, cosine], ...]."""
    cos = unit_rows(W) @ (x / max(np.linalg.norm(x), 1e-12))  # (V,) cos(w, x)
    cos[[vocab.unk, *exclude]] = -np.inf  # <unk> never trains (dropped from the corpus), nor are the queries answers
    top = np.argsort(-cos, kind="stable")[:k]
    return [[vocab.idx_to_token[i], float(cos[i])] for i in top]


def neighbours(W, vocab, word, k=5):
    """The k nearest words of `word` by cosine similarity, the word itself excluded."""
    i = word_index(vocab, word)
    return nearest(W, vocab, W[i], k, exclude=[i])


def analogy(W, vocab, a, b, c, k=1):
    """a : b :: c : ?  -> the k words nearest to b - a + c (unit vectors), a, b and c excluded."""
    ia, ib, ic = (word_index(vocab, w) for w in (a, b, c))
    Wn = unit_rows(W)
    return nearest(W, vocab, Wn[ib] - Wn[ia] + Wn[ic], k, exclude=[ia, ib, ic])


def pca_2d(X):
    """The rows of X projected on their first two principal axes, and the share of variance of each axis.

    Centre the rows, Xc = X - mean; the SVD Xc = P S Q^T gives the principal axes as the rows of Q^T,
    and the coordinates on the first two as Xc Q[:, :2]. Variance along axis j: S_j^2 / (N - 1).
    """
    Xc = X - X.mean(axis=0)  # (N, d)
    _, S, Qt = np.linalg.svd(Xc, full_matrices=False)
    return Xc @ Qt[:2].T, S[:2] ** 2 / (S**2).sum()  # (N, 2), (2,)


def plot_pca(W, vocab, path, title):
    """The WORD_GROUPS words in the vocabulary, as unit vectors projected by PCA, labelled, one colour per group."""
    groups = {g: [w for w in ws if w in vocab.token_to_idx] for g, ws in WORD_GROUPS.items()}
    words = [w for ws in groups.values() for w in ws]
    if len(words) < 3:
        return False  # a small vocabulary (a --smoke subset) may hold too few of them
    xy, share = pca_2d(unit_rows(W[[vocab.token_to_idx[w] for w in words]]))
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.subplots()
    start = 0
    for g, ws in groups.items():
        pts = xy[start:start + len(ws)]
        start += len(ws)
        if ws:
            dots = ax.scatter(pts[:, 0], pts[:, 1], s=18, label=g)
            for (px, py), w in zip(pts, ws):
                ax.annotate(w, (px, py), xytext=(3, 3), textcoords="offset points", fontsize=8,
                            color=dots.get_facecolor()[0])
    ax.set(xlabel=f"PC 1 ({share[0]:.0%} of the variance)", ylabel=f"PC 2 ({share[1]:.0%})", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    return True


# %% [markdown]
# ## Data and held-out evaluation


# %%
def heldout_pairs(vocab, counts, window, t, seed, data_dir=None, max_sentences=None):
    """Centres and contexts from PTB's validation sentences, prepared as the training ones (same vocab, counts)."""
    rng = np.random.default_rng([seed, 1])
    corpus = [vocab.encode(s) for s in ptb_sentences("valid", data_dir)[:max_sentences]]
    corpus = [s[s != vocab.unk] for s in corpus]
    return centers_and_contexts(subsample(corpus, counts, t=t, rng=rng), window, rng=rng)


def to_tensors(batch, device):
    center, ctx_neg, mask, label = batch
    return (torch.from_numpy(center).to(device), torch.from_numpy(ctx_neg).to(device),
            torch.from_numpy(mask).float().to(device), torch.from_numpy(label).float().to(device))


@torch.no_grad()
def evaluate(model, centers, contexts, probs, batch_size, num_noise, seed, device):
    """Loss and pair AUC on fixed pairs and noise words: P(s(c, context) > s(c, noise)), ties counting 1/2."""
    rng = np.random.default_rng([seed, 2])  # the same noise words at every evaluation
    total = count = wins = pairs = 0.0
    for batch in skipgram_batches(centers, contexts, probs, batch_size, num_noise, rng=rng, shuffle=False):
        center, ctx_neg, mask, label = to_tensors(batch, device)
        s = model(center, ctx_neg)  # (B, L)
        total += sgns_loss(s, label, mask).item() * mask.sum().item()
        count += mask.sum().item()
        # every (true context j, noise word k) of the same row: does j score higher?   (B, L, L)
        both = (label * mask)[:, :, None] * ((1 - label) * mask)[:, None, :]
        diff = s[:, :, None] - s[:, None, :]
        wins += (both * ((diff > 0).float() + 0.5 * (diff == 0).float())).sum().item()
        pairs += both.sum().item()
    return total / count, wins / pairs


# device picker, as taught in 01-foundations/mlp_torch.py
def pick_device(name):
    """'auto' picks cuda, then mps, then cpu; asking for a device this machine lacks is an error."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(d for d, ok in available.items() if ok)
    if not available[name]:
        raise ValueError(f"--device {name}: not available on this machine")
    return torch.device(name)


def constant_score_loss(num_noise):
    """The best loss without looking at the words: one score for every entry, sigma(s) = 1 / (1 + K).

    A fraction y = 1 / (1 + K) of the entries are true contexts; the loss is then the labels' entropy
    -[y log y + (1 - y) log(1 - y)] (0.451 for K = 5). Below it, the scores depend on the words (on their
    frequencies, then on which words go together).
    """
    y = 1 / (1 + num_noise)
    return float(-(y * np.log(y) + (1 - y) * np.log(1 - y)))


def plot_loss(hist, path, title, num_noise):
    """Training loss per step (and its epoch means) and the held-out loss after each epoch, against epochs."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    steps = np.asarray(hist["step_loss"])
    x = np.arange(1, len(steps) + 1) / (len(steps) / len(hist["train_loss"]))  # steps in units of epochs
    ax.plot(x, steps, lw=0.5, alpha=0.4, label="training loss per minibatch")
    epochs = np.arange(1, len(hist["train_loss"]) + 1)
    ax.plot(epochs, hist["train_loss"], "o-", label="training loss, mean over the epoch")
    ax.plot(np.r_[0, epochs], hist["val_loss"], "s-", label="held-out loss (PTB validation pairs)")
    ax.axhline(np.log(2), color="gray", ls=":", label="log 2: every score 0 (the start)")
    ax.axhline(constant_score_loss(num_noise), color="black", ls="--", lw=0.8,
               label=f"{constant_score_loss(num_noise):.3f}: the best constant score (label entropy)")
    ax.set(xlabel="epoch", ylabel="binary cross-entropy per entry", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


# %% [markdown]
# ## Main: one flat training loop


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="passes over the centres (default 5; 2 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="centres per minibatch (default 512; 128 with --smoke)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="Adam learning rate (default 0.002; 0.01 with --smoke)")
    p.add_argument("--embed-dim", type=positive_int, default=None, help="vector size d (default 100; 32 with --smoke)")
    p.add_argument("--window", type=positive_int, default=5, help="largest context window each side (default 5)")
    p.add_argument("--num-noise", type=positive_int, default=5, help="noise words K per true context (default 5)")
    p.add_argument("--t", type=positive_float, default=1e-4, help="subsampling threshold t, below 1 (default 1e-4)")
    p.add_argument("--min-freq", type=positive_int, default=10,
                   help="words rarer than this become <unk>, dropped (default 10)")
    p.add_argument("--max-sentences", type=positive_int, default=None,
                   help="use the first N training (and validation) sentences (default all; 3000 with --smoke)")
    p.add_argument("--vectors", default="center", choices=["center", "sum"],
                   help="word vectors for the PCA figure: center = V (default), sum = V + U")
    p.add_argument("--probes", default=None,
                   help="comma-separated probe words (default: those of PROBES in the vocabulary)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds the data pipeline, the noise words and the init")
    p.add_argument("--data-dir", default=None, help="folder with the PTB files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="for metrics, vectors and figures (default runs/<script>)")
    p.add_argument("--smoke", action="store_true", help="seconds: the first 3,000 sentences, d = 32, 2 epochs")
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    if args.t >= 1:
        p.error(f"--t must lie in (0, 1), got {args.t}")
    if args.epochs is None:
        args.epochs = 2 if args.smoke else 5
    if args.batch_size is None:
        args.batch_size = 128 if args.smoke else 512
    if args.lr is None:
        args.lr = 0.01 if args.smoke else 0.002  # few steps: larger ones
    if args.embed_dim is None:
        args.embed_dim = 32 if args.smoke else 100
    if args.max_sentences is None and args.smoke:
        args.max_sentences = 3000
    try:
        vocab, counts, centers, contexts = ptb_word2vec(args.window, args.t, args.min_freq, args.max_sentences,
                                                        args.seed, args.data_dir)
        val_centers, val_contexts = heldout_pairs(vocab, counts, args.window, args.t, args.seed, args.data_dir,
                                                  args.max_sentences)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    if args.probes is None:  # PROBES, less any word a small subset (--smoke) lacks
        probes = [w for w in PROBES if w in vocab.token_to_idx] or list(vocab.idx_to_token[1:5])
    else:  # words asked for by name must exist
        probes = [w for w in args.probes.split(",") if w]
        try:
            for w in probes:
                word_index(vocab, w)
        except ValueError as exc:
            p.error(str(exc))
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    V = len(vocab)
    probs = noise_distribution(counts)  # (V,) P_n(w) ~ count(w)^0.75
    print(f"PTB: {V} words, {len(centers):,} training centres, {len(val_centers):,} held-out centres, on {device}")

    torch.manual_seed(args.seed)
    model = SkipGram(V, args.embed_dim).to(device)
    # Adam (d2l 15.4) updates the whole tables every step (dense gradients), so rows of words not in the batch
    # keep moving on their momentum: simple, and fine at this size (sparse=True embeddings with SparseAdam
    # would touch only the rows in the batch).
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)  # minibatch order and noise words, epoch after epoch
    held_out = (val_centers, val_contexts, probs, args.batch_size, args.num_noise, args.seed, device)
    val_loss, val_auc = evaluate(model, *held_out)  # before training: log 2 and 0.5 exactly (all scores are 0)
    hist = {"step_loss": [], "train_loss": [], "val_loss": [val_loss], "val_auc": [val_auc], "epoch_s": []}
    n_batches = -(-len(centers) // args.batch_size)

    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        total = count = 0.0
        batches = skipgram_batches(centers, contexts, probs, args.batch_size, args.num_noise, rng=rng)
        for batch in tqdm(batches, total=n_batches, desc=f"epoch {epoch}", leave=False,
                          disable=not sys.stdout.isatty()):
            center, ctx_neg, mask, label = to_tensors(batch, device)  # (B,), (B, L), (B, L), (B, L)
            loss = sgns_loss(model(center, ctx_neg), label, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            l, n = loss.item(), mask.sum().item()  # the batch's mean loss and its number of real entries
            hist["step_loss"].append(l)
            total, count = total + l * n, count + n
        hist["train_loss"].append(total / count)
        hist["epoch_s"].append(time.perf_counter() - t0)
        val_loss, val_auc = evaluate(model, *held_out)
        hist["val_loss"].append(val_loss)
        hist["val_auc"].append(val_auc)
        print(f"epoch {epoch:2d}/{args.epochs}  loss {hist['train_loss'][-1]:.4f} | held-out loss {val_loss:.4f}, "
              f"pair AUC {val_auc:.3f} | {hist['epoch_s'][-1]:.1f} s", flush=True)

    Vw = model.V.weight.detach().cpu().double().numpy()  # (V, d) centre vectors: the word vectors
    Uw = model.U.weight.detach().cpu().double().numpy()  # (V, d) context vectors
    Sw = Vw + Uw  # (V, d) V + U, for comparison
    result = {}
    for name, W in [("V", Vw), ("V + U", Sw)]:
        near = {w: neighbours(W, vocab, w, k=5) for w in probes}
        answers = {}
        print(f"nearest neighbours by cosine, vectors {name}:")
        for w, ns in near.items():
            print(f"  {w}: " + ", ".join(f"{o} {c:.2f}" for o, c in ns))
        print(f"analogies a : b :: c : ? (b - a + c), vectors {name}:")
        for a, b, c, d in ANALOGIES:
            if all(x in vocab.token_to_idx for x in (a, b, c, d)):
                guess = analogy(W, vocab, a, b, c, k=3)
                answers[f"{a}:{b}::{c}:{d}"] = guess
                print(f"  {a} : {b} :: {c} : {guess[0][0]} ({guess[0][1]:.2f})   [expected {d}; top 3: "
                      + ", ".join(g for g, _ in guess) + "]")
        right = sum(g[0][0] == q.split(":")[-1] for q, g in answers.items())
        print(f"  {right}/{len(answers)} analogies answered as expected")
        result[name] = (near, answers, right)
    title = f"word2vec_torch: skip-gram on PTB, {'V' if args.vectors == 'center' else 'V + U'}, d = {args.embed_dim}"
    has_pca = plot_pca(Vw if args.vectors == "center" else Sw, vocab, out_dir / "embeddings_pca.png", title)
    plot_loss(hist, out_dir / "loss.png", f"word2vec_torch: skip-gram, negative sampling (K = {args.num_noise})",
              args.num_noise)
    np.savez(out_dir / "vectors.npz", V=Vw.astype(np.float32), U=Uw.astype(np.float32),
             words=np.array(vocab.idx_to_token))

    metrics = {"script": Path(__file__).stem, "vocab_size": V, "centers": len(centers),
               "first_loss": hist["step_loss"][0], "final_train_loss": hist["train_loss"][-1],
               "val_loss": hist["val_loss"][-1], "val_auc": hist["val_auc"][-1],
               "constant_score_loss": constant_score_loss(args.num_noise),
               "sec_per_epoch": float(np.median(hist["epoch_s"])), "device": str(device),
               "neighbours": result["V"][0], "analogies": result["V"][1], "analogies_right": result["V"][2],
               "neighbours_v_plus_u": result["V + U"][0], "analogies_v_plus_u": result["V + U"][1],
               "analogies_right_v_plus_u": result["V + U"][2], "analogies_asked": len(result["V"][1]),
               "pca_figure": has_pca, "config": vars(args),
               "history": {k: hist[k] for k in ("train_loss", "val_loss", "val_auc", "epoch_s")}}
    save_metrics(out_dir, metrics, __file__, argv)
    return metrics


if __name__ == "__main__":
    main()
