//! `mkww-mcp bench http`: what a request costs beyond the wire, measured the way `wrk` measures
//! a server, in one run:
//! 1. `GET /healthz` (no credential, no limiter, no store): the floor of the HTTP stack;
//! 2. `GET /v1/tasks/{id}` with an access token (JWT): authentication, the deny-list, the
//!    per-IP and per-principal limits, the request log and a store read;
//! 3. the same with an API key.
//!
//! Each phase drives `--connections` keep-alive HTTP/1.1 connections, one request in flight on
//! each, for `--seconds` after a warm-up, and reports requests/s and latency p50/p99; the
//! authenticated phases are also given as a share of `/healthz`.
//!
//! The server is the real `serve` of this binary (or `--server`, another build to compare with)
//! run as its own process with a fresh SQLite directory, its default request log (one line per
//! request, drained by the bench), the per-IP and per-principal limits raised out of the way
//! (every connection comes from 127.0.0.1 as one principal), and the rest of its defaults. The
//! clients are plain hyper connections, cheap next to the server; both share the machine.

use super::nearest_rank;
use anyhow::Context;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use mcp_api::token::Tokens;
use mcp_core::principal::Role;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct HttpBench {
    /// Keep-alive connections, each with one request in flight.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds each phase is measured.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Seconds each phase runs before it is measured.
    #[arg(long, default_value_t = 1)]
    warmup_seconds: u64,
    /// The server binary (default: this one), e.g. another build to compare with; it must
    /// have `serve` and read the same `MCP_*` variables.
    #[arg(long)]
    server: Option<PathBuf>,
    /// The server's `log_level` (`info`, the default, writes one line per request).
    #[arg(long, default_value = "info")]
    log_level: String,
}

/// One phase's figures.
struct Figures {
    name: &'static str,
    requests: u64,
    errors: u64,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Figures {
    fn json(&self) -> Value {
        json!({"requests_per_s": self.rate.round(), "requests": self.requests,
               "errors": self.errors, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms})
    }
}

pub async fn run(args: HttpBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.connections > 0 && args.seconds > 0,
        "--connections and --seconds must be positive"
    );
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let server = Server::start(args.server.as_deref(), &secret, &args.log_level)?;
    let tokens = Tokens::hs256(secret.as_bytes(), "mkww-mcp", "mkww-mcp")?;
    let token = tokens.issue("bench", Role::Admin, Duration::from_secs(24 * 3600))?;
    let mut setup = Client::connect(server.addr).await?;
    let task = setup
        .call(
            Method::POST,
            "/v1/tasks",
            Some(&token),
            Some(json!({"type": "noop"})),
        )
        .await
        .context("cannot create the task")?;
    let task_id = task["id"]
        .as_str()
        .context("the task has no id")?
        .to_owned();
    let key = setup
        .call(
            Method::POST,
            "/v1/api-keys",
            Some(&token),
            Some(json!({"name": "bench", "role": "admin"})),
        )
        .await
        .context("cannot create the API key")?;
    let api_key = key["key"].as_str().context("no API key")?.to_owned();
    let task_path = format!("/v1/tasks/{task_id}");
    // The task must be readable by both credentials before anything is timed.
    for credential in [&token, &api_key] {
        setup
            .call(Method::GET, &task_path, Some(credential), None)
            .await?;
    }
    drop(setup);

    println!(
        "bench http: {} connections, {} s per phase (after {} s warm-up), server {} (log_level {}), {} cores",
        args.connections,
        args.seconds,
        args.warmup_seconds,
        args.server
            .as_deref()
            .map_or_else(|| "this binary".to_owned(), |p| p.display().to_string()),
        args.log_level,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let phases = [
        ("healthz", "/healthz", None),
        ("task_token", task_path.as_str(), Some(token.as_str())),
        ("task_api_key", task_path.as_str(), Some(api_key.as_str())),
    ];
    let mut results = Vec::new();
    for (name, path, credential) in phases {
        let figures = phase(&args, server.addr, name, path, credential).await?;
        println!(
            "{:<13} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  ({} requests, {} errors)",
            figures.name,
            figures.rate,
            figures.p50_ms,
            figures.p99_ms,
            figures.requests,
            figures.errors
        );
        results.push(figures);
    }
    let share = |i: usize| results[i].rate / results[0].rate.max(f64::MIN_POSITIVE);
    println!(
        "GET /v1/tasks/{{id}} as a share of /healthz: {:.0}% with an access token, {:.0}% with an API key",
        share(1) * 100.0,
        share(2) * 100.0
    );
    println!(
        "{}",
        json!({
            "bench": "http",
            "connections": args.connections,
            "seconds": args.seconds,
            "log_level": args.log_level,
            "healthz": results[0].json(),
            "task_token": results[1].json(),
            "task_api_key": results[2].json(),
            "share_token": (share(1) * 1000.0).round() / 1000.0,
            "share_api_key": (share(2) * 1000.0).round() / 1000.0,
        })
    );
    drop(server);
    Ok(())
}

/// Drives `path` on every connection for the warm-up and the measured time.
async fn phase(
    args: &HttpBench,
    addr: SocketAddr,
    name: &'static str,
    path: &str,
    credential: Option<&str>,
) -> anyhow::Result<Figures> {
    let warmup = Duration::from_secs(args.warmup_seconds);
    let measured = Duration::from_secs(args.seconds);
    let start = Instant::now() + Duration::from_millis(50);
    let (from, until) = (start + warmup, start + warmup + measured);
    let authorization = credential.map(|c| format!("Bearer {c}"));
    let mut loops = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let client = Client::connect(addr).await?;
        let (path, authorization) = (path.to_owned(), authorization.clone());
        loops.push(tokio::spawn(async move {
            client
                .drive(&path, authorization.as_deref(), from, until)
                .await
        }));
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for handle in loops {
        let (samples, failed) = handle.await??;
        latencies.extend(samples);
        errors += failed;
    }
    latencies.sort_unstable();
    let ms = |p: f64| nearest_rank(&latencies, p).map_or(f64::NAN, |&us| us as f64 / 1000.0);
    Ok(Figures {
        name,
        requests: latencies.len() as u64,
        errors,
        rate: latencies.len() as f64 / measured.as_secs_f64(),
        p50_ms: ms(50.0),
        p99_ms: ms(99.0),
    })
}

/// One keep-alive HTTP/1.1 connection.
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Body>,
    host: String,
}

