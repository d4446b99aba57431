//! What both stores share around workflows: a deferred task as stored, which deferred chunks a
//! settling writes, how the dependencies that just settled turn into dependents released or
//! cancelled, and how a dependency's outcome is handed to a dependent.

use crate::codec::{instant, micros};
use crate::error::corrupt;
use crate::flow::FlowView;
use crate::tasks::inserted_task;
use chrono::{DateTime, Utc};
use mcp_core::store::StartRequest;
use mcp_core::task::Backoff;
use mcp_core::workflow::{OnFailure, WorkflowNode, WorkflowStatus};
use mcp_core::{NewTask, StoreError, Task, TaskStatus};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

/// The message of a task cancelled because a dependency failed. Its error's
/// `details.cancelled_by` names that dependency: what a retry of it looks for to revive it.
pub(crate) const CANCELLED_BY_DEPENDENCY: &str =
    "cancelled: a dependency ended dead or cancelled (on_failure: cancel_dependents)";

/// Given the dependencies settled now (`(dependent, dependency)` edges) and each dependency's
/// final status and workflow policy: how many of each dependent's dependencies settled in its
/// favour (it runs once none is left), and the dependents to cancel (with theirs), each with
/// the failed dependency that cancels it.
pub(crate) fn apply(
    edges: &[(Uuid, Uuid)],
    parents: &HashMap<Uuid, (TaskStatus, OnFailure)>,
) -> (HashMap<Uuid, i64>, Vec<(Uuid, Uuid)>) {
    let mut settled: HashMap<Uuid, i64> = HashMap::new();
    let mut cancel = Vec::new();
    for (child, parent) in edges {
        match parents.get(parent) {
            Some((TaskStatus::Succeeded, _)) | Some((_, OnFailure::Continue)) => {
                *settled.entry(*child).or_insert(0) += 1
            }
            _ => cancel.push((*child, *parent)),
        }
    }
    cancel.sort_unstable();
    cancel.dedup_by_key(|(child, _)| *child);
    (settled, cancel)
}

/// Most deferred tasks in one chunk (one row of JSON), and most dependencies of its tasks
/// (see [`chunked`]).
const DEFERRED_CHUNK: usize = 1_000;
/// Most tasks in a workflow's first chunk: the one a settling that reaches it writes in its
/// own transaction (a fan-out's root's completion), before anything of the fan can run; a
/// worker's claim takes 500 at most (`OrchestratorConfig::batch_size`'s default), and the
/// chunks after are written while those run.
const FIRST_CHUNK: usize = 500;

/// A new workflow's deferred tasks in chunks of at most [`DEFERRED_CHUNK`] tasks (the first
/// [`FIRST_CHUNK`]) that wait for at most [`DEFERRED_CHUNK`] dependencies in all, unless one
/// task alone waits for more: a task that waits for many (a fan-in) is kept apart from the
/// tasks beside it, so the settling of one of its dependencies writes it alone, and the
/// settling that releases those tasks leaves it deferred.
pub(crate) fn chunked<'s, 'a>(deferred: &'s [DeferredTask<'a>]) -> Vec<&'s [DeferredTask<'a>]> {
    let mut chunks = Vec::new();
    let (mut start, mut waits) = (0, 0);
    for (i, task) in deferred.iter().enumerate() {
        let its = task.depends_on.len();
        let most = if chunks.is_empty() {
            FIRST_CHUNK
        } else {
            DEFERRED_CHUNK
        };
        if i > start && (i - start == most || waits + its > DEFERRED_CHUNK) {
            chunks.push(&deferred[start..i]);
            (start, waits) = (i, 0);
        }
        waits += its;
    }
    if start < deferred.len() {
        chunks.push(&deferred[start..]);
    }
    chunks
}

/// What a settling does with the deferred chunks it reached: it writes the first of each
/// workflow (`take`), marks released the others that were not (`release`; those released before
/// stay so), and its rows count as satisfied what [`Satisfied`] says. The others stay for
/// `release_ready`: their tasks (`left`) are not rows yet.
pub(crate) struct Reached<W> {
    pub(crate) take: Vec<(W, i32)>,
    pub(crate) release: Vec<(W, i32)>,
    pub(crate) satisfied: Satisfied<W>,
    pub(crate) left: HashSet<Uuid>,
}

/// Decides [`Reached`] from the chunks holding a dependent of the tasks `settling` (`found`:
/// workflow, seq, whether no settling reached it before, and its tasks' ids, in any order).
pub(crate) fn reached<W: Ord + Clone + std::hash::Hash>(
    found: Vec<(W, i32, bool, Vec<Uuid>)>,
    settling: &[Uuid],
) -> Reached<W> {
    let hit: Vec<(W, i32, bool)> = found
        .iter()
        .map(|(workflow, seq, fresh, _)| (workflow.clone(), *seq, *fresh))
        .collect();
    let first = first_of_each(&hit);
    let release = hit
        .iter()
        .filter(|(workflow, seq, fresh)| *fresh && first[workflow].0 != *seq)
        .map(|(workflow, seq, _)| (workflow.clone(), *seq))
        .collect();
    let fresh = first
        .iter()
        .filter(|(_, (_, fresh))| *fresh)
        .map(|(workflow, _)| workflow.clone())
        .collect();
    let take: Vec<(W, i32)> = first.into_iter().map(|(w, (seq, _))| (w, seq)).collect();
    let left = found
        .into_iter()
        .filter(|(workflow, seq, _, _)| !take.iter().any(|(w, s)| w == workflow && s == seq))
        .flat_map(|(_, _, _, ids)| ids)
        .collect();
    Reached {
        take,
        release,
        satisfied: Satisfied::Now {
            fresh,
            settling: settling.iter().copied().collect(),
        },
        left,
    }
}

