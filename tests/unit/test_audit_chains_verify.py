"""Verification of a trail in chains on the in-memory recorder: every chain walked with its
own step, its Merkle tree checked against its stored nodes, its head row and the signed
tree heads, and each damage named at the right seq (moves between chains, a dropped
chain, a changed tree, a chain count that disagrees with the checkpoints)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from envelope import PacketEnvelope, Signer
from memory.audit import AuditRecord, Checkpoint, Damage, InMemoryAuditRecorder, SigningKey, VerifyReport
from memory.audit.chains import ChainHead, Layout
from memory.chain import GENESIS, canonical_header, chain_hash, leaf_hash, to_micros
from memory.merkle import CompactRange

SIGNER = Signer({"k1": b"unit-chains-verify-secret"}, "k1")
KEY = SigningKey.generate()
T0 = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
PER_CHAIN = 40  # entries of each chain; a checkpoint after 20 and after 40 of each


def ticking() -> Callable[[], datetime]:
    counter = itertools.count()
    return lambda: T0 + timedelta(seconds=next(counter))


def streams_for(layout: Layout) -> list[str]:
    """A bus stream name of each chain of ``layout``, chain ``c`` at index ``c``."""
    found: dict[int, str] = {}
    for i in itertools.count():
        found.setdefault(layout.chain_of(f"bus:{i}"), f"bus:{i}")
        if len(found) == layout.chains:
            return [found[c] for c in range(layout.chains)]
    raise AssertionError("unreachable")


def record(i: int, stream: str) -> AuditRecord:
    envelope = PacketEnvelope.new(
        type="l9.plan.locked.v1", source="agent://planner/0", data={"i": i}, correlation_id="run-1"
    )
    return AuditRecord.from_envelope(envelope, stream=stream, entry_id=f"{1000 + i}-0", signer=SIGNER)


async def chained(
    chains: int = 2, checkpoint_dir: Path | None = None, *, last_checkpoint: bool = True
) -> tuple[InMemoryAuditRecorder, list[Checkpoint]]:
    """A trail of ``chains`` chains of :data:`PER_CHAIN` entries each, appended ten of every
    chain at a time; signed checkpoints after 20 entries of each, and (``last_checkpoint``)
    after all of them."""
    recorder = InMemoryAuditRecorder(clock=ticking(), checkpoint_dir=checkpoint_dir, chains=chains)
    streams = streams_for(recorder.layout)
    made = []
    for k in range(0, PER_CHAIN, 10):
        await recorder.append(
            [record(1000 * c + k + j, streams[c]) for j in range(10) for c in range(chains)]
        )
        if k + 10 == 20 or (k + 10 == PER_CHAIN and last_checkpoint):
            made.append(await recorder.make_checkpoint(KEY))
    return recorder, made


def at(recorder: InMemoryAuditRecorder, seq: int) -> int:
    """Where entry ``seq`` is in the recorder's list."""
    return next(i for i, e in enumerate(recorder.entries) if e.seq == seq)


def rehash(recorder: InMemoryAuditRecorder, chain: int, from_seq: int) -> None:
    """Recompute every leaf and chain hash of ``chain`` from ``from_seq`` on, and its head:
    a consistent forgery (the Merkle tree is left as it was)."""
    recorder.entries.sort(key=lambda e: e.seq)
    previous, size = GENESIS, 0
    for i, e in enumerate(recorder.entries):
        if e.chain != chain:
            continue
        size += 1
        if e.seq >= from_seq:
            header = canonical_header([
                e.hash_version, e.seq, e.envelope_id, e.type, e.source, e.correlation_id, e.causation_id,
                to_micros(e.envelope_time), to_micros(e.recorded_at), e.stream, e.entry_id,
            ])  # fmt: skip
            e = replace(e, leaf_hash=leaf_hash(header, e.payload_hash))
            e = replace(e, chain_hash=chain_hash(previous, e.leaf_hash))
            recorder.entries[i] = e
        previous = e.chain_hash
    recorder._chains[chain] = replace(recorder._chains[chain], size=size, chain_hash=previous)


def first(report: VerifyReport) -> tuple[Damage, int] | None:
    return (report.first.kind, report.first.seq) if report.first else None


# -- an untouched trail ---------------------------------------------------------------------------


