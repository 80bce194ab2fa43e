"""Process-wide settings of a long-running L9 process (an agent, the auditor, a projector).

A delivery loop allocates a dozen or more short-lived objects per envelope (the entry's
fields, the envelope and payload models, the delivery), so with CPython's default
thresholds (700, 10, 10) the cyclic collector runs a young collection every few dozen
envelopes and, every few thousand, a pass over the whole heap, start-up's objects
(modules, models, the policy, the registry: never garbage) included. Once the process
has started, :func:`settle_heap` freezes what exists out of every collection
(``gc.freeze``) and makes young collections rarer. Measured: about 2 us less CPU per
envelope for a StreamConsumer (docs/PERFORMANCE.md); 15-20 % of the auditor's CPU,
which holds thousands of entries in flight.
"""

from __future__ import annotations

import gc

#: Net new objects between two young collections of an agent (CPython's default: 700).
AGENT_YOUNG = 10_000
#: The auditor's: it holds a few thousand entries in flight (read ahead, being prepared,
#: being committed), each a handful of containers.
AUDITOR_YOUNG = 50_000


def settle_heap(young: int = AGENT_YOUNG, middle: int = 10, old: int = 10) -> None:
    """Call once, when start-up is over: collect, freeze what survived, and collect
    generation 0 every ``young`` net new objects (then 1 and 2 every ``middle`` and
    ``old`` collections of the one below, as ``gc.set_threshold``). Garbage made later is
    collected as before, in larger batches."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(young, middle, old)
