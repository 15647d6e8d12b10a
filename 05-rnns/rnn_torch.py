"""A vanilla RNN written from scratch as a torch nn.Module, trained as a character-level language model.

A recurrent layer reads a sequence x_1 .. x_T one step at a time and carries a hidden state h_t, a
fixed-size summary of everything it has read so far (Elman 1990; d2l 9.4-9.5). With torch's names:

    h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)      (B, H), h_0 = 0 unless given
          W_ih (H, D), W_hh (H, H), b_ih, b_hh (H,)
    e_t = Embedding(x_t),  h_t = RNN(e_1..e_t),  p(x_{t+1} | x_1..x_t) = softmax(h_t W_hy^T + b_y)
    L = mean next-character cross-entropy,  perplexity = exp(L)  (1 = certain; |V| = uniform guessing)
A deep RNN (d2l 10.3) stacks L layers, layer l reading the states of layer l-1 at the same step,
with dropout between layers in training only (Zaremba et al. 2014), never on the recurrent path.
Truncated BPTT (d2l 9.7): the corpus is cut by sequential partitioning (d2l 9.3) into B parallel
streams read --seq-len characters at a time, so row b of batch i+1 continues row b of batch i. The
state is carried from batch to batch but detached: gradients stop at the batch boundary. Clipping by
global norm (Pascanu et al. 2013): g <- g * min(1, theta / ||g||), ||g|| over all parameters.
A checkpoint is written after every epoch; --resume continues it exactly (the flags that shape the
run must equal the checkpoint's), and Ctrl-C prints the command that resumes.

Reading: J. L. Elman (1990), "Finding Structure in Time", Cognitive Science 14(2); d2l 9.4-9.7,
https://d2l.ai/chapter_recurrent-neural-networks/rnn-scratch.html; R. Pascanu, T. Mikolov and Y. Bengio
(2013), "On the difficulty of training recurrent neural networks", https://arxiv.org/abs/1211.5063;
A. Karpathy (2015), "The Unreasonable Effectiveness of Recurrent Neural Networks" (char-rnn).
As torch.nn.RNN (tanh, batch_first=False); state_dicts interchangeable (tests/test_rnn_torch.py).
Arc: Recurrent neural networks -- an RNN from scratch in PyTorch as a character-level language model.

Run:  python 05-rnns/rnn_torch.py                       (Tiny Shakespeare, a few minutes on a CPU)
      python 05-rnns/rnn_torch.py --corpus timemachine --epochs 10 --device cuda
      python 05-rnns/rnn_torch.py --epochs 8 --resume   (continue from runs/rnn_torch/checkpoint.pt)
Look first at `RNN.forward` (the loop over time), then at the training loop's `state.detach()`, then
at the samples printed after each epoch. Compare the validation perplexity with lstm_torch.py and
gru_torch.py: the same size and budget.
"""

# %%
import argparse
import math
import shlex
import sys
import time
from itertools import count, islice
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from tqdm import tqdm

from data import (
    DataError,
    Vocab,
    lm_batches_sequential,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    probability,
    save_metrics,
    timemachine,
    tinyshakespeare,
    tokenize,
)

# %% [markdown]
# ## The layer


