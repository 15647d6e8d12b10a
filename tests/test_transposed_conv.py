"""04-cnns/transposed_conv_numpy.py: transposed convolution, forward and backward, against torch in float64.

Shapes come from hypothesis: batch, input and output channels, non-square inputs and kernels,
strides and paddings as ints or (h, w) pairs, down to 1x1 outputs. Two tests check the claim
the script is built on: the layer's forward is the input gradient of a convolution, and its input
gradient is a convolution.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradcheck import rel_error, torch_vjp
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import as_arg

SCRIPT = "04-cnns/transposed_conv_numpy.py"


@pytest.fixture(scope="module")
def tconv(load_script):
    return load_script(SCRIPT)


@st.composite
def geometry(draw):
    """Kernel, stride and padding per axis, and an input size whose output (H - 1) s - 2p + k is at least 1."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H, W = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    ph = draw(st.integers(0, ((H - 1) * sh + kh - 1) // 2))  # down to a 1-pixel output
    pw = draw(st.integers(0, ((W - 1) * sw + kw - 1) // 2))
    return (H, W), (kh, kw), (sh, sw), (ph, pw)


@settings(max_examples=80, deadline=None)
@given(
    geom=geometry(),
    N=st.integers(1, 2),
    C_in=st.integers(1, 3),
    C_out=st.integers(1, 3),
    use_int=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_torch(tconv, geom, N, C_in, C_out, use_int, seed):
    """Forward, dx, dW and db against F.conv_transpose2d, with a random upstream gradient."""
    (H, W), (kh, kw), stride, pad = geom
    rng = np.random.default_rng(seed)
    x, Wt = rng.standard_normal((N, C_in, H, W)), rng.standard_normal((C_in, C_out, kh, kw))
    b = rng.standard_normal(C_out)
    out, cache = tconv.conv_transpose2d_forward(x, Wt, b, as_arg(*stride, use_int), as_arg(*pad, use_int))
    assert out.shape[2:] == tuple(tconv.output_size(n, *a) for n, a in zip((H, W), zip((kh, kw), stride, pad)))
    dout = rng.standard_normal(out.shape)
    out_ref, grads_ref = torch_vjp(lambda x, w, b: F.conv_transpose2d(x, w, b, stride, pad), (x, Wt, b), dout)
    assert out.shape == out_ref.shape  # the output-size formula, against torch
    assert rel_error(out, out_ref) <= 1e-12
    for name, got, ref in zip(["dx", "dW", "db"], tconv.conv_transpose2d_backward(dout, cache), grads_ref):
        assert rel_error(got, ref) <= 1e-7, name


@settings(max_examples=40, deadline=None)
@given(geom=geometry(), n_filters=st.integers(1, 3), C=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_forward_is_the_input_gradient_of_conv2d(tconv, geom, n_filters, C, seed):
    """y = conv2d(x, W, s, p) maps H to Ho; when (H + 2p - k) is divisible by s, dL/dx = conv_transpose2d(dy, W).

    The transposed convolution reads W (F, C, kh, kw) of the convolution as (C_in = F, C_out = C, kh, kw).
    """
    (Ho, Wo), (kh, kw), stride, pad = geom  # the convolution's output size plays the transposed conv's input
    H, W = tconv.output_size(Ho, kh, stride[0], pad[0]), tconv.output_size(Wo, kw, stride[1], pad[1])
    rng = np.random.default_rng(seed)
    x, Wc, dy = (
        rng.standard_normal((2, C, H, W)),
        rng.standard_normal((n_filters, C, kh, kw)),
        rng.standard_normal((2, n_filters, Ho, Wo)),
    )
    _, (dx_ref,) = torch_vjp(lambda t: F.conv2d(t, torch.from_numpy(Wc), None, stride, pad), (x,), dy)
    dx, _ = tconv.conv_transpose2d_forward(dy, Wc, np.zeros(C), stride, pad)
    assert rel_error(dx, dx_ref) <= 1e-12


@settings(max_examples=40, deadline=None)
@given(geom=geometry(), C_in=st.integers(1, 3), C_out=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_input_gradient_is_a_convolution(tconv, geom, C_in, C_out, seed):
    """The backward's dx equals F.conv2d(dout, W, stride, pad), W read as C_in filters over C_out channels."""
    (H, W), (kh, kw), stride, pad = geom
    rng = np.random.default_rng(seed)
    x, Wt = rng.standard_normal((2, C_in, H, W)), rng.standard_normal((C_in, C_out, kh, kw))
    out, cache = tconv.conv_transpose2d_forward(x, Wt, np.zeros(C_out), stride, pad)
    dout = rng.standard_normal(out.shape)
    dx, _, _ = tconv.conv_transpose2d_backward(dout, cache)
    conv = F.conv2d(torch.from_numpy(dout), torch.from_numpy(Wt), None, stride, pad).numpy()
    assert rel_error(dx, conv) <= 1e-12


def test_bilinear_kernel_is_bilinear_interpolation(tconv):
    """k = 4, s = 2, p = 1 with the bilinear kernel equals F.interpolate(bilinear, align_corners=False) away from
    the border, on a random image, per channel."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 6, 5))
    out, _ = tconv.conv_transpose2d_forward(x, tconv.per_channel(tconv.bilinear_kernel(4), 3), np.zeros(3), 2, 1)
    ref = F.interpolate(torch.from_numpy(x), scale_factor=2, mode="bilinear", align_corners=False).numpy()
    assert out.shape == ref.shape == (1, 3, 12, 10)
    assert rel_error(out[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1]) <= 1e-12


@pytest.mark.parametrize(
    "x_shape, W_shape, kwargs, message",
    [
        ((1, 2, 4, 4), (2, 3, 3, 3), dict(stride=0), "stride must be at least 1"),
        ((1, 2, 4, 4), (2, 3, 3, 3), dict(stride=(2, 0)), "stride must be at least 1"),
        ((1, 2, 4, 4), (2, 3, 3, 3), dict(pad=-1), "pad must be non-negative"),
        ((1, 2, 2, 2), (2, 3, 2, 2), dict(pad=(0, 2)), "crops everything"),
        ((1, 2, 4, 4), (3, 2, 3, 3), dict(), "x has 2 channels but W expects C_in = 3"),
        ((2, 4, 4), (2, 3, 3, 3), dict(), r"x must be \(N, C_in, H, W\)"),
        ((1, 2, 4, 4), (2, 3, 3, 3), dict(stride=1.5), "int or a pair of ints"),
    ],
)
def test_invalid_arguments_raise(tconv, x_shape, W_shape, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tconv.conv_transpose2d_forward(np.zeros(x_shape), np.zeros(W_shape), np.zeros(W_shape[1]), **kwargs)


def test_bias_of_the_wrong_shape_raises(tconv):
    with pytest.raises(ValueError, match=r"b must have shape \(C_out,\) = \(3,\)"):
        tconv.conv_transpose2d_forward(np.zeros((1, 2, 4, 4)), np.zeros((2, 3, 3, 3)), np.zeros(2))


def test_smoke_run(tconv, tmp_path):
    """`--smoke`: 28x28 upsampled to 56x56 (bilinear) and 55x55 (k=3); the constant channel shows the checkerboard."""
    m = tconv.main(["--smoke", "--out-dir", str(tmp_path)])
    assert m["output_shapes"] == {"(a) bilinear k=4 s=2 p=1": [56, 56], "(b) ones k=3 s=2 p=1": [55, 55]}
    assert m["constant_input_interior"]["(a) bilinear k=4 s=2 p=1"] == {"min": 1.0, "max": 1.0}  # even overlap
    assert m["constant_input_interior"]["(b) ones k=3 s=2 p=1"] == {"min": 1.0, "max": 4.0}  # 1, 2 or 4 stamps
    assert all(err < 1e-6 for err in m["gradcheck_rel_error"].values())
    assert m["gradcheck_rel_error"]["adjoint"] < 1e-12
    assert json.loads((tmp_path / "metrics.json").read_text())["output_shapes"] == m["output_shapes"]
    assert (tmp_path / "transposed_conv.png").stat().st_size > 10_000


def test_bad_flags_exit_with_usage_error(tconv, capsys):
    """A negative seed is an argparse error: exit code 2, the flag named."""
    with pytest.raises(SystemExit) as exc:
        tconv.main(["--smoke", "--seed", "-1"])
    assert exc.value.code == 2
    assert "argument --seed" in capsys.readouterr().err
