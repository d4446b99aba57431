//! The worker side of a node: the claim loop, the handler wrapper (timeout, cancellation), the
//! batched completer, lease heartbeats, maintenance, and graceful shutdown.

use super::{Orchestrator, TaskContext};
use crate::backoff;
use crate::store::{ClaimRequest, Completion, Outcome, ShareLimit, StartRequest, StoreError};
use crate::task::{Task, TaskError};
use crate::workflow::Settled;
use chrono::Utc;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};
use uuid::Uuid;

/// First wait before trying the database again after an error; it doubles while the errors go
/// on, up to `STORE_RETRY_MAX`, so an outage is neither hammered nor logged once per attempt and
/// work resumes within a second of the database's return.
const STORE_RETRY_MIN: Duration = Duration::from_millis(100);
const STORE_RETRY_MAX: Duration = Duration::from_secs(1);
/// After the database returns, how long the rescuer waits before treating expired leases as
/// dead nodes' tasks: heartbeats that failed during the outage retry every `STORE_RETRY_MAX` at
/// most, so live nodes renew their leases well within this.
const RENEWAL_GRACE: Duration = Duration::from_secs(3);
/// On shutdown, how long unwritten outcomes may wait for the database at least, even when the
/// grace period is spent (beyond it they are given up: their leases expire, the tasks run again).
const OUTCOME_FLUSH_PATIENCE: Duration = Duration::from_millis(500);
/// Shortest sleep of an idle claim loop while a due task waits (e.g. for its concurrency key).
const DUE_RECHECK: Duration = Duration::from_millis(20);
/// How often outcomes of finished tasks are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Longest the release loop waits for a free slot before writing a released chunk (see
/// `room_to_start`).
const RELEASE_WAIT: Duration = Duration::from_millis(20);
/// How long shutdown waits for the last task events to reach the bus.
const EVENT_FLUSH_PATIENCE: Duration = Duration::from_secs(2);

/// The running background parts of a node; `shutdown` stops them gracefully.
pub struct WorkerHandle {
    orchestrator: Arc<Orchestrator>,
    stop_claiming: CancellationToken,
    stop_all: CancellationToken,
    claim_loop: Option<JoinHandle<()>>,
    remote_loop: Option<JoinHandle<()>>,
    completer: Option<JoinHandle<()>>,
    /// Cancelled when shutdown stops waiting for the database to take the last outcomes.
    abandon_outcomes: CancellationToken,
    background: Vec<JoinHandle<()>>,
}

/// The wait between attempts of one loop while the database fails, and the log of an outage:
/// one warning when it starts, one line when it ends.
pub(super) struct StoreRetry {
    what: &'static str,
    pause: Option<Duration>,
}

impl StoreRetry {
    pub(super) fn new(what: &'static str) -> StoreRetry {
        StoreRetry { what, pause: None }
    }

    /// Records a failure; returns how long to wait before the next attempt.
    pub(super) fn failed(&mut self, error: &StoreError) -> Duration {
        let pause = match self.pause {
            None => {
                warn!(error = %error, "{} failed; retrying with backoff", self.what);
                STORE_RETRY_MIN
            }
            Some(pause) => {
                debug!(error = %error, "{} failed again", self.what);
                (pause * 2).min(STORE_RETRY_MAX)
            }
        };
        self.pause = Some(pause);
        pause
    }

    pub(super) fn succeeded(&mut self) {
        if self.pause.take().is_some() {
            info!("{} works again", self.what);
        }
    }

    pub(super) fn failing(&self) -> Option<Duration> {
        self.pause
    }
}