# %%
class RNN(nn.Module):
    """Multi-layer Elman RNN with tanh, as torch.nn.RNN (batch_first=False): (T, B, D) -> (T, B, H), (L, B, H).

    Parameters per layer k, named and shaped as torch's: weight_ih_l{k} (H, D_k), weight_hh_l{k} (H, H),
    bias_ih_l{k}, bias_hh_l{k} (H,), with D_0 = input_size and D_k = H above; all drawn from
    U(-1/sqrt(H), 1/sqrt(H)), torch's default.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, dropout=0.0):
        super().__init__()
        for name, value in [("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)]:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"RNN: {name} must be a positive int, got {value!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ValueError(f"RNN: dropout must be a number in [0, 1], got {dropout!r}")
        self.input_size, self.hidden_size, self.num_layers, self.dropout = input_size, hidden_size, num_layers, dropout
        H, bound = hidden_size, 1 / math.sqrt(hidden_size)
        for k in range(num_layers):
            D = input_size if k == 0 else H
            for name, shape in [("weight_ih", (H, D)), ("weight_hh", (H, H)), ("bias_ih", (H,)), ("bias_hh", (H,))]:
                self.register_parameter(f"{name}_l{k}", nn.Parameter(torch.empty(shape).uniform_(-bound, bound)))

    def forward(self, x, h0=None):
        """x (T, B, D), h0 (L, B, H) or None (zeros) -> output (T, B, H) of the top layer, h_n (L, B, H)."""
        if x.dim() != 3 or x.shape[0] < 1 or x.shape[2] != self.input_size:
            raise ValueError(f"RNN expects input (T, B, {self.input_size}) with T >= 1, got {tuple(x.shape)}")
        T, B, _ = x.shape
        L, H = self.num_layers, self.hidden_size
        if h0 is None:
            h0 = x.new_zeros(L, B, H)
        elif tuple(h0.shape) != (L, B, H):
            raise ValueError(f"RNN expects h0 of shape {(L, B, H)}, got {tuple(h0.shape)}")
        h_n = []
        for k in range(L):
            if k > 0:  # dropout between layers only, and only in training
                x = F.dropout(x, self.dropout, self.training)
            W_ih, W_hh = getattr(self, f"weight_ih_l{k}"), getattr(self, f"weight_hh_l{k}")
            b = getattr(self, f"bias_ih_l{k}") + getattr(self, f"bias_hh_l{k}")
            xW = x @ W_ih.T + b  # (T, B, H): the input term of every step in one matrix product
            h, hs = h0[k], []
            for t in range(T):
                h = torch.tanh(xW[t] + h @ W_hh.T)  # h_t = tanh(x_t W_ih^T + h_{t-1} W_hh^T + b)   (B, H)
                hs.append(h)
            x = torch.stack(hs)  # (T, B, H): this layer's states are the next layer's inputs
            h_n.append(h)
        return x, torch.stack(h_n)  # (T, B, H), (L, B, H)

    @torch.no_grad()
    def copy_from(self, module):
        """Load the weights of an nn.RNN of the same size (tanh, with biases, unidirectional); returns self."""
        same = (isinstance(module, nn.RNN) and module.mode == "RNN_TANH" and module.bias
                and not module.bidirectional and module.proj_size == 0
                and (module.input_size, module.hidden_size, module.num_layers)
                == (self.input_size, self.hidden_size, self.num_layers))
        if not same:
            raise ValueError(f"copy_from needs nn.RNN({self.input_size}, {self.hidden_size}, "
                             f"num_layers={self.num_layers}) with tanh and biases, got {module!r}")
        self.load_state_dict(module.state_dict())
        return self

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, dropout={self.dropout}"


# %% [markdown]
# ## The language model and the data


# %%
class CharLM(nn.Module):
    """Embedding -> RNN -> linear to the vocabulary.   X (T, B) int -> logits (T, B, V), state (L, B, H)."""

    def __init__(self, vocab_size, embed_dim, hidden_size, num_layers, dropout):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.rnn = RNN(embed_dim, hidden_size, num_layers, dropout)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, X, state=None):
        out, state = self.rnn(self.embed(X), state)  # (T, B, H), (L, B, H)
        return self.head(out), state  # (T, B, V)


CORPORA = {"tinyshakespeare": (tinyshakespeare, "ROMEO:\n"), "timemachine": (timemachine, "The Time Traveller ")}


def load_corpus(name, data_dir=None, smoke=False):
    """Characters of the corpus as indices, split 90/10 in order into train and validation; and the Vocab."""
    text = CORPORA[name][0](data_dir)
    if smoke:  # a small real subset
        text = text[:60_000]
    tokens = tokenize(text, "char")  # the raw text, every character a token (case and punctuation kept)
    vocab = Vocab(tokens)
    corpus = vocab.encode(tokens)
    n_train = int(0.9 * len(corpus))
    return corpus[:n_train], corpus[n_train:], vocab


def batch_stream(corpus, batch_size, seq_len, seed):
    """Sequentially partitioned (X, Y) batches, pass after pass over the corpus, each pass at a new random offset."""
    for n in count():
        yield from lm_batches_sequential(corpus, batch_size, seq_len, np.random.default_rng([seed, n]))


def to_tensors(X, Y, device="cpu"):
    """A (B, T) batch from the sampler to the (T, B) layout of the model, on the device."""
    return (torch.from_numpy(np.ascontiguousarray(X.T)).to(device),
            torch.from_numpy(np.ascontiguousarray(Y.T)).to(device))


@torch.no_grad()
def perplexity(model, corpus, batch_size, seq_len):
    """exp(mean next-character cross-entropy) over the corpus, read in order with the state carried over."""
    model.eval()
    device = next(model.parameters()).device
    state, total, count = None, 0.0, 0
    for X, Y in lm_batches_sequential(corpus, batch_size, seq_len, np.random.default_rng(0)):
        X, Y = to_tensors(X, Y, device)
        logits, state = model(X, state)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1), reduction="sum").item()
        count += Y.numel()
    model.train()
    return math.exp(total / count)


@torch.no_grad()
def sample(model, vocab, prompt, length, temperature=1.0, top_k=0, generator=None):
    """prompt plus `length` sampled characters: p ~ softmax(logits / temperature), kept to the top_k most likely."""
    model.eval()
    device = next(model.parameters()).device
    x = torch.from_numpy(vocab.encode(list(prompt)))[:, None].to(device)  # (T, 1)
    logits, state = model(x)  # warm the state up on the prompt
    out = []
    for _ in range(length):
        z = logits[-1, 0].cpu() / temperature  # (V,) lower temperature: sharper, more conservative
        if top_k:  # only the k most likely characters may be drawn
            z[z < torch.topk(z, min(top_k, len(z))).values[-1]] = -math.inf
        idx = torch.multinomial(F.softmax(z, dim=0), 1, generator=generator)  # (1,) drawn on the CPU
        out.append(idx.item())
        logits, state = model(idx.view(1, 1).to(device), state)
    model.train()
    return prompt + "".join(vocab.decode(out))


def plot_perplexity(hist, path, title):
    """Training and validation perplexity per epoch."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    epochs = np.arange(1, len(hist["train_ppl"]) + 1)
    ax.plot(epochs, hist["train_ppl"], "o-", label="train (mean over the epoch, while learning)")
    ax.plot(epochs, hist["val_ppl"], "s-", label="validation (end of epoch)")
    ax.set(xlabel="epoch", ylabel="perplexity", title=title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)


