"""A "passed" that can be trusted (no server): every defect of the list, from its collection.

1. a planned ``*_manifest.json`` renders (it raised KeyError in the generator);
2. every generated test must pass, and section 10 of the report agrees with sections 7 and 8;
3. the generated agent tests accept a kernel of one symbol (``2*x``);
4. entries left out with strict mode off are listed by the report and by ``l9 extract``;
5. the local check lists every error it can find, each at its line, and the command prints
   all of a rejection's errors;
6. (``test_sympy_violations`` style) a refusal of the generator's request is a denial;
7. kernels are tested over wide ranges against a high-precision reference, with stable forms;
8. the seconds of a phase, links in section 2, binary and oversized input.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import fakeredis
import mpmath
import numpy
import pytest
import sympy
import typer
from rich.console import Console
from typer.testing import CliRunner

from agents.contracts.extraction import phases
from agents.contracts.sympy.errors import ParseRejected, Position
from agents.extraction import (
    EnforcementCompleted,
    ExtractRequest,
    PlanLocked,
    PlanRejected,
    ReportReady,
    RunCompleted,
    SchemaErrors,
    Verified,
    load_collection,
    lock,
)
from agents.extraction.check import check_collection
from agents.extraction.generator import KernelSource, kernel_code, render_plan, write_folder
from agents.extraction.planner_agent import plan_request
from agents.extraction.validator import verdict
from agents.extraction.validator.tests_run import TestRun, run_tests
from agents.sympy.codegen import generate
from agents.sympy.parser import ParserLimits, canonical_hash, parse
from agents.sympy.violations import ViolationDesk
from bus import Keys, Publisher
from envelope import PacketEnvelope, registry
from governance import Escalations, Outcome, PolicyEngine
from l9.cli import extract as extract_cli
from l9.extract_progress import RunProgress, phase_rows
from l9.extract_run import InputError, Options, formula_check, read_text
from l9.extract_run import Outcome as RunOutcome
from l9.settings import Settings
from tests.fake_pipeline import (
    ANCHORS,
    PROBES,
    ROOT,
    Step,
    downstream,
    envelopes_of,
    locked_of,
    planner_steps,
)
from tests.unit.test_generator import local_kernels
from tests.unit.test_sections_v2 import T0, column, entries_of, facts, report_of, request_envelope

#: One agent: a manifest of its own, a kernel of one symbol, two that need a stable form.
NUMERICS = """
system: Numerics
module: core
name: numerics
role: Kernels at the edges of floating point
rootpath: L9/core/numerics
governance: {anchors: [Igor]}
cursorinstructions:
  generatefiles:
    [__init__.py, agent.py, kernels.py, numerics_manifest.json, test_numerics.py, test_kernels.py]
streams:
  consumes: [l9.numbers.in.v1]
  produces: [l9.numbers.out.v1]
expressions:
  double: "2*x"
  softmax_norm: "log(exp(x) + exp(y))"
  normal_cdf: "(1 + erf(x))/2"
