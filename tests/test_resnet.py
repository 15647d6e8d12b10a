"""04-cnns/resnet_torch.py: parameter counts against the paper and torchvision, logits shapes, and the flagship
trainer's mechanics: the schedule's values, learning, smoke metrics, Ctrl-C and exact resume, the refusal of a
checkpoint from another configuration, the NaN guard and 2-process DDP on CPU (gloo). The trainer has no test-only
flags: tests reach a chosen step by replacing its `augment` (monkeypatch), and the DDP test runs this file under
torchrun as a script that records each process's weights."""

import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data import fmnist

SCRIPT = "04-cnns/resnet_torch.py"
ROOT = Path(__file__).resolve().parent.parent
# A fast trainer run: 512 images, ResNet-20 at width 8 (the --smoke default), batch 32: 16 steps per epoch.
FAST = ["--smoke", "--n-train", "512", "--threads", "1"]

# torchvision's published `num_params` (ImageNet, 3 channels, 1000 classes). 18, 34, 50: docs/references.md;
# 101 and 152: torchvision.models ResNet101_Weights / ResNet152_Weights metadata
# (also pytorch.org/hub/pytorch_vision_resnet).
IMAGENET_COUNTS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}
# He et al. 2015, Table 6 (CIFAR-10, 10 classes, 3 channels): parameters in millions, two significant figures.
TABLE6 = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7}


@pytest.fixture(scope="module")
def rn(load_script):
    return load_script(SCRIPT)


def count(model):
    return sum(p.numel() for p in model.parameters())


def on_meta(fn, **kw):
    with torch.device("meta"):
        return fn(**kw)


@pytest.mark.parametrize("name", list(IMAGENET_COUNTS))
def test_imagenet_parameter_counts(rn, name):
    assert count(on_meta(rn.MODELS[name])) == IMAGENET_COUNTS[name]


def cifar_count_by_hand(n, c_in=3, classes=10):
    """Section 4.2 with option A shortcuts (no parameters): 3x3 convs without bias, BN (2 per channel), fc."""
    convs = 9 * (c_in * 16 + 2 * n * 16 * 16 + 16 * 32 + (2 * n - 1) * 32 * 32 + 32 * 64 + (2 * n - 1) * 64 * 64)
    bns = 2 * (16 + 2 * n * (16 + 32 + 64))  # the stem's BN and two per block
    return convs + bns + 64 * classes + classes


@pytest.mark.parametrize("depth", list(TABLE6))
def test_cifar_parameter_counts(rn, depth):
    """Exact count from the paper's layer table, and Table 6 when rounded to two significant figures as the
    paper does (option B projections would add 2,752 parameters and make ResNet-32 0.47M)."""
    n = count(rn.MODELS[f"resnet{depth}"](num_classes=10))
    assert n == cifar_count_by_hand((depth - 2) // 6)
    assert float(f"{n / 1e6:.2g}") == TABLE6[depth]
    assert not any(
        isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) for m in rn.MODELS[f"resnet{depth}"]().modules()
    )


def test_models_registry(rn):
    assert set(rn.MODELS) == {f"resnet{d}" for d in (18, 34, 50, 101, 152, 20, 32, 44, 56, 110)}
    with pytest.raises(ValueError, match="6n"):
        rn.cifar_resnet(21)


@pytest.mark.parametrize("name", list(IMAGENET_COUNTS))
@pytest.mark.parametrize("c", [1, 3])
def test_imagenet_logits_shapes(rn, name, c):
    """224x224 with the ImageNet stem (on meta: shapes without arithmetic) and 28x28 with small_input."""
    x224 = torch.empty(2, c, 224, 224, device="meta")
    assert on_meta(rn.MODELS[name], num_classes=7, in_channels=c).eval()(x224).shape == (2, 7)
    x28 = torch.empty(2, c, 28, 28, device="meta")
    assert on_meta(rn.MODELS[name], num_classes=10, in_channels=c, small_input=True).eval()(x28).shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet20", "resnet110"])
