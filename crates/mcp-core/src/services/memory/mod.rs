//! The memory service: the one path by which conversations and their messages are created,
//! read, changed, searched, summarized, exported and imported. The rules (limits, validation,
//! defaults, who may write what) and the events (every change on `conversation:{id}` and on
//! `memory`, and in the webhook outbox through the store) live here; the API only turns requests
//! and answers into JSON.

mod requests;
mod rules;
mod transfer;

pub use requests::{
    CreateConversation, ImportedConversation, ImportedMessage, MessageCursor, NewMessage,
    UpdateConversation, UpdateMessage,
};
pub use rules::{MemoryError, MemoryLimits};

use crate::events::{Event, EventBus};
use crate::memory::{
    ChangeEvent, Context, Conversation, ConversationFilter, ConversationPatch, InvalidInput,
    MAX_NAME_BYTES, MemoryStore, Message, MessagePage, MessagePatch, MessageRole, SearchHit,
    SearchRequest, Summary, build_context, check_metadata, check_name, check_text,
    deleted_conversation, deleted_message, estimate_tokens,
};
use crate::principal::Principal;
use chrono::{DateTime, Utc};
use rules::{
    check_participants, check_title, check_voice, conversation_id, exists, invalid, message_id,
};
use serde_json::{Value, json};
use std::sync::Arc;
use uuid::Uuid;

/// Messages per store call when importing and exporting.
const CHUNK: usize = 1_000;

pub struct MemoryService {
    store: Arc<dyn MemoryStore>,
    events: Arc<dyn EventBus>,
    limits: MemoryLimits,
}

impl MemoryService {
    pub fn new(
        store: Arc<dyn MemoryStore>,
        events: Arc<dyn EventBus>,
        limits: MemoryLimits,
    ) -> Self {
        MemoryService {
            store,
            events,
            limits,
        }
    }

    pub fn limits(&self) -> &MemoryLimits {
        &self.limits
    }

    /// The emit point: every change is an event on `conversation:{id}` and on `memory` (every
    /// conversation's changes). Publishing is best effort: the change is stored already, and a
    /// subscriber that missed the event resyncs through REST. Outgoing webhooks do not follow
    /// the bus: the store recorded the same event in the outbox with the change (the
    /// `ChangeEvent` each store call is given).
    async fn emit(
        &self,
        conversation_id: Uuid,
        event_type: &str,
        data: Value,
        correlation: Option<&str>,
    ) {
        let event = Arc::new(Event::new(event_type, data, correlation.map(str::to_owned)));
        for channel in [
            format!("conversation:{conversation_id}"),
            "memory".to_owned(),
        ] {
            if let Err(e) = self.events.publish(&channel, event.clone()).await {
                tracing::warn!(error = %e, %channel, event = event_type, "event not published");
            }
        }
    }

    /// The conversation with id `id`.
    pub async fn conversation(&self, id: &str) -> Result<Conversation, MemoryError> {
        self.store
            .conversation(conversation_id(id)?)
            .await?
            .ok_or_else(|| MemoryError::ConversationNotFound(id.to_owned()))
    }

    pub async fn create_conversation(
        &self,
        principal: &Principal,
        request: CreateConversation,
        correlation: Option<&str>,
    ) -> Result<Conversation, MemoryError> {
        let check = || -> Result<(), InvalidInput> {
            if let Some(title) = &request.title {
                check_title(title)?;
            }
            check_participants(&request.participants)?;
            if let Some(metadata) = &request.metadata {
                check_metadata("metadata", metadata)?;
            }
            Ok(())
        };
        check().map_err(invalid("invalid_conversation"))?;
        let now = Utc::now();
        let conversation = Conversation {
            id: request.id.unwrap_or_else(Uuid::now_v7),
            title: request.title,
            participants: request.participants,
            metadata: request.metadata.unwrap_or_else(|| json!({})),
            archived: false,
            summary: None,
            created_by: Some(principal.subject.clone()),
            created_at: now,
            updated_at: now,
        };
        let event = ChangeEvent::new("memory.conversation.created", correlation);
        self.store
            .create_conversation(&conversation, Some(event))
            .await
            .map_err(exists("conversation_exists"))?;
        self.emit(
            conversation.id,
            "memory.conversation.created",
            json!(conversation),
            correlation,
        )
        .await;
        Ok(conversation)
    }

