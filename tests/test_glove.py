"""05-rnns GloVe: the hand-written gradients, the weighting f, both co-occurrence builders, AdaGrad,
the similarity helpers, and smoke runs of glove_numpy.py and glove_torch.py.

The gradients of glove_numpy.py are checked against torch autograd in float64 on a batch whose word
and context indices repeat (so the scatter-add is what is tested); glove_torch.py's loss, given the
same weights, must agree with them. Both co-occurrence builders are checked against a brute-force
double loop over positions (the torch one over sentences, which windows must not cross).
"""

import json

import numpy as np
import pytest
import torch
from gradcheck import rel_error

from data import Vocab

TOL = 1e-7


@pytest.fixture(scope="module")
def gn(load_script):
    return load_script("05-rnns/glove_numpy.py")


@pytest.fixture(scope="module")
def gt(load_script):
    return load_script("05-rnns/glove_torch.py")


def random_problem(seed=0, V=7, dim=4, B=40):
    """Random float64 parameters and a batch of B entries whose i and j repeat, x on both sides of x_max."""
    rng = np.random.default_rng(seed)
    params = {
        "W": rng.standard_normal((V, dim)),
        "Wt": rng.standard_normal((V, dim)),
        "b": rng.standard_normal(V),
        "bt": rng.standard_normal(V),
    }
    i, j = rng.integers(0, V, B), rng.integers(0, V, B)
    x = np.exp(rng.uniform(-3, 7, B))  # 0.05 .. 1100: below and above x_max = 100
    x[:3] = [100.0, 0.5, 250.0]
    return params, i, j, x


# --- the loss and its gradients ------------------------------------------------------------------


@pytest.mark.parametrize("x_max,alpha", [(100.0, 0.75), (10.0, 0.5)])
def test_glove_gradients_match_autograd(gn, x_max, alpha):
    params, i, j, x = random_problem()
    assert len(np.unique(i)) < len(i) and len(np.unique(j)) < len(j)  # repeated rows: the scatter-add matters
    loss, grads = gn.glove_loss_and_grads(params, i, j, x, x_max, alpha)

    t = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    it, jt, xt = torch.from_numpy(i), torch.from_numpy(j), torch.from_numpy(x)
    e = (t["W"][it] * t["Wt"][jt]).sum(1) + t["b"][it] + t["bt"][jt] - torch.log(xt)
    f = torch.clamp(xt / x_max, max=1.0) ** alpha  # (x / x_max)^alpha below x_max, 1 from there on
    ref = (f * e**2).sum() / len(x)
    ref.backward()
    assert abs(loss - ref.item()) <= 1e-12 * abs(ref.item())
    for name in params:
        assert grads[name].shape == params[name].shape
        assert rel_error(grads[name], t[name].grad) <= TOL, name
    # words that never occur in the batch get exactly zero gradient
    unused = np.setdiff1d(np.arange(7), i)
    assert np.all(grads["W"][unused] == 0) and np.all(grads["b"][unused] == 0)


def test_torch_loss_matches_numpy(gn, gt):
    """glove_torch's GloVe.loss with the same weights: the same loss, and autograd gives the numpy gradients."""
    params, i, j, x = random_problem(seed=1)
    loss, grads = gn.glove_loss_and_grads(params, i, j, x)
    model = gt.GloVe(7, 4).double()
    with torch.no_grad():
        model.W.weight.copy_(torch.from_numpy(params["W"]))
        model.Wt.weight.copy_(torch.from_numpy(params["Wt"]))
        model.b.copy_(torch.from_numpy(params["b"]))
        model.bt.copy_(torch.from_numpy(params["bt"]))
    out = model.loss(torch.from_numpy(i), torch.from_numpy(j), torch.from_numpy(x))
    out.backward()
    assert rel_error(out.detach(), np.array(loss)) <= 1e-12
    for name, got in [
        ("W", model.W.weight.grad),
        ("Wt", model.Wt.weight.grad),
        ("b", model.b.grad),
        ("bt", model.bt.grad),
    ]:
        assert rel_error(got, grads[name]) <= TOL, name
    assert rel_error(model.word_vectors(), params["W"] + params["Wt"]) == 0


