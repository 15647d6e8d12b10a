"""Vision Transformer (Dosovitskiy et al. 2020): an image cut into patches, read as a sequence by a Transformer encoder.

    patches     x (C, H, W) -> N = HW / P^2 patches x_p^i, each flattened to C P^2 numbers (row-major, channel first)
    embedding   z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos,  E (C P^2, D), E_pos (N + 1, D) learned   (eq. 1)
                x_p^i E + b is a convolution with kernel P and stride P: the same weights, reshaped (tested)
    block       z' = z + MSA(LN(z)),   z'' = z' + MLP(LN(z'))                     pre-LN (eq. 2, 3)
    MSA         softmax(Q K^T / sqrt(d_head)) V per head, no mask: every patch reads every patch
    MLP         W_2 GELU(W_1 z + b_1) + b_2,  GELU(x) = x Phi(x) (the exact form, as Hugging Face's "gelu")
    head        logits = W_head LN(z_L^0) + b_head: the class token's final state          (eq. 4)
    rollout     A^_l = (mean over heads of A_l + I) / 2 (rows sum to 1),  R = A^_L ... A^_1 (Abnar & Zuidema 2020);
                R[0, 1:] is how much the class token's output draws on each patch through all the layers
    training    AdamW (decay on matrices only), linear warm-up then cosine to 0 (per step), label smoothing,
                clipping; horizontal flips (random shifts of --shift pixels are an option: they cost more than they
                give: in 16 epochs, 0.880 against 0.8995-0.9025 without)

Presets: vit-b16 and vit-l16 (224x224, 16x16 patches, 1000 classes; parameter counts tested) and `fmnist`, the
small default trained here: 28x28 in 7x7 patches (16 patches + the class token), 6 blocks of width 64. The last
5,000 training images are held out for validation (read every epoch, the split to choose settings on); the test
set is read once, at the end. The comparison is 04-cnns/resnet_torch.py's ResNet-20 (269,434 parameters, 4 epochs):
a CNN of about the same size and minutes; metrics.json records this run's `params` and `train_minutes` for the
table. A ViT has no convolution's prior (locality, translation equivariance) and must learn it from data; on
60,000 small images it needs more epochs than the CNN for the same accuracy (the paper: ViT wins only after
pre-training on 14M-300M images). The position-similarity figure shows what it learned about 2-D layout.

Reading: A. Dosovitskiy et al. (2020), "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale", https://arxiv.org/abs/2010.11929; S. Abnar, W. Zuidema (2020), "Quantifying Attention Flow in
Transformers", https://arxiv.org/abs/2005.00928; H. Touvron et al. (2021), "Training data-efficient image
transformers" (DeiT: AdamW, warm-up + cosine, strong augmentation), https://arxiv.org/abs/2012.12877
Arc: Beyond text -- the Vision Transformer (ViT).

Run:  python 06-transformers/vit_torch.py                  (24 epochs of about 22 s on 2 cores: 9 minutes)
      python 06-transformers/vit_torch.py --smoke          (seconds)
      python 06-transformers/vit_torch.py --init-from DIR  (fine-tune a Hugging Face ViTForImageClassification folder;
                                                            images are resized to its size, grey repeated over RGB)
Look first at `Embeddings.forward` (patches, class token, positions), `Layer.forward` (pre-LN), `attention_rollout`,
then at runs/vit_torch/rollout.png and position_similarity.png.
"""

# %%
import argparse
import json
import math
import os
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from tqdm import tqdm

from data import (
    FASHION_MNIST_CLASSES,
    DataError,
    fashion_mnist,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    probability,
    save_metrics,
)

# %% [markdown]
# ## The model: patch embedding, class token, positions, pre-LN blocks, the head (Hugging Face's names)


# %%
@dataclass
class ViTConfig:
    image_size: int = 28  # square images, image_size x image_size pixels
    patch_size: int = 7  # P: N = (image_size / P)^2 patches
    num_channels: int = 1
    num_classes: int = 10
    n_layer: int = 6
    n_head: int = 4
    n_embd: int = 64  # D, the hidden size
    n_inner: int = 128  # the MLP's width (intermediate_size); the paper: 4 D
    dropout: float = 0.0  # on the embeddings, the attention weights and each branch (--dropout)
    ln_eps: float = 1e-12  # Hugging Face's layer_norm_eps (the paper's JAX code: 1e-6)
    qkv_bias: bool = True
    sdpa: bool = False  # F.scaled_dot_product_attention instead of the hand-written attention


