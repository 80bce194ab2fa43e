"""Throughput, CPU and latency of the L9 bus against a bare redis-py Streams loop.

    .venv/bin/python -m benchmarks.bus_throughput [--n 100000] [--single-n 20000] [--batch 500]
        [--reps 3] [--modes batched,single] [--signing hmac,ed25519]

Prints one JSON object on stdout; progress goes to stderr.

Method (default ``--mode split``): the publisher runs in this process and the
consumer in one long-lived child process (``--role consumer``), as a real
deployment would run them, both on the same Redis. The bare loop is measured
exactly the same way (same processes, same N, same COUNT), so ``ratio``
compares only what L9 adds. ``--mode inproc`` runs both sides as tasks of one
event loop instead (again for both L9 and bare).

Publishing modes (``--modes``), each measured for L9 and for the bare loop:

* ``batched``: L9 ``Publisher.publish_many`` in batches of ``--batch`` against a
  pipelined bare XADD loop in the same batches (``--n`` envelopes);
* ``single``: one ``await pub.publish(envelope, stream)`` per envelope, one after
  the other, against one ``await redis.xadd(key, fields)`` per envelope of the
  plain redis-py asyncio client (``--single-n`` envelopes).

In both, the publisher's and the consumer's CPU time (``time.process_time()``
in each process) is reported per envelope. The same run measures a
*round-trip floor*: the publisher CPU per awaited XADD (same fields, drained by
the bare consumer as in ``single``) of the smallest asyncio client there is
(an ``asyncio.Protocol`` + ``hiredis.Reader``, one future per command), i.e.
the part of a single publish that is the asyncio + syscall round trip on this
machine. CPU targets are also reported scaled by this run's bare loop, the
machine's speed varying from hour to hour.

Throughput = N / (last ack flushed in the consumer - first envelope built in
the publisher); both stamps are ``time.monotonic()`` (CLOCK_MONOTONIC, one
clock for every process of the machine). Latency = receive time in the
handler - a monotonic stamp taken when the envelope was created, carried in
the payload.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, cast

import anyio
import hiredis
import redis.asyncio as aioredis
import redis.utils
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from redis.typing import EncodableT, FieldT

import bus.tracing
from bus import Delivery, DeliveryPolicy, Keys, Publisher, StreamConsumer, connect
from bus.connection import RedisClient
from bus.metrics import DeliveryMetrics
from envelope import Ed25519Signer, PacketEnvelope, Payload, Signer, Verifier, decode, encode, registry
from l9.admin import Admin
from l9.logs import configure_logging
from l9.process import settle_heap

ROOT = Path(__file__).resolve().parents[1]
TICK_TYPE = "l9.bench.tick.v1"
SOURCE = "agent://bench/publisher-0"
STREAM = "bench"
GROUP = "bench"
KEYRING = {"bench": b"benchmark-signing-key-0123456789abcdef"}
#: Kinds measured with telemetry on (``--telemetry``), each against plain ``l9`` in the same run.
TELEMETRY_KINDS = {"l9_metrics": "metrics", "l9_tracing": "tracing"}
#: The per-agent scheme (``--signing ed25519``): the publisher's private key, the consumer's
#: public key; kind ``l9_ed25519`` publishes with it (a batch signed once, ``envelope._signing``).
ED25519 = Ed25519Signer.from_seed("bench.ed25519", bytes(range(32)))
PUBLIC_KEYS = {ED25519.key_id: ED25519.public_bytes}
TARGET_ED25519_RATIO = 0.6
MODES = ("batched", "single")
DEFAULT_SINGLE_N = 20_000
TARGET_BATCHED_RATIO = 0.75
TARGET_RATE = 30_000
TARGET_P99_MS = 3.0
TARGET_SINGLE_PUBLISHER_CPU_US = 40.0
TARGET_CONSUMER_CPU_US = 20.0
#: the bare loop's CPU per envelope (batched mode) when the CPU targets were set: a run's own
#: bare figures over these scale the CPU targets to the machine's speed at the time of the run
REFERENCE_BARE_PUBLISHER_CPU_US = 18.8
REFERENCE_BARE_CONSUMER_CPU_US = 11.9

#: a stream entry as redis-py's ``xadd`` takes it
Fields = dict[FieldT, EncodableT]
#: an XREADGROUP reply of redis-py (RESP2): [(stream, [(entry id, fields), ...]), ...]
ReadReply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]


class Tick(Payload):
    seq: int
    t: float  # time.monotonic() when the envelope was created


if TICK_TYPE not in registry:
    registry.register(TICK_TYPE, Tick)


def code_version() -> dict[str, Any]:
    """The git commit of the tree the envelope/bus packages come from, and whether they are edited."""
    import envelope

    root = Path(envelope.__file__).resolve().parents[1]
    try:
        run = functools.partial(subprocess.run, capture_output=True, text=True, cwd=root, timeout=10)
        commit = run(["git", "rev-parse", "--short", "HEAD"]).stdout.strip()
        dirty = bool(run(["git", "status", "--porcelain", "--", "envelope", "bus"]).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {"root": str(root), "git_commit": commit or None, "envelope_or_bus_edited": dirty}


def progress(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def policy(dedupe_window_s: float = DeliveryPolicy.dedupe_window_s) -> DeliveryPolicy:
    """The delivery policy agents get from the default settings (batch_size 256, concurrency 16,
    the window of handled ids on unless ``--dedupe-window-s 0``)."""
    return DeliveryPolicy(max_in_flight=256, concurrency=16, dedupe_window_s=dedupe_window_s)


def make_envelope(seq: int) -> PacketEnvelope:
    """As ``Agent.envelope_for`` builds one: payload model dumped into ``data``."""
    data = Tick(seq=seq, t=time.monotonic()).model_dump(mode="json")
    return PacketEnvelope.new(type=TICK_TYPE, source=SOURCE, data=data, sequence=seq)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def latency_summary(lat_s: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in lat_s)
    return {
        "count": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "p999_ms": round(percentile(ms, 99.9), 3),
        "max_ms": round(ms[-1], 3) if ms else float("nan"),
        "mean_ms": round(statistics.fmean(ms), 3) if ms else float("nan"),
    }


# -- consumer side ---------------------------------------------------------------------------


async def consume_l9(redis: RedisClient, job: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    with telemetry(job.get("telemetry")) as admin:
        return await _consume_l9(redis, job, ready, admin)


@contextlib.contextmanager
def telemetry(what: str | None) -> Iterator[Admin | None]:
    """Kind ``l9_metrics``: an admin port on loopback serving /metrics, the consumer metered as
    an agent's is (``l9.start.delivery_metrics``); kind ``l9_tracing``: ``bus.tracing`` on,
    every envelope sampled, its spans batched to an exporter that drops them (what the SDK
    costs, without a collector's). The kinds' publisher side does the same in its process."""
    if what == "tracing":
        provider = TracerProvider(sampler=ALWAYS_ON)
        provider.add_span_processor(BatchSpanProcessor(DroppingExporter()))
        bus.tracing.enable(provider)
        try:
            yield None
        finally:
            bus.tracing.disable()
            provider.shutdown()
    elif what == "metrics":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        admin = Admin("127.0.0.1", port)
        try:
            yield admin
        finally:
            admin.close()
    else:
        yield None


async def scraped(admin: Admin) -> None:
    """Once the admin server answers: one scrape of its /metrics (as Prometheus would)."""
    for _ in range(500):
        try:
            async with await anyio.connect_tcp(admin.host, admin.port) as conn:
                await conn.send(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                reply = b""
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                    while True:
                        reply += await conn.receive()
            if reply.startswith(b"HTTP/1.1 200"):
                return
        except OSError:
            pass
        await anyio.sleep(0.01)
    raise RuntimeError(f"the admin port {admin.port} never answered")


class DroppingExporter(SpanExporter):
    """Takes every span batch and keeps none (``--telemetry tracing``)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def _consume_l9(
    redis: RedisClient, job: dict[str, Any], ready: Callable[[], None], admin: Admin | None
) -> dict[str, Any]:
    n, latency = job["n"], job["latency"]
    count, lats = 0, []
    done = anyio.Event()

    async def handler(d: Delivery) -> None:
        nonlocal count
        count += 1
        if latency:
            lats.append(time.monotonic() - d.payload.t)  # type: ignore[attr-defined]
        if count >= n:
            done.set()

    consumer = StreamConsumer(
        redis,
        Keys(job["ns"]),
        group=GROUP,
        consumer="bench-0",
        streams=[STREAM],
        handler=handler,
        verifier=Verifier(KEYRING, public_keys=PUBLIC_KEYS),
        policy=policy(job["dedupe_window_s"]),
        metrics=None if admin is None else DeliveryMetrics(GROUP),
    )
    if admin is not None:
        admin.watch_stream(consumer)
    async with (
        nullcontext() if admin is None else admin.serving(),
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(consumer.run)
        await consumer.wait_started()
        if admin is not None:  # its server's start-up is not the metrics' cost per envelope
            await scraped(admin)
        settle_heap()  # as an agent process once started (l9.start): its server and consumer too
        cpu0 = time.process_time()
        ready()
        await done.wait()
        for _ in range(100_000):  # the acks of the last entries may not be flushed yet: poll
            if not consumer.in_flight:
                break
            await anyio.sleep(0.0002)
        else:
            raise RuntimeError(f"{len(consumer.in_flight)} entries never acked")
        t_end = time.monotonic()
        cpu = time.process_time() - cpu0
        consumer.stop()
    result: dict[str, Any] = {"t_end": t_end, "handled": count, "cpu_s": cpu}
    result["lat"] = latency_summary(lats) if latency else None
    if not latency:
        result["decode_cpu_s"] = await codec_cpu(redis, Keys(job["ns"]).stream(STREAM))
    return result


async def codec_cpu(redis: RedisClient, key: str, sample: int = 5000) -> float:
    """CPU seconds per entry of the codec alone on entries of this run: msgpack, the
    signature, the envelope's and the payload's validation (``envelope.decode``), one
    entry after another in a tight loop -- the part of a delivery no loop can avoid."""
    rows: list[tuple[bytes, dict[bytes, bytes]]] = cast(Any, await redis.xrange(key, count=sample))
    verifier = Verifier(KEYRING, public_keys=PUBLIC_KEYS)
    cpu0 = time.process_time()
    for _, fields in rows:
        decode(fields, verifier)
    return float(time.process_time() - cpu0) / max(1, len(rows))


async def consume_bare(redis: RedisClient, job: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    n, latency, key = job["n"], job["latency"], Keys(job["ns"]).stream(STREAM)
    count, lats = 0, []

    async def handler(fields: dict[bytes, bytes]) -> None:
        nonlocal count
        count += 1
        if latency:
            lats.append(time.monotonic() - float(fields[b"id"]))

    await redis.xgroup_create(key, GROUP, id="0", mkstream=True)
    cpu0 = time.process_time()
    ready()
    read_count = policy().max_in_flight
    while count < n:
        reply = cast(
            ReadReply | None,
            await redis.xreadgroup(GROUP, "bare-0", {key: ">"}, count=read_count, block=100),
        )
        ids = []
        for _key, entries in reply or ():
            for entry_id, fields in entries:
                await handler(fields)
                ids.append(entry_id)
        if ids:
            await redis.xack(key, GROUP, *ids)
    t_end = time.monotonic()
    cpu = time.process_time() - cpu0
    return {"t_end": t_end, "handled": count, "cpu_s": cpu, "lat": latency_summary(lats) if latency else None}


class Clients:
    """L9 uses its own client (``bus.connect``: commands packed by hiredis); bare uses plain redis-py."""

    def __init__(self, redis_url: str) -> None:
        self.l9 = connect(redis_url)
        self.bare = aioredis.from_url(redis_url)

    async def aclose(self) -> None:
        await self.l9.aclose()
        await self.bare.aclose()


async def consume(clients: Clients, job: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    if job["kind"] == "l9":
        return await consume_l9(clients.l9, job, ready)
    return await consume_bare(clients.bare, job, ready)


def emit_line(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def child_main(redis_url: str) -> None:
    """Consumer role: one JSON job per stdin line; replies ``{"ready"}`` then the result.
    Its heap is settled once started, as an agent process's is (``l9.process.settle_heap``)."""
    settle_heap()
    redis = Clients(redis_url)
    try:
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline)
            if not line.strip():
                return
            job = json.loads(line)
            if job.get("cmd") == "exit":
                return
            result = await consume(redis, job, lambda: emit_line({"ready": True}))
            emit_line(result)
    finally:
        await redis.aclose()


class ChildConsumer:
    """The consumer in a child process, driven over its stdin/stdout."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.proc: asyncio.subprocess.Process | None = None
        self.separate_cpu = True

    async def open(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.bus_throughput", "--role", "consumer",
            "--redis-url", self.redis_url,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT, env=env,
        )  # fmt: skip

    async def _read(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"consumer process exited (rc={await self.proc.wait()})")
        return json.loads(line)  # type: ignore[no-any-return]

    async def start(self, job: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(job) + "\n").encode())
        await self.proc.stdin.drain()
        assert (await self._read()).get("ready")

    async def result(self) -> dict[str, Any]:
        return await self._read()

    async def close(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b'{"cmd": "exit"}\n')
            await self.proc.stdin.drain()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


class InProcConsumer:
    """The consumer as a task of the publisher's own event loop."""

    def __init__(self, redis_url: str) -> None:
        self.redis = Clients(redis_url)
        self.task: asyncio.Task[dict[str, Any]] | None = None
        self.separate_cpu = False

    async def open(self) -> None:
        pass

    async def start(self, job: dict[str, Any]) -> None:
        ready = asyncio.Event()
        self.task = asyncio.create_task(consume(self.redis, job, ready.set))
        await ready.wait()

    async def result(self) -> dict[str, Any]:
        assert self.task is not None
        return await self.task

    async def close(self) -> None:
        await self.redis.aclose()


# -- publisher side --------------------------------------------------------------------------


async def publish_l9_batched(pub: Publisher, n: int, batch: int) -> None:
    for start in range(0, n, batch):
        await pub.publish_many([make_envelope(i) for i in range(start, min(n, start + batch))], STREAM)


async def publish_l9_single(pub: Publisher, n: int) -> None:
    for i in range(n):
        await pub.publish(make_envelope(i), STREAM)


async def publish_bare_batched(redis: RedisClient, key: str, n: int, batch: int, fields: Fields) -> None:
    for start in range(0, n, batch):
        pipe = redis.pipeline(transaction=False)
        for _ in range(start, min(n, start + batch)):
            pipe.xadd(key, fields)
        await pipe.execute()


async def publish_bare_single(redis: RedisClient, key: str, n: int, fields: Fields) -> None:
    for _ in range(n):
        await redis.xadd(key, fields)


async def paced(rate: float, total: int, send: Callable[[int, int], Awaitable[None]]) -> dict[str, Any]:
    """Call ``send(first, count)`` so that envelope i leaves at start + i / rate.

    The event loop sleeps with ~1 ms granularity, so each wake-up sends the
    envelopes that are due (1-3 at 2,000/s); each is stamped when it is built.
    """
    interval, start, i, sizes = 1 / rate, time.monotonic(), 0, []
    while i < total:
        now = time.monotonic()
        due = min(total, int((now - start) / interval) + 1)
        if due > i:
            await send(i, due - i)
            sizes.append(due - i)
            i = due
        else:
            await asyncio.sleep(start + i * interval - now)
    elapsed = time.monotonic() - start
    return {
        "achieved_rate": round(total / elapsed, 1),
        "sends": len(sizes),
        "max_per_send": max(sizes),
        "mean_per_send": round(total / len(sizes), 2),
    }


class FloorClient(asyncio.Protocol):
    """The smallest asyncio Redis client: per command, one hiredis-packed write and one future,
    resolved from ``data_received`` through a ``hiredis.Reader``. Nothing else (no pool, no
    retries, no response callbacks): what any asyncio client pays at least for an awaited command."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None

    @staticmethod
    def supports(url: str) -> bool:
        return urllib.parse.urlsplit(url).scheme in ("redis", "unix")

    @classmethod
    async def connect(cls, url: str) -> FloorClient:
        parts = urllib.parse.urlsplit(url)
        loop = asyncio.get_running_loop()
        query = dict(urllib.parse.parse_qsl(parts.query))
        if parts.scheme == "unix":
            _, client = await loop.create_unix_connection(cls, parts.path)
            db = query.get("db", "")
        elif parts.scheme == "redis":
            _, client = await loop.create_connection(cls, parts.hostname or "localhost", parts.port or 6379)
            db = parts.path.strip("/") or query.get("db", "")
        else:
            raise ValueError(f"round-trip floor: unsupported Redis URL scheme {parts.scheme!r}")
        if parts.password:
            user = [urllib.parse.unquote(parts.username)] if parts.username else []
            await client.command("AUTH", *user, urllib.parse.unquote(parts.password))
        if db and db != "0":
            await client.command("SELECT", db)
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            waiter = self.waiters.popleft()
            if waiter.done():
                continue
            if isinstance(reply, Exception):
                waiter.set_exception(reply)
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(exc or ConnectionError("Redis closed the connection"))

    def command(self, *args: Any) -> asyncio.Future[Any]:
        assert self.transport is not None
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        self.transport.write(hiredis.pack_command(args))
        return waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def target(value: float | None, limit: float | None, *, at_most: bool) -> dict[str, Any]:
    """A target entry of the report: met only when both figures exist and the value is on the
    right side of the limit."""
    met = value is not None and limit is not None and (value <= limit if at_most else value >= limit)
    return {"target": limit, "value": value, "met": met}


def scaled_target(
    value: float | None, limit: float, own_bare: float | None, reference_bare: float, *, of: str, basis: str
) -> dict[str, Any]:
    """The CPU target ``limit`` scaled by this run's bare loop: ``limit * own_bare / reference_bare``."""
    scale = own_bare / reference_bare if own_bare is not None else None
    scaled = round(limit * scale, 2) if scale is not None else None
    return {
        **target(value, scaled, at_most=True),
        "scaled_from": of,
        "scale": round(scale, 3) if scale is not None else None,
        "scale_basis": (
            f"{limit:g} x {basis} this run ({own_bare} us/envelope) / {reference_bare:g}"
            if own_bare is not None
            else f"{basis} not measured in this run"
        ),
    }


class Bench:
    def __init__(self, args: argparse.Namespace, redis_url: str, *, owns_server: bool) -> None:
        self.args = args
        self.redis_url = redis_url
        self.owns_server = owns_server
        self.redis = aioredis.from_url(redis_url)
        self.l9_redis = connect(redis_url)
        self.signer = Signer(KEYRING, "bench")
        self.run_id = uuid.uuid4().hex[:8]
        self.counter = 0
        self.persistence_note = ""
        sample = encode(make_envelope(0), self.signer)
        #: the bare loop's entry: the same header fields and an env blob of the same size
        self.bare_fields: Fields = {k: v for k, v in sample.items()}
        self.entry_bytes = {k: len(v) for k, v in sample.items()}

    def namespace(self, label: str) -> str:
        self.counter += 1
        return f"l9bench.{self.run_id}.{self.counter}.{label}"

    def mode_n(self, mode: str) -> int:
        return int(self.args.n if mode == "batched" else self.args.single_n)

    async def redis_cpu_s(self) -> float:
        info = await self.redis.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    async def persistence(self) -> dict[str, Any]:
        info: dict[str, Any] = await self.redis.info("persistence")
        return info

    async def settle(self) -> None:
        """Start a measurement only once no AOF rewrite / RDB save of the last one is running."""
        for _ in range(600):
            info = await self.persistence()
            if not (info.get("aof_rewrite_in_progress") or info.get("rdb_bgsave_in_progress")):
                return
            await asyncio.sleep(0.05)

    async def defer_aof_rewrites(self) -> str:
        """On our own server only: keep automatic AOF rewrites (a fork that writes the whole
        dataset) out of the measurements. Appends and the everysec fsync stay as configured."""
        config = await self.redis.config_get("appendonly", "appendfsync")
        persistence = f"appendonly {config.get('appendonly')}, appendfsync {config.get('appendfsync')}"
        if not self.owns_server:
            return f"{persistence} (server config untouched)"
        await self.redis.config_set("auto-aof-rewrite-min-size", str(64 << 30))
        return f"{persistence}; auto AOF rewrite deferred (min size 64 GB) on the benchmark's own server"

    async def cleanup(self, pattern: str) -> int:
        keys = [k async for k in self.redis.scan_iter(match=pattern, count=1000)]
        if keys:
            await self.redis.delete(*keys)
        return len(keys)

    async def measure(
        self, side: ChildConsumer | InProcConsumer, kind: str, mode: str, n: int, *, latency: bool = False
    ) -> dict[str, Any]:
        """One run of ``kind`` publishing ``n`` envelopes in ``mode`` (batched or single; a latency
        run is paced instead) to a consumer that is already waiting for them: ``l9`` (Publisher,
        StreamConsumer), ``bare`` (redis-py both sides) or ``floor`` (single mode only: the
        :class:`FloorClient` publishing the bare entries, drained by the bare consumer)."""
        args, ns = self.args, self.namespace(f"{mode}-{kind}{'-lat' if latency else ''}")
        keys = Keys(ns)
        key = keys.stream(STREAM)
        pub = Publisher(self.l9_redis, keys, ED25519 if kind == "l9_ed25519" else self.signer)
        floor = await FloorClient.connect(self.redis_url) if kind == "floor" else None
        if floor is not None:
            await floor.command("PING")
        await self.settle()
        rewrites0 = (await self.persistence()).get("aof_rewrites", 0)
        consumer_kind = "l9" if kind.startswith("l9") else "bare"
        await side.start(
            {
                "kind": consumer_kind,
                "ns": ns,
                "n": n,
                "latency": latency,
                "dedupe_window_s": args.dedupe_window_s,
                "telemetry": TELEMETRY_KINDS.get(kind),
            }
        )
        redis_cpu0, cpu0 = await self.redis_cpu_s(), time.process_time()
        t0 = time.monotonic()
        pacing = None
        if latency:
            if kind.startswith("l9"):

                async def send(first: int, count: int) -> None:
                    await pub.publish_many([make_envelope(i) for i in range(first, first + count)], STREAM)

            else:

                async def send(first: int, count: int) -> None:
                    pipe = self.redis.pipeline(transaction=False)
                    for _ in range(count):
                        pipe.xadd(key, {**self.bare_fields, "id": repr(time.monotonic())})
                    await pipe.execute()

            pacing = await paced(args.rate, n, send)
        elif floor is not None:
            command = ("XADD", key, "*", *(x for kv in self.bare_fields.items() for x in kv))
            for _ in range(n):
                await floor.command(*command)
        elif kind.startswith("l9") and mode == "batched":
            with telemetry(TELEMETRY_KINDS.get(kind)) if side.separate_cpu else nullcontext():
                await publish_l9_batched(pub, n, args.batch)
        elif kind.startswith("l9"):
            with telemetry(TELEMETRY_KINDS.get(kind)) if side.separate_cpu else nullcontext():
                await publish_l9_single(pub, n)
        elif mode == "batched":
            await publish_bare_batched(self.redis, key, n, args.batch, self.bare_fields)
        else:
            await publish_bare_single(self.redis, key, n, self.bare_fields)
        t_published = time.monotonic()
        pub_cpu = time.process_time() - cpu0
        if floor is not None:
            floor.close()
        with anyio.fail_after(120):
            res = await side.result()
        redis_cpu = await self.redis_cpu_s() - redis_cpu0
        rewrites = (await self.persistence()).get("aof_rewrites", 0) - rewrites0
        if not side.separate_cpu:  # one process: its CPU time covers both sides
            pub_cpu = time.process_time() - cpu0
        # sanity: everything arrived, nothing pending, nothing dead-lettered
        length, pending = await self.redis.xlen(key), await self.redis.xpending(key, GROUP)
        dead = await self.redis.xlen(keys.dead(STREAM))
        if res["handled"] != n or length != n or pending["pending"] != 0 or dead != 0:
            raise RuntimeError(
                f"{mode} {kind}: handled={res['handled']} xlen={length} pending={pending} dead={dead}"
            )
        await self.cleanup(f"{ns}:*")
        elapsed = res["t_end"] - t0
        out: dict[str, Any] = {
            "kind": kind,
            "mode": mode,
            "n": n,
            "seconds": round(elapsed, 4),
            "envelopes_per_s": round(n / elapsed, 1),
            "publish_seconds": round(t_published - t0, 4),
        }
        if rewrites:
            out["aof_rewrites_during_run"] = rewrites
        if not latency:  # a paced run's CPU time is mostly idle-loop overhead: not per-envelope cost
            out["redis_cpu_us_per_envelope"] = round(redis_cpu / n * 1e6, 2)
            if side.separate_cpu:
                out["publisher_cpu_us_per_envelope"] = round(pub_cpu / n * 1e6, 2)
                out["consumer_cpu_us_per_envelope"] = round(res["cpu_s"] / n * 1e6, 2)
                if "decode_cpu_s" in res:
                    out["consumer_codec_cpu_us_per_envelope"] = round(res["decode_cpu_s"] * 1e6, 2)
            else:
                out["process_cpu_us_per_envelope"] = round(pub_cpu / n * 1e6, 2)
        if latency:
            out["latency"], out["pacing"] = res["lat"], pacing
        return out

    async def run(self) -> dict[str, Any]:
        args = self.args
        side: ChildConsumer | InProcConsumer = (
            ChildConsumer(self.redis_url) if args.mode == "split" else InProcConsumer(self.redis_url)
        )
        self.persistence_note = await self.defer_aof_rewrites()
        floor = FloorClient.supports(self.redis_url)
        kinds = (
            "l9",
            "bare",
            *(("l9_ed25519",) if "ed25519" in args.signing else ()),
            *(f"l9_{t}" for t in args.telemetry),
        )
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {m: {k: [] for k in kinds} for m in args.modes}
        floors: list[dict[str, Any]] = []
        await side.open()
        try:
            for mode in args.modes:
                warm = min(args.warmup, self.mode_n(mode))
                progress(f"warm-up {mode}: {warm} envelopes each of l9 and bare")
                for kind in kinds:
                    await self.measure(side, kind, mode, warm)
            if floor:
                progress(f"warm-up round-trip floor: {min(args.warmup, args.single_n)} XADDs")
                await self.measure(side, "floor", "single", min(args.warmup, args.single_n))
            for rep in range(args.reps):
                for mode in args.modes:
                    for kind in kinds if rep % 2 == 0 else kinds[::-1]:
                        r = await self.measure(side, kind, mode, self.mode_n(mode))
                        runs[mode][kind].append(r)
                        progress(
                            f"rep {rep + 1}/{args.reps} {mode} {kind}: {r['envelopes_per_s']:,.0f}/s  {r}"
                        )
                if floor:
                    floors.append(await self.measure(side, "floor", "single", args.single_n))
                    progress(f"rep {rep + 1}/{args.reps} round-trip floor: {floors[-1]}")
            lat_n = int(args.rate * args.latency_s)
            progress(f"latency: {lat_n} l9 envelopes at {args.rate:g}/s")
            lat = await self.measure(side, "l9", "paced", lat_n, latency=True)
            progress(f"latency l9: {lat['latency']}  pacing {lat['pacing']}")
            bare_lat = None
            if args.bare_latency:
                bare_lat = await self.measure(side, "bare", "paced", lat_n, latency=True)
                progress(f"latency bare: {bare_lat['latency']}")
        finally:
            await side.close()
            await self.cleanup(f"l9bench.{self.run_id}.*")
        return await self.report(runs, floors, lat, bare_lat)

    @staticmethod
    def summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        """One mode's figures: best and median envelopes/s of L9 and bare, their ratio (best over
        best), and the median CPU per envelope of each side."""
        rates = {k: [r["envelopes_per_s"] for r in v] for k, v in runs.items()}
        best = {k: max(v) for k, v in rates.items()}

        def cpu_keys(kind: str) -> dict[str, float]:
            fields = [k for k in runs[kind][0] if k.endswith("_us_per_envelope")]
            return {f: statistics.median(r[f] for r in runs[kind]) for f in fields}

        return {
            "l9_envelopes_per_s": best["l9"],
            "bare_envelopes_per_s": best["bare"],
            "ratio": round(best["l9"] / best["bare"], 3),
            "ed25519_envelopes_per_s": best.get("l9_ed25519"),
            "ed25519_ratio": round(best["l9_ed25519"] / best["bare"], 3) if "l9_ed25519" in best else None,
            "metrics_on_ratio": round(best["l9_metrics"] / best["l9"], 3) if "l9_metrics" in best else None,
            "tracing_on_ratio": round(best["l9_tracing"] / best["l9"], 3) if "l9_tracing" in best else None,
            "median_envelopes_per_s": {k: statistics.median(v) for k, v in rates.items()},
            "runs_envelopes_per_s": rates,
            "cpu_us_per_envelope_median": {k: cpu_keys(k) for k in runs},
        }

    async def report(
        self,
        runs: dict[str, dict[str, list[dict[str, Any]]]],
        floors: list[dict[str, Any]],
        lat: dict[str, Any],
        bare_lat: dict[str, Any] | None,
    ) -> dict[str, Any]:
        args = self.args
        modes = {mode: self.summary(r) for mode, r in runs.items()}
        empty: dict[str, Any] = {
            "l9_envelopes_per_s": None,
            "bare_envelopes_per_s": None,
            "ratio": None,
            "ed25519_envelopes_per_s": None,
            "ed25519_ratio": None,
            "median_envelopes_per_s": None,
            "runs_envelopes_per_s": None,
            "cpu_us_per_envelope_median": {},
        }
        batched, single = modes.get("batched", empty), modes.get("single", empty)
        p50, p99 = lat["latency"]["p50_ms"], lat["latency"]["p99_ms"]
        server = await self.redis.info("server")

        def cpu(mode: dict[str, Any], kind: str, side: str) -> float | None:
            value = mode["cpu_us_per_envelope_median"].get(kind, {}).get(f"{side}_cpu_us_per_envelope")
            return None if value is None else float(value)

        by_mode = {
            name: {
                kind: {f.removesuffix("_cpu_us_per_envelope"): v for f, v in fields.items()}
                for kind, fields in mode["cpu_us_per_envelope_median"].items()
            }
            for name, mode in modes.items()
        }
        floor_runs = [
            f["publisher_cpu_us_per_envelope"] for f in floors if "publisher_cpu_us_per_envelope" in f
        ]
        floor_cpu = statistics.median(floor_runs) if floor_runs else None
        single_pub = cpu(single, "l9", "publisher")
        batched_consumer = cpu(batched, "l9", "consumer")
        bare_pub, bare_consumer = cpu(batched, "bare", "publisher"), cpu(batched, "bare", "consumer")
        ratio, l9_rate = batched["ratio"], batched["l9_envelopes_per_s"]
        absolute = {
            "batched_ratio_ge_0.75": target(ratio, TARGET_BATCHED_RATIO, at_most=False),
            **(
                {
                    "ed25519_batched_ratio_ge_0.6": target(
                        batched["ed25519_ratio"], TARGET_ED25519_RATIO, at_most=False
                    )
                }
                if "ed25519" in args.signing
                else {}
            ),
            "l9_ge_30000_per_s": target(l9_rate, TARGET_RATE, at_most=False),
            "p99_le_3ms_at_2000_per_s": target(p99, TARGET_P99_MS, at_most=True),
            "single_publish_publisher_cpu_le_40us": target(
                single_pub, TARGET_SINGLE_PUBLISHER_CPU_US, at_most=True
            ),
            "consumer_cpu_le_20us": target(batched_consumer, TARGET_CONSUMER_CPU_US, at_most=True),
        }
        scaled = {
            "single_publish_publisher_cpu_scaled": scaled_target(
                single_pub,
                TARGET_SINGLE_PUBLISHER_CPU_US,
                bare_pub,
                REFERENCE_BARE_PUBLISHER_CPU_US,
                of="single_publish_publisher_cpu_le_40us",
                basis="bare batched publisher CPU",
            ),
            "consumer_cpu_scaled": scaled_target(
                batched_consumer,
                TARGET_CONSUMER_CPU_US,
                bare_consumer,
                REFERENCE_BARE_CONSUMER_CPU_US,
                of="consumer_cpu_le_20us",
                basis="bare batched consumer CPU",
            ),
        }
        # the absolute targets with each CPU target replaced by its scaled form
        with_scaled = {
            k: v for k, v in absolute.items() if k not in {s["scaled_from"] for s in scaled.values()}
        }
        with_scaled |= scaled
        return {
            "l9_envelopes_per_s": l9_rate,
            "bare_envelopes_per_s": batched["bare_envelopes_per_s"],
            "ratio": ratio,
            "ed25519_envelopes_per_s": batched["ed25519_envelopes_per_s"],
            "ed25519_ratio": batched["ed25519_ratio"],
            "single_ed25519_envelopes_per_s": single["ed25519_envelopes_per_s"],
            "single_ed25519_ratio": single["ed25519_ratio"],
            "metrics_on_ratio": batched["metrics_on_ratio"],
            "tracing_on_ratio": batched["tracing_on_ratio"],
            "telemetry": {
                "l9_metrics": "l9 with the admin port on (loopback): /metrics served, the consumer metered "
                "as an agent's (bus.metrics.DeliveryMetrics); metrics_on_ratio = its best / l9's best",
                "l9_tracing": "l9 with bus.tracing on in both processes, every envelope sampled, spans "
                "batched to an exporter that drops them; tracing_on_ratio = its best / l9's best",
            },
            "signing": {
                "l9": "HMAC-SHA256, one shared key (L9_SIGNING_SCHEME=hmac)",
                "l9_ed25519": "Ed25519, the publisher's own key; publish_many signs one Merkle root per "
                "batch, the consumer checks each entry's inclusion path and each batch signature once",
            },
            "single_l9_envelopes_per_s": single["l9_envelopes_per_s"],
            "single_bare_envelopes_per_s": single["bare_envelopes_per_s"],
            "single_ratio": single["ratio"],
            "p50_ms_at_2000": p50,
            "p99_ms_at_2000": p99,
            "cpu_us_per_envelope_by_mode": by_mode,
            "round_trip_floor_cpu_us": floor_cpu,
            "round_trip_floor_share_of_single_publish": (
                round(floor_cpu / single_pub, 3) if floor_cpu is not None and single_pub else None
            ),
            "targets": absolute | scaled,
            "all_targets_met": all(t["met"] for t in absolute.values()),
            "all_scaled_targets_met": all(t["met"] for t in with_scaled.values()),
            "targets_note": (
                "CPU values are medians over reps (us/envelope); single_publish_publisher_cpu is the "
                "publisher process in single mode, consumer_cpu the consumer process in batched mode. "
                "*_scaled: the CPU target times this run's bare batched CPU (publisher resp. consumer) "
                f"over the bare figure when the targets were set ({REFERENCE_BARE_PUBLISHER_CPU_US:g} "
                f"resp. {REFERENCE_BARE_CONSUMER_CPU_US:g} us/envelope). all_targets_met: every "
                "unscaled target; all_scaled_targets_met: the same targets with each CPU target "
                "replaced by its scaled form. A figure not measured (its mode not run, or --mode "
                "inproc for per-side CPU) is null and its target not met."
            ),
            "reported": (
                "best of reps (max envelopes/s) per mode; unprefixed keys: batched mode, single_*: "
                "single-publish mode; medians and every run below"
            ),
            "median_envelopes_per_s": batched["median_envelopes_per_s"],
            "runs_envelopes_per_s": batched["runs_envelopes_per_s"],
            "cpu_us_per_envelope_median": batched["cpu_us_per_envelope_median"],
            "single_median_envelopes_per_s": single["median_envelopes_per_s"],
            "single_runs_envelopes_per_s": single["runs_envelopes_per_s"],
            "single_cpu_us_per_envelope_median": single["cpu_us_per_envelope_median"],
            "round_trip_floor": {
                "publisher_cpu_us_per_xadd_median": floor_cpu,
                "envelopes_per_s_best": max(f["envelopes_per_s"] for f in floors),
                "runs": floors,
                "client": "asyncio.Protocol + hiredis.Reader, hiredis.pack_command, one future per command",
            }
            if floors
            else None,
            "latency_at_rate": {"l9": lat, "bare": bare_lat},
            "method": self.method(),
            "modes": list(args.modes),
            "n": args.n,
            "single_n": args.single_n,
            "reps": args.reps,
            "warmup": args.warmup,
            "batch_size": args.batch,
            "xreadgroup_count": policy().max_in_flight,
            "delivery_policy": {
                "max_in_flight": policy().max_in_flight,
                "concurrency": policy().concurrency,
                "dedupe_window_s": args.dedupe_window_s,
            },
            "entry_field_bytes": self.entry_bytes,
            "rate_per_s": args.rate,
            "latency_seconds": args.latency_s,
            "redis_version": server.get("redis_version"),
            "redis_url_source": "REDIS_URL" if not self.owns_server else "embedded stack (temp home)",
            "redis_persistence": self.persistence_note,
            "python_version": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "event_loop": "asyncio (default, no uvloop)",
            "redis_py_version": redis.__version__,
            "hiredis_used": bool(redis.utils.HIREDIS_AVAILABLE),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "code_under_test": code_version(),
        }

    def method(self) -> str:
        args = self.args
        where = (
            "publisher in the benchmark process, consumer in one long-lived child process "
            "(3 busy processes incl. redis-server on the CPUs); CPU = time.process_time() of each "
            "process over the run, per envelope"
            if args.mode == "split"
            else "publisher and consumer as tasks of one asyncio event loop in one process (one CPU "
            "figure for both sides)"
        )
        return (
            f"{where}. Modes {', '.join(args.modes)}; per rep each mode runs L9 and the bare loop the "
            f"same way on the same Redis, alternating (L9 first on odd reps), each run with its own "
            f"namespace, deleted afterwards, after one warm-up run of each per mode. "
            f"batched ({args.n} envelopes): L9 builds a PacketEnvelope per envelope (payload "
            f"model_dump) and sends Publisher.publish_many in batches of {args.batch}, signed with an "
            f"HMAC Signer; bare sends pipelined XADDs of the same 5 fields (same bytes as an encoded L9 "
            f"entry) in the same batches. single ({args.single_n} envelopes): L9 awaits one "
            f"Publisher.publish(envelope, stream) per envelope, one after the other; bare awaits one "
            f"redis.xadd(key, fields) per envelope. L9's client is bus.connect (redis-py asyncio, "
            f"commands packed by hiredis); bare's is plain redis-py asyncio (its Python packer). "
            f"Consumers, both modes: L9 StreamConsumer (own group, default policy 256 in flight/16 "
            f"workers, Verifier) -> counting handler -> batched XACK; bare XREADGROUP COUNT 256 BLOCK "
            f"100, counting handler, one XACK per read. Every run checks that all N arrived, none is "
            f"pending, none dead-lettered. Throughput = N / (last ack flushed - first publish), "
            f"time.monotonic() across processes; best of reps; CPU figures are medians of reps. "
            f"Round-trip floor (once per rep, after the modes, and warmed up): {args.single_n} awaited "
            f"XADDs of the bare loop's fields, one after the other, by a minimal asyncio client "
            f"(asyncio.Protocol + hiredis.Reader, hiredis.pack_command per command, one future per "
            f"command, no pool), drained by the bare consumer as in single mode; "
            f"round_trip_floor_cpu_us = that publisher's CPU per XADD (median of reps), "
            f"round_trip_floor_share_of_single_publish = floor / L9 single-publish publisher CPU. "
            f"Latency: {args.rate:g} envelopes/s for {args.latency_s:g}s via "
            f"publish_many, paced on the ~1 ms event-loop tick (1-3 envelopes per send, each stamped "
            f"at creation), latency = handler receive time - creation stamp carried in the payload."
        )


async def parent_main(args: argparse.Namespace, redis_url: str, *, owns_server: bool) -> dict[str, Any]:
    bench = Bench(args, redis_url, owns_server=owns_server)
    try:
        return await bench.run()
    finally:
        await bench.redis.aclose()
        await bench.l9_redis.aclose()


def modes_arg(value: str) -> tuple[str, ...]:
    modes = tuple(dict.fromkeys(m.strip() for m in value.split(",") if m.strip()))
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"modes are a comma-separated subset of {','.join(MODES)}")
    return modes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="envelopes per batched throughput run")
    parser.add_argument(
        "--single-n",
        type=int,
        default=None,
        help="envelopes per single-publish run and XADDs per round-trip floor run "
        "(default 20000, or --n if that is smaller)",
    )
    parser.add_argument(
        "--modes",
        type=modes_arg,
        default=MODES,
        help="publishing modes to measure, comma-separated (default: batched,single)",
    )
    parser.add_argument("--batch", type=int, default=500, help="envelopes per publish_many / pipeline")
    parser.add_argument(
        "--dedupe-window-s",
        type=float,
        default=DeliveryPolicy.dedupe_window_s,
        help="the L9 consumer's window of handled ids (bus/dedupe.py); 0: none",
    )
    parser.add_argument(
        "--signing",
        type=lambda v: tuple(v.split(",")),
        default=("hmac", "ed25519"),
        help="signing schemes to measure L9 with (hmac always; ed25519 adds the l9_ed25519 kind)",
    )
    parser.add_argument(
        "--telemetry",
        type=lambda v: tuple(t for t in v.split(",") if t),
        default=("metrics", "tracing"),
        help="telemetry kinds to measure against plain l9 (metrics: l9_metrics, the admin port on; "
        "tracing: l9_tracing, every envelope traced; '' for none)",
    )
    parser.add_argument("--reps", type=int, default=3, help="throughput runs of each of L9 and bare per mode")
    parser.add_argument("--warmup", type=int, default=5_000, help="warm-up envelopes of each kind per mode")
    parser.add_argument("--rate", type=float, default=2_000, help="envelopes/s of the latency run")
    parser.add_argument("--latency-s", type=float, default=5.0, help="seconds of the latency run")
    parser.add_argument("--bare-latency", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--mode",
        choices=("split", "inproc"),
        default="split",
        help="split: consumer in a child process (default); inproc: both sides in one event loop",
    )
    parser.add_argument("--role", choices=("main", "consumer"), default="main", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.single_n is None:
        args.single_n = min(DEFAULT_SINGLE_N, args.n)
    if min(args.n, args.single_n, args.reps, args.batch) < 1:
        parser.error("--n, --single-n, --reps and --batch must be at least 1")
    unknown = set(args.telemetry) - set(TELEMETRY_KINDS.values())
    if unknown:
        parser.error(f"--telemetry: unknown {', '.join(sorted(unknown))} (metrics, tracing)")

    configure_logging("warning")  # structlog to stderr: stdout carries only JSON
    if args.role == "consumer":
        asyncio.run(child_main(args.redis_url))
        return

    stack, home = None, None
    redis_url = os.environ.get("REDIS_URL")
    started = time.monotonic()
    try:
        if not redis_url:
            from l9.devstack import EmbeddedStack

            progress("starting the embedded stack (REDIS_URL not set)")
            home = Path(tempfile.mkdtemp(prefix="l9bench-"))
            stack = EmbeddedStack(home)
            redis_url = stack.up().redis_url
        result = asyncio.run(parent_main(args, redis_url, owns_server=stack is not None))
    finally:
        if stack is not None:
            stack.down()
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)  # the AOF of a run is a few hundred MB
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
