"""Verification of the trail, as pure code over rows: the chain walk, the diagnosis
of the first bad row, and the checks of signed checkpoints (:mod:`.walk` runs them
over a recorder's snapshot).

A recorder feeds :class:`ChainWalker` rows in ``seq`` order, laid out as
:data:`VERIFY_COLUMNS` (times as integer microseconds). The walker recomputes
every payload hash, leaf and chain hash, compares each with the stored one and
the chain with the checkpoints, and stops at the first row that does not verify;
:func:`diagnose` then names the damage from that row and the ones after it (a
moved row is recognised by its leaf hash, which commits to the seq it was
written at).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from memory.chain import HASH_VERSION, HEADER_FIELDS, chain_hash, leaf_hash, pack, payload_hash

from .checkpoints import Checkpoint

#: Row layout (by column name) the store feeds the walker: the canonical header first.
VERIFY_COLUMNS: tuple[str, ...] = (
    *HEADER_FIELDS,
    "payload_hash",
    "leaf_hash",
    "chain_hash",
    "env",
    "sig",
    "key_id",
)
_N_HEADER = len(HEADER_FIELDS)
_VERSION, _SEQ = HEADER_FIELDS.index("hash_version"), HEADER_FIELDS.index("seq")
_PAYLOAD_HASH, _LEAF, _CHAIN, _ENV, _SIG, _KEY_ID = (
    VERIFY_COLUMNS.index(c) for c in ("payload_hash", "leaf_hash", "chain_hash", "env", "sig", "key_id")
)
Row = Sequence[Any]


class Damage(StrEnum):
    """The kinds of damage verification names."""

    PAYLOAD_CHANGED = "payload changed"
    PAYLOAD_MISSING = "payload missing"
    HEADER_CHANGED = "header changed"
    CHAIN_BROKEN = "chain link broken"
    MISSING_ROW = "missing row"
    INSERTED_ROW = "inserted row"
    ROWS_SWAPPED = "rows swapped"
    TAIL_TRUNCATED = "tail truncated"
    CHAIN_REWRITTEN = "chain rewritten"
    HEAD_MISMATCH = "head mismatch"
    UNSUPPORTED_HASH_VERSION = "unsupported hash version"
    BAD_CHECKPOINT_SIGNATURE = "bad checkpoint signature"
    CHECKPOINT_LINK_BROKEN = "checkpoint link broken"
    UNKNOWN_CHECKPOINT = "unknown checkpoint"
    ROLLED_BACK = "trail rolled back"
    CHECKPOINT_FILE_MISSING = "checkpoint file missing"
    CHECKPOINT_FILE_MISNAMED = "checkpoint file misnamed"


@dataclass(frozen=True, slots=True)
class Problem:
    kind: Damage
    seq: int
    detail: str

    def __str__(self) -> str:
        return f"seq {self.seq}: {self.kind}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Anchor:
    """A trusted (seq, chain hash) pair from a signed checkpoint."""

    seq: int
    chain_hash: bytes
    label: str


@dataclass(frozen=True)
class VerifyReport:
    """The outcome: ``problems`` by seq, the first one being the first bad seq."""

    problems: tuple[Problem, ...]
    entries_checked: int
    last_seq: int
    chain_hash: bytes
    head_seq: int
    redacted: int
    anchors_matched: int
    started_from: int | None
    signatures_checked: bool
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    @property
    def entries_per_s(self) -> float:
        return self.entries_checked / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        start = f"checkpoint #{self.started_from}" if self.started_from else "genesis"
        if self.first is None:
            return (
                f"trail intact: {self.entries_checked} entries from {start} to seq {self.last_seq}, "
                f"chain {self.chain_hash.hex()[:16]}, {self.anchors_matched} checkpoint(s) matched, "
                f"{self.redacted} redacted payload(s)"
            )
        return f"trail damaged: first bad {self.first} ({len(self.problems)} problem(s))"


# -- hashing: memory.chain's formulas over a row --------------------------------------------


def _payload_digest(row: Row) -> bytes:
    return payload_hash(row[_ENV], row[_SIG], row[_KEY_ID])


def _leaf(row: Row, seq: int | None = None) -> bytes:
    """The leaf hash of ``row``'s header, as if it had been written at ``seq``."""
    values = list(row[:_N_HEADER])
    if seq is not None:
        values[_SEQ] = seq
    return leaf_hash(pack(values), row[_PAYLOAD_HASH])


# -- the walk ---------------------------------------------------------------------------------


