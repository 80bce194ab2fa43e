"""The admin port (``L9_ADMIN_PORT``) of real agent processes: /metrics counts what the agent does
to envelopes, /readyz follows its Redis (and the auditor's PostgreSQL), /healthz its delivery loop;
the auditor exports every group's lag, pending and dead letters; a port in use stops the start."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bus import Keys, Publisher, connect
from bus.connection import RedisClient
from envelope import PacketEnvelope, Signer
from memory.postgres import SigningKey
from tests.conftest import AgentProcess, free_port, wait_for
from tests.integration.own_redis import OwnRedis
from tests.integration.test_agents import effects, work

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def get(port: int, path: str) -> tuple[int, str]:
    """Status and body of ``GET path`` on the admin port; 0 when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError):
        return 0, ""


async def fetch(port: int, path: str) -> tuple[int, str]:
    return await anyio.to_thread.run_sync(get, port, path)


async def scrape(port: int) -> Samples:
    status, text = await fetch(port, "/metrics")
    assert status == 200, text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def status_is(port: int, path: str, wanted: int) -> bool:
    return (await fetch(port, path))[0] == wanted


async def test_an_agents_admin_port_counts_its_envelopes_and_follows_its_redis(
    own_redis: OwnRedis, keys: Keys, signer: Signer, spawn: Callable[..., AgentProcess]
) -> None:
    port = free_port()
    env = {"REDIS_URL": own_redis.url, "L9_ADMIN_PORT": str(port), "L9_MAX_DELIVERIES": "3"}
    proc = spawn("tests.integration.ledger:LedgerAgent", env=env)
    await wait_for(lambda: status_is(port, "/readyz", 200))
    client: RedisClient = connect(own_redis.url)
    try:
        publisher = Publisher(client, keys, signer)
        await publisher.publish_many([work(i) for i in range(10)])
        await publisher.publish_many([work(10, fail_times=1), work(11, poison=True)])
        ledger = {"stream": "test", "group": "ledger", "type": "l9.test.work.v1"}

        async def settled() -> bool:
            samples = await scrape(port)
            dead = sample(samples, "l9_envelopes_dead_lettered_total", **ledger, reason="delivery_cap")
            return sample(samples, "l9_envelopes_handled_total", **ledger) == 11 and dead == 1

        await wait_for(settled)
        assert await effects(client, keys) == 11
        samples = await scrape(port)
        # 10 at once, one failed then handled, the poison failed its three tries and is dead
        assert sample(samples, "l9_envelopes_received_total", **ledger) == 15
        assert sample(samples, "l9_envelopes_failed_total", **ledger) == 4
        assert sample(samples, "l9_envelopes_retried_total", **ledger) == 3
        assert sample(samples, "l9_handler_duration_seconds_count", **ledger) == 15
        assert sample(samples, "l9_envelopes_in_flight", group="ledger") == 0
        assert (sample(samples, "process_resident_memory_bytes") or 0) > 0

        status, body = await fetch(port, "/healthz")
        assert status == 200 and json.loads(body)["loops"]["ledger"]["problem"] is None
        status, body = await fetch(port, "/readyz")
        assert status == 200, body
        assert json.loads(body)["checks"] == {"redis": "ok", "group ledger": "ok", "delivery": "ok"}

        own_redis.stop()
        await wait_for(lambda: status_is(port, "/readyz", 503), timeout=60)
        status, body = await fetch(port, "/readyz")
        assert status == 503 and "redis" in json.loads(body)["failed"], body
        # alive all the same: its loop goes round, backing off (no restart would help)
        assert (await fetch(port, "/healthz"))[0] == 200
        own_redis.start()
        await wait_for(lambda: status_is(port, "/readyz", 200), timeout=120)
        assert proc.proc.poll() is None
        assert proc.terminate() == 0
        assert get(port, "/healthz")[0] == 0  # the port is closed with the agent
    finally:
        await client.aclose()


