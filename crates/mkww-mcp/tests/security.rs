//! Security, end to end against the real binary: who may call what (the whole role × route
//! matrix), logins and rotating refresh tokens, API keys, per-user task visibility, rate limits
//! shared through the real Redis by two server processes, quotas across restarts, the audit log.

mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mcp_api::access::Access;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use support::*;

const ROLES: [&str; 4] = ["admin", "operator", "service", "user"];

/// The access matrix as a specification: route → roles allowed (`*` = public, `any` = any
/// authenticated principal). The guard's table must say exactly this.
const EXPECTED: &[(&str, &str, &str)] = &[
    ("GET", "/healthz", "*"),
    ("GET", "/readyz", "*"),
    ("GET", "/v1/health", "admin operator"),
    ("GET", "/openapi.json", "*"),
    ("GET", "/metrics", "admin"),
    ("POST", "/v1/auth/login", "*"),
    ("POST", "/v1/auth/refresh", "*"),
    ("POST", "/v1/auth/logout", "*"),
    ("GET", "/v1/auth/me", "any"),
    ("POST", "/v1/tasks", "admin operator service user"),
    ("GET", "/v1/tasks", "admin operator service user"),
    ("POST", "/v1/tasks/batch", "admin operator service user"),
    ("GET", "/v1/tasks/{id}", "admin operator service user"),
    (
        "POST",
        "/v1/tasks/{id}/cancel",
        "admin operator service user",
    ),
    ("POST", "/v1/tasks/{id}/retry", "admin operator"),
    ("GET", "/v1/queues", "admin operator"),
    ("GET", "/v1/routes", "admin operator service"),
    ("POST", "/v1/api-keys", "admin"),
    ("GET", "/v1/api-keys", "admin"),
    ("DELETE", "/v1/api-keys/{id}", "admin"),
    ("POST", "/v1/users", "admin"),
    ("GET", "/v1/users", "admin"),
    ("PATCH", "/v1/users/{id}", "admin"),
    ("GET", "/v1/audit", "admin"),
    ("GET", "/v1/ws", "*"),
    ("POST", "/v1/conversations", "admin operator service user"),
    ("GET", "/v1/conversations", "admin operator service user"),
    ("POST", "/v1/conversations/import", "admin operator"),
    (
        "GET",
        "/v1/conversations/{id}",
        "admin operator service user",
    ),
    (
        "PATCH",
        "/v1/conversations/{id}",
        "admin operator service user",
    ),
    ("DELETE", "/v1/conversations/{id}", "admin operator"),
    (
        "POST",
        "/v1/conversations/{id}/messages",
        "admin operator service user",
    ),
    (
        "GET",
        "/v1/conversations/{id}/messages",
        "admin operator service user",
    ),
    (
        "PATCH",
        "/v1/conversations/{id}/messages/{message_id}",
        "admin operator service user",
    ),
    (
        "DELETE",
        "/v1/conversations/{id}/messages/{message_id}",
        "admin operator service user",
    ),
    (
        "GET",
        "/v1/conversations/{id}/context",
        "admin operator service user",
    ),
    (
        "POST",
        "/v1/conversations/{id}/summary",
        "admin operator service user",
    ),
    (
        "GET",
        "/v1/conversations/{id}/export",
        "admin operator service user",
    ),
    ("GET", "/v1/search/messages", "admin operator service user"),
    ("GET", "/v1/integrations", "admin"),
    ("GET", "/v1/integrations/{name}", "admin"),
    ("PUT", "/v1/integrations/{name}", "admin"),
    ("DELETE", "/v1/integrations/{name}", "admin"),
    // Public to the guard: the handler checks each source's signature (401 without one).
    ("POST", "/v1/hooks/{source}", "*"),
    ("POST", "/v1/discord/interactions", "*"),
    ("GET", "/v1/vrchat/status", "admin operator service"),
    ("POST", "/v1/vrchat/auth/login", "admin"),
    ("POST", "/v1/vrchat/auth/code", "admin"),
    ("GET", "/v1/vrchat/users/me", "admin operator service"),
    ("GET", "/v1/vrchat/users/{id}", "admin operator service"),
    ("GET", "/v1/vrchat/worlds/{id}", "admin operator service"),
    (
        "GET",
        "/v1/vrchat/instances/{location}",
        "admin operator service",
    ),
    ("GET", "/v1/vrchat/friends/online", "admin operator service"),
    ("GET", "/v1/vcc/projects", "admin operator service user"),
    ("POST", "/v1/vcc/projects", "admin operator"),
    (
        "GET",
        "/v1/vcc/projects/{id}",
        "admin operator service user",
    ),
    ("DELETE", "/v1/vcc/projects/{id}", "admin operator"),
    ("GET", "/v1/vcc/repositories", "admin operator service user"),
    ("POST", "/v1/vcc/repositories", "admin operator"),
    ("POST", "/v1/vcc/repositories/refresh", "admin operator"),
    ("DELETE", "/v1/vcc/repositories/{id}", "admin operator"),
    ("POST", "/deploy", "admin operator service user"),
    ("POST", "/ask-gemini", "admin operator service user"),
    ("POST", "/v1/webhooks", "admin"),
    ("GET", "/v1/webhooks", "admin"),
    ("DELETE", "/v1/webhooks/{id}", "admin"),
    ("GET", "/v1/webhooks/{id}/deliveries", "admin"),
    (
        "POST",
        "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
        "admin",
    ),
    ("POST", "/v1/schedules", "admin operator"),
    ("GET", "/v1/schedules", "admin operator"),
    ("GET", "/v1/schedules/{name}", "admin operator"),
    ("PATCH", "/v1/schedules/{name}", "admin operator"),
    ("DELETE", "/v1/schedules/{name}", "admin operator"),
    ("POST", "/v1/schedules/{name}/pause", "admin operator"),
    ("POST", "/v1/schedules/{name}/resume", "admin operator"),
    ("POST", "/v1/schedules/{name}/trigger", "admin operator"),
    ("GET", "/v1/schedules/{name}/next", "admin operator"),
    ("POST", "/v1/queues/{queue}/pause", "admin operator"),
    ("POST", "/v1/queues/{queue}/resume", "admin operator"),
    ("GET", "/v1/task-limits", "admin operator"),
    ("GET", "/v1/task-limits/{type}", "admin operator"),
    ("PUT", "/v1/task-limits/{type}", "admin operator"),
    ("DELETE", "/v1/task-limits/{type}", "admin operator"),
    ("GET", "/v1/queues/{queue}/limit", "admin operator"),
    ("PUT", "/v1/queues/{queue}/limit", "admin operator"),
    ("DELETE", "/v1/queues/{queue}/limit", "admin operator"),
    ("POST", "/v1/workflows", "admin operator service user"),
    ("GET", "/v1/workflows", "admin operator service user"),
    ("GET", "/v1/workflows/{id}", "admin operator service user"),
    (
        "POST",
        "/v1/workflows/{id}/cancel",
        "admin operator service user",
    ),
    (
        "POST",
        "/v1/workflows/{id}/tasks",
        "admin operator service user",
    ),
    ("GET", "/docs", "*"),
    ("GET", "/docs/", "*"),
    ("GET", "/docs/{file}", "*"),
    // Any principal reaches `/mcp`; each tool checks the permission of its REST twin.
    ("POST", "/mcp", "any"),
    ("GET", "/mcp", "any"),
    ("DELETE", "/mcp", "any"),
    ("GET", "/.well-known/oauth-protected-resource", "*"),
    ("GET", "/.well-known/oauth-protected-resource/mcp", "*"),
    ("GET", "/v1/settings", "admin operator"),
    ("PATCH", "/v1/settings", "admin"),
    ("GET", "/v1/flags", "admin operator"),
    ("GET", "/v1/flags/mine", "any"),
    ("PUT", "/v1/flags/{name}", "admin"),
    ("DELETE", "/v1/flags/{name}", "admin"),
    ("GET", "/v1/stats", "admin operator"),
];

