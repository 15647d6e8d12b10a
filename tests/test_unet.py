"""04-cnns/unet_torch.py: U-Net's architecture, overlap-tile, weighted loss, augmentation and metrics.

The paper's network has 31,030,658 parameters and maps 572 -> 388 (meta device), other valid tiles likewise,
an untileable side is a clear error; crop-and-concatenate keeps the skip's centre; the up-convolution equals
04-cnns/transposed_conv_numpy.py's transposed convolution; stitching a model that returns its cropped input
rebuilds the image exactly; the weight map against hand-worked values and a brute-force distance computation;
the elastic deformation is the identity at zero displacement and keeps masks binary; pixel and Rand errors
against brute force over pixels and pixel pairs; a smoke run learns; Ctrl-C and --resume; bad flags.
"""

import itertools
import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from data import isbi2012

PAPER_PARAMS = 31_030_658  # Figure 1, base 64, 1 input channel, 2 classes


@pytest.fixture(scope="module")
def un(load_script):
    return load_script("04-cnns/unet_torch.py")


def test_paper_network_on_meta(un):
    """31,030,658 parameters; 572 -> 388; 23 convolutional layers (18 unpadded 3x3, 4 up-convs 2x2 that halve
    the channels, one 1x1), as the paper counts them."""
    with torch.device("meta"):
        model = un.unet(1, 2, 64)
        assert sum(w.numel() for w in model.parameters()) == PAPER_PARAMS
        assert model(torch.empty(1, 1, 572, 572)).shape == (1, 2, 388, 388)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    ups = [m for m in model.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(convs) + len(ups) == 23 and sum(c.kernel_size == (3, 3) and c.padding == (0, 0) for c in convs) == 18
    assert [(u.in_channels, u.out_channels, u.kernel_size, u.stride) for u in ups] == [
        (2 * c, c, (2, 2), (2, 2)) for c in (64, 128, 256, 512)]  # fmt: skip
    assert model.head.kernel_size == (1, 1) and model.head.out_channels == 2


def test_contracting_path_max_pools(un, monkeypatch):
    """Four 2x2 max-pools, one per level, on the maps 184, 88, 40 and 16 pixels wide of a 188 tile."""
    calls, real = [], un.F.max_pool2d

    def spy(x, k, *a, **kw):
        calls.append((x.shape[-1], k))
        return real(x, k, *a, **kw)

    monkeypatch.setattr(un.F, "max_pool2d", spy)
    with torch.no_grad():
        un.unet(1, 2, 2)(torch.zeros(1, 1, 188, 188))
    assert calls == [(184, 2), (88, 2), (40, 2), (16, 2)]


@pytest.mark.parametrize("size", [188, 204, 252, 316, 508, 572, 620])
def test_valid_tiles(un, size):
    """Every side 124 + 16 b (b >= 4) goes through and loses 184 pixels; non-square tiles too."""
    with torch.device("meta"):
        model = un.unet(1, 3, 8)
        assert model(torch.empty(2, 1, size, 572)).shape == (2, 3, size - 184, 388)
    assert un.output_size(size) == size - 184


@pytest.mark.parametrize("size", [187, 172, 571, 573, 580, 100])
def test_untileable_side_is_a_clear_error(un, size):
    with pytest.raises(ValueError, match="124 \\+ 16 b"):
        un.output_size(size)
    with torch.device("meta"), pytest.raises(ValueError, match=f"got {size}"):
        un.unet(1, 2, 4)(torch.empty(1, 1, 572, size))


def test_crop_and_concat(un):
    """The skip's central window, then the upsampled map: (2, 3, 64, 64) + (2, 5, 56, 56) -> (2, 8, 56, 56)."""
    skip, up = torch.randn(2, 3, 64, 64), torch.randn(2, 5, 56, 56)
    out = un.crop_and_concat(skip, up)
    assert out.shape == (2, 8, 56, 56)
    assert torch.equal(out[:, :3], skip[:, :, 4:60, 4:60]) and torch.equal(out[:, 3:], up)
    assert un.crop_and_concat(torch.randn(1, 2, 9, 9), torch.randn(1, 1, 4, 4)).shape == (1, 3, 4, 4)


def test_upconv_equals_the_numpy_transposed_convolution(un, load_script):
    """Each up-convolution of a small U-Net, on its own weights: 04-cnns/transposed_conv_numpy.py's
    conv_transpose2d_forward at stride 2, no padding, gives the same (N, C/2, 2H, 2W) map."""
    tc = load_script("04-cnns/transposed_conv_numpy.py")
    torch.manual_seed(0)
    model = un.unet(1, 2, 4).double()
    for up in model.up:
        with torch.no_grad():
            up.bias.normal_()
        x = torch.randn(2, up.in_channels, 5, 6, dtype=torch.float64)
        ref, _ = tc.conv_transpose2d_forward(x.numpy(), up.weight.detach().numpy(), up.bias.detach().numpy(), 2, 0)
        with torch.no_grad():
            out = up(x).numpy()
        assert out.shape == (2, up.in_channels // 2, 10, 12)
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tile,shape", [(188, (512, 512)), (572, (512, 512)), (252, (70, 130)), (572, (100, 37))])
def test_overlap_tile_rebuilds_the_image(un, tile, shape):
    """A "model" returning its input's central output-sized crop: stitching gives the image back exactly, so
    each output tile lands where its input tile was read, at every border (mirrored) and overlap."""
    out = un.output_size(tile)
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    calls = []

    def crop(x):
        calls.append(x.shape)
        assert x.shape[-2:] == (tile, tile)
        return un.center_crop(x, out, out)

    rebuilt = un.stitch(crop, image, tile)
    assert rebuilt.shape == (1, *shape)
    np.testing.assert_array_equal(rebuilt[0], image)
    n = max(1, -(-shape[0] // out)) * max(1, -(-shape[1] // out))
    assert sum(c[0] for c in calls) == n  # ceil(H / out) * ceil(W / out) tiles


def test_mirroring_at_the_border(un):
    """The context of an output tile at the border is the image mirrored: the tile's input is that mirror."""
    image = np.arange(70 * 70, dtype=np.float32).reshape(70, 70)
    seen = []
    un.stitch(lambda x: seen.append(x[0, 0].numpy()) or un.center_crop(x, 68, 68), image, 252)
    m = (252 - 68) // 2  # 92 pixels of context on each side
    np.testing.assert_array_equal(seen[0][m : m + 70, m : m + 70], image)  # mirrored: ... 1 0 | 0 1 ...
    np.testing.assert_array_equal(seen[0][m - 1, m : m + 70], image[0])
    np.testing.assert_array_equal(seen[0][m - 3, m : m + 70], image[2])
    np.testing.assert_array_equal(seen[0][m : m + 70, m + 70 + 4], image[:, -5])


def test_weighted_cross_entropy_by_hand(un):
    g = torch.Generator().manual_seed(0)
    logits, w = torch.randn(2, 2, 3, 4, generator=g, dtype=torch.float64), torch.rand(2, 3, 4, dtype=torch.float64)
    target = torch.randint(0, 2, (2, 3, 4), generator=g)
    p = logits.exp() / logits.exp().sum(1, keepdim=True)  # softmax
    manual = -(w * torch.log(p.gather(1, target[:, None])[:, 0])).mean()
    assert un.weighted_cross_entropy(logits, target, w).item() == pytest.approx(manual.item(), rel=1e-12)


def test_weight_map_two_cells_and_a_thin_gap(un):
    """Two 20x20 cells, two membrane columns apart, in a membrane frame: the gap pixels have d1 + d2 = 3 and
    carry w_c + 10 exp(-9 / 50), the highest weights of the map; a membrane pixel beside only one cell gets
    only w_c + a small term; w_c balances the classes."""
    mask = np.zeros((30, 60), np.uint8)
    mask[5:25, 8:28] = 1  # cell A: columns 8-27
    mask[5:25, 30:50] = 1  # cell B: columns 30-49; gap columns 28, 29
    w = un.weight_map(mask)
    f = mask.mean()
    wc0, wc1 = 0.5 / (1 - f), 0.5 / f
    np.testing.assert_allclose(w[mask == 1], wc1, rtol=1e-6)  # no border term inside the cells
    assert wc1 * (mask == 1).sum() == pytest.approx(wc0 * (mask == 0).sum())
    np.testing.assert_allclose(w[5:25, 28:30], wc0 + 10 * np.exp(-9 / 50), rtol=1e-6)  # d1 = 1, d2 = 2
    assert np.unravel_index(w.argmax(), w.shape)[1] in (28, 29) and w[5:25, 28:30].min() == w.max()
    # (row 2, column 15): 3 pixels above A, d2 = distance to B's corner (5, 30) = sqrt(9 + 225)
    assert w[2, 15] == pytest.approx(wc0 + 10 * np.exp(-((3 + np.hypot(3, 15)) ** 2) / 50), rel=1e-6)
    single = np.zeros((30, 30), np.uint8)
    single[5:25, 5:25] = 1  # one cell: no second cell, no border term anywhere
    np.testing.assert_allclose(un.weight_map(single), np.where(single == 1, 0.5 / single.mean(),
                                                                0.5 / (1 - single.mean())), rtol=1e-6)  # fmt: skip


def test_weight_map_equals_brute_force_on_a_real_mask(un):
    """On a 160x160 crop of a real mask, the windowed distances give the map that whole-image distance transforms
    to every cell give (d1, d2 the two smallest of all)."""
    mask = isbi2012("val")[1][0, 100:260, 200:360]
    cells, n = ndimage.label(mask)
    d = np.sort(np.stack([ndimage.distance_transform_edt(cells != k) for k in range(1, n + 1)]), axis=0)
    f = mask.mean()
    brute = np.where(mask == 1, 0.5 / f, 0.5 / (1 - f) + 10 * np.exp(-((d[0] + d[1]) ** 2) / 50))
    assert n > 10
    np.testing.assert_allclose(un.weight_map(mask), brute, rtol=1e-5, atol=1e-6)


def test_elastic_deformation(un):
    """At zero displacement the identity; at the paper's 10 pixels it moves the image and keeps the mask binary."""
    X, Y = isbi2012("val")
    image, mask = X[0, :120, :100], Y[0, :120, :100]
    weight = un.weight_map(mask)
    same = un.elastic_deform(image, mask, weight, np.random.default_rng(0), sigma=0.0)
    np.testing.assert_allclose(same[0], image, atol=1e-5)
    assert np.array_equal(same[1], mask) and np.allclose(same[2], weight, atol=1e-5)
    rng = np.random.default_rng(1)
    for _ in range(5):
        img, m, w = un.augment(image[:100], mask[:100], weight[:100], rng)
        assert m.dtype == mask.dtype and set(np.unique(m)) <= {0, 1} and 0.5 < m.mean() < 0.95
        assert img.shape == m.shape == w.shape == (100, 100) and np.abs(img - image[:100]).mean() > 0.02


def brute_rand(pred, true):
    """V_Rand over ordered pairs of true-foreground pixels (a pixel with itself included): pairs in one true cell
    and one predicted segment / the mean of the pairs in one true cell and the pairs in one predicted segment;
    predicted label 0: a segment of its own."""
    px = [(p, t) for p, t in zip(pred.ravel(), true.ravel()) if t > 0]
    both = same_s = same_t = 0
    for (i, (p1, t1)), (j, (p2, t2)) in itertools.product(enumerate(px), repeat=2):
        s = i == j or (p1 == p2 and p1 > 0)
        both, same_s, same_t = both + (s and t1 == t2), same_s + s, same_t + (t1 == t2)
    return both / (0.5 * same_s + 0.5 * same_t)


def test_rand_index_against_brute_force(un):
    rng = np.random.default_rng(0)
    for _ in range(20):
        pred, true = rng.integers(0, 4, (5, 7)), rng.integers(0, 4, (5, 7))
        assert un.rand_index(pred, true) == pytest.approx(brute_rand(pred, true), rel=1e-12)
    true = np.array([[1, 1, 0, 2, 2]])
    assert un.rand_index(np.array([[5, 5, 0, 7, 7]]), true) == 1.0  # same cells, other names: perfect
    merged = un.rand_index(np.array([[3, 3, 3, 3, 3]]), true)  # one segment: 16 pairs vs 8 true pairs
    assert merged == pytest.approx(8 / (0.5 * 16 + 0.5 * 8))


def test_pixel_and_rand_error_against_brute_force(un):
    """On small random probability maps: pixel error by a loop over pixels, Rand error by brute force over the
    thresholds 0.1 .. 0.9 of connected components (4-neighbours) of P(cell) > t and of the true cells."""
    rng = np.random.default_rng(1)
    for _ in range(6):
        mask = (rng.random((6, 6)) < 0.7).astype(np.uint8)
        prob = np.clip(mask * 0.6 + rng.random((6, 6)) * 0.5, 0, 1)
        u = rng.random((10, 10))  # pixel error: uniform P(cell), a loop over pixels at three thresholds
        m10 = (rng.random((10, 10)) < 0.7).astype(np.uint8)
        for t in (0.3, 0.5, 0.7):
            wrong = sum((u[i, j] > t) != (m10[i, j] == 1) for i in range(10) for j in range(10))
            assert un.pixel_error(u, m10, t) == pytest.approx(wrong / 100)
        assert un.pixel_error(u, m10) == un.pixel_error(u, m10, 0.5)
        scores = [brute_rand(ndimage.label(prob > t)[0], ndimage.label(mask)[0]) for t in np.arange(1, 10) / 10]
        assert un.rand_error(prob, mask) == pytest.approx(1 - max(scores), rel=1e-12)
    mask = np.ones((5, 9), np.uint8)
    mask[:, 4] = 0  # two cells
    assert un.rand_error(mask.astype(float), mask) == 0.0 and un.pixel_error(mask.astype(float), mask) == 0.0
    # everything one segment: sum n_ij^2 = 2 * 20^2, sum s_i^2 = 40^2, sum t_j^2 = 2 * 20^2
    assert un.rand_error(np.ones((5, 9)), mask) == pytest.approx(1 - 800 / (0.5 * 1600 + 0.5 * 800))


@pytest.fixture(scope="module")
def smoke(un, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    return out, un.main(["--smoke", "--threads", "1", "--out-dir", str(out)])


def test_smoke_run_learns(smoke):
    """A tiny U-Net on 4 slices for a few seconds: the weighted loss falls and the validation pixel error (best
    threshold) beats predicting "cell" everywhere (0.2029 on the 2 slices; measured: 0.155 at seed 0), while
    it fell from epoch 1 to epoch 2; figures, metrics and the test predictions are written."""
    out, m = smoke
    assert m["final_train_loss"] < 0.8 * m["first_loss"]
    assert m["val_pixel_error"] < 0.9 * m["all_cell_val_pixel_error"]
    assert m["all_cell_val_pixel_error"] == pytest.approx(0.2029, abs=1e-4)
    assert m["history"]["val_pixel_error"][0] > m["history"]["val_pixel_error"][-1]
    assert 0 < m["val_rand_error"] < 1 and m["paper_params"] == PAPER_PARAMS
    assert json.loads((out / "metrics.json").read_text())["val_pixel_error"] == m["val_pixel_error"]
    for name in ("validation.png", "augmentation.png", "test_predictions/0.png", "test_predictions/1.png"):
        assert (out / name).stat().st_size > 5_000


def test_ctrl_c_then_resume_equals_uninterrupted(un, tmp_path, monkeypatch, capsys):
    """Ctrl-C in epoch 2 exits 130 naming epoch 1's checkpoint and the --resume command; --resume then gives the
    uninterrupted run's losses and errors; a changed setting is refused."""
    tiny = ["--smoke", "--threads", "1", "--steps-per-epoch", "2", "--n-test", "1"]
    m = un.main([*tiny, "--out-dir", str(tmp_path / "whole")])
    real, calls = un.sample_tile, []

    def ctrl_c_in_epoch_2(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(un, "sample_tile", ctrl_c_in_epoch_2)
    argv = [*tiny, "--out-dir", str(tmp_path / "cut")]
    with pytest.raises(SystemExit) as exc:
        un.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 130 and "holds epoch 1" in err and err.rstrip().endswith("--resume")
    monkeypatch.setattr(un, "sample_tile", real)
    resumed = un.main([*argv, "--resume"])
    for k in ("loss", "val_pixel_error", "val_rand_error", "train_pixel_error"):
        assert resumed["history"][k] == m["history"][k], k
    with pytest.raises(SystemExit) as exc:
        un.main([*argv, "--resume", "--lr", "0.5"])
    assert exc.value.code == 2 and "--lr 0.003 -> 0.5" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,flag",
    [(["--tile", "301"], "--tile"), (["--tile", "716"], "--tile"), (["--base", "0"], "--base"),
     (["--n-train", "26"], "--n-train"), (["--lr", "nan"], "--lr"), (["--resume"], "--resume")],
)  # fmt: skip
def test_bad_flags(un, usage_error, argv, flag):
    assert flag in usage_error(un, argv)


def test_missing_data_is_one_line(un, missing_data_error):
    assert "isbi2012" in missing_data_error(un.main)
