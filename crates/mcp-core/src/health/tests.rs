//! The monitor and the database breaker, against fake dependencies.

use super::*;
use crate::events::LocalBus;
use crate::store::{
    CancelOutcome, ClaimRequest, Completion, Inserted, RetryOutcome, StoreError, TaskCounts,
    TaskFilter, TaskStore,
};
use crate::task::{NewTask, Task};
use std::sync::atomic::AtomicUsize;
use std::time::Instant;
use uuid::Uuid;

/// A dependency whose answer the test decides.
struct Switch {
    name: &'static str,
    critical: bool,
    up: Arc<AtomicBool>,
}

#[async_trait]
impl Probe for Switch {
    fn name(&self) -> &str {
        self.name
    }
    fn critical(&self) -> bool {
        self.critical
    }
    async fn check(&self) -> Result<(), Failure> {
        if self.up.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Failure::down("connection refused"))
        }
    }
}

fn fast() -> HealthConfig {
    HealthConfig {
        interval: Duration::from_millis(50),
        down_interval: Duration::from_millis(10),
        probe_timeout: Duration::from_millis(200),
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn only_a_critical_dependency_that_is_down_makes_the_node_not_ready() {
    let monitor = Arc::new(HealthMonitor::new(fast()));
    let database = monitor.declare(DATABASE, true);
    let redis = monitor.declare("redis", false);
    assert!(monitor.failing().is_empty());
    redis.report_failure("connection refused");
    assert!(monitor.failing().is_empty());
    assert_eq!(
        monitor.dependency("redis").map(|h| h.state),
        Some(HealthState::Down)
    );
    database.report_failure("connection refused");
    assert_eq!(monitor.failing(), vec![DATABASE.to_owned()]);
    assert!(database.is_down());
    let health = monitor.dependency(DATABASE).unwrap();
    assert_eq!(health.last_error.as_deref(), Some("connection refused"));
    assert!(health.critical);
}

#[tokio::test]
async fn probes_find_a_failure_and_the_recovery() {
    let monitor = Arc::new(HealthMonitor::new(fast()));
    let up = Arc::new(AtomicBool::new(true));
    let database = monitor.register(Arc::new(Switch {
        name: DATABASE,
        critical: true,
        up: up.clone(),
    }));
    let stop = CancellationToken::new();
    let loops = monitor.run(stop.clone());
    until("first probe", || {
        monitor
            .dependency(DATABASE)
            .is_some_and(|h| h.last_check.is_some())
    })
    .await;
    up.store(false, Ordering::SeqCst);
    until("down", || database.is_down()).await;
    up.store(true, Ordering::SeqCst);
    until("up again", || !database.is_down()).await;
    assert_eq!(
        monitor.dependency(DATABASE).map(|h| h.last_error),
        Some(Some("connection refused".to_owned()))
    );
    stop.cancel();
    for handle in loops {
        handle.await.unwrap();
    }
}

#[tokio::test]
async fn a_reported_failure_is_confirmed_or_cleared_by_the_next_probe_soon() {
    // The interval is long: only the nudge can explain a quick recovery.
    let monitor = Arc::new(HealthMonitor::new(HealthConfig {
        interval: Duration::from_secs(60),
        ..fast()
    }));
    let up = Arc::new(AtomicBool::new(true));
    let database = monitor.register(Arc::new(Switch {
        name: DATABASE,
        critical: true,
        up,
    }));
    let stop = CancellationToken::new();
    monitor.run(stop.clone());
    until("first probe", || {
        monitor
            .dependency(DATABASE)
            .is_some_and(|h| h.last_check.is_some())
    })
    .await;
    // A transient error seen by one caller.
    database.report_failure("connection reset");
    assert!(database.is_down());
    until("cleared by a probe", || !database.is_down()).await;
    stop.cancel();
}

#[tokio::test]
async fn changes_are_events_on_system_health() {
    let monitor = Arc::new(HealthMonitor::new(fast()));
    let bus = Arc::new(LocalBus::default());
    monitor.set_events(bus.clone());
    let mut events = bus.subscribe(HEALTH_CHANNEL).await.unwrap();
    let database = monitor.declare(DATABASE, true);
    database.report_failure("connection refused");
    database.report_failure("still refused");
    database.report_success();
    let first = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.event.event_type, "health.down");
    assert_eq!(first.event.data["dependency"], DATABASE);
    assert_eq!(first.event.data["state"], "down");
    assert_eq!(first.event.data["error"], "connection refused");
    // A second failure while down changes nothing, so the next event is the recovery.
    let second = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.event.event_type, "health.up");
}

