//! The worker-takeover attack, replayed against the real binary over real sockets: a `service`
//! principal registered as a worker for the hub's own types (`echo`, `http.request`,
//! `webhook.deliver`), received other users' tasks with their payloads (an `Authorization`
//! header meant for `http.request`) and completed them with forged results. Now a worker may
//! register only types without an in-process handler and, with an API key limited by
//! `worker_types`, only the types the key covers; it is never assigned anything else, and it may
//! settle only the tasks assigned to its own connection.

mod support;

use serde_json::{Value, json};
use support::*;

/// Registers on `socket`; the reply frame.
async fn register(socket: &mut Socket, id: &str, types: &[&str]) -> Value {
    request(
        socket,
        json!({"id": id, "op": "worker.register", "types": types, "concurrency": 4}),
    )
    .await
}

fn assert_forbidden(reply: &Value, naming: &str) {
    assert_eq!(reply["error"]["code"], "worker_type_forbidden", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(naming), "names `{naming}`: {reply}");
}

/// Creates a task as `client`; its id.
async fn create(server: &Server, client: &reqwest::Client, body: Value) -> String {
    let (status, task) = call(client, "POST", server.url("/v1/tasks"), Some(body)).await;
    assert_eq!(status, 201, "{task}");
    task["id"].as_str().expect("an id").to_owned()
}