/// Of the chunks a settling reached (`(workflow, seq, …)`, in any order), the first of each
/// workflow: the one it writes.
fn first_of_each<W: Ord + Clone, T: Clone>(hit: &[(W, i32, T)]) -> BTreeMap<W, (i32, T)> {
    let mut first: BTreeMap<W, (i32, T)> = BTreeMap::new();
    for (workflow, seq, extra) in hit {
        let at = first
            .entry(workflow.clone())
            .or_insert((*seq, extra.clone()));
        if *seq < at.0 {
            *at = (*seq, extra.clone());
        }
    }
    first
}

/// A workflow task kept out of `tasks` until one of its dependencies settles or something reads
/// it: everything its row will hold. Its `run_at` is resolved when the workflow is stored (its
/// creation time when none was given), so the row written later says what the workflow's
/// creation said. Stored, it borrows from the new task (nothing is copied to write its JSON);
/// read back, it owns its parts.
#[derive(Serialize, Deserialize)]
pub(crate) struct DeferredTask<'a> {
    id: Uuid,
    #[serde(rename = "type")]
    task_type: Cow<'a, str>,
    queue: Cow<'a, str>,
    priority: i32,
    payload: Cow<'a, Value>,
    max_attempts: i32,
    backoff: Backoff,
    run_at: DateTime<Utc>,
    timeout_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    concurrency_key: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    concurrency_limit: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    correlation_id: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_by: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    share_key: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<Cow<'a, str>>,
    key: Cow<'a, str>,
    depends_on: Cow<'a, [Uuid]>,
    #[serde(default, skip_serializing_if = "<[Uuid]>::is_empty")]
    dependents: Cow<'a, [Uuid]>,
}

/// A string of a deferred task, borrowed.
fn borrowed(text: &Option<String>) -> Option<Cow<'_, str>> {
    text.as_deref().map(Cow::Borrowed)
}

/// A string of a deferred task read back, owned.
fn owned(text: Option<Cow<'_, str>>) -> Option<String> {
    text.map(Cow::into_owned)
}

impl<'a> DeferredTask<'a> {
    /// `task` at its place `node`, with its `dependents`, run at `now` unless it says when.
    pub(crate) fn new(
        task: &'a NewTask,
        node: &'a WorkflowNode,
        dependents: &'a [Uuid],
        now: DateTime<Utc>,
    ) -> DeferredTask<'a> {
        DeferredTask {
            id: task.id,
            task_type: Cow::Borrowed(&task.task_type),
            queue: Cow::Borrowed(&task.queue),
            priority: task.priority,
            payload: Cow::Borrowed(&task.payload),
            max_attempts: task.max_attempts,
            backoff: task.backoff,
            // As PostgreSQL stores it (microseconds), so the task the workflow's creation
            // returns is the row written later.
            run_at: task
                .run_at
                .map(|at| instant(micros(at)).unwrap_or(at))
                .unwrap_or(now),
            timeout_ms: task.timeout_ms,
            idempotency_key: borrowed(&task.idempotency_key),
            concurrency_key: borrowed(&task.concurrency_key),
            concurrency_limit: task.concurrency_limit,
            correlation_id: borrowed(&task.correlation_id),
            created_by: borrowed(&task.created_by),
            share_key: borrowed(&task.share_key),
            traceparent: borrowed(&task.traceparent),
            key: Cow::Borrowed(&node.key),
            depends_on: Cow::Borrowed(&node.depends_on),
            dependents: Cow::Borrowed(dependents),
        }
    }

    /// The task, its place and its dependents, as inserting it takes them.
    pub(crate) fn into_parts(self) -> (NewTask, WorkflowNode, Vec<Uuid>) {
        let task = NewTask {
            id: self.id,
            task_type: self.task_type.into_owned(),
            queue: self.queue.into_owned(),
            priority: self.priority,
            payload: self.payload.into_owned(),
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            run_at: Some(self.run_at),
            timeout_ms: self.timeout_ms,
            idempotency_key: owned(self.idempotency_key),
            concurrency_key: owned(self.concurrency_key),
            concurrency_limit: self.concurrency_limit,
            correlation_id: owned(self.correlation_id),
            created_by: owned(self.created_by),
            share_key: owned(self.share_key),
            traceparent: owned(self.traceparent),
        };
        let node = WorkflowNode {
            key: self.key.into_owned(),
            depends_on: self.depends_on.into_owned(),
        };
        (task, node, self.dependents.into_owned())
    }
}

