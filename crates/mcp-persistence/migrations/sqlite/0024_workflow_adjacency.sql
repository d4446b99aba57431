-- As PostgreSQL's 0024 and 0028: a workflow task's dependencies and dependents are JSON arrays
-- of ids on its own row instead of one row per edge in `workflow_edges`. A 10,000-task
-- fan-out/fan-in wrote 20,000 edge rows with their index, and settling each batch of 500 of its
-- fan marked 500 of the join's edges settled: together a third of what the workflow cost beyond
-- as many plain tasks (`bench workflows`). Settling a dependency reads its `dependents` from the
-- row its completion already changes; `settled` says its final status was applied to them
-- (settling twice changes nothing), one flag per dependency instead of one per edge, set by the
-- completion itself. `settled_before` is the flag as the completion found it (every assignment
-- of an `UPDATE` reads the old row; `RETURNING` shows the new one). No index holds these
-- columns.
ALTER TABLE tasks ADD COLUMN depends_on TEXT;
ALTER TABLE tasks ADD COLUMN dependents TEXT;
ALTER TABLE tasks ADD COLUMN settled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN settled_before INTEGER;

UPDATE tasks SET depends_on = e.ids
FROM (SELECT task_id, json_group_array(depends_on) AS ids
      FROM (SELECT task_id, depends_on FROM workflow_edges ORDER BY task_id, depends_on)
      GROUP BY task_id) AS e
WHERE tasks.id = e.task_id;

-- A dependency counts as settled while all of its edges are: settling marked them all at once,
-- and a retry that revived dependents marked theirs unsettled again (its next end applies to
-- them).
UPDATE tasks SET dependents = e.ids, settled = e.all_settled
FROM (SELECT depends_on, json_group_array(task_id) AS ids, min(settled) AS all_settled
      FROM (SELECT task_id, depends_on, settled FROM workflow_edges ORDER BY depends_on, task_id)
      GROUP BY depends_on) AS e
WHERE tasks.id = e.depends_on;

DROP TABLE workflow_edges;
