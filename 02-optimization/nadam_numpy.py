"""NAdam (Adam with Nesterov momentum), from scratch in NumPy, training an MLP on Fashion-MNIST.

Adam's moments, with the step taken from a Nesterov look-ahead combination of the first moment and
the current gradient, under a momentum schedule mu_t. With m_0 = v_0 = 0, t counting steps from 1
and psi = momentum_decay:

    g_t = grad of the minibatch loss at theta_{t-1}                 (+ weight_decay * theta_{t-1})
    mu_t = b1 * (1 - 0.5 * 0.96^(t * psi)),  mu_{t+1} likewise      momentum schedule
    m_t = b1 * m_{t-1} + (1 - b1) * g_t                             first moment, as Adam
    v_t = b2 * v_{t-1} + (1 - b2) * g_t^2,   vhat_t = v_t / (1 - b2^t)
    mbar_t = mu_{t+1} * m_t / (1 - prod_{i<=t+1} mu_i) + (1 - mu_t) * g_t / (1 - prod_{i<=t} mu_i)
    theta_t = theta_{t-1} - lr * mbar_t / (sqrt(vhat_t) + eps)

Why, after AdamW: Adam's momentum part b1 * m_{t-1} is the velocity of the steps already taken.
As Nesterov applies now the momentum the next step will apply, Dozat puts the updated m_t, with the
next coefficient mu_{t+1}, in its place, plus the current gradient's share (1 - mu_t) * g_t: the step
reacts one step sooner when the gradient turns.

Reading: Dozat (2016), "Incorporating Nesterov Momentum into Adam", ICLR workshop,
https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ; d2l 12.6, 12.10. As torch.optim.NAdam (L2 decay).
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

from data import DataError, fashion_mnist, minibatches, save_metrics
from data.cli import nonneg_float, nonneg_int, positive_float, positive_int, probability


# %% The optimizer
class NAdam:
    """Adam with Nesterov's look-ahead on the first moment and a momentum schedule; arrays updated in place."""

    def __init__(self, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3):
        ok = all(0 <= b < 1 for b in betas) and eps > 0 and weight_decay >= 0 and momentum_decay >= 0
        if not (lr >= 0 and ok):  # NaN fails these comparisons too
            raise ValueError(f"Invalid learning rate {lr}, betas {betas}, eps {eps}, weight_decay {weight_decay} "
                             f"or momentum_decay {momentum_decay}")
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.momentum_decay = momentum_decay
        self.t, self.mu_product = 0, 1.0  # step count t and prod_{i<=t} mu_i, shared by all parameters
        self.m, self.v = None, None  # moments per parameter, made on the first step

    def step(self, params, grads):
        if self.m is None:
            self.m, self.v = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
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


