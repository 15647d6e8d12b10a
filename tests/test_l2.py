"""L2 regularization: hand-written gradients against autograd, the three frameworks agree, L2 with SGD is
exactly weight decay, L2 with Adam is not AdamW, invalid lam fails, and smoke runs of the three scripts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import COMMON_BAD_VALUES
from gradcheck import rel_error

SCRIPTS = ["03-regularization/l2_numpy.py", "03-regularization/l2_jax.py", "03-regularization/l2_torch.py"]
SIZES = [12, 7, 5, 4]


@pytest.fixture
def l2np(load_script):
    return load_script(SCRIPTS[0])


@pytest.fixture
def l2jax(load_script):
    return load_script(SCRIPTS[1])


@pytest.fixture
def l2torch(load_script):
    return load_script(SCRIPTS[2])


def make_problem(seed=0, batch=9):
    """float64 parameters (nonzero biases), a batch of inputs and labels."""
    rng = np.random.default_rng(seed)
    params = {}
    for l, (d_in, d_out) in enumerate(zip(SIZES[:-1], SIZES[1:]), start=1):
        params[f"W{l}"] = rng.standard_normal((d_in, d_out)) / np.sqrt(d_in)
        params[f"b{l}"] = 0.1 * rng.standard_normal(d_out)
    return params, rng.standard_normal((batch, SIZES[0])), rng.integers(0, SIZES[-1], batch)


def torch_leaves(params):
    return {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}


def torch_loss(tp, x, y, lam):
    """The same MLP and L2-regularized loss written with torch ops (W stored (D_in, D_out) as in NumPy)."""
    L = len(tp) // 2
    h = torch.tensor(x)
    for l in range(1, L + 1):
        h = h @ tp[f"W{l}"] + tp[f"b{l}"]
        if l < L:
            h = torch.relu(h)
    ws = [v for k, v in tp.items() if k.startswith("W")]
    return torch.nn.functional.cross_entropy(h, torch.tensor(y)) + 0.5 * lam * sum((W * W).sum() for W in ws)


def torch_model(l2torch, params):
    """The torch script's MLP holding the same float64 weights (nn.Linear stores W transposed)."""
    model = l2torch.MLP(SIZES).double()
    with torch.no_grad():
        for l, layer in enumerate(model.layers, start=1):
            layer.weight.copy_(torch.tensor(params[f"W{l}"].T))
            layer.bias.copy_(torch.tensor(params[f"b{l}"]))
    return model


def model_params(model):
    return {
        k: v
        for l, layer in enumerate(model.layers, 1)
        for k, v in ((f"W{l}", layer.weight.detach().numpy().T), (f"b{l}", layer.bias.detach().numpy()))
    }


# ---------------------------------------------------------------- gradients against autograd


def test_numpy_penalty_gradient_matches_autograd(l2np):
    params, _, _ = make_problem()
    lam, upstream = 0.37, 1.7  # a non-unit upstream gradient dL/dR
    R, dR = l2np.l2_penalty(params, lam)
    tp = torch_leaves(params)
    R_t = 0.5 * lam * sum((tp[k] ** 2).sum() for k in tp if k.startswith("W"))
    (upstream * R_t).backward()
    assert abs(R - R_t.item()) <= 1e-12 * abs(R)
    assert set(dR) == {"W1", "W2", "W3"}  # biases are not penalised
    for k, g in dR.items():
        assert rel_error(upstream * g, tp[k].grad) <= 1e-7


@pytest.mark.parametrize("lam", [0.0, 0.05, 2.0])
def test_numpy_regularized_loss_and_gradients_match_autograd(l2np, lam):
    params, x, y = make_problem(seed=1)
    loss, grads, data_loss, _ = l2np.loss_and_grads(params, x, y, lam)
    tp = torch_leaves(params)
    loss_t = torch_loss(tp, x, y, lam)
    loss_t.backward()
    assert abs(loss - loss_t.item()) <= 1e-12 * abs(loss)
    assert abs(loss - data_loss - l2np.l2_penalty(params, lam)[0]) <= 1e-14
    for k in params:
        assert rel_error(grads[k], tp[k].grad) <= 1e-7, k


