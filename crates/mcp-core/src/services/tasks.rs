//! The task service: the one path by which anything creates, reads, lists, cancels or retries a
//! task — the REST routes, the WebSocket, the bots' routes, Discord commands, incoming hooks and
//! webhook redeliveries alike. Who may see or change which task is decided here, once.

use crate::events::Subscription;
use crate::identity::IdentityStore;
use crate::orchestrator::{Orchestrator, OrchestratorError, Origin};
use crate::principal::{CredentialKind, Permission, Principal, Role};
use crate::store::{CancelOutcome, Inserted, RetryOutcome, TaskFilter};
use crate::task::{CreateTask, NewTask, Task, TaskStatus, client_key, scoped_key};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

/// How often `finished` reads a task it waits on besides its events.
pub const FINAL_POLL: Duration = Duration::from_millis(500);

/// Limits the service enforces on principals.
#[derive(Debug, Clone, Copy)]
pub struct TaskLimits {
    /// Most tasks in one batch.
    pub max_batch: usize,
    /// Tasks a day for roles with a quota (`user`, `service`); 0: no quota.
    pub quota_tasks_per_day: u64,
    /// Highest `priority` a `user` or `service` principal may give; above it only operators
    /// and admins may go (422 `priority_too_high` for the others).
    pub priority_ceiling: i32,
    /// Longest `timeout_ms` a `user` principal may give (422 `timeout_too_long` above it; a
    /// longer default is lowered to it); 0: only the global bound.
    pub max_timeout_ms_user: u64,
    /// The same for `service` principals.
    pub max_timeout_ms_service: u64,
}

impl TaskLimits {
    /// The longest `timeout_ms` a tenant of `role` may give; `None`: no bound of its own.
    pub(crate) fn max_timeout(&self, role: Role) -> Option<u64> {
        let max = match role {
            Role::User => self.max_timeout_ms_user,
            Role::Service => self.max_timeout_ms_service,
            Role::Operator | Role::Admin => 0,
        };
        (max > 0).then_some(max)
    }

    /// Refuses what a tenant may not ask for: a priority above the ceiling (clamping it would
    /// silently reorder the tenant's own work) or a timeout longer than its role's.
    pub(crate) fn check_tenant(
        &self,
        creator: Creator<'_>,
        request: &CreateTask,
        index: Option<usize>,
    ) -> Result<(), TaskServiceError> {
        let Some(tenant) = creator.tenant() else {
            return Ok(());
        };
        let ceiling = self.priority_ceiling;
        if let Some(got) = request.priority
            && got > ceiling
        {
            return Err(TaskServiceError::PriorityTooHigh {
                index,
                got,
                ceiling,
                role: tenant.role,
            });
        }
        if let (Some(got), Some(max)) = (request.timeout_ms, self.max_timeout(tenant.role))
            && got > max
        {
            return Err(TaskServiceError::TimeoutTooLong {
                index,
                got,
                max,
                role: tenant.role,
            });
        }
        Ok(())
    }

    /// Puts a tenant's task in its own namespace: its share key (its subject), and its keys
    /// stored under it (`{subject}/{key}`), so that another principal's key never blocks or
    /// answers it and it never reaches the hub's own (`hook:…`). A default timeout longer than
    /// the role's longest is lowered to it (the tenant did not ask for it).
    pub(crate) fn scope(&self, creator: Creator<'_>, task: &mut NewTask) {
        let Some(tenant) = creator.tenant() else {
            return;
        };
        if let Some(max) = self.max_timeout(tenant.role) {
            task.timeout_ms = task.timeout_ms.min(max);
        }
        let share = tenant.subject.as_str();
        for key in [&mut task.idempotency_key, &mut task.concurrency_key] {
            if let Some(key) = key.as_mut() {
                *key = scoped_key(Some(share), key);
            }
        }
        task.share_key = Some(share.to_owned());
    }
}

impl Default for TaskLimits {
    fn default() -> Self {
        TaskLimits {
            max_batch: 1000,
            quota_tasks_per_day: 0,
            priority_ceiling: i32::MAX,
            max_timeout_ms_user: 0,
            max_timeout_ms_service: 0,
        }
    }
}

