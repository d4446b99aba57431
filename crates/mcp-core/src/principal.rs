//! Who acts and what they may do: roles and the one permission table.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a principal may do, broadest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Manages every task.
    Operator,
    /// Creates and runs tasks (bots, workers, integrations).
    Service,
    /// Sees and cancels only its own tasks.
    User,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Service, Role::User];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Service => "service",
            Role::User => "user",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| format!("unknown role `{s}` (admin, operator, service or user)"))
    }
}

/// The subjects the hub acts under itself (tasks it creates, audit entries it writes). Each has
/// a `:`, which no username may contain, so no user can share one and see or cancel what the hub
/// created under it. Incoming hooks act as `hook:{source}`, Discord commands as
/// `discord:{user id}`, API keys as `key:{prefix}`: the same rule.
pub mod subjects {
    /// The webhook dispatcher (`webhook.deliver` tasks).
    pub const WEBHOOKS: &str = "system:webhooks";
    /// A scrape with the metrics token.
    pub const METRICS: &str = "system:metrics";
    /// The command line (`mkww-mcp user create`, `mkww-mcp token` by default).
    pub const CLI: &str = "system:cli";
    pub const ALL: [&str; 3] = [WEBHOOKS, METRICS, CLI];
}

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    AccessToken,
    ApiKey,
    MetricsToken,
}

/// Who is calling: a subject with a role, and how it authenticated. The API authenticates it;
/// the core services decide with it what the caller may see and change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Principal {
    /// Username, API key subject (`key:<prefix>`) or token `sub`.
    pub subject: String,
    pub role: Role,
    pub credential: CredentialKind,
    /// The task types it may serve as an external worker (`crate::worker_types` patterns), when
    /// its credential limits them: an API key's `worker_types`. `None`: every type meant for
    /// workers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_types: Option<Vec<String>>,
}

impl Principal {
    pub fn can(&self, permission: Permission) -> bool {
        self.role.grants(permission)
    }

    /// Whether its credential lets it serve `task_type` as an external worker (the role's
    /// `tasks:run` is checked apart).
    pub fn may_serve(&self, task_type: &str) -> bool {
        crate::worker_types::covers(self.worker_types.as_deref(), task_type)
    }
}

/// Something a principal may be allowed to do. README's permission table is this enum and
/// `Role::grants`; the API checks every route against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Create tasks (one or a batch).
    TasksCreate,
    /// Read and list the tasks one created.
    TasksReadOwn,
    /// Cancel the tasks one created.
    TasksCancelOwn,
    /// Read and list every task, and see queue counts.
    TasksReadAny,
    /// Cancel and retry any task.
    TasksManage,
    /// Run tasks as an external worker (`worker.register` over the WebSocket), and see the
    /// routes (`GET /v1/routes`).
    TasksRun,
    /// Create, list and revoke API keys.
    ApiKeysManage,
    /// Create users, change their roles, disable them.
    UsersManage,
    /// Read the audit log.
    AuditRead,
    /// Read `/metrics`.
    MetricsRead,
    /// See the state of the node's dependencies (`GET /v1/health`, channel `system.health`).
    HealthRead,
    /// Read conversations and messages, search them, build context windows, export.
    MemoryRead,
    /// Create and change conversations; add, edit, pin and delete messages; set summaries.
    MemoryWrite,
    /// Delete whole conversations and import them (restores, migrations).
    MemoryManage,
    /// Write messages in the hub's own voice: roles `system` and `tool`, and a `created_at` of
    /// one's choosing (bridged history). Without it a message is `user` or `assistant`, written
    /// now.
    MemoryWriteSystem,
    /// List integrations and configure them through the API (their secrets included), and
    /// manage outgoing webhooks.
    IntegrationsManage,
    /// Read VRChat through the hub's account: users, worlds, instances, friends online.
    VrchatRead,
    /// List and inspect VCC projects, repositories and packages.
    VccRead,
    /// Register VCC projects and add or remove VPM repositories.
    VccManage,
    /// Create `http.request` tasks: have the hub call a URL the caller chooses.
    HttpRequest,
    /// List schedules and see their next firing times.
    SchedulesRead,
    /// Create, change, pause, trigger and delete schedules.
    SchedulesWrite,
    /// Create workflows (of task types one may create), and add tasks to one's own.
    WorkflowsCreate,
    /// Read and list the workflows one created.
    WorkflowsReadOwn,
    /// Cancel the workflows one created.
    WorkflowsCancelOwn,
    /// Read and list every workflow.
    WorkflowsReadAny,
    /// Cancel any workflow.
    WorkflowsManage,
    /// Read the runtime settings and the feature flags.
    SettingsRead,
    /// Change runtime settings and feature flags.
    SettingsManage,
}

