"""English-French sentence pairs for machine translation, and the way d2l turns them into arrays.

Dive into Deep Learning, section 10.5 "Machine Translation and the Dataset":
https://d2l.ai/chapter_recurrent-modern/machine-translation-and-dataset.html

    from data import fra_eng, tokenize_nmt, split_by_source, nmt_vocab, nmt_arrays
    from data import shared_bpe, bpe_text, id_arrays                  # subword arrays (the Transformer)

    pairs = fra_eng()                                  # [("Go.", "Va !"), ...]: 167,130 raw pairs
    src = [tokenize_nmt(en) for en, _ in pairs]        # [["go", "."], ...]
    tgt = [tokenize_nmt(fr) for _, fr in pairs]        # [["va", "!"], ...]
    split = split_by_source(src, n_test=2000, n_val=1000, seed=0)   # index arrays, disjoint by source
    src_vocab = nmt_vocab([src[i] for i in split["train"]], min_freq=2)
    arrays = nmt_arrays(src, tgt, src_vocab, tgt_vocab, num_steps=12)  # padded int64 arrays

The corpus: Tatoeba sentence pairs as manythings.org publishes them for Anki, in the copy d2l uses
(2019): one pair per line, ``English<TAB>French``. Newer files from manythings.org add a third,
attribution column (``CC-BY 2.0 (France) Attribution: tatoeba.org #...``); ``fra_eng`` reads both
and returns the same pairs. The text is CC-BY 2.0 (France), from tatoeba.org and manythings.org/anki.

The file is found as every dataset is (``data.files``: ``data_dir``, ``$ARC_DATA_DIR/fra-eng/``,
``data/cache/fra-eng/``), else d2l's ``fra-eng.zip`` is downloaded, checked against d2l's sha1, and
``fra-eng/fra.txt`` is extracted from it. A local file is checked by its structure: UTF-8, every
line with the same number (2 or 3) of tab-separated fields, the last line complete; the two-column
file is d2l's and must have its exact size and line count.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from .bpe import BPETokenizer
from .files import data_error, fetch
from .text import Vocab

# %% the file

FRA_ENG_URL = "http://d2l-data.s3-accelerate.amazonaws.com/fra-eng.zip"
FRA_ENG_CHECKSUM = "sha1:94646ad1522d915e7b0f9296181140edcf86a4f5"  # d2l's DATA_HUB entry for fra-eng.zip
FRA_ENG_MEMBER = ("fra-eng.zip", "fra-eng/fra.txt")
D2L_SIZE, D2L_LINES = 11_669_748, 167_130  # d2l's two-column fra.txt
FIRST_PAIR = "Go.\tVa !"  # every release starts with it


def fra_eng(data_dir=None) -> list[tuple[str, str]]:
    """Every (English, French) pair of ``fra.txt``, raw, in file order; a third column is dropped.

    Raises ``data.DataError`` for a missing file that cannot be downloaded, and for a local file
    that is not UTF-8, is truncated, or is not two or three tab-separated columns.
    """
    path = fetch("fra-eng", "fra.txt", [FRA_ENG_URL], FRA_ENG_CHECKSUM, data_dir, FRA_ENG_MEMBER)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise data_error(f"{path.name} is not UTF-8 text ({exc})", path, FRA_ENG_URL) from None
    if not text.startswith(FIRST_PAIR):
        raise data_error(f"{path.name} does not begin with {FIRST_PAIR!r}: {text[:40]!r}", path, FRA_ENG_URL)
    if not text.endswith("\n"):  # a download or copy cut inside its last line
        raise data_error(f"{path.name} is truncated: its last line is incomplete", path, FRA_ENG_URL)
    lines = text[:-1].split("\n")
    columns = lines[0].count("\t") + 1
    if columns not in (2, 3):
        raise data_error(f"{path.name} has {columns} tab-separated columns, expected 2 or 3", path, FRA_ENG_URL)
    bad = next((i for i, line in enumerate(lines) if line.count("\t") != columns - 1), None)
    if bad is not None:
        raise data_error(
            f"{path.name}, line {bad + 1}: not {columns} tab-separated columns: {lines[bad][:60]!r}", path, FRA_ENG_URL
        )
    if columns == 2 and (len(raw), len(lines)) != (D2L_SIZE, D2L_LINES):
        what = "truncated" if len(raw) < D2L_SIZE else "not d2l's file"
        raise data_error(
            f"{path.name} is {len(raw):,} bytes and {len(lines):,} lines, expected d2l's "
            f"{D2L_SIZE:,} bytes and {D2L_LINES:,} lines ({what})",
            path,
            FRA_ENG_URL,
        )
    if columns == 3 and len(lines) < D2L_LINES:  # newer releases only grew
        raise data_error(
            f"{path.name} has {len(lines):,} lines, fewer than d2l's 2019 copy ({D2L_LINES:,}): truncated",
            path,
            FRA_ENG_URL,
        )
    return [tuple(line.split("\t")[:2]) for line in lines]


# %% preprocessing and tokens (d2l 10.5)


def preprocess_nmt(text: str) -> str:
    """d2l's normalisation: non-breaking spaces become spaces, lower case, a space before , . ! ?

    French typography puts a (narrow) non-breaking space before ``! ?``; after this step the
    punctuation marks are words of their own: ``"Va\\u202f!"`` -> ``"va !"``, ``"Hi."`` -> ``"hi ."``.
    """
    text = text.replace("\u202f", " ").replace("\xa0", " ").lower()
    return re.sub(r"(?<=[^ ])([,.!?])", r" \1", text)  # a mark right after a non-space gets a space before it


def tokenize_nmt(sentence: str) -> list[str]:
    """The words of a preprocessed sentence: ``"Go."`` -> ``["go", "."]``."""
    return preprocess_nmt(sentence).split()


# %% a split that never shows a test sentence in training


def split_by_source(src: Sequence[Sequence[str]], n_test: int, n_val: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Indices of the pairs in "train", "val" and "test", disjoint by source sentence.

    Tatoeba often translates one English sentence several ways (``"run !"`` has two French
    translations, some sentences dozens). Pairs are grouped by their tokenized source; the groups are shuffled with
    ``seed``, then dealt to test until it holds at least ``n_test`` pairs, then to val until it holds
    ``n_val``, the rest to train. So no source sentence of the test set is ever trained on. Train
    indices follow the shuffled order (its first N are a random sample); val and test are sorted.
    """
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, s in enumerate(src):
        groups.setdefault(tuple(s), []).append(i)
    order = np.random.default_rng(seed).permutation(len(groups))
    keys = list(groups)
    out: dict[str, list[int]] = {"test": [], "val": [], "train": []}
    for g in order:
        name = "test" if len(out["test"]) < n_test else "val" if len(out["val"]) < n_val else "train"
        out[name] += groups[keys[g]]
    if len(out["train"]) == 0:
        raise ValueError(f"n_test={n_test} and n_val={n_val} leave no pairs to train on ({len(src)} pairs)")
    return {
        "train": np.array(out["train"], dtype=np.int64),
        "val": np.sort(np.array(out["val"], dtype=np.int64)),
        "test": np.sort(np.array(out["test"], dtype=np.int64)),
    }


