"""GloVe in PyTorch on the Penn Treebank: sparse co-occurrence counts, batched weighted least squares, AdaGrad.

The same model as glove_numpy.py, on a real corpus (887,521 words, 42,068 sentences). GloVe fits
word vectors w_i, context vectors w~_j and two biases to the log of the co-occurrence counts X_ij:

    J = sum_{ij: X_ij > 0} f(X_ij) (w_i . w~_j + b_i + b~_j - log X_ij)^2
    f(x) = (x / x_max)^alpha if x < x_max else 1          (x_max = 100, alpha = 3/4)

With 6,719 words X has 45 million cells, few of them nonzero: it is kept sparse, as three flat arrays
(i, j, x) of its nonzero entries (COO format), counted with NumPy without a Python loop over the word
pairs: for every distance d = 1 .. window, the tokens at positions t and t + d form a pair worth 1/d
if they lie in the same sentence (`cooccurrence`). Training reads those entries in shuffled
minibatches; the loss is written out, autograd differentiates it (tests/test_glove.py checks
glove_numpy.py's hand-written gradients of the same loss). Optimiser: torch.optim.Adagrad with the
paper's learning rate 0.05 (--optimizer adam for comparison).
As d2l's PTB word2vec: words seen fewer than 10 times become <unk> (PTB's own <unk> included), and
<unk> tokens are dropped from the sentences before counting, so they neither get a vector nor
separate the words around them. Sentences are never crossed by a window. The vectors are W + W~
(the paper, section 4.2: two fits of one symmetric model, whose sum averages their noise).

Reading: J. Pennington, R. Socher and C. D. Manning, "GloVe: Global Vectors for Word Representation"
(EMNLP 2014), https://nlp.stanford.edu/pubs/glove.pdf; d2l 15.5,
https://d2l.ai/chapter_natural-language-processing-pretraining/glove.html, and 15.7 "Word Similarity
and Analogy".
Arc: NLP pretraining (word embeddings) -- GloVe in PyTorch on PTB (sparse co-occurrences, batched).

Run:  python 05-rnns/glove_torch.py               (PTB, 100 dimensions, 30 epochs: minutes on a CPU)
      python 05-rnns/glove_torch.py --probes chip,stock,june --embed-dim 50 --device cuda
      python 05-rnns/glove_torch.py --smoke       (seconds: the first 3,000 sentences)
Look first at `cooccurrence` (the whole count in a few array operations), then at `GloVe.loss`, then at
the neighbours printed at the end and runs/glove_torch/embeddings_pca.png.
"""

# %%
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm import tqdm

from data import DataError, Vocab, nonneg_int, positive_float, positive_int, ptb, save_metrics, tokenize

PROBES = ("chip", "baby", "beautiful", "intel")
# a : b :: c : ?   (the expected answer last; printed and counted, never asserted)
ANALOGIES = (("japan", "japanese", "germany", "german"), ("buy", "bought", "sell", "sold"),
             ("company", "companies", "bank", "banks"), ("big", "bigger", "small", "smaller"),
             ("rise", "rose", "fall", "fell"), ("he", "his", "she", "her"), ("good", "better", "bad", "worse"))
PCA_WORDS = ("january", "february", "march", "april", "monday", "tuesday", "friday", "two", "three", "four",
             "five", "japan", "germany", "france", "britain", "ibm", "intel", "apple", "bank", "banks",
             "stock", "bond", "buy", "sell", "rise", "fall")

# %% [markdown]
# ## Sparse co-occurrence counts, one array operation per distance


