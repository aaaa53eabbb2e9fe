-- A random identifier of this database, made once when the migration runs. A read-only
-- replica holds the same row, so a server compares the two to check that its
-- ro_connection_string reaches a copy of the database it writes to, and not another twid
-- database. The SQLite schema has the same table.

CREATE TABLE datastore_identity (
    id TEXT NOT NULL
);

INSERT INTO datastore_identity (id) VALUES (replace(gen_random_uuid()::text, '-', ''));
