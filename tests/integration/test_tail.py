"""``l9 tail`` and ``l9 audit verify`` as processes against the real PostgreSQL: history with
each filter, following live appends gaplessly (two writers, a dropped connection, an
outage), and verification naming the first bad seq after a superuser tampered."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from envelope import PacketEnvelope, Signer
from l9.devstack import StackEndpoints
from l9.tail import follow
from memory.audit.chains import Layout
from memory.merkle import CompactRange
from memory.postgres import (
    AuditRecord,
    EntryFilter,
    PostgresAuditStore,
    SigningKey,
    StoredEntry,
    migrate,
    writer_dsn,
)
from tests.conftest import KEYRING, ROOT, run_l9, wait_for
from tests.integration.conftest import admin_sql
from tests.integration.test_audit_store import _tamper

pytestmark = pytest.mark.integration

TYPES = ("l9.plan.locked.v1", "l9.plan.rejected.v1", "l9.artifact.generated.v1")
#: ``plan_er`` and ``planner-x`` must never match ``--source planner``.
AGENTS = ("planner", "coder", "planner", "plan_er", "planner-x")


def records(start: int, n: int, run: str = "run-a", stream: str = "t:audit") -> list[AuditRecord]:
    """Signed envelopes ``start..start+n-1`` (``data.i`` is the index) from several agents."""
    signer = Signer(KEYRING, "dev")
    out = []
    for i in range(start, start + n):
        agent = AGENTS[i % len(AGENTS)]
        envelope = PacketEnvelope.new(
            type=TYPES[i % len(TYPES)],
            source=f"agent://{agent}/{agent}-{i % 2}",
            data={"i": i, "note": "[not markup]"},
            correlation_id=run,
        )
        out.append(
            AuditRecord.from_envelope(envelope, stream=stream, entry_id=f"{1000 + i}-0", signer=signer)
        )
    return out


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def env(admin_dsn: str, stack: StackEndpoints, home: Path, tmp_path: Path, key: SigningKey) -> dict[str, str]:
    """The CLI's environment: this test's database, its checkpoint dir and key."""
    key_file = tmp_path / "audit-key.hex"
    key_file.write_text(key.private_bytes.hex())
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("L9_")},
        "DATABASE_URL": admin_dsn,
        "REDIS_URL": stack.redis_url,
        "L9_HOME": str(home),
        "L9_AUDIT_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),  # the store fixture's
        "L9_AUDIT_KEY_FILE": str(key_file),
        "L9_LOG_LEVEL": "info",
        "PYTHONPATH": str(ROOT),
    }


l9 = run_l9


def json_seqs(done: subprocess.CompletedProcess[str]) -> list[int]:
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line)["seq"] for line in done.stdout.splitlines()]


def seqs_where(recs: list[AuditRecord], keep: Any, first_seq: int = 1) -> list[int]:
    return [first_seq + i for i, rec in enumerate(recs) if keep(rec)]


# -- history -----------------------------------------------------------------------------------------


async def test_tail_prints_the_newest_entries_with_each_filter(
    store: PostgresAuditStore, env: dict[str, str]
) -> None:
    recs = records(0, 200)
    for at in (11, 12, 13, 41, 190):  # a rare run, spread so the backward windows must widen
        recs[at - 1] = records(at - 1, 1, run="run-b")[0]
    for at in range(0, 200, 50):
        await store.append(recs[at : at + 50])

    assert json_seqs(l9("tail", "--json", env=env)) == list(range(181, 201))  # -n defaults to 20
    assert json_seqs(l9("tail", "--json", "-n", "0", env=env)) == []
    assert json_seqs(l9("tail", "--json", "-n", "500", env=env)) == list(range(1, 201))

    plans = seqs_where(recs, lambda r: fnmatch.fnmatchcase(r.type, "l9.plan.*"))
    assert json_seqs(l9("tail", "--json", "-n", "7", "--type", "l9.plan.*", env=env)) == plans[-7:]
    assert len(plans) < 200 and set(plans) != set(range(plans[0], plans[-1] + 1))

    planner = seqs_where(recs, lambda r: r.source.startswith("agent://planner/"))
    got = json_seqs(l9("tail", "--json", "-n", "1000", "--source", "planner", env=env))
    assert got == planner and len(planner) == 80
    exact = seqs_where(recs, lambda r: r.source == "agent://planner/planner-0")
    got = json_seqs(l9("tail", "--json", "-n", "1000", "--source", "agent://planner/planner-0", env=env))
    assert got == exact and 0 < len(exact) < len(planner)
    plan_er = seqs_where(recs, lambda r: r.source.startswith("agent://plan_er/"))
    assert json_seqs(l9("tail", "--json", "-n", "1000", "--source", "plan_er", env=env)) == plan_er
    assert json_seqs(l9("tail", "--json", "--source", "plan", env=env)) == []
    assert json_seqs(l9("tail", "--json", "--source", "agent://planner", env=env)) == []

    assert json_seqs(l9("tail", "--json", "-n", "3", "--correlation", "run-b", env=env)) == [13, 41, 190]
    assert json_seqs(l9("tail", "--json", "-n", "9", "--correlation", "run-b", env=env)) == [
        11,
        12,
        13,
        41,
        190,
    ]
    both = l9(
        "tail", "--json", "--correlation", "run-b", "--type", "l9.plan.*", "--source", "planner", env=env
    )
    assert json_seqs(both) == [
        s
        for s in (11, 12, 13, 41, 190)
        if recs[s - 1].type.startswith("l9.plan.") and recs[s - 1].source.startswith("agent://planner/")
    ]


async def test_tail_json_lines_carry_the_stored_entry(store: PostgresAuditStore, env: dict[str, str]) -> None:
    recs = records(0, 12, run="run-json")
    await store.append(recs[:5])
    await store.append(recs[5:])
    stored = {e.seq: e for e in (await store.entries_after(0)).entries}
    done = l9("tail", "--json", "-n", "12", env=env)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["seq"] for line in lines] == list(range(1, 13))
    for line, rec in zip(lines, recs, strict=True):
        entry = stored[line["seq"]]
        assert line == {
            "seq": entry.seq,
            "envelope_id": rec.envelope_id,
            "type": rec.type,
            "source": rec.source,
            "correlation_id": "run-json",
            "causation_id": None,
            "envelope_time": rec.time.isoformat(),
            "recorded_at": entry.recorded_at.isoformat(),
            "stream": "t:audit",
            "entry_id": rec.entry_id,
            "chain_hash": entry.chain_hash.hex(),
            "summary": entry.summary(),
        }
        assert line["summary"].startswith(f"i={line['seq'] - 1} ")


async def test_tail_prints_one_readable_line_per_entry(
    store: PostgresAuditStore, env: dict[str, str]
) -> None:
    run = "0192f3a4-aaaa-7bbb-8ccc-0123456789ab"
    recs = records(0, 30, run=run)
    await store.append(recs)
    done = l9("tail", "-n", "4", env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4
    for seq, line in zip(range(27, 31), lines, strict=True):
        rec = recs[seq - 1]
        fields = line.split()
        assert fields[0] == str(seq)
        assert fields[1] == rec.time.strftime("%Y-%m-%d")
        assert fields[2] == rec.time.strftime("%H:%M:%S.") + f"{rec.time.microsecond // 1000:03d}Z"
        assert fields[3:6] == [rec.type, rec.source, "…456789ab"]
        assert line.endswith(f"i={seq - 1} note=[not markup]")


async def test_tail_since_takes_every_entry_recorded_since_then(
    store: PostgresAuditStore, env: dict[str, str], admin_dsn: str
) -> None:
    await store.append(records(0, 30))
    await store.append(records(30, 30))
    # The first 30 were recorded two hours ago (as a superuser, the triggers bypassed).
    await _tamper(
        admin_dsn, "UPDATE l9_audit.entries SET recorded_at = now() - interval '2 hours' WHERE seq <= 30"
    )
    assert json_seqs(l9("tail", "--json", "--since", "1h", env=env)) == list(range(31, 61))
    assert json_seqs(l9("tail", "--json", "--since", "1h59m", env=env)) == list(range(31, 61))
    assert json_seqs(l9("tail", "--json", "--since", "2h1m", env=env)) == list(range(1, 61))  # not -n 20
    assert json_seqs(l9("tail", "--json", "--since", "1d", "-n", "3", env=env)) == list(range(1, 61))
    plans = [s for s in range(31, 61) if TYPES[(s - 1) % 3].startswith("l9.plan.")]
    assert json_seqs(l9("tail", "--json", "--since", "90m", "--type", "l9.plan.*", env=env)) == plans


def test_tail_rejects_a_bad_duration(env: dict[str, str]) -> None:
    for bad in ("5x", "10", "1m2h", "-3m"):
        done = l9("tail", "--since", bad, env=env)
        assert done.returncode == 2, (bad, done.stderr)
        assert f"'{bad}' is not a duration" in done.stderr
        assert "Traceback" not in done.stderr


def test_unreachable_postgres_is_a_one_line_error(env: dict[str, str]) -> None:
    gone = {**env, "DATABASE_URL": "postgresql://postgres@/l9?host=/nonexistent-socket-dir&port=1"}
    for args in (("tail",), ("tail", "--follow"), ("audit", "verify")):
        done = l9(*args, env=gone, timeout=60)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert "error: migrate: PostgreSQL unavailable" in done.stderr
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


# -- following ---------------------------------------------------------------------------------------


class Tail:
    """``l9 tail --follow --json`` as a process; its lines collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr: Path) -> None:
        self.proc, self.stderr = proc, stderr
        self.lines: list[dict[str, Any]] = []
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, env: dict[str, str], stderr: Path, *args: str) -> Tail:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "l9",
            "tail",
            "--follow",
            "--json",
            *args,
            env=env,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr.open("wb"),
        )
        return cls(proc, stderr)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    @property
    def seqs(self) -> list[int]:
        return [line["seq"] for line in self.lines]

    def log(self) -> str:
        return self.stderr.read_text()

    async def stop(self) -> int:
        """SIGTERM; the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        await asyncio.wait_for(self._reader, 10)
        return code

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


@pytest.fixture
async def tails() -> AsyncIterator[list[Tail]]:
    started: list[Tail] = []
    yield started
    for tail in started:
        tail.kill()
        await tail.proc.wait()


async def _append_batches(writer: PostgresAuditStore, recs: list[AuditRecord], size: int) -> None:
    for at in range(0, len(recs), size):
        await writer.append(recs[at : at + size])
        await asyncio.sleep(0.01)


async def test_follow_prints_every_new_entry_once_in_seq_order(
    store: PostgresAuditStore, admin_dsn: str, env: dict[str, str], tmp_path: Path, tails: list[Tail]
) -> None:
    await store.append(records(0, 10))
    everything = await Tail.start(env, tmp_path / "all.log", "-n", "3")
    plans = await Tail.start(
        env, tmp_path / "plans.log", "-n", "1", "--type", "l9.plan.*", "--source", "planner"
    )
    tails += [everything, plans]
    # Once their history is out, both follow: every later commit must reach them.
    await wait_for(lambda: len(everything.lines) == 3 and len(plans.lines) == 1)
    assert everything.seqs == [8, 9, 10] and plans.seqs == [8]  # i=7: planner, l9.plan.rejected

    # Two writers at once, in small batches, then one batch larger than a page of the tail.
    writers = [await PostgresAuditStore.open(writer_dsn(admin_dsn), max_size=1) for _ in range(2)]
    try:
        await asyncio.gather(
            _append_batches(writers[0], records(10, 300, stream="w0"), 7),
            _append_batches(writers[1], records(310, 300, stream="w1"), 11),
        )
        await writers[0].append(records(610, 1500, stream="w0"))
        await _append_batches(writers[1], records(2110, 40, stream="w1"), 3)
    finally:
        for writer in writers:
            await writer.close()
    total = (await store.head()).seq
    assert total == 2150
    stored: list[StoredEntry] = []
    cursor = 0
    while cursor < total:
        page = await store.entries_after(cursor)
        stored += page.entries
        cursor = page.cursor
    expected = [
        e.seq
        for e in stored
        if e.seq >= 8 and fnmatch.fnmatchcase(e.type, "l9.plan.*") and e.source.startswith("agent://planner/")
    ]
    assert expected[0] == 8 and len(expected) > 500
    assert {e.stream for e in stored} == {"t:audit", "w0", "w1"}

    await wait_for(lambda: everything.seqs[-1:] == [total], timeout=60)
    await wait_for(lambda: plans.seqs[-1:] == expected[-1:], timeout=60)
    assert await everything.stop() == 0 and await plans.stop() == 0
    assert everything.seqs == list(range(8, total + 1))  # each once, in order, no gap
    assert plans.seqs == expected
    for tail in (everything, plans):
        assert "Traceback" not in tail.log()


async def test_a_trail_in_two_chains_is_tailed_in_commit_order_and_followed_on_both(
    admin_dsn: str, env: dict[str, str], tmp_path: Path, tails: list[Tail]
) -> None:
    await migrate(admin_dsn, chains=2)
    layout = Layout(2)
    on = {layout.chain_of(name): name for name in ("w0", "w1", "w2", "w3", "w4", "w5")}
    assert set(on) == {0, 1}
    async with await PostgresAuditStore.open(writer_dsn(admin_dsn)) as store:
        batches = [records(10 * b, 5, stream=on[b % 2]) for b in range(3)]  # chains 0, 1, 0
        placed = []
        for batch in batches:
            placed.append([c.seq for c in await store.append(batch)])
        assert placed == [[1, 3, 5, 7, 9], [2, 4, 6, 8, 10], [11, 13, 15, 17, 19]]
        # the last 8 by commit: 3 of the second batch (chain 1), then the third (chain 0)
        assert json_seqs(l9("tail", "-n", "8", "--json", env=env)) == [6, 8, 10, 11, 13, 15, 17, 19]
        since = json_seqs(l9("tail", "--since", "1h", "--json", env=env))
        assert since == [s for batch in placed for s in batch]
        following = await Tail.start(env, tmp_path / "two.log", "-n", "1")
        tails.append(following)
        await wait_for(lambda: following.seqs == [19], timeout=60)  # its history is out: it follows
        late = []
        for b in range(2):
            late += [c.seq for c in await store.append(records(100 + 10 * b, 3, stream=on[(b + 1) % 2]))]
        assert late == [12, 14, 16, 21, 23, 25]
        await wait_for(lambda: len(following.lines) == 7, timeout=60)
        assert following.seqs == [19, *late]
        assert await following.stop() == 0


async def test_follow_is_woken_by_notifications_not_only_the_poll(store: PostgresAuditStore) -> None:
    """With the poll an hour apart, only the commits' notifications can show each new entry."""
    await store.append(records(0, 1))
    shown: list[int] = []
    follower = asyncio.create_task(
        follow(store, {None: 0}, EntryFilter(), lambda e: shown.append(e.seq), poll_s=3600)
    )
    try:
        await wait_for(lambda: shown == [1])
        for i in range(1, 9):
            await store.append(records(i, 1))

            def seen(n: int = i + 1) -> bool:
                return len(shown) == n

            await wait_for(seen)  # a deadline that only catches a hang
        assert shown == list(range(1, 10))
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower


