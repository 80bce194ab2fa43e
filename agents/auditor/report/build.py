"""Audit entries -> :class:`.model.Report`: a pure function of the entries, the chain head
the report is built on, the checkpoint covering it and the build parameters.

Nothing here reads a clock or a database: the same inputs give the same report,
which is what lets ``l9 report verify`` rebuild a report and compare it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

from envelope import EnvelopeError
from memory.audit import AuditRecordError, Checkpoint, StoredEntry, commit_order
from memory.summary import summarize

from .facts import Item
from .model import Declaration, Failure, Outcome, RecordView, Report, Section
from .sections import CURRENT_VERSION, FINAL_SECTION, SectionTable, table

#: Longest payload field value shown; longer ones are cut and end in an ellipsis.
MAX_FIELD = 200
INCOMPLETE = "incomplete: no completion record in the trail"


class ReportError(ValueError):
    """A report cannot be built from these inputs."""


class NoRecordsError(ReportError):
    """The trail holds no record of the run (up to the head)."""


@dataclass(frozen=True, slots=True)
class ChainPoint:
    """A position of the chain: the seq and the chain hash there."""

    seq: int
    chain_hash: bytes


@dataclass(frozen=True, slots=True)
class _Read:
    """An entry with its decoded payload (``data`` None when it cannot be read)."""

    entry: StoredEntry
    view: RecordView
    data: Mapping[str, Any] | None


def iso(moment: datetime) -> str:
    """UTC ISO-8601 with microseconds: the one spelling of times in a report."""
    if moment.tzinfo is None:
        raise ReportError(f"naive datetime {moment.isoformat()} has no time zone")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _compact(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_opaque)
    return text if len(text) <= MAX_FIELD else text[: MAX_FIELD - 1] + "…"


def _opaque(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    return str(value)


def _read(entry: StoredEntry) -> _Read:
    kind: str | None = None
    data: Mapping[str, Any] | None = None
    if entry.env is None:
        summary = "(payload redacted)"
    else:
        try:
            envelope = entry.envelope()
        except (EnvelopeError, AuditRecordError):
            summary = "(undecodable payload)"
        else:
            kind, data = envelope.kind, envelope.data
            summary = summarize(data, kind)
    view = RecordView(
        seq=entry.seq,
        envelope_id=entry.envelope_id,
        time=iso(entry.envelope_time),
        source=entry.source,
        type=entry.type,
        kind=kind,
        causation_id=entry.causation_id,
        summary=summary,
        fields={k: _compact(data[k]) for k in sorted(data)} if data is not None else {},
        redacted=entry.env is None,
        payload_hash=entry.payload_hash.hex(),
    )
    return _Read(entry, view, data)


def entries_digest(entries: Iterable[StoredEntry]) -> bytes:
    """SHA-256 over each entry's seq (8 bytes, big-endian) and chain hash, in the given order."""
    h = hashlib.sha256()
    for entry in entries:
        h.update(entry.seq.to_bytes(8, "big"))
        h.update(entry.chain_hash)
    return h.digest()


def _failure_reason(read: _Read, spec: SectionTable) -> str | None:
    rules, view = spec.failures, read.view
    if view.kind in rules.kinds:
        return f"an envelope of kind {view.kind!r}"
    for glob in rules.type_globs:
        if fnmatchcase(view.type, glob):
            return f"its type marks a failure ({glob})"
    broken = rules.data_failure(view.type, read.data) if read.data is not None else None
    if broken is not None:
        _, field, value = broken
        return f"{field} = {value!r}"
    return None


def _cite(seqs: Sequence[int]) -> str:
    return ", ".join(str(s) for s in seqs)


def derive_outcome(reads: Sequence[_Read], spec: SectionTable) -> Outcome:
    """failed / completed / incomplete, citing the seqs that say so; never more than they show."""
    failures = []
    for read in reads:
        reason = _failure_reason(read, spec)
        if reason is not None:
            v = read.view
            failures.append(
                Failure(seq=v.seq, type=v.type, source=v.source, reason=reason, summary=v.summary)
            )
    completions = tuple(
        r.view.seq for r in reads if any(fnmatchcase(r.view.type, g) for g in spec.failures.completion_globs)
    )
    unexamined = tuple(r.view.seq for r in reads if r.data is None)
    if failures:
        cited = "; ".join(f"seq {f.seq} {f.type}: {f.reason}" for f in failures)
        statement = f"failed: {len(failures)} record(s) show a failure: {cited}"
        if completions:
            statement += f". The trail also holds a completion record (seq {_cite(completions)})"
        status = "failed"
    elif completions:
        statement = f"completed: completion record at seq {_cite(completions)}; no record shows a failure"
        status = "completed"
    else:
        statement = f"{INCOMPLETE} (its last record is seq {reads[-1].view.seq})"
        status = "incomplete"
    if unexamined:
        statement += (
            f". {len(unexamined)} record(s) could not be examined (payload redacted or undecodable): "
            f"seq {_cite(unexamined)}"
        )
    return Outcome(
        status=status,
        statement=statement,
        failures=tuple(failures),
        completion_seqs=completions,
        unexamined_seqs=unexamined,
    )


