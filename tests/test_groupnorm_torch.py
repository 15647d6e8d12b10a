"""02-optimization/groupnorm_torch.py: the from-scratch GroupNorm against torch.nn.GroupNorm, LayerNorm and
InstanceNorm, its batch independence and argument checks, and the script's smoke run.

Every comparison is in float64 with identical (copied) parameters and a random, non-uniform upstream gradient.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import GROUPNORM_BAD_VALUES
from gradcheck import rel_error
from torch import nn

SCRIPT = "02-optimization/groupnorm_torch.py"
TOL = 1e-10


@pytest.fixture(scope="module")
def gn(load_script):
    return load_script(SCRIPT)


def randn(shape, gen):
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def random_gn(gn, groups, C, gen):
    """Our GroupNorm in float64 with non-trivial weight and bias (ones and zeros can hide mistakes)."""
    layer = gn.GroupNorm(groups, C).double()
    with torch.no_grad():
        layer.weight.copy_(1 + 0.5 * randn(C, gen))
        layer.bias.copy_(randn(C, gen))
    return layer


def output_and_grads(fn, x, params, upstream):
    """fn(x) and the gradients of sum(fn(x) * upstream) w.r.t. x and params, by autograd."""
    x = x.clone().requires_grad_(True)
    out = fn(x)
    return out.detach(), torch.autograd.grad(out, [x, *params], grad_outputs=upstream)


def assert_same(fn, params, fn_ref, params_ref, x, gen):
    upstream = randn(x.shape, gen)
    out, grads = output_and_grads(fn, x, params, upstream)
    out_ref, grads_ref = output_and_grads(fn_ref, x, params_ref, upstream)
    assert rel_error(out, out_ref) <= TOL
    for i, (g, g_ref) in enumerate(zip(grads, grads_ref)):
        assert rel_error(g, g_ref) <= TOL, i


CASES = [  # (shape, groups)
    ((4, 6, 5, 7), 3),
    ((2, 8, 4, 4), 1),
    ((3, 8, 3, 5), 8),
    ((5, 12, 6, 6), 4),
    ((1, 4, 2, 3), 2),
    ((3, 6, 10), 2),  # (N, C, L)
    ((4, 6), 3),  # (N, C)
]


@pytest.mark.parametrize("shape,groups", CASES)
def test_groupnorm_matches_torch(gn, shape, groups):
    """Outputs and input/weight/bias gradients equal nn.GroupNorm's after loading its state_dict, train and eval."""
    gen = torch.Generator().manual_seed(0)
    C = shape[1]
    ref = nn.GroupNorm(groups, C).double()
    with torch.no_grad():
        ref.weight.copy_(1 + 0.5 * randn(C, gen))
        ref.bias.copy_(randn(C, gen))
    mine = gn.GroupNorm(groups, C).double()
    mine.load_state_dict(ref.state_dict())  # strict: the same keys and shapes
    x = 2 * randn(shape, gen) + 0.7
    for mode in (True, False):
        mine.train(mode), ref.train(mode)
        assert_same(mine, [mine.weight, mine.bias], ref, [ref.weight, ref.bias], x, gen)
    assert len(list(mine.buffers())) == 0
    back = nn.GroupNorm(groups, C).double()
    back.load_state_dict(mine.state_dict())
    assert rel_error(back(x), ref(x)) <= TOL


def test_one_group_is_layernorm(gn):
    """G = 1: LayerNorm over (C, H, W), with GroupNorm's per-channel affine broadcast to a (C, H, W) affine."""
    gen = torch.Generator().manual_seed(1)
    N, C, H, W = 3, 5, 4, 6
    mine = random_gn(gn, 1, C, gen)
    x = randn((N, C, H, W), gen) * 3 - 1

    def ln(x):
        w = mine.weight.view(C, 1, 1).expand(C, H, W)
        b = mine.bias.view(C, 1, 1).expand(C, H, W)
        return F.layer_norm(x, (C, H, W), w, b, eps=mine.eps)

    assert_same(mine, [mine.weight, mine.bias], ln, [mine.weight, mine.bias], x, gen)
    plain = gn.GroupNorm(1, C).double()  # identity affine: exactly layer_norm without affine
    assert rel_error(plain(x), F.layer_norm(x, (C, H, W), eps=plain.eps)) <= TOL


def test_c_groups_is_instancenorm(gn):
    """G = C: each channel of each example normalised on its own, as F.instance_norm with the same affine."""
    gen = torch.Generator().manual_seed(2)
    N, C = 4, 6
    mine = random_gn(gn, C, C, gen)
    x = randn((N, C, 5, 5), gen) * 2 + 0.3

    def inorm(x):
        return F.instance_norm(x, weight=mine.weight, bias=mine.bias, eps=mine.eps)

    assert_same(mine, [mine.weight, mine.bias], inorm, [mine.weight, mine.bias], x, gen)


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_output_independent_of_batch(gn, groups):
    """An example's output is the same alone, in its batch, or with the other examples replaced."""
    gen = torch.Generator().manual_seed(3)
    layer = random_gn(gn, groups, 6, gen)
    x = randn((8, 6, 4, 4), gen)
    y = layer(x)
    other = torch.cat([x[2:3], 10 * randn((7, 6, 4, 4), gen) + 5])
    assert rel_error(y[2:3], layer(x[2:3])) <= 1e-15
    assert rel_error(y[2:3], layer(other)[:1]) <= 1e-15


