//! The `MemoryStore` of the SQLite store, in the tables of `migrations/sqlite/0004_memory.sql`.
//! Search is FTS5 (`porter` tokenizer) ranked by bm25 over at most the newest `RANKED_MATCHES`
//! matches (a bound on the cost of common words, shared with PostgreSQL); the index is an
//! external-content table kept in step with `messages` by triggers, so a message and its index
//! entry commit together.
//! Batches of messages travel as one JSON array through `json_each`: one statement per batch.
//! Every change runs in one transaction with its webhook outbox rows, when a webhook wants its
//! event (`commit_memory`).

use super::SqliteTaskStore;
use crate::codec::{id_text, instant, json, json_array, micros, tokens, uuid};
use crate::columns::{CONVERSATION_COLUMNS, MESSAGE_COLUMNS, qualified};
use crate::error::{conflict_or_db_error, corrupt, db_error};
use crate::outbox::event_data;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mcp_core::StoreError;
use mcp_core::memory::{
    ChangeEvent, Conversation, ConversationFilter, ConversationPatch, MemoryStore, Message,
    MessagePage, MessagePatch, MessageRole, RANKED_MATCHES, SNIPPET_END, SNIPPET_START, SearchHit,
    SearchRequest, Summary, deleted_conversation, deleted_message, estimate_tokens, render_snippet,
};
use serde_json::{Value, json};
use sqlx::FromRow;
use std::str::FromStr;
use uuid::Uuid;

/// Conversations one retention statement deletes (their messages go with them).
const DELETE_CHUNK: i64 = 100;
/// Words of context `snippet()` keeps around the matches.
const SNIPPET_TOKENS: i64 = 16;

#[derive(FromRow)]
struct ConversationRow {
    id: String,
    title: Option<String>,
    participants: String,
    metadata: String,
    archived: bool,
    summary: Option<String>,
    summary_through: Option<String>,
    summary_tokens: Option<i64>,
    summary_updated_at: Option<i64>,
    created_by: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<ConversationRow> for Conversation {
    type Error = StoreError;
    fn try_from(row: ConversationRow) -> Result<Conversation, StoreError> {
        let summary = match (row.summary, row.summary_updated_at) {
            (Some(text), Some(at)) => Some(Summary {
                tokens: row
                    .summary_tokens
                    .map_or_else(|| estimate_tokens(&text), tokens),
                text,
                through: row.summary_through.as_deref().map(uuid).transpose()?,
                updated_at: instant(at)?,
            }),
            _ => None,
        };
        Ok(Conversation {
            id: uuid(&row.id)?,
            title: row.title,
            participants: json(&row.participants)?,
            metadata: json(&row.metadata)?,
            archived: row.archived,
            summary,
            created_by: row.created_by,
            created_at: instant(row.created_at)?,
            updated_at: instant(row.updated_at)?,
        })
    }
}

#[derive(FromRow)]
struct MessageRow {
    id: String,
    conversation_id: String,
    author: String,
    role: String,
    content: String,
    metadata: String,
    pinned: bool,
    tokens: i64,
    created_at: i64,
    created_by: Option<String>,
}

impl TryFrom<MessageRow> for Message {
    type Error = StoreError;
    fn try_from(row: MessageRow) -> Result<Message, StoreError> {
        Ok(Message {
            id: uuid(&row.id)?,
            conversation_id: uuid(&row.conversation_id)?,
            author: row.author,
            role: MessageRole::from_str(&row.role).map_err(corrupt)?,
            content: row.content,
            metadata: json(&row.metadata)?,
            pinned: row.pinned,
            tokens: tokens(row.tokens),
            created_at: instant(row.created_at)?,
            created_by: row.created_by,
        })
    }
}

fn messages(rows: Vec<MessageRow>) -> Result<Vec<Message>, StoreError> {
    rows.into_iter().map(Message::try_from).collect()
}

#[derive(FromRow)]
struct HitRow {
    #[sqlx(flatten)]
    message: MessageRow,
    rank: f64,
    snippet: String,
}

/// Bumps a conversation's last activity (never backwards); false when there is none.
async fn touch<'e, E>(executor: E, id: Uuid, at: DateTime<Utc>) -> Result<bool, StoreError>
where
    E: sqlx::SqliteExecutor<'e>,
{
    let done =
        sqlx::query("UPDATE conversations SET updated_at = max(updated_at, ?2) WHERE id = ?1")
            .bind(id_text(id))
            .bind(micros(at))
            .execute(executor)
            .await
            .map_err(db_error)?;
    Ok(done.rows_affected() > 0)
}

#[async_trait]
impl MemoryStore for SqliteTaskStore {
    async fn create_conversation(
        &self,
        c: &Conversation,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        sqlx::query(
            "INSERT INTO conversations (id, title, participants, metadata, archived, summary,
                 summary_through, summary_tokens, summary_updated_at, created_by, created_at,
                 updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )
        .bind(id_text(c.id))
        .bind(c.title.as_deref())
        .bind(json!(c.participants).to_string())
        .bind(c.metadata.to_string())
        .bind(c.archived)
        .bind(c.summary.as_ref().map(|s| s.text.as_str()))
        .bind(c.summary.as_ref().and_then(|s| s.through).map(id_text))
        .bind(c.summary.as_ref().map(|s| i64::from(s.tokens)))
        .bind(c.summary.as_ref().map(|s| micros(s.updated_at)))
        .bind(c.created_by.as_deref())
        .bind(micros(c.created_at))
        .bind(micros(c.updated_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_or_db_error(e, || format!("conversation `{}`", c.id)))?;
        self.commit_memory(tx, event, || event_data(std::slice::from_ref(c)))
            .await
    }

    async fn conversation(&self, id: Uuid) -> Result<Option<Conversation>, StoreError> {
        let row: Option<ConversationRow> = sqlx::query_as(sql!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?1"
        ))
        .bind(id_text(id))
        .fetch_optional(&self.readers)
        .await
        .map_err(db_error)?;
        row.map(Conversation::try_from).transpose()
    }

