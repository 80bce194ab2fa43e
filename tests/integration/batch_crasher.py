"""A batch consumer process for crash tests: ``python -m tests.integration.batch_crasher``.

It reads stream ``test`` of ``L9_NAMESPACE`` in group ``crasher`` (consumer name
``crasher-0``, waited for while a killed predecessor's heartbeat lasts), with the delivery
policy of the ``L9_*`` settings, as every agent. Its handler counts every entry it is
handed (hash :func:`tries_key`) and commits a batch by counting each entry in hash
:func:`committed_key`, in one MULTI; a batch that holds an entry with a ``poison`` field
kills the process (SIGKILL of itself) before anything of it is committed. SIGTERM stops
it cleanly (exit 0).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence

import anyio
import structlog

from bus import BatchConsumer, ConsumerNameTaken, Entry, Keys, Rejected, claim_consumer_name, open_client
from l9.logs import configure_logging
from l9.settings import Settings
from l9.start import policy_from, stop_on_signal

GROUP = "crasher"
log = structlog.get_logger("l9.test.crasher")


def tries_key(keys: Keys) -> str:
    return f"{keys.namespace}:test:tries"


def committed_key(keys: Keys) -> str:
    return f"{keys.namespace}:test:committed"


async def main() -> None:
    settings = Settings()
    assert settings.redis_url, "REDIS_URL is required"
    redis = await open_client(settings.redis_url, cluster=settings.redis_cluster)
    keys, policy = Keys(settings.namespace), policy_from(settings)

    async def handle(batch: Sequence[Entry]) -> Sequence[Rejected]:
        ids = [e.entry_id for e in batch]
        pipe = redis.pipeline(transaction=True)
        for entry_id in ids:
            pipe.hincrby(tries_key(keys), entry_id, 1)
        await pipe.execute()
        if any(b"poison" in e.fields for e in batch):
            log.warning("crasher.poisoned", entries=len(batch), attempts=[e.attempt for e in batch])
            os.kill(os.getpid(), signal.SIGKILL)
        pipe = redis.pipeline(transaction=True)
        for entry_id in ids:
            pipe.hincrby(committed_key(keys), entry_id, 1)
        await pipe.execute()
        return []

    async def streams() -> list[str]:
        return ["test"]

    try:
        with anyio.fail_after(30):
            while True:
                try:
                    name = await claim_consumer_name(
                        redis, keys, GROUP, policy.heartbeat_ttl_ms, instance="0"
                    )
                    break
                except ConsumerNameTaken:  # the killed predecessor's heartbeat, until it expires
                    await anyio.sleep(0.05)
        consumer = BatchConsumer(
            redis,
            keys,
            group=GROUP,
            consumer=name,
            streams=streams,
            handler=handle,
            policy=policy,
            batch_size=100,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_on_signal, consumer, tg.cancel_scope)
            await consumer.run()
            tg.cancel_scope.cancel()
    finally:
        await redis.aclose()


if __name__ == "__main__":
    configure_logging(Settings().log_level, agent=GROUP)
    anyio.run(main)
