"""The same bus workload on a standalone Redis and on a Redis Cluster, with 1, 2 and 3 consumers.

    .venv/bin/python -m benchmarks.cluster [--n 50000] [--streams 6] [--consumers 1,2,3]
        [--reps 3] [--batch 500] [--masters 3] [--replicas 1]

Prints one JSON object on stdout; progress goes to stderr.

Workload: ``--n`` signed envelopes spread round-robin over ``--streams`` streams
(each envelope type routed to its own stream by a ``Topology``, so one
``Publisher.publish_many`` batch spans every stream: on the cluster each node
gets its share of a batch in one write, the nodes at once). The stream names are
picked per run so that each falls on its own partition and, on the cluster,
stream ``i`` lands on master ``i mod masters`` (``stream_placement`` shows where).
The publisher runs in this process; ``C`` consumer processes (long-lived children,
``--role consumer``) are consumers of one group on every stream, each a
``StreamConsumer`` (the default policy of the agents: 256 in flight, 16 workers,
HMAC ``Verifier``) with a counting handler, its acks batched as the bus does; on
the cluster each one keeps one blocking XREADGROUP per slot under way.

Each configuration (server x C) runs ``--reps`` times, standalone and cluster
alternating, after one warm-up run per server. Throughput = N / (last ack flushed
in any consumer - first envelope built in the publisher), both ``time.monotonic()``
(one clock for every process of the machine). CPU: ``time.process_time()`` of the
publisher (over its publishing) and of each consumer process (up to its last ack),
and the Redis servers' own CPU (``INFO cpu`` of every node, masters and replicas
apart), each per envelope of the run. Every run checks that all N envelopes were
handled exactly once (count, sum and sum of squares of their sequence numbers
across the consumers), acked, none pending, none dead-lettered.

By default both servers are started here, each in its own temporary home (the
embedded stack, which also starts PostgreSQL, and a local cluster of ``--masters``
x (1 + ``--replicas``) nodes), with the same persistence (AOF, fsync every
second); ``--standalone-url`` / ``--cluster-url`` use running servers instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio
import redis
import redis.asyncio as aioredis
import redis.utils
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from redis.asyncio.cluster import RedisCluster

from benchmarks.bus_throughput import KEYRING, code_version, policy, progress, target
from bus import Delivery, Keys, Publisher, StreamConsumer, Topology, open_client, partition_of
from bus.connection import RedisClient, slot_of
from bus.keys import PARTITIONS
from envelope import PacketEnvelope, Payload, Signer, Verifier, registry

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "agent://bench/cluster-publisher-0"
GROUP = "bench"
SERVERS = ("standalone", "cluster")
TARGET_RATIO_C1 = 0.7
#: the cluster's consumer CPU per envelope over the standalone's may grow by this factor from
#: one consumer process to the most measured and still count as "not growing" (run-to-run noise)
CPU_OVERHEAD_TOLERANCE = 1.10
#: a consumer reports its ack count at most this often while a run is on
REPORT_INTERVAL_S = 0.005
RUN_TIMEOUT_S = 180.0
PROJECTION_MACHINES = (1, 2, 3, 6, 12, 24, 64)
#: the Redis commands counted per envelope (report name -> INFO commandstats name); redis-py's
#: cluster client asks a node for the keys of a command it cannot parse (COMMAND GETKEYS)
COUNTED_COMMANDS = {
    "xadd": "xadd",
    "xreadgroup": "xreadgroup",
    "xack": "xack",
    "command_getkeys": "command|getkeys",
}


class ClusterTick(Payload):
    seq: int


def tick_type(i: int) -> str:
    """The envelope type of stream ``i`` of a run (registered on first use, in every process)."""
    type_ = f"l9.bench.cluster_s{i}.v1"
    if type_ not in registry:
        # one payload model per type (the registry maps each model to one type)
        model = cast(type[Payload], type(f"ClusterTick{i}", (ClusterTick,), {"__module__": __name__}))
        registry.register(type_, model)
    return type_


def make_envelope(seq: int, types: Sequence[str]) -> PacketEnvelope:
    """As ``Agent.envelope_for`` builds one; envelope ``seq`` goes to stream ``seq mod S``."""
    data = ClusterTick(seq=seq).model_dump(mode="json")
    return PacketEnvelope.new(type=types[seq % len(types)], source=SOURCE, data=data, sequence=seq)


def emit_line(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# -- consumer side ---------------------------------------------------------------------------


class CountingConsumer(StreamConsumer):
    """A ``StreamConsumer`` that stamps the time (and its process's CPU time) of its last ack."""

    def __init__(self, *args: Any, on_ack: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_ack = on_ack
        self.acked = 0
        self.t_last_ack: float | None = None
        self.cpu_last_ack: float | None = None

    def _released(self, n: int) -> None:
        super()._released(n)
        if n > 0:  # every entry leaves hand by its ack here: no handler fails, none is refused
            self.acked += n
            self.t_last_ack, self.cpu_last_ack = time.monotonic(), time.process_time()
            self.on_ack()


class ConsumerClients:
    """One L9 client per server, opened on first use and kept for every run of the child."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls
        self.clients: dict[str, RedisClient] = {}

    async def get(self, server: str) -> RedisClient:
        if server not in self.clients:
            url = self.urls[server]
            self.clients[server] = await open_client(url, cluster="yes" if server == "cluster" else "no")
        return self.clients[server]

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()


async def consume(
    clients: ConsumerClients, job: dict[str, Any], commands: MemoryObjectReceiveStream[dict[str, Any]]
) -> dict[str, Any]:
    """One run: consume until the publisher says ``finish`` (it has seen every ack reported)."""
    redis_client = await clients.get(job["server"])
    for i in range(len(job["streams"])):
        tick_type(i)
    handled, seq_sum, seq_sq_sum = 0, 0, 0
    changed = [anyio.Event()]

    async def handler(d: Delivery) -> None:
        nonlocal handled, seq_sum, seq_sq_sum
        seq = cast(ClusterTick, d.payload).seq
        handled += 1
        seq_sum += seq
        seq_sq_sum += seq * seq

    def on_ack() -> None:
        changed[0].set()

    consumer = CountingConsumer(
        redis_client,
        Keys(job["ns"]),
        group=GROUP,
        consumer=job["consumer"],
        streams=job["streams"],
        handler=handler,
        verifier=Verifier(KEYRING),
        policy=policy(),
        on_ack=on_ack,
    )

    async def report() -> None:
        """The ack count, at most every REPORT_INTERVAL_S while acks come in (idle: silent)."""
        last = -1
        while True:
            await changed[0].wait()
            changed[0] = anyio.Event()
            await anyio.sleep(REPORT_INTERVAL_S)
            if consumer.acked != last:
                last = consumer.acked
                emit_line({"progress": last})

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        await consumer.wait_started()
        cpu0 = time.process_time()
        emit_line({"ready": True})
        async with anyio.create_task_group() as side:
            side.start_soon(report)
            command = await commands.receive()
            side.cancel_scope.cancel()
        consumer.stop()
    if command.get("cmd") != "finish":
        raise RuntimeError(f"consumer: expected finish, got {command}")
    return {
        "result": True,
        "handled": handled,
        "acked": consumer.acked,
        "seq_sum": seq_sum,
        "seq_sq_sum": seq_sq_sum,
        "t_last_ack": consumer.t_last_ack,
        "cpu_s": (consumer.cpu_last_ack - cpu0) if consumer.cpu_last_ack is not None else 0.0,
        "left_in_flight": len(consumer.in_flight),
    }


async def child_main(urls: dict[str, str]) -> None:
    """Consumer role: JSON commands on stdin (``run`` jobs, ``finish``, ``exit``); ``ready``,
    ``progress`` lines (entries acked so far) and each run's result on stdout."""
    clients = ConsumerClients(urls)
    send, receive = anyio.create_memory_object_stream[dict[str, Any]](16)

    async def read_stdin(out: MemoryObjectSendStream[dict[str, Any]]) -> None:
        async with out:
            readline = sys.stdin.readline
            while line := (await anyio.to_thread.run_sync(readline, abandon_on_cancel=True)).strip():
                await out.send(json.loads(line))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(read_stdin, send)
            async for command in receive:
                if command.get("cmd") != "run":
                    break
                emit_line(await consume(clients, command, receive))
            tg.cancel_scope.cancel()
    finally:
        await clients.aclose()


# -- the publisher's side: servers and consumer processes --------------------------------------


@dataclass
class Node:
    name: str  # host:port
    role: str  # master | replica
    client: aioredis.Redis


@dataclass
class Server:
    """A server under test: the L9 client the publisher uses, and one plain client per node
    for INFO (CPU, command counts, persistence)."""

    label: str
    url: str
    client: RedisClient
    nodes: list[Node]
    owned: bool

    @classmethod
    async def open(cls, label: str, url: str, *, owned: bool) -> Server:
        client = await open_client(url, cluster="yes" if label == "cluster" else "no")
        if isinstance(client, RedisCluster):
            found = [(n, "master") for n in client.get_primaries()]
            found += [(n, "replica") for n in client.get_replicas()]
            nodes = [
                Node(n.name, role, aioredis.Redis(host=n.host, port=int(n.port), **_auth(url)))
                for n, role in found
            ]
        else:
            nodes = [Node(_where(url), "master", aioredis.from_url(url))]
        return cls(label, url, client, nodes, owned)

    @property
    def masters(self) -> list[str]:
        return sorted(n.name for n in self.nodes if n.role == "master")

    def node_of(self, key: str) -> str:
        if isinstance(self.client, RedisCluster):
            node = self.client.get_node_from_key(key)
            if node is None:
                raise RuntimeError(f"no cluster node serves the slot of {key}")
            return str(node.name)
        return self.nodes[0].name

    async def snapshot(self) -> dict[str, dict[str, float]]:
        """Per node: its CPU seconds so far and the calls of the counted commands."""
        out: dict[str, dict[str, float]] = {}
        for node in self.nodes:
            cpu, stats = await node.client.info("cpu"), await node.client.info("commandstats")
            out[node.name] = {"cpu_s": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])}
            for name, command in COUNTED_COMMANDS.items():
                out[node.name][name] = float(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
        return out

    async def defer_aof_rewrites(self) -> str:
        """On our own servers only: keep automatic AOF rewrites out of the measurements."""
        config = await self.nodes[0].client.config_get("appendonly", "appendfsync")
        note = f"appendonly {config.get('appendonly')}, appendfsync {config.get('appendfsync')}"
        if not self.owned:
            return f"{note} (server config untouched)"
        for node in self.nodes:
            await node.client.config_set("auto-aof-rewrite-min-size", str(64 << 30))
        return f"{note}; auto AOF rewrite deferred (min size 64 GB) on every node"

    async def settle(self) -> None:
        """Start a measurement only once no node runs an AOF rewrite or RDB save."""
        for _ in range(600):
            busy = False
            for node in self.nodes:
                info = await node.client.info("persistence")
                busy = busy or bool(info.get("aof_rewrite_in_progress") or info.get("rdb_bgsave_in_progress"))
            if not busy:
                return
            await asyncio.sleep(0.05)

    async def cleanup(self, pattern: str) -> int:
        keys = [k async for k in self.client.scan_iter(match=pattern, count=1000)]
        for start in range(0, len(keys), 1000):
            await self.client.delete(*keys[start : start + 1000])
        return len(keys)

    async def aclose(self) -> None:
        await self.client.aclose()
        for node in self.nodes:
            await node.client.aclose()


def _where(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def _auth(url: str) -> dict[str, Any]:
    """The credentials of ``url``, for the per-node clients of a cluster."""
    parts = urllib.parse.urlsplit(url)
    auth = {"username": parts.username, "password": parts.password}
    return {k: urllib.parse.unquote(v) for k, v in auth.items() if v}


class Child:
    """A consumer process, driven over its stdin/stdout."""

    def __init__(self, index: int, urls: dict[str, str], changed: asyncio.Event) -> None:
        self.index, self.urls, self.changed = index, urls, changed
        self.proc: asyncio.subprocess.Process | None = None
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader: asyncio.Task[None] | None = None
        self.acked = 0
        self.exited = False

    async def open(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.cluster", "--role", "consumer",
            "--standalone-url", self.urls["standalone"], "--cluster-url", self.urls["cluster"],
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT, env=env,
        )  # fmt: skip
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            if "progress" in msg:
                self.acked = int(msg["progress"])
                self.changed.set()
            else:
                await self.replies.put(msg)
        self.exited = True
        self.changed.set()
        await self.replies.put({"exited": await self.proc.wait()})

    async def send(self, msg: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        await self.proc.stdin.drain()

    async def reply(self, what: str) -> dict[str, Any]:
        msg = await self.replies.get()
        if what not in msg:
            raise RuntimeError(f"consumer {self.index}: expected {what}, got {msg}")
        return msg

    async def start(self, job: dict[str, Any]) -> None:
        self.acked = 0
        await self.send(job)
        await self.reply("ready")

    async def finish(self) -> dict[str, Any]:
        await self.send({"cmd": "finish"})
        return await self.reply("result")

    async def close(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            await self.send({"cmd": "exit"})
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self.reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.reader, 5)


# -- measuring ----------------------------------------------------------------------------------


def pick_streams(server: Server, keys: Keys, count: int) -> list[str]:
    """``count`` stream names, each on its own partition; on a cluster stream ``i`` on master
    ``i mod masters`` where the namespace's partitions allow it (else on any free partition)."""
    masters = server.masters if server.label == "cluster" else []
    chosen: list[str] = []
    used: set[int] = set()

    def candidates() -> Iterator[str]:
        return (f"tick.{k}" for k in range(20 * PARTITIONS))

    for i in range(count):
        want = masters[i % len(masters)] if masters else None
        fits = [
            name
            for name in candidates()
            if partition_of(name) not in used and (want is None or server.node_of(keys.stream(name)) == want)
        ]
        fits = fits or [name for name in candidates() if partition_of(name) not in used]
        chosen.append(fits[0])
        used.add(partition_of(fits[0]))
    return chosen


def per_envelope_us(seconds: float, n: int) -> float:
    return round(seconds / n * 1e6, 2)


@dataclass
class Bench:
    args: argparse.Namespace
    servers: dict[str, Server]
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    counter: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    children: list[Child] = field(default_factory=list)
    placement: dict[str, Any] | None = None
    #: the machine's 1-minute load average before the first run (other work on the same CPUs)
    load_at_start: float = field(default_factory=lambda: round(os.getloadavg()[0], 2))

    def namespace(self, label: str) -> str:
        self.counter += 1
        return f"l9cbench.{self.run_id}.{self.counter}.{label}"

    async def wait_acked(self, used: Sequence[Child], n: int) -> None:
        while sum(c.acked for c in used) < n:
            if any(c.exited for c in used):
                raise RuntimeError("a consumer process exited during a run")
            self.changed.clear()
            await self.changed.wait()

    async def measure(
        self, server: Server, consumers: int, n: int, *, warmup: bool = False
    ) -> dict[str, Any]:
        """One run: ``n`` envelopes over the streams, ``consumers`` consumer processes."""
        args, ns = self.args, self.namespace(f"{server.label}-c{consumers}")
        keys = Keys(ns)
        names = pick_streams(server, keys, args.streams)
        types = [tick_type(i) for i in range(len(names))]
        pub = Publisher(
            server.client, keys, Signer(KEYRING, "bench"), Topology(dict(zip(types, names, strict=True)))
        )
        used = self.children[:consumers]
        await server.settle()
        job = {"cmd": "run", "server": server.label, "ns": ns, "streams": names}
        await asyncio.gather(*(c.start({**job, "consumer": f"bench-{c.index}"}) for c in used))
        before = await server.snapshot()
        cpu0 = time.process_time()
        t0 = time.monotonic()
        for start in range(0, n, args.batch):
            await pub.publish_many(
                [make_envelope(i, types) for i in range(start, min(n, start + args.batch))]
            )
        t_published = time.monotonic()
        pub_cpu = time.process_time() - cpu0
        async with asyncio.timeout(RUN_TIMEOUT_S):
            await self.wait_acked(used, n)
        after = await server.snapshot()
        results = await asyncio.gather(*(c.finish() for c in used))
        check = await self.check(server, keys, names, n, results)
        await server.cleanup(f"{ns}:*")
        t_end = max(r["t_last_ack"] for r in results if r["t_last_ack"] is not None)
        elapsed = t_end - t0
        masters = [x.name for x in server.nodes if x.role == "master"]
        replicas = [x.name for x in server.nodes if x.role == "replica"]

        def node_cpu(names_: list[str]) -> float:
            return sum(after[x]["cpu_s"] - before[x]["cpu_s"] for x in names_)

        consumer_cpu = [float(r["cpu_s"]) for r in results]
        out: dict[str, Any] = {
            "server": server.label,
            "consumers": consumers,
            "n": n,
            "seconds": round(elapsed, 4),
            "envelopes_per_s": round(n / elapsed, 1),
            "publish_seconds": round(t_published - t0, 4),
            "publisher_cpu_us_per_envelope": per_envelope_us(pub_cpu, n),
            "consumer_cpu_us_per_envelope": per_envelope_us(sum(consumer_cpu), n),
            "consumer_cpu_us_per_handled_envelope_by_process": [
                per_envelope_us(cpu, r["handled"]) if r["handled"] else None
                for cpu, r in zip(consumer_cpu, results, strict=True)
            ],
            "consumer_handled_by_process": [r["handled"] for r in results],
            "redis_master_cpu_us_per_envelope": per_envelope_us(node_cpu(masters), n),
            "redis_replica_cpu_us_per_envelope": per_envelope_us(node_cpu(replicas), n) if replicas else None,
            "redis_cpu_us_per_envelope_by_node": {
                x: per_envelope_us(after[x]["cpu_s"] - before[x]["cpu_s"], n) for x in masters + replicas
            },
            "redis_calls_per_envelope": {
                c: round(sum(after[x][c] - before[x][c] for x in masters) / n, 4) for c in COUNTED_COMMANDS
            },
            "busy_share": {  # CPU time over wall time: 1.0 is a process using one core throughout
                "publisher": round(pub_cpu / max(1e-9, t_published - t0), 3),
                "consumers": [round(cpu / elapsed, 3) for cpu in consumer_cpu],
                "redis_masters": {
                    x: round((after[x]["cpu_s"] - before[x]["cpu_s"]) / elapsed, 3) for x in masters
                },
            },
        }
        out["total_cpu_us_per_envelope"] = round(
            out["publisher_cpu_us_per_envelope"]
            + out["consumer_cpu_us_per_envelope"]
            + out["redis_master_cpu_us_per_envelope"]
            + (out["redis_replica_cpu_us_per_envelope"] or 0.0),
            2,
        )
        streams_per_node: dict[str, int] = {}
        for name in names:
            node = server.node_of(keys.stream(name))
            streams_per_node[node] = streams_per_node.get(node, 0) + 1
        out["streams_per_node"] = streams_per_node
        out["check"] = check
        if server.label == "cluster" and self.placement is None and not warmup:
            self.placement = {
                "namespace": ns,
                "streams": {
                    name: {
                        "key": keys.stream(name),
                        "partition": partition_of(name),
                        "slot": slot_of(keys.stream(name)),
                        "node": server.node_of(keys.stream(name)),
                    }
                    for name in names
                },
            }
        return out

    async def check(
        self, server: Server, keys: Keys, names: list[str], n: int, results: Sequence[dict[str, Any]]
    ) -> dict[str, Any]:
        """Every envelope handled exactly once and acked; none pending, none dead-lettered."""
        handled = sum(r["handled"] for r in results)
        acked = sum(r["acked"] for r in results)
        seq_sum = sum(r["seq_sum"] for r in results)
        seq_sq_sum = sum(r["seq_sq_sum"] for r in results)
        length = pending = dead = 0
        for name in names:
            length += await server.client.xlen(keys.stream(name))
            pending += (await server.client.xpending(keys.stream(name), GROUP))["pending"]
            dead += await server.client.xlen(keys.dead(name))
        want_sum, want_sq = n * (n - 1) // 2, (n - 1) * n * (2 * n - 1) // 6
        if (handled, acked, length, pending, dead, seq_sum, seq_sq_sum) != (n, n, n, 0, 0, want_sum, want_sq):
            raise RuntimeError(
                f"{server.label}: n={n} handled={handled} acked={acked} xlen={length} pending={pending} "
                f"dead={dead} seq_sum={seq_sum} (want {want_sum}) seq_sq_sum={seq_sq_sum} (want {want_sq})"
            )
        return {
            "handled": handled,
            "acked": acked,
            "xlen": length,
            "pending": pending,
            "dead": dead,
            "exactly_once": True,
        }

    async def run(self) -> dict[str, Any]:
        args = self.args
        urls = {label: server.url for label, server in self.servers.items()}
        persistence = {label: await s.defer_aof_rewrites() for label, s in self.servers.items()}
        runs: dict[str, dict[int, list[dict[str, Any]]]] = {
            label: {c: [] for c in args.consumers} for label in SERVERS
        }
        self.children = [Child(i, urls, self.changed) for i in range(max(args.consumers))]
        try:
            await asyncio.gather(*(c.open() for c in self.children))
            for label in SERVERS:
                if args.warmup:
                    progress(f"warm-up {label}: {args.warmup} envelopes, {max(args.consumers)} consumers")
                    await self.measure(self.servers[label], max(args.consumers), args.warmup, warmup=True)
            for rep in range(args.reps):
                for k, consumers in enumerate(args.consumers):
                    order = SERVERS if (rep + k) % 2 == 0 else SERVERS[::-1]
                    for label in order:
                        r = await self.measure(self.servers[label], consumers, args.n)
                        runs[label][consumers].append(r)
                        progress(
                            f"rep {rep + 1}/{args.reps} {label} C={consumers}: "
                            f"{r['envelopes_per_s']:,.0f}/s  pub {r['publisher_cpu_us_per_envelope']} us  "
                            f"consumers {r['consumer_cpu_us_per_envelope']} us  "
                            f"redis {r['redis_master_cpu_us_per_envelope']}"
                            f"+{r['redis_replica_cpu_us_per_envelope']} us /envelope"
                        )
        finally:
            await asyncio.gather(*(c.close() for c in self.children))
            for server in self.servers.values():
                with contextlib.suppress(Exception):
                    await server.cleanup(f"l9cbench.{self.run_id}.*")
        return await self.report(runs, persistence)

    # -- the report -------------------------------------------------------------------------------

    @staticmethod
    def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
        """One configuration: best envelopes/s of the reps, medians of the CPU figures."""
        rates = [r["envelopes_per_s"] for r in runs]

        def median(key: str) -> float | None:
            values = [r[key] for r in runs if r[key] is not None]
            return round(statistics.median(values), 2) if values else None

        by_process = [
            round(statistics.median(v for v in column if v is not None), 2)
            if any(v is not None for v in column)
            else None
            for column in zip(
                *(r["consumer_cpu_us_per_handled_envelope_by_process"] for r in runs), strict=True
            )
        ]
        return {
            "envelopes_per_s": max(rates),
            "median_envelopes_per_s": statistics.median(rates),
            "runs_envelopes_per_s": rates,
            "publisher_cpu_us_per_envelope": median("publisher_cpu_us_per_envelope"),
            "consumer_cpu_us_per_envelope": median("consumer_cpu_us_per_envelope"),
            "consumer_cpu_us_per_handled_envelope_by_process": by_process,
            "redis_master_cpu_us_per_envelope": median("redis_master_cpu_us_per_envelope"),
            "redis_replica_cpu_us_per_envelope": median("redis_replica_cpu_us_per_envelope"),
            "total_cpu_us_per_envelope": median("total_cpu_us_per_envelope"),
            "redis_calls_per_envelope": {
                c: round(statistics.median(r["redis_calls_per_envelope"][c] for r in runs), 4)
                for c in COUNTED_COMMANDS
            },
            "runs": runs,
        }

    async def report(
        self, runs: dict[str, dict[int, list[dict[str, Any]]]], persistence: dict[str, str]
    ) -> dict[str, Any]:
        args = self.args
        figures = {
            label: {f"c{c}": self.summary(by_c[c]) for c in args.consumers} for label, by_c in runs.items()
        }

        def ratio(a: float | None, b: float | None) -> float | None:
            return round(a / b, 3) if a is not None and b else None

        compared = (
            "envelopes_per_s",
            "publisher_cpu_us_per_envelope",
            "consumer_cpu_us_per_envelope",
            "redis_master_cpu_us_per_envelope",
            "total_cpu_us_per_envelope",
        )
        ratios = {
            f"c{c}": {
                key: ratio(figures["cluster"][f"c{c}"][key], figures["standalone"][f"c{c}"][key])
                for key in compared
            }
            for c in args.consumers
        }
        first, last = min(args.consumers), max(args.consumers)
        ratio_c1 = ratios["c1"]["envelopes_per_s"] if 1 in args.consumers else None
        overhead = {f"c{c}": ratios[f"c{c}"]["consumer_cpu_us_per_envelope"] for c in args.consumers}
        low, high = overhead[f"c{first}"], overhead[f"c{last}"]
        growth = round(high / low, 3) if low and high is not None else None
        targets = {
            "cluster_ratio_c1_ge_0.7": target(ratio_c1, TARGET_RATIO_C1, at_most=False),
            "consumer_cpu_overhead_not_growing": {
                **target(growth, CPU_OVERHEAD_TOLERANCE if last > first else None, at_most=True),
                "cluster_over_standalone_consumer_cpu_by_c": overhead,
                "measure": (
                    f"(cluster / standalone consumer CPU per envelope, all consumer processes) at "
                    f"C={last} over the same at C={first}: met when at most {CPU_OVERHEAD_TOLERANCE} "
                    f"(the cluster's extra CPU per envelope does not grow with the process count; "
                    f"{CPU_OVERHEAD_TOLERANCE - 1:.0%} allowed for run-to-run noise)"
                ),
            },
        }
        standalone_server = await self.servers["standalone"].nodes[0].client.info("server")
        return {
            "standalone": figures["standalone"],
            "cluster": figures["cluster"],
            "ratio": ratios,
            "ratio_c1": ratio_c1,
            "targets": targets,
            "all_targets_met": all(t["met"] for t in targets.values()),
            "targets_note": (
                "reported, never asserted: on 2 cores the cluster (its nodes, the publisher and the "
                "consumers share the same 2 CPUs) cannot be faster than one standalone server; the "
                "cluster's replicas (redis_replica_cpu_us_per_envelope) do work a standalone server "
                "does not, on the same CPUs (--replicas 0 leaves them out)"
            ),
            "projection": self.projection(figures["cluster"], figures["standalone"]),
            "stream_placement": self.placement,
            "reported": (
                "per configuration (server x cN consumer processes): envelopes_per_s = best of reps; "
                "CPU figures = medians of reps, us per envelope of the run; ratio = cluster / standalone "
                "for the same C; stream_placement: partition, slot and node of each stream of the first "
                "measured cluster run (each run picks its names for its own namespace the same way)"
            ),
            "method": self.method(),
            "n": args.n,
            "streams": args.streams,
            "consumers": list(args.consumers),
            "reps": args.reps,
            "warmup": args.warmup,
            "batch_size": args.batch,
            "cluster_shape": {
                "masters": len(self.servers["cluster"].masters),
                "replicas": sum(n.role == "replica" for n in self.servers["cluster"].nodes),
                "nodes": {n.name: n.role for n in self.servers["cluster"].nodes},
            },
            "publish_replicas": 0,
            "delivery_policy": {"max_in_flight": policy().max_in_flight, "concurrency": policy().concurrency},
            "redis_persistence": persistence,
            "redis_version": standalone_server.get("redis_version"),
            "servers_source": {
                label: "own (temp home)" if s.owned else "given URL" for label, s in self.servers.items()
            },
            "python_version": platform.python_version(),
            "event_loop": "asyncio (default, no uvloop)",
            "redis_py_version": redis.__version__,
            "hiredis_used": bool(redis.utils.HIREDIS_AVAILABLE),
            "cpu_count": os.cpu_count(),
            "load_average_1min": {"start": self.load_at_start, "end": round(os.getloadavg()[0], 2)},
            "platform": platform.platform(),
            "code_under_test": code_version(),
        }

    def projection(self, cluster: dict[str, Any], standalone: dict[str, Any]) -> dict[str, Any]:
        """What N machines could sustain, from this run's cluster CPU per envelope (see ``model``)."""
        args = self.args

        def worst(key: str) -> float:
            return max(float(fig[key] or 0.0) for fig in cluster.values())

        master_us = worst("redis_master_cpu_us_per_envelope")
        replica_us = worst("redis_replica_cpu_us_per_envelope")
        publisher_us = worst("publisher_cpu_us_per_envelope")
        consumer_us = worst("consumer_cpu_us_per_envelope")
        cores = args.machine_cores
        others_us = publisher_us + consumer_us + replica_us
        master_cap = 1e6 / master_us
        rest_cap = (cores - 1) * 1e6 / others_us if cores > 1 else 0.0
        per_machine = min(master_cap, rest_cap)
        bottleneck = "master" if master_cap <= rest_cap else "publisher + consumers (+ replica) cores"
        cores_to_saturate = math.ceil(master_cap * others_us / 1e6)
        measured_total = {c: fig["total_cpu_us_per_envelope"] for c, fig in cluster.items()}
        best = {c: fig["envelopes_per_s"] for c, fig in cluster.items()}
        ncpu = os.cpu_count() or 1
        return {
            "model": (
                "Every process here is single-threaded (Redis' main thread, one asyncio loop), so a "
                "process tops out at 1e6 / (its CPU us per envelope) envelopes/s on one core. An "
                "envelope is written, read and acked on the one master that owns its stream's slot, "
                "then applied by that master's replicas; publishers and consumers can be multiplied, "
                "a stream's master cannot. A machine = one master on one core plus its share of the "
                "replicas, publishers and consumers on its other cores: per machine "
                "min(1e6 / master_us, (cores - 1) * 1e6 / (publisher_us + consumer_us + replica_us)). "
                "N machines = N x that, while the load spreads evenly over the masters: a namespace's "
                "streams fall on at most 64 partitions (slots), so at most 64 masters share one "
                "namespace's distinct streams, and one stream never goes faster than one master "
                "(1e6 / master_us). Inputs: this run's cluster figures, the highest over the consumer "
                "counts measured. Not modelled: network (measured on loopback), uneven slot spread, "
                "a consumer reading more slots than here making more reads per envelope, failover."
            ),
            "inputs_us_per_envelope": {
                "master": master_us,
                "replicas": replica_us,
                "publisher": publisher_us,
                "consumers": consumer_us,
            },
            "process_ceiling_envelopes_per_s": {
                "master": round(master_cap),
                "publisher": round(1e6 / publisher_us) if publisher_us else None,
                "consumer": round(1e6 / consumer_us) if consumer_us else None,
            },
            "machine_cores": cores,
            "per_machine_envelopes_per_s": round(per_machine),
            "per_machine_bottleneck": bottleneck,
            "other_cores_to_saturate_one_master": cores_to_saturate,
            "by_machines_envelopes_per_s": {
                str(m): round(m * per_machine) for m in PROJECTION_MACHINES if m <= PARTITIONS
            },
            "one_stream_ceiling_envelopes_per_s": round(master_cap),
            "one_namespace_ceiling_envelopes_per_s": round(PARTITIONS * master_cap),
            "this_machine_check": {
                "note": (
                    f"this run, all processes on {ncpu} cores: if CPU-bound, envelopes/s would be about "
                    f"{ncpu} x 1e6 / total CPU us per envelope; measured beside it"
                ),
                "cpu_bound_estimate_envelopes_per_s": {
                    c: round(ncpu * 1e6 / us) if us else None for c, us in measured_total.items()
                },
                "measured_envelopes_per_s": best,
                "standalone_cpu_bound_estimate_envelopes_per_s": {
                    c: round(ncpu * 1e6 / fig["total_cpu_us_per_envelope"])
                    if fig["total_cpu_us_per_envelope"]
                    else None
                    for c, fig in standalone.items()
                },
            },
        }

    def method(self) -> str:
        args = self.args
        shape = self.servers["cluster"]
        masters = len(shape.masters)
        replicas = sum(n.role == "replica" for n in shape.nodes)
        return (
            f"{args.n} envelopes per run, round-robin over {args.streams} streams (one envelope type "
            f"routed to each, every stream on its own partition; on the cluster ({masters} masters, "
            f"{replicas} replicas) stream i on master i mod {masters}), published by this process with "
            f"Publisher.publish_many in batches of {args.batch} spanning every stream (HMAC Signer, no "
            f"WAIT), consumed by C long-lived child processes, consumers of one group on every stream "
            f"(StreamConsumer, 256 in flight / 16 workers, Verifier, counting handler, batched XACK; on "
            f"the cluster one blocking XREADGROUP per slot at once). C in {list(args.consumers)}; per rep "
            f"and C, standalone and cluster alternate (which goes first alternates too); {args.reps} "
            f"reps after one warm-up run of {args.warmup} envelopes per server; each run in its own "
            f"namespace, deleted afterwards. Throughput = N / (last ack flushed in any consumer - first "
            f"envelope built), time.monotonic() across processes; best of reps. CPU per envelope: "
            f"time.process_time() of the publisher over its publishing and of each consumer process "
            f"from ready to its last ack (consumer_cpu_us_per_envelope: all consumer processes "
            f"together, per envelope of the run; *_by_process: each per envelope it handled), and "
            f"INFO cpu (user + sys) of every Redis node from the consumers' start to the last ack "
            f"reported, masters and replicas apart; medians of reps. redis_calls_per_envelope: INFO "
            f"commandstats calls on the masters (command_getkeys: COMMAND GETKEYS, which redis-py's "
            f"cluster client sends to learn the keys of a command it cannot parse itself, as "
            f"XREADGROUP). The consumers report their ack counts to the "
            f"publisher's process (a line on a pipe, at most every {REPORT_INTERVAL_S * 1000:g} ms), "
            f"which tells them to stop once all N are acked. Every "
            f"run checks all N handled exactly once (count, sum and sum of squares of the sequence "
            f"numbers), acked, none pending, none dead-lettered."
        )


async def parent_main(args: argparse.Namespace, urls: dict[str, str], owned: set[str]) -> dict[str, Any]:
    servers: dict[str, Server] = {}
    try:
        for label in SERVERS:
            servers[label] = await Server.open(label, urls[label], owned=label in owned)
        return await Bench(args, servers).run()
    finally:
        for server in servers.values():
            await server.aclose()


def consumers_arg(value: str) -> tuple[int, ...]:
    try:
        counts = tuple(sorted({int(c) for c in value.split(",") if c.strip()}))
    except ValueError:
        counts = ()
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError("consumers: comma-separated process counts, each at least 1")
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=50_000, help="envelopes per run")
    parser.add_argument(
        "--streams", type=int, default=6, help=f"streams the envelopes spread over (1-{PARTITIONS})"
    )
    parser.add_argument(
        "--consumers", type=consumers_arg, default=(1, 2, 3), help="consumer process counts (default 1,2,3)"
    )
    parser.add_argument("--reps", type=int, default=3, help="runs of each configuration")
    parser.add_argument("--warmup", type=int, default=5_000, help="envelopes of the warm-up run per server")
    parser.add_argument("--batch", type=int, default=500, help="envelopes per publish_many")
    parser.add_argument("--masters", type=int, default=3, help="masters of the local cluster started here")
    parser.add_argument("--replicas", type=int, default=1, help="replicas per master of that cluster")
    parser.add_argument(
        "--machine-cores",
        type=int,
        default=os.cpu_count() or 2,
        help="cores per machine in the projection (default: this machine's)",
    )
    parser.add_argument(
        "--standalone-url", default=None, help="a running standalone Redis (default: start one)"
    )
    parser.add_argument(
        "--cluster-url", default=None, help="a node of a running Redis Cluster (default: start one)"
    )
    parser.add_argument("--role", choices=("main", "consumer"), default="main", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.n, args.reps, args.batch, args.masters) < 1 or args.warmup < 0 or args.replicas < 0:
        parser.error(
            "--n, --reps, --batch and --masters must be at least 1, --warmup and --replicas at least 0"
        )
    if not 1 <= args.streams <= PARTITIONS:
        parser.error(f"--streams must be 1..{PARTITIONS}")
    if args.machine_cores < 1:
        parser.error("--machine-cores must be at least 1")

    from l9.logs import configure_logging

    configure_logging("warning")  # structlog to stderr: stdout carries only JSON
    if args.role == "consumer":
        asyncio.run(child_main({"standalone": args.standalone_url, "cluster": args.cluster_url}))
        return

    from l9.devcluster import LocalCluster
    from l9.devstack import EmbeddedStack

    # stopped (SIGTERM, as by a timeout): still stop the servers this run started
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.monotonic()
    homes: list[Path] = []
    stack: EmbeddedStack | None = None
    cluster: LocalCluster | None = None
    urls = {"standalone": args.standalone_url, "cluster": args.cluster_url}
    try:
        if not urls["standalone"]:
            progress("starting the embedded stack (standalone Redis) in a temporary home")
            homes.append(Path(tempfile.mkdtemp(prefix="l9cbench-standalone-")))
            stack = EmbeddedStack(homes[-1])
            urls["standalone"] = stack.up().redis_url
        if not urls["cluster"]:
            progress(f"starting a local cluster of {args.masters} masters x {args.replicas} replicas")
            homes.append(Path(tempfile.mkdtemp(prefix="l9cbench-cluster-")))
            cluster = LocalCluster(homes[-1], masters=args.masters, replicas=args.replicas)
            urls["cluster"] = cluster.up().redis_url
        owned = {label for label in SERVERS if not getattr(args, f"{label}_url")}
        result = asyncio.run(parent_main(args, cast(dict[str, str], urls), owned))
    finally:
        if cluster is not None:
            cluster.down()
        if stack is not None:
            stack.down()
        for home in homes:
            shutil.rmtree(home, ignore_errors=True)  # the AOFs of a run are a few hundred MB
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
