//! Authentication, authorization and rate limits, as two layers:
//! - `limit_ip` (every request but probes): a per-client-IP limit, stricter on `/v1/auth/*`;
//! - `guard` (matched routes): looks the route up in the access table (`Guard`), authenticates the bearer
//!   credential (an access token or an API key), checks the role's permission, applies the
//!   per-principal limit for reads or writes, and hands the `Principal` to the handler.
//!
//! 401 `unauthenticated` means "who are you?"; 403 `forbidden` means "not you". Errors never
//! say whether a user or key exists.

use crate::access::{self, Access, AccessTable};
use crate::error::ApiError;
use crate::key_cache::{KeyCache, VerifiedKey};
use crate::request_id::{self, RouteLabel};
use crate::token::{TokenError, Tokens};
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use ipnet::IpNet;
use mcp_core::credentials;
use mcp_core::identity::{AuditEvent, IdentityStore};
use mcp_core::limiter::{Decision, Limiter, Quota};
use mcp_core::principal::{Permission, Role};
use mcp_core::revocations::{Credential, Revocations};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use uuid::Uuid;

/// Longest `Authorization` header looked at; longer ones are refused unread.
const MAX_CREDENTIAL_LEN: usize = 8 * 1024;

/// Per-minute limits, by who is counted.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    /// Per client IP, every route but probes.
    pub ip: Quota,
    /// Per client IP, `/v1/auth/*`.
    pub auth: Quota,
    /// Per username and client IP, login attempts.
    pub login: Quota,
    /// Per username from every address, login attempts (a ceiling above `login`).
    pub login_username: Quota,
    /// Per principal, reads (GET, HEAD).
    pub read: Quota,
    /// Per principal, everything else.
    pub write: Quota,
}

/// The rate limits in force: the configured ones, replaced by runtime settings; read on every
/// request through a `watch` channel (readers share it, a change never waits on them).
#[derive(Debug, Clone)]
pub struct LiveLimits(Arc<tokio::sync::watch::Sender<RateLimits>>);

impl LiveLimits {
    pub fn new(limits: RateLimits) -> Self {
        LiveLimits(Arc::new(tokio::sync::watch::channel(limits).0))
    }

    pub fn get(&self) -> RateLimits {
        *self.0.borrow()
    }

    pub fn set(&self, limits: RateLimits) {
        self.0.send_replace(limits);
    }
}

#[derive(Debug, Clone)]
pub struct SecurityConfig {
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    pub limits: LiveLimits,
    /// Tasks per principal per UTC day (roles with a quota); 0: unlimited.
    pub quota_tasks_per_day: u64,
    /// Bearer token that may read `/metrics`.
    pub metrics_token: Option<String>,
}

/// What the security layers need.
pub struct Security {
    pub identities: Arc<dyn IdentityStore>,
    pub tokens: Tokens,
    pub limiter: Arc<dyn Limiter>,
    /// The deny-list every authentication checks (cached: no query per request).
    pub revocations: Arc<Revocations>,
    /// API keys verified recently (`key_cache`): no query per request either.
    pub api_keys: KeyCache,
    pub config: SecurityConfig,
}

/// A credential that checked out: who it names, until when, and what could revoke it.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub principal: Principal,
    /// Unix seconds at which an access token expires; `None` for API keys.
    pub expires_at: Option<u64>,
    pub credential: Credential,
}

pub use mcp_core::principal::CredentialKind;

/// Who is calling, as a handler extracts it: core's `Principal`, set by the guard for every
/// authenticated route (a newtype only because an extractor must be a type of this crate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(pub mcp_core::principal::Principal);

impl Principal {
    pub fn new(subject: impl Into<String>, role: Role, credential: CredentialKind) -> Self {
        Principal(mcp_core::principal::Principal {
            subject: subject.into(),
            role,
            credential,
            worker_types: None,
        })
    }
}

impl std::ops::Deref for Principal {
    type Target = mcp_core::principal::Principal;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| unauthenticated("this route needs credentials"))
    }
}

/// The client's address (after trusted proxies), when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ClientIp>()
            .copied()
            .unwrap_or(ClientIp(None)))
    }
}

pub fn unauthenticated(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// The client address: the peer, or — when the peer is a trusted proxy — the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut client = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = value.to_str() else {
            return Some(client);
        };
        for hop in text.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) if is_trusted(&ip) => client = ip,
                Ok(ip) => return Some(ip),
                Err(_) => return Some(client),
            }
        }
    }
    Some(client)
}