impl Orchestrator {
    /// Starts claiming (unless concurrency is 0), heartbeats and maintenance.
    pub async fn start(self: &Arc<Self>) -> WorkerHandle {
        let stop_claiming = CancellationToken::new();
        let stop_all = CancellationToken::new();
        // Already running unless the orchestrator was built outside a runtime.
        self.announcer.start();
        if let Err(e) = self.store.watch(self.wake.clone()).await {
            warn!(error = %e, "cannot listen for wake-ups; polling only");
        }
        // Tasks a read made runnable as it wrote them are announced as settling's are.
        let this = Arc::downgrade(self);
        self.store.on_released(Arc::new(move |released| {
            if let Some(this) = this.upgrade() {
                this.announce_settled(Settled {
                    released,
                    ..Settled::default()
                });
            }
        }));
        let mut handle = WorkerHandle {
            orchestrator: self.clone(),
            stop_claiming: stop_claiming.clone(),
            stop_all: stop_all.clone(),
            claim_loop: None,
            remote_loop: None,
            completer: None,
            abandon_outcomes: CancellationToken::new(),
            background: Vec::new(),
        };
        let (tx, rx) = mpsc::channel(self.config.batch_size * 4);
        // Weak: the completer ends once every strong sender (the claim loops', the running
        // tasks') is gone.
        let starts = Starts {
            done: tx.downgrade(),
            stop_claiming: stop_claiming.clone(),
        };
        handle.completer = Some(tokio::spawn(self.clone().completer(
            rx,
            handle.abandon_outcomes.clone(),
            starts.clone(),
        )));
        // External workers may connect to any node, API-only ones too.
        handle.remote_loop = Some(tokio::spawn(
            self.clone().remote_loop(tx.clone(), stop_claiming.clone()),
        ));
        if self.config.concurrency > 0 {
            handle.claim_loop = Some(tokio::spawn(self.clone().claim_loop(tx, stop_claiming)));
        }
        handle
            .background
            .push(tokio::spawn(self.clone().directory_loop(stop_all.clone())));
        handle
            .background
            .push(tokio::spawn(self.clone().heartbeat_loop(stop_all.clone())));
        handle.background.push(tokio::spawn(
            self.clone().release_loop(stop_all.clone(), starts),
        ));
        handle
            .background
            .push(tokio::spawn(self.clone().maintenance_loop(stop_all)));
        handle
    }

