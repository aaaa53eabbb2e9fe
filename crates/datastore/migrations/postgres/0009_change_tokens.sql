-- A random token per value of the change counter, written in the transaction that sets that
-- value. Two databases with the same token for a revision have the same history up to it: a
-- promoted copy, or a standby of one, gives its later revisions tokens of its own. Servers
-- check read-only replicas and their own entry index against the primary's tokens. Rows are
-- pruned with the entry_changes rows.
CREATE TABLE change_tokens (
    revision BIGINT PRIMARY KEY NOT NULL,
    token    BIGINT NOT NULL
);

INSERT INTO change_tokens (revision, token) SELECT revision, (floor(random() * 9007199254740991))::bigint FROM changes;
