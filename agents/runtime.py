"""What a running agent is connected to: Redis, keys, signing, publishing."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from bus import DEFAULT_TOPOLOGY, Keys, Publisher, Topology
from envelope import PayloadRegistry, Signer, Verifier, registry


@dataclass
class Runtime:
    redis: aioredis.Redis
    keys: Keys
    signer: Signer
    verifier: Verifier
    agent: str
    instance: str
    topology: Topology = DEFAULT_TOPOLOGY
    types: PayloadRegistry = registry
    _sequence: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.publisher = Publisher(self.redis, self.keys, self.signer, self.topology)

    @property
    def source(self) -> str:
        return f"agent://{self.agent}/{self.instance}"

    def next_sequence(self) -> int:
        return next(self._sequence)
