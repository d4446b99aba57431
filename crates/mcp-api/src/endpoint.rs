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
    let (router, mut openapi) = router.split_for_parts();
    unique_operation_ids(&mut openapi);
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
    let mut openapi = endpoints
        .into_iter()
        .fold(OpenApiRouter::with_openapi(base), |router, endpoint| {
            router.routes(endpoint.methods)
        })
        .into_openapi();
    unique_operation_ids(&mut openapi);
    openapi
}

/// OpenAPI requires every `operationId` to be unique, and utoipa takes each from its handler's
/// name, which repeats across modules (`list`, `get`, `create`…). A repeated one becomes
/// `{tag}_{name}` (`webhooks_list`), and, should that repeat too, `{method}_{path}`; a unique one
/// is left as it is, so clients generated from the document keep their names.
fn unique_operation_ids(openapi: &mut OpenApi) {
    use std::collections::HashMap;
    fn operations(
        openapi: &mut OpenApi,
    ) -> impl Iterator<Item = (String, &'static str, &mut utoipa::openapi::path::Operation)> {
        openapi.paths.paths.iter_mut().flat_map(|(path, item)| {
            [
                ("get", item.get.as_mut()),
                ("put", item.put.as_mut()),
                ("post", item.post.as_mut()),
                ("delete", item.delete.as_mut()),
                ("patch", item.patch.as_mut()),
                ("head", item.head.as_mut()),
                ("options", item.options.as_mut()),
                ("trace", item.trace.as_mut()),
            ]
            .into_iter()
            .filter_map(move |(method, op)| op.map(|op| (path.clone(), method, op)))
        })
    }
    fn count(openapi: &mut OpenApi) -> HashMap<String, usize> {
        let mut seen = HashMap::new();
        for (_, _, op) in operations(openapi) {
            if let Some(id) = &op.operation_id {
                *seen.entry(id.clone()).or_insert(0) += 1;
            }
        }
        seen
    }
    let seen = count(openapi);
    for (_, _, op) in operations(openapi) {
        if let Some(id) = op.operation_id.clone().filter(|id| seen[id] > 1) {
            let tag = op.tags.as_ref().and_then(|t| t.first()).cloned();
            op.operation_id = Some(match tag {
                Some(tag) => format!("{tag}_{id}"),
                None => id,
            });
        }
    }
    let seen = count(openapi);
    for (path, method, op) in operations(openapi) {
        if op.operation_id.as_ref().is_some_and(|id| seen[id] > 1) {
            let path: String = path
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            op.operation_id = Some(format!("{method}{path}").trim_end_matches('_').to_owned());
        }
    }
}
