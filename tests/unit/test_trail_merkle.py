"""The audit trail's Merkle tree (``memory.merkle``) against RFC 9162 itself.

The reference below is written from the RFC's recursive definitions (MTH, PATH,
PROOF / SUBPROOF of section 2.1) and its verification algorithms (sections 2.1.3.2
and 2.1.4.2), over the entries' data, and calls nothing of ``memory.merkle``. The
library must build the same roots, store exactly the complete subtrees at stored
levels, make the same proofs of stored nodes alone, and accept and refuse the same
proofs as the reference.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from itertools import pairwise
from typing import TypeVar

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from memory.merkle import (
    EMPTY_ROOT,
    MAX_SIZE,
    CompactRange,
    Node,
    consistency_needs,
    consistency_proof,
    inclusion_needs,
    inclusion_proof,
    root_of,
    verify_consistency,
    verify_inclusion,
)

STRIDES = st.sampled_from([1, 2, 4, 8])
SIZES = st.integers(0, 300)
SEEDS = st.binary(max_size=4)
T = TypeVar("T")
R = TypeVar("R")


# The reference: RFC 9162 section 2.1, over the data d(0) .. d(n-1) of the entries.


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def split(n: int) -> int:
    """k, the largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d: Sequence[bytes]) -> bytes:
    if len(d) == 0:
        return sha256(b"")
    if len(d) == 1:
        return sha256(b"\x00" + d[0])
    k = split(len(d))
    return sha256(b"\x01" + mth(d[:k]) + mth(d[k:]))


# PATH and PROOF name their nodes by ``of`` (of=mth: the hashes; of=span over range(n): the
# leaves under each node).


def path(m: int, d: Sequence[T], of: Callable[[Sequence[T]], R]) -> list[R]:
    if len(d) == 1:
        return []
    k = split(len(d))
    if m < k:
        return [*path(m, d[:k], of), of(d[k:])]
    return [*path(m - k, d[k:], of), of(d[:k])]


def proof(m: int, d: Sequence[T], of: Callable[[Sequence[T]], R]) -> list[R]:
    return subproof(m, d, True, of)


def subproof(m: int, d: Sequence[T], b: bool, of: Callable[[Sequence[T]], R]) -> list[R]:
    n = len(d)
    if m == n:
        return [] if b else [of(d)]
    k = split(n)
    if m <= k:
        return [*subproof(m, d[:k], b, of), of(d[k:])]
    return [*subproof(m - k, d[k:], False, of), of(d[:k])]


def span(d: Sequence[int]) -> tuple[int, int]:
    return d[0], d[-1] + 1


def node(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right)


def ref_verify_inclusion(
    hash: bytes, leaf_index: int, tree_size: int, inclusion_path: list[bytes], root_hash: bytes
) -> bool:
    """RFC 9162 section 2.1.3.2, step by step."""
    if leaf_index >= tree_size:
        return False
    fn, sn = leaf_index, tree_size - 1
    r = hash
    for p in inclusion_path:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = node(p, r)
            if fn % 2 == 0:
                while not (fn % 2 == 1 or fn == 0):
                    fn, sn = fn // 2, sn // 2
        else:
            r = node(r, p)
        fn, sn = fn // 2, sn // 2
    return sn == 0 and r == root_hash


def ref_verify_consistency(
    first: int, second: int, first_hash: bytes, second_hash: bytes, consistency_path: list[bytes]
) -> bool:
    """RFC 9162 section 2.1.4.2 for 0 < first < second; outside it, the usual trivial cases
    (a tree is consistent with itself, the empty tree with every tree: by an empty proof)."""
    if first == 0 or first == second:
        trivial = first_hash == sha256(b"") if first == 0 else first_hash == second_hash
        return not consistency_path and trivial and (second > 0 or second_hash == sha256(b""))
    if not 0 < first < second or not consistency_path:
        return False
    if first & (first - 1) == 0:
        consistency_path = [first_hash, *consistency_path]
    fn, sn = first - 1, second - 1
    while fn % 2 == 1:
        fn, sn = fn // 2, sn // 2
    fr = sr = consistency_path[0]
    for c in consistency_path[1:]:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            if fn % 2 == 0:
                while not (fn % 2 == 1 or fn == 0):
                    fn, sn = fn // 2, sn // 2
        else:
            sr = node(sr, c)
        fn, sn = fn // 2, sn // 2
    return fr == first_hash and sr == second_hash and sn == 0


