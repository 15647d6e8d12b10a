"""Linformer (Wang et al. 2020): self-attention in O(T k) by projecting keys and values along the sequence to k rows.

Full attention compares every query with every key: a (T, T) matrix of weights per head, O(T^2) time and memory.
The Linformer paper finds that matrix close to low rank, and learns two (k, T) matrices E, F per head that mix
the T keys and the T values into k rows each before attention:
    full        head = softmax(Q K^T / sqrt(d)) V                        weights (T, T)
    Linformer   head = softmax(Q (E K)^T / sqrt(d)) (F V),  E, F (k, T)   weights (T, k): linear in T at fixed k
    sharing     none: E_i, F_i for each head i of each layer (the paper's general form, the default here)
                headwise: one E, F per layer for all its heads;  key-value: one E per layer, F = E
                layerwise: one E for every head, layer, keys and values (the paper's Table 2: sharing costs little)
With k = T and E = F = I the two are the same function (tested). E and F fix T: a shorter input must be padded
to T, and a causal mask is impossible (E K mixes future keys into every row), so Linformer is an encoder.
    encoder     h_0 = x_t w + b + p_t  (a linear embedding of each pixel value plus a learned position)
                h = h + W_O attn(LN(h)),  h = h + W_2 GELU(W_1 LN(h))   pre-LN blocks (GPT-2's order)
                logits = W_c mean_t LN(h_L)_t                             mean pooling, then a linear classifier
Pre-LN: it trains without a warm-up at the short CPU budget here (Xiong et al. 2020); the paper's RoBERTa is
post-LN. The task: Fashion-MNIST read pixel by pixel, a 784-step sequence per image (the Long Range Arena reads
CIFAR-10 so, 1,024 steps): full attention stores 784^2 = 614,656 weights per head and image, Linformer at
k = 64 stores 50,176.

The default run trains four models at equal settings, on the same batches from the same seed: full attention,
then Linformer with k = 32, 64, 128; it reports test accuracy and seconds per epoch of each, and plots both
against k. It trains on the first 2,500 training images (--n-train) for 2 epochs and tests on the first 1,000
(--n-test), to fit about 12 minutes on two CPU cores: full attention alone takes more than half of it.

Reading: S. Wang, B. Z. Li, M. Khabsa, H. Fang, H. Ma (2020), "Linformer: Self-Attention with Linear Complexity",
https://arxiv.org/abs/2006.04768; R. Xiong et al. (2020), "On Layer Normalization in the Transformer
Architecture", https://arxiv.org/abs/2002.04745; Y. Tay et al. (2020), "Long Range Arena: A Benchmark for
Efficient Transformers", https://arxiv.org/abs/2011.04006
Arc: Translation, attention and transformers -- Linformer (linear attention by low-rank projection).

Run:  python 06-transformers/linformer_torch.py           (four models; about 12 min on two cores, estimated)
      python 06-transformers/linformer_torch.py --attention linformer --k 64 --share kv
      python benchmarks/long_attention.py            (time and memory of full, Linformer and LSH attention vs T)
Look first at `full_attention` and `linformer_attention`, then `SelfAttention.projections` (the sharing),
then runs/linformer_torch/linformer.png and the rows of metrics.json.
"""

# %%
import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.nn.functional import cross_entropy, gelu, scaled_dot_product_attention
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
# ## The two attentions, as plain functions (benchmarks/long_attention.py times them)


