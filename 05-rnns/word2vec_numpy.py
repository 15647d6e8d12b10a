"""word2vec by hand in NumPy: skip-gram and CBOW, negative sampling and hierarchical softmax, plain SGD on PTB.

A word's meaning is read off the company it keeps: word2vec learns one vector per word such that a
word's vector predicts the words around it. Two models (Mikolov et al. 2013a) and two ways to avoid
a softmax over the whole vocabulary (2013b), every gradient written by hand; tests/test_word2vec_numpy.py
checks all four combinations against torch autograd in float64. V (n_words, d) holds every word's
centre ("input") vector v_w, U its context ("output") vector u_w; sigma(x) = 1 / (1 + exp(-x)):

  skip-gram + negative sampling, a centre c, each of its contexts o, K noise words k ~ P(w)^0.75:
      loss(c, o) = -log sigma(u_o . v_c) - sum_k log sigma(-u_k . v_c)
  CBOW: the mean of the context vectors h = (1/n) sum_j v_{o_j} predicts the centre, as above with h for v_c.
  hierarchical softmax: the words are the leaves of a binary (Huffman) tree, U holds one vector per
  inner node; the path to w turns left (s_j = +1) or right (s_j = -1) at nodes n_1 .. n_L(w):
      P(w | h) = prod_j sigma(s_j u_{n_j} . h),      loss = -sum_j log sigma(s_j u_{n_j} . h)
  All four are one computation: row b has an input h_b = sum_c w_bc v_{i_bc} and entries l with output
  rows u_{o_bl}, signs s_bl = +-1 and a mask m_bl (0 on padding):
      z_bl = s_bl (u_{o_bl} . h_b),     L = (1/B) sum_b sum_l m_bl (-log sigma(z_bl))
SGD with the paper's linearly decaying learning rate lr_t = lr (1 - t / T). The data are PTB's training
sentences through `data.ptb_word2vec` (subsampling, random windows); the last 2% of the centres are
held out to measure how often a true (centre, context) pair scores above a shuffled one (0.5 = chance).

Reading: T. Mikolov, K. Chen, G. Corrado and J. Dean, "Efficient Estimation of Word Representations in
Vector Space" (2013a), https://arxiv.org/abs/1301.3781; T. Mikolov, I. Sutskever, K. Chen, G. Corrado
and J. Dean, "Distributed Representations of Words and Phrases and their Compositionality" (2013b),
https://arxiv.org/abs/1310.4546; d2l 15.1 "Word Embedding (word2vec)", 15.2 "Approximate Training",
15.4 "Pretraining word2vec", 15.7 "Word Similarity and Analogy",
https://d2l.ai/chapter_natural-language-processing-pretraining/index.html; CS224n (2023) week 1.
Arc: NLP pretraining -- word2vec (skip-gram, CBOW; negative sampling, hierarchical softmax) in NumPy.

Run:  python 05-rnns/word2vec_numpy.py                        (skip-gram + negative sampling, full PTB)
      python 05-rnns/word2vec_numpy.py --model cbow --objective hs --embed-dim 50
      python 05-rnns/word2vec_numpy.py --smoke                (seconds: 3,000 sentences, 32 dimensions)
Look first at `forward` / `backward` (one loss serves all four combinations), then `huffman_tree`,
then the nearest neighbours printed at the end and runs/word2vec_numpy/embeddings_pca.png.
"""

# %%
import argparse
import heapq
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.figure import Figure
from tqdm import tqdm

from data import (
    DataError,
    draw_negatives,
    minibatches,
    noise_distribution,
    nonneg_int,
    positive_float,
    positive_int,
    ptb_word2vec,
    save_metrics,
    skipgram_batches,
)

# %% [markdown]
# ## One loss for all four: scores of output rows against an input vector, forward beside backward


# %%
class Batch(NamedTuple):
    """One minibatch of B rows.   in_idx, in_w (B, C): h_b = sum_c in_w[b, c] V[in_idx[b, c]];
    out_idx, sign, mask (B, L): the rows of U scored against h_b, s = +-1, and 1 on real entries."""

    in_idx: np.ndarray
    in_w: np.ndarray
    out_idx: np.ndarray
    sign: np.ndarray
    mask: np.ndarray


