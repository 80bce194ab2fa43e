"""The graph store's small exception vocabulary; each adapter translates its driver's errors here."""

from __future__ import annotations


class GraphError(RuntimeError):
    """Base of every graph store error."""


class GraphUnavailable(GraphError):
    """The store cannot be reached, timed out, is loading, refuses our credentials, or lacks
    the graph module: wait and retry. Writes are MERGEs, so a retried write is harmless."""


class GraphQueryError(GraphError):
    """The store refused a query (a bug or data it cannot hold): retrying will not help."""


class GraphNotFound(GraphError):
    """What a query asked for is not in the graph (an unknown envelope or collection)."""
