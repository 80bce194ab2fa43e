"""Phase 4 (``agents.extraction.validator.tests_run``): compile errors, a real pytest + coverage run.

The runs below are real: ``coverage run ... -m pytest`` in a subprocess on a
small folder written here, its junit XML and ``coverage json`` parsed.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import psutil

from agents.extraction.validator import tests_run
from agents.extraction.validator.tests_run import compile_all, parse_coverage, parse_junit, phase4, run_tests
from tests.unit.test_validator_verify import write_folder

MODULE = """\
def double(n):
    return 2 * n


def triple(n):
    return 3 * n
"""
MIXED_TESTS = """\
import pytest

from pkg.mod import double


def test_double():
    assert double(2) == 4


def test_double_again():
    assert double(0) == 0


async def test_double_async():
    assert double(1) == 2


def test_wrong():
    assert double(2) == 5


@pytest.fixture
def broken():
    raise RuntimeError("no database here")


def test_needs_broken(broken):
    pass


@pytest.mark.skip(reason="not today")
def test_skipped():
    pass
"""


def write_package(root: Path, tests: str, module: str = MODULE) -> Path:
    """``code/pkg/mod.py`` (a PEP 420 namespace package) and ``tests/t/test_mod.py``."""
    (root / "code/pkg").mkdir(parents=True)
    (root / "tests/t").mkdir(parents=True)
    (root / "code/pkg/mod.py").write_text(module)
    (root / "tests/t/test_mod.py").write_text(tests)
    return root


def gone(pid: int) -> bool:
    """No such process, or only its zombie is left (killed, not reaped by its new parent)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- compilation ---------------------------------------------------------------------------------


def test_a_syntax_error_is_reported_with_path_and_line(tmp_path: Path) -> None:
    folder, _ = write_folder(
        tmp_path,
        {
            "code/L9/demo/alpha/config.py": "def double(n: int) -> int:\n"
            "    return 2 * n\n\nif True\n    pass\n"
        },
    )
    (folder / "tests/alpha/test_nul.py").write_bytes(b"x = 1\ny = '\0'\n")
    compiled, errors = compile_all(folder)
    assert compiled == 9
    assert len(errors) == 2
    assert errors[0].startswith("code/L9/demo/alpha/config.py:4: ")
    assert "expected ':'" in errors[0]
    assert errors[1].startswith("tests/alpha/test_nul.py:2: ")


def test_an_intact_folder_compiles(tmp_path: Path) -> None:
    folder, _ = write_folder(tmp_path)
    assert compile_all(folder) == (8, ())


# -- the pytest run ------------------------------------------------------------------------------


async def test_passing_tests_of_a_generated_folder_pass_with_coverage(tmp_path: Path) -> None:
    folder, _ = write_folder(tmp_path)
    run = await phase4(folder, timeout_s=120)
    assert (run.tests, run.passed, run.failed, run.errors, run.skipped) == (3, 3, 0, 0, 0)
    assert run.pass_rate == 1.0 and run.coverage_percent == 100.0 and run.ok
    assert run.compiled == 8 and run.compile_errors == () and run.exit_code == 0
    assert not list(folder.rglob("__pycache__")), "the run must leave the folder as it was"
    payload = run.payload("demo", str(folder))
    assert payload.ok and payload.outcome == "passed: 3/3 tests passed, coverage 100.0%, 8 files compiled"


async def test_failing_and_erroring_tests_are_counted_and_named(tmp_path: Path) -> None:
    folder = write_package(tmp_path, MIXED_TESTS)
    run = await run_tests(folder, timeout_s=120)
    assert (run.tests, run.passed, run.failed, run.errors, run.skipped) == (6, 3, 1, 1, 1)
    assert run.pass_rate == 0.5 and run.exit_code == 1 and not run.ok
    assert run.failures == (
        "tests.t.test_mod::test_wrong: assert 4 == 5",
        'tests.t.test_mod::test_needs_broken: failed on setup with "RuntimeError: no database here"',
    )
    # double's def, its return and triple's def ran; triple's return did not: 3 of 4 lines.
    assert run.coverage_percent == 75.0


