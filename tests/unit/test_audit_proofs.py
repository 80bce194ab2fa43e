"""Inclusion and consistency proofs (``memory.audit.proofs``) made by the in-memory recorder,
of one chain and of several: every entry is proven against every checkpoint that covers it,
every later checkpoint extends every earlier one, and each single tampering with a proof is
refused with a message that names it.

Each proof is also checked by a verifier written here from RFC 9162 alone (section 2.1.3.2,
inclusion; 2.1.4.2, consistency; the hashes of section 2.1.1: SHA-256 with the 0x00 leaf and
0x01 node prefixes) and from the documented bytes of the trail (``memory.chain``'s header
and payload hash, ``memory.audit.chains``' head leaf, ``memory.audit.checkpoints``' version 2
message), over the proof's JSON: it calls nothing of ``memory.merkle`` or
``envelope._merkle``, so a proof that both accept holds by the RFC, not only by the code
that made it.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import json
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import msgpack
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from envelope import PacketEnvelope, Signer
from memory.audit import AuditRecord, Checkpoint, InMemoryAuditRecorder, SigningKey
from memory.audit.proofs import ConsistencyProof, InclusionProof, ProofError, read_proof

SIGNER = Signer({"k1": b"unit-proofs-secret"}, "k1")
KEY = SigningKey.generate()
TRUSTED = KEY.trusted()
STRANGER = SigningKey.generate()
T0 = datetime(2026, 6, 1, 9, 30, 0, 654321, tzinfo=UTC)
#: Batches appended in the fixed scenario, a checkpoint after each.
BATCHES = (1, 6, 2, 11, 5)
#: Streams enough that every chain of three gets entries (asserted in the scenario).
STREAMS = tuple(f"t:stream-{i}" for i in range(9))


def record(i: int, stream: str) -> AuditRecord:
    envelope = PacketEnvelope.new(
        type="l9.plan.locked.v1" if i % 3 else "l9.artifact.generated.v1",
        source=f"agent://planner/planner-{i % 2}",
        data={"i": i},
        correlation_id="run-proofs",
        causation_id=f"cause-{i}" if i % 2 else None,
    )
    return AuditRecord.from_envelope(envelope, stream=stream, entry_id=f"{1000 + i}-0", signer=SIGNER)


def ticking() -> Callable[[], datetime]:
    counter = itertools.count()
    return lambda: T0 + timedelta(seconds=next(counter))


# -- RFC 9162, written from the RFC ----------------------------------------------------------------


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def rfc_leaf(data: bytes) -> bytes:
    """MTH({d(0)}) = SHA-256(0x00 || d(0)) (section 2.1.1)."""
    return sha256(b"\x00" + data)


def rfc_node(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right)


def rfc_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over leaves already hashed (section 2.1.1): k is the largest power of two < n."""
    n = len(leaf_hashes)
    if n == 0:
        return sha256(b"")
    if n == 1:
        return leaf_hashes[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return rfc_node(rfc_root(leaf_hashes[:k]), rfc_root(leaf_hashes[k:]))


def _shift_until_lsb_or_zero(fn: int, sn: int) -> tuple[int, int]:
    while fn & 1 == 0 and fn != 0:
        fn, sn = fn >> 1, sn >> 1
    return fn, sn


def rfc_inclusion(
    leaf_hash: bytes, leaf_index: int, tree_size: int, path: Sequence[bytes], root: bytes
) -> bool:
    """Section 2.1.3.2, step by step."""
    if leaf_index >= tree_size:  # 1
        return False
    fn, sn = leaf_index, tree_size - 1  # 2
    r = leaf_hash  # 3
    for p in path:  # 4
        if sn == 0:  # 4a
            return False
        if fn & 1 or fn == sn:  # 4b
            r = rfc_node(p, r)
            if fn & 1 == 0:
                fn, sn = _shift_until_lsb_or_zero(fn, sn)
        else:
            r = rfc_node(r, p)
        fn, sn = fn >> 1, sn >> 1  # 4c
    return sn == 0 and r == root  # 5


def rfc_consistency(
    first: int, second: int, first_hash: bytes, second_hash: bytes, path: Sequence[bytes]
) -> bool:
    """Section 2.1.4.2, step by step, for 0 < first < second; the trivial cases (the RFC leaves
    them out) as the trail documents them: equal trees and the empty tree, by an empty proof."""
    if first == second:
        return not path and first_hash == second_hash
    if first == 0:
        return not path and first_hash == sha256(b"") and first < second
    if first > second or not path:  # 1
        return False
    path = list(path)
    if first & (first - 1) == 0:  # 2: first is an exact power of 2
        path.insert(0, first_hash)
    fn, sn = first - 1, second - 1  # 3
    while fn & 1:  # 4
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]  # 5
    for c in path[1:]:  # 6
        if sn == 0:  # 6a
            return False
        if fn & 1 or fn == sn:  # 6b
            fr, sr = rfc_node(c, fr), rfc_node(c, sr)
            if fn & 1 == 0:
                fn, sn = _shift_until_lsb_or_zero(fn, sn)
        else:
            sr = rfc_node(sr, c)
        fn, sn = fn >> 1, sn >> 1  # 6c
    return fr == first_hash and sr == second_hash and sn == 0  # 7