/// A deferred chunk's tasks as stored: their JSON compressed with LZ4 (its length first). A
/// chunk's JSON repeats the same field names, values and id prefixes (1,000 tasks of the
/// fan-out in `bench workflows`: 345 kB, 19 kB packed): packed here, it crosses to the
/// database and back, and is written there, at a fraction of its size, and neither store
/// compresses it again.
pub(crate) fn pack(chunk: &[DeferredTask<'_>]) -> Result<Vec<u8>, StoreError> {
    let json = serde_json::to_vec(chunk).map_err(corrupt)?;
    Ok(lz4_flex::compress_prepend_size(&json))
}

/// A deferred chunk's tasks read back: from `packed` ([`pack`]), or from `text`, the JSON of a
/// chunk stored uncompressed by an earlier version.
pub(crate) fn unpack(
    packed: Option<&[u8]>,
    text: Option<&str>,
) -> Result<Vec<DeferredTask<'static>>, StoreError> {
    match (packed, text) {
        (Some(packed), _) => {
            let json = lz4_flex::decompress_size_prepended(packed).map_err(corrupt)?;
            serde_json::from_slice(&json).map_err(corrupt)
        }
        (None, Some(text)) => serde_json::from_str(text).map_err(corrupt),
        (None, None) => Err(corrupt("a deferred chunk holds no tasks")),
    }
}

/// Deferred tasks taken from their chunks, to be written as rows: the tasks, their places and
/// their dependents, in their order.
pub(crate) struct Taken {
    pub(crate) new: Vec<NewTask>,
    pub(crate) nodes: Vec<WorkflowNode>,
    pub(crate) dependents: Vec<Vec<Uuid>>,
}

/// Deferred chunks taken to be written (`(workflow, its creation time, its policy, packed
/// tasks, tasks as JSON)`, see [`unpack`]), by workflow: its creation time, its policy and the
/// tasks of all its chunks, in their order.
pub(crate) fn taken_by_workflow<'t, W: Ord, C>(
    chunks: impl IntoIterator<Item = (W, C, &'t str, Option<&'t [u8]>, Option<&'t str>)>,
) -> Result<BTreeMap<W, (C, OnFailure, Taken)>, StoreError> {
    let mut by_workflow: BTreeMap<W, (C, &str, Vec<DeferredTask>)> = BTreeMap::new();
    for (workflow, created, policy, packed, text) in chunks {
        let chunk = unpack(packed, text)?;
        by_workflow
            .entry(workflow)
            .or_insert_with(|| (created, policy, Vec::new()))
            .2
            .extend(chunk);
    }
    by_workflow
        .into_iter()
        .map(|(workflow, (created, policy, deferred))| {
            let policy = policy.parse::<OnFailure>().map_err(corrupt)?;
            Ok((workflow, (created, policy, Taken::of(deferred))))
        })
        .collect()
}

impl Taken {
    pub(crate) fn of(deferred: Vec<DeferredTask<'_>>) -> Taken {
        let mut taken = Taken {
            new: Vec::with_capacity(deferred.len()),
            nodes: Vec::with_capacity(deferred.len()),
            dependents: Vec::with_capacity(deferred.len()),
        };
        for task in deferred {
            let (task, node, dependents) = task.into_parts();
            taken.new.push(task);
            taken.nodes.push(node);
            taken.dependents.push(dependents);
        }
        taken
    }

    /// How many of its dependencies each task still waits for, given those `satisfied`.
    pub(crate) fn waiting(&self, satisfied: &HashSet<Uuid>) -> Vec<i32> {
        self.nodes
            .iter()
            .map(|n| still_waiting(&n.depends_on, satisfied))
            .collect()
    }

    /// Each task's dependents.
    pub(crate) fn dependents(&self) -> Vec<&[Uuid]> {
        self.dependents.iter().map(Vec::as_slice).collect()
    }
}

/// Which released dependents being written as rows start at once for the node writing them
/// (`TaskStore::release_ready`): those its claim would take now that no flow control concerns
/// (`flow`: no paused or limited queue, no limited type; no concurrency key; no share key while
/// shares are capped) and that are due, each taking one of its free slots, up to the claim's
/// limit. Anything else is written queued, for a claim to decide.
pub(crate) struct Starter<'a> {
    request: &'a StartRequest<'a>,
    flow: &'a FlowView,
    left: u32,
    now: DateTime<Utc>,
}

/// The flow-control view a settling needs to start what it releases (`view`, a store's cached
/// one, read only when it may start some: with `start`).
pub(crate) async fn flow_for(
    start: Option<&StartRequest<'_>>,
    view: impl Future<Output = Result<std::sync::Arc<FlowView>, StoreError>>,
) -> Result<Option<std::sync::Arc<FlowView>>, StoreError> {
    Ok(match start {
        Some(_) => Some(view.await?),
        None => None,
    })
}

impl<'a> Starter<'a> {
    /// A starter for `start` under `flow` ([`flow_for`]), when there is one.
    pub(crate) fn of(
        start: Option<&'a StartRequest<'a>>,
        flow: Option<&'a FlowView>,
    ) -> Option<Starter<'a>> {
        start
            .zip(flow)
            .map(|(start, flow)| Starter::new(start, flow))
    }

    pub(crate) fn new(request: &'a StartRequest<'a>, flow: &'a FlowView) -> Starter<'a> {
        Starter {
            request,
            flow,
            left: request.claim.limit,
            now: Utc::now(),
        }
    }

    /// Whether `task`, runnable and due at `run_at`, starts now: it took one of the slots.
    pub(crate) fn takes(&mut self, task: &NewTask, run_at: DateTime<Utc>) -> bool {
        let claim = &self.request.claim;
        let qualifies = self.left > 0
            && run_at <= self.now
            && task.concurrency_key.is_none()
            && (task.share_key.is_none() || claim.share.cap == 0)
            && claim.types.contains(&task.task_type)
            && !self.flow.limited_types.contains(&task.task_type)
            && !self.flow.paused.contains(&task.queue)
            && !self.flow.limited_queues.contains(&task.queue);
        if !qualifies {
            return false;
        }
        if !(self.request.slot)() {
            // No slot left: nothing more starts.
            self.left = 0;
            return false;
        }
        self.left -= 1;
        true
    }

    /// The owner of the leases.
    pub(crate) fn owner(&self) -> &str {
        &self.request.claim.owner
    }

    /// How long the leases run.
    pub(crate) fn lease(&self) -> std::time::Duration {
        self.request.claim.lease
    }
}

