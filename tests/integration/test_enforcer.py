"""``l9 agent run enforcer`` as a real process on the embedded Redis and PostgreSQL, with the auditor:
a clean folder is allowed (once, though delivered twice); escalations wait for ``l9 governance
approve|deny`` and survive a ``kill -9`` of the enforcer (the next one reuses them); silence is a
denial at the policy's deadline; decisions, escalations and the approver are in the audit trail."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
import yaml

from agents.extraction import EnforcementCompleted, GenerationCompleted, RunCompleted
from bus import Keys, Publisher
from bus.connection import RedisClient
from envelope import PacketEnvelope, Payload, Signer, Verifier, decode
from governance import DEFAULT_POLICY_FILE, Escalations, PolicyEngine
from memory.postgres import PostgresAuditStore, SigningKey
from tests.conftest import AgentProcess, run_l9, stream_entries, wait_for
from tests.unit.test_enforcer import AGENT, NETWORK, PLAN, clean_contents, write_folder

pytestmark = pytest.mark.integration
DEADLINE_S = 10
RUNS = ("allowed", "approved", "denied", "silent")


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    """The shipped policy, plus one that escalates network access to Igor, with a short deadline."""
    policy = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    policy["escalation"]["deadline_s"] = DEADLINE_S
    policy["policies"].append(
        {
            "id": "network-review@1",
            "rule": "forbidden_calls",
            "match": {"paths": ["*.py"]},
            "params": {"forbidden": ["socket.*"], "shell_calls": []},
            "on_violation": "escalate",
            "anchors": ["Igor"],
        }
    )
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


def generated_envelope(tmp_path: Path, run: str) -> PacketEnvelope:
    contents = clean_contents(PLAN)
    if run != "allowed":
        contents[AGENT] = NETWORK
    payload = write_folder(tmp_path / "extractions" / run, PLAN, contents, run=run)
    return PacketEnvelope.new(
        type="l9.generate.completed.v1",
        source="agent://generator/generator-0",
        data=payload.model_dump(mode="json"),
        correlation_id=f"run-{run}",
    )


async def results(redis: RedisClient, keys: Keys, verifier: Verifier) -> dict[str, list[Payload]]:
    """The enforce and run stream payloads, by run name."""
    out: dict[str, list[Payload]] = {run: [] for run in RUNS}
    for stream in ("enforce", "run"):
        for _, fields in stream_entries(await redis.xrange(keys.stream(stream))):
            envelope, payload = decode(fields, verifier)
            out[envelope.correlation_id.removeprefix("run-")].append(payload)
    return out


async def test_the_enforcer_allows_escalates_and_denies_with_everything_on_the_record(
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    verifier: Verifier,
    agent_env: dict[str, str],
    admin_dsn: str,
    store: PostgresAuditStore,
    spawn: Callable[..., AgentProcess],
    policy_file: Path,
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "audit-key.hex"
    key_file.write_text(SigningKey.generate().private_bytes.hex())
    spawn(
        "auditor",
        env={
            "DATABASE_URL": admin_dsn,
            "L9_AUDIT_KEY_FILE": str(key_file),
            "L9_AUDIT_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        },
    )
    env = {**agent_env, "L9_POLICY_FILE": str(policy_file)}
    first = spawn("enforcer", env=env)
    envelopes = {run: generated_envelope(tmp_path, run) for run in RUNS}
    publisher = Publisher(redis, keys, signer)
    await publisher.publish_many([*envelopes.values(), envelopes["allowed"]])  # "allowed" delivered twice

    engine = PolicyEngine.load(policy_file)
    desk = Escalations(redis, publisher, spec=engine.escalation, anchors=engine.anchors, source="agent://t/t")

    async def three_pending() -> bool:
        return len(await desk.pending(expire=False)) == 3

    await wait_for(three_pending, timeout=120)
    ids = {row.correlation_id.removeprefix("run-"): row.id for row in await desk.pending(expire=False)}
    first.kill9()  # while it waits: the next enforcer takes the runs over and reuses the escalations
    spawn("enforcer", env=env)

    async def answer(verb: str, run: str, reason: str) -> None:
        args = ("governance", verb, ids[run], "--as", "Igor", "--reason", reason)
        done = await anyio.to_thread.run_sync(lambda: run_l9(*args, env=agent_env))
        assert done.returncode == 0, done.stderr

    async with anyio.create_task_group() as tg:
        tg.start_soon(answer, "approve", "approved", "reviewed: the socket is the service's own")
        tg.start_soon(answer, "deny", "denied", "no raw sockets")

    async def all_done() -> bool:
        found = await results(redis, keys, verifier)
        return all(any(isinstance(p, EnforcementCompleted) for p in found[run]) for run in RUNS)

    await wait_for(all_done, timeout=DEADLINE_S + 30)
    found = await results(redis, keys, verifier)
    files = len(GenerationCompleted.model_validate(envelopes["allowed"].data).files)
    for run in ("allowed", "approved"):
        (completed,) = found[run]  # allowed: no run end here, the validator goes on
        assert isinstance(completed, EnforcementCompleted) and completed.allowed, completed
        assert completed.decisions == files + 2 and completed.denied == ()
    assert found["approved"][0].escalations == (ids["approved"],)  # type: ignore[attr-defined]
    for run, by in (("denied", "Igor"), ("silent", "deadline")):
        completed, ended = found[run]
        assert isinstance(completed, EnforcementCompleted) and not completed.allowed
        assert completed.escalations == (ids[run],)
        (denial,) = completed.denied
        assert (denial.policy, denial.path) == ("network-review@1", AGENT)
        assert denial.reason.startswith(f"escalation {ids[run]} denied by {by}")
        assert isinstance(ended, RunCompleted) and (ended.result, ended.phase) == ("failed", "enforce")
        assert f"network-review@1 denied {AGENT}" in ended.reason
    assert await redis.xlen(keys.stream("governance.escalations")) == 3  # raised once each, despite the kill

    await check_trail(store, envelopes, ids, files)


async def check_trail(
    store: PostgresAuditStore, envelopes: dict[str, PacketEnvelope], ids: dict[str, str], files: int
) -> None:
    """Per run: each decision once, caused by the generator's envelope; the escalation and its answer
    with who gave it; the outcome."""

    async def recorded() -> bool:
        entries = [e for run in RUNS for e in await store.entries_for_correlation(f"run-{run}")]
        return sum(e.type in ("l9.enforce.completed.v1", "l9.governance.resolution.v1") for e in entries) == 7

    await wait_for(recorded, timeout=60)
    for run in RUNS:
        entries = await store.entries_for_correlation(f"run-{run}")
        decisions = [e for e in entries if e.type == "l9.governance.decision.v1"]
        assert len(decisions) == files + 2, run
        assert {e.causation_id for e in decisions} == {envelopes[run].id}
        # routed by audit scope: "code generation" covers the artifacts and the set; an allowed plan
        # is not in scope (the decisions stream has it), a denial or escalation always is
        streams = {e.envelope().data["decision"]["subject"].split(" (")[0]: e.stream for e in decisions}
        assert streams.pop("artifact plan") == "governance.decisions"
        assert set(streams.values()) == {"governance.compliance"}
        assert sum(e.type == "l9.enforce.completed.v1" for e in entries) == 1
        if run == "allowed":
            continue
        (escalation,) = [e for e in entries if e.type == "l9.governance.escalation.v1"]
        assert escalation.envelope_id == ids[run] and escalation.causation_id == envelopes[run].id
        (resolution,) = [e.envelope() for e in entries if e.type == "l9.governance.resolution.v1"]
        assert resolution.causation_id == ids[run]
        expected = {"approved": (True, "Igor"), "denied": (False, "Igor"), "silent": (False, "deadline")}[run]
        assert (resolution.data["approved"], resolution.data["by"], resolution.auth) == (
            *expected,
            expected[1],
        )
    approved = await store.entries_for_correlation("run-approved")
    answer = next(e.envelope() for e in approved if e.type == "l9.governance.resolution.v1")
    assert answer.data["reason"] == "reviewed: the socket is the service's own"
