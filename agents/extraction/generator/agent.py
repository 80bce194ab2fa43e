"""The generator agent (``l9 agent run generator``): locked plans in, the extraction folder out.

For each ``l9.plan.locked.v1`` on the ``plan`` stream, in the run of that
envelope and caused by it:

1. wave by wave (the plan's waves; the agents of one wave concurrently), each
   agent's kernels are asked of the SymPy tool (:mod:`.kernels`), its files
   rendered (:mod:`.render`), and ``l9.generate.agent.v1`` emitted with their
   sizes and hashes;
2. the folder ``<out_dir or L9_EXTRACTIONS_DIR>/<collection>_<stamp>`` is written
   whole, with its ``extraction_manifest.json`` (:mod:`.folder`);
3. ``l9.generate.completed.v1`` lists every file and the manifest's hash.

When a kernel cannot be had (no SymPy worker answering within
``L9_GENERATOR_SYMPY_DEADLINE_S``, a formula it refuses), a file cannot be
rendered, the folder cannot be written, or anything else raises (a bug, named in
the error: :mod:`..crash`), nothing is left half done: it emits
``l9.generate.failed.v1`` with every reason, then ``l9.run.completed.v1``
(failed, phase ``generate``), at once. A redelivered plan is generated again and gives the
same files (the manifest keeps its first generation time).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from agents.contracts.extraction.payloads import PlanLocked
from agents.contracts.extraction.phases import (
    MANIFEST,
    AgentGenerated,
    GeneratedFile,
    GenerationCompleted,
    GenerationFailed,
    RunCompleted,
)
from agents.contracts.extraction.plan import LockedPlan
from agents.tools.sympy import SymPyTool
from bus import RpcClient
from bus.topology import PLAN_STREAM
from envelope import PacketEnvelope, Payload, utcnow

from ...base import Agent, Context, handles
from ...runtime import Runtime
from ..config import GeneratorConfig
from ..crash import crash_reason, retried
from .folder import folder_of, generated_files, generation_time, manifest_bytes, write_folder
from .kernels import CodeTool, KernelError, fetch_kernels
from .render import RenderError, needs_kernels, render_agent

#: Errors of a failure the run's ``reason`` names (``l9.generate.failed.v1`` lists them all).
REASON_ERRORS = 3


class GenerationError(Exception):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class CausedRpcClient(RpcClient):
    """An RPC client whose requests point at the envelope that made the generator ask."""

    def __init__(self, *args: Any, causation_id: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.causation_id = causation_id

    async def call(self, request: Payload, **kwargs: Any) -> tuple[PacketEnvelope, Payload]:
        kwargs.setdefault("causation_id", self.causation_id)
        return await super().call(request, **kwargs)


class GeneratorAgent(Agent):
    name = "generator"
    consumes = (PLAN_STREAM,)

    def __init__(
        self, runtime: Runtime, config: GeneratorConfig | None = None, *, tool: CodeTool | None = None
    ) -> None:
        super().__init__(runtime)
        self.config = config or GeneratorConfig()
        #: The SymPy tool to use instead of one over the bus (tests).
        self.tool = tool

    @handles(PlanLocked)
    async def on_plan(self, ctx: Context[PlanLocked]) -> None:
        locked, started = ctx.payload, time.perf_counter()
        folder = folder_of(locked.out_dir, self.config.extractions_dir, locked.folder_name)
        log = self.log.bind(correlation_id=ctx.envelope.correlation_id, envelope=ctx.envelope.id)
        try:
            async with self._code_tool(ctx.envelope, locked.plan) as tool:
                files = await self._generate(ctx, locked.plan, tool)
            manifest, generated = await anyio.to_thread.run_sync(
                self._write, folder, locked.plan, files, ctx.envelope.correlation_id
            )
        except GenerationError as exc:
            await self._fail(ctx, locked, exc.errors)
            log.warning("generator.failed", collection=locked.collection, errors=exc.errors)
            return
        except Exception as exc:
            if retried(exc):
                raise  # Redis unreachable: the delivery loop tries again
            log.exception("generator.crashed", collection=locked.collection)
            await self._fail(ctx, locked, [crash_reason("generator", exc)])
            return
        await ctx.emit(
            GenerationCompleted(
                outcome=f"generated: {len(generated)} files of {len(locked.plan.order)} agents",
                collection=locked.collection,
                plan_hash=locked.hash,
                folder=str(folder),
                files=generated,
                manifest_sha256=manifest,
            )
        )
        log.info("generator.completed", folder=str(folder), files=len(generated), seconds=_since(started))

    @asynccontextmanager
    async def _code_tool(self, cause: PacketEnvelope, plan: LockedPlan) -> AsyncIterator[CodeTool | None]:
        """The SymPy tool for this plan: the injected one, one over the bus, or none (no kernel planned)."""
        if self.tool is not None or not any(needs_kernels(plan, name) for name in plan.order):
            yield self.tool
            return
        rt = self.runtime
        async with CausedRpcClient(rt.redis, rt.publisher, rt.verifier, causation_id=cause.id) as rpc:
            yield SymPyTool(
                rpc,
                source=rt.source,
                deadline_s=self.config.sympy_deadline_s,
                correlation_id=cause.correlation_id,
            )

    async def _generate(
        self, ctx: Context[PlanLocked], plan: LockedPlan, tool: CodeTool | None
    ) -> dict[str, bytes]:
        """Every planned file, wave by wave; GenerationError with every failure of the first failing wave."""
        files: dict[str, bytes] = {}
        for wave, names in enumerate(plan.waves):
            errors: dict[str, tuple[str, ...]] = {}
            async with anyio.create_task_group() as tg:
                for name in names:
                    tg.start_soon(self._one_agent, ctx, plan, tool, wave, name, files, errors)
            if errors:
                raise GenerationError([e for name in names for e in errors.get(name, ())])
        return dict(sorted(files.items()))

    async def _one_agent(
        self,
        ctx: Context[PlanLocked],
        plan: LockedPlan,
        tool: CodeTool | None,
        wave: int,
        name: str,
        files: dict[str, bytes],
        errors: dict[str, tuple[str, ...]],
    ) -> None:
        schema = next(a for a in plan.agents if a.name == name)
        try:
            kernels = {}
            if needs_kernels(plan, name):
                if tool is None:
                    raise KernelError(f"agent '{name}': no SymPy tool to ask for its kernels")
                deadline = self.config.sympy_deadline_s
                kernels = await fetch_kernels(tool, schema, deadline_s=deadline)
            rendered = await anyio.to_thread.run_sync(render_agent, plan, name, kernels)
        except KernelError as exc:
            errors[name] = exc.messages
            return
        except RenderError as exc:
            errors[name] = (str(exc),)
            return
        except Exception as exc:
            if retried(exc):
                raise
            self.log.exception("generator.crashed", correlation_id=ctx.envelope.correlation_id, agent=name)
            errors[name] = (f"agent '{name}': {crash_reason('generator', exc)}",)
            return
        files.update(rendered)
        entries = generated_files(plan, rendered)
        await ctx.emit(  # progress: out as each agent is done, not with the final ack
            AgentGenerated(
                outcome=_agent_outcome(name, entries, kernels),
                collection=plan.collection,
                agent=name,
                wave=wave,
                files=entries,
                kernels=tuple(sorted(kernels)),
            ),
            now=True,
        )

    def _write(
        self, folder: Path, plan: LockedPlan, files: dict[str, bytes], run: str
    ) -> tuple[str, tuple[GeneratedFile, ...]]:
        """Write the folder; the manifest's sha256 and the files' entries. GenerationError on OSError."""
        generated = generated_files(plan, files)
        stamp = generation_time(folder, run=run, plan_hash=plan.hash, now=utcnow())
        manifest = manifest_bytes(plan, generated, run=run, generated_at=stamp)
        try:
            write_folder(folder, {**files, MANIFEST: manifest})
        except (OSError, ValueError) as exc:
            raise GenerationError([f"cannot write the extraction folder {folder}: {exc}"]) from None
        return hashlib.sha256(manifest).hexdigest(), generated

    async def _fail(self, ctx: Context[PlanLocked], locked: PlanLocked, errors: list[str]) -> None:
        failed = GenerationFailed(
            outcome=f"failed: {len(errors)} error{'s' if len(errors) != 1 else ''}",
            collection=locked.collection,
            plan_hash=locked.hash,
            errors=tuple(errors),
        )
        more = len(errors) - REASON_ERRORS
        reason = "; ".join(errors[:REASON_ERRORS])
        reason += f"; and {more} more (every error is in l9.generate.failed.v1)" if more > 0 else ""
        ended = RunCompleted(
            outcome=f"failed at generate: {reason[:200]}",
            collection=locked.collection,
            result="failed",
            phase="generate",
            reason=reason,
        )
        envelopes = [self.envelope_for(p, cause=ctx.envelope) for p in (failed, ended)]
        await self.runtime.publisher.publish_many(envelopes)


def _agent_outcome(name: str, entries: tuple[GeneratedFile, ...], kernels: dict[str, Any]) -> str:
    with_kernels = f", {len(kernels)} kernel{'s' if len(kernels) != 1 else ''}" if kernels else ""
    return f"generated {name}: {len(entries)} files{with_kernels}"


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)


__all__ = ["PLAN_STREAM", "GeneratorAgent"]
