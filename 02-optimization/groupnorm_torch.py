"""Group normalization as a from-scratch torch nn.Module, in a small CNN on Fashion-MNIST, with Adam and K-fold CV.

GroupNorm (Wu and He 2018) splits the C channels of each example into G groups of C/G channels and
standardises each group over its channels AND all spatial positions, then applies a per-channel scale
and shift. For example n, group g (the channels S_g) and the m = (C/G) * H * W values in it:

    mu_ng      = (1/m) sum_{c in S_g, h, w} x_nchw                 mean of the group's values
    sigma2_ng  = (1/m) sum_{c in S_g, h, w} (x_nchw - mu_ng)^2     variance (biased: divides by m)
    xhat_nchw  = (x_nchw - mu_ng) / sqrt(sigma2_ng + eps)
    y_nchw     = gamma_c * xhat_nchw + beta_c                     `weight`, `bias`: one per CHANNEL (C,)

Which axes each norm averages over, for (N, C, H, W) activations:
    BatchNorm     over (N, H, W) for each channel       -- mixes the examples of a batch
    LayerNorm     over (C, H, W) for each example       -- GroupNorm with G = 1
    InstanceNorm  over (H, W) for each example and channel   -- GroupNorm with G = C
    GroupNorm     over (C/G channels, H, W) for each example and group: between the two
One group is too rigid for conv features, whose channels differ; one channel per group throws away
each channel's overall contrast; a few groups keep related channels' relative scales.

No statistic ever crosses the N axis: an example's output is the same in a batch of 2 or of 64 (tests
check it), training equals inference, and there are no running statistics. BatchNorm's statistics at
batch size 2 come from 2 examples: noisy in training, and its running averages then describe inputs
the network never saw. After a convolution each statistic still pools 2 x H x W values; after a fully
connected layer a batch of 2 standardises every feature to exactly -1 or +1. So this CNN has a norm
in all three hidden layers (two conv, one fully connected), and the experiment trains it with each
norm at batch size 2 and 64 for the same number of epochs and plots test accuracy after every epoch.

Reading: Y. Wu and K. He (2018), "Group Normalization", ECCV, https://arxiv.org/abs/1803.08494
(figure 2 draws the four norms; section 3 the definition); D. P. Kingma and J. Ba (2015), "Adam",
https://arxiv.org/abs/1412.6980 (here torch.optim.Adam; adam_torch.py writes it out).
As torch.nn.GroupNorm (affine); tests/test_groupnorm_torch.py checks outputs and gradients.
Arc: Optimization -- group normalization in PyTorch, with Adam and K-fold cross-validation.

Run:  python 02-optimization/groupnorm_torch.py       (3-fold CV on 6k images, final model, batch-size study)
      python 02-optimization/groupnorm_torch.py --smoke
      python 02-optimization/groupnorm_torch.py --bs-n-train 1000 --bs-epochs 4 --device auto
Look first at `GroupNorm.forward` (a reshape to (N, G, C/G * H * W) and two lines of statistics), then at
the figure: the axes each norm averages over, and test accuracy at batch size 2 and 64 for both norms.
"""

# %%
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from tqdm import tqdm

from data import DataError, fashion_mnist, kfold_splits, minibatches, save_metrics
from data.cli import nonneg_int, positive_float, positive_int

# %% [markdown]
# ## The layer


