"""A deep bidirectional LSTM from scratch in torch, reading Fashion-MNIST images row by row, against its one-way twin.

Each image is read as a sequence of T = 28 rows, x_t the 28 pixels of row t. A unidirectional LSTM
(lstm_torch.py has the cell and its equations) summarises rows 1..t in its state, and classifies from
the top layer's last state h_T. A bidirectional layer (Schuster and Paliwal 1997; d2l 10.4) runs two
LSTMs with their own weights over the same sequence, one forwards and one backwards, and concatenates:

    ->h_t = LSTM_fwd(x_t, ->h_{t-1})      t = 1 .. T       summary of x_1 .. x_t
    <-h_t = LSTM_bwd(x_t, <-h_{t+1})      t = T .. 1       summary of x_t .. x_T
    h_t   = [->h_t ; <-h_t]               (B, 2H)          what layer l+1 reads at step t
    logits = [->h_T ; <-h_1] W^T + b      (B, 10)          the top layer's two full summaries
torch stores the backward weights as weight_ih_l{k}_reverse etc., and orders the final states layer
by layer, forward before backward: (num_layers * 2, B, H).
Deep RNNs (d2l 10.3): layer l reads the states of layer l-1 at the same step, H_t^(l) = f(H_t^(l-1),
H_{t-1}^(l)); depth adds nonlinear processing within a step; 2-4 layers in practice, dropout between
layers (never on the recurrent path). Why a bidirectional model cannot be a language model (d2l 10.4):
<-h_t is computed from x_t .. x_T, which contains x_{t+1}, the token to predict, so training would
teach it to copy; and when generating, the future does not exist yet. Bidirectional layers are for
tasks where the whole sequence is known first: classifying or tagging a sequence, encoding a source
sentence, contextual embeddings (ELMo, BERT).

Reading: M. Schuster and K. K. Paliwal (1997), "Bidirectional Recurrent Neural Networks", IEEE
Trans. Signal Processing 45(11); A. Graves and J. Schmidhuber (2005), "Framewise phoneme classification
with bidirectional LSTM"; d2l 10.3 and 10.4, https://d2l.ai/chapter_recurrent-modern/deep-rnn.html,
https://d2l.ai/chapter_recurrent-modern/bi-rnn.html. As torch.nn.LSTM(bidirectional=True or False),
batch_first=False; state_dicts interchangeable (tests/test_rnn_torch.py).
Arc: Modern recurrent neural networks -- bidirectional RNNs in PyTorch; deep recurrent networks (read).

Run:  python 05-rnns/birnn_torch.py
      python 05-rnns/birnn_torch.py --hidden-size 128 --layers 3 --epochs 5 --device cuda
      python 05-rnns/birnn_torch.py --smoke
Look first at `BiLSTM.forward` (the backward direction is the same cell run on the reversed sequence,
its outputs reversed back), then at the figure: both nets, same budget, bidirectional vs forward only.
"""

# %%
import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from tqdm import tqdm

from data import (
    DataError,
    fashion_mnist,
    minibatches,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    probability,
    save_metrics,
)

# %% [markdown]
# ## The layer


# %%
def lstm_pass(x, h, c, W_ih, W_hh, b):
    """One LSTM direction over time: x (T, B, D), h and c (B, H) -> outputs (T, B, H), h_T, c_T.

    Gates in torch's order i, f, g, o:  c_t = f_t * c_{t-1} + i_t * g_t,  h_t = o_t * tanh(c_t).
    """
    xW = x @ W_ih.T + b  # (T, B, 4H): the input term of every step in one matrix product
    hs = []
    for t in range(x.shape[0]):
        i, f, g, o = (xW[t] + h @ W_hh.T).chunk(4, dim=1)  # four (B, H) pre-activations
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        hs.append(h)
    return torch.stack(hs), h, c


