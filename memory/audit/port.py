"""The port every audit trail adapter implements, and the errors it may raise.

:class:`AuditRecorder` is what the auditor, the reporter, the report engine and
``l9 tail`` / ``l9 audit verify`` use; the records it takes and returns are
plain data (:mod:`.records`, :mod:`.checkpoints`, :mod:`.verify`). Adapters:
:class:`memory.postgres.PostgresAuditStore` (the trail; the only user of the
driver, whose errors it translates to the two below) and
:class:`memory.audit.InMemoryAuditRecorder` (the same chain bytes, for tests).

The contract, whatever the adapter:

* the trail is :attr:`~AuditRecorder.layout`'s chains (:mod:`.chains`): a record goes to
  the chain of its stream, at the chain's next seq;
* one writer at a time per chain: an append hashes its records onto their chains' heads
  and trees and moves them, atomically; a record whose envelope id is stored already, in
  any chain (or comes earlier in the batch), is not stored again (``duplicate``, or
  ``conflict`` when its bytes differ; the first one stays);
* within a chain insert order is commit order, so a reader following one chain's
  ``seq > cursor`` misses nothing (with one chain, the whole trail's);
* every entry is hashed as :mod:`memory.chain` defines it, so any recorder's
  trail verifies with the same walk, and its proofs check with the same code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from memory.chain import HEADER_FIELDS, to_micros
from memory.merkle import (
    DEFAULT_STRIDE,
    Needs,
    consistency_needs,
    consistency_proof,
    inclusion_needs,
    inclusion_proof,
)

from .appending import PreparedAppend, prepare_append
from .chains import ChainHead, Layout
from .checkpoints import Checkpoint, SigningKey
from .ownership import Leases
from .proofs import ConsistencyProof, InclusionProof, ProofError
from .records import AuditRecord, Committed, EntryFilter, EntryPage, Head, StoredEntry
from .verify import VerifyReport

#: The stored levels of every chain's Merkle tree (memory.merkle's stride).
_stride = DEFAULT_STRIDE


#: The tree head's small tree keeps only its leaves: every node is folded from them.
_HEADS_STRIDE = 64


def _heads_nodes(heads: Sequence[ChainHead]) -> dict[tuple[int, int], bytes]:
    """Every leaf of the tree head's tree (the chain heads)."""
    return {(0, h.chain): h.leaf() for h in heads}


class AuditStoreError(RuntimeError):
    """The trail refused an operation, or is not in the state the operation needs."""


class AuditStoreUnavailable(AuditStoreError):
    """The trail's store could not be reached, or the connection broke: retry later. An
    append cut off at its commit may have landed; retrying it is safe (envelope ids dedupe)."""


