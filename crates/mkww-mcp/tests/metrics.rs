//! `/metrics` as an operator's Prometheus scrapes it. A node on PostgreSQL and Redis runs a task
//! seen by a WebSocket subscriber and delivered to a webhook, a failing type trips its breaker,
//! a login flood meets the rate limit; then every metric that the shipped Grafana dashboard
//! (`deploy/grafana/mkww-mcp.json`) and alert rules (`deploy/prometheus/alerts.yml`) query must
//! be in the scrape, every `mcp_` metric must be documented in `docs/operations.md`, and what
//! was exercised must have been counted.

mod support;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post as route_post;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::{PgSchema, Server, client, post, redis_url, request, token, wait_for};

/// Series Prometheus makes itself for every target (not in any `/metrics`).
const PROMETHEUS_OWN: &[&str] = &["up"];

/// PromQL words that look like metric names but are not: operators, modifiers, and the
/// aggregations (written `sum by (…) (…)`, so not always followed by a parenthesis).
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
];

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// Removes what a PromQL expression names besides metrics: strings, label matchers, ranges,
/// and the label lists of `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`.
fn strip_non_metrics(expr: &str) -> String {
    let mut out = String::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                for d in chars.by_ref() {
                    if d == c {
                        break;
                    }
                }
                out.push(' ');
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                for d in chars.by_ref() {
                    if d == close {
                        break;
                    }
                }
                out.push(' ');
            }
            _ => out.push(c),
        }
    }
    // Label lists: the keyword, then a parenthesised list of names.
    let mut cleaned = String::new();
    let mut rest = out.as_str();
    while !rest.is_empty() {
        let word_end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let (word, after) = rest.split_at(word_end);
        if word.is_empty() {
            let mut it = rest.chars();
            cleaned.push(it.next().unwrap_or(' '));
            rest = it.as_str();
            continue;
        }
        cleaned.push_str(word);
        rest = after;
        if [
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
        ]
        .contains(&word)
        {
            let trimmed = rest.trim_start();
            if let Some(list) = trimmed.strip_prefix('(') {
                let end = list.find(')').expect("a closed label list");
                rest = &list[end + 1..];
                cleaned.push(' ');
            }
        }
    }
    cleaned
}

/// The metric names a PromQL expression reads: identifiers that are not calls, keywords,
/// numbers or Grafana variables.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let text = strip_non_metrics(expr);
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c == '$' {
            // A Grafana variable such as $__rate_interval.
            i += 1;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
        } else if c.is_ascii_digit() || c == '.' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
            {
                i += 1;
            }
            let word = &text[start..i];
            let called = text[i..].trim_start().starts_with('(');
            if !called && !KEYWORDS.contains(&word) {
                names.insert(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every query of the dashboard: panel targets, and the metrics of `label_values(…)` variables.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(repo_file("deploy/grafana/mkww-mcp.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(target["expr"].as_str().expect("a target's expr").to_owned());
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(definition) = variable["definition"].as_str() {
            let inner = definition
                .strip_prefix("label_values(")
                .and_then(|rest| rest.split(',').next())
                .expect("label_values(metric, label)");
            queries.push(inner.to_owned());
        }
    }
    queries
}

/// Every `expr` of the alert rules (one line each, as the file's header asks).
fn alert_queries() -> Vec<String> {
    let text = std::fs::read_to_string(repo_file("deploy/prometheus/alerts.yml")).unwrap();
    let exprs: Vec<String> = text
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("expr:"))
        .map(|expr| expr.trim().to_owned())
        .collect();
    let alerts = text
        .lines()
        .filter(|line| line.trim_start().starts_with("- alert:"))
        .count();
    assert_eq!(exprs.len(), alerts, "every alert has a one-line expr");
    assert!(
        exprs
            .iter()
            .all(|e| !e.is_empty() && !e.starts_with(['|', '>']))
    );
    exprs
}

/// One sample of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_scrape(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|pair| !pair.is_empty())
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value: value.parse().unwrap_or(f64::NAN),
        });
    }
    samples
}

