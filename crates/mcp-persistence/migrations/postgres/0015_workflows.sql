-- Workflows: DAGs of tasks by key (mcp-core's workflow.rs). A workflow task waits (status
-- `waiting`) while `waiting_on` of its dependencies have not settled; the transaction that
-- settles the last one makes it `queued` and notifies the claim loops. Progress is the latest
-- report of a running task.
ALTER TABLE tasks DROP CONSTRAINT tasks_status_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_status_check CHECK (status IN
    ('scheduled', 'queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled', 'waiting'));

CREATE TABLE workflows (
    id             uuid        PRIMARY KEY,
    name           text        NOT NULL,
    status         text        NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
    on_failure     text        NOT NULL CHECK (on_failure IN ('cancel_dependents', 'continue')),
    created_by     text,
    share_key      text,
    correlation_id text,
    created_at     timestamptz NOT NULL,
    finished_at    timestamptz
);
CREATE INDEX workflows_created_by ON workflows (created_by, id);

ALTER TABLE tasks ADD COLUMN workflow_id uuid;
ALTER TABLE tasks ADD COLUMN workflow_key text;
ALTER TABLE tasks ADD COLUMN waiting_on integer NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN progress jsonb;
CREATE INDEX tasks_workflow ON tasks (workflow_id) WHERE workflow_id IS NOT NULL;
-- A workflow's unfinished tasks: settling asks whether any is left after every batch of outcomes,
-- which must not read the whole workflow each time (a 10,000-task fan-in would cost O(n²)).
CREATE INDEX tasks_workflow_open ON tasks (workflow_id)
    WHERE workflow_id IS NOT NULL AND status NOT IN ('succeeded', 'dead', 'cancelled');

-- One row per dependency: `task_id` waits for `depends_on`. `settled` once the dependency's
-- final status was applied to `task_id` (so settling twice changes nothing).
CREATE TABLE workflow_edges (
    task_id    uuid NOT NULL,
    depends_on uuid NOT NULL,
    settled    boolean NOT NULL DEFAULT false,
    PRIMARY KEY (task_id, depends_on)
);
CREATE INDEX workflow_edges_depends_on ON workflow_edges (depends_on, task_id);
