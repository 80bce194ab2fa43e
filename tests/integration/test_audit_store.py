"""The audit trail's storage layer against the real PostgreSQL: migrations, roles,
append-only triggers, the hash chain, concurrent writers, checkpoints, and a tamper
matrix in which a superuser bypasses the triggers and verification must name the damage."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import sys
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import msgpack
import pytest

from envelope import SIGNED_FIELDS, PacketEnvelope, Signer, Verifier
from l9.devstack import StackEndpoints
from l9.settings import Settings
from memory.audit.chains import ChainHead, tree_head_root
from memory.chain import (
    GENESIS,
    HASH_VERSION,
    canonical_header,
    chain_hash,
    leaf_hash,
    payload_hash,
    to_micros,
)
from memory.postgres import (
    AppendStatus,
    AuditRecord,
    AuditStoreError,
    AuditStoreUnavailable,
    Checkpoint,
    Damage,
    EntryFilter,
    MigrationError,
    PostgresAuditStore,
    SigningKey,
    migrate,
    read_checkpoint,
    redact,
    with_user,
    writer_dsn,
)
from memory.postgres.schema import MIGRATIONS_DIR
from memory.postgres.store import checkpoint_values
from tests.conftest import KEYRING, ROOT
from tests.integration.conftest import admin_sql, drop_database, new_database

pytestmark = pytest.mark.integration

TYPES = ("l9.plan.locked.v1", "l9.plan.rejected.v1", "l9.artifact.generated.v1")


# -- records ---------------------------------------------------------------------------------------


def make_records(
    n: int, *, correlation_id: str | None = None, stream: str = "t:audit", ids: list[str] | None = None
) -> list[AuditRecord]:
    """``n`` signed envelopes as read from ``stream``."""
    signer = Signer(KEYRING, "dev")
    run = correlation_id or str(uuid.uuid4())
    out = []
    for i in range(n):
        envelope = PacketEnvelope.new(
            type=TYPES[i % len(TYPES)],
            source=f"agent://planner/{i % 2}",
            data={"i": i, "note": "x" * 64},
            correlation_id=run,
            causation_id=None if i == 0 else f"cause-{i - 1}",
        )
        if ids is not None:
            envelope = envelope.model_copy(update={"id": ids[i]})
        out.append(
            AuditRecord.from_envelope(envelope, stream=stream, entry_id=f"{1000 + i}-0", signer=signer)
        )
    return out


async def _seqs(admin: str) -> list[int]:
    conn = await asyncpg.connect(admin)
    try:
        return [r[0] for r in await conn.fetch("SELECT seq FROM l9_audit.entries ORDER BY seq")]
    finally:
        await conn.close()


# -- pure pieces -----------------------------------------------------------------------------------


def test_chain_formulas_are_the_documented_ones() -> None:
    import hashlib

    header = canonical_header([HASH_VERSION, 1, "id", "t", "s", "c", None, 5, 6, "st", "1-0"])
    assert header == msgpack.packb([1, 1, "id", "t", "s", "c", None, 5, 6, "st", "1-0"], use_bin_type=True)
    digest = payload_hash(b"env", "sig", "k")
    assert digest == hashlib.sha256(msgpack.packb([b"env", "sig", "k"], use_bin_type=True)).digest()
    leaf = leaf_hash(header, digest)
    assert leaf == hashlib.sha256(b"\x00" + header + digest).digest()
    assert chain_hash(GENESIS, leaf) == hashlib.sha256(b"\x01" + bytes(32) + leaf).digest()
    with pytest.raises(ValueError, match="hash version"):
        canonical_header([2, 1, "id", "t", "s", "c", None, 5, 6, "st", "1-0"])
    assert to_micros(datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=UTC)) == 1_000_005


def test_writer_dsn_is_the_admin_url_as_l9_writer_unless_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    admin = "postgresql://postgres:secret@/l9?host=/tmp/pg&port=5432"
    assert writer_dsn(admin) == "postgresql://l9_writer@/l9?host=/tmp/pg&port=5432"
    assert (
        with_user("postgres://a@db.example:6543/x", "l9_writer") == "postgres://l9_writer@db.example:6543/x"
    )
    assert writer_dsn(admin, "postgresql://w:pw@h/l9") == "postgresql://w:pw@h/l9"
    with pytest.raises(ValueError, match="postgresql://"):
        writer_dsn("host=/tmp dbname=l9")
    monkeypatch.setenv("L9_DATABASE_WRITER_URL", "postgresql://w@h/x")
    assert Settings().database_writer_url == "postgresql://w@h/x"


def test_record_from_a_stream_entry_takes_the_signed_header() -> None:
    (record,) = make_records(1, correlation_id="run-1")
    assert record.correlation_id == "run-1" and record.key_id == "dev" and record.sig
    entry = {b"env": record.env, b"sig": record.sig.encode() if record.sig else b"", b"type": b"lies"}
    again = AuditRecord.from_stream_entry("t:audit", b"1000-0", entry)
    assert again == record
    with pytest.raises(ValueError, match="no 'env' field"):
        AuditRecord.from_stream_entry("t:audit", "1-0", {"type": "x"})
    with pytest.raises(ValueError, match="undecodable"):
        AuditRecord.from_stream_entry("t:audit", "1-0", {"env": b"\xc1"})
    values = msgpack.unpackb(record.env)
    values[SIGNED_FIELDS.index("causation_id")] = 7
    with pytest.raises(ValueError, match="causation_id is a int"):
        AuditRecord.from_stream_entry("t:audit", "1-0", {"env": msgpack.packb(values)})


# -- migrations ------------------------------------------------------------------------------------


async def test_migrate_is_idempotent_and_refuses_an_edited_migration(admin_dsn: str, tmp_path: Path) -> None:
    await migrate(admin_dsn)  # the fixture applied it once already: nothing to do
    conn = await asyncpg.connect(admin_dsn)
    try:
        rows = await conn.fetch("SELECT version, name FROM public.schema_migrations")
        owner = await conn.fetchval("SELECT tableowner FROM pg_tables WHERE tablename = 'entries'")
        login = await conn.fetchval("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'l9_owner'")
    finally:
        await conn.close()
    shipped = sorted(p.name for p in MIGRATIONS_DIR.glob("*.sql"))
    assert shipped[:2] == ["0001_audit_trail.sql", "0002_sympy_metrics.sql"]
    assert [(r["version"], r["name"]) for r in rows] == [(int(n[:4]), n) for n in shipped]
    assert owner == "l9_owner" and login is False
    edited = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, edited)
    path = edited / "0001_audit_trail.sql"
    path.write_text(path.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match=r"0001_audit_trail\.sql changed after it was applied"):
        await migrate(admin_dsn, edited)


async def test_store_refuses_an_unmigrated_or_unreachable_database(stack: StackEndpoints) -> None:
    url = await new_database(stack)
    try:
        with pytest.raises(AuditStoreError, match="migrate"):
            await PostgresAuditStore.open(url)
    finally:
        await drop_database(stack, url)
    gone = "postgresql://l9_writer@/l9?host=/nonexistent-socket-dir&port=1"
    with pytest.raises(AuditStoreUnavailable, match="PostgreSQL unavailable"):
        await PostgresAuditStore.open(gone)


async def test_appends_survive_killed_connections(store: PostgresAuditStore, admin_dsn: str) -> None:
    await store.append(make_records(2))
    kill = "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = 'l9_writer'"
    await admin_sql(admin_dsn, kill + " AND datname = current_database()")
    committed = await store.append(make_records(3))  # the pool replaces the dead connection
    assert [c.seq for c in committed] == [3, 4, 5]
    assert (await store.verify()).ok


# -- appending -------------------------------------------------------------------------------------


async def test_append_assigns_gapless_seqs_and_drops_duplicates(
    store: PostgresAuditStore, admin_dsn: str
) -> None:
    records = make_records(6)
    batch = [records[0], records[1], records[0], records[2]]  # a duplicate inside the batch
    first = await store.append(batch)
    assert [c.seq for c in first] == [1, 2, 1, 3]
    assert [c.status for c in first] == ["stored", "stored", "duplicate", "stored"]
    again = await store.append(records[1:])  # 1 and 2 are stored already
    assert [(c.seq, c.status) for c in again] == [
        (2, "duplicate"),
        (3, "duplicate"),
        (4, "stored"),
        (5, "stored"),
        (6, "stored"),
    ]
    assert again[0].chain_hash == first[1].chain_hash and again[0].recorded_at == first[1].recorded_at
    forged = records[3]._replace(env=records[3].env + b"\x00")  # same id, other bytes
    (conflict,) = await store.append([forged])
    assert conflict.status is AppendStatus.CONFLICT and conflict.seq == 4 and not conflict.new
    head = await store.head()
    assert head.seq == 6 and head.chain_hash == again[-1].chain_hash
    assert await _seqs(admin_dsn) == [1, 2, 3, 4, 5, 6]
    assert await store.append([]) == []
    assert (await store.verify()).ok


async def test_stored_entries_come_back_by_run_and_by_cursor(store: PostgresAuditStore) -> None:
    run_a, run_b = make_records(9, correlation_id="run-a"), make_records(4, correlation_id="run-b")
    await store.append(run_a[:5] + run_b + run_a[5:])
    entries = await store.entries_for_correlation("run-a")
    assert [e.envelope_id for e in entries] == [r.envelope_id for r in run_a]
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5, 10, 11, 12, 13]
    envelope = entries[1].envelope(Verifier(KEYRING))
    assert envelope.id == run_a[1].envelope_id and envelope.data["i"] == 1
    assert entries[1].causation_id == "cause-0" and entries[1].stream == "t:audit"
    assert entries[1].envelope_time == run_a[1].time and not entries[1].redacted

    page = await store.entries_after(0, limit=4)
    assert [e.seq for e in page.entries] == [1, 2, 3, 4] and page.cursor == 4
    page = await store.entries_after(page.cursor, limit=100)
    assert [e.seq for e in page.entries] == list(range(5, 14)) and page.cursor == 13
    locked = await store.entries_after(
        0, filters=EntryFilter(type_glob="l9.plan.lock*", correlation_id="run-b")
    )
    assert [e.seq for e in locked.entries] == [6, 9] and locked.cursor == 13
    one_source = await store.entries_after(0, filters=EntryFilter(source="agent://planner/1"))
    assert {e.source for e in one_source.entries} == {"agent://planner/1"}
    future = datetime.now(UTC) + timedelta(hours=1)
    assert (await store.entries_after(0, filters=EntryFilter(since=future))).entries == []
    assert (await store.entries_after(13)).entries == [] and (await store.entries_after(13)).cursor == 13
    literal = await store.entries_after(0, filters=EntryFilter(type_glob="l9_plan%"))
    assert literal.entries == []  # '_' and '%' are literal characters in a glob


async def test_one_notification_per_committed_batch(store: PostgresAuditStore) -> None:
    heads = store.watch_head()
    assert isinstance(heads, AsyncGenerator)  # so aclose() runs its finally: the LISTEN connection closes
    waiter = asyncio.ensure_future(anext(heads))
    await asyncio.sleep(0.2)  # LISTEN is in place
    await store.append(make_records(3))
    assert await asyncio.wait_for(waiter, 10) == 3
    await store.append(make_records(2))
    assert await asyncio.wait_for(anext(heads), 10) == 5
    await heads.aclose()


# -- concurrency -----------------------------------------------------------------------------------


N_SHARED = 1200


def _shared_ids(n: int = N_SHARED) -> list[str]:
    return [str(uuid.UUID(int=i + 1, version=4)) for i in range(n)]


async def _append_all(writer: PostgresAuditStore, records: list[AuditRecord], batch: int) -> None:
    for at in range(0, len(records), batch):
        await writer.append(records[at : at + batch])


async def _worker(dsn: str, seed: int) -> None:
    """A writer process: every shared id in its own order, once the test says go."""
    ids = _shared_ids()
    random.Random(seed).shuffle(ids)
    records = make_records(len(ids), ids=ids, stream=f"process-{seed}")
    async with await PostgresAuditStore.open(dsn, max_size=1) as writer:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        await _append_all(writer, records, 37)


_WORKER = "import asyncio, sys; from tests.integration.test_audit_store import _worker; "
_WORKER += "asyncio.run(_worker(sys.argv[1], int(sys.argv[2])))"


async def test_concurrent_writers_in_tasks_and_processes_never_fork(
    store: PostgresAuditStore, admin_dsn: str
) -> None:
    """Two processes and four tasks append overlapping envelope ids in batches, all at
    once: every id is stored once, seq is 1..N without gap, and the chain verifies."""
    dsn = writer_dsn(admin_dsn)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    pipe = asyncio.subprocess.PIPE
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WORKER,
            dsn,
            str(seed),
            env=env,
            cwd=ROOT,
            stdin=pipe,
            stdout=pipe,
            stderr=pipe,
        )
        for seed in (1, 2)
    ]
    ids = _shared_ids()
    batches = [(ids[k::2], 23, f"task-{k}") for k in (0, 1)] + [(ids[900:], 11, f"task-{k}") for k in (2, 3)]
    writers = [await PostgresAuditStore.open(dsn, max_size=1) for _ in batches]
    records = [make_records(len(chosen), ids=chosen, stream=stream) for chosen, _, stream in batches]
    for proc in procs:
        assert proc.stdout is not None and proc.stdin is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"ready\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
    sizes = [size for _, size, _ in batches]
    await asyncio.gather(*map(_append_all, writers, records, sizes))
    for writer in writers:
        await writer.close()
    for proc in procs:
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
    assert await _seqs(admin_dsn) == list(range(1, N_SHARED + 1))
    report = await store.verify()
    assert report.ok, report.summary()
    assert report.entries_checked == N_SHARED and (await store.head()).seq == N_SHARED
    streams = {e.stream for e in (await store.entries_after(0, limit=N_SHARED)).entries}
    assert len(streams) >= 3, streams  # several writers really raced for the same ids


# -- privileges ------------------------------------------------------------------------------------


async def _refused(conn: asyncpg.Connection, sql: str, match: str) -> None:
    with pytest.raises(asyncpg.PostgresError, match=match):
        await conn.execute(sql)


async def test_the_writer_can_only_append(store: PostgresAuditStore, admin_dsn: str) -> None:
    await store.append(make_records(3))
    writer = await asyncpg.connect(writer_dsn(admin_dsn))
    try:
        denied = "permission denied"
        await _refused(writer, "UPDATE l9_audit.entries SET type = 'x' WHERE seq = 1", denied)
        await _refused(writer, "DELETE FROM l9_audit.entries WHERE seq = 1", denied)
        await _refused(writer, "DELETE FROM l9_audit.payloads WHERE seq = 1", denied)
        await _refused(writer, "UPDATE l9_audit.payloads SET sig = 'x'", denied)
        await _refused(writer, "TRUNCATE l9_audit.entries", denied)
        await _refused(writer, "TRUNCATE l9_audit.payloads", denied)
        await _refused(writer, "DELETE FROM l9_audit.checkpoints", denied)
        await _refused(writer, "ALTER TABLE l9_audit.entries DISABLE TRIGGER ALL", "must be owner")
        await _refused(
            writer, "ALTER TABLE l9_audit.entries DISABLE TRIGGER entries_append_only", "must be owner"
        )
        await _refused(writer, "DROP TRIGGER entries_append_only ON l9_audit.entries", "must be owner")
        await _refused(writer, "SET session_replication_role = replica", denied)
        await _refused(writer, "SELECT l9_audit.redact(1, 'why')", denied)
        await _refused(writer, "UPDATE l9_audit.chains SET size = 1 WHERE chain = 0", "moves forward only")
        await _refused(
            writer,
            "UPDATE l9_audit.chains SET size = 9, chain_hash = chain_hash WHERE chain = 0",
            "must name a stored entry",
        )
        await _refused(writer, "DELETE FROM l9_audit.chains", denied)
        assert await writer.fetchval("SELECT count(*) FROM l9_audit.entries") == 3
    finally:
        await writer.close()


async def test_even_the_owner_cannot_change_the_trail(store: PostgresAuditStore, admin_dsn: str) -> None:
    await store.append(make_records(2))
    owner = await asyncpg.connect(admin_dsn)
    try:
        await owner.execute("SET ROLE l9_owner")
        append_only = "append-only"
        for table in ("entries", "payloads", "redactions", "checkpoints"):
            await _refused(owner, f"TRUNCATE l9_audit.{table}", append_only)
        await _refused(owner, "UPDATE l9_audit.entries SET type = 'x' WHERE false", append_only)
        await _refused(owner, "DELETE FROM l9_audit.entries WHERE seq = 1", append_only)
        await _refused(owner, "UPDATE l9_audit.payloads SET sig = 'x'", append_only)
        await _refused(owner, "DELETE FROM l9_audit.payloads WHERE seq = 1", "use l9_audit.redact")
        for table in ("chains", "tree_nodes", "trail"):
            await _refused(owner, f"DELETE FROM l9_audit.{table}", append_only)
            await _refused(owner, f"TRUNCATE l9_audit.{table}", append_only)
    finally:
        await owner.close()
    assert (await store.verify()).ok


# -- redaction -------------------------------------------------------------------------------------


async def test_a_redaction_removes_a_payload_and_the_chain_still_verifies(
    store: PostgresAuditStore, admin_dsn: str
) -> None:
    await store.append(make_records(50, correlation_id="run-r"))
    await redact(admin_dsn, 7, "GDPR erasure request 42")
    with pytest.raises(AuditStoreError, match="already redacted"):
        await redact(admin_dsn, 7, "again")
    with pytest.raises(AuditStoreError, match="needs a reason"):
        await redact(admin_dsn, 8, "")
    report = await store.verify()
    assert report.ok and report.redacted == 1, report.summary()
    entry = (await store.entries_for_correlation("run-r"))[6]
    assert entry.seq == 7 and entry.redacted and entry.env is None
    with pytest.raises(ValueError, match="redacted"):
        entry.envelope()
    await _tamper(admin_dsn, "DELETE FROM l9_audit.payloads WHERE seq = 9")  # no redaction record
    report = await store.verify()
    assert report.first is not None and (report.first.kind, report.first.seq) == (Damage.PAYLOAD_MISSING, 9)


# -- checkpoints -----------------------------------------------------------------------------------


async def test_checkpoints_are_signed_linked_and_written_outside(store: PostgresAuditStore) -> None:
    key = SigningKey.generate()
    assert store.checkpoint_dir is not None
    await store.append(make_records(10))
    one = await store.make_checkpoint(key)
    assert await store.make_checkpoint(key) == one  # the head did not move
    await store.append(make_records(5))
    two = await store.make_checkpoint(key)
    assert (one.id, one.seq, two.id, two.seq) == (1, 10, 2, 15)
    assert two.prev_id == 1 and two.prev_digest == one.digest
    assert await store.checkpoints() == [one, two]
    files = sorted(store.checkpoint_dir.glob("*.json"))
    assert [read_checkpoint(f) for f in files] == [one, two]
    assert two.signature_problem(key.trusted()) is None
    assert "not a trusted" in (two.signature_problem(SigningKey.generate().trusted()) or "")

    for start in (None, files[0], files[1]):
        report = await store.verify(from_checkpoint=start, trusted_keys=key.trusted())
        assert report.ok, report.summary()
    from_two = await store.verify(from_checkpoint=files[1], trusted_keys=key.trusted())
    assert from_two.entries_checked == 0 and from_two.started_from == 2 and from_two.last_seq == 15

    data = json.loads(files[0].read_text())
    data["seq"] = 9
    edited = files[0].with_name("edited.json")
    edited.write_text(json.dumps(data))
    report = await store.verify(from_checkpoint=edited, trusted_keys=key.trusted())
    assert report.first is not None and report.first.kind is Damage.BAD_CHECKPOINT_SIGNATURE
    assert "digest does not match" in report.first.detail


async def test_the_chain_count_is_chosen_while_the_trail_is_empty_then_fixed(
    store: PostgresAuditStore, admin_dsn: str
) -> None:
    await migrate(admin_dsn, chains=3)  # empty: allowed
    await migrate(admin_dsn, chains=1)
    await store.append(make_records(2))
    with pytest.raises(
        AuditStoreError, match=r"L9_AUDIT_CHAINS=2, but the trail already holds entries in 1 chain"
    ):
        await migrate(admin_dsn, chains=2)
    await migrate(admin_dsn, chains=1)  # the same count: nothing to do
    await migrate(admin_dsn)  # none asked for: the trail keeps its own
    assert (await store.verify()).ok


async def test_an_empty_trail_verifies_and_can_be_checkpointed(store: PostgresAuditStore) -> None:
    key = SigningKey.generate()
    report = await store.verify(trusted_keys=key.trusted())
    assert report.ok and report.last_seq == 0 and report.chain_hash == GENESIS
    genesis = await store.make_checkpoint(key)
    assert (genesis.id, genesis.seq, genesis.heads) == (1, 0, (ChainHead.empty(0),))
    assert genesis.chain_hash == tree_head_root([ChainHead.empty(0)])
    assert store.checkpoint_dir is not None
    path = store.checkpoint_dir / genesis.file_name()
    assert (await store.verify(from_checkpoint=path, trusted_keys=key.trusted())).ok
    await store.append(make_records(3))
    assert (await store.verify(from_checkpoint=path, trusted_keys=key.trusted())).entries_checked == 3


# -- the tamper matrix -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Trail:
    """A pristine trail of 10,000 entries with checkpoints at seq 4000, 8000 and 10000."""

    template: str
    checkpoint_dir: Path
    key: SigningKey
    checkpoints: list[Checkpoint]


N_ENTRIES = 10_000


@pytest.fixture(scope="module")
async def trail(stack: StackEndpoints, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Trail]:
    url = await new_database(stack)
    await migrate(url)
    key, directory = SigningKey.generate(), tmp_path_factory.mktemp("checkpoints")
    records = make_records(N_ENTRIES)
    checkpoints = []
    async with await PostgresAuditStore.open(writer_dsn(url), checkpoint_dir=directory) as writer:
        started = time.perf_counter()
        for at in range(0, N_ENTRIES, 1000):
            await writer.append(records[at : at + 1000])
            if at + 1000 in (4000, 8000, 10_000):
                checkpoints.append(await writer.make_checkpoint(key))
        print(f"\nappend: {N_ENTRIES / (time.perf_counter() - started):,.0f} rows/s in 1000-row batches")
    yield Trail(urlsplit(url).path.lstrip("/"), directory, key, checkpoints)
    await drop_database(stack, url)


@pytest.fixture
async def copy_of(stack: StackEndpoints, trail: Trail) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Fresh copies of the pristine trail (CREATE DATABASE ... TEMPLATE), dropped afterwards."""
    made: list[str] = []

    async def make() -> str:
        made.append(await new_database(stack, trail.template))
        return made[-1]

    yield make
    for url in made:
        await drop_database(stack, url)


