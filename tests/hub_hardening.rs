//! The hub under the conditions the review found it failing: hooks that call
//! back into the hub, counters read while notifications flood in, handler
//! panics before the future, gap events, shutdown and dropping the hub under
//! running handlers. Against the real server.

mod support;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::Duration;

use pgorm::prelude::*;
use support::*;
use tokio::sync::Semaphore;

fn url() -> String {
    TestServer::shared().url()
}

/// A hub whose backend is found by `name`, that reconnects quickly, with
/// `hooks`.
async fn hooked_hub(name: &str, hooks: impl ListenerHooks) -> PgNotifyHub {
    let config = PgListenerConfig::new()
        .application_name(name)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .hooks(hooks);
    PgNotifyHub::connect_with(&url(), config)
        .await
        .expect("hub")
}

async fn next_of(subscription: &mut Subscription) -> Arc<PgNotification> {
    within("the next notification", subscription.next())
        .await
        .expect("the subscription ended")
        .expect("the subscription failed")
}

/// Runs `scenario` on a thread of its own, with its own runtime, and fails
/// the test if it has not finished within [`HANG`]. A deadlock blocks the
/// thread that runs the runtime, where no async deadline can fire: this one
/// is outside it (the stuck thread is left behind).
fn on_own_thread<S, F>(what: &'static str, scenario: S)
where
    S: FnOnce() -> F + Send + 'static,
    F: Future<Output = ()>,
{
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(scenario())
        }));
        let _ = done.send(outcome);
    });
    match finished.recv_timeout(HANG + Duration::from_secs(5)) {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{what} did not finish within {HANG:?}: its thread is stuck (deadlock)"),
    }
}

/// Hooks that do nothing.
struct NoHooks;

impl ListenerHooks for NoHooks {}

fn assert_balanced(stats: &SubscriptionStats) {
    assert_eq!(
        stats.received,
        stats.delivered + stats.dropped + stats.queued as u64,
        "{stats:?}"
    );
}

fn assert_hub_balanced(stats: &HubStats) {
    assert_eq!(stats.received, stats.routed + stats.unrouted, "{stats:?}");
}

// ---- hooks that call back into the hub --------------------------------------

/// `on_drop` reads the hub's stats, drops a subscription it holds, makes one
/// (and drops it before the server answers), and starts a real one on a task.
#[derive(Default)]
struct ReentrantHooks {
    hub: Mutex<Option<PgNotifyHub>>,
    held: Mutex<Vec<Subscription>>,
    other: String,
    calls: AtomicUsize,
    balanced: Mutex<Vec<bool>>,
    spawned: Mutex<Vec<tokio::task::JoinHandle<OrmResult<Subscription>>>>,
}

