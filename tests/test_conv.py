"""04-cnns/conv_numpy.py: convolution forward and backward against torch, loops against vectorised, geometry.

Shapes come from hypothesis: batch, channels in and out, height and width drawn independently
(non-square), kernel height and width independently up to the padded input's size (kernel = padded
input included), stride and padding as ints or (h, w) pairs. All comparisons are in float64 with a
random upstream gradient, by the relative error max|a - b| / (max|a| + max|b|).
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradcheck import rel_error, torch_vjp
from hypothesis import given, settings
from hypothesis import strategies as st


@pytest.fixture(scope="module")
def conv(load_script):
    return load_script("04-cnns/conv_numpy.py")


@st.composite
def conv_cases(draw, max_batch=3, max_channels=4, max_size=9):
    """(x shape, W shape, stride, pad, seed) for a valid geometry; stride and pad as int or (h, w)."""
    N = draw(st.integers(1, max_batch))
    C, Fo = draw(st.integers(1, max_channels)), draw(st.integers(1, max_channels))
    H, W = draw(st.integers(1, max_size)), draw(st.integers(1, max_size))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    kh, kw = draw(st.integers(1, H + 2 * ph)), draw(st.integers(1, W + 2 * pw))  # up to kernel = padded input
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = sh if sh == sw and draw(st.booleans()) else (sh, sw)
    pad = ph if ph == pw and draw(st.booleans()) else (ph, pw)
    return (N, C, H, W), (Fo, C, kh, kw), stride, pad, draw(st.integers(0, 2**32 - 1))


def random_inputs(x_shape, W_shape, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(x_shape), rng.standard_normal(W_shape), rng.standard_normal(W_shape[0]), rng


def torch_conv(stride, pad):
    return lambda x, W, b: F.conv2d(x, W, b, stride=stride, padding=pad)


@settings(max_examples=300, deadline=None)
@given(conv_cases())
def test_vectorised_matches_torch(conv, case):
    """conv2d_forward / conv2d_backward against F.conv2d and autograd: out, dx, dW, db."""
    x_shape, W_shape, stride, pad, seed = case
    x, W, b, rng = random_inputs(x_shape, W_shape, seed)
    out, cache = conv.conv2d_forward(x, W, b, stride, pad)
    dout = rng.standard_normal(out.shape)
    dx, dW, db = conv.conv2d_backward(dout, cache)
    out_ref, (dx_ref, dW_ref, db_ref) = torch_vjp(torch_conv(stride, pad), (x, W, b), dout)
    assert out.shape == out_ref.shape and dx.shape == x.shape
    assert rel_error(out, out_ref) <= 1e-12
    assert rel_error(dx, dx_ref) <= 1e-7
    assert rel_error(dW, dW_ref) <= 1e-7
    assert rel_error(db, db_ref) <= 1e-7
    assert out.dtype == dx.dtype == dW.dtype == np.float64


@settings(max_examples=150, deadline=None)
@given(conv_cases(max_batch=2, max_channels=3, max_size=6))
def test_naive_matches_vectorised(conv, case):
    """The loop version (the definition) and the matrix-product version give the same numbers."""
    x_shape, W_shape, stride, pad, seed = case
    x, W, b, rng = random_inputs(x_shape, W_shape, seed)
    out, cache = conv.conv2d_forward(x, W, b, stride, pad)
    out_naive, cache_naive = conv.conv2d_forward_naive(x, W, b, stride, pad)
    assert rel_error(out_naive, out) <= 1e-12
    dout = rng.standard_normal(out.shape)
    for name, got, ref in zip(
        ["dx", "dW", "db"], conv.conv2d_backward_naive(dout, cache_naive), conv.conv2d_backward(dout, cache)
    ):
        assert rel_error(got, ref) <= 1e-12, name


@settings(max_examples=300, deadline=None)
@given(conv_cases(max_size=12))
def test_output_size_matches_torch(conv, case):
    """conv_output_size along each axis gives torch's output shape."""
    x_shape, W_shape, stride, pad, _ = case
    (sh, sw), (ph, pw) = conv.pair(stride, "stride"), conv.pair(pad, "pad")
    with torch.no_grad():
        ref = F.conv2d(torch.zeros(x_shape), torch.zeros(W_shape), stride=stride, padding=pad).shape
    assert (
        x_shape[0],
        W_shape[0],
        conv.conv_output_size(x_shape[2], W_shape[2], sh, ph),
        conv.conv_output_size(x_shape[3], W_shape[3], sw, pw),
    ) == tuple(ref)


