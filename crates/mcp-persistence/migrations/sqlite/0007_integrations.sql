-- Integrations configured through the API. `secrets` is a JSON object of secret name -> value
-- sealed by the SecretBox; settings hold nothing secret.
CREATE TABLE integrations (
    name       TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    settings   TEXT NOT NULL,
    secrets    TEXT NOT NULL,
    enabled    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
