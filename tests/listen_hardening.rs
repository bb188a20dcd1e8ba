//! PgListener against what a review tried as a demanding user: hooks that
//! panic, a runtime that goes away under the listener, settings from the
//! URL, counters under load, reconnects that stall, a `BlockProducer`
//! consumer that changes its channels, backends left behind by a dead path,
//! the `on_connect` callback, a first connect that waits for its server, and
//! the control handle.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgorm::listen::{
    ListenerEvent, ListenerHooks, ListenerSession, ListenerState, ListenerStats, PgListener,
    PgListenerConfig, PgNotification, QueuePolicy,
};
use pgorm::OrmError;
use support::*;

fn fast_reconnect(name: &str) -> PgListenerConfig {
    PgListenerConfig::new()
        .application_name(name)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect_timeout(Duration::from_secs(2))
}

fn assert_balanced(stats: &ListenerStats) {
    assert_eq!(
        stats.received,
        stats.delivered + stats.queued as u64 + stats.dropped,
        "received == delivered + queued + dropped: {stats:?}"
    );
}

struct PanickingHooks;

impl ListenerHooks for PanickingHooks {
    fn on_notification(&self, notification: &PgNotification) {
        panic!("a hook that fails on {:?}", notification.payload);
    }
}

#[tokio::test]
async fn a_panicking_hook_is_contained_and_counted() {
    let channel = unique("panicking_hook");
    let config = PgListenerConfig::new()
        .channels([channel.as_str()])
        .hooks(PanickingHooks);
    let mut listener = PgListener::connect_with(&TestServer::shared().url(), config)
        .await
        .unwrap();
    let admin = raw_client(&TestServer::shared().url()).await;
    send(&admin, &channel, "one").await;
    send(&admin, &channel, "two").await;
    assert_eq!(next_notification(&mut listener).await.payload, "one");
    assert_eq!(next_notification(&mut listener).await.payload, "two");
    let stats = listener.stats();
    assert_eq!(stats.hook_panics, 2, "{stats:?}");
    assert_eq!(listener.state(), ListenerState::Connected);
    within("close", listener.close()).await.unwrap();
}

#[tokio::test]
async fn a_listener_whose_runtime_shuts_down_ends_its_stream_with_an_error() {
    let url = TestServer::shared().url();
    let channel = unique("orphaned");
    // The driver task lives on a runtime of its own, which then goes away
    // (as a runtime that panicked or was shut down would).
    let listener = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(PgListener::connect_with(
                &url,
                PgListenerConfig::new().channels([channel]),
            ))
            .unwrap();
        drop(runtime);
        listener
    })
    .join()
    .unwrap();
    let mut listener = listener;
    assert_eq!(listener.state(), ListenerState::Closed);
    let ended = within("the end of the stream", listener.next_event()).await;
    assert!(
        matches!(ended, Some(Err(OrmError::Closed { .. }))),
        "{ended:?}"
    );
    assert!(within("the end", listener.next_event()).await.is_none());
    let closed = within("close", listener.close()).await;
    assert!(matches!(closed, Err(OrmError::Closed { .. })), "{closed:?}");
}

#[tokio::test]
async fn the_urls_application_name_stands_unless_the_config_sets_one() {
    let server = TestServer::shared();
    let admin = raw_client(&server.url()).await;
    let from_url = unique("from_url");
    let url = format!("{}?application_name={from_url}", server.url());

    let listener = PgListener::connect(&url).await.unwrap();
    assert_eq!(backends_named(&admin, &from_url).await.len(), 1);
    listener.close().await.unwrap();

    let from_config = unique("from_config");
    let config = PgListenerConfig::new().application_name(&from_config);
    let listener = PgListener::connect_with(&url, config).await.unwrap();
    assert_eq!(backends_named(&admin, &from_config).await.len(), 1);
    assert!(backends_named(&admin, &from_url).await.is_empty());
    listener.close().await.unwrap();
}

#[derive(Default)]
struct CountingHooks {
    notifications: AtomicU64,
}

