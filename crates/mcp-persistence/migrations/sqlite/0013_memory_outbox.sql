-- Memory events through the webhook outbox, and who wrote each message; see the PostgreSQL
-- migration. SQLite cannot drop a NOT NULL, so `outbox` is rebuilt. Its ids name deliveries
-- (with the webhook's id) and must never be used again, so the AUTOINCREMENT counter is carried
-- over to the new table.
CREATE TABLE outbox_new (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_type     TEXT    NOT NULL,
    task           TEXT,
    data           TEXT,
    correlation_id TEXT,
    at             INTEGER NOT NULL,
    claimed_until  INTEGER,
    CHECK ((task IS NULL) <> (data IS NULL))
);
INSERT INTO outbox_new (id, event_type, task, correlation_id, at, claimed_until)
    SELECT id, event_type, task, correlation_id, at, claimed_until FROM outbox;
DELETE FROM sqlite_sequence WHERE name = 'outbox_new';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'outbox_new', seq FROM sqlite_sequence WHERE name = 'outbox';
DROP TABLE outbox;
ALTER TABLE outbox_new RENAME TO outbox;

ALTER TABLE messages ADD COLUMN created_by TEXT;
