"""Text corpora, tokens, a vocabulary, and the two ways to cut a corpus into language-model batches.

Dive into Deep Learning, sections 9.2 "Converting Raw Text into Sequence Data" and 9.3 "Language
Models": https://d2l.ai/chapter_recurrent-neural-networks/text-sequence.html and
https://d2l.ai/chapter_recurrent-neural-networks/language-model.html

    from data import timemachine, tinyshakespeare, ptb, tokenize, Vocab
    from data import lm_batches_random, lm_batches_sequential

    text = tinyshakespeare()                      # str, 1,115,394 characters
    vocab = Vocab(tokenize(text, "char"))         # 65 characters + <unk>
    corpus = vocab.encode(text)                   # int64 (1115394,)
    for X, Y in lm_batches_sequential(corpus, batch_size=32, num_steps=35, rng=rng):
        ...                                       # X, Y: int64 (32, 35), Y[b, t] follows X[b, t]

The corpora
-----------
- ``timemachine()``: H. G. Wells, The Time Machine (1895), as d2l uses it: 178,979 ASCII bytes,
  3,221 lines. d2l reads it through ``preprocess_timemachine`` (letters only, lower case).
- ``tinyshakespeare()``: Karpathy's char-rnn corpus, 1,115,394 ASCII bytes, 40,000 lines,
  65 distinct characters. Used as it is: the character model sees case, punctuation, newlines.
- ``ptb(split)``: the Penn Treebank as Mikolov prepared it for language modelling: one sentence per
  line, lower case, numbers as ``N``, rare words as ``<unk>``; 42,068 / 3,370 / 3,761 lines.
  ``tokenize(ptb(), "word", eos="<eos>")`` gives the standard 929,589 training tokens and a
  vocabulary of 10,000 words. The text is derived from the LDC's Penn Treebank (not openly
  licensed): for teaching and research only.

Files are found as for every dataset (see ``data.files``: ``data_dir``, ``$ARC_DATA_DIR/<name>/``,
``data/cache/<name>/``, else a checksummed download). Local files are checked by their structure:
exact size in bytes, valid UTF-8, line count and first characters; a mismatch is a ``DataError``
naming the file. PTB is published as ``ptb.zip``: if the split's ``.txt`` is in none of those
folders, the zip is found or downloaded and the split extracted from it into the cache.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import data_error, fetch

# %% the corpora: where each file comes from and what it must look like


@dataclass(frozen=True)
class TextFile:
    """One text file of a corpus: its download and the structure a local copy must have."""

    name: str  # the dataset's folder name: data/cache/<name>/, $ARC_DATA_DIR/<name>/
    filename: str
    url: str  # the canonical download (for PTB: the zip holding the file)
    checksum: str  # of the bytes at ``url``
    size: int  # bytes
    lines: int  # newline characters
    head: str  # how the text begins
    member_of: tuple[str, str] | None = None  # (archive, member) when ``url`` is an archive

    def path(self, data_dir=None) -> Path:
        """Where the file is: found locally, else downloaded (and extracted) into data/cache."""
        return fetch(self.name, self.filename, [self.url], self.checksum, data_dir, self.member_of)

    def read(self, data_dir=None) -> str:
        """The file's text, after checking its size, encoding, line count and first characters."""
        path = self.path(data_dir)
        raw = path.read_bytes()
        if len(raw) != self.size:
            what = "truncated" if len(raw) < self.size else "trailing bytes"
            raise data_error(f"{path.name} is {len(raw):,} bytes, expected {self.size:,} ({what})", path, self.url)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise data_error(f"{path.name} is not UTF-8 text ({exc})", path, self.url) from None
        if text.count("\n") != self.lines:
            raise data_error(f"{path.name} has {text.count(chr(10)):,} lines, expected {self.lines:,}", path, self.url)
        if not text.startswith(self.head):
            raise data_error(f"{path.name} does not begin with {self.head!r}: {text[:40]!r}", path, self.url)
        return text


# Pinned sha256 of each download (as published with each offline copy); d2l's DATA_HUB pins
# sha1 090b5e7e... (timemachine.txt) and 319d85e5... (ptb.zip) for the same bytes.
TIMEMACHINE = TextFile(
    "timemachine",
    "timemachine.txt",
    "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt",
    "sha256:8424dbd9532ac81f7e5f0b6add90e6952baea29158309d7d1bf3884f4e12c516",
    size=178_979,
    lines=3_221,
    head="The Time Machine, by H. G. Wells [1898]",
)
TINYSHAKESPEARE = TextFile(
    "tinyshakespeare",
    "input.txt",
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    "sha256:86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    size=1_115_394,
    lines=40_000,
    head="First Citizen:\n",
)
PTB_URL = "http://d2l-data.s3-accelerate.amazonaws.com/ptb.zip"
PTB_CHECKSUM = "sha256:310d8f602882a5716613815ed75596e5764ea84ed04c5630eebaaf2b943ec5aa"
PTB = {
    split: TextFile(
        "ptb", f"ptb.{split}.txt", PTB_URL, PTB_CHECKSUM, size, lines, " ", ("ptb.zip", f"ptb/ptb.{split}.txt")
    )
    for split, size, lines in [("train", 5_101_618, 42_068), ("valid", 399_782, 3_370), ("test", 449_945, 3_761)]
}


