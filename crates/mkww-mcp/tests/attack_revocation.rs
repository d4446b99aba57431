//! Revocation reaches everything at once (issue 12, item 3), replayed against the real binary:
//! a revoked API key loses its open WebSocket (close `4003`) and its HTTP access; logout and a
//! disabled user refuse the access tokens they covered (`token_revoked`); a demoted operator
//! loses its WebSocket, and a role-changing `auth` frame drops the subscriptions the new role
//! may not hold; and on a cluster a revocation on one node takes effect on the others, through
//! the bus or, on a node without it, through the store it polls.
//!
//! Every wait polls against a deadline of 5 s; the measured times are printed (they should be
//! well under a second, but a loaded machine must not make the tests flaky).

mod support;

use futures::StreamExt;
use serde_json::{Value, json};
use std::io::Write as _;
use std::time::{Duration, Instant};
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// How long a revocation may take to reach a credential in these tests (the design bound is
/// `revocation_poll_ms`, 500 ms by default, or at once through the bus).
const BOUND: Duration = Duration::from_secs(5);

/// The close code of a revoked credential (docs/websocket.md).
const REVOKED: u16 = 4003;

/// Prints straight to stderr: libtest hides what `eprintln!` prints in a passing test.
fn report(what: &str, took: Duration) {
    let _ = writeln!(
        std::io::stderr(),
        "revocation: {what} took {} ms",
        took.as_millis()
    );
}

/// Waits (at most `BOUND`) for the socket's close frame, skipping other frames; its code.
async fn closed_with(socket: &mut Socket) -> u16 {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => panic!("the socket was not closed within {BOUND:?}"),
            Ok(Some(Ok(Message::Close(Some(frame))))) => return u16::from(frame.code),
            Ok(Some(Ok(Message::Close(None))) | None) => return 1005,
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => panic!("socket error before close: {e}"),
        }
    }
}

