//! One conformance suite for both identity stores: every case runs against SQLite (a fresh file)
//! and PostgreSQL (a fresh schema in `MCP_TEST_DATABASE_URL`, dropped afterwards). With
//! `CI` set (to any value) an unreachable PostgreSQL fails the suite instead of skipping it.

#[macro_use]
mod common;

use chrono::{DateTime, Duration as Span, NaiveDate, Utc};
use common::Backend;
use mcp_core::StoreError;
use mcp_core::identity::{
    ApiKey, AuditEvent, AuditFilter, IdentityStore, QuotaUse, RefreshToken, RevocationTarget,
    Rotation, User,
};
use mcp_core::principal::Role;
use mcp_persistence::{PgTaskStore, SqliteOptions, SqliteTaskStore};
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

impl Backend {
    fn store(&self) -> Arc<dyn IdentityStore> {
        self.port()
    }

    async fn reopen(&self) -> Reopened {
        match self {
            Backend::Sqlite(store, dir) => {
                store.close().await;
                let store = SqliteTaskStore::open(&dir.join("tasks.db"), &SqliteOptions::default())
                    .await
                    .expect("reopen sqlite");
                store.migrate().await.expect("migrate reopened sqlite");
                Reopened::Sqlite(store)
            }
            Backend::Postgres(store) => {
                let again = PgTaskStore::connect(&common::pg_url(), store.schema(), 2)
                    .await
                    .expect("reconnect postgres");
                again.migrate().await.expect("migrate reconnected postgres");
                Reopened::Postgres(again)
            }
        }
    }
}

enum Reopened {
    Sqlite(SqliteTaskStore),
    Postgres(PgTaskStore),
}

impl Reopened {
    fn store(&self) -> Arc<dyn IdentityStore> {
        match self {
            Reopened::Sqlite(store) => Arc::new(store.clone()),
            Reopened::Postgres(store) => Arc::new(store.clone()),
        }
    }

    async fn close(self) {
        match self {
            Reopened::Sqlite(store) => store.close().await,
            Reopened::Postgres(store) => store.close().await,
        }
    }
}

conformance!(
    round_trips_users,
    rejects_duplicate_usernames,
    lists_users_by_username,
    updates_only_the_given_user_fields,
    updating_an_unknown_user_returns_none,
    round_trips_api_keys,
    round_trips_the_worker_types_of_api_keys,
    rejects_duplicate_api_key_prefixes,
    lists_api_keys_newest_first,
    revokes_an_api_key_once,
    touch_records_the_last_use_of_an_api_key,
    rotates_a_fresh_refresh_token,
    reports_a_reused_refresh_token_and_stores_nothing,
    reports_revoked_and_expired_refresh_tokens_as_dead,
    reports_an_unknown_refresh_token,
    concurrent_rotations_of_one_token_rotate_once,
    revokes_refresh_families_counting_only_live_tokens,
    revokes_every_refresh_token_of_a_user,
    lists_audit_newest_first_with_filters_and_cursor,
    grants_quota_until_the_limit,
    never_counts_an_amount_above_the_limit,
    keeps_quotas_per_subject_and_day,
    concurrent_quota_use_never_exceeds_the_limit,
    quota_counts_survive_a_restart,
    records_revocations_and_reads_them_since_an_instant,
    a_revocation_cutoff_never_moves_earlier,
    revocations_reach_a_second_node_through_the_store,
    prunes_only_expired_subject_and_session_revocations,
    a_node_forgets_pruned_revocations,
);

mod cases {
    use super::*;

