-- Integrations configured through the API. `secrets` is a JSON object of secret name -> value
-- sealed by the SecretBox; settings hold nothing secret.
CREATE TABLE integrations (
    name       TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    settings   JSONB NOT NULL,
    secrets    JSONB NOT NULL,
    enabled    BOOLEAN NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
