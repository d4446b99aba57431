//! `mkww-mcp bench ws`: the standard WebSocket fan-out workload, measured the way socket.io and
//! Node's `ws` are, against the real server started as a separate process:
//! 1. C authenticated subscribers join one channel, connected in batches; the server's RSS before
//!    and after gives the bytes per connection;
//! 2. latency: one publisher sends messages at a low rate, each carrying its send time;
//! 3. saturation: more messages at a higher rate → deliveries per second;
//! 4. scale: idle connections held open at once, then each checked alive with a ping.
//!
//! With `--redis-url` two server processes share the event bus through Redis: the subscribers
//! are split across both, the publisher talks to one.
//!
//! Clients and server share the machine, so the clients are kept cheap: one task per connection,
//! small buffers, and only the send time is read out of each event (no JSON parse).

pub(super) mod clients;
mod nodes;

use self::clients::{Publisher, Shared, Subscriber, lock, now_ns, open};
use self::nodes::{Nodes, fd_limit_of, open_fds, raise_fd_limit, random_secret, rss_of};
use super::nearest_rank;
use anyhow::Context;
use futures::{SinkExt, StreamExt};
use mcp_api::token::Tokens;
use mcp_core::principal::Role;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args)]
pub struct WsBench {
    /// Redis URL (redis://…): run two server processes sharing the event bus through it.
    #[arg(long, env = "MCP_BENCH_REDIS_URL")]
    redis_url: Option<String>,
    /// Subscribers on the channel (C).
    #[arg(long, default_value_t = 2_000)]
    subscribers: usize,
    /// Connections opened at once.
    #[arg(long, default_value_t = 100)]
    connect_batch: usize,
    /// The channel (its namespace must be open to every authenticated client).
    #[arg(long, default_value = "room:bench")]
    channel: String,
    /// Messages of the latency phase.
    #[arg(long, default_value_t = 50)]
    latency_messages: usize,
    /// Messages per second of the latency phase.
    #[arg(long, default_value_t = 10)]
    latency_rate: u32,
    /// Messages of the saturation phase.
    #[arg(long, default_value_t = 500)]
    saturation_messages: usize,
    /// Messages per second of the saturation phase.
    #[arg(long, default_value_t = 250)]
    saturation_rate: u32,
    /// Connections held open at once in the scale phase, counting the subscribers (0: skip it).
    #[arg(long, default_value_t = 20_000)]
    hold: usize,
    /// Seconds the scale phase holds them before pinging each.
    #[arg(long, default_value_t = 5)]
    hold_secs: u64,
    /// One token for every connection instead of one subject per connection.
    #[arg(long)]
    shared_token: bool,
}

/// File descriptors left free in each process for what it opens besides connections.
const FD_MARGIN: usize = 32;
/// A phase is over when every delivery arrived, or when none arrived for this long.
const SETTLE: Duration = Duration::from_secs(3);

pub async fn run(args: WsBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.latency_rate > 0 && args.saturation_rate > 0 && args.connect_batch > 0,
        "rates and --connect-batch must be positive"
    );
    now_ns();
    let fd_limit = raise_fd_limit();
    let secret = random_secret();
    let tokens = Tokens::hs256(secret.as_bytes(), "mkww-mcp", "mkww-mcp")?;
    let nodes = Nodes::start(&secret, args.redis_url.as_deref())?;
    let outcome = bench(&args, &nodes, &tokens, fd_limit).await;
    drop(nodes);
    outcome
}

