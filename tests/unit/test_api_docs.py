"""docs/API.md is generated from the code and must be what the generator writes now."""

from __future__ import annotations

import subprocess
import sys
import types
from enum import Enum

from pydantic import Field

from envelope import Payload
from l9.apidoc import public_modules, render, render_module
from tests.conftest import ROOT

API = ROOT / "docs" / "API.md"


def test_docs_api_is_what_the_generator_writes_now() -> None:
    assert API.read_text() == render(), "docs/API.md is stale: run .venv/bin/python scripts/gen_api_docs.py"


def test_every_public_name_of_every_package_is_documented() -> None:
    text = API.read_text()
    names = {m.__name__ for m in public_modules()}
    assert {"envelope", "bus", "agents", "governance", "memory.postgres"} <= names
    for module in public_modules():
        assert f"## `{module.__name__}`" in text
        section = text.split(f"## `{module.__name__}`", 1)[1]
        for name in module.__all__:
            assert f"`{name}" in section, f"{module.__name__}.{name} is not in docs/API.md"


class Colour(Enum):
    RED = "red"


class Shape(Payload):
    """A shape."""

    sides: int = Field(ge=3, description="how many")
    name: str = "polygon"


async def area(shape: Shape, *, scale: float = 1.0) -> float:
    """The area.

    Longer text."""
    return 0.0


def test_the_generator_renders_signatures_docstrings_fields_members_and_constants() -> None:
    module = types.ModuleType("demo.pkg", "The demo package.")
    module.__dict__.update(
        area=area, Shape=Shape, Colour=Colour, LIMIT=3, __all__=["area", "Shape", "Colour", "LIMIT"]
    )
    lines = render_module(module)
    text = "\n".join(lines)
    assert lines[:3] == ["## `demo.pkg`", "", "The demo package."]
    assert "### async def `area(shape: 'Shape', *, scale: 'float' = 1.0) -> 'float'`" in text
    assert "The area.\n\nLonger text." in text
    assert "### class `Shape` (Payload)" in text and "- field `sides: int`: how many" in text
    assert "- field `name: str = 'polygon'`" in text
    assert "Members: `RED` = `'red'`" in text and "### `LIMIT` = `3`" in text
    assert text.index("area") < text.index("Shape") < text.index("Colour"), "in __all__ order"


def test_the_script_checks_the_file() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts/gen_api_docs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "is current" in done.stdout, done.stderr
