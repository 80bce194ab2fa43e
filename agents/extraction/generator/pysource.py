"""Writing Python source text that ``ruff check`` accepts: literals, wrapped strings, imports.

Pure functions used by the templates (as jinja filters) and by the kernel
renderer. Everything fits in :data:`WIDTH` columns: long strings become
implicit concatenations in parentheses, long collections one item per line,
long expressions are broken between tokens inside parentheses.

Imports are written in blocks separated by ``# isort: split``: the standard
library and third-party packages, then L9's own packages, then the modules of
the plan. Each block then sorts the same whether a checker counts L9's packages
(or the generated ones) as first- or third-party, which depends on the
directory it runs from.
"""

from __future__ import annotations

import io
import json
import math
import sys
import textwrap
import tokenize
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

#: The line length of the project's ruff configuration.
WIDTH = 110
#: L9's own top-level packages (generated code may import them).
L9_PACKAGES = frozenset({"agents", "bus", "envelope", "governance", "l9", "memory"})
SPLIT = "# isort: split"
Scalar = str | int | float | bool | None


# -- literals ------------------------------------------------------------------------------
def py_string(text: str) -> str:
    """A double-quoted Python string literal of ``text`` (JSON escapes are valid Python)."""
    return json.dumps(text, ensure_ascii=False)


def py_scalar(value: Scalar) -> str:
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f'float("{value}")'
    return py_string(value)


def py_value(value: object, indent: int = 0, extra: int = 0) -> str:
    """``value`` (scalars, tuples/lists, dicts of them) as a literal starting ``indent`` columns in.

    ``extra`` counts the other characters on its first line (``x = `` before, ``,`` after):
    when the whole does not fit, a string becomes an implicit concatenation in parentheses
    and a collection one item per line.
    """
    flat = _flat(value)
    if indent + extra + len(flat) <= WIDTH:
        return flat
    pad = " " * (indent + 4)
    if isinstance(value, str):
        return "(\n" + "\n".join(pad + py_string(p) for p in _pieces(value, WIDTH - len(pad) - 2)) + "\n)"
    if isinstance(value, Mapping):
        lines = []
        for k, v in value.items():
            key = py_string(str(k))
            lines.append(f"{pad}{key}: {py_value(v, indent + 4, len(key) + 3)},")
        return "{\n" + "\n".join(lines) + "\n" + " " * indent + "}"
    if isinstance(value, list | tuple):
        lines = [f"{pad}{py_value(v, indent + 4, 1)}," for v in value]
        opener, closer = ("[", "]") if isinstance(value, list) else ("(", ")")
        return opener + "\n" + "\n".join(lines) + "\n" + " " * indent + closer
    return flat


def literal(head: str, value: object, indent: int = 0, tail: str = "") -> str:
    """``head`` then ``value`` as a literal (see :func:`py_value`), then ``tail``, at ``indent``."""
    return " " * indent + head + py_value(value, indent, len(head) + len(tail)) + tail