async fn bench(
    args: &WsBench,
    nodes: &Nodes,
    tokens: &Tokens,
    fd_limit: usize,
) -> anyhow::Result<()> {
    let token = |i: usize| -> anyhow::Result<String> {
        let subject = if args.shared_token {
            "bench".to_owned()
        } else {
            format!("bench-{i}")
        };
        Ok(tokens.issue(&subject, Role::User, Duration::from_secs(3600))?)
    };
    println!(
        "bench ws: {} subscribers on `{}`, {} ({} cores shared by clients and server), fd limit {fd_limit}",
        args.subscribers,
        args.channel,
        nodes.describe(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let shared = Arc::new(Shared::default());

    // 1. Subscribers, connected a batch at a time; RSS before and after.
    let rss_before = nodes.rss()?;
    let started = Instant::now();
    let mut subscribers = Vec::with_capacity(args.subscribers);
    for batch in (0..args.subscribers)
        .collect::<Vec<_>>()
        .chunks(args.connect_batch)
    {
        let mut ready = Vec::with_capacity(batch.len());
        for &i in batch {
            let (subscriber, up) = Subscriber::spawn(
                nodes.addr(i),
                token(i)?,
                args.channel.clone(),
                shared.clone(),
            );
            subscribers.push(subscriber);
            ready.push(up);
        }
        for up in ready {
            up.await
                .context("a subscriber task ended")?
                .context("a subscriber could not connect and subscribe")?;
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = nodes.rss()?;
    let per_subscriber =
        rss_after.saturating_sub(rss_before) as f64 / args.subscribers.max(1) as f64;
    println!(
        "connect:    {} subscribers in {connect_secs:.2} s ({:.0}/s); server RSS {} -> {} = {} per connection",
        args.subscribers,
        args.subscribers as f64 / connect_secs,
        mib(rss_before),
        mib(rss_after),
        kib(per_subscriber),
    );

    let publisher = Publisher::open(nodes.addr(0), &token(usize::MAX)?, &args.channel).await?;

    // 2. Latency at a low rate.
    let latency = phase(
        &publisher,
        &subscribers,
        &shared,
        args.latency_messages,
        args.latency_rate,
    )
    .await?;
    println!(
        "latency:    {} msgs at {}/s: delivered {} of {}, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.latency_messages,
        args.latency_rate,
        latency.delivered,
        latency.expected,
        latency.p50_ms,
        latency.p99_ms,
        latency.max_ms,
    );

    // 3. Saturation.
    let saturation = phase(
        &publisher,
        &subscribers,
        &shared,
        args.saturation_messages,
        args.saturation_rate,
    )
    .await?;
    println!(
        "saturation: {} msgs at {}/s (sent in {:.2} s): delivered {} of {} ({} missing) in {:.2} s = {:.0} deliveries/s; latency p50 {:.2} ms, p99 {:.2} ms",
        args.saturation_messages,
        args.saturation_rate,
        saturation.send_secs,
        saturation.delivered,
        saturation.expected,
        saturation.expected - saturation.delivered,
        saturation.span_secs,
        saturation.per_second,
        saturation.p50_ms,
        saturation.p99_ms,
    );
    let closes = shared.closes();
    println!(
        "closes:     {}",
        if closes.is_empty() {
            "none".to_owned()
        } else {
            format!("{closes:?}")
        }
    );
    let publish_errors = publisher.errors.load(Ordering::Relaxed);
    if publish_errors > 0 {
        println!(
            "publisher:  {publish_errors} error replies, first: {}",
            lock(&publisher.first_error)
        );
    }

    // 4. Scale: idle connections held on top of the subscribers.
    let scale = if args.hold > 0 {
        Some(scale(args, nodes, &token, fd_limit, subscribers.len() + 1).await?)
    } else {
        None
    };

    println!(
        "{}",
        json!({
            "bench": "ws",
            "nodes": nodes.describe(),
            "subscribers": args.subscribers,
            "bytes_per_connection": per_subscriber.round(),
            "latency": {"p50_ms": latency.p50_ms, "p99_ms": latency.p99_ms, "max_ms": latency.max_ms,
                        "delivered": latency.delivered, "expected": latency.expected},
            "saturation": {"deliveries_per_s": saturation.per_second.round(),
                           "delivered": saturation.delivered, "expected": saturation.expected,
                           "p50_ms": saturation.p50_ms, "p99_ms": saturation.p99_ms},
            "closes": closes,
            "scale": scale,
        })
    );
    publisher.task.abort();
    for subscriber in subscribers {
        subscriber.task.abort();
    }
    Ok(())
}

struct PhaseResult {
    expected: u64,
    delivered: u64,
    send_secs: f64,
    span_secs: f64,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// Publishes `messages` at `rate`, waits for the deliveries, and gathers what each subscriber saw.
async fn phase(
    publisher: &Publisher,
    subscribers: &[Subscriber],
    shared: &Shared,
    messages: usize,
    rate: u32,
) -> anyhow::Result<PhaseResult> {
    let live = subscribers.len() as u64 - shared.closed.load(Ordering::Relaxed);
    let expected = messages as u64 * live;
    let start_count = shared.delivered.load(Ordering::Relaxed);
    let first_send = now_ns();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    for _ in 0..messages {
        ticker.tick().await;
        publisher.publish(now_ns()).await?;
    }
    let send_secs = (now_ns() - first_send) as f64 / 1e9;
    let (mut seen, mut last_progress) = (start_count, Instant::now());
    loop {
        let now = shared.delivered.load(Ordering::Relaxed);
        if now - start_count >= expected || last_progress.elapsed() >= SETTLE {
            break;
        }
        if now != seen {
            (seen, last_progress) = (now, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut latencies = Vec::with_capacity(expected as usize);
    let mut last_receive = first_send;
    for subscriber in subscribers {
        let mut tally = lock(&subscriber.tally);
        latencies.append(&mut tally.latencies_ns);
        last_receive = last_receive.max(tally.last_receive_ns);
    }
    let delivered = latencies.len() as u64;
    latencies.sort_unstable();
    let span_secs = (last_receive - first_send) as f64 / 1e9;
    let ms = |ns: Option<&u64>| ns.map_or(f64::NAN, |&ns| ns as f64 / 1e6);
    Ok(PhaseResult {
        expected,
        delivered,
        send_secs,
        span_secs,
        per_second: delivered as f64 / span_secs,
        p50_ms: ms(nearest_rank(&latencies, 50.0)),
        p99_ms: ms(nearest_rank(&latencies, 99.0)),
        max_ms: ms(latencies.last()),
    })
}

/// Opens idle connections until `args.hold` are open at once (as far as file descriptors allow),
/// measures the server's RSS per idle connection, holds them, then pings every one.
async fn scale(
    args: &WsBench,
    nodes: &Nodes,
    token: &impl Fn(usize) -> anyhow::Result<String>,
    fd_limit: usize,
    open_now: usize,
) -> anyhow::Result<serde_json::Value> {
    let wanted = args.hold.saturating_sub(open_now);
    // Each process (this one and every server) needs one descriptor per connection.
    let client_room = fd_limit.saturating_sub(open_fds("self")? + FD_MARGIN);
    let mut server_room = usize::MAX;
    for node in &nodes.list {
        let pid = node.pid.to_string();
        let room = fd_limit_of(&pid)?.saturating_sub(open_fds(&pid)? + FD_MARGIN);
        server_room = server_room.min(room.saturating_mul(nodes.list.len()));
    }
    let fits = wanted.min(client_room).min(server_room);
    if fits < wanted {
        println!(
            "scale:      {} connections cannot all be held: the open-file limit is {fd_limit} per process \
             and cannot be raised here (hard limit); room for {client_room} more in this client, \
             {server_room} more in the server{}; holding {} in all",
            args.hold,
            if nodes.list.len() > 1 { "s" } else { "" },
            open_now + fits,
        );
    }
    let rss_before = nodes.rss()?;
    let alive = Arc::new(AtomicU64::new(0));
    let pongs = Arc::new(AtomicU64::new(0));
    let (check, check_rx) = watch::channel(());
    let mut holders = Vec::with_capacity(fits);
    let mut failures = BTreeMap::<String, usize>::new();
    let started = Instant::now();
    for batch in (0..fits).collect::<Vec<_>>().chunks(args.connect_batch) {
        let mut ready = Vec::with_capacity(batch.len());
        for &i in batch {
            let (up_tx, up) = oneshot::channel();
            let addr = nodes.addr(i);
            let credential = token(args.subscribers + 1 + i)?;
            let (alive, pongs, check_rx) = (alive.clone(), pongs.clone(), check_rx.clone());
            holders.push(tokio::spawn(async move {
                hold(addr, credential, up_tx, alive, pongs, check_rx).await;
            }));
            ready.push(up);
        }
        for up in ready {
            match up.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => *failures.entry(format!("{e:#}")).or_default() += 1,
                Err(_) => *failures.entry("task ended".into()).or_default() += 1,
            }
        }
    }
    let opened = alive.load(Ordering::Relaxed);
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = nodes.rss()?;
    let per_idle = rss_after.saturating_sub(rss_before) as f64 / opened.max(1) as f64;
    println!(
        "scale:      opened {opened} idle connections in {open_secs:.1} s ({} failed{}); server RSS {} -> {} = {} per idle connection; {} open in all",
        failures.values().sum::<usize>(),
        if failures.is_empty() {
            String::new()
        } else {
            format!(": {failures:?}")
        },
        mib(rss_before),
        mib(rss_after),
        kib(per_idle),
        open_now as u64 + opened,
    );
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let still = alive.load(Ordering::Relaxed);
    check.send_replace(());
    let deadline = Instant::now() + Duration::from_secs(10);
    while pongs.load(Ordering::Relaxed) < still && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answered = pongs.load(Ordering::Relaxed);
    println!(
        "scale:      after {} s {still} of {opened} still open, {answered} answered a ping; {} held with the subscribers; client RSS {}",
        args.hold_secs,
        open_now as u64 + answered,
        mib(rss_of("self")?),
    );
    for holder in holders {
        holder.abort();
    }
    Ok(json!({
        "wanted": args.hold,
        "held": open_now as u64 + answered,
        "idle_opened": opened,
        "idle_failed": failures.values().sum::<usize>(),
        "bytes_per_idle_connection": per_idle.round(),
        "fd_limit": fd_limit,
    }))
}

/// One idle connection: answers the server's pings, and pings once when `check` fires.
async fn hold(
    addr: SocketAddr,
    credential: String,
    up: oneshot::Sender<anyhow::Result<()>>,
    alive: Arc<AtomicU64>,
    pongs: Arc<AtomicU64>,
    mut check: watch::Receiver<()>,
) {
    let mut ws = match open(addr, &credential).await {
        Ok(ws) => ws,
        Err(e) => {
            let _ = up.send(Err(e));
            return;
        }
    };
    check.mark_unchanged();
    alive.fetch_add(1, Ordering::Relaxed);
    let _ = up.send(Ok(()));
    loop {
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Pong(_))) => {
                    pongs.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            Ok(()) = check.changed() => {
                if ws.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
        }
    }
    alive.fetch_sub(1, Ordering::Relaxed);
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}
