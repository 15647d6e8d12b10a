"""Tests of the English-French translation data (``data/translation.py``): ``fra_eng`` on the real
d2l file and on a three-column copy of it (the newer manythings.org format), its structural checks on
damaged copies, the zip download against the local HTTP server of conftest.py, d2l's preprocessing
and tokens, the vocabularies, the padded arrays a seq2seq model reads, and the split by source
sentence. Module-scoped fixtures read the real 11 MB file once as bytes and load it once through
``fra_eng``; no test touches the internet.
"""

import hashlib
import io
import os
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import everything
from hypothesis import given, settings
from hypothesis import strategies as st

import data.files
import data.translation as tr
from data import DataError, Vocab, fra_eng, nmt_arrays, nmt_vocab, pad_truncate, split_by_source, tokenize_nmt
from data.translation import preprocess_nmt

FEW = settings(max_examples=60, deadline=None)
N_PAIRS = 167_130
UNK, PAD, BOS, EOS = 0, 1, 2, 3


# %% fixtures: the real file read once, a three-column copy, an offline cache


@pytest.fixture(scope="module")
def real_root() -> Path:
    """The folder holding fra-eng/fra.txt: $ARC_DATA_DIR (CI: the offline copies) or, without it, the
    download cache. A missing file fails, never skips."""
    root = Path(os.environ["ARC_DATA_DIR"]) if os.environ.get("ARC_DATA_DIR") else data.files.CACHE_DIR
    if not (root / "fra-eng" / "fra.txt").is_file():
        pytest.fail(
            f"no fra-eng/fra.txt in {root}: set ARC_DATA_DIR to a folder holding it, "
            "or run data.fra_eng() once with the internet"
        )
    return root.resolve()


@pytest.fixture(scope="module")
def real_bytes(real_root) -> bytes:
    return (real_root / "fra-eng" / "fra.txt").read_bytes()


@pytest.fixture(scope="module")
def real_pairs(real_root, tmp_path_factory) -> list[tuple[str, str]]:
    """``fra_eng()`` found through ARC_DATA_DIR with an empty cache, so it can only come from there."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ARC_DATA_DIR", str(real_root))
        mp.setattr(data.files, "CACHE_DIR", tmp_path_factory.mktemp("empty-cache"))
        return fra_eng()


@pytest.fixture(scope="module")
def real_tokens(real_pairs) -> tuple[list[list[str]], list[list[str]]]:
    """(English, French) token lists of every real pair."""
    return [tokenize_nmt(en) for en, _ in real_pairs], [tokenize_nmt(fr) for _, fr in real_pairs]


@pytest.fixture(scope="module")
def real_split(real_tokens) -> dict[str, np.ndarray]:
    return split_by_source(real_tokens[0], n_test=2000, n_val=1000, seed=0)


@pytest.fixture(scope="module")
def real_vocabs(real_tokens, real_split) -> tuple[Vocab, Vocab]:
    """The English and French vocabularies of the training pairs, min_freq 2."""
    train = real_split["train"]
    return tuple(nmt_vocab([side[i] for i in train], min_freq=2) for side in real_tokens)


def three_columns(pairs) -> bytes:
    """``pairs`` in the newer manythings.org format: English, French and a Tatoeba attribution."""
    return "".join(
        f"{en}\t{fr}\tCC-BY 2.0 (France) Attribution: tatoeba.org #{2 * i + 1} (user{i % 7}) & #{2 * i + 2} (ami)\n"
        for i, (en, fr) in enumerate(pairs)
    ).encode()


@pytest.fixture(scope="module")
def real_3col(real_pairs) -> bytes:
    return three_columns(real_pairs)


@pytest.fixture(scope="module")
def fra_zip(real_bytes) -> bytes:
    """A zip laid out as d2l's fra-eng.zip (fra-eng/fra.txt and fra-eng/_about.txt), real text inside."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("fra-eng/_about.txt", b"Attribution: www.manythings.org/anki and tatoeba.org\n")
        z.writestr("fra-eng/fra.txt", real_bytes)
    return buf.getvalue()


def put(folder: Path, content: bytes) -> Path:
    """Write ``content`` as ``folder/fra-eng/fra.txt`` and return its path."""
    path = folder / "fra-eng" / "fra.txt"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    return path


