//! `github.dispatch` and `render.deploy` against local fakes that check what GitHub and Render
//! check (the token, the headers, the body) and answer the way they do.

mod common;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::context;
use mcp_core::{Handler, HandlerError, HandlerRegistry};
use mcp_integrations::{Adapter, DeployAdapter, DeployConfig};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

const TOKEN: &str = "ghp_test_token";
const HOOK_KEY: &str = "hook-secret";

/// What the fakes received: path, headers, body.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, HeaderMap, Value)>>>);

impl Seen {
    fn last(&self) -> (String, HeaderMap, Value) {
        self.0.lock().unwrap().last().cloned().expect("a request")
    }
}

fn github_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({
            "message": message,
            "documentation_url": "https://docs.github.com/rest/repos/repos#create-a-repository-dispatch-event",
            "status": status.as_u16().to_string(),
        })),
    )
        .into_response()
}

/// Answers like GitHub, by repository name: `app` accepts, `invalid` 422, `limited` the
/// secondary rate limit (403 + `Retry-After`), `missing` 404, `broken` 502.
async fn github(
    State(seen): State<Seen>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let path = match params.get("workflow") {
        Some(w) => format!(
            "/repos/{}/{}/actions/workflows/{w}/dispatches",
            params["owner"], params["repo"]
        ),
        None => format!("/repos/{}/{}/dispatches", params["owner"], params["repo"]),
    };
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    seen.0
        .lock()
        .unwrap()
        .push((path, headers.clone(), body.clone()));
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {TOKEN}"))
    {
        return github_error(StatusCode::UNAUTHORIZED, "Bad credentials");
    }
    if headers.get(header::USER_AGENT).is_none() {
        return github_error(
            StatusCode::FORBIDDEN,
            "Request forbidden by administrative rules. Please make sure your request has a User-Agent header",
        );
    }
    match params["repo"].as_str() {
        "app" if body.is_object() => StatusCode::NO_CONTENT.into_response(),
        "invalid" => github_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid request.\n\nFor 'properties/event_type', nil is not a string.",
        ),
        "limited" => {
            let mut response = github_error(
                StatusCode::FORBIDDEN,
                "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, "60".parse().unwrap());
            response
        }
        "broken" => (StatusCode::BAD_GATEWAY, "<html>Unicorn!</html>").into_response(),
        _ => github_error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// Answers like a Render deploy hook: the key in the query, 200 with the deploy.
async fn render(
    State(seen): State<Seen>,
    Path(service): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    seen.0
        .lock()
        .unwrap()
        .push((format!("/deploy/{service}"), headers, json!(query)));
    if query.get("key").map(String::as_str) != Some(HOOK_KEY) {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    match service.as_str() {
        "srv-down" => (StatusCode::SERVICE_UNAVAILABLE, "upstream unavailable").into_response(),
        "srv-gone" => (
            StatusCode::NOT_FOUND,
            Json(json!({"message": "service not found"})),
        )
            .into_response(),
        _ => Json(json!({"deploy": {"id": "dep-d0b1f5"}})).into_response(),
    }
}

async fn serve() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route("/api/repos/{owner}/{repo}/dispatches", post(github))
        .route(
            "/api/repos/{owner}/{repo}/actions/workflows/{workflow}/dispatches",
            post(github),
        )
        .route("/deploy/{service}", post(render))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

fn config(addr: SocketAddr, token: &str) -> DeployConfig {
    let hook = |service: &str| format!("http://{addr}/deploy/{service}?key={HOOK_KEY}");
    DeployConfig {
        github_api_base: format!("http://{addr}/api/"),
        github_token: Some(token.to_owned()),
        render_deploy_hooks: BTreeMap::from([
            ("web".to_owned(), hook("srv-web")),
            ("down".to_owned(), hook("srv-down")),
            ("gone".to_owned(), hook("srv-gone")),
            (
                "badkey".to_owned(),
                format!("http://{addr}/deploy/srv-web?key=wrong"),
            ),
        ]),
        ..DeployConfig::default()
    }
}

fn handler(config: DeployConfig, task_type: &str) -> Arc<dyn Handler> {
    let mut registry = HandlerRegistry::default();
    DeployAdapter::new(config).unwrap().register(&mut registry);
    registry.get(task_type).expect("registered").clone()
}

async fn run(config: DeployConfig, task_type: &str, payload: Value) -> Result<Value, HandlerError> {
    let handler = handler(config, task_type);
    handler.validate(&payload).expect("a valid payload");
    handler.run(context(task_type, payload)).await
}

#[tokio::test]
async fn repository_dispatch_sends_the_token_headers_and_event() {
    let (addr, seen) = serve().await;
    let result = run(
        config(addr, TOKEN),
        "github.dispatch",
        json!({"repo": "owner/app", "event_type": "deploy", "client_payload": {"sha": "abc123"}}),
    )
    .await
    .unwrap();
    assert_eq!(
        result,
        json!({"status": 204, "dispatched": "repository_dispatch", "path": "/repos/owner/app/dispatches"})
    );
    let (path, headers, body) = seen.last();
    assert_eq!(path, "/repos/owner/app/dispatches");
    assert_eq!(headers["authorization"], format!("Bearer {TOKEN}"));
    assert_eq!(headers["accept"], "application/vnd.github+json");
    assert_eq!(headers["x-github-api-version"], "2022-11-28");
    assert_eq!(headers["content-type"], "application/json");
    let agent = headers["user-agent"].to_str().unwrap();
    assert!(
        agent.starts_with("mkww-mcp/") && agent.contains("deploy"),
        "{agent}"
    );
    assert_eq!(
        body,
        json!({"event_type": "deploy", "client_payload": {"sha": "abc123"}})
    );
}

#[tokio::test]
async fn workflow_dispatch_posts_ref_and_inputs() {
    let (addr, seen) = serve().await;
    run(
        config(addr, TOKEN),
        "github.dispatch",
        json!({"repo": "owner/app", "workflow": "deploy.yml", "ref": "main", "inputs": {"env": "prod"}}),
    )
    .await
    .unwrap();
    let (path, _, body) = seen.last();
    assert_eq!(
        path,
        "/repos/owner/app/actions/workflows/deploy.yml/dispatches"
    );
    assert_eq!(body, json!({"ref": "main", "inputs": {"env": "prod"}}));
}

#[tokio::test]
async fn validation_errors_are_permanent_with_githubs_message() {
    let (addr, _) = serve().await;
    let err = run(
        config(addr, TOKEN),
        "github.dispatch",
        json!({"repo": "owner/invalid"}),
    )
    .await
    .unwrap_err();
    assert!(!err.retryable);
    assert!(err.message.contains("422"), "{}", err.message);
    assert!(
        err.message.contains("nil is not a string"),
        "{}",
        err.message
    );
    let details = err.details.unwrap();
    assert_eq!(details["status"], 422);
    assert!(details["body"]["message"].is_string());

    let err = run(
        config(addr, TOKEN),
        "github.dispatch",
        json!({"repo": "owner/missing"}),
    )
    .await
    .unwrap_err();
    assert!(!err.retryable);
    assert!(err.message.ends_with("Not Found"), "{}", err.message);
}

#[tokio::test]
async fn a_bad_token_is_permanent() {
    let (addr, _) = serve().await;
    let err = run(
        config(addr, "ghp_revoked"),
        "github.dispatch",
        json!({"repo": "owner/app"}),
    )
    .await
    .unwrap_err();
    assert!(!err.retryable);
    assert!(
        err.message.contains("401") && err.message.contains("Bad credentials"),
        "{}",
        err.message
    );
    assert!(!err.message.contains("ghp_revoked"));
}

#[tokio::test]
async fn rate_limits_are_retried_after_the_servers_delay() {
    let (addr, _) = serve().await;
    let err = run(
        config(addr, TOKEN),
        "github.dispatch",
        json!({"repo": "owner/limited"}),
    )
    .await
    .unwrap_err();
    assert!(err.retryable, "{}", err.message);
    let details = err.details.unwrap();
    assert_eq!(details["status"], 403);
    assert_eq!(details["retry_after_secs"], 60);
    assert!(
        err.message.contains("secondary rate limit"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn server_errors_and_refused_connections_are_retried() {
    let (addr, _) = serve().await;
    let err = run(
        config(addr, TOKEN),
        "github.dispatch",
        json!({"repo": "owner/broken"}),
    )
    .await
    .unwrap_err();
    assert!(err.retryable);
    assert_eq!(err.details.unwrap()["body"], "<html>Unicorn!</html>");

    // Nothing listens on port 1.
    let closed = DeployConfig {
        github_api_base: "http://127.0.0.1:1".into(),
        github_token: Some(TOKEN.into()),
        ..DeployConfig::default()
    };
    let err = run(closed, "github.dispatch", json!({"repo": "owner/app"}))
        .await
        .unwrap_err();
    assert!(err.retryable);
    assert_eq!(err.details.unwrap()["error"], "connect");
}

#[tokio::test]
async fn render_deploy_posts_the_services_hook() {
    let (addr, seen) = serve().await;
    let result = run(
        config(addr, TOKEN),
        "render.deploy",
        json!({"service": "web"}),
    )
    .await
    .unwrap();
    assert_eq!(result, json!({"deploy": {"id": "dep-d0b1f5"}}));
    let (path, _, query) = seen.last();
    assert_eq!(path, "/deploy/srv-web");
    assert_eq!(query["key"], HOOK_KEY);

    let hook_url = format!("http://{addr}/deploy/srv-other?key={HOOK_KEY}");
    let result = run(
        config(addr, TOKEN),
        "render.deploy",
        json!({"hook_url": hook_url}),
    )
    .await
    .unwrap();
    assert_eq!(result["deploy"]["id"], "dep-d0b1f5");
}

#[tokio::test]
async fn render_failures_keep_the_hook_key_out_of_the_error() {
    let (addr, _) = serve().await;
    let err = run(
        config(addr, TOKEN),
        "render.deploy",
        json!({"service": "down"}),
    )
    .await
    .unwrap_err();
    assert!(err.retryable);
    assert!(
        err.message.contains("`down`") && err.message.contains("503"),
        "{}",
        err.message
    );
    assert!(!err.message.contains(HOOK_KEY));

    let err = run(
        config(addr, TOKEN),
        "render.deploy",
        json!({"service": "badkey"}),
    )
    .await
    .unwrap_err();
    assert!(!err.retryable);
    assert_eq!(err.details.unwrap()["body"], "Unauthorized");

    let err = run(
        config(addr, TOKEN),
        "render.deploy",
        json!({"service": "gone"}),
    )
    .await
    .unwrap_err();
    assert!(!err.retryable);
    assert!(
        err.message.ends_with("service not found"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn payloads_are_checked_at_creation() {
    let (addr, _) = serve().await;
    let render = handler(config(addr, TOKEN), "render.deploy");
    let err = render.validate(&json!({"service": "nope"})).unwrap_err();
    assert!(err.contains("no deploy hook"), "{err}");
    assert!(render.validate(&json!({})).is_err());
    assert!(
        render
            .validate(&json!({"service": "web", "hook_url": "http://x/"}))
            .is_err()
    );
    assert!(render.validate(&json!({"hook_url": "ftp://x/"})).is_err());
    let github = handler(config(addr, TOKEN), "github.dispatch");
    assert!(github.validate(&json!({"repo": "not-a-repo"})).is_err());
    assert!(
        github
            .validate(&json!({"repo": "o/a", "workflow": "d.yml"}))
            .is_err()
    );
}

#[tokio::test]
async fn only_configured_task_types_are_registered() {
    let none = DeployAdapter::new(DeployConfig::default()).unwrap();
    assert!(none.task_types().is_empty());
    let github_only = DeployAdapter::new(DeployConfig {
        github_token: Some(TOKEN.into()),
        ..DeployConfig::default()
    })
    .unwrap();
    let mut registry = HandlerRegistry::default();
    github_only.register(&mut registry);
    assert_eq!(registry.types(), vec!["github.dispatch"]);
    let bad_hook = DeployAdapter::new(DeployConfig {
        render_deploy_hooks: BTreeMap::from([("web".into(), "not a url".into())]),
        ..DeployConfig::default()
    });
    assert!(bad_hook.is_err());
}
