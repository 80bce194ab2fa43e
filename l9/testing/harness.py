"""An agent class run in the test's own process, on the real Redis: publish to it, await
what it emits.

    async with run_agents(SquarerAgent, settings=settings) as h:
        await h.publish(Task(n=3))
        got = await h.expect(Result)          # Arrival[Result]: stream, entry id, envelope, payload
        assert got.payload.square == 9

Each agent is served as ``l9 agent run`` serves it (``l9.start``): a consumer of its
group on the streams it consumes, the settings' delivery policy (retries, delivery
cap, dead letters, window of handled ids), the policy file's signer table and rate
limits; only the process around it (signals, admin port) is left out. Whatever lands
on any stream of the namespace is collected as an :class:`Arrival`; :meth:`expect`
waits for one of a type, and past its timeout fails with every envelope that did
arrive (type, id, stream, source), the dead letters and the handler errors still
being retried. :mod:`l9.testing.memory` runs the same harness without servers.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Generic, TypeVar, overload

import anyio

from agents.base import Agent
from agents.runner import load_agent
from agents.runtime import Runtime
from bus import DeliveryPolicy, Keys, Publisher, RpcClient, RpcTimeout, StreamConsumer, as_text, open_client
from bus.connection import RedisClient
from bus.index import known_streams
from envelope import (
    EnvelopeError,
    PacketEnvelope,
    Payload,
    PayloadRegistry,
    Signer,
    Verifier,
    decode_envelope,
)
from envelope import registry as default_registry
from governance import RateLimitGate, load_policy_file, load_signer_acl
from l9.dead import DeadLetter, list_dead
from l9.devstack import resolve_endpoints
from l9.settings import Settings
from l9.start import AgentEndpoints, build_agent

P = TypeVar("P", bound=Payload)
#: An agent to run: its class, or a built-in name (``"sympy"``) or ``module:Class``.
AgentSpec = type[Agent] | str
#: How an agent is made from its runtime (default: ``l9.start.build_agent``, as ``l9 agent run``).
Build = Callable[[type[Agent], Runtime], Agent]
#: Default seconds :meth:`AgentHarness.expect` and :meth:`AgentHarness.call` wait: they only
#: catch a hang (on a loaded two-core machine an agent may take seconds to answer).
DEFAULT_TIMEOUT_S = 60.0
POLL_S = 0.05
SOURCE = "agent://test/harness"


class HarnessTimeout(AssertionError):
    """What a test awaited did not arrive in time; the message lists what did."""


class HandlerFailed(AssertionError):
    """A handler raised (in memory mode, where nothing is retried); the original is the cause."""


@dataclass(frozen=True)
class Arrival(Generic[P]):
    """One envelope found on a stream of the namespace. ``problem`` says why ``payload`` is
    empty: its type is registered in no module this process imported, or its data fails the
    model (the envelope itself decoded and its signature verified)."""

    stream: str
    entry_id: str
    envelope: PacketEnvelope
    payload: P
    problem: str | None = None

    def line(self) -> str:
        e = self.envelope
        note = f"  [{self.problem}]" if self.problem else ""
        return f"{e.type}  {e.id}  on {self.stream}  from {e.source}{note}"


@dataclass
class _Failure:
    """A handler failure the memory mode reports at the next expect/call."""

    what: str
    error: BaseException


@dataclass
class AgentHarness:
    """Publishing to the agents under test and awaiting what they emit (see the module doc)."""

    redis: RedisClient
    keys: Keys
    signer: Signer
    verifier: Verifier
    #: The streams the agents under test consume (their dead letters and error notes are shown
    #: when an expectation times out).
    consumed: tuple[str, ...] = ()
    types: PayloadRegistry = default_registry
    source: str = SOURCE
    #: Every envelope seen on the namespace's streams, in the order found.
    arrivals: list[Arrival[Payload]] = field(default_factory=list)
    #: Entries that did not decode or verify: ``stream entry-id: reason``.
    unreadable: list[str] = field(default_factory=list)
    failures: list[_Failure] = field(default_factory=list)
    _last: dict[str, str] = field(default_factory=dict)
    _taken: set[tuple[str, str]] = field(default_factory=set)
    _failed: anyio.Event = field(default_factory=anyio.Event)

    def __post_init__(self) -> None:
        self.publisher = Publisher(self.redis, self.keys, self.signer)

    # -- sending ------------------------------------------------------------------------------
    async def publish(
        self,
        message: Payload | PacketEnvelope,
        *,
        stream: str | None = None,
        correlation_id: str | None = None,
        **fields: Any,
    ) -> PacketEnvelope:
        """Sign and publish a payload (as ``agent://test/harness``, a new run unless
        ``correlation_id``) or a ready envelope, on its type's stream unless ``stream``."""
        if isinstance(message, PacketEnvelope):
            envelope = message
        else:
            envelope = PacketEnvelope.new(
                type=self.types.type_of(type(message)),
                source=self.source,
                data=message.model_dump(mode="json"),
                correlation_id=correlation_id,
                **fields,
            )
        await self.publisher.publish(envelope, stream)
        return envelope

    async def call(
        self,
        request: Payload,
        reply: type[P],
        *,
        within: float = DEFAULT_TIMEOUT_S,
        stream: str | None = None,
    ) -> tuple[PacketEnvelope, P]:
        """Send ``request`` as an RPC request and await its reply, which must be a ``reply``.
        An error reply raises ``bus.RemoteError``; none ``within`` seconds, HarnessTimeout."""
        type_ = self.types.type_of(type(request))
        got: tuple[PacketEnvelope, Payload] | None = None
        error: Exception | None = None
        async with (
            RpcClient(self.redis, self.publisher, self.verifier, types=self.types) as rpc,
            anyio.create_task_group() as tg,  # a failed handler (memory mode) ends the wait
        ):
            tg.start_soon(self._cancel_on_failure, tg.cancel_scope)
            try:
                got = await rpc.call(request, source=self.source, deadline_s=within, stream=stream)
            except RpcTimeout:
                pass
            except Exception as exc:  # raised as it is, outside the task group
                error = exc
            tg.cancel_scope.cancel()
        self._raise_failure()
        if error is not None:
            raise error
        if got is None:
            raise HarnessTimeout(await self.report(f"no reply to {type_} within {within:g}s"))
        envelope, payload = got
        if not isinstance(payload, reply):
            raise AssertionError(
                f"expected {self.types.type_of(reply)} in reply to {type_}, got {envelope.type}"
            )
        return envelope, payload

    # -- awaiting -----------------------------------------------------------------------------
    @overload
    async def expect(
        self,
        what: type[P],
        *,
        where: Callable[[Arrival[P]], bool] | None = None,
        stream: str | None = None,
        within: float = DEFAULT_TIMEOUT_S,
    ) -> Arrival[P]: ...

    @overload
    async def expect(
        self,
        what: str,
        *,
        where: Callable[[Arrival[Payload]], bool] | None = None,
        stream: str | None = None,
        within: float = DEFAULT_TIMEOUT_S,
    ) -> Arrival[Payload]: ...

    async def expect(
        self,
        what: type[Any] | str,
        *,
        where: Callable[[Any], bool] | None = None,
        stream: str | None = None,
        within: float = DEFAULT_TIMEOUT_S,
    ) -> Arrival[Any]:
        """The first arrival not yet returned by an ``expect`` whose type is ``what`` (a payload
        model, or a type glob such as ``"l9.sympy.*"``), on ``stream`` if given, for which
        ``where`` holds if given; HarnessTimeout if none came ``within`` seconds, listing what did."""
        pattern = what if isinstance(what, str) else self.types.type_of(what)
        deadline = time.monotonic() + within
        while True:
            self._raise_failure()
            await self.poll()
            for arrival in self.arrivals:
                at = (arrival.stream, arrival.entry_id)
                if (
                    at not in self._taken
                    and fnmatchcase(arrival.envelope.type, pattern)
                    and (stream is None or arrival.stream == stream)
                    and (where is None or where(arrival))
                ):
                    self._taken.add(at)
                    return arrival
            if time.monotonic() > deadline:
                where_ = f" on {stream}" if stream else ""
                raise HarnessTimeout(await self.report(f"no {pattern}{where_} within {within:g}s"))
            with anyio.move_on_after(POLL_S):
                await self._failed.wait()

    async def arrived(
        self, what: type[Payload] | str = "*", *, stream: str | None = None
    ) -> list[Arrival[Payload]]:
        """Every envelope arrived so far (collected now) whose type is ``what`` (a payload model or
        a type glob), on ``stream`` if given, in the order found."""
        pattern = what if isinstance(what, str) else self.types.type_of(what)
        await self.poll()
        return [
            a
            for a in self.arrivals
            if fnmatchcase(a.envelope.type, pattern) and (stream is None or a.stream == stream)
        ]

    async def expect_dead_letter(
        self, what: type[Payload] | str, *, within: float = DEFAULT_TIMEOUT_S
    ) -> DeadLetter:
        """The first dead letter of type ``what`` on a stream the agents consume (after their
        delivery cap, or refused at once); HarnessTimeout if none came ``within`` seconds."""
        pattern = what if isinstance(what, str) else self.types.type_of(what)
        deadline = time.monotonic() + within
        while True:
            for letter in await self.dead_letters():
                if fnmatchcase(letter.type, pattern):
                    return letter
            if time.monotonic() > deadline:
                raise HarnessTimeout(await self.report(f"no dead letter of {pattern} within {within:g}s"))
            await anyio.sleep(POLL_S)

    async def dead_letters(self) -> list[DeadLetter]:
        """The dead letters of the streams the agents consume, stream by stream, oldest first."""
        return [d for name in self.consumed for d in await list_dead(self.redis, self.keys, name, 1000)]

    async def poll(self) -> None:
        """Collect what arrived on the namespace's streams since the last poll."""
        for name in sorted(await known_streams(self.redis, self.keys)):
            last = self._last.get(name)
            reply: Any = await self.redis.xrange(self.keys.stream(name), f"({last}" if last else "-", "+")
            for entry_id, fields in reply:  # (id, fields) of entries that exist: never (None, None)
                self._last[name] = as_text(entry_id)
                self._collect(name, as_text(entry_id), fields)

    def _collect(self, stream: str, entry_id: str, fields: Any) -> None:
        try:
            envelope = decode_envelope(fields, self.verifier)
        except EnvelopeError as exc:
            self.unreadable.append(f"{stream} {entry_id}: {exc}")
            return
        try:
            payload, problem = self.types.load(envelope), None
        except EnvelopeError as exc:
            payload, problem = Payload(), str(exc)
        self.arrivals.append(Arrival(stream, entry_id, envelope, payload, problem))

    # -- failures -----------------------------------------------------------------------------
    def failed(self, what: str, error: BaseException) -> None:
        """Record a handler failure (memory mode): the next expect or call raises it."""
        self.failures.append(_Failure(what, error))
        self._failed.set()

    def _raise_failure(self) -> None:
        if self.failures:
            first = self.failures.pop(0)
            if not self.failures:
                self._failed = anyio.Event()
            raise HandlerFailed(first.what) from first.error

    async def _cancel_on_failure(self, scope: anyio.CancelScope) -> None:
        await self._failed.wait()
        scope.cancel()

    async def report(self, headline: str) -> str:
        """``headline``, then every envelope that arrived, the unreadable entries, the dead
        letters and the handler errors still being retried: the message of a timeout."""
        await self.poll()
        lines = [f"{headline}; {len(self.arrivals)} envelope(s) did arrive" + (":" if self.arrivals else "")]
        lines += [f"  {a.line()}" for a in self.arrivals]
        if self.unreadable:
            lines += ["unreadable entries:", *(f"  {u}" for u in self.unreadable)]
        dead = await self.dead_letters()
        if dead:
            lines.append("dead letters:")
            lines += [f"  {d.type}  {d.envelope_id}  on {d.stream}: {d.reason}: {d.detail}" for d in dead]
        errors = await self._retried_errors()
        if errors:
            lines += ["handler errors (being retried):", *(f"  {e}" for e in errors)]
        return "\n".join(lines)

    async def _retried_errors(self) -> list[str]:
        out = []
        for name in self.consumed:
            notes = await self.redis.hgetall(self.keys.errors(name))
            out += [f"{name} entry {as_text(k)}: {as_text(v)}" for k, v in notes.items()]
        return out


