"""word2vec_numpy.py: the hand-written gradients of all four objectives against torch autograd (float64), the
Huffman tree (prefix-free, optimal), hierarchical softmax's normalisation, an SGD step, and smoke runs."""

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradcheck import rel_error

from data import draw_negatives, noise_distribution, skipgram_batches

SCRIPT = "05-rnns/word2vec_numpy.py"
COMBOS = [("skipgram", "neg"), ("cbow", "neg"), ("skipgram", "hs"), ("cbow", "hs")]


@pytest.fixture(scope="module")
def w2v(load_script):
    return load_script(SCRIPT)


def toy_data(seed=0, n_words=7, B=6, C=4):
    """Centres (B,) and contexts (B, C) over a tiny vocabulary: rows with 1 .. C contexts (the rest -1),
    so padding occurs and every word repeats within the batch; Zipf-like counts for the noise and the tree."""
    rng = np.random.default_rng(seed)
    center = rng.integers(0, n_words, B)
    center[1] = center[0]  # a repeated centre
    n = np.array([1, C, 2, 3, C, 1])[:B]
    ctx = np.where(np.arange(C) < n[:, None], rng.integers(0, n_words, (B, C)), -1)
    ctx[0, 0] = ctx[1, 0] = center[2]  # the same context in two rows
    counts = np.array([40, 25, 13, 9, 6, 3, 1])[:n_words]
    return center, ctx, counts, rng


def reference_loss(model, objective, Vt, Ut, center, ctx, out_words, tree):
    """The textbook loss, pair by pair in torch, from the raw words (not from the script's Batch arrays).

    out_words[b]: (positives, noise words) of row b for negative sampling. Mean over rows of:
      skip-gram: sum over contexts o of -log P(o | c);  CBOW: -log P(c | mean of the contexts),
    with -log P(w | h) = -log sigma(u_w.h) - sum_k log sigma(-u_k.h) (neg) or -sum_j log sigma(s_j u_{n_j}.h) (hs).
    """
    losses = []
    for b in range(len(center)):
        real = [int(o) for o in ctx[b] if o >= 0]
        h = Vt[int(center[b])] if model == "skipgram" else torch.stack([Vt[o] for o in real]).mean(0)
        row = torch.zeros((), dtype=torch.float64)
        if objective == "neg":
            pos, neg = out_words[b]
            row = row - sum(F.logsigmoid(Ut[w] @ h) for w in pos) - sum(F.logsigmoid(-(Ut[k] @ h)) for k in neg)
        else:
            for w in real if model == "skipgram" else [int(center[b])]:
                for j in range(tree.depth[w]):
                    s = 1.0 if tree.code[w, j] == 0 else -1.0  # left +1, right -1
                    row = row - F.logsigmoid(s * (Ut[tree.path[w, j]] @ h))
        losses.append(row)
    return torch.stack(losses).mean()


def batch_words(batch):
    """The (positive words, noise words) of each row of a negative-sampling Batch, read off its sign and mask."""
    return [
        ([int(o) for o, s, m in zip(*r) if m and s > 0], [int(o) for o, s, m in zip(*r) if m and s < 0])
        for r in zip(batch.out_idx, batch.sign, batch.mask)
    ]


@pytest.mark.parametrize("model,objective", COMBOS)
def test_gradients_match_autograd(w2v, model, objective):
    """dL/dV and dL/dU (every row, summed over repeated indices by np.add.at) against autograd, float64."""
    center, ctx, counts, rng = toy_data()
    n_words, d = len(counts), 5
    probs, tree = noise_distribution(counts), w2v.huffman_tree(counts)
    V = rng.standard_normal((n_words, d))
    U = rng.standard_normal((n_words if objective == "neg" else n_words - 1, d))
    if (model, objective) == ("skipgram", "neg"):  # the script's own data path
        c, ctx_neg, mask, label = next(skipgram_batches(center, ctx, probs, len(center), 2, rng, shuffle=False))
        batch = w2v.Batch(c[:, None], np.ones((len(c), 1)), ctx_neg, (2 * label - 1) * mask, mask)
        assert (mask == 0).any()  # padding is there
    else:
        batch = w2v.make_batch(model, objective, center, ctx, probs, tree, 2, rng)
    loss, grads = w2v.loss_and_grads(V, U, batch)
    dense = {"V": np.zeros_like(V), "U": np.zeros_like(U)}
    for name, (idx, g) in grads.items():
        np.add.at(dense[name], idx, g)

    Vt, Ut = (torch.tensor(a, requires_grad=True) for a in (V, U))
    ref = reference_loss(
        model, objective, Vt, Ut, center, ctx, batch_words(batch) if objective == "neg" else None, tree
    )
    ref.backward()
    assert abs(loss - ref.item()) <= 1e-12 * abs(ref.item())
    assert rel_error(dense["V"], Vt.grad) <= 1e-7
    assert rel_error(dense["U"], Ut.grad) <= 1e-7
    assert np.abs(dense["U"]).max() > 0 and np.abs(dense["V"]).max() > 0


