"""The trail in chains: which chain an entry belongs to, its seq there, and the signed tree
head over every chain (pure, no I/O).

A trail has ``N`` chains (1 to 64, fixed when it is created: :class:`Layout`). Chain ``c``
holds the entries of the streams whose bus partition ``p`` has ``p mod N == c``
(``bus.keys.partition_of``), the same split as ``PartitionSet(c, N)``: so an auditor that
reads the partitions of one share writes one chain, and auditors of different shares
commit in parallel. Each chain is gapless and hashed on its own, from the genesis hash.

Seq numbers stay unique across the trail and say where an entry sits: the ``k``-th entry
(from 1) of chain ``c`` has ``seq = (k - 1) * N + c + 1``, so chain ``c`` holds the seqs
``c + 1, c + 1 + N, ...``. A leaf commits to its seq, so to its chain and its place in it:
an entry moved to another chain, or within one, no longer matches its leaf. With one chain
(the default), ``seq = k``: the trail of before, unchanged.

Each chain also has a Merkle tree (RFC 9162) over its leaf hashes, leaf ``k - 1`` being
entry ``k`` (:mod:`memory.merkle`). A :class:`ChainHead` is a chain's size, chain hash and
tree root; the *tree head* of the trail is the RFC 9162 root over the heads of all its
chains, leaf ``c`` being :meth:`ChainHead.leaf` of chain ``c``. A signed checkpoint
(:mod:`.checkpoints`, version 2) signs that root, so one signature commits to every entry
of every chain; an inclusion proof (:class:`InclusionProof`) is the entry's path to its
chain's root, and the chain head's path to the tree head.
"""

from __future__ import annotations

from binascii import crc_hqx
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from bus.keys import PARTITIONS
from envelope._merkle import leaf_hash as merkle_leaf
from memory.chain import GENESIS, HASH_SIZE, pack
from memory.merkle import EMPTY_ROOT, root_of, verify_consistency, verify_inclusion

__all__ = [
    "MAX_CHAINS",
    "ChainHead",
    "Layout",
    "chain_consistent",
    "head_path_holds",
    "pack_heads",
    "tree_head_root",
    "unpack_heads",
]

#: The most chains a trail can have: one per bus partition.
MAX_CHAINS = PARTITIONS


@dataclass(frozen=True, slots=True)
class Layout:
    """How a trail of :attr:`chains` chains numbers its entries (see the module doc)."""

    chains: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.chains, int) and 1 <= self.chains <= MAX_CHAINS):
            raise ValueError(f"a trail has 1 to {MAX_CHAINS} chains, not {self.chains!r}")

    def chain_of(self, stream: str) -> int:
        """The chain of the entries read from ``stream``: its bus partition mod :attr:`chains`
        (``bus.keys.partition_of``'s CRC, taken over any text)."""
        if self.chains == 1:
            return 0
        return crc_hqx(stream.encode(), 0) % PARTITIONS % self.chains

    def seq(self, chain: int, position: int) -> int:
        """The seq of the ``position``-th entry (from 1) of ``chain``; 0 for position 0 (the
        empty chain's head)."""
        return (position - 1) * self.chains + chain + 1 if position > 0 else 0

    def chain_at(self, seq: int) -> int:
        """The chain entry ``seq`` (>= 1) belongs to."""
        return (seq - 1) % self.chains

    def position(self, seq: int) -> int:
        """Where entry ``seq`` (>= 1) sits in its chain, from 1 (its tree leaf is this - 1)."""
        return (seq - 1) // self.chains + 1

    def first_seq(self, chain: int) -> int:
        return chain + 1


@dataclass(frozen=True, slots=True)
class ChainHead:
    """Chain :attr:`chain` after its first :attr:`size` entries: the chain hash of the last
    (the genesis hash when empty) and the root of the Merkle tree over their leaves."""

    chain: int
    size: int
    chain_hash: bytes
    root: bytes

    @classmethod
    def empty(cls, chain: int) -> ChainHead:
        return cls(chain, 0, GENESIS, EMPTY_ROOT)

    def seq(self, layout: Layout) -> int:
        """The seq of the chain's last entry (0 when the chain is empty)."""
        return layout.seq(self.chain, self.size)

    def packed(self) -> bytes:
        """The head as the tree head hashes it: msgpack ``[chain, size, chain_hash, root]``."""
        data: bytes = pack((self.chain, self.size, self.chain_hash, self.root))
        return data

    def leaf(self) -> bytes:
        """This head's leaf in the tree head: ``SHA-256(0x00 || packed())``."""
        return merkle_leaf(self.packed())

    def to_json(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "size": self.size,
            "chain_hash": self.chain_hash.hex(),
            "root": self.root.hex(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChainHead:
        """The head :meth:`to_json` wrote; ValueError / KeyError / TypeError otherwise."""
        head = cls(
            chain=int(data["chain"]),
            size=int(data["size"]),
            chain_hash=bytes.fromhex(data["chain_hash"]),
            root=bytes.fromhex(data["root"]),
        )
        if len(head.chain_hash) != HASH_SIZE or len(head.root) != HASH_SIZE:
            raise ValueError(f"chain {head.chain}: a hash is {HASH_SIZE} bytes")
        if not (0 <= head.chain < MAX_CHAINS and head.size >= 0):
            raise ValueError(f"chain {head.chain} of size {head.size} cannot be")
        return head


def pack_heads(heads: Sequence[ChainHead]) -> bytes:
    """The heads as the trail's ``checkpoints.heads`` column keeps them: msgpack
    ``[[chain, size, chain_hash, root], ...]``."""
    data: bytes = pack([(h.chain, h.size, h.chain_hash, h.root) for h in heads])
    return data


def unpack_heads(data: bytes) -> tuple[ChainHead, ...]:
    """The heads :func:`pack_heads` wrote; ValueError for anything else."""
    try:
        rows = msgpack.unpackb(data, raw=False)
        heads = tuple(ChainHead(int(c), int(n), bytes(h), bytes(r)) for c, n, h, r in rows)
    except Exception as exc:  # msgpack, unpacking and type errors alike
        raise ValueError(f"undecodable chain heads: {exc}") from None
    for head in heads:
        if len(head.chain_hash) != HASH_SIZE or len(head.root) != HASH_SIZE:
            raise ValueError(f"chain {head.chain}: a hash is {HASH_SIZE} bytes")
    return heads


def tree_head_root(heads: Sequence[ChainHead]) -> bytes:
    """The RFC 9162 root over the heads of every chain, in chain order (``heads[c]`` is chain
    ``c``); ValueError when they are not chains ``0..N-1`` in order."""
    for at, head in enumerate(heads):
        if head.chain != at:
            raise ValueError(f"the tree head lists chain {head.chain} where chain {at} belongs")
    return root_of([h.leaf() for h in heads])


def head_path_holds(heads_size: int, head: ChainHead, path: Sequence[bytes], root: bytes) -> bool:
    """Whether ``path`` shows ``head`` at its index among ``heads_size`` chain heads under
    ``root`` (RFC 9162 inclusion)."""
    return verify_inclusion(head.leaf(), head.chain, heads_size, path, root)


def chain_consistent(old: ChainHead, new: ChainHead, proof: Sequence[bytes]) -> bool:
    """Whether ``proof`` shows chain ``new`` to extend chain ``old`` (RFC 9162 consistency)."""
    return old.chain == new.chain and verify_consistency(old.size, new.size, old.root, new.root, proof)
