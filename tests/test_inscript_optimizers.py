"""Every optimizer written inside a script of 01-foundations and 03-regularization, against torch.optim.

The scripts of these chapters carry their own copies of SGD, Adam and AdamW (02-optimization teaches
them; tests/test_optimizers.py checks those). Each copy is checked here as test_optimizers does: in
float64, over 100 steps of a random smooth problem with several parameter tensors, with
non-default hyperparameters (betas, eps, and the decoupled weight decay where the copy has one),
the copy and torch.optim must agree to 1e-10 at every step. The parameters are named as the scripts
name theirs (W1, b1, ...), because the AdamW copies decay the weights W only, never the biases.

Copies checked: mlp_numpy.sgd_step, mlp_jax.train_step (SGD fused with the MLP's loss),
dropout_numpy.Adam, l1_numpy.Adam, l2_numpy.adam_step (Adam and AdamW), dropout_jax.adam_update,
l1_jax.adam_update, l2_jax.adam_update (Adam and AdamW).
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

STEPS = 100
TOL = 1e-10
LR, BETAS, EPS, WD = 0.01, (0.8, 0.99), 1e-6, 0.05  # none of them the default
SHAPES = {"W1": (5, 3), "b1": (3,), "W2": (3, 4), "b2": (4,), "W3": (2, 3, 2)}


@pytest.fixture(scope="module")
def script(load_script):
    return lambda name: load_script(name)


def smooth_problem(seed=0):
    """Named parameter tensors of different shapes and a smooth, non-quadratic loss over them."""
    rng = np.random.default_rng(seed)
    params0 = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    A = {k: torch.from_numpy(rng.uniform(0.5, 2.0, s)) for k, s in SHAPES.items()}
    C = {k: torch.from_numpy(rng.standard_normal(s)) for k, s in SHAPES.items()}

    def loss(ps):
        return sum(torch.log1p((A[k] * p - C[k]) ** 2).sum() + 0.01 * (p**4).sum() for k, p in ps.items())

    return params0, loss


def grads_at(loss, params):
    """Gradients of the loss at NumPy (or JAX) parameters, by torch autograd in float64, as NumPy arrays."""
    ts = {k: torch.tensor(np.asarray(p), requires_grad=True) for k, p in params.items()}
    gs = torch.autograd.grad(loss(ts), list(ts.values()))
    return {k: g.numpy() for k, g in zip(ts, gs)}


@contextlib.contextmanager
def float64_default():
    """torch.optim keeps scalar state (step counts) in the default dtype: float64, so the reference is exact."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def torch_trajectory(make_opt, params0, loss, steps=STEPS):
    """Parameters after each step of the torch.optim optimizer `make_opt(named tensors)`."""
    with float64_default():
        ps = {k: torch.tensor(p, requires_grad=True) for k, p in params0.items()}
        opt = make_opt(ps)
        traj = []
        for _ in range(steps):
            opt.zero_grad()
            loss(ps).backward()
            opt.step()
            traj.append({k: p.detach().numpy().copy() for k, p in ps.items()})
    return traj


def adamw_groups(ps, wd):
    """Decay on the weights W only, as the scripts' AdamW copies do."""
    return [
        {"params": [p for k, p in ps.items() if k.startswith("W")], "weight_decay": wd},
        {"params": [p for k, p in ps.items() if not k.startswith("W")], "weight_decay": 0.0},
    ]


def reference(kind):
    """The torch.optim trajectory that the copies of `kind` must follow."""
    params0, loss = smooth_problem()
    if kind == "sgd":
        make = lambda ps: torch.optim.SGD(list(ps.values()), lr=0.05)
    elif kind == "adam":
        make = lambda ps: torch.optim.Adam(list(ps.values()), lr=LR, betas=BETAS, eps=EPS)
    else:  # adamw
        make = lambda ps: torch.optim.AdamW(adamw_groups(ps, WD), lr=LR, betas=BETAS, eps=EPS)
    return params0, loss, torch_trajectory(make, params0, loss)


def numpy_trajectory(step, params0, loss, steps=STEPS):
    """Parameters after each call of `step(params, grads)`, which updates the dict of arrays in place."""
    ps = {k: p.copy() for k, p in params0.items()}
    traj = []
    for _ in range(steps):
        step(ps, grads_at(loss, ps))
        traj.append({k: p.copy() for k, p in ps.items()})
    return traj


def jax_trajectory(update, state, params0, loss, steps=STEPS):
    """Parameters after each `params, state = update(params, grads, state)` of a pure-function optimizer."""
    traj = []
    with jax.enable_x64(True):
        ps = {k: jnp.asarray(p) for k, p in params0.items()}
        state = state(ps)
        for _ in range(steps):
            grads = {k: jnp.asarray(g) for k, g in grads_at(loss, ps).items()}
            ps, state = update(ps, grads, state)
            assert all(p.dtype == jnp.float64 for p in ps.values())
            traj.append({k: np.asarray(p) for k, p in ps.items()})
    return traj


