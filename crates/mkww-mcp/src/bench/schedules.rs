//! `mkww-mcp bench schedules`: how late an idle node fires its schedules. A few schedules fire
//! every second; each `schedule.fired` event carries how long after its due time the firing's
//! task was stored (`delay_ms`). Prints p50, p99 and the worst. Target: p99 ≤ 50 ms.
//!
//! It runs against a fresh SQLite file or a fresh PostgreSQL schema, dropped afterwards.

use super::scratch::BenchStore;
use super::{percentile, quiet_logging};
use mcp_core::events::{EventBus, LocalBus};
use mcp_core::services::schedules::SCHEDULES_CHANNEL;
use mcp_core::services::{
    CreateSchedule, ScheduleService, SchedulerConfig, TaskLimits, TaskService, scheduler,
};
use mcp_core::{HandlerRegistry, Orchestrator, OrchestratorConfig};
use mcp_persistence::SqliteOptions;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub struct SchedulesBench {
    /// PostgreSQL URL (postgres://…); default: a temporary SQLite file.
    #[arg(long, env = "MCP_BENCH_DATABASE_URL")]
    database_url: Option<String>,
    /// Schedules firing every second.
    #[arg(long, default_value_t = 5)]
    schedules: usize,
    /// How long to measure, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
}

pub async fn run(args: SchedulesBench) -> anyhow::Result<()> {
    quiet_logging();
    let backing = BenchStore::open(args.database_url.as_deref(), &SqliteOptions::default()).await?;
    println!("store: {}", backing.location());
    let result = measure(&backing, &args).await;
    backing.cleanup().await;
    result
}

async fn measure(backing: &BenchStore, args: &SchedulesBench) -> anyhow::Result<()> {
    let bus: Arc<dyn EventBus> = Arc::new(LocalBus::default());
    // No worker runs: the figure is the firing alone, on an idle node.
    let orchestrator = Orchestrator::with_events(
        backing.tasks(),
        HandlerRegistry::with_builtins(),
        OrchestratorConfig::default(),
        bus.clone(),
    );
    let tasks = Arc::new(TaskService::new(
        orchestrator,
        backing.identities(),
        TaskLimits::default(),
    ));
    let service = Arc::new(ScheduleService::new(
        backing.schedules(),
        tasks,
        bus.clone(),
        SchedulerConfig::default(),
    ));
    let mut fired = bus.subscribe(SCHEDULES_CHANNEL).await?;
    for i in 0..args.schedules {
        service
            .create(serde_json::from_value::<CreateSchedule>(json!({
                "name": format!("bench-{i}"),
                "cron": "* * * * * *",
                "task": {"type": "noop"},
            }))?)
            .await?;
    }
    let stop = CancellationToken::new();
    let loop_ = tokio::spawn(scheduler::run(service.clone(), stop.clone()));
    let mut delays = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
    loop {
        tokio::select! {
            delivery = fired.recv() => match delivery {
                Ok(delivery) => {
                    if let Some(ms) = delivery.event.data.get("delay_ms").and_then(|v| v.as_f64()) {
                        delays.push(ms);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    stop.cancel();
    let _ = loop_.await;
    delays.sort_by(f64::total_cmp);
    println!(
        "firings: {} ({} schedules every second for {} s)",
        delays.len(),
        args.schedules,
        args.seconds
    );
    println!(
        "firing delay after the due time: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 <= 50 ms)",
        percentile(&delays, 50.0),
        percentile(&delays, 99.0),
        delays.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}
