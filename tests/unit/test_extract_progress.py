"""What ``l9 extract`` shows of a run, from the real payloads of every phase (no server):
each phase's state and detail, the generated agents, where a stuck run is stuck, and
which streams it watches."""

from __future__ import annotations

from pathlib import Path

from agents.extraction import ReportReady
from envelope import PacketEnvelope, registry
from governance import load_policy_file
from l9.extract_progress import RunProgress, phase_rows, run_streams
from tests.fake_pipeline import ROOT, downstream, envelopes_of, locked_of, planner_steps, request_for


async def progress_of(fail: str | None = None, path: Path | None = None, report: bool = True) -> RunProgress:
    request = request_for(path) if path else request_for()
    root = PacketEnvelope.new(
        type="l9.extract.request.v1", source="agent://cli/t", data=request.model_dump(mode="json")
    )
    steps = await planner_steps(request, root.time)
    if path is None:
        at, locked = locked_of(steps)
        steps += downstream(at, locked, "/out/x", fail=fail)
    progress = RunProgress(root.correlation_id)
    for n, (envelope, _) in enumerate(envelopes_of(root, steps)):
        progress.apply(envelope, registry.load(envelope), now=float(n))
    if report and progress.completed is not None:
        ready = ReportReady(
            outcome="ready",
            run=progress.run,
            result=progress.completed.result,
            path="/r.md",
            report_digest="0" * 64,
            head_seq=9,
        )
        progress.apply(
            PacketEnvelope.new(
                type="l9.report.ready.v1",
                source="agent://reporter/reporter-0",
                data=ready.model_dump(mode="json"),
                correlation_id=progress.run,
            ),
            ready,
        )
    return progress


def status(progress: RunProgress) -> dict[str, str]:
    return {name: state.status for name, state in progress.phases.items()}


async def test_a_passed_run_has_every_phase_done_and_each_agent_generated() -> None:
    progress = await progress_of("approved")
    assert progress.finished and progress.passed and progress.folder == "/out/x"
    assert set(status(progress).values()) == {"done"}
    assert progress.phases["enforce"].detail.endswith("escalation approved by Igor: reviewed the file")
    assert progress.phases["generate"].agent == "generator/generator-0"
    rows = phase_rows(progress, now=100.0)
    assert [r[0] for r in rows][:7] == [
        "plan",
        "generate",
        "  tensoraios",
        "  main_agent",
        "  tensor_trainer",
        "  tensor_auditor",
        "  plastos_adapter",
    ]
    assert rows[2][4].startswith("wave 0: 14 files")


async def test_a_denial_fails_enforce_and_skips_validation() -> None:
    progress = await progress_of("enforce")
    assert not progress.passed
    assert status(progress) == {
        "plan": "done",
        "generate": "done",
        "enforce": "failed",
        "validate": "skipped",
        "report": "done",
    }
    assert "forbidden-calls@1" in progress.phases["enforce"].detail


async def test_a_rejected_plan_fails_plan_with_its_errors() -> None:
    progress = await progress_of(path=ROOT / "examples" / "broken" / "cycle.yaml")
    assert status(progress)["plan"] == "failed" and status(progress)["generate"] == "skipped"
    assert "ingest -> score -> report -> ingest" in progress.phases["plan"].detail
    assert progress.completed is not None and progress.completed.phase == "plan"


async def test_a_run_waiting_for_its_report_is_stuck_at_report_and_one_never_planned_at_plan() -> None:
    waiting = await progress_of(report=False)
    assert not waiting.finished and waiting.current() == "report"
    assert waiting.phases["validate"].status == "done"
    assert RunProgress("r").current() == "plan"


def test_the_watched_streams_include_the_policy_files_governance_channels() -> None:
    streams = run_streams(load_policy_file(None))
    for name in ("plan", "generate", "enforce", "validation", "run", "report"):
        assert name in streams
    assert {"governance.compliance", "governance.escalations", "governance.resolutions"} <= set(streams)
