"""Every SQL statement of the audit store, and the column lists they share."""

from __future__ import annotations

NOTIFY_CHANNEL = "l9_audit"
"""Channel of the one NOTIFY per committed batch; the payload is the new head seq."""

ENTRY_COLUMNS = (
    "seq",
    "envelope_id",
    "type",
    "source",
    "correlation_id",
    "causation_id",
    "envelope_time",
    "recorded_at",
    "stream",
    "entry_id",
    "payload_hash",
    "leaf_hash",
    "chain_hash",
    "hash_version",
    "chain",
)
PAYLOAD_COLUMNS = ("seq", "env", "sig", "key_id")
CHECKPOINT_COLUMNS = (
    "id",
    "seq",
    "chain_hash",
    "created_at",
    "prev_id",
    "prev_digest",
    "key_id",
    "digest",
    "signature",
    "version",
    "heads",
)
NODE_COLUMNS = ("chain", "level", "idx", "hash")
SELECT_ENTRY = (
    "SELECT " + ", ".join(f"e.{c}" for c in ENTRY_COLUMNS) + ", p.env, p.sig, p.key_id "
    "FROM l9_audit.entries e LEFT JOIN l9_audit.payloads p USING (seq) "
)
LOCK = "SELECT pg_advisory_xact_lock($1)"
#: The locks of chains ``$1`` (their keys, ascending: two appends never wait on each other crosswise).
LOCK_CHAINS = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::int8[]) AS k"
CHAIN_COUNT = "SELECT chains FROM l9_audit.trail"
#: Every chain of the trail: its head and tree, the trail's chain count, and the clock.
HEADS = (
    "SELECT c.chain, c.size, c.chain_hash, c.tree, c.updated_at, t.chains, clock_timestamp() AS now "
    "FROM l9_audit.chains c, l9_audit.trail t WHERE c.chain < t.chains ORDER BY c.chain"
)
#: The seq of the newest entry of any chain (0: none).
HEAD_SEQ = (
    "SELECT coalesce(max(CASE WHEN c.size > 0 THEN (c.size - 1) * t.chains + c.chain + 1 END), 0) "
    "FROM l9_audit.chains c, l9_audit.trail t WHERE c.chain < t.chains"
)
#: The seq of the newest entry of chain ``$1`` (0: none).
CHAIN_HEAD_SEQ = (
    "SELECT CASE WHEN c.size > 0 THEN (c.size - 1) * t.chains + c.chain + 1 ELSE 0 END "
    "FROM l9_audit.chains c, l9_audit.trail t WHERE c.chain = $1"
)
STORED = (
    "SELECT envelope_id, seq, chain_hash, payload_hash, recorded_at FROM l9_audit.entries "
    "WHERE envelope_id = ANY($1::text[])"
)
#: Chains ``$1``'s rows (``chain`` set) and the entries stored under the envelope ids ``$2``
#: (``envelope_id`` set): one round trip under the chain locks.
HEADS_AND_STORED = (
    "SELECT c.chain, c.size, c.tree, t.chains, NULL::text AS envelope_id, NULL::int8 AS seq, "
    "c.chain_hash, NULL::bytea AS payload_hash, clock_timestamp() AS recorded_at "
    "FROM l9_audit.chains c, l9_audit.trail t WHERE c.chain = ANY($1::int2[]) "
    "UNION ALL SELECT NULL, NULL, NULL, NULL, envelope_id, seq, chain_hash, payload_hash, recorded_at "
    "FROM l9_audit.entries WHERE envelope_id = ANY($2::text[])"
)
#: Move each chain of ``$1`` from size ``$5`` to ``$2`` (compare-and-set); the number of
#: chains moved.
MOVE_HEADS = """
WITH moved AS (
    UPDATE l9_audit.chains c SET size = u.size, chain_hash = u.chain_hash, tree = u.tree, updated_at = $6
    FROM unnest($1::int2[], $2::int8[], $3::bytea[], $4::bytea[], $5::int8[])
        AS u(chain, size, chain_hash, tree, old)
    WHERE c.chain = u.chain AND c.size = u.old
    RETURNING c.chain
)
SELECT count(*) FROM moved
"""
#: The NOTIFY of a committed append (``$1``: the highest seq written), in a transaction of its
#: own after the append's, committed without waiting for its WAL flush. PostgreSQL serialises
#: the commits of every transaction that notifies (a cluster-wide lock held from before the
#: commit until after its flush): inside the append it made the chains' commits queue one
#: behind the other. The notification is a wake-up (a tail reads by cursor and polls too), so
#: one lost in a crash costs nothing.
NOTIFY_HEAD = f"SELECT set_config('synchronous_commit', 'off', true), pg_notify('{NOTIFY_CHANNEL}', $1::text)"
#: Fill in the tree of chain ``$1`` at size ``$2`` (built from its leaves).
SET_TREE = "UPDATE l9_audit.chains SET tree = $3 WHERE chain = $1 AND size = $2 AND tree IS NULL"
#: The leaf hashes of chain ``$1`` from seq ``$2`` on, by seq, at most ``$3``.
LEAVES = "SELECT seq, leaf_hash FROM l9_audit.entries WHERE chain = $1 AND seq >= $2 ORDER BY seq LIMIT $3"
#: Leaf hashes of chain ``$1`` at the seqs ``$2``.
LEAVES_AT = "SELECT seq, leaf_hash FROM l9_audit.entries WHERE chain = $1 AND seq = ANY($2::int8[])"
#: Stored nodes of chain ``$1`` at level ``$2`` with the indexes ``$3``.
NODES_AT = (
    "SELECT idx, hash FROM l9_audit.tree_nodes WHERE chain = $1 AND level = $2 AND idx = ANY($3::int8[])"
)
ENTRY_OF = SELECT_ENTRY + "WHERE e.envelope_id = $1"
CHECKPOINT = f"SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM l9_audit.checkpoints WHERE id = $1"
AFTER = (
    SELECT_ENTRY + "WHERE e.seq > $1 AND e.seq <= $2 AND ($3::text IS NULL OR e.type LIKE $3) "
    "AND ($4::text IS NULL OR e.source LIKE $4) AND ($5::text IS NULL OR e.correlation_id = $5) "
    "AND ($6::timestamptz IS NULL OR e.recorded_at >= $6) AND ($8::int2 IS NULL OR e.chain = $8) "
    "ORDER BY e.seq LIMIT $7"
)
FOR_CORRELATION = SELECT_ENTRY + "WHERE e.correlation_id = $1 ORDER BY e.seq"
CHECKPOINTS = f"SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM l9_audit.checkpoints ORDER BY id"
LAST_CHECKPOINT = f"SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM l9_audit.checkpoints ORDER BY id DESC LIMIT 1"
INSERT_CHECKPOINT = (
    f"INSERT INTO l9_audit.checkpoints ({', '.join(CHECKPOINT_COLUMNS)}) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
)
