-- The issuance log: one row per issued credential or rejected request, hash-chained by the
-- twid-provenance crate, which also defines the hash. Rows are only ever inserted.
-- The PostgreSQL schema has the same tables and keys, with BYTEA data.

-- seq is INTEGER PRIMARY KEY, so it is the rowid and reads in seq order need no extra index.
CREATE TABLE issuance_log (
    seq                INTEGER PRIMARY KEY NOT NULL,
    -- The hash of the record at seq - 1, or 32 zero bytes for seq 0.
    prev_hash          BLOB NOT NULL,
    hash               BLOB NOT NULL,
    -- x509, jwt, wit or refusal.
    kind               TEXT NOT NULL,
    -- Lowercase hex X.509 serial number.
    serial             TEXT,
    -- JWT ID claim of a JWT or WIT.
    jti                TEXT,
    spiffe_id          TEXT,
    entry_id           TEXT,
    agent_id           TEXT,
    -- JSON array of {"type","value"} objects, in the order the caller gave.
    selectors          TEXT NOT NULL,
    -- SHA-256 of the subject public key's SubjectPublicKeyInfo DER.
    key_fingerprint    BLOB,
    -- SHA-256 of the attestation evidence.
    evidence_digest    BLOB,
    -- Canonical JSON text (sorted keys, no whitespace); the hash covers these exact bytes.
    attestation_result TEXT,
    policy_version     TEXT,
    refusal_reason     TEXT,
    time_unix_ms       BIGINT NOT NULL
);
-- hash has no index: a random key would add a random B-tree page write to every append,
-- which halved append throughput in a SQLite measurement. Only verification looks
-- records up by hash, after it has found an alteration.
CREATE INDEX issuance_log_serial ON issuance_log (serial) WHERE serial IS NOT NULL;
CREATE INDEX issuance_log_jti ON issuance_log (jti) WHERE jti IS NOT NULL;

-- One row: the seq and hash the next record continues from. Every append locks and updates it
-- in the same transaction as its inserts, so appenders from several processes serialize.
CREATE TABLE issuance_log_head (
    next_seq  BIGINT NOT NULL,
    head_hash BLOB NOT NULL
);
INSERT INTO issuance_log_head (next_seq, head_hash) VALUES (0, zeroblob(32));

-- Signatures over (seq, hash) of one record each, made with the log's checkpoint key.
CREATE TABLE issuance_log_checkpoints (
    seq           BIGINT PRIMARY KEY NOT NULL,
    hash          BLOB NOT NULL,
    -- ed25519 or ecdsa-p256-sha256.
    algorithm     TEXT NOT NULL,
    -- Lowercase hex SHA-256 of the public key bytes.
    key_id        TEXT NOT NULL,
    signature     BLOB NOT NULL,
    created_at_ms BIGINT NOT NULL
);
