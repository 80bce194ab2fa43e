"""Proofs a client checks against a signed tree head, without the database (pure, no I/O).

* :class:`InclusionProof`: this entry (its canonical header and payload hash, which give
  its leaf) is leaf ``position - 1`` of its chain's tree at the size the checkpoint signs,
  and that chain's head is leaf ``chain`` of the tree head the checkpoint signs.
* :class:`ConsistencyProof`: every chain of a later checkpoint extends the same chain of
  an earlier one (RFC 9162 consistency proofs, one per chain), so nothing the earlier one
  vouched for was changed, dropped or moved.

Both carry the signed checkpoints they are made against (version 2, :mod:`.checkpoints`)
and are checked with the checkpoint keys the verifier trusts. As JSON (files, the CLI):
``{"format": "l9.audit.inclusion.v1", ...}`` and ``{"format": "l9.audit.consistency.v1", ...}``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from memory.chain import HASH_VERSION, HEADER_FIELDS, canonical_header, leaf_hash, payload_hash
from memory.merkle import verify_inclusion

from .chains import chain_consistent, head_path_holds
from .checkpoints import Checkpoint, CheckpointError

__all__ = ["ConsistencyProof", "InclusionProof", "ProofError", "read_proof"]

INCLUSION_FORMAT = "l9.audit.inclusion.v1"
CONSISTENCY_FORMAT = "l9.audit.consistency.v1"
_SEQ = HEADER_FIELDS.index("seq")


class ProofError(ValueError):
    """A proof that cannot be made (no such entry, no signed tree head covering it) or read."""


def _hexes(values: Sequence[bytes]) -> list[str]:
    return [v.hex() for v in values]


def _unhex(values: Any, what: str) -> tuple[bytes, ...]:
    if not isinstance(values, list):
        raise ProofError(f"{what} is a list of hex hashes")
    return tuple(bytes.fromhex(v) for v in values)


def _signed_problem(checkpoint: Checkpoint, trusted_keys: Mapping[str, bytes]) -> str | None:
    if checkpoint.version != 2:
        return f"checkpoint #{checkpoint.id} is version {checkpoint.version}: it signs no tree head"
    return checkpoint.signature_problem(trusted_keys)


def _check_header(data: Mapping[str, Any], header: tuple[Any, ...]) -> None:
    """The header's seq is an integer, and the ``envelope_id`` and ``seq`` beside it (what a
    reader of the file sees first) are the header's: ProofError otherwise."""
    seq = header[_SEQ]
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise ProofError(f"malformed inclusion proof: the header's seq is {seq!r}, not an integer")
    for name in ("envelope_id", "seq"):
        value = header[HEADER_FIELDS.index(name)]
        if name in data and data[name] != value:
            raise ProofError(f"malformed inclusion proof: {name} is {data[name]!r}, the header's {value!r}")


