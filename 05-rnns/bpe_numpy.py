"""Subword embeddings: byte-pair encoding learned step by step, and fastText's character n-grams.

A word-level vocabulary cannot represent a word it never saw ("timetraveller", a misspelling, a new
name), and treats "help", "helps" and "helpful" as unrelated symbols. Subword units fix both.
Byte-pair encoding (BPE; Sennrich, Haddow and Birch 2016) learns them from the corpus: split every word
into characters plus an end-of-word marker "</w>", count every pair of adjacent symbols (weighted by
the word's frequency), merge the most frequent pair into one new symbol everywhere, and repeat:

    repeat num_merges times:  (a, b) = argmax_{pairs} sum_w freq(w) * count of (a, b) in w
                              every "a b" -> "ab" in every word
    encode(new word): replay the merges in the order learned (the lowest-ranked pair present first)

Frequent words become one symbol, rare words a few frequent pieces (un + believ + ably). The marker
keeps "est</w>" (a word ending) apart from "est" inside "esteem". Byte-level BPE (GPT-2) starts from
the 256 bytes instead of characters, so no text is ever out of vocabulary: data/bpe.py's
`BPETokenizer`, which main() trains beside the lesson on the same words for comparison.
fastText (Bojanowski et al. 2017) keeps skip-gram but builds a word's vector from its character
n-grams, n = 3..6, of "<word>" (plus the whole "<word>"): u_w = sum_{g in G(w)} z_g, each n-gram's
row chosen by a hash (FNV-1a) modulo 2 million buckets; unseen words share n-grams with known ones.
BPE has no random part: --seed is accepted for the common command line and changes nothing.

Reading: R. Sennrich, B. Haddow and A. Birch (2016), "Neural Machine Translation of Rare Words with
Subword Units", ACL, https://arxiv.org/abs/1508.07909 (Algorithm 1 is the loop below); d2l 15.6
"Subword Embedding", https://d2l.ai/chapter_natural-language-processing-pretraining/subword-embedding.html;
P. Bojanowski, E. Grave, A. Joulin and T. Mikolov (2017), "Enriching Word Vectors with Subword
Information", TACL, https://arxiv.org/abs/1607.04606 (fastText).
Arc: NLP pretraining -- subword embeddings (d2l 15.6): byte-pair encoding and fastText's n-grams.

Run:  python 05-rnns/bpe_numpy.py                          (The Time Machine, 2,000 merges, about a minute)
      python 05-rnns/bpe_numpy.py --corpus ptb --merges 500
      python 05-rnns/bpe_numpy.py --smoke                  (seconds: the first 2,000 words, 100 merges)
Look first at `learn_bpe` (count, pick, merge, repeat), then at the worked example above `TOY_VOCAB`,
then at runs/bpe_numpy/bpe_merges.png: how fast tokens per word fall with merges.
"""

# %%
import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from tqdm import tqdm

from data import (
    DataError,
    nonneg_int,
    positive_int,
    preprocess_timemachine,
    ptb,
    save_metrics,
    timemachine,
    tinyshakespeare,
    tokenize,
)
from data.bpe import BPETokenizer

EOW = "</w>"  # the end-of-word marker: a symbol of its own until merged with the word's last letters
# The paper's worked example, by hand. Algorithm 1 learns 10 merges from {low: 5, lower: 2, newest: 6,
# widest: 3}, written l o w </w> (5), l o w e r </w> (2), n e w e s t </w> (6), w i d e s t </w> (3):
#     e s 9 (newest 6 + widest 3)   s t 9   t </w> 9   w e 8 (lower 2 + newest 6)   l o 7   o w 7
#     n e 6   e w 6   w </w> 5   w i 3   i d 3   d e 3   e r 2   r </w> 2
# Three pairs tie at 9. Ties here go to the pair whose (left, right) strings sort first, so merge 1 is
# e s -> es. Then es t 9 and t </w> 9 tie, 'es' < 't': merge 2 is es t -> est, and merge 3
# est </w> -> est</w> (9). Now l o 7 and o w 7 tie: merge 4 l o -> lo, merge 5 lo w -> low (7). The words
# are low </w>, low e r </w>, n e w est</w>, w i d est</w>, and n e, e w, w est</w> tie at 6: merge 6
# e w -> ew ('e' < 'n' < 'w'), merge 7 ew est</w> -> ewest</w> ('ew' < 'n'), merge 8 n ewest</w> ->
# newest</w>, merge 9 low </w> -> low</w> (5), and of w i, i d, d est</w> (3 each) merge 10
# d est</w> -> dest</w>. tests/test_bpe.py checks `learn_bpe` against exactly this list. (The paper's
# Python takes the pair it met first on a tie, `max(stats, key=stats.get)`: the same first five merges
# and the same newest</w> and low</w>, via n e and ne w, and w i at merge 10.)
TOY_VOCAB = {"low": 5, "lower": 2, "newest": 6, "widest": 3}  # Algorithm 1 of Sennrich et al. (2016)
PROBE_WORDS = ("unbelievably", "timetraveller", "travellers", "machinery", "psychologist", "the")

