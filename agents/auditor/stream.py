"""The ``audit`` stream: committed trail records, in seq order, each exactly once.

One stream entry per committed batch, an ``l9.audit.committed.v1`` envelope
listing its records (seq, chain hash, type, source, correlation id, a one-line
summary). The entry id is ``0-<last seq of the batch>``, and an entry is added
only if the stream's last id is still the one its range follows (a
compare-and-set in Lua). So however many auditors publish, and whoever crashed
between commit and publish, the stream stays gapless and free of repeats:

* fast path: the auditor that committed a batch publishes it from memory;
* catch-up: when the stream lags the trail's head (another auditor died
  between its commit and its publish, or Redis lost the stream), the missing
  records are read from the trail by seq cursor and published.

The stream is a live feed, capped at about ``MAX_ENTRIES`` batches; the trail
is the complete history (``l9 tail`` reads it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import structlog

from bus import Keys
from bus.connection import RedisClient
from bus.errors import is_no_such_key
from bus.index import index_streams
from bus.topology import AUDIT_STREAM
from envelope import PacketEnvelope, Payload, Signer, encode, payload
from memory.audit import AppendStatus, AuditRecorder, Committed, StoredEntry
from memory.summary import summarize_env

#: Approximate cap on entries (batches) kept in the stream.
MAX_ENTRIES = 10_000
#: When the stream is missing (new, or Redis lost it), at most this many records are republished.
BACKLOG = 10_000
log = structlog.get_logger("l9.auditor.stream")
STORED = AppendStatus.STORED

# KEYS[1] stream; ARGV[1] expected last id, ARGV[2] new id, ARGV[3] max len, ARGV[4..] fields.
_CAS_XADD = """
local last = '0-0'
if redis.call('EXISTS', KEYS[1]) == 1 then
    local info = redis.call('XINFO', 'STREAM', KEYS[1])
    for i = 1, #info, 2 do
        if info[i] == 'last-generated-id' then last = info[i + 1] end
    end
end
if last ~= ARGV[1] then return last end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], ARGV[2], unpack(ARGV, 4))
return ARGV[2]
"""


class CommittedRecord(Payload):
    seq: int
    chain_hash: str
    envelope_id: str
    type: str
    source: str
    correlation_id: str
    summary: str


@payload("l9.audit.committed.v1")
class AuditCommitted(Payload):
    """Records committed to the trail, seq ``first_seq`` to ``last_seq`` without a gap."""

    first_seq: int
    last_seq: int
    records: list[CommittedRecord]


# Records are built as plain dicts in the shape of CommittedRecord (the models describe the
# payload for readers and the registry; validating what we build ourselves would double the cost).
Record = dict[str, Any]


def _from_committed(c: Committed, summary: str) -> Record:
    r = c.record
    return {
        "seq": c.seq,
        "chain_hash": c.chain_hash.hex(),
        "envelope_id": r.envelope_id,
        "type": r.type,
        "source": r.source,
        "correlation_id": r.correlation_id,
        "summary": summary,
    }


def _from_stored(e: StoredEntry) -> Record:
    return {
        "seq": e.seq,
        "chain_hash": e.chain_hash.hex(),
        "envelope_id": e.envelope_id,
        "type": e.type,
        "source": e.source,
        "correlation_id": e.correlation_id,
        "summary": e.summary(),
    }


def seq_of(entry_id: str) -> int:
    """The last seq an audit stream entry id stands for (``0-<seq>``)."""
    ms, _, seq = entry_id.partition("-")
    if ms != "0" or not seq.isdigit():
        raise ValueError(f"{entry_id!r} is not an audit stream id (0-<seq>)")
    return int(seq)


class AuditStream:
    """Publishes committed records on the ``audit`` stream (see the module doc)."""

    def __init__(
        self, redis: RedisClient, keys: Keys, store: AuditRecorder, signer: Signer, source: str
    ) -> None:
        self.redis, self.keys, self.store, self.signer, self.source = redis, keys, store, signer, source
        self.key = keys.stream(AUDIT_STREAM)
        self._cas = redis.register_script(_CAS_XADD)
        self._indexed = False

    async def last_published(self) -> tuple[str, int | None]:
        """The stream's last id and the seq it stands for (None: no stream yet)."""
        try:
            info = await self.redis.xinfo_stream(self.key)
        except aioredis.ResponseError as exc:
            if is_no_such_key(exc):
                return "0-0", None
            raise
        last = info["last-generated-id"]
        last = last.decode() if isinstance(last, bytes) else str(last)
        return last, (seq_of(last) if last != "0-0" else 0)

    async def publish_committed(
        self, committed: Sequence[Committed], summaries: Sequence[str] | None = None
    ) -> int:
        """Publish a batch just committed (only its newly stored records); catches up first
        when the stream lags. ``summaries``: one per record when the caller has them
        already (else they are made from the payloads). Returns how many records were published."""
        if summaries is None:
            summaries = [summarize_env(c.record.env) for c in committed]
        fresh = [
            _from_committed(c, s) for c, s in zip(committed, summaries, strict=True) if c.status is STORED
        ]
        if not fresh:
            return 0
        # The usual case costs one round trip: the CAS expects the stream to end just before
        # this batch ("0-0" when it is the first). Otherwise the catch-up reads where it ends.
        first = fresh[0]["seq"]
        if await self._append(f"0-{first - 1}", fresh):
            return len(fresh)
        return await self.catch_up(until=fresh[-1]["seq"])

    async def catch_up(self, until: int | None = None, page: int = 1000) -> int:
        """Publish what the trail holds past the stream's last record (up to ``until``)."""
        published = 0
        while True:
            last_id, last_seq = await self.last_published()
            if last_seq is None:
                head = (await self.store.head()).seq
                last_seq = max(0, head - BACKLOG)
                if last_seq:
                    log.warning("audit_stream.missing", republish_from=last_seq + 1, head=head)
            if until is not None and last_seq >= until:
                return published
            entries = (await self.store.entries_after(last_seq, limit=page)).entries
            if until is not None:
                entries = [e for e in entries if e.seq <= until]
            if not entries:
                return published
            if await self._append(last_id, [_from_stored(e) for e in entries]):
                published += len(entries)

    async def _append(self, expected_last: str, records: list[Record]) -> bool:
        """Add one entry if the stream still ends at ``expected_last``; False if it moved."""
        first, last = records[0]["seq"], records[-1]["seq"]
        envelope = PacketEnvelope.new(
            type="l9.audit.committed.v1",
            source=self.source,
            data={"first_seq": first, "last_seq": last, "records": records},
            correlation_id=f"audit-{first}",
        )
        fields: list[Any] = []
        for name, value in encode(envelope, self.signer).items():
            fields += [name, value]
        new_id = f"0-{last}"
        result = await self._cas(keys=[self.key], args=[expected_last, new_id, MAX_ENTRIES, *fields])
        added = (result.decode() if isinstance(result, bytes) else str(result)) == new_id
        if added and not self._indexed:
            await index_streams(self.redis, self.keys, [AUDIT_STREAM])
            self._indexed = True
        return added
