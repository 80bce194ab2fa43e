"""Ed25519 per-agent signatures: batches signed once, each envelope checkable alone, and a
holder of public keys only cannot sign as anyone."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from envelope import (
    ED25519_PREFIX,
    Ed25519Signer,
    EnvelopeError,
    ErrorReason,
    PacketEnvelope,
    Signer,
    Verifier,
    agent_of_key,
    batch_entry_args,
    decode_envelope,
    encode,
    entry_args,
    to_wire_map,
)
from envelope._merkle import (
    ancestors,
    inclusion_paths,
    known_nodes,
    leaf_hash,
    node_hash,
    root_from_path,
    tree_root,
)

TYPE = "l9.demo.ping.v1"
SOURCE = "agent://demo/pinger"
PLANNER = Ed25519Signer.generate("planner.k1")
PUBLIC = {PLANNER.key_id: PLANNER.public_bytes}
SIG, HASH = base64.b64encode(bytes(64)), base64.b64encode(bytes(32))


def make(n: int = 1) -> PacketEnvelope:
    return PacketEnvelope.new(type=TYPE, source=SOURCE, data={"n": n})


def entry_of(args: list[str | bytes]) -> dict[bytes, bytes]:
    """A stream entry as redis-py returns it: bytes keys and values."""
    pairs = [a.encode() if isinstance(a, str) else a for a in args]
    return dict(zip(pairs[::2], pairs[1::2], strict=True))


def refused(entry: dict[bytes, bytes], verifier: Verifier) -> str:
    with pytest.raises(EnvelopeError) as caught:
        decode_envelope(entry, verifier)
    assert caught.value.reason is ErrorReason.BAD_SIGNATURE
    return caught.value.detail


# -- RFC 9162 Merkle trees ------------------------------------------------------------------------
def mth(leaves: list[bytes]) -> bytes:
    """MTH of RFC 9162 section 2.1.1, recursively, over leaf hashes."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)  # the largest power of two < n
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def rfc_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 section 2.1.3.1."""
    if len(leaves) == 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m < k:
        return [*rfc_path(m, leaves[:k]), mth(leaves[k:])]
    return [*rfc_path(m - k, leaves[k:]), mth(leaves[:k])]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 33, 100])
def test_trees_and_paths_are_those_of_rfc_9162(n: int) -> None:
    leaves = [leaf_hash(str(i).encode()) for i in range(n)]
    root, paths = inclusion_paths(leaves)
    assert root == tree_root(leaves) == mth(leaves)
    for m in range(n):
        assert paths[m] == rfc_path(m, leaves)
        assert root_from_path(leaves[m], m, n, b"".join(paths[m])) == root


@given(st.integers(min_value=2, max_value=64), st.data())
def test_a_path_proves_its_leaf_at_its_index_only(n: int, data: st.DataObject) -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(n)]
    root, paths = inclusion_paths(leaves)
    m = data.draw(st.integers(0, n - 1))
    other = data.draw(st.integers(0, n - 1).filter(lambda i: i != m))
    path = b"".join(paths[m])
    assert root_from_path(leaves[other], m, n, path) != root  # another leaf
    assert root_from_path(leaves[m], other, n, path) != root  # another index
    assert root_from_path(leaves[m], m, n, path[:-32]) != root  # a level short
    assert root_from_path(leaves[m], m, n, path + leaves[0]) != root  # a level too many
    assert root_from_path(leaves[m], n, n, path) is None  # index out of the tree
    assert root_from_path(leaves[m], m, n, path[:-1]) is None  # not whole hashes


def test_an_empty_tree_has_no_root() -> None:
    with pytest.raises(ValueError, match="at least one leaf"):
        tree_root([])


# -- signing and verifying ------------------------------------------------------------------------
def test_a_single_envelope_round_trips_and_names_its_key() -> None:
    envelope = make()
    entry = entry_of(entry_args(envelope, PLANNER))
    assert entry[b"sig"].startswith(ED25519_PREFIX.encode())
    decoded = decode_envelope(entry, Verifier({}, public_keys=PUBLIC))
    assert decoded.key_id == "planner.k1"
    assert decoded.signature is not None and decoded.signature.startswith(ED25519_PREFIX)
    Verifier({}, public_keys=PUBLIC).verify_envelope(decoded)  # after the wire: still checkable


def test_each_envelope_of_a_batch_is_checkable_alone() -> None:
    envelopes = [make(i) for i in range(37)]
    entries = [entry_of(args) for args in batch_entry_args(envelopes, PLANNER)]
    signatures = {e[b"sig"].split(b":")[1] for e in entries}
    assert len(signatures) == 1  # one signature for the whole batch
    for i, entry in enumerate(entries):
        fresh = Verifier({}, public_keys=PUBLIC)  # has seen no other entry of the batch
        decoded = decode_envelope(entry, fresh)
        assert decoded.data == {"n": i}
        fresh.verify_envelope(decoded)  # as the trail stores it: the proof travels with it


class CountingKey:
    """A public key that counts the signatures it checked."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self.key, self.calls = key, 0

    def verify(self, signature: bytes, data: bytes) -> None:
        self.calls += 1
        self.key.verify(signature, data)


