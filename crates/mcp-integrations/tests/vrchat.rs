//! The VRChat web API client against a local fake of VRChat's API (`fake_vrchat`): Basic
//! login, the `auth` cookie, the two-factor step (authenticator and emailed codes), real-shaped
//! JSON, 401s for an expired session, 429s with `Retry-After`, and 5xx answers that open the
//! breaker.

mod common;
mod fake_vrchat;

use fake_vrchat::{PASSWORD, Shared, TOTP_SECRET, TwoFactor, USER_ID, USERNAME, WORLD_ID, start};
use mcp_core::HandlerRegistry;
use mcp_core::routing::BreakerConfig;
use mcp_integrations::Adapter;
use mcp_integrations::vrchat::{
    self, SessionState, VrchatAdapter, VrchatClient, VrchatConfig, VrchatError,
};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

fn config(base: &str, totp_secret: Option<&str>) -> VrchatConfig {
    VrchatConfig {
        api_base: base.to_owned(),
        totp_secret: totp_secret.map(str::to_owned),
        backoff_base: Duration::from_millis(5),
        max_retries: 2,
        breaker: BreakerConfig {
            window: Duration::from_secs(60),
            min_calls: 3,
            failure_rate: 0.5,
            open_for: Duration::from_secs(3600),
            probes: 1,
        },
        ..VrchatConfig::new(USERNAME, PASSWORD)
    }
}

fn calls(fake: &Shared, path: &str) -> u32 {
    fake.lock().unwrap().calls.get(path).copied().unwrap_or(0)
}

#[tokio::test]
async fn logs_in_with_a_computed_totp_code_and_reads_users_worlds_instances_and_friends() {
    let (base, fake) = start(TwoFactor::Totp).await;
    let client = VrchatClient::new(config(&base, Some(TOTP_SECRET))).unwrap();
    assert_eq!(client.state(), SessionState::LoggedOut);

    let me = client.current_user().await.unwrap();
    assert_eq!(me["id"], USER_ID);
    assert_eq!(
        client.state(),
        SessionState::LoggedIn {
            user_id: USER_ID.into(),
            display_name: "Alice".into()
        }
    );
    assert_eq!(client.user("usr_2").await.unwrap()["displayName"], "Bob");
    assert_eq!(
        client.world(WORLD_ID).await.unwrap()["name"],
        "The Great Pug"
    );
    let instance = client.instance(WORLD_ID, "12345~region(eu)").await.unwrap();
    assert_eq!(instance["location"], format!("{WORLD_ID}:12345~region(eu)"));
    assert_eq!(instance["n_users"], 5);
    let online = client.friends_online(2, 1).await.unwrap();
    assert_eq!(online.as_array().unwrap().len(), 2);
    assert_eq!(online[0]["id"], "usr_1");

    // One login served every call, and every request named the hub.
    let fake = fake.lock().unwrap();
    assert_eq!(fake.logins, 1);
    assert_eq!(fake.calls["auth/twofactorauth/totp/verify"], 1);
    assert!(
        fake.user_agents
            .iter()
            .all(|a| a.starts_with("MKWW-MCP/") && a.contains("github.com")),
        "{:?}",
        fake.user_agents
    );
}

#[tokio::test]
async fn unknown_ids_are_not_found_and_bad_ids_never_reach_vrchat() {
    let (base, fake) = start(TwoFactor::None).await;
    let client = VrchatClient::new(config(&base, None)).unwrap();
    let missing = client.user("usr_nobody").await.unwrap_err();
    assert_eq!(missing.code(), "vrchat_not_found");
    assert!(!missing.retryable());
    let bad = client.world("../auth/user").await.unwrap_err();
    assert_eq!(bad.code(), "invalid_payload");
    assert_eq!(calls(&fake, "worlds/../auth/user"), 0);
    assert_eq!(
        client.friends_online(0, 0).await.unwrap_err().code(),
        "invalid_payload"
    );
}