#[tokio::test]
async fn a_probe_that_hangs_counts_as_down() {
    let monitor = Arc::new(HealthMonitor::new(fast()));
    monitor.declare("vrchat", false);
    let hangs = FnProbe::new("vrchat", false, || {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        })
    });
    let started = Instant::now();
    monitor.probe_once(&hangs).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let health = monitor.dependency("vrchat").unwrap();
    assert_eq!(health.state, HealthState::Down);
    assert!(health.last_error.unwrap().contains("no answer"));
}

/// A task store that fails as told and counts the calls that reached it.
#[derive(Default)]
struct Flaky {
    broken: AtomicBool,
    calls: AtomicUsize,
}

impl Flaky {
    fn answer<T>(&self, value: T) -> Result<T, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.broken.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("connection refused".into()))
        } else {
            Ok(value)
        }
    }
}

#[async_trait]
impl TaskStore for Flaky {
    async fn insert(&self, _: &[NewTask]) -> Result<Vec<Inserted>, StoreError> {
        self.answer(Vec::new())
    }
    async fn get(&self, _: Uuid) -> Result<Option<Task>, StoreError> {
        self.answer(None)
    }
    async fn list(&self, _: &TaskFilter) -> Result<Vec<Task>, StoreError> {
        self.answer(Vec::new())
    }
    async fn claim(&self, _: &ClaimRequest) -> Result<Vec<Task>, StoreError> {
        self.answer(Vec::new())
    }
    async fn complete(&self, _: &str, _: &[Completion]) -> Result<Vec<Uuid>, StoreError> {
        self.answer(Vec::new())
    }
    async fn heartbeat(&self, _: &str, _: &[Uuid], _: Duration) -> Result<Vec<Uuid>, StoreError> {
        self.answer(Vec::new())
    }
    async fn release(&self, _: &str, _: &[Uuid]) -> Result<u64, StoreError> {
        self.answer(0)
    }
    async fn cancel(&self, _: Uuid) -> Result<CancelOutcome, StoreError> {
        self.answer(CancelOutcome::NotFound)
    }
    async fn retry(&self, _: Uuid) -> Result<RetryOutcome, StoreError> {
        self.answer(RetryOutcome::NotFound)
    }
    async fn rescue(&self) -> Result<Vec<Task>, StoreError> {
        self.answer(Vec::new())
    }
    async fn prune(&self, _: DateTime<Utc>) -> Result<u64, StoreError> {
        self.answer(0)
    }
    async fn next_run_at(&self, _: &[String]) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.answer(None)
    }
    async fn counts(&self) -> Result<TaskCounts, StoreError> {
        self.answer(TaskCounts::new())
    }
    async fn pending(&self) -> Result<u64, StoreError> {
        self.answer(0)
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.answer(())
    }
    async fn watch(&self, _: Arc<Notify>) -> Result<(), StoreError> {
        self.answer(())
    }
}

