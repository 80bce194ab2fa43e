"""The auditor's prepare step and the pure steps of an append: the same hash chain, byte for
byte, as the documented formulas; every entry decoded and verified once; the one-line
summaries the audit stream carries."""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from agents.auditor.agent import AuditBatch, prepare_batch
from bus import Entry
from envelope import PacketEnvelope, Signer, Verifier, encode
from memory.audit import AppendStatus, AuditRecord, PreparedAppend, prepare_append
from memory.audit.appending import outcomes
from memory.audit.chains import Layout
from memory.chain import (
    GENESIS,
    HASH_VERSION,
    canonical_header,
    chain_hash,
    header_parts,
    leaf_hash,
    leaf_hash_of,
    payload_hash,
    to_micros,
)
from memory.merkle import CompactRange, root_of
from memory.postgres.appending import ChainedBatch, ChainState, chain_batch
from memory.postgres.timestamps import pg_time
from memory.summary import summarize, summarize_env

KEYRING = {"k1": b"unit-audit-secret"}
SIGNER = Signer(KEYRING, "k1")
NOW = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)

texts = st.text(max_size=300)
maybe_text = st.none() | texts


@given(
    texts, texts, texts, texts, maybe_text, st.integers(0, 2**62), st.integers(0, 2**62),
    st.integers(0, 2**62), texts, texts,
)  # fmt: skip
def test_a_header_packed_ahead_hashes_as_the_canonical_header(
    eid: str, type_: str, source: str, corr: str, cause: str | None, time_us: int, seq: int,
    recorded_us: int, stream: str, entry_id: str,
) -> None:  # fmt: skip
    digest = bytes(range(32))
    header = canonical_header(
        [HASH_VERSION, seq, eid, type_, source, corr, cause, time_us, recorded_us, stream, entry_id]
    )
    parts = header_parts(eid, type_, source, corr, cause, time_us, stream, entry_id)
    assert leaf_hash_of(parts, seq, recorded_us, digest) == leaf_hash(header, digest)


def record(i: int, *, eid: str | None = None, data: Any = None) -> AuditRecord:
    envelope = PacketEnvelope.new(
        type="l9.plan.locked.v1",
        source=f"agent://planner/{i % 2}",
        data={"i": i} if data is None else data,
        correlation_id="run-1",
        causation_id=None if i % 2 else f"cause-{i}",
    )
    if eid is not None:
        envelope = envelope.model_copy(update={"id": eid})
    return AuditRecord.from_envelope(envelope, stream="plan", entry_id=f"{1000 + i}-0", signer=SIGNER)


def reference_rows(
    records: list[AuditRecord], seq: int, previous: bytes, *, chain: int = 0, chains: int = 1
) -> list[tuple[Any, ...]]:
    """The entries rows as the documented formulas give them (memory.chain's module doc), for
    chain ``chain`` of ``chains`` whose last entry is ``seq`` (``chain + 1 - chains`` when
    empty; memory.audit.chains: a chain's seqs are ``chains`` apart)."""
    rows = []
    seq += chains - 1  # the loop adds one more: the chain's next seq
    for rec in records:
        seq += 1
        digest = payload_hash(rec.env, rec.sig, rec.key_id)
        header = canonical_header([
            HASH_VERSION, seq, rec.envelope_id, rec.type, rec.source, rec.correlation_id,
            rec.causation_id, to_micros(rec.time), to_micros(NOW), rec.stream, rec.entry_id,
        ])  # fmt: skip
        leaf = leaf_hash(header, digest)
        previous = chain_hash(previous, leaf)
        rows.append((
            seq, rec.envelope_id, rec.type, rec.source, rec.correlation_id, rec.causation_id,
            pg_time(to_micros(rec.time)), pg_time(to_micros(NOW)), rec.stream, rec.entry_id, digest, leaf,
            previous, HASH_VERSION, chain,
        ))  # fmt: skip
        seq += chains - 1
    return rows


