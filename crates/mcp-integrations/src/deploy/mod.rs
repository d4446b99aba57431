//! Deploy triggers: `github.dispatch` (a `repository_dispatch` or `workflow_dispatch` event, with
//! a token) and `render.deploy` (a Render deploy hook per service), and the [`DeployTarget`]s
//! that `POST /deploy` turns into such tasks.
//!
//! Both map the remote answer onto the orchestrator's retry rules: a 2xx succeeds; 408, 429, 5xx
//! and transport failures are retried; any other 4xx (a bad token, an unknown repository or
//! workflow, an invalid input) would fail the same way again, so the task goes `dead` at once with
//! the remote message recorded. GitHub's rate limits answer 403 (or 429) with `Retry-After` or
//! `x-ratelimit-remaining: 0`; those are retried, with `retry_after_secs` in the error details.
//!
//! `docs/integrations.md` has the payload and result schemas.

mod github;
mod render;

pub use github::GithubDispatch;
pub use render::RenderDeploy;

use github::check_repo;
use render::parse_hook_url;

use crate::{Adapter, AdapterHealth};
use async_trait::async_trait;
use mcp_core::task::CreateTask;
use mcp_core::{HandlerError, HandlerRegistry};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Client, Response, StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The GitHub task type.
pub const GITHUB_DISPATCH: &str = "github.dispatch";
/// The Render task type.
pub const RENDER_DEPLOY: &str = "render.deploy";
/// The `event_type` of a `repository_dispatch` whose payload names none.
pub const DEFAULT_EVENT_TYPE: &str = "deploy";
/// The REST API version every GitHub call pins.
const GITHUB_API_VERSION: &str = "2022-11-28";
/// Most bytes of a remote error body kept in a task's error details.
const MAX_ERROR_BODY: usize = 4096;

/// Where `POST /deploy` sends a repository: one entry of `deploy_targets`.
///
/// In the config file:
///
/// ```toml
/// [deploy_targets]
/// "owner/app" = [
///   { kind = "github", event_type = "deploy" },
///   { kind = "github", workflow = "deploy.yml", ref = "main" },
///   { kind = "render", service = "web" },
/// ]
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeployTarget {
    /// A `github.dispatch` task: a `workflow_dispatch` when `workflow` is set, else a
    /// `repository_dispatch` of `event_type` (default `deploy`).
    Github {
        /// The repository to dispatch to; default: the one being deployed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        repo: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_type: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_payload: Option<Value>,
        /// A workflow file name (`deploy.yml`) or id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workflow: Option<String>,
        /// The branch or tag the workflow runs on (required with `workflow`).
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        git_ref: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inputs: Option<Value>,
    },
    /// A `render.deploy` task for a service of `render_deploy_hooks`.
    Render { service: String },
}

impl DeployTarget {
    /// The task that deploys `repo` to this target.
    pub fn task(&self, repo: &str) -> CreateTask {
        let (task_type, payload) = match self {
            DeployTarget::Github {
                repo: target_repo,
                event_type,
                client_payload,
                workflow,
                git_ref,
                inputs,
            } => {
                let mut payload = Map::new();
                let repo = target_repo.as_deref().unwrap_or(repo);
                payload.insert("repo".into(), json!(repo));
                match workflow {
                    Some(workflow) => {
                        payload.insert("workflow".into(), json!(workflow));
                        payload.insert("ref".into(), json!(git_ref));
                        if let Some(inputs) = inputs {
                            payload.insert("inputs".into(), inputs.clone());
                        }
                    }
                    None => {
                        let event_type = event_type.as_deref().unwrap_or(DEFAULT_EVENT_TYPE);
                        payload.insert("event_type".into(), json!(event_type));
                        let client_payload = client_payload
                            .clone()
                            .unwrap_or_else(|| json!({ "repo": repo }));
                        payload.insert("client_payload".into(), client_payload);
                    }
                }
                (GITHUB_DISPATCH, Value::Object(payload))
            }
            DeployTarget::Render { service } => (RENDER_DEPLOY, json!({ "service": service })),
        };
        CreateTask {
            task_type: task_type.to_owned(),
            payload: Some(payload),
            ..CreateTask::default()
        }
    }

    /// Refuses a target that could never make a valid task, so a bad config fails at start.
    pub fn check(&self) -> Result<(), String> {
        match self {
            DeployTarget::Github {
                workflow: Some(_),
                git_ref: None,
                ..
            } => Err("a github target with `workflow` needs `ref`".into()),
            DeployTarget::Github {
                workflow: Some(_),
                event_type,
                client_payload,
                ..
            } if event_type.is_some() || client_payload.is_some() => Err(
                "a github target has `workflow` (+ `ref`, `inputs`) or `event_type` \
                 (+ `client_payload`), not both"
                    .into(),
            ),
            DeployTarget::Github { repo: Some(r), .. } => check_repo(r),
            _ => Ok(()),
        }
    }
}

