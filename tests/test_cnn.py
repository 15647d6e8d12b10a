"""04-cnns first CNN: cnn_numpy's hand-written layers against torch, NumPy = JAX = PyTorch, and the three runs.

Gradients are compared in float64 with random, non-uniform upstream gradients, by the relative
error max|a - b| / (max|a| + max|b|) (tests/gradcheck.py).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradcheck import rel_error, torch_vjp

SCRIPTS = ["04-cnns/cnn_numpy.py", "04-cnns/cnn_jax.py", "04-cnns/cnn_torch.py"]
NAMES = ["W1", "b1", "W2", "b2", "W3", "b3", "W4", "b4"]


@pytest.fixture(scope="module")
def cnn_np(load_script):
    return load_script("04-cnns/cnn_numpy.py")


@pytest.fixture(scope="module")
def cnn_jax(load_script):
    return load_script("04-cnns/cnn_jax.py")


@pytest.fixture(scope="module")
def cnn_torch(load_script):
    return load_script("04-cnns/cnn_torch.py")


# --- every hand-written layer of cnn_numpy against torch autograd ---------------------------

CONV_CASES = [  # x shape, W shape, stride, pad
    ((2, 1, 28, 28), (4, 1, 5, 5), 1, 2),  # conv1 of the network
    ((3, 4, 14, 14), (6, 4, 5, 5), 1, 0),  # conv2 of the network
    ((2, 3, 9, 7), (5, 3, 3, 2), (2, 3), (1, 2)),  # non-square kernel, stride and padding
    ((1, 2, 5, 6), (3, 2, 5, 6), 1, 0),  # kernel = input size: one output pixel
    ((2, 2, 8, 8), (2, 2, 3, 3), 3, 1),  # stride larger than the kernel's overlap
]


@pytest.mark.parametrize("x_shape,W_shape,stride,pad", CONV_CASES)
def test_conv2d_forward_backward(cnn_np, x_shape, W_shape, stride, pad):
    rng = np.random.default_rng(sum(x_shape) + sum(W_shape))
    x, W, b = rng.standard_normal(x_shape), rng.standard_normal(W_shape), rng.standard_normal(W_shape[0])
    out, cache = cnn_np.conv2d_forward(x, W, b, stride=stride, pad=pad)
    dout = rng.standard_normal(out.shape)
    dx, dW, db = cnn_np.conv2d_backward(dout, cache)
    out_ref, grads_ref = torch_vjp(lambda x, W, b: F.conv2d(x, W, b, stride=stride, padding=pad), (x, W, b), dout)
    assert out.shape == out_ref.shape and rel_error(out, out_ref) <= 1e-12
    (sh, sw), (ph, pw) = cnn_np.pair(stride, "stride"), cnn_np.pair(pad, "pad")
    size = (cnn_np.output_size(x_shape[2], W_shape[2], sh, ph), cnn_np.output_size(x_shape[3], W_shape[3], sw, pw))
    assert out.shape == (x_shape[0], W_shape[0], *size)
    for name, got, ref in zip(["dx", "dW", "db"], (dx, dW, db), grads_ref):
        assert rel_error(got, ref) <= 1e-7, name
    none, dW2, db2 = cnn_np.conv2d_backward(dout, cache, need_dx=False)
    assert none is None and np.array_equal(dW2, dW) and np.array_equal(db2, db)


POOL_CASES = [  # x shape, kernel, stride, pad
    ((2, 3, 28, 28), 2, None, 0),  # the network's pooling
    ((2, 3, 10, 10), 2, None, 0),
    ((2, 2, 7, 9), 3, 2, 1),  # overlapping windows, padding
    ((1, 2, 6, 5), (2, 3), (1, 2), (1, 0)),  # non-square everything
    ((2, 1, 5, 5), 5, None, 0),  # kernel = input size
]


@pytest.mark.parametrize("x_shape,kernel,stride,pad", POOL_CASES)
def test_maxpool_forward_backward(cnn_np, x_shape, kernel, stride, pad):
    rng = np.random.default_rng(sum(x_shape))
    x = rng.standard_normal(x_shape)
    out, cache = cnn_np.maxpool_forward(x, kernel, stride, pad)
    dout = rng.standard_normal(out.shape)
    dx = cnn_np.maxpool_backward(dout, cache)
    out_ref, (dx_ref,) = torch_vjp(lambda x: F.max_pool2d(x, kernel, stride, pad), (x,), dout)
    assert out.shape == out_ref.shape and rel_error(out, out_ref) == 0
    assert rel_error(dx, dx_ref) <= 1e-7


def test_maxpool_ties_go_to_the_first_maximum(cnn_np):
    """Equal maxima (the zeros after a ReLU): the whole gradient goes to the first, as torch sends it."""
    x = np.maximum(np.random.default_rng(0).standard_normal((2, 3, 8, 8)), 0)
    x[0, 0, :2, :2] = 1.5
    out, cache = cnn_np.maxpool_forward(x, 2)
    dout = np.random.default_rng(1).standard_normal(out.shape)
    _, (dx_ref,) = torch_vjp(lambda x: F.max_pool2d(x, 2), (x,), dout)
    assert rel_error(cnn_np.maxpool_backward(dout, cache), dx_ref) <= 1e-7


@pytest.mark.parametrize("B,D_in,D_out", [(1, 1, 1), (8, 50, 7)])
def test_linear_relu_backward(cnn_np, B, D_in, D_out):
    rng = np.random.default_rng(B)
    x, W, b = rng.standard_normal((B, D_in)), rng.standard_normal((D_in, D_out)), rng.standard_normal(D_out)
    z, cache = cnn_np.linear_forward(x, W, b)
    dz = rng.standard_normal(z.shape)
    z_ref, grads_ref = torch_vjp(lambda x, W, b: F.linear(x, W.T, b), (x, W, b), dz)
    assert rel_error(z, z_ref) <= 1e-12
    for got, ref in zip(cnn_np.linear_backward(dz, cache), grads_ref):
        assert rel_error(got, ref) <= 1e-7
    z[:, ::2] = 0.0  # exact zeros: the kink, where torch's gradient is 0
    h, cache = cnn_np.relu_forward(z)
    h_ref, (dh_ref,) = torch_vjp(F.relu, (z,), dz)
    assert rel_error(h, h_ref) == 0 and rel_error(cnn_np.relu_backward(dz, cache), dh_ref) <= 1e-7


@pytest.mark.parametrize("B,scale", [(1, 1.0), (16, 1.0), (16, 60.0)])
def test_cross_entropy_backward(cnn_np, B, scale):
    rng = np.random.default_rng(B)
    logits, y, dloss = scale * rng.standard_normal((B, 10)), rng.integers(0, 10, B), rng.uniform(0.5, 2.0)
    loss, cache = cnn_np.cross_entropy_forward(logits, y)
    loss_ref, (dlogits_ref,) = torch_vjp(lambda z: F.cross_entropy(z, torch.as_tensor(y)), (logits,), dloss)
    assert np.isfinite(loss) and rel_error(loss, loss_ref) <= 1e-12
    assert rel_error(cnn_np.cross_entropy_backward(dloss, cache), dlogits_ref) <= 1e-7


def test_invalid_geometry_raises(cnn_np):
    x, W, b = np.zeros((1, 2, 4, 4)), np.zeros((3, 2, 5, 5)), np.zeros(3)
    with pytest.raises(ValueError, match="larger than the padded input"):
        cnn_np.conv2d_forward(x, W, b)  # 5x5 kernel on a 4x4 input
    cnn_np.conv2d_forward(x, W, b, pad=1)  # fits once padded
    with pytest.raises(ValueError, match="stride must be at least 1"):
        cnn_np.conv2d_forward(x, W, b, stride=0, pad=1)
    with pytest.raises(ValueError, match="pad"):
        cnn_np.conv2d_forward(x, W, b, pad=-1)
    with pytest.raises(ValueError, match="x must be"):
        cnn_np.conv2d_forward(np.zeros((1, 3, 8, 8)), W, b)  # 3 channels for a 2-channel kernel
    with pytest.raises(ValueError, match="larger than the padded input"):
        cnn_np.maxpool_forward(x, 5)
    with pytest.raises(ValueError, match="stride must be at least 1"):
        cnn_np.maxpool_forward(x, 2, stride=0)
    with pytest.raises(ValueError, match="at most half the kernel"):
        cnn_np.maxpool_forward(x, 2, pad=2)


# --- the whole network: NumPy = PyTorch = JAX on the same float64 weights and batch ----------


def random_params(cnn_np, seed, channels=(3, 5), hidden=(12,)):
    """He-initialised float64 parameters with non-zero biases, so a bias-gradient mistake cannot hide."""
    rng = np.random.default_rng(seed)
    params = cnn_np.init_params(rng, channels, hidden, dtype=np.float64)
    for name in params:
        params[name] += 0.1 * rng.standard_normal(params[name].shape)
    return params


def torch_model(cnn_torch, params):
    """cnn_torch.CNN in float64 holding the NumPy weights (nn.Linear stores W3, W4, ... transposed)."""
    c1, c2 = params["W1"].shape[0], params["W2"].shape[0]
    hidden = [params[f"W{l}"].shape[1] for l in range(3, len(params) // 2)]
    model = cnn_torch.CNN((c1, c2), hidden).double()
    with torch.no_grad():
        for l, layer in enumerate([model.conv1, model.conv2, *model.fc], start=1):
            W = params[f"W{l}"]
            layer.weight.copy_(torch.from_numpy(W if W.ndim == 4 else W.T))
            layer.bias.copy_(torch.from_numpy(params[f"b{l}"]))
    return model


def from_torch(model, grad=False):
    """The model's weights (or, with grad, their .grad) as {"W1": ..., ...} in the NumPy layout."""
    out = {}
    for l, layer in enumerate([model.conv1, model.conv2, *model.fc], start=1):
        W, b = (layer.weight.grad, layer.bias.grad) if grad else (layer.weight, layer.bias)
        W = W.detach().numpy().copy()
        out[f"W{l}"], out[f"b{l}"] = (W if W.ndim == 4 else W.T), b.detach().numpy().copy()
    return out