def sigmoid(x):
    """1 / (1 + exp(-x)), written as (1 + tanh(x / 2)) / 2: no overflow for large |x|."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def forward(V, U, batch):
    """Per-row losses L_b = sum_l m_bl (-log sigma(z_bl)) (B,), and the cache for `backward`."""
    h = (batch.in_w[..., None] * V[batch.in_idx]).sum(axis=1)  # h_b = sum_c w_bc v_{i_bc}   (B, d)
    Uo = U[batch.out_idx]  # u_{o_bl}   (B, L, d): a copy of the rows, gathered
    z = batch.sign * np.einsum("bld,bd->bl", Uo, h)  # z_bl = s_bl (u_{o_bl} . h_b)   (B, L)
    # -log sigma(z) = log(1 + exp(-z)), computed without overflow by logaddexp
    row_loss = (batch.mask * np.logaddexp(0.0, -z)).sum(axis=1)  # (B,)
    return row_loss, (h, Uo, z)


def backward(batch, cache):
    """Gradients of L = mean_b L_b, as (rows, row gradients) pairs: {"V": (in_idx, dV), "U": (out_idx, dU)}.

        d(-log sigma(z))/dz = -(1 - sigma(z)) = -sigma(-z),   z = s (u . h)
        g_bl  = dL/d(u_{o_bl} . h_b) = -(m_bl / B) s_bl sigma(-z_bl)          (B, L)
        dL/dh_b       = sum_l g_bl u_{o_bl}                                    (B, d)
        dL/du_{o_bl} += g_bl h_b        (one term per entry: a row of U may occur many times)
        dL/dv_{i_bc} += w_bc dL/dh_b    (skip-gram: the centre; CBOW: each context, 1/n of it)
    The gradients are sparse: only the rows in the batch have one. They are returned per occurrence
    and summed into V and U by `sgd_step`.
    """
    h, Uo, z = cache
    B = h.shape[0]
    g = -(batch.mask / B) * batch.sign * sigmoid(-z)  # (B, L)
    dh = np.einsum("bl,bld->bd", g, Uo)  # (B, d)
    dU = g[..., None] * h[:, None, :]  # (B, L, d): the gradient for row out_idx[b, l]
    dV = batch.in_w[..., None] * dh[:, None, :]  # (B, C, d): the gradient for row in_idx[b, c]
    return {"V": (batch.in_idx, dV), "U": (batch.out_idx, dU)}


def loss_and_grads(V, U, batch):
    """The batch loss (mean of the row losses) and the sparse gradients of `backward`."""
    row_loss, cache = forward(V, U, batch)
    return float(row_loss.mean()), backward(batch, cache)


def sgd_step(params, grads, lr):
    """theta[rows] -= lr * grad, in place, summing every occurrence of a row: np.add.at.

    `V[idx] -= lr * g` would be wrong: it is V[idx] = V[idx] - lr * g, which gathers the rows, subtracts,
    and writes them back one by one, so when a row occurs twice in idx (a frequent noise word drawn
    for many centres of the batch, the same context in two windows) the last write wins and the other
    gradients are lost. np.add.at is unbuffered: each occurrence is added in turn.
    """
    for name, (idx, g) in grads.items():
        np.add.at(params[name], idx, -lr * g)


# %% [markdown]
# ## Hierarchical softmax: the Huffman tree and each word's path through it
#
# At every inner node sigma(x) + sigma(-x) = 1, so the probability splits between the two subtrees and
# the leaves sum to 1 with no normaliser: training a word touches only the L(w) vectors on its path,
# about log2(n_words) for a balanced tree, instead of n_words. Huffman's tree is the optimal prefix
# code for the word counts: frequent words -- most of the training targets -- get the shortest paths,
# so the expected cost per target, sum_w f(w) L(w), is the smallest any binary tree can have.


# %%
class Tree(NamedTuple):
    """A binary tree over n words: path (n, D) inner-node rows of U from the root down, code (n, D) 0 = left,
    1 = right, depth (n,) = the number of real entries of each row (the rest is padding with 0)."""

    path: np.ndarray
    code: np.ndarray
    depth: np.ndarray


def huffman_tree(counts):
    """Huffman's tree for word counts (n,): repeatedly merge the two lightest subtrees (heapq).

    Leaves are 0 .. n-1 (the words), inner nodes n .. 2n-2 in the order they are made, so the root is
    the last one; inner node n + r is row r of U. The lighter subtree of each merge goes left (code 0).
    Ties are broken by node index, so equal counts always give the same tree. Words with count 0 (as
    <unk>) are leaves too, at the bottom: they cost nothing in expectation.
    """
    counts = np.asarray(counts)
    n = counts.size
    if counts.ndim != 1 or n < 2 or (counts < 0).any():
        raise ValueError(f"huffman_tree needs a 1-D array of at least 2 non-negative counts, got shape {counts.shape}")
    heap = [(int(c), w) for w, c in enumerate(counts)]
    heapq.heapify(heap)
    parent = np.zeros(2 * n - 1, np.int64)
    bit = np.zeros(2 * n - 1, np.int8)
    for node in range(n, 2 * n - 1):
        (ca, a), (cb, b) = heapq.heappop(heap), heapq.heappop(heap)  # the two lightest subtrees
        parent[a], bit[a], parent[b], bit[b] = node, 0, node, 1
        heapq.heappush(heap, (ca + cb, node))
    root = 2 * n - 2
    paths, codes = [], []
    for w in range(n):  # walk up from the leaf, then reverse: root first
        nodes, bits, x = [], [], w
        while x != root:
            nodes.append(parent[x] - n)
            bits.append(bit[x])
            x = parent[x]
        paths.append(nodes[::-1])
        codes.append(bits[::-1])
    depth = np.array([len(p) for p in paths])
    path = np.zeros((n, depth.max()), np.int64)
    code = np.zeros((n, depth.max()), np.int8)
    for w in range(n):
        path[w, : depth[w]], code[w, : depth[w]] = paths[w], codes[w]
    return Tree(path, code, depth)


def hs_targets(words, tree):
    """The entries that score words (any shape, -1 = padding) under hierarchical softmax: for each word
    its path's nodes, signs s_j = 1 - 2 code_j (+1 left, -1 right) and a mask. Shapes (*words.shape, D)."""
    w = np.maximum(words, 0)
    mask = (np.arange(tree.path.shape[1]) < tree.depth[w][..., None]) & (words >= 0)[..., None]
    return tree.path[w], (1.0 - 2.0 * tree.code[w]) * mask, mask.astype(np.float64)


