"""Rule ``forbidden_calls``: dangerous calls in generated Python, found on the syntax tree.

Every expression that may denote a forbidden callable is a finding, called or
not (``f = eval`` is as bad as ``eval(x)``), however it was reached: an
aliasing import, an assignment, ``getattr`` with a string built from pieces,
``sys.modules[...]``, ``globals()[...]``, ``builtins.__dict__[...]``. Shell-capable
calls (``subprocess.run`` ...) are findings when ``shell`` is not provably
False. Dynamic lookups on a sensitive namespace (``getattr(os, name)``), star
imports from it and sandbox-escape attributes (``__subclasses__`` ...) are
findings too, because what they reach cannot be known.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import cast

from ._decision import Finding
from ._resolve import GLOBALS, Resolver
from ._rules import Params, Rule, glob_regex, rule
from ._subjects import Artifact

DEFAULT_FORBIDDEN = (
    "builtins.eval",
    "builtins.exec",
    "builtins.compile",
    "builtins.__import__",
    "builtins.breakpoint",
    "importlib.import_module",
    "importlib.__import__",
    "os.system",
    "os.popen",
    "os.exec*",
    "os.spawn*",
    "os.posix_spawn*",
    "pty.spawn",
    "subprocess.getoutput",
    "subprocess.getstatusoutput",
    "asyncio.create_subprocess_shell",
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "marshal.load",
    "marshal.loads",
    "shelve.open",
    "dill.load*",
    "yaml.unsafe_load*",
    "runpy.run_*",
    "code.interact",
)
DEFAULT_SHELL_CALLS = (
    "subprocess.run",
    "subprocess.call",
    "subprocess.check_call",
    "subprocess.check_output",
    "subprocess.Popen",
)
DEFAULT_ATTRIBUTES = ("__subclasses__", "__globals__", "__code__", "__closure__", "__builtins__")
#: ``Popen(args, bufsize, executable, stdin, stdout, stderr, preexec_fn, close_fds, shell, ...)``
SHELL_POSITION = 8
_SNIPPET = 60


class ForbiddenCallsParams(Params):
    forbidden: tuple[str, ...] = DEFAULT_FORBIDDEN
    shell_calls: tuple[str, ...] = DEFAULT_SHELL_CALLS
    forbidden_attributes: tuple[str, ...] = DEFAULT_ATTRIBUTES


def _namespaces(patterns: Sequence[str]) -> frozenset[str]:
    """Every dotted prefix of a forbidden name: where a dynamic lookup could reach one."""
    out = {"sys.modules", GLOBALS}
    for pattern in patterns:
        parts = pattern.split(".")[:-1]
        out.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return frozenset(out)


def snippet(node: ast.AST) -> str:
    text = ast.unparse(node)
    return text if len(text) <= _SNIPPET else text[: _SNIPPET - 3] + "..."


class ForbiddenCalls(Rule):
    def __init__(self, params: ForbiddenCallsParams) -> None:
        self.forbidden = glob_regex(params.forbidden)
        self.shell_calls = glob_regex(params.shell_calls)
        self.namespaces = _namespaces((*params.forbidden, *params.shell_calls))
        self.attributes = frozenset(params.forbidden_attributes)

    def artifact(self, artifact: Artifact) -> list[Finding]:
        if not artifact.is_python:
            return []
        tree = artifact.tree
        if isinstance(tree, SyntaxError):
            where = f"line {tree.lineno}" if tree.lineno else "unknown line"
            return [
                Finding(file=artifact.path, line=tree.lineno, what=f"not valid Python ({tree.msg}, {where})")
            ]
        return _Scan(self, Resolver(tree, artifact.nodes), artifact.path).run(artifact.nodes)


_REFERENCES = frozenset({ast.Name, ast.Attribute, ast.Subscript})


class _Scan:
    """One pass over one module, collecting findings (at most one per line and target)."""

    def __init__(self, rule: ForbiddenCalls, resolver: Resolver, path: str) -> None:
        self.rule, self.r, self.path = rule, resolver, path
        self.found: dict[tuple[int, str], Finding] = {}

    def add(self, node: ast.AST, key: str, what: str) -> None:
        line = getattr(node, "lineno", 0)
        self.found.setdefault((line, key), Finding(file=self.path, line=line, what=what))

    def run(self, nodes: Sequence[ast.AST]) -> list[Finding]:
        for module, line in self.r.star_imports:
            if module in self.rule.namespaces:
                self.found[(line, f"*{module}")] = Finding(
                    file=self.path, line=line, what=f"star import from {module} hides what is called"
                )
        for node in nodes:
            kind = type(node)  # exact type tests: this loop runs over every node of the module
            if kind in _REFERENCES:
                ref = cast(ast.Name | ast.Attribute | ast.Subscript, node)
                if type(ref.ctx) is ast.Load:
                    self.reference(ref)
            elif kind is ast.Call:
                call = cast(ast.Call, node)
                self.reference(call)
                self.call(call)
        return sorted(self.found.values(), key=lambda f: (f.line or 0, f.what))

    def reference(self, node: ast.expr) -> None:
        for target in self.r.qualify(node):
            if self.rule.forbidden.fullmatch(target):
                alias = (
                    f" (bound to {node.id!r})" if isinstance(node, ast.Name) and node.id not in target else ""
                )
                self.add(node, target, f"forbidden {target}{alias}: `{snippet(node)}`")
        if isinstance(node, ast.Attribute) and node.attr in self.rule.attributes:
            self.add(node, node.attr, f"forbidden attribute {node.attr}: `{snippet(node)}`")
        if isinstance(node, ast.Subscript) and self.r.fold(node.slice) is None:
            self.dynamic(node, node.value, "subscript")

    def call(self, node: ast.Call) -> None:
        funcs = self.r.qualify(node.func)
        if "builtins.getattr" in funcs and len(node.args) >= 2:
            name = self.r.fold(node.args[1])
            if name is None:
                self.dynamic(node, node.args[0], "getattr")
            elif name in self.rule.attributes:
                self.add(node, name, f"forbidden attribute {name}: `{snippet(node)}`")
        if "functools.partial" in funcs and node.args:
            funcs = self.r.qualify(node.args[0])
        shell = [f for f in funcs if self.rule.shell_calls.fullmatch(f)]
        if shell:
            self.shell(node, shell[0])

    def dynamic(self, node: ast.expr, owner: ast.expr, how: str) -> None:
        reached = [q for q in self.r.qualify(owner) if q in self.rule.namespaces]
        if reached:
            name = "module namespace" if reached[0] == GLOBALS else reached[0]
            self.add(node, f"?{reached[0]}", f"dynamic {how} on {name} cannot be checked: `{snippet(node)}`")

    def shell(self, node: ast.Call, target: str) -> None:
        for kw in node.keywords:
            if kw.arg == "shell" and not _false(kw.value):
                self.add(node, target, f"{target} with shell={snippet(kw.value)}: `{snippet(node)}`")
            elif kw.arg is None:
                self._shell_mapping(node, kw.value, target)
        if len(node.args) > SHELL_POSITION and not _false(node.args[SHELL_POSITION]):
            self.add(node, target, f"{target} with a positional shell argument: `{snippet(node)}`")

    def _shell_mapping(self, node: ast.Call, mapping: ast.expr, target: str) -> None:
        if not isinstance(mapping, ast.Dict):
            self.add(
                node, target, f"{target} with **{snippet(mapping)} may set shell=True: `{snippet(node)}`"
            )
            return
        for key, value in zip(mapping.keys, mapping.values, strict=True):
            if key is None or (self.r.fold(key) == "shell" and not _false(value)):
                self.add(node, target, f"{target} with shell set through a mapping: `{snippet(node)}`")


def _false(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value in (False, None, 0)


@rule("forbidden_calls", ForbiddenCallsParams, "dangerous calls in Python artifacts (AST, aliases, getattr)")
def _build(params: ForbiddenCallsParams) -> Rule:
    return ForbiddenCalls(params)
