"""The admin port of an agent process (``L9_ADMIN_PORT``, on ``L9_ADMIN_HOST``).

Three endpoints, served in the agent's own event loop (uvicorn, a small starlette app):

* ``/metrics``: Prometheus' text format (or OpenMetrics, as the scraper asks): the bus's
  metrics (``bus.metrics``) and prometheus-client's process and runtime ones;
* ``/healthz``: 200 while every delivery loop of the process goes round: its last round is
  at most :func:`stale_after_s` old, or it is starting, or it is full and waits for room
  (its handlers hold every slot); 503 with the loop and why otherwise (stopping, stuck);
* ``/readyz``: 200 when Redis answers a PING, each loop's consumer group exists on every
  stream it reads, each loop went round once and, for a process that needs it (the
  auditor), PostgreSQL answers ``SELECT 1``; 503 naming the failing checks otherwise.

Each check has :data:`CHECK_TIMEOUT_S`. The port is bound when the :class:`Admin` is made, at
start (``l9.start.open_admin``): a port in use stops the agent before it reads anything, naming
the port and the setting. uvicorn runs without its signal handlers (the agent's own drain on SIGTERM) and
without its log set-up (the process's JSON logs).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import structlog
import uvicorn
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bus import BatchConsumer, Keys, StreamConsumer
from bus.connection import RedisClient
from bus.metrics import BatchMetrics, missing_groups, watch_in_flight

log = structlog.get_logger("l9.admin")

#: Bound of each readiness check.
CHECK_TIMEOUT_S = 2.0
#: A loop is stuck once its last round is older than this many of its longest reads...
LIVENESS_ROUNDS = 10
#: ... and than this (a loaded machine, a garbage collection, Redis backoff: 5 s at most).
LIVENESS_FLOOR_S = 30.0

#: A readiness check: returns when fine, raises when not (its message is the reason).
Check = Callable[[], Awaitable[None]]


class AdminPortError(RuntimeError):
    """The admin port cannot be listened on (in use, not an address of this machine)."""


class Clock(Protocol):
    """When a loop last went round (``bus.metrics``); None before its first round."""

    @property
    def last_round(self) -> float | None: ...


class Watched(Protocol):
    """What the endpoints read of a delivery loop (``StreamConsumer``, ``BatchConsumer``)."""

    group: str
    keys: Keys
    redis: RedisClient
    streams: list[str]
    in_flight: dict[tuple[str, str], float]

    @property
    def stopping(self) -> bool: ...


def stale_after_s(longest_read_s: float) -> float:
    """How old a loop's last round may be while it is fine."""
    return max(LIVENESS_FLOOR_S, LIVENESS_ROUNDS * longest_read_s)


@dataclass
class Loop:
    """A delivery loop the endpoints watch."""

    consumer: Watched
    clock: Clock
    #: Entries in hand at which the loop waits for room (None: it never waits long for it).
    capacity: int | None
    stale_after_s: float

    @property
    def group(self) -> str:
        return self.consumer.group

    def state(self, now: float) -> dict[str, Any]:
        """Its state for ``/healthz``; ``problem`` says what is wrong (None: nothing)."""
        last, held = self.clock.last_round, len(self.consumer.in_flight)
        state: dict[str, Any] = {"in_flight": held, "problem": None}
        if self.consumer.stopping:
            state["problem"] = f"the delivery loop of group {self.group} is stopping"
        elif last is None:
            state["starting"] = True
        else:
            age = state["last_round_s"] = round(now - last, 3)
            full = self.capacity is not None and held >= self.capacity
            if age > self.stale_after_s and not full:
                state["problem"] = (
                    f"the delivery loop of group {self.group} last went round {age:.0f} s ago "
                    f"(more than {self.stale_after_s:g} s) with {held} entries in hand"
                )
        return state


