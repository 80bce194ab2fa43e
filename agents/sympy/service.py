"""One request, from the cache to the reply's fields, within one deadline.

The clock starts once, when the worker takes the request: ``L9_SYMPY_TIMEOUT_S``
(within the request's own deadline, ``expires_at``) bounds everything the pool does
for it together. Each step gets what is left: the wait for a free worker and the
parse for the cache key, then the parse again and the computation. A request whose
parse takes most of the budget has little left to compute with; it never gets the
budget twice.

A kernel build is not pool work. A ``compile`` (or an ``evaluate`` with the compiled
backend) whose kernel is not on disk gets its source generated in the pool, within
the same budget; the worker answers a build plan and is free. The compilers run in
the agent's build slots (:mod:`.builds`) within the build budget
(``L9_SYMPY_COMPILE_TIMEOUT_S``, within ``expires_at`` too); the time a build takes is
not charged to the compute budget, so the evaluation after it has what was left.

Results are cached in Redis under the canonical form (:mod:`.cache`); a text seen
before is not parsed again for its key (an in-memory memo of digests).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import OrderedDict
from typing import Any, Literal

from agents.contracts.sympy.errors import ToolError, ToolTimeout
from agents.contracts.sympy.payloads import REPLY_FOR, Compile, CompileResult, SymPyRequest, SymPyResult
from bus import Keys
from bus.connection import RedisClient
from envelope import PacketEnvelope, utcnow

from .builds import BuildSlots
from .cache import ResultCache
from .compiled import BuildPlan, Built
from .config import SymPyConfig
from .keys import compiled_key
from .operations import Job
from .pool import WorkerPool

#: Request texts whose canonical digest is remembered (a hit then never touches the pool).
DIGEST_MEMO = 4096
#: A compiler's address space: the workers' allowance and this much for the compiler itself.
BUILD_HEADROOM_MB = 1024


class Deadline:
    """One request's clocks (monotonic seconds): its compute budget and its own expiry."""

    def __init__(self, budget_s: float, expires_in_s: float | None = None) -> None:
        now = time.monotonic()
        #: The request's time as it started: the budget, or less when it expires sooner.
        self.bound_s = budget_s if expires_in_s is None else max(min(budget_s, expires_in_s), 0.0)
        self.compute_until = now + budget_s
        self.expires_at = math.inf if expires_in_s is None else now + expires_in_s

    @classmethod
    def start(cls, budget_s: float, envelope: PacketEnvelope) -> Deadline:
        """The clock of ``envelope``'s request, started now."""
        if envelope.expires_at is None:
            return cls(budget_s)
        return cls(budget_s, (envelope.expires_at - utcnow()).total_seconds())

    def left(self) -> float:
        """Seconds of pool work left (the request's expiry included)."""
        return min(self.compute_until, self.expires_at) - time.monotonic()

    def left_to_build(self, budget_s: float) -> float:
        """Seconds a build may take: its budget, within the request's expiry."""
        return min(budget_s, self.expires_at - time.monotonic())

    def pause(self, seconds: float) -> None:
        """``seconds`` spent outside the pool (a build) are not compute time."""
        self.compute_until += seconds


class SymPyService:
    """What the SymPy agent does with a request: the cache, the pool, the build slots."""

    def __init__(
        self, pool: WorkerPool, cache: ResultCache, config: SymPyConfig, redis: RedisClient, keys: Keys
    ) -> None:
        self.pool, self.cache, self.config, self.redis, self.keys = pool, cache, config, redis, keys
        self.builds = BuildSlots(config.builds, memory_mb=config.memory_mb + BUILD_HEADROOM_MB)
        #: request text digest -> canonical digest: the same text is parsed once.
        self._digests: OrderedDict[bytes, str] = OrderedDict()

    async def compute(self, request: SymPyRequest, envelope: PacketEnvelope) -> SymPyResult:
        """The reply to ``request``: from the cache, or computed within one deadline."""
        deadline = Deadline.start(self.config.timeout_s, envelope)
        model, backend = REPLY_FOR[type(request)], request.backend_name
        if not request.cacheable:
            return await self._run(request, deadline)
        digest = await self._digest(request, deadline)
        hit = await self.cache.get(digest, request.op, backend)
        if hit is not None:
            return model.model_validate({**hit, "cached": True})
        reply = await self._run(request, deadline)
        await self.cache.put(digest, request.op, backend, reply.model_dump(mode="json", exclude={"cached"}))
        return reply

    async def _run(self, request: SymPyRequest, deadline: Deadline) -> SymPyResult:
        fields = await self._job("run", request, deadline)
        plan = fields.pop("build", None)
        if plan is not None:
            built = await self._build(BuildPlan.from_dict(plan), deadline)
            if isinstance(request, Compile):
                fields.update(built.as_dict())
            else:  # evaluate: the kernel is on disk now, the worker loads it
                fields = await self._job("run", request, deadline)
                if "build" in fields:
                    raise ToolError("failed", "kernel_missing", f"kernel {built.kernel_hash} is not on disk")
        reply = REPLY_FOR[type(request)].model_validate(fields)
        if isinstance(reply, CompileResult):
            entry = {**reply.model_dump(mode="json", exclude={"cached"}), "indexed_at": utcnow().isoformat()}
            await self.redis.set(compiled_key(self.keys, reply.kernel_hash), json.dumps(entry))
        return reply

    async def _digest(self, request: SymPyRequest, deadline: Deadline) -> str:
        """The canonical cache digest: parsed in the pool once per distinct request text."""
        text = hashlib.sha256(f"{request.op}\0{request.model_dump_json()}".encode()).digest()
        digest = self._digests.get(text)
        if digest is None:
            keyed = await self._job("key", request, deadline)
            digest = self._digests[text] = str(keyed["key"])
            if len(self._digests) > DIGEST_MEMO:
                self._digests.popitem(last=False)
        else:
            self._digests.move_to_end(text)
        return digest

    async def _job(
        self, phase: Literal["key", "run"], request: SymPyRequest, deadline: Deadline
    ) -> dict[str, Any]:
        """One pool job within what is left of the request's time."""
        left = deadline.left()
        if left <= 0:
            raise ToolTimeout(f"the request's {deadline.bound_s:.3g}s ran out before its {phase} step")
        try:
            job = Job(phase, request, defer_builds=True)
            fields: dict[str, Any] = await self.pool.run(job, timeout_s=left)
        except ToolTimeout as exc:
            if exc.rule != "wall_clock":
                raise
            raise ToolTimeout(
                f"the request ran past its {deadline.bound_s:.3g}s (parsing and computing together) "
                "and was stopped"
            ) from None
        return fields

    async def _build(self, plan: BuildPlan, deadline: Deadline) -> Built:
        bound = deadline.left_to_build(self.config.tool.compile_timeout_s)
        if bound <= 0:
            raise ToolTimeout("the request expired before its kernel could be built", "compile_timeout")
        started = time.monotonic()
        try:
            return await self.builds.build(plan, bound)
        finally:
            deadline.pause(time.monotonic() - started)
