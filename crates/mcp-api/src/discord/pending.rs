//! Where follow-ups owed wait: [`Followups`], the database with each interaction sealed by the
//! `SecretBox`, so any node can send a follow-up whose waiter died. A leaf, so `state` can hold
//! it; the code that waits and sends is in `followups`, beside the handler.

use mcp_core::followups::{FollowupStore, PendingFollowup, SECRET_PURPOSE};
use mcp_core::secrets::SecretBox;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;

/// Where pending follow-ups are kept: the database, the interaction sealed.
#[derive(Clone)]
pub struct Followups {
    pub store: Arc<dyn FollowupStore>,
    pub secrets: Arc<SecretBox>,
}

/// The sealed part of a stored follow-up.
#[derive(Serialize, Deserialize)]
pub(super) struct SealedInteraction {
    pub(super) application_id: String,
    pub(super) token: String,
}

impl Followups {
    pub(super) async fn save(
        &self,
        task_id: Uuid,
        application_id: &str,
        token: &str,
        created_by: &str,
    ) -> Result<(), String> {
        let plain = serde_json::to_vec(&SealedInteraction {
            application_id: application_id.to_owned(),
            token: token.to_owned(),
        })
        .map_err(|e| e.to_string())?;
        let sealed = self
            .secrets
            .seal(&plain, SECRET_PURPOSE)
            .map_err(|e| e.to_string())?;
        self.store
            .save_followup(&PendingFollowup {
                task_id,
                sealed,
                created_by: created_by.to_owned(),
                created_at: chrono::Utc::now(),
            })
            .await
            .map_err(|e| e.to_string())
    }

    pub(super) fn open(&self, followup: &PendingFollowup) -> Result<SealedInteraction, String> {
        let plain = self
            .secrets
            .open(&followup.sealed, SECRET_PURPOSE)
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&plain).map_err(|e| e.to_string())
    }
}
