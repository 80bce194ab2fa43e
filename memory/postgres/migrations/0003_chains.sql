-- The trail in chains (memory.audit.chains): one gapless hash chain per share of the bus
-- partitions, each with its own head, lock and Merkle tree; checkpoints that sign the tree
-- head over every chain.
--
-- l9_audit.trail   how many chains the trail has (1 to 64), fixed once it holds an entry.
-- l9_audit.chains  one row per possible chain (0..63): its size (entries), the chain hash
--                  of its last entry, the right edge of its Merkle tree (memory.merkle's
--                  CompactRange bytes; NULL until the store has built it from the leaves,
--                  as for the chain of a trail made before this migration).
-- l9_audit.tree_nodes  the complete subtrees of each chain's tree at the stored levels.
-- The entry of seq s belongs to chain (s - 1) mod chains; chain 0 of a trail made before
-- this migration is its one chain, unchanged.

SET LOCAL ROLE l9_owner;

CREATE TABLE l9_audit.trail (
    singleton boolean  PRIMARY KEY DEFAULT true CHECK (singleton),
    chains    smallint NOT NULL CHECK (chains BETWEEN 1 AND 64)
);
INSERT INTO l9_audit.trail (chains) VALUES (1);

CREATE TABLE l9_audit.chains (
    chain      smallint    PRIMARY KEY CHECK (chain BETWEEN 0 AND 63),
    size       bigint      NOT NULL CHECK (size >= 0),
    chain_hash bytea       NOT NULL CHECK (octet_length(chain_hash) = 32),
    tree       bytea,
    updated_at timestamptz NOT NULL
);
-- An empty tree: size 0 (8 bytes), stride 4 (memory.merkle.DEFAULT_STRIDE).
INSERT INTO l9_audit.chains (chain, size, chain_hash, tree, updated_at)
SELECT c, 0, decode(repeat('00', 32), 'hex'), decode('000000000000000004', 'hex'), clock_timestamp()
FROM generate_series(1, 63) AS c;
INSERT INTO l9_audit.chains (chain, size, chain_hash, tree, updated_at)
SELECT 0, seq, chain_hash,
       CASE WHEN seq = 0 THEN decode('000000000000000004', 'hex') END,
       updated_at
FROM l9_audit.chain_head;
DROP TABLE l9_audit.chain_head;
DROP FUNCTION l9_audit.check_head_move();

ALTER TABLE l9_audit.entries ADD COLUMN chain smallint NOT NULL DEFAULT 0 CHECK (chain BETWEEN 0 AND 63);
ALTER TABLE l9_audit.entries ALTER COLUMN chain DROP DEFAULT;
CREATE INDEX entries_chain_idx ON l9_audit.entries (chain, seq);

CREATE TABLE l9_audit.tree_nodes (
    chain smallint NOT NULL,
    level smallint NOT NULL CHECK (level > 0),
    idx   bigint   NOT NULL CHECK (idx >= 0),
    hash  bytea    NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (chain, level, idx)
);

-- Version 1: the one chain's (seq, chain_hash). Version 2: chain_hash is the tree head's
-- root, heads the msgpack list of every chain's [chain, size, chain_hash, root].
ALTER TABLE l9_audit.checkpoints ADD COLUMN version smallint NOT NULL DEFAULT 1 CHECK (version IN (1, 2));
ALTER TABLE l9_audit.checkpoints ADD COLUMN heads bytea;

CREATE TRIGGER tree_nodes_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON l9_audit.tree_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION l9_audit.refuse_change();
CREATE TRIGGER chains_kept BEFORE DELETE OR TRUNCATE ON l9_audit.chains
    FOR EACH STATEMENT EXECUTE FUNCTION l9_audit.refuse_change();
CREATE TRIGGER trail_kept BEFORE DELETE OR TRUNCATE ON l9_audit.trail
    FOR EACH STATEMENT EXECUTE FUNCTION l9_audit.refuse_change();

-- A chain's head moves forward only, onto the stored entry of that chain at its new size;
-- at the same size only the tree may be filled in (built from the leaves).
CREATE FUNCTION l9_audit.check_chain_move() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    v_chains smallint := (SELECT chains FROM l9_audit.trail);
BEGIN
    IF NEW.chain IS DISTINCT FROM OLD.chain THEN
        RAISE EXCEPTION 'a chain row cannot be renumbered' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.size < OLD.size THEN
        RAISE EXCEPTION 'chain %: the head moves forward only (% -> % refused)', OLD.chain, OLD.size, NEW.size
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.size = OLD.size THEN
        IF NEW.chain_hash IS DISTINCT FROM OLD.chain_hash
           OR (OLD.tree IS NOT NULL AND NEW.tree IS DISTINCT FROM OLD.tree) THEN
            RAISE EXCEPTION 'chain %: a head that does not move keeps its hash and tree', OLD.chain
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.chain >= v_chains THEN
        RAISE EXCEPTION 'chain % is not one of the trail''s % chain(s)', NEW.chain, v_chains
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM l9_audit.entries
        WHERE seq = (NEW.size - 1) * v_chains + NEW.chain + 1 AND chain = NEW.chain AND chain_hash = NEW.chain_hash
    ) THEN
        RAISE EXCEPTION 'chain %: the head must name a stored entry: no entry % of the chain with that chain hash',
            NEW.chain, NEW.size
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$fn$;
CREATE TRIGGER chains_forward_only BEFORE UPDATE ON l9_audit.chains
    FOR EACH ROW EXECUTE FUNCTION l9_audit.check_chain_move();

-- The chain count is chosen while the trail is empty (memory.postgres.migrate(chains=N)).
CREATE FUNCTION l9_audit.check_trail_change() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF NEW.chains IS DISTINCT FROM OLD.chains
       AND (EXISTS (SELECT 1 FROM l9_audit.entries) OR EXISTS (SELECT 1 FROM l9_audit.checkpoints)) THEN
        RAISE EXCEPTION 'the trail holds entries in % chain(s): its chain count is fixed (% refused)',
            OLD.chains, NEW.chains
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$fn$;
CREATE TRIGGER trail_chains_fixed BEFORE UPDATE ON l9_audit.trail
    FOR EACH ROW EXECUTE FUNCTION l9_audit.check_trail_change();

REVOKE ALL ON l9_audit.trail, l9_audit.chains, l9_audit.tree_nodes FROM PUBLIC;
GRANT SELECT ON l9_audit.trail TO l9_writer;
GRANT SELECT ON l9_audit.chains TO l9_writer;
GRANT UPDATE (size, chain_hash, tree, updated_at) ON l9_audit.chains TO l9_writer;
GRANT SELECT, INSERT ON l9_audit.tree_nodes TO l9_writer;