# %% [markdown]
# ## Minibatches: the four combinations as rows of Batch


# %%
def pack(out, sign, mask):
    """Move each row's real entries to its front (a stable sort on "is padding") and cut the columns no
    row uses: (B, M) -> (B, L) with L = the largest number of real entries in a row."""
    order = np.argsort(mask == 0, axis=1, kind="stable")
    L = max(int(mask.sum(axis=1).max()), 1)
    return tuple(np.take_along_axis(a, order, axis=1)[:, :L] for a in (out, sign, mask))


def inputs(model, center, ctx):
    """in_idx, in_w for skip-gram (the centre, weight 1) or CBOW (the contexts, 1/n each, 0 on padding)."""
    if model == "skipgram":
        return center[:, None], np.ones((len(center), 1))
    real = (ctx >= 0).astype(np.float64)  # (B, C)
    return np.maximum(ctx, 0), real / real.sum(axis=1, keepdims=True)


def make_batch(model, objective, center, ctx, probs, tree, num_noise, rng):
    """One Batch from centres (B,) and their contexts (B, C) padded with -1 (skip-gram + negative
    sampling comes ready from data.skipgram_batches; see `batches`)."""
    in_idx, in_w = inputs(model, center, ctx)
    targets = ctx if model == "skipgram" else center[:, None]  # the words to predict, (B, C) or (B, 1)
    if objective == "neg":  # the targets (sign +1), then K noise words per target (sign -1)
        neg = draw_negatives(targets, probs, num_noise, rng)  # (B, C*K) or (B, K), -1 padding
        out = np.concatenate([targets, neg], axis=1)
        sign = np.concatenate([np.ones(targets.shape), -np.ones(neg.shape)], axis=1)
        mask = (out >= 0).astype(np.float64)
    else:  # every node on every target's path
        out, sign, mask = (a.reshape(len(center), -1) for a in hs_targets(targets, tree))
    out, sign, mask = pack(np.maximum(out, 0), sign * mask, mask)
    return Batch(in_idx, in_w, out, sign, mask)


