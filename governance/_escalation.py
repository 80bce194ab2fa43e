"""Decisions on the bus, escalations to anchors, and their approval or denial.

Every decision is a new envelope (``l9.governance.decision.v1``) pointing at what
it decided on by ``causation_id``, published on the channel of each anchor that
observes decisions: ``receives: all`` (every decision) or ``receives: scope``
(the compliance anchor: decisions within the subject's audit scope, see
:mod:`governance._auditscope`); one that no anchor observes goes to the
``decisions`` stream. The auditor records them all: who decided what, when,
under which policy versions, and which anchors were sent it (``observers``).

An escalation (``l9.governance.escalation.v1``) goes on the escalation stream and
to its anchors' channels, and waits in a pending hash. Raised with a ``key``
(e.g. the envelope decided on and the subject), it is raised once: a repeated
call, such as a redelivered envelope's handler, gets the same escalation back. An anchor answers with
``l9 governance approve|deny ID --as NAME --reason ...``, signing with the anchor's own
key (``--key-file``); the answer is a resolution envelope (``l9.governance.resolution.v1``,
``auth`` = the approver, ``signed_by`` = the key) caused by the escalation, kept signed. A
desk with a verifier (the enforcer's) reads an approval only if its signature holds and its
key is the anchor's (``<anchor>.<version>``); else it counts as a denial. One script moves
the escalation from pending to resolved and appends the resolution to its stream, so the first answer wins and
is always on the record. No answer before the deadline is a denial by
``deadline``, given by whoever notices first (a waiter, ``pending``).

Violations that need no answer to go on (the SymPy worker refuses the request
either way) are coalesced (``escalate_coalesced``): while an escalation of one
origin (who sent the request) under one policy is pending, later ones are counted
on it (``Pending.count``, the latest request ids) instead of opening another, and
an origin opens at most ``escalation.source_limit`` per ``source_window_s``; beyond
that a violation is a denial that asks nobody, and its decision says so. One script
decides, so processes racing on one origin still open one escalation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import anyio
import structlog
from pydantic import AwareDatetime

from bus import Keys, Publisher
from bus.connection import RedisClient, as_text
from bus.index import index_streams
from envelope import (
    ED25519_PREFIX,
    EnvelopeError,
    PacketEnvelope,
    Payload,
    Verifier,
    agent_of_key,
    encode,
    payload,
    registry,
    utcnow,
)

from ._auditscope import AuditScope
from ._config import AnchorSpec, EscalationSpec
from ._decision import Decision, Outcome
from ._subjects import Subject
from .metrics import count_decisions

DEADLINE = "deadline"
#: How long an escalation key outlives its escalation's deadline (a late redelivery still finds it).
KEY_GRACE_MS = 7 * 86_400_000
#: Request ids a coalesced escalation keeps (the latest; a redelivered one among them is not recounted).
LATEST_KEPT = 20
log = structlog.get_logger("l9.governance.escalation")


@payload("l9.governance.decision.v1")
class DecisionMade(Payload):
    decision: Decision
    #: The envelope decided on, when the subject was one.
    subject_id: str | None = None
    #: The audit scope the decision was routed by (None: no scope applied).
    audit_scope: tuple[str, ...] | None = None
    #: The anchors it was sent to (none: the ``decisions`` stream only).
    observers: tuple[str, ...] = ()
    #: The escalation the decision was raised on, or counted on when coalesced.
    escalation_id: str | None = None


@payload("l9.governance.escalation.v1")
class EscalationRequested(Payload):
    decision: Decision
    anchors: tuple[str, ...]
    deadline: AwareDatetime
    subject_id: str | None = None


@payload("l9.governance.resolution.v1")
class EscalationResolved(Payload):
    escalation_id: str
    approved: bool
    #: The anchor who answered, or ``deadline`` when nobody did in time.
    by: str
    reason: str
    policy: str | None = None
    #: The violations the escalation stood for (more than one when coalesced).
    violations: int = 1
    #: The key the answer was signed with (an anchor's own key: ``Igor.k2026...``).
    signed_by: str | None = None


class EscalationError(Exception):
    """No such escalation, or an answer that cannot be accepted."""


class NotAnAnchor(EscalationError):
    pass


class AlreadyResolved(EscalationError):
    def __init__(self, resolution: EscalationResolved) -> None:
        self.resolution = resolution
        verb = "approved" if resolution.approved else "denied"
        super().__init__(f"escalation {resolution.escalation_id} was already {verb} by {resolution.by}")


@dataclass(frozen=True)
class Pending:
    """An unanswered escalation, as ``l9 governance pending`` lists it."""

    id: str
    policy: str | None
    subject: str
    reason: str
    anchors: tuple[str, ...]
    deadline: datetime
    correlation_id: str
    #: Who sent what was escalated, when coalesced (``escalate_coalesced``).
    origin: str | None = None
    #: Violations counted on it, and the latest of their request ids.
    count: int = 1
    latest: tuple[str, ...] = ()

    @property
    def overdue(self) -> bool:
        return utcnow() >= self.deadline

    def to_json(self) -> str:
        data = {
            **self.__dict__,
            "anchors": list(self.anchors),
            "latest": list(self.latest),
            "deadline": self.deadline.isoformat(),
        }
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Pending:
        data = json.loads(raw)
        data["anchors"] = tuple(data["anchors"])
        data["latest"] = tuple(data.get("latest", ()))
        data["deadline"] = datetime.fromisoformat(data["deadline"])
        return cls(**data)

    def counted(self, count: str | bytes | None, latest: str | bytes | None) -> Pending:
        """This row with the count and latest request ids a coalescing script keeps beside it."""
        if count is None:
            return self
        ids = tuple(json.loads(latest)) if latest else self.latest
        return replace(self, count=int(count), latest=ids)


@dataclass(frozen=True)
class Raised:
    """What ``escalate_coalesced`` did with a violation: opened an escalation, counted it on the
    pending one (``escalation``, ``count`` violations on it), or neither when its origin is over
    its limit (``escalation`` None, ``count`` the escalations it opened in the window).
    ``decision`` is what to record: the escalated decision, or the denial that asks nobody."""

    decision: Decision
    escalation: PacketEnvelope | None
    opened: bool
    count: int

    @property
    def suppressed(self) -> bool:
        return self.escalation is None


#: KEYS: pending hash, resolved hash, resolutions stream, counts hash, latest hash. ARGV: id,
#: resolution JSON, entry fields... Returns {1, json} when this answer won, {0, json of the earlier
#: answer}, or {-1, ''} if unknown.
RESOLVE = """
local done = redis.call('HGET', KEYS[2], ARGV[1])
if done then return {0, done} end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return {-1, ''} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('XADD', KEYS[3], '*', unpack(ARGV, 3))
return {1, ARGV[2]}
"""

#: One violation of an origin under a policy. KEYS: the (origin, policy) open-escalation hash,
#: pending hash, counts hash, latest hash, the origin's sliding window of escalations opened.
#: ARGV: new id, its pending row, its envelope, its deadline (ms), now (ms, the caller's clock,
#: as deadlines are), request id, latest kept, origin limit, window (ms).
#: Returns {state, escalation envelope, count, published}: state 0 opened (the row written),
#: 1 counted on the pending one, 2 this request was already counted (a redelivery),
#: 3 the origin is over its limit (count: escalations it opened in the window).
COALESCE = """
local open = redis.call('HMGET', KEYS[1], 'id', 'deadline', 'envelope', 'published')
local id = open[1]
if id and tonumber(open[2]) > tonumber(ARGV[5]) and redis.call('HEXISTS', KEYS[2], id) == 1 then
  local latest = cjson.decode(redis.call('HGET', KEYS[4], id) or '[]')
  for _, seen in ipairs(latest) do
    if seen == ARGV[6] then return {2, open[3], tonumber(redis.call('HGET', KEYS[3], id) or 1), open[4]} end
  end
  table.insert(latest, ARGV[6])
  while #latest > tonumber(ARGV[7]) do table.remove(latest, 1) end
  redis.call('HSET', KEYS[4], id, cjson.encode(latest))
  return {1, open[3], redis.call('HINCRBY', KEYS[3], id, 1), open[4]}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - tonumber(ARGV[9]))