async def _tamper(admin: str, *statements: str) -> None:
    """Run ``statements`` as the superuser with every trigger bypassed."""
    conn = await asyncpg.connect(admin)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            for sql in statements:
                await conn.execute(sql)
    finally:
        await conn.close()


async def _tamper_rows(admin: str, sql: str, rows: Sequence[tuple[object, ...]]) -> None:
    """:func:`_tamper` with one parameterised statement run for each of ``rows``."""
    conn = await asyncpg.connect(admin)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.executemany(sql, rows)
    finally:
        await conn.close()


_ROW = (
    "SELECT seq, hash_version, envelope_id, type, source, correlation_id, causation_id, envelope_time, "
    "recorded_at, stream, entry_id, env, sig, key_id FROM l9_audit.entries JOIN l9_audit.payloads "
    "USING (seq) WHERE seq >= $1 ORDER BY seq"
)


def _hashes(row: Mapping[str, Any], previous: bytes, seq: int | None = None) -> tuple[bytes, bytes, bytes]:
    """payload hash, leaf and chain of ``row`` as if written at ``seq``: what a forger computes."""
    digest = payload_hash(row["env"], row["sig"], row["key_id"])
    header = canonical_header(
        [
            row["hash_version"],
            seq or row["seq"],
            row["envelope_id"],
            row["type"],
            row["source"],
            row["correlation_id"],
            row["causation_id"],
            to_micros(row["envelope_time"]),
            to_micros(row["recorded_at"]),
            row["stream"],
            row["entry_id"],
        ]
    )
    leaf = leaf_hash(header, digest)
    return digest, leaf, chain_hash(previous, leaf)


