//! Chaos: the real binary on a private PostgreSQL that the test crashes and starts again
//! (support::own_postgres), never the machine's server. What a client and a load balancer see
//! while the database is away, and that nothing accepted is lost.

mod support;

use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::own_postgres::OwnPostgres;
use support::*;

/// One create request as the client saw it.
#[derive(Debug, Clone)]
struct Attempt {
    sent: Instant,
    took: Duration,
    status: u16,
    code: Option<String>,
    retry_after: Option<String>,
    task_id: Option<String>,
}

async fn create(client: &reqwest::Client, server_base: &str, body: &Value) -> Attempt {
    let sent = Instant::now();
    let response = client
        .post(format!("{server_base}/v1/tasks"))
        .json(body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("the server answers");
    let took = sent.elapsed();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = response.json().await.unwrap_or(Value::Null);
    Attempt {
        sent,
        took,
        status,
        code: body["error"]["code"].as_str().map(str::to_owned),
        retry_after,
        task_id: body["id"].as_str().map(str::to_owned),
    }
}

/// `GET path` with its latency.
async fn timed_get(client: &reqwest::Client, url: String) -> (u16, Value, Duration) {
    let sent = Instant::now();
    let response = client
        .get(url)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("the server answers");
    let took = sent.elapsed();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null), took)
}

