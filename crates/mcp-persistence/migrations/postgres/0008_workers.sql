-- The cluster's worker directory (mcp-core's routing/directory.rs): one row per external worker
-- connected to a node, written by that node. One row per worker rather than per node and type:
-- a worker comes and goes as one, and its load belongs to it, not to each of its types; a
-- cluster has tens or hundreds of workers, so finding a type's rows scans a small table.
-- A row is live until `expires_at` (reckoned by this database's clock, never a node's); its node
-- republishes it every third of the lease, so a dead node's workers vanish within the lease.
CREATE TABLE workers (
    node        text        NOT NULL,
    id          bigint      NOT NULL,
    subject     text        NOT NULL,
    types       text[]      NOT NULL,
    concurrency integer     NOT NULL,
    outstanding integer     NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (node, id)
);

CREATE INDEX workers_by_expiry ON workers (expires_at);
