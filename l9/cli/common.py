"""What every ``l9`` subcommand shares: the settings, one-line errors, running async work,
opening the audit trail, and ``--since`` durations.

Subcommand modules import from here, never from :mod:`l9.cli` (the root imports them).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import anyio
import typer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rich.console import Console
from rich.text import Text

from bus import ConsumerNameTaken
from l9.devstack import StackError
from l9.logs import configure_logging
from l9.settings import Settings, get_settings
from l9.trail import open_trail
from memory.audit import AuditRecorder, AuditStoreError

T = TypeVar("T")
err = Console(stderr=True)

_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_UNIT_S = (86_400, 3_600, 60, 1)


def load_settings() -> Settings:
    """The settings, logging configured from them; invalid settings exit 2."""
    try:
        settings = get_settings()
    except ValueError as exc:
        err.print(f"[red]invalid settings:[/red] {exc}")
        raise typer.Exit(2) from None
    configure_logging(settings.log_level)
    return settings


def quiet(level: str) -> None:
    """Logs at warning and above only (unless asked for debug): a live table is the output."""
    configure_logging("debug" if level.lower() == "debug" else "warning")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: MESSAGE`` on one line (never wrapped, never read as markup); the exit to raise."""
    err.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True, highlight=False)
    return typer.Exit(code)


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Run an async command; an unreachable Redis is a one-line error, not a traceback."""
    try:
        return anyio.run(main)
    except (RedisConnectionError, RedisTimeoutError) as exc:
        url = get_settings().redis_url or "the embedded stack"
        raise fail(f"cannot reach Redis ({url}): {exc}") from None
    except ConsumerNameTaken as exc:
        raise fail(str(exc), 2) from None


def with_trail(settings: Settings, work: Callable[[AuditRecorder], Awaitable[T]]) -> T:
    """Open the audit trail, run ``work`` on it, close it; PostgreSQL trouble is a one-line error (exit 1)."""

    async def main() -> T:
        store = await open_trail(settings, max_size=2)
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return run(main)
    except (AuditStoreError, StackError) as exc:  # a MigrationError is an AuditStoreError
        raise fail(str(exc)) from None


def parse_duration(text: str) -> timedelta:
    """``30s``, ``10m``, ``2h``, ``1d`` or combinations in that order (``1h30m``, ``1d12h``)."""
    match = _DURATION.fullmatch(text.strip())
    if not text.strip() or match is None:
        raise ValueError(f"{text!r} is not a duration (e.g. 30s, 10m, 2h, 1d, 1h30m)")
    return timedelta(seconds=sum(int(n) * unit for n, unit in zip(match.groups(), _UNIT_S, strict=True) if n))


def duration_option(text: str) -> timedelta:
    """The parser of a ``--since DURATION`` option: a bad duration is a usage error (exit 2)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
