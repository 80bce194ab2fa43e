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
)
SELECT_ENTRY = (
    "SELECT " + ", ".join(f"e.{c}" for c in ENTRY_COLUMNS) + ", p.env, p.sig, p.key_id "
    "FROM l9_audit.entries e LEFT JOIN l9_audit.payloads p USING (seq) "
)
LOCK = "SELECT pg_advisory_xact_lock($1)"
HEAD = "SELECT seq, chain_hash, updated_at, clock_timestamp() AS now FROM l9_audit.chain_head"
STORED = (
    "SELECT envelope_id, seq, chain_hash, payload_hash, recorded_at FROM l9_audit.entries "
    "WHERE envelope_id = ANY($1::text[])"
)
MOVE_HEAD = f"""
WITH moved AS (
    UPDATE l9_audit.chain_head SET seq = $1, chain_hash = $2, updated_at = $3 WHERE seq = $4 RETURNING seq
)
SELECT seq, pg_notify('{NOTIFY_CHANNEL}', seq::text) FROM moved
"""
AFTER = (
    SELECT_ENTRY + "WHERE e.seq > $1 AND e.seq <= $2 AND ($3::text IS NULL OR e.type LIKE $3) "
    "AND ($4::text IS NULL OR e.source LIKE $4) AND ($5::text IS NULL OR e.correlation_id = $5) "
    "AND ($6::timestamptz IS NULL OR e.recorded_at >= $6) ORDER BY e.seq LIMIT $7"
)
FOR_CORRELATION = SELECT_ENTRY + "WHERE e.correlation_id = $1 ORDER BY e.seq"
CHECKPOINTS = f"SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM l9_audit.checkpoints ORDER BY id"
LAST_CHECKPOINT = f"SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM l9_audit.checkpoints ORDER BY id DESC LIMIT 1"
INSERT_CHECKPOINT = (
    f"INSERT INTO l9_audit.checkpoints ({', '.join(CHECKPOINT_COLUMNS)}) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)
