//! `/v1/integrations` against the real binary: secrets are sealed at rest and never returned,
//! only admins reach the routes, the configuration file's integrations are listed with their
//! breakers, and a stored `llm` integration changes where `llm.generate` calls, at once and after
//! a restart, with the LLM replaced by a fake this test starts.

mod support;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::routing::post as route_post;
use mcp_core::integrations::IntegrationStore;
use mcp_persistence::{SqliteOptions, SqliteTaskStore};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use support::{Server, client, client_as, get, post};

const TOKEN: &str = "ghp_never_shown_0123456789";
const LLM_KEY: &str = "sk-stored-e2e-key";

async fn put(server: &Server, name: &str, body: Value) -> (u16, String) {
    let response = client()
        .put(server.url(&format!("/v1/integrations/{name}")))
        .json(&body)
        .send()
        .await
        .expect("PUT");
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

async fn text_of(server: &Server, path: &str) -> String {
    client()
        .get(server.url(path))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("body")
}

#[tokio::test]
async fn put_seals_secrets_and_never_returns_them() {
    let server = Server::start(&[]);
    let (status, text) = put(
        &server,
        "gh",
        json!({"kind": "github", "settings": {"api_base": "http://127.0.0.1:1"},
               "secrets": {"token": TOKEN}}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(!text.contains(TOKEN), "the reply shows the secret: {text}");
    let view: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(view["source"], "api");
    assert_eq!(view["kind"], "github");
    assert_eq!(view["secrets"], json!({"token": {"configured": true}}));
    assert_eq!(view["settings"]["api_base"], "http://127.0.0.1:1");

    for path in ["/v1/integrations", "/v1/integrations/gh", "/v1/audit"] {
        let text = text_of(&server, path).await;
        assert!(!text.contains(TOKEN), "{path} shows the secret: {text}");
    }
    let (_, audit) = get(&server, "/v1/audit?action=integration.updated").await;
    assert_eq!(audit["events"][0]["details"]["integration"], "gh");

    // At rest: sealed, bound to this integration and secret name.
    let store = SqliteTaskStore::open(
        &server.data_dir.join("mkww-mcp.db"),
        &SqliteOptions::default(),
    )
    .await
    .expect("open the server's database");
    let stored = store.integration("gh").await.unwrap().expect("stored");
    let sealed = &stored.secrets["token"];
    assert!(sealed.starts_with("v1."), "{sealed}");
    assert!(!sealed.contains(TOKEN));
    store.close().await;

    // A PUT without the secret keeps it; `null` removes it.
    let (status, text) = put(&server, "gh", json!({"kind": "github"})).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""token":{"configured":true}"#), "{text}");
    let (status, text) = put(
        &server,
        "gh",
        json!({"kind": "github", "secrets": {"token": null}}),
    )
    .await;
    // Without a token a github integration cannot work: refused, nothing changed.
    assert_eq!(status, 422, "{text}");

    let response = client()
        .delete(server.url("/v1/integrations/gh"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let (status, body) = get(&server, "/v1/integrations/gh").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "integration_not_found");
    let (_, audit) = get(&server, "/v1/audit?action=integration.deleted").await;
    assert_eq!(audit["events"][0]["details"]["integration"], "gh");
}

#[tokio::test]
async fn only_admins_reach_the_integration_routes() {
    let server = Server::start(&[]);
    for role in ["operator", "service", "user"] {
        let as_role = client_as(role, "not-admin");
        let list = as_role
            .get(server.url("/v1/integrations"))
            .send()
            .await
            .unwrap();
        assert_eq!(list.status().as_u16(), 403, "{role}");
        let put = as_role
            .put(server.url("/v1/integrations/llm"))
            .json(&json!({"kind": "llm", "secrets": {"api_key": LLM_KEY}}))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status().as_u16(), 403, "{role}");
        let delete = as_role
            .delete(server.url("/v1/integrations/llm"))
            .send()
            .await
            .unwrap();
        assert_eq!(delete.status().as_u16(), 403, "{role}");
    }
    let (_, list) = get(&server, "/v1/integrations").await;
    assert!(
        list["integrations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["source"] == "config"),
        "a refused PUT stored something: {list}"
    );
}

#[tokio::test]
async fn lists_the_config_files_integrations_with_health_and_breakers() {
    let server = Server::start(&[
        ("MCP_LLM_BASE_URL", "http://127.0.0.1:1/v1".into()),
        ("MCP_LLM_API_KEY", LLM_KEY.into()),
        ("MCP_GITHUB_TOKEN", TOKEN.into()),
    ]);
    let text = text_of(&server, "/v1/integrations").await;
    assert!(!text.contains(LLM_KEY) && !text.contains(TOKEN), "{text}");
    let list: Value = serde_json::from_str(&text).unwrap();
    let by_name = |name: &str| {
        list["integrations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {list}"))
    };
    let http = by_name("http");
    assert_eq!(http["source"], "config");
    assert_eq!(http["health"]["state"], "healthy");
    assert_eq!(http["breaker"]["state"], "closed");
    assert_eq!(
        http["breaker"]["task_types"],
        json!({"http.request": "closed"})
    );
    let llm = by_name("llm");
    assert_eq!(llm["settings"]["base_url"], "http://127.0.0.1:1/v1");
    assert_eq!(llm["secrets"], json!({"api_key": {"configured": true}}));
    assert_eq!(
        llm["breaker"]["task_types"],
        json!({"llm.generate": "closed"})
    );
    let github = by_name("github");
    assert_eq!(github["health"]["state"], "healthy");
    assert_eq!(
        github["breaker"]["task_types"],
        json!({"github.dispatch": "closed"})
    );

    // The file's integrations are read-only here.
    let response = client()
        .delete(server.url("/v1/integrations/llm"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 409);
}

/// Authorization headers the fake LLM received.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

async fn completions(State(seen): State<Seen>, headers: HeaderMap) -> Json<Value> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    seen.0.lock().unwrap().push(auth);
    Json(json!({
        "model": "fake",
        "choices": [{"message": {"role": "assistant", "content": "from the stored llm"},
                     "finish_reason": "stop"}],
    }))
}

#[tokio::test]
async fn a_stored_llm_integration_takes_effect_at_once_and_after_a_restart() {
    let seen = Seen::default();
    let app = Router::new()
        .route("/v1/chat/completions", route_post(completions))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // The file points the LLM nowhere; the stored integration points it at the fake.
    let mut server = Server::start(&[("MCP_LLM_BASE_URL", "http://127.0.0.1:1/v1".into())]);
    let (status, text) = put(
        &server,
        "llm",
        json!({"kind": "llm", "settings": {"base_url": fake, "model": "m"},
               "secrets": {"api_key": LLM_KEY}}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(!text.contains(LLM_KEY));
    assert!(text.contains(r#""applied":"live""#), "{text}");
    let (status, answer) = post(&server, "/ask-gemini", json!({"prompt": "hi"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["response"], "from the stored llm");
    assert_eq!(
        seen.0.lock().unwrap().as_slice(),
        [format!("Bearer {LLM_KEY}")]
    );

    // After a restart without any LLM in the file, the stored one still runs.
    server.terminate();
    let data_dir = server.data_dir.clone();
    drop(server);
    let server = Server::start_in(data_dir, &[]);
    let (status, answer) = post(&server, "/ask-gemini", json!({"prompt": "again"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["response"], "from the stored llm");
    let (_, llm) = get(&server, "/v1/integrations/llm").await;
    assert_eq!(llm["source"], "api");
    assert_eq!(llm["health"]["state"], "healthy");
}
