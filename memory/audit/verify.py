"""Verification of the trail, as pure code over rows: the walk of one chain, and the report
(:mod:`.walk` runs one walk per chain over a recorder's snapshot; :mod:`.anchors` checks
the signed checkpoints first, :mod:`.diagnosis` names the damage at a chain's first bad row).

A trail of ``N`` chains (:class:`~.chains.Layout`) is walked chain by chain: chain ``c``
holds the seqs ``c + 1``, ``c + 1 + N``, ... A recorder feeds the :class:`ChainWalker` of
chain ``c`` that chain's rows in ``seq`` order (the expected next seq is the last one plus
``N``), laid out as :data:`VERIFY_COLUMNS` (times as integer microseconds). The walker
recomputes every payload hash, leaf and chain hash, checks that the entry's stream belongs
to the chain, compares each with the stored one and the chain with the checkpoints (their
chain hash and, version 2, their Merkle root), grows the chain's Merkle tree from the
leaves (the nodes it completes are compared with the stored ones by the walk), and stops
at the first row that does not verify (:func:`.diagnosis.diagnose` then names the damage
from that row and the ones after it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from memory.chain import HASH_VERSION, HEADER_FIELDS, chain_hash, leaf_hash, pack, payload_hash
from memory.merkle import CompactRange, Node

from .chains import Layout

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
_VERSION, _SEQ, _STREAM = (HEADER_FIELDS.index(c) for c in ("hash_version", "seq", "stream"))
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
    ENTRY_MOVED = "entry moved to another chain"
    TAIL_TRUNCATED = "tail truncated"
    CHAIN_DROPPED = "chain dropped"
    CHAIN_REWRITTEN = "chain rewritten"
    TREE_CHANGED = "merkle tree changed"
    HEAD_MISMATCH = "head mismatch"
    CHAIN_COUNT_CHANGED = "chain count changed"
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
    """A trusted (seq, chain hash) pair from a signed checkpoint: the head of one chain."""

    seq: int
    chain_hash: bytes
    label: str
    #: The chain's Merkle root there (version 2 checkpoints; None for version 1).
    root: bytes | None = None
    #: How many chains the checkpoint signs the heads of (its layout).
    chains: int = 1


@dataclass(frozen=True, slots=True)
class ChainRow:
    """A chain's head row as the trail stores it: its size, the chain hash of its last entry
    and its Merkle tree's right edge (:class:`~memory.merkle.CompactRange` bytes; None when
    the store has not built it yet)."""

    chain: int
    size: int
    chain_hash: bytes
    tree: bytes | None


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What the walk of one chain reached."""

    chain: int
    #: The last seq verified (0: none) and its chain hash.
    last_seq: int
    chain_hash: bytes
    #: The recomputed Merkle root of the chain up to :attr:`last_seq` (None: not recomputed).
    root: bytes | None
    #: Entries walked (from the start: genesis or a checkpoint).
    entries: int
    #: The seq the chain's head row names (0: empty, or no head row).
    head_seq: int

    def to_json(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "last_seq": self.last_seq,
            "chain_hash": self.chain_hash.hex(),
            "root": self.root.hex() if self.root is not None else None,
            "entries": self.entries,
            "head_seq": self.head_seq,
        }


@dataclass(frozen=True)
class VerifyReport:
    """The outcome: ``problems`` of every chain by seq, the first one being the first bad
    seq. ``last_seq`` / ``chain_hash`` are where the chain that reached the highest seq
    stopped, ``head_seq`` the highest seq a head row names (with one chain: the chain's);
    :attr:`chains` has each chain's figures."""

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
    chains: tuple[ChainReport, ...] = ()

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
            where = f" in {len(self.chains)} chains" if len(self.chains) > 1 else ""
            return (
                f"trail intact: {self.entries_checked} entries{where} from {start} to seq {self.last_seq}, "
                f"chain {self.chain_hash.hex()[:16]}, {self.anchors_matched} checkpoint(s) matched, "
                f"{self.redacted} redacted payload(s)"
            )
        return f"trail damaged: first bad {self.first} ({len(self.problems)} problem(s))"


# -- hashing: memory.chain's formulas over a row --------------------------------------------


def _leaf(row: Row, seq: int | None = None) -> bytes:
    """The leaf hash of ``row``'s header, as if it had been written at ``seq``."""
    values = list(row[:_N_HEADER])
    if seq is not None:
        values[_SEQ] = seq
    return leaf_hash(pack(values), row[_PAYLOAD_HASH])


def chain_span(layout: Layout, chain: int, first: int, last: int) -> str:
    """``seq first..last`` (of chain ``chain`` when the trail has several)."""
    span = f"seq {first}" if first == last else f"seq {first}..{last}"
    return span if layout.chains == 1 else f"{span} of chain {chain}"


# -- the walk ---------------------------------------------------------------------------------