    /// Writes the dependents that settling released and left to write after its transaction
    /// (a large fan-out is written in pieces, so its first tasks run while the rest are
    /// written): at once when this node settled them, and every rescue interval whatever any
    /// node left (one that died before writing them).
    async fn release_loop(self: Arc<Self>, stop: CancellationToken, starts: Starts) {
        let mut retry = StoreRetry::new("writing released tasks");
        loop {
            let wait = retry.failing().unwrap_or(self.config.rescue_interval);
            tokio::select! {
                _ = self.releases.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
            loop {
                self.room_to_start(&starts).await;
                let slots = SlotsTaken::new(self.live.slots.clone());
                let slot = || slots.take();
                let start = self.start_request(&starts, &slot);
                match self.store.release_ready(start.as_ref()).await {
                    Ok(Some(mut settled)) => {
                        retry.succeeded();
                        self.run_started(&mut settled, slots, &starts);
                        self.announce_settled(settled);
                    }
                    Ok(None) => {
                        retry.succeeded();
                        break;
                    }
                    Err(e) => {
                        retry.failed(&e);
                        break;
                    }
                }
            }
        }
    }

    async fn claim_loop(self: Arc<Self>, done: mpsc::Sender<Finished>, stop: CancellationToken) {
        let slots = self.live.slots.clone();
        let mut retry = StoreRetry::new("claiming tasks");
        loop {
            let types = self.claimable_types();
            let first = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                _ = stop.cancelled() => return,
            };
            let cap = self.config.share_cap();
            let mut most = self.config.batch_size;
            if cap > 0 {
                // A claim no larger than one share keeps the stores on their fast path while no
                // principal is close to its cap.
                most = most.min(cap as usize);
            }
            // Every slot the claim may fill is held before it: the completer and the release
            // loop take free slots too (for the dependents they start), and a claimed task must
            // not wait for one, as its lease is renewed only once it runs.
            let mut held = first;
            let more = slots.available_permits().min(most.saturating_sub(1));
            if more > 0
                && let Ok(extra) = slots.clone().try_acquire_many_owned(more as u32)
            {
                held.merge(extra);
            }
            let limit = held.num_permits();
            let request = self.claim_request(types.clone(), limit);
            let tasks = match self.store.claim(&request).await {
                Ok(tasks) => {
                    retry.succeeded();
                    tasks
                }
                Err(e) => {
                    let pause = retry.failed(&e);
                    drop(held);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => continue,
                        _ = stop.cancelled() => return,
                    }
                }
            };
            tracing::trace!(claimed = tasks.len(), limit, "claimed");
            // A claim cut short because a principal reached its share left other tasks behind:
            // the next claim skips that principal, so look again at once.
            let mut reached_cap = false;
            let claimed = tasks.len();
            for task in tasks {
                let share = self.hold_share(&task, cap);
                reached_cap |= share.as_ref().is_some_and(|held| held.at_cap);
                // A store returns `limit` tasks at most; one beyond would wait for the rescuer.
                let Some(permit) = held.split(1) else {
                    warn!(task_id = %task.id, "a claim returned more tasks than it asked for");
                    continue;
                };
                self.dispatch(task, permit, share, done.clone());
            }
            drop(held);
            if claimed < limit && !reached_cap {
                self.wait_for_work(&types, &stop).await;
            }
        }
    }

    /// The task types this node claims now: those it has handlers for, but for routes whose
    /// breaker is open and types switched off by a flag (their tasks stay queued, attempts
    /// unspent).
    fn claimable_types(&self) -> Vec<String> {
        self.handlers
            .types()
            .into_iter()
            .filter(|t| self.balancer.admits(t) > 0)
            .filter(|t| !self.is_paused(t))
            .collect()
    }

    /// A claim of at most `limit` tasks of `types` for this node.
    fn claim_request(&self, types: Vec<String>, limit: usize) -> ClaimRequest {
        let cap = self.config.share_cap();
        ClaimRequest {
            owner: self.config.node_id.clone(),
            types,
            limit: limit as u32,
            lease: self.config.lease,
            share: ShareLimit {
                cap,
                running: if cap > 0 {
                    self.lock_shares().clone()
                } else {
                    HashMap::new()
                },
            },
        }
    }

    /// Runs a claimed `task` in a slot of its own (`permit`).
    fn dispatch(
        self: &Arc<Self>,
        task: Task,
        permit: OwnedSemaphorePermit,
        share: Option<ShareHold>,
        done: mpsc::Sender<Finished>,
    ) {
        let span = self.run_span(&task);
        tokio::spawn(self.clone().run(task, permit, share, done).instrument(span));
    }

    /// Whether this node starts the dependents its settlings release: not while it claims
    /// nothing (shutting down, or an API-only node).
    fn starts_here(&self, starts: &Starts) -> bool {
        self.config.concurrency > 0 && !starts.stop_claiming.is_cancelled()
    }

    /// What lets a settling start the released dependents it writes for this node, taking its
    /// free slots through `slot` (see `TaskStore::release_ready`), when it does
    /// ([`Self::starts_here`]).
    fn start_request<'a>(
        &self,
        starts: &Starts,
        slot: &'a (dyn Fn() -> bool + Send + Sync),
    ) -> Option<StartRequest<'a>> {
        if !self.starts_here(starts) {
            return None;
        }
        Some(StartRequest {
            claim: self.claim_request(self.claimable_types(), self.config.concurrency),
            slot,
        })
    }

    /// Waits, for [`RELEASE_WAIT`] at most, until this node has a free slot, so that the
    /// released chunk the release loop writes next starts here (see `start_request`) rather
    /// than being queued for a claim: the release loop writes chunks faster than a node runs
    /// them, and it would otherwise queue the last of a large fan-out for nothing. A node busy
    /// with long tasks delays each chunk by that much at most before writing it queued for any
    /// node.
    async fn room_to_start(&self, starts: &Starts) {
        if self.live.slots.available_permits() > 0 || !self.starts_here(starts) {
            return;
        }
        let _ = tokio::time::timeout(RELEASE_WAIT, self.live.slots.acquire()).await;
    }

    /// Runs the dependents that `settled` started for this node, each in one of the `slots`
    /// taken for them, and leaves the rest of `settled` to announce.
    fn run_started(self: &Arc<Self>, settled: &mut Settled, slots: SlotsTaken, starts: &Starts) {
        let started = std::mem::take(&mut settled.started);
        if started.is_empty() {
            return;
        }
        let Some(done) = starts.done.upgrade() else {
            // The completer is gone (shut down): the leases expire and the rescuer queues
            // them again.
            warn!(
                tasks = started.len(),
                "released tasks were started while shutting down"
            );
            return;
        };
        let mut held = slots.into_permit();
        let cap = self.config.share_cap();
        for task in started {
            let Some(permit) = held.as_mut().and_then(|held| held.split(1)) else {
                warn!(task_id = %task.id, "a released task was started without a slot");
                continue;
            };
            let share = self.hold_share(&task, cap);
            self.dispatch(task, permit, share, done.clone());
            self.started_where_released
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Sleeps until a wake-up, the next scheduled task is due, or the poll interval passes.
    pub(super) async fn wait_for_work(&self, types: &[String], stop: &CancellationToken) {
        let mut wait = self.config.poll_interval;
        match self.store.next_run_at(types).await {
            Ok(Some(at)) => {
                // Already due but not claimed: it just became due, or its concurrency key is
                // saturated. Look again soon, without spinning on the database.
                let until = match (at - Utc::now()).to_std() {
                    Ok(until) if !until.is_zero() => until,
                    _ => DUE_RECHECK,
                };
                wait = wait.min(until);
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "cannot read the next scheduled task"),
        }
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => {}
        }
    }

    /// Counts a task this node's handlers run against its share key, until the hold is dropped.
    fn hold_share(&self, task: &Task, cap: u32) -> Option<ShareHold> {
        let key = task.share_key.as_ref().filter(|_| cap > 0)?;
        let mut shares = self.lock_shares();
        let running = shares.entry(key.clone()).or_insert(0);
        *running += 1;
        Some(ShareHold {
            shares: self.shares.clone(),
            key: key.clone(),
            cap,
            wake: self.wake.clone(),
            at_cap: *running >= cap,
        })
    }

    fn lock_shares(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        lock_shares(&self.shares)
    }

    /// Runs one attempt and hands its outcome to the completer. `share` holds the task's place
    /// in its principal's share of this node until the attempt ends.
    async fn run(
        self: Arc<Self>,
        task: Task,
        permit: OwnedSemaphorePermit,
        share: Option<ShareHold>,
        done: mpsc::Sender<Finished>,
    ) {
        let task = Arc::new(task);
        self.emit("task.started", task.clone());
        let token = CancellationToken::new();
        self.lock_running().insert(task.id, token.clone());
        let timeout = Duration::from_millis(task.timeout_ms);
        let result = match self.handlers.get(&task.task_type) {
            None => Some(Err(crate::HandlerError::permanent(format!(
                "no handler for task type `{}` on this node",
                task.task_type
            )))),
            Some(handler) => {
                let ctx = TaskContext {
                    task: task.clone(),
                    cancel: token.clone(),
                };
                // A panicking handler must not take the node down or leave the task running.
                let reporter: Arc<dyn crate::handler::TaskReporter> =
                    Arc::new(super::flow::Reporter {
                        orchestrator: self.clone(),
                    });
                let attempt = tokio::spawn({
                    let handler = handler.clone();
                    crate::handler::REPORTER
                        .scope(reporter, async move {
                            tokio::time::timeout(timeout, handler.run(ctx)).await
                        })
                        .in_current_span()
                });
                let abort = attempt.abort_handle();
                tokio::select! {
                    joined = attempt => Some(match joined {
                        Ok(Ok(result)) => result,
                        Ok(Err(_)) => Err(crate::HandlerError::retryable(format!(
                            "timed out after {} ms", task.timeout_ms
                        ))),
                        Err(e) if e.is_panic() => Err(crate::HandlerError::retryable(
                            "handler panicked",
                        )),
                        Err(e) => Err(crate::HandlerError::retryable(e.to_string())),
                    }),
                    // Cancelled, lease lost, or released on shutdown: whoever fired the token
                    // already decided the task's state, so record nothing.
                    _ = token.cancelled() => {
                        abort.abort();
                        None
                    }
                }
            }
        };
        self.lock_running().remove(&task.id);
        self.flush_progress(task.id).await;
        let Some(result) = result else {
            return;
        };
        debug!(task_id = %task.id, task_type = %task.task_type, ok = result.is_ok(), "attempt finished");
        if let Some(change) = self.balancer.record(&task.task_type, result.is_ok()) {
            self.emit_breaker(&change);
        }
        self.finish(task, result, done).await;
        drop(share);
        drop(permit);
    }

    /// Turns an attempt's result into an outcome (retry with backoff, or dead) and hands it to
    /// the completer.
    pub(super) async fn finish(
        &self,
        task: Arc<Task>,
        result: Result<serde_json::Value, crate::HandlerError>,
        done: mpsc::Sender<Finished>,
    ) {
        let outcome = match result {
            Ok(value) => Outcome::Succeeded(value),
            Err(e) => {
                let error = TaskError {
                    message: e.message,
                    attempt: task.attempts,
                    details: e.details,
                };
                if let Some(after) = e.retry_after {
                    Outcome::Deferred {
                        error,
                        retry_at: Utc::now()
                            + chrono::Duration::from_std(after).unwrap_or(chrono::Duration::zero()),
                    }
                } else if e.retryable && task.attempts < task.max_attempts {
                    let delay = backoff::delay(task.backoff, task.attempts);
                    Outcome::Retry {
                        error,
                        retry_at: Utc::now()
                            + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero()),
                    }
                } else {
                    Outcome::Dead(error)
                }
            }
        };
        // The completer lives until every sender is gone, so this only fails if it crashed; the
        // lease then expires and the rescuer runs the task again.
        let _ = done
            .send(Finished {
                completion: Completion {
                    id: task.id,
                    outcome,
                },
                task,
            })
            .await;
    }

    /// Writes outcomes in batches: whatever finished while the last write was in flight goes
    /// into the next one, so batches grow with load and a lone task is written at once.
    /// While the database is away the outcomes wait (with backoff) and are written once it is
    /// back; `abandon` (shutdown out of patience) gives them up: their leases expire and the
    /// rescuer runs those tasks again (at least once).
    async fn completer(
        self: Arc<Self>,
        mut done: mpsc::Receiver<Finished>,
        abandon: CancellationToken,
        starts: Starts,
    ) {
        let capacity = self.config.batch_size;
        let mut retry = StoreRetry::new("recording outcomes");
        let (mut batch, mut tasks) = (Vec::with_capacity(capacity), Vec::with_capacity(capacity));
        while let Some(first) = done.recv().await {
            let mut next = Some(first);
            while let Some(finished) = next.take() {
                batch.push(finished.completion);
                tasks.push(finished.task);
                if batch.len() < capacity {
                    next = done.try_recv().ok();
                }
            }
            loop {
                match self.record(&batch, &tasks, &starts).await {
                    Ok(changed) => {
                        retry.succeeded();
                        tracing::trace!(tasks = batch.len(), "recorded outcomes");
                        self.recorded
                            .fetch_add(changed.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        let changed: std::collections::HashSet<Uuid> =
                            changed.into_iter().collect();
                        let mut frees_key = false;
                        let at = Utc::now();
                        for (completion, task) in batch.drain(..).zip(tasks.drain(..)) {
                            if changed.contains(&completion.id) {
                                frees_key |= task.concurrency_key.is_some();
                                self.emit_outcome(task, completion.outcome, at);
                            }
                        }
                        if frees_key {
                            self.wake.notify_one();
                        }
                        break;
                    }
                    Err(e) => {
                        let pause = retry.failed(&e);
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = abandon.cancelled() => {
                                done.close();
                                let mut lost = batch.len();
                                while done.try_recv().is_ok() {
                                    lost += 1;
                                }
                                warn!(
                                    tasks = lost,
                                    "shutting down without recording these outcomes: the \
                                     database is away; their leases will expire and the tasks \
                                     will run again"
                                );
                                return;
                            }
                        }
                    }
                }
            }
            batch.clear();
            tasks.clear();
        }
    }

    /// Records a batch of outcomes: those of workflow tasks through `complete_workflow`, which
    /// settles their dependents in the same transaction (then announced here), the others
    /// through `complete`; the dependents they release start here when slots are free. Returns
    /// the ids recorded.
    async fn record(
        self: &Arc<Self>,
        batch: &[Completion],
        tasks: &[Arc<Task>],
        starts: &Starts,
    ) -> Result<Vec<Uuid>, StoreError> {
        let node = &self.config.node_id;
        if tasks.iter().all(|t| t.workflow_id.is_none()) {
            return self.store.complete(node, batch).await;
        }
        let (flow, plain): (Vec<_>, Vec<_>) = batch
            .iter()
            .zip(tasks)
            .partition(|(_, task)| task.workflow_id.is_some());
        let plain: Vec<Completion> = plain.into_iter().map(|(c, _)| c.clone()).collect();
        let flow: Vec<Completion> = flow.into_iter().map(|(c, _)| c.clone()).collect();
        // Plain ones first: a failure after them writes them again, which changes nothing.
        let mut changed = self.store.complete(node, &plain).await?;
        let slots = SlotsTaken::new(self.live.slots.clone());
        let slot = || slots.take();
        let start = self.start_request(starts, &slot);
        let mut settled = self
            .store
            .complete_workflow(node, &flow, start.as_ref())
            .await?;
        changed.extend(settled.changed.iter().copied());
        self.run_started(&mut settled, slots, starts);
        self.announce_settled(settled);
        Ok(changed)
    }

    async fn heartbeat_loop(self: Arc<Self>, stop: CancellationToken) {
        let every = self.config.lease / 3;
        let mut retry = StoreRetry::new("renewing leases");
        loop {
            // After a failed renewal, try again soon: leases run out while the database is away.
            let wait = retry.failing().map_or(every, |pause| pause.min(every));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
            let ids = self.running_ids();
            if ids.is_empty() {
                continue;
            }
            match self
                .store
                .heartbeat(&self.config.node_id, &ids, self.config.lease)
                .await
            {
                Ok(held) => {
                    retry.succeeded();
                    let held: std::collections::HashSet<_> = held.into_iter().collect();
                    let running = self.lock_running();
                    for id in ids.iter().filter(|id| !held.contains(id)) {
                        // Cancelled elsewhere or rescued after a stall: stop working on it.
                        if let Some(token) = running.get(id) {
                            token.cancel();
                        }
                    }
                }
                Err(e) => {
                    retry.failed(&e);
                }
            }
        }
    }

    async fn maintenance_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut last_prune: Option<tokio::time::Instant> = None;
        let mut retry = StoreRetry::new("rescuing expired leases");
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.rescue_interval) => {}
                _ = stop.cancelled() => return,
            }
            if self.database_recovering() {
                debug!("the database is down or just back: rescue waits for lease renewals");
                continue;
            }
            match self.store.rescue().await {
                Ok(rescued) => {
                    retry.succeeded();
                    if !rescued.is_empty() {
                        info!(count = rescued.len(), "rescued tasks whose lease expired");
                        let dead: Vec<Uuid> = rescued
                            .iter()
                            .filter(|t| t.workflow_id.is_some() && t.status.is_final())
                            .map(|t| t.id)
                            .collect();
                        self.settle(dead).await;
                        for task in rescued {
                            self.emit(event_for(&task), task);
                        }
                        self.wake.notify_one();
                    }
                }
                Err(e) => {
                    // It runs at its interval anyway; only the log needs taming.
                    retry.failed(&e);
                    continue;
                }
            }
            if let Some(retention) = self.config.retention
                && last_prune.is_none_or(|at| at.elapsed() >= PRUNE_INTERVAL)
            {
                last_prune = Some(tokio::time::Instant::now());
                let before = Utc::now()
                    - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
                match self.store.prune(before).await {
                    Ok(0) => {}
                    Ok(n) => info!(count = n, "pruned finished tasks"),
                    Err(e) => warn!(error = %e, "prune failed"),
                }
            }
        }
    }
}

