//! The server processes a WebSocket bench talks to (this binary's own `serve`), and what
//! `/proc` says of their memory and file descriptors.

use anyhow::Context;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The server processes (one, or two sharing Redis) and their data directory.
pub struct Nodes {
    pub list: Vec<Node>,
    pub dir: PathBuf,
    pub redis: bool,
}

pub struct Node {
    pub child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
}

impl Nodes {
    pub fn start(secret: &str, redis_url: Option<&str>) -> anyhow::Result<Nodes> {
        let dir = std::env::temp_dir().join(format!("mcp-bench-ws-{}", uuid::Uuid::new_v4()));
        let mut nodes = Nodes {
            list: Vec::new(),
            dir,
            redis: redis_url.is_some(),
        };
        let prefix = format!("mcp-bench-ws-{}", uuid::Uuid::new_v4().simple());
        let count = if redis_url.is_some() { 2 } else { 1 };
        for index in 0..count {
            let data_dir = nodes.dir.join(format!("node-{index}"));
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("cannot create {}", data_dir.display()))?;
            let mut env = vec![("MCP_JWT_SECRET", secret.to_owned())];
            if let Some(url) = redis_url {
                env.push(("MCP_REDIS_URL", url.to_owned()));
                env.push(("MCP_REDIS_PREFIX", prefix.clone()));
            }
            let node = Node::start(index, &data_dir, &env)?;
            nodes.list.push(node);
        }
        Ok(nodes)
    }

    /// The node connection `i` goes to: round-robin.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.list[i % self.list.len()].addr
    }

    /// Resident memory of all the server processes, in bytes.
    pub fn rss(&self) -> anyhow::Result<u64> {
        self.list.iter().map(|n| rss_of(&n.pid.to_string())).sum()
    }

    pub fn describe(&self) -> String {
        if self.redis {
            format!("{} nodes sharing Redis", self.list.len())
        } else {
            "one node".to_owned()
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for node in &mut self.list {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Node {
    /// Runs `serve` from this very binary on a free port and waits for its `listening` line.
    pub fn start(index: usize, data_dir: &Path, env: &[(&str, String)]) -> anyhow::Result<Node> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .current_dir(data_dir)
            .env("MCP_DATA_DIR", data_dir)
            .env("MCP_LOG_FORMAT", "json")
            // Warnings only, but the `listening` line (info) is how the port is learnt.
            .env("MCP_LOG_LEVEL", "warn,mkww_mcp::serve=info")
            .env_remove("RUST_LOG")
            // Every connection comes from 127.0.0.1 and the publisher is one connection.
            .env("MCP_RATE_LIMIT_IP_PER_MINUTE", "1000000000")
            .env("MCP_RATE_LIMIT_AUTH_PER_MINUTE", "1000000000")
            .env("MCP_WS_OPS_PER_SECOND", "1000000")
            // One principal publishes every message: its publish and write limits would cap the
            // saturation phase.
            .env("MCP_WS_PUBLISH_PER_MINUTE", "1000000000")
            .env("MCP_RATE_LIMIT_WRITE_PER_MINUTE", "1000000000")
            // The connection caps too: every connection comes from one address, and the scale
            // phase holds as many as the open-file limit allows.
            .env("MCP_MAX_CONNECTIONS_PER_IP", "0")
            .env("MCP_MAX_CONNECTIONS", "1000000")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().context("cannot start the server")?;
        let stdout = child.stdout.take().context("no server stdout")?;
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        // Reads the log for the address, then keeps draining it (a full pipe would stall the
        // server), showing the first few warnings.
        std::thread::spawn(move || {
            let mut shown = 0;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if entry["message"] == "listening" {
                    let _ = addr_tx.send(entry["addr"].as_str().unwrap_or_default().to_owned());
                } else if shown < 20 {
                    shown += 1;
                    eprintln!("[node {index}] {line}");
                }
            }
        });
        let addr = match addr_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("the server did not report its address");
            }
        };
        Ok(Node {
            pid: child.id(),
            child,
            addr: addr.parse().context("the server's address")?,
        })
    }
}

/// Raises the soft open-file limit to the hard one (children, the servers, inherit it).
pub fn raise_fd_limit() -> usize {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit as usize,
        Err(e) => {
            eprintln!("cannot raise the open-file limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft as usize)
        }
    }
}

/// A 40-character HS256 secret for this run only.
pub fn random_secret() -> String {
    let mut secret = uuid::Uuid::new_v4().simple().to_string();
    secret.push_str(&uuid::Uuid::new_v4().simple().to_string());
    secret.truncate(40);
    secret
}

/// `VmRSS` of a process (`self` or a pid), in bytes.
pub fn rss_of(pid: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

pub fn open_fds(pid: &str) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("cannot list /proc/{pid}/fd"))?
        .count())
}

/// The soft open-file limit of a process.
pub fn fd_limit_of(pid: &str) -> anyhow::Result<usize> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no open-file limit in /proc/…/limits")
}
