"""Fixtures of the integration tests: a fresh, migrated audit database per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from l9.devstack import StackEndpoints
from memory.postgres import PostgresAuditStore, migrate, writer_dsn
from tests.integration.own_redis import OwnRedis


def database_url_named(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def admin_sql(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def new_database(stack: StackEndpoints, template: str | None = None) -> str:
    name = f"audit_{uuid.uuid4().hex[:12]}"
    clause = f" TEMPLATE {template}" if template else ""
    await admin_sql(stack.database_url, f"CREATE DATABASE {name}{clause}")
    return database_url_named(stack.database_url, name)


async def drop_database(stack: StackEndpoints, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    await admin_sql(stack.database_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def admin_dsn(stack: StackEndpoints) -> AsyncIterator[str]:
    """A fresh, migrated database per test (superuser URL)."""
    url = await new_database(stack)
    await migrate(url)
    yield url
    await drop_database(stack, url)


@pytest.fixture
async def store(admin_dsn: str, tmp_path: Path) -> AsyncIterator[PostgresAuditStore]:
    opened = await PostgresAuditStore.open(writer_dsn(admin_dsn), checkpoint_dir=tmp_path / "checkpoints")
    yield opened
    await opened.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A redis-server of this test alone (AOF on), to stop and start."""
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()
