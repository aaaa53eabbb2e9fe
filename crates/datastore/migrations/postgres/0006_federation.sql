-- Federation relationships: the foreign trust domains whose bundles the server fetches from
-- their SPIFFE bundle endpoints. The fetched bundles themselves live in the bundles table.
-- The PostgreSQL schema has the same table and keys.

CREATE TABLE federation_relationships (
    trust_domain        TEXT PRIMARY KEY NOT NULL,
    bundle_endpoint_url TEXT NOT NULL,
    -- https_spiffe or https_web.
    profile             TEXT NOT NULL,
    -- The SPIFFE ID the endpoint must present; set for https_spiffe only.
    endpoint_spiffe_id  TEXT,
    -- Unix seconds.
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);
