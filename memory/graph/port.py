"""The port every graph store adapter implements: run the shared Cypher, translate errors.

Adapters hold no query text of their own but their schema statements
(:mod:`.cypher` has both stores' lists); everything else is
:class:`memory.graph.SemanticGraph`, the same for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

Row = dict[str, Any]
Params = Mapping[str, Any]


class GraphBackend(Protocol):
    """A graph store. Every method raises only :mod:`memory.graph.errors` exceptions."""

    #: ``falkordb`` or ``neo4j``.
    kind: str
    #: Where the graph lives, for messages (never a password).
    where: str

    async def setup(self) -> None:
        """Create indexes / constraints; safe to repeat."""

    async def index_entities(self, label: str) -> None:
        """Index (FalkorDB) or constrain (Neo4j) the key of the entity label ``label`` (a label
        :func:`memory.graph.cypher.entity_label` accepted); safe to repeat."""

    async def write(self, query: str, params: Params) -> None:
        """Run a writing query."""

    async def read(self, query: str, params: Params) -> list[Row]:
        """Run a read-only query; rows keyed by the RETURN names (an empty graph: no rows)."""

    async def close(self) -> None:
        """Release connections (never raises)."""
