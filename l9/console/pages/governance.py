"""Governance: the escalations waiting for an anchor, with approve and deny; and the latest
answers on the resolutions stream.

An answer is ``l9 governance approve|deny``: :meth:`governance.Escalations.resolve` through
a desk built as the command builds it (the policy file's escalation spec and anchors, source
``agent://governance-cli/<anchor>``), signed with

1. the anchor's key pasted in the form (the key file ``l9 deploy anchor-key`` wrote: it names
   the anchor, which must be the one answering), else
2. the anchor's key the console was started with (``--anchor-key``), else
3. the console's own signing key (``L9_SIGNING_*``), as ``--as NAME`` without ``--key-file``
   does: with the development keyring that is all there is; with per-agent keys the
   enforcer does not count such an approval (it counts as a denial).

The resolution envelope goes on the resolutions stream, where the auditor records it (who,
what, which key), as it does the command's. Reading the page changes nothing: escalations
past their deadline are shown as such (the enforcer, or ``l9 governance pending``, denies them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from bus import Publisher
from envelope import Ed25519Signer, EnvelopeError, Signer, agent_of_key, decode
from governance import (
    AlreadyResolved,
    EscalationError,
    EscalationResolved,
    Escalations,
    NotAnAnchor,
    PolicyEngine,
    cli_source,
)

from ..auth import writer
from ..backend import Backend, log
from ..config import ConsoleConfig
from ..web import form_of, fragment, live, live_page

#: Answers shown under the pending escalations.
RECENT = 15


def desk(backend: Backend, engine: PolicyEngine, who: str, signer: Signer | None = None) -> Escalations:
    """An escalations desk as ``l9 governance`` builds it, signing with ``signer`` (default: the
    console's own key)."""
    publisher = Publisher(backend.redis, backend.keys, signer or backend.signer)
    return Escalations(
        backend.redis, publisher, spec=engine.escalation, anchors=engine.anchors, source=cli_source(who)
    )


@dataclass(frozen=True)
class Answer:
    """A recorded answer, as the page lists it."""

    resolution: EscalationResolved
    run: str
    time: str
    entry_id: str


async def recent_answers(backend: Backend, engine: PolicyEngine, n: int = RECENT) -> list[Answer]:
    """The newest ``n`` answers on the resolutions stream (signatures checked; others left out)."""
    rows: Any = await backend.redis.xrevrange(backend.keys.stream(engine.escalation.resolutions), count=n)
    answers = []
    for entry_id, fields in rows:
        try:
            envelope, answer = decode(fields, backend.verifier)
        except EnvelopeError:
            continue
        if isinstance(answer, EscalationResolved):
            entry = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            answers.append(Answer(answer, envelope.correlation_id, envelope.time.isoformat(), entry))
    return answers


def _renderer(request: Request) -> Any:
    backend: Backend = request.app.state.backend

    async def render() -> str:
        engine = backend.policy()
        pending = await desk(backend, engine, "console").pending(expire=False)
        answers = await recent_answers(backend, engine)
        keyed = sorted(request.app.state.config.anchor_keys)
        return fragment("_governance.html", pending=pending, answers=answers, keyed=keyed)

    return render


async def governance_page(request: Request) -> Response:
    return await live_page(request, "governance.html", _renderer(request), "/governance/events")


async def governance_events(request: Request) -> Response:
    return live(request, _renderer(request), "update")


def signer_for(config: ConsoleConfig, anchor: str, key_text: str) -> Signer | None:
    """The key an answer of ``anchor`` is signed with (see the module doc); None: the console's."""
    if key_text.strip():
        try:
            pasted = Ed25519Signer.from_key_text(key_text, "the key pasted in the form")
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        owner = agent_of_key(pasted.key_id)
        if owner.casefold() != anchor.casefold():
            raise HTTPException(400, f"the key {pasted.key_id!r} is {owner!r}'s, not {anchor!r}'s")
        return pasted
    for name, loaded in config.anchor_keys.items():
        if name.casefold() == anchor.casefold():
            return loaded
    return None


async def answer(request: Request, *, approved: bool) -> Response:
    operator = writer(request)
    fields = await form_of(request)
    escalation_id, anchor = fields.get("id", "").strip(), fields.get("anchor", "").strip()
    reason = fields.get("reason", "").strip()
    if not escalation_id or not anchor:
        raise HTTPException(400, "an answer names the escalation and the anchor answering")
    if not reason:
        raise HTTPException(400, "say why (the reason is recorded in the audit trail)")
    backend: Backend = request.app.state.backend
    signer = signer_for(request.app.state.config, anchor, fields.get("key", ""))
    engine = backend.policy()
    try:
        done = await desk(backend, engine, anchor, signer).resolve(
            escalation_id, approved=approved, by=anchor, reason=reason
        )
    except NotAnAnchor as exc:
        raise HTTPException(400, str(exc)) from None
    except AlreadyResolved as exc:
        raise HTTPException(409, str(exc)) from None
    except EscalationError as exc:
        raise HTTPException(404, str(exc)) from None
    verb = "approved" if approved else "denied"
    key = signer.key_id if signer is not None else backend.signer.key_id
    log.info(
        "console.escalation_answered",
        operator=operator.name,
        escalation_id=escalation_id,
        anchor=done.by,
        approved=approved,
        key_id=key,
    )
    message = f"escalation {escalation_id} {verb} by {done.by} (signed with {key}): {reason}"
    return HTMLResponse(fragment("_notice.html", ok=True, message=message))


async def approve(request: Request) -> Response:
    return await answer(request, approved=True)


async def deny(request: Request) -> Response:
    return await answer(request, approved=False)


routes = [
    Route("/governance", governance_page),
    Route("/governance/events", governance_events),
    Route("/governance/approve", approve, methods=["POST"]),
    Route("/governance/deny", deny, methods=["POST"]),
]