# -- the trail's documented bytes, over a proof's JSON -------------------------------------------------

#: memory.chain's canonical header, in order.
HEADER = (
    "hash_version", "seq", "envelope_id", "type", "source", "correlation_id", "causation_id",
    "envelope_time_us", "recorded_at_us", "stream", "entry_id",
)  # fmt: skip


def packed(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def entry_leaf(proof: dict[str, Any]) -> bytes:
    """SHA-256(0x00 || msgpack header || payload_hash); the payload hash from the envelope
    bytes when they are carried (SHA-256(msgpack [env, sig, key_id]))."""
    header = packed([proof["header"][name] for name in HEADER])
    digest = bytes.fromhex(proof["payload_hash"])
    if "payload" in proof:
        carried = proof["payload"]
        env = base64.b64decode(carried["env"])
        if sha256(packed([env, carried["sig"], carried["key_id"]])) != digest:
            return b""
    return rfc_leaf(header + digest)


def head_leaf(head: dict[str, Any]) -> bytes:
    """SHA-256(0x00 || msgpack [chain, size, chain_hash, root])."""
    return rfc_leaf(
        packed([head["chain"], head["size"], bytes.fromhex(head["chain_hash"]), bytes.fromhex(head["root"])])
    )


def checkpoint_holds(cp: dict[str, Any], public_key: bytes) -> bool:
    """A version 2 checkpoint: its heads make its root, and the Ed25519 signature over
    msgpack ["l9.audit.checkpoint", 2, id, seq, root, created_at_us, prev_id, prev_digest,
    key_id, chains] verifies."""
    if cp.get("format") != "l9.audit.checkpoint.v2":
        return False
    heads = cp["heads"]
    root = bytes.fromhex(cp["chain_hash"])
    if [h["chain"] for h in heads] != list(range(len(heads))) or rfc_root(
        [head_leaf(h) for h in heads]
    ) != root:
        return False
    created_us = (datetime.fromisoformat(cp["created_at"]) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
        microseconds=1
    )
    prev_digest = None if cp["prev_digest"] is None else bytes.fromhex(cp["prev_digest"])
    message = packed([
        "l9.audit.checkpoint", 2, cp["id"], cp["seq"], root, created_us, cp["prev_id"], prev_digest,
        cp["key_id"], len(heads),
    ])  # fmt: skip
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(bytes.fromhex(cp["signature"]), message)
    except InvalidSignature:
        return False
    return True


def rfc_inclusion_holds(proof: dict[str, Any], public_key: bytes = KEY.public_bytes) -> bool:
    """The whole inclusion proof, from its JSON: the signed tree head, the entry's path to its
    chain's root, the chain head's path to the tree head."""
    cp = proof["checkpoint"]
    if not checkpoint_holds(cp, public_key):
        return False
    heads, chain, seq = cp["heads"], proof["chain"], proof["header"]["seq"]
    if not 0 <= chain < len(heads) or seq < 1 or (seq - 1) % len(heads) != chain:
        return False  # memory.audit.chains: chain c holds the seqs c + 1, c + 1 + N, ...
    head = heads[chain]
    path = [bytes.fromhex(p) for p in proof["path"]]
    head_path = [bytes.fromhex(p) for p in proof["head_path"]]
    in_chain = rfc_inclusion(
        entry_leaf(proof), (seq - 1) // len(heads), head["size"], path, bytes.fromhex(head["root"])
    )
    in_head = rfc_inclusion(head_leaf(head), chain, len(heads), head_path, bytes.fromhex(cp["chain_hash"]))
    return in_chain and in_head


def rfc_consistency_holds(proof: dict[str, Any], public_key: bytes = KEY.public_bytes) -> bool:
    old, new = proof["old"], proof["new"]
    if not (checkpoint_holds(old, public_key) and checkpoint_holds(new, public_key)):
        return False
    if len(old["heads"]) != len(new["heads"]) or len(proof["proofs"]) != len(new["heads"]):
        return False
    for o, n, hashes in zip(old["heads"], new["heads"], proof["proofs"], strict=True):
        steps = [bytes.fromhex(h) for h in hashes]
        if not rfc_consistency(
            o["size"], n["size"], bytes.fromhex(o["root"]), bytes.fromhex(n["root"]), steps
        ):
            return False
    return True


# -- the scenario ---------------------------------------------------------------------------------------


class Trail:
    """A recorder of ``chains`` chains, its records in append order, and after each batch a
    checkpoint (``covered_by[envelope id]``: the first checkpoint id that covers it)."""

    def __init__(self, chains: int) -> None:
        self.recorder = InMemoryAuditRecorder(clock=ticking(), chains=chains)
        self.records: list[AuditRecord] = []
        self.covered_by: dict[str, int] = {}
        self.checkpoints: list[Checkpoint] = []

    async def batch(self, n: int, streams: Sequence[str] = STREAMS) -> None:
        start = len(self.records)
        batch = [record(i, streams[i % len(streams)]) for i in range(start, start + n)]
        await self.recorder.append(batch)
        self.records += batch
        checkpoint = await self.recorder.make_checkpoint(KEY)
        self.checkpoints.append(checkpoint)
        for rec in batch:
            self.covered_by[rec.envelope_id] = checkpoint.id


async def fixed_trail(chains: int) -> Trail:
    trail = Trail(chains)
    for n in BATCHES:
        await trail.batch(n)
    sizes = [h.size for h in trail.checkpoints[-1].heads]
    assert len(sizes) == chains and min(sizes) >= 3  # every chain has a path to tamper with
    return trail


def as_json(proof: InclusionProof | ConsistencyProof) -> dict[str, Any]:
    """The proof as a file holds it (a JSON round trip)."""
    data: dict[str, Any] = json.loads(json.dumps(proof.to_json()))
    return data


def problem_of(data: dict[str, Any]) -> str | None:
    return read_proof(data).problem(TRUSTED)


CHAINS = pytest.mark.parametrize("chains", [1, 3])


# -- inclusion ---------------------------------------------------------------------------------------------


@CHAINS
async def test_every_entry_is_proven_against_every_checkpoint_that_covers_it(chains: int) -> None:
    trail = await fixed_trail(chains)
    store = trail.recorder
    for rec in trail.records:
        newest = await store.inclusion_proof(rec.envelope_id)
        assert newest.checkpoint == trail.checkpoints[-1]
        for checkpoint in trail.checkpoints:
            if checkpoint.id < trail.covered_by[rec.envelope_id]:
                with pytest.raises(
                    ProofError, match=rf"came after checkpoint #{checkpoint.id}: make a newer"
                ):
                    await store.inclusion_proof(rec.envelope_id, checkpoint)
                continue
            proof = await store.inclusion_proof(rec.envelope_id, checkpoint)
            entry = await store.entry(rec.envelope_id)
            assert entry is not None
            assert (proof.envelope_id, proof.seq, proof.chain) == (rec.envelope_id, entry.seq, entry.chain)
            assert proof.leaf == entry.leaf_hash
            assert proof.problem(TRUSTED) is None
            assert rfc_inclusion_holds(as_json(proof))


@CHAINS
async def test_an_inclusion_proof_survives_its_json_round_trip(chains: int) -> None:
    trail = await fixed_trail(chains)
    for rec in trail.records[::4]:
        first_covering = trail.checkpoints[trail.covered_by[rec.envelope_id] - 1]
        proof = await trail.recorder.inclusion_proof(rec.envelope_id, first_covering)
        data = as_json(proof)
        back = read_proof(data)
        assert isinstance(back, InclusionProof)
        assert back == proof
        assert back.to_json() == data
        assert data["format"] == "l9.audit.inclusion.v1"
        assert (data["envelope_id"], data["seq"], data["chain"]) == (rec.envelope_id, proof.seq, proof.chain)
        assert back.payload is not None and back.payload[0] == rec.env


def _flip(hex_hash: str) -> str:
    raw = bytearray(bytes.fromhex(hex_hash))
    raw[0] ^= 0x01
    return raw.hex()


def _flip_path(data: dict[str, Any]) -> None:
    data["path"][-1] = _flip(data["path"][-1])


def _flip_head_path(data: dict[str, Any]) -> None:
    data["head_path"][0] = _flip(data["head_path"][0])


def _change_type(data: dict[str, Any]) -> None:
    data["header"]["type"] = "l9.plan.rejected.v1"


def _change_recorded_at(data: dict[str, Any]) -> None:
    data["header"]["recorded_at_us"] += 1


def _change_payload_hash(data: dict[str, Any]) -> None:
    data["payload_hash"] = _flip(data["payload_hash"])


def _change_payload_hash_of_a_redacted_entry(data: dict[str, Any]) -> None:
    del data["payload"]  # a redacted entry's proof carries no envelope bytes
    data["payload_hash"] = _flip(data["payload_hash"])


def _change_envelope_bytes(data: dict[str, Any]) -> None:
    env = bytearray(base64.b64decode(data["payload"]["env"]))
    env[-1] ^= 0x01
    data["payload"]["env"] = base64.b64encode(env).decode()


def _another_chain(data: dict[str, Any]) -> None:
    """The next chain (the seq then belongs to another); with one chain, a chain that is not."""
    chains = len(data["checkpoint"]["heads"])
    data["chain"] = 1 if chains == 1 else (data["chain"] + 1) % chains


def _resign_by_a_stranger(data: dict[str, Any]) -> None:
    cp = Checkpoint.from_json(data["checkpoint"])
    forged = Checkpoint.sign_heads(
        STRANGER, id=cp.id, heads=cp.heads, created_at=cp.created_at, previous=None
    )
    data["checkpoint"] = forged.to_json()


def _stranger_signs_as_the_trusted_key(data: dict[str, Any]) -> None:
    cp = Checkpoint.from_json(data["checkpoint"])
    forged = Checkpoint.sign_heads(
        SigningKey(KEY.key_id, STRANGER.private_key),
        id=cp.id,
        heads=cp.heads,
        created_at=cp.created_at,
        previous=None,
    )
    data["checkpoint"] = forged.to_json()


def _edit_the_heads(data: dict[str, Any]) -> None:
    head = data["checkpoint"]["heads"][data["chain"]]
    head["root"] = _flip(head["root"])


def _edit_the_heads_and_their_root(data: dict[str, Any]) -> None:
    """The root recomputed over the edited heads: the digest (and signature) then fail."""
    head = data["checkpoint"]["heads"][data["chain"]]
    head["size"] += 1
    cp = data["checkpoint"]
    cp["chain_hash"] = rfc_root([head_leaf(h) for h in cp["heads"]]).hex()


def _against_a_version_1_checkpoint(data: dict[str, Any]) -> None:
    cp = Checkpoint.from_json(data["checkpoint"])
    v1 = Checkpoint.sign(
        KEY, id=cp.id, seq=cp.seq, chain_hash=cp.heads[0].chain_hash, created_at=cp.created_at, previous=None
    )
    data["checkpoint"] = v1.to_json()


#: Each single tampering, and what the refusal must say.
TAMPERINGS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "a flipped path hash": (_flip_path, r"the entry's path does not lead to chain \d+'s root"),
    "a changed header field": (_change_type, r"the entry's path does not lead"),
    "a changed recording time": (_change_recorded_at, r"the entry's path does not lead"),
    "a changed payload hash": (_change_payload_hash, r"envelope bytes carried do not match"),
    "a redacted entry's changed payload hash": (
        _change_payload_hash_of_a_redacted_entry,
        r"the entry's path does not lead",
    ),
    "changed envelope bytes": (_change_envelope_bytes, r"envelope bytes carried do not match"),
    "another chain index": (_another_chain, r"(does not belong to chain|is not one of the checkpoint's)"),
    "a checkpoint of an untrusted key": (_resign_by_a_stranger, r"is not a trusted checkpoint key"),
    "a trusted key id, another key's signature": (
        _stranger_signs_as_the_trusted_key,
        r"Ed25519 signature does not verify",
    ),
    "edited heads": (_edit_the_heads, r"its chain heads do not make the root it signs"),
    "edited heads and root": (_edit_the_heads_and_their_root, r"its digest does not match its fields"),
    "a version 1 checkpoint": (_against_a_version_1_checkpoint, r"is version 1: it signs no tree head"),
}


