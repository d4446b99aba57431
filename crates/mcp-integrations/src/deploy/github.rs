//! The `github.dispatch` task: a `repository_dispatch` or `workflow_dispatch` event, its
//! payload checked before the task is accepted.

use super::*;
use crate::traced::SendTraced;
use async_trait::async_trait;
use mcp_core::{Handler, HandlerError, TaskContext};
use reqwest::header::ACCEPT;
use reqwest::{Client, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

/// The `github.dispatch` payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GithubPayload {
    repo: String,
    #[serde(default)]
    event_type: Option<String>,
    #[serde(default)]
    client_payload: Option<Value>,
    #[serde(default)]
    workflow: Option<String>,
    #[serde(default, rename = "ref")]
    git_ref: Option<String>,
    #[serde(default)]
    inputs: Option<Value>,
}

/// One dispatch, checked: the path under the API base and the JSON body.
#[derive(Debug, PartialEq)]
pub(super) struct Dispatch {
    path: String,
    body: Value,
    kind: &'static str,
}

pub(super) fn check_repo(repo: &str) -> Result<(), String> {
    let valid_part = |part: &str| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match repo.split_once('/') {
        Some((owner, name)) if valid_part(owner) && valid_part(name) => Ok(()),
        _ => Err(format!("repo: `{repo}` is not `owner/name`")),
    }
}

impl Dispatch {
    pub(super) fn from_payload(payload: &Value) -> Result<Dispatch, String> {
        let p = GithubPayload::deserialize(payload).map_err(|err| err.to_string())?;
        check_repo(&p.repo)?;
        let object_or_null = |field: &str, value: &Option<Value>| match value {
            None | Some(Value::Object(_)) => Ok(()),
            Some(_) => Err(format!("{field}: must be an object")),
        };
        match p.workflow {
            Some(workflow) => {
                if p.event_type.is_some() || p.client_payload.is_some() {
                    return Err(
                        "event_type and client_payload belong to a repository_dispatch, not to \
                         a workflow dispatch"
                            .into(),
                    );
                }
                let valid = !workflow.is_empty()
                    && workflow
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if !valid {
                    return Err(format!("workflow: `{workflow}` is not a file name or id"));
                }
                let git_ref = p
                    .git_ref
                    .filter(|r| !r.is_empty())
                    .ok_or("ref: required with workflow")?;
                object_or_null("inputs", &p.inputs)?;
                let mut body = json!({ "ref": git_ref });
                if let Some(inputs) = p.inputs {
                    body["inputs"] = inputs;
                }
                Ok(Dispatch {
                    path: format!("/repos/{}/actions/workflows/{workflow}/dispatches", p.repo),
                    body,
                    kind: "workflow_dispatch",
                })
            }
            None => {
                if p.git_ref.is_some() || p.inputs.is_some() {
                    return Err("ref and inputs belong to a workflow dispatch: add workflow".into());
                }
                let event_type = p.event_type.unwrap_or_else(|| DEFAULT_EVENT_TYPE.into());
                if event_type.is_empty() || event_type.len() > 100 {
                    return Err("event_type: between 1 and 100 characters".into());
                }
                object_or_null("client_payload", &p.client_payload)?;
                let mut body = json!({ "event_type": event_type });
                if let Some(client_payload) = p.client_payload {
                    body["client_payload"] = client_payload;
                }
                Ok(Dispatch {
                    path: format!("/repos/{}/dispatches", p.repo),
                    body,
                    kind: "repository_dispatch",
                })
            }
        }
    }
}

/// The handler for `github.dispatch`.
#[derive(Clone)]
pub struct GithubDispatch {
    pub(super) client: Client,
    pub(super) live: GithubLive,
}

