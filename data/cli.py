"""What every script's command line shares: argument types that refuse bad values, and metrics.json.

    p.add_argument("--batch-size", type=positive_int, default=None)  # 0 or -3: exit 2, naming the flag
    p.add_argument("--lr", type=positive_float, default=1e-3)        # nan, inf, 0, -1: exit 2
    p.add_argument("--dropout", type=probability, default=0.5)       # must lie in [0, 1)
    ...
    save_metrics(out_dir, metrics, __file__, argv)                    # metrics.json, with provenance

A type raises ``argparse.ArgumentTypeError``, so argparse prints ``argument --lr: ...`` and exits 2:
the message names the flag, and nothing has run yet. ``save_metrics`` adds a ``provenance`` record
(command line, git commit, package versions, threads, machine, date) so that a run's figures can be
traced; ``python -m benchmarks.ledger`` copies chosen runs into ``results/`` and RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# %% argument types: each parses a string or raises ArgumentTypeError (argparse: exit 2, flag named)
def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (sizes, counts, epochs, steps)."""
    return _int_at_least(text, 1, "a positive integer")


def nonneg_int(text: str) -> int:
    """An integer >= 0 (a seed, a warm-up length, a count that may be zero)."""
    return _int_at_least(text, 0, "an integer >= 0")


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (a learning rate, an epsilon, a temperature)."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def nonneg_float(text: str) -> float:
    """A finite number >= 0 (weight decay, a penalty strength, a clipping norm where 0 means off)."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def probability(text: str) -> float:
    """A number in [0, 1) (a dropout rate, a decay such as a beta or a momentum)."""
    value = _finite(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text!r}")
    return value


# %% metrics.json with provenance
def _git_commit() -> str:
    """HEAD's hash, with "+dirty" when tracked files differ from it; "unknown" outside a git checkout."""

    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(script: str | os.PathLike, argv: list[str] | None) -> dict:
    """Where a run's figures come from: command line, commit, versions, threads, machine, date."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        path = Path(script).resolve().relative_to(ROOT)
    except ValueError:
        path = Path(script)
    versions = {"python": platform.python_version()}
    for name in ("numpy", "torch", "jax", "jaxlib"):
        if name in sys.modules:  # only the frameworks this run imported
            try:
                versions[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                versions[name] = getattr(sys.modules[name], "__version__", "unknown")
    threads = {"cpu_count": os.cpu_count()}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        if var in os.environ:
            threads[var] = os.environ[var]
    machine = {"platform": platform.platform(), "cpu": _cpu_name()}
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        threads["torch"] = torch.get_num_threads()
        if torch.cuda.is_available():
            machine["gpu"] = torch.cuda.get_device_name(0)
    return {
        "command": shlex.join(["python", path.as_posix(), *argv]),
        "git_commit": _git_commit(),
        "versions": versions,
        "threads": threads,
        "machine": machine,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def save_metrics(out_dir: str | os.PathLike, metrics: dict, script: str | os.PathLike, argv: list[str] | None) -> Path:
    """Write ``metrics`` plus its ``provenance`` to ``out_dir/metrics.json`` (atomically) and return the path.

    ``metrics`` gains the ``provenance`` key in place, so the dict that ``main`` returns carries it too.
    """
    metrics["provenance"] = provenance(script, argv)
    path = Path(out_dir) / "metrics.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=1, default=str))
    os.replace(tmp, path)
    return path
