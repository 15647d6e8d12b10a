"""Tests of 06-transformers/vit_torch.py, the Vision Transformer trained on Fashion-MNIST.

The model against Hugging Face's ViTForImageClassification at tiny random configurations, saved with save_pretrained
and loaded through ViT.from_hf: equal logits in float32 (relative error max|a-b| / (max|a| + max|b|) <= 1e-5) and
float64 (<= 1e-10), at Hugging Face's initialisation and with every weight redrawn at std 0.2 (where the tanh GELU
fails), with its layer_norm_eps read, qkv_bias off, transformers 5's renamed weights; the refusals. Then the preset
parameter counts on the meta device, the patch embedding as a linear map of flattened patches, hand attention
against SDPA, attention rollout on a hand-made case, the position-similarity grid, the augmentation, and smoke runs
on real Fashion-MNIST (learning, Ctrl-C and --resume, --init-from, bad flags, missing data).
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
import transformers
from gradcheck import rel_error
from safetensors.torch import load_file

from data import fashion_mnist

TINY = {"image_size": 8, "patch_size": 2, "num_channels": 3, "hidden_size": 24, "num_hidden_layers": 2,
        "num_attention_heads": 3, "intermediate_size": 40, "num_labels": 5}  # fmt: skip


@pytest.fixture(scope="module")
def vt(load_script):
    return load_script("06-transformers/vit_torch.py")


def redraw(model, std=0.2, seed=0):
    """Every weight to N(0, std^2), LayerNorm gains to 1 + N(0, std^2): activations of order one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, w in model.named_parameters():
            noise = torch.randn(w.shape, generator=g, dtype=w.dtype) * std
            w.copy_(1 + noise if "layernorm" in name.lower() and name.endswith("weight") else noise)
    return model


def save_hf(folder, std=None, save_original_format=True, **changes):
    """A random ViTForImageClassification (no dropout) at TINY (with changes), saved with save_pretrained."""
    torch.manual_seed(0)
    hf = transformers.ViTForImageClassification(transformers.ViTConfig(**{**TINY, **changes})).eval()
    if std is not None:
        redraw(hf, std)
    hf.save_pretrained(folder, save_original_format=save_original_format)
    return hf


def images(config=None, n=4):
    c = config or TINY
    return torch.randn(
        n, c["num_channels"], c["image_size"], c["image_size"], generator=torch.Generator().manual_seed(1)
    )


def compare(ours, hf, double=False, config=None):
    """Relative error of our logits and Hugging Face's on four random images."""
    x = images(config)
    if double:
        ours, hf, x = ours.double(), hf.double(), x.double()
    with torch.no_grad():
        a, b = ours(x), hf(pixel_values=x).logits
    assert a.dtype == (torch.float64 if double else torch.float32)
    out = rel_error(a, b)
    ours.float(), hf.float()
    return out


@pytest.fixture(scope="module", params=["hf_init", "std_0.2"])
def hf_pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return folder, save_hf(folder, None if request.param == "hf_init" else 0.2)


def test_presets_have_the_reference_parameter_counts(vt):
    """ViTForImageClassification with 1000 classes: vit-b16 86,567,656 and vit-l16 304,326,632 (docs/references.md),
    built on the meta device."""
    count = lambda c: sum(w.numel() for w in vt.ViT(c).parameters())
    with torch.device("meta"):
        assert count(vt.PRESETS["vit-b16"]) == 86_567_656 and count(vt.PRESETS["vit-l16"]) == 304_326_632
    c = vt.PRESETS["vit-b16"]
    assert (c.image_size, c.patch_size, c.n_layer, c.n_head, c.n_embd, c.n_inner) == (224, 16, 12, 12, 768, 3072)


def test_names_are_hugging_faces(vt, tmp_path):
    """Our state dict has exactly the names that save_pretrained writes for a ViTForImageClassification."""
    save_hf(tmp_path)
    assert set(vt.ViT.from_hf(tmp_path).state_dict()) == set(load_file(tmp_path / "model.safetensors"))