class AuditRecorder(ABC):
    """The append-only, hash-chained audit trail. Every method raises only
    :class:`AuditStoreError` (:class:`AuditStoreUnavailable`: retry later) for trouble
    with the store; :class:`~memory.audit.CheckpointError` for a bad checkpoint file."""

    # -- writing ------------------------------------------------------------------------------------

    async def append(self, records: Sequence[AuditRecord]) -> list[Committed]:
        """Append the records not stored yet, in one transaction; one :class:`Committed`
        per input record, in order (``status`` says stored / duplicate / conflict)."""
        return await self.append_prepared(prepare_append(records)) if records else []

    @abstractmethod
    async def append_prepared(self, prepared: PreparedAppend) -> list[Committed]:
        """:meth:`append` of records already run through :func:`prepare_append` (which a
        caller may do for its next batch while this one is written)."""

    @abstractmethod
    async def make_checkpoint(self, signing_key: SigningKey) -> Checkpoint:
        """Sign the current head, linking the previous checkpoint; kept in the trail (and as
        a file when the recorder has a checkpoint directory). The head not having moved since
        the last checkpoint, that one is returned."""

    # -- reading ------------------------------------------------------------------------------------

    @property
    @abstractmethod
    def layout(self) -> Layout:
        """How many chains the trail has (fixed once it holds an entry)."""

    @abstractmethod
    async def head(self) -> Head:
        """The newest committed seq of any chain and its chain hash (0 and
        :data:`memory.chain.GENESIS` when empty); with one chain, the chain's head."""

    @abstractmethod
    async def heads(self) -> list[ChainHead]:
        """Every chain's head (chain ``c`` at index ``c``), read at one moment."""

    @abstractmethod
    async def entries_after(
        self,
        after_seq: int,
        *,
        limit: int = 1000,
        filters: EntryFilter | None = None,
        until_seq: int | None = None,
    ) -> EntryPage:
        """Committed entries with ``seq > after_seq`` matching ``filters``, by seq, at most ``limit``;
        with ``until_seq``, none beyond it (a window, for reading backwards from the head).

        ``cursor`` of the page is the last seq examined (the head, or ``until_seq``, when
        fewer than ``limit`` matched): rows up to it never change, so a tail resumes from it.
        That holds for one chain: with several, a tail reads each chain with its own cursor
        (``filters.chain``; the head is then that chain's), as ``l9 tail`` does.
        """

    @abstractmethod
    async def entries_for_correlation(self, correlation_id: str) -> list[StoredEntry]:
        """Every entry of one run (correlation id), by seq, with its payload."""

    @abstractmethod
    async def last_checkpoint(self) -> Checkpoint | None:
        """The newest checkpoint in the trail."""

    @abstractmethod
    async def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint in the trail, by id."""

    async def checkpoint(self, checkpoint_id: int) -> Checkpoint | None:
        """Checkpoint ``checkpoint_id`` of the trail (None: there is none)."""
        return next((c for c in await self.checkpoints() if c.id == checkpoint_id), None)

    @abstractmethod
    async def entry(self, envelope_id: str) -> StoredEntry | None:
        """The entry of envelope ``envelope_id`` (None: not in the trail)."""

    @abstractmethod
    async def tree_nodes(self, chain: int, needs: Needs) -> dict[tuple[int, int], bytes]:
        """The nodes ``needs`` names of chain ``chain``'s Merkle tree, as (level, index) -> hash
        (level 0: the leaf hashes of the chain's entries, index = position - 1)."""

    @abstractmethod
    async def leases(self) -> Leases:
        """This process's leases on the trail's chains (:mod:`.ownership`), on a connection of
        their own: close them to give every lease up."""

    # -- proofs -------------------------------------------------------------------------------------

    async def inclusion_proof(self, envelope_id: str, checkpoint: Checkpoint | None = None) -> InclusionProof:
        """The proof that envelope ``envelope_id``'s entry is in the tree head of ``checkpoint``
        (default: the newest); :class:`ProofError` when it is not in the trail or not yet under
        that checkpoint (make a newer one)."""
        entry = await self.entry(envelope_id)
        if entry is None:
            raise ProofError(f"envelope {envelope_id} is not in the trail")
        cp = checkpoint or await self.last_checkpoint()
        if cp is None or cp.version != 2:
            if checkpoint is not None:
                version = checkpoint.version
                raise ProofError(f"checkpoint #{checkpoint.id} is version {version}: it signs no tree head")
            raise ProofError("the trail has no signed tree head yet (a version 2 checkpoint): make one first")
        layout = cp.layout
        chain, index = layout.chain_at(entry.seq), layout.position(entry.seq) - 1
        head = cp.heads[chain]
        if index >= head.size:
            raise ProofError(
                f"envelope {envelope_id} (seq {entry.seq}) came after checkpoint #{cp.id}: "
                "make a newer checkpoint"
            )
        needs = inclusion_needs(index, head.size, _stride)
        path = inclusion_proof(index, head.size, await self.tree_nodes(chain, needs), _stride)
        header = (
            entry.hash_version, entry.seq, entry.envelope_id, entry.type, entry.source, entry.correlation_id,
            entry.causation_id, to_micros(entry.envelope_time), to_micros(entry.recorded_at), entry.stream,
            entry.entry_id,
        )  # fmt: skip
        assert len(header) == len(HEADER_FIELDS)
        heads_tree = _heads_nodes(cp.heads)
        head_path = inclusion_proof(chain, len(cp.heads), heads_tree, _HEADS_STRIDE)
        payload = None if entry.env is None else (entry.env, entry.sig, entry.key_id)
        return InclusionProof(cp, chain, header, entry.payload_hash, tuple(path), tuple(head_path), payload)

    async def consistency_proof(self, old_id: int, new_id: int) -> ConsistencyProof:
        """The proof that checkpoint ``new_id`` extends checkpoint ``old_id``, chain by chain."""
        found = [await self.checkpoint(i) for i in (old_id, new_id)]
        for i, cp in zip((old_id, new_id), found, strict=True):
            if cp is None:
                raise ProofError(f"the trail has no checkpoint #{i}")
            if cp.version != 2:
                raise ProofError(f"checkpoint #{i} is version {cp.version}: it signs no tree head")
        old, new = found[0], found[1]
        assert old is not None and new is not None
        if old.id > new.id:
            raise ProofError(f"checkpoint #{old.id} is newer than #{new.id}: give the older one first")
        if len(old.heads) != len(new.heads):
            raise ProofError(f"checkpoints #{old.id} and #{new.id} sign different chain counts")
        proofs = []
        for o, n in zip(old.heads, new.heads, strict=True):
            needs = consistency_needs(o.size, n.size, _stride)
            nodes = await self.tree_nodes(o.chain, needs) if len(needs) else {}
            proofs.append(tuple(consistency_proof(o.size, n.size, nodes, _stride)))
        return ConsistencyProof(old, new, tuple(proofs))

    @abstractmethod
    def watch_head(self) -> AsyncIterator[int]:
        """The head seq after committed batches, as they commit (coalesced while the caller
        is busy, and some may be missed: use them to wake a tail up, and read by seq cursor)."""

    # -- verifying ----------------------------------------------------------------------------------

    @abstractmethod
    async def verify(
        self,
        *,
        from_checkpoint: Path | str | None = None,
        checkpoint_dir: Path | None = None,
        trusted_keys: Mapping[str, bytes] | None = None,
        chunk_size: int = 10_000,
    ) -> VerifyReport:
        """Recompute the chain and check the checkpoints; the report names the first bad seq.

        ``from_checkpoint``: a checkpoint file to start from; the trail must hold its
        chain hash at its seq. ``checkpoint_dir`` (default: the recorder's): files whose
        checkpoints must be in the trail and match the chain. ``trusted_keys``
        (``{key_id: Ed25519 public key}``): without them signatures are not checked.
        The whole walk reads one snapshot: appends meanwhile do not disturb it.
        """

    # -- lifetime -----------------------------------------------------------------------------------

    @abstractmethod
    async def close(self) -> None:
        """Release what the recorder holds (never raises)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