class BiLSTM(nn.Module):
    """Multi-layer (bi)directional LSTM as torch.nn.LSTM: (T, B, D) -> (T, B, dirs*H), (h_n, c_n) each (L*dirs, B, H).

    Parameters per layer k and direction (suffix "" forwards, "_reverse" backwards), named and shaped as
    torch's: weight_ih_l{k} (4H, D_k), weight_hh_l{k} (4H, H), bias_ih_l{k}, bias_hh_l{k} (4H,), with
    D_0 = input_size and D_k = dirs * H above; all drawn from U(-1/sqrt(H), 1/sqrt(H)), torch's default.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, dropout=0.0, bidirectional=True):
        super().__init__()
        for name, value in [("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)]:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BiLSTM: {name} must be a positive int, got {value!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ValueError(f"BiLSTM: dropout must be a number in [0, 1], got {dropout!r}")
        self.input_size, self.hidden_size, self.num_layers, self.dropout = input_size, hidden_size, num_layers, dropout
        self.bidirectional, self.dirs = bool(bidirectional), 2 if bidirectional else 1
        self.suffixes = ["", "_reverse"][: self.dirs]
        H, bound = hidden_size, 1 / math.sqrt(hidden_size)
        for k in range(num_layers):
            D = input_size if k == 0 else self.dirs * H
            for sfx in self.suffixes:
                for name, shape in [("weight_ih", (4 * H, D)), ("weight_hh", (4 * H, H)), ("bias_ih", (4 * H,)),
                                    ("bias_hh", (4 * H,))]:
                    param = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
                    self.register_parameter(f"{name}_l{k}{sfx}", param)

    def forward(self, x, state=None):
        """x (T, B, D), state (h0, c0) each (L*dirs, B, H) or None -> output (T, B, dirs*H), (h_n, c_n)."""
        if x.dim() != 3 or x.shape[0] < 1 or x.shape[2] != self.input_size:
            raise ValueError(f"BiLSTM expects input (T, B, {self.input_size}) with T >= 1, got {tuple(x.shape)}")
        T, B, _ = x.shape
        S, H = self.num_layers * self.dirs, self.hidden_size
        if state is None:
            state = (x.new_zeros(S, B, H), x.new_zeros(S, B, H))
        elif len(state) != 2 or any(tuple(s.shape) != (S, B, H) for s in state):
            raise ValueError(f"BiLSTM expects the state (h0, c0), each of shape {(S, B, H)}")
        h_n, c_n = [], []
        for k in range(self.num_layers):
            if k > 0:  # dropout between layers only, and only in training
                x = F.dropout(x, self.dropout, self.training)
            outs = []
            for d, sfx in enumerate(self.suffixes):
                W_ih, W_hh = getattr(self, f"weight_ih_l{k}{sfx}"), getattr(self, f"weight_hh_l{k}{sfx}")
                b = getattr(self, f"bias_ih_l{k}{sfx}") + getattr(self, f"bias_hh_l{k}{sfx}")
                s = k * self.dirs + d  # torch's index of this layer and direction in the state
                if d == 0:  # forwards: t = 1 .. T
                    out, h, c = lstm_pass(x, state[0][s], state[1][s], W_ih, W_hh, b)
                else:  # backwards: the same cell on x_T .. x_1, its outputs put back in time order
                    out, h, c = lstm_pass(x.flip(0), state[0][s], state[1][s], W_ih, W_hh, b)
                    out = out.flip(0)  # out[t] = <-h_t, the summary of x_t .. x_T
                outs.append(out)
                h_n.append(h)
                c_n.append(c)
            x = torch.cat(outs, dim=2)  # (T, B, dirs*H) = [->h_t ; <-h_t], the next layer's input
        return x, (torch.stack(h_n), torch.stack(c_n))  # (T, B, dirs*H), ((L*dirs, B, H), (L*dirs, B, H))

    @torch.no_grad()
    def copy_from(self, module):
        """Load the weights of an nn.LSTM of the same size and direction(s) (biases, no projection); returns self."""
        same = (isinstance(module, nn.LSTM) and module.bias and module.proj_size == 0
                and module.bidirectional == self.bidirectional
                and (module.input_size, module.hidden_size, module.num_layers)
                == (self.input_size, self.hidden_size, self.num_layers))
        if not same:
            raise ValueError(f"copy_from needs nn.LSTM({self.input_size}, {self.hidden_size}, num_layers="
                             f"{self.num_layers}, bidirectional={self.bidirectional}) with biases, got {module!r}")
        self.load_state_dict(module.state_dict())
        return self

    def extra_repr(self):
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, dropout={self.dropout}, "
                f"bidirectional={self.bidirectional}")


# %% [markdown]
# ## The classifier and the data


# %%
class RowClassifier(nn.Module):
    """An image (B, 28, 28) read as 28 rows of 28 pixels -> (Bi)LSTM -> linear on the top layer's final states."""

    def __init__(self, hidden_size, num_layers, dropout, bidirectional):
        super().__init__()
        self.rnn = BiLSTM(28, hidden_size, num_layers, dropout, bidirectional)
        self.head = nn.Linear(self.rnn.dirs * hidden_size, 10)

    def forward(self, images):
        x = images.transpose(0, 1)  # (T = 28 rows, B, 28 pixels)
        _, (h_n, _) = self.rnn(x)  # (L*dirs, B, H)
        top = h_n[-self.rnn.dirs :]  # the top layer: ->h_T, and <-h_1 when bidirectional   (dirs, B, H)
        return self.head(torch.cat(list(top), dim=1))  # (B, 10)