@dataclass
class ChainWalker:
    """Recomputes the chain row by row from a trusted start (genesis or a checkpoint)."""

    last_seq: int
    chain_hash: bytes
    anchors: Sequence[Anchor] = ()
    redactions: Mapping[int, bytes] = field(default_factory=dict)
    checked: int = 0
    redacted: int = 0
    anchors_matched: int = 0
    problem: Problem | None = None

    def __post_init__(self) -> None:
        self._anchors: dict[int, list[Anchor]] = {}
        for anchor in self.anchors:
            if anchor.seq > self.last_seq:
                self._anchors.setdefault(anchor.seq, []).append(anchor)
        self._last_good = f"seq {self.last_seq}"

    def feed(self, rows: Sequence[Row]) -> int | None:
        """Walk :data:`VERIFY_COLUMNS` rows; the index of the first row that does not verify, else None.

        An anchor mismatch is named here (``problem`` is set); any other bad row is
        left to :func:`diagnose`, which needs the rows after it.
        """
        expected, previous = self.last_seq + 1, self.chain_hash
        anchors, redactions, version = self._anchors, self.redactions, HASH_VERSION
        # memory.chain's functions as locals: one definition, no global lookups per row
        payload_of, leaf_of, link, pack_header = payload_hash, leaf_hash, chain_hash, pack
        i_seq, i_version, n_header = _SEQ, _VERSION, _N_HEADER
        i_digest, i_leaf, i_chain, i_env, i_sig, i_key_id = _PAYLOAD_HASH, _LEAF, _CHAIN, _ENV, _SIG, _KEY_ID
        for i, row in enumerate(rows):
            digest = row[i_digest]
            if row[i_seq] != expected or row[i_version] != version:
                return self._stop(i, expected, previous)
            env = row[i_env]
            if env is None:
                if redactions.get(expected) != digest:
                    return self._stop(i, expected, previous)
                self.redacted += 1
            elif payload_of(env, row[i_sig], row[i_key_id]) != digest:
                return self._stop(i, expected, previous)
            leaf = leaf_of(pack_header(row[:n_header]), digest)
            chained = link(previous, leaf)
            if leaf != row[i_leaf] or chained != row[i_chain]:
                return self._stop(i, expected, previous)
            previous = chained
            if expected in anchors:
                missed = self._anchor_missed(expected, chained)
                if missed is not None:  # the row itself is consistent: the whole chain was redone
                    self.problem = self._rewritten(expected, missed)
                    self.checked += i + 1
                    self.last_seq, self.chain_hash = expected, chained
                    return i
                self._pass_anchors(expected)
            expected += 1
        self.last_seq, self.chain_hash = expected - 1, previous
        self.checked += len(rows)
        return None

    def _stop(self, index: int, expected: int, previous: bytes) -> int:
        self.checked += index
        self.last_seq, self.chain_hash = expected - 1, previous
        return index

    def _anchor_missed(self, seq: int, chained: bytes) -> Anchor | None:
        """The first checkpoint at ``seq`` whose chain hash is not ``chained``."""
        return next((a for a in self._anchors[seq] if a.chain_hash != chained), None)

    def _pass_anchors(self, seq: int) -> None:
        for anchor in self._anchors.pop(seq):
            self.anchors_matched += 1
            self._last_good = anchor.label

    def _rewritten(self, seq: int, anchor: Anchor) -> Problem:
        return Problem(
            Damage.CHAIN_REWRITTEN,
            seq,
            f"the recomputed chain hash at seq {seq} differs from {anchor.label}: "
            f"the entries after {self._last_good} were rewritten with recomputed hashes",
        )

    def finish(self, head_seq: int, head_chain: bytes, max_seq: int) -> list[Problem]:
        """Checks once every row was walked: the head row, and checkpoints beyond the end."""
        end, problems = self.last_seq, list[Problem]()
        if max_seq > end:
            return problems  # the walk stopped early: the problem found there comes first
        if head_seq > end:
            problems.append(
                Problem(
                    Damage.TAIL_TRUNCATED,
                    end + 1,
                    f"the trail ends at seq {end} but its head says {head_seq}",
                )
            )
        elif head_seq < end:
            problems.append(
                Problem(
                    Damage.INSERTED_ROW,
                    head_seq + 1,
                    f"rows {head_seq + 1}..{end} lie beyond the head (seq {head_seq})",
                )
            )
        elif head_chain != self.chain_hash:
            problems.append(
                Problem(
                    Damage.HEAD_MISMATCH,
                    end,
                    f"the head row's chain hash for seq {end} differs from the recomputed one",
                )
            )
        for seq in sorted(self._anchors):
            for anchor in self._anchors[seq]:
                problems.append(
                    Problem(
                        Damage.TAIL_TRUNCATED,
                        end + 1,
                        f"the trail ends at seq {end} but {anchor.label} vouches for seq {seq}",
                    )
                )
        return problems