@pytest.mark.parametrize("hidden", [(12,), (9, 7, 6)])
def test_numpy_network_equals_torch(cnn_np, cnn_torch, hidden):
    """Loss and every parameter's gradient of the hand-written network = autograd's on cnn_torch.CNN, with one
    hidden fully connected layer (the default network) and with three."""
    params = random_params(cnn_np, 0, hidden=hidden)
    names = [f"{w}{l}" for l in range(1, len(hidden) + 4) for w in "Wb"]
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((24, 1, 28, 28)), rng.integers(0, 10, 24)
    model = torch_model(cnn_torch, params)

    # backward from a random dL/dlogits, then the real loss
    logits, caches = cnn_np.forward(params, x)
    dlogits = rng.standard_normal(logits.shape)
    grads = cnn_np.backward(dlogits, caches)
    logits_ref = model(torch.from_numpy(x))
    logits_ref.backward(torch.from_numpy(dlogits))
    assert rel_error(logits, logits_ref) <= 1e-12
    ref = from_torch(model, grad=True)
    assert list(grads) == list(params) == list(ref) == names
    for name in names:
        assert rel_error(grads[name], ref[name]) <= 1e-7, name

    model.zero_grad()
    loss, grads = cnn_np.loss_and_grads(params, x, y)
    loss_ref = F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
    loss_ref.backward()
    assert rel_error(loss, loss_ref) <= 1e-12
    ref = from_torch(model, grad=True)
    for name in names:
        assert np.abs(grads[name]).max() > 0, name
        assert rel_error(grads[name], ref[name]) <= 1e-7, name


