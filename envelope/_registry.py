"""Payload types: ``type`` string (``l9.<area>.<name>.v<major>``) -> pydantic model."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ._errors import EnvelopeError, ErrorReason
from ._model import TYPE_PATTERN, PacketEnvelope

_TYPE_RE = re.compile(TYPE_PATTERN)


class Payload(BaseModel):
    """Base of every payload model: immutable, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


P = TypeVar("P", bound=type[Payload])


def split_type(type_: str) -> tuple[str, int]:
    """``l9.demo.ping.v2`` -> (``l9.demo.ping``, 2)."""
    if not _TYPE_RE.fullmatch(type_):  # not .match: `$` also matches before a final "\n"
        raise ValueError(f"envelope type {type_!r} does not match l9.<area>.<name>.v<major>")
    name, _, major = type_.rpartition(".v")
    return name, int(major)


class PayloadRegistry:
    """Which pydantic model validates the ``data`` of each envelope type."""

    def __init__(self) -> None:
        self._models: dict[str, type[Payload]] = {}
        self._types: dict[type[Payload], str] = {}

    def register(self, type_: str, model: type[Payload]) -> None:
        split_type(type_)
        known = self._models.get(type_)
        if known is not None and known is not model:
            raise ValueError(f"type {type_!r} is already registered to {known.__qualname__}")
        if model in self._types and self._types[model] != type_:
            raise ValueError(f"{model.__qualname__} is already registered as {self._types[model]}")
        self._models[type_] = model
        self._types[model] = type_

    def __call__(self, type_: str) -> Callable[[P], P]:
        """Class decorator: ``@registry("l9.demo.ping.v1")``."""

        def decorate(model: P) -> P:
            self.register(type_, model)
            return model

        return decorate

    def __contains__(self, type_: object) -> bool:
        return type_ in self._models

    def __iter__(self) -> Iterator[tuple[str, type[Payload]]]:
        return iter(sorted(self._models.items()))

    def model_for(self, type_: str) -> type[Payload]:
        try:
            return self._models[type_]
        except KeyError:
            raise EnvelopeError(
                ErrorReason.UNKNOWN_TYPE, f"no payload model is registered for type {type_!r}"
            ) from None

    def type_of(self, model: type[Payload]) -> str:
        try:
            return self._types[model]
        except KeyError:
            raise LookupError(f"{model.__qualname__} is not a registered payload type") from None

    def load(self, envelope: PacketEnvelope) -> Payload:
        """The typed payload of ``envelope``; a mismatch raises EnvelopeError."""
        model = self.model_for(envelope.type)
        try:
            return model.model_validate(envelope.data)
        except ValidationError as exc:
            raise EnvelopeError(
                ErrorReason.INVALID_PAYLOAD,
                f"data does not match {envelope.type}: {_summarise(exc)}",
                envelope_id=envelope.id,
            ) from None


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


#: The process-wide registry that agents register their payloads in.
registry = PayloadRegistry()
payload = registry