async def _kill_writer_connections(admin_dsn: str) -> None:
    await admin_sql(
        admin_dsn,
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
        "WHERE usename = 'l9_writer' AND datname = current_database()",
    )


async def test_follow_survives_lost_connections_and_an_outage(
    store: PostgresAuditStore, admin_dsn: str, env: dict[str, str], tmp_path: Path, tails: list[Tail]
) -> None:
    await store.append(records(0, 1))
    tail = await Tail.start(env, tmp_path / "tail.log", "-n", "1")
    tails.append(tail)
    await wait_for(lambda: tail.seqs == [1])  # it read the head: what comes next is followed
    await store.append(records(1, 4))
    await wait_for(lambda: tail.seqs == [1, 2, 3, 4, 5])

    # Its connections killed (the listener's too): it notices by polling and carries on.
    await _kill_writer_connections(admin_dsn)
    await store.append(records(5, 5))
    await wait_for(lambda: len(tail.seqs) == 10)
    await store.append(records(10, 5))
    await wait_for(lambda: len(tail.seqs) == 15)

    # PostgreSQL refuses the writer role for a while: warnings, backoff, then it resumes.
    superuser = await PostgresAuditStore.open(admin_dsn, max_size=1)
    try:
        await admin_sql(admin_dsn, "ALTER ROLE l9_writer CONNECTION LIMIT 0")
        await _kill_writer_connections(admin_dsn)
        await wait_for(lambda: '"tail.unavailable"' in tail.log(), timeout=120)
        await superuser.append(records(15, 5))
        await superuser.append(records(20, 5))
        await asyncio.sleep(1.0)
        assert len(tail.seqs) == 15
    finally:
        await admin_sql(admin_dsn, "ALTER ROLE l9_writer CONNECTION LIMIT -1")
        await superuser.close()
    await wait_for(lambda: len(tail.seqs) == 25, timeout=120)
    await store.append(records(25, 5))
    await wait_for(lambda: len(tail.seqs) == 30)

    assert await tail.stop() == 0
    assert tail.seqs == list(range(1, 31))
    log = tail.log()
    assert "Traceback" not in log
    warnings = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    unavailable = [w for w in warnings if w["event"] == "tail.unavailable"]
    assert unavailable and all(w["level"] == "warning" and w["cursor"] == 15 for w in unavailable)
    assert "PostgreSQL unavailable" in unavailable[0]["error"]
    assert [w["cursor"] for w in warnings if w["event"] == "tail.resumed"] == [15]


