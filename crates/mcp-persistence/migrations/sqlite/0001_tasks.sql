-- Tasks: the orchestrator's durable queue. See mcp-core's task.rs for the lifecycle.
-- Ids are hyphenated UUIDv7 text (sorts by creation), instants are microseconds since the epoch,
-- JSON is text.
CREATE TABLE tasks (
    id                TEXT    PRIMARY KEY NOT NULL,
    type              TEXT    NOT NULL,
    queue             TEXT    NOT NULL,
    priority          INTEGER NOT NULL DEFAULT 0,
    payload           TEXT    NOT NULL,
    status            TEXT    NOT NULL CHECK (status IN
                          ('scheduled', 'queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled')),
    attempts          INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL,
    backoff_base_ms   INTEGER NOT NULL,
    backoff_max_ms    INTEGER NOT NULL,
    run_at            INTEGER NOT NULL,
    timeout_ms        INTEGER NOT NULL,
    idempotency_key   TEXT,
    concurrency_key   TEXT,
    concurrency_limit INTEGER,
    correlation_id    TEXT,
    result            TEXT,
    error             TEXT,
    lease_owner       TEXT,
    lease_expires_at  INTEGER,
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER
);

CREATE INDEX tasks_runnable ON tasks (priority DESC, run_at, id)
    WHERE status IN ('queued', 'scheduled', 'failed');
CREATE INDEX tasks_waiting ON tasks (run_at) WHERE status IN ('scheduled', 'failed');
CREATE INDEX tasks_running ON tasks (lease_owner, lease_expires_at) WHERE status = 'running';
CREATE INDEX tasks_running_concurrency ON tasks (concurrency_key)
    WHERE status = 'running' AND concurrency_key IS NOT NULL;
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;
