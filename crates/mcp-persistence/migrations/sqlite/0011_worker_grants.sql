-- What an API key's workers may serve (mcp-core's worker_types.rs); see the PostgreSQL
-- migration. A JSON array of patterns as text; NULL: every type meant for external workers.
ALTER TABLE api_keys ADD COLUMN worker_types TEXT;
