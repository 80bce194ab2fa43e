"""The SymPy worker under hostile input: a real worker process on the real bus, through
SymPyTool and ``l9 sympy``.

Attack strings of every kind (huge and deep input, dunder and attribute access,
``__import__``, lambdas, format strings, confusable and invisible Unicode, lone
surrogates, NUL bytes, exponent towers, huge factorials, hostile names) go through every
operation and every name field. Each is a typed error (a ToolError with its kind and
rule), each call ends within the worker's timeout plus a generous margin (a hang catcher,
not a speed test), and the worker keeps serving ordinary requests afterwards. The worker
runs with a 3 s timeout so that runaways end quickly.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from agents.contracts.sympy.payloads import REPLY_FOR, Cse
from agents.sympy import SymPyTool, ToolError
from bus import Keys, Publisher, RpcClient, RpcTimeout
from bus.connection import RedisClient
from envelope import Signer, Verifier
from tests.conftest import ROOT, AgentProcess

pytestmark = [pytest.mark.integration]
TIMEOUT_S = 3.0
#: Added to the worker's timeout for a call's bound: only catches a hang (a loaded machine).
MARGIN_S = 45.0
HOSTILE_ENV = {
    "L9_SYMPY_TIMEOUT_S": str(TIMEOUT_S),
    "L9_SYMPY_WORKERS": "2",
    "L9_SYMPY_MEMORY_MB": "768",
    "L9_SYMPY_COMPILE_TIMEOUT_S": "300",
}
Expect = tuple[str, str | None]  # (kind, rule or None for any rule of that kind)
FORBIDDEN: Expect = ("forbidden", None)

#: (label, text, what the worker, or the client before sending, answers).
ATTACKS: list[tuple[str, str, Expect]] = [
    ("dunder-chain", "().__class__.__bases__[0].__subclasses__()", ("forbidden", "forbidden_name")),
    ("import", "__import__('os').system('id')", ("forbidden", "forbidden_name")),
    ("fullwidth-import", "__\uff49\uff4d\uff50\uff4f\uff52\uff54__('os')", ("forbidden", "forbidden_name")),
    ("fullwidth-eval", "\uff45\uff56\uff41\uff4c('1')", ("forbidden", "forbidden_name")),
    ("attribute", "x.real", ("forbidden", "forbidden_attribute")),
    ("matrix-method", "Matrix([[x]]).inv()", ("forbidden", "forbidden_attribute")),
    ("lambda", "(lambda: 1)()", FORBIDDEN),
    ("f-string", "f'{x.__class__}'", ("forbidden", "forbidden_name")),
    ("percent-format", "'%s' % x", FORBIDDEN),
    ("str-format", "'{0.__class__}'.format(x)", FORBIDDEN),
    ("eval", "eval('1')", ("forbidden", "forbidden_name")),
    ("getattr", "getattr(x, 'real')", ("forbidden", "forbidden_name")),
    ("sympify", "sympify('x')", ("forbidden", "forbidden_name")),
    ("unknown-function", "system('id')", ("forbidden", "unknown_function")),
    ("keyword-argument", "sin(x, evaluate=False)", ("forbidden", "forbidden_syntax")),
    ("walrus", "(y := 1) + y", ("forbidden", "forbidden_syntax")),
    ("subscript", "x[0]", ("forbidden", "forbidden_syntax")),
    ("comprehension", "Max(*[x for x in (1, 2)])", FORBIDDEN),
    ("bytes", "b'x' + x", ("forbidden", "forbidden_literal")),
    ("exponent-tower", "9**9**9**9", ("limit", "max_exponent")),
    ("big-power", "10**999 * 10**999", ("limit", "max_integer_digits")),
    ("huge-factorial", "factorial(10**8)", ("limit", "max_factorial")),
    ("huge-gamma", "gamma(10**6) + x", ("limit", "max_factorial")),
    ("huge-binomial", "binomial(10**9, 5*10**8)", ("limit", "max_factorial")),
    ("float-overflow", "1e400 * x", ("limit", "float_range")),
    ("deep-parentheses", "(" * 400 + "x" + ")" * 400, ("syntax", "syntax")),  # Python's own limit
    ("deep-calls", "sin(" * 100 + "x" + ")" * 100, ("limit", "max_depth")),
    ("deep-unary", "-" * 1999 + "x", ("limit", "max_depth")),
    ("nul-byte", "x\x00 + 1", ("syntax", "syntax")),
    ("newline-statement", "x\n__import__('os')", ("syntax", "syntax")),
    ("semicolon", "x; 1", ("syntax", "syntax")),
    ("bidi-override", "x\u202e + 1", ("syntax", "syntax")),
    ("zero-width-space", "x\u200b + 1", ("syntax", "syntax")),
    ("lone-surrogate", "x\udc80 + 1", ("invalid", "bad_argument")),
    ("over-the-parser-limit", "x" * 2001, ("invalid", "bad_argument")),
    ("megabyte", "x+" * 500_000 + "x", ("invalid", "bad_argument")),
]
#: Every operation, with the attack text in its (first) expression field.
OPERATIONS: dict[str, Callable[[SymPyTool, str], Awaitable[Any]]] = {
    "evaluate": lambda t, e: t.evaluate(e, {"x": [1.0, 2.0]}),
    "simplify": lambda t, e: t.simplify(e),
    "expand": lambda t, e: t.expand(e),
    "factor": lambda t, e: t.factor(e),
    "diff": lambda t, e: t.diff(e, "x"),
    "integrate": lambda t, e: t.integrate(e, "x"),
    "series": lambda t, e: t.series(e, "x"),
    "solve": lambda t, e: t.solve(e, unknowns=["x"]),
    "cse": lambda t, e: t.cse("x + 1", e),
    "generate_code": lambda t, e: t.generate_code(e, "c"),
    "compile": lambda t, e: t.compile(e),
}
#: The attacks again in the other expression fields (bounds, series point, a second equation).
OTHER_FIELDS: dict[str, Callable[[SymPyTool, str], Awaitable[Any]]] = {
    "integrate.lower": lambda t, e: t.integrate("x", "x", lower=e, upper="1"),
    "integrate.upper": lambda t, e: t.integrate("x", "x", lower="0", upper=e),
    "series.at": lambda t, e: t.series("sin(x)", "x", at=e),
    "solve.equations.1": lambda t, e: t.solve("x - 1", e, unknowns=["x"]),
    "cse.exprs.0": lambda t, e: t.cse(e, "x + 1"),
}
#: Names that are no symbol: refused by the client before anything is sent.
BAD_NAMES = ["__class__", "os.system", "x\udc80", "1x", "", "x" * 65, "a b", "x\x00"]
NAME_FIELDS: dict[str, Callable[[SymPyTool, str], Awaitable[Any]]] = {
    "diff wrt": lambda t, n: t.diff("x**2", n),
    "integrate wrt": lambda t, n: t.integrate("x", n),
    "series wrt": lambda t, n: t.series("x", n),
    "solve unknown": lambda t, n: t.solve("x - 1", unknowns=[n]),
    "evaluate point": lambda t, n: t.evaluate("1", {n: [1.0]}),
    "codegen name": lambda t, n: t.generate_code("x", "c", name=n),
    "codegen arg": lambda t, n: t.generate_code("x", "python", args=["x", n]),
    "compile arg": lambda t, n: t.compile("x", args=["x", n]),
}
#: Computations that run far longer than 3 s (each many seconds on any machine).
RUNAWAYS: dict[str, Callable[[SymPyTool], Awaitable[Any]]] = {
    "expand": lambda t: t.expand("(a+b+c+d+e+1)**40"),
    "integrate": lambda t: t.integrate("exp(-x**2)*sin(x**3)*log(x)", "x"),
    "series": lambda t: t.series("exp(sin(exp(x)))", "x", order=60),
}


@asynccontextmanager
async def sympy_tool(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> AsyncIterator[SymPyTool]:
    async with RpcClient(redis, Publisher(redis, keys, signer), verifier) as rpc:
        yield SymPyTool(rpc, source="agent://test/hostile", deadline_s=MARGIN_S + TIMEOUT_S)


async def refused(call: Awaitable[Any], expect: Expect, what: str) -> ToolError:
    """The typed error ``call`` ends in, within the worker's timeout and the margin."""
    with anyio.fail_after(TIMEOUT_S + MARGIN_S):  # only catches a hang
        try:
            await call
        except ToolError as exc:
            kind, rule = expect
            assert exc.kind == kind and (rule is None or exc.rule == rule), f"{what}: {exc}"
            return exc
    raise AssertionError(f"{what}: answered, not refused")