impl Orchestrator {
    /// Whether the health monitor holds the database down, or saw it come back less than
    /// `RENEWAL_GRACE` ago.
    fn database_recovering(&self) -> bool {
        let Some(health) = self.database.get().and_then(|d| d.health()) else {
            return false;
        };
        let grace = chrono::Duration::from_std(RENEWAL_GRACE).unwrap_or(chrono::Duration::MAX);
        health.state == crate::health::HealthState::Down || Utc::now() - health.since < grace
    }

    /// Announces tasks this node gave back unfinished (requeued without spending the attempt), as
    /// the store now holds them.
    pub(super) async fn announce_released(&self, ids: &[Uuid]) {
        for id in ids {
            match self.store.get(*id).await {
                Ok(Some(task)) if task.status == crate::TaskStatus::Queued => {
                    self.emit(event_for(&task), task);
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, task_id = %id, "cannot read a released task"),
            }
        }
    }
}

/// One running task counted against its share key on this node; dropping it (the attempt ended,
/// however) gives the place back.
pub(super) struct ShareHold {
    shares: Arc<Mutex<HashMap<String, u32>>>,
    key: String,
    cap: u32,
    /// The claim loop's: the key's waiting tasks may start again once it drops below its cap.
    wake: Arc<tokio::sync::Notify>,
    /// The key reached its cap with this task.
    at_cap: bool,
}