def test_three_frameworks_agree_on_penalty_and_gradient(l2np, l2jax, l2torch):
    params, _, _ = make_problem(seed=2)
    lam = 0.3
    R_np, dR_np = l2np.l2_penalty(params, lam)
    with jax.enable_x64(True):
        jparams = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in params.items()}
        R_jax, dR_jax = jax.value_and_grad(l2jax.l2_penalty)(jparams, lam)
        assert dR_jax["W1"].dtype == jnp.float64
        R_jax, dR_jax = float(R_jax), {k: np.asarray(v) for k, v in dR_jax.items()}
    tp = torch_leaves(params)
    R_t = l2torch.l2_penalty([tp[k] for k in ("W1", "W2", "W3")], lam)
    R_t.backward()
    for R in (R_jax, R_t.item()):
        assert abs(R - R_np) <= 1e-9 * abs(R_np)
    for k in params:
        expected = dR_np.get(k, np.zeros_like(params[k]))  # 0 for the biases
        assert rel_error(dR_jax[k], expected) <= 1e-9, k
        if k[0] == "W":  # the torch penalty only sees the weights it is given
            assert rel_error(tp[k].grad, expected) <= 1e-9, k
        assert rel_error(expected, lam * params[k] if k[0] == "W" else 0 * params[k]) <= 1e-15


# ---------------------------------------------------------------- L2 and weight decay


@pytest.mark.parametrize("steps", [1, 5])
def test_l2_with_sgd_is_exactly_weight_decay(l2np, l2torch, steps):
    """theta - lr (g + lam theta) == (1 - lr lam) theta - lr g == torch.optim.SGD(weight_decay=lam), float64."""
    params, x, y = make_problem(seed=3, batch=16)
    lr, lam = 0.2, 0.15
    model = torch_model(l2torch, params)
    opt = torch.optim.SGD(
        [
            {"params": l2torch.weights(model), "weight_decay": lam},
            {"params": [layer.bias for layer in model.layers], "weight_decay": 0.0},
        ],
        lr=lr,
    )
    l2_sgd, shrink = {k: v.copy() for k, v in params.items()}, {k: v.copy() for k, v in params.items()}
    for _ in range(steps):
        _, grads, _, _ = l2np.loss_and_grads(l2_sgd, x, y, lam)  # L2 inside the gradient
        for k in l2_sgd:
            l2_sgd[k] = l2_sgd[k] - lr * grads[k]
        _, g_data, _, _ = l2np.loss_and_grads(shrink, x, y, 0.0)  # data gradient only, then the shrink formula
        for k in shrink:
            shrink[k] = (1 - lr * lam if k[0] == "W" else 1.0) * shrink[k] - lr * g_data[k]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.tensor(x)), torch.tensor(y)).backward()  # no penalty
        opt.step()  # the decay comes from the optimizer
    decayed = model_params(model)
    for k in params:
        assert rel_error(l2_sgd[k], shrink[k]) <= 1e-12, k
        assert rel_error(l2_sgd[k], decayed[k]) <= 1e-12, k
    assert rel_error(l2_sgd["W1"], params["W1"]) > 1e-3  # the steps did move the weights


def run_numpy_adam(l2np, params, x, y, lr, lam, wd, steps):
    p = {k: v.copy() for k, v in params.items()}
    state = l2np.adam_init(p)
    for _ in range(steps):
        _, grads, _, _ = l2np.loss_and_grads(p, x, y, lam)
        l2np.adam_step(p, grads, state, lr, wd)
    return p


def run_torch_adam(l2torch, params, x, y, lr, lam, wd, steps):
    model = torch_model(l2torch, params)
    opt = l2torch.make_optimizer(model, lr, wd)
    for _ in range(steps):
        l2torch.train_step(model, opt, torch.tensor(x), torch.tensor(y), lam)
    return model_params(model)


