-- Tasks: the orchestrator's durable queue. See mcp-core's task.rs for the lifecycle.
CREATE TABLE tasks (
    id                uuid PRIMARY KEY,
    type              text        NOT NULL,
    queue             text        NOT NULL,
    priority          integer     NOT NULL DEFAULT 0,
    payload           jsonb       NOT NULL,
    status            text        NOT NULL CHECK (status IN
                          ('scheduled', 'queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled')),
    attempts          integer     NOT NULL DEFAULT 0,
    max_attempts      integer     NOT NULL,
    backoff_base_ms   bigint      NOT NULL,
    backoff_max_ms    bigint      NOT NULL,
    run_at            timestamptz NOT NULL,
    timeout_ms        bigint      NOT NULL,
    idempotency_key   text,
    concurrency_key   text,
    concurrency_limit integer,
    correlation_id    text,
    result            jsonb,
    error             jsonb,
    lease_owner       text,
    lease_expires_at  timestamptz,
    created_at        timestamptz NOT NULL,
    started_at        timestamptz,
    finished_at       timestamptz
);

-- The claim path: runnable tasks in claim order. Partial, so finished tasks cost nothing.
CREATE INDEX tasks_runnable ON tasks (priority DESC, run_at, id)
    WHERE status IN ('queued', 'scheduled', 'failed');
-- Runnable tasks with a concurrency key: their presence sends claims down the admitting path.
CREATE INDEX tasks_runnable_keyed ON tasks (run_at)
    WHERE status IN ('queued', 'scheduled', 'failed') AND concurrency_key IS NOT NULL;
-- Waiting tasks by due time: tells the claim loop how long it may sleep.
CREATE INDEX tasks_waiting ON tasks (run_at) WHERE status IN ('scheduled', 'failed');
-- Running tasks by lease: heartbeats, completion checks and the rescuer (which reads this small
-- index whole). Every index here costs each claim and completion a write, so there are few.
CREATE INDEX tasks_running ON tasks (lease_owner, lease_expires_at) WHERE status = 'running';
CREATE INDEX tasks_running_concurrency ON tasks (concurrency_key)
    WHERE status = 'running' AND concurrency_key IS NOT NULL;
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;

-- New tasks wake the claim loops of every node (LISTEN "mcp_tasks.<schema>").
CREATE FUNCTION tasks_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mcp_tasks.' || TG_TABLE_SCHEMA, '');
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_inserted AFTER INSERT ON tasks
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_notify();