impl ListenerHooks for ReentrantHooks {
    fn on_drop(&self, _channel: Option<&str>, _dropped: u64) {
        let Some(hub) = self.hub.lock().unwrap().clone() else {
            return;
        };
        let stats = hub.stats();
        self.balanced
            .lock()
            .unwrap()
            .push(stats.received == stats.routed + stats.unrouted);
        let held = self.held.lock().unwrap().pop();
        drop(held);
        // The synchronous part of subscribe (the routes change) runs in the
        // first poll; the subscription is dropped before the answer.
        {
            let mut subscribing = std::pin::pin!(hub.subscribe(&self.other));
            let _ = subscribing
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()));
        }
        let other = self.other.clone();
        let handle = tokio::spawn(async move { hub.subscribe(&other).await });
        self.spawned.lock().unwrap().push(handle);
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn hooks_that_read_stats_and_make_or_drop_subscriptions_do_not_deadlock_the_hub() {
    on_own_thread("the re-entrant hook scenario", || async {
        let channel = unique("reentrant");
        let spare = unique("reentrant_spare");
        let hooks = Arc::new(ReentrantHooks {
            other: unique("reentrant_other"),
            ..Default::default()
        });
        let hub = hooked_hub(&unique("reentrant_app"), hooks.clone()).await;
        *hooks.hub.lock().unwrap() = Some(hub.clone());
        let held = hub.subscribe(&spare).await.unwrap();
        hooks.held.lock().unwrap().push(held);
        let mut small = hub
            .subscribe_with(&channel, 1, QueuePolicy::DropOldest)
            .await
            .unwrap();

        let admin = raw_client(&url()).await;
        admin
            .execute(
                "SELECT pg_notify($1, n::text) FROM generate_series(1, 10) AS n",
                &[&channel],
            )
            .await
            .unwrap();
        eventually("the on_drop hook", || async {
            hooks.calls.load(Ordering::SeqCst) > 0
        })
        .await;

        // The hub goes on: stats, a new subscription, the hook's own.
        let stats = hub.stats();
        assert_hub_balanced(&stats);
        assert_eq!(stats.hook_panics, 0, "no hook call panicked");
        assert!(hooks.balanced.lock().unwrap().iter().all(|ok| *ok));
        let fresh_channel = unique("reentrant_fresh");
        let mut fresh = hub.subscribe(&fresh_channel).await.unwrap();
        send(&admin, &fresh_channel, "still working").await;
        assert_eq!(next_of(&mut fresh).await.payload, "still working");
        let spawned = hooks
            .spawned
            .lock()
            .unwrap()
            .pop()
            .expect("a spawned subscribe");
        let mut from_hook = within("the hook's subscription", spawned)
            .await
            .unwrap()
            .unwrap();
        send(&admin, &hooks.other, "to the hook's").await;
        assert_eq!(next_of(&mut from_hook).await.payload, "to the hook's");

        // The subscription the hook dropped is gone, and its channel with it.
        assert!(hub.stats().channels.iter().all(|c| c.channel != spare));
        eventually("UNLISTEN of the spare channel", || async {
            !hub.server_channels().await.unwrap().contains(&spare)
        })
        .await;
        let mut seen = Vec::new();
        while let Some(event) = small.try_next_event().unwrap() {
            seen.push(event);
        }
        match seen.last() {
            Some(ListenerEvent::Notification(last)) => assert_eq!(last.payload, "10"),
            other => panic!("the newest notification is kept, not {other:?} ({seen:?})"),
        }
        let small_stats = small.stats();
        assert_balanced(&small_stats);
        assert_eq!((small_stats.received, small_stats.dropped), (10, 9));
        hooks.hub.lock().unwrap().take();
        within("close", hub.close()).await.unwrap();
    });
}

