"""Throughput of the auditor, from stream entries to the committed trail, against raw COPY.

    .venv/bin/python -m benchmarks.audit_throughput [--n 200000] [--batch 1000] [--streams 3]
        [--partitions 1,2,4] [--partitions-n 250000] [--proof-n 1000000]

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

The partitioned runs (``--partitions 1,2,4``; ``--n 0`` leaves the run above out): for
each count P, a fresh trail of P chains (``L9_AUDIT_CHAINS``) and P auditor processes
(``l9 agent run auditor``, each taking its chain), fed ``--partitions-n`` envelopes
published beforehand on streams that spread evenly over the P chains. The rate is the
entries committed after the first commit over the time from that commit until the trail
holds all N (polled every 50 ms), so the processes' start-up is left out:
``audit_envelopes_per_s_by_partitions``. Each against raw COPY of the same rows, in the
same run: ``ratio_to_copy_by_partitions``. ``cpu_s_per_1k_by_partitions`` is the auditor
processes' CPU (user + system) per 1,000 entries over the same span, from which
``projected_scaling`` says what P auditors reach when each has a core of its own (the
machine's cores are shared by the auditors, Redis and PostgreSQL, so the measured rate
stops growing with the cores); ``machine_cpu_s_per_1k_by_partitions`` is the CPU of the
whole machine (auditors, PostgreSQL, Redis) per 1,000 entries, and
``machine_busy_share_by_partitions`` how busy its cores were (1.0: every core, all the time).

The proof run (``--proof-n``, default 1,000,000; 0 skips it): a trail of that many entries (appended directly,
batches of 10,000, no Redis), a checkpoint, then ``inclusion_proof`` of 200 random
envelopes: ``proof_ms_p50`` / ``proof_ms_p99`` (each proof read from the database and
checked).

With ``REDIS_URL`` and ``DATABASE_URL`` set it uses those servers; otherwise it
starts the embedded stack in a temporary home and stops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
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
from memory.audit import AuditRecord, Committed, PreparedAppend, SigningKey, prepare_append
from memory.audit.chains import Layout
from memory.postgres import PostgresAuditStore, migrate, writer_dsn

KEYRING = {"bench": b"benchmark-signing-key-0123456789abcdef"}
TARGET_RATE = 50_000
#: The rate target as a share of raw COPY of the same rows on the same server.
TARGET_RATIO = 0.25
TARGET_P99_MS = 250.0
TARGET_VERIFY = 200_000
#: Issue 17's targets: one partition's share of raw COPY, two partitions over one (with the
#: cores for it), the verification walk, an inclusion proof at 1M entries.
TARGET_PARTITION_RATIO = 0.5
TARGET_TWO_OVER_ONE = 1.5
TARGET_VERIFY_PARTITIONED = 400_000
TARGET_PROOF_MS = 5.0
ROOT = Path(__file__).resolve().parent.parent
TYPES = ("l9.plan.locked.v1", "l9.artifact.generated.v1", "l9.validation.tests.v1")


def make_envelope(i: int) -> PacketEnvelope:
    """A modest, realistic payload: a few fields and a short text."""
    return PacketEnvelope.new(
        type=TYPES[i % len(TYPES)],
        source=f"agent://bench/worker-{i % 4}",
        data={"i": i, "path": f"code/agent_{i % 50}/module_{i}.py", "sha256": f"{i:064x}", "lines": i % 400},
        correlation_id=f"run-{i // 10_000}",
    )


async def publish(redis: Any, keys: Keys, n: int, names: list[str]) -> None:
    """``n`` envelopes, envelope ``i`` on stream ``names[i mod len(names)]``, 2,000 per stream
    and call."""
    publisher = Publisher(redis, keys, Signer(KEYRING, "bench"))
    step = 2000 * len(names)
    for start in range(0, n, step):
        for s, name in enumerate(names):
            part = [make_envelope(i) for i in range(start + s, min(n, start + step), len(names))]
            if part:
                await publisher.publish_many(part, name)
        if start // step % 25 == 0:
            progress(f"published {min(n, start + step):,}/{n:,}")


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


def chain_streams(chains: int, per_chain: int = 2) -> list[str]:
    """Stream names, ``per_chain`` in each of ``chains`` chains (the test's streams spread evenly)."""
    layout, found = Layout(chains), dict[int, list[str]]()
    k = 0
    while any(len(found.get(c, [])) < per_chain for c in range(chains)):
        name = f"bench{k}"
        k += 1
        names = found.setdefault(layout.chain_of(name), [])
        if len(names) < per_chain:
            names.append(name)
    return [n for c in range(chains) for n in found[c]]


def _auditor_env(redis_url: str, db: str, keys: Keys, chains: int, batch: int, home: Path) -> dict[str, str]:
    key = SigningKey.generate()
    key_file = home / "audit-key.hex"
    key_file.write_text(key.private_bytes.hex())
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": db,
        "L9_NAMESPACE": keys.namespace,
        "L9_HOME": str(home),
        "L9_SIGNING_KEYS": json.dumps({k: v.decode() for k, v in KEYRING.items()}),
        "L9_SIGNING_KEY_ID": "bench",
        "L9_AUDIT_CHAINS": str(chains),
        "L9_AUDIT_BATCH_SIZE": str(batch),
        "L9_AUDIT_KEY_FILE": str(key_file),
        "L9_LOG_LEVEL": "warning",
        "PYTHONPATH": str(ROOT),
    }