def test_sigint_ends_follow_cleanly(env: dict[str, str], store: PostgresAuditStore) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "l9", "tail", "--follow"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(3)  # it follows until told to stop
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Aborted" not in err


# -- verification ------------------------------------------------------------------------------------


def verify_json(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    done = l9("audit", "verify", "--json", *args, env=env)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout)


async def test_audit_verify_names_the_first_bad_seq(
    store: PostgresAuditStore, admin_dsn: str, env: dict[str, str], key: SigningKey
) -> None:
    await store.append(records(0, 20))
    first = await store.make_checkpoint(key)
    await store.append(records(20, 40))
    await store.make_checkpoint(key)
    assert store.checkpoint_dir is not None
    first_file = store.checkpoint_dir / first.file_name()
    assert first_file.exists()

    done = l9("audit", "verify", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("trail intact: 60 entries from genesis to seq 60")
    assert "entries checked: 60, head seq: 60" in done.stdout
    assert "checkpoints/anchors matched: 2, signatures checked" in done.stdout
    code, report = verify_json(env)
    assert code == 0 and report["ok"] and report["problems"] == [] and report["first_bad_seq"] is None
    assert report["entries_checked"] == 60 and report["anchors_matched"] == 2 and report["signatures_checked"]
    code, report = verify_json(env, "--from-checkpoint", str(first_file))
    assert code == 0 and report["entries_checked"] == 40 and report["started_from_checkpoint"] == 1

    # A checkpoint key the settings do not trust.
    other = Path(env["L9_AUDIT_KEY_FILE"]).with_name("other-key.hex")
    other.write_text(SigningKey.generate().private_bytes.hex())
    code, report = verify_json({**env, "L9_AUDIT_KEY_FILE": str(other)})
    assert code == 1 and (report["first_bad_seq"], report["damage"]) == (20, "bad checkpoint signature")

    # A superuser flips a bit of seq 33's payload, then edits the header of seq 45.
    await _tamper(
        admin_dsn,
        "UPDATE l9_audit.payloads SET env = set_byte(env, 40, get_byte(env, 40) # 1) WHERE seq = 33",
    )
    await _tamper(admin_dsn, "UPDATE l9_audit.entries SET source = 'agent://forger/0' WHERE seq = 45")
    done = l9("audit", "verify", env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "first bad seq: 33 (payload changed)"
    assert lines[1].startswith("trail damaged: 1 problem(s); entries checked: 32, head seq: 60")
    assert lines[2].startswith("  seq 33: payload changed: ")
    code, report = verify_json(env)
    assert code == 1 and not report["ok"]
    assert (report["first_bad_seq"], report["damage"]) == (33, "payload changed")
    assert report["problems"][0]["seq"] == 33

    # Started from the checkpoint at seq 20, the walk still reaches seq 33.
    code, report = verify_json(env, "--from-checkpoint", str(first_file))
    assert code == 1 and (report["first_bad_seq"], report["damage"]) == (33, "payload changed")

    # Damage before a trusted checkpoint is not walked when starting from it.
    await _tamper(admin_dsn, "DELETE FROM l9_audit.payloads WHERE seq = 5")
    code, report = verify_json(env)
    assert (code, report["first_bad_seq"], report["damage"]) == (1, 5, "payload missing")
    code, report = verify_json(env, "--from-checkpoint", str(first_file))
    assert (code, report["first_bad_seq"]) == (1, 33)


async def test_audit_verify_catches_a_rewritten_chain_with_a_checkpoint_file(
    store: PostgresAuditStore, admin_dsn: str, env: dict[str, str], key: SigningKey
) -> None:
    """Rows deleted at the end and the head moved back, consistently: only the checkpoint
    kept outside the database can tell."""
    await store.append(records(0, 30))
    checkpoint = await store.make_checkpoint(key)
    assert store.checkpoint_dir is not None
    kept = store.checkpoint_dir.parent / "kept-checkpoint.json"
    kept.write_text((store.checkpoint_dir / checkpoint.file_name()).read_text())
    conn = await asyncpg.connect(admin_dsn)
    try:
        chain_25 = await conn.fetchval("SELECT chain_hash FROM l9_audit.entries WHERE seq = 25")
        tree = CompactRange()  # the chain's Merkle tree cut back with it: consistent
        tree.append(
            r[0]
            for r in await conn.fetch("SELECT leaf_hash FROM l9_audit.entries WHERE seq <= 25 ORDER BY seq")
        )
        tree_25 = tree.to_bytes()
    finally:
        await conn.close()
    await _tamper(
        admin_dsn,
        "DELETE FROM l9_audit.payloads WHERE seq > 25",
        "DELETE FROM l9_audit.entries WHERE seq > 25",
        "DELETE FROM l9_audit.checkpoints",
        f"UPDATE l9_audit.chains SET size = 25, chain_hash = '\\x{chain_25.hex()}', "
        f"tree = '\\x{tree_25.hex()}' WHERE chain = 0",
    )
    for stale in store.checkpoint_dir.iterdir():
        stale.unlink()
    assert l9("audit", "verify", env=env).returncode == 0  # consistent on its own
    done = l9("audit", "verify", "--from-checkpoint", str(kept), env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == "first bad seq: 26 (tail truncated)"


def test_audit_verify_refuses_a_missing_or_garbage_checkpoint_file(
    env: dict[str, str], tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-checkpoint.json"
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"format": "something else"}))
    for path in (missing, garbage, wrong):
        done = l9("audit", "verify", "--from-checkpoint", str(path), env=env)
        assert done.returncode == 2, (path, done.stdout, done.stderr)
        assert str(path) in done.stderr and "Traceback" not in done.stderr
    # A garbage file among the checkpoint files is as clear an error.
    directory = Path(env["L9_AUDIT_CHECKPOINT_DIR"])
    directory.mkdir(parents=True)
    (directory / "checkpoint-0000000001.json").write_text("[]")
    done = l9("audit", "verify", env=env)
    assert done.returncode == 2 and "checkpoint-0000000001.json" in done.stderr