def test_a_verifier_checks_a_batch_signature_once_for_all_its_entries() -> None:
    verifier = Verifier({}, public_keys=PUBLIC)
    counting = CountingKey(verifier._public["planner.k1"])
    verifier._public["planner.k1"] = counting  # type: ignore[assignment]
    for batch in range(3):
        envelopes = [make(i) for i in range(50)]
        for args in batch_entry_args(envelopes, PLANNER):
            decode_envelope(entry_of(args), verifier)
        assert counting.calls == batch + 1


def test_an_envelope_that_already_carries_a_signature_keeps_it_in_a_batch() -> None:
    forwarded = decode_envelope(entry_of(entry_args(make(0), PLANNER)), Verifier({}, public_keys=PUBLIC))
    other = Ed25519Signer.generate("generator.k1")
    entries = [entry_of(a) for a in batch_entry_args([forwarded, make(1), make(2)], other)]
    verifier = Verifier({}, public_keys={**PUBLIC, other.key_id: other.public_bytes})
    assert [decode_envelope(e, verifier).key_id for e in entries] == ["planner.k1", *["generator.k1"] * 2]


@pytest.mark.parametrize("change", ["content", "index", "path", "signature", "size"])
def test_a_tampered_batch_entry_is_refused(change: str) -> None:
    entries = [entry_of(a) for a in batch_entry_args([make(i) for i in range(6)], PLANNER)]
    entry = dict(entries[2])
    head, sig, position, path = entry[b"sig"].split(b":")
    if change == "content":
        entry[b"env"] = entries[3][b"env"]
        entry[b"id"] = entries[3][b"id"]
    elif change == "index":
        position = b"3/6"
    elif change == "path":
        raw = base64.b64decode(path)
        path = base64.b64encode(raw[32:] + raw[:32])
    elif change == "signature":
        flipped = bytearray(base64.b64decode(sig))
        flipped[0] ^= 1
        sig = base64.b64encode(bytes(flipped))
    else:
        position = b"2/7"
    entry[b"sig"] = b":".join((head, sig, position, path))
    assert "signature does not match the content" in refused(entry, Verifier({}, public_keys=PUBLIC))


@pytest.mark.parametrize(
    "signature",
    [
        b"ed25519:",
        b"ed25519:zz",
        b"ed25519:" + SIG[:-4],
        b"ed25519:" + SIG + b":1/2",
        b"ed25519:" + SIG + b":x/2:" + HASH,
        b"ed25519:" + SIG + b":2/2:" + HASH,
        b"ed25519:" + SIG + b":0/2:" + base64.b64encode(bytes(31)),
        b"ed25519:" + SIG + b":0/2:" + base64.b64encode(bytes(32 * 33)),
        b"ed25519:" + SIG + b":0/2:" + HASH[:-1] + b"!",
    ],
)
def test_a_malformed_ed25519_signature_is_refused_by_name(signature: bytes) -> None:
    entry = entry_of(entry_args(make(), PLANNER)) | {b"sig": signature}
    assert "malformed Ed25519 signature" in refused(entry, Verifier({}, public_keys=PUBLIC))


