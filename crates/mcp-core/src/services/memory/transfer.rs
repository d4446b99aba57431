//! Export and import: a conversation with every message, read out oldest first, or written back
//! with its ids and times, all or nothing.

use super::rules::{check_participants, check_title, exists, invalid};
use super::{CHUNK, ImportedConversation, ImportedMessage, MemoryError, MemoryService};
use crate::StoreError;
use crate::memory::{
    ChangeEvent, Conversation, ConversationPatch, InvalidInput, Message, MessagePage,
    check_metadata, check_name, check_text,
};
use crate::principal::Principal;
use serde_json::json;

impl MemoryService {
    /// A conversation and every message, oldest first.
    pub async fn export(&self, id: &str) -> Result<(Conversation, Vec<Message>), MemoryError> {
        let conversation = self.conversation(id).await?;
        // Walk back from the newest (the index serves both directions), then oldest first.
        let mut messages = Vec::new();
        let mut page = MessagePage::Newest;
        loop {
            let batch = self
                .store
                .list_messages(conversation.id, page, CHUNK as u32)
                .await?;
            let done = batch.len() < CHUNK;
            if let Some(last) = batch.last() {
                page = MessagePage::Before(last.id);
            }
            messages.extend(batch);
            if done {
                break;
            }
        }
        messages.reverse();
        Ok((conversation, messages))
    }

    /// Imports an exported conversation with its messages, keeping their ids and times; all or
    /// nothing. Each message keeps the `created_by` of its export (the writer the exporting hub
    /// authenticated; import takes `memory:manage`, so the importer is trusted to carry history
    /// over); a message exported without one is recorded as written by the importer. The import
    /// makes one event, `memory.conversation.created`, once everything is stored.
    pub async fn import(
        &self,
        principal: &Principal,
        imported: ImportedConversation,
        messages: Vec<ImportedMessage>,
        correlation: Option<&str>,
    ) -> Result<Conversation, MemoryError> {
        let check = || -> Result<(), InvalidInput> {
            if let Some(title) = &imported.title {
                check_title(title)?;
            }
            check_participants(&imported.participants)?;
            if let Some(metadata) = &imported.metadata {
                check_metadata("metadata", metadata)?;
            }
            if let Some(summary) = &imported.summary {
                check_text("summary", &summary.text)?;
            }
            Ok(())
        };
        check().map_err(invalid("invalid_conversation"))?;
        let conversation = Conversation {
            id: imported.id,
            title: imported.title,
            participants: imported.participants,
            metadata: imported.metadata.unwrap_or_else(|| json!({})),
            archived: imported.archived,
            summary: imported.summary,
            created_by: imported
                .created_by
                .or_else(|| Some(principal.subject.clone())),
            created_at: imported.created_at,
            updated_at: imported.updated_at,
        };
        let messages = messages
            .into_iter()
            .map(|m| {
                let mut message = self.build_message(
                    principal,
                    conversation.id,
                    m.message,
                    None,
                    conversation.updated_at,
                )?;
                if let Some(created_by) = m.created_by {
                    check_name("created_by", &created_by).map_err(invalid("invalid_message"))?;
                    message.created_by = Some(created_by);
                }
                Ok::<_, MemoryError>(message)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.store
            .create_conversation(&conversation, None)
            .await
            .map_err(exists("conversation_exists"))?;
        for chunk in messages.chunks(CHUNK) {
            let appended = self
                .store
                .append_messages(conversation.id, chunk, conversation.updated_at, None)
                .await;
            if !matches!(appended, Ok(true)) {
                // All or nothing: take back what was stored.
                if let Err(e) = self.store.delete_conversation(conversation.id, None).await {
                    tracing::error!(error = %e, id = %conversation.id, "could not undo a failed import");
                }
                return Err(match appended {
                    Err(e) => exists("message_exists")(e),
                    _ => MemoryError::Store(StoreError::Database(
                        "the conversation vanished while importing".to_owned(),
                    )),
                });
            }
        }
        // Appending counts as activity; the imported conversation keeps its own.
        let patch = ConversationPatch {
            archived: Some(conversation.archived),
            ..ConversationPatch::default()
        };
        let stored = self
            .store
            .update_conversation(
                conversation.id,
                &patch,
                conversation.updated_at,
                Some(ChangeEvent::new("memory.conversation.created", correlation)),
            )
            .await?
            .ok_or_else(|| {
                MemoryError::Store(StoreError::Database(
                    "the imported conversation vanished".to_owned(),
                ))
            })?;
        self.emit(
            conversation.id,
            "memory.conversation.created",
            json!(stored),
            correlation,
        )
        .await;
        Ok(stored)
    }
}
