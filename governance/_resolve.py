"""What a Python expression refers to, read from the syntax tree without running it.

``Resolver.qualify`` turns an expression into the dotted names it may denote:
``sp.run`` after ``import subprocess as sp`` -> ``subprocess.run``;
``getattr(__builtins__, 'ev' + 'al')`` -> ``builtins.eval``; ``s`` after
``from os import system as s`` -> ``os.system``; ``sys.modules['os'].system``
-> ``os.system``. ``Resolver.fold`` evaluates string expressions built from
constants (concatenation, f-strings, ``''.join``, slicing, ``chr``, ``format``...).

The analysis is flow-insensitive and errs towards suspicion: a name bound to
several things denotes all of them, and a builtin name never stops meaning the
builtin unless the module itself defines a function or class of that name.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Iterator, Sequence

#: Module names that are another name of a sensitive module.
CANONICAL_MODULE = {
    "posix": "os",
    "nt": "os",
    "_pickle": "pickle",
    "cPickle": "pickle",
    "__builtin__": "builtins",
}
#: The module namespace, as returned by ``globals()`` / ``vars()`` / ``locals()``.
GLOBALS = "<globals>"
BUILTIN_NAMES = frozenset(dir(builtins))
_STR_METHODS = frozenset(
    {"lower", "upper", "strip", "lstrip", "rstrip", "title", "capitalize", "swapcase", "casefold"}
)
_LOOKUP_METHODS = frozenset({"get", "__getitem__", "__getattribute__", "__getattr__", "pop", "setdefault"})
_MAX_CANDIDATES = 16
_MAX_FOLDED = 10_000
_FIXPOINT_ROUNDS = 4


def canonical(name: str) -> str:
    head, dot, rest = name.partition(".")
    return CANONICAL_MODULE.get(head, head) + dot + rest


class Resolver:
    """The bindings of one module and what its expressions refer to."""

    def __init__(self, tree: ast.Module, nodes: Sequence[ast.AST] | None = None) -> None:
        nodes = list(ast.walk(tree)) if nodes is None else nodes
        self.aliases: dict[str, list[str]] = {}
        self.constants: dict[str, list[str]] = {}
        self.imported: set[str] = set()
        self.defined = {
            n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        }
        self.star_imports: list[tuple[str, int]] = []
        self._cache: dict[int, tuple[str, ...]] = {}
        self._collect_imports(nodes)
        self._collect_assignments(nodes)

    # -- bindings ----------------------------------------------------------------------
    def _bind(self, table: dict[str, list[str]], name: str, value: str) -> bool:
        values = table.setdefault(name, [])
        if value in values or len(values) >= _MAX_CANDIDATES:
            return False
        values.append(value)
        return True

    def _collect_imports(self, nodes: Sequence[ast.AST]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    local = alias.asname or alias.name.partition(".")[0]
                    target = alias.name if alias.asname else local
                    self._bind(self.aliases, local, canonical(target))
                    self.imported.add(local)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                module = canonical(node.module)
                for alias in node.names:
                    if alias.name == "*":
                        self.star_imports.append((module, node.lineno))
                        continue
                    local = alias.asname or alias.name
                    self._bind(self.aliases, local, f"{module}.{alias.name}")
                    self.imported.add(local)

    def _collect_assignments(self, nodes: Sequence[ast.AST]) -> None:
        pairs = list(_name_bindings(nodes))
        for _ in range(_FIXPOINT_ROUNDS):
            self._cache.clear()
            changed = False
            for name, value in pairs:
                for target in self.qualify(value):
                    changed |= self._bind(self.aliases, name, target)
                folded = self.fold(value)
                if folded is not None:
                    changed |= self._bind(self.constants, name, folded)
            if not changed:
                break
        self._cache.clear()

    # -- what an expression denotes -------------------------------------------------------
    def qualify(self, node: ast.AST) -> tuple[str, ...]:
        """Dotted names ``node`` may denote (empty when unknown)."""
        key = id(node)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = self._qualify(node)[:_MAX_CANDIDATES]
        return cached

    def _qualify(self, node: ast.AST) -> tuple[str, ...]:
        if isinstance(node, ast.Name):
            return self._qualify_name(node.id)
        if isinstance(node, ast.Attribute):
            bases = self.qualify(node.value)
            return bases if node.attr == "__dict__" else tuple(_member(b, node.attr) for b in bases)
        if isinstance(node, ast.Subscript):
            return self._lookup(self.qualify(node.value), self.fold(node.slice))
        if isinstance(node, ast.Call):
            return self._qualify_call(node)
        if isinstance(node, ast.NamedExpr):
            return self.qualify(node.value)
        return ()

    def _qualify_name(self, name: str) -> tuple[str, ...]:
        if name == "__builtins__":
            return ("builtins",)
        found = tuple(self.aliases.get(name, ()))
        if name in BUILTIN_NAMES and name not in self.defined and name not in self.imported:
            found += (f"builtins.{name}",)
        return found

    def _lookup(self, bases: tuple[str, ...], key: str | None) -> tuple[str, ...]:
        """``base[key]`` on namespaces: ``sys.modules['os']``, ``globals()['eval']``, ``os.__dict__[k]``."""
        if key is None:
            return ()
        out: list[str] = []
        for base in bases:
            if base == "sys.modules":
                out.append(canonical(key))
            elif base == GLOBALS:
                out.extend(self._qualify_name(key))
            else:
                out.append(_member(base, key))
        return tuple(out)

    def _qualify_call(self, node: ast.Call) -> tuple[str, ...]:
        args = node.args
        if isinstance(node.func, ast.Attribute) and node.func.attr in _LOOKUP_METHODS and args:
            owner = self.qualify(node.func.value)
            if node.func.attr.startswith("__getattr"):
                return tuple(_member(b, k) for b in owner if (k := self.fold(args[0])) is not None)
            return self._lookup(owner, self.fold(args[0]))
        funcs = self.qualify(node.func)
        out: list[str] = []
        for func in funcs:
            out.extend(self._call_result(func, args))
        return tuple(out)

    def _call_result(self, func: str, args: list[ast.expr]) -> tuple[str, ...]:
        """What calling ``func`` returns, for the calls that hand out namespaces or callables."""
        if func == "builtins.getattr" and len(args) >= 2:
            name = self.fold(args[1])
            return () if name is None else tuple(_member(b, name) for b in self.qualify(args[0]))
        if func in ("builtins.__import__", "importlib.import_module", "importlib.__import__") and args:
            module = self.fold(args[0])
            return () if module is None else (canonical(module),)
        if func in ("builtins.globals", "builtins.locals") or (func == "builtins.vars" and not args):
            return (GLOBALS,)
        if func in ("builtins.vars", "functools.partial") and args:
            return self.qualify(args[0])
        return ()

    # -- constant strings ------------------------------------------------------------------
    def fold(self, node: ast.AST) -> str | None:
        """The string value of a constant expression, or None."""
        try:
            value = self._fold(node)
        except (RecursionError, ValueError, TypeError, IndexError, KeyError, OverflowError):
            return None
        return value if value is None or len(value) <= _MAX_FOLDED else None

    def _fold(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Constant):
            return node.value if isinstance(node.value, str) else None
        if isinstance(node, ast.Name):
            values = self.constants.get(node.id)
            return values[0] if values and len(values) == 1 else None
        if isinstance(node, ast.BinOp):
            return self._fold_binop(node)
        if isinstance(node, ast.JoinedStr):
            parts = [self._fold_fstring_part(v) for v in node.values]
            return None if any(p is None for p in parts) else "".join(p for p in parts if p is not None)
        if isinstance(node, ast.Subscript):
            return self._fold_subscript(node)
        if isinstance(node, ast.Call):
            return self._fold_call(node)
        return None

    def _fold_fstring_part(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.FormattedValue):
            if node.conversion != -1 or node.format_spec is not None:
                return None
            return self._fold(node.value)
        return self._fold(node)

    def _fold_binop(self, node: ast.BinOp) -> str | None:
        left, right = self._fold(node.left), self._fold(node.right)
        if isinstance(node.op, ast.Add) and left is not None and right is not None:
            return left + right
        if isinstance(node.op, ast.Mult):
            times = _int(node.right) if left is not None else _int(node.left)
            text = left if left is not None else right
            if text is not None and times is not None and 0 <= times * len(text) <= _MAX_FOLDED:
                return text * times
        if isinstance(node.op, ast.Mod) and left is not None:
            items = node.right.elts if isinstance(node.right, ast.Tuple) else [node.right]
            values = [self._fold(e) for e in items]
            if all(v is not None for v in values):
                return left % tuple(values)
        return None

    def _fold_subscript(self, node: ast.Subscript) -> str | None:
        text = self._fold(node.value)
        if text is None:
            return None
        sl = node.slice
        if isinstance(sl, ast.Slice):
            parts = (sl.lower, sl.upper, sl.step)
            bounds = [None if b is None else _int(b) for b in parts]
            if any(b is not None and v is None for b, v in zip(parts, bounds, strict=True)):
                return None
            return text[slice(*bounds)]
        index = _int(sl)
        return None if index is None else text[index]

    def _fold_call(self, node: ast.Call) -> str | None:
        func, args = node.func, node.args
        if isinstance(func, ast.Name) and len(args) == 1 and not node.keywords:
            if func.id == "chr" and (code := _int(args[0])) is not None:
                return chr(code)
            if func.id == "str":
                return self._fold(args[0])
            return None
        if not isinstance(func, ast.Attribute):
            return None
        if (
            func.attr == "decode"
            and isinstance(func.value, ast.Constant)
            and isinstance(func.value.value, bytes)
        ):
            return func.value.value.decode("utf-8", "replace")
        owner = self._fold(func.value)
        if owner is None:
            return None
        return self._fold_method(owner, func.attr, args)

    def _fold_join(self, separator: str, arg: ast.expr) -> str | None:
        if not isinstance(arg, ast.List | ast.Tuple):
            text = self._fold(arg)
            return None if text is None else separator.join(text)
        parts = [self._fold(e) for e in arg.elts]
        strings = [p for p in parts if p is not None]
        return separator.join(strings) if len(strings) == len(parts) else None

    def _fold_method(self, owner: str, method: str, args: list[ast.expr]) -> str | None:
        if method == "join" and len(args) == 1:
            return self._fold_join(owner, args[0])
        if method in _STR_METHODS and not args:
            result: str = getattr(owner, method)()
            return result
        values = [self._fold(a) for a in args]
        if any(v is None for v in values):
            return None
        if method == "replace" and len(values) == 2:
            return owner.replace(values[0] or "", values[1] or "")
        if method == "format":
            return owner.format(*values)
        return None


def _member(base: str, name: str) -> str:
    return canonical(name) if base == "sys.modules" else f"{base}.{name}"


def _int(node: ast.AST) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _int(node.operand)
        return None if inner is None else -inner
    return None


def _name_bindings(nodes: Sequence[ast.AST]) -> Iterator[tuple[str, ast.expr]]:
    """(name, value) of every simple binding: ``x = v``, ``x: T = v``, ``(x := v)``, ``a, b = v, w``."""
    for node in nodes:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                yield from _pairs(target, node.value)
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            yield from _pairs(node.target, node.value)
        elif isinstance(node, ast.NamedExpr):
            yield node.target.id, node.value


def _pairs(target: ast.expr, value: ast.expr) -> Iterator[tuple[str, ast.expr]]:
    if isinstance(target, ast.Name):
        yield target.id, value
    elif (
        isinstance(target, ast.Tuple | ast.List)
        and isinstance(value, ast.Tuple | ast.List)
        and len(target.elts) == len(value.elts)
    ):
        for t, v in zip(target.elts, value.elts, strict=True):
            yield from _pairs(t, v)