async def _rehash_from(admin: str, seq: int) -> None:
    """Recompute every stored hash from ``seq`` on, and the head: a consistent forgery."""
    conn = await asyncpg.connect(admin)
    try:
        previous = await conn.fetchval("SELECT chain_hash FROM l9_audit.entries WHERE seq = $1", seq - 1)
        updates = []
        for row in await conn.fetch(_ROW, seq):
            digest, leaf, previous = _hashes(row, previous)
            updates.append((row["seq"], digest, leaf, previous))
    finally:
        await conn.close()
    await _tamper_rows(
        admin,
        "UPDATE l9_audit.entries SET payload_hash = $2, leaf_hash = $3, chain_hash = $4 WHERE seq = $1",
        updates,
    )
    last_seq, _, _, last_chain = updates[-1]
    await _tamper(
        admin,
        f"UPDATE l9_audit.chains SET size = {last_seq}, chain_hash = '\\x{last_chain.hex()}' WHERE chain = 0",
    )


_PARK = 1_000_000_000  # seq is a positive primary key: renumbering goes through a parking range


def _shift(table: str, after: int, by: int) -> list[str]:
    """Renumber the rows of ``table`` above ``after`` by ``by``."""
    return [
        f"UPDATE l9_audit.{table} SET seq = seq + {_PARK + by} WHERE seq > {after}",
        f"UPDATE l9_audit.{table} SET seq = seq - {_PARK} WHERE seq > {_PARK}",
    ]