@dataclass(frozen=True)
class InclusionProof:
    """Entry ``seq`` of chain ``chain`` under ``checkpoint``'s tree head (see the module doc).

    ``header`` is the entry's canonical header (:data:`memory.chain.HEADER_FIELDS` order);
    ``payload`` the stored ``(env, sig, key_id)`` when not redacted, so a reader can check
    the envelope bytes themselves against ``payload_hash``."""

    checkpoint: Checkpoint
    chain: int
    header: tuple[Any, ...]
    payload_hash: bytes
    path: tuple[bytes, ...]
    head_path: tuple[bytes, ...]
    payload: tuple[bytes, str | None, str | None] | None = None

    @property
    def seq(self) -> int:
        return int(self.header[_SEQ])

    @property
    def envelope_id(self) -> str:
        return str(self.header[HEADER_FIELDS.index("envelope_id")])

    @property
    def leaf(self) -> bytes:
        return leaf_hash(canonical_header(self.header), self.payload_hash)

    def problem(self, trusted_keys: Mapping[str, bytes]) -> str | None:
        """Why this proof does not hold, or None when it does (never raises)."""
        cp = self.checkpoint
        why = _signed_problem(cp, trusted_keys)
        if why is not None:
            return why
        layout = cp.layout
        if not 0 <= self.chain < layout.chains:
            return f"chain {self.chain} is not one of the checkpoint's {layout.chains}"
        head = cp.heads[self.chain]
        if self.seq < 1 or layout.chain_at(self.seq) != self.chain:
            return f"seq {self.seq} does not belong to chain {self.chain} of {layout.chains}"
        index = layout.position(self.seq) - 1
        if index >= head.size:
            return (
                f"seq {self.seq} lies beyond chain {self.chain}'s {head.size} entries "
                f"under checkpoint #{cp.id}"
            )
        try:
            leaf = self.leaf
        except (ValueError, TypeError) as exc:
            return f"the entry's header cannot be hashed: {exc}"
        if self.payload is not None and payload_hash(*self.payload) != self.payload_hash:
            return "the envelope bytes carried do not match the entry's payload hash"
        if not verify_inclusion(leaf, index, head.size, self.path, head.root):
            return f"the entry's path does not lead to chain {self.chain}'s root under checkpoint #{cp.id}"
        if not head_path_holds(layout.chains, head, self.head_path, cp.chain_hash):
            return f"chain {self.chain}'s head is not in the tree head of checkpoint #{cp.id}"
        return None

    def to_json(self) -> dict[str, Any]:
        header = dict(zip(HEADER_FIELDS, self.header, strict=True))
        data: dict[str, Any] = {
            "format": INCLUSION_FORMAT,
            "envelope_id": self.envelope_id,
            "seq": self.seq,
            "chain": self.chain,
            "header": header,
            "payload_hash": self.payload_hash.hex(),
            "path": _hexes(self.path),
            "head_path": _hexes(self.head_path),
            "checkpoint": self.checkpoint.to_json(),
        }
        if self.payload is not None:
            env, sig, key_id = self.payload
            data["payload"] = {"env": base64.b64encode(env).decode(), "sig": sig, "key_id": key_id}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InclusionProof:
        if data.get("format") != INCLUSION_FORMAT:
            raise ProofError(f"not an inclusion proof: format is {data.get('format')!r}")
        try:
            header_data = data["header"]
            header = tuple(header_data[name] for name in HEADER_FIELDS)
            if header[0] != HASH_VERSION:
                raise ProofError(f"hash version {header[0]!r} (this code knows {HASH_VERSION})")
            _check_header(data, header)
            payload = data.get("payload")
            carried = None
            if payload is not None:
                carried = (base64.b64decode(payload["env"], validate=True), payload["sig"], payload["key_id"])
            return cls(
                checkpoint=Checkpoint.from_json(data["checkpoint"]),
                chain=int(data["chain"]),
                header=header,
                payload_hash=bytes.fromhex(data["payload_hash"]),
                path=_unhex(data["path"], "path"),
                head_path=_unhex(data["head_path"], "head_path"),
                payload=carried,
            )
        except (KeyError, TypeError, ValueError, CheckpointError) as exc:
            if isinstance(exc, ProofError):
                raise
            raise ProofError(f"malformed inclusion proof: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class ConsistencyProof:
    """Checkpoint ``new`` extends checkpoint ``old``: ``proofs[c]`` is chain ``c``'s RFC 9162
    consistency proof from its size under ``old`` to its size under ``new``."""

    old: Checkpoint
    new: Checkpoint
    proofs: tuple[tuple[bytes, ...], ...]

    def problem(self, trusted_keys: Mapping[str, bytes]) -> str | None:
        """Why ``new`` is not shown to extend ``old``, or None (never raises)."""
        for cp in (self.old, self.new):
            why = _signed_problem(cp, trusted_keys)
            if why is not None:
                return why
        if self.old.id > self.new.id:
            return f"checkpoint #{self.old.id} is newer than #{self.new.id}"
        if len(self.old.heads) != len(self.new.heads) or len(self.proofs) != len(self.new.heads):
            return (
                f"checkpoint #{self.old.id} signs {len(self.old.heads)} chain(s), #{self.new.id} "
                f"{len(self.new.heads)}, and the proof covers {len(self.proofs)}"
            )
        for old, new, proof in zip(self.old.heads, self.new.heads, self.proofs, strict=True):
            if not chain_consistent(old, new, proof):
                return (
                    f"chain {old.chain} of checkpoint #{self.new.id} ({new.size} entries) does not extend "
                    f"chain {old.chain} of #{self.old.id} ({old.size} entries)"
                )
            if old.size == new.size and old.chain_hash != new.chain_hash:
                return f"chain {old.chain} has the same size under both checkpoints but another chain hash"
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CONSISTENCY_FORMAT,
            "old": self.old.to_json(),
            "new": self.new.to_json(),
            "proofs": [_hexes(p) for p in self.proofs],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ConsistencyProof:
        if data.get("format") != CONSISTENCY_FORMAT:
            raise ProofError(f"not a consistency proof: format is {data.get('format')!r}")
        try:
            proofs = data["proofs"]
            if not isinstance(proofs, list):
                raise ProofError("proofs is a list (one per chain)")
            return cls(
                old=Checkpoint.from_json(data["old"]),
                new=Checkpoint.from_json(data["new"]),
                proofs=tuple(_unhex(p, f"proofs[{i}]") for i, p in enumerate(proofs)),
            )
        except (KeyError, TypeError, ValueError, CheckpointError) as exc:
            if isinstance(exc, ProofError):
                raise
            raise ProofError(f"malformed consistency proof: {type(exc).__name__}: {exc}") from None


def read_proof(data: Mapping[str, Any]) -> InclusionProof | ConsistencyProof:
    """The proof a JSON object holds, by its ``format``."""
    fmt = data.get("format")
    if fmt == INCLUSION_FORMAT:
        return InclusionProof.from_json(data)
    if fmt == CONSISTENCY_FORMAT:
        return ConsistencyProof.from_json(data)
    raise ProofError(
        f"not a proof: format is {fmt!r}, expected {INCLUSION_FORMAT!r} or {CONSISTENCY_FORMAT!r}"
    )