impl Permission {
    pub const ALL: [Permission; 29] = [
        Permission::TasksCreate,
        Permission::TasksReadOwn,
        Permission::TasksCancelOwn,
        Permission::TasksReadAny,
        Permission::TasksManage,
        Permission::ApiKeysManage,
        Permission::UsersManage,
        Permission::AuditRead,
        Permission::MetricsRead,
        Permission::HealthRead,
        Permission::TasksRun,
        Permission::MemoryRead,
        Permission::MemoryWrite,
        Permission::MemoryManage,
        Permission::MemoryWriteSystem,
        Permission::IntegrationsManage,
        Permission::VrchatRead,
        Permission::VccRead,
        Permission::VccManage,
        Permission::HttpRequest,
        Permission::SchedulesRead,
        Permission::SchedulesWrite,
        Permission::WorkflowsCreate,
        Permission::WorkflowsReadOwn,
        Permission::WorkflowsCancelOwn,
        Permission::WorkflowsReadAny,
        Permission::WorkflowsManage,
        Permission::SettingsRead,
        Permission::SettingsManage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::TasksCreate => "tasks:create",
            Permission::TasksReadOwn => "tasks:read:own",
            Permission::TasksCancelOwn => "tasks:cancel:own",
            Permission::TasksReadAny => "tasks:read:any",
            Permission::TasksManage => "tasks:manage",
            Permission::ApiKeysManage => "api_keys:manage",
            Permission::UsersManage => "users:manage",
            Permission::AuditRead => "audit:read",
            Permission::MetricsRead => "metrics:read",
            Permission::HealthRead => "health:read",
            Permission::TasksRun => "tasks:run",
            Permission::MemoryRead => "memory:read",
            Permission::MemoryWrite => "memory:write",
            Permission::MemoryManage => "memory:manage",
            Permission::MemoryWriteSystem => "memory:write:system",
            Permission::IntegrationsManage => "integrations:manage",
            Permission::VrchatRead => "vrchat:read",
            Permission::VccRead => "vcc:read",
            Permission::VccManage => "vcc:manage",
            Permission::HttpRequest => "http:request",
            Permission::SchedulesRead => "schedules:read",
            Permission::SchedulesWrite => "schedules:write",
            Permission::WorkflowsCreate => "workflows:create",
            Permission::WorkflowsReadOwn => "workflows:read:own",
            Permission::WorkflowsCancelOwn => "workflows:cancel:own",
            Permission::WorkflowsReadAny => "workflows:read:any",
            Permission::WorkflowsManage => "workflows:manage",
            Permission::SettingsRead => "settings:read",
            Permission::SettingsManage => "settings:manage",
        }
    }

    /// A workflow permission is granted with the task permission it mirrors: a workflow is its
    /// tasks, so whoever may create, read or cancel tasks may do so in a workflow.
    pub fn task_counterpart(self) -> Option<Permission> {
        match self {
            Permission::WorkflowsCreate => Some(Permission::TasksCreate),
            Permission::WorkflowsReadOwn => Some(Permission::TasksReadOwn),
            Permission::WorkflowsCancelOwn => Some(Permission::TasksCancelOwn),
            Permission::WorkflowsReadAny => Some(Permission::TasksReadAny),
            Permission::WorkflowsManage => Some(Permission::TasksManage),
            _ => None,
        }
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Role {
    /// The permission table: which role may do what.
    pub fn grants(self, permission: Permission) -> bool {
        use Permission::*;
        if let Some(task) = permission.task_counterpart() {
            return self.grants(task);
        }
        match self {
            Role::Admin => true,
            Role::Operator => matches!(
                permission,
                TasksCreate
                    | TasksReadOwn
                    | TasksCancelOwn
                    | TasksReadAny
                    | TasksManage
                    | TasksRun
                    | HealthRead
                    | MemoryRead
                    | MemoryWrite
                    | MemoryManage
                    | MemoryWriteSystem
                    | VrchatRead
                    | VccRead
                    | VccManage
                    | HttpRequest
                    | SchedulesRead
                    | SchedulesWrite
                    | SettingsRead
            ),
            Role::Service => matches!(
                permission,
                TasksCreate
                    | TasksReadOwn
                    | TasksCancelOwn
                    | TasksRun
                    | MemoryRead
                    | MemoryWrite
                    | MemoryWriteSystem
                    | VrchatRead
                    | VccRead
                    | HttpRequest
            ),
            Role::User => matches!(
                permission,
                TasksCreate | TasksReadOwn | TasksCancelOwn | MemoryRead | MemoryWrite | VccRead
            ),
        }
    }

    /// Whether the daily task quota applies (people who run the hub are not throttled by it).
    pub fn has_quota(self) -> bool {
        matches!(self, Role::Service | Role::User)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_by_what_they_may_do() {
        // Each role may do at least what the next one may.
        for pair in Role::ALL.windows(2) {
            for p in Permission::ALL {
                assert!(!pair[1].grants(p) || pair[0].grants(p), "{} {p}", pair[0]);
            }
        }
        assert!(Role::Admin.grants(Permission::UsersManage));
        assert!(!Role::Operator.grants(Permission::UsersManage));
        assert!(Role::Operator.grants(Permission::TasksReadAny));
        assert!(!Role::Service.grants(Permission::TasksReadAny));
        assert!(!Role::User.grants(Permission::TasksReadAny));
        assert!(Role::Service.grants(Permission::MemoryWriteSystem));
        assert!(!Role::User.grants(Permission::MemoryWriteSystem));
    }

    #[test]
    fn role_names_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err());
    }
}
