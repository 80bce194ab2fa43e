-- Per-operation metrics of the SymPy worker (memory/postgres/metrics.py writes them in batches).
--
-- l9_metrics.sympy_metrics          one row per answered or refused operation
-- l9_metrics.sympy_codegen_metrics  one row per code generation (generate_code, compile)
--
-- Owned by l9_owner (made in 0001); the writer role l9_writer may only INSERT and SELECT.
-- Row ids are the worker's l9.sympy.operation.v1 envelope ids (the same event in the audit
-- trail), so a batch written twice (a lost commit acknowledgement) adds nothing the second time.
-- Every statement is guarded: running this file again changes nothing.

DO $owner$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT pg_has_role(current_user, 'l9_owner', 'MEMBER') THEN
        EXECUTE format('GRANT l9_owner TO %I', current_user);  -- to SET ROLE below
    END IF;
END
$owner$;

CREATE SCHEMA IF NOT EXISTS l9_metrics AUTHORIZATION l9_owner;
REVOKE ALL ON SCHEMA l9_metrics FROM PUBLIC;
GRANT USAGE ON SCHEMA l9_metrics TO l9_writer;

SET LOCAL ROLE l9_owner;

CREATE TABLE IF NOT EXISTS l9_metrics.sympy_metrics (
    id          uuid             PRIMARY KEY,
    request_id  text             NOT NULL,
    session     text             NOT NULL,                 -- the request's correlation id
    op          text             NOT NULL,
    backend     text             NOT NULL,
    expr_hash   text,                                      -- NULL: refused before it was parsed
    duration_ms double precision NOT NULL CHECK (duration_ms >= 0),
    cache_hit   boolean          NOT NULL,
    outcome     text             NOT NULL CHECK (outcome IN ('ok', 'error')),
    error       text,                                      -- <kind>.<rule> of a refusal
    requester   text             NOT NULL,
    at          timestamptz      NOT NULL                  -- when the operation was answered
);
CREATE INDEX IF NOT EXISTS sympy_metrics_at_idx ON l9_metrics.sympy_metrics USING brin (at);
CREATE INDEX IF NOT EXISTS sympy_metrics_expr_idx ON l9_metrics.sympy_metrics (expr_hash);

CREATE TABLE IF NOT EXISTS l9_metrics.sympy_codegen_metrics (
    id          uuid             PRIMARY KEY,              -- the operation's sympy_metrics id
    request_id  text             NOT NULL,
    op          text             NOT NULL CHECK (op IN ('generate_code', 'compile')),
    language    text             NOT NULL,
    expr_hash   text,
    duration_ms double precision NOT NULL CHECK (duration_ms >= 0),
    success     boolean          NOT NULL,
    cache_hit   boolean          NOT NULL,
    error       text,
    at          timestamptz      NOT NULL
);
CREATE INDEX IF NOT EXISTS sympy_codegen_metrics_at_idx
    ON l9_metrics.sympy_codegen_metrics USING brin (at);

REVOKE ALL ON ALL TABLES IN SCHEMA l9_metrics FROM PUBLIC;
GRANT SELECT, INSERT ON l9_metrics.sympy_metrics, l9_metrics.sympy_codegen_metrics TO l9_writer;
