"""GloVe by hand in NumPy: global co-occurrence counts, a weighted least-squares fit of their logs, AdaGrad.

word2vec learns from one (centre, context) window at a time; GloVe first counts, over the whole
corpus, how often every word j appears near every word i, X_ij, and then fits word vectors to those
counts: the dot product of a word vector w_i and a context vector w~_j, plus two biases, should equal
the log of the count, in weighted least squares over the nonzero entries (log 0 is undefined):

    w_i . w~_j + b_i + b~_j  ~  log X_ij
    J = sum_{ij: X_ij > 0} f(X_ij) (w_i . w~_j + b_i + b~_j - log X_ij)^2
    f(x) = (x / x_max)^alpha if x < x_max else 1          (x_max = 100, alpha = 3/4)

f is 0 at x = 0, grows for rare pairs (whose counts are noisy, so they weigh less), and is capped at 1
so that the very frequent pairs ("of the") do not dominate. Why logs: ratios of co-occurrence
probabilities P(k | ice) / P(k | steam) carry the meaning (large for k = solid, small for k = gas), and
a dot product of vector differences can only express a ratio once it is a difference of logs.
Counting (section 4.2 of the paper): a window of 10 words each side, a pair d words apart adds 1/d to
X_ij, so X is symmetric. Training: AdaGrad on minibatches of nonzero entries, shuffled every epoch; the
words come out as W + W~ (see `word_vectors`). The corpus is H. G. Wells's The Time Machine: small
enough to count into a dense matrix and train in seconds (glove_torch.py does PTB with sparse counts).

Reading: J. Pennington, R. Socher and C. D. Manning, "GloVe: Global Vectors for Word Representation"
(EMNLP 2014), https://nlp.stanford.edu/pubs/glove.pdf; d2l 15.5 "Word Embedding with Global
Vectors (GloVe)", https://d2l.ai/chapter_natural-language-processing-pretraining/glove.html, and
15.7 "Word Similarity and Analogy"; J. Duchi, E. Hazan and Y. Singer (2011), "Adaptive Subgradient
Methods" (AdaGrad).
Arc: NLP pretraining (word embeddings) -- GloVe from scratch, in NumPy, on a toy corpus.

Run:  python 05-rnns/glove_numpy.py              (50 epochs, dimension 50: seconds on a CPU)
      python 05-rnns/glove_numpy.py --probes time,night,three --embed-dim 100
      python 05-rnns/glove_numpy.py --smoke
Look first at `glove_loss_and_grads` (the gradients derived in its docstring, np.add.at for words
that appear several times in a batch), then at the nearest neighbours printed at the end and at
runs/glove_numpy/embeddings_pca.png.
"""

# %%
import argparse
import sys
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from tqdm import tqdm

from data import (
    DataError,
    Vocab,
    nonneg_int,
    positive_float,
    positive_int,
    preprocess_timemachine,
    save_metrics,
    timemachine,
    tokenize,
)

# Probe words for the toy corpus: each is frequent enough in The Time Machine to have a vector.
PROBES = ("time", "night", "three", "white")
# a : b :: c : ?   (the expected answer last; printed, counted, never asserted)
ANALOGIES = (("he", "his", "she", "her"), ("day", "night", "morning", "evening"), ("see", "saw", "go", "went"),
             ("man", "men", "thing", "things"), ("white", "black", "light", "dark"))
# the words of the PCA figure: a few groups that a good embedding should keep apart
PCA_WORDS = ("one", "two", "three", "four", "five", "six", "white", "black", "green", "red", "day", "night",
             "morning", "evening", "he", "she", "i", "we", "they", "saw", "came", "went", "felt")

# %% [markdown]
# ## The co-occurrence matrix: a pair d words apart adds 1/d


# %%
def cooccurrence(corpus, V, window):
    """X (V, V) float64 from one stream of token indices: X[i, j] += 1/d for every j that sits d <= window
    words left or right of an occurrence of i. Symmetric by construction.

    One vectorised update per distance d: corpus[:-d] and corpus[d:] are all the pairs d apart, the
    left word in the first array. np.add.at (not X[a, b] += w) so that a pair seen many times adds up.
    """
    corpus = np.asarray(corpus)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    X = np.zeros((V, V))
    for d in range(1, window + 1):
        left, right = corpus[:-d], corpus[d:]
        np.add.at(X, (left, right), 1.0 / d)  # j to the right of i
        np.add.at(X, (right, left), 1.0 / d)  # and i to the left of j: the same pair, seen from the other side
    return X


