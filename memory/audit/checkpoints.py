"""Signed checkpoints of the chain head (Ed25519), kept in the trail and as files.

A checkpoint says "the trail's chain hash at ``seq`` is ``chain_hash``", is signed
with an Ed25519 key that the trail's store never sees, and links the previous
checkpoint by id and digest. Files written outside the store let verification
catch a superuser who rewrote the trail and its checkpoint table alike.

Signed message (version 1): msgpack ``["l9.audit.checkpoint", 1, id, seq,
chain_hash, created_at_us, prev_id, prev_digest, key_id]``; ``digest`` =
SHA-256 of that message.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from memory.chain import from_micros, to_micros

FORMAT = "l9.audit.checkpoint.v1"
_MESSAGE_TAG = "l9.audit.checkpoint"
_MESSAGE_VERSION = 1
_FILE_PREFIX = "checkpoint-"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as one."""


def key_fingerprint(public_key: bytes) -> str:
    return "ed25519:" + hashlib.sha256(public_key).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key and the id checkpoints name it by."""

    key_id: str
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls, key_id: str | None = None) -> SigningKey:
        key = Ed25519PrivateKey.generate()
        return cls(key_id or key_fingerprint(_public_bytes(key.public_key())), key)

    @classmethod
    def from_private_bytes(cls, raw: bytes, key_id: str | None = None) -> SigningKey:
        """From the 32-byte seed; the key id defaults to the public key's fingerprint."""
        key = Ed25519PrivateKey.from_private_bytes(raw)
        return cls(key_id or key_fingerprint(_public_bytes(key.public_key())), key)

    @property
    def private_bytes(self) -> bytes:
        return self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    @property
    def public_bytes(self) -> bytes:
        return _public_bytes(self.private_key.public_key())

    def trusted(self) -> dict[str, bytes]:
        """``{key_id: public key}``, as :meth:`Checkpoint.signature_problem` wants it."""
        return {self.key_id: self.public_bytes}


def _public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    id: int
    seq: int
    chain_hash: bytes
    created_at: datetime
    prev_id: int | None
    prev_digest: bytes | None
    key_id: str
    digest: bytes
    signature: bytes

    @staticmethod
    def message_of(
        id: int,
        seq: int,
        chain_hash: bytes,
        created_at: datetime,
        prev_id: int | None,
        prev_digest: bytes | None,
        key_id: str,
    ) -> bytes:
        values = [_MESSAGE_TAG, _MESSAGE_VERSION, id, seq, chain_hash, to_micros(created_at)]
        packed: bytes = msgpack.packb([*values, prev_id, prev_digest, key_id], use_bin_type=True)
        return packed

    @classmethod
    def sign(
        cls,
        key: SigningKey,
        *,
        id: int,
        seq: int,
        chain_hash: bytes,
        created_at: datetime,
        previous: Checkpoint | None,
    ) -> Checkpoint:
        prev_id = previous.id if previous else None
        prev_digest = previous.digest if previous else None
        message = cls.message_of(id, seq, chain_hash, created_at, prev_id, prev_digest, key.key_id)
        return cls(
            id=id,
            seq=seq,
            chain_hash=chain_hash,
            created_at=created_at,
            prev_id=prev_id,
            prev_digest=prev_digest,
            key_id=key.key_id,
            digest=hashlib.sha256(message).digest(),
            signature=key.private_key.sign(message),
        )

    def message(self) -> bytes:
        return self.message_of(
            self.id, self.seq, self.chain_hash, self.created_at, self.prev_id, self.prev_digest, self.key_id
        )

    def signature_problem(self, trusted_keys: Mapping[str, bytes]) -> str | None:
        """Why this checkpoint cannot be trusted, or None when its digest and signature hold."""
        message = self.message()
        if hashlib.sha256(message).digest() != self.digest:
            return f"checkpoint #{self.id}: its digest does not match its fields"
        public = trusted_keys.get(self.key_id)
        if public is None:
            return f"checkpoint #{self.id}: key id {self.key_id!r} is not a trusted checkpoint key"
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(self.signature, message)
        except (InvalidSignature, ValueError):
            return f"checkpoint #{self.id}: the Ed25519 signature does not verify with key {self.key_id!r}"
        return None

    def link_problem(self, previous: Checkpoint | None) -> str | None:
        """Why this checkpoint does not follow ``previous`` (None: the first one)."""
        want_id = previous.id + 1 if previous else 1
        if self.id != want_id:
            return f"checkpoint #{self.id} follows #{want_id - 1}: checkpoint #{want_id} is missing"
        if previous is None:
            return None if self.prev_id is None else f"checkpoint #1 links a previous #{self.prev_id}"
        if self.prev_id != previous.id or self.prev_digest != previous.digest:
            return f"checkpoint #{self.id} does not link checkpoint #{previous.id} (digest differs)"
        if self.seq < previous.seq:
            return f"checkpoint #{self.id} (seq {self.seq}) is behind #{previous.id} (seq {previous.seq})"
        return None

    # -- files ---------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "id": self.id,
            "seq": self.seq,
            "chain_hash": self.chain_hash.hex(),
            "created_at": self.created_at.isoformat(),
            "prev_id": self.prev_id,
            "prev_digest": self.prev_digest.hex() if self.prev_digest is not None else None,
            "key_id": self.key_id,
            "digest": self.digest.hex(),
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Checkpoint:
        if data.get("format") != FORMAT:
            raise CheckpointError(f"not a checkpoint: format is {data.get('format')!r}, expected {FORMAT!r}")
        try:
            prev_digest = data["prev_digest"]
            created_at = datetime.fromisoformat(data["created_at"])
            return cls(
                id=int(data["id"]),
                seq=int(data["seq"]),
                chain_hash=bytes.fromhex(data["chain_hash"]),
                created_at=from_micros(to_micros(created_at)),
                prev_id=None if data["prev_id"] is None else int(data["prev_id"]),
                prev_digest=None if prev_digest is None else bytes.fromhex(prev_digest),
                key_id=str(data["key_id"]),
                digest=bytes.fromhex(data["digest"]),
                signature=bytes.fromhex(data["signature"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"malformed checkpoint: {type(exc).__name__}: {exc}") from None

    def file_name(self) -> str:
        return f"{_FILE_PREFIX}{self.id:010d}.json"

    def write(self, directory: Path) -> Path:
        """Write ``directory/checkpoint-NNNNNNNNNN.json`` atomically; returns the path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.file_name()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as fh:
            json.dump(self.to_json(), fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path


def read_checkpoint(path: Path) -> Checkpoint:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read a checkpoint: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: a checkpoint file holds a JSON object")
    try:
        return Checkpoint.from_json(data)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def read_checkpoint_files(directory: Path) -> list[tuple[Path, Checkpoint]]:
    """Every checkpoint file of ``directory`` with what it holds, by the id it holds (none when
    the directory does not exist). A file's name is not trusted: what it holds decides."""
    if not directory.is_dir():
        return []
    found = [(p, read_checkpoint(p)) for p in sorted(directory.glob(f"{_FILE_PREFIX}*.json"))]
    return sorted(found, key=lambda pc: pc[1].id)


def read_checkpoint_dir(directory: Path) -> list[Checkpoint]:
    """The checkpoints of ``directory``'s files, by id (none when it does not exist)."""
    return [cp for _, cp in read_checkpoint_files(directory)]
