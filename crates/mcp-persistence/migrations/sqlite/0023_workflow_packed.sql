-- A deferred chunk's tasks are now written compressed by this program (LZ4, `packed`), as on
-- PostgreSQL (migration 0029 there): a fraction of the JSON's size goes through the WAL. `tasks`
-- (which SQLite cannot make nullable in place) is '' for those; chunks stored before keep
-- their JSON there and are read as they were.
ALTER TABLE workflow_deferred ADD COLUMN packed BLOB;
