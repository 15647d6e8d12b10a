"""04-cnns case studies: VGG, ResNeXt, DenseNet-BC and pre-activation ResNet.

Parameter counts at each paper's configuration (built on the meta device: no memory, no compute), logits
shapes for 1- and 3-channel inputs, ResNeXt's Figure 3 equivalence (split-transform-merge = grouped
convolution, same weights), the clean identity path of a pre-activation unit, what a dense layer computes
and dense connectivity, the hand-written augmentation, evaluation leaving BatchNorm's buffers alone, and
each script's smoke run.
"""

import pytest
import torch
import torch.nn.functional as F
from gradcheck import rel_error
from smoke import check_cnn_smoke_run, check_evaluate_keeps_batchnorm_buffers, randomise_batchnorms

VGG, RESNEXT, DENSENET, PREACT = (
    "04-cnns/vgg_torch.py",
    "04-cnns/resnext_torch.py",
    "04-cnns/densenet_torch.py",
    "04-cnns/resnet_v2_torch.py",
)
SCRIPTS = [VGG, RESNEXT, DENSENET, PREACT]

# torchvision's published `num_params` of its ImageNet weights ("TV"): the six marked * are also in
# docs/references.md; the others from the torchvision model pages
# (https://pytorch.org/vision/stable/models.html, e.g. .../generated/torchvision.models.vgg19_bn.html).
TV = {
    (VGG, "vgg11"): 132_863_336,  # *
    (VGG, "vgg13"): 133_047_848,
    (VGG, "vgg16"): 138_357_544,  # *
    (VGG, "vgg19"): 143_667_240,
    (VGG, "vgg11_bn"): 132_868_840,  # *
    (VGG, "vgg13_bn"): 133_053_736,
    (VGG, "vgg16_bn"): 138_365_992,  # *
    (VGG, "vgg19_bn"): 143_678_248,
    (RESNEXT, "resnext50_32x4d"): 25_028_904,  # *
    (RESNEXT, "resnext101_32x8d"): 88_791_336,
    (RESNEXT, "resnext101_64x4d"): 83_455_272,
    (DENSENET, "densenet121"): 7_978_856,  # *
    (DENSENET, "densenet161"): 28_681_000,
    (DENSENET, "densenet169"): 14_149_480,
    (DENSENET, "densenet201"): 20_013_928,
}
RESNET = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}  # TV (18-50: *)

# Pre-activation ResNets have no published ImageNet count. Their convs and classifier are ResNet v1's
# (TV count above); only the BatchNorms move (2 parameters per channel):
#   v1: stem BN(64); BN(c_out) after every conv; BN(c_out) on each projection shortcut.
#   v2: stem BN(64) (also the first unit's pre-activation); BN(c_in) before a unit's first conv (not in
#       the first unit), BN(planes) before its other convs; projections are bare convs; final BN(c_last).
# Basic units, widths 64..512: a unit costs 4 c (v1) or 2 (c_in + c) (v2).
#   18 (2,2,2,2): v1 = 128 + 4(2*64 + 2*128 + 2*256 + 2*512) + 2(128 + 256 + 512)                = 9,600
#                 v2 = 128 + [128 + 256] + [384 + 512] + [768 + 1024] + [1536 + 2048] + 1024     = 7,808
#   34 (3,4,6,3): v1 = 128 + 4(3*64 + 4*128 + 6*256 + 3*512) + 1,792                             = 17,024
#                 v2 = 128 + [128 + 2*256] + [384 + 3*512] + [768 + 5*1024] + [1536 + 2*2048] + 1024 = 15,232
# Bottleneck units of width w (outputs 4w): v1 = 12 w per unit + 8 w per stage (projection) + 128;
# v2 = 2 (c_in + 2 w) per unit: stage 1 [256 + 768 k], stage 2 [1024 + 1536 k], stage 3 [2048 + 3072 k],
# stage 4 [4096 + 6144 k] for k further units, + 128 stem + 4,096 final BN.
#   50 (3,4,6,3):   v1 = 128 + 12(3*64 + 4*128 + 6*256 + 3*512) + 7,680 = 53,120;  v2 = 45,440
#   101 (3,4,23,3): v1 = 128 + 12(3*64 + 4*128 + 23*256 + 3*512) + 7,680 = 105,344; v2 = 97,664
#   152 (3,8,36,3): v1 = 128 + 12(3*64 + 8*128 + 36*256 + 3*512) + 7,680 = 151,424; v2 = 143,744
PREACT_COUNTS = {
    (PREACT, "preact_resnet18"): RESNET[18] - 9_600 + 7_808,
    (PREACT, "preact_resnet34"): RESNET[34] - 17_024 + 15_232,
    (PREACT, "preact_resnet50"): RESNET[50] - 53_120 + 45_440,
    (PREACT, "preact_resnet101"): RESNET[101] - 105_344 + 97_664,
    (PREACT, "preact_resnet152"): RESNET[152] - 151_424 + 143_744,
}
# CIFAR models (10 classes) as their papers print them: He et al. 2016, Table 3: 1.7M (ResNet-110 and
# -164, rounded to 0.1M); Xie et al. 2017, section 5.2 / Table 7: ResNeXt-29 8x64d 34.4M, 16x64d 68.1M
# (68,155,210 and 34,426,698 here: the paper's figures are truncated to 0.1M).
CIFAR = {
    (PREACT, "preact_resnet110"): (1.7, round),
    (PREACT, "preact_resnet164"): (1.7, round),
    (RESNEXT, "resnext29_8x64d"): (34.4, int),
    (RESNEXT, "resnext29_16x64d"): (68.1, int),
}
EXACT = {**TV, **PREACT_COUNTS}
# the configuration each script trains, for real CPU forwards at 28x28
SMALL = {VGG: {"width": 0.125}, RESNEXT: {"width": 1 / 32}, DENSENET: {"growth_rate": 4}, PREACT: {"width": 1 / 8}}
SCRIPT_ARCH = {VGG: "vgg11_bn", RESNEXT: "resnext29_8x64d", DENSENET: "densenet121", PREACT: "preact_resnet18"}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def on_meta(fn, **kwargs):
    with torch.device("meta"):
        return fn(**kwargs)


