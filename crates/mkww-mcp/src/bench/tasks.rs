//! `mkww-mcp bench tasks`: the standard queue workload, measured the way graphile-worker,
//! BullMQ and pg-boss are measured, so the figures compare:
//! 1. enqueue N `noop` tasks as sequential batches of 1,000 with no worker running;
//! 2. start the workers and time until the store shows all N `succeeded`;
//! 3. with idle workers, add tasks one at a time every 5 ms and record add → start.
//!
//! It runs against a fresh SQLite file or a fresh PostgreSQL schema, dropped afterwards.

use super::scratch::BenchStore;
use super::{percentile, quiet_logging};
use crate::config::Config;
use anyhow::Context;
use axum::serve::ListenerExt;
use chrono::{DateTime, Utc};
use clap::ValueEnum;
use mcp_core::events::{BusConfig, LocalBus};
use mcp_core::limiter::LocalLimiter;
use mcp_core::principal::Role;
use mcp_core::store::ShareLimit;
use mcp_core::task::CreateTask;
use mcp_core::{
    Backoff, ClaimRequest, Completion, HandlerRegistry, NewTask, Orchestrator, OrchestratorConfig,
    Origin, Outcome, TaskStatus, TaskStore,
};
use mcp_persistence::SqliteOptions;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// Call the orchestrator in-process.
    Direct,
    /// Go through the REST API over real HTTP (a server started in-process on a free port).
    Http,
}

#[derive(clap::Args)]
pub struct TasksBench {
    /// PostgreSQL URL (postgres://…); default: a temporary SQLite file.
    #[arg(long, env = "MCP_BENCH_DATABASE_URL")]
    database_url: Option<String>,
    #[arg(long, value_enum, default_value = "direct")]
    via: Via,
    /// Tasks enqueued and processed.
    #[arg(long, default_value_t = 50_000)]
    tasks: usize,
    /// Tasks per enqueue batch.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Tasks added one by one for the latency figure.
    #[arg(long, default_value_t = 500)]
    latency_tasks: usize,
    /// Milliseconds between two latency tasks.
    #[arg(long, default_value_t = 5)]
    latency_interval_ms: u64,
    /// Tasks the worker runs at once.
    #[arg(long, default_value_t = 1_000)]
    concurrency: usize,
    /// Most tasks per claim and per outcome write.
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// SQLite `synchronous = FULL` (fsync every commit) instead of the default NORMAL.
    #[arg(long)]
    sqlite_full: bool,
    /// Finished (`succeeded`) tasks put in the table before the run, as retention keeps them:
    /// run through the store's own insert, claim and outcome write, then the table is vacuumed
    /// and analyzed (PostgreSQL) as autovacuum would have done since.
    #[arg(long, default_value_t = 0)]
    finished: usize,
    /// A WebSocket client subscribed to `tasks` from the start of processing to the end of the
    /// latency phase, counting the events it receives (what events cost the workers).
    #[arg(long)]
    subscribe: bool,
    /// Frames queued per WebSocket connection before it is closed as too slow (4008), as
    /// `ws_send_queue`: events come in bursts of a claim or an outcome batch each.
    #[arg(long, default_value_t = 1024)]
    send_queue: usize,
    /// Threads of the WebSocket fan-out's own runtime, as `ws_fanout_threads` (0: the
    /// subscriber's writer shares the runtime with the workers).
    #[arg(long, default_value_t = Config::default().ws_fanout_threads)]
    ws_fanout_threads: usize,
    /// Deliveries a channel's subscribers on the node may fall behind the bus, as
    /// `event_buffer` (beyond: 4008 for every subscriber of the channel).
    #[arg(long, default_value_t = 1024)]
    event_buffer: usize,
}

/// Which store, and how SQLite syncs.
fn describe(backing: &BenchStore, args: &TasksBench) -> String {
    match backing {
        BenchStore::Sqlite(..) => format!(
            "sqlite (WAL, synchronous={})",
            if args.sqlite_full { "FULL" } else { "NORMAL" }
        ),
        BenchStore::Postgres(store) => format!("postgres (schema {})", store.schema()),
    }
}

/// Adds tasks the way the chosen path does.
enum Client {
    Direct(Arc<Orchestrator>),
    Http { http: reqwest::Client, base: String },
}

