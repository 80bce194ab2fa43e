"""``l9 audit prove``, ``l9 audit consistency`` and ``l9 audit verify-proof`` as processes: proofs
made from the real PostgreSQL trail (of one chain and of two), checked offline by a
``verify-proof`` that has no database and no Redis to reach (and reaches for neither: one
pointed at closed ports passes all the same), and refused when tampered with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from envelope import PacketEnvelope, Signer
from l9.devstack import StackEndpoints
from memory.postgres import AuditRecord, PostgresAuditStore, SigningKey, migrate, writer_dsn
from tests.conftest import KEYRING, ROOT, free_port, run_l9

pytestmark = pytest.mark.integration

l9 = run_l9
TYPES = ("l9.plan.locked.v1", "l9.artifact.generated.v1")


def records(start: int, n: int, streams: tuple[str, ...] = ("t:audit",)) -> list[AuditRecord]:
    signer = Signer(KEYRING, "dev")
    out = []
    for i in range(start, start + n):
        envelope = PacketEnvelope.new(
            type=TYPES[i % len(TYPES)],
            source="agent://planner/planner-0",
            data={"i": i},
            correlation_id="run-p",
        )
        stream = streams[i % len(streams)]
        out.append(
            AuditRecord.from_envelope(envelope, stream=stream, entry_id=f"{1000 + i}-0", signer=signer)
        )
    return out


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def env(admin_dsn: str, stack: StackEndpoints, tmp_path: Path, key: SigningKey) -> dict[str, str]:
    """The CLI's environment with the trail: this test's database, its checkpoint dir and key."""
    key_file = tmp_path / "audit-key.hex"
    key_file.write_text(key.private_bytes.hex())
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("L9_")},
        "DATABASE_URL": admin_dsn,
        "REDIS_URL": stack.redis_url,
        "L9_HOME": str(tmp_path / "home"),
        "L9_AUDIT_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),  # the store's
        "L9_AUDIT_KEY_FILE": str(key_file),
        "L9_LOG_LEVEL": "info",
        "PYTHONPATH": str(ROOT),
    }


@pytest.fixture
def offline(tmp_path: Path) -> dict[str, str]:
    """A client's environment: no database, no Redis, no audit key, an empty home."""
    gone = ("DATABASE_URL", "REDIS_URL")
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("L9_") and k not in gone},
        "L9_HOME": str(tmp_path / "client-home"),
        "PYTHONPATH": str(ROOT),
    }


@pytest.fixture
async def two_chains(admin_dsn: str, tmp_path: Path) -> AsyncIterator[PostgresAuditStore]:
    """The trail made of 2 chains (set before any entry), opened as the writer."""
    await migrate(admin_dsn, chains=2)
    opened = await PostgresAuditStore.open(writer_dsn(admin_dsn), checkpoint_dir=tmp_path / "checkpoints")
    yield opened
    await opened.close()


