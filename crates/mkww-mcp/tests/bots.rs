//! The existing bots' routes against the real binary: `POST /deploy` and `POST /ask-gemini`,
//! with GitHub, Render and the LLM replaced by fakes this test starts, named in the server's
//! `mkww-mcp.toml`.

mod support;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post as route_post;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Server, client_with, get, is_final, post, temp_dir, wait_for};

const GITHUB_TOKEN: &str = "ghp_e2e_token";
const LLM_KEY: &str = "sk-e2e";

/// Every request the fakes received: path, authorization header, JSON body.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, String, Value)>>>);

impl Seen {
    fn paths(&self) -> Vec<String> {
        self.0.lock().unwrap().iter().map(|r| r.0.clone()).collect()
    }
}

fn authorization(headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn github(
    State(seen): State<Seen>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let auth = authorization(&headers);
    seen.0.lock().unwrap().push((
        format!("/repos/{owner}/{repo}/dispatches"),
        auth.clone(),
        body,
    ));
    if auth != format!("Bearer {GITHUB_TOKEN}") {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Bad credentials"})),
        )
            .into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn render(State(seen): State<Seen>, Path(service): Path<String>) -> Json<Value> {
    seen.0
        .lock()
        .unwrap()
        .push((format!("/deploy/{service}"), String::new(), Value::Null));
    Json(json!({"deploy": {"id": "dep-e2e"}}))
}

/// An OpenAI-compatible endpoint: `hang` never answers in time, `refuse` is a 400.
async fn completions(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let auth = authorization(&headers);
    seen.0
        .lock()
        .unwrap()
        .push(("/chat/completions".into(), auth.clone(), body.clone()));
    if auth != format!("Bearer {LLM_KEY}") {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"message": "bad key"}})),
        )
            .into_response();
    }
    let prompt = body["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    match prompt.as_str() {
        "hang" => {
            tokio::time::sleep(Duration::from_secs(20)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        "refuse" => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": "prompt blocked by safety settings"}})),
        )
            .into_response(),
        _ => Json(json!({
            "model": body["model"],
            "choices": [{"message": {"role": "assistant", "content": format!("answer to {prompt}")}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
        }))
        .into_response(),
    }
}

/// GitHub under `/github`, Render under `/render`, the LLM under `/llm/v1`.
async fn fakes() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route(
            "/github/repos/{owner}/{repo}/dispatches",
            route_post(github),
        )
        .route("/render/deploy/{service}", route_post(render))
        .route("/llm/v1/chat/completions", route_post(completions))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// A server whose integrations point at the fakes.
fn start(addr: SocketAddr) -> Server {
    let dir = temp_dir();
    let config = format!(
        r#"
github_api_base = "http://{addr}/github"
github_token = "{GITHUB_TOKEN}"
llm_base_url = "http://{addr}/llm/v1"
llm_model = "gemini-e2e"
llm_api_key = "{LLM_KEY}"
llm_timeout_ms = 30000
ask_timeout_ms = 1500
task_max_attempts = 1

[render_deploy_hooks]
web = "http://{addr}/render/deploy/srv-web?key=hook-key"

[deploy_targets]
"owner/app" = [
  {{ kind = "github", event_type = "deploy" }},
  {{ kind = "render", service = "web" }},
]
"#
    );
    std::fs::write(dir.join("mkww-mcp.toml"), config).unwrap();
    Server::start_in(dir, &[])
}

/// A `service` API key, as the bots use.
async fn service_key(server: &Server) -> reqwest::Client {
    let (status, created) = post(
        server,
        "/v1/api-keys",
        json!({"name": "deploy-bot", "role": "service"}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    client_with(created["key"].as_str().unwrap())
}

async fn send(client: &reqwest::Client, server: &Server, path: &str, body: Value) -> (u16, Value) {
    let response = client
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn deploy_enqueues_every_target_of_the_repo() {
    let (addr, seen) = fakes().await;
    let server = start(addr);
    let bot = service_key(&server).await;

    let (status, body) = send(&bot, &server, "/deploy", json!({"repo": "owner/app"})).await;
    assert_eq!(status, 202, "{body}");
    let ids: Vec<String> = body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2);

    let github = wait_for(&server, &ids[0], is_final).await;
    assert_eq!(github["status"], "succeeded", "{github}");
    assert_eq!(github["type"], "github.dispatch");
    assert_eq!(github["result"]["status"], 204);
    let render = wait_for(&server, &ids[1], is_final).await;
    assert_eq!(render["status"], "succeeded", "{render}");
    assert_eq!(render["result"], json!({"deploy": {"id": "dep-e2e"}}));

    let requests = seen.0.lock().unwrap().clone();
    let dispatch = requests
        .iter()
        .find(|r| r.0 == "/repos/owner/app/dispatches")
        .expect("GitHub got the dispatch");
    assert_eq!(dispatch.1, format!("Bearer {GITHUB_TOKEN}"));
    assert_eq!(
        dispatch.2,
        json!({"event_type": "deploy", "client_payload": {"repo": "owner/app"}})
    );
    assert!(seen.paths().contains(&"/deploy/srv-web".to_owned()));
}

#[tokio::test]
async fn deploy_refuses_unknown_repos_and_anonymous_callers() {
    let (addr, seen) = fakes().await;
    let server = start(addr);
    let bot = service_key(&server).await;
    let (status, body) = send(&bot, &server, "/deploy", json!({"repo": "owner/other"})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "unknown_repo");
    let (status, body) = send(&bot, &server, "/deploy", json!({})).await;
    assert_eq!(status, 422, "{body}");

    let anonymous = reqwest::Client::new();
    let (status, body) = send(&anonymous, &server, "/deploy", json!({"repo": "owner/app"})).await;
    assert_eq!(status, 401, "{body}");
    assert!(seen.paths().is_empty());
}

#[tokio::test]
async fn ask_gemini_answers_with_the_llms_text() {
    let (addr, seen) = fakes().await;
    let server = start(addr);
    let bot = service_key(&server).await;
    let (status, body) = send(&bot, &server, "/ask-gemini", json!({"prompt": "hello"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"response": "answer to hello"}));
    let requests = seen.0.lock().unwrap().clone();
    let (_, auth, sent) = requests.last().unwrap();
    assert_eq!(auth, &format!("Bearer {LLM_KEY}"));
    assert_eq!(sent["model"], "gemini-e2e");

    // The task is kept in the history.
    let (_, page) = get(&server, "/v1/tasks?type=llm.generate").await;
    let task = &page["tasks"][0];
    assert_eq!(task["status"], "succeeded");
    assert_eq!(task["result"]["text"], "answer to hello");
}

#[tokio::test]
async fn ask_gemini_times_out_with_the_task_id() {
    let (addr, _) = fakes().await;
    let server = start(addr);
    let bot = service_key(&server).await;
    let started = std::time::Instant::now();
    let (status, body) = send(&bot, &server, "/ask-gemini", json!({"prompt": "hang"})).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "llm_timeout");
    assert!(started.elapsed() < Duration::from_secs(10));
    let id = body["error"]["details"]["task_id"].as_str().unwrap();
    let (status, task) = get(&server, &format!("/v1/tasks/{id}")).await;
    assert_eq!(status, 200, "{task}");
    assert_eq!(task["type"], "llm.generate");
}

#[tokio::test]
async fn ask_gemini_reports_a_dead_task_as_bad_gateway() {
    let (addr, _) = fakes().await;
    let server = start(addr);
    let bot = service_key(&server).await;
    let (status, body) = send(&bot, &server, "/ask-gemini", json!({"prompt": "refuse"})).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "llm_failed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("blocked by safety settings"), "{message}");
    assert_eq!(body["error"]["details"]["status"], "dead");

    let (status, body) = send(&bot, &server, "/ask-gemini", json!({"prompt": ""})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_payload");
}

#[tokio::test]
async fn unconfigured_integrations_are_unknown_task_types() {
    let server = Server::start(&[(
        "MCP_DEPLOY_TARGETS",
        r#"{"owner/app"=[{kind="github",event_type="deploy"}]}"#.to_owned(),
    )]);
    let (status, body) = post(&server, "/ask-gemini", json!({"prompt": "hello"})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "unknown_task_type");
    let (status, body) = post(&server, "/deploy", json!({"repo": "owner/app"})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "unknown_task_type");
    assert_eq!(body["error"]["details"]["type"], "github.dispatch");
}