def test_negative_batches_hold_the_right_words(w2v):
    """CBOW's negative-sampling rows: the centre (+1), then K noise words (-1), none equal to the centre."""
    center, ctx, counts, rng = toy_data(1)
    batch = w2v.make_batch("cbow", "neg", center, ctx, noise_distribution(counts), None, 3, rng)
    assert batch.out_idx.shape == (len(center), 4) and (batch.mask == 1).all()
    assert (batch.out_idx[:, 0] == center).all() and (batch.sign[:, 0] == 1).all() and (batch.sign[:, 1:] == -1).all()
    assert (batch.out_idx[:, 1:] != center[:, None]).all()
    assert np.allclose(batch.in_w.sum(axis=1), 1) and ((batch.in_w > 0) == (ctx >= 0)).all()  # the mean of real ones


def test_add_at_sums_repeated_rows_where_fancy_assignment_loses_them(w2v):
    V = np.zeros((3, 2))
    idx, g = np.array([[1], [1], [2]]), np.ones((3, 1, 2))
    w2v.sgd_step({"V": V}, {"V": (idx, g)}, lr=1.0)
    assert (V[1] == -2).all() and (V[2] == -1).all() and (V[0] == 0).all()
    W = np.zeros((3, 2))
    W[idx] -= g  # buffered: the second write to row 1 overwrites the first
    assert (W[1] == -1).all()


def brute_force_min_expected_length(counts):
    """min sum_w c_w l_w over integer lengths l_w >= 1 with sum_w 2^-l_w <= 1 (Kraft): by Kraft-McMillan
    exactly the lengths of some prefix code, so this is the optimum over all prefix codes."""
    n = len(counts)
    L = np.array(list(itertools.product(range(1, n), repeat=n)))  # (n-1)^n length vectors
    ok = (2.0**-L).sum(axis=1) <= 1 + 1e-12
    return (L[ok] @ np.asarray(counts)).min()


def check_tree(tree, counts):
    n = len(counts)
    codes = ["".join(map(str, tree.code[w, : tree.depth[w]])) for w in range(n)]
    assert all(len(c) >= 1 for c in codes)  # every word has a code
    for a, b in itertools.permutations(codes, 2):
        assert not b.startswith(a)  # prefix-free (and so all distinct)
    # paths: start at the root (the last inner node, row n - 2), use rows 0 .. n-2, same length as the code
    assert (tree.path[:, 0] == n - 2).all() and tree.path.max() <= n - 2
    assert (tree.depth == [len(c) for c in codes]).all()
    # the same code prefix means the same node: the tree is consistent
    node_of = {}
    for w in range(n):
        for j in range(tree.depth[w]):
            assert node_of.setdefault(codes[w][:j], tree.path[w, j]) == tree.path[w, j]
    assert sorted(node_of.values()) == list(range(n - 1))  # every inner node used, once per prefix
    return codes


@pytest.mark.parametrize(
    "counts", [[5, 1, 1, 2, 3, 8], [1, 1, 1, 1], [10, 1], [3, 3, 2, 2, 1, 7, 1], [45, 13, 12, 16, 9, 5]]
)
def test_huffman_codes_are_prefix_free_and_optimal(w2v, counts):
    tree = w2v.huffman_tree(np.array(counts))
    check_tree(tree, counts)
    assert (np.array(counts) * tree.depth).sum() == brute_force_min_expected_length(counts)


