"""The audit trail's port on the in-memory recorder: the same chain bytes as the PostgreSQL
store's append, dedupe by envelope id, head and cursor semantics, filters, checkpoints and
verification naming the first bad seq."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from envelope import PacketEnvelope, Signer
from memory.audit import (
    AppendStatus,
    AuditRecord,
    AuditRecorder,
    AuditStoreError,
    Checkpoint,
    Damage,
    EntryFilter,
    Head,
    InMemoryAuditRecorder,
    SigningKey,
    prepare_append,
)
from memory.audit.chains import Layout
from memory.chain import (
    GENESIS,
    HASH_VERSION,
    canonical_header,
    chain_hash,
    leaf_hash,
    payload_hash,
    to_micros,
)
from memory.merkle import CompactRange
from memory.postgres.appending import ChainState, chain_batch

SIGNER = Signer({"k1": b"unit-recorder-secret"}, "k1")
T0 = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
KEY = SigningKey.generate()


def ticking(start: datetime = T0) -> Callable[[], datetime]:
    """A clock one second further on each call."""
    counter = itertools.count()
    return lambda: start + timedelta(seconds=next(counter))


def record(
    i: int,
    *,
    type_: str = "l9.plan.locked.v1",
    source: str = "agent://planner/planner-0",
    run: str = "run-1",
    stream: str = "plan",
) -> AuditRecord:
    envelope = PacketEnvelope.new(
        type=type_,
        source=source,
        data={"i": i},
        correlation_id=run,
        causation_id=f"cause-{i}" if i % 2 else None,
    )
    return AuditRecord.from_envelope(envelope, stream=stream, entry_id=f"{1000 + i}-0", signer=SIGNER)


@pytest.fixture
def recorder() -> Iterator[InMemoryAuditRecorder]:
    yield InMemoryAuditRecorder(clock=ticking())


def documented(rec: AuditRecord, seq: int, recorded_at: datetime, previous: bytes) -> tuple[bytes, bytes]:
    """Leaf and chain hash of ``rec`` at ``seq`` as memory.chain's module doc spells them out."""
    header = canonical_header([
        HASH_VERSION, seq, rec.envelope_id, rec.type, rec.source, rec.correlation_id, rec.causation_id,
        to_micros(rec.time), to_micros(recorded_at), rec.stream, rec.entry_id,
    ])  # fmt: skip
    leaf = leaf_hash(header, payload_hash(rec.env, rec.sig, rec.key_id))
    return leaf, chain_hash(previous, leaf)


# -- appending ----------------------------------------------------------------------------------------


async def test_an_append_chains_the_documented_bytes_that_the_postgres_append_writes(
    recorder: InMemoryAuditRecorder,
) -> None:
    records = [record(i) for i in range(5)]
    committed = await recorder.append(records)
    assert [c.status for c in committed] == [AppendStatus.STORED] * 5
    previous, recorded_at = GENESIS, recorder.entries[0].recorded_at
    for seq, (rec, entry) in enumerate(zip(records, recorder.entries, strict=True), start=1):
        leaf, previous = documented(rec, seq, recorded_at, previous)
        assert (entry.seq, entry.leaf_hash, entry.chain_hash) == (seq, leaf, previous)
    # the PostgreSQL adapter's rows for the same batch on the same head: the same hashes
    prepared = prepare_append(records)
    state = ChainState(0, 0, GENESIS, CompactRange())
    rows = chain_batch(prepared, {0: list(range(5))}, {0: state}, Layout(1), recorded_at)
    assert [(r[0], r[11], r[12]) for r in rows.entries] == [
        (e.seq, e.leaf_hash, e.chain_hash) for e in recorder.entries
    ]
    head = await recorder.head()
    assert (head.seq, head.chain_hash, head.updated_at) == (5, previous, recorded_at)


async def test_an_empty_trail_has_the_genesis_head_and_verifies(recorder: InMemoryAuditRecorder) -> None:
    head = await recorder.head()
    assert (head.seq, head.chain_hash) == (0, GENESIS)
    assert await recorder.append([]) == []
    report = await recorder.verify()
    assert report.ok and report.entries_checked == 0


