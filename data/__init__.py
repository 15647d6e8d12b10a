"""The one shared helper of Learning Arc: dataset loaders and index iterators.

Loaders return NumPy arrays (or plain Python text) so that every framework can use them.
Where files come from: see ``data.files`` (explicit folder, ``$ARC_DATA_DIR``, ``data/cache``,
then a checksummed download).

    from data import fashion_mnist, FASHION_MNIST_CLASSES, minibatches, kfold_splits
    from data import timemachine, tinyshakespeare, ptb, preprocess_timemachine, tokenize, Vocab
    from data import lm_batches_random, lm_batches_sequential
"""

from .batches import kfold_splits, minibatches
from .files import DataError
from .fmnist import CLASSES as FASHION_MNIST_CLASSES
from .fmnist import fashion_mnist
from .text import (
    Vocab,
    lm_batches_random,
    lm_batches_sequential,
    preprocess_timemachine,
    ptb,
    timemachine,
    tinyshakespeare,
    tokenize,
)

__all__ = [
    "DataError",
    "FASHION_MNIST_CLASSES",
    "Vocab",
    "fashion_mnist",
    "kfold_splits",
    "lm_batches_random",
    "lm_batches_sequential",
    "minibatches",
    "preprocess_timemachine",
    "ptb",
    "timemachine",
    "tinyshakespeare",
    "tokenize",
]
