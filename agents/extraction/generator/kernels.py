"""Getting an agent's numeric kernels from the SymPy worker over the bus.

For each ``expressions`` entry of an agent that plans a kernel file (kinds
``kernels``, ``kernel_tests``, ``kernels_doc``) the generator asks the SymPy
tool (:class:`agents.sympy.SymPyTool`) for ``generate_code(formula, "python",
name="result", cse=True)``: Python/numpy code with common subexpressions
eliminated and the formula's symbols as parameters in sorted order. The
requests of one agent go out concurrently, each bounded by ``deadline_s``.

A failure is a :class:`KernelError` naming every kernel that failed, of which
agent, and why: no answer before the deadline (no worker on the bus, or an
overloaded one), the worker refusing the formula (its rule and position), or a
worker error.
"""

from __future__ import annotations

from typing import Protocol

import anyio

from agents.contracts.extraction.schema import AgentSchema
from agents.contracts.sympy.errors import ToolError
from agents.contracts.sympy.payloads import GenerateCodeResult, Language
from bus import RemoteError, RpcTimeout

from .kernel_code import KernelSource

#: The function name asked of the worker: it never names a parameter or a temporary, so the
#: generated kernels can keep their result in a variable of that name.
RESULT_NAME = "result"


class CodeTool(Protocol):
    """What the generator needs of :class:`agents.sympy.SymPyTool`."""

    async def generate_code(
        self,
        expr: str,
        language: Language,
        *,
        name: str = ...,
        cse: bool = ...,
        deadline_s: float | None = ...,
    ) -> GenerateCodeResult: ...


class KernelError(Exception):
    """Kernels whose code could not be had from the SymPy tool: one message per kernel, which and why."""

    def __init__(self, *messages: str) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


async def fetch_kernels(tool: CodeTool, agent: AgentSchema, *, deadline_s: float) -> dict[str, KernelSource]:
    """The code of every kernel of ``agent``, by kernel name; KernelError naming each failure."""
    found: dict[str, KernelSource] = {}
    failed: dict[str, str] = {}
    async with anyio.create_task_group() as tg:
        for name in sorted(agent.expressions):
            tg.start_soon(_fetch_one, tool, agent, name, deadline_s, found, failed)
    if failed:
        raise KernelError(*(failed[name] for name in sorted(failed)))
    return dict(sorted(found.items()))


async def _fetch_one(
    tool: CodeTool,
    agent: AgentSchema,
    name: str,
    deadline_s: float,
    found: dict[str, KernelSource],
    failed: dict[str, str],
) -> None:
    formula = agent.expressions[name]
    where = f"agent '{agent.name}' kernel '{name}' ({formula})"
    try:
        reply = await tool.generate_code(formula, "python", name=RESULT_NAME, cse=True, deadline_s=deadline_s)
    except RpcTimeout:
        failed[name] = (
            f"{where}: the SymPy tool did not answer generate_code within {deadline_s:g} s"
            " (is `l9 agent run sympy` running on this bus?)"
        )
        return
    except ToolError as exc:
        failed[name] = f"{where}: the SymPy tool refused it: {exc}"
        return
    except RemoteError as exc:
        failed[name] = f"{where}: the SymPy tool failed: {exc.error} {exc.detail}".rstrip()
        return
    found[name] = KernelSource(
        name=name,
        formula=formula,
        args=tuple(reply.args),
        params=tuple(reply.params),
        source=reply.source,
        ops_before=reply.ops_before,
        ops_after=reply.ops_after,
        expr_hash=reply.expr_hash,
    )


__all__ = ["RESULT_NAME", "CodeTool", "KernelError", "fetch_kernels"]
