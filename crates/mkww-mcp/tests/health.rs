//! The health monitor seen from outside: `/readyz`, `GET /v1/health`, who may read them, and a
//! non-critical dependency (Redis, a private `redis-server` the test stops) that goes down
//! without making the node unready.

mod support;

use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

fn dependency<'a>(health: &'a Value, name: &str) -> &'a Value {
    health["dependencies"]
        .as_array()
        .and_then(|all| all.iter().find(|d| d["name"] == name))
        .unwrap_or_else(|| panic!("no dependency `{name}` in {health}"))
}

#[tokio::test]
async fn shows_every_dependency_to_admins_and_operators() {
    let server = Server::start(&[]);
    let (status, ready) = get(&server, "/readyz").await;
    assert_eq!((status, ready), (200, json!({"status": "ready"})));
    // The first probe runs at start; wait for it rather than for a fixed time.
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let (status, health) = get(&server, "/v1/health").await;
        assert_eq!(status, 200, "{health}");
        if !dependency(&health, "database")["last_check"].is_null() {
            break health;
        }
        assert!(Instant::now() < deadline, "never probed: {health}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(health["status"], "ready");
    assert!(health["node_id"].is_string());
    let database = dependency(&health, "database");
    assert_eq!(database["state"], "up");
    assert_eq!(database["critical"], true);
    assert!(database["since"].is_string());
    let http = dependency(&health, "integration.http");
    assert_eq!(http["state"], "up");
    assert_eq!(http["critical"], false);
    let metrics = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mcp_dependency_up{dependency=\"database\"} 1"),
        "{metrics}"
    );
    for (role, expected) in [("operator", 200), ("service", 403), ("user", 403)] {
        let (status, body) = call(
            &client_as(role, "someone"),
            "GET",
            server.url("/v1/health"),
            None,
        )
        .await;
        assert_eq!(status, expected, "{role}: {body}");
    }
}

#[tokio::test]
async fn health_events_are_for_the_roles_that_may_read_health() {
    let server = Server::start(&[]);
    let mut operator = connect(&server, Some(&token("operator", "ops"))).await;
    let reply = request(
        &mut operator,
        json!({"id": 1, "op": "subscribe", "channel": "system.health"}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let mut service = connect(&server, Some(&token("service", "bot"))).await;
    let reply = request(
        &mut service,
        json!({"id": 1, "op": "subscribe", "channel": "system.health"}),
    )
    .await;
    assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
}

/// A private `redis-server` on a free port, killed on drop.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> Option<OwnRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut redis = OwnRedis { port, child: None };
        if let Err(e) = redis.start_again() {
            if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
                panic!("redis-server is required in CI: {e}");
            }
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "skipping: cannot run redis-server: {e}");
            return None;
        }
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn start_again(&mut self) -> std::io::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for a log line of the server saying `message` about `dependency`.
async fn logged(server: &Server, message: &str, dependency: &str, after: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = server.log_lines();
        if let Some(at) = lines
            .iter()
            .enumerate()
            .skip(after)
            .find(|(_, l)| l["message"] == message && l["dependency"] == dependency)
            .map(|(i, _)| i)
        {
            return at + 1;
        }
        assert!(
            Instant::now() < deadline,
            "the server never logged `{message}` for {dependency}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn redis_going_down_is_seen_without_making_the_node_unready() {
    let Some(mut redis) = OwnRedis::start() else {
        return;
    };
    let server = Server::start(&[
        ("MCP_REDIS_URL", redis.url()),
        (
            "MCP_REDIS_PREFIX",
            format!("mcp-it-{}", uuid::Uuid::new_v4()),
        ),
    ]);
    redis.kill();
    let seen = logged(&server, "dependency is not up", "redis", 0).await;
    // Probes are never rate limited, so this does not touch Redis either.
    let (status, ready) = get(&server, "/readyz").await;
    assert_eq!((status, ready), (200, json!({"status": "ready"})));
    redis.start_again().expect("redis-server again");
    logged(&server, "dependency is up", "redis", seen).await;
}