def batches(model, objective, centers, contexts, probs, tree, batch_size, num_noise, rng):
    """One epoch of Batch, rows (centres) in a fresh random order, noise words drawn afresh."""
    if model == "skipgram" and objective == "neg":  # d2l's layout: contexts, noise words, padding
        for center, ctx_neg, mask, label in skipgram_batches(centers, contexts, probs, batch_size, num_noise, rng):
            yield Batch(center[:, None], np.ones((len(center), 1)), ctx_neg, (2 * label - 1) * mask, mask)
    else:
        for idx in minibatches(len(centers), batch_size, rng):
            yield make_batch(model, objective, centers[idx], contexts[idx], probs, tree, num_noise, rng)


def heldout_accuracy(V, U, model, objective, centers, contexts, tree, rng):
    """How often the model scores a held-out true pair above a shuffled one (chance 0.5).

    Skip-gram: (centre, context) pairs; CBOW: (contexts, centre). The shuffled pair keeps the input and
    takes the target of another random pair, so both targets come from the same word frequencies
    and only knowing which words go together helps. The score is the model's own: u_w . h under
    negative sampling, log P(w | h) under hierarchical softmax, i.e. minus the loss of w as a
    positive entry. Ties (the same word drawn) count one half.
    """
    if model == "skipgram":
        real = contexts >= 0
        center, targets = np.repeat(centers, real.sum(axis=1)), contexts[real]
    else:
        center, targets = centers, centers
    in_idx, in_w = inputs(model, center, contexts)

    def score(words):
        if objective == "neg":
            out, sign, mask = words[:, None], np.ones((words.size, 1)), np.ones((words.size, 1))
        else:
            out, sign, mask = hs_targets(words, tree)
        return -forward(V, U, Batch(in_idx, in_w, out, sign, mask))[0]

    true, fake = score(targets), score(rng.permutation(targets))
    return float(np.mean((true > fake) + 0.5 * (true == fake)))


# %% [markdown]
# ## Word similarity and analogy (d2l 15.7), and a 2-D PCA picture


# %%
PROBES = ("chip", "baby", "beautiful", "intel")
FALLBACK_PROBES = ("stock", "japanese", "president", "year")  # frequent enough to be in small PTB subsets
ANALOGIES = (("japan", "japanese", "germany", "german"), ("britain", "british", "france", "french"),
             ("company", "companies", "bank", "banks"), ("year", "years", "stock", "stocks"),
             ("he", "his", "she", "her"), ("buy", "bought", "sell", "sold"), ("good", "better", "bad", "worse"),
             ("two", "three", "four", "five"))
PCA_GROUPS = {"days": ("monday", "tuesday", "wednesday", "thursday", "friday"),
              "months": ("january", "february", "march", "april", "june", "july"),
              "countries": ("japan", "germany", "britain", "france", "china"),
              "companies": ("ibm", "intel", "apple", "microsoft", "chip", "computer", "software"),
              "numbers": ("two", "three", "four", "five", "six"),
              "markets": ("stock", "stocks", "bond", "bonds", "shares", "prices")}


def word_index(vocab, word):
    """The index of word; a ValueError naming it if the vocabulary does not have it (or it is <unk>)."""
    i = vocab.token_to_idx.get(word, 0)
    if i == 0:
        raise ValueError(f"{word!r} is not in the vocabulary ({len(vocab) - 1} words seen >= min_freq times "
                         f"in the training sentences); pick another probe word")
    return i


def unit_rows(E):
    """Each row divided by its length, so that a dot product is a cosine; zero rows stay zero."""
    return E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)


