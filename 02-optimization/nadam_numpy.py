"""NAdam (Adam with Nesterov momentum), from scratch in NumPy, training an MLP on Fashion-MNIST.

Adam's moments, with the step taken from a Nesterov look-ahead combination of the first moment and
the current gradient, under a momentum schedule mu_t. With m_0 = v_0 = 0, t counting steps from 1
and psi = momentum_decay:

    g_t = (1/|B|) sum_{i in B} grad_theta loss_i(theta_{t-1})      (+ weight_decay * theta_{t-1})
    mu_t = b1 * (1 - 0.5 * 0.96^(t * psi)),  mu_{t+1} likewise      momentum schedule
    m_t = b1 * m_{t-1} + (1 - b1) * g_t                             first moment, as Adam
    v_t = b2 * v_{t-1} + (1 - b2) * g_t^2,   vhat_t = v_t / (1 - b2^t)
    mbar_t = mu_{t+1} * m_t / (1 - prod_{i<=t+1} mu_i) + (1 - mu_t) * g_t / (1 - prod_{i<=t} mu_i)
    theta_t = theta_{t-1} - lr * mbar_t / (sqrt(vhat_t) + eps)

Why, after AdamW: Adam steps along mhat_t = (b1 * m_{t-1} + (1 - b1) * g_t) / (1 - b1^t), whose
momentum part b1 * m_{t-1} is the velocity of the steps already taken: classical momentum.
Nesterov's idea (nesterov_numpy.py: theta -= lr * (g + mu * v_t)) is to look ahead: the momentum
the next step will apply is already known, so apply it now. Dozat does this inside Adam by putting
the updated m_t, with the next step's coefficient mu_{t+1}, in place of b1 * m_{t-1}, plus the
current gradient's share (1 - mu_t) * g_t; each is bias-corrected by a product of the mu's instead
of 1 - b1^t. The step so reacts one step sooner when the gradient turns. The schedule warms the
momentum up: mu_t starts near b1 / 2 (0.450 at t = 1) and rises toward b1 only over thousands of
steps (0.483 after one epoch here, 0.691 after the default run's 4,690 steps).
What it still gets wrong: its second moment is Adam's (Yogi's point stands), and weight decay is
L2 in the gradient, divided by sqrt(vhat) as AdamW showed (torch.optim.NAdam's
decoupled_weight_decay=True gives the AdamW form; not implemented here).

Conventions: the update is torch.optim.NAdam's (decoupled_weight_decay=False), with its defaults
lr 2e-3, psi 4e-3; the schedule is the paper's (0.96^(t/250), psi = 1/250), and m_t keeps Adam's
constant b1 as torch (and Keras) do. The running product prod_{i<=t} mu_i is kept in the state.

Reading: Dozat (2016), "Incorporating Nesterov Momentum into Adam", ICLR workshop,
https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ; d2l 12.6 (momentum) and 12.10 (Adam);
PyTorch docs "torch.optim.NAdam".
Arc: Optimization -- Nadam (Dozat 2016) in NumPy on Fashion-MNIST.

Run:  python 02-optimization/nadam_numpy.py [--lr 2e-3 --batch-size 128 --epochs 10]
      python 02-optimization/nadam_numpy.py --smoke
Look first at `NAdam.step`: the line for mbar is the whole difference from Adam.
"""

# %%
import argparse
import sys
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from tqdm import tqdm

from data import DataError, fashion_mnist, minibatches, save_metrics

# %% [markdown]
# ## The optimizer


# %%
class NAdam:
    """Adam with Nesterov's look-ahead on the first moment and a momentum schedule; arrays updated in place."""

    def __init__(self, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3):
        if lr < 0:
            raise ValueError(f"Invalid learning rate: {lr} (must be >= 0)")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta} (betas[{i}] must be in [0, 1))")
        if eps <= 0:
            raise ValueError(f"Invalid epsilon value: {eps} (eps must be > 0)")
        if weight_decay < 0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay} (must be >= 0)")
        if momentum_decay < 0:
            raise ValueError(f"Invalid momentum_decay value: {momentum_decay} (must be >= 0)")
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.momentum_decay = momentum_decay
        self.t, self.mu_product = 0, 1.0  # step count t and prod_{i<=t} mu_i, shared by all parameters
        self.m, self.v = None, None  # moments per parameter, made on the first step

    def step(self, params, grads):
        if self.m is None:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
        self.t += 1
        t, (b1, b2), psi = self.t, self.betas, self.momentum_decay
        mu = b1 * (1 - 0.5 * 0.96 ** (t * psi))  # momentum schedule mu_t
        mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))  # mu_{t+1}, the next step's coefficient
        self.mu_product *= mu  # prod_{i<=t} mu_i
        mu_product_next = self.mu_product * mu_next  # prod_{i<=t+1} mu_i
        for p, g, m, v in zip(params, grads, self.m, self.v):
            if self.weight_decay:
                g = g + self.weight_decay * p  # L2 penalty folded into the gradient (as torch's NAdam)
            m[:] = b1 * m + (1 - b1) * g  # first moment, as Adam
            v[:] = b2 * v + (1 - b2) * g * g  # second moment, as Adam
            vhat = v / (1 - b2**t)  # bias correction
            mbar = mu_next * m / (1 - mu_product_next) + (1 - mu) * g / (1 - self.mu_product)  # Nesterov look-ahead
            p -= self.lr * mbar / (np.sqrt(vhat) + self.eps)


# %% [markdown]
# ## The network: a 784-256-128-10 MLP with hand-written backward (as 01-foundations/mlp_numpy.py)