@pytest.mark.parametrize("c", [1, 3])
def test_small_input_forward_on_cpu(rn, name, c):
    """Real arithmetic at 28x28, batch 2: finite logits of the right shape; the stem keeps 28x28 (no pool)."""
    torch.manual_seed(0)
    model = rn.MODELS[name](num_classes=10, in_channels=c, small_input=True).eval()
    x = torch.randn(2, c, 28, 28)
    with torch.no_grad():
        assert model.stem(x).shape[-2:] == (28, 28)
        out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])


def test_imagenet_stem_and_stage_shapes(rn):
    """Table 1 at 224x224: 56x56 after the stem, then 56, 28, 14, 7 pixels; Bottleneck outputs 4 x width."""
    x = torch.empty(1, 3, 224, 224, device="meta")
    for name, widths in [("resnet18", [64, 128, 256, 512]), ("resnet50", [256, 512, 1024, 2048])]:
        model = on_meta(rn.MODELS[name])
        h = model.stem(x)
        assert h.shape == (1, 64, 56, 56)
        for stage, w, size in zip(model.stages, widths, [56, 28, 14, 7]):
            h = stage(h)
            assert h.shape == (1, w, size, size)


def test_option_a_shortcut(rn):
    """Option A keeps every other pixel of the input and appends zero channels; it has no parameters."""
    x = torch.randn(2, 3, 6, 6)
    y = rn.PadShortcut(3, 5, 2)(x)
    assert y.shape == (2, 5, 3, 3)
    assert torch.equal(y[:, :3], x[:, :, ::2, ::2]) and torch.equal(y[:, 3:], torch.zeros(2, 2, 3, 3))


def test_block_with_zero_residual_is_relu_identity(rn):
    """With the last BN's scale at 0, F(x) = 0 and a block computes ReLU(x): the identity the paper says is easy."""
    for block in (rn.BasicBlock(8, 8), rn.Bottleneck(32, 8)):
        last = block.conv2[1] if isinstance(block, rn.BasicBlock) else block.conv3[1]
        torch.nn.init.zeros_(last.weight)
        x = torch.randn(2, block.conv1[0].in_channels, 5, 5)
        assert torch.equal(block.eval()(x), F.relu(x))


def test_augment(rn):
    """Crops are shifts by at most 2 pixels (with zeros coming in), flips mirror; the same generator seed repeats."""
    x = torch.rand(64, 1, 28, 28) + 0.5  # no zeros inside the images
    out = rn.augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal(out, rn.augment(x, torch.Generator().manual_seed(0)))
    n_flipped = 0
    for a, b in zip(x[:, 0], out[:, 0]):
        found = []
        for flip in (False, True):
            src = a.flip(1) if flip else a
            padded = F.pad(src, (2, 2, 2, 2))
            found += [flip for i in range(5) for j in range(5) if torch.equal(padded[i : i + 28, j : j + 28], b)]
        assert len(found) == 1
        n_flipped += found[0]
    assert 16 < n_flipped < 48


def test_epoch_batches_shard_and_depend_only_on_seed_epoch(rn):
    """One permutation per (seed, epoch), the same on every rank; ranks take disjoint shards of equal length."""
    one = rn.epoch_batches(103, 10, 0, 3)
    assert [len(b) for b in one] == [10] * 10 + [3]
    assert sorted(np.concatenate(one)) == list(range(103))
    assert np.array_equal(np.concatenate(one), np.concatenate(rn.epoch_batches(103, 10, 0, 3)))
    assert not np.array_equal(np.concatenate(one), np.concatenate(rn.epoch_batches(103, 10, 0, 4)))
    r0, r1 = rn.epoch_batches(103, 10, 0, 3, 0, 2), rn.epoch_batches(103, 10, 0, 3, 1, 2)
    assert len(r0) == len(r1) == 11 and all(len(a) == len(b) <= 5 for a, b in zip(r0, r1))
    s0, s1 = set(np.concatenate(r0)), set(np.concatenate(r1))
    assert not s0 & s1 and len(s0 | s1) == 102
    assert np.array_equal(np.concatenate(r0), np.concatenate(one)[0:102:2])