@CHAINS
@pytest.mark.parametrize("name", TAMPERINGS)
async def test_each_single_tampering_is_refused_saying_what(chains: int, name: str) -> None:
    tamper, says = TAMPERINGS[name]
    trail = await fixed_trail(chains)
    for rec in trail.records[-6:]:  # the last batch: in the trees' largest, every path non-empty
        data = as_json(await trail.recorder.inclusion_proof(rec.envelope_id))
        assert problem_of(data) is None and rfc_inclusion_holds(data)
        tampered = copy.deepcopy(data)
        tamper(tampered)
        assert tampered != data
        why = problem_of(tampered)
        assert why is not None, name
        assert re.search(says, why), (name, why)
        assert not rfc_inclusion_holds(tampered), name


async def test_a_flipped_head_path_hash_is_refused() -> None:
    trail = await fixed_trail(3)
    for rec in trail.records:
        data = as_json(await trail.recorder.inclusion_proof(rec.envelope_id))
        _flip_head_path(data)
        why = problem_of(data)
        assert why is not None and f"chain {data['chain']}'s head is not in the tree head" in why
        assert not rfc_inclusion_holds(data)


async def test_an_entry_moved_to_another_seq_is_refused() -> None:
    """The header's seq says where the entry sits: another seq of the same chain, or one of
    another chain, or one beyond the chain's size, is refused."""
    trail = await fixed_trail(3)
    last = max(trail.recorder.entries, key=lambda e: e.seq)
    proof = await trail.recorder.inclusion_proof(last.envelope_id)
    for moved_by, says in (
        (-3, "the entry's path does not lead"),  # the entry before it in its chain
        (1, "does not belong to chain"),
        (300, "lies beyond"),
    ):
        data = as_json(proof)
        data["header"]["seq"] += moved_by
        data["seq"] = data["header"]["seq"]
        why = problem_of(data)
        assert why is not None and says in why, (moved_by, why)
        assert not rfc_inclusion_holds(data)


