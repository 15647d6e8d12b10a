"""02-optimization normalization layers: batchnorm_numpy and layernorm_numpy against torch, and their runs.

Gradients are compared in float64 with random, non-uniform upstream gradients (with an all-ones
upstream the BatchNorm input gradient sums to zero and hides mistakes), by the relative error
max|a - b| / (max|a| + max|b|).
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradcheck import rel_error, torch_vjp

SCRIPTS = ["02-optimization/batchnorm_numpy.py", "02-optimization/layernorm_numpy.py"]


@pytest.fixture(scope="module")
def bn(load_script):
    return load_script("02-optimization/batchnorm_numpy.py")


@pytest.fixture(scope="module")
def ln(load_script):
    return load_script("02-optimization/layernorm_numpy.py")


def random_layer_inputs(shape, seed):
    """x with per-feature offsets and scales, gamma, beta (D,) away from 1 and 0, and a random upstream dout."""
    rng = np.random.default_rng(seed)
    N, D = shape
    x = 3.0 * rng.standard_normal(D) + rng.uniform(0.5, 4.0, D) * rng.standard_normal((N, D))
    gamma, beta = rng.uniform(0.5, 2.0, D) * rng.choice([-1, 1], D), rng.standard_normal(D)
    return x, gamma, beta, rng.standard_normal((N, D))


def assert_matches(out, grads, out_ref, grads_ref):
    assert rel_error(out, out_ref) <= 1e-12
    for name, got, ref in zip(["dx", "dgamma", "dbeta"], grads, grads_ref):
        assert rel_error(got, ref) <= 1e-7, name


# --- BatchNorm ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(2, 1), (2, 5), (16, 7), (64, 33)])
def test_batchnorm_training_backward(bn, shape, seed):
    """Training mode (batch statistics) against F.batch_norm with no running statistics."""
    x, gamma, beta, dout = random_layer_inputs(shape, seed)
    out, cache = bn.batchnorm_forward(x, gamma, beta, None, None, training=True)
    grads = bn.batchnorm_backward(dout, cache)
    out_ref, grads_ref = torch_vjp(
        lambda x, g, b: F.batch_norm(x, None, None, g, b, training=True), (x, gamma, beta), dout
    )
    assert_matches(out, grads, out_ref, grads_ref)
    assert rel_error(grads[0], dout * gamma / cache[2]) > 1e-3  # the mean and variance paths matter


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shape", [(1, 4), (8, 7)])
def test_batchnorm_eval_forward_backward(bn, shape, seed):
    """Evaluation mode: the running statistics are constants; against F.batch_norm(training=False)."""
    x, gamma, beta, dout = random_layer_inputs(shape, seed)
    rng = np.random.default_rng(seed + 10)
    mean, var = rng.standard_normal(shape[1]), rng.uniform(0.5, 3.0, shape[1])
    out, cache = bn.batchnorm_forward(x, gamma, beta, mean.copy(), var.copy(), training=False)
    grads = bn.batchnorm_backward(dout, cache)
    out_ref, grads_ref = torch_vjp(
        lambda x, g, b: F.batch_norm(x, torch.as_tensor(mean), torch.as_tensor(var), g, b, training=False),
        (x, gamma, beta),
        dout,
    )
    assert_matches(out, grads, out_ref, grads_ref)


@pytest.mark.parametrize("momentum", [0.1, 0.3])
def test_batchnorm_running_stats_match_torch(bn, momentum):
    """Training steps on batches of varied sizes: running statistics and eval outputs as nn.BatchNorm1d's."""
    rng = np.random.default_rng(0)
    D = 6
    ref = torch.nn.BatchNorm1d(D, momentum=momentum).double()
    gamma, beta = rng.uniform(0.5, 2.0, D), rng.standard_normal(D)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(gamma))
        ref.bias.copy_(torch.from_numpy(beta))
    running_mean, running_var = np.zeros(D), np.ones(D)
    ref.train()
    for step, N in enumerate([4, 16, 2, 9, 32]):
        x = rng.uniform(-1, 3) + rng.uniform(0.5, 3.0) * rng.standard_normal((N, D))
        out, _ = bn.batchnorm_forward(x, gamma, beta, running_mean, running_var, training=True, momentum=momentum)
        out_ref = ref(torch.from_numpy(x)).detach().numpy()
        assert rel_error(out, out_ref) <= 1e-12, step
        np.testing.assert_allclose(running_mean, ref.running_mean.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(running_var, ref.running_var.numpy(), rtol=1e-12, atol=1e-14)
    assert np.abs(running_mean).max() > 0.1 and np.abs(running_var - 1).max() > 0.1  # the statistics really moved
    ref.eval()
    mean_before, var_before = running_mean.copy(), running_var.copy()
    x = rng.standard_normal((5, D))
    out, _ = bn.batchnorm_forward(x, gamma, beta, running_mean, running_var, training=False)
    assert rel_error(out, ref(torch.from_numpy(x)).detach().numpy()) <= 1e-12
    # evaluation leaves the running statistics exactly as they were before the call (same process, no rounding
    # involved: an update would change them by momentum * (batch statistic - running value), far above 1e-14),
    # and they still equal torch's up to float64 rounding (torch may reduce in another order, e.g. with 2 threads)
    np.testing.assert_array_equal(running_mean, mean_before)
    np.testing.assert_array_equal(running_var, var_before)
    np.testing.assert_allclose(running_mean, ref.running_mean.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(running_var, ref.running_var.numpy(), rtol=1e-12, atol=1e-14)


def test_network_evaluation_leaves_running_statistics_untouched(bn):
    """An evaluation pass of the whole BN network (forward and loss_and_grads, training=False) reads the
    running statistics and writes none of them; a training pass on the same batch does move them."""
    rng = np.random.default_rng(3)
    params, state = bn.init_params([12, 8, 6, 3], rng, batchnorm=True, dtype=np.float64)
    x, y = rng.standard_normal((10, 12)) * 2 + 1, rng.integers(0, 3, 10)
    bn.loss_and_grads(params, state, x, y, training=True)  # move them away from (0, 1) first
    before = {k: v.copy() for k, v in state.items()}
    logits, _ = bn.forward(params, state, x, training=False)
    loss, _, _ = bn.loss_and_grads(params, state, x, y, training=False)
    for k, v in state.items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert np.isfinite(loss) and logits.shape == (10, 3)
    bn.loss_and_grads(params, state, x, y, training=True)
    assert all(np.abs(state[k] - before[k]).max() > 1e-3 for k in state), "a training pass must update them"


def test_batchnorm_rejects_batch_of_one_in_training(bn):
    with pytest.raises(ValueError, match="more than 1"):
        bn.batchnorm_forward(np.ones((1, 3)), np.ones(3), np.zeros(3), None, None, training=True)


# --- LayerNorm ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(1, 5), (2, 3), (16, 7), (64, 33)])
def test_layernorm_backward(ln, shape, seed):
    """Against F.layer_norm over the last axis; N = 1 works, unlike BatchNorm in training."""
    x, gamma, beta, dout = random_layer_inputs(shape, seed)
    out, cache = ln.layernorm_forward(x, gamma, beta)
    grads = ln.layernorm_backward(dout, cache)
    out_ref, grads_ref = torch_vjp(lambda x, g, b: F.layer_norm(x, (shape[1],), g, b), (x, gamma, beta), dout)
    assert_matches(out, grads, out_ref, grads_ref)


def test_layernorm_statistics_are_per_example(ln):
    """An example's output does not depend on the rest of its batch (the point of LN against BN)."""
    x, gamma, beta, _ = random_layer_inputs((8, 5), 0)
    alone, _ = ln.layernorm_forward(x[:1], gamma, beta)
    assert rel_error(ln.layernorm_forward(x, gamma, beta)[0][:1], alone) <= 1e-15


# --- the networks: hand-written backward through Linear-Norm-ReLU against autograd ---------------


@pytest.mark.parametrize("script", ["bn", "ln"])
def test_network_gradients(request, script):
    """loss_and_grads of the normalised MLP (float64) against the same network in torch."""
    mod = request.getfixturevalue(script)
    rng = np.random.default_rng(0)
    sizes, B = [12, 9, 7, 4], 10
    x, y = rng.standard_normal((B, sizes[0])), rng.integers(0, sizes[-1], B)
    if script == "bn":
        params, state = mod.init_params(sizes, rng, True, dtype=np.float64)
    else:
        params = mod.init_params(sizes, rng, True, dtype=np.float64)
    for name in params:  # gamma, beta and biases away from their initial 1 and 0
        params[name] += 0.3 * rng.standard_normal(params[name].shape)
    names = list(params)
    loss, grads, _ = mod.loss_and_grads(params, state, x, y) if script == "bn" else mod.loss_and_grads(params, x, y)

    def torch_loss(*p):
        P, h = dict(zip(names, p)), torch.as_tensor(x)
        for l in range(1, len(sizes)):
            h = h @ P[f"W{l}"] + P[f"b{l}"]
            if l < len(sizes) - 1:
                if script == "bn":
                    h = F.batch_norm(h, None, None, P[f"gamma{l}"], P[f"beta{l}"], training=True)
                else:
                    h = F.layer_norm(h, (h.shape[1],), P[f"gamma{l}"], P[f"beta{l}"])
                h = F.relu(h)
        return F.cross_entropy(h, torch.as_tensor(y))

    loss_ref, grads_ref = torch_vjp(torch_loss, [params[n] for n in names], 1.0)
    assert rel_error(loss, loss_ref) <= 1e-12
    assert set(grads) == set(names) and any(n.startswith("gamma") for n in names)
    for n, g_ref in zip(names, grads_ref):
        if script == "bn" and n.startswith("b") and f"gamma{n[1:]}" in params:
            # a bias before BN is removed with the batch mean: its gradient is 0 up to rounding
            assert np.abs(grads[n]).max() <= 1e-12 and np.abs(g_ref).max() <= 1e-12, n
        else:
            assert rel_error(grads[n], g_ref) <= 1e-7, n


# --- the scripts run end to end ------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_run(load_script, script, tmp_path):
    """`--smoke`: both models train on 2k real images; the normalised one learned, the plain one too."""
    m = load_script(script).main(["--smoke", "--out-dir", str(tmp_path)])
    assert m["final_train_loss"] < m["first_loss"]
    assert m["test_acc"] > 0.6 and m["test_acc_without"] > 0.5  # chance: 0.1
    assert json.loads((tmp_path / "metrics.json").read_text())["test_acc"] == m["test_acc"]
    assert (tmp_path / "learning_curves.png").stat().st_size > 10_000


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_flags_exit_with_usage_error(load_script, monkeypatch, capsys, script):
    """Each bad value exits 2 with argparse's message naming the flag, before any data is read."""
    module = load_script(script)
    monkeypatch.setattr(module, "fashion_mnist", lambda *a, **k: pytest.fail("data loaded before the flag check"))
    bad = [(["--lr", v], "--lr") for v in ("0", "-1", "nan", "inf")]
    bad += [(["--batch-size", "0"], "--batch-size"), (["--batch-size", "-4"], "--batch-size")]
    bad += [(["--epochs", "0"], "--epochs"), (["--hidden", "0"], "--hidden"), (["--seed", "-1"], "--seed")]
    if "batchnorm" in script:
        bad.append((["--batch-size", "1"], "--batch-size"))  # no variance to normalise by in a batch of one
    for argv, flag in bad:
        with pytest.raises(SystemExit) as exc:
            module.main(["--smoke", *argv])
        assert exc.value.code == 2, argv
        assert f"argument {flag}" in capsys.readouterr().err, argv