    /// A page of conversations, newest first; the cursor is the last one's id.
    pub async fn list_conversations(
        &self,
        filter: ConversationFilter,
    ) -> Result<(Vec<Conversation>, Option<Uuid>), MemoryError> {
        let limit = filter.limit as usize;
        let mut conversations = self
            .store
            .list_conversations(&ConversationFilter {
                limit: filter.limit + 1,
                ..filter
            })
            .await?;
        let next = if super::trim_page(&mut conversations, limit) {
            conversations.last().map(|c| c.id)
        } else {
            None
        };
        Ok((conversations, next))
    }

    pub async fn update_conversation(
        &self,
        id: &str,
        request: UpdateConversation,
        correlation: Option<&str>,
    ) -> Result<Conversation, MemoryError> {
        let conversation_id = conversation_id(id)?;
        let check = || -> Result<(), InvalidInput> {
            if let Some(Some(title)) = &request.title {
                check_title(title)?;
            }
            if let Some(participants) = &request.participants {
                check_participants(participants)?;
            }
            if let Some(metadata) = &request.metadata {
                check_metadata("metadata", metadata)?;
            }
            Ok(())
        };
        check().map_err(invalid("invalid_conversation"))?;
        let patch = ConversationPatch {
            title: request.title,
            participants: request.participants,
            metadata: request.metadata,
            archived: request.archived,
        };
        let conversation = self
            .store
            .update_conversation(
                conversation_id,
                &patch,
                Utc::now(),
                Some(ChangeEvent::new("memory.conversation.updated", correlation)),
            )
            .await?
            .ok_or_else(|| MemoryError::ConversationNotFound(id.to_owned()))?;
        self.emit(
            conversation.id,
            "memory.conversation.updated",
            json!(conversation),
            correlation,
        )
        .await;
        Ok(conversation)
    }

    /// Deletes a conversation and all its messages.
    pub async fn delete_conversation(
        &self,
        id: &str,
        correlation: Option<&str>,
    ) -> Result<(), MemoryError> {
        let conversation_id = conversation_id(id)?;
        let event = ChangeEvent::new("memory.conversation.deleted", correlation);
        if !self
            .store
            .delete_conversation(conversation_id, Some(event))
            .await?
        {
            return Err(MemoryError::ConversationNotFound(id.to_owned()));
        }
        self.emit(
            conversation_id,
            "memory.conversation.deleted",
            deleted_conversation(conversation_id),
            correlation,
        )
        .await;
        Ok(())
    }

    /// Checks a message's size against the limit; `field` names it in the answer.
    fn check_size(&self, field: &str, content: &str) -> Result<(), MemoryError> {
        let max = self.limits.max_message_bytes;
        if content.len() > max {
            return Err(MemoryError::TooLarge {
                message: format!(
                    "{field} is {} bytes; a message holds at most {max}",
                    content.len()
                ),
                field: Some(field.to_owned()),
                limit: max,
            });
        }
        Ok(())
    }

    /// Checks a new message against the limits and the writer's rights, and builds it, written
    /// by `principal`.
    fn build_message(
        &self,
        principal: &Principal,
        conversation_id: Uuid,
        new: NewMessage,
        index: Option<usize>,
        now: DateTime<Utc>,
    ) -> Result<Message, MemoryError> {
        let field = |name: &str| match index {
            Some(i) => format!("messages[{i}].{name}"),
            None => name.to_owned(),
        };
        self.check_size(&field("content"), &new.content)?;
        let role = new.role.unwrap_or(MessageRole::User);
        check_voice(principal, role, new.created_at, field)?;
        let author = new.author.unwrap_or_else(|| principal.subject.clone());
        let check = || -> Result<(), InvalidInput> {
            check_text(&field("content"), &new.content)?;
            check_name(&field("author"), &author)?;
            if let Some(metadata) = &new.metadata {
                check_metadata(&field("metadata"), metadata)?;
            }
            Ok(())
        };
        check().map_err(invalid("invalid_message"))?;
        Ok(Message {
            id: new.id.unwrap_or_else(Uuid::now_v7),
            conversation_id,
            author,
            role,
            tokens: estimate_tokens(&new.content),
            content: new.content,
            metadata: new.metadata.unwrap_or_else(|| json!({})),
            pinned: new.pinned,
            created_at: new.created_at.unwrap_or(now),
            created_by: Some(principal.subject.clone()),
        })
    }

