-- The issuance log's time index becomes a BRIN index. Records are appended in time order, so a
-- block range summary (the minimum and maximum time of 32 pages) finds the records of the last
-- credential lifetime for revocation scans, while an append no longer inserts into a B-tree.
-- With autosummarize, autovacuum summarizes each range soon after appends move past it. A
-- scan reads every range not yet summarized, which is normally only the newest one.
-- The SQLite schema keeps its B-tree, because SQLite has no BRIN.

DROP INDEX issuance_log_time;
CREATE INDEX issuance_log_time ON issuance_log USING brin (time_unix_ms) WITH (pages_per_range = 32, autosummarize = on);
