-- The writes a restore stranded in the failed database (issue 15): the
-- `stranded_writes` object apply --json and every report show (NULL when no
-- restore happened), and live's write counters taken before the pre-release
-- snapshot, which let the comparison skip tables nobody wrote.
ALTER TABLE releases ADD COLUMN stranded_writes TEXT;
ALTER TABLE releases ADD COLUMN write_counters TEXT;
