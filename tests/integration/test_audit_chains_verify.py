"""Verification of a trail in chains against the real PostgreSQL: every chain read through
a connection of its own, all in one exported snapshot, and a tamper matrix over a trail of
two chains in which a superuser bypasses the triggers and verification must name the
damage at the right seq (within a chain, between chains, whole chains, heads, trees, the
chain count, the signed tree heads); one trail of four chains besides."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from l9.devstack import StackEndpoints
from memory.audit.chains import Layout
from memory.audit.walk import verify_snapshot
from memory.chain import GENESIS
from memory.merkle import CompactRange
from memory.postgres import Checkpoint, Damage, PostgresAuditStore, SigningKey, migrate, writer_dsn
from memory.postgres.walk import PostgresSnapshot
from tests.integration.conftest import drop_database, new_database
from tests.integration.test_audit_store import (
    _PARK,
    _hashes,
    _replace_checkpoint,
    _tamper,
    _tamper_rows,
    forge_row_at,
    make_records,
)

pytestmark = pytest.mark.integration

PER_CHAIN = 3000  # entries of each chain; checkpoints after 1000, 2000 and 3000 of each
BATCH = 500  # entries of each chain per append


def streams_for(layout: Layout) -> list[str]:
    """A bus stream of each chain of ``layout``, chain ``c`` at index ``c``."""
    found: dict[int, str] = {}
    for i in range(10_000):
        found.setdefault(layout.chain_of(f"t:audit:{i}"), f"t:audit:{i}")
        if len(found) == layout.chains:
            break
    return [found[c] for c in range(layout.chains)]


@dataclass(frozen=True)
class Trail:
    """A pristine trail of ``chains`` chains of ``per_chain`` entries each, with checkpoints."""

    template: str
    chains: int
    checkpoint_dir: Path
    key: SigningKey
    checkpoints: list[Checkpoint]


async def build_trail(
    stack: StackEndpoints, directory: Path, chains: int, per_chain: int, every: int
) -> tuple[str, Trail]:
    """A new database holding the trail (its admin URL): ``BATCH`` entries of every chain
    at a time, a checkpoint each ``every`` entries of each chain."""
    url = await new_database(stack)
    await migrate(url, chains=chains)
    key, made = SigningKey.generate(), []
    streams = streams_for(Layout(chains))
    async with await PostgresAuditStore.open(writer_dsn(url), checkpoint_dir=directory) as writer:
        started = time.perf_counter()
        for at in range(0, per_chain, BATCH):
            await writer.append([r for s in streams for r in make_records(BATCH, stream=s)])
            if (at + BATCH) % every == 0:
                made.append(await writer.make_checkpoint(key))
        rate = chains * per_chain / (time.perf_counter() - started)
        print(f"\nappend: {rate:,.0f} rows/s into {chains} chains")
    return url, Trail(urlsplit(url).path.lstrip("/"), chains, directory, key, made)


@pytest.fixture(scope="module")
async def trail(stack: StackEndpoints, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Trail]:
    """Two chains of 3000 entries; checkpoints #1..#3 at seq 2000, 4000 and 6000 (chain 0's
    heads at 1999, 3999, 5999)."""
    url, made = await build_trail(stack, tmp_path_factory.mktemp("checkpoints"), 2, PER_CHAIN, 1000)
    yield made
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


# -- forging helpers ---------------------------------------------------------------------------------

_CHAIN_ROWS = (
    "SELECT seq, hash_version, envelope_id, type, source, correlation_id, causation_id, envelope_time, "
    "recorded_at, stream, entry_id, env, sig, key_id FROM l9_audit.entries JOIN l9_audit.payloads "
    "USING (seq) WHERE chain = $1 AND seq >= $2 ORDER BY seq"
)


async def _rehash_chain(admin: str, chain: int, seq: int) -> None:
    """Recompute every stored hash of ``chain`` from ``seq`` on, and its head's size and chain
    hash (not its tree): a consistent forgery of that chain."""
    conn = await asyncpg.connect(admin)
    try:
        previous = await conn.fetchval(
            "SELECT chain_hash FROM l9_audit.entries WHERE chain = $1 AND seq < $2 ORDER BY seq DESC LIMIT 1",
            chain,
            seq,
        )
        previous = previous or GENESIS
        updates = []
        for row in await conn.fetch(_CHAIN_ROWS, chain, seq):
            digest, leaf, previous = _hashes(row, previous)
            updates.append((row["seq"], digest, leaf, previous))
        size = await conn.fetchval("SELECT count(*) FROM l9_audit.entries WHERE chain = $1", chain)
    finally:
        await conn.close()
    await _tamper_rows(
        admin,
        "UPDATE l9_audit.entries SET payload_hash = $2, leaf_hash = $3, chain_hash = $4 WHERE seq = $1",
        updates,
    )
    await _tamper_rows(
        admin,
        "UPDATE l9_audit.chains SET size = $2, chain_hash = $3 WHERE chain = $1",
        [(chain, size, previous)],
    )


def _shift_chain(chain: int, after: int, by: int) -> list[str]:
    """Renumber the rows of ``chain`` (of a trail of two) above seq ``after`` by ``by``."""
    rows = {"entries": f"chain = {chain}", "payloads": f"seq % 2 = {(chain + 1) % 2}"}
    return [
        sql
        for table, mine in rows.items()
        for sql in (
            f"UPDATE l9_audit.{table} SET seq = seq + {_PARK + by} WHERE seq > {after} AND {mine}",
            f"UPDATE l9_audit.{table} SET seq = seq - {_PARK} WHERE seq > {_PARK}",
        )
    ]


def _swap(a: int, b: int) -> list[str]:
    """Swap the seqs of the rows at ``a`` and ``b`` (their chain columns stay)."""
    return [
        sql.format(t)
        for t in ("entries", "payloads")
        for sql in (
            f"UPDATE l9_audit.{{}} SET seq = {_PARK} + {a + b} - seq WHERE seq IN ({a}, {b})",
            f"UPDATE l9_audit.{{}} SET seq = seq - {_PARK} WHERE seq > {_PARK}",
        )
    ]


async def _insert_forged_row(admin: str, chain: int, at: int) -> None:
    """A forged entry at ``at`` in ``chain`` with correct hashes; the chain's rows from ``at``
    on move up a place."""
    await _tamper(admin, *_shift_chain(chain, at - 1, 2))
    await forge_row_at(admin, at, at - 2, _CHAIN_ROWS, chain, at + 2)


# -- the matrix ---------------------------------------------------------------------------------------

TamperCase = Callable[[str, Trail], Awaitable[None]]


async def _flip_payload_bit(admin: str, trail: Trail) -> None:
    await _tamper(
        admin, "UPDATE l9_audit.payloads SET env = set_byte(env, 40, get_byte(env, 40) # 1) WHERE seq = 1234"
    )


async def _edit_header(admin: str, trail: Trail) -> None:
    await _tamper(admin, "UPDATE l9_audit.entries SET source = 'agent://forger/0' WHERE seq = 2345")


async def _delete_row(admin: str, trail: Trail) -> None:
    await _tamper(admin, *(f"DELETE FROM l9_audit.{t} WHERE seq = 3457" for t in ("entries", "payloads")))


async def _delete_row_and_renumber(admin: str, trail: Trail) -> None:
    await _delete_row(admin, trail)
    await _tamper(admin, *_shift_chain(0, 3457, -2))


async def _insert_row(admin: str, trail: Trail) -> None:
    await _insert_forged_row(admin, 1, 4002)


async def _swap_rows_in_a_chain(admin: str, trail: Trail) -> None:
    await _tamper(admin, *_swap(3001, 3003))


async def _truncate_a_chains_tail(admin: str, trail: Trail) -> None:
    await _tamper(
        admin,
        "DELETE FROM l9_audit.entries WHERE chain = 1 AND seq > 5000",
        "DELETE FROM l9_audit.payloads WHERE seq % 2 = 0 AND seq > 5000",
        "UPDATE l9_audit.chains SET size = 2500, chain_hash = "
        "(SELECT chain_hash FROM l9_audit.entries WHERE seq = 5000) WHERE chain = 1",
    )


async def _rewrite_a_chain(admin: str, trail: Trail) -> None:
    await _tamper(admin, "UPDATE l9_audit.entries SET type = 'l9.forged.v1' WHERE seq = 4501")
    await _rehash_chain(admin, 0, 4501)


async def _rewrite_before_the_start(admin: str, trail: Trail) -> None:
    await _tamper(admin, "UPDATE l9_audit.entries SET type = 'l9.forged.v1' WHERE seq = 3001")
    await _rehash_chain(admin, 0, 3001)


async def _move_by_chain_column(admin: str, trail: Trail) -> None:
    await _tamper(admin, "UPDATE l9_audit.entries SET chain = 1 WHERE seq = 2001")


async def _swap_rows_across_chains(admin: str, trail: Trail) -> None:
    await _tamper(admin, *_swap(3001, 3002))


async def _move_into_another_chain_recomputed(admin: str, trail: Trail) -> None:
    """Chain 0's entry at 4001 rewritten into chain 1 at seq 4000, chain 1's rows from there
    moved up a place, and chain 1 rehashed from 4000: chain 0 is left with a gap."""
    await _tamper(
        admin,
        *_shift_chain(1, 3999, 2),
        "UPDATE l9_audit.entries SET seq = 4000, chain = 1 WHERE seq = 4001",
        "UPDATE l9_audit.payloads SET seq = 4000 WHERE seq = 4001",
    )
    await _rehash_chain(admin, 1, 4000)


async def _rewrite_a_stream_into_another_chain(admin: str, trail: Trail) -> None:
    chain_0 = streams_for(Layout(2))[0]
    await _tamper(admin, f"UPDATE l9_audit.entries SET stream = '{chain_0}' WHERE seq = 3002")
    await _rehash_chain(admin, 1, 3002)


async def _drop_a_chain(admin: str, trail: Trail) -> None:
    await _tamper(
        admin,
        "DELETE FROM l9_audit.entries WHERE chain = 1",
        "DELETE FROM l9_audit.payloads WHERE seq % 2 = 0",
        "DELETE FROM l9_audit.tree_nodes WHERE chain = 1",
        "DELETE FROM l9_audit.chains WHERE chain = 1",
    )


async def _resign_with_a_foreign_key(admin: str, trail: Trail) -> None:
    """Rewrite chain 1 after checkpoint #2, and replace #3 by a tree head over the rewritten
    heads, signed with another key."""
    await _tamper(admin, "UPDATE l9_audit.entries SET type = 'l9.forged.v1' WHERE seq = 5002")
    await _rehash_chain(admin, 1, 5002)
    async with await PostgresAuditStore.open(writer_dsn(admin)) as store:
        heads = tuple(await store.heads())
    real = trail.checkpoints[2]
    forged = Checkpoint.sign_heads(
        SigningKey.generate(), id=3, heads=heads, created_at=real.created_at, previous=trail.checkpoints[1]
    )
    await _replace_checkpoint(admin, forged)


async def _head_hash_changed(admin: str, trail: Trail) -> None:
    await _tamper(admin, f"UPDATE l9_audit.chains SET chain_hash = '\\x{'00' * 32}' WHERE chain = 1")


async def _head_tree_changed(admin: str, trail: Trail) -> None:
    forged = CompactRange()
    forged.append([bytes([i % 256]) * 32 for i in range(PER_CHAIN)])
    await _tamper(admin, f"UPDATE l9_audit.chains SET tree = '\\x{forged.to_bytes().hex()}' WHERE chain = 0")


async def _chain_count_lowered(admin: str, trail: Trail) -> None:
    await _tamper(admin, "UPDATE l9_audit.trail SET chains = 1")


async def _chain_count_raised(admin: str, trail: Trail) -> None:
    await _tamper(admin, "UPDATE l9_audit.trail SET chains = 4")


async def _tree_node_changed(admin: str, trail: Trail) -> None:
    await _tamper(
        admin,
        f"UPDATE l9_audit.tree_nodes SET hash = '\\x{'00' * 32}' WHERE chain = 0 AND level = 4 AND idx = 10",
    )


async def _tree_node_deleted(admin: str, trail: Trail) -> None:
    await _tamper(admin, "DELETE FROM l9_audit.tree_nodes WHERE chain = 1 AND level = 8 AND idx = 3")


@pytest.mark.parametrize(
    ("damage", "presented", "use_dir", "expected"),
    [
        (_flip_payload_bit, None, True, (Damage.PAYLOAD_CHANGED, 1234)),
        (_edit_header, None, True, (Damage.HEADER_CHANGED, 2345)),
        (_delete_row, None, True, (Damage.MISSING_ROW, 3457)),
        (_delete_row_and_renumber, None, True, (Damage.MISSING_ROW, 3457)),
        (_insert_row, None, True, (Damage.INSERTED_ROW, 4002)),
        (_swap_rows_in_a_chain, None, True, (Damage.ROWS_SWAPPED, 3001)),
        (_truncate_a_chains_tail, None, True, (Damage.TAIL_TRUNCATED, 5002)),
        (_rewrite_a_chain, None, True, (Damage.CHAIN_REWRITTEN, 5999)),
        (_rewrite_before_the_start, 2, False, (Damage.CHAIN_REWRITTEN, 3999)),
        (_move_by_chain_column, None, True, (Damage.ENTRY_MOVED, 2001)),
        (_swap_rows_across_chains, None, True, (Damage.ENTRY_MOVED, 3001)),
        (_move_into_another_chain_recomputed, None, True, (Damage.ENTRY_MOVED, 4000)),
        (_rewrite_a_stream_into_another_chain, None, True, (Damage.ENTRY_MOVED, 3002)),
        (_drop_a_chain, None, True, (Damage.CHAIN_DROPPED, 2)),
        (_resign_with_a_foreign_key, None, False, (Damage.BAD_CHECKPOINT_SIGNATURE, 6000)),
        (_head_hash_changed, None, True, (Damage.HEAD_MISMATCH, 6000)),
        (_head_tree_changed, None, True, (Damage.TREE_CHANGED, 5999)),
        (_chain_count_lowered, None, True, (Damage.CHAIN_COUNT_CHANGED, 0)),
        (_chain_count_raised, None, True, (Damage.CHAIN_COUNT_CHANGED, 0)),
        (_tree_node_changed, None, True, (Damage.TREE_CHANGED, 351)),
        (_tree_node_deleted, None, True, (Damage.TREE_CHANGED, 2048)),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
async def test_tampering_with_a_trail_in_chains_is_detected_and_named(
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


async def test_a_cut_tail_with_its_head_moved_back_is_named_by_the_head_rows_tree(
    trail: Trail, copy_of: Callable[[], Awaitable[str]]
) -> None:
    """Chain 1 cut after seq 5000, its head moved back and the checkpoint vouching for more
    deleted: the head row's Merkle tree still holds 3000 entries. A forger who rewrites the
    tree too and deletes the stored nodes beyond the cut passes; only a checkpoint kept
    outside the database names it then."""
    admin = await copy_of()
    await _truncate_a_chains_tail(admin, trail)
    await _tamper(admin, "DELETE FROM l9_audit.checkpoints WHERE id = 3")
    assert await _verify(admin, trail, use_dir=False) == (str(Damage.TAIL_TRUNCATED), 5002)
    conn = await asyncpg.connect(admin)
    try:
        leaves = [
            r[0]
            for r in await conn.fetch("SELECT leaf_hash FROM l9_audit.entries WHERE chain = 1 ORDER BY seq")
        ]
    finally:
        await conn.close()
    tree = CompactRange()
    tree.append(leaves)
    await _tamper(
        admin,
        f"UPDATE l9_audit.chains SET tree = '\\x{tree.to_bytes().hex()}' WHERE chain = 1",
        "DELETE FROM l9_audit.tree_nodes WHERE chain = 1 AND (idx + 1) * (1::int8 << level) > 2500",
    )
    assert await _verify(admin, trail, use_dir=False) == ("ok", 0)
    assert await _verify(admin, trail, presented=3, use_dir=False) == (str(Damage.TAIL_TRUNCATED), 5002)


async def test_an_untouched_trail_in_chains_verifies_chain_by_chain(
    trail: Trail, copy_of: Callable[[], Awaitable[str]]
) -> None:
    admin = await copy_of()
    for presented in (None, 1, 2, 3):
        assert await _verify(admin, trail, presented) == ("ok", 0)
    async with await PostgresAuditStore.open(writer_dsn(admin)) as reader:
        report = await reader.verify(checkpoint_dir=trail.checkpoint_dir, trusted_keys=trail.key.trusted())
        heads = await reader.heads()
    assert report.ok and report.entries_checked == 2 * PER_CHAIN and report.anchors_matched == 6
    assert [(c.chain, c.last_seq, c.entries, c.head_seq) for c in report.chains] == [
        (0, 2 * PER_CHAIN - 1, PER_CHAIN, 2 * PER_CHAIN - 1),
        (1, 2 * PER_CHAIN, PER_CHAIN, 2 * PER_CHAIN),
    ]
    assert [(c.chain_hash, c.root) for c in report.chains] == [(h.chain_hash, h.root) for h in heads]
    assert (report.last_seq, report.head_seq, report.chain_hash) == (6000, 6000, heads[1].chain_hash)
    print(f"\nverify: {report.entries_per_s:,.0f} entries/s ({report.summary()})")


async def test_the_details_name_the_foreign_key_and_the_chain_an_entry_belongs_to(
    trail: Trail, copy_of: Callable[[], Awaitable[str]]
) -> None:
    admin = await copy_of()
    await _resign_with_a_foreign_key(admin, trail)
    await _rewrite_a_stream_into_another_chain(admin, trail)
    async with await PostgresAuditStore.open(writer_dsn(admin)) as reader:
        forged = (await reader.checkpoints())[2]
        report = await reader.verify(trusted_keys=trail.key.trusted())
    assert forged.key_id != trail.key.key_id
    details = {(p.kind, p.seq): p.detail for p in report.problems}
    assert (
        f"key id {forged.key_id!r} is not a trusted checkpoint key"
        in details[Damage.BAD_CHECKPOINT_SIGNATURE, 6000]
    )
    assert "belongs to chain 0" in details[Damage.ENTRY_MOVED, 3002]


# -- four chains, one snapshot ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def four(stack: StackEndpoints, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Trail]:
    """Four chains of 1000 entries, checkpoints after 500 and 1000 of each."""
    url, made = await build_trail(stack, tmp_path_factory.mktemp("four"), 4, 1000, 500)
    yield made
    await drop_database(stack, url)


async def _readers_in_transaction(admin: str) -> int:
    conn = await asyncpg.connect(admin)
    try:
        found: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND usename = 'l9_writer' AND state = 'idle in transaction'"
        )
        return found
    finally:
        await conn.close()


async def test_four_chains_are_read_at_once_from_one_snapshot(stack: StackEndpoints, four: Trail) -> None:
    """The chains are read through four connections, all in the snapshot the first one
    exported: entries appended once the snapshot is taken are not seen by any of them."""
    admin = await new_database(stack, four.template)
    try:
        dsn = writer_dsn(admin)
        async with await PostgresAuditStore.open(dsn) as writer:
            for readers in (4, 2):
                async with PostgresSnapshot.open(dsn, readers) as snapshot:
                    await writer.append(
                        [r for s in streams_for(Layout(4)) for r in make_records(7, stream=s)]
                    )
                    report = await verify_snapshot(
                        snapshot,
                        files=None,
                        presented=None,
                        trusted_keys=four.key.trusted(),
                        chunk_size=100,
                        started=time.perf_counter(),
                    )
                    assert await _readers_in_transaction(admin) == readers
                assert report.ok, report.problems
                assert report.entries_checked == 4000 + (28 if readers == 2 else 0)
                assert [c.entries for c in report.chains] == [1000 + (7 if readers == 2 else 0)] * 4
            after = await writer.verify(trusted_keys=four.key.trusted())
        assert after.ok and after.entries_checked == 4056 and after.anchors_matched == 8
    finally:
        await drop_database(stack, admin)


async def test_a_dropped_chain_among_four_is_named(stack: StackEndpoints, four: Trail) -> None:
    admin = await new_database(stack, four.template)
    try:
        await _tamper(
            admin,
            "DELETE FROM l9_audit.entries WHERE chain = 2",
            "DELETE FROM l9_audit.payloads WHERE seq % 4 = 3",
            "DELETE FROM l9_audit.chains WHERE chain = 2",
        )
        async with await PostgresAuditStore.open(writer_dsn(admin)) as reader:
            report = await reader.verify(trusted_keys=four.key.trusted())
        assert [(p.kind, p.seq) for p in report.problems] == [(Damage.CHAIN_DROPPED, 3)]
        assert [c.entries for c in report.chains] == [1000, 1000, 0, 1000]
    finally:
        await drop_database(stack, admin)
