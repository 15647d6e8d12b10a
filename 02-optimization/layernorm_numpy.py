"""Layer normalization from scratch in NumPy: forward and backward, in an MLP on Fashion-MNIST.

LayerNorm standardises each example over its own D features, then rescales and shifts each
feature (for example i and feature j):

    mu_i      = (1/D) sum_j x_ij                          the example's mean       (N, 1)
    var_i     = (1/D) sum_j (x_ij - mu_i)^2               its biased variance      (N, 1)
    xhat_ij   = (x_ij - mu_i) / sqrt(var_i + eps)
    y_ij      = gamma_j xhat_ij + beta_j                  learned per-feature scale and shift (D,)

Against BatchNorm (batchnorm_numpy.py), which normalises each feature over the batch: the
statistics here belong to one example, so an output never depends on the other examples in the
batch. Hence no running averages and no train/eval difference (the layer computes the same thing
in both), it works with a batch of one and with any batch size, and it applies unchanged at each
position of a variable-length sequence, where a batch's statistics would mix positions and padding.
That is why recurrent nets and transformers use it (Vaswani et al., 2017; pre-LN in GPT-2 and later
models, usually RMSNorm, its mean-free variant, in the newest): tokens are processed independently,
sequences vary in length, and per-device batches are small. What it gives up: BN's batch noise
(its regularising effect), and it assumes that the features of a layer share one scale.

The run: the MLP with Linear-LN-ReLU hidden layers against the same MLP without LN, from the same
initial weights, on the same minibatches, with the same plain SGD at batchnorm_numpy.py's rate (0.4);
compare learning_curves.png with batchnorm_numpy.py's.

Reading: J. L. Ba, J. R. Kiros and G. E. Hinton (2016), "Layer Normalization",
https://arxiv.org/abs/1607.06450 (section 3); d2l 8.5 "Batch Normalization", its subsection "Layer Normalization",
https://d2l.ai/chapter_convolutional-modern/batch-norm.html. Normalisation as torch.nn.LayerNorm.
Arc: Optimization -- layer normalization in NumPy.

Run:  python 02-optimization/layernorm_numpy.py [--lr 0.4 --epochs 10 --batch-size 128]
      python 02-optimization/layernorm_numpy.py --smoke
Look first at `layernorm_backward` beside batchnorm_numpy.py's: the same algebra along the other
axis, where gamma no longer factors out; then at learning_curves.png, the two models side by side.
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

from data import DataError, fashion_mnist, minibatches, save_metrics
from data.cli import nonneg_int, positive_float, positive_int

# %% [markdown]
# ## The layer: forward beside backward


# %%
def layernorm_forward(x, gamma, beta, eps=1e-5):
    """y = gamma * (x - mu) / sqrt(var + eps) + beta, statistics per row.   x (N, D), gamma, beta (D,) -> y (N, D)."""
    mu = x.mean(axis=1, keepdims=True)  # (N, 1)
    var = x.var(axis=1, keepdims=True)  # (N, 1) biased, as torch.nn.LayerNorm
    sigma = np.sqrt(var + eps)  # (N, 1)
    xhat = (x - mu) / sigma  # (N, D)
    return gamma * xhat + beta, (xhat, gamma, sigma)


def layernorm_backward(dout, cache):
    """From dL/dy (N, D) to dL/dx (N, D), dL/dgamma (D,), dL/dbeta (D,)."""
    xhat, gamma, sigma = cache
    D = dout.shape[1]
    dgamma = (dout * xhat).sum(axis=0)  # gamma and beta are shared by all examples: sum over the batch
    dbeta = dout.sum(axis=0)
    g = dout * gamma  # dL/dxhat (N, D)
    # One example (row) at a time, with g_j = dL/dxhat_j:
    #   xhat_j = (x_j - mu) / sigma,  mu = (1/D) sum_k x_k,  var = (1/D) sum_k (x_k - mu)^2,  sigma = sqrt(var + eps)
    # 1. through var:  dL/dvar = sum_j g_j (x_j - mu) * (-1/2) (var + eps)^(-3/2) = -(1 / (2 sigma^2)) sum_j g_j xhat_j
    # 2. through mu:   dL/dmu = -(1/sigma) sum_j g_j + dL/dvar * (-2/D) sum_j (x_j - mu) = -(1/sigma) sum_j g_j
    # 3. all paths:    dL/dx_j = g_j / sigma + dL/dvar * 2 (x_j - mu) / D + dL/dmu / D
    #                          = (1 / (D sigma)) (D g_j - sum_k g_k - xhat_j sum_k g_k xhat_k)
    # BatchNorm's formula with the axes swapped; but gamma_j now varies along the summed axis, so it
    # stays inside the sums as g = gamma dout.
    dx = (D * g - g.sum(axis=1, keepdims=True) - xhat * (g * xhat).sum(axis=1, keepdims=True)) / (D * sigma)
    return dx, dgamma, dbeta


# %% [markdown]
# ## The network: Linear-LN-ReLU hidden layers, or plain Linear-ReLU for the comparison


# %%
def init_params(sizes, rng, layernorm, dtype=np.float32):
    """He-initialised W_l, zero b_l; with layernorm, gamma_l = 1 and beta_l = 0 for each hidden layer."""
    params = {}
    for l, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        params[f"W{l}"] = (rng.standard_normal((d_in, d_out)) * np.sqrt(2.0 / d_in)).astype(dtype)
        params[f"b{l}"] = np.zeros(d_out, dtype)
        if layernorm and l < len(sizes) - 1:
            params[f"gamma{l}"], params[f"beta{l}"] = np.ones(d_out, dtype), np.zeros(d_out, dtype)
    return params


def forward(params, x):
    """logits (B, 10) for x (B, 784) and the caches for the backward pass; LN where params has gamma_l."""
    L = sum(name.startswith("W") for name in params)
    h, caches = x, []
    for l in range(1, L + 1):
        h_in = h
        z = h @ params[f"W{l}"] + params[f"b{l}"]  # (B, D_l)
        ln_cache = None
        if l < L and f"gamma{l}" in params:
            z, ln_cache = layernorm_forward(z, params[f"gamma{l}"], params[f"beta{l}"])
        h = np.maximum(z, 0) if l < L else z  # no ReLU on the logits
        caches.append((h_in, ln_cache, z))
    return h, caches


def loss_and_grads(params, x, y):
    """Mean softmax cross-entropy, the gradients of every parameter, and the logits."""
    logits, caches = forward(params, x)
    B = len(y)
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -log_p[np.arange(B), y].mean()
    dz = np.exp(log_p)  # dL/dlogits = (softmax - onehot) / B
    dz[np.arange(B), y] -= 1
    dz /= B
    grads = {}
    for l in range(len(caches), 0, -1):
        h_in, ln_cache, z = caches[l - 1]
        if l < len(caches):
            dz = dz * (z > 0)  # through the ReLU
            if ln_cache is not None:
                dz, grads[f"gamma{l}"], grads[f"beta{l}"] = layernorm_backward(dz, ln_cache)
        grads[f"W{l}"], grads[f"b{l}"] = h_in.T @ dz, dz.sum(axis=0)
        if l > 1:
            dz = dz @ params[f"W{l}"].T  # dL/dh_{l-1}
    return loss, grads, logits


# %% [markdown]
# ## Data, training and the figure


# %%
def load_data(data_dir=None, smoke=False):
    """Fashion-MNIST as float32 (N, 784) pixels standardised with the training split's mean and std."""
    Xtr, ytr = fashion_mnist("train", data_dir)
    Xte, yte = fashion_mnist("test", data_dir)
    if smoke:  # a small real subset
        Xtr, ytr, Xte, yte = Xtr[:2000], ytr[:2000], Xte[:1000], yte[:1000]
    Xtr = Xtr.reshape(len(Xtr), -1).astype(np.float32) / 255
    Xte = Xte.reshape(len(Xte), -1).astype(np.float32) / 255
    mean, std = Xtr.mean(), Xtr.std()
    return (Xtr - mean) / std, ytr, (Xte - mean) / std, yte


