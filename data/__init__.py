"""The one shared helper of Learning Arc: dataset loaders and index iterators.

Loaders return NumPy arrays (or plain Python text) so that every framework can use them.
Where files come from: see ``data.files`` (explicit folder, ``$ARC_DATA_DIR``, ``data/cache``,
then a checksummed download).

    from data import fashion_mnist, FASHION_MNIST_CLASSES, minibatches, kfold_splits
"""

from .batches import kfold_splits, minibatches
from .files import DataError
from .fmnist import CLASSES as FASHION_MNIST_CLASSES
from .fmnist import fashion_mnist

__all__ = ["DataError", "FASHION_MNIST_CLASSES", "fashion_mnist", "kfold_splits", "minibatches"]