# -- what a holder of public keys can do ----------------------------------------------------------
def test_a_consumer_holding_only_public_keys_cannot_sign_as_an_agent() -> None:
    """Everything a consumer knows (the public keys, the envelopes it read) does not let it
    produce an envelope another consumer accepts as the planner's."""
    other_consumer = Verifier({}, public_keys=PUBLIC)
    genuine = entry_of(entry_args(make(1), PLANNER))
    forged = make(2)
    # 1. an HMAC under the planner's key id, keyed with what it has: the public key
    blob = entry_of(entry_args(forged, Signer({"planner.k1": PLANNER.public_bytes}, "planner.k1")))
    assert "is an Ed25519 key, but the signature is not an Ed25519 one" in refused(blob, other_consumer)
    # 2. an Ed25519 signature of its own key, under the planner's key id
    mallory = Ed25519Signer.generate("planner.k1")
    assert "does not match" in refused(entry_of(entry_args(forged, mallory)), other_consumer)
    # 3. the planner's genuine signature moved onto other content
    moved = entry_of(entry_args(forged, mallory)) | {b"sig": genuine[b"sig"]}
    assert "does not match" in refused(moved, other_consumer)
    # 4. the planner's batch signature with a made-up path for other content
    batch = [entry_of(a) for a in batch_entry_args([make(3), make(4)], PLANNER)]
    head, sig, _, _ = batch[0][b"sig"].split(b":")
    fake_path = base64.b64encode(leaf_hash(batch[0][b"env"]))
    spliced = entry_of(entry_args(forged, mallory)) | {b"sig": b":".join((head, sig, b"1/2", fake_path))}
    assert "does not match" in refused(spliced, other_consumer)
    decode_envelope(genuine, other_consumer)  # and the genuine one passes


def test_an_hmac_signature_under_an_unknown_key_is_refused_in_ed25519_mode() -> None:
    shared = {"dev": b"a shared secret"}
    entry = entry_of(entry_args(make(), Signer(shared, "dev")))
    assert "unknown signing key id 'dev'" in refused(entry, Verifier({}, public_keys=PUBLIC))


def test_both_schemes_verify_side_by_side_with_distinct_key_ids() -> None:
    verifier = Verifier({"dev": b"secret"}, public_keys=PUBLIC)
    decode_envelope(entry_of(entry_args(make(), Signer({"dev": b"secret"}, "dev"))), verifier)
    decode_envelope(entry_of(entry_args(make(), PLANNER)), verifier)
    with pytest.raises(ValueError, match="both an HMAC key and an Ed25519 public key"):
        Verifier({"planner.k1": b"x"}, public_keys=PUBLIC)
    with pytest.raises(ValueError, match="not a raw Ed25519 public key"):
        Verifier({}, public_keys={"planner.k1": b"short"})


def test_hmac_batches_sign_each_entry() -> None:
    signer = Signer({"dev": b"secret"}, "dev")
    entries = [entry_of(a) for a in batch_entry_args([make(1), make(2)], signer)]
    for entry in entries:
        expected = hmac.new(b"secret", entry[b"env"], hashlib.sha256).hexdigest().encode()
        assert entry[b"sig"] == expected


