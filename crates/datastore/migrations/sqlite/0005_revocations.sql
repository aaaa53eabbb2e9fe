-- Revocation rules and the credentials each one revoked. The PostgreSQL schema has the same
-- tables and keys.

CREATE TABLE revocations (
    id         INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    -- selector, tcb_status or agent.
    kind       TEXT NOT NULL,
    value      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    -- Unix seconds. Agents attested at or before this time get nothing on a matching basis.
    created_at BIGINT NOT NULL
);
CREATE INDEX revocations_created_at ON revocations (created_at);

CREATE TABLE revoked_credentials (
    revocation_id BIGINT NOT NULL REFERENCES revocations (id),
    -- x509, jwt or wit.
    kind          TEXT NOT NULL,
    -- Lowercase hex serial number of an X.509-SVID.
    serial        TEXT,
    -- JWT ID claim of a JWT-SVID or WIT.
    jti           TEXT,
    spiffe_id     TEXT NOT NULL,
    agent_id      TEXT,
    -- Unix seconds: the credential's expiry or an upper bound of it.
    expires_at    BIGINT NOT NULL
);
CREATE INDEX revoked_credentials_serial ON revoked_credentials (serial) WHERE serial IS NOT NULL;
CREATE INDEX revoked_credentials_agent ON revoked_credentials (agent_id, expires_at);
CREATE INDEX revoked_credentials_expires_at ON revoked_credentials (expires_at);

-- Revocation scans read the issuance log records of the last credential lifetime.
CREATE INDEX issuance_log_time ON issuance_log (time_unix_ms);