# %% vocabularies and padded arrays

NMT_RESERVED = ("<pad>", "<bos>", "<eos>")  # after <unk>, which the Vocab always puts at index 0


def nmt_vocab(sentences: Sequence[Sequence[str]], min_freq: int = 2) -> Vocab:
    """The Vocab of one language: <unk> 0, <pad> 1, <bos> 2, <eos> 3, then the words seen ``min_freq`` times."""
    return Vocab((t for s in sentences for t in s), min_freq, NMT_RESERVED)


def pad_truncate(seqs: Sequence[np.ndarray], num_steps: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Each sequence cut or padded to ``num_steps``: an int64 array (N, num_steps) and the valid lengths (N,)."""
    X = np.full((len(seqs), num_steps), pad, dtype=np.int64)
    valid = np.zeros(len(seqs), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[:num_steps]
        X[i, : len(s)] = s
        valid[i] = len(s)
    return X, valid


def nmt_arrays(src, tgt, src_vocab: Vocab, tgt_vocab: Vocab, num_steps: int) -> dict[str, np.ndarray]:
    """Padded int64 arrays of token lists ``src`` and ``tgt`` (one pair per row):

    - ``src`` (N, num_steps): the source words then ``<eos>``, padded with ``<pad>``; ``src_len`` (N,)
    - ``dec_in`` (N, num_steps): ``<bos>`` then the label shifted right: what the decoder reads (teacher
      forcing); past ``label_len`` it holds tokens whose predictions the masked loss ignores
    - ``label`` (N, num_steps): the target words then ``<eos>``: what it must predict; ``label_len`` (N,)

    A sentence longer than ``num_steps - 1`` words is cut to its first ``num_steps - 1``, so that
    ``<eos>`` always ends the valid part (the model always sees where a sentence stops).
    """
    if num_steps < 2:
        raise ValueError(f"num_steps must be at least 2 (a word and <eos>), got {num_steps}")
    if len(src) != len(tgt):
        raise ValueError(f"{len(src)} source sentences but {len(tgt)} target sentences")
    markers = [[v.token_to_idx.get(t) for t in NMT_RESERVED] for v in (src_vocab, tgt_vocab)]
    if None in markers[0] or markers[0] != markers[1]:
        raise ValueError("both vocabularies must give <pad> <bos> <eos> the same indices (build them with nmt_vocab)")
    pad, bos, eos = markers[0]
    cut = num_steps - 1
    S, src_len = pad_truncate([np.append(src_vocab.encode(s[:cut]), eos) for s in src], num_steps, pad)
    Y, label_len = pad_truncate([np.append(tgt_vocab.encode(t[:cut]), eos) for t in tgt], num_steps, pad)
    D = np.concatenate([np.full((len(Y), 1), bos, dtype=np.int64), Y[:, :-1]], axis=1)  # label shifted right
    return {"src": S, "src_len": src_len, "dec_in": D, "label": Y, "label_len": label_len}


# %% subword tokens: one byte-level BPE shared by both languages (the Transformer's input)

BPE_SPECIALS = ("<pad>", "<bos>", "<eos>")  # after the merges: ids len(tok) - 3 .. len(tok) - 1


def bpe_text(words: Sequence[str]) -> str:
    """A sentence's words as the text the BPE reads: a space before every word, the first one too, so that a
    word has one token form wherever it stands (``["va", "!"]`` -> ``" va !"``)."""
    return "".join(" " + w for w in words)


def shared_bpe(sentences: Sequence[Sequence[str]], vocab_size: int) -> BPETokenizer:
    """A BPETokenizer of ``vocab_size`` tokens (256 bytes, merges, then <pad> <bos> <eos>; fewer merges if the
    text runs out of pairs to merge) trained on the sentences of both languages together, one sentence a line."""
    if vocab_size < 256 + len(BPE_SPECIALS):
        raise ValueError(f"vocab_size must be at least 259 (bytes and specials), got {vocab_size}")
    tok = BPETokenizer.train("\n".join(bpe_text(s) for s in sentences), vocab_size - len(BPE_SPECIALS))
    return tok.with_specials(*BPE_SPECIALS)


def id_arrays(src_ids, tgt_ids, pad: int, bos: int, eos: int) -> dict[str, np.ndarray]:
    """Token id lists of pairs -> the arrays of ``nmt_arrays``, padded to the longest sentence (nothing is cut):
    ``src`` = ids + eos, ``dec_in`` = bos + the label shifted right, ``label`` = ids + eos, and the lengths
    ``src_len``, ``label_len``."""
    if len(src_ids) != len(tgt_ids):
        raise ValueError(f"{len(src_ids)} source sentences but {len(tgt_ids)} target sentences")
    S, src_len = pad_truncate([np.array([*s, eos]) for s in src_ids], max(map(len, src_ids), default=0) + 1, pad)
    Y, label_len = pad_truncate([np.array([*t, eos]) for t in tgt_ids], max(map(len, tgt_ids), default=0) + 1, pad)
    D = np.concatenate([np.full((len(Y), 1), bos, dtype=np.int64), Y[:, :-1]], axis=1)  # label shifted right
    return {"src": S, "src_len": src_len, "dec_in": D, "label": Y, "label_len": label_len}
