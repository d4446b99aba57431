//! `http.request`: one HTTP call to an http(s) URL, its response kept as the task's result.
//!
//! The outcome is mapped onto the orchestrator's retry rules: a 2xx succeeds; 5xx, 408, 429 and
//! transport failures (refused, reset, timed out) are worth another attempt; any other status
//! would fail the same way again, so the task goes `dead` at once.
//!
//! Payload:
//!
//! ```text
//! {
//!   "method": "POST",                        // optional, default GET
//!   "url": "https://example.com/hook",       // required, http or https
//!   "headers": {"authorization": "Bearer …"}, // optional
//!   "body": {"any": "json"},                 // optional, see below
//!   "timeout_ms": 5000                       // optional, default HttpConfig::default_timeout
//! }
//! ```
//!
//! A string `body` is sent as text (`content-type: text/plain; charset=utf-8` unless the payload
//! sets one); any other JSON value is sent as JSON (`application/json` unless set).
//!
//! Result (and, on a non-2xx status, the error's `details`):
//!
//! ```text
//! {"status": 200, "headers": {"content-type": "application/json"}, "body": {"ok": true}}
//! ```
//!
//! `body` is the parsed JSON when the response says it is JSON and parses, the text otherwise.
//! Bodies longer than [`HttpConfig::max_body_bytes`] are cut and the result carries
//! `"truncated": true`; the same cap holds for the body kept in an error's `details`.
//!
//! Every call goes through the outbound guard ([`crate::outbound`]): a URL whose host is a
//! forbidden address is refused at creation (`destination_forbidden`), and one that resolves or
//! redirects to a forbidden address fails the task at once, not retryably, with
//! `{"error": "destination_forbidden"}` as details.

use crate::outbound::{OutboundClient, Redirects, forbidden_in};
use crate::traced::SendTraced;
use crate::{Adapter, AdapterHealth};
use async_trait::async_trait;
use mcp_core::outbound::{Forbidden, Policy};
use mcp_core::{Handler, HandlerError, HandlerRegistry, TaskContext};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Method, Response, StatusCode, Url};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The task type this module handles.
pub const TASK_TYPE: &str = mcp_core::outbound::HTTP_REQUEST_TASK;

/// The methods a payload may use. CONNECT and TRACE are left out: neither makes sense as a task.
const METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// The longest `timeout_ms` a payload may ask for: the longest a task attempt may last.
const MAX_TIMEOUT_MS: u64 = mcp_core::task::MAX_TIMEOUT_MS;

/// Settings shared by every `http.request` task of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Sent as `user-agent` unless the payload sets its own.
    pub user_agent: String,
    /// Limit for a whole request (connect, send, read the body) when the payload gives no
    /// `timeout_ms`.
    pub default_timeout: Duration,
    /// The most response body bytes kept in a result or error; the rest is dropped.
    pub max_body_bytes: usize,
    /// Which destinations calls may reach.
    pub outbound: Arc<Policy>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            user_agent: concat!("mkww-mcp/", env!("CARGO_PKG_VERSION")).to_owned(),
            default_timeout: Duration::from_secs(30),
            max_body_bytes: 1024 * 1024,
            outbound: Arc::default(),
        }
    }
}

/// The adapter for plain HTTP: registers `http.request`.
#[derive(Debug, Clone)]
pub struct HttpAdapter {
    handler: HttpRequest,
}

impl HttpAdapter {
    /// Builds the one HTTP client (and its connection pool) every `http.request` task shares.
    /// Fails only when the configuration cannot make a client, e.g. a user agent that is not a
    /// valid header value.
    pub fn new(config: HttpConfig) -> Result<Self, reqwest::Error> {
        let client = OutboundClient::build(
            config.outbound,
            Client::builder()
                .user_agent(config.user_agent.as_str())
                .timeout(config.default_timeout),
            Redirects::Follow,
        )?;
        Ok(HttpAdapter {
            handler: HttpRequest {
                client,
                max_body_bytes: config.max_body_bytes,
            },
        })
    }

    /// The `http.request` handler; clones share the client.
    pub fn handler(&self) -> HttpRequest {
        self.handler.clone()
    }
}

#[async_trait]
impl Adapter for HttpAdapter {
    fn name(&self) -> &str {
        "http"
    }

    fn task_types(&self) -> Vec<String> {
        vec![TASK_TYPE.to_owned()]
    }

    /// Always healthy: every task names its own server, so there is no one remote to probe, and
    /// a failing server shows up in that task's result.
    async fn health(&self) -> AdapterHealth {
        AdapterHealth::Healthy
    }

    fn register(&self, registry: &mut HandlerRegistry) {
        registry.register(TASK_TYPE, self.handler());
    }
}

