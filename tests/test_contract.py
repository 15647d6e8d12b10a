"""The command-line contract of CONTRIBUTING.md, asserted for every script of every topic folder.

Each script's parser is captured without running the script (``ArgumentParser.parse_args`` is
patched to hand the parser back), then checked against the flag table of CONTRIBUTING.md:
- the common flags exist: --seed, --out-dir, --smoke everywhere; --data-dir where a dataset is
  loaded; --device {auto,cpu,cuda,mps} on every PyTorch script;
- one name per concept: a flag of the table has the table's type (a ``data.cli`` type) and nargs;
  retired names (--dim, --wd, --num-steps, ...) are gone; every numeric flag declares its domain
  with a ``data.cli`` type (never bare int or float), and its default lies in that domain;
  a flag used by two scripts or more is in the table;
- nothing is replaced silently (``args.x = args.x or default``), no flag is hidden;
- ``--help`` works, and a bad value of every typed flag exits with code 2 and names the flag;
- asking for a device the machine lacks exits with code 2 before any work.
A new script is discovered and checked without any change here.
"""

import argparse
import contextlib
import io
import re
import signal
from unittest import mock

import pytest
import torch
from conftest import ROOT, import_script

from data import cli

SCRIPT = re.compile(r"[a-z0-9_]+_(numpy|jax|torch)\.py")
SCRIPTS = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("0[1-9]-*/*.py") if SCRIPT.fullmatch(p.name))
TORCH_SCRIPTS = [s for s in SCRIPTS if s.endswith("_torch.py")]
DEVICES = ["auto", "cpu", "cuda", "mps"]
TYPES = {
    f.__name__: f for f in (cli.positive_int, cli.nonneg_int, cli.positive_float, cli.nonneg_float, cli.probability)
}
# Loaders whose use makes --data-dir a required flag.
LOADERS = re.compile(r"\b(fashion_mnist|timemachine|tinyshakespeare|ptb|ptb_word2vec|ptb_sentences|detection_scenes)\(")
SILENT_DEFAULT = re.compile(r"args\.(\w+)\s*=\s*args\.\1\s+or\b")
# Names retired for the one name of their concept (CONTRIBUTING.md, "Flags").
RETIRED = {
    "--dim": "--embed-dim",
    "--embed": "--embed-dim",
    "--embed-size": "--embed-dim",
    "--wd": "--weight-decay",
    "--num-steps": "--seq-len",
    "--length": "--seq-len",
    "--steps": "--steps-per-epoch",
    "--p": "--dropout",
    "--max-window": "--window",
    "--n-bs": "--bs-n-train",
    "--bs-train": "--bs-n-train",
}
# A value outside each type's domain (several for the floats: nan and inf must be refused too).
BAD_VALUES = {
    "positive_int": ["0", "-2", "1.5"],
    "nonneg_int": ["-1"],
    "positive_float": ["0", "-1", "nan", "inf"],
    "nonneg_float": ["-1", "nan"],
    "probability": ["1", "-0.1", "nan"],
}


def flag_table(text: str) -> dict:
    """CONTRIBUTING.md's flag table: {"--lr": ("positive_float", None, None), "--hidden": ("positive_int", "+", None),
    "--device": (None, None, ["auto", ...]), "--smoke": ("switch", 0, None), "--out-dir": ("path", None, None)}.

    A row reads | `--flag` | `type` (one or more / two) | meaning |, or | `--device` | `auto` \\| `cpu` ... | ... |.
    """
    table = {}
    for line in text.splitlines():
        m = re.match(r"\|\s*`(--[a-z0-9-]+)`\s*\|(.*?)\|", line.replace("\\|", "/"))
        if not m:
            continue
        cell = m.group(2)
        words = re.findall(r"`([^`]+)`", cell)
        if len(words) > 1:  # a choice: `auto` / `cpu` / ...
            table[m.group(1)] = (None, None, words)
        else:
            nargs = "+" if "one or more" in cell else 2 if "two" in cell else 0 if words == ["switch"] else None
            table[m.group(1)] = (words[0], nargs, None)
    return table


TABLE = flag_table((ROOT / "CONTRIBUTING.md").read_text())


