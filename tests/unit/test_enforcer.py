"""The enforcer's judgement of an extraction folder, without a bus: what is allowed, what is
denied (policy id@version, path, line), integrity against the generator's envelope, what escalates.

``write_folder`` builds an extraction folder as the contract describes it (planned files and
``extraction_manifest.json``); the integration tests use it too."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from agents.extraction import (
    MANIFEST,
    EnforcementCompleted,
    GeneratedFile,
    GenerationCompleted,
    LockedPlan,
    RunCompleted,
    load_collection,
    load_file,
    lock,
)
from agents.extraction.enforcer import (
    INTEGRITY_POLICY,
    PLAN_PATH,
    SET_PATH,
    Verdict,
    outcome_payloads,
    verdict_of,
)
from governance import EscalationResolved, PolicyEngine, parse_policy_text

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PLAN = lock(load_file(EXAMPLES / "symbolic_computation_service.yaml"))
AGENT = "code/L9/core/symbolic_computation/agent.py"
CONFIG = "code/L9/core/symbolic_computation/config.py"
README = "docs/symbolic_computation/README.md"
ENGINE = PolicyEngine.load()


def clean_text(path: str) -> str:
    """Finished content for a planned file: a small module, a short doc, an empty manifest."""
    if path.endswith(".py"):
        return f'"""The module at {path}."""\n\n\ndef answer() -> int:\n    return 42\n'
    if path.endswith(".json"):
        return "{}\n"
    return f"# {Path(path).stem}\n\nWhat this part does.\n"


def clean_contents(plan: LockedPlan) -> dict[str, str]:
    return {i.path: clean_text(i.path) for i in plan.items if i.category != "link"}


def write_folder(
    folder: Path, plan: LockedPlan, contents: Mapping[str, str], *, run: str = "run-1"
) -> GenerationCompleted:
    """Write ``contents`` (path -> text) and the extraction manifest; the generator's envelope payload."""
    agents = {i.path: (i.agent, i.kind) for i in plan.items}
    files = []
    for path, text in sorted(contents.items()):
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        agent, kind = agents.get(path, ("unknown", "file"))
        data = text.encode()
        files.append(
            GeneratedFile(
                path=path,
                agent=agent,
                kind=kind,
                size=len(data),
                lines=text.count("\n"),
                sha256=hashlib.sha256(data).hexdigest(),
            )
        )
    manifest = {
        "format": "l9.extraction/1",
        "collection": plan.collection,
        "run": run,
        "plan_hash": plan.hash,
        "generated_at": "2026-11-21T09:30:00Z",
        "plan": plan.model_dump(mode="json"),
        "files": [f.model_dump(mode="json") for f in files],
    }
    text = json.dumps(manifest, sort_keys=True, indent=2) + "\n"
    (folder / MANIFEST).write_text(text)
    return GenerationCompleted(
        outcome=f"generated: {len(files)} files",
        collection=plan.collection,
        plan_hash=plan.hash,
        folder=str(folder),
        files=tuple(files),
        manifest_sha256=hashlib.sha256(text.encode()).hexdigest(),
    )


def judged(tmp_path: Path, engine: PolicyEngine = ENGINE, **changes: str) -> Verdict:
    """The verdict on a clean folder with ``changes`` (path with '/' as '__' -> text)."""
    contents = clean_contents(PLAN)
    contents.update({k.replace("__", "/"): v for k, v in changes.items()})
    return verdict_of(engine, write_folder(tmp_path, PLAN, contents))


def test_a_clean_folder_is_allowed_with_one_decision_per_artifact_plus_plan_and_set(tmp_path: Path) -> None:
    generated = write_folder(tmp_path, PLAN, clean_contents(PLAN))
    verdict = verdict_of(ENGINE, generated)
    paths = [j.path for j in verdict.judged]
    assert paths == [PLAN_PATH, *sorted(f.path for f in generated.files), SET_PATH]
    assert all(j.decision.allowed for j in verdict.judged), [j.decision.reason for j in verdict.judged]
    assert "no-placeholders@1" in verdict.judged[1].decision.policies  # strict mode applied them
    assert verdict.denials() == [] and verdict.to_escalate() == []
    (completed,) = outcome_payloads(generated, verdict, {})
    assert isinstance(completed, EnforcementCompleted)
    assert completed.allowed and completed.decisions == len(generated.files) + 2
    assert (completed.plan_hash, completed.folder) == (PLAN.hash, str(tmp_path))
    # every artifact is routed by its agent's audit scope, the plan and set by everyone's
    assert verdict.judged[1].scope.items == (
        "expression evaluations",
        "code generation",
        "governance escalations",
    )


TODO_CONFIG = '"""Settings."""\n\nLIMIT = 3\n# TODO: read it from the environment\n'
EVAL_AGENT = (
    '"""Agent."""\n\n\ndef run(text: str) -> object:\n    return getattr(__builtins__, "ev" + "al")(text)\n'
)
KEY_README = "# Readme\n\nKeys:\n\n-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n"


