"""Phase 4 of an extraction run: every Python file compiles, the generated tests pass, with coverage.

* :func:`compile_all` compiles every ``.py`` file of the folder with
  :func:`compile` (nothing is written, nothing runs); each error reads
  ``path:line: message``.
* :func:`run_tests` runs the generated tests exactly as the extraction contract
  says: in the folder, ``PYTHONPATH=<folder>/code`` prepended, ::

      <python> -m coverage run --branch --source=<folder>/code --data-file=<tmp>/.coverage
          -m pytest tests -q -p no:cacheprovider --import-mode=importlib --junitxml=<tmp>/junit.xml

  then ``coverage json``. The subprocess gets its own process group; past the
  timeout (or if the caller is cancelled) the whole group is killed. Its
  environment pins what would otherwise depend on where the folder lives, so the
  result is a function of the folder alone: ``PYTEST_ADDOPTS`` names a private
  pytest configuration (``asyncio_mode = auto``, the rootdir is the folder),
  plugins are not auto-loaded (``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``; only
  pytest-asyncio is loaded, when installed: it also saves seconds of start-up),
  ``COVERAGE_RCFILE`` one that counts the modules of PEP 420 namespace packages
  (``code/L9/...``) even when no test imports them, and
  ``PYTHONDONTWRITEBYTECODE=1`` keeps the folder free of ``__pycache__``.
* :func:`parse_junit` / :func:`parse_coverage` read the reports: counts per
  outcome, the first line of each failure (``test id: message``), and the line
  coverage of ``code/`` in percent.

Phase 4 passes only when every generated test passes (a kernel that is wrong at one
point is wrong: no share of failures is tolerated), the line coverage of ``code/`` is
at least :data:`MIN_COVERAGE` and every file compiles. A skipped test counts as not
passed: a generated test that does not run shows nothing; a folder whose tests are none
fails too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
from anyio.abc import Process

from agents.contracts.extraction.phases import TestsValidated

from .folder import python_files

#: Phase 4 passes with every test passed (this pass rate) and this line coverage of ``code/``.
MIN_PASS_RATE = 1.0
MIN_COVERAGE = 85.0
#: ``coverage json`` reads a small data file; it gets this long.
REPORT_TIMEOUT_S = 60.0
#: At most this many failures are listed (the counts stay exact).
MAX_FAILURES = 50
_PYTEST_INI = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
_COVERAGE_RC = "[report]\ninclude_namespace_packages = True\n"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


#: The pytest plugins the generated tests get (plugins are not auto-loaded).
_PLUGINS = tuple(arg for name in ("pytest_asyncio.plugin",) if _installed(name) for arg in ("-p", name))


@dataclass(frozen=True)
class TestRun:
    """What phase 4 found (compilation, the pytest run, coverage)."""

    __test__ = False  # not a pytest test class

    compiled: int = 0
    compile_errors: tuple[str, ...] = ()
    tests: int = 0
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    failures: tuple[str, ...] = ()
    coverage_percent: float = 0.0
    duration_s: float = 0.0
    exit_code: int | None = None
    timed_out: bool = False
    #: Why the run gave no usable result (timeout, no junit report), or None.
    problem: str | None = None

    @property
    def pass_rate(self) -> float:
        return self.passed / self.tests if self.tests else 0.0

    @property
    def ok(self) -> bool:
        return (
            not self.compile_errors
            and self.problem is None
            and self.tests > 0
            and self.passed == self.tests
            and self.coverage_percent >= MIN_COVERAGE
        )

    def payload(self, collection: str, folder: str) -> TestsValidated:
        return TestsValidated(
            outcome=self.outcome(),
            collection=collection,
            folder=folder,
            ok=self.ok,
            compiled=self.compiled,
            compile_errors=self.compile_errors,
            tests=self.tests,
            passed=self.passed,
            failed=self.failed,
            errors=self.errors,
            skipped=self.skipped,
            pass_rate=round(self.pass_rate, 4),
            coverage_percent=self.coverage_percent,
            duration_s=round(self.duration_s, 3),
            failures=(*((self.problem,) if self.problem else ()), *self.failures),
        )

    def outcome(self) -> str:
        counts = f"{self.passed}/{self.tests} tests passed, coverage {self.coverage_percent:.1f}%"
        if self.ok:
            return f"passed: {counts}, {self.compiled} files compiled"
        if self.compile_errors:
            return f"failed: {len(self.compile_errors)} of {self.compiled} files do not compile; {counts}"
        return f"failed: {self.problem or counts}"


# -- compilation ---------------------------------------------------------------------------------


def compile_all(folder: Path) -> tuple[int, tuple[str, ...]]:
    """How many ``.py`` files of ``folder`` were compiled, and an error per file that does not."""
    paths = python_files(folder)
    errors = [e for e in (compile_error(folder, p) for p in paths) if e is not None]
    return len(paths), tuple(errors)


def compile_error(folder: Path, relpath: str) -> str | None:
    """``relpath:line: message`` if the file does not compile, else None."""
    try:
        source = (folder / relpath).read_bytes()
    except OSError as exc:
        return f"{relpath}:0: cannot be read: {exc.strerror or exc}"
    try:
        compile(source, relpath, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:  # ValueError: null bytes, on some 3.11 releases
        line = getattr(exc, "lineno", None) or _nul_line(source)
        return f"{relpath}:{line}: {getattr(exc, 'msg', None) or exc}"
    return None


def _nul_line(source: bytes) -> int:
    """The line of the first NUL byte (1-based), 0 if there is none."""
    at = source.find(b"\0")
    return source[:at].count(b"\n") + 1 if at >= 0 else 0


# -- the pytest run ------------------------------------------------------------------------------


def pytest_command(python: str, folder: Path, tmp: Path) -> list[str]:
    return [
        python,
        "-m",
        "coverage",
        "run",
        "--branch",
        f"--source={folder / 'code'}",
        f"--data-file={tmp / '.coverage'}",
        "-m",
        "pytest",
        "tests",
        "-q",
        "-p",
        "no:cacheprovider",
        "--import-mode=importlib",
        f"--junitxml={tmp / 'junit.xml'}",
    ]


def subprocess_env(folder: Path, tmp: Path) -> dict[str, str]:
    """The environment of the generated tests (see the module docstring)."""
    (tmp / "pytest.ini").write_text(_PYTEST_INI)
    (tmp / "coveragerc").write_text(_COVERAGE_RC)
    inherited = os.environ.get("PYTHONPATH")
    code = str(folder / "code")
    return {
        **os.environ,
        "PYTHONPATH": code + os.pathsep + inherited if inherited else code,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTEST_ADDOPTS": shlex.join(["-c", str(tmp / "pytest.ini"), f"--rootdir={folder}", *_PLUGINS]),
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        "COVERAGE_RCFILE": str(tmp / "coveragerc"),
    }


async def run_tests(folder: Path, timeout_s: float, *, python: str = sys.executable) -> TestRun:
    """Run the folder's tests under coverage; counts, failures, coverage, duration (see above)."""
    with tempfile.TemporaryDirectory(prefix="l9-validate-") as name:
        tmp = Path(name)
        env = subprocess_env(folder, tmp)
        started = time.monotonic()
        code = await run_bounded(
            pytest_command(python, folder, tmp), folder, env, tmp / "pytest.log", timeout_s
        )
        duration = time.monotonic() - started
        if code is None:
            problem = f"pytest did not finish within {timeout_s:g} s: its process group was killed"
            return TestRun(duration_s=duration, timed_out=True, problem=problem)
        run = replace(read_junit(tmp, code), duration_s=duration, exit_code=code)
        if not any(p.startswith("code/") for p in python_files(folder)):
            return replace(run, coverage_percent=100.0)  # no code to cover
        coverage = await coverage_percent(python, folder, env, tmp)
        return replace(run, coverage_percent=coverage)


