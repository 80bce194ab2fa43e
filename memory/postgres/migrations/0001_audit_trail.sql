-- The immutable audit trail: roles, tables, append-only triggers, the chain head.
--
-- l9_owner  (NOLOGIN) owns every object below, so only it (or a superuser) could
--           ALTER a table or disable its triggers.
-- l9_writer (LOGIN)   the auditor: SELECT + INSERT on the trail, UPDATE of the one
--           chain-head row (forward only, onto a stored entry), nothing else.
-- Roles are cluster-wide: several databases may share them, so creating one that
-- already exists (even concurrently, from another database) is not an error.

DO $roles$
BEGIN
    BEGIN
        CREATE ROLE l9_owner NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
    BEGIN
        CREATE ROLE l9_writer LOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT l9_owner TO %I', current_user);  -- to SET ROLE below
    END IF;
END
$roles$;

CREATE SCHEMA l9_audit AUTHORIZATION l9_owner;
REVOKE ALL ON SCHEMA l9_audit FROM PUBLIC;
GRANT USAGE ON SCHEMA l9_audit TO l9_writer;

-- Everything below is created by, and so owned by, l9_owner.
SET LOCAL ROLE l9_owner;

CREATE TABLE l9_audit.entries (
    seq            bigint      PRIMARY KEY CHECK (seq > 0),
    envelope_id    text        NOT NULL UNIQUE,
    type           text        NOT NULL,
    source         text        NOT NULL,
    correlation_id text        NOT NULL,
    causation_id   text,
    envelope_time  timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL,
    stream         text        NOT NULL,
    entry_id       text        NOT NULL,
    payload_hash   bytea       NOT NULL CHECK (octet_length(payload_hash) = 32),
    leaf_hash      bytea       NOT NULL CHECK (octet_length(leaf_hash) = 32),
    chain_hash     bytea       NOT NULL CHECK (octet_length(chain_hash) = 32),
    hash_version   smallint    NOT NULL
);
CREATE INDEX entries_correlation_idx ON l9_audit.entries (correlation_id, seq);
CREATE INDEX entries_recorded_at_idx ON l9_audit.entries USING brin (recorded_at);

-- The signed envelope bytes, apart from the chained header: a redaction removes
-- a row here (through l9_audit.redact) while every leaf and chain hash stays.
CREATE TABLE l9_audit.payloads (
    seq    bigint PRIMARY KEY,
    env    bytea  NOT NULL,
    sig    text,
    key_id text
);

CREATE TABLE l9_audit.redactions (
    seq          bigint      PRIMARY KEY,
    reason       text        NOT NULL CHECK (reason <> ''),
    payload_hash bytea       NOT NULL,
    redacted_by  text        NOT NULL,
    redacted_at  timestamptz NOT NULL
);

CREATE TABLE l9_audit.chain_head (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    seq        bigint      NOT NULL CHECK (seq >= 0),
    chain_hash bytea       NOT NULL CHECK (octet_length(chain_hash) = 32),
    updated_at timestamptz NOT NULL
);
INSERT INTO l9_audit.chain_head (seq, chain_hash, updated_at)
VALUES (0, decode(repeat('00', 32), 'hex'), clock_timestamp());

CREATE TABLE l9_audit.checkpoints (
    id          bigint      PRIMARY KEY CHECK (id > 0),
    seq         bigint      NOT NULL CHECK (seq >= 0),
    chain_hash  bytea       NOT NULL CHECK (octet_length(chain_hash) = 32),
    created_at  timestamptz NOT NULL,
    prev_id     bigint,
    prev_digest bytea,
    key_id      text        NOT NULL,
    digest      bytea       NOT NULL CHECK (octet_length(digest) = 32),
    signature   bytea       NOT NULL
);

-- Append-only: statement-level, so even a statement touching no row is refused.
CREATE FUNCTION l9_audit.refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only: % on %.% is refused',
        TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$fn$;

CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON l9_audit.entries
    FOR EACH STATEMENT EXECUTE FUNCTION l9_audit.refuse_change();
