//! `mkww-mcp bench`: benchmarks that print their figures, one file each, and what they share
//! (a scratch database, percentiles, quiet logging).

mod http;
mod memory;
mod schedules;
mod scratch;
mod subscriber;
mod tasks;
mod workflows;
mod ws;

use crate::config::Config;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Bench {
    /// Enqueue rate, processing rate and pickup latency of the task orchestrator.
    Tasks(tasks::TasksBench),
    /// Requests per second of `/healthz` and of an authenticated `GET /v1/tasks/{id}`.
    Http(http::HttpBench),
    /// Insert rate and search latency of the memory service.
    Memory(memory::MemoryBench),
    /// WebSocket fan-out: subscribers, delivery latency and rate, idle connections held.
    Ws(ws::WsBench),
    /// Schedule firing delay after the due time on an idle node.
    Schedules(schedules::SchedulesBench),
    /// A fan-out/fan-in workflow against as many plain tasks: what dependencies cost.
    Workflows(workflows::WorkflowsBench),
}

pub async fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Tasks(args) => tasks::run(args).await,
        Bench::Http(args) => http::run(args).await,
        Bench::Memory(args) => memory::run(args).await,
        Bench::Ws(args) => ws::run(args).await,
        Bench::Schedules(args) => schedules::run(args).await,
        Bench::Workflows(args) => workflows::run(args).await,
    }
}

/// Warnings only, so the figures are what the terminal shows.
fn quiet_logging() {
    crate::logging::init_logging(&Config {
        log_format: "pretty".into(),
        log_level: "warn".into(),
        ..Config::default()
    });
}

/// The nearest-rank `p`th percentile of sorted samples; `None` when there are none.
fn nearest_rank<T>(sorted: &[T], p: f64) -> Option<&T> {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1)
}

/// `nearest_rank` of figures, NaN (printed as such) when there are none.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    nearest_rank(sorted, p).copied().unwrap_or(f64::NAN)
}