@pytest.mark.parametrize("hidden", [(12,), (9, 7)])
def test_jax_network_equals_torch(cnn_np, cnn_jax, cnn_torch, hidden):
    """cnn_jax's loss and jax.grad gradients = torch's, in float64 on the same weights and batch."""
    params = random_params(cnn_np, 2, hidden=hidden)
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((24, 1, 28, 28)), rng.integers(0, 10, 24)
    model = torch_model(cnn_torch, params)
    loss_ref = F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
    loss_ref.backward()
    ref = from_torch(model, grad=True)
    with jax.enable_x64(True):
        jparams = {k: jnp.asarray(v) for k, v in params.items()}
        loss, grads = jax.value_and_grad(cnn_jax.loss_fn)(jparams, jnp.asarray(x), jnp.asarray(y))
        assert grads["W1"].dtype == jnp.float64
        loss, grads = float(loss), {k: np.asarray(v) for k, v in grads.items()}
    assert rel_error(loss, loss_ref) <= 1e-12
    assert sorted(grads) == sorted(ref)  # a JAX pytree keeps its keys sorted
    for name in ref:
        assert rel_error(grads[name], ref[name]) <= 1e-7, name


def test_he_init(cnn_np, cnn_jax, cnn_torch):
    """All three draw W ~ N(0, 2 / fan_in) (fan_in = C*kh*kw or D_in) with zero biases, in the same shapes."""
    channels, hidden = (16, 32), [128]
    np_params = cnn_np.init_params(np.random.default_rng(0), channels, hidden)
    jax_params = cnn_jax.init_params(jax.random.PRNGKey(0), channels, hidden)
    torch.manual_seed(0)
    model = cnn_torch.CNN(channels, hidden)
    torch_params = from_torch(model)
    shapes = {"W1": (16, 1, 5, 5), "W2": (32, 16, 5, 5), "W3": (800, 128), "W4": (128, 10)}
    for params in (np_params, jax_params, torch_params):
        assert list(params) == NAMES
        for l, (name, shape) in enumerate(shapes.items(), start=1):
            W, b = np.asarray(params[name]), np.asarray(params[f"b{l}"])
            fan_in = np.prod(shape[1:]) if len(shape) == 4 else shape[0]
            assert W.shape == shape and W.dtype == np.float32 and b.shape == (W.shape[0 if len(shape) == 4 else 1],)
            assert abs(W.std() / np.sqrt(2 / fan_in) - 1) < 0.15 and abs(W.mean()) < 0.15 * W.std()
            assert not b.any()