def test_huffman_textbook_example(w2v):
    """CLRS 16.3: frequencies a..f = 45, 13, 12, 16, 9, 5 give code lengths 1, 3, 3, 3, 4, 4 (cost 224)."""
    tree = w2v.huffman_tree(np.array([45, 13, 12, 16, 9, 5]))
    assert tree.depth.tolist() == [1, 3, 3, 3, 4, 4]


def test_huffman_on_zipf_counts_gives_frequent_words_short_codes(w2v):
    counts = np.array(1000 / np.arange(1, 301), dtype=np.int64) + 1  # Zipf, 300 words
    tree = w2v.huffman_tree(counts)
    check_tree(tree, counts)
    assert (np.diff(tree.depth) >= 0).all()  # sorted by frequency -> depths never decrease
    f = counts / counts.sum()
    entropy = -(f * np.log2(f)).sum()
    assert entropy <= (f * tree.depth).sum() < entropy + 1 < np.log2(300)  # Shannon's bounds, below a balanced tree


def test_huffman_rejects_bad_counts(w2v):
    for bad in ([3], [[1, 2], [3, 4]], [1, -1, 2]):
        with pytest.raises(ValueError, match="huffman_tree"):
            w2v.huffman_tree(np.array(bad))


@pytest.mark.parametrize("model", ["skipgram", "cbow"])
def test_hierarchical_softmax_probabilities_sum_to_one(w2v, model):
    """P(w | h) = prod_j sigma(s_j u_{n_j}.h) over all words sums to 1 for any input -- a wrong sign or a
    wrong node on any path breaks it. Scored through the script's own forward, words as positive targets."""
    rng = np.random.default_rng(3)
    counts = rng.integers(1, 50, 40)
    tree = w2v.huffman_tree(counts)
    V, U = 2 * rng.standard_normal((40, 8)), 2 * rng.standard_normal((39, 8))
    words = np.arange(40)
    for _ in range(3):
        ctx = np.where(np.arange(4) < rng.integers(1, 5), rng.integers(0, 40, 4), -1)
        center = np.full(40, rng.integers(40))
        in_idx, in_w = w2v.inputs(model, center, np.tile(ctx, (40, 1)))
        out, sign, mask = w2v.hs_targets(words, tree)
        row_loss, _ = w2v.forward(V, U, w2v.Batch(in_idx, in_w, out, sign, mask))
        P = np.exp(-row_loss)
        assert abs(P.sum() - 1) < 1e-12 and P.min() > 0 and P.std() > 1e-3


@pytest.mark.parametrize("model,objective", COMBOS)
def test_one_sgd_step_lowers_the_loss(w2v, model, objective):
    center, ctx, counts, rng = toy_data(2)
    probs, tree = noise_distribution(counts), w2v.huffman_tree(counts)
    V = 0.5 * rng.standard_normal((7, 4))
    U = 0.5 * rng.standard_normal((7 if objective == "neg" else 6, 4))
    batch = w2v.make_batch(model, objective, center, ctx, probs, tree, 2, rng)
    loss, grads = w2v.loss_and_grads(V, U, batch)
    params = {"V": V.copy(), "U": U.copy()}
    w2v.sgd_step(params, grads, lr=0.05)
    assert w2v.loss_and_grads(params["V"], params["U"], batch)[0] < loss - 1e-4


def test_negatives_in_batches_are_fresh(w2v):
    """Two epochs of skip-gram batches draw different noise words (from the same generator)."""
    center, ctx, counts, rng = toy_data(4)
    probs = noise_distribution(counts)
    a = [b.out_idx for b in w2v.batches("skipgram", "neg", center, ctx, probs, None, 6, 3, np.random.default_rng(0))]
    b = [b.out_idx for b in w2v.batches("skipgram", "neg", center, ctx, probs, None, 6, 3, np.random.default_rng(1))]
    assert any(x.shape != y.shape or (x != y).any() for x, y in zip(a, b))
    assert draw_negatives(ctx, probs, 3, rng).shape == (6, 12)


