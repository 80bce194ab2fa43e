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
``l9 governance approve|deny ID --as NAME --reason ...``; the answer is a
resolution envelope (``l9.governance.resolution.v1``, ``auth`` = the approver)
caused by the escalation. One script moves the escalation from pending to
resolved and appends the resolution to its stream, so the first answer wins and
is always on the record. No answer before the deadline is a denial by
``deadline``, given by whoever notices first (a waiter, ``pending``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio
import structlog
from pydantic import AwareDatetime

from bus import Keys, Publisher
from bus.connection import RedisClient
from bus.index import index_streams
from envelope import PacketEnvelope, Payload, encode, payload, registry, utcnow

from ._auditscope import AuditScope
from ._config import AnchorSpec, EscalationSpec
from ._decision import Decision
from ._subjects import Subject

DEADLINE = "deadline"
#: How long an escalation key outlives its escalation's deadline (a late redelivery still finds it).
KEY_GRACE_MS = 7 * 86_400_000
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

    @property
    def overdue(self) -> bool:
        return utcnow() >= self.deadline

    def to_json(self) -> str:
        data = {**self.__dict__, "anchors": list(self.anchors), "deadline": self.deadline.isoformat()}
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Pending:
        data = json.loads(raw)
        data["anchors"] = tuple(data["anchors"])
        data["deadline"] = datetime.fromisoformat(data["deadline"])
        return cls(**data)


#: KEYS: pending hash, resolved hash, resolutions stream. ARGV: id, resolution JSON, entry fields...
#: Returns {1, json} when this answer won, {0, json of the earlier answer}, or {-1, ''} if unknown.
RESOLVE = """
local done = redis.call('HGET', KEYS[2], ARGV[1])
if done then return {0, done} end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return {-1, ''} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[3], '*', unpack(ARGV, 3))
return {1, ARGV[2]}
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
    ) -> None:
        self.redis, self.publisher, self.spec, self.source = redis, publisher, spec, source
        self.keys: Keys = publisher.keys
        self.anchors = {a.name: a for a in anchors}
        self._pending = self.keys.escalations_pending(spec.resolutions)
        self._resolved = self.keys.escalations_resolved(spec.resolutions)
        self._resolve = redis.register_script(RESOLVE)

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
    ) -> PacketEnvelope:
        """The envelope of ``decision``, naming its observers (publish it with ``publish_decisions``)."""
        data = DecisionMade(
            decision=decision,
            subject_id=cause.id if cause else None,
            audit_scope=None if scope is None else scope.items,
            observers=self.observers_of(decision, scope, subject),
        )
        return self._new(data, cause)

    async def publish_decisions(self, envelopes: Sequence[PacketEnvelope]) -> None:
        """Publish decision envelopes to their observers' channels (or the decisions stream), batched."""
        by_channel: dict[str, list[PacketEnvelope]] = {}
        for envelope in envelopes:
            observers = DecisionMade.model_validate(envelope.data).observers
            channels = [self.anchors[a].channel for a in observers if a in self.anchors]
            for channel in dict.fromkeys(channels or [self.spec.decisions]):
                by_channel.setdefault(channel, []).append(envelope)
        for channel, batch in by_channel.items():
            await self.publisher.publish_many(batch, channel)

    async def record(
        self,
        decision: Decision,
        *,
        cause: PacketEnvelope | None = None,
        scope: AuditScope | None = None,
        subject: Subject | None = None,
    ) -> PacketEnvelope:
        """Publish ``decision`` to its observing anchors (or the decisions stream when none)."""
        envelope = self.decision_envelope(decision, cause=cause, scope=scope, subject=subject)
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
        if not decision.escalated or not decision.anchors:
            raise ValueError(f"only an escalated decision with anchors can be escalated ({decision.outcome})")
        deadline = utcnow() + timedelta(seconds=deadline_s or self.spec.deadline_s)
        data = EscalationRequested(
            decision=decision,
            anchors=decision.anchors,
            deadline=deadline,
            subject_id=cause.id if cause else None,
        )
        envelope = self._new(data, cause, kind="request", expires_at=deadline)
        if key is not None:
            envelope, first = await self._claim(key, envelope, deadline)
            if not first and await self._known(envelope.id):
                return envelope
        await self._raise(envelope)
        return envelope

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

    async def _raise(self, envelope: PacketEnvelope) -> None:
        data = EscalationRequested.model_validate(envelope.data)
        decision = data.decision
        summary = Pending(
            envelope.id, decision.policy, decision.subject, decision.reason, decision.anchors, data.deadline,
            envelope.correlation_id,
        )  # fmt: skip
        await self.redis.hset(self._pending, envelope.id, summary.to_json())
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
        rows = [Pending.from_json(raw) for raw in (await self.redis.hgetall(self._pending)).values()]
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
            escalation_id=escalation_id, approved=approved, by=by, reason=reason, policy=row.policy
        )
        envelope = self._new(
            answer, None, correlation_id=row.correlation_id, causation_id=escalation_id, auth=by
        )
        fields = encode(envelope, self.publisher.signer)
        flat = [x for pair in fields.items() for x in pair]
        await index_streams(self.redis, self.keys, [self.spec.resolutions])
        won, stored = await self._resolve(
            keys=[self._pending, self._resolved, self.keys.stream(self.spec.resolutions)],
            args=[escalation_id, envelope.model_dump_json(), *flat],
        )
        if int(won) != 1:
            raise AlreadyResolved(_resolution(stored))
        log.info("governance.resolved", escalation_id=escalation_id, approved=approved, by=by)
        return answer

    async def outcome(self, escalation_id: str) -> EscalationResolved | None:
        stored = await self.redis.hget(self._resolved, escalation_id)
        return None if stored is None else _resolution(stored)

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
        raw = await self.redis.hget(self._pending, escalation_id)
        if raw is None:
            done = await self.outcome(escalation_id)
            if done is not None:
                raise AlreadyResolved(done)
            raise EscalationError(f"no escalation {escalation_id!r} (l9 governance pending lists them)")
        return Pending.from_json(raw)

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


def _resolution(stored: str | bytes) -> EscalationResolved:
    envelope = PacketEnvelope.model_validate_json(stored)
    return EscalationResolved.model_validate(envelope.data)
