//! Summaries: the `memory.summarize` payload and the built-in extractive summarizer.

use super::{
    MESSAGE_OVERHEAD_TOKENS, MemoryStore, Message, MessagePage, MessageRole, Summary,
    estimate_tokens,
};
use crate::handler::{Handler, HandlerError, TaskContext};
use crate::store::StoreError;
use async_trait::async_trait;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use utoipa::ToSchema;
use uuid::Uuid;

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
            .set_summary(request.conversation_id, &summary, None)
            .await
            .map_err(store_error)?
            .ok_or_else(|| HandlerError::permanent("the conversation was deleted meanwhile"))?;
        Ok(json!({"summary": summary}))
    }
}
