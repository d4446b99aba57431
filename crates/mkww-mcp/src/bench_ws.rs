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

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use mcp_api::token::Tokens;
use mcp_core::principal::Role;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

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

/// Bytes the client reads at once per connection (tungstenite's default, 128 KiB, is for bulk).
const CLIENT_READ_BUFFER: usize = 8 * 1024;
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
        p50_ms: ms(percentile(&latencies, 50.0)),
        p99_ms: ms(percentile(&latencies, 99.0)),
        max_ms: ms(latencies.last()),
    })
}

fn percentile(sorted: &[u64], p: f64) -> Option<&u64> {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1)
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

/// Counters every subscriber adds to.
#[derive(Default)]
struct Shared {
    delivered: AtomicU64,
    closed: AtomicU64,
    /// Why subscribers ended, and how many for each reason.
    why: Mutex<BTreeMap<String, usize>>,
}

impl Shared {
    fn ended(&self, why: String) {
        self.closed.fetch_add(1, Ordering::Relaxed);
        *lock(&self.why).entry(why).or_default() += 1;
    }

    fn closes(&self) -> BTreeMap<String, usize> {
        lock(&self.why).clone()
    }
}

/// What one subscriber saw during the current phase.
#[derive(Default)]
struct Tally {
    latencies_ns: Vec<u64>,
    last_receive_ns: u64,
}

struct Subscriber {
    tally: Arc<Mutex<Tally>>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Connects and subscribes in a task of its own; `up` says when it is subscribed.
    fn spawn(
        addr: SocketAddr,
        credential: String,
        channel: String,
        shared: Arc<Shared>,
    ) -> (Subscriber, oneshot::Receiver<anyhow::Result<()>>) {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let (up_tx, up) = oneshot::channel();
        let mine = tally.clone();
        let task = tokio::spawn(async move {
            let ws = match subscribe(addr, &credential, &channel).await {
                Ok(ws) => ws,
                Err(e) => {
                    let _ = up_tx.send(Err(e));
                    return;
                }
            };
            let _ = up_tx.send(Ok(()));
            let why = receive(ws, &mine, &shared).await;
            shared.ended(why);
        });
        (Subscriber { tally, task }, up)
    }
}

async fn subscribe(addr: SocketAddr, credential: &str, channel: &str) -> anyhow::Result<Ws> {
    let mut ws = open(addr, credential).await?;
    let frame = json!({"id": 1, "op": "subscribe", "channel": channel}).to_string();
    ws.send(Message::text(frame)).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(reply))) if reply.contains("\"ok\":true") => return Ok(ws),
            Some(Ok(Message::Text(reply))) => anyhow::bail!("subscribe refused: {reply}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("the server closed the connection"),
        }
    }
}

/// Reads events until the connection ends; says why it ended.
async fn receive(mut ws: Ws, tally: &Mutex<Tally>, shared: &Shared) -> String {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(frame))) => {
                let received = now_ns();
                if let Some(sent) = sent_at(frame.as_str()) {
                    let mut tally = lock(tally);
                    tally.latencies_ns.push(received.saturating_sub(sent));
                    tally.last_receive_ns = received;
                    drop(tally);
                    shared.delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return frame.map_or("close without a code".into(), |f| {
                    format!("close {}", u16::from(f.code))
                });
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return format!("error: {e}"),
            None => return "connection ended".into(),
        }
    }
}

