"""How long the validator takes on a small extraction folder, and where the time goes.

    .venv/bin/python -m benchmarks.validator [--reps 3]

Prints one JSON object on stdout.

The folder is the two-agent one of the validator's tests (8 Python files, 3
generated tests, manifests). Measured per repetition: phase 5 (``verify``:
hashes, syntax trees, links), compilation of every file, the phase 4 subprocess
(``coverage run -m pytest`` + ``coverage json``) and ``validate`` end to end.
Baseline, in the same run on the same folder: ``python -m pytest`` of the same
tests as one would run it by hand (no coverage, plugins auto-loaded), and a bare
interpreter start (``python -c pass``), which no subprocess run can beat. Logs
go to stderr.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import structlog

from agents.extraction import EnforcementCompleted
from agents.extraction.validator import compile_all, run_tests, validate, verify
from tests.unit.test_validator_verify import write_folder


def seconds(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


async def aseconds(fn: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await fn()
    return time.perf_counter() - started


def run(command: list[str], cwd: Path, env: dict[str, str]) -> None:
    subprocess.run(command, cwd=cwd, env=env, capture_output=True, check=True)


def summary(values: list[float]) -> dict[str, float]:
    return {"best_s": round(min(values), 4), "median_s": round(statistics.median(values), 4)}


async def measure(folder: Path, plan_hash: str, reps: int) -> dict[str, Any]:
    enforced = EnforcementCompleted(
        outcome="allowed",
        collection="demo",
        plan_hash=plan_hash,
        folder=str(folder),
        allowed=True,
        decisions=1,
    )
    times: dict[str, list[float]] = {k: [] for k in ("verify", "compile", "pytest_coverage", "validate")}
    bare_pytest = [
        sys.executable,
        "-m",
        "pytest",
        "tests",
        "-q",
        "-p",
        "no:cacheprovider",
        "--import-mode=importlib",
    ]
    env = {"PYTHONPATH": str(folder / "code"), "PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"}
    baseline: dict[str, list[float]] = {"bare_pytest": [], "python_start": []}
    for _ in range(reps):
        times["verify"].append(seconds(lambda: verify(folder, collection="demo", plan_hash=plan_hash)))
        times["compile"].append(seconds(lambda: compile_all(folder)))
        times["pytest_coverage"].append(await aseconds(lambda: run_tests(folder, timeout_s=300)))
        times["validate"].append(await aseconds(lambda: validate(enforced, timeout_s=300)))
        baseline["bare_pytest"].append(seconds(lambda: run(bare_pytest, folder, env)))
        baseline["python_start"].append(seconds(lambda: run([sys.executable, "-c", "pass"], folder, env)))
    return {
        "validator": {k: summary(v) for k, v in times.items()},
        "baseline": {k: summary(v) for k, v in baseline.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    with tempfile.TemporaryDirectory(prefix="l9-bench-validator-") as tmp:
        folder, plan = write_folder(Path(tmp))
        figures = anyio.run(measure, folder, plan.hash, args.reps)
    pytest_cov = figures["validator"]["pytest_coverage"]["median_s"]
    bare = figures["baseline"]["bare_pytest"]["median_s"]
    result = {
        "benchmark": "validator",
        "method": f"median and best of {args.reps} on the tests' two-agent folder (8 .py files, 3 tests)",
        **figures,
        "coverage_overhead_ratio": round(pytest_cov / bare, 2) if bare else None,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