def train(params, data, args, tag):
    """Minibatch SGD for args.epochs, testing after each epoch. Returns the history."""
    Xtr, ytr, Xte, yte = data
    data_rng = np.random.default_rng(args.seed)  # the same minibatch order for both models
    hist = {"step_loss": [], "train_loss": [], "test_loss": [], "test_acc": [], "epoch_s": []}
    steps = -(-len(Xtr) // args.batch_size)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        for idx in tqdm(minibatches(len(Xtr), args.batch_size, data_rng), total=steps,
                        desc=f"{tag} epoch {epoch}", leave=False, disable=not sys.stdout.isatty()):
            loss, grads, _ = loss_and_grads(params, Xtr[idx], ytr[idx])
            for name in params:  # plain SGD, in place
                params[name] -= args.lr * grads[name]
            hist["step_loss"].append(float(loss))
        hist["epoch_s"].append(time.perf_counter() - t0)
        hist["train_loss"].append(float(np.mean(hist["step_loss"][-steps:])))
        test_loss, _, logits = loss_and_grads(params, Xte, yte)  # LN: the same computation as in training
        hist["test_loss"].append(float(test_loss))
        hist["test_acc"].append(float((logits.argmax(axis=1) == yte).mean()))
        print(f"[{tag}] epoch {epoch:2d}/{args.epochs}  train loss {hist['train_loss'][-1]:.4f} | test loss "
              f"{test_loss:.4f} acc {hist['test_acc'][-1]:.4f} | {hist['epoch_s'][-1]:.2f} s", flush=True)
    return hist