// ---- counters ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stats_snapshot_balances_while_notifications_flood_in() {
    const ROUNDS: usize = 10;
    const PER_ROUND: usize = 2000;
    let total = (ROUNDS * PER_ROUND) as u64;
    let (flooded, churned) = (unique("flood"), unique("flood_churn"));
    let hub = hooked_hub(&unique("flood_app"), NoHooks).await;
    let mut reader = hub.subscribe(&flooded).await.unwrap();
    let mut small = hub
        .subscribe_with(&flooded, 16, QueuePolicy::DropOldest)
        .await
        .unwrap();
    let stuck = hub
        .subscribe_with(&flooded, 8, QueuePolicy::DropNewest)
        .await
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));

    // Reads the hub's and a stuck subscription's counters all along.
    let observer = tokio::spawn({
        let (hub, done) = (hub.clone(), done.clone());
        async move {
            let mut snapshots = 0u64;
            while !done.load(Ordering::SeqCst) {
                assert_hub_balanced(&hub.stats());
                assert_balanced(&stuck.stats());
                snapshots += 1;
                tokio::task::yield_now().await;
            }
            (snapshots, stuck)
        }
    });
    // Subscribes to and drops a second flooded channel, so that some of its
    // notifications arrive with no subscription (unrouted).
    let churn = tokio::spawn({
        let (hub, done, channel) = (hub.clone(), done.clone(), churned.clone());
        async move {
            while !done.load(Ordering::SeqCst) {
                let subscription = hub.subscribe(&channel).await.unwrap();
                assert_balanced(&subscription.stats());
                drop(subscription);
                tokio::task::yield_now().await;
            }
        }
    });
    let publisher = tokio::spawn({
        let (flooded, churned) = (flooded.clone(), churned.clone());
        async move {
            let client = raw_client(&url()).await;
            for _ in 0..ROUNDS {
                for channel in [&flooded, &churned] {
                    client
                        .execute(
                            "SELECT pg_notify($1, n::text) FROM generate_series(1, $2) AS n",
                            &[channel, &(PER_ROUND as i32)],
                        )
                        .await
                        .unwrap();
                }
            }
        }
    });

    // Two consumers read (in batches and one by one) and check their own
    // counters between reads.
    let mut read = 0u64;
    within("the flood", async {
        while read < total {
            match reader.next_batch().await.unwrap().unwrap() {
                ListenerEvent::Notification(batch) => read += batch.len() as u64,
                other => panic!("the big queue dropped or reconnected: {other:?}"),
            }
            assert_balanced(&reader.stats());
            while let Ok(Some(_)) = small.try_next_event() {
                assert_balanced(&small.stats());
            }
        }
    })
    .await;
    within("the publisher", publisher).await.unwrap();
    done.store(true, Ordering::SeqCst);
    let (snapshots, stuck) = within("the observer", observer).await.unwrap();
    within("the churn", churn).await.unwrap();
    assert!(snapshots > 0);

    let stats = reader.stats();
    assert_eq!(
        (stats.received, stats.delivered, stats.dropped, stats.queued),
        (total, total, 0, 0)
    );
    let stuck_stats = stuck.stats();
    assert_balanced(&stuck_stats);
    assert_eq!(
        (
            stuck_stats.received,
            stuck_stats.queued,
            stuck_stats.dropped
        ),
        (total, 8, total - 8)
    );
    let hub_stats = hub.stats();
    assert_hub_balanced(&hub_stats);
    assert!(hub_stats.routed >= total, "{hub_stats:?}");
    assert_eq!(hub_stats.hook_panics, 0);
}

// ---- handlers -----------------------------------------------------------------

#[derive(Default)]
struct HandlerHooks(Mutex<Vec<String>>);

impl ListenerHooks for HandlerHooks {
    fn on_handler_error(&self, _channel: &str, error: &(dyn std::error::Error + Send + Sync)) {
        self.0.lock().unwrap().push(format!("error {error}"));
    }
    fn on_handler_panic(&self, _channel: &str) {
        self.0.lock().unwrap().push("panic".into());
    }
}

#[tokio::test]
async fn a_panic_before_the_handler_returns_its_future_is_contained_like_one_inside_it() {
    let channel = unique("sync_panic");
    let hooks = Arc::new(HandlerHooks::default());
    let hub = hooked_hub(&unique("sync_panic_app"), hooks.clone()).await;
    let handled = Arc::new(Mutex::new(Vec::new()));
    let seen = handled.clone();
    let guard = hub
        .on(&channel, move |n: PgNotification| {
            if n.payload == "panic now" {
                panic!("a handler panic before its future (expected by the test)");
            }
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(n.payload);
                Ok::<(), std::io::Error>(())
            }
        })
        .await
        .unwrap();
    let client = raw_client(&url()).await;
    for payload in ["before", "panic now", "after"] {
        send(&client, &channel, payload).await;
    }
    eventually("the call after the panic", || async {
        guard.stats().succeeded == 2
    })
    .await;
    assert_eq!(guard.stats().panicked, 1);
    assert_eq!(*handled.lock().unwrap(), ["before", "after"]);
    assert_eq!(*hooks.0.lock().unwrap(), ["panic"]);
    assert_eq!(hub.stats().hook_panics, 0);
}

/// Notifications as payloads, markers as `L<n>` / `R<n>`.
fn describe(event: &ListenerEvent) -> String {
    match event {
        ListenerEvent::Notification(n) => n.payload.clone(),
        ListenerEvent::Lagged { dropped } => format!("L{dropped}"),
        ListenerEvent::Reconnected { generation } => format!("R{generation}"),
        other => format!("{other:?}"),
    }
}

