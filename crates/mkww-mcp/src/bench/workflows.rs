//! `mkww-mcp bench workflows`: what dependencies cost. One fan-out/fan-in workflow of N `noop`
//! tasks (a root, N - 2 tasks depending on it, a join depending on all of those) against N plain
//! `noop` tasks, each on a fresh database with the workers running: the time from the first
//! insert until the last task succeeded, and the workflow's overhead over the plain tasks
//! (target: at most 30 %).
//!
//! The workflow goes straight to the orchestrator, past the API's 1,000-task bound on a workflow:
//! the figure is the cost of settling dependencies, not of the API.
//!
//! Both sides end the same way: when the worker has counted N outcomes as committed (polled in
//! memory every millisecond, so the figure is not quantised by the poll or slowed by counting
//! queries); the store then confirms that every task succeeded.
//!
//! `--runs N` alternates N such pairs and reports medians: the overhead is the median workflow
//! time over the median plain time. One run of each varies by ±15 % on a shared two-core
//! machine, more than the differences worth measuring.

use super::quiet_logging;
use super::scratch::BenchStore;
use anyhow::Context;
use mcp_core::task::{CreateTask, TaskDefaults};
use mcp_core::workflow::{NewWorkflow, OnFailure, WorkflowNode};
use mcp_core::{HandlerRegistry, Orchestrator, OrchestratorConfig, Origin, TaskStatus};
use mcp_persistence::SqliteOptions;
use serde_json::json;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(clap::Args)]
pub struct WorkflowsBench {
    /// PostgreSQL URL (postgres://…); default: a temporary SQLite file.
    #[arg(long, env = "MCP_BENCH_DATABASE_URL")]
    database_url: Option<String>,
    /// Tasks in the workflow, and plain tasks to compare with (at least 3).
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    /// Tasks the worker runs at once.
    #[arg(long, default_value_t = 1_000)]
    concurrency: usize,
    /// Most tasks per claim and per outcome write.
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Pairs of runs (plain, then the workflow), each on a fresh database; the figures are
    /// the medians. Single runs vary by ±15 % on a shared two-core machine.
    #[arg(long, default_value_t = 1)]
    runs: usize,
}

fn noop() -> CreateTask {
    CreateTask {
        task_type: "noop".into(),
        ..Default::default()
    }
}

/// A fresh database and a running node over it.
async fn node(
    args: &WorkflowsBench,
) -> anyhow::Result<(
    BenchStore,
    std::sync::Arc<Orchestrator>,
    mcp_core::orchestrator::WorkerHandle,
)> {
    let backing = BenchStore::open(args.database_url.as_deref(), &SqliteOptions::default()).await?;
    let orchestrator = Orchestrator::new(
        backing.tasks(),
        HandlerRegistry::with_builtins(),
        OrchestratorConfig {
            concurrency: args.concurrency,
            batch_size: args.batch_size,
            retention: None,
            ..OrchestratorConfig::default()
        },
    );
    let handle = orchestrator.start().await;
    Ok((backing, orchestrator, handle))
}

