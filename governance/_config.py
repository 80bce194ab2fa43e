"""The policy file: policies, anchors, rate limits and identities, in YAML.

Validated once, at load; a mistake is reported as ``FILE:LINE: field: what is
wrong`` (the line found by walking the YAML node tree along the error's path).
The default file ships in this package (``default_policy.yaml``); deployments
point ``L9_POLICY_FILE`` at their own.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bus import check_stream_name

from ._decision import parse_policy_ref
from ._rules import RULES, build_rule

DEFAULT_POLICY_FILE = Path(str(resources.files("governance").joinpath("default_policy.yaml")))
ANCHOR_NAME = r"^[A-Za-z][A-Za-z0-9 _.-]{0,63}$"


class PolicyFileError(ValueError):
    """The policy file cannot be used; the message names the file, line and field."""


class _Located(ValueError):
    """A cross-field error that knows where in the file it is (``loc`` below the model)."""

    def __init__(self, loc: tuple[int | str, ...], message: str) -> None:
        self.loc = loc
        super().__init__(message)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MatchSpec(_Model):
    """What a policy applies to: envelope types, artifact kinds, artifact paths (globs).

    Types make it apply to requests, kinds/paths to artifacts; nothing given: to all.
    ``except_types`` carves types out (``l9.sympy.*`` but not ``l9.sympy.*_result.*``).
    """

    types: tuple[str, ...] = ()
    except_types: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()


class PolicySpec(_Model):
    id: str
    rule: str
    description: str = ""
    match: MatchSpec = MatchSpec()
    on_violation: Literal["deny", "escalate"] = "deny"
    anchors: tuple[str, ...] = ()
    enabled: bool = True
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _ref(cls, value: str) -> str:
        parse_policy_ref(value)
        return value

    @model_validator(mode="after")
    def _rule_and_params(self) -> PolicySpec:
        spec = RULES.get(self.rule)
        if spec is None:
            raise ValueError(f"unknown rule {self.rule!r} (known: {', '.join(sorted(RULES))})")
        try:
            spec.params.model_validate(self.params)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"params.{where}: {err['msg']}") from None
        try:  # a rule may refuse valid-looking params (a bad regular expression): say so here
            build_rule(self.rule, self.params)
        except ValueError as exc:
            raise _Located(("params",), str(exc)) from None
        if self.on_violation == "escalate" and not self.anchors:
            raise ValueError("a policy that escalates must name its anchors")
        return self


class AnchorSpec(_Model):
    """Who answers escalations: a person or a body, reached on ``channel`` (a stream).

    ``receives: all`` makes it an observer of every decision; ``receives: scope`` of every
    denial and escalation, and of the allowed decisions within the subject's audit scope
    (the compliance anchor; see :mod:`governance._auditscope`).
    """

    name: str = Field(pattern=ANCHOR_NAME)
    channel: str = "governance.escalations"
    receives: Literal["escalations", "all", "scope"] = "escalations"
    contact: str | None = None

    @field_validator("channel")
    @classmethod
    def _stream(cls, value: str) -> str:
        return check_stream_name(value)


class EscalationSpec(_Model):
    #: Where escalations are published (and each escalating anchor's channel besides).
    stream: str = "governance.escalations"
    #: Where approvals and denials are published, pointing at their escalation.
    resolutions: str = "governance.resolutions"
    #: Where decisions go that no anchor observes (``receives: all`` or ``scope``).
    decisions: str = "governance.decisions"
    #: No answer by then means deny.
    deadline_s: float = Field(default=3600.0, gt=0)
    #: Coalesced escalations (refused SymPy requests): one pending per origin and policy, and at
    #: most ``source_limit`` opened by one origin per ``source_window_s``; beyond, a denial.
    source_limit: int = Field(default=10, ge=1, le=1_000_000)
    source_window_s: float = Field(default=3600.0, gt=0, le=7 * 86400)

    @field_validator("stream", "resolutions", "decisions")
    @classmethod
    def _stream(cls, value: str) -> str:
        return check_stream_name(value)


class RateLimitSpec(_Model):
    """At most ``limit`` requests of ``types`` per ``window_s`` seconds, per requester or per agent."""

    id: str
    types: tuple[str, ...] = Field(min_length=1)
    per: Literal["requester", "agent"] = "requester"
    limit: int = Field(ge=1, le=1_000_000)
    window_s: float = Field(gt=0, le=7 * 86400)

    @field_validator("id")
    @classmethod
    def _ref(cls, value: str) -> str:
        parse_policy_ref(value)
        return value


class RedisUserSpec(_Model):
    """What one agent's Redis user may touch (``l9 acl render``)."""

    consumes: tuple[str, ...] = ()
    produces: tuple[str, ...] = ()
    #: More key patterns under the namespace (``demo:*``), for the agent's own data;
    #: ``streams`` is the streams index, ``{ratelimit}:*`` the rate-limit keys,
    #: ``{<stream>}:*`` the keys beside stream ``<stream>`` in its slot
    #: (``bus.Keys.family_pattern``).
    keys: tuple[str, ...] = ()
    #: May answer RPC requests (write to ``rpc.*`` reply streams).
    replies: bool = False
    #: May make RPC calls (own, read and delete an ``rpc.*`` reply stream).
    calls: bool = False

    @field_validator("consumes", "produces")
    @classmethod
    def _streams(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(s if s == "*" else check_stream_name(s) for s in value)


class IdentitySpec(_Model):
    #: Agent (or one key id) -> envelope types (globs) its keys may emit. Empty: the check is off.
    signers: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    #: HMAC key ids every process of a development setup shares: they may emit any type.
    shared_keys: tuple[str, ...] = ()
    #: Agent name -> its Redis user's rights.
    redis_users: dict[str, RedisUserSpec] = Field(default_factory=dict)


class PolicyFile(_Model):
    version: Literal[1] = 1
    anchors: tuple[AnchorSpec, ...] = ()
    escalation: EscalationSpec = EscalationSpec()
    policies: tuple[PolicySpec, ...] = ()
    rate_limits: tuple[RateLimitSpec, ...] = ()
    identity: IdentitySpec = IdentitySpec()

    @model_validator(mode="after")
    def _consistent(self) -> PolicyFile:
        seen: set[str] = set()
        ids = [("policies", i, p.id) for i, p in enumerate(self.policies)]
        ids += [("rate_limits", i, r.id) for i, r in enumerate(self.rate_limits)]
        for section, i, ref in ids:
            if ref in seen:
                raise _Located((section, i, "id"), f"policy ids must be unique: {ref} is declared twice")
            seen.add(ref)
        names = {a.name for a in self.anchors}
        for i, policy in enumerate(self.policies):
            unknown = [a for a in policy.anchors if a not in names]
            if unknown:
                raise _Located(
                    ("policies", i, "anchors"),
                    f"policy {policy.id} names unknown anchors {unknown} (declared: {sorted(names)})",
                )
        return self


def load_policy_file(path: Path | None = None) -> PolicyFile:
    """The validated policy file at ``path`` (default: the one shipped with L9)."""
    path = path or DEFAULT_POLICY_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyFileError(f"{path}: cannot read the policy file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise PolicyFileError(
            f"{path}: the policy file is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    return parse_policy_text(text, str(path))


def parse_policy_text(text: str, origin: str = "<policy>") -> PolicyFile:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise PolicyFileError(f"{origin}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PolicyFileError(f"{origin}:1: the policy file must be a mapping, not a {type(raw).__name__}")
    try:
        return PolicyFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, _Located):
            loc += cause.loc
        field = ".".join(str(p) for p in loc) or "<top>"
        msg = str(err["msg"]).removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise PolicyFileError(f"{origin}:{line_of(text, loc)}: {field}: {msg}{more}") from None


def line_of(text: str, loc: list[int | str]) -> int:
    """1-based line of the YAML node at ``loc`` (the deepest node that exists)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return 1
    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        child = _child(node, part)
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return line


def _child(node: yaml.Node | None, part: int | str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return value  # type: ignore[no-any-return]
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part]  # type: ignore[no-any-return]
    return None
