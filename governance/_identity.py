"""Agent identity: which signing key may emit which envelope types.

The table comes from the policy file (``identity.signers``: key id -> type
globs). The delivery loop calls ``SignerACL.authorize`` on every envelope after
its signature checked out and before any handler sees it; an envelope whose
signer may not emit its type is dead-lettered as ``unauthorized_signer``.

The check is one dict lookup per envelope: the answer for each (key id, type)
pair is computed once from precompiled globs and cached. Unsigned envelopes
(key id None) are never authorized while a table is configured.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from envelope import EnvelopeError, ErrorReason, PacketEnvelope

from ._rules import glob_regex

_CACHE_MAX = 65_536


class SignerACL:
    def __init__(self, table: Mapping[str, Sequence[str]]) -> None:
        self.table = {key_id: tuple(globs) for key_id, globs in table.items()}
        self._may_emit: dict[str, re.Pattern[str]] = {k: glob_regex(g) for k, g in self.table.items()}
        self._cache: dict[tuple[str | None, str], bool] = {}

    def allows(self, key_id: str | None, type_: str) -> bool:
        """Whether the key ``key_id`` may sign envelopes of ``type_``."""
        key = (key_id, type_)
        allowed = self._cache.get(key)
        if allowed is None:
            allowed = self._decide(key_id, type_)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key] = allowed
        return allowed

    def _decide(self, key_id: str | None, type_: str) -> bool:
        pattern = self._may_emit.get(key_id) if key_id is not None else None
        return pattern is not None and pattern.fullmatch(type_) is not None

    def authorize(self, envelope: PacketEnvelope) -> None:
        """Raise EnvelopeError(unauthorized_signer) unless the envelope's signer may emit its type."""
        if self._cache.get((envelope.key_id, envelope.type)) or self.allows(envelope.key_id, envelope.type):
            return
        raise EnvelopeError(
            ErrorReason.UNAUTHORIZED_SIGNER,
            self.explain(envelope.key_id, envelope.type),
            envelope_id=envelope.id,
        )

    def explain(self, key_id: str | None, type_: str) -> str:
        if key_id is None:
            return f"unsigned envelope of type {type_!r}: the identity table admits signed envelopes only"
        globs = self.table.get(key_id)
        if globs is None:
            return f"signing key {key_id!r} has no entry in the identity table (known: {sorted(self.table)})"
        return f"signing key {key_id!r} may not emit {type_!r} (it may emit: {', '.join(globs) or 'nothing'})"

    def types_of(self, key_id: str) -> tuple[str, ...]:
        return self.table.get(key_id, ())