@dataclass
class ChainWalker:
    """Recomputes chain :attr:`chain` of a trail laid out as :attr:`layout`, row by row, from
    a trusted start (genesis or a checkpoint): :attr:`last_seq` and its chain hash, and the
    chain's :attr:`tree` there (None: the tree is not checked)."""

    chain: int
    layout: Layout
    last_seq: int
    chain_hash: bytes
    anchors: Sequence[Anchor] = ()
    redactions: Mapping[int, bytes] = field(default_factory=dict)
    tree: CompactRange | None = None
    checked: int = 0
    redacted: int = 0
    anchors_matched: int = 0
    problem: Problem | None = None
    #: The seq up to which the chain is vouched for: the start, then each anchor passed.
    vouched: int = 0
    #: The tree nodes completed since the walk last took them (:meth:`take_nodes`).
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._anchors: dict[int, list[Anchor]] = {}
        for anchor in self.anchors:
            if anchor.seq > self.last_seq:
                self._anchors.setdefault(anchor.seq, []).append(anchor)
        self._last_good = f"seq {self.last_seq}"
        self.vouched = self.last_seq
        self._homes: dict[str, int] = {}  # stream -> its chain

    @property
    def next_seq(self) -> int:
        """The seq the next row must have."""
        return self.last_seq + self.layout.chains if self.last_seq else self.layout.first_seq(self.chain)

    def feed(self, rows: Sequence[Row]) -> int | None:
        """Walk :data:`VERIFY_COLUMNS` rows; the index of the first row that does not verify, else None.

        An anchor mismatch is named here (``problem`` is set); any other bad row is
        left to :func:`.diagnosis.diagnose`, which needs the rows after it.
        """
        if not rows:
            return None
        step, chain, expected, previous = self.layout.chains, self.chain, self.next_seq, self.chain_hash
        anchors, redactions, version = self._anchors, self.redactions, HASH_VERSION
        homes, home_of = self._homes if step > 1 else None, self.layout.chain_of
        leaves: list[bytes] | None = [] if self.tree is not None else None
        # memory.chain's functions as locals: one definition, no global lookups per row
        payload_of, leaf_of, link, pack_header = payload_hash, leaf_hash, chain_hash, pack
        i_seq, i_version, i_stream, n_header = _SEQ, _VERSION, _STREAM, _N_HEADER
        i_digest, i_leaf, i_chain, i_env, i_sig, i_key_id = _PAYLOAD_HASH, _LEAF, _CHAIN, _ENV, _SIG, _KEY_ID
        for i, row in enumerate(rows):
            digest = row[i_digest]
            if row[i_seq] != expected or row[i_version] != version:
                return self._stop(i, expected, previous, leaves)
            if homes is not None:
                stream = row[i_stream]
                home = homes.get(stream)
                if home is None:
                    home = homes[stream] = home_of(stream)
                if home != chain:
                    return self._stop(i, expected, previous, leaves)
            env = row[i_env]
            if env is None:
                if redactions.get(expected) != digest:
                    return self._stop(i, expected, previous, leaves)
                self.redacted += 1
            elif payload_of(env, row[i_sig], row[i_key_id]) != digest:
                return self._stop(i, expected, previous, leaves)
            leaf = leaf_of(pack_header(row[:n_header]), digest)
            chained = link(previous, leaf)
            if leaf != row[i_leaf] or chained != row[i_chain]:
                return self._stop(i, expected, previous, leaves)
            previous = chained
            if leaves is not None:
                leaves.append(leaf)
            if expected in anchors:
                self._grow(leaves)
                self.problem = self._anchor_problem(expected, chained)
                if self.problem is not None:  # the row itself is consistent: the whole chain was redone
                    self.checked += i + 1
                    self.last_seq, self.chain_hash = expected, chained
                    return i
                self._pass_anchors(expected)
            expected += step
        self._grow(leaves)
        self.last_seq, self.chain_hash = expected - step, previous
        self.checked += len(rows)
        return None

    def _stop(self, index: int, expected: int, previous: bytes, leaves: list[bytes] | None) -> int:
        self._grow(leaves)
        self.checked += index
        if index:
            self.last_seq, self.chain_hash = expected - self.layout.chains, previous
        return index

    def _grow(self, leaves: list[bytes] | None) -> None:
        """Append the leaves walked to the tree, keeping the nodes it completes."""
        if leaves and self.tree is not None:
            self.nodes.extend(self.tree.append(leaves))
            leaves.clear()

    def take_nodes(self) -> list[Node]:
        """The tree nodes completed since the last call, in the order they completed."""
        nodes, self.nodes = self.nodes, []
        return nodes

    def _anchor_problem(self, seq: int, chained: bytes) -> Problem | None:
        """What the checkpoints at ``seq`` say against the recomputed chain hash and tree."""
        at = self._anchors[seq]
        missed = next((a for a in at if a.chain_hash != chained), None)
        if missed is not None:
            return Problem(
                Damage.CHAIN_REWRITTEN,
                seq,
                f"the recomputed chain hash at seq {seq} differs from {missed.label}: "
                f"the entries after {self._last_good} were rewritten with recomputed hashes",
            )
        root = self.tree.root() if self.tree is not None else None
        wrong = next((a for a in at if root is not None and a.root is not None and a.root != root), None)
        if wrong is not None:
            return Problem(
                Damage.TREE_CHANGED,
                seq,
                f"the recomputed Merkle root of chain {self.chain} at seq {seq} differs from the one "
                f"{wrong.label} signs, whose chain hash matches",
            )
        return None

    def _pass_anchors(self, seq: int) -> None:
        for anchor in self._anchors.pop(seq):
            self.anchors_matched += 1
            self._last_good = anchor.label
        self.vouched = seq

    @property
    def last_good(self) -> str:
        """The last anchor passed (or the start), as the findings name it."""
        return self._last_good

    def finish(self, head: ChainRow | None, max_seq: int) -> list[Problem]:
        """Checks once every row of the chain was walked (``max_seq``: the chain's highest
        stored seq): the head row and its tree, and checkpoints beyond the end."""
        end, layout, chain = self.last_seq, self.layout, self.chain
        if max_seq > end:
            return []  # the walk stopped early: the problem found there comes first
        beyond = [a for seq in sorted(self._anchors) for a in self._anchors[seq]]
        head_seq = layout.seq(chain, head.size) if head is not None else 0
        if max_seq == 0 and end == 0 and (beyond or head_seq > 0):
            return [self._dropped(beyond, head_seq)]
        after = self.next_seq
        problems = self._head_problems(head, head_seq, after)
        for anchor in beyond:
            problems.append(
                Problem(
                    Damage.TAIL_TRUNCATED,
                    after,
                    f"{self._ends()} but {anchor.label} vouches for seq {anchor.seq}",
                )
            )
        return problems + self._tree_head_problems(head)

    def _ends(self) -> str:
        where = "the trail" if self.layout.chains == 1 else f"chain {self.chain}"
        return f"{where} ends at seq {self.last_seq}"

    def _dropped(self, beyond: Sequence[Anchor], head_seq: int) -> Problem:
        last = beyond[-1] if beyond else None
        why = f"{last.label} vouches for seq {last.seq}" if last else f"its head row says seq {head_seq}"
        return chain_dropped(self.layout, self.chain, why)

    def _head_problems(self, head: ChainRow | None, head_seq: int, after: int) -> list[Problem]:
        end, layout, chain = self.last_seq, self.layout, self.chain
        name = "the head row" if layout.chains == 1 else f"chain {chain}'s head row"
        if head is None:
            return [Problem(Damage.HEAD_MISMATCH, after, f"chain {chain} has no head row")]
        if head_seq > end:
            return [Problem(Damage.TAIL_TRUNCATED, after, f"{self._ends()} but {name} says {head_seq}")]
        if head_seq < end:
            beyond = layout.seq(chain, head.size + 1)
            span = chain_span(layout, chain, beyond, end)
            return [Problem(Damage.INSERTED_ROW, beyond, f"{span} lie(s) beyond the head (seq {head_seq})")]
        if head.chain_hash != self.chain_hash:
            return [
                Problem(
                    Damage.HEAD_MISMATCH,
                    end,
                    f"{name}'s chain hash for seq {end} differs from the recomputed one",
                )
            ]
        return []

    def _tree_head_problems(self, head: ChainRow | None) -> list[Problem]:
        """The head row's tree must be the recomputed one (when both are known)."""
        if head is None or head.tree is None or self.tree is None:
            return []
        chain, layout = self.chain, self.layout
        try:
            stored = CompactRange.from_bytes(head.tree)
        except ValueError as exc:
            return [Problem(Damage.HEAD_MISMATCH, self.last_seq, f"chain {chain}'s head row tree: {exc}")]
        if stored.size > head.size:
            return [
                Problem(
                    Damage.TAIL_TRUNCATED,
                    layout.seq(chain, head.size + 1),
                    f"chain {chain}'s head row says {head.size} entries but its Merkle tree holds "
                    f"{stored.size}: the tail was cut and the head moved back",
                )
            ]
        if stored.size < head.size:
            why = f"chain {chain}'s head row says {head.size} entries but its Merkle tree holds {stored.size}"
            return [Problem(Damage.HEAD_MISMATCH, layout.seq(chain, stored.size + 1), why)]
        if stored.size == self.tree.size and stored.root() != self.tree.root():
            return [
                Problem(
                    Damage.TREE_CHANGED,
                    self.last_seq,
                    f"the Merkle root of chain {chain}'s head row differs from the one recomputed "
                    f"from its {self.tree.size} entries",
                )
            ]
        return []


# -- findings the walk and the diagnosis share ---------------------------------------------------


def chain_dropped(layout: Layout, chain: int, why: str) -> Problem:
    """Chain ``chain`` holds no entry at all, though ``why`` says it had some."""
    first = layout.first_seq(chain)
    return Problem(
        Damage.CHAIN_DROPPED,
        first,
        f"chain {chain} holds no entry (seq {first}, {first + layout.chains}, ... are gone), "
        f"but {why}: the whole chain was deleted",
    )


#: The leaf hash of a row's header as if it had been written at a given seq.
leaf_of = _leaf
#: Where a row's seq and leaf hash are.
ROW_SEQ, ROW_LEAF = _SEQ, _LEAF