# %%
def full_attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v.  q, k, v (B, nh, T, d) -> (B, nh, T, d); the (B, nh, T, T) weights are stored."""
    q = q / math.sqrt(q.shape[-1])  # scaling q (T x d) rather than the scores (T x T): the same, 25% faster here
    att = q @ k.transpose(-2, -1)  # (B, nh, T, T)   every query against every key
    return att.softmax(dim=-1) @ v  # (B, nh, T, d)


def linformer_attention(q, k, v, E, F):
    """softmax(q (E k)^T / sqrt(d)) (F v).  q, k, v (B, nh, T, d); E, F (kp, T) shared by the heads, or
    (nh, kp, T) one per head -> (B, nh, T, d); the weights stored are (B, nh, T, kp)."""
    k_proj = E @ k  # (B, nh, kp, d)   E K: kp learned mixtures of the T keys
    v_proj = F @ v  # (B, nh, kp, d)   F V: kp mixtures of the T values
    att = q / math.sqrt(q.shape[-1]) @ k_proj.transpose(-2, -1)  # (B, nh, T, kp)
    return att.softmax(dim=-1) @ v_proj  # (B, nh, T, d)


# %% [markdown]
# ## The encoder: pre-LN blocks whose attention is full or Linformer's, with the paper's sharing options


# %%
@dataclass
class LinformerConfig:
    block_size: int = 784  # T: one position per pixel (E and F are (k, T): the length is fixed)
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    n_class: int = 10
    dropout: float = 0.0  # on each branch's output before it joins the residual stream
    attention: str = "linformer"  # or "full"
    k: int = 64  # kp, the projected length of the keys and values
    share: str = "none"  # "none" | "headwise" | "kv" | "layerwise"
    sdpa: bool = False  # F.scaled_dot_product_attention instead of the hand-written attention


SHARE = ("none", "headwise", "kv", "layerwise")


def projection(*shape):
    """A learned E or F. Entries N(0, 1/T): each of the kp rows of E K then has about the scale of one key."""
    return nn.Parameter(torch.randn(shape) / math.sqrt(shape[-1]))


class SelfAttention(nn.Module):
    """n_head heads; their keys and values are projected by E, F first where config.attention is "linformer"."""

    def __init__(self, config):
        super().__init__()
        C, nh, kp, T = config.n_embd, config.n_head, config.k, config.block_size
        assert C % nh == 0, "n_embd must be a multiple of n_head"
        self.c_attn = nn.Linear(C, 3 * C)  # W_Q, W_K, W_V side by side
        self.c_proj = nn.Linear(C, C)  # W_O
        self.config = config
        if config.attention == "linformer" and config.share == "none":
            self.E, self.F = projection(nh, kp, T), projection(nh, kp, T)  # E_i, F_i of each head i
        elif config.attention == "linformer" and config.share == "headwise":
            self.E, self.F = projection(kp, T), projection(kp, T)  # one E, one F for the heads of this layer
        elif config.attention == "linformer" and config.share == "kv":
            self.E = projection(kp, T)  # F = E
        # layerwise: the encoder owns the one E and hands it to every layer

    def projections(self, E_all=None):
        """(E, F) of this layer: its own, or E_all, the encoder's one matrix under layerwise sharing."""
        share = self.config.share
        if share == "layerwise":
            return E_all, E_all
        return (self.E, self.E) if share == "kv" else (self.E, self.F)

    def forward(self, x, E_all=None):
        """x (B, T, C) -> (B, T, C)."""
        B, T, C = x.shape
        nh = self.config.n_head
        q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))  # (B, nh, T, d)
        if self.config.attention == "full":
            y = scaled_dot_product_attention(q, k, v) if self.config.sdpa else full_attention(q, k, v)
        else:
            assert T == self.config.block_size, f"Linformer's E, F take exactly {self.config.block_size} positions"
            E, F = self.projections(E_all)
            if self.config.sdpa:  # the fused kernel on the projected keys and values: the same numbers (tested)
                y = scaled_dot_product_attention(q, E @ k, F @ v)
            else:
                y = linformer_attention(q, k, v, E, F)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))  # Concat(heads) W_O


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)  # W_1
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)  # W_2

    def forward(self, x):
        return self.c_proj(gelu(self.c_fc(x)))


class Block(nn.Module):
    """Pre-LN: h + attn(LN(h)), then h + MLP(LN(h)), as GPT-2's blocks (without the causal mask)."""

    def __init__(self, config):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(config.n_embd), SelfAttention(config)
        self.ln_2, self.mlp = nn.LayerNorm(config.n_embd), MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, h, E_all=None):
        h = h + self.dropout(self.attn(self.ln_1(h), E_all))
        return h + self.dropout(self.mlp(self.ln_2(h)))


