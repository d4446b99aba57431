//! Logging: the `tracing` subscriber every command installs. Three layers over one registry:
//!
//! - the filter (`RUST_LOG`, else `log_level`), behind a reload layer so it can be changed at run
//!   time through [`set_log_filter`];
//! - the OpenTelemetry layer, only when traces are configured (`telemetry.rs`);
//! - the formatter on standard output: `json` (one object per line, with `trace_id` and
//!   `span_id` while a traced span is current), `pretty` (readable, coloured unless `NO_COLOR`),
//!   or `auto`, the default: `pretty` when standard output is a terminal, `json` otherwise.
//!   Lines are written by a thread of their own, a few at a time (`log_output.rs`).

use crate::config::Config;
use crate::log_output;
use crate::telemetry;
use std::io::IsTerminal;
use std::sync::OnceLock;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{self as tracing_fmt, FmtContext};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// The reload handle of the installed filter.
type FilterHandle = reload::Handle<EnvFilter, Registry>;

static FILTER: OnceLock<FilterHandle> = OnceLock::new();

/// Changes the log filter of the running process (the `log_level` runtime setting: `debug`,
/// `mkww_mcp=debug,info`, …).
pub fn set_log_filter(filter: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
    match FILTER.get() {
        Some(handle) => handle.reload(filter).map_err(|e| e.to_string()),
        None => Err("logging is not installed".into()),
    }
}

/// The filter the configuration asks for: `RUST_LOG` when set, else `log_level`, else `info`.
pub fn configured_filter(config: &Config) -> EnvFilter {
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Whether `log_format` (`json`, `pretty` or `auto`) means readable lines on this process.
fn readable(log_format: &str) -> bool {
    match log_format {
        "pretty" => true,
        "auto" => std::io::stdout().is_terminal(),
        _ => false,
    }
}

pub fn init_logging(config: &Config) {
    let (filter, handle) = reload::Layer::new(configured_filter(config));
    let (tracer, refused) = match telemetry::tracer() {
        Ok(tracer) => (tracer, None),
        Err(e) => (None, Some(e)),
    };
    let traced = tracer.is_some();
    let otel = tracer.map(|tracer| tracing_opentelemetry::layer().with_tracer(tracer));
    let output = if readable(&config.log_format) {
        tracing_fmt::layer()
            .with_ansi(std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()))
            .with_writer(log_output::Stdout)
            .boxed()
    } else {
        tracing_fmt::layer()
            .json()
            .with_writer(log_output::Stdout)
            .event_format(WithTraceIds {
                inner: format::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false),
                enabled: traced,
            })
            .boxed()
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(output)
        .try_init()
        .is_ok();
    if installed {
        let _ = FILTER.set(handle);
        if traced {
            telemetry::remember_dispatch();
        }
    }
    if let Some(e) = refused {
        tracing::error!(error = %e, "traces are off: the OTEL_* settings cannot be used");
    }
}

/// The JSON formatter, with the current span's `trace_id` and `span_id` added to each line while
/// traces are on.
struct WithTraceIds<F> {
    inner: F,
    enabled: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let current = self
            .enabled
            .then(|| ctx.lookup_current().map(|span| span.id()))
            .flatten();
        let ids = current.and_then(|id| telemetry::span_ids(&id));
        let Some((trace_id, span_id)) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        // One JSON object and a newline: the ids go in before its closing brace.
        let body = line.trim_end();
        match body.strip_suffix('}') {
            Some(open) => writeln!(
                writer,
                "{open},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"
            ),
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_readable_only_on_a_terminal() {
        assert!(readable("pretty"));
        assert!(!readable("json"));
        // The test runner captures standard output: not a terminal, so JSON.
        assert_eq!(readable("auto"), std::io::stdout().is_terminal());
        assert_eq!(Config::default().log_format, "auto");
    }
}
