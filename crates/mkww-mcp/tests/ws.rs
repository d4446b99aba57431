//! The WebSocket API against the real binary: authentication (upgrade header, first frame,
//! timeout, expiry), subscriptions with live events and recovery by `since`, channel
//! permissions, publishing, tasks over the socket, and bad frames.

mod support;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Waits for the close frame and returns its code.
async fn closed_with(socket: &mut Socket) -> u16 {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("closed within 10 s")
        {
            Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
            Some(Ok(Message::Close(None))) | None => return 1005,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket error before close: {e}"),
        }
    }
}

/// An operator's socket subscribed to `tasks`.
async fn tasks_subscriber(server: &Server) -> Socket {
    let mut socket = connect(server, Some(&token("operator", "ops"))).await;
    let reply = request(
        &mut socket,
        json!({"id": 1, "op": "subscribe", "channel": "tasks"}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    socket
}

/// Collects `n` event frames.
async fn events(socket: &mut Socket, n: usize) -> Vec<Value> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let frame = next(socket).await;
        if frame["op"] == "event" {
            seen.push(frame);
        }
    }
    seen
}

#[tokio::test]
async fn subscribers_see_every_task_transition_in_order() {
    let server = Server::start(&[]);
    let mut socket = tasks_subscriber(&server).await;
    let response = client()
        .post(server.url("/v1/tasks"))
        .header("x-request-id", "trace-me-1")
        .json(&json!({"type": "echo", "payload": {"x": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let seen = events(&mut socket, 3).await;
    let types: Vec<&str> = seen
        .iter()
        .map(|e| e["event"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["task.created", "task.started", "task.succeeded"]);
    let offsets: Vec<u64> = seen.iter().map(|e| e["offset"].as_u64().unwrap()).collect();
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
    for event in &seen {
        assert_eq!(event["channel"], "tasks");
        assert_eq!(event["event"]["correlation_id"], "trace-me-1");
    }
    assert_eq!(seen[2]["event"]["data"]["result"], json!({"x": 1}));
}

/// A claim or an outcome batch publishes hundreds of events at once. A subscriber that reads
/// as fast as it can must get every one of them, whatever the burst's size: the fan-out buffer
/// (`event_buffer`, here far smaller than the burst) counts publications, not events, and a
/// connection's queue takes a burst whole.
#[tokio::test]
async fn a_subscriber_keeping_up_receives_every_event_of_a_500_task_burst() {
    let server = Server::start(&[("MCP_EVENT_BUFFER", "16".into())]);
    let mut socket = tasks_subscriber(&server).await;
    let tasks: Vec<Value> = (0..500).map(|_| json!({"type": "noop"})).collect();
    let (status, created) = post(&server, "/v1/tasks/batch", json!({"tasks": tasks})).await;
    assert_eq!(status, 201, "{created}");
    // Created, started, succeeded: three events a task, in offset order, none missing.
    read_events_in_order(&mut socket, 1500, Duration::from_secs(20)).await;
}

/// On PostgreSQL a node's in-process workers (a thousand of them) take every claimed batch at
/// once, and the node's runtime is busy with them for as long as the queue lasts. A subscriber
/// that reads as fast as it can still gets every event and is not closed as too slow (4008):
/// the fan-out's forwarders and writers run on threads of their own, not behind the workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_keeping_up_is_not_closed_while_a_thousand_workers_burn_down_postgres() {
    const TASKS: usize = 20_000;
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let mut env = schema.env();
    env.push(("MCP_WORKER_CONCURRENCY", "1000".into()));
    let server = Server::start(&env);
    let mut socket = tasks_subscriber(&server).await;
    // Added while the subscriber reads: it must not fall behind for the test's own doing.
    let url = server.url("/v1/tasks/batch");
    let adding = tokio::spawn(async move {
        let batch: Vec<Value> = (0..1000).map(|_| json!({"type": "noop"})).collect();
        for _ in 0..TASKS / 1000 {
            let response = client()
                .post(&url)
                .json(&json!({"tasks": batch}))
                .send()
                .await
                .expect("POST");
            assert_eq!(response.status(), 201);
        }
    });
    // Created, started, succeeded: three events a task, in offset order, none missing.
    read_events_in_order(&mut socket, 3 * TASKS, Duration::from_secs(60)).await;
    adding.await.unwrap();
    drop(server);
    schema.drop_schema().await;
}

/// Reads `n` event frames, each waited for at most `patience`, and asserts their offsets follow
/// one another (no gap, no reordering) and that the connection is not closed meanwhile. Only the
/// offset is read out of each frame, so that the client keeps up.
async fn read_events_in_order<S>(socket: &mut S, n: usize, patience: Duration)
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut last = None;
    let mut received = 0;
    while received < n {
        match tokio::time::timeout(patience, socket.next())
            .await
            .unwrap_or_else(|_| panic!("every event within {patience:?}"))
        {
            Some(Ok(Message::Text(text))) if text.starts_with(r#"{"op":"event""#) => {
                let offset = offset_of(text.as_str());
                if let Some(last) = last {
                    assert_eq!(offset, last + 1, "a gap or reordering");
                }
                last = Some(offset);
                received += 1;
            }
            Some(Ok(Message::Close(frame))) => {
                panic!("closed after {received} events: {frame:?}")
            }
            Some(Ok(_)) => {}
            other => panic!("after {received} events: {other:?}"),
        }
    }
}

/// The `offset` of an event frame (`{"op":"event","channel":…,"offset":N,…}`).
fn offset_of(frame: &str) -> u64 {
    const KEY: &str = r#""offset":"#;
    let start = frame.find(KEY).expect("an offset") + KEY.len();
    let digits = frame[start..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    frame[start..start + digits].parse().expect("a number")
}

#[tokio::test]
async fn recovers_missed_events_with_since() {
    let server = Server::start(&[("MCP_WORKER_CONCURRENCY", "0".into())]);
    let admin = token("admin", "root");
    let mut socket = connect(&server, Some(&admin)).await;
    request(
        &mut socket,
        json!({"id": 1, "op": "subscribe", "channel": "tasks"}),
    )
    .await;
    post(&server, "/v1/tasks", json!({"type": "noop"})).await;
    let first = events(&mut socket, 1).await.remove(0);
    let since = json!({"offset": first["offset"], "epoch": first["epoch"]});
    drop(socket);

    // While away: two more tasks.
    post(&server, "/v1/tasks", json!({"type": "noop"})).await;
    post(&server, "/v1/tasks", json!({"type": "noop"})).await;

    let mut socket = connect(&server, Some(&admin)).await;
    let reply = request(
        &mut socket,
        json!({"id": 2, "op": "subscribe", "channel": "tasks", "since": since}),
    )
    .await;
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    let missed = events(&mut socket, 2).await;
    let base = first["offset"].as_u64().unwrap();
    assert_eq!(
        missed
            .iter()
            .map(|e| e["offset"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [base + 1, base + 2]
    );
    // Then live ones, without duplicates.
    post(&server, "/v1/tasks", json!({"type": "noop"})).await;
    let live = events(&mut socket, 1).await.remove(0);
    assert_eq!(live["offset"].as_u64().unwrap(), base + 3);

    // Another epoch cannot be recovered.
    let mut other = connect(&server, Some(&admin)).await;
    let reply = request(
        &mut other,
        json!({"id": 3, "op": "subscribe", "channel": "tasks",
               "since": {"offset": 1, "epoch": "not-this-one"}}),
    )
    .await;
    assert_eq!(reply["result"]["recovered"], false, "{reply}");
    assert_eq!(reply["result"]["offset"].as_u64().unwrap(), base + 3);
}

#[tokio::test]
async fn authenticates_with_the_first_frame_or_is_closed() {
    let server = Server::start(&[("MCP_WS_AUTH_TIMEOUT_MS", "500".into())]);
    let mut socket = connect(&server, None).await;
    let refused = request(&mut socket, json!({"id": 1, "op": "ping"})).await;
    assert_eq!(refused["error"]["code"], "unauthenticated");
    let bad = request(&mut socket, json!({"id": 2, "op": "auth", "token": "nope"})).await;
    assert_eq!(bad["error"]["code"], "unauthenticated");
    let ok = request(
        &mut socket,
        json!({"id": 3, "op": "auth", "token": token("user", "u1")}),
    )
    .await;
    assert_eq!(ok["result"], json!({"subject": "u1", "role": "user"}));
    let pong = request(&mut socket, json!({"id": "p", "op": "ping"})).await;
    assert_eq!(
        pong,
        json!({"id": "p", "ok": true, "result": {"pong": true}})
    );

    let mut silent = connect(&server, None).await;
    assert_eq!(closed_with(&mut silent).await, 4001);

    // Bad credentials on the upgrade: a plain 401, no socket.
    let mut request = ws_url(&server).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("expected 401, got {other:?}"),
    }
}

#[tokio::test]
async fn asks_for_a_new_token_and_closes_when_none_comes() {
    let server = Server::start(&[("MCP_WS_REFRESH_NOTICE_MS", "60000".into())]);
    let short = || {
        mcp_api::token::Tokens::hs256(JWT_SECRET.as_bytes(), "mkww-mcp", "mkww-mcp")
            .unwrap()
            .issue(
                "brief",
                mcp_core::principal::Role::User,
                Duration::from_secs(2),
            )
            .unwrap()
    };
    let mut socket = connect(&server, Some(&short())).await;
    let notice = next(&mut socket).await;
    assert_eq!(notice["op"], "auth.refresh_required", "{notice}");
    assert_eq!(closed_with(&mut socket).await, 4002);

    // With a refresh, the connection carries on past the first token's expiry.
    let mut socket = connect(&server, Some(&short())).await;
    assert_eq!(next(&mut socket).await["op"], "auth.refresh_required");
    let renewed = request(
        &mut socket,
        json!({"id": 1, "op": "auth", "token": token("user", "brief")}),
    )
    .await;
    assert_eq!(renewed["ok"], true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pong = request(&mut socket, json!({"id": 2, "op": "ping"})).await;
    assert_eq!(pong["ok"], true);
    let other = request(
        &mut socket,
        json!({"id": 3, "op": "auth", "token": token("admin", "someone-else")}),
    )
    .await;
    assert_eq!(
        other["error"]["code"], "forbidden",
        "one subject per connection"
    );
}

#[tokio::test]
async fn enforces_channel_permissions() {
    let server = Server::start(&[("MCP_WORKER_CONCURRENCY", "0".into())]);
    let mut user = connect(&server, Some(&token("user", "alice"))).await;
    let refused = request(
        &mut user,
        json!({"id": 1, "op": "subscribe", "channel": "tasks"}),
    )
    .await;
    assert_eq!(refused["error"]["code"], "forbidden");
    // Her own task's channel: yes; someone else's: no.
    let (_, mine) = {
        let r = client_as("user", "alice")
            .post(server.url("/v1/tasks"))
            .json(&json!({"type": "noop"}))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    let (_, theirs) = post(&server, "/v1/tasks", json!({"type": "noop"})).await;
    let channel = |t: &Value| format!("task:{}", t["id"].as_str().unwrap());
    let ok = request(
        &mut user,
        json!({"id": 2, "op": "subscribe", "channel": channel(&mine)}),
    )
    .await;
    assert_eq!(ok["ok"], true, "{ok}");
    let no = request(
        &mut user,
        json!({"id": 3, "op": "subscribe", "channel": channel(&theirs)}),
    )
    .await;
    assert_eq!(no["error"]["code"], "forbidden");
    for (id, channel, allowed) in [
        (4, "user:alice", true),
        (5, "user:bob", false),
        (6, "broadcast", true),
        (7, "room:lobby", true),
        (8, "secret:stuff", false),
    ] {
        let reply = request(
            &mut user,
            json!({"id": id, "op": "subscribe", "channel": channel}),
        )
        .await;
        assert_eq!(reply["ok"] == true, allowed, "{channel}: {reply}");
    }
    let again = request(
        &mut user,
        json!({"id": 9, "op": "subscribe", "channel": "room:lobby"}),
    )
    .await;
    assert_eq!(again["error"]["code"], "already_subscribed");
    let publish = request(
        &mut user,
        json!({"id": 10, "op": "publish", "channel": "broadcast", "data": {}}),
    )
    .await;
    assert_eq!(
        publish["error"]["code"], "forbidden",
        "users do not broadcast"
    );
    let publish = request(
        &mut user,
        json!({"id": 11, "op": "publish", "channel": "tasks", "data": {}}),
    )
    .await;
    assert_eq!(
        publish["error"]["code"], "forbidden",
        "task channels are the server's"
    );
}

#[tokio::test]
async fn publishes_to_open_channels_and_runs_tasks_over_the_socket() {
    let server = Server::start(&[]);
    let mut alice = connect(&server, Some(&token("user", "alice"))).await;
    let mut bob = connect(&server, Some(&token("user", "bob"))).await;
    request(
        &mut bob,
        json!({"id": 1, "op": "subscribe", "channel": "room:lobby"}),
    )
    .await;
    let published = request(
        &mut alice,
        json!({"id": 1, "op": "publish", "channel": "room:lobby", "data": {"text": "hi"}}),
    )
    .await;
    assert_eq!(published["ok"], true, "{published}");
    let heard = events(&mut bob, 1).await.remove(0);
    assert_eq!(heard["event"]["type"], "message");
    assert_eq!(heard["event"]["data"], json!({"text": "hi"}));
    assert_eq!(heard["offset"], published["result"]["offset"]);

    let created = request(
        &mut alice,
        json!({"id": 2, "op": "task.create", "task": {"type": "sleep", "payload": {"ms": 60000}}}),
    )
    .await;
    assert_eq!(created["result"]["created"], true, "{created}");
    assert_eq!(created["result"]["task"]["created_by"], "alice");
    let task_id = created["result"]["task"]["id"].clone();
    let bad = request(
        &mut alice,
        json!({"id": 3, "op": "task.create", "task": {"type": "no.such.type"}}),
    )
    .await;
    assert_eq!(bad["error"]["code"], "unknown_task_type");
    let not_hers = request(
        &mut bob,
        json!({"id": 4, "op": "task.cancel", "task_id": task_id}),
    )
    .await;
    assert_eq!(not_hers["error"]["code"], "task_not_found");
    let cancelled = request(
        &mut alice,
        json!({"id": 5, "op": "task.cancel", "task_id": task_id}),
    )
    .await;
    assert_eq!(
        cancelled["result"]["task"]["status"], "cancelled",
        "{cancelled}"
    );
}

#[tokio::test]
async fn answers_bad_frames_with_stable_codes() {
    let server = Server::start(&[("MCP_WS_MAX_FRAME_BYTES", "1024".into())]);
    let mut socket = connect(&server, Some(&token("user", "fuzz"))).await;
    socket.send(Message::Text("not json".into())).await.unwrap();
    assert_eq!(next(&mut socket).await["error"]["code"], "malformed_frame");
    let unknown = request(&mut socket, json!({"id": 1, "op": "launch"})).await;
    assert_eq!(unknown["error"]["code"], "unknown_op");
    let missing = request(&mut socket, json!({"id": 2, "op": "subscribe"})).await;
    assert_eq!(missing["error"]["code"], "invalid_request");
    let unsubscribed = request(
        &mut socket,
        json!({"id": 3, "op": "unsubscribe", "channel": "x:y"}),
    )
    .await;
    assert_eq!(unsubscribed["error"]["code"], "not_subscribed");
    socket
        .send(Message::Text("x".repeat(4096).into()))
        .await
        .unwrap();
    assert_eq!(closed_with(&mut socket).await, u16::from(CloseCode::Size));

    let mut binary = connect(&server, Some(&token("user", "fuzz"))).await;
    binary
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(closed_with(&mut binary).await, 1003);
}

#[tokio::test]
async fn floods_are_refused_then_closed() {
    let server = Server::start(&[("MCP_WS_OPS_PER_SECOND", "5".into())]);
    let mut socket = connect(&server, Some(&token("user", "flood"))).await;
    for i in 0..40 {
        if socket
            .send(Message::Text(
                json!({"id": i, "op": "ping"}).to_string().into(),
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut limited = 0;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an answer")
        {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                if frame["error"]["code"] == "rate_limited" {
                    limited += 1;
                }
            }
            Some(Ok(Message::Close(Some(frame)))) => break u16::from(frame.code),
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(limited > 0, "rate_limited errors come before the close");
    assert_eq!(code, 4029);
}

async fn worker(server: &Server, types: &[&str], concurrency: usize) -> Socket {
    let mut socket = connect(server, Some(&token("service", "render-worker"))).await;
    let reply = request(
        &mut socket,
        json!({"id": "reg", "op": "worker.register", "types": types, "concurrency": concurrency}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    socket
}

const WORKER_ENV: (&str, &str) = ("MCP_WORKER_TASK_TYPES", "[\"render.deploy\"]");

fn worker_env(extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut env = vec![(WORKER_ENV.0, WORKER_ENV.1.to_string())];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    env
}

#[tokio::test]
async fn external_workers_run_tasks_assigned_to_them() {
    let server = Server::start(&worker_env(&[]));
    let mut socket = worker(&server, &["render.deploy"], 2).await;
    let (status, task) = post(
        &server,
        "/v1/tasks",
        json!({"type": "render.deploy", "payload": {"service": "web"}}),
    )
    .await;
    assert_eq!(status, 201, "{task}");
    let given = assigned(&mut socket).await;
    assert_eq!(given["id"], task["id"]);
    assert_eq!(given["payload"], json!({"service": "web"}));
    let (_, routes) = get(&server, "/v1/routes").await;
    let route = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "render.deploy")
        .expect("the route")
        .clone();
    assert_eq!(route["target"], "workers");
    assert_eq!(route["workers"][0]["outstanding"], 1);
    assert_eq!(route["breaker"], "closed");
    request(
        &mut socket,
        json!({"op": "task.heartbeat", "task_id": given["id"], "id": "hb"}),
    )
    .await;
    let done = request(
        &mut socket,
        json!({"id": "c", "op": "task.complete", "task_id": given["id"], "result": {"deployed": true}}),
    )
    .await;
    assert_eq!(done["ok"], true, "{done}");
    let finished = wait_for(&server, task["id"].as_str().unwrap(), is_final).await;
    assert_eq!(finished["status"], "succeeded");
    assert_eq!(finished["result"], json!({"deployed": true}));
    let twice = request(
        &mut socket,
        json!({"id": "c2", "op": "task.complete", "task_id": given["id"], "result": {}}),
    )
    .await;
    assert_eq!(
        twice["error"]["code"], "task_not_held",
        "never a duplicated completion"
    );
}

#[tokio::test]
async fn a_worker_that_leaves_gives_its_tasks_back_at_once() {
    let server = Server::start(&worker_env(&[]));
    let mut first = worker(&server, &["render.deploy"], 1).await;
    let (_, task) = post(&server, "/v1/tasks", json!({"type": "render.deploy"})).await;
    let given = assigned(&mut first).await;
    assert_eq!(given["attempts"], 1);
    drop(first);
    let mut second = worker(&server, &["render.deploy"], 1).await;
    let again = assigned(&mut second).await;
    assert_eq!(again["id"], task["id"]);
    assert_eq!(again["attempts"], 1, "the lost attempt was not counted");
    let failed = request(
        &mut second,
        json!({"id": 1, "op": "task.fail", "task_id": again["id"],
               "error": {"message": "bad config"}, "retryable": false}),
    )
    .await;
    assert_eq!(failed["ok"], true);
    let dead = wait_for(&server, task["id"].as_str().unwrap(), is_final).await;
    assert_eq!(dead["status"], "dead");
    assert_eq!(dead["error"]["message"], "bad config");
}

#[tokio::test]
async fn balances_tasks_across_workers() {
    let server = Server::start(&worker_env(&[]));
    let mut a = worker(&server, &["render.deploy"], 1).await;
    let mut b = worker(&server, &["render.deploy"], 1).await;
    for _ in 0..2 {
        post(&server, "/v1/tasks", json!({"type": "render.deploy"})).await;
    }
    let at_a = assigned(&mut a).await;
    let at_b = assigned(&mut b).await;
    assert_ne!(
        at_a["id"], at_b["id"],
        "one each: both had nothing outstanding"
    );
}

#[tokio::test]
async fn only_services_may_register_and_only_held_tasks_complete() {
    let server = Server::start(&worker_env(&[]));
    let mut user = connect(&server, Some(&token("user", "u"))).await;
    let refused = request(
        &mut user,
        json!({"id": 1, "op": "worker.register", "types": ["render.deploy"], "concurrency": 1}),
    )
    .await;
    assert_eq!(refused["error"]["code"], "forbidden");
    let mut socket = worker(&server, &["render.deploy"], 1).await;
    let stranger = request(
        &mut socket,
        json!({"id": 2, "op": "task.complete", "task_id": uuid::Uuid::now_v7().to_string()}),
    )
    .await;
    assert_eq!(stranger["error"]["code"], "task_not_held");
    let bad = request(
        &mut socket,
        json!({"id": 3, "op": "worker.register", "types": ["x"], "concurrency": 1}),
    )
    .await;
    assert_eq!(bad["error"]["code"], "already_registered");
    let (status, body) = post(&server, "/v1/tasks", json!({"type": "not.served"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("unknown_task_type"))
    );
}

#[tokio::test]
async fn an_open_breaker_holds_tasks_without_spending_attempts() {
    let server = Server::start(&worker_env(&[
        ("MCP_BREAKER_MIN_CALLS", "2"),
        ("MCP_BREAKER_OPEN_MS", "600000"),
    ]));
    let mut watcher = connect(&server, Some(&token("operator", "ops"))).await;
    let watching = request(
        &mut watcher,
        json!({"id": 1, "op": "subscribe", "channel": "system.breakers"}),
    )
    .await;
    assert_eq!(watching["ok"], true, "{watching}");
    let mut socket = worker(&server, &["render.deploy"], 4).await;
    for _ in 0..2 {
        post(
            &server,
            "/v1/tasks",
            json!({"type": "render.deploy", "max_attempts": 5,
                   "backoff": {"base_ms": 600000, "max_ms": 600000}}),
        )
        .await;
    }
    let given = [assigned(&mut socket).await, assigned(&mut socket).await];
    for (i, given) in given.iter().enumerate() {
        let reply = request(
            &mut socket,
            json!({"id": i, "op": "task.fail", "task_id": given["id"], "error": {"message": "down"}}),
        )
        .await;
        assert_eq!(reply["ok"], true);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, routes) = get(&server, "/v1/routes").await;
        let open = routes["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["type"] == "render.deploy" && r["breaker"] == "open");
        if open {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the breaker never opened: {routes}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let change = events(&mut watcher, 1).await.remove(0);
    assert_eq!(change["event"]["type"], "breaker.open");
    assert_eq!(change["event"]["data"]["route"], "render.deploy");
    let (_, held) = post(&server, "/v1/tasks", json!({"type": "render.deploy"})).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, held) = get(
        &server,
        &format!("/v1/tasks/{}", held["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(held["status"], "queued");
    assert_eq!(held["attempts"], 0, "waiting costs no attempt");
    let (_, tasks) = get(&server, "/v1/tasks?limit=10").await;
    for task in tasks["tasks"].as_array().unwrap() {
        assert!(task["attempts"].as_i64().unwrap() <= 1, "{task}");
    }
}
