"""Agent identity: which signing key may emit which envelope types, and each agent's Redis user.

The table comes from the policy file (``identity.signers``: agent -> type globs).
A signing key belongs to the agent its id names before the first dot (``planner.k2026...``
is the planner's; an entry may also name one key id exactly). The delivery loop calls
``SignerACL.authorize`` on every envelope after its signature checked out and before any
handler sees it; an envelope whose signer may not emit its type is dead-lettered as
``unauthorized_signer``.

``identity.shared_keys`` names HMAC keys shared by every process of a development setup
(``dev``, the default keyring's): whoever holds one can sign as anyone, so the table cannot
tell agents apart by it, and an HMAC signature with such a key may emit any type. An Ed25519
signature is always judged by the table (docs/SECURITY.md: which mode guarantees what).

The check is one dict lookup per envelope: the answer for each (key id, type)
pair is computed once from precompiled globs and cached. Unsigned envelopes
(key id None) are never authorized while a table is configured.

``render_acl`` writes a Redis ACL file from ``identity.redis_users``: one user
per agent (``<namespace>-<agent>``), allowed the bus commands only, on the keys
of the streams it consumes (read/write), the streams it produces (write only),
its heartbeats, and its own data keys (data commands only). Another agent's
stream is out of reach: Redis answers NOPERM.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from bus import Keys
from bus.keys import RPC_PREFIX
from envelope import ED25519_PREFIX, EnvelopeError, ErrorReason, PacketEnvelope, agent_of_key

from ._config import RedisUserSpec, load_policy_file
from ._rules import glob_regex

_CACHE_MAX = 65_536


class SignerACL:
    def __init__(self, table: Mapping[str, Sequence[str]], shared_keys: Iterable[str] = ()) -> None:
        self.table = {key_id: tuple(globs) for key_id, globs in table.items()}
        self.shared_keys = frozenset(shared_keys)
        self._may_emit = {k: _allowed(globs) for k, globs in self.table.items()}
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

    def _entry(self, key_id: str) -> str | None:
        """The table entry of ``key_id``: the key id itself, else its agent."""
        if key_id in self.table:
            return key_id
        agent = agent_of_key(key_id)
        return agent if agent in self.table else None

    def _decide(self, key_id: str | None, type_: str) -> bool:
        entry = self._entry(key_id) if key_id is not None else None
        globs = self._may_emit.get(entry) if entry is not None else None
        if globs is None:
            return False
        allowed, excluded = globs
        return allowed.fullmatch(type_) is not None and excluded.fullmatch(type_) is None

    def authorize(self, envelope: PacketEnvelope) -> None:
        """Raise EnvelopeError(unauthorized_signer) unless the envelope's signer may emit its type."""
        if self._cache.get((envelope.key_id, envelope.type)) or self.allows(envelope.key_id, envelope.type):
            return
        signature = envelope.signature
        if envelope.key_id in self.shared_keys and signature and not signature.startswith(ED25519_PREFIX):
            return
        raise EnvelopeError(
            ErrorReason.UNAUTHORIZED_SIGNER,
            self.explain(envelope.key_id, envelope.type),
            envelope_id=envelope.id,
        )

    def explain(self, key_id: str | None, type_: str) -> str:
        if key_id is None:
            return f"unsigned envelope of type {type_!r}: the identity table admits signed envelopes only"
        entry = self._entry(key_id)
        if entry is None:
            return (
                f"signing key {key_id!r} (agent {agent_of_key(key_id)!r}) has no entry in the identity "
                f"table (known: {sorted(self.table)})"
            )
        globs = self.table[entry]
        return f"signing key {key_id!r} may not emit {type_!r} (it may emit: {', '.join(globs) or 'nothing'})"

    def types_of(self, key_id: str) -> tuple[str, ...]:
        entry = self._entry(key_id)
        return self.table[entry] if entry is not None else ()