# %% the real file, two and three columns


def test_fra_eng_real(real_pairs, real_bytes):
    """d2l's file: 167,130 pairs in file order from ("Go.", "Va !"), each two non-empty strings; written
    back as ``English<TAB>French`` lines they give the file byte for byte (nothing stripped or changed)."""
    assert len(real_pairs) == N_PAIRS
    assert real_pairs[:4] == [("Go.", "Va !"), ("Hi.", "Salut !"), ("Run!", "Cours\u202f!"), ("Run!", "Courez\u202f!")]
    assert all(type(p) is tuple and len(p) == 2 and all(isinstance(s, str) and s for s in p) for p in real_pairs)
    assert "".join(f"{en}\t{fr}\n" for en, fr in real_pairs).encode() == real_bytes


@pytest.mark.parametrize("as_root", [True, False], ids=["root-folder", "dataset-folder"])
def test_three_column_file_gives_the_same_pairs(real_pairs, real_3col, offline, tmp_path, as_root):
    """The newer upstream format (a third, attribution column) loads exactly the pairs of the
    two-column file, the attribution dropped, from ``data_dir`` as a root holding fra-eng/ or as
    fra-eng/ itself; with no ARC_DATA_DIR and an empty cache nothing else could supply them."""
    path = put(tmp_path / "local", real_3col)
    assert fra_eng(path.parents[1] if as_root else path.parent) == real_pairs
    assert everything(offline) == []


def test_three_column_file_may_have_more_lines(real_pairs, real_3col, offline, tmp_path):
    """Newer releases only grew: a three-column file longer than d2l's is read whole."""
    extra = [("Tom won.", "Tom a gagné."), ("I'm here!", "Je suis là\u202f!")]
    path = put(tmp_path / "local", real_3col + three_columns(extra))
    assert fra_eng(path.parent) == real_pairs + extra


# %% damaged local files: one DataError naming the file


def line_start(text: bytes, number: int) -> int:
    """The offset where line ``number`` (1-based) of ``text`` begins."""
    at = 0
    for _ in range(number - 1):
        at = text.index(b"\n", at) + 1
    return at


