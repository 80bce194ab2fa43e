"""The console's ASGI application: the pages' routes, the static files, signing in and out,
and the guards (``Host`` header, reads, errors as pages or as notices for htmx)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .auth import COOKIE, SESSION_S, ReadGuard, clean_name, safe_next, session_cookie, token_matches
from .backend import Backend, log
from .config import ConsoleConfig
from .pages import dead, governance, runs, streams, sympy, trail
from .web import HERE, form_of, fragment, page


def _signed_in(request: Request, name: str, target: str) -> Response:
    config: ConsoleConfig = request.app.state.config
    response = RedirectResponse(safe_next(target), 303)
    response.set_cookie(
        COOKIE,
        session_cookie(config.token, name),
        max_age=SESSION_S,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    log.info("console.signed_in", operator=clean_name(name), client=_client(request))
    return response


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


async def login(request: Request) -> Response:
    config: ConsoleConfig = request.app.state.config
    target = request.query_params.get("next", "/")
    if request.method == "GET":
        given = request.query_params.get("token")
        if given and token_matches(config.token, given):  # the link `l9 console` prints
            return _signed_in(request, request.query_params.get("name", "operator"), target)
        return page(request, "login.html", next=safe_next(target), error=bool(given), nav="")
    fields = await form_of(request)
    target = fields.get("next", target)
    if not token_matches(config.token, fields.get("token", "")):
        log.warning("console.sign_in_refused", client=_client(request))
        return page(request, "login.html", next=safe_next(target), error=True, nav="", status_code=401)
    return _signed_in(request, fields.get("name", "") or "operator", target)


async def logout(request: Request) -> Response:
    response = RedirectResponse("/", 303)
    response.delete_cookie(COOKIE, samesite="strict")
    return response


async def http_error(request: Request, exc: Exception) -> Response:
    """An htmx request gets a notice to show in place; a page, an error page."""
    assert isinstance(exc, HTTPException)
    if request.headers.get("hx-request"):
        html = fragment("_notice.html", ok=False, message=exc.detail)
        return HTMLResponse(html, status_code=exc.status_code, headers={"HX-Reswap": "innerHTML"})
    return page(
        request, "error.html", status=exc.status_code, message=exc.detail, nav="", status_code=exc.status_code
    )


def create_app(backend: Backend, config: ConsoleConfig, *, own_backend: bool = False) -> Starlette:
    """The console on ``backend`` (closed with the app when ``own_backend``)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if own_backend:
                await backend.close()

    app = Starlette(
        routes=[
            Route("/login", login, methods=["GET", "POST"]),
            Route("/logout", logout, methods=["POST"]),
            *streams.routes,
            *dead.routes,
            *trail.routes,
            *runs.routes,
            *governance.routes,
            *sympy.routes,
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=config.trusted_hosts()),
            Middleware(ReadGuard, config=config),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.backend, app.state.config = backend, config
    return app
