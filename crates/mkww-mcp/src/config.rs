//! Configuration: one struct with defaults, overridden by `mkww-mcp.toml` (or `--config FILE`),
//! overridden by `MCP_*` environment variables (`MCP_LISTEN`, `MCP_DATABASE_URL`, …: the key in
//! upper case). README's configuration table lists every key.

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use ipnet::IpNet;
use mcp_api::discord::DiscordCommand;
use mcp_api::token::Tokens;
use mcp_core::secrets::{MasterKey, SecretBox};
use mcp_integrations::{DeployTarget, HookSource};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: String,
    /// Where the embedded default keeps its SQLite file.
    pub data_dir: PathBuf,
    /// `postgres://…` for PostgreSQL, `sqlite://PATH` for another SQLite file; unset: SQLite in
    /// `data_dir`.
    pub database_url: Option<String>,
    /// PostgreSQL schema holding the tables (created if missing).
    pub database_schema: String,
    /// Most connections in the PostgreSQL pool.
    pub database_max_connections: u32,
    /// Longest a query waits for a pooled PostgreSQL connection: bounds how long a request
    /// racing a database failure waits for its 503 (and sheds load when the pool is saturated).
    pub database_acquire_timeout_ms: u64,
    /// Between health probes of a dependency that is up.
    pub health_interval_ms: u64,
    /// Between health probes of a dependency that is down (how quickly a recovery is seen).
    pub health_down_interval_ms: u64,
    /// Longest a health probe may take before its dependency counts as down.
    pub health_probe_timeout_ms: u64,
    /// SQLite `synchronous`: `normal` (WAL: a killed process loses nothing; a power cut may lose
    /// the last commits) or `full` (fsync on every commit: survives power loss too).
    pub sqlite_synchronous: String,
    /// Tasks this node runs at once; 0 makes an API-only node.
    pub worker_concurrency: usize,
    /// Most tasks per claim and per outcome write.
    pub worker_batch_size: usize,
    /// Lease of a running task; renewed every third of it.
    pub lease_ms: u64,
    /// Fallback poll when no wake-up arrives.
    pub poll_interval_ms: u64,
    /// How often expired leases are rescued.
    pub rescue_interval_ms: u64,
    /// How long running tasks may finish on shutdown.
    pub shutdown_grace_ms: u64,
    /// Finished tasks are deleted after this many hours; 0 keeps them.
    pub task_retention_hours: u64,
    /// Default `max_attempts` of a task.
    pub task_max_attempts: i32,
    /// Default `timeout_ms` of a task.
    pub task_timeout_ms: u64,
    /// Default backoff base and cap between attempts.
    pub task_backoff_base_ms: u64,
    pub task_backoff_max_ms: u64,
    /// Largest request body the API accepts.
    pub max_body_bytes: usize,
    /// Most tasks in one batch create.
    pub max_batch: usize,
    /// `json` or `pretty`.
    pub log_format: String,
    /// A `tracing` filter such as `info` or `mkww_mcp=debug,info` (`RUST_LOG` wins when set).
    pub log_level: String,
    /// Default per-request timeout of `http.request` tasks.
    pub http_timeout_ms: u64,
    /// Largest response body kept in an `http.request` result.
    pub http_max_body_bytes: usize,
    /// Master key sealing secrets at rest: 32 bytes, base64. Unset: a key generated into
    /// `data_dir/master.key` on first start (set it explicitly for a cluster: nodes must share it).
    pub master_key: Option<String>,
    /// Earlier master keys, still accepted for opening secrets they sealed (key rotation).
    pub master_keys_retired: Vec<String>,
    /// HS256 secret for access tokens (at least 32 bytes; every node of a cluster shares it).
    /// Unset: generated into `data_dir/jwt.secret` on first use.
    pub jwt_secret: Option<String>,
    /// `iss` and `aud` of the access tokens this server issues and accepts.
    pub jwt_issuer: String,
    pub jwt_audience: String,
    /// Signing algorithm of access tokens: `HS256` (shared secret), or `RS256`, `ES256` or
    /// `EdDSA` with the PEM key files below. Verification accepts this algorithm only.
    pub jwt_algorithm: String,
    /// PEM private key that signs access tokens (RS256/ES256/EdDSA).
    pub jwt_private_key_file: Option<PathBuf>,
    /// PEM public key that verifies them (RS256/ES256/EdDSA).
    pub jwt_public_key_file: Option<PathBuf>,
    /// Lifetime of access tokens issued at login and refresh, e.g. `15m`.
    pub access_token_ttl: String,
    /// Lifetime of refresh tokens, e.g. `30d`.
    pub refresh_token_ttl: String,
    /// PEM certificate chain and private key: when both are set the server speaks HTTPS only.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `redis://…`: rate limits and events shared by every node. Unset: limits and events are
    /// kept in memory, per node.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key this deployment writes.
    pub redis_prefix: String,
    /// Longest wait for a Redis connection or answer; beyond it Redis counts as unavailable and
    /// limits and events fall back to this node until it answers again.
    pub redis_timeout_ms: u64,
    /// Longest pause between two attempts to reach Redis again while it is away.
    pub redis_retry_max_ms: u64,
    /// Events kept per channel for recovery with `since`.
    pub event_history_size: usize,
    /// Events older than this are dropped from the history; idle channels are forgotten after it.
    pub event_history_ttl_secs: u64,
    /// Events a subscriber may fall behind before it lags (and must recover).
    pub event_buffer: usize,
    /// In-process bus: channels without subscribers held at most (least recently used go first).
    pub event_max_channels: usize,
    /// Task events waiting for the bus at most; beyond, they are dropped (tasks are unaffected).
    pub event_queue: usize,
    /// Peers (IP addresses or CIDR blocks) whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<String>,
    /// Requests per minute per client IP before authentication (all routes but probes).
    pub rate_limit_ip_per_minute: u32,
    /// Requests per minute per client IP to `/v1/auth/*`.
    pub rate_limit_auth_per_minute: u32,
    /// Login attempts per minute per username.
    pub rate_limit_login_per_minute: u32,
    /// Requests per minute per principal: reads (GET) and writes (everything else).
    pub rate_limit_read_per_minute: u32,
    pub rate_limit_write_per_minute: u32,
    /// Tasks each principal may create per UTC day (admins and operators are exempt); 0: no quota.
    pub quota_tasks_per_day: u64,
    /// Bearer token that may read `/metrics` without being an admin (for a Prometheus scraper).
    pub metrics_token: Option<String>,
    /// Largest message `content` (and summary), in bytes: 413 `message_too_large` beyond.
    pub memory_max_message_bytes: usize,
    /// Token budget of `/context` when the request names no `max_tokens`.
    pub memory_context_tokens: u32,
    /// Largest body `POST /v1/conversations/import` accepts, in bytes.
    pub memory_max_import_bytes: usize,
    /// Conversations idle this many days are archived; 0: never.
    pub memory_archive_after_days: u64,
    /// Conversations idle this many days are deleted with their messages; 0: never.
    pub memory_delete_after_days: u64,
    /// How often the memory retention pass runs.
    pub memory_retention_interval_ms: u64,
    /// Serve `memory.summarize` with the built-in extractive summarizer; turn off when an LLM
    /// worker serves it.
    pub memory_builtin_summarizer: bool,
    /// WebSocket: time for the `auth` frame when the upgrade carried no credentials.
    pub ws_auth_timeout_ms: u64,
    /// WebSocket: server ping period, and how long a silent connection lives.
    pub ws_ping_interval_ms: u64,
    pub ws_idle_timeout_ms: u64,
    /// WebSocket: frames queued per client before it is closed as too slow (4008).
    pub ws_send_queue: usize,
    /// WebSocket: largest client frame.
    pub ws_max_frame_bytes: usize,
    pub ws_max_subscriptions: usize,
    /// WebSocket: client frames per second per connection.
    pub ws_ops_per_second: u32,
    /// WebSocket: how long before an access token expires the server asks for a new one.
    pub ws_refresh_notice_ms: u64,
    /// Channel namespaces (`room` → `room:*`) any authenticated client may use.
    pub ws_open_namespaces: Vec<String>,
    /// Task types that external workers serve: accepted at creation even while no worker is
    /// connected (`*`: any type).
    pub worker_task_types: Vec<String>,
    /// How often a node re-reads the cluster's worker directory (which types other nodes'
    /// workers serve, and their load).
    pub worker_directory_refresh_ms: u64,
    /// Circuit breaker of every route: the rolling window, the fewest calls in it before it may
    /// open, the failure rate (0–1) that opens it, how long it stays open, probes when half-open.
    pub breaker_window_ms: u64,
    pub breaker_min_calls: usize,
    pub breaker_failure_rate: f64,
    pub breaker_open_ms: u64,
    pub breaker_probes: usize,
    /// GitHub REST API base of `github.dispatch` (GitHub Enterprise: `https://HOST/api/v3`).
    pub github_api_base: String,
    /// Token for `github.dispatch`; unset: the task type is not offered.
    pub github_token: Option<String>,
    /// Render service name → deploy hook URL, for `render.deploy`; empty: not offered.
    pub render_deploy_hooks: BTreeMap<String, String>,
    /// `POST /deploy`: repository (`owner/name`) → its deploy targets (`docs/integrations.md`).
    pub deploy_targets: BTreeMap<String, Vec<DeployTarget>>,
    /// OpenAI-compatible base URL of `llm.generate` (`…/chat/completions` is appended); unset:
    /// the task type is not offered.
    pub llm_base_url: Option<String>,
    /// Model of `llm.generate` when the payload names none.
    pub llm_model: String,
    /// Bearer key of the LLM endpoint.
    pub llm_api_key: Option<String>,
    /// Limit of one LLM call.
    pub llm_timeout_ms: u64,
    /// How long `POST /ask-gemini` waits for its answer before 504 `llm_timeout`.
    pub ask_timeout_ms: u64,
    /// VRChat web API base of the `vrchat.*` task types and `/v1/vrchat/*`.
    pub vrchat_api_base: String,
    /// The VRChat account the hub logs in as; unset: the web API is not offered.
    pub vrchat_username: Option<String>,
    pub vrchat_password: Option<String>,
    /// Base32 TOTP secret of the account's authenticator 2FA; unset with 2FA on: the login
    /// waits for a code (`POST /v1/vrchat/auth/code`).
    pub vrchat_totp_secret: Option<String>,
    /// Contact shown in the `User-Agent` VRChat asks API clients to send.
    pub vrchat_contact: String,
    /// Where the VRChat OSC task types send (VRChat's OSC input).
    pub vrchat_osc_send: String,
    /// Where the OSC listener receives VRChat's avatar parameters (published on `vrchat.osc`);
    /// empty: no listener.
    pub vrchat_osc_listen: String,
    /// Comma-separated folders VCC projects must live under (`POST /v1/vcc/projects` refuses
    /// others, symlinks resolved); empty: projects can be read from `vcc_settings` only.
    pub vcc_project_roots: String,
    /// VCC projects always listed (outside the roots too: the file is trusted).
    pub vcc_projects: Vec<PathBuf>,
    /// VPM repository listing URLs always used for resolution (e.g. VRChat's official one),
    /// fetched when first needed.
    pub vcc_repositories: Vec<String>,
    /// VCC's own `settings.json`: its `userProjects` and `userRepos` are included. Unset: VCC's
    /// default place on this system, if the file is there.
    pub vcc_settings: Option<PathBuf>,
    /// Command line of `vcc.build` (program first); `{project_path}`, `{project_name}` and
    /// `{task_id}` are replaced. Empty: `vcc.build` fails with `command_not_configured`.
    pub vcc_build_command: Vec<String>,
    /// Command line of `vcc.deploy`, like `vcc_build_command`.
    pub vcc_deploy_command: Vec<String>,
    /// `timeout_ms` of `vcc.build` and `vcc.deploy` tasks created without one.
    pub vcc_command_timeout_ms: u64,
    /// Quiet time before a project's file changes are published as one
    /// `vcc.project.changed`; 0: projects are not watched.
    pub vcc_watch_debounce_ms: u64,
    /// Discord REST API base of the `discord.*` task types.
    pub discord_api_base: String,
    /// Bot token of `discord.send_message` and `discord.edit_message`; unset: not offered.
    pub discord_bot_token: Option<String>,
    /// The application's public key (hex) that signs interactions; unset:
    /// `POST /v1/discord/interactions` answers 404 `discord_not_configured`.
    pub discord_public_key: Option<String>,
    /// Slash commands of the interactions endpoint: `[discord.commands.<name>] task = "…"`.
    pub discord: DiscordSettings,
    /// `POST /v1/hooks/{source}`: source name → kind, secret and rules (`docs/integrations.md`).
    pub hooks: BTreeMap<String, HookSource>,
    /// Incoming hooks: Standard Webhooks timestamps further than this from now are refused, and
    /// a delivery id is refused again for this long (remembered per node).
    pub hooks_tolerance_secs: u64,
    /// Largest incoming hook body, in bytes.
    pub hooks_max_body_bytes: usize,
    /// Outgoing webhooks may target loopback, private, link-local and unique-local addresses.
    pub webhooks_allow_private: bool,
    /// A webhook failing this many days without a success is disabled.
    pub webhook_disable_after_days: u64,
    /// Limit of one webhook delivery attempt.
    pub webhook_timeout_ms: u64,
    /// Attempts of one webhook delivery (its `webhook.deliver` task) before it is `dead`.
    pub webhook_max_attempts: i32,
    /// How often a node reads the webhook outbox besides being woken by its own transitions.
    pub webhook_outbox_poll_ms: u64,
    /// How often a node re-reads the webhooks to know which task events to record in the outbox.
    pub webhook_outbox_refresh_ms: u64,
    /// How long outbox entries a node took are its own; then another node may redo them.
    pub webhook_outbox_lease_ms: u64,
    /// How often a node looks for stored Discord follow-ups whose task is final.
    pub discord_followup_sweep_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            database_schema: "public".into(),
            database_max_connections: 16,
            database_acquire_timeout_ms: 750,
            health_interval_ms: 2_000,
            health_down_interval_ms: 250,
            health_probe_timeout_ms: 1_000,
            sqlite_synchronous: "normal".into(),
            worker_concurrency: 64,
            worker_batch_size: 500,
            lease_ms: 30_000,
            poll_interval_ms: 1_000,
            rescue_interval_ms: 5_000,
            shutdown_grace_ms: 10_000,
            task_retention_hours: 168,
            task_max_attempts: 3,
            task_timeout_ms: 300_000,
            task_backoff_base_ms: 1_000,
            task_backoff_max_ms: 600_000,
            max_body_bytes: 1024 * 1024,
            max_batch: 1000,
            log_format: "json".into(),
            log_level: "info".into(),
            http_timeout_ms: 30_000,
            http_max_body_bytes: 1024 * 1024,
            master_key: None,
            master_keys_retired: Vec::new(),
            jwt_secret: None,
            jwt_issuer: "mkww-mcp".into(),
            jwt_audience: "mkww-mcp".into(),
            jwt_algorithm: "HS256".into(),
            jwt_private_key_file: None,
            jwt_public_key_file: None,
            access_token_ttl: "15m".into(),
            refresh_token_ttl: "30d".into(),
            tls_cert: None,
            tls_key: None,
            redis_url: None,
            redis_prefix: "mkww-mcp".into(),
            redis_timeout_ms: 250,
            redis_retry_max_ms: 5_000,
            event_history_size: 1000,
            event_history_ttl_secs: 3600,
            event_buffer: 1024,
            event_max_channels: 10_000,
            event_queue: 65_536,
            trusted_proxies: Vec::new(),
            rate_limit_ip_per_minute: 6_000,
            rate_limit_auth_per_minute: 30,
            rate_limit_login_per_minute: 10,
            rate_limit_read_per_minute: 6_000,
            rate_limit_write_per_minute: 3_000,
            quota_tasks_per_day: 1_000_000,
            metrics_token: None,
            memory_max_message_bytes: 64 * 1024,
            memory_context_tokens: 4_096,
            memory_max_import_bytes: 64 * 1024 * 1024,
            memory_archive_after_days: 30,
            memory_delete_after_days: 0,
            memory_retention_interval_ms: 3_600_000,
            memory_builtin_summarizer: true,
            ws_auth_timeout_ms: 10_000,
            ws_ping_interval_ms: 20_000,
            ws_idle_timeout_ms: 60_000,
            ws_send_queue: 1024,
            ws_max_frame_bytes: 64 * 1024,
            ws_max_subscriptions: 100,
            ws_ops_per_second: 50,
            ws_refresh_notice_ms: 30_000,
            ws_open_namespaces: vec!["room".into()],
            worker_task_types: Vec::new(),
            worker_directory_refresh_ms: 1_000,
            breaker_window_ms: 60_000,
            breaker_min_calls: 10,
            breaker_failure_rate: 0.5,
            breaker_open_ms: 30_000,
            breaker_probes: 1,
            github_api_base: "https://api.github.com".into(),
            github_token: None,
            render_deploy_hooks: BTreeMap::new(),
            deploy_targets: BTreeMap::new(),
            llm_base_url: None,
            llm_model: "gemini-2.0-flash".into(),
            llm_api_key: None,
            llm_timeout_ms: 60_000,
            ask_timeout_ms: 60_000,
            vcc_project_roots: String::new(),
            vcc_projects: Vec::new(),
            vcc_repositories: Vec::new(),
            vcc_settings: None,
            vcc_build_command: Vec::new(),
            vcc_deploy_command: Vec::new(),
            vcc_command_timeout_ms: 3_600_000,
            vcc_watch_debounce_ms: 500,
            vrchat_api_base: "https://api.vrchat.cloud/api/1".into(),
            vrchat_username: None,
            vrchat_password: None,
            vrchat_totp_secret: None,
            vrchat_contact: "https://github.com/mkww/mkww-mcp".into(),
            vrchat_osc_send: "127.0.0.1:9000".into(),
            vrchat_osc_listen: "127.0.0.1:9001".into(),
            discord_api_base: "https://discord.com/api/v10".into(),
            discord_bot_token: None,
            discord_public_key: None,
            discord: DiscordSettings::default(),
            hooks: BTreeMap::new(),
            hooks_tolerance_secs: 300,
            hooks_max_body_bytes: 1024 * 1024,
            webhooks_allow_private: false,
            webhook_disable_after_days: 5,
            webhook_timeout_ms: 15_000,
            webhook_max_attempts: 8,
            webhook_outbox_poll_ms: 1_000,
            webhook_outbox_refresh_ms: 1_000,
            webhook_outbox_lease_ms: 30_000,
            discord_followup_sweep_ms: 1_000,
        }
    }
}

