"""Versioned SQL migrations: the files, their checksums, and what is left to apply.

A migration is ``migrations/NNNN_name.sql``; ``NNNN`` is its version. The
``schema_migrations`` table records each applied version with the SHA-256 of
its file; a file changed after it was applied stops the start, naming it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from memory.audit.port import AuditStoreError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

#: Created before any migration runs, so the runner can record them.
BOOKKEEPING_SQL = """
CREATE TABLE IF NOT EXISTS public.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""
#: Serialises concurrent migrators of one database (pg_advisory_lock key).
MIGRATION_LOCK_KEY = 0x4C39_4D49_4752  # "L9MIGR"


class MigrationError(AuditStoreError):
    """The migrations on disk and the ones applied to the database disagree."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str
    checksum: str


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every migration file of ``directory``, by version; refuses odd names and duplicate versions."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: a migration file is named NNNN_lowercase_name.sql")
        data = path.read_bytes()
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path.name} and {found[version].name} share version {version}")
        found[version] = Migration(version, path.name, data.decode(), hashlib.sha256(data).hexdigest())
    if not found:
        raise MigrationError(f"no migration files in {directory}")
    return [found[v] for v in sorted(found)]


def pending(migrations: Sequence[Migration], applied: Mapping[int, tuple[str, str]]) -> list[Migration]:
    """The migrations still to apply, given ``applied`` = {version: (name, checksum)}.

    Refuses to go on when an applied file changed or disappeared: the database
    would no longer be what the files say.
    """
    by_version = {m.version: m for m in migrations}
    for version, (name, checksum) in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(f"migration {name} (version {version}) was applied but its file is gone")
        if migration.checksum != checksum:
            raise MigrationError(
                f"migration {migration.name} changed after it was applied "
                f"(checksum {migration.checksum[:12]}... on disk, {checksum[:12]}... applied); "
                "add a new migration instead of editing an applied one"
            )
    return [m for m in migrations if m.version not in applied]
