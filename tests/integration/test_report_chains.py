"""Evidence reports on a trail in chains: built on a signed tree head, the records in commit
order, the root cited in the declaration, and ``l9 report verify`` checking every record by
an inclusion proof (against the real PostgreSQL trail)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from agents.auditor.report import (
    FORMATS,
    ChainPoint,
    Report,
    build_report,
    entries_digest,
    render,
    report_from_trail,
    sign_report,
    verify_report_text,
)
from agents.auditor.reporter import oldest_covering
from envelope import PacketEnvelope, Signer
from l9.devstack import StackEndpoints
from memory.audit.chains import Layout
from memory.postgres import AuditRecord, Committed, PostgresAuditStore, SigningKey, migrate, writer_dsn
from tests.conftest import KEYRING
from tests.integration.conftest import drop_database, new_database
from tests.integration.test_audit_chains_verify import streams_for
from tests.integration.test_audit_store import _tamper
from tests.unit.test_report import FULL_RUN

pytestmark = pytest.mark.integration

KEY = SigningKey.generate()
TRUSTED = KEY.trusted()
STREAMS = streams_for(Layout(2))  # a bus stream of chain 0, then one of chain 1


def record(spec: tuple[str, dict[str, Any], str], run: str, stream: str) -> AuditRecord:
    type_, data, kind = spec
    envelope = PacketEnvelope.new(
        type=type_, source="agent://planner/0", data=data, correlation_id=run, kind=kind
    )
    entry_id = f"{uuid.uuid4().int % 10**12}-0"
    return AuditRecord.from_envelope(
        envelope, stream=stream, entry_id=entry_id, signer=Signer(KEYRING, "dev")
    )


async def publish(
    store: PostgresAuditStore, specs: Sequence[tuple[str, dict[str, Any], str]], run: str, chain: int
) -> list[Committed]:
    committed = await store.append([record(s, run, STREAMS[chain]) for s in specs])
    assert all(c.new for c in committed)
    return committed


@pytest.fixture
async def admin(stack: StackEndpoints) -> AsyncIterator[str]:
    url = await new_database(stack)
    await migrate(url, chains=2)
    yield url
    await drop_database(stack, url)


@pytest.fixture
async def store(admin: str) -> AsyncIterator[PostgresAuditStore]:
    async with await PostgresAuditStore.open(writer_dsn(admin)) as opened:
        yield opened


async def check(store: PostgresAuditStore, text: str) -> tuple[str, ...]:
    return (await verify_report_text(store, text, TRUSTED)).problems


async def run_across_chains(store: PostgresAuditStore, run: str) -> list[Committed]:
    """The run's records, one append at a time, alternating between the chains; chain 0 also
    gets records of another run, so its seqs run ahead of chain 1's."""
    committed = []
    for i, spec in enumerate(FULL_RUN):
        committed += await publish(store, [spec], run, i % 2)
        await publish(store, [("l9.plan.locked.v1", {"other": i}, "event")] * 3, f"{run}-other", 0)
    return committed


def shown_seqs(report: Report) -> list[int]:
    return [r.seq for s in report.sections for r in s.records] + [r.seq for r in report.appendix]


async def test_a_report_on_two_chains_cites_the_tree_head_and_shows_commit_order(
    store: PostgresAuditStore,
) -> None:
    committed = await run_across_chains(store, "run-a")
    report = await report_from_trail(store, "run-a", KEY)
    (checkpoint,) = await store.checkpoints()
    d = report.declaration
    assert checkpoint.root is not None
    assert (d.chains, d.tree_head_root, d.checkpoint_id) == (2, checkpoint.root.hex(), checkpoint.id)
    assert d.entries == len(FULL_RUN) and report.outcome.status == "completed"
    # Commit order is the order of the appends here; by seq it would be another (chain 0 runs ahead).
    in_commit_order = [c.seq for c in committed]
    assert in_commit_order != sorted(in_commit_order)
    stored = await store.entries_for_correlation("run-a")
    by_commit = sorted(stored, key=lambda e: (e.recorded_at, e.seq))
    assert [e.seq for e in by_commit] == in_commit_order
    assert d.entries_digest == entries_digest(by_commit).hex()
    assert (d.first_seq, d.last_seq) == (in_commit_order[0], in_commit_order[-1])
    assert (d.head_seq, d.head_chain_hash) == (checkpoint.seq, checkpoint.head_point()[1].hex())
    assert sorted(shown_seqs(report)) == sorted(in_commit_order)
    md = render(report, "md")
    assert "over the trail's 2 chains" in md and "in commit order" in md
    assert f"| signed tree head (RFC 9162 root over 2 chain(s)) | `{checkpoint.root.hex()}` |" in md
    for fmt in FORMATS:
        assert await check(store, render(report, fmt)) == ()