"""
#: The same with a kernel that cancels at 1e4 and has no stable form: its test must fail.
CANCELLING = NUMERICS + '  asinh_gap: "sqrt(x**2 + 1) - x"\n'
FOLDER = "/x/numerics_20260102T030405Z"


def rendered(text: str) -> dict[str, bytes]:
    plan = lock(load_collection(text, "numerics.yaml"))
    return render_plan(plan, local_kernels(plan))


# -- 1. a planned *_manifest.json ----------------------------------------------------------------


def test_a_planned_manifest_file_lists_the_agents_other_files() -> None:
    plan = lock(load_collection(NUMERICS, "numerics.yaml"))
    files = render_plan(plan, local_kernels(plan))
    own_path = "code/L9/core/numerics/numerics_manifest.json"
    others = sorted(i.path for i in plan.items if i.category in ("file", "doc") and i.kind != "manifest")
    own = json.loads(files[own_path])
    assert [f["path"] for f in own["files"]] == others
    for entry in own["files"]:
        data = files[entry["path"]]
        assert entry["size"] == len(data)
    planners = json.loads(files["manifests/numerics_manifest.json"])
    assert [f["path"] for f in planners["files"]] == sorted([*others, own_path])
    assert render_plan(plan, local_kernels(plan)) == files, "deterministic"


# -- 3 and 7: the generated tests, run as the validator runs them -------------------------------------


async def test_one_symbol_kernels_and_stable_forms_pass_and_a_cancelling_kernel_fails_honestly(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "numerics"
    write_folder(folder, rendered(CANCELLING))
    run = await run_tests(folder, timeout_s=300)
    assert run.problem is None and run.tests > 20, run
    assert (run.failed, run.errors, run.passed) == (1, 0, run.tests - 1), run.failures
    (failure,) = run.failures
    assert "test_the_kernel_agrees_with_its_formula_to_high_precision[asinh_gap]" in failure
    assert "sqrt(x**2 + 1) - x, wrong at 1 of 37 points: (x=10000.0) gives 5.0000000555" in failure
    assert "the formula 4.9999999875e-5" in failure
    tests = run.payload("numerics", str(folder))
    ended = verdict(tests, Verified(outcome="verified", collection="numerics", folder=str(folder), ok=True))
    assert not tests.ok and ended.result == "failed"
    assert ended.reason.startswith(f"tests: 1 of {run.tests} did not pass (1 failed, 0 in error, 0 skipped: ")


def worker_source(name: str, formula: str) -> KernelSource:
    expr = parse(formula)
    code = generate(expr, "python", "result", None, True)
    return KernelSource(
        name, formula, tuple(code["args"]), tuple(code["params"]), code["source"], 1, 1, canonical_hash(expr)
    )


def run_source(source: str, args: dict[str, float]) -> float:
    """The worker's function as written, evaluated (trusted: the local code generator wrote it)."""
    space: dict[str, Any] = {}
    exec(source, space)
    with numpy.errstate(all="ignore"):
        return float(space["result"](*map(numpy.float64, args.values())))


def run_checked(source: KernelSource, args: dict[str, float]) -> float:
    """The kernel's statements as the generator writes them into ``kernels.py``."""
    code = kernel_code(source)
    lines = [f"def result({', '.join(code.params)}):"]
    lines += [f"    {target} = {expr}" for target, expr in code.temporaries]
    lines.append(f"    return {code.result}")
    space: dict[str, Any] = {"numpy": numpy, "math": math}
    exec("\n".join(lines), space)
    with numpy.errstate(all="ignore"):
        return float(numpy.asarray(space["result"](*map(numpy.float64, args.values())), dtype=numpy.float64))


@pytest.mark.parametrize(
    ("formula", "point", "rewrite"),
    [
        ("log(exp(x) + exp(y))", {"x": 800.0, "y": -3.0}, "logaddexp"),
        ("log(1 + exp(x))", {"x": 800.0}, "logaddexp"),
        ("(1 + erf(x))/2", {"x": -8.5}, "erfc"),
        ("1 - erf(x)", {"x": 9.0}, "erfc"),
        ("-(t*log(p) + (1 - t)*log(1 - p))", {"p": 1e-9, "t": 0.0}, "log1p"),
        ("exp(x) - 1", {"x": 1e-9}, "expm1"),
        ("cos(x) - 1", {"x": 1e-9}, "sin"),
        ("sqrt(x**2 + y**2)", {"x": 1e200, "y": 1e200}, "hypot"),
    ],
)
def test_a_stable_form_keeps_the_digits_the_code_as_written_loses(
    formula: str, point: dict[str, float], rewrite: str
) -> None:
    source = worker_source("k", formula)
    assert rewrite in kernel_code(source).stable
    expr = parse(formula)
    symbols = sorted(expr.free_symbols, key=lambda s: s.name)
    with mpmath.workdps(60):
        truth = float(sympy.lambdify(symbols, expr, "mpmath")(*map(mpmath.mpf, point.values())))
    as_written, stable = run_source(source.source, point), run_checked(source, point)
    assert not math.isclose(as_written, truth, rel_tol=1e-9), (as_written, truth)
    assert math.isclose(stable, truth, rel_tol=1e-12), (stable, truth)