fn set_rate_headers(headers: &mut HeaderMap, decision: &Decision, overwrite: bool) {
    let reset = decision.reset_after.as_secs_f64().ceil() as u64;
    let values = [
        ("ratelimit-limit", u64::from(decision.limit)),
        ("ratelimit-remaining", u64::from(decision.remaining)),
        ("ratelimit-reset", reset),
    ];
    for (name, value) in values {
        let name = HeaderName::from_static(name);
        if overwrite || !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from(value));
        }
    }
}

/// 429 `rate_limited` (or another code) with `Retry-After` and the `RateLimit-*` headers.
pub fn too_many(decision: &Decision, code: &'static str, message: &str) -> Response {
    let retry = decision
        .retry_after
        .unwrap_or(Duration::from_secs(1))
        .as_secs_f64()
        .ceil()
        .max(1.0) as u64;
    let mut response = ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        .with_details(serde_json::json!({"retry_after_seconds": retry}))
        .into_response();
    set_rate_headers(response.headers_mut(), decision, true);
    if let Ok(value) = HeaderValue::from_str(&retry.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// The class of a limiter key (`ip:…`, `write:…`), as a label of `mcp_rate_limited_total`.
fn limit_class(key: &str) -> &'static str {
    match key.split(':').next() {
        Some("ip") => "ip",
        Some("auth") => "auth",
        Some("login") => "login",
        Some("read") => "read",
        Some("write") => "write",
        Some("publish") => "publish",
        _ => "other",
    }
}

/// Limiter failures since start, to log a flood of them as a handful of lines.
static LIMITER_FAILURES: AtomicU64 = AtomicU64::new(0);

impl Security {
    /// Counts one request for `key`. A limiter that errs lets requests through (availability
    /// wins). The Redis limiter never does (it falls back to this node's limits), so this is
    /// rare; it is logged at the 1st, 2nd, 4th, 8th, … failure, never once per request.
    pub async fn check(&self, key: &str, quota: Quota) -> Option<Decision> {
        match self.limiter.check(key, quota).await {
            Ok(decision) => {
                if !decision.allowed {
                    metrics::counter!("mcp_rate_limited_total", "class" => limit_class(key))
                        .increment(1);
                }
                Some(decision)
            }
            Err(e) => {
                let failures = LIMITER_FAILURES.fetch_add(1, Ordering::Relaxed) + 1;
                if failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures, "rate limiter unavailable; requests allowed");
                }
                None
            }
        }
    }

    /// Writes a security event to the audit log and to the log.
    pub async fn audit(&self, action: &str, principal: Option<&str>, ip: ClientIp, details: Value) {
        let event = AuditEvent {
            id: Uuid::now_v7(),
            at: Utc::now(),
            action: action.to_owned(),
            principal: principal.map(str::to_owned),
            ip: ip.0.map(|ip| ip.to_string()),
            request_id: request_id::current(),
            details,
        };
        tracing::info!(
            target: "audit",
            action = %event.action,
            principal = event.principal.as_deref().unwrap_or(""),
            ip = event.ip.as_deref().unwrap_or(""),
            request_id = event.request_id.as_deref().unwrap_or(""),
            details = %event.details,
            "audit"
        );
        if let Err(e) = self.identities.append_audit(&event).await {
            tracing::error!(error = %e, action, "cannot write the audit log");
        }
    }

    /// Who the bearer credential names, or why it names no one.
    pub async fn authenticate(&self, credential: &str) -> Result<Principal, ApiError> {
        self.authenticate_credential(credential)
            .await
            .map(|found| found.principal)
    }

    /// Like `authenticate`, with when the credential expires and what could revoke it.
    pub async fn authenticate_credential(
        &self,
        credential: &str,
    ) -> Result<Authenticated, ApiError> {
        if let Some(prefix) = credentials::api_key_prefix(credential) {
            let digest = credentials::digest(credential);
            let key = match self.api_keys.get(&digest) {
                Some(key) => key,
                None => self.verify_api_key(prefix, digest.clone()).await?,
            };
            let revocable = Credential::ApiKey { id: key.id };
            if self.revocations.is_revoked(&revocable) {
                self.api_keys.remove(&digest);
                return Err(unauthenticated("the API key has been revoked"));
            }
            let mut principal = Principal::new(
                format!("key:{}", key.prefix),
                key.role,
                CredentialKind::ApiKey,
            );
            // The key's limit travels with the principal, so a worker using it is held to it.
            principal.0.worker_types = key.worker_types;
            return Ok(Authenticated {
                principal,
                expires_at: None,
                credential: revocable,
            });
        }
        match self.tokens.verify(credential) {
            Ok(claims) => {
                let revocable = Credential::AccessToken {
                    subject: claims.sub.clone(),
                    // A `sid` that is no id names no session: the subject's cut-off still applies.
                    session: claims.sid.as_deref().and_then(|s| Uuid::parse_str(s).ok()),
                    issued_at: claims.iat,
                };
                if self.revocations.is_revoked(&revocable) {
                    return Err(ApiError::token_revoked());
                }
                Ok(Authenticated {
                    principal: Principal::new(claims.sub, claims.role, CredentialKind::AccessToken),
                    expires_at: Some(claims.exp),
                    credential: revocable,
                })
            }
            Err(TokenError::Expired) => Err(unauthenticated("the access token has expired")
                .with_details(serde_json::json!({"reason": "token_expired"}))),
            Err(_) => Err(unauthenticated("the access token is not valid")),
        }
    }
}

