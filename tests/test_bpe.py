"""Byte-pair encoding: the byte-level tokenizer of data/bpe.py and the lesson 05-rnns/bpe_numpy.py.

- The tokenizer round-trips any text byte-exactly (hypothesis ``st.text()``, and a fixed string of
  several scripts, emoji, "\\r\\n" and tabs); its pre-tokenizer's chunks join back into the text.
- Merges worked out by hand: the paper's toy dictionary (lesson) and two tiny corpora (tokenizer),
  including the tie-break and chunk boundaries that no merge may cross.
- The lesson and the tokenizer learn the same merges from the same chunk table (the lesson's
  recount-everything loop against the tokenizer's incremental counts), with the same token counts.
- The incremental pair counts equal a recount from scratch after every merge (the fast path).
- Encoding is greedy by rank, save/load gives identical encodings, bad input is a clear ValueError.
"""

import functools
import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data import preprocess_timemachine, ptb, timemachine, tinyshakespeare, tokenize
from data.bpe import BPETokenizer, PairCounts, count_pairs, pretokenize

FEW = settings(max_examples=200, deadline=None)
MULTILINGUAL = "Größe naïve café, Ελληνικά, русский, 東京 and 🤖😀👍🏽!\r\nTab\there:  two  spaces\n\n  it's 1895..._x_"


@functools.cache
def shakespeare_tok():
    """A tokenizer trained on 100k characters of Tiny Shakespeare plus a multilingual line (multi-byte merges)."""
    return BPETokenizer.train(tinyshakespeare()[:100_000] + MULTILINGUAL * 20, vocab_size=600)


@pytest.fixture(scope="module")
def lesson(load_script):
    return load_script("05-rnns/bpe_numpy.py")


# %% round trip


@FEW
@given(st.text())
def test_round_trip_any_text(text):
    tok = shakespeare_tok()
    assert "".join(pretokenize(text)) == text
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < len(tok) for i in ids)
    assert tok.decode_bytes(ids) == text.encode("utf-8")
    assert tok.decode(ids, errors="strict") == text


@FEW
@given(st.text(alphabet=st.sampled_from("ab \n.é😀'sl"), max_size=60))
def test_round_trip_dense_alphabet(text):
    """A small alphabet makes many learned merges apply (the random text of st.text() mostly misses them)."""
    tok = BPETokenizer.train("ab ab. a'll é😀 " * 30 + "sl\n\n", vocab_size=300)
    assert len(tok.merges) > 5
    assert tok.decode(tok.encode(text)) == text


def test_round_trip_multilingual_and_line_endings():
    tok = shakespeare_tok()
    ids = tok.encode(MULTILINGUAL)
    assert tok.decode_bytes(ids) == MULTILINGUAL.encode("utf-8") and tok.decode(ids) == MULTILINGUAL
    assert len(ids) < 0.8 * len(MULTILINGUAL.encode("utf-8"))  # it was in the training text: some merges apply
    assert any(len(tok.vocab[i]) > 1 and tok.vocab[i][0] >= 0x80 for i in ids)  # multi-byte tokens in use
    text = tinyshakespeare()[200_000:230_000]  # not in the training text
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) < 0.6 * len(text)  # 344 merges: about 1.9 characters per token on new text


def test_pretokenizer_chunks():
    assert pretokenize("Hello, world!  It's 1895...\r\n  a_b") == [
        "Hello",
        ",",
        " world",
        "!",
        " ",
        " It",
        "'s",
        " 1895",
        "...",
        "\r\n ",
        " a",
        "_",
        "b",
    ]
    assert pretokenize("a   b") == ["a", "  ", " b"]
    assert pretokenize(" Größe 東京😀") == [" Größe", " 東京", "😀"]


# %% merges worked out by hand


