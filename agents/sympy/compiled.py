"""Compiled numeric kernels: the generated Cython source, built once, kept on disk.

A kernel is named by the hash of its canonical expression, its parameter
order and the generator version. Its extension module lives at
``<kernel_dir>/<hash>/l9k_<hash><EXT_SUFFIX>`` (``meta.json`` beside it keeps
the parameter names); any worker loads it with one
``dlopen`` (about a millisecond) instead of the seconds a build costs. A build
runs in a temporary directory beside the cache and is renamed into place, so
two workers building the same kernel never load half a file. The agent
indexes built kernels in Redis (``sympy:compiled:{hash}``, see :mod:`.keys`).

A build has two halves. :meth:`KernelStore.prepare` generates the source (SymPy: it runs
in the worker subprocesses, within a request's compute budget) and returns a
:class:`BuildPlan`, plain data; running the compilers on a plan (:func:`build_commands`,
:func:`install`) needs no SymPy. In the agent the worker answers the plan and the agent
builds it outside the pool (:mod:`.builds`); :meth:`KernelStore.ensure` does both halves
in one process (tests, benchmarks).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.contracts.sympy.errors import ToolError

from . import codegen

#: Part of every kernel hash: a change to the generated source gets new kernels.
GENERATOR = "cython-2"
SUFFIX = str(sysconfig.get_config_var("EXT_SUFFIX") or ".so")
Kernel = Callable[..., np.ndarray]
_LOADED: dict[str, Kernel] = {}


@dataclass(frozen=True)
class Built:
    kernel_hash: str
    path: str
    params: list[str]
    args: list[str]
    build_ms: float
    built: bool  # False: it was on disk already

    def as_dict(self) -> dict[str, Any]:
        return {
            "kernel_hash": self.kernel_hash,
            "path": self.path,
            "params": self.params,
            "args": self.args,
            "build_ms": self.build_ms,
            "built": self.built,
        }


@dataclass(frozen=True)
class BuildPlan:
    """A kernel to build: its generated source, where it goes and its parameters (plain data)."""

    kernel_hash: str
    directory: str
    source: str
    params: list[str]
    args: list[str]

    @property
    def path(self) -> Path:
        return Path(self.directory) / self.kernel_hash / f"l9k_{self.kernel_hash}{SUFFIX}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildPlan:
        return cls(**data)

    def found(self) -> Built | None:
        """The kernel, when it is on disk already (another build finished it)."""
        if not (self.path.exists() and self.path.with_name("meta.json").exists()):
            return None
        params = json.loads(self.path.with_name("meta.json").read_text())["params"]
        return Built(self.kernel_hash, str(self.path), params, self.args, 0.0, False)


class BuildNeeded(Exception):
    """The kernel is not on disk and this store does not build (the agent builds ``plan``)."""

    def __init__(self, plan: BuildPlan) -> None:
        super().__init__(f"kernel {plan.kernel_hash} is to be built")
        self.plan = plan


class KernelStore:
    """The on-disk kernel cache of one worker: build, find, load.

    Kernels are named from the canonical hash of the expression (``expr_hash``,
    computed once per request by the operations) and the parameter order. With
    ``defer_builds`` a kernel that is not on disk is a :class:`BuildNeeded`
    carrying its plan, not a build in this process.
    """

    def __init__(self, directory: str | Path, timeout_s: float, *, defer_builds: bool = False) -> None:
        self.directory, self.timeout_s, self.defer_builds = Path(directory), timeout_s, defer_builds

    def path_of(self, kernel_hash: str) -> Path:
        return self.directory / kernel_hash / f"l9k_{kernel_hash}{SUFFIX}"

    def prepare(self, expr: Any, args: Sequence[str], expr_hash: str) -> Built | BuildPlan:
        """The kernel if it is on disk, else the plan to build it (its source generated)."""
        digest = kernel_hash(expr_hash, args)
        found = BuildPlan(digest, str(self.directory), "", [], list(args)).found()
        if found is not None:
            return found
        generated = codegen.generate(expr, "cython", "kernel", list(args), True)
        return BuildPlan(digest, str(self.directory), generated["source"], generated["params"], list(args))

    def ensure(self, expr: Any, args: Sequence[str], expr_hash: str) -> Built:
        """The kernel of ``expr`` with parameters ``args``, built unless it is on disk."""
        prepared = self.prepare(expr, args, expr_hash)
        if isinstance(prepared, Built):
            return prepared
        if self.defer_builds:
            raise BuildNeeded(prepared)
        return self.build(prepared)

    def build(self, plan: BuildPlan) -> Built:
        """Run the compilers on ``plan`` here, each within this store's timeout."""
        started = time.perf_counter()
        self.directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".build-{plan.kernel_hash}-", dir=self.directory) as tmp:
            work = Path(tmp)
            for command in build_commands(plan, work):
                self._run(command, work)
            return install(plan, work, time.perf_counter() - started)

    def exists(self, expr_hash: str, args: Sequence[str]) -> bool:
        return self.path_of(kernel_hash(expr_hash, args)).exists()

    def load(self, expr: Any, args: Sequence[str], expr_hash: str) -> Kernel:
        """The kernel's function (built first if needed); loaded once per process."""
        digest = kernel_hash(expr_hash, args)
        loaded = _LOADED.get(digest)
        if loaded is None:
            path = self.path_of(digest)
            if not path.exists():
                path = Path(self.ensure(expr, args, expr_hash).path)
            loaded = _LOADED[digest] = load_module(path, digest)
        return loaded

    def _run(self, command: list[str], cwd: Path) -> None:
        try:
            done = subprocess.run(
                command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=self.timeout_s
            )
        except subprocess.TimeoutExpired:
            raise build_timeout(command, self.timeout_s) from None
        if done.returncode != 0:
            raise build_failed(command, done.stdout)


