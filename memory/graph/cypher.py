"""Every query of the semantic graph, in the Cypher both stores speak (FalkorDB and Neo4j).

The model (every node carries ``ns``, the L9 namespace, so one Neo4j database
can hold several namespaces; in FalkorDB each namespace has its own graph key):

* ``(:Envelope {ns, id})`` - type, kind, agent, source, time, stream, run, cause;
  ``-[:CAUSED_BY]->(:Envelope)`` its causation envelope (a node holding only
  ``id`` until that envelope is projected too), ``-[:IN_RUN]->(:Run {ns, id})``
  its correlation id, ``-[:SENT_BY]->(:Agent {ns, collection: '/runtime', name})``
  the agent type of its source (``/runtime`` is no file name, so no collection's);
* ``(:Agent {ns, collection, name})-[:DEPENDS_ON {kind: 'hard'|'soft', at}]->(:Agent)``:
  the dependency DAG of a collection, as the planner's research found it. ``at``
  (on edges, and ``dag_at`` on agents) is the research envelope's time in
  microseconds: a newer research supersedes an older one, and an older one
  projected late changes nothing that is newer;
* ``(:Expression {ns, id})-[:EXPRESSION_DEPENDS_ON]->(:Expression | :Symbol {ns, name})``:
  expressions, their CSE subexpressions and their symbols;
* ``(:<Label> {ns, agent, id})-[:<REL> {props}]->(:<Label> {ns, agent, id})``: the entities
  an agent's rules link (its semantic memory), in the agent's own space (``agent``).

Key properties are never empty strings: FalkorDB's indexes do not find ``""``,
so a MERGE on one would create a new node each time.

Every write is a ``MERGE`` (re-running one changes no node or edge count) and
takes its rows as one ``UNWIND`` list parameter; every read is parameterised.
Nothing here is built from data: values travel as parameters only. The one exception is
the label and relationship type of an entity link, which Cypher cannot take as parameters:
they are put in the query only once they match a strict pattern (:func:`entity_label`,
:func:`relationship_type`), and never one of L9's own.
"""

from __future__ import annotations

import re
from typing import Final, Literal

from .errors import GraphQueryError

#: The ``collection`` of the agents that send envelopes (a collection is named by a file
#: name, which has no ``/``).
RUNTIME_COLLECTION: Final = "/runtime"
#: How far back a lineage walk goes (a longer chain is reported as truncated).
LINEAGE_MAX_DEPTH: Final = 256

# -- envelope lineage -----------------------------------------------------------------------
MERGE_ENVELOPES: Final = """
UNWIND $rows AS row
MERGE (e:Envelope {ns: $ns, id: row.id})
SET e.type = row.type, e.kind = row.kind, e.agent = row.agent, e.source = row.source,
    e.time = row.time, e.stream = row.stream, e.run = row.run, e.cause = row.cause
MERGE (r:Run {ns: $ns, id: row.run})
MERGE (e)-[:IN_RUN]->(r)
MERGE (a:Agent {ns: $ns, collection: $runtime, name: row.agent})
MERGE (e)-[:SENT_BY]->(a)
"""

MERGE_CAUSES: Final = """
UNWIND $rows AS row
MATCH (e:Envelope {ns: $ns, id: row.id})
MERGE (c:Envelope {ns: $ns, id: row.cause})
MERGE (e)-[:CAUSED_BY]->(c)
"""

LINEAGE: Final = f"""
MATCH p = (e:Envelope {{ns: $ns, id: $id}})-[:CAUSED_BY*0..{LINEAGE_MAX_DEPTH}]->(x:Envelope)
RETURN length(p) AS depth, x.id AS id, x.type AS type, x.kind AS kind, x.agent AS agent,
       x.source AS source, x.time AS time, x.stream AS stream, x.run AS run, x.cause AS cause
ORDER BY depth
"""

EFFECTS: Final = f"""
MATCH p = (x:Envelope)-[:CAUSED_BY*1..{LINEAGE_MAX_DEPTH}]->(e:Envelope {{ns: $ns, id: $id}})
RETURN length(p) AS depth, x.id AS id, x.type AS type, x.kind AS kind, x.agent AS agent,
       x.source AS source, x.time AS time, x.stream AS stream, x.run AS run, x.cause AS cause
ORDER BY depth, time, id
"""
EFFECT_ROOT: Final = "MATCH (e:Envelope {ns: $ns, id: $id}) RETURN e.id AS id"

