"""The policy file, the engine (matching, precedence, escalation anchors) and the signer table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from envelope import EnvelopeError, ErrorReason, PacketEnvelope
from governance import (
    DEFAULT_POLICY_FILE,
    Artifact,
    ArtifactSet,
    Decision,
    Outcome,
    PolicyEngine,
    PolicyFileError,
    Request,
    SignerACL,
    load_policy_file,
    parse_policy_ref,
    parse_policy_text,
)

POLICY = """
anchors:
  - {name: Igor, channel: governance.escalations}
  - {name: Compliance, channel: governance.compliance, receives: all}
policies:
  - id: forbidden-calls@2
    rule: forbidden_calls
    match: {kinds: [python]}
  - id: generated-only@1
    rule: placeholders
    match: {paths: ["gen/*"]}
    on_violation: escalate
    anchors: [Igor]
  - id: size@1
    rule: size_bounds
    params: {max_file_bytes: 64}
    on_violation: escalate
    anchors: [Compliance, Igor]
  - id: sympy-length@3
    rule: expression_length
    match: {types: ["l9.sympy.*"]}
    params: {max_chars: 10}
    on_violation: escalate
    anchors: [Igor]
  - id: off@1
    rule: secrets
    enabled: false
identity:
  signers:
    planner: ["l9.plan.*"]
    generator: ["l9.artifact.*", "l9.sympy.*.v1"]
