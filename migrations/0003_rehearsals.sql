-- One row per rehearsal; the full report is kept as JSON (and in the store).
CREATE TABLE rehearsals (
    id           TEXT PRIMARY KEY,
    target       TEXT NOT NULL,
    plan_hash    TEXT,
    snapshot_id  TEXT,
    started_at   TEXT NOT NULL,
    finished_at  TEXT,
    pid          INTEGER NOT NULL,
    host         TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('running', 'passed', 'problems', 'error')),
    report       TEXT,                  -- JSON, when finished
    error        TEXT
);

CREATE INDEX rehearsals_target ON rehearsals (target, started_at);
CREATE INDEX rehearsals_plan ON rehearsals (target, plan_hash, started_at);

-- Checksums of applied migrations as pgrehearse first saw them, for tools
-- whose history table keeps none (diesel, payload): an edit afterwards is drift.
CREATE TABLE applied_checksums (
    target      TEXT NOT NULL,
    version     TEXT NOT NULL,
    checksum    TEXT NOT NULL,
    first_seen  TEXT NOT NULL,
    PRIMARY KEY (target, version)
);
