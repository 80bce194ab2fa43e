"""The API reference (``docs/API.md``), generated from the code.

For each public package, its ``__all__`` in order: the signature and the
docstring of every class and function, the public methods of classes, and the
value of simple constants. Nothing is written by hand, so the reference
cannot drift: ``tests/unit/test_api_docs.py`` fails when ``docs/API.md`` is not
what :func:`render` produces now (``python scripts/gen_api_docs.py`` rewrites it).
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
import inspect
import re
import typing
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

#: The packages documented, in this order (a missing optional one is left out).
MODULES = (
    "envelope",
    "bus",
    "agents",
    "agents.sympy",
    "agents.rules",
    "governance",
    "memory.audit",
    "memory.postgres",
    "memory.graph",
    "l9.testing",
)
HEADER = """# L9 API reference

Generated from the code by `python scripts/gen_api_docs.py` (``l9/apidoc.py``): each
package's `__all__`, with signatures and docstrings. Do not edit by hand; a test fails
when this file is not what the generator writes.
"""
ADDRESS = re.compile(r" at 0x[0-9a-f]+")
SIMPLE = (str, int, float, bool, bytes, type(None))


def public_modules() -> list[ModuleType]:
    """The documented packages that exist and declare ``__all__``."""
    found = []
    for name in MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        module = importlib.import_module(name)
        if hasattr(module, "__all__"):
            found.append(module)
    return found


def docstring(obj: Any) -> str:
    """The object's own docstring, dedented ("" when it has none of its own)."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    if not isinstance(doc, str) or (isinstance(obj, type) and doc.startswith(f"{obj.__name__}(")):
        return ""  # none, or the signature a dataclass writes as its docstring
    return inspect.cleandoc(doc)


def signature(obj: Callable[..., Any]) -> str:
    try:
        text = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"
    return ADDRESS.sub("", text)


def constant(value: Any) -> str:
    """A constant's value when it is short and plain, else its type."""
    plain = isinstance(value, SIMPLE) or (
        isinstance(value, tuple | frozenset) and all(isinstance(v, SIMPLE) for v in value)
    )
    if typing.get_origin(value) is not None:
        return f"`{_type_name(value)}`"
    text = repr(value)
    if plain and len(text) <= 100:
        return f"`{text}`"
    return f"a `{type(value).__name__}`"


def _methods(cls: type) -> Iterator[tuple[str, Any]]:
    for name, member in cls.__dict__.items():
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(member, staticmethod | classmethod):
            member = member.__func__
        if isinstance(member, property) or (
            inspect.isfunction(member) and (name != "__init__" or docstring(member))
        ):
            yield name, member


def _type_name(annotation: Any) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else repr(annotation)
    return ADDRESS.sub("", re.sub(r"\b(typing|collections\.abc|pydantic\.types)\.", "", text))


def _fields(cls: type[BaseModel]) -> list[str]:
    lines = []
    for field_name, field in cls.model_fields.items():
        if field.default_factory is not None:
            default = " = <factory>"
        elif field.is_required():
            default = ""
        else:
            default = f" = {ADDRESS.sub('', repr(field.default))}"
        lines.append(f"- field `{field_name}: {_type_name(field.annotation)}{default}`" + _summary(field))
    return lines


def _class(name: str, cls: type) -> list[str]:
    kind = "exception" if issubclass(cls, BaseException) else "class"
    bases = [b.__name__ for b in cls.__bases__ if b is not object]
    shown = "" if issubclass(cls, BaseModel | enum.Enum) else signature(cls)
    head = f"### {kind} `{name}{shown}`" + (f" ({', '.join(bases)})" if bases else "")
    lines = [head, "", docstring(cls), ""]
    if issubclass(cls, enum.Enum):
        lines.append("Members: " + ", ".join(f"`{m.name}` = `{m.value!r}`" for m in cls))
    if issubclass(cls, BaseModel):
        lines += _fields(cls)
    for method_name, member in _methods(cls):
        if isinstance(member, property):
            lines.append(f"- property `{method_name}`" + _summary(member))
        else:
            lines.append(f"- `{method_name}{signature(member)}`" + _summary(member))
    return [*lines, ""]


def _summary(obj: Any) -> str:
    doc = obj.description or "" if isinstance(obj, FieldInfo) else docstring(obj)
    return f": {doc.split(chr(10) + chr(10))[0].replace(chr(10), ' ')}" if doc else ""


def _entry(name: str, obj: Any) -> list[str]:
    if isinstance(obj, type):
        return _class(name, obj)
    if inspect.isroutine(obj):
        prefix = "async def" if inspect.iscoroutinefunction(obj) else "def"
        return [f"### {prefix} `{name}{signature(obj)}`", "", docstring(obj), ""]
    if callable(obj):
        call = docstring(type(obj).__call__)
        return [f"### `{name}{signature(obj)}` (a callable `{type(obj).__name__}`)", "", call, ""]
    return [f"### `{name}` = {constant(obj)}", ""]


def render_module(module: ModuleType) -> list[str]:
    lines = [f"## `{module.__name__}`", "", docstring(module), ""]
    for name in module.__all__:
        lines += _entry(name, getattr(module, name))
    return lines


def render() -> str:
    """The whole reference, Markdown."""
    modules = public_modules()
    lines = [HEADER, "Packages: " + ", ".join(f"`{m.__name__}`" for m in modules), ""]
    for module in modules:
        lines += render_module(module)
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