CREATE TRIGGER payloads_append_only BEFORE UPDATE OR TRUNCATE ON l9_audit.payloads
    FOR EACH STATEMENT EXECUTE FUNCTION l9_audit.refuse_change();
CREATE TRIGGER redactions_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON l9_audit.redactions
    FOR EACH STATEMENT EXECUTE FUNCTION l9_audit.refuse_change();
CREATE TRIGGER checkpoints_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON l9_audit.checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION l9_audit.refuse_change();
CREATE TRIGGER chain_head_kept BEFORE DELETE OR TRUNCATE ON l9_audit.chain_head
    FOR EACH STATEMENT EXECUTE FUNCTION l9_audit.refuse_change();

-- A payload row goes only through l9_audit.redact, which records why first.
CREATE FUNCTION l9_audit.refuse_payload_delete() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF current_setting('l9_audit.redacting', true) = OLD.seq::text
       AND EXISTS (SELECT 1 FROM l9_audit.redactions WHERE seq = OLD.seq) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the audit trail is append-only: DELETE of payload % is refused (use l9_audit.redact)',
        OLD.seq
        USING ERRCODE = 'insufficient_privilege';
END
$fn$;
CREATE TRIGGER payloads_delete_by_redaction_only BEFORE DELETE ON l9_audit.payloads
    FOR EACH ROW EXECUTE FUNCTION l9_audit.refuse_payload_delete();

-- The head moves forward only, and only onto an entry stored with that chain hash.
CREATE FUNCTION l9_audit.check_head_move() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF NEW.singleton IS DISTINCT FROM OLD.singleton THEN
        RAISE EXCEPTION 'the chain head row cannot be renamed' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.seq <= OLD.seq THEN
        RAISE EXCEPTION 'the chain head moves forward only (% -> % refused)', OLD.seq, NEW.seq
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM l9_audit.entries WHERE seq = NEW.seq AND chain_hash = NEW.chain_hash) THEN
        RAISE EXCEPTION 'the chain head must name a stored entry: no seq % with that chain hash', NEW.seq
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$fn$;
CREATE TRIGGER chain_head_forward_only BEFORE UPDATE ON l9_audit.chain_head
    FOR EACH ROW EXECUTE FUNCTION l9_audit.check_head_move();

-- Redaction: owner-only (no EXECUTE for PUBLIC or the writer). Removes one payload
-- and appends the record of why; the entry, its payload hash and the chain stay.
CREATE FUNCTION l9_audit.redact(p_seq bigint, p_reason text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    v_hash bytea;
BEGIN
    IF coalesce(p_reason, '') = '' THEN
        RAISE EXCEPTION 'a redaction needs a reason' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT payload_hash INTO v_hash FROM l9_audit.entries WHERE seq = p_seq;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no audit entry has seq %', p_seq USING ERRCODE = 'no_data_found';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM l9_audit.payloads WHERE seq = p_seq) THEN
        RAISE EXCEPTION 'the payload of seq % is already redacted', p_seq USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO l9_audit.redactions (seq, reason, payload_hash, redacted_by, redacted_at)
    VALUES (p_seq, p_reason, v_hash, session_user, clock_timestamp());
    PERFORM set_config('l9_audit.redacting', p_seq::text, true);
    DELETE FROM l9_audit.payloads WHERE seq = p_seq;
    PERFORM set_config('l9_audit.redacting', '', true);
END
$fn$;
REVOKE ALL ON FUNCTION l9_audit.redact(bigint, text) FROM PUBLIC;

REVOKE ALL ON ALL TABLES IN SCHEMA l9_audit FROM PUBLIC;
GRANT SELECT, INSERT ON l9_audit.entries, l9_audit.payloads, l9_audit.checkpoints TO l9_writer;
GRANT SELECT ON l9_audit.redactions TO l9_writer;
GRANT SELECT ON l9_audit.chain_head TO l9_writer;
GRANT UPDATE (seq, chain_hash, updated_at) ON l9_audit.chain_head TO l9_writer;