def test_code_no_rule_covers_is_left_as_the_worker_wrote_it() -> None:
    for formula in ("sqrt(x**2 + 1) - x", "1/(1+exp(-(w1*x + w2*y**2)))", "x*exp(y) - 2"):
        code = kernel_code(worker_source("k", formula))
        assert code.stable == (), formula
        assert "log1p" not in code.result and "expm1" not in code.result


# -- 2: every test must pass, and section 10 agrees with sections 7 and 8 --------------------------------


def test_one_failing_test_of_forty_fails_phase_4() -> None:
    run = TestRun(compiled=8, tests=40, passed=39, failed=1, coverage_percent=99.0, failures=("t: boom",))
    assert not run.ok and run.payload("demo", FOLDER).outcome == "failed: 39/40 tests passed, coverage 99.0%"
    assert TestRun(compiled=8, tests=40, passed=40, coverage_percent=99.0).ok
    assert not TestRun(compiled=8, tests=40, passed=39, skipped=1, coverage_percent=99.0).ok
    assert not TestRun(compiled=8, coverage_percent=100.0).ok, "no test is no pass"


async def run_steps(fail: str | None = None, tests: dict[str, Any] | None = None) -> list[Step]:
    """The fake pipeline's run, its tests record changed by ``tests``."""
    steps = await planner_steps(request_envelope_payload(), T0)
    at, locked = locked_of(steps)
    steps += downstream(at, locked, FOLDER, fail=fail)
    if tests is not None:
        steps = [
            dataclasses.replace(s, payload=s.payload.model_copy(update=tests))
            if isinstance(s.payload, phases.TestsValidated)
            else s
            for s in steps
        ]
    return steps


def request_envelope_payload() -> ExtractRequest:
    envelope = request_envelope()
    payload = registry.load(envelope)
    assert isinstance(payload, ExtractRequest)
    return payload


def report_for(steps: list[Step], version: int) -> Any:
    request = request_envelope()
    return report_of(entries_of([request, *(e for e, _ in envelopes_of(request, steps))]), version=version)


async def test_section_10_agrees_with_section_7_even_when_the_tests_record_says_ok() -> None:
    failures = tuple(f"tests/tensoraios/test_kernels.py::test_{n}: assert 0.0 == 0.01125" for n in range(4))
    forged = {"ok": True, "passed": 36, "failed": 4, "pass_rate": 0.9, "failures": failures}
    steps = await run_steps(tests=forged)
    v2, v3 = report_for(steps, 2), report_for(steps, 3)
    assert v2.outcome.status == "completed" and "no record shows a failure" in v2.outcome.statement
    assert len(facts(v2, 7)["Failures"].rows) == 4, "the defect: section 7 listed four, section 10 none"
    assert v3.sections_version == 3 and v3.outcome.status == "failed"
    reasons = {(f.type, f.reason) for f in v3.outcome.failures}
    assert reasons == {("l9.validation.tests.v1", "failed = 4")}
    assert column(facts(v3, 7)["Failures"], "what") == list(failures)


async def test_a_verification_problem_fails_the_run_in_section_10() -> None:
    steps = await run_steps()
    steps = [
        dataclasses.replace(s, payload=s.payload.model_copy(update={"extra": ("docs/x/NOTES.md",)}))
        if isinstance(s.payload, Verified)
        else s
        for s in steps
    ]
    report = report_for(steps, 3)
    assert {(f.type, f.reason) for f in report.outcome.failures} == {("l9.validation.verify.v1", "extra = 1")}


