//! The MCP prompts: ready-made requests an assistant can offer its user, filled from the hub's
//! own data through the same services and permissions as the REST reads.

use super::hub::protocol_error;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;
use axum::http::StatusCode;
use mcp_core::TaskStatus;
use mcp_core::principal::Permission;
use mcp_core::services::TaskQuery;
use rmcp::ErrorData;
use rmcp::model::{
    GetPromptRequestParams, GetPromptResult, ListPromptsResult, Prompt, PromptArgument,
    PromptMessage, Role,
};
use serde_json::Value;
use std::fmt::Write;

/// Failed and dead tasks `triage_failed_tasks` shows by default, and at most.
const TRIAGE_DEFAULT: u32 = 20;
const TRIAGE_MAX: u32 = 100;

pub(super) fn list() -> ListPromptsResult {
    ListPromptsResult::with_all_items(vec![
        Prompt::new(
            "summarize_conversation",
            Some("Summarize a conversation of the hub's memory from its context window."),
            Some(vec![
                PromptArgument::new("conversation_id")
                    .with_description("The conversation's id")
                    .with_required(true),
                PromptArgument::new("max_tokens")
                    .with_description("Token budget of the context window (optional)")
                    .with_required(false),
            ]),
        ),
        Prompt::new(
            "triage_failed_tasks",
            Some("Look at the failed and dead tasks one may see and propose what to do."),
            Some(vec![
                PromptArgument::new("queue")
                    .with_description("Only this queue (optional)")
                    .with_required(false),
                PromptArgument::new("limit")
                    .with_description("Tasks of each status, default 20, at most 100 (optional)")
                    .with_required(false),
            ]),
        ),
    ])
}

fn argument(request: &GetPromptRequestParams, name: &str) -> Option<String> {
    let value = request.arguments.as_ref()?.get(name)?;
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn bad_argument(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
}

fn number(request: &GetPromptRequestParams, name: &str) -> Result<Option<u32>, ApiError> {
    argument(request, name)
        .map(|text| {
            text.parse::<u32>()
                .map_err(|_| bad_argument(format!("{name} must be a whole number")))
        })
        .transpose()
}

fn require(principal: &Principal, permission: Permission) -> Result<(), ApiError> {
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

pub(super) async fn get(
    state: &AppState,
    principal: &Principal,
    request: GetPromptRequestParams,
) -> Result<GetPromptResult, ErrorData> {
    let result = match request.name.as_str() {
        "summarize_conversation" => summarize(state, principal, &request).await,
        "triage_failed_tasks" => triage(state, principal, &request).await,
        other => {
            return Err(ErrorData::invalid_params(
                format!("no prompt named `{other}`"),
                None,
            ));
        }
    };
    result.map_err(protocol_error)
}

async fn summarize(
    state: &AppState,
    principal: &Principal,
    request: &GetPromptRequestParams,
) -> Result<GetPromptResult, ApiError> {
    require(principal, Permission::MemoryRead)?;
    let id = argument(request, "conversation_id")
        .ok_or_else(|| bad_argument("conversation_id is required"))?;
    let max_tokens = number(request, "max_tokens")?;
    let conversation = state.memory.conversation(&id).await?;
    let context = state.memory.context(&id, max_tokens).await?;
    let mut text = format!(
        "Summarize the conversation `{}`{}. Keep decisions, open questions and who said what; \
         be brief.\n",
        conversation.id,
        conversation
            .title
            .as_deref()
            .map(|t| format!(" (\"{t}\")"))
            .unwrap_or_default()
    );
    if let Some(summary) = &context.summary {
        let _ = write!(text, "\nThe summary so far:\n{}\n", summary.text);
    }
    if !context.pinned.is_empty() {
        text.push_str("\nPinned messages:\n");
        for message in &context.pinned {
            let _ = writeln!(
                text,
                "[{}] {}: {}",
                message.role, message.author, message.content
            );
        }
    }
    text.push_str("\nThe messages, oldest first:\n");
    for message in &context.messages {
        let _ = writeln!(
            text,
            "[{}] {}: {}",
            message.role, message.author, message.content
        );
    }
    Ok(
        GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)])
            .with_description(format!("Summarize conversation {}", conversation.id)),
    )
}

async fn triage(
    state: &AppState,
    principal: &Principal,
    request: &GetPromptRequestParams,
) -> Result<GetPromptResult, ApiError> {
    require(principal, Permission::TasksReadOwn)?;
    let limit = number(request, "limit")?.unwrap_or(TRIAGE_DEFAULT);
    if !(1..=TRIAGE_MAX).contains(&limit) {
        return Err(bad_argument(format!(
            "limit must be between 1 and {TRIAGE_MAX}"
        )));
    }
    let queue = argument(request, "queue");
    let mut text = String::from(
        "Triage these tasks of the MKWW hub. For each, say the likely cause from its error, \
         whether a retry can help (`retry_task`, operators only) or what must change first, and \
         group tasks that fail for the same reason.\n",
    );
    let mut found = 0;
    for status in [TaskStatus::Failed, TaskStatus::Dead] {
        let page = state
            .tasks
            .list(
                principal,
                TaskQuery {
                    status: Some(status),
                    queue: queue.clone(),
                    limit,
                    ..TaskQuery::default()
                },
            )
            .await?;
        let _ = write!(text, "\n{status} ({}):\n", page.tasks.len());
        for task in &page.tasks {
            found += 1;
            let error = task
                .error
                .as_ref()
                .and_then(|e| serde_json::to_string(e).ok())
                .unwrap_or_else(|| "no error recorded".into());
            let _ = writeln!(
                text,
                "- {} type `{}` queue `{}`, attempt {}/{}: {error}",
                task.id, task.task_type, task.queue, task.attempts, task.max_attempts
            );
        }
    }
    if found == 0 {
        text.push_str("\nNo task has failed: say so.\n");
    }
    Ok(
        GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)])
            .with_description("Triage failed and dead tasks"),
    )
}