impl Drop for ShareHold {
    fn drop(&mut self) {
        let mut shares = lock_shares(&self.shares);
        if let Some(running) = shares.get_mut(&self.key) {
            if *running >= self.cap {
                self.wake.notify_one();
            }
            *running = running.saturating_sub(1);
            if *running == 0 {
                shares.remove(&self.key);
            }
        }
    }
}

fn lock_shares(
    shares: &Mutex<HashMap<String, u32>>,
) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
    // Single increments and decrements: a poisoned lock still holds consistent counts.
    shares.lock().unwrap_or_else(|e| e.into_inner())
}

/// What lets the completer and the release loop run the released dependents they start (see
/// `TaskStore::release_ready`): the completer's queue, for their outcomes, and whether this node
/// still claims.
#[derive(Clone)]
pub(super) struct Starts {
    done: mpsc::WeakSender<Finished>,
    stop_claiming: CancellationToken,
}

/// This node's slots taken for released dependents as a settling starts them (see
/// `StartRequest::slot`); freed when dropped unless handed to the tasks.
struct SlotsTaken {
    slots: Arc<tokio::sync::Semaphore>,
    held: Mutex<Option<OwnedSemaphorePermit>>,
}

impl SlotsTaken {
    fn new(slots: Arc<tokio::sync::Semaphore>) -> SlotsTaken {
        SlotsTaken {
            slots,
            held: Mutex::new(None),
        }
    }