# -- the agent DAG of a collection ----------------------------------------------------------
MERGE_DAG_AGENTS: Final = """
UNWIND $rows AS row
MERGE (a:Agent {ns: $ns, collection: $collection, name: row.name})
SET a.wave = CASE WHEN $at >= coalesce(a.dag_at, 0) THEN row.wave ELSE a.wave END,
    a.position = CASE WHEN $at >= coalesce(a.dag_at, 0) THEN row.position ELSE a.position END,
    a.dag_at = CASE WHEN $at > coalesce(a.dag_at, 0) THEN $at ELSE a.dag_at END
"""

MERGE_DAG_EDGES: Final = """
UNWIND $rows AS row
MATCH (a:Agent {ns: $ns, collection: $collection, name: row.agent})
MATCH (b:Agent {ns: $ns, collection: $collection, name: row.dependency})
MERGE (a)-[d:DEPENDS_ON {kind: row.kind}]->(b)
SET d.at = CASE WHEN d.at IS NULL OR d.at < $at THEN $at ELSE d.at END
"""

MERGE_DAG_RUN: Final = """
MERGE (r:Run {ns: $ns, id: $run})
SET r.collection = $collection
"""

DAG_VERSION: Final = """
MATCH (a:Agent {ns: $ns, collection: $collection})
RETURN max(a.dag_at) AS at
"""

DAG_AGENTS: Final = """
MATCH (a:Agent {ns: $ns, collection: $collection})
WHERE a.dag_at = $at
RETURN a.name AS name, a.wave AS wave, a.position AS position
ORDER BY position, name
"""

DAG_EDGES: Final = """
MATCH (a:Agent {ns: $ns, collection: $collection})-[d:DEPENDS_ON]->(b:Agent)
WHERE d.at = $at
RETURN a.name AS agent, b.name AS dependency, d.kind AS kind
ORDER BY agent, dependency, kind
"""

# -- expression graphs ----------------------------------------------------------------------
MERGE_EXPRESSIONS: Final = """
UNWIND $rows AS row
MERGE (x:Expression {ns: $ns, id: row.id})
SET x.kind = row.kind, x.hash = row.hash, x.name = row.name, x.reduced = row.reduced,
    x.text = coalesce(row.text, x.text)
"""

MERGE_EXPRESSION_EDGES: Final = """
UNWIND $rows AS row
MATCH (a:Expression {ns: $ns, id: row.source})
MATCH (b:Expression {ns: $ns, id: row.target})
MERGE (a)-[:EXPRESSION_DEPENDS_ON]->(b)
"""

MERGE_SYMBOL_EDGES: Final = """
UNWIND $rows AS row
MATCH (a:Expression {ns: $ns, id: row.source})
MERGE (s:Symbol {ns: $ns, name: row.symbol})
MERGE (a)-[:EXPRESSION_DEPENDS_ON]->(s)
"""

EXPRESSION_EDGES: Final = """
MATCH (x:Expression {ns: $ns, id: $id})-[:EXPRESSION_DEPENDS_ON*0..64]->(a:Expression)
MATCH (a)-[:EXPRESSION_DEPENDS_ON]->(b)
RETURN DISTINCT a.id AS source, a.kind AS source_kind, a.text AS source_text,
       labels(b)[0] AS label, coalesce(b.id, b.name) AS target, b.kind AS target_kind, b.text AS target_text
ORDER BY source, target
"""

# -- entities an agent links (rules' semantic memory) ------------------------------------------
#: An entity's label: a capitalised identifier (``Account``, ``Merchant``).
ENTITY_LABEL: Final = re.compile(r"^[A-Z][A-Za-z0-9_]{0,63}$")
#: A relationship type: upper case (``PAID``, ``LOCATED_IN``).
RELATIONSHIP_TYPE: Final = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
#: The relationship types of L9's own graph, which no link may use.
L9_RELATIONSHIPS: Final = frozenset({"CAUSED_BY", "IN_RUN", "SENT_BY", "DEPENDS_ON", "EXPRESSION_DEPENDS_ON"})
#: Most neighbours one read returns.
NEIGHBOURS_MAX: Final = 10_000
Direction = Literal["out", "in"]


