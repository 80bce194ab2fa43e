"""Merkle trees of RFC 9162 (Certificate Transparency 2.0), section 2.1: hashes, inclusion proofs.

A leaf's hash is ``SHA-256(0x00 || data)``, an inner node's ``SHA-256(0x01 || left || right)``.
The tree of ``n`` leaves is built bottom up, pairing neighbours left to right; a last node
without a neighbour moves up a level unchanged, which gives the tree of RFC 9162 (its left
subtree always the largest power of two smaller than ``n``). An inclusion proof (the "audit
path") lists the sibling hashes from the leaf up, and :func:`root_from_path` is the
verification algorithm of RFC 9162 section 2.1.3.2.

A publisher signs one batch of envelopes by signing its root (``envelope._signing``); each
envelope carries its index, the batch size and its path, so it can be checked alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Container, Mapping, Sequence

__all__ = [
    "ancestors",
    "climb",
    "inclusion_paths",
    "known_nodes",
    "leaf_hash",
    "node_hash",
    "root_from_path",
    "tree_root",
]

_sha256 = hashlib.sha256


def leaf_hash(data: bytes | bytearray) -> bytes:
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def _levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree over the leaf hashes ``leaves``, from the leaves to the root."""
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    levels = [list(leaves)]
    level = levels[0]
    while len(level) > 1:
        up = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            up.append(level[-1])  # no neighbour: moves up unchanged
        levels.append(up)
        level = up
    return levels


def tree_root(leaves: Sequence[bytes]) -> bytes:
    """The root hash over the leaf hashes ``leaves`` (at least one)."""
    return _levels(leaves)[-1][0]


def inclusion_paths(leaves: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root over the leaf hashes ``leaves`` and every leaf's inclusion proof, in leaf order."""
    levels = _levels(leaves)
    paths: list[list[bytes]] = []
    for index in range(len(leaves)):
        path, i = [], index
        for level in levels[:-1]:
            sibling = i ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            i >>= 1
        paths.append(path)
    return levels[-1][0], paths


def root_from_path(leaf: bytes, index: int, size: int, path: bytes) -> bytes | None:
    """The root that ``path`` (the sibling hashes from the leaf up, concatenated) proves
    ``leaf`` (at ``index`` of a tree of ``size``) to be in, or None when the path cannot be
    one of such a tree (RFC 9162 section 2.1.3.2)."""
    climbed = climb(leaf, index, size, path)
    return None if climbed is None else climbed[0]


def known_nodes(size: int, leaves: Mapping[int, bytes]) -> list[dict[int, bytes]]:
    """The nodes of a tree of ``size`` leaves that some of its leaf hashes (``leaves``: index ->
    hash) determine alone, level by level from the leaves (position -> hash): a node is known
    when its two children are, or its left child when it has no right one (it moves up
    unchanged, as in :func:`inclusion_paths`). The children of position ``p`` are ``2p`` and
    ``2p + 1`` one level down, so the leaves under ``(level, p)`` are ``p << level`` up to
    ``(p + 1) << level``."""
    levels = [dict(leaves)]
    width = size
    while width > 1:
        below, up = levels[-1], {}
        for position, node in below.items():
            if position & 1:
                continue
            if position + 1 < width:
                right = below.get(position + 1)
                if right is not None:
                    up[position >> 1] = _sha256(b"\x01" + node + right).digest()
            else:
                up[position >> 1] = node
        if not up:
            break
        levels.append(up)
        width = (width + 1) >> 1
    return levels


def ancestors(leaf: bytes, index: int, size: int, path: bytes) -> list[bytes] | None:
    """``leaf`` and every node :func:`climb` computes from it up to the root (the root last), or
    None when ``path`` cannot be a proof of ``index`` in a tree of ``size``."""
    chain = [leaf]
    return chain if climb(leaf, index, size, path, chain=chain) is not None else None


def climb(
    leaf: bytes,
    index: int,
    size: int,
    path: bytes,
    known: Container[bytes] | None = None,
    *,
    chain: list[bytes] | None = None,
) -> tuple[bytes, int] | None:
    """:func:`root_from_path`, stopping at the first node (``leaf`` excluded) in ``known``
    (nodes already proven): (that node or the root, bytes of ``path`` used), or None.
    ``chain`` gets every node computed on the way appended."""
    if not 0 <= index < size or len(path) % 32:
        return None
    fn, sn, r = index, size - 1, leaf
    for start in range(0, len(path), 32):
        if sn == 0:
            return None
        p = path[start : start + 32]
        if fn & 1 or fn == sn:
            r = _sha256(b"\x01" + p + r).digest()
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = _sha256(b"\x01" + r + p).digest()
        if chain is not None:
            chain.append(r)
        fn >>= 1
        sn >>= 1
        if known is not None and r in known:
            return r, start + 32
    return (r, len(path)) if sn == 0 else None
