//! The graceful drain on SIGTERM, in order, against the real binary over real sockets:
//! `/readyz` turns 503 while requests are still served for `shutdown_readiness_delay_ms`; then
//! new connections are refused, the node stops claiming, a WebSocket gets a `server.shutdown`
//! frame with `reconnect_after_ms` and close 1001, a request still in flight finishes; the task
//! that was running finishes; the process exits 0; and nothing is lost: started again on the
//! same data, every task is there.

mod support;

use futures::StreamExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::{Server, get, post, request, temp_dir, token, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Long enough for the checks of the delay to fit in it on a loaded machine.
const DELAY: Duration = Duration::from_millis(3000);

fn env() -> Vec<(&'static str, String)> {
    vec![
        (
            "MCP_SHUTDOWN_READINESS_DELAY_MS",
            DELAY.as_millis().to_string(),
        ),
        ("MCP_SHUTDOWN_GRACE_MS", "15000".into()),
    ]
}

fn chrono_of(task: &Value, field: &str) -> chrono::DateTime<chrono::Utc> {
    task[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {task}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn drains_in_order_on_sigterm_and_loses_nothing() {
    let data_dir = temp_dir();
    let mut server = Server::start_in(data_dir.clone(), &env());
    let addr = server.base.trim_start_matches("http://").to_owned();

    // A task running when the signal comes, long enough to outlast the readiness delay.
    let (status, running) = post(
        &server,
        "/v1/tasks",
        json!({"type": "sleep", "payload": {"ms": 8000}}),
    )
    .await;
    assert_eq!(status, 201, "{running}");
    let running_id = running["id"].as_str().unwrap().to_owned();
    wait_for(&server, &running_id, |t| t["status"] == "running").await;
    // A subscriber.
    let mut socket = support::connect(&server, Some(token("operator", "watcher").as_str())).await;
    let reply = request(
        &mut socket,
        json!({"id": 1, "op": "subscribe", "channel": "tasks"}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");

    let signalled = Instant::now();
    server.send_sigterm();

    // 1. Not ready, still serving: probes, reads and writes on new connections all answer.
    let fresh = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let body = loop {
        let response = fresh().get(server.url("/readyz")).send().await.unwrap();
        if response.status() == 503 {
            break response.json::<Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        body["error"]["details"]["failing"],
        json!(["shutting_down"])
    );
    assert_eq!(
        fresh()
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (status, during) = post(&server, "/v1/tasks", json!({"type": "noop"})).await;
    assert_eq!(status, 201, "{during}");
    // Due once the listener has closed: a node that stopped claiming leaves it for the next.
    let later_due = Instant::now() + DELAY + Duration::from_millis(1500);
    let (status, later) = post(
        &server,
        "/v1/tasks",
        json!({"type": "noop", "delay_ms": DELAY.as_millis() as u64 + 1500}),
    )
    .await;
    assert_eq!(status, 201, "{later}");
    let (status, _) = get(&server, &format!("/v1/tasks/{running_id}")).await;
    assert_eq!(status, 200);
    // A request whose body is still on its way when the listener closes.
    let body = json!({"type": "noop"}).to_string();
    let mut in_flight = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/tasks HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        token("admin", "test-admin"),
        body.len()
    );
    in_flight.write_all(head.as_bytes()).await.unwrap();
    in_flight.write_all(&body.as_bytes()[..4]).await.unwrap();
    // The WebSocket still works.
    let pong = request(&mut socket, json!({"id": 2, "op": "ping"})).await;
    assert_eq!(pong["ok"], true, "{pong}");
    let served_until = Instant::now();
    assert!(
        served_until - signalled < DELAY,
        "the checks took longer than the delay; they prove nothing"
    );

    // 2. The WebSocket: a last frame with the reconnect hint, then 1001 with it in the reason.
    let mut hint = None;
    let close = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("the socket closes within 10 s");
        match message {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                if frame["op"] == "server.shutdown" {
                    hint = frame["reconnect_after_ms"].as_u64();
                }
            }
            Some(Ok(Message::Close(frame))) => break frame.expect("a close frame with a code"),
            Some(Ok(_)) => {}
            other => panic!("the socket ended without a close frame: {other:?}"),
        }
    };
    let closed_at = Instant::now();
    assert_eq!(u16::from(close.code), 1001);
    let hint = hint.expect("a server.shutdown frame before the close");
    assert!(hint > 0);
    assert!(
        close
            .reason
            .as_str()
            .contains(&format!("reconnect_after_ms={hint}")),
        "{}",
        close.reason
    );
    assert!(
        closed_at - signalled >= DELAY,
        "closed {:?} after the signal, before the readiness delay ended",
        closed_at - signalled
    );

    // 3. New connections are refused (the listener is closed) while the task still runs.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpStream::connect(&addr).await {
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
                break;
            }
            Ok(_) => {
                assert!(Instant::now() < deadline, "still accepting connections");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    // 4. The request in flight finishes, after the task that became due meanwhile was left
    //    alone: the node stopped claiming when it stopped accepting.
    tokio::time::sleep_until((later_due + Duration::from_millis(500)).into()).await;
    in_flight.write_all(&body.as_bytes()[4..]).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        in_flight.read_to_string(&mut response),
    )
    .await
    .expect("the request in flight is answered")
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let created: Value = serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();

    // 5. The process exits 0 once the running task has finished.
    let status = server.wait_exit(Duration::from_secs(20));
    let exited = chrono::Utc::now();
    assert!(status.success(), "{status:?}");
    assert!(
        server
            .wait_for_log(|l| l["message"] == "shutting down: not ready, still serving")
            .is_some()
    );
    assert!(
        server
            .log_lines()
            .iter()
            .all(|l| l["message"] != "released the leases of unfinished tasks"),
        "the running task had to be released instead of finishing"
    );

    // 6. Nothing lost: on the same data, every task is there and ends as it should.
    let server = Server::start_in(data_dir, &env());
    let (_, task) = get(&server, &format!("/v1/tasks/{running_id}")).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["attempts"], 1, "{task}");
    assert!(chrono_of(&task, "finished_at") < exited, "{task}");
    let during = wait_for(&server, during["id"].as_str().unwrap(), |t| {
        t["status"] == "succeeded"
    })
    .await;
    assert_eq!(during["attempts"], 1, "{during}");
    wait_for(&server, created["id"].as_str().unwrap(), |t| {
        t["status"] == "succeeded"
    })
    .await;
    let later = wait_for(&server, later["id"].as_str().unwrap(), |t| {
        t["status"] == "succeeded"
    })
    .await;
    assert!(
        chrono_of(&later, "started_at") > exited,
        "the draining node claimed a task after it stopped accepting: {later}"
    );
}