/// Settings of the deploy adapter.
#[derive(Debug, Clone)]
pub struct DeployConfig {
    /// `https://api.github.com`, or a GitHub Enterprise / test server.
    pub github_api_base: String,
    /// A token with `contents: write` (repository_dispatch) or `actions: write` (workflows);
    /// `None`: `github.dispatch` is not registered.
    pub github_token: Option<String>,
    /// Service name → Render deploy hook URL; empty: `render.deploy` is not registered.
    pub render_deploy_hooks: BTreeMap<String, String>,
    /// Limit of one remote call.
    pub timeout: Duration,
    pub user_agent: String,
    /// Shared with the `github.dispatch` handler, so the token and API base can change while
    /// running.
    pub github_live: GithubLive,
}

/// Where `github.dispatch` calls and with which token, changeable while the server runs (an
/// integration stored through `PUT /v1/integrations/{name}`).
#[derive(Clone, Default)]
pub struct GithubLive(Arc<RwLock<Option<GithubTarget>>>);

#[derive(Clone)]
struct GithubTarget {
    base: String,
    token: String,
}

impl GithubTarget {
    fn new(api_base: &str, token: String) -> Result<GithubTarget, String> {
        if token.is_empty() {
            return Err("github_token: must not be empty".into());
        }
        let base = Url::parse(api_base.trim_end_matches('/'))
            .map_err(|err| format!("github_api_base: {err}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err("github_api_base: must be an http(s) URL".into());
        }
        Ok(GithubTarget {
            base: base.as_str().trim_end_matches('/').to_owned(),
            token,
        })
    }
}

impl std::fmt::Debug for GithubLive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubLive")
            .field("attached", &self.is_attached())
            .finish_non_exhaustive()
    }
}

impl GithubLive {
    /// Checks the settings and, when a handler uses this holder, points it at them.
    /// `Ok(true)`: in effect for the next call; `Ok(false)`: valid, but no handler is running.
    pub fn set(&self, api_base: &str, token: String) -> Result<bool, String> {
        let target = GithubTarget::new(api_base, token)?;
        let mut current = self.0.write().unwrap_or_else(|e| e.into_inner());
        let attached = current.is_some();
        if attached {
            *current = Some(target);
        }
        Ok(attached)
    }

    /// Whether a running handler reads this holder.
    pub fn is_attached(&self) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    fn attach(&self, target: GithubTarget) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(target);
    }

    fn target(&self) -> Option<GithubTarget> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig {
            github_api_base: "https://api.github.com".into(),
            github_token: None,
            render_deploy_hooks: BTreeMap::new(),
            timeout: Duration::from_secs(30),
            user_agent: concat!("mkww-mcp/", env!("CARGO_PKG_VERSION"), " (deploy triggers)")
                .to_owned(),
            github_live: GithubLive::default(),
        }
    }
}

/// The adapter for deploy triggers: registers `github.dispatch` when a token is configured and
/// `render.deploy` when hooks are.
#[derive(Debug, Clone)]
pub struct DeployAdapter {
    github: Option<GithubDispatch>,
    render: Option<RenderDeploy>,
}

impl DeployAdapter {
    pub fn new(config: DeployConfig) -> Result<Self, String> {
        let client = Client::builder()
            .user_agent(config.user_agent.as_str())
            .timeout(config.timeout)
            .build()
            .map_err(|err| err.to_string())?;
        let github = match config.github_token.filter(|t| !t.is_empty()) {
            Some(token) => {
                config
                    .github_live
                    .attach(GithubTarget::new(&config.github_api_base, token)?);
                Some(GithubDispatch {
                    client: client.clone(),
                    live: config.github_live,
                })
            }
            None => None,
        };
        for (service, url) in &config.render_deploy_hooks {
            parse_hook_url(url).map_err(|err| format!("render_deploy_hooks.{service}: {err}"))?;
        }
        let render = (!config.render_deploy_hooks.is_empty()).then(|| RenderDeploy {
            client,
            hooks: config.render_deploy_hooks,
        });
        Ok(DeployAdapter { github, render })
    }
}

#[async_trait]
impl Adapter for DeployAdapter {
    fn name(&self) -> &str {
        "deploy"
    }

    fn task_types(&self) -> Vec<String> {
        let mut types = Vec::new();
        if self.github.is_some() {
            types.push(GITHUB_DISPATCH.to_owned());
        }
        if self.render.is_some() {
            types.push(RENDER_DEPLOY.to_owned());
        }
        types
    }

    /// Always healthy: a failing remote shows in the tasks' errors.
    async fn health(&self) -> AdapterHealth {
        AdapterHealth::Healthy
    }

    fn register(&self, registry: &mut HandlerRegistry) {
        if let Some(github) = &self.github {
            registry.register(GITHUB_DISPATCH, github.clone());
        }
        if let Some(render) = &self.render {
            registry.register(RENDER_DEPLOY, render.clone());
        }
    }
}

