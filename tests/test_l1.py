"""03-regularization L1: the hand-written penalty gradient against torch autograd, NumPy = JAX = PyTorch, the runs.

Float64 throughout; relative error max|a - b| / (max|a| + max|b|). Weights are drawn away from 0,
where |w| has its kink; the convention at exactly 0 (sign(0) = 0, as torch) is tested on its own.
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

SCRIPTS = ["03-regularization/l1_numpy.py", "03-regularization/l1_jax.py", "03-regularization/l1_torch.py"]
SIZES = [20, 12, 8, 5]


@pytest.fixture(scope="module")
def l1_np(load_script):
    return load_script(SCRIPTS[0])


@pytest.fixture(scope="module")
def l1_jax(load_script):
    return load_script(SCRIPTS[1])


@pytest.fixture(scope="module")
def l1_torch(load_script):
    return load_script(SCRIPTS[2])


def random_params(seed, sizes=SIZES):
    """Float64 weights with |w| >= 0.01 (away from the kink) and non-zero biases."""
    rng = np.random.default_rng(seed)
    params = {}
    for l, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        W = rng.standard_normal((d_in, d_out)) * 0.3
        params[f"W{l}"] = np.where(np.abs(W) < 0.01, 0.01 * np.sign(W) + 0.01 * (W == 0), W)
        params[f"b{l}"] = 0.1 * rng.standard_normal(d_out)
    return params


def torch_grads(fn, params):
    """fn(dict of float64 leaf tensors) -> scalar; returns its value and the gradient of every entry."""
    ts = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    out = fn(ts)
    grads = torch.autograd.grad(out, list(ts.values()), allow_unused=True)
    return out.item(), {k: None if g is None else g.numpy() for k, g in zip(ts, grads)}


def torch_l1(P, lam):
    return lam * sum(P[k].abs().sum() for k in P if k.startswith("W"))


def torch_total_loss(P, x, y, lam):
    L = len(P) // 2
    h = torch.as_tensor(x)
    for l in range(1, L + 1):
        h = h @ P[f"W{l}"] + P[f"b{l}"]
        if l < L:
            h = F.relu(h)
    return F.cross_entropy(h, torch.as_tensor(y)) + torch_l1(P, lam)


# --- the hand-written NumPy penalty and network against torch autograd ---------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("lam", [1e-4, 0.37])
def test_penalty_gradient_matches_autograd(l1_np, lam, seed):
    params = random_params(seed)
    value_ref, grads_ref = torch_grads(lambda P: torch_l1(P, lam), params)
    assert rel_error(l1_np.l1_penalty(params, lam), value_ref) <= 1e-12
    grads = l1_np.l1_grad(params, lam)
    assert set(grads) == {"W1", "W2", "W3"}  # biases carry no penalty
    for name, g in grads.items():
        assert rel_error(g, grads_ref[name]) <= 1e-7, name
        assert np.allclose(np.abs(g), lam)  # the constant-size pull
    assert all(grads_ref[f"b{l}"] is None for l in (1, 2, 3))


def test_penalty_convention_at_zero(l1_np):
    """At w = 0 the subgradient is 0, as torch's derivative of |w| there (and sign(0) = 0)."""
    params = {"W1": np.array([[0.0, 1.5], [-2.0, 0.0]]), "b1": np.zeros(2)}
    _, grads_ref = torch_grads(lambda P: torch_l1(P, 0.5), params)
    np.testing.assert_array_equal(l1_np.l1_grad(params, 0.5)["W1"], [[0.0, 0.5], [-0.5, 0.0]])
    np.testing.assert_array_equal(grads_ref["W1"], [[0.0, 0.5], [-0.5, 0.0]])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("lam", [0.0, 1e-3, 0.2])
def test_network_loss_and_grads_match_autograd(l1_np, lam, seed):
    """Cross-entropy + L1 and every gradient of the whole hand-written network, against torch."""
    params = random_params(seed)
    rng = np.random.default_rng(100 + seed)
    x, y = rng.standard_normal((16, SIZES[0])), rng.integers(0, SIZES[-1], 16)
    loss, grads, _, data_loss = l1_np.loss_and_grads(params, x, y, lam)
    loss_ref, grads_ref = torch_grads(lambda P: torch_total_loss(P, x, y, lam), params)
    assert rel_error(loss, loss_ref) <= 1e-12
    assert rel_error(loss - data_loss, l1_np.l1_penalty(params, lam)) <= 1e-12
    assert set(grads) == set(params)
    for name in params:
        assert rel_error(grads[name], grads_ref[name]) <= 1e-7, name


# --- NumPy, JAX and PyTorch: the same penalty and gradient for the same weights ------------------


