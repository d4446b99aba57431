-- The deny-list of revoked credentials (see mcp-core's revocations.rs): one row per subject,
-- session (refresh token family) or API key. Every node reads the rows recorded since its last
-- read, so `recorded_at` (the server's clock, whatever the clocks of the nodes) is indexed.
CREATE TABLE revocations (
    kind        text        NOT NULL CHECK (kind IN ('subject', 'session', 'api_key')),
    target      text        NOT NULL,
    not_before  timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (kind, target)
);
CREATE INDEX revocations_recorded ON revocations (recorded_at);
