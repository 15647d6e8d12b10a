"""Heavy-ball momentum, from scratch in NumPy, training an MLP on Fashion-MNIST.

Momentum keeps a velocity v, a decaying sum of the past minibatch gradients, and steps along it
instead of along the latest gradient alone (t counts steps from 1):

    g_t = (1/|B|) sum_{i in B} grad_theta loss_i(theta_{t-1})      (+ weight_decay * theta_{t-1})
    v_t = mu * v_{t-1} + g_t                                       (v_0 = 0, so v_1 = g_1)
    theta_t = theta_{t-1} - lr * v_t

Why, after SGD: unrolled, v_t = g_t + mu g_{t-1} + mu^2 g_{t-2} + ... Across a valley the gradient
flips sign and the terms cancel, damping the oscillation; along its floor they add up to lr/(1-mu)
times the gradient (10x for mu = 0.9), so SGD's crawl along the flat direction speeds up.

Reading: Polyak (1964), https://doi.org/10.1016/0041-5553(64)90137-5; Sutskever, Martens, Dahl &
Hinton (2013), https://proceedings.mlr.press/v28/sutskever13.html; d2l 12.6. As torch.optim.SGD(momentum=mu).
Arc: Optimization -- momentum in NumPy on Fashion-MNIST.

Run:  python 02-optimization/momentum_numpy.py [--lr 0.01 --momentum 0.9 --batch-size 128 --epochs 10]
      python 02-optimization/momentum_numpy.py --smoke
Look first at `Momentum.step`; then compare minibatch_sgd_numpy.py --lr 0.5 with this script at --lr 0.05.
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
class Momentum:
    """v <- mu * v + g;  theta <- theta - lr * v, for a list of arrays updated in place (torch.optim.SGD's rule)."""

    def __init__(self, lr=1e-3, momentum=0.9, weight_decay=0.0):
        if not (lr >= 0 and momentum >= 0 and weight_decay >= 0):  # NaN fails these comparisons too
            raise ValueError(f"Invalid learning rate {lr}, momentum {momentum} or weight_decay {weight_decay}")
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.v = None  # one velocity per parameter, created on the first step

    def step(self, params, grads):
        if self.v is None:
            self.v = [np.zeros_like(p) for p in params]  # v_0 = 0, so v_1 = g_1 as in torch
        for p, g, v in zip(params, grads, self.v):
            if self.weight_decay:
                g = g + self.weight_decay * p  # L2 penalty (wd/2)|theta|^2 folded into the gradient
            v *= self.momentum  # v_t = mu * v_{t-1} + g_t: the decaying sum of past gradients
            v += g
            p -= self.lr * v  # theta_t = theta_{t-1} - lr * v_t


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
    p.add_argument("--lr", type=positive_float, default=0.01, help="learning rate (default 0.01)")
    p.add_argument("--momentum", type=probability, default=0.9, help="momentum coefficient mu (default 0.9)")
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
    opt = Momentum(lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
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