/// The handler for `http.request`.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    client: OutboundClient,
    max_body_bytes: usize,
}

#[async_trait]
impl Handler for HttpRequest {
    fn validate(&self, payload: &Value) -> Result<(), String> {
        Request::from_payload(payload).map(|_| ())
    }

    fn check_destination(&self, payload: &Value) -> Result<(), Forbidden> {
        match Request::from_payload(payload) {
            Ok(request) => self.client.policy().check_url(&request.url),
            // `validate` reports it.
            Err(_) => Ok(()),
        }
    }

    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let request = Request::from_payload(&ctx.task.payload).map_err(HandlerError::permanent)?;
        let target = format!("{} {}", request.method, without_secrets(&request.url));
        let host = request.url.host_str().unwrap_or_default().to_owned();

        let mut builder = self
            .client
            .request(request.method, request.url)
            .map_err(|forbidden| destination_forbidden(&target, &forbidden))?
            .headers(request.headers);
        if let Some(timeout) = request.timeout {
            builder = builder.timeout(timeout);
        }
        // The payload's headers went in first, so a content-type it sets is kept.
        builder = match request.body {
            Body::Empty => builder,
            Body::Json(value) => builder.json(&value),
            Body::Text(text) => builder.body(text),
        };

        let response = builder
            .send_traced()
            .await
            .map_err(|err| transport_error(&target, err))?;
        let status = response.status();
        let outcome = read_response(response, self.max_body_bytes)
            .await
            .map_err(|err| transport_error(&target, err))?;
        tracing::debug!(task_id = %ctx.task.id, %host, status = status.as_u16(), "http.request answered");

        if status.is_success() {
            return Ok(outcome);
        }
        let message = format!("{target} answered {status}");
        let error = if is_retryable(status) {
            HandlerError::retryable(message)
        } else {
            HandlerError::permanent(message)
        };
        Err(error.with_details(outcome))
    }
}

/// The URL for error messages, which are stored and logged: credentials and the query (a common
/// place for API keys) are left out.
fn without_secrets(url: &Url) -> String {
    let mut url = url.clone();
    // Both only fail for URLs that cannot have credentials, which then have none to remove.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

/// The statuses that may well be different next time: the server is failing or overloaded, or
/// asked us to slow down.
fn is_retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

/// The outbound guard refused the destination (the URL's address, what its name resolved to, or
/// a redirect): it would be refused again, so the task is not retried.
fn destination_forbidden(target: &str, forbidden: &Forbidden) -> HandlerError {
    HandlerError::permanent(format!("{target} refused: {forbidden}")).with_details(json!({
        "error": "destination_forbidden",
        "host": forbidden.host,
        "address": forbidden.ip.to_string(),
        "range": forbidden.range,
    }))
}

/// A failure before a status was read, or while reading the body. Only a redirect loop, a
/// forbidden destination or a request reqwest refuses to build would fail the same way next
/// time.
fn transport_error(target: &str, err: reqwest::Error) -> HandlerError {
    if let Some(forbidden) = forbidden_in(&err) {
        return destination_forbidden(target, forbidden);
    }
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect"
    } else if err.is_redirect() {
        "redirect"
    } else if err.is_builder() {
        "builder"
    } else if err.is_body() || err.is_decode() {
        "body"
    } else {
        "request"
    };
    let retryable = !(err.is_redirect() || err.is_builder());
    request_failure(target, err, kind, retryable)
}

/// The error of a request that failed before its answer was read: `{target} failed:` with
/// reqwest's message and every cause after it (reqwest's own message is vague, "error sending
/// request"; the cause is in the chain), never the URL (it may carry a key), and
/// `{"error": kind}` as details. Each adapter decides `kind` and `retryable`.
pub(crate) fn request_failure(
    target: &str,
    err: reqwest::Error,
    kind: &str,
    retryable: bool,
) -> HandlerError {
    let err = err.without_url();
    let mut message = format!("{target} failed: {err}");
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    HandlerError {
        message,
        retryable,
        details: Some(json!({ "error": kind })),
        retry_after: None,
    }
}

/// Reads the status, headers and at most `max_body_bytes` of body into the result shape.
async fn read_response(
    mut response: Response,
    max_body_bytes: usize,
) -> Result<Value, reqwest::Error> {
    let status = response.status().as_u16();
    let headers = headers_to_json(response.headers());
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(is_json_media_type);

    let mut bytes: Vec<u8> = Vec::new();
    let mut truncated = false;
    while let Some(chunk) = response.chunk().await? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > max_body_bytes {
            bytes.truncate(max_body_bytes);
            truncated = true;
            break;
        }
    }

    let mut result = Map::new();
    result.insert("status".into(), json!(status));
    result.insert("headers".into(), headers);
    result.insert("body".into(), body_to_json(&bytes, is_json, truncated));
    if truncated {
        result.insert("truncated".into(), Value::Bool(true));
    }
    Ok(Value::Object(result))
}

