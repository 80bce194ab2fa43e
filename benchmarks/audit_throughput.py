"""Throughput of the auditor, from stream entries to the committed trail, against raw COPY.

    .venv/bin/python -m benchmarks.audit_throughput [--n 200000] [--batch 1000] [--streams 3]

Prints one JSON object on stdout; progress goes to stderr.

Method: ``--n`` signed envelopes are published on ``--streams`` streams first.
Then the auditor (its real handler and batch delivery loop, in this process)
reads, verifies, appends and acks them, publishing each batch on the audit
stream, as ``l9 agent run auditor`` does. ``audit_envelopes_per_s`` = N / the
time from its start to the last commit. ``commit_p99_ms`` is the p99 of one
``append`` (lock, dedupe, hash, COPY x2, head CAS, NOTIFY, COMMIT) per batch.

Baseline, same run, same server: the very rows the auditor wrote (entries and
payloads) are ``copy_records_to_table``'d again, ``--batch`` rows per
transaction, into twin tables with the same indexes and no triggers:
``copy_rows_per_s``, and ``ratio`` = audit / copy. The rate target was sized as
"about a quarter of raw COPY" (``TARGET_RATIO``): ``target_share_of_copy`` says
what share of this server's raw COPY the absolute target asks for, so a run shows
whether the absolute figure is reachable here at all (the auditor appends the same
rows with COPY, and does more besides). Then ``verify()`` walks the whole trail:
``verify_entries_per_s``.

With ``REDIS_URL`` and ``DATABASE_URL`` set it uses those servers; otherwise it
starts the embedded stack in a temporary home and stops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg

from agents.auditor.agent import GROUP, Auditor, Checkpointer, is_transient
from agents.auditor.stream import AuditStream
from benchmarks.bus_throughput import code_version, percentile, progress
from bus import DEFAULT_TOPOLOGY, BatchConsumer, DeliveryPolicy, Keys, Publisher, connect
from envelope import PacketEnvelope, Signer, Verifier
from l9.logs import configure_logging
from l9.process import AUDITOR_YOUNG, settle_heap
from memory.audit import Committed, PreparedAppend, SigningKey
from memory.postgres import PostgresAuditStore, migrate, writer_dsn

KEYRING = {"bench": b"benchmark-signing-key-0123456789abcdef"}
TARGET_RATE = 50_000
#: The rate target as a share of raw COPY of the same rows on the same server.
TARGET_RATIO = 0.25
TARGET_P99_MS = 250.0
TARGET_VERIFY = 200_000
TYPES = ("l9.plan.locked.v1", "l9.artifact.generated.v1", "l9.validation.tests.v1")


def make_envelope(i: int) -> PacketEnvelope:
    """A modest, realistic payload: a few fields and a short text."""
    return PacketEnvelope.new(
        type=TYPES[i % len(TYPES)],
        source=f"agent://bench/worker-{i % 4}",
        data={"i": i, "path": f"code/agent_{i % 50}/module_{i}.py", "sha256": f"{i:064x}", "lines": i % 400},
        correlation_id=f"run-{i // 10_000}",
    )


async def publish(redis: Any, keys: Keys, n: int, streams: int) -> None:
    publisher = Publisher(redis, keys, Signer(KEYRING, "bench"))
    names = [f"bench{s}" for s in range(streams)]
    for start in range(0, n, 2000):
        for s, name in enumerate(names):
            part = [make_envelope(i) for i in range(start + s, min(n, start + 2000), streams)]
            await publisher.publish_many(part, name)
        if start % 50_000 == 0:
            progress(f"published {start + 2000:,}/{n:,}")


class TimedStore(PostgresAuditStore):
    """The store, timing each append (one batch commit)."""

    commit_ms: list[float]
    last_commit: float

    async def append_prepared(self, prepared: PreparedAppend) -> list[Committed]:
        started = time.perf_counter()
        out = await super().append_prepared(prepared)
        self.last_commit = time.perf_counter()
        self.commit_ms.append((self.last_commit - started) * 1000)
        return out


async def run_auditor(redis: Any, keys: Keys, writer: str, n: int, batch: int) -> dict[str, Any]:
    store = await TimedStore.open(writer, max_size=2)
    assert isinstance(store, TimedStore)
    store.commit_ms, store.last_commit = [], 0.0
    signer = Signer(KEYRING, "bench")
    stream = AuditStream(redis, keys, store, signer, "agent://auditor/bench-0")
    checkpointer = Checkpointer(store, SigningKey.generate(), 10_000, 60.0)
    auditor = Auditor(redis, keys, store, Verifier(KEYRING), stream, checkpointer, DEFAULT_TOPOLOGY)
    consumer = BatchConsumer(
        redis,
        keys,
        group=GROUP,
        consumer="auditor-bench",
        streams=auditor.streams,
        handler=auditor.handle,
        policy=DeliveryPolicy(),
        batch_size=batch,
        is_transient=is_transient,
    )
    settle_heap(AUDITOR_YOUNG, 20, 10)  # as the auditor process does
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(checkpointer.run)
        tg.start_soon(auditor.publish_loop)
        async with anyio.create_task_group() as consuming:
            consuming.start_soon(consumer.run)
            while auditor.stats["stored"] < n:
                await anyio.sleep(0.05)
                if auditor.stats["batches"] % 50 == 0:
                    progress(f"audited {auditor.stats['stored']:,}/{n:,}")
            consumer.stop()
        tg.cancel_scope.cancel()
    elapsed = store.last_commit - started
    ms = sorted(store.commit_ms)
    verify = await store.verify()
    await store.close()
    assert verify.ok, verify.summary()
    return {
        "audit_envelopes_per_s": round(n / elapsed),
        "seconds": round(elapsed, 3),
        "batches": len(ms),
        "commit_p50_ms": round(percentile(ms, 50), 2),
        "commit_p99_ms": round(percentile(ms, 99), 2),
        "commit_max_ms": round(ms[-1], 2),
        "commit_mean_ms": round(statistics.fmean(ms), 2),
        "verify_entries_per_s": round(verify.entries_per_s),
        "verify_seconds": round(verify.seconds, 3),
        **{f"auditor_{k}": v for k, v in auditor.stats.items()},
    }


async def raw_copy(admin: str, batch: int) -> dict[str, Any]:
    """COPY the auditor's own rows again into twin tables (same indexes, no triggers)."""
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(
            "CREATE SCHEMA bench_copy; "
            "CREATE TABLE bench_copy.entries (LIKE l9_audit.entries INCLUDING ALL); "
            "CREATE TABLE bench_copy.payloads (LIKE l9_audit.payloads INCLUDING ALL)"
        )
        entries = [tuple(r) for r in await conn.fetch("SELECT * FROM l9_audit.entries ORDER BY seq")]
        payloads = [tuple(r) for r in await conn.fetch("SELECT * FROM l9_audit.payloads ORDER BY seq")]
        e_cols = [a.name for a in (await conn.prepare("SELECT * FROM l9_audit.entries")).get_attributes()]
        p_cols = [a.name for a in (await conn.prepare("SELECT * FROM l9_audit.payloads")).get_attributes()]
        started = time.perf_counter()
        for at in range(0, len(entries), batch):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "entries", schema_name="bench_copy", records=entries[at : at + batch], columns=e_cols
                )
                await conn.copy_records_to_table(
                    "payloads", schema_name="bench_copy", records=payloads[at : at + batch], columns=p_cols
                )
        elapsed = time.perf_counter() - started
    finally:
        await conn.close()
    return {"copy_rows_per_s": round(len(entries) / elapsed), "copy_seconds": round(elapsed, 3)}


