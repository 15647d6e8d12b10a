"""The first neural network in JAX: the same Fashion-MNIST MLP as pure functions, jax.grad and jax.jit.

The model is a function of a parameter pytree (a dict of arrays), the loss is a function of the
parameters, `jax.grad` derives the backward pass that mlp_numpy.py writes by hand, and `jax.jit`
compiles the whole training step (forward, backward, SGD update) into one XLA program. Randomness
is explicit: a PRNG key is split, never mutated, so every random draw names where it came from.

    h_0 = x,  z_l = h_{l-1} W_l + b_l,  h_l = max(z_l, 0) for l < L,  logits = z_L
    L = -(1/B) sum_i [z_{L, i, y_i} - logsumexp_k z_{L, i, k}]     (softmax cross-entropy)
    theta <- theta - lr * dL/dtheta                                 (minibatch SGD)

Reading: S. J. D. Prince, "Understanding Deep Learning" (2023), chapters 3-5,
https://udlbook.github.io/udlbook/; the JAX tutorials "Automatic differentiation" and
"Pseudorandom numbers", https://docs.jax.dev/. He initialisation: https://arxiv.org/abs/1502.01852.
Arc: Recap to neural networks -- the same network in JAX.

Run:  python 01-foundations/mlp_jax.py              (5-fold CV, then train on all 60k, test)
      python 01-foundations/mlp_jax.py --no-cv      (skip cross-validation)
      python 01-foundations/mlp_jax.py --smoke      (seconds: 2k images, small net, 1 epoch)
Look first at `train_step`: forward, backward and update in one jitted pure function.
"""

# %%
import argparse
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tqdm import tqdm

from data import (
    FASHION_MNIST_CLASSES,
    DataError,
    fashion_mnist,
    kfold_splits,
    minibatches,
    nonneg_int,
    positive_float,
    positive_int,
    save_metrics,
)

# %% [markdown]
# ## The network as pure functions of a parameter pytree


# %%
def init_params(key, sizes, dtype=jnp.float32):
    """He initialisation, W_l ~ N(0, 2 / D_{l-1}), b_l = 0, with one fresh key per layer.

    Returns {"W1": (784, D_1), "b1": (D_1,), ...}: the same layout as mlp_numpy.py.
    """
    params = {}
    keys = jax.random.split(key, len(sizes) - 1)
    for l, (k, d_in, d_out) in enumerate(zip(keys, sizes[:-1], sizes[1:]), start=1):
        params[f"W{l}"] = jax.random.normal(k, (d_in, d_out), dtype) * jnp.sqrt(2.0 / d_in).astype(dtype)
        params[f"b{l}"] = jnp.zeros(d_out, dtype)
    return params


def forward(params, x):
    """logits (B, 10) for x (B, 784): linear layers with ReLU between them, none on the logits."""
    L = len(params) // 2
    h = x
    for l in range(1, L + 1):
        h = h @ params[f"W{l}"] + params[f"b{l}"]  # (B, D_l)
        if l < L:
            h = jnp.maximum(h, 0)
    return h


def cross_entropy(logits, y):
    """Mean softmax cross-entropy: -(1/B) sum_i log softmax(logits_i)[y_i].   logits (B, K), y (B,)."""
    log_p = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)  # (B, K), stable log-softmax
    return -jnp.take_along_axis(log_p, y[:, None], axis=1).mean()


def loss_fn(params, x, y):
    """The loss as a function of the parameters (what jax.grad differentiates), with the logits as aux."""
    logits = forward(params, x)
    return cross_entropy(logits, y), logits


@partial(jax.jit, donate_argnums=0)
def train_step(params, X, y, idx, lr):
    """One SGD step on the minibatch X[idx], y[idx]; returns new parameters, the loss, #correct.

    The whole training set lives on the device: only the B indices travel per step, and the
    gather, forward, backward and update compile into one XLA program. donate_argnums lets XLA
    write the new parameters into the old ones' memory (the old ones are not used again).
    """
    x, t = X[idx], y[idx]
    # jax.grad of loss_fn is the whole backward pass that mlp_numpy.py writes by hand.
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, t)
    params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    return params, loss, (logits.argmax(axis=1) == t).sum()


@jax.jit
def evaluate_logits(params, X):
    return forward(params, X)


# %% [markdown]
# ## Data


