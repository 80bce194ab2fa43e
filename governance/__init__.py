"""Governance: policies and decisions, rate limits, agent identity and Redis ACLs.

The policy engine is a pure function (``PolicyEngine.evaluate``) shared by the
enforcer agent and the SymPy worker; decisions and escalations travel on the bus
(``Escalations``), to observing anchors filtered by audit scope (``AuditScope``);
rate limits are atomic in Redis (``RateLimiter``), applied where their types are
consumed (``RateLimitGate``, a consumer middleware); ``SignerACL`` decides which
signing key may emit which envelope types. Its Prometheus metrics (decisions by outcome
and policy, escalations pending) are in ``governance.metrics``. ``governance`` never imports
``agents`` nor the ``l9`` CLI.
"""

from . import _calls, _limits, _placeholders, _secrets  # noqa: F401 -- registers the built-in rules
from ._auditscope import AuditScope, topics_of
from ._config import (
    DEFAULT_POLICY_FILE,
    AnchorSpec,
    EscalationSpec,
    IdentitySpec,
    MatchSpec,
    PolicyFile,
    PolicyFileError,
    PolicySpec,
    RateLimitSpec,
    RedisUserSpec,
    load_policy_file,
    parse_policy_text,
)
from ._decision import Decision, Finding, Outcome, decide, parse_policy_ref
from ._engine import STRICT_RULE, Policy, PolicyEngine
from ._escalation import (
    DEADLINE,
    AlreadyResolved,
    DecisionMade,
    EscalationError,
    EscalationRequested,
    EscalationResolved,
    Escalations,
    NotAnAnchor,
    Pending,
    Raised,
    cli_source,
)
from ._gate import RATE_LIMITED, RateLimitGate
from ._identity import (
    SignerACL,
    acl_rules,
    fill_passwords,
    load_signer_acl,
    password_hash,
    redis_user_name,
    render_acl,
)
from ._ratelimit import RateLimited, RateLimiter
from ._rules import RULES, Params, Rule, glob_regex, rule
from ._subjects import Artifact, ArtifactSet, Request, Subject, agent_of

__all__ = [
    "DEADLINE",
    "DEFAULT_POLICY_FILE",
    "RATE_LIMITED",
    "RULES",
    "STRICT_RULE",
    "AlreadyResolved",
    "AnchorSpec",
    "Artifact",
    "ArtifactSet",
    "AuditScope",
    "Decision",
    "DecisionMade",
    "EscalationError",
    "EscalationRequested",
    "EscalationResolved",
    "EscalationSpec",
    "Escalations",
    "Finding",
    "IdentitySpec",
    "MatchSpec",
    "NotAnAnchor",
    "Outcome",
    "Params",
    "Pending",
    "Policy",
    "PolicyEngine",
    "PolicyFile",
    "PolicyFileError",
    "PolicySpec",
    "Raised",
    "RateLimitGate",
    "RateLimitSpec",
    "RateLimited",
    "RateLimiter",
    "RedisUserSpec",
    "Request",
    "Rule",
    "SignerACL",
    "Subject",
    "acl_rules",
    "agent_of",
    "cli_source",
    "decide",
    "fill_passwords",
    "glob_regex",
    "load_policy_file",
    "load_signer_acl",
    "parse_policy_ref",
    "parse_policy_text",
    "password_hash",
    "redis_user_name",
    "render_acl",
    "rule",
    "topics_of",
]
