//! A graceful shutdown ends within its bounds even when the pool's
//! connection is cut off without an error (a half-open connection): the
//! claim in progress is abandoned after the shutdown timeout, the release
//! after a lease; and no handler starts after `shutdown` returned.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use pgorm::listen::PgNotifyHub;
use pgorm::{GenericClient, PgClient};
use pgorm_events::{
    Claim, EventHooks, EventWorkers, Events, EventsError, NewEvent, Router, WorkerConfig,
};
use serde_json::json;
use support::*;

/// A pool whose statements go through `proxy` and whose wake-ups come
/// straight from the server (so that only the statements are cut off).
async fn pool_behind(
    proxy: &FaultProxy,
    url: &str,
    events: &Events,
    router: Router,
    config: WorkerConfig,
) -> (PgClient, EventWorkers) {
    let client = PgClient::connect(&proxy.url_for(url)).await.unwrap();
    let hub = PgNotifyHub::connect(url).await.unwrap();
    let workers = EventWorkers::start_with_hub(client.clone(), events.clone(), router, config, hub)
        .await
        .unwrap();
    (client, workers)
}

/// A router whose "stuck" handler tells the receiver it started, then never
/// returns.
fn stuck_router() -> (Router, tokio::sync::mpsc::Receiver<()>) {
    let (started_tx, started_rx) = tokio::sync::mpsc::channel(1);
    let router = Router::new().on("stuck", move |_event| {
        let started_tx = started_tx.clone();
        async move {
            let _ = started_tx.send(()).await;
            std::future::pending::<()>().await;
            Ok(())
        }
    });
    (router, started_rx)
}

#[tokio::test]
async fn a_claim_hanging_on_a_cut_off_connection_does_not_hang_the_shutdown() {
    let (url, _client, events) = setup().await;
    let proxy = FaultProxy::start(TestServer::shared().port())
        .await
        .unwrap();
    let timeout = Duration::from_millis(500);
    let config = WorkerConfig::new()
        .shutdown_timeout(timeout)
        .poll_interval(Duration::from_millis(100));
    let (_pool_client, workers) = pool_behind(&proxy, &url, &events, Router::new(), config).await;

    // The next claim (the poll, or this wake-up) is sent into the void.
    proxy.set_mode(ProxyMode::Blackhole);
    workers.wake();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let report = within("the shutdown", workers.shutdown()).await.unwrap();
    println!("shutdown with a hanging claim: {:?}", started.elapsed());
    // No handler was running: nothing was left undrained.
    assert!(report.drained, "{report:?}");
    assert_eq!(report.released, 0);
}

#[tokio::test]
async fn a_release_hanging_on_a_cut_off_connection_times_out() {
    let (url, client, events) = setup().await;
    let proxy = FaultProxy::start(TestServer::shared().port())
        .await
        .unwrap();
    let (router, mut started_rx) = stuck_router();
    let lease = Duration::from_secs(1);
    let config = WorkerConfig::new()
        .concurrency(1)
        .lease(lease)
        .shutdown_timeout(Duration::from_millis(500));
    let (_pool_client, workers) = pool_behind(&proxy, &url, &events, router, config).await;
    let event = NewEvent::new("stuck", &serde_json::json!({})).unwrap();
    events.publish(&client, event).await.unwrap();
    within("the handler's start", started_rx.recv()).await;

    // The handler never finishes; its release is sent into the void.
    proxy.set_mode(ProxyMode::Blackhole);
    let started = Instant::now();
    let error = within("the shutdown", workers.shutdown())
        .await
        .unwrap_err();
    println!("shutdown with a hanging release: {:?}", started.elapsed());
    assert!(
        matches!(error, EventsError::TimedOut { after, .. } if after == lease),
        "{error:?}"
    );

    // The event is still leased to the stopped pool, never lost: its lease
    // expires and it is taken again.
    let stats = stats(&events, &client).await;
    assert_eq!(stats.running + stats.expired_leases, 1, "{stats:?}");
}

/// A claim hook that holds the coordinator (synchronously, as a slow hook
/// does) once a claim returned events, until the gate is opened (or 10 s).
#[derive(Default)]
struct Gate {
    claims: AtomicUsize,
    entered: AtomicBool,
    open: Mutex<bool>,
    opened: Condvar,
}

struct GateHook(Arc<Gate>);

