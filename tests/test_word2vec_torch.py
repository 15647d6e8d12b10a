"""05-rnns/word2vec_torch.py: the skip-gram scores, the masked loss, similarity and analogy, PCA, and the PTB runs.

The written-out loss must equal torch's F.binary_cross_entropy_with_logits(weight=mask) in float64, with
the same gradients; padding must change neither the loss nor any gradient; the scores must equal an
explicit loop; and a smoke training on a PTB subset must lower the loss and rank held-out true contexts
above noise words more often than chance.
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradcheck import rel_error

from data import Vocab

TOL = 1e-12  # float64 comparisons of the same formula written two ways


@pytest.fixture(scope="module")
def w2v(load_script):
    return load_script("05-rnns/word2vec_torch.py")


def random_batch(gen, B=5, L=9, V=20):
    """A batch in skipgram_batches' layout: row b has n_b contexts, n_b * 2 noise words, then padding (index 0)."""
    n = torch.tensor([1, 3, 2, 3, 1][:B])  # (B,) contexts per row; the longest row has no padding
    length = n * 3  # (B,) real entries: n contexts + 2n noise words
    assert L == length.max()
    j = torch.arange(L)
    mask = (j < length[:, None]).double()  # (B, L)
    label = (j < n[:, None]).double()  # (B, L)
    center = torch.randint(1, V, (B,), generator=gen)
    ctx_neg = torch.randint(1, V, (B, L), generator=gen) * mask.long()  # padding points at index 0
    return center, ctx_neg, mask, label


def written_and_reference(w2v, scores, label, mask):
    """(loss, d loss / d scores) of the script's sgns_loss and of torch's weighted BCE, same upstream."""
    out = []
    for fn in [
        w2v.sgns_loss,
        lambda s, y, m: F.binary_cross_entropy_with_logits(s, y, weight=m, reduction="sum") / m.sum(),
    ]:
        s = scores.clone().requires_grad_(True)
        loss = fn(s, label, mask)
        (g,) = torch.autograd.grad(loss * 1.7, s)  # a non-unit upstream gradient
        out.append((loss.detach(), g))
    return out


def test_loss_equals_weighted_bce_with_logits(w2v):
    """sum(mask * l) / sum(mask), l = -[y log sigma(s) + (1 - y) log sigma(-s)], equals torch's weighted BCE.

    Its gradient is mask (sigma(s) - y) / sum(mask); scores of +-800 stay finite.
    """
    gen = torch.Generator().manual_seed(0)
    _, _, mask, label = random_batch(gen)
    scores = 4 * torch.randn(mask.shape, generator=gen, dtype=torch.float64)  # spread out: both tails of sigma
    (loss, g), (loss_ref, g_ref) = written_and_reference(w2v, scores, label, mask)
    assert rel_error(loss, loss_ref) <= TOL and rel_error(g, g_ref) <= TOL
    assert rel_error(g, 1.7 * mask * (torch.sigmoid(scores) - label) / mask.sum()) <= TOL  # dl/ds by hand
    # large scores: logsigmoid stays finite where log(sigmoid(s)) would give log 0
    big = torch.where(label > 0, -800.0, 800.0).double()  # every entry confidently wrong
    (loss, g), (loss_ref, g_ref) = written_and_reference(w2v, big, label, mask)
    assert torch.isfinite(loss) and rel_error(loss, loss_ref) <= TOL and rel_error(g, g_ref) <= TOL
    assert abs(loss.item() - 800) < 1e-9  # each entry costs |s| when the sign is wrong


def test_skipgram_forward_equals_loop(w2v):
    """s[b, j] = u_{ctx_neg[b, j]} . v_{center[b]}, computed entry by entry."""
    torch.manual_seed(1)
    model = w2v.SkipGram(20, 6).double()
    with torch.no_grad():  # U starts at 0; give it values so the check means something
        model.U.weight.normal_()
    center, ctx_neg, _, _ = random_batch(torch.Generator().manual_seed(2))
    s = model(center, ctx_neg)
    V, U = model.V.weight.detach(), model.U.weight.detach()
    loop = torch.tensor(
        [[float(U[ctx_neg[b, j]] @ V[center[b]]) for j in range(ctx_neg.shape[1])] for b in range(len(center))],
        dtype=torch.float64,
    )
    assert s.shape == ctx_neg.shape
    assert rel_error(s, loop) <= TOL
    assert rel_error(s, torch.einsum("bd,bld->bl", V[center], U[ctx_neg])) <= TOL


