-- The claim's fast path, one statement, is exact while no runnable task has a concurrency key;
-- this index answers that check by reading one entry (PostgreSQL has had it since 0001).
CREATE INDEX tasks_runnable_keyed ON tasks (run_at)
    WHERE status IN ('queued', 'scheduled', 'failed') AND concurrency_key IS NOT NULL;
