"""Envelope signatures: HMAC-SHA256 from a shared keyring, or Ed25519 per agent.

The canonical form is also the wire form: the stream entry's ``env`` field is
exactly :func:`canonical_bytes` of the envelope, and its ``sig`` field is the
signature over those bytes. Decoding checks it over the bytes as they arrived
(:meth:`Verifier.verify_bytes`); :meth:`Verifier.verify_envelope` rebuilds the
same bytes from a model (after a CloudEvents round trip, say).

Two schemes, told apart by the signature itself:

* **HMAC** (:class:`Signer`): ``sig`` is the hex HMAC-SHA256 of ``env`` with the key
  ``key_id`` names. Every process that can check a key can also sign with it: this
  proves the envelope came from *a* holder of the keyring, not which agent. For
  development and single-tenant use.
* **Ed25519** (:class:`Ed25519Signer`): an agent holds its own private key, every
  consumer holds public keys only (:class:`Verifier`'s ``public_keys``), so no consumer
  can sign as another agent. Signing a batch signs once: the entries' ``env`` bytes are
  the leaves of a Merkle tree (RFC 9162, ``envelope._merkle``) and the signature is over
  its root and size. Each entry carries the signature, its index, the batch size and its
  inclusion path, so it is checkable alone::

      ed25519:<signature>                                 (a batch of one)
      ed25519:<signature>:<index>/<size>:<path>           (one of a batch)

  (signature and path in base64, the path the sibling hashes from the leaf up.)

  A verifier checks the signature of a batch once and each entry's path (one SHA-256 per
  tree level, fewer once a neighbour's proof is known: :class:`Verifier`).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from ._canonical import SIGNED_FIELDS, canonical_bytes, to_wire_map
from ._errors import EnvelopeError, ErrorReason
from ._merkle import ancestors, climb, inclusion_paths, known_nodes, leaf_hash
from ._model import PacketEnvelope

_sha256 = hashlib.sha256
#: What :meth:`Verifier.prepare` found of a batch: its size, its root, the nodes under it and
#: the signed bytes of its entries under them.
_Prepared = tuple[int, bytes, set[bytes], set[bytes]]

__all__ = [
    "ED25519_PREFIX",
    "SIGNED_FIELDS",
    "Ed25519Signer",
    "Signer",
    "Verifier",
    "agent_of_key",
    "canonical_bytes",
]

#: How an Ed25519 signature starts on the wire; an HMAC one is plain hex.
ED25519_PREFIX = "ed25519:"
_ED_PREFIX = ED25519_PREFIX.encode()
#: What the signature of a batch covers: this label, the batch size (8 bytes), the root.
_BATCH_LABEL = b"l9 envelope batch v1\n"
#: A key id: ``<agent>`` or ``<agent>.<version>`` (``planner.k20261207141500``).
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64})?$")
_MAX_BATCH = 1 << 32
_MAX_PATH = 32  # levels of a tree of at most 2**32 leaves
#: Length of ``ed25519:<signature base64>``: what the entries of one batch share.
_HEAD = len(ED25519_PREFIX) + 88
_PROVEN_BATCHES = 1024
_PROVEN_NODES = 1 << 16


def agent_of_key(key_id: str) -> str:
    """The agent (or anchor) a key belongs to: the key id up to its first dot."""
    return key_id.partition(".")[0]


def _mac(template: hmac.HMAC, data: bytes | bytearray) -> str:
    """HMAC of ``data`` from a keyed template (the key pads are hashed once, not per call)."""
    mac = template.copy()
    mac.update(data)
    return mac.hexdigest()


def _batch_message(size: int, root: bytes) -> bytes:
    return _BATCH_LABEL + size.to_bytes(8, "big") + root


class Signer:
    """Signs canonical bytes (or wire maps) with one HMAC key of a shared keyring."""

    scheme = "hmac-sha256"

    def __init__(self, keyring: Mapping[str, bytes], key_id: str) -> None:
        if key_id not in keyring:
            raise ValueError(f"signing key id {key_id!r} is not in the keyring ({sorted(keyring)})")
        self.key_id = key_id
        self._key = keyring[key_id]
        self._mac = hmac.new(self._key, digestmod=hashlib.sha256)

    def sign_bytes(self, blob: bytes) -> str:
        """The signature of ``blob``, which must already carry this signer's ``key_id``."""
        return _mac(self._mac, blob)

    def sign_batch(self, blobs: Sequence[bytes]) -> list[str]:
        """The signature of each of ``blobs`` (which carry this signer's ``key_id``), in order."""
        mac = self._mac
        return [_mac(mac, blob) for blob in blobs]

    def sign(self, fields: dict[str, Any]) -> None:
        """Set ``key_id`` and ``signature`` on a wire map in place."""
        fields["key_id"] = self.key_id
        fields["signature"] = self.sign_bytes(canonical_bytes(fields))