async def serving(tool: SymPyTool) -> None:
    """The worker answers an ordinary request (its first after a replacement: generous bound)."""
    with anyio.fail_after(TIMEOUT_S + MARGIN_S):
        assert (await tool.expand("(x + 2)**2")).expr == "x**2 + 4*x + 4"


async def test_attack_strings_through_every_operation_and_field_are_typed_errors(
    spawn: Callable[..., AgentProcess], redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    spawn("sympy", env=HOSTILE_ENV)
    async with sympy_tool(redis, keys, signer, verifier) as tool:
        with anyio.fail_after(120):  # the first request also waits for the agent to start
            assert (await tool.simplify("x + x")).expr == "2*x"
        for label, text, expect in ATTACKS:
            for op, call in OPERATIONS.items():
                await refused(call(tool, text), expect, f"{op} of {label}")
        for label, text, expect in ATTACKS[::3]:
            for field, call in OTHER_FIELDS.items():
                await refused(call(tool, text), expect, f"{field} of {label}")
        for name in BAD_NAMES:
            for what, ask in NAME_FIELDS.items():
                await refused(ask(tool, name), ("invalid", "bad_argument"), f"{what} {name!r}")
        await serving(tool)


async def test_hostile_but_valid_names_and_confusables_are_answered(
    spawn: Callable[..., AgentProcess], redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    """Symbols named like C macros, builtins and Cython words are renamed in the code, not
    refused; a full-width x is x (NFKC), a Cyrillic one another symbol; a raw request over
    the size bounds (sent past the client's checks) is dead-lettered, the worker serves on."""
    spawn("sympy", env=HOSTILE_ENV)
    async with sympy_tool(redis, keys, signer, verifier) as tool:
        with anyio.fail_after(120):  # the first request also waits for the agent to start
            code = await tool.generate_code(
                "M_SQRT2*x*sqrt(2) + NULL", "c", args=["M_SQRT2", "NULL", "x", "float"]
            )
        assert code.args == ["M_SQRT2", "NULL", "x", "float"] and code.params == ["arg0", "arg1", "x", "arg3"]
        assert "#define M_SQRT2 1.41421356237309504880" in code.source
        python = await tool.generate_code("range*ValueError + math", "python")
        assert python.args == ["ValueError", "math", "range"] and python.params == ["arg0", "arg1", "arg2"]
        assert (await tool.simplify("\uff58 + x")).expr == "2*x"
        assert (await tool.simplify("\u0445 + x")).expr in ("x + \u0445", "\u0445 + x")
        assert (await tool.diff("\uff58**2", "\uff58")).expr == "2*x"
        with pytest.raises(ToolError) as caught:
            await tool.generate_code("x", "c", name="M_PI")
        assert (caught.value.kind, caught.value.rule) == ("invalid", "bad_name")
        rpc = tool.rpc
        oversized = Cse.model_construct(exprs=["x" * 3000], optimizations="none")
        with anyio.fail_after(TIMEOUT_S + MARGIN_S), pytest.raises(RpcTimeout):
            await rpc.call(oversized, source="agent://test/raw", deadline_s=2)
        dead: Any = await redis.xrange(keys.dead("sympy"))
        details = [fields.get(b"dl_detail", fields.get("dl_detail", b"")) for _, fields in dead]
        assert any(b"exprs.0: 3000 characters, over 2000" in _bytes(d) for d in details), details
        await serving(tool)


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


async def test_runaways_and_a_huge_compile_are_bounded_and_builds_never_starve_the_pool(
    spawn: Callable[..., AgentProcess], redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    """Runaways end in their timeout and the worker serves on. A compile's parsing and code
    generation are bounded by the same 3 s (a 7x7 symbolic determinant: no 300 s hold). While
    a kernel builds, plain requests are answered by the only pool worker: the compilers hold
    none."""
    spawn("sympy", env={**HOSTILE_ENV, "L9_SYMPY_WORKERS": "1"})
    async with sympy_tool(redis, keys, signer, verifier) as tool:
        with anyio.fail_after(120):  # the first request also waits for the agent to start
            assert (await tool.simplify("x + x")).expr == "2*x"
        for op, runaway in RUNAWAYS.items():
            with anyio.fail_after(TIMEOUT_S + MARGIN_S), pytest.raises(ToolError) as caught:  # a hang catcher
                await runaway(tool)
            error = caught.value
            assert (error.kind, error.rule) in {("timeout", "wall_clock"), ("limit", "memory")}, (
                f"{op}: {error}"
            )
            assert error.kind == "limit" or "parsing and computing together" in error.detail
            await serving(tool)
        rows = ", ".join("[" + ", ".join(f"a{i}{j}" for j in range(7)) + "]" for i in range(7))
        await refused(tool.compile(f"det(Matrix([{rows}]))"), ("timeout", "wall_clock"), "huge compile")
        await serving(tool)
        if shutil.which("cc") is None and shutil.which("gcc") is None:
            pytest.skip("no C compiler: kernels cannot be built here")
        await _builds_beside_plain_requests(tool)


async def _builds_beside_plain_requests(tool: SymPyTool) -> None:
    expr = "exp(-x**2/2)*cos(3*x) + sin(y)**2 + x*y"
    built: dict[str, Any] = {}
    done = anyio.Event()

    async def build() -> None:
        try:
            built["reply"] = await tool.compile(expr)
        finally:
            done.set()

    answered_while_building = 0
    with anyio.fail_after(600):  # only catches a hang
        async with anyio.create_task_group() as tg:
            tg.start_soon(build)
            n = 0
            while not done.is_set():
                n += 1
                assert (await tool.simplify(f"sin(x)**2 + cos(x)**2 + {n}")).expr == str(n + 1)
                answered_while_building += not done.is_set()
                await anyio.sleep(0.05)
    assert answered_while_building > 0, "no plain request was answered while the kernel was built"
    assert built["reply"].built
    values = await tool.evaluate(expr, {"x": [0.0], "y": [0.0]}, backend="compiled")
    assert (values.backend, values.values) == ("compiled", [1.0])


async def l9(env: dict[str, str], *args: str) -> tuple[int, str]:
    """``l9 sympy ARGS``: the exit code and the error lines (log lines are JSON)."""
    with anyio.fail_after(TIMEOUT_S + MARGIN_S + 30):  # only catches a hang (a CLI start is slow)
        done = await anyio.run_process(
            [sys.executable, "-m", "l9", "sympy", *args], env=env, cwd=ROOT, check=False
        )
    lines = [line for line in done.stderr.decode().splitlines() if not line.startswith("{")]
    return done.returncode, "\n".join(lines)


async def test_the_command_line_refuses_attacks_in_one_line_each(
    spawn: Callable[..., AgentProcess], agent_env: dict[str, str]
) -> None:
    spawn("sympy", env=HOSTILE_ENV)
    env = {**agent_env, **HOSTILE_ENV}
    code, err = await l9(env, "simplify", "__import__('os').system('id')", "--deadline", "120")
    assert code == 1 and err.startswith("error: forbidden: forbidden_name at 1:1"), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    code, err = await l9(env, "eval", "x+" * 5000 + "x", "--deadline", "60")
    assert code == 1 and err.startswith("error: invalid: bad_argument: request: expr: 10001 characters"), err
    code, err = await l9(env, "codegen", "x*sqrt(2)", "--lang", "c", "--name", "M_SQRT2", "--deadline", "60")
    assert code == 1 and err.startswith("error: invalid: bad_name: 'M_SQRT2' cannot name a c function"), err
    code, out = await l9(env, "simplify", "x + x")
    assert code == 0, out


def test_the_attacks_cover_every_operation_and_expression_field() -> None:
    """A new operation or expression field must get its place in this module."""
    assert set(OPERATIONS) == {model.op for model in REPLY_FOR}
    others = {f"{model.op}.{field}" for model in REPLY_FOR for field in model.expr_fields[1:]}
    assert others <= set(OTHER_FIELDS)
