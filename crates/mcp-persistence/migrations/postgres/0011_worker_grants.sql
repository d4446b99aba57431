-- What an API key's workers may serve (mcp-core's worker_types.rs): task type patterns, exact
-- names or prefixes ending in `*`. NULL: every type meant for external workers (every key made
-- before this column existed keeps that); an empty array: none.
ALTER TABLE api_keys ADD COLUMN worker_types text[];
