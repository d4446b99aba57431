//! The follow-up of a slash command: waits for its task and queues the `discord.webhook_execute`
//! task that answers the interaction, on the node that took it ([`followup`]) or, if that node
//! died, on whichever node sweeps first ([`sweep_followups`]). Both use the idempotency key
//! `discord-followup:{task id}`, so a follow-up is sent once.

use super::pending::Followups;
use crate::state::AppState;
use mcp_core::events::Subscription;
use mcp_core::services::Creator;
use mcp_core::task::CreateTask;
use mcp_core::{Task, TaskStatus};
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

/// The task type that sends follow-ups.
pub const FOLLOWUP_TASK_TYPE: &str = "discord.webhook_execute";
/// Discord's limit on a message's `content`.
const MAX_CONTENT_CHARS: usize = 2000;
/// Discord's interaction tokens are valid this long: a follow-up older than that cannot be sent.
const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// A stored follow-up whose task is not (yet) in the database is left alone this long: the
/// follow-up is stored just before its task.
const TASK_GRACE: Duration = Duration::from_secs(60);
/// Follow-ups a sweep takes at once.
const SWEEP_BATCH: u32 = 100;

/// Waits for the task, then queues the follow-up message. A server that stops first sends none.
pub(super) async fn followup(
    state: &AppState,
    id: Uuid,
    live: Option<Subscription>,
    application_id: String,
    token: String,
    created_by: String,
) {
    let waited = tokio::select! {
        waited = tokio::time::timeout(state.config.discord.followup_timeout, state.tasks.finished(id, live)) => waited,
        _ = state.shutdown.cancelled() => return,
    };
    let content = match waited {
        Ok(Ok(task)) => outcome_text(&task),
        Ok(Err(e)) => {
            tracing::warn!(task_id = %id, error = %e, "discord follow-up: cannot read the task");
            return;
        }
        Err(_) => still_running(id),
    };
    if let Err(e) = queue_followup(state, id, &application_id, &token, content, &created_by).await {
        tracing::warn!(task_id = %id, error = %e, "discord follow-up not queued");
    }
}

fn still_running(id: Uuid) -> String {
    format!("Task `{id}` is still running; see the hub for its result.")
}

/// Creates the task that sends the follow-up of task `id`, once (idempotency key
/// `discord-followup:{id}`), then forgets the stored follow-up.
async fn queue_followup(
    state: &AppState,
    id: Uuid,
    application_id: &str,
    token: &str,
    content: String,
    created_by: &str,
) -> Result<(), String> {
    let create = CreateTask {
        task_type: FOLLOWUP_TASK_TYPE.to_owned(),
        payload: Some(json!({
            "webhook_id": application_id,
            "webhook_token": token,
            "content": content,
            "allowed_mentions": {"parse": []},
        })),
        correlation_id: Some(id.to_string()),
        idempotency_key: Some(format!("discord-followup:{id}")),
        ..CreateTask::default()
    };
    state
        .tasks
        .create(Creator::Internal(created_by), create, None)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(followups) = &state.followups {
        followups
            .store
            .delete_followup(id)
            .await
            .map_err(|e| format!("sent, but not forgotten (harmless): {e}"))?;
    }
    Ok(())
}

/// Sends, every `every` until the server stops, the stored follow-ups whose task is final (or
/// that waited `followup_timeout`: "still running"), whichever node took the interaction. Drops
/// those older than an interaction token lives.
pub async fn sweep_followups(state: AppState, every: Duration) {
    let Some(followups) = state.followups.clone() else {
        return;
    };
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = sweep_once(&state, &followups).await {
            tracing::warn!(error = %e, "discord follow-ups: sweep failed; retrying");
        }
    }
}

async fn sweep_once(state: &AppState, followups: &Followups) -> Result<(), String> {
    let now = chrono::Utc::now();
    let span = |d: Duration| chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX);
    let (lifetime, grace) = (span(TOKEN_LIFETIME), span(TASK_GRACE));
    let wait = span(state.config.discord.followup_timeout).min(lifetime);
    let due = followups
        .store
        .due_followups(now - wait, SWEEP_BATCH)
        .await
        .map_err(|e| e.to_string())?;
    for followup in due {
        let id = followup.task_id;
        let age = now - followup.created_at;
        if age > lifetime {
            tracing::warn!(task_id = %id, "discord follow-up expired unsent: its token is no longer valid");
            let _ = followups.store.delete_followup(id).await;
            continue;
        }
        let content = match state.orchestrator.store().get(id).await {
            Ok(Some(task)) if task.status.is_final() => outcome_text(&task),
            Ok(Some(_)) => still_running(id),
            Ok(None) if age < grace => continue,
            Ok(None) => {
                let _ = followups.store.delete_followup(id).await;
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        let interaction = match followups.open(&followup) {
            Ok(interaction) => interaction,
            Err(e) => {
                tracing::warn!(task_id = %id, error = %e, "discord follow-up cannot be opened; dropped");
                let _ = followups.store.delete_followup(id).await;
                continue;
            }
        };
        queue_followup(
            state,
            id,
            &interaction.application_id,
            &interaction.token,
            content,
            &followup.created_by,
        )
        .await?;
    }
    Ok(())
}

/// The follow-up's text: the result's `text` or `response`, else its JSON; or the error.
fn outcome_text(task: &Task) -> String {
    let text = match task.status {
        TaskStatus::Succeeded => {
            let result = task.result.as_ref().unwrap_or(&Value::Null);
            match ["text", "response"]
                .iter()
                .find_map(|field| result.get(field).and_then(Value::as_str))
            {
                Some(text) => text.to_owned(),
                None if result.is_null() => "Done.".to_owned(),
                None => format!("```json\n{result}\n```"),
            }
        }
        status => {
            let reason = task
                .error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_else(|| "no error recorded".to_owned());
            format!("Task `{}` ended {status}: {reason}", task.id)
        }
    };
    truncate(&text, MAX_CONTENT_CHARS)
}

fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max_chars - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_to_discords_limit() {
        let long = "x".repeat(3000);
        let cut = truncate(&long, MAX_CONTENT_CHARS);
        assert_eq!(cut.chars().count(), MAX_CONTENT_CHARS);
        assert!(cut.ends_with('…'));
    }
}