/// Header names are already lowercase in `http`; a name sent more than once has its values
/// joined with `, `, as HTTP allows.
fn headers_to_json(headers: &HeaderMap) -> Value {
    let mut out = Map::new();
    for name in headers.keys() {
        let joined = headers
            .get_all(name)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        out.insert(name.as_str().to_owned(), Value::String(joined));
    }
    Value::Object(out)
}

/// `application/json` and the `+json` family (`application/problem+json`, …).
fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn body_to_json(bytes: &[u8], is_json: bool, truncated: bool) -> Value {
    if is_json
        && !truncated
        && let Ok(value) = serde_json::from_slice(bytes)
    {
        return value;
    }
    Value::String(text_of(bytes, truncated))
}

/// The body as text. A cut may have split a multi-byte character; that tail is dropped rather
/// than shown as a replacement character. Other invalid UTF-8 is replaced.
fn text_of(bytes: &[u8], truncated: bool) -> String {
    let bytes = match std::str::from_utf8(bytes) {
        Err(err) if truncated && err.error_len().is_none() => &bytes[..err.valid_up_to()],
        _ => bytes,
    };
    String::from_utf8_lossy(bytes).into_owned()
}

/// The payload as the client wrote it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    #[serde(default)]
    method: Option<String>,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// A payload checked and turned into the types reqwest takes.
#[derive(Debug)]
struct Request {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Body,
    timeout: Option<Duration>,
}

#[derive(Debug, PartialEq)]
enum Body {
    Empty,
    Text(String),
    Json(Value),
}

impl Request {
    fn from_payload(payload: &Value) -> Result<Request, String> {
        let payload = Payload::deserialize(payload).map_err(|err| err.to_string())?;
        let method = parse_method(payload.method.as_deref().unwrap_or("GET"))?;
        let url = parse_url(&payload.url)?;
        let mut headers = parse_headers(&payload.headers)?;
        let body = match payload.body {
            None => Body::Empty,
            Some(Value::String(text)) => {
                if !headers.contains_key(CONTENT_TYPE) {
                    headers.insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                }
                Body::Text(text)
            }
            Some(value) => Body::Json(value),
        };
        let timeout = match payload.timeout_ms {
            None => None,
            Some(ms) if (1..=MAX_TIMEOUT_MS).contains(&ms) => Some(Duration::from_millis(ms)),
            Some(_) => {
                return Err(format!(
                    "timeout_ms: must be between 1 and {MAX_TIMEOUT_MS}"
                ));
            }
        };
        Ok(Request {
            method,
            url,
            headers,
            body,
            timeout,
        })
    }
}

fn parse_method(method: &str) -> Result<Method, String> {
    let upper = method.to_ascii_uppercase();
    METHODS
        .iter()
        .find(|known| known.as_str() == upper)
        .cloned()
        .ok_or_else(|| {
            let known: Vec<&str> = METHODS.iter().map(Method::as_str).collect();
            format!("method: `{method}` is not one of {}", known.join(", "))
        })
}

