-- The global chain: one append-only Merkle tree (RFC 6962 shape) over every event in position
-- order, sealed after commit by `event_store::chain::run_sealer`, and its signed checkpoints.
--
-- Leaf i is the i-th event in global position order (dense indexes over sparse positions), its
-- hash SHA-256(0x00 || "annals.leaf.v1" || global_position || event hash): a deleted, inserted
-- or reordered event, or a deleted transaction, changes a leaf and so every root above it.
-- Nodes are the complete subtrees: level k, index j covers leaves [j * 2^k, (j + 1) * 2^k); the
-- root of the first n leaves folds the O(log n) complete subtrees of n's binary decomposition.
--
-- These tables are a cache of hashes anyone can recompute from `events`: the only trusted value
-- is a root signed by the checkpointer, whose key never enters this database.

-- The sealer's progress, written in the same transaction as its leaves and nodes.
CREATE TABLE annals_chain_state (
    singleton     BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    leaf_count    BIGINT  NOT NULL CHECK (leaf_count >= 0),
    last_position BIGINT  NOT NULL
);
INSERT INTO annals_chain_state (leaf_count, last_position) VALUES (0, 0);

CREATE TABLE annals_chain_leaves (
    leaf_index      BIGINT PRIMARY KEY,
    global_position BIGINT NOT NULL UNIQUE,
    event_hash      BYTEA  NOT NULL CHECK (octet_length(event_hash) = 32)
);

CREATE TABLE annals_chain_nodes (
    level SMALLINT NOT NULL CHECK (level >= 0 AND level < 63),
    idx   BIGINT   NOT NULL CHECK (idx >= 0),
    hash  BYTEA    NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (level, idx)
);

-- Signed heads of the chain. Also published outside the database (a JSON-lines file, Kafka):
-- a verifier trusts a row here only after checking its signature with the public key.
CREATE TABLE annals_checkpoints (
    leaf_count    BIGINT      NOT NULL,
    last_position BIGINT      NOT NULL,
    root_hash     BYTEA       NOT NULL CHECK (octet_length(root_hash) = 32),
    signed_at     TIMESTAMPTZ NOT NULL,
    key_id        TEXT        NOT NULL,
    signature     BYTEA       NOT NULL CHECK (octet_length(signature) = 64),
    PRIMARY KEY (leaf_count, key_id)
);
