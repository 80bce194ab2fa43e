"""The SymPy tool's small exception vocabulary, and its shape on the wire.

Every failure is a :class:`ToolError` with a ``kind`` (what class of failure),
a ``rule`` (which check or mechanism failed), a human ``detail`` and, for
parse rejections, the ``position`` in the input. Governance keys on ``kind``:

* ``syntax``    - the text is not an expression;
* ``forbidden`` - a construct outside the whitelist (dangerous names, attribute
  access, lambdas, strings, unknown functions): a possible injection attempt;
* ``limit``     - a size limit (length, depth, exponent, factorial, memory);
* ``timeout``   - the wall-clock bound of a worker subprocess;
* ``invalid``   - a well-formed request that makes no sense (unknown variable);
* ``failed``    - SymPy itself raised, or a worker died.

On the bus an error travels as an ``ErrorReply`` with ``error="sympy.<kind>"``
and ``detail="<rule> at <line>:<col> (offset <n>): <message>"`` (no position:
``"<rule>: <message>"``): readable on ``l9 tail``, and parsed back into the same
exception by the client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

Kind = Literal["syntax", "forbidden", "limit", "timeout", "invalid", "failed"]
KINDS: frozenset[str] = frozenset(get_args(Kind))
#: Timeout rules that are waits for capacity (a pool worker, a build slot), never a violation.
WAITS = frozenset({"queue", "build_queue"})
ERROR_PREFIX = "sympy."
_DETAIL = re.compile(
    r"^(?P<rule>[a-z0-9_]+)(?: at (?P<line>\d+):(?P<col>\d+) \(offset (?P<offset>\d+)\))?: (?P<message>.*)$",
    re.DOTALL,
)


@dataclass(frozen=True)
class Position:
    """Where in the input text: 1-based line and column, 0-based character offset."""

    line: int
    col: int
    offset: int

    def __str__(self) -> str:
        return f"{self.line}:{self.col}"


class ToolError(Exception):
    """Base of every SymPy tool error."""

    def __init__(self, kind: Kind, rule: str, detail: str, position: Position | None = None) -> None:
        self.kind, self.rule, self.detail, self.position = kind, rule, detail, position
        where = f" at {position} (offset {position.offset})" if position else ""
        super().__init__(f"{kind}: {rule}{where}: {detail}")

    @property
    def violation(self) -> bool:
        """True for what governance judges: forbidden constructs, limit breaches and runaways
        (not a wait for a free worker: that is the worker's load, not the request's doing)."""
        # nor a wait for a build slot (WAITS)
        return self.kind in ("forbidden", "limit") or (self.kind == "timeout" and self.rule not in WAITS)

    def to_wire(self) -> dict[str, Any]:
        """Plain data that crosses a pipe or a queue (exceptions do not pickle reliably)."""
        pos = self.position
        return {
            "kind": self.kind,
            "rule": self.rule,
            "detail": self.detail,
            "position": None if pos is None else [pos.line, pos.col, pos.offset],
        }

    def reply_fields(self) -> tuple[str, str]:
        """``(error, detail)`` of the ErrorReply that carries this error."""
        pos = self.position
        where = f" at {pos} (offset {pos.offset})" if pos else ""
        return f"{ERROR_PREFIX}{self.kind}", f"{self.rule}{where}: {self.detail}"


class ParseRejected(ToolError):
    """The parser refused the input (kinds ``syntax``, ``forbidden``, ``limit``, ``invalid``).

    A parse rejection always names a position; no other error does.
    """

    position: Position

    def __init__(self, kind: Kind, rule: str, detail: str, position: Position) -> None:
        super().__init__(kind, rule, detail, position)


class ToolTimeout(ToolError, TimeoutError):
    """A worker subprocess ran past its wall-clock bound and was killed."""

    def __init__(self, detail: str, rule: str = "wall_clock") -> None:
        super().__init__("timeout", rule, detail)


def error_from_wire(data: dict[str, Any]) -> ToolError:
    """The exception :meth:`ToolError.to_wire` described."""
    kind = _kind(str(data.get("kind", "failed")))
    pos = data.get("position")
    position = Position(*pos) if pos else None
    return _make(kind, str(data.get("rule", "unknown")), str(data.get("detail", "")), position)


def error_from_reply(error: str, detail: str) -> ToolError | None:
    """The exception an ErrorReply from the SymPy worker carries; None if it is not one of ours."""
    if not error.startswith(ERROR_PREFIX) or error[len(ERROR_PREFIX) :] not in KINDS:
        return None
    kind = _kind(error[len(ERROR_PREFIX) :])
    match = _DETAIL.match(detail)
    if match is None:
        return _make(kind, "unknown", detail, None)
    position = None
    if match["line"] is not None:
        position = Position(int(match["line"]), int(match["col"]), int(match["offset"]))
    return _make(kind, match["rule"], match["message"], position)


def _kind(value: str) -> Kind:
    return cast(Kind, value) if value in KINDS else "failed"


def _make(kind: Kind, rule: str, detail: str, position: Position | None) -> ToolError:
    if kind == "timeout":
        return ToolTimeout(detail, rule)
    if position is not None:
        return ParseRejected(kind, rule, detail, position)
    return ToolError(kind, rule, detail, position)