def test_logits_equal_hugging_face(vt, hf_pair):
    """from_hf(folder) gives Hugging Face's logits: float32 <= 1e-5, float64 <= 1e-10."""
    folder, hf = hf_pair
    ours = vt.ViT.from_hf(folder).eval()
    assert ours.config.num_classes == 5 and ours.config.ln_eps == 1e-12
    assert compare(ours, hf) < 1e-5 and compare(ours, hf, double=True) < 1e-10
    with torch.no_grad():
        logits = hf(pixel_values=images()).logits
    assert logits.abs().max() > (1.0 if "std" in folder.name else 0.01)  # the redrawn weights give large logits


def test_redrawn_weights_tell_the_gelus_apart(vt, tmp_path, monkeypatch):
    """With GPT's tanh GELU in place of the exact one, float32 cannot tell at Hugging Face's N(0, 0.02) init (only
    float64 sees it) and fails at std 0.2 by more than five times the tolerance."""
    small, large = save_hf(tmp_path / "small"), save_hf(tmp_path / "large", 0.2)
    monkeypatch.setattr(vt, "gelu", lambda x: F.gelu(x, approximate="tanh"))
    at_init = vt.ViT.from_hf(tmp_path / "small").eval()
    assert compare(at_init, small) < 1e-5 and compare(at_init, small, double=True) > 1e-10
    assert compare(vt.ViT.from_hf(tmp_path / "large").eval(), large) > 5e-5  # five times the tolerance


def test_layer_norm_eps_qkv_bias_and_renamed_weights(vt, tmp_path):
    """layer_norm_eps is read from config.json (0.5 here: 1e-12 in its place gives other logits), qkv_bias false
    builds Q, K, V without biases, and transformers 5's renamed weights (save_original_format=False) load."""
    hf = save_hf(tmp_path / "eps", 0.2, layer_norm_eps=0.5)
    ours = vt.ViT.from_hf(tmp_path / "eps").eval()
    assert compare(ours, hf, double=True) < 1e-10
    assert compare(vt.ViT.from_hf(tmp_path / "eps", ln_eps=1e-12).eval(), hf) > 1e-3
    hf = save_hf(tmp_path / "nobias", 0.2, qkv_bias=False)
    ours = vt.ViT.from_hf(tmp_path / "nobias").eval()
    assert ours.vit.encoder.layer[0].attention.attention.query.bias is None
    assert compare(ours, hf, double=True) < 1e-10
    hf = save_hf(tmp_path / "new", 0.2, save_original_format=False)
    assert any("q_proj" in k for k in load_file(tmp_path / "new" / "model.safetensors"))
    assert compare(vt.ViT.from_hf(tmp_path / "new").eval(), hf, double=True) < 1e-10


def test_a_new_head_keeps_the_encoder(vt, tmp_path):
    """num_classes other than the checkpoint's: the encoder is loaded, the classifier is a fresh 10-class head."""
    hf = save_hf(tmp_path, 0.2)
    ours = vt.ViT.from_hf(tmp_path, num_classes=10).eval()
    assert ours.classifier.weight.shape == (10, 24)
    x = images()
    with torch.no_grad():
        assert rel_error(ours.vit(x)[0], hf.vit(pixel_values=x).last_hidden_state) < 1e-5


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hidden_act": "gelu_new"}, "hidden_act 'gelu_new'"),
        ({"model_type": "deit"}, "model_type 'deit'"),
        ({"image_size": [8, 6]}, "only square"),
        ({"num_hidden_layers": 3}, "missing"),
    ],
)
def test_unsupported_folders_are_refused_in_one_line(vt, tmp_path, change, message):
    """from_hf refuses what it does not build, and main says so in one line naming --init-from."""
    save_hf(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=message):
        vt.ViT.from_hf(tmp_path)
    with pytest.raises(SystemExit) as exc:
        vt.main(["--smoke", "--init-from", str(tmp_path), "--out-dir", str(tmp_path / "run")])
    assert exc.value.code.startswith(f"error: --init-from {tmp_path}") and message in exc.value.code
    assert "\n" not in exc.value.code


