"""04-cnns case studies: MobileNet v1, MobileNet v2 and EfficientNet B0-B7.

Parameter counts at the papers' configurations (meta device), mult-adds against the papers' tables, the
width multipliers, EfficientNet's compound scaling (blocks and channels per stage, recomputed here from
the rule), depthwise convolution as a grouped convolution, squeeze-and-excitation, stochastic depth, the
linear bottleneck, logits shapes, evaluation leaving BatchNorm's buffers alone, and each script's smoke run.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from smoke import check_cnn_smoke_run, check_evaluate_keeps_batchnorm_buffers
from torch.utils.flop_counter import FlopCounterMode

V1, V2, EFF = "04-cnns/mobilenet_v1_torch.py", "04-cnns/mobilenet_v2_torch.py", "04-cnns/efficientnet_torch.py"
SCRIPTS = [V1, V2, EFF]

# docs/references.md: CV = osmr/imgclsmob's asserts, TV = torchvision's num_params.
EXACT = {
    (V1, "mobilenet_v1"): 4_231_976,  # CV
    (V2, "mobilenet_v2"): 3_504_872,  # TV
    (EFF, "efficientnet_b0"): 5_288_548,  # TV
    (EFF, "efficientnet_b1"): 7_794_184,  # TV
    # B2-B7: torchvision's published num_params (EfficientNet_B2_Weights .. EfficientNet_B7_Weights,
    # pytorch.org/vision/stable/models, also in docs/references.md), which this build matches exactly too.
    (EFF, "efficientnet_b2"): 9_109_994,
    (EFF, "efficientnet_b3"): 12_233_232,
    (EFF, "efficientnet_b4"): 19_341_616,
    (EFF, "efficientnet_b5"): 30_389_784,
    (EFF, "efficientnet_b6"): 43_040_704,
    (EFF, "efficientnet_b7"): 66_347_960,
}
# Tan and Le 2019, Table 2, parameters in millions as printed (B2's "9.2M" is left out: this build, whose
# B0-B7 equal torchvision's exactly, gives 9.11M).
EFF_PAPER_M = {
    "efficientnet_b3": 12,
    "efficientnet_b4": 19,
    "efficientnet_b5": 30,
    "efficientnet_b6": 43,
    "efficientnet_b7": 66,
}
# the configuration each script trains, for real CPU forwards at 28x28
SMALL = {V1: {"width_mult": 0.25}, V2: {"width_mult": 0.25}, EFF: {"width_mult": 0.25}}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def on_meta(fn, **kwargs):
    with torch.device("meta"):
        return fn(**kwargs)


def mult_adds(model, size):
    """Multiply-adds of one eval-mode forward of a (1, 3, size, size) image on the meta device (convs and the
    classifier; FlopCounterMode counts 2 FLOPs per multiply-add)."""
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        model.eval()(torch.empty(1, 3, size, size))
    return counter.get_total_flops() / 2


@pytest.fixture(scope="module")
def mods(load_script):
    return {s: load_script(s) for s in SCRIPTS}


def test_models_and_resolutions(mods):
    assert list(mods[V1].MODELS) == ["mobilenet_v1"] and list(mods[V2].MODELS) == ["mobilenet_v2"]
    assert list(mods[EFF].MODELS) == [f"efficientnet_b{k}" for k in range(8)]
    assert mods[V1].RESOLUTION == {"mobilenet_v1": 224} and mods[V2].RESOLUTION == {"mobilenet_v2": 224}
    assert list(mods[EFF].RESOLUTION.values()) == [224, 240, 260, 300, 380, 456, 528, 600]


@pytest.mark.parametrize("script,name", sorted(EXACT))
def test_parameter_count(mods, script, name):
    assert n_params(on_meta(mods[script].MODELS[name])) == EXACT[(script, name)]


@pytest.mark.parametrize("name", sorted(EFF_PAPER_M))
def test_efficientnet_paper_counts(mods, name):
    assert round(n_params(on_meta(mods[EFF].MODELS[name])) / 1e6) == EFF_PAPER_M[name]


def test_mult_adds_match_the_papers(mods):
    """MobileNet v1 Table 6 (alpha) and Table 7 (rho = 224, 192, 160, 128) in millions; MobileNet v2 300M
    (Table 3); EfficientNet-B0 0.39B (Table 2). The papers round up or down (568.7M is "569", 290.7M "290"):
    within 1M."""
    v1 = mods[V1].mobilenet_v1
    for alpha, millions in [(1.0, 569), (0.75, 325), (0.5, 149), (0.25, 41)]:
        assert abs(mult_adds(on_meta(v1, width_mult=alpha), 224) / 1e6 - millions) < 1
    net = on_meta(v1)
    for size, millions in [(192, 418), (160, 290), (128, 186)]:
        assert abs(mult_adds(net, size) / 1e6 - millions) < 1
    assert abs(mult_adds(on_meta(mods[V2].mobilenet_v2), 224) / 1e6 - 300) < 1
    assert round(mult_adds(on_meta(mods[EFF].efficientnet_b0), 224) / 1e9, 2) == 0.39


def test_depthwise_separable_cost(mods):
    """One 14x14 layer, 512 -> 512: parameters 9M + MN against 9MN, mult-adds in the ratio 1/N + 1/9."""
    M = N = 512
    with torch.device("meta"):
        layer = mods[V1].DepthwiseSeparable(M, N)
        standard = torch.nn.Conv2d(M, N, 3, padding=1, bias=False)
    assert n_params(layer) == 9 * M + M * N + 2 * M + 2 * N  # + BN scale and shift per channel
    costs = []
    for m in (layer.dw, layer.pw, standard):
        with FlopCounterMode(display=False) as counter:
            m(torch.empty(1, M, 14, 14, device="meta"))
        costs.append(counter.get_total_flops() / 2)
    assert costs == [9 * M * 14 * 14, M * N * 14 * 14, 9 * M * N * 14 * 14]
    assert (costs[0] + costs[1]) / costs[2] == pytest.approx(1 / N + 1 / 9, rel=1e-12)


def v1_count(alpha, num_classes=1000):
    """MobileNet v1's parameters written out from Table 1: int(alpha c) channels everywhere."""
    widths = [int(alpha * c) for c in (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)]
    total = 3 * 9 * widths[0] + 2 * widths[0]  # stem conv and its BN
    for c_in, c_out in zip(widths, widths[1:]):
        total += 9 * c_in + 2 * c_in + c_in * c_out + 2 * c_out
    return total + widths[-1] * num_classes + num_classes