/// Who creates tasks: an authenticated principal (quota, and only its own idempotency keys), or
/// a part of the hub acting on its own behalf under an internal subject (`hook:{source}`,
/// `discord:{user}`, `webhooks`).
#[derive(Debug, Clone, Copy)]
pub enum Creator<'a> {
    Principal(&'a Principal),
    Internal(&'a str),
}

impl Creator<'_> {
    fn subject(&self) -> &str {
        match self {
            Creator::Principal(principal) => &principal.subject,
            Creator::Internal(subject) => subject,
        }
    }

    /// A tenant: a `user` or `service` principal, held to its share of the slots, the priority
    /// ceiling, its role's longest timeout and keys of its own. Operators and admins run the hub
    /// and the hub's own parts act for it: none of that applies to them.
    fn tenant(&self) -> Option<&Principal> {
        match self {
            Creator::Principal(principal)
                if matches!(principal.role, Role::User | Role::Service) =>
            {
                Some(*principal)
            }
            _ => None,
        }
    }
}

/// What a list asks for; the caller's own tasks only unless it may read any.
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    pub status: Option<TaskStatus>,
    pub task_type: Option<String>,
    pub queue: Option<String>,
    /// The last task of the previous page.
    pub before: Option<Uuid>,
    pub limit: u32,
}

/// A page of tasks, newest first.
#[derive(Debug, Clone)]
pub struct TaskPage {
    pub tasks: Vec<Task>,
    /// The cursor of the next page; `None` on the last.
    pub next_cursor: Option<Uuid>,
}

#[derive(Debug, thiserror::Error)]
pub enum TaskServiceError {
    #[error(transparent)]
    Orchestrator(#[from] OrchestratorError),
    #[error("a batch holds between 1 and {max} tasks; this one has {got}")]
    BatchSize { max: usize, got: usize },
    #[error("the daily quota of {limit} tasks is used up; it resets at 00:00 UTC")]
    QuotaExceeded {
        limit: u64,
        used: u64,
        resets_at: DateTime<Utc>,
    },
    #[error("the idempotency_key `{0}` is used by a task you cannot see; pick another")]
    IdempotencyConflict(String),
    #[error(
        "{}priority {got} is above {ceiling}, the highest a {role} may give (operators and admins \
         may give more)",
        index.map(|i| format!("tasks[{i}].")).unwrap_or_default()
    )]
    PriorityTooHigh {
        index: Option<usize>,
        got: i32,
        ceiling: i32,
        role: Role,
    },
    #[error(
        "{}timeout_ms {got} is above {max}, the longest a {role} may give",
        index.map(|i| format!("tasks[{i}].")).unwrap_or_default()
    )]
    TimeoutTooLong {
        index: Option<usize>,
        got: u64,
        max: u64,
        role: Role,
    },
    #[error("no task with id `{0}`")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("task `{id}` is {status} and cannot be cancelled")]
    AlreadyFinished { id: String, status: TaskStatus },
    #[error(
        "task `{id}` is {status}; only failed or dead tasks can be retried (and a workflow's \
         cancelled task, unless its workflow was cancelled or one of its dependencies failed: \
         retry that one)"
    )]
    NotRetryable { id: String, status: TaskStatus },
}

impl From<crate::StoreError> for TaskServiceError {
    fn from(e: crate::StoreError) -> Self {
        TaskServiceError::Orchestrator(e.into())
    }
}

pub struct TaskService {
    orchestrator: Arc<Orchestrator>,
    /// Where the daily quota is counted.
    identities: Arc<dyn IdentityStore>,
    limits: TaskLimits,
    /// `limits.quota_tasks_per_day`, changeable at runtime (`set_quota_tasks_per_day`).
    quota: std::sync::atomic::AtomicU64,
}

impl TaskService {
    pub fn new(
        orchestrator: Arc<Orchestrator>,
        identities: Arc<dyn IdentityStore>,
        limits: TaskLimits,
    ) -> Self {
        TaskService {
            orchestrator,
            identities,
            quota: std::sync::atomic::AtomicU64::new(limits.quota_tasks_per_day),
            limits,
        }
    }

