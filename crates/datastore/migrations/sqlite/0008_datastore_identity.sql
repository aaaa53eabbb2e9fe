-- A random identifier of this database, made once when the migration runs; see the PostgreSQL
-- migration of the same number for its use.

CREATE TABLE datastore_identity (
    id TEXT NOT NULL
);

INSERT INTO datastore_identity (id) VALUES (lower(hex(randomblob(16))));
