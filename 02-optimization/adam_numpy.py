"""Adam, from scratch in NumPy, training an MLP on Fashion-MNIST.

Adam keeps two leaky averages per coordinate, of the gradient (momentum's) and of its square
(RMSProp's), and corrects both for starting at zero (t counts steps from 1; m_0 = v_0 = 0; elementwise):

    g_t = grad of the minibatch loss at theta_{t-1}                (+ weight_decay * theta_{t-1})
    m_t = b1 * m_{t-1} + (1 - b1) * g_t                            first moment: leaky mean of g
    v_t = b2 * v_{t-1} + (1 - b2) * g_t^2                          second moment: leaky mean of g^2
    mhat_t = m_t / (1 - b1^t)                                      bias corrections
    vhat_t = v_t / (1 - b2^t)
    theta_t = theta_{t-1} - lr * mhat_t / (sqrt(vhat_t) + eps)

Why, after RMSProp and Adadelta: they scale each coordinate by 1 / RMS[g] but step along the raw, noisy
g_t; Adam steps along the averaged direction m_t, as momentum does. And their averages start at zero
uncorrected: RMSProp's first steps are too large, Adadelta's are set by eps, not the problem. Unrolled,
m_t = (1 - b1) sum_{i<=t} b1^(t-i) g_i, so for gradients of constant mean E[m_t] = (1 - b1^t) E[g]:
dividing by 1 - b1^t (and v_t by 1 - b2^t) removes the bias, which matters most for v with b2 = 0.999,
whose average takes about 1000 steps to warm up. With it the first step is lr * g_1 / (|g_1| + eps),
about lr in every coordinate, and later steps stay of that order (paper, section 2.1): lr is a step
size in the parameters' own units, and one default works on many problems.
What it still gets wrong: v changes multiplicatively, v_t - v_{t-1} = (1 - b2) (g_t^2 - v_{t-1}), so once
gradients turn small after large ones, v shrinks by the factor b2 per step and the effective rate
lr / sqrt(vhat) grows fast, forgetting the rare large gradients (Reddi et al., 2018, show Adam can then
fail to converge); Yogi bounds the change of v by (1 - b2) g_t^2. And the L2 term folded into g is
divided by sqrt(vhat) like the rest, so weights with large gradients are decayed less: under adaptive
scaling L2 is not weight decay; AdamW decouples the decay from the gradient.

Reading: D. P. Kingma and J. Ba (2015), "Adam: A Method for Stochastic Optimization", ICLR,
https://arxiv.org/abs/1412.6980 (Algorithm 1, its defaults); d2l 12.10 "Adam",
https://d2l.ai/chapter_optimization/adam.html. Update rule as torch.optim.Adam with amsgrad=False (see
../shared/reference); both follow Algorithm 1, not the paper's reordered "eps-hat" form that TensorFlow uses.
Arc: Optimization -- Adam in NumPy on Fashion-MNIST.

Run:  python 02-optimization/adam_numpy.py [--lr 1e-3 --betas 0.9 0.999 --batch-size 128 --epochs 10]
      python 02-optimization/adam_numpy.py --smoke
Look first at `Adam.step`: the two moments, then the bias corrections that undo their zero start;
then at the loss curve's first steps, beside rmsprop_numpy.py's: no jump, as the first step is lr.
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
class Adam:
    """theta <- theta - lr * mhat / (sqrt(vhat) + eps), for a list of arrays updated in place."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if lr < 0:
            raise ValueError(f"Invalid learning rate: {lr} (must be >= 0)")
        for i, beta in enumerate(betas):
            if not 0 <= beta < 1:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta} (betas must be in [0, 1))")
        if eps <= 0:
            raise ValueError(f"Invalid epsilon value: {eps} (must be > 0)")
        if weight_decay < 0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay} (must be >= 0)")
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.m = self.v = None  # first and second moments, one per parameter, created at the first step
        self.t = 0  # steps taken, for the bias corrections

    def step(self, params, grads):
        if self.m is None:
            self.m, self.v = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]  # m_0 = v_0 = 0
        self.t += 1
        b1, b2 = self.betas
        for p, g, m, v in zip(params, grads, self.m, self.v):
            if self.weight_decay:
                g = g + self.weight_decay * p  # L2 penalty (wd/2)|theta|^2 folded into the gradient
            m[:] = b1 * m + (1 - b1) * g  # first moment: leaky mean of the gradient (momentum)
            v[:] = b2 * v + (1 - b2) * g * g  # second moment: leaky mean of the squared gradient (RMSProp)
            mhat = m / (1 - b1**self.t)  # bias corrections: m and v started at 0
            vhat = v / (1 - b2**self.t)
            p -= self.lr * mhat / (np.sqrt(vhat) + self.eps)


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
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999), metavar=("B1", "B2"),
                   help="decays of m and v (default 0.9 0.999)")
    p.add_argument("--eps", type=float, default=1e-8, help="added to sqrt(vhat) in the denominator (default 1e-8)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay (default 0)")
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
        opt = Adam(lr=args.lr, betas=args.betas, eps=args.eps, weight_decay=args.weight_decay)
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