def test_warmup_cosine(rn):
    """Warm-up of W = 4 steps, then cosine over the T - W = 16 steps left: (s + 1) / W, then (1 + cos(pi (s - W) /
    (T - W))) / 2, exactly at the ends, at half the peak midway through the decay."""
    f = rn.warmup_cosine
    assert f(0, 4, 20) == 0.25  # the first step: 1 / W of the peak, never 0
    assert f(1, 4, 20) == 0.5  # mid-warm-up
    assert f(3, 4, 20) == 1.0  # the last warm-up step reaches the peak
    assert f(4, 4, 20) == 1.0  # the first cosine step: cos 0 = 1
    assert f(12, 4, 20) == pytest.approx(0.5, abs=1e-15)  # halfway through the decay: cos(pi / 2) = 0
    assert f(8, 4, 20) == pytest.approx((1 + 2**-0.5) / 2, abs=1e-15)  # a quarter through: cos(pi / 4)
    assert f(19, 4, 20) == pytest.approx((1 + np.cos(np.pi * 15 / 16)) / 2, abs=1e-15)  # the last step: 0.0096
    assert f(20, 4, 20) == pytest.approx(0.0, abs=1e-15)  # after the last step (the final lr logged): 0
    assert all(f(s, 4, 20) > f(s + 1, 4, 20) for s in range(4, 20))
    assert f(0, 0, 10) == 1.0 and f(5, 0, 10) == pytest.approx(0.5, abs=1e-15)  # no warm-up: cosine from step 0


@pytest.mark.parametrize("name,kw", [("resnet20", {"width": 8}), ("resnet50", {"small_input": True, "width": 8})])
def test_loss_decreases_on_a_fixed_batch(rn, name, kw):
    torch.manual_seed(0)
    model = rn.MODELS[name](num_classes=10, in_channels=1, **kw)
    x, y = torch.randn(32, 1, 16, 16), torch.randint(0, 10, (32,))  # 16x16: all blocks, a third of 28x28's cost
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(20):  # memorise 32 random labels
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]


def test_smoke_run(rn, tmp_path):
    m = rn.main(["--smoke", "--threads", "1", "--out-dir", str(tmp_path)])
    assert m["arch"] == "resnet20" and m["params"] == count(rn.resnet20(10, 1, width=8))
    assert m["final_train_loss"] < m["first_loss"]
    assert m["test_acc"] > 0.4  # chance: 0.1
    assert m["history"]["lr"] == [pytest.approx(0.0, abs=1e-15)]  # the cosine has ended at 0 after the last step
    assert json.loads((tmp_path / "metrics.json").read_text())["test_acc"] == m["test_acc"]
    assert (tmp_path / "learning_curves.png").stat().st_size > 10_000
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ck["epoch"] == 1 and set(ck) >= {"model", "optimizer", "scheduler", "rng", "history", "config"}
    assert ck["scheduler"]["last_epoch"] == 64  # 2048 images / batch 32
    assert ck["config"]["n_train"] == 2048 and ck["config"]["base_channels"] == 8


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def break_augment_at(monkeypatch, rn, call, fault):
    """Make the `call`-th call (from 1) of rn.augment, the per-step augmentation, return fault(images) instead:
    a way into the training loop at a chosen step, without any hook in the script."""
    augment, calls = rn.augment, []

    def broken(x, gen):
        calls.append(1)
        return fault(augment(x, gen)) if len(calls) == call else augment(x, gen)

    monkeypatch.setattr(rn, "augment", broken)


def ctrl_c(x):
    raise KeyboardInterrupt