def test_hand_written_adam_and_adamw_match_torch(l2np, l2jax, l2torch):
    """NumPy and JAX Adam with L2 in the loss match torch.optim.Adam; their decoupled decay matches AdamW."""
    params, x, y = make_problem(seed=4, batch=16)
    lr, steps = 0.01, 6
    for lam, wd in [(0.1, 0.0), (0.0, 0.1)]:
        ref = run_torch_adam(l2torch, params, x, y, lr, lam, wd, steps)
        mine = run_numpy_adam(l2np, params, x, y, lr, lam, wd, steps)
        with jax.enable_x64(True):
            jp = {k: jnp.asarray(v) for k, v in params.items()}
            state = l2jax.adam_init(jp)
            for _ in range(steps):
                grads, _ = jax.grad(l2jax.loss_fn, has_aux=True)(jp, jnp.asarray(x), jnp.asarray(y), lam)
                jp, state = l2jax.adam_update(jp, grads, state, lr, wd)
            jp = {k: np.asarray(v) for k, v in jp.items()}
        for k in params:
            assert rel_error(mine[k], ref[k]) <= 1e-10, (lam, wd, k)
            assert rel_error(jp[k], ref[k]) <= 1e-10, (lam, wd, k)


def test_l2_with_adam_is_not_decoupled_decay(l2np):
    """The same coefficient in the loss (Adam) and as decoupled decay (AdamW) gives different weights."""
    params, x, y = make_problem(seed=5, batch=16)
    lr, lam, steps = 0.01, 0.1, 5
    coupled = run_numpy_adam(l2np, params, x, y, lr, lam, 0.0, steps)
    decoupled = run_numpy_adam(l2np, params, x, y, lr, 0.0, lam, steps)
    plain = run_numpy_adam(l2np, params, x, y, lr, 0.0, 0.0, steps)
    for k in ("W1", "W2", "W3"):
        # both decay, but differently: the L2 term is rescaled by 1 / sqrt(vhat), AdamW's is not
        assert rel_error(coupled[k], decoupled[k]) > 1e-3, k
        assert rel_error(decoupled[k], plain[k]) > 1e-5, k


# ---------------------------------------------------------------- invalid arguments


def test_negative_lam_raises(l2np, l2jax, l2torch):
    params, _, _ = make_problem()
    with pytest.raises(ValueError, match="lam"):
        l2np.l2_penalty(params, -0.1)
    with pytest.raises(ValueError, match="lam"):
        l2jax.l2_penalty({k: jnp.asarray(v) for k, v in params.items()}, -0.1)
    with pytest.raises(ValueError, match="lam"):
        l2torch.l2_penalty([torch.tensor(params["W1"])], -0.1)


BAD_VALUES = [
    (["--lam", "-0.01"], "--lam"),
    (["--weight-decay", "-1"], "--weight-decay"),
    (["--weight-decay", "inf"], "--weight-decay"),
] + COMMON_BAD_VALUES


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("argv,flag", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_values_exit_2_naming_the_flag(load_script, script, argv, flag, usage_error):
    """A bad value is a usage error (exit 2) that names its flag, before any data are read."""
    error = usage_error(load_script(script), argv)
    assert flag in error, error


def test_unavailable_device_exits_2_before_loading(l2torch, usage_error, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "--device cuda: not available" in usage_error(l2torch, ["--device", "cuda"])


# ---------------------------------------------------------------- smoke runs


@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_run(load_script, script, tmp_path):
    m = load_script(script).main(["--smoke", "--lam", "0.01", "--out-dir", str(tmp_path)])
    assert m["final_train_loss"] < m["first_loss"]
    assert min(m["test_acc"], m["test_acc_without"], m["test_acc_decoupled"]) > 0.5
    assert m["weight_norm"] < m["weight_norm_without"]
    assert m["weight_norm_decoupled"] < m["weight_norm_without"]
    assert (tmp_path / "metrics.json").exists() and (tmp_path / "l2.png").exists()
