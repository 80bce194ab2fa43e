"""``l9 asyncapi``: an AsyncAPI 3.0 document of every stream and message type, generated
from the topology and the envelope registry (so it cannot drift from the code).

Every module of ``agents``, ``bus`` and ``governance`` that declares a payload
(``@payload(...)``) is imported, so the registry holds every type. The document of a
generated ecosystem comes from the same function over :func:`generated_types`. Each type
becomes a message (its payload's JSON schema, the envelope's routing headers)
on the channel of the stream the topology routes it to; each channel gets a
``send`` and a ``receive`` operation.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bus import DEFAULT_TOPOLOGY, Keys, Topology
from envelope import PayloadRegistry, registry

ASYNCAPI_VERSION = "3.0.0"
PAYLOAD_PACKAGES = ("agents", "bus", "governance")
_MARK = "@payload("

#: The envelope fields a stream entry carries as plain fields (the rest is inside ``env``).
_HEADERS: dict[str, Any] = {
    "type": "object",
    "required": ["id", "type", "source", "correlation_id", "env"],
    "properties": {
        "id": {"type": "string", "description": "UUIDv7 of the envelope; the dedup key"},
        "type": {"type": "string", "description": "l9.<area>.<name>.v<major>"},
        "source": {"type": "string", "description": "agent://<agent>/<instance>"},
        "correlation_id": {"type": "string", "description": "the run"},
        "env": {
            "type": "string",
            "format": "binary",
            "description": "msgpack array of every envelope field but the signature (the signed bytes)",
        },
        "sig": {"type": "string", "description": "hex HMAC-SHA256 of env with the key named by key_id"},
    },
}


def load_payload_modules(packages: Iterable[str] = PAYLOAD_PACKAGES) -> list[str]:
    """Import every module of ``packages`` whose source declares a payload; their names."""
    loaded = []
    for package in packages:
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
            spec = importlib.util.find_spec(info.name)
            origin = Path(spec.origin) if spec and spec.origin else None
            if origin and origin.suffix == ".py" and _MARK in origin.read_text(encoding="utf-8"):
                importlib.import_module(info.name)
                loaded.append(info.name)
    return loaded


def generated_types(code: Path) -> PayloadRegistry:
    """The types of a generated ecosystem, each as the model it travels as (typed or open).

    ``code`` is the ``code`` folder of an extraction folder: it is put first on ``sys.path`` and
    every module under it (but ``__main__``) is imported, in the order of their names; each
    generated ``MODELS`` mapping (type -> model) is registered.
    ``build_document(generated_types(folder / "code"))`` is the ecosystem's AsyncAPI document:
    a typed type's payload schema lists its declared fields, closed.
    """
    if str(code) not in sys.path:
        sys.path.insert(0, str(code))
    types = PayloadRegistry()
    for path in sorted(code.rglob("*.py")):
        parts = path.relative_to(code).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        models = getattr(importlib.import_module(name), "MODELS", None)
        for type_, model in (models or {}).items():
            if type_ not in types:
                types.register(type_, model)
    return types


def _message_name(type_: str) -> str:
    return type_.replace(".", "_")


def build_document(
    types: PayloadRegistry = registry, topology: Topology = DEFAULT_TOPOLOGY, keys: Keys | None = None
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of every registered type on its stream."""
    keys = keys or Keys()
    by_stream: dict[str, list[str]] = {}
    messages: dict[str, Any] = {}
    for type_, model in sorted(types, key=lambda item: item[0]):
        stream = topology.stream_for(type_)
        name = _message_name(type_)
        by_stream.setdefault(stream, []).append(name)
        messages[name] = {
            "name": type_,
            "title": model.__name__,
            "summary": (model.__doc__ or type_).strip().splitlines()[0],
            "contentType": "application/json",
            "headers": _HEADERS,
            "payload": model.model_json_schema(ref_template="#/components/schemas/{model}"),
        }
    channels, operations = {}, {}
    for stream, names in sorted(by_stream.items()):
        channel = stream.replace(".", "_")
        channels[channel] = {
            "address": keys.stream(stream),
            "description": f"Redis stream of {stream!r} (dead letters: {keys.dead(stream)})",
            "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in names},
        }
        ref = {"$ref": f"#/channels/{channel}"}
        operations[f"publish_{channel}"] = {"action": "send", "channel": ref, "summary": f"XADD to {stream}"}
        operations[f"consume_{channel}"] = {
            "action": "receive",
            "channel": ref,
            "summary": f"XREADGROUP on {stream}, ack after the handler returned",
        }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "L9 bus",
            "version": _version(),
            "description": "Typed PacketEnvelopes over Redis Streams; one channel per stream.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": _definitions(messages)},
    }


def _definitions(messages: dict[str, Any]) -> dict[str, Any]:
    """Nested models (``$defs`` of each payload schema) lifted into ``components.schemas``."""
    schemas: dict[str, Any] = {}
    for message in messages.values():
        schemas.update(message["payload"].pop("$defs", {}))
    return schemas


def _version() -> str:
    try:
        return version("l9")
    except PackageNotFoundError:
        return "0.0.0"