@pytest.mark.parametrize(
    ("path", "text", "policy", "line", "what"),
    [
        (CONFIG, TODO_CONFIG, "no-placeholders@1", 4, "placeholder marker 'TODO' in a comment"),
        (AGENT, EVAL_AGENT, "forbidden-calls@1", 5, "forbidden builtins.eval"),
        (README, KEY_README, "no-secrets@1", 5, "PEM private key"),
    ],
)
def test_a_finding_is_denied_naming_policy_path_and_line(
    tmp_path: Path, path: str, text: str, policy: str, line: int, what: str
) -> None:
    contents = {**clean_contents(PLAN), path: text}
    generated = write_folder(tmp_path, PLAN, contents)
    verdict = verdict_of(ENGINE, generated)
    (decision,) = [j.decision for j in verdict.judged if j.path == path]
    assert decision.denied and decision.policy == policy
    (denial,) = verdict.denials()  # the set repeats the artifact's finding: counted once
    assert (denial.policy, denial.path) == (policy, path)
    assert denial.reason.startswith(f"{path}:{line}: {what}")
    completed, ended = outcome_payloads(generated, verdict, {})
    assert isinstance(completed, EnforcementCompleted) and not completed.allowed
    assert completed.denied == (denial,)
    assert isinstance(ended, RunCompleted) and (ended.result, ended.phase) == ("failed", "enforce")
    assert f"{policy} denied {path}: {path}:{line}" in ended.reason


def test_strict_mode_off_does_not_apply_the_placeholder_policy(tmp_path: Path) -> None:
    lenient = PolicyEngine(ENGINE.spec, strict_mode=False)
    verdict = judged(tmp_path, lenient, **{CONFIG.replace("/", "__"): '"""S."""\n# TODO: later\nX = 1\n'})
    assert verdict.denials() == []


def test_the_plan_is_judged_too_a_secret_in_the_schema_is_denied_at_its_line(tmp_path: Path) -> None:
    text = (EXAMPLES / "symbolic_computation_service.yaml").read_text()
    token = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
    text = text.replace('settings: {cache_prefix: "sympy"', f'settings: {{github_token: "{token}"')
    plan = lock(load_collection(text, "c.yaml"))
    generated = write_folder(tmp_path, plan, clean_contents(plan))
    verdict = verdict_of(ENGINE, generated)
    plan_decision = verdict.judged[0].decision
    assert verdict.judged[0].path == PLAN_PATH and plan_decision.denied
    (denial,) = verdict.denials()
    assert (denial.policy, denial.path) == ("no-secrets@1", PLAN_PATH)
    assert "GitHub token: ghp_... (40 chars)" in denial.reason and token not in denial.reason
    number = int(denial.reason.split(":")[1])
    assert token in verdict.judged[0].subject.lines[number - 1]  # type: ignore[union-attr]


def _tamper_file(folder: Path, g: GenerationCompleted) -> str:
    (folder / CONFIG).write_text('"""Changed after generation."""\n')
    return f"{CONFIG}: SHA-256 on disk "


def _tamper_envelope_hash(folder: Path, g: GenerationCompleted) -> str:
    files = tuple(f.model_copy(update={"sha256": "0" * 64}) if f.path == README else f for f in g.files)
    object.__setattr__(g, "files", files)
    listed = hashlib.sha256(clean_text(README).encode()).hexdigest()
    return f"{README}: SHA-256 {listed} in {MANIFEST}, {'0' * 64} in the envelope"


def _tamper_manifest(folder: Path, g: GenerationCompleted) -> str:
    with (folder / MANIFEST).open("a") as fh:
        fh.write(" ")
    return f"{MANIFEST}: SHA-256 "


def _tamper_plan_hash(folder: Path, g: GenerationCompleted) -> str:
    object.__setattr__(g, "plan_hash", "f" * 64)
    return f"{MANIFEST}: plan.hash is {PLAN.hash}, the envelope names {'f' * 64}"


def _tamper_plan(folder: Path, g: GenerationCompleted) -> str:
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["plan"]["order"] = [*reversed(manifest["plan"]["order"]), "intruder"]
    text = json.dumps(manifest, sort_keys=True, indent=2) + "\n"
    (folder / MANIFEST).write_text(text)
    object.__setattr__(g, "manifest_sha256", hashlib.sha256(text.encode()).hexdigest())
    return f"{MANIFEST}: plan: hash does not match the plan's content"


def _extra_file(folder: Path, g: GenerationCompleted) -> str:
    (folder / "code" / "backdoor.py").write_text("import os\nos.system('sh')\n")
    return f"code/backdoor.py: on disk but listed in neither {MANIFEST} nor the envelope"