@pytest.fixture(scope="module")
def mods(load_script):
    return {s: load_script(s) for s in SCRIPTS}


def test_every_constructor_has_a_reference_count(mods):
    listed = {(s, name) for s in SCRIPTS for name in mods[s].MODELS}
    assert listed == set(EXACT) | set(CIFAR)


@pytest.mark.parametrize("script,name", sorted(EXACT))
def test_parameter_count(mods, script, name):
    assert n_params(on_meta(mods[script].MODELS[name])) == EXACT[(script, name)]


@pytest.mark.parametrize("script,name", sorted(CIFAR))
def test_cifar_parameter_count(mods, script, name):
    millions, rounding = CIFAR[(script, name)]
    count = n_params(on_meta(mods[script].MODELS[name], num_classes=10))
    assert rounding(count / 1e5) / 10 == millions


@pytest.mark.parametrize("layers,resnet", [((3, 4, 6, 3), 50), ((3, 4, 23, 3), 101)])
def test_resnext_with_one_path_is_resnet(mods, layers, resnet):
    """Cardinality 1, path width 64: the grouped conv is a plain conv, the block ResNet's bottleneck."""
    rx = mods[RESNEXT]
    assert n_params(on_meta(rx.resnext50_32x4d, cardinality=1, base_width=64)) == RESNET[50]
    assert n_params(on_meta(rx.ResNeXt, layers=layers, cardinality=1, base_width=64)) == RESNET[resnet]


