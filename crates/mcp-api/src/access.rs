//! Who may call which route: one table, read by the guard for every request. A route missing
//! from it is refused (fail closed), and the role × route test walks it against the OpenAPI
//! document so that a new route cannot ship without an entry.

use axum::http::Method;
use mcp_core::principal::Permission;

/// What a route demands of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without credentials (probes, the OpenAPI document, login).
    Public,
    /// Any authenticated principal.
    Authenticated,
    /// A principal whose role grants this permission.
    Requires(Permission),
}

#[derive(Debug, Clone, Copy)]
pub struct RouteAccess {
    pub method: &'static str,
    /// The route as registered in the router, e.g. `/v1/tasks/{id}`.
    pub path: &'static str,
    pub access: Access,
}

const fn route(method: &'static str, path: &'static str, access: Access) -> RouteAccess {
    RouteAccess {
        method,
        path,
        access,
    }
}

use Access::{Authenticated, Public, Requires};
use Permission::*;

/// Every route of the API.
pub const ROUTES: &[RouteAccess] = &[
    route("GET", "/healthz", Public),
    route("GET", "/readyz", Public),
    route("GET", "/v1/health", Requires(HealthRead)),
    route("GET", "/openapi.json", Public),
    route("GET", "/metrics", Requires(MetricsRead)),
    route("POST", "/v1/auth/login", Public),
    route("POST", "/v1/auth/refresh", Public),
    route("POST", "/v1/auth/logout", Public),
    route("GET", "/v1/auth/me", Authenticated),
    route("POST", "/v1/tasks", Requires(TasksCreate)),
    route("GET", "/v1/tasks", Requires(TasksReadOwn)),
    route("POST", "/v1/tasks/batch", Requires(TasksCreate)),
    route("GET", "/v1/tasks/{id}", Requires(TasksReadOwn)),
    route("POST", "/v1/tasks/{id}/cancel", Requires(TasksCancelOwn)),
    route("POST", "/v1/tasks/{id}/retry", Requires(TasksManage)),
    route("GET", "/v1/queues", Requires(TasksReadAny)),
    route("GET", "/v1/routes", Requires(TasksRun)),
    route("POST", "/v1/api-keys", Requires(ApiKeysManage)),
    route("GET", "/v1/api-keys", Requires(ApiKeysManage)),
    route("DELETE", "/v1/api-keys/{id}", Requires(ApiKeysManage)),
    route("POST", "/v1/users", Requires(UsersManage)),
    route("GET", "/v1/users", Requires(UsersManage)),
    route("PATCH", "/v1/users/{id}", Requires(UsersManage)),
    route("GET", "/v1/audit", Requires(AuditRead)),
    // Authenticates itself: with the upgrade request or the first frame (docs/websocket.md).
    route("GET", "/v1/ws", Public),
    route("POST", "/v1/conversations", Requires(MemoryWrite)),
    route("GET", "/v1/conversations", Requires(MemoryRead)),
    route("POST", "/v1/conversations/import", Requires(MemoryManage)),
    route("GET", "/v1/conversations/{id}", Requires(MemoryRead)),
    route("PATCH", "/v1/conversations/{id}", Requires(MemoryWrite)),
    route("DELETE", "/v1/conversations/{id}", Requires(MemoryManage)),
    route(
        "POST",
        "/v1/conversations/{id}/messages",
        Requires(MemoryWrite),
    ),
    route(
        "GET",
        "/v1/conversations/{id}/messages",
        Requires(MemoryRead),
    ),
    route(
        "PATCH",
        "/v1/conversations/{id}/messages/{message_id}",
        Requires(MemoryWrite),
    ),
    route(
        "DELETE",
        "/v1/conversations/{id}/messages/{message_id}",
        Requires(MemoryWrite),
    ),
    route(
        "GET",
        "/v1/conversations/{id}/context",
        Requires(MemoryRead),
    ),
    route(
        "POST",
        "/v1/conversations/{id}/summary",
        Requires(MemoryWrite),
    ),
    route("GET", "/v1/conversations/{id}/export", Requires(MemoryRead)),
    route("GET", "/v1/search/messages", Requires(MemoryRead)),
    route("GET", "/v1/integrations", Requires(IntegrationsManage)),
    route(
        "GET",
        "/v1/integrations/{name}",
        Requires(IntegrationsManage),
    ),
    route(
        "PUT",
        "/v1/integrations/{name}",
        Requires(IntegrationsManage),
    ),
    route(
        "DELETE",
        "/v1/integrations/{name}",
        Requires(IntegrationsManage),
    ),
    route("POST", "/v1/webhooks", Requires(IntegrationsManage)),
    route("GET", "/v1/webhooks", Requires(IntegrationsManage)),
    route("DELETE", "/v1/webhooks/{id}", Requires(IntegrationsManage)),
    route(
        "GET",
        "/v1/webhooks/{id}/deliveries",
        Requires(IntegrationsManage),
    ),
    route(
        "POST",
        "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
        Requires(IntegrationsManage),
    ),
    // Authenticates itself: each source's deliveries carry a signature over the body, checked
    // by the handler (crate::hooks, docs/integrations.md).
    route("POST", "/v1/hooks/{source}", Public),
    // Authenticates itself: Discord signs every request with Ed25519 (crate::discord).
    route("POST", "/v1/discord/interactions", Public),
    route("GET", "/v1/vrchat/status", Requires(VrchatRead)),
    route(
        "POST",
        "/v1/vrchat/auth/login",
        Requires(IntegrationsManage),
    ),
    route("POST", "/v1/vrchat/auth/code", Requires(IntegrationsManage)),
    route("GET", "/v1/vrchat/users/me", Requires(VrchatRead)),
    route("GET", "/v1/vrchat/users/{id}", Requires(VrchatRead)),
    route("GET", "/v1/vrchat/worlds/{id}", Requires(VrchatRead)),
    route(
        "GET",
        "/v1/vrchat/instances/{location}",
        Requires(VrchatRead),
    ),
    route("GET", "/v1/vrchat/friends/online", Requires(VrchatRead)),
    route("GET", "/v1/vcc/projects", Requires(VccRead)),
    route("POST", "/v1/vcc/projects", Requires(VccManage)),
    route("GET", "/v1/vcc/projects/{id}", Requires(VccRead)),
    route("DELETE", "/v1/vcc/projects/{id}", Requires(VccManage)),
    route("GET", "/v1/vcc/repositories", Requires(VccRead)),
    route("POST", "/v1/vcc/repositories", Requires(VccManage)),
    route("POST", "/v1/vcc/repositories/refresh", Requires(VccManage)),
    route("DELETE", "/v1/vcc/repositories/{id}", Requires(VccManage)),
    // The existing bots' routes, at their historical paths (crate::bots).
    route("POST", "/deploy", Requires(TasksCreate)),
    route("POST", "/ask-gemini", Requires(TasksCreate)),
];

/// The entry for a matched route, if the table has one.
pub fn lookup(method: &Method, path: &str) -> Option<&'static RouteAccess> {
    ROUTES
        .iter()
        .find(|r| r.path == path && r.method == method.as_str())
}

/// Routes that are never rate limited (load balancers poll them).
pub fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// Routes limited per IP by the stricter `auth` class.
pub fn is_auth(path: &str) -> bool {
    path.starts_with("/v1/auth/")
}