# ViTForImageClassification, 1000 classes (tested): vit-b16 86,567,656, vit-l16 304,326,632 parameters.
PRESETS = {"vit-b16": ViTConfig(224, 16, 3, 1000, 12, 12, 768, 3072),
           "vit-l16": ViTConfig(224, 16, 3, 1000, 24, 16, 1024, 4096),
           "fmnist": ViTConfig()}  # fmt: skip


def gelu(x):
    """GELU(x) = x Phi(x), Phi the standard normal CDF: the exact form (Hugging Face's "gelu"; GPT-2: tanh)."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def patchify(x, P):
    """(B, C, H, W) -> (B, N, C P P): the patches in row-major order, each flattened channel, row, column.
    patchify(x) @ E.reshape(D, C P P).T + b is what the strided convolution of PatchEmbeddings computes."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // P, P, W // P, P)  # (B, C, gh, P, gw, P)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(B, (H // P) * (W // P), C * P * P)


class PatchEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        P = config.patch_size  # E as a conv: kernel P, stride P, so each output pixel sees one patch
        self.projection = nn.Conv2d(config.num_channels, config.n_embd, kernel_size=P, stride=P)

    def forward(self, x):  # (B, C, H, W) -> (B, N, D)
        return self.projection(x).flatten(2).transpose(1, 2)  # (B, D, gh, gw) -> (B, gh gw, D), row-major


class Embeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        N = (config.image_size // config.patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.n_embd))  # x_class, learned
        self.position_embeddings = nn.Parameter(torch.zeros(1, N + 1, config.n_embd))  # E_pos, learned
        self.patch_embeddings = PatchEmbeddings(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):  # (B, C, H, W) -> z_0 (B, N + 1, D)
        patches = self.patch_embeddings(x)  # (B, N, D)   x_p^i E + b
        cls = self.cls_token.expand(len(x), -1, -1)  # (B, 1, D)
        return self.dropout(torch.cat([cls, patches], dim=1) + self.position_embeddings)  # eq. 1


class SelfAttention(nn.Module):
    """n_head heads of scaled dot-product attention over all N + 1 tokens (Hugging Face's attention.attention)."""

    def __init__(self, config):
        super().__init__()
        C = config.n_embd
        assert C % config.n_head == 0, "n_embd must be a multiple of n_head"
        self.query, self.key, self.value = (nn.Linear(C, C, bias=config.qkv_bias) for _ in range(3))  # W_Q W_K W_V
        self.dropout = nn.Dropout(config.dropout)
        self.n_head, self.p, self.sdpa = config.n_head, config.dropout, config.sdpa

    def forward(self, x, need_weights=False):
        """x (B, T, C) -> the heads' outputs side by side (B, T, C), and the weights (B, h, T, T) if asked for."""
        B, T, C = x.shape
        q, k, v = (w(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for w in (self.query, self.key, self.value))  # fmt: skip   (B, h, T, d) each
        att = None
        if self.sdpa and not need_weights:  # the fused kernel: the same numbers (tested)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.0)
        else:
            att = (q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1])).softmax(dim=-1)  # (B, h, T, T)
            y = self.dropout(att) @ v  # (B, h, T, d)
        return y.transpose(1, 2).reshape(B, T, C), att  # Concat(heads); W_O is attention.output.dense


class Layer(nn.Module):
    """One pre-LN encoder block, names as Hugging Face's ViTLayer."""

    def __init__(self, config):
        super().__init__()
        C = config.n_embd
        self.layernorm_before = nn.LayerNorm(C, eps=config.ln_eps)
        self.attention = nn.ModuleDict({"attention": SelfAttention(config),
                                        "output": nn.ModuleDict({"dense": nn.Linear(C, C)})})  # fmt: skip  W_O
        self.layernorm_after = nn.LayerNorm(C, eps=config.ln_eps)
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(C, config.n_inner)})  # W_1
        self.output = nn.ModuleDict({"dense": nn.Linear(config.n_inner, C)})  # W_2
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, z, need_weights=False):  # (B, T, C) -> (B, T, C), attention weights or None
        y, att = self.attention.attention(self.layernorm_before(z), need_weights)
        z = z + self.dropout(self.attention.output.dense(y))  # z' = z + MSA(LN(z))          eq. 2
        m = gelu(self.intermediate.dense(self.layernorm_after(z)))
        return z + self.dropout(self.output.dense(m)), att  # z'' = z' + MLP(LN(z'))    eq. 3


