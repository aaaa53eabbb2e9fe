-- Signed appraisal policy documents. Every applied version is kept; the highest version is the
-- current one. `jws` is the compact JWS as applied and `document` its payload, the policy
-- document JSON. The server checks the signature and the version chain before it inserts.
CREATE TABLE policy_versions (
    version BIGINT PRIMARY KEY NOT NULL,
    jws TEXT NOT NULL,
    document TEXT NOT NULL,
    signer_kid TEXT NOT NULL,
    applied_at BIGINT NOT NULL
);