impl std::fmt::Debug for GithubDispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubDispatch")
            .field("base", &self.live.target().map(|t| t.base))
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Handler for GithubDispatch {
    fn validate(&self, payload: &Value) -> Result<(), String> {
        Dispatch::from_payload(payload).map(|_| ())
    }

    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let dispatch =
            Dispatch::from_payload(&ctx.task.payload).map_err(HandlerError::permanent)?;
        let target = format!("GitHub {} {}", dispatch.kind, dispatch.path);
        // Attached when the handler was built; never empty while it runs.
        let live = self
            .live
            .target()
            .ok_or_else(|| HandlerError::permanent("github.dispatch is not configured"))?;
        let response = self
            .client
            .post(format!("{}{}", live.base, dispatch.path))
            .bearer_auth(&live.token)
            .header(ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", GITHUB_API_VERSION)
            .json(&dispatch.body)
            .send_traced()
            .await
            .map_err(|err| transport_error(&target, err))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let rate_limited = status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::FORBIDDEN
                && (retry_after.is_some()
                    || header_str(response.headers(), "x-ratelimit-remaining") == Some("0")));
        let body = read_body(response).await;
        tracing::debug!(task_id = %ctx.task.id, status = status.as_u16(), "github.dispatch answered");
        if status.is_success() {
            return Ok(json!({
                "status": status.as_u16(),
                "dispatched": dispatch.kind,
                "path": dispatch.path,
            }));
        }
        let message = remote_message(&body)
            .map(|m| format!("{target} answered {status}: {m}"))
            .unwrap_or_else(|| format!("{target} answered {status}"));
        let error = if rate_limited || is_retryable(status) {
            HandlerError::retryable(message)
        } else {
            HandlerError::permanent(message)
        };
        Err(error.with_details(error_details(status, body, retry_after)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_dispatch_defaults_its_event_type() {
        let d = Dispatch::from_payload(&json!({"repo": "owner/app"})).unwrap();
        assert_eq!(d.path, "/repos/owner/app/dispatches");
        assert_eq!(d.body, json!({"event_type": "deploy"}));
        let d = Dispatch::from_payload(&json!({
            "repo": "owner/app", "event_type": "ship", "client_payload": {"sha": "abc"}
        }))
        .unwrap();
        assert_eq!(
            d.body,
            json!({"event_type": "ship", "client_payload": {"sha": "abc"}})
        );
    }

    #[test]
    fn workflow_dispatch_needs_a_ref() {
        let d = Dispatch::from_payload(&json!({
            "repo": "owner/app", "workflow": "deploy.yml", "ref": "main", "inputs": {"env": "prod"}
        }))
        .unwrap();
        assert_eq!(
            d.path,
            "/repos/owner/app/actions/workflows/deploy.yml/dispatches"
        );
        assert_eq!(d.body, json!({"ref": "main", "inputs": {"env": "prod"}}));
        let err = Dispatch::from_payload(&json!({"repo": "o/a", "workflow": "d.yml"})).unwrap_err();
        assert!(err.starts_with("ref: "), "{err}");
    }

    #[test]
    fn rejects_bad_repos_and_mixed_payloads() {
        for repo in ["app", "o/", "/a", "o/a/b", "o/..", "o/a?x=1"] {
            assert!(
                Dispatch::from_payload(&json!({"repo": repo})).is_err(),
                "{repo}"
            );
        }
        assert!(
            Dispatch::from_payload(
                &json!({"repo": "o/a", "workflow": "w.yml", "ref": "main", "event_type": "x"})
            )
            .is_err()
        );
        assert!(Dispatch::from_payload(&json!({"repo": "o/a", "ref": "main"})).is_err());
        assert!(Dispatch::from_payload(&json!({"repo": "o/a", "client_payload": [1]})).is_err());
        assert!(Dispatch::from_payload(&json!({"repo": "o/a", "extra": 1})).is_err());
        assert!(
            Dispatch::from_payload(&json!({"repo": "o/a", "workflow": "../x", "ref": "m"}))
                .is_err()
        );
    }
}