def test_output_size_examples(conv):
    """The named cases of the docstring: valid, same (odd kernel), same at stride 2, and the floor."""
    assert conv.conv_output_size(28, 5, 1, 0) == 24  # valid: n - k + 1
    assert all(conv.conv_output_size(n, k, 1, (k - 1) // 2) == n for n in (5, 28) for k in (1, 3, 5))  # same
    assert [conv.conv_output_size(n, 3, 2, 1) for n in (27, 28)] == [14, 14]  # same at stride 2: ceil(n / 2)
    assert conv.conv_output_size(6, 3, 2, 0) == 2  # (6 - 3) / 2 = 1.5: the last column is skipped
    assert conv.conv_output_size(4, 6, 1, 1) == 1  # kernel = padded input: one window


@pytest.mark.parametrize("fn", ["conv2d_forward", "conv2d_forward_naive"])
@pytest.mark.parametrize(
    ("x_shape", "W_shape", "stride", "pad", "match"),
    [
        ((1, 2, 5, 5), (3, 2, 3, 3), 0, 0, "stride must be at least 1"),
        ((1, 2, 5, 5), (3, 2, 3, 3), (1, 0), 0, "stride must be at least 1"),
        ((1, 2, 5, 5), (3, 2, 3, 3), 1, -1, "padding must be non-negative"),
        ((1, 2, 5, 5), (3, 2, 3, 3), 1, (0, -2), "padding must be non-negative"),
        ((1, 2, 5, 5), (3, 2, 8, 3), 1, 1, r"kernel size 8 is larger than the padded input 5 \+ 2\*1 = 7"),
        ((1, 2, 5, 4), (3, 2, 3, 5), 1, 0, r"kernel size 5 is larger than the padded input 4"),
        ((1, 2, 5, 5), (3, 4, 3, 3), 1, 0, "channel mismatch: x has 2 channels but W expects 4"),
        ((2, 5, 5), (3, 2, 3, 3), 1, 0, r"x must be \(N, C, H, W\)"),
        ((1, 2, 5, 5), (3, 2, 3, 3), 1.5, 0, "stride must be an int or a pair"),
        ((1, 2, 5, 5), (3, 2, 3, 3), 1, (1, 1, 1), "pad must be an int or a pair"),
    ],
)
def test_invalid_geometry_raises(conv, fn, x_shape, W_shape, stride, pad, match):
    with pytest.raises(ValueError, match=match):
        getattr(conv, fn)(np.zeros(x_shape), np.zeros(W_shape), np.zeros(W_shape[0]), stride, pad)


def test_bias_shape_checked(conv):
    with pytest.raises(ValueError, match=r"b must have shape \(3,\)"):
        conv.conv2d_forward(np.zeros((1, 2, 5, 5)), np.zeros((3, 2, 3, 3)), np.zeros(2))


def test_output_size_rejects_bad_arguments(conv):
    for args, match in [
        ((5, 3, 0, 0), "stride"),
        ((5, 3, 1, -1), "padding"),
        ((5, 0, 1, 0), "kernel size must"),
        ((5, 8, 1, 1), "larger than the padded input"),
    ]:
        with pytest.raises(ValueError, match=match):
            conv.conv_output_size(*args)


def test_float32_in_float32_out(conv):
    """Training runs in float32: the layer keeps the dtype of its inputs (and agrees with float64)."""
    x, W, b, rng = random_inputs((4, 3, 10, 9), (5, 3, 3, 3), 0)
    out, cache = conv.conv2d_forward(x.astype(np.float32), W.astype(np.float32), b.astype(np.float32), 2, 1)
    dout = rng.standard_normal(out.shape)
    grads = conv.conv2d_backward(dout.astype(np.float32), cache)
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
    out64, cache64 = conv.conv2d_forward(x, W, b, 2, 1)
    assert rel_error(out, out64) <= 1e-6
    for got, ref in zip(grads, conv.conv2d_backward(dout, cache64)):
        assert rel_error(got, ref) <= 1e-6


def test_sobel_vertical_kernel_sees_vertical_edges_only(conv):
    """A step from dark (0) to bright (1) along x: kernel 0 (Sobel x) answers 4 on the edge, kernel 1 nothing.

    The vertical edge between columns 3 and 4: a 3x3 window covering columns 2-4 or 3-5 sees
    right column minus left column = 1 in each row, weighted 1 + 2 + 1 = 4. Turned by 90 degrees,
    the roles swap.
    """
    W, b = conv.sobel_kernels(), np.zeros(2)
    step = np.zeros((1, 1, 8, 8))
    step[..., 4:] = 1.0  # columns 4..7 bright: a vertical edge
    out, _ = conv.conv2d_forward(step, W, b)  # valid: (1, 2, 6, 6); window at column j covers j..j+2
    expected = np.zeros((6, 6))
    expected[:, 2:4] = 4.0  # windows starting at columns 2 and 3 straddle the edge
    np.testing.assert_array_equal(out[0, 0], expected)
    np.testing.assert_array_equal(out[0, 1], 0.0)
    out_t, _ = conv.conv2d_forward(step.transpose(0, 1, 3, 2), W, b)  # a horizontal edge
    np.testing.assert_array_equal(out_t[0, 1], expected.T)
    np.testing.assert_array_equal(out_t[0, 0], 0.0)
    out_neg, _ = conv.conv2d_forward(1 - step, W, b)  # bright to dark: the sign flips
    np.testing.assert_array_equal(out_neg[0, 0], -expected)


def test_smoke_run(conv, tmp_path):
    """--smoke: the demonstration on real images; the loop and vectorised versions agree there too."""
    m = conv.main(["--smoke", "--out-dir", str(tmp_path)])
    n = m["config"]["n_images"]
    assert m["shapes"] == {
        "valid": [n, 2, 26, 26],
        "same": [n, 2, 28, 28],
        "same_stride2": [n, 2, 14, 14],
        "valid_stride2": [n, 2, 13, 13],
    }
    assert m["max_abs_diff_naive_vs_vectorised"] <= 1e-10
    assert m["naive_s"] > 0 and m["vectorised_s"] > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["shapes"] == m["shapes"]
    assert (tmp_path / "conv_demo.png").stat().st_size > 20_000


def test_bad_flags_exit_with_usage_error(conv, capsys):
    for argv in (["--n-images", "0"], ["--n-check", "-1"], ["--seed", "-1"]):
        with pytest.raises(SystemExit) as exc:
            conv.main(["--smoke", *argv])
        assert exc.value.code == 2
        assert f"argument {argv[0]}" in capsys.readouterr().err, argv