    /// Changes the daily task quota (a runtime setting); 0: no quota.
    pub fn set_quota_tasks_per_day(&self, quota: u64) {
        self.quota
            .store(quota, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `principal` may see `task`: its own, or any with `tasks:read:any`.
    pub fn may_see(principal: &Principal, task: &Task) -> bool {
        principal.can(Permission::TasksReadAny)
            || task.created_by.as_deref() == Some(principal.subject.as_str())
    }

    /// Creates one task; `created` is false when its idempotency key named an existing task.
    pub async fn create(
        &self,
        creator: Creator<'_>,
        request: CreateTask,
        correlation: Option<&str>,
    ) -> Result<Inserted, TaskServiceError> {
        let task = self.prepare_one(creator, request, correlation).await?;
        let mut inserted = self.insert(creator, vec![task]).await?;
        Ok(inserted.remove(0))
    }

    /// Creates between 1 and `max_batch` tasks atomically: if one is invalid, none is created.
    pub async fn create_batch(
        &self,
        creator: Creator<'_>,
        requests: Vec<CreateTask>,
        correlation: Option<&str>,
    ) -> Result<Vec<Inserted>, TaskServiceError> {
        let max = self.limits.max_batch;
        if requests.is_empty() || requests.len() > max {
            return Err(TaskServiceError::BatchSize {
                max,
                got: requests.len(),
            });
        }
        self.create_all(creator, requests, correlation).await
    }

    /// Creates a fixed set of tasks (a deploy's, a hook rule's) atomically, whatever their
    /// number.
    pub async fn create_all(
        &self,
        creator: Creator<'_>,
        requests: impl IntoIterator<Item = CreateTask>,
        correlation: Option<&str>,
    ) -> Result<Vec<Inserted>, TaskServiceError> {
        let tasks = self.prepare(creator, requests, correlation).await?;
        self.insert(creator, tasks).await
    }

    /// Validates one request into a task with its id, without storing it: for callers that
    /// subscribe to the task's events before it exists (`insert` then stores it).
    pub async fn prepare_one(
        &self,
        creator: Creator<'_>,
        request: CreateTask,
        correlation: Option<&str>,
    ) -> Result<NewTask, TaskServiceError> {
        may_create(creator, &request)?;
        self.limits.check_tenant(creator, &request, None)?;
        let origin = Origin {
            correlation_id: correlation,
            created_by: Some(creator.subject()),
        };
        let mut task = self.orchestrator.prepare(request, origin, None).await?;
        self.limits.scope(creator, &mut task);
        Ok(task)
    }

    /// Validates many requests (errors name the request's index), without storing them.
    pub async fn prepare(
        &self,
        creator: Creator<'_>,
        requests: impl IntoIterator<Item = CreateTask>,
        correlation: Option<&str>,
    ) -> Result<Vec<NewTask>, TaskServiceError> {
        let requests: Vec<CreateTask> = requests.into_iter().collect();
        for (i, request) in requests.iter().enumerate() {
            self.limits.check_tenant(creator, request, Some(i))?;
            may_create(creator, request)?;
        }
        let origin = Origin {
            correlation_id: correlation,
            created_by: Some(creator.subject()),
        };
        let mut tasks = self.orchestrator.prepare_batch(requests, origin).await?;
        for task in &mut tasks {
            self.limits.scope(creator, task);
        }
        Ok(tasks)
    }

    /// Stores prepared tasks atomically: a principal's are charged to its daily quota, and one
    /// that matched another principal's idempotency key is refused rather than shown.
    pub async fn insert(
        &self,
        creator: Creator<'_>,
        tasks: Vec<NewTask>,
    ) -> Result<Vec<Inserted>, TaskServiceError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let Creator::Principal(principal) = creator else {
            return Ok(self.orchestrator.insert(&tasks).await?);
        };
        self.charge_quota(principal, tasks.len() as u64).await?;
        let inserted = self.orchestrator.insert(&tasks).await?;
        if let Some(asked) = tasks
            .iter()
            .zip(&inserted)
            .find(|(_, i)| !i.created && !Self::may_see(principal, &i.task))
            .map(|(asked, _)| asked)
        {
            // The key as this principal sent it, not as the other task holds it.
            let key = asked.idempotency_key.clone().unwrap_or_default();
            return Err(TaskServiceError::IdempotencyConflict(client_key(
                asked.share_key.as_deref(),
                key,
            )));
        }
        Ok(inserted)
    }

    /// The principal on whose behalf `task`'s own work creates tasks (a running handler adding
    /// children to its workflow), as a create by that principal now would see it. `None`: no
    /// tenant created it (an operator, an admin or a part of the hub): nothing bounds it, as
    /// nothing bounds their creates. A tenant's role comes from the identity store (its API key
    /// or its user); a subject the hub does not store (a token signed elsewhere, a deleted user)
    /// counts as a `user`, the narrower role. A revoked key or a disabled user creates nothing.
    pub(crate) async fn creator_of(
        &self,
        task: &Task,
    ) -> Result<Option<Principal>, TaskServiceError> {
        // A tenant's tasks, and only theirs, carry its subject as their share key.
        let Some(subject) = task.share_key.as_deref() else {
            return Ok(None);
        };
        let (role, credential) = match subject.strip_prefix("key:") {
            Some(prefix) => match self.identities.api_key_by_prefix(prefix).await? {
                Some(key) if key.revoked_at.is_some() => {
                    return Err(TaskServiceError::Forbidden(
                        "the API key that created this task was revoked",
                    ));
                }
                Some(key) => (key.role, CredentialKind::ApiKey),
                None => (Role::User, CredentialKind::ApiKey),
            },
            None => match self.identities.user_by_username(subject).await? {
                Some(user) if user.disabled => {
                    return Err(TaskServiceError::Forbidden(
                        "the user who created this task is disabled",
                    ));
                }
                Some(user) => (user.role, CredentialKind::AccessToken),
                None => (Role::User, CredentialKind::AccessToken),
            },
        };
        Ok(Some(Principal {
            subject: subject.to_owned(),
            role,
            credential,
            worker_types: None,
        }))
    }

    /// Counts `n` tasks of `creator` against its daily quota (a principal whose role has one),
    /// for tasks stored another way than [`TaskService::insert`] (a workflow's).
    pub(crate) async fn charge(
        &self,
        creator: Creator<'_>,
        n: u64,
    ) -> Result<(), TaskServiceError> {
        match creator {
            Creator::Principal(principal) => self.charge_quota(principal, n).await,
            Creator::Internal(_) => Ok(()),
        }
    }

    /// Counts `n` tasks against the principal's daily quota (roles that have one).
    async fn charge_quota(&self, principal: &Principal, n: u64) -> Result<(), TaskServiceError> {
        let limit = self.quota.load(std::sync::atomic::Ordering::Relaxed);
        if limit == 0 || !principal.role.has_quota() {
            return Ok(());
        }
        let now = Utc::now();
        let today = now.date_naive();
        let usage = self
            .identities
            .consume_quota(&principal.subject, today, n, limit)
            .await?;
        if usage.granted {
            return Ok(());
        }
        let resets_at = today
            .succ_opt()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc())
            .unwrap_or(now);
        Err(TaskServiceError::QuotaExceeded {
            limit,
            used: usage.used,
            resets_at,
        })
    }