impl ListenerHooks for CountingHooks {
    fn on_notification(&self, _: &PgNotification) {
        self.notifications.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_read_while_a_reconnect_listens_are_counted_and_seen_by_hooks() {
    let server = TestServer::shared();
    let name = unique("counted");
    let channel = unique("counted_channel");
    let hooks = Arc::new(CountingHooks::default());
    let config = fast_reconnect(&name)
        .channels([channel.as_str()])
        .hooks(hooks.clone());
    let mut listener = PgListener::connect_with(&server.url(), config)
        .await
        .unwrap();
    let admin = raw_client(&server.url()).await;

    // A publisher that never pauses, so that notifications arrive while
    // each new session's LISTEN is on its way back.
    let publisher = {
        let channel = channel.clone();
        let url = server.url();
        tokio::spawn(async move {
            let client = raw_client(&url).await;
            for round in 0..200 {
                send_numbered(&client, &channel, round * 20, 20).await;
            }
        })
    };
    for _ in 0..5 {
        terminate_backends(&admin, &name).await;
        eventually("the reconnect", || async {
            listener.state() == ListenerState::Connected
        })
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_balanced(&listener.stats());
    }
    within("the publisher", publisher).await.unwrap();
    // The last kill may still be on its way: "end" is sent until it
    // arrives, since a notification sent while disconnected is lost.
    let ender = {
        let channel = channel.clone();
        let url = server.url();
        tokio::spawn(async move {
            let client = raw_client(&url).await;
            loop {
                send(&client, &channel, "end").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    loop {
        let event = next_event(&mut listener).await;
        assert_balanced(&listener.stats());
        if matches!(&event, ListenerEvent::Notification(n) if n.payload == "end") {
            break;
        }
    }
    ender.abort();
    let _ = ender.await;
    // Closed, nothing more is read: the hook's count and the listener's
    // are final.
    let handle = listener.handle();
    within("close", listener.close()).await.unwrap();
    let stats = handle.stats();
    assert_balanced(&stats);
    assert_eq!(
        hooks.notifications.load(Ordering::Relaxed),
        stats.received,
        "every notification taken in was seen by the hook: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counters_balance_in_every_snapshot_while_notifications_flood_in() {
    for policy in [QueuePolicy::DropOldest, QueuePolicy::DropNewest] {
        let channel = unique("balanced");
        let config = PgListenerConfig::new()
            .channels([channel.as_str()])
            .queue_capacity(50)
            .queue_policy(policy);
        let mut listener = PgListener::connect_with(&TestServer::shared().url(), config)
            .await
            .unwrap();
        let handle = listener.handle();
        let watcher = tokio::spawn(async move {
            let mut snapshots = 0u64;
            while handle.state() == ListenerState::Connected {
                let stats = handle.stats();
                assert_balanced(&stats);
                snapshots += 1;
                tokio::task::yield_now().await;
            }
            snapshots
        });
        let admin = raw_client(&TestServer::shared().url()).await;
        for round in 0..20 {
            send_numbered(&admin, &channel, round * 100, 100).await;
            // Read a little: the queue overflows, and the consumer's batch
            // holds some.
            for _ in 0..10 {
                next_event(&mut listener).await;
                assert_balanced(&listener.stats());
            }
        }
        let stats = listener.stats();
        assert!(stats.dropped > 0, "{policy:?} {stats:?}");
        within("close", listener.close()).await.unwrap();
        let snapshots = within("the watcher", watcher).await.unwrap();
        assert!(snapshots > 0);
    }
}

#[tokio::test]
async fn close_works_while_a_reconnect_is_stuck_in_its_on_connect() {
    let server = TestServer::shared();
    let name = unique("stuck_reconnect");
    let config = fast_reconnect(&name)
        .connect_timeout(Duration::from_secs(30))
        .on_connect(|session: ListenerSession| async move {
            if session.generation() > 0 {
                // A dead path right when the reconnect catches up.
                std::future::pending::<()>().await;
            }
            Ok::<_, OrmError>(())
        });
    let listener = PgListener::connect_with(&server.url(), config)
        .await
        .unwrap();
    let admin = raw_client(&server.url()).await;
    terminate_backends(&admin, &name).await;
    eventually("the reconnect to start", || async {
        listener.state() == ListenerState::Reconnecting
            && backends_named(&admin, &name).await.len() == 1
    })
    .await;
    within("close during a stuck reconnect", listener.close())
        .await
        .unwrap();
    eventually("the new backend to go", || async {
        backends_named(&admin, &name).await.is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_block_producer_consumer_can_change_channels_while_its_queue_is_full() {
    let channel = unique("full_block");
    let other = unique("full_block_other");
    let capacity = 10;
    let config = PgListenerConfig::new()
        .channels([channel.as_str()])
        .queue_capacity(capacity)
        .queue_policy(QueuePolicy::BlockProducer)
        .block_timeout(Duration::from_secs(300));
    let mut listener = PgListener::connect_with(&TestServer::shared().url(), config)
        .await
        .unwrap();
    let admin = raw_client(&TestServer::shared().url()).await;
    send_numbered(&admin, &channel, 0, 1000).await;
    eventually("the queue to fill", || async {
        listener.stats().queued == capacity
    })
    .await;

    // The consumer itself changes its channels while its queue is full.
    within("listen on a blocked listener", listener.listen(&other))
        .await
        .unwrap();
    within("unlisten on a blocked listener", listener.unlisten(&other))
        .await
        .unwrap();
    for expected in 0..1000 {
        let notification = next_notification(&mut listener).await;
        assert_eq!(notification.payload, expected.to_string());
    }
    let stats = listener.stats();
    assert_eq!(
        (stats.received, stats.delivered, stats.dropped),
        (1000, 1000, 0)
    );
}

#[tokio::test]
async fn a_backend_left_behind_by_a_dead_path_is_ended_after_the_reconnect() {
    let server = TestServer::shared();
    let proxy = FaultProxy::start(server.port()).await.unwrap();
    let name = unique("left_behind");
    let channel = unique("left_behind_channel");
    let config = fast_reconnect(&name)
        .channels([channel.as_str()])
        .health_check(Duration::from_millis(100), Duration::from_millis(300));
    let mut listener = PgListener::connect_with(&proxy.url_for(&server.url()), config)
        .await
        .unwrap();
    let admin = raw_client(&server.url()).await;
    let old = backends_named(&admin, &name).await;
    assert_eq!(old.len(), 1);

    // The path dies without a FIN: the server keeps the old backend.
    proxy.sever_open_connections();
    assert!(matches!(
        next_event(&mut listener).await,
        ListenerEvent::Reconnected { .. }
    ));
    eventually("the old backend to be ended", || async {
        let now = backends_named(&admin, &name).await;
        now.len() == 1 && now != old
    })
    .await;
    send(&admin, &channel, "after").await;
    assert_eq!(next_notification(&mut listener).await.payload, "after");
}

#[tokio::test]
async fn on_connect_runs_on_every_session_before_its_notifications() {
    let server = TestServer::shared();
    let name = unique("on_connect");
    let channel = unique("on_connect_channel");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let config = {
        let seen = seen.clone();
        let channel = channel.clone();
        let url = server.url();
        fast_reconnect(&name)
            .channels([channel.as_str()])
            .on_connect(move |session: ListenerSession| {
                let seen = seen.clone();
                let channel = channel.clone();
                let url = url.clone();
                async move {
                    // The session listens already: what is committed now
                    // arrives, after the callback.
                    let listening: Vec<String> = session
                        .client()
                        .query("SELECT pg_listening_channels()", &[])
                        .await?
                        .iter()
                        .map(|row| row.get(0))
                        .collect();
                    let publisher = raw_client(&url).await;
                    let payload = format!("during {}", session.generation());
                    send(&publisher, &channel, &payload).await;
                    seen.lock().unwrap().push((session.generation(), listening));
                    Ok::<_, tokio_postgres::Error>(())
                }
            })
    };
    let mut listener = PgListener::connect_with(&server.url(), config)
        .await
        .unwrap();
    assert_eq!(next_notification(&mut listener).await.payload, "during 0");
    let admin = raw_client(&server.url()).await;
    terminate_backends(&admin, &name).await;
    assert_eq!(
        next_event(&mut listener).await,
        ListenerEvent::Reconnected { generation: 1 }
    );
    assert_eq!(next_notification(&mut listener).await.payload, "during 1");
    assert_eq!(
        *seen.lock().unwrap(),
        [(0, vec![channel.clone()]), (1, vec![channel.clone()])]
    );
    let stats = listener.stats();
    assert_eq!(stats.received, 2);
    assert_balanced(&stats);
}

#[tokio::test]
async fn a_failing_on_connect_fails_the_first_connect_with_its_error() {
    let config = PgListenerConfig::new().on_connect(|_: ListenerSession| async {
        Err::<(), _>(std::io::Error::other("cannot load the cache"))
    });
    let error = PgListener::connect_with(&TestServer::shared().url(), config)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            OrmError::Callback {
                callback: "on_connect",
                ..
            }
        ),
        "{error:?}"
    );
    let config = PgListenerConfig::new().on_connect(|_: ListenerSession| async {
        if true {
            panic!("a callback that panics");
        }
        Ok::<(), OrmError>(())
    });
    let error = PgListener::connect_with(&TestServer::shared().url(), config)
        .await
        .unwrap_err();
    assert!(matches!(&error, OrmError::Callback { .. }), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_connect_can_wait_for_a_server_that_is_not_up_yet() {
    let server = TestServer::spawn().unwrap();
    server.stop().unwrap();
    let channel = unique("late_server");
    let without_retry = PgListener::connect_with(&server.url(), PgListenerConfig::new()).await;
    assert!(without_retry.is_err());

    let config = PgListenerConfig::new()
        .channels([channel.as_str()])
        .retry_first_connect(true)
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .connect_timeout(Duration::from_secs(2));
    let url = server.url();
    let connecting = tokio::spawn(async move { PgListener::connect_with(&url, config).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!connecting.is_finished(), "still retrying");
    server.start().unwrap();
    let mut listener = within("the first connect", connecting)
        .await
        .unwrap()
        .unwrap();
    let admin = raw_client(&server.url()).await;
    send(&admin, &channel, "late").await;
    assert_eq!(next_notification(&mut listener).await.payload, "late");

    let config = PgListenerConfig::new()
        .retry_first_connect(true)
        .max_reconnect_attempts(Some(2))
        .backoff(Duration::from_millis(10), Duration::from_millis(20));
    server.stop().unwrap();
    let error = within("giving up", PgListener::connect_with(&server.url(), config))
        .await
        .unwrap_err();
    assert!(
        matches!(error, OrmError::Disconnected { attempts: 2, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_handle_changes_channels_from_another_task_while_one_receives() {
    let channel = unique("handled");
    let mut listener = PgListener::connect(&TestServer::shared().url())
        .await
        .unwrap();
    let handle = listener.handle();
    let admin = raw_client(&TestServer::shared().url()).await;
    let receiver = tokio::spawn(async move {
        let notification = next_notification(&mut listener).await;
        (listener, notification)
    });
    within("listen from a handle", handle.listen(&channel))
        .await
        .unwrap();
    assert_eq!(handle.channels(), [channel.as_str()]);
    send(&admin, &channel, "via handle").await;
    let (listener, notification) = within("the receiver", receiver).await.unwrap();
    assert_eq!(notification.payload, "via handle");
    assert_eq!(handle.stats().delivered, 1);

    drop(listener);
    eventually("the handle to see the end", || async {
        handle.state() == ListenerState::Closed
    })
    .await;
    assert!(matches!(
        handle.listen(&channel).await,
        Err(OrmError::Closed { .. })
    ));
}

#[tokio::test]
async fn listen_and_unlisten_sent_together_reach_the_server_in_order() {
    let listener = PgListener::connect(&TestServer::shared().url())
        .await
        .unwrap();
    let channel = unique("ordered");
    for _ in 0..50 {
        let (listened, unlistened) =
            tokio::join!(listener.listen(&channel), listener.unlisten(&channel));
        listened.unwrap();
        unlistened.unwrap();
        assert!(listener.channels().is_empty());
        assert!(listener.server_channels().await.unwrap().is_empty());
        let (unlistened, listened) =
            tokio::join!(listener.unlisten(&channel), listener.listen(&channel));
        listened.unwrap();
        unlistened.unwrap();
        assert_eq!(
            listener.server_channels().await.unwrap(),
            [channel.as_str()]
        );
    }
}

#[derive(Default)]
struct DropHooks {
    dropped: AtomicU64,
}

impl ListenerHooks for DropHooks {
    fn on_drop(&self, _channel: Option<&str>, dropped: u64) {
        self.dropped.fetch_add(dropped, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn drops_made_when_a_blocked_listener_closes_reach_the_hooks() {
    let channel = unique("closing_blocked");
    let hooks = Arc::new(DropHooks::default());
    let config = PgListenerConfig::new()
        .channels([channel.as_str()])
        .queue_capacity(10)
        .queue_policy(QueuePolicy::BlockProducer)
        .block_timeout(Duration::from_secs(300))
        .hooks(hooks.clone());
    let listener = PgListener::connect_with(&TestServer::shared().url(), config)
        .await
        .unwrap();
    let admin = raw_client(&TestServer::shared().url()).await;
    send_numbered(&admin, &channel, 0, 1000).await;
    eventually("the queue to fill", || async {
        listener.stats().queued == 10
    })
    .await;
    // The listener holds what it read beyond the full queue; closing hands
    // it over, dropping the oldest.
    let handle = listener.handle();
    within("close", listener.close()).await.unwrap();
    let stats = handle.stats();
    assert_balanced(&stats);
    assert!(stats.dropped > 0, "{stats:?}");
    assert_eq!(hooks.dropped.load(Ordering::Relaxed), stats.dropped);
}
