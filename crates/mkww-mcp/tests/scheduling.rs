//! Schedules, paused queues, rate limits per task type and per queue, and `Retry-After`, against
//! the real binary on SQLite and on PostgreSQL: what `docs/scheduling.md` promises, including two
//! nodes sharing one schedule without firing it twice and limits holding across nodes.

mod support;

use chrono::{DateTime, Timelike, Utc};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use support::*;

/// Where a test's servers keep their data: a fresh SQLite directory or PostgreSQL schema.
enum Backing {
    Sqlite(std::path::PathBuf),
    Postgres(PgSchema),
}

impl Backing {
    async fn sqlite() -> Option<Backing> {
        Some(Backing::Sqlite(temp_dir()))
    }

    async fn postgres() -> Option<Backing> {
        PgSchema::create().await.map(Backing::Postgres)
    }

    fn start(&self, extra: &[(&'static str, String)]) -> Server {
        let mut env: Vec<(&str, String)> = match self {
            Backing::Sqlite(_) => Vec::new(),
            Backing::Postgres(schema) => schema.env(),
        };
        env.extend(extra.iter().cloned());
        match self {
            Backing::Sqlite(dir) => Server::start_in(dir.clone(), &env),
            Backing::Postgres(_) => Server::start(&env),
        }
    }

    async fn cleanup(self) {
        match self {
            Backing::Sqlite(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Backing::Postgres(schema) => schema.drop_schema().await,
        }
    }
}

/// Runs a case on SQLite and on PostgreSQL.
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(backing) = super::Backing::sqlite().await {
                        super::cases::$name(&backing).await;
                        backing.cleanup().await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(backing) = super::Backing::postgres().await {
                        super::cases::$name(&backing).await;
                        backing.cleanup().await;
                    }
                }
            )*
        }
    };
}

both_stores!(
    schedules_are_created_listed_timed_triggered_paused_and_deleted,
    a_schedule_firing_every_second_creates_its_tasks,
    refuses_bad_cron_unknown_zones_and_unknown_types_with_422,
    missed_firings_follow_each_policy_after_a_restart,
    a_paused_queue_starts_nothing_until_resumed_even_across_a_restart,
    retry_after_reschedules_without_spending_an_attempt,
    a_firing_survives_a_crash_between_its_task_and_its_advance,
    a_queue_limit_is_set_shown_and_removed_through_its_route,
    a_held_back_task_starts_when_its_window_reopens_not_at_the_next_poll,
);

/// How often the nodes of the two-node limit test read the limits.
const QUEUE_POLL_MS: u64 = 50;

/// The failpoint of a debug build between storing a firing's task and advancing its schedule
/// (`services/schedules.rs`): the process aborts there.
const AFTER_TASK: (&str, &str) = ("MCP_TEST_FAILPOINT", "schedule.after_task");

/// The fire time a schedule's task was created for, from its idempotency key.
fn fire_time(schedule: &str, task: &Value) -> DateTime<Utc> {
    let key = task["idempotency_key"].as_str().unwrap_or_default();
    instant(&json!(
        key.trim_start_matches(&format!("schedule:{schedule}:"))
    ))
}

/// Asserts that every fire time of `tasks` has one task, and returns them in order.
fn one_task_per_fire_time(schedule: &str, tasks: &[Value]) -> Vec<DateTime<Utc>> {
    let mut per_time: BTreeMap<DateTime<Utc>, usize> = BTreeMap::new();
    for task in tasks {
        *per_time.entry(fire_time(schedule, task)).or_default() += 1;
    }
    assert!(
        per_time.values().all(|n| *n == 1),
        "a fire time has two tasks: {per_time:?}"
    );
    per_time.into_keys().collect()
}

async fn send(server: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    call(&client(), method, server.url(path), body).await
}

/// Every task the hub holds (admins see all), oldest first.
async fn all_tasks(server: &Server) -> Vec<Value> {
    let (status, page) = get(server, "/v1/tasks?limit=500").await;
    assert_eq!(status, 200, "{page}");
    let mut tasks = page["tasks"].as_array().cloned().unwrap_or_default();
    tasks.reverse();
    tasks
}