/// Waits until the node has recorded `n` outcomes as committed.
async fn recorded(orchestrator: &Orchestrator, n: usize) {
    while orchestrator.outcomes_recorded() < n as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// How a side's time splits: storing its tasks (the plain side's batches run while the later
/// ones are stored; the workflow is one transaction, before anything of it may run), and the
/// whole, from the first insert until the last outcome was recorded. A workflow's run also
/// has its phases: when the root's outcome was recorded (its settling released the fan) and
/// when the fan's last one was (the join runs after).
struct Times {
    insert: Duration,
    total: Duration,
    phases: Option<(Duration, Duration)>,
    /// Tasks started where their settling released them, without a claim (a workflow's).
    started: u64,
}

impl Times {
    /// One line of a run of `tasks` tasks: the rate, the whole, and storing `what`; then the
    /// workflow's phases, each from the end of the one before.
    fn print(&self, label: &str, what: &str, tasks: usize) {
        println!(
            "{label:<20}{:>8.0} tasks/s ({:.3} s, of which {:.3} s storing {what})",
            tasks as f64 / self.total.as_secs_f64(),
            self.total.as_secs_f64(),
            self.insert.as_secs_f64()
        );
        if self.phases.is_some() {
            println!(
                "{:<20}root and its settling {:.3} s, fan {:.3} s, join {:.3} s; {} tasks \
                 started where released",
                "",
                self.phase(0).as_secs_f64(),
                self.phase(1).as_secs_f64(),
                self.phase(2).as_secs_f64(),
                self.started
            );
        }
    }

    /// A workflow's phase `i` (root, fan, join), each from the end of the one before; zero for
    /// plain tasks.
    fn phase(&self, i: usize) -> Duration {
        let Some((root, fan)) = self.phases else {
            return Duration::ZERO;
        };
        let ends = [self.insert, root, fan, self.total];
        ends[i + 1].saturating_sub(ends[i])
    }
}

/// Inserts N plain tasks in batches of 1,000 and waits until all succeeded.
async fn plain(args: &WorkflowsBench) -> anyhow::Result<Times> {
    let (backing, orchestrator, handle) = node(args).await?;
    let store = backing.tasks();
    let started = Instant::now();
    let mut left = args.tasks;
    while left > 0 {
        let n = left.min(1_000);
        orchestrator
            .create_batch((0..n).map(|_| noop()).collect(), Origin::default())
            .await?;
        left -= n;
    }
    let insert = started.elapsed();
    recorded(&orchestrator, args.tasks).await;
    let total = started.elapsed();
    anyhow::ensure!(store.pending().await? == 0, "plain tasks left pending");
    handle.shutdown().await;
    backing.cleanup().await;
    Ok(Times {
        insert,
        total,
        phases: None,
        started: 0,
    })
}

/// Inserts the fan-out/fan-in workflow and waits until its join succeeded.
async fn workflow(args: &WorkflowsBench) -> anyhow::Result<Times> {
    let (backing, orchestrator, handle) = node(args).await?;
    let store = backing.tasks();
    let now = chrono::Utc::now();
    let tasks: Vec<_> = (0..args.tasks)
        .map(|_| noop().validate(&TaskDefaults::default(), now))
        .collect::<Result<_, _>>()?;
    let root = tasks[0].id;
    let fan: Vec<Uuid> = tasks[1..args.tasks - 1].iter().map(|t| t.id).collect();
    let join = tasks[args.tasks - 1].id;
    let nodes: Vec<WorkflowNode> = (0..args.tasks)
        .map(|i| WorkflowNode {
            key: format!("t{i}"),
            depends_on: match i {
                0 => Vec::new(),
                i if i == args.tasks - 1 => fan.clone(),
                _ => vec![root],
            },
        })
        .collect();
    let flow = NewWorkflow {
        id: Uuid::now_v7(),
        name: "bench".into(),
        on_failure: OnFailure::CancelDependents,
        created_by: None,
        share_key: None,
        correlation_id: None,
    };
    let started = Instant::now();
    orchestrator.insert_workflow(&flow, &tasks, &nodes).await?;
    let insert = started.elapsed();
    recorded(&orchestrator, 1).await;
    let root = started.elapsed();
    recorded(&orchestrator, args.tasks - 1).await;
    let fan = started.elapsed();
    recorded(&orchestrator, args.tasks).await;
    let total = started.elapsed();
    let eager = orchestrator.started_where_released();
    let task = store.get(join).await?.context("the join task vanished")?;
    anyhow::ensure!(
        task.status == TaskStatus::Succeeded,
        "the join ended {}",
        task.status
    );
    handle.shutdown().await;
    backing.cleanup().await;
    Ok(Times {
        insert,
        total,
        phases: Some((root, fan)),
        started: eager,
    })
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

pub async fn run(args: WorkflowsBench) -> anyhow::Result<()> {
    anyhow::ensure!(args.tasks >= 3, "--tasks must be at least 3");
    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    quiet_logging();
    let store = if args.database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    println!(
        "bench workflows: {} tasks on {store}, concurrency {}, batch {}, {} run(s)",
        args.tasks, args.concurrency, args.batch_size, args.runs
    );
    let (mut plain_runs, mut flow_runs) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let plain_times = plain(&args).await?;
        plain_times.print("plain tasks:", "them", args.tasks);
        let times = workflow(&args).await?;
        times.print("fan-out/fan-in DAG:", "it", args.tasks);
        plain_runs.push(plain_times);
        flow_runs.push(times);
    }
    let seconds = |runs: &[Times], part: fn(&Times) -> Duration| {
        median(runs.iter().map(|t| part(t).as_secs_f64()).collect())
    };
    let plain = seconds(&plain_runs, |t| t.total);
    let flow = seconds(&flow_runs, |t| t.total);
    let (plain_rate, flow_rate) = (args.tasks as f64 / plain, args.tasks as f64 / flow);
    let overhead = (flow / plain - 1.0) * 100.0;
    if args.runs > 1 {
        println!("medians:            plain {plain_rate:.0} tasks/s, DAG {flow_rate:.0} tasks/s");
    }
    println!("overhead:           {overhead:>8.1} % (target ≤ 30 %)");
    println!(
        "{}",
        json!({
            "bench": "workflows", "store": store, "tasks": args.tasks, "runs": args.runs,
            "plain_tasks_per_s": plain_rate.round(), "workflow_tasks_per_s": flow_rate.round(),
            "plain_insert_ms": (seconds(&plain_runs, |t| t.insert) * 1000.0).round() as u64,
            "workflow_insert_ms": (seconds(&flow_runs, |t| t.insert) * 1000.0).round() as u64,
            "workflow_root_ms": (seconds(&flow_runs, |t| t.phase(0)) * 1000.0).round() as u64,
            "workflow_fan_ms": (seconds(&flow_runs, |t| t.phase(1)) * 1000.0).round() as u64,
            "workflow_join_ms": (seconds(&flow_runs, |t| t.phase(2)) * 1000.0).round() as u64,
            "workflow_started_where_released":
                median(flow_runs.iter().map(|t| t.started as f64).collect()).round() as u64,
            "overhead_percent": (overhead * 10.0).round() / 10.0,
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Times, median};
    use std::time::Duration;

    #[test]
    fn a_workflows_phases_split_the_time_after_storing_it() {
        let ms = Duration::from_millis;
        let flow = Times {
            insert: ms(300),
            total: ms(1_000),
            phases: Some((ms(550), ms(950))),
            started: 0,
        };
        let phases: Vec<Duration> = (0..3).map(|i| flow.phase(i)).collect();
        assert_eq!(phases, [ms(250), ms(400), ms(50)]);
        let plain = Times {
            insert: ms(300),
            total: ms(600),
            phases: None,
            started: 0,
        };
        assert_eq!(plain.phase(1), Duration::ZERO);
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![7.0]), 7.0);
    }
}
