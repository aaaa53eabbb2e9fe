-- Cheaper index inserts for the issuance log, which inserts a row per issued credential.
--
-- Serials and JWT IDs compare by bytes. Both are ASCII tokens with no
-- linguistic order, and under a database locale every insert into their indexes paid for
-- locale-aware comparisons. Equality is the same under both
-- collations, so lookups return the same rows.
--
-- PostgreSQL keeps the table's rows as they are but rebuilds both indexes, and the table stays
-- locked for reads and writes until the migration commits: about a second per million rows
-- on a 2-vCPU machine.
ALTER TABLE issuance_log ALTER COLUMN serial TYPE TEXT COLLATE "C";
ALTER TABLE issuance_log ALTER COLUMN jti TYPE TEXT COLLATE "C";

-- The time index only serves the revocation scan, which looks for the first record at or
-- after a time. Records are appended in about the order of their times, so a BRIN index finds
-- that record by reading the block ranges of the scan's window, and an insert costs a fraction
-- of a B-tree insert. A BRIN index covers a block range only once it is summarized, and a
-- scan reads every unsummarized range in full. So the scan first summarizes the full ranges
-- added since the last summary (`brin_summarize_new_values`), and what it reads in full is the
-- last range, at most 1 MiB. Autosummarize is left off: only autovacuum carries it out, and
-- with autovacuum off the server logs a warning for every new block range.
DROP INDEX issuance_log_time;
CREATE INDEX issuance_log_time ON issuance_log USING brin (time_unix_ms);
