"""Verifying a report file, the pure part: reading it back (its format told by its
content, its stamp) and comparing it with the report rebuilt from the trail.

A JSON report is the model dump; a Markdown report carries its stamp in the last
fenced ``json l9-report`` block; anything else is :class:`ReportFormatError`. The
rebuilt report is rendered in the file's format, with the file's own key id, digest
and signature, and compared byte for byte; the first difference is named by the
section it falls in, or as an edit outside the sections.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from .model import Report, Stamp
from .render import STAMP_FENCE, Format, render

_STAMP_BLOCK = re.compile(rf"^{re.escape(STAMP_FENCE)}\n(.*)\n```$", re.MULTILINE)
_TOP_FIELDS = ("format", "run_id", "generated_at", "sections_version")
_DECLARATION_FIELDS = (
    "head_seq",
    "head_chain_hash",
    "checkpoint_id",
    "checkpoint_digest",
    "key_id",
    "digest",
    "signature",
)


class ReportFormatError(ValueError):
    """The text is not an evidence report this code can read."""


@dataclass(frozen=True, slots=True)
class ParsedReport:
    """A report file: its format, exact text, stamp and (JSON only) its data."""

    fmt: Format
    text: str
    stamp: Stamp
    data: dict[str, Any] | None


def _stamp(fields: Any) -> Stamp:
    try:
        stamp = Stamp.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "stamp"
        raise ReportFormatError(f"bad report stamp: {where}: {first['msg']}") from None
    try:
        datetime.fromisoformat(stamp.generated_at)
    except ValueError:
        raise ReportFormatError(
            f"bad report stamp: generated_at {stamp.generated_at!r} is not a time"
        ) from None
    return stamp


def _parse_json(text: str) -> ParsedReport:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ReportFormatError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("declaration"), dict):
        raise ReportFormatError("JSON without a report declaration: not an evidence report")
    declaration = data["declaration"]
    fields = {name: data.get(name) for name in _TOP_FIELDS}
    fields.update({name: declaration.get(name) for name in _DECLARATION_FIELDS})
    if "tree_head_root" in declaration:
        fields["tree_head_root"] = declaration["tree_head_root"]
    return ParsedReport("json", text, _stamp(fields), data)


def _parse_markdown(text: str) -> ParsedReport:
    blocks = _STAMP_BLOCK.findall(text)
    if not blocks:
        raise ReportFormatError(
            f"neither a JSON report nor a Markdown report (no {STAMP_FENCE.lstrip('`')!r} stamp block)"
        )
    try:
        fields = json.loads(blocks[-1])
    except ValueError as exc:
        raise ReportFormatError(f"the stamp block is not JSON: {exc}") from None
    return ParsedReport("md", text, _stamp(fields), None)


def parse_report(text: str) -> ParsedReport:
    """The report in ``text``, its format told by its content (JSON object or Markdown)."""
    if text.lstrip().startswith("{"):
        return _parse_json(text)
    return _parse_markdown(text)


# -- comparing ---------------------------------------------------------------------------------------

_SECTION_HEADING = re.compile(r"^## (\d+)\. (.*)$")
_APPENDIX_HEADING = "## Appendix"
APPENDIX = "the appendix (records not covered by a section)"


@dataclass(frozen=True, slots=True)
class ReportCheck:
    """The outcome of verifying one report file: one line per problem found."""

    fmt: Format
    stamp: Stamp
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def _outside(line: int) -> str:
    return f"the file was edited outside the sections (line {line})"


def _part_at(lines: Sequence[str], index: int) -> str | None:
    """The section holding line ``index`` of a rendered Markdown report (None: outside)."""
    if index >= len(lines):
        return None
    for line in reversed(lines[: index + 1]):
        if line == STAMP_FENCE:
            return None
        heading = _SECTION_HEADING.match(line)
        if heading:
            return f"section {heading.group(1)} ({heading.group(2)})"
        if line.startswith(_APPENDIX_HEADING):
            return APPENDIX
    return None


def markdown_difference(actual: str, expected: str) -> str | None:
    """Where ``actual`` first departs from ``expected`` (a rendered report), or None."""
    if actual == expected:
        return None
    got, want = actual.split("\n"), expected.split("\n")
    index = next(
        (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want))
    )
    part = _part_at(want, index)
    if part is None:
        return _outside(index + 1)
    return f"{part} does not match the trail (first difference at line {index + 1})"


def _title(section: dict[str, Any]) -> str:
    return f"section {section['number']} ({section['title']})"


def json_difference(data: dict[str, Any], expected: Report) -> str:
    """Which part of a JSON report that is not the rendering of ``expected`` differs."""
    want = expected.model_dump(mode="json")
    got_sections = data.get("sections")
    got_sections = got_sections if isinstance(got_sections, list) else []
    for i, section in enumerate(want["sections"]):
        if i >= len(got_sections) or got_sections[i] != section:
            return f"{_title(section)} does not match the trail"
    if len(got_sections) != len(want["sections"]):
        return "the file was edited outside the sections (the list of sections)"
    if data.get("appendix") != want["appendix"]:
        return f"{APPENDIX} does not match the trail"
    final = _title(want["sections"][-1])
    for name in ("outcome", "declaration"):
        if data.get(name) != want[name]:
            return f"{final}: the {name} does not match the trail"
    return "the file was edited outside the sections"


def first_difference(parsed: ParsedReport, expected: Report) -> str | None:
    """None when ``parsed`` is exactly ``expected`` rendered in its format, else where it differs."""
    text = render(expected, parsed.fmt)
    if parsed.text == text:
        return None
    if parsed.fmt == "md":
        return markdown_difference(parsed.text, text)
    return json_difference(parsed.data or {}, expected)
