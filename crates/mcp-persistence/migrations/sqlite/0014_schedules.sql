-- Schedules (cron + time zone + task template). Each node's scheduler claims a due firing by
-- moving `next_fire_at` conditionally; the partial index serves "what is due" and "when next".
-- Instants are microseconds since the epoch.
CREATE TABLE schedules (
    name          TEXT PRIMARY KEY,
    cron          TEXT NOT NULL,
    timezone      TEXT NOT NULL,
    task          TEXT NOT NULL,
    missed        TEXT NOT NULL,
    max_backfill  INTEGER NOT NULL,
    jitter_ms     INTEGER NOT NULL,
    paused        INTEGER NOT NULL,
    next_fire_at  INTEGER,
    last_fired_at INTEGER,
    source        TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE paused = 0 AND next_fire_at IS NOT NULL;

-- Paused queues: their tasks are accepted and stay queued; claims skip them.
CREATE TABLE queue_pauses (
    queue     TEXT PRIMARY KEY,
    paused_at INTEGER NOT NULL
);

-- Rate limits per task type: at most `max` starts per `per_ms` window (a fixed window counted
-- in the claim transaction).
CREATE TABLE task_limits (
    type         TEXT PRIMARY KEY,
    max          INTEGER NOT NULL,
    per_ms       INTEGER NOT NULL,
    window_start INTEGER NOT NULL DEFAULT 0,
    window_count INTEGER NOT NULL DEFAULT 0
);