def test_lesson_merges_on_sennrichs_toy_dictionary(lesson):
    """The ten merges of the paper's Algorithm 1 dictionary, by hand (see bpe_numpy.py's docstring)."""
    merges, n_symbols = lesson.learn_bpe(lesson.word_freqs_to_vocab(lesson.TOY_VOCAB), 10)
    assert merges == [
        ("e", "s"),
        ("es", "t"),
        ("est", "</w>"),
        ("l", "o"),
        ("lo", "w"),
        ("e", "w"),
        ("ew", "est</w>"),
        ("n", "ewest</w>"),
        ("low", "</w>"),
        ("d", "est</w>"),
    ]
    # symbols: 4*5 + 6*2 + 7*6 + 7*3 = 95; each merge removes its count (9 9 9 7 7 6 6 6 5 3)
    assert n_symbols == [95, 86, 77, 68, 61, 54, 48, 42, 36, 31, 28]
    assert lesson.encode(["lowest", "newer"], merges) == ["low", "est</w>", "n", "ew", "e", "r", "</w>"]


def test_bytelevel_merges_by_hand():
    # "aaabdaaabac" is one chunk. Pairs: aa 4 (overlapping "aaa" counts twice), ab 2, others 1 -> 256 = aa;
    # "aaa" merges left to right to "aa a". Then (aa, a) 2 and (a, b) 2 tie: b"a" < b"aa" -> 257 = ab.
    # Then (aa, ab) 2 -> 258 = aaab. Left: 258 d 258 a c, four pairs of 1: (b"a", b"c") sorts first -> 259 = ac.
    tok = BPETokenizer.train("aaabdaaabac", vocab_size=260)
    assert tok.merges == [(97, 97), (97, 98), (256, 257), (97, 99)]
    assert tok.vocab[256:] == [b"aa", b"ab", b"aaab", b"ac"]
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 259]
    # Chunks "the", " cat", " the", " hat": at 2, (a, t) < (h, e) < (t, h) -> 256 = at; then (h, e) 2 -> 257 = he;
    # (t, he) 2 -> 258 = the; then five pairs of 1, and (b" ", b"c") sorts first -> 259 = " c".
    # The pair (e, " ") is never counted: it would cross a chunk boundary.
    tok = BPETokenizer.train("the cat the hat", vocab_size=260)
    assert tok.merges == [(97, 116), (104, 101), (116, 257), (32, 99)]
    assert tok.encode("the cat the hat") == [258, 259, 256, 32, 258, 32, 104, 256]
    # "ab." thrice: chunks "ab", "." -> the only pair is (a, b); then every chunk is one token: training stops.
    tok = BPETokenizer.train("ab.ab.ab.", vocab_size=300)
    assert tok.merges == [(97, 98)] and len(tok) == 257


def test_encode_is_greedy_by_rank(lesson):
    """Merges (b, c) then (a, b): by rank "abc" is a + bc; merging left to right as met would give ab + c."""
    tok = BPETokenizer([(98, 99), (97, 98)])  # 256 = bc, 257 = ab
    assert tok.encode("abc") == [97, 256]
    assert tok.encode("abcab") == [97, 256, 257]
    assert lesson.encode(["abc"], [("b", "c"), ("a", "b")]) == ["a", "bc", "</w>"]


# %% the lesson and the tokenizer agree; the fast path equals the slow one


def test_lesson_and_tokenizer_learn_the_same_merges(lesson):
    """Same chunk table, same tie-break: the lesson's recount loop and the incremental trainer agree.

    The lesson's words carry "</w>" at the end and the tokenizer's chunks a space at the front, so
    the lesson is fed the tokenizer's chunks as its words (characters, no marker). On lower-case
    ASCII the characters are the bytes and string order is byte order.
    """
    text = " ".join(tokenize(preprocess_timemachine(timemachine()), "word")[:4000])
    n = 300
    tok = BPETokenizer.train(text, vocab_size=256 + n)
    vocab = dict(Counter(tuple(chunk) for chunk in pretokenize(text)))
    merges, n_symbols = lesson.learn_bpe(vocab, n)
    assert len(tok.merges) == len(merges) == n
    assert [(tok.vocab[a].decode(), tok.vocab[b].decode()) for a, b in tok.merges] == merges
    assert len(tok.encode(text)) == n_symbols[-1]