def build_commands(plan: BuildPlan, work: Path) -> list[list[str]]:
    """Cython, then the C compiler, to run in ``work`` (where the source is written now)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    include = sysconfig.get_paths()["include"]
    if compiler is None or not Path(include, "Python.h").exists():
        raise ToolError("invalid", "no_compiler", "no C compiler or Python headers on the worker's machine")
    name = f"l9k_{plan.kernel_hash}"
    (work / f"{name}.pyx").write_text(plan.source)
    flags = ["-shared", "-fPIC", "-O3", "-fno-math-errno", f"-I{include}"]
    return [
        [sys.executable, "-m", "cython", "-3", f"{name}.pyx", "-o", f"{name}.c"],
        [compiler, *flags, f"{name}.c", "-o", f"{name}{SUFFIX}", "-lm"],
    ]


def install(plan: BuildPlan, work: Path, seconds: float) -> Built:
    """Move the module built in ``work`` into place (atomic: a concurrent builder's rename wins,
    both are equal) and write its ``meta.json``."""
    target = plan.path
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(work / f"l9k_{plan.kernel_hash}{SUFFIX}", target)
    target.with_name("meta.json").write_text(json.dumps({"params": plan.params, "args": plan.args}))
    return Built(plan.kernel_hash, str(target), plan.params, plan.args, round(seconds * 1000, 1), True)


def build_timeout(command: list[str], bound_s: float) -> ToolError:
    return ToolError("timeout", "compile_timeout", f"{Path(command[0]).name} ran past {bound_s:g}s")


def build_failed(command: list[str], output: bytes) -> ToolError:
    tail = output.decode(errors="replace").strip()[-800:]
    return ToolError("failed", "compile_failed", f"{Path(command[0]).name} failed: {tail}")


def kernel_hash(expr_hash: str, args: Sequence[str]) -> str:
    """The kernel of the expression with canonical hash ``expr_hash`` and parameters ``args``."""
    text = f"{GENERATOR}\0{expr_hash}\0{','.join(args)}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def load_module(path: str | Path, digest: str) -> Kernel:
    """``kernel`` of the extension module at ``path`` (its module name carries the hash)."""
    spec = importlib.util.spec_from_file_location(f"l9k_{digest}", path)
    if spec is None or spec.loader is None:
        raise ToolError("failed", "kernel_missing", f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kernel: Kernel = module.kernel
    return kernel