# A tree of the library, from the same data.


def entries(size: int, seed: bytes = b"") -> list[bytes]:
    return [seed + b"entry %d" % i for i in range(size)]


def leaf_hashes(data: Sequence[bytes]) -> list[bytes]:
    return [sha256(b"\x00" + d) for d in data]


def stored(data: Sequence[bytes], stride: int) -> tuple[CompactRange, dict[tuple[int, int], bytes]]:
    """The right edge of the library's tree over ``data`` and every node stored for it, the
    leaves (level 0) included: what the database holds."""
    leaves = leaf_hashes(data)
    compact = CompactRange(stride)
    store = {(0, index): leaf for index, leaf in enumerate(leaves)}
    for new in compact.append(leaves):
        assert (new.level, new.index) not in store
        store[new.level, new.index] = new.hash
    return compact, store


def fetch(
    needs: Iterable[tuple[int, int]], store: dict[tuple[int, int], bytes]
) -> dict[tuple[int, int], bytes]:
    """Only the nodes named, each of which the store must hold."""
    wanted = list(needs)
    missing = [key for key in wanted if key not in store]
    assert not missing, f"needs name nodes never stored: {missing[:5]}"
    return {key: store[key] for key in wanted}


def tampered(hashes: list[bytes], at: int) -> list[bytes]:
    flipped = bytes([hashes[at][0] ^ 1]) + hashes[at][1:]
    return [*hashes[:at], flipped, *hashes[at + 1 :]]


@st.composite
def cuts(draw: st.DrawFn) -> tuple[int, list[int]]:
    size = draw(SIZES)
    points = draw(st.lists(st.integers(0, size), max_size=6))
    return size, sorted(points)


@st.composite
def leaf_in_tree(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, 300))
    return draw(st.integers(0, size - 1)), size


@st.composite
def two_sizes(draw: st.DrawFn) -> tuple[int, int]:
    new_size = draw(SIZES)
    return draw(st.integers(0, new_size)), new_size


# The right edge and the stored nodes.


@settings(max_examples=80, deadline=None)
@given(cuts(), STRIDES, SEEDS)
def test_compact_range_roots_and_stored_nodes(sized: tuple[int, list[int]], stride: int, seed: bytes) -> None:
    size, points = sized
    data = entries(size, seed)
    leaves = leaf_hashes(data)
    whole = CompactRange(stride)
    at_once = whole.append(leaves)
    assert whole.size == size
    assert whole.root() == mth(data) == root_of(leaves)
    assert len(whole.hashes) == size.bit_count()

    expected = {
        (level, index)
        for level in range(stride, size.bit_length() + 1, stride)
        for index in range(size >> level)
    }
    assert len(at_once) == len(expected)
    assert {(new.level, new.index) for new in at_once} == expected
    for new in at_once:
        assert new.hash == mth(data[new.index << new.level : (new.index + 1) << new.level])

    # The same nodes and roots appended in pieces, saved and restored between them.
    pieces = CompactRange(stride)
    in_pieces: list[Node] = []
    for start, stop in zip([0, *points], [*points, size], strict=True):
        in_pieces += pieces.append(leaves[start:stop])
        assert pieces.root() == mth(data[:stop])
        pieces = CompactRange.from_bytes(pieces.to_bytes())
        assert pieces.size == stop
        assert pieces.stride == stride
    assert in_pieces == at_once
    assert pieces.to_bytes() == whole.to_bytes()


def test_empty_tree() -> None:
    assert CompactRange().root() == EMPTY_ROOT == root_of([]) == mth([]) == sha256(b"")
    assert CompactRange().append([]) == []
    assert CompactRange.from_bytes(CompactRange().to_bytes()).size == 0


@given(SIZES)
def test_root_of(size: int) -> None:
    data = entries(size)
    assert root_of(leaf_hashes(data)) == mth(data)


