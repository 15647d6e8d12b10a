"""data.cli: the argument types refuse every value outside their domain (exit 2 through argparse, the flag
named), and save_metrics writes metrics.json with the run's provenance."""

import argparse
import contextlib
import io
import json
import subprocess

import pytest

from data import cli

CASES = {
    cli.positive_int: (["1", "7", "128"], ["0", "-1", "1.5", "nan", "", "ten"]),
    cli.nonneg_int: (["0", "3"], ["-1", "0.5", "inf"]),
    cli.positive_float: (["1e-3", "0.5", "10"], ["0", "-1e-3", "nan", "inf", "-inf", "abc"]),
    cli.nonneg_float: (["0", "5e-4", "2"], ["-1e-9", "nan", "inf"]),
    cli.probability: (["0", "0.5", "0.999"], ["1", "1.5", "-0.1", "nan", "inf"]),
}


@pytest.mark.parametrize("kind", CASES, ids=lambda f: f.__name__)
def test_types_accept_their_domain_and_refuse_the_rest(kind):
    good, bad = CASES[kind]
    for text in good:
        assert kind(text) == (int(text) if kind in (cli.positive_int, cli.nonneg_int) else float(text))
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            kind(text)


def test_a_bad_value_exits_2_naming_the_flag():
    p = argparse.ArgumentParser()
    p.add_argument("--batch-size", type=cli.positive_int, default=None)
    p.add_argument("--lr", type=cli.positive_float, default=1e-3)
    assert p.parse_args(["--batch-size", "32"]).batch_size == 32
    for argv, flag in [(["--batch-size", "0"], "--batch-size"), (["--lr", "nan"], "--lr")]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
            p.parse_args(argv)
        assert exc.value.code == 2 and f"argument {flag}" in err.getvalue()


def test_save_metrics_records_provenance(tmp_path):
    metrics = {"script": "demo", "test_acc": 0.5}
    path = cli.save_metrics(tmp_path, metrics, cli.ROOT / "01-foundations" / "mlp_numpy.py", ["--smoke", "--lr", "0.1"])
    saved = json.loads(path.read_text())
    assert saved == metrics and saved["test_acc"] == 0.5
    prov = saved["provenance"]
    assert prov["command"] == "python 01-foundations/mlp_numpy.py --smoke --lr 0.1"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cli.ROOT, capture_output=True, text=True).stdout.strip()
    assert prov["git_commit"].removesuffix("+dirty") == head
    assert prov["versions"]["numpy"] and prov["versions"]["python"]
    assert prov["threads"]["cpu_count"] >= 1 and prov["machine"]["platform"] and prov["date"].startswith("20")
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_provenance_outside_a_git_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "ROOT", tmp_path)
    assert cli.provenance(tmp_path / "x_numpy.py", [])["git_commit"] == "unknown"
