//! The `MemoryStore` of the PostgreSQL store, in the tables of
//! `migrations/postgres/0004_memory.sql` (and the BRIN index of `0005_memory_speed.sql`).
//! Search is a stored `tsvector` (configuration `mcp_search`: English stems, no stop words)
//! behind a GIN index, queried with `websearch_to_tsquery`, ranked by `ts_rank` over at most the
//! newest `RANKED_MATCHES` matches (a bound on the cost of common words, shared with SQLite),
//! with `ts_headline` snippets made only for the page returned. Batches of messages are one
//! `INSERT … SELECT FROM unnest(…)`, after the conversation's row is locked: that lock, not a
//! foreign key checked per message, is what keeps a message from outliving its conversation
//! (`0023_memory_insert_speed.sql`, whose trigger deletes a conversation's messages with it).
//! Every change runs in one transaction with its webhook outbox rows, when a webhook wants its
//! event (`commit_memory`).

use super::PgTaskStore;
use crate::codec::{tokens, unsigned};
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
use serde_json::Value;
use sqlx::FromRow;
use sqlx::types::Json;
use std::str::FromStr;
use uuid::Uuid;

/// Conversations one retention statement deletes (their messages go with them).
const DELETE_CHUNK: i64 = 100;

fn tokens_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// `ts_headline` options: the private-use marks `render_snippet` turns into `<mark>`, and a
/// fragment of about the size SQLite's `snippet()` gives.
fn headline_options() -> String {
    format!(
        "StartSel={SNIPPET_START}, StopSel={SNIPPET_END}, MaxWords=24, MinWords=8, \
         ShortWord=2, MaxFragments=2, FragmentDelimiter=\" … \""
    )
}

/// Where `search` cuts the history into slices, in messages back from the newest (`seq` of the
/// last message given); the last slice is all the older ones. Slices grow as they go back, so
/// that a common word stops in the first one or two and a rare word costs a few more index
/// probes (each slice probes the GIN index again; the BRIN index on `seq` keeps the slice's
/// heap reads within its pages).
const SLICE_BOUNDS: [i64; 4] = [50_000, 100_000, 200_000, 400_000];

/// `select` (a query of matches with a `seq` column `m.seq`) as a `UNION ALL` of slices of
/// `seq`, newest slice first, each sorted newest first: the rows come out newest first, and a
/// `LIMIT` above stops before the older slices are read (PostgreSQL's `Append` runs its
/// branches in order and only as far as rows are asked for).
fn newest_first(select: &str) -> String {
    let newest = "(SELECT last_value FROM messages_seq_seq)";
    let mut slices = Vec::with_capacity(SLICE_BOUNDS.len() + 1);
    let mut previous = None;
    for bound in SLICE_BOUNDS.map(Some).into_iter().chain([None]) {
        let newer = previous.map_or_else(String::new, |p| format!(" AND m.seq <= {newest} - {p}"));
        let older = bound.map_or_else(String::new, |b| format!(" AND m.seq > {newest} - {b}"));
        slices.push(format!(
            "(SELECT * FROM ({select}{newer}{older} ORDER BY m.seq DESC) AS slice)"
        ));
        previous = bound;
    }
    slices.join(" UNION ALL ")
}

