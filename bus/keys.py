"""Every Redis key name L9 uses, in one place.

All keys of one stream family share the hash tag ``{name}`` so a stream, its
dead-letter stream and its error notes land in one Redis Cluster slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STREAM_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,99}$")
RPC_PREFIX = "rpc."


def check_stream_name(name: str) -> str:
    if not STREAM_NAME.match(name):
        raise ValueError(f"stream name {name!r} must be 1-100 chars of a-z, 0-9, '.', '_' or '-'")
    return name


@dataclass(frozen=True)
class Keys:
    namespace: str = "l9"

    def stream(self, name: str) -> str:
        return f"{self.namespace}:{{{check_stream_name(name)}}}"

    def dead(self, name: str) -> str:
        """Dead letters of stream ``name`` (entry + reason)."""
        return f"{self.stream(name)}:dead"

    def errors(self, name: str) -> str:
        """Hash: entry id -> last handler error, kept until the entry is acked or dead."""
        return f"{self.stream(name)}:errors"

    def streams_index(self) -> str:
        """Set of every stream name ever published to."""
        return f"{self.namespace}:streams"

    def heartbeat(self, consumer: str) -> str:
        """Expiring key: present while consumer ``consumer`` is alive."""
        return f"{self.namespace}:hb:{consumer}"

    def rate_limit(self, policy: str, subject: str) -> str:
        """Sorted set: admissions of ``subject`` under rate-limit ``policy`` (scored by ms time).

        All rate-limit keys share the hash tag ``{ratelimit}``: one script checks
        several limits of one request atomically, so they must live in one slot."""
        return f"{self.namespace}:{{ratelimit}}:{policy}:{subject}"

    def escalations_pending(self, resolutions: str) -> str:
        """Hash: escalation id -> JSON summary (deadline, anchors, reason), while unanswered.

        In the hash slot of the ``resolutions`` stream: one script moves an escalation from
        pending to resolved and appends the resolution envelope to that stream."""
        return f"{self.stream(resolutions)}:pending"

    def escalations_resolved(self, resolutions: str) -> str:
        """Hash: escalation id -> its resolution envelope (JSON); the first answer wins."""
        return f"{self.stream(resolutions)}:resolved"

    def name_of(self, stream_key: str) -> str:
        """The stream name inside a stream key (``l9:{demo}`` -> ``demo``)."""
        prefix = f"{self.namespace}:{{"
        if not (stream_key.startswith(prefix) and stream_key.endswith("}")):
            raise ValueError(f"{stream_key!r} is not a stream key of namespace {self.namespace!r}")
        return stream_key[len(prefix) : -1]