/// The `[discord]` section of the file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscordSettings {
    /// Slash command name → the task it creates.
    pub commands: BTreeMap<String, DiscordCommand>,
}

/// Every key, for picking `MCP_*` variables: others (such as `MCP_TEST_DATABASE_URL`) are not
/// configuration and must not be refused as unknown.
fn keys() -> Vec<String> {
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// Which database the configuration points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres(String),
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

    /// `vcc_settings`, or where VCC keeps its `settings.json` on this system if it is there.
    pub fn vcc_settings_file(&self) -> Option<PathBuf> {
        if let Some(path) = &self.vcc_settings {
            return Some(path.clone());
        }
        let data = if cfg!(windows) {
            std::env::var_os("LOCALAPPDATA").map(PathBuf::from)
        } else if cfg!(target_os = "macos") {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join("Library/Application Support"))
        } else {
            std::env::var_os("XDG_DATA_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        };
        data.map(|dir| dir.join("VRChatCreatorCompanion").join("settings.json"))
            .filter(|path| path.is_file())
    }

    /// `vcc_project_roots`, split at commas.
    pub fn vcc_roots(&self) -> Vec<PathBuf> {
        self.vcc_project_roots
            .split(',')
            .map(str::trim)
            .filter(|root| !root.is_empty())
            .map(PathBuf::from)
            .collect()
    }

    fn check(&self) -> anyhow::Result<()> {
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
            matches!(self.log_format.as_str(), "json" | "pretty"),
            "log_format must be `json` or `pretty`"
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
        anyhow::ensure!(self.max_batch > 0, "max_batch must be at least 1");
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
        self.database()?;
        Ok(())
    }

    /// The key that signs Discord interactions, if one is configured.
    pub fn discord_public_key(&self) -> anyhow::Result<Option<mcp_api::discord::VerifyingKey>> {
        match self.discord_public_key.as_deref().filter(|k| !k.is_empty()) {
            Some(hex) => Ok(Some(
                mcp_api::discord::parse_public_key(hex).map_err(anyhow::Error::msg)?,
            )),
            None => Ok(None),
        }
    }

    pub fn database(&self) -> anyhow::Result<Database> {
        match self.database_url.as_deref() {
            None | Some("") => Ok(Database::Sqlite(self.data_dir.join("mkww-mcp.db"))),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Database::Postgres(url.to_owned()))
            }
            Some(url) => match url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
            {
                Some(path) if !path.is_empty() => Ok(Database::Sqlite(PathBuf::from(path))),
                _ => anyhow::bail!(
                    "database_url must start with postgres://, postgresql:// or sqlite://"
                ),
            },
        }
    }

    /// The secret box: the configured master key, or the one in `data_dir/master.key`,
    /// generated (readable by the owner only) when missing.
    pub fn secret_box(&self) -> anyhow::Result<SecretBox> {
        let current = match self.master_key.as_deref() {
            Some(key) => MasterKey::from_base64(key).context("master_key")?,
            None => {
                let text = self.generated_secret("master.key", MasterKey::generate_base64)?;
                MasterKey::from_base64(&text).context("data_dir/master.key")?
            }
        };
        let retired = self
            .master_keys_retired
            .iter()
            .map(|k| MasterKey::from_base64(k).context("master_keys_retired"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(SecretBox::new(current, retired))
    }

    /// Issues and verifies access tokens: HS256 with the configured (or generated) secret, or
    /// RS256/ES256/EdDSA with the configured key files.
    pub fn tokens(&self) -> anyhow::Result<Tokens> {
        if self.jwt_algorithm != "HS256" {
            let read = |path: &Option<PathBuf>, key: &str| -> anyhow::Result<Vec<u8>> {
                let path = path
                    .as_ref()
                    .with_context(|| format!("jwt_algorithm {} needs {key}", self.jwt_algorithm))?;
                std::fs::read(path).with_context(|| format!("cannot read {key} {}", path.display()))
            };
            let private = read(&self.jwt_private_key_file, "jwt_private_key_file")?;
            let public = read(&self.jwt_public_key_file, "jwt_public_key_file")?;
            return Tokens::from_pem(
                &self.jwt_algorithm,
                &private,
                &public,
                &self.jwt_issuer,
                &self.jwt_audience,
            )
            .context("jwt keys");
        }
        let secret = match self.jwt_secret.clone() {
            Some(secret) => secret,
            None => self.generated_secret("jwt.secret", MasterKey::generate_base64)?,
        };
        Tokens::hs256(
            secret.trim().as_bytes(),
            &self.jwt_issuer,
            &self.jwt_audience,
        )
        .context("jwt_secret")
    }

    /// A secret kept in `data_dir/NAME`, created (owner-only) by `generate` when missing.
    fn generated_secret(&self, name: &str, generate: fn() -> String) -> anyhow::Result<String> {
        let path = self.data_dir.join(name);
        if !path.exists() {
            std::fs::create_dir_all(&self.data_dir)
                .with_context(|| format!("cannot create {}", self.data_dir.display()))?;
            write_private(&path, &generate())?;
        }
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    }

    /// `trusted_proxies` as networks (a bare address is a one-address network).
    pub fn trusted_proxies(&self) -> anyhow::Result<Vec<IpNet>> {
        self.trusted_proxies
            .iter()
            .map(|text| {
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                    .with_context(|| format!("trusted_proxies: `{text}` is not an IP or CIDR"))
            })
            .collect()
    }

    pub fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }
}

