-- Schedules (cron + time zone + task template). Each node's scheduler claims a due firing by
-- moving `next_fire_at` conditionally; the partial index serves "what is due" and "when next".
CREATE TABLE schedules (
    name          text PRIMARY KEY,
    cron          text NOT NULL,
    timezone      text NOT NULL,
    task          jsonb NOT NULL,
    missed        text NOT NULL,
    max_backfill  integer NOT NULL,
    jitter_ms     bigint NOT NULL,
    paused        boolean NOT NULL,
    next_fire_at  timestamptz,
    last_fired_at timestamptz,
    source        text NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE NOT paused AND next_fire_at IS NOT NULL;

-- Paused queues: their tasks are accepted and stay queued; claims skip them on every node.
CREATE TABLE queue_pauses (
    queue     text PRIMARY KEY,
    paused_at timestamptz NOT NULL
);

-- Rate limits per task type, cluster-wide: at most `max` starts per `per_ms` window. The
-- claim transaction locks the row and counts starts in the current fixed window.
CREATE TABLE task_limits (
    type         text PRIMARY KEY,
    max          integer NOT NULL,
    per_ms       bigint NOT NULL,
    window_start timestamptz NOT NULL DEFAULT now(),
    window_count integer NOT NULL DEFAULT 0
);
