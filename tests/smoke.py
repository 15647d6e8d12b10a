"""Checks shared by smoke tests: the CNN case studies (tests/test_cnn_case_studies.py, test_inception.py,
test_mobilenet_efficientnet.py), every one of which returns and writes the same metrics and evaluates the
same way; and the translation scripts' --translate (test_translation.py, test_transformer.py)."""

import json

import pytest
import torch


def check_cnn_smoke_run(module, tmp_path, min_acc, min_params):
    """`main(["--smoke"])` of a case-study script: one epoch on real images, the loss falls, the test accuracy
    clears `min_acc` (chance: 0.1), and metrics.json and the learning-curve figure are written."""
    m = module.main(["--smoke", "--out-dir", str(tmp_path)])
    assert m["final_train_loss"] < m["first_loss"]
    assert m["test_acc"] > min_acc
    assert m["arch"] in module.MODELS and m["params"] > min_params and m["sec_per_epoch"] > 0
    assert len(m["history"]["test_acc"]) == 1
    assert json.loads((tmp_path / "metrics.json").read_text())["test_acc"] == m["test_acc"]
    assert (tmp_path / "learning_curves.png").stat().st_size > 10_000
    return m


def randomise_batchnorms(module):
    """Non-trivial affine parameters and running statistics, so that no BatchNorm is an identity."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)


def check_evaluate_keeps_batchnorm_buffers(module, model):
    """`module.evaluate` on `model`, handed over in training mode: it uses the running statistics and updates
    none of them, so running_mean, running_var and num_batches_tracked of every BatchNorm are unchanged."""
    torch.manual_seed(5)
    randomise_batchnorms(model)
    model.train()
    X, y = torch.rand(6, model_channels(model), 28, 28), torch.randint(0, 10, (6,))
    before = {name: b.clone() for name, b in model.named_buffers()}
    assert any(name.endswith("num_batches_tracked") for name in before)
    loss, acc = module.evaluate(model, X, y, 0.3, 0.35, chunk=4)  # two chunks
    assert 0 <= acc <= 1 and loss > 0
    after = dict(model.named_buffers())
    assert before.keys() == after.keys()
    for name, b in before.items():
        assert torch.equal(after[name], b), name


def model_channels(model):
    """The input channels of a model: those of its first convolution."""
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).in_channels


def check_translate_refusals(main, out, tmp_path, capsys):
    """A translation script's ``--translate`` refuses, with exit code 2 and a message on stderr, an empty
    sentence, one of 51 words, and an --out-dir that holds no checkpoint (``out`` holds one)."""
    for argv, message in [
        (["--translate", "  "], "--translate: 0 words"),
        (["--translate", "word " * 51], "--translate: 51 words"),
        (["--translate", "hello .", "--out-dir", str(tmp_path / "nothing")], "no checkpoint"),
    ]:
        argv = argv if "--out-dir" in argv else [*argv, "--out-dir", str(out)]
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