def timemachine(data_dir=None) -> str:
    """The Time Machine as d2l distributes it: the raw text, 178,979 characters (see the module doc)."""
    return TIMEMACHINE.read(data_dir)


def tinyshakespeare(data_dir=None) -> str:
    """Tiny Shakespeare (karpathy/char-rnn ``input.txt``): the raw text, 1,115,394 characters."""
    return TINYSHAKESPEARE.read(data_dir)


def ptb(split: str = "train", data_dir=None) -> str:
    """The raw text of ``ptb.{split}.txt``, split in "train", "valid", "test": one sentence per line."""
    if split not in PTB:
        raise ValueError(f"split must be one of {', '.join(PTB)}, not {split!r}")
    return PTB[split].read(data_dir)


# %% tokens


def preprocess_timemachine(text: str) -> str:
    """d2l's normalisation of The Time Machine: each run of non-letters becomes one space, then lower case.

    What is left is 26 letters and the space (so a character vocabulary of 27, plus ``<unk>``).
    The scripts that train on The Time Machine say whether they use it; Tiny Shakespeare and PTB
    are used as they are.
    """
    return re.sub("[^A-Za-z]+", " ", text).lower()


def tokenize(text: str, token: str = "char", eos: str | None = None) -> list[str]:
    """Split ``text`` into tokens, with no normalisation: what you pass is what you get.

    ``"char"``: every character, newlines and spaces included (``list(text)``).
    ``"word"``: the runs of non-whitespace characters (``text.split()``); punctuation stays attached.
    ``eos`` (word tokens only): a token appended after every line's words, which is how PTB marks
    sentence ends (``eos="<eos>"``); the line breaks themselves are then otherwise dropped.
    """
    if token == "char":
        if eos is not None:
            raise ValueError("eos= goes with token='word': character tokens keep the newlines themselves")
        return list(text)
    if token == "word":
        if eos is None:
            return text.split()
        return [t for line in text.splitlines() for t in (*line.split(), eos)]
    raise ValueError(f"token must be 'char' or 'word', not {token!r}")


# %% the vocabulary


class Vocab:
    """A token <-> index table, most frequent tokens first, with ``<unk>`` at index 0.

    Index 0 is ``<unk>``, for every token the vocabulary does not know; then ``reserved_tokens`` in
    the order given (for example ``"<pad>", "<bos>", "<eos>"``); then every token of ``tokens`` seen
    at least ``min_freq`` times, most frequent first, ties broken by the token's string so that the
    same text always gives the same indices. Frequency order puts the common tokens at small
    indices, which makes the table easy to read and lets ``min_freq`` cut the long tail of rare
    tokens (Zipf's law: a few tokens make most of any text).

    ``token_freqs``: every distinct token of ``tokens`` with its count, most frequent first (the
    corpus statistics, before ``min_freq``).
    """

    def __init__(self, tokens: Iterable[str], min_freq: int = 0, reserved_tokens: Iterable[str] = ()):
        counts = Counter(tokens)
        self.token_freqs = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        self.idx_to_token = list(dict.fromkeys(["<unk>", *reserved_tokens]))  # ordered, no duplicates
        known = set(self.idx_to_token)
        self.idx_to_token += [t for t, n in self.token_freqs if n >= min_freq and t not in known]
        self.token_to_idx = {t: i for i, t in enumerate(self.idx_to_token)}

    @property
    def unk(self) -> int:
        """The index of ``<unk>``: always 0."""
        return 0

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens: {self.idx_to_token[:8]}{' ...' if len(self) > 8 else ''})"

    def encode(self, tokens: Iterable[str]) -> np.ndarray:
        """int64 indices of ``tokens``, unknown tokens as ``unk``. A string is read as its characters."""
        get = self.token_to_idx.get
        return np.fromiter((get(t, 0) for t in tokens), dtype=np.int64)

    def decode(self, indices) -> list[str]:
        """The tokens at ``indices`` (a 1-D array or list of ints in 0 .. len - 1)."""
        indices = np.asarray(indices)
        if indices.ndim != 1 or (indices.size and not np.issubdtype(indices.dtype, np.integer)):
            raise ValueError(f"decode takes a 1-D sequence of integer indices, got shape {indices.shape}")
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise ValueError(f"indices must lie in 0 .. {len(self) - 1}, got {indices.min()} .. {indices.max()}")
        return [self.idx_to_token[i] for i in indices.tolist()]