class _Parser(Exception):
    def __init__(self, parser):
        self.parser = parser


def capture_parser(module) -> argparse.ArgumentParser:
    """The parser ``module.main`` builds, taken from it at ``parse_args`` before anything runs."""

    def hand_back(self, *args, **kwargs):
        raise _Parser(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", hand_back):
        try:
            module.main([])
        except _Parser as caught:
            return caught.parser
    raise AssertionError(f"{module.__name__}.main never called parse_args")


def long_flags(parser):
    """{"--lr": action, ...} for every long option except --help."""
    return {o: a for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"}


def violations(parser: argparse.ArgumentParser, source: str, framework: str, table: dict = TABLE) -> list[str]:
    """Every way a script's parser and source break the contract (empty when it keeps it)."""
    found = []
    flags = long_flags(parser)
    required = ["--seed", "--out-dir", "--smoke"] + (["--device"] if framework == "torch" else [])
    required += ["--data-dir"] if LOADERS.search(source) else []
    found += [f"missing {flag}" for flag in required if flag not in flags]
    for flag, action in flags.items():
        if flag in RETIRED:
            found.append(f"{flag} is a retired name: use {RETIRED[flag]}")
        if action.type in (int, float):
            found.append(f"{flag} has type {action.type.__name__}: give it a data.cli type that states its domain")
        if action.help == argparse.SUPPRESS:
            found.append(f"{flag} is hidden (argparse.SUPPRESS): no test-only flags in a user's script")
        if action.type in TYPES.values() and action.default is not None:
            defaults = action.default if isinstance(action.default, (list, tuple)) else [action.default]
            for value in defaults:
                try:
                    action.type(str(value))
                except argparse.ArgumentTypeError:
                    found.append(f"{flag}'s default {value!r} is outside its own type {action.type.__name__}")
        if flag not in table:
            continue
        type_name, nargs, choices = table[flag]
        if choices is not None:
            if list(action.choices or []) != choices:
                found.append(f"{flag} choices {action.choices} differ from the table's {choices}")
        elif type_name in TYPES:
            if action.type is not TYPES[type_name]:
                got = getattr(action.type, "__name__", action.type)
                found.append(f"{flag} has type {got}, the table says {type_name}")
            if (action.nargs or None) != nargs:
                found.append(f"{flag} has nargs {action.nargs!r}, the table says {nargs!r}")
        elif type_name == "switch" and action.nargs != 0:
            found.append(f"{flag} takes a value, the table says it is a switch")
        elif type_name in ("path", "text") and (action.type is not None or action.nargs == 0):
            found.append(f"{flag} should take one string ({type_name})")
        elif type_name == "choice" and not action.choices:
            found.append(f"{flag} should offer a list of choices")
    found += [
        f"args.{m.group(1)} = args.{m.group(1)} or ...: a bad value silently becomes the default"
        for m in SILENT_DEFAULT.finditer(source)
    ]
    if "argparse.SUPPRESS" in source:
        found.append("argparse.SUPPRESS in the source: no hidden flags")
    return found


@pytest.fixture(scope="module")
def parsers():
    """{script: (module, parser)} for every script, built once per test process."""
    return {}


def script_parser(parsers, script):
    if script not in parsers:
        module = import_script(script)
        parsers[script] = (module, capture_parser(module))
    return parsers[script]


def test_scripts_are_discovered():
    assert len(SCRIPTS) >= 68 and len(TORCH_SCRIPTS) >= 30
    assert all((ROOT / s).exists() for s in SCRIPTS)


def test_contributing_table_is_read():
    """The table parsed here is the one in CONTRIBUTING.md, with the common flags and their types."""
    assert TABLE["--lr"] == ("positive_float", None, None)
    assert TABLE["--batch-size"] == ("positive_int", None, None)
    assert TABLE["--hidden"] == ("positive_int", "+", None)
    assert TABLE["--betas"] == ("probability", 2, None)
    assert TABLE["--device"] == (None, None, DEVICES)
    assert TABLE["--smoke"][0] == "switch"
    assert set(TABLE).isdisjoint(RETIRED)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_keeps_the_contract(parsers, script):
    _, parser = script_parser(parsers, script)
    framework = script.rsplit("_", 1)[1].removesuffix(".py")
    found = violations(parser, (ROOT / script).read_text(), framework)
    assert not found, f"{script} breaks the contract of CONTRIBUTING.md:\n  " + "\n  ".join(found)


def test_flags_of_two_scripts_are_in_the_table(parsers):
    """A flag that two scripts share is a common flag: CONTRIBUTING.md's table names it and its type."""
    users = {}
    for script in SCRIPTS:
        for flag in long_flags(script_parser(parsers, script)[1]):
            users.setdefault(flag, []).append(script)
    missing = {flag: scripts for flag, scripts in users.items() if len(scripts) > 1 and flag not in TABLE}
    assert missing == {}


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_and_bad_values_exit(parsers, script):
    """--help exits 0 and lists --smoke; a value outside a flag's domain exits 2 with the flag named."""
    module, parser = script_parser(parsers, script)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0 and "--smoke" in out.getvalue()
    checked = 0
    for flag, action in long_flags(parser).items():
        type_name = getattr(action.type, "__name__", None)
        for bad in BAD_VALUES.get(type_name, []) if action.type in TYPES.values() else []:
            n = 2 if action.nargs == 2 else 1
            args = [flag] + ["0.5" if type_name == "probability" else "3"] * (n - 1) + [bad]
            err = io.StringIO()
            with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
                module.main(args)
            assert exc.value.code == 2, f"{script} {' '.join(args)} exited {exc.value.code}"
            assert flag in err.getvalue(), f"{script} {' '.join(args)}: the message does not name {flag}"
            checked += 1
    assert checked >= 1


@pytest.mark.parametrize("script", TORCH_SCRIPTS)
def test_unavailable_device_exits_2_before_any_work(script, tmp_path, monkeypatch):
    """`--device cuda` on a machine without CUDA (made so here, as CI is): exit 2 naming --device,
    within seconds (no data loaded, nothing trained)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    module = import_script(script)

    def too_slow(*args):
        raise TimeoutError(f"{script} --device cuda was still running after 20 s: check the device first")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(20)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
            module.main(["--device", "cuda", "--smoke", "--out-dir", str(tmp_path)])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert exc.value.code == 2 and "--device" in err.getvalue()


def test_the_contract_catches_drift():
    """The checks above fail for a script with a drifted name, a bare type, a default replaced silently,
    a hidden flag, a missing --device or a default outside its domain."""
    p = argparse.ArgumentParser()
    p.add_argument("--dim", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=cli.positive_float, default=0.0)
    p.add_argument("--hidden", type=cli.positive_int, default=64)
    p.add_argument("--fail-at-step", type=cli.nonneg_int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=cli.nonneg_int, default=0)
    p.add_argument("--out-dir")
    p.add_argument("--smoke", action="store_true")
    source = "args.batch_size = args.batch_size or 128\nX = fashion_mnist('train')\n"
    found = "\n".join(violations(p, source, "torch"))
    for expected in [
        "missing --device",
        "missing --data-dir",
        "--dim is a retired name: use --embed-dim",
        "--batch-size has type int",
        "--lr's default 0.0 is outside",
        "--hidden has nargs None, the table says '+'",
        "--fail-at-step is hidden",
        "args.batch_size = args.batch_size or",
    ]:
        assert expected in found
    q = argparse.ArgumentParser()  # the same flags written to the contract pass
    q.add_argument("--embed-dim", type=cli.positive_int, default=None)
    q.add_argument("--batch-size", type=cli.positive_int, default=None)
    q.add_argument("--lr", type=cli.positive_float, default=1e-3)
    q.add_argument("--hidden", type=cli.positive_int, nargs="+", default=[64])
    q.add_argument("--device", choices=DEVICES, default="auto")
    q.add_argument("--data-dir")
    q.add_argument("--seed", type=cli.nonneg_int, default=0)
    q.add_argument("--out-dir")
    q.add_argument("--smoke", action="store_true")
    assert violations(q, "if args.batch_size is None:\n    args.batch_size = 128\n", "torch") == []
