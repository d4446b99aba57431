//! The VCC task types as an [`Adapter`]: `vcc.package.add`, `vcc.package.upgrade` and
//! `vcc.package.remove` (payloads checked before a task is accepted), and with an event bus,
//! `vcc.build` and `vcc.deploy`.

use super::*;
use crate::{Adapter, AdapterHealth};
use async_trait::async_trait;
use mcp_core::events::EventBus;
use mcp_core::{Handler, HandlerError, HandlerRegistry, TaskContext};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

/// The VCC adapter: `vcc.package.add`, `vcc.package.upgrade`, `vcc.package.remove`, and with
/// an event bus for their output, `vcc.build` and `vcc.deploy`.
#[derive(Clone)]
pub struct VccAdapter {
    service: VccService,
    events: Option<Arc<dyn EventBus>>,
}

impl VccAdapter {
    pub fn new(service: VccService) -> Self {
        VccAdapter {
            service,
            events: None,
        }
    }

    /// Where `vcc.build` and `vcc.deploy` publish their output; they exist only with it.
    pub fn with_events(mut self, events: Arc<dyn EventBus>) -> Self {
        self.events = Some(events);
        self
    }

    pub fn service(&self) -> &VccService {
        &self.service
    }
}

#[async_trait]
impl Adapter for VccAdapter {
    fn name(&self) -> &str {
        "vcc"
    }

    fn task_types(&self) -> Vec<String> {
        let mut types: Vec<String> = Vec::new();
        if self.events.is_some() {
            types.push(commands::BUILD_TASK.into());
            types.push(commands::DEPLOY_TASK.into());
        }
        types.extend([
            "vcc.package.add".into(),
            "vcc.package.remove".into(),
            "vcc.package.upgrade".into(),
        ]);
        types
    }

    async fn health(&self) -> AdapterHealth {
        let config = self.service.config();
        if config.roots.is_empty() && config.projects.is_empty() && config.settings_file.is_none() {
            return AdapterHealth::Degraded(
                "no project roots, configured projects or VCC settings file".into(),
            );
        }
        AdapterHealth::Healthy
    }

    fn register(&self, registry: &mut HandlerRegistry) {
        if let Some(events) = &self.events {
            for kind in [commands::CommandKind::Build, commands::CommandKind::Deploy] {
                registry.register(
                    kind.task_type(),
                    commands::CommandHandler {
                        kind,
                        service: self.service.clone(),
                        events: events.clone(),
                    },
                );
            }
        }
        registry.register(
            "vcc.package.add",
            PackageHandler {
                op: PackageOp::Add,
                service: self.service.clone(),
            },
        );
        registry.register(
            "vcc.package.remove",
            PackageHandler {
                op: PackageOp::Remove,
                service: self.service.clone(),
            },
        );
        registry.register(
            "vcc.package.upgrade",
            PackageHandler {
                op: PackageOp::Upgrade,
                service: self.service.clone(),
            },
        );
    }
}

#[derive(Debug, Clone, Copy)]
enum PackageOp {
    Add,
    Upgrade,
    Remove,
}

struct PackageHandler {
    op: PackageOp,
    service: VccService,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddPayload {
    project: String,
    package: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    prerelease: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpgradePayload {
    project: String,
    package: String,
    #[serde(default)]
    version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemovePayload {
    project: String,
    package: String,
}

fn parse<T: for<'de> Deserialize<'de>>(payload: &Value) -> Result<T, String> {
    T::deserialize(payload).map_err(|e| e.to_string())
}

fn check_version(version: Option<&str>) -> Result<(), String> {
    match version {
        Some(v) => VpmRange::parse_request(v)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if project::is_package_name(name) {
        Ok(())
    } else {
        Err(format!("{name:?} is not a package name"))
    }
}

fn to_handler_error(error: VccError) -> HandlerError {
    let details = error.details();
    let message = error.to_string();
    let e = if error.is_retryable() {
        HandlerError::retryable(message)
    } else {
        HandlerError::permanent(message)
    };
    e.with_details(details)
}

#[async_trait]
impl Handler for PackageHandler {
    fn validate(&self, payload: &Value) -> Result<(), String> {
        match self.op {
            PackageOp::Add => {
                let p: AddPayload = parse(payload)?;
                check_name(&p.package)?;
                check_version(p.version.as_deref())
            }
            PackageOp::Upgrade => {
                let p: UpgradePayload = parse(payload)?;
                check_name(&p.package)?;
                check_version(p.version.as_deref())
            }
            PackageOp::Remove => {
                let p: RemovePayload = parse(payload)?;
                check_name(&p.package)
            }
        }
    }

    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let payload = &ctx.task.payload;
        self.validate(payload).map_err(HandlerError::permanent)?;
        let summary = match self.op {
            PackageOp::Add => {
                let p: AddPayload = parse(payload).map_err(HandlerError::permanent)?;
                self.service
                    .add_package(&p.project, &p.package, p.version.as_deref(), p.prerelease)
                    .await
            }
            PackageOp::Upgrade => {
                let p: UpgradePayload = parse(payload).map_err(HandlerError::permanent)?;
                self.service
                    .upgrade_package(&p.project, &p.package, p.version.as_deref())
                    .await
            }
            PackageOp::Remove => {
                let p: RemovePayload = parse(payload).map_err(HandlerError::permanent)?;
                self.service.remove_package(&p.project, &p.package).await
            }
        }
        .map_err(to_handler_error)?;
        serde_json::to_value(summary)
            .map_err(|e| HandlerError::permanent(format!("cannot serialize the result: {e}")))
    }
}
