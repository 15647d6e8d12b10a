"""Tests of 06-transformers/gpt_jax.py, GPT-2 in JAX.

Given the same weights, its logits, loss and the gradient of every parameter equal gpt2_torch.py's and
Hugging Face's GPT2LMHeadModel's in float64 (weights redrawn at std 0.2, so that a wrong GELU, scale or
mask cannot hide), with and without biases; weights move by name between the three (to_state_dict,
from_state_dict, load_hf); causality; GPT-2's initialisation and the presets' parameter counts; the
hand-written AdamW against torch.optim.AdamW over 100 steps (decay on matrices only), clipping against
clip_grad_norm_, the schedule against gpt2_torch.py's; the jitted step learns a batch and is
deterministic, dropout keys included; smoke runs on Tiny Shakespeare, --init-from, bad flags.
"""

import json
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from gradcheck import rel_error
from tiny_tokenizer import byte_level_tokenizer

transformers = pytest.importorskip("transformers")  # a dev dependency: always installed in CI

SCRIPT = "06-transformers/gpt_jax.py"
TOL = 1e-10
LN_GAINS = ("ln_1.weight", "ln_2.weight", "ln_f.weight")


@pytest.fixture(scope="module")
def gj(load_script):
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def g2(load_script):
    return load_script("06-transformers/gpt2_torch.py")


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def redraw(model, std=0.2, seed=0):
    """Every parameter of a torch model redrawn from N(0, std^2), LayerNorm gains around 1 (float64)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * std
            p.copy_(1 + noise if name.endswith(LN_GAINS) else noise)
    return model


# Compiled once per configuration, shape and dtype (run op by op, every operation would compile on its own),
# and shared across tests: compiling dominates this file's time.
forward = jax.jit(lambda gj, params, idx, config, key=None: gj.forward(params, idx, config, key), static_argnums=(0, 3))


@partial(jax.jit, static_argnums=(0, 4))
def logits_loss_grads(gj, params, idx, targets, config):
    """forward's logits, loss_fn's loss and its gradient, in one program."""
    (loss, logits), grads = jax.value_and_grad(
        lambda p: (gj.loss_fn(p, idx, targets, config), gj.forward(p, idx, config)), has_aux=True
    )(params)
    return logits, loss, grads


SIZES = dict(block_size=16, vocab_size=37, n_layer=2, n_head=3, n_embd=12, dropout=0.0)  # Hugging Face's too


def batch(V, B=3, T=16, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


def jax_logits_loss_grads(gj, sd, config, idx, targets):
    """gpt_jax's logits, loss and {name: gradient} (keyed as the torch state_dict) at the weights sd, float64."""
    params = gj.from_state_dict(sd, config)
    assert params["wte"]["weight"].dtype == jnp.float64
    idx, targets = jnp.asarray(idx), jnp.asarray(targets)
    logits, loss, grads = logits_loss_grads(gj, params, idx, targets, config)
    grads = gj.to_state_dict(grads)
    del grads["lm_head.weight"]  # tied: its gradient is part of wte's
    return np.asarray(logits), float(loss), grads


# %% the same numbers as gpt2_torch.py and Hugging Face


@pytest.mark.parametrize("bias", [True, False])
def test_logits_and_every_gradient_equal_gpt2_torch(gj, g2, x64, bias):
    sizes = {**SIZES, "bias": bias}
    model = redraw(g2.GPT(g2.GPTConfig(**sizes)).double())
    idx, targets = batch(37)
    logits, loss = model(torch.from_numpy(idx), torch.from_numpy(targets))
    loss.backward()
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    got_logits, got_loss, got_grads = jax_logits_loss_grads(gj, sd, gj.GPTConfig(**sizes), idx, targets)
    assert rel_error(got_logits, logits) <= TOL
    assert np.abs(logits.detach().numpy()).max() > 2  # std 0.2: large enough for a wrong GELU or scale to show
    assert abs(got_loss - loss.item()) <= TOL * loss.item()
    want = {name: p.grad.numpy() for name, p in model.named_parameters()}  # lm_head is wte: listed once
    assert got_grads.keys() == want.keys()
    assert any(name.endswith(".bias") for name in want) == bias
    for name, g in want.items():
        assert rel_error(got_grads[name], g) <= TOL, name


