r"""Byte-level byte-pair encoding (BPE): the subword tokenizer the transformer scripts share.

Byte-pair encoding (Sennrich, Haddow and Birch 2016, https://arxiv.org/abs/1508.07909; d2l 15.6,
https://d2l.ai/chapter_natural-language-processing-pretraining/subword-embedding.html) builds a
vocabulary of subwords bottom-up: start from single symbols, count every pair of adjacent symbols
in the corpus, merge the most frequent pair into one new symbol, and repeat until the vocabulary
has the size asked for. Frequent words end up as one token, rare words as a few pieces, and no word
is ever out of vocabulary. ``05-rnns/bpe_numpy.py`` writes the original algorithm step by step on
characters; this module is the fast byte-level version used by GPT-2 (Radford et al. 2019,
"Language Models are Unsupervised Multitask Learners").

    from data import tinyshakespeare
    from data.bpe import BPETokenizer

    tok = BPETokenizer.train(tinyshakespeare(), vocab_size=512)   # 256 bytes + 256 merges
    ids = tok.encode("To be")                                    # [..] list of ints < 512
    assert tok.decode(ids) == "To be"
    tok.save("runs/bpe.json"); tok = BPETokenizer.load("runs/bpe.json")

Why bytes
---------
The base vocabulary is the 256 possible bytes, not the characters of the training text. Every
string is a sequence of UTF-8 bytes, so every string (any script, emoji, ``"\r\n"``, characters
the training text never had) can be encoded, and ``decode(encode(text)) == text`` byte for byte.
There is no ``<unk>``: a character never seen in training just costs its 1-4 bytes as tokens.
Token ``i < 256`` is the byte ``i``; merge number r (counting from 0) creates token ``256 + r``,
whose bytes are the concatenation of the pair's bytes.

The pre-tokenizer
-----------------
Before counting pairs the text is cut into chunks by a regular expression (``PATTERN``, GPT-2's
idea written with Python's ``re``), and merges never cross a chunk boundary. A chunk is one of

    '(?:[sdmt]|ll|ve|re)    an English contraction: 's 't 'd 'm 'll 've 're
     ?[^\W\d_]+             a word (letters of any alphabet) with its one leading space: " cat"
     ?\d+                   a number with its leading space: " 1895"
     ?(?:[^\s\w]|_)+        a run of punctuation or other symbols with its leading space: " ..."
    \s+(?!\S)               a run of whitespace, less its last character if a non-space follows
    \s+                     the whitespace left (a single space before a non-space, or at the end)

(``[^\W\d_]`` is "a word character that is no digit and no underscore", i.e. a letter. Every
character is a letter, a digit, whitespace or "other", so the chunks always join back into the
text.) Keeping the leading space inside the word makes " the" one token, distinct from "the" at
the start of a line; ``\s+(?!\S)`` leaves the last space of a run of spaces to the following word,
so "a   b" becomes "a", "  ", " b". Without chunks, BPE would spend merges on frequent but useless
pairs across words ("e" + " t"), and the same word would be tokenized differently depending on
what follows it.

Training
--------
The text is reduced to a table of distinct chunks with their counts (``Counter`` of chunks), each
chunk a list of byte ids. Pair counts are weighted by chunk frequency. Then, for each new token:
take the most frequent pair, merge every occurrence of it (left to right, so "aaa" with the pair
(a, a) becomes "aa a"), record it. Ties are broken deterministically: among pairs with the
highest count, the one whose (left bytes, right bytes) sorts first wins (then the smaller ids,
should two tokens have the same bytes). Training stops early if no pair is left (every chunk is
one token).

Recounting every pair after every merge would cost a pass over the whole table per merge. Instead
(``PairCounts``) the counts are updated incrementally: an index from each pair to the chunks that
contain it says which chunks a merge touches; only those chunks have their old pairs subtracted and
their new pairs added; a heap with lazy deletion finds the best pair (an entry whose count is out of
date is dropped when it surfaces). tests/test_bpe.py checks after every merge that these counts
equal a recount from scratch. Training vocab_size=1000 (744 merges) on Tiny Shakespeare (1.1 MB)
takes 1-2 s on one core, and encoding the whole text under a second (1.1 MB -> 463k
tokens, 2.4 characters per token).

Encoding
--------
Each chunk is encoded alone: start from its bytes and repeatedly merge the adjacent pair with the
lowest rank (the earliest learned merge) among those present, all its occurrences left to right,
until no learned pair is left. This replays training's order, so a chunk seen in training gets
the segmentation it had there. Merging greedily left to right instead would not: with the merges
(b, c) then (a, b), "abc" is "a" + "bc", not "ab" + "c". Chunk encodings are cached.
"""

from __future__ import annotations

import heapq
import json
import operator
import re
from collections import Counter
from pathlib import Path