#[tokio::test]
async fn a_worker_may_not_register_the_hubs_own_types_nor_receive_their_tasks() {
    let server = Server::start(&[("MCP_WORKER_TASK_TYPES", r#"["unity.bake"]"#.into())]);
    let mut attacker = connect(&server, Some(&token("service", "mallory"))).await;

    for (i, types) in [
        &["echo"][..],
        &["http.request"],
        &["webhook.deliver"],
        &["unity.bake", "http.request"],
    ]
    .into_iter()
    .enumerate()
    {
        let reply = register(&mut attacker, &format!("r{i}"), types).await;
        assert_forbidden(&reply, types[types.len() - 1]);
        assert!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("in-process")),
            "{reply}"
        );
    }
    let (status, routes) = get(&server, "/v1/routes").await;
    assert_eq!(status, 200, "{routes}");
    for route in routes["routes"].as_array().expect("routes") {
        assert!(
            route["workers"].as_array().is_some_and(Vec::is_empty),
            "a refused registration registers nothing: {route}"
        );
    }

    // The same connection may still serve a type meant for workers.
    let reply = register(&mut attacker, "ok", &["unity.bake"]).await;
    assert_eq!(reply["ok"], true, "{reply}");

    // Another user's `echo` tasks, with a secret in their payloads, all run in-process.
    let victim = client_as("user", "victim");
    let payload = json!({"headers": {"Authorization": "Bearer victim-secret"}});
    let mut echoes = Vec::new();
    for _ in 0..6 {
        echoes.push(
            create(
                &server,
                &victim,
                json!({"type": "echo", "payload": payload}),
            )
            .await,
        );
    }
    for id in &echoes {
        let task = wait_for(&server, id, is_final).await;
        assert_eq!(task["status"], "succeeded", "{task}");
        assert_eq!(task["result"], payload, "the hub's own result: {task}");
    }
    // Assignments arrive in order: had any `echo` task been handed over, it would come first.
    let bake = create(&server, &victim, json!({"type": "unity.bake"})).await;
    let given = assigned(&mut attacker).await;
    assert_eq!(
        given["id"],
        bake.as_str(),
        "the worker's first task: {given}"
    );
}

#[tokio::test]
async fn a_key_limited_to_render_types_serves_only_those() {
    let server = Server::start(&[("MCP_WORKER_TASK_TYPES", r#"["unity.bake"]"#.into())]);
    let admin = client();
    let keys = server.url("/v1/api-keys");

    for bad in [
        json!(["re*nder"]),
        json!(["*.deploy"]),
        json!([""]),
        json!(["render.**"]),
        json!("render.*"),
    ] {
        let (status, body) = call(
            &admin,
            "POST",
            keys.clone(),
            Some(json!({"name": "bad", "role": "service", "worker_types": bad})),
        )
        .await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    }
    let (status, created) = call(
        &admin,
        "POST",
        keys.clone(),
        Some(json!({"name": "renderer", "role": "service", "worker_types": ["render.*"]})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["worker_types"], json!(["render.*"]));
    let key = created["key"].as_str().expect("the key").to_owned();
    let (status, unlimited) = call(
        &admin,
        "POST",
        keys.clone(),
        Some(json!({"name": "any", "role": "service"})),
    )
    .await;
    assert_eq!(status, 201, "{unlimited}");
    assert_eq!(unlimited["worker_types"], Value::Null);
    let (status, list) = call(&admin, "GET", keys, None).await;
    assert_eq!(status, 200, "{list}");
    let listed = |id: &Value| {
        list["api_keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["id"] == *id))
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(listed(&created["id"])["worker_types"], json!(["render.*"]));
    assert_eq!(listed(&unlimited["id"])["worker_types"], Value::Null);

    let mut renderer = connect(&server, Some(&key)).await;
    assert_forbidden(
        &register(&mut renderer, "1", &["unity.bake"]).await,
        "unity.bake",
    );
    assert_forbidden(
        &register(&mut renderer, "2", &["render.x", "unity.bake"]).await,
        "unity.bake",
    );
    assert_forbidden(&register(&mut renderer, "3", &["echo"]).await, "echo");
    let reply = register(&mut renderer, "4", &["render.x"]).await;
    assert_eq!(reply["ok"], true, "{reply}");

    // A `unity.bake` task created first waits for a worker entitled to it; the renderer gets
    // only its own type.
    let creator = client_as("service", "creator");
    let bake = create(&server, &creator, json!({"type": "unity.bake"})).await;
    let render = create(&server, &creator, json!({"type": "render.x"})).await;
    let given = assigned(&mut renderer).await;
    assert_eq!(given["id"], render.as_str(), "{given}");
    let (status, task) = get(&server, &format!("/v1/tasks/{bake}")).await;
    assert_eq!(status, 200, "{task}");
    assert_eq!(
        task["status"], "queued",
        "nobody entitled serves it: {task}"
    );
    let done = request(
        &mut renderer,
        json!({"id": "c", "op": "task.complete", "task_id": render, "result": {"ok": 1}}),
    )
    .await;
    assert_eq!(done["ok"], true, "{done}");
    let task = wait_for(&server, &render, is_final).await;
    assert_eq!(task["status"], "succeeded", "{task}");
}

#[tokio::test]
async fn a_worker_may_settle_only_the_tasks_assigned_to_its_connection() {
    let server = Server::start(&[("MCP_WORKER_TASK_TYPES", r#"["render.x"]"#.into())]);
    let mut holder = connect(&server, Some(&token("service", "holder"))).await;
    let reply = register(&mut holder, "reg", &["render.x"]).await;
    assert_eq!(reply["ok"], true, "{reply}");
    let owner = client_as("user", "owner");
    let id = create(&server, &owner, json!({"type": "render.x"})).await;
    let given = assigned(&mut holder).await;
    assert_eq!(given["id"], id.as_str());

    // A second worker of the same type, and a plain client, try to settle it.
    let mut forger = connect(&server, Some(&token("service", "forger"))).await;
    let reply = register(&mut forger, "reg", &["render.x"]).await;
    assert_eq!(reply["ok"], true, "{reply}");
    let mut bystander = connect(&server, Some(&token("service", "bystander"))).await;
    let forgeries = [
        json!({"id": "f1", "op": "task.complete", "task_id": id, "result": {"forged": true}}),
        json!({"id": "f2", "op": "task.fail", "task_id": id, "error": {"message": "x"}, "retryable": false}),
        json!({"id": "f3", "op": "task.heartbeat", "task_id": id}),
        json!({"id": "f4", "op": "task.complete", "task_id": uuid::Uuid::now_v7(), "result": {}}),
    ];
    for frame in forgeries {
        let reply = request(&mut forger, frame).await;
        assert_eq!(reply["error"]["code"], "task_not_held", "{reply}");
    }
    let reply = request(
        &mut bystander,
        json!({"id": "f5", "op": "task.complete", "task_id": id, "result": {"forged": true}}),
    )
    .await;
    assert_eq!(reply["error"]["code"], "task_not_held", "{reply}");
    let (status, task) = get(&server, &format!("/v1/tasks/{id}")).await;
    assert_eq!(status, 200, "{task}");
    assert_eq!(
        task["status"], "running",
        "untouched by the forgeries: {task}"
    );
    assert_eq!(task["result"], Value::Null, "{task}");

    let reply = request(
        &mut holder,
        json!({"id": "done", "op": "task.complete", "task_id": id, "result": {"rendered": 1}}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let task = wait_for(&server, &id, is_final).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(
        task["result"],
        json!({"rendered": 1}),
        "the holder's result: {task}"
    );
}