    /// Adds one message (`batch` false) or a batch, all or none. New activity brings an
    /// archived conversation back.
    pub async fn append_messages(
        &self,
        principal: &Principal,
        id: &str,
        new: Vec<NewMessage>,
        batch: bool,
        correlation: Option<&str>,
    ) -> Result<Vec<Message>, MemoryError> {
        let conversation_id = conversation_id(id)?;
        let now = Utc::now();
        let max = self.limits.max_batch;
        if batch && (new.is_empty() || new.len() > max) {
            return Err(MemoryError::BatchSize {
                max,
                got: new.len(),
            });
        }
        let messages = new
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let index = batch.then_some(i);
                self.build_message(principal, conversation_id, m, index, now)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let latest = messages.iter().map(|m| m.created_at).max().unwrap_or(now);
        let stored = self
            .store
            .append_messages(
                conversation_id,
                &messages,
                latest.max(now),
                Some(ChangeEvent::new("memory.message.created", correlation)),
            )
            .await
            .map_err(exists("message_exists"))?;
        if !stored {
            return Err(MemoryError::ConversationNotFound(id.to_owned()));
        }
        for message in &messages {
            self.emit(
                conversation_id,
                "memory.message.created",
                json!(message),
                correlation,
            )
            .await;
        }
        Ok(messages)
    }

    /// A page of a conversation's messages, oldest first: the newest page by default, then
    /// pages going back with `before`, or forward with `after`.
    pub async fn list_messages(
        &self,
        id: &str,
        cursor: MessageCursor,
        limit: u32,
    ) -> Result<(Vec<Message>, Option<Uuid>), MemoryError> {
        let conversation = self.conversation(id).await?;
        let page = match (cursor.before, cursor.after) {
            (Some(_), Some(_)) => {
                return Err(MemoryError::InvalidQuery(
                    "give `before` or `after`, not both".to_owned(),
                ));
            }
            (Some(before), None) => MessagePage::Before(before),
            (None, Some(after)) => MessagePage::After(after),
            (None, None) => MessagePage::Newest,
        };
        if let MessagePage::Before(cursor) | MessagePage::After(cursor) = page
            && self.store.message(conversation.id, cursor).await?.is_none()
        {
            return Err(MemoryError::InvalidCursor);
        }
        let mut messages = self
            .store
            .list_messages(conversation.id, page, limit + 1)
            .await?;
        let next = if super::trim_page(&mut messages, limit as usize) {
            messages.last().map(|m| m.id)
        } else {
            None
        };
        if !matches!(page, MessagePage::After(_)) {
            messages.reverse();
        }
        Ok((messages, next))
    }

    /// Pins or unpins a message, replaces its metadata or edits its content.
    pub async fn update_message(
        &self,
        id: &str,
        message: &str,
        request: UpdateMessage,
        correlation: Option<&str>,
    ) -> Result<Message, MemoryError> {
        let conversation_id = conversation_id(id)?;
        let message_uuid = message_id(message)?;
        if let Some(content) = &request.content {
            self.check_size("content", content)?;
        }
        let check = || -> Result<(), InvalidInput> {
            if let Some(content) = &request.content {
                check_text("content", content)?;
            }
            if let Some(metadata) = &request.metadata {
                check_metadata("metadata", metadata)?;
            }
            Ok(())
        };
        check().map_err(invalid("invalid_message"))?;
        let patch = MessagePatch {
            content: request.content,
            metadata: request.metadata,
            pinned: request.pinned,
        };
        let Some(updated) = self
            .store
            .update_message(
                conversation_id,
                message_uuid,
                &patch,
                Utc::now(),
                Some(ChangeEvent::new("memory.message.updated", correlation)),
            )
            .await?
        else {
            self.conversation(id).await?;
            return Err(MemoryError::MessageNotFound(message.to_owned()));
        };
        self.emit(
            conversation_id,
            "memory.message.updated",
            json!(updated),
            correlation,
        )
        .await;
        Ok(updated)
    }

