"""Tests of the text part of ``data`` (``data/text.py`` and the checksum and zip support of
``data/files.py``): the three corpora on the real offline files, their structural checks on damaged
copies, downloads (and PTB's zip) against the local HTTP server of conftest.py, the tokenizers,
``Vocab`` and the two language-model samplers (hypothesis). No test touches the internet: the
autouse guard of conftest.py makes the canonical URLs unreachable, which is the no-network case.
"""

import dataclasses
import functools
import hashlib
import os
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import everything
from hypothesis import given, settings
from hypothesis import strategies as st

import data.files
import data.text as tx
from data import (
    DataError,
    Vocab,
    lm_batches_random,
    lm_batches_sequential,
    preprocess_timemachine,
    ptb,
    timemachine,
    tinyshakespeare,
    tokenize,
)
from data.__main__ import main as data_main

FEW = settings(max_examples=60, deadline=None)
LOADERS = {"timemachine": timemachine, "tinyshakespeare": tinyshakespeare, "ptb": ptb}
FILES = {"timemachine": tx.TIMEMACHINE, "tinyshakespeare": tx.TINYSHAKESPEARE, "ptb": tx.PTB["valid"]}


# %% fixtures: the real files, an offline cache


@pytest.fixture(scope="module")
def real_root() -> Path:
    """The folder holding timemachine/, tinyshakespeare/ and ptb/: $ARC_DATA_DIR (CI: the offline copies)
    or, without it, the download cache `make data` fills. Missing files fail, never skip."""
    root = Path(os.environ["ARC_DATA_DIR"]) if os.environ.get("ARC_DATA_DIR") else data.files.CACHE_DIR
    files = [tx.TIMEMACHINE, tx.TINYSHAKESPEARE, *tx.PTB.values()]
    missing = [f"{f.name}/{f.filename}" for f in files if not (root / f.name / f.filename).is_file()]
    if missing:
        pytest.fail(f"no real text files {missing} in {root}: run `make data` or set ARC_DATA_DIR")
    return root.resolve()


@pytest.fixture(scope="module")
def load_real(real_root, tmp_path_factory):
    """``load_real(name, *args)``: a corpus read from the real folder, at most once per module. The
    cache is an empty folder, so the text can only come from there (a download could only fail)."""

    @functools.cache
    def load(name: str, *args):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("ARC_DATA_DIR", str(real_root))
            mp.setattr(data.files, "CACHE_DIR", tmp_path_factory.mktemp("empty-cache"))
            return LOADERS[name](*args)

    return load


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def serve_from(monkeypatch, server, name: str, content: bytes, checksum: str | None = None) -> str:
    """Serve ``content`` as the download of corpus ``name`` (PTB: all splits share ptb.zip), pinned
    to ``checksum`` (default: the true sha256 of ``content``); return the URL."""
    url = server.serve(Path(FILES[name].url).name, content)
    checksum = checksum or "sha256:" + sha256(content)
    if name == "ptb":
        for split, f in tx.PTB.items():
            monkeypatch.setitem(tx.PTB, split, dataclasses.replace(f, url=url, checksum=checksum))
    else:
        monkeypatch.setattr(tx, name.upper(), dataclasses.replace(FILES[name], url=url, checksum=checksum))
    return url


# %% the real corpora


def test_timemachine_real(load_real):
    """The Time Machine: 178,979 characters, 3,221 lines, the d2l opening; d2l's preprocessing
    leaves 26 letters and the space, a character vocabulary of 28 with <unk>."""
    text = load_real("timemachine")
    assert len(text) == 178_979 and text.count("\n") == 3_221
    assert text.startswith("The Time Machine, by H. G. Wells [1898]\n")
    clean = preprocess_timemachine(text)
    assert set(clean) == set("abcdefghijklmnopqrstuvwxyz ")
    vocab = Vocab(tokenize(clean, "char"))
    assert len(vocab) == 28 and vocab.idx_to_token[:2] == ["<unk>", " "]  # the space is the most frequent


def test_tinyshakespeare_real(load_real):
    """Tiny Shakespeare: 1,115,394 characters, 40,000 lines, 65 distinct characters; encoding with a
    character vocabulary and decoding gives the text back."""
    text = load_real("tinyshakespeare")
    assert len(text) == 1_115_394 and text.count("\n") == 40_000
    assert text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.")
    vocab = Vocab(tokenize(text, "char"))
    assert len(vocab) == 66 and vocab.unk == 0
    corpus = vocab.encode(text)
    assert corpus.dtype == np.int64 and corpus.shape == (1_115_394,) and corpus.min() == 1
    assert "".join(vocab.decode(corpus)) == text