def damage(text: bytes, case: str) -> bytes:
    """``text`` (a real two- or three-column file) damaged in one way."""
    middle = text.index(b"\n", len(text) // 2) + 1  # the start of a line near the middle
    line_5000 = line_start(text, 5000)
    if case == "cut-mid-line":
        return text[: middle + 7]
    if case == "cut-at-line-end":
        return text[:middle]
    if case == "extra-line":
        return text + b"Hi.\tSalut.\n"
    if case == "not-utf8":
        return text[:middle] + b"\xff" + text[middle + 1 :]
    if case == "tab-lost":  # line 5000's first tab becomes a space
        tab = text.index(b"\t", line_5000)
        return text[:tab] + b" " + text[tab + 1 :]
    if case == "tab-added":  # line 5000 gets one more column
        return text[:line_5000] + b"x\t" + text[line_5000:]
    if case == "blank-line":  # an empty line 5000
        return text[:line_5000] + b"\n" + text[line_5000:]
    if case == "four-columns":  # the first line (and so the file's column count) has four
        return text.replace(b"\n", b"\ta\tb\n", 1)
    if case == "head":  # a byte-order mark before "Go."
        return b"\xef\xbb\xbf" + text
    assert case == "fewer-lines"  # the last 10 lines gone: shorter than d2l's copy
    end = len(text) - 1
    for _ in range(10):
        end = text.rindex(b"\n", 0, end)
    return text[: end + 1]


DAMAGE = {  # case -> the words the error must contain, for the two- and the three-column file
    "cut-mid-line": ("truncated: its last line is incomplete",) * 2,
    "cut-at-line-end": (
        "lines, expected d2l's 11,669,748 bytes and 167,130 lines (truncated)",
        "lines, fewer than d2l's 2019 copy (167,130): truncated",
    ),
    "extra-line": ("167,131 lines, expected d2l's 11,669,748 bytes and 167,130 lines (not d2l's file)", None),
    "not-utf8": ("is not UTF-8 text",) * 2,
    "tab-lost": ("fra.txt, line 5000: not 2 tab-separated columns", "fra.txt, line 5000: not 3 tab-separated columns"),
    "tab-added": ("fra.txt, line 5000: not 2 tab-separated columns", "fra.txt, line 5000: not 3 tab-separated columns"),
    "blank-line": ("fra.txt, line 5000: not 2 tab-separated columns: ''", "line 5000: not 3 tab-separated columns"),
    "four-columns": ("has 4 tab-separated columns, expected 2 or 3", "has 5 tab-separated columns, expected 2 or 3"),
    "head": ("does not begin with 'Go.\\tVa !'",) * 2,
    "fewer-lines": (
        "167,120 lines, expected d2l's 11,669,748 bytes and 167,130 lines (truncated)",
        "has 167,120 lines, fewer than d2l's 2019 copy (167,130): truncated",
    ),
}
CASES = [(c, n) for c in DAMAGE for n in (2, 3) if DAMAGE[c][n - 2] is not None]


@pytest.mark.parametrize("case, columns", CASES, ids=[f"{c}-{n}col" for c, n in CASES])
def test_damaged_local_file_is_a_data_error(
    real_root, real_bytes, real_3col, offline, tmp_path, monkeypatch, case, columns
):
    """Each kind of damage to a local copy is one DataError naming the problem (the line, where one
    line is wrong), the file, the canonical URL and ARC_DATA_DIR. The good copy in ARC_DATA_DIR is not
    used instead (data_dir comes first), and nothing is downloaded or written to the cache."""
    monkeypatch.setenv("ARC_DATA_DIR", str(real_root))
    path = put(tmp_path / "local", damage(real_bytes if columns == 2 else real_3col, case))
    with pytest.raises(DataError) as exc:
        fra_eng(path.parent)
    message = str(exc.value)
    assert DAMAGE[case][columns - 2] in message
    assert str(path) in message and tr.FRA_ENG_URL in message and f"ARC_DATA_DIR: {real_root}" in message
    assert everything(offline) == []


# %% missing file, downloads from a local server


def test_missing_file_without_network(offline):
    """No file anywhere and no network (the canonical host cannot be reached): one DataError naming
    the zip it tried to download into the cache, d2l's URL and ARC_DATA_DIR; the cache is left empty."""
    with pytest.raises(DataError) as exc:
        fra_eng()
    message = str(exc.value)
    assert "could not download fra-eng.zip" in message and str(offline / "fra-eng" / "fra-eng.zip") in message
    assert "http://d2l-data.s3-accelerate.amazonaws.com/fra-eng.zip" in message and "ARC_DATA_DIR: <unset>" in message
    assert everything(offline) == []


def test_download_pins_d2l_zip():
    """The canonical download is d2l's DATA_HUB entry: its fra-eng.zip and sha1."""
    assert tr.FRA_ENG_URL == "http://d2l-data.s3-accelerate.amazonaws.com/fra-eng.zip"
    assert tr.FRA_ENG_CHECKSUM == "sha1:94646ad1522d915e7b0f9296181140edcf86a4f5"
    assert tr.FRA_ENG_MEMBER == ("fra-eng.zip", "fra-eng/fra.txt")


def serve_zip(monkeypatch, server, content: bytes, checksum: bytes | None = None) -> str:
    """Serve ``content`` as fra-eng.zip, pinned to the sha1 of ``checksum`` (default: of ``content``)."""
    url = server.serve("fra-eng.zip", content)
    monkeypatch.setattr(tr, "FRA_ENG_URL", url)
    monkeypatch.setattr(tr, "FRA_ENG_CHECKSUM", "sha1:" + hashlib.sha1(checksum or content).hexdigest())
    return url


def test_download_extracts_then_caches(real_pairs, real_bytes, fra_zip, offline, server, monkeypatch):
    """With no local copy the zip is downloaded once (sha1-checked), fra-eng/fra.txt is extracted into
    the cache beside it, no temporary file is left; a second call, with the server shut down, reads
    the cache and makes no request."""
    serve_zip(monkeypatch, server, fra_zip)
    cache = offline / "fra-eng"
    assert fra_eng() == real_pairs
    assert server.requests == ["/fra-eng.zip"]
    assert everything(offline) == [cache, cache / "fra-eng.zip", cache / "fra.txt"]
    assert (cache / "fra.txt").read_bytes() == real_bytes
    server.close()
    assert fra_eng() == real_pairs and server.requests == ["/fra-eng.zip"]


def test_download_with_wrong_checksum_leaves_nothing(fra_zip, offline, server, monkeypatch):
    """Served bytes that do not match the pinned sha1 (one byte changed) are a 'checksum mismatch'
    DataError naming the zip and the URL; nothing is left in the cache, not even a folder."""
    bad = fra_zip[:-1] + bytes([fra_zip[-1] ^ 1])
    url = serve_zip(monkeypatch, server, bad, checksum=fra_zip)
    with pytest.raises(DataError) as exc:
        fra_eng()
    message = str(exc.value)
    assert "checksum mismatch for fra-eng.zip" in message and hashlib.sha1(fra_zip).hexdigest() in message
    assert url in message and str(offline / "fra-eng" / "fra-eng.zip") in message
    assert server.requests == ["/fra-eng.zip"]
    assert everything(offline) == []


def test_local_zip_is_extracted(real_pairs, fra_zip, offline, tmp_path):
    """A data_dir holding only fra-eng.zip is enough: fra-eng/fra.txt is extracted into the cache."""
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "fra-eng.zip").write_bytes(fra_zip)
    assert fra_eng(tmp_path / "local") == real_pairs
    assert everything(offline) == [offline / "fra-eng", offline / "fra-eng" / "fra.txt"]