async def test_duplicates_are_stored_once_and_conflicts_keep_the_first(
    recorder: InMemoryAuditRecorder,
) -> None:
    a, b, c, d = (record(i) for i in range(4))
    forged = a._replace(env=a.env + b"\x00")  # a's id, other bytes
    first = await recorder.append([a, b, a, forged, c])
    assert [(o.seq, o.status) for o in first] == [
        (1, AppendStatus.STORED),
        (2, AppendStatus.STORED),
        (1, AppendStatus.DUPLICATE),
        (1, AppendStatus.CONFLICT),
        (3, AppendStatus.STORED),
    ]
    head = await recorder.head()
    again = await recorder.append([b, d, forged])  # a redelivery, one new record, a late forgery
    assert [(o.seq, o.status, o.chain_hash) for o in again] == [
        (2, AppendStatus.DUPLICATE, first[1].chain_hash),
        (4, AppendStatus.STORED, again[1].chain_hash),
        (1, AppendStatus.CONFLICT, first[0].chain_hash),
    ]
    assert again[0].recorded_at == first[1].recorded_at < again[1].recorded_at
    assert [e.envelope_id for e in recorder.entries] == [
        a.envelope_id,
        b.envelope_id,
        c.envelope_id,
        d.envelope_id,
    ]
    assert recorder.entries[0].env == a.env, "the first payload stays"
    assert (await recorder.head()).seq == head.seq + 1
    assert (await recorder.verify()).ok


async def test_a_batch_of_nothing_new_leaves_the_head_alone(recorder: InMemoryAuditRecorder) -> None:
    records = [record(i) for i in range(3)]
    await recorder.append(records)
    head = await recorder.head()
    assert all(not c.new for c in await recorder.append(records))
    assert await recorder.head() == head


# -- reading ------------------------------------------------------------------------------------------


async def test_pages_follow_the_cursor_without_gaps_and_windows_stop_at_until(
    recorder: InMemoryAuditRecorder,
) -> None:
    await recorder.append([record(i) for i in range(7)])
    page = await recorder.entries_after(0, limit=3)
    assert ([e.seq for e in page.entries], page.cursor) == ([1, 2, 3], 3)
    page = await recorder.entries_after(page.cursor, limit=3)
    assert ([e.seq for e in page.entries], page.cursor) == ([4, 5, 6], 6)
    page = await recorder.entries_after(page.cursor, limit=3)
    assert ([e.seq for e in page.entries], page.cursor) == ([7], 7), "fewer than the limit: the head"
    page = await recorder.entries_after(7)
    assert (page.entries, page.cursor) == ([], 7)
    window = await recorder.entries_after(2, until_seq=4)
    assert ([e.seq for e in window.entries], window.cursor) == ([3, 4], 4)
    beyond = await recorder.entries_after(5, until_seq=99)
    assert ([e.seq for e in beyond.entries], beyond.cursor) == ([6, 7], 7)


async def test_filters_match_as_the_stores_sql_does(recorder: InMemoryAuditRecorder) -> None:
    await recorder.append([
        record(1, type_="l9.plan.locked.v1", source="agent://planner/planner-0"),
        record(2, type_="l9.plan_x.locked.v1", source="agent://planner/planner-1"),
        record(3, type_="l9.planax.locked.v1", source="agent://plan_er/p-0", run="run-2"),
        record(4, type_="l9.artifact.generated.v1", source="agent://planner2/p-0"),
        record(5, type_="l9.a.v1", source="agent://planner/planner-0", run="run-2"),
    ])  # fmt: skip

    async def seqs(**given: Any) -> list[int]:
        return [e.seq for e in (await recorder.entries_after(0, filters=EntryFilter(**given))).entries]

    assert await seqs(type_glob="l9.plan.*") == [1]
    assert await seqs(type_glob="l9.plan_x.*") == [2], "LIKE's _ in a glob is literal"
    assert await seqs(type_glob="l9.?.v1") == [5], "? is one character"
    assert await seqs(type_glob="l9.??.v1") == []
    assert await seqs(type_glob="*locked*") == [1, 2, 3]
    assert await seqs(source="planner") == [1, 2, 5], "an agent name: each of its instances"
    assert await seqs(source="plan_er") == [3]
    assert await seqs(source="agent://planner/planner-0") == [1, 5], "a URI: only itself"
    assert await seqs(correlation_id="run-2") == [3, 5]
    assert await seqs(source="planner", correlation_id="run-2") == [5]
    since = recorder.entries[0].recorded_at
    assert await seqs(since=since) == [1, 2, 3, 4, 5]
    assert await seqs(since=since + timedelta(microseconds=1)) == []
    page = await recorder.entries_after(0, limit=1, filters=EntryFilter(correlation_id="run-2"))
    assert ([e.seq for e in page.entries], page.cursor) == ([3], 3)


