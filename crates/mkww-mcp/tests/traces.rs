//! Traces end to end: two real nodes on one PostgreSQL schema export their spans over OTLP/HTTP
//! to a receiver in this test, which decodes the protobuf (`ExportTraceServiceRequest`). A task
//! created on the first node (which runs nothing: `worker_concurrency = 0`) with an incoming
//! `traceparent` runs on the second, and its webhook delivery reaches a local target: the spans
//! form one tree, from the caller's span through `POST /v1/tasks`, `task.create`, the run on the
//! other process and the delivery's task, to the outgoing request, whose `traceparent` header
//! names the client span that sent it.

mod support;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post as route_post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use rand::RngCore;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{PgSchema, Server, client, connect, get, next, post, request, token};

/// One span as the receiver decoded it.
#[derive(Debug, Clone)]
struct Span {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    /// The exporting process (`service.instance.id`).
    process: String,
    attributes: BTreeMap<String, String>,
}

fn text(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

type Spans = Arc<Mutex<Vec<Span>>>;

/// The OTLP/HTTP receiver: `POST /v1/traces` with `application/x-protobuf`.
async fn collect(State(spans): State<Spans>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let protobuf = headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes() == b"application/x-protobuf");
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    if !protobuf {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE;
    }
    let mut got = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let process = resource
            .get("service.instance.id")
            .cloned()
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                got.push(Span {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    name: span.name,
                    process: process.clone(),
                    attributes: attributes(&span.attributes),
                });
            }
        }
    }
    StatusCode::OK
}

async fn start_collector() -> (Spans, SocketAddr) {
    let spans = Spans::default();
    let app = Router::new()
        .route("/v1/traces", route_post(collect))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (spans, addr)
}

/// `(traceparent header, event body)` of each delivery the webhook target got.
type Deliveries = Arc<Mutex<Vec<(String, Value)>>>;

async fn deliver(State(seen): State<Deliveries>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    seen.lock().unwrap().push((traceparent, body));
    StatusCode::NO_CONTENT
}

async fn start_target() -> (Deliveries, SocketAddr) {
    let seen = Deliveries::default();
    let app = Router::new()
        .route("/hook", route_post(deliver))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (seen, addr)
}

/// Polls `found` until it returns something, for at most `limit`.
async fn eventually<T>(what: &str, limit: Duration, mut found: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = found() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The spans of one trace as an indented tree, children under their parent, in arrival order.
fn tree(spans: &[Span], root_parent: &str, processes: &[(&str, &str)]) -> String {
    fn walk(
        spans: &[Span],
        parent: &str,
        depth: usize,
        processes: &[(&str, &str)],
        out: &mut String,
    ) {
        for span in spans.iter().filter(|s| s.parent == parent) {
            let node = processes
                .iter()
                .find(|(id, _)| *id == span.process)
                .map_or("?", |(_, name)| *name);
            let detail: Vec<String> = [
                "http.route",
                "http.response.status_code",
                "task.type",
                "event.type",
                "url.full",
                "mcp.ws.op",
            ]
            .iter()
            .filter_map(|key| span.attributes.get(*key).map(|v| format!("{key}={v}")))
            .collect();
            let _ = writeln!(
                out,
                "{}{} [{}] span={} {}",
                "  ".repeat(depth),
                span.name,
                node,
                span.span_id,
                detail.join(" ")
            );
            walk(spans, &span.span_id, depth + 1, processes, out);
        }
    }
    let mut out = String::new();
    walk(spans, root_parent, 0, processes, &mut out);
    out
}

fn master_key() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    STANDARD.encode(key)
}

