//! What callers ask of the memory service: the bodies of the create, change and import requests,
//! as the API receives them (their JSON shape is the REST API's).

use crate::memory::{MessageRole, Summary};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// `Some(None)` for an explicit `null`, `None` for an absent field.
fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    /// A UUID of the caller's choosing (default: a new UUIDv7).
    pub id: Option<Uuid>,
    pub title: Option<String>,
    #[serde(default)]
    pub participants: Vec<String>,
    /// A JSON object (default `{}`).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateConversation {
    /// A new title; `null` clears it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub title: Option<Option<String>>,
    pub participants: Option<Vec<String>>,
    /// Replaces the metadata object.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Archive or bring back.
    pub archived: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    /// A UUID of the caller's choosing, e.g. to make retries safe (default: a new UUIDv7).
    pub id: Option<Uuid>,
    /// Who wrote it (default: the caller's subject).
    pub author: Option<String>,
    /// Default `user`.
    pub role: Option<MessageRole>,
    pub content: String,
    /// A JSON object (default `{}`).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub pinned: bool,
    /// When it was written, if not now (bridged or imported history).
    pub created_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMessage {
    /// New text (re-estimates `tokens`).
    pub content: Option<String>,
    /// Replaces the metadata object.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Pin or unpin.
    pub pinned: Option<bool>,
}

/// A conversation read back from an export, with its ids and times.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportedConversation {
    pub id: Uuid,
    pub title: Option<String>,
    #[serde(default)]
    pub participants: Vec<String>,
    pub metadata: Option<Value>,
    #[serde(default)]
    pub archived: bool,
    pub summary: Option<Summary>,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A message read back from an export: the message, and who wrote it on the hub it came from
/// (`None` in exports made before `created_by` was recorded).
#[derive(Debug)]
pub struct ImportedMessage {
    pub message: NewMessage,
    pub created_by: Option<String>,
}

/// Where a page of messages starts, as the caller named it.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageCursor {
    pub before: Option<Uuid>,
    pub after: Option<Uuid>,
}
