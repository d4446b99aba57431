//! A fake of VRChat's web API for tests: Basic login with URL-encoded credentials, the `auth`
//! cookie, the two-factor step (authenticator or emailed code), real-shaped JSON, 401s for
//! sessions it forgot, and scripted 429/5xx answers. Shared by the client's tests and the
//! binary's.
#![allow(dead_code)]

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use mcp_integrations::vrchat;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

pub const USERNAME: &str = "alice@example.com";
pub const PASSWORD: &str = "pa:ss word";
/// RFC 6238's SHA-1 secret in base32.
pub const TOTP_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
pub const USER_ID: &str = "usr_c1644b5b-3ca4-45b4-97c6-a2a0de70d469";
pub const WORLD_ID: &str = "wrld_4432ea9b-729c-46e3-8eaf-846aa0a37fdd";

#[derive(Clone, Copy, PartialEq)]
pub enum TwoFactor {
    None,
    Totp,
    Email,
}

#[derive(Default)]
pub struct Fake {
    pub two_factor: Option<TwoFactorMode>,
    /// Valid `auth` cookies, and those that passed the second factor.
    pub sessions: HashSet<String>,
    pub verified: HashSet<String>,
    pub emailed_code: String,
    pub logins: u32,
    /// Requests per path.
    pub calls: BTreeMap<String, u32>,
    /// Answers to give to the next requests of a path before the real one.
    pub scripted: BTreeMap<String, Vec<(u16, Option<u64>)>>,
    pub user_agents: Vec<String>,
}

#[derive(Clone, Copy)]
pub struct TwoFactorMode(pub TwoFactor);

pub type Shared = Arc<Mutex<Fake>>;

fn vrchat_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(
            json!({"error": {"message": format!("\"{message}\""), "status_code": status.as_u16()}}),
        ),
    )
        .into_response()
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// Counts the call, records the User-Agent and plays a scripted answer if one is queued.
fn enter(fake: &Shared, path: &str, headers: &HeaderMap) -> Option<Response> {
    let mut fake = fake.lock().unwrap();
    *fake.calls.entry(path.to_owned()).or_default() += 1;
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    fake.user_agents.push(agent);
    let queued = fake.scripted.get_mut(path)?;
    if queued.is_empty() {
        return None;
    }
    let (status, retry_after) = queued.remove(0);
    let status = StatusCode::from_u16(status).unwrap();
    let mut response = vrchat_error(status, "scripted");
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, seconds.into());
    }
    Some(response)
}

/// Whether the request carries a session that passed every step.
fn authenticated(fake: &Fake, headers: &HeaderMap) -> bool {
    let Some(auth) = cookie(headers, "auth") else {
        return false;
    };
    if !fake.sessions.contains(&auth) {
        return false;
    }
    match fake.two_factor.map(|m| m.0).unwrap_or(TwoFactor::None) {
        TwoFactor::None => true,
        _ => {
            cookie(headers, "twoFactorAuth").is_some_and(|t| t == format!("tfa_{auth}"))
                && fake.verified.contains(&auth)
        }
    }
}

fn current_user() -> Value {
    json!({
        "id": USER_ID,
        "displayName": "Alice",
        "username": "alice",
        "bio": "",
        "currentAvatarImageUrl": "https://api.vrchat.cloud/api/1/file/file_1/1/file",
        "friends": ["usr_2", "usr_3"],
        "onlineFriends": ["usr_2"],
        "status": "active",
        "tags": ["system_trust_basic"],
        "twoFactorAuthEnabled": true,
    })
}

async fn auth_user(State(fake): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(r) = enter(&fake, "auth/user", &headers) {
        return r;
    }
    let mut fake = fake.lock().unwrap();
    if let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic)
            .unwrap_or_default();
        let decoded = String::from_utf8(decoded).unwrap_or_default();
        // VRChat wants both halves URL-encoded.
        let expected = format!("{}:{}", "alice%40example.com", "pa%3Ass%20word");
        if decoded != expected {
            return vrchat_error(
                StatusCode::UNAUTHORIZED,
                "Invalid Username/Email or Password",
            );
        }
        fake.logins += 1;
        let token = format!("authcookie_{}", uuid::Uuid::new_v4());
        fake.sessions.insert(token.clone());
        let set_cookie = format!("auth={token}; Path=/; HttpOnly; Max-Age=604800");
        let body = match fake.two_factor.map(|m| m.0).unwrap_or(TwoFactor::None) {
            TwoFactor::None => current_user(),
            TwoFactor::Totp => json!({"requiresTwoFactorAuth": ["totp", "otp"]}),
            TwoFactor::Email => {
                fake.emailed_code = format!("{:06}", rand_code());
                json!({"requiresTwoFactorAuth": ["emailOtp"]})
            }
        };
        return ([(header::SET_COOKIE, set_cookie)], Json(body)).into_response();
    }
    if authenticated(&fake, &headers) {
        return Json(current_user()).into_response();
    }
    vrchat_error(StatusCode::UNAUTHORIZED, "Missing Credentials")
}

fn rand_code() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32 % 1_000_000
}

