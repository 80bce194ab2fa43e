"""The validator agent (``l9 agent run validator``): phases 4 and 5 of an extraction run.

It consumes the ``enforce`` stream. For each ``l9.enforce.completed.v1`` with
``allowed=True`` it validates the extraction folder and emits, caused by that
envelope and in its run, in one round trip:

1. ``l9.validation.tests.v1`` - phase 4: every ``.py`` compiles, the generated
   tests' counts, pass rate, failures and the line coverage of ``code/``
   (:mod:`.tests_run`);
2. ``l9.validation.verify.v1`` - phase 5: drift against the plan and the
   manifests, import cycles, links, governance links (:mod:`.verify`);
3. ``l9.run.completed.v1`` - ``passed`` only when every file compiles, every
   generated test passes (none failed, in error or skipped), coverage is at least
   85 % and verification found nothing; otherwise ``failed`` at phase ``validate``
   with a reason naming each failure. An exception while validating (a bug) fails
   the run too, at once (:mod:`..crash`).

A denied enforcement is ignored: the enforcer has already ended that run. The
work runs off the event loop (syntax trees and hashing in a worker thread, the
tests in a subprocess in its own process group), so heartbeats and lease
extension go on; at most one validation per CPU runs at a time. A redelivered
envelope is validated again (the results are a function of the folder alone)
and its results carry the same envelope ids as the first time (derived from the
handled envelope's id and the type), so the trail and every consumer drop the
repeat.
"""

from __future__ import annotations

import functools
import hashlib
import os
import uuid
from pathlib import Path

import anyio
import structlog

from agents.contracts.extraction.phases import EnforcementCompleted, RunCompleted, TestsValidated, Verified
from bus.topology import ENFORCE_STREAM
from envelope import Payload

from ...base import Agent, Context, handles
from ...runtime import Runtime
from ..config import ValidatorConfig
from ..crash import crashed_run, retried
from .tests_run import MIN_COVERAGE, TestRun, phase4
from .verify import verify

#: Items of a finding named in a run's reason before "...".
_NAMED = 3


async def validate(
    enforced: EnforcementCompleted,
    *,
    timeout_s: float,
    log: structlog.typing.FilteringBoundLogger | None = None,
) -> tuple[TestsValidated, Verified, RunCompleted]:
    """Phases 4 and 5 on the folder of ``enforced``, and the run's end."""
    log = log or structlog.get_logger("l9.validator")
    folder, collection = Path(enforced.folder), enforced.collection
    check = functools.partial(verify, folder, collection=collection, plan_hash=enforced.plan_hash)
    log.info("validator.verifying", folder=str(folder))
    verified = await anyio.to_thread.run_sync(check)
    log.info("validator.verified", ok=verified.ok, outcome=verified.outcome)
    if folder.is_absolute() and await anyio.Path(folder).is_dir():
        log.info("validator.testing", timeout_s=timeout_s)
        run = await phase4(folder, timeout_s)
    else:
        run = TestRun(problem=f"{folder} is not an absolute path of a directory")
    tests = run.payload(collection, str(folder))
    log.info("validator.tested", ok=tests.ok, outcome=tests.outcome, duration_s=tests.duration_s)
    return tests, verified, verdict(tests, verified)


def verdict(tests: TestsValidated, verified: Verified) -> RunCompleted:
    """The run's end: passed only if phase 4 met its bounds and phase 5 found nothing."""
    reasons = phase4_reasons(tests) + phase5_reasons(verified)
    if reasons:
        what = ", ".join(r.split(":")[0].split(" (")[0] for r in reasons)
        outcome = f"failed at validate: {what}"
    else:
        outcome = (
            f"passed: {tests.passed}/{tests.tests} tests, coverage {tests.coverage_percent:.1f}%, verified"
        )
    return RunCompleted(
        outcome=outcome,
        collection=tests.collection,
        result="failed" if reasons else "passed",
        phase="validate",
        folder=tests.folder,
        reason="; ".join(reasons),
    )