    async fn list_conversations(
        &self,
        filter: &ConversationFilter,
    ) -> Result<Vec<Conversation>, StoreError> {
        let rows: Vec<ConversationRow> = sqlx::query_as(sql!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations c
             WHERE (?1 IS NULL OR EXISTS (
                        SELECT 1 FROM json_each(c.participants) WHERE value = ?1))
               AND (?2 IS NULL OR archived = ?2)
               AND (?3 IS NULL OR id < ?3)
             ORDER BY id DESC
             LIMIT ?4"
        ))
        .bind(filter.participant.as_deref())
        .bind(filter.archived)
        .bind(filter.before.map(id_text))
        .bind(i64::from(filter.limit))
        .fetch_all(&self.readers)
        .await
        .map_err(db_error)?;
        rows.into_iter().map(Conversation::try_from).collect()
    }

    async fn update_conversation(
        &self,
        id: Uuid,
        patch: &ConversationPatch,
        at: DateTime<Utc>,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<Option<Conversation>, StoreError> {
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        let row: Option<ConversationRow> = sqlx::query_as(sql!(
            "UPDATE conversations SET
                 title = CASE WHEN ?2 THEN ?3 ELSE title END,
                 participants = coalesce(?4, participants),
                 metadata = coalesce(?5, metadata),
                 archived = coalesce(?6, archived),
                 updated_at = max(updated_at, ?7)
             WHERE id = ?1
             RETURNING {CONVERSATION_COLUMNS}"
        ))
        .bind(id_text(id))
        .bind(patch.title.is_some())
        .bind(patch.title.clone().flatten())
        .bind(patch.participants.as_ref().map(|p| json!(p).to_string()))
        .bind(patch.metadata.as_ref().map(Value::to_string))
        .bind(patch.archived)
        .bind(micros(at))
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        self.commit_conversation(tx, row, event).await
    }

    async fn delete_conversation(
        &self,
        id: Uuid,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        let deleted = sqlx::query("DELETE FROM conversations WHERE id = ?1")
            .bind(id_text(id))
            .execute(&mut *tx)
            .await
            .map_err(db_error)?
            .rows_affected()
            > 0;
        let event = event.filter(|_| deleted);
        self.commit_memory(tx, event, || event_data(&[deleted_conversation(id)]))
            .await?;
        Ok(deleted)
    }

    async fn set_summary(
        &self,
        id: Uuid,
        summary: &Summary,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<Option<Conversation>, StoreError> {
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        let row: Option<ConversationRow> = sqlx::query_as(sql!(
            "UPDATE conversations SET summary = ?2, summary_through = ?3, summary_tokens = ?4,
                 summary_updated_at = ?5
             WHERE id = ?1
             RETURNING {CONVERSATION_COLUMNS}"
        ))
        .bind(id_text(id))
        .bind(&summary.text)
        .bind(summary.through.map(id_text))
        .bind(i64::from(summary.tokens))
        .bind(micros(summary.updated_at))
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        self.commit_conversation(tx, row, event).await
    }

    async fn append_messages(
        &self,
        conversation_id: Uuid,
        new: &[Message],
        at: DateTime<Utc>,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<bool, StoreError> {
        let batch: Vec<Value> = new
            .iter()
            .map(|m| {
                json!({
                    "id": id_text(m.id),
                    "author": m.author,
                    "role": m.role.as_str(),
                    "content": m.content,
                    "metadata": m.metadata,
                    "pinned": m.pinned,
                    "tokens": m.tokens,
                    "created_at": micros(m.created_at),
                    "created_by": m.created_by,
                })
            })
            .collect();
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        let found = sqlx::query(
            "UPDATE conversations SET updated_at = max(updated_at, ?2), archived = 0 WHERE id = ?1",
        )
        .bind(id_text(conversation_id))
        .bind(micros(at))
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected()
            > 0;
        if !found {
            tx.rollback().await.map_err(db_error)?;
            return Ok(false);
        }
        if !new.is_empty() {
            sqlx::query(
                "INSERT INTO messages (id, conversation_id, author, role, content, metadata,
                     pinned, tokens, created_at, created_by)
                 SELECT value ->> '$.id', ?1, value ->> '$.author', value ->> '$.role',
                     value ->> '$.content', value -> '$.metadata', value ->> '$.pinned',
                     value ->> '$.tokens', value ->> '$.created_at', value ->> '$.created_by'
                 FROM json_each(?2)
                 ORDER BY key",
            )
            .bind(id_text(conversation_id))
            .bind(json_array(batch))
            .execute(&mut *tx)
            .await
            .map_err(|e| conflict_or_db_error(e, || "a message with this id".to_owned()))?;
        }
        let event = event.filter(|_| !new.is_empty());
        self.commit_memory(tx, event, || event_data(new)).await?;
        Ok(true)
    }

    async fn message(
        &self,
        conversation_id: Uuid,
        id: Uuid,
    ) -> Result<Option<Message>, StoreError> {
        let row: Option<MessageRow> = sqlx::query_as(sql!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?1 AND conversation_id = ?2"
        ))
        .bind(id_text(id))
        .bind(id_text(conversation_id))
        .fetch_optional(&self.readers)
        .await
        .map_err(db_error)?;
        row.map(Message::try_from).transpose()
    }

    async fn list_messages(
        &self,
        conversation_id: Uuid,
        page: MessagePage,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let cursor = "(SELECT seq FROM messages WHERE id = ?2 AND conversation_id = ?1)";
        let (condition, order, anchor) = match page {
            MessagePage::Newest => ("1 = 1".to_owned(), "DESC", None),
            MessagePage::Before(id) => (format!("seq < {cursor}"), "DESC", Some(id)),
            MessagePage::After(id) => (format!("seq > {cursor}"), "ASC", Some(id)),
        };
        let rows: Vec<MessageRow> = sqlx::query_as(sql!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
             WHERE conversation_id = ?1 AND (?2 IS NULL OR {condition})
             ORDER BY seq {order}
             LIMIT ?3"
        ))
        .bind(id_text(conversation_id))
        .bind(anchor.map(id_text))
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
        .await
        .map_err(db_error)?;
        messages(rows)
    }