def plot_learning_curves(hists, path, title):
    """Training loss and test accuracy per epoch, one line per model."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for (label, h), color in zip(hists.items(), ["C0", "C1"]):
        epochs = range(1, len(h["train_loss"]) + 1)
        ax_loss.plot(epochs, h["train_loss"], "o-", color=color, label=label)
        ax_acc.plot(epochs, h["test_acc"], "o-", color=color, label=label)
    ax_loss.set(xlabel="epoch", ylabel="training loss (epoch mean)", yscale="log", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=120)


# %% [markdown]
# ## Main: the same MLP trained with and without LayerNorm


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=positive_int, help="epochs (default 10; 1 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, help="minibatch size (default 128; 32 with --smoke)")
    p.add_argument("--lr", type=positive_float,
                   help="SGD learning rate, for both models (default 0.4; 0.1 with --smoke, far from instability)")
    p.add_argument("--hidden", type=positive_int, nargs="+",
                   help="hidden widths (default 256 128; 64 with --smoke)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds weights and minibatch order (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/<script>)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = p.parse_args(argv)
    if args.lr is None:
        args.lr = 0.1 if args.smoke else 0.4
    args.epochs = (1 if args.smoke else 10) if args.epochs is None else args.epochs
    args.hidden = ([64] if args.smoke else [256, 128]) if args.hidden is None else args.hidden
    args.batch_size = (32 if args.smoke else 128) if args.batch_size is None else args.batch_size
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        data = load_data(args.data_dir, args.smoke)
    except DataError as exc:
        sys.exit(f"error: {exc}")

    sizes = [data[0].shape[1], *args.hidden, 10]
    print(f"layernorm_numpy: {' -> '.join(map(str, sizes))}, {len(data[0])} train / {len(data[2])} test images, "
          f"SGD lr {args.lr}")
    hists = {}
    for label, layernorm in [("with LayerNorm", True), ("without", False)]:
        params = init_params(sizes, np.random.default_rng([args.seed, 1]), layernorm)  # same W for both
        with np.errstate(over="ignore", invalid="ignore"):  # the plain net may blow up at a large lr: let it show
            hists[label] = train(params, data, args, tag=label)
    ln, plain = hists["with LayerNorm"], hists["without"]

    plot_learning_curves(hists, out_dir / "learning_curves.png",
                         f"MLP {'-'.join(map(str, sizes))}, SGD lr {args.lr}: LayerNorm {ln['test_acc'][-1]:.4f} "
                         f"vs without {plain['test_acc'][-1]:.4f} test accuracy")
    metrics = {"script": Path(__file__).stem, "test_acc": ln["test_acc"][-1], "test_loss": ln["test_loss"][-1],
               "test_acc_without": plain["test_acc"][-1], "test_loss_without": plain["test_loss"][-1],
               "first_loss": ln["step_loss"][0], "final_train_loss": ln["train_loss"][-1],
               "final_train_loss_without": plain["train_loss"][-1],
               "sec_per_epoch": float(np.median(ln["epoch_s"])),
               "sec_per_epoch_without": float(np.median(plain["epoch_s"])),
               "config": {**vars(args), "sizes": sizes},
               "history": {label: {k: v for k, v in h.items() if k != "step_loss"} for label, h in hists.items()}}
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"wrote {out_dir}/metrics.json and learning_curves.png")
    return metrics


if __name__ == "__main__":
    main()
