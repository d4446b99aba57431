-- Settling asks whether a workflow has a task left that is not final only when it saw none of
-- its tasks still waiting or just released (in a fan-in, only for the join's batch), so that
-- question no longer needs an index of its own: `tasks_workflow` answers it. This one cost an
-- entry at every insert, release and claim of a workflow task (each a new row version), about
-- a quarter of releasing or claiming 10,000 of them.
DROP INDEX IF EXISTS tasks_workflow_open;