class Admin:
    """The admin port of one process: what it watches, and its server."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.loops: list[Loop] = []
        #: /readyz's checks beside those of the loops (``postgres``)
        self.checks: dict[str, Check] = {}
        self._socket = _listen(host, port)

    # -- what it watches --------------------------------------------------------------------
    def watch_stream(self, consumer: StreamConsumer) -> None:
        """``consumer`` (built with ``metrics=``) on /healthz, /readyz and /metrics."""
        if consumer.metrics is None:
            raise ValueError(f"the consumer of group {consumer.group} was built without metrics=")
        policy = consumer.policy
        self._watch(consumer, consumer.metrics, policy.max_in_flight, policy.block_ms / 1000)

    def watch_batch(self, consumer: BatchConsumer, metrics: BatchMetrics) -> None:
        """``consumer`` (its source and handler wrapped by ``metrics``) on the three endpoints; its
        read loop tells ``metrics`` when it goes round (``on_round``), backing off from an
        unreachable Redis included."""
        consumer.on_round = metrics.went_round
        longest = max(consumer.policy.block_ms / 1000, consumer.discover_interval_s)
        self._watch(consumer, metrics, None, longest)

    def _watch(self, consumer: Watched, clock: Clock, capacity: int | None, read_s: float) -> None:
        watch_in_flight(consumer.group, consumer.in_flight)
        self.loops.append(Loop(consumer, clock, capacity, stale_after_s(read_s)))

    def ready_when(self, name: str, check: Check) -> None:
        """``check`` is one of /readyz's, under ``name``."""
        self.checks[name] = check

    # -- the verdicts --------------------------------------------------------------------------
    def liveness(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        loops = {loop.group: loop.state(now) for loop in self.loops}
        problems = [s["problem"] for s in loops.values() if s["problem"]]
        body: dict[str, Any] = {"status": "failing" if problems else "ok", "loops": loops}
        if problems:
            body["reason"] = "; ".join(problems)
        return not problems, body

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Every check at once, each within :data:`CHECK_TIMEOUT_S`; those that failed are
        named, each with its reason."""
        checks = self._all_checks()
        results: dict[str, str] = {}

        async def run(name: str, check: Check) -> None:
            try:
                with anyio.fail_after(CHECK_TIMEOUT_S):
                    await check()
                results[name] = "ok"
            except TimeoutError:
                results[name] = f"no answer within {CHECK_TIMEOUT_S:g} s"
            except Exception as exc:
                results[name] = f"{type(exc).__name__}: {_first_line(exc)}"

        async with anyio.create_task_group() as tg:
            for name, check in checks.items():
                tg.start_soon(run, name, check)
        results = {name: results[name] for name in checks}  # in the checks' order
        failed = [name for name, result in results.items() if result != "ok"]
        body: dict[str, Any] = {"status": "not ready" if failed else "ready", "checks": results}
        if failed:
            body["failed"] = failed
        return not failed, body

    def _all_checks(self) -> dict[str, Check]:
        checks: dict[str, Check] = {}
        for loop in self.loops:
            checks.setdefault("redis", _pings(loop.consumer.redis))
            checks[f"group {loop.group}"] = _group_exists(loop.consumer)
        checks["delivery"] = self._loops_started
        return {**checks, **self.checks}

    async def _loops_started(self) -> None:
        if not self.loops:
            raise RuntimeError("no delivery loop yet")
        waiting = [loop.group for loop in self.loops if loop.clock.last_round is None]
        if waiting:
            raise RuntimeError(f"not reading yet: group {', '.join(waiting)}")

    # -- the server ------------------------------------------------------------------------------
    def app(self) -> Starlette:
        async def metrics(request: Request) -> Response:
            encoder, content_type = choose_encoder(request.headers.get("accept", ""))
            return Response(encoder(REGISTRY), media_type=content_type)

        async def healthz(request: Request) -> Response:
            ok, body = self.liveness()
            return JSONResponse(body, status_code=200 if ok else 503)

        async def readyz(request: Request) -> Response:
            ok, body = await self.readiness()
            return JSONResponse(body, status_code=200 if ok else 503)

        return Starlette(
            routes=[Route("/metrics", metrics), Route("/healthz", healthz), Route("/readyz", readyz)]
        )

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """The server runs for the block; then it stops: its socket and connections closed."""
        config = uvicorn.Config(
            self.app(),
            lifespan="off",
            http="h11",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        server = _Server(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._serve, server)
            log.info("admin.started", host=self.host, port=self.port, loops=[lp.group for lp in self.loops])
            try:
                yield
            finally:
                server.should_exit = True  # serve() returns within 0.1 s, after its shutdown

    async def _serve(self, server: uvicorn.Server) -> None:
        try:
            await server.serve(sockets=[self._socket])
        except BaseException:  # cancelled (the process aborts): shut down here
            if server.started:
                with anyio.CancelScope(shield=True):
                    await server.shutdown(sockets=[self._socket])
            raise
        finally:
            self.close()

    def close(self) -> None:
        """Release the port (the server closes it once it served)."""
        self._socket.close()


class _Server(uvicorn.Server):
    """uvicorn, leaving SIGTERM and SIGINT to the agent: it drains, then stops this server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bound_socket(host: str, port: int) -> socket.socket:
    """A non-blocking socket listening on ``host:port`` (IPv6 when the host has a colon), to
    hand to uvicorn; OSError, the socket closed, when it cannot (in use, not this machine's)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is fine
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _listen(host: str, port: int) -> socket.socket:
    try:
        return bound_socket(host, port)
    except OSError as exc:
        raise AdminPortError(
            f"L9_ADMIN_PORT={port}: cannot listen on {host}:{port} (L9_ADMIN_HOST={host}): "
            f"{exc.strerror or exc}; pick another port, or unset L9_ADMIN_PORT for no admin port"
        ) from exc


def _pings(redis: RedisClient) -> Check:
    async def redis_pings() -> None:
        await redis.ping()

    return redis_pings


def _group_exists(consumer: Watched) -> Check:
    group = consumer.group

    async def exists() -> None:
        missing = await missing_groups(consumer.redis, consumer.keys, group, list(consumer.streams))
        if missing:
            shown = ", ".join(missing[:5]) + (f" ... ({len(missing)} in all)" if len(missing) > 5 else "")
            raise LookupError(f"no group {group} on stream(s) {shown}")

    return exists


def postgres_answers(dsn: str) -> Check:
    """The check of a process that needs PostgreSQL: it answers ``SELECT 1``."""
    from memory.postgres import probe

    async def select_1() -> None:
        await probe(dsn, timeout_s=CHECK_TIMEOUT_S)

    return select_1


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