#[tokio::test]
async fn a_handler_on_events_is_called_at_gaps_in_order_contained_and_counted() {
    let channel = unique("gap_handler");
    let name = unique("gap_handler_app");
    let hooks = Arc::new(HandlerHooks::default());
    let hub = hooked_hub(&name, hooks.clone()).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(Semaphore::new(0));
    let (record, wait) = (seen.clone(), gate.clone());
    let guard = hub
        .on_events(
            &channel,
            HandlerOptions::new().queue(2, QueuePolicy::DropOldest),
            move |event: ListenerEvent| {
                let (seen, gate) = (record.clone(), wait.clone());
                async move {
                    let described = describe(&event);
                    seen.lock().unwrap().push(described.clone());
                    match event {
                        ListenerEvent::Notification(n) if n.payload == "block" => {
                            let _ = gate.acquire().await.unwrap();
                            Ok(())
                        }
                        ListenerEvent::Lagged { .. } => {
                            panic!("a gap call panic (expected by the test)")
                        }
                        ListenerEvent::Reconnected { .. } => Err(format!("resync {described}")),
                        _ => Ok(()),
                    }
                }
            },
        )
        .await
        .unwrap();
    let admin = raw_client(&url()).await;
    send(&admin, &channel, "block").await;
    eventually("the blocking call", || async {
        seen.lock().unwrap().len() == 1
    })
    .await;
    admin
        .execute(
            "SELECT pg_notify($1, n::text) FROM generate_series(1, 10) AS n",
            &[&channel],
        )
        .await
        .unwrap();
    eventually("the queue to drop", || async { guard.stats().dropped > 0 }).await;
    gate.add_permits(1);
    eventually("the last notification", || async {
        seen.lock().unwrap().last().map(String::as_str) == Some("10")
    })
    .await;

    let mut reconnects = hub.reconnects();
    terminate_backends(&admin, &name).await;
    within("the reconnect", reconnects.changed()).await.unwrap();
    send(&admin, &channel, "after").await;
    eventually("the call after the reconnect", || async {
        seen.lock().unwrap().last().map(String::as_str) == Some("after")
    })
    .await;

    let seen = seen.lock().unwrap().clone();
    // "block", then 1..=10 with one gap where the queue dropped, then the
    // reconnect and "after".
    let stats = guard.stats();
    let gaps: Vec<u64> = seen
        .iter()
        .filter_map(|e| e.strip_prefix('L'))
        .map(|dropped| dropped.parse().unwrap())
        .collect();
    assert!(!gaps.is_empty(), "no gap call in {seen:?}");
    assert_eq!(gaps.iter().sum::<u64>(), stats.dropped, "{seen:?}");
    let numbers: Vec<u64> = seen[1..seen.len() - 2]
        .iter()
        .filter(|e| !e.starts_with('L'))
        .map(|e| e.parse().unwrap())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "in order: {seen:?}"
    );
    assert_eq!(numbers.len() as u64 + stats.dropped, 10, "{seen:?}");
    assert_eq!(&seen[seen.len() - 2..], ["R1", "after"]);
    // Every gap call panicked, the reconnect call failed: all contained.
    assert_eq!(
        (stats.panicked, stats.failed, stats.reconnects),
        (gaps.len() as u64, 1, 1),
        "{stats:?}"
    );
    assert_eq!(stats.succeeded, 1 + numbers.len() as u64 + 1);
    let hook_events = hooks.0.lock().unwrap().clone();
    let mut expected = vec!["panic"; gaps.len()];
    expected.push("error resync R1");
    assert_eq!(hook_events, expected);
}

