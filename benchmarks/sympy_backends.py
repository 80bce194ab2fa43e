"""Evaluation backends of the SymPy worker against an evalf loop, and the bus round trip of a cached request.

    .venv/bin/python -m benchmarks.sympy_backends [--points 100000] [--reps 5] [--roundtrips 300]
        [--load-runs 5] [--expressions polynomial,trig_exp,determinant_6x6,rational] [--evalf-max-ops N]

Prints one JSON object on stdout; progress goes to stderr.

Method. Each expression is parsed by the worker's safe parser. Every backend
evaluates the same 100k (x, y) points, as float64 arrays; the time is the
best of ``--reps`` calls of the already-built callable (build times are
reported apart). The baseline, an ``evalf`` loop (15 digits, one point at a
time, as a naive caller would write it), runs in the same process for at
least ``--evalf-s`` seconds and is scaled to 100k points. ``default`` is the
backend the worker's ``auto`` picks for 100k points once the kernel has been
compiled (the compiled kernel, else symengine); its raw time is compared with
symengine ``Lambdify``. ``compiled_cache_load_ms`` loads a built kernel from
the disk cache in a fresh process that has imported numpy (as a worker has),
median of 5 processes (``--load-runs``). For tests, ``--expressions`` measures
some of the four only (the polynomial always) and ``--evalf-max-ops`` skips the
evalf loop of bigger expressions (one point of the 6x6 determinant costs some
20 s of CPU): they get no ``evalf`` figures. The round trip starts the embedded
stack (or uses REDIS_URL/DATABASE_URL), runs ``l9 agent run sympy`` as its own
process and times ``SymPyTool.evaluate`` of a cached request from this process;
the baseline is a Redis PING round trip measured on the same connection pool. The
worker runs as in production: it publishes each operation's event and result
copy after the reply and writes its metrics to PostgreSQL in the background.
The CPU time the worker process and this process spend per request (both
measured over the timed loop, the caller's including its PING) is reported
beside the wall-clock figures: on a loaded machine it moves less than they do.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import symengine
import sympy

from agents.sympy.compiled import KernelStore, kernel_hash
from agents.sympy.evaluate import _callable, evaluate
from agents.sympy.parser import ParserLimits, canonical_hash, parse

ROOT = Path(__file__).resolve().parents[1]
#: The development keyring's shared key id (the shipped policy's identity.shared_keys).
KEYRING = {"dev": "benchmark-signing-key-0123456789abcdef"}
TARGET_DEFAULT_RATIO = 1.5
TARGET_ROUNDTRIP_P50_MS = 1.0
TARGET_LOAD_MS = 5.0


def determinant_text(n: int = 6) -> str:
    """A 6x6 determinant of entries linear in x and y, with fixed pseudo-random coefficients."""
    seed, rows = 7, []
    for _ in range(n):
        row = []
        for _ in range(n):
            coefficients = []
            for modulus, shift in ((7, 3), (5, 2), (9, 4)):
                seed = (seed * 1103515245 + 12345) % 2**31
                coefficients.append(seed % modulus - shift)
            a, b, c = coefficients
            row.append(f"{a}*x + {b}*y + {c}")
        rows.append("[" + ", ".join(row) + "]")
    return "det(Matrix([" + ", ".join(rows) + "]))"


EXPRESSIONS = {
    "polynomial": "3*x**4 - 2*x**3 + 5*x**2*y - x*y**2 + 7*y**3 - 11",
    "trig_exp": "exp(-x**2/2)*cos(3*x) + sin(x*y)**2 + log(1 + y**2)",
    "determinant_6x6": determinant_text(),
    "rational": "(x**3 - 2*x*y + 1)/(x**2 + y**2 + 1) + (y - 1)/(x**4 + 2)",
}


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def best_ms(call: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times) * 1000


def evalf_ms_per_point(expr: Any, xs: np.ndarray, ys: np.ndarray, budget_s: float) -> tuple[float, int]:
    x, y = sympy.Symbol("x"), sympy.Symbol("y")
    started, done = time.perf_counter(), 0
    while done < 200 and (done == 0 or time.perf_counter() - started < budget_s):
        expr.evalf(15, subs={x: sympy.Float(float(xs[done])), y: sympy.Float(float(ys[done]))})
        done += 1
    return (time.perf_counter() - started) * 1000 / done, done


def measure_expression(name: str, text: str, store: KernelStore, args: argparse.Namespace) -> dict[str, Any]:
    expr = parse(text, ParserLimits(max_chars=5000))
    rng = np.random.default_rng(42)
    xs, ys = rng.uniform(0.1, 1.9, args.points), rng.uniform(-0.9, 0.9, args.points)
    symbols = [sympy.Symbol("x"), sympy.Symbol("y")]
    scale = 100_000 / args.points
    out: dict[str, Any] = {"ops": int(sympy.count_ops(expr))}
    times: dict[str, float] = {}
    sampled = 0
    if args.evalf_max_ops is None or out["ops"] <= args.evalf_max_ops:
        per_point, sampled = evalf_ms_per_point(expr, xs, ys, args.evalf_s)
        times["evalf"] = per_point * 100_000
    build: dict[str, float] = {}
    for backend in ("numpy", "symengine"):
        started = time.perf_counter()
        function = _callable(backend, expr, symbols, f"bench-{name}")
        build[backend] = (time.perf_counter() - started) * 1000
        times[backend] = best_ms(partial(function, [xs, ys]), args.reps) * scale
    started = time.perf_counter()
    expr_hash = canonical_hash(expr)  # timed with the build, computed once (seconds for the determinant)
    built = store.ensure(expr, ["x", "y"], expr_hash)
    build["compiled"] = (time.perf_counter() - started) * 1000
    kernel = store.load(expr, ["x", "y"], expr_hash)
    times["compiled"] = best_ms(partial(kernel, xs, ys), args.reps) * scale
    points = {"x": xs.tolist(), "y": ys.tolist()}
    end_to_end = []
    for _ in range(2):  # the first call of a worker also races the kernel against symengine
        started = time.perf_counter()
        chosen = evaluate(expr, points, "auto", 15, expr_hash, args.points, store).backend
        end_to_end.append((time.perf_counter() - started) * 1000 * scale)
    times["default"] = times[chosen]
    reference = np.asarray(_callable("symengine", expr, symbols, f"bench-{name}")([xs, ys])).reshape(-1)
    agreement = float(np.max(np.abs(kernel(xs, ys) - reference) / np.maximum(np.abs(reference), 1e-300)))
    replacements, reduced = sympy.cse([expr])
    after = sum(sympy.count_ops(e) for _, e in replacements) + sympy.count_ops(reduced[0])
    out.update(
        default_backend=chosen,
        default_end_to_end_ms_per_100k={"first": round(end_to_end[0], 3), "then": round(end_to_end[1], 3)},
        ms_per_100k={k: round(v, 4) for k, v in times.items()},
        speedup_vs_evalf={
            k: round(times["evalf"] / v, 1) for k, v in times.items() if k != "evalf" and sampled
        },
        build_ms={k: round(v, 1) for k, v in build.items()},
        compiled_kernel={"hash": built.kernel_hash, "build_ms": built.build_ms, "path": built.path},
        cse_ops={"before": out["ops"], "after": int(after)},
        evalf_points_sampled=sampled,
        compiled_vs_symengine_max_rel_diff=agreement,
    )
    progress(f"{name}: {out['ms_per_100k']}")
    return out


def load_ms_in_fresh_process(path: str, digest: str, runs: int = 5) -> list[float]:
    probe = (
        "import time, numpy, sys\n"
        "from agents.sympy.compiled import load_module\n"
        "t = time.perf_counter(); load_module(sys.argv[1], sys.argv[2])\n"
        "print((time.perf_counter() - t) * 1000)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return [
        float(subprocess.run([sys.executable, "-c", probe, path, digest], env=env, capture_output=True,
                             text=True, check=True).stdout)
        for _ in range(runs)
    ]  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def roundtrip(redis_url: str, database_url: str, home: Path, n: int) -> dict[str, Any]:
    import anyio

    from agents.sympy import SymPyTool
    from bus import Keys, Publisher, RpcClient, connect
    from envelope import Signer, Verifier

    namespace = f"sympybench{os.getpid()}"
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "L9_NAMESPACE": namespace,
        "L9_HOME": str(home),
        "L9_SIGNING_KEYS": json.dumps(KEYRING),
        "L9_SIGNING_KEY_ID": "dev",
        "L9_LOG_LEVEL": "warning",
        "PYTHONPATH": str(ROOT),
    }
    agent = subprocess.Popen([sys.executable, "-m", "l9", "agent", "run", "sympy"], env=env, cwd=ROOT)
    keyring = {k: v.encode() for k, v in KEYRING.items()}

    async def measure() -> dict[str, Any]:
        redis, keys = connect(redis_url), Keys(namespace)
        try:
            async with RpcClient(
                redis, Publisher(redis, keys, Signer(keyring, "dev")), Verifier(keyring)
            ) as rpc:
                tool = SymPyTool(rpc, source="agent://bench/caller", deadline_s=60)
                points = {"x": [0.5, 1.5, 2.5], "y": [1.0, 2.0, 3.0]}
                first = await tool.evaluate("x**2*y + sin(x)", points)  # starts the worker, fills the cache
                cached, ping = [], []
                worker, caller = psutil.Process(agent.pid), time.process_time()
                worker_cpu = sum(worker.cpu_times()[:2])
                for _ in range(n):
                    started = time.perf_counter()
                    reply = await tool.evaluate("x**2*y + sin(x)", points)
                    cached.append((time.perf_counter() - started) * 1000)
                    assert reply.cached and reply.values == first.values
                    started = time.perf_counter()
                    await redis.ping()
                    ping.append((time.perf_counter() - started) * 1000)
                worker_cpu = sum(worker.cpu_times()[:2]) - worker_cpu
                caller = time.process_time() - caller
            return {
                "cached_p50_ms": round(statistics.median(cached), 3),
                "cached_p99_ms": round(percentile(cached, 0.99), 3),
                "redis_ping_p50_ms": round(statistics.median(ping), 3),
                "worker_cpu_us_per_request": round(worker_cpu / n * 1e6, 1),
                "caller_cpu_us_per_request": round(caller / n * 1e6, 1),
                "requests": n,
                "first_request_cached": first.cached,
            }
        finally:
            doomed = [k async for k in redis.scan_iter(match=f"{namespace}:*")]
            if doomed:
                await redis.delete(*doomed)
            await redis.aclose()

    try:
        return anyio.run(measure)
    finally:
        agent.terminate()
        agent.wait(30)


def expression_names(value: str) -> list[str]:
    """``--expressions``: names of :data:`EXPRESSIONS`, with ``polynomial`` (the kernel whose
    load from the disk cache is timed) always among them."""
    names = [n for n in value.split(",") if n]
    unknown = [n for n in names if n not in EXPRESSIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown expressions {unknown}, known: {list(EXPRESSIONS)}")
    return ["polynomial", *names]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=5, help="calls per backend; the best is reported")
    parser.add_argument("--evalf-s", type=float, default=2.0, help="seconds of evalf loop per expression")
    parser.add_argument("--roundtrips", type=int, default=300)
    parser.add_argument("--load-runs", type=int, default=5, help="fresh processes loading a kernel")
    parser.add_argument(
        "--evalf-max-ops", type=int, default=None, help="no evalf loop for bigger expressions (default: none)"
    )
    parser.add_argument(
        "--expressions",
        type=expression_names,
        default=list(EXPRESSIONS),
        help=f"comma-separated, of {','.join(EXPRESSIONS)} (the default: all; polynomial is always measured)",
    )
    args = parser.parse_args(argv)

    from l9.logs import configure_logging

    configure_logging("warning")
    started = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="l9sympybench-"))
    stack = None
    try:
        store = KernelStore(home / "kernels", timeout_s=600)
        chosen = {name: text for name, text in EXPRESSIONS.items() if name in args.expressions}
        results = {name: measure_expression(name, text, store, args) for name, text in chosen.items()}
        poly = canonical_hash(parse(EXPRESSIONS["polynomial"]))
        load = load_ms_in_fresh_process(
            str(store.path_of(kernel_hash(poly, ["x", "y"]))), kernel_hash(poly, ["x", "y"]), args.load_runs
        )
        redis_url, database_url = os.environ.get("REDIS_URL"), os.environ.get("DATABASE_URL")
        if not (redis_url and database_url):
            from l9.devstack import EmbeddedStack

            progress("starting the embedded stack (REDIS_URL / DATABASE_URL not set)")
            stack = EmbeddedStack(home / "stack")
            endpoints = stack.up()
            redis_url, database_url = endpoints.redis_url, endpoints.database_url
        trip = roundtrip(redis_url, database_url, home / "agent", args.roundtrips)
    finally:
        if stack is not None:
            stack.down()
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(report(results, load, trip, args, time.monotonic() - started), indent=2))


def report(
    results: dict[str, Any], load: list[float], trip: dict[str, Any], args: argparse.Namespace, wall: float
) -> dict[str, Any]:
    ratios = {n: r["ms_per_100k"]["default"] / r["ms_per_100k"]["symengine"] for n, r in results.items()}
    worst = max(ratios.values())
    load_ms = statistics.median(load)
    p50 = trip["cached_p50_ms"]
    return {
        "expressions": {n: r["ms_per_100k"] for n, r in results.items()},
        "default_vs_symengine_max_ratio": round(worst, 3),
        "cached_roundtrip_p50_ms": p50,
        "cached_roundtrip_p50_in_redis_pings": round(p50 / trip["redis_ping_p50_ms"], 2),
        "compiled_cache_load_ms": round(load_ms, 3),
        "targets": {
            "default_within_1.5x_of_symengine": {
                "value": round(worst, 3),
                "met": worst <= TARGET_DEFAULT_RATIO,
            },
            "cached_roundtrip_p50_le_1ms": {"value": p50, "met": p50 <= TARGET_ROUNDTRIP_P50_MS},
            "compiled_load_le_5ms": {"value": round(load_ms, 3), "met": load_ms <= TARGET_LOAD_MS},
        },
        "default_vs_symengine_ratio": {n: round(v, 3) for n, v in ratios.items()},
        "default_backend": {n: r["default_backend"] for n, r in results.items()},
        "default_end_to_end_ms_per_100k": {
            n: r["default_end_to_end_ms_per_100k"] for n, r in results.items()
        },
        "speedup_vs_evalf_loop": {n: r["speedup_vs_evalf"] for n, r in results.items()},
        "build_ms": {n: r["build_ms"] for n, r in results.items()},
        "cse_ops": {n: r["cse_ops"] for n, r in results.items()},
        "compiled_vs_symengine_max_rel_diff": {
            n: r["compiled_vs_symengine_max_rel_diff"] for n, r in results.items()
        },
        "evalf_points_sampled": {n: r["evalf_points_sampled"] for n, r in results.items()},
        "compiled_cache_load_runs_ms": [round(v, 3) for v in load],
        "roundtrip": trip,
        "points": args.points,
        "reps": args.reps,
        "method": "best of reps per backend on float64 arrays; evalf loop scaled to 100k (see the docstring)",
        "versions": {
            "python": platform.python_version(),
            "sympy": sympy.__version__,
            "symengine": symengine.__version__,
            "numpy": np.__version__,
        },
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "wall_seconds": round(wall, 1),
    }


if __name__ == "__main__":
    main()