def l9_reading(stdin: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m l9 ARGS`` reading ``stdin``."""
    return subprocess.run(
        [sys.executable, "-m", "l9", *args],
        input=stdin,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def refused(done: subprocess.CompletedProcess[str], code: int, says: str) -> None:
    """Exit ``code`` with one ``error:`` line on stderr saying ``says``, no traceback."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], done.stderr


def read(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def flip(hex_hash: str) -> str:
    raw = bytearray(bytes.fromhex(hex_hash))
    raw[-1] ^= 0x80
    return raw.hex()


async def test_a_proof_made_from_the_trail_verifies_offline_and_not_once_tampered(
    store: PostgresAuditStore, env: dict[str, str], offline: dict[str, str], key: SigningKey, tmp_path: Path
) -> None:
    first, later = records(0, 5), records(5, 7)
    await store.append(first)
    await store.make_checkpoint(key)
    await store.append(later)
    await store.make_checkpoint(key)
    target = first[3]
    proof_file = tmp_path / "proof.json"

    printed = ok(l9("audit", "prove", target.envelope_id, "--out", str(proof_file), env=env))
    assert f"written to {proof_file}" in printed and "under checkpoint #2" in printed
    proof = read(proof_file)
    assert proof["format"] == "l9.audit.inclusion.v1"
    assert (proof["envelope_id"], proof["seq"], proof["chain"]) == (target.envelope_id, 4, 0)
    assert proof["checkpoint"]["id"] == 2 and proof["checkpoint"]["heads"][0]["size"] == 12
    against_first = json.loads(ok(l9("audit", "prove", target.envelope_id, "--checkpoint", "1", env=env)))
    assert against_first["checkpoint"]["id"] == 1 and against_first["seq"] == 4

    public = key.public_bytes.hex()
    line = ok(l9("audit", "verify-proof", str(proof_file), "--key", public, env=offline))
    assert line.startswith("OK: ") and len(line.strip().splitlines()) == 1
    for fact in (target.envelope_id, target.type, "seq 4", "chain 0's tree of 12", "checkpoint #2"):
        assert fact in line, (fact, line)
    assert not (tmp_path / "client-home").exists()  # nothing started, nothing made
    closed = {
        **offline,
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/l9",
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    ok(l9("audit", "verify-proof", str(proof_file), "--key", public, env=closed))
    facts = json.loads(
        ok(l9("audit", "verify-proof", "--json", str(proof_file), "--key", public, env=closed))
    )
    assert facts["ok"] is True and facts["kind"] == "inclusion" and facts["problem"] is None
    assert (facts["envelope_id"], facts["type"], facts["seq"], facts["chain"]) == (
        target.envelope_id,
        target.type,
        4,
        0,
    )
    assert (facts["checkpoint_id"], facts["chain_size"], facts["chains"]) == (2, 12, 1)
    piped = l9_reading(proof_file.read_text(), "audit", "verify-proof", "-", "--key", public, env=closed)
    assert piped.returncode == 0 and piped.stdout.startswith("OK: "), piped.stderr
    first_file = tmp_path / "against-first.json"
    first_file.write_text(json.dumps(against_first))
    with_key_file = {**closed, "L9_AUDIT_KEY_FILE": env["L9_AUDIT_KEY_FILE"]}  # the settings' key, no --key
    assert "under checkpoint #1" in ok(l9("audit", "verify-proof", str(first_file), env=with_key_file))

    tampered = tmp_path / "tampered.json"
    for where, value, says in (
        (("path", 0), flip(proof["path"][0]), "the entry's path does not lead to chain 0"),
        (("header", "type"), "l9.plan.rejected.v1", "the entry's path does not lead"),
        (("payload_hash",), flip(proof["payload_hash"]), "the envelope bytes carried do not match"),
    ):
        edited = read(proof_file)
        *parents, last = where
        node: Any = edited
        for step in parents:
            node = node[step]
        node[last] = value
        tampered.write_text(json.dumps(edited))
        refused(
            l9("audit", "verify-proof", str(tampered), "--key", public, env=closed),
            1,
            f"the inclusion proof does not hold: {says}",
        )
    stranger = SigningKey.generate().public_bytes.hex()
    refused(
        l9("audit", "verify-proof", str(proof_file), "--key", stranger, env=closed),
        1,
        "is not a trusted checkpoint key",
    )


async def test_verify_proof_refuses_what_it_cannot_read_or_check(
    store: PostgresAuditStore, env: dict[str, str], offline: dict[str, str], key: SigningKey, tmp_path: Path
) -> None:
    recs = records(0, 3)
    await store.append(recs)
    await store.make_checkpoint(key)
    proof_file = tmp_path / "proof.json"
    ok(l9("audit", "prove", recs[1].envelope_id, "--out", str(proof_file), env=env))
    public = key.public_bytes.hex()
    refused(
        l9("audit", "verify-proof", str(tmp_path / "none.json"), "--key", public, env=offline), 2, "none.json"
    )
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    refused(l9("audit", "verify-proof", str(garbage), "--key", public, env=offline), 2, "cannot read a proof")
    garbage.write_text(json.dumps({"format": "l9.audit.checkpoint.v2"}))
    refused(l9("audit", "verify-proof", str(garbage), "--key", public, env=offline), 2, "not a proof")
    refused(l9("audit", "verify-proof", str(proof_file), env=offline), 2, "no trusted checkpoint key")
    refused(l9("audit", "verify-proof", str(proof_file), "--key", "zz", env=offline), 2, "is not hex")
    refused(l9("audit", "verify-proof", str(proof_file), "--key", "ab" * 31, env=offline), 2, "31 bytes")


async def test_prove_says_how_to_get_a_checkpoint_and_makes_one_when_asked(
    store: PostgresAuditStore, env: dict[str, str], offline: dict[str, str], key: SigningKey, tmp_path: Path
) -> None:
    early, late = records(0, 2), records(2, 1)
    await store.append(early)
    refused(l9("audit", "prove", early[0].envelope_id, env=env), 1, "no signed tree head yet")
    await store.make_checkpoint(key)
    await store.append(late)
    done = l9("audit", "prove", late[0].envelope_id, env=env)
    refused(done, 1, f"envelope {late[0].envelope_id} (seq 3) came after checkpoint #1")
    assert f"l9 audit prove {late[0].envelope_id} --checkpoint-now" in done.stderr
    refused(
        l9("audit", "prove", "no-such-envelope", env=env), 1, "envelope no-such-envelope is not in the trail"
    )
    refused(l9("audit", "prove", late[0].envelope_id, "--checkpoint", "7", env=env), 1, "no checkpoint #7")
    refused(
        l9("audit", "prove", late[0].envelope_id, "--checkpoint", "1", "--checkpoint-now", env=env),
        2,
        "exclude each other",
    )

    proof_file = tmp_path / "late.json"
    printed = ok(
        l9("audit", "prove", late[0].envelope_id, "--checkpoint-now", "--out", str(proof_file), env=env)
    )
    assert "under checkpoint #2" in printed
    assert read(proof_file)["checkpoint"]["id"] == 2
    newest = await store.last_checkpoint()
    assert newest is not None and newest.id == 2 and newest.key_id == key.key_id
    assert (tmp_path / "checkpoints" / "checkpoint-0000000002.json").exists()  # the checkpoint's file too
    line = ok(l9("audit", "verify-proof", str(proof_file), "--key", key.public_bytes.hex(), env=offline))
    assert f"envelope {late[0].envelope_id}" in line and "seq 3" in line

    blocked = tmp_path / "a-file"  # a checkpoint directory that cannot be made: no checkpoint either
    blocked.write_text("")
    refused(
        l9(
            "audit",
            "prove",
            late[0].envelope_id,
            "--checkpoint-now",
            env=env | {"L9_AUDIT_CHECKPOINT_DIR": str(blocked / "cp")},
        ),
        2,
        "is not writable here",
    )
    assert [c.id for c in await store.checkpoints()] == [1, 2]


async def test_keys_prints_what_a_client_trusts(
    env: dict[str, str], offline: dict[str, str], key: SigningKey
) -> None:
    retired = SigningKey.generate()
    more = env | {"L9_AUDIT_TRUSTED_KEYS": json.dumps({retired.key_id: retired.public_bytes.hex()})}
    assert ok(l9("audit", "keys", env=more)).splitlines() == [
        f"{key.key_id}  {key.public_bytes.hex()}",
        f"{retired.key_id}  {retired.public_bytes.hex()}",
    ]
    listed = [json.loads(line) for line in ok(l9("audit", "keys", "--json", env=env)).splitlines()]
    assert listed == [{"key_id": key.key_id, "public_key": key.public_bytes.hex()}]
    refused(l9("audit", "keys", env=offline), 2, "no audit key here")


async def test_two_chains_every_entry_and_the_extension_verify_offline(
    two_chains: PostgresAuditStore,
    env: dict[str, str],
    offline: dict[str, str],
    key: SigningKey,
    tmp_path: Path,
) -> None:
    store = two_chains
    streams = tuple(f"t:part-{i}" for i in range(6))
    first, second = records(0, 6, streams), records(6, 9, streams)
    await store.append(first)
    await store.make_checkpoint(key)
    await store.append(second)
    await store.make_checkpoint(key)
    public = key.public_bytes.hex()

    chains_seen = set()
    for i, rec in enumerate(first + second):
        if i % 5:  # every entry proven; the store's own proof, checked with the checkpoint's key
            made = await store.inclusion_proof(rec.envelope_id)
            assert made.problem(key.trusted()) is None and made.envelope_id == rec.envelope_id
            chains_seen.add(made.chain)
            continue
        # a few through the CLI, both ways (each run costs a second or two)
        proof_file = tmp_path / f"proof-{i}.json"
        ok(l9("audit", "prove", rec.envelope_id, "--out", str(proof_file), env=env))
        proof = read(proof_file)
        assert len(proof["checkpoint"]["heads"]) == 2
        assert (proof["seq"] - 1) % 2 == proof["chain"]
        chains_seen.add(proof["chain"])
        line = ok(l9("audit", "verify-proof", str(proof_file), "--key", public, env=offline))
        assert f"chain {proof['chain']}'s tree of" in line and "tree head of 2 chain(s)" in line
    assert chains_seen == {0, 1}

    consistency_file = tmp_path / "consistency.json"
    printed = ok(l9("audit", "consistency", "1", "2", "--out", str(consistency_file), env=env))
    assert f"written to {consistency_file}" in printed
    proof = read(consistency_file)
    assert proof["format"] == "l9.audit.consistency.v1" and len(proof["proofs"]) == 2
    assert [h["size"] for h in proof["new"]["heads"]] != [h["size"] for h in proof["old"]["heads"]]
    line = ok(l9("audit", "verify-proof", str(consistency_file), "--key", public, env=offline))
    assert line.startswith("OK: checkpoint #2 (15 entries") and "extends checkpoint #1 (6 entries" in line
    same = json.loads(ok(l9("audit", "consistency", "2", "2", env=env)))
    assert same["old"] == same["new"]

    tampered = tmp_path / "tampered-consistency.json"
    edited = read(consistency_file)
    edited["old"]["heads"][1]["root"] = flip(edited["old"]["heads"][1]["root"])
    tampered.write_text(json.dumps(edited))
    refused(
        l9("audit", "verify-proof", str(tampered), "--key", public, env=offline),
        1,
        "the consistency proof does not hold: checkpoint #1: its chain heads do not make the root",
    )
    refused(l9("audit", "consistency", "2", "1", env=env), 2, "give the earlier checkpoint first")
    refused(l9("audit", "consistency", "1", "3", env=env), 1, "the trail has no checkpoint #3")


def test_audit_help_lists_the_proof_commands(offline: dict[str, str]) -> None:
    listed = ok(l9("audit", "--help", env=offline | {"COLUMNS": "120"}))
    for name, says in (
        ("prove", "Print the proof (JSON) that an entry is in a signed tree head."),
        ("consistency", "Print the proof (JSON) that checkpoint NEW extends OLD."),
        ("verify-proof", "Check a proof file offline; exit 1 when it does not hold."),
        ("keys", "Print the checkpoint keys to trust, for verify-proof --key."),
    ):
        assert any(name in line and says in line for line in listed.splitlines()), (name, listed)
