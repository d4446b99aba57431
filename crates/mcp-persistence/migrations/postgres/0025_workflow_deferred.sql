-- A workflow's tasks that have dependencies are kept out of `tasks` until one of their
-- dependencies settles: storing them as rows, then releasing them (a second version of every
-- row), were the two largest costs of a 10,000-task fan-out. A chunk holds up to 1,000 of them
-- as JSON (`tasks`, everything their rows will hold), beside their ids, the distinct tasks they
-- depend on (`parents`: settling one of those writes the chunk's tasks as rows, each `queued`
-- at once if its dependencies have all succeeded) and their queues (counted as `waiting`).
-- Anything that reads or changes one of them (a task's read, a list, the workflow's detail,
-- cancel, extend, retry) writes its workflow's chunks first, as `waiting` rows.
CREATE TABLE workflow_deferred (
    workflow_id uuid    NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    seq         integer NOT NULL,
    ids         uuid[]  NOT NULL,
    parents     uuid[]  NOT NULL,
    queues      text[]  NOT NULL,
    tasks       json    NOT NULL,
    PRIMARY KEY (workflow_id, seq)
);
-- Written once and read once: compressing a few megabytes of JSON with pglz took longer than
-- the rest of storing them (round 5 of docs/BENCHMARKS.md).
ALTER TABLE workflow_deferred ALTER COLUMN tasks SET STORAGE EXTERNAL;
ALTER TABLE workflow_deferred ALTER COLUMN ids SET STORAGE EXTERNAL;
ALTER TABLE workflow_deferred ALTER COLUMN parents SET STORAGE EXTERNAL;
