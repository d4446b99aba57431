-- A deferred chunk's tasks are JSON that this program wrote and alone reads: `text` stores them
-- without PostgreSQL parsing them again on the way in (a fifth of storing a 10,000-task
-- workflow, round 8 of docs/BENCHMARKS.md). Still kept uncompressed.
ALTER TABLE workflow_deferred ALTER COLUMN tasks TYPE text;
ALTER TABLE workflow_deferred ALTER COLUMN tasks SET STORAGE EXTERNAL;

-- Settling a dependency writes the first chunk holding its dependents in its own transaction
-- and marks the others released (`ready_at`): any node's release loop writes them next, one
-- transaction each, while the first ones run (postgres/workflows.rs).
ALTER TABLE workflow_deferred ADD COLUMN ready_at timestamptz;
CREATE INDEX workflow_deferred_ready ON workflow_deferred (ready_at) WHERE ready_at IS NOT NULL;