def _sections(
    reads: Sequence[_Read], spec: SectionTable
) -> tuple[tuple[Section, ...], tuple[RecordView, ...]]:
    items: dict[int, list[Item]] = {s.number: [] for s in spec.sections}
    every = [Item(read.view, read.data) for read in reads]
    appendix: list[RecordView] = []
    for item in every:
        number = spec.section_of(item.view.type)
        if number is None:
            appendix.append(item.view)
        else:
            items[number].append(item)
    sections = tuple(
        Section(
            number=s.number,
            key=s.key,
            title=s.title,
            types=s.globs,
            records=tuple(i.view for i in items[s.number]),
            facts=s.facts(items[s.number], every) if s.facts is not None else (),
        )
        for s in spec.sections
    )
    return sections, tuple(appendix)


def _declaration(
    rows: Sequence[StoredEntry], head: ChainPoint, checkpoint: Checkpoint, cite_root: bool
) -> Declaration:
    root = checkpoint.root
    return Declaration(
        tree_head_root=root.hex() if cite_root and root is not None else "",
        chains=checkpoint.layout.chains,
        entries=len(rows),
        first_seq=rows[0].seq,
        last_seq=rows[-1].seq,
        entries_digest=entries_digest(rows).hex(),
        redacted_seqs=tuple(e.seq for e in rows if e.redacted),
        head_seq=head.seq,
        head_chain_hash=head.chain_hash.hex(),
        checkpoint_id=checkpoint.id,
        checkpoint_seq=checkpoint.seq,
        checkpoint_digest=checkpoint.digest.hex(),
    )


def build_report(
    entries: Iterable[StoredEntry],
    *,
    run_id: str,
    generated_at: datetime,
    head: ChainPoint,
    checkpoint: Checkpoint,
    sections_version: int = CURRENT_VERSION,
    cite_root: bool = False,
) -> Report:
    """The unsigned report of ``run_id`` from its entries up to ``head``.

    With one chain, the entries with ``seq <= head.seq``, by seq. With several (a version 2
    checkpoint over more than one chain), seqs of different chains say nothing of which came
    first: the entries are those under ``checkpoint``'s tree head, in commit order (the
    append's clock, then seq; what ``l9 tail`` shows). ``cite_root``: the declaration cites
    the checkpoint's tree head root (a version 2 checkpoint; reports before roots were cited
    are rebuilt without it). Entries of other runs are left out. NoRecordsError when none is
    left; ReportError when the checkpoint does not cover the head.
    """
    if checkpoint.seq < head.seq:
        raise ReportError(
            f"checkpoint #{checkpoint.id} (seq {checkpoint.seq}) does not cover the head seq {head.seq}"
        )
    if cite_root and checkpoint.root is None:
        version = checkpoint.version
        raise ReportError(f"checkpoint #{checkpoint.id} is version {version}: it signs no tree head")
    try:
        spec = table(sections_version)
    except KeyError as exc:
        raise ReportError(str(exc.args[0])) from None
    if checkpoint.layout.chains == 1:
        rows = sorted((e for e in entries if e.correlation_id == run_id and e.seq <= head.seq), key=_seq)
    else:
        covers = checkpoint.covers
        rows = sorted((e for e in entries if e.correlation_id == run_id and covers(e.seq)), key=commit_order)
    if not rows:
        where = f"seq {head.seq}" if checkpoint.layout.chains == 1 else f"checkpoint #{checkpoint.id}"
        raise NoRecordsError(f"no audit records for run {run_id} (up to {where})")
    reads = [_read(e) for e in rows]
    sections, appendix = _sections(reads, spec)
    if not any(s.number == FINAL_SECTION for s in sections):
        raise ReportError(f"section table v{spec.version} has no final section {FINAL_SECTION}")
    return Report(
        run_id=run_id,
        generated_at=iso(generated_at),
        sections_version=spec.version,
        sections=sections,
        appendix=appendix,
        outcome=derive_outcome(reads, spec),
        declaration=_declaration(rows, head, checkpoint, cite_root),
    )


def _seq(entry: StoredEntry) -> int:
    return entry.seq
