"""Who may read and who may write.

* **Writes** (replay, approve, deny) need the console token: sent as ``Authorization: Bearer
  TOKEN`` (scripts), or once on the sign-in page, which sets a session cookie (HttpOnly,
  SameSite=Strict, 12 h) holding the operator's name, its expiry and an HMAC of both keyed by
  the token (so changing the token ends every session). A browser's write must also come from
  the console's own pages: its ``Origin`` (or ``Referer``) must be the console's.
* **Reads** follow :attr:`~l9.console.config.ConsoleConfig.reads`: ``loopback`` (default)
  lets clients on this machine read without signing in and asks the others to sign in;
  ``signed-in`` asks everyone; ``open`` asks nobody.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlencode, urlsplit

from starlette.datastructures import URL
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .config import ConsoleConfig, is_loopback

COOKIE = "l9_console"
SESSION_S = 12 * 3600
#: Paths anyone may fetch: the sign-in page and the static files.
PUBLIC_PREFIXES = ("/login", "/static/")
_NAME = re.compile(r"[^A-Za-z0-9_.@ -]")


@dataclass(frozen=True)
class Operator:
    """Who writes: the name given at sign-in (``token`` for a bearer token), and how."""

    name: str
    via: Literal["session", "bearer"]


def clean_name(name: str) -> str:
    """An operator name as kept in the cookie and the logs: 1 to 64 plain characters."""
    return _NAME.sub("_", name.strip())[:64] or "operator"


def _mac(token: str, message: str) -> str:
    return hmac.new(token.encode(), message.encode(), hashlib.sha256).hexdigest()


def session_cookie(token: str, name: str, now: float | None = None) -> str:
    """The cookie value of a session of ``name``, valid :data:`SESSION_S` from ``now``."""
    expiry = int((time.time() if now is None else now) + SESSION_S)
    label = base64.urlsafe_b64encode(clean_name(name).encode()).decode()
    message = f"{label}.{expiry}"
    return f"{message}.{_mac(token, message)}"


def session_operator(token: str, value: str, now: float | None = None) -> Operator | None:
    """The operator of a session cookie; None when it is forged, altered or expired."""
    label, _, rest = value.partition(".")
    expiry, _, mac = rest.partition(".")
    if not (label and expiry.isdigit() and mac):
        return None
    if not hmac.compare_digest(_mac(token, f"{label}.{expiry}"), mac):
        return None
    if int(expiry) < (time.time() if now is None else now):
        return None
    try:
        name = base64.urlsafe_b64decode(label.encode()).decode()
    except ValueError:
        return None
    return Operator(name, "session")


def token_matches(token: str, given: str) -> bool:
    return hmac.compare_digest(token.encode(), given.strip().encode())


def operator_of(conn: HTTPConnection, token: str) -> Operator | None:
    """Who the request comes from: a bearer token, or a session cookie; None for nobody."""
    scheme, _, given = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and given:
        return Operator("token", "bearer") if token_matches(token, given) else None
    value = conn.cookies.get(COOKIE)
    return session_operator(token, value) if value else None


def same_origin(request: Request) -> bool:
    """Whether a browser's request comes from the console's own pages (``Origin``, else
    ``Referer``, names the scheme, host and port the request was sent to)."""
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if not claimed or claimed == "null":
        return False
    mine = request.url
    theirs = urlsplit(claimed)
    return (theirs.scheme, theirs.netloc) == (mine.scheme, mine.netloc)


def writer(request: Request) -> Operator:
    """The operator allowed to write, or HTTP 401 (not signed in) / 403 (another site's page)."""
    token: str = request.app.state.config.token
    operator = operator_of(request, token)
    if operator is None:
        raise HTTPException(401, "sign in with the console token to do this (see docs/CONSOLE.md)")
    if operator.via == "session" and not same_origin(request):
        raise HTTPException(403, "refused: this write does not come from the console's own pages")
    return operator


def may_read(conn: HTTPConnection, config: ConsoleConfig) -> bool:
    if config.reads == "open":
        return True
    client = conn.client.host if conn.client else ""
    if config.reads == "loopback" and is_loopback(client):
        return True
    return operator_of(conn, config.token) is not None


def safe_next(target: str | None) -> str:
    """A path on this console to go to after signing in (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


class ReadGuard:
    """ASGI middleware: a page a client may not read sends it to the sign-in page (events and
    other requests get 401)."""

    def __init__(self, app: ASGIApp, config: ConsoleConfig) -> None:
        self.app, self.config = app, config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        if may_read(conn, self.config):
            await self.app(scope, receive, send)
            return
        response: Response
        if scope["method"] == "GET" and "text/html" in conn.headers.get("accept", ""):
            target = URL(scope=scope)
            path = target.path + (f"?{target.query}" if target.query else "")
            response = RedirectResponse(f"/login?{urlencode({'next': path})}", 303)
        else:
            response = PlainTextResponse("sign in to read this console (see docs/CONSOLE.md)", 401)
        await response(scope, receive, send)