def test_weighting(gn):
    f = gn.weighting
    x = np.array([0.0, 1.0, 6.25, 50.0, 100.0, 100.5, 1e4])
    want = np.array([0.0, 10**-1.5, 0.125, 2**-0.75, 1.0, 1.0, 1.0])  # (x/100)^(3/4); 6.25/100 = 16^-1
    assert np.allclose(f(x), want, rtol=1e-14, atol=0)
    assert np.allclose(f(np.array([2.0, 5.0, 10.0, 20.0]), x_max=10.0, alpha=1.0), [0.2, 0.5, 1.0, 1.0])
    below = np.linspace(0.1, 99.9, 50)
    assert np.all(np.diff(f(below)) > 0) and np.all(f(below) < 1)  # increasing, capped at 1


def test_init_params_range(gn):
    p = gn.init_params(np.random.default_rng(0), 50, 10)
    assert p["W"].shape == p["Wt"].shape == (50, 10) and p["b"].shape == p["bt"].shape == (50,)
    for v in p.values():
        assert np.abs(v).max() <= 0.05 and v.std() > 0.02  # uniform(-0.5/dim, 0.5/dim)


def test_torch_init_range(gt):
    m = gt.GloVe(50, 10)
    for v in m.parameters():
        assert v.abs().max() <= 0.05 and v.std() > 0.02


# --- co-occurrence counts --------------------------------------------------------------------------


def brute_force(sentences, V, window):
    """X by the definition: every ordered pair of positions in one sentence, 1 <= |t - u| <= window, adds 1/|t - u|."""
    X = np.zeros((V, V))
    for s in sentences:
        for t in range(len(s)):
            for u in range(len(s)):
                d = abs(t - u)
                if 1 <= d <= window:
                    X[s[t], s[u]] += 1.0 / d
    return X


def test_cooccurrence_numpy_small_example(gn):
    X = gn.cooccurrence(np.array([0, 1, 2, 0]), 3, window=2)
    want = np.array(
        [
            [0.0, 1.0 + 0.5, 0.5 + 1.0],  # 0-1 at d 1 and (the last 0) d 2; 0-2 at d 2 and d 1
            [1.5, 0.0, 1.0],
            [1.5, 1.0, 0.0],
        ]
    )
    assert np.array_equal(X, want)
    i, j, x = gn.nonzero_entries(X)
    assert len(x) == 6 and np.all(x > 0) and np.array_equal(X[i, j], x)


@pytest.mark.parametrize("window", [1, 3, 6])
def test_cooccurrence_numpy_matches_brute_force(gn, window):
    rng = np.random.default_rng(window)
    corpus = rng.integers(0, 12, 300)
    X = gn.cooccurrence(corpus, 12, window)
    assert np.allclose(X, brute_force([corpus], 12, window), rtol=1e-12, atol=0)
    assert np.array_equal(X, X.T)
    i, j, x = gn.nonzero_entries(X)
    rebuilt = np.zeros_like(X)
    rebuilt[i, j] = x
    assert np.array_equal(rebuilt, X) and np.all(x > 0)


@pytest.mark.parametrize("window", [1, 2, 5])
def test_cooccurrence_torch_matches_brute_force(gt, window):
    """Random sentences of lengths 0 .. 12 (empty and one-word ones included): the sparse builder's
    entries are exactly the nonzero cells of the double loop, which never pairs words of two sentences."""
    rng = np.random.default_rng(10 + window)
    V = 10
    sentences = [rng.integers(0, V, n) for n in [0, 1, 12, 3, 0, 7, 1, 9, 2, 11]]
    i, j, x = gt.cooccurrence(sentences, V, window)
    X = brute_force(sentences, V, window)
    keys = i * V + j
    assert len(np.unique(keys)) == len(keys) and np.all(x > 0)
    assert set(keys.tolist()) == set(np.flatnonzero(X).tolist())
    assert np.allclose(x, X[i, j], rtol=1e-12, atol=0)
    got = np.zeros((V, V))
    got[i, j] = x
    assert np.array_equal(got, got.T)


