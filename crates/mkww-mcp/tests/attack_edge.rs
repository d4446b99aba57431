//! The edge under attack, replayed against the real binary over real sockets: a flood of
//! half-sent requests, too many connections from one address, a trickling body, idle kept-alive
//! connections, a stranger locking a user out by failing logins, and a shutdown that must drain
//! before it stops accepting. Each must now fail safely.

mod support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous: the machine running the tests may be loaded.
const PATIENCE: Duration = Duration::from_secs(20);

fn addr(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

/// Reads until the peer closes (or `within` passes): what arrived, and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&seen).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&seen).into_owned(), true),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// `/healthz` answers 200 on a fresh connection within `within`, retrying.
async fn healthz_answers(server: &Server, within: Duration) -> bool {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(response) = client.get(server.url("/healthz")).send().await
            && response.status() == 200
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn a_partial_header_flood_is_capped_and_closed_while_probes_answer() {
    let server = Server::start(&[
        ("MCP_MAX_CONNECTIONS", "100".into()),
        ("MCP_MAX_CONNECTIONS_PER_IP", "0".into()),
        ("MCP_PROBE_CONNECTIONS", "4".into()),
        ("MCP_HTTP_HEADER_TIMEOUT_MS", "2000".into()),
    ]);
    // The attack: connections that each send part of a request's headers, then nothing.
    let mut flood = Vec::new();
    for _ in 0..300 {
        let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
        let _ = stream
            .write_all(b"GET /v1/tasks HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            .await;
        flood.push(stream);
    }
    // The probes keep answering.
    assert!(
        healthz_answers(&server, PATIENCE).await,
        "/healthz stopped answering under the flood"
    );
    // Every flood connection is closed, over the cap at once (with a 503), the rest once the
    // header timeout has passed.
    let mut refused = 0;
    for stream in &mut flood {
        let (answer, closed) = read_until_closed(stream, PATIENCE).await;
        assert!(closed, "a half-sent request was never closed");
        if answer.contains("too_many_connections") {
            assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
            refused += 1;
        }
    }
    assert!(
        refused >= 150,
        "{refused} of 300 refused with a cap of 100 (+4 for probes)"
    );
    // The slots are back: an ordinary request is served.
    let (status, _) = get(&server, "/v1/tasks").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn caps_connections_per_client_ip() {
    let server = Server::start(&[
        ("MCP_MAX_CONNECTIONS_PER_IP", "5".into()),
        ("MCP_HTTP_HEADER_TIMEOUT_MS", "30000".into()),
    ]);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(addr(&server)).await.unwrap());
    }
    let mut sixth = TcpStream::connect(addr(&server)).await.unwrap();
    let (answer, closed) = read_until_closed(&mut sixth, PATIENCE).await;
    assert!(closed, "the connection over the per-IP cap stayed open");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "too_many_connections");
    // One closes: the address may connect again.
    drop(held.pop());
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut again = TcpStream::connect(addr(&server)).await.unwrap();
        again
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (answer, _) = read_until_closed(&mut again, PATIENCE).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_trickling_body_is_cut_off_with_408() {
    let server = Server::start(&[("MCP_HTTP_BODY_TIMEOUT_MS", "1000".into())]);
    let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
    stream
        .write_all(
            b"POST /v1/auth/login HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{",
        )
        .await
        .unwrap();
    // A byte now and then, never the whole body.
    let trickle = async {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if stream.write_all(b" ").await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(1500), trickle).await;
    let (answer, closed) = read_until_closed(&mut stream, PATIENCE).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    assert!(closed, "the connection stays open after a cut-off body");
}

#[tokio::test]
async fn closes_an_idle_kept_alive_connection() {
    let server = Server::start(&[("MCP_HTTP_HEADER_TIMEOUT_MS", "1500".into())]);
    let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut stream, PATIENCE).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed, "an idle kept-alive connection was never closed");
}

