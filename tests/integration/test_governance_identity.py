"""Agent identity on the real Redis: forged envelopes never reach a handler; Redis users per agent."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import anyio
import pytest
from redis.exceptions import NoPermissionError

from agents.demo import Task, results_key
from bus import Delivery, DeliveryPolicy, Keys, Publisher, StreamConsumer, connect
from bus.connection import RedisClient
from envelope import Ed25519Signer, PacketEnvelope, Signer, Verifier
from governance import SignerACL
from l9.devstack import StackEndpoints
from tests.conftest import ROOT, AgentProcess, stream_entries, wait_for
from tests.integration.ledger import Work, attempts_key, effects_count_key

pytestmark = pytest.mark.integration
KEYRING = {"ledger": b"ledger-secret", "planner": b"planner-secret", "intruder": b"intruder-secret"}
SIGNERS = {"planner": ["l9.test.work.*"], "ledger": ["l9.test.pong.*"], "intruder": ["l9.test.ping.*"]}


def work(n: int) -> PacketEnvelope:
    return PacketEnvelope.new(type="l9.test.work.v1", source="agent://test/p", data=Work(n=n).model_dump())


async def publish(redis: RedisClient, keys: Keys, signer: Signer | None, envelope: PacketEnvelope) -> str:
    await Publisher(redis, keys, signer).publish(envelope, "test")
    return envelope.id


async def dead_reasons(redis: RedisClient, keys: Keys) -> dict[str, str]:
    dead = stream_entries(await redis.xrange(keys.dead("test")))
    return {f[b"id"].decode(): f[b"dl_reason"].decode() for _, f in dead}


async def test_forged_envelopes_are_dead_lettered_before_any_handler(
    redis: RedisClient, keys: Keys, spawn: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps({"identity": {"signers": SIGNERS}}))  # JSON is YAML
    ledger = spawn(
        "tests.integration.ledger:LedgerAgent",
        env={
            "L9_POLICY_FILE": str(policy),
            "L9_SIGNING_KEYS": json.dumps({k: v.decode() for k, v in KEYRING.items()}),
            "L9_SIGNING_KEY_ID": "ledger",
        },
    )
    legit = [await publish(redis, keys, Signer(KEYRING, "planner"), work(i)) for i in range(5)]
    forged = {
        # a known key, valid signature, but a type its owner may not emit
        await publish(redis, keys, Signer(KEYRING, "intruder"), work(100)): "unauthorized_signer",
        # the consumer's own key may not emit work either
        await publish(redis, keys, Signer(KEYRING, "ledger"), work(101)): "unauthorized_signer",
        # the planner's key id with the wrong secret
        await publish(redis, keys, Signer({"planner": b"guessed"}, "planner"), work(102)): "bad_signature",
        # a key nobody knows, and no signature at all
        await publish(redis, keys, Signer({"outsider": b"x"}, "outsider"), work(103)): "bad_signature",
        await publish(redis, keys, None, work(104)): "bad_signature",
    }

    async def settled() -> bool:
        return (
            int(await redis.get(effects_count_key(keys)) or 0) == 5
            and len(await dead_reasons(redis, keys)) == 5
        )

    await wait_for(settled)
    assert await dead_reasons(redis, keys) == forged
    # the handler counts every attempt first thing: it saw the five legitimate envelopes only
    attempted = cast(list[bytes], await redis.hkeys(attempts_key(keys)))
    assert sorted(k.decode() for k in attempted) == sorted(legit)
    assert (await redis.xpending(keys.stream("test"), "ledger"))["pending"] == 0
    dead = [e for e in ledger.log_events() if e.get("event") == "consumer.dead_lettered"]
    unauthorized = [e for e in dead if e["reason"] == "unauthorized_signer"]
    assert {str(e["detail"]) for e in unauthorized} == {
        "signing key 'intruder' may not emit 'l9.test.work.v1' (it may emit: l9.test.ping.*)",
        "signing key 'ledger' may not emit 'l9.test.work.v1' (it may emit: l9.test.pong.*)",
    }
    assert ledger.terminate() == 0


async def test_with_ed25519_a_consumer_holding_public_keys_only_cannot_pass_as_an_agent(
    redis: RedisClient, keys: Keys, spawn: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    """The ledger agent runs as a multi-tenant deployment does (L9_SIGNING_SCHEME=ed25519): its own
    private key, everyone's public keys. What a consumer could make from what it holds is refused;
    the planner's genuine envelopes, batched under one signature, are handled."""
    planner, ledger = Ed25519Signer.generate("planner.k1"), Ed25519Signer.generate("ledger.k1")
    key_file = tmp_path / "ledger.json"
    key_file.write_text(ledger.key_file_text())
    public = {s.key_id: s.public_hex for s in (planner, ledger)}
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps({"identity": {"signers": {"planner": ["l9.test.work.*"]}}}))
    process = spawn(
        "tests.integration.ledger:LedgerAgent",
        env={
            "L9_POLICY_FILE": str(policy),
            "L9_SIGNING_SCHEME": "ed25519",
            "L9_SIGNING_KEYS": "",  # the test stack's shared keyring: not in this deployment
            "L9_SIGNING_KEY_FILE": str(key_file),
            "L9_PUBLIC_KEYS": json.dumps(public),
        },
    )
    batch = [work(i) for i in range(4)]
    await Publisher(redis, keys, planner).publish_many(batch, "test")
    legit = [e.id for e in batch]
    as_planner = {"planner.k1": bytes.fromhex(public["planner.k1"])}
    forged = {
        # an HMAC keyed with the planner's public key, under the planner's key id
        await publish(redis, keys, Signer(as_planner, "planner.k1"), work(100)): "bad_signature",
        # a key of its own under the planner's key id
        await publish(redis, keys, Ed25519Signer.generate("planner.k1"), work(101)): "bad_signature",
        # the ledger's own genuine key: it may not emit work
        await publish(redis, keys, ledger, work(102)): "unauthorized_signer",
        # the shared development key is not trusted at all here
        await publish(redis, keys, Signer({"dev": b"x"}, "dev"), work(103)): "bad_signature",
    }

    async def settled() -> bool:
        return (
            int(await redis.get(effects_count_key(keys)) or 0) == 4
            and len(await dead_reasons(redis, keys)) == 4
        )

    await wait_for(settled)
    assert await dead_reasons(redis, keys) == forged
    attempted = cast(list[bytes], await redis.hkeys(attempts_key(keys)))
    assert sorted(k.decode() for k in attempted) == sorted(legit)
    assert process.terminate() == 0


