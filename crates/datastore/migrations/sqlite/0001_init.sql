-- Initial schema. Times are unix seconds in BIGINT columns and lists are JSON text, because
-- the sqlx Any driver exchanges only basic types. Flags are INTEGER 0/1 here (BOOLEAN in the
-- PostgreSQL schema) because the sqlx 0.9 Any driver rejects SQLite columns declared BOOLEAN.

CREATE TABLE registration_entries (
    id              TEXT PRIMARY KEY NOT NULL,
    spiffe_id       TEXT NOT NULL,
    parent_id       TEXT NOT NULL,
    -- JSON array of {"type","value"} objects, in the order the caller gave.
    selectors       TEXT NOT NULL,
    -- Hex SHA-256 of the sorted, deduplicated selector set, for exact-set lookups.
    selectors_key   TEXT NOT NULL,
    -- Hex SHA-256 of (spiffe_id, parent_id, selector set): two entries may not share all
    -- three. A hash keeps the unique index row small, because PostgreSQL rejects b-tree rows
    -- over about 2700 bytes and a SPIFFE ID alone may be 2048 bytes.
    identity_key    TEXT NOT NULL UNIQUE,
    x509_svid_ttl   BIGINT NOT NULL,
    jwt_svid_ttl    BIGINT NOT NULL,
    dns_names       TEXT NOT NULL,
    federates_with  TEXT NOT NULL,
    admin           INTEGER NOT NULL CHECK (admin IN (0, 1)),
    downstream      INTEGER NOT NULL CHECK (downstream IN (0, 1)),
    hint            TEXT NOT NULL,
    expires_at      BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    revision_number BIGINT NOT NULL
);
CREATE INDEX registration_entries_parent_id ON registration_entries (parent_id);
CREATE INDEX registration_entries_spiffe_id ON registration_entries (spiffe_id);
CREATE INDEX registration_entries_selectors_key ON registration_entries (selectors_key);
CREATE INDEX registration_entries_expires_at ON registration_entries (expires_at);

CREATE TABLE attested_agents (
    spiffe_id            TEXT PRIMARY KEY NOT NULL,
    attestation_type     TEXT NOT NULL,
    x509_svid_serial     TEXT NOT NULL,
    x509_svid_expires_at BIGINT NOT NULL,
    selectors            TEXT NOT NULL,
    banned               INTEGER NOT NULL CHECK (banned IN (0, 1)),
    attested_at          BIGINT NOT NULL
);

-- Tokens are stored as the hex SHA-256 of their value, so a copy of the database does not
-- reveal tokens that are still unused.
CREATE TABLE join_tokens (
    token_sha256 TEXT PRIMARY KEY NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX join_tokens_expires_at ON join_tokens (expires_at);

CREATE TABLE bundles (
    trust_domain TEXT PRIMARY KEY NOT NULL,
    data         BLOB NOT NULL,
    -- 1 for the first bundle of the trust domain, incremented on every replacement.
    sequence     BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

CREATE TABLE ca_state (
    key   TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);

-- One row, incremented in the transaction of every entry, agent and bundle write.
CREATE TABLE changes (
    revision BIGINT NOT NULL
);
INSERT INTO changes (revision) VALUES (0);
