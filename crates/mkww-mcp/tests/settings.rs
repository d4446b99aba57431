//! Runtime settings, feature flags and `mkww-mcp doctor`, end to end against the real binary:
//! a change through `PATCH /v1/settings` shows with source `runtime` and changes what the node
//! does (rate limits) without a restart, a key that is not dynamic is refused, SIGHUP re-reads
//! the file beneath runtime overrides, two nodes on one database and Redis see each other's
//! changes within a second (and a third one without Redis, by polling), a flag switches an
//! integration's tasks off (they wait, attempts unspent) and on, a rollout answers the same for
//! a subject every time, and `doctor` reports good and bad set-ups with its exit code.

mod support;

use axum::Router;
use axum::routing::get as get_route;
use mcp_core::flags::Flag;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::*;

/// The bound every node meets: a change is applied everywhere within it.
const BOUND: Duration = Duration::from_secs(1);

async fn patch_settings(server: &Server, as_role: &str, body: Value) -> (u16, Value) {
    call(
        &client_as(as_role, &format!("{as_role}-1")),
        "PATCH",
        server.url("/v1/settings"),
        Some(body),
    )
    .await
}

async fn setting(server: &Server, key: &str) -> Value {
    let (status, body) = get(server, "/v1/settings").await;
    assert_eq!(status, 200, "{body}");
    body["settings"][key].clone()
}

