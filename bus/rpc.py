"""Request/reply over streams, with a deadline.

Each client owns a reply stream (``rpc.<client>``); a request carries its name
in ``reply_to`` and its deadline in ``expires_at``. The responder appends the
reply there; the client matches ``in_reply_to``. Replies survive a slow reader
because they sit on a stream, not a channel. Other groups (the auditor) read
reply streams too, so a closing client deletes its stream only once some
group exists there and every group has consumed it; ``l9 trim`` drops the
others when they are finished and idle
(``bus.retention.drop_finished_reply_streams``).
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

import anyio
import structlog
from anyio.streams.memory import MemoryObjectSendStream

from envelope import (
    EnvelopeError,
    PacketEnvelope,
    Payload,
    PayloadRegistry,
    Verifier,
    decode,
    new_id,
    payload,
    registry,
)

from .connection import RedisClient
from .errors import TRANSIENT, RemoteError, RpcTimeout
from .keys import RPC_PREFIX
from .publisher import Publisher
from .retention import fully_consumed

log = structlog.get_logger("l9.bus.rpc")


@payload("l9.bus.error.v1")
class ErrorReply(Payload):
    """What a responder sends (``kind="error"``) when it cannot answer."""

    error: str
    detail: str = ""


class RpcClient:
    """``await client.call(Payload(...), source=..., deadline_s=2.0)`` -> reply payload."""

    def __init__(
        self,
        redis: RedisClient,
        publisher: Publisher,
        verifier: Verifier | None,
        *,
        name: str | None = None,
        types: PayloadRegistry = registry,
    ) -> None:
        self.redis, self.publisher, self.verifier, self.types = redis, publisher, verifier, types
        self.reply_stream = f"{RPC_PREFIX}{name or new_id()}"
        self._key = publisher.keys.stream(self.reply_stream)
        self._waiting: dict[str, MemoryObjectSendStream[PacketEnvelope]] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> RpcClient:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._listen)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)
        with contextlib.suppress(*TRANSIENT):
            # Without any group yet, the auditor has not found the stream (it looks every
            # second): it stays for it, and ``l9 trim`` drops it once finished and idle.
            if await fully_consumed(self.redis, self._key, without_groups=False):
                await self.redis.delete(self._key)

    async def call(
        self,
        request: Payload,
        *,
        source: str,
        deadline_s: float,
        correlation_id: str | None = None,
        stream: str | None = None,
        **fields: Any,
    ) -> tuple[PacketEnvelope, Payload]:
        """Send ``request`` and wait for its reply; RpcTimeout past ``deadline_s`` seconds."""
        type_ = self.types.type_of(type(request))
        envelope = PacketEnvelope.new(
            type=type_,
            source=source,
            data=request.model_dump(mode="json"),
            kind="request",
            reply_to=self.reply_stream,
            correlation_id=correlation_id,
            ttl=timedelta(seconds=deadline_s),
            **fields,
        )
        send, recv = anyio.create_memory_object_stream[PacketEnvelope](1)
        self._waiting[envelope.id] = send
        try:
            await self.publisher.publish(envelope, stream)
            with anyio.move_on_after(deadline_s):
                reply = await recv.receive()
                return self._unwrap(envelope, reply)
            raise RpcTimeout(envelope.id, type_, deadline_s)
        finally:
            self._waiting.pop(envelope.id, None)
            send.close()
            recv.close()

    def _unwrap(self, request: PacketEnvelope, reply: PacketEnvelope) -> tuple[PacketEnvelope, Payload]:
        loaded = self.types.load(reply)
        if isinstance(loaded, ErrorReply):
            raise RemoteError(request.id, loaded.error, loaded.detail)
        return reply, loaded

    async def _listen(self) -> None:
        last = "0-0"
        while True:
            try:
                reply: Any = await self.redis.xread({self._key: last}, count=100, block=1000)
            except TRANSIENT as exc:
                log.warning("rpc.redis_unavailable", error=str(exc))
                await anyio.sleep(0.2)
                continue
            if not reply:
                continue
            for _key, entries in reply:
                for entry_id, fields in entries:
                    last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    self._deliver(fields)
            # The callers just woken go first; the next XREAD can wait one turn of the loop.
            await anyio.lowlevel.checkpoint()

    def _deliver(self, fields: Any) -> None:
        try:
            reply, _ = decode(fields, self.verifier, self.types)
        except EnvelopeError as exc:
            log.error("rpc.bad_reply", reason=exc.reason.value, detail=exc.detail)
            return
        waiter = self._waiting.get(reply.in_reply_to or "")
        if waiter is None:
            log.info("rpc.late_reply", in_reply_to=reply.in_reply_to)
            return
        # A duplicate reply (the request was retried) finds the waiter full or gone.
        with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            waiter.send_nowait(reply)


async def send_reply(publisher: Publisher, request: PacketEnvelope, reply: PacketEnvelope) -> str | None:
    """Append ``reply`` to the request's reply stream."""
    target = request.reply_to
    if not target or not target.startswith(RPC_PREFIX):
        log.warning("rpc.no_reply_stream", reply_to=target, request_id=request.id)
        return None
    return await publisher.publish(reply, target)
