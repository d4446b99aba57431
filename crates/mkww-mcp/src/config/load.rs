//! Loading (defaults < file < `MCP_*` environment) and the checks a configuration must pass
//! before anything starts.

use super::Config;
use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use std::path::Path;

/// Every key, for picking `MCP_*` variables: others (such as `MCP_TEST_DATABASE_URL`) are not
/// configuration and must not be refused as unknown.
fn keys() -> Vec<String> {
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

impl Config {
    /// Defaults < config file < environment. `file` None reads `mkww-mcp.toml` if it exists.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => {
                anyhow::ensure!(path.exists(), "config file {} not found", path.display());
                figment = figment.merge(Toml::file(path));
            }
            None => figment = figment.merge(Toml::file("mkww-mcp.toml")),
        }
        let keys = keys();
        figment = figment.merge(
            Env::prefixed("MCP_")
                .filter(move |key| keys.iter().any(|k| key.as_str().eq_ignore_ascii_case(k))),
        );
        let config: Config = figment.extract().context("invalid configuration")?;
        config.check()?;
        Ok(config)
    }

    pub(super) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.memory_delete_after_days == 0
                || self.memory_archive_after_days == 0
                || self.memory_delete_after_days > self.memory_archive_after_days,
            "memory_delete_after_days must exceed memory_archive_after_days (or one of them be 0)"
        );
        anyhow::ensure!(
            self.memory_retention_interval_ms >= 1_000,
            "memory_retention_interval_ms must be at least 1000"
        );
        anyhow::ensure!(
            matches!(self.sqlite_synchronous.as_str(), "full" | "normal"),
            "sqlite_synchronous must be `full` or `normal`"
        );
        anyhow::ensure!(
            matches!(self.log_format.as_str(), "auto" | "json" | "pretty"),
            "log_format must be `auto`, `json` or `pretty`"
        );
        anyhow::ensure!(
            self.worker_batch_size > 0,
            "worker_batch_size must be at least 1"
        );
        anyhow::ensure!(self.lease_ms >= 300, "lease_ms must be at least 300");
        anyhow::ensure!(
            self.worker_directory_refresh_ms >= 10,
            "worker_directory_refresh_ms must be at least 10"
        );
        anyhow::ensure!(
            (10..=1_000).contains(&self.revocation_poll_ms),
            "revocation_poll_ms must be between 10 and 1000 (revocation reaches every node within it)"
        );
        anyhow::ensure!(self.max_batch > 0, "max_batch must be at least 1");
        for origin in &self.ws_allowed_origins {
            // What a browser sends: `scheme://host[:port]`, nothing after it.
            let host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"))
                .map(|rest| rest.trim_end_matches('/'));
            anyhow::ensure!(
                origin == "*" || host.is_some_and(|h| !h.is_empty() && !h.contains('/')),
                "ws_allowed_origins: `{origin}` is not an origin (`https://host[:port]`, or `*`)"
            );
        }
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.fair_share_max_fraction),
            "fair_share_max_fraction must be between 0 and 1 (0 or 1: no cap)"
        );
        anyhow::ensure!(
            self.task_backoff_base_ms <= self.task_backoff_max_ms,
            "task_backoff_base_ms must not exceed task_backoff_max_ms"
        );
        anyhow::ensure!(
            self.tls_cert.is_some() == self.tls_key.is_some(),
            "tls_cert and tls_key must be set together (HTTPS) or both left unset (plain HTTP)"
        );
        anyhow::ensure!(
            matches!(
                self.jwt_algorithm.as_str(),
                "HS256" | "RS256" | "ES256" | "EdDSA"
            ),
            "jwt_algorithm must be HS256, RS256, ES256 or EdDSA"
        );
        for (repo, targets) in &self.deploy_targets {
            anyhow::ensure!(
                !targets.is_empty(),
                "deploy_targets.\"{repo}\": list at least one target"
            );
            for target in targets {
                target
                    .check()
                    .map_err(|e| anyhow::anyhow!("deploy_targets.\"{repo}\": {e}"))?;
            }
        }
        anyhow::ensure!(self.ask_timeout_ms > 0, "ask_timeout_ms must be at least 1");
        for (key, value) in [
            ("http_header_timeout_ms", self.http_header_timeout_ms),
            ("http_body_timeout_ms", self.http_body_timeout_ms),
            ("http_idle_timeout_ms", self.http_idle_timeout_ms),
        ] {
            // 0 would mean "never", which is the attack these bound.
            anyhow::ensure!(value >= 10, "{key} must be at least 10");
        }
        self.discord_public_key()?;
        for (name, command) in &self.discord.commands {
            anyhow::ensure!(
                !command.task.is_empty(),
                "discord.commands.{name}: `task` must name a task type"
            );
        }
        for (name, source) in &self.hooks {
            anyhow::ensure!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "hooks.\"{name}\": a source name is letters, digits, `-` and `_`"
            );
            source
                .check()
                .map_err(|e| anyhow::anyhow!("hooks.{name}: {e}"))?;
        }
        anyhow::ensure!(
            self.hooks_tolerance_secs > 0,
            "hooks_tolerance_secs must be at least 1"
        );
        self.outbound_policy()?;
        self.database()?;
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| anyhow::anyhow!("log_level `{}`: {e}", self.log_level))?;
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.breaker_failure_rate),
            "breaker_failure_rate must be between 0 and 1"
        );
        anyhow::ensure!(
            self.breaker_min_calls >= 1 && self.breaker_probes >= 1,
            "breaker_min_calls and breaker_probes must be at least 1"
        );
        anyhow::ensure!(
            (10..=1_000).contains(&self.settings_poll_ms),
            "settings_poll_ms must be between 10 and 1000 (a change reaches every node within it)"
        );
        self.check_mcp()?;
        self.check_scheduling()?;
        Ok(())
    }

    /// `[[schedules]]` (cron, zone, bounds, template, unique names), `[[task_limits]]` (a type
    /// or a queue, each once) and the scheduler's and queues' clocks.
    fn check_scheduling(&self) -> anyhow::Result<()> {
        let mut names = std::collections::BTreeSet::new();
        for schedule in &self.schedules {
            mcp_core::services::schedules::schedule_from(schedule.clone(), "config")
                .map_err(|e| anyhow::anyhow!("schedules `{}`: {e}", schedule.name))?;
            anyhow::ensure!(
                names.insert(schedule.name.as_str()),
                "schedules: `{}` is declared twice",
                schedule.name
            );
        }
        let mut subjects = std::collections::BTreeSet::new();
        for limit in &self.task_limits {
            limit
                .limit()
                .map_err(|e| anyhow::anyhow!("task_limits `{}`: {e}", limit.subject()))?;
            anyhow::ensure!(
                subjects.insert(limit.subject()),
                "task_limits: `{}` is declared twice",
                limit.subject()
            );
        }
        anyhow::ensure!(
            (10..=1_000).contains(&self.queue_poll_ms),
            "queue_poll_ms must be between 10 and 1000 (a change reaches every node within it)"
        );
        anyhow::ensure!(
            self.schedule_poll_ms >= 10,
            "schedule_poll_ms must be at least 10"
        );
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's test jail returns its own large error type
mod tests {
    use super::*;
    use mcp_integrations::DeployTarget;

    #[test]
    fn file_then_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "mkww-mcp.toml",
                "listen = \"0.0.0.0:9000\"\nworker_concurrency = 5\n",
            )?;
            jail.set_env("MCP_WORKER_CONCURRENCY", "7");
            jail.set_env("MCP_TEST_DATABASE_URL", "ignored: not a config key");
            let config = Config::load(None).expect("load");
            assert_eq!(config.listen, "0.0.0.0:9000");
            assert_eq!(config.worker_concurrency, 7);
            Ok(())
        });
    }

    #[test]
    fn reads_deploy_targets_and_hooks_from_the_file_or_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "mkww-mcp.toml",
                r#"
