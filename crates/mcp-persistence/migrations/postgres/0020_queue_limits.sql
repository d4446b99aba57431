-- Rate limits per queue, cluster-wide: at most `max` starts of the queue's tasks, whatever their
-- type, per `per_ms` window. Counted like `task_limits` (the claim locks the row).
CREATE TABLE queue_limits (
    queue        text PRIMARY KEY,
    max          integer NOT NULL,
    per_ms       bigint NOT NULL,
    window_start timestamptz NOT NULL DEFAULT now(),
    window_count integer NOT NULL DEFAULT 0
);
