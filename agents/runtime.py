"""What a running agent is connected to: Redis, keys, signing, publishing."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from bus import DEFAULT_TOPOLOGY, Keys, Publisher, Topology
from bus.connection import RedisClient
from envelope import PayloadRegistry, Signer, Verifier, registry


@dataclass
class Runtime:
    redis: RedisClient
    keys: Keys
    signer: Signer
    verifier: Verifier
    agent: str
    instance: str
    topology: Topology = DEFAULT_TOPOLOGY
    types: PayloadRegistry = registry
    #: Replicas that must acknowledge a publish (``bus.Publisher``; ``L9_PUBLISH_REPLICAS``).
    replicas: int = 0
    _sequence: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.publisher = Publisher(self.redis, self.keys, self.signer, self.topology, replicas=self.replicas)

    @property
    def source(self) -> str:
        return f"agent://{self.agent}/{self.instance}"

    def next_sequence(self) -> int:
        return next(self._sequence)
