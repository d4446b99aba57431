//! The Model Context Protocol endpoint `/mcp`, against the real binary with the official Rust
//! SDK's client (rmcp): the protocol versions it answers, its tools, resources and prompts,
//! tasks run end to end through tools, the same visibility rules as REST, subscriptions fed by
//! the event bus, and the HTTP edge (401 challenge, protected-resource metadata, Host and
//! Origin checks).

mod support;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientConfig, ProgressNotificationParam, ProgressToken,
    ProtocolVersion, ReadResourceRequestParams, RequestMetaObject, ResourceContents,
    ServerNotification, SubscriptionFilter,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt, RoleClient, ServiceExt};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const TOOLS: [&str; 24] = [
    "append_message",
    "cancel_task",
    "cancel_workflow",
    "create_conversation",
    "create_schedule",
    "create_task",
    "create_workflow",
    "delete_schedule",
    "get_context",
    "get_schedule",
    "get_task",
    "get_workflow",
    "list_integrations",
    "list_queues",
    "list_routes",
    "list_schedules",
    "list_tasks",
    "list_workflows",
    "pause_schedule",
    "resume_schedule",
    "retry_task",
    "search_memory",
    "trigger_schedule",
    "wait_for_task",
];

/// A client that keeps the progress notifications it receives.
#[derive(Clone, Default)]
struct Recorder {
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
}

impl ClientHandler for Recorder {
    fn get_info(&self) -> ClientConfig {
        let mut config = ClientConfig::default();
        config.protocol_version = ProtocolVersion::V_2025_06_18;
        config
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().unwrap().push(params);
    }
}

/// rmcp's Streamable HTTP client transport to the server's `/mcp` (a macro: its HTTP client is
/// rmcp's own reqwest, a version this crate does not name).
macro_rules! transport {
    ($server:expr, $credential:expr) => {
        StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri($server.url("/mcp"))
                .auth_header($credential),
        )
    };
}

/// A client that opened with `initialize` at `version` (2025-06-18, 2025-11-25).
async fn legacy(
    server: &Server,
    credential: &str,
    version: ProtocolVersion,
) -> RunningService<RoleClient, ClientConfig> {
    let mut config = ClientConfig::default();
    config.protocol_version = version;
    config
        .serve(transport!(server, credential))
        .await
        .expect("initialize")
}

