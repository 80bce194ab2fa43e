"""``l9 console`` against the real Redis and PostgreSQL: the console served by uvicorn on a free
port, read over HTTP and its server-sent events (httpx), written to with the console token.

Streams with live and lapsed consumers and a lag that moves as envelopes are published; dead
letters filtered and replayed (one, and every one a filter matches); the trail followed live
with a filter, and an entry's causes and effects; escalations approved and denied, signed as
the command signs them (the console's key, or an anchor's pasted key); runs, their phases and
their evidence report, verified; the SymPy worker's last 60 s; and the command itself.
"""

from __future__ import annotations

import asyncio
import html
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from agents.lineage.project import envelope_node
from agents.sympy.keys import cache_stats_key
from agents.sympy.telemetry import OperationEvent
from bus import DeadLetters, Keys, Publisher, as_text
from bus.connection import RedisClient
from envelope import Ed25519Signer, PacketEnvelope, Signer, decode_envelope, encode, registry
from governance import Decision, EscalationResolved, Escalations, Outcome, PolicyEngine
from l9.console import Backend, ConsoleConfig, ConsoleServer, create_app, listen
from l9.devstack import StackEndpoints
from l9.settings import Settings
from memory.audit import AuditRecord
from memory.postgres import PostgresAuditStore, SigningKey
from tests.conftest import KEYRING, ROOT, AgentProcess, free_port, wait_for
from tests.fake_pipeline import downstream, locked_of, planner_steps, publish_steps, request_for
from tests.integration.ledger import Work

pytestmark = pytest.mark.integration

TOKEN = "console-test-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
#: Deadlines of these tests only catch hangs.
HANG_S = 60.0


@dataclass
class Running:
    url: str
    backend: Backend
    config: ConsoleConfig
    settings: Settings


def settings_for(namespace: str, tmp_path: Path, **more: Any) -> Settings:
    """The console's settings: the test's namespace and keyring, its own home and audit key."""
    key_file = tmp_path / "audit-key.hex"
    key_file.write_text(SigningKey.generate().private_bytes.hex())
    return Settings(
        namespace=namespace,
        home=tmp_path / "home",
        signing_keys={k: v.decode() for k, v in KEYRING.items()},
        signing_key_id="dev",
        audit_key_file=key_file,
        audit_checkpoint_dir=tmp_path / "checkpoints",
        **more,
    )


def agent_env_of(settings: Settings, agent_env: dict[str, str], database_url: str) -> dict[str, str]:
    """The agents' environment with the console's database, home and audit key."""
    return {
        **agent_env,
        "DATABASE_URL": database_url,
        "L9_HOME": str(settings.home),
        "L9_AUDIT_KEY_FILE": str(settings.audit_key_file),
        "L9_AUDIT_CHECKPOINT_DIR": str(settings.audit_checkpoint_dir),
    }


@pytest.fixture
def console_settings(namespace: str, tmp_path: Path) -> Settings:
    return settings_for(namespace, tmp_path)


async def start_console(
    settings: Settings, endpoints: StackEndpoints, **options: Any
) -> tuple[Running, Callable[[], Awaitable[None]]]:
    """The console on a free loopback port, served in this event loop."""
    backend = await Backend.open(settings, endpoints)
    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = ConsoleConfig(port=port, token=TOKEN, refresh_s=0.2, **options).check()
    server = ConsoleServer(create_app(backend, config), sock, handle_signals=False)
    task = asyncio.create_task(server.serve())
    running = Running(f"http://127.0.0.1:{port}", backend, config, settings)
    async with httpx.AsyncClient(base_url=running.url) as client:

        async def answers() -> bool:
            try:
                return (await client.get("/static/console.css")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(answers, timeout=HANG_S)

    async def stop() -> None:
        server.stop()
        with anyio.fail_after(HANG_S):
            await task
        await backend.close()

    return running, stop


@pytest.fixture
async def console(
    console_settings: Settings, stack: StackEndpoints, admin_dsn: str, redis: RedisClient
) -> AsyncIterator[Running]:
    running, stop = await start_console(console_settings, StackEndpoints(stack.redis_url, admin_dsn))
    yield running
    await stop()


@pytest.fixture
async def client(console: Running) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=console.url, timeout=HANG_S) as http:
        yield http