# %% preprocessing and tokens (d2l 10.5)


@pytest.mark.parametrize(
    "text, words",
    [
        ("Go.", ["go", "."]),
        ("Va\u202f!", ["va", "!"]),  # narrow no-break space before French "!"
        ("Attends\xa0!", ["attends", "!"]),  # no-break space
        ("Recule\u2009!", ["recule", "!"]),  # a thin space does not glue the mark to the word
        ("Hi, you.", ["hi", ",", "you", "."]),
        ("Va !", ["va", "!"]),
        ("Quoi ?!", ["quoi", "?", "!"]),
        ("I'm OK.", ["i'm", "ok", "."]),
        ("ÉTÉ, Ça.", ["été", ",", "ça", "."]),
        ("", []),
    ],
)
def test_tokenize_nmt_by_hand(text, words):
    assert tokenize_nmt(text) == words


@pytest.mark.parametrize(
    "text, clean",
    [
        ("Go.", "go ."),
        ("Va\u202f!", "va !"),  # the mark already after a (replaced) space: no second space
        ("Ah\xa0?\xa0Bon.", "ah ? bon ."),
        ("Hi, you.", "hi , you ."),
        ("Va !", "va !"),
        ("?!", "? !"),  # a mark at the start gets no space; the one after it does
        ("Wait...", "wait . . ."),
        ("Tom Is HERE!", "tom is here !"),
        ("3.5", "3 .5"),  # d2l's rule knows no numbers: every . after a non-space
    ],
)
def test_preprocess_nmt_by_hand(text, clean):
    """Non-breaking spaces become spaces, lower case, one space before each , . ! ? that follows a
    non-space (d2l's ``no_space`` rule)."""
    assert preprocess_nmt(text) == clean


def preprocess_by_loop(text: str) -> str:
    """The rule of d2l 10.5 as a plain loop, independent of the regular expression under test."""
    out = []
    for c in text.replace("\u202f", " ").replace("\xa0", " ").lower():
        if c in ",.!?" and out and out[-1] != " ":
            out.append(" ")
        out.append(c)
    return "".join(out)


def test_preprocess_nmt_equals_loop_on_real_sentences(real_pairs):
    """On every real pair with a no-break or thin space, and on 5,000 others drawn at random, both
    sides preprocess exactly as the loop does."""
    special = [i for i, (en, fr) in enumerate(real_pairs) if any(c in en + fr for c in "\u202f\xa0\u2009")]
    assert len(special) > 10_000
    sample = special + np.random.default_rng(0).choice(len(real_pairs), 5000, replace=False).tolist()
    for i in sample:
        for text in real_pairs[i]:
            assert preprocess_nmt(text) == preprocess_by_loop(text), text