/// Of the tasks `written` by a settling, those it made runnable (`released`) and those it
/// started (`started`, see [`Starter`]).
pub(crate) fn released_and_started(written: Vec<Task>) -> (Vec<Task>, Vec<Task>) {
    let (started, released): (Vec<Task>, Vec<Task>) = runnable(written)
        .into_iter()
        .partition(|t| t.status == TaskStatus::Running);
    (released, started)
}

/// Where a store hands tasks that a read made runnable as it wrote them, for the orchestrator
/// to announce (`TaskStore::on_released`).
#[derive(Default)]
pub(crate) struct Released(std::sync::RwLock<Option<mcp_core::store::ReleaseHook>>);

impl Released {
    pub(crate) fn set(&self, hook: mcp_core::store::ReleaseHook) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    /// Hands the tasks `released` (runnable, see [`runnable`]) over, if anyone takes them.
    pub(crate) fn hand_over(&self, released: Vec<Task>) {
        if released.is_empty() {
            return;
        }
        let hook = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(hook) = hook {
            hook(released);
        }
    }
}

/// Of the tasks `written`, those runnable.
pub(crate) fn runnable(written: Vec<Task>) -> Vec<Task> {
    written
        .into_iter()
        .filter(|t| t.status != TaskStatus::Waiting)
        .collect()
}

/// Which dependencies of deferred tasks being written count as satisfied: settled, and final
/// in their favour.
pub(crate) enum Satisfied<W> {
    /// Those whose rows say so.
    Read,
    /// For the workflows `fresh`, whose chunk a settling takes before any other settling
    /// reached it (released it), those `settling` now, all in their favour (a settling with
    /// one that is not writes every chunk, reading the rows): no other dependency of its tasks
    /// settled. For the others, those whose rows say so.
    Now {
        fresh: HashSet<W>,
        settling: HashSet<Uuid>,
    },
}

impl<W: Eq + std::hash::Hash> Satisfied<W> {
    /// The satisfied dependencies of the tasks of `workflow`, when known without reading them.
    pub(crate) fn of(&self, workflow: &W) -> Option<&HashSet<Uuid>> {
        match self {
            Satisfied::Now { fresh, settling } if fresh.contains(workflow) => Some(settling),
            _ => None,
        }
    }

    /// The satisfied dependencies of the tasks of `workflow`: [`Satisfied::of`] when known,
    /// else what `read` (a store's read of their rows, not started until awaited) finds.
    pub(crate) async fn or_read(
        &self,
        workflow: &W,
        read: impl Future<Output = Result<HashSet<Uuid>, StoreError>>,
    ) -> Result<Cow<'_, HashSet<Uuid>>, StoreError> {
        Ok(match self.of(workflow) {
            Some(known) => Cow::Borrowed(known),
            None => Cow::Owned(read.await?),
        })
    }
}

/// Which deferred chunks of a workflow to write as rows.
#[derive(Clone, Copy)]
pub(crate) enum Chunks<'a> {
    /// Every one: something reads or changes the workflow's tasks.
    All,
    /// Those holding a dependent of one of these tasks, which settle now.
    DependingOn(&'a [Uuid]),
}

impl<'a> Chunks<'a> {
    /// The chunks that dependencies settling now (`ids`, the keys of `outcomes`) concern: those
    /// holding their dependents; every one when one of them cancels its dependents, as that
    /// goes down their own dependents too.
    pub(crate) fn settling(
        outcomes: &HashMap<Uuid, (TaskStatus, OnFailure)>,
        ids: &'a [Uuid],
    ) -> Chunks<'a> {
        if outcomes
            .values()
            .any(|(status, policy)| !in_favour(*status, *policy))
        {
            Chunks::All
        } else {
            Chunks::DependingOn(ids)
        }
    }
}

/// A new workflow's tasks split for storing: those without dependencies (rows at once), with
/// their places, and the others deferred. `shown` holds every task in input order as the
/// workflow's creation returns it: a deferred one as its row will be (`waiting`, created with
/// the workflow), a root as `None` until it is written (see [`in_order`]).
pub(crate) struct Split<'a> {
    pub(crate) roots: Vec<NewTask>,
    pub(crate) root_nodes: Vec<WorkflowNode>,
    pub(crate) deferred: Vec<DeferredTask<'a>>,
    pub(crate) shown: Vec<Option<Task>>,
}

