"""02-optimization: the from-scratch BatchNorm and LayerNorm modules against torch.nn's, and the two scripts' runs.

Every comparison is in float64 with identical (copied) parameters and a random, non-uniform upstream
gradient: with an all-ones upstream, BatchNorm's input gradient sums to zero and hides mistakes.
"""

import json

import pytest
import torch
from gradcheck import rel_error
from torch import nn

BN_SCRIPT, LN_SCRIPT = "02-optimization/batchnorm_torch.py", "02-optimization/layernorm_torch.py"
TOL = 1e-10


@pytest.fixture(scope="module")
def bn(load_script):
    return load_script(BN_SCRIPT)


@pytest.fixture(scope="module")
def ln(load_script):
    return load_script(LN_SCRIPT)


def randomize_affine(module, gen):
    """Non-trivial weight and bias (the defaults, ones and zeros, can hide mistakes)."""
    with torch.no_grad():
        module.weight.copy_(1 + 0.5 * torch.randn(module.weight.shape, generator=gen, dtype=torch.float64))
        module.bias.copy_(torch.randn(module.bias.shape, generator=gen, dtype=torch.float64))


def output_and_grads(module, x, upstream):
    """module(x) and the gradients of sum(out * upstream) w.r.t. x, weight and bias, by autograd."""
    x = x.clone().requires_grad_(True)
    out = module(x)
    grads = torch.autograd.grad(out, [x, module.weight, module.bias], grad_outputs=upstream)
    return out.detach(), grads


def assert_same_forward_backward(mine, ref, x, gen):
    out, grads = output_and_grads(mine, x, upstream := torch.randn(x.shape, generator=gen, dtype=torch.float64))
    out_ref, grads_ref = output_and_grads(ref, x, upstream)
    assert rel_error(out, out_ref) <= TOL
    for name, g, g_ref in zip(["x", "weight", "bias"], grads, grads_ref):
        assert rel_error(g, g_ref) <= TOL, name


# --- BatchNorm against nn.BatchNorm1d / nn.BatchNorm2d ---------------------------------------

BN_CASES = [
    (nn.BatchNorm1d, (16, 5)),
    (nn.BatchNorm1d, (2, 3)),
    (nn.BatchNorm1d, (8, 4, 6)),
    (nn.BatchNorm2d, (4, 3, 5, 7)),
]


@pytest.mark.parametrize("momentum", [0.1, 0.37])
@pytest.mark.parametrize("ref_cls,shape", BN_CASES)
def test_batchnorm_matches_torch(bn, ref_cls, shape, momentum):
    """Training steps on different batches: outputs, gradients and running statistics; then eval outputs."""
    gen = torch.Generator().manual_seed(0)
    C = shape[1]
    mine = bn.BatchNorm(C, eps=1e-5, momentum=momentum).double()
    ref = ref_cls(C, eps=1e-5, momentum=momentum).double()
    randomize_affine(ref, gen)
    mine.load_state_dict(ref.state_dict())
    for step in range(4):
        # batches with different per-channel means and scales, so the running statistics move
        x = 3 * torch.randn(shape, generator=gen, dtype=torch.float64) + step - 1.5
        assert_same_forward_backward(mine, ref, x, gen)
        assert rel_error(mine.running_mean, ref.running_mean) <= TOL
        assert rel_error(mine.running_var, ref.running_var) <= TOL
        assert mine.num_batches_tracked.item() == ref.num_batches_tracked.item() == step + 1
    assert rel_error(mine.running_var, torch.ones(C, dtype=torch.float64)) > 1e-3  # they really moved

    mine.eval(), ref.eval()
    before = {k: v.clone() for k, v in mine.state_dict().items()}
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    assert_same_forward_backward(mine, ref, x, gen)
    assert rel_error(mine(x[:1]), ref(x[:1])) <= TOL  # eval mode works on one example
    for k, v in mine.state_dict().items():  # eval mode leaves the buffers alone
        assert torch.equal(v, before[k]), k