async def test_a_file_whose_fields_contradict_its_header_is_not_read() -> None:
    trail = await fixed_trail(1)
    data = as_json(await trail.recorder.inclusion_proof(trail.records[3].envelope_id))
    other = trail.records[4].envelope_id
    for field, value, says in (
        ("envelope_id", other, "envelope_id is"),
        ("seq", data["seq"] + 1, "seq is"),
    ):
        with pytest.raises(ProofError, match=says):
            read_proof({**data, field: value})
    with pytest.raises(ProofError, match="not an integer"):
        read_proof({**data, "header": {**data["header"], "seq": "four"}})
    with pytest.raises(ProofError, match="not a proof"):
        read_proof({**data, "format": "l9.audit.something.v1"})
    with pytest.raises(ProofError, match="malformed inclusion proof"):
        read_proof({k: v for k, v in data.items() if k != "path"})


async def test_a_proof_that_cannot_be_made_says_why() -> None:
    store = InMemoryAuditRecorder(clock=ticking(), chains=2)
    first, later = record(0, "a"), record(1, "a")
    await store.append([first])
    with pytest.raises(ProofError, match="no signed tree head yet"):
        await store.inclusion_proof(first.envelope_id)
    checkpoint = await store.make_checkpoint(KEY)
    await store.append([later])
    with pytest.raises(ProofError, match="is not in the trail"):
        await store.inclusion_proof("no-such-envelope")
    with pytest.raises(ProofError, match=rf"\(seq \d+\) came after checkpoint #{checkpoint.id}"):
        await store.inclusion_proof(later.envelope_id)
    v1 = Checkpoint.sign(KEY, id=9, seq=1, chain_hash=bytes(32), created_at=T0, previous=None)
    with pytest.raises(ProofError, match="checkpoint #9 is version 1"):
        await store.inclusion_proof(first.envelope_id, v1)
    assert (await store.inclusion_proof(first.envelope_id)).problem(TRUSTED) is None


