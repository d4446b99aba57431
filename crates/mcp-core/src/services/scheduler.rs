//! The scheduler: each node's loop that fires due schedules. There is no leader: every node
//! looks, each firing's idempotency key makes its task exactly one whoever creates it, and the
//! conditional advance (`ScheduleStore::advance_schedule`) lets exactly one node finish and
//! announce it (`ScheduleService::run_due`). It sleeps until the earliest next fire time,
//! is nudged when a schedule changes on this node, and looks at least every `poll` for changes
//! made on other nodes.

use super::schedules::ScheduleService;
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Pause after the store failed, before looking again.
const AFTER_ERROR: Duration = Duration::from_secs(1);

/// Runs until `stop`.
pub async fn run(service: Arc<ScheduleService>, stop: CancellationToken) {
    let nudge = service.nudged();
    let poll = service.config().poll;
    loop {
        let wait = match service.run_due(Utc::now()).await {
            Ok(_) => match service.next_fire_at().await {
                Ok(Some(at)) => (at - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(poll),
                Ok(None) => poll,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the next fire time");
                    AFTER_ERROR
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot fire due schedules");
                AFTER_ERROR
            }
        };
        tokio::select! {
            _ = nudge.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}