async def _insert_forged_row(admin: str, at: int) -> None:
    """A forged entry at ``at`` with correct hashes; the rows from ``at`` on move up by one."""
    await _tamper(admin, *_shift("entries", at - 1, 1), *_shift("payloads", at - 1, 1))
    await forge_row_at(admin, at, at - 1, _ROW, at + 1)


async def forge_row_at(admin: str, at: int, previous: int, template: str, *args: Any) -> None:
    """Write a forged entry at seq ``at`` (free already), hashed onto the entry at seq
    ``previous``, its header but for the id copied from the row ``template`` (a query
    with ``args``) gives."""
    conn = await asyncpg.connect(admin)
    try:
        chained_on = await conn.fetchval("SELECT chain_hash FROM l9_audit.entries WHERE seq = $1", previous)
        row_of = await conn.fetchrow(template, *args)
    finally:
        await conn.close()
    (forged,) = make_records(1, correlation_id=row_of["correlation_id"], stream=row_of["stream"])
    row = {
        **dict(row_of),
        "seq": at,
        "envelope_id": forged.envelope_id,
        "env": forged.env,
        "sig": forged.sig,
    }
    digest, leaf, chained = _hashes(row, chained_on)
    await _tamper_rows(
        admin,
        "INSERT INTO l9_audit.entries SELECT $1, $2, type, source, correlation_id, causation_id, "
        "envelope_time, recorded_at, stream, entry_id, $3, $4, $5, hash_version, chain "
        "FROM l9_audit.entries WHERE seq = $6",
        [(at, forged.envelope_id, digest, leaf, chained, row_of["seq"])],
    )
    await _tamper_rows(
        admin,
        "INSERT INTO l9_audit.payloads VALUES ($1, $2, $3, $4)",
        [(at, forged.env, forged.sig, forged.key_id)],
    )


