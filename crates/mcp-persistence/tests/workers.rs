//! One conformance suite for both worker directories: every case runs against SQLite (a fresh
//! file) and PostgreSQL (a fresh schema in `MCP_TEST_DATABASE_URL`, dropped afterwards). With
//! `CI` set (to any value) an unreachable PostgreSQL fails the suite instead of skipping it.

#[macro_use]
mod common;

use common::Backend;
use mcp_core::routing::{DirectoryEntry, WorkerDirectory, WorkerRegistration};
use std::sync::Arc;
use std::time::Duration;

impl Backend {
    fn directory(&self) -> Arc<dyn WorkerDirectory> {
        match self {
            Backend::Sqlite(store, _) => Arc::new(store.clone()),
            Backend::Postgres(store) => Arc::new(store.clone()),
        }
    }
}

conformance!(
    publishes_a_nodes_workers_and_lists_them_by_node_and_id,
    a_publication_replaces_the_nodes_earlier_one_only,
    answers_which_types_some_live_worker_serves,
    expired_registrations_are_not_live_and_are_pruned,
);

/// A long time to live: these registrations outlive the case.
const LIVE: Duration = Duration::from_secs(600);

fn worker(id: u64, types: &[&str], outstanding: usize) -> WorkerRegistration {
    WorkerRegistration {
        id,
        subject: format!("worker-{id}"),
        types: types.iter().map(|t| t.to_string()).collect(),
        concurrency: 4,
        outstanding,
    }
}

fn entry(node: &str, worker: WorkerRegistration) -> DirectoryEntry {
    DirectoryEntry {
        node: node.into(),
        worker,
    }
}

fn strings(types: &[&str]) -> Vec<String> {
    types.iter().map(|t| t.to_string()).collect()
}

mod cases {
    use super::*;

    pub async fn publishes_a_nodes_workers_and_lists_them_by_node_and_id(backend: &Backend) {
        let directory = backend.directory();
        assert_eq!(directory.live_workers().await.unwrap(), []);
        let b = [
            worker(2, &["unity.bake", "unity.light"], 1),
            worker(1, &["render.deploy"], 0),
        ];
        directory.publish_workers("node-b", &b, LIVE).await.unwrap();
        let a = [worker(9, &["unity.bake"], 3)];
        directory.publish_workers("node-a", &a, LIVE).await.unwrap();
        assert_eq!(
            directory.live_workers().await.unwrap(),
            [
                entry("node-a", a[0].clone()),
                entry("node-b", b[1].clone()),
                entry("node-b", b[0].clone()),
            ]
        );
    }

    pub async fn a_publication_replaces_the_nodes_earlier_one_only(backend: &Backend) {
        let directory = backend.directory();
        let a = [worker(1, &["unity.bake"], 0)];
        directory.publish_workers("node-a", &a, LIVE).await.unwrap();
        directory
            .publish_workers(
                "node-b",
                &[worker(1, &["x"], 0), worker(2, &["y"], 0)],
                LIVE,
            )
            .await
            .unwrap();
        // Worker 1 left node b and worker 2's load changed.
        let now = [worker(2, &["y"], 4)];
        directory
            .publish_workers("node-b", &now, LIVE)
            .await
            .unwrap();
        assert_eq!(
            directory.live_workers().await.unwrap(),
            [
                entry("node-a", a[0].clone()),
                entry("node-b", now[0].clone())
            ]
        );
        // A node going away publishes nobody.
        directory
            .publish_workers("node-b", &[], LIVE)
            .await
            .unwrap();
        assert_eq!(
            directory.live_workers().await.unwrap(),
            [entry("node-a", a[0].clone())]
        );
    }

    pub async fn answers_which_types_some_live_worker_serves(backend: &Backend) {
        let directory = backend.directory();
        assert_eq!(
            directory
                .served_types(&strings(&["unity.bake"]))
                .await
                .unwrap(),
            Vec::<String>::new()
        );
        directory
            .publish_workers("node-a", &[worker(1, &["unity.bake", "b"], 0)], LIVE)
            .await
            .unwrap();
        directory
            .publish_workers("node-b", &[worker(1, &["unity.bake", "c"], 0)], LIVE)
            .await
            .unwrap();
        assert_eq!(
            directory
                .served_types(&strings(&["c", "nobody", "unity.bake", "b"]))
                .await
                .unwrap(),
            strings(&["c", "unity.bake", "b"]),
            "in the order asked, each once"
        );
        assert_eq!(
            directory.served_types(&[]).await.unwrap(),
            Vec::<String>::new()
        );
    }

    pub async fn expired_registrations_are_not_live_and_are_pruned(backend: &Backend) {
        let directory = backend.directory();
        directory
            .publish_workers(
                "node-dead",
                &[worker(1, &["unity.bake"], 0)],
                // Long enough to still be live at the next assertion on a loaded machine (50 ms
                // was not, once in CI), short enough for a quick test.
                Duration::from_secs(1),
            )
            .await
            .unwrap();
        let alive = [worker(1, &["render.deploy"], 0)];
        directory
            .publish_workers("node-alive", &alive, LIVE)
            .await
            .unwrap();
        assert_eq!(directory.live_workers().await.unwrap().len(), 2);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let live = directory.live_workers().await.unwrap();
            if live.len() == 1 {
                assert_eq!(live, [entry("node-alive", alive[0].clone())]);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never expired: {live:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            directory
                .served_types(&strings(&["unity.bake"]))
                .await
                .unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(directory.prune_workers().await.unwrap(), 1);
        assert_eq!(directory.prune_workers().await.unwrap(), 0);
        assert_eq!(directory.live_workers().await.unwrap().len(), 1);
    }
}
