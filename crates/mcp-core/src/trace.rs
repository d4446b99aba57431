//! Trace context, without OpenTelemetry: spans are plain `tracing` spans, and what links them
//! across processes is the W3C `traceparent` string (`00-<trace id>-<span id>-<flags>`), which
//! tasks store and outgoing calls carry.
//!
//! The binary installs a [`Propagation`] when tracing is configured (the `OTEL_*` variables);
//! until then every function here returns at once and allocates nothing, so callers make their
//! spans only `if trace::enabled()`.

use std::sync::OnceLock;
use tracing::Span;

/// The header (and WebSocket field) that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// What the tracing back end does for core: read a span's context as a `traceparent`, and make a
/// span the child of one.
pub trait Propagation: Send + Sync + 'static {
    /// The `traceparent` of `span`; `None` if it has no valid context.
    fn traceparent(&self, span: &Span) -> Option<String>;
    /// Makes `span` (not yet entered) a child of the remote context `traceparent`; a malformed
    /// one is ignored.
    fn set_parent(&self, span: &Span, traceparent: &str);
}

static PROPAGATION: OnceLock<Box<dyn Propagation>> = OnceLock::new();

/// Installs the back end, once per process; false if one was installed before.
pub fn install(propagation: Box<dyn Propagation>) -> bool {
    PROPAGATION.set(propagation).is_ok()
}

/// Whether traces are recorded: make spans and carry context only then.
#[inline]
pub fn enabled() -> bool {
    PROPAGATION.get().is_some()
}

/// The `traceparent` of the current span.
pub fn current() -> Option<String> {
    traceparent(&Span::current())
}

/// The `traceparent` of `span`.
pub fn traceparent(span: &Span) -> Option<String> {
    PROPAGATION.get()?.traceparent(span)
}

/// Makes `span` a child of `traceparent` when there is one.
pub fn set_parent(span: &Span, traceparent: Option<&str>) {
    if let (Some(propagation), Some(parent)) = (PROPAGATION.get(), traceparent) {
        propagation.set_parent(span, parent);
    }
}

/// The trace id of a `traceparent` (32 lowercase hex digits), if it is well formed.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let well_formed = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(span, 16)
        && span.bytes().any(|b| b != b'0')
        && hex(flags, 2)
        && (version != "00" || parts.next().is_none());
    well_formed.then_some(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_id_is_read_from_a_well_formed_traceparent_only() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(good), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn without_a_back_end_nothing_is_traced() {
        assert!(!enabled());
        assert_eq!(current(), None);
    }
}