/// A client of 2026-07-28: `server/discover`, no handshake, no session.
async fn modern(server: &Server, credential: &str) -> RunningService<RoleClient, ClientConfig> {
    ClientConfig::default()
        .serve_with_lifecycle(
            transport!(server, credential),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("discover")
}

fn arguments(value: Value) -> serde_json::Map<String, Value> {
    value.as_object().cloned().expect("an object")
}

async fn call<S: rmcp::Service<RoleClient>>(
    client: &RunningService<RoleClient, S>,
    tool: &'static str,
    args: Value,
) -> CallToolResult {
    client
        .call_tool(CallToolRequestParams::new(tool).with_arguments(arguments(args)))
        .await
        .unwrap_or_else(|e| panic!("{tool}: {e}"))
}

/// The structured output of a successful call.
fn output(result: &CallToolResult) -> Value {
    assert_ne!(result.is_error, Some(true), "a tool error: {result:?}");
    result
        .structured_content
        .clone()
        .expect("structured content")
}

/// The API error a failed call carries.
fn tool_error(result: &CallToolResult) -> Value {
    assert_eq!(result.is_error, Some(true), "not a tool error: {result:?}");
    let text = result.content[0].as_text().expect("text").text.clone();
    serde_json::from_str::<Value>(&text).expect("JSON")["error"].clone()
}

#[tokio::test]
async fn answers_2025_06_18_2025_11_25_and_2026_07_28() {
    let server = Server::start(&[]);
    let credential = token("user", "versions");
    for version in [ProtocolVersion::V_2025_06_18, ProtocolVersion::V_2025_11_25] {
        let client = legacy(&server, &credential, version.clone()).await;
        let info = client.peer_info().expect("server info");
        assert_eq!(info.protocol_version, version);
        assert_eq!(
            info.server_info.as_ref().map(|i| i.name.as_str()),
            Some("mkww-mcp")
        );
        assert_eq!(
            client.list_all_tools().await.expect("tools").len(),
            TOOLS.len()
        );
        client.cancel().await.expect("close");
    }
    let client = modern(&server, &credential).await;
    assert_eq!(
        client.peer_info().expect("server info").protocol_version,
        ProtocolVersion::V_2026_07_28
    );
    assert_eq!(
        client.list_all_tools().await.expect("tools").len(),
        TOOLS.len()
    );
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn lists_its_tools_with_schemas_and_annotations_its_resource_templates_and_prompts() {
    let server = Server::start(&[]);
    let client = legacy(
        &server,
        &token("user", "lister"),
        ProtocolVersion::V_2025_06_18,
    )
    .await;
    let tools = client.list_all_tools().await.expect("tools");
    let names: BTreeSet<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names, TOOLS.into_iter().collect());
    for tool in &tools {
        assert_eq!(
            tool.input_schema.get("type"),
            Some(&json!("object")),
            "{}",
            tool.name
        );
        let output = tool
            .output_schema
            .as_ref()
            .unwrap_or_else(|| panic!("{}", tool.name));
        assert_eq!(output.get("type"), Some(&json!("object")), "{}", tool.name);
        let annotations = tool
            .annotations
            .as_ref()
            .unwrap_or_else(|| panic!("{}", tool.name));
        let reads = tool.name.starts_with("get_")
            || tool.name.starts_with("list_")
            || tool.name == "search_memory"
            || tool.name == "wait_for_task";
        assert_eq!(annotations.read_only_hint, Some(reads), "{}", tool.name);
    }
    let hint = |name: &str| {
        tools
            .iter()
            .find(|t| t.name == name)
            .and_then(|t| t.annotations.as_ref())
            .and_then(|a| a.destructive_hint)
    };
    assert_eq!(hint("cancel_task"), Some(true));
    assert_eq!(hint("create_task"), Some(false));
    assert_eq!(hint("delete_schedule"), Some(true));
    assert_eq!(hint("cancel_workflow"), Some(true));
    assert_eq!(hint("create_schedule"), Some(false));
    assert_eq!(hint("create_workflow"), Some(false));
    let create = tools.iter().find(|t| t.name == "create_schedule").unwrap();
    assert_eq!(
        create.input_schema["required"],
        json!(["name", "cron", "task"])
    );
    let create = tools.iter().find(|t| t.name == "create_workflow").unwrap();
    assert_eq!(create.input_schema["required"], json!(["name", "tasks"]));
    let create = tools.iter().find(|t| t.name == "create_task").unwrap();
    assert_eq!(create.input_schema["required"], json!(["type"]));

    let templates = client
        .list_all_resource_templates()
        .await
        .expect("templates");
    let uris: BTreeSet<&str> = templates.iter().map(|t| t.uri_template.as_str()).collect();
    assert_eq!(
        uris,
        BTreeSet::from(["mkww://tasks/{id}", "mkww://conversations/{id}"])
    );
    let prompts = client.list_all_prompts().await.expect("prompts");
    let names: BTreeSet<&str> = prompts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["summarize_conversation", "triage_failed_tasks"])
    );
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn creates_a_task_waits_for_it_with_progress_and_reads_it_back_succeeded() {
    let server = Server::start(&[]);
    let recorder = Recorder::default();
    let client = recorder
        .clone()
        .serve(transport!(&server, token("user", "alice")))
        .await
        .expect("initialize");

    let created = output(
        &call(
            &client,
            "create_task",
            json!({"type": "sleep", "payload": {"ms": 400}}),
        )
        .await,
    );
    assert_eq!(created["created"], true);
    assert_eq!(created["task"]["created_by"], "alice");
    let id = created["task"]["id"].as_str().expect("id").to_owned();

    let mut wait = CallToolRequestParams::new("wait_for_task")
        .with_arguments(arguments(json!({"id": id, "timeout_seconds": 30})));
    wait.meta = Some(RequestMetaObject::with_progress_token(ProgressToken(
        rmcp::model::NumberOrString::String("wait-1".into()),
    )));
    let waited = output(&client.call_tool(wait).await.expect("wait_for_task"));
    assert_eq!(waited["finished"], true);
    assert_eq!(waited["task"]["status"], "succeeded");
    let progress = recorder.progress.lock().unwrap().clone();
    assert!(
        progress
            .iter()
            .any(|p| p.message.as_deref() == Some("task.succeeded")),
        "the wait reports the task's transitions as progress: {progress:?}"
    );

    let read = output(&call(&client, "get_task", json!({"id": id})).await);
    assert_eq!(read["task"]["status"], "succeeded");
    assert_eq!(read["task"]["result"], json!({"slept_ms": 400}));
    // The resource says the same, and REST too.
    let resource = client
        .read_resource(ReadResourceRequestParams::new(format!("mkww://tasks/{id}")))
        .await
        .expect("read resource");
    let ResourceContents::TextResourceContents { text, .. } = &resource.contents[0] else {
        panic!("text contents: {resource:?}");
    };
    assert_eq!(
        serde_json::from_str::<Value>(text).unwrap()["status"],
        "succeeded"
    );
    let (status, task) = get(&server, &format!("/v1/tasks/{id}")).await;
    assert_eq!((status, task["status"].as_str()), (200, Some("succeeded")));

    let listed = output(&call(&client, "list_tasks", json!({"status": "succeeded"})).await);
    assert_eq!(listed["tasks"][0]["id"], id.as_str());
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn a_user_cannot_cancel_another_users_task_nor_see_the_queues() {
    let server = Server::start(&[]);
    let alice = legacy(
        &server,
        &token("user", "alice"),
        ProtocolVersion::V_2025_11_25,
    )
    .await;
    let bob = legacy(
        &server,
        &token("user", "bob"),
        ProtocolVersion::V_2025_11_25,
    )
    .await;
    let created = output(
        &call(
            &alice,
            "create_task",
            json!({"type": "sleep", "payload": {"ms": 30000}}),
        )
        .await,
    );
    let id = created["task"]["id"].as_str().expect("id").to_owned();

    // As over REST: a task one may not see does not exist for one.
    let refused = tool_error(&call(&bob, "cancel_task", json!({"id": id})).await);
    assert_eq!(refused["code"], "task_not_found", "{refused}");
    assert!(
        refused["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    let (_, task) = get(&server, &format!("/v1/tasks/{id}")).await;
    assert_ne!(task["status"], "cancelled", "bob's call changed nothing");
    let hidden = tool_error(&call(&bob, "get_task", json!({"id": id})).await);
    assert_eq!(hidden["code"], "task_not_found");
    // A permission the role lacks is refused as the guard refuses it.
    let queues = tool_error(&call(&bob, "list_queues", json!({})).await);
    assert_eq!(queues["code"], "forbidden", "{queues}");

    let cancelled = output(&call(&alice, "cancel_task", json!({"id": id})).await);
    assert_eq!(cancelled["task"]["status"], "cancelled");
    alice.cancel().await.expect("close");
    bob.cancel().await.expect("close");
}

#[tokio::test]
async fn an_admin_creates_a_schedule_triggers_it_and_its_task_succeeds() {
    let server = Server::start(&[]);
    let admin = modern(&server, &token("admin", "root")).await;

    let created = output(
        &call(
            &admin,
            "create_schedule",
            json!({
                "name": "nightly-report",
                "cron": "0 3 * * *",
                "timezone": "Europe/Paris",
                "task": {"type": "echo", "payload": {"report": "nightly"}},
            }),
        )
        .await,
    );
    assert_eq!(created["schedule"]["name"], "nightly-report", "{created}");
    assert_eq!(created["schedule"]["timezone"], "Europe/Paris");
    assert_eq!(created["schedule"]["paused"], false);
    assert!(created["schedule"]["next_fire_at"].is_string(), "{created}");
    let listed = output(&call(&admin, "list_schedules", json!({})).await);
    assert_eq!(listed["schedules"][0]["name"], "nightly-report", "{listed}");
    // The REST twin sees the same schedule.
    let (status, _) = get(&server, "/v1/schedules/nightly-report").await;
    assert_eq!(status, 200);

    let triggered = output(
        &call(
            &admin,
            "trigger_schedule",
            json!({"name": "nightly-report"}),
        )
        .await,
    );
    assert_eq!(triggered["task"]["type"], "echo", "{triggered}");
    let id = triggered["task"]["id"].as_str().expect("id").to_owned();
    let waited = output(
        &call(
            &admin,
            "wait_for_task",
            json!({"id": id, "timeout_seconds": 30}),
        )
        .await,
    );
    assert_eq!(waited["finished"], true, "{waited}");
    assert_eq!(waited["task"]["status"], "succeeded", "{waited}");
    assert_eq!(waited["task"]["result"], json!({"report": "nightly"}));

    let paused = output(&call(&admin, "pause_schedule", json!({"name": "nightly-report"})).await);
    assert_eq!(paused["schedule"]["paused"], true, "{paused}");
    let resumed = output(&call(&admin, "resume_schedule", json!({"name": "nightly-report"})).await);
    assert_eq!(resumed["schedule"]["paused"], false, "{resumed}");
    let read = output(&call(&admin, "get_schedule", json!({"name": "nightly-report"})).await);
    assert_eq!(read["schedule"]["paused"], false);

    // Invalid input carries the route's codes.
    let bad = tool_error(
        &call(
            &admin,
            "create_schedule",
            json!({"name": "bad", "cron": "not a cron", "task": {"type": "echo"}}),
        )
        .await,
    );
    assert_eq!(bad["code"], "invalid_cron", "{bad}");

    let deleted = output(&call(&admin, "delete_schedule", json!({"name": "nightly-report"})).await);
    assert_eq!(deleted["deleted"], "nightly-report");
    let gone = tool_error(&call(&admin, "get_schedule", json!({"name": "nightly-report"})).await);
    assert_eq!(gone["code"], "schedule_not_found", "{gone}");
    admin.cancel().await.expect("close");
}

#[tokio::test]
async fn a_user_may_not_create_or_list_schedules() {
    let server = Server::start(&[]);
    let user = legacy(
        &server,
        &token("user", "mallory"),
        ProtocolVersion::V_2025_11_25,
    )
    .await;
    let refused = tool_error(
        &call(
            &user,
            "create_schedule",
            json!({"name": "spam", "cron": "* * * * *", "task": {"type": "noop"}}),
        )
        .await,
    );
    assert_eq!(refused["code"], "forbidden", "{refused}");
    assert!(
        refused["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    let (status, _) = get(&server, "/v1/schedules/spam").await;
    assert_eq!(status, 404, "the refused call created nothing");
    let listed = tool_error(&call(&user, "list_schedules", json!({})).await);
    assert_eq!(listed["code"], "forbidden", "{listed}");
    user.cancel().await.expect("close");
}

/// The task of a workflow (as `get_workflow` returns it) with `key`.
fn workflow_task<'a>(workflow: &'a Value, key: &str) -> &'a Value {
    workflow["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["workflow_key"] == key)
        .unwrap_or_else(|| panic!("no task {key} in {workflow}"))
}

#[tokio::test]
async fn a_build_then_deploy_workflow_created_over_mcp_completes() {
    let server = Server::start(&[]);
    let alice = modern(&server, &token("user", "alice")).await;
    let created = output(
        &call(
            &alice,
            "create_workflow",
            json!({"name": "release", "tasks": [
                {"key": "build", "type": "echo", "payload": {"artifact": "v1.2"}},
                {"key": "deploy", "type": "collect", "depends_on": ["build"]},
            ]}),
        )
        .await,
    );
    let workflow = &created["workflow"];
    assert_eq!(workflow["status"], "running", "{created}");
    assert_eq!(workflow["created_by"], "alice");
    assert_eq!(workflow_task(workflow, "deploy")["status"], "waiting");
    let id = workflow["id"].as_str().expect("id").to_owned();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let done = loop {
        let read = output(&call(&alice, "get_workflow", json!({"id": id})).await);
        if read["workflow"]["status"] != "running" {
            break read["workflow"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the workflow never finished: {read}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(workflow_task(&done, "build")["status"], "succeeded");
    let deploy = workflow_task(&done, "deploy");
    assert_eq!(deploy["status"], "succeeded", "{done}");
    // The deploy ran after the build and was given its result.
    assert_eq!(
        deploy["result"],
        json!({"build": {"status": "succeeded", "result": {"artifact": "v1.2"}}})
    );
    let listed = output(&call(&alice, "list_workflows", json!({})).await);
    assert_eq!(listed["workflows"][0]["id"], id.as_str(), "{listed}");
    // A finished workflow cannot be cancelled, as over REST.
    let late = tool_error(&call(&alice, "cancel_workflow", json!({"id": id})).await);
    assert_eq!(late["code"], "workflow_already_finished", "{late}");
    alice.cancel().await.expect("close");
}

#[tokio::test]
async fn a_user_cannot_get_or_cancel_another_users_workflow() {
    let server = Server::start(&[]);
    let alice = modern(&server, &token("user", "alice")).await;
    let bob = modern(&server, &token("user", "bob")).await;
    let created = output(
        &call(
            &alice,
            "create_workflow",
            json!({"name": "slow", "tasks": [
                {"key": "wait", "type": "sleep", "payload": {"ms": 30000}},
                {"key": "after", "type": "noop", "depends_on": ["wait"]},
            ]}),
        )
        .await,
    );
    let id = created["workflow"]["id"].as_str().expect("id").to_owned();

    // As over REST: a workflow one may not see does not exist for one.
    let hidden = tool_error(&call(&bob, "get_workflow", json!({"id": id})).await);
    assert_eq!(hidden["code"], "workflow_not_found", "{hidden}");
    let refused = tool_error(&call(&bob, "cancel_workflow", json!({"id": id})).await);
    assert_eq!(refused["code"], "workflow_not_found", "{refused}");
    let listed = output(&call(&bob, "list_workflows", json!({})).await);
    assert_eq!(listed["workflows"], json!([]), "{listed}");
    let (_, still) = get(&server, &format!("/v1/workflows/{id}")).await;
    assert_eq!(still["status"], "running", "bob's calls changed nothing");

    let cancelled = output(&call(&alice, "cancel_workflow", json!({"id": id})).await);
    assert_eq!(
        workflow_task(&cancelled["workflow"], "after")["status"],
        "cancelled",
        "{cancelled}"
    );
    alice.cancel().await.expect("close");
    bob.cancel().await.expect("close");
}

#[tokio::test]
async fn a_resource_subscription_hears_of_changes_from_the_event_bus() {
    let server = Server::start(&[]);
    let client = modern(&server, &token("user", "watcher")).await;
    let conversation =
        output(&call(&client, "create_conversation", json!({"title": "watched"})).await);
    let conversation_id = conversation["conversation"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let task = output(
        &call(
            &client,
            "create_task",
            json!({"type": "echo", "payload": {}, "delay_ms": 2000}),
        )
        .await,
    );
    let task_uri = format!("mkww://tasks/{}", task["task"]["id"].as_str().unwrap());
    let conversation_uri = format!("mkww://conversations/{conversation_id}");
    let mut subscription = client
        .listen(
            SubscriptionFilter::builder()
                .resource_subscription(task_uri.clone())
                .resource_subscription(conversation_uri.clone())
                .build(),
        )
        .await
        .expect("listen");

    // Messages added through another client, over REST: the subscription hears of them. The
    // SDK acknowledges `subscriptions/listen` just before the server's handler subscribes to the
    // bus, so a change in that instant may go unheard: the test writes until one is heard.
    let mut updated = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while updated.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "updates so far: {updated:?}"
        );
        if !updated.contains(&conversation_uri) {
            let (status, _) = post(
                &server,
                &format!("/v1/conversations/{conversation_id}/messages"),
                json!({"content": "hello"}),
            )
            .await;
            assert_eq!(status, 201);
        }
        if let Ok(next) =
            tokio::time::timeout(Duration::from_millis(500), subscription.next()).await
            && let Some(ServerNotification::ResourceUpdatedNotification(update)) =
                next.expect("subscription")
        {
            updated.insert(update.params.uri);
        }
    }
    assert_eq!(updated, BTreeSet::from([task_uri, conversation_uri]));
    subscription.cancel().await.expect("unsubscribe");
    client.cancel().await.expect("close");
}

fn initialize_body() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
           "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                      "clientInfo": {"name": "raw", "version": "0"}}})
}

async fn raw_post(server: &Server, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(server.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&initialize_body());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("POST /mcp")
}

#[tokio::test]
async fn without_credentials_answers_401_naming_the_protected_resource_metadata() {
    let server = Server::start(&[]);
    let response = raw_post(&server, &[]).await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        format!(
            "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource\"",
            server.base
        )
        .as_str()
    );
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "unauthenticated");
    assert!(body["error"]["request_id"].is_string());
    // A bad credential too.
    let response = raw_post(&server, &[("authorization", "Bearer nope")]).await;
    assert_eq!(response.status(), 401);
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("resource_metadata=")
    );
    // And rmcp's client cannot get in.
    let mut config = ClientConfig::default();
    config.protocol_version = ProtocolVersion::V_2025_06_18;
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(server.url("/mcp")),
    );
    assert!(config.serve(transport).await.is_err());
}

#[tokio::test]
async fn serves_the_rfc_9728_protected_resource_metadata() {
    let server = Server::start(&[]);
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let response = reqwest::get(server.url(path)).await.expect("GET");
        assert_eq!(response.status(), 200, "{path}");
        let document: Value = response.json().await.expect("JSON");
        assert_eq!(document["resource"], format!("{}/mcp", server.base));
        assert_eq!(document["bearer_methods_supported"], json!(["header"]));
        assert_eq!(document["resource_name"], "MKWW MCP");
        // The hub is no OAuth authorization server: it names none.
        assert!(
            document.get("authorization_servers").is_none(),
            "{document}"
        );
    }
    let configured = Server::start(&[("MCP_MCP_PUBLIC_URL", "https://hub.example.com".into())]);
    let (_, document) = get(&configured, "/.well-known/oauth-protected-resource").await;
    assert_eq!(document["resource"], "https://hub.example.com/mcp");
    let response = raw_post(&configured, &[]).await;
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer resource_metadata=\"https://hub.example.com/.well-known/oauth-protected-resource\""
    );
}