@pytest.mark.parametrize("split, lines", [("train", 42_068), ("valid", 3_370), ("test", 3_761)])
def test_ptb_real_line_counts(load_real, split, lines):
    """Every PTB split has Mikolov's line count, one sentence per line, each line starting with a space."""
    text = load_real("ptb", split)
    assert text.count("\n") == lines and len(text.splitlines()) == lines
    assert all(line.startswith(" ") for line in text.splitlines())


def test_ptb_real_vocabulary(load_real):
    """Tokenized by words with <eos> after each line, PTB train has the standard 929,589 tokens and a
    vocabulary of exactly 10,000 (9,999 word types, its own <unk> among them, plus <eos>); every
    validation and test word is in it."""
    train = tokenize(load_real("ptb", "train"), "word", eos="<eos>")
    assert len(train) == 929_589 and train.count("<eos>") == 42_068
    vocab = Vocab(train)
    assert len(vocab) == 10_000 and vocab.idx_to_token[0] == "<unk>" and "<eos>" in vocab.token_to_idx
    assert vocab.idx_to_token[1:3] == ["the", "<eos>"]  # the two most frequent tokens
    for split in ("valid", "test"):
        assert set(tokenize(load_real("ptb", split), "word", eos="<eos>")) <= set(vocab.token_to_idx)


@pytest.mark.parametrize("name", LOADERS)
@pytest.mark.parametrize("as_root", [False, True], ids=["dataset-folder", "root-folder"])
def test_data_dir_argument(real_root, offline, load_real, name, as_root):
    """``data_dir`` works as the corpus's own folder and as a root holding it; with ARC_DATA_DIR
    unset and an empty cache only ``data_dir`` can supply the text, and nothing is downloaded."""
    folder = real_root if as_root else real_root / FILES[name].name
    args = ("valid",) if name == "ptb" else ()
    assert LOADERS[name](*args, data_dir=folder) == load_real(name, *args)
    assert everything(offline) == []


def test_python_m_data_resolves_the_text_corpora(real_root, monkeypatch, capsys):
    """``python -m data timemachine tinyshakespeare ptb`` finds every file in ARC_DATA_DIR and says where."""
    monkeypatch.setenv("ARC_DATA_DIR", str(real_root))
    data_main(["timemachine", "tinyshakespeare", "ptb"])
    out = capsys.readouterr().out
    for name in ("timemachine", "tinyshakespeare", "ptb"):
        assert f"{name}: ok" in out and str(real_root / name) in out
    assert "ptb.train.txt: 5,101,618 characters" in out and "input.txt: 1,115,394 characters" in out


def test_ptb_unknown_split_is_a_value_error(offline):
    """PTB has train, valid and test: 'dev' is a ValueError before any lookup."""
    with pytest.raises(ValueError, match="dev"):
        ptb("dev")


# %% damaged local files: structure checks