def one_chain(prepared: PreparedAppend, fresh: list[int], size: int, previous: bytes) -> ChainedBatch:
    """:func:`chain_batch` onto a trail of one chain of ``size`` entries."""
    state = ChainState(0, size, previous, CompactRange())
    return chain_batch(prepared, {0: fresh}, {0: state}, Layout(1), NOW)


def test_a_prepared_batch_chains_exactly_as_the_documented_formulas() -> None:
    records = [record(i) for i in range(6)]
    prepared = prepare_append(records)
    batch = one_chain(prepared, list(prepared.firsts.values()), 41, bytes([7]) * 32)
    assert batch.entries == reference_rows(records, 41, bytes([7]) * 32)
    assert batch.payloads == [(42 + i, r.env, r.sig, r.key_id) for i, r in enumerate(records)]
    assert batch.last_seq == 47
    assert batch.moves == [(0, 47, batch.entries[-1][12], batch.moves[0][3], 41)]


def test_records_of_streams_in_two_chains_take_interleaved_seqs_and_grow_each_tree() -> None:
    layout = Layout(2)
    streams = {layout.chain_of(s): s for s in ("plan", "validate", "sympy.requests", "generate", "a", "b")}
    assert set(streams) == {0, 1}, "the sample streams cover both chains"
    records = [record(i)._replace(stream=streams[i % 2], entry_id=f"{1000 + i}-0") for i in range(6)]
    prepared = prepare_append(records)
    fresh = {0: [0, 2, 4], 1: [1, 3, 5]}
    trees = {0: CompactRange(), 1: CompactRange()}
    trees[1].append([bytes(32)] * 3)  # chain 1 holds 3 entries: seqs 2, 4, 6
    states = {0: ChainState(0, 0, GENESIS, trees[0]), 1: ChainState(1, 3, bytes([9]) * 32, trees[1])}
    batch = chain_batch(prepared, fresh, states, layout, NOW)
    by_chain = {0: [r for r in batch.entries if r[-1] == 0], 1: [r for r in batch.entries if r[-1] == 1]}
    assert by_chain[0] == reference_rows(records[0::2], -1, GENESIS, chain=0, chains=2)
    assert by_chain[1] == reference_rows(records[1::2], 6, bytes([9]) * 32, chain=1, chains=2)
    assert [r[0] for r in by_chain[0]] == [1, 3, 5] and [r[0] for r in by_chain[1]] == [8, 10, 12]
    assert [(m[0], m[1], m[4]) for m in batch.moves] == [(0, 3, 0), (1, 6, 3)]
    assert trees[0].size == 3 and trees[1].size == 6
    assert trees[0].root() == root_of([r[11] for r in by_chain[0]])
    assert batch.placed[records[5].envelope_id] == (12, by_chain[1][-1][12])


def test_duplicates_in_the_batch_and_in_the_trail_are_placed_once() -> None:
    a, b, c = record(1), record(2), record(3)
    forged = a._replace(env=a.env + b"\x00")  # same id, other bytes
    prepared = prepare_append([a, b, a, forged, c])
    assert prepared.firsts == {a.envelope_id: 0, b.envelope_id: 1, c.envelope_id: 4}
    stored = {b.envelope_id: {"seq": 9, "chain_hash": b"h" * 32, "recorded_at": NOW, "payload_hash": b"x"}}
    fresh = [i for eid, i in prepared.firsts.items() if eid not in stored]
    batch = one_chain(prepared, fresh, 10, GENESIS)
    assert batch.entries == reference_rows([a, c], 10, GENESIS)
    result = outcomes(prepared, stored, batch.placed, NOW)
    assert [(o.seq, o.status) for o in result] == [
        (11, AppendStatus.STORED),
        (9, AppendStatus.CONFLICT),  # the trail holds another payload under b's id
        (11, AppendStatus.DUPLICATE),
        (11, AppendStatus.CONFLICT),
        (12, AppendStatus.STORED),
    ]
    assert [o.new for o in result] == [True, False, False, False, True]


