"""Escalations end to end: the CLI approves or denies as an anchor, a deadline denies, and the
audit trail records every decision, escalation and answer with who gave it."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import msgpack
import pytest

from bus import Keys, Publisher
from bus.connection import RedisClient
from envelope import SIGNED_FIELDS, Ed25519Signer, PacketEnvelope, Signer, Verifier
from governance import DEADLINE, Escalations, PolicyEngine, Request
from memory.postgres import SigningKey
from tests.conftest import ROOT, AgentProcess, stream_entries, wait_for

pytestmark = pytest.mark.integration
ENGINE = PolicyEngine.load()


def sympy_request(expr: str, run: str) -> PacketEnvelope:
    return PacketEnvelope.new(
        type="l9.sympy.simplify.v1",
        source="agent://planner/planner-0",
        data={"expr": expr},
        correlation_id=run,
    )


async def gate(
    desk: Escalations, envelope: PacketEnvelope, deadline_s: float, escalated: dict[str, str]
) -> bool:
    """What the enforcer does with a request: decide, record, escalate and wait; True = proceed.
    The escalation's id goes into ``escalated`` under the request's correlation id."""
    decision = ENGINE.evaluate(Request.from_envelope(envelope))
    await desk.record(decision, cause=envelope)
    if not decision.escalated:
        return decision.allowed
    escalation = await desk.escalate(decision, cause=envelope, deadline_s=deadline_s)
    escalated[str(envelope.correlation_id)] = escalation.id
    return (await desk.wait(escalation.id, poll_s=0.05)).approved


async def l9(env: dict[str, str], *args: str, stdout_only: bool = False) -> tuple[int, str]:
    """Run ``l9 ARGS``: exit code and output (stdout only, or everything with rich's wrapping undone)."""
    done = await anyio.run_process([sys.executable, "-m", "l9", *args], env=env, cwd=ROOT, check=False)
    if stdout_only:
        return done.returncode, done.stdout.decode()
    return done.returncode, " ".join((done.stdout + done.stderr).decode().split())


async def pending_ids(env: dict[str, str]) -> list[str]:
    code, out = await l9(env, "governance", "pending", "--json", stdout_only=True)
    assert code == 0, out
    return [json.loads(line)["id"] for line in out.splitlines()]


async def trail_rows(dsn: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT e.type, e.stream, e.causation_id, p.env FROM l9_audit.entries e"
            " JOIN l9_audit.payloads p USING (seq) ORDER BY e.seq"
        )
    finally:
        await conn.close()
    out = []
    for row in rows:
        fields = dict(zip(SIGNED_FIELDS, msgpack.unpackb(row["env"]), strict=True))
        out.append(
            {"type": row["type"], "stream": row["stream"], "causation_id": row["causation_id"], **fields}
        )
    return out


async def test_escalations_approved_denied_and_timed_out_are_on_the_record(
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    agent_env: dict[str, str],
    admin_dsn: str,
    spawn: Callable[..., AgentProcess],
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
    desk = Escalations(
        redis,
        Publisher(redis, keys, signer),
        spec=ENGINE.escalation,
        anchors=ENGINE.anchors,
        source="agent://enforcer/enforcer-0",
    )
    requests = {
        name: sympy_request("__import__('os').system('ls')", f"run-{name}")
        for name in ("approved", "denied", "silent")
    }
    proceed: dict[str, bool] = {}
    escalated: dict[str, str] = {}

    async def run(name: str, deadline_s: float) -> None:
        proceed[name] = await gate(desk, requests[name], deadline_s, escalated)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "approved", 600)
        tg.start_soon(run, "denied", 600)
        await wait_for(lambda: _pending_count(desk, 2))
        ids = {row.correlation_id.removeprefix("run-"): row.id for row in await desk.pending(expire=False)}
        assert sorted(await pending_ids(agent_env)) == sorted(ids.values())

        code, out = await l9(
            agent_env, "governance", "approve", ids["approved"], "--as", "Mallory", "--reason", "x"
        )
        assert code == 2 and "'Mallory' is not an anchor" in out
        code, out = await l9(
            agent_env,
            "governance",
            "approve",
            ids["approved"],
            "--as",
            "igor",
            "--reason",
            "reviewed: harmless",
        )
        assert code == 0, out
        code, out = await l9(
            agent_env, "governance", "deny", ids["denied"], "--as", "Igor", "--reason", "no shell"
        )
        assert code == 0, out
        code, out = await l9(
            agent_env, "governance", "approve", ids["denied"], "--as", "Igor", "--reason", "oops"
        )
        assert code == 1 and "already denied by Igor" in out
        tg.start_soon(run, "silent", 1)  # nobody answers it: denied at its deadline
    ids["silent"] = escalated["run-silent"]

    assert proceed == {"approved": True, "denied": False, "silent": False}
    assert await desk.pending() == []
    answers = {name: await desk.outcome(ids[name]) for name in ids}
    assert {n: (a.approved, a.by) for n, a in answers.items() if a} == {
        "approved": (True, "Igor"),
        "denied": (False, "Igor"),
        "silent": (False, DEADLINE),
    }

    # the trail: per request, decision -> escalation -> resolution, linked by causation, with the approver
    async def all_recorded() -> bool:
        rows = await trail_rows(admin_dsn)
        resolutions: int = sum(r["type"] == "l9.governance.resolution.v1" for r in rows)
        return resolutions == 3

    await wait_for(all_recorded, timeout=60)
    rows = await trail_rows(admin_dsn)
    for name, request in requests.items():
        decision = [
            r for r in rows if r["type"] == "l9.governance.decision.v1" and r["causation_id"] == request.id
        ]
        assert len(decision) == 1 and decision[0]["stream"] == "governance.compliance"
        assert decision[0]["data"]["decision"]["outcome"] == "escalate"
        assert decision[0]["data"]["decision"]["policy"] == "sympy-dangerous-functions@1"
        escalation = [r for r in rows if r["type"] == "l9.governance.escalation.v1" and r["id"] == ids[name]]
        assert escalation and escalation[0]["causation_id"] == request.id
        assert escalation[0]["data"]["anchors"] == ["Igor"]
        (resolution,) = [
            r for r in rows if r["type"] == "l9.governance.resolution.v1" and r["causation_id"] == ids[name]
        ]
        assert resolution["correlation_id"] == f"run-{name}"
        assert (resolution["auth"], resolution["data"]["by"]) == (answers[name].by, answers[name].by)  # type: ignore[union-attr]
        assert resolution["data"]["approved"] is (name == "approved")
    assert (
        next(r for r in rows if r["causation_id"] == ids["approved"])["data"]["reason"]
        == "reviewed: harmless"
    )


async def _pending_count(desk: Escalations, n: int) -> bool:
    return len(await desk.pending(expire=False)) == n


async def test_an_allowed_request_is_recorded_and_not_escalated(
    redis: RedisClient, keys: Keys, signer: Signer
) -> None:
    desk = Escalations(
        redis,
        Publisher(redis, keys, signer),
        spec=ENGINE.escalation,
        anchors=ENGINE.anchors,
        source="agent://e/e-0",
    )
    assert await gate(desk, sympy_request("sin(x)**2 + cos(x)**2", "run-ok"), 60, {})
    assert await desk.pending() == []
    (entry,) = stream_entries(await redis.xrange(keys.stream("governance.compliance")))
    assert entry[1][b"type"] == b"l9.governance.decision.v1"
    assert await redis.xlen(keys.stream("governance.escalations")) == 0


async def test_a_late_answer_is_refused_and_the_deadline_denial_stands(
    redis: RedisClient, keys: Keys, signer: Signer
) -> None:
    desk = Escalations(
        redis,
        Publisher(redis, keys, signer),
        spec=ENGINE.escalation,
        anchors=ENGINE.anchors,
        source="agent://e/e-0",
    )
    decision = ENGINE.evaluate(Request(type="l9.sympy.simplify.v1", data={"expr": "eval('1')"}))
    escalation = await desk.escalate(decision, deadline_s=0.3)
    await anyio.sleep(0.5)
    with pytest.raises(Exception, match="already denied by deadline"):
        await desk.resolve(escalation.id, approved=True, by="Igor", reason="too late")
    answer = await desk.outcome(escalation.id)
    assert answer is not None and (answer.approved, answer.by) == (False, DEADLINE)
    assert await redis.xlen(keys.stream("governance.resolutions")) == 1


async def test_an_approval_counts_only_when_the_anchors_own_key_signed_it(
    redis: RedisClient, keys: Keys, agent_env: dict[str, str], tmp_path: Path
) -> None:
    """With per-agent keys the enforcer's desk (a verifier, public keys only) accepts an approval
    signed with the anchor's key, and reads one signed with any other key as a denial; the
    record names the key. ``l9 deploy anchor-key`` makes the key, ``--key-file`` signs with it."""
    env_file, igor_file = tmp_path / ".env", tmp_path / "igor.json"
    env_file.write_text("L9_PUBLIC_KEYS='{}'\n")
    code, out = await l9(
        agent_env, "deploy", "anchor-key", "Igor", "--out", str(igor_file), "--env-file", str(env_file)
    )
    assert code == 0 and "Igor.k" in out, out
    igor = Ed25519Signer.from_key_file(igor_file)
    cli = Ed25519Signer.generate("cli.k1")
    public = {igor.key_id: igor.public_bytes, cli.key_id: cli.public_bytes}
    enforcer = Escalations(
        redis,
        Publisher(redis, keys, Ed25519Signer.generate("enforcer.k1")),
        spec=ENGINE.escalation,
        anchors=ENGINE.anchors,
        source="agent://enforcer/enforcer-0",
        verifier=Verifier({}, public_keys=public),
        shared_keys=["dev"],
    )
    requests = [sympy_request("__import__('os')", f"run-keys-{i}") for i in range(2)]
    decision = ENGINE.evaluate(Request.from_envelope(requests[0]))
    by_cli = await enforcer.escalate(decision, cause=requests[0], deadline_s=600)
    by_igor = await enforcer.escalate(decision, cause=requests[1], deadline_s=600)

    # the operator's CLI key, claiming to be Igor: recorded, but not an approval
    as_cli = Escalations(
        redis,
        Publisher(redis, keys, cli),
        spec=ENGINE.escalation,
        anchors=ENGINE.anchors,
        source="agent://governance-cli/Igor",
    )
    await as_cli.resolve(by_cli.id, approved=True, by="Igor", reason="trust me")
    refused = await enforcer.wait(by_cli.id, poll_s=0.05)
    assert (refused.approved, refused.signed_by) == (False, "cli.k1")
    assert "approval refused: signed with key 'cli.k1', not a key of anchor 'Igor'" in refused.reason

    # Igor's own key, through the CLI: an approval, naming the key
    code, out = await l9(
        agent_env, "governance", "approve", by_igor.id, "--key-file", str(igor_file), "--reason", "ok"
    )
    assert code == 0 and f"approved by Igor (signed with {igor.key_id})" in out, out
    approved = await enforcer.wait(by_igor.id, poll_s=0.05)
    assert (approved.approved, approved.by, approved.signed_by) == (True, "Igor", igor.key_id)

    # a stored answer changed afterwards no longer verifies: a denial
    resolved = keys.escalations_resolved(ENGINE.escalation.resolutions)
    raw = await redis.hget(resolved, by_igor.id)
    assert raw is not None
    stored = json.loads(raw)
    stored["data"]["reason"] = "edited"
    await redis.hset(resolved, by_igor.id, json.dumps(stored))
    edited = await enforcer.outcome(by_igor.id)
    assert edited is not None and not edited.approved and "signature does not match" in edited.reason

    code, out = await l9(
        agent_env,
        "governance",
        "approve",
        by_igor.id,
        "--as",
        "Compliance",
        "--key-file",
        str(igor_file),
        "--reason",
        "x",
    )
    assert code == 2 and "--as 'Compliance', but the key" in out, out
