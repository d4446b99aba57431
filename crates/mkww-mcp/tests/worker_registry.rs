//! The cluster-wide worker registry, with real nodes on one fresh PostgreSQL schema: a type served
//! by a worker connected to any node is accepted by every node, runs on the worker's node, and
//! shows in every node's `GET /v1/routes` with that node; a worker that leaves, or a node that
//! stops, takes its types out of the cluster at once, and a node killed with SIGKILL within the
//! lease.

mod support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::*;

/// The node id a server announced when it started listening.
fn node_id(server: &Server) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(id) = server
            .log_lines()
            .iter()
            .find(|l| l["message"] == "listening")
            .and_then(|l| l["node_id"].as_str().map(str::to_owned))
        {
            return id;
        }
        assert!(Instant::now() < deadline, "no `listening` log line");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn worker(server: &Server, sub: &str, types: &[&str], concurrency: usize) -> Socket {
    let mut socket = connect(server, Some(&token("service", sub))).await;
    let reply = request(
        &mut socket,
        json!({"id": "reg", "op": "worker.register", "types": types, "concurrency": concurrency}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    socket
}

/// The route of `task_type` in `GET /v1/routes`, if there is one.
async fn route(server: &Server, task_type: &str) -> Option<Value> {
    let (status, body) = get(server, "/v1/routes").await;
    assert_eq!(status, 200, "{body}");
    body["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .find(|r| r["type"] == task_type)
        .cloned()
}

/// Polls `GET /v1/routes` until `done` holds for the route of `task_type` (None: no route),
/// failing after `patience`; returns how long it took.
async fn wait_for_route(
    server: &Server,
    task_type: &str,
    patience: Duration,
    done: impl Fn(Option<&Value>) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let route = route(server, task_type).await;
        if done(route.as_ref()) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < patience,
            "the route of {task_type} never got there: {route:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Written past libtest's capture: the figures belong in the test output.
fn report(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[tokio::test]
async fn a_type_served_on_one_node_is_accepted_by_every_node_until_that_node_dies() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let mut env = schema.env();
    env.extend([
        ("MCP_LEASE_MS", "1500".into()),
        ("MCP_RESCUE_INTERVAL_MS", "200".into()),
        ("MCP_WORKER_DIRECTORY_REFRESH_MS", "200".into()),
    ]);
    let a = Server::start(&env);
    let mut b = Server::start(&env);
    let node_b = node_id(&b);

    let (status, body) = post(&a, "/v1/tasks", json!({"type": "unity.bake"})).await;
    assert_eq!(status, 422, "nobody serves it yet: {body}");
    assert_eq!(body["error"]["code"], "unknown_task_type");

    let mut baker = worker(&b, "baker", &["unity.bake"], 2).await;
    // Acknowledged registration: every node accepts the type from now on, no waiting.
    let (status, task) = post(&a, "/v1/tasks", json!({"type": "unity.bake"})).await;
    assert_eq!(status, 201, "{task}");
    let given = assigned(&mut baker).await;
    assert_eq!(given["id"], task["id"], "B claims it for its worker");

    // While the worker holds it, A lists the worker with B's node id; B its own, from memory.
    let on_a = wait_for_route(&a, "unity.bake", Duration::from_secs(10), |r| {
        r.is_some_and(|r| r["workers"][0]["outstanding"] == 1)
    })
    .await;
    let listed = route(&a, "unity.bake").await.expect("a route on A");
    assert_eq!(listed["target"], "workers");
    let workers = listed["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 1, "{listed}");
    assert_eq!(workers[0]["node"], node_b);
    assert_eq!(workers[0]["subject"], "baker");
    assert_eq!(workers[0]["concurrency"], 2);
    report(&format!(
        "worker_registry: A showed B's worker load after {on_a:?}"
    ));
    let own = route(&b, "unity.bake").await.expect("a route on B");
    assert_eq!(own["workers"][0]["node"], node_b);
    assert_eq!(own["workers"][0]["outstanding"], 1);

    request(
        &mut baker,
        json!({"id": 2, "op": "task.complete", "task_id": given["id"], "result": {"baked": true}}),
    )
    .await;
    let done = wait_for(&a, task["id"].as_str().expect("id"), is_final).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["result"], json!({"baked": true}));

    // B dies without a word: its worker leaves the cluster within the lease.
    b.kill9();
    let killed = Instant::now();
    wait_for_route(&a, "unity.bake", Duration::from_secs(10), |r| r.is_none()).await;
    let gone = killed.elapsed();
    report(&format!(
        "worker_registry: a SIGKILLed node's worker left A's routes after {gone:?} (lease 1.5 s, refresh 0.2 s)"
    ));
    assert!(
        gone < Duration::from_millis(1500 + 200 + 1000),
        "within the lease (and A's refresh): {gone:?}"
    );
    let (status, body) = post(&a, "/v1/tasks", json!({"type": "unity.bake"})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "unknown_task_type");
    drop(a);
    schema.drop_schema().await;
}

#[tokio::test]
async fn a_worker_that_leaves_and_a_node_that_stops_take_their_types_out_at_once() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    // A long lease: only withdrawing, never expiry, can take the workers out within the test.
    let mut env = schema.env();
    env.extend([
        ("MCP_LEASE_MS", "120000".into()),
        ("MCP_WORKER_DIRECTORY_REFRESH_MS", "200".into()),
    ]);
    let a = Server::start(&env);
    let mut b = Server::start(&env);
    let patience = Duration::from_secs(20);

    let mut lighter = worker(&b, "lighter", &["unity.light"], 1).await;
    wait_for_route(&a, "unity.light", patience, |r| r.is_some()).await;
    lighter.close(None).await.expect("close");
    let left = wait_for_route(&a, "unity.light", patience, |r| r.is_none()).await;
    report(&format!(
        "worker_registry: a disconnected worker left A's routes after {left:?}"
    ));
    for server in [&a, &b] {
        let (status, body) = post(server, "/v1/tasks", json!({"type": "unity.light"})).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["code"], "unknown_task_type");
    }

    let _baker = worker(&b, "baker", &["unity.bake"], 1).await;
    wait_for_route(&a, "unity.bake", patience, |r| r.is_some()).await;
    assert!(b.terminate().success(), "B stops cleanly");
    let stopped = wait_for_route(&a, "unity.bake", patience, |r| r.is_none()).await;
    report(&format!(
        "worker_registry: a stopped node's worker left A's routes after {stopped:?}"
    ));
    let (status, body) = post(&a, "/v1/tasks", json!({"type": "unity.bake"})).await;
    assert_eq!(status, 422, "{body}");
    drop(a);
    schema.drop_schema().await;
}