    /// The task, if it exists and `principal` may see it. A task one may not see is
    /// indistinguishable from one that does not exist.
    pub async fn get(&self, principal: &Principal, id: &str) -> Result<Task, TaskServiceError> {
        let task_id = parse_id(id)?;
        match self.orchestrator.store().get(task_id).await? {
            Some(task) if Self::may_see(principal, &task) => Ok(task),
            _ => Err(TaskServiceError::NotFound(id.to_owned())),
        }
    }

    /// A page of the tasks `principal` may see, newest first.
    pub async fn list(
        &self,
        principal: &Principal,
        query: TaskQuery,
    ) -> Result<TaskPage, TaskServiceError> {
        let limit = query.limit as usize;
        let mut tasks = self
            .orchestrator
            .store()
            .list(&TaskFilter {
                status: query.status,
                task_type: query.task_type,
                queue: query.queue,
                created_by: (!principal.can(Permission::TasksReadAny))
                    .then(|| principal.subject.clone()),
                before: query.before,
                limit: query.limit + 1,
            })
            .await?;
        let next_cursor = if super::trim_page(&mut tasks, limit) {
            tasks.last().map(|t| t.id)
        } else {
            None
        };
        Ok(TaskPage { tasks, next_cursor })
    }

    /// Cancels a task: its creator may, and anyone who manages tasks. A queued task never runs;
    /// a running one is signalled and ends `cancelled`.
    pub async fn cancel(&self, principal: &Principal, id: &str) -> Result<Task, TaskServiceError> {
        let task_id = parse_id(id)?;
        if !principal.can(Permission::TasksManage) {
            let task = self.get(principal, id).await?;
            if task.created_by.as_deref() != Some(principal.subject.as_str()) {
                return Err(TaskServiceError::Forbidden(
                    "only the task's creator (or an operator) may cancel it",
                ));
            }
        }
        match self.orchestrator.cancel(task_id).await? {
            CancelOutcome::Cancelled { task, .. } => Ok(task),
            CancelOutcome::NotFound => Err(TaskServiceError::NotFound(id.to_owned())),
            CancelOutcome::AlreadyFinal(task) => Err(TaskServiceError::AlreadyFinished {
                id: id.to_owned(),
                status: task.status,
            }),
        }
    }

