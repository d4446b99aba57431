//! One declaration per route. A handler's `#[utoipa::path]` attribute states its method, path
//! and OpenAPI operation; `utoipa_axum::routes!` reads them, and an [`Endpoint`] adds who may
//! call it and any layer of its own. Each handler module lists its endpoints, and
//! [`assemble`] builds from that one list the axum router, the guard's access table and the
//! paths of the OpenAPI document, so the three cannot disagree.

use crate::access::{Access, AccessTable, RouteAccess};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use utoipa::openapi::OpenApi;
use utoipa::openapi::path::PathItem;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

/// A route (its handler, method, path and operation, from `routes!`) and what it demands.
pub(crate) struct Endpoint<S> {
    access: Access,
    methods: UtoipaMethodRouter<S>,
    /// Its own largest body, read from the state when the router is built.
    body_limit: Option<fn(&S) -> usize>,
}

/// `endpoint(Requires(Permission::TasksCreate), routes!(create))`.
pub(crate) fn endpoint<S>(access: Access, methods: UtoipaMethodRouter<S>) -> Endpoint<S> {
    Endpoint {
        access,
        methods,
        body_limit: None,
    }
}

impl<S> Endpoint<S> {
    /// A body limit other than the API's default, for this route only.
    pub(crate) fn body_limit(mut self, limit: fn(&S) -> usize) -> Self {
        self.body_limit = Some(limit);
        self
    }

    fn access_entries(&self) -> impl Iterator<Item = RouteAccess> + '_ {
        self.methods.1.paths.iter().flat_map(move |(path, item)| {
            methods_of(item).map(move |method| RouteAccess {
                method,
                path: path.clone(),
                access: self.access,
            })
        })
    }
}

/// The HTTP methods a path item has operations for.
fn methods_of(item: &PathItem) -> impl Iterator<Item = &'static str> {
    [
        ("GET", item.get.is_some()),
        ("PUT", item.put.is_some()),
        ("POST", item.post.is_some()),
        ("DELETE", item.delete.is_some()),
        ("OPTIONS", item.options.is_some()),
        ("HEAD", item.head.is_some()),
        ("PATCH", item.patch.is_some()),
        ("TRACE", item.trace.is_some()),
    ]
    .into_iter()
    .filter_map(|(method, present)| present.then_some(method))
}

/// What the endpoints make: the router (without the guard and the outer layers), the table the
/// guard reads, and `base` with the endpoints' paths and schemas added.
pub(crate) struct Assembled<S> {
    pub router: Router<S>,
    pub table: AccessTable,
    pub openapi: OpenApi,
}

/// The access table alone, for callers without a state (the role × route test).
pub(crate) fn table<S>(endpoints: &[Endpoint<S>]) -> AccessTable {
    AccessTable::new(
        endpoints
            .iter()
            .flat_map(Endpoint::access_entries)
            .collect(),
    )
}

pub(crate) fn assemble<S>(endpoints: Vec<Endpoint<S>>, base: OpenApi, state: &S) -> Assembled<S>
where
    S: Clone + Send + Sync + 'static,
{
    let table = table(&endpoints);
    let mut router = OpenApiRouter::with_openapi(base);
    for endpoint in endpoints {
        let (schemas, paths, mut methods) = endpoint.methods;
        if let Some(limit) = endpoint.body_limit {
            methods = methods.layer(DefaultBodyLimit::max(limit(state)));
        }
        router = router.routes((schemas, paths, methods));
    }
    let (router, openapi) = router.split_for_parts();
    Assembled {
        router,
        table,
        openapi,
    }
}

/// The OpenAPI document alone, for callers without a state: the same paths, without layers.
pub(crate) fn document<S>(endpoints: Vec<Endpoint<S>>, base: OpenApi) -> OpenApi
where
    S: Clone + Send + Sync + 'static,
{
    endpoints
        .into_iter()
        .fold(OpenApiRouter::with_openapi(base), |router, endpoint| {
            router.routes(endpoint.methods)
        })
        .into_openapi()
}