# %% [markdown]
# ## Device, checkpoint and resume


# %%
# device picker, as taught in 01-foundations/mlp_torch.py
def pick_device(name):
    """'auto' picks cuda, then mps, then cpu; asking for a device this machine lacks is an error."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(d for d, ok in available.items() if ok)
    if not available[name]:
        raise ValueError(f"--device {name}: not available on this machine")
    return torch.device(name)


# Flags a resumed run may change: how long it runs, where, and how it samples. Every other flag shapes the
# model, the data or the schedule, and must equal the checkpoint's, or the resumed run is not the same run.
RESUME_MAY_CHANGE = ("epochs", "resume", "device", "data_dir", "out_dir", "temperature", "top_k", "sample_len")


def config_mismatch(saved, now):
    """'--flag checkpoint-value -> this-run-value' for every flag outside RESUME_MAY_CHANGE that differs."""
    names = sorted((saved.keys() | now.keys()) - set(RESUME_MAY_CHANGE))
    return [f"--{k.replace('_', '-')} {saved.get(k, '(absent)')} -> {now.get(k, '(absent)')}"
            for k in names if saved.get(k) != now.get(k)]


def save_checkpoint(path, **state):
    """torch.save to a temporary file, then rename: an interrupt during the save leaves the old checkpoint whole."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