def crashed(enforced: EnforcementCompleted, exc: Exception) -> RunCompleted:
    """The run's end when validating it raised (a bug): failed at ``validate``, naming the exception."""
    return crashed_run("validator", "validate", enforced.collection, enforced.folder, exc)


def phase4_reasons(tests: TestsValidated) -> list[str]:
    reasons: list[str] = []
    if tests.compile_errors:
        reasons.append(
            f"compile: {len(tests.compile_errors)} file(s) do not compile ({_named(tests.compile_errors)})"
        )
    if tests.tests == 0 or tests.passed < tests.tests:
        first = f": {_named(tests.failures)}" if tests.failures else ""
        counts = f"{tests.failed} failed, {tests.errors} in error, {tests.skipped} skipped"
        what = f"{tests.tests - tests.passed} of {tests.tests} did not pass" if tests.tests else "none ran"
        reasons.append(f"tests: {what} ({counts}{first})")
    if tests.coverage_percent < MIN_COVERAGE:
        reasons.append(f"coverage: {tests.coverage_percent:.1f}% < {MIN_COVERAGE:g}% of code/")
    return reasons


def phase5_reasons(verified: Verified) -> list[str]:
    found = [
        ("missing", verified.missing),
        ("extra", verified.extra),
        ("changed", verified.changed),
        ("import cycle", tuple(" -> ".join(c) for c in verified.cycles)),
        ("unresolved link", verified.unresolved_links),
        ("governance", verified.broken_governance),
    ]
    reasons = [f"{name}: {_named(items)}" for name, items in found if items]
    if not verified.ok and not reasons:
        reasons.append(f"verify: {verified.outcome}")
    return reasons


def _named(items: tuple[str, ...]) -> str:
    more = f" (+{len(items) - _NAMED} more)" if len(items) > _NAMED else ""
    return ", ".join(items[:_NAMED]) + more


def result_id(type_: str, cause_id: str) -> str:
    """The id of the ``type_`` envelope the validator emits for ``cause_id``: stable (UUIDv8)."""
    digest = bytearray(hashlib.sha256(f"{type_}:{cause_id}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x80
    digest[8] = (digest[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(digest)))


class ValidatorAgent(Agent):
    name = "validator"
    consumes = (ENFORCE_STREAM,)

    def __init__(self, runtime: Runtime, config: ValidatorConfig | None = None) -> None:
        super().__init__(runtime)
        self.config = config or ValidatorConfig()
        self.limiter = anyio.CapacityLimiter(max(1, os.cpu_count() or 1))

    @handles(EnforcementCompleted)
    async def on_enforced(self, ctx: Context[EnforcementCompleted]) -> None:
        enforced = ctx.payload
        log = self.log.bind(
            correlation_id=ctx.envelope.correlation_id, envelope=ctx.envelope.id, folder=enforced.folder
        )
        if not enforced.allowed:
            log.info("validator.skipped", reason="enforcement did not allow the run")
            return
        async with self.limiter:
            log.info("validator.started", attempt=ctx.attempt)
            try:
                payloads: tuple[Payload, ...] = await validate(
                    enforced, timeout_s=self.config.test_timeout_s, log=log
                )
            except Exception as exc:
                if retried(exc):
                    raise  # Redis unreachable: the delivery loop tries again
                log.exception("validator.crashed")
                payloads = (crashed(enforced, exc),)
        envelopes = [self.envelope_for(p, cause=ctx.envelope) for p in payloads]
        envelopes = [e.model_copy(update={"id": result_id(e.type, ctx.envelope.id)}) for e in envelopes]
        await self.runtime.publisher.publish_many(envelopes)
        run = payloads[-1]
        assert isinstance(run, RunCompleted)
        log.info("validator.done", result=run.result, outcome=run.outcome, reason=run.reason)


__all__ = [
    "ENFORCE_STREAM",
    "ValidatorAgent",
    "crashed",
    "phase4_reasons",
    "phase5_reasons",
    "result_id",
    "validate",
    "verdict",
]
