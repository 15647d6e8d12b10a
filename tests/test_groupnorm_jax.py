"""groupnorm_jax.py: the JAX group_norm against torch's GroupNorm, LayerNorm and InstanceNorm (outputs and
gradients, float64), the hand-written Adam against torch.optim.Adam, the ValueError, and a smoke run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import GROUPNORM_BAD_VALUES
from gradcheck import rel_error
from torch import nn

SCRIPT = "02-optimization/groupnorm_jax.py"


@pytest.fixture(scope="module")
def gn(load_script):
    return load_script(SCRIPT)


def make_inputs(shape, seed):
    """x with a per-channel offset and scale, non-trivial gamma and beta, and a random upstream gradient."""
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3, (1, C, 1, 1)) + rng.standard_normal((1, C, 1, 1))
    return x, 1 + 0.5 * rng.standard_normal(C), rng.standard_normal(C), rng.standard_normal(shape)


def jax_out_and_grads(gn, x, gamma, beta, upstream, groups):
    """group_norm(x) and the gradients of sum(out * upstream) w.r.t. x, gamma, beta by jax.grad, in float64."""
    with jax.enable_x64(True):
        args = [jnp.asarray(a, dtype=jnp.float64) for a in (x, gamma, beta)]
        out = gn.group_norm(*args, groups)
        assert out.dtype == jnp.float64
        grads = jax.grad(lambda *a: jnp.sum(gn.group_norm(*a, groups) * upstream), argnums=(0, 1, 2))(*args)
        return np.asarray(out), [np.asarray(g) for g in grads]


def torch_out_and_grads(fn, x, gamma, beta, upstream):
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, gamma, beta)]
    out = fn(*ts)
    grads = torch.autograd.grad(out, ts, grad_outputs=torch.tensor(upstream))
    return out.detach().numpy(), [g.numpy() for g in grads]


def assert_matches(gn, fn, shape, groups, seed):
    x, gamma, beta, upstream = make_inputs(shape, seed)
    out, grads = jax_out_and_grads(gn, x, gamma, beta, upstream, groups)
    out_ref, grads_ref = torch_out_and_grads(fn, x, gamma, beta, upstream)
    assert rel_error(out, out_ref) <= 1e-10
    for name, g, g_ref in zip(["x", "gamma", "beta"], grads, grads_ref):
        assert rel_error(g, g_ref) <= 1e-9, name


CASES = [
    ((2, 6, 5, 4), 3),
    ((3, 8, 4, 4), 4),
    ((1, 4, 3, 5), 2),
    ((4, 6, 3, 3), 1),
    ((2, 5, 4, 3), 5),
    ((5, 16, 2, 2), 8),
]


@pytest.mark.parametrize("shape,groups", CASES)
def test_group_norm_matches_torch_functional(gn, shape, groups):
    assert_matches(gn, lambda x, w, b: F.group_norm(x, groups, w, b, eps=1e-5), shape, groups, seed=sum(shape))


@pytest.mark.parametrize("shape,groups", CASES[:3])
def test_group_norm_matches_nn_groupnorm(gn, shape, groups):
    """nn.GroupNorm holding the same gamma (weight) and beta (bias)."""

    def module(x, w, b):
        m = nn.GroupNorm(groups, shape[1], eps=1e-5).double()
        return torch.func.functional_call(m, {"weight": w, "bias": b}, (x,))  # w, b: the leaves differentiated

    assert_matches(gn, module, shape, groups, seed=7)


@pytest.mark.parametrize("shape", [(3, 4, 5, 5), (2, 6, 3, 4)])
def test_one_group_is_layer_norm_over_chw(gn, shape):
    """G = 1 equals LayerNorm over (C, H, W) with a per-channel affine (the same gamma_c at every position)."""

    def layer_norm(x, w, b):
        return F.layer_norm(x, x.shape[1:], eps=1e-5) * w[:, None, None] + b[:, None, None]

    assert_matches(gn, layer_norm, shape, 1, seed=11)


@pytest.mark.parametrize("shape", [(3, 4, 5, 5), (2, 6, 3, 4)])
def test_c_groups_is_instance_norm(gn, shape):
    """G = C equals InstanceNorm: each example's channel standardised over (H, W) alone."""
    assert_matches(gn, lambda x, w, b: F.instance_norm(x, weight=w, bias=b, eps=1e-5), shape, shape[1], seed=13)


def test_group_norm_is_per_example(gn):
    """An example's output does not depend on the rest of its batch."""
    x, gamma, beta, _ = make_inputs((6, 8, 4, 4), 17)
    with jax.enable_x64(True):
        full = gn.group_norm(jnp.asarray(x), jnp.asarray(gamma), jnp.asarray(beta), 4)
        one = gn.group_norm(jnp.asarray(x[2:3]), jnp.asarray(gamma), jnp.asarray(beta), 4)
        assert rel_error(full[2:3], one) <= 1e-14


@pytest.mark.parametrize("groups", [3, 5, 0, -2])
def test_groups_not_dividing_channels_raise(gn, groups):
    with pytest.raises(ValueError, match="num_groups"):
        gn.group_norm(jnp.ones((2, 8, 3, 3)), jnp.ones(8), jnp.zeros(8), groups)