def hf_gpt2(n_positions=16, vocab_size=37, n_layer=2, n_head=3, n_embd=12, seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_positions=n_positions,
        vocab_size=vocab_size,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="eager",
    )
    return transformers.GPT2LMHeadModel(config).eval()


def test_load_hf_logits_and_gradients_equal_huggingface(gj, x64, tmp_path):
    """A random GPT2LMHeadModel (Conv1D layers, "transformer." names), redrawn at std 0.2 and saved with
    save_pretrained: load_hf gives its logits and, through hf_to_state_dict, its gradients."""
    hf = redraw(hf_gpt2().double())
    hf.save_pretrained(tmp_path)
    config, params = gj.load_hf(tmp_path)
    assert config == gj.GPTConfig(16, 37, 2, 3, 12, 0.0, True)
    idx, targets = batch(37, seed=2)
    out = hf(torch.from_numpy(idx), labels=None)
    loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), torch.from_numpy(targets).flatten())
    loss.backward()
    want = gj.hf_to_state_dict({name: p.grad.numpy() for name, p in hf.named_parameters()})
    logits, got_loss, got = jax_logits_loss_grads(gj, gj.to_state_dict(params), config, idx, targets)
    assert rel_error(logits, out.logits) <= TOL
    assert abs(got_loss - loss.item()) <= TOL * loss.item()
    assert got.keys() == want.keys()
    for name, g in want.items():
        assert rel_error(got[name], g) <= TOL, name


def test_hf_to_state_dict_reads_the_released_layout(gj):
    """The released files name tensors without "transformer." and carry the causal mask as "h.i.attn.bias": it is
    dropped, c_attn.bias kept, the Conv1D weights (in, out) transposed, wte/wpe/LayerNorms left as they are."""
    rng = np.random.default_rng(0)
    tensors = {
        "wte.weight": rng.standard_normal((7, 4)),
        "h.0.attn.bias": np.ones((1, 1, 5, 5)),
        "h.0.attn.c_attn.weight": rng.standard_normal((4, 12)),
        "h.0.attn.c_attn.bias": rng.standard_normal(12),
        "transformer.h.0.mlp.c_proj.weight": rng.standard_normal((16, 4)),
        "h.0.ln_1.weight": np.ones(4),
    }
    sd = gj.hf_to_state_dict(tensors)
    assert sorted(sd) == [
        "h.0.attn.c_attn.bias",
        "h.0.attn.c_attn.weight",
        "h.0.ln_1.weight",
        "h.0.mlp.c_proj.weight",
        "wte.weight",
    ]
    assert np.array_equal(sd["h.0.attn.c_attn.weight"], tensors["h.0.attn.c_attn.weight"].T)
    assert np.array_equal(sd["h.0.mlp.c_proj.weight"], tensors["transformer.h.0.mlp.c_proj.weight"].T)
    assert np.array_equal(sd["wte.weight"], tensors["wte.weight"])


def test_state_dict_round_trip_and_refusals(gj, g2):
    """to_state_dict has gpt2_torch.py's names and shapes (load_state_dict takes it, strict); from_state_dict
    refuses a missing name, a wrong shape, and an lm_head that is not wte."""
    config = gj.GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=8, bias=True)
    template = jax.eval_shape(lambda: gj.init_params(config, jax.random.PRNGKey(0)))  # shapes, nothing computed
    rng = np.random.default_rng(0)
    sd = gj.to_state_dict(jax.tree.map(lambda t: rng.standard_normal(t.shape).astype(np.float32), template))
    model = g2.GPT(g2.GPTConfig(8, 11, 2, 2, 8, 0.0, True))
    assert sd.keys() == model.state_dict().keys()
    model.load_state_dict({k: torch.tensor(v) for k, v in sd.items()})  # strict: every name and shape fits
    back = gj.to_state_dict(gj.from_state_dict(sd, config))
    assert all(np.array_equal(back[k], v) for k, v in sd.items())
    assert np.array_equal(model.lm_head.weight.detach().numpy(), sd["wte.weight"])
    with pytest.raises(ValueError, match="missing.*h.1.mlp.c_fc.bias"):
        gj.from_state_dict({k: v for k, v in sd.items() if k != "h.1.mlp.c_fc.bias"}, config)
    with pytest.raises(ValueError, match="h.0.attn.c_attn.weight: shape"):
        gj.from_state_dict({**sd, "h.0.attn.c_attn.weight": sd["h.0.attn.c_attn.weight"].T}, config)
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        gj.from_state_dict({**sd, "lm_head.weight": sd["wte.weight"] + 1}, config)


