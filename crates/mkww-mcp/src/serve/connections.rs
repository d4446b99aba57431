//! Who may hold a connection: a cap on open connections per client IP and in total, so that a
//! flood of idle or half-sent connections cannot take every file descriptor (and with them the
//! probes and every other client). Beyond the total cap a few connections are still let in to
//! serve `/healthz` and `/readyz` only (`probe_connections`), on a short clock, so an
//! orchestrator keeps seeing the node while it sheds load.
//!
//! The per-IP cap does not apply to `trusted_proxies`: behind a load balancer every connection
//! comes from one of them, and the proxy is where clients are told apart and capped.
//!
//! The count is of sockets, not requests: a permit lives inside the connection's I/O and is
//! returned when the socket closes, so a WebSocket keeps its slot after the upgrade.

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// The caps, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCaps {
    /// Most connections served normally.
    pub total: usize,
    /// Most connections from one client IP; 0: no cap.
    pub per_ip: usize,
    /// Connections beyond `total` that may still ask for the probes.
    pub probes: usize,
}

/// What a new connection is allowed.
#[derive(Debug)]
pub enum Admission {
    /// Served like any other.
    Full(Permit),
    /// Over the total cap: served for the probes only.
    ProbesOnly(Permit),
    /// Refused (the reason, for the log).
    Refused(&'static str),
}

#[derive(Debug, Default)]
struct Counts {
    full: usize,
    probes: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// The open connections of the listener.
#[derive(Debug)]
pub struct Connections {
    caps: ConnectionCaps,
    /// Peers the per-IP cap does not apply to (the trusted proxies).
    uncapped: Vec<IpNet>,
    counts: Mutex<Counts>,
    /// Woken whenever a connection closes (shutdown waits for none to be left).
    closed: Notify,
}

impl Connections {
    pub fn new(caps: ConnectionCaps, uncapped: Vec<IpNet>) -> Arc<Connections> {
        Arc::new(Connections {
            caps,
            uncapped,
            counts: Mutex::new(Counts::default()),
            closed: Notify::new(),
        })
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        // A panic while counting leaves the counts as they were: keep going.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits (or not) a connection from `ip`.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Admission {
        let mut counts = self.counts();
        let from_ip = counts.per_ip.get(&ip).copied().unwrap_or(0);
        if self.caps.per_ip > 0
            && from_ip >= self.caps.per_ip
            && !self.uncapped.iter().any(|net| net.contains(&ip))
        {
            return Admission::Refused("too many connections from this address");
        }
        let probes_only = if counts.full < self.caps.total {
            counts.full += 1;
            false
        } else if counts.probes < self.caps.probes {
            counts.probes += 1;
            true
        } else {
            return Admission::Refused("too many connections");
        };
        *counts.per_ip.entry(ip).or_insert(0) += 1;
        let permit = Permit {
            connections: self.clone(),
            ip,
            probes_only,
        };
        if probes_only {
            Admission::ProbesOnly(permit)
        } else {
            Admission::Full(permit)
        }
    }

    /// Connections open now (probe-only ones included).
    pub fn open(&self) -> usize {
        let counts = self.counts();
        counts.full + counts.probes
    }

    /// Waits until no connection is open, or `deadline`; says whether none is.
    pub async fn wait_closed(&self, deadline: Instant) -> bool {
        loop {
            let closed = self.closed.notified();
            if self.open() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline.into(), closed)
                .await
                .is_err()
            {
                return self.open() == 0;
            }
        }
    }

    fn release(&self, ip: IpAddr, probes_only: bool) {
        {
            let mut counts = self.counts();
            if probes_only {
                counts.probes = counts.probes.saturating_sub(1);
            } else {
                counts.full = counts.full.saturating_sub(1);
            }
            if let Some(n) = counts.per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.per_ip.remove(&ip);
                }
            }
        }
        self.closed.notify_waiters();
    }
}

/// One admitted connection's slot, returned when dropped.
#[derive(Debug)]
pub struct Permit {
    connections: Arc<Connections>,
    ip: IpAddr,
    probes_only: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.connections.release(self.ip, self.probes_only);
    }
}

/// When bytes last moved on a connection, for the idle timeout.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }

    /// How long nothing has moved.
    pub fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// A connection's I/O, holding its permit (the slot lives as long as the socket, upgrades
