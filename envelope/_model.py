"""PacketEnvelope: the CloudEvents-compatible message every agent exchanges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import uuid_utils
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

Kind = Literal["event", "request", "response", "error", "control"]

TYPE_PATTERN = r"^l9(\.[a-z0-9_]+)+\.v[0-9]+$"
SOURCE_PATTERN = r"^agent://[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-@#:]+$"
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def new_id() -> str:
    """A UUIDv7: unique, and ordered by creation time."""
    return str(uuid_utils.uuid7())


def utcnow() -> datetime:
    return datetime.now(UTC)


class PacketEnvelope(BaseModel):
    """One message on the bus. Immutable: decisions about it are new envelopes.

    ``id`` is the dedup key and stays the same on every retry; ``correlation_id``
    names the run, ``causation_id`` the envelope that caused this one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=new_id, pattern=UUID_PATTERN)
    source: str = Field(pattern=SOURCE_PATTERN)
    type: str = Field(pattern=TYPE_PATTERN)
    subject: str | None = None
    time: AwareDatetime = Field(default_factory=utcnow)
    datacontenttype: str = "application/json"
    dataschema: str | None = None
    kind: Kind = "event"
    correlation_id: str = Field(min_length=1)
    causation_id: str | None = None
    in_reply_to: str | None = None
    reply_to: str | None = None
    sequence: int = Field(default=0, ge=0)
    traceparent: str | None = None
    tracestate: str | None = None
    expires_at: AwareDatetime | None = None
    auth: str | None = None
    key_id: str | None = None
    signature: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def new(
        cls,
        *,
        type: str,
        source: str,
        data: dict[str, Any] | None = None,
        correlation_id: str | None = None,
        ttl: timedelta | None = None,
        **fields: Any,
    ) -> PacketEnvelope:
        """A fresh envelope; a root envelope (no correlation id) starts its own run.

        Values that are plainly valid are not validated a second time (``envelope._fast``);
        anything else goes through pydantic and its errors."""
        eid = new_id()
        now = utcnow()
        expires = now + ttl if ttl is not None else fields.pop("expires_at", None)
        data = data or {}
        correlation_id = correlation_id or eid
        dataschema = fields.pop("dataschema", f"urn:l9:schema:{type}")
        if cls is PacketEnvelope:
            envelope = _fast.fresh(eid, now, type, source, data, correlation_id, expires, dataschema, fields)
            if envelope is not None:
                return envelope
        return cls(
            id=eid,
            type=type,
            source=source,
            time=now,
            data=data,
            correlation_id=correlation_id,
            expires_at=expires,
            dataschema=dataschema,
            **fields,
        )

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and (now or utcnow()) >= self.expires_at


#: Field order of the envelope; the canonical (signed) form follows it.
FIELDS: tuple[str, ...] = tuple(PacketEnvelope.model_fields)

from . import _fast  # noqa: E402 -- it needs the model above
