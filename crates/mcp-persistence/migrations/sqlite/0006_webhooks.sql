-- Outgoing webhooks and their delivery log. See mcp-core's webhooks.rs. Same conventions as the
-- task table: ids are hyphenated UUID text, instants are microseconds since the epoch, JSON is
-- text. The secret is sealed by the SecretBox, never stored in the clear.
CREATE TABLE webhooks (
    id            TEXT    PRIMARY KEY NOT NULL,
    url           TEXT    NOT NULL,
    events        TEXT    NOT NULL,
    secret_sealed TEXT    NOT NULL,
    enabled       INTEGER NOT NULL DEFAULT 1,
    created_by    TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    failing_since INTEGER,
    disabled_at   INTEGER
);

CREATE TABLE webhook_deliveries (
    id              TEXT    PRIMARY KEY NOT NULL,
    webhook_id      TEXT    NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_type      TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    response_code   INTEGER,
    error           TEXT,
    created_at      INTEGER NOT NULL,
    last_attempt_at INTEGER,
    delivered_at    INTEGER
);

CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, created_at DESC);