def test_init_gives_log2(w2v):
    """word2vec's init: V in U(-0.5/d, 0.5/d), U = 0, so every score is 0 and the loss is log 2 per entry."""
    model = w2v.SkipGram(50, 8).double()
    assert model.V.weight.abs().max() <= 0.5 / 8 and model.V.weight.std() > 0.1 / 8
    assert model.U.weight.abs().max() == 0
    center, ctx_neg, mask, label = random_batch(torch.Generator().manual_seed(3), V=50)
    assert abs(w2v.sgns_loss(model(center, ctx_neg), label, mask).item() - math.log(2)) < 1e-12
    for args in [(0, 4), (5, 0), (5.0, 4), (True, 4)]:
        with pytest.raises(ValueError):
            w2v.SkipGram(*args)


def test_padding_changes_neither_loss_nor_gradients(w2v):
    """Other indices, labels and scores on the padding (mask 0): the same loss and the same gradient of V and U."""
    torch.manual_seed(4)
    model = w2v.SkipGram(20, 6).double()
    with torch.no_grad():
        model.U.weight.normal_()
    gen = torch.Generator().manual_seed(5)
    center, ctx_neg, mask, label = random_batch(gen)
    pad = mask == 0
    assert pad.any()

    def loss_and_grads(ctx_neg, label, extra=0.0):
        model.zero_grad()
        loss = w2v.sgns_loss(model(center, ctx_neg) + extra, label, mask)
        loss.backward()
        return loss.detach(), model.V.weight.grad.clone(), model.U.weight.grad.clone()

    ref = loss_and_grads(ctx_neg, label)
    other_idx = torch.where(pad, torch.randint(1, 20, ctx_neg.shape, generator=gen), ctx_neg)
    other_label = torch.where(pad, torch.randint(0, 2, label.shape, generator=gen).double(), label)
    other_scores = torch.where(pad, 1e3 * torch.randn(mask.shape, generator=gen, dtype=torch.float64), 0.0)
    for changed in [
        loss_and_grads(other_idx, label),
        loss_and_grads(ctx_neg, other_label),
        loss_and_grads(other_idx, other_label, other_scores),
    ]:
        for a, b in zip(changed, ref):
            assert rel_error(a, b) <= TOL
    assert ref[2][0].abs().max() == 0  # index 0, where the padding points, gets no gradient


def test_gradients_match_weighted_bce_through_the_model(w2v):
    """Gradients of V and U through the scores: written-out loss against torch's weighted BCE."""
    torch.manual_seed(6)
    model = w2v.SkipGram(20, 6).double()
    with torch.no_grad():
        model.U.weight.normal_()
    center, ctx_neg, mask, label = random_batch(torch.Generator().manual_seed(7))
    grads = []
    for fn in [
        w2v.sgns_loss,
        lambda s, y, m: F.binary_cross_entropy_with_logits(s, y, weight=m, reduction="sum") / m.sum(),
    ]:
        model.zero_grad()
        fn(model(center, ctx_neg), label, mask).backward()
        grads.append((model.V.weight.grad.clone(), model.U.weight.grad.clone()))
    for a, b in zip(*grads):
        assert rel_error(a, b) <= TOL and a.abs().max() > 0


# --- similarity, analogy, PCA ------------------------------------------------------------------


@pytest.fixture
def toy():
    """A vocabulary of 7 words and vectors built so that the answers are known."""
    vocab = Vocab(["king", "queen", "man", "woman", "apple", "pear", "car"])
    royal, female, fruit = np.eye(4)[0], np.eye(4)[1], np.eye(4)[2]
    vec = {
        "king": 2 * royal,
        "queen": 2 * royal + female,
        "man": np.eye(4)[3],
        "woman": np.eye(4)[3] + female,
        "apple": fruit,
        "pear": fruit + 0.1 * royal,
        "car": -fruit,
    }
    W = np.zeros((len(vocab), 4))
    for w, x in vec.items():
        W[vocab.token_to_idx[w]] = x
    W[0] = 5 * fruit  # <unk>: an untrained row must never be an answer
    return vocab, W


def test_neighbours_by_cosine(w2v, toy):
    vocab, W = toy
    ns = w2v.neighbours(W, vocab, "apple", k=3)
    assert ns[0][0] == "pear" and abs(ns[0][1] - 1 / math.sqrt(1.01)) < 1e-12  # not <unk>, not apple itself
    assert all(w in {"king", "queen", "man", "woman"} and abs(c) < 1e-12 for w, c in ns[1:])  # orthogonal ones
    assert all(a[1] >= b[1] for a, b in zip(ns, ns[1:]))
    assert w2v.neighbours(W, vocab, "apple", k=6)[-1][0] == "car"  # cosine -1 comes last
    with pytest.raises(ValueError, match="'banana'"):
        w2v.neighbours(W, vocab, "banana")