async fn put_flag(server: &Server, name: &str, flag: Value) -> Value {
    let (status, body) = call(
        &client(),
        "PUT",
        server.url(&format!("/v1/flags/{name}")),
        Some(flag),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// How many of `n` quick reads `sub` gets answered (the rest are refused with 429).
async fn reads_allowed(server: &Server, sub: &str, n: usize) -> usize {
    let client = client_as("user", sub);
    let mut allowed = 0;
    for _ in 0..n {
        let (status, body) = call(&client, "GET", server.url("/v1/tasks"), None).await;
        match status {
            200 => allowed += 1,
            429 => assert_eq!(body["error"]["code"], "rate_limited", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    allowed
}

/// How many of `n` quick task creations `sub` gets accepted (the rest are refused with 429).
async fn writes_allowed(server: &Server, sub: &str, n: usize) -> usize {
    let client = client_as("user", sub);
    let mut allowed = 0;
    for _ in 0..n {
        let (status, body) = call(
            &client,
            "POST",
            server.url("/v1/tasks"),
            Some(json!({"type": "noop"})),
        )
        .await;
        match status {
            201 => allowed += 1,
            429 => assert_eq!(body["error"]["code"], "rate_limited", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    allowed
}

#[tokio::test]
async fn a_runtime_change_shows_its_source_and_null_restores_the_configured_value() {
    let server = Server::start(&[("MCP_QUOTA_TASKS_PER_DAY", "500".into())]);
    let before = setting(&server, "quota_tasks_per_day").await;
    assert_eq!(before, json!({"value": 500, "source": "env"}));
    assert_eq!(
        setting(&server, "worker_concurrency").await["source"],
        "default"
    );

    let (status, body) = patch_settings(
        &server,
        "admin",
        json!({"quota_tasks_per_day": 20, "breaker_failure_rate": 0.8}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["settings"]["quota_tasks_per_day"],
        json!({"value": 20, "source": "runtime", "configured": 500})
    );
    let after = setting(&server, "breaker_failure_rate").await;
    assert_eq!(
        (after["value"].as_f64(), after["source"].as_str()),
        (Some(0.8), Some("runtime"))
    );

    // Audited, with who and what.
    let (_, audit) = get(&server, "/v1/audit?action=settings.changed").await;
    let event = &audit["events"][0];
    assert_eq!(event["principal"], "admin-1", "{audit}");
    assert_eq!(event["details"]["changes"]["quota_tasks_per_day"], 20);

    let (status, body) =
        patch_settings(&server, "admin", json!({"quota_tasks_per_day": null})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        setting(&server, "quota_tasks_per_day").await,
        json!({"value": 500, "source": "env"})
    );
}

#[tokio::test]
async fn a_rate_limit_change_takes_effect_without_a_restart() {
    let server = Server::start(&[]);
    // Before: the default (6000 a minute) lets a burst through.
    assert_eq!(reads_allowed(&server, "before", 12).await, 12);

    let (status, body) =
        patch_settings(&server, "admin", json!({"rate_limit_read_per_minute": 5})).await;
    assert_eq!(status, 200, "{body}");
    let allowed = reads_allowed(&server, "during", 12).await;
    assert!(
        (4..=6).contains(&allowed),
        "{allowed} of 12 allowed at 5/min"
    );

    let (status, body) = patch_settings(
        &server,
        "admin",
        json!({"rate_limit_read_per_minute": null}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(reads_allowed(&server, "after", 12).await, 12);
}

#[tokio::test]
async fn refuses_keys_that_are_not_dynamic_unknown_or_invalid_and_non_admins() {
    let server = Server::start(&[]);
    let cases = [
        (json!({"listen": "0.0.0.0:1"}), "setting_not_dynamic"),
        (
            json!({"database_url": "postgres://x"}),
            "setting_not_dynamic",
        ),
        (json!({"rate_limit_reads": 5}), "setting_unknown"),
        (
            json!({"rate_limit_read_per_minute": "many"}),
            "invalid_setting",
        ),
        (json!({"breaker_failure_rate": 1.5}), "invalid_setting"),
        (json!({"log_level": "mkww_mcp=loudest"}), "invalid_setting"),
        // All or nothing: one bad key refuses the good one too.
        (
            json!({"quota_tasks_per_day": 3, "listen": "0.0.0.0:1"}),
            "setting_not_dynamic",
        ),
        (json!([1, 2]), "invalid_setting"),
    ];
    for (body, code) in cases {
        let (status, answer) = patch_settings(&server, "admin", body.clone()).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (422, Some(code)),
            "{body} → {answer}"
        );
        assert!(answer["error"]["request_id"].is_string(), "{answer}");
    }
    assert_eq!(
        setting(&server, "quota_tasks_per_day").await["source"],
        "default"
    );

    for role in ["operator", "service", "user"] {
        let (status, answer) =
            patch_settings(&server, role, json!({"quota_tasks_per_day": 1})).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{role}"
        );
    }
    let (status, _) = call(
        &client_as("operator", "op"),
        "GET",
        server.url("/v1/settings"),
        None,
    )
    .await;
    assert_eq!(status, 200, "operators may read");
    let (status, _) = call(
        &client_as("user", "u"),
        "GET",
        server.url("/v1/settings"),
        None,
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn sighup_reloads_the_file_beneath_runtime_overrides() {
    let dir = temp_dir();
    let file = dir.join("mkww-mcp.toml");
    std::fs::write(
        &file,
        "rate_limit_write_per_minute = 100\nquota_tasks_per_day = 40\n",
    )
    .unwrap();
    let server = Server::start_in(dir, &[]);
    assert_eq!(
        setting(&server, "rate_limit_write_per_minute").await,
        json!({"value": 100, "source": "file"})
    );
    let (status, body) = patch_settings(&server, "admin", json!({"quota_tasks_per_day": 7})).await;
    assert_eq!(status, 200, "{body}");

    std::fs::write(
        &file,
        "rate_limit_write_per_minute = 200\nquota_tasks_per_day = 50\nworker_concurrency = 3\n",
    )
    .unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if setting(&server, "rate_limit_write_per_minute").await["value"] == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the file was not reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        setting(&server, "worker_concurrency").await,
        json!({"value": 3, "source": "file"})
    );
    assert_eq!(
        setting(&server, "quota_tasks_per_day").await,
        json!({"value": 7, "source": "runtime", "configured": 50}),
        "a runtime override stays on top of the reloaded file"
    );

    // A file that no longer loads changes nothing.
    std::fs::write(&file, "rate_limit_write_per_minute = \"lots\"\n").unwrap();
    Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(
        server
            .wait_for_log(|l| l["message"] == "SIGHUP: configuration not reloaded")
            .is_some()
    );
    assert_eq!(
        setting(&server, "rate_limit_write_per_minute").await["value"],
        200
    );
}

/// Polls `node` until `seen` holds; returns how long it took (fails beyond 5 s).
async fn until(node: &Server, path: &str, seen: impl Fn(&Value) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let (status, body) = get(node, path).await;
        assert_eq!(status, 200, "{body}");
        if seen(&body) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never seen: {body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_change_on_one_node_is_applied_on_the_others_within_a_second() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let Some(redis) = redis_url().await else {
        return;
    };
    let prefix = format!("mcp-settings-{}", uuid::Uuid::new_v4().simple());
    let mut env = schema.env();
    env.push(("MCP_WORKER_CONCURRENCY", "0".into()));
    // C shares only the database: no bus nudge reaches it, its polling must.
    let c = Server::start(&env);
    env.extend([
        ("MCP_REDIS_URL", redis.clone()),
        ("MCP_REDIS_PREFIX", prefix.clone()),
    ]);
    let a = Server::start(&env);
    let b = Server::start(&env);

    // Writes, so that the test's own polling (reads) is not limited.
    let (status, body) =
        patch_settings(&a, "admin", json!({"rate_limit_write_per_minute": 4})).await;
    assert_eq!(status, 200, "{body}");
    for (name, node) in [("B (bus)", &b), ("C (polling)", &c)] {
        let took = until(node, "/v1/settings", |body| {
            body["settings"]["rate_limit_write_per_minute"]["value"] == 4
        })
        .await;
        eprintln!("setting reached node {name} in {took:?}");
        assert!(took < BOUND, "node {name}: {took:?}");
    }
    // Applied, not only shown: B and C now refuse a burst of writes.
    for (node, writer) in [(&b, "writer-b"), (&c, "writer-c")] {
        let allowed = writes_allowed(node, writer, 10).await;
        assert!((3..=5).contains(&allowed), "{allowed} of 10 at 4/min");
    }

    put_flag(
        &a,
        "beta.search",
        json!({"enabled": true, "percentage": 25}),
    )
    .await;
    for (name, node) in [("B (bus)", &b), ("C (polling)", &c)] {
        let took = until(node, "/v1/flags", |body| {
            body["flags"].as_array().is_some_and(|f| {
                f.iter()
                    .any(|f| f["name"] == "beta.search" && f["percentage"] == 25)
            })
        })
        .await;
        eprintln!("flag reached node {name} in {took:?}");
        assert!(took < BOUND, "node {name}: {took:?}");
    }
    let (status, _) = call(&client(), "DELETE", a.url("/v1/flags/beta.search"), None).await;
    assert_eq!(status, 204);
    for node in [&b, &c] {
        let took = until(node, "/v1/flags", |body| body["flags"] == json!([])).await;
        assert!(took < BOUND, "{took:?}");
    }
    drop((a, b, c));
    schema.drop_schema().await;
}

/// A fake outside server counting the requests it answers.
async fn counting_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = Router::new().route(
        "/hit",
        get_route(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, hits)
}

#[tokio::test]
async fn a_flag_switches_an_integration_off_and_its_tasks_wait_until_it_is_on_again() {
    let (addr, hits) = counting_server().await;
    let server = Server::start(&[("MCP_OUTBOUND_ALLOW", r#"["127.0.0.1"]"#.into())]);
    let off = put_flag(&server, "integration.http", json!({"enabled": false})).await;
    assert_eq!(off["enabled"], false, "{off}");

    let (status, task) = post(
        &server,
        "/v1/tasks",
        json!({"type": "http.request", "payload": {"url": format!("http://{addr}/hit")}}),
    )
    .await;
    assert_eq!(status, 201, "creating still works: {task}");
    let id = task["id"].as_str().unwrap().to_owned();
    // Other types still run meanwhile.
    let (_, noop) = post(&server, "/v1/tasks", json!({"type": "noop"})).await;
    wait_for(&server, noop["id"].as_str().unwrap(), |t| {
        t["status"] == "succeeded"
    })
    .await;

    // It waits: queued, no attempt spent, the outside server never called.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_millis(1500) {
        let (_, task) = get(&server, &format!("/v1/tasks/{id}")).await;
        assert_eq!(
            (task["status"].as_str(), task["attempts"].as_i64()),
            (Some("queued"), Some(0)),
            "{task}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);

    put_flag(&server, "integration.http", json!({"enabled": true})).await;
    let done = wait_for(&server, &id, is_final).await;
    assert_eq!(
        (done["status"].as_str(), done["attempts"].as_i64()),
        (Some("succeeded"), Some(1)),
        "{done}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Off again, then the flag deleted: deleting means on.
    put_flag(&server, "integration.http", json!({"enabled": false})).await;
    let (_, task) = post(
        &server,
        "/v1/tasks",
        json!({"type": "http.request", "payload": {"url": format!("http://{addr}/hit")}}),
    )
    .await;
    let (status, _) = call(
        &client(),
        "DELETE",
        server.url("/v1/flags/integration.http"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let done = wait_for(&server, task["id"].as_str().unwrap(), is_final).await;
    assert_eq!(done["status"], "succeeded", "{done}");
}

#[tokio::test]
async fn the_outbound_allow_rules_change_at_runtime() {
    let (addr, hits) = counting_server().await;
    let server = Server::start(&[]);
    let task = json!({"type": "http.request", "payload": {"url": format!("http://{addr}/hit")}});
    let refused = |(status, body): (u16, Value)| {
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (422, Some("destination_forbidden")),
            "{body}"
        );
    };
    refused(post(&server, "/v1/tasks", task.clone()).await);

    let (status, body) =
        patch_settings(&server, "admin", json!({"outbound_allow": ["127.0.0.1"]})).await;
    assert_eq!(status, 200, "{body}");
    let (status, created) = post(&server, "/v1/tasks", task.clone()).await;
    assert_eq!(status, 201, "{created}");
    let done = wait_for(&server, created["id"].as_str().unwrap(), is_final).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    let (status, body) = patch_settings(&server, "admin", json!({"outbound_allow": null})).await;
    assert_eq!(status, 200, "{body}");
    refused(post(&server, "/v1/tasks", task).await);
    let (status, body) =
        patch_settings(&server, "admin", json!({"outbound_allow": ["not a host!"]})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_setting")),
        "{body}"
    );
}

#[tokio::test]
async fn a_percentage_rollout_is_deterministic_per_subject() {
    let server = Server::start(&[]);
    let spec = json!({"percentage": 50});
    put_flag(&server, "new-console", spec.clone()).await;
    let flag: Flag = serde_json::from_value(spec).unwrap();
    let mut on = 0;
    for i in 0..40 {
        let subject = format!("person-{i}");
        let client = client_as("user", &subject);
        let mut answers = Vec::new();
        for _ in 0..2 {
            let (status, body) = call(&client, "GET", server.url("/v1/flags/mine"), None).await;
            assert_eq!(status, 200, "{body}");
            answers.push(body["flags"]["new-console"].as_bool().expect("a bool"));
        }
        assert_eq!(answers[0], answers[1], "{subject} flapped");
        assert_eq!(
            answers[0],
            flag.evaluate(
                "new-console",
                Some(subject.as_str()),
                Some(mcp_core::principal::Role::User)
            ),
            "{subject}: the documented bucket"
        );
        on += usize::from(answers[0]);
    }
    assert!((8..=32).contains(&on), "{on} of 40 at 50%");

    // Targeted by role: operators only.
    put_flag(&server, "ops-tools", json!({"roles": ["operator"]})).await;
    let mine = |role: &'static str| {
        let server = &server;
        async move {
            let (_, body) = call(
                &client_as(role, "x"),
                "GET",
                server.url("/v1/flags/mine"),
                None,
            )
            .await;
            body["flags"]["ops-tools"].clone()
        }
    };
    assert_eq!(mine("operator").await, true);
    assert_eq!(mine("user").await, false);
}

/// Runs `mkww-mcp doctor` in `dir` with `env`; its exit code and output.
fn doctor(dir: &std::path::Path, env: &[(&str, &str)]) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mkww-mcp"));
    command
        .arg("doctor")
        .current_dir(dir)
        .env("MCP_DATA_DIR", dir)
        .env_remove("RUST_LOG");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("run doctor");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn doctor_reports_a_good_set_up_and_exits_zero() {
    let dir = temp_dir();
    std::fs::write(dir.join("mkww-mcp.toml"), "worker_concurrency = 3\n").unwrap();
    let mut env = vec![("MCP_RATE_LIMIT_READ_PER_MINUTE", "120")];
    let redis = redis_url().await;
    if let Some(redis) = &redis {
        env.push(("MCP_REDIS_URL", redis.as_str()));
    }
    let (code, out) = doctor(&dir, &env);
    assert_eq!(code, 0, "{out}");
    for expected in [
        "configuration: ok",
        "database: ok (SQLite",
        "* worker_concurrency = 3  [file]",
        "* rate_limit_read_per_minute = 120  [env]",
        "* quota_tasks_per_day = 1000000  [default]",
        "  listen = \"127.0.0.1:8080\"  [default]",
        "doctor: ok (0 warnings)",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in:\n{out}");
    }
    if redis.is_some() {
        assert!(out.contains("redis: ok"), "{out}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn doctor_warns_about_unsafe_set_ups_and_fails_on_errors() {
    let dir = temp_dir();
    // Unsafe but working: warnings, exit 0; the secret is never printed.
    let (code, out) = doctor(
        &dir,
        &[
            ("MCP_LISTEN", "0.0.0.0:8080"),
            ("MCP_VRCHAT_OSC_LISTEN", "0.0.0.0:9001"),
            ("MCP_METRICS_TOKEN", "short-secret"),
        ],
    );
    assert_eq!(code, 0, "{out}");
    for expected in [
        "warning: listen = 0.0.0.0:8080 is reachable from other machines without TLS",
        "warning: vrchat_osc_listen = 0.0.0.0:9001",
        "warning: metrics_token is sent in the clear",
        "metrics_token = \"(set)\"  [env]",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in:\n{out}");
    }
    assert!(!out.contains("short-secret"), "{out}");

    // A cluster whose services cannot be reached, with a generated JWT secret.
    let (code, out) = doctor(
        &dir,
        &[
            ("MCP_DATABASE_URL", "postgres://postgres@127.0.0.1:1/none"),
            ("MCP_REDIS_URL", "redis://127.0.0.1:1"),
        ],
    );
    assert_eq!(code, 1, "{out}");
    for expected in [
        "error: database: cannot reach PostgreSQL",
        "error: redis: cannot reach Redis",
        "warning: cluster (PostgreSQL) with a generated JWT secret",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in:\n{out}");
    }

    // A configuration that does not load.
    std::fs::write(dir.join("mkww-mcp.toml"), "worker_concurency = 3\n").unwrap();
    let (code, out) = doctor(&dir, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("configuration: ERROR"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}
