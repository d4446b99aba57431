-- Rate limits per queue: at most `max` starts of the queue's tasks, whatever their type, per
-- `per_ms` window (a fixed window counted in the claim transaction, like `task_limits`).
CREATE TABLE queue_limits (
    queue        TEXT PRIMARY KEY,
    max          INTEGER NOT NULL,
    per_ms       INTEGER NOT NULL,
    window_start INTEGER NOT NULL DEFAULT 0,
    window_count INTEGER NOT NULL DEFAULT 0
);
