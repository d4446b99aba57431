-- A deferred chunk's tasks are now written compressed by this program (LZ4, `packed`): a
-- fifth of the JSON's size crosses the connection both ways, and PostgreSQL stores it as it
-- comes (compressing it again would gain nothing). `tasks` stays for chunks stored before,
-- which are read as they were.
ALTER TABLE workflow_deferred ADD COLUMN packed bytea;
ALTER TABLE workflow_deferred ALTER COLUMN packed SET STORAGE EXTERNAL;
ALTER TABLE workflow_deferred ALTER COLUMN tasks DROP NOT NULL;