# %% language-model minibatches: random sampling and sequential partitioning (d2l 9.3)
#
# A language model predicts every next token: the target Y is the input X shifted by one, so
# Y[b, t] = corpus[p + 1] where X[b, t] = corpus[p]. Both samplers cut the corpus into
# subsequences of num_steps tokens and start at a random offset in 0 .. num_steps - 1, so that
# successive epochs see different cuts; they differ in how the subsequences are arranged.
#
# Random sampling: the subsequences are put in random order, so neighbouring rows and successive
# batches are unrelated pieces of text. Every batch is an independent sample, which suits plain
# SGD, but the model must start each subsequence with a fresh (zero) hidden state: it never sees
# context from before the subsequence's first token.
#
# Sequential partitioning: the corpus (after the offset) is cut into batch_size long rows, and
# batch i takes columns i*num_steps .. (i+1)*num_steps - 1 of every row. Row b of batch i+1 starts
# exactly where row b of batch i ended, so the hidden state left by one batch is the right
# starting state for the next: carrying it over gives the model context beyond num_steps tokens.
# The state must then be detached from the graph between batches (truncated BPTT): otherwise the
# gradient would flow back through every earlier batch, and the cost of a step, and the memory it
# holds, would grow with the length of the epoch.


def _check_lm_args(corpus, batch_size: int, num_steps: int) -> np.ndarray:
    """The corpus as a 1-D int64 array, after checking that it holds at least one batch."""
    corpus = np.asarray(corpus)
    if corpus.ndim != 1 or (corpus.size and not np.issubdtype(corpus.dtype, np.integer)):
        raise ValueError(f"corpus must be a 1-D sequence of token indices, got shape {corpus.shape}")
    if batch_size < 1 or num_steps < 1:
        raise ValueError(f"batch_size and num_steps must be positive, got {batch_size} and {num_steps}")
    # The worst offset, num_steps - 1, leaves len - num_steps tokens that have a target: at least one
    # batch of batch_size * num_steps whatever the offset.
    if len(corpus) < (batch_size + 1) * num_steps:
        raise ValueError(
            f"a corpus of {len(corpus)} tokens is too short for batches of {batch_size} x {num_steps}: "
            f"it needs at least (batch_size + 1) * num_steps = {(batch_size + 1) * num_steps}"
        )
    return corpus.astype(np.int64, copy=False)


def lm_batches_random(
    corpus, batch_size: int, num_steps: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of (X, Y) int64 batches (batch_size, num_steps) by random sampling (d2l 9.3).

    After a random offset the corpus is cut into non-overlapping subsequences of ``num_steps``
    tokens; they are shuffled and dealt out ``batch_size`` at a time (leftovers dropped). Y is X
    shifted by one token. Rows are unrelated: start each batch from a fresh hidden state.
    The offset and the order are drawn from ``rng`` at the call.
    """
    corpus = _check_lm_args(corpus, batch_size, num_steps)
    offset = int(rng.integers(num_steps))
    n_subseqs = (len(corpus) - offset - 1) // num_steps  # the last token of X needs a target
    starts = offset + num_steps * rng.permutation(n_subseqs)  # first token of every subsequence
    steps = np.arange(num_steps)
    n_batches = n_subseqs // batch_size
    return (
        (corpus[s[:, None] + steps], corpus[s[:, None] + steps + 1])  # (B, T), (B, T)
        for s in starts[: n_batches * batch_size].reshape(n_batches, batch_size)
    )


def lm_batches_sequential(
    corpus, batch_size: int, num_steps: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of (X, Y) int64 batches (batch_size, num_steps) by sequential partitioning (d2l 9.3).

    After a random offset the corpus is cut into ``batch_size`` equal rows, one contiguous stretch
    of text each; batch i is columns i*num_steps .. (i+1)*num_steps - 1 of those rows. Row b of
    batch i+1 continues row b of batch i, so carry the hidden state across batches, detached.
    Y is X shifted by one token. The offset is drawn from ``rng`` at the call.
    """
    corpus = _check_lm_args(corpus, batch_size, num_steps)
    offset = int(rng.integers(num_steps))
    n_tokens = (len(corpus) - offset - 1) // batch_size * batch_size  # tokens of X, a multiple of B
    Xs = corpus[offset : offset + n_tokens].reshape(batch_size, -1)  # (B, n_tokens / B)
    Ys = corpus[offset + 1 : offset + 1 + n_tokens].reshape(batch_size, -1)  # the same, one token later
    n_batches = Xs.shape[1] // num_steps
    return (
        (Xs[:, i : i + num_steps].copy(), Ys[:, i : i + num_steps].copy())  # (B, T), (B, T)
        for i in range(0, n_batches * num_steps, num_steps)
    )
