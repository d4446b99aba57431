//! The `render.deploy` task: a Render deploy hook per service.

use super::*;
use crate::traced::SendTraced;
use async_trait::async_trait;
use mcp_core::{Handler, HandlerError, TaskContext};
use reqwest::header::ACCEPT;
use reqwest::{Client, Url};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The `render.deploy` payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenderPayload {
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    hook_url: Option<String>,
}

pub(super) fn parse_hook_url(url: &str) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|err| format!("not a valid URL ({err})"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return Err("must be an http(s) URL with a host".into());
    }
    Ok(parsed)
}

/// The handler for `render.deploy`.
#[derive(Clone)]
pub struct RenderDeploy {
    pub(super) client: Client,
    pub(super) hooks: BTreeMap<String, String>,
}

impl std::fmt::Debug for RenderDeploy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hook URLs carry their key: only the service names are shown.
        f.debug_struct("RenderDeploy")
            .field("services", &self.hooks.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RenderDeploy {
    /// The hook URL and a name for messages (never the URL: its query is the key).
    fn hook(&self, payload: &Value) -> Result<(Url, String), String> {
        let p = RenderPayload::deserialize(payload).map_err(|err| err.to_string())?;
        match (p.service, p.hook_url) {
            (Some(service), None) => {
                let url = self.hooks.get(&service).ok_or_else(|| {
                    let known: Vec<&str> = self.hooks.keys().map(String::as_str).collect();
                    format!(
                        "service: `{service}` has no deploy hook (configured: {})",
                        known.join(", ")
                    )
                })?;
                Ok((parse_hook_url(url)?, format!("Render service `{service}`")))
            }
            (None, Some(url)) => {
                let parsed = parse_hook_url(&url).map_err(|err| format!("hook_url: {err}"))?;
                let name = format!(
                    "Render hook {}{}",
                    parsed.host_str().unwrap_or_default(),
                    parsed.path()
                );
                Ok((parsed, name))
            }
            _ => Err("give either `service` or `hook_url`".into()),
        }
    }
}

#[async_trait]
impl Handler for RenderDeploy {
    fn validate(&self, payload: &Value) -> Result<(), String> {
        self.hook(payload).map(|_| ())
    }

    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let (url, target) = self
            .hook(&ctx.task.payload)
            .map_err(HandlerError::permanent)?;
        let response = self
            .client
            .post(url)
            .header(ACCEPT, "application/json")
            .send_traced()
            .await
            .map_err(|err| transport_error(&target, err))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = read_body(response).await;
        tracing::debug!(task_id = %ctx.task.id, status = status.as_u16(), "render.deploy answered");
        if status.is_success() {
            return Ok(body);
        }
        let message = remote_message(&body)
            .map(|m| format!("{target} answered {status}: {m}"))
            .unwrap_or_else(|| format!("{target} answered {status}"));
        let error = if is_retryable(status) {
            HandlerError::retryable(message)
        } else {
            HandlerError::permanent(message)
        };
        Err(error.with_details(error_details(status, body, retry_after)))
    }
}