def test_cooccurrence_torch_stops_at_sentence_ends(gt, gn):
    i, j, x = gt.cooccurrence([np.array([1, 2]), np.array([3]), np.array([4, 5, 1])], 6, window=5)
    pairs = {(a, b): w for a, b, w in zip(i.tolist(), j.tolist(), x.tolist())}
    assert pairs == {
        (1, 2): 1.0,
        (2, 1): 1.0,
        (4, 5): 1.0,
        (5, 4): 1.0,
        (5, 1): 1.0,
        (1, 5): 1.0,
        (4, 1): 0.5,
        (1, 4): 0.5,
    }
    # one sentence: the two builders agree
    s = np.random.default_rng(3).integers(0, 8, 80)
    i, j, x = gt.cooccurrence([s], 8, 4)
    X = gn.cooccurrence(s, 8, 4)
    assert np.allclose(X[i, j], x, rtol=1e-12, atol=0) and np.count_nonzero(X) == len(x)


# --- AdaGrad ---------------------------------------------------------------------------------------


def test_adagrad_matches_torch(gn):
    """Four steps on two parameters, one gradient row zero in a step: the same trajectory as torch.optim.Adagrad."""
    rng = np.random.default_rng(5)
    params = {"W": rng.standard_normal((5, 3)), "b": rng.standard_normal(5)}
    ref = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    opt = torch.optim.Adagrad(list(ref.values()), lr=0.05)
    state = {}
    for step in range(4):
        grads = {k: rng.standard_normal(v.shape) * (step + 1) for k, v in params.items()}
        grads["W"][step] = 0.0  # a word that is not in this batch
        before = params["W"][step].copy()
        gn.adagrad_step(params, grads, state, lr=0.05)
        for k in ref:
            ref[k].grad = torch.from_numpy(grads[k].copy())
        opt.step()
        if step == 0:
            assert np.array_equal(params["W"][0], before)  # zero gradient, G still 0: no move
        for k in params:
            assert rel_error(params[k], ref[k].detach()) <= 1e-12, (step, k)


def test_adagrad_first_step_by_hand(gn):
    """Step 1: G = g^2, so theta moves by lr g / |g| = lr sign(g), whatever the size of g."""
    theta = {"w": np.array([1.0, -2.0, 0.5])}
    gn.adagrad_step(theta, {"w": np.array([3.0, -0.5, 0.0])}, state := {}, lr=0.1)
    assert np.allclose(theta["w"], [0.9, -1.9, 0.5], rtol=0, atol=1e-9)
    gn.adagrad_step(theta, {"w": np.array([4.0, 0.0, 2.0])}, state, lr=0.1)  # G = 9 + 16 = 25: 0.1 * 4 / 5
    assert np.allclose(theta["w"], [0.9 - 0.08, -1.9, 0.4], rtol=0, atol=1e-9)


# --- similarity, analogy, PCA ----------------------------------------------------------------------


def toy_embedding():
    """Axes: royal, male, female, fruit. <unk> gets king's vector: the helpers must never return it."""
    vocab = Vocab(["king"] * 5 + ["queen"] * 4 + ["man"] * 3 + ["woman"] * 2 + ["apple"])
    vecs = {
        "<unk>": [1, 1, 0, 0],
        "king": [1, 1, 0, 0],
        "queen": [1, 0, 1, 0],
        "man": [0, 1, 0, 0],
        "woman": [0, 0, 1, 0],
        "apple": [0, 0, 0, 1],
    }
    E = np.zeros((len(vocab), 4))
    for w, v in vecs.items():
        E[vocab.token_to_idx[w]] = v
    E[vocab.token_to_idx["man"]] *= 5.0  # lengths must not matter: only directions
    return E * 3.0, vocab