FAST = DeliveryPolicy(max_in_flight=16, concurrency=2, block_ms=100, heartbeat_ms=100, lease_ms=1500)


async def consume(redis: RedisClient, keys: Keys, acl: SignerACL | None, n: int) -> list[int]:
    """Run a consumer of stream ``test`` until ``n`` entries were handled or dead-lettered."""
    seen: list[int] = []

    async def handler(d: Delivery) -> None:
        seen.append(d.payload.n)  # type: ignore[attr-defined]

    consumer = StreamConsumer(
        redis,
        keys,
        group="g",
        consumer="g-0",
        streams=["test"],
        handler=handler,
        verifier=Verifier(KEYRING),
        policy=FAST,
        authorize=acl.authorize if acl else None,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)

        async def done() -> bool:
            return len(seen) + len(await dead_reasons(redis, keys)) >= n and not consumer.in_flight

        await wait_for(done)
        consumer.stop()
    return seen


@pytest.mark.parametrize(("acl", "handled"), [(SignerACL(SIGNERS), [1]), (None, [1, 2])])
async def test_the_check_is_on_only_with_a_signer_table(
    redis: RedisClient, keys: Keys, acl: SignerACL | None, handled: list[int]
) -> None:
    await publish(redis, keys, Signer(KEYRING, "planner"), work(1))
    await publish(redis, keys, Signer(KEYRING, "intruder"), work(2))
    assert sorted(await consume(redis, keys, acl, 2)) == handled
    assert list((await dead_reasons(redis, keys)).values()) == (["unauthorized_signer"] if acl else [])


