//! The memory service's model and its `MemoryStore` port: conversations, their messages, ranked
//! full-text search and context windows. `mcp-persistence` implements the port for SQLite (FTS5)
//! and PostgreSQL (tsvector); both read the same `SearchQuery`, parsed here once, so one query
//! means the same thing on both.
//!
//! Also here, because both the API and the stores need one answer: the token-estimate rule, the
//! context-window rule, snippet rendering, and the built-in `memory.summarize` handler.

use crate::handler::{Handler, HandlerError, TaskContext};
use crate::store::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
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

#[async_trait]
pub trait MemoryStore: Send + Sync + 'static {
    /// Fails with `StoreError::Conflict` when the id is taken.
    async fn create_conversation(&self, conversation: &Conversation) -> Result<(), StoreError>;
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
    ) -> Result<Option<Conversation>, StoreError>;
    /// Deletes the conversation and all its messages; false when there was none.
    async fn delete_conversation(&self, id: Uuid) -> Result<bool, StoreError>;
    /// Replaces the summary; `None` when there is no such conversation.
    async fn set_summary(
        &self,
        id: Uuid,
        summary: &Summary,
    ) -> Result<Option<Conversation>, StoreError>;

    /// Appends messages (all or none) to `conversation_id`, bumps its `updated_at` to the
    /// newest `created_at` and clears `archived`. False (nothing stored) when there is no such
    /// conversation; `StoreError::Conflict` when a message id is taken.
    async fn append_messages(
        &self,
        conversation_id: Uuid,
        messages: &[Message],
        at: DateTime<Utc>,
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
    ) -> Result<Option<Message>, StoreError>;
    async fn delete_message(
        &self,
        conversation_id: Uuid,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Ranked full-text search: best first, ties newest first.
    async fn search(&self, request: &SearchRequest) -> Result<Vec<SearchHit>, StoreError>;

    /// Archives conversations idle (no activity) since before `before`; returns how many.
    async fn archive_idle(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Deletes conversations (and their messages) idle since before `before`; returns how many.
    async fn delete_idle(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
}

// ---------------------------------------------------------------------------------------------
// Tokens and context windows

/// Tokens a message costs besides its text (role and separators in chat formats).
pub const MESSAGE_OVERHEAD_TOKENS: u32 = 4;

/// The token estimate of a text: one token per four characters (Unicode scalar values), rounded
/// up, plus `MESSAGE_OVERHEAD_TOKENS`. Close to what GPT-style BPE tokenizers give for English
/// prose, cheap, and the same on every node; not exact for code or non-Latin scripts.
pub fn estimate_tokens(text: &str) -> u32 {
    let chars = text.chars().count() as u64;
    let tokens = chars.div_ceil(4) + u64::from(MESSAGE_OVERHEAD_TOKENS);
    u32::try_from(tokens).unwrap_or(u32::MAX)
}

/// What a model should be given from a conversation for a budget of tokens.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Context {
    pub summary: Option<Summary>,
    /// Pinned messages that fit, oldest first.
    pub pinned: Vec<Message>,
    /// The newest unpinned messages that fit, oldest first (a contiguous run up to the newest).
    pub messages: Vec<Message>,
    /// Tokens used by all of the above; never more than the budget.
    pub tokens: u32,
}

/// Most pinned messages a context considers.
pub const MAX_PINNED_IN_CONTEXT: u32 = 200;
/// Messages fetched per step while filling a context window.
const CONTEXT_PAGE: u32 = 200;

/// Fills a context window: the summary (if it fits), then pinned messages newest first while
/// they fit, then the newest unpinned messages while they fit, stopping at the first that does
/// not (so the recent messages are a contiguous run). Everything is returned oldest first.
pub async fn build_context(
    store: &dyn MemoryStore,
    conversation: &Conversation,
    max_tokens: u32,
) -> Result<Context, StoreError> {
    let mut used: u32 = 0;
    let summary = conversation
        .summary
        .clone()
        .filter(|s| s.tokens <= max_tokens);
    if let Some(s) = &summary {
        used += s.tokens;
    }
    let mut pinned = Vec::new();
    for message in store
        .pinned_messages(conversation.id, MAX_PINNED_IN_CONTEXT)
        .await?
    {
        if used.saturating_add(message.tokens) <= max_tokens {
            used += message.tokens;
            pinned.push(message);
        }
    }
    let mut messages = Vec::new();
    let mut page = MessagePage::Newest;
    'fill: loop {
        let batch = store
            .list_messages(conversation.id, page, CONTEXT_PAGE)
            .await?;
        let done = batch.len() < CONTEXT_PAGE as usize;
        for message in batch {
            page = MessagePage::Before(message.id);
            if message.pinned {
                continue;
            }
            if used.saturating_add(message.tokens) > max_tokens {
                break 'fill;
            }
            used += message.tokens;
            messages.push(message);
        }
        if done {
            break;
        }
    }
    pinned.reverse();
    messages.reverse();
    Ok(Context {
        summary,
        pinned,
        messages,
        tokens: used,
    })
}

