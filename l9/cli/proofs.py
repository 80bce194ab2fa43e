"""``l9 audit prove``, ``l9 audit consistency``, ``l9 audit verify-proof`` and ``l9 audit keys``:
proofs a client checks without the trail.

``prove`` and ``consistency`` read the trail (``DATABASE_URL``, or the embedded stack) and
print a proof as JSON (:mod:`memory.audit.proofs`): an entry is in the tree head a checkpoint
signs; a later checkpoint extends an earlier one. ``verify-proof`` checks such a file
offline: it reads the file and the trusted checkpoint keys (``--key``, the settings'), and
touches no database, no Redis, nothing else. ``keys`` prints the public keys a client is to
trust. l9/cli/audit.py registers the four in the ``l9 audit`` group.

Exit codes, as the other audit commands: 0 done (the proof holds); 1 the proof does not
hold, or the trail cannot make it; 2 a usage error, an unreadable proof file, or no
trusted key to check with.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from l9.cli.common import fail, load_settings, with_trail
from memory.audit import AuditRecorder, Checkpoint, SigningKey
from memory.audit.checkpoints import key_fingerprint
from memory.audit.proofs import ConsistencyProof, InclusionProof, ProofError, read_proof
from memory.chain import HEADER_FIELDS

#: The size of an Ed25519 public key (``--key``).
PUBLIC_KEY_SIZE = 32


# -- what a proof proves, in one line ------------------------------------------------------------


def inclusion_facts(proof: InclusionProof) -> dict[str, Any]:
    """What a holding inclusion proof shows (``--json`` of ``verify-proof``)."""
    cp = proof.checkpoint
    header = dict(zip(HEADER_FIELDS, proof.header, strict=True))
    return {
        "envelope_id": proof.envelope_id,
        "type": header["type"],
        "seq": proof.seq,
        "chain": proof.chain,
        "position": cp.layout.position(proof.seq),
        "chain_size": cp.heads[proof.chain].size,
        "chains": len(cp.heads),
        "checkpoint_id": cp.id,
        "checkpoint_seq": cp.seq,
        "key_id": cp.key_id,
    }


def inclusion_line(proof: InclusionProof) -> str:
    f = inclusion_facts(proof)
    return (
        f"envelope {f['envelope_id']} ({f['type']}) is seq {f['seq']}, entry {f['position']} of "
        f"chain {f['chain']}'s tree of {f['chain_size']}, under checkpoint #{f['checkpoint_id']} "
        f"(tree head of {f['chains']} chain(s), key {f['key_id']})"
    )


def _checkpoint_facts(cp: Checkpoint) -> dict[str, Any]:
    return {"id": cp.id, "seq": cp.seq, "entries": sum(cp.sizes().values()), "key_id": cp.key_id}


def consistency_facts(proof: ConsistencyProof) -> dict[str, Any]:
    """What a holding consistency proof shows (``--json`` of ``verify-proof``)."""
    return {
        "old": _checkpoint_facts(proof.old),
        "new": _checkpoint_facts(proof.new),
        "chains": len(proof.new.heads),
    }


def consistency_line(proof: ConsistencyProof) -> str:
    f = consistency_facts(proof)
    old, new = f["old"], f["new"]
    return (
        f"checkpoint #{new['id']} ({new['entries']} entries, seq {new['seq']}) extends checkpoint "
        f"#{old['id']} ({old['entries']} entries, seq {old['seq']}) in each of its {f['chains']} "
        f"chain(s) (key {new['key_id']})"
    )


def proof_facts(proof: InclusionProof | ConsistencyProof) -> dict[str, Any]:
    return inclusion_facts(proof) if isinstance(proof, InclusionProof) else consistency_facts(proof)


def proof_line(proof: InclusionProof | ConsistencyProof) -> str:
    """What a holding proof shows, in one line."""
    return inclusion_line(proof) if isinstance(proof, InclusionProof) else consistency_line(proof)


def _write(data: dict[str, Any], out: Path | None, what: str) -> None:
    """The proof as JSON on stdout, or in ``out`` with a line saying so."""
    text = json.dumps(data, indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise fail(f"cannot write {out}: {exc}") from None
    print(f"{what}: written to {out}")


# -- l9 audit prove --------------------------------------------------------------------------------


async def make_inclusion(
    store: AuditRecorder, envelope_id: str, checkpoint_id: int | None, key: SigningKey | None
) -> InclusionProof | ProofError:
    """The proof of ``envelope_id`` against checkpoint ``checkpoint_id``, a checkpoint signed
    now with ``key``, or the newest; a :class:`ProofError` saying why not (and what to do)."""
    try:
        if await store.entry(envelope_id) is None:
            return ProofError(f"envelope {envelope_id} is not in the trail")
        checkpoint = None
        if key is not None:
            try:
                checkpoint = await store.make_checkpoint(key)
            except OSError as exc:
                return ProofError(f"the new checkpoint is in the trail, but not its file: {exc}")
        elif checkpoint_id is not None:
            checkpoint = await store.checkpoint(checkpoint_id)
            if checkpoint is None:
                return ProofError(f"the trail has no checkpoint #{checkpoint_id}")
        return await store.inclusion_proof(envelope_id, checkpoint)
    except ProofError as exc:
        if checkpoint_id is None and key is None:  # the entry is there: no checkpoint covers it yet
            return ProofError(
                f"{exc} (`l9 audit prove {envelope_id} --checkpoint-now` signs one with the audit key "
                "first; the auditor signs one every L9_AUDIT_CHECKPOINT_INTERVAL_S seconds)"
            )
        return exc
    except ValueError as exc:  # stored tree nodes that cannot make the proof
        return ProofError(f"the trail cannot prove envelope {envelope_id}: {exc}")


def writable(directory: Path) -> bool:
    """Whether ``directory`` can be written to, or made (its nearest existing parent written to)."""
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    return existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)


def prove(
    envelope_id: Annotated[str, typer.Argument(metavar="ENVELOPE_ID", help="the envelope to prove")],
    checkpoint: Annotated[
        int | None,
        typer.Option(
            "--checkpoint", metavar="ID", min=1, help="prove against this checkpoint (default: the newest)"
        ),
    ] = None,
    checkpoint_now: Annotated[
        bool,
        typer.Option(
            "--checkpoint-now",
            help="first sign a checkpoint of the trail as it is, with the audit key (L9_AUDIT_KEY_FILE)",
        ),
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", metavar="FILE", help="write the proof here (default: stdout)")
    ] = None,
) -> None:
    """Print the proof (JSON) that an entry is in a signed tree head."""
    if checkpoint is not None and checkpoint_now:
        raise fail("--checkpoint ID and --checkpoint-now exclude each other", 2)
    settings = load_settings()
    key = None
    if checkpoint_now:
        try:
            key = settings.audit_signing_key()
        except ValueError as exc:
            raise fail(str(exc), 2) from None
        if not writable(settings.checkpoint_dir):
            raise fail(
                f"--checkpoint-now: the checkpoint directory {settings.checkpoint_dir} is not writable here "
                "(a checkpoint's file goes with it): run it where the auditor keeps its checkpoints, or "
                "wait for the auditor's next checkpoint",
                2,
            )
    proof = with_trail(settings, lambda store: make_inclusion(store, envelope_id, checkpoint, key))
    if isinstance(proof, ProofError):
        raise fail(str(proof))
    _write(proof.to_json(), out, f"inclusion proof: {inclusion_line(proof)}")


# -- l9 audit consistency ----------------------------------------------------------------------------


async def make_consistency(store: AuditRecorder, old: int, new: int) -> ConsistencyProof | ProofError:
    try:
        return await store.consistency_proof(old, new)
    except ProofError as exc:
        return exc
    except ValueError as exc:  # checkpoints or stored tree nodes that cannot make the proof
        return ProofError(f"the trail cannot prove checkpoint #{new} extends #{old}: {exc}")


def consistency(
    old: Annotated[int, typer.Argument(metavar="OLD", min=1, help="the earlier checkpoint's id")],
    new: Annotated[int, typer.Argument(metavar="NEW", min=1, help="the later checkpoint's id")],
    out: Annotated[
        Path | None, typer.Option("--out", metavar="FILE", help="write the proof here (default: stdout)")
    ] = None,
) -> None:
    """Print the proof (JSON) that checkpoint NEW extends OLD."""
    if old > new:
        raise fail(f"OLD ({old}) comes after NEW ({new}): give the earlier checkpoint first", 2)
    settings = load_settings()
    proof = with_trail(settings, lambda store: make_consistency(store, old, new))
    if isinstance(proof, ProofError):
        raise fail(str(proof))
    _write(proof.to_json(), out, f"consistency proof: {consistency_line(proof)}")


# -- l9 audit verify-proof ------------------------------------------------------------------------------


def read_proof_file(file: str) -> InclusionProof | ConsistencyProof:
    """The proof in ``file`` (``-``: stdin); exit 2 when it cannot be read as one."""
    name = "stdin" if file == "-" else file
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise fail(f"{name}: cannot read a proof: {exc}", 2) from None
    if not isinstance(data, dict):
        raise fail(f"{name}: cannot read a proof: a proof is a JSON object", 2)
    try:
        return read_proof(data)
    except ProofError as exc:
        raise fail(f"{name}: {exc}", 2) from None


def parse_public_key(text: str) -> bytes:
    """A ``--key``: an Ed25519 public key in hex; exit 2 otherwise."""
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raise fail(f"--key {text!r} is not hex", 2) from None
    if len(raw) != PUBLIC_KEY_SIZE:
        raise fail(f"--key {text!r} is {len(raw)} bytes: an Ed25519 public key is {PUBLIC_KEY_SIZE}", 2)
    return raw


def trusted_keys(keys: list[str]) -> dict[str, bytes]:
    """``--key`` keys (by their fingerprint, as checkpoints name them) and the settings' trusted
    keys (``l9 audit verify``'s); exit 2 when there is none to check with."""
    given = {key_fingerprint(raw): raw for raw in map(parse_public_key, keys)}
    try:
        configured = load_settings().audit_trusted()
    except ValueError as exc:
        raise fail(f"cannot load the trusted checkpoint keys: {exc}", 2) from None
    trusted = configured | given
    if not trusted:
        raise fail(
            "no trusted checkpoint key: give the checkpoint signer's public key (--key HEX), or set "
            "L9_AUDIT_KEY_FILE or L9_AUDIT_TRUSTED_KEYS",
            2,
        )
    return trusted


def verify_proof(
    file: Annotated[str, typer.Argument(metavar="FILE", help="a proof (prove, consistency); - reads stdin")],
    key: Annotated[
        list[str] | None,
        typer.Option(
            "--key", metavar="HEX_PUBLIC_KEY", help="trust this checkpoint key (Ed25519, hex); repeatable"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the outcome as JSON")] = False,
) -> None:
    """Check a proof file offline; exit 1 when it does not hold."""
    proof = read_proof_file(file)
    trusted = trusted_keys(key or [])
    kind = "inclusion" if isinstance(proof, InclusionProof) else "consistency"
    why = proof.problem(trusted)
    if as_json:
        outcome: dict[str, Any] = {"ok": why is None, "kind": kind, "problem": why}
        print(json.dumps(outcome | (proof_facts(proof) if why is None else {})), flush=True)
    elif why is None:
        print(f"OK: {proof_line(proof)}", flush=True)
    else:
        raise fail(f"the {kind} proof does not hold: {why}")
    if why is not None:
        raise typer.Exit(1)


# -- l9 audit keys ---------------------------------------------------------------------------------------


def keys(as_json: Annotated[bool, typer.Option("--json", help="one JSON object per key")] = False) -> None:
    """Print the checkpoint keys to trust, for verify-proof --key."""
    try:
        trusted = load_settings().audit_trusted()  # the signing key's, retired ones; never makes one
    except ValueError as exc:
        raise fail(f"cannot load the checkpoint keys: {exc}", 2) from None
    if not trusted:
        raise fail("no audit key here (L9_AUDIT_KEY_FILE, L9_AUDIT_TRUSTED_KEYS)", 2)
    for key_id, public in trusted.items():
        line = {"key_id": key_id, "public_key": public.hex()}
        print(json.dumps(line) if as_json else f"{key_id}  {public.hex()}")
