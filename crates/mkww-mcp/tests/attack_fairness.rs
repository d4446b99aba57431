//! Fair sharing between tenants, replayed against the real binary over real sockets: a `user`
//! who floods the queue with long tasks at the highest priority holds at most its share of a
//! node's slots and cannot outrank operators; a timeout longer than the role's is refused; a
//! `user`'s `concurrency_key` and `idempotency_key` are its own, so another principal's tasks
//! with the same key are neither blocked nor answered by it, and a hook's idempotency key cannot
//! be taken in advance.

mod support;

use mcp_integrations::hooks::hmac_sha256;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::*;

/// Slots of the test node: a user's share (the default half) is two of them.
const SLOTS: &str = "4";

async fn post_as(
    client: &reqwest::Client,
    server: &Server,
    path: &str,
    body: Value,
) -> (u16, Value) {
    call(client, "POST", server.url(path), Some(body)).await
}

/// The ids of `subject`'s tasks that run now (read as an admin).
async fn running_of(server: &Server, subject: &str) -> usize {
    let (status, page) = get(server, "/v1/tasks?status=running&limit=200").await;
    assert_eq!(status, 200, "{page}");
    page["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter(|t| t["created_by"] == subject)
        .count()
}

/// Polls until `subject` runs `n` tasks (or fails after 30 s).
async fn wait_running(server: &Server, subject: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = running_of(server, subject).await;
        if now == n {
            return;
        }
        assert!(now < n, "{subject} runs {now} tasks, more than {n}");
        assert!(
            Instant::now() < deadline,
            "{subject} runs {now} tasks, never {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The flood: 64 hour-long sleeps from one user. At the highest priority it is refused; at the
/// ceiling it is taken, but holds only the user's share of the slots, so an admin's `noop` and
/// another user's task still run at once.
async fn flood_holds_only_its_share(env: &[(&str, String)]) {
    let mut env = env.to_vec();
    env.push(("MCP_WORKER_CONCURRENCY", SLOTS.into()));
    let server = Server::start(&env);
    let mallory = client_as("user", "mallory");
    let flood = |priority: i64| {
        let tasks: Vec<Value> = (0..64)
            .map(|_| json!({"type": "sleep", "payload": {"ms": 3_600_000}, "priority": priority}))
            .collect();
        json!({ "tasks": tasks })
    };

    let (status, refused) =
        post_as(&mallory, &server, "/v1/tasks/batch", flood(2_147_483_647)).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["code"], "priority_too_high");
    assert_eq!(refused["error"]["details"]["index"], 0);
    assert_eq!(refused["error"]["details"]["limit"], 10);
    assert_eq!(running_of(&server, "mallory").await, 0);
    let (_, none) = get(&server, "/v1/tasks?limit=10").await;
    assert_eq!(none["tasks"], json!([]), "a refused batch creates nothing");

    let (status, created) = post_as(&mallory, &server, "/v1/tasks/batch", flood(10)).await;
    assert_eq!(status, 201, "{created}");
    wait_running(&server, "mallory", 2).await;

    // The admin's task at the lowest priority runs while the flood waits.
    let admin = client();
    let (status, noop) = post_as(&admin, &server, "/v1/tasks", json!({"type": "noop"})).await;
    assert_eq!(status, 201, "{noop}");
    let noop = wait_for(&server, noop["id"].as_str().unwrap(), is_final).await;
    assert_eq!(noop["status"], "succeeded", "{noop}");

    // Another user has a share of its own.
    let bob = client_as("user", "bob");
    let (status, task) = post_as(
        &bob,
        &server,
        "/v1/tasks",
        json!({"type": "echo", "payload": {"hi": 1}}),
    )
    .await;
    assert_eq!(status, 201, "{task}");
    let task = wait_for(&server, task["id"].as_str().unwrap(), is_final).await;
    assert_eq!(task["status"], "succeeded", "{task}");

    // Still two of mallory's, never more.
    assert_eq!(running_of(&server, "mallory").await, 2);
}

#[tokio::test]
async fn a_users_flood_of_long_tasks_holds_only_its_share_of_the_slots() {
    flood_holds_only_its_share(&[]).await;
}

#[tokio::test]
async fn a_users_flood_holds_only_its_share_on_postgresql_too() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    flood_holds_only_its_share(&schema.env()).await;
    schema.drop_schema().await;
}

#[tokio::test]
async fn a_timeout_longer_than_the_roles_is_refused() {
    let server = Server::start(&[("MCP_WORKER_CONCURRENCY", "0".into())]);
    let day = json!({"type": "sleep", "payload": {"ms": 10}, "timeout_ms": 86_400_000});
    let (status, refused) = post_as(
        &client_as("user", "alice"),
        &server,
        "/v1/tasks",
        day.clone(),
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["code"], "timeout_too_long");
    assert_eq!(refused["error"]["details"]["limit"], 3_600_000);
    // A service may run for a day (its default bound); an operator longer still.
    let (status, task) = post_as(&client_as("service", "bot"), &server, "/v1/tasks", day).await;
    assert_eq!(status, 201, "{task}");
    let week = json!({"type": "noop", "timeout_ms": 7 * 86_400_000u64});
    let (status, task) = post_as(&client_as("operator", "ops"), &server, "/v1/tasks", week).await;
    assert_eq!(status, 201, "{task}");
    // Over WebSocket too: the same service decides.
    let mut socket = connect(&server, Some(&token("user", "alice"))).await;
    let reply = request(
        &mut socket,
        json!({"id": 5, "op": "task.create", "task": {"type": "noop", "timeout_ms": 86_400_000}}),
    )
    .await;
    assert_eq!(reply["error"]["code"], "timeout_too_long", "{reply}");
}

#[tokio::test]
async fn two_users_with_one_concurrency_key_do_not_block_each_other() {
    let server = Server::start(&[("MCP_WORKER_CONCURRENCY", SLOTS.into())]);
    let alice = client_as("user", "alice");
    let key =
        json!({"type": "sleep", "payload": {"ms": 3_600_000}, "concurrency_key": "deploy:web"});
    let (status, held) = post_as(&alice, &server, "/v1/tasks", key).await;
    assert_eq!(status, 201, "{held}");
    assert_eq!(held["concurrency_key"], "deploy:web", "shown as sent");
    wait_for(&server, held["id"].as_str().unwrap(), |t| {
        t["status"] == "running"
    })
    .await;

    // Bob's task and an admin's with the same key run while alice's holds hers.
    for (who, client) in [("bob", client_as("user", "bob")), ("admin", client())] {
        let (status, task) = post_as(
            &client,
            &server,
            "/v1/tasks",
            json!({"type": "noop", "concurrency_key": "deploy:web"}),
        )
        .await;
        assert_eq!(status, 201, "{task}");
        let task = wait_for(&server, task["id"].as_str().unwrap(), is_final).await;
        assert_eq!(task["status"], "succeeded", "{who}: {task}");
        assert_eq!(task["concurrency_key"], "deploy:web");
    }
    let (_, held) = get(
        &server,
        &format!("/v1/tasks/{}", held["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(held["status"], "running", "{held}");
}

#[tokio::test]
async fn an_operators_shared_concurrency_key_still_serialises() {
    let server = Server::start(&[("MCP_WORKER_CONCURRENCY", SLOTS.into())]);
    let (status, first) = post_as(
        &client(),
        &server,
        "/v1/tasks",
        json!({"type": "sleep", "payload": {"ms": 3_600_000}, "concurrency_key": "release"}),
    )
    .await;
    assert_eq!(status, 201, "{first}");
    let first = first["id"].as_str().unwrap().to_owned();
    wait_for(&server, &first, |t| t["status"] == "running").await;
    let (status, second) = post_as(
        &client_as("operator", "ops"),
        &server,
        "/v1/tasks",
        json!({"type": "noop", "concurrency_key": "release"}),
    )
    .await;
    assert_eq!(status, 201, "{second}");
    let second = second["id"].as_str().unwrap().to_owned();
    // A task without the key passes it; the operator's waits behind the admin's.
    let (_, free) = post_as(&client(), &server, "/v1/tasks", json!({"type": "noop"})).await;
    wait_for(&server, free["id"].as_str().unwrap(), is_final).await;
    let (_, waiting) = get(&server, &format!("/v1/tasks/{second}")).await;
    assert_eq!(waiting["status"], "queued", "{waiting}");
    let (status, _) = post_as(
        &client(),
        &server,
        &format!("/v1/tasks/{first}/cancel"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    let done = wait_for(&server, &second, is_final).await;
    assert_eq!(done["status"], "succeeded", "{done}");
}

#[tokio::test]
async fn idempotency_keys_are_per_user() {
    let server = Server::start(&[("MCP_WORKER_CONCURRENCY", "0".into())]);
    let body = json!({"type": "noop", "idempotency_key": "order-42"});
    let alice = client_as("user", "alice");
    let (status, first) = post_as(&alice, &server, "/v1/tasks", body.clone()).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["idempotency_key"], "order-42", "shown as sent");
    let (status, again) = post_as(&alice, &server, "/v1/tasks", body.clone()).await;
    assert_eq!((status, &again["id"]), (200, &first["id"]), "{again}");
    let (status, bobs) = post_as(&client_as("user", "bob"), &server, "/v1/tasks", body).await;
    assert_eq!(status, 201, "bob's key is his own: {bobs}");
    assert_ne!(bobs["id"], first["id"]);
}

const GITHUB_SECRET: &str = "fairness-e2e-secret";

#[tokio::test]
async fn a_user_cannot_take_a_hooks_idempotency_key_in_advance() {
    let dir = temp_dir();
    let config = format!(
        r#"
worker_concurrency = 0
[hooks.gh]
kind = "github"
secret = "{GITHUB_SECRET}"
[[hooks.gh.rules]]
event = "push"
task = "noop"
"#
    );
    std::fs::write(dir.join("mkww-mcp.toml"), config).unwrap();
    let server = Server::start_in(dir, &[]);

    // The key the hook's rule 0 will use for delivery `d-1`.
    let squat = json!({"type": "noop", "idempotency_key": "hook:gh:d-1:0"});
    let (status, squatted) =
        post_as(&client_as("user", "mallory"), &server, "/v1/tasks", squat).await;
    assert_eq!(status, 201, "{squatted}");

    let body = json!({"after": "abc", "repository": {"full_name": "o/r"}}).to_string();
    let signature = hmac_sha256(GITHUB_SECRET.as_bytes(), &[body.as_bytes()]);
    let hex: String = signature.iter().map(|b| format!("{b:02x}")).collect();
    let response = reqwest::Client::new()
        .post(server.url("/v1/hooks/gh"))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", "d-1")
        .header("x-hub-signature-256", format!("sha256={hex}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let accepted: Value = response.json().await.unwrap();
    let hooked = accepted["tasks"][0].as_str().expect("the hook's task");
    assert_ne!(
        hooked,
        squatted["id"].as_str().unwrap(),
        "the hook got its own task"
    );
    let (_, task) = get(&server, &format!("/v1/tasks/{hooked}")).await;
    assert_eq!(task["created_by"], "hook:gh", "{task}");
    assert_eq!(task["idempotency_key"], "hook:gh:d-1:0");
}