impl Security {
    /// Reads the key from the store, checks it, records its use and caches it (`key_cache`).
    async fn verify_api_key(&self, prefix: &str, digest: String) -> Result<VerifiedKey, ApiError> {
        let key = self.identities.api_key_by_prefix(prefix).await?;
        let Some(key) = key.filter(|k| credentials::digests_match(&digest, &k.secret_hash)) else {
            return Err(unauthenticated("the API key is not valid"));
        };
        if key.revoked_at.is_some()
            || self
                .revocations
                .is_revoked(&Credential::ApiKey { id: key.id })
        {
            return Err(unauthenticated("the API key has been revoked"));
        }
        if let Err(e) = self.identities.touch_api_key(key.id, Utc::now()).await {
            tracing::debug!(error = %e, "cannot record an API key use");
        }
        let verified = VerifiedKey {
            id: key.id,
            prefix: key.prefix,
            role: key.role,
            worker_types: key.worker_types,
        };
        self.api_keys.insert(digest, verified.clone());
        Ok(verified)
    }
}

/// The bearer credential of a request: `Ok(None)` without an `Authorization` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    if value.len() > MAX_CREDENTIAL_LEN {
        return Err(unauthenticated("the Authorization header is too long"));
    }
    let text = value
        .to_str()
        .map_err(|_| unauthenticated("the Authorization header must be visible ASCII"))?;
    let (scheme, credential) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || credential.trim().is_empty() {
        return Err(unauthenticated(
            "send `Authorization: Bearer <access token or API key>`",
        ));
    }
    Ok(Some(credential.trim()))
}

fn peer(request: &Request) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
}

/// Layer 1: finds the client IP and limits requests per IP.
pub async fn limit_ip(
    State(security): State<Arc<Security>>,
    mut request: Request,
    next: Next,
) -> Response {
    let ip = client_ip(
        peer(&request),
        request.headers(),
        &security.config.trusted_proxies,
    );
    request.extensions_mut().insert(ClientIp(ip));
    let path = request.uri().path();
    if access::is_probe(path) {
        return next.run(request).await;
    }
    let (class, quota) = if access::is_auth(path) {
        ("auth", security.config.limits.get().auth)
    } else {
        ("ip", security.config.limits.get().ip)
    };
    let key = match ip {
        Some(ip) => format!("{class}:{ip}"),
        None => format!("{class}:unknown"),
    };
    let decision = security.check(&key, quota).await;
    if let Some(decision) = &decision
        && !decision.allowed
    {
        return too_many(
            decision,
            "rate_limited",
            "too many requests from this address",
        );
    }
    let mut response = next.run(request).await;
    if let Some(decision) = &decision {
        set_rate_headers(response.headers_mut(), decision, false);
    }
    response
}

/// What the guard reads: who is calling, and what each route demands.
#[derive(Clone)]
pub struct Guard {
    pub security: Arc<Security>,
    pub table: Arc<AccessTable>,
}