    /// Requeues a failed or dead task now (one more attempt if it had none left), or a
    /// workflow's cancelled one, reviving the dependents its end cancelled; for those who manage
    /// tasks.
    pub async fn retry(&self, principal: &Principal, id: &str) -> Result<Task, TaskServiceError> {
        if !principal.can(Permission::TasksManage) {
            return Err(TaskServiceError::Forbidden(
                "only an operator may retry a task",
            ));
        }
        match self.orchestrator.retry(parse_id(id)?).await? {
            RetryOutcome::Requeued(task) => Ok(task),
            RetryOutcome::NotFound => Err(TaskServiceError::NotFound(id.to_owned())),
            RetryOutcome::NotRetryable(task) => Err(TaskServiceError::NotRetryable {
                id: id.to_owned(),
                status: task.status,
            }),
        }
    }
}

impl TaskService {
    /// The task once it is final, for a caller that waits on it (a bot's answer, a Discord
    /// follow-up): read from the store on each of its events (`live`, subscribed to
    /// `task:{id}` before the task was stored, so no transition comes first) and every
    /// [`FINAL_POLL`], which alone finds the outcome when there is no bus. Bound it with a
    /// timeout.
    pub async fn finished(
        &self,
        id: Uuid,
        mut live: Option<Subscription>,
    ) -> Result<Task, TaskServiceError> {
        loop {
            if let Some(task) = self.orchestrator.store().get(id).await?
                && task.status.is_final()
            {
                return Ok(task);
            }
            match live.as_mut() {
                Some(events) => {
                    tokio::select! {
                        received = events.recv() => {
                            if let Err(RecvError::Closed) = received {
                                live = None;
                            }
                        }
                        _ = tokio::time::sleep(FINAL_POLL) => {}
                    }
                }
                None => tokio::time::sleep(FINAL_POLL).await,
            }
        }
    }
}

/// Task types that need a permission of their own beyond `tasks:create`: `http.request` makes
/// the hub call a URL the caller picks, so a `user` may not create it. Internal creators (hook
/// rules, Discord commands) run what an admin configured and pass.
fn may_create(creator: Creator<'_>, request: &CreateTask) -> Result<(), TaskServiceError> {
    match creator {
        Creator::Principal(principal)
            if request.task_type == crate::outbound::HTTP_REQUEST_TASK
                && !principal.can(Permission::HttpRequest) =>
        {
            Err(TaskServiceError::Forbidden(
                "creating `http.request` tasks needs the `http:request` permission",
            ))
        }
        _ => Ok(()),
    }
}

