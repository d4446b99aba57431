//! Redis outages, for real: nodes on a private `redis-server` (support/own_redis.rs) that the
//! test kills and starts again. While Redis is away requests stay fast, limits hold per node,
//! tasks run, and each node's subscribers get that node's events; subscribers are told (close
//! 4008, then `recovered: false`) whenever what they follow was interrupted; when Redis returns,
//! events cross nodes and limits are shared again, by themselves.

mod support;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::own_redis::OwnRedis;
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// What arrives next on a socket.
#[derive(Debug)]
enum Next {
    Frame(Value),
    Closed(Option<u16>),
    Nothing,
}

/// The next JSON frame or the close, skipping pings, waiting at most `patience`.
async fn next_within(socket: &mut Socket, patience: Duration) -> Next {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => return Next::Nothing,
            Ok(None) | Ok(Some(Err(_))) => return Next::Closed(None),
            Ok(Some(Ok(Message::Text(text)))) => {
                return Next::Frame(serde_json::from_str(&text).expect("JSON"));
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Next::Closed(frame.map(|f| u16::from(f.code)));
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Waits (at most 10 s) for the server to close `socket`; its close code.
async fn closed(socket: &mut Socket) -> Option<u16> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Next::Closed(code) = next_within(socket, Duration::from_secs(1)).await {
            return code;
        }
    }
    panic!("the socket was not closed within 10 s");
}

/// Waits (at most 10 s) for an event on `channel` whose data matches `wanted`.
async fn event_on(socket: &mut Socket, channel: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match next_within(socket, Duration::from_secs(1)).await {
            Next::Frame(frame)
                if frame["op"] == "event"
                    && frame["channel"] == channel
                    && wanted(&frame["event"]["data"]) =>
            {
                return frame;
            }
            Next::Closed(code) => panic!("closed ({code:?}) while waiting for an event"),
            _ => {}
        }
    }
    panic!("no matching event on {channel} within 10 s");
}

async fn subscribed(
    server: &Server,
    role: &str,
    channel: &str,
    since: Option<Value>,
) -> (Socket, Value) {
    let mut socket = connect(server, Some(&token(role, "chaos-watcher"))).await;
    let mut frame = json!({"id": "s", "op": "subscribe", "channel": channel});
    if let Some(since) = since {
        frame["since"] = since;
    }
    let reply = request(&mut socket, frame).await;
    assert_eq!(reply["ok"], true, "{reply}");
    let result = reply["result"].clone();
    (socket, result)
}

/// As [`subscribed`], without a position, but `None` when the node closes the socket first:
/// while Redis comes back a node may switch its link more than once, and tell each subscriber
/// (4008) every time.
async fn subscribed_unless_interrupted(server: &Server, channel: &str) -> Option<Socket> {
    let mut socket = connect(server, Some(&token("operator", "chaos-watcher"))).await;
    send(
        &mut socket,
        json!({"id": "s", "op": "subscribe", "channel": channel}),
    )
    .await;
    loop {
        match next_within(&mut socket, Duration::from_secs(10)).await {
            Next::Frame(reply) if reply["id"] == "s" => {
                assert_eq!(reply["ok"], true, "{reply}");
                return Some(socket);
            }
            Next::Frame(_) => continue,
            Next::Closed(Some(4008)) => return None,
            other => panic!("no reply to the subscription: {other:?}"),
        }
    }
}

async fn publish(socket: &mut Socket, channel: &str, data: Value) {
    socket
        .send(Message::Text(
            json!({"op": "publish", "channel": channel, "data": data})
                .to_string()
                .into(),
        ))
        .await
        .expect("send");
}

/// Reads allowed for `subject` out of `tries` GETs on `server`.
async fn allowed_reads(server: &Server, subject: &str, tries: usize) -> usize {
    let reader = client_as("operator", subject);
    let mut allowed = 0;
    for _ in 0..tries {
        let status = reader
            .get(server.url("/v1/queues"))
            .send()
            .await
            .expect("GET")
            .status()
            .as_u16();
        match status {
            200 => allowed += 1,
            429 => {}
            other => panic!("unexpected {other}"),
        }
    }
    allowed
}

/// Log lines of `server` whose message is `message`.
fn logged(server: &Server, message: &str) -> usize {
    server
        .log_lines()
        .iter()
        .filter(|line| line["message"] == message)
        .count()
}