def nonzero_entries(X):
    """The nonzero X_ij as three flat arrays i, j (int64) and x (float64): all that GloVe trains on."""
    i, j = np.nonzero(X)
    return i, j, X[i, j]


# %% [markdown]
# ## The weighted least-squares loss, forward and backward


# %%
def weighting(x, x_max=100.0, alpha=0.75):
    """f(x) = (x / x_max)^alpha for x < x_max, else 1."""
    return np.where(x < x_max, (np.minimum(x, x_max) / x_max) ** alpha, 1.0)


def init_params(rng, V, dim):
    """W, W~ (V, dim) and b, b~ (V,), all uniform in (-0.5/dim, 0.5/dim), as the reference glove.c does."""
    return {name: (rng.random(shape) - 0.5) / dim for name, shape in
            [("W", (V, dim)), ("Wt", (V, dim)), ("b", (V,)), ("bt", (V,))]}


def glove_loss_and_grads(params, i, j, x, x_max=100.0, alpha=0.75):
    """The loss on a batch of B nonzero entries (i, j, x), each (B,), and its gradients (dense, as the params).

        e_k = w_{i_k} . w~_{j_k} + b_{i_k} + b~_{j_k} - log x_k              (B,) the error of entry k
        J   = (1/B) sum_k f(x_k) e_k^2                                         the batch's mean of the paper's J

    Backward: dJ/de_k = 2 f(x_k) e_k / B =: g_k, and each e_k touches four rows, so
        dJ/dw_i  = sum_{k: i_k = i} g_k w~_{j_k}      dJ/dw~_j = sum_{k: j_k = j} g_k w_{i_k}
        dJ/db_i  = sum_{k: i_k = i} g_k               dJ/db~_j = sum_{k: j_k = j} g_k
    The sums run over every entry of the batch that names that word: np.add.at scatters and adds
    (a plain dW[i] += ... would keep only the last of repeated indices).
    """
    W, Wt, b, bt = params["W"], params["Wt"], params["b"], params["bt"]
    w, wt = W[i], Wt[j]  # (B, dim), (B, dim)
    e = (w * wt).sum(axis=1) + b[i] + bt[j] - np.log(x)  # (B,)
    fx = weighting(x, x_max, alpha)  # (B,)
    B = len(x)
    loss = float((fx * e * e).sum() / B)
    g = 2.0 * fx * e / B  # dJ/de (B,)
    grads = {name: np.zeros_like(p) for name, p in params.items()}
    np.add.at(grads["W"], i, g[:, None] * wt)
    np.add.at(grads["Wt"], j, g[:, None] * w)
    np.add.at(grads["b"], i, g)
    np.add.at(grads["bt"], j, g)
    return loss, grads


def word_vectors(params):
    """The final vectors W + W~.

    X is symmetric, so W and W~ play the same role and differ only because they started from
    different random values (and, in a minibatch, saw the pairs in a different order): two noisy fits
    of one model. Adding them averages the noise out, as averaging several trained networks does;
    the paper (section 4.2) reports that the sum is usually slightly better than W alone.
    """
    return params["W"] + params["Wt"]


# %% [markdown]
# ## AdaGrad: each parameter's step shrinks with the gradients it has already had


# %%
# AdaGrad, as taught in 02-optimization/adagrad_numpy.py
def adagrad_step(params, grads, state, lr, eps=1e-10):
    """In place, for every parameter: G += g^2;  theta -= lr g / (sqrt(G) + eps)   (torch.optim.Adagrad's
    update, with G starting at 0).

    A word that is rare gets few, small gradients, so its G stays small and its steps stay large;
    a frequent word's steps shrink quickly. Entries whose gradient is 0 in a batch do not move.
    (The reference glove.c starts G at 1, so that the first step is lr g; starting at 0, as torch
    does, makes the first step of every parameter lr sign(g).)
    """
    for name, g in grads.items():
        G = state.setdefault(name, np.zeros_like(g))
        G += g * g
        params[name] -= lr * g / (np.sqrt(G) + eps)


# %% [markdown]
# ## Similarity and analogy (d2l 15.7), and a 2-D picture


# %%
def check_words(vocab, words):
    """Raise a ValueError naming every word that has no vector (not in the vocabulary)."""
    missing = [w for w in words if w not in vocab.token_to_idx or vocab.token_to_idx[w] == vocab.unk]
    if missing:
        raise ValueError(f"not in the vocabulary ({len(vocab)} words): {', '.join(map(repr, missing))}")


