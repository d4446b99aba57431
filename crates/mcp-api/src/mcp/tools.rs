//! The MCP tools. Each is the twin of a REST route: the same permission, checked the way the
//! guard checks it, then the same core service call as the caller's `Principal`; its errors are
//! tool errors (`isError`) carrying the route's stable `code`.

use super::hub::{Hub, principal, request_id_of, tool_error};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{page_limit, parse_cursor};
use axum::extract::State;
use axum::http::StatusCode;
use mcp_core::TaskStatus;
use mcp_core::memory::{MessageRole, SearchQuery, SearchRequest};
use mcp_core::principal::Permission;
use mcp_core::services::memory::{CreateConversation, NewMessage};
use mcp_core::services::{Creator, TaskQuery};
use mcp_core::task::CreateTask;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{CallToolResult, ProgressNotificationParam};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

/// How often `wait_for_task` re-reads the task when no event came (a bus that lost one).
const WAIT_POLL: Duration = Duration::from_millis(500);

/// 403 `forbidden`, as the guard words it, unless `principal` holds `permission`.
pub(super) fn require(principal: &Principal, permission: Permission) -> Result<(), ApiError> {
    if principal.can(permission) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "role `{}` lacks the permission `{permission}`",
                principal.role
            ),
        ))
    }
}

/// The caller; the guard let no request through without one.
pub(super) fn caller(context: &RequestContext<RoleServer>) -> Result<Principal, ApiError> {
    principal(context)
        .map_err(|_| crate::auth::unauthenticated("this request carries no credentials"))
}

pub(super) fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
}