fn allowed(spec: &str, role: &str) -> bool {
    spec == "*" || spec == "any" || spec.split(' ').any(|r| r == role)
}

async fn send(client: &reqwest::Client, server: &Server, method: &str, path: &str) -> (u16, Value) {
    let url = server.url(&path.replace("{id}", &uuid::Uuid::now_v7().to_string()));
    let request = match method {
        "GET" => client.get(url),
        "POST" => client.post(url).json(&json!({})),
        "PATCH" => client.patch(url).json(&json!({})),
        "PUT" => client.put(url).json(&json!({})),
        "DELETE" => client.delete(url),
        other => panic!("method {other} not covered by this test"),
    };
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_route_enforces_the_role_matrix() {
    // The table in code is the specification above, entry for entry.
    let routes = mcp_api::access_table();
    let table: BTreeSet<(String, String, String)> = routes
        .iter()
        .map(|r| {
            let spec = match r.access {
                Access::Public => "*".to_owned(),
                Access::Authenticated => "any".to_owned(),
                Access::Requires(p) => ROLES
                    .iter()
                    .filter(|role| role.parse::<mcp_core::principal::Role>().unwrap().grants(p))
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" "),
            };
            (r.method.to_owned(), r.path.to_owned(), spec)
        })
        .collect();
    let expected: BTreeSet<(String, String, String)> = EXPECTED
        .iter()
        .map(|(m, p, s)| (m.to_string(), p.to_string(), s.to_string()))
        .collect();
    assert_eq!(table, expected, "the access table differs from the spec");

    let server = Server::start(&[]);
    // Every documented route is in the table, and every table route is documented: a new
    // route cannot ship without a permission.
    let (_, doc) = get(&server, "/openapi.json").await;
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let in_table: BTreeSet<(String, String)> = routes
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(
        documented, in_table,
        "OpenAPI paths and the access table differ"
    );

    let anonymous = reqwest::Client::new();
    for (method, path, spec) in EXPECTED {
        let (status, body) = send(&anonymous, &server, method, path).await;
        if *spec == "*" {
            assert!(
                status != 401 && status != 403,
                "{method} {path}: {status} {body}"
            );
        } else {
            assert_eq!(status, 401, "{method} {path} without credentials: {body}");
            assert_eq!(body["error"]["code"], "unauthenticated");
            assert!(body["error"]["request_id"].is_string());
        }
        for role in ROLES {
            let (status, body) = send(&client_as(role, "matrix"), &server, method, path).await;
            if allowed(spec, role) {
                assert!(
                    status != 401 && status != 403,
                    "{role} must reach {method} {path}: {status} {body}"
                );
            } else {
                assert_eq!(status, 403, "{role} must not reach {method} {path}: {body}");
                assert_eq!(body["error"]["code"], "forbidden");
            }
        }
    }
}