/// The tasks a schedule created.
async fn tasks_of(server: &Server, schedule: &str) -> Vec<Value> {
    let creator = format!("schedule:{schedule}");
    all_tasks(server)
        .await
        .into_iter()
        .filter(|t| t["created_by"] == creator.as_str())
        .collect()
}

/// Polls until `check` holds, failing after `within`.
async fn eventually<T>(
    within: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn instant(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("not a time: {value}"))
}

mod cases {
    use super::*;

    pub async fn schedules_are_created_listed_timed_triggered_paused_and_deleted(
        backing: &Backing,
    ) {
        let server = backing.start(&[]);
        let body = json!({
            "name": "nightly-report",
            "cron": "0 30 2 * * *",
            "timezone": "Europe/Berlin",
            "task": {"type": "echo", "payload": {"report": "nightly"}},
            "missed": "once",
        });
        let (status, created) = post(&server, "/v1/schedules", body.clone()).await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["name"], "nightly-report");
        assert_eq!(created["missed"], "once");
        assert_eq!(created["paused"], false);
        // 02:30 in Berlin is 00:30 or 01:30 UTC, depending on daylight saving.
        let next = instant(&created["next_fire_at"]);
        assert!(
            matches!(next.hour(), 0 | 1) && next.minute() == 30,
            "{next}"
        );
        let (status, taken) = post(&server, "/v1/schedules", body).await;
        assert_eq!(status, 409, "{taken}");
        assert_eq!(taken["error"]["code"], "schedule_exists");

        let (status, list) = get(&server, "/v1/schedules").await;
        assert_eq!(status, 200);
        assert_eq!(list["schedules"][0]["name"], "nightly-report");
        let (status, times) = get(&server, "/v1/schedules/nightly-report/next?n=3").await;
        assert_eq!(status, 200, "{times}");
        let times: Vec<DateTime<Utc>> = times["next"]
            .as_array()
            .unwrap()
            .iter()
            .map(instant)
            .collect();
        assert_eq!(times.len(), 3);
        assert!(
            times
                .windows(2)
                .all(|w| w[1] - w[0] >= chrono::Duration::hours(23))
        );
        let (status, refused) = get(&server, "/v1/schedules/nightly-report/next?n=1000").await;
        assert_eq!(status, 422, "{refused}");

        let (status, task) = send(
            &server,
            "POST",
            "/v1/schedules/nightly-report/trigger",
            None,
        )
        .await;
        assert_eq!(status, 201, "{task}");
        assert_eq!(task["type"], "echo");
        assert_eq!(task["created_by"], "schedule:nightly-report");
        assert!(
            task["idempotency_key"]
                .as_str()
                .unwrap()
                .starts_with("schedule:nightly-report:")
        );
        let done = wait_for(&server, task["id"].as_str().unwrap(), is_final).await;
        assert_eq!(done["result"], json!({"report": "nightly"}));

        let (status, paused) =
            send(&server, "POST", "/v1/schedules/nightly-report/pause", None).await;
        assert_eq!(status, 200, "{paused}");
        assert_eq!(paused["paused"], true);
        assert_eq!(paused["next_fire_at"], Value::Null);
        let (_, resumed) = send(&server, "POST", "/v1/schedules/nightly-report/resume", None).await;
        assert_eq!(resumed["paused"], false);
        assert!(resumed["next_fire_at"].is_string());

        let (status, patched) = send(
            &server,
            "PATCH",
            "/v1/schedules/nightly-report",
            Some(json!({"cron": "@hourly", "timezone": "UTC"})),
        )
        .await;
        assert_eq!(status, 200, "{patched}");
        let next = instant(&patched["next_fire_at"]);
        assert_eq!((next.minute(), next.second()), (0, 0));