# %% The MLP, data and training loop: identical in the ten NumPy optimizer scripts, but for the optimizer's flags.
def loss_and_grads(params, x, y):
    """Mean cross-entropy, its gradients and the logits of the ReLU MLP of 01-foundations/mlp_numpy.py."""
    Ws, bs, hs = params[0::2], params[1::2], [x]  # hs[i]: the input of layer i, (B, D_i)
    for i, (W, b) in enumerate(zip(Ws, bs)):  # forward: z = h W + b, with a ReLU below the top layer
        z = hs[i] @ W + b
        hs.append(np.maximum(z, 0) if i < len(Ws) - 1 else z)
    z = hs[-1] - hs[-1].max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    dz = np.exp(log_p)  # dL/dlogits = (softmax - onehot) / B
    dz[np.arange(len(y)), y] -= 1
    dz /= len(y)
    grads = []
    for i in reversed(range(len(Ws))):  # backward: dW = h^T dz, db = sum dz, then dh = dz W^T through the ReLU
        grads = [hs[i].T @ dz, dz.sum(axis=0), *grads]
        if i:
            dz = (dz @ Ws[i].T) * (hs[i] > 0)
    return -log_p[np.arange(len(y)), y].mean(), grads, hs[-1]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lr", type=positive_float, default=2e-3, help="learning rate (default 2e-3)")
    p.add_argument("--betas", type=probability, nargs=2, default=(0.9, 0.999), help="decays b1 b2 (default 0.9 0.999)")
    p.add_argument("--eps", type=positive_float, default=1e-8, help="added to sqrt(vhat) (default 1e-8)")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.0, help="L2 penalty in the gradient (default 0)")
    p.add_argument("--momentum-decay", type=nonneg_float, default=4e-3, help="psi of the schedule mu_t (default 4e-3)")
    p.add_argument("--epochs", type=positive_int, help="default 10; 1 with --smoke")
    p.add_argument("--batch-size", type=positive_int, help="default 128; 32 with --smoke")
    p.add_argument("--hidden", type=positive_int, nargs="+", help="hidden widths (default 256 128; 64 with --smoke)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds the weights and the minibatch order")
    p.add_argument("--data-dir", help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", help="where metrics.json and loss.png go (default runs/<script>)")
    p.add_argument("--smoke", action="store_true", help="one epoch on 2k real images, hidden 64")
    args = p.parse_args(argv)
    args.epochs = (1 if args.smoke else 10) if args.epochs is None else args.epochs
    args.batch_size = (32 if args.smoke else 128) if args.batch_size is None else args.batch_size
    args.hidden = ([64] if args.smoke else [256, 128]) if args.hidden is None else args.hidden
    out_dir = Path(args.out_dir or Path(__file__).resolve().parents[1] / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        (Xtr, ytr), (Xte, yte) = fashion_mnist("train", args.data_dir), fashion_mnist("test", args.data_dir)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    n_tr, n_te = (2000, 1000) if args.smoke else (len(Xtr), len(Xte))  # --smoke: a small real subset
    Xtr, ytr = Xtr[:n_tr].reshape(n_tr, -1).astype(np.float32) / 255, ytr[:n_tr]  # (N, 784) pixels in [0, 1]
    Xte, yte = Xte[:n_te].reshape(n_te, -1).astype(np.float32) / 255, yte[:n_te]
    mean, std = Xtr.mean(), Xtr.std()  # standardised with the training split's statistics
    Xtr, Xte = (Xtr - mean) / std, (Xte - mean) / std

    sizes, rng, params = [Xtr.shape[1], *args.hidden, 10], np.random.default_rng([args.seed, 1]), []
    for d_in, d_out in zip(sizes[:-1], sizes[1:]):  # params = [W1, b1, W2, b2, ...], He-initialised
        W = rng.standard_normal((d_in, d_out)) * np.sqrt(2 / d_in)  # W ~ N(0, 2 / fan_in), b = 0
        params += [W.astype(np.float32), np.zeros(d_out, np.float32)]
    opt = NAdam(lr=args.lr, betas=args.betas, eps=args.eps, weight_decay=args.weight_decay,
        momentum_decay=args.momentum_decay)
    data_rng, step_losses, epoch_losses, epoch_s = np.random.default_rng(args.seed), [], [], []
    for epoch in range(1, args.epochs + 1):
        t0, first = time.perf_counter(), len(step_losses)
        for idx in minibatches(len(Xtr), args.batch_size, data_rng):
            loss, grads, _ = loss_and_grads(params, Xtr[idx], ytr[idx])
            opt.step(params, grads)
            step_losses.append(float(loss))
        epoch_s.append(time.perf_counter() - t0)
        epoch_losses.append(float(np.mean(step_losses[first:])))
        test_loss, _, logits = loss_and_grads(params, Xte, yte)
        test_loss, test_acc = float(test_loss), float((logits.argmax(axis=1) == yte).mean())
        print(f"epoch {epoch}: train loss {epoch_losses[-1]:.4f}, test loss {test_loss:.4f}, acc {test_acc:.4f}")

    ax = Figure(figsize=(7, 4), layout="constrained").subplots()
    ax.plot(np.arange(1, len(step_losses) + 1), step_losses, lw=0.6)
    ax.set(xlabel="step", ylabel="minibatch loss", yscale="log", title=f"{Path(__file__).stem}, lr {args.lr}")
    ax.figure.savefig(out_dir / "loss.png", dpi=120)
    metrics = {"script": Path(__file__).stem, "test_acc": test_acc, "test_loss": test_loss,
               "first_loss": step_losses[0], "final_train_loss": epoch_losses[-1], "epoch_losses": epoch_losses,
               "sec_per_epoch": float(np.median(epoch_s)), "config": vars(args)}
    save_metrics(out_dir, metrics, __file__, argv)
    return metrics


if __name__ == "__main__":
    main()
