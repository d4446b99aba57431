//! Three `serve` processes on one PostgreSQL and one Redis behave like one server: a task
//! created on node A runs on a worker connected to node B while a subscriber on node C sees
//! every transition in order; a node killed with SIGKILL mid-run loses nothing.

mod support;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(server: &Server, role: &str, sub: &str) -> Socket {
    let mut request = (server.base.replacen("http://", "ws://", 1) + "/v1/ws")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token(role, sub)).parse().unwrap(),
    );
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

async fn next(socket: &mut Socket) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("a frame within 20 s")
            .expect("open")
            .expect("frame")
        {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => continue,
        }
    }
}

async fn request(socket: &mut Socket, frame: Value) -> Value {
    let id = frame["id"].clone();
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no reply to frame {id} within 30 s"
        );
        let reply = next(socket).await;
        if reply["id"] == id {
            return reply;
        }
    }
}

async fn assigned(socket: &mut Socket) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no task.assign within 30 s"
        );
        let frame = next(socket).await;
        if frame["op"] == "task.assign" {
            return frame["task"].clone();
        }
    }
}

#[tokio::test]
async fn three_nodes_act_as_one_and_lose_nothing_to_sigkill() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let Some(redis) = redis_url().await else {
        return;
    };
    let prefix = format!("mcp-cluster-{}", uuid::Uuid::new_v4().simple());
    let mut env = schema.env();
    env.extend([
        ("MCP_REDIS_URL", redis.clone()),
        ("MCP_REDIS_PREFIX", prefix.clone()),
        ("MCP_WORKER_TASK_TYPES", "[\"render.deploy\"]".into()),
        ("MCP_LEASE_MS", "1500".into()),
        ("MCP_RESCUE_INTERVAL_MS", "200".into()),
    ]);
    let a = Server::start(&env);
    let mut b = Server::start(&env);
    let c = Server::start(&env);

    let mut subscriber = connect(&c, "operator", "watcher").await;
    let reply = request(
        &mut subscriber,
        json!({"id": 1, "op": "subscribe", "channel": "tasks"}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let mut worker_b = connect(&b, "service", "worker-b").await;
    request(
        &mut worker_b,
        json!({"id": 1, "op": "worker.register", "types": ["render.deploy"], "concurrency": 1}),
    )
    .await;

    let (status, task) = post(&a, "/v1/tasks", json!({"type": "render.deploy"})).await;
    assert_eq!(status, 201);
    let given = assigned(&mut worker_b).await;
    assert_eq!(given["id"], task["id"]);
    request(
        &mut worker_b,
        json!({"id": 2, "op": "task.complete", "task_id": given["id"], "result": {"ok": true}}),
    )
    .await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let frame = next(&mut subscriber).await;
        if frame["op"] == "event" && frame["event"]["data"]["id"] == task["id"] {
            seen.push(frame);
        }
    }
    let types: Vec<&str> = seen
        .iter()
        .map(|f| f["event"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["task.created", "task.started", "task.succeeded"]);
    let offsets: Vec<u64> = seen.iter().map(|f| f["offset"].as_u64().unwrap()).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");

    // A second task is running on B's worker when B is killed: after its lease expires another
    // node rescues it and a worker on C finishes it.
    let (_, second) = post(&a, "/v1/tasks", json!({"type": "render.deploy"})).await;
    let held = assigned(&mut worker_b).await;
    assert_eq!(held["id"], second["id"]);
    b.kill9();
    let mut worker_c = connect(&c, "service", "worker-c").await;
    request(
        &mut worker_c,
        json!({"id": 1, "op": "worker.register", "types": ["render.deploy"], "concurrency": 1}),
    )
    .await;
    let rescued = assigned(&mut worker_c).await;
    assert_eq!(rescued["id"], second["id"]);
    request(
        &mut worker_c,
        json!({"id": 2, "op": "task.complete", "task_id": rescued["id"], "result": {}}),
    )
    .await;
    let done = wait_for(&a, second["id"].as_str().unwrap(), is_final).await;
    assert_eq!(done["status"], "succeeded");
    drop((a, c));
    schema.drop_schema().await;
    // Keys under the test prefix expire by their TTL; clear the limiter's now.
    if let Ok(limiter) =
        mcp_persistence::RedisLimiter::connect(&redis, &format!("{prefix}:ratelimit:")).await
    {
        let _ = limiter.clear().await;
    }
}