async def _forge_checkpoint(admin: str, trail: Trail, cp_id: int) -> None:
    """Replace checkpoint ``cp_id`` by one naming the current chain there, signed by another key."""
    conn = await asyncpg.connect(admin)
    try:
        cp = next(c for c in trail.checkpoints if c.id == cp_id)
        chained = await conn.fetchval("SELECT chain_hash FROM l9_audit.entries WHERE seq = $1", cp.seq)
    finally:
        await conn.close()
    impostor = SigningKey.generate(key_id=trail.key.key_id)  # same name, other key
    previous = next((c for c in trail.checkpoints if c.id == cp_id - 1), None)
    forged = Checkpoint.sign(
        impostor, id=cp_id, seq=cp.seq, chain_hash=chained, created_at=cp.created_at, previous=previous
    )
    await _replace_checkpoint(admin, forged)


async def _replace_checkpoint(admin: str, forged: Checkpoint) -> None:
    await _tamper(admin, f"DELETE FROM l9_audit.checkpoints WHERE id = {forged.id}")
    await _tamper_rows(
        admin,
        "INSERT INTO l9_audit.checkpoints VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        [tuple(checkpoint_values(forged))],
    )


async def _verify(
    admin: str, trail: Trail, presented: int | None = None, use_dir: bool = True
) -> tuple[str, int]:
    """(first damage, its seq) as verification names them, or ("ok", 0)."""
    async with await PostgresAuditStore.open(writer_dsn(admin)) as reader:
        cp_file = trail.checkpoint_dir / f"checkpoint-{presented:010d}.json" if presented else None
        report = await reader.verify(
            from_checkpoint=cp_file,
            checkpoint_dir=trail.checkpoint_dir if use_dir else None,
            trusted_keys=trail.key.trusted(),
        )
    return (str(report.first.kind), report.first.seq) if report.first else ("ok", 0)