#[tokio::test]
async fn a_stranger_failing_logins_does_not_lock_the_user_out() {
    let server = Server::start(&[
        ("MCP_TRUSTED_PROXIES", "[\"127.0.0.0/8\"]".into()),
        ("MCP_RATE_LIMIT_LOGIN_USERNAME_PER_MINUTE", "16".into()),
    ]);
    let (status, body) = post(
        &server,
        "/v1/users",
        json!({"username": "bob", "role": "user", "password": "bob-password-123"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let login = |from: &'static str, username: &'static str, password: &'static str| {
        let url = server.url("/v1/auth/login");
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .header("x-forwarded-for", from)
                .json(&json!({"username": username, "password": password}))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, body)
        }
    };
    // The attack: wrong passwords for `BOB` (folded to `bob`) from one address, until refused
    // (10 a minute; a loaded machine may refill one now and then).
    let attacker = "203.0.113.7";
    let mut tries = 0;
    loop {
        let (status, body) = login(attacker, "BOB", "wrong-password-xx").await;
        tries += 1;
        if status == 429 {
            assert_eq!(body["error"]["code"], "rate_limited");
            break;
        }
        assert_eq!(status, 401, "{body}");
        assert!(tries <= 20, "the attacker was never throttled");
    }
    assert!(
        tries >= 11,
        "throttled after {tries} attempts, not after 10"
    );
    // The attacker's address is throttled for `bob` too, even with the right password…
    assert_eq!(login(attacker, "bob", "bob-password-123").await.0, 429);
    // …but bob, from his own address, logs in.
    let (status, body) = login("198.51.100.2", "bob", "bob-password-123").await;
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].is_string());
    // The per-username ceiling (16 here, with 11 spent): a guess spread over fresh addresses
    // is refused soon, whichever address it comes from.
    let addresses = [
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.3",
        "192.0.2.4",
        "192.0.2.5",
        "192.0.2.6",
        "192.0.2.7",
        "192.0.2.8",
        "192.0.2.9",
        "192.0.2.10",
        "192.0.2.11",
        "192.0.2.12",
    ];
    let mut ceiling = None;
    for from in addresses {
        let (status, body) = login(from, "bob", "wrong-password-xx").await;
        if status == 429 {
            ceiling = Some(from);
            break;
        }
        assert_eq!(status, 401, "{body}");
    }
    let ceiling = ceiling.expect("no per-username ceiling over 12 fresh addresses");
    // Both throttles are in the audit log, with the address.
    let (status, page) = get(&server, "/v1/audit?limit=500").await;
    assert_eq!(status, 200, "{page}");
    let throttled: Vec<&Value> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "auth.login.throttled")
        .collect();
    assert!(
        throttled
            .iter()
            .any(|e| e["ip"] == attacker
                && e["details"]["reason"].as_str().unwrap().contains("address")),
        "{throttled:?}"
    );
    assert!(
        throttled.iter().any(|e| e["ip"] == ceiling),
        "{throttled:?}"
    );
}

#[tokio::test]
async fn drains_with_readiness_503_before_it_stops_accepting() {
    let mut server = Server::start(&[("MCP_SHUTDOWN_READINESS_DELAY_MS", "60000".into())]);
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let ready = probe.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    server.send_sigterm();
    let deadline = Instant::now() + PATIENCE;
    let body = loop {
        let response = probe.get(server.url("/readyz")).send().await.unwrap();
        if response.status() == 503 {
            break response.json::<Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(body["error"]["code"], "not_ready");
    assert_eq!(
        body["error"]["details"]["failing"],
        json!(["shutting_down"])
    );
    // Still serving while draining.
    let alive = probe.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(alive.status(), 200);
    let (status, task) = post(&server, "/v1/tasks", json!({"type": "noop"})).await;
    assert_eq!(status, 201, "{task}");
    // A second signal cuts the drain short; the server stops cleanly.
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        server
            .wait_for_log(|l| l["message"] == "shutting down: not ready, still serving")
            .is_some()
    );
}
