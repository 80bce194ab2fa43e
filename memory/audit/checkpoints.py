"""Signed checkpoints of the trail (Ed25519), kept in the trail and as files.

A checkpoint is signed with an Ed25519 key that the trail's store never sees, and links
the previous checkpoint by id and digest. Files written outside the store let
verification catch a superuser who rewrote the trail and its checkpoint table alike.

Version 2 (what :meth:`Checkpoint.sign_heads` makes) signs the tree head of a trail in
chains (:mod:`.chains`): the RFC 9162 root over every chain's head (its size, chain hash
and Merkle root), which commits to every entry of every chain. The heads travel with it
(``heads``); ``seq`` is the highest seq they reach and ``chain_hash`` the root. Message:
msgpack ``["l9.audit.checkpoint", 2, id, seq, root, created_at_us, prev_id, prev_digest,
key_id, number of chains]``.

Version 1 (a trail of one chain, before chains): "the trail's chain hash at ``seq`` is
``chain_hash``". Message: msgpack ``["l9.audit.checkpoint", 1, id, seq, chain_hash,
created_at_us, prev_id, prev_digest, key_id]``. Still read and verified.

``digest`` = SHA-256 of the message.
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

from .chains import ChainHead, Layout, tree_head_root

FORMAT = "l9.audit.checkpoint.v1"
FORMAT_V2 = "l9.audit.checkpoint.v2"
_FORMATS = {FORMAT: 1, FORMAT_V2: 2}
_MESSAGE_TAG = "l9.audit.checkpoint"
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
    #: 1: ``(seq, chain_hash)`` of a one-chain trail; 2: the tree head over :attr:`heads`.
    version: int = 1
    #: Version 2: every chain's head, chain ``c`` at index ``c`` (empty for version 1).
    heads: tuple[ChainHead, ...] = ()

    @staticmethod
    def message_of(
        id: int,
        seq: int,
        chain_hash: bytes,
        created_at: datetime,
        prev_id: int | None,
        prev_digest: bytes | None,
        key_id: str,
        version: int = 1,
        chains: int = 1,
    ) -> bytes:
        values = [_MESSAGE_TAG, version, id, seq, chain_hash, to_micros(created_at)]
        values += [prev_id, prev_digest, key_id]
        if version == 2:
            values.append(chains)
        packed: bytes = msgpack.packb(values, use_bin_type=True)
        return packed

    @property
    def root(self) -> bytes | None:
        """The tree head's root (version 2), None for a version 1 checkpoint."""
        return self.chain_hash if self.version == 2 else None

    @property
    def layout(self) -> Layout:
        """The chain layout of the trail this checkpoint signs (one chain for version 1)."""
        return Layout(len(self.heads)) if self.version == 2 else Layout(1)

    def chain_heads(self) -> dict[int, tuple[int, bytes]]:
        """chain -> (seq of its last entry, its chain hash) for each chain this checkpoint
        vouches for (the one chain at ``seq`` for version 1; empty chains left out)."""
        if self.version == 1:
            return {0: (self.seq, self.chain_hash)} if self.seq > 0 else {}
        layout = self.layout
        return {h.chain: (h.seq(layout), h.chain_hash) for h in self.heads if h.size > 0}

    def sizes(self) -> dict[int, int]:
        """chain -> how many entries this checkpoint vouches for in it."""
        if self.version == 1:
            return {0: self.seq}
        return {h.chain: h.size for h in self.heads}

    def covers(self, seq: int) -> bool:
        """Whether entry ``seq`` (>= 1) is among those this checkpoint vouches for."""
        if self.version == 1:
            return seq <= self.seq
        layout = self.layout
        return layout.position(seq) <= self.heads[layout.chain_at(seq)].size

    def head_point(self) -> tuple[int, bytes]:
        """The newest entry this checkpoint vouches for: its seq and chain hash (0 and the
        checkpoint's chain hash when it vouches for none)."""
        if self.version == 1 or self.seq == 0:
            return self.seq, self.chain_hash
        return self.seq, self.heads[self.layout.chain_at(self.seq)].chain_hash

    @classmethod
    def sign_heads(
        cls,
        key: SigningKey,
        *,
        id: int,
        heads: tuple[ChainHead, ...],
        created_at: datetime,
        previous: Checkpoint | None,
    ) -> Checkpoint:
        """A version 2 checkpoint: the tree head over ``heads`` (chain ``c`` at index ``c``)."""
        layout = Layout(len(heads))
        seq = max((h.seq(layout) for h in heads), default=0)
        return cls._signed(key, id, seq, tree_head_root(heads), created_at, previous, 2, heads)

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
        """A version 1 checkpoint: the one chain's ``chain_hash`` at ``seq``."""
        return cls._signed(key, id, seq, chain_hash, created_at, previous, 1, ())

    @classmethod
    def _signed(
        cls,
        key: SigningKey,
        id: int,
        seq: int,
        chain_hash: bytes,
        created_at: datetime,
        previous: Checkpoint | None,
        version: int,
        heads: tuple[ChainHead, ...],
    ) -> Checkpoint:
        prev_id = previous.id if previous else None
        prev_digest = previous.digest if previous else None
        message = cls.message_of(
            id,
            seq,
            chain_hash,
            created_at,
            prev_id,
            prev_digest,
            key.key_id,
            version=version,
            chains=len(heads),
        )
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
            version=version,
            heads=heads,
        )

    def message(self) -> bytes:
        return self.message_of(
            self.id,
            self.seq,
            self.chain_hash,
            self.created_at,
            self.prev_id,
            self.prev_digest,
            self.key_id,
            version=self.version,
            chains=len(self.heads),
        )

    def content_problem(self) -> str | None:
        """Why this checkpoint's fields do not hang together (its digest, its heads), or None."""
        if hashlib.sha256(self.message()).digest() != self.digest:
            return f"checkpoint #{self.id}: its digest does not match its fields"
        if self.version == 2:
            try:
                root = tree_head_root(self.heads)
            except ValueError as exc:
                return f"checkpoint #{self.id}: {exc}"
            if not self.heads or root != self.chain_hash:
                return f"checkpoint #{self.id}: its chain heads do not make the root it signs"
            if self.seq != max(h.seq(self.layout) for h in self.heads):
                return f"checkpoint #{self.id}: its seq is not the highest of its chain heads"
        return None

    def signature_problem(self, trusted_keys: Mapping[str, bytes]) -> str | None:
        """Why this checkpoint cannot be trusted, or None when its digest, its heads and its
        signature hold."""
        why = self.content_problem()
        if why is not None:
            return why
        message = self.message()
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
        if self.version < previous.version:
            return f"checkpoint #{self.id} (version {self.version}) follows a version {previous.version} one"
        if self.version == previous.version == 2 and len(self.heads) != len(previous.heads):
            return (
                f"checkpoint #{self.id} signs {len(self.heads)} chain(s), #{previous.id} "
                f"{len(previous.heads)}: a trail's chain count is fixed"
            )
        sizes = self.sizes()
        for chain, size in previous.sizes().items():
            if sizes.get(chain, 0) < size:
                return (
                    f"checkpoint #{self.id} (chain {chain} at {sizes.get(chain, 0)} entries) is behind "
                    f"#{previous.id} (chain {chain} at {size})"
                )
        return None

    # -- files ---------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": FORMAT if self.version == 1 else FORMAT_V2,
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
        if self.version == 2:
            data["heads"] = [h.to_json() for h in self.heads]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Checkpoint:
        version = _FORMATS.get(str(data.get("format")))
        if version is None:
            raise CheckpointError(
                f"not a checkpoint: format is {data.get('format')!r}, expected {FORMAT_V2!r} or {FORMAT!r}"
            )
        try:
            heads = tuple(ChainHead.from_json(h) for h in data["heads"]) if version == 2 else ()
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
                version=version,
                heads=heads,
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