/// 408, 429 and 5xx may well be different next time.
fn is_retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// `Retry-After` in seconds (the delta form; an HTTP date is ignored), or GitHub's
/// `x-ratelimit-reset` epoch second when the primary rate limit is used up.
fn retry_after(headers: &HeaderMap) -> Option<u64> {
    if let Some(seconds) =
        header_str(headers, RETRY_AFTER.as_str()).and_then(|v| v.trim().parse().ok())
    {
        return Some(seconds);
    }
    if header_str(headers, "x-ratelimit-remaining") == Some("0") {
        let reset: u64 = header_str(headers, "x-ratelimit-reset")?
            .trim()
            .parse()
            .ok()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        return Some(reset.saturating_sub(now));
    }
    None
}

/// The body as JSON when it parses, else as (at most [`MAX_ERROR_BODY`] bytes of) text; `null`
/// when empty (GitHub's 204) or unreadable.
async fn read_body(response: Response) -> Value {
    let bytes = match response.bytes().await {
        Ok(bytes) => bytes,
        Err(_) => return Value::Null,
    };
    if bytes.is_empty() {
        return Value::Null;
    }
    if let Ok(value) = serde_json::from_slice(&bytes) {
        return value;
    }
    let cut = &bytes[..bytes.len().min(MAX_ERROR_BODY)];
    Value::String(String::from_utf8_lossy(cut).into_owned())
}

/// GitHub's `{"message": …}` (with its `errors`), Render's `{"message"}` or `{"error"}`.
fn remote_message(body: &Value) -> Option<String> {
    let message = body
        .get("message")
        .or_else(|| body.get("error"))
        .and_then(Value::as_str)?;
    let errors: Vec<String> = body
        .get("errors")
        .and_then(Value::as_array)
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| e.get("message").and_then(Value::as_str).or(e.as_str()))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if errors.is_empty() {
        Some(message.to_owned())
    } else {
        Some(format!("{message} ({})", errors.join("; ")))
    }
}

fn error_details(status: StatusCode, body: Value, retry_after: Option<u64>) -> Value {
    let mut details = json!({ "status": status.as_u16(), "body": body });
    if let Some(seconds) = retry_after {
        details["retry_after_secs"] = json!(seconds);
    }
    details
}

/// A failure before a status was read. Only a request reqwest refuses to build, or a redirect
/// loop, would fail the same way next time.
fn transport_error(target: &str, err: reqwest::Error) -> HandlerError {
    let retryable = !(err.is_redirect() || err.is_builder());
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect"
    } else {
        "request"
    };
    // Without the URL: a Render hook's query is its key.
    crate::http::request_failure(target, err, kind, retryable)
}

#[cfg(test)]
mod tests {
    use super::github::Dispatch;
    use super::*;

    #[test]
    fn targets_become_tasks() {
        let targets: Vec<DeployTarget> = serde_json::from_value(json!([
            {"kind": "github", "event_type": "deploy"},
            {"kind": "github", "workflow": "deploy.yml", "ref": "main"},
            {"kind": "render", "service": "web"},
        ]))
        .unwrap();
        let tasks: Vec<CreateTask> = targets.iter().map(|t| t.task("owner/app")).collect();
        assert_eq!(tasks[0].task_type, GITHUB_DISPATCH);
        assert_eq!(
            tasks[0].payload,
            Some(
                json!({"repo": "owner/app", "event_type": "deploy", "client_payload": {"repo": "owner/app"}})
            )
        );
        assert_eq!(
            tasks[1].payload,
            Some(json!({"repo": "owner/app", "workflow": "deploy.yml", "ref": "main"}))
        );
        assert_eq!(tasks[2].task_type, RENDER_DEPLOY);
        assert_eq!(tasks[2].payload, Some(json!({"service": "web"})));
        for (target, task) in targets.iter().zip(&tasks) {
            target.check().unwrap();
            if task.task_type == GITHUB_DISPATCH {
                Dispatch::from_payload(task.payload.as_ref().unwrap()).unwrap();
            }
        }
    }

    #[test]
    fn bad_targets_are_refused() {
        let parse = |v: Value| serde_json::from_value::<DeployTarget>(v);
        assert!(parse(json!({"kind": "gitlab"})).is_err());
        assert!(parse(json!({"kind": "render"})).is_err());
        assert!(parse(json!({"kind": "github", "evnt_type": "x"})).is_err());
        let no_ref = parse(json!({"kind": "github", "workflow": "d.yml"})).unwrap();
        assert!(no_ref.check().is_err());
    }

    #[test]
    fn reads_remote_messages() {
        let body = json!({"message": "Validation Failed", "errors": [{"message": "bad input"}]});
        assert_eq!(
            remote_message(&body).unwrap(),
            "Validation Failed (bad input)"
        );
        assert_eq!(remote_message(&json!({"error": "nope"})).unwrap(), "nope");
        assert_eq!(remote_message(&json!("text")), None);
    }

    #[test]
    fn retry_after_comes_from_the_header_or_the_rate_limit_reset() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "60".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(60));
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-remaining", "0".parse().unwrap());
        headers.insert("x-ratelimit-reset", "1".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(0));
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }
}
