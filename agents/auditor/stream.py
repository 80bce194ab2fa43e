"""The ``audit`` stream: committed trail records, in seq order per chain, each exactly once.

One stream entry per committed batch of one chain, an ``l9.audit.committed.v1`` envelope
listing its records (seq, chain hash, type, source, correlation id, a one-line summary);
``chain``, ``first_seq`` and ``last_seq`` say which part of which chain it is
(``memory.audit.chains``: a chain's seqs are the trail's chain count apart). Beside the
stream, in its slot, a hash holds the last seq published of each chain, and an entry is
added only if its chain's last published seq is still the one its range follows (a
compare-and-set in Lua, with the XADD). So however many auditors publish, and whoever
crashed between commit and publish, each chain's records appear gapless and free of
repeats:

* fast path: the auditor that committed a batch publishes it from memory;
* catch-up: when a chain's records on the stream lag the trail (another auditor died
  between its commit and its publish, or Redis lost the stream), the missing records are
  read from the trail by the chain's seq cursor and published.

The stream is a live feed, capped at about ``MAX_ENTRIES`` batches; the trail is the
complete history (``l9 tail`` reads it). A stream written before the trail had chains
(entry ids ``0-<seq>``, no hash) goes on from its last id.
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
from memory.audit import AppendStatus, AuditRecorder, Committed, EntryFilter, StoredEntry
from memory.summary import summarize_env

#: Approximate cap on entries (batches) kept in the stream.
MAX_ENTRIES = 10_000
#: When the stream is missing (new, or Redis lost it), at most this many records are republished.
BACKLOG = 10_000
log = structlog.get_logger("l9.auditor.stream")
STORED = AppendStatus.STORED

# KEYS[1] stream, KEYS[2] the hash of each chain's last published seq; ARGV[1] chain,
# ARGV[2] its expected last seq, ARGV[3] the new last seq, ARGV[4] max len, ARGV[5..] fields.
# Returns "ok", or the chain's last published seq when it is not the expected one.
_CAS_XADD = """
local last = redis.call('HGET', KEYS[2], ARGV[1])
if not last then
    last = '0'
    if ARGV[1] == '0' and redis.call('EXISTS', KEYS[1]) == 1 then
        local info = redis.call('XINFO', 'STREAM', KEYS[1])
        for i = 1, #info, 2 do
            if info[i] == 'last-generated-id' then
                local ms, n = string.match(info[i + 1], '^(%d+)-(%d+)$')
                if ms == '0' then last = n end
            end
        end
    end
end
if last ~= ARGV[2] then return last end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 5))
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 'ok'
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
    """Records committed to chain ``chain`` of the trail, seq ``first_seq`` to ``last_seq``
    without a gap in that chain."""

    first_seq: int
    last_seq: int
    records: list[CommittedRecord]
    chain: int = 0


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