@pytest.fixture(scope="module")
def stopped(rn, tmp_path_factory):
    """A FAST run of 2 epochs (16 steps each) stopped by Ctrl-C at step 20 (in epoch 2): its out-dir, exit code,
    stderr, and a pristine copy of that out-dir (epoch 1's checkpoint) for the tests that resume or refuse."""
    out, pristine = tmp_path_factory.mktemp("stopped"), tmp_path_factory.mktemp("pristine")
    argv = [*FAST, "--epochs", "2", "--out-dir", str(out)]
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as exc:
        break_augment_at(mp, rn, 20, ctrl_c)
        err = io.StringIO()
        mp.setattr(sys, "stderr", err)
        rn.main(argv)
    assert exc.value.code == 130, err.getvalue()
    shutil.copytree(out, pristine, dirs_exist_ok=True)
    return {
        "out": out,
        "argv": argv,
        "code": exc.value.code,
        "err": err.getvalue(),
        "pristine": pristine / "checkpoint.pt",
    }


def copy_of(stopped, tmp_path):
    shutil.copy(stopped["pristine"], tmp_path / "checkpoint.pt")
    return tmp_path / "checkpoint.pt"


def test_ctrl_c_prints_the_resume_command_which_gives_the_weights_of_an_uninterrupted_run(
    rn, stopped, tmp_path, capsys
):
    """Ctrl-C in epoch 2: no traceback, exit 130, two lines naming epoch 1's checkpoint and the exact command; that
    command, run as printed, ends with exactly the weights and history of a run that was never interrupted."""
    assert stopped["code"] == 130
    lines = stopped["err"].splitlines()
    path = stopped["out"] / "checkpoint.pt"
    assert len(lines) == 2 and "Traceback" not in stopped["err"]
    assert lines[0] == f"interrupted in epoch 2 (step 20); the checkpoint of epoch 1 is {path}. Resume with:"
    command = shlex.split(lines[1])
    assert command == ["python", os.path.relpath(ROOT / SCRIPT), *stopped["argv"], "--resume"]
    assert torch.load(path, weights_only=False)["epoch"] == 1

    m_cut = rn.main(command[2:])  # the command as printed
    assert f"resumed from {path} after epoch 1" in capsys.readouterr().out
    m_full = rn.main([*FAST, "--epochs", "2", "--out-dir", str(tmp_path)])
    a = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    b = torch.load(path, weights_only=False)
    assert a["epoch"] == b["epoch"] == 2 and a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "step_loss"):
        assert m_cut["history"][key] == m_full["history"][key], key
    assert len(m_cut["history"]["step_loss"]) == 32