def test_batchnorm_running_var_is_unbiased(bn):
    """One step from (0, 1): running_mean = m * mean, running_var = (1 - m) + m * UNBIASED variance."""
    x = torch.randn(10, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    layer = bn.BatchNorm(3, momentum=0.25).double()
    out = layer(x)
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)
    assert rel_error(layer.running_mean, 0.25 * mean) <= TOL
    assert rel_error(layer.running_var, 0.75 + 0.25 * var) <= TOL
    # the output itself is normalised with the biased variance: exactly zero mean and unit (biased) variance
    assert out.mean((0, 2, 3)).abs().max() <= 1e-12
    assert (
        rel_error(out.var((0, 2, 3), unbiased=False) * (1 + 1e-5 / x.var((0, 2, 3), unbiased=False)), torch.ones(3))
        <= 1e-9
    )


@pytest.mark.parametrize("ref_cls,shape", [(nn.BatchNorm1d, (6, 4)), (nn.BatchNorm2d, (3, 4, 5, 5))])
def test_batchnorm_state_dict_interchange(bn, ref_cls, shape):
    """A trained torch layer's state_dict loads into ours and ours into torch's, with identical eval outputs."""
    gen = torch.Generator().manual_seed(2)
    mine, ref = bn.BatchNorm(4).double(), ref_cls(4).double()
    for module in (mine, ref):
        randomize_affine(module, gen)
        for _ in range(3):
            module(torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1)
        module.eval()
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    assert set(mine.state_dict()) == set(ref.state_dict())
    for src, dst_cls in [(ref, lambda: bn.BatchNorm(4)), (mine, lambda: ref_cls(4))]:
        dst = dst_cls().double().eval()
        dst.load_state_dict(src.state_dict())  # strict: the same keys, shapes and dtypes
        for k, v in src.state_dict().items():
            assert torch.equal(dst.state_dict()[k], v), k
        assert rel_error(dst(x), src(x)) <= TOL
    assert rel_error(mine(x), ref(x)) > 1e-3  # the two sources differ, so each load really carried state