@pytest.mark.parametrize("script", ["gn", "gt"])
def test_nearest_and_analogy_known_answers(script, request):
    m = request.getfixturevalue(script)
    E, vocab = toy_embedding()
    got = m.nearest(E, vocab, "king", k=3)
    assert [w for w, _ in got] == ["man", "queen", "woman"]  # woman and apple tie at 0: the lower index first
    assert np.allclose([c for _, c in got[:2]], [1 / np.sqrt(2), 0.5])
    everyone = m.nearest(E, vocab, "king", k=10)  # only 4 other words: 4 answers, never king or <unk>
    assert sorted(w for w, _ in everyone) == ["apple", "man", "queen", "woman"]
    # on unit vectors: q = woman - man + king/sqrt2 = (1/sqrt2, 1/sqrt2 - 1, 1, 0); queen = (1, 0, 1, 0)/sqrt2
    (word, cos), *_ = m.analogy(E, vocab, "man", "woman", "king")
    r = 1 / np.sqrt(2)
    assert word == "queen" and np.isclose(cos, (r + 1) * r / np.sqrt(r**2 + (r - 1) ** 2 + 1), rtol=1e-12)
    assert m.analogy(E, vocab, "king", "queen", "man")[0][0] == "woman"
    with pytest.raises(ValueError, match="'prince'"):
        m.nearest(E, vocab, "prince")
    with pytest.raises(ValueError, match="'duke'.*'pear'"):
        m.analogy(E, vocab, "duke", "queen", "pear")
    with pytest.raises(ValueError, match="'<unk>'"):
        m.nearest(E, vocab, "<unk>")


@pytest.mark.parametrize("script", ["gn", "gt"])
def test_pca_2d_of_points_on_a_plane(script, request):
    """Points on a 2-D plane inside 6-D: PCA recovers the plane, so all pairwise distances are kept."""
    m = request.getfixturevalue(script)
    rng = np.random.default_rng(7)
    Z = rng.standard_normal((15, 2)) * [3.0, 1.0]
    Q, _ = np.linalg.qr(rng.standard_normal((6, 2)))  # orthonormal columns
    E = Z @ Q.T + rng.standard_normal(6)  # plus an offset that centring removes
    P, share = m.pca_2d(E)
    dist = lambda A: np.linalg.norm(A[:, None] - A[None], axis=2)
    assert P.shape == (15, 2) and np.allclose(dist(P), dist(Z), atol=1e-10)
    assert np.isclose(share.sum(), 1.0) and share[0] > share[1]
    assert np.allclose(P.mean(axis=0), 0, atol=1e-12)


# --- the scripts -----------------------------------------------------------------------------------


def check_run(m, tmp_path, probes):
    assert m["final_loss"] < m["initial_loss"] / 3  # the fit is several times better than the start
    assert m["history"]["loss"][-1] < m["history"]["loss"][0]
    assert m["sec_per_epoch"] > 0
    assert list(m["neighbours"]) == list(probes)
    for probe, ns in m["neighbours"].items():
        cos = [c for _, c in ns]
        assert len(ns) == 5 and probe not in [w for w, _ in ns] and "<unk>" not in [w for w, _ in ns]
        assert cos == sorted(cos, reverse=True) and -1 <= cos[-1] <= cos[0] <= 1
    assert m["analogies"] and all(a["answer"] not in a["query"] for a in m["analogies"])
    assert json.loads((tmp_path / "metrics.json").read_text())["final_loss"] == m["final_loss"]
    for name in ["loss.png", "embeddings_pca.png"]:
        assert (tmp_path / name).stat().st_size > 10_000