        let (status, _) = send(&server, "DELETE", "/v1/schedules/nightly-report", None).await;
        assert_eq!(status, 204);
        let (status, gone) = get(&server, "/v1/schedules/nightly-report").await;
        assert_eq!(status, 404);
        assert_eq!(gone["error"]["code"], "schedule_not_found");
        let (status, _) = send(
            &server,
            "POST",
            "/v1/schedules/nightly-report/trigger",
            None,
        )
        .await;
        assert_eq!(status, 404);
    }

    pub async fn a_schedule_firing_every_second_creates_its_tasks(backing: &Backing) {
        let server = backing.start(&[]);
        let (status, created) = post(
            &server,
            "/v1/schedules",
            json!({"name": "tick", "cron": "* * * * * *", "task": {"type": "noop"}}),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        let tasks = eventually(Duration::from_secs(15), "three firings", async || {
            let tasks = tasks_of(&server, "tick").await;
            (tasks.len() >= 3).then_some(tasks)
        })
        .await;
        // One task per second, each under its own key: `schedule:tick:{fire time}`.
        let keys: BTreeSet<String> = tasks
            .iter()
            .map(|t| t["idempotency_key"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(keys.len(), tasks.len());
        let fire_times: Vec<DateTime<Utc>> = keys
            .iter()
            .map(|k| instant(&json!(k.trim_start_matches("schedule:tick:"))))
            .collect();
        assert!(
            fire_times.iter().all(|t| t.nanosecond() == 0),
            "{fire_times:?}"
        );
        for pair in fire_times.windows(2) {
            assert_eq!(
                (pair[1] - pair[0]).num_milliseconds(),
                1000,
                "{fire_times:?}"
            );
        }
        let (status, _) = send(&server, "DELETE", "/v1/schedules/tick", None).await;
        assert_eq!(status, 204);
    }

    pub async fn refuses_bad_cron_unknown_zones_and_unknown_types_with_422(backing: &Backing) {
        let server = backing.start(&[]);
        let cases = [
            (
                json!({"name": "a", "cron": "61 * * * *", "task": {"type": "noop"}}),
                "invalid_cron",
            ),
            (
                json!({"name": "a", "cron": "not cron", "task": {"type": "noop"}}),
                "invalid_cron",
            ),
            (
                json!({"name": "a", "cron": "@daily", "timezone": "Mars/Olympus_Mons", "task": {"type": "noop"}}),
                "unknown_timezone",
            ),
            (
                json!({"name": "a", "cron": "@daily", "task": {"type": "no.such.type"}}),
                "unknown_task_type",
            ),
            (
                json!({"name": "a", "cron": "@daily", "task": {"type": "noop", "idempotency_key": "k"}}),
                "invalid_schedule",
            ),
            (
                json!({"name": "bad name!", "cron": "@daily", "task": {"type": "noop"}}),
                "invalid_schedule",
            ),
            (
                json!({"name": "a", "cron": "@daily", "task": {"type": "noop"}, "max_backfill": 100000}),
                "invalid_schedule",
            ),
        ];
        for (body, code) in cases {
            let (status, answer) = post(&server, "/v1/schedules", body.clone()).await;
            assert_eq!(status, 422, "{body} → {answer}");
            assert_eq!(answer["error"]["code"], code, "{body} → {answer}");
            assert!(answer["error"]["request_id"].is_string());
        }
        let (status, list) = get(&server, "/v1/schedules").await;
        assert_eq!(status, 200);
        assert_eq!(list["schedules"], json!([]));
    }

    /// Three schedules match three seconds a few seconds ahead; the node stops before they come
    /// and starts again after, so all three are missed: `skip` runs none, `once` the latest,
    /// `all` with `max_backfill = 2` the latest two.
    pub async fn missed_firings_follow_each_policy_after_a_restart(backing: &Backing) {
        let mut server = backing.start(&[]);
        let start = Utc::now() + chrono::Duration::seconds(4);
        let seconds: Vec<String> = (0..3)
            .map(|i| ((start.second() + i) % 60).to_string())
            .collect();
        let cron = format!("{} * * * * *", seconds.join(","));
        for (name, missed) in [("skip", "skip"), ("once", "once"), ("all", "all")] {
            let (status, created) = post(
                &server,
                "/v1/schedules",
                json!({"name": name, "cron": cron, "missed": missed, "max_backfill": 2,
                       "task": {"type": "noop"}}),
            )
            .await;
            assert_eq!(status, 201, "{created}");
        }
        assert!(server.terminate().success());
        // Down until well past the last of the three (and the grace of 1 s).
        let last = start + chrono::Duration::seconds(2);
        while Utc::now() < last + chrono::Duration::milliseconds(2500) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let server = backing.start(&[]);
        let all = eventually(Duration::from_secs(15), "the catch-up runs", async || {
            let all = tasks_of(&server, "all").await;
            (all.len() >= 2 && !tasks_of(&server, "once").await.is_empty()).then_some(all)
        })
        .await;
        assert_eq!(all.len(), 2);
        assert_eq!(tasks_of(&server, "once").await.len(), 1);
        assert_eq!(tasks_of(&server, "skip").await.len(), 0);
        // The latest missed time is the one `once` runs.
        let once = &tasks_of(&server, "once").await[0];
        let key = once["idempotency_key"].as_str().unwrap();
        let fired = instant(&json!(key.trim_start_matches("schedule:once:")));
        assert_eq!(fired.second(), (start.second() + 2) % 60, "{key}");
        // All three move on to the next minute.
        let (_, skip) = get(&server, "/v1/schedules/skip").await;
        assert!(instant(&skip["next_fire_at"]) > Utc::now());
    }

    /// A node is killed (a failpoint aborts it) right after storing a firing's task and before
    /// advancing the schedule. The firing is neither lost nor repeated: the task the dead node
    /// stored is the one task of its fire time after a restart, and the schedule goes on. The
    /// restarted node has a long grace, so it fires the crashed time again and finds its key
    /// used; with the claim taken first, the dead node would have stored nothing.
    pub async fn a_firing_survives_a_crash_between_its_task_and_its_advance(backing: &Backing) {
        use std::os::unix::process::ExitStatusExt;
        let mut doomed = backing.start(&[(AFTER_TASK.0, AFTER_TASK.1.to_owned())]);
        let (status, created) = post(
            &doomed,
            "/v1/schedules",
            json!({"name": "crash", "cron": "* * * * * *", "task": {"type": "noop"}}),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        let exit = doomed.wait_exit(Duration::from_secs(10));
        assert_eq!(exit.signal(), Some(libc::SIGABRT), "{exit:?}");
        drop(doomed);
        let restarted_at = Utc::now();
        let server = backing.start(&[("MCP_SCHEDULE_GRACE_MS", "60000".to_owned())]);
        let tasks = eventually(Duration::from_secs(15), "three firings", async || {
            let tasks = tasks_of(&server, "crash").await;
            (tasks.len() >= 3).then_some(tasks)
        })
        .await;
        let times = one_task_per_fire_time("crash", &tasks);
        // The first fire time has its task, stored by the dead node before the restart.
        assert_eq!(times[0], instant(&created["next_fire_at"]), "{times:?}");
        assert!(times[0] < restarted_at, "{times:?} vs {restarted_at}");
        for pair in times.windows(2) {
            assert_eq!(
                (pair[1] - pair[0]).num_milliseconds(),
                1000,
                "a second was lost: {times:?}"
            );
        }
        let (_, schedule) = get(&server, "/v1/schedules/crash").await;
        assert!(instant(&schedule["next_fire_at"]) > times[0], "{schedule}");
        let (status, _) = call(&client(), "DELETE", server.url("/v1/schedules/crash"), None).await;
        assert_eq!(status, 204);
    }

    pub async fn a_paused_queue_starts_nothing_until_resumed_even_across_a_restart(
        backing: &Backing,
    ) {
        let mut server = backing.start(&[]);
        let mut watcher = connect(&server, Some(&token("operator", "watcher"))).await;
        let reply = request(
            &mut watcher,
            json!({"id": 1, "op": "subscribe", "channel": "system.queues"}),
        )
        .await;
        assert_eq!(reply["ok"], true, "{reply}");
        let (status, paused) = send(&server, "POST", "/v1/queues/reports/pause", None).await;
        assert_eq!(status, 200, "{paused}");
        assert_eq!(paused["changed"], true);
        let event = next(&mut watcher).await;
        assert_eq!(event["event"]["type"], "queue.paused", "{event}");
        assert_eq!(event["event"]["data"]["queue"], "reports");
        let (_, again) = send(&server, "POST", "/v1/queues/reports/pause", None).await;
        assert_eq!(again["changed"], false);
        let (status, held) = post(
            &server,
            "/v1/tasks",
            json!({"type": "noop", "queue": "reports"}),
        )
        .await;
        assert_eq!(status, 201, "{held}");
        let held_id = held["id"].as_str().unwrap().to_owned();
        // Another queue runs meanwhile: when it is done, the paused one had its chance.
        let (_, free) = post(&server, "/v1/tasks", json!({"type": "noop"})).await;
        wait_for(&server, free["id"].as_str().unwrap(), is_final).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_, still) = get(&server, &format!("/v1/tasks/{held_id}")).await;
        assert_eq!(still["status"], "queued", "{still}");
        assert_eq!(still["attempts"], 0);

        // The pause is stored: a restarted node holds the queue too.
        assert!(server.terminate().success());
        let server = backing.start(&[]);
        let (_, queues) = get(&server, "/v1/queues").await;
        assert_eq!(queues["paused"], json!(["reports"]), "{queues}");
        assert_eq!(queues["queues"]["reports"]["queued"], 1, "{queues}");
        let (_, free) = post(&server, "/v1/tasks", json!({"type": "noop"})).await;
        wait_for(&server, free["id"].as_str().unwrap(), is_final).await;
        let (_, still) = get(&server, &format!("/v1/tasks/{held_id}")).await;
        assert_eq!(still["status"], "queued", "{still}");

        let (status, resumed) = send(&server, "POST", "/v1/queues/reports/resume", None).await;
        assert_eq!(status, 200, "{resumed}");
        assert_eq!(resumed["changed"], true);
        let done = wait_for(&server, &held_id, is_final).await;
        assert_eq!(done["status"], "succeeded");
        assert_eq!(done["attempts"], 1);
        let (_, queues) = get(&server, "/v1/queues").await;
        assert_eq!(queues["paused"], json!([]));
    }

    /// An external worker that got a 429 with `Retry-After` hands the task back for then: it
    /// runs again after the wait, and the deferred attempt is not counted (one attempt allowed).
    pub async fn retry_after_reschedules_without_spending_an_attempt(backing: &Backing) {
        let server = backing.start(&[]);
        let mut worker = connect(&server, Some(&token("service", "rate-limited-worker"))).await;
        let reply = request(
            &mut worker,
            json!({"id": 1, "op": "worker.register", "types": ["upstream.call"], "concurrency": 1}),
        )
        .await;
        assert_eq!(reply["ok"], true, "{reply}");
        let (status, task) = post(
            &server,
            "/v1/tasks",
            json!({"type": "upstream.call", "max_attempts": 1}),
        )
        .await;
        assert_eq!(status, 201, "{task}");
        let first = assigned(&mut worker).await;
        assert_eq!(first["id"], task["id"]);
        let asked = Instant::now();
        let reply = request(
            &mut worker,
            json!({"id": 2, "op": "task.fail", "task_id": first["id"],
                   "error": {"message": "upstream answered 429"}, "retryable": false,
                   "retry_after_ms": 800}),
        )
        .await;
        assert_eq!(reply["ok"], true, "{reply}");
        let waiting = wait_for(&server, task["id"].as_str().unwrap(), |t| {
            t["status"] == "scheduled"
        })
        .await;
        assert_eq!(waiting["attempts"], 0, "{waiting}");
        let again = assigned(&mut worker).await;
        assert_eq!(again["id"], task["id"]);
        assert!(
            asked.elapsed() >= Duration::from_millis(700),
            "ran again too soon"
        );
        request(
            &mut worker,
            json!({"id": 3, "op": "task.complete", "task_id": again["id"], "result": {"ok": true}}),
        )
        .await;
        let done = wait_for(&server, task["id"].as_str().unwrap(), is_final).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["attempts"], 1);
    }

    /// `PUT`/`GET`/`DELETE /v1/queues/{queue}/limit`: the limit holds the queue's tasks of every
    /// type, queued with attempts unspent, and `GET /v1/queues` shows it and what it holds back.
    pub async fn a_queue_limit_is_set_shown_and_removed_through_its_route(backing: &Backing) {
        let server = backing.start(&[]);
        let (status, limit) = send(
            &server,
            "PUT",
            "/v1/queues/reports/limit",
            Some(json!({"max": 1, "per_ms": 600_000})),
        )
        .await;
        assert_eq!(status, 200, "{limit}");
        assert_eq!(
            limit,
            json!({"queue": "reports", "max": 1, "per_ms": 600_000})
        );
        let (status, read) = get(&server, "/v1/queues/reports/limit").await;
        assert_eq!((status, &read), (200, &limit));
        for bad in [
            json!({"max": 0, "per_ms": 10}),
            json!({"max": 1, "per_ms": 0}),
        ] {
            let (status, error) = send(&server, "PUT", "/v1/queues/reports/limit", Some(bad)).await;
            assert_eq!(status, 422, "{error}");
            assert_eq!(error["error"]["code"], "invalid_request");
        }
        let (_, first) = post(
            &server,
            "/v1/tasks",
            json!({"type": "noop", "queue": "reports"}),
        )
        .await;
        wait_for(&server, first["id"].as_str().unwrap(), is_final).await;
        let mut held = Vec::new();
        for task_type in ["noop", "echo"] {
            let (_, task) = post(
                &server,
                "/v1/tasks",
                json!({"type": task_type, "queue": "reports"}),
            )
            .await;
            held.push(task["id"].as_str().unwrap().to_owned());
        }
        // Another queue runs meanwhile: when it is done, the limited one had its chance.
        let (_, free) = post(&server, "/v1/tasks", json!({"type": "echo"})).await;
        wait_for(&server, free["id"].as_str().unwrap(), is_final).await;
        let queues = eventually(Duration::from_secs(10), "held-back count", async || {
            let (_, queues) = get(&server, "/v1/queues").await;
            (queues["held_back"]["reports"] == 2).then_some(queues)
        })
        .await;
        assert_eq!(queues["queue_limits"], json!([limit]), "{queues}");
        for id in &held {
            let (_, task) = get(&server, &format!("/v1/tasks/{id}")).await;
            assert_eq!(
                (&task["status"], &task["attempts"]),
                (&json!("queued"), &json!(0))
            );
        }
        let (status, _) = send(&server, "DELETE", "/v1/queues/reports/limit", None).await;
        assert_eq!(status, 204);
        let (status, gone) = get(&server, "/v1/queues/reports/limit").await;
        assert_eq!(status, 404, "{gone}");
        assert_eq!(gone["error"]["code"], "queue_limit_not_found");
        let (status, _) = send(&server, "DELETE", "/v1/queues/reports/limit", None).await;
        assert_eq!(status, 404);
        for id in &held {
            let done = wait_for(&server, id, is_final).await;
            assert_eq!(
                (&done["status"], &done["attempts"]),
                (&json!("succeeded"), &json!(1))
            );
        }
    }

    /// With a claim loop that polls only every five minutes, tasks a used-up window holds back
    /// still start when it reopens: the loop sleeps until then, not until its next poll.
    pub async fn a_held_back_task_starts_when_its_window_reopens_not_at_the_next_poll(
        backing: &Backing,
    ) {
        let server = backing.start(&[("MCP_POLL_INTERVAL_MS", "300000".into())]);
        let (status, limit) = send(
            &server,
            "PUT",
            "/v1/queues/paced/limit",
            Some(json!({"max": 1, "per_ms": 500})),
        )
        .await;
        assert_eq!(status, 200, "{limit}");
        let tasks: Vec<Value> = (0..3)
            .map(|i| json!({"type": "echo", "queue": "paced", "payload": {"i": i}}))
            .collect();
        let (status, created) = post(&server, "/v1/tasks/batch", json!({"tasks": tasks})).await;
        assert_eq!(status, 201, "{created}");
        let asked = Instant::now();
        let mut started = Vec::new();
        for task in created["tasks"].as_array().unwrap() {
            let done = wait_for(&server, task["id"].as_str().unwrap(), is_final).await;
            assert_eq!(done["status"], "succeeded", "{done}");
            started.push(instant(&done["started_at"]));
        }
        assert!(
            asked.elapsed() < Duration::from_secs(60),
            "the held-back tasks waited for the poll"
        );
        started.sort();
        // One per window: three starts span more than one window.
        assert!(
            started[2] - started[0] >= chrono::Duration::milliseconds(500),
            "{started:?}"
        );
    }
}

/// Two nodes on one PostgreSQL schema run the same per-second schedule for several seconds:
/// every fire time is claimed by exactly one of them (one `schedule.fired` with a new task per
/// fire time, seen on either node through Redis), and no second is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_a_per_second_schedule_without_firing_twice() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let Some(redis) = redis_url().await else {
        return;
    };
    let mut env = schema.env();
    env.push((
        "MCP_REDIS_PREFIX",
        format!("mcp-sched-{}", uuid::Uuid::new_v4().simple()),
    ));
    env.push(("MCP_REDIS_URL", redis));
    let a = Server::start(&env);
    let b = Server::start(&env);
    let mut watcher = connect(&a, Some(&token("operator", "watcher"))).await;
    let reply = request(
        &mut watcher,
        json!({"id": 1, "op": "subscribe", "channel": "system.schedules"}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let (status, created) = post(
        &b,
        "/v1/schedules",
        json!({"name": "heartbeat", "cron": "* * * * * *", "task": {"type": "noop"}}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let mut fired: BTreeMap<String, usize> = BTreeMap::new();
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let frame = next(&mut watcher).await;
        if frame["op"] == "event" && frame["event"]["type"] == "schedule.fired" {
            let data = &frame["event"]["data"];
            *fired
                .entry(data["fire_time"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    let (status, _) = call(&client(), "DELETE", b.url("/v1/schedules/heartbeat"), None).await;
    assert_eq!(status, 204);
    assert!(fired.len() >= 4, "{fired:?}");
    assert!(
        fired.values().all(|n| *n == 1),
        "a fire time fired twice: {fired:?}"
    );
    let tasks = tasks_of(&a, "heartbeat").await;
    let keys: BTreeSet<&str> = tasks
        .iter()
        .map(|t| t["idempotency_key"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), tasks.len());
    let times: Vec<DateTime<Utc>> = fired.keys().map(|t| instant(&json!(t))).collect();
    assert!(times.iter().all(|t| t.nanosecond() == 0), "{times:?}");
    for pair in times.windows(2) {
        assert_eq!(
            (pair[1] - pair[0]).num_milliseconds(),
            1000,
            "a second was skipped: {times:?}"
        );
    }
    drop((a, b));
    schema.drop_schema().await;
}

/// Two nodes on one PostgreSQL schema share a per-second schedule; one of them dies (a
/// failpoint) between storing a firing's task and advancing the schedule. The other finishes
/// that firing and goes on: every fire time has exactly one task, and none is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dying_mid_firing_leaves_the_other_to_finish_it_without_a_second_task() {
    use std::os::unix::process::ExitStatusExt;
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let env = schema.env();
    // A long grace: a survivor slowed down by a loaded machine still fires every second.
    let mut survivor_env = env.clone();
    survivor_env.push(("MCP_SCHEDULE_GRACE_MS", "60000".to_owned()));
    let survivor = Server::start(&survivor_env);
    let mut doomed_env = env.clone();
    doomed_env.push((AFTER_TASK.0, AFTER_TASK.1.to_owned()));
    let mut doomed = Server::start(&doomed_env);
    let (status, created) = post(
        &survivor,
        "/v1/schedules",
        json!({"name": "shared", "cron": "* * * * * *", "task": {"type": "noop"}}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let exit = doomed.wait_exit(Duration::from_secs(10));
    assert_eq!(exit.signal(), Some(libc::SIGABRT), "{exit:?}");
    let died_at = Utc::now();
    let tasks = eventually(
        Duration::from_secs(15),
        "firings after the death",
        async || {
            let tasks = tasks_of(&survivor, "shared").await;
            let after = tasks
                .iter()
                .filter(|t| fire_time("shared", t) > died_at)
                .count();
            (after >= 2).then_some(tasks)
        },
    )
    .await;
    let (status, _) = call(
        &client(),
        "DELETE",
        survivor.url("/v1/schedules/shared"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let times = one_task_per_fire_time("shared", &tasks);
    assert_eq!(times[0], instant(&created["next_fire_at"]), "{times:?}");
    for pair in times.windows(2) {
        assert_eq!(
            (pair[1] - pair[0]).num_milliseconds(),
            1000,
            "a second was lost: {times:?}"
        );
    }
    drop((survivor, doomed));
    schema.drop_schema().await;
}

/// A limit of 4 `echo` per second holds across two nodes: 20 tasks take at least four more
/// windows after the first (which opened when the limit was set), and no attempt is spent
/// waiting. The node that did not set the limit applies it within `queue_poll_ms` (no Redis
/// here, so it polls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_limit_holds_across_two_nodes() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let mut env = schema.env();
    env.push(("MCP_QUEUE_POLL_MS", QUEUE_POLL_MS.to_string()));
    let a = Server::start(&env);
    let b = Server::start(&env);
    // The first window opens when the limit is stored, during the call.
    let set_at = Utc::now();
    let (status, limit) = call(
        &client(),
        "PUT",
        a.url("/v1/task-limits/echo"),
        Some(json!({"max": 4, "per_ms": 1000})),
    )
    .await;
    assert_eq!(status, 200, "{limit}");
    assert_eq!(limit, json!({"type": "echo", "max": 4, "per_ms": 1000}));
    let (_, queues) = get(&b, "/v1/queues").await;
    assert_eq!(queues["limits"][0]["type"], "echo", "{queues}");
    // The bound within which every node's claims apply a change made on another.
    tokio::time::sleep(Duration::from_millis(QUEUE_POLL_MS * 3)).await;
    let tasks: Vec<Value> = (0..20)
        .map(|i| json!({"type": "echo", "payload": {"i": i}}))
        .collect();
    let (status, created) = post(&a, "/v1/tasks/batch", json!({"tasks": tasks})).await;
    assert_eq!(status, 201, "{created}");
    let ids: Vec<String> = created["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    let mut started = Vec::new();
    for id in &ids {
        let task = wait_for(&b, id, is_final).await;
        assert_eq!(task["status"], "succeeded");
        assert_eq!(task["attempts"], 1, "{task}");
        started.push(instant(&task["started_at"]));
    }
    started.sort();
    // Five windows of four: the last starts at least four windows after the first opened.
    let span = started[started.len() - 1] - set_at;
    assert!(span >= chrono::Duration::milliseconds(3900), "span {span}");
    // The first window holds the limit, no more.
    let first_window = started
        .iter()
        .filter(|t| **t - set_at < chrono::Duration::milliseconds(1000))
        .count();
    assert!(
        first_window <= 4,
        "{first_window} started in the first second"
    );
    let (status, _) = call(&client(), "DELETE", a.url("/v1/task-limits/echo"), None).await;
    assert_eq!(status, 204);
    let (status, gone) = get(&a, "/v1/task-limits/echo").await;
    assert_eq!(status, 404, "{gone}");
    drop((a, b));
    schema.drop_schema().await;
}

/// `[[schedules]]` and `[[task_limits]]` of the file are applied at start; a schedule the file no
/// longer declares is deleted at the next start, while one created through the API stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_files_schedules_and_limits_are_reconciled_at_start() {
    let dir = temp_dir();
    let file = dir.join("mkww-mcp.toml");
    std::fs::write(
        &file,
        r#"
[[schedules]]
name = "from-file"
cron = "@daily"
timezone = "Asia/Tokyo"
task = { type = "noop", payload = { source = "file" } }

[[task_limits]]
type = "echo"
max = 3
per_ms = 500
"#,
    )
    .unwrap();
    let mut server = Server::start_in(dir.clone(), &[]);
    let (_, file_schedule) = get(&server, "/v1/schedules/from-file").await;
    assert_eq!(file_schedule["source"], "config", "{file_schedule}");
    assert_eq!(file_schedule["timezone"], "Asia/Tokyo");
    let (_, limits) = get(&server, "/v1/task-limits").await;
    assert_eq!(
        limits["limits"],
        json!([{"type": "echo", "max": 3, "per_ms": 500}])
    );
    let (status, _) = post(
        &server,
        "/v1/schedules",
        json!({"name": "from-api", "cron": "@hourly", "task": {"type": "noop"}}),
    )
    .await;
    assert_eq!(status, 201);
    assert!(server.terminate().success());

    std::fs::write(&file, "").unwrap();
    let server = Server::start_in(dir.clone(), &[]);
    let (status, _) = get(&server, "/v1/schedules/from-file").await;
    assert_eq!(status, 404, "no longer declared: deleted");
    let (status, _) = get(&server, "/v1/schedules/from-api").await;
    assert_eq!(status, 200, "created through the API: kept");
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}
