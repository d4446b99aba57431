-- The webhook outbox and pending Discord follow-ups; see the PostgreSQL migration. Same
-- conventions as the task table: ids are hyphenated UUID text, instants are microseconds since
-- the epoch, JSON is text.
CREATE TABLE outbox (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_type     TEXT    NOT NULL,
    task           TEXT    NOT NULL,
    correlation_id TEXT,
    at             INTEGER NOT NULL,
    claimed_until  INTEGER
);

CREATE TABLE discord_followups (
    task_id    TEXT    PRIMARY KEY NOT NULL,
    sealed     TEXT    NOT NULL,
    created_by TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