# -- 4 and 8: strict mode off, links in section 2 -------------------------------------------------


async def test_section_2_shows_links_as_written_and_every_entry_left_out() -> None:
    path = ROOT / "examples" / "broken" / "unresolvable_file.yaml"
    request = ExtractRequest.of_text(path.read_text(), path.name, "tester@host")
    payloads = await plan_request(request, probes=PROBES, anchors=ANCHORS, strict=False, requested_at=T0)
    locked = payloads[-1]
    assert isinstance(locked, PlanLocked) and len(locked.plan.unresolved) == 7
    steps = [Step(p, None, source="agent://planner/planner-0") for p in payloads]
    steps += downstream(len(steps) - 1, locked, FOLDER)
    report = report_for(steps, 3)
    dropped = facts(report, 2)[next(t for t in facts(report, 2) if t.startswith("Left out of the plan"))]
    assert column(dropped, "entry") == [u.path for u in locked.plan.unresolved]
    assert "tensor_scorer.py" in column(dropped, "entry")
    final = facts(report, 10)
    assert any(t.startswith("Left out of the plan") for t in final), "section 10 says it too"
    planned = facts(report, 2)["Planned items"]
    links = [row for row in planned.rows if row[2] == "link"]
    assert [(r[3], r[6]) for r in links] == [("bus/keys.py", "existing module bus.keys")]
    v2_links = [r for r in facts(report_for(await run_steps(), 2), 2)["Planned items"].rows if r[2] == "link"]
    assert "main_agent" in [r[3] for r in v2_links], "v2 showed the agent instead of the path"
    v3 = facts(report_for(await run_steps(), 3), 2)["Planned items"]
    assert ("L9/agents/main/payloads.py", "agent main_agent (L9.agents.main.payloads)") in [
        (r[3], r[6]) for r in v3.rows if r[2] == "link"
    ]


async def progress_of(steps: list[Step], times: list[float]) -> RunProgress:
    request = request_envelope()
    progress = RunProgress(request.correlation_id)
    for (envelope, _), now in zip(envelopes_of(request, steps), times, strict=True):
        progress.apply(envelope, registry.load(envelope), now=now)
    return progress


async def test_the_live_table_counts_a_phase_from_the_end_of_the_one_before() -> None:
    steps = await run_steps()
    times = [float(n) for n in range(len(steps))]
    kinds = [type(s.payload) for s in steps]
    enforced = kinds.index(EnforcementCompleted)
    times = [t + (15.0 if n > enforced else 0.0) for n, t in enumerate(times)]  # validating takes 15 s
    progress = await progress_of(steps, times)
    rows = {r[0]: r for r in phase_rows(progress, now=times[-1])}
    validate_seconds = times[kinds.index(RunCompleted)] - times[enforced]
    assert rows["validate"][3] == f"{validate_seconds:.1f}" and validate_seconds > 15


async def test_l9_extract_keeps_every_error_and_every_entry_left_out() -> None:
    many = "\n".join(
        f"- {{system: A{n}, module: m, name: a{n}, role: r, rootpath: L9/a{n},"
        f" governance: {{anchors: [Igor]}},"
        f" cursorinstructions: {{generatefiles: [__init__.py, engine{n}.py]}}}}"
        for n in range(5)
    )
    request = ExtractRequest.of_text(many, "many.yaml", "tester@host")
    payloads = await plan_request(request, probes=PROBES, anchors=ANCHORS, requested_at=T0)
    rejected = payloads[-2]
    assert isinstance(rejected, PlanRejected) and len(rejected.errors) == 5
    steps = [Step(p, None, source="agent://planner/planner-0") for p in payloads]
    progress = await progress_of(steps, [0.0] * len(steps))
    assert progress.problems() == [e.text for e in rejected.errors]
    ended = payloads[-1]
    assert isinstance(ended, RunCompleted) and ended.reason.endswith(
        "; and 2 more (every error is in the rejection)"
    )
    dropped = await plan_request(request, probes=PROBES, anchors=ANCHORS, strict=False, requested_at=T0)
    progress = await progress_of([Step(p, None) for p in dropped], [0.0] * len(dropped))
    assert [u.path for u in progress.left_out] == [f"engine{n}.py" for n in range(5)]
    assert "5 entries left out (strict mode off)" in progress.phases["plan"].detail


