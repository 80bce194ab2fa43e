"""Every Redis key name L9 uses, in one place.

Streams are spread over :data:`PARTITIONS` partitions of a namespace: stream ``name``
belongs to partition ``crc16(name) mod PARTITIONS`` (:func:`partition_of`), and every key
of its family carries the partition's hash tag ``{<namespace>.p<K>}``::

    l9:{l9.p17}:plan            the stream
    l9:{l9.p17}:plan:dead       its dead letters
    l9:{l9.p17}:plan:errors     its error notes (entry id -> last handler error)
    l9:{l9.p17}:plan:handled:sympy   the ids group ``sympy`` handled lately (``bus.dedupe``)
    l9:{l9.p17}:streams         the index of partition 17's streams
    l9:{l9.p17}:governance.resolutions:pending   escalations, beside their resolutions

so on Redis Cluster a stream, its dead letters, error notes, windows of handled ids,
escalations and index entry share one slot (one MULTI or Lua script may touch them all),
and the streams of a namespace spread over up to 64 slots: those of different namespaces
over different ones.
Readers of many streams read partition by partition, and work can be split between
processes by partition (:class:`PartitionSet`). The partition count is part of the key
layout: every process of a namespace must use the same one, so it is fixed.
"""

from __future__ import annotations

import re
from binascii import crc_hqx
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

STREAM_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,99}$")
RPC_PREFIX = "rpc."
#: Partitions of a namespace's streams (see the module docstring).
PARTITIONS = 64


def check_stream_name(name: str) -> str:
    if not STREAM_NAME.match(name):
        raise ValueError(f"stream name {name!r} must be 1-100 chars of a-z, 0-9, '.', '_' or '-'")
    return name


@lru_cache(maxsize=4096)
def partition_of(name: str) -> int:
    """The partition of stream ``name``: ``crc16(name) mod PARTITIONS`` (Redis Cluster's CRC)."""
    return crc_hqx(check_stream_name(name).encode(), 0) % PARTITIONS


@dataclass(frozen=True)
class PartitionSet:
    """The partitions one of ``of`` processes sharing a reader's work takes: those ``p`` with
    ``p mod of == index`` (``"0/1"``, the default: all of them)."""

    index: int = 0
    of: int = 1

    def __post_init__(self) -> None:
        if not (1 <= self.of <= PARTITIONS and 0 <= self.index < self.of):
            raise ValueError(
                f"partition share {self.index}/{self.of}: want i/n with 1 <= n <= {PARTITIONS} and 0 <= i < n"
            )

    @classmethod
    def parse(cls, text: str) -> PartitionSet:
        """``"i/n"``: the ``i``-th (from 0) of ``n`` shares."""
        index, sep, of = text.partition("/")
        if not sep or not index.strip().isdigit() or not of.strip().isdigit():
            raise ValueError(f"partition share {text!r}: want i/n, as 0/2 (the first of two)")
        return cls(int(index), int(of))

    def __contains__(self, partition: object) -> bool:
        return isinstance(partition, int) and partition % self.of == self.index

    def partitions(self) -> list[int]:
        return [p for p in range(PARTITIONS) if p in self]

    def owns(self, stream: str) -> bool:
        return partition_of(stream) in self

    def __str__(self) -> str:
        return f"{self.index}/{self.of}"


