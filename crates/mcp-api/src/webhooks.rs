//! Outgoing webhooks: subscribe a URL to events, list and delete subscriptions, read a webhook's
//! delivery log and redeliver an entry. The secret is shown once, in the reply that creates the
//! webhook, and stored sealed. Deliveries themselves are `webhook.deliver` tasks (see
//! `mcp-integrations`'s `webhooks`).

use crate::access::Access::Requires;
use crate::auth::{ClientIp, Principal};
use crate::endpoint::{Endpoint, endpoint};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::state::{AppState, WebhookState};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use mcp_core::outbound::{Forbidden, Host, Policy, Url};
use mcp_core::principal::Permission;
use mcp_core::services::Creator;
use mcp_core::task::CreateTask;
use mcp_core::webhooks::{
    DELIVER_TASK, SECRET_PURPOSE, Webhook, WebhookDelivery, generate_secret, valid_filter,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;
use uuid::Uuid;

/// The routes of this module and who may call them.
pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![
        endpoint(Requires(Permission::IntegrationsManage), routes!(create)),
        endpoint(Requires(Permission::IntegrationsManage), routes!(list)),
        endpoint(Requires(Permission::IntegrationsManage), routes!(delete)),
        endpoint(
            Requires(Permission::IntegrationsManage),
            routes!(deliveries),
        ),
        endpoint(Requires(Permission::IntegrationsManage), routes!(redeliver)),
    ]
}

/// Longest accepted webhook URL.
const MAX_URL_LEN: usize = 2048;
/// Most filters on one webhook.
const MAX_FILTERS: usize = 32;
/// Default and largest page of the delivery log.
const DEFAULT_DELIVERIES: u32 = 50;
const MAX_DELIVERIES: u32 = 500;

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
        .with_details(json!({"field": field}))
}

fn forbidden(forbidden: Forbidden) -> ApiError {
    ApiError::destination_forbidden(forbidden.to_string(), &forbidden, None)
}

fn webhook_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "webhook_not_found",
        format!("no webhook with id `{id}`"),
    )
}

fn state_of(state: &AppState) -> Result<&WebhookState, ApiError> {
    state.webhooks.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhooks_unavailable",
            "outgoing webhooks are not set up on this server",
        )
    })
}

/// Checks the URL's form and its host with the outbound guard: an address (however spelt) is
/// checked as it is, a name after resolving it, unless the policy allows the name. The delivery
/// checks again at every attempt, on the addresses it dials.
async fn check_url(url: &str, policy: &Policy) -> Result<(), ApiError> {
    if url.len() > MAX_URL_LEN {
        return Err(invalid(
            "url",
            format!("a url has at most {MAX_URL_LEN} bytes"),
        ));
    }
    let parsed = Url::parse(url).map_err(|_| invalid("url", "the url is not valid"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("url", "the url must be http or https"));
    }
    let host = parsed
        .host()
        .ok_or_else(|| invalid("url", "the url has no host"))?;
    policy.check_host(&host).map_err(forbidden)?;
    let Host::Domain(name) = host else {
        return Ok(());
    };
    if policy.allows_host(name) {
        return Ok(());
    }
    let port = parsed.port_or_known_default().unwrap_or(80);
    let addrs = tokio::net::lookup_host((name, port))
        .await
        .map_err(|e| invalid("url", format!("cannot resolve `{name}`: {e}")))?;
    for addr in addrs {
        policy.check_ip(name, addr.ip()).map_err(forbidden)?;
    }
    Ok(())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where deliveries are POSTed (http or https).
    pub url: String,
    /// Event filters: exact types (`task.dead`), prefixes (`task.*`) or `*`.
    pub events: Vec<String>,
}

/// A new webhook, with its secret (shown only here).
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// `whsec_` + base64 of the 32-byte signing key.
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<Webhook>,
}

/// Subscribe a URL to events.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = CreateWebhook,
    responses(
        (status = 201, description = "created; the secret is shown only now", body = CreatedWebhook),
        (status = 422, description = "bad url or filter, or a forbidden target (`destination_forbidden`)", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ip: ClientIp,
    ApiJson(request): ApiJson<CreateWebhook>,
) -> Result<(StatusCode, Json<CreatedWebhook>), ApiError> {
    let hooks = state_of(&state)?;
    if request.events.is_empty() || request.events.len() > MAX_FILTERS {
        return Err(invalid(
            "events",
            format!("a webhook has 1 to {MAX_FILTERS} event filters"),
        ));
    }
    if let Some(bad) = request.events.iter().find(|f| !valid_filter(f)) {
        return Err(invalid(
            "events",
            format!("`{bad}` is not an event filter (`type`, `prefix.*` or `*`)"),
        ));
    }
    check_url(&request.url, &hooks.outbound).await?;
    let secret = generate_secret();
    let sealed = hooks
        .secrets
        .seal(secret.as_bytes(), SECRET_PURPOSE)
        .map_err(|e| {
            tracing::error!(error = %e, "cannot seal a webhook secret");
            ApiError::internal()
        })?;
    let webhook = Webhook {
        id: Uuid::now_v7(),
        url: request.url,
        events: request.events,
        secret_sealed: sealed,
        enabled: true,
        created_by: principal.subject.clone(),
        created_at: Utc::now(),
        failing_since: None,
        disabled_at: None,
    };
    hooks.store.create_webhook(&webhook).await?;
    state
        .security
        .audit(
            "webhook.created",
            Some(&principal.subject),
            ip,
            json!({"webhook": webhook.id, "url": webhook.url, "events": webhook.events}),
        )
        .await;
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook { webhook, secret }),
    ))
}

