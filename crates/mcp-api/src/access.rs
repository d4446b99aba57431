//! Who may call which route: the table the guard reads for every request. It is built from the
//! endpoint declarations (`crate::endpoint`), so a route cannot exist without an entry; a
//! request that matches no entry is still refused (fail closed). The role × route test walks it
//! against the OpenAPI document.

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAccess {
    pub method: &'static str,
    /// The route as registered in the router, e.g. `/v1/tasks/{id}`.
    pub path: String,
    pub access: Access,
}

/// Every route of the API with what it demands.
#[derive(Debug, Clone, Default)]
pub struct AccessTable(Vec<RouteAccess>);

impl AccessTable {
    pub(crate) fn new(routes: Vec<RouteAccess>) -> Self {
        AccessTable(routes)
    }

    /// The entry for a matched route, if the table has one.
    pub fn lookup(&self, method: &Method, path: &str) -> Option<&RouteAccess> {
        self.0
            .iter()
            .find(|r| r.path == path && r.method == method.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = &RouteAccess> {
        self.0.iter()
    }
}

/// Routes that are never rate limited (load balancers poll them).
pub fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// Routes limited per IP by the stricter `auth` class.
pub fn is_auth(path: &str) -> bool {
    path.starts_with("/v1/auth/")
}