def _database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def bench(redis_url: str, database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(database_url)
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    db = _database(database_url, name)
    keys = Keys(f"bench{uuid.uuid4().hex[:8]}")
    redis = connect(redis_url)
    try:
        await migrate(db)
        progress(f"publishing {args.n:,} envelopes on {args.streams} streams")
        await publish(redis, keys, args.n, args.streams)
        progress("auditing")
        audit = await run_auditor(redis, keys, writer_dsn(db), args.n, args.batch)
        progress("raw COPY baseline")
        copy = await raw_copy(db, args.batch)
    finally:
        doomed = [k async for k in redis.scan_iter(match=f"{keys.namespace}:*")]
        if doomed:
            await redis.delete(*doomed)
        await redis.aclose()
        admin = await asyncpg.connect(database_url)
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
    ratio = audit["audit_envelopes_per_s"] / copy["copy_rows_per_s"]
    return {
        **audit,
        **copy,
        "ratio": round(ratio, 3),
        "target_share_of_copy": round(TARGET_RATE / copy["copy_rows_per_s"], 3),
        "targets": {
            "audit_envelopes_per_s": TARGET_RATE,
            "ratio": TARGET_RATIO,
            "commit_p99_ms": TARGET_P99_MS,
            "verify_entries_per_s": TARGET_VERIFY,
        },
        "met": {
            "audit_envelopes_per_s": audit["audit_envelopes_per_s"] >= TARGET_RATE,
            "ratio": ratio >= TARGET_RATIO,
            "commit_p99_ms": audit["commit_p99_ms"] <= TARGET_P99_MS,
            "verify_entries_per_s": audit["verify_entries_per_s"] >= TARGET_VERIFY,
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200_000, help="envelopes to audit")
    parser.add_argument("--batch", type=int, default=1000, help="auditor batch size")
    parser.add_argument("--streams", type=int, default=3, help="streams the envelopes are spread over")
    args = parser.parse_args(argv)
    configure_logging("warning")
    redis_url, database_url = os.environ.get("REDIS_URL"), os.environ.get("DATABASE_URL")
    home: Path | None = None
    stack = None
    if not (redis_url and database_url):
        from l9.devstack import EmbeddedStack

        progress("starting the embedded stack (REDIS_URL/DATABASE_URL not set)")
        home = Path(tempfile.mkdtemp(prefix="l9bench-"))
        stack = EmbeddedStack(home)
        endpoints = stack.up()
        redis_url, database_url = endpoints.redis_url, endpoints.database_url
    try:
        result = asyncio.run(bench(redis_url, database_url, args))
    finally:
        if stack is not None and home is not None:
            stack.down()
            shutil.rmtree(home, ignore_errors=True)
    result.update(
        {
            "n": args.n,
            "batch": args.batch,
            "streams": args.streams,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "code": code_version(),
        }
    )
    print(json.dumps(result, indent=2))
    sys.exit(0)


if __name__ == "__main__":
    main()