def _allowed(globs: Sequence[str]) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(what the globs allow, what their ``!`` globs take out again)."""
    return (
        glob_regex([g for g in globs if not g.startswith("!")]),
        glob_regex([g[1:] for g in globs if g.startswith("!")]),
    )


def load_signer_acl(path: Path | None = None) -> SignerACL | None:
    """The signer table of the policy file at ``path``; None (no check) when it has none."""
    identity = load_policy_file(path).identity
    return SignerACL(identity.signers, identity.shared_keys) if identity.signers else None


# -- Redis users, one per agent (``l9 acl render``) ------------------------------------------
#: What the delivery loop, the publisher and RPC send to Redis (bus/consumer, deadletter,
#: maintenance, publisher, rpc), and what redis-py sends when it connects.
BUS_COMMANDS = (
    "ping", "hello", "client|setinfo", "client|setname",
    "xgroup|create", "xgroup|delconsumer", "xreadgroup", "xack", "xclaim", "xpending", "xrange",
    "xinfo|consumers", "xinfo|stream", "xinfo|groups", "xadd",
    "hset", "hget", "hdel", "pexpire", "set", "del", "exists", "sadd", "multi", "exec", "discard",
    "zmscore", "zadd", "zremrangebyscore",  # a group's window of handled ids (bus/dedupe)
    "script|load",  # redis-py's registered scripts reload themselves after NOSCRIPT
    # Redis Cluster: is it one (CLUSTER INFO), the slot map, key positions, redirections
    "cluster|info", "cluster|slots", "cluster|shards", "command", "asking", "readonly",
    "wait",  # a publish that waits for replicas (L9_PUBLISH_REPLICAS)
)  # fmt: skip
RPC_CALL_COMMANDS = ("xread",)
#: An agent's own data keys (``keys:``): data commands on those keys only, nothing dangerous.
DATA_RULES = (
    "+@hash", "+@string", "+@set", "+@sortedset", "+@list", "+eval", "+evalsha",
    "+time", "+pexpire",  # the scripts' clock, and the expiry of their keys (rate limits, escalations)
    "-@dangerous",
)  # fmt: skip


def redis_user_name(namespace: str, agent: str) -> str:
    return f"{namespace}-{agent}"


def password_hash(password: str) -> str:
    """The ``#<sha256>`` form of a password in an ACL rule (the file never holds the password)."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def acl_rules(agent: str, spec: RedisUserSpec, keys: Keys, password: str) -> list[str]:
    """The ACL rules of one agent's Redis user, from a clean slate (``reset``)."""
    ns = keys.namespace
    rules = ["reset", "on", password_hash(password), "-@all"]
    rules += [f"+{c}" for c in (*BUS_COMMANDS, *(RPC_CALL_COMMANDS if spec.calls else ()))]
    rules.append(f"~{ns}:hb:{agent}-*")  # its consumers' heartbeats (claimed, beaten, checked)
    every_partition = f"{ns}:{{{ns}.p*}}"
    for stream in spec.consumes:
        key = f"{every_partition}:*" if stream == "*" else keys.stream(stream)
        rules += (
            [f"~{key}"]
            if stream == "*"
            else [f"~{key}", f"~{key}:dead", f"~{key}:errors", f"~{keys.handled(stream, agent)}"]
        )
    rules += [f"%W~{every_partition}:*" if s == "*" else f"%W~{keys.stream(s)}" for s in spec.produces]
    if spec.produces or spec.replies or spec.calls:
        # the index entry of a stream is in its partition; reply streams can be in any
        rules.append(f"%W~{every_partition}:streams")
    if spec.replies:
        rules.append(f"%W~{every_partition}:{RPC_PREFIX}*")
    if spec.calls:
        rules.append(f"~{every_partition}:{RPC_PREFIX}*")
    if spec.keys:
        selector = [f"~{keys.family_pattern(pattern)}" for pattern in spec.keys] + list(DATA_RULES)
        rules.append("(" + " ".join(selector) + ")")
    return rules


def render_acl(users: Mapping[str, RedisUserSpec], keys: Keys, passwords: Mapping[str, str]) -> str:
    """A Redis ACL file (``aclfile``): one ``user`` line per agent, in name order."""
    lines = []
    for agent in sorted(users):
        if agent not in passwords:
            raise KeyError(f"no password for agent {agent!r}")
        rules = acl_rules(agent, users[agent], keys, passwords[agent])
        lines.append(f"user {redis_user_name(keys.namespace, agent)} " + " ".join(rules))
    return "\n".join(lines) + "\n"


def fill_passwords(agents: Iterable[str], known: Mapping[str, str]) -> dict[str, str]:
    """``known`` plus a fresh random password for every agent without one."""
    out = dict(known)
    for agent in agents:
        out.setdefault(agent, secrets.token_urlsafe(24))
    return out