# %% [markdown]
# ## Main: one flat training loop with truncated BPTT


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", default="tinyshakespeare", choices=sorted(CORPORA), help="default tinyshakespeare")
    p.add_argument("--epochs", type=positive_int, default=None, help="total epochs (default 5; 2 with --smoke)")
    p.add_argument("--steps-per-epoch", type=positive_int, default=None,
                   help="minibatches per epoch (default 200; 40 with --smoke; one pass over Tiny Shakespeare is 900)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="parallel streams B (default 32)")
    p.add_argument("--seq-len", type=positive_int, default=35, help="BPTT length T (default 35)")
    p.add_argument("--hidden-size", type=positive_int, default=None,
                   help="hidden size H (default 256; 64 with --smoke)")
    p.add_argument("--layers", type=positive_int, default=2, help="stacked layers (default 2)")
    p.add_argument("--embed-dim", type=positive_int, default=64, help="character embedding size (default 64)")
    p.add_argument("--dropout", type=probability, default=0.1, help="dropout between layers (default 0.1)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="Adam learning rate (default 2e-3; 1e-2 with --smoke)")
    p.add_argument("--clip", type=nonneg_float, default=1.0,
                   help="max global gradient norm, 0: no clipping (default 1)")
    p.add_argument("--temperature", type=positive_float, default=0.8, help="sampling temperature (default 0.8)")
    p.add_argument("--top-k", type=nonneg_int, default=10,
                   help="sample among the k likeliest characters (0: all; default 10)")
    p.add_argument("--sample-len", type=positive_int, default=300, help="characters sampled per epoch (default 300)")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/checkpoint.pt up to --epochs")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seeds weights, data offsets, dropout and sampling (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with the corpus files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="for metrics, samples, figure, checkpoint (default runs/<script>)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on the first 60k characters, a small net")
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    if args.epochs is None:
        args.epochs = 2 if args.smoke else 5
    if args.steps_per_epoch is None:
        args.steps_per_epoch = 40 if args.smoke else 200
    if args.hidden_size is None:
        args.hidden_size = 64 if args.smoke else 256
    if args.lr is None:
        args.lr = 1e-2 if args.smoke else 2e-3  # a small net tolerates larger steps
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    ckpt_path = out_dir / "checkpoint.pt"
    ckpt = None
    if args.resume:
        if not ckpt_path.exists():
            p.error(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        mismatch = config_mismatch(ckpt["config"], vars(args))
        if mismatch:  # one line, exit 2: the flags that differ, the checkpoint's value and this run's
            p.exit(2, f"{p.prog}: error: --resume: {ckpt_path} was trained with other settings: "
                      f"{'; '.join(mismatch)} (rerun with the checkpoint's values, or use another --out-dir)\n")
        if ckpt["epoch"] >= args.epochs:
            p.error(f"nothing to do: the checkpoint has {ckpt['epoch']} epochs, --epochs is {args.epochs}")
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        train_corpus, val_corpus, vocab = load_corpus(args.corpus, args.data_dir, args.smoke)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    V = len(vocab)

    torch.manual_seed(args.seed)
    model = CharLM(V, args.embed_dim, args.hidden_size, args.layers, args.dropout).to(device)
    # Adam: per-parameter step sizes suit the embedding rows (rare characters get rare, small gradients)
    # and the recurrent weights alike, with one learning rate for all three cells; SGD would need one tuned per cell.
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    hist = {"train_ppl": [], "val_ppl": [], "grad_norm": [], "epoch_s": [], "samples": []}
    start = 1
    if ckpt is not None:
        if ckpt["vocab"] != vocab.idx_to_token:
            p.error("--resume: the checkpoint was trained on another corpus or subset")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        hist, start = ckpt["hist"], ckpt["epoch"] + 1
        torch.set_rng_state(ckpt["torch_rng"].cpu())  # dropout masks continue as if never stopped
        if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["cuda_rng"]])
        print(f"resumed from {ckpt_path} after epoch {ckpt['epoch']}")
    # An "epoch" here is `steps` minibatches between two evaluations; the batches run on through the text.
    steps = args.steps_per_epoch
    prompt = CORPORA[args.corpus][1]
    saved = start - 1  # the last epoch the checkpoint holds

    try:
        for epoch in range(start, args.epochs + 1):
            t0 = time.perf_counter()
            # this epoch's minibatches, the same after a resume (skipping the earlier ones costs only slicing)
            batches = islice(batch_stream(train_corpus, args.batch_size, args.seq_len, args.seed),
                             (epoch - 1) * steps, epoch * steps)
            state, losses, norms = None, [], []  # each epoch starts from a zero state
            for X, Y in tqdm(batches, total=steps, desc=f"epoch {epoch}", leave=False, disable=not sys.stdout.isatty()):
                X, Y = to_tensors(X, Y, device)  # (T, B) inputs and their next characters
                if state is not None:
                    state = state.detach()  # truncated BPTT: keep the state's value, cut its history
                logits, state = model(X, state)  # (T, B, V)
                loss = F.cross_entropy(logits.reshape(-1, V), Y.reshape(-1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                # clipping by global norm (as taught in 05-rnns/rnn_numpy.py): one scale for all gradients
                grads = [q.grad for q in model.parameters() if q.grad is not None]
                norm = torch.sqrt(sum((g * g).sum() for g in grads))  # ||g|| over every parameter
                if args.clip > 0:  # --clip 0: no clipping
                    for g in grads:
                        g.mul_(torch.clamp(args.clip / (norm + 1e-6), max=1.0))  # g <- g * min(1, theta / ||g||)
                opt.step()
                losses.append(loss.detach())
                norms.append(norm.detach())
            hist["train_ppl"].append(math.exp(torch.stack(losses).mean().item()))
            hist["grad_norm"].append(torch.stack(norms).median().item())
            hist["val_ppl"].append(perplexity(model, val_corpus, args.batch_size, args.seq_len))
            hist["epoch_s"].append(time.perf_counter() - t0)
            gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
            hist["samples"].append(sample(model, vocab, prompt, args.sample_len, args.temperature, args.top_k, gen))
            print(f"epoch {epoch:2d}/{args.epochs}  train ppl {hist['train_ppl'][-1]:.2f} | "
                  f"val ppl {hist['val_ppl'][-1]:.2f} | median grad norm {hist['grad_norm'][-1]:.2f} | "
                  f"{hist['epoch_s'][-1]:.1f} s", flush=True)
            print(hist["samples"][-1] + "\n", flush=True)
            save_checkpoint(ckpt_path, model=model.state_dict(), opt=opt.state_dict(), epoch=epoch, hist=hist,
                            torch_rng=torch.get_rng_state(), vocab=vocab.idx_to_token, config=vars(args),
                            cuda_rng=torch.cuda.get_rng_state_all() if device.type == "cuda" else None)
            saved = epoch
    except KeyboardInterrupt:  # Ctrl-C: say what is saved and how to go on, without a traceback
        flags = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--resume"]
        script = f"{Path(__file__).resolve().parent.name}/{Path(__file__).name}"
        if saved:
            print(f"\ninterrupted in epoch {epoch}; {ckpt_path} holds epoch {saved}. Resume with:\n  "
                  + shlex.join(["python", script, *flags, "--resume"]), file=sys.stderr)
        else:
            print(f"\ninterrupted in epoch {epoch}, before the first checkpoint; nothing saved. Start again with:\n  "
                  + shlex.join(["python", script, *flags]), file=sys.stderr)
        sys.exit(130)

    plot_perplexity(hist, out_dir / "perplexity.png",
                    f"{Path(__file__).stem}: {args.layers}x{args.hidden_size} RNN on {args.corpus} (|V| = {V})")
    samples = "".join(f"--- epoch {i + 1} ---\n{s}\n\n" for i, s in enumerate(hist["samples"]))
    (out_dir / "samples.txt").write_text(samples)
    metrics = {"script": Path(__file__).stem, "corpus": args.corpus, "vocab_size": V,
               "val_ppl": hist["val_ppl"][-1], "train_ppl": hist["train_ppl"][-1],
               "sec_per_epoch": float(np.median(hist["epoch_s"])), "steps_per_epoch": steps,
               "params": sum(q.numel() for q in model.parameters()), "sample": hist["samples"][-1],
               "device": str(device), "config": vars(args),
               "history": {k: hist[k] for k in ("train_ppl", "val_ppl", "grad_norm")}}
    save_metrics(out_dir, metrics, __file__, argv)
    return metrics


if __name__ == "__main__":
    main()
