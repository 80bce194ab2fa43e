"""Compiled numeric kernels: the generated Cython source, built once, kept on disk.

A kernel is named by the hash of its canonical expression, its parameter
order and the generator version. Its extension module lives at
``<kernel_dir>/<hash>/l9k_<hash><EXT_SUFFIX>`` (``meta.json`` beside it keeps
the parameter names); any worker loads it with one
``dlopen`` (about a millisecond) instead of the seconds a build costs. A build
runs in a temporary directory beside the cache and is renamed into place, so
two workers building the same kernel never load half a file. The agent
indexes built kernels in Redis (``sympy:compiled:{hash}``, see :mod:`.keys`).

Runs only in the worker subprocesses.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.contracts.sympy.errors import ToolError

from . import codegen

#: Part of every kernel hash: a change to the generated source gets new kernels.
GENERATOR = "cython-1"
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


class KernelStore:
    """The on-disk kernel cache of one worker: build, find, load.

    Kernels are named from the canonical hash of the expression (``expr_hash``,
    computed once per request by the operations) and the parameter order.
    """

    def __init__(self, directory: str | Path, timeout_s: float) -> None:
        self.directory, self.timeout_s = Path(directory), timeout_s

    def path_of(self, kernel_hash: str) -> Path:
        return self.directory / kernel_hash / f"l9k_{kernel_hash}{SUFFIX}"

    def ensure(self, expr: Any, args: Sequence[str], expr_hash: str) -> Built:
        """The kernel of ``expr`` with parameters ``args``, built unless it is on disk."""
        digest = kernel_hash(expr_hash, args)
        path, meta = self.path_of(digest), self.path_of(digest).with_name("meta.json")
        if path.exists() and meta.exists():
            params = json.loads(meta.read_text())["params"]
            return Built(digest, str(path), params, list(args), 0.0, False)
        generated = codegen.generate(expr, "cython", "kernel", list(args), True)
        started = time.perf_counter()
        self._build(digest, generated["source"], path)
        meta.write_text(json.dumps({"params": generated["params"], "args": list(args)}))
        ms = round((time.perf_counter() - started) * 1000, 1)
        return Built(digest, str(path), generated["params"], list(args), ms, True)

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

    def _build(self, digest: str, source: str, target: Path) -> None:
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        include = sysconfig.get_paths()["include"]
        if compiler is None or not Path(include, "Python.h").exists():
            raise ToolError(
                "invalid", "no_compiler", "no C compiler or Python headers on the worker's machine"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".build-{digest}-", dir=self.directory) as tmp:
            work = Path(tmp)
            (work / f"l9k_{digest}.pyx").write_text(source)
            c_file, so_file = work / f"l9k_{digest}.c", work / f"l9k_{digest}{SUFFIX}"
            self._run([sys.executable, "-m", "cython", "-3", f"l9k_{digest}.pyx", "-o", c_file.name], work)
            flags = ["-shared", "-fPIC", "-O3", "-fno-math-errno", f"-I{include}"]
            self._run([compiler, *flags, c_file.name, "-o", so_file.name, "-lm"], work)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(so_file, target)  # atomic: a concurrent builder's rename wins, both are equal

    def _run(self, command: list[str], cwd: Path) -> None:
        try:
            done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            raise ToolError(
                "timeout", "compile_timeout", f"{command[0]} ran past {self.timeout_s:g}s"
            ) from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-800:]
            raise ToolError("failed", "compile_failed", f"{Path(command[0]).name} failed: {tail}")


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
