//! The limits of the memory routes, part of the API configuration.

/// Limits of the memory routes.
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
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits {
            max_message_bytes: 64 * 1024,
            default_context_tokens: 4_096,
            max_context_tokens: 1_000_000,
            max_import_bytes: 64 * 1024 * 1024,
            // The stores rank at most this many matches of one query.
            max_search_depth: mcp_core::memory::RANKED_MATCHES,
        }
    }
}