@dataclass(frozen=True)
class Event:
    name: str
    data: str
    id: str | None


async def events(
    client: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None
) -> AsyncGenerator[Event]:
    """The server-sent events of ``path``, comments skipped."""
    wanted = {"Accept": "text/event-stream", **(headers or {})}
    async with client.stream("GET", path, headers=wanted) as response:
        assert response.status_code == 200, await response.aread()
        name, data, event_id = "message", list[str](), None
        async for line in response.aiter_lines():
            if line.startswith(":"):
                continue
            if not line:
                if data:
                    yield Event(name, "\n".join(data), event_id)
                name, data, event_id = "message", list[str](), None
            elif line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("id: "):
                event_id = line[len("id: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])


async def next_event(stream: AsyncGenerator[Event], wanted: Callable[[str], bool]) -> Event:
    """The first event of ``stream`` whose data ``wanted`` accepts."""
    with anyio.fail_after(HANG_S):
        async for event in stream:
            if wanted(event.data):
                return event
    raise AssertionError("the event stream ended")


def entry_links(rows: str) -> set[str]:
    return set(re.findall(r'<a href="/trail/entry/([^"]+)">', rows))


def lag_in(page: str, stream: str, group: str) -> int | None:
    found = re.search(rf'data-lag="{re.escape(stream)}/{re.escape(group)}">(\d+)<', page)
    return int(found.group(1)) if found else None


def work(n: int, fail_times: int = 0) -> PacketEnvelope:
    return PacketEnvelope.new(
        type="l9.test.work.v1", source="agent://test/p", data=Work(n=n, fail_times=fail_times).model_dump()
    )


# -- streams --------------------------------------------------------------------------------------
async def test_streams_show_live_and_lapsed_consumers_and_lag_moves_as_envelopes_are_published(
    client: httpx.AsyncClient, redis: RedisClient, keys: Keys, signer: Signer
) -> None:
    publisher = Publisher(redis, keys, signer)
    await publisher.publish_many([work(n) for n in range(4)])
    stream = keys.stream("test")
    await redis.xgroup_create(stream, "readers", id="0")
    for consumer in ("readers-1", "readers-2"):
        await redis.xreadgroup("readers", consumer, {stream: ">"}, count=1)
    await redis.set(keys.heartbeat("readers-1"), "1", px=60_000)  # readers-2 has no heartbeat

    page = (await client.get("/")).text
    assert lag_in(page, "test", "readers") == 2
    assert re.search(r'<li class="alive" data-consumer="readers-1">', page)
    assert re.search(r'<li class="lapsed" data-consumer="readers-2">', page)
    assert re.search(r'data-pending="test/readers">2<', page)

    live = events(client, "/streams/events")
    first = await next_event(live, lambda d: lag_in(d, "test", "readers") is not None)
    assert lag_in(first.data, "test", "readers") == 2
    await publisher.publish_many([work(n) for n in range(10, 13)])
    moved = await next_event(live, lambda d: lag_in(d, "test", "readers") != 2)
    assert lag_in(moved.data, "test", "readers") == 5
    await live.aclose()


# -- dead letters ----------------------------------------------------------------------------------
async def dead_letters(redis: RedisClient, keys: Keys, signer: Signer) -> list[PacketEnvelope]:
    """Three dead letters of stream ``test``: two given up at the delivery cap, one undecodable."""
    await redis.xgroup_create(keys.stream("test"), "ledger", id="$", mkstream=True)
    letters = DeadLetters(redis, keys, "ledger", "ledger-0")
    envelopes = [work(1), work(2), work(3)]
    reasons = [("delivery_cap", 5), ("delivery_cap", 2), ("undecodable", 1)]
    for envelope, (reason, deliveries) in zip(envelopes, reasons, strict=True):
        fields = encode(envelope, signer)
        entry_id = as_text(await redis.xadd(keys.stream("test"), fields))  # type: ignore[arg-type]
        await letters.letter("test", entry_id, fields, reason, f"{reason} of n", deliveries)
    return envelopes


async def test_dead_letters_filter_and_replay_one_and_all_matching_for_a_signed_in_operator(
    client: httpx.AsyncClient, redis: RedisClient, keys: Keys, signer: Signer
) -> None:
    first, second, third = await dead_letters(redis, keys, signer)
    page = (await client.get("/dead")).text
    assert all(e.id in page for e in (first, second, third))
    capped = (await client.get("/dead", params={"reason": "delivery_cap", "min_deliveries": "3"})).text
    assert first.id in capped and second.id not in capped and third.id not in capped
    assert (await client.get("/dead", params={"min_deliveries": "many"})).status_code == 400

    letter_id = re.search(rf'data-letter="([^"]+)"[\s\S]*?{first.id}', page)
    assert letter_id is not None
    form = {"stream": "test", "id": letter_id.group(1)}
    refused = await client.post("/dead/replay", data=form)
    assert refused.status_code == 401 and "sign in" in refused.text
    assert await redis.xlen(keys.dead("test")) == 3

    done = await client.post("/dead/replay", data=form, headers=BEARER)
    assert done.status_code == 200 and "replayed on test as entry" in done.text
    entries: Any = await redis.xrange(keys.stream("test"))
    assert entries[-1][1][b"id"] == first.id.encode()  # the same envelope, back on its stream
    assert not any(k.startswith(b"dl_") for k in entries[-1][1])
    again = await client.post("/dead/replay", data=form, headers=BEARER)
    assert again.status_code == 404 and f"no dead letter {letter_id.group(1)}" in again.text

    matching = await client.post("/dead/replay-matching", data={"reason": "delivery_cap"}, headers=BEARER)
    assert "1 dead letter(s) replayed (1 on test)" in matching.text
    left = (await client.get("/dead")).text
    assert third.id in left and second.id not in left and "1</strong> dead letter(s) shown" in left


async def test_a_browser_write_from_another_site_is_refused(
    client: httpx.AsyncClient, console: Running
) -> None:
    signed_in = await client.post("/login", data={"token": TOKEN, "name": "ada", "next": "/dead"})
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/dead"
    form = {"stream": "test", "id": "1-0"}
    foreign = await client.post("/dead/replay", data=form, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403 and "console's own pages" in html.unescape(foreign.text)
    ours = await client.post("/dead/replay", data=form, headers={"Origin": console.url})
    assert ours.status_code == 404 and "no dead letter 1-0 on stream 'test'" in html.unescape(ours.text)


# -- the trail -------------------------------------------------------------------------------------
async def append(store: PostgresAuditStore, signer: Signer, *envelopes: PacketEnvelope) -> None:
    records = [
        AuditRecord.from_envelope(e, stream="test", entry_id=f"{i + 1}-0", signer=signer)
        for i, e in enumerate(envelopes)
    ]
    await store.append(records)


def child_of(cause: PacketEnvelope, type_: str = "l9.test.work.v1", n: int = 0) -> PacketEnvelope:
    return PacketEnvelope.new(
        type=type_,
        source="agent://ledger/ledger-0",
        data=Work(n=n).model_dump() if type_ == "l9.test.work.v1" else {"text": "hi", "by": "x"},
        correlation_id=cause.correlation_id,
        causation_id=cause.id,
    )


async def test_the_trail_follows_new_entries_with_a_filter_and_shows_an_entrys_lineage(
    client: httpx.AsyncClient, console: Running, store: PostgresAuditStore, signer: Signer
) -> None:
    root = work(1)
    child = child_of(root, n=2)
    grandchild = child_of(child, "l9.test.pong.v1")
    await append(store, signer, root, child, grandchild)

    page = (await client.get("/trail", params={"type": "l9.test.work.*"})).text
    assert root.id in page and child.id in page and grandchild.id not in page
    address = re.search(r'sse-connect="([^"]+)"', page)
    assert address is not None
    # committed after the page was read: the page's events go on from the heads it showed
    later_pong, later_work = child_of(root, "l9.test.pong.v1"), child_of(root, n=3)
    await append(store, signer, later_pong, later_work)
    follow = html.unescape(address.group(1))
    live = events(client, follow)
    rows = await next_event(live, lambda d: "data-seq" in d)
    assert entry_links(rows.data) == {later_work.id}  # not the pong, nor what the page showed
    await live.aclose()
    # a browser reconnecting sends the id of the last event it had: it gets what came after
    last = child_of(root, n=4)
    await append(store, signer, last)
    again = events(client, follow, headers={"Last-Event-ID": rows.id or ""})
    resumed = await next_event(again, lambda d: "data-seq" in d)
    assert entry_links(resumed.data) == {last.id}
    await again.aclose()

    entry = (await client.get(f"/trail/entry/{child.id}")).text
    assert "Causes from the audit trail (the graph does not hold this envelope" in entry
    assert "effects from the audit trail (the graph does not hold this envelope)" in entry
    causes, _, effects = entry.partition('<li class="self">')
    assert f"/trail/entry/{root.id}" in causes
    assert f"/trail/entry/{grandchild.id}" in effects and "l9.test.pong.v1" in effects
    assert (await client.get("/trail/entry/no-such-envelope")).status_code == 404
    # once the lineage projector put them in the graph, both come from there
    nodes = [envelope_node(e, "t") for e in (root, child, grandchild)]
    await console.backend.graph().project_envelopes(nodes)
    entry = (await client.get(f"/trail/entry/{child.id}")).text
    assert "Causes from the semantic graph; effects from the semantic graph" in entry
    causes, _, effects = entry.partition('<li class="self">')
    assert f"/trail/entry/{root.id}" in causes and f"/trail/entry/{grandchild.id}" in effects


# -- governance ------------------------------------------------------------------------------------
async def escalate(redis: RedisClient, keys: Keys, signer: Signer, subject: str) -> str:
    engine = PolicyEngine.load()
    desk = Escalations(
        redis,
        Publisher(redis, keys, signer),
        spec=engine.escalation,
        anchors=engine.anchors,
        source="agent://enforcer/enforcer-0",
    )
    decision = Decision(
        outcome=Outcome.ESCALATE,
        subject=subject,
        reason=f"escalated by network-review@1: {subject}:3: socket.socket()",
        policy="network-review@1",
        policies=("network-review@1",),
        anchors=("Igor",),
    )
    return (await desk.escalate(decision, deadline_s=600)).id


async def answer_of(
    redis: RedisClient, keys: Keys, escalation_id: str
) -> tuple[PacketEnvelope, EscalationResolved]:
    """The answer on the resolutions stream (as the auditor reads it: the entry, signed)."""
    entries: Any = await redis.xrange(keys.stream("governance.resolutions"))
    for _, fields in entries:
        envelope = decode_envelope(fields)
        answer = registry.load(envelope)
        if envelope.causation_id == escalation_id and isinstance(answer, EscalationResolved):
            return envelope, answer
    raise AssertionError(f"no answer to {escalation_id}")


async def test_escalations_are_approved_and_denied_signed_as_the_command_signs_them(
    client: httpx.AsyncClient, redis: RedisClient, keys: Keys, signer: Signer
) -> None:
    first = await escalate(redis, keys, signer, "code/a.py")
    second = await escalate(redis, keys, signer, "code/b.py")
    page = (await client.get("/governance")).text
    assert f'data-escalation="{first}"' in page and f'data-escalation="{second}"' in page

    form = {"id": first, "anchor": "Igor", "reason": "the socket is the service's own"}
    assert (await client.post("/governance/approve", data=form)).status_code == 401
    no_reason = await client.post("/governance/approve", data={**form, "reason": " "}, headers=BEARER)
    assert no_reason.status_code == 400 and "say why" in no_reason.text
    stranger = await client.post("/governance/approve", data={**form, "anchor": "Mallory"}, headers=BEARER)
    assert stranger.status_code == 400 and "Mallory" in stranger.text

    approved = await client.post("/governance/approve", data=form, headers=BEARER)
    assert approved.status_code == 200, approved.text
    assert f"escalation {first} approved by Igor (signed with dev)" in approved.text
    envelope, answer = await answer_of(redis, keys, first)
    assert (answer.approved, answer.by, answer.signed_by, envelope.auth) == (True, "Igor", "dev", "Igor")
    assert envelope.source == "agent://governance-cli/Igor"  # as `l9 governance approve` sends it
    twice = await client.post("/governance/deny", data=form, headers=BEARER)
    assert twice.status_code == 409 and "already approved by Igor" in twice.text

    igor, other = Ed25519Signer.generate("Igor.k1"), Ed25519Signer.generate("Compliance.k1")
    deny = {"id": second, "anchor": "Igor", "reason": "no raw sockets"}
    wrong = await client.post("/governance/deny", data={**deny, "key": other.key_file_text()}, headers=BEARER)
    assert wrong.status_code == 400 and "is 'Compliance''s, not 'Igor''s" in html.unescape(wrong.text)
    denied = await client.post("/governance/deny", data={**deny, "key": igor.key_file_text()}, headers=BEARER)
    assert f"escalation {second} denied by Igor (signed with Igor.k1)" in denied.text
    envelope, answer = await answer_of(redis, keys, second)
    assert (answer.approved, answer.signed_by) == (False, "Igor.k1")
    assert (envelope.key_id, (envelope.signature or "")[:8]) == ("Igor.k1", "ed25519:")
    after = (await client.get("/governance")).text
    assert "Nothing to decide" in after and f'data-answer="{first}"' in after


# -- runs and reports ------------------------------------------------------------------------------
@pytest.fixture
def agent_env_for(console_settings: Settings, agent_env: dict[str, str], admin_dsn: str) -> dict[str, str]:
    return agent_env_of(console_settings, agent_env, admin_dsn)


async def publish_run(redis: RedisClient, keys: Keys, signer: Signer, out: Path) -> PacketEnvelope:
    """A whole extraction run as the agents publish it (an escalation approved on the way)."""
    request = request_for(out_dir=out)
    envelope = PacketEnvelope.new(
        type="l9.extract.request.v1", source="agent://l9-extract/tester", data=request.model_dump(mode="json")
    )
    publisher = Publisher(redis, keys, signer)
    await publisher.publish(envelope)
    steps = await planner_steps(request, envelope.time)
    at, locked = locked_of(steps)
    steps += downstream(at, locked, str(out / locked.folder_name), fail="approved")
    await publish_steps(publisher, envelope, steps)
    return envelope


async def test_a_run_shows_its_phases_and_its_report_verifies_until_the_file_is_edited(
    client: httpx.AsyncClient,
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    spawn: Callable[..., AgentProcess],
    agent_env_for: dict[str, str],
    tmp_path: Path,
) -> None:
    spawn("auditor", env=agent_env_for)
    request = await publish_run(redis, keys, signer, tmp_path / "out")
    run = request.correlation_id

    async def reported() -> bool:
        return "report (passed)" in (await client.get("/runs")).text

    await wait_for(reported, timeout=120)
    page = (await client.get(f"/runs/{run}")).text
    for phase in ("plan", "generate", "enforce", "validate", "report"):
        assert f'data-phase="{phase}" data-phase-status="done"' in page, phase
    assert 'data-status="passed"' in page and "escalation approved by Igor" in page
    assert "not on this machine" in page  # the stand-in pipeline wrote no folder

    report = (await client.get(f"/runs/{run}/report")).text
    assert 'data-verified="ok"' in report and 'data-outcome="completed"' in report
    assert "Phase 3: enforcement" in report and "Governance and compliance" in report
    md = Path(agent_env_for["L9_HOME"]) / "reports" / f"{run}.md"
    md.write_text(md.read_text().replace("Outcome: completed", "Outcome: fine"))
    edited = (await client.get(f"/runs/{run}/report")).text
    assert 'data-verified="failed"' in edited and "content:" in edited
    missing = await client.get(f"/runs/{run}/file", params={"path": "../../etc/passwd"})
    assert missing.status_code == 404
    assert (await client.get("/runs/no-such-run")).status_code == 404


# -- the SymPy worker -------------------------------------------------------------------------------
async def test_the_sympy_page_shows_the_last_minute_per_operation_and_backend_and_the_cache(
    client: httpx.AsyncClient, redis: RedisClient, keys: Keys, signer: Signer
) -> None:
    publisher = Publisher(redis, keys, signer)
    done = [
        ("simplify", "sympy", 4.0, True, "ok"),
        ("simplify", "sympy", 8.0, False, "ok"),
        ("evaluate", "numpy", 2.0, False, "ok"),
        ("evaluate", "evalf", 30.0, False, "error"),
    ]
    for op, backend, ms, cached, outcome in done:
        event = OperationEvent(
            op=op, backend=backend, duration_ms=ms, cached=cached, outcome=outcome, requester="agent://t/0"
        )
        envelope = PacketEnvelope.new(
            type="l9.sympy.operation.v1", source="agent://sympy/sympy-0", data=event.model_dump()
        )
        await publisher.publish(envelope, "sympy.events")
    await redis.hset(cache_stats_key(keys), mapping={"hits": 3, "misses": 1, "hits:simplify": 3})

    page = (await client.get("/sympy")).text
    rows = dict(re.findall(r'data-op="([^"]+)">[\s\S]*?<td class="num" data-count>(\d+)</td>', page))
    assert rows == {"simplify/sympy": "2", "evaluate/numpy": "1", "evaluate/evalf": "1"}
    assert re.search(r'data-total="count">4<', page) and re.search(r'data-total="errors">1<', page)
    assert re.search(r'data-total="hit-ratio">33.3%<', page)  # 1 of the 3 answered
    assert re.search(r'data-total="cache-ratio">75.0%<', page)


# -- reads and the command -------------------------------------------------------------------------
async def test_reads_need_a_sign_in_when_the_console_asks_everyone(
    console_settings: Settings, stack: StackEndpoints, admin_dsn: str, redis: RedisClient
) -> None:
    running, stop = await start_console(
        console_settings, StackEndpoints(stack.redis_url, admin_dsn), reads="signed-in"
    )
    try:
        async with httpx.AsyncClient(base_url=running.url, timeout=HANG_S) as http:
            page = await http.get("/dead?stream=test", headers={"Accept": "text/html"})
            assert page.status_code == 303
            assert page.headers["location"] == "/login?next=%2Fdead%3Fstream%3Dtest"
            assert (await http.get("/streams/events")).status_code == 401
            assert (await http.get("/", headers=BEARER)).status_code == 200
            assert (await http.get("/", headers={"Host": "evil.example"})).status_code == 400
    finally:
        await stop()


def test_l9_console_serves_on_its_port_and_stops_on_sigterm(agent_env: dict[str, str]) -> None:
    port = free_port()
    env = {**agent_env, "L9_CONSOLE_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "l9", "console", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        status, deadline = 0, time.monotonic() + HANG_S
        while not status and time.monotonic() < deadline:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code
            except httpx.TransportError:
                time.sleep(0.2)
        assert status == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=HANG_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    # uvicorn stops gracefully on SIGTERM, then ends the process by that signal (as it came)
    assert proc.returncode in (0, -signal.SIGTERM) and "Traceback" not in err, err
    assert f"L9 console on http://127.0.0.1:{port}" in out
    assert "writes (replay, approve, deny) need the console token: L9_CONSOLE_TOKEN" in out
    assert f"sign in: http://127.0.0.1:{port}/login?token=" in out