async def _count(db: str) -> int:
    conn = await asyncpg.connect(db)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM l9_audit.entries"))
    finally:
        await conn.close()


def _machine_busy_s() -> float:
    """CPU seconds every core of the machine spent busy so far (all processes, /proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_partitioned(
    redis_url: str, database_url: str, chains: int, n: int, batch: int
) -> dict[str, Any]:
    """``chains`` auditor processes on a fresh trail of ``chains`` chains, then raw COPY."""
    async with fresh_database(database_url) as db:
        return await _partitioned_run(redis_url, db, chains, n, batch)


async def _partitioned_run(redis_url: str, db: str, chains: int, n: int, batch: int) -> dict[str, Any]:
    keys = Keys(f"bench{uuid.uuid4().hex[:8]}")
    redis = connect(redis_url)
    home = Path(tempfile.mkdtemp(prefix="l9bench-auditors-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        await migrate(db, chains=chains)
        progress(f"{chains} partition(s): publishing {n:,} envelopes")
        await publish(redis, keys, n, chain_streams(chains))
        env = _auditor_env(redis_url, db, keys, chains, batch, home)
        command = [sys.executable, "-m", "l9", "agent", "run", "auditor"]
        for i in range(chains):
            log = (home / f"auditor-{i}.log").open("wb")
            procs.append(
                await asyncio.to_thread(
                    subprocess.Popen, command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
                )
            )
        count, first, started, cpu_before, busy_before = 0, 0, 0.0, 0.0, 0.0
        while count < n:
            await asyncio.sleep(0.05)
            count = await _count(db)
            if count and not started:
                first, started = count, time.perf_counter()
                cpu_before, busy_before = sum(_cpu_s(p.pid) for p in procs), _machine_busy_s()
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"an auditor exited early, see {home}")
        elapsed = time.perf_counter() - started
        cpu = sum(_cpu_s(p.pid) for p in procs) - cpu_before
        busy = _machine_busy_s() - busy_before
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
        async with await PostgresAuditStore.open(writer_dsn(db)) as store:
            verify = await store.verify()
        copy = await raw_copy(db, batch)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        doomed = [k async for k in redis.scan_iter(match=f"{keys.namespace}:*")]
        if doomed:
            await redis.delete(*doomed)
        await redis.aclose()
        shutil.rmtree(home, ignore_errors=True)
    rate = (n - first) / elapsed
    return {
        "audit_envelopes_per_s": round(rate),
        "seconds": round(elapsed, 3),
        "ratio_to_copy": round(rate / copy["copy_rows_per_s"], 3),
        "copy_rows_per_s": copy["copy_rows_per_s"],
        "cpu_s_per_1k": round(cpu / (n - first) * 1000, 4),
        "machine_cpu_s_per_1k": round(busy / (n - first) * 1000, 4),
        "machine_busy_share": round(busy / elapsed / (os.cpu_count() or 1), 3),
        "verify_ok": verify.ok,
        "verify_entries_per_s": round(verify.entries_per_s),
    }


def _records(start: int, n: int, streams: list[str]) -> list[AuditRecord]:
    signer = Signer(KEYRING, "bench")
    return [
        AuditRecord.from_envelope(
            make_envelope(i), stream=streams[i % len(streams)], entry_id=f"{i + 1}-0", signer=signer
        )
        for i in range(start, start + n)
    ]


async def run_proofs(database_url: str, n: int, samples: int = 200) -> dict[str, Any]:
    """A trail of ``n`` entries, a checkpoint, and ``samples`` inclusion proofs made and checked."""
    async with fresh_database(database_url) as db:
        await migrate(db)
        key = SigningKey.generate()
        async with await PostgresAuditStore.open(writer_dsn(db)) as store:
            ids: list[str] = []
            for start in range(0, n, 10_000):
                records = _records(start, min(10_000, n - start), ["proofs"])
                await store.append_prepared(prepare_append(records))
                ids += [r.envelope_id for r in records[:: max(1, n // (samples * 5))]]
                if start % 200_000 == 0:
                    progress(f"proof trail: {start + len(records):,}/{n:,}")
            checkpoint = await store.make_checkpoint(key)
            ms = []
            for envelope_id in random.Random(17).sample(ids, min(samples, len(ids))):
                started = time.perf_counter()
                proof = await store.inclusion_proof(envelope_id, checkpoint)
                ms.append((time.perf_counter() - started) * 1000)
                assert proof.problem(key.trusted()) is None
    ms.sort()
    return {
        "proof_entries": n,
        "proof_ms_p50": round(percentile(ms, 50), 3),
        "proof_ms_p99": round(percentile(ms, 99), 3),
    }


async def partitioned(redis_url: str, database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """The partitioned runs and the proof run (see the module doc)."""
    runs = {
        p: await run_partitioned(redis_url, database_url, p, args.partitions_n, args.batch)
        for p in args.partitions
    }
    out: dict[str, Any] = {
        "partitions_n": args.partitions_n,
        "audit_envelopes_per_s_by_partitions": {str(p): r["audit_envelopes_per_s"] for p, r in runs.items()},
        "ratio_to_copy_by_partitions": {str(p): r["ratio_to_copy"] for p, r in runs.items()},
        "copy_rows_per_s_by_partitions": {str(p): r["copy_rows_per_s"] for p, r in runs.items()},
        "cpu_s_per_1k_by_partitions": {str(p): r["cpu_s_per_1k"] for p, r in runs.items()},
        "machine_cpu_s_per_1k_by_partitions": {str(p): r["machine_cpu_s_per_1k"] for p, r in runs.items()},
        "machine_busy_share_by_partitions": {str(p): r["machine_busy_share"] for p, r in runs.items()},
        "verify_entries_per_s_by_partitions": {str(p): r["verify_entries_per_s"] for p, r in runs.items()},
        "verify_ok_by_partitions": {str(p): r["verify_ok"] for p, r in runs.items()},
    }
    if 1 in runs:
        one = runs[1]
        # P auditors, a core each: each does 1/P of the work at one auditor's CPU per entry
        out["projected_scaling"] = {
            str(p): round(runs[1]["cpu_s_per_1k"] / r["cpu_s_per_1k"] * p, 2) for p, r in runs.items()
        }
        if 2 in runs:
            out["two_over_one"] = round(runs[2]["audit_envelopes_per_s"] / one["audit_envelopes_per_s"], 3)
    if args.proof_n:
        out.update(await run_proofs(database_url, args.proof_n))
    verify_best = max(out["verify_entries_per_s_by_partitions"].values(), default=0)
    out["targets_partitioned"] = {
        "ratio_to_copy_by_partitions.1": TARGET_PARTITION_RATIO,
        "two_over_one": TARGET_TWO_OVER_ONE,
        "verify_entries_per_s": TARGET_VERIFY_PARTITIONED,
        "proof_ms_p50": TARGET_PROOF_MS,
    }
    out["met_partitioned"] = {
        "ratio_to_copy_by_partitions.1": runs[1]["ratio_to_copy"] >= TARGET_PARTITION_RATIO
        if 1 in runs
        else None,
        "two_over_one": out["two_over_one"] >= TARGET_TWO_OVER_ONE if "two_over_one" in out else None,
        "verify_entries_per_s": verify_best >= TARGET_VERIFY_PARTITIONED if runs else None,
        "proof_ms_p50": out["proof_ms_p50"] <= TARGET_PROOF_MS if "proof_ms_p50" in out else None,
    }
    return out


@contextlib.asynccontextmanager
async def fresh_database(database_url: str) -> AsyncIterator[str]:
    """A new database of the server ``database_url`` names (its URL), dropped afterwards."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(database_url)
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    try:
        yield _database(database_url, name)
    finally:
        admin = await asyncpg.connect(database_url)
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