/// Waits (at most 20 s) until `server` logged `message` `count` times.
async fn until_logged(server: &Server, message: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while logged(server, message) < count {
        assert!(
            Instant::now() < deadline,
            "`{message}` not logged {count} times within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const LIMITS_SHARED: &str = "rate limiter: limits shared through Redis";
const LIMITS_LOCAL: &str =
    "rate limiter: Redis unavailable; limits are per node until it answers again";
const EVENTS_SHARED: &str = "event bus: events shared through Redis";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::test]
async fn a_redis_outage_keeps_requests_fast_and_events_local_then_heals_by_itself() {
    if !OwnRedis::available() {
        return;
    }
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let mut redis = OwnRedis::start();
    let prefix = format!("mcp-chaos-{}", uuid::Uuid::new_v4().simple());
    let mut env = schema.env();
    env.extend([
        ("MCP_REDIS_URL", redis.url()),
        ("MCP_REDIS_PREFIX", prefix.clone()),
        ("MCP_RATE_LIMIT_READ_PER_MINUTE", "20".into()),
        ("MCP_REDIS_RETRY_MAX_MS", "500".into()),
    ]);
    let a = Server::start(&env);
    let b = Server::start(&env);

    // With Redis: events cross nodes, and one limit holds across both.
    let (mut on_b, _) = subscribed(&b, "operator", "room:chaos", None).await;
    let (mut on_a, _) = subscribed(&a, "operator", "room:chaos", None).await;
    publish(&mut on_a, "room:chaos", json!({"n": 1})).await;
    event_on(&mut on_b, "room:chaos", |d| d["n"] == 1).await;
    let shared = allowed_reads(&a, "shared", 12).await + allowed_reads(&b, "shared", 12).await;
    assert_eq!(shared, 20, "one limit across both nodes");
    let (mut tasks_a, _) = subscribed(&a, "operator", "tasks", None).await;
    let (status, before) = post(&a, "/v1/tasks", json!({"type": "noop"})).await;
    assert_eq!(status, 201, "{before}");
    let seen = event_on(&mut tasks_a, "tasks", |d| d["id"] == before["id"]).await;
    let seen_at = json!({"offset": seen["offset"], "epoch": seen["epoch"]});

    // 280 authenticated GETs of a task during the outage, 14 by each of 20 principals (under
    // the per-node limit of 20 a minute); each reader's connection is opened beforehand, with
    // one GET.
    let path = format!("/v1/tasks/{}", before["id"].as_str().expect("id"));
    let readers: Vec<_> = (0..20)
        .map(|i| client_as("operator", &format!("reader-{i}")))
        .collect();
    for reader in &readers {
        let response = reader.get(a.url(&path)).send().await.expect("GET");
        assert_eq!(response.status(), 200);
    }

    // Redis dies.
    redis.down();
    // Every subscriber is told its stream was interrupted, on both nodes.
    for socket in [&mut tasks_a, &mut on_a, &mut on_b] {
        assert_eq!(closed(socket).await, Some(4008));
    }

    // Reads stay fast.
    let mut latencies = Vec::with_capacity(300);
    for round in 0..14 {
        for reader in &readers {
            let started = Instant::now();
            let response = reader.get(a.url(&path)).send().await.expect("GET");
            latencies.push(started.elapsed());
            assert_eq!(response.status(), 200, "round {round}");
        }
    }
    latencies.sort();
    let (p50, p99, max) = (
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
    );
    {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "GET /v1/tasks/{{id}} during the Redis outage, {} requests: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            latencies.len(),
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
        );
    }
    // No request waited for Redis (the timeout is 250 ms; before, 15 s).
    assert!(p99 < Duration::from_millis(200), "p99 {p99:?}");
    assert!(max < Duration::from_secs(1), "max {max:?}");

    // Limits still apply, per node.
    assert_eq!(allowed_reads(&a, "limited", 25).await, 20);
    assert_eq!(allowed_reads(&b, "limited", 25).await, 20);
    // Logged once per node, not per request.
    for server in [&a, &b] {
        assert_eq!(logged(server, LIMITS_LOCAL), 1);
    }

    // A subscriber that resubscribes learns it cannot recover; then it follows this node's
    // events, and a task created during the outage runs to success.
    let (mut tasks_a, result) = subscribed(&a, "operator", "tasks", Some(seen_at.clone())).await;
    assert_eq!(result["recovered"], false, "{result}");
    assert_ne!(result["epoch"], seen["epoch"]);
    let (status, during) = post(&a, "/v1/tasks", json!({"type": "noop"})).await;
    assert_eq!(status, 201, "{during}");
    // `task.created` is this node's event; the task may run on either node, whose events stay
    // there meanwhile.
    let outage_event = event_on(&mut tasks_a, "tasks", |d| d["id"] == during["id"]).await;
    let done = wait_for(&a, during["id"].as_str().expect("id"), is_final).await;
    assert_eq!(done["status"], "succeeded");
    let (mut local_sub, _) = subscribed(&a, "operator", "room:chaos", None).await;
    let (mut local_pub, _) = subscribed(&a, "operator", "room:other", None).await;
    publish(&mut local_pub, "room:chaos", json!({"n": 2})).await;
    event_on(&mut local_sub, "room:chaos", |d| d["n"] == 2).await;

    // Redis returns (empty): events cross nodes again, by themselves.
    redis.up();
    let back = Instant::now();
    assert_eq!(closed(&mut tasks_a).await, Some(4008), "told again");
    let mut probe = 0;
    let healed = loop {
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "events did not cross nodes within 20 s of Redis returning"
        );
        probe += 1;
        let (Some(mut receiver), Some(mut sender)) = (
            subscribed_unless_interrupted(&b, "room:heal").await,
            subscribed_unless_interrupted(&a, "room:other").await,
        ) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        publish(&mut sender, "room:heal", json!({"probe": probe})).await;
        match next_within(&mut receiver, Duration::from_millis(500)).await {
            Next::Frame(frame) if frame["event"]["data"]["probe"] == probe => break back.elapsed(),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "events crossed nodes again {:.0} ms after Redis returned",
            healed.as_secs_f64() * 1e3
        );
    }
    // A position from the outage is not recoverable against Redis.
    let outage_at = json!({"offset": outage_event["offset"], "epoch": outage_event["epoch"]});
    let (_, result) = subscribed(&a, "operator", "tasks", Some(outage_at)).await;
    assert_eq!(result["recovered"], false, "{result}");
    // Limits are shared again.
    for server in [&a, &b] {
        until_logged(server, LIMITS_SHARED, 2).await;
        until_logged(server, EVENTS_SHARED, 2).await;
    }
    let shared =
        allowed_reads(&a, "shared-again", 12).await + allowed_reads(&b, "shared-again", 12).await;
    assert_eq!(shared, 20, "one limit across both nodes again");
    drop((a, b));
    schema.drop_schema().await;
}