/// Polls `/readyz` until it answers `want`; returns how long that took and the slowest answer.
async fn readyz_until(server: &Server, want: u16, patience: Duration) -> (Duration, Duration) {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    loop {
        let (status, body, took) = timed_get(&client, server.url("/readyz")).await;
        slowest = slowest.max(took);
        if status == want {
            if want == 503 {
                assert_eq!(body["error"]["code"], "not_ready", "{body}");
                assert_eq!(body["error"]["details"]["failing"], json!(["database"]));
            }
            return (started.elapsed(), slowest);
        }
        assert!(
            started.elapsed() < patience,
            "/readyz did not answer {want} within {patience:?}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn env_for(postgres: &OwnPostgres, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("MCP_DATABASE_URL", postgres.url()),
        ("MCP_DATABASE_SCHEMA", "chaos".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_503_within_a_second_while_postgres_is_down_and_finishes_every_accepted_task() {
    let Some(postgres) = OwnPostgres::start() else {
        return;
    };
    let server = Server::start(&env_for(&postgres, &[]));
    let base = server.base.clone();
    let admin = client();

    // Tasks that are running and queued when the database goes: a batch longer than the
    // node's 64 slots.
    let (status, batch) = post(
        &server,
        "/v1/tasks/batch",
        json!({"tasks": (0..100)
            .map(|_| json!({"type": "sleep", "payload": {"ms": 1500}}))
            .collect::<Vec<_>>()}),
    )
    .await;
    assert_eq!(status, 201, "{batch}");
    let mut accepted: Vec<String> = batch["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_owned())
        .collect();

    // Steady creation from four clients until told to stop.
    let attempts = Arc::new(Mutex::new(Vec::<Attempt>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let creators: Vec<_> = (0..4)
        .map(|_| {
            let (attempts, stop, admin, base) =
                (attempts.clone(), stop.clone(), admin.clone(), base.clone());
            tokio::spawn(async move {
                let body = json!({"type": "sleep", "payload": {"ms": 100}});
                while !stop.is_cancelled() {
                    let attempt = create(&admin, &base, &body).await;
                    attempts.lock().unwrap().push(attempt);
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            })
        })
        .collect();
    // A WebSocket client watching health, and one creating tasks through its op.
    let mut watcher = connect(&server, Some(&token("operator", "ops"))).await;
    let reply = request(
        &mut watcher,
        json!({"id": 1, "op": "subscribe", "channel": "system.health"}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let mut socket = connect(&server, Some(&token("admin", "ws-admin"))).await;
    tokio::time::sleep(Duration::from_millis(800)).await;

    // The crash.
    let stopping_at = Instant::now();
    postgres.stop_immediately();
    let down_at = Instant::now();
    let (_, slowest_readyz_to_503) = readyz_until(&server, 503, Duration::from_secs(5)).await;
    let became_unready = stopping_at.elapsed();
    assert_eq!(
        get(&server, "/healthz").await.0,
        200,
        "/healthz is liveness only"
    );
    let event = next(&mut watcher).await;
    assert_eq!(event["event"]["type"], "health.down", "{event}");
    assert_eq!(event["event"]["data"]["dependency"], "database", "{event}");
    let sent = Instant::now();
    let reply = request(
        &mut socket,
        json!({"id": 7, "op": "task.create", "task": {"type": "noop"}}),
    )
    .await;
    let ws_took = sent.elapsed();
    assert_eq!(reply["error"]["code"], "database_unavailable", "{reply}");
    assert!(ws_took < Duration::from_secs(1), "{ws_took:?}");
    // Readiness and reads while it stays down.
    let probe = reqwest::Client::new();
    let mut readyz_latencies = Vec::new();
    let mut read_latencies = Vec::new();
    while down_at.elapsed() < Duration::from_secs(4) {
        let (status, _, took) = timed_get(&probe, server.url("/readyz")).await;
        assert_eq!(status, 503);
        readyz_latencies.push(took);
        let (status, body, took) = timed_get(&admin, server.url("/v1/tasks?limit=5")).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "database_unavailable", "{body}");
        read_latencies.push(took);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, health, _) = timed_get(&admin, server.url("/v1/health")).await;
    assert_eq!(status, 200, "{health}");
    let database = health["dependencies"]
        .as_array()
        .expect("dependencies")
        .iter()
        .find(|d| d["name"] == "database")
        .expect("the database is a dependency")
        .clone();
    assert_eq!(database["state"], "down", "{health}");
    assert_eq!(database["critical"], true);
    assert!(database["last_error"].is_string(), "{health}");

    // Back.
    let restarted = Instant::now();
    postgres.start_again();
    let (recovered, _) = readyz_until(&server, 200, Duration::from_secs(15)).await;
    let recovery = restarted.elapsed();
    let event = next(&mut watcher).await;
    assert_eq!(event["event"]["type"], "health.up", "{event}");
    // A little traffic after the recovery, then stop the creators.
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.cancel();
    for creator in creators {
        creator.await.unwrap();
    }

    // What the clients saw.
    let attempts = attempts.lock().unwrap().clone();
    let during: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.sent >= down_at && a.sent < restarted)
        .collect();
    assert!(
        during.len() >= 10,
        "too few requests during the outage: {}",
        during.len()
    );
    // Requests in flight while the server went down count too: they raced the failure.
    let worst_failure = attempts
        .iter()
        .filter(|a| a.sent + a.took >= stopping_at && a.status == 503)
        .map(|a| a.took)
        .max()
        .unwrap_or_default();
    assert!(
        worst_failure <= Duration::from_secs(1),
        "a create took {worst_failure:?} to fail while PostgreSQL went down"
    );
    let mut worst_during = Duration::ZERO;
    for attempt in &during {
        worst_during = worst_during.max(attempt.took);
        assert_eq!(attempt.status, 503, "{attempt:?}");
        assert_eq!(
            attempt.code.as_deref(),
            Some("database_unavailable"),
            "{attempt:?}"
        );
        assert!(attempt.retry_after.is_some(), "no Retry-After: {attempt:?}");
    }
    assert!(
        worst_during <= Duration::from_secs(1),
        "a create took {worst_during:?} to fail while PostgreSQL was down"
    );
    for attempt in &attempts {
        assert!(
            matches!(attempt.status, 201 | 503),
            "unexpected answer {attempt:?}"
        );
        if attempt.status == 201 {
            accepted.push(attempt.task_id.clone().expect("a created task has an id"));
        }
    }
    let after = attempts
        .iter()
        .filter(|a| a.sent >= restarted + recovered && a.status == 201)
        .count();
    assert!(after > 0, "no task was created after the recovery");

    // Every task a client was told about was stored and runs to the end.
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &accepted {
        loop {
            let (status, task) = get(&server, &format!("/v1/tasks/{id}")).await;
            assert_eq!(status, 200, "an accepted task is missing: {id} {task}");
            if task["status"] == "succeeded" {
                // Outcomes that waited for the database were written under the same lease:
                // nothing ran twice.
                assert_eq!(task["attempts"], 1, "{task}");
                break;
            }
            assert!(!is_final(&task), "an accepted task did not succeed: {task}");
            assert!(Instant::now() < deadline, "task never finished: {task}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    readyz_latencies.sort();
    read_latencies.sort();
    let p = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    eprintln!(
        "chaos figures: readyz 503 {became_unready:?} after pg_ctl stop began (slowest readyz meanwhile \
         {slowest_readyz_to_503:?}); during the outage: creates {} answered 503, worst \
         {worst_during:?} (worst of those racing the crash {worst_failure:?}); readyz p50 {:?} max {:?}; GET /v1/tasks 503 p50 {:?} max {:?}; \
         readyz 200 again {recovered:?} after PostgreSQL was started ({recovery:?} including \
         its start); {} accepted tasks all succeeded",
        during.len(),
        p(&readyz_latencies, 0.5),
        p(&readyz_latencies, 1.0),
        p(&read_latencies, 0.5),
        p(&read_latencies, 1.0),
        accepted.len(),
    );
    assert!(
        p(&readyz_latencies, 1.0) < Duration::from_millis(100),
        "readyz must not wait on the database"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_within_its_grace_period_when_told_to_stop_while_postgres_is_down() {
    let Some(postgres) = OwnPostgres::start() else {
        return;
    };
    let grace = Duration::from_millis(2000);
    let mut server = Server::start(&env_for(
        &postgres,
        &[("MCP_SHUTDOWN_GRACE_MS", "2000"), ("MCP_LEASE_MS", "3000")],
    ));
    // Long tasks (cut by the grace period) and short ones (finished, outcome unwritten).
    let tasks: Vec<Value> = (0..5)
        .map(|_| json!({"type": "sleep", "payload": {"ms": 60000}}))
        .chain((0..20).map(|_| json!({"type": "sleep", "payload": {"ms": 1500}})))
        .collect();
    let (status, body) = post(&server, "/v1/tasks/batch", json!({"tasks": tasks})).await;
    assert_eq!(status, 201, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, running) = get(&server, "/v1/tasks?status=running&limit=100").await;
        if running["tasks"].as_array().map_or(0, Vec::len) == 25 {
            break;
        }
        assert!(Instant::now() < deadline, "the tasks never all ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    postgres.stop_immediately();
    let down_at = Instant::now();
    readyz_until(&server, 503, Duration::from_secs(5)).await;
    // The short tasks finish meanwhile: their outcomes wait for the database.
    tokio::time::sleep(Duration::from_millis(2000).saturating_sub(down_at.elapsed())).await;
    let asked = Instant::now();
    let exit = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (status, server)
    })
    .await
    .unwrap();
    let took = asked.elapsed();
    eprintln!(
        "chaos figures: SIGTERM with PostgreSQL down: exited after {took:?} (grace {grace:?})"
    );
    assert!(exit.0.success(), "exit status {:?}", exit.0);
    assert!(
        took < grace + Duration::from_secs(3),
        "took {took:?} to stop with a grace of {grace:?}"
    );
    assert!(
        exit.1
            .wait_for_log(|l| l["message"]
                .as_str()
                .is_some_and(|m| m.contains("without recording")))
            .is_some(),
        "the unwritten outcomes are not mentioned in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_leases_after_an_outage_longer_than_the_lease_instead_of_rerunning_tasks() {
    let Some(postgres) = OwnPostgres::start() else {
        return;
    };
    // Leases run out during the outage; an eager rescuer would take them back at once.
    let server = Server::start(&env_for(
        &postgres,
        &[("MCP_LEASE_MS", "1500"), ("MCP_RESCUE_INTERVAL_MS", "300")],
    ));
    let tasks: Vec<Value> = (0..10)
        .map(|_| json!({"type": "sleep", "payload": {"ms": 7000}}))
        .collect();
    let (status, body) = post(&server, "/v1/tasks/batch", json!({"tasks": tasks})).await;
    assert_eq!(status, 201, "{body}");
    let ids: Vec<String> = body["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_owned())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, running) = get(&server, "/v1/tasks?status=running&limit=100").await;
        if running["tasks"].as_array().map_or(0, Vec::len) == ids.len() {
            break;
        }
        assert!(Instant::now() < deadline, "the tasks never all ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    postgres.stop_immediately();
    // Longer than the lease.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    postgres.start_again();
    readyz_until(&server, 200, Duration::from_secs(15)).await;
    for id in &ids {
        let task = wait_for(&server, id, is_final).await;
        assert_eq!(task["status"], "succeeded", "{task}");
        assert_eq!(task["attempts"], 1, "ran again after the outage: {task}");
    }
}
