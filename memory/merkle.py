"""The Merkle tree of an audit chain (RFC 9162 section 2.1): pure functions over bytes, no I/O.

Leaf ``i`` of a chain's tree is the ``leaf_hash`` of its entry at ``seq = i + 1``; an inner
node is ``SHA-256(0x01 || left || right)`` (:func:`envelope._merkle.node_hash`). The tree of
``n`` leaves is RFC 9162's MTH: its left subtree holds the largest power of two smaller than
``n`` leaves. The empty tree's root is ``SHA-256("")``.

Storage. Node ``(level, index)`` is the complete subtree over the leaves
``[index * 2**level, (index + 1) * 2**level)``. Only complete subtrees are stored, and only at
the levels that are multiples of ``stride`` (level 0 is the leaves, kept in the entries
table). :class:`CompactRange`, the right edge of the tree, is all that is needed to extend it:
its :meth:`~CompactRange.append` returns the nodes to store, its :meth:`~CompactRange.root` the
root to sign.

Proofs. Every node of an RFC 9162 proof is a subtree of the tree: complete, or the incomplete
right edge. A complete one at a stored level is fetched; at another level it is computed from
the ``2**k`` nodes of the nearest stored level below; an incomplete one is the fold of its
complete parts. :func:`inclusion_needs` and :func:`consistency_needs` name the stored nodes a
proof is made of (a query per level), :func:`inclusion_proof` and :func:`consistency_proof`
make it of what was fetched, and :func:`verify_inclusion` and :func:`verify_consistency` are the
algorithms of RFC 9162 sections 2.1.3.2 and 2.1.4.2.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain

from envelope._merkle import node_hash, tree_root
from memory.chain import HASH_SIZE

__all__ = [
    "DEFAULT_STRIDE",
    "EMPTY_ROOT",
    "MAX_SIZE",
    "CompactRange",
    "Needs",
    "Node",
    "consistency_needs",
    "consistency_proof",
    "inclusion_needs",
    "inclusion_proof",
    "root_of",
    "verify_consistency",
    "verify_inclusion",
]

DEFAULT_STRIDE = 4
#: MTH({}) of RFC 9162: the root of the tree of no leaves.
EMPTY_ROOT = hashlib.sha256(b"").digest()
#: The most leaves a tree can hold: its right edge is then at most 64 hashes.
MAX_SIZE = 2**64 - 1
_HEADER = 9  # CompactRange.to_bytes: the size (8 bytes, big-endian), the stride (1 byte)

_Span = tuple[int, int]
"""The leaves ``[start, stop)`` under one node of a proof."""


@dataclass(frozen=True, slots=True)
class Node:
    """A stored node: the complete subtree over ``[index * 2**level, (index + 1) * 2**level)``."""

    level: int
    index: int
    hash: bytes


@dataclass(frozen=True)
class Needs:
    """The stored nodes a proof is made of: for each stored level (0 = the leaves, whose index
    is the entry's seq - 1), ascending disjoint runs of node indexes."""

    levels: dict[int, tuple[range, ...]]

    def __len__(self) -> int:
        return sum(len(run) for runs in self.levels.values() for run in runs)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """Every ``(level, index)`` named, level by level."""
        for level, runs in sorted(self.levels.items()):
            for run in runs:
                for index in run:
                    yield level, index


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """The RFC 9162 root over ``leaf_hashes`` (:data:`EMPTY_ROOT` for none)."""
    return tree_root(leaf_hashes) if leaf_hashes else EMPTY_ROOT


def _check_stride(stride: int) -> None:
    if not 1 <= stride <= 64:
        raise ValueError(f"a stride is between 1 and 64 levels, got {stride}")


class CompactRange:
    """The right edge of a tree of :attr:`size` leaves: the roots of its maximal complete
    subtrees, left to right (one per bit set in the size), as in Trillian's compact ranges."""

    def __init__(self, stride: int = DEFAULT_STRIDE) -> None:
        _check_stride(stride)
        self._stride = stride
        self._size = 0
        self._hashes: list[bytes] = []

    @property
    def size(self) -> int:
        return self._size

    @property
    def stride(self) -> int:
        return self._stride

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """The roots of the maximal complete subtrees, the largest (leftmost) first."""
        return tuple(self._hashes)

    def append(self, leaf_hashes: Iterable[bytes]) -> list[Node]:
        """Add leaves to the right; every node that became complete at a stored level above
        the leaves (a positive multiple of the stride), in the order they completed."""
        leaves = list(leaf_hashes)
        for leaf in leaves:
            if len(leaf) != HASH_SIZE:
                raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, got {len(leaf)}")
        if len(leaves) > MAX_SIZE - self._size:
            raise ValueError(f"a tree holds at most {MAX_SIZE} leaves")
        hashes, size, stride = self._hashes, self._size, self._stride
        stored: list[Node] = []
        for leaf in leaves:
            node, level = leaf, 0
            while size >> level & 1:  # the subtree ending here completes its left neighbour's pair
                node = node_hash(hashes.pop(), node)
                level += 1
                if level % stride == 0:
                    stored.append(Node(level, ((size + 1) >> level) - 1, node))
            hashes.append(node)
            size += 1
        self._size = size
        return stored

    def root(self) -> bytes:
        """The RFC 9162 root of the leaves so far."""
        if not self._hashes:
            return EMPTY_ROOT
        root = self._hashes[-1]
        for left in reversed(self._hashes[:-1]):
            root = node_hash(left, root)
        return root

    def to_bytes(self) -> bytes:
        """The size (8 bytes, big-endian), the stride (1 byte), then :attr:`hashes`."""
        return self._size.to_bytes(8, "big") + bytes((self._stride,)) + b"".join(self._hashes)

    @classmethod
    def from_bytes(cls, data: bytes) -> CompactRange:
        """The range :meth:`to_bytes` wrote; ValueError for bytes it cannot have written."""
        data = bytes(data)
        if len(data) < _HEADER:
            raise ValueError(f"a compact range is at least {_HEADER} bytes, got {len(data)}")
        size = int.from_bytes(data[:8], "big")
        expected = _HEADER + HASH_SIZE * size.bit_count()
        if len(data) != expected:
            raise ValueError(f"a compact range of {size} leaves is {expected} bytes, got {len(data)}")
        compact = cls(data[8])
        compact._size = size
        compact._hashes = [data[at : at + HASH_SIZE] for at in range(_HEADER, len(data), HASH_SIZE)]
        return compact


# Planning: the proof as leaf ranges, each range as complete subtrees, each subtree as the
# stored nodes below it.


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (> 1): the size of MTH's left subtree."""
    return 1 << ((n - 1).bit_length() - 1)


def _path_ranges(index: int, size: int) -> list[_Span]:
    """The subtrees of PATH(index, D[size]) (RFC 9162 section 2.1.3.1), from the leaf up."""
    ranges: list[_Span] = []
    start, stop = 0, size
    while stop - start > 1:
        middle = start + _split(stop - start)
        if index < middle:
            ranges.append((middle, stop))
            stop = middle
        else:
            ranges.append((start, middle))
            start = middle
    ranges.reverse()
    return ranges


def _proof_ranges(old_size: int, new_size: int) -> list[_Span]:
    """The subtrees of PROOF(old_size, D[new_size]) (RFC 9162 section 2.1.4.1), in its order."""
    if old_size in (0, new_size):
        return []
    ranges: list[_Span] = []
    start, stop, whole = 0, new_size, True  # whole: SUBPROOF's b, the subtree is the old tree
    while old_size != stop:
        middle = start + _split(stop - start)
        if old_size <= middle:
            ranges.append((middle, stop))
            stop = middle
        else:
            ranges.append((start, middle))
            start, whole = middle, False
    if not whole:
        ranges.append((start, stop))
    ranges.reverse()
    return ranges


def _parts(start: int, stop: int) -> list[tuple[int, int]]:
    """The complete subtrees ``(level, index)`` that make up the subtree over ``[start, stop)``,
    left to right: one per bit set in its width, the largest first."""
    parts = []
    for level in reversed(range((stop - start).bit_length())):
        if (stop - start) >> level & 1:
            parts.append((level, start >> level))
            start += 1 << level
    return parts


def _sources(level: int, index: int, stride: int) -> tuple[int, range]:
    """The stored level below (or at) a complete subtree and the nodes there it is made of."""
    below = level - level % stride
    span = 1 << (level - below)
    return below, range(index * span, (index + 1) * span)


def _needs(ranges: list[_Span], stride: int) -> Needs:
    wanted: dict[int, list[range]] = {}
    for start, stop in ranges:
        for level, index in _parts(start, stop):
            below, run = _sources(level, index, stride)
            wanted.setdefault(below, []).append(run)
    return Needs({level: _merge(runs) for level, runs in sorted(wanted.items())})


def _merge(runs: list[range]) -> tuple[range, ...]:
    merged: list[range] = []
    for run in sorted(runs, key=lambda r: r.start):
        if merged and run.start <= merged[-1].stop:
            merged[-1] = range(merged[-1].start, max(merged[-1].stop, run.stop))
        else:
            merged.append(run)
    return tuple(merged)


def _fetch(fetched: Mapping[tuple[int, int], bytes], level: int, index: int) -> bytes:
    node = fetched.get((level, index))
    if node is None:
        raise ValueError(f"stored node (level {level}, index {index}) was not fetched")
    if len(node) != HASH_SIZE:
        raise ValueError(f"stored node (level {level}, index {index}) is {len(node)} bytes, not {HASH_SIZE}")
    return node


def _subtree(level: int, index: int, fetched: Mapping[tuple[int, int], bytes], stride: int) -> bytes:
    """The hash of complete subtree ``(level, index)``, from the stored nodes below it."""
    below, run = _sources(level, index, stride)
    nodes = [_fetch(fetched, below, i) for i in run]
    while len(nodes) > 1:
        nodes = [node_hash(nodes[i], nodes[i + 1]) for i in range(0, len(nodes), 2)]
    return nodes[0]


def _assemble(ranges: list[_Span], fetched: Mapping[tuple[int, int], bytes], stride: int) -> list[bytes]:
    proof = []
    for start, stop in ranges:
        parts = [_subtree(level, index, fetched, stride) for level, index in _parts(start, stop)]
        node = parts.pop()
        while parts:
            node = node_hash(parts.pop(), node)
        proof.append(node)
    return proof


def _check_inclusion(index: int, size: int, stride: int) -> None:
    _check_stride(stride)
    if not 0 <= index < size <= MAX_SIZE:
        raise ValueError(f"no leaf {index} in a tree of {size} leaves")


def _check_consistency(old_size: int, new_size: int, stride: int) -> None:
    _check_stride(stride)
    if not 0 <= old_size <= new_size <= MAX_SIZE:
        raise ValueError(f"a tree of {new_size} leaves does not extend one of {old_size}")


def inclusion_needs(index: int, size: int, stride: int = DEFAULT_STRIDE) -> Needs:
    """The stored nodes the inclusion proof of leaf ``index`` in the tree of ``size`` is made of."""
    _check_inclusion(index, size, stride)
    return _needs(_path_ranges(index, size), stride)


def consistency_needs(old_size: int, new_size: int, stride: int = DEFAULT_STRIDE) -> Needs:
    """The stored nodes the consistency proof from ``old_size`` to ``new_size`` is made of."""
    _check_consistency(old_size, new_size, stride)
    return _needs(_proof_ranges(old_size, new_size), stride)


def inclusion_proof(
    index: int, size: int, fetched: Mapping[tuple[int, int], bytes], stride: int = DEFAULT_STRIDE
) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 section 2.1.3.1, made of the nodes
    :func:`inclusion_needs` named (``fetched``: (level, index) -> hash)."""
    _check_inclusion(index, size, stride)
    return _assemble(_path_ranges(index, size), fetched, stride)


def consistency_proof(
    old_size: int, new_size: int, fetched: Mapping[tuple[int, int], bytes], stride: int = DEFAULT_STRIDE
) -> list[bytes]:
    """PROOF(old_size, D[new_size]) of RFC 9162 section 2.1.4.1, made of the nodes
    :func:`consistency_needs` named. Empty when ``old_size`` is 0 or ``new_size``: there is
    nothing to prove."""
    _check_consistency(old_size, new_size, stride)
    return _assemble(_proof_ranges(old_size, new_size), fetched, stride)


# Verification: never raises, whatever it is given.


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def _is_size(value: object) -> bool:
    return isinstance(value, int) and 0 <= value <= MAX_SIZE


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """Whether ``proof`` shows ``leaf_hash`` at ``index`` of the tree of ``size`` leaves whose
    root is ``root`` (RFC 9162 section 2.1.3.2)."""
    if not (_is_hash(leaf_hash) and _is_hash(root) and _is_size(index) and _is_size(size)):
        return False
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0 or not _is_hash(p):
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Whether ``proof`` shows the tree of ``new_size`` leaves with root ``new_root`` to extend
    the tree of ``old_size`` with root ``old_root`` (RFC 9162 section 2.1.4.2). RFC 9162 covers
    ``0 < old_size < new_size``; as elsewhere (Sigsum, Trillian), a tree is consistent with
    itself and the empty tree with every tree, by an empty proof."""
    if not (_is_size(old_size) and _is_size(new_size) and _is_hash(old_root) and _is_hash(new_root)):
        return False
    if old_size > new_size:
        return False
    if old_size == 0:
        return len(proof) == 0 and old_root == EMPTY_ROOT and (new_size > 0 or new_root == EMPTY_ROOT)
    if old_size == new_size:
        return len(proof) == 0 and old_root == new_root
    if len(proof) == 0:
        return False
    path = chain((old_root,), proof) if old_size & (old_size - 1) == 0 else iter(proof)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = next(path)
    if not _is_hash(fr):
        return False
    for c in path:
        if sn == 0 or not _is_hash(c):
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0
