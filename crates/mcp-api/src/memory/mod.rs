//! Memory routes: conversations (CRUD, export and import as JSON Lines), their messages (one or
//! a batch, pages both ways, pin and edit, delete), ranked full-text search, context windows and
//! summaries. Every change is published on the conversation's channel, `conversation:{id}`.

mod conversations;
mod messages;
mod search;
mod transfer;

pub use conversations::{ConversationList, SetSummary};
pub use mcp_core::services::memory::{
    CreateConversation, MemoryLimits, NewMessage, UpdateConversation, UpdateMessage,
};
pub use messages::{MessageBatch, MessageList};
pub use search::SearchResults;

use crate::access::Access::Requires;
use crate::endpoint::{Endpoint, endpoint};
use crate::state::AppState;
use mcp_core::principal::Permission;
use utoipa_axum::routes;

/// The routes of this module and who may call them.
pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![
        endpoint(
            Requires(Permission::MemoryWrite),
            routes!(conversations::create_conversation),
        ),
        endpoint(
            Requires(Permission::MemoryRead),
            routes!(conversations::list_conversations),
        ),
        endpoint(
            Requires(Permission::MemoryManage),
            routes!(transfer::import),
        )
        .body_limit(|state| state.memory.limits().max_import_bytes),
        endpoint(
            Requires(Permission::MemoryRead),
            routes!(conversations::get_conversation),
        ),
        endpoint(
            Requires(Permission::MemoryWrite),
            routes!(conversations::update_conversation),
        ),
        endpoint(
            Requires(Permission::MemoryManage),
            routes!(conversations::delete_conversation),
        ),
        endpoint(
            Requires(Permission::MemoryWrite),
            routes!(messages::post_messages),
        ),
        endpoint(
            Requires(Permission::MemoryRead),
            routes!(messages::list_messages),
        ),
        endpoint(
            Requires(Permission::MemoryWrite),
            routes!(messages::update_message),
        ),
        endpoint(
            Requires(Permission::MemoryWrite),
            routes!(messages::delete_message),
        ),
        endpoint(
            Requires(Permission::MemoryRead),
            routes!(conversations::context),
        ),
        endpoint(
            Requires(Permission::MemoryWrite),
            routes!(conversations::set_summary),
        ),
        endpoint(Requires(Permission::MemoryRead), routes!(transfer::export)),
        endpoint(Requires(Permission::MemoryRead), routes!(search::search)),
    ]
}
