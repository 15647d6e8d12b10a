"""Minibatches and K-fold splits as index arrays, so NumPy, JAX and PyTorch see identical data.

Both work on indices, not on arrays: a script indexes its own arrays (NumPy, device-resident JAX
arrays, torch tensors) with them, and the same seed gives every framework the same batches.

K-fold cross-validation
-----------------------
One validation split gives one noisy estimate of how well a model generalises. K-fold
cross-validation (UDL section 8.5; d2l 3.6.3) shuffles the n training examples once, cuts them
into k folds of (almost) equal size, and trains k models: model i is validated on fold i and
trained on the other k - 1. Every example is validated on exactly once, and the k validation
scores give both an estimate (their mean) and its spread (their standard deviation), which tells
whether a difference between two models is larger than the noise. The test set is never touched.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def minibatches(
    n: int, batch_size: int, rng: np.random.Generator, shuffle: bool = True, drop_last: bool = False
) -> Iterator[np.ndarray]:
    """Yield int64 index arrays of ``batch_size`` that together cover ``range(n)`` once (one epoch).

    With ``shuffle`` the order is a fresh permutation drawn from ``rng``, so successive epochs
    differ and a generator seeded the same way reproduces them exactly. The last batch is smaller
    when ``batch_size`` does not divide ``n``, unless ``drop_last``.
    """
    if batch_size < 1:  # checked here, at the call, not at the first next()
        raise ValueError(f"batch_size must be a positive integer, not {batch_size}")
    order = rng.permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    return (order[start : start + batch_size] for start in range(0, stop, batch_size))


def kfold_splits(n: int, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split ``range(n)`` into ``k`` folds; return ``k`` pairs (train indices, validation indices).

    The validation sets partition ``range(n)`` (disjoint, together everything), their sizes differ
    by at most one, and the same ``seed`` gives the same folds. Indices come back sorted.
    """
    if not 2 <= k <= n:
        raise ValueError(f"k-fold needs 2 <= k <= n, got k={k}, n={n}")
    folds = np.array_split(np.random.default_rng(seed).permutation(n), k)
    splits = []
    for i in range(k):
        train = np.concatenate([f for j, f in enumerate(folds) if j != i])
        splits.append((np.sort(train), np.sort(folds[i])))
    return splits
