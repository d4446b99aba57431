-- The deny-list of revoked credentials (see mcp-core's revocations.rs): one row per subject,
-- session (refresh token family) or API key. Every node reads the rows recorded since its last
-- read, so `recorded_at` (microseconds since the epoch, by the store's clock) is indexed.
CREATE TABLE revocations (
    kind        TEXT    NOT NULL CHECK (kind IN ('subject', 'session', 'api_key')),
    target      TEXT    NOT NULL,
    not_before  INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (kind, target)
);
CREATE INDEX revocations_recorded ON revocations (recorded_at);
