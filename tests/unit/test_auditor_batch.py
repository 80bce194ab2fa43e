"""The auditor's batch handler on the in-memory recorder: each envelope stored once however
often it is delivered, refused entries returned for the dead-letter stream, the trail
verifying, committed batches handed to the audit stream, checkpoints following the head."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import anyio
import fakeredis
import pytest

from agents.auditor.agent import Auditor, Checkpointer, prepare_batch
from agents.auditor.stream import AuditStream
from bus import DEFAULT_TOPOLOGY, Keys
from bus.batch import Entry
from envelope import PacketEnvelope, Signer, Verifier, encode
from memory.audit import AppendStatus, Committed, InMemoryAuditRecorder, SigningKey

KEYRING = {"k1": b"unit-auditor-secret"}
SIGNER = Signer(KEYRING, "k1")
KEYS = Keys("unit")


def wire(envelope: PacketEnvelope, signer: Signer | None = SIGNER) -> dict[bytes, bytes]:
    return {
        k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in encode(envelope, signer).items()
    }


def envelope(i: int, run: str = "run-1") -> PacketEnvelope:
    return PacketEnvelope.new(
        type="l9.plan.locked.v1", source="agent://planner/0", data={"i": i}, correlation_id=run
    )


def entry(stream: str, n: int, fields: dict[bytes, bytes]) -> Entry:
    return Entry(stream, f"{n}-0", fields, 1)


class RecordingStream(AuditStream):
    """The audit stream, keeping what it is asked to publish (fakeredis has no Lua)."""

    published: list[tuple[list[Committed], list[str]]]

    async def publish_committed(
        self, committed: Sequence[Committed], summaries: Sequence[str] | None = None
    ) -> int:
        self.published.append((list(committed), list(summaries or [])))
        return sum(1 for c in committed if c.new)


@pytest.fixture
async def setup() -> AsyncIterator[tuple[Auditor, InMemoryAuditRecorder, RecordingStream]]:
    redis = fakeredis.FakeAsyncRedis()
    recorder = InMemoryAuditRecorder()
    stream = RecordingStream(redis, KEYS, recorder, SIGNER, "agent://auditor/unit-0")
    stream.published = []
    checkpointer = Checkpointer(recorder, SigningKey.generate(), every=3, interval_s=60.0)
    auditor = Auditor(redis, KEYS, recorder, Verifier(KEYRING), stream, checkpointer, DEFAULT_TOPOLOGY)
    yield auditor, recorder, stream
    await redis.aclose()


async def test_a_batch_with_duplicates_and_bad_entries_stores_each_envelope_once(
    setup: tuple[Auditor, InMemoryAuditRecorder, RecordingStream],
) -> None:
    auditor, recorder, _ = setup
    good = [envelope(i) for i in range(3)]
    batch = [
        entry("plan", 1, wire(good[0])),
        entry("plan", 2, wire(good[1])),
        entry("plan", 3, {b"env": b"\xc1"}),  # not an envelope
        entry("mirror", 4, wire(good[0])),  # the same envelope on another stream
        entry("plan", 5, wire(good[2]) | {b"sig": b"0" * 64}),  # a forged signature
        entry("plan", 6, wire(good[2], Signer({"k9": b"x"}, "k9"))),  # a key the auditor does not know
        entry("plan", 7, wire(good[2])),
    ]
    rejected = await auditor.handle(batch)
    assert [(r.entry.entry_id, r.reason) for r in rejected] == [
        ("3-0", "undecodable"),
        ("5-0", "bad_signature"),
        ("6-0", "bad_signature"),
    ]
    assert [(e.seq, e.envelope_id, e.entry_id) for e in recorder.entries] == [
        (1, good[0].id, "1-0"),
        (2, good[1].id, "2-0"),
        (3, good[2].id, "7-0"),
    ]
    assert auditor.stats == {"stored": 3, "duplicates": 1, "rejected": 3, "batches": 1}
    report = await recorder.verify()
    assert report.ok and report.entries_checked == 3


async def test_a_redelivered_batch_is_a_no_op(
    setup: tuple[Auditor, InMemoryAuditRecorder, RecordingStream],
) -> None:
    auditor, recorder, _ = setup
    batch = [entry("plan", i, wire(envelope(i))) for i in range(1, 5)]
    assert await auditor.handle(batch) == []
    head = await recorder.head()
    assert await auditor.handle(batch) == [], "a crash before the ack: the same entries again"
    assert await recorder.head() == head
    assert len(recorder.entries) == 4
    assert auditor.stats["duplicates"] == 4


async def test_committed_batches_go_to_the_audit_stream_with_their_summaries(
    setup: tuple[Auditor, InMemoryAuditRecorder, RecordingStream],
) -> None:
    auditor, _, stream = setup
    first = [entry("plan", i, wire(envelope(i))) for i in range(1, 3)]
    await auditor.handle(first)
    await auditor.handle([*first, entry("plan", 9, wire(envelope(9)))])
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(auditor.publish_loop)
            while len(stream.published) < 2:
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    (one, one_summaries), (two, two_summaries) = stream.published
    assert [(c.seq, c.status) for c in one] == [(1, AppendStatus.STORED), (2, AppendStatus.STORED)]
    assert one_summaries == ["i=1", "i=2"]
    assert [(c.seq, c.status) for c in two] == [
        (1, AppendStatus.DUPLICATE),
        (2, AppendStatus.DUPLICATE),
        (3, AppendStatus.STORED),
    ]
    assert two_summaries == ["i=1", "i=2", "i=9"]


async def test_a_checkpoint_follows_every_n_entries(
    setup: tuple[Auditor, InMemoryAuditRecorder, RecordingStream],
) -> None:
    auditor, recorder, _ = setup
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(auditor.checkpointer.run)
            await auditor.handle([entry("plan", i, wire(envelope(i))) for i in range(1, 3)])
            await anyio.sleep(0.05)
            assert await recorder.last_checkpoint() is None, "2 entries: fewer than every=3"
            await auditor.handle([entry("plan", i, wire(envelope(i))) for i in range(3, 5)])
            while (checkpoint := await recorder.last_checkpoint()) is None:
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert checkpoint is not None and (checkpoint.id, checkpoint.seq) == (1, 4)
    assert checkpoint.heads[0].chain_hash == (await recorder.head()).chain_hash


def test_validly_signed_invalid_envelopes_are_kept_as_evidence_under_their_signed_headers() -> None:
    """The trail keeps what a key holder really sent, even an envelope no consumer accepts (an
    unknown type, a payload failing its model): attributable evidence. Its header columns
    come from the signed body, never from the plain copies beside it."""
    unknown = PacketEnvelope.new(type="l9.nobody.knows.v9", source="agent://planner/0", data={"x": 1})
    bad_payload = PacketEnvelope.new(type="l9.plan.locked.v1", source="agent://planner/0", data={"no": 1})
    lying = wire(envelope(1)) | {b"type": b"l9.report.ready.v1", b"source": b"agent://auditor/0"}
    entries = [entry("s", 1, wire(unknown)), entry("s", 2, wire(bad_payload)), entry("s", 3, lying)]
    batch = prepare_batch(entries, Verifier(KEYRING))
    assert batch.rejected == []
    records = batch.append.records
    assert [r.type for r in records] == ["l9.nobody.knows.v9", "l9.plan.locked.v1", "l9.plan.locked.v1"]
    assert records[2].source == "agent://planner/0"  # the signed body's, not the plain header's
    unsigned = prepare_batch([entry("s", 4, wire(envelope(2), None))], Verifier(KEYRING))
    assert [r.reason for r in unsigned.rejected] == ["bad_signature"]  # what no key vouches for: refused
