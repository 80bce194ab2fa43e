"""The immutable audit trail in PostgreSQL: the :class:`~memory.audit.AuditRecorder`
adapter, its migrations, and the owner's operations.

Entry points: :func:`migrate` (as admin, at start), :class:`PostgresAuditStore`
(as the ``l9_writer`` role: append, read, checkpoint, verify), :func:`redact`
(owner-only), :func:`probe` (is PostgreSQL there?). The only package importing
``asyncpg``; what it takes and returns, and its errors, are :mod:`memory.audit`'s.
"""

# The port's names, importable from here as before (documented under memory.audit).
from memory.audit import AppendStatus as AppendStatus
from memory.audit import AuditRecord as AuditRecord
from memory.audit import AuditRecordError as AuditRecordError
from memory.audit import AuditStoreError as AuditStoreError
from memory.audit import AuditStoreUnavailable as AuditStoreUnavailable
from memory.audit import Checkpoint as Checkpoint
from memory.audit import CheckpointError as CheckpointError
from memory.audit import Committed as Committed
from memory.audit import Damage as Damage
from memory.audit import EntryFilter as EntryFilter
from memory.audit import EntryPage as EntryPage
from memory.audit import Head as Head
from memory.audit import Problem as Problem
from memory.audit import SigningKey as SigningKey
from memory.audit import StoredEntry as StoredEntry
from memory.audit import VerifyReport as VerifyReport
from memory.audit import read_checkpoint as read_checkpoint
from memory.audit import read_checkpoint_dir as read_checkpoint_dir

from .admin import migrate, redact
from .dsn import OWNER_ROLE, WRITER_ROLE, with_user, writer_dsn
from .probe import probe
from .schema import MigrationError
from .store import CHAIN_LOCK_KEY, NOTIFY_CHANNEL, PostgresAuditStore, quiet_pool_warnings

__all__ = [
    "CHAIN_LOCK_KEY",
    "NOTIFY_CHANNEL",
    "OWNER_ROLE",
    "WRITER_ROLE",
    "MigrationError",
    "PostgresAuditStore",
    "migrate",
    "probe",
    "quiet_pool_warnings",
    "redact",
    "with_user",
    "writer_dsn",
]