def resolve_agents(agents: Sequence[AgentSpec]) -> list[type[Agent]]:
    """Agent classes from classes, built-in names and ``module:Class`` specs."""
    if not agents:
        raise ValueError("name at least one agent to run")
    return [load_agent(a) if isinstance(a, str) else a for a in agents]


def runtime_of(
    cls: type[Agent], redis: RedisClient, keys: Keys, settings: Settings, instance: str
) -> Runtime:
    return Runtime(
        redis=redis,
        keys=keys,
        signer=settings.signer(),
        verifier=settings.verifier(),
        agent=cls.name,
        instance=instance,
    )


def _consumer(agent: Agent, settings: Settings, policy: DeliveryPolicy) -> StreamConsumer:
    """The agent's consumer as ``l9.start.run_agent`` builds it (signer table, rate limits)."""
    rt = agent.runtime
    acl = load_signer_acl(settings.policy_file)
    limits = () if agent.checks_own_rate_limits else load_policy_file(settings.policy_file).rate_limits
    gate = RateLimitGate(rt.redis, rt.keys, limits, rt.publisher, source=rt.source)
    return StreamConsumer(
        rt.redis,
        rt.keys,
        group=agent.name,
        consumer=rt.instance,
        streams=agent.consumes,
        handler=agent.handle,
        verifier=rt.verifier,
        policy=policy,
        authorize=acl.authorize if acl is not None else None,
        middlewares=[gate] if gate.limits else [],
    )


