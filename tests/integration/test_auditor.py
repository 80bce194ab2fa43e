"""The auditor process against the real Redis and Postgres: every stream (new ones too),
exactly once, several auditors, the audit stream, checkpoints, kill -9 at the commit's
every stage, and Postgres going away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import cast
from urllib.parse import parse_qs, urlsplit

import anyio
import asyncpg
import msgpack
import pytest
import redis.asyncio as aioredis

from agents import Runtime
from agents.auditor.agent import GROUP
from bus import DeliveryPolicy, Keys, Publisher, RpcClient, StreamConsumer
from bus.connection import RedisClient
from bus.topology import AUDIT_STREAM
from envelope import SIGNED_FIELDS, PacketEnvelope, Signer, Verifier, encode
from memory.audit.chains import Layout
from memory.postgres import PostgresAuditStore, SigningKey, migrate, writer_dsn
from tests.conftest import AgentProcess, stream_entries, wait_for
from tests.integration.ledger import LedgerAgent, Ping

pytestmark = [pytest.mark.integration, pytest.mark.cluster]  # also on the local cluster

STREAMS = ("plan", "artifact", "validation")


def envelope(i: int, area: str = "plan", run: str = "run-1") -> PacketEnvelope:
    return PacketEnvelope.new(
        type=f"l9.{area}.thing.v1", source=f"agent://test/{i % 3}", data={"i": i}, correlation_id=run
    )


@pytest.fixture
def auditor_env(admin_dsn: str, tmp_path: Path) -> dict[str, str]:
    key = SigningKey.generate()
    key_file = tmp_path / "audit-key.hex"
    key_file.write_text(key.private_bytes.hex())
    return {
        "DATABASE_URL": admin_dsn,
        "L9_AUDIT_KEY_FILE": str(key_file),
        "L9_AUDIT_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
    }


@pytest.fixture
async def trail(admin_dsn: str, tmp_path: Path) -> AsyncIterator[PostgresAuditStore]:
    store = await PostgresAuditStore.open(writer_dsn(admin_dsn), checkpoint_dir=tmp_path / "checkpoints")
    yield store
    await store.close()


async def stored_ids(admin_dsn: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(admin_dsn)
    try:
        rows = await conn.fetch("SELECT seq, envelope_id FROM l9_audit.entries ORDER BY seq")
    finally:
        await conn.close()
    return [(r["seq"], r["envelope_id"]) for r in rows]


async def auditor_pending(redis: RedisClient, keys: Keys, streams: tuple[str, ...]) -> int:
    total = 0
    for name in streams:
        with contextlib.suppress(aioredis.ResponseError):
            total += int((await redis.xpending(keys.stream(name), GROUP))["pending"])
    return total


async def audit_feed(redis: RedisClient, keys: Keys) -> list[dict[str, object]]:
    """The records on the audit stream, in stream order."""
    data_at = SIGNED_FIELDS.index("data")
    out: list[dict[str, object]] = []
    for _entry_id, fields in stream_entries(await redis.xrange(keys.stream(AUDIT_STREAM))):
        data = msgpack.unpackb(fields[b"env"])[data_at]
        seqs = [r["seq"] for r in data["records"]]
        assert (seqs[0], seqs[-1]) == (data["first_seq"], data["last_seq"])
        out.extend(data["records"])
    return out


def assert_exactly_once(rows: list[tuple[int, str]], published: list[PacketEnvelope]) -> None:
    assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1)), "seq has a gap or a repeat"
    assert sorted(eid for _, eid in rows) == sorted(e.id for e in published)


async def test_every_stream_is_audited_once_new_streams_too_and_fed_to_the_audit_stream(
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    spawn: Callable[..., AgentProcess],
    auditor_env: dict[str, str],
    admin_dsn: str,
    trail: PostgresAuditStore,
) -> None:
    publisher = Publisher(redis, keys, signer)
    early = [envelope(i, STREAMS[i % 3]) for i in range(300)]
    await publisher.publish_many(early)  # before the auditor exists: read from id 0
    auditor = spawn("auditor", env=auditor_env)
    late = [envelope(i, "brandnew") for i in range(50)]  # a stream born after the auditor started
    await wait_for(lambda: stored_count(admin_dsn, 300))
    await wait_for(lambda: _no_pending(redis, keys))
    await publisher.publish_many(late)
    # forged: right key id, wrong signature; and an entry with no envelope at all
    forged = encode(envelope(999), Signer({"dev": b"not the secret"}, "dev"))
    await redis.xadd(keys.stream("plan"), forged)  # type: ignore[arg-type]
    await redis.xadd(keys.stream("plan"), {"junk": "1"})
    await wait_for(lambda: stored_count(admin_dsn, 350), timeout=120)
    await wait_for(lambda: _dead(redis, keys, "plan", 2))
    rows = await stored_ids(admin_dsn)
    assert_exactly_once(rows, early + late)
    dead = stream_entries(await redis.xrange(keys.dead("plan")))
    assert sorted(f[b"dl_reason"] for _, f in dead) == [b"bad_signature", b"undecodable"]
    assert {f[b"dl_group"] for _, f in dead} == {GROUP.encode()}
    # the audit stream: every committed record exactly once, in seq order, with its summary
    await wait_for(lambda: _feed_len(redis, keys, 350))
    feed = await audit_feed(redis, keys)
    assert [r["seq"] for r in feed] == list(range(1, 351))
    by_seq = dict(rows)
    assert all(r["envelope_id"] == by_seq[r["seq"]] for r in feed)  # type: ignore[index]
    assert feed[-1]["type"] == "l9.brandnew.thing.v1" and feed[-1]["summary"] == "i=49"
    report = await trail.verify()
    assert report.ok and report.entries_checked == 350
    assert auditor.terminate() == 0
    assert await auditor_pending(redis, keys, (*STREAMS, "brandnew")) == 0


async def test_the_reply_to_a_one_shot_rpc_client_is_audited(
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    verifier: Verifier,
    spawn: Callable[..., AgentProcess],
    auditor_env: dict[str, str],
    admin_dsn: str,
) -> None:
    """A client that lives less than the auditor's look for new streams (every second), as
    ``l9 sympy eval`` does: its reply stream stays for the auditor after the client closed."""
    auditor = spawn("auditor", env=auditor_env)
    publisher = Publisher(redis, keys, signer)
    await publisher.publish(envelope(0))
    await wait_for(lambda: stored_count(admin_dsn, 1))  # the auditor is at work
    runtime = Runtime(redis=redis, keys=keys, signer=signer, verifier=verifier, agent="ledger", instance="r1")
    consumer = StreamConsumer(
        redis, keys, group="ledger", consumer="r1", streams=["test"], handler=LedgerAgent(runtime).handle,
        verifier=verifier, policy=DeliveryPolicy(block_ms=100),
    )  # fmt: skip
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        await consumer.wait_started()
        async with RpcClient(redis, publisher, verifier, name="oneshot") as rpc:
            reply, _ = await rpc.call(Ping(text="hi"), source="agent://test/caller", deadline_s=5.0)
        consumer.stop()
    await wait_for(lambda: _stored(admin_dsn, reply.id), timeout=60)
    assert auditor.terminate() == 0


async def _stored(admin_dsn: str, envelope_id: str) -> bool:
    return envelope_id in {eid for _, eid in await stored_ids(admin_dsn)}


async def stored_count(admin_dsn: str, n: int) -> bool:
    conn = await asyncpg.connect(admin_dsn)
    try:
        count = await conn.fetchval("SELECT count(*) FROM l9_audit.entries")
    finally:
        await conn.close()
    return int(count) >= n


async def _dead(redis: RedisClient, keys: Keys, stream: str, n: int) -> bool:
    return int(await redis.xlen(keys.dead(stream))) >= n


async def _feed_len(redis: RedisClient, keys: Keys, n: int) -> bool:
    return len(await audit_feed(redis, keys)) >= n


async def test_two_auditors_write_a_chain_each_and_keep_each_chain_gapless(
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    spawn: Callable[..., AgentProcess],
    auditor_env: dict[str, str],
    admin_dsn: str,
) -> None:
    await migrate(admin_dsn, chains=2)
    layout = Layout(2)
    assert {layout.chain_of(s) for s in STREAMS} == {0, 1}, "the test's streams cover both chains"
    env = {**auditor_env, "L9_AUDIT_BATCH_SIZE": "50"}
    first, second = spawn("auditor", env=env), spawn("auditor", env=env)
    # each reading its own chain before anything is published (the first one up takes both,
    # then gives the second its share)
    await wait_for(lambda: sorted(map(sorted, _held([first, second]))) == [[0], [1]], timeout=60)
    publisher = Publisher(redis, keys, signer)
    published: list[PacketEnvelope] = []
    for round_ in range(20):
        batch = [envelope(round_ * 100 + i, STREAMS[i % 3]) for i in range(100)]
        await publisher.publish_many(batch)
        published += batch
        await asyncio.sleep(0.02)
    await wait_for(lambda: stored_count(admin_dsn, 2000), timeout=60)
    await wait_for(lambda: _feed_len(redis, keys, 2000))
    assert_exactly_once_in_chains(await stored_ids(admin_dsn), published, layout)
    feed = await audit_feed(redis, keys)
    fed = [cast(int, r["seq"]) for r in feed]
    for chain in (0, 1):
        seqs = [seq for seq in fed if layout.chain_at(seq) == chain]
        assert seqs == [layout.seq(chain, k) for k in range(1, len(seqs) + 1)], f"chain {chain}'s feed"
    async with await PostgresAuditStore.open(writer_dsn(admin_dsn)) as trail:
        assert (await trail.verify()).ok
    # each held one chain while the work went on (a process stopping leaves its chain to the other)
    assert sorted(map(sorted, _held([first, second]))) == [[0], [1]]
    assert first.terminate() == 0 and second.terminate() == 0
    assert all(_stat(p, "stored") > 0 for p in (first, second))


async def test_a_second_auditor_of_a_one_chain_trail_stands_by_and_takes_over_a_killed_one(
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    spawn: Callable[..., AgentProcess],
    auditor_env: dict[str, str],
    admin_dsn: str,
) -> None:
    env = {**auditor_env, "L9_AUDIT_BATCH_SIZE": "50", "L9_HEARTBEAT_MS": "100", "L9_LEASE_MS": "1000"}
    first, second = spawn("auditor", env=env), spawn("auditor", env=env)
    await wait_for(lambda: _holds_chains([first, second], {0}), timeout=60)
    writer, standby = (first, second) if _chains_held(first) else (second, first)
    assert _chains_held(standby) == set(), "two auditors never hold one chain"
    publisher = Publisher(redis, keys, signer)
    early = [envelope(i, STREAMS[i % 3]) for i in range(300)]
    await publisher.publish_many(early)
    await wait_for(lambda: stored_count(admin_dsn, 300), timeout=60)
    writer.kill9()
    late = [envelope(1000 + i, STREAMS[i % 3]) for i in range(300)]
    await publisher.publish_many(late)
    await wait_for(lambda: stored_count(admin_dsn, 600), timeout=60)
    assert _chains_held(standby) == {0}
    assert_exactly_once(await stored_ids(admin_dsn), early + late)
    assert standby.terminate() == 0


def _chains_held(proc: AgentProcess) -> set[int]:
    """The chains ``proc`` holds, from its log (taken, then given up)."""
    held: set[int] = set()
    for event in proc.log_events():
        if event.get("event") == "auditor.chains.taken":
            held |= set(cast(list[int], event["chains"]))
        elif event.get("event") == "auditor.chains.given_up":
            held.discard(cast(int, event["chain"]))
    return held


def _held(procs: list[AgentProcess]) -> list[set[int]]:
    return [_chains_held(p) for p in procs]


def _holds_chains(procs: list[AgentProcess], chains: set[int]) -> bool:
    """Every chain of ``chains`` held by one of ``procs``, each by one."""
    held = [_chains_held(p) for p in procs]
    return sorted(c for h in held for c in h) == sorted(chains)


def assert_exactly_once_in_chains(
    rows: list[tuple[int, str]], published: list[PacketEnvelope], layout: Layout
) -> None:
    """Each envelope stored once, and each chain's seqs gapless from its first."""
    assert sorted(eid for _, eid in rows) == sorted(e.id for e in published)
    for chain in range(layout.chains):
        seqs = [seq for seq, _ in rows if layout.chain_at(seq) == chain]
        assert seqs == [layout.seq(chain, k) for k in range(1, len(seqs) + 1)], f"chain {chain} has a gap"