async def test_a_module_no_test_imports_counts_against_coverage(tmp_path: Path) -> None:
    folder = write_package(
        tmp_path, "from pkg.mod import double\n\n\ndef test_it():\n    assert double(1) == 2\n"
    )
    (folder / "code/pkg/unused.py").write_text("def never(x):\n    return x\n")
    run = await run_tests(folder, timeout_s=120)
    assert run.passed == 1 and run.coverage_percent == 50.0  # 3 of 4 in mod.py, 0 of 2 in unused.py


async def test_a_hanging_test_is_killed_with_its_process_group_at_the_timeout(tmp_path: Path) -> None:
    hang = (
        "import os, subprocess, time\n\n\ndef test_hangs():\n"
        "    child = subprocess.Popen(['sleep', '120'])\n"
        "    open('pids', 'w').write(f'{os.getpid()} {child.pid}')\n"
        "    time.sleep(120)\n"
    )
    folder = write_package(tmp_path, hang)
    with anyio.fail_after(100):  # only catches a hang: the test sleeps 120 s
        run = await run_tests(folder, timeout_s=4)  # the test starts in about a second, even loaded
    assert run.timed_out and run.tests == 0 and not run.ok and run.duration_s >= 4
    assert run.problem == "pytest did not finish within 4 s: its process group was killed"
    pids = [int(p) for p in (folder / "pids").read_text().split()]
    with anyio.fail_after(30):  # SIGKILLed: gone as soon as the kernel has run their exit
        while not all(gone(pid) for pid in pids):
            await anyio.sleep(0.05)
    assert run.payload("demo", str(folder)).failures == (run.problem,)


async def test_a_cancelled_run_kills_its_process_group(tmp_path: Path) -> None:
    folder = write_package(
        tmp_path,
        "import os, time\n\n\ndef test_hangs():\n"
        "    open('pids', 'w').write(str(os.getpid()))\n    time.sleep(120)\n",
    )
    pids = folder / "pids"
    with anyio.fail_after(60):  # only catches a hang
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_tests, folder, 120)
            while not (pids.exists() and pids.read_text()):  # the test is running
                await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
    assert gone(int(pids.read_text()))


async def test_pytest_refusing_to_run_is_reported_with_its_output(tmp_path: Path) -> None:
    folder = write_package(tmp_path, "def test_it():\n    pass\n")
    (folder / "tests").rename(folder / "elsewhere")  # `pytest tests`: no such directory
    run = await run_tests(folder, timeout_s=120)
    assert run.problem == "pytest ran no test (exit 4): ERROR: file or directory not found: tests"
    assert not run.ok and run.payload("demo", str(folder)).failures == (run.problem,)


# -- the reports ---------------------------------------------------------------------------------


def test_junit_reports_count_each_testcase_once() -> None:
    report = b"""<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
    <testcase classname="tests.a.test_x" name="test_ok"/>
    <testcase classname="tests.a.test_x.TestK" name="test_bad"><failure message="boom&#10;more"/></testcase>
    <testcase classname="" name="tests.a.test_y"><error message="collection failure">trace</error></testcase>
    <testcase classname="tests.a.test_x" name="test_skip"><skipped message="no"/></testcase>
    </testsuite></testsuites>"""
    run = parse_junit(report)
    assert (run.tests, run.passed, run.failed, run.errors, run.skipped) == (4, 1, 1, 1, 1)
    assert run.failures == ("tests.a.test_x.TestK::test_bad: boom", "tests.a.test_y: collection failure")


def test_coverage_is_covered_lines_over_statements() -> None:
    assert (
        parse_coverage({"totals": {"covered_lines": 17, "num_statements": 20, "percent_covered": 60.0}})
        == 85.0
    )
    assert parse_coverage({"totals": {"covered_lines": 0, "num_statements": 0}}) == 100.0
    assert parse_coverage({}) == 0.0


def test_the_command_is_the_contracts(tmp_path: Path) -> None:
    command = tests_run.pytest_command("/py", tmp_path, tmp_path / "t")
    assert command == [
        "/py", "-m", "coverage", "run", "--branch", f"--source={tmp_path}/code",
        f"--data-file={tmp_path}/t/.coverage", "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider",
        "--import-mode=importlib", f"--junitxml={tmp_path}/t/junit.xml",
    ]  # fmt: skip