def damage(text: bytes, case: str) -> bytes:
    """``text`` damaged in one way; the last three keep the size, so only the content can tell."""
    if case == "truncated":
        return text[: len(text) // 2]
    if case == "trailing":
        return text + b"\n"
    if case == "not-utf8":
        return text[:1000] + b"\xff" + text[1001:]
    if case == "lines":  # one newline replaced by a space
        i = text.index(b"\n", 1000)
        return text[:i] + b" " + text[i + 1 :]
    assert case == "head"
    return b"X" + text[1:]


DAMAGE = {
    "truncated": "truncated",
    "trailing": "trailing bytes",
    "not-utf8": "not UTF-8",
    "lines": "lines, expected",
    "head": "does not begin with",
}


@pytest.mark.parametrize("name", LOADERS)
@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_local_file_is_a_data_error(real_root, offline, tmp_path, monkeypatch, name, case):
    """Each kind of damage to a local copy is a DataError naming the problem, the file, its source
    URL and ARC_DATA_DIR. The good copy under ARC_DATA_DIR is not used instead (data_dir comes
    first), and for PTB the zip is not used instead of a damaged .txt."""
    monkeypatch.setenv("ARC_DATA_DIR", str(real_root))
    f = FILES[name]
    path = tmp_path / "local" / f.filename
    path.parent.mkdir()
    path.write_bytes(damage((real_root / f.name / f.filename).read_bytes(), case))
    args = ("valid",) if name == "ptb" else ()
    with pytest.raises(DataError) as exc:
        LOADERS[name](*args, data_dir=path.parent)
    message = str(exc.value)
    assert DAMAGE[case] in message and str(path) in message and f.url in message
    assert f"ARC_DATA_DIR: {real_root}" in message
    assert everything(offline) == []


# %% no network, and downloads from a local server


@pytest.mark.parametrize("name", LOADERS)
def test_missing_files_without_network(offline, name):
    """No local file and no network (the canonical host cannot be reached): one DataError naming the
    file, the canonical URL and ARC_DATA_DIR (PTB: the zip that holds the split), and the cache is
    left empty, not even a folder."""
    with pytest.raises(DataError) as exc:
        LOADERS[name]()
    f = FILES[name]
    download = f.member_of[0] if f.member_of else f.filename
    message = str(exc.value)
    assert f"could not download {download}" in message and str(offline / f.name / download) in message
    assert f.url in message and "ARC_DATA_DIR: <unset>" in message
    assert everything(offline) == []


@pytest.mark.parametrize("name", ["timemachine", "tinyshakespeare"])
def test_download_then_cache(real_root, offline, server, monkeypatch, name):
    """With no local copy the corpus is downloaded, checked against its sha256 and kept in the cache;
    a second call, with the server shut down, reads the cache and makes no request."""
    f = FILES[name]
    real = (real_root / f.name / f.filename).read_bytes()
    serve_from(monkeypatch, server, name, real)
    assert LOADERS[name]().encode() == real
    assert server.requests == ["/" + f.filename]
    assert everything(offline) == [offline / f.name, offline / f.name / f.filename]
    server.close()
    assert LOADERS[name]().encode() == real and server.requests == ["/" + f.filename]


@pytest.mark.parametrize("name", LOADERS)
def test_download_with_wrong_checksum_leaves_nothing(real_root, offline, server, monkeypatch, name):
    """Served bytes that do not match the pinned checksum (one byte changed) are a 'checksum mismatch'
    DataError naming the file, the URL and ARC_DATA_DIR; nothing is left in the cache."""
    f = FILES[name]
    download = f.member_of[0] if f.member_of else f.filename
    good = (real_root / f.name / download).read_bytes()
    url = serve_from(monkeypatch, server, name, good[:-1] + bytes([good[-1] ^ 1]), "sha256:" + sha256(good))
    with pytest.raises(DataError) as exc:
        LOADERS[name]()
    message = str(exc.value)
    assert "checksum mismatch" in message and sha256(good) in message
    assert url in message and str(offline / f.name / download) in message and "ARC_DATA_DIR" in message
    assert server.requests == ["/" + download]
    assert everything(offline) == []


def test_ptb_downloads_zip_and_extracts_splits(real_root, offline, server, monkeypatch, load_real):
    """With no local PTB at all, ptb() downloads ptb.zip once (sha256-checked), extracts the split
    asked for into the cache, and leaves no temporary file; the next split comes from the cached zip
    without a request, and a split already extracted is read as it is."""
    serve_from(monkeypatch, server, "ptb", (real_root / "ptb" / "ptb.zip").read_bytes())
    cache = offline / "ptb"
    assert ptb("valid") == load_real("ptb", "valid")
    assert server.requests == ["/ptb.zip"]
    assert everything(offline) == [cache, cache / "ptb.valid.txt", cache / "ptb.zip"]
    server.close()
    assert ptb("test") == load_real("ptb", "test")
    (cache / "ptb.zip").unlink()  # the extracted splits no longer need it
    assert ptb("valid") == load_real("ptb", "valid") and ptb("test") == load_real("ptb", "test")
    assert server.requests == ["/ptb.zip"]
    assert everything(offline) == [cache, cache / "ptb.test.txt", cache / "ptb.valid.txt"]


def zip_with(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """Write a zip at ``path`` holding ``members`` (name -> bytes), deflated as ptb.zip is by default."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, content in members.items():
            z.writestr(name, content)
    return path


def test_ptb_local_zip_is_extracted(real_root, offline, tmp_path, load_real):
    """A data_dir holding only ptb.zip (no .txt) is enough: the split is extracted into the cache."""
    (tmp_path / "local").mkdir()
    local = Path(shutil.copy(real_root / "ptb" / "ptb.zip", tmp_path / "local" / "ptb.zip"))
    assert ptb("test", data_dir=local.parent) == load_real("ptb", "test")
    assert everything(offline) == [offline / "ptb", offline / "ptb" / "ptb.test.txt"]


PTB_TEST = "ptb/ptb.test.txt"
BAD_ZIPS = {  # case -> (how to make the damaged zip from the real one, words the error must contain)
    "truncated": (lambda real: real[: len(real) // 2], "damaged or not a zip"),
    "not-a-zip": (lambda real: b"PK but no zip" + bytes(100), "damaged or not a zip"),
    "crc-error": (None, "Bad CRC-32"),  # the text of ptb.test.txt altered: zipfile's CRC check finds it
    "no-member": (None, "has no member ptb/ptb.test.txt"),
}


@pytest.mark.parametrize("case", BAD_ZIPS)
def test_ptb_bad_local_zip_is_a_data_error(real_root, offline, tmp_path, case):
    """A damaged or incomplete local ptb.zip is a DataError naming the problem, the zip and its URL,
    and no half-extracted split (nor a temporary file) is left in the cache."""
    real = (real_root / "ptb" / "ptb.zip").read_bytes()
    local = tmp_path / "local" / "ptb.zip"
    make, problem = BAD_ZIPS[case]
    if case == "no-member":
        zip_with(local, {"ptb/ptb.valid.txt": b" a b\n"})
    elif case == "crc-error":  # stored uncompressed, one letter of the text changed: only the CRC can tell
        zip_with(local, {PTB_TEST: b" hello world\n" * 1000}, zipfile.ZIP_STORED)
        content = local.read_bytes()
        i = content.index(b"hello")
        local.write_bytes(content[:i] + b"j" + content[i + 1 :])
    else:
        local.parent.mkdir()
        local.write_bytes(make(real))
    with pytest.raises(DataError) as exc:
        ptb("test", data_dir=local.parent)
    message = str(exc.value)
    assert problem in message and str(local) in message and tx.PTB_URL in message
    assert not (offline / "ptb" / "ptb.test.txt").exists() and not list(offline.rglob("*.part"))


# %% checksums in data.files


HEX = {"md5": "0" * 32, "sha1": "1" * 40, "sha256": "a" * 64}


@pytest.mark.parametrize("algorithm", HEX)
def test_checksum_with_or_without_algorithm(algorithm):
    """'algorithm:hexdigest' names its algorithm; a bare md5, sha1 or sha256 hexdigest is known by its length."""
    assert data.files.parse_checksum(f"{algorithm.upper()}:{HEX[algorithm].upper()}") == (algorithm, HEX[algorithm])
    assert data.files.parse_checksum(HEX[algorithm]) == (algorithm, HEX[algorithm])


@pytest.mark.parametrize("bad", ["crc32:1234abcd", "sha1:" + "0" * 32, "md5:" + "g" * 32, "0" * 50, ""])
def test_malformed_checksum_is_a_value_error(bad, tmp_path):
    """An unknown algorithm, a digest of the wrong length or with non-hex digits: a ValueError (a bug in
    the pinned value), raised before any download is tried."""
    with pytest.raises(ValueError, match="checksum"):
        data.files.download(["http://127.0.0.1:9/x"], tmp_path / "x", bad)
    assert everything(tmp_path) == []


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256", "sha512"])
def test_download_verifies_any_algorithm(server, tmp_path, algorithm):
    """The download is checked with the algorithm the checksum names: the right digest is accepted,
    the same digest with its last digit changed rejected."""
    content = np.random.default_rng(1).bytes(100_000)
    url = server.serve("blob.bin", content)
    digest = hashlib.new(algorithm, content).hexdigest()
    dest = tmp_path / "cache" / "blob.bin"
    assert data.files.download([url], dest, f"{algorithm}:{digest}").read_bytes() == content
    wrong = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    with pytest.raises(DataError, match=f"checksum mismatch for blob.bin: {algorithm} {digest}, expected {wrong}"):
        data.files.download([url], tmp_path / "other" / "blob.bin", f"{algorithm}:{wrong}")
    assert not (tmp_path / "other").exists()


# %% tokenize and preprocess_timemachine


def test_tokenize_char_and_word():
    """Characters keep everything (spaces, newlines); words split on any whitespace; eos= closes every line."""
    text = "The cat,  sat.\nOn the\tmat\n"
    assert tokenize(text, "char") == list(text)
    assert tokenize(text) == list(text)
    assert tokenize(text, "word") == ["The", "cat,", "sat.", "On", "the", "mat"]
    assert tokenize(text, "word", eos="<eos>") == ["The", "cat,", "sat.", "<eos>", "On", "the", "mat", "<eos>"]


@pytest.mark.parametrize("token, eos", [("bpe", None), ("Word", None), ("char", "<eos>")])
def test_tokenize_rejects_bad_arguments(token, eos):
    with pytest.raises(ValueError, match="token|eos"):
        tokenize("a b", token, eos=eos)


def test_preprocess_timemachine():
    """Each run of non-letters becomes a single space, and the letters are lower-cased."""
    assert preprocess_timemachine("The Time-Machine, 1898!\n\nI.  It was") == "the time machine i it was"


# %% Vocab (hypothesis)

# Tokens from a small alphabet, so that repeats (and ties in frequency) are common.
token_lists = st.lists(st.text("abcde<>", min_size=1, max_size=3), max_size=60)


@FEW
@given(token_lists, st.integers(0, 4), st.lists(st.sampled_from(["<pad>", "<bos>", "<unk>", "a"]), max_size=3))
def test_vocab_layout_and_frequency_order(tokens, min_freq, reserved):
    """<unk> at 0, then the reserved tokens once each, then every token seen at least min_freq times,
    most frequent first (ties by string); token_freqs are the counts of all tokens, sorted the same way."""
    vocab = Vocab(tokens, min_freq=min_freq, reserved_tokens=reserved)
    counts = Counter(tokens)
    head = list(dict.fromkeys(["<unk>", *reserved]))
    assert vocab.unk == 0 and vocab.idx_to_token[: len(head)] == head
    rest = vocab.idx_to_token[len(head) :]
    assert set(rest) == {t for t, n in counts.items() if n >= min_freq} - set(head)
    assert rest == sorted(rest, key=lambda t: (-counts[t], t))
    assert vocab.token_freqs == sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    assert len(vocab) == len(vocab.idx_to_token) == len(vocab.token_to_idx)
    assert all(vocab.token_to_idx[t] == i for i, t in enumerate(vocab.idx_to_token))


@FEW
@given(token_lists, st.integers(0, 3), token_lists)
def test_vocab_encode_decode(tokens, min_freq, queries):
    """encode gives int64 indices; decode(encode(x)) is x where every token the vocabulary does not
    know (never seen, or rarer than min_freq) became <unk>, index 0."""
    vocab = Vocab(tokens, min_freq=min_freq)
    known = {t for t, n in Counter(tokens).items() if n >= min_freq} | {"<unk>"}
    ids = vocab.encode(queries)
    assert ids.dtype == np.int64 and ids.shape == (len(queries),)
    assert vocab.decode(ids) == [t if t in known else "<unk>" for t in queries]
    assert [i == 0 for i in ids.tolist()] == [t not in known or t == "<unk>" for t in queries]
    assert vocab.decode(vocab.encode(tokens)) == [t if t in known else "<unk>" for t in tokens]


@pytest.mark.parametrize("bad", [[5], [-1], [[1, 2]], [0.5]])
def test_vocab_decode_rejects_bad_indices(bad):
    """Indices outside 0 .. len - 1 (negative ones included: no silent wrap-around), 2-D, or floats."""
    with pytest.raises(ValueError, match="indices"):
        Vocab("abca").decode(bad)


# %% language-model batches (hypothesis)


@st.composite
def lm_args(draw):
    """(corpus, batch_size, num_steps, seed): a corpus of distinct token values long enough for one batch."""
    batch_size, num_steps = draw(st.integers(1, 6)), draw(st.integers(1, 8))
    n = (batch_size + 1) * num_steps + draw(st.integers(0, 120))
    corpus = np.random.default_rng(draw(st.integers(0, 2**16))).permutation(n) + 7  # distinct values
    return corpus, batch_size, num_steps, draw(st.integers(0, 2**32 - 1))


def positions(corpus: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Where each token of ``tokens`` lies in ``corpus`` (its values are distinct)."""
    where = np.empty(corpus.max() + 1, dtype=np.int64)
    where[corpus] = np.arange(len(corpus))
    return where[tokens]


def check_lm_batch(corpus, X, Y, batch_size, num_steps) -> np.ndarray:
    """X, Y are int64 (B, T); every row of X is a contiguous stretch of the corpus and Y is X one
    token later. Returns the corpus positions of X."""
    assert X.dtype == Y.dtype == np.int64 and X.shape == Y.shape == (batch_size, num_steps)
    pos = positions(corpus, X)
    np.testing.assert_array_equal(pos, pos[:, :1] + np.arange(num_steps))
    np.testing.assert_array_equal(positions(corpus, Y), pos + 1)
    return pos


@FEW
@given(lm_args())
def test_lm_batches_random(args):
    """Random sampling: every Y is X shifted by one; the subsequences of an epoch all start at the
    same offset (mod num_steps) below num_steps, never overlap, and are as many as fit, whole batches only."""
    corpus, batch_size, num_steps, seed = args
    batches = list(lm_batches_random(corpus, batch_size, num_steps, np.random.default_rng(seed)))
    starts = np.concatenate([check_lm_batch(corpus, X, Y, batch_size, num_steps)[:, 0] for X, Y in batches])
    offset = starts.min() % num_steps
    assert offset < num_steps and np.all(starts % num_steps == offset)
    assert len(set(starts.tolist())) == len(starts)  # distinct starts on one grid: disjoint subsequences
    n_subseqs = (len(corpus) - offset - 1) // num_steps
    assert len(batches) == n_subseqs // batch_size >= 1
    assert starts.max() + num_steps < len(corpus)  # the last target exists


@FEW
@given(lm_args())
def test_lm_batches_sequential(args):
    """Sequential partitioning: every Y is X shifted by one; row b of batch i+1 starts right where row
    b of batch i ended; the rows are consecutive equal stretches of the corpus after an offset below
    num_steps, and the batches are as many as fit."""
    corpus, batch_size, num_steps, seed = args
    batches = list(lm_batches_sequential(corpus, batch_size, num_steps, np.random.default_rng(seed)))
    pos = [check_lm_batch(corpus, X, Y, batch_size, num_steps) for X, Y in batches]
    for before, after in zip(pos, pos[1:]):
        np.testing.assert_array_equal(after[:, 0], before[:, -1] + 1)
    offset, row_len = pos[0][0, 0], (len(corpus) - pos[0][0, 0] - 1) // batch_size
    assert offset < num_steps
    np.testing.assert_array_equal(pos[0][:, 0], offset + row_len * np.arange(batch_size))
    assert len(batches) == row_len // num_steps >= 1


@pytest.mark.parametrize("sampler", [lm_batches_random, lm_batches_sequential])
def test_lm_batches_offsets_vary_and_seed_repeats(sampler):
    """Over successive epochs drawn from one generator every offset 0 .. num_steps - 1 occurs (the
    cuts move); the same seed gives the same batches; a list corpus works as an array does."""
    corpus, num_steps = np.arange(100), 5
    rng = np.random.default_rng(0)
    offsets = {int(next(sampler(corpus, 2, num_steps, rng))[0].min()) % num_steps for _ in range(60)}
    assert offsets == set(range(num_steps))
    first = list(sampler(corpus, 3, num_steps, np.random.default_rng(7)))
    again = list(sampler(corpus.tolist(), 3, num_steps, np.random.default_rng(7)))
    assert len(first) == len(again) > 0
    assert all(np.array_equal(a, b) for batch, twin in zip(first, again) for a, b in zip(batch, twin))


@pytest.mark.parametrize("sampler", [lm_batches_random, lm_batches_sequential])
@pytest.mark.parametrize(
    "corpus, batch_size, num_steps, words",
    [
        (np.arange(19), 3, 5, "too short"),  # needs (3 + 1) * 5 = 20 tokens
        (np.arange(100), 0, 5, "positive"),
        (np.arange(100), 2, 0, "positive"),
        (np.arange(100).reshape(10, 10), 2, 3, "1-D"),
        (np.linspace(0, 1, 100), 2, 3, "1-D"),
    ],
)
def test_lm_batches_reject_bad_arguments(sampler, corpus, batch_size, num_steps, words):
    """Bad arguments are a ValueError at the call, before any batch is asked for."""
    with pytest.raises(ValueError, match=words):
        sampler(corpus, batch_size, num_steps, np.random.default_rng(0))


def test_lm_batches_exact_minimum_length():
    """(batch_size + 1) * num_steps tokens always give at least one batch, whatever the offset."""
    for seed in range(20):
        for sampler in (lm_batches_random, lm_batches_sequential):
            assert len(list(sampler(np.arange(20), 3, 5, np.random.default_rng(seed)))) >= 1