async def test_an_untouched_trail_always_verifies(
    trail: Trail, copy_of: Callable[[], Awaitable[str]]
) -> None:
    admin = await copy_of()
    for presented in (None, 1, 2, 3):
        assert await _verify(admin, trail, presented) == ("ok", 0)
    assert await _verify(admin, trail, use_dir=False) == ("ok", 0)
    async with await PostgresAuditStore.open(writer_dsn(admin)) as reader:
        report = await reader.verify(checkpoint_dir=trail.checkpoint_dir, trusted_keys=trail.key.trusted())
    assert report.ok and report.entries_checked == N_ENTRIES and report.anchors_matched == 3
    print(f"\nverify: {report.entries_per_s:,.0f} entries/s ({report.summary()})")


TamperCase = Callable[[str, Trail], Awaitable[None]]


async def _flip_payload_bit(admin: str, trail: Trail) -> None:
    await _tamper(
        admin, "UPDATE l9_audit.payloads SET env = set_byte(env, 40, get_byte(env, 40) # 1) WHERE seq = 1234"
    )


async def _edit_header(admin: str, trail: Trail) -> None:
    await _tamper(admin, "UPDATE l9_audit.entries SET source = 'agent://forger/0' WHERE seq = 2345")


async def _delete_row(admin: str, trail: Trail) -> None:
    await _tamper(admin, *(f"DELETE FROM l9_audit.{t} WHERE seq = 3456" for t in ("entries", "payloads")))