/// Splits `new` (at their places `nodes`) of workflow `workflow_id`, created `now`, each
/// deferred task with its `dependents`.
pub(crate) fn split<'a>(
    workflow_id: Uuid,
    new: &'a [NewTask],
    nodes: &'a [WorkflowNode],
    dependents: &'a HashMap<Uuid, Vec<Uuid>>,
    now: DateTime<Utc>,
) -> Split<'a> {
    let mut split = Split {
        roots: Vec::new(),
        root_nodes: Vec::new(),
        deferred: Vec::with_capacity(new.len()),
        shown: Vec::with_capacity(new.len()),
    };
    for (task, node) in new.iter().zip(nodes) {
        if node.depends_on.is_empty() {
            split.roots.push(task.clone());
            split.root_nodes.push(node.clone());
            split.shown.push(None);
            continue;
        }
        let its_dependents = dependents.get(&task.id).map_or(&[][..], Vec::as_slice);
        let later = DeferredTask::new(task, node, its_dependents, now);
        let mut shown = inserted_task(task, TaskStatus::Waiting, later.run_at, now);
        shown.workflow_id = Some(workflow_id);
        shown.workflow_key = Some(node.key.clone());
        split.shown.push(Some(shown));
        split.deferred.push(later);
    }
    split
}

/// What a chunk stores beside its JSON: its tasks' ids, the tasks they depend on (once each)
/// and their queues.
pub(crate) fn chunk_columns<'a>(chunk: &'a [DeferredTask]) -> (Vec<Uuid>, Vec<Uuid>, Vec<&'a str>) {
    let ids = chunk.iter().map(|t| t.id).collect();
    let mut parents: Vec<Uuid> = chunk
        .iter()
        .flat_map(|t| t.depends_on.iter().copied())
        .collect();
    parents.sort_unstable();
    parents.dedup();
    let queues = chunk.iter().map(|t| &*t.queue).collect();
    (ids, parents, queues)
}

/// A new workflow's tasks in their order: those `shown` by [`split`], each root in its place
/// as written (`roots`, in their order).
pub(crate) fn in_order(
    shown: Vec<Option<Task>>,
    roots: Vec<Task>,
) -> Result<Vec<Task>, StoreError> {
    let mut roots = roots.into_iter();
    shown
        .into_iter()
        .map(|task| {
            task.or_else(|| roots.next()).ok_or_else(|| {
                StoreError::Database("a workflow's task without dependencies was not stored".into())
            })
        })
        .collect()
}

/// The dependencies of the tasks at `nodes` that are not among `new` (written with them), once
/// each: those whose outcome a deferred task being written may count already.
pub(crate) fn outside_dependencies(new: &[NewTask], nodes: &[WorkflowNode]) -> Vec<Uuid> {
    let writing: HashSet<Uuid> = new.iter().map(|t| t.id).collect();
    let mut parents: Vec<Uuid> = nodes
        .iter()
        .flat_map(|n| n.depends_on.iter().copied())
        .filter(|p| !writing.contains(p))
        .collect();
    parents.sort_unstable();
    parents.dedup();
    parents
}

/// Each task's dependents among `new` (ids), from their places `nodes`, in input order.
pub(crate) fn dependents_of(new: &[NewTask], nodes: &[WorkflowNode]) -> HashMap<Uuid, Vec<Uuid>> {
    let mut dependents: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for (task, node) in new.iter().zip(nodes) {
        for parent in &node.depends_on {
            dependents.entry(*parent).or_default().push(task.id);
        }
    }
    dependents
}

/// Dependencies settling now: each one's final status and its workflow's policy.
pub(crate) type Outcomes = HashMap<Uuid, (TaskStatus, OnFailure)>;

/// A workflow task a completion made final and settled: its outcome applies to its dependents
/// now. `W` is how the store names a workflow.
pub(crate) struct Ended<W> {
    pub(crate) id: Uuid,
    pub(crate) status: TaskStatus,
    pub(crate) workflow: W,
    pub(crate) dependents: Vec<Uuid>,
}

/// The outcomes of the tasks `ended` under their workflows' `policies` (one whose workflow has
/// none there is left out), and the edges `(dependent, dependency)` they apply along.
pub(crate) fn outcomes_of<W: Eq + std::hash::Hash>(
    ended: Vec<Ended<W>>,
    policies: &HashMap<W, OnFailure>,
) -> (Outcomes, Vec<(Uuid, Uuid)>) {
    let mut outcomes = HashMap::with_capacity(ended.len());
    let mut edges = Vec::new();
    for task in ended {
        let Some(policy) = policies.get(&task.workflow) else {
            continue;
        };
        outcomes.insert(task.id, (task.status, *policy));
        edges.extend(task.dependents.into_iter().map(|child| (child, task.id)));
    }
    (outcomes, edges)
}

/// The dependents of each of `tasks`, in their order, from [`dependents_of`] (none for a task
/// nothing depends on).
pub(crate) fn each_dependents<'a>(
    tasks: &[NewTask],
    dependents: &'a HashMap<Uuid, Vec<Uuid>>,
) -> Vec<&'a [Uuid]> {
    tasks
        .iter()
        .map(|t| dependents.get(&t.id).map_or(&[][..], Vec::as_slice))
        .collect()
}

/// The edges `(dependent, dependency)` from tasks `new` (at their places `nodes`) to those of
/// their dependencies that `to` keeps. For tasks added to a running workflow: the dependencies
/// stored before them, whose rows list the new dependents too ([`edges_to_earlier`]), and
/// those whose end was applied before the new tasks existed, applied to them now.
pub(crate) fn edges_to(
    new: &[NewTask],
    nodes: &[WorkflowNode],
    to: impl Fn(&Uuid) -> bool,
) -> Vec<(Uuid, Uuid)> {
    new.iter()
        .zip(nodes)
        .flat_map(|(t, node)| node.depends_on.iter().map(move |d| (t.id, *d)))
        .filter(|(_, parent)| to(parent))
        .collect()
}