def _stat(proc: AgentProcess, name: str) -> int:
    stops = [e for e in proc.log_events() if e.get("event") == "agent.stopped"]
    return int(stops[-1][name]) if stops else 0  # type: ignore[call-overload]


async def test_checkpoints_every_n_entries_in_the_trail_and_on_disk(
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    spawn: Callable[..., AgentProcess],
    auditor_env: dict[str, str],
    admin_dsn: str,
    trail: PostgresAuditStore,
    tmp_path: Path,
) -> None:
    env = {**auditor_env, "L9_AUDIT_CHECKPOINT_EVERY": "100", "L9_AUDIT_BATCH_SIZE": "100"}
    auditor = spawn("auditor", env=env)
    publisher = Publisher(redis, keys, signer)
    for round_ in range(5):
        await publisher.publish_many([envelope(round_ * 100 + i) for i in range(100)])
        await wait_for(partial(stored_count, admin_dsn, (round_ + 1) * 100))
    await wait_for(lambda: _checkpoint_at(trail, 500))
    checkpoints = await trail.checkpoints()
    assert checkpoints[-1].seq == 500 and len(checkpoints) >= 2

    def files() -> list[Path]:
        return sorted((tmp_path / "checkpoints").glob("checkpoint-*.json"))

    await wait_for(lambda: len(files()) == len(checkpoints))  # each file is written after its commit
    trusted = _trusted(Path(env["L9_AUDIT_KEY_FILE"]))
    report = await trail.verify(trusted_keys=trusted)
    assert report.ok and report.anchors_matched >= 2, report.summary()
    assert auditor.terminate() == 0


