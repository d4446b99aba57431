//! The memory service's model and its `MemoryStore` port: conversations, their messages, ranked
//! full-text search and context windows. `mcp-persistence` implements the port for SQLite (FTS5)
//! and PostgreSQL (tsvector); both read the same `SearchQuery`, parsed here once, so one query
//! means the same thing on both.
//!
//! Also below, because both the API and the stores need one answer: the token-estimate and
//! context-window rules (`context`), what input both databases can store (`input`), the query
//! syntax and snippet rendering (`search`), and the built-in `memory.summarize` handler
//! (`summarize`). The memory *service* (the use cases) is `crate::services::memory`.

mod context;
mod input;
mod search;
mod summarize;

pub use context::*;
pub use input::*;
pub use search::*;
pub use summarize::*;

use crate::store::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// The task type whose handler writes a conversation's summary.
pub const SUMMARIZE_TASK: &str = "memory.summarize";

/// Who speaks in a message, as chat models name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageRole {
    User,
    Assistant,
    System,
    Tool,
}

impl MessageRole {
    pub const ALL: [MessageRole; 4] = [
        MessageRole::User,
        MessageRole::Assistant,
        MessageRole::System,
        MessageRole::Tool,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageRole::User => "user",
            MessageRole::Assistant => "assistant",
            MessageRole::System => "system",
            MessageRole::Tool => "tool",
        }
    }
}

impl std::fmt::Display for MessageRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MessageRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MessageRole::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| format!("unknown message role `{s}` (user, assistant, system or tool)"))
    }
}

/// The latest summary of a conversation, written by a `memory.summarize` handler (or any
/// worker through `POST /v1/conversations/{id}/summary`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Summary {
    pub text: String,
    /// The newest message the summary covers, when the writer said so.
    pub through: Option<Uuid>,
    /// Token estimate of `text` (see `estimate_tokens`).
    pub tokens: u32,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Conversation {
    /// UUIDv7: listing newest first is ordering by id.
    pub id: Uuid,
    pub title: Option<String>,
    /// Who takes part (user names, bot names, channel ids: free-form strings).
    pub participants: Vec<String>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// Set by the retention pass after a period without activity; a new message clears it.
    pub archived: bool,
    pub summary: Option<Summary>,
    /// Subject of the principal that created it.
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Last activity: the conversation changed or a message was added, edited or deleted.
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Message {
    /// UUIDv7.
    pub id: Uuid,
    pub conversation_id: Uuid,
    /// Who wrote it (a user name, a bot name, a tool name).
    pub author: String,
    pub role: MessageRole,
    pub content: String,
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// Pinned messages are always part of the conversation's context.
    pub pinned: bool,
    /// Token estimate of `content` (see `estimate_tokens`).
    pub tokens: u32,
    pub created_at: DateTime<Utc>,
    /// Subject of the principal that wrote it (`system:…` for the hub's own writers): unlike
    /// `author`, a display name the writer chooses, this is who the hub authenticated. `None`
    /// for messages stored before it was recorded.
    #[serde(default)]
    pub created_by: Option<String>,
}

/// Every memory event: what the memory stores record in the webhook outbox when a webhook wants
/// it, and what the memory service publishes on `conversation:{id}` and `memory`.
pub const MEMORY_EVENTS: [&str; 7] = [
    "memory.conversation.created",
    "memory.conversation.updated",
    "memory.conversation.deleted",
    "memory.conversation.summarized",
    "memory.message.created",
    "memory.message.updated",
    "memory.message.deleted",
];

/// The event a memory change makes, for the store to record in the webhook outbox in the
/// change's own transaction (when a webhook wants `event_type`). Its `data` is what the change
/// returns (the conversation or each message after it), or for a deletion
/// [`deleted_conversation`] / [`deleted_message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeEvent<'a> {
    pub event_type: &'static str,
    pub correlation_id: Option<&'a str>,
}

impl<'a> ChangeEvent<'a> {
    pub fn new(event_type: &'static str, correlation_id: Option<&'a str>) -> Self {
        ChangeEvent {
            event_type,
            correlation_id,
        }
    }
}

/// The data of `memory.conversation.deleted`.
pub fn deleted_conversation(id: Uuid) -> Value {
    serde_json::json!({ "id": id })
}

/// The data of `memory.message.deleted`.
pub fn deleted_message(conversation_id: Uuid, id: Uuid) -> Value {
    serde_json::json!({ "id": id, "conversation_id": conversation_id })
}