/// Writes a new file only its owner can read.
pub(crate) fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's test jail returns its own large error type
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_embedded_server() {
        let config = Config::default();
        assert_eq!(config.listen, "127.0.0.1:8080");
        assert_eq!(
            config.database().unwrap(),
            Database::Sqlite(PathBuf::from("./data/mkww-mcp.db"))
        );
        config.check().unwrap();
    }

    #[test]
    fn picks_the_database_from_the_url() {
        let mut config = Config {
            database_url: Some("postgres://u@h/db".into()),
            ..Config::default()
        };
        assert_eq!(
            config.database().unwrap(),
            Database::Postgres("postgres://u@h/db".into())
        );
        config.database_url = Some("sqlite:///tmp/x.db".into());
        assert_eq!(
            config.database().unwrap(),
            Database::Sqlite(PathBuf::from("/tmp/x.db"))
        );
        config.database_url = Some("mysql://nope".into());
        assert!(config.database().is_err());
    }

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
    fn generates_a_private_master_key_once_and_keeps_it() {
        let dir = std::env::temp_dir().join(format!("mcp-key-{}", uuid::Uuid::new_v4()));
        let config = Config {
            data_dir: dir.clone(),
            ..Config::default()
        };
        let first = config.secret_box().unwrap();
        let sealed = first.seal(b"s", "test").unwrap();
        let again = config.secret_box().unwrap();
        assert_eq!(first.current_key_id(), again.current_key_id());
        assert_eq!(again.open(&sealed, "test").unwrap(), b"s");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("master.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A configured key wins, and the generated one can be kept as retired.
        let key_file = std::fs::read_to_string(dir.join("master.key")).unwrap();
        let rotated = Config {
            master_key: Some(MasterKey::generate_base64()),
            master_keys_retired: vec![key_file],
            ..config.clone()
        }
        .secret_box()
        .unwrap();
        assert_ne!(rotated.current_key_id(), first.current_key_id());
        assert_eq!(rotated.open(&sealed, "test").unwrap(), b"s");
        let bad = Config {
            master_key: Some("short".into()),
            ..config
        };
        assert!(bad.secret_box().is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn tokens_use_a_generated_secret_unless_one_is_configured() {
        let dir = std::env::temp_dir().join(format!("mcp-jwt-{}", uuid::Uuid::new_v4()));
        let config = Config {
            data_dir: dir.clone(),
            ..Config::default()
        };
        let token = config
            .tokens()
            .unwrap()
            .issue(
                "ops",
                mcp_core::principal::Role::Admin,
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(
            config.tokens().unwrap().verify(&token).is_ok(),
            "same file, same secret"
        );
        let configured = Config {
            jwt_secret: Some("x".repeat(40)),
            ..config.clone()
        };
        assert!(configured.tokens().unwrap().verify(&token).is_err());
        let weak = Config {
            jwt_secret: Some("short".into()),
            ..config
        };
        assert!(weak.tokens().is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn signs_with_configured_key_files_and_pins_their_algorithm() {
        let dir = std::env::temp_dir().join(format!("mcp-jwk-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        std::fs::write(dir.join("private.pem"), pair.serialize_pem()).unwrap();
        std::fs::write(dir.join("public.pem"), pair.public_key_pem()).unwrap();
        let es256 = Config {
            data_dir: dir.clone(),
            jwt_algorithm: "ES256".into(),
            jwt_private_key_file: Some(dir.join("private.pem")),
            jwt_public_key_file: Some(dir.join("public.pem")),
            ..Config::default()
        };
        es256.check().unwrap();
        let tokens = es256.tokens().unwrap();
        let token = tokens
            .issue(
                "ops",
                mcp_core::principal::Role::Operator,
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(tokens.verify(&token).unwrap().sub, "ops");
        // The HS256 node of the same data dir does not accept it, nor the reverse.
        let hs256 = Config {
            data_dir: dir.clone(),
            ..Config::default()
        };
        assert!(hs256.tokens().unwrap().verify(&token).is_err());
        let hs_token = hs256
            .tokens()
            .unwrap()
            .issue(
                "x",
                mcp_core::principal::Role::Admin,
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(tokens.verify(&hs_token).is_err());
        let missing = Config {
            jwt_public_key_file: None,
            ..es256.clone()
        };
        assert!(missing.tokens().is_err());
        let unknown = Config {
            jwt_algorithm: "HS512".into(),
            ..es256
        };
        assert!(unknown.check().is_err());
        std::fs::remove_dir_all(dir).unwrap();
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

    #[cfg(target_os = "linux")]
    #[test]
    fn finds_vcc_settings_where_vcc_keeps_them() {
        figment::Jail::expect_with(|jail| {
            let data = jail.directory().join("share");
            jail.set_env("XDG_DATA_HOME", data.display());
            let config = Config::load(None).unwrap();
            assert_eq!(config.vcc_settings_file(), None, "no file, no settings");
            std::fs::create_dir_all(data.join("VRChatCreatorCompanion")).unwrap();
            let settings = data.join("VRChatCreatorCompanion/settings.json");
            std::fs::write(&settings, "{}").unwrap();
            assert_eq!(config.vcc_settings_file(), Some(settings));
            jail.set_env("MCP_VCC_SETTINGS", "/elsewhere/settings.json");
            let config = Config::load(None).unwrap();
            assert_eq!(
                config.vcc_settings_file(),
                Some(PathBuf::from("/elsewhere/settings.json"))
            );
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
    fn refuses_unknown_keys_in_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("mkww-mcp.toml", "listn = \"0.0.0.0:9000\"\n")?;
            assert!(Config::load(None).is_err());
            Ok(())
        });
    }
}
