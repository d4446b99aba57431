//! The Prometheus side of `/metrics`: histogram buckets, the help text of every metric the
//! code records (`docs/operations.md`, "Metrics", is the table of them), the series that exist
//! from the start at zero (so that rates and alerts see them before the first event), and the
//! sampler of the database pools.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use std::time::Duration;

/// Upper bounds (seconds) of every histogram: request latencies, queue waits and task runs
/// from a millisecond to ten minutes.
pub const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 600.0,
];

/// How often the database pools are sampled.
const POOL_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// The limiter classes of `mcp_rate_limited_total` (the prefixes of `Security::check` keys).
const LIMIT_CLASSES: &[&str] = &["ip", "auth", "login", "read", "write", "publish"];

/// Describes every metric and registers the unlabelled and fixed-label series at zero.
pub fn describe() {
    describe_counter!(
        "http_requests_total",
        "HTTP requests answered, by method, route and status"
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency, by method and route"
    );
    describe_gauge!(
        "mcp_tasks",
        "Tasks in the database by queue and status (counted at each scrape)"
    );
    describe_histogram!(
        "mcp_task_queue_wait_seconds",
        Unit::Seconds,
        "From a task becoming due (run_at) to an attempt starting, by type"
    );
    describe_histogram!(
        "mcp_task_run_duration_seconds",
        Unit::Seconds,
        "How long an attempt ran, by type"
    );
    describe_counter!(
        "mcp_task_outcomes_total",
        "Attempts ended, by type and outcome (succeeded, failed, dead, cancelled)"
    );
    describe_gauge!(
        "mcp_ws_connections",
        "Open WebSocket connections on this node"
    );
    describe_gauge!(
        "mcp_ws_subscriptions",
        "Channel subscriptions held by WebSocket connections on this node"
    );
    describe_counter!(
        "mcp_ws_slow_consumer_closes_total",
        "WebSocket connections closed with 4008 (the client did not read fast enough)"
    );
    describe_histogram!(
        "mcp_bus_publish_lag_seconds",
        Unit::Seconds,
        "From an event's creation to its arrival on this node through Redis"
    );
    describe_gauge!(
        "mcp_breaker_state",
        "Circuit breaker per route: 0 closed, 1 half-open, 2 open"
    );
    describe_gauge!(
        "mcp_db_pool_connections",
        "Database pool connections by pool and state (in_use, idle)"
    );
    describe_gauge!(
        "mcp_db_pool_max_connections",
        "Most connections a database pool may open"
    );
    describe_counter!(
        "mcp_db_pool_acquire_timeouts_total",
        "Queries that waited database_acquire_timeout_ms for a pooled connection in vain"
    );
    describe_gauge!(
        "mcp_dependency_up",
        "Dependency health: 1 up or degraded, 0 down"
    );
    describe_counter!(
        "mcp_rate_limited_total",
        "Requests and WebSocket ops refused by a rate limit, by class"
    );
    describe_counter!(
        "mcp_webhook_deliveries_total",
        "Webhook delivery attempts, by outcome (delivered, failed)"
    );
    metrics::gauge!("mcp_ws_connections").set(0.0);
    metrics::gauge!("mcp_ws_subscriptions").set(0.0);
    metrics::counter!("mcp_ws_slow_consumer_closes_total").absolute(0);
    metrics::counter!("mcp_db_pool_acquire_timeouts_total").absolute(0);
    for class in LIMIT_CLASSES {
        metrics::counter!("mcp_rate_limited_total", "class" => *class).absolute(0);
    }
    for outcome in ["delivered", "failed"] {
        metrics::counter!("mcp_webhook_deliveries_total", "outcome" => outcome).absolute(0);
    }
}

/// Samples a database pool every second into `mcp_db_pool_*{pool}`: `read` answers its open
/// connections, the idle ones among them, and its maximum. Ends with the runtime.
pub fn sample_pool(pool: &'static str, read: impl Fn() -> (u32, usize, u32) + Send + 'static) {
    let in_use = metrics::gauge!("mcp_db_pool_connections", "pool" => pool, "state" => "in_use");
    let idle = metrics::gauge!("mcp_db_pool_connections", "pool" => pool, "state" => "idle");
    let max = metrics::gauge!("mcp_db_pool_max_connections", "pool" => pool);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(POOL_SAMPLE_INTERVAL);
        loop {
            every.tick().await;
            let (size, idle_now, most) = read();
            in_use.set(f64::from(size).max(idle_now as f64) - idle_now as f64);
            idle.set(idle_now as f64);
            max.set(f64::from(most));
        }
    });
}
