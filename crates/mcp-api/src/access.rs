//! Who may call which route: the table the guard reads for every request. It is built from the
//! endpoint declarations (`crate::endpoint`), so a route cannot exist without an entry; a
//! request that matches no entry is still refused (fail closed). The role × route test walks it
//! against the OpenAPI document.

use axum::http::Method;
use mcp_core::principal::Permission;
use std::collections::HashMap;
use std::sync::Arc;

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

/// Every route of the API with what it demands, found by path in one hash lookup (the guard
/// reads it on every request), with the path as a shared label for the request's metrics.
#[derive(Debug, Clone, Default)]
pub struct AccessTable {
    routes: Vec<RouteAccess>,
    /// Route path → its label and the indexes of its methods' entries in `routes`.
    by_path: HashMap<String, (Arc<str>, Vec<usize>)>,
}

impl AccessTable {
    pub(crate) fn new(routes: Vec<RouteAccess>) -> Self {
        let mut by_path: HashMap<String, (Arc<str>, Vec<usize>)> = HashMap::new();
        for (i, route) in routes.iter().enumerate() {
            by_path
                .entry(route.path.clone())
                .or_insert_with(|| (Arc::from(route.path.as_str()), Vec::new()))
                .1
                .push(i);
        }
        AccessTable { routes, by_path }
    }

    /// The entry for a matched route, if the table has one.
    pub fn lookup(&self, method: &Method, path: &str) -> Option<&RouteAccess> {
        self.labelled(method, path).map(|(route, _)| route)
    }

    /// The entry for a matched route and the route's path as a label, if the table has one.
    pub(crate) fn labelled(
        &self,
        method: &Method,
        path: &str,
    ) -> Option<(&RouteAccess, &Arc<str>)> {
        let (label, entries) = self.by_path.get(path)?;
        entries
            .iter()
            .map(|&i| &self.routes[i])
            .find(|r| r.method == method.as_str())
            .map(|route| (route, label))
    }

    pub fn iter(&self) -> impl Iterator<Item = &RouteAccess> {
        self.routes.iter()
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