#[tokio::test]
async fn the_breaker_refuses_without_touching_the_store_while_the_database_is_down() {
    let monitor = Arc::new(HealthMonitor::new(fast()));
    let database = monitor.declare(DATABASE, true);
    let store = Arc::new(Flaky::default());
    let guarded: Guarded<dyn TaskStore> = Guarded::new(store.clone(), database.clone());
    assert!(guarded.get(Uuid::nil()).await.is_ok());
    store.broken.store(true, Ordering::SeqCst);
    // The first failure reaches the store and opens the breaker at once.
    assert!(matches!(
        guarded.get(Uuid::nil()).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(database.is_down());
    assert_eq!(store.calls.load(Ordering::SeqCst), 2);
    for _ in 0..100 {
        match guarded.list(&TaskFilter::default()).await {
            Err(StoreError::Unavailable(message)) => {
                assert!(message.contains("connection refused"), "{message}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    assert_eq!(store.calls.load(Ordering::SeqCst), 2);
    // The probe (on the unwrapped store) sees it back: calls go through again.
    store.broken.store(false, Ordering::SeqCst);
    database.report_success();
    assert!(guarded.get(Uuid::nil()).await.is_ok());
    assert_eq!(store.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_pool_timeout_asks_for_a_probe_instead_of_opening_the_breaker() {
    // The pool is saturated, the server fine: the probe (its own connection) says up.
    let monitor = Arc::new(HealthMonitor::new(HealthConfig {
        interval: Duration::from_secs(60),
        ..fast()
    }));
    let probed = Arc::new(AtomicUsize::new(0));
    let counter = probed.clone();
    let database = monitor.register(Arc::new(FnProbe::new(DATABASE, true, move || {
        counter.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    })));
    let stop = CancellationToken::new();
    monitor.run(stop.clone());
    until("first probe", || probed.load(Ordering::SeqCst) == 1).await;
    struct Saturated;
    let guarded: Guarded<Saturated> = Guarded::new(Arc::new(Saturated), database.clone());
    let result: Result<(), StoreError> = guarded.observe(Err(StoreError::Unavailable(
        NO_CONNECTION_IN_TIME.to_owned(),
    )));
    assert!(result.is_err());
    assert!(!database.is_down());
    until("probed again", || probed.load(Ordering::SeqCst) == 2).await;
    assert!(!database.is_down());
    stop.cancel();
}

#[tokio::test]
async fn a_call_on_a_silent_database_ends_when_the_probe_finds_it_down() {
    // A black hole: the call never answers, nor does the probe (its timeout makes it down).
    // The probe runs rarely, so only the slow call can have made it look.
    let monitor = Arc::new(HealthMonitor::new(HealthConfig {
        interval: Duration::from_secs(60),
        ..fast()
    }));
    let silent = Arc::new(AtomicBool::new(false));
    let probed = Arc::new(AtomicUsize::new(0));
    let (flag, counter) = (silent.clone(), probed.clone());
    let database = monitor.register(Arc::new(FnProbe::new(DATABASE, true, move || {
        counter.fetch_add(1, Ordering::SeqCst);
        let silent = flag.load(Ordering::SeqCst);
        Box::pin(async move {
            if silent {
                std::future::pending::<()>().await;
            }
            Ok(())
        })
    })));
    let stop = CancellationToken::new();
    monitor.run(stop.clone());
    until("first probe", || probed.load(Ordering::SeqCst) == 1).await;
    silent.store(true, Ordering::SeqCst);
    struct Silent;
    let guarded: Guarded<Silent> = Guarded::new(Arc::new(Silent), database.clone());
    let started = Instant::now();
    let result: Result<(), StoreError> = guarded.bounded(std::future::pending()).await;
    let took = started.elapsed();
    assert!(
        matches!(&result, Err(StoreError::Unavailable(m)) if m.contains("database is down")),
        "{result:?}"
    );
    // The call's patience (200 ms), then the probe's timeout (200 ms).
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(database.is_down());
    stop.cancel();
}

#[test]
fn a_draining_node_is_not_ready_whatever_its_dependencies() {
    let monitor = Arc::new(HealthMonitor::default());
    monitor.declare(DATABASE, true);
    assert!(monitor.failing().is_empty());
    monitor.begin_drain();
    assert!(monitor.is_draining());
    assert_eq!(monitor.failing(), vec![SHUTTING_DOWN.to_owned()]);
    // A dependency recovering does not make a draining node ready again.
    monitor.report_success(DATABASE);
    assert_eq!(monitor.failing(), vec![SHUTTING_DOWN.to_owned()]);
}