class PixelEncoder(nn.Module):
    """An image as a sequence of T pixel values -> class logits: embed, n_layer blocks, LN, mean pool, classify."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        C = config.n_embd
        self.wte = nn.Linear(1, C)  # a pixel's value x_t -> x_t w + b, the "token embedding" of a pixel
        self.wpe = nn.Embedding(config.block_size, C)  # p_t, learned
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(C)
        self.head = nn.Linear(C, config.n_class)  # W_c
        if config.attention == "linformer" and config.share == "layerwise":
            self.E = projection(config.k, config.block_size)  # the one E of every head and layer, keys and values
        for m in self.modules():  # GPT-2's initialisation (as in gpt2_torch.py): N(0, 0.02), biases 0
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def encode(self, x):
        """x (B, T) pixel values -> the last block's states after ln_f (B, T, C)."""
        pos = torch.arange(x.shape[1], device=x.device)
        h = self.wte(x[..., None]) + self.wpe(pos)  # (B, T, C)   h_0 = x_t w + b + p_t
        E_all = getattr(self, "E", None)
        for block in self.h:
            h = block(h, E_all)
        return self.ln_f(h)

    def forward(self, x):
        return self.head(self.encode(x).mean(dim=1))  # (B, n_class)   mean pooling over the T positions


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# %% [markdown]
# ## Data: Fashion-MNIST images as 784-step sequences of standardised pixel values


# %%
def load_data(data_dir, n_train, n_test):
    """The first n_train training and n_test test images as float32 (N, 784) rows, read row by row, standardised
    with the training pixels' mean and std; labels int64."""
    Xtr, ytr = fashion_mnist("train", data_dir)
    Xte, yte = fashion_mnist("test", data_dir)
    Xtr, ytr, Xte, yte = Xtr[:n_train], ytr[:n_train], Xte[:n_test], yte[:n_test]
    Xtr, Xte = Xtr.reshape(len(Xtr), -1).astype(np.float32) / 255, Xte.reshape(len(Xte), -1).astype(np.float32) / 255
    mean, std = Xtr.mean(), Xtr.std()
    return (Xtr - mean) / std, ytr, (Xte - mean) / std, yte


# %% [markdown]
# ## Training one model: AdamW, a cosine schedule, clipping; the same batches for every model


# %%
def configure_optimizer(model, lr, weight_decay):
    """AdamW with decay on the matrices (E and F among them), not on biases or LayerNorm gains (gpt2_torch.py)."""
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]  # fmt: skip
    return torch.optim.AdamW(groups, lr=lr)


def get_lr(step, lr, total):
    """A cosine from lr at step 0 down to 0 at step total (no warm-up: pre-LN does not need one here)."""
    return 0.5 * lr * (1 + math.cos(math.pi * step / total))


@torch.no_grad()
def evaluate(model, X, y, batch_size, device):
    """Mean cross-entropy and accuracy on (X, y), in chunks of batch_size (full attention's weights are big)."""
    model.eval()
    loss, right = 0.0, 0
    for i in range(0, len(X), batch_size):
        xb, yb = torch.from_numpy(X[i : i + batch_size]).to(device), torch.from_numpy(y[i : i + batch_size]).to(device)
        logits = model(xb)
        loss += cross_entropy(logits, yb, reduction="sum").item()
        right += (logits.argmax(-1) == yb).sum().item()
    model.train()
    return loss / len(X), right / len(X)