def test_adam_trajectories_equal_torch(cnn_np, cnn_jax):
    """Six steps of the hand-written Adam (NumPy in place, JAX pure) = torch.optim.Adam, float64."""
    rng = np.random.default_rng(0)
    init = {"W": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
    grads = [{k: rng.standard_normal(v.shape) * rng.uniform(0.01, 10) for k, v in init.items()} for _ in range(6)]
    lr = 0.05

    np_params = {k: v.copy() for k, v in init.items()}
    state = cnn_np.adam_init(np_params)
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    opt = torch.optim.Adam(tparams.values(), lr=lr)
    with jax.enable_x64(True):
        jparams = {k: jnp.asarray(v) for k, v in init.items()}
        jstate = cnn_jax.adam_init(jparams)
        for g in grads:
            cnn_np.adam_step(np_params, g, state, lr)
            jparams, jstate = cnn_jax.adam_step(jparams, {k: jnp.asarray(v) for k, v in g.items()}, jstate, lr)
            for k, p in tparams.items():
                p.grad = torch.from_numpy(g[k])
            opt.step()
            for k in init:
                assert rel_error(np_params[k], tparams[k]) <= 1e-10, k
                assert rel_error(np.asarray(jparams[k]), tparams[k]) <= 1e-10, k
    assert all(rel_error(np_params[k], init[k]) > 1e-3 for k in init)  # the steps really moved


def test_train_epoch_same_trajectory(cnn_np, cnn_jax, cnn_torch):
    """One epoch of each script's train_epoch from the same float64 weights, same seed: same loss and weights.

    This checks that the three take the same minibatches in the same order and apply the same Adam.
    """
    params = random_params(cnn_np, 4)
    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((40, 1, 28, 28)), rng.integers(0, 10, 40)
    model = torch_model(cnn_torch, params)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_torch = cnn_torch.train_epoch(
        model, opt, torch.from_numpy(X), torch.from_numpy(y), 16, np.random.default_rng(7)
    )
    after_torch = from_torch(model)
    np_params = {k: v.copy() for k, v in params.items()}
    loss_np = cnn_np.train_epoch(np_params, cnn_np.adam_init(np_params), X, y, 16, 1e-3, np.random.default_rng(7))
    with jax.enable_x64(True):
        jparams = {k: jnp.asarray(v) for k, v in params.items()}
        jparams, _, loss_jax = cnn_jax.train_epoch(
            jparams, cnn_jax.adam_init(jparams), jnp.asarray(X), jnp.asarray(y), 16, 1e-3, np.random.default_rng(7)
        )
        after_jax = {k: np.asarray(v) for k, v in jparams.items()}
    assert rel_error(loss_np, loss_torch) <= 1e-12 and rel_error(loss_jax, loss_torch) <= 1e-12
    for name in NAMES:
        assert rel_error(np_params[name], after_torch[name]) <= 1e-9, name
        assert rel_error(after_jax[name], after_torch[name]) <= 1e-9, name
        assert rel_error(np_params[name], params[name]) > 1e-6, name


# --- the scripts run end to end --------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_run(load_script, script, tmp_path):
    """`--smoke`: one epoch on 2k real images; the test loss fell well below the untrained network's."""
    m = load_script(script).main(["--smoke", "--out-dir", str(tmp_path)])
    assert m["config"]["n_train"] == 2000 and m["config"]["n_test"] == 1000
    assert m["test_loss"] < 0.6 * m["init_test_loss"] and m["test_acc"] > 0.6  # chance: 0.1
    assert m["final_train_loss"] < np.log(10)
    assert json.loads((tmp_path / "metrics.json").read_text())["test_acc"] == m["test_acc"]
    for figure in ("learning_curves.png", "filters.png", "feature_maps.png", "confusion_matrix.png"):
        assert (tmp_path / figure).stat().st_size > 10_000, figure


@pytest.mark.parametrize("script", SCRIPTS)
def test_cosine_lr_values(load_script, script):
    """lr_e = lr (1 + cos(pi (e - 1) / E)) / 2 for epochs e = 1..E: the peak in the first epoch, half the
    peak halfway through the schedule, 0 where it ends (e - 1 = E), symmetric about the middle."""
    cosine_lr = load_script(script).cosine_lr
    assert cosine_lr(0.3, 1, 10) == 0.3  # the start of the schedule: cos 0 = 1
    assert cosine_lr(2e-3, 1, 1) == 2e-3  # a one-epoch run trains at the peak
    assert cosine_lr(0.3, 6, 10) == pytest.approx(0.15, rel=1e-12)  # the middle, (e - 1) / E = 1/2: cos = 0
    assert cosine_lr(0.3, 3, 4) == pytest.approx(0.15, rel=1e-12)
    assert cosine_lr(0.3, 11, 10) == pytest.approx(0.0, abs=1e-15)  # the end: cos pi = -1
    assert cosine_lr(0.3, 10, 10) == pytest.approx(0.3 * (1 + np.cos(0.9 * np.pi)) / 2, rel=1e-12)  # last epoch
    rates = [cosine_lr(0.3, e, 10) for e in range(1, 12)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert all(rates[i] + rates[10 - i] == pytest.approx(0.3, rel=1e-12) for i in range(11))


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_flags_exit_with_usage_error(load_script, script, capsys):
    """A bad value exits 2 in argparse, and the message names the flag."""
    main = load_script(script).main
    for argv in (
        ["--lr", "0"],
        ["--lr", "nan"],
        ["--batch-size", "-4"],
        ["--channels", "4", "0"],
        ["--hidden", "0"],
        ["--hidden", "32", "-1"],
        ["--hidden"],
        ["--epochs", "0"],
        ["--seed", "-1"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(["--smoke", *argv])
        assert exc.value.code == 2, argv
        assert f"argument {argv[0]}" in capsys.readouterr().err, argv


def test_same_seed_same_numbers(cnn_np, tmp_path):
    """A cnn_numpy run repeated with the same seed gives the same numbers; another seed gives others."""
    main = cnn_np.main
    run = lambda seed, out: main(["--smoke", "--seed", str(seed), "--out-dir", str(tmp_path / out)])
    a, b, c = run(0, "a"), run(0, "b"), run(1, "c")
    assert (a["test_loss"], a["final_train_loss"]) == (b["test_loss"], b["final_train_loss"])
    assert a["test_loss"] != c["test_loss"]


def test_smoke_run_with_two_hidden_layers(cnn_torch, tmp_path):
    """`--hidden 32 16`: two fully connected hidden layers (c2*25 -> 32 -> 16 -> 10) are built and trained."""
    m = cnn_torch.main(["--smoke", "--hidden", "32", "16", "--out-dir", str(tmp_path)])
    assert m["config"]["hidden"] == [32, 16]
    conv = (8 * 25 + 8) + (16 * 8 * 25 + 16)  # --smoke's channels 8 16
    assert m["n_params"] == conv + (400 * 32 + 32) + (32 * 16 + 16) + (16 * 10 + 10)
    assert m["test_loss"] < 0.6 * m["init_test_loss"] and m["test_acc"] > 0.6