local opened = redis.call('ZCARD', KEYS[5])
if opened >= tonumber(ARGV[8]) then return {3, '', opened, '0'} end
redis.call('ZADD', KEYS[5], now, ARGV[1])
redis.call('PEXPIRE', KEYS[5], ARGV[9])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'deadline', ARGV[4], 'envelope', ARGV[3], 'published', '0')
redis.call('PEXPIRE', KEYS[1], math.max(1, tonumber(ARGV[4]) - tonumber(ARGV[5])))
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], 1)
redis.call('HSET', KEYS[4], ARGV[1], cjson.encode({ARGV[6]}))
return {0, ARGV[3], 1, '0'}
"""


def cli_source(name: str) -> str:
    """The envelope source of a person answering from the command line."""
    return f"agent://governance-cli/{re.sub(r'[^A-Za-z0-9_.-]', '_', name) or 'anonymous'}"


class Escalations:
    def __init__(
        self,
        redis: RedisClient,
        publisher: Publisher,
        *,
        spec: EscalationSpec,
        anchors: Sequence[AnchorSpec],
        source: str,
        verifier: Verifier | None = None,
        shared_keys: Iterable[str] = (),
    ) -> None:
        """``verifier``: answers are read only with their signature checked, and an approval
        only from the anchor's own key (``shared_keys``: development HMAC keys anyone holds,
        whose approvals name the anchor by ``--as`` only). Without it answers are trusted."""
        self.redis, self.publisher, self.spec, self.source = redis, publisher, spec, source
        self.verifier, self.shared_keys = verifier, frozenset(shared_keys)
        self.keys: Keys = publisher.keys
        self.anchors = {a.name: a for a in anchors}
        self._pending = self.keys.escalations_pending(spec.resolutions)
        self._resolved = self.keys.escalations_resolved(spec.resolutions)
        #: Beside the pending hash (its slot): coalesced escalations' counts and latest request ids.
        self._counts, self._latest = f"{self._pending}:count", f"{self._pending}:latest"
        self._resolve = redis.register_script(RESOLVE)
        self._coalesce = redis.register_script(COALESCE)

    # -- decisions and escalations ---------------------------------------------------------------
    def _new(self, data: Payload, cause: PacketEnvelope | None, **fields: Any) -> PacketEnvelope:
        return PacketEnvelope.new(
            type=registry.type_of(type(data)),
            source=self.source,
            data=data.model_dump(mode="json"),
            correlation_id=cause.correlation_id if cause else fields.pop("correlation_id", None),
            causation_id=cause.id if cause else fields.pop("causation_id", None),
            **fields,
        )

    def observers_of(
        self, decision: Decision, scope: AuditScope | None = None, subject: Subject | None = None
    ) -> tuple[str, ...]:
        """The anchors sent ``decision``: ``receives: all``, and ``receives: scope`` when in scope."""
        in_scope = scope is None or scope.covers(decision, subject)
        return tuple(
            a.name
            for a in self.anchors.values()
            if a.receives == "all" or (a.receives == "scope" and in_scope)
        )

    def decision_envelope(
        self,
        decision: Decision,
        *,
        cause: PacketEnvelope | None = None,
        scope: AuditScope | None = None,
        subject: Subject | None = None,
        escalation_id: str | None = None,
    ) -> PacketEnvelope:
        """The envelope of ``decision``, naming its observers (publish it with ``publish_decisions``)."""
        data = DecisionMade(
            decision=decision,
            subject_id=cause.id if cause else None,
            audit_scope=None if scope is None else scope.items,
            observers=self.observers_of(decision, scope, subject),
            escalation_id=escalation_id,
        )
        return self._new(data, cause)

    async def publish_decisions(self, envelopes: Sequence[PacketEnvelope]) -> None:
        """Publish decision envelopes to their observers' channels (or the decisions stream), batched;
        once all are published, each is counted (``l9_governance_decisions_total``)."""
        by_channel: dict[str, list[PacketEnvelope]] = {}
        decisions: list[Decision] = []
        for envelope in envelopes:
            made = DecisionMade.model_validate(envelope.data)
            decisions.append(made.decision)
            channels = [self.anchors[a].channel for a in made.observers if a in self.anchors]
            for channel in dict.fromkeys(channels or [self.spec.decisions]):
                by_channel.setdefault(channel, []).append(envelope)
        for channel, batch in by_channel.items():
            await self.publisher.publish_many(batch, channel)
        count_decisions(decisions)

    async def record(
        self,
        decision: Decision,
        *,
        cause: PacketEnvelope | None = None,
        scope: AuditScope | None = None,
        subject: Subject | None = None,
        escalation_id: str | None = None,
    ) -> PacketEnvelope:
        """Publish ``decision`` to its observing anchors (or the decisions stream when none)."""
        envelope = self.decision_envelope(
            decision, cause=cause, scope=scope, subject=subject, escalation_id=escalation_id
        )
        await self.publish_decisions([envelope])
        return envelope

    async def escalate(
        self,
        decision: Decision,
        *,
        cause: PacketEnvelope | None = None,
        deadline_s: float | None = None,
        key: str | None = None,
    ) -> PacketEnvelope:
        """Ask the decision's anchors; returns the escalation envelope (its id is the escalation id).

        With ``key``, the escalation is raised once: a later call with the same key returns the
        first one (published again only if a crash interrupted its first publication)."""
        envelope, deadline = self._escalation(decision, cause, deadline_s)
        if key is not None:
            envelope, first = await self._claim(key, envelope, deadline)
            if not first and await self._known(envelope.id):
                return envelope
        await self.redis.hset(self._pending, envelope.id, self._summary(envelope).to_json())
        await self._publish(envelope)
        return envelope

    async def escalate_coalesced(self, decision: Decision, *, cause: PacketEnvelope, origin: str) -> Raised:
        """Escalate a violation by ``origin`` (who sent ``cause``), coalesced (module docstring):
        opened, counted on the pending escalation of the same origin and policy, or, over the
        origin's limit, turned into a denial that asks nobody."""
        envelope, deadline = self._escalation(decision, cause, None)
        row = replace(self._summary(envelope), origin=origin, latest=(cause.id,))
        state, stored, count, published = await self._coalesce(
            keys=[
                f"{self._pending}:open:{decision.policy}:{origin}",
                self._pending,
                self._counts,
                self._latest,
                f"{self._pending}:opened:{origin}",
            ],
            args=[
                envelope.id, row.to_json(), envelope.model_dump_json(), _ms(deadline), _ms(utcnow()),
                cause.id, LATEST_KEPT, self.spec.source_limit, round(self.spec.source_window_s * 1000),
            ],
        )  # fmt: skip
        state, count = int(state), int(count)
        if state == 3:
            log.warning(
                "governance.escalation_suppressed", origin=origin, policy=decision.policy, opened=count
            )
            return Raised(self._unasked(decision, origin, count), None, False, count)
        escalation = envelope if state == 0 else PacketEnvelope.model_validate_json(stored)
        if state == 0 or (state == 2 and as_text(published) != "1"):  # a crash cut its publication short
            await self._publish(escalation)
            await self.redis.hset(f"{self._pending}:open:{decision.policy}:{origin}", "published", "1")
        return Raised(decision, escalation, state == 0, count)

    def _unasked(self, decision: Decision, origin: str, opened: int) -> Decision:
        """``decision`` as a denial: ``origin`` has opened as many escalations as it may."""
        spec = self.spec
        why = (
            f"denied without asking {', '.join(decision.anchors)}: {origin} opened {opened} escalations "
            f"in {spec.source_window_s:g} s (escalation.source_limit {spec.source_limit})"
        )
        return decision.model_copy(
            update={"outcome": Outcome.DENY, "anchors": (), "reason": f"{why}; {decision.reason}"}
        )

    def _escalation(
        self, decision: Decision, cause: PacketEnvelope | None, deadline_s: float | None
    ) -> tuple[PacketEnvelope, datetime]:
        """A new escalation envelope of ``decision``, and its deadline."""
        if not decision.escalated or not decision.anchors:
            raise ValueError(f"only an escalated decision with anchors can be escalated ({decision.outcome})")
        deadline = utcnow() + timedelta(seconds=deadline_s or self.spec.deadline_s)
        data = EscalationRequested(
            decision=decision,
            anchors=decision.anchors,
            deadline=deadline,
            subject_id=cause.id if cause else None,
        )
        return self._new(data, cause, kind="request", expires_at=deadline), deadline

    async def _claim(
        self, key: str, envelope: PacketEnvelope, deadline: datetime
    ) -> tuple[PacketEnvelope, bool]:
        """The escalation stored under ``key`` (``envelope`` if this call stored it), and whether it did."""
        ttl_ms = max(1, int((deadline - utcnow()).total_seconds() * 1000)) + KEY_GRACE_MS
        name = f"{self._pending}:key:{key}"
        if await self.redis.set(name, envelope.model_dump_json(), nx=True, px=ttl_ms):
            return envelope, True
        stored = await self.redis.get(name)
        if stored is None:  # expired between the two calls: raise it anew
            await self.redis.set(name, envelope.model_dump_json(), px=ttl_ms)
            return envelope, True
        return PacketEnvelope.model_validate_json(stored), False

    async def _known(self, escalation_id: str) -> bool:
        """Whether the escalation is pending or answered (else its first publication was cut short)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hexists(self._pending, escalation_id)
        pipe.hexists(self._resolved, escalation_id)
        return any(await pipe.execute())

    @staticmethod
    def _summary(envelope: PacketEnvelope) -> Pending:
        data = EscalationRequested.model_validate(envelope.data)
        decision = data.decision
        return Pending(
            envelope.id, decision.policy, decision.subject, decision.reason, decision.anchors, data.deadline,
            envelope.correlation_id,
        )  # fmt: skip

    async def _publish(self, envelope: PacketEnvelope) -> None:
        decision = EscalationRequested.model_validate(envelope.data).decision
        channels = [self.spec.stream] + [
            self.anchors[a].channel for a in decision.anchors if a in self.anchors
        ]
        for channel in dict.fromkeys(channels):
            await self.publisher.publish(envelope, channel)
        log.info(
            "governance.escalated",
            escalation_id=envelope.id,
            anchors=decision.anchors,
            policy=decision.policy,
        )

    # -- answers -----------------------------------------------------------------------------------
    async def pending(self, *, expire: bool = True) -> list[Pending]:
        """Unanswered escalations, oldest deadline first; overdue ones are denied first (``expire``)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self._pending)
        pipe.hgetall(self._counts)
        pipe.hgetall(self._latest)
        found, counts, latest = (_text_keys(h) for h in await pipe.execute())
        rows = [Pending.from_json(raw).counted(counts.get(i), latest.get(i)) for i, raw in found.items()]
        if expire:
            for row in rows:
                if row.overdue:
                    await self._expire(row)
            rows = [r for r in rows if not r.overdue]
        return sorted(rows, key=lambda r: r.deadline)

    async def resolve(
        self, escalation_id: str, *, approved: bool, by: str, reason: str
    ) -> EscalationResolved:
        """Record an anchor's answer; the first answer wins (AlreadyResolved for later ones)."""
        row = await self._row(escalation_id)
        if by != DEADLINE:
            by = self._anchor_of(row, by)
            if row.overdue:
                await self._expire(row)
                raise AlreadyResolved(await self._outcome_or_fail(escalation_id))
        answer = EscalationResolved(
            escalation_id=escalation_id,
            approved=approved,
            by=by,
            reason=reason,
            policy=row.policy,
            violations=row.count,
        )
        signer = self.publisher.signer
        if signer is not None:
            answer = answer.model_copy(update={"signed_by": signer.key_id})
        envelope = self._new(
            answer, None, correlation_id=row.correlation_id, causation_id=escalation_id, auth=by
        )
        fields = encode(envelope, signer)
        flat = [x for pair in fields.items() for x in pair]
        if signer is not None:  # kept signed: whoever reads the answer checks who gave it
            envelope = envelope.model_copy(update={"key_id": signer.key_id, "signature": fields["sig"]})
        await index_streams(self.redis, self.keys, [self.spec.resolutions])
        won, stored = await self._resolve(
            keys=[
                self._pending,
                self._resolved,
                self.keys.stream(self.spec.resolutions),
                self._counts,
                self._latest,
            ],
            args=[escalation_id, envelope.model_dump_json(), *flat],
        )
        if int(won) != 1:
            raise AlreadyResolved(_resolution(stored))
        log.info("governance.resolved", escalation_id=escalation_id, approved=approved, by=by)
        return answer

    async def outcome(self, escalation_id: str) -> EscalationResolved | None:
        """The recorded answer; with a verifier, checked: an approval that its anchor's key did
        not sign counts as a denial (a denial stands whoever signed it)."""
        stored = await self.redis.hget(self._resolved, escalation_id)
        if stored is None:
            return None
        if self.verifier is None:
            return _resolution(stored)
        envelope = PacketEnvelope.model_validate_json(stored)
        answer = EscalationResolved.model_validate(envelope.data)
        problem = self._unsigned_approval(envelope, answer)
        if problem is None:
            return answer
        log.warning("governance.approval_refused", escalation_id=escalation_id, by=answer.by, problem=problem)
        return answer.model_copy(update={"approved": False, "reason": f"approval refused: {problem}"})

    def _unsigned_approval(self, envelope: PacketEnvelope, answer: EscalationResolved) -> str | None:
        """Why an approval is not the anchor's own (None: it is, or the answer is a denial)."""
        verifier = self.verifier
        if not answer.approved or verifier is None:
            return None
        try:
            verifier.verify_envelope(envelope)
        except EnvelopeError as exc:
            return exc.detail
        key_id = envelope.key_id or ""
        if key_id in self.shared_keys and not (envelope.signature or "").startswith(ED25519_PREFIX):
            return None  # a development keyring: the name given is all there is
        if agent_of_key(key_id).casefold() != answer.by.casefold():
            return f"signed with key {key_id!r}, not a key of anchor {answer.by!r}"
        return None

    async def wait(self, escalation_id: str, *, poll_s: float = 0.2) -> EscalationResolved:
        """The answer to an escalation; a denial by ``deadline`` once its deadline has passed."""
        while True:
            answer = await self.outcome(escalation_id)
            if answer is not None:
                return answer
            raw = await self.redis.hget(self._pending, escalation_id)
            if raw is not None and Pending.from_json(raw).overdue:
                return await self._expire(Pending.from_json(raw))
            await anyio.sleep(poll_s)

    async def _expire(self, row: Pending) -> EscalationResolved:
        reason = f"no answer from {', '.join(row.anchors)} before {row.deadline.isoformat()}"
        try:
            return await self.resolve(row.id, approved=False, by=DEADLINE, reason=reason)
        except AlreadyResolved as exc:
            return exc.resolution

    async def _row(self, escalation_id: str) -> Pending:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self._pending, escalation_id)
        pipe.hget(self._counts, escalation_id)
        pipe.hget(self._latest, escalation_id)
        raw, count, latest = await pipe.execute()
        if raw is None:
            done = await self.outcome(escalation_id)
            if done is not None:
                raise AlreadyResolved(done)
            raise EscalationError(f"no escalation {escalation_id!r} (l9 governance pending lists them)")
        return Pending.from_json(raw).counted(count, latest)

    async def _outcome_or_fail(self, escalation_id: str) -> EscalationResolved:
        done = await self.outcome(escalation_id)
        if done is None:
            raise EscalationError(f"escalation {escalation_id} has no recorded answer")
        return done

    @staticmethod
    def _anchor_of(row: Pending, name: str) -> str:
        for anchor in row.anchors:
            if anchor.casefold() == name.casefold():
                return anchor
        raise NotAnAnchor(
            f"{name!r} is not an anchor of escalation {row.id} (anchors: {', '.join(row.anchors)})"
        )


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _text_keys(mapping: dict[Any, Any]) -> dict[str, Any]:
    return {as_text(k): v for k, v in mapping.items()}


def _resolution(stored: str | bytes) -> EscalationResolved:
    envelope = PacketEnvelope.model_validate_json(stored)
    return EscalationResolved.model_validate(envelope.data)