def test_adam_matches_torch_optim_adam(gn):
    """Five hand-written Adam steps on a small least-squares problem follow torch.optim.Adam's trajectory."""
    rng = np.random.default_rng(3)
    A, t = rng.standard_normal((7, 4)), rng.standard_normal(7)
    init = {"w": rng.standard_normal(4), "b": np.array(0.3)}
    lr = 0.05

    def loss(p, A, t):  # written once; jnp and torch arrays both support these ops
        return (((A @ p["w"] + p["b"]) - t) ** 2).mean()

    tp = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    opt = torch.optim.Adam(tp.values(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    with jax.enable_x64(True):
        jp = {k: jnp.asarray(v) for k, v in init.items()}
        state = gn.adam_init(jp)
        for _ in range(5):
            opt.zero_grad()
            loss(tp, torch.tensor(A), torch.tensor(t)).backward()
            opt.step()
            jp, state = gn.adam_update(jp, jax.grad(loss)(jp, A, t), state, lr)
            for k in init:
                assert rel_error(jp[k], tp[k]) <= 1e-10, k
        assert int(state["t"]) == 5
    assert rel_error(tp["w"], init["w"]) > 1e-2  # the parameters really moved


@pytest.mark.parametrize("shape", [(5, 6), (4, 3, 5, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_torch(gn, shape, training):
    """The comparison BatchNorm equals F.batch_norm on (N, C) and (N, C, H, W): output and running statistics."""
    x, gamma, beta, _ = make_inputs(shape, 23)
    rng = np.random.default_rng(5)
    mean0, var0 = rng.standard_normal(shape[1]), rng.uniform(0.5, 2, shape[1])
    rm, rv = torch.tensor(mean0), torch.tensor(var0)
    ref = F.batch_norm(torch.tensor(x), rm, rv, torch.tensor(gamma), torch.tensor(beta), training, 0.1, 1e-5)
    with jax.enable_x64(True):
        stats = {"mean": jnp.asarray(mean0), "var": jnp.asarray(var0)}
        out, new = gn.batch_norm(jnp.asarray(x), jnp.asarray(gamma), jnp.asarray(beta), stats, training)
        assert rel_error(out, ref) <= 1e-12
        assert rel_error(new["mean"], rm) <= 1e-12 and rel_error(new["var"], rv) <= 1e-12  # torch updates in place


def test_batch_norm_of_two_vectors_is_plus_minus_one(gn):
    """BatchNorm on (2, C) in training: each feature of the two examples becomes -1 and +1 (up to eps), whatever
    the input -- the collapse the batch-size experiment shows. GroupNorm on the same input keeps its values' shape."""
    x = np.random.default_rng(9).standard_normal((2, 8)) * 3 + 1
    with jax.enable_x64(True):
        stats = {"mean": jnp.zeros(8), "var": jnp.ones(8)}
        out, _ = gn.batch_norm(jnp.asarray(x), jnp.ones(8), jnp.zeros(8), stats, True, eps=1e-12)
        np.testing.assert_allclose(np.abs(np.asarray(out)), 1, atol=1e-9)
        assert (np.sign(out[0]) == np.sign(x[0] - x[1])).all()
        g = gn.group_norm(jnp.asarray(x), jnp.ones(8), jnp.zeros(8), 2)
        assert len(np.unique(np.round(np.abs(np.asarray(g)), 6))) > 8  # many distinct magnitudes


def test_groupnorm_cnn_is_per_example(gn):
    """The whole GroupNorm CNN gives an example the same logits alone as inside a batch; BatchNorm's does not."""
    with jax.enable_x64(True):
        params = gn.init_params(jax.random.PRNGKey(1), (8, 16), 16, jnp.float64)
        stats = gn.init_stats((8, 16), 16, jnp.float64)
        x = jax.random.normal(jax.random.PRNGKey(2), (5, 1, 28, 28), jnp.float64)
        full, _ = gn.forward(params, stats, x, "gn", 4, training=True)
        alone, _ = gn.forward(params, stats, x[3:4], "gn", 4, training=True)
        assert rel_error(full[3:4], alone) <= 1e-12
        pair, _ = gn.forward(params, stats, x[3:5], "bn", 4, training=True)
        trio, _ = gn.forward(params, stats, x[2:5], "bn", 4, training=True)
        assert rel_error(pair[0], trio[1]) > 1e-3


def test_forward_shapes(gn):
    params = gn.init_params(jax.random.PRNGKey(0), (8, 16))
    stats = gn.init_stats((8, 16))
    for norm in ("gn", "bn"):
        logits, new_stats = gn.forward(params, stats, jnp.ones((3, 1, 28, 28)), norm, 4)
        assert logits.shape == (3, 10)
        assert jax.tree.map(jnp.shape, new_stats) == jax.tree.map(jnp.shape, stats)


def test_smoke_run(gn, tmp_path):
    """`--smoke`: K-fold (k=2), the final model, and the batch-size runs; the net learns and writes its outputs."""
    m = gn.main(["--smoke", "--out-dir", str(tmp_path)])
    assert m["final_train_loss"] < m["first_loss"]
    assert m["test_acc"] > 0.5  # chance: 0.1
    assert len(m["cv_fold_acc"]) == 2 and all(a > 0.3 for a in m["cv_fold_acc"])
    for k in ("gn_acc_bs2", "gn_acc_bs64", "bn_acc_bs2", "bn_acc_bs64"):
        assert 0 <= m[k] <= 1
    assert json.loads((tmp_path / "metrics.json").read_text())["test_acc"] == m["test_acc"]
    assert (tmp_path / "groupnorm.png").stat().st_size > 10_000


@pytest.mark.parametrize("argv,flag", GROUPNORM_BAD_VALUES)
def test_bad_flags_exit_2(gn, usage_error, argv, flag):
    """Bad values exit 2 naming the flag, before any data is read."""
    assert f"argument {flag}" in usage_error(gn, argv, loader="fashion_mnist")
