"""Graph writes beside the pipeline: bounded, logged on failure, never raised.

The planner and the SymPy worker record what they know at once, but the
lineage projector is the graph's guaranteed writer (it reads the same
envelopes from the streams), so a write that fails here is only late. After a
failure the writer pauses ``pause_s`` so an outage costs each request nothing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import structlog

from .errors import GraphError
from .store import SemanticGraph

log = structlog.get_logger("l9.graph")
Write = Callable[[SemanticGraph], Awaitable[object]]


class BestEffort:
    def __init__(
        self,
        graph: SemanticGraph | None,
        *,
        timeout_s: float = 1.0,
        pause_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.graph, self.timeout_s, self.pause_s, self.clock = graph, timeout_s, pause_s, clock
        self.paused_until = 0.0
        self.stats = {"written": 0, "failed": 0, "skipped": 0}

    async def __call__(self, what: str, write: Write, **context: Any) -> bool:
        """Run ``write``; True if it completed within the bound."""
        if self.graph is None:
            return False
        if self.clock() < self.paused_until:
            self.stats["skipped"] += 1
            return False
        try:
            with anyio.fail_after(self.timeout_s):
                await write(self.graph)
        except (GraphError, TimeoutError) as exc:
            self._failed(what, f"{type(exc).__name__}: {exc}", context)
            return False
        except Exception as exc:  # a bug here must not fail the request that triggered it
            log.exception("graph.write_crashed", what=what, **context)
            self._failed(what, f"{type(exc).__name__}: {exc}", context)
            return False
        self.stats["written"] += 1
        return True

    def _failed(self, what: str, error: str, context: dict[str, Any]) -> None:
        self.stats["failed"] += 1
        self.paused_until = self.clock() + self.pause_s
        log.warning(
            "graph.write_failed",
            what=what,
            error=error,
            paused_s=self.pause_s,
            hint="the lineage projector (l9 agent run lineage) writes it from the streams",
            **context,
        )

    async def close(self) -> None:
        if self.graph is not None:
            await self.graph.close()