# %% [markdown]
# ## Byte-pair encoding, the original algorithm (Sennrich et al. 2016, Algorithm 1)


# %%
def word_symbols(word: str) -> tuple[str, ...]:
    """A word as its starting symbols: its characters, then the end-of-word marker. "low" -> l o w </w>."""
    return (*word, EOW)


def get_stats(vocab: dict) -> Counter:
    """Counts of adjacent symbol pairs over ``vocab`` (symbols tuple -> word frequency), weighted by frequency."""
    stats = Counter()
    for symbols, freq in vocab.items():
        for pair in zip(symbols, symbols[1:]):
            stats[pair] += freq
    return stats


def best_pair(stats: Counter) -> tuple[str, str]:
    """The most frequent pair; a tie goes to the pair whose (left, right) strings sort first."""
    return min(stats, key=lambda pair: (-stats[pair], pair))


def merge_symbols(symbols: tuple, pair: tuple[str, str]) -> tuple:
    """``symbols`` with every occurrence of ``pair`` fused into one symbol, scanning left to right."""
    a, b = pair
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def learn_bpe(vocab: dict, num_merges: int, progress: bool = False):
    """Learn up to ``num_merges`` merges from ``vocab`` (symbols tuple -> frequency).

    Returns the merges in order and the corpus length in symbols before and after each merge
    (``num_merges + 1`` numbers, fewer if every word became one symbol first). Each step recounts
    every pair: simple, and fine for a few thousand distinct words (data/bpe.py updates counts instead).
    """
    merges, n_symbols = [], [sum(len(s) * f for s, f in vocab.items())]
    for _ in tqdm(range(num_merges), desc="merges", leave=False, disable=not (progress and sys.stdout.isatty())):
        stats = get_stats(vocab)  # 1. count the pairs
        if not stats:  # every word is one symbol: nothing left to merge
            break
        pair = best_pair(stats)  # 2. pick the most frequent
        vocab = {merge_symbols(s, pair): f for s, f in vocab.items()}  # 3. merge it everywhere
        merges.append(pair)
        n_symbols.append(sum(len(s) * f for s, f in vocab.items()))
    return merges, n_symbols


def word_freqs_to_vocab(word_freqs: dict) -> dict:
    """{word: frequency} -> {characters + </w>: frequency}, the table `learn_bpe` works on."""
    return {word_symbols(w): f for w, f in word_freqs.items()}


# %% [markdown]
# ## Encoding and decoding with the learned merges


# %%
def encode_word(word: str, ranks: dict) -> list[str]:
    """Segment one word: from its characters + </w>, merge the lowest-ranked learned pair present, repeat."""
    symbols = word_symbols(word)
    while len(symbols) > 1:
        pair = min(zip(symbols, symbols[1:]), key=lambda p: ranks.get(p, float("inf")))
        if pair not in ranks:  # no learned merge applies any more
            break
        symbols = merge_symbols(symbols, pair)
    return list(symbols)


def encode(words: list[str], merges: list) -> list[str]:
    """The subword symbols of a list of words, one word after the other."""
    ranks = {pair: r for r, pair in enumerate(merges)}
    return [s for w in words for s in encode_word(w, ranks)]


def decode(symbols: list[str]) -> list[str]:
    """Back to words: concatenate the symbols and split at the end-of-word markers."""
    return "".join(symbols).split(EOW)[:-1] if symbols else []


# %% [markdown]
# ## fastText: a word as its bag of character n-grams (Bojanowski et al. 2017)
#
# The word is wrapped in boundary symbols, "where" -> "<where>", and cut into all its character n-grams
# for n = 3..6: the 3-grams are "<wh", "whe", "her", "ere", "re>", then the 4-, 5- and 6-grams, plus the
# whole "<where>" as one more unit. The skip-gram score of a context word c is u_w . v_c with
# u_w = sum_{g in G(w)} z_g. "her" inside "<where>" is a different unit from the word "<her>", thanks to
# the boundaries. Rare and unseen words get vectors from the n-grams they share with known words. There
# are too many n-grams to store one vector each, so an n-gram's index is a hash of its characters
# (FNV-1a, 32 bits) modulo 2 million buckets: colliding n-grams share a vector.