pub(super) fn to_value(value: impl Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Runs a tool body and turns its `ApiError` into a tool error with the request id.
pub(super) async fn run<T>(
    context: &RequestContext<RoleServer>,
    body: impl Future<Output = Result<T, ApiError>>,
) -> Result<Json<T>, CallToolResult> {
    let request_id = request_id_of(context);
    body.await
        .map(Json)
        .map_err(|e| tool_error(e, request_id.as_deref()))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTaskInput {
    /// The task type, e.g. `noop`, `echo`, `llm.generate`.
    #[serde(rename = "type")]
    pub task_type: String,
    /// Input for the handler (default `{}`).
    #[serde(default)]
    pub payload: Option<Value>,
    /// Queue name (default `default`).
    #[serde(default)]
    pub queue: Option<String>,
    /// Higher runs first (default 0).
    #[serde(default)]
    pub priority: Option<i32>,
    /// Attempts before the task is `dead` (default 3).
    #[serde(default)]
    pub max_attempts: Option<i32>,
    /// Do not run before this many milliseconds from now.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Per-attempt time limit, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// A second create with the same key returns the first task.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Tasks sharing this key run at most `concurrency_limit` at once.
    #[serde(default)]
    pub concurrency_key: Option<String>,
    #[serde(default)]
    pub concurrency_limit: Option<i32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskOutput {
    /// The task, as `GET /v1/tasks/{id}` returns it (`id`, `type`, `status`, `result`, …).
    pub task: Value,
    /// `create_task`: false when the idempotency key named an existing task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskId {
    /// The task's id.
    pub id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListTasksInput {
    /// Only tasks in this status: `scheduled`, `queued`, `running`, `succeeded`, `failed`,
    /// `dead`, `cancelled`.
    #[serde(default)]
    pub status: Option<String>,
    /// Only tasks of this type.
    #[serde(default, rename = "type")]
    pub task_type: Option<String>,
    /// Only tasks in this queue.
    #[serde(default)]
    pub queue: Option<String>,
    /// Page size (default 50).
    #[serde(default)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskListOutput {
    /// Newest first.
    pub tasks: Vec<Value>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitInput {
    /// The task's id.
    pub id: String,
    /// Longest wait in seconds (default and ceiling: the server's `mcp_wait_max_ms`).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WaitOutput {
    /// The task when the wait ended.
    pub task: Value,
    /// Whether it is final (`succeeded`, `dead`, `cancelled`); false: the wait timed out.
    pub finished: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct QueuesOutput {
    /// Task counts per queue, then per status.
    pub queues: BTreeMap<String, BTreeMap<String, u64>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConversationInput {
    #[serde(default)]
    pub title: Option<String>,
    /// Who takes part (names or ids).
    #[serde(default)]
    pub participants: Vec<String>,
    /// A JSON object.
    #[serde(default)]
    pub metadata: Option<Value>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ConversationOutput {
    /// The conversation (`id`, `title`, `participants`, `summary`, …).
    pub conversation: Value,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendMessageInput {
    pub conversation_id: String,
    pub content: String,
    /// `user` (default) or `assistant`; `system` and `tool` need `memory:write:system`.
    #[serde(default)]
    pub role: Option<String>,
    /// Who wrote it (default: the caller).
    #[serde(default)]
    pub author: Option<String>,
    /// Pinned messages are always in the context window.
    #[serde(default)]
    pub pinned: bool,
    /// A JSON object.
    #[serde(default)]
    pub metadata: Option<Value>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct MessageOutput {
    /// The stored message (`id`, `conversation_id`, `role`, `content`, `tokens`, …).
    pub message: Value,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchInput {
    /// Words, `"phrases"`, `-excluded` words, `prefix*`.
    pub query: String,
    #[serde(default)]
    pub conversation_id: Option<String>,
    #[serde(default)]
    pub author: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    /// Hits (default 50).
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SearchOutput {
    /// Best first: each message with its `snippet` and `rank`.
    pub messages: Vec<Value>,
    /// Whether more hits follow.
    pub more: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextInput {
    pub conversation_id: String,
    /// Token budget (default: the server's `memory_context_tokens`).
    #[serde(default)]
    pub max_tokens: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ContextOutput {
    /// The latest summary, the pinned messages and the newest messages that fit, with `tokens`.
    pub context: Value,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct IntegrationsOutput {
    /// Each integration without its secrets, with health and breaker state.
    pub integrations: Vec<Value>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RoutesOutput {
    /// Where each task type runs, and its circuit breaker.
    pub routes: Vec<Value>,
}

fn parse_uuid(field: &str, text: Option<String>) -> Result<Option<Uuid>, ApiError> {
    text.map(|t| Uuid::parse_str(&t).map_err(|_| invalid(format!("{field} must be a UUID"))))
        .transpose()
}

fn parse_role(text: Option<String>) -> Result<Option<MessageRole>, ApiError> {
    text.as_deref()
        .map(str::parse::<MessageRole>)
        .transpose()
        .map_err(|e| invalid(e.to_string()))
}

#[tool_router(vis = "pub(super)")]
impl Hub {
    /// Create a task (`POST /v1/tasks`).
    #[tool(
        description = "Create a task: a unit of work (type + JSON payload) the hub stores, runs \
                       with retries and reports on. Returns the task; follow it with \
                       `wait_for_task` or the resource mkww://tasks/{id}.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false
        )
    )]
    async fn create_task(
        &self,
        Parameters(input): Parameters<CreateTaskInput>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<TaskOutput>, CallToolResult> {
        let correlation = request_id_of(&context);
        run(&context, async {
            let principal = caller(&context)?;
            require(&principal, Permission::TasksCreate)?;
            let request = CreateTask {
                task_type: input.task_type,
                queue: input.queue,
                priority: input.priority,
                payload: input.payload,
                max_attempts: input.max_attempts,
                delay_ms: input.delay_ms,
                timeout_ms: input.timeout_ms,
                idempotency_key: input.idempotency_key,
                concurrency_key: input.concurrency_key,
                concurrency_limit: input.concurrency_limit,
                ..CreateTask::default()
            };
            let inserted = self
                .state
                .tasks
                .create(
                    Creator::Principal(&principal),
                    request,
                    correlation.as_deref(),
                )
                .await?;
            Ok(TaskOutput {
                task: to_value(&inserted.task),
                created: Some(inserted.created),
            })
        })
        .await
    }

    /// Read a task (`GET /v1/tasks/{id}`).
    #[tool(
        description = "Read one task: status, attempts, result or error.",
        annotations(read_only_hint = true)
    )]
    async fn get_task(
        &self,
        Parameters(input): Parameters<TaskId>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<TaskOutput>, CallToolResult> {
        run(&context, async {
            let principal = caller(&context)?;
            require(&principal, Permission::TasksReadOwn)?;
            let task = self.state.tasks.get(&principal, &input.id).await?;
            Ok(TaskOutput {
                task: to_value(&task),
                created: None,
            })
        })
        .await
    }

    /// List tasks (`GET /v1/tasks`).
    #[tool(
        description = "List tasks, newest first (one's own, or all with tasks:read:any), \
                       filtered by status, type or queue, a page at a time.",
        annotations(read_only_hint = true)
    )]
    async fn list_tasks(
        &self,
        Parameters(input): Parameters<ListTasksInput>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<TaskListOutput>, CallToolResult> {
        run(&context, async {
            let principal = caller(&context)?;
            require(&principal, Permission::TasksReadOwn)?;
            let limit = page_limit(&self.state.config, input.limit)?;
            let status = input
                .status
                .as_deref()
                .map(str::parse::<TaskStatus>)
                .transpose()
                .map_err(ApiError::invalid_query)?;
            let before = parse_cursor(input.cursor.as_deref())?;
            let page = self
                .state
                .tasks
                .list(
                    &principal,
                    TaskQuery {
                        status,
                        task_type: input.task_type,
                        queue: input.queue,
                        before,
                        limit,
                    },
                )
                .await?;
            Ok(TaskListOutput {
                tasks: page.tasks.iter().map(to_value).collect(),
                next_cursor: page.next_cursor.map(|id| id.to_string()),
            })
        })
        .await
    }

    /// Cancel a task (`POST /v1/tasks/{id}/cancel`).
    #[tool(
        description = "Cancel a task: a queued one never runs, a running one is signalled. \
                       Only its creator or an operator may.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true
        )
    )]
    async fn cancel_task(
        &self,
        Parameters(input): Parameters<TaskId>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<TaskOutput>, CallToolResult> {
        run(&context, async {
            let principal = caller(&context)?;
            require(&principal, Permission::TasksCancelOwn)?;
            let task = self.state.tasks.cancel(&principal, &input.id).await?;
            Ok(TaskOutput {
                task: to_value(&task),
                created: None,
            })
        })
        .await
    }

    /// Retry a task (`POST /v1/tasks/{id}/retry`).
    #[tool(
        description = "Requeue a failed or dead task now (operators).",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false
        )
    )]
    async fn retry_task(
        &self,
        Parameters(input): Parameters<TaskId>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<TaskOutput>, CallToolResult> {
        run(&context, async {
            let principal = caller(&context)?;
            require(&principal, Permission::TasksManage)?;
            let task = self.state.tasks.retry(&principal, &input.id).await?;
            Ok(TaskOutput {
                task: to_value(&task),
                created: None,
            })
        })
        .await
    }

    /// Wait for a task to finish, on the event bus, with progress notifications.
    #[tool(
        description = "Wait until a task is final (succeeded, dead or cancelled), at most \
                       timeout_seconds; each transition is sent as a progress notification. \
                       Returns the task and whether it finished.",
        annotations(read_only_hint = true)
    )]
    async fn wait_for_task(
        &self,
        Parameters(input): Parameters<WaitInput>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<WaitOutput>, CallToolResult> {
        run(&context, async {
            let principal = caller(&context)?;
            require(&principal, Permission::TasksReadOwn)?;
            let max = self.state.config.mcp.max_wait;
            let limit = input
                .timeout_seconds
                .map_or(max, |s| Duration::from_secs(s).min(max));
            self.wait(&principal, &input.id, limit, &context).await
        })
        .await
    }

    /// Queue counts (`GET /v1/queues`).
    #[tool(
        description = "How many tasks each queue holds, per status.",
        annotations(read_only_hint = true)
    )]
    async fn list_queues(
        &self,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<QueuesOutput>, CallToolResult> {
        run(&context, async {
            let principal = caller(&context)?;
            require(&principal, Permission::TasksReadAny)?;
            let counts = crate::tasks::queues(State(self.state.clone())).await?.0;
            Ok(QueuesOutput {
                queues: counts.queues,
            })
        })
        .await
    }

    /// Create a conversation (`POST /v1/conversations`).
    #[tool(
        description = "Create a conversation in the hub's memory.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false
        )
    )]
    async fn create_conversation(
        &self,
        Parameters(input): Parameters<CreateConversationInput>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<ConversationOutput>, CallToolResult> {
        let correlation = request_id_of(&context);
        run(&context, async {
            let principal = caller(&context)?;
            require(&principal, Permission::MemoryWrite)?;
            let conversation = self
                .state
                .memory
                .create_conversation(
                    &principal,
                    CreateConversation {
                        id: None,
                        title: input.title,
                        participants: input.participants,
                        metadata: input.metadata,
                    },
                    correlation.as_deref(),
                )
                .await?;
            Ok(ConversationOutput {
                conversation: to_value(&conversation),
            })
        })
        .await
    }

    /// Add a message (`POST /v1/conversations/{id}/messages`).
    #[tool(
        description = "Append a message to a conversation.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false
        )
    )]
    async fn append_message(
        &self,
        Parameters(input): Parameters<AppendMessageInput>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<MessageOutput>, CallToolResult> {
        let correlation = request_id_of(&context);
        run(&context, async {
            let principal = caller(&context)?;
            require(&principal, Permission::MemoryWrite)?;
            let message = NewMessage {
                id: None,
                author: input.author,
                role: parse_role(input.role)?,
                content: input.content,
                metadata: input.metadata,
                pinned: input.pinned,
                created_at: None,
            };
            let mut stored = self
                .state
                .memory
                .append_messages(
                    &principal,
                    &input.conversation_id,
                    vec![message],
                    false,
                    correlation.as_deref(),
                )
                .await?;
            let message = stored.pop().ok_or_else(ApiError::internal)?;
            Ok(MessageOutput {
                message: to_value(&message),
            })
        })
        .await
    }

    /// Search messages (`GET /v1/search/messages`).
    #[tool(
        description = "Full-text search of the messages in memory, best first, with snippets.",
        annotations(read_only_hint = true)
    )]
    async fn search_memory(
        &self,
        Parameters(input): Parameters<SearchInput>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<SearchOutput>, CallToolResult> {
        run(&context, async {
            let principal = caller(&context)?;
            require(&principal, Permission::MemoryRead)?;
            let limit = page_limit(&self.state.config, input.limit)?;
            let query = SearchQuery::parse(&input.query).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_search_query",
                    e.to_string(),
                )
            })?;
            let (messages, more) = self
                .state
                .memory
                .search(SearchRequest {
                    query,
                    conversation_id: parse_uuid("conversation_id", input.conversation_id)?,
                    author: input.author,
                    role: parse_role(input.role)?,
                    since: None,
                    until: None,
                    offset: 0,
                    limit,
                })
                .await?;
            Ok(SearchOutput {
                messages: messages.iter().map(to_value).collect(),
                more,
            })
        })
        .await
    }

    /// A context window (`GET /v1/conversations/{id}/context`).
    #[tool(
        description = "What to give a model from a conversation: its latest summary, pinned \
                       messages and the newest messages that fit max_tokens.",
        annotations(read_only_hint = true)
    )]
    async fn get_context(
        &self,
        Parameters(input): Parameters<ContextInput>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<ContextOutput>, CallToolResult> {
        run(&context, async {
            let principal = caller(&context)?;
            require(&principal, Permission::MemoryRead)?;
            let window = self
                .state
                .memory
                .context(&input.conversation_id, input.max_tokens)
                .await?;
            Ok(ContextOutput {
                context: to_value(&window),
            })
        })
        .await
    }

    /// Integrations (`GET /v1/integrations`).
    #[tool(
        description = "The hub's integrations (GitHub, Render, LLM, Discord, …) without their \
                       secrets, with health and breaker state.",
        annotations(read_only_hint = true)
    )]
    async fn list_integrations(
        &self,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<IntegrationsOutput>, CallToolResult> {
        run(&context, async {
            let principal = caller(&context)?;
            require(&principal, Permission::IntegrationsManage)?;
            let list = crate::integrations::list(State(self.state.clone()))
                .await?
                .0;
            Ok(IntegrationsOutput {
                integrations: list.integrations.iter().map(to_value).collect(),
            })
        })
        .await
    }

    /// Routes (`GET /v1/routes`).
    #[tool(
        description = "Where each task type runs (in-process handlers, external workers) and \
                       its circuit breaker.",
        annotations(read_only_hint = true)
    )]
    async fn list_routes(
        &self,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<RoutesOutput>, CallToolResult> {
        run(&context, async {
            let principal = caller(&context)?;
            require(&principal, Permission::TasksRun)?;
            let routes = crate::tasks::routes(State(self.state.clone())).await.0;
            Ok(RoutesOutput {
                routes: routes.routes.iter().map(to_value).collect(),
            })
        })
        .await
    }
}

