//! Starts the real `mkww-mcp` binary on a free port and talks to it over real HTTP.

#![allow(dead_code)]

pub mod own_postgres;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub struct Server {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    pub logs: Arc<Mutex<Vec<String>>>,
    /// What the server printed on stderr.
    pub console: Arc<Mutex<Vec<String>>>,
}

/// A fresh PostgreSQL schema for one test; dropped by `drop_schema`, or when it goes out of
/// scope (a test that panics leaves no schema behind either).
pub struct PgSchema {
    pub url: String,
    pub name: String,
    dropped: std::sync::atomic::AtomicBool,
}

pub fn pg_url() -> String {
    std::env::var("MCP_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

impl PgSchema {
    /// None (skip) when PostgreSQL is unreachable outside CI; in CI that is a failure.
    pub async fn create() -> Option<PgSchema> {
        let url = pg_url();
        match sqlx::PgPool::connect(&url).await {
            Ok(pool) => {
                pool.close().await;
                Some(PgSchema {
                    url,
                    name: format!("mcp_it_{}", uuid::Uuid::new_v4().simple()),
                    dropped: Default::default(),
                })
            }
            Err(e) if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) => {
                panic!("PostgreSQL at {url} is required in CI: {e}")
            }
            Err(e) => {
                // Straight to stderr: libtest hides what `eprintln!` prints in a passing test.
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "skipping: PostgreSQL at {url} unreachable: {e}"
                );
                None
            }
        }
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("MCP_DATABASE_URL", self.url.clone()),
            ("MCP_DATABASE_SCHEMA", self.name.clone()),
        ]
    }

    pub async fn drop_schema(&self) {
        self.dropped
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let pool = sqlx::PgPool::connect(&self.url).await.expect("connect");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.name
        )))
        .execute(&pool)
        .await
        .expect("drop schema");
        pool.close().await;
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if self.dropped.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        // Drop runs outside any runtime (or inside one that is unwinding): a thread of its own
        // with a small runtime does the clean-up, best effort.
        let (url, name) = (self.url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(pool) = sqlx::PgPool::connect(&url).await {
                    let sql = format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
                    pool.close().await;
                }
            });
        })
        .join();
    }
}

/// The test Redis (`MCP_TEST_REDIS_URL`) if it answers; `None` (a skip, said on stderr) when it
/// does not, except under CI, where it fails the test.
pub async fn redis_url() -> Option<String> {
    let url =
        std::env::var("MCP_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    match mcp_persistence::RedisLimiter::connect(&url, "probe:").await {
        Ok(_) => Some(url),
        Err(e) if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) => {
            panic!("Redis at {url} is required in CI: {e}")
        }
        Err(e) => {
            // Straight to stderr: libtest hides what `eprintln!` prints in a passing test.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "skipping: Redis at {url} unreachable: {e}"
            );
            None
        }
    }
}

pub fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mcp-it-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

impl Server {
    pub fn start(env: &[(&str, String)]) -> Server {
        Server::start_in(temp_dir(), env)
    }

