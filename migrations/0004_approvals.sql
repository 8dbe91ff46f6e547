-- Approvals of rehearsed plans: a person (or CI) approves a plan hash whose
-- latest rehearsal passed. Releases (issue 5) consume them.
CREATE TABLE approvals (
    id            TEXT PRIMARY KEY,
    target        TEXT NOT NULL,
    plan_hash     TEXT NOT NULL,
    rehearsal_id  TEXT NOT NULL,
    approved_by   TEXT NOT NULL,
    note          TEXT,
    approved_at   TEXT NOT NULL,
    expires_at    TEXT NOT NULL
);

CREATE INDEX approvals_target ON approvals (target, approved_at);
