"""The console without servers: who may read and write (sessions, bearer tokens, the origin of
a browser's write, the Host header), signing in, its settings, the filters and cursors in its
addresses, its server-sent events, and the small computations behind its pages. The pages
themselves, on the real stack, are tests/integration/test_console*.py."""

from __future__ import annotations

import os
import re
import socket
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import fakeredis
import httpx
import pytest
from starlette.exceptions import HTTPException

from agents.sympy.telemetry import OperationEvent, Timed
from bus import Keys
from envelope import Ed25519Signer, Signer, Verifier
from l9.cli import console as console_command
from l9.console import Backend, ConsoleConfig, ConsoleConfigError, create_app
from l9.console import config as console_config
from l9.console.auth import COOKIE, SESSION_S, session_cookie, session_operator
from l9.console.config import anchor_keys, read_token
from l9.console.pages.dead import DeadFilter, Letter
from l9.console.pages.sympy import by_backend, per_second
from l9.console.pages.trail import Effect, Step, _folded, decode_cursors, encode_cursors
from l9.console.web import changes, sse
from l9.dead import DeadLetter
from l9.devstack import StackEndpoints
from l9.settings import Settings
from l9.tail import Cursors
from tests.conftest import KEYRING, ROOT, free_port, run_l9

TOKEN = "unit-test-console-token-0123"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
REMOTE = ("203.0.113.9", 50000)


def app_for(tmp_path: Path, **options: object) -> object:
    backend = Backend(
        Settings(home=tmp_path, namespace="tconsole"),
        StackEndpoints("redis://unused", "postgresql://unused"),
        fakeredis.FakeAsyncRedis(),
        Keys("tconsole"),
        Verifier(KEYRING),
        Signer(KEYRING, "dev"),
    )
    config = ConsoleConfig(port=8089, token=TOKEN, **options).check()  # type: ignore[arg-type]
    return create_app(backend, config)


@pytest.fixture
async def remote(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A client on another machine, of a console reading only for loopback clients."""
    transport = httpx.ASGITransport(app=app_for(tmp_path), client=REMOTE)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8089") as client:
        yield client


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A client on this machine: it reads without signing in."""
    transport = httpx.ASGITransport(app=app_for(tmp_path), client=("127.0.0.1", 5000))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8089") as client:
        yield client


# -- sessions and tokens ------------------------------------------------------------------------
def test_a_session_cookie_names_its_operator_and_tampering_expiry_or_a_new_token_end_it() -> None:
    value = session_cookie(TOKEN, "Ada <script>", now=1000.0)
    operator = session_operator(TOKEN, value, now=1000.0 + SESSION_S - 1)
    assert operator is not None and (operator.name, operator.via) == ("Ada _script_", "session")
    assert session_operator(TOKEN, value, now=1000.0 + SESSION_S + 1) is None
    assert session_operator("another-token-entirely-0123", value, now=1000.0) is None
    other = session_cookie(TOKEN, "Bob", now=1000.0)
    forged = other.split(".")[0] + value[value.index(".") :]  # Bob's name on Ada's signature
    assert session_operator(TOKEN, forged, now=1000.0) is None
    assert session_operator(TOKEN, "garbage", now=1000.0) is None


async def test_reads_are_open_on_loopback_and_ask_others_to_sign_in(
    tmp_path: Path, remote: httpx.AsyncClient, local: httpx.AsyncClient
) -> None:
    page = await remote.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2F"
    assert (await remote.get("/streams/events")).status_code == 401
    assert (await remote.get("/static/console.css")).status_code == 200
    assert (await remote.get("/login")).status_code == 200
    signed = await remote.get("/", headers=BEARER)
    assert signed.status_code == 200 and "No streams yet" in signed.text

    assert (await local.get("/")).status_code == 200
    everyone = httpx.ASGITransport(app=app_for(tmp_path, reads="open"), client=REMOTE)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=everyone, base_url="http://127.0.0.1:8089") as client:
        assert (await client.get("/")).status_code == 200


