//! What every memory handler does around the store: find the conversation it names, and publish
//! each change.

use super::rules::{conversation_id, conversation_not_found};
use crate::error::ApiError;
use crate::request_id;
use crate::state::AppState;
use mcp_core::memory::Conversation;
use serde_json::Value;
use uuid::Uuid;
pub(super) async fn existing(state: &AppState, id: &str) -> Result<Conversation, ApiError> {
    state
        .memory
        .conversation(conversation_id(id)?)
        .await?
        .ok_or_else(|| conversation_not_found(id))
}

/// The emit point of the memory service: every change is an event on `conversation:{id}` and on
/// `memory` (every conversation's changes: outgoing webhooks follow it). Publishing is best
/// effort: the change is stored already, and a subscriber that missed the event resyncs through
/// REST.
pub(super) async fn emit(state: &AppState, conversation_id: Uuid, event_type: &str, data: Value) {
    let event = std::sync::Arc::new(mcp_core::events::Event::new(
        event_type,
        data,
        request_id::current(),
    ));
    for channel in [
        format!("conversation:{conversation_id}"),
        "memory".to_owned(),
    ] {
        if let Err(e) = state.events.publish(&channel, event.clone()).await {
            tracing::warn!(error = %e, %channel, event = event_type, "event not published");
        }
    }
}