def test_real_tokens(real_tokens):
    """Every real sentence has at least one token, no token holds a space or a no-break space, and
    every mark , . ! ? that ends a token stands alone (d2l: punctuation marks are words)."""
    for side in real_tokens:
        assert all(side)
        tokens = {t for s in side for t in s}
        assert not any(c in t for t in tokens for c in " \u202f\xa0\t")
        assert not [t for t in tokens if len(t) > 1 and t[-1] in ",.!?"]
        assert {".", ",", "!", "?"} <= tokens
    assert real_tokens[0][0] == ["go", "."] and real_tokens[1][0] == ["va", "!"]


# %% vocabularies


def test_nmt_vocab_by_hand():
    """<unk> 0, <pad> 1, <bos> 2, <eos> 3, then the words seen min_freq times, most frequent first
    (ties by string); encode then decode gives the words back, rare and unseen ones as <unk>."""
    sentences = [["le", "chat", "."], ["le", "chien", "."], ["le", "."], ["chat", "!"]]
    vocab = nmt_vocab(sentences, min_freq=2)
    assert vocab.idx_to_token == ["<unk>", "<pad>", "<bos>", "<eos>", ".", "le", "chat"]
    assert [vocab.token_to_idx[t] for t in ("<unk>", "<pad>", "<bos>", "<eos>")] == [UNK, PAD, BOS, EOS]
    assert nmt_vocab(sentences).idx_to_token == vocab.idx_to_token  # min_freq 2 by default, as d2l
    assert nmt_vocab(sentences, min_freq=1).idx_to_token[4:] == [".", "le", "chat", "!", "chien"]
    assert nmt_vocab(sentences, min_freq=4).idx_to_token == ["<unk>", "<pad>", "<bos>", "<eos>"]
    ids = vocab.encode(["le", "chat", "chien", "zèbre", "."])
    assert ids.tolist() == [5, 6, UNK, UNK, 4]
    assert vocab.decode(ids) == ["le", "chat", "<unk>", "<unk>", "."]


def test_nmt_vocab_real_round_trip(real_tokens, real_split, real_vocabs):
    """Built on the training pairs: the reserved tokens first, every word of the vocabulary seen at
    least twice in training, and encode/decode returns every test sentence with its unknown words as <unk>."""
    train_fr = [real_tokens[1][i] for i in real_split["train"]]
    vocab = real_vocabs[1]
    assert vocab.idx_to_token[:4] == ["<unk>", "<pad>", "<bos>", "<eos>"]
    counts = Counter(t for s in train_fr for t in s)
    assert set(vocab.idx_to_token[4:]) == {t for t, n in counts.items() if n >= 2}
    for i in real_split["test"]:
        words = real_tokens[1][i]
        assert vocab.decode(vocab.encode(words)) == [w if counts[w] >= 2 else "<unk>" for w in words]


# %% padded arrays


@FEW
@given(
    st.lists(st.lists(st.integers(0, 50), max_size=12), max_size=8),
    st.integers(0, 10),
    st.integers(-1, 60),
)
def test_pad_truncate(seqs, num_steps, pad):
    """An int64 (N, num_steps) array: each row the sequence's first num_steps values, then pad; the
    valid lengths are min(len, num_steps)."""
    X, valid = pad_truncate([np.array(s, dtype=np.int64) for s in seqs], num_steps, pad)
    assert X.dtype == valid.dtype == np.int64 and X.shape == (len(seqs), num_steps) and valid.shape == (len(seqs),)
    for row, v, s in zip(X, valid, seqs):
        assert v == min(len(s), num_steps)
        assert row[:v].tolist() == s[:v] and (row[v:] == pad).all()