class Ed25519Signer(Signer):
    """Signs with one agent's own Ed25519 private key; a batch with one signature."""

    scheme = "ed25519"

    def __init__(self, key_id: str, private_key: Ed25519PrivateKey) -> None:
        if not KEY_ID_PATTERN.fullmatch(key_id):
            raise ValueError(f"key id {key_id!r} is not <agent> or <agent>.<version> (letters, digits, _ -)")
        self.key_id = key_id
        self._private = private_key
        self.public_bytes = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def generate(cls, key_id: str) -> Ed25519Signer:
        return cls(key_id, Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, key_id: str, seed: bytes) -> Ed25519Signer:
        return cls(key_id, Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def from_key_file(cls, path: Path) -> Ed25519Signer:
        """From a key file: JSON ``{"key_id": "...", "seed": "<32 bytes in hex>"}``."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"signing key file {path}: cannot read it ({exc.strerror or exc})") from None
        return cls.from_key_text(text, str(path))

    @classmethod
    def from_key_text(cls, text: str, path: str) -> Ed25519Signer:
        """From the content of a key file (read from ``path``: named in errors)."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"signing key file {path}: not JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("key_id"), str):
            raise ValueError(f'signing key file {path}: expected {{"key_id": "...", "seed": "<hex>"}}')
        try:
            seed = bytes.fromhex(str(data.get("seed")))
            if len(seed) != 32:
                raise ValueError(f"{len(seed)} bytes")
        except ValueError as exc:
            raise ValueError(f"signing key file {path}: seed is not 32 bytes of hex ({exc})") from None
        try:
            return cls.from_seed(data["key_id"], seed)
        except ValueError as exc:
            raise ValueError(f"signing key file {path}: {exc}") from None

    def key_file_text(self) -> str:
        """The content of this key's file (:meth:`from_key_file` reads it)."""
        seed = self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return json.dumps({"key_id": self.key_id, "seed": seed.hex()}) + "\n"

    @property
    def public_hex(self) -> str:
        return self.public_bytes.hex()

    def sign_bytes(self, blob: bytes) -> str:
        return ED25519_PREFIX + _b64(self._private.sign(_batch_message(1, leaf_hash(blob))))

    def sign_batch(self, blobs: Sequence[bytes]) -> list[str]:
        if len(blobs) <= 1:
            return [self.sign_bytes(blob) for blob in blobs]
        size = len(blobs)
        root, paths = inclusion_paths([leaf_hash(blob) for blob in blobs])
        head = f"{ED25519_PREFIX}{_b64(self._private.sign(_batch_message(size, root)))}:"
        return [f"{head}{i}/{size}:{_b64(b''.join(path))}" for i, path in enumerate(paths)]


