-- A random identifier of this database, made once when the migration runs. A read-only
-- replica holds the same row, so a server compares the two to check that its
-- ro_connection_string reaches a copy of the database it writes to, and not another twid
-- database. The SQLite schema has the same table.

CREATE TABLE datastore_identity (
    id TEXT NOT NULL
);

INSERT INTO datastore_identity (id) VALUES (replace(gen_random_uuid()::text, '-', ''));

-- A random token per value of the change counter, written in the transaction that sets that
-- value. A read-only replica that holds the same token for its revision holds the same
-- history: a promoted copy, or a standby of one, gives its later revisions tokens of its
-- own. Rows are pruned with the entry_changes rows.
CREATE TABLE change_tokens (
    revision BIGINT PRIMARY KEY NOT NULL,
    token    BIGINT NOT NULL
);

INSERT INTO change_tokens (revision, token) SELECT revision, (floor(random() * 9007199254740991))::bigint FROM changes;