def test_causal_later_tokens_change_nothing_before_them(gj, g2, x64):
    config = gj.GPTConfig(**SIZES, bias=True)
    model = redraw(g2.GPT(g2.GPTConfig(**SIZES, bias=True)).double(), seed=3)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    params = gj.from_state_dict(sd, config)
    idx, targets = (jnp.asarray(a) for a in batch(37, seed=4))
    t0 = 7
    changed = idx.at[:, t0:].set((idx[:, t0:] + 1) % 37)
    a, b = (np.asarray(logits_loss_grads(gj, params, i, targets, config)[0]) for i in (idx, changed))
    assert np.array_equal(a[:, :t0], b[:, :t0])  # exactly: the future gets weight 0
    assert np.abs(a[:, t0:] - b[:, t0:]).min(axis=-1).max() > 1e-6  # and from t0 on the change shows


# %% initialisation and sizes


def test_gpt2_initialisation_and_parameter_counts(gj):
    sd = gj.to_state_dict(gj.init_params(smoke_config(gj), jax.random.PRNGKey(0)))  # 2 layers
    for name, w in sd.items():
        if name.endswith("c_proj.weight"):
            assert abs(w.std() - 0.02 / math.sqrt(2 * 2)) < 0.0005, name
        elif w.ndim == 2:
            assert abs(w.std() - 0.02) < 0.001 and abs(w.mean()) < 0.001, name
        else:
            assert np.all(w == 1), name  # LayerNorm gains (no biases in this config)
    counts = {
        "default": 804_096,  # nanoGPT's CPU recipe
        "gpt2": 124_439_808,
        "gpt2-medium": 354_823_168,
        "gpt2-large": 774_030_080,
        "gpt2-xl": 1_557_611_200,
    }
    for name, count in counts.items():  # shapes only: jax.eval_shape allocates nothing
        config = gj.PRESETS.get(name, gj.GPTConfig())
        shapes = jax.eval_shape(lambda c=config: gj.init_params(c, jax.random.PRNGKey(0)))
        assert gj.n_params(shapes) == count, name


# %% AdamW, clipping, schedule


def test_adamw_matches_torch_adamw_over_100_steps(gj, x64):
    """float64, non-default lr, betas, eps and decay; matrices decayed, vectors (biases, gains) not; gradients that
    depend on where the parameters are, one of them small enough that eps matters; equal to 1e-10 at every step."""
    rng = np.random.default_rng(7)
    params = {
        "W": rng.standard_normal((4, 3)),
        "E": rng.standard_normal((2, 2, 2)),
        "b": rng.standard_normal(5),
        "g": 1 + rng.standard_normal(3),
    }
    scale = {"W": 1.0, "E": 1e-6, "b": 3.0, "g": 0.5}
    lr, betas, eps, wd = 0.02, (0.8, 0.95), 1e-7, 0.3
    ref = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt = torch.optim.AdamW(
        [{"params": [ref["W"], ref["E"]], "weight_decay": wd}, {"params": [ref["b"], ref["g"]], "weight_decay": 0.0}],
        lr=lr,
        betas=betas,
        eps=eps,
    )
    step = jax.jit(gj.adamw_step, static_argnames=("betas", "eps", "weight_decay"))
    ps, state = jax.tree.map(jnp.asarray, params), gj.adamw_init(jax.tree.map(jnp.asarray, params))
    for t in range(100):
        grads = {
            k: scale[k]
            * (np.sin(3 * v.detach().numpy()) + 0.5 * v.detach().numpy() + 0.3 * rng.standard_normal(v.shape))
            for k, v in ref.items()
        }
        for k, v in ref.items():
            v.grad = torch.from_numpy(grads[k])
        opt.step()
        ps, state = step(ps, grads, state, lr, betas=betas, eps=eps, weight_decay=wd)
        for k, v in ref.items():
            assert rel_error(ps[k], v) <= TOL, (t, k)