def test_malformed_input_is_refused() -> None:
    compact = CompactRange(4)
    compact.append(leaf_hashes(entries(5)))
    saved = compact.to_bytes()
    with pytest.raises(ValueError, match="leaf hash is 32 bytes"):
        compact.append([sha256(b"x"), b"short"])
    assert compact.to_bytes() == saved  # nothing of the refused batch was added
    for bad in (
        b"",
        saved[:-1],
        saved + b"\x00",
        saved[:8] + b"\x00" + saved[9:],
        saved[:8] + b"\x41" + saved[9:],
    ):
        with pytest.raises(ValueError):
            CompactRange.from_bytes(bad)
    with pytest.raises(ValueError, match="stride"):
        CompactRange(0)
    with pytest.raises(ValueError, match="no leaf 3"):
        inclusion_needs(3, 3)
    with pytest.raises(ValueError, match="no leaf -1"):
        inclusion_proof(-1, 3, {})
    with pytest.raises(ValueError, match="does not extend"):
        consistency_needs(4, 3)
    with pytest.raises(ValueError, match="does not extend"):
        consistency_proof(-1, 3, {})


# Proofs made of stored nodes.


@settings(max_examples=150, deadline=None)
@given(leaf_in_tree(), STRIDES, SEEDS)
@example((0, 1), 4, b"")
@example((255, 256), 4, b"")
@example((256, 257), 8, b"")
@example((299, 300), 2, b"")
def test_inclusion_proofs(leaf: tuple[int, int], stride: int, seed: bytes) -> None:
    index, size = leaf
    data = entries(size + 2, seed)  # two more: the trees of a wrong size
    compact, store = stored(data[:size], stride)
    root, leaf_hash = compact.root(), sha256(b"\x00" + data[index])
    needs = inclusion_needs(index, size, stride)
    assert all(level % stride == 0 for level in needs.levels)
    made = inclusion_proof(index, size, fetch(needs, store), stride)
    assert made == path(index, data[:size], mth)
    assert verify_inclusion(leaf_hash, index, size, made, root)
    assert ref_verify_inclusion(leaf_hash, index, size, made, root)

    refused: list[tuple[bytes, int, int, list[bytes], bytes]] = [
        (leaf_hash, index, size, made, sha256(b"another root")),
        (sha256(b"\x00another entry"), index, size, made, root),
        (leaf_hash, index, size, [*made, made[-1] if made else root], root),
    ]
    refused += [(leaf_hash, index, size, tampered(made, at), root) for at in range(len(made))]
    if made:
        refused.append((leaf_hash, index, size, made[:-1], root))
    refused += [
        (leaf_hash, other, size, made, root) for other in {0, index - 1, index + 1, size} - {index, -1}
    ]
    refused += [
        (leaf_hash, index, other, made, mth(data[:other])) for other in (size - 1, size + 1, size + 2)
    ]
    for case in refused:
        assert not verify_inclusion(*case), case[1:3]
        assert not ref_verify_inclusion(*case), case[1:3]
    # Another size with this tree's root: the RFC's algorithm accepts some (the signed tree
    # head binds the size to the root); the library gives its verdict every time.
    for other in (size - 1, size + 1, size + 2):
        assert verify_inclusion(leaf_hash, index, other, made, root) == ref_verify_inclusion(
            leaf_hash, index, other, made, root
        )