def train(config, data, args, device, name):
    """Train one model from seed args.seed for args.epochs on the batches drawn from [args.seed, epoch]: every
    model sees the same images in the same order. -> its row of metrics."""
    Xtr, ytr, Xte, yte = data
    torch.manual_seed(args.seed)
    model = PixelEncoder(config).to(device)
    opt = configure_optimizer(model, args.lr, args.weight_decay)
    steps, step = args.epochs * math.ceil(len(Xtr) / args.batch_size), 0
    hist = {"train_loss": [], "test_loss": [], "test_acc": [], "sec": []}
    first_loss = None
    print(f"{name}: {n_params(model):,} parameters")
    for epoch in range(args.epochs):
        rng = np.random.default_rng([args.seed, 1, epoch])
        batches = list(minibatches(len(Xtr), args.batch_size, rng))
        losses, t0 = [], time.perf_counter()
        for idx in tqdm(batches, desc=f"{name} {epoch + 1}", leave=False, disable=not sys.stdout.isatty()):
            for g in opt.param_groups:
                g["lr"] = get_lr(step, args.lr, steps)
            xb, yb = torch.from_numpy(Xtr[idx]).to(device), torch.from_numpy(ytr[idx]).to(device)
            loss = cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip > 0:  # clipping by global norm, as taught in 05-rnns/rnn_numpy.py
                nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            step += 1
            losses.append(loss.item())
            first_loss = losses[0] if first_loss is None else first_loss
        sec = time.perf_counter() - t0  # training only; the evaluation below is not timed
        test_loss, test_acc = evaluate(model, Xte, yte, args.batch_size, device)
        for key, value in zip(hist, (float(np.mean(losses)), test_loss, test_acc, sec)):
            hist[key].append(value)
        print(f"{name} epoch {epoch + 1}/{args.epochs}  train loss {hist['train_loss'][-1]:.3f} | test loss "
              f"{test_loss:.3f}, acc {test_acc:.3f} | {sec:.1f} s", flush=True)  # fmt: skip
    return {"model": name, "attention": config.attention, "k": config.k if config.attention == "linformer" else None,
            "share": config.share if config.attention == "linformer" else None, "params": n_params(model),
            "test_acc": hist["test_acc"][-1], "test_loss": hist["test_loss"][-1], "first_loss": first_loss,
            "final_train_loss": hist["train_loss"][-1], "sec_per_epoch": float(np.mean(hist["sec"])),
            "history": hist}  # fmt: skip


# %% [markdown]
# ## Device, the figure


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


def plot(rows, path):
    """Test accuracy and seconds per epoch against k (full attention as a dashed line), and the training losses."""
    fig = Figure(figsize=(15, 4), layout="constrained")
    ax = fig.subplots(1, 3)
    lin = sorted((r for r in rows if r["attention"] == "linformer"), key=lambda r: r["k"])
    full = [r for r in rows if r["attention"] == "full"]
    for a, key, label in ((ax[0], "test_acc", "test accuracy"), (ax[1], "sec_per_epoch", "seconds per epoch")):
        if lin:
            a.plot([r["k"] for r in lin], [r[key] for r in lin], "o-", label="Linformer")
            a.set_xscale("log", base=2)
            a.set_xticks([r["k"] for r in lin], [str(r["k"]) for r in lin])
        for r in full:
            a.axhline(r[key], color="k", ls="--", label="full attention")
        a.set(xlabel="k (projected length of keys and values)", ylabel=label, title=f"{label} against k")
        a.legend()
    for r in rows:
        epochs = range(1, len(r["history"]["train_loss"]) + 1)
        ax[2].plot(epochs, r["history"]["train_loss"], "o-", label=r["model"])
        ax[2].set_xticks(list(epochs))
    ax[2].set(xlabel="epoch", ylabel="cross-entropy", title="training loss (mean of each epoch)")
    ax[2].legend()
    fig.savefig(path, dpi=110)


# %% [markdown]
# ## Main: full attention, then Linformer at each k, at equal settings