async def test_every_chain_is_walked_with_its_step_and_reported(tmp_path: Path) -> None:
    recorder, (half, full) = await chained(checkpoint_dir=tmp_path)
    heads = await recorder.heads()
    report = await recorder.verify(trusted_keys=KEY.trusted())
    assert report.ok, report.problems
    assert [(c.chain, c.last_seq, c.entries, c.head_seq) for c in report.chains] == [
        (0, 2 * PER_CHAIN - 1, PER_CHAIN, 2 * PER_CHAIN - 1),
        (1, 2 * PER_CHAIN, PER_CHAIN, 2 * PER_CHAIN),
    ]
    assert [(c.chain_hash, c.root) for c in report.chains] == [(h.chain_hash, h.root) for h in heads]
    assert (report.entries_checked, report.last_seq, report.head_seq) == (2 * PER_CHAIN, 80, 80)
    assert report.chain_hash == heads[1].chain_hash
    assert report.anchors_matched == 4, "two checkpoints, a head of each chain in each"
    assert report.chains[0].to_json()["root"] == heads[0].root.hex()
    # from the first checkpoint: each chain's tree is rebuilt from its stored nodes there
    from_half = await recorder.verify(trusted_keys=KEY.trusted(), from_checkpoint=tmp_path / half.file_name())
    assert from_half.ok, from_half.problems
    assert (from_half.started_from, from_half.entries_checked, from_half.anchors_matched) == (1, 40, 2)
    assert [c.root for c in from_half.chains] == [h.root for h in full.heads]


async def test_one_chain_keeps_the_reports_figures_of_before() -> None:
    recorder, _ = await chained(chains=1)
    report = await recorder.verify(trusted_keys=KEY.trusted())
    head = await recorder.head()
    assert report.ok and len(report.chains) == 1
    assert (report.last_seq, report.chain_hash, report.head_seq) == (head.seq, head.chain_hash, PER_CHAIN)
    assert "chains" not in report.summary()


async def test_four_chains_verify_and_a_damaged_one_is_named() -> None:
    recorder, _ = await chained(chains=4)
    report = await recorder.verify(trusted_keys=KEY.trusted())
    assert report.ok and [c.entries for c in report.chains] == [PER_CHAIN] * 4
    assert "in 4 chains" in report.summary()
    i = at(recorder, 63)  # chain 2's 16th entry
    recorder.entries[i] = replace(recorder.entries[i], type="l9.forged.v1")
    assert first(await recorder.verify(trusted_keys=KEY.trusted())) == (Damage.HEADER_CHANGED, 63)


# -- damage within a chain, named with the chain's step ---------------------------------------------


async def test_damage_within_one_chain_is_named_at_its_seq() -> None:
    recorder, _ = await chained()
    i = at(recorder, 34)
    entry = recorder.entries[i]
    assert entry.env is not None
    recorder.entries[i] = replace(entry, env=entry.env + b" ")
    assert first(await recorder.verify()) == (Damage.PAYLOAD_CHANGED, 34)
    recorder.entries[i] = entry

    del recorder.entries[at(recorder, 21)]
    report = await recorder.verify()
    assert first(report) == (Damage.MISSING_ROW, 21)
    assert report.first is not None and "seq 21 of chain 0 is not in the trail" in report.first.detail
    assert report.chains[0].last_seq == 19 and report.chains[1].last_seq == 80, (
        "chain 1 is walked all the same"
    )


async def test_a_deleted_and_renumbered_row_and_swapped_rows_are_named() -> None:
    recorder, _ = await chained(last_checkpoint=False)
    del recorder.entries[at(recorder, 45)]
    for i, e in enumerate(recorder.entries):
        if e.chain == 0 and e.seq > 45:
            recorder.entries[i] = replace(e, seq=e.seq - 2)
    assert first(await recorder.verify()) == (Damage.MISSING_ROW, 45)

    recorder, _ = await chained()
    a, b = at(recorder, 52), at(recorder, 58)
    recorder.entries[a], recorder.entries[b] = (
        replace(recorder.entries[b], seq=52),
        replace(recorder.entries[a], seq=58),
    )
    assert first(await recorder.verify()) == (Damage.ROWS_SWAPPED, 52)


