"""SymPyTool refuses a bad argument before anything is sent: a ToolError naming the argument
and what it must be (as the worker answers a bad request), never a pydantic traceback."""

from __future__ import annotations

from typing import Any

import pytest

from agents.contracts.sympy.errors import ToolError
from agents.tools.sympy import SymPyTool


class NoRpc:
    """An RpcClient that must not be used: the call is refused before it is sent."""

    async def call(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a request with a bad argument was sent")


def tool() -> SymPyTool:
    return SymPyTool(NoRpc(), source="agent://test/t")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "field", "shown"),
    [
        (lambda t: t.generate_code("x + 1", "c", name='os.system("id")'), "name", "'os.system(\"id\")'"),
        (lambda t: t.diff("x**2", wrt="__class__"), "wrt", "'__class__'"),
        (lambda t: t.simplify("x\udc80"), "expr", "'x\\udc80'"),
        (lambda t: t.evaluate("x", backend="gpu"), "backend", "'gpu'"),
        (lambda t: t.diff("x**2", order=0), "order", "0"),
    ],
    ids=["codegen-name", "diff-wrt", "lone-surrogate", "backend", "order"],
)
async def test_a_bad_argument_is_a_tool_error_naming_it(call: Any, field: str, shown: str) -> None:
    with pytest.raises(ToolError) as caught:
        await call(tool())
    error = caught.value
    assert (error.kind, error.rule) == ("invalid", "bad_argument")
    assert error.detail.startswith(f"{field}: ") and f"(got {shown})" in error.detail
    assert "\n" not in str(error) and "pydantic" not in str(error)