    pub async fn delete_message(
        &self,
        id: &str,
        message: &str,
        correlation: Option<&str>,
    ) -> Result<(), MemoryError> {
        let conversation_id = conversation_id(id)?;
        let message_uuid = message_id(message)?;
        if !self
            .store
            .delete_message(
                conversation_id,
                message_uuid,
                Utc::now(),
                Some(ChangeEvent::new("memory.message.deleted", correlation)),
            )
            .await?
        {
            self.conversation(id).await?;
            return Err(MemoryError::MessageNotFound(message.to_owned()));
        }
        self.emit(
            conversation_id,
            "memory.message.deleted",
            deleted_message(conversation_id, message_uuid),
            correlation,
        )
        .await;
        Ok(())
    }

    /// What to give a model: the latest summary, the pinned messages, then the newest messages
    /// that fit `max_tokens` (the configured default when `None`).
    pub async fn context(&self, id: &str, max_tokens: Option<u32>) -> Result<Context, MemoryError> {
        let max_tokens = max_tokens.unwrap_or(self.limits.default_context_tokens);
        if !(1..=self.limits.max_context_tokens).contains(&max_tokens) {
            return Err(MemoryError::InvalidQuery(format!(
                "max_tokens must be between 1 and {}",
                self.limits.max_context_tokens
            )));
        }
        let conversation = self.conversation(id).await?;
        Ok(build_context(self.store.as_ref(), &conversation, max_tokens).await?)
    }

    /// Stores a conversation's summary (what a `memory.summarize` worker does with its result).
    pub async fn set_summary(
        &self,
        id: &str,
        text: String,
        through: Option<Uuid>,
        correlation: Option<&str>,
    ) -> Result<Conversation, MemoryError> {
        let conversation_id = conversation_id(id)?;
        let max = self.limits.max_message_bytes;
        if text.len() > max {
            return Err(MemoryError::TooLarge {
                message: format!("a summary holds at most {max} bytes"),
                field: None,
                limit: max,
            });
        }
        check_text("text", &text).map_err(invalid("invalid_summary"))?;
        let summary = Summary {
            tokens: estimate_tokens(&text),
            text,
            through,
            updated_at: Utc::now(),
        };
        let conversation = self
            .store
            .set_summary(
                conversation_id,
                &summary,
                Some(ChangeEvent::new(
                    "memory.conversation.summarized",
                    correlation,
                )),
            )
            .await?
            .ok_or_else(|| MemoryError::ConversationNotFound(id.to_owned()))?;
        self.emit(
            conversation_id,
            "memory.conversation.summarized",
            json!(conversation),
            correlation,
        )
        .await;
        Ok(conversation)
    }

    /// Ranked hits of `request` (`limit` of them from `offset`), and whether more follow.
    pub async fn search(
        &self,
        request: SearchRequest,
    ) -> Result<(Vec<SearchHit>, bool), MemoryError> {
        let depth = self.limits.max_search_depth;
        if request.offset.saturating_add(request.limit) > depth {
            return Err(MemoryError::InvalidQuery(format!(
                "results go {depth} deep at most; narrow the query or its filters"
            )));
        }
        if let Some(author) = &request.author {
            check_text("author", author).map_err(|e| MemoryError::InvalidQuery(e.to_string()))?;
            // No name is that long: nothing can match.
            if author.len() > MAX_NAME_BYTES {
                return Ok((Vec::new(), false));
            }
        }
        let limit = request.limit as usize;
        let mut hits = self
            .store
            .search(&SearchRequest {
                limit: request.limit + 1,
                ..request
            })
            .await?;
        let more = super::trim_page(&mut hits, limit);
        Ok((hits, more))
    }
}