def _trusted(key_file: Path) -> dict[str, bytes]:
    return SigningKey.from_private_bytes(bytes.fromhex(key_file.read_text())).trusted()


async def _checkpoint_at(trail: PostgresAuditStore, seq: int) -> bool:
    last = await trail.last_checkpoint()
    return last is not None and last.seq == seq


# -- crashes ---------------------------------------------------------------------------------------

STAGES = ("before_copy", "before_commit", "before_xack")


class Flow:
    """Envelopes published 40 at a time, every 0.1 s, on the test's streams and 7 runs, until
    ``stop`` is set: at most 400/s, so more than a round's three batches of 60 arrive while an
    auditor starts, and a survivor's backlog stays small however long the rounds take."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.published: list[PacketEnvelope] = []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            batch = [envelope(i + k, STREAMS[(i + k) % 3], run=f"run-{i % 7}") for k in range(40)]
            await self.publisher.publish_many(batch)
            self.published.extend(batch)
            i += 40
            await asyncio.sleep(0.1)


async def test_kill_9_at_every_stage_loses_and_repeats_nothing(
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    spawn: Callable[..., AgentProcess],
    auditor_env: dict[str, str],
    admin_dsn: str,
    trail: PostgresAuditStore,
) -> None:
    """9 self-inflicted SIGKILLs (3 at each stage: the 1st, 2nd and 3rd time the process
    reaches it) and 3 from outside at random moments of its work, while envelopes keep
    flowing; then one clean auditor finishes the work."""
    flow = Flow(Publisher(redis, keys, signer))
    published = flow.published
    rng = random.Random(9)

    env = {**auditor_env, "L9_AUDIT_BATCH_SIZE": "60", "L9_HEARTBEAT_MS": "100", "L9_LEASE_MS": "1000"}
    flowing = asyncio.create_task(flow.run())
    kills: dict[str, int] = dict.fromkeys(("outside", *STAGES), 0)
    try:
        for round_ in range(12):
            if round_ % 4 == 3:
                proc = spawn("auditor", "--instance", "a", env=env)
                await wait_for(partial(_at_work, redis, keys, proc), timeout=120)
                await asyncio.sleep(rng.uniform(0.0, 0.5))
                proc.kill9()
                kills["outside"] += 1
                continue
            stage = STAGES[sum(kills[s] for s in STAGES) % 3]
            failpoint = f"{stage}:{kills[stage] + 1}"
            proc = spawn("auditor", "--instance", "a", env={**env, "L9_AUDIT_FAILPOINT": failpoint})
            code = await asyncio.to_thread(proc.proc.wait, 120)
            assert code == -9, f"auditor exited {code}, see {proc.log_path}"
            hit = [e["stage"] for e in proc.log_events() if e.get("event") == "auditor.failpoint"]
            assert hit == [stage]
            kills[stage] += 1
    finally:
        flow.stop.set()
        await flowing
    assert kills == {"outside": 3, "before_copy": 3, "before_commit": 3, "before_xack": 3}
    # its previous lives left their read-ahead pending (some 2,000 entries); a restarted consumer
    # takes its own pending entries a batch per second (the auditor's discover interval): the
    # survivor's batches are bigger, or it would spend half a minute on them
    survivor = spawn("auditor", "--instance", "a", env={**env, "L9_AUDIT_BATCH_SIZE": "1000"})
    await wait_for(lambda: stored_count(admin_dsn, len(published)), timeout=120)
    await wait_for(lambda: _no_pending(redis, keys), timeout=60)
    assert_exactly_once(await stored_ids(admin_dsn), published)
    report = await trail.verify()
    assert report.ok, report.summary()
    await wait_for(lambda: _feed_len(redis, keys, len(published)), timeout=60)
    assert [r["seq"] for r in await audit_feed(redis, keys)] == list(range(1, len(published) + 1))
    assert survivor.terminate() == 0


async def test_kill_9_with_two_auditors_on_two_chains_loses_and_repeats_nothing(
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    spawn: Callable[..., AgentProcess],
    auditor_env: dict[str, str],
    admin_dsn: str,
) -> None:
    """A trail of two chains: a steady auditor, and a second one killed (SIGKILL) at every
    stage of its work, twice each, after it took a chain from the steady one; envelopes keep
    flowing to both chains. The steady one takes the dead one's chain back each time."""
    await migrate(admin_dsn, chains=2)
    layout = Layout(2)
    flow = Flow(Publisher(redis, keys, signer))
    published = flow.published

    env = {**auditor_env, "L9_AUDIT_BATCH_SIZE": "60", "L9_HEARTBEAT_MS": "100", "L9_LEASE_MS": "1000"}
    steady = spawn("auditor", "--instance", "b", env=env)
    await wait_for(lambda: _holds_chains([steady], {0, 1}), timeout=60)
    flowing = asyncio.create_task(flow.run())
    try:
        for round_ in range(6):
            stage = STAGES[round_ % 3]
            failpoint = f"{stage}:{round_ // 3 + 1}"
            proc = spawn("auditor", "--instance", "a", env={**env, "L9_AUDIT_FAILPOINT": failpoint})
            code = await asyncio.to_thread(proc.proc.wait, 120)
            assert code == -9, f"auditor exited {code}, see {proc.log_path}"
            assert _chains_held(proc), f"the killed auditor held no chain, see {proc.log_path}"
            hit = [e["stage"] for e in proc.log_events() if e.get("event") == "auditor.failpoint"]
            assert hit == [stage]
    finally:
        flow.stop.set()
        await flowing
    survivor = spawn("auditor", "--instance", "a", env={**env, "L9_AUDIT_BATCH_SIZE": "1000"})
    await wait_for(lambda: stored_count(admin_dsn, len(published)), timeout=120)
    await wait_for(lambda: _no_pending(redis, keys), timeout=60)
    assert_exactly_once_in_chains(await stored_ids(admin_dsn), published, layout)
    async with await PostgresAuditStore.open(writer_dsn(admin_dsn)) as trail:
        report = await trail.verify()
    assert report.ok, report.summary()
    await wait_for(lambda: _feed_len(redis, keys, len(published)), timeout=60)
    fed = [cast(int, r["seq"]) for r in await audit_feed(redis, keys)]
    assert sorted(fed) == sorted(seq for seq, _ in await stored_ids(admin_dsn))
    assert survivor.terminate() == 0 and steady.terminate() == 0