def _flat(value: object) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{py_string(str(k))}: {_flat(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flat(v) for v in value) + "]"
    if isinstance(value, tuple):
        inner = ", ".join(_flat(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if value is None or isinstance(value, str | int | float | bool):
        return py_scalar(value)
    raise TypeError(f"cannot write a {type(value).__name__} as a Python literal")


def _pieces(text: str, width: int) -> list[str]:
    """``text`` cut into pieces of at most ``width`` characters, at spaces where possible."""
    pieces, rest = [], text
    while len(py_string(rest)) > width + 2:
        cut = rest.rfind(" ", 1, width)
        cut = cut if cut > 0 else width
        pieces.append(rest[:cut])
        rest = rest[cut:]
    return [*pieces, rest]


# -- prose in docstrings and comments ------------------------------------------------------
def one_line(text: object) -> str:
    """Whitespace (newlines included) collapsed to single spaces."""
    return " ".join(str(text).split())


def doc_text(text: object, indent: int = 0, width: int = WIDTH - 4) -> str:
    """Prose for a docstring: one paragraph, wrapped, backslashes and quotes made harmless."""
    safe = _doc_safe(text)
    pad = " " * indent
    return "\n".join(textwrap.wrap(safe, width - indent, initial_indent=pad, subsequent_indent=pad))


def docstring(text: object, indent: int = 0) -> str:
    """A whole docstring literal of one paragraph, starting at column ``indent``."""
    safe = _doc_safe(text)
    if indent + len(safe) + 6 <= WIDTH:
        return f'"""{safe}"""'
    pad = " " * indent
    lines = textwrap.wrap(safe, WIDTH - indent - 4)
    return '"""' + lines[0] + "".join(f"\n{pad}{line}" for line in lines[1:]) + f'\n{pad}"""'


def bullet(text: object, indent: int = 0, mark: str = "* ") -> str:
    """A list item of prose, wrapped with a hanging indent."""
    first, rest = " " * indent + mark, " " * (indent + len(mark))
    return "\n".join(
        textwrap.wrap(_doc_safe(text), WIDTH - indent, initial_indent=first, subsequent_indent=rest)
    )


def _doc_safe(text: object) -> str:
    safe = one_line(text).replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    return safe[:-1] + '\\"' if safe.endswith('"') else safe


def comment_text(text: object, indent: int = 0, prefix: str = "#: ") -> str:
    """Prose as ``#:`` comment lines, wrapped."""
    pad = " " * indent + prefix
    lines = textwrap.wrap(one_line(text), WIDTH - len(pad), initial_indent=pad, subsequent_indent=pad)
    return "\n".join(lines)


# -- expressions ---------------------------------------------------------------------------
def wrap_statement(head: str, expression: str, indent: int) -> str:
    """``head + expression`` on one line, or with the expression in parentheses broken between tokens.

    ``head`` is e.g. ``"t0 = "`` or ``"return "``; ``expression`` a single Python expression.
    """
    pad = " " * indent
    if len(pad) + len(head) + len(expression) <= WIDTH or "\n" in expression:
        return f"{pad}{head}{expression}"
    inner = " " * (indent + 4)
    lines = _token_lines(expression, WIDTH - len(inner))
    return "\n".join([f"{pad}{head}(", *(inner + line for line in lines), f"{pad})"])


def _token_lines(expression: str, width: int) -> list[str]:
    """The expression's tokens, with their original spacing, in lines of at most ``width``."""
    lines: list[str] = []
    current, previous_end = "", 0
    for token in _tokens(expression):
        gap = expression[previous_end : token.start[1]]
        if current and len(current) + len(gap) + len(token.string) > width:
            lines.append(current.rstrip())
            current, gap = "", ""
        current += gap + token.string
        previous_end = token.end[1]
    return [*lines, current.rstrip()] if current else lines


def _tokens(expression: str) -> Iterable[tokenize.TokenInfo]:
    skip = {tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.INDENT, tokenize.DEDENT}
    readline = io.StringIO(expression).readline
    return [t for t in tokenize.generate_tokens(readline) if t.type not in skip]


# -- imports -------------------------------------------------------------------------------
@dataclass
class Imports:
    """The imports of one module, written as ruff's isort (default settings) orders them.

    ``generated`` holds the top-level packages of the plan's modules.
    """

    generated: frozenset[str] = frozenset()
    straight: set[str] = field(default_factory=set)
    members: dict[str, set[str]] = field(default_factory=dict)

    def add(self, *lines: str) -> Imports:
        """``"import x"``, ``"import x.y as z"`` or ``"from x import a, b"``."""
        for line in lines:
            if line.startswith("from "):
                module, _, names = line[len("from ") :].partition(" import ")
                self.members.setdefault(module, set()).update(n.strip() for n in names.split(","))
            else:
                self.straight.add(line[len("import ") :])
        return self

    def render(self) -> str:
        blocks = [self._block(group) for group in ("outside", "l9", "generated")]
        text = f"\n\n{SPLIT}\n".join(b for b in blocks if b)
        future = "from __future__ import annotations\n\n"
        return future + text if text else future.rstrip("\n")

    def _group(self, module: str) -> str:
        top = module.split(".")[0]
        if top in self.generated:
            return "generated"
        return "l9" if top in L9_PACKAGES else "outside"

    def _block(self, group: str) -> str:
        sections: dict[str, list[str]] = {}
        for name in sorted((m for m in self.straight if self._group(m) == group), key=_module_key):
            sections.setdefault(_section(name), []).append(f"import {name}")
        for module in sorted((m for m in self.members if self._group(m) == group), key=_module_key):
            names = self.members[module]
            aliased = {n for n in names if " as " in n}
            plain = names - aliased
            lines = [_from_line(module, plain)] if plain else []
            lines += [_from_line(module, {n}) for n in sorted(aliased, key=_member_key)]
            sections.setdefault(_section(module), []).extend(lines)
        order = ("stdlib", "third", "first")
        return "\n\n".join("\n".join(sections[s]) for s in order if s in sections)


def _section(module: str) -> str:
    top = module.split(".")[0]
    if top in sys.stdlib_module_names:
        return "stdlib"
    return "first" if top in L9_PACKAGES else "third"


def _module_key(spec: str) -> tuple[str, str]:
    module = spec.split(" as ")[0]
    return module.lower(), spec


def _member_key(name: str) -> tuple[int, str, str]:
    base = name.split(" as ")[0]
    kind = 0 if base.isupper() and len(base) > 1 else 1 if base[:1].isupper() else 2
    return kind, base.lower(), name


def _from_line(module: str, names: set[str]) -> str:
    ordered = sorted(names, key=_member_key)
    line = f"from {module} import {', '.join(ordered)}"
    if len(line) <= WIDTH:
        return line
    return f"from {module} import (\n" + "".join(f"    {n},\n" for n in ordered) + ")"


def def_line(name: str, params: Sequence[str], returns: str, indent: int = 0, prefix: str = "def") -> str:
    """``def name(a: T, b: T) -> R:``, one parameter per line when it does not fit."""
    pad = " " * indent
    line = f"{pad}{prefix} {name}({', '.join(params)}) -> {returns}:"
    if len(line) <= WIDTH:
        return line
    inner = "".join(f"{pad}    {p},\n" for p in params)
    return f"{pad}{prefix} {name}(\n{inner}{pad}) -> {returns}:"


def camel(name: str) -> str:
    """``main_agent`` -> ``MainAgent``; ``l9.scores.computed.v1`` -> ``ScoresComputedV1``."""
    parts = [p for chunk in name.replace(".", "_").split("_") for p in [chunk] if p]
    return "".join(p[:1].upper() + p[1:] for p in parts)


__all__ = [
    "L9_PACKAGES",
    "SPLIT",
    "WIDTH",
    "Imports",
    "bullet",
    "camel",
    "comment_text",
    "def_line",
    "doc_text",
    "docstring",
    "literal",
    "one_line",
    "py_scalar",
    "py_string",
    "py_value",
    "wrap_statement",
]