    /// Takes one free slot, if there is one.
    fn take(&self) -> bool {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            return false;
        };
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match held.as_mut() {
            Some(held) => held.merge(permit),
            None => *held = Some(permit),
        }
        true
    }

    fn into_permit(self) -> Option<OwnedSemaphorePermit> {
        self.held.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

/// A finished attempt on its way to the completer, with the task it belongs to.
pub(super) struct Finished {
    completion: Completion,
    task: Arc<Task>,
}

fn event_for(task: &Task) -> &'static str {
    match task.status {
        crate::TaskStatus::Succeeded => "task.succeeded",
        crate::TaskStatus::Failed => "task.failed",
        crate::TaskStatus::Dead => "task.dead",
        crate::TaskStatus::Cancelled => "task.cancelled",
        crate::TaskStatus::Running => "task.started",
        crate::TaskStatus::Queued | crate::TaskStatus::Scheduled => "task.retrying",
        crate::TaskStatus::Waiting => "task.waiting",
    }
}

impl WorkerHandle {
    /// Cancelled, it stops claiming new tasks (for this node's handlers and its external
    /// workers) while running ones go on: the node cancels it once it stops accepting
    /// connections, before `shutdown` waits for the running tasks.
    pub fn claiming(&self) -> CancellationToken {
        self.stop_claiming.clone()
    }

