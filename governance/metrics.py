"""Governance's Prometheus metrics, in prometheus-client's default registry.

Per decision, in the process that makes it (labels ``outcome``: ``allow``, ``escalate``,
``deny``; ``policy``: the policy that decided)::

    l9_governance_decisions_total       decisions published (``Escalations.publish_decisions``:
                                        the enforcer's, the SymPy worker's) and rate-limit
                                        decisions (``RateLimiter.check``: the gate, the planner)

``policy`` is the deciding policy's id (``name@version``: the policy file's, a rate limit's,
``manifest-integrity@1``); ``none`` when no policy decided (an allowed subject, a request within
its rate limits); ``-`` for an id that is not ``name@version``, and for every id after the
first :data:`POLICY_LABELS` distinct ones this process met (the label stays bounded whatever a
policy file or a caller holds). Label children are looked up once per (outcome, policy) and
kept: counting a decision is two dict look-ups and an increment.

Escalations waiting for an anchor, read from Redis (the pending hash every process writes),
exported by one process (the enforcer's, :class:`EscalationStats`)::

    l9_escalations_pending              escalations unanswered and within their deadline
                                        (label ``policy``)
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import structlog
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bus import Keys
from bus.connection import RedisClient
from bus.metrics import refreshed
from envelope import utcnow

from ._config import EscalationSpec, PolicyFile
from ._decision import POLICY_REF, Decision

log = structlog.get_logger("l9.governance.metrics")

DECISIONS = Counter(
    "l9_governance_decisions",
    "Governance decisions made by this process, by outcome and the policy that decided.",
    ("outcome", "policy"),
)
#: The ``policy`` label of an id that is not ``name@version``, or past :data:`POLICY_LABELS`.
UNKNOWN = "-"
#: The ``policy`` label of a decision no policy made (allowed).
NO_POLICY = "none"
#: Distinct policy ids labelled per process; past it: ``-``.
POLICY_LABELS = 256
#: Seconds between two refreshes of :class:`EscalationStats`.
ESCALATION_STATS_INTERVAL_S = 5.0

_labels: set[str] = set()
_children: dict[tuple[str, str], Any] = {}
_lock = threading.Lock()  # taken for a new label or child only (a caller may be a worker thread)


def policy_label(policy: str | None) -> str:
    """The ``policy`` label of a deciding policy id (module docstring)."""
    if policy is None:
        return NO_POLICY
    if policy in _labels:
        return policy
    if POLICY_REF.fullmatch(policy) is None:
        return UNKNOWN
    with _lock:
        if policy not in _labels:
            if len(_labels) >= POLICY_LABELS:
                return UNKNOWN
            _labels.add(policy)
    return policy


def count_decision(decision: Decision) -> None:
    """``decision`` was made: one more ``l9_governance_decisions_total{outcome, policy}``."""
    key = (decision.outcome.value, policy_label(decision.policy))
    child = _children.get(key)
    if child is None:
        with _lock:
            child = _children.get(key)
            if child is None:
                child = _children[key] = DECISIONS.labels(*key)
    child.inc()


def count_decisions(decisions: Iterable[Decision]) -> None:
    for decision in decisions:
        count_decision(decision)


class EscalationStats(Collector):
    """``l9_escalations_pending{policy}``: the escalations of the pending hash (``Escalations``,
    every process's) still waiting for an anchor, as of the last :meth:`refresh`.

    An escalation past its deadline is not counted: it is a denial by ``deadline`` (given when
    a waiter, ``l9 governance pending`` or an answer notices it), no longer waiting for anyone.
    ``policies`` (those of the policy file that escalate: :meth:`of`) are always shown, 0 when
    none of theirs is pending, so an absent series means no figures (not refreshed, or Redis
    could not be read), never zero.

    Registered in the default registry while :meth:`run` runs. One process of a deployment
    runs it (the enforcer's: it waits for the answers), so the series has one source."""

    def __init__(
        self, redis: RedisClient, keys: Keys, spec: EscalationSpec, policies: Iterable[str] = ()
    ) -> None:
        self.redis = redis
        self.key = keys.escalations_pending(spec.resolutions)
        self.policies = tuple(policy_label(p) for p in policies)
        #: policy label -> escalations pending; None: no figures (not refreshed, or Redis trouble)
        self.pending: dict[str, int] | None = None

    @classmethod
    def of(cls, redis: RedisClient, keys: Keys, policy_file: PolicyFile) -> EscalationStats:
        """The figures of ``policy_file``'s escalations (``load_policy_file(settings.policy_file)``),
        its enabled policies that escalate shown at 0 when none is pending."""
        escalating = [p.id for p in policy_file.policies if p.enabled and p.on_violation == "escalate"]
        return cls(redis, keys, policy_file.escalation, escalating)

    async def refresh(self) -> None:
        """Read the pending hash (one ``HVALS``) and count its rows within their deadline."""
        rows = await self.redis.hvals(self.key)
        now = utcnow()
        pending = dict.fromkeys(self.policies, 0)
        for raw in rows:
            policy, deadline = _policy_and_deadline(raw)
            if deadline is not None and deadline <= now:
                continue
            label = policy_label(policy) if policy is not None else UNKNOWN
            pending[label] = pending.get(label, 0) + 1
        self.pending = pending

    async def run(self, interval_s: float = ESCALATION_STATS_INTERVAL_S) -> None:
        """Refresh every ``interval_s`` until cancelled; Redis trouble empties the figures
        (no series rather than stale ones) and is logged."""
        await refreshed(self, self.refresh, self._forget, interval_s, "metrics.escalation_stats_failed")

    def _forget(self) -> None:
        self.pending = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pending = self.pending
        family = GaugeMetricFamily(
            "l9_escalations_pending",
            "Escalations waiting for an anchor's answer (unanswered, within their deadline).",
            labels=("policy",),
        )
        for policy, n in (pending or {}).items():
            family.add_metric((policy,), n)
        yield family


def _policy_and_deadline(raw: str | bytes) -> tuple[str | None, datetime | None]:
    """The policy and deadline of a pending row (``Pending.to_json``); (None, None) for a row
    that cannot be read (counted as pending, under ``-``)."""
    try:
        data = json.loads(raw)
        policy = data.get("policy")
        deadline = datetime.fromisoformat(data["deadline"])
    except (ValueError, TypeError, KeyError, AttributeError):
        return None, None
    if deadline.tzinfo is None:
        deadline = deadline.replace(tzinfo=UTC)
    return (policy if isinstance(policy, str) else None), deadline
