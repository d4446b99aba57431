-- A workflow task's completion marks it `settled` in its own statement and must tell whether it
-- was settled before (a task retried by hand after its end was applied under `continue`): its
-- dependents counted that end already. `RETURNING` shows only the new row, so the completion
-- also writes the old flag here, read back from what it returns. Before, a subquery looked each
-- completed row up again (one index probe per task, about a sixth of a workflow completion).
-- No default: adding it rewrites nothing.
ALTER TABLE tasks ADD COLUMN settled_before boolean;

-- The other arrays of random ids that never compress (as 0027): a workflow's task ids (10,000
-- of them for a 10,000-task workflow, written once at its creation) and a deferred chunk's.
ALTER TABLE workflows ALTER COLUMN task_ids SET STORAGE EXTERNAL;
ALTER TABLE workflow_deferred ALTER COLUMN ids SET STORAGE EXTERNAL;
ALTER TABLE workflow_deferred ALTER COLUMN parents SET STORAGE EXTERNAL;