# -- Redis users per agent ----------------------------------------------------------------------
@pytest.fixture
async def acl_users(
    stack: StackEndpoints, redis: RedisClient, agent_env: dict[str, str], tmp_path: Path
) -> AsyncIterator[dict[str, str]]:
    """``l9 acl render`` for this namespace, its users loaded with ACL SETUSER; agent -> Redis URL."""
    out, pw = tmp_path / "users.acl", tmp_path / "passwords.json"
    run = await anyio.run_process(
        [sys.executable, "-m", "l9", "acl", "render", "--out", str(out), "--passwords", str(pw)],
        env=agent_env,
        cwd=ROOT,
        check=False,
    )
    assert run.returncode == 0, run.stderr.decode()
    assert oct(pw.stat().st_mode & 0o777) == "0o600"
    passwords = json.loads(pw.read_text())
    lines = out.read_text().splitlines()
    assert all(p not in out.read_text() for p in passwords.values())  # hashes only
    users = []
    for line in lines:
        _, name, *rules = line.split(" ")
        rules = " ".join(rules).replace("( ", "(").split(" ")
        await _command(redis, "ACL", "SETUSER", name, *_selectors(rules))
        users.append(name)
    host = stack.redis_url.removeprefix("redis://")
    namespace = agent_env["L9_NAMESPACE"]
    yield {agent: f"redis://{namespace}-{agent}:{secret}@{host}" for agent, secret in passwords.items()}
    await _command(redis, "ACL", "DELUSER", *users)


async def _command(redis: RedisClient, *args: str) -> object:
    """``redis.execute_command``, typed."""
    # redis-py leaves execute_command unannotated
    return await redis.execute_command(*args)


def _selectors(rules: list[str]) -> list[str]:
    """ACL SETUSER takes a selector ``(a b c)`` as one argument."""
    out: list[str] = []
    current: list[str] = []
    for rule in rules:
        if current or rule.startswith("("):
            current.append(rule)
            if rule.endswith(")"):
                out.append(" ".join(current))
                current = []
        else:
            out.append(rule)
    return out


async def test_an_agents_redis_user_is_refused_on_another_agents_stream(
    redis: RedisClient, keys: Keys, acl_users: dict[str, str]
) -> None:
    squarer, summer = connect(acl_users["squarer"]), connect(acl_users["summer"])
    try:
        await squarer.xadd(keys.stream("demo.results"), {"x": "1"})  # it produces results
        await squarer.xgroup_create(keys.stream("demo.tasks"), "squarer", id="0", mkstream=True)
        with pytest.raises(NoPermissionError):  # but may not read them: they are the summer's
            await squarer.xrange(keys.stream("demo.results"))
        with pytest.raises(NoPermissionError):
            await squarer.xreadgroup("summer", "x", {keys.stream("demo.results"): ">"})
        with pytest.raises(NoPermissionError):  # the summer may not touch the squarer's tasks
            await summer.xadd(keys.stream("demo.tasks"), {"x": "1"})
        with pytest.raises(NoPermissionError):  # nor any stream outside its own
            await summer.xadd(keys.stream("audit"), {"x": "1"})
        with pytest.raises(NoPermissionError):  # nor another namespace
            await squarer.xadd(Keys("other").stream("demo.results"), {"x": "1"})
        with pytest.raises(NoPermissionError):  # and no admin or dangerous command at all
            await squarer.flushall()
        with pytest.raises(NoPermissionError):
            await squarer.keys("*")
    finally:
        await squarer.aclose()
        await summer.aclose()


async def test_an_agent_runs_as_its_own_redis_user(
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    acl_users: dict[str, str],
    spawn: Callable[..., AgentProcess],
) -> None:
    agent = spawn("squarer", env={"REDIS_URL": acl_users["squarer"]})
    run = "run-acl"
    tasks = [
        PacketEnvelope.new(
            type="l9.demo.task.v1", source="agent://test/cli", correlation_id=run, data=Task(n=i).model_dump()
        )
        for i in range(1, 21)
    ]
    await Publisher(redis, keys, signer).publish_many(tasks)

    async def all_results() -> bool:
        return int(await redis.xlen(keys.stream("demo.results"))) >= 20

    await wait_for(all_results)
    clients = cast(bytes, await _command(redis, "CLIENT", "LIST")).decode()
    assert f" user={keys.namespace}-squarer " in clients  # it really is connected as its own user
    assert (await redis.xpending(keys.stream("demo.tasks"), "squarer"))["pending"] == 0
    assert not await redis.exists(results_key(keys, run))  # the summer's effect: not the squarer's to make
    denied = [e for e in agent.log_events() if "NOPERM" in json.dumps(e) or "permission" in json.dumps(e)]
    assert denied == []
    assert agent.terminate() == 0