def test_similarity_and_analogy(w2v):
    """Hand-made vectors: neighbours by cosine, the analogy by b - a + c, unknown words named in the error."""

    class Vocab:
        idx_to_token = ["<unk>", "king", "queen", "man", "woman", "apple"]
        token_to_idx = {t: i for i, t in enumerate(idx_to_token)}

        def __len__(self):
            return 6

    E = np.array([[9, 9, 9], [1, 1, 0], [1, -1, 0], [0, 1, 0.1], [0, -1, 0.1], [0, 0, 1.0]])
    nb = w2v.neighbours(E, Vocab(), "king", k=2)
    assert [w for w, _ in nb] == ["man", "queen"] and nb[1][1] == pytest.approx(0.0)
    assert w2v.analogy(E, Vocab(), "man", "woman", "king")[0][0] == "queen"
    with pytest.raises(ValueError, match="'prince' is not in the vocabulary"):
        w2v.neighbours(E, Vocab(), "prince")
    xy, var = w2v.pca_2d(E[1:])
    assert xy.shape == (5, 2) and np.allclose(xy.mean(axis=0), 0) and var[0] >= var[1]


@pytest.mark.parametrize("model,objective", COMBOS)
def test_smoke(w2v, tmp_path, model, objective):
    m = w2v.main(["--smoke", "--model", model, "--objective", objective, "--seed", "0", "--out-dir", str(tmp_path)])
    assert m["final_loss"] < m["first_loss"]
    # true (centre, context) pairs now score above shuffled ones: at start a coin toss, after 5 small epochs
    # clearly learned on the training pairs (3,000 sentences are too few for much on the held-out ones)
    assert abs(m["train_acc_init"] - 0.5) < 0.1 and m["train_acc"] > m["train_acc_init"] + 0.15
    assert set(m["neighbours"]) and all(len(v) == 5 for v in m["neighbours"].values())
    assert json.loads((tmp_path / "metrics.json").read_text())["final_loss"] == m["final_loss"]
    for png in ("loss.png", "embeddings_pca.png"):
        assert (tmp_path / png).stat().st_size > 10_000


def test_unknown_probe_is_a_clear_error(w2v, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        w2v.main(["--smoke", "--probes", "qwertyuiop", "--out-dir", str(tmp_path)])
    assert exc.value.code == 2 and "'qwertyuiop' is not in the vocabulary" in capsys.readouterr().err


def test_same_seed_same_numbers(w2v, tmp_path):
    args = ["--smoke", "--model", "cbow", "--epochs", "1", "--seed", "3"]
    a = w2v.main([*args, "--out-dir", str(tmp_path / "a")])
    b = w2v.main([*args, "--out-dir", str(tmp_path / "b")])
    assert a["epoch_loss"] == b["epoch_loss"] and a["neighbours"] == b["neighbours"]


def test_too_few_sentences_is_a_clear_error(w2v, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        w2v.main(["--smoke", "--max-sentences", "20", "--out-dir", str(tmp_path)])
    assert exc.value.code == 2 and "too few to train on" in capsys.readouterr().err


def test_bad_flags_exit_2(w2v, tmp_path, capsys):
    """Bad numbers fail in argparse with exit 2, naming the flag, before any data is read."""
    for argv, flag in [
        (["--embed-dim", "0"], "--embed-dim"),
        (["--lr", "nan"], "--lr"),
        (["--lr", "0"], "--lr"),
        (["--num-noise", "-1"], "--num-noise"),
        (["--max-sentences", "1"], "--max-sentences"),
    ]:
        with pytest.raises(SystemExit) as exc:
            w2v.main([*argv, "--smoke", "--out-dir", str(tmp_path)])
        assert exc.value.code == 2, argv
        assert flag in capsys.readouterr().err


def test_missing_data_is_a_one_line_error(w2v, missing_data_error):
    """No PTB anywhere (an empty ARC_DATA_DIR and download cache, no network): `error: ...` naming the file
    and ARC_DATA_DIR, raised as SystemExit, not a DataError traceback."""
    message = missing_data_error(w2v.main)
    assert "ptb" in message