fn forge(header: &str, claims: &Value, secret: &[u8]) -> String {
    let head = URL_SAFE_NO_PAD.encode(header);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing = format!("{head}.{body}");
    let signature = jsonwebtoken::crypto::sign(
        signing.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(secret),
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap();
    format!("{signing}.{signature}")
}

#[tokio::test]
async fn refuses_bad_tokens_and_malformed_headers_with_401_json() {
    let server = Server::start(&[]);
    let now = chrono::Utc::now().timestamp();
    let claims = |iss: &str, aud: &str, nbf: i64, exp: i64| {
        json!({"sub": "x", "role": "admin", "iss": iss, "aud": aud, "iat": now,
               "nbf": now + nbf, "exp": now + exp, "jti": "j"})
    };
    let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
    let secret = JWT_SECRET.as_bytes();
    let good = forge(hs, &claims("mkww-mcp", "mkww-mcp", 0, 600), secret);
    let mut tampered = good.clone().into_bytes();
    let at = good.rfind('.').unwrap() + 2;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims("mkww-mcp", "mkww-mcp", 0, 600).to_string())
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "expired",
            forge(hs, &claims("mkww-mcp", "mkww-mcp", -120, -60), secret).into(),
        ),
        (
            "not yet valid",
            forge(hs, &claims("mkww-mcp", "mkww-mcp", 300, 600), secret).into(),
        ),
        (
            "wrong iss",
            forge(hs, &claims("other", "mkww-mcp", 0, 600), secret).into(),
        ),
        (
            "wrong aud",
            forge(hs, &claims("mkww-mcp", "other", 0, 600), secret).into(),
        ),
        (
            "other secret",
            forge(hs, &claims("mkww-mcp", "mkww-mcp", 0, 600), &[9u8; 40]).into(),
        ),
        ("tampered", tampered),
        ("alg none", none.into()),
        ("garbage", b"a.b.c".to_vec()),
        ("unknown api key", b"mcp_0123456789abcdef_secret".to_vec()),
        ("huge", "x".repeat(100_000).into()),
    ];
    let http = reqwest::Client::new();
    let check = |what: String, response: reqwest::Response| async move {
        assert_eq!(response.status(), 401, "{what}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{what}");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["error"]["code"], "unauthenticated", "{what}");
    };
    for (what, credential) in cases {
        let mut value = b"Bearer ".to_vec();
        value.extend(credential);
        let header = reqwest::header::HeaderValue::from_bytes(&value).unwrap();
        let response = http
            .get(server.url("/v1/tasks"))
            .header("authorization", header)
            .send()
            .await;
        match response {
            Ok(response) => check(what.to_owned(), response).await,
            // A header too large for the HTTP server itself is refused before us (431).
            Err(e) => panic!("{what}: {e}"),
        }
    }
    for raw in [
        &b"Basic dXNlcjpwYXNz"[..],
        b"Bearer",
        b"Bearer \xff\xfe",
        b"token",
    ] {
        let response = http
            .get(server.url("/v1/tasks"))
            .header(
                "authorization",
                reqwest::header::HeaderValue::from_bytes(raw).unwrap(),
            )
            .send()
            .await
            .unwrap();
        check(String::from_utf8_lossy(raw).into_owned(), response).await;
    }
    // Good token, wrong content type: still a JSON 4xx.
    let response = client_with(&good)
        .post(server.url("/v1/tasks"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
}

async fn login(server: &Server, username: &str, password: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.url("/v1/auth/login"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn refresh(server: &Server, token: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.url("/v1/auth/refresh"))
        .json(&json!({"refresh_token": token}))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn create_user(server: &Server, username: &str, role: &str) -> (String, Value) {
    let password = format!("{username}-password-123");
    let (status, body) = post(
        server,
        "/v1/users",
        json!({"username": username, "role": role, "password": password}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(body["user"]["password_hash"].is_null(), "never echoed");
    (password, body["user"].clone())
}

async fn audit_actions(server: &Server) -> Vec<String> {
    let (status, page) = get(server, "/v1/audit?limit=500").await;
    assert_eq!(status, 200, "{page}");
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn logs_in_rotates_refresh_tokens_and_revokes_the_family_on_reuse() {
    let server = Server::start(&[]);
    let (password, _) = create_user(&server, "alice", "user").await;
    let (status, tokens) = login(&server, "alice", &password).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 900, "15 minutes by default");
    let access = tokens["access_token"].as_str().unwrap();
    let (_, me) = {
        let r = client_with(access)
            .get(server.url("/v1/auth/me"))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(
        me,
        json!({"subject": "alice", "role": "user", "credential": "access_token"})
    );

    let first = tokens["refresh_token"].clone();
    let (status, second) = refresh(&server, &first).await;
    assert_eq!(status, 200, "{second}");
    assert_ne!(second["refresh_token"], first);
    let (status, third) = refresh(&server, &second["refresh_token"]).await;
    assert_eq!(status, 200);

    // The first token again: theft suspected, the whole family dies.
    let (status, reuse) = refresh(&server, &first).await;
    assert_eq!(
        (status, reuse["error"]["code"].as_str()),
        (401, Some("refresh_token_reused"))
    );
    let (status, dead) = refresh(&server, &third["refresh_token"]).await;
    assert_eq!(
        (status, dead["error"]["code"].as_str()),
        (401, Some("invalid_refresh_token")),
        "the newest token of the family is revoked too"
    );
    let actions = audit_actions(&server).await;
    for action in [
        "user.created",
        "auth.login.succeeded",
        "auth.refresh.reused",
        "auth.family.revoked",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} in {actions:?}"
        );
    }

    // Logout ends a session.
    let (_, tokens) = login(&server, "alice", &password).await;
    let response = reqwest::Client::new()
        .post(server.url("/v1/auth/logout"))
        .json(&json!({"refresh_token": tokens["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(refresh(&server, &tokens["refresh_token"]).await.0, 401);
    assert!(
        server
            .wait_for_log(|l| l["message"] == "audit" && l["action"] == "auth.logout")
            .is_some(),
        "each audit event is a log line too"
    );
}

#[tokio::test]
async fn login_failures_do_not_reveal_whether_a_user_exists() {
    let server = Server::start(&[]);
    let (password, user) = create_user(&server, "bob", "user").await;
    let (s1, unknown) = login(&server, "nobody", "whatever-password").await;
    let (s2, wrong) = login(&server, "bob", "wrong-password-here").await;
    assert_eq!((s1, s2), (401, 401));
    assert_eq!(unknown["error"]["code"], "invalid_credentials");
    assert_eq!(unknown["error"]["message"], wrong["error"]["message"]);
    // A disabled user cannot log in either, and looks the same.
    let (status, _) = {
        let r = client()
            .patch(server.url(&format!("/v1/users/{}", user["id"].as_str().unwrap())))
            .json(&json!({"disabled": true}))
            .send()
            .await
            .unwrap();
        (r.status(), ())
    };
    assert_eq!(status, 200);
    let (s3, disabled) = login(&server, "bob", &password).await;
    assert_eq!(s3, 401);
    assert_eq!(disabled["error"]["message"], wrong["error"]["message"]);
    let failures = audit_actions(&server)
        .await
        .into_iter()
        .filter(|a| a == "auth.login.failed")
        .count();
    assert_eq!(failures, 3);
}

#[tokio::test]
async fn limits_login_attempts_per_username() {
    let server = Server::start(&[("MCP_RATE_LIMIT_LOGIN_PER_MINUTE", "3".into())]);
    create_user(&server, "carol", "user").await;
    for _ in 0..3 {
        assert_eq!(login(&server, "carol", "wrong-password-xx").await.0, 401);
    }
    let response = reqwest::Client::new()
        .post(server.url("/v1/auth/login"))
        .json(&json!({"username": "carol", "password": "wrong-password-xx"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let headers = response.headers().clone();
    assert!(
        headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(headers["ratelimit-limit"], "3");
    assert_eq!(headers["ratelimit-remaining"], "0");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another username is not affected.
    assert_eq!(login(&server, "dave", "wrong-password-xx").await.0, 401);
}

#[tokio::test]
async fn api_keys_authenticate_until_revoked() {
    let server = Server::start(&[]);
    let (status, created) = post(
        &server,
        "/v1/api-keys",
        json!({"name": "discord-bot", "role": "service"}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("mcp_{}_", created["prefix"].as_str().unwrap())));
    assert!(created["secret_hash"].is_null());

    let bot = client_with(&key);
    let response = bot
        .post(server.url("/v1/tasks"))
        .json(&json!({"type": "noop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let task: Value = response.json().await.unwrap();
    assert_eq!(
        task["created_by"],
        format!("key:{}", created["prefix"].as_str().unwrap())
    );
    let forbidden = bot.get(server.url("/v1/api-keys")).send().await.unwrap();
    assert_eq!(forbidden.status(), 403, "a service key is not an admin");

    let (_, list) = get(&server, "/v1/api-keys").await;
    let listed = list["api_keys"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert!(
        !list.to_string().contains(&key),
        "the key is never shown again"
    );
    assert!(listed[0]["last_used_at"].is_string());

    let response = client()
        .delete(server.url(&format!("/v1/api-keys/{}", created["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let refused = bot.get(server.url("/v1/tasks")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let actions = audit_actions(&server).await;
    assert!(actions.contains(&"api_key.created".to_owned()));
    assert!(actions.contains(&"api_key.revoked".to_owned()));
}

#[tokio::test]
async fn users_see_and_cancel_only_their_own_tasks() {
    let server = Server::start(&[("MCP_WORKER_CONCURRENCY", "0".into())]);
    let alice = client_as("user", "alice");
    let bob = client_as("user", "bob");
    let create = |c: reqwest::Client| {
        let url = server.url("/v1/tasks");
        async move {
            let r = c
                .post(url)
                .json(&json!({"type": "noop", "idempotency_key": "same-key"}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, task) = create(alice.clone()).await;
    assert_eq!(status, 201);
    assert_eq!(task["created_by"], "alice");
    let id = task["id"].as_str().unwrap().to_owned();
    let path = server.url(&format!("/v1/tasks/{id}"));

    assert_eq!(alice.get(&path).send().await.unwrap().status(), 200);
    assert_eq!(bob.get(&path).send().await.unwrap().status(), 404);
    let bobs: Value = bob
        .get(server.url("/v1/tasks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bobs["tasks"], json!([]));
    let cancel = format!("{path}/cancel");
    assert_eq!(bob.post(&cancel).send().await.unwrap().status(), 404);
    // Bob cannot discover Alice's task through her idempotency key: his key is his own.
    let (status, body) = create(bob.clone()).await;
    assert_eq!(status, 201, "{body}");
    assert_ne!(body["id"].as_str(), Some(id.as_str()));
    assert_eq!(body["idempotency_key"], "same-key");

    // An operator sees everything and may cancel anyone's task.
    let operator = client_as("operator", "ops");
    let all: Value = operator
        .get(server.url("/v1/tasks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(operator.post(&cancel).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn daily_task_quota_holds_across_restarts() {
    let dir = temp_dir();
    let env = [("MCP_QUOTA_TASKS_PER_DAY", "3".to_string())];
    let user = client_as("user", "quota-user");
    let create = |server: &Server, n: usize| {
        let url = server.url("/v1/tasks/batch");
        let user = user.clone();
        async move {
            let tasks: Vec<Value> = (0..n).map(|_| json!({"type": "noop"})).collect();
            let r = user
                .post(url)
                .json(&json!({"tasks": tasks}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry = r.headers().get("retry-after").cloned();
            (status, retry, r.json::<Value>().await.unwrap())
        }
    };
    let mut server = Server::start_in(dir.clone(), &env);
    assert_eq!(create(&server, 2).await.0, 201);
    server.terminate();
    let server = Server::start_in(dir, &env);
    let (status, retry, body) = create(&server, 2).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert_eq!(body["error"]["details"]["used"], 2);
    assert!(retry.is_some());
    assert_eq!(
        create(&server, 1).await.0,
        201,
        "the last unit is still there"
    );
    assert_eq!(create(&server, 1).await.0, 429);
    // Operators are not subject to the quota.
    let (status, _) = post(&server, "/v1/tasks", json!({"type": "noop"})).await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn rate_limits_are_shared_by_two_servers_through_redis() {
    let url =
        std::env::var("MCP_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("mcp-it-{}", uuid::Uuid::new_v4().simple());
    let limiter =
        match mcp_persistence::RedisLimiter::connect(&url, &format!("{prefix}:ratelimit:")).await {
            Ok(limiter) => limiter,
            Err(e) if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) => {
                panic!("Redis at {url} is required in CI: {e}")
            }
            Err(e) => {
                // Straight to stderr: libtest hides what `eprintln!` prints in a passing test.
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "skipping: Redis at {url} unreachable: {e}"
                );
                return;
            }
        };
    let env = [
        ("MCP_REDIS_URL", url.clone()),
        ("MCP_REDIS_PREFIX", prefix.clone()),
        ("MCP_RATE_LIMIT_READ_PER_MINUTE", "6".into()),
    ];
    let a = Server::start(&env);
    let b = Server::start(&env);
    let reader = client_as("operator", "shared-reader");
    let mut allowed = 0;
    let mut last = None;
    for i in 0..10 {
        let server = if i % 2 == 0 { &a } else { &b };
        let response = reader.get(server.url("/v1/queues")).send().await.unwrap();
        match response.status().as_u16() {
            200 => {
                allowed += 1;
                assert_eq!(response.headers()["ratelimit-limit"], "6");
            }
            429 => last = Some(response),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(allowed, 6, "one limit across both nodes");
    let refused = last.expect("a refusal");
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another principal has its own budget.
    let other = client_as("operator", "other-reader");
    assert_eq!(
        other
            .get(a.url("/v1/queues"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    limiter.clear().await.expect("clean up the test's keys");
}

#[tokio::test]
async fn limits_requests_per_client_ip() {
    let server = Server::start(&[("MCP_RATE_LIMIT_IP_PER_MINUTE", "4".into())]);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            client()
                .get(server.url("/v1/queues"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
    // Probes are never limited.
    assert_eq!(get(&server, "/healthz").await.0, 200);
}

#[tokio::test]
async fn metrics_need_an_admin_or_the_scrape_token() {
    let server = Server::start(&[("MCP_METRICS_TOKEN", "scrape-me-please".into())]);
    post(&server, "/v1/tasks", json!({"type": "noop"})).await;
    let admin = client().get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(admin.status(), 200);
    let text = admin.text().await.unwrap();
    assert!(text.contains("http_requests_total"), "{text}");
    assert!(text.contains("mcp_tasks"), "{text}");
    let scraper = client_with("scrape-me-please")
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scraper.status(), 200);
    let user = client_as("user", "u")
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(user.status(), 403);
}

#[tokio::test]
async fn first_start_prints_admin_credentials_that_work_once() {
    let dir = temp_dir();
    let mut server = Server::start_in(dir.clone(), &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let password = loop {
        let console = server.console.lock().unwrap().join("\n");
        if let Some(password) = console
            .lines()
            .find_map(|l| l.trim().strip_prefix("password: "))
        {
            break password.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the first start prints a password"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (status, tokens) = login(&server, "admin", &password).await;
    assert_eq!(status, 200, "{tokens}");
    server.terminate();
    let again = Server::start_in(dir, &[]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !again
            .console
            .lock()
            .unwrap()
            .join("\n")
            .contains("password: "),
        "printed only on the first start"
    );
}

#[tokio::test]
async fn user_create_command_makes_a_user_that_can_log_in() {
    let dir = temp_dir();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mkww-mcp"));
    command
        .args([
            "user",
            "create",
            "erin",
            "--role",
            "operator",
            "--password-stdin",
        ])
        .current_dir(&dir)
        .env("MCP_DATA_DIR", &dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"erins-long-password\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let generated = std::process::Command::new(env!("CARGO_BIN_EXE_mkww-mcp"))
        .args(["user", "create", "frank", "--role", "user"])
        .current_dir(&dir)
        .env("MCP_DATA_DIR", &dir)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&generated.stdout);
    let frank_password = printed
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("a generated password is printed")
        .to_owned();
    let server = Server::start_in(dir, &[]);
    let (status, tokens) = login(&server, "erin", "erins-long-password").await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(login(&server, "frank", &frank_password).await.0, 200);
    assert!(
        !server
            .console
            .lock()
            .unwrap()
            .join("\n")
            .contains("password: "),
        "users exist, so no first-start admin"
    );
}

#[tokio::test]
async fn believes_forwarded_for_only_from_trusted_proxies() {
    let limited = |env: Vec<(&'static str, String)>| Server::start(&env);
    let behind_proxy = limited(vec![
        ("MCP_RATE_LIMIT_IP_PER_MINUTE", "2".into()),
        ("MCP_TRUSTED_PROXIES", "[\"127.0.0.0/8\"]".into()),
    ]);
    let from = |server: &Server, client_ip: &'static str| {
        let url = server.url("/v1/queues");
        async move {
            client()
                .get(url)
                .header("x-forwarded-for", client_ip)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(from(&behind_proxy, "203.0.113.1").await, 200);
    assert_eq!(from(&behind_proxy, "203.0.113.1").await, 200);
    assert_eq!(from(&behind_proxy, "203.0.113.1").await, 429);
    assert_eq!(
        from(&behind_proxy, "203.0.113.2").await,
        200,
        "each client behind the proxy has its own budget"
    );
    // Without the setting the header is ignored: every request counts against the peer.
    let direct = limited(vec![("MCP_RATE_LIMIT_IP_PER_MINUTE", "2".into())]);
    assert_eq!(from(&direct, "203.0.113.1").await, 200);
    assert_eq!(from(&direct, "203.0.113.2").await, 200);
    assert_eq!(from(&direct, "203.0.113.3").await, 429);
}
