//! The MCP server handler: what `initialize` and `server/discover` announce, and the dispatch
//! of tools (`tools.rs`), resources and subscriptions (`resources.rs`) and prompts
//! (`prompts.rs`). One `Hub` serves one HTTP request, as the principal the guard found.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;
use axum::http::request::Parts;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{
    CallToolResult, ContentBlock, GetPromptRequestParams, GetPromptResponse, Implementation,
    ListPromptsResult, ListResourceTemplatesResult, PaginatedRequestParams, ProtocolVersion,
    ReadResourceRequestParams, ReadResourceResponse, ServerCapabilities, ServerConfig,
    SubscriptionFilter,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::{ErrorData, RoleServer, ServerHandler, tool_handler};
use serde_json::json;
use std::borrow::Cow;
use std::sync::LazyLock;

/// The protocol versions `/mcp` answers, oldest first: 2026-07-28 without a handshake, the
/// two before it through `initialize`.
pub const PROTOCOL_VERSIONS: &[ProtocolVersion] = &[
    ProtocolVersion::V_2025_06_18,
    ProtocolVersion::V_2025_11_25,
    ProtocolVersion::V_2026_07_28,
];

/// The tools never change: their schemas are built once. Tasks and memory (`tools.rs`), then
/// schedules and workflows (`orchestration.rs`).
static TOOLS: LazyLock<ToolRouter<Hub>> =
    LazyLock::new(|| Hub::tool_router() + Hub::orchestration_router());

/// The MCP side of the API state, for one request.
#[derive(Clone)]
pub struct Hub {
    pub(super) state: AppState,
    tool_router: &'static ToolRouter<Hub>,
}

impl Hub {
    pub fn new(state: AppState) -> Self {
        Hub {
            state,
            tool_router: &TOOLS,
        }
    }
}

/// The caller, as the guard authenticated it for the HTTP request that carries this message.
pub(super) fn principal(context: &RequestContext<RoleServer>) -> Result<Principal, ErrorData> {
    context
        .extensions
        .get::<Parts>()
        .and_then(|parts| parts.extensions.get::<Principal>())
        .cloned()
        .ok_or_else(|| ErrorData::invalid_request("this request carries no credentials", None))
}

/// The request id of the HTTP request that carries an MCP message: the SDK runs handlers in
/// tasks of its own, where `request_id::current` does not reach, so `serve` puts it here.
#[derive(Debug, Clone)]
pub(super) struct McpRequestId(pub String);

/// The request id of the HTTP request (`x-request-id`), for correlation ids and errors.
pub(super) fn request_id_of(context: &RequestContext<RoleServer>) -> Option<String> {
    context
        .extensions
        .get::<Parts>()
        .and_then(|parts| parts.extensions.get::<McpRequestId>())
        .map(|id| id.0.clone())
}

/// A tool error: `isError` with the API's error body (`code`, `message`, `request_id`) as JSON
/// text, so an assistant and a program read the same stable code as REST clients do.
pub(super) fn tool_error(error: ApiError, request_id: Option<&str>) -> CallToolResult {
    let mut detail = json!({
        "code": error.code,
        "message": error.message,
        "request_id": request_id.unwrap_or_default(),
    });
    if let Some(details) = error.details {
        detail["details"] = details;
    }
    CallToolResult::error(vec![ContentBlock::text(
        json!({ "error": detail }).to_string(),
    )])
}

/// A protocol error (resources, prompts) carrying the API's code in its data.
pub(super) fn protocol_error(error: ApiError) -> ErrorData {
    let data = Some(json!({"code": error.code}));
    match error.status.as_u16() {
        404 => ErrorData::resource_not_found(error.message, data),
        400 | 422 => ErrorData::invalid_params(error.message, data),
        _ => ErrorData::invalid_request(error.message, data),
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Hub {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_prompts()
                .build(),
        )
        .with_server_info(Implementation::new("mkww-mcp", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "MKWW MCP, the hub of the ecosystem: create and follow tasks, read and write \
             conversation memory, schedule tasks and run workflows (DAGs of tasks). Tasks are \
             `mkww://tasks/{id}`, conversations `mkww://conversations/{id}`; subscribe to \
             either to hear of changes.",
        )
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(PROTOCOL_VERSIONS)
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(super::resources::templates())
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let principal = principal(&context)?;
        super::resources::read(&self.state, &principal, &request.uri)
            .await
            .map(Into::into)
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(requested.supported_by(&self.get_info().capabilities))
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        super::resources::listen(&self.state, context).await
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Ok(super::prompts::list())
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let principal = principal(&context)?;
        super::prompts::get(&self.state, &principal, request)
            .await
            .map(Into::into)
    }
}