async def test_writes_need_the_token_and_a_browsers_write_must_come_from_the_console(
    local: httpx.AsyncClient,
) -> None:
    remote = local  # reading needs nothing here: what is refused is the write
    form = {"stream": "test"}
    nobody = await remote.post("/dead/replay", data=form)
    assert nobody.status_code == 401 and "sign in with the console token" in nobody.text
    wrong = await remote.post("/dead/replay", data=form, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    bearer = await remote.post("/dead/replay", data=form, headers=BEARER)  # past the guard: the form
    assert bearer.status_code == 400 and "names the stream and the dead-letter id" in bearer.text

    remote.cookies.set(COOKIE, session_cookie(TOKEN, "ada"))
    for origin in ({}, {"Origin": "http://evil.example"}, {"Origin": "null"}):
        refused = await remote.post("/dead/replay", data=form, headers=origin)
        assert refused.status_code == 403, origin
    ours = await remote.post("/dead/replay", data=form, headers={"Origin": "http://127.0.0.1:8089"})
    assert ours.status_code == 400
    referred = await remote.post("/dead/replay", data=form, headers={"Referer": "http://127.0.0.1:8089/dead"})
    assert referred.status_code == 400


async def test_signing_in_sets_a_strict_session_and_goes_back_only_to_this_console(
    remote: httpx.AsyncClient,
) -> None:
    refused = await remote.post("/login", data={"token": "not it", "next": "/dead"})
    assert refused.status_code == 401 and "That is not the console token" in refused.text
    assert COOKIE not in refused.cookies

    done = await remote.post("/login", data={"token": TOKEN, "name": "ada", "next": "/dead?stream=x"})
    assert done.status_code == 303 and done.headers["location"] == "/dead?stream=x"
    cookie = done.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and f"max-age={SESSION_S}" in cookie
    page = await remote.get("/login")
    assert "signed in as <strong>ada</strong>" in page.text

    elsewhere = await remote.post("/login", data={"token": TOKEN, "next": "//evil.example/x"})
    assert elsewhere.headers["location"] == "/"
    link = await remote.get("/login", params={"token": TOKEN, "next": "/governance"})
    assert link.status_code == 303 and link.headers["location"] == "/governance" and COOKIE in link.cookies


async def test_a_host_header_the_console_does_not_answer_to_is_refused(remote: httpx.AsyncClient) -> None:
    rebound = await remote.get("/", headers={**BEARER, "Host": "attacker.example:8089"})
    assert rebound.status_code == 400
    assert (await remote.get("/", headers={**BEARER, "Host": "localhost:8089"})).status_code == 200


# -- settings -------------------------------------------------------------------------------------
def test_a_token_file_is_made_private_once_then_read_and_a_weak_token_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "home" / "console-token"
    made = read_token(path, create=True)
    assert len(made) >= 32 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_token(path, create=True) == made == read_token(path, create=False)
    weak = tmp_path / "weak"
    weak.write_text("short\n")
    with pytest.raises(ConsoleConfigError, match=re.escape(f"--token-file {weak}: the console token")):
        read_token(weak, create=False)
    with pytest.raises(ConsoleConfigError, match=r"--token-file \S+missing: cannot read it"):
        read_token(tmp_path / "missing", create=False)


def test_the_settings_are_checked_once(tmp_path: Path) -> None:
    with pytest.raises(ConsoleConfigError, match="--reads 'everyone': one of loopback, signed-in, open"):
        ConsoleConfig(token=TOKEN, reads="everyone").check()  # type: ignore[arg-type]
    assert ConsoleConfig(host="0.0.0.0", token=TOKEN).trusted_hosts() == ["*"]
    named = ConsoleConfig(host="0.0.0.0", token=TOKEN, allowed_hosts=("console.example",))
    assert "console.example" in named.trusted_hosts() and "*" not in named.trusted_hosts()
    igor = tmp_path / "igor.json"
    igor.write_text(Ed25519Signer.generate("Igor.k1").key_file_text())
    again = tmp_path / "igor2.json"
    again.write_text(Ed25519Signer.generate("Igor.k2").key_file_text())
    assert list(anchor_keys([igor])) == ["Igor"]
    with pytest.raises(ConsoleConfigError, match=r"igor2\.json: a second key of anchor 'Igor'"):
        anchor_keys([igor, again])
    # the command keeps its defaults without loading the console: they must be the console's
    assert (console_command.DEFAULT_HOST, console_command.DEFAULT_PORT, console_command.TOKEN_ENV) == (
        console_config.DEFAULT_HOST,
        console_config.DEFAULT_PORT,
        console_config.TOKEN_ENV,
    )


@pytest.fixture
def taken_port() -> Iterator[int]:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen(1)
        yield port


def test_l9_console_on_a_port_in_use_says_so_on_one_line(tmp_path: Path, taken_port: int) -> None:
    env = {**os.environ, "L9_HOME": str(tmp_path), "L9_CONSOLE_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    done = run_l9("console", "--port", str(taken_port), env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{taken_port}: Address already in use; "
        "pick another with --port (or --host)"
    ]
    bad = run_l9("console", "--reads", "everyone", env=env)
    assert bad.returncode == 2 and "--reads 'everyone': one of loopback, signed-in, open" in bad.stderr


# -- filters, cursors, events ---------------------------------------------------------------------
def letter(reason: str, type_: str, source: str, deliveries: int) -> Letter:
    d = DeadLetter("test", "1-0", "e1", type_, reason, "", "g", deliveries, "")
    return Letter(d, source)


def test_the_dead_letter_filter() -> None:
    chosen = DeadFilter.of({"reason": "delivery_cap", "type": "l9.plan.*", "source": "planner"})
    assert chosen.matches(letter("delivery_cap", "l9.plan.locked.v1", "agent://planner/planner-3", 5))
    assert not chosen.matches(letter("delivery_cap", "l9.plan.locked.v1", "agent://planners/p-0", 5))
    assert not chosen.matches(letter("undecodable", "l9.plan.locked.v1", "agent://planner/planner-0", 5))
    assert not chosen.matches(letter("delivery_cap", "l9.schema.parsed.v1", "agent://planner/planner-0", 5))
    exact = DeadFilter.of({"source": "agent://planner/planner-0", "min_deliveries": "3"})
    assert exact.matches(letter("x", "t", "agent://planner/planner-0", 3))
    assert not exact.matches(letter("x", "t", "agent://planner/planner-0", 2))
    assert not exact.matches(letter("x", "t", "agent://planner/planner-1", 3))
    assert DeadFilter.of({"stream": "plan", "min_deliveries": "2"}).query() == "stream=plan&min_deliveries=2"
    for bad, says in (({"min_deliveries": "-1"}, "deliveries filter"), ({"stream": "a b"}, "stream filter")):
        with pytest.raises(HTTPException, match=says):
            DeadFilter.of(bad)


def test_trail_cursors_go_into_an_address_and_back() -> None:
    shapes: list[Cursors] = [{None: 120}, {0: 40, 1: 41, 7: 0}]
    for cursors in shapes:
        assert decode_cursors(encode_cursors(cursors)) == cursors
    with pytest.raises(HTTPException, match="after: 'x:1' is not CHAIN:SEQ"):
        decode_cursors("x:1")


async def test_a_live_part_is_sent_when_it_changes_and_each_line_is_its_own_data_line() -> None:
    assert sse("update", "<p>\n</p>") == "event: update\ndata: <p>\ndata: </p>\n\n"
    shown = iter(["a", "a", "a", "b", "b", "c"])

    async def render() -> str:
        return next(shown)

    sent = []
    with anyio.fail_after(10):
        async for event in changes(render, "update", 0):
            sent.append(event)
            if len(sent) == 3:
                break
    assert sent == [sse("update", "a"), sse("update", "b"), sse("update", "c")]


# -- what the pages compute -----------------------------------------------------------------------
def timed(at: float, op: str, backend: str, ms: float, cached: bool = False, ok: bool = True) -> Timed:
    event = OperationEvent(
        op=op, backend=backend, duration_ms=ms, cached=cached, outcome="ok" if ok else "error", requester="r"
    )
    return Timed(at, event)


def test_the_sympy_page_counts_per_second_and_per_operation_and_backend() -> None:
    now = 1000.0
    events = [
        timed(now - 0.5, "simplify", "sympy", 4, cached=True),
        timed(now - 0.7, "simplify", "sympy", 6),
        timed(now - 59.5, "evaluate", "numpy", 2),
        timed(now - 10.2, "evaluate", "evalf", 9, ok=False),
        timed(now - 61, "evaluate", "numpy", 1),  # outside the window
    ]
    counts = per_second(events, now)
    assert len(counts) == 60 and counts[-1] == 2 and counts[0] == 1 and counts[49] == 1 and sum(counts) == 4
    rows = {(r["op"], r["backend"]): r for r in by_backend(events, now)}
    assert set(rows) == {("simplify", "sympy"), ("evaluate", "numpy"), ("evaluate", "evalf")}
    assert (rows["simplify", "sympy"]["count"], rows["simplify", "sympy"]["hit_ratio"]) == (2, 0.5)
    assert (rows["evaluate", "evalf"]["errors"], rows["evaluate", "evalf"]["hit_ratio"]) == (1, None)
    assert next(iter(rows)) == ("simplify", "sympy")  # the busiest first


def test_many_effects_of_one_type_are_folded_but_never_those_with_effects_of_their_own() -> None:
    def leaf(n: int, type_: str = "l9.governance.decision.v1") -> Effect:
        return Effect(Step(f"e{n}", type_, "agent://enforcer/e-0", None, n), ())

    parent = Effect(Step("p", "l9.governance.decision.v1", "s", None, 99), (leaf(100),))
    items = [leaf(1), leaf(2), parent, leaf(3), leaf(4, "l9.enforce.completed.v1"), leaf(5), leaf(6)]
    folded = _folded(items)
    assert [(e.step.id, e.more) for e in folded] == [("e1", 0), ("e2", 0), ("p", 0), ("e3", 2), ("e4", 0)]


async def test_bad_input_is_a_page_naming_it_escaped_or_a_notice_for_htmx(remote: httpx.AsyncClient) -> None:
    page = await remote.get("/dead", params={"min_deliveries": "<b>"}, headers=BEARER)
    assert page.status_code == 400
    assert "deliveries filter: &#39;&lt;b&gt;&#39; is not a whole number" in page.text
    notice = await remote.get(
        "/dead", params={"min_deliveries": "x"}, headers={**BEARER, "HX-Request": "true"}
    )
    assert notice.status_code == 400 and notice.text.startswith('<div class="notice bad"')