async def _at_work(redis: RedisClient, keys: Keys, proc: AgentProcess) -> bool:
    """``proc`` holds the consumer name (its heartbeat, not the last one killed's): it is reading."""
    assert proc.proc.poll() is None, f"auditor exited {proc.proc.returncode}, see {proc.log_path}"
    beat = await redis.get(keys.heartbeat(f"{GROUP}-a"))
    return beat is not None and json.loads(beat)["pid"] == proc.pid


async def _no_pending(redis: RedisClient, keys: Keys) -> bool:
    return await auditor_pending(redis, keys, STREAMS) == 0


# -- Postgres away ---------------------------------------------------------------------------------


class PgProxy:
    """TCP in front of the embedded Postgres' unix socket, which a test can cut and restore."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.port = 0
        self.server: asyncio.Server | None = None
        self.pipes: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.pipes):
            writer.transport.abort()
        self.pipes.clear()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.socket_path)
        except OSError:
            writer.transport.abort()
            return
        self.pipes.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.pipes.discard(writer)
            writer.transport.abort()


def _proxied(admin_dsn: str, port: int) -> tuple[str, str]:
    """The admin URL through the proxy, and the unix socket it stands in for."""
    parts = urlsplit(admin_dsn)
    query = parse_qs(parts.query)
    socket_path = f"{query['host'][0]}/.s.PGSQL.{query['port'][0]}"
    return f"postgresql://postgres@127.0.0.1:{port}{parts.path}", socket_path


async def test_postgres_away_keeps_entries_pending_then_catches_up(
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    spawn: Callable[..., AgentProcess],
    auditor_env: dict[str, str],
    admin_dsn: str,
    trail: PostgresAuditStore,
) -> None:
    _, socket_path = _proxied(admin_dsn, 0)
    proxy = PgProxy(socket_path)
    await proxy.start()
    url, _ = _proxied(admin_dsn, proxy.port)
    auditor = spawn("auditor", env={**auditor_env, "DATABASE_URL": url})
    publisher = Publisher(redis, keys, signer)
    first = [envelope(i) for i in range(100)]
    await publisher.publish_many(first)
    await wait_for(lambda: stored_count(admin_dsn, 100))
    await proxy.cut()
    second = [envelope(100 + i, "artifact") for i in range(200)]
    await publisher.publish_many(second)
    await asyncio.sleep(3)  # several retries while Postgres is away
    assert len(await stored_ids(admin_dsn)) == 100
    assert await auditor_pending(redis, keys, ("artifact",)) == 200, "read, unacked, kept pending"
    events = auditor.log_events()
    retries = [e for e in events if e.get("event") == "batch_consumer.handler_failed" and e.get("transient")]
    assert len(retries) >= 3 and auditor.proc.poll() is None
    assert [e["retry_in_s"] for e in retries[:3]] == sorted(cast(float, e["retry_in_s"]) for e in retries[:3])
    await proxy.start()  # same port
    await wait_for(lambda: stored_count(admin_dsn, 300), timeout=120)
    await wait_for(lambda: _no_pending(redis, keys))
    assert_exactly_once(await stored_ids(admin_dsn), first + second)
    assert (await trail.verify()).ok
    assert auditor.terminate() == 0
    await proxy.cut()