def test_mobilenet_v1_width_multiplier(mods):
    """alpha scales every layer: counts follow the arithmetic and round to Table 6's 4.2M, 2.6M, 1.3M, 0.5M."""
    for alpha, millions in [(1.0, 4.2), (0.75, 2.6), (0.5, 1.3), (0.25, 0.5)]:
        count = n_params(on_meta(mods[V1].mobilenet_v1, width_mult=alpha))
        assert count == v1_count(alpha)
        assert round(count / 1e5) / 10 == millions
    net = on_meta(mods[V1].mobilenet_v1, width_mult=0.5)
    assert net.stem[0].out_channels == 16 and net.fc.in_features == 512


def test_make_divisible(mods):
    md = mods[V2].make_divisible
    assert [md(c) for c in (8, 11.2, 12, 16, 18, 20, 28, 1280)] == [8, 16, 16, 16, 24, 24, 32, 1280]
    for c in range(1, 400):
        r = md(c * 0.35)
        assert r % 8 == 0 and r >= 8 and r >= 0.9 * c * 0.35 and abs(r - c * 0.35) <= 8


# The reference implementation's checkpoint table (tensorflow/models, research/slim/nets/mobilenet/README.md):
# (width multiplier, input size): mult-adds in millions ("MACs (M)"), as printed.
V2_MACS = {
    (1.4, 224): 582,
    (1.3, 224): 509,
    (1.0, 224): 300,
    (1.0, 160): 154,
    (1.0, 96): 56,
    (0.75, 224): 209,
    (0.75, 128): 69,
    (0.5, 224): 97,
    (0.5, 128): 32,
    (0.35, 224): 59,
    (0.35, 96): 11,
}


