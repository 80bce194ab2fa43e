"""The report engine against the audit trail: build and sign a run's report, and
verify a report file by rebuilding it from the trail."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import structlog

from memory.audit import AuditRecorder, Checkpoint, SigningKey, StoredEntry
from memory.audit.chains import ChainHead
from memory.audit.proofs import ProofError

from .build import ChainPoint, NoRecordsError, ReportError, build_report
from .model import RecordView, Report, Stamp
from .sign import report_digest, sign_report, signature_problem
from .verify import ParsedReport, ReportCheck, first_difference, parse_report

log = structlog.get_logger(__name__)


async def covering_checkpoint(store: AuditRecorder, seq: int, key: SigningKey) -> Checkpoint:
    """The newest checkpoint if it covers ``seq``, else a new one of the current head."""
    checkpoints = await store.checkpoints()
    if checkpoints and checkpoints[-1].seq >= seq:
        return checkpoints[-1]
    return await store.make_checkpoint(key)


async def _covering_heads(store: AuditRecorder, heads: Sequence[ChainHead], key: SigningKey) -> Checkpoint:
    """The newest checkpoint if it vouches for every chain up to ``heads``, else a new one."""
    newest = await store.last_checkpoint()
    if (
        newest is not None
        and newest.version == 2
        and len(newest.heads) == len(heads)
        and all(n.size >= h.size for n, h in zip(newest.heads, heads, strict=True))
    ):
        return newest
    return await store.make_checkpoint(key)


async def report_from_trail(
    store: AuditRecorder, run_id: str, key: SigningKey, *, generated_at: datetime | None = None
) -> Report:
    """The signed report of ``run_id`` built on the current head.

    With one chain, on the chain head and the newest checkpoint if it covers it (else a new
    one); with several, on the newest checkpoint if it vouches for every chain's current head
    (else a new one), the report naming that checkpoint's newest entry as its head. The
    declaration cites the tree head root of a version 2 checkpoint. NoRecordsError when the
    trail holds no record of the run.
    """
    if store.layout.chains == 1:
        current = await store.head()
        head = ChainPoint(current.seq, current.chain_hash)
        entries = [e for e in await store.entries_for_correlation(run_id) if e.seq <= head.seq]
        if not entries:
            raise NoRecordsError(f"no audit records for run {run_id}")
        checkpoint = await covering_checkpoint(store, head.seq, key)
    else:
        checkpoint = await _covering_heads(store, await store.heads(), key)
        head = ChainPoint(*checkpoint.head_point())
        entries = [e for e in await store.entries_for_correlation(run_id) if checkpoint.covers(e.seq)]
        if not entries:
            raise NoRecordsError(f"no audit records for run {run_id}")
    report = build_report(
        entries,
        run_id=run_id,
        generated_at=generated_at or datetime.now(UTC),
        head=head,
        checkpoint=checkpoint,
        cite_root=checkpoint.root is not None,
    )
    signed = sign_report(report, key)
    log.info(
        "report.built",
        correlation_id=run_id,
        entries=len(entries),
        head_seq=head.seq,
        checkpoint_id=checkpoint.id,
        outcome=signed.outcome.status,
        digest=signed.declaration.digest,
    )
    return signed


async def _entry_at(store: AuditRecorder, seq: int) -> StoredEntry | None:
    page = await store.entries_after(seq - 1, limit=1)
    if page.entries and page.entries[0].seq == seq:
        return page.entries[0]
    return None


async def _head_point(store: AuditRecorder, stamp: Stamp) -> tuple[ChainPoint | None, str | None]:
    """The chain position the report names, if the trail holds it."""
    seq = stamp.head_seq
    entry = await _entry_at(store, seq)
    if entry is None:
        trail_head = (await store.head()).seq
        if seq > trail_head:
            return None, (
                f"trail: the report is built on chain head seq {seq}, but the trail ends at seq "
                f"{trail_head}: it was not built on this trail (or the trail lost entries)"
            )
        return None, f"trail: seq {seq}, the chain head the report is built on, is missing from the trail"
    if entry.chain_hash.hex() != stamp.head_chain_hash:
        return None, (
            f"trail: the chain hash at seq {seq} is {entry.chain_hash.hex()}, the report was built on "
            f"{stamp.head_chain_hash}: it was not built on this trail (or the trail was rewritten)"
        )
    return ChainPoint(seq, entry.chain_hash), None


async def _checkpoint(
    store: AuditRecorder, stamp: Stamp, trusted_keys: Mapping[str, bytes]
) -> tuple[Checkpoint | None, list[str]]:
    """The checkpoint the report names, if the trail holds it unchanged and it covers the head."""
    found = {c.id: c for c in await store.checkpoints()}.get(stamp.checkpoint_id)
    name = f"checkpoint #{stamp.checkpoint_id}"
    if found is None:
        return None, [f"trail: {name}, named by the report, is not in the trail"]
    if found.digest.hex() != stamp.checkpoint_digest:
        return None, [f"trail: {name} in the trail has digest {found.digest.hex()}, the report names another"]
    if found.seq < stamp.head_seq:
        return None, [
            f"trail: {name} (seq {found.seq}) does not cover the report's chain head seq {stamp.head_seq}"
        ]
    root = found.root
    if stamp.tree_head_root and (root is None or root.hex() != stamp.tree_head_root):
        signed = "signs no tree head" if root is None else f"signs tree head root {root.hex()}"
        return None, [f"trail: {name} {signed}, the report cites root {stamp.tree_head_root}"]
    problems = []
    signature = found.signature_problem(trusted_keys)
    if signature is not None:
        problems.append(f"trail: {signature}")
    for seq, chained in found.chain_heads().values():
        anchored = await _entry_at(store, seq)
        if anchored is None or anchored.chain_hash != chained:
            problems.append(
                f"trail: the trail's chain hash at seq {seq} differs from {name}: it was rewritten"
            )
    return found, problems


async def _content_problems(
    store: AuditRecorder, parsed: ParsedReport, head: ChainPoint, checkpoint: Checkpoint
) -> tuple[list[str], Report | None]:
    """Problems of the report's content against the report rebuilt from the trail (and that
    report, when it could be rebuilt)."""
    stamp = parsed.stamp
    entries = await store.entries_for_correlation(stamp.run_id)
    try:
        rebuilt = build_report(
            entries,
            run_id=stamp.run_id,
            generated_at=datetime.fromisoformat(stamp.generated_at),
            head=head,
            checkpoint=checkpoint,
            sections_version=stamp.sections_version,
            cite_root=bool(stamp.tree_head_root),
        )
    except NoRecordsError:
        return [f"content: the trail holds no record of run {stamp.run_id} up to seq {head.seq}"], None
    except ReportError as exc:
        return [f"content: the report cannot be rebuilt from the trail: {exc}"], None
    rebuilt = rebuilt.with_signature(stamp.key_id, stamp.digest, stamp.signature)
    difference = first_difference(parsed, rebuilt)
    if difference is not None:
        return [f"content: {difference}"], rebuilt
    if report_digest(rebuilt).hex() != stamp.digest:
        return ["content: the signed digest is not the digest of the report rebuilt from the trail"], rebuilt
    return [], rebuilt


def _records(report: Report) -> list[RecordView]:
    return [r for s in report.sections for r in s.records] + list(report.appendix)


async def _proof_problems(
    store: AuditRecorder, report: Report, checkpoint: Checkpoint, trusted_keys: Mapping[str, bytes]
) -> list[str]:
    """Each record of ``report`` (rebuilt from the trail, so the file's when its content
    matched) proven to be under the tree head it cites: an inclusion proof from the trail,
    checked against the checkpoint's signed root (RFC 9162), for the entry with the seq and
    payload hash the report shows; one line per record that fails, the first ten."""
    problems: list[str] = []
    failed = 0
    for view in _records(report):
        where = f"proof: seq {view.seq} (envelope {view.envelope_id})"
        try:
            proof = await store.inclusion_proof(view.envelope_id, checkpoint)
        except ProofError as exc:
            why: str | None = str(exc)
        else:
            why = proof.problem(trusted_keys)
            if why is None and (proof.seq, proof.payload_hash.hex()) != (view.seq, view.payload_hash):
                why = f"the trail proves seq {proof.seq} with payload hash {proof.payload_hash.hex()}"
        if why is not None:
            failed += 1
            if failed <= 10:
                problems.append(f"{where}: {why}")
    if failed > 10:
        problems.append(f"proof: {failed - 10} more record(s) fail their inclusion proof")
    return problems


async def verify_report_text(
    store: AuditRecorder, text: str, trusted_keys: Mapping[str, bytes]
) -> ReportCheck:
    """:func:`verify_parsed` of a report file's text; ReportFormatError when it is not a report."""
    return await verify_parsed(store, parse_report(text), trusted_keys)