#[tokio::test]
async fn refuses_a_foreign_origin_and_a_foreign_host() {
    let server = Server::start(&[(
        "MCP_MCP_ALLOWED_ORIGINS",
        r#"["https://app.example.com"]"#.into(),
    )]);
    let credential = format!("Bearer {}", token("admin", "edge"));
    let auth = ("authorization", credential.as_str());

    let response = raw_post(&server, &[auth, ("origin", "https://evil.example")]).await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "origin_not_allowed");

    // DNS rebinding: a name that resolves here but is not ours.
    let response = raw_post(&server, &[auth, ("host", "evil.example")]).await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "host_not_allowed");
    // Refused before authentication: the credential is not needed to learn nothing.
    let response = raw_post(&server, &[("host", "evil.example")]).await;
    assert_eq!(response.status(), 403);

    // The listed origin, and no origin at all (not a browser), pass.
    for headers in [
        vec![auth, ("origin", "https://app.example.com")],
        vec![auth],
    ] {
        let response = raw_post(&server, &headers).await;
        assert_eq!(response.status(), 200, "{headers:?}");
    }
    // Other hosts are allowed once configured.
    let open = Server::start(&[(
        "MCP_MCP_ALLOWED_HOSTS",
        r#"["hub.example.com", "127.0.0.1"]"#.into(),
    )]);
    let response = raw_post(&open, &[auth, ("host", "hub.example.com")]).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn http_refusals_outside_mcp_framing_are_json_errors() {
    let server = Server::start(&[]);
    let client = client_as("user", "edge");
    // No sessions, so no session stream to GET and none to DELETE.
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let response = client
            .request(method.clone(), server.url("/mcp"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 405, "{method}");
        assert_eq!(response.headers()["allow"], "POST");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["error"]["code"], "method_not_allowed", "{method}");
        assert!(body["error"]["request_id"].is_string());
    }
    // A POST that does not accept an event stream.
    let response = client
        .post(server.url("/mcp"))
        .header("accept", "application/json")
        .json(&initialize_body())
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 406);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "not_acceptable");
}