/// The sum of the samples named `name` whose labels include `labels`.
fn total(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

async fn scrape(server: &Server) -> String {
    let response = client().get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// A webhook receiver that answers 204 to everything.
async fn start_receiver() -> std::net::SocketAddr {
    let app = Router::new().route("/hook", route_post(|| async { StatusCode::NO_CONTENT }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[test]
fn reads_metric_names_out_of_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (type, le) (rate(mcp_task_queue_wait_seconds_bucket{instance=~"$instance",type!="x"}[$__rate_interval]))) > 1e3 and on (queue) max(mcp_tasks offset 5m) / ignoring(pool) up + sum by (class) (mcp_rate_limited_total)"#,
    );
    let expected: BTreeSet<String> = [
        "mcp_task_queue_wait_seconds_bucket",
        "mcp_tasks",
        "up",
        "mcp_rate_limited_total",
    ]
    .map(String::from)
    .into();
    assert_eq!(names, expected);
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_query_is_exposed() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let Some(redis) = redis_url().await else {
        return;
    };
    let prefix = format!("mcp-metrics-{}", uuid::Uuid::new_v4().simple());
    let receiver = start_receiver().await;
    let mut env = schema.env();
    env.extend([
        ("MCP_REDIS_URL", redis.clone()),
        ("MCP_REDIS_PREFIX", prefix.clone()),
        ("MCP_WEBHOOKS_ALLOW_PRIVATE", "true".into()),
        ("MCP_BREAKER_MIN_CALLS", "2".into()),
        ("MCP_RATE_LIMIT_AUTH_PER_MINUTE", "2".into()),
    ]);
    let server = Server::start(&env);

    // A WebSocket subscriber of the task events (they reach it through Redis).
    let mut socket = support::connect(&server, Some(token("operator", "watcher").as_str())).await;
    let reply = request(
        &mut socket,
        json!({"id": 1, "op": "subscribe", "channel": "tasks"}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    // A webhook for finished tasks.
    let (status, body) = post(
        &server,
        "/v1/webhooks",
        json!({"url": format!("http://{receiver}/hook"), "events": ["task.succeeded"]}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // A task that succeeds, and failing ones that end dead and open their route's breaker.
    let (status, task) = post(&server, "/v1/tasks", json!({"type": "noop"})).await;
    assert_eq!(status, 201, "{task}");
    wait_for(&server, task["id"].as_str().unwrap(), |t| {
        t["status"] == "succeeded"
    })
    .await;
    // Two failures are `breaker_min_calls`: the breaker opens and holds further `fail` tasks.
    for _ in 0..2 {
        let (status, task) = post(
            &server,
            "/v1/tasks",
            json!({"type": "fail", "max_attempts": 1}),
        )
        .await;
        assert_eq!(status, 201, "{task}");
        wait_for(&server, task["id"].as_str().unwrap(), |t| {
            t["status"] == "dead"
        })
        .await;
    }
    // Logins beyond the per-address limit of /v1/auth/*.
    let anonymous = reqwest::Client::new();
    for _ in 0..4 {
        anonymous
            .post(server.url("/v1/auth/login"))
            .json(&json!({"username": "nobody", "password": "wrong"}))
            .send()
            .await
            .unwrap();
    }

    // Counted: wait for what arrives asynchronously (the webhook, the bus), then look.
    let deadline = Instant::now() + Duration::from_secs(20);
    let samples = loop {
        let samples = parse_scrape(&scrape(&server).await);
        let delivered = total(
            &samples,
            "mcp_webhook_deliveries_total",
            &[("outcome", "delivered")],
        );
        let lagged = total(&samples, "mcp_bus_publish_lag_seconds_count", &[]);
        let sampled = total(
            &samples,
            "mcp_db_pool_max_connections",
            &[("pool", "postgres")],
        );
        if delivered >= 1.0 && lagged >= 1.0 && sampled > 0.0 {
            break samples;
        }
        assert!(
            Instant::now() < deadline,
            "webhook delivered {delivered}, bus lag observed {lagged}, pool sampled {sampled}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let outcome = |task_type: &str, outcome: &str| {
        total(
            &samples,
            "mcp_task_outcomes_total",
            &[("type", task_type), ("outcome", outcome)],
        )
    };
    assert!(outcome("noop", "succeeded") >= 1.0);
    assert!(outcome("fail", "dead") >= 2.0);
    assert!(
        total(
            &samples,
            "mcp_task_queue_wait_seconds_count",
            &[("type", "noop")]
        ) >= 1.0
    );
    assert!(
        total(
            &samples,
            "mcp_task_run_duration_seconds_count",
            &[("type", "fail")]
        ) >= 2.0
    );
    assert!(total(&samples, "mcp_tasks", &[("status", "succeeded")]) >= 1.0);
    assert_eq!(
        total(&samples, "mcp_breaker_state", &[("route", "fail")]),
        2.0
    );
    assert_eq!(total(&samples, "mcp_ws_connections", &[]), 1.0);
    assert_eq!(total(&samples, "mcp_ws_subscriptions", &[]), 1.0);
    assert!(total(&samples, "mcp_rate_limited_total", &[("class", "auth")]) >= 1.0);
    assert_eq!(
        total(&samples, "mcp_dependency_up", &[("dependency", "database")]),
        1.0
    );
    let in_use = total(&samples, "mcp_db_pool_connections", &[("pool", "postgres")]);
    assert!(in_use >= 1.0, "the pool holds connections: {in_use}");

    // Every metric the dashboard and the alerts query is there.
    let exposed: BTreeSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    let queries: Vec<String> = dashboard_queries()
        .into_iter()
        .chain(alert_queries())
        .collect();
    let queried: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    assert!(
        queried.len() >= 15,
        "too few metrics found in the queries: {queried:?}"
    );
    let missing: Vec<&String> = queried
        .iter()
        .filter(|name| !exposed.contains(name.as_str()) && !PROMETHEUS_OWN.contains(&name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not in /metrics: {missing:?}"
    );

    // Every mcp_ metric of the scrape has its row in the operations guide.
    let guide = std::fs::read_to_string(repo_file("docs/operations.md")).unwrap();
    let undocumented: Vec<&str> = exposed
        .iter()
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name)
        })
        .filter(|family| family.starts_with("mcp_") || family.starts_with("http_"))
        .filter(|family| !guide.contains(&format!("| `{family}` |")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/operations.md: {undocumented:?}"
    );

    drop(socket);
    drop(server);
    schema.drop_schema().await;
    if let Ok(limiter) =
        mcp_persistence::RedisLimiter::connect(&redis, &format!("{prefix}:ratelimit:")).await
    {
        let _ = limiter.clear().await;
    }
}
