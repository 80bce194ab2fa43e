"""``l9 sympy ...``: call the SymPy worker from the command line, and read its cache counters.

    l9 sympy eval "x**2*y + 1" --at x=1,2,3 --at y=0.5,0.5,2
    l9 sympy simplify "sin(x)**2 + cos(x)**2"
    l9 sympy diff "x**3*y" --wrt x --order 2
    l9 sympy solve "x**2 == 4"
    l9 sympy codegen "sin(x)*y + x**2" --lang c --name energy
    l9 sympy compile "sin(x)*y + x**2"
    l9 sympy stats [--json] [--window 60] [--since 1h]
    l9 sympy export SESSION > session.json
    l9 sympy replay session.json

Each request goes to a running worker (``l9 agent run sympy``) over the bus;
the answer is printed as JSON. A refusal prints the worker's kind, rule and
position and exits 1; no worker answering before ``--deadline`` exits 2.
``--session ID`` sends a request as part of session ID (its correlation id);
``export`` writes a session's operations and results from the audit trail
(format ``l9.sympy.session/1``, see :mod:`agents.sympy.session`) and ``replay``
sends them to the running worker again: every result that differs is printed,
naming the operation and both results, and the exit code is 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from agents.contracts.sympy.payloads import Backend, Language
from agents.sympy import SymPyResult, SymPyTool, ToolError
from agents.sympy.cache import ResultCache
from agents.sympy.cache import summarise as summarise_cache
from agents.sympy.session import DEFAULT_REL_TOL, ReplayReport, SessionFileError, SessionRecord, replay
from agents.sympy.session import export as export_session
from agents.sympy.telemetry import WINDOW_S, read_window
from agents.sympy.telemetry import summarise as summarise_window
from bus import Keys, Publisher, RpcClient, RpcTimeout, open_client
from envelope import EnvelopeError, PacketEnvelope, Verifier, new_id
from l9.cli.common import duration_option, fail, load_settings, run
from l9.devstack import resolve_endpoints
from l9.settings import Settings
from l9.trail import open_trail
from memory.postgres import AuditStoreError, StoredEntry, migrate, writer_dsn
from memory.postgres.metrics import sympy_totals

R = TypeVar("R", bound=SymPyResult)
T = TypeVar("T")
sympy_app = typer.Typer(
    name="sympy", no_args_is_help=True, help="The SymPy worker: evaluate, simplify, codegen, stats."
)
Deadline = Annotated[float, typer.Option("--deadline", min=0.1, help="seconds to wait for the worker")]
Session = Annotated[
    str | None,
    typer.Option("--session", metavar="ID", help="send it as part of session ID (l9 sympy export)"),
]
NO_WORKER_HINT = "is `l9 agent run sympy` running?"


def _with_rpc(settings: Settings, work: Callable[[RpcClient], Awaitable[T]]) -> T:
    """Run ``work`` with an RpcClient on the configured Redis, signing as this CLI."""
    endpoints = resolve_endpoints(settings)
    signer, verifier = settings.signer(), settings.verifier()

    async def main() -> T:
        redis = await open_client(endpoints.redis_url, cluster=settings.redis_cluster)
        publisher = Publisher(redis, Keys(settings.namespace), signer)
        try:
            async with RpcClient(redis, publisher, verifier) as rpc:
                return await work(rpc)
        finally:
            await redis.aclose()

    return run(main)


def _call(ask: Callable[[SymPyTool], Awaitable[R]], deadline_s: float, session: str | None = None) -> None:
    """Ask the worker through a SymPyTool; print the reply as JSON, or the error, and exit."""
    settings = load_settings()

    async def ask_tool(rpc: RpcClient) -> R:
        return await ask(SymPyTool(rpc, source="agent://cli/sympy", deadline_s=deadline_s, session=session))

    try:
        reply = _with_rpc(settings, ask_tool)
    except ToolError as exc:
        where = f" at {exc.position} (offset {exc.position.offset})" if exc.position else ""
        typer.echo(f"error: {exc.kind}: {exc.rule}{where}: {exc.detail}", err=True)
        raise typer.Exit(1) from None
    except RpcTimeout:
        typer.echo(f"error: no SymPy worker answered within {deadline_s:g}s ({NO_WORKER_HINT})", err=True)
        raise typer.Exit(2) from None
    typer.echo(reply.model_dump_json(indent=2))


def _points(values: list[str]) -> dict[str, list[float]]:
    """``["x=1,2,3", "y=0.5"]`` -> ``{"x": [1.0, 2.0, 3.0], "y": [0.5]}``."""
    points: dict[str, list[float]] = {}
    for item in values:
        name, sep, numbers = item.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{item!r}: use NAME=V1,V2,...", param_hint="--at")
        try:
            points[name.strip()] = [float(v) for v in numbers.split(",") if v.strip()]
        except ValueError:
            raise typer.BadParameter(f"{item!r}: the values must be numbers", param_hint="--at") from None
    return points


@sympy_app.command("eval")
def eval_(
    expr: str,
    at: Annotated[list[str] | None, typer.Option("--at", help="NAME=V1,V2,... (repeat per symbol)")] = None,
    backend: Annotated[str, typer.Option(help="auto, evalf, numpy, symengine or compiled")] = "auto",
    precision: Annotated[int, typer.Option(min=1, max=1000, help="significant digits (evalf)")] = 15,
    deadline: Deadline = 30.0,
    session: Session = None,
) -> None:
    """Numeric values of EXPR at the points given with --at."""
    if backend not in ("auto", "evalf", "numpy", "symengine", "compiled"):
        raise typer.BadParameter(f"unknown backend {backend!r}", param_hint="--backend")
    chosen: Backend = backend  # type: ignore[assignment]
    points = _points(at or [])
    _call(lambda tool: tool.evaluate(expr, points, backend=chosen, precision=precision), deadline, session)


@sympy_app.command()
def simplify(expr: str, deadline: Deadline = 30.0, session: Session = None) -> None:
    """The simplified form of EXPR."""
    _call(lambda tool: tool.simplify(expr), deadline, session)


@sympy_app.command()
def expand(expr: str, deadline: Deadline = 30.0, session: Session = None) -> None:
    """EXPR multiplied out."""
    _call(lambda tool: tool.expand(expr), deadline, session)


@sympy_app.command()
def factor(expr: str, deadline: Deadline = 30.0, session: Session = None) -> None:
    """EXPR factored."""
    _call(lambda tool: tool.factor(expr), deadline, session)


@sympy_app.command()
def diff(
    expr: str,
    wrt: Annotated[str | None, typer.Option(help="the variable (default: the only symbol)")] = None,
    order: Annotated[int, typer.Option(min=1, max=50)] = 1,
    deadline: Deadline = 30.0,
    session: Session = None,
) -> None:
    """The derivative of EXPR."""
    _call(lambda tool: tool.diff(expr, wrt, order), deadline, session)


@sympy_app.command()
def solve(
    equations: list[str],
    unknown: Annotated[list[str] | None, typer.Option("--unknown", help="solve for (repeat)")] = None,
    deadline: Deadline = 30.0,
    session: Session = None,
) -> None:
    """Solutions of EQUATIONS (``Eq(a, b)``, ``a == b`` or an expression equal to 0)."""
    _call(lambda tool: tool.solve(*equations, unknowns=unknown or ()), deadline, session)


@sympy_app.command()
def codegen(
    expr: str,
    lang: Annotated[str, typer.Option("--lang", help="c, fortran, python or cython")] = "c",
    name: Annotated[str, typer.Option(help="the function's name")] = "kernel",
    cse: Annotated[bool, typer.Option(help="common subexpression elimination")] = True,
    deadline: Deadline = 30.0,
    session: Session = None,
) -> None:
    """Source code of a function computing EXPR."""
    if lang not in ("c", "fortran", "python", "cython"):
        raise typer.BadParameter(f"unknown language {lang!r}", param_hint="--lang")
    language: Language = lang  # type: ignore[assignment]
    _call(lambda tool: tool.generate_code(expr, language, name=name, cse=cse), deadline, session)


@sympy_app.command("compile")
def compile_(expr: str, deadline: Deadline = 300.0, session: Session = None) -> None:
    """Build (or find) the compiled kernel of EXPR on the worker."""
    _call(lambda tool: tool.compile(expr, deadline_s=deadline), deadline, session)


@sympy_app.command()
def stats(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    window: Annotated[
        float, typer.Option(min=1, max=86_400, help="seconds of the sliding window")
    ] = WINDOW_S,
    since: Annotated[
        timedelta | None,
        typer.Option(
            parser=duration_option,
            metavar="DURATION",
            help="also totals from PostgreSQL of the last DURATION (1h)",
        ),
    ] = None,
) -> None:
    """The last WINDOW seconds per operation (rate, latency percentiles, hit ratio, errors)
    from ``sympy.events``, and the cache's hit and miss counters since they were created;
    with --since, the totals of ``l9_metrics.sympy_metrics`` (and code generation) since then."""
    settings = load_settings()
    endpoints = resolve_endpoints(settings)
    keys, verifier = Keys(settings.namespace), settings.verifier()

    async def read() -> dict[str, Any]:
        redis = await open_client(endpoints.redis_url, cluster=settings.redis_cluster)
        try:
            counters = await ResultCache(redis, keys, ttl_s=1, max_bytes=0).stats()
            now, events = await read_window(redis, keys, verifier, window)
            report = {"window": summarise_window(events, now, window), "cache": summarise_cache(counters)}
        finally:
            await redis.aclose()
        if since is not None:
            await migrate(endpoints.database_url)  # the tables exist even before any worker ran
            dsn = writer_dsn(endpoints.database_url, settings.database_writer_url)
            report["postgres"] = await sympy_totals(dsn, datetime.now(UTC) - since)
        return report

    try:
        report = run(read)
    except AuditStoreError as exc:
        raise fail(f"cannot read the SymPy metrics from PostgreSQL: {exc}") from None
    if as_json:
        typer.echo(json.dumps(report))
        return
    _print_window(report["window"])
    typer.echo("")
    _print_cache(report["cache"])
    if "postgres" in report:
        typer.echo("")
        _print_totals(report["postgres"])


def _print_totals(totals: dict[str, Any]) -> None:
    typer.echo(f"since {totals['since']} (PostgreSQL l9_metrics)")
    typer.echo(
        f"{'operation':<16}{'count':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'hits':>8}{'errors':>8}"
    )
    for op, row in [*totals["operations"].items(), ("all", totals["total"])]:
        cells = [_num(row[k]) for k in ("p50_ms", "p95_ms", "p99_ms")]
        typer.echo(
            f"{op:<16}{row['count']:>8}{cells[0]:>9}{cells[1]:>9}{cells[2]:>9}"
            f"{_ratio(row['hit_ratio']):>8}{row['errors']:>8}"
        )
    for language, row in totals["codegen"].items():
        typer.echo(
            f"codegen {language:<8}{row['count']:>8} generated, {row['succeeded']} succeeded, "
            f"p50 {_num(row['p50_ms'])} ms, max {_num(row['max_ms'])} ms"
        )


def _print_window(window: dict[str, Any]) -> None:
    typer.echo(f"last {window['window_s']:g}s (sympy.events)")
    columns = [
        ("count", 7),
        ("per s", 8),
        ("p50 ms", 9),
        ("p95 ms", 9),
        ("p99 ms", 9),
        ("hits", 8),
        ("errors", 8),
    ]
    typer.echo(f"{'operation':<16}" + "".join(f"{name:>{width}}" for name, width in columns))
    for op, row in [*window["operations"].items(), ("all", window["total"])]:
        cells = [_num(row[k]) for k in ("p50_ms", "p95_ms", "p99_ms")]
        typer.echo(
            f"{op:<16}{row['count']:>7}{row['per_s']:>8.2f}{cells[0]:>9}{cells[1]:>9}{cells[2]:>9}"
            f"{_ratio(row['hit_ratio']):>8}{row['errors']:>8}"
        )


def _print_cache(cache: dict[str, Any]) -> None:
    typer.echo("cache since created")
    typer.echo(f"{'operation':<16}{'hits':>10}{'misses':>10}{'hit ratio':>11}")
    for op, row in [*cache["operations"].items(), ("all", cache["total"])]:
        typer.echo(f"{op:<16}{row['hits']:>10}{row['misses']:>10}{_ratio(row['hit_ratio']):>11}")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


@sympy_app.command("export")
def export_(
    session: Annotated[str, typer.Argument(help="the session (correlation id) to export")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write here instead of stdout")] = None,
) -> None:
    """SESSION's operations and results from the audit trail, as JSON (l9.sympy.session/1).

    The file: {format, session, exported_at, operations: [{request_id, time, requester, type,
    op, request, result: {type, data} or null}]}, in trail order; a refusal's result is
    l9.bus.error.v1 {error, detail}. SESSION is the correlation id the calls carried
    (--session, SymPyTool(session=...)). Described in agents/sympy/session.py."""
    settings = load_settings()
    verifier = settings.verifier()

    async def read() -> list[StoredEntry]:
        store = await open_trail(settings, max_size=1)
        try:
            return await store.entries_for_correlation(session)
        finally:
            await store.close()

    try:
        record = export_session(session, _envelopes(run(read), verifier))
    except AuditStoreError as exc:
        raise fail(f"cannot read the audit trail: {exc}") from None
    if not record.operations:
        raise fail(f"no SymPy request of session {session!r} in the audit trail (is the auditor running?)")
    missing = sum(1 for op in record.operations if op.result is None)
    if missing:
        typer.echo(f"warning: {missing} request(s) have no recorded result (yet)", err=True)
    if out is None:
        sys.stdout.write(record.to_json())
    else:
        out.write_text(record.to_json())
        typer.echo(f"{len(record.operations)} operation(s) of session {session} written to {out}", err=True)


def _envelopes(entries: Sequence[StoredEntry], verifier: Verifier) -> list[PacketEnvelope]:
    """The trail entries' envelopes, signatures checked; redacted ones are left out (and said so)."""
    envelopes = []
    for entry in entries:
        if entry.redacted:
            typer.echo(f"warning: seq {entry.seq} ({entry.type}) is redacted: left out", err=True)
            continue
        try:
            envelopes.append(entry.envelope(verifier))
        except EnvelopeError as exc:
            raise fail(f"seq {entry.seq} of the trail does not verify: {exc}") from None
    return envelopes


@sympy_app.command("replay")
def replay_(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="a file of l9 sympy export")],
    session: Annotated[
        str | None, typer.Option("--session", metavar="ID", help="the replay's own session (default: new)")
    ] = None,
    rel_tol: Annotated[
        float, typer.Option("--rel-tol", min=0.0, help="numbers agree within this relative tolerance")
    ] = DEFAULT_REL_TOL,
    deadline: Deadline = 30.0,
) -> None:
    """Send FILE's requests to the running worker again; print every result that differs (exit 1)."""
    try:
        record = SessionRecord.from_json(file.read_bytes(), str(file))
    except SessionFileError as exc:
        raise fail(str(exc), 2) from None
    settings, replay_session = load_settings(), session or new_id()

    async def send_again(rpc: RpcClient) -> ReplayReport:
        return await replay(
            rpc,
            record,
            source="agent://cli/sympy",
            session=replay_session,
            deadline_s=deadline,
            rel_tol=rel_tol,
        )

    try:
        report = _with_rpc(settings, send_again)
    except RpcTimeout:
        raise fail(f"no SymPy worker answered within {deadline:g}s ({NO_WORKER_HINT})", 2) from None
    for difference in report.differences:
        typer.echo(difference.describe())
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(1)