def load_data(data_dir=None, smoke=False):
    """Fashion-MNIST as float32 (N, 28, 28) images standardised with the training split's mean and std."""
    Xtr, ytr = fashion_mnist("train", data_dir)
    Xte, yte = fashion_mnist("test", data_dir)
    if smoke:  # a small real subset
        Xtr, ytr, Xte, yte = Xtr[:2000], ytr[:2000], Xte[:1000], yte[:1000]
    Xtr = Xtr.reshape(len(Xtr), 28, 28).astype(np.float32) / 255
    Xte = Xte.reshape(len(Xte), 28, 28).astype(np.float32) / 255
    mean, std = Xtr.mean(), Xtr.std()
    return (Xtr - mean) / std, ytr.astype(np.int64), (Xte - mean) / std, yte.astype(np.int64)


@torch.no_grad()
def evaluate(model, X, y, batch_size=1000):
    """Mean loss and accuracy on (X, y) in eval mode (no dropout)."""
    model.eval()
    logits = torch.cat([model(X[i : i + batch_size]) for i in range(0, len(X), batch_size)])
    model.train()
    return F.cross_entropy(logits, y).item(), (logits.argmax(dim=1) == y).float().mean().item()


# device picker, as taught in 01-foundations/mlp_torch.py
def pick_device(name):
    """'auto' picks cuda, then mps, then cpu; asking for a device this machine lacks is an error."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(d for d, ok in available.items() if ok)
    if not available[name]:
        raise ValueError(f"--device {name}: not available on this machine")
    return torch.device(name)


# %% [markdown]
# ## Training (the same loop for both nets)


# %%
def train(model, data, args, label):
    """Adam with gradient clipping for args.epochs; the per-step losses and per-epoch test metrics."""
    Xtr, ytr, Xte, yte = data
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    data_rng = np.random.default_rng(args.seed)  # the same minibatch order for both nets
    steps_per_epoch = -(-len(Xtr) // args.batch_size)
    hist = {"step_losses": [], "test_acc": [], "test_loss": [], "epoch_s": []}
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        losses = []
        for idx in tqdm(minibatches(len(Xtr), args.batch_size, data_rng), total=steps_per_epoch,
                        desc=f"{label} epoch {epoch}", leave=False, disable=not sys.stdout.isatty()):
            idx = torch.from_numpy(idx).to(Xtr.device)
            loss = F.cross_entropy(model(Xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip or math.inf)  # by global norm; 0: off
            opt.step()
            losses.append(loss.detach())
        hist["step_losses"] += torch.stack(losses).tolist()
        hist["epoch_s"].append(time.perf_counter() - t0)
        test_loss, test_acc = evaluate(model, Xte, yte)
        hist["test_loss"].append(test_loss)
        hist["test_acc"].append(test_acc)
        train_loss = np.mean(hist["step_losses"][-len(losses) :])
        print(f"{label:>15}  epoch {epoch:2d}/{args.epochs}  train loss {train_loss:.4f}"
              f" | test loss {test_loss:.4f} acc {test_acc:.4f} | {hist['epoch_s'][-1]:.1f} s", flush=True)
    return hist


def plot_curves(hists, steps_per_epoch, path, title):
    """Training loss per step (moving average) and test accuracy per epoch, one colour per net."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    k = max(1, steps_per_epoch // 10)
    for i, (label, h) in enumerate(hists.items()):
        losses = np.asarray(h["step_losses"])
        ax_loss.plot(np.arange(k, len(losses) + 1) / steps_per_epoch, np.convolve(losses, np.ones(k) / k, "valid"),
                     color=f"C{i}", lw=1, label=f"{label} (mean of {k} steps)")
        ax_acc.plot(np.arange(1, len(h["test_acc"]) + 1), h["test_acc"], "o-", color=f"C{i}", label=label)
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    ax_acc.xaxis.get_major_locator().set_params(integer=True)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=120)