# %%
class GroupNorm(nn.Module):
    """y = gamma_c * (x - mu_ng) / sqrt(sigma2_ng + eps) + beta_c, statistics per example n and channel group g.

    Input (N, C, *) with C = num_channels; `weight` (gamma, ones) and `bias` (beta, zeros) have shape (C,).
    No buffers: train and eval modes compute the same thing, as torch.nn.GroupNorm.
    """

    def __init__(self, num_groups, num_channels, eps=1e-5):
        super().__init__()
        for name, v in [("num_groups", num_groups), ("num_channels", num_channels)]:
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Invalid {name}: {v!r} (must be a positive int)")
        if num_channels % num_groups:
            raise ValueError(f"num_groups ({num_groups}) must divide num_channels ({num_channels})")
        if not eps > 0:
            raise ValueError(f"Invalid eps: {eps} (must be > 0)")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.weight = nn.Parameter(torch.ones(num_channels))  # gamma
        self.bias = nn.Parameter(torch.zeros(num_channels))  # beta

    def forward(self, x):
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"GroupNorm({self.num_groups}, {self.num_channels}) expects (N, {self.num_channels}, *) "
                             f"input, got shape {tuple(x.shape)}")
        N, G = x.shape[0], self.num_groups
        xg = x.reshape(N, G, -1)  # (N, G, C/G * spatial): one row per example and group
        mean = xg.mean(dim=2, keepdim=True)  # mu (N, G, 1)
        var = (xg - mean).square().mean(dim=2, keepdim=True)  # sigma2 (N, G, 1), biased
        xhat = ((xg - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape)  # back to (N, C, *)
        shape = [1, -1] + [1] * (x.dim() - 2)  # (C,) -> (1, C, 1, ...) to broadcast over x
        return self.weight.view(shape) * xhat + self.bias.view(shape)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"


# %% [markdown]
# ## The network and data


# %%
class CNN(nn.Module):
    """[conv3x3 - norm - ReLU - maxpool2] x 2, linear - norm - ReLU, linear to 10.   (B, 1, 28, 28) -> (B, 10).

    norm = "group" (our GroupNorm with `groups` groups) or "batch" (torch's BatchNorm2d / BatchNorm1d, the
    baseline). Weights are He-initialised from `generator`, so nets built from the same seed start alike.
    """

    def __init__(self, channels=(16, 32), norm="group", groups=4, generator=None, hidden=64):
        super().__init__()
        c1, c2 = channels
        conv_norm = {"group": lambda c: GroupNorm(groups, c), "batch": nn.BatchNorm2d}[norm]
        fc_norm = {"group": lambda c: GroupNorm(groups, c), "batch": nn.BatchNorm1d}[norm]  # on (B, hidden)
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), conv_norm(c1), nn.ReLU(), nn.MaxPool2d(2),  # (B, c1, 14, 14)
            nn.Conv2d(c1, c2, 3, padding=1), conv_norm(c2), nn.ReLU(), nn.MaxPool2d(2),  # (B, c2, 7, 7)
            nn.Flatten(), nn.Linear(c2 * 7 * 7, hidden), fc_norm(hidden), nn.ReLU(),  # (B, hidden)
        )
        self.head = nn.Linear(hidden, 10)
        for layer in [*self.features, self.head]:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu", generator=generator)
                nn.init.zeros_(layer.bias)

    def forward(self, x):
        return self.head(self.features(x))


def load_data(data_dir=None, n_train=6000, n_test=2000):
    """The first n_train / n_test Fashion-MNIST images as float32 (N, 1, 28, 28), standardised with train stats."""
    Xtr, ytr = fashion_mnist("train", data_dir)
    Xte, yte = fashion_mnist("test", data_dir)
    Xtr, ytr, Xte, yte = Xtr[:n_train], ytr[:n_train], Xte[:n_test], yte[:n_test]
    Xtr = Xtr.reshape(len(Xtr), 1, 28, 28).astype(np.float32) / 255
    Xte = Xte.reshape(len(Xte), 1, 28, 28).astype(np.float32) / 255
    mean, std = Xtr.mean(), Xtr.std()
    return [torch.from_numpy(a) for a in ((Xtr - mean) / std, ytr.astype(np.int64), (Xte - mean) / std,
                                          yte.astype(np.int64))]


@torch.no_grad()
def evaluate(model, X, y, batch_size=1000):
    """Mean loss and accuracy on (X, y), in eval mode (BatchNorm: running statistics; GroupNorm: unchanged)."""
    was_training = model.training
    model.eval()
    logits = torch.cat([model(X[i : i + batch_size]) for i in range(0, len(X), batch_size)])
    model.train(was_training)
    return F.cross_entropy(logits, y).item(), (logits.argmax(dim=1) == y).float().mean().item()


# %% [markdown]
# ## Training: one flat loop, Adam