#[tokio::test]
async fn an_emailed_code_is_awaited_without_new_logins_then_submitted() {
    let (base, fake) = start(TwoFactor::Email).await;
    let client = VrchatClient::new(config(&base, Some(TOTP_SECRET))).unwrap();

    let waiting = client.current_user().await.unwrap_err();
    assert_eq!(waiting.code(), "vrchat_needs_code");
    assert!(waiting.retryable());
    assert_eq!(
        client.state(),
        SessionState::NeedsCode {
            methods: vec!["emailOtp".into()]
        }
    );
    // Waiting calls do not log in again (each login would send another email).
    assert_eq!(
        client.world(WORLD_ID).await.unwrap_err().code(),
        "vrchat_needs_code"
    );
    assert_eq!(fake.lock().unwrap().logins, 1);

    let wrong = client.submit_code("000000x").await.unwrap_err();
    assert_eq!(wrong.code(), "vrchat_login_failed");
    assert!(matches!(client.state(), SessionState::NeedsCode { .. }));
    assert_eq!(
        client.submit_code("12 34").await.unwrap_err().code(),
        "invalid_payload"
    );

    let code = fake.lock().unwrap().emailed_code.clone();
    let state = client.submit_code(&code).await.unwrap();
    assert!(matches!(state, SessionState::LoggedIn { .. }), "{state:?}");
    assert_eq!(client.world(WORLD_ID).await.unwrap()["id"], WORLD_ID);
    assert_eq!(
        fake.lock().unwrap().calls["auth/twofactorauth/emailotp/verify"],
        2
    );
}

#[tokio::test]
async fn wrong_credentials_fail_once_and_are_not_retried_until_asked() {
    let (base, fake) = start(TwoFactor::None).await;
    let client = VrchatClient::new(VrchatConfig {
        password: "wrong".into(),
        ..config(&base, None)
    })
    .unwrap();
    let refused = client.current_user().await.unwrap_err();
    assert_eq!(refused.code(), "vrchat_login_failed");
    assert!(
        refused.to_string().contains("Invalid Username"),
        "{refused}"
    );
    assert!(matches!(client.state(), SessionState::Failed { .. }));
    assert_eq!(
        client.user("usr_2").await.unwrap_err().code(),
        "vrchat_login_failed"
    );
    assert_eq!(calls(&fake, "auth/user"), 1);
    // Asked explicitly, it tries again.
    assert!(client.login_now().await.is_err());
    assert_eq!(calls(&fake, "auth/user"), 2);
}

#[tokio::test]
async fn an_expired_session_logs_in_again_once() {
    let (base, fake) = start(TwoFactor::Totp).await;
    let client = VrchatClient::new(config(&base, Some(TOTP_SECRET))).unwrap();
    client.current_user().await.unwrap();
    // VRChat forgets the session.
    fake.lock().unwrap().sessions.clear();
    assert_eq!(client.world(WORLD_ID).await.unwrap()["id"], WORLD_ID);
    assert_eq!(fake.lock().unwrap().logins, 2);
}

#[tokio::test]
async fn waits_out_429_and_5xx_then_opens_the_breaker() {
    let (base, fake) = start(TwoFactor::None).await;
    let client = VrchatClient::new(config(&base, None)).unwrap();
    let path = format!("worlds/{WORLD_ID}");
    fake.lock()
        .unwrap()
        .scripted
        .insert(path.clone(), vec![(429, Some(0)), (502, None)]);
    assert_eq!(client.world(WORLD_ID).await.unwrap()["id"], WORLD_ID);
    assert_eq!(calls(&fake, &path), 3);

    // Always 503: each call gives up after its retries; with the success before them, two such
    // calls make 2 failures in 3 (over the 50 % threshold), so the breaker opens and the next
    // call never reaches VRChat.
    fake.lock()
        .unwrap()
        .scripted
        .insert(path.clone(), vec![(503, None); 9]);
    for _ in 0..2 {
        let e = client.world(WORLD_ID).await.unwrap_err();
        assert_eq!(e.code(), "vrchat_unavailable");
        assert!(e.retryable());
    }
    assert_eq!(calls(&fake, &path), 3 + 6);
    let refused = client.world(WORLD_ID).await.unwrap_err();
    assert!(refused.to_string().contains("breaker"), "{refused}");
    assert_eq!(calls(&fake, &path), 9);

    // A 429 that persists is reported as a rate limit with its wait.
    let (base, fake) = start(TwoFactor::None).await;
    let client = VrchatClient::new(config(&base, None)).unwrap();
    fake.lock()
        .unwrap()
        .scripted
        .insert("users/usr_2".into(), vec![(429, Some(0)); 3]);
    let limited = client.user("usr_2").await.unwrap_err();
    assert!(
        matches!(limited, VrchatError::RateLimited { .. }),
        "{limited:?}"
    );
}

