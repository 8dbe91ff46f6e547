-- The performance watch after a release (issue 16): live's
-- pg_stat_statements sampled when the release started and when it ended
-- (query ids, counters and the normalized first line only, as JSON), when
-- the watch period ends, and the comparison once made. One row per release
-- of a target with `watch_after`; a release that did not apply has none.
CREATE TABLE release_watches (
    release_id TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    status TEXT NOT NULL,
    note TEXT,
    start_sample TEXT,
    end_sample TEXT,
    until TEXT,
    result TEXT,
    updated_at TEXT NOT NULL
);
CREATE INDEX release_watches_due ON release_watches (target, status, until);
