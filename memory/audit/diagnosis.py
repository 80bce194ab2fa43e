"""Naming the damage at a chain's first bad row (pure): the row the walk stopped at and the
chain's rows after it tell a moved row (inserted, deleted, swapped, moved to another chain)
from an edited one, as each leaf hash commits to the seq it was written at, so to its chain
and its place in it (:mod:`.walk` reads the rows; :class:`~.verify.ChainWalker` stops there).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from memory.chain import HASH_VERSION, payload_hash

from .chains import Layout
from .verify import VERIFY_COLUMNS, Damage, Problem, Row, chain_span, leaf_of

_VERSION, _SEQ, _STREAM, _PAYLOAD_HASH, _LEAF, _ENV, _SIG, _KEY_ID = (
    VERIFY_COLUMNS.index(c)
    for c in ("hash_version", "seq", "stream", "payload_hash", "leaf_hash", "env", "sig", "key_id")
)
_leaf = leaf_of


def _payload_digest(row: Row) -> bytes:
    return payload_hash(row[_ENV], row[_SIG], row[_KEY_ID])


def diagnose(
    expected: int,
    window: Sequence[Row],
    *,
    layout: Layout,
    chain: int,
    head_seq: int,
    redactions: Mapping[int, bytes],
) -> Problem:
    """Name what is wrong at ``expected``, the first seq of chain ``chain`` that did not verify.

    ``window`` is the chain's rows from the bad one on (a few thousand: rows moved further
    apart read as edits); ``head_seq`` the seq the chain's head row names.
    """
    row, s, step = window[0], expected, layout.chains
    if row[_SEQ] != s:
        if layout.chain_at(row[_SEQ]) != chain:
            return _foreign(s, row, layout, chain)
        last = row[_SEQ] - step
        span = chain_span(layout, chain, s, last)
        return Problem(Damage.MISSING_ROW, s, f"{span} {'is' if last == s else 'are'} not in the trail")
    if row[_VERSION] != HASH_VERSION:
        return Problem(Damage.UNSUPPORTED_HASH_VERSION, s, f"hash version {row[_VERSION]!r}")
    home = layout.chain_of(row[_STREAM])
    if home != chain:
        moved = _moved_in(s, row, layout, chain, home)
        if moved is not None:
            return moved
    if _leaf(row) != row[_LEAF]:
        return _moved_or_edited(s, window, head_seq, layout, chain)
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
    before = f"seq {s - step}" if s > step else "the genesis hash"
    return Problem(Damage.CHAIN_BROKEN, s, f"the chain hash of seq {s} does not follow from {before}")


def _foreign(s: int, row: Row, layout: Layout, chain: int) -> Problem:
    """Chain ``chain``'s rows hold ``row``, whose seq is another chain's place."""
    x, home = row[_SEQ], layout.chain_of(row[_STREAM])
    there = layout.chain_at(x)
    if _leaf(row, s) == row[_LEAF]:
        return Problem(
            Damage.ENTRY_MOVED,
            s,
            f"the entry written as seq {s} (chain {chain}) now sits at seq {x}, chain {there}'s place; "
            f"its stream {row[_STREAM]!r} belongs to chain {home}",
        )
    return Problem(
        Damage.ENTRY_MOVED,
        x,
        f"seq {x} is chain {there}'s place, but its row is stored in chain {chain}; "
        f"its stream {row[_STREAM]!r} belongs to chain {home}",
    )


def _moved_in(s: int, row: Row, layout: Layout, chain: int, home: int) -> Problem | None:
    """The entry at ``s`` is of stream of chain ``home``: moved here from there, with its
    hashes recomputed for its new place, or as it was written (at a neighbouring seq);
    None when neither (an edited stream, say)."""
    stream = row[_STREAM]
    if _leaf(row) == row[_LEAF]:
        return Problem(
            Damage.ENTRY_MOVED,
            s,
            f"the entry at seq {s} sits in chain {chain}, but its stream {stream!r} belongs to chain {home}: "
            "it was moved here with its hashes recomputed",
        )
    for origin in range(s - layout.chains + 1, s + layout.chains):
        if origin > 0 and origin != s and _leaf(row, origin) == row[_LEAF]:
            return Problem(
                Damage.ENTRY_MOVED,
                s,
                f"the entry written as seq {origin} (chain {layout.chain_at(origin)}, where its stream "
                f"{stream!r} belongs) now sits at seq {s}, in chain {chain}",
            )
    return None


def _moved_or_edited(s: int, window: Sequence[Row], head_seq: int, layout: Layout, chain: int) -> Problem:
    """The leaf of seq ``s`` is wrong: a row moved (inserted, deleted, swapped) or an edit."""
    row, step = window[0], layout.chains
    if s > head_seq:
        return Problem(Damage.INSERTED_ROW, s, f"seq {s} lies beyond the head (seq {head_seq})")
    home = _find_row_written_at(s, window[1:])
    if home is not None and _leaf(row, home[_SEQ]) == row[_LEAF]:
        return swapped(s, home[_SEQ])
    if _leaf(row, s - step) == row[_LEAF]:
        return Problem(
            Damage.INSERTED_ROW,
            s - step,
            f"a row was inserted at seq {s - step}; the entry written as seq {s - step} now sits at {s}",
        )
    if _leaf(row, s + step) == row[_LEAF]:
        return Problem(Damage.MISSING_ROW, s, f"seq {s} was deleted and the later rows renumbered")
    if home is not None:
        span = chain_span(layout, chain, s, home[_SEQ] - step)
        return Problem(
            Damage.INSERTED_ROW,
            s,
            f"rows were inserted at {span}; the entry written as seq {s} now sits at {home[_SEQ]}",
        )
    return Problem(
        Damage.HEADER_CHANGED,
        s,
        "the header fields (or payload hash) differ from what the leaf hash was computed over",
    )


def swapped(seq: int, other: int) -> Problem:
    return Problem(Damage.ROWS_SWAPPED, seq, f"the rows at seq {seq} and {other} were swapped")


def _find_row_written_at(seq: int, rows: Iterable[Row]) -> Row | None:
    for row in rows:
        if row[_VERSION] == HASH_VERSION and _leaf(row, seq) == row[_LEAF]:
            return row
    return None