class Verifier:
    """Checks signatures: HMAC ones against ``keyring`` (key id -> secret), Ed25519 ones
    against ``public_keys`` (key id -> raw public key). Unsigned envelopes fail when required.

    A key id is one kind or the other: an HMAC signature under a public key's id is refused
    (whoever holds a public key cannot sign with it).

    An Ed25519 batch costs one signature check: the verifier remembers the roots it verified
    and the nodes of the proofs that led there, and the climb of the next entry of the batch
    stops at the first node already proven (for an entry read after its neighbour: at its
    own leaf). The content of each entry is proven either way; ``full_proofs=True`` (the
    auditor) also checks every entry's whole path up to its root, so an entry whose own
    proof is damaged is refused even after its batch was met: what it stores is checkable
    alone."""

    def __init__(
        self,
        keyring: Mapping[str, bytes],
        *,
        public_keys: Mapping[str, bytes] | None = None,
        required: bool = True,
        full_proofs: bool = False,
    ) -> None:
        public_keys = dict(public_keys or {})
        both = sorted(set(keyring) & set(public_keys))
        if both:
            raise ValueError(f"key id(s) {both} are both an HMAC key and an Ed25519 public key")
        self._keyring = dict(keyring)
        self._macs = {kid: hmac.new(key, digestmod=hashlib.sha256) for kid, key in self._keyring.items()}
        self._public: dict[str, Ed25519PublicKey] = {}
        for kid, raw in public_keys.items():
            try:
                self._public[kid] = Ed25519PublicKey.from_public_bytes(raw)
            except ValueError as exc:
                raise ValueError(f"public key {kid!r}: not a raw Ed25519 public key ({exc})") from None
        #: (key id, signature head) of a signed batch -> its nodes proven so far: its root and
        #: the nodes of the proofs that led there (the batches met lately)
        self._proven: dict[tuple[str, bytes], set[bytes]] = {}
        #: signature head of a batch -> (its size, its root, nodes under it, the signed bytes of
        #: its entries under them) that entries read together determined (:meth:`prepare`),
        #: trusted once the root's signature holds
        self._prepared: dict[bytes, _Prepared] = {}
        #: (key id, signature head) -> the signed bytes of entries :meth:`prepare` proved to be
        #: in that batch, each checked once without hashing it again
        self._ahead: dict[tuple[str, bytes], set[bytes]] = {}
        self.required = required
        self.full_proofs = full_proofs

    @property
    def key_ids(self) -> list[str]:
        return sorted([*self._keyring, *self._public])

    def verify_bytes(
        self, blob: bytes | bytearray, key_id: Any, signature: Any, envelope_id: str | None = None
    ) -> None:
        """Check ``signature`` (as str or bytes; None when unsigned) over the signed bytes
        ``blob`` with the key named ``key_id``: the one place every signature check and its
        message live."""
        if type(signature) is bytes and type(key_id) is str:  # as read from a stream: one frame
            template = self._macs.get(key_id)
            if template is not None:
                mac = template.copy()
                mac.update(blob)
                if hmac.compare_digest(mac.hexdigest().encode(), signature):
                    return
            elif signature.startswith(_ED_PREFIX):
                self._check_ed25519(blob, key_id, signature, envelope_id)
                return
        self._slow_check(blob, key_id, signature, envelope_id)

    @property
    def checks_ed25519(self) -> bool:
        """Whether it holds public keys (and :meth:`prepare` has something to do)."""
        return bool(self._public) and not self.full_proofs

    def prepare(self, entries: Sequence[tuple[Any, Any]]) -> None:
        """Ahead of the checks of entries read together ((signed bytes, signature) of each, as
        read from a stream): for each Ed25519 batch several of them are from, the nodes of its
        tree their leaves determine together, linked to the batch's root by as few of their
        inclusion paths as it takes (one per run of neighbours, instead of one for every
        other entry). Nothing is trusted here: the first check of an entry of the batch
        verifies the root's signature with its own key id's key, once, and the entries
        prepared are then proven at their leaf. An entry that does not fit (damaged, of
        another tree) is left to its own check. Nothing to do with ``full_proofs``."""
        if not self.checks_ed25519:
            return
        batches: dict[bytes, list[tuple[bytes, bytes]]] = {}
        for blob, signature in entries:
            if type(signature) is bytes and type(blob) is bytes and signature.startswith(_ED_PREFIX):
                batches.setdefault(signature[:_HEAD], []).append((blob, signature))
        for head, batch in batches.items():
            if len(batch) > 1:
                self._prepare_batch(head, batch)

    def _prepare_batch(self, head: bytes, batch: Sequence[tuple[bytes, bytes]]) -> None:
        size = 0
        leaves: dict[int, bytes] = {}
        entries: dict[int, tuple[bytes, bytes]] = {}
        for entry in batch:
            position, colon, _ = entry[1][_HEAD + 1 :].partition(b":")
            index_text, _, size_text = position.partition(b"/")
            if not (colon and index_text.isdigit() and size_text.isdigit()):
                continue
            index, of = int(index_text), int(size_text)
            size = size or of
            if of != size or index >= size or index in leaves:
                continue
            leaves[index] = _sha256(b"\x00" + entry[0]).digest()
            entries[index] = entry
        if len(leaves) < 2:
            return
        levels = known_nodes(size, leaves)
        root: bytes | None = None
        nodes: set[bytes] = set()
        blobs: set[bytes] = set()
        covered: set[int] = set()
        for index in sorted(leaves):
            if index in covered:
                continue
            parsed = _parse_ed25519(entries[index][1])
            if parsed is None or parsed[:2] != (index, size):
                continue
            path = parsed[2]
            chain = ancestors(leaves[index], index, size, path)
            if chain is None or (root is not None and chain[-1] != root):
                continue
            root = chain[-1]
            on_chain = set(chain)
            nodes |= on_chain
            nodes.update([path[i : i + 32] for i in range(0, len(path), 32)])
            for level in range(len(levels) - 1, -1, -1):  # the highest known ancestor on the chain
                if levels[level].get(index >> level) in on_chain:
                    first = (index >> level) << level
                    for under in range(first, min(size, first + (1 << level))):
                        covered.add(under)  # every leaf under it is known: they determined it
                        blobs.add(entries[under][0])
                    break
        if root is not None:
            if len(self._prepared) >= _PROVEN_BATCHES:
                self._prepared.clear()
            self._prepared[head] = (size, root, nodes, blobs)

    def _adopt(
        self, owner: tuple[str, bytes], public: Ed25519PublicKey, signature: bytes, prepared: _Prepared
    ) -> None:
        """What :meth:`prepare` found, proven for ``owner`` when the root is (already, or by the
        batch signature under the owner's key); else dropped, each entry's check deciding."""
        size, root, nodes, blobs = prepared
        proven = self._proven.get(owner)
        if proven is None or root not in proven:
            if not _signed(public, signature, size, root):
                return  # not this key's batch
            if proven is None:
                if len(self._proven) >= _PROVEN_BATCHES:
                    self._proven.clear()
                    self._ahead.clear()
                proven = self._proven[owner] = set()
            proven.add(root)
        proven |= nodes
        ahead = self._ahead.get(owner)
        if ahead is None:
            self._ahead[owner] = blobs
        elif len(ahead) > _PROVEN_NODES:
            ahead.clear()
            ahead |= blobs
        else:
            ahead |= blobs

    def verify(self, fields: Mapping[str, Any]) -> None:
        """Check the ``signature`` of a wire map over its canonical bytes."""
        signature, key_id = fields.get("signature"), fields.get("key_id")
        eid = fields.get("id") if isinstance(fields.get("id"), str) else None
        if signature is None and not self.required:
            return
        self._slow_check(canonical_bytes(fields), key_id, signature, eid)

    def verify_envelope(self, envelope: PacketEnvelope) -> None:
        self.verify(to_wire_map(envelope))

    def _slow_check(self, blob: bytes | bytearray, key_id: Any, signature: Any, eid: str | None) -> None:
        """Every check, each failure with its reason."""
        if signature is None:
            if self.required:
                raise EnvelopeError(ErrorReason.BAD_SIGNATURE, "envelope is not signed", envelope_id=eid)
            return
        if isinstance(signature, str):
            # '?' for what is not ASCII: it can never match a hex digest
            signature = signature.encode("ascii", "replace")
        if isinstance(key_id, str) and key_id in self._public:
            if not (isinstance(signature, bytes | bytearray) and signature.startswith(_ED_PREFIX)):
                raise EnvelopeError(
                    ErrorReason.BAD_SIGNATURE,
                    f"key id {key_id!r} is an Ed25519 key, but the signature is not an Ed25519 one",
                    envelope_id=eid,
                )
            self._check_ed25519(blob, key_id, bytes(signature), eid)
            return
        template = self._macs.get(key_id) if isinstance(key_id, str) else None
        if template is None:
            raise EnvelopeError(
                ErrorReason.BAD_SIGNATURE, f"unknown signing key id {key_id!r}", envelope_id=eid
            )
        if not isinstance(signature, bytes | bytearray) or not hmac.compare_digest(
            _mac(template, blob).encode(), signature
        ):
            raise EnvelopeError(
                ErrorReason.BAD_SIGNATURE,
                f"signature does not match the content (key id {key_id!r})",
                envelope_id=eid,
            )

    def _check_ed25519(self, blob: bytes | bytearray, key_id: str, signature: bytes, eid: str | None) -> None:
        public = self._public.get(key_id)
        if public is None:
            raise EnvelopeError(
                ErrorReason.BAD_SIGNATURE, f"unknown signing key id {key_id!r}", envelope_id=eid
            )
        owner = (key_id, signature[:_HEAD])
        if self._prepared:
            prepared = self._prepared.pop(owner[1], None)
            if prepared is not None:
                self._adopt(owner, public, signature, prepared)
        if self._ahead:
            ahead = self._ahead.get(owner)
            if ahead is not None and blob in ahead:
                ahead.discard(blob)
                return  # proven with the entries read with it (prepare)
        leaf = _sha256(b"\x00" + blob).digest()  # envelope._merkle.leaf_hash, inline: every entry
        proven = None if self.full_proofs else self._proven.get(owner)
        if proven is not None and leaf in proven:
            return  # a leaf the proof of another entry of its batch showed to be in it
        parsed = _parse_ed25519(signature)
        if parsed is None:
            raise _malformed(key_id, eid)
        index, size, path = parsed
        climbed = climb(leaf, index, size, path, proven)
        if climbed is None or (
            (proven is None or climbed[0] not in proven) and not _signed(public, signature, size, climbed[0])
        ):  # no root, or a root whose signature does not hold
            raise EnvelopeError(
                ErrorReason.BAD_SIGNATURE,
                f"signature does not match the content (key id {key_id!r})",
                envelope_id=eid,
            )
        top, used = climbed
        if proven is None:
            if len(self._proven) >= _PROVEN_BATCHES:
                self._proven.clear()
            proven = self._proven[owner] = set()
        elif len(proven) > _PROVEN_NODES:
            proven.clear()
        # ``leaf``, ``top`` and the hashes of the path below it are proven nodes of the batch:
        # the climbs of its next entries stop at them.
        proven.add(leaf)
        proven.add(top)
        if used == 32:
            proven.add(path[:32])
        else:
            proven.update([path[i : i + 32] for i in range(0, used, 32)])


