"""Tests of word2vec's dataset (``data/embeddings.py``): subsampling probabilities and rates, the
noise distribution over many draws, context windows that stay inside their sentence, and padded
batches whose masks and labels cover exactly the real entries. Statistical checks use a fixed seed
and bounds of 5 standard deviations, so they cannot fail by chance yet would catch a wrong formula.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data import (
    centers_and_contexts,
    draw_negatives,
    keep_probabilities,
    noise_distribution,
    ptb_sentences,
    ptb_word2vec,
    skipgram_batches,
    subsample,
)

FEW = settings(max_examples=60, deadline=None)


# %% subsampling


def test_keep_probabilities_by_hand():
    """f = (0, 0.5, 0.25, 0.25, 1e-5 ...): keep = min(1, sqrt(t / f)), and 0 for a word never seen."""
    counts = np.array([0, 50_000, 25_000, 24_999, 1])  # total 100,000
    keep = keep_probabilities(counts, t=1e-4)
    assert keep[0] == 0.0
    assert keep[1] == pytest.approx(np.sqrt(1e-4 / 0.5))  # 0.01414
    assert keep[2] == pytest.approx(np.sqrt(1e-4 / 0.25))  # 0.02
    assert keep[4] == 1.0  # f = 1e-5 < t: always kept
    assert keep_probabilities(counts, t=1.0)[1:].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_subsample_keeps_each_word_at_its_rate():
    """Over 200,000 tokens, the kept fraction of each word lies within 5 standard deviations of its
    keep probability, and the order of the kept tokens within a sentence is unchanged."""
    rng = np.random.default_rng(0)
    probs = np.array([0.0, 0.6, 0.3, 0.09, 0.01])
    corpus = [rng.choice(5, size=rng.integers(1, 40), p=probs) for _ in range(10_000)]
    counts = np.bincount(np.concatenate(corpus), minlength=5)
    keep = keep_probabilities(counts, t=0.02)
    kept = subsample(corpus, counts, t=0.02, rng=np.random.default_rng(1))
    assert len(kept) == len(corpus)
    new_counts = np.bincount(np.concatenate(kept), minlength=5)
    for w in range(1, 5):
        n, p = counts[w], keep[w]
        assert abs(new_counts[w] - n * p) <= 5 * np.sqrt(n * p * (1 - p)) + 1e-9, w
    assert keep[4] == 1.0 and new_counts[4] == counts[4]  # rare words are all kept
    for s, k in zip(corpus[:200], kept[:200]):  # k is a subsequence of s
        it = iter(s.tolist())
        assert all(any(x == y for y in it) for x in k.tolist())


# %% centres and context windows (hypothesis)


@st.composite
def corpora(draw):
    lengths = draw(st.lists(st.integers(0, 9), min_size=1, max_size=8))
    bounds = np.cumsum([0, *lengths])
    # token = its position in the corpus, so every context can be traced to its place and sentence
    corpus = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    return corpus, draw(st.integers(1, 4)), draw(st.integers(0, 2**16))


@FEW
@given(corpora())
def test_contexts_are_a_window_inside_the_sentence(args):
    """Each centre's contexts are exactly sentence[p-w : p] + sentence[p+1 : p+1+w] for some
    w in 1..max_window, in order, then -1 padding: never a word of another sentence. Every token of
    a sentence of two or more words is a centre once; one-word sentences give none."""
    corpus, m, seed = args
    centers, contexts = centers_and_contexts(corpus, m, np.random.default_rng(seed))
    assert contexts.shape == (len(centers), 2 * m) and contexts.dtype == np.int64
    expected_centers = [t for s in corpus if len(s) >= 2 for t in s.tolist()]
    assert centers.tolist() == expected_centers
    sentence_of = {t: s for s in corpus for t in s.tolist()}
    for c, row in zip(centers.tolist(), contexts):
        s = sentence_of[c].tolist()
        p = s.index(c)
        n = int((row >= 0).sum())
        assert (row[n:] == -1).all() and n >= 1
        windows = [s[max(0, p - w) : p] + s[p + 1 : p + 1 + w] for w in range(1, m + 1)]
        assert row[:n].tolist() in windows


def test_window_sizes_are_uniform():
    """In a long sentence, a centre far from its ends has 2w contexts with w uniform on 1..max_window."""
    corpus = [np.arange(100_000)]
    _, contexts = centers_and_contexts(corpus, 5, np.random.default_rng(0))
    w = (contexts[10:-10] >= 0).sum(axis=1) // 2
    freq = np.bincount(w, minlength=6)[1:] / w.size
    assert np.abs(freq - 0.2).max() < 5 * np.sqrt(0.2 * 0.8 / w.size)


# %% noise words


def test_noise_distribution_by_hand():
    """counts (0, 1, 16, 81) -> weights count ** 0.75 = (0, 1, 8, 27) -> P = (0, 1, 8, 27) / 36."""
    np.testing.assert_allclose(noise_distribution([0, 1, 16, 81]), np.array([0, 1, 8, 27]) / 36)
    np.testing.assert_allclose(noise_distribution([0, 1, 16, 81], power=1.0), np.array([0, 1, 16, 81]) / 98)


def test_negatives_follow_the_noise_distribution_without_the_contexts():
    """100,000 rows with the single context 1, 5 noise words each: no noise word is 1, and each other
    word is drawn at P(w) / (1 - P(1)) within 5 standard deviations; padding rows get none."""
    probs = noise_distribution([0, 30, 20, 10, 5, 1])
    contexts = np.full((100_000, 4), -1)
    contexts[:, 0] = 1
    contexts[-10:, 0] = -1  # rows without contexts (padding only)
    neg = draw_negatives(contexts, probs, 5, np.random.default_rng(0))
    assert neg.shape == (100_000, 20)
    assert (neg[:-10, :5] >= 0).all() and (neg[:-10, 5:] == -1).all() and (neg[-10:] == -1).all()
    drawn = neg[neg >= 0]
    assert drawn.size == 5 * (100_000 - 10) and not (drawn == 1).any() and not (drawn == 0).any()
    expected = probs / (1 - probs[1])
    expected[1] = 0
    freq = np.bincount(drawn, minlength=6) / drawn.size
    assert (np.abs(freq - expected) <= 5 * np.sqrt(expected * (1 - expected) / drawn.size) + 1e-12).all()


def test_negatives_with_no_room_is_a_value_error():
    """If the contexts hold all the noise distribution's mass, no noise word can be drawn."""
    with pytest.raises(ValueError, match="noise distribution"):
        draw_negatives(np.array([[1, 2]]), noise_distribution([0, 1, 1]), 2, np.random.default_rng(0))


