"""``l9 health AGENT``: is at least one consumer of that agent alive? (compose health checks)

A consumer is alive while its heartbeat key ``<ns>:hb:<agent>-<n>`` exists: the
delivery loop refreshes it every ``L9_HEARTBEAT_MS`` with a TTL of three beats
(``bus/maintenance.py``), so an existing key is a fresh beat. Consumer names are
claimed lowest-free first (``agent-0``, ``agent-1``, ...), so the names
``agent-0`` .. ``agent-<candidates - 1>`` hold every consumer of any deployment
of fewer processes than that; ``--instance`` names more (``agent run --instance``).

One pipelined EXISTS per check: it needs nothing but ``EXISTS`` on the agent's
own heartbeat keys, which the agent's Redis user (``l9 acl render``) is granted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from redis.exceptions import RedisError

from bus import ClusterMode, Keys, open_client
from bus.connection import RedisClient
from l9.devstack import EmbeddedStack
from l9.settings import Settings

#: How many lowest-numbered consumer names are probed.
CANDIDATES = 256
#: Seconds to connect and to answer: a health check must fail fast, never hang.
TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Health:
    agent: str
    healthy: bool
    #: Names of the consumers with a live heartbeat.
    live: tuple[str, ...]
    #: One line saying why (shown by ``l9 health``).
    reason: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def candidate_names(agent: str, instances: Sequence[str] = (), candidates: int = CANDIDATES) -> list[str]:
    """The consumer names probed: ``agent-0`` .. ``agent-<candidates-1>``, then ``agent-<instance>``."""
    names = [f"{agent}-{n}" for n in range(candidates)]
    names += [f"{agent}-{i}" for i in instances if f"{agent}-{i}" not in names]
    return names


async def live_consumers(redis: RedisClient, keys: Keys, names: Sequence[str]) -> tuple[str, ...]:
    """Those of ``names`` whose heartbeat key exists, in one round trip."""
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.exists(keys.heartbeat(name))
    found = await pipe.execute()
    return tuple(name for name, exists in zip(names, found, strict=True) if exists)


def judge(agent: str, live: Sequence[str], minimum: int, keys: Keys) -> Health:
    """Healthy when at least ``minimum`` consumers beat."""
    if len(live) >= minimum:
        shown = ", ".join(live[:8]) + (f", ... ({len(live)} in all)" if len(live) > 8 else "")
        return Health(agent, True, tuple(live), f"{agent}: {len(live)} live consumer(s): {shown}")
    pattern = keys.heartbeat(f"{agent}-*")
    if not live:
        return Health(agent, False, (), f"{agent}: no live consumer (no heartbeat key {pattern})")
    return Health(
        agent, False, tuple(live), f"{agent}: {len(live)} live consumer(s), fewer than {minimum} ({pattern})"
    )


async def check_health(
    redis_url: str,
    keys: Keys,
    agent: str,
    *,
    minimum: int = 1,
    instances: Sequence[str] = (),
    timeout_s: float = TIMEOUT_S,
    cluster: ClusterMode = "auto",
) -> Health:
    """The health of ``agent``; an unreachable or refusing Redis is unhealthy, with the reason."""
    redis: RedisClient | None = None
    try:
        redis = await open_client(
            redis_url, cluster=cluster, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        live = await live_consumers(redis, keys, candidate_names(agent, instances))
    except (RedisError, OSError) as exc:
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        return Health(agent, False, (), f"{agent}: cannot read heartbeats from Redis: {first_line}")
    finally:
        if redis is not None:
            await redis.aclose()
    return judge(agent, live, minimum, keys)


def embedded_redis_url(settings: Settings) -> str | None:
    """The embedded stack's Redis URL if it is running (a health check never starts it)."""
    status = EmbeddedStack(settings.home_dir).status()["redis"]
    url = status.get("url") if isinstance(status, dict) else None
    return str(url) if url else None


async def health_of(
    settings: Settings, agent: str, *, minimum: int = 1, instances: Sequence[str] = ()
) -> Health:
    """``check_health`` on the configured Redis (``REDIS_URL``, else a running embedded stack)."""
    url = settings.redis_url or embedded_redis_url(settings)
    if url is None:
        reason = f"{agent}: REDIS_URL is not set and the embedded stack is not running"
        return Health(agent, False, (), reason)
    return await check_health(
        url,
        Keys(settings.namespace),
        agent,
        minimum=minimum,
        instances=instances,
        cluster=settings.redis_cluster,
    )