def test_clip_by_global_norm_matches_torch(gj, x64):
    rng = np.random.default_rng(0)
    grads = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    for max_norm in (0.5, 100.0):  # clipped, and left alone
        ts = [torch.tensor(g, requires_grad=True) for g in grads.values()]
        for t, g in zip(ts, grads.values()):
            t.grad = torch.from_numpy(g.copy())
        norm = torch.nn.utils.clip_grad_norm_(ts, max_norm)
        got, got_norm = gj.clip_by_global_norm(jax.tree.map(jnp.asarray, grads), max_norm)
        assert abs(float(got_norm) - norm.item()) <= 1e-12 * norm.item()
        for g, t in zip(got.values(), ts):
            assert rel_error(g, t.grad) <= 1e-14


def test_schedule_warm_up_cosine_then_min_lr(gj, g2):
    lr, min_lr = 1e-3, 1e-4
    lrs = [gj.get_lr(it, lr, min_lr, 100, 2000) for it in range(2100)]
    assert lrs[0] == pytest.approx(lr / 100) and lrs[49] == pytest.approx(lr / 2) and lrs[99] == pytest.approx(lr)
    assert np.allclose(np.diff(lrs[:100]), lr / 100)  # linear warm-up
    assert lrs[100] == pytest.approx(lr)
    assert lrs[1050] == pytest.approx((lr + min_lr) / 2)  # halfway down the cosine
    assert all(a > b for a, b in zip(lrs[100:2000], lrs[101:2000]))
    assert all(v == min_lr for v in lrs[2000:])
    for args in [(lr, min_lr, 100, 2000), (3e-4, 0.0, 0, 50), (1.0, 0.1, 10, 10)]:  # gpt2_torch.py's schedule
        assert all(gj.get_lr(it, *args) == g2.get_lr(it, *args) for it in range(0, 2100, 7)), args


# %% the jitted step, dropout keys, batches


def smoke_config(gj, **kw):
    """The model of --smoke, so that the tests share main's compiled programs (same configuration, same shapes)."""
    return gj.GPTConfig(**{"block_size": 32, "vocab_size": 65, "n_layer": 2, "n_head": 2, "n_embd": 32, **kw})


def test_train_step_learns_a_batch_and_is_deterministic(gj):
    """60 steps on one batch bring its loss far down (the loss returned is that of the weights before the step);
    the same seed gives bit-identical weights, another seed others."""
    config = smoke_config(gj)
    x, y = (jnp.asarray(a) for a in batch(65, B=12, T=32, seed=5))
    hp = dict(config=config, betas=(0.9, 0.99), weight_decay=0.1, grad_clip=1.0)  # main's defaults

    def run(seed):
        params = gj.init_params(config, jax.random.PRNGKey(seed))
        opt, losses = gj.adamw_init(params), []
        for i in range(61):
            params, opt, loss, norm = gj.train_step(params, opt, x, y, 1e-2, jax.random.PRNGKey(i), **hp)
            losses.append(float(loss))
        return losses, gj.to_state_dict(params), int(opt["t"])

    losses, w1, t = run(0)
    assert losses[0] == pytest.approx(math.log(65), abs=0.05) and losses[-1] < 0.5 * losses[0] and t == 61
    losses2, w2, _ = run(0)
    assert losses2 == losses and all(np.array_equal(w1[k], w2[k]) for k in w1)
    assert run(1)[0][0] != losses[0]


def test_dropout_is_drawn_from_the_key(gj):
    """The same key gives the same masks, another key others; without a key (evaluation) there is no dropout."""
    config = smoke_config(gj, dropout=0.3)
    params = gj.init_params(smoke_config(gj), jax.random.PRNGKey(0))
    x = jnp.asarray(batch(65, B=2, T=32)[0])
    a, b, c = (forward(gj, params, x, config, jax.random.PRNGKey(k)) for k in (1, 1, 2))
    assert np.array_equal(a, b) and not np.allclose(a, c)
    h = jnp.arange(5.0)
    assert gj.dropout(h, 0.3, None) is h and gj.dropout(h, 0.0, jax.random.PRNGKey(0)) is h
    kept = np.asarray(gj.dropout(jnp.ones(4000), 0.3, jax.random.PRNGKey(0)))
    assert np.allclose(kept[kept != 0], 1 / 0.7) and abs((kept == 0).mean() - 0.3) < 0.03