def test_nmt_arrays_by_hand():
    """Source and label: the words, <eos>, then <pad>; a sentence longer than num_steps - 1 words is cut
    so that <eos> still ends it. dec_in: <bos> then the label shifted right by one."""
    src_vocab = nmt_vocab([["i", "run", "."]], min_freq=1)  # . 4, i 5, run 6
    tgt_vocab = nmt_vocab([["je", "cours", "."]], min_freq=1)  # . 4, cours 5, je 6
    src = [["i", "run", "."], ["run", "!"], ["i", "i", "run", "run", "."], []]
    tgt = [["je", "cours", "."], ["cours", "vite", "!"], ["je"], ["je", "cours", "cours", "."]]
    a = nmt_arrays(src, tgt, src_vocab, tgt_vocab, num_steps=4)
    assert set(a) == {"src", "src_len", "dec_in", "label", "label_len"}
    assert all(v.dtype == np.int64 for v in a.values())
    assert a["src"].tolist() == [[5, 6, 4, EOS], [6, UNK, EOS, PAD], [5, 5, 6, EOS], [EOS, PAD, PAD, PAD]]
    assert a["src_len"].tolist() == [4, 3, 4, 1]
    assert a["label"].tolist() == [[6, 5, 4, EOS], [5, UNK, UNK, EOS], [6, EOS, PAD, PAD], [6, 5, 5, EOS]]
    assert a["label_len"].tolist() == [4, 4, 2, 4]
    assert a["dec_in"].tolist() == [[BOS, 6, 5, 4], [BOS, 5, UNK, UNK], [BOS, 6, EOS, PAD], [BOS, 6, 5, 5]]
    two = nmt_arrays([["i", "run"]], [["je"]], src_vocab, tgt_vocab, num_steps=2)  # the shortest allowed
    assert two["src"].tolist() == [[5, EOS]] and two["label"].tolist() == [[6, EOS]]
    assert two["dec_in"].tolist() == [[BOS, 6]]


def check_padded(X, length, sentences, vocab, num_steps):
    """Row i of X is encode(sentences[i][: num_steps - 1]), then <eos> at length - 1, then <pad>."""
    N = len(sentences)
    assert X.dtype == length.dtype == np.int64 and X.shape == (N, num_steps) and length.shape == (N,)
    np.testing.assert_array_equal(length, np.minimum([len(s) for s in sentences], num_steps - 1) + 1)
    pos = np.arange(num_steps)
    np.testing.assert_array_equal(X[np.arange(N), length - 1], EOS)
    assert (X[pos >= length[:, None]] == PAD).all()
    words = X[pos < length[:, None] - 1]  # row by row, the valid words before <eos>
    assert not np.isin(words, [PAD, BOS, EOS]).any()
    np.testing.assert_array_equal(words, np.concatenate([vocab.encode(s[: num_steps - 1]) for s in sentences]))


@pytest.mark.parametrize("num_steps, first", [(10, 0), (60, -3000)], ids=["10-steps-all", "60-steps-longest"])
def test_nmt_arrays_real(real_tokens, real_vocabs, num_steps, first):
    """On real pairs: src and label rows are the encoded words, <eos> at length - 1, <pad> after; every
    dec_in row is <bos> then the label shifted right by one over the valid part, so the decoder reads
    <bos> where it predicts the first word and <eos> is the last thing it must predict. At 10 steps
    (every pair) long sentences are cut and still end with <eos>; at 60 the 3,000 longest pairs (the
    file is sorted by length; at most 58 words) are whole."""
    src, tgt = (side[first:] for side in real_tokens)
    a = nmt_arrays(src, tgt, *real_vocabs, num_steps)
    check_padded(a["src"], a["src_len"], src, real_vocabs[0], num_steps)
    check_padded(a["label"], a["label_len"], tgt, real_vocabs[1], num_steps)
    D, Y, length = a["dec_in"], a["label"], a["label_len"]
    assert D.shape == Y.shape and D.dtype == np.int64
    np.testing.assert_array_equal(D[:, 0], BOS)
    assert not (Y == BOS).any() and not (D[:, 1:] == BOS).any()
    shifted = np.arange(1, num_steps) < length[:, None]  # dec_in positions 1 .. label_len - 1
    np.testing.assert_array_equal(D[:, 1:][shifted], Y[:, :-1][shifted])
    full = (length == num_steps).sum(), (a["src_len"] == num_steps).sum()
    assert min(full) > 1000 if num_steps == 10 else max(full) == 0


