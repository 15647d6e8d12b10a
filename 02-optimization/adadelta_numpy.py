"""Adadelta, from scratch in NumPy, training an MLP on Fashion-MNIST.

Adadelta keeps RMSProp's leaky average of squared gradients and adds a second one, of squared updates,
whose root takes the place of the learning rate (t counts steps from 1; s_0 = u_0 = 0; elementwise):

    g_t = grad of the minibatch loss at theta_{t-1}                (+ weight_decay * theta_{t-1})
    s_t = rho * s_{t-1} + (1 - rho) * g_t^2                        leaky mean of g^2
    d_t = sqrt(u_{t-1} + eps) / sqrt(s_t + eps) * g_t              RMS[update]_{t-1} / RMS[g]_t * g_t
    u_t = rho * u_{t-1} + (1 - rho) * d_t^2                        leaky mean of the squared updates
    theta_t = theta_{t-1} - lr * d_t                               lr = 1 in the paper

Why, after RMSProp: in lr * g / RMS[g] the ratio is a pure number, so lr alone carries the units.
A Newton step H^-1 g has the parameters' units, and dtheta = H^-1 g gives H^-1 = dtheta / g: Adadelta
estimates that ratio by RMS[update] / RMS[g], so no global rate is left to tune. What it still gets
wrong: eps sets the first steps (about sqrt(eps / (1 - rho)) = 3e-3); no bias correction, no momentum.

Reading: Zeiler (2012), "ADADELTA: An Adaptive Learning Rate Method", https://arxiv.org/abs/1212.5701;
d2l 12.9. Update rule and defaults as torch.optim.Adadelta (see docs/references.md).
Arc: Optimization -- Adadelta in NumPy on Fashion-MNIST.

Run:  python 02-optimization/adadelta_numpy.py [--lr 1.0 --rho 0.9 --eps 1e-6 --batch-size 128 --epochs 10]
      python 02-optimization/adadelta_numpy.py --smoke
Look first at `Adadelta.step`: d is g rescaled by two RMS values, and no learning rate is needed.
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
class Adadelta:
    """d = sqrt(u + eps) / sqrt(s + eps) * g, theta <- theta - lr d, for a list of arrays updated in place."""

    def __init__(self, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0):
        if not (lr >= 0 and 0 <= rho < 1 and eps > 0 and weight_decay >= 0):  # NaN fails these comparisons too
            raise ValueError(f"Invalid learning rate {lr}, rho {rho}, eps {eps} or weight_decay {weight_decay}")
        self.lr, self.rho, self.eps, self.weight_decay = lr, rho, eps, weight_decay
        self.s = self.u = None  # leaky means of g^2 and of d^2, one per parameter, created at the first step

    def step(self, params, grads):
        if self.s is None:
            self.s, self.u = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]  # s_0 = u_0 = 0
        rho, eps = self.rho, self.eps
        for p, g, s, u in zip(params, grads, self.s, self.u):
            if self.weight_decay:
                g = g + self.weight_decay * p  # L2 penalty (wd/2)|theta|^2 folded into the gradient
            s[:] = rho * s + (1 - rho) * g * g  # leaky mean of the squared gradient
            d = np.sqrt(u + eps) / np.sqrt(s + eps) * g  # RMS of past updates / RMS of gradients, times g
            u[:] = rho * u + (1 - rho) * d * d  # leaky mean of the squared update
            p -= self.lr * d


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
    p.add_argument("--lr", type=positive_float, default=1.0, help="multiplier of the update (default 1.0)")
    p.add_argument("--rho", type=probability, default=0.9, help="decay of both leaky means (default 0.9)")
    p.add_argument("--eps", type=positive_float, default=1e-6, help="inside both roots (default 1e-6)")
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
    opt = Adadelta(lr=args.lr, rho=args.rho, eps=args.eps, weight_decay=args.weight_decay)
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
