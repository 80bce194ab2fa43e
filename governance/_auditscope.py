"""Audit scope: which decisions an observing anchor with ``receives: scope`` is sent.

A schema's ``governance.auditscope`` lists, in words, what of an agent is
audited (``[code generation, governance escalations]``). The compliance anchor
of the shipped policy file observes decisions by that scope:

* every **denial** and every **escalation** reaches it, whatever the scope
  (refusals are always a compliance matter);
* an **allowed** decision reaches it when one item of the scope names the
  decision's subject by one of its *topics*:

  ==================  ===================================================================
  subject             topics
  ==================  ===================================================================
  any decision        ``decisions``, ``governance decisions``, ``allowed``
  an artifact         ``artifacts``, ``generated files``, ``code generation``, its kind
                      (``settings``, ``agent``, ``kernels`` ...), its path, its agent
  the plan            (an artifact of kind ``plan``) ``plans``, ``locked plans``
  an artifact set     ``artifacts``, ``artifact sets``, ``code generation``
  a request           ``requests``, its envelope type (``l9.sympy.simplify.v1``)
  ==================  ===================================================================

  Items and topics are compared case-insensitively with spaces collapsed and a
  plural ``s`` ignored; an item may be a glob (``*``, ``code/*/config.py``,
  ``l9.sympy.*``). An empty scope covers no allowed decision.

Whatever the scope, no decision is lost: one that no anchor observes goes to the
escalation spec's ``decisions`` stream, which the auditor records like any other.
A caller with no scope to apply (``scope=None``: a SymPy request has no schema)
sends every decision to the observers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from ._decision import Decision
from ._subjects import Artifact, ArtifactSet, Request, Subject

#: Topics of every decision.
DECISION_TOPICS = ("decisions", "governance decisions")
_SPACES = re.compile(r"\s+")
_GLOB = frozenset("*?[")


def normalize(text: str) -> str:
    """Casefolded, spaces collapsed, a final plural ``s`` dropped (``Code  Generations``)."""
    words = _SPACES.sub(" ", text.strip()).casefold()
    return words[:-1] if len(words) > 3 and words.endswith("s") and not words.endswith("ss") else words


def topics_of(subject: Subject | None) -> tuple[str, ...]:
    """What a subject is, in the words an audit scope may use (see the table above)."""
    if isinstance(subject, Artifact):
        if subject.kind == "plan":
            return ("plans", "locked plans", "plan")
        return ("artifacts", "generated files", "code generation", subject.kind, subject.path, subject.agent)
    if isinstance(subject, ArtifactSet):
        return ("artifacts", "artifact sets", "code generation")
    if isinstance(subject, Request):
        return ("requests", subject.type)
    return ()


@dataclass(frozen=True)
class AuditScope:
    """The audit scope of an agent (or the union of several), as its schema words it."""

    items: tuple[str, ...] = ()

    @classmethod
    def of(cls, *scopes: Iterable[str]) -> AuditScope:
        """The union of ``scopes``, first spelling of each item kept, in order."""
        seen: dict[str, str] = {}
        for scope in scopes:
            for item in scope:
                if item.strip():
                    seen.setdefault(normalize(item), item.strip())
        return cls(tuple(seen.values()))

    def covers(self, decision: Decision, subject: Subject | None = None) -> bool:
        """Whether an observer filtering by this scope is sent ``decision`` (on ``subject``)."""
        if not decision.allowed:
            return True
        topics = [normalize(t) for t in (*DECISION_TOPICS, "allowed", *topics_of(subject)) if t]
        return any(_matches(normalize(item), topics) for item in self.items)


def _matches(item: str, topics: list[str]) -> bool:
    if _GLOB.isdisjoint(item):
        return item in topics
    return any(fnmatchcase(topic, item) for topic in topics)


__all__ = ["DECISION_TOPICS", "AuditScope", "normalize", "topics_of"]
