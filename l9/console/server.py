"""Serving the console: its port is bound first (a port in use is a one-line error before
anything else starts), then uvicorn serves the app on that socket until SIGINT or SIGTERM."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette

from l9.admin import bound_socket

#: Seconds open event streams get to end when the console stops.
GRACE_S = 1


class ConsolePortError(RuntimeError):
    """The console cannot listen on its address (in use, or not an address of this machine)."""


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` for the console."""
    try:
        return bound_socket(host, port)
    except OSError as exc:
        raise ConsolePortError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another with --port (or --host)"
        ) from None


class _Embedded(uvicorn.Server):
    """uvicorn leaving SIGINT and SIGTERM to whoever runs it (a test, a larger process)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ConsoleServer:
    """uvicorn serving the console on a bound socket, until :meth:`stop` or (with
    ``handle_signals``, as ``l9 console`` runs it) SIGINT or SIGTERM."""

    def __init__(self, app: Starlette, sock: socket.socket, *, handle_signals: bool = True) -> None:
        config = uvicorn.Config(
            app,
            lifespan="on",
            http="h11",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=GRACE_S,
        )
        self.sock = sock
        self.server = uvicorn.Server(config) if handle_signals else _Embedded(config)

    async def serve(self) -> None:
        try:
            await self.server.serve(sockets=[self.sock])
        finally:
            self.sock.close()

    def stop(self) -> None:
        """Stop serving: open event streams get :data:`GRACE_S` to end, then serve() returns."""
        self.server.should_exit = True


async def serve(app: Starlette, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until SIGINT or SIGTERM (uvicorn's own handlers)."""
    await ConsoleServer(app, sock).serve()