def test_three_frameworks_agree(l1_np, l1_jax, l1_torch):
    lam = 3e-3
    params = random_params(7)
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((16, SIZES[0])), rng.integers(0, SIZES[-1], 16)
    pen_np, grads_np = l1_np.l1_penalty(params, lam), l1_np.l1_grad(params, lam)
    loss_np, total_np, _, _ = l1_np.loss_and_grads(params, x, y, lam)

    with jax.enable_x64(True):
        jparams = {k: jnp.asarray(v) for k, v in params.items()}
        pen_jax, grads_jax = jax.value_and_grad(l1_jax.l1_penalty)(jparams, lam)
        (loss_jax, _), total_jax = jax.value_and_grad(l1_jax.loss_fn, has_aux=True)(jparams, x, y, lam)
        assert grads_jax["W1"].dtype == jnp.float64
        pen_jax, loss_jax = float(pen_jax), float(loss_jax)
        grads_jax = {k: np.asarray(v) for k, v in grads_jax.items()}
        total_jax = {k: np.asarray(v) for k, v in total_jax.items()}

    model = l1_torch.MLP(SIZES).double()
    with torch.no_grad():  # nn.Linear stores W transposed
        for l, layer in enumerate(model.layers, start=1):
            layer.weight.copy_(torch.from_numpy(params[f"W{l}"].T))
            layer.bias.copy_(torch.from_numpy(params[f"b{l}"]))
    pen_torch = l1_torch.l1_penalty(model, lam)
    pen_torch.backward()
    grads_torch = {f"W{l}": layer.weight.grad.numpy().T.copy() for l, layer in enumerate(model.layers, start=1)}
    assert all(layer.bias.grad is None for layer in model.layers)  # biases are not in the penalty
    model.zero_grad()
    loss_torch = F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)) + l1_torch.l1_penalty(model, lam)
    loss_torch.backward()
    total_torch = {}
    for l, layer in enumerate(model.layers, start=1):
        total_torch[f"W{l}"], total_torch[f"b{l}"] = layer.weight.grad.numpy().T, layer.bias.grad.numpy()

    assert rel_error(pen_np, pen_jax) <= 1e-9 and rel_error(pen_np, pen_torch.item()) <= 1e-9
    assert rel_error(loss_np, loss_jax) <= 1e-9 and rel_error(loss_np, loss_torch.item()) <= 1e-9
    for name in params:
        if name.startswith("W"):
            assert rel_error(grads_np[name], grads_jax[name]) <= 1e-9, name
            assert rel_error(grads_np[name], grads_torch[name]) <= 1e-9, name
        else:
            assert not grads_jax[name].any(), name
        assert rel_error(total_np[name], total_jax[name]) <= 1e-9, name
        assert rel_error(total_np[name], total_torch[name]) <= 1e-9, name


# --- invalid strength ----------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [-1e-4, float("nan")])
def test_negative_lam_raises(l1_np, l1_jax, l1_torch, lam):
    params = random_params(0)
    for fn in (l1_np.l1_penalty, l1_np.l1_grad, l1_jax.l1_penalty):
        with pytest.raises(ValueError, match="lam"):
            fn(params, lam)
    with pytest.raises(ValueError, match="lam"):
        l1_np.loss_and_grads(params, np.zeros((2, SIZES[0])), np.zeros(2, int), lam)
    with pytest.raises(ValueError, match="lam"):
        l1_torch.l1_penalty(l1_torch.MLP(SIZES), lam)


BAD_VALUES = [
    (["--lam", "-0.001"], "--lam"),
    (["--lam", "nan"], "--lam"),
] + COMMON_BAD_VALUES


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("argv,flag", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_values_exit_2_naming_the_flag(load_script, script, argv, flag, usage_error):
    """A bad value is a usage error (exit 2) that names its flag, before any data are read."""
    error = usage_error(load_script(script), argv)
    assert flag in error, error


def test_unavailable_device_exits_2_before_loading(l1_torch, usage_error, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "--device cuda: not available" in usage_error(l1_torch, ["--device", "cuda"])


# --- the scripts run end to end ------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_run(load_script, script, tmp_path):
    """`--smoke` (1k real images, 2 epochs): both runs learned, and L1 left more first-layer weights near zero."""
    m = load_script(script).main(["--smoke", "--lam", "1e-3", "--out-dir", str(tmp_path)])
    assert m["final_train_loss"] < m["first_loss"]
    assert m["test_acc"] > 0.5 and m["test_acc_without"] > 0.5  # chance: 0.1
    assert m["sparsity"] > m["sparsity_without"] + 0.02
    assert m["W1_l1_norm"] < m["W1_l1_norm_without"]
    assert json.loads((tmp_path / "metrics.json").read_text())["test_acc"] == m["test_acc"]
    assert (tmp_path / "l1.png").stat().st_size > 10_000