# -- naming the damage at the first bad row -----------------------------------------------------


def diagnose(
    expected: int, previous: bytes, window: Sequence[Row], *, head_seq: int, redactions: Mapping[int, bytes]
) -> Problem:
    """Name what is wrong at ``expected``, the first seq that did not verify.

    ``previous`` is the verified chain hash of ``expected - 1``; ``window`` the rows
    from the bad one on (a few thousand: rows moved further apart read as edits).
    """
    row, s = window[0], expected
    if row[_SEQ] != s:
        return Problem(Damage.MISSING_ROW, s, f"seq {s}..{row[_SEQ] - 1} are not in the trail")
    if row[_VERSION] != HASH_VERSION:
        return Problem(Damage.UNSUPPORTED_HASH_VERSION, s, f"hash version {row[_VERSION]!r}")
    if _leaf(row) != row[_LEAF]:
        return _moved_or_edited(s, window, head_seq)
    env = row[_ENV]
    if env is None and redactions.get(s) != row[_PAYLOAD_HASH]:
        why = "no redaction record" if s not in redactions else "a redaction record for another payload"
        return Problem(Damage.PAYLOAD_MISSING, s, f"the payload is gone and there is {why}")
    if env is not None and _payload_digest(row) != row[_PAYLOAD_HASH]:
        return Problem(
            Damage.PAYLOAD_CHANGED,
            s,
            "the stored envelope bytes/signature do not match the payload hash the entry was chained with",
        )
    return Problem(Damage.CHAIN_BROKEN, s, f"the chain hash of seq {s} does not follow from seq {s - 1}")


def _moved_or_edited(s: int, window: Sequence[Row], head_seq: int) -> Problem:
    """The leaf of seq ``s`` is wrong: a row moved (inserted, deleted, swapped) or an edit."""
    row = window[0]
    if s > head_seq:
        return Problem(Damage.INSERTED_ROW, s, f"seq {s} lies beyond the head (seq {head_seq})")
    home = _find_row_written_at(s, window[1:])
    if home is not None and _leaf(row, home[_SEQ]) == row[_LEAF]:
        return swapped(s, home[_SEQ])
    if _leaf(row, s - 1) == row[_LEAF]:
        return Problem(
            Damage.INSERTED_ROW,
            s - 1,
            f"a row was inserted at seq {s - 1}; the entry written as seq {s - 1} now sits at {s}",
        )
    if _leaf(row, s + 1) == row[_LEAF]:
        return Problem(Damage.MISSING_ROW, s, f"seq {s} was deleted and the later rows renumbered")
    if home is not None:
        return Problem(
            Damage.INSERTED_ROW,
            s,
            f"rows were inserted at seq {s}..{home[_SEQ] - 1}; "
            f"the entry written as seq {s} now sits at {home[_SEQ]}",
        )
    return Problem(
        Damage.HEADER_CHANGED,
        s,
        "the header fields (or payload hash) differ from what the leaf hash was computed over",
    )


def swapped(seq: int, other: int) -> Problem:
    return Problem(Damage.ROWS_SWAPPED, seq, f"the rows at seq {seq} and {other} were swapped")


#: The leaf hash of a row's header as if it had been written at a given seq.
leaf_of = _leaf
#: Where a row's seq and leaf hash are.
ROW_SEQ, ROW_LEAF = _SEQ, _LEAF


def _find_row_written_at(seq: int, rows: Iterable[Row]) -> Row | None:
    for row in rows:
        if row[_VERSION] == HASH_VERSION and _leaf(row, seq) == row[_LEAF]:
            return row
    return None


# -- checkpoints ----------------------------------------------------------------------------------


@dataclass
class CheckpointCheck:
    """What the checkpoints say before the walk: problems, trusted anchors, where to start."""

    problems: list[Problem] = field(default_factory=list)
    anchors: list[Anchor] = field(default_factory=list)
    start: Checkpoint | None = None


