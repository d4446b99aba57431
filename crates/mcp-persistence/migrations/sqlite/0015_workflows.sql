-- Workflows: DAGs of tasks by key (mcp-core's workflow.rs). A workflow task waits (status
-- `waiting`) while `waiting_on` of its dependencies have not settled; the transaction that
-- settles the last one makes it `queued`. Progress is the latest report of a running task.

CREATE TABLE workflows (
    id             TEXT    PRIMARY KEY NOT NULL,
    name           TEXT    NOT NULL,
    status         TEXT    NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
    on_failure     TEXT    NOT NULL CHECK (on_failure IN ('cancel_dependents', 'continue')),
    created_by     TEXT,
    share_key      TEXT,
    correlation_id TEXT,
    created_at     INTEGER NOT NULL
);
CREATE INDEX workflows_created_by ON workflows (created_by, id);

ALTER TABLE tasks ADD COLUMN workflow_id TEXT;
ALTER TABLE tasks ADD COLUMN workflow_key TEXT;
ALTER TABLE tasks ADD COLUMN waiting_on INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN progress TEXT;
CREATE INDEX tasks_workflow ON tasks (workflow_id) WHERE workflow_id IS NOT NULL;
-- A workflow's unfinished tasks: settling asks whether any is left after every batch of outcomes,
-- which must not read the whole workflow each time (a 10,000-task fan-in would cost O(n²)).
CREATE INDEX tasks_workflow_open ON tasks (workflow_id)
    WHERE workflow_id IS NOT NULL AND status NOT IN ('succeeded', 'dead', 'cancelled');

-- One row per dependency: `task_id` waits for `depends_on`. `settled` once the dependency's
-- final status was applied to `task_id` (so settling twice changes nothing).
CREATE TABLE workflow_edges (
    task_id    TEXT NOT NULL,
    depends_on TEXT NOT NULL,
    settled    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, depends_on)
) WITHOUT ROWID;
CREATE INDEX workflow_edges_depends_on ON workflow_edges (depends_on, task_id);

-- `waiting` joins the statuses. SQLite cannot alter a CHECK constraint, and rebuilding `tasks`
-- would have to name every column other migrations add, so the constraint's text is edited in
-- place: SQLite documents this for changes that leave the stored rows valid, as a looser CHECK
-- does. It comes after every `ALTER TABLE tasks` here (those place new columns by offsets into
-- the text as parsed), and the `ALTER TABLE` after it makes this connection parse the schema
-- again, so later migrations see the edited text.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
   SET sql = replace(sql, '''dead'', ''cancelled'')', '''dead'', ''cancelled'', ''waiting'')')
 WHERE type = 'table' AND name = 'tasks' AND sql NOT LIKE '%''waiting''%';
PRAGMA writable_schema = OFF;

-- Also the re-parse of the schema the edit above needs (see there).
ALTER TABLE workflows ADD COLUMN finished_at INTEGER;