def test_nmt_arrays_rejects_bad_arguments():
    """num_steps below 2 leaves no room for a word and <eos>; a target vocabulary whose <pad> <bos>
    <eos> differ from the source's would mix up padding and markers: both are ValueErrors."""
    vocab = nmt_vocab([["a", "b"]], min_freq=1)
    for num_steps in (1, 0):
        with pytest.raises(ValueError, match="num_steps"):
            nmt_arrays([["a"]], [["b"]], vocab, vocab, num_steps)
    for other in (
        Vocab(["a", "b"]),  # no reserved tokens
        Vocab(["a", "b"], reserved_tokens=("<bos>", "<pad>", "<eos>")),  # another order
        Vocab(["a", "b"], reserved_tokens=("<pad>", "<bos>")),  # no <eos>
    ):
        with pytest.raises(ValueError, match="vocabularies"):
            nmt_arrays([["a"]], [["b"]], vocab, other, 4)
    with pytest.raises(ValueError, match="vocabularies"):  # the other order on the source side
        nmt_arrays([["a"]], [["b"]], Vocab(["a"], reserved_tokens=("<bos>", "<pad>", "<eos>")), vocab, 4)


def test_nmt_arrays_source_vocab_without_markers_is_a_value_error():
    """A source vocabulary that lacks <pad> <bos> <eos> (a plain Vocab) is the same mistake as a
    target one that lacks them: the same ValueError naming the vocabularies, not a KeyError."""
    vocab = nmt_vocab([["a", "b"]], min_freq=1)
    for other in (Vocab(["a", "b"]), Vocab(["a", "b"], reserved_tokens=("<pad>", "<bos>"))):
        with pytest.raises(ValueError, match="vocabularies"):
            nmt_arrays([["a"]], [["b"]], other, vocab, 4)


def test_nmt_arrays_rejects_unequal_pair_counts():
    """src and tgt are the two sides of the same pairs: different lengths are a ValueError, not arrays
    whose rows no longer match."""
    vocab = nmt_vocab([["a", "b"]], min_freq=1)
    with pytest.raises(ValueError):
        nmt_arrays([["a"], ["b"]], [["b"]], vocab, vocab, 4)


# %% the split by source sentence


def check_split(src, split, n_test, n_val):
    """Sizes (test and val at least what was asked, by less than one group too many), every index in
    exactly one part, val and test sorted, and no source sentence in two parts."""
    groups = Counter(tuple(s) for s in src)
    assert set(split) == {"train", "val", "test"} and all(v.dtype == np.int64 for v in split.values())
    assert n_test <= len(split["test"]) < n_test + max(groups.values())
    assert n_val <= len(split["val"]) < n_val + max(groups.values())
    together = np.concatenate([split["train"], split["val"], split["test"]])
    np.testing.assert_array_equal(np.sort(together), np.arange(len(src)))
    assert (np.diff(split["val"]) > 0).all() and (np.diff(split["test"]) > 0).all()
    where = defaultdict(set)
    for name, indices in split.items():
        for i in indices:
            where[tuple(src[i])].add(name)
    assert all(len(names) == 1 for names in where.values())
    return where


def test_split_by_source_real(real_tokens, real_split):
    """On the real English sentences: at least 2,000 test and 1,000 validation pairs, every pair in
    exactly one part, no English sentence in two parts, though many have several translations (their
    pairs stay together, all in test or all elsewhere); the training order is shuffled, so its first
    pairs are a sample of the whole file (which is sorted by length)."""
    src = real_tokens[0]
    where = check_split(src, real_split, 2000, 1000)
    counts = Counter(tuple(s) for s in src)
    test_sources = [s for s, names in where.items() if names == {"test"}]
    assert sum(counts[s] > 1 for s in test_sources) > 100  # sources with several translations in test
    assert counts[("run", "!")] == 2 and len(where[("run", "!")]) == 1
    train = real_split["train"]
    assert not (np.diff(train) > 0).all()
    assert abs(train[:5000].mean() / len(src) - 0.5) < 0.05


