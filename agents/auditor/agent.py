"""The auditor: every envelope of every stream, exactly once, into the audit trail.

Its consumer group ``auditor`` sits on every stream of the namespace (the
streams index plus the topology), found again every second, so new streams
are audited without a restart. Each batch of up to ``L9_AUDIT_BATCH_SIZE``
entries, in two stages that the batch consumer overlaps across batches:
prepare (decode, verify signatures, hash payloads, pack headers) -> commit
(under the chain lock: dedupe, chain hashes, ``COPY``, move the head, one
NOTIFY, COMMIT, see ``AuditRecorder.append_prepared``) -> XACK. An
entry is acked only after its batch committed; a crash anywhere before that
leaves it pending, and the redelivery is a no-op (the envelope id dedupes).
After the commit the batch goes out on the ``audit`` stream, and a signed
checkpoint follows every ``L9_AUDIT_CHECKPOINT_EVERY`` entries or
``L9_AUDIT_CHECKPOINT_INTERVAL_S`` seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio
import anyio.lowlevel
import structlog

import bus.tracing
from bus import TRANSIENT, Entry, Keys, PartitionSet, Rejected, Staged, Topology
from bus.connection import RedisClient
from bus.index import known_streams
from bus.topology import AUDIT_STREAM
from envelope import SIGNATURE_FIELD, SIGNED_FIELDS, EnvelopeError, Verifier
from memory.audit import (
    AuditRecord,
    AuditRecorder,
    AuditRecordError,
    AuditStoreUnavailable,
    Committed,
    PreparedAppend,
    SigningKey,
    decode_entry,
    prepare_append,
)
from memory.summary import summarize

from . import metrics
from .stream import AuditStream

GROUP = "auditor"
log = structlog.get_logger("l9.auditor")
_SIG_KEY = SIGNATURE_FIELD.encode()
_DATA, _KIND = SIGNED_FIELDS.index("data"), SIGNED_FIELDS.index("kind")
_ID = SIGNED_FIELDS.index("id")
_TRACEPARENT, _TRACESTATE = SIGNED_FIELDS.index("traceparent"), SIGNED_FIELDS.index("tracestate")
#: Entries prepared between two checkpoints (see :meth:`Auditor.prepare`).
PREPARE_SLICE = 100


class StreamShare(Protocol):
    """The streams one auditor reads: those of its partitions."""

    def partitions(self) -> list[int]: ...

    def owns(self, stream: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class AuditBatch:
    """A batch of stream entries made ready for the trail, before the chain lock."""

    append: PreparedAppend  # the records whose envelope decodes and whose signature holds
    rejected: list[Rejected]  # the others, each with its reason
    summaries: list[str]  # one line per record, for the audit stream
    #: (envelope id, traceparent, tracestate) of each record, while tracing is on (else empty)
    traced: list[tuple[str, str, str | None]]

    @classmethod
    def join(cls, parts: Sequence[AuditBatch]) -> AuditBatch:
        """One batch of parts prepared one after the other."""
        return cls(
            PreparedAppend.join([p.append for p in parts]),
            [r for p in parts for r in p.rejected],
            [s for p in parts for s in p.summaries],
            [t for p in parts for t in p.traced],
        )


def prepare_batch(entries: Sequence[Entry], verifier: Verifier) -> AuditBatch:
    """Decode and verify each entry once; hash and pack what the append needs (pure)."""
    records: list[AuditRecord] = []
    rejected: list[Rejected] = []
    summaries: list[str] = []
    traced: list[tuple[str, str, str | None]] = []
    tracing = bus.tracing.tracer() is not None
    for entry in entries:
        try:
            record, values = decode_entry(entry.stream, entry.entry_id, entry.fields)
            verifier.verify_bytes(record.env, record.key_id, entry.fields.get(_SIG_KEY), record.envelope_id)
        except AuditRecordError as exc:
            rejected.append(Rejected(entry, "undecodable", str(exc)))
            continue
        except EnvelopeError as exc:
            rejected.append(Rejected(entry, exc.reason.value, exc.detail))
            continue
        records.append(record)
        summaries.append(summarize(values[_DATA], values[_KIND]))
        if tracing and values[_TRACEPARENT]:
            traced.append((values[_ID], values[_TRACEPARENT], values[_TRACESTATE]))
    return AuditBatch(prepare_append(records), rejected, summaries, traced)


def is_transient(exc: BaseException) -> bool:
    """Failures to wait out (retry for ever, ack nothing): the store or Redis being away."""
    return isinstance(exc, (AuditStoreUnavailable, *TRANSIENT))


class Failpoint:
    """Fault injection for crash tests: SIGKILL this process the N-th time ``stage`` is reached."""

    def __init__(self, spec: str | None) -> None:
        stage, _, n = (spec or "").partition(":")
        self.stage, self.remaining = stage or None, int(n or 0)

    def __call__(self, stage: str) -> None:
        if stage != self.stage:
            return
        self.remaining -= 1
        if self.remaining <= 0:
            log.warning("auditor.failpoint", stage=stage)
            os.kill(os.getpid(), signal.SIGKILL)


class Checkpointer:
    """A signed checkpoint every ``every`` entries or ``interval_s`` seconds of a moving trail
    (entries counted over every chain)."""

    def __init__(self, store: AuditRecorder, key: SigningKey, every: int, interval_s: float) -> None:
        self.store, self.key, self.every, self.interval_s = store, key, every, interval_s
        self.last_seq = 0
        self._since = 0  # entries this process committed since the last checkpoint it saw
        self._due = anyio.Event()

    def committed(self, stored: int) -> None:
        """``stored`` new entries were committed by this process."""
        self._since += stored
        if self._since >= self.every:
            self._due.set()

    async def run(self) -> None:
        last = await self.store.last_checkpoint()
        self.last_seq = last.seq if last else 0
        while True:
            with anyio.move_on_after(self.interval_s):
                await self._due.wait()
            self._due = anyio.Event()
            try:
                await self._maybe_checkpoint()
            except AuditStoreUnavailable as exc:
                log.warning("auditor.checkpoint_failed", error=str(exc))

    async def _maybe_checkpoint(self) -> None:
        head = await self.store.head()
        sizes = {h.chain: h.size for h in await self.store.heads()}
        last = await self.store.last_checkpoint()  # another auditor may have made one
        last_sizes = last.sizes() if last else {}
        new = sum(size - last_sizes.get(chain, 0) for chain, size in sizes.items())
        fresh = last is not None and (head.updated_at - last.created_at).total_seconds() < self.interval_s
        if new == 0 or (new < self.every and fresh):
            self.last_seq = last.seq if last else 0
            return
        with anyio.CancelScope(shield=True):
            checkpoint = await self.store.make_checkpoint(self.key)
        self.last_seq, self._since = checkpoint.seq, 0


class Auditor:
    """The batch handler and the stream set of the auditor's consumer."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        store: AuditRecorder,
        verifier: Verifier,
        stream: AuditStream,
        checkpointer: Checkpointer,
        topology: Topology,
        partitions: StreamShare | None = None,
    ) -> None:
        """``partitions``: the share of the namespace's streams this process audits: the
        chains it holds (``agents.auditor.ownership.ChainKeeper``, as ``l9 agent run auditor``
        does), or a fixed ``PartitionSet``; all of them by default."""
        self.redis, self.keys, self.store, self.verifier = redis, keys, store, verifier
        self.partitions = partitions or PartitionSet()
        self.stream, self.checkpointer, self.topology = stream, checkpointer, topology
        # Committed batches for the audit stream: published beside the audit loop, never
        # holding it up; if this queue overflows, the catch-up loop publishes from the trail.
        self._committed, self._to_publish = anyio.create_memory_object_stream[
            tuple[list[Committed], list[str]]
        ](64)
        self.stats = {"stored": 0, "duplicates": 0, "rejected": 0, "batches": 0}
        #: The batch handler: ``BatchConsumer`` prepares the next batch while this one commits.
        self.handle = Staged(self.prepare, self.commit)

    async def streams(self) -> Iterable[str]:
        """Every stream of the namespace but the audit feed itself (of this process's partitions)."""
        names = await known_streams(self.redis, self.keys, self.partitions.partitions())
        names.update(self.topology.routes.values())
        names.discard(AUDIT_STREAM)
        return sorted(n for n in names if self.partitions.owns(n))

    async def prepare(self, batch: Sequence[Entry]) -> AuditBatch:
        """:func:`prepare_batch`, a slice at a time: between slices the commit of the batch
        before goes on as soon as Postgres answers (its wait for a slice is ~1 ms, not the
        whole batch's ~10 ms, and that wait is on the critical path of every batch)."""
        parts = []
        for at in range(0, len(batch), PREPARE_SLICE):
            if at:
                await anyio.lowlevel.checkpoint()
            parts.append(prepare_batch(batch[at : at + PREPARE_SLICE], self.verifier))
        return parts[0] if len(parts) == 1 else AuditBatch.join(parts)

    async def commit(self, batch: Sequence[Entry], prepared: AuditBatch) -> Sequence[Rejected]:
        """Append the batch's records (the one step under the chain lock) and queue them
        for the audit stream; the consumer acks after this returns. Traced (``bus.tracing``):
        a span linked to every envelope's trace, its PostgreSQL statements inside it."""
        with (
            bus.tracing.batch_span("audit commit", GROUP, prepared.traced, **{"l9.audit.batch": len(batch)}),
            metrics.timed_commit(),
        ):
            committed = await self.store.append_prepared(prepared.append)
        stored = sum(1 for c in committed if c.new)
        self.stats["stored"] += stored
        self.stats["duplicates"] += len(committed) - stored
        self.stats["rejected"] += len(prepared.rejected)
        self.stats["batches"] += 1
        chain_at, heads = self.store.layout.chain_at, dict[int, int]()
        for c in committed:
            chain = chain_at(c.seq)
            if c.seq > heads.get(chain, 0):
                heads[chain] = c.seq
        metrics.committed(len(batch), stored, len(committed) - stored, len(prepared.rejected), heads)
        if committed:
            self.checkpointer.committed(stored)
            with contextlib.suppress(anyio.WouldBlock):
                self._committed.send_nowait((committed, prepared.summaries))
        return prepared.rejected

    async def publish_loop(self) -> None:
        """Put committed batches on the audit stream; a failure is caught up later."""
        async for committed, summaries in self._to_publish:
            try:
                await self.stream.publish_committed(committed, summaries)
            except (*TRANSIENT, AuditStoreUnavailable) as exc:
                log.warning("auditor.publish_failed", error=str(exc))

    async def catch_up_loop(self, interval_s: float = 2.0) -> None:
        """Publish what other (crashed) auditors committed but never put on the audit stream:
        whenever the stream stood still for a whole interval while the trail moved on."""
        before: dict[int, int] | None = None
        while True:
            await anyio.sleep(interval_s)
            try:
                published = await self.stream.last_published()
                if published == before:
                    await self.stream.catch_up_all()
                before = published
            except (*TRANSIENT, AuditStoreUnavailable) as exc:
                log.warning("auditor.catch_up_failed", error=str(exc))