# -- consistency -------------------------------------------------------------------------------------------


@CHAINS
async def test_every_checkpoint_extends_every_earlier_one(chains: int) -> None:
    trail = await fixed_trail(chains)
    for old, new in itertools.combinations_with_replacement(trail.checkpoints, 2):
        proof = await trail.recorder.consistency_proof(old.id, new.id)
        assert (proof.old, proof.new) == (old, new)
        assert proof.problem(TRUSTED) is None
        data = as_json(proof)
        back = read_proof(data)
        assert isinstance(back, ConsistencyProof) and back == proof and back.to_json() == data
        assert rfc_consistency_holds(data)
        assert problem_of(data) is None


def _resigned_with_root(cp: dict[str, Any], chain: int) -> dict[str, Any]:
    """``cp`` with chain ``chain``'s root changed, signed anew with the trusted key: a signer
    that vouched for another tree."""
    checkpoint = Checkpoint.from_json(cp)
    heads = list(checkpoint.heads)
    head = heads[chain]
    heads[chain] = type(head)(head.chain, head.size, head.chain_hash, bytes.fromhex(_flip(head.root.hex())))
    forged = Checkpoint.sign_heads(
        KEY, id=checkpoint.id, heads=tuple(heads), created_at=checkpoint.created_at, previous=None
    )
    return forged.to_json()