@settings(max_examples=150, deadline=None)
@given(two_sizes(), STRIDES, SEEDS)
@example((0, 0), 4, b"")
@example((1, 2), 1, b"")
@example((128, 300), 4, b"")
@example((255, 256), 8, b"")
@example((300, 300), 2, b"")
def test_consistency_proofs(sizes: tuple[int, int], stride: int, seed: bytes) -> None:
    old_size, new_size = sizes
    data = entries(new_size + 2, seed)
    compact, store = stored(data[:new_size], stride)
    old_root, new_root = mth(data[:old_size]), compact.root()
    needs = consistency_needs(old_size, new_size, stride)
    made = consistency_proof(old_size, new_size, fetch(needs, store), stride)
    assert made == ([] if old_size in (0, new_size) else proof(old_size, data[:new_size], mth))
    assert verify_consistency(old_size, new_size, old_root, new_root, made)
    assert ref_verify_consistency(old_size, new_size, old_root, new_root, made)

    another = sha256(b"another root")
    refused: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (old_size, new_size, another, new_root, made),
        (old_size, new_size, old_root, another, made),
        (old_size, new_size, old_root, new_root, [*made, another]),
        (new_size + 1, new_size, mth(data[: new_size + 1]), new_root, made),
    ]
    refused += [(old_size, new_size, old_root, new_root, tampered(made, at)) for at in range(len(made))]
    if made:
        refused.append((old_size, new_size, old_root, new_root, made[:-1]))
        refused.append((old_size, new_size, new_root, old_root, made))
    others = [other for other in (old_size - 1, old_size + 1) if other >= 0]
    refused += [(other, new_size, mth(data[:other]), new_root, made) for other in others]
    others = [other for other in (new_size - 1, new_size + 1) if other >= 0]
    refused += [(old_size, other, old_root, mth(data[:other]), made) for other in others]
    for case in refused:
        if trivially_consistent(*case):
            continue  # a wrong size naming a pair the empty proof rightly proves
        assert not verify_consistency(*case), case[:2]
        assert not ref_verify_consistency(*case), case[:2]
    # Other sizes with these roots: the RFC's verdict, whichever it is.
    for other_old, other_new in (
        (old_size - 1, new_size),
        (old_size, new_size + 1),
        (old_size, new_size - 1),
    ):
        if other_old >= 0 and other_new >= 0:
            case = (other_old, other_new, old_root, new_root, made)
            assert verify_consistency(*case) == ref_verify_consistency(*case), case[:2]


def trivially_consistent(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, hashes: list[bytes]
) -> bool:
    """A tree and itself, or the empty tree and any tree: what an empty proof proves."""
    if hashes or old_size > new_size:
        return False
    if old_size == 0:
        return old_root == EMPTY_ROOT and (new_size > 0 or new_root == EMPTY_ROOT)
    return old_size == new_size and old_root == new_root