# %% padded minibatches (hypothesis)


@FEW
@given(corpora(), st.integers(1, 4), st.integers(1, 7))
def test_batches_masks_and_labels_cover_exactly_the_real_entries(args, K, batch_size):
    """Row b of a batch: its n_b contexts (label 1), then n_b * K noise words (label 0) none of which
    is one of its contexts, then padding with index 0 and mask 0; the longest row has no padding;
    an epoch visits every centre once."""
    corpus, m, seed = args
    rng = np.random.default_rng(seed)
    centers, contexts = centers_and_contexts(corpus, m, rng)
    if len(centers) == 0:
        return
    V = int(max(s.max() for s in corpus if len(s))) + 1 + 10  # ten extra words only noise can give
    probs = noise_distribution(np.ones(V))
    seen = []
    row_of = {c: r for c, r in zip(centers.tolist(), contexts)}  # tokens are unique: one row each
    for center, ctx_neg, mask, label in skipgram_batches(centers, contexts, probs, batch_size, K, rng):
        B, L = ctx_neg.shape
        assert mask.shape == label.shape == (B, L) and center.shape == (B,)
        for c, entries, mk, lb in zip(center.tolist(), ctx_neg, mask, label):
            row = row_of[c]
            n = int((row >= 0).sum())
            assert mk.tolist() == [1.0] * (n * (1 + K)) + [0.0] * (L - n * (1 + K))
            assert lb.tolist() == [1.0] * n + [0.0] * (L - n)
            assert entries[:n].tolist() == row[:n].tolist()
            assert not np.isin(entries[n : n * (1 + K)], row[:n]).any()
            assert (entries[n * (1 + K) :] == 0).all()
        assert mask.sum(axis=1).max() == L
        seen += center.tolist()
    assert sorted(seen) == sorted(centers.tolist())


def test_batches_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        next(
            skipgram_batches(
                np.arange(3), np.zeros((2, 4), int), noise_distribution([1, 1]), 2, 1, np.random.default_rng(0)
            )
        )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: keep_probabilities([1, 2], t=0), "t must be positive"),
        (lambda: keep_probabilities([0, 0]), "positive total"),
        (lambda: noise_distribution([[1, 2]]), "1-D"),
        (lambda: centers_and_contexts([np.arange(3)], 0, np.random.default_rng(0)), "max_window"),
        (lambda: draw_negatives(np.zeros((1, 2), int), noise_distribution([1, 1]), 0, None), "num_noise"),
    ],
)
def test_bad_arguments_are_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# %% the real dataset


def test_ptb_word2vec_real():
    """Full PTB with d2l's settings: 6,719 words (<unk> included, never counted, never a centre or
    context); subsampling leaves about 42% of the 820,056 known tokens as centres ("the" about
    sqrt(1e-4 / f), 4%);
    1.5M centre-context pairs; one seed gives one dataset."""
    sentences = ptb_sentences()
    assert len(sentences) == 42_068 and sentences[0][:3] == ["aer", "banknote", "berlitz"]
    vocab, counts, centers, contexts = ptb_word2vec()
    assert len(vocab) == 6_719 and counts.shape == (6_719,) and counts[vocab.unk] == 0
    assert counts.sum() == 820_056
    assert 0.39 < len(centers) / counts.sum() < 0.45
    assert 1_450_000 < (contexts >= 0).sum() < 1_550_000
    assert (centers != vocab.unk).all() and (contexts != vocab.unk).all()
    the = vocab.token_to_idx["the"]
    f = counts[the] / counts.sum()
    kept = (centers == the).sum() / counts[the]
    assert abs(kept - np.sqrt(1e-4 / f)) < 0.005
    _, _, centers2, contexts2 = ptb_word2vec()
    assert np.array_equal(centers, centers2) and np.array_equal(contexts, contexts2)
