//! What both stores share around workflows: how the dependencies that just settled turn into
//! dependents released or cancelled, and how a dependency's outcome is handed to a dependent.

use mcp_core::TaskStatus;
use mcp_core::workflow::{OnFailure, WorkflowStatus};
use serde_json::{Map, Value, json};
use std::collections::{HashMap, HashSet};
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