#[tokio::test]
async fn one_trace_runs_from_the_request_through_another_node_to_the_webhook_delivery() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let (spans, collector) = start_collector().await;
    let (deliveries, target) = start_target().await;
    let mut env = schema.env();
    env.extend([
        ("MCP_MASTER_KEY", master_key()),
        ("MCP_WEBHOOKS_ALLOW_PRIVATE", "true".to_owned()),
        ("MCP_WEBHOOK_OUTBOX_REFRESH_MS", "200".to_owned()),
        ("MCP_WEBHOOK_OUTBOX_POLL_MS", "200".to_owned()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}")),
        ("OTEL_SERVICE_NAME", "mkww-mcp-test".to_owned()),
        // Spans leave every 100 ms instead of every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ]);
    let mut api_only = env.clone();
    api_only.push(("MCP_WORKER_CONCURRENCY", "0".to_owned()));
    let a = Server::start(&api_only);
    // Each attempt's end is logged inside its span at debug level.
    let mut runner = env.clone();
    runner.push((
        "MCP_LOG_LEVEL",
        "info,mcp_core::orchestrator::worker=debug".to_owned(),
    ));
    let b = Server::start(&runner);

    let (status, body) = post(
        &a,
        "/v1/webhooks",
        json!({"url": format!("http://{target}/hook"), "events": ["task.succeeded"]}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // Both nodes' dispatchers learn of the webhook at their next refresh (200 ms here).
    tokio::time::sleep(Duration::from_millis(600)).await;

    // The caller's own span: the trace is the caller's, and its span the root's parent.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let response = client()
        .post(a.url("/v1/tasks"))
        .header("traceparent", format!("00-{trace_id}-{caller}-01"))
        .json(&json!({"type": "echo", "payload": {"hello": "trace"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let task: Value = response.json().await.unwrap();
    let task_id = task["id"].as_str().unwrap().to_owned();
    // The task JSON shows the trace it belongs to.
    assert_eq!(task["trace_id"], trace_id, "{task}");
    let (_, fetched) = get(&b, &format!("/v1/tasks/{task_id}")).await;
    assert_eq!(fetched["trace_id"], trace_id, "{fetched}");

    // The delivery of `task.succeeded` carries the trace to the target.
    let (header, event) = eventually("the webhook delivery", Duration::from_secs(30), || {
        deliveries
            .lock()
            .unwrap()
            .iter()
            .find(|(_, body)| body["data"]["id"] == task_id.as_str())
            .cloned()
    })
    .await;
    assert_eq!(event["type"], "task.succeeded");
    assert_eq!(event["data"]["trace_id"], trace_id);
    let parts: Vec<&str> = header.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {header:?}");
    assert_eq!(
        parts[1], trace_id,
        "the delivery continues the task's trace"
    );
    let sender = parts[2].to_owned();

    // Every span of the chain reaches the receiver, linked parent to child.
    let find = |name: &str, parent: &str| {
        spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.name == name && s.parent == parent)
            .cloned()
    };
    let limit = Duration::from_secs(20);
    let request = eventually("POST /v1/tasks's span", limit, || {
        find("POST /v1/tasks", caller)
    })
    .await;
    let created = eventually("task.create", limit, || {
        find("task.create", &request.span_id)
    })
    .await;
    let run = eventually("the echo task's run", limit, || {
        find("task.run", &created.span_id)
    })
    .await;
    let dispatch = eventually("webhook.dispatch", limit, || {
        find("webhook.dispatch", &created.span_id)
    })
    .await;
    let delivery_created = eventually("the delivery's task.create", limit, || {
        find("task.create", &dispatch.span_id)
    })
    .await;
    let delivery_run = eventually("the delivery's run", limit, || {
        find("task.run", &delivery_created.span_id)
    })
    .await;
    let outgoing = eventually("the outgoing request's span", limit, || {
        find("POST", &delivery_run.span_id)
    })
    .await;

    let all: Vec<Span> = spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.trace_id == trace_id)
        .cloned()
        .collect();
    let processes = [
        (request.process.as_str(), "node A"),
        (run.process.as_str(), "node B"),
    ];
    let printed = tree(&all, caller, &processes);
    // Straight to stderr: libtest hides what `eprintln!` prints in a passing test.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "trace {trace_id} as received (caller span {caller}):\n{printed}"
    );

    for span in [
        &request,
        &created,
        &run,
        &dispatch,
        &delivery_created,
        &delivery_run,
        &outgoing,
    ] {
        assert_eq!(span.trace_id, trace_id, "{span:?}");
    }
    // The request's span speaks HTTP's semantic conventions.
    assert_eq!(request.attributes["http.request.method"], "POST");
    assert_eq!(request.attributes["http.route"], "/v1/tasks");
    assert_eq!(request.attributes["url.path"], "/v1/tasks");
    assert_eq!(request.attributes["http.response.status_code"], "201");
    assert_eq!(created.attributes["task.id"], task_id);
    // The run happened in the other process.
    assert_ne!(request.process, run.process, "node A runs nothing");
    assert_eq!(run.attributes["task.type"], "echo");
    assert_eq!(delivery_run.attributes["task.type"], "webhook.deliver");
    assert_eq!(delivery_run.process, run.process);
    // The header the target got names the client span that sent it.
    assert_eq!(outgoing.span_id, sender);
    assert_eq!(outgoing.attributes["http.request.method"], "POST");
    assert_eq!(outgoing.attributes["http.response.status_code"], "204");
    assert!(
        outgoing.attributes["url.full"].ends_with("/hook"),
        "{outgoing:?}"
    );

    // Log lines written inside a traced span carry its ids.
    let logged = b
        .log_lines()
        .into_iter()
        .chain(a.log_lines())
        .find(|line| line["trace_id"] == trace_id);
    assert!(
        logged.as_ref().is_some_and(|l| l["span_id"].is_string()),
        "no log line carries the trace: {logged:?}"
    );

    drop((a, b));
    schema.drop_schema().await;
}

#[tokio::test]
async fn an_external_worker_receives_the_trace_of_a_task_created_over_the_websocket() {
    let (spans, collector) = start_collector().await;
    let server = Server::start(&[
        ("MCP_WORKER_TASK_TYPES", "[\"trace.job\"]".to_owned()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}")),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ]);
    let mut worker = connect(&server, Some(&token("service", "trace-worker"))).await;
    let reply = request(
        &mut worker,
        json!({"id": "reg", "op": "worker.register", "types": ["trace.job"], "concurrency": 1}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");

    let mut creator = connect(&server, Some(&token("admin", "trace-client"))).await;
    let reply = request(
        &mut creator,
        json!({"id": 1, "op": "task.create", "task": {"type": "trace.job"}}),
    )
    .await;
    let task = &reply["result"]["task"];
    let trace_id = task["trace_id"]
        .as_str()
        .expect("the task shows its trace")
        .to_owned();
    let task_id = task["id"].as_str().unwrap().to_owned();

    let assign = loop {
        let frame = next(&mut worker).await;
        if frame["op"] == "task.assign" {
            break frame;
        }
    };
    assert_eq!(assign["task"]["id"], task_id.as_str());
    let traceparent = assign["traceparent"]
        .as_str()
        .expect("task.assign carries the trace");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1], trace_id);
    let reply = request(
        &mut worker,
        json!({"id": 2, "op": "task.complete", "task_id": task_id, "result": {}}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");

    // The op's span starts the trace; the worker's context is the task's `task.create`, and the
    // node's wait for the worker's outcome is the run.
    let find = |name: &str, parent: &str| {
        spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.name == name && s.parent == parent && s.trace_id == trace_id)
            .cloned()
    };
    let limit = Duration::from_secs(20);
    let op = eventually("the op's span", limit, || find("ws task.create", "")).await;
    assert_eq!(op.attributes["mcp.ws.op"], "task.create");
    let created = eventually("task.create", limit, || find("task.create", &op.span_id)).await;
    assert_eq!(
        created.span_id, parts[2],
        "task.assign names the creating span"
    );
    let run = eventually("the remote run", limit, || {
        find("task.run", &created.span_id)
    })
    .await;
    assert_eq!(run.attributes["task.type"], "trace.job");
}

#[tokio::test]
async fn without_otel_variables_nothing_is_traced() {
    let server = Server::start(&[]);
    let response = client()
        .post(server.url("/v1/tasks"))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&json!({"type": "noop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let task: Value = response.json().await.unwrap();
    assert!(task.get("trace_id").is_none(), "{task}");
    assert!(
        server
            .log_lines()
            .iter()
            .all(|line| line.get("trace_id").is_none())
    );
}

#[tokio::test]
async fn docs_serve_the_api_reference_from_the_binary() {
    let server = Server::start(&[]);
    let anonymous = reqwest::Client::new();
    let page = anonymous.get(server.url("/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200, "/docs leads to the page");
    assert_eq!(page.url().path(), "/docs/");
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(!policy.contains("unsafe-eval"), "{policy}");
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    // No script on a CDN, and none inline (the policy would block it).
    assert!(!html.contains("https://"), "{html}");
    assert!(!html.contains("<script>"), "{html}");

    for (file, kind, needle) in [
        ("swagger-ui-bundle.js", "javascript", "SwaggerUI"),
        ("swagger-initializer.js", "javascript", "/openapi.json"),
        ("swagger-ui.css", "text/css", ".swagger-ui"),
    ] {
        let response = anonymous
            .get(server.url(&format!("/docs/{file}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{file}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(content_type.contains(kind), "{file}: {content_type}");
        let body = response.text().await.unwrap();
        assert!(body.contains(needle), "{file} lacks {needle}");
    }
    let missing = anonymous
        .get(server.url("/docs/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}
