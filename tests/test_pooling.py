"""04-cnns/pooling_numpy.py: max and average pooling, forward and backward, against torch in float64.

Shapes come from hypothesis: batch, channels, non-square inputs and kernels, strides, paddings up to
half the kernel (torch's limit), given as ints or (h, w) pairs, down to a kernel as large as the
padded input. Max pooling is compared on continuous random inputs (no ties), and separately on
inputs full of ties, where the gradient must go to the same element as torch's.
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

SCRIPT = "04-cnns/pooling_numpy.py"


@pytest.fixture(scope="module")
def pool(load_script):
    return load_script(SCRIPT)


@st.composite
def pool_cases(draw):
    """(x shape, kernel, stride or None, pad) with a valid geometry: pad <= kernel / 2, kernel <= padded input."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    H = draw(st.integers(max(1, kh - 2 * ph), 7))
    W = draw(st.integers(max(1, kw - 2 * pw), 7))
    if draw(st.booleans()):  # the smallest legal input: kernel == padded input, a 1x1 output
        H, W = max(1, kh - 2 * ph), max(1, kw - 2 * pw)
    stride = None if draw(st.booleans()) else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    use_int = draw(st.booleans())
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), H, W)
    stride_arg = None if stride is None else as_arg(*stride, use_int)
    return shape, as_arg(kh, kw, use_int), stride_arg, as_arg(ph, pw, use_int), ((kh, kw), stride or (kh, kw), (ph, pw))


def check_against_torch(pool, kind, shape, kernel, stride, pad, torch_args, x, seed):
    """Our forward and backward against F.max_pool2d / F.avg_pool2d, with a random upstream gradient."""
    fwd, bwd = getattr(pool, f"{kind}pool_forward"), getattr(pool, f"{kind}pool_backward")
    out, cache = fwd(x, kernel, stride, pad)
    k, s, p = torch_args
    assert out.shape[2:] == tuple(pool.output_size(n, *args) for n, args in zip(shape[2:], zip(k, s, p)))
    dout = np.random.default_rng(seed + 1).standard_normal(out.shape)
    reference = F.max_pool2d if kind == "max" else F.avg_pool2d
    out_ref, (dx_ref,) = torch_vjp(lambda t: reference(t, k, s, p), (x,), dout)
    assert out.shape == out_ref.shape  # the output-size formula, against torch
    assert rel_error(out, out_ref) <= 1e-12
    assert rel_error(bwd(dout, cache), dx_ref) <= 1e-7


@settings(max_examples=60, deadline=None)
@given(case=pool_cases(), seed=st.integers(0, 2**16))
def test_maxpool_matches_torch(pool, case, seed):
    shape, kernel, stride, pad, torch_args = case
    x = np.random.default_rng(seed).standard_normal(shape)  # continuous values: no ties
    check_against_torch(pool, "max", shape, kernel, stride, pad, torch_args, x, seed)


@settings(max_examples=60, deadline=None)
@given(case=pool_cases(), seed=st.integers(0, 2**16))
def test_avgpool_matches_torch(pool, case, seed):
    """Padding zeros count in the divisor, as torch's default count_include_pad=True."""
    shape, kernel, stride, pad, torch_args = case
    x = np.random.default_rng(seed).standard_normal(shape) + 2.0  # away from 0, so padding zeros change the mean
    check_against_torch(pool, "avg", shape, kernel, stride, pad, torch_args, x, seed)


