"""03-regularization dropout: dropout_numpy, dropout_jax and dropout_torch against the definition and autograd.

Inverted dropout: out = h * mask / (1 - p) with mask = (u >= p), u ~ U[0, 1), in training; the
identity in evaluation; the backward multiplies by the same mask. Statistical checks use a fixed
seed and a 4-sigma binomial bound, so they are deterministic and would fail for a wrong p or scale.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import COMMON_BAD_VALUES
from gradcheck import rel_error

SCRIPTS = [
    "03-regularization/dropout_numpy.py",
    "03-regularization/dropout_jax.py",
    "03-regularization/dropout_torch.py",
]
N_LARGE = 1_000_000


@pytest.fixture(scope="module")
def dn(load_script):
    return load_script("03-regularization/dropout_numpy.py")


@pytest.fixture(scope="module")
def dj(load_script):
    return load_script("03-regularization/dropout_jax.py")


@pytest.fixture(scope="module")
def dt(load_script):
    return load_script("03-regularization/dropout_torch.py")


def apply_dropout(framework, mods, h, p, training, seed):
    """Each framework's dropout on the float64 array h; returns the output as a NumPy array."""
    if framework == "numpy":
        return mods["numpy"].dropout_forward(h, p, training, np.random.default_rng(seed))[0]
    if framework == "jax":
        return np.asarray(mods["jax"].dropout(jax.random.PRNGKey(seed), jnp.asarray(h), p, training))
    layer = mods["torch"].Dropout(p, generator=torch.Generator().manual_seed(seed))
    layer.train(training)
    return layer(torch.as_tensor(h)).numpy()


@pytest.fixture(scope="module")
def mods(dn, dj, dt):
    return {"numpy": dn, "jax": dj, "torch": dt}


FRAMEWORKS = ["numpy", "jax", "torch"]


@pytest.fixture
def x64():
    """JAX in float64 for one test (scoped: the scripts' own runs stay in float32)."""
    with jax.enable_x64(True):
        yield