pub(crate) fn parse_id(id: &str) -> Result<Uuid, TaskServiceError> {
    Uuid::parse_str(id).map_err(|_| TaskServiceError::NotFound(id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskDefaults;

    fn principal(role: Role, subject: &str) -> Principal {
        Principal {
            subject: subject.into(),
            role,
            credential: CredentialKind::AccessToken,
            worker_types: None,
        }
    }

    fn limits() -> TaskLimits {
        TaskLimits {
            priority_ceiling: 10,
            max_timeout_ms_user: 60_000,
            max_timeout_ms_service: 600_000,
            ..TaskLimits::default()
        }
    }

    fn request(priority: Option<i32>, timeout_ms: Option<u64>) -> CreateTask {
        CreateTask {
            task_type: "sleep".into(),
            priority,
            timeout_ms,
            ..Default::default()
        }
    }

    fn of_type(task_type: &str) -> CreateTask {
        CreateTask {
            task_type: task_type.into(),
            ..CreateTask::default()
        }
    }

    #[test]
    fn refuses_a_tenant_priority_above_the_ceiling_but_not_an_operator_one() {
        let user = principal(Role::User, "alice");
        let ops = principal(Role::Operator, "ops");
        let limits = limits();
        let at = request(Some(10), None);
        assert!(
            limits
                .check_tenant(Creator::Principal(&user), &at, None)
                .is_ok()
        );
        let above = request(Some(i32::MAX), None);
        let refused = limits
            .check_tenant(Creator::Principal(&user), &above, Some(3))
            .unwrap_err();
        assert!(matches!(
            refused,
            TaskServiceError::PriorityTooHigh {
                index: Some(3),
                ceiling: 10,
                ..
            }
        ));
        assert!(refused.to_string().starts_with("tasks[3].priority"));
        assert!(
            limits
                .check_tenant(Creator::Principal(&ops), &above, None)
                .is_ok()
        );
        assert!(
            limits
                .check_tenant(Creator::Internal("hook:gh"), &above, None)
                .is_ok()
        );
    }

    #[test]
    fn refuses_a_timeout_above_the_role_maximum_and_lowers_a_longer_default() {
        let user = principal(Role::User, "alice");
        let service = principal(Role::Service, "key:bot");
        let admin = principal(Role::Admin, "root");
        let limits = limits();
        let day = request(None, Some(86_400_000));
        assert!(matches!(
            limits.check_tenant(Creator::Principal(&user), &day, None),
            Err(TaskServiceError::TimeoutTooLong { max: 60_000, .. })
        ));
        let ten_minutes = request(None, Some(600_000));
        assert!(
            limits
                .check_tenant(Creator::Principal(&service), &ten_minutes, None)
                .is_ok()
        );
        assert!(
            limits
                .check_tenant(Creator::Principal(&admin), &day, None)
                .is_ok()
        );

        let mut task = request(None, None)
            .validate(&TaskDefaults::default(), Utc::now())
            .unwrap();
        assert_eq!(task.timeout_ms, 300_000);
        limits.scope(Creator::Principal(&user), &mut task);
        assert_eq!(task.timeout_ms, 60_000);
    }

    #[test]
    fn scopes_a_tenant_keys_to_its_subject_and_leaves_operators_global() {
        let keyed = || {
            let mut request = request(None, None);
            request.idempotency_key = Some("hook:gh:d-1:0".into());
            request.concurrency_key = Some("deploy:web".into());
            request
                .validate(&TaskDefaults::default(), Utc::now())
                .unwrap()
        };
        let user = principal(Role::User, "mallory");
        let mut task = keyed();
        limits().scope(Creator::Principal(&user), &mut task);
        assert_eq!(task.share_key.as_deref(), Some("mallory"));
        assert_eq!(
            task.idempotency_key.as_deref(),
            Some("mallory/hook:gh:d-1:0")
        );
        assert_eq!(task.concurrency_key.as_deref(), Some("mallory/deploy:web"));

        let admin = principal(Role::Admin, "root");
        let mut task = keyed();
        limits().scope(Creator::Principal(&admin), &mut task);
        assert_eq!(task.share_key, None);
        assert_eq!(task.concurrency_key.as_deref(), Some("deploy:web"));
        let mut task = keyed();
        limits().scope(Creator::Internal("hook:gh"), &mut task);
        assert_eq!(task.idempotency_key.as_deref(), Some("hook:gh:d-1:0"));
    }

    #[test]
    fn http_request_needs_its_own_permission() {
        let user = principal(Role::User, "someone");
        assert!(matches!(
            may_create(Creator::Principal(&user), &of_type("http.request")),
            Err(TaskServiceError::Forbidden(_))
        ));
        assert!(may_create(Creator::Principal(&user), &of_type("echo")).is_ok());
        for role in [Role::Service, Role::Operator, Role::Admin] {
            let principal = principal(role, "someone");
            assert!(may_create(Creator::Principal(&principal), &of_type("http.request")).is_ok());
        }
        assert!(may_create(Creator::Internal("hook:ci"), &of_type("http.request")).is_ok());
    }
}
