-- A workflow task's dependencies and dependents are arrays on its own row instead of one row per
-- edge in `workflow_edges`: storing a 10,000-task fan-out/fan-in wrote 20,000 edge rows and
-- their two indexes, half the time of storing the workflow. Settling a dependency reads its
-- `dependents` from the row the settling already locates; `settled` says its final status was
-- applied to them (settling twice changes nothing), one flag per dependency instead of one per
-- edge. No index holds these columns.
--
-- A workflow lists its tasks (`task_ids`), so the index on `tasks.workflow_id` goes: it took an
-- entry at every insert, release, claim and completion of a workflow task (each a new row
-- version), a quarter of releasing 10,000 of them. Reading a workflow's tasks goes through the
-- primary key instead.
ALTER TABLE tasks ADD COLUMN depends_on uuid[];
ALTER TABLE tasks ADD COLUMN dependents uuid[];
ALTER TABLE tasks ADD COLUMN settled boolean NOT NULL DEFAULT false;

UPDATE tasks t SET depends_on = e.ids
FROM (SELECT task_id, array_agg(depends_on ORDER BY depends_on) AS ids
      FROM workflow_edges GROUP BY task_id) e
WHERE t.id = e.task_id;

-- A dependency counts as settled while all of its edges are: settling marks them all at once,
-- and a retry that revives dependents marks theirs unsettled again (its next end applies to
-- them).
UPDATE tasks t SET dependents = e.ids, settled = e.all_settled
FROM (SELECT depends_on, array_agg(task_id ORDER BY task_id) AS ids,
             bool_and(settled) AS all_settled
      FROM workflow_edges GROUP BY depends_on) e
WHERE t.id = e.depends_on;

DROP TABLE workflow_edges;

ALTER TABLE workflows ADD COLUMN task_ids uuid[] NOT NULL DEFAULT '{}';
UPDATE workflows w SET task_ids = t.ids
FROM (SELECT workflow_id, array_agg(id ORDER BY id) AS ids FROM tasks
      WHERE workflow_id IS NOT NULL GROUP BY workflow_id) t
WHERE w.id = t.workflow_id;
DROP INDEX tasks_workflow;
