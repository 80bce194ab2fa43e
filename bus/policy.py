"""Retries, timeouts and bounds of the delivery loop, as data."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeliveryPolicy:
    """How one consumer reads, retries and gives up.

    ``max_in_flight`` bounds entries read but not yet acked (COUNT never exceeds
    the free slots); ``concurrency`` is how many handlers run at once.

    ``dedupe_window_s``: how long the per-entry loop remembers, per stream and group, the
    envelope ids it handled, so that another entry of one of them is acked unhandled
    (``bus.dedupe``); 0 turns the window off (every entry is handled). The batch loop
    (``bus.batch``) has none: its handlers dedupe in their own store.
    """

    max_in_flight: int = 256
    concurrency: int = 16
    block_ms: int = 1000
    max_deliveries: int = 5
    retry_backoff_ms: int = 200
    retry_backoff_max_ms: int = 30_000
    lease_ms: int = 30_000
    heartbeat_ms: int = 2_000
    drain_timeout_s: float = 10.0
    dedupe_window_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.max_in_flight < self.concurrency:
            raise ValueError(
                f"need 1 <= concurrency ({self.concurrency}) <= max_in_flight ({self.max_in_flight})"
            )
        if self.max_deliveries < 1:
            raise ValueError("max_deliveries must be >= 1")
        if self.heartbeat_ms * 2 >= self.lease_ms:
            raise ValueError("heartbeat_ms must be under half of lease_ms")
        if not self.dedupe_window_s >= 0:  # NaN too
            raise ValueError(f"dedupe_window_s must be >= 0 (0: no window), not {self.dedupe_window_s}")

    def backoff_ms(self, deliveries: int) -> int:
        """Wait before delivery ``deliveries + 1``: exponential, capped."""
        return int(min(self.retry_backoff_max_ms, self.retry_backoff_ms * 2 ** max(0, deliveries - 1)))

    @property
    def scan_interval_s(self) -> float:
        """How often own pending entries are looked at for retry."""
        return min(1.0, max(0.05, self.retry_backoff_ms / 2000))

    @property
    def heartbeat_ttl_ms(self) -> int:
        """A consumer whose heartbeat key is older than this is presumed dead."""
        return self.heartbeat_ms * 3
