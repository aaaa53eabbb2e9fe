-- Cheaper index inserts for the issuance log, whose appends insert a row per credential.
--
-- Serials and JWT IDs compare by bytes. Both are ASCII tokens with no linguistic order, and
-- under a database locale every insert into their indexes paid for locale-aware comparisons.
-- Equality is the same under both collations, so lookups return the same rows. PostgreSQL
-- keeps the table's rows as they are and rebuilds the two indexes.
ALTER TABLE issuance_log ALTER COLUMN serial TYPE TEXT COLLATE "C";
ALTER TABLE issuance_log ALTER COLUMN jti TYPE TEXT COLLATE "C";

-- The time index only serves the revocation scan, which looks for the first record at or
-- after a time. Records are appended in about the order of their times, so a BRIN index finds
-- that record by reading the block ranges of the scan's window, and an insert costs a fraction
-- of a B-tree insert. autosummarize summarizes each block range soon after it fills, so the
-- unsummarized tail that every scan reads in full stays short.
DROP INDEX issuance_log_time;
CREATE INDEX issuance_log_time ON issuance_log USING brin (time_unix_ms) WITH (autosummarize = on);
