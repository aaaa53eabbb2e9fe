-- No change on SQLite: the PostgreSQL migration of the same number turns the issuance log's
-- time index into a BRIN index, which SQLite does not have. This statement only keeps the
-- version numbers of both backends equal.

SELECT 1;