# %%
def char_ngrams(word: str, n_min: int = 3, n_max: int = 6) -> list[str]:
    """The character n-grams of "<word>" for n = n_min..n_max, shortest first ("where": "<wh", "whe", ...).

    fastText adds the whole "<word>" as one more unit (when it is longer than n_max it is not an n-gram).
    """
    w = f"<{word}>"
    return [w[i : i + n] for n in range(n_min, n_max + 1) for i in range(len(w) - n + 1)]


def ngram_bucket(gram: str, buckets: int = 2_000_000) -> int:
    """fastText's row for an n-gram: FNV-1a (32-bit) of its UTF-8 bytes, modulo the number of buckets.

    h = 2166136261; for each byte: h = (h XOR byte) * 16777619 mod 2^32. (fastText's C++ XORs the
    byte as a signed char, which differs from this only for bytes >= 128.)
    """
    h = 2166136261
    for byte in gram.encode("utf-8"):
        h = ((h ^ byte) * 16777619) & 0xFFFFFFFF
    return h % buckets


# %% [markdown]
# ## The corpora and the figure


# %%
def corpus_words(name: str, data_dir=None) -> list[str]:
    """The corpus as a list of words: letters only and lower case for the books (d2l's preprocessing), PTB as is."""
    if name == "timemachine":
        return tokenize(preprocess_timemachine(timemachine(data_dir)), "word")
    if name == "tinyshakespeare":
        return tokenize(preprocess_timemachine(tinyshakespeare(data_dir)), "word")
    return [w for w in tokenize(ptb("train", data_dir), "word") if w != "<unk>"]  # PTB: its own tokens


def corpus_text(name: str, data_dir=None) -> str:
    """The corpus's raw text, as its file holds it (PTB: the training split)."""
    if name == "ptb":
        return ptb("train", data_dir)
    return {"timemachine": timemachine, "tinyshakespeare": tinyshakespeare}[name](data_dir)


def plot_merges(n_symbols, n_words, byte_points, path):
    """Tokens per word against the number of merges, the byte-level tokenizer's points beside it."""
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(np.arange(len(n_symbols)), np.asarray(n_symbols) / n_words, label="character BPE with </w> (the lesson)")
    xs, ys = zip(*byte_points)
    ax.plot(xs, ys, "o", label="byte-level BPE, data/bpe.py (space before the word)")
    ax.axhline(1.0, color="gray", lw=0.8, ls=":")
    ax.text(len(n_symbols) - 1, 1.03, "one token per word", ha="right", va="bottom", color="gray")
    ax.set(xlabel="merges learned", ylabel="tokens per word in the corpus", ylim=(0, None),
           title="Byte-pair encoding: each merge shortens the corpus")
    ax.legend()
    fig.savefig(path, dpi=120)