async def test_a_later_record_with_a_lower_seq_leaves_the_report_valid(store: PostgresAuditStore) -> None:
    """A seq cut would take in a record of the slower chain appended after the report: the
    tree head's sizes do not."""
    await run_across_chains(store, "run-b")
    earlier = await report_from_trail(store, "run-b", KEY)
    (late,) = await publish(store, [FULL_RUN[0]], "run-b", 1)
    assert late.seq < earlier.declaration.head_seq  # inside a seq cut, outside the tree head
    for fmt in FORMATS:
        assert await check(store, render(earlier, fmt)) == ()
    later = await report_from_trail(store, "run-b", KEY)
    assert later.declaration.entries == earlier.declaration.entries + 1
    assert later.declaration.checkpoint_id == earlier.declaration.checkpoint_id + 1
    assert late.seq in shown_seqs(later) and late.seq not in shown_seqs(earlier)


async def test_a_changed_tree_node_fails_the_records_proofs_though_the_rows_match(
    admin: str, store: PostgresAuditStore
) -> None:
    # Chain 1's first 32 entries are of another run: the run's entries there sit past them,
    # so their proofs take the stored node over the first 16 leaves (every fourth level is kept).
    await publish(store, [("l9.plan.locked.v1", {"filler": True}, "event")] * 32, "run-c-other", 1)
    await run_across_chains(store, "run-c")
    report = await report_from_trail(store, "run-c", KEY)
    md = render(report, "md")
    assert await check(store, md) == ()
    await _tamper(admin, f"UPDATE l9_audit.tree_nodes SET hash = '\\x{'00' * 32}' WHERE chain = 1")
    problems = await check(store, md)
    assert problems, "a rewritten tree must fail the proofs"
    assert all(p.startswith("proof: seq ") for p in problems)
    assert "path does not lead to chain 1's root" in problems[0]
    chain_1 = {r for r in shown_seqs(report) if Layout(2).chain_at(r) == 1}
    named = {int(p.split()[2]) for p in problems if "more record" not in p}
    assert named <= chain_1


async def test_a_report_citing_another_root_fails(store: PostgresAuditStore) -> None:
    await run_across_chains(store, "run-d")
    report = await report_from_trail(store, "run-d", KEY)
    root = report.declaration.tree_head_root
    data = json.loads(render(report, "json"))
    data["declaration"]["tree_head_root"] = "ab" * 32
    problems = await check(store, json.dumps(data))
    cited = f"signs tree head root {root}, the report cites root {'ab' * 32}"
    assert f"trail: checkpoint #{report.declaration.checkpoint_id} {cited}" in problems


async def test_the_reporter_builds_on_the_oldest_checkpoint_covering_every_chain(
    store: PostgresAuditStore,
) -> None:
    committed = await run_across_chains(store, "run-e")
    first = await store.make_checkpoint(KEY)
    await publish(store, [FULL_RUN[0]], "run-e-other", 1)
    await store.make_checkpoint(KEY)
    seqs = [c.seq for c in committed]
    assert (await oldest_covering(store, seqs, KEY)).id == first.id
    (late,) = await publish(store, [FULL_RUN[1]], "run-e", 1)
    made = await oldest_covering(store, [*seqs, late.seq], KEY)
    assert made.id == first.id + 2 and made.covers(late.seq) and not first.covers(late.seq)


async def test_one_chain_reports_cite_the_root_and_reports_without_it_still_verify(
    stack: StackEndpoints,
) -> None:
    url = await new_database(stack)
    try:
        await migrate(url)
        async with await PostgresAuditStore.open(writer_dsn(url)) as one:
            committed = await one.append([record(s, "run-f", "t:audit") for s in FULL_RUN])
            report = await report_from_trail(one, "run-f", KEY)
            (checkpoint,) = await one.checkpoints()
            assert checkpoint.root is not None
            assert (report.declaration.chains, report.declaration.tree_head_root) == (
                1,
                checkpoint.root.hex(),
            )
            assert await check(one, render(report, "md")) == ()
            # A report made before roots were cited: the same head and checkpoint, no root.
            head = committed[-1]
            plain = sign_report(
                build_report(
                    await one.entries_for_correlation("run-f"),
                    run_id="run-f",
                    generated_at=datetime.now(UTC),
                    head=ChainPoint(head.seq, head.chain_hash),
                    checkpoint=checkpoint,
                ),
                KEY,
            )
            for fmt in FORMATS:
                text = render(plain, fmt)
                assert "tree_head_root" not in text and "signed tree head" not in text
                assert await check(one, text) == ()
    finally:
        await drop_database(stack, url)
