//! Regressions found by a second hostile review, of the hub and its
//! handlers: each test failed against the code as reviewed and passes since
//! the fix (or, where the fix was to the docs, checks what they now say).
//! Every wait is bounded.

mod support;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgorm::listen::{HandlerOptions, ListenerEvent, PgListenerConfig, PgNotifyHub};
use support::*;

fn url() -> String {
    TestServer::shared().url()
}

async fn named_hub(name: &str) -> PgNotifyHub {
    let config = PgListenerConfig::new()
        .application_name(name)
        .backoff(Duration::from_millis(20), Duration::from_millis(200));
    within(
        "the hub connects",
        PgNotifyHub::connect_with(&url(), config),
    )
    .await
    .expect("hub")
}

/// R2-1. Two clones of a hub close it at the same time (a signal handler and
/// a `shutdown` from elsewhere, or a `close()` retried after a cancelled
/// one). The hub closes normally, yet the second caller is told that "the
/// listener's background task ended abnormally": its `Close` command sits in
/// the command channel behind the first, the driver never reads it, and its
/// reply sender is dropped with the channel, which `close()` maps to
/// `ended_abnormally()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_close_from_two_clones_reports_ok_to_both() {
    for round in 0..5 {
        let hub = named_hub(&unique("review2_close")).await;
        let mut subscription = hub.subscribe(&unique("review2_close_ch")).await.unwrap();
        let other = hub.clone();
        let (first, second) = within("two concurrent closes", async {
            tokio::join!(hub.close(), other.close())
        })
        .await;
        // The subscription ended cleanly: the hub was closed, not broken.
        let end = within("the subscription's end", subscription.next()).await;
        assert!(
            end.is_none(),
            "round {round}: a clean close ends with None: {end:?}"
        );
        assert!(
            first.is_ok() && second.is_ok(),
            "round {round}: a normal close reported to one caller as an abnormal end: \
             first={first:?} second={second:?}"
        );
    }
}

/// R2-1b. Same root cause through `shutdown`: two concurrent shutdowns of a
/// hub whose handlers finish at once; one of them returns the bogus
/// "ended abnormally" error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_shutdowns_report_ok_to_both() {
    for round in 0..5 {
        let hub = named_hub(&unique("review2_shutdown")).await;
        let _guard = hub
            .on(&unique("review2_shutdown_ch"), |_n| async {
                Ok::<(), std::io::Error>(())
            })
            .await
            .unwrap();
        let other = hub.clone();
        let (first, second) = within("two concurrent shutdowns", async {
            tokio::join!(
                hub.shutdown(Duration::from_secs(5)),
                other.shutdown(Duration::from_secs(5))
            )
        })
        .await;
        assert!(
            first.is_ok() && second.is_ok(),
            "round {round}: first={first:?} second={second:?}"
        );
    }
}

/// R2-2. `shutdown(timeout)` cancels a handler call that overran the
/// deadline, and that call is counted nowhere: `HandlerStats` says the
/// handler made no call at all (succeeded + failed + panicked + timed_out
/// == 0), although one ran for the whole shutdown and was killed. The
/// dispatcher records a cancelled join as nothing (`Err(_cancelled) => {}`),
/// and anyway it is the dispatcher itself that is aborted, so its JoinSet is
/// dropped without being drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cancelled_by_shutdown_is_counted() {
    let hub = named_hub(&unique("review2_cancel")).await;
    let channel = unique("review2_cancel_ch");
    let started = Arc::new(AtomicUsize::new(0));
    let seen = started.clone();
    let guard = hub
        .on_with(
            &channel,
            HandlerOptions::new().timeout(Duration::from_secs(600)),
            move |_n| {
                let seen = seen.clone();
                async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(600)).await;
                    Ok::<(), std::io::Error>(())
                }
            },
        )
        .await
        .unwrap();
    let admin = raw_client(&url()).await;
    send(&admin, &channel, "slow").await;
    eventually("the call started", || {
        let started = started.clone();
        async move { started.load(Ordering::SeqCst) == 1 }
    })
    .await;
    let result = within(
        "shutdown with a short timeout",
        hub.shutdown(Duration::from_millis(200)),
    )
    .await;
    assert!(
        matches!(result, Err(pgorm::OrmError::Timeout { .. })),
        "{result:?}"
    );
    let stats = guard.stats();
    let accounted =
        stats.succeeded + stats.failed + stats.panicked + stats.timed_out + stats.cancelled;
    assert_eq!(
        accounted, 1,
        "one call ran and was cancelled by shutdown, but HandlerStats accounts for {accounted}: {stats:?}"
    );
    assert_eq!(stats.cancelled, 1, "{stats:?}");
}