/// [`edges_to`] the dependencies of `new` stored before them (not among `new`).
pub(crate) fn edges_to_earlier(new: &[NewTask], nodes: &[WorkflowNode]) -> Vec<(Uuid, Uuid)> {
    let inserted: HashSet<Uuid> = new.iter().map(|t| t.id).collect();
    edges_to(new, nodes, |parent| !inserted.contains(parent))
}

/// How many of `depends_on` a task still waits for, given the dependencies `satisfied` (final
/// in its favour, and applied).
fn still_waiting(depends_on: &[Uuid], satisfied: &HashSet<Uuid>) -> i32 {
    depends_on.iter().filter(|d| !satisfied.contains(d)).count() as i32
}

/// Whether a dependency that ended in `status` counts in its dependents' favour under `policy`.
pub(crate) fn in_favour(status: TaskStatus, policy: OnFailure) -> bool {
    status == TaskStatus::Succeeded || (policy == OnFailure::Continue && failed(status))
}

/// Whether a dependency in `status` keeps its dependents cancelled (under `cancel_dependents`).
fn failed(status: TaskStatus) -> bool {
    matches!(status, TaskStatus::Dead | TaskStatus::Cancelled)
}

/// Of the `candidates`, tasks cancelled because of `root` (directly or through each other),
/// those a retry of `root` revives: the ones none of whose dependencies stays dead or
/// cancelled. `edges` are the candidates' dependencies as `(task, dependency, its status)`; a
/// candidate whose dependency is another candidate that stays cancelled stays cancelled too.
pub(crate) fn revivable(
    root: Uuid,
    candidates: &[Uuid],
    edges: &[(Uuid, Uuid, TaskStatus)],
) -> Vec<Uuid> {
    let mut revived: HashSet<Uuid> = candidates.iter().copied().collect();
    loop {
        let blocked: Vec<Uuid> = edges
            .iter()
            .filter(|(task, dependency, status)| {
                revived.contains(task)
                    && *dependency != root
                    && !revived.contains(dependency)
                    && failed(*status)
            })
            .map(|(task, _, _)| *task)
            .collect();
        if blocked.is_empty() {
            break;
        }
        for task in blocked {
            revived.remove(&task);
        }
    }
    let mut revived: Vec<Uuid> = revived.into_iter().collect();
    revived.sort_unstable();
    revived
}

/// Whether a task of a workflow in `flow` may be retried by hand: a `failed` or `dead` one,
/// as any task; a `cancelled` one too, unless the workflow was cancelled or one of its
/// dependencies stays dead or cancelled under `cancel_dependents` (it would wait for ever:
/// retrying that dependency revives it instead).
pub(crate) fn may_retry(
    status: TaskStatus,
    flow: WorkflowStatus,
    dependencies: &[TaskStatus],
    policy: OnFailure,
) -> bool {
    match status {
        TaskStatus::Failed | TaskStatus::Dead => true,
        TaskStatus::Cancelled => {
            flow != WorkflowStatus::Cancelled
                && (policy == OnFailure::Continue || !dependencies.iter().any(|s| failed(*s)))
        }
        _ => false,
    }
}

/// Whether retrying a task in `status` revives the dependents its end cancelled: only a dead
/// or cancelled one cancelled any, only under `cancel_dependents`, and not in a cancelled
/// workflow (whose tasks stay as its cancel left them).
pub(crate) fn revives(status: TaskStatus, flow: WorkflowStatus, policy: OnFailure) -> bool {
    matches!(status, TaskStatus::Dead | TaskStatus::Cancelled)
        && flow != WorkflowStatus::Cancelled
        && policy == OnFailure::CancelDependents
}

/// One dependency as its dependent sees it: `{"status", "result"}` or `{"status", "error"}`.
pub(crate) fn parent_view(status: &str, result: Option<Value>, error: Option<Value>) -> Value {
    let mut view = json!({ "status": status });
    if let Some(result) = result {
        view["result"] = result;
    }
    if let Some(error) = error {
        view["error"] = error;
    }
    view
}