def test_get_batch_targets_are_the_next_tokens(gj):
    data = jnp.arange(100, dtype=jnp.int32)
    x, y = gj.get_batch(data, jax.random.PRNGKey(0), 50, 8)
    assert x.shape == y.shape == (50, 8)
    assert np.array_equal(y, x + 1) and np.array_equal(x, x[:, :1] + jnp.arange(8))
    assert int(x.min()) >= 0 and int(y.max()) <= 99


# %% real data: smoke runs, --init-from, refusals


def test_smoke_run(gj, g2, tmp_path):
    m = gj.main(["--smoke", "--out-dir", str(tmp_path)])
    hist = m["history"]
    assert hist["iter"] == [0, 100, 200] and len(hist["batch_loss"]) == 200
    assert hist["val_loss"][0] == pytest.approx(math.log(65), abs=0.1)  # the untrained model: uniform
    assert m["val_loss"] < hist["val_loss"][0] - 0.8 and m["best_val_loss"] == min(hist["val_loss"])
    assert m["params"] == 2 * (2 * 32 + 12 * 32 * 32) + 32 + (65 + 32) * 32  # 2 blocks, ln_f, wte, wpe
    assert m["tokens_per_sec"] > 0 and m["vocab_size"] == 65 and m["tokenizer"] == "char"
    assert m["sample"].startswith("\n") and len(m["sample"]) == 101
    assert json.loads((tmp_path / "metrics.json").read_text())["val_loss"] == m["val_loss"]
    assert (tmp_path / "loss.png").stat().st_size > 10_000
    # the saved weights are gpt2_torch.py's state_dict: its model gives the same logits
    sd = dict(np.load(tmp_path / "model.npz"))
    model = g2.GPT(g2.GPTConfig(**m["config"]))
    model.load_state_dict({k: torch.tensor(v) for k, v in sd.items()})
    idx = batch(65, B=2, T=32)[0]
    want = model(torch.from_numpy(idx))[0]
    config = gj.GPTConfig(**m["config"])
    assert rel_error(forward(gj, gj.from_state_dict(sd, config), jnp.asarray(idx), config), want) <= 1e-5


def test_init_from_fine_tunes_a_hugging_face_folder(gj, tmp_path):
    """--init-from: the folder's weights (their loss at step 0, not a fresh model's), its tokenizer, the position
    table cropped to --block-size; fine-tuning lowers the loss."""
    tok = byte_level_tokenizer(270)
    hf = redraw(hf_gpt2(n_positions=64, vocab_size=270, n_layer=1, n_head=2, n_embd=16))
    hf.save_pretrained(tmp_path / "hf")
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    m = gj.main(
        [
            "--init-from",
            str(tmp_path / "hf"),
            "--smoke",
            "--block-size",
            "32",
            "--max-iters",
            "60",
            "--eval-interval",
            "60",
            "--lr",
            "3e-3",
            "--out-dir",
            str(tmp_path / "ft"),
        ]
    )
    assert m["params"] == hf.num_parameters() - (64 - 32) * 16
    assert m["config"]["block_size"] == 32 and m["config"]["bias"] and m["tokenizer"] == "hf"
    assert m["history"]["val_loss"][0] > math.log(270) + 0.3  # the loaded weights (std 0.2), not ln(270)
    assert m["val_loss"] < m["history"]["val_loss"][0] - 0.5


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--n-embd", "30", "--n-head", "4"], "--n-embd"),
        (["--init-from", "somewhere", "--n-layer", "2"], "--n-layer"),
        (["--betas", "0.9"], "--betas"),
        (["--dropout", "1"], "--dropout"),
    ],
)
def test_bad_flags_exit_2(gj, usage_error, argv, flag):
    assert flag in usage_error(gj, argv)


def test_missing_data_and_a_bad_init_from_are_one_line(gj, missing_data_error, tmp_path):
    missing_data_error(gj.main)
    with pytest.raises(SystemExit) as exc:
        gj.main(["--init-from", str(tmp_path / "nothing"), "--smoke", "--out-dir", str(tmp_path)])
    assert isinstance(exc.value.code, str) and exc.value.code.startswith("error: --init-from")