/// The send time the publisher put in the event's data (`"data":{"t":…}`).
fn sent_at(frame: &str) -> Option<u64> {
    const KEY: &str = "\"data\":{\"t\":";
    let start = frame.find(KEY)? + KEY.len();
    let rest = &frame[start..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

/// The connection that publishes; its replies are read (and errors counted) by a task.
struct Publisher {
    sink: tokio::sync::Mutex<futures::stream::SplitSink<Ws, Message>>,
    channel: String,
    errors: Arc<AtomicU64>,
    first_error: Arc<Mutex<String>>,
    task: JoinHandle<()>,
}

impl Publisher {
    async fn open(addr: SocketAddr, credential: &str, channel: &str) -> anyhow::Result<Publisher> {
        let (sink, mut stream) = open(addr, credential).await?.split();
        let errors = Arc::new(AtomicU64::new(0));
        let first_error = Arc::new(Mutex::new(String::new()));
        let (counted, first) = (errors.clone(), first_error.clone());
        let task = tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Text(reply) = message
                    && reply.contains("\"error\"")
                    && counted.fetch_add(1, Ordering::Relaxed) == 0
                {
                    *lock(&first) = reply.to_string();
                }
            }
        });
        Ok(Publisher {
            sink: tokio::sync::Mutex::new(sink),
            channel: serde_json::to_string(channel)?,
            errors,
            first_error,
            task,
        })
    }

    async fn publish(&self, sent_ns: u64) -> anyhow::Result<()> {
        let frame = format!(
            r#"{{"op":"publish","channel":{},"data":{{"t":{sent_ns}}}}}"#,
            self.channel
        );
        self.sink.lock().await.send(Message::text(frame)).await?;
        Ok(())
    }
}

async fn open(addr: SocketAddr, credential: &str) -> anyhow::Result<Ws> {
    let mut request = format!("ws://{addr}/v1/ws").into_client_request()?;
    request
        .headers_mut()
        .insert(AUTHORIZATION, format!("Bearer {credential}").parse()?);
    let config = WebSocketConfig::default()
        .read_buffer_size(CLIENT_READ_BUFFER)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true).await?;
    Ok(ws)
}

/// The server processes (one, or two sharing Redis) and their data directory.
struct Nodes {
    list: Vec<Node>,
    dir: PathBuf,
    redis: bool,
}

struct Node {
    child: Child,
    pid: u32,
    addr: SocketAddr,
}

impl Nodes {
    fn start(secret: &str, redis_url: Option<&str>) -> anyhow::Result<Nodes> {
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
    fn addr(&self, i: usize) -> SocketAddr {
        self.list[i % self.list.len()].addr
    }

    /// Resident memory of all the server processes, in bytes.
    fn rss(&self) -> anyhow::Result<u64> {
        self.list.iter().map(|n| rss_of(&n.pid.to_string())).sum()
    }

    fn describe(&self) -> String {
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
    fn start(index: usize, data_dir: &Path, env: &[(&str, String)]) -> anyhow::Result<Node> {
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

/// Nanoseconds since the bench started, on the monotonic clock every client task shares.
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Raises the soft open-file limit to the hard one (children, the servers, inherit it).
fn raise_fd_limit() -> usize {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit as usize,
        Err(e) => {
            eprintln!("cannot raise the open-file limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft as usize)
        }
    }
}

/// A 40-character HS256 secret for this run only.
fn random_secret() -> String {
    let mut secret = uuid::Uuid::new_v4().simple().to_string();
    secret.push_str(&uuid::Uuid::new_v4().simple().to_string());
    secret.truncate(40);
    secret
}

/// `VmRSS` of a process (`self` or a pid), in bytes.
fn rss_of(pid: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

fn open_fds(pid: &str) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("cannot list /proc/{pid}/fd"))?
        .count())
}

/// The soft open-file limit of a process.
fn fd_limit_of(pid: &str) -> anyhow::Result<usize> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no open-file limit in /proc/…/limits")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_send_time_out_of_an_event_frame() {
        let frame = r#"{"op":"event","channel":"room:bench","offset":3,"epoch":"e","event":{"type":"message","data":{"t":123456789},"at":"2026-01-01T00:00:00Z"}}"#;
        assert_eq!(sent_at(frame), Some(123_456_789));
        assert_eq!(sent_at(r#"{"id":1,"ok":true,"result":{}}"#), None);
    }
}