# %% [markdown]
# ## Main


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 3; 2 with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="minibatch size (default 128; 64 with --smoke)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="Adam learning rate (default 2e-3; 5e-3 with --smoke)")
    p.add_argument("--hidden-size", type=positive_int, default=None,
                   help="hidden size H per direction (default 64; 32 with --smoke)")
    p.add_argument("--layers", type=positive_int, default=2, help="stacked layers (default 2)")
    p.add_argument("--dropout", type=probability, default=0.1, help="dropout between layers (default 0.1)")
    p.add_argument("--clip", type=nonneg_float, default=1.0,
                   help="max global gradient norm, 0: no clipping (default 1)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds weights, minibatch order and dropout (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="where metrics, figure and weights go (default runs/<script>)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on 2k training images, a small net")
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    for name, smoke, default in [("epochs", 2, 3), ("batch_size", 64, 128), ("lr", 5e-3, 2e-3),
                                 ("hidden_size", 32, 64)]:
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else default)
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        data = tuple(torch.from_numpy(a).to(device) for a in load_data(args.data_dir, args.smoke))
    except DataError as exc:
        sys.exit(f"error: {exc}")

    hists, models = {}, {}
    for label, bidirectional in [("bidirectional", True), ("unidirectional", False)]:
        torch.manual_seed(args.seed)
        models[label] = RowClassifier(args.hidden_size, args.layers, args.dropout, bidirectional).to(device)
        hists[label] = train(models[label], data, args, label)

    steps_per_epoch = -(-len(data[0]) // args.batch_size)
    plot_curves(hists, steps_per_epoch, out_dir / "learning_curves.png",
                f"{Path(__file__).stem}: {args.layers}-layer LSTM, H = {args.hidden_size}, "
                "Fashion-MNIST rows as a sequence")
    bi, uni = hists["bidirectional"], hists["unidirectional"]
    n_params = {label: sum(q.numel() for q in m.parameters()) for label, m in models.items()}
    metrics = {"script": Path(__file__).stem, "test_acc": bi["test_acc"][-1],
               "test_acc_unidirectional": uni["test_acc"][-1], "test_loss": bi["test_loss"][-1],
               "test_loss_unidirectional": uni["test_loss"][-1], "first_loss": bi["step_losses"][0],
               "final_train_loss": bi["step_losses"][-1], "params": n_params["bidirectional"],
               "params_unidirectional": n_params["unidirectional"], "sec_per_epoch": float(np.median(bi["epoch_s"])),
               "sec_per_epoch_unidirectional": float(np.median(uni["epoch_s"])), "device": str(device),
               "config": vars(args),
               "history": {label: {k: h[k] for k in ("test_acc", "test_loss")} for label, h in hists.items()}}
    save_metrics(out_dir, metrics, __file__, argv)
    torch.save({label: m.state_dict() for label, m in models.items()}, out_dir / "checkpoint.pt")
    return metrics


if __name__ == "__main__":
    main()
