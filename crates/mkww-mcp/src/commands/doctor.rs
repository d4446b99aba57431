//! `mkww-mcp doctor`: checks a set-up before (or while) it serves. It loads the configuration,
//! reaches the database and Redis within bounded timeouts, prints every key's effective value and
//! source (secrets masked), and warns about set-ups that work but are unsafe. It changes nothing
//! (PostgreSQL: the schema is created if missing, as `serve` would; SQLite: a missing file is
//! not created).
//!
//! Exit status: 0 when nothing is wrong (warnings included), 1 when the configuration does not
//! load or a configured service cannot be reached.

use crate::config::dynamic::{self, DYNAMIC};
use crate::config::{Config, Database};
use mcp_core::TaskStore;
use mcp_core::identity::IdentityStore;
use mcp_core::settings::Source;
use mcp_persistence::{PgTaskStore, RedisOptions, SqliteOptions, SqliteTaskStore};
use serde_json::Value;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// Longest wait for each service.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Keys whose values are never printed.
const SECRETS: &[&str] = &[
    "master_key",
    "master_keys_retired",
    "jwt_secret",
    "metrics_token",
    "github_token",
    "render_deploy_hooks",
    "llm_api_key",
    "vrchat_password",
    "vrchat_totp_secret",
    "discord_bot_token",
    "hooks",
];

/// Passwords an administrator must not keep.
const WELL_KNOWN_PASSWORDS: &[&str] = &[
    "admin",
    "password",
    "changeme",
    "admin123",
    "administrator",
    "password123",
    "adminadminadmin",
    "changemechangeme",
];

#[derive(Default)]
struct Report {
    errors: Vec<String>,
    warnings: Vec<String>,
}

pub async fn doctor(file: Option<&Path>) -> anyhow::Result<()> {
    let path = dynamic::file_path(file);
    let config = match Config::load(file) {
        Ok(config) => config,
        Err(e) => {
            println!("configuration: ERROR {e:#}");
            anyhow::bail!("the configuration does not load");
        }
    };
    let read = if path.exists() {
        format!("file {}", path.display())
    } else {
        "no file".to_string()
    };
    println!("configuration: ok ({read}, environment MCP_*)");
    let mut report = Report::default();
    print!("{}", settings_table(&config, &path));
    check_database(&config, &mut report).await;
    check_redis(&config, &mut report).await;
    warn_unsafe(&config, &mut report);
    for warning in &report.warnings {
        println!("warning: {warning}");
    }
    for error in &report.errors {
        println!("error: {error}");
    }
    if report.errors.is_empty() {
        println!(
            "doctor: ok ({} warning{})",
            report.warnings.len(),
            if report.warnings.len() == 1 { "" } else { "s" }
        );
        Ok(())
    } else {
        anyhow::bail!(
            "{} error{} found",
            report.errors.len(),
            if report.errors.len() == 1 { "" } else { "s" }
        )
    }
}

/// Every key with its effective value and source; `*` marks the keys that change at runtime.
fn settings_table(config: &Config, path: &Path) -> String {
    let sources = Config::sources(path);
    let mut out = String::from("settings (key = value  [source], * changes at runtime):\n");
    for (key, value) in config.values() {
        let shown = if SECRETS.contains(&key.as_str()) && !is_unset(&value) {
            "\"(set)\"".to_string()
        } else if let Some(url) = value.as_str().filter(|_| key.ends_with("_url")) {
            Value::from(without_password(url)).to_string()
        } else {
            value.to_string()
        };
        let source = sources.get(&key).copied().unwrap_or(Source::Default);
        let dynamic = if DYNAMIC.contains(&key.as_str()) {
            "*"
        } else {
            " "
        };
        let _ = writeln!(out, " {dynamic} {key} = {shown}  [{}]", source.as_str());
    }
    out
}