# %%
def cooccurrence(sentences, V, window):
    """COO arrays (i, j, x) of the nonzero X_ij: x = sum over the pairs (i, j) at distance d <= window
    inside one sentence of 1/d. Symmetric: (i, j) and (j, i) are both there with the same x.

    sentences: a list of int arrays of token indices. All sentences are laid end to end in one array
    `c`, with `sid` the sentence of each position; for each d, c[:-d] and c[d:] are all pairs d apart,
    and `sid[:-d] == sid[d:]` keeps those inside one sentence. A pair (i, j) is encoded as one integer
    i * V + j, and np.unique + np.bincount add up the weights of equal keys.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    c = np.concatenate([np.asarray(s, dtype=np.int64) for s in sentences]) if sentences else np.zeros(0, np.int64)
    sid = np.repeat(np.arange(len(sentences)), [len(s) for s in sentences])  # (n,) sentence of each token
    keys, weights = [], []
    for d in range(1, window + 1):
        same = sid[:-d] == sid[d:]  # the pairs d apart that stay inside one sentence
        left, right = c[:-d][same], c[d:][same]
        keys += [left * V + right, right * V + left]  # both directions: X is symmetric
        weights += [np.full(2 * len(left), 1.0 / d)]
    keys, weights = np.concatenate(keys), np.concatenate(weights)
    uniq, inverse = np.unique(keys, return_inverse=True)
    x = np.bincount(inverse, weights=weights, minlength=len(uniq))
    return uniq // V, uniq % V, x


# %% [markdown]
# ## The model and its loss, written out


# %%
class GloVe(nn.Module):
    """W, W~ as nn.Embedding (V, dim), b, b~ as nn.Parameter (V,); uniform(-0.5/dim, 0.5/dim) as glove.c."""

    def __init__(self, V, dim):
        super().__init__()
        self.W, self.Wt = nn.Embedding(V, dim), nn.Embedding(V, dim)  # word and context vectors
        self.b, self.bt = nn.Parameter(torch.empty(V)), nn.Parameter(torch.empty(V))
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-0.5 / dim, 0.5 / dim)

    def loss(self, i, j, x, x_max=100.0, alpha=0.75):
        """Mean over the batch of f(x) (w_i . w~_j + b_i + b~_j - log x)^2.   i, j (B,) int64, x (B,) float."""
        e = (self.W(i) * self.Wt(j)).sum(dim=1) + self.b[i] + self.bt[j] - torch.log(x)  # (B,)
        fx = torch.where(x < x_max, (x / x_max) ** alpha, torch.ones_like(x))  # f(x), capped at 1
        return (fx * e * e).mean()

    def word_vectors(self):
        """The final vectors W + W~ (V, dim), as a NumPy array."""
        return (self.W.weight + self.Wt.weight).detach().cpu().numpy()


@torch.no_grad()
def full_loss(model, i, j, x, x_max=100.0, alpha=0.75, chunk=65536):
    """J / N: the mean of the weighted squared error over all N nonzero entries, a chunk at a time."""
    total = sum(model.loss(i[s : s + chunk], j[s : s + chunk], x[s : s + chunk], x_max, alpha).item()
                * len(x[s : s + chunk]) for s in range(0, len(x), chunk))
    return total / len(x)


# %% [markdown]
# ## Similarity and analogy (d2l 15.7), and a 2-D picture


# %%
# device picker, as taught in 01-foundations/mlp_torch.py
def pick_device(name):
    """'auto' picks cuda, then mps, then cpu; asking for a device this machine lacks is an error."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(d for d, ok in available.items() if ok)
    if not available[name]:
        raise ValueError(f"--device {name}: not available on this machine")
    return torch.device(name)


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
    """The rows of E (n, dim) on their first two principal axes: centre, SVD E_c = U S V^T, coordinates
    E_c V[:, :2] = U[:, :2] S[:2]. Returns (n, 2) and the share of the variance of each axis."""
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
                   help="passes over the nonzero X_ij (default 30; 3 with --smoke)")
    p.add_argument("--embed-dim", type=positive_int, default=None, help="vector size (default 100; 32 with --smoke)")
    p.add_argument("--window", type=positive_int, default=10,
                   help="words counted on each side (default 10, the paper's)")
    p.add_argument("--min-freq", type=positive_int, default=10,
                   help="rarer words become <unk> and are dropped (default 10)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="nonzero entries per step (default 4096; 1024 with --smoke)")
    p.add_argument("--optimizer", default="adagrad", choices=["adagrad", "adam"], help="default adagrad (the paper's)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate (default 0.05 for AdaGrad, 1e-3 for Adam)")
    p.add_argument("--x-max", type=positive_float, default=100.0, help="where the weight f reaches 1 (default 100)")
    p.add_argument("--x-alpha", type=positive_float, default=0.75, help="exponent of f (default 0.75)")
    p.add_argument("--probes", default=",".join(PROBES), help=f"comma-separated words (default {','.join(PROBES)})")
    p.add_argument("--max-sentences", type=positive_int, default=None,
                   help="count the first N training sentences (default all 42,068; 3,000 with --smoke)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds the initial vectors and the shuffling (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with ptb.train.txt or ptb.zip (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/glove_torch)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on the first 3,000 sentences")
    args = p.parse_args(argv)
    try:
        dev = pick_device(args.device)  # before the data: a device this machine lacks is an error at once
    except ValueError as exc:
        p.error(str(exc))
    if args.epochs is None:
        args.epochs = 3 if args.smoke else 30
    if args.embed_dim is None:
        args.embed_dim = 32 if args.smoke else 100
    if args.batch_size is None:
        args.batch_size = 1024 if args.smoke else 4096
    if args.max_sentences is None and args.smoke:
        args.max_sentences = 3000
    if args.lr is None:
        args.lr = 0.05 if args.optimizer == "adagrad" else 1e-3
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    # The vocabulary always comes from the whole training split, so a word has the same index in a
    # smoke run; --max-sentences only limits what is counted.
    try:
        lines = [tokenize(line, "word") for line in ptb("train", args.data_dir).splitlines()]
    except DataError as exc:
        sys.exit(f"error: {exc}")
    vocab = Vocab([t for line in lines for t in line], min_freq=args.min_freq)
    probes = [w.strip() for w in args.probes.split(",") if w.strip()]
    try:
        check_words(vocab, probes)
    except ValueError as exc:
        p.error(f"--probes: {exc}")
    if args.max_sentences is not None:
        lines = lines[: args.max_sentences]
    sentences = [s[s != vocab.unk] for s in map(vocab.encode, lines)]  # <unk> dropped
    V = len(vocab)
    t0 = time.perf_counter()
    i_np, j_np, x_np = cooccurrence(sentences, V, args.window)
    count_secs = time.perf_counter() - t0
    N = len(x_np)
    print(f"glove_torch: PTB, {len(sentences):,} sentences, {sum(map(len, sentences)):,} words, vocabulary {V:,}, "
          f"window {args.window}: {N:,} nonzero X_ij ({N / V**2:.1%}), counted in {count_secs:.1f} s; "
          f"dimension {args.embed_dim}, {args.optimizer} lr {args.lr}, device {dev}")
    i_all, j_all = torch.from_numpy(i_np).to(dev), torch.from_numpy(j_np).to(dev)
    x_all = torch.from_numpy(x_np).float().to(dev)

    model = GloVe(V, args.embed_dim).to(dev)
    opt = (torch.optim.Adagrad(model.parameters(), lr=args.lr) if args.optimizer == "adagrad"
           else torch.optim.Adam(model.parameters(), lr=args.lr))
    initial_loss = full_loss(model, i_all, j_all, x_all, args.x_max, args.x_alpha)
    print(f"initial loss {initial_loss:.5f}")
    history, secs = [], []
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        order = torch.from_numpy(rng.permutation(N)).to(dev)  # a new order of the nonzero entries every epoch
        total = 0.0
        for s in tqdm(range(0, N, args.batch_size), desc=f"epoch {epoch}", leave=False,
                      disable=not sys.stdout.isatty()):
            k = order[s : s + args.batch_size]
            loss = model.loss(i_all[k], j_all[k], x_all[k], args.x_max, args.x_alpha)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(k)
        history.append(total / N)
        secs.append(time.perf_counter() - t0)
        print(f"epoch {epoch:3d}/{args.epochs}  loss {history[-1]:.5f}  ({secs[-1]:.1f} s)", flush=True)

    E = model.word_vectors()
    neighbours, analogies = report_similarity(E, vocab, probes)
    plot_loss(initial_loss, history, out_dir / "loss.png", f"glove_torch: PTB, dim {args.embed_dim}, {args.optimizer}")
    plot_pca(E, vocab, PCA_WORDS, out_dir / "embeddings_pca.png",
             f"glove_torch: W + W~ of chosen PTB words, 2-D PCA (dim {args.embed_dim})")
    metrics = {"script": "glove_torch", "vocab_size": V, "sentences": len(sentences), "nonzeros": int(N),
               "count_seconds": count_secs, "initial_loss": initial_loss, "first_loss": history[0],
               "final_loss": history[-1], "sec_per_epoch": float(np.mean(secs)), "neighbours": neighbours,
               "analogies": analogies,
               "analogies_right": sum(a["answer"] == a["expected"] for a in analogies),
               "device": str(dev), "config": vars(args), "history": {"loss": history, "sec": secs}}
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"{np.mean(secs):.1f} s per epoch; analogies right {metrics['analogies_right']}/{len(analogies)}; "
          f"wrote {out_dir}/metrics.json, loss.png, embeddings_pca.png")
    return metrics


if __name__ == "__main__":
    main()
