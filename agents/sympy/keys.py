"""Every Redis key the SymPy worker uses, in one place (beside ``bus.keys`` for the streams).

Results are cached under ``<ns>:sympy:{hash}:{op}:{backend}``: ``hash`` is the
digest of the canonical form of the request (so ``x+y`` and ``y+x`` share an
entry), ``op`` the operation and ``backend`` how it was computed (``sympy`` for
the symbolic operations, the evaluation backend, or the code language).
"""

from __future__ import annotations

from bus import Keys


def result_key(keys: Keys, digest: str, op: str, backend: str) -> str:
    """A cached result (JSON of the reply's fields), with a TTL."""
    return f"{keys.namespace}:sympy:{digest}:{op}:{backend}"


def cache_stats_key(keys: Keys) -> str:
    """Hash of counters: ``hits``, ``misses``, and ``hits:<op>`` / ``misses:<op>`` per operation."""
    return f"{keys.namespace}:sympy:cache:stats"


def compiled_key(keys: Keys, kernel_hash: str) -> str:
    """A built kernel: JSON of its path on the worker's disk, parameters, build time (no TTL)."""
    return f"{keys.namespace}:sympy:compiled:{kernel_hash}"