async fn verify(
    State(fake): State<Shared>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = enter(
        &fake,
        &format!("auth/twofactorauth/{kind}/verify"),
        &headers,
    ) {
        return r;
    }
    let mut fake = fake.lock().unwrap();
    let Some(auth) = cookie(&headers, "auth").filter(|a| fake.sessions.contains(a)) else {
        return vrchat_error(StatusCode::UNAUTHORIZED, "Missing Credentials");
    };
    let code = body["code"].as_str().unwrap_or_default().to_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ok = match kind.as_str() {
        "totp" => [now - 30, now, now + 30]
            .iter()
            .any(|t| vrchat::totp(TOTP_SECRET, *t).unwrap() == code),
        "emailotp" => !fake.emailed_code.is_empty() && code == fake.emailed_code,
        _ => false,
    };
    if !ok {
        return vrchat_error(StatusCode::BAD_REQUEST, "Invalid 2FA code");
    }
    fake.verified.insert(auth.clone());
    (
        [(
            header::SET_COOKIE,
            format!("twoFactorAuth=tfa_{auth}; Path=/; HttpOnly"),
        )],
        Json(json!({"verified": true})),
    )
        .into_response()
}

async fn user(State(fake): State<Shared>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Some(r) = enter(&fake, &format!("users/{id}"), &headers) {
        return r;
    }
    let fake = fake.lock().unwrap();
    if !authenticated(&fake, &headers) {
        return vrchat_error(StatusCode::UNAUTHORIZED, "Missing Credentials");
    }
    if id != "usr_2" {
        return vrchat_error(StatusCode::NOT_FOUND, "User Not Found");
    }
    Json(json!({
        "id": "usr_2", "displayName": "Bob", "bio": "hi", "status": "join me",
        "location": format!("{WORLD_ID}:12345~region(eu)"), "isFriend": true,
        "tags": ["system_trust_known"], "last_platform": "standalonewindows"
    }))
    .into_response()
}

async fn world(State(fake): State<Shared>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Some(r) = enter(&fake, &format!("worlds/{id}"), &headers) {
        return r;
    }
    let fake = fake.lock().unwrap();
    if !authenticated(&fake, &headers) {
        return vrchat_error(StatusCode::UNAUTHORIZED, "Missing Credentials");
    }
    if id != WORLD_ID {
        return vrchat_error(StatusCode::NOT_FOUND, &format!("World {id} not found"));
    }
    Json(json!({
        "id": WORLD_ID, "name": "The Great Pug", "authorId": "usr_3", "authorName": "Tupper",
        "capacity": 40, "occupants": 12, "releaseStatus": "public",
        "tags": ["system_approved"], "unityPackages": [{"platform": "standalonewindows", "unityVersion": "2022.3.22f1"}]
    }))
    .into_response()
}

async fn instance(
    State(fake): State<Shared>,
    Path(location): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = enter(&fake, &format!("instances/{location}"), &headers) {
        return r;
    }
    let fake = fake.lock().unwrap();
    if !authenticated(&fake, &headers) {
        return vrchat_error(StatusCode::UNAUTHORIZED, "Missing Credentials");
    }
    let Some((world_id, instance_id)) = location.split_once(':') else {
        return vrchat_error(StatusCode::BAD_REQUEST, "Invalid location");
    };
    if world_id != WORLD_ID {
        return vrchat_error(StatusCode::NOT_FOUND, "Instance Not Found");
    }
    Json(json!({
        "id": instance_id, "instanceId": instance_id, "location": location, "worldId": world_id,
        "n_users": 5, "capacity": 40, "region": "eu", "type": "public", "active": true
    }))
    .into_response()
}

async fn friends(
    State(fake): State<Shared>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = enter(&fake, "auth/user/friends", &headers) {
        return r;
    }
    let fake = fake.lock().unwrap();
    if !authenticated(&fake, &headers) {
        return vrchat_error(StatusCode::UNAUTHORIZED, "Missing Credentials");
    }
    assert_eq!(query.get("offline").map(String::as_str), Some("false"));
    let n: usize = query.get("n").and_then(|n| n.parse().ok()).unwrap_or(60);
    let offset: usize = query
        .get("offset")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let all: Vec<Value> = (0..3)
        .map(|i| json!({"id": format!("usr_{i}"), "displayName": format!("Friend {i}"), "status": "active", "location": "private"}))
        .collect();
    Json(all.into_iter().skip(offset).take(n).collect::<Vec<_>>()).into_response()
}

pub async fn start(two_factor: TwoFactor) -> (String, Shared) {
    let fake: Shared = Arc::new(Mutex::new(Fake {
        two_factor: Some(TwoFactorMode(two_factor)),
        ..Fake::default()
    }));
    let app = Router::new()
        .route("/api/1/auth/user", get(auth_user))
        .route("/api/1/auth/twofactorauth/{kind}/verify", post(verify))
        .route("/api/1/users/{id}", get(user))
        .route("/api/1/worlds/{id}", get(world))
        .route("/api/1/instances/{location}", get(instance))
        .route("/api/1/auth/user/friends", get(friends))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/api/1"), fake)
}
