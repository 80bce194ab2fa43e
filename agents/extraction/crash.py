"""An exception in a phase agent ends its run as failed, on the record, at once.

Each extraction agent (planner, generator, enforcer, validator) runs the work of a
delivery under ``try``: what it cannot do because of its input is its normal failure
payload, and any other exception - a bug - is turned into the same, naming the
exception (:func:`crash_reason`; the traceback goes to the agent's log), followed by
``l9.run.completed.v1`` (failed, at the agent's phase). Retrying a bug would only
repeat it, up to the delivery cap, with no failure on the record and ``l9 extract``
waiting for a run that never ends.

Only Redis being unreachable or between states (:data:`RETRIED`) propagates: the
delivery loop tries again with backoff, as for any handler, and the run goes on once
Redis is back.
"""

from __future__ import annotations

from agents.contracts.extraction.phases import RunCompleted
from bus.errors import TRANSIENT

#: Exceptions the delivery loop retries: Redis unreachable, slow or failing over (not every
#: ``OSError``: a file the agent cannot read is the run's failure, not the bus's).
RETRIED: tuple[type[BaseException], ...] = tuple(e for e in TRANSIENT if e is not OSError)
#: Longest exception text a failure payload carries.
MAX_TEXT = 500


def retried(exc: BaseException) -> bool:
    """Whether ``exc`` (or every exception a task group gathered in it) is one to retry."""
    if isinstance(exc, BaseExceptionGroup):
        return all(retried(inner) for inner in exc.exceptions)
    return isinstance(exc, RETRIED)


def crash_reason(agent: str, exc: BaseException) -> str:
    """``the generator failed: KeyError: 'x' (a bug: the generator's log has the traceback)``."""
    text = str(exc)
    text = text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"
    what = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return f"the {agent} failed: {what} (a bug: the {agent}'s log has the traceback)"


def crashed_run(agent: str, phase: str, collection: str, folder: str, exc: BaseException) -> RunCompleted:
    """The run's end when ``agent`` raised at ``phase`` (a bug): failed there, naming the exception."""
    reason = crash_reason(agent, exc)
    return RunCompleted(
        outcome=f"failed at {phase}: {reason}"[:300],
        collection=collection,
        result="failed",
        phase=phase,
        folder=folder,
        reason=reason,
    )


__all__ = ["MAX_TEXT", "RETRIED", "crash_reason", "crashed_run", "retried"]