# %%
def fit(model, X, y, epochs, batch_size, lr, rng, tag, eval_data=None):
    """Adam on (X, y) for `epochs`; returns the per-step training losses and, if eval_data = (X, y) is
    given, the eval-mode accuracy on it after every epoch."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses, accs = [], []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        for idx in tqdm(minibatches(len(X), batch_size, rng), total=-(-len(X) // batch_size),
                        desc=f"{tag} epoch {epoch}", leave=False, disable=not sys.stdout.isatty()):
            idx = torch.from_numpy(idx).to(X.device)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(X[idx]), y[idx])
            loss.backward()
            opt.step()
            losses.append(loss.item())
        n = -(-len(X) // batch_size)
        msg = f"[{tag}] epoch {epoch}/{epochs}  train loss {np.mean(losses[-n:]):.4f}"
        if eval_data is not None:
            accs.append(evaluate(model, *eval_data)[1])
            msg += f"  test acc {accs[-1]:.4f}"
        print(f"{msg} | {time.perf_counter() - t0:.2f} s", flush=True)
    return losses, accs


# %% [markdown]
# ## The figure


# %%
NORM_AXES = {  # (title, mask over (channel, example) cells sharing one mean/variance, for C=6 channels, G=2)
    "BatchNorm": lambda c, n: c == 1,
    "LayerNorm (G = 1)": lambda c, n: n == 1,
    "InstanceNorm (G = C)": lambda c, n: (n == 1) & (c == 1),
    "GroupNorm (G = 2)": lambda c, n: (n == 1) & (c < 3),
}


def plot_figure(curves, path, title):
    """Top: which (example, channel) cells share statistics in each norm. Bottom: test accuracy after each
    epoch of the batch-size runs; curves[label][batch_size] = [acc after epoch 1, 2, ...]."""
    fig = Figure(figsize=(11, 6.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.3])
    C, N = 6, 4
    c, n = np.meshgrid(np.arange(C), np.arange(N), indexing="ij")  # (C, N)
    for ax, (name, mask) in zip(top.subplots(1, 4), NORM_AXES.items()):
        ax.imshow(mask(c, n), cmap="Blues", vmin=-0.3, vmax=1.2, origin="lower")
        ax.set_xticks(np.arange(N) - 0.5, minor=True), ax.set_yticks(np.arange(C) - 0.5, minor=True)
        ax.grid(which="minor", color="white", lw=2)
        ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
        ax.set(title=name, xlabel="N (examples)", ylabel="C (channels)")
    top.suptitle("blue: the values that share one mean and variance (each cell spans all H x W positions)")
    ax = bottom.subplots()
    for style, (label, by_bs) in zip(("-", "--"), curves.items()):
        for i, (bs, acc) in enumerate(by_bs.items()):
            ax.plot(np.arange(1, len(acc) + 1), acc, style, marker="o", color=f"C{i}",
                    label=f"{label}, batch size {bs} (last 3 epochs: {np.mean(acc[-3:]):.3f})")
    ax.set(xlabel="epoch (batch size 2 takes 32x more steps per epoch)", ylabel="test accuracy (eval mode)",
           ylim=(0, 1), title=title)
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=120)


# %% [markdown]
# ## Main: K-fold cross-validation, the final model, then the batch-size experiment


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=positive_int, help="epochs per CV fold and final run (default 2; 1 smoke)")
    p.add_argument("--batch-size", type=positive_int, help="minibatch size (default 64; 32 smoke)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--groups", type=positive_int, default=4, help="GroupNorm groups (default 4; divides the widths)")
    p.add_argument("--channels", type=positive_int, nargs=2, metavar=("C1", "C2"),
                   help="channels of the two convs (default 16 32; 8 16 with --smoke)")
    p.add_argument("--folds", type=positive_int, help="K of K-fold cross-validation (default 3; 2 smoke)")
    p.add_argument("--n-train", type=positive_int, help="training images (default 6000; 1000 smoke)")
    p.add_argument("--hidden", type=positive_int, nargs="+", default=[64],
                   help="width of the one normalised fully connected layer (default 64)")
    p.add_argument("--bs-n-train", type=positive_int, help="images of the batch-size runs (default 2000; 200 smoke)")
    p.add_argument("--bs-epochs", type=positive_int, help="epochs of the batch-size runs (default 8; 1 smoke)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds weights and minibatch order (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/<script>)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = p.parse_args(argv)
    if args.smoke:
        defaults = dict(epochs=1, batch_size=32, channels=[8, 16], folds=2, n_train=2000, bs_n_train=200, bs_epochs=1)
    else:
        defaults = dict(epochs=2, batch_size=64, channels=[16, 32], folds=3, n_train=6000, bs_n_train=2000, bs_epochs=8)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not 2 <= args.folds <= args.n_train:
        p.error("argument --folds: must be at least 2 and at most --n-train")
    if len(args.hidden) != 1:
        p.error("argument --hidden: this CNN has one fully connected hidden layer; give one width")
    if any(ch % args.groups for ch in [*args.channels, *args.hidden]):
        p.error(f"--groups {args.groups} must divide --channels {args.channels} and --hidden {args.hidden}")
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    device = next(d for d, ok in available.items() if ok) if args.device == "auto" else args.device
    if not available[device]:  # the device picker of 01-foundations/mlp_torch.py
        p.error(f"--device {device}: not available on this machine")
    torch.manual_seed(args.seed)
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        data = load_data(args.data_dir, args.n_train, 500 if args.smoke else 2000)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    Xtr, ytr, Xte, yte = (a.to(device) for a in data)
    gen = torch.Generator().manual_seed(args.seed)  # weights: one stream for all models, in order
    data_rng = np.random.default_rng(args.seed)  # minibatch order

    def new_model(norm="group"):
        return CNN(args.channels, norm, args.groups, gen, args.hidden[0]).to(device)

    cv_acc = []
    for k, (tr, va) in enumerate(kfold_splits(len(Xtr), args.folds, args.seed)):
        model = new_model()
        fit(model, Xtr[tr], ytr[tr], args.epochs, args.batch_size, args.lr, data_rng, f"fold {k + 1}/{args.folds}")
        cv_acc.append(evaluate(model, Xtr[va], ytr[va])[1])
        print(f"[fold {k + 1}/{args.folds}] validation acc {cv_acc[-1]:.4f}")
    print(f"cross-validation accuracy: {np.mean(cv_acc):.4f} +- {np.std(cv_acc, ddof=1):.4f}")

    model = new_model()
    losses, _ = fit(model, Xtr, ytr, args.epochs, args.batch_size, args.lr, data_rng, "final")
    steps_per_epoch = -(-len(Xtr) // args.batch_size)
    test_loss, test_acc = evaluate(model, Xte, yte)
    print(f"test accuracy {test_acc:.4f}, test loss {test_loss:.4f}")

    # Batch-size experiment: the same CNN and initial weights, GroupNorm vs BatchNorm, batch size 2 vs 64,
    # the same number of epochs, test accuracy after every epoch.
    curves = {}
    for norm, label in [("group", f"GroupNorm (G = {args.groups})"), ("batch", "BatchNorm")]:
        curves[label] = {}
        for bs in (2, 64):
            m = CNN(args.channels, norm, args.groups, torch.Generator().manual_seed(args.seed), args.hidden[0])
            m = m.to(device)
            _, curves[label][bs] = fit(m, Xtr[: args.bs_n_train], ytr[: args.bs_n_train], args.bs_epochs, bs, args.lr,
                                       np.random.default_rng(args.seed), f"{norm} bs {bs}", (Xte, yte))
            print(f"{label} batch size {bs}: test acc {np.mean(curves[label][bs][-3:]):.4f} (last 3 epochs' mean)")
    plot_figure(curves, out_dir / "groupnorm.png", f"the same CNN with each norm: {args.bs_epochs} epoch(s) of Adam "
                f"(lr {args.lr}) on {args.bs_n_train} images, tested on {len(Xte)}")

    # batch size at 2, single epochs are noisy: the summary is the mean test accuracy of the last 3 epochs
    gn, bn = ({bs: float(np.mean(acc[-3:])) for bs, acc in by_bs.items()} for by_bs in curves.values())
    metrics = {
        "script": Path(__file__).stem, "test_acc": test_acc, "test_loss": test_loss,
        "cv_fold_acc": cv_acc, "cv_acc_mean": float(np.mean(cv_acc)), "cv_acc_std": float(np.std(cv_acc, ddof=1)),
        "first_loss": losses[0], "final_train_loss": float(np.mean(losses[-steps_per_epoch:])),
        "gn_acc_bs2": gn[2], "gn_acc_bs64": gn[64], "bn_acc_bs2": bn[2], "bn_acc_bs64": bn[64],
        "bs_curves": {label: {str(bs): acc for bs, acc in by_bs.items()} for label, by_bs in curves.items()},
        "config": vars(args),
    }
    save_metrics(out_dir, metrics, __file__, argv)
    torch.save(model.state_dict(), out_dir / "checkpoint.pt")
    print(f"wrote {out_dir}/metrics.json and groupnorm.png")
    return metrics


if __name__ == "__main__":
    main()
