//! The columns each table is read by, in one order for both stores: a store's row structs list
//! their fields in this order, so a column added to a table is added to one list here.

pub(crate) const TASK_COLUMNS: &str = "id, type, queue, priority, payload, status, attempts, \
    max_attempts, backoff_base_ms, backoff_max_ms, run_at, timeout_ms, idempotency_key, \
    concurrency_key, concurrency_limit, correlation_id, created_by, result, error, created_at, started_at, \
    finished_at, share_key, workflow_id, workflow_key, progress, traceparent";
pub(crate) const USER_COLUMNS: &str =
    "id, username, role, password_hash, disabled, created_at, updated_at";
pub(crate) const API_KEY_COLUMNS: &str = "id, name, prefix, role, secret_hash, created_by, created_at, last_used_at, revoked_at, \
     worker_types";
pub(crate) const REFRESH_COLUMNS: &str =
    "id, family_id, user_id, token_hash, created_at, expires_at, used_at, revoked_at";
pub(crate) const CONVERSATION_COLUMNS: &str = "id, title, participants, metadata, archived, summary, \
    summary_through, summary_tokens, summary_updated_at, created_by, created_at, updated_at";
pub(crate) const MESSAGE_COLUMNS: &str =
    "id, conversation_id, author, role, content, metadata, pinned, tokens, created_at, created_by";
pub(crate) const WEBHOOK_COLUMNS: &str =
    "id, url, events, secret_sealed, enabled, created_by, created_at, failing_since, disabled_at";
pub(crate) const DELIVERY_COLUMNS: &str = "id, webhook_id, event_type, payload, status, attempts, \
    response_code, error, created_at, last_attempt_at, delivered_at";
pub(crate) const INTEGRATION_COLUMNS: &str = "name, kind, settings, secrets, enabled, updated_at";
pub(crate) const WORKFLOW_COLUMNS: &str =
    "id, name, status, on_failure, created_by, correlation_id, created_at, finished_at";

/// `columns` qualified by a table name or alias, for statements that join.
pub(crate) fn qualified(columns: &str, table: &str) -> String {
    columns
        .split(", ")
        .map(|c| format!("{table}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}
