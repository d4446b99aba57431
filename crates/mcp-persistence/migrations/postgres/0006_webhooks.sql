-- Outgoing webhooks and their delivery log. See mcp-core's webhooks.rs. The secret is sealed by
-- the SecretBox, never stored in the clear.
CREATE TABLE webhooks (
    id            uuid        PRIMARY KEY,
    url           text        NOT NULL,
    events        jsonb       NOT NULL,
    secret_sealed text        NOT NULL,
    enabled       boolean     NOT NULL DEFAULT true,
    created_by    text        NOT NULL,
    created_at    timestamptz NOT NULL,
    failing_since timestamptz,
    disabled_at   timestamptz
);

CREATE TABLE webhook_deliveries (
    id              uuid        PRIMARY KEY,
    webhook_id      uuid        NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_type      text        NOT NULL,
    payload         jsonb       NOT NULL,
    status          text        NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    response_code   integer,
    error           text,
    created_at      timestamptz NOT NULL,
    last_attempt_at timestamptz,
    delivered_at    timestamptz
);

CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, created_at DESC);
