//! Configuration: one struct with defaults, overridden by `mkww-mcp.toml` (or `--config FILE`),
//! overridden by `MCP_*` environment variables (`MCP_LISTEN`, `MCP_DATABASE_URL`, …: the key in
//! upper case). README's configuration table lists every key.
//!
//! The keys stay one flat struct here, as README's table and `MCP_<KEY>` name them; the files
//! below hold its defaults, its loading and checks, and what the database, security and
//! integration keys derive.

mod database;
mod defaults;
pub mod dynamic;
mod integrations;
mod load;
mod mcp;
mod security;

pub use database::Database;
pub(crate) use security::write_private;

use mcp_api::discord::DiscordCommand;
use mcp_integrations::{DeployTarget, HookSource};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
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
    /// How long running tasks may finish on shutdown (and open requests, once the listener
    /// has stopped accepting).
    pub shutdown_grace_ms: u64,
    /// On SIGTERM, how long `/readyz` answers 503 while the node still serves, so that load
    /// balancers stop sending before it stops accepting.
    pub shutdown_readiness_delay_ms: u64,
    /// The earlier name of `shutdown_readiness_delay_ms`, still accepted; when set it wins.
    pub shutdown_drain_ms: Option<u64>,
    /// Longest a client may take to send a request's headers, from the moment the connection
    /// waits for them (a new connection, or a kept-alive one between requests).
    pub http_header_timeout_ms: u64,
    /// Longest a client may take to send a request's body, from the request's arrival.
    pub http_body_timeout_ms: u64,
    /// A connection with no request running and no byte moving this long is closed.
    pub http_idle_timeout_ms: u64,
    /// Most open client connections (WebSockets included); 0: 3/4 of the open-file limit.
    pub max_connections: usize,
    /// Most open connections from one client IP (the peer address); 0: no cap.
    pub max_connections_per_ip: usize,
    /// Connections beyond `max_connections` still answered, for `/healthz` and `/readyz` only.
    pub probe_connections: usize,
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
    /// `auto` (readable lines on a terminal, else JSON), `json` or `pretty`.
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
    /// How often a node reads the revocations other nodes recorded (logout, disabled users,
    /// role changes, revoked keys): the longest a revoked credential keeps working on a node
    /// that missed the bus's nudge.
    pub revocation_poll_ms: u64,
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
    /// In-process bus: bytes of history kept per channel (the oldest events go first).
    pub event_history_channel_bytes: usize,
    /// In-process bus: bytes of history kept across all channels (the oldest events of any
    /// channel go first).
    pub event_history_bytes: usize,
    /// Events older than this are dropped from the history; idle channels are forgotten after it.
    pub event_history_ttl_secs: u64,
    /// Events a subscriber may fall behind before it lags (and must recover).
    pub event_buffer: usize,
    /// In-process bus: channels without subscribers held at most (least recently used go first).
    pub event_max_channels: usize,
    /// How often freed memory is handed back to the system (glibc's `malloc_trim`); 0: never.
    pub allocator_trim_interval_ms: u64,
    /// Task events waiting for the bus at most; beyond, they are dropped (tasks are unaffected).
    pub event_queue: usize,
    /// Peers (IP addresses or CIDR blocks) whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<String>,
    /// Requests per minute per client IP before authentication (all routes but probes).
    pub rate_limit_ip_per_minute: u32,
    /// Requests per minute per client IP to `/v1/auth/*`.
    pub rate_limit_auth_per_minute: u32,
    /// Login attempts per minute per username and client IP.
    pub rate_limit_login_per_minute: u32,
    /// Login attempts per minute per username from all addresses together.
    pub rate_limit_login_username_per_minute: u32,
    /// Requests per minute per principal: reads (GET) and writes (everything else).
    pub rate_limit_read_per_minute: u32,
    pub rate_limit_write_per_minute: u32,
    /// Tasks each principal may create per UTC day (admins and operators are exempt); 0: no quota.
    pub quota_tasks_per_day: u64,
    /// Fair sharing: the share of a node's `worker_concurrency` slots the tasks of one `user`
    /// or `service` principal may hold at once (at least one slot); 0 or 1: no cap.
    pub fair_share_max_fraction: f64,
    /// Highest task `priority` a `user` or `service` principal may give (422 above it).
    pub task_priority_ceiling: i32,
    /// Longest task `timeout_ms` a `user` principal may give (422 above it); 0: no bound but
    /// the global one.
    pub max_task_timeout_ms_user: u64,
    /// Longest task `timeout_ms` a `service` principal may give; 0: no bound but the global one.
    pub max_task_timeout_ms_service: u64,
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
    /// WebSocket: threads of the fan-out's own runtime (channel forwarders and connection
    /// writers), so that events are written promptly while the node's workers are busy; 0:
    /// they share the node's runtime.
    pub ws_fanout_threads: usize,
    /// WebSocket: largest client frame.
    pub ws_max_frame_bytes: usize,
    /// WebSocket: subscriptions per connection.
    pub ws_max_subscriptions: usize,
    /// WebSocket: distinct channels one principal may subscribe to on a node, over all its
    /// connections.
    pub ws_max_channels_per_principal: usize,
    /// WebSocket: largest `publish` data, as JSON text.
    pub ws_max_publish_bytes: usize,
    /// WebSocket: publishes per minute per principal (each also counts as a write).
    pub ws_publish_per_minute: u32,
    /// WebSocket: browser origins that may connect (`*`: any); empty: no check.
    pub ws_allowed_origins: Vec<String>,
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
    /// Calls made for a client (`http.request`, webhooks, VCC repository and package URLs) may
    /// reach loopback, private, link-local and every other special-purpose address.
    pub outbound_allow_private: bool,
    /// CIDRs, addresses or host names such calls may always reach (`["10.1.0.0/16"]`).
    pub outbound_allow: Vec<String>,
    /// The former name of `outbound_allow_private`, still honoured: either one allows.
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
    /// Schedules declared in the file (`[[schedules]]`, the body of `POST /v1/schedules`),
    /// reconciled at start: created, updated, and deleted once no longer declared.
    pub schedules: Vec<mcp_core::services::CreateSchedule>,
    /// A fire time found later than this (after downtime) counts as missed and follows its
    /// schedule's `missed` policy.
    pub schedule_grace_ms: u64,
    /// Longest a node's scheduler sleeps before looking for schedules changed on other nodes.
    pub schedule_poll_ms: u64,
    /// Rate limits per task type or per queue (`[[task_limits]] type` or `queue`, `max`,
    /// `per_ms`), cluster-wide; applied at start over those set through
    /// `PUT /v1/task-limits/{type}` and `PUT /v1/queues/{queue}/limit`.
    pub task_limits: Vec<mcp_core::queues::DeclaredLimit>,
    /// How often a node reads the paused queues and rate limits its claims consult, whatever
    /// the bus's nudges do: the longest a change made on another node takes to apply here.
    pub queue_poll_ms: u64,
    /// `/mcp`: `Host` values a request may carry (`name` allows any port, `name:port` one,
    /// `*` any host): DNS-rebinding protection. Add the hub's public name when it has one.
    pub mcp_allowed_hosts: Vec<String>,
    /// `/mcp`: browser origins that may call it (`https://host[:port]`, `*`: any). A request
    /// without `Origin` always may; with one not listed it is refused, so empty refuses browsers.
    pub mcp_allowed_origins: Vec<String>,
    /// `/mcp`: the hub's public base URL (`https://hub.example.com`) for the protected-resource
    /// metadata; unset: `http://` and the request's `Host`.
    pub mcp_public_url: Option<String>,
    /// `/mcp`: the longest `wait_for_task` may wait.
    pub mcp_wait_max_ms: u64,
    /// How often a node reads the runtime settings and feature flags from the database,
    /// whatever the bus's nudges do: the longest a change takes to reach a node that missed it.
    pub settings_poll_ms: u64,
}

/// The `[discord]` section of the file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscordSettings {
    /// Slash command name → the task it creates.
    pub commands: BTreeMap<String, DiscordCommand>,
}

impl Config {
    /// A `_ms` key as a `Duration`.
    pub fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }
}