async def test_a_runs_records_with_their_payloads(recorder: InMemoryAuditRecorder) -> None:
    records = [record(1), record(2, run="run-2"), record(3)]
    await recorder.append(records)
    run = await recorder.entries_for_correlation("run-1")
    assert [e.seq for e in run] == [1, 3]
    assert run[1].envelope().data == {"i": 3}
    assert await recorder.entries_for_correlation("nobody") == []


async def test_watch_head_wakes_up_a_tail_with_the_new_head(recorder: InMemoryAuditRecorder) -> None:
    await recorder.append([record(0)])
    seen: list[int] = []

    async def watch() -> None:
        async for head in recorder.watch_head():
            seen.append(head)
            if head >= 4:
                return

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await anyio.sleep(0.01)
            await recorder.append([record(1), record(2)])
            await anyio.sleep(0.01)
            await recorder.append([record(3)])
    assert seen == [3, 4], "the head after each commit, from the one after the watch began"


# -- checkpoints and verification -----------------------------------------------------------------


async def test_checkpoints_link_up_and_are_written_as_files(tmp_path: Path) -> None:
    recorder = InMemoryAuditRecorder(clock=ticking(), checkpoint_dir=tmp_path)
    await recorder.append([record(i) for i in range(3)])
    first = await recorder.make_checkpoint(KEY)
    assert await recorder.make_checkpoint(KEY) == first, "the head did not move: the same checkpoint"
    await recorder.append([record(9)])
    second = await recorder.make_checkpoint(KEY)
    assert (first.id, first.seq, second.id, second.seq) == (1, 3, 2, 4)
    assert second.link_problem(first) is None and second.signature_problem(KEY.trusted()) is None
    assert second.heads[0].chain_hash == (await recorder.head()).chain_hash
    assert await recorder.checkpoints() == [first, second] and await recorder.last_checkpoint() == second
    assert (tmp_path / first.file_name()).is_file() and (tmp_path / second.file_name()).is_file()
    report = await recorder.verify(trusted_keys=KEY.trusted(), from_checkpoint=tmp_path / first.file_name())
    assert report.ok, report.problems
    assert (report.started_from, report.entries_checked, report.anchors_matched) == (1, 1, 1)


async def test_verification_names_the_first_bad_seq(recorder: InMemoryAuditRecorder) -> None:
    await recorder.append([record(i) for i in range(6)])
    assert (await recorder.verify()).ok
    entry = recorder.entries[2]
    recorder.entries[2] = replace(entry, env=entry.env + b" " if entry.env else None)
    report = await recorder.verify()
    assert report.first is not None
    assert (report.first.kind, report.first.seq) == (Damage.PAYLOAD_CHANGED, 3)
    recorder.entries[2] = entry
    del recorder.entries[4]
    report = await recorder.verify()
    assert report.first is not None and (report.first.kind, report.first.seq) == (Damage.MISSING_ROW, 5)


