-- The PostgreSQL server version a release ran on (`server_version` of live
-- at preflight), so a failure report names it (issue 14). NULL in records
-- written before.
ALTER TABLE releases ADD COLUMN server_version TEXT;