def _malformed(key_id: str, eid: str | None) -> EnvelopeError:
    return EnvelopeError(
        ErrorReason.BAD_SIGNATURE,
        f"malformed Ed25519 signature (key id {key_id!r}): expected "
        "ed25519:<signature>[:<index>/<size>:<path>] (base64)",
        envelope_id=eid,
    )


def _b64(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


def _signed(public: Ed25519PublicKey, signature: bytes, size: int, root: bytes) -> bool:
    """Whether the wire ``signature``'s is ``public``'s over the batch of ``size`` with this root."""
    try:
        raw = binascii.a2b_base64(signature[len(_ED_PREFIX) : _HEAD], strict_mode=True)
        public.verify(raw, _batch_message(size, root))
    except (InvalidSignature, binascii.Error):
        return False
    return True


def _parse_ed25519(signature: bytes) -> tuple[int, int, bytes] | None:
    """(index, batch size, inclusion path) of a wire signature; None if malformed. The signature
    itself is decoded only when a root is to be verified."""
    if len(signature) == _HEAD:
        return 0, 1, b""
    if signature[_HEAD : _HEAD + 1] != b":":
        return None
    position, colon, path_text = signature[_HEAD + 1 :].partition(b":")
    index_text, _, size_text = position.partition(b"/")
    if not (colon and index_text.isdigit() and size_text.isdigit()) or b":" in path_text:
        return None
    index, size = int(index_text), int(size_text)
    try:
        path = binascii.a2b_base64(path_text, strict_mode=True)
    except binascii.Error:
        return None
    if not index < size <= _MAX_BATCH or len(path) % 32 or len(path) > 32 * _MAX_PATH:
        return None
    return index, size, path