async def test_a_chain_rewritten_with_recomputed_hashes_is_caught_by_the_checkpoint() -> None:
    recorder, (_, full) = await chained()
    i = at(recorder, 61)
    recorder.entries[i] = replace(recorder.entries[i], source="agent://mallory/0")
    rehash(recorder, 0, 61)
    report = await recorder.verify(trusted_keys=KEY.trusted())
    assert first(report) == (Damage.CHAIN_REWRITTEN, full.heads[0].seq(Layout(2)))
    assert [p.kind for p in report.problems] == [Damage.CHAIN_REWRITTEN], "the tree's nodes: explained by it"


# -- entries moved between chains ------------------------------------------------------------------


async def test_an_entry_whose_chain_is_rewritten_is_named_as_moved() -> None:
    recorder, _ = await chained()
    i = at(recorder, 31)
    recorder.entries[i] = replace(recorder.entries[i], chain=1)
    report = await recorder.verify()
    assert first(report) == (Damage.ENTRY_MOVED, 31)
    assert (
        report.first is not None
        and "chain 0's place, but its row is stored in chain 1" in report.first.detail
    )
    assert [p.seq for p in report.problems if p.kind is Damage.ENTRY_MOVED] == [31], "named once"


async def test_entries_swapped_between_chains_are_named_as_moved() -> None:
    recorder, _ = await chained()
    a, b = at(recorder, 41), at(recorder, 42)
    recorder.entries[a], recorder.entries[b] = (
        replace(recorder.entries[a], seq=42),
        replace(recorder.entries[b], seq=41),
    )
    report = await recorder.verify()
    assert [(p.kind, p.seq) for p in report.problems] == [(Damage.ENTRY_MOVED, 41), (Damage.ENTRY_MOVED, 42)]
    assert "the entry written as seq 41 (chain 0) now sits at seq 42" in report.problems[0].detail


async def test_an_entry_moved_into_another_chain_with_its_hashes_recomputed_is_named() -> None:
    """Chain 0's entry at seq 21 rewritten into chain 1 at seq 20 (its stream is still chain
    0's), chain 1's later entries moved up a place, and chain 1 rehashed: its leaf holds."""
    recorder, _ = await chained(last_checkpoint=False)
    for i, e in enumerate(recorder.entries):
        if e.chain == 1 and e.seq >= 20:
            recorder.entries[i] = replace(e, seq=e.seq + 2)
    i = at(recorder, 21)
    recorder.entries[i] = replace(recorder.entries[i], seq=20, chain=1)
    rehash(recorder, 1, 20)
    report = await recorder.verify()
    assert first(report) == (Damage.ENTRY_MOVED, 20)
    assert report.first is not None and "its stream" in report.first.detail
    assert "belongs to chain 0" in report.first.detail
    assert (Damage.MISSING_ROW, 21) in [(p.kind, p.seq) for p in report.problems], "chain 0's gap"


async def test_a_stream_rewritten_to_another_chains_is_a_move_only_when_the_leaf_was_recomputed() -> None:
    recorder, _ = await chained(last_checkpoint=False)
    other = streams_for(recorder.layout)[0]
    i = at(recorder, 50)
    recorder.entries[i] = replace(recorder.entries[i], stream=other)
    assert first(await recorder.verify()) == (Damage.HEADER_CHANGED, 50), "an edit, not a move"
    rehash(recorder, 1, 50)
    assert first(await recorder.verify()) == (Damage.ENTRY_MOVED, 50)


# -- whole chains, heads, trees ---------------------------------------------------------------------


def drop_chain(recorder: InMemoryAuditRecorder, chain: int) -> None:
    recorder.entries[:] = [e for e in recorder.entries if e.chain != chain]
    recorder._chains[chain] = ChainHead.empty(chain)
    recorder._trees[chain] = CompactRange()
    recorder._nodes = {k: h for k, h in recorder._nodes.items() if k[0] != chain}


async def test_a_dropped_chain_is_named() -> None:
    recorder, _ = await chained()
    drop_chain(recorder, 1)
    report = await recorder.verify(trusted_keys=KEY.trusted())
    assert [(p.kind, p.seq) for p in report.problems] == [(Damage.CHAIN_DROPPED, 2)]
    assert "checkpoint #2 vouches for seq 80" in report.problems[0].detail
    # no checkpoint, but the head row still says what the chain held
    recorder, _ = await chained(chains=4, last_checkpoint=False)
    recorder._checkpoints.clear()
    recorder.entries[:] = [e for e in recorder.entries if e.chain != 3]
    assert first(await recorder.verify()) == (Damage.CHAIN_DROPPED, 4)


