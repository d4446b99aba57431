//! The real-time attacks of issue 12, replayed against the real binary over real sockets: a
//! subscription flood (many connections × many distinct `room:*` channels) and a publish flood
//! (large payloads), with the server's resident memory (`VmRSS`) read before, during and after;
//! `task.create` and `publish` over the socket beyond the principal's write limit; a browser
//! page of a foreign origin opening a socket. Each now fails safely: bounded memory that returns
//! near idle once clients leave, `too_many_channels`, `payload_too_large`, `rate_limited`,
//! `origin_forbidden`.

mod support;

use futures::SinkExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const MIB: f64 = 1024.0 * 1024.0;

/// The server's resident memory, in MiB.
fn rss_mib(server: &Server) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .expect("read /proc/<pid>/status");
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kib * 1024.0 / MIB
}

/// Polls the server's RSS until it is below `bound` MiB, for at most `patience`; the last value.
async fn rss_settles_below(server: &Server, bound: f64, patience: Duration) -> f64 {
    let deadline = Instant::now() + patience;
    loop {
        let rss = rss_mib(server);
        if rss < bound || Instant::now() >= deadline {
            return rss;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sends every frame at once, then collects the replies (one per frame, by id).
async fn pipeline(socket: &mut Socket, frames: Vec<Value>) -> Vec<Value> {
    let wanted = frames.len();
    for frame in frames {
        socket
            .feed(tokio_tungstenite::tungstenite::Message::Text(
                frame.to_string().into(),
            ))
            .await
            .expect("send");
    }
    socket.flush().await.expect("flush");
    let mut replies = Vec::with_capacity(wanted);
    let deadline = Instant::now() + Duration::from_secs(60);
    while replies.len() < wanted {
        assert!(Instant::now() < deadline, "replies did not come in time");
        let frame = next(socket).await;
        if frame.get("id").is_some() {
            replies.push(frame);
        }
    }
    replies
}

fn subscribes(channels: impl Iterator<Item = String>) -> Vec<Value> {
    channels
        .enumerate()
        .map(|(id, channel)| json!({"id": id, "op": "subscribe", "channel": channel}))
        .collect()
}

fn code(reply: &Value) -> &str {
    reply["error"]["code"].as_str().unwrap_or("")
}

/// A connection that subscribed to and left a channel, and published once: what every later
/// phase also pays for, once (tasks, allocator arenas), is paid before idle is measured.
async fn warm_up(server: &Server) {
    let mut socket = connect(server, Some(&token("user", "warm-up"))).await;
    let frames = subscribes((0..10).map(|n| format!("room:warm-{n}")));
    pipeline(&mut socket, frames).await;
    request(
        &mut socket,
        json!({"id": "p", "op": "publish", "channel": "room:warm-0", "data": {"x": 1}}),
    )
    .await;
    socket.close(None).await.ok();
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn subscription_flood_is_bounded_per_principal_and_memory_returns_after_it() {
    let server = Server::start(&[("MCP_WS_OPS_PER_SECOND", "10000".into())]);
    warm_up(&server).await;
    let idle = rss_mib(&server);

    // The attack: 50 connections × 100 distinct channels, one user token.
    let flooder = token("user", "flooder");
    let mut sockets = Vec::new();
    let (mut accepted, mut refused) = (0, 0);
    for c in 0..50 {
        let mut socket = connect(&server, Some(&flooder)).await;
        let frames = subscribes((0..100).map(|n| format!("room:flood-{c}-{n}")));
        for reply in pipeline(&mut socket, frames).await {
            match code(&reply) {
                "" => accepted += 1,
                "too_many_channels" => refused += 1,
                other => panic!("unexpected reply {other}: {reply}"),
            }
        }
        sockets.push(socket);
    }
    let one_principal = rss_mib(&server);
    assert_eq!(accepted, 200, "ws_max_channels_per_principal (default 200)");
    assert_eq!(refused, 4800);

    // Many principals, each within its limits: 10 × 100 channels, held at once.
    for p in 0..10 {
        let mut socket = connect(&server, Some(&token("user", &format!("crowd-{p}")))).await;
        let frames = subscribes((0..100).map(|n| format!("room:crowd-{p}-{n}")));
        for reply in pipeline(&mut socket, frames).await {
            assert_eq!(reply["ok"], true, "{reply}");
        }
        sockets.push(socket);
    }
    let during = rss_mib(&server);

    for mut socket in sockets {
        socket.close(None).await.ok();
    }
    let after = rss_settles_below(&server, idle + 64.0, Duration::from_secs(30)).await;
    println!(
        "subscription flood: RSS idle {idle:.1} MiB, one principal × 5000 attempts \
         {one_principal:.1} MiB, + 1000 channels of 10 principals {during:.1} MiB, after close \
         {after:.1} MiB"
    );
    assert!(
        one_principal < idle + 64.0,
        "one principal's flood: {one_principal:.1} MiB from {idle:.1} MiB"
    );
    assert!(
        during < idle + 256.0,
        "1200 channels: {during:.1} MiB from {idle:.1} MiB"
    );
    assert!(
        after < idle + 64.0,
        "memory must return near idle after the clients leave: {after:.1} MiB from {idle:.1} MiB"
    );

    // The holds went with the connections: the flooder may subscribe again, to as many.
    for c in 0..2 {
        let mut socket = connect(&server, Some(&flooder)).await;
        let frames = subscribes((0..100).map(|n| format!("room:again-{c}-{n}")));
        for reply in pipeline(&mut socket, frames).await {
            assert_eq!(reply["ok"], true, "{reply}");
        }
    }
}

#[tokio::test]
async fn publish_flood_is_held_within_the_history_byte_budget() {
    // Limits opened up so that only the history's byte budget stands in the way.
    let server = Server::start(&[
        ("MCP_WS_OPS_PER_SECOND", "10000".into()),
        ("MCP_WS_MAX_PUBLISH_BYTES", "70000".into()),
        ("MCP_WS_PUBLISH_PER_MINUTE", "1000000".into()),
        ("MCP_RATE_LIMIT_WRITE_PER_MINUTE", "1000000".into()),
        ("MCP_EVENT_HISTORY_BYTES", (16 * 1024 * 1024).to_string()),
    ]);
    warm_up(&server).await;
    let idle = rss_mib(&server);

    // 10 connections × 200 publishes × 60 KB (~120 MB), each to a channel of its own, so
    // that no per-channel bound helps: only the bus-wide one does.
    let text = "x".repeat(60_000);
    let mut first = None;
    let mut clients = Vec::new();
    for c in 0..10 {
        let text = text.clone();
        let server_token = token("user", &format!("publisher-{c}"));
        let mut socket = connect(&server, Some(&server_token)).await;
        clients.push(tokio::spawn(async move {
            let frames = (0..200)
                .map(|n| {
                    json!({"id": n, "op": "publish", "channel": format!("room:pub-{c}-{n}"),
                           "data": {"text": text}})
                })
                .collect();
            let replies = pipeline(&mut socket, frames).await;
            (socket, replies)
        }));
    }
    let mut sockets = Vec::new();
    for client in clients {
        let (socket, replies) = client.await.unwrap();
        for reply in &replies {
            assert_eq!(reply["ok"], true, "{reply}");
        }
        first.get_or_insert_with(|| replies[0]["result"].clone());
        sockets.push(socket);
    }
    let during = rss_mib(&server);

    // The oldest events went to keep within the budget: their positions say so.
    let first = first.expect("a publish");
    let mut reader = connect(&server, Some(&token("user", "reader"))).await;
    let reply = request(
        &mut reader,
        json!({"id": 1, "op": "subscribe", "channel": "room:pub-0-0",
               "since": {"offset": 0, "epoch": first["epoch"]}}),
    )
    .await;
    assert_eq!(reply["result"]["recovered"], false, "{reply}");

    for mut socket in sockets {
        socket.close(None).await.ok();
    }
    let after = rss_settles_below(&server, idle + 64.0, Duration::from_secs(20)).await;
    println!(
        "publish flood (~120 MB, budget 16 MiB): RSS idle {idle:.1} MiB, after the flood \
         {during:.1} MiB, after close {after:.1} MiB"
    );
    assert!(
        during < idle + 96.0,
        "history must stay within its budget: {during:.1} MiB from {idle:.1} MiB"
    );
    assert!(after < idle + 64.0, "{after:.1} MiB from {idle:.1} MiB");
}

#[tokio::test]
async fn socket_writes_count_against_the_principals_limits() {
    let server = Server::start(&[
        ("MCP_RATE_LIMIT_WRITE_PER_MINUTE", "20".into()),
        ("MCP_WS_PUBLISH_PER_MINUTE", "10".into()),
    ]);

    // task.create: the same write limit as POST /v1/tasks.
    let creator = token("user", "creator");
    let mut socket = connect(&server, Some(&creator)).await;
    let frames = (0..40)
        .map(|id| json!({"id": id, "op": "task.create", "task": {"type": "noop"}}))
        .collect();
    let replies = pipeline(&mut socket, frames).await;
    let created = replies.iter().filter(|r| r["ok"] == true).count();
    let limited = replies.iter().filter(|r| code(r) == "rate_limited").count();
    println!(
        "task.create over the socket, write limit 20/min: {created} created, {limited} refused"
    );
    assert!((20..=22).contains(&created), "{created} created");
    assert_eq!(created + limited, 40, "{replies:?}");
    // Spent on the socket, spent for REST too, and the other way round.
    let (status, _) = call(
        &client_with(&creator),
        "POST",
        server.url("/v1/tasks"),
        Some(json!({"type": "noop"})),
    )
    .await;
    assert_eq!(status, 429);
    let reply = request(
        &mut socket,
        json!({"id": "p", "op": "publish", "channel": "room:a", "data": {}}),
    )
    .await;
    assert_eq!(code(&reply), "rate_limited", "{reply}");

    // publish: its own rate per principal, and a size limit checked first.
    let mut talker = connect(&server, Some(&token("user", "talker"))).await;
    let big = json!({"id": "big", "op": "publish", "channel": "room:a",
                     "data": {"text": "x".repeat(20_000)}});
    let reply = request(&mut talker, big).await;
    assert_eq!(code(&reply), "payload_too_large", "{reply}");
    let frames = (0..15)
        .map(|id| json!({"id": id, "op": "publish", "channel": "room:a", "data": {"n": id}}))
        .collect();
    let replies = pipeline(&mut talker, frames).await;
    let sent = replies.iter().filter(|r| r["ok"] == true).count();
    assert!((10..=11).contains(&sent), "{replies:?}");
    assert!(
        replies[14]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("publishes"))
    );
}

#[tokio::test]
async fn refuses_browser_pages_of_other_origins() {
    let server = Server::start(&[(
        "MCP_WS_ALLOWED_ORIGINS",
        r#"["https://app.example.com"]"#.into(),
    )]);
    let upgrade = |origin: Option<&str>| {
        let mut request = ws_url(&server).into_client_request().unwrap();
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", token("user", "browser"))
                .parse()
                .unwrap(),
        );
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
        }
        request
    };
    match tokio_tungstenite::connect_async(upgrade(Some("https://evil.example"))).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            let body: Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default())
                    .expect("a JSON error");
            assert_eq!(body["error"]["code"], "origin_forbidden", "{body}");
        }
        other => panic!("expected 403, got {other:?}"),
    }
    for allowed in [Some("https://app.example.com"), None] {
        let (mut socket, _) = tokio_tungstenite::connect_async(upgrade(allowed))
            .await
            .unwrap_or_else(|e| panic!("{allowed:?} must connect: {e}"));
        let reply = request(&mut socket, json!({"id": 1, "op": "ping"})).await;
        assert_eq!(reply["ok"], true, "{reply}");
    }
}