# -- key files ------------------------------------------------------------------------------------
def test_a_key_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "planner.json"
    path.write_text(PLANNER.key_file_text())
    again = Ed25519Signer.from_key_file(path)
    assert (again.key_id, again.public_hex) == (PLANNER.key_id, PLANNER.public_hex)
    entry = entry_of(entry_args(make(), again))
    decode_envelope(entry, Verifier({}, public_keys=PUBLIC))


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        ("not json", "not JSON"),
        ("[]", "expected"),
        (json.dumps({"key_id": "planner.k1", "seed": "abc"}), "seed is not 32 bytes of hex"),
        (json.dumps({"key_id": "planner.k1", "seed": "00" * 31}), "seed is not 32 bytes of hex"),
        (json.dumps({"key_id": "plan ner", "seed": "00" * 32}), "is not <agent> or <agent>.<version>"),
    ],
)
def test_a_bad_key_file_is_named(tmp_path: Path, content: str, detail: str) -> None:
    path = tmp_path / "key.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=r"signing key file .*key\.json") as caught:
        Ed25519Signer.from_key_file(path)
    assert detail in str(caught.value)


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read it"):
        Ed25519Signer.from_key_file(tmp_path / "nope.json")


def test_the_agent_of_a_key_is_the_id_up_to_its_first_dot() -> None:
    assert agent_of_key("planner.k20261207") == "planner"
    assert agent_of_key("dev") == "dev"


def test_encode_decode_with_a_wire_map_signer() -> None:
    fields: dict[str, Any] = to_wire_map(make())
    PLANNER.sign(fields)
    Verifier({}, public_keys=PUBLIC).verify(fields)
    assert decode_envelope(encode(make(), PLANNER), Verifier({}, public_keys=PUBLIC)).key_id == "planner.k1"


def test_a_warm_verifier_still_refuses_content_its_batch_did_not_sign() -> None:
    verifier = Verifier({}, public_keys=PUBLIC)
    entries = [entry_of(a) for a in batch_entry_args([make(i) for i in range(8)], PLANNER)]
    for entry in entries:
        decode_envelope(entry, verifier)  # the whole batch is proven now
    mallory = Ed25519Signer.generate("planner.k1")
    forged = entry_of(entry_args(make(99), mallory)) | {b"sig": entries[3][b"sig"]}
    assert "does not match" in refused(forged, verifier)
    other = dict(entries[3]) | {b"env": entry_of(entry_args(make(99), PLANNER))[b"env"]}
    assert "does not match" in refused(other, verifier)


def test_full_proofs_refuse_a_damaged_proof_even_after_its_batch_was_met() -> None:
    """The auditor (full_proofs) stores only entries whose own proof holds; a consumer accepts
    a known leaf by its content and the batch's signature."""
    entries = [entry_of(a) for a in batch_entry_args([make(i) for i in range(8)], PLANNER)]
    auditor, consumer = Verifier({}, public_keys=PUBLIC, full_proofs=True), Verifier({}, public_keys=PUBLIC)
    for entry in entries:
        decode_envelope(entry, auditor)
        decode_envelope(entry, consumer)
    head, sig, _, path = entries[5][b"sig"].split(b":")
    damaged = entries[5] | {b"sig": b":".join((head, sig, b"4/8", path))}
    assert "does not match" in refused(damaged, auditor)
    assert decode_envelope(damaged, consumer).data == {"n": 5}