# %% [markdown]
# ## main: learn merges on a real corpus, segment unseen words, compare with the byte-level tokenizer


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", choices=("timemachine", "tinyshakespeare", "ptb"), default="timemachine",
                   help="the words to learn merges from (default timemachine)")
    p.add_argument("--merges", type=positive_int, default=None, help="merges to learn (default 2000; 100 with --smoke)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="accepted for the common command line: BPE draws nothing")
    p.add_argument("--data-dir", default=None, help="where the corpus is (default: $ARC_DATA_DIR, data/cache)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/bpe_numpy)")
    p.add_argument("--smoke", action="store_true", help="seconds: the first 2,000 words, 100 merges")
    args = p.parse_args(argv)
    if args.merges is None:
        args.merges = 100 if args.smoke else 2000
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        words = corpus_words(args.corpus, args.data_dir)
        raw = corpus_text(args.corpus, args.data_dir)  # for the byte-level round trip
    except DataError as exc:
        sys.exit(f"error: {exc}")

    # The paper's toy example first: the ten merges worked out by hand above TOY_VOCAB.
    toy_merges, _ = learn_bpe(word_freqs_to_vocab(TOY_VOCAB), 10)
    print("Sennrich et al. (2016), Algorithm 1, {low: 5, lower: 2, newest: 6, widest: 3}:")
    print("  " + ", ".join(f"{a} {b} -> {a + b}" for a, b in toy_merges))

    if args.smoke:
        words = words[:2000]
    word_freqs = Counter(words)
    print(f"{args.corpus}: {len(words):,} words, {len(word_freqs):,} distinct, "
          f"{len(set(''.join(word_freqs)))} distinct characters")

    t0 = time.perf_counter()
    merges, n_symbols = learn_bpe(word_freqs_to_vocab(word_freqs), args.merges, progress=True)
    secs = time.perf_counter() - t0
    print(f"learned {len(merges):,} merges in {secs:.1f} s; the first 20:")
    print("  " + ", ".join(f"{a} {b}" for a, b in merges[:20]))
    tpw_before, tpw_after = n_symbols[0] / len(words), n_symbols[-1] / len(words)
    print(f"tokens per word: {tpw_before:.2f} (characters + </w>) -> {tpw_after:.3f} after {len(merges):,} merges")

    # Words the merges have to segment: rare, unseen, or frequent.
    segmentations = {w: encode([w], merges) for w in PROBE_WORDS}
    for w, symbols in segmentations.items():
        print(f"  {w} ({word_freqs.get(w, 0)} in the corpus) -> {' '.join(symbols)}")
    ids_all = encode(words, merges)
    lesson_round_trip = decode(ids_all) == words and all(decode(s) == [w] for w, s in segmentations.items())
    assert len(ids_all) == n_symbols[-1], "encoding the corpus with the merges must give training's segmentation"

    # The byte-level tokenizer of data/bpe.py on the same words, with the same number of merges.
    text = " ".join(words)
    t0 = time.perf_counter()
    tok = BPETokenizer.train(text, vocab_size=256 + len(merges))
    byte_secs = time.perf_counter() - t0
    byte_points = []
    for k in sorted({0, len(merges) // 4, len(merges) // 2, len(merges)}):  # the same merges, truncated
        byte_points.append((k, len(BPETokenizer(tok.merges[:k]).encode(text)) / len(words)))
    sample = "Größe, naïve café: 東京 😀\r\n\ttabs  and  spaces"
    byte_round_trip = tok.decode(tok.encode(raw)) == raw and tok.decode(tok.encode(sample)) == sample
    ids = tok.encode(text)
    print(f"byte-level BPE (data/bpe.py): {len(tok)} tokens, trained in {byte_secs:.1f} s; "
          f"{len(ids) / len(words):.3f} tokens per word, {len(text.encode()) / len(ids):.2f} bytes per token; "
          f"round trip of the raw corpus and of {sample!r}: {'ok' if byte_round_trip else 'FAILED'}")
    print("  first 20 merges: " + ", ".join(repr((tok.vocab[a] + tok.vocab[b]).decode()) for a, b in tok.merges[:20]))
    bytelevel_segs = {w: [tok.vocab[i].decode("utf-8", "replace") for i in tok.encode(" " + w)] for w in PROBE_WORDS}
    for w, pieces in bytelevel_segs.items():
        print(f"  {w} -> {' | '.join(pieces)}")

    # fastText: the n-grams of a word and their hashed rows; what an unseen word shares with known ones.
    grams = {w: char_ngrams(w) for w in ("where", "timetraveller", "time", "traveller")}
    print(f"fastText 3-grams of <where>: {', '.join(char_ngrams('where', 3, 3))} "
          f"(rows {', '.join(str(ngram_bucket(g)) for g in char_ngrams('where', 3, 3))} of 2,000,000)")
    known = set(grams["time"]) | set(grams["traveller"])
    shared = sum(g in known for g in grams["timetraveller"]) / len(grams["timetraveller"])
    print(f"  timetraveller has {len(grams['timetraveller'])} n-grams (n = 3..6); {shared:.0%} of them occur "
          f"in time or traveller")

    plot_merges(n_symbols, len(words), byte_points, out_dir / "bpe_merges.png")
    metrics = {
        "script": "bpe_numpy", "corpus": args.corpus, "words": len(words), "distinct_words": len(word_freqs),
        "toy_merges": [list(m) for m in toy_merges], "merges": len(merges),
        "first_merges": [list(m) for m in merges[:20]], "learn_seconds": secs,
        "tokens_per_word_before": tpw_before, "tokens_per_word_after": tpw_after,
        "segmentations": segmentations, "lesson_round_trip": lesson_round_trip,
        "bytelevel_vocab_size": len(tok), "bytelevel_tokens_per_word": len(ids) / len(words),
        "bytelevel_bytes_per_token": len(text.encode()) / len(ids), "bytelevel_round_trip": byte_round_trip,
        "bytelevel_seconds": byte_secs, "bytelevel_segmentations": bytelevel_segs,
        "timetraveller_ngrams_shared": shared, "config": vars(args),
    }
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"wrote {out_dir}/metrics.json and bpe_merges.png")
    return metrics


if __name__ == "__main__":
    main()
