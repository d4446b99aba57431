//! The breaker in front of the database: every store port wrapped so that, while the monitor
//! holds the database down, a call answers `StoreError::Unavailable` at once without touching
//! the pool, and every `Unavailable` a call returns marks the database down at once (the probe,
//! which checks the server past the breaker, notices the recovery) — except a wait for a pooled
//! connection that ran out, which may be load: it makes the probe look now.
//!
//! A database that goes silent (a network black hole: the connection stays open, nothing comes
//! back) returns no error at all, so a call also makes the probe look once it has waited the
//! probe's timeout, and every call still waiting ends with `Unavailable` the moment the monitor
//! marks the database down: at most about twice the probe timeout (2 s by default) after it
//! began. A new store method is one line here:
//! `async fn name(&self, a: A) -> Result<T, StoreError> { guarded!(self, name(a)) }`.

use super::Dependency;
use crate::followups::{FollowupStore, PendingFollowup};
use crate::identity::{ApiKey, AuditEvent, AuditFilter, IdentityStore, QuotaUse, RefreshToken};
use crate::identity::{Revocation, RevocationTarget, Rotation, User};
use crate::integrations::{Integration, IntegrationStore};
use crate::memory::{
    ChangeEvent, Conversation, ConversationFilter, ConversationPatch, MemoryStore, Message,
};
use crate::memory::{MessagePage, MessagePatch, SearchHit, SearchRequest, Summary};
use crate::principal::Role;
use crate::routing::{DirectoryEntry, WorkerDirectory, WorkerRegistration};
use crate::settings::{SettingsStore, Stored};
use crate::store::StartRequest;
use crate::store::{CancelOutcome, ClaimRequest, Completion, Inserted, RetryOutcome, StoreError};
use crate::store::{TaskCounts, TaskFilter, TaskStore};
use crate::task::{NewTask, Progress, Task};
use crate::webhooks::{Attempt, Outbox, OutboxEntry, Webhook, WebhookDelivery, WebhookStore};
use crate::workflow::{
    NewWorkflow, Retried, Settled, Workflow, WorkflowDetail, WorkflowFilter, WorkflowNode,
};
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

/// The message of `StoreError::Unavailable` when a call found no free pooled connection in
/// time. That happens when the server is gone (new connections are refused until the wait runs
/// out) but also when the pool is merely saturated by load, so it does not open the breaker by
/// itself: it asks the monitor to probe now, on a connection of the probe's own.
pub const NO_CONNECTION_IN_TIME: &str = "no database connection became free in time";

/// A store port behind the database's breaker.
pub struct Guarded<S: ?Sized> {
    inner: Arc<S>,
    database: Dependency,
}

impl<S: ?Sized> Guarded<S> {
    pub fn new(inner: Arc<S>, database: Dependency) -> Guarded<S> {
        Guarded { inner, database }
    }

    /// The error of a call refused while the database is down.
    fn refuse(&self) -> StoreError {
        let why = self
            .database
            .health()
            .and_then(|h| h.last_error)
            .unwrap_or_else(|| "it does not answer".into());
        StoreError::Unavailable(format!("the database is down: {why}"))
    }

    /// Runs `call` unless the database goes down first; a call slower than the probe's
    /// patience has the probe look now (which, for a silent database, marks it down).
    pub(super) async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::pin!(call);
        let slow = tokio::time::sleep(self.database.patience());
        tokio::pin!(slow);
        let mut suspected = false;
        loop {
            tokio::select! {
                biased;
                result = &mut call => return self.observe(result),
                _ = self.database.until_down() => return Err(self.refuse()),
                _ = &mut slow, if !suspected => {
                    suspected = true;
                    self.database.suspect();
                }
            }
        }
    }

    pub(super) fn observe<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match &result {
            Err(StoreError::Unavailable(message)) if message.starts_with(NO_CONNECTION_IN_TIME) => {
                self.database.suspect()
            }
            Err(StoreError::Unavailable(message)) => self.database.report_failure(message),
            _ => {}
        }
        result
    }
}

/// Refuses at once while the database is down; otherwise makes the call and reports an
/// `Unavailable` answer.
macro_rules! guarded {
    ($self:ident, $method:ident($($arg:expr),*)) => {{
        if $self.database.is_down() {
            return Err($self.refuse());
        }
        $self.bounded($self.inner.$method($($arg),*)).await
    }};
}