impl EventHooks for GateHook {
    fn on_claim(&self, claim: &Claim) {
        self.0.claims.fetch_add(1, Ordering::SeqCst);
        if claim.claimed == 0 {
            return;
        }
        self.0.entered.store(true, Ordering::SeqCst);
        let wait = || {
            let open = self.0.open.lock().unwrap();
            let _ = self
                .0
                .opened
                .wait_timeout_while(open, Duration::from_secs(10), |open| !*open)
                .unwrap();
        };
        // On a multi-threaded runtime the worker thread is handed over
        // (the runtime keeps running); the coordinator task stays here.
        match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(wait),
            _ => wait(),
        }
    }
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

// Review 5, finding 1: `shutdown` collected the in-flight leases and then
// aborted the coordinator, without waiting for it to end. A coordinator that is running
// at that moment (on another worker thread of a multi-threaded runtime:
// here held in its claim hook, in production any claim response it is
// processing while the shutdown deadline passes) is not stopped by
// `abort()` until its next await: it starts the events it claimed after
// `shutdown` collected the leftovers. Their handlers run after `shutdown`
// returned Ok, with no heartbeat (aborted) renewing their leases and no
// release; a long handler is then also taken by another pool when the
// lease expires (two concurrent runs). `shutdown` now waits for the
// aborted coordinator to end before it takes the leftovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_handler_starts_after_shutdown_returned() {
    let (_url, client, events) = setup_schema("late_start").await;
    let returned = Arc::new(AtomicBool::new(false));
    let ran = Arc::new(AtomicBool::new(false));
    let ran_after = Arc::new(AtomicBool::new(false));
    let router = {
        let (returned, ran, ran_after) = (returned.clone(), ran.clone(), ran_after.clone());
        Router::new().on("n", move |_event| {
            let (returned, ran, ran_after) = (returned.clone(), ran.clone(), ran_after.clone());
            async move {
                if returned.load(Ordering::SeqCst) {
                    ran_after.store(true, Ordering::SeqCst);
                }
                ran.store(true, Ordering::SeqCst);
                Ok(())
            }
        })
    };
    let gate = Arc::new(Gate::default());
    let config = WorkerConfig::new()
        .shutdown_timeout(Duration::from_millis(300))
        .hooks(GateHook(gate.clone()));
    let workers = EventWorkers::start(client.clone(), events.clone(), router, config)
        .await
        .unwrap();
    events
        .publish(&client, NewEvent::new("n", &json!({})).unwrap())
        .await
        .unwrap();
    // The coordinator has claimed the event and is inside its claim hook.
    until("the claim", || async {
        gate.entered.load(Ordering::SeqCst)
    })
    .await;

    let report = within("the shutdown", workers.shutdown()).await.unwrap();
    returned.store(true, Ordering::SeqCst);
    gate.open();

    // Either the handler runs, or the event is given back (or completed).
    until("the event's fate", || async {
        ran.load(Ordering::SeqCst)
            || client
                .query_one(
                    "SELECT count(*) FROM late_start.events WHERE lease_token IS NOT NULL",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 0
    })
    .await;
    assert!(
        !ran_after.load(Ordering::SeqCst),
        "a handler started after shutdown() had returned {report:?}"
    );
}

// Review 5, finding 6: `shutdown_timeout(Duration::ZERO)` means "cancel the
// handlers and hand their events back at once". The release got the
// shutdown timeout too, so zero made it fail with TimedOut and left the
// events leased until their leases expired; it now gets up to a lease.
#[tokio::test]
async fn a_zero_shutdown_timeout_still_releases() {
    let (_url, client, events) = setup_schema("zero_timeout").await;
    let (router, mut started_rx) = stuck_router();
    let config = WorkerConfig::new()
        .concurrency(1)
        .shutdown_timeout(Duration::ZERO);
    let workers = EventWorkers::start(client.clone(), events.clone(), router, config)
        .await
        .unwrap();
    events
        .publish(&client, NewEvent::new("stuck", &json!({})).unwrap())
        .await
        .unwrap();
    within("the handler's start", started_rx.recv()).await;
    let result = within("the shutdown", workers.shutdown()).await;
    let stats = stats(&events, &client).await;
    assert!(
        result.as_ref().is_ok_and(|report| report.released == 1),
        "{result:?}; queue: {stats:?}"
    );
}
