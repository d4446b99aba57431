-- The cluster's worker directory (mcp-core's routing/directory.rs): one row per external worker
-- connected to a node, written by that node; see the PostgreSQL migration for why per worker.
-- Same conventions as the task table: instants are microseconds since the epoch, JSON is text
-- (`types` is a JSON array of task types).
CREATE TABLE workers (
    node        TEXT    NOT NULL,
    id          INTEGER NOT NULL,
    subject     TEXT    NOT NULL,
    types       TEXT    NOT NULL,
    concurrency INTEGER NOT NULL,
    outstanding INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (node, id)
);

CREATE INDEX workers_by_expiry ON workers (expires_at);