/// Builds each dependent's `parents` object from one row per dependency: its dependents (among
/// those asked about), its key and its view. A fan-out's dependents share one row, so the
/// dependency is read and decoded once, not once per dependent.
pub(crate) fn group_parents(rows: Vec<(Vec<Uuid>, String, Value)>) -> HashMap<Uuid, Value> {
    let mut grouped: HashMap<Uuid, Map<String, Value>> = HashMap::new();
    for (dependents, key, view) in rows {
        for task in dependents {
            grouped
                .entry(task)
                .or_default()
                .insert(key.clone(), view.clone());
        }
    }
    grouped
        .into_iter()
        .map(|(task, parents)| (task, Value::Object(parents)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<Uuid> {
        (0..n).map(|_| Uuid::now_v7()).collect()
    }

    /// A task of `task_type` as `create` validates it, at `now`, from a create body of its
    /// type alone.
    fn new_task(task_type: &str, now: DateTime<Utc>) -> NewTask {
        mcp_core::task::CreateTask {
            task_type: task_type.into(),
            ..Default::default()
        }
        .validate(&mcp_core::task::TaskDefaults::default(), now)
        .unwrap()
    }

    /// A released task starts for the node writing it only when that node's claim would take
    /// it now with no flow control to consult, and only while it has slots free.
    #[test]
    fn a_starter_takes_what_a_claim_would_without_flow_control() {
        let now = Utc::now();
        let claim = mcp_core::store::ClaimRequest {
            owner: "node-a".into(),
            types: vec!["noop".into(), "build".into(), "limited".into()],
            limit: 5,
            lease: std::time::Duration::from_secs(30),
            share: mcp_core::store::ShareLimit::default(),
        };
        // Two slots free.
        let free = std::sync::atomic::AtomicU32::new(2);
        let slot = || {
            free.fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |n| n.checked_sub(1),
            )
            .is_ok()
        };
        let request = StartRequest {
            claim: claim.clone(),
            slot: &slot,
        };
        let flow = FlowView {
            paused: vec!["held".into()],
            limited_types: HashSet::from(["limited".to_owned()]),
            limited_queues: vec!["slow".into()],
        };
        let mut starter = Starter::new(&request, &flow);
        let with = |change: &dyn Fn(&mut NewTask)| {
            let mut task = new_task("noop", now);
            change(&mut task);
            task
        };
        let refused = [
            with(&|t| t.task_type = "other".into()),
            with(&|t| t.task_type = "limited".into()),
            with(&|t| t.queue = "held".into()),
            with(&|t| t.queue = "slow".into()),
            with(&|t| t.concurrency_key = Some("k".into())),
        ];
        for task in &refused {
            assert!(!starter.takes(task, now), "{task:?}");
        }
        let later = now + chrono::Duration::seconds(5);
        assert!(!starter.takes(&new_task("noop", now), later), "not due");
        // A share key counts only while shares are capped.
        let shared = with(&|t| t.share_key = Some("alice".into()));
        assert!(starter.takes(&shared, now));
        assert!(starter.takes(&new_task("build", now), now));
        assert!(!starter.takes(&new_task("noop", now), now), "no slot left");
        // A claim's limit bounds them too.
        let limited = StartRequest {
            claim: mcp_core::store::ClaimRequest {
                limit: 1,
                ..claim.clone()
            },
            slot: &|| true,
        };
        let mut starter = Starter::new(&limited, &flow);
        assert!(starter.takes(&new_task("noop", now), now));
        assert!(
            !starter.takes(&new_task("noop", now), now),
            "beyond the limit"
        );
        let capped = StartRequest {
            claim: mcp_core::store::ClaimRequest {
                share: mcp_core::store::ShareLimit {
                    cap: 4,
                    ..Default::default()
                },
                ..claim
            },
            slot: &|| true,
        };
        assert!(!Starter::new(&capped, &flow).takes(&shared, now));
    }

    #[test]
    fn revives_what_a_retried_task_cancelled_transitively() {
        // root → a → c, root → b → c
        let v = ids(4);
        let (root, a, b, c) = (v[0], v[1], v[2], v[3]);
        let edges = [
            (a, root, TaskStatus::Queued),
            (b, root, TaskStatus::Queued),
            (c, a, TaskStatus::Cancelled),
            (c, b, TaskStatus::Cancelled),
        ];
        let mut expected = vec![a, b, c];
        expected.sort_unstable();
        assert_eq!(revivable(root, &[a, b, c], &edges), expected);
    }

    #[test]
    fn keeps_cancelled_what_another_failed_dependency_still_holds() {
        // root → join ← other (dead); join → after
        let v = ids(4);
        let (root, other, join, after) = (v[0], v[1], v[2], v[3]);
        let edges = [
            (join, root, TaskStatus::Queued),
            (join, other, TaskStatus::Dead),
            (after, join, TaskStatus::Cancelled),
        ];
        assert!(revivable(root, &[join, after], &edges).is_empty());
        // A dependency that succeeded or still runs does not hold it.
        let edges = [
            (join, root, TaskStatus::Queued),
            (join, other, TaskStatus::Succeeded),
            (after, join, TaskStatus::Cancelled),
        ];
        assert_eq!(revivable(root, &[join, after], &edges).len(), 2);
    }

    #[test]
    fn a_cancelled_task_is_retried_only_when_no_dependency_failed() {
        let (running, policy) = (WorkflowStatus::Running, OnFailure::CancelDependents);
        let cancelled = TaskStatus::Cancelled;
        assert!(may_retry(cancelled, running, &[], policy));
        assert!(may_retry(
            cancelled,
            WorkflowStatus::Failed,
            &[TaskStatus::Succeeded, TaskStatus::Running],
            policy
        ));
        assert!(!may_retry(cancelled, running, &[TaskStatus::Dead], policy));
        assert!(may_retry(
            cancelled,
            running,
            &[TaskStatus::Dead],
            OnFailure::Continue
        ));
        assert!(!may_retry(
            cancelled,
            WorkflowStatus::Cancelled,
            &[],
            policy
        ));
        assert!(may_retry(
            TaskStatus::Dead,
            WorkflowStatus::Cancelled,
            &[],
            policy
        ));
        assert!(!may_retry(TaskStatus::Waiting, running, &[], policy));
        assert!(!revives(
            TaskStatus::Dead,
            WorkflowStatus::Cancelled,
            policy
        ));
        assert!(!revives(TaskStatus::Failed, running, policy));
        assert!(revives(TaskStatus::Dead, WorkflowStatus::Failed, policy));
    }

    #[test]
    fn a_deferred_task_comes_back_as_it_was_stored() {
        let now = Utc::now();
        let mut task = mcp_core::task::CreateTask {
            task_type: "echo".into(),
            payload: Some(json!({"x": [1, 2]})),
            concurrency_key: Some("k".into()),
            ..Default::default()
        }
        .validate(&mcp_core::task::TaskDefaults::default(), now)
        .unwrap();
        task.created_by = Some("alice".into());
        let node = WorkflowNode {
            key: "build".into(),
            depends_on: ids(2),
        };
        let dependents = ids(3);
        let stored = [DeferredTask::new(&task, &node, &dependents, now)];
        let packed = pack(&stored).unwrap();
        // As an earlier version stored it: JSON text, uncompressed.
        let text = serde_json::to_string(&stored).unwrap();
        // A task without its own time runs from the workflow's creation.
        assert_eq!(task.run_at, None);
        // Packed (SQLite keeps '' as the text beside it), and as stored before.
        for back in [
            unpack(Some(&packed), None).unwrap(),
            unpack(Some(&packed), Some("")).unwrap(),
            unpack(None, Some(&text)).unwrap(),
        ] {
            let (again, place, its_dependents) = back.into_iter().next().unwrap().into_parts();
            assert_eq!(
                again,
                NewTask {
                    run_at: Some(now),
                    ..task.clone()
                }
            );
            assert_eq!(place, node);
            assert_eq!(its_dependents, dependents);
        }
    }

    #[test]
    fn a_packed_chunk_is_a_fraction_of_its_json_and_damage_is_an_error() {
        let now = Utc::now();
        let task = new_task("noop", now);
        let node = WorkflowNode {
            key: "fan".into(),
            depends_on: ids(1),
        };
        let join = ids(1);
        let chunk: Vec<DeferredTask> = (0..1_000)
            .map(|_| DeferredTask::new(&task, &node, &join, now))
            .collect();
        let packed = pack(&chunk).unwrap();
        let text = serde_json::to_vec(&chunk).unwrap();
        assert!(
            packed.len() * 5 < text.len(),
            "{} of {}",
            packed.len(),
            text.len()
        );
        assert_eq!(unpack(Some(&packed), None).unwrap().len(), 1_000);
        assert!(matches!(
            unpack(Some(&packed[..packed.len() / 2]), None),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(unpack(None, None), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn a_task_that_waits_for_many_is_deferred_in_a_chunk_of_its_own() {
        let now = Utc::now();
        let task = new_task("echo", now);
        let root = ids(1);
        let fan_node = WorkflowNode {
            key: "fan".into(),
            depends_on: root.clone(),
        };
        let join_node = WorkflowNode {
            key: "join".into(),
            depends_on: ids(1_500),
        };
        let fan = |n: usize| (0..n).map(|_| DeferredTask::new(&task, &fan_node, &[], now));
        // 2,400 tasks of one dependency each, then a fan-in of 1,500, then 10 more.
        let deferred: Vec<DeferredTask> = fan(2_400)
            .chain([DeferredTask::new(&task, &join_node, &[], now)])
            .chain(fan(10))
            .collect();
        let sizes: Vec<usize> = chunked(&deferred).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [500, 1_000, 900, 1, 10]);
        // 400 tasks of one dependency leave room for a fan-in of 600 beside them.
        let small_join = WorkflowNode {
            key: "join".into(),
            depends_on: ids(600),
        };
        let deferred: Vec<DeferredTask> = fan(400)
            .chain([DeferredTask::new(&task, &small_join, &[], now)])
            .collect();
        let sizes: Vec<usize> = chunked(&deferred).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [401]);
        assert!(chunked(&[]).is_empty());
    }

    #[test]
    fn a_settling_writes_the_first_chunk_it_reached_of_each_workflow() {
        let hit = [("b", 3, 'x'), ("a", 2, 'y'), ("b", 1, 'z'), ("a", 5, 'w')];
        let first: Vec<_> = first_of_each(&hit).into_iter().collect();
        assert_eq!(first, [("a", (2, 'y')), ("b", (1, 'z'))]);
        // b's 3 was released before (not fresh): it stays released; a's 5 is released now.
        let settling = ids(1);
        let hit = [
            ("b", 3, false),
            ("a", 2, true),
            ("b", 1, false),
            ("a", 5, true),
        ];
        let tasks = ids(4);
        let found: Vec<_> = hit
            .iter()
            .zip(&tasks)
            .map(|(&(workflow, seq, fresh), task)| (workflow, seq, fresh, vec![*task]))
            .collect();
        let reached = reached(found, &settling);
        assert_eq!(reached.take, [("a", 2), ("b", 1)]);
        assert_eq!(reached.release, [("a", 5)]);
        // The tasks of the chunks it does not write are not rows yet.
        assert_eq!(reached.left, HashSet::from([tasks[0], tasks[3]]));
        assert_eq!(
            reached.satisfied.of(&"a"),
            Some(&HashSet::from([settling[0]]))
        );
        assert_eq!(reached.satisfied.of(&"b"), None);
    }

    #[test]
    fn names_the_dependency_that_cancels_each_dependent() {
        let v = ids(3);
        let (ok, bad, child) = (v[0], v[1], v[2]);
        let parents = HashMap::from([
            (ok, (TaskStatus::Succeeded, OnFailure::CancelDependents)),
            (bad, (TaskStatus::Dead, OnFailure::CancelDependents)),
        ]);
        let (counts, cancel) = apply(&[(child, ok), (child, bad)], &parents);
        assert_eq!(counts[&child], 1);
        assert_eq!(cancel, vec![(child, bad)]);
    }
}
