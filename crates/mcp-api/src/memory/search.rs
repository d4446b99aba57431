//! Ranked full-text search over every message.

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiQuery, page_limit};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use mcp_core::memory::{MessageRole, SearchHit, SearchQuery, SearchRequest};
use mcp_core::services::MemoryError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    /// The query: words (all must occur), `"a phrase"`, `-excluded`, `or` between alternatives.
    pub q: String,
    /// Only in this conversation.
    pub conversation_id: Option<Uuid>,
    /// Only by this author.
    pub author: Option<String>,
    /// Only with this role.
    pub role: Option<String>,
    /// Only messages created at or after this instant (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only messages created before this instant (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Page size (default 50, at most 500).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResults {
    /// Best first: each message with its `snippet` and `rank`.
    pub messages: Vec<SearchHit>,
    /// Pass as `cursor` (with the same query) for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Ranked cursors are positions in the ranking: `o<offset>`, base64url-encoded so that clients
/// treat them as opaque.
fn encode_offset(offset: u32) -> String {
    URL_SAFE_NO_PAD.encode(format!("o{offset}"))
}

fn decode_offset(cursor: &str) -> Result<u32, ApiError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| ApiError::from(MemoryError::InvalidCursor))?;
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| text.strip_prefix('o'))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| MemoryError::InvalidCursor.into())
}

/// Full-text search over every message, ranked, with highlighted snippets.
#[utoipa::path(get, path = "/v1/search/messages", tag = "memory", params(SearchParams),
    responses(
        (status = 200, description = "ranked hits", body = SearchResults),
        (status = 400, description = "`invalid_search_query`, `invalid_query` or `invalid_cursor`", body = ErrorBody),
    ))]
pub async fn search(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<Json<SearchResults>, ApiError> {
    let limit = page_limit(&state.config, params.limit)?;
    let query = SearchQuery::parse(&params.q).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_search_query",
            e.to_string(),
        )
    })?;
    let role = params
        .role
        .as_deref()
        .map(str::parse::<MessageRole>)
        .transpose()
        .map_err(ApiError::invalid_query)?;
    let offset = params
        .cursor
        .as_deref()
        .map(decode_offset)
        .transpose()?
        .unwrap_or(0);
    let (messages, more) = state
        .memory
        .search(SearchRequest {
            query,
            conversation_id: params.conversation_id,
            author: params.author,
            role,
            since: params.since,
            until: params.until,
            offset,
            limit,
        })
        .await?;
    Ok(Json(SearchResults {
        messages,
        next_cursor: more.then(|| encode_offset(offset + limit)),
    }))
}
