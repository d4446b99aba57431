-- Settling a dependency writes the first chunk holding its dependents in its own transaction
-- and marks the others released (`ready_at`, microseconds): the release loop writes them next,
-- one transaction each, while the first ones run (sqlite/workflows.rs).
ALTER TABLE workflow_deferred ADD COLUMN ready_at INTEGER;
CREATE INDEX workflow_deferred_ready ON workflow_deferred (ready_at) WHERE ready_at IS NOT NULL;