# %%
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--attention", choices=["full", "linformer"], default=None,
                   help="train this one kind (default: both: full attention, then Linformer at each --k)")
    p.add_argument("--k", type=positive_int, nargs="+", default=None,
                   help="Linformer's projected lengths, one model each (default 32 64 128)")
    p.add_argument("--share", choices=SHARE, default="none",
                   help="Linformer's sharing of E, F: none (default), headwise, kv (E = F) or layerwise")
    p.add_argument("--n-layer", type=positive_int, default=None, help="blocks (default 2; 1 with --smoke)")
    p.add_argument("--n-head", type=positive_int, default=2, help="heads (default 2)")
    p.add_argument("--n-embd", type=positive_int, default=None, help="width (default 64; 16 with --smoke)")
    p.add_argument("--dropout", type=probability, default=0.0, help="on each branch's output (default 0)")
    p.add_argument("--sdpa", action="store_true", help="F.scaled_dot_product_attention instead of the hand-written")
    p.add_argument("--epochs", type=positive_int, default=None, help="passes over --n-train (default 2)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per step (default 32)")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="peak of the cosine schedule (default 2e-3)")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.01, help="AdamW's, on matrices (default 0.01)")
    p.add_argument("--clip", type=nonneg_float, default=1.0, help="max global gradient norm, 0: off (default 1)")
    p.add_argument("--n-train", type=positive_int, default=None,
                   help="the first N training images (default 2500, for a 12-minute run; 64 with --smoke)")
    p.add_argument("--n-test", type=positive_int, default=None, help="the first N test images (1000; 64 --smoke)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds the weights and the batches (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="for metrics and the figure (default runs/<script>)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on real images: a small model, 64 images")
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    defaults = {"n_layer": (1, 2), "n_embd": (16, 64), "epochs": (2, 2), "n_train": (64, 2500),
                "n_test": (64, 1000)}  # fmt: skip
    for name, (smoke, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    if args.attention == "full" and (args.k is not None or args.share != "none"):
        p.error("--k and --share are Linformer's: not with --attention full")
    if args.k is None:
        args.k = [32, 64, 128]
    T = LinformerConfig.block_size
    for k in args.k:
        if k > T:
            p.error(f"--k {k}: at most {T}, the sequence length (k = T projects nothing away)")
    if len(set(args.k)) != len(args.k):
        p.error(f"--k {' '.join(map(str, args.k))}: a value twice")
    if args.n_embd % args.n_head:
        p.error(f"--n-embd {args.n_embd} is not a multiple of --n-head {args.n_head}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)

    try:
        data = load_data(args.data_dir, args.n_train, args.n_test)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    out_dir.mkdir(parents=True, exist_ok=True)
    base = LinformerConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout,
                           share=args.share, sdpa=args.sdpa)  # fmt: skip
    configs = [] if args.attention == "linformer" else [("full", replace(base, attention="full"))]
    if args.attention != "full":
        configs += [(f"linformer k={k}", replace(base, attention="linformer", k=k)) for k in args.k]
    print(f"Fashion-MNIST as {T}-step pixel sequences: {len(data[0]):,} training and {len(data[2]):,} test images; "
          f"{args.n_layer} pre-LN blocks, width {args.n_embd}, {args.n_head} heads; {len(configs)} models, "
          f"{args.epochs} epochs each, batch {args.batch_size}, on {device}, {torch.get_num_threads()} threads")
    t0 = time.perf_counter()
    rows = [train(config, data, args, device, name) for name, config in configs]
    print("model              params  test acc  s/epoch")
    for r in rows:
        print(f"{r['model']:<16} {r['params']:8,}  {r['test_acc']:8.3f}  {r['sec_per_epoch']:7.1f}")
    plot(rows, out_dir / "linformer.png")
    headline = {f"{r['model'].replace('linformer k=', 'k')}_{key}": r[key] for key in ("test_acc", "sec_per_epoch")
                for r in rows}  # full_test_acc, k32_test_acc, ..., then the seconds per epoch: RESULTS.md's row
    metrics = {"script": Path(__file__).stem, **headline, "rows": rows, "n_train": len(data[0]), "n_test": len(data[2]),
               "seq_len": T, "minutes": (time.perf_counter() - t0) / 60, "device": str(device),
               "model_config": asdict(base), "config": vars(args)}  # fmt: skip
    save_metrics(out_dir, metrics, __file__, argv)
    return metrics


if __name__ == "__main__":
    main()
