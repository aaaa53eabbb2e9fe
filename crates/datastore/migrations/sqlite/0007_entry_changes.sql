-- One row per registration entry that a write created, updated or deleted, under the change
-- counter's value after that write. Servers read the rows after the revision they last saw
-- to update their in-memory entry index, and to send agents only the entries that changed.
-- Writers bump the counter row first, which serializes them, so rows become visible in
-- revision order. The PostgreSQL schema has the same table and keys.

CREATE TABLE entry_changes (
    revision   BIGINT NOT NULL,
    entry_id   TEXT NOT NULL,
    -- Unix seconds, for pruning.
    changed_at BIGINT NOT NULL
);

CREATE INDEX entry_changes_revision ON entry_changes (revision);

-- The highest revision whose entry_changes rows were pruned. A reader that last saw an older
-- revision cannot tell what changed since and must read every entry again.
CREATE TABLE entry_changes_horizon (
    revision BIGINT NOT NULL
);

INSERT INTO entry_changes_horizon (revision) VALUES (0);
