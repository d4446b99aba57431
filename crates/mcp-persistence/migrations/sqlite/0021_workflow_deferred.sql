-- A workflow's tasks that have dependencies are kept out of `tasks` until one of their
-- dependencies settles (as on PostgreSQL, migration 0025 there): storing them as rows with
-- their edges, then releasing them, were the two largest costs of a 10,000-task fan-out. A
-- chunk holds up to 1,000 of them as JSON (`tasks`, everything their rows and edges will hold),
-- beside their ids, the distinct tasks they depend on (`parents`: settling one of those writes
-- the chunk's tasks as rows, each `queued` at once if its dependencies have all succeeded) and
-- their queues (counted as `waiting`), each a JSON array. Anything that reads or changes one of
-- them (a task's read, a list, the workflow's detail, cancel, extend, retry) writes its
-- workflow's chunks first, as `waiting` rows.
CREATE TABLE workflow_deferred (
    workflow_id TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    ids         TEXT    NOT NULL,
    parents     TEXT    NOT NULL,
    queues      TEXT    NOT NULL,
    tasks       TEXT    NOT NULL,
    PRIMARY KEY (workflow_id, seq)
);