def _escaping_link(folder: Path, g: GenerationCompleted) -> str:
    outside = folder.parent / f"{folder.name}-outside.md"
    outside.write_text(clean_text(README))
    (folder / README).unlink()
    (folder / README).symlink_to(outside)
    return f"{README}: lies outside the extraction folder"


def _missing_file(folder: Path, g: GenerationCompleted) -> str:
    (folder / README).unlink()
    return f"{README}: cannot read it: No such file or directory"


@pytest.mark.parametrize(
    "tamper",
    [
        _tamper_file,
        _tamper_envelope_hash,
        _tamper_manifest,
        _tamper_plan_hash,
        _tamper_plan,
        _extra_file,
        _escaping_link,
        _missing_file,
    ],
)
def test_integrity_problems_are_denied_naming_the_file(tmp_path: Path, tamper: object) -> None:
    folder = tmp_path / "extraction"
    generated = write_folder(folder, PLAN, clean_contents(PLAN))
    expected = tamper(folder, generated)  # type: ignore[operator]
    verdict = verdict_of(ENGINE, generated)
    assert verdict.judged[-1].path == SET_PATH and verdict.judged[-1].decision.denied
    integrity = [d for d in verdict.denials() if d.policy == INTEGRITY_POLICY]
    assert any(d.reason.startswith(expected) for d in integrity), integrity
    completed, ended = outcome_payloads(generated, verdict, {})
    assert isinstance(ended, RunCompleted) and INTEGRITY_POLICY in ended.reason
    assert isinstance(completed, EnforcementCompleted) and not completed.allowed


def test_a_folder_that_is_not_there_is_denied_with_the_plan(tmp_path: Path) -> None:
    generated = write_folder(tmp_path, PLAN, clean_contents(PLAN))
    gone = generated.model_copy(update={"folder": str(tmp_path / "elsewhere")})
    verdict = verdict_of(ENGINE, gone)
    assert [j.path for j in verdict.judged] == [PLAN_PATH, SET_PATH]
    denials = {(d.policy, d.path): d.reason for d in verdict.denials()}
    assert denials[(INTEGRITY_POLICY, PLAN_PATH)] == f"plan: no valid plan in {MANIFEST}"
    assert (
        "the extraction folder is not a directory" in denials[(INTEGRITY_POLICY, str(tmp_path / "elsewhere"))]
    )


REVIEW_POLICY = """
anchors:
  - {name: Igor, channel: governance.escalations}
  - {name: Compliance, channel: governance.compliance, receives: scope}
escalation: {deadline_s: 5}
policies:
  - id: no-placeholders@1
    rule: placeholders
  - id: network-review@2
    rule: forbidden_calls
    match: {paths: ["*.py"]}
    params: {forbidden: ["socket.*"], shell_calls: []}
    on_violation: escalate
    anchors: [Igor]
"""
NETWORK = (
    '"""Agent."""\n\nimport socket\n\n\ndef connect() -> object:\n'
    '    return socket.create_connection(("a", 1))\n'
)


def test_an_escalating_artifact_is_asked_once_and_a_denial_wins_over_asking(tmp_path: Path) -> None:
    engine = PolicyEngine(parse_policy_text(REVIEW_POLICY))
    generated = write_folder(tmp_path / "a", PLAN, {**clean_contents(PLAN), AGENT: NETWORK})
    verdict = verdict_of(engine, generated)
    (asked,) = verdict.to_escalate()  # the set repeats the artifact's finding: not asked twice
    assert asked.path == AGENT and asked.decision.anchors == ("Igor",)
    assert asked.decision.policy == "network-review@2"
    assert verdict.judged[-1].decision.escalated and verdict.denials() == []

    no = EscalationResolved(
        escalation_id="e-1", approved=False, by="Igor", reason="no sockets", policy="network-review@2"
    )
    completed, ended = outcome_payloads(generated, verdict, {AGENT: ("e-1", no)})
    assert isinstance(completed, EnforcementCompleted) and completed.escalations == ("e-1",)
    (denial,) = completed.denied
    assert (denial.policy, denial.path) == ("network-review@2", AGENT)
    assert denial.reason == "escalation e-1 denied by Igor: no sockets"
    assert isinstance(ended, RunCompleted) and "network-review@2 denied" in ended.reason
    yes = no.model_copy(update={"approved": True, "reason": "reviewed"})
    (approved,) = outcome_payloads(generated, verdict, {AGENT: ("e-1", yes)})
    assert isinstance(approved, EnforcementCompleted) and approved.allowed

    with_todo = {**clean_contents(PLAN), AGENT: NETWORK, CONFIG: "# TODO\n"}
    verdict = verdict_of(engine, write_folder(tmp_path / "b", PLAN, with_todo))
    assert verdict.to_escalate() == []  # already denied: the anchor is not asked