    async fn pinned_messages(
        &self,
        conversation_id: Uuid,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let rows: Vec<MessageRow> = sqlx::query_as(sql!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
             WHERE conversation_id = ?1 AND pinned
             ORDER BY seq DESC
             LIMIT ?2"
        ))
        .bind(id_text(conversation_id))
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
        .await
        .map_err(db_error)?;
        messages(rows)
    }

    async fn update_message(
        &self,
        conversation_id: Uuid,
        id: Uuid,
        patch: &MessagePatch,
        at: DateTime<Utc>,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<Option<Message>, StoreError> {
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        let row: Option<MessageRow> = sqlx::query_as(sql!(
            "UPDATE messages SET
                 content = coalesce(?3, content),
                 tokens = coalesce(?4, tokens),
                 metadata = coalesce(?5, metadata),
                 pinned = coalesce(?6, pinned)
             WHERE id = ?1 AND conversation_id = ?2
             RETURNING {MESSAGE_COLUMNS}"
        ))
        .bind(id_text(id))
        .bind(id_text(conversation_id))
        .bind(patch.content.as_deref())
        .bind(
            patch
                .content
                .as_deref()
                .map(|c| i64::from(estimate_tokens(c))),
        )
        .bind(patch.metadata.as_ref().map(Value::to_string))
        .bind(patch.pinned)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        let Some(row) = row else {
            tx.rollback().await.map_err(db_error)?;
            return Ok(None);
        };
        touch(&mut *tx, conversation_id, at).await?;
        let message = Message::try_from(row)?;
        self.commit_memory(tx, event, || event_data(std::slice::from_ref(&message)))
            .await?;
        Ok(Some(message))
    }

    async fn delete_message(
        &self,
        conversation_id: Uuid,
        id: Uuid,
        at: DateTime<Utc>,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        let deleted = sqlx::query("DELETE FROM messages WHERE id = ?1 AND conversation_id = ?2")
            .bind(id_text(id))
            .bind(id_text(conversation_id))
            .execute(&mut *tx)
            .await
            .map_err(db_error)?
            .rows_affected()
            > 0;
        if deleted {
            touch(&mut *tx, conversation_id, at).await?;
        }
        let event = event.filter(|_| deleted);
        self.commit_memory(tx, event, || {
            event_data(&[deleted_message(conversation_id, id)])
        })
        .await?;
        Ok(deleted)
    }

    async fn search(&self, request: &SearchRequest) -> Result<Vec<SearchHit>, StoreError> {
        // 1. `candidates`: the newest RANKED_MATCHES matches, read backwards from the index's
        //    rowid-ordered doclists, which stops as soon as it has enough (no scoring);
        // 2. `hits`: bm25 for the matches from the oldest candidate on (the rowid bound is
        //    handed to FTS5, so it reads no further), one page kept;
        // 3. snippets (the costly part) for that page only.
        // bm25 is "lower is better"; it is negated so that higher is better, as with
        // PostgreSQL's ts_rank. Filters need the `messages` row; without any, it is not read.
        let filters = "((?2 IS NULL AND ?3 IS NULL AND ?4 IS NULL AND ?5 IS NULL AND ?6 IS NULL)
                 OR EXISTS (SELECT 1 FROM messages m WHERE m.seq = messages_fts.rowid
                     AND (?2 IS NULL OR m.conversation_id = ?2)
                     AND (?3 IS NULL OR m.author = ?3)
                     AND (?4 IS NULL OR m.role = ?4)
                     AND (?5 IS NULL OR m.created_at >= ?5)
                     AND (?6 IS NULL OR m.created_at < ?6)))";
        let columns = qualified(MESSAGE_COLUMNS, "m");
        let rows: Vec<HitRow> = sqlx::query_as(sql!(
            "WITH candidates AS (
                 SELECT rowid AS seq FROM messages_fts
                 WHERE messages_fts MATCH ?1 AND {filters}
                 ORDER BY rowid DESC
                 LIMIT ?12
             ),
             hits AS (
                 SELECT rowid AS seq, -bm25(messages_fts) AS rank FROM messages_fts
                 WHERE messages_fts MATCH ?1
                   AND rowid >= (SELECT min(seq) FROM candidates)
                   AND {filters}
                 ORDER BY rank DESC, seq DESC
                 LIMIT ?7 OFFSET ?8
             )
             SELECT {columns}, hits.rank AS rank,
                 snippet(messages_fts, 0, ?9, ?10, '…', ?11) AS snippet
             FROM hits
             JOIN messages_fts ON messages_fts.rowid = hits.seq
             JOIN messages m ON m.seq = hits.seq
             WHERE messages_fts MATCH ?1
             ORDER BY hits.rank DESC, hits.seq DESC"
        ))
        .bind(request.query.to_fts5())
        .bind(request.conversation_id.map(id_text))
        .bind(request.author.as_deref())
        .bind(request.role.map(MessageRole::as_str))
        .bind(request.since.map(micros))
        .bind(request.until.map(micros))
        .bind(i64::from(request.limit))
        .bind(i64::from(request.offset))
        .bind(SNIPPET_START.to_string())
        .bind(SNIPPET_END.to_string())
        .bind(SNIPPET_TOKENS)
        .bind(i64::from(RANKED_MATCHES))
        .fetch_all(&self.readers)
        .await
        .map_err(db_error)?;
        rows.into_iter()
            .map(|row| {
                Ok(SearchHit {
                    message: Message::try_from(row.message)?,
                    snippet: render_snippet(&row.snippet),
                    rank: row.rank,
                })
            })
            .collect()
    }

    async fn archive_idle(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE conversations SET archived = 1 WHERE NOT archived AND updated_at < ?1",
        )
        .bind(micros(before))
        .execute(&self.writer)
        .await
        .map_err(db_error)?;
        Ok(done.rows_affected())
    }

    async fn delete_idle(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM conversations WHERE id IN (
                     SELECT id FROM conversations WHERE updated_at < ?1 LIMIT ?2)",
            )
            .bind(micros(before))
            .bind(DELETE_CHUNK)
            .execute(&self.writer)
            .await
            .map_err(db_error)?;
            total += done.rows_affected();
            if done.rows_affected() < DELETE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }
}

impl SqliteTaskStore {
    /// Commits a change that returned `row` (none: no such conversation, nothing recorded),
    /// recording `event` with the conversation after it.
    async fn commit_conversation(
        &self,
        tx: sqlx::Transaction<'static, sqlx::Sqlite>,
        row: Option<ConversationRow>,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<Option<Conversation>, StoreError> {
        let conversation = row.map(Conversation::try_from).transpose()?;
        let event = event.filter(|_| conversation.is_some());
        self.commit_memory(tx, event, || event_data(conversation.as_slice()))
            .await?;
        Ok(conversation)
    }
}