    /// Now, at the microsecond precision both stores keep, so round trips compare equal.
    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap()
    }

    fn user(username: &str, role: Role) -> User {
        let at = now() - Span::hours(1);
        User {
            id: Uuid::now_v7(),
            username: username.into(),
            role,
            password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1${username}"),
            disabled: false,
            created_at: at,
            updated_at: at,
        }
    }

    fn api_key(prefix: &str, created_at: DateTime<Utc>) -> ApiKey {
        ApiKey {
            id: Uuid::now_v7(),
            name: format!("key {prefix}"),
            prefix: prefix.into(),
            role: Role::Service,
            secret_hash: format!("{prefix:0>64}"),
            created_by: "user:admin".into(),
            created_at,
            last_used_at: None,
            revoked_at: None,
            worker_types: None,
        }
    }

    fn token(user: &User, family_id: Uuid, hash: &str) -> RefreshToken {
        let at = now();
        RefreshToken {
            id: Uuid::now_v7(),
            family_id,
            user_id: user.id,
            token_hash: hash.into(),
            created_at: at,
            expires_at: at + Span::days(30),
            used_at: None,
            revoked_at: None,
        }
    }

    fn event(action: &str, principal: Option<&str>) -> AuditEvent {
        AuditEvent {
            id: Uuid::now_v7(),
            at: now(),
            action: action.into(),
            principal: principal.map(Into::into),
            ip: Some("192.0.2.7".into()),
            request_id: Some(format!("req-{}", Uuid::new_v4())),
            details: json!({"reason": "test", "n": [1, 2.5, null], "nested": {"ok": true}}),
        }
    }

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 3, d).unwrap()
    }

    /// A stored user, for the cases that need an owner of refresh tokens.
    async fn owner(store: &Arc<dyn IdentityStore>, username: &str) -> User {
        let user = user(username, Role::User);
        store.create_user(&user).await.unwrap();
        user
    }

    pub async fn round_trips_users(backend: &Backend) {
        let store = backend.store();
        let mut alice = user("alice", Role::Operator);
        alice.disabled = true;
        store.create_user(&alice).await.unwrap();
        assert_eq!(
            store.user_by_id(alice.id).await.unwrap(),
            Some(alice.clone())
        );
        assert_eq!(
            store.user_by_username("alice").await.unwrap(),
            Some(alice.clone())
        );
        assert_eq!(store.user_by_id(Uuid::now_v7()).await.unwrap(), None);
        assert_eq!(store.user_by_username("nobody").await.unwrap(), None);
        assert_eq!(store.count_users().await.unwrap(), 1);
    }

    pub async fn rejects_duplicate_usernames(backend: &Backend) {
        let store = backend.store();
        let first = user("bob", Role::User);
        store.create_user(&first).await.unwrap();
        let err = store
            .create_user(&user("bob", Role::Admin))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict(what) if what.contains("bob")),
            "{err:?}"
        );
        assert_eq!(store.count_users().await.unwrap(), 1);
        assert_eq!(store.user_by_username("bob").await.unwrap(), Some(first));
    }

    pub async fn lists_users_by_username(backend: &Backend) {
        let store = backend.store();
        assert!(store.list_users().await.unwrap().is_empty());
        assert_eq!(store.count_users().await.unwrap(), 0);
        // Byte order on both backends: upper case before lower case.
        for name in ["carol", "Zed", "alice", "bob"] {
            store.create_user(&user(name, Role::User)).await.unwrap();
        }
        let names: Vec<String> = store
            .list_users()
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.username)
            .collect();
        assert_eq!(names, ["Zed", "alice", "bob", "carol"]);
        assert_eq!(store.count_users().await.unwrap(), 4);
    }

    pub async fn updates_only_the_given_user_fields(backend: &Backend) {
        let store = backend.store();
        let dave = user("dave", Role::User);
        store.create_user(&dave).await.unwrap();

        let before = now();
        let updated = store
            .update_user(dave.id, Some(Role::Admin), None, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(updated.role, Role::Admin);
        assert_eq!(updated.disabled, dave.disabled);
        assert_eq!(updated.password_hash, dave.password_hash);
        assert_eq!(updated.created_at, dave.created_at);
        // Bumped to now (within clock and rounding slack).
        assert!(updated.updated_at > dave.updated_at);
        assert!(updated.updated_at >= before - Span::seconds(1));
        assert!(updated.updated_at <= now() + Span::seconds(1));

        let updated = store
            .update_user(dave.id, None, Some(true), Some("$argon2id$new"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(updated.role, Role::Admin);
        assert!(updated.disabled);
        assert_eq!(updated.password_hash, "$argon2id$new");
        assert_eq!(store.user_by_id(dave.id).await.unwrap(), Some(updated));
    }

    pub async fn updating_an_unknown_user_returns_none(backend: &Backend) {
        let store = backend.store();
        let updated = store
            .update_user(Uuid::now_v7(), Some(Role::Admin), Some(true), Some("x"))
            .await
            .unwrap();
        assert_eq!(updated, None);
        assert_eq!(store.count_users().await.unwrap(), 0);
    }

    pub async fn round_trips_api_keys(backend: &Backend) {
        let store = backend.store();
        let mut key = api_key("k1", now());
        key.role = Role::Operator;
        key.last_used_at = Some(now());
        store.create_api_key(&key).await.unwrap();
        assert_eq!(store.api_key_by_prefix("k1").await.unwrap(), Some(key));
        assert_eq!(store.api_key_by_prefix("nope").await.unwrap(), None);
    }

    pub async fn round_trips_the_worker_types_of_api_keys(backend: &Backend) {
        let store = backend.store();
        let t = now();
        let limited = ApiKey {
            worker_types: Some(vec!["render.*".into(), "unity.bake".into()]),
            ..api_key("lim", t - Span::hours(2))
        };
        let none = ApiKey {
            worker_types: Some(Vec::new()),
            ..api_key("none", t - Span::hours(1))
        };
        let unlimited = api_key("all", t);
        for key in [&limited, &none, &unlimited] {
            store.create_api_key(key).await.unwrap();
        }
        // `None` (no limit) and `[]` (nothing) stay apart.
        assert_eq!(
            store.api_key_by_prefix("lim").await.unwrap(),
            Some(limited.clone())
        );
        assert_eq!(
            store.api_key_by_prefix("none").await.unwrap(),
            Some(none.clone())
        );
        assert_eq!(
            store.api_key_by_prefix("all").await.unwrap(),
            Some(unlimited.clone())
        );
        assert_eq!(
            store.list_api_keys().await.unwrap(),
            vec![unlimited, none, limited.clone()]
        );
        let revoked = store.revoke_api_key(limited.id, t).await.unwrap().unwrap();
        assert_eq!(revoked.worker_types, limited.worker_types);
    }

    pub async fn rejects_duplicate_api_key_prefixes(backend: &Backend) {
        let store = backend.store();
        let first = api_key("dup", now());
        store.create_api_key(&first).await.unwrap();
        let err = store
            .create_api_key(&api_key("dup", now()))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict(what) if what.contains("dup")),
            "{err:?}"
        );
        assert_eq!(store.list_api_keys().await.unwrap(), vec![first]);
    }

    pub async fn lists_api_keys_newest_first(backend: &Backend) {
        let store = backend.store();
        let t = now();
        let old = api_key("old", t - Span::hours(2));
        let new = api_key("new", t);
        let middle = api_key("mid", t - Span::hours(1));
        for key in [&old, &new, &middle] {
            store.create_api_key(key).await.unwrap();
        }
        store.revoke_api_key(middle.id, t).await.unwrap();
        let prefixes: Vec<String> = store
            .list_api_keys()
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.prefix)
            .collect();
        assert_eq!(prefixes, ["new", "mid", "old"]);
    }

    pub async fn revokes_an_api_key_once(backend: &Backend) {
        let store = backend.store();
        let key = api_key("rev", now());
        store.create_api_key(&key).await.unwrap();
        let first = now();
        let revoked = store.revoke_api_key(key.id, first).await.unwrap().unwrap();
        assert_eq!(revoked.revoked_at, Some(first));
        assert_eq!(revoked.id, key.id);
        // Again: still answered, the first time kept.
        let again = store
            .revoke_api_key(key.id, first + Span::hours(1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.revoked_at, Some(first));
        assert_eq!(
            store
                .api_key_by_prefix("rev")
                .await
                .unwrap()
                .unwrap()
                .revoked_at,
            Some(first)
        );
        assert_eq!(
            store.revoke_api_key(Uuid::now_v7(), first).await.unwrap(),
            None
        );
    }

    pub async fn touch_records_the_last_use_of_an_api_key(backend: &Backend) {
        let store = backend.store();
        let key = api_key("used", now());
        store.create_api_key(&key).await.unwrap();
        let at = now();
        store.touch_api_key(key.id, at).await.unwrap();
        let stored = store.api_key_by_prefix("used").await.unwrap().unwrap();
        assert_eq!(stored.last_used_at, Some(at));
        assert_eq!(stored.revoked_at, None);
        // Best effort and harmless for an unknown key.
        store.touch_api_key(Uuid::now_v7(), at).await.unwrap();
    }

    pub async fn rotates_a_fresh_refresh_token(backend: &Backend) {
        let store = backend.store();
        let erin = owner(&store, "erin").await;
        let family = Uuid::now_v7();
        let first = token(&erin, family, "hash-1");
        store.insert_refresh_token(&first).await.unwrap();
        assert_eq!(
            store.refresh_token_by_hash("hash-1").await.unwrap(),
            Some(first.clone())
        );

        let next = token(&erin, family, "hash-2");
        let at = now();
        let rotation = store
            .rotate_refresh_token("hash-1", &next, at)
            .await
            .unwrap();
        let expected_used = RefreshToken {
            used_at: Some(at),
            ..first
        };
        assert_eq!(
            rotation,
            Rotation::Rotated {
                used: expected_used.clone()
            }
        );
        assert_eq!(
            store.refresh_token_by_hash("hash-1").await.unwrap(),
            Some(expected_used)
        );
        assert_eq!(
            store.refresh_token_by_hash("hash-2").await.unwrap(),
            Some(next)
        );
    }

    pub async fn reports_a_reused_refresh_token_and_stores_nothing(backend: &Backend) {
        let store = backend.store();
        let fay = owner(&store, "fay").await;
        let family = Uuid::now_v7();
        store
            .insert_refresh_token(&token(&fay, family, "r-1"))
            .await
            .unwrap();
        let at = now();
        let rotation = store
            .rotate_refresh_token("r-1", &token(&fay, family, "r-2"), at)
            .await
            .unwrap();
        assert!(matches!(rotation, Rotation::Rotated { .. }));

        let rotation = store
            .rotate_refresh_token("r-1", &token(&fay, family, "r-3"), now())
            .await
            .unwrap();
        let Rotation::Reused { token: reused } = rotation else {
            panic!("expected Reused, got {rotation:?}")
        };
        assert_eq!(reused.token_hash, "r-1");
        assert_eq!(reused.used_at, Some(at));
        assert_eq!(store.refresh_token_by_hash("r-3").await.unwrap(), None);

        // A used token that has expired since still betrays a theft: Reused, not Dead.
        let rotation = store
            .rotate_refresh_token("r-1", &token(&fay, family, "r-4"), now() + Span::days(60))
            .await
            .unwrap();
        assert!(matches!(rotation, Rotation::Reused { .. }), "{rotation:?}");
        assert_eq!(store.refresh_token_by_hash("r-4").await.unwrap(), None);
    }

    pub async fn reports_revoked_and_expired_refresh_tokens_as_dead(backend: &Backend) {
        let store = backend.store();
        let gus = owner(&store, "gus").await;

        // Revoked (logout).
        let family = Uuid::now_v7();
        store
            .insert_refresh_token(&token(&gus, family, "d-revoked"))
            .await
            .unwrap();
        assert_eq!(store.revoke_refresh_family(family, now()).await.unwrap(), 1);
        let rotation = store
            .rotate_refresh_token("d-revoked", &token(&gus, family, "d-next-1"), now())
            .await
            .unwrap();
        assert!(
            matches!(&rotation, Rotation::Dead { token } if token.token_hash == "d-revoked"),
            "{rotation:?}"
        );

        // Expired, never used.
        let mut expired = token(&gus, Uuid::now_v7(), "d-expired");
        expired.expires_at = now() - Span::seconds(1);
        store.insert_refresh_token(&expired).await.unwrap();
        let rotation = store
            .rotate_refresh_token("d-expired", &token(&gus, family, "d-next-2"), now())
            .await
            .unwrap();
        assert_eq!(rotation, Rotation::Dead { token: expired });

        // Used and then revoked (an earlier reuse revoked the family): Dead, not Reused.
        let family = Uuid::now_v7();
        store
            .insert_refresh_token(&token(&gus, family, "d-used"))
            .await
            .unwrap();
        store
            .rotate_refresh_token("d-used", &token(&gus, family, "d-used-next"), now())
            .await
            .unwrap();
        store.revoke_refresh_family(family, now()).await.unwrap();
        let rotation = store
            .rotate_refresh_token("d-used", &token(&gus, family, "d-next-3"), now())
            .await
            .unwrap();
        assert!(matches!(rotation, Rotation::Dead { .. }), "{rotation:?}");

        for hash in ["d-next-1", "d-next-2", "d-next-3"] {
            assert_eq!(store.refresh_token_by_hash(hash).await.unwrap(), None);
        }
    }

    pub async fn reports_an_unknown_refresh_token(backend: &Backend) {
        let store = backend.store();
        let hal = owner(&store, "hal").await;
        let rotation = store
            .rotate_refresh_token("nope", &token(&hal, Uuid::now_v7(), "u-next"), now())
            .await
            .unwrap();
        assert_eq!(rotation, Rotation::Unknown);
        assert_eq!(store.refresh_token_by_hash("u-next").await.unwrap(), None);
        assert_eq!(store.refresh_token_by_hash("nope").await.unwrap(), None);
    }

    pub async fn concurrent_rotations_of_one_token_rotate_once(backend: &Backend) {
        let store = backend.store();
        let ivy = owner(&store, "ivy").await;
        for round in 0..10 {
            let family = Uuid::now_v7();
            let presented = format!("c-{round}");
            store
                .insert_refresh_token(&token(&ivy, family, &presented))
                .await
                .unwrap();
            let (a_next, b_next) = (
                token(&ivy, family, &format!("c-{round}-a")),
                token(&ivy, family, &format!("c-{round}-b")),
            );
            let (a, b) = tokio::join!(
                store.rotate_refresh_token(&presented, &a_next, now()),
                store.rotate_refresh_token(&presented, &b_next, now()),
            );
            let (a, b) = (a.unwrap(), b.unwrap());
            let rotated = [&a, &b]
                .iter()
                .filter(|r| matches!(r, Rotation::Rotated { .. }))
                .count();
            assert_eq!(rotated, 1, "{a:?} / {b:?}");
            assert!(
                matches!(a, Rotation::Reused { .. }) || matches!(b, Rotation::Reused { .. }),
                "{a:?} / {b:?}"
            );
            let stored_a = store
                .refresh_token_by_hash(&a_next.token_hash)
                .await
                .unwrap();
            let stored_b = store
                .refresh_token_by_hash(&b_next.token_hash)
                .await
                .unwrap();
            assert_eq!(
                stored_a.is_some(),
                matches!(a, Rotation::Rotated { .. }),
                "only the winner's next token is stored"
            );
            assert_eq!(stored_b.is_some(), matches!(b, Rotation::Rotated { .. }));
        }
    }

    pub async fn revokes_refresh_families_counting_only_live_tokens(backend: &Backend) {
        let store = backend.store();
        let jo = owner(&store, "jo").await;
        let family = Uuid::now_v7();
        let other = Uuid::now_v7();
        for hash in ["f-1", "f-2", "f-3"] {
            store
                .insert_refresh_token(&token(&jo, family, hash))
                .await
                .unwrap();
        }
        store
            .insert_refresh_token(&token(&jo, other, "o-1"))
            .await
            .unwrap();
        let earlier = now() - Span::minutes(5);
        let mut already = token(&jo, family, "f-revoked");
        already.revoked_at = Some(earlier);
        store.insert_refresh_token(&already).await.unwrap();

        let at = now();
        assert_eq!(store.revoke_refresh_family(family, at).await.unwrap(), 3);
        assert_eq!(store.revoke_refresh_family(family, now()).await.unwrap(), 0);
        for hash in ["f-1", "f-2", "f-3"] {
            let stored = store.refresh_token_by_hash(hash).await.unwrap().unwrap();
            assert_eq!(stored.revoked_at, Some(at));
        }
        let kept = store
            .refresh_token_by_hash("f-revoked")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kept.revoked_at, Some(earlier));
        let untouched = store.refresh_token_by_hash("o-1").await.unwrap().unwrap();
        assert_eq!(untouched.revoked_at, None);
        assert_eq!(
            store
                .revoke_refresh_family(Uuid::now_v7(), at)
                .await
                .unwrap(),
            0
        );
    }

    pub async fn revokes_every_refresh_token_of_a_user(backend: &Backend) {
        let store = backend.store();
        let kim = owner(&store, "kim").await;
        let lou = owner(&store, "lou").await;
        store
            .insert_refresh_token(&token(&kim, Uuid::now_v7(), "k-1"))
            .await
            .unwrap();
        store
            .insert_refresh_token(&token(&kim, Uuid::now_v7(), "k-2"))
            .await
            .unwrap();
        store
            .insert_refresh_token(&token(&lou, Uuid::now_v7(), "l-1"))
            .await
            .unwrap();
        assert_eq!(
            store
                .revoke_user_refresh_tokens(kim.id, now())
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            store
                .revoke_user_refresh_tokens(kim.id, now())
                .await
                .unwrap(),
            0
        );
        for hash in ["k-1", "k-2"] {
            let stored = store.refresh_token_by_hash(hash).await.unwrap().unwrap();
            assert!(stored.revoked_at.is_some());
        }
        let other = store.refresh_token_by_hash("l-1").await.unwrap().unwrap();
        assert_eq!(other.revoked_at, None);
    }

    pub async fn lists_audit_newest_first_with_filters_and_cursor(backend: &Backend) {
        let store = backend.store();
        let mut events = vec![
            event("auth.login.failed", Some("user:mo")),
            event("auth.login", Some("user:mo")),
            event("api_key.created", Some("user:admin")),
            event("auth.login.failed", None),
            event("auth.login", Some("user:admin")),
        ];
        events[3].ip = None;
        events[3].request_id = None;
        events[3].details = json!({});
        for e in &events {
            store.append_audit(e).await.unwrap();
        }
        let page = |action: Option<&str>, principal: Option<&str>, before, limit| AuditFilter {
            action: action.map(Into::into),
            principal: principal.map(Into::into),
            before,
            limit,
        };
        let newest_first: Vec<AuditEvent> = events.iter().rev().cloned().collect();
        assert_eq!(
            store
                .list_audit(&page(None, None, None, 100))
                .await
                .unwrap(),
            newest_first
        );

        let failed = store
            .list_audit(&page(Some("auth.login.failed"), None, None, 100))
            .await
            .unwrap();
        assert_eq!(failed, vec![events[3].clone(), events[0].clone()]);

        let mo = store
            .list_audit(&page(None, Some("user:mo"), None, 100))
            .await
            .unwrap();
        assert_eq!(mo, vec![events[1].clone(), events[0].clone()]);

        let both = store
            .list_audit(&page(Some("auth.login"), Some("user:admin"), None, 100))
            .await
            .unwrap();
        assert_eq!(both, vec![events[4].clone()]);

        // Pages of two, each continuing before the previous page's last id.
        let first = store.list_audit(&page(None, None, None, 2)).await.unwrap();
        assert_eq!(first, newest_first[..2]);
        let second = store
            .list_audit(&page(None, None, Some(first[1].id), 2))
            .await
            .unwrap();
        assert_eq!(second, newest_first[2..4]);
        let third = store
            .list_audit(&page(None, None, Some(second[1].id), 2))
            .await
            .unwrap();
        assert_eq!(third, newest_first[4..]);
    }

    pub async fn grants_quota_until_the_limit(backend: &Backend) {
        let store = backend.store();
        let consume = |amount| store.consume_quota("user:nia", day(1), amount, 10);
        assert_eq!(
            consume(4).await.unwrap(),
            QuotaUse {
                granted: true,
                used: 4
            }
        );
        assert_eq!(
            consume(6).await.unwrap(),
            QuotaUse {
                granted: true,
                used: 10
            }
        );
        // Nothing counted on refusal, not even part of it.
        assert_eq!(
            consume(1).await.unwrap(),
            QuotaUse {
                granted: false,
                used: 10
            }
        );
        assert_eq!(
            consume(0).await.unwrap(),
            QuotaUse {
                granted: true,
                used: 10
            }
        );
        // A higher limit (a changed configuration) grants again.
        assert_eq!(
            store
                .consume_quota("user:nia", day(1), 5, 12)
                .await
                .unwrap(),
            QuotaUse {
                granted: false,
                used: 10
            }
        );
        assert_eq!(
            store
                .consume_quota("user:nia", day(1), 2, 12)
                .await
                .unwrap(),
            QuotaUse {
                granted: true,
                used: 12
            }
        );
    }

    pub async fn never_counts_an_amount_above_the_limit(backend: &Backend) {
        let store = backend.store();
        // The first request of the day, already over the limit: nothing is stored.
        assert_eq!(
            store
                .consume_quota("svc:big", day(2), 11, 10)
                .await
                .unwrap(),
            QuotaUse {
                granted: false,
                used: 0
            }
        );
        assert_eq!(
            store
                .consume_quota("svc:big", day(2), 10, 10)
                .await
                .unwrap(),
            QuotaUse {
                granted: true,
                used: 10
            }
        );
        assert_eq!(
            store
                .consume_quota("svc:big", day(3), u64::MAX, u64::MAX - 1)
                .await
                .unwrap(),
            QuotaUse {
                granted: false,
                used: 0
            }
        );
    }

    pub async fn keeps_quotas_per_subject_and_day(backend: &Backend) {
        let store = backend.store();
        let used = |r: QuotaUse| (r.granted, r.used);
        assert_eq!(
            used(store.consume_quota("a", day(4), 3, 3).await.unwrap()),
            (true, 3)
        );
        assert_eq!(
            used(store.consume_quota("a", day(4), 1, 3).await.unwrap()),
            (false, 3)
        );
        assert_eq!(
            used(store.consume_quota("a", day(5), 1, 3).await.unwrap()),
            (true, 1)
        );
        assert_eq!(
            used(store.consume_quota("b", day(4), 2, 3).await.unwrap()),
            (true, 2)
        );
        assert_eq!(
            used(store.consume_quota("a", day(5), 2, 3).await.unwrap()),
            (true, 3)
        );
        assert_eq!(
            used(store.consume_quota("b", day(4), 1, 3).await.unwrap()),
            (true, 3)
        );
    }

    pub async fn concurrent_quota_use_never_exceeds_the_limit(backend: &Backend) {
        let store = backend.store();
        let attempts = (0..40).map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.consume_quota("svc:race", day(6), 1, 25).await })
        });
        let mut granted = 0;
        for attempt in attempts.collect::<Vec<_>>() {
            let result = attempt.await.unwrap().unwrap();
            assert!(result.used <= 25);
            granted += usize::from(result.granted);
        }
        assert_eq!(granted, 25);
        assert_eq!(
            store
                .consume_quota("svc:race", day(6), 0, 25)
                .await
                .unwrap(),
            QuotaUse {
                granted: true,
                used: 25
            }
        );
    }

    pub async fn quota_counts_survive_a_restart(backend: &Backend) {
        let store = backend.store();
        store.consume_quota("user:oz", day(7), 7, 10).await.unwrap();
        store.consume_quota("user:oz", day(8), 2, 10).await.unwrap();
        drop(store);
        let reopened = backend.reopen().await;
        let store = reopened.store();
        assert_eq!(
            store.consume_quota("user:oz", day(7), 3, 10).await.unwrap(),
            QuotaUse {
                granted: true,
                used: 10
            }
        );
        assert_eq!(
            store.consume_quota("user:oz", day(7), 1, 10).await.unwrap(),
            QuotaUse {
                granted: false,
                used: 10
            }
        );
        assert_eq!(
            store.consume_quota("user:oz", day(8), 0, 10).await.unwrap(),
            QuotaUse {
                granted: true,
                used: 2
            }
        );
        drop(store);
        reopened.close().await;
    }

    pub async fn records_revocations_and_reads_them_since_an_instant(backend: &Backend) {
        let store = backend.store();
        let before = Utc::now() - Span::seconds(5);
        let targets = [
            RevocationTarget::Subject("ann".into()),
            RevocationTarget::Session(Uuid::now_v7()),
            RevocationTarget::ApiKey(Uuid::now_v7()),
        ];
        let mut recorded = Vec::new();
        for target in &targets {
            let entry = store.record_revocation(target, now()).await.unwrap();
            assert_eq!(&entry.target, target);
            assert!(entry.recorded_at >= before, "stamped by the store's clock");
            recorded.push(entry);
            // Distinct instants, so that the order below is the order of recording.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let all = store.revocations_since(before).await.unwrap();
        assert_eq!(all, recorded, "every entry, oldest first");
        let later = store
            .revocations_since(recorded[2].recorded_at)
            .await
            .unwrap();
        assert_eq!(later, vec![recorded[2].clone()], "`since` is inclusive");
        let future = Utc::now() + Span::hours(1);
        assert!(store.revocations_since(future).await.unwrap().is_empty());
    }

    pub async fn a_revocation_cutoff_never_moves_earlier(backend: &Backend) {
        let store = backend.store();
        let ann = RevocationTarget::Subject("ann".into());
        let cutoff = now();
        let first = store.record_revocation(&ann, cutoff).await.unwrap();
        assert_eq!(first.not_before, cutoff);
        let older = store
            .record_revocation(&ann, cutoff - Span::hours(1))
            .await
            .unwrap();
        assert_eq!(older.not_before, cutoff, "an older cut-off changes nothing");
        assert!(
            older.recorded_at >= first.recorded_at,
            "but it is read again"
        );
        let newer = store
            .record_revocation(&ann, cutoff + Span::minutes(1))
            .await
            .unwrap();
        assert_eq!(newer.not_before, cutoff + Span::minutes(1));
        let all = store
            .revocations_since(DateTime::<Utc>::default())
            .await
            .unwrap();
        assert_eq!(all.len(), 1, "one row per target");
        assert_eq!(all[0], newer);
    }

    pub async fn revocations_reach_a_second_node_through_the_store(backend: &Backend) {
        use mcp_core::revocations::{Credential, RevocationConfig, Revocations};
        let config = RevocationConfig::default();
        let here = Revocations::new(backend.store(), None, config);
        let there = Revocations::new(backend.store(), None, config);
        let changes = there.watch();
        let token = |issued_at: i64| Credential::AccessToken {
            subject: "ann".into(),
            session: None,
            issued_at: issued_at as u64,
        };
        let issued = Utc::now().timestamp() - 1;
        let key = Uuid::now_v7();
        here.revoke(RevocationTarget::Subject("ann".into()), Utc::now())
            .await
            .unwrap();
        here.revoke(RevocationTarget::ApiKey(key), Utc::now())
            .await
            .unwrap();
        assert!(
            here.is_revoked(&token(issued)),
            "applied at once where revoked"
        );
        assert!(!there.is_revoked(&token(issued)), "not yet read there");
        assert_eq!(there.refresh().await.unwrap(), 2);
        assert!(there.is_revoked(&token(issued)));
        assert!(there.is_revoked(&Credential::ApiKey { id: key }));
        assert!(!there.is_revoked(&token(issued + 3_600)));
        assert!(changes.has_changed().unwrap(), "watchers are told");
        assert_eq!(
            there.refresh().await.unwrap(),
            0,
            "nothing new the second time"
        );
    }

    pub async fn prunes_only_expired_subject_and_session_revocations(backend: &Backend) {
        let store = backend.store();
        let long_ago = now() - Span::hours(2);
        let (session, key) = (Uuid::now_v7(), Uuid::now_v7());
        for target in [
            RevocationTarget::Subject("ann".into()),
            RevocationTarget::Session(session),
            RevocationTarget::ApiKey(key),
        ] {
            store.record_revocation(&target, long_ago).await.unwrap();
        }
        let future = RevocationTarget::Subject("bob".into());
        store
            .record_revocation(&future, now() + Span::hours(2))
            .await
            .unwrap();
        assert_eq!(
            store
                .prune_revocations(now() - Span::hours(1))
                .await
                .unwrap(),
            0,
            "recorded just now: kept, whatever the cut-off"
        );
        let before = Utc::now() + Span::hours(1);
        assert_eq!(store.prune_revocations(before).await.unwrap(), 2);
        let left = store
            .revocations_since(DateTime::<Utc>::default())
            .await
            .unwrap();
        let targets: Vec<_> = left.iter().map(|e| e.target.clone()).collect();
        assert_eq!(
            targets,
            vec![RevocationTarget::ApiKey(key), future],
            "a revoked API key stays, and a cut-off after `before`"
        );
        assert_eq!(store.prune_revocations(before).await.unwrap(), 0);
    }

    pub async fn a_node_forgets_pruned_revocations(backend: &Backend) {
        use mcp_core::revocations::{Credential, RevocationConfig, Revocations};
        // Keeps nothing past its cut-off: everything recorded before now is prunable.
        let config = RevocationConfig {
            keep_for: std::time::Duration::ZERO,
            ..RevocationConfig::default()
        };
        let node = Revocations::new(backend.store(), None, config);
        let (session, key) = (Uuid::now_v7(), Uuid::now_v7());
        let at = Utc::now() - Span::hours(2);
        node.revoke(RevocationTarget::Session(session), at)
            .await
            .unwrap();
        node.revoke(RevocationTarget::ApiKey(key), at)
            .await
            .unwrap();
        let token = Credential::AccessToken {
            subject: "ann".into(),
            session: Some(session),
            issued_at: at.timestamp() as u64,
        };
        assert!(node.is_revoked(&token));
        assert_eq!(node.cached(), 2);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let (deleted, dropped) = node.prune(Utc::now()).await;
        assert_eq!(deleted.unwrap(), 1);
        assert_eq!(dropped, 1);
        assert!(!node.is_revoked(&token));
        assert!(node.is_revoked(&Credential::ApiKey { id: key }));
        // The default keeps an entry for the token lifetime and the margin.
        let careful = Revocations::new(backend.store(), None, RevocationConfig::default());
        careful
            .revoke(RevocationTarget::Session(session), at)
            .await
            .unwrap();
        let (deleted, dropped) = careful.prune(Utc::now()).await;
        assert_eq!((deleted.unwrap(), dropped), (0, 0));
        assert!(careful.is_revoked(&token));
    }
}
