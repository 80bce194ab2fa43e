"""Envelopes built without pydantic when their values are plainly valid.

Pydantic validates a :class:`PacketEnvelope` in ~5 us, most of it re-checking what
``new`` made itself (a fresh UUIDv7, the current time, the defaults) or what an
agent's previous envelope had too (the same ``type`` and ``source``). The two
builders here apply the model's own rules with plain type tests, the ``type`` /
``source`` patterns through a cache of the strings that matched already, and
times in the one ISO-8601 form L9 writes, and build the model directly:

* :func:`fresh`: the envelope :meth:`PacketEnvelope.new` makes;
* :func:`from_wire`: the envelope of a decoded ``env`` array (``decode_envelope``).

On anything they are not sure of they return None and the caller validates with
pydantic as before, so what pydantic refuses is still refused, with pydantic's
message. ``tests/unit/test_envelope_fast.py`` checks that both ways agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, get_args

from ._model import FIELDS, SOURCE_PATTERN, TYPE_PATTERN, UUID_PATTERN, Kind, PacketEnvelope

_KINDS = frozenset(get_args(Kind))
_source = re.compile(SOURCE_PATTERN).fullmatch
_type = re.compile(TYPE_PATTERN).fullmatch
_uuid = re.compile(UUID_PATTERN).fullmatch
#: ``datetime.isoformat()`` of an aware datetime: the only time text taken without pydantic.
_ISO_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{6})?[+-][0-9]{2}:[0-9]{2}"
).fullmatch
_CACHE_SIZE = 4096
_good_types: set[str] = set()
_good_sources: set[str] = set()
_set = object.__setattr__
_new = PacketEnvelope.__new__


def _text_or_none(value: Any) -> bool:
    return value is None or type(value) is str


def _aware_or_none(value: Any) -> bool:
    return value is None or (type(value) is datetime and value.utcoffset() is not None)


#: The checks of the fields a caller may pass to ``new`` besides its own arguments.
_CHECKS: dict[str, Callable[[Any], bool]] = {
    "specversion": lambda v: type(v) is str and v == "1.0",
    "subject": _text_or_none,
    "datacontenttype": lambda v: type(v) is str,
    "dataschema": _text_or_none,
    "kind": lambda v: type(v) is str and v in _KINDS,
    "causation_id": _text_or_none,
    "in_reply_to": _text_or_none,
    "reply_to": _text_or_none,
    "sequence": lambda v: type(v) is int and v >= 0,
    "traceparent": _text_or_none,
    "tracestate": _text_or_none,
    "expires_at": _aware_or_none,
    "auth": _text_or_none,
    "key_id": _text_or_none,
    "signature": _text_or_none,
}


def _matches(value: Any, cache: set[str], match: Callable[[str], Any]) -> bool:
    if type(value) is not str:
        return False
    if value in cache:
        return True
    if match(value) is None:
        return False
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    cache.add(value)
    return True


def fresh(
    eid: str,
    now: datetime,
    type_: Any,
    source: Any,
    data: Any,
    correlation_id: Any,
    expires_at: Any,
    dataschema: Any,
    fields: dict[str, Any],
    /,
) -> PacketEnvelope | None:
    """The envelope ``new`` makes of these values, or None when one needs pydantic's look."""
    if not (
        _matches(type_, _good_types, _type)
        and _matches(source, _good_sources, _source)
        and type(correlation_id) is str
        and correlation_id
        and type(data) is dict
        and _text_or_none(dataschema)
        and _aware_or_none(expires_at)
    ):
        return None
    for key in data:
        if type(key) is not str:
            return None
    values = {
        "specversion": "1.0",
        "id": eid,
        "source": source,
        "type": type_,
        "subject": None,
        "time": now,
        "datacontenttype": "application/json",
        "dataschema": dataschema,
        "kind": "event",
        "correlation_id": correlation_id,
        "causation_id": None,
        "in_reply_to": None,
        "reply_to": None,
        "sequence": 0,
        "traceparent": None,
        "tracestate": None,
        "expires_at": expires_at,
        "auth": None,
        "key_id": None,
        "signature": None,
        "data": dict(data),  # as pydantic does: the envelope has its own dict
    }
    for name, value in fields.items():
        check = _CHECKS.get(name)
        if check is None or not check(value):
            return None
        values[name] = value
    return _built(
        values,
        {"id", "type", "source", "time", "data", "correlation_id", "expires_at", "dataschema", *fields},
    )


def _built(values: dict[str, Any], fields_set: set[str]) -> PacketEnvelope:
    """The model of ``values`` (every field, in order), as pydantic's ``model_construct`` leaves it."""
    envelope = _new(PacketEnvelope)
    _set(envelope, "__dict__", values)
    _set(envelope, "__pydantic_fields_set__", fields_set)
    _set(envelope, "__pydantic_extra__", None)
    _set(envelope, "__pydantic_private__", None)
    return envelope


def _wire_time(value: Any) -> datetime | None:
    """The aware datetime of a time in L9's ISO-8601 form; None for anything else."""
    if type(value) is not str or _ISO_TIME(value) is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:  # e.g. month 13: pydantic says why
        return None


_EVERY_FIELD = frozenset(FIELDS)


def from_wire(values: list[Any], signature: str | None) -> PacketEnvelope | None:
    """The envelope of an ``env`` array (the signed fields in order) and its signature,
    or None when one value needs pydantic's look."""
    (
        specversion,
        eid,
        source,
        type_,
        subject,
        time,
        datacontenttype,
        dataschema,
        kind,
        correlation_id,
        causation_id,
        in_reply_to,
        reply_to,
        sequence,
        traceparent,
        tracestate,
        expires_at,
        auth,
        key_id,
        data,
    ) = values
    if not (
        type(specversion) is str
        and specversion == "1.0"
        and type(eid) is str
        and _uuid(eid) is not None
        and _matches(source, _good_sources, _source)
        and _matches(type_, _good_types, _type)
        and type(datacontenttype) is str
        and type(kind) is str
        and kind in _KINDS
        and type(correlation_id) is str
        and correlation_id
        and type(sequence) is int
        and sequence >= 0
        and type(data) is dict
    ):
        return None
    for text in (subject, dataschema, causation_id, in_reply_to, reply_to, traceparent, tracestate):
        if text is not None and type(text) is not str:
            return None
    for text in (auth, key_id, signature):
        if text is not None and type(text) is not str:
            return None
    for key in data:
        if type(key) is not str:
            return None
    when = _wire_time(time)
    if when is None:
        return None
    if expires_at is not None:
        expires_at = _wire_time(expires_at)
        if expires_at is None:
            return None
    return _built(
        {
            "specversion": specversion,
            "id": eid,
            "source": source,
            "type": type_,
            "subject": subject,
            "time": when,
            "datacontenttype": datacontenttype,
            "dataschema": dataschema,
            "kind": kind,
            "correlation_id": correlation_id,
            "causation_id": causation_id,
            "in_reply_to": in_reply_to,
            "reply_to": reply_to,
            "sequence": sequence,
            "traceparent": traceparent,
            "tracestate": tracestate,
            "expires_at": expires_at,
            "auth": auth,
            "key_id": key_id,
            "signature": signature,
            "data": data,  # msgpack made it for this envelope alone
        },
        set(_EVERY_FIELD),
    )