impl Client {
    async fn add_batch(&self, tasks: Vec<CreateTask>) -> anyhow::Result<()> {
        match self {
            Client::Direct(orchestrator) => {
                orchestrator.create_batch(tasks, Origin::default()).await?;
            }
            Client::Http { http, base } => {
                // Serialized straight from the tasks (no JSON tree on the way), and the
                // response read to its end as a client would, so the connection is reused.
                let response = http
                    .post(format!("{base}/v1/tasks/batch"))
                    .json(&Batch { tasks: &tasks })
                    .send()
                    .await?;
                let ok = response.status().is_success();
                let body = response.bytes().await?;
                anyhow::ensure!(
                    ok,
                    "batch create failed: {}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
        Ok(())
    }

    async fn add_one(&self, task: CreateTask) -> anyhow::Result<Uuid> {
        match self {
            Client::Direct(orchestrator) => {
                Ok(orchestrator.create(task, Origin::default()).await?.task.id)
            }
            Client::Http { http, base } => {
                let response = http
                    .post(format!("{base}/v1/tasks"))
                    .json(&task)
                    .send()
                    .await?;
                anyhow::ensure!(response.status().is_success(), "create failed");
                let task: mcp_core::Task = response.json().await?;
                Ok(task.id)
            }
        }
    }
}

/// The body of `POST /v1/tasks/batch`.
#[derive(serde::Serialize)]
struct Batch<'a> {
    tasks: &'a [CreateTask],
}

fn noop() -> CreateTask {
    CreateTask {
        task_type: "noop".into(),
        ..Default::default()
    }
}

/// Starts the real API (its real guard, limits set out of the way) on a free port; its address
/// and an admin token.
async fn start_api(
    args: &TasksBench,
    backing: &BenchStore,
    orchestrator: &Arc<Orchestrator>,
) -> anyhow::Result<(SocketAddr, String)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = Config {
        max_body_bytes: 16 * 1024 * 1024,
        max_batch: args.batch.max(1),
        jwt_secret: Some(uuid::Uuid::new_v4().simple().to_string().repeat(2)),
        rate_limit_ip_per_minute: u32::MAX,
        rate_limit_write_per_minute: u32::MAX,
        rate_limit_read_per_minute: u32::MAX,
        quota_tasks_per_day: 0,
        ws_send_queue: args.send_queue,
        ws_fanout_threads: args.ws_fanout_threads,
        ..Config::default()
    };
    let security = crate::serve::api::security(
        &config,
        backing.identities(),
        Arc::new(LocalLimiter::default()),
        crate::serve::api::revocations(&config, backing.identities(), None),
    )?;
    let token = security
        .tokens
        .issue("bench", Role::Admin, Duration::from_secs(24 * 3600))?;
    let app = mcp_api::router(crate::serve::api::api_state(
        &config,
        orchestrator.clone(),
        security,
        orchestrator.events().clone(),
        backing.memory(),
        None,
        (backing.schedules(), backing.queues()),
    ));
    // As `serve` does: no Nagle delay on WebSocket frames and small replies.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, token))
}

async fn wait_until_done(store: &Arc<dyn TaskStore>) -> anyhow::Result<()> {
    while store.pending().await? > 0 {
        // Counting costs the database too; poll often enough for 1% precision on a 2 s run.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Leaves `n` succeeded `noop` tasks in the store, through its own insert, claim and outcome
/// write (no orchestrator, so no events), `batch` at a time.
async fn prefill_finished(
    store: &Arc<dyn TaskStore>,
    n: usize,
    batch: usize,
) -> anyhow::Result<()> {
    const OWNER: &str = "bench-prefill";
    let batch = batch.max(1);
    let mut left = n;
    while left > 0 {
        let size = left.min(batch);
        let new: Vec<NewTask> = (0..size)
            .map(|_| NewTask {
                id: Uuid::now_v7(),
                task_type: "noop".into(),
                queue: "default".into(),
                priority: 0,
                payload: json!({}),
                max_attempts: 3,
                backoff: Backoff::default(),
                run_at: None,
                timeout_ms: 30_000,
                idempotency_key: None,
                concurrency_key: None,
                concurrency_limit: None,
                correlation_id: None,
                created_by: None,
                share_key: None,
                traceparent: None,
            })
            .collect();
        store.insert(&new).await?;
        let claimed = store
            .claim(&ClaimRequest {
                owner: OWNER.into(),
                types: vec!["noop".into()],
                limit: size as u32,
                lease: Duration::from_secs(600),
                share: ShareLimit::default(),
            })
            .await?;
        let done: Vec<Completion> = claimed
            .iter()
            .map(|t| Completion {
                id: t.id,
                outcome: Outcome::Succeeded(serde_json::Value::Null),
            })
            .collect();
        store.complete(OWNER, &done).await?;
        anyhow::ensure!(
            done.len() == size,
            "prefill claimed {} of {size}",
            done.len()
        );
        left -= size;
    }
    Ok(())
}

pub async fn run(args: TasksBench) -> anyhow::Result<()> {
    quiet_logging();
    let backing = BenchStore::open(
        args.database_url.as_deref(),
        &SqliteOptions {
            synchronous_full: args.sqlite_full,
            ..SqliteOptions::default()
        },
    )
    .await?;
    let store = backing.tasks();
    let orchestrator = Orchestrator::with_events(
        store.clone(),
        HandlerRegistry::with_builtins(),
        OrchestratorConfig {
            concurrency: args.concurrency,
            batch_size: args.batch_size,
            retention: None,
            ..OrchestratorConfig::default()
        },
        Arc::new(LocalBus::new(BusConfig {
            buffer: args.event_buffer,
            ..BusConfig::default()
        })),
    );
    // The API runs for `--via http`, and for `--subscribe` (its WebSocket) either way.
    let api = match (args.via, args.subscribe) {
        (Via::Direct, false) => None,
        _ => Some(start_api(&args, &backing, &orchestrator).await?),
    };
    let client = match (&api, args.via) {
        (Some((addr, token)), Via::Http) => {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {token}").parse()?,
            );
            Client::Http {
                http: reqwest::Client::builder()
                    .default_headers(headers)
                    .build()?,
                base: format!("http://{addr}"),
            }
        }
        _ => Client::Direct(orchestrator.clone()),
    };
    println!(
        "bench tasks: {} tasks via {}, store {}, {} cores, worker concurrency {}, batch size {}{}",
        args.tasks,
        match args.via {
            Via::Direct => "direct",
            Via::Http => "http",
        },
        describe(&backing, &args),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.concurrency,
        args.batch_size,
        if args.subscribe {
            ", a WebSocket subscriber on `tasks`"
        } else {
            ""
        },
    );

    if args.finished > 0 {
        let started = Instant::now();
        prefill_finished(&store, args.finished, args.batch_size).await?;
        backing.settle_tasks().await?;
        println!(
            "prefill:   {} finished tasks in {:.1} s",
            args.finished,
            started.elapsed().as_secs_f64()
        );
    }

    // 1. Enqueue with no worker running.
    let started = Instant::now();
    let mut left = args.tasks;
    while left > 0 {
        let n = left.min(args.batch);
        client.add_batch((0..n).map(|_| noop()).collect()).await?;
        left -= n;
    }
    let enqueue_secs = started.elapsed().as_secs_f64();
    let enqueue_rate = args.tasks as f64 / enqueue_secs;
    println!(
        "enqueue:   {enqueue_rate:>10.0} tasks/s ({} tasks in {enqueue_secs:.3} s)",
        args.tasks
    );

    // 2. Start the workers; time until every task is durably succeeded.
    let subscriber = match &api {
        Some((addr, token)) if args.subscribe => {
            Some(super::subscriber::Subscriber::start(*addr, token, "tasks").await?)
        }
        _ => None,
    };
    let started = Instant::now();
    let workers = orchestrator.start().await;
    // The worker counts outcomes once the store has committed them, so this is "durably
    // succeeded" without loading the database with counting queries; the store confirms below.
    while orchestrator.outcomes_recorded() < args.tasks as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let process_secs = started.elapsed().as_secs_f64();
    let process_rate = args.tasks as f64 / process_secs;
    let succeeded: u64 = store
        .counts()
        .await?
        .iter()
        .filter(|((_, status), _)| *status == TaskStatus::Succeeded)
        .map(|(_, n)| n)
        .sum();
    anyhow::ensure!(
        succeeded as usize == args.tasks + args.finished,
        "expected {} succeeded tasks, found {succeeded}",
        args.tasks + args.finished
    );
    println!(
        "processed: {process_rate:>10.0} tasks/s ({} tasks in {process_secs:.3} s)",
        args.tasks
    );

    // 3. Pickup latency with idle workers.
    let mut added: Vec<(Uuid, DateTime<Utc>)> = Vec::with_capacity(args.latency_tasks);
    let mut ticker = tokio::time::interval(Duration::from_millis(args.latency_interval_ms.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for _ in 0..args.latency_tasks {
        ticker.tick().await;
        let at = Utc::now();
        let id = client.add_one(noop()).await?;
        added.push((id, at));
    }
    wait_until_done(&store).await?;
    let mut latencies = Vec::with_capacity(added.len());
    for (id, at) in &added {
        let task = store.get(*id).await?.context("latency task vanished")?;
        let started_at = task.started_at.context("latency task never started")?;
        latencies.push((started_at - *at).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let (p50, p99, max) = (
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(f64::NAN),
    );
    println!("pickup latency (add -> start): p50 {p50:.3} ms, p99 {p99:.3} ms, max {max:.3} ms");
    let events = match &subscriber {
        Some(subscriber) => {
            let published =
                orchestrator.events().position("tasks").await?.offset - subscriber.start_offset;
            subscriber
                .wait_for(published, Duration::from_secs(10))
                .await;
            let received = subscriber.received();
            let dropped = orchestrator.events_dropped();
            println!(
                "subscriber on `tasks`: received {received} of {published} events published ({} dropped before the bus); {}",
                dropped,
                subscriber
                    .ended()
                    .map_or("still connected".to_owned(), |why| format!("ended: {why}")),
            );
            json!({"published": published, "received": received, "dropped": dropped,
                   "ended": subscriber.ended()})
        }
        None => serde_json::Value::Null,
    };
    println!(
        "{}",
        json!({
            "bench": "tasks",
            "via": match args.via { Via::Direct => "direct", Via::Http => "http" },
            "store": describe(&backing, &args),
            "tasks": args.tasks,
            "finished_before": args.finished,
            "enqueue_jobs_per_s": enqueue_rate.round(),
            "processed_jobs_per_s": process_rate.round(),
            "latency_add_to_start": {"p50_ms": p50, "p99_ms": p99, "max_ms": max},
            "subscriber": events,
        })
    );
    workers.shutdown().await;
    backing.cleanup().await;
    Ok(())
}