#[tokio::test]
async fn task_types_return_vrchat_json_and_classify_failures() {
    let (base, _fake) = start(TwoFactor::Totp).await;
    let adapter = VrchatAdapter::new(config(&base, Some(TOTP_SECRET))).unwrap();
    let mut registry = HandlerRegistry::default();
    adapter.register(&mut registry);
    assert_eq!(registry.types(), adapter.task_types());

    let run = |task_type: &str, payload: Value| {
        let handler = registry.get(task_type).unwrap().clone();
        let ctx = common::context(task_type, payload);
        async move { handler.run(ctx).await }
    };
    assert_eq!(
        run(vrchat::USER_CURRENT, json!({})).await.unwrap()["id"],
        USER_ID
    );
    let instance = run(
        vrchat::INSTANCE_GET,
        json!({"location": format!("{WORLD_ID}:777~friends(usr_3)")}),
    )
    .await
    .unwrap();
    assert_eq!(instance["instanceId"], "777~friends(usr_3)");
    assert_eq!(
        run(vrchat::FRIENDS_ONLINE, json!({}))
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let missing = run(vrchat::WORLD_GET, json!({"world_id": "wrld_gone"}))
        .await
        .unwrap_err();
    assert!(!missing.retryable);
    assert_eq!(missing.details, Some(json!({"code": "vrchat_not_found"})));
    assert!(adapter.health().await.is_healthy());
}

/// Keeps a session in memory, as the binary keeps it sealed on disk.
#[derive(Default)]
struct MemoryKeeper(std::sync::Mutex<Option<vrchat::SavedSession>>);

impl vrchat::SessionKeeper for MemoryKeeper {
    fn load(&self) -> Option<vrchat::SavedSession> {
        self.0.lock().unwrap().clone()
    }

    fn save(&self, session: Option<&vrchat::SavedSession>) {
        *self.0.lock().unwrap() = session.cloned();
    }
}

#[tokio::test]
async fn a_restarted_client_resumes_the_kept_session_without_logging_in() {
    let (base, fake) = start(TwoFactor::Email).await;
    let keeper = Arc::new(MemoryKeeper::default());
    let with_keeper = || VrchatConfig {
        keeper: Some(keeper.clone()),
        ..config(&base, None)
    };
    let first = VrchatClient::new(with_keeper()).unwrap();
    assert_eq!(
        first.current_user().await.unwrap_err().code(),
        "vrchat_needs_code"
    );
    assert!(
        keeper.load_now().is_none(),
        "nothing is kept before the login completes"
    );
    let code = fake.lock().unwrap().emailed_code.clone();
    first.submit_code(&code).await.unwrap();
    let kept = keeper.load_now().expect("the session is kept");
    assert!(kept.auth.starts_with("authcookie_") && kept.two_factor.is_some());

    // A new client (a restarted hub) reads VRChat at once: no login, no emailed code.
    let second = VrchatClient::new(with_keeper()).unwrap();
    assert_eq!(second.world(WORLD_ID).await.unwrap()["id"], WORLD_ID);
    assert!(matches!(second.state(), SessionState::LoggedIn { .. }));
    assert_eq!(fake.lock().unwrap().logins, 1);

    // A kept session VRChat has forgotten is dropped, and the client logs in again.
    fake.lock().unwrap().sessions.clear();
    let third = VrchatClient::new(with_keeper()).unwrap();
    assert_eq!(
        third.world(WORLD_ID).await.unwrap_err().code(),
        "vrchat_needs_code"
    );
    assert_eq!(fake.lock().unwrap().logins, 2);
    assert!(keeper.load_now().is_none());
}

impl MemoryKeeper {
    fn load_now(&self) -> Option<vrchat::SavedSession> {
        self.0.lock().unwrap().clone()
    }
}
