"""One line saying what an envelope's payload holds, for tails, the audit stream and reports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack

from envelope import SIGNED_FIELDS

_DATA, _KIND = SIGNED_FIELDS.index("data"), SIGNED_FIELDS.index("kind")
#: Longest summary; longer ones end in an ellipsis.
MAX_SUMMARY = 160
_VALUE = 40
_SCALARS = frozenset((int, float, bool, type(None)))


def _short(value: Any) -> str:
    kind = type(value)
    if kind is str:  # the usual kinds first, by exact type (isinstance on an ABC is slow)
        text: str = value
    elif kind in _SCALARS:
        text = str(value)
    elif isinstance(value, Mapping):
        return f"{{{len(value)} keys}}"
    elif isinstance(value, list | tuple):
        return f"[{len(value)} items]"
    elif isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    else:
        text = str(value)
    return text if len(text) <= _VALUE else text[: _VALUE - 1] + "…"


def summarize(data: Any, kind: str | None = None) -> str:
    """``key=value`` pairs of a payload, nested values as counts, at most :data:`MAX_SUMMARY` chars."""
    if type(data) is dict or isinstance(data, Mapping):
        # a short string is its own summary: no call for the most common value
        text = " ".join(
            [f"{k}={v if type(v) is str and len(v) <= _VALUE else _short(v)}" for k, v in data.items()]
        )
    else:
        text = _short(data)
    if kind and kind != "event":
        text = f"[{kind}] {text}" if text else f"[{kind}]"
    return text if len(text) <= MAX_SUMMARY else text[: MAX_SUMMARY - 1] + "…"


def summarize_env(env: bytes | None) -> str:
    """The summary of an envelope's signed bytes (``env`` on the wire and in the trail)."""
    if env is None:
        return "(payload redacted)"
    try:
        values = msgpack.unpackb(env, raw=False)
        return summarize(values[_DATA], values[_KIND])
    except Exception:  # msgpack, index and type errors alike: a summary never fails
        return "(undecodable payload)"