def entry(i: int, fields: dict[bytes, bytes]) -> Entry:
    return Entry("plan", f"{2000 + i}-0", fields, 1)


def wire(envelope: PacketEnvelope, signer: Signer | None = SIGNER) -> dict[bytes, bytes]:
    return {
        k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in encode(envelope, signer).items()
    }


def test_prepare_decodes_and_verifies_each_entry_once_and_says_why_it_refuses() -> None:
    good = [
        PacketEnvelope.new(type="l9.plan.locked.v1", source="agent://p/0", data={"i": i}) for i in range(3)
    ]
    tampered = wire(good[0]) | {b"sig": b"0" * 64}
    other_key = wire(good[1], Signer({"k9": b"x"}, "k9"))
    batch = [
        entry(0, wire(good[0])),
        entry(1, {b"env": b"\xc1"}),
        entry(2, tampered),
        entry(3, wire(good[1])),
        entry(4, other_key),
        entry(5, wire(good[2], None)),
        entry(6, wire(good[2])),
    ]
    prepared = prepare_batch(batch, Verifier(KEYRING))
    records = prepared.append.records
    assert [r.entry_id for r in records] == ["2000-0", "2003-0", "2006-0"]
    assert [r.envelope_id for r in records] == [g.id for g in good]
    assert [(r.entry.entry_id, r.reason) for r in prepared.rejected] == [
        ("2001-0", "undecodable"),
        ("2002-0", "bad_signature"),
        ("2004-0", "bad_signature"),
        ("2005-0", "bad_signature"),
    ]
    assert "unknown signing key id 'k9'" in prepared.rejected[2].detail
    assert prepared.summaries == [summarize_env(r.env) for r in records] == ["i=0", "i=1", "i=2"]
    assert prepared.append.digests == [payload_hash(r.env, r.sig, r.key_id) for r in records]


class Label(str):
    def __str__(self) -> str:
        return "label"


def test_summaries_by_kind_of_value() -> None:
    data = {
        "s": "short",
        "long": "y" * 50,
        "n": 3,
        "f": 1.5,
        "ok": True,
        "none": None,
        "d": OrderedDict(a=1),
        "l": [1, 2],
        "t": (1,),
        "b": b"abc",
        "when": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(0),
        "sub": Label("x"),
    }
    assert (
        summarize(data, "request")
        == (
            "[request] s=short long=" + "y" * 39 + "… n=3 f=1.5 ok=True none=None d={1 keys} l=[2 items] "
            "t=[1 items] b=<3 bytes> when=2026-01-01 00:00:00+00:00 sub=label"
        )[:159]
        + "…"
    )
    assert summarize(OrderedDict(a="b")) == "a=b"
    assert summarize("text", "event") == "text"
    assert summarize_env(msgpack.packb([1])) == "(undecodable payload)"


def test_a_batch_prepared_in_slices_is_the_batch_prepared_whole() -> None:
    a, b, c = record(1), record(2), record(3)
    whole = prepare_append([a, b, a, c, b])
    joined = PreparedAppend.join([prepare_append([a, b]), prepare_append([a, c]), prepare_append([b])])
    assert joined == whole
    assert joined.firsts == {a.envelope_id: 0, b.envelope_id: 1, c.envelope_id: 3}
    batch = [
        entry(i, wire(PacketEnvelope.new(type="l9.t.v1", source="agent://t/0", data={"i": i})))
        for i in range(5)
    ]
    batch.insert(2, entry(9, {b"env": b"\xc1"}))
    verifier = Verifier(KEYRING)
    slices = AuditBatch.join([prepare_batch(batch[:3], verifier), prepare_batch(batch[3:], verifier)])
    assert slices == prepare_batch(batch, verifier)
