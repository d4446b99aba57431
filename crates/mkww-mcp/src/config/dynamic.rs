//! Which configuration keys change at runtime (`PATCH /v1/settings`, SIGHUP), where each key's
//! value comes from (default, file, environment), and the checks a runtime change must pass:
//! the same as at start, on the configuration the change would make.

use super::Config;
use figment::Figment;
use figment::providers::{Format, Toml};
use mcp_core::settings::{KeyKind, SettingsSchema, Source};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The keys that change without a restart. README's configuration table marks them; the
/// binary applies each (`serve/runtime.rs`).
pub const DYNAMIC: &[&str] = &[
    "rate_limit_ip_per_minute",
    "rate_limit_auth_per_minute",
    "rate_limit_login_per_minute",
    "rate_limit_login_username_per_minute",
    "rate_limit_read_per_minute",
    "rate_limit_write_per_minute",
    "quota_tasks_per_day",
    "log_level",
    "worker_concurrency",
    "breaker_window_ms",
    "breaker_min_calls",
    "breaker_failure_rate",
    "breaker_open_ms",
    "breaker_probes",
    "outbound_allow",
    "outbound_allow_private",
];

/// Where `Config::load(file)` reads its file from.
pub fn file_path(file: Option<&Path>) -> PathBuf {
    file.map_or_else(|| PathBuf::from("mkww-mcp.toml"), Path::to_path_buf)
}

impl Config {
    /// Every key as JSON (the shape the file and the environment set).
    pub fn values(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        }
    }

    /// Where each key's value comes from: the environment (`MCP_<KEY>`), the file, or the default.
    pub fn sources(file: &Path) -> BTreeMap<String, Source> {
        let in_file: Map<String, Value> = if file.exists() {
            Figment::from(Toml::file(file))
                .extract()
                .unwrap_or_default()
        } else {
            Map::new()
        };
        Config::default()
            .values()
            .keys()
            .map(|key| {
                let source = if std::env::var_os(format!("MCP_{}", key.to_uppercase())).is_some() {
                    Source::Env
                } else if in_file.contains_key(key) {
                    Source::File
                } else {
                    Source::Default
                };
                (key.clone(), source)
            })
            .collect()
    }

    /// The dynamic keys' values and sources, before runtime overrides.
    pub fn dynamic_values(
        &self,
        sources: &BTreeMap<String, Source>,
    ) -> BTreeMap<String, (Value, Source)> {
        let values = self.values();
        DYNAMIC
            .iter()
            .filter_map(|key| {
                let value = values.get(*key)?.clone();
                let source = sources.get(*key).copied().unwrap_or(Source::Default);
                Some((key.to_string(), (value, source)))
            })
            .collect()
    }

    /// This configuration with `values` (dynamic keys) in place of its own; checked like a
    /// loaded one.
    pub fn with_values(&self, values: &BTreeMap<String, Value>) -> anyhow::Result<Config> {
        let mut all = self.values();
        for (key, value) in values {
            all.insert(key.clone(), value.clone());
        }
        let config: Config = serde_json::from_value(Value::Object(all))?;
        config.check()?;
        Ok(config)
    }
}

/// The configuration as core's runtime settings see it: the loaded one (replaced on SIGHUP)
/// and the list above.
pub struct Schema {
    pub base: Mutex<Config>,
}

impl Schema {
    pub fn new(config: Config) -> Schema {
        Schema {
            base: Mutex::new(config),
        }
    }

    pub fn base(&self) -> Config {
        self.base.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_base(&self, config: Config) {
        *self.base.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }
}

impl SettingsSchema for Schema {
    fn kind(&self, key: &str) -> KeyKind {
        if DYNAMIC.contains(&key) {
            KeyKind::Dynamic
        } else if Config::default().values().contains_key(key) {
            KeyKind::Static
        } else {
            KeyKind::Unknown
        }
    }

    fn check(&self, values: &BTreeMap<String, Value>) -> Result<(), String> {
        self.base()
            .with_values(values)
            .map(drop)
            .map_err(|e| format!("{e:#}"))
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's test jail returns its own large error type
mod tests {
    use super::*;

    #[test]
    fn every_dynamic_key_is_a_configuration_key() {
        let keys = Config::default().values();
        for key in DYNAMIC {
            assert!(keys.contains_key(*key), "{key}");
        }
    }

    #[test]
    fn checks_a_change_like_a_loaded_configuration() {
        let schema = Schema::new(Config::default());
        let change = |k: &str, v: Value| BTreeMap::from([(k.to_string(), v)]);
        assert!(
            schema
                .check(&change("rate_limit_read_per_minute", 5.into()))
                .is_ok()
        );
        assert!(
            schema
                .check(&change("rate_limit_read_per_minute", "many".into()))
                .is_err()
        );
        assert!(
            schema
                .check(&change("breaker_failure_rate", 2.5.into()))
                .is_err()
        );
        assert!(
            schema
                .check(&change("log_level", "mkww_mcp=loudest".into()))
                .is_err()
        );
        assert_eq!(schema.kind("log_level"), KeyKind::Dynamic);
        assert_eq!(schema.kind("listen"), KeyKind::Static);
        assert_eq!(schema.kind("listn"), KeyKind::Unknown);
    }

    #[test]
    fn names_the_source_of_each_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "mkww-mcp.toml",
                "worker_concurrency = 3\nlog_level = \"debug\"\n",
            )?;
            jail.set_env("MCP_LOG_LEVEL", "warn");
            let sources = Config::sources(Path::new("mkww-mcp.toml"));
            assert_eq!(sources["worker_concurrency"], Source::File);
            assert_eq!(sources["log_level"], Source::Env);
            assert_eq!(sources["listen"], Source::Default);
            Ok(())
        });
    }
}
