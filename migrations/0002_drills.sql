-- Databases pgrehearse created on shadow servers. pgrehearse only ever drops
-- databases recorded here, and drops leftovers of dead runs at start-up.
CREATE TABLE shadow_databases (
    name          TEXT NOT NULL,
    target        TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('scratch', 'template')),
    snapshot_id   TEXT,
    pid           INTEGER NOT NULL,
    host          TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (target, name)
);

-- One row per restore drill (verify).
CREATE TABLE verifications (
    id                   TEXT PRIMARY KEY,
    target               TEXT NOT NULL,
    snapshot_id          TEXT NOT NULL,
    started_at           TEXT NOT NULL,
    finished_at          TEXT,
    ok                   INTEGER,
    method               TEXT,
    restore_duration_ms  INTEGER,
    tables_checked       INTEGER,
    mismatches           TEXT,                  -- JSON array of strings
    error                TEXT
);

CREATE INDEX verifications_snapshot ON verifications (target, snapshot_id, started_at);
