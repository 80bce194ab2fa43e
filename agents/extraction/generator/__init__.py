"""Phase 2 of an extraction run: the generator renders every planned file of a locked plan.

    files = render_plan(plan, kernels)      # pure: {path: bytes}, byte-identical for equal inputs
    l9 agent run generator                  # the agent: plan stream in, the extraction folder out

Templates (``templates/<kind><ext>.j2``, one per kind of :mod:`agents.contracts.extraction.kinds`)
write the files; numeric kernels come from the SymPy worker (:mod:`.kernels`); the folder is
written whole (:mod:`.folder`). What each kind generates, and how a generated agent
behaves, is documented in ``docs/SCHEMA.md``.
"""

from .agent import PLAN_STREAM, GeneratorAgent
from .folder import folder_of, generated_files, manifest_bytes, write_folder
from .kernel_code import KernelCode, KernelCodeError, KernelSource, kernel_code
from .kernels import KernelError, fetch_kernels
from .render import KERNEL_KINDS, RenderError, needs_kernels, render_agent, render_plan

__all__ = [
    "KERNEL_KINDS",
    "PLAN_STREAM",
    "GeneratorAgent",
    "KernelCode",
    "KernelCodeError",
    "KernelError",
    "KernelSource",
    "RenderError",
    "fetch_kernels",
    "folder_of",
    "generated_files",
    "kernel_code",
    "manifest_bytes",
    "needs_kernels",
    "render_agent",
    "render_plan",
    "write_folder",
]