#[tokio::test]
async fn a_node_started_while_redis_is_down_serves_and_picks_it_up() {
    if !OwnRedis::available() {
        return;
    }
    let mut redis = OwnRedis::reserve();
    let prefix = format!("mcp-chaos-{}", uuid::Uuid::new_v4().simple());
    let started = Instant::now();
    let server = Server::start(&[
        ("MCP_REDIS_URL", redis.url()),
        ("MCP_REDIS_PREFIX", prefix.clone()),
        ("MCP_REDIS_RETRY_MAX_MS", "500".into()),
        // A key of the limiter lives one interval: a second at this rate.
        ("MCP_RATE_LIMIT_READ_PER_MINUTE", "60".into()),
    ]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "started in {:?}",
        started.elapsed()
    );

    // It serves without Redis: tasks run, its own subscribers get its events.
    let (status, task) = post(&server, "/v1/tasks", json!({"type": "noop"})).await;
    assert_eq!(status, 201, "{task}");
    let done = wait_for(&server, task["id"].as_str().expect("id"), is_final).await;
    assert_eq!(done["status"], "succeeded");
    let (mut local, _) = subscribed(&server, "operator", "room:boot", None).await;
    publish(&mut local, "room:boot", json!({"n": 1})).await;
    event_on(&mut local, "room:boot", |d| d["n"] == 1).await;
    assert!(redis.keys(&prefix).is_empty());

    // Redis appears: the node picks it up without a restart.
    redis.up();
    let up = Instant::now();
    until_logged(&server, LIMITS_SHARED, 1).await;
    until_logged(&server, EVENTS_SHARED, 1).await;
    {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "picked Redis up {:.0} ms after it started",
            up.elapsed().as_secs_f64() * 1e3
        );
    }
    assert_eq!(closed(&mut local).await, Some(4008), "told of the switch");
    let (status, _) = get(
        &server,
        &format!("/v1/tasks/{}", task["id"].as_str().expect("id")),
    )
    .await;
    assert_eq!(status, 200);
    let keys = redis.keys(&prefix);
    assert!(
        keys.iter().any(|k| k.contains(":ratelimit:")),
        "limits in Redis: {keys:?}"
    );
    let (mut shared, _) = subscribed(&server, "operator", "room:boot", None).await;
    publish(&mut shared, "room:boot", json!({"n": 2})).await;
    event_on(&mut shared, "room:boot", |d| d["n"] == 2).await;
    let keys = redis.keys(&prefix);
    assert!(
        keys.iter().any(|k| k.contains(":events:room:boot:")),
        "events in Redis: {keys:?}"
    );
}