def test_groups_are_normalised(gn):
    """With identity affine, every (example, group) block has mean 0 and biased variance sigma2 / (sigma2 + eps)."""
    x = 4 * randn((3, 6, 5, 5), torch.Generator().manual_seed(4)) + 2
    y = gn.GroupNorm(3, 6).double()(x).reshape(3, 3, -1)
    var = x.reshape(3, 3, -1).var(dim=2, unbiased=False)
    assert y.mean(dim=2).abs().max() <= 1e-12
    assert rel_error(y.var(dim=2, unbiased=False), var / (var + 1e-5)) <= 1e-12
    assert rel_error(y.reshape(3, 3, -1)[:, 0], y.reshape(3, 3, -1)[:, 1]) > 0.1  # groups differ


def test_defaults(gn):
    layer = gn.GroupNorm(2, 4)
    assert torch.equal(layer.weight, torch.ones(4)) and torch.equal(layer.bias, torch.zeros(4))
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    assert (layer.num_groups, layer.num_channels, layer.eps) == (2, 4, 1e-5)
    assert set(layer.state_dict()) == set(nn.GroupNorm(2, 4).state_dict())


@pytest.mark.parametrize(
    "args,match",
    [
        ((3, 8), "divide"),
        ((5, 4), "divide"),
        ((0, 4), "num_groups"),
        ((2, 0), "num_channels"),
        ((2.0, 4), "num_groups"),
    ],
)
def test_bad_arguments_raise(gn, args, match):
    with pytest.raises(ValueError, match=match):
        gn.GroupNorm(*args)


def test_bad_eps_raises(gn):
    with pytest.raises(ValueError, match="eps"):
        gn.GroupNorm(2, 4, eps=0.0)


@pytest.mark.parametrize("shape", [(2, 6, 4, 4), (2, 3), (4,)])
def test_wrong_channels_raise(gn, shape):
    with pytest.raises(ValueError, match="GroupNorm"):
        gn.GroupNorm(2, 4)(torch.randn(shape))


def test_cnn_output_independent_of_batch(gn):
    """The GroupNorm CNN (conv and fully connected norms) gives an example the same logits alone as in a batch,
    in training mode; with BatchNorm the logits change with the batch mates."""
    x = torch.randn(5, 1, 28, 28, dtype=torch.float64)
    model = gn.CNN((8, 16), "group", 4, torch.Generator().manual_seed(0), hidden=16).double().train()
    assert rel_error(model(x)[3:4].detach(), model(x[3:4]).detach()) <= 1e-12
    bn = gn.CNN((8, 16), "batch", 4, torch.Generator().manual_seed(0), hidden=16).double().train()
    assert rel_error(bn(x[3:5])[0].detach(), bn(x[2:5])[1].detach()) > 1e-3


def test_smoke_run(gn, tmp_path):
    """`--smoke`: 2-fold CV, a final model and the batch-size study on small real subsets; metrics and figure."""
    m = gn.main(["--smoke", "--out-dir", str(tmp_path)])
    assert m["final_train_loss"] < m["first_loss"]
    assert m["test_acc"] > 0.5  # chance: 0.1
    assert len(m["cv_fold_acc"]) == 2 and all(0.3 < a <= 1 for a in m["cv_fold_acc"])
    assert all(0 <= m[k] <= 1 for k in ("gn_acc_bs2", "gn_acc_bs64", "bn_acc_bs2", "bn_acc_bs64"))
    assert json.loads((tmp_path / "metrics.json").read_text())["test_acc"] == m["test_acc"]
    assert (tmp_path / "groupnorm.png").stat().st_size > 10_000


@pytest.mark.parametrize("argv,flag", GROUPNORM_BAD_VALUES)
def test_bad_flags_exit_2(gn, usage_error, argv, flag):
    """Bad values exit 2 naming the flag, before any data is read."""
    assert f"argument {flag}" in usage_error(gn, argv, loader="fashion_mnist")


def test_unavailable_device_exits_2_before_loading_data(gn, monkeypatch, capsys):
    missing = "mps" if torch.cuda.is_available() else "cuda"  # no machine has both
    monkeypatch.setattr(gn, "fashion_mnist", lambda *a, **k: pytest.fail("data loaded before the device check"))
    with pytest.raises(SystemExit) as exc:
        gn.main(["--device", missing, "--smoke"])
    assert exc.value.code == 2 and f"--device {missing}: not available" in capsys.readouterr().err
