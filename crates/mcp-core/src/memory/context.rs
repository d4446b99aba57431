//! Tokens and context windows: the token-estimate rule, and what a model is given from a
//! conversation for a budget of tokens.

use super::{Conversation, MemoryStore, Message, MessagePage, Summary};
use crate::store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

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
