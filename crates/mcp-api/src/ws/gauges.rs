//! The WebSocket's gauges (`mcp_ws_connections`, `mcp_ws_subscriptions`): each connection and
//! subscription holds one `Counted`, so however it ends, its count is given back.

/// One unit of a gauge, held until dropped.
pub(super) struct Counted(metrics::Gauge);

impl Counted {
    pub(super) fn new(gauge: &'static str) -> Counted {
        let gauge = metrics::gauge!(gauge);
        gauge.increment(1.0);
        Counted(gauge)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
