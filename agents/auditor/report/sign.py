"""The report digest and its Ed25519 signature.

``digest`` = SHA-256 of :func:`.model.canonical_json` of the report without its
``digest`` and ``signature`` (the signing key id is covered). The signature is
Ed25519 over ``b"l9.evidence-report.v1\\x00" + digest``: the tag keeps a report
signature from ever passing for a checkpoint signature made with the same key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from memory.audit import SigningKey

from .model import FORMAT, Report, Stamp, canonical_json, unsigned_dump

SIGNATURE_TAG = FORMAT.encode() + b"\x00"


def report_digest(report: Report) -> bytes:
    """SHA-256 of the canonical JSON of ``report`` minus its digest and signature."""
    return hashlib.sha256(canonical_json(unsigned_dump(report))).digest()


def signed_message(digest: bytes) -> bytes:
    return SIGNATURE_TAG + digest


def sign_report(report: Report, key: SigningKey) -> Report:
    """``report`` with key id, digest and signature filled in."""
    keyed = report.with_signature(key.key_id, "", "")
    digest = report_digest(keyed)
    signature = key.private_key.sign(signed_message(digest))
    return keyed.with_signature(key.key_id, digest.hex(), signature.hex())


def signature_problem(stamp: Stamp, trusted_keys: Mapping[str, bytes]) -> str | None:
    """Why the stamp's signature cannot be trusted, or None when it verifies."""
    public = trusted_keys.get(stamp.key_id)
    if public is None:
        return f"signature: key id {stamp.key_id!r} is not a trusted report key"
    try:
        digest = bytes.fromhex(stamp.digest)
        signature = bytes.fromhex(stamp.signature)
    except ValueError:
        return "signature: the digest or the signature is not hex"
    if len(digest) != hashlib.sha256().digest_size:
        return f"signature: the digest has {len(digest)} bytes, not 32"
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, signed_message(digest))
    except (InvalidSignature, ValueError):
        return f"signature: the Ed25519 signature of the digest does not verify with key {stamp.key_id!r}"
    return None
