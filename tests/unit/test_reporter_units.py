"""The reporter and the report engine on the in-memory recorder: a run's signed report built
on the head the trail fixes, the same bytes on a redelivery, verified against the trail,
and refused once the trail no longer holds what it says."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from agents.auditor.report import NoRecordsError, render, report_from_trail, verify_report_text
from agents.auditor.reporter import Reporter, ReportNotReady
from bus import Keys, Publisher
from envelope import PacketEnvelope, Signer
from memory.audit import AuditRecord, InMemoryAuditRecorder, SigningKey
from tests.unit.test_report import FULL_RUN

SIGNER = Signer({"k": b"unit reporter secret"}, "k")
KEY = SigningKey.generate()
RUN = "run-1"
T0 = datetime(2026, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)


def ticking() -> Callable[[], datetime]:
    counter = itertools.count()
    return lambda: T0 + timedelta(seconds=next(counter))


def envelope(type_: str, data: dict[str, Any], kind: str = "event", run: str = RUN) -> PacketEnvelope:
    return PacketEnvelope.new(
        type=type_, source="agent://planner/0", data=data, correlation_id=run, kind=kind
    )


def record(env: PacketEnvelope, n: int) -> AuditRecord:
    return AuditRecord.from_envelope(env, stream="plan", entry_id=f"{n}-0", signer=SIGNER)


@pytest.fixture
async def reporter(tmp_path: Path) -> AsyncIterator[Reporter]:
    redis = fakeredis.FakeAsyncRedis()
    keys = Keys("unit")
    recorder = InMemoryAuditRecorder(clock=ticking())
    yield Reporter(
        redis,
        keys,
        recorder,
        Publisher(redis, keys, SIGNER),
        KEY,
        tmp_path / "reports",
        "agent://reporter/unit-0",
        commit_timeout_s=0.2,
    )
    await redis.aclose()


def recorder_of(reporter: Reporter) -> InMemoryAuditRecorder:
    assert isinstance(reporter.store, InMemoryAuditRecorder)
    return reporter.store


async def record_run(recorder: InMemoryAuditRecorder) -> list[PacketEnvelope]:
    """The run of FULL_RUN, another run's records in between, and a report notice after it."""
    mine = [envelope(t, d, k) for t, d, k in FULL_RUN]
    other = [envelope("l9.plan.locked.v1", {"files": i}, run="run-2") for i in range(3)]
    notice = envelope("l9.report.ready.v1", {"run": RUN, "result": "passed"})
    half = len(mine) // 2
    batches = [mine[:half], other, mine[half:], [notice]]
    n = itertools.count(1)
    for batch in batches:
        await recorder.append([record(e, next(n)) for e in batch])
    return mine


async def test_the_reporter_renders_the_report_of_a_run_from_the_trail(reporter: Reporter) -> None:
    recorder = recorder_of(reporter)
    mine = await record_run(recorder)
    written = await reporter.write(RUN)
    report, completion = written.report, recorder.entries[-2]
    assert completion.envelope_id == mine[-1].id
    assert (report.declaration.head_seq, report.declaration.head_chain_hash) == (
        completion.seq,
        completion.chain_hash.hex(),
    ), "the head is the run's last record that is evidence, not the notice after it"
    assert report.declaration.entries == len(FULL_RUN)
    assert report.generated_at == completion.recorded_at.isoformat(timespec="microseconds")
    assert report.outcome.status == "completed"
    (checkpoint,) = await recorder.checkpoints()
    assert report.declaration.checkpoint_id == checkpoint.id and checkpoint.seq >= completion.seq
    markdown = written.markdown.read_text()
    assert written.json.read_text().startswith("{")
    check = await verify_report_text(recorder, markdown, KEY.trusted())
    assert check.ok, check.problems


async def test_a_redelivery_rebuilds_the_same_bytes_after_the_trail_moved_on(reporter: Reporter) -> None:
    recorder = recorder_of(reporter)
    await record_run(recorder)
    first = await reporter.write(RUN)
    markdown, json_text = first.markdown.read_text(), first.json.read_text()
    await recorder.append([record(envelope("l9.report.ready.v1", {"run": RUN}), 99)])
    await recorder.append([record(envelope("l9.plan.locked.v1", {"files": 1}, run="run-3"), 100)])
    await recorder.make_checkpoint(KEY)
    again = await reporter.write(RUN)
    assert (again.markdown.read_text(), again.json.read_text()) == (markdown, json_text)
    assert len(await recorder.checkpoints()) == 2, "the oldest covering checkpoint is used, none is made"


async def test_a_report_no_longer_verifies_once_the_trail_changed(reporter: Reporter) -> None:
    recorder = recorder_of(reporter)
    await record_run(recorder)
    markdown = (await reporter.write(RUN)).markdown.read_text()
    at = next(i for i, e in enumerate(recorder.entries) if e.type == "l9.plan.locked.v1")
    forged = record(envelope("l9.plan.locked.v1", {"files": 400, "plan_hash": "ef" * 16}), 0)
    recorder.entries[at] = replace(recorder.entries[at], env=forged.env, sig=forged.sig)
    check = await verify_report_text(recorder, markdown, KEY.trusted())
    assert not check.ok
    assert any(p.startswith("content: section 2 ") for p in check.problems), check.problems
    assert not (await recorder.verify()).ok, "and the trail itself names the edit"


async def test_a_completion_not_in_the_trail_yet_is_retried_later(reporter: Reporter) -> None:
    recorder = recorder_of(reporter)
    completion = envelope("l9.run.completed.v1", {"files": 4})
    with pytest.raises(ReportNotReady, match="is not in the audit trail"):
        await reporter.wait_committed(completion)
    await recorder.append([record(envelope("l9.run.completed.v1", {"files": 4}, run="run-2"), 1)])
    await recorder.append([record(completion, 2)])
    await reporter.wait_committed(completion)


async def test_report_from_trail_builds_on_the_current_head() -> None:
    recorder = InMemoryAuditRecorder(clock=ticking())
    with pytest.raises(NoRecordsError):
        await report_from_trail(recorder, RUN, KEY)
    await record_run(recorder)
    report = await report_from_trail(recorder, RUN, KEY, generated_at=T0)
    head = await recorder.head()
    assert (report.declaration.head_seq, report.declaration.entries) == (head.seq, len(FULL_RUN) + 1)
    check = await verify_report_text(recorder, render(report, "json"), KEY.trusted())
    assert check.ok, check.problems