@pytest.mark.parametrize("kernel, stride, pad", [(2, None, 0), (3, 1, 1), ((3, 2), (1, 2), (1, 1)), (4, 2, 2)])
def test_maxpool_ties_go_where_torch_sends_them(pool, kernel, stride, pad):
    """Inputs full of ties (values 0, 1, 2): each window picks the same element as torch's argmax (the first
    maximum in row-major order), so the gradients agree; overlapping windows add in another order (~1e-16)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (2, 3, 8, 7)).astype(np.float64)
    out, cache = pool.maxpool_forward(x, kernel, stride, pad)
    dout = rng.standard_normal(out.shape)
    out_ref, (dx_ref,) = torch_vjp(lambda t: F.max_pool2d(t, kernel, stride, pad), (x,), dout)
    assert np.array_equal(out, out_ref)
    assert rel_error(pool.maxpool_backward(dout, cache), dx_ref) <= 1e-12
    # the chosen elements themselves, as flat indices into each (H, W) map as torch returns them
    _, idx_ref = F.max_pool2d(torch.from_numpy(x), kernel, stride, pad, return_indices=True)
    (_, kw), (sh, sw), (ph, pw) = cache[2:]
    i, j = np.ogrid[: out.shape[2], : out.shape[3]]
    row, col = i * sh + cache[1] // kw - ph, j * sw + cache[1] % kw - pw
    assert np.array_equal(row * x.shape[3] + col, idx_ref.numpy())
    assert len(np.unique(x)) == 3  # and there were ties: 3 values in windows of 4 or more


def test_maxpool_tie_by_hand(pool):
    """Window [[1, 3], [3, 0]]: two maxima; the first in row-major order, (0, 1), gets the whole gradient."""
    x = np.array([[[[1.0, 3.0], [3.0, 0.0]]]])
    out, cache = pool.maxpool_forward(x, 2)
    assert out.item() == 3.0
    assert np.array_equal(pool.maxpool_backward(np.full((1, 1, 1, 1), 7.0), cache), [[[[0, 7.0], [0, 0]]]])


def test_overlapping_windows_accumulate(pool):
    """Stride 1, kernel 3: the global maximum wins all 9 windows that contain it and collects all their gradients."""
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 2, 2] = 5.0
    out, cache = pool.maxpool_forward(x, 3, 1)
    assert out.shape == (1, 1, 3, 3) and np.all(out == 5.0)
    dout = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    dx = pool.maxpool_backward(dout, cache)
    assert dx[0, 0, 2, 2] == dout.sum() and np.count_nonzero(dx) == 1


def test_max_padding_never_wins(pool):
    """All-negative input with padding: padding is -inf for max, so outputs stay negative (never 0)."""
    x = -1.0 - np.random.default_rng(0).random((1, 2, 4, 4))
    out, cache = pool.maxpool_forward(x, 2, 2, 1)
    assert out.shape == (1, 2, 3, 3) and out.max() < -1.0
    assert np.allclose(pool.maxpool_backward(np.ones_like(out), cache).sum(), out.size)


@st.composite
def valid_geometries(draw):
    """(n, k, s, p) that torch accepts: pad at most half the kernel, kernel at most the padded input. Drawn in
    that order, so every example is valid (none is thrown away) and the edge cases k = n + 2p, 2p = k occur."""
    k = draw(st.integers(1, 8))
    p = draw(st.integers(0, k // 2))
    n = draw(st.integers(max(1, k - 2 * p), 40))
    s = draw(st.integers(1, 5))
    return n, k, s, p


@settings(max_examples=200, deadline=None)
@given(geometry=valid_geometries())
def test_output_size_formula_matches_torch(pool, geometry):
    """floor((n + 2p - k) / s) + 1 against the shape torch gives, on geometries torch accepts."""
    n, k, s, p = geometry
    assert 2 * p <= k <= n + 2 * p  # valid by construction: every example compares a shape
    out = F.max_pool2d(torch.zeros(1, 1, n, n), k, s, p)
    assert out.shape[2:] == (pool.output_size(n, k, s, p),) * 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kernel=2, stride=0), "stride must be at least 1"),
        (dict(kernel=(2, 2), stride=(1, 0)), "stride must be at least 1"),
        (dict(kernel=0), "kernel must be at least 1"),
        (dict(kernel=2, pad=-1), "pad must be non-negative"),
        (dict(kernel=3, pad=2), "at most half the kernel"),
        (dict(kernel=(2, 4), pad=(0, 3)), "at most half the kernel"),
        (dict(kernel=6), "larger than the padded input"),
        (dict(kernel=(2, 7), pad=(0, 1)), "larger than the padded input"),
        (dict(kernel=2.0), "int or a pair of ints"),
        (dict(kernel=(2, 2, 2)), "int or a pair of ints"),
    ],
)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_invalid_geometry_raises(pool, kind, kwargs, message):
    x = np.zeros((1, 1, 5, 4))
    with pytest.raises(ValueError, match=message):
        getattr(pool, f"{kind}pool_forward")(x, **kwargs)


def test_rejects_input_that_is_not_4d_float(pool):
    with pytest.raises(ValueError, match=r"float array \(N, C, H, W\)"):
        pool.maxpool_forward(np.zeros((5, 4)), 2)
    with pytest.raises(ValueError, match=r"float array \(N, C, H, W\)"):
        pool.avgpool_forward(np.zeros((1, 1, 5, 4), dtype=np.uint8), 2)


def test_smoke_run(pool, tmp_path):
    """`--smoke`: real images pooled at kernel 2 and 3, stride 2; the self-check and the shift statistic."""
    m = pool.main(["--smoke", "--out-dir", str(tmp_path)])
    assert m["output_shapes"] == {"max k2 s2": [14, 14], "avg k2 s2": [14, 14], "max k3 s2": [13, 13],
                                  "avg k3 s2": [13, 13]}  # fmt: skip
    assert m["gradcheck_rel_error"]["max"] < 1e-6 and m["gradcheck_rel_error"]["avg"] < 1e-6
    # pooling makes the representation less sensitive to a one-pixel shift than the raw edge map
    assert all(m["shift_change"][name] < 0.9 * m["shift_change"]["none"] for name in m["output_shapes"])
    assert json.loads((tmp_path / "metrics.json").read_text())["output_shapes"] == m["output_shapes"]
    assert (tmp_path / "pooling.png").stat().st_size > 10_000


def test_bad_flags_exit_with_usage_error(pool, capsys):
    """--n-images must be 1..8 (the figure's rows), --seed >= 0: exit code 2, the flag named."""
    for argv in (["--n-images", "0"], ["--n-images", "9"], ["--seed", "-1"]):
        with pytest.raises(SystemExit) as exc:
            pool.main(["--smoke", *argv])
        assert exc.value.code == 2, argv
        assert f"argument {argv[0]}" in capsys.readouterr().err, argv