# %%
def init_params(sizes, rng, dtype=np.float32):
    """He initialisation: W_l ~ N(0, 2 / D_{l-1}), b_l = 0."""
    params = {}
    for l, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        params[f"W{l}"] = (rng.standard_normal((d_in, d_out)) * np.sqrt(2.0 / d_in)).astype(dtype)
        params[f"b{l}"] = np.zeros(d_out, dtype)
    return params


def loss_and_grads(params, x, y):
    """Mean softmax cross-entropy of the MLP on (x, y), its gradients {"W1": ..., ...} and the logits."""
    L = len(params) // 2
    hs, h = [], x
    for l in range(1, L + 1):  # forward: z_l = h_{l-1} W_l + b_l, h_l = max(z_l, 0) below the top
        hs.append(h)
        h = h @ params[f"W{l}"] + params[f"b{l}"]
        if l < L:
            h = np.maximum(h, 0)
    logits = h
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -log_p[np.arange(len(y)), y].mean()
    dz = np.exp(log_p)  # dL/dlogits = (softmax - onehot) / B
    dz[np.arange(len(y)), y] -= 1
    dz /= len(y)
    grads = {}
    for l in range(L, 0, -1):  # backward: dW = h^T dz, db = sum dz, dh = dz W^T, through the ReLU
        grads[f"W{l}"], grads[f"b{l}"] = hs[l - 1].T @ dz, dz.sum(axis=0)
        if l > 1:
            dz = (dz @ params[f"W{l}"].T) * (hs[l - 1] > 0)
    return loss, grads, logits


# %% [markdown]
# ## Data and training


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


def evaluate(params, X, y):
    """Mean loss and accuracy on (X, y)."""
    loss, _, logits = loss_and_grads(params, X, y)
    return float(loss), float((logits.argmax(axis=1) == y).mean())


def plot_loss(step_losses, epoch_losses, steps_per_epoch, path, title):
    """Training loss per step (light) with its moving average, and per epoch (dots)."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    steps = np.arange(1, len(step_losses) + 1)
    k = max(1, steps_per_epoch // 10)
    ax.plot(steps, step_losses, color="C0", alpha=0.25, lw=0.6, label="minibatch loss")
    ax.plot(steps[k - 1 :], np.convolve(step_losses, np.ones(k) / k, "valid"), color="C0", label=f"mean of {k} steps")
    ax.plot(steps_per_epoch * np.arange(1, len(epoch_losses) + 1), epoch_losses, "ko", label="epoch mean")
    ax.set(xlabel="step", ylabel="training loss", yscale="log", title=title)
    ax.legend()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 10; 1 with --smoke)")
    p.add_argument("--batch-size", type=int, default=None, help="minibatch size (default 128; 32 with --smoke)")
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate (default 2e-3)")
    p.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999), help="decays of m and v (default 0.9 0.999)")
    p.add_argument("--eps", type=float, default=1e-8, help="added to sqrt(vhat) in the denominator (default 1e-8)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay (default 0)")
    p.add_argument("--momentum-decay", type=float, default=4e-3,
                   help="psi in the momentum schedule mu_t (default 0.004)")
    p.add_argument("--hidden", type=int, nargs="+", default=None,
                   help="hidden widths (default 256 128; 64 with --smoke)")
    p.add_argument("--seed", type=int, default=0, help="seeds weights and minibatch order (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics and figures go (default runs/<script>)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = p.parse_args(argv)
    args.epochs = args.epochs if args.epochs is not None else (1 if args.smoke else 10)
    args.hidden = args.hidden or ([64] if args.smoke else [256, 128])
    args.batch_size = args.batch_size or (32 if args.smoke else 128)
    if min(args.epochs, args.batch_size, *args.hidden) < 1:
        p.error("--epochs, --batch-size and --hidden must be positive")
    try:
        opt = NAdam(lr=args.lr, betas=args.betas, eps=args.eps, weight_decay=args.weight_decay,
                    momentum_decay=args.momentum_decay)
    except ValueError as exc:
        p.error(str(exc))
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        Xtr, ytr, Xte, yte = load_data(args.data_dir, args.smoke)
    except DataError as exc:
        sys.exit(f"error: {exc}")

    sizes = [Xtr.shape[1], *args.hidden, 10]
    params = init_params(sizes, np.random.default_rng([args.seed, 1]))
    data_rng = np.random.default_rng(args.seed)
    step_losses, epoch_losses, epoch_s = [], [], []
    steps_per_epoch = -(-len(Xtr) // args.batch_size)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        for idx in tqdm(minibatches(len(Xtr), args.batch_size, data_rng), total=steps_per_epoch,
                        desc=f"epoch {epoch}", leave=False, disable=not sys.stdout.isatty()):
            loss, grads, _ = loss_and_grads(params, Xtr[idx], ytr[idx])
            opt.step(list(params.values()), [grads[name] for name in params])
            step_losses.append(float(loss))
        epoch_s.append(time.perf_counter() - t0)
        epoch_losses.append(float(np.mean(step_losses[-steps_per_epoch:])))
        test_loss, test_acc = evaluate(params, Xte, yte)
        print(f"epoch {epoch:2d}/{args.epochs}  train loss {epoch_losses[-1]:.4f} | test loss {test_loss:.4f} "
              f"acc {test_acc:.4f} | {epoch_s[-1]:.2f} s", flush=True)

    plot_loss(step_losses, epoch_losses, steps_per_epoch, out_dir / "loss.png", f"{Path(__file__).stem}, lr {args.lr}")
    metrics = {"script": Path(__file__).stem, "test_acc": test_acc, "test_loss": test_loss,
               "first_loss": step_losses[0], "final_train_loss": epoch_losses[-1],
               "sec_per_epoch": float(np.median(epoch_s)), "config": vars(args), "epoch_losses": epoch_losses}
    save_metrics(out_dir, metrics, __file__, argv)
    return metrics


if __name__ == "__main__":
    main()