@pytest.mark.parametrize("script,name", sorted(set(EXACT) | set(CIFAR)))
def test_logits_shape(mods, script, name):
    """(N, num_classes) for 1 and 3 input channels: 224x224 and small_input 28x28 on the meta device, and a
    real CPU forward at 28x28 in the configuration the script trains."""
    fn = mods[script].MODELS[name]
    for c in (1, 3):
        with torch.device("meta"):
            assert fn(num_classes=7, in_channels=c)(torch.empty(2, c, 224, 224)).shape == (2, 7)
            assert fn(num_classes=7, in_channels=c, small_input=True)(torch.empty(2, c, 28, 28)).shape == (2, 7)
        torch.manual_seed(0)
        model = fn(num_classes=5, in_channels=c, small_input=True, **SMALL[script]).eval()
        with torch.no_grad():
            out = model(torch.randn(2, c, 28, 28))
        assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_vgg_configurations(mods):
    """Weight layers 11, 13, 16, 19 (convs + 3 FC); 5 pools at 224 -> 7x7, 4 with small_input (28 -> 1)."""
    vgg = mods[VGG]
    for cfg, depth in zip("ABDE", (11, 13, 16, 19)):
        assert sum(v != "M" for v in vgg.CONFIGS[cfg]) + 3 == depth
    with torch.device("meta"):
        assert vgg.vgg16().features(torch.empty(1, 3, 224, 224)).shape == (1, 512, 7, 7)
        assert vgg.vgg16(in_channels=1, small_input=True).features(torch.empty(1, 1, 28, 28)).shape == (1, 512, 1, 1)
        bn = vgg.vgg11_bn()
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules()) == 8
    assert all(m.bias is not None for m in bn.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("stride,c_in", [(1, 24), (2, 12)])
def test_resnext_split_transform_merge_equals_grouped_conv(mods, stride, c_in):
    """Figure 3: C = 4 branches of width d = 3 (form a) with the weights of the grouped block (form c)
    give the same outputs and input gradients, with batch statistics and with running statistics."""
    rx = mods[RESNEXT]
    torch.manual_seed(1)
    block = rx.Block(c_in, 24, cardinality=4, d=3, stride=stride).double()
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial affine and running statistics
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    split = rx.split_block(block)
    assert len(split.branches) == 4 and split.branches[0][0].out_channels == 3
    assert n_params(split) == n_params(block)
    x = torch.randn(5, c_in, 9, 9, dtype=torch.float64)
    up = torch.randn(5, 24, 9 if stride == 1 else 5, 9 if stride == 1 else 5, dtype=torch.float64)
    for train in (False, True):
        block.train(train), split.train(train)
        outs = []
        for m in (block, split):
            xr = x.clone().requires_grad_(True)
            y = m(xr)
            outs.append((y.detach(), torch.autograd.grad(y, xr, up)[0]))
        assert rel_error(outs[0][0], outs[1][0]) <= 1e-12
        assert rel_error(outs[0][1], outs[1][1]) <= 1e-12
        assert rel_error(outs[0][0], torch.relu(block.shortcut(x))) > 0.1  # the branches do contribute


@pytest.mark.parametrize("unit,c_in,planes", [("PreActBlock", 16, 16), ("PreActBottleneck", 32, 8)])
def test_preact_unit_with_zero_residual_is_identity(mods, unit, c_in, planes):
    """Zero the residual branch's last conv: the unit returns x exactly (nothing after the addition), in
    training mode; the original ReLU(x + F(x)) would return ReLU(x)."""
    cls = getattr(mods[PREACT], unit)
    torch.manual_seed(2)
    block = cls(c_in, planes).train()
    x = torch.randn(4, c_in, 6, 6)
    assert not torch.equal(block(x), x)
    last = block.conv2 if unit == "PreActBlock" else block.conv3
    torch.nn.init.zeros_(last.weight)
    assert block.shortcut is None and torch.equal(block(x), x)
    xr = x.clone().requires_grad_(True)
    up = torch.randn_like(x)
    assert torch.equal(torch.autograd.grad(block(xr), xr, up)[0], up)  # dE/dx_l = dE/dx_L * 1


def test_preact_network_layout(mods):
    """Only the first unit skips its own BN-ReLU (the stem's serves); a BN-ReLU follows the last unit."""
    with torch.device("meta"):
        net = mods[PREACT].preact_resnet50()
    units = list(net.stages)
    assert units[0].bn1 is None and all(u.bn1 is not None for u in units[1:])
    assert net.norm.num_features == 2048 and [u.conv2.stride for u in units].count((2, 2)) == 3


def bn_by_hand(bn, h, training):
    """BatchNorm written out: batch statistics (biased variance) in training, running statistics in eval."""
    if training:
        mean, var = h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    shape = (1, -1, 1, 1)
    return (h - mean.view(shape)) / torch.sqrt(var.view(shape) + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)


def dense_layer_by_hand(layer, x, training):
    """H_l = BN-ReLU-conv1x1 - BN-ReLU-conv3x3 from functional ops and the layer's own weights."""
    h = F.conv2d(torch.relu(bn_by_hand(layer.bn1, x, training)), layer.conv1.weight)  # (B, bn_size k, H, W)
    return F.conv2d(torch.relu(bn_by_hand(layer.bn2, h, training)), layer.conv2.weight, padding=1)  # (B, k, H, W)


def test_dense_layer_computes_bn_relu_conv_twice(mods):
    """A dense layer's k new maps = BN-ReLU-conv1x1-BN-ReLU-conv3x3 of its input, built here from functional ops
    with the layer's weights, in eval mode (running statistics) and in training mode (batch statistics); a
    dense block's output is its input followed by each layer's maps computed that way on all maps before it."""
    dn = mods[DENSENET]
    torch.manual_seed(4)
    layer = dn.DenseLayer(6, growth_rate=4, bn_size=3).double()
    randomise_batchnorms(layer)
    x = torch.randn(5, 6, 7, 7, dtype=torch.float64)
    for training in (False, True):
        layer.train(training)
        out = layer(x)
        assert out.shape == (5, 4, 7, 7)
        assert rel_error(out, dense_layer_by_hand(layer, x, training)) <= 1e-12, training
    block = dn.DenseBlock(3, 6, growth_rate=4, bn_size=3).double().eval()
    randomise_batchnorms(block)
    features = [x]
    for layer in block.layers:
        features.append(dense_layer_by_hand(layer, torch.cat(features, dim=1), training=False))
    out = block(x)
    assert out.shape == (5, 6 + 3 * 4, 7, 7) and torch.equal(out[:, :6], x)
    assert rel_error(out, torch.cat(features, dim=1)) <= 1e-12


def test_dense_block_concatenates(mods):
    """A block of n layers adds n k channels and passes its input through verbatim (x_0 in [x_0, ..., x_n])."""
    dn = mods[DENSENET]
    torch.manual_seed(3)
    block = dn.DenseBlock(5, 6, growth_rate=4, bn_size=4)
    x = torch.randn(2, 6, 7, 7)
    out = block(x)
    assert out.shape == (2, 6 + 5 * 4, 7, 7) and torch.equal(out[:, :6], x)
    assert [layer.conv1.in_channels for layer in block.layers] == [6, 10, 14, 18, 22]
    assert block.layers[0].conv1.out_channels == 16  # bottleneck: bn_size k
    with torch.device("meta"):
        net = dn.densenet121(compression=0.5)
        transitions = [m for m in net.features if isinstance(m, dn.Transition)]
    assert [t[2].out_channels for t in transitions] == [128, 256, 512]  # (64 + 6*32) / 2, (128 + 12*32) / 2, ...
    assert net.norm.num_features == 512 + 16 * 32
    with pytest.raises(ValueError, match="compression"):
        dn.densenet121(compression=0)


@pytest.mark.parametrize("script", SCRIPTS)
def test_augment_is_a_padded_crop_or_its_mirror(mods, script):
    """Every output image is a 28x28 window of the zero-padded input (offsets 0..4), maybe flipped."""
    aug = mods[script].augment
    x = torch.rand(16, 2, 28, 28)
    out = aug(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, aug(x, torch.Generator().manual_seed(0)))
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    found = set()
    for i in range(16):
        for dy in range(5):
            for dx in range(5):
                window = xp[i, :, dy : dy + 28, dx : dx + 28]
                for flip in (False, True):
                    if torch.equal(out[i], window.flip(2) if flip else window):
                        found.add((i, dy, dx, flip))
        assert any(f[0] == i for f in found), i
    assert len({f[1:3] for f in found}) > 3 and len({f[3] for f in found}) == 2


@pytest.mark.parametrize("script", SCRIPTS)
def test_evaluate_leaves_batchnorm_buffers_alone(mods, script):
    """`evaluate` uses the running statistics and does not update them, even when handed a model in training mode."""
    torch.manual_seed(6)
    model = mods[script].MODELS[SCRIPT_ARCH[script]](num_classes=10, in_channels=1, small_input=True, **SMALL[script])
    check_evaluate_keeps_batchnorm_buffers(mods[script], model)


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_flags_exit(mods, script, capsys):
    """A bad value is an argparse error: exit code 2, the flag named."""
    bad = [["--epochs", "0"], ["--lr", "nan"], ["--weight-decay", "-1"], ["--n-train", "0"], ["--threads", "0"]]
    if script == DENSENET:
        bad += [["--compression", "1.5"], ["--growth-rate", "0"]]
    if script != DENSENET:
        bad += [["--width", "0"], ["--width", "inf"]]
    for argv in bad:
        with pytest.raises(SystemExit) as exc:
            mods[script].main(argv)
        assert exc.value.code == 2, argv
        assert f"argument {argv[0]}" in capsys.readouterr().err, argv


@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_run(mods, script, tmp_path):
    """`--smoke`: one epoch on real images with the smallest configuration: the loss falls, accuracy >> 0.1."""
    check_cnn_smoke_run(mods[script], tmp_path, min_acc=0.3, min_params=10_000)
