"""The dataset for pretraining word embeddings: PTB sentences, subsampling, context windows, noise words.

Dive into Deep Learning, section 15.3 "The Dataset for Pretraining Word Embeddings":
https://d2l.ai/chapter_natural-language-processing-pretraining/word-embedding-dataset.html ;
Mikolov et al. 2013b, "Distributed Representations of Words and Phrases and their
Compositionality", https://arxiv.org/abs/1310.4546 (subsampling, negative sampling).

    from data import ptb_word2vec, noise_distribution, skipgram_batches

    vocab, counts, centers, contexts = ptb_word2vec(max_window=5)   # 6,719 words, 343k centres
    probs = noise_distribution(counts)                               # P(w) ~ count(w) ** 0.75
    for center, ctx_neg, mask, label in skipgram_batches(centers, contexts, probs, 512, 5, rng):
        ...   # center (B,), ctx_neg / mask / label (B, L)

The steps, each a function below, in the order ``ptb_word2vec`` runs them:

1. Sentences. PTB, one sentence per line, as lists of words (``ptb_sentences``). Words seen fewer
   than ``min_freq`` times become ``<unk>`` in the ``Vocab``, and every ``<unk>`` is then dropped:
   a vector for "some rare word" would only blur its neighbours.
2. Subsampling (``keep_probabilities``, ``subsample``). "the", "a", "of" occur in almost every
   window but say little about the words near them, and they dominate the training pairs. Each
   occurrence of word w is kept with probability

       P(keep w) = min(1, sqrt(t / f(w))),   f(w) = count(w) / (total count),   t = 1e-4

   so a word at frequency f > t keeps about sqrt(t/f) of its occurrences (in PTB "the", at f = 0.062,
   keeps 4%), and words rarer than t are all kept. This is d2l's form of Mikolov's rule (his
   paper writes the discard probability 1 - sqrt(t/f); his code uses a slightly different formula).
3. Centres and contexts (``centers_and_contexts``). Every word of the subsampled corpus is a
   centre; for each one a window size w is drawn uniformly from 1 .. max_window, and its contexts
   are the up to w words on each side *within the same sentence*. A random window weights near
   words more than far ones, as word2vec does. Contexts are stored as a padded array: a ragged
   list of lists would be clearer but a hundred times slower to batch.
4. Noise words (``noise_distribution``, ``draw_negatives``). Negative sampling contrasts each
   true (centre, context) pair with K noise words drawn from the unigram distribution raised to
   0.75, P(w) ~ count(w) ** 0.75: the power flattens the distribution, so rare words are drawn more
   often than their frequency and "the" less. Noise words equal to one of the row's true contexts
   are drawn again. The counts are those before subsampling, as in Mikolov's code (d2l counts the
   subsampled corpus; the difference is small). Noise words are drawn afresh for every batch, so
   each epoch sees new ones.
5. Minibatches (``skipgram_batches``). Centres have different numbers of contexts, so each row
   lists its n contexts, then its n * K noise words, then padding up to the longest row of the
   batch; ``mask`` marks the real entries and ``label`` the true contexts:

       centre "chip"   ctx_neg [intel, maker,  | 4 noise words ... 10 noise words | 0 0 0 0]
                       mask    [1      1       | 1 ...                        1   | 0 0 0 0]
                       label   [1      1       | 0 ...                        0   | 0 0 0 0]

   A model computes one score per entry and a loss weighted by ``mask``. CBOW (predict the centre
   from its contexts) and hierarchical softmax use ``centers`` and ``contexts`` directly.

Everything takes a ``numpy.random.Generator``, so one seed reproduces the whole dataset.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .batches import minibatches
from .text import Vocab, ptb


def ptb_sentences(split: str = "train", data_dir=None) -> list[list[str]]:
    """The PTB ``split`` as a list of sentences, each a list of words (no ``<eos>``)."""
    return [line.split() for line in ptb(split, data_dir).splitlines() if line.strip()]


# %% subsampling of frequent words


def keep_probabilities(counts, t: float = 1e-4) -> np.ndarray:
    """P(keep w) = min(1, sqrt(t / f(w))) with f(w) = counts[w] / counts.sum(); 0 for unseen words. (V,)"""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.sum() <= 0 or (counts < 0).any():
        raise ValueError("counts must be a 1-D array of non-negative counts with a positive total")
    if t <= 0:
        raise ValueError(f"t must be positive, not {t}")
    f = counts / counts.sum()
    keep = np.zeros_like(f)
    seen = f > 0
    keep[seen] = np.minimum(1.0, np.sqrt(t / f[seen]))
    return keep


def subsample(corpus: list[np.ndarray], counts, t: float = 1e-4, *, rng: np.random.Generator) -> list[np.ndarray]:
    """Keep each token w of every sentence with probability ``keep_probabilities(counts, t)[w]``."""
    keep = keep_probabilities(counts, t)
    if not corpus:
        return []
    flat = np.concatenate(corpus)  # every token of every sentence, in order
    kept = rng.random(flat.size) < keep[flat]  # one uniform draw per token
    bounds = np.cumsum([len(s) for s in corpus])[:-1]
    return [s[k] for s, k in zip(corpus, np.split(kept, bounds))]


# %% centre words and their context windows


def centers_and_contexts(corpus: list[np.ndarray], max_window: int, rng: np.random.Generator):
    """Every token with at least one context is a centre; its contexts lie within a random window.

    Returns ``centers`` (N,) int64 and ``contexts`` (N, 2 * max_window) int64: row i holds the
    contexts of ``centers[i]`` in sentence order, then -1 padding. For each centre the window w is
    drawn from 1 .. max_window; contexts never cross a sentence boundary.
    """
    if max_window < 1:
        raise ValueError(f"max_window must be at least 1, not {max_window}")
    corpus = [np.asarray(s, dtype=np.int64) for s in corpus]
    m = max_window
    tokens = np.concatenate(corpus) if corpus else np.zeros(0, np.int64)  # (n,)
    sentence = np.repeat(np.arange(len(corpus)), [len(s) for s in corpus])  # (n,) sentence of each token
    n = tokens.size
    w = rng.integers(1, m + 1, size=n)  # (n,) window of each centre
    offsets = np.r_[-m:0, 1 : m + 1]  # (2m,) left to right, so contexts come in sentence order
    pos = np.arange(n)[:, None] + offsets  # (n, 2m) corpus position of each candidate context
    inside = (pos >= 0) & (pos < n)
    pos = np.where(inside, pos, 0)
    valid = inside & (np.abs(offsets) <= w[:, None]) & (sentence[pos] == sentence[:, None])
    contexts = np.where(valid, tokens[pos], -1)  # (n, 2m)
    # move the real contexts of each row to its front, keeping their order (a stable sort on "is pad")
    order = np.argsort(~valid, axis=1, kind="stable")
    contexts = np.take_along_axis(contexts, order, axis=1)
    has_context = valid.any(axis=1)  # false only in one-word sentences
    return tokens[has_context], contexts[has_context]


# %% negative sampling


def noise_distribution(counts, power: float = 0.75) -> np.ndarray:
    """P(w) = counts[w] ** power / sum_v counts[v] ** power: the noise words of negative sampling. (V,)"""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.sum() <= 0 or (counts < 0).any():
        raise ValueError("counts must be a 1-D array of non-negative counts with a positive total")
    weights = counts**power
    return weights / weights.sum()


def draw_negatives(contexts: np.ndarray, probs: np.ndarray, num_noise: int, rng: np.random.Generator) -> np.ndarray:
    """``num_noise`` noise words per real context of each row, none equal to a context of that row.

    ``contexts`` (N, C) padded with -1, as ``centers_and_contexts`` returns it. Returns (N, C * num_noise):
    row i holds n_i * num_noise noise words, then -1 padding, where n_i is its number of contexts.
    """
    if num_noise < 1:
        raise ValueError(f"num_noise must be at least 1, not {num_noise}")
    contexts = np.asarray(contexts)
    N, C = contexts.shape
    n = (contexts >= 0).sum(axis=1)  # (N,) contexts per row
    real = np.arange(C * num_noise) < (n * num_noise)[:, None]  # (N, C*K) entries to fill
    neg = rng.choice(probs.size, size=(N, C * num_noise), p=probs)
    for _ in range(100):
        clash = real & (neg[:, :, None] == contexts[:, None, :]).any(axis=2)  # a noise word that is a context
        if not clash.any():
            return np.where(real, neg, -1)
        neg[clash] = rng.choice(probs.size, size=int(clash.sum()), p=probs)  # draw those again
    raise ValueError("the noise distribution puts (almost) all its mass on the context words themselves")


# %% minibatches with padding and masks


def skipgram_batches(
    centers: np.ndarray,
    contexts: np.ndarray,
    probs: np.ndarray,
    batch_size: int,
    num_noise: int,
    rng: np.random.Generator,
    shuffle: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """One epoch of (center (B,), ctx_neg (B, L), mask (B, L), label (B, L)) with fresh noise words.

    Row b: its n_b contexts, then its n_b * num_noise noise words, then padding (index 0) up to
    L = max_b n_b * (1 + num_noise). ``mask`` is 1.0 on the real entries, ``label`` 1.0 on the contexts.
    """
    if len(centers) != len(contexts):
        raise ValueError(f"centers and contexts differ in length: {len(centers)} and {len(contexts)}")
    for idx in minibatches(len(centers), batch_size, rng, shuffle=shuffle):
        ctx = contexts[idx]  # (B, C)
        neg = draw_negatives(ctx, probs, num_noise, rng)  # (B, C*K)
        n = (ctx >= 0).sum(axis=1)  # (B,)
        entries = np.concatenate([ctx, neg], axis=1)  # (B, C + C*K): contexts, pads, noise words, pads
        order = np.argsort(entries < 0, axis=1, kind="stable")  # real entries to the front, in order
        entries = np.take_along_axis(entries, order, axis=1)[:, : (n * (1 + num_noise)).max()]  # (B, L)
        mask = (entries >= 0).astype(np.float64)
        label = (np.arange(entries.shape[1]) < n[:, None]).astype(np.float64)
        yield centers[idx], np.maximum(entries, 0), mask, label


# %% PTB, all steps


def ptb_word2vec(
    max_window: int = 5,
    t: float = 1e-4,
    min_freq: int = 10,
    max_sentences: int | None = None,
    seed: int = 0,
    data_dir=None,
):
    """PTB's training sentences, ready for word2vec: returns ``(vocab, counts, centers, contexts)``.

    The first ``max_sentences`` sentences (all if None) -> ``Vocab(min_freq)`` -> indices with every
    ``<unk>`` dropped -> ``counts`` (V,), the word counts before subsampling -> ``subsample(t)`` ->
    ``centers_and_contexts(max_window)``. With the defaults: 6,719 words (``<unk>`` included).
    """
    rng = np.random.default_rng(seed)
    sentences = ptb_sentences("train", data_dir)[:max_sentences]
    vocab = Vocab((w for s in sentences for w in s), min_freq=min_freq)
    corpus = [vocab.encode(s) for s in sentences]
    corpus = [s[s != vocab.unk] for s in corpus]
    counts = np.bincount(np.concatenate(corpus), minlength=len(vocab))  # (V,), counts[unk] = 0
    corpus = subsample(corpus, counts, t, rng=rng)
    centers, contexts = centers_and_contexts(corpus, max_window, rng)
    return vocab, counts, centers, contexts
