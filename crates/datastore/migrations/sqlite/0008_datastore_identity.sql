-- A random identifier of this database, made once when the migration runs; see the PostgreSQL
-- migration of the same number for its use.

CREATE TABLE datastore_identity (
    id TEXT NOT NULL
);

INSERT INTO datastore_identity (id) VALUES (lower(hex(randomblob(16))));

-- A random token per value of the change counter, written in the transaction that sets that
-- value. A read-only replica that holds the same token for its revision holds the same
-- history: a promoted copy, or a standby of one, gives its later revisions tokens of its
-- own. Rows are pruned with the entry_changes rows.
CREATE TABLE change_tokens (
    revision BIGINT PRIMARY KEY NOT NULL,
    token    BIGINT NOT NULL
);

INSERT INTO change_tokens (revision, token) SELECT revision, random() FROM changes;
