"""``l9 health AGENT``: is at least one consumer of that agent alive? (compose health checks)

A consumer is alive while its heartbeat key ``<ns>:hb:<agent>-<n>`` exists: the
delivery loop refreshes it every ``L9_HEARTBEAT_MS`` with a TTL of three beats
(``bus/maintenance.py``), so an existing key is a fresh beat. Consumer names are
claimed lowest-free first (``agent-0``, ``agent-1``, ...), so the names
``agent-0`` .. ``agent-<candidates - 1>`` hold every consumer of any deployment
of fewer processes than that; ``--instance`` names more (``agent run --instance``).

One pipelined EXISTS per check: it needs nothing but ``EXISTS`` on the agent's
own heartbeat keys, which the agent's Redis user (``l9 acl render``) is granted.

Compose runs it every few seconds in every agent's container, so it loads little: the
console script (``l9.entry``) calls :func:`main` before the CLI, the settings model or the
bus package is imported, and this module imports only the standard library and redis-py.
So it reads the four settings it needs itself (:meth:`Target.from_env`, kept equal to
:meth:`Target.of` the settings by the tests) and spells the heartbeat key as ``bus.keys``
does (:class:`Heartbeats`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError, ResponseError

if TYPE_CHECKING:
    from l9.settings import Settings

#: How many lowest-numbered consumer names are probed.
CANDIDATES = 256
#: Seconds to connect and to answer: a health check must fail fast, never hang.
TIMEOUT_S = 2.0
AGENT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
#: ``Settings.namespace``'s pattern (matched whole).
NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ClusterMode = Literal["auto", "yes", "no"]
_CLUSTER_MODES: tuple[ClusterMode, ...] = ("auto", "yes", "no")


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


class HeartbeatKeys(Protocol):
    """What names a consumer's heartbeat key (``bus.Keys``, :class:`Heartbeats`)."""

    def heartbeat(self, consumer: str) -> str: ...


@dataclass(frozen=True)
class Heartbeats:
    """The heartbeat keys of ``namespace``, named as ``bus.keys.Keys.heartbeat`` names them."""

    namespace: str

    def heartbeat(self, consumer: str) -> str:
        return f"{self.namespace}:hb:{consumer}"


@dataclass(frozen=True)
class Target:
    """What ``l9 health`` reads of the settings: the Redis (None: the embedded stack's), the
    namespace, the cluster mode and the home of the embedded stack."""

    redis_url: str | None
    namespace: str = "l9"
    cluster: ClusterMode = "auto"
    home: Path = Path(".l9")

    @classmethod
    def of(cls, settings: Settings) -> Target:
        return cls(settings.redis_url or None, settings.namespace, settings.redis_cluster, settings.home_dir)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Target:
        """The same values as :meth:`of` from the environment, as ``Settings`` reads it (names
        in any case, ``REDIS_URL`` before ``L9_REDIS_URL``); ValueError for a value it refuses."""
        env = {name.upper(): value for name, value in environ.items()}
        url = env["REDIS_URL"] if "REDIS_URL" in env else env.get("L9_REDIS_URL")
        namespace = env.get("L9_NAMESPACE", "l9")
        if not NAMESPACE.fullmatch(namespace):
            raise ValueError(f"L9_NAMESPACE {namespace!r} is not 1-64 of A-Z, a-z, 0-9, '_', '.', '-'")
        cluster = env.get("L9_REDIS_CLUSTER", "auto")
        if cluster not in _CLUSTER_MODES:
            raise ValueError(f"L9_REDIS_CLUSTER {cluster!r} is not one of {', '.join(_CLUSTER_MODES)}")
        home = Path(env.get("L9_HOME", ".l9")).expanduser().resolve()
        return cls(url or None, namespace, cluster, home)


def candidate_names(agent: str, instances: Sequence[str] = (), candidates: int = CANDIDATES) -> list[str]:
    """The consumer names probed: ``agent-0`` .. ``agent-<candidates-1>``, then ``agent-<instance>``."""
    names = [f"{agent}-{n}" for n in range(candidates)]
    names += [f"{agent}-{i}" for i in instances if f"{agent}-{i}" not in names]
    return names


async def live_consumers(
    redis: Redis | RedisCluster, keys: HeartbeatKeys, names: Sequence[str]
) -> tuple[str, ...]:
    """Those of ``names`` whose heartbeat key exists, in one round trip."""
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.exists(keys.heartbeat(name))
    found = await pipe.execute()
    return tuple(name for name, exists in zip(names, found, strict=True) if exists)


def judge(agent: str, live: Sequence[str], minimum: int, keys: HeartbeatKeys) -> Health:
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


