"""The immutable audit trail in PostgreSQL: migrations, the append-only store,
verification and signed checkpoints.

Entry points: :func:`migrate` (as admin, at start), :class:`PostgresAuditStore`
(as the ``l9_writer`` role: append, read, checkpoint, verify), :func:`redact`
(owner-only). The hash chain itself is :mod:`memory.chain`.
"""

from .checkpoints import Checkpoint, CheckpointError, SigningKey, read_checkpoint, read_checkpoint_dir
from .dsn import OWNER_ROLE, WRITER_ROLE, with_user, writer_dsn
from .records import (
    AppendStatus,
    AuditRecord,
    AuditRecordError,
    Committed,
    EntryFilter,
    EntryPage,
    Head,
    StoredEntry,
)
from .schema import MigrationError
from .store import (
    CHAIN_LOCK_KEY,
    NOTIFY_CHANNEL,
    AuditStoreError,
    AuditStoreUnavailable,
    PostgresAuditStore,
    migrate,
    redact,
)
from .verify import Damage, Problem, VerifyReport

__all__ = [
    "CHAIN_LOCK_KEY",
    "NOTIFY_CHANNEL",
    "OWNER_ROLE",
    "WRITER_ROLE",
    "AppendStatus",
    "AuditRecord",
    "AuditRecordError",
    "AuditStoreError",
    "AuditStoreUnavailable",
    "Checkpoint",
    "CheckpointError",
    "Committed",
    "Damage",
    "EntryFilter",
    "EntryPage",
    "Head",
    "MigrationError",
    "PostgresAuditStore",
    "Problem",
    "SigningKey",
    "StoredEntry",
    "VerifyReport",
    "migrate",
    "read_checkpoint",
    "read_checkpoint_dir",
    "redact",
    "with_user",
    "writer_dsn",
]
