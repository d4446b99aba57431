//! What both stores share around workflows: how the dependencies that just settled turn into
//! dependents released or cancelled, and how a dependency's outcome is handed to a dependent.

use mcp_core::TaskStatus;
use mcp_core::workflow::OnFailure;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use uuid::Uuid;

/// The message of a task cancelled because a dependency failed.
pub(crate) const CANCELLED_BY_DEPENDENCY: &str =
    "cancelled: a dependency ended dead or cancelled (on_failure: cancel_dependents)";

/// Given the dependencies settled now (`(dependent, dependency)` edges) and each dependency's
/// final status and workflow policy: how many of each dependent's dependencies settled in its
/// favour (it runs once none is left), and the dependents to cancel (with theirs).
pub(crate) fn apply(
    edges: &[(Uuid, Uuid)],
    parents: &HashMap<Uuid, (TaskStatus, OnFailure)>,
) -> (HashMap<Uuid, i64>, Vec<Uuid>) {
    let mut settled: HashMap<Uuid, i64> = HashMap::new();
    let mut cancel = Vec::new();
    for (child, parent) in edges {
        match parents.get(parent) {
            Some((TaskStatus::Succeeded, _)) | Some((_, OnFailure::Continue)) => {
                *settled.entry(*child).or_insert(0) += 1
            }
            _ => cancel.push(*child),
        }
    }
    cancel.sort_unstable();
    cancel.dedup();
    (settled, cancel)
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

/// Groups `(dependent, key, view)` rows into each dependent's `parents` object.
pub(crate) fn group_parents(rows: Vec<(Uuid, String, Value)>) -> HashMap<Uuid, Value> {
    let mut grouped: HashMap<Uuid, Map<String, Value>> = HashMap::new();
    for (task, key, view) in rows {
        grouped.entry(task).or_default().insert(key, view);
    }
    grouped
        .into_iter()
        .map(|(task, parents)| (task, Value::Object(parents)))
        .collect()
}