async def run_bounded(
    command: list[str], cwd: Path, env: dict[str, str], log: Path, timeout_s: float
) -> int | None:
    """Run ``command`` in its own process group (output to ``log``); its exit code, None on timeout."""
    with log.open("wb") as out:
        process = await anyio.open_process(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        try:
            with anyio.move_on_after(timeout_s):
                return await process.wait()
            return None
        finally:
            with anyio.CancelScope(shield=True):
                await _kill_group(process)


async def _kill_group(process: Process) -> None:
    """SIGKILL the process group of ``process`` (its leader included) and reap the leader."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    await process.wait()


def read_junit(tmp: Path, exit_code: int) -> TestRun:
    report = tmp / "junit.xml"
    if not report.exists():
        tail = _tail(tmp / "pytest.log")
        return TestRun(problem=f"pytest exited with {exit_code} and wrote no junit report: {tail}")
    try:
        run = parse_junit(report.read_bytes())
    except ET.ParseError as exc:
        return TestRun(problem=f"pytest's junit report does not parse: {exc}")
    if run.tests == 0:
        return replace(run, problem=f"pytest ran no test (exit {exit_code}): {_tail(tmp / 'pytest.log')}")
    return run


def parse_junit(data: bytes) -> TestRun:
    """Counts and failures of a pytest junit XML report (each ``testcase`` counted once)."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures: list[str] = []
    for case in ET.fromstring(data).iter("testcase"):
        outcome, detail = _outcome(case)
        counts[outcome] += 1
        if detail is not None:
            failures.append(f"{_test_id(case)}: {_first_line(detail)}")
    listed = failures[:MAX_FAILURES]
    if len(failures) > MAX_FAILURES:
        listed.append(f"... and {len(failures) - MAX_FAILURES} more")
    return TestRun(
        tests=sum(counts.values()),
        passed=counts["passed"],
        failed=counts["failed"],
        errors=counts["errors"],
        skipped=counts["skipped"],
        failures=tuple(listed),
    )


def _outcome(case: ET.Element) -> tuple[str, ET.Element | None]:
    for tag, outcome in (("failure", "failed"), ("error", "errors")):
        found = case.find(tag)
        if found is not None:
            return outcome, found
    return ("skipped" if case.find("skipped") is not None else "passed"), None


def _test_id(case: ET.Element) -> str:
    classname, name = case.get("classname", ""), case.get("name", "")
    return f"{classname}::{name}" if classname else name


def _first_line(detail: ET.Element) -> str:
    text = detail.get("message") or detail.text or detail.tag
    return next((line.strip() for line in text.splitlines() if line.strip()), detail.tag)


async def coverage_percent(python: str, folder: Path, env: dict[str, str], tmp: Path) -> float:
    """Line coverage of ``code/`` from ``coverage json``; 0.0 when nothing was measured."""
    out = tmp / "coverage.json"
    command = [python, "-m", "coverage", "json", f"--data-file={tmp / '.coverage'}", "-o", str(out), "-q"]
    code = await run_bounded(command, folder, env, tmp / "coverage.log", REPORT_TIMEOUT_S)
    if code != 0 or not out.exists():
        return 0.0
    return parse_coverage(json.loads(out.read_text()))


def parse_coverage(report: dict[str, object]) -> float:
    """Covered lines / statements of a ``coverage json`` report, in percent (2 decimals)."""
    totals = report.get("totals")
    if not isinstance(totals, dict):
        return 0.0
    statements, covered = int(totals.get("num_statements", 0)), int(totals.get("covered_lines", 0))
    return round(100.0 * covered / statements, 2) if statements else 100.0


def _tail(log: Path, lines: int = 5) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no output)"
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in kept if line.startswith(("ERROR", "E "))]
    return " | ".join((errors or kept)[-lines:]) or "(no output)"


async def phase4(folder: Path, timeout_s: float, *, python: str = sys.executable) -> TestRun:
    """Compile every file (in a worker thread), then run the tests: one :class:`TestRun`."""
    compiled, errors = await anyio.to_thread.run_sync(compile_all, folder)
    try:
        run = await run_tests(folder, timeout_s, python=python)
    except OSError as exc:  # the folder vanished, no interpreter, no room for the reports
        run = TestRun(problem=f"the tests cannot be run: {exc}")
    return replace(run, compiled=compiled, compile_errors=errors)


__all__ = [
    "MIN_COVERAGE",
    "MIN_PASS_RATE",
    "TestRun",
    "compile_all",
    "compile_error",
    "parse_coverage",
    "parse_junit",
    "phase4",
    "pytest_command",
    "run_tests",
    "subprocess_env",
]