def test_batchnorm_defaults(bn):
    layer = bn.BatchNorm(5)
    assert torch.equal(layer.weight, torch.ones(5)) and torch.equal(layer.bias, torch.zeros(5))
    assert torch.equal(layer.running_mean, torch.zeros(5)) and torch.equal(layer.running_var, torch.ones(5))
    assert layer.num_batches_tracked.dtype == torch.long and layer.num_batches_tracked.item() == 0
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    assert (layer.eps, layer.momentum) == (1e-5, 0.1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_features=0), "num_features"),
        (dict(num_features=3, eps=0.0), "eps"),
        (dict(num_features=3, eps=-1e-5), "eps"),
        (dict(num_features=3, momentum=-0.1), "momentum"),
        (dict(num_features=3, momentum=1.5), "momentum"),
    ],
)
def test_batchnorm_bad_arguments_raise(bn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bn.BatchNorm(**kwargs)


@pytest.mark.parametrize("shape", [(3,), (4, 3, 2, 2, 2), (4, 5), (4, 2, 6, 6)])
def test_batchnorm_bad_input_raises(bn, shape):
    """Rank 1 or 5, or a channel count other than num_features (3)."""
    with pytest.raises(ValueError, match="BatchNorm"):
        bn.BatchNorm(3)(torch.randn(shape))


def test_batchnorm_one_value_per_channel_raises_in_training(bn):
    layer = bn.BatchNorm(3)
    with pytest.raises(ValueError, match="more than 1 value"):
        layer(torch.randn(1, 3))
    layer.eval()
    assert layer(torch.randn(1, 3)).shape == (1, 3)


# --- LayerNorm against nn.LayerNorm -----------------------------------------------------------

LN_CASES = [(7, (5, 7)), ((7,), (2, 3, 7)), ((4, 6), (3, 4, 6)), ((2, 3, 4), (5, 2, 3, 4)), (3, (1, 3))]


@pytest.mark.parametrize("normalized_shape,x_shape", LN_CASES)
def test_layernorm_matches_torch(ln, normalized_shape, x_shape):
    gen = torch.Generator().manual_seed(3)
    mine, ref = ln.LayerNorm(normalized_shape).double(), nn.LayerNorm(normalized_shape).double()
    randomize_affine(ref, gen)
    mine.load_state_dict(ref.state_dict())
    x = 2 * torch.randn(x_shape, generator=gen, dtype=torch.float64) + 0.5
    assert_same_forward_backward(mine, ref, x, gen)
    mine.eval(), ref.eval()
    assert_same_forward_backward(mine, ref, x, gen)  # the same in eval mode
    assert len(list(mine.buffers())) == 0


def test_layernorm_is_per_example(ln):
    """An example's output does not depend on the rest of its batch (unlike BatchNorm's)."""
    layer = ln.LayerNorm(6).double()
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert rel_error(layer(x)[2:3], layer(x[2:3])) <= 1e-15


@pytest.mark.parametrize("normalized_shape", [0, (), (3, 0), (-2,), 2.5])
def test_layernorm_bad_shape_raises(ln, normalized_shape):
    with pytest.raises(ValueError, match="normalized_shape"):
        ln.LayerNorm(normalized_shape)


@pytest.mark.parametrize("eps", [0.0, -1e-6])
def test_layernorm_bad_eps_raises(ln, eps):
    with pytest.raises(ValueError, match="eps"):
        ln.LayerNorm(4, eps=eps)


@pytest.mark.parametrize("normalized_shape,x_shape", [(4, (3, 5)), ((2, 4), (3, 4, 2)), ((2, 3, 4), (3, 4))])
def test_layernorm_mismatched_input_raises(ln, normalized_shape, x_shape):
    with pytest.raises(ValueError, match="LayerNorm"):
        ln.LayerNorm(normalized_shape)(torch.randn(x_shape))


def test_cnn_evaluation_leaves_batchnorm_buffers_untouched(bn):
    """The script's `evaluate` (eval mode, no_grad) on a trained CNN reads every BatchNorm's running statistics
    and changes none of them (nor num_batches_tracked), and hands the model back in training mode."""
    model = bn.CNN((4, 8), batchnorm=True, bn_momentum=0.3, generator=torch.Generator().manual_seed(0)).double()
    gen = torch.Generator().manual_seed(1)
    X, y = torch.randn(12, 1, 28, 28, generator=gen, dtype=torch.float64) * 2 + 1, torch.arange(12) % 10
    model.train()
    model(X)  # a training pass: the running statistics move away from (0, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss, acc = bn.evaluate(model, X, y, batch_size=5)
    assert model.training and 0 <= acc <= 1 and loss > 0
    buffers = [k for k in before if "running_" in k or "num_batches" in k]
    assert len(buffers) == 6  # two BatchNorm layers, three buffers each
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    model(X)  # and a training pass does change them, so the comparison above could fail
    assert not torch.equal(model.state_dict()[buffers[0]], before[buffers[0]])


# --- the scripts run end to end ----------------------------------------------------------------


@pytest.mark.parametrize("script", [BN_SCRIPT, LN_SCRIPT])
def test_smoke_run(load_script, script, tmp_path):
    """`--smoke`: both nets train on 2k real images for one epoch and learn; metrics and the figure are written."""
    m = load_script(script).main(["--smoke", "--out-dir", str(tmp_path)])
    assert m["final_train_loss"] < m["first_loss"]
    assert m["test_acc"] > 0.6 and m["test_acc_without"] > 0.5  # chance: 0.1
    assert json.loads((tmp_path / "metrics.json").read_text())["test_acc"] == m["test_acc"]
    assert (tmp_path / "learning_curves.png").stat().st_size > 10_000