def _database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def bench(redis_url: str, database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    keys = Keys(f"bench{uuid.uuid4().hex[:8]}")
    redis = connect(redis_url)
    try:
        async with fresh_database(database_url) as db:
            await migrate(db)
            progress(f"publishing {args.n:,} envelopes on {args.streams} streams")
            await publish(redis, keys, args.n, [f"bench{s}" for s in range(args.streams)])
            progress("auditing")
            audit = await run_auditor(redis, keys, writer_dsn(db), args.n, args.batch)
            progress("raw COPY baseline")
            copy = await raw_copy(db, args.batch)
    finally:
        doomed = [k async for k in redis.scan_iter(match=f"{keys.namespace}:*")]
        if doomed:
            await redis.delete(*doomed)
        await redis.aclose()
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


def _counts(text: str) -> list[int]:
    counts = [int(t) for t in text.split(",") if t.strip()]
    if any(not 1 <= c <= 64 for c in counts):
        raise argparse.ArgumentTypeError(f"chain counts are 1 to 64, not {text!r}")
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200_000, help="envelopes to audit")
    parser.add_argument("--batch", type=int, default=1000, help="auditor batch size")
    parser.add_argument("--streams", type=int, default=3, help="streams the envelopes are spread over")
    parser.add_argument(
        "--partitions",
        type=_counts,
        default=[],
        help="chain counts of partitioned runs, comma-separated, e.g. 1,2,4 (default: none)",
    )
    parser.add_argument(
        "--partitions-n",
        type=int,
        default=250_000,
        help="envelopes per partitioned run (enough for the auditors' start and hand-over to weigh little)",
    )
    parser.add_argument(
        "--proof-n", type=int, default=1_000_000, help="entries of the proof run (0 skips it)"
    )
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
        result = asyncio.run(bench(redis_url, database_url, args)) if args.n else {}
        if args.partitions or args.proof_n:
            result.update(asyncio.run(partitioned(redis_url, database_url, args)))
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
