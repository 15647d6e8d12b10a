"""Group normalization in JAX, in a small CNN on Fashion-MNIST, with Adam by hand and K-fold cross-validation.

GroupNorm (Wu and He 2018) splits the C channels of each example into G groups of C/G channels and
standardises every group with its own statistics, over the group's channels and all positions:

    x: (N, C, H, W) -> (N, G, C/G, H, W)
    mu_ng     = mean of x over the group's C/G channels and H, W          one mean per example and group
    sigma2_ng = mean of (x - mu_ng)^2 over the same values               biased variance
    xhat      = (x - mu_ng) / sqrt(sigma2_ng + eps),  back to (N, C, H, W)
    y_nchw    = gamma_c * xhat_nchw + beta_c                              per-CHANNEL scale and shift (C,)

One family, three special cases (which values share a mean and variance):
    BatchNorm     one set per channel c, pooled over the batch and positions (N, H, W)
    LayerNorm     G = 1: one set per example, over all of (C, H, W)
    InstanceNorm  G = C: one set per example and channel, over (H, W) only
    GroupNorm     1 < G < C in between: LayerNorm assumes all channels share a scale, InstanceNorm
                  throws away every channel's mean and contrast; groups of related channels keep
                  both the freedom and enough values for a steady estimate.
No statistic ever mixes two examples, so GroupNorm behaves the same at batch size 2 as at 64 and the
same in training and at test time (no running averages). BatchNorm's statistics at batch size 2 are
estimates from 2 examples: noisy in training, and its eval-mode running averages then describe inputs
the network never saw in training. After a convolution each statistic still pools 2 x H x W values;
after a fully connected layer a batch of 2 standardises every feature to exactly -1 or +1
(test_groupnorm_jax.py checks it), keeping only which example is larger. So the CNN here normalises
all three hidden layers (two conv, one fully connected), and the batch-size experiment trains it with
each norm at batch size 2 and 64 for the same number of epochs and plots test accuracy after each.

Reading: Y. Wu and K. He (2018), "Group Normalization", ECCV, https://arxiv.org/abs/1803.08494;
d2l 8.5 (batch normalization), https://d2l.ai/chapter_convolutional-modern/batch-norm.html;
D. P. Kingma and J. Ba (2015), "Adam: A Method for Stochastic Optimization", https://arxiv.org/abs/1412.6980.
As torch.nn.GroupNorm / F.group_norm (tests/test_groupnorm_jax.py checks outputs and gradients).
Arc: Optimization -- group normalization in JAX.

Run:  python 02-optimization/groupnorm_jax.py [--folds 3 --epochs 2 --groups 4 --bs-n-train 2000]
      python 02-optimization/groupnorm_jax.py --smoke
Look first at `group_norm` (one reshape, two means), then at groupnorm.png: which axes each norm
pools over, and test accuracy of GroupNorm and BatchNorm trained at batch sizes 2 and 64.
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
from tqdm import tqdm

from data import DataError, fashion_mnist, kfold_splits, minibatches, save_metrics
from data.cli import nonneg_int, positive_float, positive_int

# %% [markdown]
# ## The normalizations


# %%
def group_norm(x, gamma, beta, num_groups, eps=1e-5):
    """GroupNorm of x (N, C, H, W) (or any (N, C, ...)) with per-channel gamma, beta (C,); as F.group_norm."""
    N, C = x.shape[:2]
    if num_groups < 1 or C % num_groups:
        raise ValueError(f"num_groups={num_groups} must be a positive divisor of the channel count C={C}")
    g = x.reshape(N, num_groups, -1)  # (N, G, C/G * H * W): each row of a group is one normalisation set
    mu = g.mean(axis=2, keepdims=True)  # (N, G, 1)
    var = jnp.square(g - mu).mean(axis=2, keepdims=True)  # (N, G, 1), biased
    xhat = ((g - mu) / jnp.sqrt(var + eps)).reshape(x.shape)  # (N, C, H, W)
    shape = (1, C) + (1,) * (x.ndim - 2)  # (C,) -> (1, C, 1, 1)
    return gamma.reshape(shape) * xhat + beta.reshape(shape)


def batch_norm(x, gamma, beta, stats, training, momentum=0.1, eps=1e-5):
    """BatchNorm for the comparison, on x (N, C) or (N, C, H, W): statistics per channel over N (and H, W)
    from the batch in training, the running ones in eval; as F.batch_norm.

    Returns (y, new_stats); stats = {"mean": (C,), "var": (C,)} (the running var is unbiased, as torch's).
    """
    axes = (0, *range(2, x.ndim))  # every axis but the channel's
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)  # (C,) -> (1, C) or (1, C, 1, 1)
    if training:
        mean, var = x.mean(axis=axes), x.var(axis=axes)  # (C,), biased
        m = x.size // x.shape[1]  # values per channel
        stats = {"mean": (1 - momentum) * stats["mean"] + momentum * mean,
                 "var": (1 - momentum) * stats["var"] + momentum * var * m / (m - 1)}
    else:
        mean, var = stats["mean"], stats["var"]
    xhat = (x - mean.reshape(shape)) / jnp.sqrt(var.reshape(shape) + eps)
    return gamma.reshape(shape) * xhat + beta.reshape(shape), jax.lax.stop_gradient(stats)


# %% [markdown]
# ## The CNN as pure functions of a parameter pytree


# %%
def init_params(key, channels=(16, 32), hidden=64, dtype=jnp.float32):
    """He initialisation W ~ N(0, 2 / fan_in), zero biases, gamma = 1, beta = 0; one fresh key per layer."""
    c1, c2 = channels
    k1, k2, k3, k4 = jax.random.split(key, 4)

    def he(k, shape, fan_in):
        return jax.random.normal(k, shape, dtype) * jnp.sqrt(2.0 / fan_in).astype(dtype)

    params = {}
    for l, (k, c_in, c_out) in enumerate([(k1, 1, c1), (k2, c1, c2)], start=1):
        params[f"conv{l}"] = {"W": he(k, (c_out, c_in, 3, 3), c_in * 9), "b": jnp.zeros(c_out, dtype)}  # OIHW
        params[f"norm{l}"] = {"gamma": jnp.ones(c_out, dtype), "beta": jnp.zeros(c_out, dtype)}
    params["fc"] = {"W": he(k3, (c2 * 7 * 7, hidden), c2 * 7 * 7), "b": jnp.zeros(hidden, dtype)}
    params["norm3"] = {"gamma": jnp.ones(hidden, dtype), "beta": jnp.zeros(hidden, dtype)}
    params["head"] = {"W": he(k4, (hidden, 10), hidden), "b": jnp.zeros(10, dtype)}
    return params


def init_stats(channels=(16, 32), hidden=64, dtype=jnp.float32):
    """BatchNorm's running statistics (mean 0, var 1) per norm layer; GroupNorm has none and ignores them."""
    widths = [*channels, hidden]
    return {f"norm{l}": {"mean": jnp.zeros(c, dtype), "var": jnp.ones(c, dtype)} for l, c in enumerate(widths, 1)}


def conv3x3(x, p):
    """Same-padded 3x3 convolution, (N, C_in, H, W) -> (N, C_out, H, W)."""
    y = jax.lax.conv_general_dilated(x, p["W"], (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return y + p["b"][None, :, None, None]


def max_pool2(x):
    """2x2 max pooling with stride 2, (N, C, H, W) -> (N, C, H/2, W/2)."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")


def forward(params, stats, x, norm="gn", num_groups=4, training=True):
    """logits (N, 10) and the new BatchNorm statistics for x (N, 1, 28, 28):
    [conv - norm - ReLU - pool] x 2, linear - norm - ReLU, linear."""
    new_stats = {}

    def normalize(h, l):  # the l-th norm layer, GroupNorm or BatchNorm, on (N, C, H, W) or (N, C)
        p = params[f"norm{l}"]
        if norm == "gn":
            h, new_stats[f"norm{l}"] = group_norm(h, p["gamma"], p["beta"], num_groups), stats[f"norm{l}"]
        else:
            h, new_stats[f"norm{l}"] = batch_norm(h, p["gamma"], p["beta"], stats[f"norm{l}"], training)
        return h

    h = x
    for l in (1, 2):
        h = conv3x3(h, params[f"conv{l}"])  # (N, c_l, 28/2^(l-1), ...)
        h = max_pool2(jnp.maximum(normalize(h, l), 0))  # (N, c_l, 14, 14), then (N, c_2, 7, 7)
    h = h.reshape(len(h), -1) @ params["fc"]["W"] + params["fc"]["b"]  # (N, hidden)
    h = jnp.maximum(normalize(h, 3), 0)  # one value per example and feature: BatchNorm's hardest case
    return h @ params["head"]["W"] + params["head"]["b"], new_stats


def cross_entropy(logits, y):
    log_p = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)  # (N, 10)
    return -jnp.take_along_axis(log_p, y[:, None], axis=1).mean()


def loss_fn(params, stats, x, y, norm, num_groups):
    logits, new_stats = forward(params, stats, x, norm, num_groups, training=True)
    return cross_entropy(logits, y), new_stats


# %% [markdown]
# ## Adam as pure functions


# %%
# Adam, as taught in 02-optimization/adam_numpy.py
def adam_init(params):
    """Zero first and second moments m, v shaped like params, and the step count t = 0."""
    return {"t": jnp.zeros((), jnp.int32), "m": jax.tree.map(jnp.zeros_like, params),
            "v": jax.tree.map(jnp.zeros_like, params)}


def adam_update(params, grads, state, lr, b1=0.9, b2=0.999, eps=1e-8):
    """One Adam step (Kingma and Ba, Algorithm 1); returns (params, state).

        m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2            moment estimates
        mhat = m / (1 - b1^t),    vhat = v / (1 - b2^t)              bias correction (m, v start at 0)
        theta <- theta - lr mhat / (sqrt(vhat) + eps)
    """
    t = state["t"] + 1
    m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
    v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)
    params = jax.tree.map(lambda p, m, v: p - lr * (m / (1 - b1**t)) / (jnp.sqrt(v / (1 - b2**t)) + eps), params, m, v)
    return params, {"t": t, "m": m, "v": v}


@partial(jax.jit, static_argnames=("norm", "num_groups"))
def train_step(params, stats, opt_state, X, y, idx, lr, norm, num_groups):
    """Gather the minibatch, forward, backward (jax.grad) and the Adam update, compiled into one XLA program."""
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, X[idx], y[idx], norm, num_groups)
    params, opt_state = adam_update(params, grads, opt_state, lr)
    return params, stats, opt_state, loss


@partial(jax.jit, static_argnames=("norm", "num_groups"))
def predict(params, stats, X, norm, num_groups):
    return forward(params, stats, X, norm, num_groups, training=False)[0].argmax(axis=1)


def accuracy(params, stats, X, y, norm, num_groups, batch_size=1000):
    """Eval-mode accuracy (BatchNorm uses its running statistics), in chunks of batch_size."""
    pred = jnp.concatenate([predict(params, stats, X[i : i + batch_size], norm, num_groups)
                            for i in range(0, len(X), batch_size)])
    return float((pred == y).mean())


# %% [markdown]
# ## Data and training


# %%
def load_data(data_dir=None, n_train=6000, n_test=None):
    """The first n_train training and n_test test images as float32 (N, 1, 28, 28), standardised."""
    Xtr, ytr = fashion_mnist("train", data_dir)
    Xte, yte = fashion_mnist("test", data_dir)
    Xtr, ytr, Xte, yte = Xtr[:n_train], ytr[:n_train], Xte[:n_test], yte[:n_test]
    Xtr = Xtr.reshape(len(Xtr), 1, 28, 28).astype(np.float32) / 255
    Xte = Xte.reshape(len(Xte), 1, 28, 28).astype(np.float32) / 255
    mean, std = Xtr.mean(), Xtr.std()
    return (Xtr - mean) / std, ytr, (Xte - mean) / std, yte


def fit(key, X, y, epochs, batch_size, lr, rng, norm="gn", num_groups=4, channels=(16, 32), hidden=64, tag="train",
        eval_data=None):
    """Fresh He-initialised CNN trained with Adam on the device arrays (X, y); returns params, stats, history.
    With eval_data = (X, y), history["test_acc"] holds the eval-mode accuracy on it after every epoch."""
    params, stats = init_params(key, channels, hidden), init_stats(channels, hidden)
    opt_state = adam_init(params)
    hist = {"step_loss": [], "train_loss": [], "epoch_s": [], "test_acc": []}
    steps = -(-len(X) // batch_size)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        losses = []
        for idx in tqdm(minibatches(len(X), batch_size, rng), total=steps, desc=f"{tag} epoch {epoch}",
                        leave=False, disable=not sys.stdout.isatty()):
            params, stats, opt_state, loss = train_step(params, stats, opt_state, X, y, idx, lr, norm, num_groups)
            losses.append(loss)
        hist["step_loss"].extend(np.asarray(jnp.stack(losses)).tolist())  # one transfer per epoch
        hist["epoch_s"].append(time.perf_counter() - t0)
        hist["train_loss"].append(float(np.mean(hist["step_loss"][-steps:])))
        msg = f"[{tag}] epoch {epoch}/{epochs}  train loss {hist['train_loss'][-1]:.4f}"
        if eval_data is not None:
            hist["test_acc"].append(accuracy(params, stats, *eval_data, norm, num_groups))
            msg += f"  test acc {hist['test_acc'][-1]:.4f}"
        print(f"{msg} | {hist['epoch_s'][-1]:.2f} s", flush=True)
    return params, stats, hist


# %% [markdown]
# ## The figure


# %%
def plot_results(curves, path, title):
    """Left: which (example, channel) cells share one mean and variance for BN, LN, IN, GN. Right: the experiment,
    test accuracy after each epoch; curves[norm][batch_size] = [acc after epoch 1, 2, ...]."""
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    axes = fig.subplots(1, 5, width_ratios=[1, 1, 1, 1, 2.4])
    N, C = 4, 8
    n, c = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")  # rows: examples, columns: channels
    G = 4  # groups of C/G = 2 channels in the diagram
    sets = {"BatchNorm\n(per channel, over N, H, W)": c, "LayerNorm = GN, G=1\n(per example, over C, H, W)": n,
            "InstanceNorm = GN, G=C\n(every cell its own set)": n * C + c,
            f"GroupNorm, G={G}\n(per example and group)": n * G + c // (C // G)}
    for ax, (name, ids) in zip(axes[:4], sets.items()):
        ax.imshow(ids % 20, cmap="tab20", vmin=0, vmax=19)
        ax.set(title=name, xlabel="channel c", ylabel="example n", xticks=range(C), yticks=range(N))
        ax.title.set_fontsize(8)
    ax = axes[4]
    for style, (norm, by_bs) in zip(("-", "--"), curves.items()):
        for i, (bs, acc) in enumerate(by_bs.items()):
            ax.plot(np.arange(1, len(acc) + 1), acc, style, marker="o", color=f"C{i}",
                    label=f"{norm}, batch size {bs} (last 3 epochs: {np.mean(acc[-3:]):.3f})")
    ax.set(xlabel="epoch (batch size 2: 32x more Adam steps)", ylabel="test accuracy (eval mode)", ylim=(0, 1),
           title="the same CNN with each norm")
    ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=120)


# %% [markdown]
# ## Main: K-fold CV of the GroupNorm CNN, the final model and test set, then batch size 2 vs 64


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=positive_int, help="epochs per CV / final run (default 2; 1 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, help="CV/final minibatch (default 64; 40 smoke)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate, every run (default 1e-3)")
    p.add_argument("--groups", type=positive_int, default=4, help="GroupNorm's number of groups G (default 4)")
    p.add_argument("--channels", type=positive_int, nargs=2, metavar=("C1", "C2"),
                   help="channels of the two convs (default 16 32; 8 16 with --smoke)")
    p.add_argument("--folds", type=positive_int, help="K of K-fold cross-validation (default 3; 2 with --smoke)")
    p.add_argument("--n-train", type=positive_int, help="training images used (default 6000; 2000 smoke)")
    p.add_argument("--bs-n-train", type=positive_int, help="images of the batch-size runs (default 2000; 384 smoke)")
    p.add_argument("--hidden", type=positive_int, nargs="+", default=[64],
                   help="width of the one normalised fully connected layer (default 64)")
    p.add_argument("--bs-epochs", type=positive_int, help="epochs of the batch-size runs (default 8; 1 smoke)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds weights, folds and minibatch order (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/<script>)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = p.parse_args(argv)
    if args.smoke:
        defaults = dict(epochs=1, batch_size=40, channels=[8, 16], folds=2, n_train=2000, bs_n_train=384, bs_epochs=1)
    else:
        defaults = dict(epochs=2, batch_size=64, channels=[16, 32], folds=3, n_train=6000, bs_n_train=2000, bs_epochs=8)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.folds < 2:
        p.error("argument --folds: must be at least 2")
    if len(args.hidden) != 1:
        p.error("argument --hidden: this CNN has one fully connected hidden layer; give one width")
    if any(c % args.groups for c in [*args.channels, *args.hidden]):
        p.error(f"--groups {args.groups} must divide the channel counts {args.channels} and --hidden {args.hidden}")
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        Xtr, ytr, Xte, yte = load_data(args.data_dir, args.n_train, 1000 if args.smoke else None)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    channels, G = tuple(args.channels), args.groups
    key = jax.random.PRNGKey(args.seed)
    data_rng = np.random.default_rng(args.seed)
    print(f"groupnorm_jax: CNN {channels}, GroupNorm G={G}, {len(Xtr)} train / {len(Xte)} test images, "
          f"Adam lr {args.lr}, on {jax.devices()[0].platform}")

    cv_acc = []
    for k, (tr, va) in enumerate(kfold_splits(len(Xtr), args.folds, args.seed)):
        key, init_key = jax.random.split(key)
        params, stats, _ = fit(init_key, jnp.asarray(Xtr[tr]), jnp.asarray(ytr[tr]), args.epochs, args.batch_size,
                               args.lr, data_rng, "gn", G, channels, args.hidden[0], tag=f"fold {k + 1}/{args.folds}")
        cv_acc.append(accuracy(params, stats, jnp.asarray(Xtr[va]), jnp.asarray(ytr[va]), "gn", G))
        print(f"fold {k + 1}: validation accuracy {cv_acc[-1]:.4f}")
    print(f"cross-validation accuracy: {np.mean(cv_acc):.4f} +- {np.std(cv_acc, ddof=1):.4f}")

    key, init_key = jax.random.split(key)
    Xte_d, yte_d = jnp.asarray(Xte), jnp.asarray(yte)
    params, stats, final = fit(init_key, jnp.asarray(Xtr), jnp.asarray(ytr), args.epochs, args.batch_size, args.lr,
                               data_rng, "gn", G, channels, args.hidden[0], tag="final")
    test_acc = accuracy(params, stats, Xte_d, yte_d, "gn", G)
    print(f"test accuracy {test_acc:.4f}")

    # Batch-size experiment: the same initial weights and data for GroupNorm and BatchNorm, batch size 2 and 64,
    # the same number of epochs, test accuracy after every epoch.
    key, init_key = jax.random.split(key)
    Xs, ys = jnp.asarray(Xtr[: args.bs_n_train]), jnp.asarray(ytr[: args.bs_n_train])
    Xe, ye = Xte_d[:2000], yte_d[:2000]
    curves = {"GroupNorm": {}, "BatchNorm": {}}
    for norm, label in [("gn", "GroupNorm"), ("bn", "BatchNorm")]:
        for bs in (2, 64):
            rng = np.random.default_rng(args.seed)  # the same minibatch order for both norms
            _, _, hist = fit(init_key, Xs, ys, args.bs_epochs, bs, args.lr, rng, norm, G, channels, args.hidden[0],
                             f"{label} bs {bs}", (Xe, ye))
            curves[label][bs] = hist["test_acc"]
            print(f"{label} batch size {bs}: test accuracy {np.mean(hist['test_acc'][-3:]):.4f} (last 3 epochs' mean)")

    plot_results(curves, out_dir / "groupnorm.png",
                 f"groupnorm_jax: CV {np.mean(cv_acc):.3f}, test {test_acc:.3f} (G={G}); batch-size runs: "
                 f"{args.bs_epochs} epoch(s) on {len(Xs)} images, tested on {len(Xe)}")
    metrics = {"script": Path(__file__).stem, "test_acc": test_acc, "cv_fold_acc": cv_acc,
               "cv_acc_mean": float(np.mean(cv_acc)), "cv_acc_std": float(np.std(cv_acc, ddof=1)),
               "first_loss": final["step_loss"][0], "final_train_loss": final["train_loss"][-1],
               # at batch size 2 single epochs are noisy: the summary is the mean test accuracy of the last 3 epochs
               **{f"{n}_acc_bs{bs}": float(np.mean(curves[label][bs][-3:]))
                  for n, label in [("gn", "GroupNorm"), ("bn", "BatchNorm")] for bs in (2, 64)},
               "bs_curves": {norm: {str(bs): acc for bs, acc in by_bs.items()} for norm, by_bs in curves.items()},
               "sec_per_epoch": float(np.median(final["epoch_s"])),
               "config": {**vars(args), "n_test": len(Xte), "device": jax.devices()[0].platform},
               "history": {k: v for k, v in final.items() if k != "step_loss"}}
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"wrote {out_dir}/metrics.json and groupnorm.png")
    return metrics


if __name__ == "__main__":
    main()