def unit_rows(E):
    """Every row divided by its length, so that a dot product of two rows is their cosine."""
    return E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)


def nearest(E, vocab, word, k=5):
    """The k words whose vectors have the largest cosine with `word`'s, itself (and <unk>) excluded:
    a list of (word, cosine), best first."""
    check_words(vocab, [word])
    U = unit_rows(E)
    cos = U @ U[vocab.token_to_idx[word]]  # (V,)
    cos[[vocab.unk, vocab.token_to_idx[word]]] = -np.inf
    top = np.argsort(-cos, kind="stable")[:k]
    return [(vocab.idx_to_token[t], float(cos[t])) for t in top if cos[t] > -np.inf]  # fewer if V is tiny


def analogy(E, vocab, a, b, c, k=1):
    """a : b :: c : ?  -- the words closest in cosine to v_b - v_a + v_c, a, b, c (and <unk>) excluded."""
    check_words(vocab, [a, b, c])
    U = unit_rows(E)
    ia, ib, ic = (vocab.token_to_idx[w] for w in (a, b, c))
    q = U[ib] - U[ia] + U[ic]
    cos = U @ (q / max(np.linalg.norm(q), 1e-12))
    cos[[vocab.unk, ia, ib, ic]] = -np.inf
    top = np.argsort(-cos, kind="stable")[:k]
    return [(vocab.idx_to_token[t], float(cos[t])) for t in top if cos[t] > -np.inf]  # fewer if V is tiny


def pca_2d(E):
    """The rows of E (n, dim) projected on their first two principal axes: centre, then the SVD
    E_c = U S V^T; the coordinates are E_c V[:, :2] = U[:, :2] S[:2]. Returns (n, 2) and the share of
    the variance each axis explains."""
    Ec = E - E.mean(axis=0)
    U, S, _ = np.linalg.svd(Ec, full_matrices=False)
    return U[:, :2] * S[:2], S[:2] ** 2 / (S**2).sum()


def plot_pca(E, vocab, words, path, title):
    """The chosen words (those in the vocabulary) as labelled points in the 2-D PCA plane."""
    words = [w for w in words if vocab.token_to_idx.get(w, 0) != vocab.unk]
    Z, share = pca_2d(E[[vocab.token_to_idx[w] for w in words]])
    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.subplots()
    ax.scatter(Z[:, 0], Z[:, 1], s=12)
    for (z0, z1), w in zip(Z, words):
        ax.annotate(w, (z0, z1), xytext=(3, 3), textcoords="offset points", fontsize=9)
    ax.margins(x=0.12, y=0.05)  # room for the labels of the outermost points
    ax.set(xlabel=f"PC 1 ({share[0]:.0%} of the variance)", ylabel=f"PC 2 ({share[1]:.0%})", title=title)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)


