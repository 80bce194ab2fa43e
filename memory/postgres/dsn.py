"""Connection URLs for the audit trail's roles."""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

WRITER_ROLE = "l9_writer"
OWNER_ROLE = "l9_owner"


def with_user(dsn: str, user: str) -> str:
    """``dsn`` (a ``postgresql://`` URL) logging in as ``user``, without the admin's password."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"expected a postgresql:// URL, got {parts.scheme or 'no'} scheme in {dsn!r}")
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}@{host}"))


def writer_dsn(admin_dsn: str, override: str | None = None) -> str:
    """The auditor's URL: ``override`` (``L9_DATABASE_WRITER_URL``) when set, else the
    admin URL with user ``l9_writer`` (trust auth in the embedded stack)."""
    return override or with_user(admin_dsn, WRITER_ROLE)