def test_mobilenet_v2_width_multiplier(mods):
    """Every channel count a multiple of 8; the last conv stays at 1280 below alpha = 1 and grows above it;
    mult-adds at each (alpha, size) as the reference's table prints them (to its rounding: within 1M)."""
    v2 = mods[V2]
    for alpha in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4):
        net = on_meta(v2.mobilenet_v2, width_mult=alpha)
        convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        assert all(m.out_channels % 8 == 0 for m in convs)
        assert net.fc.in_features == {1.3: 1664, 1.4: 1792}.get(alpha, 1280)
        for (a, size), millions in V2_MACS.items():
            if a == alpha:
                assert abs(mult_adds(net, size) / 1e6 - millions) < 1, (alpha, size)
    counts = [n_params(on_meta(v2.mobilenet_v2, width_mult=a)) for a in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)]
    assert counts == sorted(counts) and len(set(counts)) == 6


def test_inverted_residual_is_linear_bottleneck(mods):
    """The projection has no activation (outputs go negative); the shortcut exists exactly when stride 1 and
    c_in = c_out; t = 1 has no expansion conv; parameters are those of Table 1's three convs and BNs."""
    v2 = mods[V2]
    torch.manual_seed(0)
    block = v2.InvertedResidual(16, 24, stride=2, expand_ratio=6).eval()
    out = block(torch.randn(2, 16, 8, 8))
    assert out.shape == (2, 24, 4, 4) and (out < 0).any() and not block.residual
    assert n_params(block) == 16 * 96 + 2 * 96 + 9 * 96 + 2 * 96 + 96 * 24 + 2 * 24
    same = v2.InvertedResidual(24, 24, stride=1, expand_ratio=6).eval()
    x = torch.randn(2, 24, 8, 8)
    branch = same.project(same.dw(same.expand(x)))
    assert branch.abs().max() > 0.1 and torch.allclose(same(x), x + branch, rtol=0, atol=1e-6)  # y = x + F(x)
    torch.nn.init.zeros_(same.project[1].weight)  # zero the branch's BN scale: y = x exactly
    assert same.residual and torch.equal(same(x), x)
    assert isinstance(v2.InvertedResidual(32, 16, 1, 1).expand, torch.nn.Identity)
    assert not v2.InvertedResidual(24, 32, 1, 6).residual


def test_strided_inverted_residual_with_equal_channels_has_no_shortcut(mods):
    """Stride 2 with c_in = c_out (as inside no sequence of Table 2, but allowed): the shapes differ, so there is
    no shortcut; the block returns the projected branch alone, at half the resolution."""
    v2 = mods[V2]
    torch.manual_seed(1)
    block = v2.InvertedResidual(24, 24, stride=2, expand_ratio=6).eval()
    x = torch.randn(2, 24, 8, 8)
    out = block(x)
    assert not block.residual and out.shape == (2, 24, 4, 4)
    assert torch.equal(out, block.project(block.dw(block.expand(x))))
    odd = block(torch.randn(2, 24, 7, 7))
    assert odd.shape == (2, 24, 4, 4)  # padding 1, stride 2: ceil(7 / 2)


