"""Rule ``placeholders`` (strict mode): generated code that is not finished.

In Python artifacts: marker words (TODO, FIXME, XXX, TBD, "placeholder") in
comments and docstrings, TODO/FIXME in any string, ``raise
NotImplementedError``, and functions whose body is only ``pass`` / ``...`` /
a docstring. Abstract methods, ``@overload`` signatures and Protocol members
are declarations, not placeholders, and are exempt. In every other text
artifact the markers are searched line by line.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator

from ._decision import Finding
from ._rules import Params, Rule, compile_patterns, rule
from ._subjects import Artifact

DEFAULT_COMMENT_MARKERS = (r"\bTODO\b", r"\bFIXME\b", r"\bXXX\b", r"\bTBD\b", r"(?i)\bplaceholder\b")
DEFAULT_STRING_MARKERS = (r"\bTODO\b", r"\bFIXME\b")
DECLARATION_DECORATORS = frozenset({"abstractmethod", "overload", "abstractproperty"})


class PlaceholdersParams(Params):
    #: Searched in comments, docstrings and non-Python text.
    comment_markers: tuple[str, ...] = DEFAULT_COMMENT_MARKERS
    #: Searched in every other string literal of Python code.
    string_markers: tuple[str, ...] = DEFAULT_STRING_MARKERS
    not_implemented: bool = True
    empty_bodies: bool = True


def _decorator_name(node: ast.expr) -> str:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _is_declaration(func: ast.FunctionDef | ast.AsyncFunctionDef, in_protocol: bool) -> bool:
    return in_protocol or any(_decorator_name(d) in DECLARATION_DECORATORS for d in func.decorator_list)


def _is_protocol(cls: ast.ClassDef) -> bool:
    bases = (b.value if isinstance(b, ast.Subscript) else b for b in cls.bases)
    return any(_decorator_name(base) == "Protocol" for base in bases)


def _docstring_node(node: ast.AST) -> ast.Constant | None:
    body = getattr(node, "body", None)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        return body[0].value if isinstance(body[0].value.value, str) else None
    return None


def _is_filler(stmt: ast.stmt) -> bool:
    """``pass``, ``...`` or a bare string."""
    if isinstance(stmt, ast.Pass):
        return True
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and (stmt.value.value is Ellipsis or isinstance(stmt.value.value, str))
    )


def _raises_not_implemented(node: ast.Raise) -> bool:
    exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
    return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"


class Placeholders(Rule):
    def __init__(self, params: PlaceholdersParams) -> None:
        self.params = params
        self.comment_markers = compile_patterns(params.comment_markers)
        self.string_markers = compile_patterns(params.string_markers)

    def artifact(self, artifact: Artifact) -> list[Finding]:
        if not artifact.is_python:
            return list(self._text(artifact))
        tree = artifact.tree
        if isinstance(tree, SyntaxError):  # reported by forbidden_calls; still search the text
            return list(self._text(artifact))
        findings = [*self._comments(artifact), *self._strings(artifact, tree), *self._bodies(artifact, tree)]
        return sorted(findings, key=lambda f: (f.line or 0, f.what))

    def _marker(self, text: str, patterns: list[re.Pattern[str]]) -> str | None:
        for pattern in patterns:
            match = pattern.search(text)
            if match:
                return match.group(0)
        return None

    def _text(self, artifact: Artifact) -> Iterator[Finding]:
        for number, line in enumerate(artifact.lines, 1):
            marker = self._marker(line, self.comment_markers)
            if marker:
                yield Finding(file=artifact.path, line=number, what=f"placeholder marker {marker!r}")

    def _comments(self, artifact: Artifact) -> Iterator[Finding]:
        try:
            tokens = list(tokenize.generate_tokens(io.StringIO(artifact.text).readline))
        except (tokenize.TokenError, SyntaxError):
            return
        for tok in tokens:
            if tok.type == tokenize.COMMENT and (marker := self._marker(tok.string, self.comment_markers)):
                yield Finding(
                    file=artifact.path, line=tok.start[0], what=f"placeholder marker {marker!r} in a comment"
                )

    def _strings(self, artifact: Artifact, tree: ast.Module) -> Iterator[Finding]:
        docstrings = {id(d) for n in ast.walk(tree) if (d := _docstring_node(n)) is not None}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            is_doc = id(node) in docstrings
            marker = self._marker(node.value, self.comment_markers if is_doc else self.string_markers)
            if marker:
                where = "a docstring" if is_doc else "a string"
                yield Finding(
                    file=artifact.path, line=node.lineno, what=f"placeholder marker {marker!r} in {where}"
                )

    def _bodies(self, artifact: Artifact, tree: ast.Module) -> Iterator[Finding]:
        for func, declared in _functions(tree):
            if declared:
                continue
            if self.params.empty_bodies and all(_is_filler(s) for s in func.body):
                yield Finding(
                    file=artifact.path, line=func.lineno, what=f"function {func.name}() has an empty body"
                )
            if self.params.not_implemented:
                yield from self._not_implemented(artifact, func)
        if self.params.not_implemented:
            for stmt in tree.body:  # module level, outside any function
                if isinstance(stmt, ast.Raise) and _raises_not_implemented(stmt):
                    yield Finding(file=artifact.path, line=stmt.lineno, what="raises NotImplementedError")

    def _not_implemented(
        self, artifact: Artifact, func: ast.FunctionDef | ast.AsyncFunctionDef
    ) -> Iterator[Finding]:
        for node in _own_nodes(func):
            if isinstance(node, ast.Raise) and _raises_not_implemented(node):
                yield Finding(
                    file=artifact.path, line=node.lineno, what=f"{func.name}() raises NotImplementedError"
                )


FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


def _functions(tree: ast.Module) -> Iterator[tuple[FunctionNode, bool]]:
    """Every function with whether it is a declaration (abstract, overload, Protocol member)."""
    stack: list[tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, in_protocol = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                stack.append((child, _is_protocol(child)))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                yield child, _is_declaration(child, in_protocol)
                stack.append((child, False))
            else:
                stack.append((child, in_protocol))


def _own_nodes(func: FunctionNode) -> Iterator[ast.AST]:
    """The nodes of ``func``'s body, not descending into nested functions or classes."""
    stack: list[ast.AST] = list(func.body)
    while stack:
        node = stack.pop()
        yield node
        stack.extend(
            c
            for c in ast.iter_child_nodes(node)
            if not isinstance(c, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        )


@rule(
    "placeholders",
    PlaceholdersParams,
    "strict mode: TODO/FIXME/placeholder markers, stubs, NotImplementedError",
)
def _build(params: PlaceholdersParams) -> Rule:
    return Placeholders(params)
