"""A first neural network by hand in NumPy: a multilayer perceptron classifying Fashion-MNIST.

Every piece is written out, forward and backward side by side: the linear layer, the ReLU, the
softmax cross-entropy loss, He initialisation and minibatch stochastic gradient descent. Nothing
is differentiated automatically; tests/test_mlp.py checks each backward against torch autograd.
Each function returns what its backward needs (a "cache"), CS231n style, so the layers compose.

The network, with L layers of widths D_0 = 784, D_1, ..., D_L = 10 and a batch x of B images:

    h_0 = x                                   (B, 784)
    z_l = h_{l-1} W_l + b_l                   (B, D_l)    W_l (D_{l-1}, D_l), b_l (D_l,)
    h_l = ReLU(z_l) = max(z_l, 0)             for l < L
    logits = z_L                              (B, 10)
    L = -(1/B) sum_i log softmax(logits_i)[y_i]      the labels' negative log-likelihood (UDL 5.5)
    dL/dlogits = (softmax(logits) - onehot(y)) / B,  then the chain rule back to every W_l and b_l
    theta <- theta - lr * dL/dtheta                  minibatch SGD

Reading: S. J. D. Prince, "Understanding Deep Learning" (MIT Press, 2023), chapters 3-5 (shallow
and deep networks, loss functions as negative log-likelihoods), https://udlbook.github.io/udlbook/;
K. He et al., "Delving Deep into Rectifiers" (2015), https://arxiv.org/abs/1502.01852 (He init).
Arc: Recap to neural networks -- a neural network from scratch in NumPy.

Run:  python 01-foundations/mlp_numpy.py              (5-fold CV, then train on all 60k, test)
      python 01-foundations/mlp_numpy.py --no-cv --epochs 5 --hidden 512
      python 01-foundations/mlp_numpy.py --smoke      (seconds: 2k images, small net, 1 epoch)
Look first at `linear_backward` beside `linear_forward`, and at the loss gradient (p - onehot(y)) / B.
"""

# %%
import argparse
import sys
import time
from pathlib import Path

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
# ## Layers: each forward beside its backward


# %%
def linear_forward(x, W, b):
    """z = x W + b.   x (B, D_in), W (D_in, D_out), b (D_out,) -> z (B, D_out)."""
    return x @ W + b, (x, W)


def linear_backward(dz, cache, need_dx=True):
    """From dL/dz (B, D_out) to dL/dx, dL/dW, dL/db.

    z_ij = sum_k x_ik W_kj + b_j, so
      dL/dx = dz W^T      (B, D_in)      each input feeds every output through W
      dL/dW = x^T dz      (D_in, D_out)  summed over the batch
      dL/db = sum_i dz_i  (D_out,)
    The first layer's dL/dx is not needed (the data are not parameters) and would cost as much
    as dL/dW, so the network asks for it only where it flows on to a lower layer.
    """
    x, W = cache
    dx = dz @ W.T if need_dx else None
    return dx, x.T @ dz, dz.sum(axis=0)


def relu_forward(z):
    """h = max(z, 0), elementwise."""
    return np.maximum(z, 0), z


def relu_backward(dh, z):
    """dL/dz = dL/dh * 1[z > 0]: the gradient passes where the unit was active (0 at z = 0, as torch)."""
    return dh * (z > 0)


def cross_entropy_forward(logits, y):
    """Mean softmax cross-entropy L = -(1/B) sum_i log softmax(logits_i)[y_i].   logits (B, K), y (B,).

    log softmax(z)_k = z_k - log sum_j exp(z_j); subtracting max_j z_j first changes nothing
    (softmax is shift-invariant) but keeps exp from overflowing.
    """
    B = len(y)
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))  # (B, K)
    loss = -log_p[np.arange(B), y].mean()
    return loss, (log_p, y)


def cross_entropy_backward(dloss, cache):
    """dL/dlogits = dloss * (softmax(logits) - onehot(y)) / B   (B, K).

    From L_i = -z_{y_i} + log sum_j exp(z_j): dL_i/dz_k = p_k - 1[k = y_i]. The probabilities
    push down every wrong class and the -1 pulls up the right one.
    """
    log_p, y = cache
    B = len(y)
    dlogits = np.exp(log_p)  # p
    dlogits[np.arange(B), y] -= 1
    dlogits *= dloss / B
    return dlogits


# %% [markdown]
# ## The network: parameters, forward, backward, SGD


# %%
def init_params(sizes, rng, dtype=np.float32):
    """He initialisation: W_l ~ N(0, 2 / D_{l-1}), b_l = 0.   sizes = [784, *hidden, 10].

    A ReLU zeroes half of its inputs on average, so Var(z_l) = D_{l-1} Var(W_l) E[h_{l-1}^2]
    = D_{l-1} Var(W_l) Var(z_{l-1}) / 2; Var(W_l) = 2 / D_{l-1} keeps the activations' scale
    constant through depth (neither exploding nor vanishing).
    """
    params = {}
    for l, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        params[f"W{l}"] = (rng.standard_normal((d_in, d_out)) * np.sqrt(2.0 / d_in)).astype(dtype)
        params[f"b{l}"] = np.zeros(d_out, dtype)
    return params


def forward(params, x):
    """logits (B, 10) for x (B, 784), and the caches of every layer for the backward pass."""
    L = len(params) // 2
    h, caches = x, []
    for l in range(1, L + 1):
        z, linear_cache = linear_forward(h, params[f"W{l}"], params[f"b{l}"])
        h, relu_cache = relu_forward(z) if l < L else (z, None)  # no ReLU on the logits
        caches.append((linear_cache, relu_cache))
    return h, caches


