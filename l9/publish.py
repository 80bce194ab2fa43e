"""``l9 publish TYPE JSON``: one envelope, its payload checked against the registry, signed.

Every payload type of L9 is known (``l9.asyncapi.load_payload_modules``), and those of the
modules named by ``--import`` (an agent of your own). What is refused is refused before
anything is sent, in one line naming what is wrong (:class:`PublishError`): JSON that does
not parse (with its line and column), a type no model is registered for, data that fails
the model (each field at fault, with what is wrong), a stream name Redis keys cannot hold.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from bus import Keys, Publisher, check_stream_name, open_client
from envelope import PacketEnvelope, Payload, PayloadRegistry, registry, split_type
from l9.asyncapi import load_payload_modules
from l9.devstack import resolve_endpoints
from l9.settings import Settings

_SOURCE_SAFE = re.compile(r"[^A-Za-z0-9_.\-@#:]")
#: Fields of a payload named one by one in the error; the rest are counted.
FIELDS_LISTED = 3


class PublishError(ValueError):
    """The envelope cannot be published as asked: the message says what and where."""


def import_modules(names: Iterable[str]) -> None:
    """Import the modules declaring payloads of one's own (``--import``)."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # any error of the user's module, said in one line
            raise PublishError(f"--import {name}: {type(exc).__name__}: {exc}") from None


def parse_data(text: str) -> dict[str, Any]:
    """The payload's JSON object; PublishError with the line and column of bad JSON."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PublishError(f"bad JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise PublishError(f"the payload must be a JSON object, not {type(data).__name__}")
    return data


def model_for(type_: str, types: PayloadRegistry = registry) -> type[Payload]:
    """The payload model of ``type_``; PublishError naming the type (and the known ones of its area)."""
    try:
        name, _ = split_type(type_)
    except ValueError as exc:
        raise PublishError(str(exc)) from None
    if type_ in types:
        return types.model_for(type_)
    prefix = ".".join(name.split(".")[:2]) + "."
    near = [t for t, _ in types if t.startswith(prefix)]
    hint = (
        f"; known in {prefix[:-1]}: {', '.join(near)}" if near else "; --import the module that declares it"
    )
    raise PublishError(f"unknown type {type_!r}: no payload model is registered for it{hint}")


def validated(type_: str, data: dict[str, Any], types: PayloadRegistry = registry) -> Payload:
    """``data`` through the model of ``type_``; PublishError naming each field at fault."""
    model = model_for(type_, types)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise PublishError(f"{type_}: {_problems(exc)}") from None


def _problems(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    parts = []
    for error in errors[:FIELDS_LISTED]:
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        got = error.get("input")
        shown = f" (got {got!r})" if isinstance(got, str | int | float | bool) else ""
        parts.append(f"field {where!r}: {error['msg']}{shown}")
    more = len(errors) - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def envelope_of(type_: str, text: str, *, source: str, types: PayloadRegistry = registry) -> PacketEnvelope:
    """The envelope ``l9 publish TYPE JSON`` sends: its payload validated, a new run."""
    payload = validated(type_, parse_data(text), types)
    return PacketEnvelope.new(type=type_, source=source, data=payload.model_dump(mode="json"))


def source_of(who: str) -> str:
    """``agent://l9-publish/<who>``, ``who`` made fit for a source."""
    return f"agent://l9-publish/{_SOURCE_SAFE.sub('_', who) or 'cli'}"


def checked_stream(name: str | None) -> str | None:
    if name is None:
        return None
    try:
        return check_stream_name(name)
    except ValueError as exc:
        raise PublishError(f"--stream: {exc}") from None


def prepare(
    type_: str, text: str, *, stream: str | None, imports: Iterable[str], source: str
) -> tuple[PacketEnvelope, str | None]:
    """Everything checked, nothing sent: the envelope and the stream asked for."""
    where = checked_stream(stream)
    load_payload_modules()
    import_modules(imports)
    return envelope_of(type_, text, source=source), where


async def publish(settings: Settings, envelope: PacketEnvelope, stream: str | None) -> tuple[str, str]:
    """Sign and append ``envelope``; the stream it went to and its entry id."""
    url = settings.redis_url or resolve_endpoints(settings).redis_url  # no database needed
    redis = await open_client(url, cluster=settings.redis_cluster)
    try:
        publisher = Publisher(
            redis, Keys(settings.namespace), settings.signer(), replicas=settings.publish_replicas
        )
        entry = await publisher.publish(envelope, stream)
        return stream or publisher.stream_of(envelope), entry
    finally:
        await redis.aclose()