# --- forward: identity in evaluation, the right statistics in training ------------------------------


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("p", [0.0, 0.3, 0.9])
def test_evaluation_is_identity(mods, framework, p):
    h = np.random.default_rng(0).standard_normal((7, 33))
    out = apply_dropout(framework, mods, h, p, training=False, seed=1)
    assert out.dtype == h.dtype and np.array_equal(out, h)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_kept_fraction_and_scaled_mean(mods, framework, p):
    """Kept fraction ~ Binomial(n, 1 - p) / n, and the mean of out for a constant input c stays c (E[out] = h)."""
    c = 1.7
    out = apply_dropout(framework, mods, np.full((1000, N_LARGE // 1000), c), p, training=True, seed=0)
    kept = out != 0
    assert set(np.unique(out)) == {0.0, c / (1 - p)}  # dropped, or kept and scaled by 1 / (1 - p)
    assert abs(kept.mean() - (1 - p)) <= 4 * np.sqrt(p * (1 - p) / N_LARGE)
    # out = c * Bernoulli(1 - p) / (1 - p): variance c^2 p / (1 - p) per element
    assert abs(out.mean() - c) <= 4 * c * np.sqrt(p / ((1 - p) * N_LARGE))


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_masks_differ_between_seeds_and_repeat_with_one(mods, framework):
    h = np.ones((64, 64))
    a, b, c = (apply_dropout(framework, mods, h, 0.5, True, seed) for seed in (0, 0, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_invalid_p_raises(mods, framework, p):
    with pytest.raises(ValueError, match=r"\[0, 1\).*divide"):
        apply_dropout(framework, mods, np.ones((2, 3)), p, training=True, seed=0)


# --- backward: the same mask -------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.2, 0.5, 0.75])
def test_numpy_backward_uses_the_forward_mask(dn, p):
    rng = np.random.default_rng(3)
    h = rng.uniform(0.5, 2.0, (50, 40)) * rng.choice([-1, 1], (50, 40))  # never zero: a zero output means dropped
    out, cache = dn.dropout_forward(h, p, True, np.random.default_rng(4))
    dout = rng.standard_normal(h.shape)
    dh = dn.dropout_backward(dout, cache)
    dropped = out == 0
    assert 0 < dropped.mean() < 1
    assert np.all(dh[dropped] == 0) and np.allclose(dh[~dropped], dout[~dropped] / (1 - p), rtol=1e-15, atol=0)
    # torch autograd of h * mask / (1 - p), with the mask the forward drew
    mask = torch.as_tensor(~dropped, dtype=torch.float64)
    ht = torch.tensor(h, requires_grad=True)
    out_ref = ht * mask / (1 - p)
    (dh_ref,) = torch.autograd.grad(out_ref, ht, torch.as_tensor(dout))
    assert rel_error(out, out_ref.detach().numpy()) <= 1e-12
    assert rel_error(dh, dh_ref.numpy()) <= 1e-12
    assert dn.dropout_backward(dout, dn.dropout_forward(h, p, False, None)[1]) is dout  # evaluation: identity


def test_torch_module_gradient_is_zero_where_output_is(dt):
    rng = np.random.default_rng(5)
    h = torch.tensor(rng.uniform(0.5, 2.0, (60, 30)), requires_grad=True)
    layer = dt.Dropout(p=0.4, generator=torch.Generator().manual_seed(0))
    out = layer(h)
    upstream = torch.as_tensor(rng.standard_normal(h.shape))
    (dh,) = torch.autograd.grad(out, h, upstream)
    dropped = out.detach() == 0
    assert 0 < dropped.double().mean() < 1
    assert torch.all(dh[dropped] == 0) and torch.allclose(dh[~dropped], upstream[~dropped] / 0.6, rtol=1e-15, atol=0)
    assert dt.Dropout().p == 0.5 and not isinstance(layer, torch.nn.Dropout)  # written from scratch


@pytest.mark.usefixtures("x64")
def test_jax_gradient_uses_the_forward_mask(dj):
    h = jnp.asarray(np.random.default_rng(6).uniform(0.5, 2.0, (40, 25)))
    g = jnp.asarray(np.random.default_rng(7).standard_normal(h.shape))
    key, p = jax.random.PRNGKey(3), 0.3
    out = dj.dropout(key, h, p, True)
    dh = jax.grad(lambda h: (dj.dropout(key, h, p, True) * g).sum())(h)
    kept = np.asarray(out) != 0
    assert (
        np.all(np.asarray(dh)[~kept] == 0) and rel_error(np.asarray(dh)[kept], np.asarray(g)[kept] / (1 - p)) <= 1e-15
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_numpy_network_backward_with_dropout(dn, seed):
    """loss_and_grads in training (dropout on) against torch autograd of the same network with the same masks."""
    rng = np.random.default_rng(seed)
    sizes, B, p = [20, 16, 12, 5], 9, 0.4
    params = dn.init_params(sizes, rng, dtype=np.float64)
    for name in params:
        params[name] += 0.1 * rng.standard_normal(params[name].shape)
    x, y = rng.standard_normal((B, sizes[0])), rng.integers(0, sizes[-1], B)
    loss, grads, _ = dn.loss_and_grads(params, x, y, p, training=True, rng=np.random.default_rng(10 + seed))
    _, caches = dn.forward(params, x, p, True, np.random.default_rng(10 + seed))  # the same masks again
    masks = [torch.as_tensor(c[2][0], dtype=torch.float64) for c in caches[:-1]]
    assert all(0 < m.mean() < 1 for m in masks)

    names = list(params)
    ts = [torch.tensor(params[n], requires_grad=True) for n in names]
    P, h = dict(zip(names, ts)), torch.as_tensor(x)
    for l in range(1, len(sizes)):
        h = h @ P[f"W{l}"] + P[f"b{l}"]
        if l < len(sizes) - 1:
            h = F.relu(h) * masks[l - 1] / (1 - p)
    loss_ref = F.cross_entropy(h, torch.as_tensor(y))
    grads_ref = torch.autograd.grad(loss_ref, ts)
    assert rel_error(loss, loss_ref.item()) <= 1e-12
    assert set(grads) == set(names)
    for n, g_ref in zip(names, grads_ref):
        assert rel_error(grads[n], g_ref.numpy()) <= 1e-7, n
    loss_eval, _, _ = dn.loss_and_grads(params, x, y)
    assert abs(loss_eval - loss) > 1e-3  # dropout changed the training loss


# --- the scripts run end to end ----------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_run(load_script, script, tmp_path):
    """`--smoke`: both runs learn on 1k real images; dropout narrows the train/test accuracy gap."""
    m = load_script(script).main(["--smoke", "--out-dir", str(tmp_path)])
    assert m["final_train_loss"] < m["first_loss"]
    assert m["test_acc"] > 0.5 and m["test_acc_without"] > 0.5  # chance: 0.1
    assert m["train_acc"] - m["test_acc"] < m["train_acc_without"] - m["test_acc_without"]
    assert m["config"]["n_train"] == 1000 and m["config"]["dropout"] == 0.5
    assert json.loads((tmp_path / "metrics.json").read_text())["test_acc"] == m["test_acc"]
    assert (tmp_path / "dropout.png").stat().st_size > 10_000


BAD_VALUES = [
    (["--dropout", "1"], "--dropout"),
    (["--dropout", "1.5"], "--dropout"),
    (["--dropout", "-0.1"], "--dropout"),
    (["--dropout", "nan"], "--dropout"),
] + COMMON_BAD_VALUES


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("argv,flag", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_values_exit_2_naming_the_flag(load_script, script, argv, flag, usage_error):
    """A bad value is a usage error (exit 2) that names its flag, before any data are read."""
    error = usage_error(load_script(script), argv)
    assert flag in error, error


def test_unavailable_device_exits_2_before_loading(dt, usage_error, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "--device cuda: not available" in usage_error(dt, ["--device", "cuda"])