async def _delete_row_and_renumber(admin: str, trail: Trail) -> None:
    await _delete_row(admin, trail)
    await _tamper(admin, *_shift("entries", 3456, -1), *_shift("payloads", 3456, -1))


async def _insert_row(admin: str, trail: Trail) -> None:
    await _insert_forged_row(admin, 5001)


async def _swap_rows(admin: str, trail: Trail) -> None:
    swap = f"UPDATE l9_audit.{{}} SET seq = {_PARK} + 12001 - seq WHERE seq IN (6000, 6001)"
    back = f"UPDATE l9_audit.{{}} SET seq = seq - {_PARK} WHERE seq > {_PARK}"
    await _tamper(admin, *(sql.format(t) for t in ("entries", "payloads") for sql in (swap, back)))


async def _swap_far_rows(admin: str, trail: Trail) -> None:
    """Two rows 7,000 apart swapped: beyond the diagnosis window of rows read after the bad one."""
    swap = f"UPDATE l9_audit.{{}} SET seq = {_PARK} + 11000 - seq WHERE seq IN (2000, 9000)"
    back = f"UPDATE l9_audit.{{}} SET seq = seq - {_PARK} WHERE seq > {_PARK}"
    await _tamper(admin, *(sql.format(t) for t in ("entries", "payloads") for sql in (swap, back)))