/// Polls `GET path` with `credential` until it answers 401, at most `BOUND`; the error body.
async fn refused_within(server: &Server, credential: &str, path: &str) -> (Duration, Value) {
    let started = Instant::now();
    loop {
        let (status, body) = call(&client_with(credential), "GET", server.url(path), None).await;
        if status == 401 {
            return (started.elapsed(), body);
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            started.elapsed() < BOUND,
            "{path} still answered 200 after {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn create_user(server: &Server, username: &str, role: &str) -> (String, String) {
    let password = format!("{username}-password-123");
    let (status, body) = post(
        server,
        "/v1/users",
        json!({"username": username, "role": role, "password": password}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    (body["user"]["id"].as_str().unwrap().to_owned(), password)
}

/// Logs in: the access token and the refresh token.
async fn login(server: &Server, username: &str, password: &str) -> (String, String) {
    let (status, tokens) = call(
        &reqwest::Client::new(),
        "POST",
        server.url("/v1/auth/login"),
        Some(json!({"username": username, "password": password})),
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    (
        tokens["access_token"].as_str().unwrap().to_owned(),
        tokens["refresh_token"].as_str().unwrap().to_owned(),
    )
}

async fn patch_user(server: &Server, id: &str, change: Value) {
    let (status, body) = call(
        &client(),
        "PATCH",
        server.url(&format!("/v1/users/{id}")),
        Some(change),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// An API key with `role`: its id and the key itself.
async fn api_key(server: &Server, role: &str) -> (String, String) {
    let (status, created) = post(
        server,
        "/v1/api-keys",
        json!({"name": "worker-bot", "role": role}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    (
        created["id"].as_str().unwrap().to_owned(),
        created["key"].as_str().unwrap().to_owned(),
    )
}

async fn revoke_key(server: &Server, id: &str) {
    let (status, body) = call(
        &client(),
        "DELETE",
        server.url(&format!("/v1/api-keys/{id}")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

async fn subscribed(socket: &mut Socket, id: u64, channel: &str) {
    let reply = request(
        socket,
        json!({"id": id, "op": "subscribe", "channel": channel}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
}

/// The upgrade with `credential` is refused with 401.
async fn upgrade_refused(server: &Server, credential: &str) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = ws_url(server).into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("the upgrade was not refused: {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn a_revoked_api_key_loses_its_open_websocket_and_every_request() {
    let server = Server::start(&[("MCP_WORKER_TASK_TYPES", "[\"render.deploy\"]".into())]);
    let (id, key) = api_key(&server, "service").await;
    // The attack: a worker bot whose key is revoked kept its socket, its subscriptions and its
    // task assignments.
    let mut bot = connect(&server, Some(&key)).await;
    let registered = request(
        &mut bot,
        json!({"id": 1, "op": "worker.register", "types": ["render.deploy"], "concurrency": 1}),
    )
    .await;
    assert_eq!(registered["ok"], true, "{registered}");
    subscribed(&mut bot, 2, "broadcast").await;
    let (status, _) = call(
        &client_with(&key),
        "POST",
        server.url("/v1/tasks"),
        Some(json!({"type": "noop"})),
    )
    .await;
    assert_eq!(status, 201, "the key works before");

    let started = Instant::now();
    revoke_key(&server, &id).await;
    assert_eq!(closed_with(&mut bot).await, REVOKED);
    report("API key → its WebSocket closed", started.elapsed());
    let (status, body) = call(
        &client_with(&key),
        "POST",
        server.url("/v1/tasks"),
        Some(json!({"type": "noop"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    upgrade_refused(&server, &key).await;

    // Nothing is handed to the closed worker any more: the task waits for another one.
    let (status, task) = post(&server, "/v1/tasks", json!({"type": "render.deploy"})).await;
    assert_eq!(status, 201, "{task}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, task) = get(
        &server,
        &format!("/v1/tasks/{}", task["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(task["status"], "queued", "{task}");
}

#[tokio::test]
async fn logout_refuses_that_sessions_access_tokens_and_only_them() {
    let server = Server::start(&[]);
    let (_, password) = create_user(&server, "alice", "user").await;
    let (first, refresh) = login(&server, "alice", &password).await;
    let (second, _) = login(&server, "alice", &password).await;
    let mut socket = connect(&server, Some(&first)).await;
    subscribed(&mut socket, 1, "user:alice").await;

    let started = Instant::now();
    let (status, _) = call(
        &reqwest::Client::new(),
        "POST",
        server.url("/v1/auth/logout"),
        Some(json!({"refresh_token": refresh})),
    )
    .await;
    assert_eq!(status, 204);
    let (took, body) = refused_within(&server, &first, "/v1/auth/me").await;
    report("logout → access token refused", took);
    assert_eq!(body["error"]["code"], "token_revoked", "{body}");
    assert_eq!(closed_with(&mut socket).await, REVOKED);
    report("logout → its WebSocket closed", started.elapsed());
    upgrade_refused(&server, &first).await;

    let (status, me) = call(
        &client_with(&second),
        "GET",
        server.url("/v1/auth/me"),
        None,
    )
    .await;
    assert_eq!(status, 200, "another session stays signed in: {me}");
}

#[tokio::test]
async fn a_disabled_user_is_refused_at_once_everywhere() {
    let server = Server::start(&[]);
    let (id, password) = create_user(&server, "bob", "user").await;
    let (access, refresh) = login(&server, "bob", &password).await;
    let mut socket = connect(&server, Some(&access)).await;
    subscribed(&mut socket, 1, "user:bob").await;

    let started = Instant::now();
    patch_user(&server, &id, json!({"disabled": true})).await;
    let (took, body) = refused_within(&server, &access, "/v1/tasks").await;
    report("disabled user → access token refused", took);
    assert_eq!(body["error"]["code"], "token_revoked", "{body}");
    assert_eq!(closed_with(&mut socket).await, REVOKED);
    report("disabled user → WebSocket closed", started.elapsed());
    let (status, _) = call(
        &reqwest::Client::new(),
        "POST",
        server.url("/v1/auth/refresh"),
        Some(json!({"refresh_token": refresh})),
    )
    .await;
    assert_eq!(status, 401, "no new tokens either");

    // Enabled again, bob logs in anew and is let in (the cut-off does not outlive it).
    patch_user(&server, &id, json!({"disabled": false})).await;
    let (fresh, _) = login(&server, "bob", &password).await;
    let (status, me) = call(&client_with(&fresh), "GET", server.url("/v1/auth/me"), None).await;
    assert_eq!(status, 200, "{me}");
}

#[tokio::test]
async fn a_demoted_operator_loses_its_socket_and_its_old_token() {
    let server = Server::start(&[]);
    let (id, password) = create_user(&server, "olga", "operator").await;
    let (operator, _) = login(&server, "olga", &password).await;
    let mut socket = connect(&server, Some(&operator)).await;
    subscribed(&mut socket, 1, "tasks").await;

    let started = Instant::now();
    patch_user(&server, &id, json!({"role": "user"})).await;
    assert_eq!(closed_with(&mut socket).await, REVOKED);
    report("role change → WebSocket closed", started.elapsed());
    let (_, body) = refused_within(&server, &operator, "/v1/tasks").await;
    assert_eq!(body["error"]["code"], "token_revoked", "{body}");

    // Logged in again, olga is a user: the `tasks` channel is closed to her.
    let (user, _) = login(&server, "olga", &password).await;
    let (status, me) = call(&client_with(&user), "GET", server.url("/v1/auth/me"), None).await;
    assert_eq!((status, me["role"].as_str()), (200, Some("user")), "{me}");
    let mut socket = connect(&server, Some(&user)).await;
    let refused = request(
        &mut socket,
        json!({"id": 2, "op": "subscribe", "channel": "tasks"}),
    )
    .await;
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
}

#[tokio::test]
async fn an_auth_frame_that_lowers_the_role_drops_the_subscriptions_it_no_longer_allows() {
    let server = Server::start(&[("MCP_WORKER_CONCURRENCY", "0".into())]);
    // Two valid tokens of one subject with different roles (as around a role change).
    let mut socket = connect(&server, Some(&token("operator", "otto"))).await;
    subscribed(&mut socket, 1, "tasks").await;
    subscribed(&mut socket, 2, "user:otto").await;
    let mut control = connect(&server, Some(&token("admin", "control"))).await;
    subscribed(&mut control, 1, "tasks").await;

    send(
        &mut socket,
        json!({"id": 3, "op": "auth", "token": token("user", "otto")}),
    )
    .await;
    let mut before_reply = Vec::new();
    let reauth = loop {
        let frame = next(&mut socket).await;
        if frame["id"] == 3 {
            break frame;
        }
        before_reply.push(frame);
    };
    assert_eq!(reauth["ok"], true, "{reauth}");
    assert!(
        before_reply.iter().any(|f| f["op"] == "unsubscribed"
            && f["channel"] == "tasks"
            && f["reason"] == "forbidden"),
        "the client is told which subscription went: {before_reply:?}"
    );
    assert_eq!(reauth["result"]["role"], "user");
    assert_eq!(
        reauth["result"]["unsubscribed"],
        json!(["tasks"]),
        "{reauth}"
    );

    // Someone else's task: the control subscriber sees it, otto's socket does not.
    let (status, task) = call(
        &client_as("user", "someone-else"),
        "POST",
        server.url("/v1/tasks"),
        Some(json!({"type": "noop"})),
    )
    .await;
    assert_eq!(status, 201, "{task}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the control never saw the task");
        let frame = next(&mut control).await;
        if frame["op"] == "event" && frame["event"]["data"]["id"] == task["id"] {
            break;
        }
    }
    let mut frames = Vec::new();
    send(&mut socket, json!({"id": 4, "op": "ping"})).await;
    loop {
        let frame = next(&mut socket).await;
        if frame["id"] == 4 {
            break;
        }
        frames.push(frame);
    }
    assert!(
        !frames.iter().any(|f| f["op"] == "event"),
        "no foreign task event after the demotion: {frames:?}"
    );
    let again = request(
        &mut socket,
        json!({"id": 5, "op": "subscribe", "channel": "tasks"}),
    )
    .await;
    assert_eq!(again["error"]["code"], "forbidden", "{again}");
    let kept = request(
        &mut socket,
        json!({"id": 6, "op": "unsubscribe", "channel": "user:otto"}),
    )
    .await;
    assert_eq!(kept["ok"], true, "what the role still allows stays: {kept}");
}

#[tokio::test]
async fn a_revocation_on_one_node_reaches_the_others_within_the_bound() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let Some(redis) = redis_url().await else {
        return;
    };
    let prefix = format!("mcp-revocation-{}", uuid::Uuid::new_v4().simple());
    let mut env = schema.env();
    env.push(("MCP_WORKER_CONCURRENCY", "0".into()));
    // C shares only the database: no bus nudges reach it, its polling must.
    let c = Server::start(&env);
    env.extend([
        ("MCP_REDIS_URL", redis.clone()),
        ("MCP_REDIS_PREFIX", prefix.clone()),
    ]);
    let a = Server::start(&env);
    let b = Server::start(&env);

    let (id, password) = create_user(&a, "carl", "user").await;
    let (access, _) = login(&a, "carl", &password).await;
    let (key_id, key) = api_key(&a, "service").await;
    let mut sockets = Vec::new();
    for node in [&b, &c] {
        // The key is verified and cached on each node (`key_cache`) before it is revoked.
        let (status, body) = call(&client_with(&key), "GET", node.url("/v1/tasks"), None).await;
        assert_eq!(status, 200, "{body}");
        let mut user = connect(node, Some(&access)).await;
        subscribed(&mut user, 1, "user:carl").await;
        let mut bot = connect(node, Some(&key)).await;
        subscribed(&mut bot, 1, "broadcast").await;
        sockets.push((user, bot));
    }

    let started = Instant::now();
    patch_user(&a, &id, json!({"disabled": true})).await;
    revoke_key(&a, &key_id).await;
    for (name, node) in [("B (bus)", &b), ("C (polling)", &c)] {
        let (took, body) = refused_within(node, &access, "/v1/auth/me").await;
        report(&format!("node {name}: disabled user → refused"), took);
        assert_eq!(body["error"]["code"], "token_revoked", "{body}");
        let (took, body) = refused_within(node, &key, "/v1/tasks").await;
        report(&format!("node {name}: cached API key → refused"), took);
        assert_eq!(body["error"]["code"], "unauthenticated", "{body}");
    }
    for ((user, bot), name) in sockets.iter_mut().zip(["B", "C"]) {
        assert_eq!(closed_with(user).await, REVOKED, "node {name}");
        assert_eq!(closed_with(bot).await, REVOKED, "node {name}");
        report(
            &format!("node {name}: both WebSockets closed"),
            started.elapsed(),
        );
    }
    drop((a, b, c));
    schema.drop_schema().await;
}