    pub fn start_in(data_dir: PathBuf, env: &[(&str, String)]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mkww-mcp"));
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .current_dir(&data_dir)
            .env("MCP_DATA_DIR", &data_dir)
            .env("MCP_LOG_FORMAT", "json")
            .env("MCP_LOG_LEVEL", "info")
            .env("MCP_JWT_SECRET", JWT_SECRET)
            // Test servers run side by side: none takes VRChat's OSC port unless a test asks.
            .env("MCP_VRCHAT_OSC_LISTEN", "")
            // No readiness drain on SIGTERM unless a test asks: tests stop servers often.
            .env("MCP_SHUTDOWN_READINESS_DELAY_MS", "0")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start mkww-mcp");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let console = Arc::new(Mutex::new(Vec::new()));
        let sink = console.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                sink.lock().unwrap().push(line);
            }
        });
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(entry) = serde_json::from_str::<Value>(&line)
                    && entry["message"] == "listening"
                {
                    let _ = addr_tx.send(entry["addr"].as_str().unwrap_or("").to_owned());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("server did not report its address");
        Server {
            child,
            base: format!("http://{addr}"),
            data_dir,
            logs,
            console,
        }
    }

    /// The server process's id (to read its `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, without waiting.
    pub fn send_sigterm(&self) {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("send SIGTERM");
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("send SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit by itself (after a signal sent earlier), at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_lines(&self) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The first log line that `matches`, waited for at most 10 s: lines reach the test through
    /// a pipe and a reader thread, so one written just before a response may not be here yet.
    pub fn wait_for_log(&self, matches: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.log_lines().into_iter().find(|l| matches(l)) {
                return Some(line);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The HS256 secret every test server is started with, so tests can mint their own tokens.
pub const JWT_SECRET: &str = "integration-tests-only-0123456789abcdef";

/// An access token for `sub` with `role`, as the test servers accept.
pub fn token(role: &str, sub: &str) -> String {
    mcp_api::token::Tokens::hs256(JWT_SECRET.as_bytes(), "mkww-mcp", "mkww-mcp")
        .expect("tokens")
        .issue(sub, role.parse().expect("role"), Duration::from_secs(3600))
        .expect("token")
}

/// A client that acts as `sub` with `role` (bearer token on every request).
pub fn client_as(role: &str, sub: &str) -> reqwest::Client {
    client_with(&token(role, sub))
}

/// A client that sends `credential` (a token or an API key) on every request.
pub fn client_with(credential: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {credential}").parse().expect("header"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

/// The default test client: an admin.
pub fn client() -> reqwest::Client {
    client_as("admin", "test-admin")
}

pub async fn post(server: &Server, path: &str, body: Value) -> (u16, Value) {
    let response = client()
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .expect("POST");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub async fn get(server: &Server, path: &str) -> (u16, Value) {
    let response = client().get(server.url(path)).send().await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls a task until `done` says so (or fails after 30 s).
pub async fn wait_for(server: &Server, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, task) = get(server, &format!("/v1/tasks/{id}")).await;
        assert_eq!(status, 200, "{task}");
        if done(&task) {
            return task;
        }
        assert!(
            Instant::now() < deadline,
            "task never reached the state: {task}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn is_final(task: &Value) -> bool {
    matches!(
        task["status"].as_str(),
        Some("succeeded" | "dead" | "cancelled")
    )
}

// The WebSocket API, as a client sees it.

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub fn ws_url(server: &Server) -> String {
    server.base.replacen("http://", "ws://", 1) + "/v1/ws"
}

pub async fn connect(server: &Server, credential: Option<&str>) -> Socket {
    let mut request = ws_url(server).into_client_request().unwrap();
    if let Some(credential) = credential {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {credential}").parse().unwrap(),
        );
    }
    tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket connect")
        .0
}

pub async fn send(socket: &mut Socket, frame: Value) {
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
}

/// The next JSON frame (skipping pings), or panics after 10 s.
pub async fn next(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within 10 s")
            .expect("the socket is open")
            .expect("a frame");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Sends `frame` and waits for the reply with its `id` (events in between are skipped).
pub async fn request(socket: &mut Socket, frame: Value) -> Value {
    let id = frame["id"].clone();
    send(socket, frame).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "no reply to frame {id} within 30 s"
        );
        let reply = next(socket).await;
        if reply["id"] == id {
            return reply;
        }
    }
}

/// The next `task.assign` frame's task (other frames are skipped), or panics after 30 s.
pub async fn assigned(socket: &mut Socket) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no task.assign within 30 s");
        let frame = next(socket).await;
        if frame["op"] == "task.assign" {
            return frame["task"].clone();
        }
    }
}

/// One HTTP call with a JSON body (if any): the status and the JSON answer (`null` if none).
pub async fn call(
    client: &reqwest::Client,
    method: &str,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let mut request = client.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}
pub mod own_redis;