/// List webhooks (never their secrets).
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    responses((status = 200, description = "all webhooks", body = WebhookList)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<WebhookList>, ApiError> {
    let webhooks = state_of(&state)?.store.list_webhooks().await?;
    Ok(Json(WebhookList { webhooks }))
}

/// Delete a webhook and its delivery log; pending deliveries are dropped.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "webhook id")),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "no such webhook", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    ip: ClientIp,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let webhook_id = Uuid::parse_str(&id).map_err(|_| webhook_not_found(&id))?;
    if !state_of(&state)?.store.delete_webhook(webhook_id).await? {
        return Err(webhook_not_found(&id));
    }
    state
        .security
        .audit(
            "webhook.deleted",
            Some(&principal.subject),
            ip,
            json!({"webhook": webhook_id}),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// Most entries (default 50, at most 500).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<WebhookDelivery>,
}

/// A webhook's delivery log, newest first.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "webhook id"), DeliveryQuery),
    responses(
        (status = 200, description = "the delivery log", body = DeliveryList),
        (status = 404, description = "no such webhook", body = ErrorBody),
    ))]
pub async fn deliveries(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<DeliveryQuery>,
) -> Result<Json<DeliveryList>, ApiError> {
    let hooks = state_of(&state)?;
    let webhook_id = Uuid::parse_str(&id).map_err(|_| webhook_not_found(&id))?;
    if hooks.store.webhook(webhook_id).await?.is_none() {
        return Err(webhook_not_found(&id));
    }
    let limit = query
        .limit
        .unwrap_or(DEFAULT_DELIVERIES)
        .clamp(1, MAX_DELIVERIES);
    let deliveries = hooks.store.list_deliveries(webhook_id, limit).await?;
    Ok(Json(DeliveryList { deliveries }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Redelivery {
    pub delivery_id: Uuid,
    /// The `webhook.deliver` task that sends it again.
    pub task_id: Uuid,
    pub at: DateTime<Utc>,
}

/// Send a logged delivery again (same `webhook-id`, new timestamp and signature). A disabled
/// webhook is enabled again by this.
#[utoipa::path(post, path = "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", tag = "webhooks",
    params(("id" = String, Path, description = "webhook id"),
           ("delivery_id" = String, Path, description = "delivery id")),
    responses(
        (status = 202, description = "enqueued", body = Redelivery),
        (status = 404, description = "no such webhook or delivery", body = ErrorBody),
    ))]
pub async fn redeliver(
    State(state): State<AppState>,
    principal: Principal,
    ip: ClientIp,
    Path((id, delivery_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Redelivery>), ApiError> {
    let hooks = state_of(&state)?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "delivery_not_found",
            format!("webhook `{id}` has no delivery `{delivery_id}`"),
        )
    };
    let webhook_id = Uuid::parse_str(&id).map_err(|_| webhook_not_found(&id))?;
    let webhook = hooks
        .store
        .webhook(webhook_id)
        .await?
        .ok_or_else(|| webhook_not_found(&id))?;
    let delivery_uuid = Uuid::parse_str(&delivery_id).map_err(|_| not_found())?;
    let delivery = hooks
        .store
        .delivery(delivery_uuid)
        .await?
        .filter(|d| d.webhook_id == webhook_id)
        .ok_or_else(not_found)?;
    if !webhook.enabled {
        hooks
            .store
            .set_webhook_health(webhook_id, None, true)
            .await?;
    }
    let inserted = state
        .tasks
        .create(
            Creator::Principal(&principal),
            CreateTask {
                task_type: DELIVER_TASK.to_owned(),
                payload: Some(json!({ "delivery_id": delivery.id })),
                max_attempts: Some(hooks.max_attempts),
                ..CreateTask::default()
            },
            None,
        )
        .await?;
    state
        .security
        .audit(
            "webhook.redelivered",
            Some(&principal.subject),
            ip,
            json!({"webhook": webhook_id, "delivery": delivery.id}),
        )
        .await;
    Ok((
        StatusCode::ACCEPTED,
        Json(Redelivery {
            delivery_id: delivery.id,
            task_id: inserted.task.id,
            at: Utc::now(),
        }),
    ))
}