async def test_a_port_in_use_stops_the_start_naming_the_port_and_the_setting(
    spawn: Callable[..., AgentProcess],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = spawn("squarer", env={"L9_ADMIN_PORT": str(port)})
        assert proc.proc.wait(timeout=120) == 2
    (event,) = [e for e in proc.log_events() if e.get("event") == "agent.admin_port_unavailable"]
    assert event["setting"] == "L9_ADMIN_PORT"
    assert f"L9_ADMIN_PORT={port}: cannot listen on 127.0.0.1:{port}" in str(event["error"])
    assert not any(e.get("event") == "agent.started" for e in proc.log_events())


@pytest.fixture
def auditor_env(admin_dsn: str, tmp_path: Path) -> dict[str, str]:
    key_file = tmp_path / "audit-key.hex"
    key_file.write_text(SigningKey.generate().private_bytes.hex())
    return {
        "DATABASE_URL": admin_dsn,
        "L9_AUDIT_KEY_FILE": str(key_file),
        "L9_AUDIT_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "L9_ADMIN_PORT": str(free_port()),
    }


async def test_the_auditor_exports_every_groups_lag_and_pending_and_checks_postgres(
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    spawn: Callable[..., AgentProcess],
    auditor_env: dict[str, str],
) -> None:
    port = int(auditor_env["L9_ADMIN_PORT"])
    plans = [
        PacketEnvelope.new(type="l9.plan.thing.v1", source="agent://test/0", data={"i": i}) for i in range(7)
    ]
    await Publisher(redis, keys, signer).publish_many(plans)
    await redis.xgroup_create(keys.stream("plan"), "watcher", id="0")  # a group that never reads
    await redis.xadd(keys.stream("plan"), {"junk": "1"})  # undecodable: the auditor dead-letters it
    spawn("auditor", env=auditor_env)
    await wait_for(lambda: status_is(port, "/readyz", 200))
    plan = {"stream": "plan", "group": "auditor", "type": "l9.plan.thing.v1"}

    async def exported() -> bool:
        samples = await scrape(port)
        return (
            sample(samples, "l9_group_lag", stream="plan", group="watcher") == 8
            and sample(samples, "l9_group_lag", stream="plan", group="auditor") == 0
            and sample(samples, "l9_group_pending", stream="plan", group="auditor") == 0
            and sample(samples, "l9_stream_dead_letters", stream="plan") == 1
            and sample(samples, "l9_envelopes_handled_total", **plan) == 7
        )

    await wait_for(exported)
    samples = await scrape(port)
    assert sample(samples, "l9_group_pending", stream="plan", group="watcher") == 0
    junk = {"stream": "plan", "group": "auditor", "type": "-", "reason": "undecodable"}
    assert sample(samples, "l9_envelopes_dead_lettered_total", **junk) == 1
    status, body = await fetch(port, "/readyz")
    assert status == 200, body
    assert json.loads(body)["checks"] == {
        "redis": "ok",
        "group auditor": "ok",
        "group reporter": "ok",
        "delivery": "ok",
        "postgres": "ok",
    }
    status, body = await fetch(port, "/healthz")
    assert status == 200 and set(json.loads(body)["loops"]) == {"auditor", "reporter"}
    # the trail's side: every entry committed, the head at the last seq, each commit timed
    assert sample(samples, "l9_audit_records_total", outcome="stored") == 7
    assert sample(samples, "l9_audit_records_total", outcome="refused") == 1
    assert sample(samples, "l9_audit_chain_head_seq", chain="0") == 7
    assert (sample(samples, "l9_audit_chain_head_timestamp_seconds", chain="0") or 0) > 0
    batches = sample(samples, "l9_audit_batch_entries_count")
    assert batches is not None and batches >= 1
    assert sample(samples, "l9_audit_batch_entries_sum") == 8
    assert sample(samples, "l9_audit_commit_duration_seconds_count") == batches


async def test_the_lineage_projectors_admin_port_watches_its_batch_loop(
    agent_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    env = {k: v for k, v in agent_env.items() if k not in ("DATABASE_URL", "L9_DATABASE_URL")}
    proc = AgentProcess("lineage", {**env, "L9_ADMIN_PORT": str(port)}, tmp_path / "lineage.log")
    try:
        await wait_for(lambda: status_is(port, "/readyz", 200))
        status, body = await fetch(port, "/readyz")
        assert json.loads(body)["checks"] == {"redis": "ok", "group lineage": "ok", "delivery": "ok"}
        status, body = await fetch(port, "/healthz")
        assert status == 200 and json.loads(body)["loops"]["lineage"]["problem"] is None
        assert sample(await scrape(port), "l9_envelopes_in_flight", group="lineage") == 0
        assert proc.terminate() == 0
    finally:
        proc.close()