def nearest(E, vocab, query, k=5, exclude=()):
    """The k words with the highest cosine similarity to the vector `query` (never <unk> or `exclude`)."""
    cos = unit_rows(E) @ (query / max(np.linalg.norm(query), 1e-12))  # (n_words,)
    cos[[0, *exclude]] = -np.inf
    top = np.argsort(-cos, kind="stable")[:k]
    return [[vocab.idx_to_token[i], float(cos[i])] for i in top]


def neighbours(E, vocab, word, k=5):
    """Cosine nearest neighbours of a word, excluding itself."""
    i = word_index(vocab, word)
    return nearest(E, vocab, E[i], k, exclude=(i,))


def analogy(E, vocab, a, b, c, k=1):
    """a : b :: c : ?  -- the words nearest (cosine) to v_b - v_a + v_c, excluding a, b and c."""
    ia, ib, ic = (word_index(vocab, w) for w in (a, b, c))
    Eu = unit_rows(E)  # unit vectors, so that no word's length dominates the sum
    return nearest(E, vocab, Eu[ib] - Eu[ia] + Eu[ic], k, exclude=(ia, ib, ic))


def pca_2d(X):
    """The rows of X projected on their first two principal directions: centre, SVD, X_c V_2 (n, 2)."""
    Xc = X - X.mean(axis=0)  # centre the cloud
    _, S, Vt = np.linalg.svd(Xc, full_matrices=False)  # Xc = U_s S Vt; rows of Vt: principal directions
    return Xc @ Vt[:2].T, S**2 / (S**2).sum()  # (n, 2), the share of variance along each direction


def plot_pca(E, vocab, path, title):
    """Scatter the words of PCA_GROUPS (those in the vocabulary) in 2-D, each point labelled, coloured by group."""
    groups = {g: [w for w in ws if w in vocab.token_to_idx] for g, ws in PCA_GROUPS.items()}
    words = [w for ws in groups.values() for w in ws]
    if len(words) < 3:
        print(f"(only {len(words)} of the PCA words are in the vocabulary: no {path.name})")
        return
    xy, var = pca_2d(E[[vocab.token_to_idx[w] for w in words]])
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.subplots()
    start = 0
    for g, ws in groups.items():
        if ws:
            ax.scatter(*xy[start : start + len(ws)].T, s=25, label=g)
        start += len(ws)
    for (x, y), w in zip(xy, words):
        ax.annotate(w, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=9)
    ax.set(xlabel=f"PC 1 ({var[0]:.0%} of the variance)", ylabel=f"PC 2 ({var[1]:.0%})", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)


def plot_loss(hist, steps_per_epoch, path, title):
    """The training loss per step (light) and its running mean over 50 steps, epochs marked."""
    loss = np.array(hist)
    k = min(50, len(loss))
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot(loss, color="C0", alpha=0.25, lw=0.8, label="per step")
    ax.plot(np.arange(k - 1, len(loss)), smooth, color="C0", label=f"running mean ({k} steps)")
    for e in range(steps_per_epoch, len(loss), steps_per_epoch):
        ax.axvline(e, color="gray", ls=":", lw=0.8)
    ax.set(xlabel=f"step (epochs of {steps_per_epoch} batches, dotted)", ylabel="loss per centre word", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)


# %% [markdown]
# ## Main: data, one flat SGD loop, similarity and analogy


