"""The one shared helper of Learning Arc: dataset loaders, index iterators and the command-line contract.

Loaders return NumPy arrays (or plain Python text) so that every framework can use them.
Where files come from: see ``data.files`` (explicit folder, ``$ARC_DATA_DIR``, ``data/cache``,
then a checksummed download).

    from data import fashion_mnist, FASHION_MNIST_CLASSES, minibatches, kfold_splits
    from data import timemachine, tinyshakespeare, ptb, preprocess_timemachine, tokenize, Vocab
    from data import lm_batches_random, lm_batches_sequential
    from data import ptb_word2vec, noise_distribution, skipgram_batches   # word2vec's dataset (d2l 15.3)
    from data import fra_eng, tokenize_nmt, split_by_source, nmt_vocab, nmt_arrays  # translation (d2l 10.5)
    from data import shared_bpe, bpe_text, id_arrays                   # translation in shared BPE tokens
    from data import detection_scenes, extreme_points                  # synthetic detection scenes (issue 20)
    from data import isbi2012                                          # EM membrane slices and masks (U-Net)
    from data import BPETokenizer                                          # byte-level BPE (d2l 15.6)
    from data import positive_int, positive_float, probability, save_metrics  # the command-line contract
"""

from .batches import kfold_splits, minibatches
from .bpe import BPETokenizer
from .cli import nonneg_float, nonneg_int, positive_float, positive_int, probability, save_metrics
from .detection import detection_scenes, extreme_points
from .embeddings import (
    centers_and_contexts,
    draw_negatives,
    keep_probabilities,
    noise_distribution,
    ptb_sentences,
    ptb_word2vec,
    skipgram_batches,
    subsample,
)
from .files import DataError
from .fmnist import CLASSES as FASHION_MNIST_CLASSES
from .fmnist import fashion_mnist
from .membranes import isbi2012
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
from .translation import (
    bpe_text,
    fra_eng,
    id_arrays,
    nmt_arrays,
    nmt_vocab,
    pad_truncate,
    preprocess_nmt,
    shared_bpe,
    split_by_source,
    tokenize_nmt,
)

__all__ = [
    "bpe_text",
    "id_arrays",
    "shared_bpe",
    "fra_eng",
    "nmt_arrays",
    "nmt_vocab",
    "pad_truncate",
    "preprocess_nmt",
    "split_by_source",
    "tokenize_nmt",
    "BPETokenizer",
    "DataError",
    "FASHION_MNIST_CLASSES",
    "Vocab",
    "centers_and_contexts",
    "detection_scenes",
    "draw_negatives",
    "extreme_points",
    "fashion_mnist",
    "isbi2012",
    "keep_probabilities",
    "kfold_splits",
    "lm_batches_random",
    "lm_batches_sequential",
    "minibatches",
    "nonneg_float",
    "nonneg_int",
    "noise_distribution",
    "positive_float",
    "positive_int",
    "probability",
    "preprocess_timemachine",
    "ptb",
    "ptb_sentences",
    "ptb_word2vec",
    "save_metrics",
    "skipgram_batches",
    "subsample",
    "timemachine",
    "tinyshakespeare",
    "tokenize",
]