"""


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(parse_policy_text(POLICY))


def test_the_shipped_policy_file_loads() -> None:
    spec = load_policy_file()
    assert DEFAULT_POLICY_FILE.name == "default_policy.yaml"
    assert {a.name for a in spec.anchors} == {"Igor", "Compliance"}
    refs = [p.id for p in spec.policies]
    assert "no-placeholders@1" in refs and "forbidden-calls@1" in refs
    acl = PolicyEngine(spec).signer_acl
    assert acl is not None  # every built-in agent's emits are named
    assert set(acl.table) >= {"planner", "generator", "enforcer", "validator", "auditor", "sympy", "cli"}
    assert acl.allows("generator.k1", "l9.sympy.diff.v1")
    assert not acl.allows("generator.k1", "l9.sympy.expression_result.v1")  # only the worker answers
    assert not acl.allows("cli.k1", "l9.governance.resolution.v1")  # approvals are the anchors'
    assert acl.allows("Igor.k1", "l9.governance.resolution.v1")
    assert acl.shared_keys == {"dev"}


def test_policy_refs() -> None:
    assert parse_policy_ref("no-placeholders@12") == ("no-placeholders", 12)
    for bad in ("no-placeholders", "x@0", "Upper@1", "a@b"):
        with pytest.raises(ValueError, match="name@version"):
            parse_policy_ref(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("policies:\n  - id: a@1\n    rule: nosuch\n", r"<policy>:2: policies\.0: unknown rule 'nosuch'"),
        (
            "policies:\n  - id: a@1\n    rule: size_bounds\n    params:\n      max_bytes: 3\n",
            r":2: policies\.0: params\.max_bytes: Extra inputs are not permitted",
        ),
        ("policies:\n  - id: a\n    rule: secrets\n", r":2: policies\.0\.id: .*name@version"),
        (
            "policies:\n  - {id: a@1, rule: secrets}\n  - {id: a@1, rule: secrets}\n",
            r"<policy>:3: policies\.1\.id: policy ids must be unique: a@1 is declared twice",
        ),
        ("policies:\n  - {id: a@1, rule: secrets, on_violation: escalate}\n", "must name its anchors"),
        (
            "policies:\n  - {id: a@1, rule: secrets, on_violation: escalate, anchors: [Nobody]}\n",
            "unknown anchors",
        ),
        ("anchors:\n  - {name: Igor, channel: 'Bad Stream!'}\n", r":2: anchors\.0\.channel: .*stream name"),
        ("policies: [\n", r"<policy>:2: not valid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
        ("rate_limits:\n  - {id: r@1, types: [x], limit: 0, window_s: 1}\n", r":2: rate_limits\.0\.limit"),
    ],
)
def test_policy_file_errors_name_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(PolicyFileError, match=expected):
        parse_policy_text(text)


def test_missing_policy_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match="cannot read the policy file"):
        load_policy_file(tmp_path / "nope.yaml")


def test_disabled_policies_are_not_applied(engine: PolicyEngine) -> None:
    assert "off@1" not in [p.ref for p in engine.policies]
    assert engine.evaluate(Artifact("lib/x.py", "password = 'hQ8x!Zr2pL0qVv9T'\n")).allowed


def test_policies_match_by_kind_path_and_type(engine: PolicyEngine) -> None:
    assert engine.evaluate(Artifact("lib/x.py", "x = 1\n")).policies == ("forbidden-calls@2", "size@1")
    assert engine.evaluate(Artifact("gen/x.md", "ok\n")).policies == ("generated-only@1", "size@1")
    assert engine.evaluate(Request(type="l9.sympy.evaluate.v1")).policies == ("size@1", "sympy-length@3")
    assert engine.evaluate(Request(type="l9.plan.locked.v1")).policies == ("size@1",)


def test_deny_wins_over_escalate_and_names_its_policy(engine: PolicyEngine) -> None:
    source = "eval(x)  # TODO\n" + "y = 1\n" * 20
    d = engine.evaluate(Artifact("gen/x.py", source))
    assert d.outcome is Outcome.DENY and d.policy == "forbidden-calls@2"
    assert d.reason.startswith("denied by forbidden-calls@2: gen/x.py:1: forbidden builtins.eval")
    assert {f.policy for f in d.findings} == {"forbidden-calls@2", "generated-only@1", "size@1"}
    assert [f.outcome for f in d.by_policy("size@1")] == [Outcome.ESCALATE]
    assert d.anchors == ()  # a denial is final: nobody is asked


def test_escalation_names_the_anchors_of_every_escalating_policy(engine: PolicyEngine) -> None:
    d = engine.evaluate(Artifact("gen/x.py", "x = 1  # TODO\n" + "y = 1\n" * 20))
    assert d.escalated
    assert d.anchors == ("Igor", "Compliance")
    assert "escalated by generated-only@1 (also size@1)" in d.reason


def test_observers_are_the_anchors_that_receive_everything(engine: PolicyEngine) -> None:
    assert [a.name for a in engine.observers] == ["Compliance"]


def test_artifact_sets_collect_findings_of_every_file(engine: PolicyEngine) -> None:
    files = ArtifactSet([Artifact("lib/a.py", "eval(x)\n"), Artifact("lib/b.py", "exec(y)\n")], "run-1")
    d = engine.evaluate(files)
    assert d.denied and d.subject == "run-1 (2 files)"
    assert sorted(f.file or "" for f in d.findings) == ["lib/a.py", "lib/b.py"]


def test_reason_summarises_many_findings() -> None:
    engine = PolicyEngine(parse_policy_text("policies:\n  - {id: f@1, rule: forbidden_calls}\n"))
    d = engine.evaluate(Artifact("a.py", "eval(a)\neval(b)\neval(c)\neval(d)\neval(e)\n"))
    assert d.reason.endswith("; and 2 more")
    assert len(d.findings) == 5


def test_decisions_round_trip_as_json(engine: PolicyEngine) -> None:
    d = engine.evaluate(Artifact("gen/x.py", "x = 1  # TODO\n"))
    assert Decision.model_validate_json(d.model_dump_json()) == d


def test_evaluate_refuses_other_subjects(engine: PolicyEngine) -> None:
    with pytest.raises(TypeError, match="cannot evaluate a str"):
        engine.evaluate("gen/x.py")  # type: ignore[arg-type]


def test_requests_from_envelopes_carry_requester_and_agent() -> None:
    env = PacketEnvelope.new(type="l9.sympy.evaluate.v1", source="agent://planner/planner-0", auth="alice")
    req = Request.from_envelope(env)
    assert (req.requester, req.agent, req.envelope_id) == ("alice", "planner", env.id)
    anonymous = Request.from_envelope(PacketEnvelope.new(type="l9.sympy.evaluate.v1", source="agent://cli/x"))
    assert anonymous.requester == "agent://cli/x"


# -- the signer table ------------------------------------------------------------------------
def test_signer_table_comes_from_the_policy_file(engine: PolicyEngine) -> None:
    acl = engine.signer_acl
    assert acl is not None
    assert acl.allows("planner", "l9.plan.locked.v1")
    assert not acl.allows("planner", "l9.artifact.generated.v1")
    assert acl.allows("generator", "l9.sympy.evaluate.v1")
    assert not acl.allows("generator", "l9.sympy.evaluate.v2")
    assert not acl.allows("stranger", "l9.plan.locked.v1")
    assert not acl.allows(None, "l9.plan.locked.v1")


def _env(type_: str, key_id: str | None) -> PacketEnvelope:
    return PacketEnvelope.new(type=type_, source="agent://x/x-0", key_id=key_id, signature="00")


@pytest.mark.parametrize(
    ("key_id", "type_", "detail"),
    [
        (
            "planner",
            "l9.artifact.generated.v1",
            "signing key 'planner' may not emit 'l9.artifact.generated.v1'",
        ),
        (
            "stranger",
            "l9.plan.locked.v1",
            "signing key 'stranger' (agent 'stranger') has no entry in the identity table",
        ),
        (None, "l9.plan.locked.v1", "unsigned envelope"),
    ],
)
def test_authorize_raises_unauthorized_signer(key_id: str | None, type_: str, detail: str) -> None:
    acl = SignerACL({"planner": ["l9.plan.*"]})
    envelope = _env(type_, key_id)
    with pytest.raises(EnvelopeError) as err:
        acl.authorize(envelope)
    assert err.value.reason is ErrorReason.UNAUTHORIZED_SIGNER
    assert detail in err.value.detail
    assert err.value.envelope_id == envelope.id


def test_authorize_answers_from_the_cache_after_the_first_envelope() -> None:
    acl = SignerACL({"planner": ["l9.plan.*"]})
    acl.authorize(_env("l9.plan.locked.v1", "planner"))
    acl._may_emit.clear()  # the globs are not consulted again for a known (key, type) pair
    acl.authorize(_env("l9.plan.locked.v1", "planner"))
    with pytest.raises(EnvelopeError):
        acl.authorize(_env("l9.plan.rejected.v1", "planner"))


# -- the command line ------------------------------------------------------------------------
def _l9(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "L9_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "l9", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_governance_check_names_file_and_line_of_a_bad_policy(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("anchors:\n  - {name: Igor}\npolicies:\n  - {id: x@1, rule: secrets, anchors: [Nobody]}\n")
    result = _l9("governance", "check", str(bad), home=tmp_path)
    assert result.returncode == 2
    assert f"{bad}:4: policies.0.anchors: policy x@1 names unknown anchors" in result.stderr.replace("\n", "")
    good = _l9("governance", "check", str(DEFAULT_POLICY_FILE), home=tmp_path)
    assert good.returncode == 0, good.stderr
    assert "policy forbidden-calls@1: forbidden_calls, deny" in good.stdout
    assert "signer table: 10 agents (planner, generator, " in good.stdout
    assert "shared HMAC keys: dev" in good.stdout


def test_acl_rules_give_each_agent_its_own_streams_only() -> None:
    from bus import Keys
    from governance import RedisUserSpec, acl_rules, password_hash

    spec = RedisUserSpec(consumes=("demo.tasks",), produces=("demo.results",), keys=("demo:*",))
    rules = acl_rules("squarer", spec, Keys("l9"), "pw")
    assert rules[:4] == ["reset", "on", password_hash("pw"), "-@all"]
    tasks, results = Keys("l9").stream("demo.tasks"), Keys("l9").stream("demo.results")
    assert f"~{tasks}" in rules and f"~{tasks}:dead" in rules and f"%W~{results}" in rules
    assert f"~{results}" not in rules  # write-only: it cannot read what it produces
    assert "%W~l9:{l9.p*}:streams" in rules  # its streams' index entries, in their partitions
    assert "+cluster|slots" in rules and "+asking" in rules  # it can follow a Redis Cluster
    assert "~l9:hb:squarer-*" in rules
    assert not any(r.startswith(("+@all", "~*", "allkeys", "+flushall", "+keys")) for r in rules)
    assert rules[-1].startswith("(~l9:demo:* +@hash") and rules[-1].endswith("-@dangerous)")


def test_except_types_carve_out_of_a_type_glob() -> None:
    engine = PolicyEngine.load()
    assert engine.evaluate(Request(type="l9.sympy.simplify.v1", data={"expr": "x" * 3000})).escalated
    result = engine.evaluate(Request(type="l9.sympy.expression_result.v1", data={"expr": "x" * 3000}))
    assert result.allowed and result.policies == ()


def test_a_shared_hmac_key_may_emit_anything_but_an_ed25519_signature_is_judged() -> None:
    acl = SignerACL({"planner": ["l9.plan.*"]}, shared_keys=["dev"])
    hmac_signed = PacketEnvelope.new(
        type="l9.x.y.v1", source="agent://x/x-0", key_id="dev", signature="ab" * 32
    )
    acl.authorize(hmac_signed)  # a development keyring: membership only, no identity to check
    ed_signed = hmac_signed.model_copy(update={"signature": "ed25519:" + "ab" * 64})
    with pytest.raises(EnvelopeError, match=r"'dev' .* has no entry"):
        acl.authorize(ed_signed)
    with pytest.raises(EnvelopeError, match="unsigned envelope"):
        acl.authorize(hmac_signed.model_copy(update={"key_id": None, "signature": None}))


def test_keys_belong_to_the_agent_their_id_names_and_bang_globs_take_types_out() -> None:
    acl = SignerACL(
        {"generator": ["l9.sympy.*", "!l9.sympy.*_result.*"], "sympy.k7": ["l9.sympy.*_result.*"]}
    )
    assert acl.allows("generator.k20261207", "l9.sympy.diff.v1")
    assert not acl.allows("generator.k20261207", "l9.sympy.diff_result.v1")
    assert acl.allows("sympy.k7", "l9.sympy.diff_result.v1")  # an entry naming one key exactly
    assert not acl.allows("sympy.k8", "l9.sympy.diff_result.v1")
    assert acl.types_of("generator.k1") == ("l9.sympy.*", "!l9.sympy.*_result.*")


def test_a_requests_agent_is_its_ed25519_signer_not_the_source_it_claims() -> None:
    claimed = PacketEnvelope.new(type="l9.sympy.diff.v1", source="agent://planner/p-0", data={})
    assert Request.from_envelope(claimed).agent == "planner"
    signed = claimed.model_copy(update={"key_id": "generator.k1", "signature": "ed25519:" + "A" * 88})
    assert Request.from_envelope(signed).agent == "generator"  # whose budget a limit per agent spends
    shared = claimed.model_copy(update={"key_id": "dev", "signature": "ab" * 32})
    assert Request.from_envelope(shared).agent == "planner"  # HMAC: no identity beyond the source
