//! The MCP resources: `mkww://tasks/{id}` and `mkww://conversations/{id}` (templates), read
//! through the same services and permissions as `GET /v1/tasks/{id}` and
//! `GET /v1/conversations/{id}/context`, and `subscriptions/listen`, whose
//! `notifications/resources/updated` come from the event bus (`task:{id}`,
//! `conversation:{id}`), so a subscription on any node hears of a change made on any other.

use super::hub::{principal, protocol_error};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;
use axum::http::StatusCode;
use mcp_core::principal::Permission;
use rmcp::ErrorData;
use rmcp::model::ResourceTemplate;
use rmcp::model::{ListResourceTemplatesResult, ReadResourceResult, ResourceContents};
use rmcp::service::SubscriptionContext;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

const TASK_PREFIX: &str = "mkww://tasks/";
const CONVERSATION_PREFIX: &str = "mkww://conversations/";
/// Resource changes waiting to be sent on one subscription's stream.
const UPDATE_QUEUE: usize = 64;

/// What a resource URI names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resource {
    Task(String),
    Conversation(String),
}

impl Resource {
    fn parse(uri: &str) -> Result<Resource, ApiError> {
        let named = |rest: &str| !rest.is_empty() && !rest.contains('/');
        if let Some(id) = uri.strip_prefix(TASK_PREFIX).filter(|r| named(r)) {
            return Ok(Resource::Task(id.to_owned()));
        }
        if let Some(id) = uri.strip_prefix(CONVERSATION_PREFIX).filter(|r| named(r)) {
            return Ok(Resource::Conversation(id.to_owned()));
        }
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "resource_not_found",
            format!("`{uri}` is not mkww://tasks/{{id}} or mkww://conversations/{{id}}"),
        ))
    }

    /// The event bus channel its changes are published on.
    fn channel(&self) -> String {
        match self {
            Resource::Task(id) => format!("task:{id}"),
            Resource::Conversation(id) => format!("conversation:{id}"),
        }
    }
}

pub(super) fn templates() -> ListResourceTemplatesResult {
    let template = |uri: &str, name: &str, description: &str| -> ResourceTemplate {
        let mut template = ResourceTemplate::new(uri, name).with_description(description);
        template.mime_type = Some("application/json".into());
        template
    };
    ListResourceTemplatesResult::with_all_items(vec![
        template(
            "mkww://tasks/{id}",
            "task",
            "A task: status, attempts, result or error. Subscribe to hear of each transition.",
        ),
        template(
            "mkww://conversations/{id}",
            "conversation",
            "A conversation with its context window (summary, pinned and newest messages). \
             Subscribe to hear of new messages and edits.",
        ),
    ])
}

fn forbidden_unless(principal: &Principal, permission: Permission) -> Result<(), ApiError> {
    if principal.can(permission) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "role `{}` lacks the permission `{permission}`",
            principal.role
        ),
    ))
}

/// The resource as JSON, if `principal` may read it.
async fn contents(
    state: &AppState,
    principal: &Principal,
    resource: &Resource,
) -> Result<serde_json::Value, ApiError> {
    match resource {
        Resource::Task(id) => {
            forbidden_unless(principal, Permission::TasksReadOwn)?;
            Ok(json!(state.tasks.get(principal, id).await?))
        }
        Resource::Conversation(id) => {
            forbidden_unless(principal, Permission::MemoryRead)?;
            let conversation = state.memory.conversation(id).await?;
            let context = state.memory.context(id, None).await?;
            Ok(json!({"conversation": conversation, "context": context}))
        }
    }
}

pub(super) async fn read(
    state: &AppState,
    principal: &Principal,
    uri: &str,
) -> Result<ReadResourceResult, ErrorData> {
    let resource = Resource::parse(uri).map_err(protocol_error)?;
    let value = contents(state, principal, &resource)
        .await
        .map_err(protocol_error)?;
    Ok(ReadResourceResult::new(vec![
        ResourceContents::text(value.to_string(), uri).with_mime_type("application/json"),
    ]))
}

/// Runs one `subscriptions/listen` stream until the client ends it: every resource it names
/// (and the caller may read) gets a `notifications/resources/updated` per event on its channel.
pub(super) async fn listen(
    state: &AppState,
    context: SubscriptionContext,
) -> Result<(), ErrorData> {
    let principal = principal(context.request_context())?;
    let uris = context
        .accepted()
        .resource_subscriptions
        .clone()
        .unwrap_or_default();
    let resources = uris
        .into_iter()
        .map(|uri| Resource::parse(&uri).map(|resource| (uri, resource)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(protocol_error)?;
    let channels: Vec<String> = resources.iter().map(|(_, r)| r.channel()).collect();
    let release = || {
        for channel in &channels {
            state.events.release(channel);
        }
    };
    // Subscribed first (events wait in each receiver), then checked: no change made meanwhile
    // is missed, and a resource the caller may not read ends the subscription, nothing held.
    let mut watched = Vec::new();
    for ((uri, _), channel) in resources.iter().zip(&channels) {
        match state.events.subscribe(channel).await {
            Ok(events) => watched.push((uri.clone(), events)),
            Err(e) => {
                drop(watched);
                release();
                return Err(ErrorData::internal_error(
                    format!("the event bus is unavailable: {e}"),
                    None,
                ));
            }
        }
    }
    for (_, resource) in &resources {
        if let Err(e) = contents(state, &principal, resource).await {
            drop(watched);
            release();
            return Err(protocol_error(e));
        }
    }
    let (updates, mut updated) = mpsc::channel::<String>(UPDATE_QUEUE);
    let mut forwarders = tokio::task::JoinSet::new();
    for (uri, mut events) in watched {
        let updates = updates.clone();
        forwarders.spawn(async move {
            loop {
                match events.recv().await {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        // A lag still means a change: the client re-reads the resource.
                        if updates.send(uri.clone()).await.is_err() {
                            return;
                        }
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }
    drop(updates);
    let sink = context.sink().clone();
    let outcome = loop {
        tokio::select! {
            _ = context.cancelled() => break Ok(()),
            next = updated.recv() => match next {
                Some(uri) => {
                    if sink.notify_resource_updated(uri).await.is_err() {
                        break Ok(());
                    }
                }
                // No resource to watch, or the bus closed: wait for the client to end it.
                None => {
                    context.cancelled().await;
                    break Ok(());
                }
            },
        }
    };
    forwarders.shutdown().await;
    release();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_two_templates_and_nothing_else() {
        assert_eq!(
            Resource::parse("mkww://tasks/abc").ok(),
            Some(Resource::Task("abc".into()))
        );
        assert_eq!(
            Resource::parse("mkww://conversations/c1")
                .ok()
                .map(|r| r.channel()),
            Some("conversation:c1".into())
        );
        for bad in [
            "mkww://tasks/",
            "mkww://tasks/a/b",
            "https://x/tasks/1",
            "mkww://users/1",
        ] {
            assert!(Resource::parse(bad).is_err(), "{bad}");
        }
    }
}