def test_the_command_prints_every_problem_and_every_entry_left_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    progress = RunProgress("run-1")
    progress.found["plan"] = [
        f"many.yaml:{n} agent 'a{n}': entry 'engine{n}.py' is unresolvable" for n in range(6)
    ]
    progress.completed = RunCompleted(outcome="failed", collection="many", result="failed", phase="plan")
    progress.ready = ReportReady(
        outcome="ready", run="run-1", result="failed", path="/r.md", report_digest="0" * 64, head_seq=1
    )
    options = Options(Path("many.yaml"), None, True, False, 5.0, "me", True)
    console = Console(width=300)
    with pytest.raises(typer.Exit):
        extract_cli._finish(RunOutcome(1, progress), options, console, console)
    out = capsys.readouterr().out
    for n in range(6):
        assert f"many.yaml:{n} agent 'a{n}': entry 'engine{n}.py' is unresolvable" in out


# -- 5: the local check ---------------------------------------------------------------------------------

BROKEN = """\
- system: Kernels
  module: core
  name: kernels_agent
  role: Computes
  rootpath: L9/core/kernels_agent
  governance: {anchors: [Igor]}
  cursorinstructions: {generatefiles: [__init__.py, kernels.py, test_kernels.py, scorer.py]}
  expressions:
    peak: "max(x, y)"
    lambda: "2*x"
    fine: "x + y"
- system: Broken
  module: core
  name: broken
  role: Has a field no schema has
  rootpath: L9/core/broken
  governance: {anchors: [Igor]}
  colour: blue
  expressions:
    total: "a +"
"""


def test_the_local_check_lists_every_error_it_can_find_each_at_its_line() -> None:
    check = formula_check(ParserLimits())
    with pytest.raises(SchemaErrors) as caught:
        check_collection(BROKEN, "broken.yaml", parse=check)
    texts = [str(e) for e in caught.value.errors]
    assert texts == [
        "broken.yaml:9 agent 'kernels_agent': expressions.peak is refused by the safe parser:"
        " forbidden.unknown_function at 1:1: max() is not a whitelisted function (did you mean Max?)",
        "broken.yaml:10 agent 'kernels_agent': expressions.lambda cannot name a kernel: 'lambda' is a Python"
        " keyword",
        "broken.yaml:12 agent 'broken': cursorinstructions: is required",
        "broken.yaml:18 agent 'broken': colour: is not a field of the schema",
        "broken.yaml:20 agent 'broken': expressions.total: is not a formula: invalid syntax",
    ], texts
    # without the broken agent the whole plan is resolved too: the unresolvable entry is named
    kernels_only = BROKEN.split("- system: Broken")[0]
    with pytest.raises(SchemaErrors) as caught:
        check_collection(kernels_only, "broken.yaml", parse=check)
    assert any("entry 'scorer.py' is unresolvable" in str(e) for e in caught.value.errors)
    assert len(caught.value.errors) == 3


def test_a_collection_without_tests_is_refused_before_it_is_sent() -> None:
    text = NUMERICS.replace(", test_numerics.py, test_kernels.py", "")
    with pytest.raises(SchemaErrors, match="plans no test file"):
        check_collection(text, "numerics.yaml")
    collection, plan = check_collection(NUMERICS, "numerics.yaml", parse=formula_check(ParserLimits()))
    assert plan is not None and len(collection) == 1


