"""The documents a user reads: README.md is a short index whose code runs and whose links resolve,
RESULTS.md is generated from results/ by the ledger, and nothing points outside the repository."""

import json
import re
import subprocess

import pytest
from conftest import ROOT, import_script
from test_contract import capture_parser

from benchmarks import ledger

README = (ROOT / "README.md").read_text()
DOCS = ["README.md", "CONTRIBUTING.md", "RESULTS.md", "docs/references.md", "benchmarks/README.md"]
DOCS += sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("0[1-9]-*/README.md"))


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def test_readme_is_an_index_with_the_whole_arc():
    assert len(README.splitlines()) <= 200
    items = re.findall(r"^- \[( |x)\] (.*)$", README, re.M)
    assert len(items) >= 60
    arc = "\n".join(text for _, text in items)
    for planned in ["YOLO v1", "YOLO v3", "YOLO v4", "U-Net", "greedy search", "Beam search", "Bahdanau",
                    "The Transformer", "BERT", "GPT-1", "GPT-2", "LLaMA-1", "LLaMA-2", "LLaMA-3",
                    "Vision Transformer", "Linformer", "Reformer"]:  # fmt: skip
        assert planned in arc, planned
    ticked = [text for mark, text in items if mark == "x"]
    linked = re.findall(r"\]\((0[1-9]-[a-z-]+/[a-z0-9_]+\.py)\)", "\n".join(ticked))
    scripts = {p.relative_to(ROOT).as_posix() for p in ROOT.glob("0[1-9]-*/*_*.py")}
    assert set(linked) == scripts  # every script is in the arc, and every ticked link is a script


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_resolve(doc):
    path = ROOT / doc
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
        assert (path.parent / target).exists(), f"{doc} links to {target}, which does not exist"


def test_readme_python_blocks_run(monkeypatch):
    """Each python block of the README runs as pasted (datasets from ARC_DATA_DIR, no network)."""
    code = blocks(README, "python")
    assert code
    for block in code:
        exec(compile(block, "README.md", "exec"), {})


def test_readme_shell_lines_name_real_targets_and_flags():
    """`make X` names a Makefile target; `python <script> ...` parses with that script's own parser."""
    makefile = (ROOT / "Makefile").read_text()
    checked = 0
    for block in blocks(README, "bash"):
        for line in block.splitlines():
            words = line.split("#")[0].split()
            if words[:1] == ["make"]:
                assert re.search(rf"^{words[1]}:", makefile, re.M), line
                checked += 1
            elif words[:1] == ["python"] and words[1].endswith(".py"):
                parser = capture_parser(import_script(words[1]))
                if "--help" in words:
                    assert "--help" in parser._option_string_actions
                else:
                    parser.parse_args(words[2:])  # exits 2 on a flag the script does not have
                checked += 1
    assert checked >= 5


def test_nothing_points_outside_the_repository():
    """Only the Makefile and .ci/run may mention the optional offline datasets beside the checkout."""
    pattern = r"\.\./" + "shared"
    found = subprocess.run(["git", "grep", "-n", "-E", pattern], cwd=ROOT, capture_output=True, text=True).stdout
    outside = [line for line in found.splitlines() if not line.startswith(("Makefile:", ".ci/run:"))]
    assert outside == []


def test_results_md_is_generated_from_the_ledger():
    assert (ROOT / "RESULTS.md").read_text() == ledger.render()


