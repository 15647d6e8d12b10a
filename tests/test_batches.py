"""Property tests (hypothesis) of the index iterators in ``data.batches``: ``kfold_splits`` and
``minibatches`` must cover every index exactly as their docstrings promise, for any sizes."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data import kfold_splits, minibatches

FEW = settings(max_examples=60, deadline=None)  # the whole file runs in a few seconds

seeds = st.integers(0, 2**32 - 1)
# (n, k) with 2 <= k <= n: every valid K-fold request.
n_and_k = st.integers(2, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(2, n)))
# (n, k) with k < 2 or k > n: every invalid one.
n_and_bad_k = st.integers(0, 100).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(-3, 1) | st.integers(n + 1, n + 5))
)


def epoch(n: int, batch_size: int, rng: np.random.Generator, **kwargs) -> list[np.ndarray]:
    """One epoch of minibatches, as a list."""
    return list(minibatches(n, batch_size, rng, **kwargs))


def joined(batches: list[np.ndarray]) -> np.ndarray:
    """All batches end to end (an empty int64 array when there are none)."""
    return np.concatenate([np.empty(0, dtype=np.int64), *batches])


# %% kfold_splits


@FEW
@given(n_and_k, seeds)
def test_kfold_validation_folds_partition_range(nk, seed):
    """The k validation folds are sorted, pairwise disjoint, and together are exactly range(n):
    every index in range(n) lies in exactly one fold, and no other index appears."""
    n, k = nk
    folds = [val for _, val in kfold_splits(n, k, seed)]
    assert len(folds) == k
    assert all(np.all(np.diff(val) > 0) for val in folds)  # sorted, no repeats within a fold
    everything = np.concatenate(folds)
    assert everything.min() >= 0
    assert np.bincount(everything, minlength=n).tolist() == [1] * n  # once each, none >= n


@FEW
@given(n_and_k, seeds)
def test_kfold_train_is_complement_of_validation(nk, seed):
    """Each train set is exactly range(n) minus its validation fold, in sorted order."""
    n, k = nk
    for train, val in kfold_splits(n, k, seed):
        outside = np.ones(n, dtype=bool)
        outside[val] = False
        np.testing.assert_array_equal(train, np.flatnonzero(outside))


@FEW
@given(n_and_k, seeds)
def test_kfold_fold_sizes_differ_by_at_most_one(nk, seed):
    """Fold sizes are n // k or n // k + 1 (so they differ by at most one)."""
    n, k = nk
    sizes = {len(val) for _, val in kfold_splits(n, k, seed)}
    assert sizes <= {n // k, n // k + 1} and max(sizes) - min(sizes) <= 1


@FEW
@given(n_and_k, seeds)
def test_kfold_same_seed_same_folds(nk, seed):
    """Calling twice with the same seed gives identical train and validation indices."""
    n, k = nk
    for (t1, v1), (t2, v2) in zip(kfold_splits(n, k, seed), kfold_splits(n, k, seed), strict=True):
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_array_equal(v1, v2)


@pytest.mark.parametrize("n, k", [(20, 2), (50, 5), (101, 10)])
def test_kfold_different_seeds_different_folds(n, k):
    """Seeds 0..9 give ten different fold assignments (checked on fixed sizes, so deterministic)."""
    assignments = {tuple(np.concatenate([val for _, val in kfold_splits(n, k, seed)])) for seed in range(10)}
    assert len(assignments) == 10


@FEW
@given(n_and_bad_k, seeds)
def test_kfold_invalid_k_raises(nk, seed):
    """k < 2 or k > n is a ValueError."""
    n, k = nk
    with pytest.raises(ValueError, match="k-fold"):
        kfold_splits(n, k, seed)


# %% minibatches


@FEW
@given(st.integers(0, 500), st.integers(1, 64), seeds, st.booleans())
def test_minibatches_cover_range_once(n, batch_size, seed, shuffle):
    """One epoch's int64 batches, joined, are a permutation of range(n), or arange(n) unshuffled."""
    batches = epoch(n, batch_size, np.random.default_rng(seed), shuffle=shuffle)
    assert all(b.dtype == np.int64 for b in batches)
    order = joined(batches)
    if shuffle:
        np.testing.assert_array_equal(np.sort(order), np.arange(n))
    else:
        np.testing.assert_array_equal(order, np.arange(n))


@FEW
@given(st.integers(1, 500), st.integers(1, 64), seeds)
def test_minibatches_only_last_batch_is_short(n, batch_size, seed):
    """There are ceil(n / batch_size) batches; all hold batch_size indices but the last, which
    holds the remainder (batch_size when it divides n)."""
    sizes = [len(b) for b in epoch(n, batch_size, np.random.default_rng(seed))]
    assert len(sizes) == -(-n // batch_size)
    assert sizes[:-1] == [batch_size] * (len(sizes) - 1)
    assert sizes[-1] == (n % batch_size or batch_size)


@FEW
@given(st.integers(0, 500), st.integers(1, 64), seeds, st.booleans())
def test_minibatches_drop_last_drops_remainder(n, batch_size, seed, shuffle):
    """With drop_last there are n // batch_size full batches of distinct indices, and unshuffled
    they are exactly the first n - n % batch_size indices."""
    batches = epoch(n, batch_size, np.random.default_rng(seed), shuffle=shuffle, drop_last=True)
    assert [len(b) for b in batches] == [batch_size] * (n // batch_size)
    order = joined(batches)
    assert len(np.unique(order)) == len(order) and np.all((order >= 0) & (order < n))
    if not shuffle:
        np.testing.assert_array_equal(order, np.arange(n - n % batch_size))


@FEW
@given(st.integers(20, 500), st.integers(1, 64), seeds)
def test_minibatches_reproducible_and_fresh_each_epoch(n, batch_size, seed):
    """Two Generators seeded alike give identical batches over two successive epochs, and the
    second epoch's order differs from the first (n >= 20: a repeat has odds 1 / n!)."""
    rngs = [np.random.default_rng(seed), np.random.default_rng(seed)]
    runs = [[epoch(n, batch_size, rng) for _ in range(2)] for rng in rngs]
    for a, b in zip(itertools.chain(*runs[0]), itertools.chain(*runs[1]), strict=True):
        np.testing.assert_array_equal(a, b)
    first, second = runs[0]
    assert not np.array_equal(joined(first), joined(second))


@FEW
@given(st.integers(0, 100), st.integers(-5, 0), seeds)
def test_minibatches_batch_size_below_one_raises(n, batch_size, seed):
    """batch_size < 1 is a ValueError, raised at the call itself, before any iteration."""
    with pytest.raises(ValueError, match="batch_size"):
        minibatches(n, batch_size, np.random.default_rng(seed))
