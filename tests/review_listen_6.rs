//! Review 6 of the listen changes 7ffc3b0..1a941fd (spares, one-at-a-time
//! reads, futures instead of async fns, the 32-byte lifted notification,
//! the driver's deferred wake-up). Each test failed against main as
//! reviewed. Every wait is bounded by a generous hang deadline; nothing
//! passes or fails on timing otherwise.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgorm::listen::{ListenerEvent, PgListenerConfig, PgNotifyHub, QueuePolicy};
use support::*;

fn url() -> String {
    TestServer::shared().url()
}

/// A hub whose health check is far apart (as a quiet deployment might set
/// it), so that only the driver's own wake-ups move it.
async fn quiet_hub(name: &str) -> PgNotifyHub {
    let config = PgListenerConfig::new()
        .application_name(unique(name))
        .health_check(Duration::from_secs(600), Duration::from_secs(5));
    within(
        "the hub connects",
        PgNotifyHub::connect_with(&url(), config),
    )
    .await
    .expect("hub")
}

/// R6-1. The driver now comes back from a wake-up that hit its budget (or a
/// tap read that gave tokio-postgres nothing) with tokio's *deferred* wake
/// (`yield_now`), not `wake_by_ref`. On the multi-thread runtime a deferred
/// waker sits in the thread-local list of the worker that polled the
/// driver, and is only woken when *that* worker parks or runs its
/// maintenance: it is in no run queue, so no other worker can steal it.
/// With `wake_by_ref` the task went to the back of the worker's run queue
/// (tokio's yield path), where an idle worker steals it.
///
/// So a task that the driver itself woke (it lands in the LIFO slot of the
/// driver's worker and runs right after the driver's poll) and that then
/// keeps that worker busy (a synchronous wait, a blocking call, a long
/// computation) freezes the whole hub, though the other worker is idle:
/// no subscriber gets anything, and the socket is not read, until that task
/// returns. Here subscriber X, woken by the driver, waits synchronously for
/// subscriber Y (on the other, idle worker) to receive one more
/// notification than X has seen. Y never does: the driver's wake-up is
/// parked on X's worker. (The health check's timer would eventually rescue
/// it; its interval is set long, as a quiet deployment might.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_does_not_freeze_the_driver_while_another_worker_is_idle() {
    const TOTAL: usize = 60_000;
    let hub = quiet_hub("review6_steal").await;
    let channel = unique("review6_steal_ch");
    // Y first, X second: the router wakes subscribers in order, and the
    // last one woken in a poll takes the LIFO slot of the driver's worker.
    let mut y = hub
        .subscribe_with(&channel, TOTAL * 2, QueuePolicy::DropOldest)
        .await
        .unwrap();
    let mut x = hub
        .subscribe_with(&channel, TOTAL * 2, QueuePolicy::DropOldest)
        .await
        .unwrap();
    let y_seen = Arc::new(AtomicUsize::new(0));

    let y_task = {
        let y_seen = y_seen.clone();
        tokio::spawn(async move {
            while y_seen.load(Ordering::Acquire) < TOTAL {
                match y.next_event().await {
                    Some(Ok(ListenerEvent::Notification(_))) => {
                        y_seen.fetch_add(1, Ordering::AcqRel);
                    }
                    Some(Ok(other)) => panic!("Y: unexpected marker {other:?}"),
                    Some(Err(error)) => panic!("Y: {error}"),
                    None => panic!("Y: the hub ended"),
                }
            }
        })
    };
    let x_task = {
        let y_seen = y_seen.clone();
        tokio::spawn(async move {
            let mut x_seen = 0usize;
            let mut waits = 0usize;
            while x_seen < TOTAL {
                // Wait (asynchronously) to be woken by the driver, then take
                // everything queued.
                match x.next_event().await {
                    Some(Ok(ListenerEvent::Notification(_))) => x_seen += 1,
                    other => return Err(format!("X: unexpected {other:?}")),
                }
                while let Ok(Some(event)) = x.try_next_event() {
                    match event {
                        ListenerEvent::Notification(_) => x_seen += 1,
                        other => return Err(format!("X: unexpected {other:?}")),
                    }
                }
                if x_seen >= TOTAL {
                    break;
                }
                // Synchronous work on this worker until the hub has moved on
                // by one notification (Y runs on the other worker).
                waits += 1;
                let started = Instant::now();
                while y_seen.load(Ordering::Acquire) <= x_seen {
                    if started.elapsed() > HANG {
                        return Err(format!(
                            "the driver made no progress for {HANG:?} while this worker was \
                             busy and the other idle: X saw {x_seen}, Y saw {}, of {TOTAL} \
                             (wait {waits})",
                            y_seen.load(Ordering::Acquire)
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Ok(x_seen)
        })
    };

    let publisher = raw_client(&url()).await;
    send_numbered(&publisher, &channel, 0, TOTAL as i32).await;

    x_finished(x_task).await;
    within("Y receives everything", y_task).await.unwrap();
}

/// R6-2. A notification a hub subscription hands out with `next()` is never
/// the caller's alone any more, even once every batch of it is gone: the
/// spent batch stays in the receiver until the next read, and after that
/// the run gives its `Arc`s to the hub's spares, which hold a strong
/// reference for as long as they keep it. Before, a sole subscriber that
/// read the last notification of a batch held the only reference.
///
/// The handler dispatcher relies on it ("The last subscriber to take a
/// notification owns it; others copy it here", `Arc::unwrap_or_clone` in
/// handler.rs): every notification a handler gets is now a copy (two string
/// allocations), which the recycling was meant to save; `Arc::try_unwrap`
/// and `Arc::get_mut` fail for application code that did the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sole_subscriber_owns_what_it_has_read_past() {
    let hub = within(
        "the hub connects",
        PgNotifyHub::connect_with(
            &url(),
            PgListenerConfig::new().application_name(unique("review6_own")),
        ),
    )
    .await
    .expect("hub");
    let channel = unique("review6_own_ch");
    let mut subscription = hub.subscribe(&channel).await.unwrap();
    let publisher = raw_client(&url()).await;
    send(&publisher, &channel, "one").await;
    let first = within("the notification", subscription.next())
        .await
        .unwrap()
        .unwrap();
    // Read past it: nothing else is queued, and the batch it came in is done.
    assert!(subscription.try_next_event().unwrap().is_none());
    assert_eq!(
        Arc::strong_count(&first),
        1,
        "a notification the only subscriber has read past is still referenced by the hub"
    );
    let owned = Arc::try_unwrap(first).expect("owned without a copy");
    assert_eq!(owned.payload, "one");
}

/// R6-1b. The same without a flood: a tap read that gave tokio-postgres
/// nothing (every read that brings only notifications, which for a listener
/// is nearly every read) ends with the deferred wake-up and no read
/// interest registered on the socket. The notifications of that read are
/// routed in the same poll, so the subscriber woken for them runs next on
/// the driver's worker; if it keeps that worker busy, the hub reads nothing
/// more, here not even a second `NOTIFY` sent a moment later, until it
/// returns, although the other worker is idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_notification_then_a_busy_subscriber_does_not_freeze_the_hub() {
    let hub = quiet_hub("review6_steal1").await;
    let channel = unique("review6_steal1_ch");
    let mut y = hub.subscribe(&channel).await.unwrap();
    let mut x = hub.subscribe(&channel).await.unwrap();
    let y_seen = Arc::new(AtomicUsize::new(0));
    let x_busy = Arc::new(tokio::sync::Notify::new());

    let y_task = {
        let y_seen = y_seen.clone();
        tokio::spawn(async move {
            while y_seen.load(Ordering::Acquire) < 2 {
                match y.next().await {
                    Some(Ok(_)) => {
                        y_seen.fetch_add(1, Ordering::AcqRel);
                    }
                    other => panic!("Y: unexpected {other:?}"),
                }
            }
        })
    };
    let x_task = {
        let (y_seen, x_busy) = (y_seen.clone(), x_busy.clone());
        tokio::spawn(async move {
            let first = x.next().await;
            assert!(matches!(first, Some(Ok(_))), "X: {first:?}");
            // Synchronous work on this worker until Y has the second one.
            x_busy.notify_one();
            let started = Instant::now();
            while y_seen.load(Ordering::Acquire) < 2 {
                if started.elapsed() > HANG {
                    return Err(format!(
                        "the hub delivered nothing for {HANG:?} while one worker was busy \
                         and the other idle (Y saw {})",
                        y_seen.load(Ordering::Acquire)
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        })
    };

    let publisher = raw_client(&url()).await;
    send(&publisher, &channel, "1").await;
    within("X is woken and busy", x_busy.notified()).await;
    send(&publisher, &channel, "2").await;
    x_finished(x_task).await;
    within("Y receives both", y_task).await.unwrap();
}

/// Waits for X's task (bounded), failing the test with the stall it
/// reports, if any.
async fn x_finished<T>(x_task: tokio::task::JoinHandle<Result<T, String>>) {
    let x_result = tokio::time::timeout(HANG * 2, x_task)
        .await
        .expect("X finishes or reports the stall")
        .expect("X's task");
    if let Err(stall) = x_result {
        panic!("{stall}");
    }
}