// ---------------------------------------------------------------------------------------------
// Validation

/// Why a piece of memory input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidInput {
    pub field: String,
    pub reason: String,
}

impl InvalidInput {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        InvalidInput {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Longest author, participant or title, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// A string both databases can store: PostgreSQL refuses NUL in `text` and `jsonb`.
pub fn check_text(field: &str, text: &str) -> Result<(), InvalidInput> {
    if text.contains('\0') {
        return Err(InvalidInput::new(field, "must not contain NUL characters"));
    }
    Ok(())
}

/// A short, non-empty name (author, participant).
pub fn check_name(field: &str, name: &str) -> Result<(), InvalidInput> {
    check_text(field, name)?;
    if name.trim().is_empty() {
        return Err(InvalidInput::new(field, "must not be empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(InvalidInput::new(
            field,
            format!("must be at most {MAX_NAME_BYTES} bytes"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(InvalidInput::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Metadata: a JSON object with no NUL anywhere in its keys or strings.
pub fn check_metadata(field: &str, metadata: &Value) -> Result<(), InvalidInput> {
    if !metadata.is_object() {
        return Err(InvalidInput::new(field, "must be a JSON object"));
    }
    fn walk(value: &Value) -> bool {
        match value {
            Value::String(s) => !s.contains('\0'),
            Value::Array(items) => items.iter().all(walk),
            Value::Object(map) => map.iter().all(|(k, v)| !k.contains('\0') && walk(v)),
            _ => true,
        }
    }
    if !walk(metadata) {
        return Err(InvalidInput::new(field, "must not contain NUL characters"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Search queries

/// Longest query accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 1_000;
/// Most terms (words and phrases, excluded ones too) in one query.
pub const MAX_QUERY_TERMS: usize = 32;
/// Matches a search ranks: a query matching more messages (a very common word) ranks only its
/// newest `RANKED_MATCHES` matches (after filters), so that its cost is bounded whatever the
/// size of the history. Queries with fewer matches rank them all. Every page of one query ranks
/// the same candidates, so pages never overlap; pages past this depth are empty.
pub const RANKED_MATCHES: u32 = 2_000;

/// A word or a phrase: lower-case words of letters and digits, matched next to each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term(pub Vec<String>);

/// One side of an `or`: every `include` term and none of the `exclude` terms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Alternative {
    pub include: Vec<Term>,
    pub exclude: Vec<Term>,
}

/// A parsed search query in the syntax of PostgreSQL's `websearch_to_tsquery`:
/// - words separated by spaces must all occur (`deploy failed`);
/// - `"quoted words"` must occur as a phrase, in order and adjacent;
/// - `-word` or `-"a phrase"` must not occur;
/// - `or` between terms gives alternatives; it binds looser than the implicit AND
///   (`a b or c` is `(a AND b) OR c`), as in PostgreSQL.
///
/// Words are split at every character that is not a letter or digit (`foo-bar` is the phrase
/// `"foo bar"`), which is also how both databases tokenize, and nothing a user types is ever an
/// operator of the database's own query language. Each alternative needs at least one word to
/// find: a query of exclusions only would scan everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    pub alternatives: Vec<Alternative>,
}

/// Why a query was refused (400 `invalid_search_query`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);

enum Token {
    Or,
    Term { exclude: bool, words: Vec<String> },
}

fn words_of(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn tokenize(query: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = query.chars().peekable();
    loop {
        while chars
            .next_if(|c| c.is_whitespace() || c.is_control())
            .is_some()
        {}
        let Some(&first) = chars.peek() else { break };
        let mut exclude = false;
        if first == '-' {
            chars.next();
            exclude = true;
        }
        let mut text = String::new();
        let quoted = chars.next_if_eq(&'"').is_some();
        if quoted {
            // An unterminated quote runs to the end, as in PostgreSQL.
            for c in chars.by_ref() {
                if c == '"' {
                    break;
                }
                text.push(c);
            }
        } else {
            while let Some(c) =
                chars.next_if(|c| !c.is_whitespace() && !c.is_control() && *c != '"')
            {
                text.push(c);
            }
        }
        if !quoted && !exclude && text.eq_ignore_ascii_case("or") {
            tokens.push(Token::Or);
            continue;
        }
        let words = words_of(&text);
        if !words.is_empty() {
            tokens.push(Token::Term { exclude, words });
        }
    }
    tokens
}

impl SearchQuery {
    pub fn parse(query: &str) -> Result<SearchQuery, QueryError> {
        if query.chars().count() > MAX_QUERY_CHARS {
            return Err(QueryError(format!(
                "the query is longer than {MAX_QUERY_CHARS} characters"
            )));
        }
        let mut alternatives = vec![Alternative::default()];
        let mut terms = 0;
        for token in tokenize(query) {
            match token {
                Token::Or => {
                    if alternatives
                        .last()
                        .is_some_and(|a| *a != Alternative::default())
                    {
                        alternatives.push(Alternative::default());
                    }
                }
                Token::Term { exclude, words } => {
                    terms += 1;
                    let Some(current) = alternatives.last_mut() else {
                        continue;
                    };
                    if exclude {
                        current.exclude.push(Term(words));
                    } else {
                        current.include.push(Term(words));
                    }
                }
            }
        }
        if alternatives
            .last()
            .is_some_and(|a| *a == Alternative::default())
        {
            alternatives.pop();
        }
        if alternatives.is_empty() {
            return Err(QueryError(
                "the query has no words to search for (letters or digits)".into(),
            ));
        }
        if terms > MAX_QUERY_TERMS {
            return Err(QueryError(format!(
                "the query has {terms} terms; at most {MAX_QUERY_TERMS} are allowed"
            )));
        }
        if alternatives.iter().any(|a| a.include.is_empty()) {
            return Err(QueryError(
                "every part of the query (each side of `or`) needs a word to find, not only \
                 `-excluded` ones"
                    .into(),
            ));
        }
        Ok(SearchQuery { alternatives })
    }

    /// The query for PostgreSQL's `websearch_to_tsquery`, every term quoted. Terms hold only
    /// letters, digits and spaces, so nothing in them can act as an operator.
    pub fn to_websearch(&self) -> String {
        let quote = |t: &Term| format!("\"{}\"", t.0.join(" "));
        self.alternatives
            .iter()
            .map(|a| {
                a.include
                    .iter()
                    .map(quote)
                    .chain(a.exclude.iter().map(|t| format!("-{}", quote(t))))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join(" or ")
    }

    /// The query as an SQLite FTS5 `MATCH` expression, every term a quoted string (FTS5's
    /// `AND`, `NEAR`, `*`, `^` and column filters typed by a user are plain words here).
    pub fn to_fts5(&self) -> String {
        let quote = |t: &Term| format!("\"{}\"", t.0.join(" "));
        let group = |terms: &[Term], op: &str| {
            format!("({})", terms.iter().map(quote).collect::<Vec<_>>().join(op))
        };
        self.alternatives
            .iter()
            .map(|a| {
                let include = group(&a.include, " AND ");
                if a.exclude.is_empty() {
                    include
                } else {
                    format!("({include} NOT {})", group(&a.exclude, " OR "))
                }
            })
            .collect::<Vec<_>>()
            .join(" OR ")
    }
}

/// Marks the stores put around matches in a raw snippet (private-use characters, so that they
/// survive HTML escaping and cannot be confused with markup in the text).
pub const SNIPPET_START: char = '\u{E000}';
pub const SNIPPET_END: char = '\u{E001}';

/// A raw snippet as HTML: the text escaped, the marked matches in `<mark>…</mark>`.
pub fn render_snippet(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + 16);
    for c in raw.chars() {
        match c {
            SNIPPET_START => out.push_str("<mark>"),
            SNIPPET_END => out.push_str("</mark>"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Summaries

/// The payload of a `memory.summarize` task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SummarizeRequest {
    pub conversation_id: Uuid,
    /// Budget of the summary, in estimated tokens (default 256).
    #[serde(default)]
    pub max_tokens: Option<u32>,
}

/// Default and largest summary budgets.
pub const DEFAULT_SUMMARY_TOKENS: u32 = 256;
pub const MAX_SUMMARY_TOKENS: u32 = 8_192;
/// Messages the built-in summarizer reads, newest first.
const SUMMARIZE_WINDOW: u32 = 500;

/// The built-in `memory.summarize` handler: an extractive summary (the first sentence of each of
/// the most recent messages, `author: sentence`, oldest first, within the budget), stored as the
/// conversation's summary. It needs no model, so summaries work out of the box; a deployment with
/// an LLM worker turns it off (`memory_builtin_summarizer = false`) and lets the worker serve the
/// task type, storing its result through `POST /v1/conversations/{id}/summary`.
pub struct Summarizer {
    pub store: Arc<dyn MemoryStore>,
}

fn first_sentence(text: &str, max_chars: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let end = flat
        .char_indices()
        .find(|&(i, c)| matches!(c, '.' | '!' | '?') && i > 0)
        .map(|(i, c)| i + c.len_utf8())
        .unwrap_or(flat.len());
    let sentence = &flat[..end];
    if sentence.chars().count() > max_chars {
        let cut: String = sentence.chars().take(max_chars).collect();
        format!("{cut}…")
    } else {
        sentence.to_owned()
    }
}

/// The extractive summary of `messages` (newest first) within `max_tokens`.
pub fn extractive_summary(messages: &[Message], max_tokens: u32) -> (String, Option<Uuid>) {
    let mut lines: Vec<String> = Vec::new();
    let mut through = None;
    let mut text_len = 0usize;
    for message in messages {
        if message.role == MessageRole::System || message.content.trim().is_empty() {
            continue;
        }
        let line = format!(
            "{}: {}",
            message.author,
            first_sentence(&message.content, 200)
        );
        let candidate = text_len + line.chars().count() + 1;
        if estimate_tokens_len(candidate) > max_tokens {
            break;
        }
        text_len = candidate;
        through.get_or_insert(message.id);
        lines.push(line);
    }
    lines.reverse();
    (lines.join("\n"), through)
}

fn estimate_tokens_len(chars: usize) -> u32 {
    u32::try_from((chars as u64).div_ceil(4) + u64::from(MESSAGE_OVERHEAD_TOKENS))
        .unwrap_or(u32::MAX)
}

#[async_trait]
impl Handler for Summarizer {
    fn validate(&self, payload: &Value) -> Result<(), String> {
        let request = SummarizeRequest::deserialize(payload).map_err(|e| e.to_string())?;
        match request.max_tokens {
            Some(n) if !(16..=MAX_SUMMARY_TOKENS).contains(&n) => Err(format!(
                "max_tokens must be between 16 and {MAX_SUMMARY_TOKENS}"
            )),
            _ => Ok(()),
        }
    }

    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let request = SummarizeRequest::deserialize(&ctx.task.payload)
            .map_err(|e| HandlerError::permanent(e.to_string()))?;
        let store_error = |e: StoreError| HandlerError::retryable(e.to_string());
        if self
            .store
            .conversation(request.conversation_id)
            .await
            .map_err(store_error)?
            .is_none()
        {
            return Err(HandlerError::permanent(format!(
                "no conversation with id `{}`",
                request.conversation_id
            )));
        }
        let messages = self
            .store
            .list_messages(
                request.conversation_id,
                MessagePage::Newest,
                SUMMARIZE_WINDOW,
            )
            .await
            .map_err(store_error)?;
        let budget = request.max_tokens.unwrap_or(DEFAULT_SUMMARY_TOKENS);
        let (text, through) = extractive_summary(&messages, budget);
        let summary = Summary {
            tokens: estimate_tokens(&text),
            text,
            through,
            updated_at: Utc::now(),
        };
        self.store
            .set_summary(request.conversation_id, &summary)
            .await
            .map_err(store_error)?
            .ok_or_else(|| HandlerError::permanent("the conversation was deleted meanwhile"))?;
        Ok(json!({"summary": summary}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