github_token = "ghp_test"
[render_deploy_hooks]
web = "https://api.render.com/deploy/srv-1?key=k"
[deploy_targets]
"owner/app" = [
  { kind = "github", event_type = "deploy" },
  { kind = "github", workflow = "deploy.yml", ref = "main" },
  { kind = "render", service = "web" },
]
"#,
            )?;
            let config = Config::load(None).expect("load");
            assert_eq!(config.github_token.as_deref(), Some("ghp_test"));
            assert_eq!(config.deploy_targets["owner/app"].len(), 3);
            assert_eq!(
                config.render_deploy_hooks["web"],
                "https://api.render.com/deploy/srv-1?key=k"
            );
            jail.set_env(
                "MCP_DEPLOY_TARGETS",
                r#"{"owner/other"=[{kind="render",service="web"}]}"#,
            );
            jail.set_env("MCP_LLM_BASE_URL", "http://127.0.0.1:9/v1");
            let config = Config::load(None).expect("load with env");
            assert_eq!(
                config.deploy_targets["owner/other"],
                vec![DeployTarget::Render {
                    service: "web".into()
                }]
            );
            assert_eq!(
                config.llm_base_url.as_deref(),
                Some("http://127.0.0.1:9/v1")
            );
            Ok(())
        });
    }

    #[test]
    fn refuses_deploy_targets_that_cannot_make_a_task() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "mkww-mcp.toml",
                "[deploy_targets]\n\"o/a\" = [{ kind = \"github\", workflow = \"d.yml\" }]\n",
            )?;
            let err = Config::load(None).unwrap_err();
            assert!(format!("{err:#}").contains("needs `ref`"), "{err:#}");
            Ok(())
        });
    }

    #[test]
    fn reads_hook_sources_and_refuses_unusable_ones() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "mkww-mcp.toml",
                r#"