#[tokio::test]
async fn prompts_are_filled_from_the_hubs_data() {
    let server = Server::start(&[]);
    let client = legacy(
        &server,
        &token("operator", "triager"),
        ProtocolVersion::V_2025_06_18,
    )
    .await;
    let conversation =
        output(&call(&client, "create_conversation", json!({"title": "standup"})).await);
    let id = conversation["conversation"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    output(
        &call(
            &client,
            "append_message",
            json!({"conversation_id": id, "content": "the deploy is blocked on review"}),
        )
        .await,
    );
    let prompt = client
        .get_prompt(
            rmcp::model::GetPromptRequestParams::new("summarize_conversation")
                .with_arguments(arguments(json!({"conversation_id": id}))),
        )
        .await
        .expect("prompt");
    let text = prompt.messages[0]
        .content
        .as_text()
        .expect("text")
        .text
        .clone();
    assert!(text.contains("the deploy is blocked on review"), "{text}");

    let failing = output(
        &call(
            &client,
            "create_task",
            json!({"type": "fail", "payload": {"times": 5}, "max_attempts": 1}),
        )
        .await,
    );
    let failed_id = failing["task"]["id"].as_str().unwrap().to_owned();
    output(&call(&client, "wait_for_task", json!({"id": failed_id})).await);
    let prompt = client
        .get_prompt(rmcp::model::GetPromptRequestParams::new(
            "triage_failed_tasks",
        ))
        .await
        .expect("prompt");
    let text = prompt.messages[0]
        .content
        .as_text()
        .expect("text")
        .text
        .clone();
    assert!(text.contains(&failed_id), "{text}");

    let searched = output(&call(&client, "search_memory", json!({"query": "deploy"})).await);
    assert_eq!(searched["messages"][0]["conversation_id"], id.as_str());
    let window = output(&call(&client, "get_context", json!({"conversation_id": id})).await);
    assert_eq!(
        window["context"]["messages"][0]["content"],
        "the deploy is blocked on review"
    );
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn any_node_of_a_cluster_answers_and_subscriptions_hear_the_other_nodes() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let Some(redis) = redis_url().await else {
        return;
    };
    let mut env = schema.env();
    env.extend([
        ("MCP_REDIS_URL", redis),
        (
            "MCP_REDIS_PREFIX",
            format!("mcp-mcp-{}", uuid::Uuid::new_v4().simple()),
        ),
    ]);
    let worker = Server::start(&env);
    // An API-only node: every task created through it runs on the other one.
    let mut api_only = env.clone();
    api_only.push(("MCP_WORKER_CONCURRENCY", "0".into()));
    let front = Server::start(&api_only);
    let credential = token("user", "clustered");
    let on_front = modern(&front, &credential).await;
    let on_worker = legacy(&worker, &credential, ProtocolVersion::V_2025_06_18).await;

    let created = output(
        &call(
            &on_front,
            "create_task",
            json!({"type": "echo", "payload": {"n": 1}, "delay_ms": 2000}),
        )
        .await,
    );
    let id = created["task"]["id"].as_str().unwrap().to_owned();
    let uri = format!("mkww://tasks/{id}");
    let mut subscription = on_front
        .listen(
            SubscriptionFilter::builder()
                .resource_subscription(uri.clone())
                .build(),
        )
        .await
        .expect("listen");
    // The other node sees the task at once, and runs it.
    let seen = output(&call(&on_worker, "get_task", json!({"id": id})).await);
    assert_eq!(seen["task"]["created_by"], "clustered");
    let waited = output(
        &call(
            &on_worker,
            "wait_for_task",
            json!({"id": id, "timeout_seconds": 20}),
        )
        .await,
    );
    assert_eq!(waited["task"]["status"], "succeeded");
    // The front node's subscription heard of it through the shared bus.
    let update = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match subscription.next().await.expect("subscription") {
                Some(ServerNotification::ResourceUpdatedNotification(update)) => {
                    return update.params.uri;
                }
                Some(_) => {}
                None => panic!("the subscription ended"),
            }
        }
    })
    .await
    .expect("an update from the other node");
    assert_eq!(update, uri);
    let read = output(&call(&on_front, "get_task", json!({"id": id})).await);
    assert_eq!(read["task"]["status"], "succeeded");
    subscription.cancel().await.expect("unsubscribe");
    on_front.cancel().await.expect("close");
    on_worker.cancel().await.expect("close");
    schema.drop_schema().await;
}