def test_glove_numpy_smoke(gn, tmp_path):
    """The Time Machine, 10 epochs: the loss falls several-fold (about 9x), 'night' finds 'day' first and
    'three' finds 'four' (both held for seeds 0-5)."""
    m = gn.main(["--smoke", "--out-dir", str(tmp_path)])
    check_run(m, tmp_path, gn.PROBES)
    assert m["vocab_size"] == 825 and m["tokens"] > 25_000
    assert m["neighbours"]["night"][0][0] == "day"
    assert "four" in [w for w, _ in m["neighbours"]["three"]]
    again = gn.main(["--smoke", "--epochs", "2", "--out-dir", str(tmp_path / "again")])
    twice = gn.main(["--smoke", "--epochs", "2", "--out-dir", str(tmp_path / "twice")])
    assert again["history"] == twice["history"] and again["neighbours"] == twice["neighbours"]  # deterministic


def test_glove_torch_smoke(gt, tmp_path):
    """PTB's first 3,000 sentences, three epochs: the loss falls several-fold; the probes get neighbours."""
    m = gt.main(["--smoke", "--out-dir", str(tmp_path)])
    check_run(m, tmp_path, gt.PROBES)
    assert m["vocab_size"] == 6719 and m["sentences"] == 3000 and m["nonzeros"] > 100_000


def test_glove_torch_deterministic(gt, tmp_path):
    flags = ["--smoke", "--max-sentences", "400", "--epochs", "1", "--embed-dim", "8"]
    a = gt.main([*flags, "--out-dir", str(tmp_path / "a")])
    b = gt.main([*flags, "--out-dir", str(tmp_path / "b")])
    assert a["history"]["loss"] == b["history"]["loss"] and a["neighbours"] == b["neighbours"]


@pytest.mark.parametrize("script", ["gn", "gt"])
def test_bad_flags_and_unknown_probe_exit_2(script, request, tmp_path, capsys):
    m = request.getfixturevalue(script)
    cases = [
        ["--embed-dim", "0"],
        ["--lr", "-1"],
        ["--lr", "nan"],
        ["--window", "0"],
        ["--x-max", "0"],
        ["--x-alpha", "inf"],
        ["--batch-size", "0"],
        ["--epochs", "0"],
        ["--seed", "-1"],
    ]
    for argv in cases:
        with pytest.raises(SystemExit) as exc:
            m.main([*argv, "--smoke", "--out-dir", str(tmp_path)])
        assert exc.value.code == 2, argv
        assert argv[0] in capsys.readouterr().err, argv
    with pytest.raises(SystemExit) as exc:
        m.main(["--smoke", "--probes", "night,zyzzyva", "--out-dir", str(tmp_path)])
    assert exc.value.code == 2 and "'zyzzyva'" in capsys.readouterr().err


def test_glove_torch_unavailable_device_exits_2_before_counting(gt, tmp_path, capsys, monkeypatch):
    """--device cuda on a machine without one: exit 2 right after parsing (it once came as a traceback
    after the counting); PTB is never read."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gt, "ptb", lambda *a, **k: pytest.fail("PTB read before the device was checked"))
    with pytest.raises(SystemExit) as exc:
        gt.main(["--device", "cuda", "--smoke", "--out-dir", str(tmp_path)])
    assert exc.value.code == 2 and "--device cuda: not available on this machine" in capsys.readouterr().err


@pytest.mark.parametrize("script,file", [("gn", "timemachine.txt"), ("gt", "ptb")])
def test_missing_data_is_a_one_line_error(script, file, request, missing_data_error):
    """No corpus anywhere (an empty ARC_DATA_DIR and download cache, no network): `error: ...` naming the
    file and ARC_DATA_DIR, as SystemExit, not a DataError traceback."""
    m = request.getfixturevalue(script)
    message = missing_data_error(m.main)
    assert file in message
