//! Task events: every transition goes into a bounded queue that one background publisher drains
//! in batches onto the event bus (channels `tasks` and `task:{id}`), so claiming and completing
//! never wait for the bus. When the queue is full the event is dropped, counted and logged rather
//! than slowing the workers: an event announces a change, the task row stays the truth, and a
//! subscriber that misses one resyncs through REST.
//!
//! Making an event (the task as JSON) costs more than running a trivial task, and most
//! `task:{id}` channels are never looked at, so the publisher asks the bus which channels are
//! observed (`EventBus::observed`) and makes and publishes events only for those.

use crate::events::{Event, EventBus};
use crate::store::Outcome;
use crate::task::Task;
use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::warn;

/// Most transitions published in one batch (two events each).
const PUBLISH_BATCH: usize = 256;
/// The channel of every task's transitions; each task also has `task:{id}`.
const TASKS: &str = "tasks";

/// A transition on its way to the bus.
pub(super) struct Announcement {
    pub event: &'static str,
    /// The task after the transition, or, with `outcome`, as it was claimed: the publisher applies
    /// the outcome off the completer's path.
    pub task: Arc<Task>,
    pub outcome: Option<Outcome>,
    pub at: DateTime<Utc>,
}

pub(super) struct Announcer {
    queue: mpsc::Sender<Announcement>,
    /// Taken by the publisher when it starts (at construction, or at `start` if there was no
    /// runtime then).
    waiting: Mutex<Option<mpsc::Receiver<Announcement>>>,
    bus: Arc<dyn EventBus>,
    dropped: AtomicU64,
    /// Transitions queued or being published.
    pending: Arc<AtomicU64>,
}

impl Announcer {
    pub fn new(bus: Arc<dyn EventBus>, capacity: usize) -> Announcer {
        let (queue, waiting) = mpsc::channel(capacity.max(1));
        let announcer = Announcer {
            queue,
            waiting: Mutex::new(Some(waiting)),
            bus,
            dropped: AtomicU64::new(0),
            pending: Arc::new(AtomicU64::new(0)),
        };
        announcer.start();
        announcer
    }

    pub fn bus(&self) -> &Arc<dyn EventBus> {
        &self.bus
    }

    /// Starts the publisher if it is not running and a Tokio runtime is at hand.
    pub fn start(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(receiver) = waiting {
            runtime.spawn(publish(self.bus.clone(), receiver, self.pending.clone()));
        }
    }

    /// Queues a transition without ever waiting.
    pub fn announce(&self, announcement: Announcement) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        if self.queue.try_send(announcement).is_err() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // 1, 2, 4, 8, …: a flood of drops makes a handful of lines.
            if dropped.is_power_of_two() {
                warn!(
                    dropped,
                    "task event queue full: events dropped (the tasks themselves are unaffected)"
                );
            }
        }
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until everything queued so far is published, for at most `patience`.
    pub async fn flush(&self, patience: Duration) {
        let deadline = tokio::time::Instant::now() + patience;
        while self.pending.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The publisher: takes what is queued (up to a batch), turns each transition into one event
/// published on `tasks` and on `task:{id}` (those of them that are observed), in order.
async fn publish(
    bus: Arc<dyn EventBus>,
    mut queue: mpsc::Receiver<Announcement>,
    pending: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    let mut failures: u64 = 0;
    while queue.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let count = batch.len() as u64;
        if let Err(e) = publish_batch(bus.as_ref(), &mut batch).await {
            failures += 1;
            if failures.is_power_of_two() {
                warn!(error = %e, failures, "cannot publish task events; they are dropped");
            }
        }
        batch.clear();
        pending.fetch_sub(count, Ordering::Relaxed);
    }
}

async fn publish_batch(
    bus: &dyn EventBus,
    batch: &mut Vec<Announcement>,
) -> Result<(), crate::events::BusError> {
    // `tasks` first, then each transition's `task:{id}`.
    let mut channels = Vec::with_capacity(batch.len() + 1);
    channels.push(TASKS.to_owned());
    channels.extend(batch.iter().map(|a| format!("task:{}", a.task.id)));
    let observed = bus.observed(&channels).await?;
    let observed = |i: usize| observed.get(i).copied().unwrap_or(true);
    let mut events = Vec::with_capacity(batch.len() * 2);
    for (i, (announcement, channel)) in batch.drain(..).zip(channels.drain(1..)).enumerate() {
        let (on_tasks, on_task) = (observed(0), observed(i + 1));
        if !on_tasks && !on_task {
            continue;
        }
        let event = task_event(announcement);
        if on_tasks {
            events.push((TASKS.to_owned(), event.clone()));
        }
        if on_task {
            events.push((channel, event));
        }
    }
    if !events.is_empty() {
        bus.publish_batch(&events).await?;
    }
    Ok(())
}

fn task_event(announcement: Announcement) -> Arc<Event> {
    let Announcement {
        event,
        task,
        outcome,
        at,
    } = announcement;
    let task = match outcome {
        Some(outcome) => Arc::new(settled(Arc::unwrap_or_clone(task), outcome, at)),
        None => task,
    };
    Arc::new(Event {
        event_type: event.to_owned(),
        data: crate::events::EventData::text_of(&*task),
        correlation_id: task.correlation_id.clone(),
        at,
    })
}

/// A claimed task as the store records `outcome` (see `TaskStore::complete`).
pub(super) fn settled(mut task: Task, outcome: Outcome, at: DateTime<Utc>) -> Task {
    task.status = outcome.status();
    match outcome {
        Outcome::Succeeded(result) => {
            task.result = (!result.is_null()).then_some(result);
            task.error = None;
            task.finished_at = Some(at);
        }
        Outcome::Retry { error, retry_at } => {
            task.result = None;
            task.error = Some(error);
            task.run_at = retry_at;
            task.finished_at = None;
        }
        Outcome::Dead(error) => {
            task.result = None;
            task.error = Some(error);
            task.finished_at = Some(at);
        }
        Outcome::Deferred { error, retry_at } => {
            task.result = None;
            task.error = Some(error);
            task.run_at = retry_at;
            task.attempts -= 1;
            task.finished_at = None;
        }
    }
    task
}