class ViTModel(nn.Module):
    """The encoder (Hugging Face's ViTModel without a pooler, its `vit.`): embeddings, blocks, the final LN."""

    def __init__(self, config):
        super().__init__()
        self.embeddings = Embeddings(config)
        self.encoder = nn.ModuleDict({"layer": nn.ModuleList(Layer(config) for _ in range(config.n_layer))})
        self.layernorm = nn.LayerNorm(config.n_embd, eps=config.ln_eps)

    def forward(self, x, need_weights=False):  # (B, C, H, W) -> LN(z_L) (B, N + 1, D), [per layer (B, h, T, T)]
        z, atts = self.embeddings(x), []
        for layer in self.encoder.layer:
            z, att = layer(z, need_weights)
            atts.append(att)
        return self.layernorm(z), atts


class ViT(nn.Module):
    """ViTForImageClassification: `vit` the encoder, `classifier` the head on the class token."""

    def __init__(self, config):
        super().__init__()
        assert config.image_size % config.patch_size == 0, "patch_size must divide image_size"
        self.config = config
        self.vit = ViTModel(config)
        self.classifier = nn.Linear(config.n_embd, config.num_classes)
        for m in self.modules():  # Hugging Face's init: truncated N(0, 0.02), biases 0, LayerNorm gains 1
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.vit.embeddings.cls_token, std=0.02)
        nn.init.trunc_normal_(self.vit.embeddings.position_embeddings, std=0.02)

    def forward(self, images, need_weights=False):
        """images (B, C, H, W) -> logits (B, num_classes); with need_weights, also every layer's attention."""
        h, atts = self.vit(images, need_weights)
        logits = self.classifier(h[:, 0])  # eq. 4: the class token alone
        return (logits, atts) if need_weights else logits

    @classmethod
    def from_hf(cls, path, **overrides):
        """A Hugging Face ViTForImageClassification folder (config.json, model.safetensors) -> ViT with its weights
        (and the config's fields in overrides changed: dropout, sdpa, num_classes for a new head).

        The names are ours as they are. transformers 5 can also save renamed weights (save_original_format=False:
        layers.N, q_proj k_proj v_proj o_proj, mlp.fc1 fc2); those are renamed back. With num_classes other than
        the checkpoint's, the classifier is left at its fresh initialisation. Anything else is refused in one line."""
        from safetensors.torch import load_file

        path = Path(path)
        hf = json.loads((path / "config.json").read_text())
        for key, want in (("model_type", "vit"), ("hidden_act", "gelu")):
            if hf.get(key) != want:
                raise ValueError(f"{path}: {key} {hf.get(key)!r} is not supported here (only {want!r})")
        size, patch = hf.get("image_size", 224), hf.get("patch_size", 16)
        if not isinstance(size, int) or not isinstance(patch, int):
            raise ValueError(f"{path}: image_size {size!r} / patch_size {patch!r}: only square images and patches")
        n_labels = len(hf["id2label"]) if "id2label" in hf else hf.get("num_labels", 2)
        config = ViTConfig(size, patch, hf.get("num_channels", 3), n_labels, hf["num_hidden_layers"],
                           hf["num_attention_heads"], hf["hidden_size"], hf["intermediate_size"],
                           hf.get("hidden_dropout_prob", 0.0), hf.get("layer_norm_eps", 1e-12),
                           hf.get("qkv_bias", True))  # fmt: skip
        model = cls(replace(config, **overrides))
        sd = {}
        for k, w in load_file(path / "model.safetensors").items():
            for new, old in RENAMED:
                k = re.sub(new, old, k)
            sd[k] = w
        if model.config.num_classes != n_labels:  # a new task: keep the fresh head
            sd.pop("classifier.weight", None), sd.pop("classifier.bias", None)
        ours = model.state_dict()
        wanted = {k for k in ours if not (k.startswith("classifier.") and model.config.num_classes != n_labels)}
        if sd.keys() != wanted:
            missing, extra = sorted(wanted - sd.keys()), sorted(sd.keys() - wanted)
            raise ValueError(f"{path}: not ViTForImageClassification's weights: missing {missing[:3]}, "
                             f"unexpected {extra[:3]}")  # fmt: skip
        with torch.no_grad():
            for k, w in sd.items():
                if w.shape != ours[k].shape:
                    raise ValueError(f"{path}: {k} has shape {tuple(w.shape)}, config.json says {tuple(ours[k].shape)}")
                ours[k].copy_(w)
        return model