def backward(dlogits, caches):
    """Gradients {"W1": dL/dW1, "b1": ..., ...} from dL/dlogits, walking the layers in reverse."""
    grads = {}
    dh = dlogits
    for l in range(len(caches), 0, -1):
        linear_cache, relu_cache = caches[l - 1]
        dz = relu_backward(dh, relu_cache) if relu_cache is not None else dh
        dh, grads[f"W{l}"], grads[f"b{l}"] = linear_backward(dz, linear_cache, need_dx=l > 1)
    return grads


def loss_and_grads(params, x, y):
    """Forward, loss, backward: the mean loss over the batch, its gradients and the logits."""
    logits, caches = forward(params, x)
    loss, ce_cache = cross_entropy_forward(logits, y)
    grads = backward(cross_entropy_backward(1.0, ce_cache), caches)
    return loss, grads, logits


def sgd_step(params, grads, lr):
    """Minibatch SGD, in place: theta <- theta - lr * dL/dtheta (UDL 6.2)."""
    for name in params:
        params[name] -= lr * grads[name]


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
    """One pass over (X, y) in shuffled minibatches. Returns the mean loss and accuracy seen while training."""
    total_loss, correct = 0.0, 0
    n_batches = -(-len(X) // batch_size)
    for idx in tqdm(minibatches(len(X), batch_size, rng), total=n_batches, desc=desc, leave=False,
                    disable=not sys.stdout.isatty()):
        x, t = X[idx], y[idx]
        loss, grads, logits = loss_and_grads(params, x, t)
        sgd_step(params, grads, lr)
        total_loss += float(loss) * len(idx)
        correct += int((logits.argmax(axis=1) == t).sum())
    return total_loss / len(X), correct / len(X)


def evaluate(params, X, y):
    """Mean loss, accuracy and predicted classes on (X, y)."""
    logits, _ = forward(params, X)
    loss, _ = cross_entropy_forward(logits, y)
    pred = logits.argmax(axis=1)
    return float(loss), float((pred == y).mean()), pred


def fit(params, X, y, Xval, yval, epochs, batch_size, lr, rng, tag):
    """Train for `epochs`, validating after each one when validation data are given; return the history."""
    hist = {"train_loss": [], "train_acc": [], "val_loss": [], "val_acc": [], "epoch_s": []}
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        train_loss, train_acc = train_epoch(params, X, y, batch_size, lr, rng, desc=f"{tag} epoch {epoch}")
        hist["epoch_s"].append(time.perf_counter() - t0)
        hist["train_loss"].append(train_loss)
        hist["train_acc"].append(train_acc)
        line = f"[{tag}] epoch {epoch:2d}/{epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}"
        if Xval is not None:
            val_loss, val_acc, _ = evaluate(params, Xval, yval)
            hist["val_loss"].append(val_loss)
            hist["val_acc"].append(val_acc)
            line += f" | val loss {val_loss:.4f} acc {val_acc:.4f}"
        print(f"{line} | {hist['epoch_s'][-1]:.2f} s", flush=True)
    return hist


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
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/mlp_numpy)")
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
    data_rng = np.random.default_rng(args.seed)  # minibatch order: the same stream in all three MLP scripts
    init_rng = np.random.default_rng([args.seed, 1])  # the weights: a stream independent of the data's
    print(f"mlp_numpy: {' -> '.join(map(str, sizes))}, {len(Xtr)} train / {len(Xte)} test images")

    fold_hists = []
    for k, (tr, va) in enumerate([] if args.no_cv else kfold_splits(len(Xtr), args.folds, args.seed)):
        params = init_params(sizes, init_rng)
        fold_hists.append(fit(params, Xtr[tr], ytr[tr], Xtr[va], ytr[va], args.epochs, args.batch_size,
                              args.lr, data_rng, tag=f"fold {k + 1}/{args.folds}"))
    cv_acc = [h["val_acc"][-1] for h in fold_hists]
    if cv_acc:
        print(f"cross-validation accuracy: {np.mean(cv_acc):.4f} +- {np.std(cv_acc, ddof=1):.4f} "
              f"({', '.join(f'{a:.4f}' for a in cv_acc)})")

    params = init_params(sizes, init_rng)
    final = fit(params, Xtr, ytr, None, None, args.epochs, args.batch_size, args.lr, data_rng, tag="final")
    test_loss, test_acc, pred = evaluate(params, Xte, yte)
    print(f"test accuracy {test_acc:.4f}, test loss {test_loss:.4f}")

    plot_learning_curves(fold_hists, final, out_dir / "learning_curves.png")
    plot_confusion(yte, pred, out_dir / "confusion_matrix.png", f"mlp_numpy: test accuracy {test_acc:.4f}")
    metrics = {
        "script": "mlp_numpy", "test_acc": test_acc, "test_loss": test_loss,
        "cv_fold_acc": cv_acc,
        "cv_acc_mean": float(np.mean(cv_acc)) if cv_acc else None,
        "cv_acc_std": float(np.std(cv_acc, ddof=1)) if cv_acc else None,
        "final_train_loss": final["train_loss"][-1], "final_train_acc": final["train_acc"][-1],
        "sec_per_epoch": float(np.median(final["epoch_s"])),  # median: robust to a first-epoch compile or a hiccup
        "config": {**vars(args), "sizes": sizes, "n_train": len(Xtr), "n_test": len(Xte)},
        "history": {"folds": fold_hists, "final": final},
    }
    save_metrics(out_dir, metrics, __file__, argv)
    np.savez(out_dir / "params.npz", **params)
    print(f"wrote {out_dir}/metrics.json, params.npz and figures")
    return metrics


if __name__ == "__main__":
    main()