def fake_run(tmp_path, name="adam_numpy", commit="0123456789abcdef", smoke=False):
    run = tmp_path / "runs" / name
    run.mkdir(parents=True)
    flags = " --smoke" if smoke else ""
    metrics = {
        "script": name,
        "test_acc": 0.8912,
        "test_loss": 0.31,
        "gradcheck": {"dx": 1e-10, "note": "text"},
        "epoch_losses": [1.0, 0.5],
        "config": {"smoke": smoke},
        "provenance": {
            "command": f"python 02-optimization/{name}.py --lr 0.001{flags}",
            "git_commit": commit,
            "versions": {"python": "3.11.7", "numpy": "2.4.6"},
            "threads": {"cpu_count": 2},
            "machine": {"platform": "Linux", "cpu": "AMD EPYC"},
            "date": "2026-12-02T12:00:00+00:00",
        },
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_ledger_records_and_renders(tmp_path):
    results = tmp_path / "results"
    dest = ledger.record(fake_run(tmp_path), results_dir=results)
    assert dest == results / "adam_numpy.json" and json.loads(dest.read_text())["test_acc"] == 0.8912
    (results / "legacy.md").write_text("## Measured before the ledger\n\nold table\n")
    text = ledger.render(results)
    row = next(line for line in text.splitlines() if line.startswith("| [adam_numpy.py]"))
    assert "test_acc 0.8912; test_loss 0.31; gradcheck.dx 1e-10 |" in row and "epoch_losses" not in row
    assert "`python 02-optimization/adam_numpy.py --lr 0.001`" in row and "`0123456789`" in row
    assert "## 02-optimization" in text and text.rstrip().endswith("old table")


def test_ledger_records_a_variant_as_its_own_row(tmp_path):
    """``--as NAME``: a second run of one script (other flags) gets its own file and its own row."""
    results = tmp_path / "results"
    ledger.record(fake_run(tmp_path), results_dir=results)
    variant = fake_run(tmp_path, name="adam_numpy_variant")
    metrics = json.loads((variant / "metrics.json").read_text())
    metrics["script"], metrics["test_acc"] = "adam_numpy", 0.5
    metrics["provenance"]["command"] = "python 02-optimization/adam_numpy.py --lr 0.01"
    (variant / "metrics.json").write_text(json.dumps(metrics))
    assert ledger.record(variant, results_dir=results, name="adam_numpy_lr") == results / "adam_numpy_lr.json"
    rows = [line for line in ledger.render(results).splitlines() if line.startswith("| [adam_numpy.py]")]
    assert len(rows) == 2 and "test_acc 0.5;" in rows[1] and "--lr 0.01`" in rows[1]


def test_ledger_renders_one_bleu_table_of_every_translation_run(tmp_path):
    """Runs that report test_bleu and test_bleu_beam, from any folder, share one table: greedy and each beam
    size in its own column (blank where a run did not decode with it); other runs are not in it."""
    results = tmp_path / "results"
    ledger.record(fake_run(tmp_path), results_dir=results)
    assert "## Translation" not in ledger.render(results)  # no translation run yet, no table
    for name, folder, bleu, beams in [
        ("rnn", "05-rnns", 18.5, {"1": 18.5, "4": 20.25}),
        ("tf", "06-x", 21.0, {"1": 21.0}),
    ]:
        run = fake_run(tmp_path, name=name)
        metrics = json.loads((run / "metrics.json").read_text())
        metrics.update(test_bleu=bleu, test_bleu_beam=beams, train_minutes=12.5, params=1234)
        metrics["provenance"]["command"] = f"python {folder}/{name}.py"
        (run / "metrics.json").write_text(json.dumps(metrics))
        ledger.record(run, results_dir=results)
    text = ledger.render(results)
    table = text[text.index("## Translation") :].split("\n\n")[2].splitlines()
    assert table[0].startswith("| script | greedy | beam 1 | beam 4 | train minutes | parameters |")
    assert table[2] == "| [rnn.py](05-rnns/rnn.py) | 18.5 | 18.5 | 20.25 | 12.5 | 1,234 | `python 05-rnns/rnn.py` |"
    assert table[3] == "| [tf.py](06-x/tf.py) | 21 | 21 |  | 12.5 | 1,234 | `python 06-x/tf.py` |" and len(table) == 4


def test_ledger_renders_one_detection_table_of_every_detector_with_small_object_map(tmp_path):
    """Runs that report test_small_map50 share one table, ordered by script and then the shortest command (the
    default run before its ablations); a run without it is not in the table."""
    results = tmp_path / "results"
    ledger.record(fake_run(tmp_path), results_dir=results)
    assert "## Detection" not in ledger.render(results)
    for name, flags, m50 in [("yolo_v4", " --no-mosaic", 0.7), ("yolo_v4", "", 0.75), ("yolo_v3", "", 0.72)]:
        run = fake_run(tmp_path, name=f"{name}{flags.replace(' ', '_')}")
        metrics = json.loads((run / "metrics.json").read_text())
        metrics.update(test_map50=m50, test_coco_map=0.5, test_small_map50=0.25, inference_images_per_s=812.3,
                       params=123456, train_minutes=7.5)  # fmt: skip
        metrics["provenance"]["command"] = f"python 04-cnns/{name}.py{flags}"
        (run / "metrics.json").write_text(json.dumps(metrics))
        ledger.record(run, results_dir=results)
    text = ledger.render(results)
    table = text[text.index("## Detection") :].split("\n\n")[2].splitlines()
    assert table[0].startswith("| script | mAP@0.5 (VOC) | mAP@[.5:.95] (COCO) | small mAP@0.5 | images/s |")
    assert table[2] == "| [yolo_v3.py](04-cnns/yolo_v3.py) | 0.72 | 0.5 | 0.25 | 812.3 | 123,456 | 7.5 | " \
        "`python 04-cnns/yolo_v3.py` |"  # fmt: skip
    assert table[3].startswith("| [yolo_v4.py](04-cnns/yolo_v4.py) | 0.75 |") and table[3].endswith("v4.py` |")
    assert table[4].endswith("`python 04-cnns/yolo_v4.py --no-mosaic` |") and len(table) == 5


@pytest.mark.parametrize(
    "kind, message",
    [("smoke", "--smoke run"), ("dirty", "uncommitted changes"), ("bare", "no provenance")],
)
def test_ledger_refuses_runs_it_cannot_trace(tmp_path, kind, message):
    run = fake_run(tmp_path, smoke=kind == "smoke", commit="abc+dirty" if kind == "dirty" else "abc")
    if kind == "bare":
        metrics = json.loads((run / "metrics.json").read_text())
        del metrics["provenance"]
        (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(SystemExit, match=message):
        ledger.record(run, results_dir=tmp_path / "results")
    assert not (tmp_path / "results").exists()
    if kind == "dirty":
        assert ledger.record(run, allow_dirty=True, results_dir=tmp_path / "results").exists()