# transformers 5's renamed ViT weights (save_original_format=False) -> the checkpoint names used here
RENAMED = [(r"^vit\.layers\.", "vit.encoder.layer."), (r"attention\.q_proj\.", "attention.attention.query."),
           (r"attention\.k_proj\.", "attention.attention.key."), (r"attention\.v_proj\.", "attention.attention.value."),
           (r"attention\.o_proj\.", "attention.output.dense."), (r"mlp\.fc1\.", "intermediate.dense."),
           (r"mlp\.fc2\.", "output.dense.")]  # fmt: skip


# %% [markdown]
# ## What the model learned: attention rollout, the position embeddings' similarity


# %%
def attention_rollout(atts):
    """Abnar & Zuidema's rollout. atts: per layer (B, h, T, T), rows summing to 1 -> R (B, T, T) = A^_L ... A^_1,
    A^_l = (mean_h A_l + I) / 2: the residual connection carries half of each token through every layer."""
    T = atts[0].shape[-1]
    eye = torch.eye(T, dtype=atts[0].dtype, device=atts[0].device)
    R = eye.expand(atts[0].shape[0], T, T)
    for A in atts:
        A = 0.5 * A.mean(dim=1) + 0.5 * eye  # (B, T, T)
        R = (A / A.sum(dim=-1, keepdim=True)) @ R  # the later layer on the left
    return R


def position_similarity(config, pos):
    """pos: the position embeddings (1, N + 1, D) -> S (g, g, g, g), g = image_size / patch_size: S[i, j] is the
    cosine similarity of patch (i, j)'s embedding with every patch's, laid out on the patch grid."""
    g = config.image_size // config.patch_size
    p = F.normalize(pos[0, 1:], dim=-1)  # (N, D), the class token's left out
    return (p @ p.T).reshape(g, g, g, g)


# %% [markdown]
# ## Data: Fashion-MNIST, a validation split, the augmentation


# %%
def load_data(data_dir, n_train, n_val, n_test):
    """-> (train, val, test) pairs of float32 images (N, 1, 28, 28) in [0, 1] and int64 labels. Validation is the
    last n_val images of the training set, training the first n_train of the others, test the first n_test of the
    test set."""
    X, y = fashion_mnist("train", data_dir)
    Xte, yte = fashion_mnist("test", data_dir)
    X = X.reshape(-1, 1, 28, 28).astype(np.float32) / 255
    Xte = Xte.reshape(-1, 1, 28, 28).astype(np.float32) / 255
    train = X[: len(X) - n_val][:n_train], y[: len(X) - n_val][:n_train]
    return train, (X[len(X) - n_val :], y[len(X) - n_val :]), (Xte[:n_test], yte[:n_test])