/// A URL with its password (if any) masked: `postgres://user:***@host/db`.
fn without_password(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

fn is_unset(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

async fn check_database(config: &Config, report: &mut Report) {
    let database = match config.database() {
        Ok(database) => database,
        Err(e) => {
            report.errors.push(format!("database_url: {e:#}"));
            return;
        }
    };
    match database {
        Database::Sqlite(path) => {
            if !path.exists() {
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
                let writable = dir.is_none_or(|d| {
                    !d.exists() || std::fs::metadata(d).is_ok_and(|m| !m.permissions().readonly())
                });
                if writable {
                    println!(
                        "database: ok (SQLite {}, created at first start)",
                        path.display()
                    );
                } else {
                    report
                        .errors
                        .push(format!("database: cannot create {}", path.display()));
                }
                return;
            }
            let opened = tokio::time::timeout(
                TIMEOUT,
                SqliteTaskStore::open(&path, &SqliteOptions::default()),
            )
            .await;
            match opened {
                Ok(Ok(store)) => match store.ping().await {
                    Ok(()) => {
                        println!("database: ok (SQLite {})", path.display());
                        check_admin_password(&store, report).await;
                        store.close().await;
                    }
                    Err(e) => report.errors.push(format!("database: {e}")),
                },
                Ok(Err(e)) => report.errors.push(format!("database: {e}")),
                Err(_) => report
                    .errors
                    .push(format!("database: no answer within {}s", TIMEOUT.as_secs())),
            }
        }
        Database::Postgres(url) => {
            let connected = tokio::time::timeout(
                TIMEOUT,
                PgTaskStore::connect_with(&url, &config.database_schema, 2, TIMEOUT),
            )
            .await;
            match connected {
                Ok(Ok(store)) => match store.check_server().await {
                    Ok(()) => {
                        println!(
                            "database: ok (PostgreSQL, schema {})",
                            config.database_schema
                        );
                        check_admin_password(&store, report).await;
                    }
                    Err(e) => report.errors.push(format!("database: {e}")),
                },
                Ok(Err(e)) => report
                    .errors
                    .push(format!("database: cannot reach PostgreSQL: {e}")),
                Err(_) => report.errors.push(format!(
                    "database: PostgreSQL did not answer within {}s",
                    TIMEOUT.as_secs()
                )),
            }
        }
    }
}

/// Warns when an administrator's password is one everybody would try.
async fn check_admin_password(store: &dyn IdentityStore, report: &mut Report) {
    // A database not migrated yet has no users to check.
    let Ok(users) = store.list_users().await else {
        return;
    };
    for user in users
        .iter()
        .filter(|u| u.role == mcp_core::principal::Role::Admin && !u.disabled)
    {
        let weak = WELL_KNOWN_PASSWORDS
            .iter()
            .copied()
            .chain([user.username.as_str()])
            .any(|p| mcp_core::credentials::verify_password(p, &user.password_hash));
        if weak {
            report.warnings.push(format!(
                "administrator `{}` has a default or well-known password: change it",
                user.username
            ));
        }
    }
}

async fn check_redis(config: &Config, report: &mut Report) {
    let Some(url) = config.redis_url.as_deref().filter(|u| !u.is_empty()) else {
        println!("redis: not configured (limits and events per node)");
        return;
    };
    let options = RedisOptions {
        timeout: Config::ms(config.redis_timeout_ms.max(1)).min(TIMEOUT),
        ..RedisOptions::default()
    };
    match mcp_persistence::check_redis(url, &options).await {
        Ok(()) => println!("redis: ok"),
        Err(e) => report
            .errors
            .push(format!("redis: cannot reach Redis: {e}")),
    }
}

/// Whether `addr` (`host:port`) listens beyond this machine.
fn is_public(addr: &str) -> bool {
    match addr.parse::<SocketAddr>() {
        Ok(addr) => !addr.ip().is_loopback(),
        Err(_) => {
            let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
            match host.trim_matches(['[', ']']).parse::<IpAddr>() {
                Ok(ip) => !ip.is_loopback(),
                Err(_) => host != "localhost",
            }
        }
    }
}

fn warn_unsafe(config: &Config, report: &mut Report) {
    let warnings = &mut report.warnings;
    let public = is_public(&config.listen);
    let tls = config.tls_cert.is_some() && config.tls_key.is_some();
    let cluster = matches!(config.database(), Ok(Database::Postgres(_)));
    if public && !tls {
        warnings.push(format!(
            "listen = {} is reachable from other machines without TLS: set tls_cert and \
             tls_key, or put a TLS-terminating proxy in front (and list it in trusted_proxies)",
            config.listen
        ));
    }
    if cluster && config.jwt_algorithm == "HS256" && config.jwt_secret.is_none() {
        warnings.push(
            "cluster (PostgreSQL) with a generated JWT secret: each node generates its own, so \
             tokens from one node fail on another; set jwt_secret (MCP_JWT_SECRET) on every node"
                .into(),
        );
    }
    if cluster && config.master_key.is_none() {
        warnings.push(
            "cluster (PostgreSQL) with a generated master_key: nodes cannot open each other's \
             secrets; set master_key on every node"
                .into(),
        );
    }
    if !config.vrchat_osc_listen.is_empty() && is_public(&config.vrchat_osc_listen) {
        warnings.push(format!(
            "vrchat_osc_listen = {} accepts OSC from other machines: anyone there can publish \
             avatar parameters; listen on 127.0.0.1",
            config.vrchat_osc_listen
        ));
    }
    if let Some(token) = config.metrics_token.as_deref().filter(|t| !t.is_empty()) {
        if public && !tls {
            warnings
                .push("metrics_token is sent in the clear on a public listener without TLS".into());
        }
        if token.len() < 24 {
            warnings.push("metrics_token is short (under 24 characters): guessable".into());
        }
    }
    if config.outbound_allow_private || config.webhooks_allow_private {
        warnings.push(
            "outbound_allow_private: calls made for clients may reach this network's private \
             and loopback addresses"
                .into(),
        );
    }
    if config.ws_allowed_origins.iter().any(|o| o == "*") {
        warnings.push("ws_allowed_origins has `*`: any web page may open a WebSocket".into());
    }
    if config
        .trusted_proxies
        .iter()
        .any(|p| p == "0.0.0.0/0" || p == "::/0")
    {
        warnings.push(
            "trusted_proxies trusts every address: any client can choose its own IP (and dodge \
             per-IP limits)"
                .into(),
        );
    }
    if config.rate_limit_ip_per_minute == 0 || config.rate_limit_auth_per_minute == 0 {
        warnings.push("a per-IP rate limit is 0".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords_in_urls() {
        assert_eq!(
            without_password("postgres://app:s3cret@db:5432/mcp"),
            "postgres://app:***@db:5432/mcp"
        );
        assert_eq!(
            without_password("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }

    #[test]
    fn tells_loopback_from_public_listeners() {
        assert!(!is_public("127.0.0.1:8080"));
        assert!(!is_public("[::1]:8080"));
        assert!(!is_public("localhost:8080"));
        assert!(is_public("0.0.0.0:8080"));
        assert!(is_public("10.0.0.5:9000"));
        assert!(is_public("example.org:443"));
    }

    #[test]
    fn warns_about_an_unsafe_cluster() {
        let config = Config {
            listen: "0.0.0.0:8080".into(),
            database_url: Some("postgres://u@h/db".into()),
            vrchat_osc_listen: "0.0.0.0:9001".into(),
            ..Config::default()
        };
        let mut report = Report::default();
        warn_unsafe(&config, &mut report);
        let all = report.warnings.join("\n");
        for expected in ["without TLS", "generated JWT secret", "master_key", "OSC"] {
            assert!(all.contains(expected), "{expected}: {all}");
        }
        let mut report = Report::default();
        warn_unsafe(&Config::default(), &mut report);
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    }
}