async def test_a_truncated_chain_is_named_at_its_next_seq() -> None:
    recorder, _ = await chained()
    recorder.entries[:] = [e for e in recorder.entries if e.chain == 0 or e.seq <= 60]
    rehash(recorder, 1, 999)  # the head row follows the cut
    report = await recorder.verify(trusted_keys=KEY.trusted())
    assert first(report) == (Damage.TAIL_TRUNCATED, 62)
    assert any(
        "chain 1 ends at seq 60 but checkpoint #2 vouches for seq 80" in p.detail for p in report.problems
    )


async def test_a_head_row_that_does_not_match_its_chain_is_named() -> None:
    recorder, _ = await chained()
    recorder._chains[1] = replace(recorder._chains[1], chain_hash=bytes(32))
    report = await recorder.verify()
    assert first(report) == (Damage.HEAD_MISMATCH, 80)
    assert report.first is not None and "chain 1's head row" in report.first.detail
    recorder, _ = await chained()
    forged = CompactRange()
    forged.append([bytes([i]) * 32 for i in range(PER_CHAIN)])
    recorder._trees[0] = forged
    assert first(await recorder.verify()) == (Damage.TREE_CHANGED, 79)


async def test_a_changed_tree_node_is_named_where_a_checkpoint_vouches_for_its_entries() -> None:
    recorder, _ = await chained()
    assert (0, 4, 0) in recorder._nodes  # chain 0's node over its first 16 entries (seq 1..31)
    recorder._nodes[0, 4, 0] = bytes(32)
    report = await recorder.verify(trusted_keys=KEY.trusted())
    assert first(report) == (Damage.TREE_CHANGED, 31)
    assert report.first is not None and "checkpoint #2 vouches for them" in report.first.detail
    # beyond the last checkpoint, a node cannot tell a rewrite from a changed tree: named at the end
    recorder, _ = await chained(last_checkpoint=False)
    del recorder._nodes[1, 4, 1]  # chain 1's entries 17..32: seq 34..64
    report = await recorder.verify(trusted_keys=KEY.trusted())
    assert first(report) == (Damage.TREE_CHANGED, 80)
    assert report.first is not None and "over seq 34..64 is missing" in report.first.detail


async def test_a_walk_from_a_checkpoint_checks_the_stored_tree_it_starts_from(tmp_path: Path) -> None:
    recorder, (half, _) = await chained(checkpoint_dir=tmp_path)
    recorder._nodes[1, 4, 0] = bytes(32)
    report = await recorder.verify(trusted_keys=KEY.trusted(), from_checkpoint=tmp_path / half.file_name())
    assert first(report) == (Damage.TREE_CHANGED, 40)
    assert report.first is not None and "do not make the root it signs" in report.first.detail


# -- the chain count and the checkpoints ----------------------------------------------------------------


async def test_a_chain_count_that_disagrees_with_the_checkpoints_is_named() -> None:
    recorder, _ = await chained()
    recorder._layout = Layout(1)
    report = await recorder.verify(trusted_keys=KEY.trusted())
    assert [(p.kind, p.seq) for p in report.problems] == [(Damage.CHAIN_COUNT_CHANGED, 0)]
    assert "the trail says 1 chain(s) but checkpoint #2 signs the heads of 2" in report.problems[0].detail
    assert report.entries_checked == 2 * PER_CHAIN, "walked as the checkpoints say"
    # without checkpoints: chain 1's head row holds entries the trail's count leaves out
    recorder._checkpoints.clear()
    report = await recorder.verify()
    assert first(report) == (Damage.CHAIN_COUNT_CHANGED, 0)
    assert "chain 1's head row says 40 entries" in report.problems[0].detail
    assert (Damage.ENTRY_MOVED, 2) in [(p.kind, p.seq) for p in report.problems]


async def test_a_tree_head_resigned_with_a_foreign_key_is_a_bad_signature() -> None:
    recorder, (half, full) = await chained()
    intruder = SigningKey.generate()
    recorder._checkpoints[1] = Checkpoint.sign_heads(
        intruder, id=2, heads=full.heads, created_at=full.created_at, previous=half
    )
    report = await recorder.verify(trusted_keys=KEY.trusted())
    assert first(report) == (Damage.BAD_CHECKPOINT_SIGNATURE, 80)
    assert report.first is not None and f"key id {intruder.key_id!r} is not a trusted" in report.first.detail