async def verify_parsed(
    store: AuditRecorder, parsed: ParsedReport, trusted_keys: Mapping[str, bytes]
) -> ReportCheck:
    """Check a report against the trail: its signature, the chain head and checkpoint it
    names (and the tree head root it cites), its content rebuilt from the trail, and, when it
    cites a root, each of its records by an inclusion proof (one line per problem)."""
    stamp = parsed.stamp
    problems: list[str] = []
    signature = signature_problem(stamp, trusted_keys)
    if signature is not None:
        problems.append(signature)
    head, head_problem = await _head_point(store, stamp)
    if head_problem is not None:
        problems.append(head_problem)
    checkpoint, checkpoint_problems = await _checkpoint(store, stamp, trusted_keys)
    problems.extend(checkpoint_problems)
    if head is not None and checkpoint is not None:
        content, rebuilt = await _content_problems(store, parsed, head, checkpoint)
        problems.extend(content)
        if rebuilt is not None and stamp.tree_head_root:
            problems.extend(await _proof_problems(store, rebuilt, checkpoint, trusted_keys))
    check = ReportCheck(parsed.fmt, stamp, tuple(problems))
    log.info(
        "report.verify",
        correlation_id=stamp.run_id,
        format=parsed.fmt,
        ok=check.ok,
        problems=len(problems),
        head_seq=stamp.head_seq,
    )
    return check
