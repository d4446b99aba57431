//! The defaults of every key: the embedded server (SQLite in `./data`, 127.0.0.1:8080).

use super::{Config, DiscordSettings};
use std::collections::BTreeMap;
use std::path::PathBuf;

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
            shutdown_readiness_delay_ms: 5_000,
            shutdown_drain_ms: None,
            http_header_timeout_ms: 10_000,
            http_body_timeout_ms: 60_000,
            http_idle_timeout_ms: 60_000,
            max_connections: 0,
            max_connections_per_ip: 256,
            probe_connections: 16,
            task_retention_hours: 168,
            task_max_attempts: 3,
            task_timeout_ms: 300_000,
            task_backoff_base_ms: 1_000,
            task_backoff_max_ms: 600_000,
            max_body_bytes: 1024 * 1024,
            max_batch: 1000,
            log_format: "auto".into(),
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
            revocation_poll_ms: 500,
            tls_cert: None,
            tls_key: None,
            redis_url: None,
            redis_prefix: "mkww-mcp".into(),
            redis_timeout_ms: 250,
            redis_retry_max_ms: 5_000,
            event_history_size: 1000,
            event_history_channel_bytes: 1024 * 1024,
            event_history_bytes: 64 * 1024 * 1024,
            event_history_ttl_secs: 3600,
            event_buffer: 1024,
            event_max_channels: 10_000,
            allocator_trim_interval_ms: 10_000,
            event_queue: 65_536,
            trusted_proxies: Vec::new(),
            rate_limit_ip_per_minute: 6_000,
            rate_limit_auth_per_minute: 30,
            rate_limit_login_per_minute: 10,
            rate_limit_login_username_per_minute: 100,
            rate_limit_read_per_minute: 6_000,
            rate_limit_write_per_minute: 3_000,
            quota_tasks_per_day: 1_000_000,
            fair_share_max_fraction: 0.5,
            task_priority_ceiling: 10,
            max_task_timeout_ms_user: 3_600_000,
            max_task_timeout_ms_service: 86_400_000,
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
            ws_max_channels_per_principal: 200,
            ws_max_publish_bytes: 16 * 1024,
            ws_publish_per_minute: 600,
            ws_allowed_origins: Vec::new(),
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
            outbound_allow_private: false,
            outbound_allow: Vec::new(),
            webhooks_allow_private: false,
            webhook_disable_after_days: 5,
            webhook_timeout_ms: 15_000,
            webhook_max_attempts: 8,
            webhook_outbox_poll_ms: 1_000,
            webhook_outbox_refresh_ms: 1_000,
            webhook_outbox_lease_ms: 30_000,
            discord_followup_sweep_ms: 1_000,
            schedules: Vec::new(),
            schedule_grace_ms: 1_000,
            schedule_poll_ms: 1_000,
            task_limits: Vec::new(),
        }
    }
}

impl Config {
    /// `shutdown_readiness_delay_ms`, or its earlier name `shutdown_drain_ms` when that is set.
    pub fn readiness_delay_ms(&self) -> u64 {
        self.shutdown_drain_ms
            .unwrap_or(self.shutdown_readiness_delay_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Database;

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
}