@asynccontextmanager
async def run_agents(
    *agents: AgentSpec,
    settings: Settings,
    policy: DeliveryPolicy | None = None,
    build: Build | None = None,
) -> AsyncIterator[AgentHarness]:
    """Serve ``agents`` in this process on the servers of ``settings`` (its namespace, keys and
    delivery policy unless ``policy``) until the block ends; then they drain and stop. An
    exception of the block is raised as it is, once they stopped."""
    classes = resolve_agents(agents)
    endpoints = resolve_endpoints(settings)
    policy = policy or settings.delivery_policy()
    redis = await open_client(endpoints.redis_url, cluster=settings.redis_cluster)
    keys = Keys(settings.namespace)
    consumed = tuple(dict.fromkeys(s for cls in classes for s in cls.consumes))
    harness = AgentHarness(redis, keys, settings.signer(), settings.verifier(), consumed)
    made = build or (
        lambda cls, rt: build_agent(
            cls, rt, settings, AgentEndpoints(endpoints.redis_url, endpoints.database_url)
        )
    )
    started: list[Agent] = []
    failure: Exception | None = None
    try:
        for cls in classes:
            agent = made(cls, runtime_of(cls, redis, keys, settings, f"{cls.name}-harness"))
            await agent.on_start()
            started.append(agent)
        async with anyio.create_task_group() as tg:
            consumers = [_consumer(agent, settings, policy) for agent in started]
            for consumer in consumers:
                tg.start_soon(consumer.run)
                await consumer.wait_started()
            try:
                yield harness
            except Exception as exc:  # the test's own failure: raised as it is once the agents stopped
                failure = exc
            finally:
                for consumer in consumers:
                    consumer.stop()
    finally:
        with anyio.CancelScope(shield=True):
            for agent in started:
                await agent.on_stop()
            await redis.aclose()
    if failure is not None:
        raise failure