async def _open(url: str, cluster: ClusterMode, timeout_s: float) -> Redis | RedisCluster:
    """A client of ``url``, as ``bus.connection.open_client`` picks it: a cluster client when the
    server says it is a cluster node (``CLUSTER INFO``, for ``auto``) or ``cluster`` is ``yes``."""
    options: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    if cluster == "auto":
        probe = Redis.from_url(url, **options)
        try:
            await probe.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
            cluster = "yes"
        except ResponseError as exc:
            if "cluster support disabled" not in str(exc).lower():
                raise
            cluster = "no"
        finally:
            await probe.aclose()
    if cluster == "no":
        return Redis.from_url(url, **options)
    client = RedisCluster.from_url(url, **options)
    try:
        await client.initialize()
    except BaseException:
        await client.aclose()
        raise
    return client


async def check_health(
    redis_url: str,
    keys: HeartbeatKeys,
    agent: str,
    *,
    minimum: int = 1,
    instances: Sequence[str] = (),
    timeout_s: float = TIMEOUT_S,
    cluster: ClusterMode = "auto",
) -> Health:
    """The health of ``agent``; an unreachable or refusing Redis is unhealthy, with the reason."""
    redis: Redis | RedisCluster | None = None
    try:
        redis = await _open(redis_url, cluster, timeout_s)
        live = await live_consumers(redis, keys, candidate_names(agent, instances))
    except (RedisError, OSError) as exc:
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        return Health(agent, False, (), f"{agent}: cannot read heartbeats from Redis: {first_line}")
    finally:
        if redis is not None:
            await redis.aclose()
    return judge(agent, live, minimum, keys)


def embedded_redis_url(home: Path) -> str | None:
    """The embedded stack's Redis URL if it is running (a health check never starts it)."""
    from l9.devstack import EmbeddedStack  # only without REDIS_URL: it loads the settings model

    status = EmbeddedStack(home).status()["redis"]
    url = status.get("url") if isinstance(status, dict) else None
    return str(url) if url else None


async def health_of(target: Target, agent: str, *, minimum: int = 1, instances: Sequence[str] = ()) -> Health:
    """``check_health`` on the target's Redis (``REDIS_URL``, else a running embedded stack)."""
    url = target.redis_url or embedded_redis_url(target.home)
    if url is None:
        reason = f"{agent}: REDIS_URL is not set and the embedded stack is not running"
        return Health(agent, False, (), reason)
    return await check_health(
        url,
        Heartbeats(target.namespace),
        agent,
        minimum=minimum,
        instances=instances,
        cluster=target.cluster,
    )


def report(result: Health, *, as_json: bool) -> int:
    """Print ``result`` as ``l9 health`` does (the reason on stdout when healthy, on stderr when
    not; or one JSON object on stdout) and return the exit code: 0 healthy, 1 not."""
    if as_json:
        print(json.dumps(result.to_dict()))
    else:
        print(result.reason, file=sys.stdout if result.healthy else sys.stderr)
    return 0 if result.healthy else 1


@dataclass(frozen=True)
class Request:
    """``l9 health AGENT [--min N] [--instance NAME]... [--json]``."""

    agent: str
    minimum: int = 1
    instances: tuple[str, ...] = ()
    as_json: bool = False


def parse(args: Sequence[str]) -> Request | None:
    """The request of ``args`` (what follows ``health``) when it is a plain, valid one; None for
    anything else (``--help``, a usage error), which the full CLI answers with its own words."""
    agent: str | None = None
    minimum, as_json = 1, False
    instances: list[str] = []
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        name, eq, inline = arg.partition("=")
        if name in ("--min", "--instance"):
            if not eq:
                if not rest:
                    return None
                inline = rest.pop(0)
            if name == "--instance":
                instances.append(inline)
            elif not inline.isdigit() or int(inline) < 1:
                return None
            else:
                minimum = int(inline)
        elif arg == "--json":
            as_json = True
        elif arg.startswith("-") or agent is not None or not AGENT_NAME.fullmatch(arg):
            return None
        else:
            agent = arg
    return None if agent is None else Request(agent, minimum, tuple(instances), as_json)


def main(args: Sequence[str], environ: Mapping[str, str] = os.environ) -> int | None:
    """Answer ``l9 health ARGS``: the exit code; None when the full CLI should answer instead
    (help, a usage error, a setting it refuses: its messages and exit codes are the reference)."""
    request = parse(args)
    if request is None:
        return None
    try:
        target = Target.from_env(environ)
    except ValueError:
        return None
    result = asyncio.run(
        health_of(target, request.agent, minimum=request.minimum, instances=request.instances)
    )
    return report(result, as_json=request.as_json)