impl Hub {
    /// The task once final, or as it is when `limit` passes: woken by its events on
    /// `task:{id}` (each one a progress notification) and re-read every [`WAIT_POLL`].
    async fn wait(
        &self,
        principal: &Principal,
        id: &str,
        limit: Duration,
        context: &RequestContext<RoleServer>,
    ) -> Result<WaitOutput, ApiError> {
        // Subscribed before the first read, so no transition falls between the two.
        let mut events = self
            .state
            .events
            .subscribe(&format!("task:{id}"))
            .await
            .ok();
        let deadline = tokio::time::Instant::now() + limit;
        let progress_token = context.meta.get_progress_token();
        let mut step = 0.0;
        loop {
            let task = self.state.tasks.get(principal, id).await?;
            if task.status.is_final() || tokio::time::Instant::now() >= deadline {
                return Ok(WaitOutput {
                    finished: task.status.is_final(),
                    task: to_value(&task),
                });
            }
            let wake = tokio::time::Instant::now() + WAIT_POLL;
            tokio::select! {
                received = async {
                    match events.as_mut() {
                        Some(events) => events.recv().await.map(Some),
                        None => std::future::pending().await,
                    }
                } => match received {
                    Ok(Some(delivery)) => {
                        if let Some(token) = &progress_token {
                            step += 1.0;
                            let note = ProgressNotificationParam::new(token.clone(), step)
                                .with_message(delivery.event.event_type.clone());
                            let _ = context.peer.notify_progress(note).await;
                        }
                    }
                    Ok(None) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => events = None,
                },
                _ = tokio::time::sleep_until(wake.min(deadline)) => {}
                _ = context.ct.cancelled() => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "cancelled",
                        "the client cancelled the wait",
                    ));
                }
            }
        }
    }
}
