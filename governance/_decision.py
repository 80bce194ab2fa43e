"""What a policy says about a subject: a ``Decision``, built from ``Finding``s.

Every finding carries the policy (``id@version``) that produced it and the
outcome that policy gives a violation. The decision on a subject is the most
severe outcome of its findings (deny > escalate > allow), names the policy
that decided, and lists every policy that was applied, so an audit record says
under which policy versions the subject was judged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

POLICY_REF = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._-]{0,63})@(?P<version>[1-9][0-9]{0,5})$")
#: How many findings a decision's ``reason`` spells out before "and N more".
REASON_FINDINGS = 3


class Outcome(StrEnum):
    ALLOW = "allow"
    ESCALATE = "escalate"
    DENY = "deny"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Outcome.ALLOW: 0, Outcome.ESCALATE: 1, Outcome.DENY: 2}


def parse_policy_ref(ref: str) -> tuple[str, int]:
    """``no-placeholders@1`` -> (``no-placeholders``, 1); ValueError for anything else."""
    match = POLICY_REF.fullmatch(ref)
    if match is None:
        raise ValueError(f"policy id {ref!r} must look like name@version (e.g. no-placeholders@1)")
    return match["name"], int(match["version"])


class Finding(BaseModel):
    """One violation: where (file, line), what, and which policy says so."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    what: str
    file: str | None = None
    line: int | None = None
    policy: str = ""
    outcome: Outcome = Outcome.DENY

    @property
    def where(self) -> str:
        if self.file is None:
            return ""
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    def __str__(self) -> str:
        where = self.where
        return f"{where}: {self.what}" if where else self.what


class Decision(BaseModel):
    """The verdict on one subject.

    ``policy`` is the policy that decided (None when allowed), ``policies`` every
    policy that was applied; ``anchors`` are who must answer an escalation;
    ``retry_after_s`` is set when a rate limit denied.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    outcome: Outcome
    subject: str
    reason: str
    policy: str | None = None
    policies: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = ()
    anchors: tuple[str, ...] = ()
    retry_after_s: float | None = None

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOW

    @property
    def denied(self) -> bool:
        return self.outcome is Outcome.DENY

    @property
    def escalated(self) -> bool:
        return self.outcome is Outcome.ESCALATE

    def by_policy(self, policy: str) -> tuple[Finding, ...]:
        """The findings one policy (``id@version``) produced."""
        return tuple(f for f in self.findings if f.policy == policy)


def decide(
    subject: str,
    policies: Sequence[str],
    findings: Sequence[Finding],
    anchors_of: dict[str, tuple[str, ...]] | None = None,
) -> Decision:
    """The decision on ``subject`` from the findings of the ``policies`` applied to it."""
    if not findings:
        return Decision(
            outcome=Outcome.ALLOW,
            subject=subject,
            reason=f"allowed: no findings ({len(policies)} applied)",
            policies=tuple(policies),
        )
    worst = max(findings, key=lambda f: f.outcome.severity)
    deciding = [f for f in findings if f.outcome is worst.outcome]
    anchors: tuple[str, ...] = ()
    if worst.outcome is Outcome.ESCALATE and anchors_of:
        anchors = _unique(a for f in deciding for a in anchors_of.get(f.policy, ()))
    return Decision(
        outcome=worst.outcome,
        subject=subject,
        reason=_reason(worst.outcome, worst.policy, deciding),
        policy=worst.policy,
        policies=tuple(policies),
        findings=tuple(findings),
        anchors=anchors,
    )


def _reason(outcome: Outcome, policy: str, deciding: Sequence[Finding]) -> str:
    verb = "denied" if outcome is Outcome.DENY else "escalated"
    shown = "; ".join(str(f) for f in deciding[:REASON_FINDINGS])
    more = len(deciding) - REASON_FINDINGS
    others = _unique(f.policy for f in deciding if f.policy != policy)
    also = f" (also {', '.join(others)})" if others else ""
    return f"{verb} by {policy}{also}: {shown}" + (f"; and {more} more" if more > 0 else "")


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))
