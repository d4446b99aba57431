-- A deferred chunk's tasks are now written compressed by this program (LZ4, `packed`): a
-- fraction of the JSON's size crosses the connection both ways (19 kB instead of 345 kB for
-- 1,000 tasks of `bench workflows`), and PostgreSQL stores it as it comes (compressing it again
-- would gain nothing). `tasks` stays for chunks stored before, which are read as they were.
ALTER TABLE workflow_deferred ADD COLUMN packed bytea;
ALTER TABLE workflow_deferred ALTER COLUMN packed SET STORAGE EXTERNAL;
ALTER TABLE workflow_deferred ALTER COLUMN tasks DROP NOT NULL;
