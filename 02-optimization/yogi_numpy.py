"""Yogi (Adam with an additive second moment), from scratch in NumPy, training an MLP on Fashion-MNIST.

Yogi keeps Adam's first moment and bias corrections and changes one line: how the second moment v
follows the squared gradient. With m_0 = 0, v_0 = 1e-6 and t counting steps from 1:

    g_t = grad of the minibatch loss at theta_{t-1}                 (+ weight_decay * theta_{t-1})
    m_t = b1 * m_{t-1} + (1 - b1) * g_t                             first moment, as Adam
    v_t = v_{t-1} - (1 - b2) * sign(v_{t-1} - g_t^2) * g_t^2        second moment, additive
    mhat_t = m_t / (1 - b1^t),   vhat_t = v_t / (1 - b2^t)          bias corrections, as Adam
    theta_t = theta_{t-1} - lr * mhat_t / (sqrt(vhat_t) + eps)

Why, after Adam: Adam's v closes a fixed fraction (1 - b2) of its gap to g_t^2, so once large
gradients turn small v shrinks by b2 a step and the rate lr / sqrt(vhat) climbs fast, overshooting
on the next large gradient (Reddi et al. 2018). Yogi moves v by exactly (1 - b2) g_t^2 whatever the
gap: up at least as fast as Adam, down only slowly, so the rate rises gradually.

Reading: Zaheer, Reddi, Sachan, Kale & Kumar (2018), "Adaptive Methods for Nonconvex Optimization",
https://papers.nips.cc/paper/2018/hash/90365351ccc7437a1309dc64e4db32a3-Abstract.html; d2l 12.10.3.
The bias corrections and v_0 follow d2l, TF-Addons and optax, not the paper's Algorithm 2.
Arc: Optimization -- Yogi (d2l 12.10.3; Zaheer et al. 2018) in NumPy on Fashion-MNIST.

Run:  python 02-optimization/yogi_numpy.py [--lr 1e-3 --batch-size 128 --epochs 10]
      python 02-optimization/yogi_numpy.py --smoke
Look first at `Yogi.step`: the line that updates v is the only one that differs from Adam's.
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
class Yogi:
    """Adam whose second moment moves additively, by (1 - b2) g^2 a step; arrays updated in place."""

    v0 = 1e-6  # initial second moment v_0, as TF-Addons and optax (d2l starts from 0)

    def __init__(self, lr=1e-2, betas=(0.9, 0.999), eps=1e-3, weight_decay=0.0):
        if not (lr >= 0 and all(0 <= b < 1 for b in betas) and eps > 0 and weight_decay >= 0):  # NaN fails too
            raise ValueError(f"Invalid learning rate {lr}, betas {betas}, eps {eps} or weight_decay {weight_decay}")
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.t, self.m, self.v = 0, None, None  # step count; moments per parameter, made on the first step

    def step(self, params, grads):
        if self.m is None:
            self.m, self.v = [np.zeros_like(p) for p in params], [np.full_like(p, self.v0) for p in params]
        self.t += 1
        t, (b1, b2) = self.t, self.betas
        for p, g, m, v in zip(params, grads, self.m, self.v):
            if self.weight_decay:
                g = g + self.weight_decay * p  # L2 penalty folded into the gradient (as torch's Adam)
            m[:] = b1 * m + (1 - b1) * g  # first moment: leaky average of gradients, as Adam
            v[:] = v - (1 - b2) * np.sign(v - g * g) * g * g  # second moment: (1 - b2) g^2 toward g^2, whatever the gap
            mhat = m / (1 - b1**t)  # bias corrections, as Adam
            vhat = v / (1 - b2**t)
            p -= self.lr * mhat / (np.sqrt(vhat) + self.eps)  # per-coordinate step


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
    p.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--betas", type=probability, nargs=2, default=(0.9, 0.999), help="decays b1 b2 (default 0.9 0.999)")
    p.add_argument("--eps", type=positive_float, default=1e-3, help="added to sqrt(vhat) (default 1e-3)")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.0, help="L2 penalty in the gradient (default 0)")
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
    opt = Yogi(lr=args.lr, betas=args.betas, eps=args.eps, weight_decay=args.weight_decay)
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