from .files import atomic_write

# One alternative per kind of chunk; see the module docstring. Order matters: contractions first.
PATTERN = re.compile(r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")
FORMAT = "learning-arc-bpe"  # the "format" field of a saved tokenizer
VERSION = 1


def pretokenize(text: str) -> list[str]:
    """The chunks of ``text`` (``PATTERN``), which join back into ``text``: merges stay inside a chunk."""
    return PATTERN.findall(text)


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """``ids`` with every occurrence of ``pair`` replaced by ``new_id``, scanning left to right."""
    a, b = pair
    out, i, n = [], 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def count_pairs(words, freqs) -> Counter:
    """Adjacent-pair counts over ``words`` (lists of ids), each weighted by its frequency: the slow recount."""
    counts = Counter()
    for w, f in zip(words, freqs):
        for pair in zip(w, w[1:]):
            counts[pair] += f
    return counts


# %% training: incremental pair counts


class PairCounts:
    """The pair counts of a chunk table, kept up to date merge after merge without recounting everything.

    words: the distinct chunks as lists of token ids (changed in place by ``merge``); freqs: their counts;
    vocab: id -> bytes (the caller appends a new token's bytes before merging it), for the tie-break.
    """

    def __init__(self, words: list[list[int]], freqs: list[int], vocab: list[bytes]):
        self.words, self.freqs, self.vocab = words, freqs, vocab
        self.counts = count_pairs(words, freqs)  # pair -> weighted count (0 once gone)
        self.where: dict[tuple[int, int], set[int]] = {}  # pair -> chunks that contain it (a superset)
        for i, w in enumerate(words):
            for pair in zip(w, w[1:]):
                self.where.setdefault(pair, set()).add(i)
        self.heap = [self._entry(pair, c) for pair, c in self.counts.items()]
        heapq.heapify(self.heap)

    def _entry(self, pair, count):
        """Heap entry: the smallest is the highest count, then the pair whose bytes sort first, then ids."""
        a, b = pair
        return (-count, self.vocab[a], self.vocab[b], a, b)

    def best(self) -> tuple[int, int] | None:
        """The pair to merge next (highest count, ties by bytes), or None when no pair is left."""
        while self.heap:
            neg, _, _, a, b = self.heap[0]
            if self.counts.get((a, b), 0) == -neg > 0:  # up to date: the pair's count did not change since
                return (a, b)
            heapq.heappop(self.heap)  # stale: a newer entry with the current count is in the heap
        return None

    def merge(self, pair: tuple[int, int], new_id: int) -> None:
        """Merge ``pair`` into ``new_id`` in every chunk holding it, updating only the counts those chunks change."""
        changed = set()
        for i in sorted(self.where.pop(pair, ())):
            w, f = self.words[i], self.freqs[i]
            new = merge_pair(w, pair, new_id)
            if len(new) == len(w):  # the index is a superset: this chunk lost the pair to an earlier merge
                continue
            for p in zip(w, w[1:]):  # take the chunk's old pairs out ...
                self.counts[p] -= f
                changed.add(p)
            for p in zip(new, new[1:]):  # ... and put its new pairs in
                self.counts[p] += f
                changed.add(p)
                self.where.setdefault(p, set()).add(i)
            self.words[i] = new
        for p in changed:
            if self.counts[p] > 0:
                heapq.heappush(self.heap, self._entry(p, self.counts[p]))
            else:
                del self.counts[p]


# %% the tokenizer


class BPETokenizer:
    """Byte-level BPE: ids 0..255 are bytes, id 256 + r is merge r; ``train``, ``encode``, ``decode``, ``save``.

    ``BPETokenizer(merges)`` builds one from a list of pairs (a, b); merge r may only use ids < 256 + r.
    ``specials`` (names such as "<pad>") get the ids after the merges: see ``with_specials``.
    """

    def __init__(self, merges, specials=()):
        self.merges: list[tuple[int, int]] = []
        self.vocab: list[bytes] = [bytes([i]) for i in range(256)]  # id -> its bytes
        for r, pair in enumerate(merges):
            try:
                a, b = (int(x) for x in pair)
            except (TypeError, ValueError):
                raise ValueError(f"merge {r} must be a pair of token ids, got {pair!r}") from None
            if not (0 <= a < 256 + r and 0 <= b < 256 + r):
                raise ValueError(f"merge {r} = {pair!r} uses an id outside 0 .. {256 + r - 1} (the tokens before it)")
            self.merges.append((a, b))
            self.vocab.append(self.vocab[a] + self.vocab[b])
        self.ranks = {pair: 256 + r for r, pair in enumerate(self.merges)}  # pair -> the id it merges into
        self.cache: dict[str, tuple[int, ...]] = {}  # chunk -> its ids
        # special tokens ("<pad>", "<eos>") take the ids after the merges; encode never produces them
        self.specials: dict[str, int] = {}
        for name in specials:
            if not isinstance(name, str) or not name or name in self.specials:
                raise ValueError(f"special tokens must be distinct non-empty strings, got {list(specials)!r}")
            self.specials[name] = len(self.vocab) + len(self.specials)

    def __len__(self) -> int:
        return len(self.vocab) + len(self.specials)

    def __repr__(self) -> str:
        extra = f" + {len(self.specials)} special" if self.specials else ""
        return f"BPETokenizer({len(self)} tokens: 256 bytes + {len(self.merges)} merges{extra})"

    def with_specials(self, *names: str) -> BPETokenizer:
        """The same merges with special tokens appended: ``tok.with_specials("<pad>", "<bos>", "<eos>")``.

        Their ids follow the merges (``tok.specials["<eos>"]``); ``encode`` never produces them (the
        text "<eos>" is just bytes), and ``decode`` writes each as its name.
        """
        return BPETokenizer(self.merges, [*self.specials, *names])

    @classmethod
    def train(cls, text: str, vocab_size: int, verbose: bool = False) -> BPETokenizer:
        """Learn ``vocab_size - 256`` merges from ``text`` (fewer if every chunk becomes one token first)."""
        if not isinstance(vocab_size, int) or vocab_size < 256:
            raise ValueError(f"vocab_size must be an int >= 256 (the byte alphabet), got {vocab_size!r}")
        chunks = Counter(pretokenize(text))
        words = [list(c.encode("utf-8")) for c in chunks]
        freqs = list(chunks.values())
        vocab = [bytes([i]) for i in range(256)]
        stats = PairCounts(words, freqs, vocab)
        merges = []
        for new_id in range(256, vocab_size):
            pair = stats.best()
            if pair is None:
                break
            vocab.append(vocab[pair[0]] + vocab[pair[1]])  # before merging: new pairs' tie-break reads it
            if verbose:
                print(f"merge {new_id - 256}: {vocab[pair[0]]!r} + {vocab[pair[1]]!r} (count {stats.counts[pair]})")
            stats.merge(pair, new_id)
            merges.append(pair)
        return cls(merges)

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        """One chunk: from its bytes, merge the lowest-rank pair present until none is left (cached)."""
        if chunk in self.cache:
            return self.cache[chunk]
        ids = list(chunk.encode("utf-8"))
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: self.ranks.get(p, 1 << 62))  # the earliest learned merge
            if pair not in self.ranks:
                break
            ids = merge_pair(ids, pair, self.ranks[pair])
        self.cache[chunk] = out = tuple(ids)
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``: chunk by chunk (see the module docstring)."""
        if not isinstance(text, str):
            raise ValueError(f"encode takes a str, got {type(text).__name__}")
        ids = []
        for chunk in pretokenize(text):
            ids.extend(self._encode_chunk(chunk))
        return ids

    def decode_bytes(self, ids) -> bytes:
        """The bytes of the tokens ``ids``, concatenated."""
        n, names = len(self), {i: name.encode("utf-8") for name, i in self.specials.items()}
        out = []
        for i in ids:
            try:
                i = operator.index(i)  # an int, or a numpy integer; not a float or a str
            except TypeError:
                raise ValueError(f"token ids must be ints, got {i!r}") from None
            if not 0 <= i < n:
                raise ValueError(f"token id {i} is out of range: this tokenizer has ids 0 .. {n - 1}")
            out.append(self.vocab[i] if i < len(self.vocab) else names[i])
        return b"".join(out)

    def decode(self, ids, errors: str = "replace") -> str:
        """The text of the tokens ``ids``. ``decode(encode(text)) == text`` for every str.

        A sequence that was not made by ``encode`` (a model's samples) may cut a character's UTF-8
        bytes; those become U+FFFD with ``errors="replace"`` (GPT-2's choice), or raise with "strict".
        """
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def save(self, path) -> None:
        """Write the merges as JSON to ``path``, atomically (a temporary file, then a rename)."""
        path = Path(path)
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "pattern": PATTERN.pattern,
            "merges": self.merges,
            "specials": list(self.specials),
        }
        with atomic_write(path) as f:
            f.write(json.dumps(doc).encode("utf-8"))

    @classmethod
    def load(cls, path) -> BPETokenizer:
        """Read a tokenizer written by ``save``; a file that is not one is a ValueError naming it."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not a saved BPETokenizer (not JSON: {exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise ValueError(f"{path} is not a saved BPETokenizer (format {FORMAT!r} version {VERSION})")
        if doc.get("pattern") != PATTERN.pattern:
            raise ValueError(f"{path} was saved with another pre-tokenizer pattern: its encodings would differ")
        return cls(doc["merges"], doc.get("specials", ()))