class AuditStream:
    """Publishes committed records on the ``audit`` stream (see the module doc)."""

    def __init__(
        self, redis: RedisClient, keys: Keys, store: AuditRecorder, signer: Signer, source: str
    ) -> None:
        self.redis, self.keys, self.store, self.signer, self.source = redis, keys, store, signer, source
        self.key = keys.stream(AUDIT_STREAM)
        self.published_key = f"{self.key}:published"  # the stream's hash tag: its slot
        self._cas = redis.register_script(_CAS_XADD)
        self._indexed = False

    async def last_published(self) -> dict[int, int]:
        """Each chain's last published seq (chains with none left out)."""
        found = await self.redis.hgetall(self.published_key)
        return {int(c): int(seq) for c, seq in found.items()}

    async def publish_committed(
        self, committed: Sequence[Committed], summaries: Sequence[str] | None = None
    ) -> int:
        """Publish a batch just committed (only its newly stored records), one entry per
        chain; catches a chain up first when it lags. ``summaries``: one per record when the
        caller has them already (else they are made from the payloads). Returns how many
        records were published."""
        if summaries is None:
            summaries = [summarize_env(c.record.env) for c in committed]
        layout = self.store.layout
        by_chain: dict[int, list[Record]] = {}
        for c, summary in zip(committed, summaries, strict=True):
            if c.status is STORED:
                by_chain.setdefault(layout.chain_at(c.seq), []).append(_from_committed(c, summary))
        published = 0
        for chain, fresh in sorted(by_chain.items()):
            fresh.sort(key=_seq)
            # The usual case costs one round trip: the CAS expects the chain's records on the
            # stream to end just before this batch. Otherwise the catch-up reads where they end.
            before = fresh[0]["seq"] - layout.chains
            if await self._append(chain, max(before, 0), fresh) is None:
                published += len(fresh)
            else:
                published += await self.catch_up(chain, until=fresh[-1]["seq"])
        return published

    async def catch_up(self, chain: int, until: int | None = None, page: int = 1000) -> int:
        """Publish what chain ``chain`` of the trail holds past its last record on the stream
        (up to seq ``until``)."""
        published = 0
        last = await self._last_of(chain)
        while True:
            if until is not None and last >= until:
                return published
            entries = (
                await self.store.entries_after(last, limit=page, filters=EntryFilter(chain=chain))
            ).entries
            if until is not None:
                entries = [e for e in entries if e.seq <= until]
            if not entries:
                return published
            moved = await self._append(chain, last, [_from_stored(e) for e in entries])
            if moved is None:
                published += len(entries)
                last = entries[-1].seq
            else:
                last = moved

    async def catch_up_all(self) -> int:
        """:meth:`catch_up` of every chain."""
        return sum([await self.catch_up(c) for c in range(self.store.layout.chains)])

    async def _last_of(self, chain: int) -> int:
        """The chain's last published seq; when the stream has nothing of it yet, a seq at most
        ``BACKLOG`` records behind the chain's head (the stream is a live feed)."""
        found = await self.redis.hget(self.published_key, str(chain))
        if found is not None:
            return int(found)
        if chain == 0:
            legacy = await self._legacy_last()
            if legacy is not None:
                return legacy
        head = (await self.store.heads())[chain]
        start = max(0, head.size - BACKLOG)
        if start:
            log.warning("audit_stream.missing", chain=chain, republish_from=start + 1, head=head.size)
        return self.store.layout.seq(chain, start)

    async def _legacy_last(self) -> int | None:
        """The last seq of a stream written before chains (ids ``0-<seq>``), if it is one."""
        try:
            info = await self.redis.xinfo_stream(self.key)
        except aioredis.ResponseError as exc:
            if is_no_such_key(exc):
                return None
            raise
        last = info["last-generated-id"]
        ms, _, seq = (last.decode() if isinstance(last, bytes) else str(last)).partition("-")
        return int(seq) if ms == "0" and seq.isdigit() else None

    async def _append(self, chain: int, expected_last: int, records: list[Record]) -> int | None:
        """Add one entry if chain ``chain``'s records on the stream still end at seq
        ``expected_last``; None when added, else where they end now."""
        first, last = records[0]["seq"], records[-1]["seq"]
        envelope = PacketEnvelope.new(
            type="l9.audit.committed.v1",
            source=self.source,
            data={"chain": chain, "first_seq": first, "last_seq": last, "records": records},
            correlation_id=f"audit-{first}",
        )
        fields: list[Any] = []
        for name, value in encode(envelope, self.signer).items():
            fields += [name, value]
        result = await self._cas(
            keys=[self.key, self.published_key],
            args=[chain, expected_last, last, MAX_ENTRIES, *fields],
        )
        text = result.decode() if isinstance(result, bytes) else str(result)
        if text != "ok":
            return int(text)
        if not self._indexed:
            await index_streams(self.redis, self.keys, [AUDIT_STREAM])
            self._indexed = True
        return None


def _seq(record: Record) -> int:
    seq: int = record["seq"]
    return seq