# Horizontal flip and (pad > 0, --shift) a random crop of the zero-padded image, as taught in 04-cnns/resnet_torch.py.
def augment(x, gen, pad):
    """x (B, C, H, W) -> (B, C, H, W): image b shifted by up to `pad` pixels each way (zeros come in) and mirrored
    with probability 1/2, random numbers from `gen`. The batch keeps its order, so the labels still apply."""
    B, C, H, W = x.shape
    i, j = torch.randint(0, 2 * pad + 1, (2, B), generator=gen).to(x.device)
    flip = (torch.rand(B, generator=gen) < 0.5).to(x.device)
    xp = F.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2 pad, W + 2 pad)
    rows = i[:, None] + torch.arange(H, device=x.device)  # (B, H)
    cols = j[:, None] + torch.arange(W, device=x.device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flipped image reads its columns backwards
    b = torch.arange(B, device=x.device)
    return xp[b[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def prepare(x, config):
    """(B, 1, 28, 28) in [0, 1] -> the model's input: (x - 0.5) / 0.5 as Hugging Face's ViT image processor, resized
    to the model's image_size (bilinear) and repeated over its channels where they differ (a released model)."""
    x = (x - 0.5) / 0.5
    if x.shape[-1] != config.image_size:
        x = F.interpolate(x, size=(config.image_size, config.image_size), mode="bilinear", align_corners=False)
    return x.expand(-1, config.num_channels, -1, -1)


# %% [markdown]
# ## Training pieces: the schedule, evaluation, device, checkpoints


# %%
# The schedule, as taught in 04-cnns/resnet_torch.py.
def warmup_cosine(step, warmup, total):
    """lr multiplier of step `step` (from 0): linear warm-up to 1 over `warmup` steps, then a cosine down to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def evaluate(model, X, y, chunk=500):
    """Mean cross-entropy (no smoothing) and accuracy of the model on (X, y), dropout off."""
    model.eval()
    loss = right = 0.0
    for s in range(0, len(X), chunk):
        logits = model(prepare(X[s : s + chunk], model.config))
        loss += F.cross_entropy(logits, y[s : s + chunk], reduction="sum").item()
        right += (logits.argmax(-1) == y[s : s + chunk]).sum().item()
    model.train()
    return loss / len(X), right / len(X)


# device picker, as taught in 01-foundations/mlp_torch.py
def pick_device(name):
    """'auto' picks cuda, then mps, then cpu; asking for a device this machine lacks is an error."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(d for d, ok in available.items() if ok)
    if not available[name]:
        raise ValueError(f"--device {name}: not available on this machine")
    return torch.device(name)


def save_checkpoint(path, **state):
    """torch.save to a temporary file, then rename: an interrupt during the save leaves the old checkpoint whole."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


# %% [markdown]
# ## Figures: learning curves, rollout over test images, position similarity


# %%
def plot_curves(hist, path, title):
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax = fig.subplots(1, 3)
    epochs = np.arange(1, len(hist["val_acc"]) + 1)
    steps = np.arange(1, len(hist["step_loss"]) + 1) / max(1, len(hist["step_loss"]) // max(1, len(epochs)))
    ax[0].plot(steps, hist["step_loss"], lw=0.5, alpha=0.5, label="train, per step (augmented, smoothed labels)")
    ax[0].plot(epochs, hist["val_loss"], "o-", label="validation")
    ax[1].plot(epochs, hist["train_acc"], "o--", label="train (augmented)")
    ax[1].plot(epochs, hist["val_acc"], "o-", label="validation")
    ax[2].plot(steps, hist["lr"])
    ax[0].set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax[1].set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax[2].set(xlabel="epoch", ylabel="learning rate", title="warm-up, then cosine")
    ax[0].legend(fontsize=8), ax[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)


def plot_rollout(images, maps, labels, preds, path):
    """Row 1: test images with true / predicted class; row 2: the class token's rollout over the patches on top."""
    n = len(images)
    fig = Figure(figsize=(1.8 * n, 4), layout="constrained")
    ax = fig.subplots(2, n, squeeze=False)
    for k in range(n):
        ax[0, k].imshow(images[k], cmap="gray")
        ax[0, k].set_title(f"{FASHION_MNIST_CLASSES[labels[k]]}\n-> {FASHION_MNIST_CLASSES[preds[k]]}", fontsize=8)
        ax[1, k].imshow(images[k], cmap="gray")
        ax[1, k].imshow(maps[k], cmap="inferno", alpha=0.6, extent=(-0.5, 27.5, 27.5, -0.5))
        for a in ax[:, k]:
            a.set_axis_off()
    fig.suptitle("attention rollout of the class token over the patches (Abnar & Zuidema 2020), test images")
    fig.savefig(path, dpi=110)


def plot_position_similarity(S, path):
    """One small map per patch position: its embedding's cosine similarity with every other position's."""
    g = S.shape[0]
    fig = Figure(figsize=(7, 7.4), layout="constrained")
    ax = fig.subplots(g, g, squeeze=False)
    for i in range(g):
        for j in range(g):
            im = ax[i, j].imshow(S[i, j], cmap="viridis", vmin=-1, vmax=1)
            ax[i, j].set_xticks([]), ax[i, j].set_yticks([])
    fig.colorbar(im, ax=ax, shrink=0.6, label="cosine similarity")
    fig.suptitle("position embedding similarity (row i, column j: patch (i, j) against all patches)")
    fig.savefig(path, dpi=110)


# %% [markdown]
# ## Main: flags, one flat training loop, the test set at the end


# %%
# Flags a resumed run may change: where it runs and what it reports after training.
RESUME_MAY_CHANGE = {"resume", "device", "threads", "data_dir", "out_dir", "sdpa", "n_test", "n_images"}
ARCH_FLAGS = ("patch_size", "n_layer", "n_head", "n_embd", "n_inner")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--patch-size", type=positive_int, default=None, help="P, a divisor of 28 (default 7)")
    p.add_argument("--n-layer", type=positive_int, default=None, help="encoder blocks (default 6; 2 with --smoke)")
    p.add_argument("--n-head", type=positive_int, default=None, help="attention heads (default 4; 2 with --smoke)")
    p.add_argument("--n-embd", type=positive_int, default=None, help="hidden size D (default 64; 32 with --smoke)")
    p.add_argument("--n-inner", type=positive_int, default=None, help="MLP width (default 2 x --n-embd)")
    p.add_argument("--dropout", type=probability, default=0.0, help="default 0")
    p.add_argument("--shift", type=nonneg_int, default=0, help="augmentation: random shifts of up to N pixels "
                   "besides the flips (default 0: at 16 epochs, 2 gave 0.880 test accuracy, flips only 0.8995)")
    p.add_argument("--sdpa", action="store_true", help="F.scaled_dot_product_attention instead of the hand-written")
    p.add_argument("--epochs", type=positive_int, default=None, help="passes over the training set (default 24; 3 "
                   "with --smoke)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="images per step (default 128; 64 --smoke)")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="peak learning rate of AdamW (default 2e-3)")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.05, help="AdamW's, on matrices (default 0.05)")
    p.add_argument("--warmup-epochs", type=nonneg_float, default=None, help="linear warm-up (default 1 epoch, or a "
                   "fifth of the run if shorter)")
    p.add_argument("--label-smoothing", type=probability, default=0.1, help="mass spread over the classes (0.1)")
    p.add_argument("--clip", type=nonneg_float, default=1.0, help="max global gradient norm; 0: off (default 1)")
    p.add_argument("--n-train", type=positive_int, default=None, help="training images (default all 55,000 left "
                   "after the validation split; 2048 with --smoke)")
    p.add_argument("--n-val", type=positive_int, default=None, help="the last N training images, held out for "
                   "validation (default 5000; 500 with --smoke)")
    p.add_argument("--n-test", type=positive_int, default=None, help="test images (default all; 500 with --smoke)")
    p.add_argument("--n-images", type=positive_int, default=8, help="test images in the rollout figure (default 8)")
    p.add_argument("--init-from", default=None, metavar="DIR", help="start from a Hugging Face "
                   "ViTForImageClassification folder (config.json, model.safetensors); a new 10-class head if it has "
                   "other classes")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/checkpoint.pt (written every "
                   "epoch); a changed configuration is refused")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds weights, batches, augmentation (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files (else $ARC_DATA_DIR)")
    p.add_argument("--out-dir", default=None, help="metrics, figures, checkpoint (default runs/vit_torch)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on a small real subset")
    args = p.parse_args(argv)
    if args.init_from is not None:
        given = [f"--{k.replace('_', '-')}" for k in ARCH_FLAGS if getattr(args, k) is not None]
        if given:
            p.error(f"--init-from: the architecture is the checkpoint's; drop {' '.join(given)}")
        if not all((Path(args.init_from) / f).is_file() for f in ("config.json", "model.safetensors")):
            p.error(f"--init-from {args.init_from}: needs config.json and model.safetensors")
        if args.resume:
            p.error("--init-from starts from released weights, --resume from this run's checkpoint: pick one")
    defaults = {"patch_size": (7, 7), "n_layer": (2, 6), "n_head": (2, 4), "n_embd": (32, 64), "epochs": (3, 24),
                "batch_size": (64, 128), "n_train": (2048, None), "n_val": (500, 5000), "n_test": (500, None)}
    for name, (smoke, full) in defaults.items():
        if getattr(args, name) is None and (args.init_from is None or name not in ARCH_FLAGS):
            setattr(args, name, smoke if args.smoke else full)
    if args.n_inner is None and args.init_from is None:
        args.n_inner = 2 * args.n_embd
    if args.warmup_epochs is None:
        args.warmup_epochs = min(1.0, args.epochs / 5)
    if args.warmup_epochs > args.epochs:
        p.error(f"--warmup-epochs {args.warmup_epochs} must not exceed --epochs {args.epochs}")
    if args.patch_size is not None and 28 % args.patch_size:
        p.error(f"--patch-size {args.patch_size}: must divide 28 (1, 2, 4, 7, 14 or 28)")
    if args.n_embd is not None and args.n_embd % args.n_head:
        p.error(f"--n-embd {args.n_embd} is not a multiple of --n-head {args.n_head}")
    if args.n_val >= 60_000:
        p.error(f"--n-val {args.n_val}: leaves no training images (Fashion-MNIST has 60,000)")
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent.parent / "runs" / Path(__file__).stem)
    ckpt_path, ckpt = out_dir / "checkpoint.pt", None
    if args.resume:
        if not ckpt_path.exists():
            p.error(f"--resume: no checkpoint at {ckpt_path}; train first (same --out-dir)")
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)  # our own file (NumPy arrays)
        diff = [f"--{k.replace('_', '-')} {ckpt['config'].get(k)} -> {v}" for k, v in vars(args).items()
                if k not in RESUME_MAY_CHANGE and ckpt["config"].get(k) != v]  # fmt: skip
        if diff:
            p.error(f"--resume: {ckpt_path} was trained with other settings: {'; '.join(diff)}")

    torch.manual_seed(args.seed)
    if args.init_from is not None:
        try:
            model = ViT.from_hf(args.init_from, dropout=args.dropout, sdpa=args.sdpa, num_classes=10)
        except (ValueError, KeyError, OSError) as exc:
            sys.exit(f"error: --init-from {args.init_from}: {str(exc).splitlines()[0]}")
    else:
        model = ViT(ViTConfig(28, args.patch_size, 1, 10, args.n_layer, args.n_head, args.n_embd, args.n_inner,
                              args.dropout, sdpa=args.sdpa))  # fmt: skip
    model, config = model.to(device), model.config
    try:
        train, val, test = load_data(args.data_dir, args.n_train, args.n_val, args.n_test)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    (Xtr, ytr), (Xva, yva), (Xte, yte) = [[torch.from_numpy(a).to(device) for a in s] for s in (train, val, test)]
    out_dir.mkdir(parents=True, exist_ok=True)
    n_params = sum(w.numel() for w in model.parameters())
    g = config.image_size // config.patch_size
    print(f"ViT: {config.n_layer} pre-LN blocks of width {config.n_embd}, {config.n_head} heads, MLP "
          f"{config.n_inner}, {g}x{g} patches of {config.patch_size}x{config.patch_size} + the class token; "
          f"{n_params:,} params; {len(Xtr):,} train / {len(Xva):,} val / {len(Xte):,} test images on {device}")

    decay = [w for name, w in model.named_parameters() if w.ndim >= 2 and name.endswith("weight")]  # W, E, not E_pos
    rest = [w for name, w in model.named_parameters() if not (w.ndim >= 2 and name.endswith("weight"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=args.lr)  # fmt: skip
    steps_per_epoch = math.ceil(len(Xtr) / args.batch_size)
    total, warmup = args.epochs * steps_per_epoch, round(args.warmup_epochs * steps_per_epoch)
    hist = {k: [] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_s", "step_loss", "lr")}
    hist["init_val_loss"], hist["init_val_acc"] = evaluate(model, Xva, yva) if ckpt is None else (None, None)
    start, saved, train_s = 1, 0, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"]), opt.load_state_dict(ckpt["opt"])
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        hist, start, saved, train_s = ckpt["hist"], ckpt["epoch"] + 1, ckpt["epoch"], ckpt["train_s"]
        print(f"resumed from {ckpt_path} after epoch {saved}")
    step, epoch = (start - 1) * steps_per_epoch, start
    try:
        for epoch in range(start, args.epochs + 1):
            t0 = time.perf_counter()
            order = np.random.default_rng([args.seed, epoch]).permutation(len(Xtr))  # from (seed, epoch) alone,
            gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)  # so --resume repeats the same epochs
            sums = np.zeros(3)  # summed loss, right, count
            bar = tqdm(range(0, len(Xtr), args.batch_size), desc=f"epoch {epoch}/{args.epochs}", leave=False,
                       disable=not sys.stdout.isatty())  # fmt: skip
            for s in bar:
                lr = args.lr * warmup_cosine(step, warmup, total)
                for group in opt.param_groups:
                    group["lr"] = lr
                idx = torch.from_numpy(order[s : s + args.batch_size]).to(device)
                x, t = augment(Xtr[idx], gen, args.shift), ytr[idx]  # (b, 1, 28, 28), (b,)
                logits = model(prepare(x, config))  # (b, 10)
                loss = F.cross_entropy(logits, t, label_smoothing=args.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if args.clip > 0:  # clipping by global norm, as taught in 05-rnns/rnn_numpy.py
                    nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                opt.step()
                step += 1
                hist["step_loss"].append(loss.item()), hist["lr"].append(lr)
                sums += [loss.item() * len(t), (logits.argmax(-1) == t).sum().item(), len(t)]
                if not bar.disable:
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
            val_loss, val_acc = evaluate(model, Xva, yva)
            train_s += time.perf_counter() - t0
            for key, value in (("train_loss", sums[0] / sums[2]), ("train_acc", sums[1] / sums[2]),
                               ("val_loss", val_loss), ("val_acc", val_acc), ("epoch_s", time.perf_counter() - t0)):
                hist[key].append(float(value))
            print(f"epoch {epoch:2d}/{args.epochs}  train loss {hist['train_loss'][-1]:.4f} acc "
                  f"{hist['train_acc'][-1]:.4f} | val loss {val_loss:.4f} acc {val_acc:.4f} | "
                  f"{hist['epoch_s'][-1]:.1f} s, {train_s / 60:.1f} min in all", flush=True)
            save_checkpoint(ckpt_path, model=model.state_dict(), opt=opt.state_dict(), epoch=epoch, hist=hist,
                            torch_rng=torch.get_rng_state(), config=vars(args), train_s=train_s)
            saved = epoch
    except KeyboardInterrupt:  # Ctrl-C: say what is saved and how to go on, without a traceback
        flags = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--resume"]
        where = f"{ckpt_path} holds epoch {saved}. Resume with" if saved else "nothing saved. Start again with"
        print(f"\ninterrupted in epoch {epoch}; {where}:\n  " + shlex.join(
            ["python", "06-transformers/vit_torch.py", *flags] + (["--resume"] if saved else [])), file=sys.stderr)
        sys.exit(130)

    test_loss, test_acc = evaluate(model, Xte, yte)  # the test set, once
    model.eval()
    with torch.no_grad():
        x = Xte[: args.n_images]
        logits, atts = model(prepare(x, config), need_weights=True)
        maps = attention_rollout(atts)[:, 0, 1:].reshape(-1, g, g)  # the class token's row, over the patches
        S = position_similarity(config, model.vit.embeddings.position_embeddings)
    plot_curves(hist, out_dir / "learning_curves.png", f"ViT on Fashion-MNIST: test accuracy {test_acc:.4f}")
    plot_rollout(x[:, 0].cpu().numpy(), maps.cpu().numpy(), yte[: args.n_images].tolist(),
                 logits.argmax(-1).tolist(), out_dir / "rollout.png")  # fmt: skip
    plot_position_similarity(S.cpu().numpy(), out_dir / "position_similarity.png")
    with torch.device("meta"):
        presets = {name: sum(w.numel() for w in ViT(c).parameters()) for name, c in PRESETS.items()}
    metrics = {"script": Path(__file__).stem, "test_acc": test_acc, "test_loss": test_loss,
               "val_acc": hist["val_acc"][-1], "val_loss": hist["val_loss"][-1], "params": n_params,
               "train_minutes": train_s / 60, "sec_per_epoch": float(np.median(hist["epoch_s"])),
               "first_loss": hist["step_loss"][0], "final_train_loss": hist["train_loss"][-1],
               "final_train_acc": hist["train_acc"][-1], "params_presets": presets, "init_from": args.init_from,
               "comparison": "04-cnns/resnet_torch.py (ResNet-20, 269,434 parameters, 4 epochs)",
               "model_config": asdict(config), "device": str(device), "config": vars(args), "history": hist,
               "n_train": len(Xtr), "n_val": len(Xva), "n_test": len(Xte)}  # fmt: skip
    save_metrics(out_dir, metrics, __file__, argv)
    print(f"test accuracy {test_acc:.4f} (loss {test_loss:.4f}) after {train_s / 60:.1f} min of training; wrote "
          f"{out_dir}/metrics.json, learning_curves.png, rollout.png, position_similarity.png")
    return metrics


if __name__ == "__main__":
    main()
