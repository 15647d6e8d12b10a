"""01-foundations: the hand-written MLP against autograd, NumPy = JAX = PyTorch, and the three scripts' runs.

Gradients are compared in float64 with random, non-uniform upstream gradients (an all-ones
upstream can hide mistakes), by the relative error max|a - b| / (max|a| + max|b|).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradcheck import rel_error, torch_vjp

SCRIPTS = ["01-foundations/mlp_numpy.py", "01-foundations/mlp_jax.py", "01-foundations/mlp_torch.py"]


@pytest.fixture(scope="module")
def mlp_np(load_script):
    return load_script("01-foundations/mlp_numpy.py")


@pytest.fixture(scope="module")
def mlp_jax(load_script):
    return load_script("01-foundations/mlp_jax.py")


@pytest.fixture(scope="module")
def mlp_torch(load_script):
    return load_script("01-foundations/mlp_torch.py")


def torch_mlp_loss(params, x, y):
    """The MLP's loss from a {"W1", "b1", ...} dict of float64 tensors, with torch's own ops."""
    L = len(params) // 2
    h = x
    for l in range(1, L + 1):
        h = F.linear(h, params[f"W{l}"].T, params[f"b{l}"])
        if l < L:
            h = F.relu(h)
    return F.cross_entropy(h, y), h


# --- every hand-written backward of mlp_numpy against torch autograd -------------------------

SHAPES = [(1, 1, 1), (4, 7, 5), (32, 33, 10)]  # (B, D_in, D_out)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("B,D_in,D_out", SHAPES)
def test_linear_backward(mlp_np, B, D_in, D_out, seed):
    rng = np.random.default_rng(seed)
    x, W, b = rng.standard_normal((B, D_in)), rng.standard_normal((D_in, D_out)), rng.standard_normal(D_out)
    dz = rng.standard_normal((B, D_out))
    z, cache = mlp_np.linear_forward(x, W, b)
    dx, dW, db = mlp_np.linear_backward(dz, cache)
    z_ref, (dx_ref, dW_ref, db_ref) = torch_vjp(lambda x, W, b: F.linear(x, W.T, b), (x, W, b), dz)
    assert rel_error(z, z_ref) <= 1e-12
    for got, ref in [(dx, dx_ref), (dW, dW_ref), (db, db_ref)]:
        assert rel_error(got, ref) <= 1e-7
    assert mlp_np.linear_backward(dz, cache, need_dx=False)[0] is None


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(1, 1), (4, 7), (32, 50)])
def test_relu_backward(mlp_np, shape, seed):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape)
    z.flat[:: max(1, z.size // 3)] = 0.0  # exact zeros: the kink, where torch's gradient is 0
    dh = rng.standard_normal(shape)
    h, cache = mlp_np.relu_forward(z)
    h_ref, (dz_ref,) = torch_vjp(F.relu, (z,), dh)
    assert rel_error(h, h_ref) == 0
    assert rel_error(mlp_np.relu_backward(dh, cache), dz_ref) <= 1e-7


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("B,K,scale", [(1, 2, 1.0), (8, 10, 1.0), (64, 10, 50.0)])
def test_cross_entropy_backward(mlp_np, B, K, scale, seed):
    """Loss and dL/dlogits for a random scalar upstream gradient; scale 50 checks the max-shift."""
    rng = np.random.default_rng(seed)
    logits, y = scale * rng.standard_normal((B, K)), rng.integers(0, K, B)
    dloss = rng.uniform(0.5, 2.0)
    loss, cache = mlp_np.cross_entropy_forward(logits, y)
    dlogits = mlp_np.cross_entropy_backward(dloss, cache)
    loss_ref, (dlogits_ref,) = torch_vjp(lambda z: F.cross_entropy(z, torch.as_tensor(y)), (logits,), dloss)
    assert np.isfinite(loss) and rel_error(loss, loss_ref) <= 1e-12
    assert rel_error(dlogits, dlogits_ref) <= 1e-7


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("sizes,B", [([5, 3], 2), ([12, 9, 4], 6), ([40, 32, 16, 10], 16)])
def test_network_backward(mlp_np, sizes, B, seed):
    """The whole network: backward from a random dL/dlogits, and loss_and_grads of the real loss."""
    rng = np.random.default_rng(seed)
    params = mlp_np.init_params(sizes, rng, dtype=np.float64)
    for name in params:  # non-zero biases, so a bias-gradient mistake cannot hide
        params[name] += 0.1 * rng.standard_normal(params[name].shape)
    x, y = rng.standard_normal((B, sizes[0])), rng.integers(0, sizes[-1], B)
    names = list(params)

    dlogits = rng.standard_normal((B, sizes[-1]))
    logits, caches = mlp_np.forward(params, x)
    grads = mlp_np.backward(dlogits, caches)
    logits_ref, grads_ref = torch_vjp(
        lambda *p: torch_mlp_loss(dict(zip(names, p)), torch.as_tensor(x), torch.as_tensor(y))[1],
        [params[n] for n in names],
        dlogits,
    )
    assert rel_error(logits, logits_ref) <= 1e-12
    assert set(grads) == set(names)
    for n, g_ref in zip(names, grads_ref):
        assert rel_error(grads[n], g_ref) <= 1e-7, n

    loss, grads, _ = mlp_np.loss_and_grads(params, x, y)
    loss_ref, grads_ref = torch_vjp(
        lambda *p: torch_mlp_loss(dict(zip(names, p)), torch.as_tensor(x), torch.as_tensor(y))[0],
        [params[n] for n in names],
        1.0,
    )
    assert rel_error(loss, loss_ref) <= 1e-12
    for n, g_ref in zip(names, grads_ref):
        assert rel_error(grads[n], g_ref) <= 1e-7, n


def test_he_init_scale(mlp_np, mlp_jax, mlp_torch):
    """All three scripts draw W_l from N(0, 2 / D_in) with zero biases (checked on the sample std)."""
    sizes = [784, 256, 128, 10]
    np_params = mlp_np.init_params(sizes, np.random.default_rng(0))
    jax_params = mlp_jax.init_params(jax.random.PRNGKey(0), sizes)
    torch.manual_seed(0)
    torch_model = mlp_torch.MLP(sizes)
    torch_params = {}
    for l, layer in enumerate(torch_model.layers, start=1):
        torch_params[f"W{l}"], torch_params[f"b{l}"] = (
            layer.weight.detach().numpy().T,
            layer.bias.detach().numpy(),
        )
    for params in (np_params, jax_params, torch_params):
        for l, d_in in enumerate(sizes[:-1], start=1):
            W, b = np.asarray(params[f"W{l}"]), np.asarray(params[f"b{l}"])
            assert W.shape == (d_in, sizes[l]) and W.dtype == np.float32
            assert abs(W.std() / np.sqrt(2 / d_in) - 1) < 0.1 and abs(W.mean()) < 0.1 * W.std()
            assert not b.any()


# --- NumPy, JAX and PyTorch agree on the same weights and batch ------------------------------


def test_three_frameworks_agree(mlp_np, mlp_jax, mlp_torch):
    """Same float64 weights and batch: the same loss, gradients (<= 1e-9) and weights after one SGD step."""
    sizes, B, lr = [784, 64, 32, 10], 32, 0.1
    rng = np.random.default_rng(0)
    params = mlp_np.init_params(sizes, rng, dtype=np.float64)
    for name in params:
        params[name] += 0.05 * rng.standard_normal(params[name].shape)
    x, y = rng.standard_normal((B, sizes[0])), rng.integers(0, 10, B)

    # NumPy: the hand-written backward and SGD step.
    loss_np, grads_np, _ = mlp_np.loss_and_grads(params, x, y)
    stepped_np = {k: v.copy() for k, v in params.items()}
    mlp_np.sgd_step(stepped_np, grads_np, lr)

    # JAX: jax.grad of the script's loss, and the script's jitted train_step.
    with jax.enable_x64(True):
        jparams = {k: jnp.asarray(v) for k, v in params.items()}
        (loss_jax, _), grads_jax = jax.value_and_grad(mlp_jax.loss_fn, has_aux=True)(jparams, x, y)
        stepped_jax, step_loss_jax, _ = mlp_jax.train_step(jparams, jnp.asarray(x), jnp.asarray(y), np.arange(B), lr)
        assert stepped_jax["W1"].dtype == jnp.float64
        loss_jax, step_loss_jax = float(loss_jax), float(step_loss_jax)
        grads_jax = {k: np.asarray(v) for k, v in grads_jax.items()}
        stepped_jax = {k: np.asarray(v) for k, v in stepped_jax.items()}

    # PyTorch: the script's nn.Module with the same weights (nn.Linear stores W transposed), autograd, SGD.
    model = mlp_torch.MLP(sizes).double()
    with torch.no_grad():
        for l, layer in enumerate(model.layers, start=1):
            layer.weight.copy_(torch.from_numpy(params[f"W{l}"].T))
            layer.bias.copy_(torch.from_numpy(params[f"b{l}"]))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    loss_torch = F.cross_entropy(model(xt), yt)
    loss_torch.backward()
    grads_torch = {}
    for l, layer in enumerate(model.layers, start=1):
        grads_torch[f"W{l}"], grads_torch[f"b{l}"] = layer.weight.grad.numpy().T, layer.bias.grad.numpy()
    step_loss_torch, _ = mlp_torch.train_step(model, torch.optim.SGD(model.parameters(), lr=lr), xt, yt)
    stepped_torch = {}
    for l, layer in enumerate(model.layers, start=1):
        stepped_torch[f"W{l}"] = layer.weight.detach().numpy().T
        stepped_torch[f"b{l}"] = layer.bias.detach().numpy()

    for other_loss in (loss_jax, step_loss_jax, loss_torch.item(), step_loss_torch.item()):
        assert rel_error(loss_np, other_loss) <= 1e-12
    for name in params:
        assert rel_error(grads_np[name], grads_jax[name]) <= 1e-9, name
        assert rel_error(grads_np[name], grads_torch[name]) <= 1e-9, name
        assert rel_error(stepped_np[name], stepped_jax[name]) <= 1e-12, name
        assert rel_error(stepped_np[name], stepped_torch[name]) <= 1e-12, name
        assert rel_error(stepped_np[name], params[name]) > 1e-6, name  # the step really moved the weights


# --- the scripts run end to end --------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_run(load_script, script, tmp_path):
    """`--smoke`: 5-fold CV and a final run on 2k real images; the metrics say the network learned."""
    m = load_script(script).main(["--smoke", "--out-dir", str(tmp_path)])
    assert m["test_acc"] > 0.6 and m["test_loss"] < np.log(10)  # chance: 0.1 and ln 10
    assert len(m["cv_fold_acc"]) == 5 and m["cv_acc_mean"] > 0.6 and m["cv_acc_std"] < 0.1
    assert m["config"]["n_train"] == 2000 and m["config"]["n_test"] == 1000
    assert json.loads((tmp_path / "metrics.json").read_text())["test_acc"] == m["test_acc"]
    for figure in ("learning_curves.png", "confusion_matrix.png"):
        assert (tmp_path / figure).stat().st_size > 10_000


@pytest.mark.parametrize("script", SCRIPTS)
def test_same_seed_same_numbers(load_script, script, tmp_path):
    """A CPU run repeated with the same seed gives the same numbers; another seed gives others."""
    main = load_script(script).main
    run = lambda seed, out: main(["--smoke", "--no-cv", "--seed", str(seed), "--out-dir", str(tmp_path / out)])
    a, b, c = run(0, "a"), run(0, "b"), run(1, "c")
    assert a["cv_fold_acc"] == [] and a["cv_acc_mean"] is None
    assert (a["test_loss"], a["final_train_loss"]) == (b["test_loss"], b["final_train_loss"])
    assert a["test_loss"] != c["test_loss"]


BAD_VALUES = [
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-4"], "--batch-size"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--hidden", "64", "0"], "--hidden"),
    (["--seed", "-1"], "--seed"),
    (["--folds", "0"], "--folds"),
    (["--folds", "1"], "--folds"),
]


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("argv,flag", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_values_exit_2_naming_the_flag(load_script, script, argv, flag, usage_error):
    """A bad value is a usage error (exit 2) that names its flag, before any data are read."""
    error = usage_error(load_script(script), argv)
    assert flag in error, error


def test_unavailable_device_exits_2_before_loading(mlp_torch, usage_error, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "--device cuda: not available" in usage_error(mlp_torch, ["--device", "cuda"])


def test_epoch_benchmark_runs(load_script, tmp_path):
    """benchmarks/mlp_epoch.py times the scripts' own train_epoch; a tiny run reports sane ratios."""
    out = load_script("benchmarks/mlp_epoch.py").main(
        ["--repeats", "1", "--n-train", "512", "--hidden", "32", "--out", str(tmp_path / "bench.json")]
    )
    assert set(out["results"]) == {"numpy", "jax", "torch"} and out["config"]["n_train"] == 512
    assert all(0 < r["sec_per_epoch"] < 60 for r in out["results"].values())
    assert set(out["ratios"]) == {"numpy/torch", "jax/torch"}
    assert json.loads((tmp_path / "bench.json").read_text())["ratios"] == out["ratios"]