def stored_below(start: int, stop: int, stride: int) -> set[tuple[int, int]]:
    """The stored nodes the node over the leaves [start, stop) is made of: its complete parts
    (the largest aligned ones first), each from the stored level at or below it."""
    nodes = set()
    while start < stop:
        level = 0
        while start % 2 ** (level + 1) == 0 and start + 2 ** (level + 1) <= stop:
            level += 1
        base = level - level % stride
        nodes |= {(base, index) for index in range(start // 2**base, (start + 2**level) // 2**base)}
        start += 2**level
    return nodes


@settings(max_examples=200, deadline=None)
@given(two_sizes(), STRIDES)
@example((0, 1_000_000), 4)
@example((999_999, 1_000_000), 4)
@example((2**40 + 3, 2**62 + 5), 4)
def test_needs_are_the_stored_nodes_under_the_proof(sizes: tuple[int, int], stride: int) -> None:
    old_size, new_size = sizes
    trivial = old_size in (0, new_size)
    spans = [] if trivial else proof(old_size, range(new_size), span)
    cases = [(consistency_needs(old_size, new_size, stride), spans)]
    if old_size < new_size:
        cases.append((inclusion_needs(old_size, new_size, stride), path(old_size, range(new_size), span)))
    for needs, spans in cases:
        expected: set[tuple[int, int]] = set()
        for start, stop in spans:
            expected |= stored_below(start, stop, stride)
        named = list(needs)
        assert len(named) == len(needs) == len(set(named))
        assert set(named) == expected
        for level, runs in needs.levels.items():
            assert level % stride == 0
            assert all(len(run) > 0 and run.step == 1 for run in runs)
            assert all(left.stop < right.start for left, right in pairwise(runs))


@settings(max_examples=40, deadline=None)
@given(two_sizes(), STRIDES)
def test_a_missing_node_is_named(sizes: tuple[int, int], stride: int) -> None:
    old_size, new_size = sizes
    _, store = stored(entries(new_size), stride)
    if old_size < new_size:  # leaf old_size of the new tree
        wanted = [*inclusion_needs(old_size, new_size, stride)]
        for level, index in wanted[:: max(1, len(wanted) // 3)]:
            fetched = fetch(wanted, store)
            del fetched[level, index]
            with pytest.raises(ValueError, match=rf"\(level {level}, index {index}\) was not fetched"):
                inclusion_proof(old_size, new_size, fetched, stride)
    wanted = [*consistency_needs(old_size, new_size, stride)]
    if wanted:
        fetched = fetch(wanted, store)
        level, index = wanted[-1]
        fetched[level, index] = b"short"
        with pytest.raises(ValueError, match=rf"\(level {level}, index {index}\) is 5 bytes"):
            consistency_proof(old_size, new_size, fetched, stride)


# Hostile input: a bool, never an exception.

HASHES = st.binary(min_size=32, max_size=32)
ANY_HASH = st.one_of(HASHES, st.binary(max_size=40), st.none(), st.integers(), st.text(max_size=3))
ANY_SIZE = st.one_of(st.integers(-3, 70), st.integers(-(2**70), 2**70), st.none(), st.floats(), st.booleans())
ANY_PROOF = st.one_of(st.lists(ANY_HASH, max_size=80), st.lists(HASHES, max_size=10), st.binary(max_size=64))


def well_formed(sizes: Sequence[object], hashes: Sequence[object], proof: object) -> bool:
    """Input in the RFC's own domain, where the reference verifiers give the answer."""
    in_range = all(type(size) is int and 0 <= size <= MAX_SIZE for size in sizes)
    return (
        in_range
        and isinstance(proof, list)
        and all(isinstance(hash, bytes) and len(hash) == 32 for hash in [*hashes, *proof])
    )


@settings(max_examples=300, deadline=None)
@given(ANY_HASH, ANY_SIZE, ANY_SIZE, ANY_PROOF, ANY_HASH)
def test_hostile_inclusion(leaf: object, index: object, size: object, hashes: object, root: object) -> None:
    verdict = verify_inclusion(leaf, index, size, hashes, root)  # type: ignore[arg-type]
    assert type(verdict) is bool
    if well_formed([index, size], [leaf, root], hashes):
        assert verdict == ref_verify_inclusion(leaf, index, size, hashes, root)  # type: ignore[arg-type]
    else:  # without a proof of 32-byte hashes, only the tree of one leaf, that leaf its root
        assert not verdict or (not hashes and leaf == root and index == 0 and size == 1)


@settings(max_examples=300, deadline=None)
@given(ANY_SIZE, ANY_SIZE, ANY_HASH, ANY_HASH, ANY_PROOF)
def test_hostile_consistency(
    old_size: object, new_size: object, old_root: object, new_root: object, hashes: object
) -> None:
    verdict = verify_consistency(old_size, new_size, old_root, new_root, hashes)  # type: ignore[arg-type]
    assert type(verdict) is bool
    if well_formed([old_size, new_size], [old_root, new_root], hashes):
        assert verdict == ref_verify_consistency(old_size, new_size, old_root, new_root, hashes)  # type: ignore[arg-type]
    else:  # without a proof of 32-byte hashes, only the trivial cases
        assert not verdict or not hashes


# A trail of a realistic size.


def test_a_large_trail() -> None:
    size, stride = 100_000, 4
    data = entries(size)
    leaves = leaf_hashes(data)
    compact = CompactRange(stride)
    store = {(0, index): leaf for index, leaf in enumerate(leaves)}
    roots = {}
    for start in range(0, size, 7919):
        for new in compact.append(leaves[start : start + 7919]):
            store[new.level, new.index] = new.hash
        roots[compact.size] = compact.root()
        compact = CompactRange.from_bytes(compact.to_bytes())
    assert compact.size == size
    assert compact.root() == roots[size] == root_of(leaves)
    assert len(store) - size == sum(size >> level for level in (4, 8, 12, 16))

    for index in (0, 4095, 65_536, 99_999):
        made = inclusion_proof(index, size, fetch(inclusion_needs(index, size), store))
        assert verify_inclusion(leaves[index], index, size, made, roots[size])
        assert ref_verify_inclusion(leaves[index], index, size, made, roots[size])
    assert inclusion_proof(31_337, size, fetch(inclusion_needs(31_337, size), store)) == path(
        31_337, data, mth
    )

    for old_size in (7919, 7919 * 8, 7919 * 11):
        made = consistency_proof(old_size, size, fetch(consistency_needs(old_size, size), store))
        assert verify_consistency(old_size, size, roots[old_size], roots[size], made)
        assert ref_verify_consistency(old_size, size, roots[old_size], roots[size], made)
        assert not verify_consistency(old_size, size, roots[old_size + 7919], roots[size], made)