/// Layer 2 (matched routes only): authentication, permission, per-principal limits.
pub async fn guard(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let security = &guard.security;
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("", MatchedPath::as_str);
    let (access, label) = match guard.table.labelled(request.method(), path) {
        Some((route, label)) => (route.access, label.clone()),
        None => {
            tracing::error!(path, method = %request.method(), "route missing from the access table");
            let mut response = forbidden("this route is not open to anyone".into()).into_response();
            response
                .extensions_mut()
                .insert(RouteLabel(Arc::from(path)));
            return response;
        }
    };
    let mut response = admit(security, access, request, next).await;
    response.extensions_mut().insert(RouteLabel(label));
    response
}

async fn admit(security: &Security, access: Access, mut request: Request, next: Next) -> Response {
    let required = match access {
        Access::Public => return next.run(request).await,
        Access::Authenticated => None,
        Access::Requires(permission) => Some(permission),
    };
    let credential = bearer(request.headers());
    let principal = match authenticate_request(security, credential, required).await {
        Ok(principal) => principal,
        Err(e) => {
            let mut response = e.into_response();
            if response.status() == StatusCode::UNAUTHORIZED {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            return response;
        }
    };
    if let Some(permission) = required
        && !principal.can(permission)
        && principal.credential != CredentialKind::MetricsToken
    {
        return forbidden(format!(
            "role `{}` lacks the permission `{permission}`",
            principal.role
        ))
        .into_response();
    }
    let (class, quota) = if matches!(*request.method(), Method::GET | Method::HEAD) {
        ("read", security.config.limits.get().read)
    } else {
        ("write", security.config.limits.get().write)
    };
    let decision = security
        .check(&format!("{class}:{}", principal.subject), quota)
        .await;
    if let Some(decision) = &decision
        && !decision.allowed
    {
        return too_many(
            decision,
            "rate_limited",
            "too many requests for this principal",
        );
    }
    request.extensions_mut().insert(principal);
    let mut response = next.run(request).await;
    if let Some(decision) = &decision {
        set_rate_headers(response.headers_mut(), decision, true);
    }
    response
}

async fn authenticate_request(
    security: &Security,
    credential: Result<Option<&str>, ApiError>,
    required: Option<Permission>,
) -> Result<Principal, ApiError> {
    let Some(credential) = credential? else {
        return Err(unauthenticated(
            "this route needs `Authorization: Bearer <access token or API key>`",
        ));
    };
    if required == Some(Permission::MetricsRead)
        && let Some(token) = &security.config.metrics_token
        && credentials::digests_match(
            &credentials::digest(credential),
            &credentials::digest(token),
        )
    {
        return Ok(Principal::new(
            mcp_core::principal::subjects::METRICS,
            Role::User,
            CredentialKind::MetricsToken,
        ));
    }
    security.authenticate(credential).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn ignores_forwarded_for_from_untrusted_peers() {
        let headers = forwarded(&["1.2.3.4"]);
        assert_eq!(
            client_ip(Some(ip("9.9.9.9")), &headers, &[]),
            Some(ip("9.9.9.9"))
        );
    }

    #[test]
    fn takes_the_rightmost_untrusted_hop_behind_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let headers = forwarded(&["6.6.6.6, 1.2.3.4", "10.0.0.7"]);
        assert_eq!(
            client_ip(Some(ip("10.0.0.1")), &headers, &trusted),
            Some(ip("1.2.3.4")),
            "a client cannot spoof its way past the proxy's own entry"
        );
        let garbage = forwarded(&["not-an-ip"]);
        assert_eq!(
            client_ip(Some(ip("10.0.0.1")), &garbage, &trusted),
            Some(ip("10.0.0.1"))
        );
        assert_eq!(
            client_ip(Some(ip("10.0.0.1")), &HeaderMap::new(), &trusted),
            Some(ip("10.0.0.1"))
        );
    }

    #[test]
    fn reads_only_well_formed_bearer_credentials() {
        let with = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
            h
        };
        assert_eq!(bearer(&HeaderMap::new()).unwrap(), None);
        assert_eq!(bearer(&with(b"Bearer abc")).unwrap(), Some("abc"));
        assert_eq!(bearer(&with(b"bearer  abc ")).unwrap(), Some("abc"));
        for bad in [
            &b"Basic dXNlcjpwYXNz"[..],
            b"Bearer",
            b"Bearer ",
            b"abc",
            b"Bearer \xff\xfe",
        ] {
            let e = bearer(&with(bad)).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::UNAUTHORIZED, "unauthenticated")
            );
        }
        let huge = format!("Bearer {}", "x".repeat(MAX_CREDENTIAL_LEN));
        assert!(bearer(&with(huge.as_bytes())).is_err());
    }
}