#[async_trait]
impl TaskStore for Guarded<dyn TaskStore> {
    async fn insert(&self, tasks: &[NewTask]) -> Result<Vec<Inserted>, StoreError> {
        guarded!(self, insert(tasks))
    }
    async fn get(&self, id: Uuid) -> Result<Option<Task>, StoreError> {
        guarded!(self, get(id))
    }
    async fn list(&self, filter: &TaskFilter) -> Result<Vec<Task>, StoreError> {
        guarded!(self, list(filter))
    }
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<Task>, StoreError> {
        guarded!(self, claim(request))
    }
    async fn complete(&self, owner: &str, done: &[Completion]) -> Result<Vec<Uuid>, StoreError> {
        guarded!(self, complete(owner, done))
    }
    async fn heartbeat(
        &self,
        owner: &str,
        ids: &[Uuid],
        lease: Duration,
    ) -> Result<Vec<Uuid>, StoreError> {
        guarded!(self, heartbeat(owner, ids, lease))
    }
    async fn release(&self, owner: &str, ids: &[Uuid]) -> Result<u64, StoreError> {
        guarded!(self, release(owner, ids))
    }
    async fn cancel(&self, id: Uuid) -> Result<CancelOutcome, StoreError> {
        guarded!(self, cancel(id))
    }
    async fn retry(&self, id: Uuid) -> Result<RetryOutcome, StoreError> {
        guarded!(self, retry(id))
    }
    async fn rescue(&self) -> Result<Vec<Task>, StoreError> {
        guarded!(self, rescue())
    }
    async fn prune(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        guarded!(self, prune(before))
    }
    async fn next_run_at(&self, types: &[String]) -> Result<Option<DateTime<Utc>>, StoreError> {
        guarded!(self, next_run_at(types))
    }
    async fn counts(&self) -> Result<TaskCounts, StoreError> {
        guarded!(self, counts())
    }
    async fn minute_stats(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<crate::stats::MinuteStats>, StoreError> {
        guarded!(self, minute_stats(since, until))
    }
    async fn pending(&self) -> Result<u64, StoreError> {
        guarded!(self, pending())
    }
    async fn ping(&self) -> Result<(), StoreError> {
        guarded!(self, ping())
    }
    async fn watch(&self, wake: Arc<Notify>) -> Result<(), StoreError> {
        guarded!(self, watch(wake))
    }
    async fn insert_workflow(
        &self,
        workflow: &NewWorkflow,
        tasks: &[NewTask],
        nodes: &[WorkflowNode],
    ) -> Result<(Workflow, Vec<Task>), StoreError> {
        guarded!(self, insert_workflow(workflow, tasks, nodes))
    }
    async fn extend_workflow(
        &self,
        workflow_id: Uuid,
        tasks: &[NewTask],
        nodes: &[WorkflowNode],
    ) -> Result<Option<Settled>, StoreError> {
        guarded!(self, extend_workflow(workflow_id, tasks, nodes))
    }
    async fn get_workflow(&self, id: Uuid) -> Result<Option<WorkflowDetail>, StoreError> {
        guarded!(self, get_workflow(id))
    }
    async fn list_workflows(&self, filter: &WorkflowFilter) -> Result<Vec<Workflow>, StoreError> {
        guarded!(self, list_workflows(filter))
    }
    async fn complete_workflow(
        &self,
        owner: &str,
        done: &[Completion],
        start: Option<&StartRequest<'_>>,
    ) -> Result<Settled, StoreError> {
        guarded!(self, complete_workflow(owner, done, start))
    }
    async fn settle_workflow_tasks(&self, ids: &[Uuid]) -> Result<Settled, StoreError> {
        guarded!(self, settle_workflow_tasks(ids))
    }
    async fn cancel_workflow(
        &self,
        id: Uuid,
    ) -> Result<Option<(Workflow, Vec<(Task, bool)>)>, StoreError> {
        guarded!(self, cancel_workflow(id))
    }
    async fn retry_workflow_task(&self, id: Uuid) -> Result<Retried, StoreError> {
        guarded!(self, retry_workflow_task(id))
    }
    async fn parents(
        &self,
        ids: &[Uuid],
    ) -> Result<std::collections::HashMap<Uuid, serde_json::Value>, StoreError> {
        guarded!(self, parents(ids))
    }
    async fn set_progress(&self, id: Uuid, progress: &Progress) -> Result<bool, StoreError> {
        guarded!(self, set_progress(id, progress))
    }
    async fn release_ready(
        &self,
        start: Option<&StartRequest<'_>>,
    ) -> Result<Option<Settled>, StoreError> {
        guarded!(self, release_ready(start))
    }
    fn on_released(&self, hook: crate::store::ReleaseHook) {
        self.inner.on_released(hook)
    }
}

#[async_trait]
impl IdentityStore for Guarded<dyn IdentityStore> {
    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        guarded!(self, create_user(user))
    }
    async fn user_by_id(&self, id: Uuid) -> Result<Option<User>, StoreError> {
        guarded!(self, user_by_id(id))
    }
    async fn user_by_username(&self, username: &str) -> Result<Option<User>, StoreError> {
        guarded!(self, user_by_username(username))
    }
    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        guarded!(self, list_users())
    }
    async fn count_users(&self) -> Result<u64, StoreError> {
        guarded!(self, count_users())
    }
    async fn update_user(
        &self,
        id: Uuid,
        role: Option<Role>,
        disabled: Option<bool>,
        password_hash: Option<&str>,
    ) -> Result<Option<User>, StoreError> {
        guarded!(self, update_user(id, role, disabled, password_hash))
    }
    async fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        guarded!(self, create_api_key(key))
    }
    async fn api_key_by_prefix(&self, prefix: &str) -> Result<Option<ApiKey>, StoreError> {
        guarded!(self, api_key_by_prefix(prefix))
    }
    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        guarded!(self, list_api_keys())
    }
    async fn revoke_api_key(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError> {
        guarded!(self, revoke_api_key(id, at))
    }
    async fn touch_api_key(&self, id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        guarded!(self, touch_api_key(id, at))
    }
    async fn insert_refresh_token(&self, token: &RefreshToken) -> Result<(), StoreError> {
        guarded!(self, insert_refresh_token(token))
    }
    async fn rotate_refresh_token(
        &self,
        token_hash: &str,
        next: &RefreshToken,
        now: DateTime<Utc>,
    ) -> Result<Rotation, StoreError> {
        guarded!(self, rotate_refresh_token(token_hash, next, now))
    }
    async fn refresh_token_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshToken>, StoreError> {
        guarded!(self, refresh_token_by_hash(token_hash))
    }
    async fn revoke_refresh_family(
        &self,
        family_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        guarded!(self, revoke_refresh_family(family_id, at))
    }
    async fn revoke_user_refresh_tokens(
        &self,
        user_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        guarded!(self, revoke_user_refresh_tokens(user_id, at))
    }
    async fn record_revocation(
        &self,
        target: &RevocationTarget,
        not_before: DateTime<Utc>,
    ) -> Result<Revocation, StoreError> {
        guarded!(self, record_revocation(target, not_before))
    }
    async fn revocations_since(&self, since: DateTime<Utc>) -> Result<Vec<Revocation>, StoreError> {
        guarded!(self, revocations_since(since))
    }
    async fn prune_revocations(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        guarded!(self, prune_revocations(before))
    }
    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        guarded!(self, append_audit(event))
    }
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        guarded!(self, list_audit(filter))
    }
    async fn consume_quota(
        &self,
        subject: &str,
        day: NaiveDate,
        amount: u64,
        limit: u64,
    ) -> Result<QuotaUse, StoreError> {
        guarded!(self, consume_quota(subject, day, amount, limit))
    }
}