@dataclass(frozen=True)
class Keys:
    namespace: str = "l9"

    def tag(self, partition: int) -> str:
        """The hash tag of a partition: ``{l9.p17}``."""
        return f"{{{self.namespace}.p{partition}}}"

    def stream(self, name: str) -> str:
        return f"{self.namespace}:{self.tag(partition_of(name))}:{name}"

    def dead(self, name: str) -> str:
        """Dead letters of stream ``name`` (entry + reason)."""
        return f"{self.stream(name)}:dead"

    def errors(self, name: str) -> str:
        """Hash: entry id -> last handler error, kept until the entry is acked or dead."""
        return f"{self.stream(name)}:errors"

    def handled(self, name: str, group: str) -> str:
        """Sorted set: envelope id -> when group ``group`` handled it (Unix ms), the group's
        window of handled ids on stream ``name`` (``bus.dedupe``). In the stream's slot: it is
        written in the MULTI/EXEC of the XACK."""
        return f"{self.stream(name)}:handled:{group}"

    def streams_index(self, partition: int) -> str:
        """Set of the names of partition ``partition``'s streams ever published to."""
        return f"{self.namespace}:{self.tag(partition)}:streams"

    def index_of(self, name: str) -> str:
        """The streams index stream ``name`` is listed in (in its slot)."""
        return self.streams_index(partition_of(name))

    def indexes(self, partitions: Iterable[int] | None = None) -> list[str]:
        """The streams index of every partition (or of ``partitions``)."""
        return [self.streams_index(p) for p in (range(PARTITIONS) if partitions is None else partitions)]

    def heartbeat(self, consumer: str) -> str:
        """Expiring key: present while consumer ``consumer`` is alive."""
        return f"{self.namespace}:hb:{consumer}"

    def rate_limit_prefix(self) -> str:
        """What every rate-limit key of the namespace starts with (one hash tag)."""
        return f"{self.namespace}:{{{self.namespace}.ratelimit}}:"

    def rate_limit(self, policy: str, subject: str) -> str:
        """Sorted set: admissions of ``subject`` under rate-limit ``policy`` (scored by ms time).

        A namespace's rate-limit keys share one hash tag: one script checks every limit of
        a request (each of its own subject) atomically, so they must live in one slot."""
        return f"{self.rate_limit_prefix()}{policy}:{subject}"

    def escalations_pending(self, resolutions: str) -> str:
        """Hash: escalation id -> JSON summary (deadline, anchors, reason), while unanswered.

        In the hash slot of the ``resolutions`` stream: one script moves an escalation from
        pending to resolved and appends the resolution envelope to that stream."""
        return f"{self.stream(resolutions)}:pending"

    def escalations_resolved(self, resolutions: str) -> str:
        """Hash: escalation id -> its resolution envelope (JSON); the first answer wins."""
        return f"{self.stream(resolutions)}:resolved"

    def stream_pattern(self) -> str:
        """A SCAN pattern matching every stream key of the namespace (and more: filter with
        :meth:`name_of`)."""
        return f"{self.namespace}:{{{self.namespace}.p*}}:*"

    def name_of(self, stream_key: str) -> str:
        """The stream name inside a stream key (``l9:{l9.p33}:demo`` -> ``demo``)."""
        prefix = f"{self.namespace}:{{{self.namespace}.p"
        head, sep, name = stream_key.partition("}:")
        if not (head.startswith(prefix) and sep and STREAM_NAME.match(name)):
            raise ValueError(f"{stream_key!r} is not a stream key of namespace {self.namespace!r}")
        if self.stream(name) != stream_key:
            raise ValueError(f"{stream_key!r} carries the wrong partition for stream {name!r}")
        return name

    def family_pattern(self, pattern: str) -> str:
        """An ACL key pattern (``~...``) of the namespace, from the policy file's short form:
        ``streams`` is the streams index (of every partition), ``{ratelimit}:*`` the
        rate-limit keys, ``{<stream>}:<rest>`` the keys of stream ``<stream>``'s family
        (``{governance.resolutions}:*``: its pending and resolved escalations), anything
        else is taken after ``<namespace>:`` as it is."""
        if pattern == "streams":
            return f"{self.namespace}:{{{self.namespace}.p*}}:streams"
        match = re.fullmatch(r"\{([^{}]+)\}(.*)", pattern)
        if match is None:
            return f"{self.namespace}:{pattern}"
        inner, rest = match.groups()
        if inner == "ratelimit":
            return self.rate_limit_prefix() + rest.removeprefix(":")
        return self.stream(inner) + rest
