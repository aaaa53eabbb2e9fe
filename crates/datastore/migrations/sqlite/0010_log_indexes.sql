-- SQLite compares text with the BINARY collation unless told otherwise, so its serial and JWT
-- ID columns already compare by bytes, and it has no BRIN indexes: its issuance log keeps the
-- B-tree time index. This version keeps both backends' schema versions in step.
SELECT 1;