    /// Stops claiming, lets running tasks finish for the grace period, releases the leases of
    /// the rest so another node picks them up at once, and flushes every recorded outcome.
    pub async fn shutdown(mut self) {
        let orchestrator = self.orchestrator.clone();
        self.stop_claiming.cancel();
        for claim_loop in [self.claim_loop.take(), self.remote_loop.take()]
            .into_iter()
            .flatten()
        {
            let _ = claim_loop.await;
        }
        let deadline = tokio::time::Instant::now() + orchestrator.config.shutdown_grace;
        while !orchestrator.lock_running().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let leftover: Vec<_> = {
            let running = orchestrator.lock_running();
            running.values().for_each(CancellationToken::cancel);
            running.keys().copied().collect()
        };
        if !leftover.is_empty() {
            match orchestrator
                .store
                .release(&orchestrator.config.node_id, &leftover)
                .await
            {
                Ok(n) => {
                    info!(count = n, "released the leases of unfinished tasks");
                    orchestrator.announce_released(&leftover).await;
                }
                Err(e) => warn!(error = %e, "could not release leases; they will expire"),
            }
        }
        if let Some(mut completer) = self.completer.take() {
            // Ends once the last handler wrapper has dropped its sender and every outcome is
            // written; while the database is away it waits out the grace period at most.
            let patience = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .max(OUTCOME_FLUSH_PATIENCE);
            if tokio::time::timeout(patience, &mut completer)
                .await
                .is_err()
            {
                self.abandon_outcomes.cancel();
                let _ = completer.await;
            }
        }
        self.stop_all.cancel();
        for task in self.background.drain(..) {
            let _ = task.await;
        }
        orchestrator.announcer.flush(EVENT_FLUSH_PATIENCE).await;
    }
}