# %%
# The loss is a mean over the batch's rows (centres), so each row moves its vectors by lr / B times its
# own gradient; the defaults, lr = B x LR_PER_ROW, are steps of 0.1 per centre for skip-gram (word2vec.c:
# 0.025 per pair, on corpora a thousand times larger than PTB) and 0.4 for CBOW, whose n context vectors
# each receive only 1/n of the gradient of their mean. Hierarchical softmax takes half those steps and
# batches of 64: the root is on every path and the top nodes on most, so one batch adds hundreds of
# gradients into those few vectors at once (word2vec.c, updating after every pair, never sums two), and
# large batches make that sum diverge.
LR_PER_ROW = {("skipgram", "neg"): 0.1, ("cbow", "neg"): 0.4, ("skipgram", "hs"): 0.05, ("cbow", "hs"): 0.2}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("skipgram", "cbow"), default="skipgram", help="default skipgram")
    p.add_argument("--objective", choices=("neg", "hs"), default="neg",
                   help="neg: negative sampling (default); hs: hierarchical softmax")
    p.add_argument("--embed-dim", type=positive_int, default=None,
                   help="embedding size d (default 100; 32 with --smoke)")
    p.add_argument("--window", type=positive_int, default=5, help="largest context window each side (default 5)")
    p.add_argument("--num-noise", type=positive_int, default=5, help="noise words per target, K (default 5)")
    p.add_argument("--max-sentences", type=positive_int, default=None,
                   help="use the first N PTB training sentences, >= 2 (default all 42,068; 3,000 with --smoke)")
    p.add_argument("--probes", default=None,
                   help=f"comma-separated words whose nearest neighbours are printed (default {','.join(PROBES)})")
    p.add_argument("--epochs", type=positive_int, default=None, help="passes over the centres (default 5)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="centres per batch (default 512, hs 64; smoke 64)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="initial SGD learning rate, decaying linearly (default batch size x LR_PER_ROW: "
                        "0.1 skip-gram, 0.4 CBOW, half that with hs)")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seeds the vectors, subsampling, windows, noise (default 0)")
    p.add_argument("--data-dir", default=None, help="folder holding ptb/ (default: $ARC_DATA_DIR, data/cache)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/word2vec_numpy)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on the first 3,000 sentences, d = 32")
    args = p.parse_args(argv)
    defaults = dict(embed_dim=32, max_sentences=3000, epochs=5, batch_size=64) if args.smoke else \
        dict(embed_dim=100, max_sentences=None, epochs=5, batch_size=512 if args.objective == "neg" else 64)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.lr is None:
        args.lr = LR_PER_ROW[args.model, args.objective] * args.batch_size
    if args.max_sentences is not None and args.max_sentences < 2:
        p.error("--max-sentences must be at least 2")
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)

    # data: PTB -> vocabulary -> subsampling -> centres and their context windows (data/embeddings.py)
    try:
        vocab, counts, centers, contexts = ptb_word2vec(args.window, max_sentences=args.max_sentences,
                                                        seed=args.seed, data_dir=args.data_dir)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    if len(vocab) < 3 or len(centers) < 100:
        p.error(f"{args.max_sentences} sentences give {len(vocab) - 1} words seen >= 10 times and "
                f"{len(centers)} centres: too few to train on; raise --max-sentences")
    if args.probes is None:
        probes = [w for w in (*PROBES, *FALLBACK_PROBES) if w in vocab.token_to_idx][:4]
    else:
        probes = [w for w in args.probes.split(",") if w]
        try:
            for w in probes:
                word_index(vocab, w)  # fail now, not after training, on a word the vocabulary lacks
        except ValueError as exc:
            p.error(str(exc))
    n_held = max(1, len(centers) // 50)  # the last 2% of the corpus's centres (its last sentences)
    held = centers[-n_held:], contexts[-n_held:]
    centers, contexts = centers[:-n_held], contexts[:-n_held]
    probs = noise_distribution(counts)  # P(w) ~ count(w)^0.75
    tree = huffman_tree(counts) if args.objective == "hs" else None
    n_words, d = len(vocab), args.embed_dim
    rng = np.random.default_rng(args.seed)
    # Both V and U start as N(0, 0.1^2). word2vec.c starts U at zero; on PTB that start spends whole epochs
    # learning one direction shared by all words, while a random U breaks the symmetry at once.
    params = {"V": rng.normal(0, 0.1, (n_words, d)),  # (n_words, d) centre vectors
              "U": rng.normal(0, 0.1, (n_words if tree is None else n_words - 1, d))}  # context / node vectors
    name = f"{args.model} + {'negative sampling' if args.objective == 'neg' else 'hierarchical softmax'}"
    print(f"word2vec_numpy: {name}, PTB {len(centers):,} centres ({n_held:,} held out), {n_words:,} words, d = {d}")
    if tree is not None:
        f = counts / counts.sum()
        print(f"Huffman tree: depth {tree.depth.min()} .. {tree.depth.max()}, expected path length "
              f"{(f * tree.depth).sum():.2f} (balanced tree: log2 {n_words} = {np.log2(n_words):.2f})")

    steps_per_epoch = -(-len(centers) // args.batch_size)
    total, step, hist, epoch_loss, secs = args.epochs * steps_per_epoch, 0, [], [], []
    seen = centers[:n_held], contexts[:n_held]  # as many training centres, to compare with

    def accuracy(rows):  # true > shuffled on rows; the same shuffle every time
        return heldout_accuracy(params["V"], params["U"], args.model, args.objective, *rows, tree,
                                np.random.default_rng([args.seed, 1]))

    acc0, train_acc0 = accuracy(held), accuracy(seen)
    for epoch in range(1, args.epochs + 1):
        t0, losses = time.perf_counter(), []
        for batch in tqdm(batches(args.model, args.objective, centers, contexts, probs, tree, args.batch_size,
                                  args.num_noise, rng), total=steps_per_epoch, desc=f"epoch {epoch}",
                          leave=False, disable=not sys.stdout.isatty()):
            lr = args.lr * max(1 - step / total, 1e-4)  # linear decay, as word2vec.c
            loss, grads = loss_and_grads(params["V"], params["U"], batch)
            if not np.isfinite(loss):
                raise FloatingPointError(f"training diverged at step {step} (loss {loss}): lower --lr or --batch-size")
            sgd_step(params, grads, lr)
            losses.append(loss)
            step += 1
        secs.append(time.perf_counter() - t0)
        hist += losses
        epoch_loss.append(float(np.mean(losses)))
        acc, train_acc = accuracy(held), accuracy(seen)
        print(f"epoch {epoch}/{args.epochs}  loss {epoch_loss[-1]:.4f} | true > shuffled: held-out {acc:.3f}, "
              f"train {train_acc:.3f} | "
              f"lr {lr:.3g} | {secs[-1]:.1f} s", flush=True)

    E = params["V"]  # the centre vectors are the word vectors, as in d2l
    print("nearest neighbours (cosine):")
    nbrs = {w: neighbours(E, vocab, w) for w in probes}
    for w, nb in nbrs.items():
        print(f"  {w}: " + ", ".join(f"{x} {c:.2f}" for x, c in nb))
    print("analogies a : b :: c : ?")
    analogies, hits = [], 0
    for a, b, c, want in ANALOGIES:
        if all(x in vocab.token_to_idx for x in (a, b, c, want)):
            got = analogy(E, vocab, a, b, c)[0]
            hits += got[0] == want
            analogies.append([a, b, c, want, *got])
            print(f"  {a} : {b} :: {c} : {got[0]} ({got[1]:.2f}; expected {want})")
    k = max(1, len(hist) // 10)  # first and last tenth of the steps: the loss fell within the run
    plot_loss(hist, steps_per_epoch, out_dir / "loss.png", f"word2vec_numpy: {name} on PTB, d = {d}")
    plot_pca(E, vocab, out_dir / "embeddings_pca.png", f"word2vec_numpy ({name}): centre vectors, PCA to 2-D")
    metrics = {"script": "word2vec_numpy", "model": args.model, "objective": args.objective,
               "n_words": n_words, "n_centres": len(centers), "first_loss": float(np.mean(hist[:k])),
               "final_loss": float(np.mean(hist[-k:])), "epoch_loss": epoch_loss,
               "heldout_acc_init": acc0, "heldout_acc": acc,
               "train_acc_init": train_acc0, "train_acc": train_acc, "sec_per_epoch": float(np.mean(secs)),
               "neighbours": nbrs, "analogies": analogies, "analogy_top1": hits / max(len(analogies), 1),
               "config": vars(args)}
    if tree is not None:
        metrics["huffman_expected_depth"] = float((counts / counts.sum() * tree.depth).sum())
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"held-out true > shuffled pairs: {acc0:.3f} -> {acc:.3f}; {metrics['sec_per_epoch']:.1f} s per epoch; "
          f"wrote {out_dir}/metrics.json, loss.png, embeddings_pca.png")
    return metrics


if __name__ == "__main__":
    main()