/// Filters and cursor for listing conversations, newest first.
#[derive(Debug, Clone, Default)]
pub struct ConversationFilter {
    /// Only conversations with this participant.
    pub participant: Option<String>,
    pub archived: Option<bool>,
    /// Only conversations older than this id (the previous page's last id).
    pub before: Option<Uuid>,
    pub limit: u32,
}

/// Changes to a conversation; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct ConversationPatch {
    /// `Some(None)` clears the title.
    pub title: Option<Option<String>>,
    pub participants: Option<Vec<String>>,
    pub metadata: Option<Value>,
    pub archived: Option<bool>,
}

/// Which page of a conversation's messages. Messages are ordered by arrival (the order the
/// store appended them), which is also the order of their UUIDv7 ids within one node.
#[derive(Debug, Clone, Copy)]
pub enum MessagePage {
    /// The newest `limit` messages, newest first.
    Newest,
    /// The `limit` messages just before this one, newest first.
    Before(Uuid),
    /// The `limit` messages just after this one, oldest first.
    After(Uuid),
}

/// Changes to a message; `None` leaves a field alone. Editing `content` re-estimates `tokens`.
#[derive(Debug, Clone, Default)]
pub struct MessagePatch {
    pub content: Option<String>,
    pub metadata: Option<Value>,
    pub pinned: Option<bool>,
}

/// A search: the parsed query, filters and the page.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: SearchQuery,
    pub conversation_id: Option<Uuid>,
    pub author: Option<String>,
    pub role: Option<MessageRole>,
    /// Only messages created at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only messages created before this instant.
    pub until: Option<DateTime<Utc>>,
    /// Hits to skip (ranked results page by offset).
    pub offset: u32,
    pub limit: u32,
}

/// One ranked hit.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SearchHit {
    #[serde(flatten)]
    pub message: Message,
    /// The matching part of `content`, HTML-escaped, matches in `<mark>…</mark>`.
    pub snippet: String,
    /// Higher is better. Comparable within one result list only: PostgreSQL's `ts_rank` and
    /// SQLite's (negated) `bm25` use different scales.
    pub rank: f64,
}

