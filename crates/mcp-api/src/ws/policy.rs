//! Who may subscribe and publish to which channel.

use super::connection::{Connection, ws_error};
use crate::auth::Principal;
use crate::error::ApiError;
use mcp_core::principal::Permission;

impl Connection {
    pub(super) async fn may_subscribe(
        &self,
        principal: &Principal,
        channel: &str,
    ) -> Result<(), ApiError> {
        let (namespace, rest) = channel.split_once(':').unwrap_or((channel, ""));
        let allowed = match (namespace, rest) {
            ("tasks", "") | ("system.breakers", "") => principal.can(Permission::TasksReadAny),
            ("system.health", "") => principal.can(Permission::HealthRead),
            // Runtime setting and feature flag changes (mcp_core::settings, mcp_core::flags).
            ("system.settings", "") | ("system.flags", "") => {
                principal.can(Permission::SettingsRead)
            }
            // Incoming webhooks (crate::hooks): `hooks` and `hooks:{source}`.
            ("hooks", _) => principal.can(Permission::TasksReadAny),
            // A task's events, and a build's or deploy's output (mcp_integrations::vcc): whoever
            // may see the task.
            ("task", id) | ("vcc.build", id) if !id.is_empty() => {
                principal.can(Permission::TasksReadAny) || self.owns_task(principal, id).await?
            }
            // Workflows' events: all of them, or one's whoever may see it.
            ("workflows", "") => principal.can(Permission::WorkflowsReadAny),
            ("workflow", id) if !id.is_empty() => {
                principal.can(Permission::WorkflowsReadAny)
                    || self.owns_workflow(principal, id).await?
            }
            ("user", subject) => subject == principal.subject,
            ("conversation", id) if !id.is_empty() => principal.can(Permission::MemoryRead),
            ("memory", "") => principal.can(Permission::MemoryRead),
            ("broadcast", "") => true,
            // VRChat OSC avatar parameters (mcp_integrations::osc): any signed-in principal.
            ("vrchat.osc", "") => true,
            ("vcc.projects", "") => principal.can(Permission::VccRead),
            // `schedule.fired` (services::schedules) and queue pauses and limits (services::queues).
            ("system.schedules", "") => principal.can(Permission::SchedulesRead),
            ("system.queues", "") => principal.can(Permission::TasksReadAny),
            (ns, rest) if !rest.is_empty() => self.is_open(ns),
            _ => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(ws_error(
                "forbidden",
                &format!("role `{}` may not subscribe to `{channel}`", principal.role),
            ))
        }
    }

    pub(super) fn may_publish(&self, principal: &Principal, channel: &str) -> Result<(), ApiError> {
        let (namespace, rest) = channel.split_once(':').unwrap_or((channel, ""));
        let allowed = match (namespace, rest) {
            ("broadcast", "") => principal.can(Permission::TasksManage),
            (ns, rest) if !rest.is_empty() => self.is_open(ns),
            _ => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(ws_error(
                "forbidden",
                &format!("role `{}` may not publish to `{channel}`", principal.role),
            ))
        }
    }

    pub(super) fn is_open(&self, namespace: &str) -> bool {
        self.state
            .config
            .ws
            .open_namespaces
            .iter()
            .any(|n| n == namespace)
    }

    pub(super) async fn owns_task(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<bool, ApiError> {
        match self.state.tasks.get(principal, id).await {
            Ok(_) => Ok(true),
            Err(mcp_core::services::TaskServiceError::NotFound(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn owns_workflow(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<bool, ApiError> {
        let workflows = mcp_core::services::WorkflowService::new(
            self.state.tasks.clone(),
            self.state.orchestrator.clone(),
        );
        match workflows.get(principal, id).await {
            Ok(_) => Ok(true),
            Err(mcp_core::services::WorkflowServiceError::NotFound(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
