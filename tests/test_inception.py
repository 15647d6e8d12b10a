"""04-cnns Inception family: GoogLeNet (v1), Inception v3 and Inception-v4.

Parameter counts at each paper's configuration (meta device), output shapes at the canonical input size
(meta) and at 28x28 (real CPU forwards in the configuration each script trains), auxiliary outputs only in
training mode, GoogLeNet's weighted auxiliary loss, v3's label smoothing against torch's, the 1x1
convolution as a per-pixel linear layer, evaluation leaving BatchNorm's buffers alone, and each script's smoke run.
"""

import pytest
import torch
import torch.nn.functional as F
from gradcheck import rel_error
from smoke import check_cnn_smoke_run, check_evaluate_keeps_batchnorm_buffers
from torch.utils.flop_counter import FlopCounterMode

V1, V3, V4 = "04-cnns/inception_v1_torch.py", "04-cnns/inception_v3_torch.py", "04-cnns/inception_v4_torch.py"
SCRIPTS = [V1, V3, V4]
CANONICAL = {V1: 224, V3: 299, V4: 299}
SMALL = {V1: {"width": 1 / 8}, V3: {"width": 1 / 16}, V4: {"width": 1 / 16}}  # what --smoke trains

# GoogLeNet. torchvision's googlenet (no auxiliary heads) has 6,624,904 parameters (TV,
# docs/references.md) with a 3x3 conv in the "5x5" branch. The paper's 5x5 adds
# 25 - 9 = 16 weights per (5x5 reduce, 5x5) channel pair, Table 1:
#   16 * (16*32 + 32*96 + 16*48 + 24*64 + 24*64 + 32*64 + 32*128 + 32*128 + 48*128) = 16 * 23,808 = 380,928.
# Each auxiliary head: 1x1 conv c_in -> 128 + BN (c_in * 128 + 256), FC 2048 -> 1024 (2,098,176),
# FC 1024 -> 1000 (1,025,000); c_in = 512 (after 4a) and 528 (after 4d).
TV_GOOGLENET = 6_624_904
AUX_V1 = sum(c_in * 128 + 256 + 2048 * 1024 + 1024 + 1024 * 1000 + 1000 for c_in in (512, 528))
assert AUX_V1 == 3_188_968 + 3_191_016 == 6_379_984
PAPER_GOOGLENET = TV_GOOGLENET + 380_928  # 7,005,832
# Inception v3: 27,161,264 with the auxiliary head (TV), 23,834,568 without (CV); Inception-v4: 42,679,816
# (CV, timm). All three from docs/references.md.
COUNTS = {
    (V1, "googlenet", (("aux_logits", False),)): PAPER_GOOGLENET,
    (V1, "googlenet", ()): PAPER_GOOGLENET + AUX_V1,  # 13,385,816
    (V1, "googlenet", (("aux_logits", False), ("kernel5", 3))): TV_GOOGLENET,
    (V1, "googlenet", (("kernel5", 3),)): TV_GOOGLENET + AUX_V1,  # 13,004,888: torchvision with aux_logits
    (V3, "inception_v3", ()): 27_161_264,
    (V3, "inception_v3", (("aux_logits", False),)): 23_834_568,
    (V4, "inception_v4", ()): 42_679_816,
}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def mods(load_script):
    return {s: load_script(s) for s in SCRIPTS}


def test_models_dicts(mods):
    assert {(s, name) for s in SCRIPTS for name in mods[s].MODELS} == {(s, n) for s, n, _ in COUNTS}


@pytest.mark.parametrize("script,name,config", sorted(COUNTS))
def test_parameter_count(mods, script, name, config):
    with torch.device("meta"):
        model = mods[script].MODELS[name](**dict(config))
    assert n_params(model) == COUNTS[(script, name, config)]


def test_googlenet_5x5_difference_from_table_1(mods):
    """The docstring's 16 * 23,808 is the sum over MODULES (Table 1), and each module's 5x5 conv is 5x5."""
    v1 = mods[V1]
    cfgs = [m[1] for m in v1.MODULES if m != "M"]
    assert len(cfgs) == 9 and 16 * sum(red * out for _, _, _, red, out, _ in cfgs) == 380_928
    with torch.device("meta"):
        net = v1.googlenet()
    assert [net.blocks[n].b5[1][0].kernel_size for n, _ in (m for m in v1.MODULES if m != "M")] == [(5, 5)] * 9
    assert [
        net.blocks[n].b1[0].out_channels
        + net.blocks[n].b3[1][0].out_channels
        + net.blocks[n].b5[1][0].out_channels
        + net.blocks[n].bp[1][0].out_channels
        for n in ("3a", "3b", "4a", "4e", "5b")
    ] == [256, 480, 512, 832, 1024]  # Table 1's output depths


