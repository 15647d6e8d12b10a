"""Batch normalization from scratch in NumPy: forward, backward and running statistics, in an MLP on Fashion-MNIST.

For a minibatch x of N examples with D features, BatchNorm standardises each feature with the
batch's own statistics, then lets the network rescale and shift it (elementwise over features j):

    mu_j      = (1/N) sum_i x_ij                          batch mean              (D,)
    var_j     = (1/N) sum_i (x_ij - mu_j)^2               biased batch variance   (D,)
    xhat_ij   = (x_ij - mu_j) / sqrt(var_j + eps)         zero mean, unit variance over the batch
    y_ij      = gamma_j xhat_ij + beta_j                  learned scale and shift: BN can undo itself

Training and evaluation differ. In training, mu and var come from the batch, so each example's
output depends on the others in its batch; running averages are kept on the side, as torch does:
running_mean <- (1 - momentum) running_mean + momentum mu, and the same for running_var with the
unbiased variance var * N / (N - 1). In evaluation the running averages replace the batch
statistics: the layer becomes a fixed affine map, and a prediction no longer depends on which other
examples share its batch (nor needs a batch at all).

Why it helps (d2l 8.5): it keeps the scale of each layer's inputs stable however the weights below
it change, so a larger learning rate stays stable and initialisation needs less care; the noise of
the batch statistics acts as a regulariser. The paper's explanation, reducing "internal covariate
shift", is disputed: Santurkar et al. (2018) argue that BN makes the loss landscape smoother
(gradients more predictive from step to step), which is what permits the larger steps.

The run: the MLP with Linear-BN-ReLU hidden layers against the same MLP without BN, from the same
initial weights, on the same minibatches, with the same plain SGD at a large learning rate (0.4);
try --lr 0.5 and smaller rates to see where each of the two nets stops training.

Reading: S. Ioffe and C. Szegedy (2015), "Batch Normalization: Accelerating Deep Network Training
by Reducing Internal Covariate Shift", ICML, https://arxiv.org/abs/1502.03167 (Algorithm 1 and 2);
d2l 8.5 "Batch Normalization", https://d2l.ai/chapter_convolutional-modern/batch-norm.html;
S. Santurkar et al. (2018), "How Does Batch Normalization Help Optimization?", NeurIPS,
https://arxiv.org/abs/1805.11604. Running statistics as torch.nn.BatchNorm1d.
Arc: Optimization -- batch normalization in NumPy.

Run:  python 02-optimization/batchnorm_numpy.py [--lr 0.4 --epochs 10 --batch-size 128]
      python 02-optimization/batchnorm_numpy.py --smoke
Look first at `batchnorm_backward`: the chain rule through the batch mean and variance collapses to
one line; then at learning_curves.png, the two models side by side.
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
def batchnorm_forward(x, gamma, beta, running_mean, running_var, training=True, momentum=0.1, eps=1e-5):
    """y = gamma * (x - mu) / sqrt(var + eps) + beta.   x (N, D), gamma, beta, running_* (D,) -> y (N, D).

    training: mu, var are the batch mean and biased variance, and running_mean / running_var are
    updated in place (pass None for both to keep no running statistics, as F.batch_norm allows).
    Evaluation: mu, var = running_mean, running_var.
    """
    if training:
        N = len(x)
        if N < 2:
            raise ValueError(f"batch normalization in training needs more than 1 example per batch, got {N}")
        mu = x.mean(axis=0)  # (D,)
        var = x.var(axis=0)  # (D,) biased: divides by N, as the normalisation itself uses
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += momentum * mu
            running_var *= 1 - momentum
            running_var += momentum * var * (N / (N - 1))  # unbiased: an estimate of the population's variance
    else:
        mu, var = running_mean, running_var
    sigma = np.sqrt(var + eps)  # (D,)
    xhat = (x - mu) / sigma  # (N, D)
    return gamma * xhat + beta, (xhat, gamma, sigma, training)


def batchnorm_backward(dout, cache):
    """From dL/dy (N, D) to dL/dx (N, D), dL/dgamma (D,), dL/dbeta (D,).

    In training every x_i reaches the output three ways: directly, through mu and through var, so
    dL/dx collects all three (derivation below). In evaluation mu and var are constants and BN is
    the affine map y = (gamma / sigma) x + const, so dL/dx = gamma dout / sigma.
    """
    xhat, gamma, sigma, training = cache
    dgamma = (dout * xhat).sum(axis=0)  # y = gamma xhat + beta
    dbeta = dout.sum(axis=0)
    if not training:
        return gamma * dout / sigma, dgamma, dbeta
    N = len(dout)
    # One feature at a time (all operations are per column), with g_i = dL/dxhat_i = gamma dout_i:
    #   xhat_i = (x_i - mu) / sigma,  mu = (1/N) sum_k x_k,  var = (1/N) sum_k (x_k - mu)^2,  sigma = sqrt(var + eps)
    # 1. through var:  dL/dvar = sum_i g_i (x_i - mu) * (-1/2) (var + eps)^(-3/2)
    #                          = -(1 / (2 sigma^2)) sum_i g_i xhat_i
    # 2. through mu:   dL/dmu = sum_i g_i (-1 / sigma) + dL/dvar * (-2/N) sum_i (x_i - mu)
    #                         = -(1/sigma) sum_i g_i          (the deviations from the mean sum to 0)
    # 3. all paths:    dL/dx_i = g_i / sigma + dL/dvar * 2 (x_i - mu) / N + dL/dmu / N
    #                          = g_i / sigma - xhat_i (sum_k g_k xhat_k) / (N sigma) - (sum_k g_k) / (N sigma)
    #                          = (1 / (N sigma)) (N g_i - sum_k g_k - xhat_i sum_k g_k xhat_k)
    # gamma is one number per column, so it factors out of g: with g = gamma dout,
    #   dL/dx = (gamma / (N sigma)) (N dout - sum dout - xhat sum(dout xhat))
    #         = (gamma / (N sigma)) (N dout - dbeta - xhat dgamma)        reusing the two sums computed above
    # Both sums project out of dout what the normalisation removed: its mean and its component along xhat.
    dx = gamma / (N * sigma) * (N * dout - dbeta - xhat * dgamma)  # (N, D)
    return dx, dgamma, dbeta


# %% [markdown]
# ## The network: Linear-BN-ReLU hidden layers, or plain Linear-ReLU for the comparison


# %%
def init_params(sizes, rng, batchnorm, dtype=np.float32):
    """He-initialised W_l, zero b_l; with batchnorm, gamma_l = 1 and beta_l = 0 for each hidden layer.

    Also returns the running statistics (not trained by SGD): running mean 0, running variance 1.
    The bias b_l before BN is redundant (subtracting the batch mean removes it, so its gradient is 0);
    it stays so that both models share the same Linear layers and initial weights.
    """
    params, state = {}, {}
    for l, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        params[f"W{l}"] = (rng.standard_normal((d_in, d_out)) * np.sqrt(2.0 / d_in)).astype(dtype)
        params[f"b{l}"] = np.zeros(d_out, dtype)
        if batchnorm and l < len(sizes) - 1:
            params[f"gamma{l}"], params[f"beta{l}"] = np.ones(d_out, dtype), np.zeros(d_out, dtype)
            state[f"running_mean{l}"], state[f"running_var{l}"] = np.zeros(d_out, dtype), np.ones(d_out, dtype)
    return params, state


def forward(params, state, x, training):
    """logits (B, 10) for x (B, 784) and the caches for the backward pass; BN where params has gamma_l."""
    L = sum(name.startswith("W") for name in params)
    h, caches = x, []
    for l in range(1, L + 1):
        h_in = h
        z = h @ params[f"W{l}"] + params[f"b{l}"]  # (B, D_l)
        bn_cache = None
        if l < L and f"gamma{l}" in params:
            z, bn_cache = batchnorm_forward(z, params[f"gamma{l}"], params[f"beta{l}"], state[f"running_mean{l}"],
                                            state[f"running_var{l}"], training)
        h = np.maximum(z, 0) if l < L else z  # no ReLU on the logits
        caches.append((h_in, bn_cache, z))
    return h, caches


def loss_and_grads(params, state, x, y, training=True):
    """Mean softmax cross-entropy, the gradients of every parameter, and the logits."""
    logits, caches = forward(params, state, x, training)
    B = len(y)
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -log_p[np.arange(B), y].mean()
    dz = np.exp(log_p)  # dL/dlogits = (softmax - onehot) / B
    dz[np.arange(B), y] -= 1
    dz /= B
    grads = {}
    for l in range(len(caches), 0, -1):
        h_in, bn_cache, z = caches[l - 1]
        if l < len(caches):
            dz = dz * (z > 0)  # through the ReLU
            if bn_cache is not None:
                dz, grads[f"gamma{l}"], grads[f"beta{l}"] = batchnorm_backward(dz, bn_cache)
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


def train(params, state, data, args, tag):
    """Minibatch SGD for args.epochs; after each epoch, test in evaluation mode. Returns the history."""
    Xtr, ytr, Xte, yte = data
    data_rng = np.random.default_rng(args.seed)  # the same minibatch order for both models
    hist = {"step_loss": [], "train_loss": [], "test_loss": [], "test_acc": [], "epoch_s": []}
    steps = len(Xtr) // args.batch_size
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        # drop_last: a last batch of one example would have no variance to normalise by
        for idx in tqdm(minibatches(len(Xtr), args.batch_size, data_rng, drop_last=True), total=steps,
                        desc=f"{tag} epoch {epoch}", leave=False, disable=not sys.stdout.isatty()):
            loss, grads, _ = loss_and_grads(params, state, Xtr[idx], ytr[idx], training=True)
            for name in params:  # plain SGD, in place
                params[name] -= args.lr * grads[name]
            hist["step_loss"].append(float(loss))
        hist["epoch_s"].append(time.perf_counter() - t0)
        hist["train_loss"].append(float(np.mean(hist["step_loss"][-steps:])))
        test_loss, _, logits = loss_and_grads(params, state, Xte, yte, training=False)  # running statistics
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
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy (BN in evaluation mode)")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=120)


# %% [markdown]
# ## Main: the same MLP trained with and without BatchNorm


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
    if args.batch_size < 2:  # a batch of one has no variance to normalise by
        p.error("argument --batch-size: batch normalization needs at least 2 examples per batch")
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        data = load_data(args.data_dir, args.smoke)
    except DataError as exc:
        sys.exit(f"error: {exc}")

    sizes = [data[0].shape[1], *args.hidden, 10]
    print(f"batchnorm_numpy: {' -> '.join(map(str, sizes))}, {len(data[0])} train / {len(data[2])} test images, "
          f"SGD lr {args.lr}")
    hists = {}
    for label, batchnorm in [("with BatchNorm", True), ("without", False)]:
        params, state = init_params(sizes, np.random.default_rng([args.seed, 1]), batchnorm)  # same W for both
        with np.errstate(over="ignore", invalid="ignore"):  # the plain net may blow up at a large lr: let it show
            hists[label] = train(params, state, data, args, tag=label)
    bn, plain = hists["with BatchNorm"], hists["without"]

    plot_learning_curves(hists, out_dir / "learning_curves.png",
                         f"MLP {'-'.join(map(str, sizes))}, SGD lr {args.lr}: BatchNorm {bn['test_acc'][-1]:.4f} "
                         f"vs without {plain['test_acc'][-1]:.4f} test accuracy")
    metrics = {"script": Path(__file__).stem, "test_acc": bn["test_acc"][-1], "test_loss": bn["test_loss"][-1],
               "test_acc_without": plain["test_acc"][-1], "test_loss_without": plain["test_loss"][-1],
               "first_loss": bn["step_loss"][0], "final_train_loss": bn["train_loss"][-1],
               "final_train_loss_without": plain["train_loss"][-1],
               "sec_per_epoch": float(np.median(bn["epoch_s"])),
               "sec_per_epoch_without": float(np.median(plain["epoch_s"])),
               "config": {**vars(args), "sizes": sizes},
               "history": {label: {k: v for k, v in h.items() if k != "step_loss"} for label, h in hists.items()}}
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"wrote {out_dir}/metrics.json and learning_curves.png")
    return metrics


if __name__ == "__main__":
    main()
