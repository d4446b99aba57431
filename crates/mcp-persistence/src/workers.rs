//! What both worker directories share: turning a stored row into a `DirectoryEntry` (refusing
//! numbers no node could have written) and the order of `served_types` answers.

use crate::error::corrupt;
use mcp_core::StoreError;
use mcp_core::routing::{DirectoryEntry, WorkerRegistration};

/// A stored registration, checked.
pub(crate) fn directory_entry(
    node: String,
    id: i64,
    subject: String,
    types: Vec<String>,
    concurrency: i64,
    outstanding: i64,
) -> Result<DirectoryEntry, StoreError> {
    let number = |what: &str, n: i64| {
        usize::try_from(n).map_err(|_| corrupt(format!("worker {node}/{id}: bad {what} {n}")))
    };
    Ok(DirectoryEntry {
        worker: WorkerRegistration {
            id: u64::try_from(id).map_err(|_| corrupt(format!("bad worker id {id}")))?,
            subject,
            types,
            concurrency: number("concurrency", concurrency)?,
            outstanding: number("outstanding", outstanding)?,
        },
        node,
    })
}

/// The members of `asked` found in `found`, in the order they were asked.
pub(crate) fn in_order_of(asked: &[String], found: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    asked
        .iter()
        .filter(|t| found.contains(t) && seen.insert(t.as_str()))
        .cloned()
        .collect()
}