@CHAINS
async def test_a_changed_old_root_breaks_consistency(chains: int) -> None:
    trail = await fixed_trail(chains)
    for old, new in itertools.combinations(trail.checkpoints, 2):
        data = as_json(await trail.recorder.consistency_proof(old.id, new.id))
        for chain in range(chains):
            edited = copy.deepcopy(data)  # the root edited in the file: the signed root no longer matches
            edited["old"]["heads"][chain]["root"] = _flip(edited["old"]["heads"][chain]["root"])
            why = problem_of(edited)
            assert why is not None and f"checkpoint #{old.id}: its chain heads do not make the root" in why
            assert not rfc_consistency_holds(edited)
            lying = {**data, "old": _resigned_with_root(data["old"], chain)}  # signed by the trusted key
            why = problem_of(lying)
            assert why is not None and f"chain {chain} of checkpoint #{new.id}" in why
            assert f"does not extend chain {chain} of #{old.id}" in why
            assert not rfc_consistency_holds(lying)


async def test_a_consistency_proof_tampered_otherwise_is_refused() -> None:
    trail = await fixed_trail(3)
    first, last = trail.checkpoints[0], trail.checkpoints[-1]
    data = as_json(await trail.recorder.consistency_proof(first.id, last.id))
    flipped = copy.deepcopy(data)
    chain = next(c for c, hashes in enumerate(flipped["proofs"]) if hashes)
    flipped["proofs"][chain][0] = _flip(flipped["proofs"][chain][0])
    why = problem_of(flipped)
    assert why is not None and f"chain {chain} of checkpoint #{last.id}" in why
    assert not rfc_consistency_holds(flipped)
    swapped = {**data, "old": data["new"], "new": data["old"]}
    assert problem_of(swapped) == f"checkpoint #{last.id} is newer than #{first.id}"
    short = {**data, "proofs": data["proofs"][:-1]}
    why = problem_of(short)
    assert why is not None and "the proof covers 2" in why
    stranger = {**data, "new": Checkpoint.sign_heads(
        STRANGER, id=last.id, heads=last.heads, created_at=last.created_at, previous=None
    ).to_json()}  # fmt: skip
    why = problem_of(stranger)
    assert why is not None and "is not a trusted checkpoint key" in why
    with pytest.raises(ProofError, match="is newer than"):
        await trail.recorder.consistency_proof(last.id, first.id)
    with pytest.raises(ProofError, match="no checkpoint #99"):
        await trail.recorder.consistency_proof(first.id, 99)


# -- any trail -------------------------------------------------------------------------------------------


async def _random_trail(chains: int, batches: list[int], streams: int) -> Trail:
    trail = Trail(chains)
    names = [f"s:{i}" for i in range(streams)]
    for n in batches:
        await trail.batch(n, names)
    return trail


@settings(max_examples=40, deadline=None)
@given(
    chains=st.integers(1, 8),
    batches=st.lists(st.integers(1, 13), min_size=1, max_size=5),
    streams=st.integers(1, 12),
)
def test_any_trail_proves_every_entry_and_every_extension(
    chains: int, batches: list[int], streams: int
) -> None:
    async def check() -> None:
        trail = await _random_trail(chains, batches, streams)
        store = trail.recorder
        for rec in trail.records:
            covering = [cp for cp in trail.checkpoints if cp.id >= trail.covered_by[rec.envelope_id]]
            for checkpoint in (covering[0], covering[-1]):
                proof = await store.inclusion_proof(rec.envelope_id, checkpoint)
                assert proof.problem(TRUSTED) is None
                assert rfc_inclusion_holds(as_json(proof))
        for old, new in itertools.combinations_with_replacement(trail.checkpoints, 2):
            consistency = await store.consistency_proof(old.id, new.id)
            assert consistency.problem(TRUSTED) is None
            assert rfc_consistency_holds(as_json(consistency))

    anyio.run(check)
