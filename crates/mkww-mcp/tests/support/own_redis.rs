//! A private `redis-server` for one test, on a free port, that the test may stop and start again
//! without touching the machine's Redis: what a Redis outage looks like to the nodes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
}

/// How long a fresh `redis-server` may take to answer PING.
const START_PATIENCE: Duration = Duration::from_secs(10);

impl OwnRedis {
    /// Whether `redis-server` can be run here. Without it a test skips, except in CI (`CI` set
    /// to anything non-empty), where that is a failure.
    pub fn available() -> bool {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
                panic!("redis-server is required in CI");
            }
            // Straight to stderr: libtest hides what `eprintln!` prints in a passing test.
            let _ = writeln!(std::io::stderr(), "skipping: no redis-server to run");
        }
        found
    }

    /// A Redis on a free port, not started yet.
    pub fn reserve() -> OwnRedis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        OwnRedis { port, child: None }
    }

    /// A Redis on a free port, answering PING.
    pub fn start() -> OwnRedis {
        let mut redis = OwnRedis::reserve();
        redis.up();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (empty: nothing is saved) on its port and waits for PING.
    pub fn up(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + START_PATIENCE;
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL): connections drop, new ones are refused, its data is gone.
    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it answers PING now.
    pub fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }

    /// Keys under `prefix` now (through `redis-cli`).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw", "KEYS"])
            .arg(format!("{prefix}*"))
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.down();
    }
}