[hooks.gh]
kind = "github"
secret = "s3cret"
[[hooks.gh.rules]]
event = "push"
task = "github.dispatch"
payload = { event_type = "deploy" }
payload_from = { repo = "/repository/full_name" }
[hooks.ci]
kind = "hmac"
secret = "k"
header = "X-Signature"
encoding = "base64"
prefix = "sha256="
"#,
            )?;
            let config = Config::load(None).expect("load");
            assert_eq!(config.hooks["gh"].rules[0].task, "github.dispatch");
            assert_eq!(config.hooks["ci"].prefix.as_deref(), Some("sha256="));
            assert_eq!(config.hooks_tolerance_secs, 300);
            jail.create_file(
                "mkww-mcp.toml",
                "[hooks.ci]\nkind = \"hmac\"\nsecret = \"k\"\n",
            )?;
            let err = Config::load(None).unwrap_err();
            assert!(format!("{err:#}").contains("needs `header`"), "{err:#}");
            Ok(())
        });
    }

    #[test]
    fn reads_discord_settings_and_refuses_a_bad_public_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "mkww-mcp.toml",
                r#"
discord_public_key = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
[discord.commands.ask]
task = "llm.generate"
include_ids = false
[discord.commands.deploy]
task = "github.dispatch"
"#,
            )?;
            jail.set_env("MCP_DISCORD_BOT_TOKEN", "bot-token");
            jail.set_env("MCP_DISCORD_API_BASE", "http://127.0.0.1:9/api");
            let config = Config::load(None).expect("load");
            assert_eq!(config.discord_bot_token.as_deref(), Some("bot-token"));
            assert_eq!(config.discord_api_base, "http://127.0.0.1:9/api");
            assert!(config.discord_public_key().unwrap().is_some());
            assert_eq!(config.discord.commands["ask"].task, "llm.generate");
            assert!(!config.discord.commands["ask"].include_ids);
            assert!(config.discord.commands["deploy"].include_ids);
            jail.set_env("MCP_DISCORD_PUBLIC_KEY", "not-hex");
            let err = Config::load(None).unwrap_err();
            assert!(format!("{err:#}").contains("discord_public_key"), "{err:#}");
            Ok(())
        });
    }

    #[test]
    fn reads_the_outbound_policy_and_its_old_name() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "MCP_OUTBOUND_ALLOW",
                r#"["127.0.0.1", "10.1.0.0/16", "hooks.lan"]"#,
            );
            let config = Config::load(None).expect("load");
            let policy = config.outbound_policy().expect("policy");
            assert!(!policy.allow_private);
            assert_eq!(policy.nets.len(), 2);
            assert_eq!(policy.hosts, ["hooks.lan"]);
            jail.set_env("MCP_WEBHOOKS_ALLOW_PRIVATE", "true");
            let config = Config::load(None).expect("load");
            assert!(config.outbound_policy().expect("policy").allow_private);
            jail.set_env("MCP_OUTBOUND_ALLOW", r#"["not a host!"]"#);
            assert!(Config::load(None).is_err());
            Ok(())
        });
    }

    #[test]
    fn refuses_unknown_keys_in_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("mkww-mcp.toml", "listn = \"0.0.0.0:9000\"\n")?;
            assert!(Config::load(None).is_err());
            Ok(())
        });
    }

    #[test]
    fn reads_the_readiness_delay_and_its_old_name() {
        figment::Jail::expect_with(|jail| {
            assert_eq!(
                Config::load(None).expect("load").readiness_delay_ms(),
                5_000
            );
            jail.create_file("mkww-mcp.toml", "shutdown_readiness_delay_ms = 2000\n")?;
            assert_eq!(
                Config::load(None).expect("load").readiness_delay_ms(),
                2_000
            );
            jail.set_env("MCP_SHUTDOWN_DRAIN_MS", "300");
            assert_eq!(Config::load(None).expect("load").readiness_delay_ms(), 300);
            Ok(())
        });
    }

    #[test]
    fn reads_limits_per_type_or_per_queue_and_refuses_ambiguous_ones() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "mkww-mcp.toml",
                "[[task_limits]]\ntype = \"echo\"\nmax = 2\nper_ms = 100\n\n\
                 [[task_limits]]\nqueue = \"echo\"\nmax = 1\nper_ms = 100\n",
            )?;
            let config = Config::load(None).expect("a type and a queue may share a name");
            assert_eq!(config.task_limits[1].queue.as_deref(), Some("echo"));
            for bad in [
                "[[task_limits]]\nmax = 2\nper_ms = 100\n",
                "[[task_limits]]\ntype = \"a\"\nqueue = \"b\"\nmax = 2\nper_ms = 100\n",
                "[[task_limits]]\nqueue = \"q\"\nmax = 2\nper_ms = 100\n\n\
                 [[task_limits]]\nqueue = \"q\"\nmax = 3\nper_ms = 100\n",
                "queue_poll_ms = 5000\n",
            ] {
                jail.create_file("mkww-mcp.toml", bad)?;
                assert!(Config::load(None).is_err(), "{bad}");
            }
            Ok(())
        });
    }
}