def test_analogy_by_vector_arithmetic(w2v, toy):
    vocab, W = toy
    assert w2v.analogy(W, vocab, "man", "woman", "king")[0][0] == "queen"
    assert w2v.analogy(W, vocab, "king", "queen", "man")[0][0] == "woman"
    # the three query words are never answers, even when nearest
    assert {w for w, _ in w2v.analogy(W, vocab, "man", "woman", "king", k=4)}.isdisjoint({"man", "woman", "king"})
    with pytest.raises(ValueError, match="'prince'"):
        w2v.analogy(W, vocab, "man", "prince", "king")


def test_pca_2d_finds_the_top_principal_axes(w2v):
    """Projected variances equal the two largest eigenvalues of the covariance; the axes are orthogonal."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 5)) * np.array([5.0, 0.3, 2.0, 1.0, 0.1]) + 7.0
    xy, share = w2v.pca_2d(X)
    eig = np.sort(np.linalg.eigvalsh(np.cov(X.T)))[::-1]  # (5,) largest first
    assert xy.shape == (30, 2)
    assert rel_error(xy.var(axis=0, ddof=1), eig[:2]) <= 1e-10
    assert abs(xy[:, 0] @ xy[:, 1]) < 1e-8 and np.abs(xy.mean(axis=0)).max() < 1e-10
    assert rel_error(share, eig[:2] / eig.sum()) <= 1e-10


# --- the script on PTB -------------------------------------------------------------------------


def test_smoke_training_on_ptb(w2v, tmp_path):
    """3,000 PTB sentences, 2 epochs: the loss falls well below log 2 and held-out true contexts outrank noise words."""
    m = w2v.main(["--smoke", "--out-dir", str(tmp_path)])
    assert abs(m["first_loss"] - math.log(2)) < 1e-6  # all scores 0 at the start
    assert m["final_train_loss"] < 0.7 * m["first_loss"]
    assert m["history"]["val_loss"][0] == pytest.approx(math.log(2)) and m["history"]["val_auc"][0] == 0.5
    assert m["val_loss"] < 0.7 * math.log(2)
    assert m["val_auc"] > 0.55  # chance is 0.5; some 10^5 (context, noise) pairs, so far outside noise
    assert 500 < m["vocab_size"] < 2000 and m["sec_per_epoch"] > 0
    assert set(m["neighbours"]) and all(len(ns) == 5 for ns in m["neighbours"].values())
    for ns in [*m["neighbours"].values(), *m["neighbours_v_plus_u"].values()]:
        cos = [c for _, c in ns]
        assert all(-1 <= c <= 1 + 1e-9 for c in cos) and cos == sorted(cos, reverse=True)
    assert m["analogies_asked"] >= 1 and 0 <= m["analogies_right"] <= m["analogies_asked"]
    assert json.loads((tmp_path / "metrics.json").read_text())["val_auc"] == m["val_auc"]
    assert (tmp_path / "loss.png").stat().st_size > 10_000
    assert m["pca_figure"] and (tmp_path / "embeddings_pca.png").stat().st_size > 10_000
    vectors = np.load(tmp_path / "vectors.npz")
    assert vectors["V"].shape == (m["vocab_size"], 32) and len(vectors["words"]) == m["vocab_size"]


def test_same_seed_same_numbers(w2v, tmp_path):
    """Two runs with one seed: identical losses; another seed: different ones."""
    flags = ["--smoke", "--epochs", "1", "--max-sentences", "800", "--probes", "the,of"]
    runs = [
        w2v.main([*flags, "--seed", str(seed), "--out-dir", str(tmp_path / str(i))]) for i, seed in enumerate([3, 3, 4])
    ]
    assert runs[0]["history"] == {**runs[1]["history"], "epoch_s": runs[0]["history"]["epoch_s"]}
    assert runs[0]["neighbours"] == runs[1]["neighbours"]
    assert runs[0]["final_train_loss"] != runs[2]["final_train_loss"]


def test_bad_input_exits_with_a_clear_message(w2v, tmp_path, capsys, monkeypatch):
    """Exit 2 naming the flag: bad numbers in argparse, a device this machine lacks before any data is read."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cases = [
        (["--probes", "the,notaword"], "'notaword'"),
        (["--embed-dim", "0"], "--embed-dim"),
        (["--window", "0"], "--window"),
        (["--lr", "-1"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--t", "1"], "--t"),
        (["--device", "tpu"], "tpu"),
        (["--device", "cuda"], "--device cuda: not available"),
    ]
    for argv, words in cases:
        with pytest.raises(SystemExit) as exc:
            w2v.main([*argv, "--smoke", "--max-sentences", "300", "--out-dir", str(tmp_path)])
        assert exc.value.code == 2, argv
        assert words in capsys.readouterr().err


def test_missing_data_is_a_one_line_error(w2v, missing_data_error):
    """No PTB anywhere (an empty ARC_DATA_DIR and download cache, no network): `error: ...` naming the file
    and ARC_DATA_DIR, raised as SystemExit, not a DataError traceback."""
    message = missing_data_error(w2v.main)
    assert "ptb" in message