def check_checkpoints(
    in_trail: Sequence[Checkpoint],
    files: Sequence[tuple[str, Checkpoint]] | None,
    presented: tuple[str, Checkpoint] | None,
    trusted_keys: Mapping[str, bytes] | None,
) -> CheckpointCheck:
    """Signatures and links of the trail's checkpoints; files (``(path, checkpoint)``) must
    be checkpoints of this trail, each in the file its id names, and every checkpoint of the
    trail must have its file (``files`` None: no directory of files, nothing expected).
    Without ``trusted_keys`` signatures are not checked."""
    out = CheckpointCheck()
    if files is not None:
        _check_files(in_trail, files, out.problems)
    files = files or []
    previous: Checkpoint | None = None
    for cp in sorted(in_trail, key=lambda c: c.id):
        why = _untrusted(cp, trusted_keys)
        if why is not None:
            out.problems.append(Problem(Damage.BAD_CHECKPOINT_SIGNATURE, cp.seq, why))
        elif (link := cp.link_problem(previous)) is not None:
            out.problems.append(Problem(Damage.CHECKPOINT_LINK_BROKEN, cp.seq, link))
        else:
            out.anchors.extend(anchors_of(cp, f"checkpoint #{cp.id}"))
        previous = cp
    by_id = {cp.id: cp for cp in in_trail}
    newest = max(in_trail, key=lambda c: c.id, default=None)
    outside = {(cp.id, cp.digest): (path, cp) for path, cp in [*files, *([presented] if presented else [])]}
    for path, cp in outside.values():
        trusted = _check_outside(cp, path, by_id, newest, trusted_keys, out.problems)
        if trusted:
            out.anchors.extend(anchors_of(cp, f"checkpoint file {path}"))
    if presented is not None and _untrusted(presented[1], trusted_keys) is None:
        out.start = presented[1]
    out.anchors = list({(a.seq, a.chain_hash): a for a in out.anchors}.values())
    return out


def anchors_of(cp: Checkpoint, label: str) -> list[Anchor]:
    """The (seq, chain hash) pairs checkpoint ``cp`` vouches for: one per non-empty chain."""
    return [Anchor(seq, chained, label) for seq, chained in cp.chain_heads().values()]


def _check_files(
    in_trail: Sequence[Checkpoint], files: Sequence[tuple[str, Checkpoint]], problems: list[Problem]
) -> None:
    """Each file holds the checkpoint its name gives; each checkpoint of the trail has its file.
    A newer checkpoint's file overwritten with an older one's content would otherwise read as
    that older checkpoint, and the trail rolled back to it would pass; with the files gone, the
    copy outside the database that detects a rollback is gone."""
    names = set()
    for path, cp in files:
        name = Path(path).name
        names.add(name)
        if name != cp.file_name():
            problems.append(
                Problem(
                    Damage.CHECKPOINT_FILE_MISNAMED,
                    cp.seq,
                    f"{path} holds checkpoint #{cp.id} (seq {cp.seq}), which belongs in {cp.file_name()}: "
                    "a file overwritten with another checkpoint's content hides a rollback",
                )
            )
    where = str(Path(files[0][0]).parent) if files else "the checkpoint directory"
    for cp in in_trail:
        if cp.file_name() not in names:
            problems.append(
                Problem(
                    Damage.CHECKPOINT_FILE_MISSING,
                    cp.seq,
                    f"checkpoint #{cp.id} (seq {cp.seq}) has no file ({cp.file_name()}) in {where}: "
                    "the copy outside the database is gone, so a rollback to before it goes unseen",
                )
            )


def _untrusted(cp: Checkpoint, trusted_keys: Mapping[str, bytes] | None) -> str | None:
    return None if trusted_keys is None else cp.signature_problem(trusted_keys)


def _check_outside(
    cp: Checkpoint,
    path: str,
    by_id: Mapping[int, Checkpoint],
    newest: Checkpoint | None,
    trusted_keys: Mapping[str, bytes] | None,
    problems: list[Problem],
) -> bool:
    """Record what is wrong with a checkpoint held outside the trail; True when it is an anchor."""
    why = _untrusted(cp, trusted_keys)
    if why is not None:
        problems.append(Problem(Damage.BAD_CHECKPOINT_SIGNATURE, cp.seq, f"{path}: {why}"))
        return False
    mine = by_id.get(cp.id)
    if mine is None and (newest is None or newest.id < cp.id):
        have = f"#{newest.id} (seq {newest.seq})" if newest else "none"
        problems.append(
            Problem(
                Damage.ROLLED_BACK,
                cp.seq,
                f"{path}: checkpoint #{cp.id} (seq {cp.seq}) "
                f"is not in the trail, whose newest checkpoint is {have}: "
                "the trail presents an older state than this checkpoint vouches for",
            )
        )
    elif mine is None or mine.digest != cp.digest:
        problems.append(
            Problem(
                Damage.UNKNOWN_CHECKPOINT,
                cp.seq,
                f"{path}: the trail's checkpoint #{cp.id} is not this one (another trail, or replaced)",
            )
        )
    return True