def depthwise_by_loop(x, weight, stride, padding):
    """Channel c of the output: channel c of x correlated with filter c, one plain conv per channel."""
    return torch.cat(
        [F.conv2d(x[:, c : c + 1], weight[c : c + 1], stride=stride, padding=padding) for c in range(x.shape[1])], dim=1
    )


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_conv_is_grouped_conv(mods, stride):
    """nn.Conv2d(C, C, 3, groups=C) = C separate single-channel convs = a dense conv whose weight is zero
    between different channels."""
    torch.manual_seed(1)
    layer = mods[V1].DepthwiseSeparable(6, 10, stride).double()
    dw = layer.dw
    assert dw.groups == 6 and dw.weight.shape == (6, 1, 3, 3)
    x = torch.randn(3, 6, 9, 9, dtype=torch.float64)
    out = dw(x)
    assert torch.allclose(out, depthwise_by_loop(x, dw.weight, stride, 1), rtol=0, atol=1e-12)
    dense = torch.zeros(6, 6, 3, 3, dtype=torch.float64)
    dense[range(6), range(6)] = dw.weight[:, 0]
    assert torch.allclose(out, F.conv2d(x, dense, stride=stride, padding=1), rtol=0, atol=1e-12)
    assert torch.allclose(out, F.conv2d(x, dw.weight, stride=stride, padding=1, groups=6), rtol=0, atol=1e-12)
    assert layer(x).shape == (3, 10, 9 // stride + 9 % stride, 9 // stride + 9 % stride)  # ceil(9 / stride)


def test_squeeze_excite_gates(mods):
    """Gates (B, C, 1, 1) in (0, 1), from the global average of each channel; output = x * gates."""
    torch.manual_seed(2)
    se = mods[EFF].SqueezeExcite(12, 3)
    x = torch.randn(4, 12, 5, 5) * 3
    s = se.gates(x)
    assert s.shape == (4, 12, 1, 1) and ((s > 0) & (s < 1)).all()
    assert torch.equal(se(x), x * s)
    assert not torch.allclose(s[0], s[1])  # the gates depend on the example
    shuffled = x.flatten(2)[:, :, torch.randperm(25)].reshape(x.shape)
    assert torch.allclose(se.gates(shuffled), s, atol=1e-6)  # only the spatial mean matters
    assert n_params(se) == 12 * 3 + 3 + 3 * 12 + 12


def test_stochastic_depth(mods):
    """Eval: the identity. Training: each example's branch is all zero or all h / (1 - p), kept with
    probability 1 - p, so the mean over examples is h (4 standard errors)."""
    sd = mods[EFF].StochasticDepth(0.3)
    torch.manual_seed(3)
    h = torch.randn(20000, 2, 3, 3)
    assert torch.equal(sd.eval()(h), h)
    out = sd.train()(h)
    kept = (out == h / 0.7).flatten(1).all(1)
    dropped = (out == 0).flatten(1).all(1)
    assert (kept | dropped).all()
    n = len(h)
    assert abs(kept.float().mean().item() - 0.7) < 4 * math.sqrt(0.21 / n)
    ratio = (out / h).mean().item()  # E[m / (1 - p)] = 1
    assert abs(ratio - 1) < 4 * math.sqrt(0.3 / 0.7 / n)
    assert torch.equal(mods[EFF].StochasticDepth(0.0).train()(h), h)


def reference_channels(c, w):
    """w c to the nearest multiple of 8 (halves up), at least 8, and if that is more than 10% below w c,
    one multiple higher."""
    q = max(8, 8 * math.floor(c * w / 8 + 0.5))
    return q + 8 if q < 0.9 * c * w else q


# The scaling rule written out independently of the script: (w, d) of B0..B7 as the reference lists them,
# B0's channels and blocks per stage (Table 1).
SCALING = [(1.0, 1.0), (1.0, 1.1), (1.1, 1.2), (1.2, 1.4), (1.4, 1.8), (1.6, 2.2), (1.8, 2.6), (2.0, 3.1)]
B0_CHANNELS, B0_BLOCKS = (16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1)


@pytest.mark.parametrize("k", range(8))
def test_efficientnet_compound_scaling(mods, k):
    eff = mods[EFF]
    w, d = SCALING[k]
    assert eff.COEFFICIENTS[f"efficientnet_b{k}"][:2] == (w, d)
    net = on_meta(eff.MODELS[f"efficientnet_b{k}"])
    assert [len(stage) for stage in net.stages] == [math.ceil(d * n) for n in B0_BLOCKS]
    assert [stage[-1].project[0].out_channels for stage in net.stages] == [
        reference_channels(c, w) for c in B0_CHANNELS
    ]
    assert net.stem[0].out_channels == reference_channels(32, w) and net.fc.in_features == reference_channels(1280, w)
    # squeeze width: a quarter of the block's input channels; drop probability 0.2 i / (number of blocks)
    blocks = [b for stage in net.stages for b in stage]
    for i, b in enumerate(blocks):
        c_in = b.expand[0].in_channels if isinstance(b.expand, torch.nn.Sequential) else b.dw[0].in_channels
        assert b.se.reduce.out_channels == max(1, c_in // 4)
        if b.residual:
            assert b.drop.p == pytest.approx(0.2 * i / len(blocks))


def test_efficientnet_b0_and_b7_tables(mods):
    """Spelled out: B0 is Table 1; B7 has 55 blocks and twice B0's channels."""
    b0 = on_meta(mods[EFF].efficientnet_b0)
    kernels = [stage[0].dw[0].kernel_size[0] for stage in b0.stages]
    strides = [stage[0].dw[0].stride[0] for stage in b0.stages]
    assert kernels == [3, 3, 5, 3, 5, 5, 3] and strides == [1, 2, 2, 2, 1, 2, 1]
    assert [len(s) for s in b0.stages] == [1, 2, 2, 3, 3, 4, 1]
    b7 = on_meta(mods[EFF].efficientnet_b7)
    assert [len(s) for s in b7.stages] == [4, 7, 7, 10, 10, 13, 4]
    assert [s[-1].project[0].out_channels for s in b7.stages] == [32, 48, 80, 160, 224, 384, 640]
    assert b7.stem[0].out_channels == 64 and b7.fc.in_features == 2560


@pytest.mark.parametrize(
    "script,name", [(V1, "mobilenet_v1"), (V2, "mobilenet_v2")] + [(EFF, f"efficientnet_b{k}") for k in range(8)]
)
def test_logits_shape(mods, script, name):
    """(N, num_classes) for 1 and 3 input channels: the canonical size and small_input 28x28 on the meta
    device, and a real CPU forward at 28x28 in the configuration the script trains."""
    fn, size = mods[script].MODELS[name], mods[script].RESOLUTION[name]
    for c in (1, 3):
        with torch.device("meta"):
            assert fn(num_classes=7, in_channels=c).eval()(torch.empty(2, c, size, size)).shape == (2, 7)
            assert fn(num_classes=7, in_channels=c, small_input=True)(torch.empty(2, c, 28, 28)).shape == (2, 7)
    torch.manual_seed(0)
    model = fn(num_classes=5, in_channels=1, small_input=True, **SMALL[script]).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_flags_exit(mods, script, capsys):
    """A bad value is an argparse error: exit code 2, the flag named."""
    for argv in (["--epochs", "0"], ["--width", "0"], ["--width", "nan"], ["--weight-decay", "-1"], ["--n-test", "0"]):
        with pytest.raises(SystemExit) as exc:
            mods[script].main(argv)
        assert exc.value.code == 2, argv
        assert f"argument {argv[0]}" in capsys.readouterr().err, argv


@pytest.mark.parametrize("script", SCRIPTS)
def test_evaluate_leaves_batchnorm_buffers_alone(mods, script):
    """`evaluate` uses the running statistics and does not update them, even when handed a model in training mode."""
    torch.manual_seed(6)
    fn = next(iter(mods[script].MODELS.values()))
    check_evaluate_keeps_batchnorm_buffers(
        mods[script], fn(num_classes=10, in_channels=1, small_input=True, **SMALL[script])
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_run(mods, script, tmp_path):
    """`--smoke`: one epoch on 2,000 real images at width 0.25: the loss falls, accuracy well above 0.1."""
    check_cnn_smoke_run(mods[script], tmp_path, min_acc=0.35, min_params=100_000)
