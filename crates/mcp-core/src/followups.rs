//! Pending Discord interaction follow-ups: the reply a slash command owes once its task is final.
//! They live in the database, not in the memory of the node that took the interaction, so any
//! node that sees the task finish can send the follow-up, even after that node died.

use crate::store::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The `SecretBox` purpose of a sealed interaction (application id and token).
pub const SECRET_PURPOSE: &str = "discord.followup";

/// A follow-up to send when task `task_id` is final.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingFollowup {
    pub task_id: Uuid,
    /// `{"application_id","token"}` sealed by the `SecretBox`: the token lets anyone post as
    /// the application in that channel for 15 minutes.
    pub sealed: String,
    /// Who the follow-up task is created by (`discord:{user id}`).
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

#[async_trait]
pub trait FollowupStore: Send + Sync + 'static {
    /// Stores a follow-up; a second one for the same task replaces nothing and is no error.
    async fn save_followup(&self, followup: &PendingFollowup) -> Result<(), StoreError>;
    /// Up to `limit` follow-ups, oldest first, whose task is final or gone, or that were created
    /// before `stale`.
    async fn due_followups(
        &self,
        stale: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PendingFollowup>, StoreError>;
    /// Deletes the follow-up of a task; false if there was none.
    async fn delete_followup(&self, task_id: Uuid) -> Result<bool, StoreError>;
}