def assert_same_trajectory(ours, ref, what):
    assert len(ours) == len(ref) == STEPS
    for step, (a, b) in enumerate(zip(ours, ref), start=1):
        assert set(a) == set(b)
        err = max(np.abs(a[k] - b[k]).max() for k in a)
        assert err <= TOL, f"{what}: step {step} differs from torch.optim by {err:.3g}"
    moved = max(np.abs(ref[-1][k] - ref[0][k]).max() for k in ref[0])
    assert moved > 0.1, f"{what}: the problem barely moved ({moved:.3g}); the comparison would prove little"


# --- 01-foundations: SGD --------------------------------------------------------------------------


def test_mlp_numpy_sgd_step(script):
    mlp = script("01-foundations/mlp_numpy.py")
    params0, loss, ref = reference("sgd")
    ours = numpy_trajectory(lambda ps, gs: mlp.sgd_step(ps, gs, 0.05), params0, loss)
    assert_same_trajectory(ours, ref, "mlp_numpy.sgd_step")


def test_mlp_jax_train_step_is_sgd(script):
    """mlp_jax fuses SGD into its jitted train_step with the MLP's own loss: 100 steps on a small float64 MLP
    and batch against torch.optim.SGD on the same network, written with torch ops."""
    mlp = script("01-foundations/mlp_jax.py")
    rng = np.random.default_rng(1)
    sizes, B, lr = [6, 5, 4, 3], 8, 0.3
    params0 = {}
    for l, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        params0[f"W{l}"] = rng.standard_normal((d_in, d_out)) / np.sqrt(d_in)
        params0[f"b{l}"] = 0.1 * rng.standard_normal(d_out)
    x, y = rng.standard_normal((B, sizes[0])), rng.integers(0, sizes[-1], B)

    def loss(ps):
        h = torch.from_numpy(x)
        for l in range(1, len(sizes)):
            h = h @ ps[f"W{l}"] + ps[f"b{l}"]
            if l < len(sizes) - 1:
                h = torch.relu(h)
        return F.cross_entropy(h, torch.from_numpy(y))

    ref = torch_trajectory(lambda ps: torch.optim.SGD(list(ps.values()), lr=lr), params0, loss)
    ours = []
    with jax.enable_x64(True):
        ps, X, Y = {k: jnp.asarray(v) for k, v in params0.items()}, jnp.asarray(x), jnp.asarray(y)
        for _ in range(STEPS):
            ps, _, _ = mlp.train_step(ps, X, Y, np.arange(B), lr)
            ours.append({k: np.asarray(v) for k, v in ps.items()})
    assert_same_trajectory(ours, ref, "mlp_jax.train_step")


# --- 03-regularization: Adam and AdamW, NumPy ------------------------------------------------------


def test_dropout_numpy_adam(script):
    mod = script("03-regularization/dropout_numpy.py")
    params0, loss, ref = reference("adam")
    opt = mod.Adam(lr=LR, betas=BETAS, eps=EPS)
    assert_same_trajectory(numpy_trajectory(opt.step, params0, loss), ref, "dropout_numpy.Adam")


def test_l1_numpy_adam(script):
    mod = script("03-regularization/l1_numpy.py")
    params0, loss, ref = reference("adam")
    ps = {k: p.copy() for k, p in params0.items()}
    opt = mod.Adam(ps, lr=LR, betas=BETAS, eps=EPS)
    ours = []
    for _ in range(STEPS):  # l1_numpy's Adam keeps its moments for the arrays it was built with
        opt.step(ps, grads_at(loss, ps))
        ours.append({k: p.copy() for k, p in ps.items()})
    assert_same_trajectory(ours, ref, "l1_numpy.Adam")


@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_l2_numpy_adam_step(script, kind):
    mod = script("03-regularization/l2_numpy.py")
    params0, loss, ref = reference(kind)
    wd = WD if kind == "adamw" else 0.0
    state = mod.adam_init(params0)
    step = lambda ps, gs: mod.adam_step(ps, gs, state, LR, wd, betas=BETAS, eps=EPS)
    assert_same_trajectory(numpy_trajectory(step, params0, loss), ref, f"l2_numpy.adam_step ({kind})")


# --- 03-regularization: Adam and AdamW, JAX (pure functions) ---------------------------------------


@pytest.mark.parametrize("name", ["dropout_jax", "l1_jax"])
def test_jax_adam_update(script, name):
    mod = script(f"03-regularization/{name}.py")
    params0, loss, ref = reference("adam")
    update = lambda ps, gs, st: mod.adam_update(ps, gs, st, LR, b1=BETAS[0], b2=BETAS[1], eps=EPS)
    assert_same_trajectory(jax_trajectory(update, mod.adam_init, params0, loss), ref, f"{name}.adam_update")


@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_l2_jax_adam_update(script, kind):
    mod = script("03-regularization/l2_jax.py")
    params0, loss, ref = reference(kind)
    wd = WD if kind == "adamw" else 0.0
    update = lambda ps, gs, st: mod.adam_update(ps, gs, st, LR, wd, b1=BETAS[0], b2=BETAS[1], eps=EPS)
    assert_same_trajectory(jax_trajectory(update, mod.adam_init, params0, loss), ref, f"l2_jax.adam_update ({kind})")