def test_incremental_pair_counts_equal_a_recount_after_every_merge():
    text = tinyshakespeare()[:3000] + " aaaa aaaaa abababa " * 3 + MULTILINGUAL
    chunks = Counter(pretokenize(text))
    words = [list(c.encode()) for c in chunks]
    freqs = list(chunks.values())
    vocab = [bytes([i]) for i in range(256)]
    stats = PairCounts(words, freqs, vocab)
    for new_id in range(256, 2000):
        recount = count_pairs(stats.words, freqs)
        assert stats.counts == +recount  # (+ drops zero counts)
        pair = stats.best()
        if pair is None:
            assert not recount
            break
        top = max(recount.values())
        assert pair == min((p for p, c in recount.items() if c == top), key=lambda p: (vocab[p[0]], vocab[p[1]], p))
        holders = {}  # pair -> the chunks that hold it now; the fast index may hold more, never fewer
        for i, w in enumerate(stats.words):
            for p in zip(w, w[1:]):
                holders.setdefault(p, set()).add(i)
        assert all(idx <= stats.where.get(p, set()) for p, idx in holders.items())
        vocab.append(vocab[pair[0]] + vocab[pair[1]])
        stats.merge(pair, new_id)
    assert pair is None and new_id > 500  # it ran until every chunk was one token: hundreds of merges
    assert b"".join(vocab[i] for w in stats.words for i in w) == b"".join(c.encode() for c in chunks)


# %% save / load and errors


def test_save_load_round_trip(tmp_path):
    tok = shakespeare_tok()
    path = tmp_path / "bpe.json"
    tok.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["bpe.json"]  # no temporary file left behind
    tok2 = BPETokenizer.load(path)
    assert tok2.merges == tok.merges and tok2.vocab == tok.vocab and len(tok2) == len(tok) == 600
    text = tinyshakespeare()[300_000:310_000] + MULTILINGUAL
    assert tok2.encode(text) == tok.encode(text)
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="bad.json"):
        BPETokenizer.load(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text("not json")
    with pytest.raises(ValueError, match="not JSON"):
        BPETokenizer.load(tmp_path / "bad.json")


def test_clear_errors():
    tok = BPETokenizer([(97, 98)])
    with pytest.raises(ValueError, match="vocab_size must be an int >= 256"):
        BPETokenizer.train("abc", vocab_size=255)
    with pytest.raises(ValueError, match="token id 257 is out of range: .* 0 .. 256"):
        tok.decode([97, 257])
    with pytest.raises(ValueError, match="token id -1 is out of range"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="token ids must be ints"):
        tok.decode([1.5])
    with pytest.raises(ValueError, match="encode takes a str"):
        tok.encode(b"abc")
    with pytest.raises(ValueError, match="merge 1 .* outside 0 .. 256"):
        BPETokenizer([(97, 98), (97, 257)])
    assert tok.decode([256, 99]) == "abc" and len(tok) == 257


def test_special_tokens_follow_the_merges_and_survive_save_load(tmp_path):
    tok = BPETokenizer([(97, 98)]).with_specials("<pad>", "<bos>", "<eos>")
    assert tok.specials == {"<pad>": 257, "<bos>": 258, "<eos>": 259} and len(tok) == 260
    assert tok.encode("ab<eos>") == [256, *b"<eos>"]  # the text "<eos>" is bytes, never the special id
    assert tok.decode([258, 256, 99, 259, 257]) == "<bos>abc<eos><pad>"
    with pytest.raises(ValueError, match="token id 260 is out of range: .* 0 .. 259"):
        tok.decode([260])
    with pytest.raises(ValueError, match="distinct"):
        tok.with_specials("<pad>")
    tok.save(tmp_path / "bpe.json")
    tok2 = BPETokenizer.load(tmp_path / "bpe.json")
    assert tok2.specials == tok.specials and tok2.merges == tok.merges and len(tok2) == 260
    doc = json.loads((tmp_path / "bpe.json").read_text())
    del doc["specials"]  # a file saved before special tokens existed loads without them
    (tmp_path / "old.json").write_text(json.dumps(doc))
    assert BPETokenizer.load(tmp_path / "old.json").specials == {}


# %% fastText n-grams and the script's smoke run


def test_char_ngrams_and_fnv_hash(lesson):
    assert lesson.char_ngrams("where", 3, 3) == ["<wh", "whe", "her", "ere", "re>"]
    grams = lesson.char_ngrams("where")  # "<where>" has 7 characters: 5 + 4 + 3 + 2 n-grams for n = 3..6
    assert len(grams) == 14 and grams[-2:] == ["<where", "where>"] and "<where>" not in grams
    assert lesson.ngram_bucket("", 2**32) == 2166136261  # the FNV-1a offset basis
    assert lesson.ngram_bucket("a", 2**32) == 0xE40C292C  # published FNV-1a 32-bit test vectors
    assert lesson.ngram_bucket("foobar", 2**32) == 0xBF9CF968
    assert 0 <= lesson.ngram_bucket("<wh") < 2_000_000


@FEW
@given(st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12), max_size=8))
def test_lesson_encode_decode_round_trip(lesson, words):
    merges = [("e", "</w>"), ("t", "h"), ("th", "e</w>"), ("a", "n"), ("i", "n"), ("an", "</w>")]
    assert lesson.decode(lesson.encode(words, merges)) == words