def entity_label(label: str) -> str:
    """``label`` if an entity may carry it: the pattern, and none of L9's own labels."""
    if not isinstance(label, str) or not ENTITY_LABEL.match(label):
        raise GraphQueryError(
            f"entity label {label!r}: want a capital letter, then letters, digits or _ (at most 64)"
        )
    if label in {name for name, _ in NODE_KEYS}:
        raise GraphQueryError(f"entity label {label!r} is one of L9's own graph: choose another")
    return label


def relationship_type(rel: str) -> str:
    """``rel`` if a link may have it: the pattern, and none of L9's own relationship types."""
    if not isinstance(rel, str) or not RELATIONSHIP_TYPE.match(rel):
        raise GraphQueryError(f"relationship type {rel!r}: want A-Z, 0-9 and _, from a letter (at most 64)")
    if rel in L9_RELATIONSHIPS:
        raise GraphQueryError(f"relationship type {rel!r} is one of L9's own graph: choose another")
    return rel


def merge_link(from_label: str, rel: str, to_label: str) -> str:
    """MERGE two entities of an agent and the relationship between them, set its properties."""
    a, r, b = entity_label(from_label), relationship_type(rel), entity_label(to_label)
    return f"""
MERGE (a:{a} {{ns: $ns, agent: $agent, id: $from_id}})
MERGE (b:{b} {{ns: $ns, agent: $agent, id: $to_id}})
MERGE (a)-[r:{r}]->(b)
SET r += $props
"""


def neighbours_query(label: str, rel: str | None, direction: Direction) -> str:
    """The entities linked to one (by ``rel``, or any), following links out of it or into it."""
    a, edge = entity_label(label), f"[r:{relationship_type(rel)}]" if rel is not None else "[r]"
    pattern = f"-{edge}->" if direction == "out" else f"<-{edge}-"
    return f"""
MATCH (a:{a} {{ns: $ns, agent: $agent, id: $id}}){pattern}(b)
WHERE b.ns = $ns AND b.agent = $agent
RETURN labels(b)[0] AS label, b.id AS id, type(r) AS rel, properties(r) AS props
ORDER BY rel, label, id
LIMIT $limit
"""


def falkordb_entity_index(label: str) -> str:
    """The index of an entity label on its key (``already indexed`` after the first time)."""
    return f"CREATE INDEX FOR (n:{entity_label(label)}) ON (n.agent, n.id)"


def neo4j_entity_constraint(label: str) -> str:
    """The uniqueness constraint of an entity label on its key."""
    name = entity_label(label)
    return (
        f"CREATE CONSTRAINT l9_entity_{name}_key IF NOT EXISTS FOR (n:{name}) "
        "REQUIRE (n.ns, n.agent, n.id) IS UNIQUE"
    )


# -- the whole namespace ----------------------------------------------------------------------
NODE_COUNTS: Final = """
MATCH (n) WHERE n.ns = $ns
RETURN labels(n)[0] AS label, count(n) AS n
ORDER BY label
"""

EDGE_COUNTS: Final = """
MATCH (a)-[r]->() WHERE a.ns = $ns
RETURN type(r) AS type, count(r) AS n
ORDER BY type
"""

CLEAR: Final = """
MATCH (n) WHERE n.ns = $ns
DETACH DELETE n
"""

PING: Final = "RETURN 1 AS ok"

# -- schema: per store (the only statements that differ) ----------------------------------------
#: ``(label, key properties)`` of every node: unique in Neo4j, indexed in FalkorDB.
NODE_KEYS: Final = (
    ("Envelope", ("ns", "id")),
    ("Run", ("ns", "id")),
    ("Agent", ("ns", "collection", "name")),
    ("Expression", ("ns", "id")),
    ("Symbol", ("ns", "name")),
)


def falkordb_indexes() -> list[str]:
    """One range index per label on its key (FalkorDB has no IF NOT EXISTS: 'already indexed'
    errors are expected on every start but the first)."""
    return [
        f"CREATE INDEX FOR (n:{label}) ON ({', '.join(f'n.{p}' for p in props if p != 'ns')})"
        for label, props in NODE_KEYS
    ]


def neo4j_constraints() -> list[str]:
    """A uniqueness constraint per label on its key, so concurrent MERGEs never duplicate a node."""
    return [
        f"CREATE CONSTRAINT l9_{label.lower()}_key IF NOT EXISTS FOR (n:{label}) "
        f"REQUIRE ({', '.join(f'n.{p}' for p in props)}) IS UNIQUE"
        for label, props in NODE_KEYS
    ]
