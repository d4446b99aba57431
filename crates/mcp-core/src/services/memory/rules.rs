//! The memory service's limits, its errors, and the checks a conversation must pass.

use crate::StoreError;
use crate::memory::{InvalidInput, MessageRole, check_name, check_text};
use crate::principal::{Permission, Principal};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Most participants of one conversation.
const MAX_PARTICIPANTS: usize = 100;
/// Longest title, in bytes.
const MAX_TITLE_BYTES: usize = 1_024;

/// Limits of conversation memory.
#[derive(Debug, Clone)]
pub struct MemoryLimits {
    /// Largest message `content`, in bytes (413 `message_too_large` beyond).
    pub max_message_bytes: usize,
    /// Budget used by `/context` when the request names none.
    pub default_context_tokens: u32,
    /// Largest `max_tokens` a context request may ask for.
    pub max_context_tokens: u32,
    /// Largest JSON Lines body `POST /v1/conversations/import` accepts.
    pub max_import_bytes: usize,
    /// Deepest search page: `offset + limit` may not exceed it (ranking every match again for
    /// each deep page is costly; narrow the query instead).
    pub max_search_depth: u32,
    /// Most messages in one batch.
    pub max_batch: usize,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits {
            max_message_bytes: 64 * 1024,
            default_context_tokens: 4_096,
            max_context_tokens: 1_000_000,
            max_import_bytes: 64 * 1024 * 1024,
            // The stores rank at most this many matches of one query.
            max_search_depth: crate::memory::RANKED_MATCHES,
            max_batch: 1000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("no conversation with id `{0}`")]
    ConversationNotFound(String),
    #[error("no message with id `{0}` in this conversation")]
    MessageNotFound(String),
    /// `code` names what was invalid: `invalid_conversation`, `invalid_message`,
    /// `invalid_summary`.
    #[error("{input}")]
    Invalid {
        code: &'static str,
        input: InvalidInput,
    },
    /// A message or summary over `max_message_bytes`; `field` names it when the answer says
    /// which.
    #[error("{message}")]
    TooLarge {
        message: String,
        field: Option<String>,
        limit: usize,
    },
    #[error("a batch holds between 1 and {max} messages; this one has {got}")]
    BatchSize { max: usize, got: usize },
    /// `code`: `conversation_exists` or `message_exists`.
    #[error("{what} exists already")]
    Exists { code: &'static str, what: String },
    /// A `system` or `tool` message from a principal without `memory:write:system`.
    #[error("{field}: role `{role}` is written by operators, admins and services only")]
    RoleNotAllowed { field: String, role: MessageRole },
    /// A `created_at` from a principal without `memory:write:system`: messages it writes are
    /// dated by the hub.
    #[error("{field}: only operators, admins and services may date a message")]
    CreatedAtNotAllowed { field: String },
    #[error("cursor must be a next_cursor returned by this endpoint")]
    InvalidCursor,
    #[error("{0}")]
    InvalidQuery(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for MemoryError {
    fn from(e: StoreError) -> Self {
        MemoryError::Store(e)
    }
}

/// A store conflict as the `code` the caller answers with.
pub(super) fn exists(code: &'static str) -> impl FnOnce(StoreError) -> MemoryError {
    move |e| match e {
        StoreError::Conflict(what) => MemoryError::Exists { code, what },
        other => MemoryError::Store(other),
    }
}

/// Who may speak as what: `system` and `tool` messages steer the models that read the
/// conversation, and a chosen `created_at` rewrites its history, so both need
/// `memory:write:system` (operators, admins, services); a user writes `user` and `assistant`
/// messages, dated now. `field` names the message's fields in the answer.
pub(super) fn check_voice(
    principal: &Principal,
    role: MessageRole,
    created_at: Option<DateTime<Utc>>,
    field: impl Fn(&str) -> String,
) -> Result<(), MemoryError> {
    if principal.can(Permission::MemoryWriteSystem) {
        return Ok(());
    }
    if matches!(role, MessageRole::System | MessageRole::Tool) {
        return Err(MemoryError::RoleNotAllowed {
            field: field("role"),
            role,
        });
    }
    if created_at.is_some() {
        return Err(MemoryError::CreatedAtNotAllowed {
            field: field("created_at"),
        });
    }
    Ok(())
}

pub(super) fn check_title(title: &str) -> Result<(), InvalidInput> {
    check_text("title", title)?;
    if title.len() > MAX_TITLE_BYTES {
        return Err(InvalidInput::new(
            "title",
            format!("must be at most {MAX_TITLE_BYTES} bytes"),
        ));
    }
    Ok(())
}

pub(super) fn check_participants(participants: &[String]) -> Result<(), InvalidInput> {
    if participants.len() > MAX_PARTICIPANTS {
        return Err(InvalidInput::new(
            "participants",
            format!("at most {MAX_PARTICIPANTS} participants"),
        ));
    }
    participants
        .iter()
        .enumerate()
        .try_for_each(|(i, p)| check_name(&format!("participants[{i}]"), p))
}

pub(super) fn invalid(code: &'static str) -> impl FnOnce(InvalidInput) -> MemoryError {
    move |input| MemoryError::Invalid { code, input }
}

pub(super) fn conversation_id(id: &str) -> Result<Uuid, MemoryError> {
    Uuid::parse_str(id).map_err(|_| MemoryError::ConversationNotFound(id.to_owned()))
}

pub(super) fn message_id(id: &str) -> Result<Uuid, MemoryError> {
    Uuid::parse_str(id).map_err(|_| MemoryError::MessageNotFound(id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::{CredentialKind, Role};

    fn principal(role: Role) -> Principal {
        Principal {
            subject: "ann".into(),
            role,
            credential: CredentialKind::AccessToken,
            worker_types: None,
        }
    }

    #[test]
    fn users_write_user_and_assistant_messages_dated_now() {
        let user = principal(Role::User);
        let name = |f: &str| f.to_owned();
        assert!(check_voice(&user, MessageRole::User, None, name).is_ok());
        assert!(check_voice(&user, MessageRole::Assistant, None, name).is_ok());
        for role in [MessageRole::System, MessageRole::Tool] {
            assert!(matches!(
                check_voice(&user, role, None, name),
                Err(MemoryError::RoleNotAllowed { .. })
            ));
        }
        assert!(matches!(
            check_voice(&user, MessageRole::User, Some(Utc::now()), name),
            Err(MemoryError::CreatedAtNotAllowed { field }) if field == "created_at"
        ));
    }

    #[test]
    fn services_operators_and_admins_speak_as_the_hub() {
        for role in [Role::Service, Role::Operator, Role::Admin] {
            let who = principal(role);
            assert!(
                check_voice(&who, MessageRole::System, Some(Utc::now()), |f| f
                    .to_owned())
                .is_ok()
            );
        }
    }
}