fn parse_url(url: &str) -> Result<Url, String> {
    let parsed =
        Url::parse(url).map_err(|err| format!("url: `{url}` is not a valid URL ({err})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "url: scheme `{}` is not allowed, use http or https",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("url: `{url}` has no host"));
    }
    Ok(parsed)
}

fn parse_headers(headers: &BTreeMap<String, String>) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let header_name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("headers: `{name}` is not a valid header name"))?;
        let header_value = HeaderValue::from_str(value)
            .map_err(|_| format!("headers: the value of `{name}` is not a valid header value"))?;
        // Two spellings of one name (`Accept`, `accept`) both count.
        map.append(header_name, header_value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(payload: Value) -> Result<Request, String> {
        Request::from_payload(&payload)
    }

    #[test]
    fn method_defaults_to_get() {
        let request = parse(json!({"url": "http://example.com/"})).unwrap();
        assert_eq!(request.method, Method::GET);
        assert_eq!(request.body, Body::Empty);
        assert!(request.headers.is_empty());
        assert_eq!(request.timeout, None);
    }

    #[test]
    fn method_is_case_insensitive() {
        let request = parse(json!({"method": "patch", "url": "https://example.com/"})).unwrap();
        assert_eq!(request.method, Method::PATCH);
    }

    #[test]
    fn rejects_unknown_method() {
        let err = parse(json!({"method": "FETCH", "url": "http://example.com/"})).unwrap_err();
        assert!(
            err.starts_with("method: `FETCH` is not one of GET"),
            "{err}"
        );
        assert!(parse(json!({"method": "CONNECT", "url": "http://example.com/"})).is_err());
    }

    #[test]
    fn rejects_missing_url() {
        let err = parse(json!({"method": "GET"})).unwrap_err();
        assert!(err.contains("missing field `url`"), "{err}");
    }

    #[test]
    fn rejects_relative_and_empty_urls() {
        for url in ["", "/path", "example.com", "http://"] {
            let err = parse(json!({"url": url})).unwrap_err();
            assert!(err.starts_with("url: "), "{url}: {err}");
        }
    }

    #[test]
    fn rejects_non_http_schemes() {
        for url in [
            "ftp://example.com/file",
            "file:///etc/passwd",
            "mailto:a@b.c",
        ] {
            let err = parse(json!({"url": url})).unwrap_err();
            assert!(err.contains("use http or https"), "{url}: {err}");
        }
    }

    #[test]
    fn rejects_unknown_fields() {
        let err = parse(json!({"url": "http://example.com/", "metod": "GET"})).unwrap_err();
        assert!(err.contains("unknown field `metod`"), "{err}");
    }

    #[test]
    fn rejects_bad_header_names_and_values() {
        let err =
            parse(json!({"url": "http://example.com/", "headers": {"bad name": "x"}})).unwrap_err();
        assert_eq!(err, "headers: `bad name` is not a valid header name");
        let err = parse(json!({"url": "http://example.com/", "headers": {"x-a": "line\nbreak"}}))
            .unwrap_err();
        assert_eq!(
            err,
            "headers: the value of `x-a` is not a valid header value"
        );
        let err = parse(json!({"url": "http://example.com/", "headers": {"x-a": 1}})).unwrap_err();
        assert!(err.contains("expected a string"), "{err}");
    }

    #[test]
    fn string_body_is_text_with_a_default_content_type() {
        let request = parse(json!({"url": "http://example.com/", "body": "hello"})).unwrap();
        assert_eq!(request.body, Body::Text("hello".into()));
        assert_eq!(request.headers[CONTENT_TYPE], "text/plain; charset=utf-8");
    }

    #[test]
    fn string_body_keeps_the_payloads_content_type() {
        let request = parse(json!({
            "url": "http://example.com/",
            "headers": {"Content-Type": "application/xml"},
            "body": "<a/>",
        }))
        .unwrap();
        assert_eq!(request.headers[CONTENT_TYPE], "application/xml");
        assert_eq!(request.headers.get_all(CONTENT_TYPE).iter().count(), 1);
    }

    #[test]
    fn other_json_bodies_are_sent_as_json() {
        for body in [json!({"a": 1}), json!([1, 2]), json!(3), json!(true)] {
            let request = parse(json!({"url": "http://example.com/", "body": body})).unwrap();
            assert_eq!(request.body, Body::Json(body));
        }
        let request = parse(json!({"url": "http://example.com/", "body": null})).unwrap();
        assert_eq!(request.body, Body::Empty);
    }

    #[test]
    fn timeout_must_be_positive_and_bounded() {
        let request = parse(json!({"url": "http://example.com/", "timeout_ms": 250})).unwrap();
        assert_eq!(request.timeout, Some(Duration::from_millis(250)));
        for ms in [0, MAX_TIMEOUT_MS + 1] {
            let err = parse(json!({"url": "http://example.com/", "timeout_ms": ms})).unwrap_err();
            assert!(err.starts_with("timeout_ms: "), "{err}");
        }
    }

    #[test]
    fn recognises_json_media_types() {
        assert!(is_json_media_type("application/json"));
        assert!(is_json_media_type("application/json; charset=utf-8"));
        assert!(is_json_media_type("Application/Problem+JSON"));
        assert!(!is_json_media_type("text/plain"));
        assert!(!is_json_media_type("text/json+html"));
    }

    #[test]
    fn cut_text_drops_a_split_character() {
        let bytes = "héllo".as_bytes();
        assert_eq!(text_of(&bytes[..2], true), "h");
        assert_eq!(text_of(b"a\xffb", false), "a\u{fffd}b");
    }

    #[test]
    fn error_messages_leave_out_credentials_and_query() {
        let url = Url::parse("https://user:secret@example.com:8443/hook?key=secret#frag").unwrap();
        assert_eq!(without_secrets(&url), "https://example.com:8443/hook");
    }

    #[test]
    fn only_overload_and_server_statuses_are_retryable() {
        for code in [500, 502, 503, 504, 408, 429] {
            assert!(is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [300, 400, 401, 403, 404, 409, 422] {
            assert!(!is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }
}