/// R2-3. While an `on_events` handler is busy, queued `Reconnected` markers
/// merge into the newest, so a handler that lived through three reconnects
/// can be called for fewer. The review found the docs promising "reconnects
/// seen"; they now say markers, and this checks what they say: the handler
/// counts exactly the markers it was called for, and the last one carries
/// the hub's newest generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_counts_the_reconnected_markers_it_is_called_for() {
    let name = unique("review2_merge");
    let hub = named_hub(&name).await;
    let channel = unique("review2_merge_ch");
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let markers = Arc::new(AtomicU64::new(0));
    let newest = Arc::new(AtomicU64::new(0));
    let (gate2, markers2, newest2) = (gate.clone(), markers.clone(), newest.clone());
    let guard = hub
        .on_events(
            &channel,
            HandlerOptions::new().timeout(Duration::from_secs(600)),
            move |event| {
                let (gate, markers, newest) = (gate2.clone(), markers2.clone(), newest2.clone());
                async move {
                    match event {
                        ListenerEvent::Notification(_) => {
                            // The first call waits until the test opens the gate.
                            let _ = gate.acquire().await.map(|permit| permit.forget());
                        }
                        ListenerEvent::Reconnected { generation } => {
                            markers.fetch_add(1, Ordering::SeqCst);
                            newest.store(generation, Ordering::SeqCst);
                        }
                        _ => {}
                    }
                    Ok::<(), std::io::Error>(())
                }
            },
        )
        .await
        .unwrap();
    let admin = raw_client(&url()).await;
    send(&admin, &channel, "block").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut generation = hub.reconnects();
    for expected in 1..=3u64 {
        terminate_backends(&admin, &name).await;
        within(
            "the hub reconnects",
            generation.wait_for(|g| *g >= expected),
        )
        .await
        .expect("reconnect watch");
    }
    gate.add_permits(100);
    send(&admin, &channel, "after").await;
    eventually("the handler caught up", || {
        let stats = guard.stats();
        async move { stats.succeeded >= 2 + stats.reconnects }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let hub_reconnects = hub.stats().reconnects;
    let stats = guard.stats();
    assert_eq!(hub_reconnects, 3);
    let called = markers.load(Ordering::SeqCst);
    assert_eq!(stats.reconnects, called, "{stats:?}");
    assert!((1..=3).contains(&called), "{stats:?}");
    assert_eq!(newest.load(Ordering::SeqCst), 3, "the newest generation");
}

/// R2-5. The review found `ChannelStats` promising totals "over every
/// subscription the channel has had", while the counters go with the
/// channel's last subscription. The docs now say the counters cover the
/// current run of subscriptions; this checks that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_totals_start_again_with_a_new_run_of_subscriptions() {
    let hub = named_hub(&unique("review2_totals")).await;
    let channel = unique("review2_totals_ch");
    let admin = raw_client(&url()).await;
    let mut first = hub.subscribe(&channel).await.unwrap();
    send(&admin, &channel, "one").await;
    let got = within("the first notification", first.next()).await;
    assert_eq!(got.unwrap().unwrap().payload, "one");
    drop(first);
    let mut second = hub.subscribe(&channel).await.unwrap();
    send(&admin, &channel, "two").await;
    let got = within("the second notification", second.next()).await;
    assert_eq!(got.unwrap().unwrap().payload, "two");
    let stats = hub.stats();
    let totals = stats
        .channels
        .iter()
        .find(|c| c.channel == channel)
        .expect("the channel's stats");
    assert_eq!((totals.received, totals.delivered), (1, 1), "{totals:?}");
}

/// R2-6. A panic in `on_notification` is contained around the whole read,
/// not around each call: `Driver::tell_hooks` runs the loop over every
/// notification of one read inside one `HookSlot::call`, so one panicking
/// call silently skips the hook for every later notification of that read
/// (they are still delivered). `hook_panics` says 1; the hook missed more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_on_notification_skips_only_its_own_call() {
    struct Hooks(Arc<std::sync::Mutex<Vec<String>>>);
    impl pgorm::listen::ListenerHooks for Hooks {
        fn on_notification(&self, notification: &pgorm::listen::PgNotification) {
            if notification.payload == "boom" {
                panic!("a hook that panics on one payload");
            }
            self.0.lock().unwrap().push(notification.payload.clone());
        }
    }
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let config = PgListenerConfig::new()
        .application_name(unique("review2_hookloop"))
        .hooks(Hooks(seen.clone()));
    let hub = within(
        "the hub connects",
        PgNotifyHub::connect_with(&url(), config),
    )
    .await
    .expect("hub");
    let channel = unique("review2_hookloop_ch");
    let mut subscription = hub.subscribe(&channel).await.unwrap();
    let client = pgorm::PgClient::connect(&url()).await.unwrap();
    // One transaction: the three arrive together and are read in one go.
    pgorm::listen::notify_batch(
        &client,
        [(&*channel, "a"), (&*channel, "boom"), (&*channel, "c")],
    )
    .await
    .unwrap();
    for expected in ["a", "boom", "c"] {
        let got = within("a notification", subscription.next()).await;
        assert_eq!(got.unwrap().unwrap().payload, expected);
    }
    assert_eq!(hub.stats().hook_panics, 1);
    assert_eq!(
        *seen.lock().unwrap(),
        ["a", "c"],
        "only the panicking call should be lost to the hook"
    );
}
