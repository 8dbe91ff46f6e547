-- Releases (issue 5): one row per `apply`, whatever its outcome, with what
-- the daemon's reports and metrics need (outcome, reason, timings, the
-- migrations run, the recovery taken). The journal records every step
-- before it is taken, so that a crash at any point can be finished safely.
CREATE TABLE releases (
    id               TEXT PRIMARY KEY,
    target           TEXT NOT NULL,
    plan_hash        TEXT NOT NULL,
    -- SHA-256 over the pending migrations' versions and checksums only:
    -- the same for every target (promotion compares it).
    content_hash     TEXT NOT NULL,
    approval_id      TEXT,
    rehearsal_id     TEXT,
    database         TEXT NOT NULL,
    on_failure       TEXT NOT NULL,
    -- running | applied | rolled_back | restored | halted | refused | aborted | nothing_pending
    outcome          TEXT NOT NULL,
    reason           TEXT,
    error_kind       TEXT,
    pre_snapshot_id  TEXT,
    failed_database  TEXT,
    recovery         TEXT,
    started_at       TEXT NOT NULL,
    finished_at      TEXT,
    pid              INTEGER NOT NULL,
    host             TEXT NOT NULL,
    -- JSON: what ran, per migration; the step timings; post-check warnings.
    migrations       TEXT NOT NULL DEFAULT '[]',
    timings          TEXT NOT NULL DEFAULT '{}',
    warnings         TEXT NOT NULL DEFAULT '[]',
    pending          TEXT NOT NULL DEFAULT '[]'
);

CREATE INDEX releases_target ON releases (target, started_at);

CREATE TABLE release_journal (
    release_id  TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    step        TEXT NOT NULL,
    detail      TEXT,
    at          TEXT NOT NULL,
    PRIMARY KEY (release_id, seq)
);

-- What a rehearsal's plan left on the copy, for the release's post-checks:
-- the schema (pg_dump --schema-only --no-owner --no-privileges, noise
-- removed) and the NOT VALID constraints.
ALTER TABLE rehearsals ADD COLUMN schema_after TEXT;
ALTER TABLE rehearsals ADD COLUMN not_valid TEXT;