async def test_the_planner_rejects_a_kernel_named_like_a_keyword_whatever_the_strict_mode() -> None:
    text = NUMERICS.replace("  double:", "  lambda:")
    request = ExtractRequest.of_text(text, "numerics.yaml", "tester@host")
    for strict in (True, False):
        payloads = await plan_request(request, probes=PROBES, anchors=ANCHORS, strict=strict, requested_at=T0)
        rejected = payloads[-2]
        assert isinstance(rejected, PlanRejected) and rejected.stage == "plan"
        assert [e.field for e in rejected.errors] == ["expressions.lambda"]


def run_extract(tmp_path: Path, name: str, data: bytes, monkeypatch: pytest.MonkeyPatch) -> Any:
    # the command's settings, without configuring logging (it would hold on to the runner's stderr)
    monkeypatch.setattr(extract_cli, "load_settings", lambda: Settings(home=tmp_path / "home"))
    monkeypatch.setattr(extract_cli, "quiet", lambda level: None)
    path = tmp_path / name
    path.write_bytes(data)
    return CliRunner().invoke(extract_cli.commands, [str(path)], catch_exceptions=False)


def test_l9_extract_prints_every_error_of_the_file_and_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run_extract(tmp_path, "broken.yaml", BROKEN.encode(), monkeypatch)
    assert result.exit_code == 2
    listed = [line.strip() for line in result.stderr.splitlines() if line.startswith("  ")]
    assert len(listed) == 5 and "did you mean Max?" in listed[0], result.stderr
    assert "nothing was published" in result.stderr


@pytest.mark.parametrize(
    ("name", "data", "said"),
    [
        (
            "logo.png",
            b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
            "logo.png:1: not UTF-8 text (byte 0: invalid start byte)",
        ),
        ("nul.yaml", b"name: a\nrole: b\x00c\n", "nul.yaml:2: a NUL byte: this is a binary file"),
        (
            "huge.md",
            b"# x\n" + b"a" * 5_000_000,
            "huge.md: 5,000,004 characters: a schema collection is at most 2,000,000",
        ),
    ],
)
def test_input_that_is_no_collection_gets_one_plain_located_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, data: bytes, said: str
) -> None:
    with pytest.raises(InputError) as caught:
        read_text(_written(tmp_path, name, data))
    assert said in str(caught.value)
    result = run_extract(tmp_path, name, data, monkeypatch)
    assert result.exit_code == 2
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert said in " ".join(result.stderr.split()) and "Traceback" not in result.stderr, line


def _written(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / "direct" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


# -- 6: the SymPy worker's refusal of a run's own input ---------------------------------------------------


async def test_a_refusal_of_the_generators_request_is_a_denial_and_asks_nobody() -> None:
    engine = PolicyEngine.load()
    redis = fakeredis.FakeAsyncRedis()
    escalations = Escalations(
        redis,
        Publisher(redis, Keys("t"), None),
        spec=engine.escalation,
        anchors=engine.anchors,
        source="agent://sympy/sympy-0",
    )
    desk = ViolationDesk(engine, escalations)
    error = ParseRejected(
        "forbidden", "unknown_function", "max() is not a whitelisted function", Position(1, 1, 0)
    )

    def request(source: str) -> PacketEnvelope:
        return PacketEnvelope.new(
            type="l9.sympy.generate_code.v1",
            source=source,
            data={"expr": "max()", "language": "python"},
            kind="request",
            correlation_id="run-1",
        )

    other = desk.decide(error, request("agent://area/area-0"))
    assert other.outcome is Outcome.ESCALATE and other.anchors == ("Igor",)
    own = desk.decide(error, request("agent://generator/generator-0"))
    assert own.outcome is Outcome.DENY and own.anchors == ()
    assert own.policy == "sympy-dangerous-functions@1"
    assert "a run's own input: the run fails, no anchor is asked" in own.reason
    reported = await desk.report(error, request("agent://generator/generator-0"))
    assert reported.escalation is None and not await escalations.pending()
