"""AdamW as a from-scratch torch.optim.Optimizer, training an MLP on Fashion-MNIST.

Decay the weights first, outside the adaptive scaling, then take Adam's step on the loss gradient
alone. With m_0 = v_0 = 0 and t counting steps from 1:

    theta' = theta_{t-1} - lr * weight_decay * theta_{t-1}         decoupled weight decay
    g_t = grad of the minibatch loss at theta_{t-1}                 no L2 term
    m_t = b1 * m_{t-1} + (1 - b1) * g_t                             first moment
    v_t = b2 * v_{t-1} + (1 - b2) * g_t^2                           second moment
    mhat_t = m_t / (1 - b1^t),   vhat_t = v_t / (1 - b2^t)          bias corrections
    theta_t = theta' - lr * mhat_t / (sqrt(vhat_t) + eps)

Why L2 in the gradient is not weight decay under adaptive scaling: adamw_numpy.py. State per parameter:
`step`, `exp_avg` (m) and `exp_avg_sq` (v), saved by `state_dict()`, so a run resumes exactly.

Reading: Loshchilov & Hutter (2019), https://arxiv.org/abs/1711.05101; d2l 3.7. As torch.optim.AdamW.
Arc: Optimization -- AdamW (Loshchilov & Hutter 2019) in PyTorch on Fashion-MNIST.

Run:  python 02-optimization/adamw_torch.py [--lr 1e-3 --weight-decay 0.01 --batch-size 128 --epochs 10 --device auto]
      python 02-optimization/adamw_torch.py --smoke
Look first at `AdamW.step`: the decay line comes before, and apart from, the Adam step.
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

from data import DataError, fashion_mnist, minibatches, save_metrics
from data.cli import nonneg_float, nonneg_int, positive_float, positive_int, probability


# %% The optimizer
class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay (theta shrinks by lr * wd * theta first); written from scratch."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        if not (lr >= 0 and all(0 <= b < 1 for b in betas) and eps > 0 and weight_decay >= 0):  # NaN fails too
            raise ValueError(f"Invalid learning rate {lr}, betas {betas}, eps {eps} or weight_decay {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        with torch.enable_grad():  # the API lets a step re-evaluate the loss first
            loss = None if closure is None else closure()
        for group in self.param_groups:
            lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:  # first step: create the state
                    state["step"], state["exp_avg"], state["exp_avg_sq"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                t = state["step"]
                g = p.grad
                p.mul_(1 - lr * group["weight_decay"])  # decoupled weight decay: theta -= lr * wd * theta
                m.mul_(b1).add_(g, alpha=1 - b1)  # first moment, from the loss gradient alone
                v.mul_(b2).addcmul_(g, g, value=1 - b2)  # second moment, likewise
                bc1, bc2 = 1 - b1**t, 1 - b2**t  # bias corrections: mhat = m / bc1, vhat = v / bc2
                denom = (v / bc2).sqrt_().add_(eps)  # sqrt(vhat) + eps
                p.addcdiv_(m, denom, value=-lr / bc1)  # theta -= lr * mhat / (sqrt(vhat) + eps)
        return loss


# %% The MLP, data and training loop: identical in the ten PyTorch optimizer scripts, but for the optimizer's flags.
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--betas", type=probability, nargs=2, default=(0.9, 0.999), help="decays b1 b2 (default 0.9 0.999)")
    p.add_argument("--eps", type=positive_float, default=1e-8, help="added to sqrt(vhat) (default 1e-8)")
    p.add_argument("--weight-decay", type=nonneg_float, default=1e-2, help="decoupled weight decay (default 0.01)")
    p.add_argument("--epochs", type=positive_int, help="default 10; 1 with --smoke")
    p.add_argument("--batch-size", type=positive_int, help="default 128; 32 with --smoke")
    p.add_argument("--hidden", type=positive_int, nargs="+", help="hidden widths (default 256 128; 64 with --smoke)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds the weights and the minibatch order")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--data-dir", help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", help="where metrics.json, loss.png and checkpoint.pt go (default runs/<script>)")
    p.add_argument("--smoke", action="store_true", help="one epoch on 2k real images, hidden 64")
    args = p.parse_args(argv)
    args.epochs = (1 if args.smoke else 10) if args.epochs is None else args.epochs
    args.batch_size = (32 if args.smoke else 128) if args.batch_size is None else args.batch_size
    args.hidden = ([64] if args.smoke else [256, 128]) if args.hidden is None else args.hidden
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    device = next(d for d, ok in available.items() if ok) if args.device == "auto" else args.device
    if not available[device]:  # the device picker of 01-foundations/mlp_torch.py
        p.error(f"--device {device}: not available on this machine")
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
    Xtr, ytr, Xte, yte = (torch.from_numpy(a).to(device) for a in ((Xtr - mean) / std, ytr, (Xte - mean) / std, yte))

    torch.manual_seed(args.seed)
    sizes = [Xtr.shape[1], *args.hidden, 10]
    linears = [nn.Linear(d_in, d_out) for d_in, d_out in zip(sizes[:-1], sizes[1:])]
    for layer in linears:  # He initialisation, as 01-foundations/mlp_torch.py
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.zeros_(layer.bias)
    model = nn.Sequential(*[m for layer in linears[:-1] for m in (layer, nn.ReLU())], linears[-1]).to(device)
    opt = AdamW(model.parameters(), lr=args.lr, betas=args.betas, eps=args.eps, weight_decay=args.weight_decay)
    data_rng, step_losses, epoch_losses, epoch_s = np.random.default_rng(args.seed), [], [], []
    for epoch in range(1, args.epochs + 1):
        t0, losses = time.perf_counter(), []
        for idx in minibatches(len(Xtr), args.batch_size, data_rng):
            idx = torch.from_numpy(idx).to(device)
            loss = F.cross_entropy(model(Xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        step_losses += torch.stack(losses).tolist()  # one read from the device per epoch
        epoch_s.append(time.perf_counter() - t0)
        epoch_losses.append(float(np.mean(step_losses[-len(losses) :])))
        with torch.no_grad():
            logits = model(Xte)
        test_loss, test_acc = F.cross_entropy(logits, yte).item(), (logits.argmax(dim=1) == yte).float().mean().item()
        print(f"epoch {epoch}: train loss {epoch_losses[-1]:.4f}, test loss {test_loss:.4f}, acc {test_acc:.4f}")

    ax = Figure(figsize=(7, 4), layout="constrained").subplots()
    ax.plot(np.arange(1, len(step_losses) + 1), step_losses, lw=0.6)
    ax.set(xlabel="step", ylabel="minibatch loss", yscale="log", title=f"{Path(__file__).stem}, lr {args.lr}")
    ax.figure.savefig(out_dir / "loss.png", dpi=120)
    metrics = {"script": Path(__file__).stem, "test_acc": test_acc, "test_loss": test_loss,
               "first_loss": step_losses[0], "final_train_loss": epoch_losses[-1], "epoch_losses": epoch_losses,
               "sec_per_epoch": float(np.median(epoch_s)), "config": vars(args)}
    save_metrics(out_dir, metrics, __file__, argv)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, out_dir / "checkpoint.pt")
    return metrics


if __name__ == "__main__":
    main()