async def test_a_redacted_payload_still_verifies_and_a_recomputed_chain_does_not(
    recorder: InMemoryAuditRecorder,
) -> None:
    await recorder.append([record(i) for i in range(4)])
    recorder.redact(2)
    report = await recorder.verify()
    assert report.ok and report.redacted == 1
    assert (await recorder.entries_for_correlation("run-1"))[1].redacted
    with pytest.raises(AuditStoreError):
        recorder.redact(2)
    checkpoint = await recorder.make_checkpoint(KEY)
    # rewrite seq 3 and recompute every hash after it: consistent, but not what was signed
    entries, previous = recorder.entries, recorder.entries[1].chain_hash
    for at in range(2, len(entries)):
        e = entries[at]
        if at == 2:
            e = replace(e, source="agent://mallory/0")
        header = canonical_header([
            e.hash_version, e.seq, e.envelope_id, e.type, e.source, e.correlation_id, e.causation_id,
            to_micros(e.envelope_time), to_micros(e.recorded_at), e.stream, e.entry_id,
        ])  # fmt: skip
        leaf = leaf_hash(header, e.payload_hash)
        previous = chain_hash(previous, leaf)
        entries[at] = replace(e, leaf_hash=leaf, chain_hash=previous)
    report = await recorder.verify(trusted_keys=KEY.trusted())
    assert report.first is not None
    assert (report.first.kind, report.first.seq) == (Damage.CHAIN_REWRITTEN, checkpoint.seq)


async def test_both_adapters_implement_the_port() -> None:
    from memory.postgres import PostgresAuditStore

    assert issubclass(PostgresAuditStore, AuditRecorder)
    assert issubclass(InMemoryAuditRecorder, AuditRecorder)
    recorder = InMemoryAuditRecorder()
    async with recorder:
        assert (await recorder.head()).seq == 0
    with pytest.raises(AuditStoreError, match="closed"):
        await recorder.head()


async def checkpointed(tmp_path: Path) -> tuple[InMemoryAuditRecorder, list[Checkpoint]]:
    """A trail of three checkpoints, their files in ``tmp_path``."""
    recorder = InMemoryAuditRecorder(clock=ticking(), checkpoint_dir=tmp_path)
    made = []
    for i in range(3):
        await recorder.append([record(10 * i + j) for j in range(2)])
        made.append(await recorder.make_checkpoint(KEY))
    assert (await recorder.verify(trusted_keys=KEY.trusted())).ok
    return recorder, made


async def test_a_rollback_hidden_by_files_overwritten_with_an_older_checkpoint_is_found(
    tmp_path: Path,
) -> None:
    recorder, (first, second, third) = await checkpointed(tmp_path)
    # The database is rolled back to the first checkpoint, and the newer checkpoints' files are
    # overwritten with the first one's content: every file now holds a checkpoint of the trail.
    del recorder.entries[first.seq :]
    recorder._checkpoints[1:] = []
    recorder._head = Head(first.seq, first.chain_hash, recorder._head.updated_at)
    for newer in (second, third):
        (tmp_path / newer.file_name()).write_text((tmp_path / first.file_name()).read_text())
    report = await recorder.verify(trusted_keys=KEY.trusted())
    assert not report.ok
    misnamed = [p for p in report.problems if p.kind == Damage.CHECKPOINT_FILE_MISNAMED]
    assert [p.detail.split(" holds")[0] for p in misnamed] == [
        str(tmp_path / second.file_name()),
        str(tmp_path / third.file_name()),
    ]
    assert all(f"holds checkpoint #{first.id}" in p.detail for p in misnamed)


async def test_checkpoints_whose_files_are_gone_are_reported(tmp_path: Path) -> None:
    recorder, made = await checkpointed(tmp_path)
    for checkpoint in made:
        (tmp_path / checkpoint.file_name()).unlink()
    report = await recorder.verify(trusted_keys=KEY.trusted())
    missing = [p for p in report.problems if p.kind == Damage.CHECKPOINT_FILE_MISSING]
    assert not report.ok and [p.seq for p in missing] == [c.seq for c in made]
    assert f"checkpoint #{made[0].id} (seq {made[0].seq}) has no file" in missing[0].detail
    # without a directory of files nothing is expected: the database alone verifies
    alone = InMemoryAuditRecorder(clock=ticking())
    await alone.append([record(1)])
    await alone.make_checkpoint(KEY)
    assert (await alone.verify(trusted_keys=KEY.trusted())).ok
