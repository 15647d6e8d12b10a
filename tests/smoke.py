"""The smoke-run checks shared by the CNN case-study tests (tests/test_cnn_case_studies.py, test_inception.py,
test_mobilenet_efficientnet.py): every one of those scripts returns and writes the same metrics."""

import json


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
