//! The revocation deny-list stays bounded, replayed against the real binary: a flood of logouts
//! (one `session` row each, forever, before the fix) left in the database is read whole by every
//! node that starts and kept in its memory. Now a node deletes the `subject` and `session` rows
//! that can refuse nothing any more (cut off and recorded longer ago than the access token
//! lifetime and a 5 min margin) once at start and every minute, and drops them from its cache;
//! a revoked API key stays, and a recent logout still refuses its access token.
//!
//! Every wait polls against a generous deadline (30 s); nothing is timed.

mod support;

use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use std::time::{Duration, Instant};
use support::*;

/// Old logouts planted in the database while the server is stopped.
const FLOOD: i64 = 5_000;

/// How long the pruning may take to show, on a loaded machine.
const BOUND: Duration = Duration::from_secs(30);

async fn sqlite(server_dir: &std::path::Path) -> sqlx::SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(server_dir.join("mkww-mcp.db"))
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("open the server's SQLite database")
}

async fn count(db: &sqlx::SqlitePool, kind: &'static str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM revocations WHERE kind = ?1")
        .bind(kind)
        .fetch_one(db)
        .await
        .expect("count revocations")
}

/// Logs `username` in and out: the access token of the session just ended.
async fn logged_out_token(server: &Server, username: &str) -> String {
    let password = format!("{username}-password-123");
    let (status, body) = post(
        server,
        "/v1/users",
        json!({"username": username, "role": "user", "password": password}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, tokens) = call(
        &reqwest::Client::new(),
        "POST",
        server.url("/v1/auth/login"),
        Some(json!({"username": username, "password": password})),
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &reqwest::Client::new(),
        "POST",
        server.url("/v1/auth/logout"),
        Some(json!({"refresh_token": tokens["refresh_token"]})),
    )
    .await;
    assert_eq!(status, 204);
    access
}

async fn assert_revoked(server: &Server, access: &str) {
    let (status, body) = call(&client_with(access), "GET", server.url("/v1/auth/me"), None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "token_revoked", "{body}");
}

#[tokio::test]
async fn expired_revocations_are_pruned_and_live_ones_kept() {
    let data_dir = temp_dir();
    let mut server = Server::start_in(data_dir.clone(), &[]);
    let access = logged_out_token(&server, "alice").await;
    assert_revoked(&server, &access).await;
    assert!(server.terminate().success());

    // A day-old flood: logouts, a subject cut-off and a revoked API key.
    let day_ago = (chrono::Utc::now() - chrono::Duration::days(1)).timestamp_micros();
    let db = sqlite(&data_dir).await;
    sqlx::query(
        "INSERT INTO revocations (kind, target, not_before, recorded_at)
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         SELECT 'session', printf('00000000-0000-4000-8000-%012d', i), ?2, ?2 FROM n",
    )
    .bind(FLOOD)
    .bind(day_ago)
    .execute(&db)
    .await
    .expect("plant old logouts");
    sqlx::query(
        "INSERT INTO revocations (kind, target, not_before, recorded_at)
         VALUES ('subject', 'ghost', ?1, ?1),
                ('api_key', '00000000-0000-4000-8000-00000000beef', ?1, ?1)",
    )
    .bind(day_ago)
    .execute(&db)
    .await
    .expect("plant an old cut-off and a revoked key");
    assert_eq!(count(&db, "session").await, FLOOD + 1);

    let server = Server::start_in(data_dir.clone(), &[]);
    let started = Instant::now();
    loop {
        let (sessions, subjects) = (count(&db, "session").await, count(&db, "subject").await);
        if sessions == 1 && subjects == 0 {
            break;
        }
        assert!(
            started.elapsed() < BOUND,
            "still {sessions} session and {subjects} subject rows after {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = server
        .wait_for_log(|l| l["message"] == "pruned expired revocations")
        .expect("the pruning is logged");
    assert_eq!(line["deleted"], FLOOD + 1, "{line}");
    assert_eq!(count(&db, "api_key").await, 1, "a revoked API key stays");
    // The logout of a few moments ago is kept, and still refuses its token.
    assert_revoked(&server, &access).await;
    db.close().await;
}