/// included) and noting when bytes move.
pub struct Tracked<T> {
    io: T,
    activity: Arc<Activity>,
    _permit: Permit,
}

impl<T> Tracked<T> {
    pub fn new(io: T, permit: Permit, activity: Arc<Activity>) -> Tracked<T> {
        Tracked {
            io,
            activity,
            _permit: permit,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The total cap when `max_connections` is 0: three quarters of the open-file limit, leaving
/// the rest for the database pool, Redis, log and data files and outgoing calls.
pub fn default_total(open_files: Option<u64>) -> usize {
    match open_files {
        Some(limit) if limit > 64 => (limit / 4 * 3) as usize,
        Some(limit) => (limit / 2).max(1) as usize,
        // No limit known (or "unlimited"): a conservative cap.
        None => 10_000,
    }
}

/// The soft open-file limit of this process, when it has one.
pub fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        match rlimit::getrlimit(rlimit::Resource::NOFILE) {
            Ok((soft, _)) if soft != rlimit::INFINITY => Some(soft),
            _ => None,
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn caps_each_address_and_the_total_with_a_probe_reserve() {
        let connections = Connections::new(
            ConnectionCaps {
                total: 3,
                per_ip: 2,
                probes: 1,
            },
            Vec::new(),
        );
        let a1 = connections.admit(ip("10.0.0.1"));
        let a2 = connections.admit(ip("10.0.0.1"));
        assert!(matches!(a1, Admission::Full(_)) && matches!(a2, Admission::Full(_)));
        assert!(matches!(
            connections.admit(ip("10.0.0.1")),
            Admission::Refused("too many connections from this address")
        ));
        let b1 = connections.admit(ip("10.0.0.2"));
        assert!(matches!(b1, Admission::Full(_)));
        let c1 = connections.admit(ip("10.0.0.3"));
        assert!(matches!(c1, Admission::ProbesOnly(_)), "{c1:?}");
        assert!(matches!(
            connections.admit(ip("10.0.0.4")),
            Admission::Refused("too many connections")
        ));
        assert_eq!(connections.open(), 4);
        drop(a1);
        let d1 = connections.admit(ip("10.0.0.4"));
        assert!(matches!(d1, Admission::Full(_)), "{d1:?}");
        drop((a2, b1, c1));
        assert_eq!(connections.open(), 1);
        drop(d1);
        assert_eq!(connections.open(), 0);
        assert!(connections.counts().per_ip.is_empty());
    }

    #[test]
    fn no_per_address_cap_when_zero() {
        let connections = Connections::new(
            ConnectionCaps {
                total: 100,
                per_ip: 0,
                probes: 0,
            },
            Vec::new(),
        );
        let held: Vec<_> = (0..50).map(|_| connections.admit(ip("::1"))).collect();
        assert!(held.iter().all(|a| matches!(a, Admission::Full(_))));
    }

    #[test]
    fn trusted_proxies_are_not_capped_per_address() {
        let connections = Connections::new(
            ConnectionCaps {
                total: 100,
                per_ip: 1,
                probes: 0,
            },
            vec!["10.0.0.0/8".parse().unwrap()],
        );
        let proxied: Vec<_> = (0..5).map(|_| connections.admit(ip("10.1.2.3"))).collect();
        assert!(proxied.iter().all(|a| matches!(a, Admission::Full(_))));
        let _one = connections.admit(ip("192.0.2.1"));
        assert!(matches!(
            connections.admit(ip("192.0.2.1")),
            Admission::Refused(_)
        ));
    }

    #[tokio::test]
    async fn waits_for_the_last_connection_to_close() {
        let connections = Connections::new(
            ConnectionCaps {
                total: 10,
                per_ip: 0,
                probes: 0,
            },
            Vec::new(),
        );
        let permit = connections.admit(ip("127.0.0.1"));
        let deadline = Instant::now() + Duration::from_millis(50);
        assert!(!connections.wait_closed(deadline).await);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(permit);
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(connections.wait_closed(deadline).await);
    }

    #[test]
    fn the_default_total_stays_below_the_open_file_limit() {
        assert_eq!(default_total(Some(20_000)), 15_000);
        assert_eq!(default_total(Some(1024)), 768);
        assert_eq!(default_total(Some(10)), 5);
        assert_eq!(default_total(None), 10_000);
    }
}
