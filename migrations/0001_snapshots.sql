-- The daemon's own state: never stored in the live database it may restore.
-- One row per snapshot run, whatever its outcome; prune reads the latest
-- outcome of each target and deletes nothing after a failed run.
CREATE TABLE snapshot_runs (
    id            TEXT PRIMARY KEY,              -- the snapshot id
    target        TEXT NOT NULL,
    reason        TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('running', 'ok', 'failed')),
    started_at    TEXT NOT NULL,                 -- RFC 3339, UTC
    finished_at   TEXT,
    pid           INTEGER NOT NULL,
    host          TEXT NOT NULL,
    dump_key      TEXT,
    bytes_raw     INTEGER,
    bytes_stored  INTEGER,
    sha256        TEXT,
    duration_ms   INTEGER,
    error         TEXT
);

CREATE INDEX snapshot_runs_target_started ON snapshot_runs (target, started_at);