#[async_trait]
impl MemoryStore for Guarded<dyn MemoryStore> {
    async fn create_conversation(
        &self,
        conversation: &Conversation,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<(), StoreError> {
        guarded!(self, create_conversation(conversation, event))
    }
    async fn conversation(&self, id: Uuid) -> Result<Option<Conversation>, StoreError> {
        guarded!(self, conversation(id))
    }
    async fn list_conversations(
        &self,
        filter: &ConversationFilter,
    ) -> Result<Vec<Conversation>, StoreError> {
        guarded!(self, list_conversations(filter))
    }
    async fn update_conversation(
        &self,
        id: Uuid,
        patch: &ConversationPatch,
        at: DateTime<Utc>,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<Option<Conversation>, StoreError> {
        guarded!(self, update_conversation(id, patch, at, event))
    }
    async fn delete_conversation(
        &self,
        id: Uuid,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<bool, StoreError> {
        guarded!(self, delete_conversation(id, event))
    }
    async fn set_summary(
        &self,
        id: Uuid,
        summary: &Summary,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<Option<Conversation>, StoreError> {
        guarded!(self, set_summary(id, summary, event))
    }
    async fn append_messages(
        &self,
        conversation_id: Uuid,
        messages: &[Message],
        at: DateTime<Utc>,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<bool, StoreError> {
        guarded!(self, append_messages(conversation_id, messages, at, event))
    }
    async fn message(
        &self,
        conversation_id: Uuid,
        id: Uuid,
    ) -> Result<Option<Message>, StoreError> {
        guarded!(self, message(conversation_id, id))
    }
    async fn list_messages(
        &self,
        conversation_id: Uuid,
        page: MessagePage,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        guarded!(self, list_messages(conversation_id, page, limit))
    }
    async fn pinned_messages(
        &self,
        conversation_id: Uuid,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        guarded!(self, pinned_messages(conversation_id, limit))
    }
    async fn update_message(
        &self,
        conversation_id: Uuid,
        id: Uuid,
        patch: &MessagePatch,
        at: DateTime<Utc>,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<Option<Message>, StoreError> {
        guarded!(self, update_message(conversation_id, id, patch, at, event))
    }
    async fn delete_message(
        &self,
        conversation_id: Uuid,
        id: Uuid,
        at: DateTime<Utc>,
        event: Option<ChangeEvent<'_>>,
    ) -> Result<bool, StoreError> {
        guarded!(self, delete_message(conversation_id, id, at, event))
    }
    async fn search(&self, request: &SearchRequest) -> Result<Vec<SearchHit>, StoreError> {
        guarded!(self, search(request))
    }
    async fn archive_idle(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        guarded!(self, archive_idle(before))
    }
    async fn delete_idle(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        guarded!(self, delete_idle(before))
    }
}

#[async_trait]
impl WebhookStore for Guarded<dyn WebhookStore> {
    async fn create_webhook(&self, webhook: &Webhook) -> Result<(), StoreError> {
        guarded!(self, create_webhook(webhook))
    }
    async fn webhook(&self, id: Uuid) -> Result<Option<Webhook>, StoreError> {
        guarded!(self, webhook(id))
    }
    async fn list_webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        guarded!(self, list_webhooks())
    }
    async fn delete_webhook(&self, id: Uuid) -> Result<bool, StoreError> {
        guarded!(self, delete_webhook(id))
    }
    async fn set_webhook_health(
        &self,
        id: Uuid,
        failing_since: Option<DateTime<Utc>>,
        enabled: bool,
    ) -> Result<(), StoreError> {
        guarded!(self, set_webhook_health(id, failing_since, enabled))
    }
    async fn create_delivery(&self, delivery: &WebhookDelivery) -> Result<(), StoreError> {
        guarded!(self, create_delivery(delivery))
    }
    async fn delivery(&self, id: Uuid) -> Result<Option<WebhookDelivery>, StoreError> {
        guarded!(self, delivery(id))
    }
    async fn list_deliveries(
        &self,
        webhook_id: Uuid,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        guarded!(self, list_deliveries(webhook_id, limit))
    }
    async fn record_attempt(&self, id: Uuid, attempt: &Attempt) -> Result<bool, StoreError> {
        guarded!(self, record_attempt(id, attempt))
    }
}

#[async_trait]
impl IntegrationStore for Guarded<dyn IntegrationStore> {
    async fn put_integration(&self, integration: &Integration) -> Result<(), StoreError> {
        guarded!(self, put_integration(integration))
    }
    async fn integration(&self, name: &str) -> Result<Option<Integration>, StoreError> {
        guarded!(self, integration(name))
    }
    async fn list_integrations(&self) -> Result<Vec<Integration>, StoreError> {
        guarded!(self, list_integrations())
    }
    async fn delete_integration(&self, name: &str) -> Result<bool, StoreError> {
        guarded!(self, delete_integration(name))
    }
}

#[async_trait]
impl SettingsStore for Guarded<dyn SettingsStore> {
    async fn list_settings(&self) -> Result<Vec<Stored>, StoreError> {
        guarded!(self, list_settings())
    }
    async fn write_settings(&self, put: &[Stored], remove: &[String]) -> Result<(), StoreError> {
        guarded!(self, write_settings(put, remove))
    }
    async fn list_flags(&self) -> Result<Vec<Stored>, StoreError> {
        guarded!(self, list_flags())
    }
    async fn put_flag(&self, flag: &Stored) -> Result<(), StoreError> {
        guarded!(self, put_flag(flag))
    }
    async fn delete_flag(&self, name: &str) -> Result<bool, StoreError> {
        guarded!(self, delete_flag(name))
    }
}

#[async_trait]
impl WorkerDirectory for Guarded<dyn WorkerDirectory> {
    async fn publish_workers(
        &self,
        node: &str,
        workers: &[WorkerRegistration],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        guarded!(self, publish_workers(node, workers, ttl))
    }
    async fn live_workers(&self) -> Result<Vec<DirectoryEntry>, StoreError> {
        guarded!(self, live_workers())
    }
    async fn served_types(&self, types: &[String]) -> Result<Vec<String>, StoreError> {
        guarded!(self, served_types(types))
    }
    async fn prune_workers(&self) -> Result<u64, StoreError> {
        guarded!(self, prune_workers())
    }
}

#[async_trait]
impl Outbox for Guarded<dyn Outbox> {
    fn record_events(&self, event_types: Vec<String>) {
        self.inner.record_events(event_types)
    }
    fn recorded(&self) -> Arc<Notify> {
        self.inner.recorded()
    }
    async fn claim_outbox(
        &self,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        guarded!(self, claim_outbox(limit, lease))
    }
    async fn delete_outbox(&self, ids: &[i64]) -> Result<u64, StoreError> {
        guarded!(self, delete_outbox(ids))
    }
    async fn outbox_len(&self) -> Result<u64, StoreError> {
        guarded!(self, outbox_len())
    }
}

#[async_trait]
impl FollowupStore for Guarded<dyn FollowupStore> {
    async fn save_followup(&self, followup: &PendingFollowup) -> Result<(), StoreError> {
        guarded!(self, save_followup(followup))
    }
    async fn due_followups(
        &self,
        stale: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PendingFollowup>, StoreError> {
        guarded!(self, due_followups(stale, limit))
    }
    async fn delete_followup(&self, task_id: Uuid) -> Result<bool, StoreError> {
        guarded!(self, delete_followup(task_id))
    }
}

#[async_trait]
impl crate::schedule::ScheduleStore for Guarded<dyn crate::schedule::ScheduleStore> {
    async fn insert_schedule(
        &self,
        schedule: &crate::schedule::Schedule,
    ) -> Result<(), StoreError> {
        guarded!(self, insert_schedule(schedule))
    }
    async fn update_schedule(
        &self,
        schedule: &crate::schedule::Schedule,
    ) -> Result<bool, StoreError> {
        guarded!(self, update_schedule(schedule))
    }
    async fn schedule(&self, name: &str) -> Result<Option<crate::schedule::Schedule>, StoreError> {
        guarded!(self, schedule(name))
    }
    async fn list_schedules(&self) -> Result<Vec<crate::schedule::Schedule>, StoreError> {
        guarded!(self, list_schedules())
    }
    async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        guarded!(self, delete_schedule(name))
    }
    async fn due_schedules(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<crate::schedule::Schedule>, StoreError> {
        guarded!(self, due_schedules(now, limit))
    }
    async fn advance_schedule(
        &self,
        name: &str,
        expected: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
        fired: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        guarded!(self, advance_schedule(name, expected, next, fired))
    }
    async fn next_schedule_at(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        guarded!(self, next_schedule_at())
    }
}

#[async_trait]
impl crate::queues::QueueStore for Guarded<dyn crate::queues::QueueStore> {
    async fn pause_queue(&self, queue: &str) -> Result<bool, StoreError> {
        guarded!(self, pause_queue(queue))
    }
    async fn resume_queue(&self, queue: &str) -> Result<bool, StoreError> {
        guarded!(self, resume_queue(queue))
    }
    async fn paused_queues(&self) -> Result<Vec<String>, StoreError> {
        guarded!(self, paused_queues())
    }
    async fn put_task_limit(&self, limit: &crate::queues::TaskLimit) -> Result<(), StoreError> {
        guarded!(self, put_task_limit(limit))
    }
    async fn task_limits(&self) -> Result<Vec<crate::queues::TaskLimit>, StoreError> {
        guarded!(self, task_limits())
    }
    async fn delete_task_limit(&self, task_type: &str) -> Result<bool, StoreError> {
        guarded!(self, delete_task_limit(task_type))
    }
    async fn put_queue_limit(&self, limit: &crate::queues::QueueLimit) -> Result<(), StoreError> {
        guarded!(self, put_queue_limit(limit))
    }
    async fn queue_limits(&self) -> Result<Vec<crate::queues::QueueLimit>, StoreError> {
        guarded!(self, queue_limits())
    }
    async fn delete_queue_limit(&self, queue: &str) -> Result<bool, StoreError> {
        guarded!(self, delete_queue_limit(queue))
    }
    async fn flow_state(&self) -> Result<crate::queues::FlowState, StoreError> {
        guarded!(self, flow_state())
    }
    async fn refresh_flow(&self) -> Result<bool, StoreError> {
        guarded!(self, refresh_flow())
    }
}