def test_ctrl_c_before_the_first_checkpoint(rn, tmp_path, monkeypatch, capsys):
    """Interrupted in epoch 1: there is nothing to resume, so the command printed starts the run again."""
    break_augment_at(monkeypatch, rn, 3, ctrl_c)
    argv = [*FAST, "--out-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exc:
        rn.main(argv)
    assert exc.value.code == 130 and not (tmp_path / "checkpoint.pt").exists()
    assert capsys.readouterr().err.splitlines() == [
        "interrupted in epoch 1 (step 3), before the first checkpoint. Start again with:",
        "  " + shlex.join(["python", os.path.relpath(ROOT / SCRIPT), *argv]),
    ]


def test_nan_loss_stops_and_keeps_the_checkpoint(rn, stopped, tmp_path, monkeypatch):
    """A NaN loss at step 20 (NaN images in the 4th step after resuming at epoch 2) stops the run with the message
    before the bad step is taken, leaving epoch 1's checkpoint as it was and writing no metrics."""
    before = digest(copy_of(stopped, tmp_path))
    break_augment_at(monkeypatch, rn, 4, lambda x: x * float("nan"))
    with pytest.raises(SystemExit, match=r"loss is nan at epoch 2, step 20.*epoch 1.*kept") as exc:
        rn.main([*FAST, "--epochs", "2", "--resume", "--out-dir", str(tmp_path)])
    assert exc.value.code != 0
    assert digest(tmp_path / "checkpoint.pt") == before and not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize(
    "flag,value,saved,shown",  # shown: the new value as the message prints it
    [("--n-train", "256", "512", "256"), ("--batch-size", "64", "32", "64"), ("--seed", "1", "0", "1"),
     ("--base-channels", "4", "8", "4"), ("--epochs", "3", "2", "3"), ("--lr", "0.05", "0.1", "0.05"),
     ("--label-smoothing", "0", "0.1", "0.0")],
)  # fmt: skip
def test_resume_refuses_another_configuration(rn, stopped, tmp_path, capsys, flag, value, saved, shown):
    """A checkpoint trained with other values of the flags that fix the run is refused in one line that names the
    flag and both values, with exit code 2, before any weight is loaded or the checkpoint touched."""
    before = digest(copy_of(stopped, tmp_path))
    argv = [*FAST, "--epochs", "2", flag, value, "--resume", "--out-dir", str(tmp_path)]  # the later flag wins
    with pytest.raises(SystemExit) as exc:
        rn.main(argv)
    assert exc.value.code == 2
    m = re.fullmatch(r"error: (\S+) was trained with (.+), not (.+?): resume with the checkpoint's values.*\n",
                     capsys.readouterr().err)  # fmt: skip
    assert m and m[1] == str(tmp_path / "checkpoint.pt")
    trained, now = (dict(zip(g.split()[::2], g.split()[1::2])) for g in (m[2], m[3]))
    assert trained[flag] == saved and now[flag] == shown
    assert trained.keys() == now.keys() <= {flag, "--warmup-epochs"}  # --epochs also moves the default warm-up
    assert digest(tmp_path / "checkpoint.pt") == before and not (tmp_path / "metrics.json").exists()


def test_resume_allows_device_threads_and_data_dir(rn, stopped, tmp_path, capsys):
    """--device, --threads and --data-dir do not change the run: resuming with other values (here --threads left to
    torch, --device and --data-dir given) continues it."""
    copy_of(stopped, tmp_path)
    data_dir = str(fmnist.files("train")["images"].parent)
    argv = ["--smoke", "--n-train", "512", "--epochs", "2", "--device", "cpu", "--data-dir", data_dir]
    m = rn.main([*argv, "--resume", "--out-dir", str(tmp_path)])
    assert "resumed from" in capsys.readouterr().out
    assert len(m["history"]["test_acc"]) == 2 and len(m["history"]["step_loss"]) == 32
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["epoch"] == 2


def record_rank_weights(argv):
    """torchrun's target in the DDP test (this file run as a script): the trainer's main, with every process
    saving its model's state after each evaluation (the last one follows training) to out_dir/weights_rank<r>.pt."""
    sys.path.insert(0, str(ROOT / "04-cnns"))
    import resnet_torch as rn

    evaluate, out_dir = rn.evaluate, Path(argv[argv.index("--out-dir") + 1])

    def evaluate_and_save(net, *args, **kwargs):
        result = evaluate(net, *args, **kwargs)
        torch.save({k: v.cpu() for k, v in net.state_dict().items()}, out_dir / f"weights_rank{os.environ['RANK']}.pt")
        return result

    rn.evaluate = evaluate_and_save
    rn.main(argv)


def test_ddp_two_gloo_processes_keep_identical_weights(rn, tmp_path):
    """torchrun with 2 CPU processes: both ranks end with the same parameters and BN statistics (and rank 0's
    checkpoint holds them), having trained on disjoint halves of each epoch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
           *FAST, "--epochs", "2", "--out-dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0, w1 = (torch.load(tmp_path / f"weights_rank{r}.pt") for r in (0, 1))
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert w0.keys() == w1.keys() == ck["model"].keys()
    assert all(torch.equal(w0[k], w1[k]) and torch.equal(w0[k], ck["model"][k]) for k in w0)
    assert ck["config"]["nproc_per_node"] == 2
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["final_train_loss"] < m["first_loss"]
    start = rn.resnet20(10, 1, width=8).state_dict()
    assert not torch.equal(start["fc.weight"], w0["fc.weight"])  # it trained


if __name__ == "__main__":
    record_rank_weights(sys.argv[1:])