async def _truncate_tail(admin: str, trail: Trail) -> None:
    await _tamper(admin, *(f"DELETE FROM l9_audit.{t} WHERE seq > 9000" for t in ("entries", "payloads")))
    await _tamper(
        admin,
        "UPDATE l9_audit.chains SET size = 9000, chain_hash = "
        "(SELECT chain_hash FROM l9_audit.entries WHERE seq = 9000) WHERE chain = 0",
    )


async def _rewrite_tail(admin: str, trail: Trail) -> None:
    await _tamper(
        admin, "UPDATE l9_audit.payloads SET env = set_byte(env, 40, get_byte(env, 40) # 1) WHERE seq = 7000"
    )
    await _rehash_from(admin, 7000)


async def _forge_checkpoint_signature(admin: str, trail: Trail) -> None:
    """Rewrite after checkpoint #2, and replace checkpoint #3 by a forged one that matches."""
    await _rewrite_from_9000(admin)
    await _forge_checkpoint(admin, trail, 3)


async def _rewrite_from_9000(admin: str) -> None:
    await _tamper(admin, "UPDATE l9_audit.entries SET type = 'l9.forged.v1' WHERE seq = 9000")
    await _rehash_from(admin, 9000)


async def _present_older_checkpoint(admin: str, trail: Trail) -> None:
    """Rewrite after checkpoint #2 and drop #3: the trail presents #2 as its newest."""
    await _rewrite_from_9000(admin)
    await _tamper(admin, "DELETE FROM l9_audit.checkpoints WHERE id = 3")


async def _rehash_a_foreign_checkpoint(admin: str, trail: Trail) -> None:
    """Checkpoint #2 of the trail replaced by another (validly signed) #2 for other content."""
    real = trail.checkpoints[1]
    forged = Checkpoint.sign_heads(
        trail.key,
        id=2,
        heads=(replace(real.heads[0], chain_hash=bytes(32)),),
        created_at=real.created_at,
        previous=trail.checkpoints[0],
    )
    await _replace_checkpoint(admin, forged)


@pytest.mark.parametrize(
    ("damage", "presented", "use_dir", "expected"),
    [
        (_flip_payload_bit, None, True, (Damage.PAYLOAD_CHANGED, 1234)),
        (_edit_header, None, True, (Damage.HEADER_CHANGED, 2345)),
        (_delete_row, None, True, (Damage.MISSING_ROW, 3456)),
        (_delete_row_and_renumber, None, True, (Damage.MISSING_ROW, 3456)),
        (_insert_row, None, True, (Damage.INSERTED_ROW, 5001)),
        (_swap_rows, None, True, (Damage.ROWS_SWAPPED, 6000)),
        (_swap_far_rows, None, True, (Damage.ROWS_SWAPPED, 2000)),
        (_truncate_tail, None, True, (Damage.TAIL_TRUNCATED, 9001)),
        (_rewrite_tail, None, True, (Damage.CHAIN_REWRITTEN, 8000)),
        (_rewrite_tail, 2, False, (Damage.CHAIN_REWRITTEN, 8000)),
        (_forge_checkpoint_signature, None, False, (Damage.BAD_CHECKPOINT_SIGNATURE, 10_000)),
        (_present_older_checkpoint, 3, False, (Damage.ROLLED_BACK, 10_000)),
        (_rehash_a_foreign_checkpoint, None, True, (Damage.UNKNOWN_CHECKPOINT, 8000)),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
async def test_tampering_is_detected_and_named(
    trail: Trail,
    copy_of: Callable[[], Awaitable[str]],
    damage: TamperCase,
    presented: int | None,
    use_dir: bool,
    expected: tuple[Damage, int],
) -> None:
    admin = await copy_of()
    await damage(admin, trail)
    assert await _verify(admin, trail, presented, use_dir) == (str(expected[0]), expected[1])