#[derive(FromRow)]
struct ConversationRow {
    id: Uuid,
    title: Option<String>,
    participants: Vec<String>,
    metadata: Json<Value>,
    archived: bool,
    summary: Option<String>,
    summary_through: Option<Uuid>,
    summary_tokens: Option<i32>,
    summary_updated_at: Option<DateTime<Utc>>,
    created_by: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<ConversationRow> for Conversation {
    fn from(row: ConversationRow) -> Conversation {
        let summary = match (row.summary, row.summary_updated_at) {
            (Some(text), Some(updated_at)) => Some(Summary {
                tokens: row
                    .summary_tokens
                    .map_or_else(|| estimate_tokens(&text), |n| tokens(n.into())),
                text,
                through: row.summary_through,
                updated_at,
            }),
            _ => None,
        };
        Conversation {
            id: row.id,
            title: row.title,
            participants: row.participants,
            metadata: row.metadata.0,
            archived: row.archived,
            summary,
            created_by: row.created_by,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

#[derive(FromRow)]
struct MessageRow {
    id: Uuid,
    conversation_id: Uuid,
    author: String,
    role: String,
    content: String,
    metadata: Json<Value>,
    pinned: bool,
    tokens: i32,
    created_at: DateTime<Utc>,
    created_by: Option<String>,
}

impl TryFrom<MessageRow> for Message {
    type Error = StoreError;
    fn try_from(row: MessageRow) -> Result<Message, StoreError> {
        Ok(Message {
            id: row.id,
            conversation_id: row.conversation_id,
            author: row.author,
            role: MessageRole::from_str(&row.role).map_err(corrupt)?,
            content: row.content,
            metadata: row.metadata.0,
            pinned: row.pinned,
            tokens: tokens(row.tokens.into()),
            created_at: row.created_at,
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

/// Bumps a conversation's last activity (never backwards).
async fn touch<'e, E>(executor: E, id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError>
where
    E: sqlx::PgExecutor<'e>,
{
    sqlx::query("UPDATE conversations SET updated_at = greatest(updated_at, $2) WHERE id = $1")
        .bind(id)
        .bind(at)
        .execute(executor)
        .await
        .map_err(db_error)?;
    Ok(())
}

#[async_trait]
impl MemoryStore for PgTaskStore {
    async fn create_conversation(
        &self,
        c: &Conversation,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        sqlx::query(
            "INSERT INTO conversations (id, title, participants, metadata, archived, summary,
                 summary_through, summary_tokens, summary_updated_at, created_by, created_at,
                 updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(c.id)
        .bind(c.title.as_deref())
        .bind(&c.participants)
        .bind(Json(&c.metadata))
        .bind(c.archived)
        .bind(c.summary.as_ref().map(|s| s.text.as_str()))
        .bind(c.summary.as_ref().and_then(|s| s.through))
        .bind(c.summary.as_ref().map(|s| tokens_i32(s.tokens)))
        .bind(c.summary.as_ref().map(|s| s.updated_at))
        .bind(c.created_by.as_deref())
        .bind(c.created_at)
        .bind(c.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_or_db_error(e, || format!("conversation `{}`", c.id)))?;
        self.commit_memory(tx, event, || event_data(std::slice::from_ref(c)))
            .await
    }

    async fn conversation(&self, id: Uuid) -> Result<Option<Conversation>, StoreError> {
        let row: Option<ConversationRow> = sqlx::query_as(sql!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(row.map(Conversation::from))
    }

    async fn list_conversations(
        &self,
        filter: &ConversationFilter,
    ) -> Result<Vec<Conversation>, StoreError> {
        let rows: Vec<ConversationRow> = sqlx::query_as(sql!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations
             WHERE ($1::text IS NULL OR participants @> ARRAY[$1::text])
               AND ($2::boolean IS NULL OR archived = $2)
               AND ($3::uuid IS NULL OR id < $3)
             ORDER BY id DESC
             LIMIT $4"
        ))
        .bind(filter.participant.as_deref())
        .bind(filter.archived)
        .bind(filter.before)
        .bind(i64::from(filter.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(rows.into_iter().map(Conversation::from).collect())
    }

    async fn update_conversation(
        &self,
        id: Uuid,
        patch: &ConversationPatch,
        at: DateTime<Utc>,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<Option<Conversation>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let row: Option<ConversationRow> = sqlx::query_as(sql!(
            "UPDATE conversations SET
                 title = CASE WHEN $2 THEN $3 ELSE title END,
                 participants = coalesce($4, participants),
                 metadata = coalesce($5, metadata),
                 archived = coalesce($6, archived),
                 updated_at = greatest(updated_at, $7)
             WHERE id = $1
             RETURNING {CONVERSATION_COLUMNS}"
        ))
        .bind(id)
        .bind(patch.title.is_some())
        .bind(patch.title.clone().flatten())
        .bind(patch.participants.as_ref())
        .bind(patch.metadata.as_ref().map(Json))
        .bind(patch.archived)
        .bind(at)
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
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let deleted = sqlx::query("DELETE FROM conversations WHERE id = $1")
            .bind(id)
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
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let row: Option<ConversationRow> = sqlx::query_as(sql!(
            "UPDATE conversations SET summary = $2, summary_through = $3, summary_tokens = $4,
                 summary_updated_at = $5
             WHERE id = $1
             RETURNING {CONVERSATION_COLUMNS}"
        ))
        .bind(id)
        .bind(&summary.text)
        .bind(summary.through)
        .bind(tokens_i32(summary.tokens))
        .bind(summary.updated_at)
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
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        // Locks the conversation's row until the commit: a deletion waits for it, and then
        // deletes these messages too (there is no foreign key: see the module comment).
        let found = sqlx::query(
            "UPDATE conversations SET updated_at = greatest(updated_at, $2), archived = false
             WHERE id = $1",
        )
        .bind(conversation_id)
        .bind(at)
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
            let ids: Vec<Uuid> = new.iter().map(|m| m.id).collect();
            let authors: Vec<&str> = new.iter().map(|m| m.author.as_str()).collect();
            let roles: Vec<&str> = new.iter().map(|m| m.role.as_str()).collect();
            let contents: Vec<&str> = new.iter().map(|m| m.content.as_str()).collect();
            let metadata: Vec<String> = new.iter().map(|m| m.metadata.to_string()).collect();
            let pinned: Vec<bool> = new.iter().map(|m| m.pinned).collect();
            let counts: Vec<i32> = new.iter().map(|m| tokens_i32(m.tokens)).collect();
            let created: Vec<DateTime<Utc>> = new.iter().map(|m| m.created_at).collect();
            let writers: Vec<Option<&str>> = new.iter().map(|m| m.created_by.as_deref()).collect();
            sqlx::query(
                "INSERT INTO messages (id, conversation_id, author, role, content, metadata,
                     pinned, tokens, created_at, created_by)
                 SELECT u.id, $1, u.author, u.role, u.content, u.metadata::jsonb, u.pinned,
                     u.tokens, u.created_at, u.created_by
                 FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                             $7::boolean[], $8::integer[], $9::timestamptz[], $10::text[])
                      WITH ORDINALITY
                      AS u (id, author, role, content, metadata, pinned, tokens, created_at,
                            created_by, n)
                 ORDER BY u.n",
            )
            .bind(conversation_id)
            .bind(&ids)
            .bind(&authors)
            .bind(&roles)
            .bind(&contents)
            .bind(&metadata)
            .bind(&pinned)
            .bind(&counts)
            .bind(&created)
            .bind(&writers)
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
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1 AND conversation_id = $2"
        ))
        .bind(id)
        .bind(conversation_id)
        .fetch_optional(&self.pool)
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
        let cursor = "(SELECT seq FROM messages WHERE id = $2 AND conversation_id = $1)";
        let (condition, order, anchor) = match page {
            MessagePage::Newest => ("true".to_owned(), "DESC", None),
            MessagePage::Before(id) => (format!("seq < {cursor}"), "DESC", Some(id)),
            MessagePage::After(id) => (format!("seq > {cursor}"), "ASC", Some(id)),
        };
        let rows: Vec<MessageRow> = sqlx::query_as(sql!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
             WHERE conversation_id = $1 AND ($2::uuid IS NULL OR {condition})
             ORDER BY seq {order}
             LIMIT $3"
        ))
        .bind(conversation_id)
        .bind(anchor)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
             WHERE conversation_id = $1 AND pinned
             ORDER BY seq DESC
             LIMIT $2"
        ))
        .bind(conversation_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let row: Option<MessageRow> = sqlx::query_as(sql!(
            "UPDATE messages SET
                 content = coalesce($3, content),
                 tokens = coalesce($4, tokens),
                 metadata = coalesce($5, metadata),
                 pinned = coalesce($6, pinned)
             WHERE id = $1 AND conversation_id = $2
             RETURNING {MESSAGE_COLUMNS}"
        ))
        .bind(id)
        .bind(conversation_id)
        .bind(patch.content.as_deref())
        .bind(
            patch
                .content
                .as_deref()
                .map(|c| tokens_i32(estimate_tokens(c))),
        )
        .bind(patch.metadata.as_ref().map(Json))
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
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let deleted = sqlx::query("DELETE FROM messages WHERE id = $1 AND conversation_id = $2")
            .bind(id)
            .bind(conversation_id)
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
        // 1. `candidates`: the newest RANKED_MATCHES matches. Ranking reads each match's
        //    `tsvector` from the heap, one page per match: that, not `ts_rank`, is the cost of
        //    a common word. So the matches are read in slices of `seq` (see `newest_first`),
        //    newest first, each slice sorted newest first, and the LIMIT stops the reading
        //    once it has enough: a common word reads about RANKED_MATCHES rows, not all of its
        //    matches. `ts_rank` is computed in the slices read, on those rows only.
        // 2. `hits`: one page of the candidates by rank; normalization 1 divides by
        //    1 + log(length) so that, as with bm25, a match in a short message outranks the
        //    same match diluted in a long one;
        // 3. `ts_headline` (the costly part) for that page only.
        let columns = qualified(MESSAGE_COLUMNS, "m");
        // The store's connections turn bitmap scans off for the task claim (see `connect`), but
        // a GIN index is only ever read by a bitmap scan: turn them back on for this search.
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        sqlx::query("SET LOCAL enable_bitmapscan = on")
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let slices = newest_first(
            "SELECT m.id, m.seq, ts_rank(m.search, q.query, 1)::float8 AS rank
             FROM messages m, q
             WHERE m.search @@ q.query
               AND ($2::uuid IS NULL OR m.conversation_id = $2)
               AND ($3::text IS NULL OR m.author = $3)
               AND ($4::text IS NULL OR m.role = $4)
               AND ($5::timestamptz IS NULL OR m.created_at >= $5)
               AND ($6::timestamptz IS NULL OR m.created_at < $6)",
        );
        let rows: Vec<HitRow> = sqlx::query_as(sql!(
            "WITH q AS (SELECT websearch_to_tsquery('mcp_search', $1) AS query),
             candidates AS (
                 {slices}
                 LIMIT $10
             ),
             hits AS (
                 SELECT id, seq, rank FROM candidates
                 ORDER BY rank DESC, seq DESC
                 LIMIT $7 OFFSET $8
             )
             SELECT {columns}, hits.rank AS rank,
                 ts_headline('mcp_search', m.content, q.query, $9) AS snippet
             FROM hits JOIN messages m ON m.id = hits.id, q
             ORDER BY hits.rank DESC, hits.seq DESC"
        ))
        .bind(request.query.to_websearch())
        .bind(request.conversation_id)
        .bind(request.author.as_deref())
        .bind(request.role.map(MessageRole::as_str))
        .bind(request.since)
        .bind(request.until)
        .bind(i64::from(request.limit))
        .bind(i64::from(request.offset))
        .bind(headline_options())
        .bind(i64::from(RANKED_MATCHES))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
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
            "UPDATE conversations SET archived = true WHERE NOT archived AND updated_at < $1",
        )
        .bind(before)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(done.rows_affected())
    }

    async fn delete_idle(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM conversations WHERE id IN (
                     SELECT id FROM conversations WHERE updated_at < $1 LIMIT $2
                     FOR UPDATE SKIP LOCKED)",
            )
            .bind(before)
            .bind(DELETE_CHUNK)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
            total += done.rows_affected();
            if done.rows_affected() < DELETE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }
}

impl PgTaskStore {
    /// Commits a change that returned `row` (none: no such conversation, nothing recorded),
    /// recording `event` with the conversation after it.
    async fn commit_conversation(
        &self,
        tx: sqlx::Transaction<'static, sqlx::Postgres>,
        row: Option<ConversationRow>,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<Option<Conversation>, StoreError> {
        let conversation = row.map(Conversation::from);
        let event = event.filter(|_| conversation.is_some());
        self.commit_memory(tx, event, || event_data(conversation.as_slice()))
            .await?;
        Ok(conversation)
    }

    /// Brings the memory tables' planner statistics and visibility map up to date, as
    /// autovacuum would after a while (benchmarks call it after a bulk load).
    pub async fn vacuum_memory(&self) -> Result<(), StoreError> {
        for table in ["messages", "conversations"] {
            sqlx::query(sql!("VACUUM ANALYZE {table}"))
                .execute(&self.pool)
                .await
                .map_err(db_error)?;
        }
        Ok(())
    }

    /// Bytes the memory tables and their indexes take.
    pub async fn memory_bytes(&self) -> Result<u64, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT (pg_total_relation_size('messages')
                     + pg_total_relation_size('conversations'))::bigint",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(unsigned(n))
    }
}
