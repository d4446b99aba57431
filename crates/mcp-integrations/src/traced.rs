//! Outgoing HTTP calls in the trace: every integration sends through [`send`], which (while
//! tracing is on) wraps the call in a client span with OpenTelemetry's HTTP attributes and sends
//! that span's context in the `traceparent` header, so the receiver continues the trace. With
//! tracing off it is `RequestBuilder::send`.

use mcp_core::trace;
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{RequestBuilder, Response};
use tracing::Instrument;
use tracing::field::Empty;

/// Sends `request`, in a client span when tracing is on.
pub async fn send(request: RequestBuilder) -> reqwest::Result<Response> {
    if !trace::enabled() {
        return request.send().await;
    }
    let (client, request) = request.build_split();
    let mut request = request?;
    let url = request.url();
    let span = tracing::info_span!(
        "http.client",
        otel.name = %request.method(),
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = %request.method(),
        server.address = url.host_str().unwrap_or_default(),
        server.port = url.port_or_known_default().unwrap_or_default(),
        // Without the query, which may carry credentials.
        url.full = %format_args!("{}://{}{}", url.scheme(), url.authority(), url.path()),
        http.response.status_code = Empty
    );
    if let Some(value) = trace::traceparent(&span).and_then(|t| HeaderValue::from_str(&t).ok()) {
        request
            .headers_mut()
            .insert(HeaderName::from_static(trace::TRACEPARENT), value);
    }
    let response = client.execute(request).instrument(span.clone()).await;
    match &response {
        Ok(response) => {
            span.record("http.response.status_code", response.status().as_u16());
            if response.status().is_server_error() {
                span.record("otel.status_code", "ERROR");
            }
        }
        Err(_) => {
            span.record("otel.status_code", "ERROR");
        }
    }
    response
}

/// [`send`] as a method, so a call chain reads `….send_traced().await`.
pub trait SendTraced {
    fn send_traced(self) -> impl Future<Output = reqwest::Result<Response>> + Send;
}

impl SendTraced for RequestBuilder {
    fn send_traced(self) -> impl Future<Output = reqwest::Result<Response>> + Send {
        send(self)
    }
}