def plot_loss(initial, history, path, title):
    """The loss before training (epoch 0, over all entries) and the mean over each epoch's batches (log scale)."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot(np.arange(len(history) + 1), [initial, *history], "o-", ms=3)
    ax.set(xlabel="epoch (0: before training)", ylabel="J / number of nonzero X_ij", yscale="log", title=title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3, which="both")
    fig.savefig(path, dpi=120)


def report_similarity(E, vocab, probes, k=5):
    """Print and return the neighbours of every probe and the answers to ANALOGIES whose words all exist."""
    neighbours = {w: [[n, round(c, 4)] for n, c in nearest(E, vocab, w, k)] for w in probes}
    for w, ns in neighbours.items():
        print(f"{w}: " + ", ".join(f"{n} {c:.2f}" for n, c in ns))
    analogies = []
    for a, b, c, want in ANALOGIES:
        if all(vocab.token_to_idx.get(t, 0) != vocab.unk for t in (a, b, c, want)):
            got, cos = analogy(E, vocab, a, b, c)[0]
            analogies.append({"query": [a, b, c], "expected": want, "answer": got, "cosine": round(cos, 4)})
            print(f"{a} : {b} :: {c} : {got} ({cos:.2f}; expected {want}{', right' if got == want else ''})")
    return neighbours, analogies


# %% [markdown]
# ## Main: count once, then epochs over the shuffled nonzero entries


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="passes over the X_ij (default 50; 10 with --smoke)")
    p.add_argument("--embed-dim", type=positive_int, default=None, help="vector size (default 50; 32 with --smoke)")
    p.add_argument("--window", type=positive_int, default=10,
                   help="words counted on each side (default 10, the paper's)")
    p.add_argument("--min-freq", type=positive_int, default=5,
                   help="rarer words become <unk> and are dropped (default 5)")
    p.add_argument("--batch-size", type=positive_int, default=512, help="nonzero entries per step (default 512)")
    p.add_argument("--lr", type=positive_float, default=0.05, help="AdaGrad's initial learning rate (default 0.05)")
    p.add_argument("--x-max", type=positive_float, default=100.0, help="where the weight f reaches 1 (default 100)")
    p.add_argument("--x-alpha", type=positive_float, default=0.75, help="exponent of f (default 0.75)")
    p.add_argument("--probes", default=",".join(PROBES), help=f"comma-separated words (default {','.join(PROBES)})")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds the initial vectors and the shuffling (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with timemachine.txt (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/glove_numpy)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run: 10 epochs, dimension 32")
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = 10 if args.smoke else 50
    if args.embed_dim is None:
        args.embed_dim = 32 if args.smoke else 50
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)

    try:
        tokens = tokenize(preprocess_timemachine(timemachine(args.data_dir)), "word")
    except DataError as exc:
        sys.exit(f"error: {exc}")
    vocab = Vocab(tokens, min_freq=args.min_freq)
    probes = [w.strip() for w in args.probes.split(",") if w.strip()]
    try:
        check_words(vocab, probes)
    except ValueError as exc:
        p.error(f"--probes: {exc}")
    corpus = vocab.encode(tokens)
    corpus = corpus[corpus != vocab.unk]  # rare words dropped (as d2l does), not counted as one word
    V = len(vocab)
    i_all, j_all, x_all = nonzero_entries(cooccurrence(corpus, V, args.window))
    N = len(x_all)
    print(f"glove_numpy: The Time Machine, {len(corpus):,} words, vocabulary {V}, window {args.window}: "
          f"{N:,} nonzero X_ij of {V * V:,}; dimension {args.embed_dim}, AdaGrad lr {args.lr}")

    rng = np.random.default_rng(args.seed)
    params, state = init_params(rng, V, args.embed_dim), {}
    initial_loss = glove_loss_and_grads(params, i_all, j_all, x_all, args.x_max, args.x_alpha)[0]  # J / N
    print(f"initial loss {initial_loss:.5f}")
    history, secs = [], []
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        order = rng.permutation(N)  # a new order of the nonzero entries every epoch
        total = 0.0
        for s in tqdm(range(0, N, args.batch_size), desc=f"epoch {epoch}", leave=False,
                      disable=not sys.stdout.isatty()):
            k = order[s : s + args.batch_size]
            loss, grads = glove_loss_and_grads(params, i_all[k], j_all[k], x_all[k], args.x_max, args.x_alpha)
            adagrad_step(params, grads, state, args.lr)
            total += loss * len(k)
        history.append(total / N)  # the epoch's J / N (entries seen while learning)
        secs.append(time.perf_counter() - t0)
        print(f"epoch {epoch:3d}/{args.epochs}  loss {history[-1]:.5f}  ({secs[-1]:.2f} s)", flush=True)

    E = word_vectors(params)
    neighbours, analogies = report_similarity(E, vocab, probes)
    plot_loss(initial_loss, history, out_dir / "loss.png", f"glove_numpy: The Time Machine, dim {args.embed_dim}")
    plot_pca(E, vocab, PCA_WORDS, out_dir / "embeddings_pca.png",
             f"glove_numpy: W + W~ of chosen words, 2-D PCA (dim {args.embed_dim})")
    metrics = {"script": "glove_numpy", "vocab_size": V, "tokens": int(len(corpus)), "nonzeros": int(N),
               "initial_loss": initial_loss, "first_loss": history[0], "final_loss": history[-1],
               "sec_per_epoch": float(np.mean(secs)), "neighbours": neighbours, "analogies": analogies,
               "analogies_right": sum(a["answer"] == a["expected"] for a in analogies),
               "config": vars(args), "history": {"loss": history}}
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"{np.mean(secs):.2f} s per epoch; analogies right {metrics['analogies_right']}/{len(analogies)}; "
          f"wrote {out_dir}/metrics.json, loss.png, embeddings_pca.png")
    return metrics


if __name__ == "__main__":
    main()
