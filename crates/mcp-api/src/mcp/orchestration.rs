//! The MCP tools for schedules and workflows: twins of `schedules.rs` and `workflows.rs`, with
//! the route's permission checked as the guard checks it, then the same core service call. A
//! router of their own, added to the task and memory tools' in `hub.rs`.

use super::hub::{Hub, request_id_of};
use super::tools::{TaskOutput, caller, invalid, require, run, to_value};
use crate::extract::{page_limit, parse_cursor};
use mcp_core::principal::Permission;
use mcp_core::schedule::Missed;
use mcp_core::services::{CreateSchedule, Creator, WorkflowService};
use mcp_core::workflow::CreateWorkflow;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::CallToolResult;
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateScheduleInput {
    /// 1 to 100 letters, digits, `.`, `_` or `-`.
    pub name: String,
    /// Five fields, six with seconds first, or a macro (`@hourly`, `@daily`, …).
    pub cron: String,
    /// IANA time zone (default `UTC`).
    #[serde(default)]
    pub timezone: Option<String>,
    /// The task each firing creates, as `create_task` takes it (`type`, `payload`, `queue`, …)
    /// without `idempotency_key` or `delay_ms`: the schedule sets them.
    pub task: Value,
    /// Fire times missed while the hub was down: `skip` (default), `once` or `all`.
    #[serde(default)]
    pub missed: Option<String>,
    /// With `missed = "all"`: most catch-up runs (default 10, at most 1000).
    #[serde(default)]
    pub max_backfill: Option<u32>,
    /// Each task starts up to this many milliseconds after its fire time, at random.
    #[serde(default)]
    pub jitter_ms: Option<u64>,
    /// Create it paused (default false).
    #[serde(default)]
    pub paused: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleName {
    /// The schedule's name.
    pub name: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ScheduleOutput {
    /// The schedule, as `GET /v1/schedules/{name}` returns it (`name`, `cron`, `timezone`,
    /// `task`, `paused`, `next_fire_at`, …).
    pub schedule: Value,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ScheduleListOutput {
    /// Every schedule, by name.
    pub schedules: Vec<Value>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DeletedOutput {
    /// The name of the schedule deleted.
    pub deleted: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkflowInput {
    /// A name for people (1 to 200 characters).
    pub name: String,
    /// The tasks: each one as `create_task` takes it (`type`, `payload`, `queue`, …) plus a
    /// `key` unique within the workflow and the keys it `depends_on`.
    pub tasks: Vec<Value>,
    /// What a dead or cancelled task does to its dependents: `cancel_dependents` (default)
    /// cancels them, `continue` runs them anyway.
    #[serde(default)]
    pub on_failure: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowId {
    /// The workflow's id.
    pub id: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkflowOutput {
    /// The workflow, as `GET /v1/workflows/{id}` returns it: `id`, `name`, `status`
    /// (`running`, `succeeded`, `failed`, `cancelled`), `on_failure`, and its `tasks`, each
    /// with its `workflow_key`, `status` and `result`.
    pub workflow: Value,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListWorkflowsInput {
    /// Page size (default 50).
    #[serde(default)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkflowListOutput {
    /// Newest first, without their tasks.
    pub workflows: Vec<Value>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

impl Hub {
    /// The workflow service over this node's task service and orchestrator, as the routes
    /// build it.
    fn workflows(&self) -> WorkflowService {
        WorkflowService::new(self.state.tasks.clone(), self.state.orchestrator.clone())
    }
}

#[tool_router(router = orchestration_router, vis = "pub(super)")]
impl Hub {
    /// Create a schedule (`POST /v1/schedules`).
    #[tool(
        description = "Create a schedule: a cron expression in a time zone and the task each \
                       firing creates. Returns the schedule with its next fire time.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false
        )
    )]
    async fn create_schedule(
        &self,
        Parameters(input): Parameters<CreateScheduleInput>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<ScheduleOutput>, CallToolResult> {
        run(&context, async {
            let principal = caller(&context)?;
            require(&principal, Permission::SchedulesWrite)?;
            let missed = input
                .missed
                .as_deref()
                .map(str::parse::<Missed>)
                .transpose()
                .map_err(invalid)?;
            let request = CreateSchedule {
                name: input.name,
                cron: input.cron,
                timezone: input.timezone,
                task: input.task,
                missed,
                max_backfill: input.max_backfill,
                jitter_ms: input.jitter_ms,
                paused: input.paused,
            };
            let schedule = self.state.schedules.create(request).await?;
            Ok(ScheduleOutput {
                schedule: to_value(&schedule),
            })
        })
        .await
    }

    /// List schedules (`GET /v1/schedules`).
    #[tool(
        description = "Every schedule, by name, with its cron, task and next fire time.",
        annotations(read_only_hint = true)
    )]
    async fn list_schedules(
        &self,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<ScheduleListOutput>, CallToolResult> {
        run(&context, async {
            let principal = caller(&context)?;
            require(&principal, Permission::SchedulesRead)?;
            let schedules = self.state.schedules.list().await?;
            Ok(ScheduleListOutput {
                schedules: schedules.iter().map(to_value).collect(),
            })
        })
        .await
    }

    /// Read a schedule (`GET /v1/schedules/{name}`).
    #[tool(
        description = "Read one schedule: its cron, time zone, task, whether it is paused and \
                       when it fires next.",
        annotations(read_only_hint = true)
    )]
    async fn get_schedule(
        &self,
        Parameters(input): Parameters<ScheduleName>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<ScheduleOutput>, CallToolResult> {
        run(&context, async {
            let principal = caller(&context)?;
            require(&principal, Permission::SchedulesRead)?;
            let schedule = self.state.schedules.get(&input.name).await?;
            Ok(ScheduleOutput {
                schedule: to_value(&schedule),
            })
        })
        .await
    }

    /// Fire a schedule now (`POST /v1/schedules/{name}/trigger`).
    #[tool(
        description = "Fire a schedule now, out of turn: creates its task and returns it; \
                       follow it with `wait_for_task`.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false
        )
    )]
    async fn trigger_schedule(
        &self,
        Parameters(input): Parameters<ScheduleName>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<TaskOutput>, CallToolResult> {
        run(&context, async {
            let principal = caller(&context)?;
            require(&principal, Permission::SchedulesWrite)?;
            let inserted = self.state.schedules.trigger(&input.name).await?;
            Ok(TaskOutput {
                task: to_value(&inserted.task),
                created: Some(inserted.created),
            })
        })
        .await
    }

    /// Pause a schedule (`POST /v1/schedules/{name}/pause`).
    #[tool(
        description = "Pause a schedule: it fires nothing until resumed.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true
        )
    )]
    async fn pause_schedule(
        &self,
        Parameters(input): Parameters<ScheduleName>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<ScheduleOutput>, CallToolResult> {
        self.set_paused(input.name, true, &context).await
    }

    /// Resume a schedule (`POST /v1/schedules/{name}/resume`).
    #[tool(
        description = "Resume a paused schedule from now (times passed while paused are not \
                       caught up).",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true
        )
    )]
    async fn resume_schedule(
        &self,
        Parameters(input): Parameters<ScheduleName>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<ScheduleOutput>, CallToolResult> {
        self.set_paused(input.name, false, &context).await
    }

    /// Delete a schedule (`DELETE /v1/schedules/{name}`).
    #[tool(
        description = "Delete a schedule: it fires no more. Tasks it already created are \
                       kept.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false
        )
    )]
    async fn delete_schedule(
        &self,
        Parameters(input): Parameters<ScheduleName>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<DeletedOutput>, CallToolResult> {
        run(&context, async {
            let principal = caller(&context)?;
            require(&principal, Permission::SchedulesWrite)?;
            self.state.schedules.delete(&input.name).await?;
            Ok(DeletedOutput {
                deleted: input.name,
            })
        })
        .await
    }

    /// Create a workflow (`POST /v1/workflows`).
    #[tool(
        description = "Create a workflow: a DAG of tasks, each with a `key` and the keys it \
                       `depends_on`; a task runs once its dependencies succeed and receives \
                       their results. Returns the workflow and its tasks.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false
        )
    )]
    async fn create_workflow(
        &self,
        Parameters(input): Parameters<CreateWorkflowInput>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<WorkflowOutput>, CallToolResult> {
        let correlation = request_id_of(&context);
        run(&context, async {
            let principal = caller(&context)?;
            require(&principal, Permission::WorkflowsCreate)?;
            // The REST body, read by the same serde rules as the route reads it.
            let mut body = json!({"name": input.name, "tasks": input.tasks});
            if let Some(on_failure) = input.on_failure {
                body["on_failure"] = Value::String(on_failure);
            }
            let request: CreateWorkflow =
                serde_json::from_value(body).map_err(|e| invalid(e.to_string()))?;
            let detail = self
                .workflows()
                .create(
                    Creator::Principal(&principal),
                    request,
                    correlation.as_deref(),
                )
                .await?;
            Ok(WorkflowOutput {
                workflow: to_value(&detail),
            })
        })
        .await
    }

    /// Read a workflow (`GET /v1/workflows/{id}`).
    #[tool(
        description = "Read one workflow with every task's state (one's own, or any with \
                       workflows:read:any).",
        annotations(read_only_hint = true)
    )]
    async fn get_workflow(
        &self,
        Parameters(input): Parameters<WorkflowId>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<WorkflowOutput>, CallToolResult> {
        run(&context, async {
            let principal = caller(&context)?;
            require(&principal, Permission::WorkflowsReadOwn)?;
            let detail = self.workflows().get(&principal, &input.id).await?;
            Ok(WorkflowOutput {
                workflow: to_value(&detail),
            })
        })
        .await
    }

    /// List workflows (`GET /v1/workflows`).
    #[tool(
        description = "List workflows, newest first, without their tasks (one's own, or all \
                       with workflows:read:any), a page at a time.",
        annotations(read_only_hint = true)
    )]
    async fn list_workflows(
        &self,
        Parameters(input): Parameters<ListWorkflowsInput>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<WorkflowListOutput>, CallToolResult> {
        run(&context, async {
            let principal = caller(&context)?;
            require(&principal, Permission::WorkflowsReadOwn)?;
            let limit = page_limit(&self.state.config, input.limit)?;
            let before = parse_cursor(input.cursor.as_deref())?;
            let page = self.workflows().list(&principal, before, limit).await?;
            Ok(WorkflowListOutput {
                workflows: page.workflows.iter().map(to_value).collect(),
                next_cursor: page.next_cursor.map(|id| id.to_string()),
            })
        })
        .await
    }

    /// Cancel a workflow (`POST /v1/workflows/{id}/cancel`).
    #[tool(
        description = "Cancel what has not finished of a workflow: waiting and queued tasks \
                       never run, running ones are signalled. Only its creator or an operator \
                       may.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false
        )
    )]
    async fn cancel_workflow(
        &self,
        Parameters(input): Parameters<WorkflowId>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<WorkflowOutput>, CallToolResult> {
        run(&context, async {
            let principal = caller(&context)?;
            require(&principal, Permission::WorkflowsCancelOwn)?;
            let detail = self.workflows().cancel(&principal, &input.id).await?;
            Ok(WorkflowOutput {
                workflow: to_value(&detail),
            })
        })
        .await
    }
}

impl Hub {
    /// `pause_schedule` and `resume_schedule`.
    async fn set_paused(
        &self,
        name: String,
        paused: bool,
        context: &RequestContext<RoleServer>,
    ) -> Result<Json<ScheduleOutput>, CallToolResult> {
        run(context, async {
            let principal = caller(context)?;
            require(&principal, Permission::SchedulesWrite)?;
            let schedule = self.state.schedules.set_paused(&name, paused).await?;
            Ok(ScheduleOutput {
                schedule: to_value(&schedule),
            })
        })
        .await
    }
}