def test_a_bare_encoder_is_refused(vt, tmp_path):
    """A ViTModel folder (a pooler, no classifier) is not a classifier's checkpoint."""
    torch.manual_seed(0)
    transformers.ViTModel(transformers.ViTConfig(**TINY)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not ViTForImageClassification's weights"):
        vt.ViT.from_hf(tmp_path)


def test_patch_embedding_is_a_linear_map_of_flattened_patches(vt):
    """The strided convolution equals patchify(x) @ E^T + b with E the conv weight reshaped to (D, C P P);
    patchify takes patches row by row, each flattened channel, row, column."""
    config = vt.ViTConfig(image_size=12, patch_size=4, num_channels=3, n_embd=10)
    emb = vt.PatchEmbeddings(config).double()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    E, b = emb.projection.weight, emb.projection.bias  # (D, C, P, P), (D,)
    linear = vt.patchify(x, 4) @ E.reshape(10, -1).T + b  # (B, N, D)
    assert linear.shape == (2, 9, 10) and rel_error(emb(x), linear) < 1e-14
    patches = vt.patchify(x, 4)
    assert torch.equal(patches[:, 1], x[:, :, 0:4, 4:8].reshape(2, -1))  # second patch: top row, second column
    assert torch.equal(patches[:, 3], x[:, :, 4:8, 0:4].reshape(2, -1))  # fourth: second row, first column


def test_hand_attention_equals_sdpa(vt):
    """F.scaled_dot_product_attention gives the hand-written path's logits and gradients."""
    out = []
    for sdpa in (False, True):
        torch.manual_seed(0)
        model = redraw(vt.ViT(vt.ViTConfig(n_layer=2, n_embd=16, n_inner=24, sdpa=sdpa)).double(), 0.3)
        logits = model(torch.randn(3, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
        logits.logsumexp(-1).sum().backward()
        out.append([logits, *(w.grad for w in model.parameters())])
    for a, b in zip(*out):  # the key bias's gradient is 0 in exact arithmetic (softmax ignores a shift)
        assert rel_error(a, b) < 1e-10 or (a - b).abs().max() < 1e-14


def test_attention_rollout_by_hand(vt):
    """Two layers, two tokens. Layer 1: head 1 the identity, head 2 the swap -> mean all 1/2 -> A^_1 = [[.75, .25],
    [.25, .75]]. Layer 2: both heads read token 0 -> A^_2 = [[1, 0], [.5, .5]]. R = A^_2 A^_1 = [[.75, .25], [.5,
    .5]] (A^_1 A^_2 would be [[.875, .125], [.625, .375]]). Identity attention rolls out to the identity; random
    attention to rows that sum to 1."""
    eye, swap, first = torch.eye(2), torch.tensor([[0.0, 1], [1, 0]]), torch.tensor([[1.0, 0], [1, 0]])
    R = vt.attention_rollout([torch.stack([eye, swap])[None], torch.stack([first, first])[None]])
    assert torch.allclose(R, torch.tensor([[[0.75, 0.25], [0.5, 0.5]]]), atol=1e-7)
    assert torch.allclose(vt.attention_rollout([torch.eye(5).expand(2, 3, 5, 5)] * 4), torch.eye(5).expand(2, 5, 5))
    atts = [torch.rand(2, 3, 5, 5).softmax(-1) for _ in range(3)]
    R = vt.attention_rollout(atts)
    assert torch.allclose(R.sum(-1), torch.ones(2, 5), atol=1e-6) and (R > 0).all()


def test_position_similarity_grid(vt):
    """(g, g, g, g) with ones on the diagonal S[i, j, i, j]; orthogonal embeddings give exactly those ones, the class
    token's embedding left out; a real model's grid lies in [-1, 1]."""
    config = vt.ViTConfig(patch_size=7)  # g = 4, 16 patches, D = 64
    pos = torch.zeros(1, 17, 64)
    pos[0, 0] = 5.0  # the class token's: not in the grid
    pos[0, 1:, :16] = 3 * torch.eye(16)
    S = vt.position_similarity(config, pos)
    assert S.shape == (4, 4, 4, 4) and torch.equal(S.reshape(16, 16), torch.eye(16))
    torch.manual_seed(0)
    S = vt.position_similarity(config, vt.ViT(config).vit.embeddings.position_embeddings.detach())
    diag = S.reshape(16, 16).diagonal()
    assert torch.allclose(diag, torch.ones(16)) and S[1, 2, 1, 2] == pytest.approx(1) and S.abs().max() <= 1 + 1e-6


def test_augment_keeps_shapes_and_labels(vt):
    """Each output image is its own input shifted by at most 2 pixels (zeros coming in), mirrored or not: the batch
    keeps its order, so its labels still apply; about half are mirrored; the same generator seed repeats; with
    pad 0 an image is only mirrored or not."""
    x = torch.rand(64, 1, 28, 28) + 0.5  # no zeros inside the images, every image different
    out = vt.augment(x, torch.Generator().manual_seed(0), 2)
    assert out.shape == x.shape and torch.equal(out, vt.augment(x, torch.Generator().manual_seed(0), 2))
    flipped = 0
    padded = F.pad(x, (2, 2, 2, 2))
    for b in range(64):
        matches = [
            (flip, i, j)
            for flip in (False, True)
            for i in range(5)
            for j in range(5)
            if torch.equal(out[b], (padded[b].flip(-1) if flip else padded[b])[:, i : i + 28, j : j + 28])
        ]
        assert len(matches) == 1, b  # exactly one shift and flip of image b itself
        flipped += matches[0][0]
    assert 16 < flipped < 48
    for a, b in zip(vt.augment(x, torch.Generator().manual_seed(1), 0), x):  # pad 0 (the default run): flips only
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))


def test_prepare(vt):
    """(x - 0.5) / 0.5; resized and repeated over RGB for a model of another size and channels."""
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(vt.prepare(x, vt.ViTConfig()), (x - 0.5) / 0.5)
    y = vt.prepare(x, vt.ViTConfig(image_size=56, num_channels=3))
    assert y.shape == (2, 3, 56, 56) and torch.equal(y[:, 0], y[:, 2])
    assert rel_error(y[:, :1].mean((2, 3)), ((x - 0.5) / 0.5).mean((2, 3))) < 1e-3


def test_schedule(vt):
    """Linear warm-up over 10 steps to 1, then a cosine: 1/2 half-way through the decay, towards 0 at the end."""
    f = lambda s: vt.warmup_cosine(s, 10, 110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1) and f(10) == pytest.approx(1)
    assert f(60) == pytest.approx(0.5) and f(109) < 0.001 and all(f(s) > f(s + 1) for s in range(10, 109))


# %% real data


@pytest.fixture(scope="module")
def smoke(vt, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    return out, vt.main(["--smoke", "--out-dir", str(out)])


def test_smoke_run(smoke):
    """Three epochs on 2,048 real images: the losses fall, accuracies beat chance (0.1) by far, the files are
    written."""
    out, m = smoke
    h = m["history"]
    assert len(h["step_loss"]) == 3 * 32 and h["init_val_loss"] == pytest.approx(math.log(10), abs=0.15)
    assert (
        h["val_loss"][-1] < h["val_loss"][0] < h["init_val_loss"]
        and h["train_loss"][2] < h["train_loss"][1] < h["train_loss"][0]
    )
    assert m["val_acc"] > 0.3 and m["test_acc"] > 0.3 and m["final_train_acc"] > 0.25
    assert m["n_train"] == 2048 and m["n_val"] == m["n_test"] == 500 and 10_000 < m["params"] < 40_000
    assert m["params_presets"]["vit-b16"] == 86_567_656 and m["train_minutes"] > 0
    assert {"metrics.json", "checkpoint.pt", "learning_curves.png", "rollout.png", "position_similarity.png"} <= {
        p.name for p in out.iterdir()
    }
    assert json.loads((out / "metrics.json").read_text())["test_acc"] == m["test_acc"]


def test_ctrl_c_then_resume_equals_uninterrupted(vt, smoke, tmp_path, monkeypatch, capsys):
    """Ctrl-C in epoch 2 exits 130 naming the checkpoint of epoch 1 and the --resume command; --resume then gives the
    uninterrupted run's losses, accuracies and weights; a changed setting is refused."""
    _, m = smoke
    real, calls = vt.augment, []

    def ctrl_c_in_epoch_2(*a, **k):
        calls.append(1)
        if len(calls) == 33:  # 32 steps per epoch
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(vt, "augment", ctrl_c_in_epoch_2)
    argv = ["--smoke", "--out-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exc:
        vt.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 130 and "holds epoch 1" in err and err.rstrip().endswith("--resume")
    monkeypatch.setattr(vt, "augment", real)
    resumed = vt.main([*argv, "--resume"])
    for k in ("step_loss", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "init_val_loss"):
        assert resumed["history"][k] == m["history"][k], k
    assert resumed["test_acc"] == m["test_acc"] and resumed["test_loss"] == m["test_loss"]
    with pytest.raises(SystemExit) as exc:
        vt.main([*argv, "--resume", "--lr", "0.5"])
    assert exc.value.code == 2 and "--lr 0.002 -> 0.5" in capsys.readouterr().err


def test_init_from_starts_from_hugging_faces_weights(vt, tmp_path):
    """--init-from with a 28x28 grey 10-class ViT: the held-out loss before any step is Hugging Face's cross-entropy
    on the validation images (the last 500 training images, (x - 0.5) / 0.5), and training goes on from there. A
    folder of another size, RGB and 5 classes runs too (resized, repeated, a new head)."""
    hf = save_hf(tmp_path / "hf", 0.2, image_size=28, patch_size=7, num_channels=1, num_labels=10)
    short = ["--smoke", "--epochs", "1", "--n-train", "512"]
    m = vt.main([*short, "--init-from", str(tmp_path / "hf"), "--out-dir", str(tmp_path / "run")])
    X, y = fashion_mnist("train")
    x = (torch.from_numpy(X[-500:]).float()[:, None] / 255 - 0.5) / 0.5
    with torch.no_grad():
        ref = F.cross_entropy(hf(pixel_values=x).logits, torch.from_numpy(y[-500:])).item()
    assert m["history"]["init_val_loss"] == pytest.approx(ref, rel=1e-5)
    assert abs(ref - math.log(10)) > 0.3  # the redrawn weights are far from chance
    assert m["params"] == sum(w.numel() for w in hf.parameters()) and m["val_loss"] < ref
    save_hf(tmp_path / "rgb")
    m = vt.main([*short, "--init-from", str(tmp_path / "rgb"), "--out-dir", str(tmp_path / "run2")])
    assert m["model_config"]["num_classes"] == 10 and m["model_config"]["image_size"] == 8 and 0 <= m["test_acc"] <= 1


def test_missing_data_is_one_line(vt, missing_data_error):
    assert "fashion-mnist" in missing_data_error(vt.main).lower()


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--patch-size", "5"], "--patch-size"),
        (["--n-embd", "30", "--n-head", "4"], "--n-embd"),
        (["--warmup-epochs", "3", "--epochs", "2"], "--warmup-epochs"),
        (["--n-val", "60000"], "--n-val"),
        (["--init-from", "/no/such/folder"], "--init-from"),
        (["--resume", "--out-dir", "/no/such/run"], "--resume"),
        (["--batch-size", "0"], "--batch-size"),
        (["--lr", "nan"], "--lr"),
        (["--dropout", "1"], "--dropout"),
        (["--label-smoothing", "-0.1"], "--label-smoothing"),
    ],
)
def test_bad_flags(vt, usage_error, argv, flag):
    assert flag in usage_error(vt, argv)


def test_init_from_refuses_architecture_flags(vt, usage_error, tmp_path):
    save_hf(tmp_path / "hf")
    assert "--n-layer" in usage_error(vt, ["--init-from", str(tmp_path / "hf"), "--n-layer", "3"])
