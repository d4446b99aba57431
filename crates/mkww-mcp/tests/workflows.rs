//! Workflows and progress, end to end on both stores: the real binary, real HTTP and WebSocket,
//! a real SQLite file or a fresh PostgreSQL schema per test.

mod support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::*;

/// Where a test runs: SQLite (the default) or its own PostgreSQL schema.
enum Backend {
    Sqlite,
    Postgres,
}

/// Starts a node on `backend` with `extra` settings; `None`: PostgreSQL is unreachable (a skip
/// outside CI). The schema lives as long as the returned guard.
async fn start(
    backend: Backend,
    extra: &[(&'static str, &str)],
) -> Option<(Server, Option<PgSchema>)> {
    let mut env: Vec<(&'static str, String)> =
        extra.iter().map(|(k, v)| (*k, v.to_string())).collect();
    let schema = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let schema = PgSchema::create().await?;
            env.extend(schema.env());
            Some(schema)
        }
    };
    Some((Server::start(&env), schema))
}

async fn finish(server: Server, schema: Option<PgSchema>) {
    drop(server);
    if let Some(schema) = schema {
        schema.drop_schema().await;
    }
}

/// Polls a workflow until it is no longer `running` (or fails after 30 s).
async fn wait_for_workflow(server: &Server, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, workflow) = get(server, &format!("/v1/workflows/{id}")).await;
        assert_eq!(status, 200, "{workflow}");
        if workflow["status"] != "running" {
            return workflow;
        }
        assert!(
            Instant::now() < deadline,
            "workflow never finished: {workflow}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The task of `workflow` with `key`.
fn task<'a>(workflow: &'a Value, key: &str) -> &'a Value {
    workflow["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["workflow_key"] == key)
        .unwrap_or_else(|| panic!("no task `{key}` in {workflow}"))
}

fn at(task: &Value, field: &str) -> chrono::DateTime<chrono::Utc> {
    task[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} missing: {task}"))
        .parse()
        .expect("an instant")
}

const WORKER_TYPES: (&str, &str) = ("MCP_WORKER_TASK_TYPES", "[\"ext.deploy\"]");

/// build → (test, lint) → deploy, where deploy is served by an external worker: every task
/// starts only after its dependencies finished, and each receives its parents' outcomes.
async fn dag_runs_in_order_with_parents(backend: Backend) {
    let Some((server, schema)) = start(backend, &[WORKER_TYPES]).await else {
        return;
    };
    let mut worker = connect(&server, Some(&token("service", "deployer"))).await;
    let reply = request(
        &mut worker,
        json!({"id": 1, "op": "worker.register", "types": ["ext.deploy"], "concurrency": 1}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");

    let (status, created) = post(
        &server,
        "/v1/workflows",
        json!({"name": "release", "tasks": [
            {"key": "build", "type": "echo", "payload": {"artifact": "v1.2"}},
            {"key": "test", "type": "collect", "depends_on": ["build"]},
            {"key": "lint", "type": "collect", "depends_on": ["build"]},
            {"key": "deploy", "type": "ext.deploy", "depends_on": ["test", "lint"]},
        ]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "running");
    assert_eq!(created["on_failure"], "cancel_dependents");
    assert_eq!(task(&created, "deploy")["status"], "waiting");
    assert_eq!(task(&created, "build")["status"], "queued");

    let given = assigned(&mut worker).await;
    assert_eq!(given["workflow_key"], "deploy");
    let build_view = json!({"status": "succeeded", "result": {"artifact": "v1.2"}});
    assert_eq!(given["parents"]["test"]["status"], "succeeded", "{given}");
    assert_eq!(given["parents"]["test"]["result"]["build"], build_view);
    assert_eq!(given["parents"]["lint"]["result"]["build"], build_view);
    let reply = request(
        &mut worker,
        json!({"id": 2, "op": "task.complete", "task_id": given["id"], "result": {"url": "https://x"}}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");

    let id = created["id"].as_str().unwrap();
    let done = wait_for_workflow(&server, id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let (build, test, lint, deploy) = (
        task(&done, "build"),
        task(&done, "test"),
        task(&done, "lint"),
        task(&done, "deploy"),
    );
    // A handler got its parent's result.
    assert_eq!(test["result"], json!({"build": build_view}));
    for dependent in [test, lint] {
        assert!(at(dependent, "started_at") >= at(build, "finished_at"));
    }
    assert!(at(deploy, "started_at") >= at(test, "finished_at"));
    assert!(at(deploy, "started_at") >= at(lint, "finished_at"));
    assert_eq!(deploy["result"], json!({"url": "https://x"}));
    finish(server, schema).await;
}

#[tokio::test]
async fn dag_runs_in_order_with_parents_on_sqlite() {
    dag_runs_in_order_with_parents(Backend::Sqlite).await;
}

#[tokio::test]
async fn dag_runs_in_order_with_parents_on_postgres() {
    dag_runs_in_order_with_parents(Backend::Postgres).await;
}

/// a (dies) → b → c: under `cancel_dependents` b and c are cancelled; under `continue` b runs
/// and sees the failure.
async fn failure_policies(backend: Backend) {
    let Some((server, schema)) = start(backend, &[]).await else {
        return;
    };
    let tasks = json!([
        {"key": "a", "type": "fail", "max_attempts": 1, "payload": {"message": "boom"}},
        {"key": "b", "type": "collect", "depends_on": ["a"]},
        {"key": "c", "type": "collect", "depends_on": ["b"]},
        {"key": "other", "type": "noop"},
    ]);
    let (status, cancelling) = post(
        &server,
        "/v1/workflows",
        json!({"name": "cancel", "tasks": tasks, "on_failure": "cancel_dependents"}),
    )
    .await;
    assert_eq!(status, 201, "{cancelling}");
    let done = wait_for_workflow(&server, cancelling["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(task(&done, "a")["status"], "dead");
    assert_eq!(task(&done, "b")["status"], "cancelled");
    assert_eq!(task(&done, "c")["status"], "cancelled");
    assert_eq!(task(&done, "other")["status"], "succeeded");
    assert!(task(&done, "c")["started_at"].is_null());

    let (status, continuing) = post(
        &server,
        "/v1/workflows",
        json!({"name": "continue", "tasks": tasks, "on_failure": "continue"}),
    )
    .await;
    assert_eq!(status, 201, "{continuing}");
    let done = wait_for_workflow(&server, continuing["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed", "{done}");
    let b = task(&done, "b");
    assert_eq!(b["status"], "succeeded");
    assert_eq!(b["result"]["a"]["status"], "dead");
    assert_eq!(b["result"]["a"]["error"]["message"], "boom");
    assert_eq!(task(&done, "c")["status"], "succeeded");
    finish(server, schema).await;
}

#[tokio::test]
async fn failure_policies_on_sqlite() {
    failure_policies(Backend::Sqlite).await;
}

#[tokio::test]
async fn failure_policies_on_postgres() {
    failure_policies(Backend::Postgres).await;
}

/// Every malformed graph is refused with 422 `invalid_workflow` naming the problem, and
/// nothing is created.
async fn invalid_workflows(backend: Backend) {
    let Some((server, schema)) = start(backend, &[("MCP_WORKER_CONCURRENCY", "0")]).await else {
        return;
    };
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"key": format!("t{i}"), "type": "noop"}))
        .collect();
    let cases = [
        (json!([]), "at least one task"),
        (
            json!([{"key": "a", "type": "noop"}, {"key": "a", "type": "noop"}]),
            "duplicate key `a`",
        ),
        (
            json!([{"key": "a", "type": "noop", "depends_on": ["nope"]}]),
            "unknown key `nope`",
        ),
        (
            json!([
                {"key": "a", "type": "noop", "depends_on": ["c"]},
                {"key": "b", "type": "noop", "depends_on": ["a"]},
                {"key": "c", "type": "noop", "depends_on": ["b"]},
            ]),
            "cycle runs through `a`, `b`, `c`",
        ),
        (
            json!([{"key": "a", "type": "noop", "depends_on": ["a"]}]),
            "depends on itself",
        ),
        (Value::from(many), "at most 1000 tasks"),
    ];
    for (tasks, problem) in cases {
        let (status, body) = post(
            &server,
            "/v1/workflows",
            json!({"name": "bad", "tasks": tasks}),
        )
        .await;
        assert_eq!(status, 422, "{problem}: {body}");
        assert_eq!(body["error"]["code"], "invalid_workflow", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(problem), "{message} should name {problem}");
    }
    // A bad task is the task's own error, with its index.
    let (status, body) = post(
        &server,
        "/v1/workflows",
        json!({"name": "bad", "tasks": [{"key": "a", "type": "no.such.type"}]}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "unknown_task_type", "{body}");
    let (_, listed) = get(&server, "/v1/workflows").await;
    assert_eq!(listed["workflows"], json!([]), "nothing was created");
    let (_, tasks) = get(&server, "/v1/tasks").await;
    assert_eq!(tasks["tasks"], json!([]), "nothing was created");
    finish(server, schema).await;
}

#[tokio::test]
async fn invalid_workflows_are_refused_naming_the_problem_on_sqlite() {
    invalid_workflows(Backend::Sqlite).await;
}

#[tokio::test]
async fn invalid_workflows_are_refused_naming_the_problem_on_postgres() {
    invalid_workflows(Backend::Postgres).await;
}

/// Cancelling a workflow cancels its running and waiting tasks and leaves finished ones.
async fn cancel_workflow(backend: Backend) {
    let Some((server, schema)) = start(backend, &[]).await else {
        return;
    };
    let (status, created) = post(
        &server,
        "/v1/workflows",
        json!({"name": "long", "tasks": [
            {"key": "quick", "type": "noop"},
            {"key": "slow", "type": "sleep", "payload": {"ms": 30000}},
            {"key": "after", "type": "noop", "depends_on": ["slow"]},
        ]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let slow = task(&created, "slow")["id"].as_str().unwrap().to_owned();
    wait_for(&server, &slow, |t| t["status"] == "running").await;
    let quick = task(&created, "quick")["id"].as_str().unwrap().to_owned();
    wait_for(&server, &quick, is_final).await;

    let id = created["id"].as_str().unwrap();
    let (status, cancelled) = post(&server, &format!("/v1/workflows/{id}/cancel"), json!({})).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(task(&cancelled, "quick")["status"], "succeeded");
    assert_eq!(task(&cancelled, "slow")["status"], "cancelled");
    assert_eq!(task(&cancelled, "after")["status"], "cancelled");
    let (status, again) = post(&server, &format!("/v1/workflows/{id}/cancel"), json!({})).await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(again["error"]["code"], "workflow_already_finished");
    finish(server, schema).await;
}

#[tokio::test]
async fn cancelling_a_workflow_cancels_what_has_not_finished_on_sqlite() {
    cancel_workflow(Backend::Sqlite).await;
}

#[tokio::test]
async fn cancelling_a_workflow_cancels_what_has_not_finished_on_postgres() {
    cancel_workflow(Backend::Postgres).await;
}

/// A user sees and cancels only their own workflows; an operator sees all.
async fn users_see_their_own(backend: Backend) {
    let Some((server, schema)) = start(backend, &[("MCP_WORKER_CONCURRENCY", "0")]).await else {
        return;
    };
    let alice = client_as("user", "alice");
    let bob = client_as("user", "bob");
    let body = json!({"name": "mine", "tasks": [{"key": "a", "type": "noop"}]});
    let (status, created) = call(&alice, "POST", server.url("/v1/workflows"), Some(body)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["created_by"], "alice");
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/workflows/{id}");

    let (status, body) = call(&bob, "GET", server.url(&path), None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "workflow_not_found");
    let (status, body) = call(&bob, "POST", server.url(&format!("{path}/cancel")), None).await;
    assert_eq!(status, 404, "{body}");
    let (_, listed) = call(&bob, "GET", server.url("/v1/workflows"), None).await;
    assert_eq!(listed["workflows"], json!([]));

    let (status, _) = call(&alice, "GET", server.url(&path), None).await;
    assert_eq!(status, 200);
    let (_, listed) = call(&alice, "GET", server.url("/v1/workflows"), None).await;
    assert_eq!(listed["workflows"].as_array().unwrap().len(), 1);
    let operator = client_as("operator", "ops");
    let (status, _) = call(&operator, "GET", server.url(&path), None).await;
    assert_eq!(status, 200);
    finish(server, schema).await;
}

#[tokio::test]
async fn a_user_sees_only_their_own_workflows_on_sqlite() {
    users_see_their_own(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_user_sees_only_their_own_workflows_on_postgres() {
    users_see_their_own(Backend::Postgres).await;
}

/// A handler reporting progress 100 times in a second: `task.progress` events on `task:{id}`
/// come at most about 10 a second, and the latest report is stored on the task.
async fn progress(backend: Backend) {
    let Some((server, schema)) = start(backend, &[]).await else {
        return;
    };
    let (status, created) = post(
        &server,
        "/v1/tasks",
        json!({"type": "sleep", "payload": {"ms": 1000, "progress_steps": 100}, "delay_ms": 500}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let mut socket = connect(&server, Some(&token("admin", "watcher"))).await;
    let reply = request(
        &mut socket,
        json!({"id": 1, "op": "subscribe", "channel": format!("task:{id}")}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let mut reports = Vec::new();
    loop {
        let frame = next(&mut socket).await;
        if frame["op"] != "event" {
            continue;
        }
        match frame["event"]["type"].as_str() {
            Some("task.progress") => reports.push(frame["event"]["data"].clone()),
            Some("task.succeeded") => break,
            _ => {}
        }
    }
    // 100 reports in a second or more (the store's writes slow the handler): at most one event
    // per 100 ms of it, plus the last one flushed at the end.
    let stamps: Vec<chrono::DateTime<chrono::Utc>> = reports.iter().map(|r| at(r, "at")).collect();
    let span = (stamps[stamps.len() - 1] - stamps[0]).num_milliseconds();
    assert!(span >= 900, "reports spanned {span} ms");
    let most = (span / 100 + 2) as usize;
    assert!(
        (5..=most).contains(&reports.len()),
        "{} progress events in {span} ms: {reports:?}",
        reports.len()
    );
    let fractions: Vec<f64> = reports
        .iter()
        .map(|r| r["progress"].as_f64().unwrap())
        .collect();
    assert!(fractions.windows(2).all(|w| w[0] < w[1]), "{fractions:?}");
    assert_eq!(fractions.last(), Some(&1.0));
    let done = wait_for(&server, &id, is_final).await;
    assert_eq!(done["progress"]["progress"], 1.0, "{done}");
    assert_eq!(done["progress"]["message"], "step 100 of 100");
    finish(server, schema).await;
}

#[tokio::test]
async fn progress_is_stored_published_and_throttled_on_sqlite() {
    progress(Backend::Sqlite).await;
}

#[tokio::test]
async fn progress_is_stored_published_and_throttled_on_postgres() {
    progress(Backend::Postgres).await;
}

/// A dependent released on a node with free slots starts there at once (`task.started` without
/// `task.queued`: no claim took it); one in a paused queue is queued and waits for the queue.
async fn released_dependents_start_at_once(backend: Backend) {
    let Some((server, schema)) = start(backend, &[]).await else {
        return;
    };
    let mut watcher = connect(&server, Some(&token("admin", "watcher"))).await;
    let reply = request(
        &mut watcher,
        json!({"id": 1, "op": "subscribe", "channel": "tasks"}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let (status, paused) = post(&server, "/v1/queues/held/pause", json!({})).await;
    assert_eq!(status, 200, "{paused}");
    let (status, created) = post(
        &server,
        "/v1/workflows",
        json!({"name": "eager", "tasks": [
            {"key": "a", "type": "echo", "payload": {"n": 1}},
            {"key": "b", "type": "collect", "depends_on": ["a"]},
            {"key": "c", "type": "echo", "queue": "held", "depends_on": ["a"]},
        ]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (b, c) = (
        task(&created, "b")["id"].clone(),
        task(&created, "c")["id"].clone(),
    );
    let mut seen: Vec<(Value, String)> = Vec::new();
    // Until b succeeded and c was released.
    while !(seen.contains(&(b.clone(), "task.succeeded".into()))
        && seen.contains(&(c.clone(), "task.queued".into())))
    {
        let frame = next(&mut watcher).await;
        if frame["op"] != "event" {
            continue;
        }
        let id = frame["event"]["data"]["id"].clone();
        if id == b || id == c {
            let event = frame["event"]["type"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            seen.push((id, event));
        }
    }
    let of = |id: &Value| -> Vec<&str> {
        seen.iter()
            .filter(|(task, _)| task == id)
            .map(|(_, event)| event.as_str())
            .collect()
    };
    assert_eq!(
        of(&b),
        ["task.created", "task.started", "task.succeeded"],
        "{seen:?}"
    );
    assert_eq!(of(&c), ["task.created", "task.queued"], "{seen:?}");
    let held = wait_for(&server, c.as_str().unwrap(), |t| t["status"] == "queued").await;
    assert_eq!(held["attempts"], 0, "{held}");
    let ran = wait_for(&server, b.as_str().unwrap(), is_final).await;
    assert_eq!(ran["attempts"], 1, "{ran}");
    assert_eq!(ran["result"]["a"]["result"], json!({"n": 1}), "{ran}");
    let (status, _) = post(&server, "/v1/queues/held/resume", json!({})).await;
    assert_eq!(status, 200);
    let id = created["id"].as_str().unwrap();
    let done = wait_for_workflow(&server, id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    finish(server, schema).await;
}

#[tokio::test]
async fn released_dependents_start_at_once_on_sqlite() {
    released_dependents_start_at_once(Backend::Sqlite).await;
}

#[tokio::test]
async fn released_dependents_start_at_once_on_postgres() {
    released_dependents_start_at_once(Backend::Postgres).await;
}

/// A WebSocket worker's `task.progress` is stored; a task it does not hold is refused.
#[tokio::test]
async fn workers_report_progress_over_the_websocket() {
    let server = Server::start(&[(WORKER_TYPES.0, WORKER_TYPES.1.to_owned())]);
    let mut worker = connect(&server, Some(&token("service", "deployer"))).await;
    let reply = request(
        &mut worker,
        json!({"id": 1, "op": "worker.register", "types": ["ext.deploy"], "concurrency": 1}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let (_, created) = post(&server, "/v1/tasks", json!({"type": "ext.deploy"})).await;
    let given = assigned(&mut worker).await;
    let reply = request(
        &mut worker,
        json!({"id": 2, "op": "task.progress", "task_id": given["id"], "progress": 0.5, "message": "uploading"}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let id = created["id"].as_str().unwrap();
    let task = wait_for(&server, id, |t| !t["progress"].is_null()).await;
    assert_eq!(task["progress"]["progress"], 0.5);
    assert_eq!(task["progress"]["message"], "uploading");
    let reply = request(
        &mut worker,
        json!({"id": 3, "op": "task.progress", "task_id": given["id"], "progress": 1.5}),
    )
    .await;
    assert_eq!(reply["error"]["code"], "invalid_request", "{reply}");
    let reply = request(
        &mut worker,
        json!({"id": 4, "op": "task.progress", "task_id": uuid::Uuid::new_v4(), "progress": 0.1}),
    )
    .await;
    assert_eq!(reply["error"]["code"], "task_not_held", "{reply}");
}

/// A node is killed (SIGKILL) while a workflow's middle task runs: after its lease expires the
/// task is rescued (by a restart of the same node on SQLite, by a second node on PostgreSQL),
/// and the workflow completes.
async fn survives_a_killed_node(backend: Backend) {
    let env = [("MCP_LEASE_MS", "1500"), ("MCP_RESCUE_INTERVAL_MS", "200")];
    let is_postgres = matches!(backend, Backend::Postgres);
    let Some((mut first, schema)) = start(backend, &env).await else {
        return;
    };
    let (status, created) = post(
        &first,
        "/v1/workflows",
        json!({"name": "crash", "tasks": [
            {"key": "a", "type": "echo", "payload": {"n": 1}},
            {"key": "b", "type": "sleep", "payload": {"ms": 2000}, "depends_on": ["a"]},
            {"key": "c", "type": "collect", "depends_on": ["b"]},
        ]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let b = task(&created, "b")["id"].as_str().unwrap().to_owned();
    wait_for(&first, &b, |t| t["status"] == "running").await;
    first.kill9();
    let mut env: Vec<(&'static str, String)> =
        env.iter().map(|(k, v)| (*k, v.to_string())).collect();
    let second = match &schema {
        Some(schema) if is_postgres => {
            env.extend(schema.env());
            Server::start(&env)
        }
        _ => Server::start_in(first.data_dir.clone(), &env),
    };
    let done = wait_for_workflow(&second, created["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let b = task(&done, "b");
    assert_eq!(b["attempts"], 2, "run again after the rescue: {b}");
    assert_eq!(task(&done, "c")["result"]["b"]["status"], "succeeded");
    finish(second, schema).await;
}

#[tokio::test]
async fn a_workflow_completes_after_its_node_is_killed_on_sqlite() {
    survives_a_killed_node(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_workflow_completes_after_its_node_is_killed_on_postgres() {
    survives_a_killed_node(Backend::Postgres).await;
}

/// An external worker adds a child to its task's workflow: the child waits for that task, then
/// runs with it among its parents, and the workflow finishes only after the child.
#[tokio::test]
async fn a_running_task_adds_children_to_its_workflow() {
    let server = Server::start(&[(WORKER_TYPES.0, WORKER_TYPES.1.to_owned())]);
    let mut worker = connect(&server, Some(&token("service", "deployer"))).await;
    let reply = request(
        &mut worker,
        json!({"id": 1, "op": "worker.register", "types": ["ext.deploy"], "concurrency": 1}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let (status, created) = post(
        &server,
        "/v1/workflows",
        json!({"name": "spawn", "tasks": [{"key": "plan", "type": "ext.deploy"}]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let given = assigned(&mut worker).await;
    let adder = client_with(&token("service", "deployer"));
    let (status, added) = call(
        &adder,
        "POST",
        server.url(&format!("/v1/workflows/{id}/tasks")),
        Some(json!({"task_id": given["id"], "tasks": [
            {"key": "step", "type": "collect", "depends_on": ["plan"]},
        ]})),
    )
    .await;
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["tasks"][0]["status"], "waiting");
    // Another worker principal that does not hold the task cannot add to (and so read through) a
    // workflow it cannot see.
    let intruder = client_with(&token("service", "intruder"));
    let (status, refused) = call(
        &intruder,
        "POST",
        server.url(&format!("/v1/workflows/{id}/tasks")),
        Some(json!({"task_id": given["id"], "tasks": [
            {"key": "peek", "type": "collect", "depends_on": ["plan"]},
        ]})),
    )
    .await;
    assert_eq!(status, 404, "{refused}");
    assert_eq!(refused["error"]["code"], "workflow_not_found");
    let (status, refused) = call(
        &adder,
        "POST",
        server.url(&format!("/v1/workflows/{id}/tasks")),
        Some(json!({"task_id": given["id"], "tasks": [{"key": "plan", "type": "noop"}]})),
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_workflow");
    let reply = request(
        &mut worker,
        json!({"id": 2, "op": "task.complete", "task_id": given["id"], "result": {"files": 3}}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let done = wait_for_workflow(&server, id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        task(&done, "step")["result"]["plan"],
        json!({"status": "succeeded", "result": {"files": 3}})
    );
}

/// a (dies) → b → c, and `side`: a's death cancels b and c and the workflow fails. Retrying a
/// over REST brings b and c back to `waiting` (events `task.waiting`, `workflow.reopened`) and
/// the workflow runs again; a succeeds on its second attempt, b and c follow, and the
/// workflow succeeds.
async fn retry_revives(backend: Backend) {
    let Some((server, schema)) = start(backend, &[]).await else {
        return;
    };
    let (status, created) = post(
        &server,
        "/v1/workflows",
        json!({"name": "revive", "tasks": [
            {"key": "a", "type": "fail", "max_attempts": 1, "payload": {"times": 1}},
            {"key": "b", "type": "collect", "depends_on": ["a"]},
            {"key": "c", "type": "collect", "depends_on": ["b"]},
            {"key": "side", "type": "noop"},
        ]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let failed = wait_for_workflow(&server, &id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let (a, b, c) = (task(&failed, "a"), task(&failed, "b"), task(&failed, "c"));
    assert_eq!(a["status"], "dead");
    assert_eq!(b["status"], "cancelled");
    assert_eq!(b["error"]["details"]["cancelled_by"], a["id"]);
    assert_eq!(c["error"]["details"]["cancelled_by"], b["id"]);
    let a_id = a["id"].as_str().unwrap().to_owned();
    let c_id = c["id"].as_str().unwrap().to_owned();

    // A cancelled task whose dependency is still cancelled is not retried by itself.
    let (status, refused) = post(&server, &format!("/v1/tasks/{c_id}/retry"), json!({})).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "task_not_retryable");

    let mut socket = connect(&server, Some(&token("admin", "watcher"))).await;
    for (n, channel) in [format!("workflow:{id}"), format!("task:{c_id}")]
        .into_iter()
        .enumerate()
    {
        let reply = request(
            &mut socket,
            json!({"id": n, "op": "subscribe", "channel": channel}),
        )
        .await;
        assert_eq!(reply["ok"], true, "{reply}");
    }
    let (status, retried) = post(&server, &format!("/v1/tasks/{a_id}/retry"), json!({})).await;
    assert_eq!(status, 200, "{retried}");
    let mut seen = Vec::new();
    while !(seen.contains(&"workflow.reopened".to_owned())
        && seen.contains(&"task.waiting".to_owned())
        && seen.contains(&"workflow.succeeded".to_owned()))
    {
        let frame = next(&mut socket).await;
        if frame["op"] == "event" {
            seen.push(
                frame["event"]["type"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
    }
    let reopened = seen.iter().position(|e| e == "workflow.reopened").unwrap();
    let succeeded = seen.iter().position(|e| e == "workflow.succeeded").unwrap();
    assert!(reopened < succeeded, "{seen:?}");
    let done = wait_for_workflow(&server, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    for key in ["a", "b", "c", "side"] {
        assert_eq!(task(&done, key)["status"], "succeeded", "{done}");
    }
    assert_eq!(
        task(&done, "c")["result"]["b"]["result"]["a"]["status"],
        "succeeded"
    );
    finish(server, schema).await;
}

#[tokio::test]
async fn retrying_a_dead_task_revives_the_dependents_it_cancelled_on_sqlite() {
    retry_revives(Backend::Sqlite).await;
}

#[tokio::test]
async fn retrying_a_dead_task_revives_the_dependents_it_cancelled_on_postgres() {
    retry_revives(Backend::Postgres).await;
}

/// Children a worker adds over REST are held to its rules as its own creates are: its priority
/// ceiling (422 `priority_too_high`) and its daily quota (429 `quota_exceeded`).
#[tokio::test]
async fn children_added_over_rest_follow_the_creators_rules() {
    let server = Server::start(&[
        (WORKER_TYPES.0, WORKER_TYPES.1.to_owned()),
        ("MCP_QUOTA_TASKS_PER_DAY", "2".to_owned()),
    ]);
    let mut worker = connect(&server, Some(&token("service", "deployer"))).await;
    let reply = request(
        &mut worker,
        json!({"id": 1, "op": "worker.register", "types": ["ext.deploy"], "concurrency": 1}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let (status, created) = post(
        &server,
        "/v1/workflows",
        json!({"name": "bounded", "tasks": [{"key": "plan", "type": "ext.deploy"}]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let given = assigned(&mut worker).await;
    let adder = client_with(&token("service", "deployer"));
    let add = |tasks: Value| {
        call(
            &adder,
            "POST",
            server.url(&format!("/v1/workflows/{id}/tasks")),
            Some(json!({"task_id": given["id"], "tasks": tasks})),
        )
    };
    let (status, refused) = add(json!([{"key": "high", "type": "noop", "priority": 1000}])).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["code"], "priority_too_high");
    let (status, plain) = call(
        &adder,
        "POST",
        server.url("/v1/tasks"),
        Some(json!({"type": "noop", "priority": 1000})),
    )
    .await;
    assert_eq!(
        (status, &plain["error"]["code"]),
        (422, &refused["error"]["code"])
    );
    let (status, added) = add(json!([
        {"key": "one", "type": "noop"},
        {"key": "two", "type": "noop"},
    ]))
    .await;
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["tasks"][0]["created_by"], "deployer");
    let (status, over) = add(json!([{"key": "three", "type": "noop"}])).await;
    assert_eq!(status, 429, "{over}");
    assert_eq!(over["error"]["code"], "quota_exceeded");
}
