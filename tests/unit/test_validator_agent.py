"""The validator's verdict: a run passes only within every bound, and a failure names what failed."""

from __future__ import annotations

import uuid
from pathlib import Path

from agents.contracts.extraction import phases
from agents.extraction import EnforcementCompleted, Verified
from agents.extraction.validator import validate, verdict
from agents.extraction.validator.agent import result_id
from agents.runner import load_agent
from l9.settings import Settings

FOLDER = "/x/demo_20261121T093000Z"
GOOD_TESTS = phases.TestsValidated(
    outcome="passed",
    collection="demo",
    folder=FOLDER,
    ok=True,
    compiled=8,
    tests=20,
    passed=20,
    failed=0,
    errors=0,
    skipped=0,
    pass_rate=1.0,
    coverage_percent=91.5,
    duration_s=1.2,
)
GOOD_VERIFY = Verified(outcome="verified", collection="demo", folder=FOLDER, ok=True)


def test_a_run_within_every_bound_passes() -> None:
    ended = verdict(GOOD_TESTS, GOOD_VERIFY)
    assert ended.result == "passed" and ended.phase == "validate" and ended.reason == ""
    assert ended.outcome == "passed: 20/20 tests, coverage 91.5%, verified" and ended.folder == FOLDER


def test_the_coverage_bound_is_inclusive_and_every_test_must_pass() -> None:
    edge = GOOD_TESTS.model_copy(update={"coverage_percent": 85.0})
    assert verdict(edge, GOOD_VERIFY).result == "passed"
    for update in ({"passed": 19, "failed": 1}, {"passed": 19, "errors": 1}, {"passed": 19, "skipped": 1}):
        one_short = GOOD_TESTS.model_copy(update={**update, "pass_rate": 0.95})
        ended = verdict(one_short, GOOD_VERIFY)
        assert ended.result == "failed" and ended.reason.startswith("tests: 1 of 20 did not pass"), update


def test_each_failed_bound_is_named_in_the_reason() -> None:
    tests = GOOD_TESTS.model_copy(
        update={
            "ok": False,
            "compile_errors": ("code/L9/a/config.py:4: expected ':'",),
            "passed": 18,
            "failed": 1,
            "errors": 1,
            "pass_rate": 0.9,
            "coverage_percent": 80.4,
            "failures": ("tests.a.test_x::test_bad: assert 4 == 5", "tests.a.test_x::test_err: boom"),
        }
    )
    verified = GOOD_VERIFY.model_copy(
        update={
            "ok": False,
            "missing": ("code/L9/a/config.py",),
            "cycles": (("L9.a.b", "L9.a.c", "L9.a.b"),),
            "unresolved_links": ("b: bus.nope (not found in L9's environment)",),
            "broken_governance": tuple(f"a: g{i}" for i in range(5)),
        }
    )
    ended = verdict(tests, verified)
    assert ended.result == "failed" and ended.phase == "validate"
    assert ended.outcome == (
        "failed at validate: compile, tests, coverage, missing, import cycle, unresolved link, governance"
    )
    assert ended.reason.split("; ") == [
        "compile: 1 file(s) do not compile (code/L9/a/config.py:4: expected ':')",
        "tests: 2 of 20 did not pass (1 failed, 1 in error, 0 skipped: "
        "tests.a.test_x::test_bad: assert 4 == 5, tests.a.test_x::test_err: boom)",
        "coverage: 80.4% < 85% of code/",
        "missing: code/L9/a/config.py",
        "import cycle: L9.a.b -> L9.a.c -> L9.a.b",
        "unresolved link: b: bus.nope (not found in L9's environment)",
        "governance: a: g0, a: g1, a: g2 (+2 more)",
    ]


async def test_a_folder_that_is_not_there_fails_the_run_without_running_anything(tmp_path: Path) -> None:
    enforced = EnforcementCompleted(
        outcome="allowed",
        collection="demo",
        plan_hash="a" * 64,
        folder=str(tmp_path / "gone"),
        allowed=True,
        decisions=3,
    )
    tests, verified, ended = await validate(enforced, timeout_s=5)
    assert not tests.ok and tests.failures == (f"{tmp_path / 'gone'} is not an absolute path of a directory",)
    assert not verified.ok and verified.missing == ("extraction_manifest.json",)
    assert ended.result == "failed" and ended.folder == str(tmp_path / "gone")
    assert "missing: extraction_manifest.json" in ended.reason and "tests: none ran" in ended.reason


def test_the_validator_is_a_builtin_agent_with_a_test_timeout_setting() -> None:
    cls = load_agent("validator")
    assert cls.name == "validator" and cls.consumes == ("enforce",)
    assert Settings().validator_test_timeout_s == 300.0
    assert Settings(validator_test_timeout_s=7).validator_test_timeout_s == 7.0


def test_result_ids_are_stable_per_cause_and_type() -> None:
    cause = "01a1fdc6-def8-75b4-9019-92ff3162d1ef"
    first = result_id("l9.run.completed.v1", cause)
    assert first == result_id("l9.run.completed.v1", cause)
    assert first != result_id("l9.validation.tests.v1", cause)
    assert first != result_id("l9.run.completed.v1", cause.replace("a", "b"))
    assert uuid.UUID(first).version == 8
