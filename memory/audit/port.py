"""The port every audit trail adapter implements, and the errors it may raise.

:class:`AuditRecorder` is what the auditor, the reporter, the report engine and
``l9 tail`` / ``l9 audit verify`` use; the records it takes and returns are
plain data (:mod:`.records`, :mod:`.checkpoints`, :mod:`.verify`). Adapters:
:class:`memory.postgres.PostgresAuditStore` (the trail; the only user of the
driver, whose errors it translates to the two below) and
:class:`memory.audit.InMemoryAuditRecorder` (the same chain bytes, for tests).

The contract, whatever the adapter:

* one chain, one writer at a time: an append hashes its records onto the head
  and moves it, atomically; a record whose envelope id is stored already (or
  comes earlier in the batch) is not stored again (``duplicate``, or
  ``conflict`` when its bytes differ; the first one stays);
* insert order is commit order, so a reader following ``seq > cursor`` misses nothing;
* every entry is hashed as :mod:`memory.chain` defines it, so any recorder's
  trail verifies with the same walk.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from .appending import PreparedAppend, prepare_append
from .checkpoints import Checkpoint, SigningKey
from .records import AuditRecord, Committed, EntryFilter, EntryPage, Head, StoredEntry
from .verify import VerifyReport


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

    @abstractmethod
    async def head(self) -> Head:
        """The last committed seq and its chain hash (0 and :data:`memory.chain.GENESIS` when empty)."""

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
