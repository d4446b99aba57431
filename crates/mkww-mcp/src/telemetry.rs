//! Traces: OpenTelemetry spans exported over OTLP/HTTP (protobuf), configured by the standard
//! variables and off when they are unset:
//!
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` (the collector's base URL; `/v1/traces` is appended) or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full URL) turns traces on;
//! - `OTEL_EXPORTER_OTLP_PROTOCOL` / `_TRACES_PROTOCOL`: `http/protobuf` (the default and the
//!   only one built in);
//! - `OTEL_SERVICE_NAME` (default `mkww-mcp`), `OTEL_RESOURCE_ATTRIBUTES`,
//!   `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, `OTEL_EXPORTER_OTLP_HEADERS`,
//!   `OTEL_BSP_*` (batching), `OTEL_SDK_DISABLED=true` and `OTEL_TRACES_EXPORTER=none` (off).
//!
//! Here live the exporter, the W3C trace-context propagation that core's `trace` module calls
//! through, and the span ids the JSON log lines carry.

use anyhow::Context as _;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{KeyValue, global};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;
use tracing::dispatcher::WeakDispatch;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The provider, kept to flush the last spans on the way out.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
/// The process's subscriber, to read a span's OpenTelemetry ids while formatting a log line.
static DISPATCH: OnceLock<WeakDispatch> = OnceLock::new();

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Whether the `OTEL_*` variables ask for traces.
pub fn configured() -> bool {
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let no_exporter = env("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none");
    let endpoint = env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    endpoint && !disabled && !no_exporter
}

/// The tracer the OpenTelemetry layer records into, when traces are configured; installs the
/// exporter, the propagator and core's trace hooks. An error names the variable that is wrong.
pub fn tracer() -> anyhow::Result<Option<Tracer>> {
    if !configured() {
        return Ok(None);
    }
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = env(name)
            && protocol != "http/protobuf"
        {
            anyhow::bail!("{name}={protocol} is not supported: use http/protobuf");
        }
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(BlockingClient::default())
        .build()
        .context("cannot build the OTLP span exporter")?;
    let mut resource = Resource::builder().with_attribute(KeyValue::new(
        "service.instance.id",
        uuid::Uuid::new_v4().to_string(),
    ));
    let named = env("OTEL_SERVICE_NAME").is_some()
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name("mkww-mcp");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("mkww-mcp");
    global::set_text_map_propagator(TraceContextPropagator::new());
    let _ = PROVIDER.set(provider);
    mcp_core::trace::install(Box::new(W3cPropagation));
    Ok(Some(tracer))
}

/// Remembers the installed subscriber for [`span_ids`]; called once it is the global default.
pub fn remember_dispatch() {
    tracing::dispatcher::get_default(|dispatch| {
        let _ = DISPATCH.set(dispatch.downgrade());
    });
}

/// The trace and span ids of the span `id`, if it is traced.
pub fn span_ids(id: &tracing::span::Id) -> Option<(String, String)> {
    let dispatch = DISPATCH.get()?.upgrade()?;
    let context = tracing_opentelemetry::get_otel_context(id, &dispatch)?;
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        (
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
        )
    })
}

/// Sends the spans still waiting; call once, on the way out.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.shutdown()
    {
        tracing::warn!(error = %e, "traces: the last spans may be lost");
    }
}

/// Core's view of the trace context: W3C `traceparent` strings in and out of spans.
struct W3cPropagation;

impl mcp_core::trace::Propagation for W3cPropagation {
    fn traceparent(&self, span: &tracing::Span) -> Option<String> {
        let context = span.context();
        let span = context.span();
        let sc = span.span_context();
        sc.is_valid().then(|| {
            format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            )
        })
    }

    fn set_parent(&self, span: &tracing::Span, traceparent: &str) {
        let carrier = HashMap::from([(
            mcp_core::trace::TRACEPARENT.to_owned(),
            traceparent.to_owned(),
        )]);
        let parent = TraceContextPropagator::new().extract(&carrier);
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
}

/// The exporter's HTTP client: the workspace's reqwest (rustls), blocking, because the batch
/// processor exports from its own thread, outside the runtime. Built there, on first use.
#[derive(Debug, Default)]
struct BlockingClient {
    client: OnceLock<Result<reqwest::blocking::Client, String>>,
}

const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

#[async_trait::async_trait]
impl HttpClient for BlockingClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self
            .client
            .get_or_init(|| {
                reqwest::blocking::Client::builder()
                    .timeout(EXPORT_TIMEOUT)
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| HttpError::from(e.clone()))?;
        let (parts, body) = request.into_parts();
        let url = parts.uri.to_string();
        let response = client
            .request(parts.method, url)
            .headers(parts.headers)
            .body(body.to_vec())
            .send()?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes()?;
        let mut out = Response::builder().status(status).body(body)?;
        *out.headers_mut() = headers;
        Ok(out)
    }
}
