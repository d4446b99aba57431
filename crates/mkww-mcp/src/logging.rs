//! Logging: the `tracing` subscriber every command installs, JSON or pretty, filtered by
//! `RUST_LOG` or the configured level.

use crate::config::Config;
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;

pub fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if config.log_format == "pretty" {
        let builder = builder.with_filter_reloading();
        keep_filter_handle(builder.reload_handle());
        builder.try_init()
    } else {
        let builder = builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_filter_reloading();
        keep_filter_handle(builder.reload_handle());
        builder.try_init()
    };
}

/// Replaces the installed subscriber's filter (the `log_level` runtime setting).
type FilterSetter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

static FILTER: OnceLock<FilterSetter> = OnceLock::new();

/// Keeps the reload handle of the subscriber's filter so that `set_log_filter` can change it.
pub fn keep_filter_handle<S: 'static>(handle: tracing_subscriber::reload::Handle<EnvFilter, S>)
where
    tracing_subscriber::reload::Handle<EnvFilter, S>: Send + Sync,
{
    let _ = FILTER.set(Box::new(move |filter| {
        handle.reload(filter).map_err(|e| e.to_string())
    }));
}

/// Changes the log filter of the running process (e.g. `debug` or `mkww_mcp=debug,info`).
pub fn set_log_filter(filter: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
    match FILTER.get() {
        Some(set) => set(filter),
        None => Err("logging is not installed".into()),
    }
}
