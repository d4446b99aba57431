-- Task statistics (`GET /v1/stats`) read the tasks that finished in a recent window. A BRIN
-- index, not a B-tree: the B-tree on `finished_at` was dropped for the cost it added to every
-- outcome write (docs/BENCHMARKS.md), while a BRIN index is a few pages whose summaries an
-- outcome write rarely touches. A task's newest row version is written when it finishes, so
-- `finished_at` follows the physical order closely enough for block ranges to skip the rest.
CREATE INDEX tasks_finished ON tasks USING brin (finished_at);