def test_inception_v4_block_count_by_hand(mods):
    """Inception-A at 384 channels, counted from Figure 4 (conv c_in -> c_out, k x k: c_in c_out k^2 + BN 2 c_out):
    pool proj 384*96 + 192 = 37,056; 1x1 37,056; 1x1 64 -> 3x3 96: 24,704 + 55,488; 1x1 64 -> 3x3 96 -> 3x3 96:
    24,704 + 55,488 + 83,136; total 317,632."""
    with torch.device("meta"):
        block = mods[V4].InceptionA(384, lambda c: c)
    assert n_params(block) == 2 * 37_056 + 24_704 + 55_488 + 24_704 + 55_488 + 83_136 == 317_632


@pytest.mark.parametrize("script", SCRIPTS)
def test_output_shapes(mods, script):
    """Canonical input (meta): logits in eval mode, (logits, aux...) in training mode with aux heads; small
    input 28x28 for 1 and 3 channels (meta); a real CPU forward at 28x28 in the smoke configuration."""
    fn = next(iter(mods[script].MODELS.values()))
    n_aux = {V1: 2, V3: 1, V4: 0}[script]
    size = CANONICAL[script]
    with torch.device("meta"):
        net = fn()
        x = torch.empty(2, 3, size, size)
        assert net.eval()(x).shape == (2, 1000)
        out = net.train()(x)
        if n_aux:
            assert isinstance(out, tuple) and len(out) == 1 + n_aux and all(o.shape == (2, 1000) for o in out)
            assert fn(aux_logits=False).train()(x).shape == (2, 1000)
        else:
            assert out.shape == (2, 1000)
        for c in (1, 3):
            small = fn(num_classes=7, in_channels=c, small_input=True)
            assert small.eval()(torch.empty(2, c, 28, 28)).shape == (2, 7)
            out = small.train()(torch.empty(2, c, 28, 28))
            assert (len(out) == 1 + n_aux) if n_aux else out.shape == (2, 7)
    torch.manual_seed(0)
    model = fn(num_classes=10, in_channels=1, small_input=True, **SMALL[script])
    x = torch.randn(2, 1, 28, 28)
    out = model.train()(x)
    outs = out if n_aux else (out,)
    assert len(outs) == 1 + n_aux and all(o.shape == (2, 10) and torch.isfinite(o).all() for o in outs)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 10)


def test_grid_sizes(mods):
    """v3 and v4: Inception stages at 35, 17, 8 pixels for 299x299 and at 13, 6, 2 for small 28x28 input."""
    with torch.device("meta"):
        for small, (a, b, c) in [(False, (35, 17, 8)), (True, (13, 6, 2))]:
            size = 28 if small else 299
            v3 = mods[V3].inception_v3(small_input=small)
            h = v3.stem(torch.empty(1, 3, size, size))
            assert h.shape[-1] == a and v3.blocks17[0](h).shape == (1, 256, a, a)
            h = v3.blocks17(h)
            assert h.shape == (1, 768, b, b) and v3.blocks8(h).shape == (1, 2048, c, c)
            v4 = mods[V4].inception_v4(small_input=small)
            shapes = []
            h = torch.empty(1, 3, size, size)
            for block in v4.features:
                h = block(h)
                shapes.append(tuple(h.shape[1:]))
            assert shapes[0] == (384, a, a) and shapes[5] == (1024, b, b) and shapes[-1] == (1536, c, c)


def test_factorised_kernels(mods):
    """v3's 17x17 modules hold no 7x7 conv, only 1x7 / 7x1 pairs; its 8x8 modules split 1x3 / 3x1."""
    with torch.device("meta"):
        v3 = mods[V3].inception_v3()
    kernels = lambda m: [c.kernel_size for c in m.modules() if isinstance(c, torch.nn.Conv2d)]  # noqa: E731
    b = kernels(v3.blocks17[-1])
    assert b.count((1, 7)) == 3 and b.count((7, 1)) == 3 and (7, 7) not in b
    c = kernels(v3.blocks8[-1])
    assert c.count((1, 3)) == 2 and c.count((3, 1)) == 2


def test_1x1_conv_is_a_per_pixel_linear_layer(mods):
    """A 1x1 conv (the b1 branch of an Inception module) = the same matrix applied to every pixel's channels."""
    torch.manual_seed(1)
    block = mods[V1].Inception(12, 5, 4, 6, 2, 3, 4).double().eval()
    conv = block.b1[0]
    x = torch.randn(2, 12, 7, 7, dtype=torch.float64)
    per_pixel = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x)
    assert rel_error(conv(x), per_pixel) <= 1e-12
    out = block(x)
    assert out.shape == (2, 5 + 6 + 3 + 4, 7, 7) and torch.equal(out[:, :5], block.b1(x))