/// The memory port. Each change takes the [`ChangeEvent`] it makes (`None`: none, e.g. the
/// steps of an import, which makes one event at its end) and records it in the webhook outbox in
/// its own transaction when a webhook wants it (see `crate::webhooks::Outbox`).
#[async_trait]
pub trait MemoryStore: Send + Sync + 'static {
    /// Fails with `StoreError::Conflict` when the id is taken.
    async fn create_conversation(
        &self,
        conversation: &Conversation,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<(), StoreError>;
    async fn conversation(&self, id: Uuid) -> Result<Option<Conversation>, StoreError>;
    async fn list_conversations(
        &self,
        filter: &ConversationFilter,
    ) -> Result<Vec<Conversation>, StoreError>;
    /// Applies `patch` and bumps `updated_at`; `None` when there is no such conversation.
    async fn update_conversation(
        &self,
        id: Uuid,
        patch: &ConversationPatch,
        at: DateTime<Utc>,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<Option<Conversation>, StoreError>;
    /// Deletes the conversation and all its messages; false when there was none.
    async fn delete_conversation(
        &self,
        id: Uuid,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<bool, StoreError>;
    /// Replaces the summary; `None` when there is no such conversation.
    async fn set_summary(
        &self,
        id: Uuid,
        summary: &Summary,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<Option<Conversation>, StoreError>;

    /// Appends messages (all or none) to `conversation_id`, bumps its `updated_at` to the
    /// newest `created_at` and clears `archived`. False (nothing stored) when there is no such
    /// conversation; `StoreError::Conflict` when a message id is taken.
    async fn append_messages(
        &self,
        conversation_id: Uuid,
        messages: &[Message],
        at: DateTime<Utc>,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<bool, StoreError>;
    async fn message(&self, conversation_id: Uuid, id: Uuid)
    -> Result<Option<Message>, StoreError>;
    /// A page of messages, in the page's travel order (see `MessagePage`). A cursor message that
    /// is not in the conversation yields an empty page.
    async fn list_messages(
        &self,
        conversation_id: Uuid,
        page: MessagePage,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError>;
    /// Pinned messages, newest first.
    async fn pinned_messages(
        &self,
        conversation_id: Uuid,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError>;
    /// Applies `patch` (and bumps the conversation's `updated_at`); `None` when not found.
    async fn update_message(
        &self,
        conversation_id: Uuid,
        id: Uuid,
        patch: &MessagePatch,
        at: DateTime<Utc>,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<Option<Message>, StoreError>;
    async fn delete_message(
        &self,
        conversation_id: Uuid,
        id: Uuid,
        at: DateTime<Utc>,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<bool, StoreError>;

    /// Ranked full-text search: best first, ties newest first.
    async fn search(&self, request: &SearchRequest) -> Result<Vec<SearchHit>, StoreError>;

    /// Archives conversations idle (no activity) since before `before`; returns how many.
    async fn archive_idle(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Deletes conversations (and their messages) idle since before `before`; returns how many.
    async fn delete_idle(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(q: &str) -> SearchQuery {
        SearchQuery::parse(q).unwrap()
    }

    #[test]
    fn estimates_a_quarter_token_per_character_plus_overhead() {
        assert_eq!(estimate_tokens(""), 4);
        assert_eq!(estimate_tokens("abcd"), 5);
        assert_eq!(estimate_tokens("abcde"), 6);
        assert_eq!(estimate_tokens("ééééé"), 6);
    }

    #[test]
    fn parses_websearch_syntax() {
        let q = parse(r#"Deploy "build failed" -flaky or rollback"#);
        assert_eq!(
            q.to_websearch(),
            r#""deploy" "build failed" -"flaky" or "rollback""#
        );
        assert_eq!(
            q.to_fts5(),
            r#"(("deploy" AND "build failed") NOT ("flaky")) OR ("rollback")"#
        );
    }

    #[test]
    fn user_typed_operators_are_plain_words() {
        let q = parse(r#"title:secret NEAR(a b) AND c* ^d"#);
        assert_eq!(
            q.to_fts5(),
            r#"("title secret" AND "near a" AND "b" AND "and" AND "c" AND "d")"#
        );
        let q = parse("foo-bar don't");
        assert_eq!(q.to_websearch(), r#""foo bar" "don t""#);
    }

    #[test]
    fn or_at_the_edges_or_repeated_is_ignored() {
        assert_eq!(
            parse("or cat or or dog or").to_fts5(),
            r#"("cat") OR ("dog")"#
        );
        assert_eq!(parse(r#""or" cat"#).to_fts5(), r#"("or" AND "cat")"#);
    }

    #[test]
    fn unterminated_quotes_run_to_the_end() {
        assert_eq!(parse(r#"a "b c"#).to_websearch(), r#""a" "b c""#);
    }

    #[test]
    fn refuses_queries_without_words() {
        for q in [
            "",
            "   ",
            "!!! ???",
            "-cat",
            "dog or -cat",
            "\u{0}\u{7}",
            "\"\"",
        ] {
            assert!(SearchQuery::parse(q).is_err(), "{q:?}");
        }
        assert!(SearchQuery::parse(&"a ".repeat(33)).is_err());
        assert!(SearchQuery::parse(&"a".repeat(1001)).is_err());
    }

    #[test]
    fn control_characters_separate_words() {
        assert_eq!(
            parse("cat\u{0}dog\tfish").to_websearch(),
            r#""cat" "dog" "fish""#
        );
    }

    #[test]
    fn snippets_are_escaped_html() {
        assert_eq!(
            render_snippet("a <b> \u{E000}cat\u{E001} & 'x'"),
            "a &lt;b&gt; <mark>cat</mark> &amp; &#39;x&#39;"
        );
    }

    #[test]
    fn checks_text_and_metadata() {
        assert!(check_text("content", "a\0b").is_err());
        assert!(check_metadata("metadata", &json!({"a": ["x\u{0}"]})).is_err());
        assert!(check_metadata("metadata", &json!([1])).is_err());
        assert!(check_metadata("metadata", &json!({"a": 1})).is_ok());
        assert!(check_name("author", " ").is_err());
        assert!(check_name("author", "bot\n").is_err());
    }

    fn message(author: &str, content: &str) -> Message {
        Message {
            id: Uuid::now_v7(),
            conversation_id: Uuid::nil(),
            author: author.into(),
            role: MessageRole::User,
            content: content.into(),
            metadata: json!({}),
            pinned: false,
            tokens: estimate_tokens(content),
            created_at: Utc::now(),
            created_by: Some("ann".into()),
        }
    }

    #[test]
    fn extractive_summary_keeps_recent_first_sentences_within_budget() {
        let newest_first = vec![
            message("bob", "Second thing. More detail."),
            message("ann", "First thing!  And more."),
        ];
        let (text, through) = extractive_summary(&newest_first, 100);
        assert_eq!(text, "ann: First thing!\nbob: Second thing.");
        assert_eq!(through, Some(newest_first[0].id));
        let (text, _) = extractive_summary(&newest_first, 9);
        assert_eq!(text, "bob: Second thing.");
    }
}
