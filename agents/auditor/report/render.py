"""A :class:`.model.Report` as Markdown (a jinja2 template) or JSON (the model, sorted keys).

Both renderings are deterministic: a report rebuilt from the trail renders to the
same bytes, which is how ``l9 report verify`` finds an edited file. The Markdown
ends with a fenced ``json l9-report`` block holding the :class:`.model.Stamp`.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Literal

import jinja2

from .model import Report, Stamp

Format = Literal["md", "json"]
FORMATS: tuple[Format, ...] = ("md", "json")
TEMPLATE = "report.md.j2"
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
#: Info string of the fenced block holding the stamp in the Markdown rendering.
STAMP_FENCE = "```json l9-report"
EMPTY_SECTION = "No records in the trail for this section."
_BACKTICKS = re.compile(r"`+")
_MD_PUNCTUATION = re.compile(r"[\\`*_\[\]|]")


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def md_text(value: object) -> str:
    """Text shown as it is in a Markdown table cell or list item: one line, Markdown
    punctuation escaped, no HTML."""
    text = _MD_PUNCTUATION.sub(r"\\\g<0>", str(value))
    return _one_line(text).replace("<", "&lt;").replace(">", "&gt;")


def md_code(value: object, cell: bool = False) -> str:
    """A code span holding ``value`` verbatim on one line (in a table ``cell``, pipes escaped)."""
    text = _one_line(str(value))
    if cell:
        text = text.replace("|", "\\|")
    longest = max((len(m) for m in _BACKTICKS.findall(text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def stamp_line(stamp: Stamp) -> str:
    """The stamp as one line of canonical JSON (``json.dumps`` escapes any newline)."""
    return json.dumps(stamp.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=False,  # Markdown, escaped by the md_text / md_code filters
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["md"] = md_text
    env.filters["code"] = md_code
    return env


def render_markdown(report: Report) -> str:
    template = _environment().get_template(TEMPLATE)
    return template.render(
        report=report,
        final=report.sections[-1],
        body=report.sections[:-1],
        empty=EMPTY_SECTION,
        stamp_fence=STAMP_FENCE,
        stamp=stamp_line(report.stamp()),
    )


def render_json(report: Report) -> str:
    return json.dumps(report.model_dump(mode="json"), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def render(report: Report, fmt: Format) -> str:
    if fmt == "md":
        return render_markdown(report)
    if fmt == "json":
        return render_json(report)
    raise ValueError(f"unknown report format {fmt!r} (expected one of {', '.join(FORMATS)})")