/// Sets its flag when dropped: a call future that is cancelled drops it.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn shutdown_waits_for_running_calls() {
    let channel = unique("shutdown_wait");
    let hub = hooked_hub(&unique("shutdown_wait_app"), NoHooks).await;
    let started = Arc::new(Semaphore::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (on_start, wait) = (started.clone(), gate.clone());
    let guard = hub
        .on(&channel, move |_n| {
            let (on_start, gate) = (on_start.clone(), wait.clone());
            async move {
                on_start.add_permits(1);
                let _ = gate.acquire().await.unwrap();
                Ok::<(), std::io::Error>(())
            }
        })
        .await
        .unwrap();
    send(&raw_client(&url()).await, &channel, "work").await;
    within("the call to start", started.acquire())
        .await
        .unwrap()
        .forget();

    let shutdown = tokio::spawn({
        let hub = hub.clone();
        async move { hub.shutdown(HANG).await }
    });
    eventually("the hub to close", || async {
        hub.state() == ListenerState::Closed
    })
    .await;
    // The call is still held at the gate: the shutdown cannot be over.
    tokio::task::yield_now().await;
    assert!(
        !shutdown.is_finished(),
        "shutdown returned under a running call"
    );
    assert_eq!(guard.stats().succeeded, 0);
    gate.add_permits(1);
    within("the shutdown", shutdown).await.unwrap().unwrap();
    assert_eq!(
        guard.stats().succeeded,
        1,
        "the call finished, not cancelled"
    );
    assert!(matches!(
        hub.subscribe(&channel).await,
        Err(OrmError::Closed { .. })
    ));
}

#[tokio::test]
async fn shutdown_cancels_calls_still_running_at_the_deadline_and_says_so() {
    let channel = unique("shutdown_cancel");
    let hub = hooked_hub(&unique("shutdown_cancel_app"), NoHooks).await;
    let cancelled = Arc::new(AtomicBool::new(false));
    let started = Arc::new(Semaphore::new(0));
    let (flag, on_start) = (cancelled.clone(), started.clone());
    let guard = hub
        .on(&channel, move |_n| {
            let (flag, on_start) = (DropFlag(flag.clone()), on_start.clone());
            async move {
                let _flag = flag;
                on_start.add_permits(1);
                std::future::pending::<()>().await;
                Ok::<(), std::io::Error>(())
            }
        })
        .await
        .unwrap();
    send(&raw_client(&url()).await, &channel, "forever").await;
    within("the call to start", started.acquire())
        .await
        .unwrap()
        .forget();

    let error = within("the shutdown", hub.shutdown(Duration::from_millis(100)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            OrmError::Timeout {
                operation: "hub shutdown",
                ..
            }
        ),
        "{error:?}"
    );
    eventually("the call to be cancelled", || async {
        cancelled.load(Ordering::SeqCst)
    })
    .await;
    let stats = guard.stats();
    assert_eq!((stats.succeeded, stats.timed_out), (0, 0), "{stats:?}");
}

#[tokio::test]
async fn dropping_the_last_hub_clone_closes_the_connection_and_lets_running_calls_finish() {
    let channel = unique("dropped_hub");
    let name = unique("dropped_hub_app");
    let hub = hooked_hub(&name, NoHooks).await;
    let started = Arc::new(Semaphore::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (on_start, wait) = (started.clone(), gate.clone());
    let guard = hub
        .on(&channel, move |_n| {
            let (on_start, gate) = (on_start.clone(), wait.clone());
            async move {
                on_start.add_permits(1);
                let _ = gate.acquire().await.unwrap();
                Ok::<(), std::io::Error>(())
            }
        })
        .await
        .unwrap();
    let mut subscription = hub.subscribe(&channel).await.unwrap();
    let admin = raw_client(&url()).await;
    send(&admin, &channel, "work").await;
    within("the call to start", started.acquire())
        .await
        .unwrap()
        .forget();
    assert_eq!(next_of(&mut subscription).await.payload, "work");

    drop(hub);
    // The connection closes although a handler is registered and running,
    // and subscriptions end.
    eventually("the hub's connection to close", || async {
        backends_named(&admin, &name).await.is_empty()
    })
    .await;
    assert!(within("the subscription's end", subscription.next())
        .await
        .is_none());
    let stats = subscription.stats();
    assert_balanced(&stats);
    assert_eq!((stats.received, stats.delivered), (1, 1));
    // The running call was not cancelled: it finishes once released, and
    // the guard's counters stay readable.
    assert_eq!(guard.stats().succeeded, 0);
    gate.add_permits(1);
    eventually("the running call to finish", || async {
        guard.stats().succeeded == 1
    })
    .await;
    drop(guard);
}