def test_googlenet_loss_weights_aux_by_0_3(mods):
    v1 = mods[V1]
    torch.manual_seed(2)
    model = v1.googlenet(num_classes=10, in_channels=1, small_input=True, width=1 / 8).train()
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 3, 9, 3])
    torch.manual_seed(3)
    logits, aux1, aux2 = model(x)
    torch.manual_seed(3)  # the same dropout masks
    loss = v1.googlenet_loss(model(x), y)
    expected = F.cross_entropy(logits, y) + 0.3 * (F.cross_entropy(aux1, y) + F.cross_entropy(aux2, y))
    assert torch.allclose(loss, expected, rtol=1e-6, atol=0)
    assert not torch.allclose(loss, F.cross_entropy(logits, y))  # the auxiliary terms count
    model.eval()
    assert torch.equal(v1.googlenet_loss(model(x), y), F.cross_entropy(model(x), y))


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.35])
def test_label_smoothing_matches_torch(mods, eps):
    v3 = mods[V3]
    torch.manual_seed(4)
    logits, aux = torch.randn(2, 16, 10, dtype=torch.float64) * 3
    y = torch.randint(0, 10, (16,))
    ours = v3.smoothed_cross_entropy(logits, y, eps)
    assert rel_error(ours, F.cross_entropy(logits, y, label_smoothing=eps)) <= 1e-14
    both = v3.inception_v3_loss((logits, aux), y, eps)
    expected = F.cross_entropy(logits, y, label_smoothing=eps) + 0.3 * F.cross_entropy(aux, y, label_smoothing=eps)
    assert rel_error(both, expected) <= 1e-14
    assert rel_error(v3.inception_v3_loss(logits, y, eps), ours) == 0


def test_flop_counter_in_eval_mode(mods):
    """What benchmarks/cnn_zoo.py does: count FLOPs of one eval forward at the canonical size on the meta device
    (FlopCounterMode counts 2 per mult-add). The 5x5 convs cost 16 mult-adds per (reduce, out) channel pair and
    output pixel more than 3x3s; Table 1's modules run at 28x28 (3a, 3b), 14x14 (4a-4e) and 7x7 (5a, 5b):
    16 * (784 * (16*32 + 32*96) + 196 * (16*48 + 24*64 + 24*64 + 32*64 + 32*128) + 49 * (32*128 + 48*128))
    = 16 * 5,268,480 = 84,295,680. torchvision's 3x3 variant meets the paper's "1.5 billion multiply-adds"."""
    macs = {}
    for script in SCRIPTS:
        for name, fn in mods[script].MODELS.items():
            for config in [{}, {"kernel5": 3}] if name == "googlenet" else [{}]:
                with torch.device("meta"):
                    model = fn(**config).eval()
                    size = CANONICAL[script]
                    with FlopCounterMode(display=False) as counter:
                        model(torch.empty(1, 3, size, size))
                macs[name + "_k3" * bool(config)] = counter.get_total_flops() // 2
    assert macs["googlenet"] - macs["googlenet_k3"] == 16 * 5_268_480 == 84_295_680
    assert round(macs["googlenet_k3"] / 1e9, 1) == 1.5
    assert macs["googlenet"] < macs["inception_v3"] < macs["inception_v4"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_evaluate_leaves_batchnorm_buffers_alone(mods, script):
    """`evaluate` uses the running statistics and does not update them, even when handed a model in training mode
    (GoogLeNet's and v3's auxiliary heads, whose BatchNorms run only in training, included)."""
    torch.manual_seed(6)
    fn = next(iter(mods[script].MODELS.values()))
    check_evaluate_keeps_batchnorm_buffers(
        mods[script], fn(num_classes=10, in_channels=1, small_input=True, **SMALL[script])
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_flags_exit(mods, script, capsys):
    """A bad value is an argparse error: exit code 2, the flag named."""
    bad = [["--epochs", "0"], ["--width", "0"], ["--lr", "inf"], ["--batch-size", "0"], ["--seed", "-1"]]
    if script == V3:
        bad += [["--label-smoothing", "1"], ["--label-smoothing", "-0.1"]]
    for argv in bad:
        with pytest.raises(SystemExit) as exc:
            mods[script].main(argv)
        assert exc.value.code == 2, argv
        assert f"argument {argv[0]}" in capsys.readouterr().err, argv


@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_run(mods, script, tmp_path):
    """`--smoke`: one epoch on real images with a narrow model: the loss falls, accuracy well above 0.1."""
    check_cnn_smoke_run(mods[script], tmp_path, min_acc=0.3, min_params=50_000)