# %%
def load_data(data_dir=None, smoke=False):
    """Fashion-MNIST as float32 (N, 784) pixels standardised with the training split's mean and std."""
    Xtr, ytr = fashion_mnist("train", data_dir)
    Xte, yte = fashion_mnist("test", data_dir)
    if smoke:  # a small real subset: the first 2,000 training and 1,000 test images
        Xtr, ytr, Xte, yte = Xtr[:2000], ytr[:2000], Xte[:1000], yte[:1000]
    Xtr = Xtr.reshape(len(Xtr), -1).astype(np.float32) / 255
    Xte = Xte.reshape(len(Xte), -1).astype(np.float32) / 255
    mean, std = Xtr.mean(), Xtr.std()
    return (Xtr - mean) / std, ytr, (Xte - mean) / std, yte


# %% [markdown]
# ## Training: one epoch of minibatch SGD, evaluation, and the loop over epochs


# %%
def train_epoch(params, X, y, batch_size, lr, rng, desc="train"):
    """One pass over the device arrays (X, y) in shuffled minibatches; returns params, mean loss, accuracy.

    Losses and counts stay on the device until the epoch ends: reading one back per step would
    make the host wait for every step to finish instead of queueing the next one.
    """
    losses, corrects, sizes = [], [], []
    n_batches = -(-len(X) // batch_size)
    for idx in tqdm(minibatches(len(X), batch_size, rng), total=n_batches, desc=desc, leave=False,
                    disable=not sys.stdout.isatty()):
        params, loss, correct = train_step(params, X, y, idx, lr)
        losses.append(loss)
        corrects.append(correct)
        sizes.append(len(idx))
    losses, corrects = np.asarray(jnp.stack(losses)), np.asarray(jnp.stack(corrects))  # one transfer
    return params, float(losses @ np.array(sizes)) / len(X), int(corrects.sum()) / len(X)


def evaluate(params, X, y):
    """Mean loss, accuracy and predicted classes on the device arrays (X, y)."""
    logits = evaluate_logits(params, X)
    pred = np.asarray(logits.argmax(axis=1))
    return float(cross_entropy(logits, y)), float((pred == np.asarray(y)).mean()), pred


def fit(params, X, y, Xval, yval, epochs, batch_size, lr, rng, tag):
    """Train for `epochs`, validating after each one when validation data are given; return params, history."""
    hist = {"train_loss": [], "train_acc": [], "val_loss": [], "val_acc": [], "epoch_s": []}
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        params, train_loss, train_acc = train_epoch(params, X, y, batch_size, lr, rng, f"{tag} epoch {epoch}")
        hist["epoch_s"].append(time.perf_counter() - t0)  # the float() reads above wait for the device
        hist["train_loss"].append(train_loss)
        hist["train_acc"].append(train_acc)
        line = f"[{tag}] epoch {epoch:2d}/{epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}"
        if Xval is not None:
            val_loss, val_acc, _ = evaluate(params, Xval, yval)
            hist["val_loss"].append(val_loss)
            hist["val_acc"].append(val_acc)
            line += f" | val loss {val_loss:.4f} acc {val_acc:.4f}"
        print(f"{line} | {hist['epoch_s'][-1]:.2f} s", flush=True)
    return params, hist


# %% [markdown]
# ## Figures


# %%
def plot_learning_curves(folds, final, path):
    """Loss and accuracy per epoch: train (dashed, x) and validation (solid, o) for each fold, and the final run.

    Every epoch is a marker, so a one-epoch run (--smoke) still shows its points, not empty lines.
    """
    fig = Figure(figsize=(11, 4), layout="constrained")
    for ax, key in zip(fig.subplots(1, 2), ["loss", "acc"]):
        for i, h in enumerate(folds):
            epochs = range(1, len(h["train_loss"]) + 1)
            ax.plot(epochs, h[f"train_{key}"], "--x", color=f"C{i}", alpha=0.7)
            ax.plot(epochs, h[f"val_{key}"], "-o", ms=4, color=f"C{i}", label=f"fold {i + 1} (val)")
        ax.plot(range(1, len(final["train_loss"]) + 1), final[f"train_{key}"], "k--s", ms=4, label="final run (train)")
        ax.set(xlabel="epoch", ylabel=key, xlim=(0.5, len(final["train_loss"]) + 0.5),
               title=f"{'loss' if key == 'loss' else 'accuracy'}: train dashed (x), validation solid (o)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def plot_confusion(y_true, y_pred, path, title):
    """Confusion matrix of the test set: row = true class, column = predicted class, counts annotated."""
    K = len(FASHION_MNIST_CLASSES)
    cm = np.zeros((K, K), dtype=int)
    np.add.at(cm, (y_true, y_pred), 1)
    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues")
    for i in range(K):
        for j in range(K):
            ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set(xticks=range(K), yticks=range(K), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(FASHION_MNIST_CLASSES, rotation=45, ha="right")
    ax.set_yticklabels(FASHION_MNIST_CLASSES)
    fig.colorbar(im, ax=ax)
    fig.savefig(path, dpi=120)
    return cm


# %% [markdown]
# ## Main: K-fold cross-validation, then the final model on all training data, then the test set


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs per run (default 20; 1 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="minibatch size (default 128; 32 with --smoke)")
    p.add_argument("--lr", type=positive_float, default=0.1, help="SGD learning rate (default 0.1)")
    p.add_argument("--hidden", type=positive_int, nargs="+", default=None,
                   help="hidden layer widths (default 256 128; 64 with --smoke)")
    p.add_argument("--folds", type=positive_int, default=5, help="K of K-fold cross-validation, K >= 2 (default 5)")
    p.add_argument("--no-cv", action="store_true", help="skip cross-validation: only the final run and the test")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds weights and minibatch order (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/mlp_jax)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = p.parse_args(argv)
    defaults = dict(epochs=1, batch_size=32, hidden=[64]) if args.smoke else dict(epochs=20, batch_size=128,
                                                                                 hidden=[256, 128])
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.folds < 2:
        p.error(f"--folds must be at least 2, got {args.folds} (--no-cv skips cross-validation)")
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)

    try:
        Xtr, ytr, Xte, yte = load_data(args.data_dir, args.smoke)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    sizes = [Xtr.shape[1], *args.hidden, 10]
    key = jax.random.PRNGKey(args.seed)  # the weights: split once per model trained
    data_rng = np.random.default_rng(args.seed)  # minibatch order: the same stream in all three MLP scripts
    print(f"mlp_jax: {' -> '.join(map(str, sizes))}, {len(Xtr)} train / {len(Xte)} test images "
          f"on {jax.devices()[0].platform}")

    fold_hists = []
    for k, (tr, va) in enumerate([] if args.no_cv else kfold_splits(len(Xtr), args.folds, args.seed)):
        key, init_key = jax.random.split(key)
        params = init_params(init_key, sizes)
        Xf, yf, Xv, yv = (jnp.asarray(a) for a in (Xtr[tr], ytr[tr], Xtr[va], ytr[va]))
        _, hist = fit(params, Xf, yf, Xv, yv, args.epochs, args.batch_size, args.lr, data_rng,
                      tag=f"fold {k + 1}/{args.folds}")
        fold_hists.append(hist)
    cv_acc = [h["val_acc"][-1] for h in fold_hists]
    if cv_acc:
        print(f"cross-validation accuracy: {np.mean(cv_acc):.4f} +- {np.std(cv_acc, ddof=1):.4f} "
              f"({', '.join(f'{a:.4f}' for a in cv_acc)})")

    key, init_key = jax.random.split(key)
    params = init_params(init_key, sizes)
    params, final = fit(params, jnp.asarray(Xtr), jnp.asarray(ytr), None, None, args.epochs, args.batch_size,
                        args.lr, data_rng, tag="final")
    test_loss, test_acc, pred = evaluate(params, jnp.asarray(Xte), jnp.asarray(yte))
    print(f"test accuracy {test_acc:.4f}, test loss {test_loss:.4f}")

    plot_learning_curves(fold_hists, final, out_dir / "learning_curves.png")
    plot_confusion(yte, pred, out_dir / "confusion_matrix.png", f"mlp_jax: test accuracy {test_acc:.4f}")
    metrics = {
        "script": "mlp_jax", "test_acc": test_acc, "test_loss": test_loss,
        "cv_fold_acc": cv_acc,
        "cv_acc_mean": float(np.mean(cv_acc)) if cv_acc else None,
        "cv_acc_std": float(np.std(cv_acc, ddof=1)) if cv_acc else None,
        "final_train_loss": final["train_loss"][-1], "final_train_acc": final["train_acc"][-1],
        "sec_per_epoch": float(np.median(final["epoch_s"])),  # median: robust to a first-epoch compile or a hiccup
        "config": {**vars(args), "sizes": sizes, "n_train": len(Xtr), "n_test": len(Xte),
                   "device": jax.devices()[0].platform},
        "history": {"folds": fold_hists, "final": final},
    }
    save_metrics(out_dir, metrics, __file__, argv)
    np.savez(out_dir / "params.npz", **{k: np.asarray(v) for k, v in params.items()})
    print(f"wrote {out_dir}/metrics.json, params.npz and figures")
    return metrics


if __name__ == "__main__":
    main()
