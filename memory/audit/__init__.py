"""The audit trail's port: what the auditor, the reporter, the report engine and the
CLI use, whichever store holds the trail.

:class:`AuditRecorder` is the interface (:mod:`.port`); the values it takes and
returns are plain data: :class:`AuditRecord` in, :class:`Committed`,
:class:`StoredEntry`, :class:`EntryPage`, :class:`Head`, :class:`Checkpoint` and
:class:`VerifyReport` out. Adapters: ``memory.postgres.PostgresAuditStore`` (the
trail; opened by ``l9.trail.open_trail``) and :class:`InMemoryAuditRecorder` (tests)::

    prepared = prepare_append(records)          # pure: before the chain lock
    committed = await recorder.append_prepared(prepared)
    page = await recorder.entries_after(cursor, filters=EntryFilter(type_glob="l9.plan.*"))
    checkpoint = await recorder.make_checkpoint(signing_key)
    report = await recorder.verify(trusted_keys=signing_key.trusted())

Errors: :class:`AuditStoreUnavailable` (retry later) and :class:`AuditStoreError`;
:class:`CheckpointError` for a bad checkpoint file, :class:`AuditRecordError` for a
stream entry that is not an envelope. The hash chain itself is :mod:`memory.chain`.
"""

from .appending import PreparedAppend, prepare_append
from .checkpoints import Checkpoint, CheckpointError, SigningKey, read_checkpoint, read_checkpoint_dir
from .inmemory import InMemoryAuditRecorder
from .port import AuditRecorder, AuditStoreError, AuditStoreUnavailable
from .records import (
    AppendStatus,
    AuditRecord,
    AuditRecordError,
    Committed,
    EntryFilter,
    EntryPage,
    Head,
    StoredEntry,
    commit_order,
    decode_entry,
)
from .verify import ChainReport, Damage, Problem, VerifyReport

__all__ = [
    "AppendStatus",
    "AuditRecord",
    "AuditRecordError",
    "AuditRecorder",
    "AuditStoreError",
    "AuditStoreUnavailable",
    "ChainReport",
    "Checkpoint",
    "CheckpointError",
    "Committed",
    "Damage",
    "EntryFilter",
    "EntryPage",
    "Head",
    "InMemoryAuditRecorder",
    "PreparedAppend",
    "Problem",
    "SigningKey",
    "StoredEntry",
    "VerifyReport",
    "commit_order",
    "decode_entry",
    "prepare_append",
    "read_checkpoint",
    "read_checkpoint_dir",
]
