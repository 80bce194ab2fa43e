"""Publishing envelopes: one at a time, or a pipelined batch in one round trip.

Every stream published to is listed in the streams index (a set the auditor, the
lineage projector and ``l9 status`` read to find streams). A publisher adds a stream
to it with the first envelope it publishes there, and again once
:data:`INDEX_REFRESH_S` have passed since, not with every envelope: a publish is one
XADD and one reply. The refresh brings a stream back into the index after a flush or
a manual delete within that time; retention only drops reply streams idle for much
longer (``l9 retention``: 600 s), so a stream it drops is indexed again by the next
envelope published to it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from envelope import PacketEnvelope, Signer, batch_entry_args, entry_args

from . import tracing
from .connection import RedisClient, as_text, execute_many, first_error
from .index import index_commands
from .keys import Keys
from .topology import DEFAULT_TOPOLOGY, Topology

#: Seconds a publisher trusts that a stream it listed in the streams index is still there.
INDEX_REFRESH_S = 10.0
#: Streams a publisher remembers as indexed; past it, it forgets the expired ones.
_INDEX_MEMORY = 4096


class Publisher:
    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        signer: Signer | None,
        topology: Topology = DEFAULT_TOPOLOGY,
        *,
        replicas: int = 0,
        replica_timeout_ms: int = 1000,
    ) -> None:
        """``replicas``: a publish returns once that many replicas of each master written to
        acknowledged it (``WAIT``), else raises ``NotReplicated``: set it on a replicated
        Redis (a cluster) so an envelope accepted is not lost by a failover just after."""
        self.redis = redis
        self.replicas, self.replica_timeout_ms = replicas, replica_timeout_ms
        self.keys = keys
        self.signer = signer
        self.topology = topology
        #: stream name -> monotonic time its index entry is due again
        self._indexed: dict[str, float] = {}
        self._keys: dict[str, str] = {}

    def stream_of(self, envelope: PacketEnvelope) -> str:
        return self.topology.stream_for(envelope.type)

    async def publish(self, envelope: PacketEnvelope, stream: str | None = None) -> str:
        """Append ``envelope`` to its stream; returns the stream entry id."""
        return (await self.publish_many((envelope,), stream))[0]

    async def publish_many(self, envelopes: Sequence[PacketEnvelope], stream: str | None = None) -> list[str]:
        """Append a batch in one pipelined round trip; entry ids in input order. The batch is
        signed as one (an Ed25519 signer signs it once: ``envelope._signing``). With tracing
        on, in a PRODUCER span whose context the envelopes carry (``bus.tracing``)."""
        if tracing.tracer() is not None and envelopes:
            streams, by_stream = self._destinations(envelopes, stream)
            with tracing.send_spans(by_stream) as carried:
                return await self._publish_many(tracing.traced(envelopes, streams, carried), stream)
        return await self._publish_many(envelopes, stream)

    def _destinations(
        self, envelopes: Sequence[PacketEnvelope], stream: str | None
    ) -> tuple[list[str], dict[str, list[PacketEnvelope]]]:
        """The stream each of ``envelopes`` goes to, and the envelopes by stream (for spans)."""
        streams = [stream or self.stream_of(e) for e in envelopes]
        by_stream: dict[str, list[PacketEnvelope]] = {}
        for envelope, name in zip(envelopes, streams, strict=True):
            by_stream.setdefault(name, []).append(envelope)
        return streams, by_stream

    async def _publish_many(self, envelopes: Sequence[PacketEnvelope], stream: str | None) -> list[str]:
        if len(envelopes) == 1:  # the path of every emit and RPC: one XADD, one reply
            envelope = envelopes[0]
            name = stream or self.stream_of(envelope)
            if self._indexed.get(name, 0.0) > time.monotonic():
                command = ("XADD", self._key(name), "*", *entry_args(envelope, self.signer))
                (reply,) = await execute_many(
                    self.redis, (command,), replicas=self.replicas, replica_timeout_ms=self.replica_timeout_ms
                )
                first_error((reply,))
                return [as_text(reply)]
        elif not envelopes:
            return []
        commands, indexed = self._commands(envelopes, stream)
        try:
            replies = await execute_many(
                self.redis, commands, replicas=self.replicas, replica_timeout_ms=self.replica_timeout_ms
            )
            first_error(replies)
        except BaseException:
            self._unindexed(indexed)  # not known to be in the index: add them again next time
            raise
        return [as_text(r) for r in replies[: len(envelopes)]]

    def commands(
        self, envelopes: Sequence[PacketEnvelope], stream: str | None = None
    ) -> list[tuple[Any, ...]]:
        """The Redis commands that publish ``envelopes``: one XADD each (signed), then, when
        one of their streams is due in the streams index, the SADD that lists it there. With
        tracing on, they carry the context of a PRODUCER span made now."""
        if tracing.tracer() is not None and envelopes:
            streams, by_stream = self._destinations(envelopes, stream)
            with tracing.send_spans(by_stream) as carried:
                return self._commands(tracing.traced(envelopes, streams, carried), stream)[0]
        return self._commands(envelopes, stream)[0]

    def _commands(
        self, envelopes: Sequence[PacketEnvelope], stream: str | None
    ) -> tuple[list[tuple[Any, ...]], list[str]]:
        commands: list[tuple[Any, ...]] = []
        names: set[str] = set()
        key_of = self._key
        for envelope, args in zip(envelopes, batch_entry_args(envelopes, self.signer), strict=True):
            name = stream or self.stream_of(envelope)
            names.add(name)
            commands.append(("XADD", key_of(name), "*", *args))
        due = self._index_due(names)
        if due:
            commands += index_commands(self.keys, due)
        return commands, due

    def _key(self, name: str) -> str:
        """The Redis key of stream ``name`` (checked and made once per name)."""
        key = self._keys.get(name)
        if key is None:
            key = self.keys.stream(name)
            if len(self._keys) >= _INDEX_MEMORY:
                self._keys.clear()
            self._keys[name] = key
        return key

    def _index_due(self, names: Iterable[str]) -> list[str]:
        """The streams among ``names`` to (re)list in the streams index now, marked as listed."""
        now, indexed = time.monotonic(), self._indexed
        due = sorted(name for name in names if indexed.get(name, 0.0) <= now)
        if due:
            if len(indexed) >= _INDEX_MEMORY:
                for name in [n for n, t in indexed.items() if t <= now]:
                    del indexed[name]
                if len(indexed) >= _INDEX_MEMORY:
                    indexed.clear()
            for name in due:
                indexed[name] = now + INDEX_REFRESH_S
        return due

    def _unindexed(self, names: Iterable[str]) -> None:
        for name in names:
            self._indexed.pop(name, None)