# -- entries read together (Verifier.prepare) ----------------------------------------------------
def read_of(entries: list[dict[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(e[b"env"], e[b"sig"]) for e in entries]


class CountingParse:
    """Counts the inclusion paths a verifier decodes (``envelope._signing._parse_ed25519``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import envelope._signing as signing

        self.calls, real = 0, signing._parse_ed25519

        def counted(signature: bytes) -> Any:
            self.calls += 1
            return real(signature)

        monkeypatch.setattr(signing, "_parse_ed25519", counted)


@pytest.mark.parametrize(("size", "start", "read"), [(500, 0, 128), (500, 100, 128), (37, 0, 37), (9, 3, 5)])
def test_entries_read_together_are_proven_with_a_few_paths_and_one_signature_check(
    monkeypatch: pytest.MonkeyPatch, size: int, start: int, read: int
) -> None:
    entries = [entry_of(a) for a in batch_entry_args([make(i) for i in range(size)], PLANNER)]
    verifier = Verifier({}, public_keys=PUBLIC)
    counting = CountingKey(verifier._public["planner.k1"])
    verifier._public["planner.k1"] = counting  # type: ignore[assignment]
    parses = CountingParse(monkeypatch)
    chunk = entries[start : start + read]
    verifier.prepare(read_of(chunk))
    assert [decode_envelope(e, verifier).data for e in chunk] == [
        {"n": i} for i in range(start, start + read)
    ]
    assert counting.calls == 1
    # one path per run of neighbours under one node (at most two a level), not one every other entry
    assert parses.calls <= 2 * max(1, (size - 1).bit_length())


def test_a_damaged_entry_read_with_good_ones_is_refused_and_theirs_are_not() -> None:
    entries = [entry_of(a) for a in batch_entry_args([make(i) for i in range(16)], PLANNER)]
    other = entry_of(entry_args(make(99), PLANNER))
    damaged = dict(entries[5]) | {b"env": other[b"env"], b"id": other[b"id"]}
    read = [*entries[:5], damaged, *entries[6:]]
    verifier = Verifier({}, public_keys=PUBLIC)
    verifier.prepare(read_of(read))
    for i, entry in enumerate(read):
        if i == 5:
            assert "does not match" in refused(entry, verifier)
        else:
            assert decode_envelope(entry, verifier).data == {"n": i}


def test_a_batch_prepared_under_one_key_is_not_taken_for_another_keys() -> None:
    """Entries signed with another key under the planner's key id: what prepare found is trusted
    only once the root's signature holds under the key the entries name."""
    mallory = Ed25519Signer.generate("planner.k1")
    entries = [entry_of(a) for a in batch_entry_args([make(i) for i in range(8)], mallory)]
    verifier = Verifier({}, public_keys=PUBLIC)
    verifier.prepare(read_of(entries))
    for entry in entries:
        assert "does not match" in refused(entry, verifier)


def test_a_signature_copied_onto_other_content_is_refused_after_prepare() -> None:
    entries = [entry_of(a) for a in batch_entry_args([make(i) for i in range(8)], PLANNER)]
    forged = dict(entries[3]) | {b"env": entry_of(entry_args(make(99), PLANNER))[b"env"]}
    verifier = Verifier({}, public_keys=PUBLIC)
    verifier.prepare(read_of([*entries, forged]))
    assert [decode_envelope(e, verifier).data["n"] for e in entries] == list(range(8))
    assert "does not match" in refused(forged, verifier)


def test_full_proofs_prepare_nothing() -> None:
    entries = [entry_of(a) for a in batch_entry_args([make(i) for i in range(8)], PLANNER)]
    auditor = Verifier({}, public_keys=PUBLIC, full_proofs=True)
    auditor.prepare(read_of(entries))
    assert not auditor._prepared and not auditor.checks_ed25519
    head, sig, _, path = entries[5][b"sig"].split(b":")
    assert "does not match" in refused(entries[5] | {b"sig": b":".join((head, sig, b"4/8", path))}, auditor)


@given(st.integers(1, 70), st.data())
def test_known_nodes_are_the_trees_and_the_leaves_under_them_all_known(n: int, data: st.DataObject) -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    some = {i: leaves[i] for i in data.draw(st.sets(st.integers(0, n - 1)))}
    levels, whole = known_nodes(n, some), _tree_levels(leaves)
    for level, nodes in enumerate(levels):
        for position, node in nodes.items():
            assert whole[level][position] == node
            assert all(i in some for i in range(position << level, min(n, (position + 1) << level)))
    root, paths = inclusion_paths(leaves)
    for i in some:
        chain = ancestors(leaves[i], i, n, b"".join(paths[i]))
        assert chain is not None and chain[0] == leaves[i] and chain[-1] == root
        assert all(whole[level][i >> level] in chain for level in range(len(whole)))


def _tree_levels(leaves: list[bytes]) -> list[list[bytes]]:
    levels = [leaves]
    while len(levels[-1]) > 1:
        below = levels[-1]
        up = [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
        levels.append(up + ([below[-1]] if len(below) % 2 else []))
    return levels