impl Client {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        Ok(Client {
            sender,
            host: addr.to_string(),
        })
    }

    /// One request; the status and the body.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, axum::body::Bytes)> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.host);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))?,
            None => request.body(Body::empty())?,
        };
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let bytes = axum::body::to_bytes(Body::new(response.into_body()), usize::MAX).await?;
        Ok((status, bytes))
    }

    /// A setup call that must succeed; its JSON answer.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        credential: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let authorization = credential.map(|c| format!("Bearer {c}"));
        let (status, bytes) = self
            .send(method, path, authorization.as_deref(), body.as_ref())
            .await?;
        anyhow::ensure!(
            status.is_success(),
            "{path}: {status} {}",
            String::from_utf8_lossy(&bytes)
        );
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Requests back to back until `until`; the latencies (µs) of those that started at or
    /// after `from` and succeeded, and how many of those failed.
    async fn drive(
        mut self,
        path: &str,
        authorization: Option<&str>,
        from: Instant,
        until: Instant,
    ) -> anyhow::Result<(Vec<u32>, u64)> {
        let mut latencies = Vec::with_capacity(1 << 16);
        let mut errors = 0;
        loop {
            let sent = Instant::now();
            if sent >= until {
                return Ok((latencies, errors));
            }
            let ok = match self.send(Method::GET, path, authorization, None).await {
                Ok((status, _)) => status.is_success(),
                Err(_) => false,
            };
            if sent < from {
                continue;
            }
            if ok {
                latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
            } else {
                errors += 1;
                if errors == 1 {
                    // A broken connection cannot go on; one bad status is reported and counted.
                    if self.sender.is_closed() {
                        anyhow::bail!("{path}: the connection closed");
                    }
                }
            }
        }
    }
}

/// The server process and its data directory, both gone when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Server {
    /// Runs `serve` on a free port and waits for its `listening` line.
    fn start(
        binary: Option<&std::path::Path>,
        secret: &str,
        log_level: &str,
    ) -> anyhow::Result<Server> {
        let dir = std::env::temp_dir().join(format!("mcp-bench-http-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let binary = match binary {
            Some(path) => path.to_owned(),
            None => std::env::current_exe()?,
        };
        let child = Command::new(&binary)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .current_dir(&dir)
            .env("MCP_DATA_DIR", &dir)
            .env("MCP_JWT_SECRET", secret)
            .env("MCP_LOG_FORMAT", "json")
            // The `listening` line (info) is how the port is learnt.
            .env("MCP_LOG_LEVEL", format!("{log_level},mkww_mcp::serve=info"))
            .env_remove("RUST_LOG")
            // Every connection is 127.0.0.1 and one principal: the limits would cap the rate.
            .env("MCP_RATE_LIMIT_IP_PER_MINUTE", "1000000000")
            .env("MCP_RATE_LIMIT_READ_PER_MINUTE", "1000000000")
            .env("MCP_RATE_LIMIT_WRITE_PER_MINUTE", "1000000000")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()));
        let mut child = match child {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let stdout = child.stdout.take().context("no server stdout")?;
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        // Reads the log up to the address, then drains it unread (a full pipe would stall the
        // server), as a log collector would.
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                let entry: Value = serde_json::from_str(&line).unwrap_or_default();
                if entry["message"] == "listening" {
                    let _ = addr_tx.send(entry["addr"].as_str().unwrap_or_default().to_owned());
                    break;
                }
                line.clear();
            }
            let mut sink = [0u8; 64 * 1024];
            while reader.read(&mut sink).is_ok_and(|n| n > 0) {}
        });
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
        };
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(60))
            .context("the server did not report its address")?;
        server.addr = addr.parse().context("the server's address")?;
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
