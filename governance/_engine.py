"""The policy engine: one pure function from a subject to a ``Decision``.

    engine = PolicyEngine.load(settings.policy_file, strict_mode=settings.strict_mode)
    decision = engine.evaluate(Artifact("pkg/config.py", source, agent="generator"))
    decision = engine.evaluate(Request.from_envelope(envelope))

The enforcer agent judges plans and artifacts with it, the SymPy worker its
requests; neither needs Redis for it. Rate limits (shared state) are the
separate ``RateLimiter``; signer rights are ``SignerACL`` (``engine.signer_acl``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from ._config import AnchorSpec, EscalationSpec, PolicyFile, PolicySpec, RateLimitSpec, load_policy_file
from ._decision import Decision, Finding, Outcome, decide
from ._identity import SignerACL
from ._rules import Rule, build_rule, glob_regex
from ._subjects import Artifact, ArtifactSet, Request, Subject

#: The rule that strict mode switches: off, its policies are not applied.
STRICT_RULE = "placeholders"
_TYPE_CACHE_MAX = 4096
log = structlog.get_logger("l9.governance")


@dataclass(frozen=True)
class Policy:
    """A policy ready to apply: its rule built, its globs compiled."""

    ref: str
    rule_name: str
    rule: Rule
    outcome: Outcome
    anchors: tuple[str, ...]
    types: re.Pattern[str] | None
    except_types: re.Pattern[str]
    kinds: re.Pattern[str] | None
    paths: re.Pattern[str] | None

    @classmethod
    def build(cls, spec: PolicySpec) -> Policy:
        m = spec.match
        everything = not (m.types or m.except_types or m.kinds or m.paths)
        return cls(
            ref=spec.id,
            rule_name=spec.rule,
            rule=build_rule(spec.rule, spec.params),
            outcome=Outcome(spec.on_violation),
            anchors=spec.anchors,
            types=glob_regex(m.types or ["*"]) if m.types or everything else None,
            except_types=glob_regex(m.except_types),
            kinds=glob_regex(m.kinds or ["*"]) if m.kinds or m.paths or everything else None,
            paths=glob_regex(m.paths) if m.paths else None,
        )

    def applies_to_artifact(self, artifact: Artifact) -> bool:
        if self.kinds is None or not self.kinds.fullmatch(artifact.kind):
            return False
        return self.paths is None or self.paths.fullmatch(artifact.path) is not None

    def applies_to_type(self, type_: str) -> bool:
        if self.types is None or self.types.fullmatch(type_) is None:
            return False
        return self.except_types.fullmatch(type_) is None

    def stamp(self, findings: Iterable[Finding]) -> list[Finding]:
        return [f.model_copy(update={"policy": self.ref, "outcome": self.outcome}) for f in findings]


class PolicyEngine:
    def __init__(self, spec: PolicyFile, *, strict_mode: bool = True, origin: str = "<policy>") -> None:
        self.spec, self.strict_mode, self.origin = spec, strict_mode, origin
        enabled = [p for p in spec.policies if p.enabled and (strict_mode or p.rule != STRICT_RULE)]
        self.policies: tuple[Policy, ...] = tuple(Policy.build(p) for p in enabled)
        self._anchors_of = {p.ref: p.anchors for p in self.policies}
        self._by_type: dict[str, tuple[Policy, ...]] = {}
        identity = spec.identity
        self.signer_acl = SignerACL(identity.signers, identity.shared_keys) if identity.signers else None

    @classmethod
    def load(cls, path: Path | None = None, *, strict_mode: bool = True) -> PolicyEngine:
        """The engine of the policy file at ``path`` (default: the shipped one).

        PolicyFileError (file, line, field) when the file cannot be used."""
        spec = load_policy_file(path)
        engine = cls(spec, strict_mode=strict_mode, origin=str(path or "default"))
        log.info(
            "governance.policies_loaded",
            file=engine.origin,
            policies=[p.ref for p in engine.policies],
            strict_mode=strict_mode,
            signer_acl=engine.signer_acl is not None,
        )
        return engine

    # -- what the file declares ------------------------------------------------------------
    @property
    def anchors(self) -> tuple[AnchorSpec, ...]:
        return self.spec.anchors

    @property
    def observers(self) -> tuple[AnchorSpec, ...]:
        """Anchors that observe decisions: every one (``receives: all``) or those within the
        subject's audit scope plus every denial and escalation (``receives: scope``)."""
        return tuple(a for a in self.spec.anchors if a.receives in ("all", "scope"))

    @property
    def escalation(self) -> EscalationSpec:
        return self.spec.escalation

    @property
    def rate_limits(self) -> tuple[RateLimitSpec, ...]:
        return self.spec.rate_limits

    def policy(self, ref: str) -> Policy:
        for p in self.policies:
            if p.ref == ref:
                return p
        raise KeyError(f"no enabled policy {ref!r} (enabled: {', '.join(p.ref for p in self.policies)})")

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, subject: Subject) -> Decision:
        """The decision on an artifact, a set of artifacts or a request."""
        if isinstance(subject, Artifact):
            return self._decide(subject.describe(), *self._artifact(subject))
        if isinstance(subject, ArtifactSet):
            return self._decide(subject.describe(), *self._artifact_set(subject))
        if isinstance(subject, Request):
            return self._decide(subject.describe(), *self._request(subject))
        raise TypeError(
            f"cannot evaluate a {type(subject).__name__}: expected Artifact, ArtifactSet or Request"
        )

    def _decide(self, subject: str, applied: Sequence[str], findings: Sequence[Finding]) -> Decision:
        return decide(subject, applied, findings, self._anchors_of)

    def _artifact(self, artifact: Artifact) -> tuple[list[str], list[Finding]]:
        applied, findings = [], []
        for policy in self.policies:
            if policy.applies_to_artifact(artifact):
                applied.append(policy.ref)
                findings.extend(policy.stamp(policy.rule.artifact(artifact)))
        return applied, findings

    def _artifact_set(self, artifacts: ArtifactSet) -> tuple[list[str], list[Finding]]:
        applied: dict[str, None] = {}
        findings: list[Finding] = []
        for policy in self.policies:
            matching = [a for a in artifacts if policy.applies_to_artifact(a)]
            if not matching:
                continue
            applied[policy.ref] = None
            for artifact in matching:
                findings.extend(policy.stamp(policy.rule.artifact(artifact)))
            findings.extend(policy.stamp(policy.rule.artifact_set(ArtifactSet(matching, artifacts.label))))
        return list(applied), findings

    def _request(self, request: Request) -> tuple[list[str], list[Finding]]:
        policies = self._for_type(request.type)
        findings: list[Finding] = []
        for policy in policies:
            findings.extend(policy.stamp(policy.rule.request(request)))
        return [p.ref for p in policies], findings

    def _for_type(self, type_: str) -> tuple[Policy, ...]:
        found = self._by_type.get(type_)
        if found is None:
            if len(self._by_type) >= _TYPE_CACHE_MAX:
                self._by_type.clear()
            found = self._by_type[type_] = tuple(p for p in self.policies if p.applies_to_type(type_))
        return found