def test_smoke_run(lesson, tmp_path):
    m = lesson.main(["--smoke", "--out-dir", str(tmp_path)])
    assert m["merges"] == 100 and m["words"] == 2000
    assert m["toy_merges"][:3] == [["e", "s"], ["es", "t"], ["est", "</w>"]]
    assert m["tokens_per_word_before"] > 5 and m["tokens_per_word_after"] < 0.6 * m["tokens_per_word_before"]
    assert m["lesson_round_trip"] and m["bytelevel_round_trip"]
    assert m["bytelevel_vocab_size"] == 356 and m["bytelevel_tokens_per_word"] < 0.6 * m["tokens_per_word_before"]
    assert m["segmentations"]["the"] == ["the</w>"]  # the most frequent word is one symbol
    assert "".join(m["segmentations"]["unbelievably"]) == "unbelievably</w>"
    assert 0.5 < m["timetraveller_ngrams_shared"] < 1
    assert json.loads((tmp_path / "metrics.json").read_text())["merges"] == 100
    assert (tmp_path / "bpe_merges.png").stat().st_size > 10_000


def test_corpus_text_reads_each_corpus(lesson):
    """The raw text of the byte-level round trip, for each --corpus (PTB: its training split)."""
    assert lesson.corpus_text("timemachine") == timemachine()
    assert lesson.corpus_text("tinyshakespeare") == tinyshakespeare()
    assert lesson.corpus_text("ptb") == ptb("train")


def test_bad_flags_exit_2(lesson, tmp_path, capsys):
    for argv in [["--merges", "0"], ["--merges", "x"], ["--seed", "-1"], ["--corpus", "wiki"]]:
        with pytest.raises(SystemExit) as exc:
            lesson.main([*argv, "--smoke", "--out-dir", str(tmp_path)])
        assert exc.value.code == 2, argv
        assert argv[0] in capsys.readouterr().err, argv


def test_missing_data_is_a_one_line_error(lesson, missing_data_error):
    """No corpus anywhere (an empty ARC_DATA_DIR and download cache, no network): `error: ...` naming the
    file and ARC_DATA_DIR, as SystemExit, not a DataError traceback."""
    message = missing_data_error(lesson.main)
    assert "timemachine.txt" in message