def test_split_by_source_keeps_groups_whole():
    """Every source three times (three translations), n_test and n_val not multiples of 3: dealing
    pair by pair would cut a group; dealt by group, test holds 6 pairs and val 3, for every seed."""
    src = [[f"s{k}", "."] for k in range(20) for _ in range(3)]
    for seed in range(10):
        split = split_by_source(src, n_test=4, n_val=2, seed=seed)
        check_split(src, split, 4, 2)
        assert (len(split["test"]), len(split["val"]), len(split["train"])) == (6, 3, 51)


def test_split_by_source_seed():
    """The same seed gives the same split; another seed another one."""
    rng = np.random.default_rng(0)
    src = [[f"w{k}"] for k in rng.integers(0, 300, size=1000)]  # about 290 groups of 1 to 10 pairs
    a, b = split_by_source(src, 100, 50, seed=3), split_by_source(src, 100, 50, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    check_split(src, a, 100, 50)
    c = split_by_source(src, 100, 50, seed=4)
    check_split(src, c, 100, 50)
    assert not np.array_equal(a["test"], c["test"]) and not np.array_equal(a["train"], c["train"])


def test_split_by_source_by_hand():
    """Small lists: n_val 0 leaves val empty; a split that leaves nothing to train on is a ValueError."""
    src = [["go", "."], ["go", "."], ["hi", "."], ["run", "!"], ["run", "!"], ["wow", "!"]]
    split = split_by_source(src, n_test=1, n_val=0, seed=0)
    check_split(src, split, 1, 0)
    assert len(split["val"]) == 0
    for n_test, n_val in [(6, 0), (7, 0), (3, 3), (0, 6)]:
        with pytest.raises(ValueError, match="train"):
            split_by_source(src, n_test, n_val, seed=0)
    with pytest.raises(ValueError, match="train"):  # one source only: its group cannot be both test and train
        split_by_source([["go", "."]] * 5, n_test=1, n_val=0)


# %% the Transformer's subword arrays: one BPE for both languages


def test_bpe_text_puts_a_space_before_every_word():
    assert tr.bpe_text(["va", "!"]) == " va !" and tr.bpe_text([]) == ""


def test_shared_bpe_covers_both_languages_and_ends_with_the_specials():
    """The vocabulary has vocab_size tokens, the last three <pad> <bos> <eos> (fewer merges only when no pair is
    left to merge); every sentence of both languages round-trips; a word of either language is one token."""
    en = [["i", "am", "cold", "."], ["you", "are", "cold", "."], ["i", "am", "here", "."]] * 20
    fr = [["j'ai", "froid", "."], ["vous", "avez", "froid", "."], ["je", "suis", "ici", "."]] * 20
    tok = tr.shared_bpe(en + fr, 280)
    assert len(tok) == 280 and list(tok.specials) == ["<pad>", "<bos>", "<eos>"]
    assert list(tok.specials.values()) == [277, 278, 279]
    assert len(tr.shared_bpe(en + fr, 400)) < 400  # 60 sentences have fewer than 141 pairs worth merging
    for s in en + fr:
        assert tok.decode(tok.encode(tr.bpe_text(s))) == tr.bpe_text(s)
    assert len(tok.encode(" froid")) == 1 and len(tok.encode(" cold")) == 1
    with pytest.raises(ValueError, match="at least 259"):
        tr.shared_bpe(en, 258)


def test_id_arrays_by_hand():
    """src = ids + eos, label = ids + eos, dec_in = bos + label shifted right, padded to the longest sentence
    (+ eos) with nothing cut; lengths count eos."""
    pad, bos, eos = 7, 8, 9
    a = tr.id_arrays([[1, 2, 3], [4]], [[5], [6, 6]], pad, bos, eos)
    assert a["src"].tolist() == [[1, 2, 3, 9], [4, 9, 7, 7]] and a["src_len"].tolist() == [4, 2]
    assert a["label"].tolist() == [[5, 9, 7], [6, 6, 9]] and a["label_len"].tolist() == [2, 3]
    assert a["dec_in"].tolist() == [[8, 5, 9], [8, 6, 6]]
    assert all(v.dtype == np.int64 for v in a.values())
    with pytest.raises(ValueError, match="2 source sentences but 1 target"):
        tr.id_arrays([[1], [2]], [[3]], pad, bos, eos)
