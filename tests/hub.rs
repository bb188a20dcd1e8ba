//! Publishing, PgNotifyHub fan-out, typed channels, handlers and hooks
//! against a real server.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgorm::listen::{
    Channel, HandlerOptions, ListenerEvent, ListenerHooks, PgListener, PgListenerConfig,
    PgNotifyHub, QueuePolicy, Subscription, TypedEvent,
};
use pgorm::prelude::*;
use serde::{Deserialize, Serialize};
use support::*;

async fn hub() -> PgNotifyHub {
    PgNotifyHub::connect(&TestServer::shared().url())
        .await
        .expect("hub")
}

/// A hub whose backend is found by `name` and that reconnects quickly.
async fn named_hub(name: &str) -> PgNotifyHub {
    let config = PgListenerConfig::new()
        .application_name(name)
        .backoff(Duration::from_millis(20), Duration::from_millis(200));
    PgNotifyHub::connect_with(&TestServer::shared().url(), config)
        .await
        .expect("hub")
}

async fn client() -> PgClient {
    PgClient::connect(&TestServer::shared().url())
        .await
        .expect("client")
}

async fn next_of(subscription: &mut Subscription) -> Arc<pgorm::PgNotification> {
    within("the next notification", subscription.next())
        .await
        .expect("the subscription ended")
        .expect("the subscription failed")
}

// ---- publishing -----------------------------------------------------------

#[tokio::test]
async fn notify_in_a_transaction_is_delivered_on_commit_and_never_on_rollback() {
    let channel = unique("publish_tx");
    let hub = hub().await;
    let mut subscription = hub.subscribe(&channel).await.unwrap();
    let client = client().await;

    let tx = client.transaction().await.unwrap();
    pgorm::notify(&tx, &channel, "rolled back").await.unwrap();
    tx.rollback().await.unwrap();

    let tx = client.transaction().await.unwrap();
    pgorm::notify(&tx, &channel, "committed").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        subscription.try_next_event().unwrap().is_none(),
        "nothing before commit"
    );
    tx.commit().await.unwrap();

    assert_eq!(next_of(&mut subscription).await.payload, "committed");
    assert!(subscription.try_next_event().unwrap().is_none());
}

#[tokio::test]
async fn payload_limits_are_checked_in_bytes_before_sending() {
    let channel = unique("limits");
    let hub = hub().await;
    let mut subscription = hub.subscribe(&channel).await.unwrap();
    let client = client().await;

    let largest = "a".repeat(7999);
    client.notify(&channel, &largest).await.unwrap();
    assert_eq!(next_of(&mut subscription).await.payload, largest);

    let error = client
        .notify(&channel, &"a".repeat(8000))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            OrmError::Validation(ValidationError::PayloadTooLarge {
                len: 8000,
                limit: 8000
            })
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("8000 bytes"), "{error}");

    // 2700 characters, 8100 bytes.
    let wide = "€".repeat(2700);
    let error = client.notify(&channel, &wide).await.unwrap_err();
    assert!(matches!(
        error,
        OrmError::Validation(ValidationError::PayloadTooLarge { len: 8100, .. })
    ));
    let fits = "€".repeat(2666);
    client.notify(&channel, &fits).await.unwrap();
    assert_eq!(next_of(&mut subscription).await.payload, fits);

    let error = client.notify("", "x").await.unwrap_err();
    assert!(matches!(
        error,
        OrmError::Validation(ValidationError::EmptyChannel)
    ));
}

#[tokio::test]
async fn a_batch_is_published_in_order_and_an_invalid_item_sends_nothing() {
    let (a, b) = (unique("batch_a"), unique("batch_b"));
    let hub = hub().await;
    let mut on_a = hub.subscribe(&a).await.unwrap();
    let mut on_b = hub.subscribe(&b).await.unwrap();
    let client = client().await;

    let batch: Vec<(String, String)> = (0..100)
        .map(|i| {
            (
                if i % 2 == 0 { a.clone() } else { b.clone() },
                i.to_string(),
            )
        })
        .collect();
    assert_eq!(client.notify_batch(batch).await.unwrap(), 100);
    for i in (0..100).step_by(2) {
        assert_eq!(next_of(&mut on_a).await.payload, i.to_string());
        assert_eq!(next_of(&mut on_b).await.payload, (i + 1).to_string());
    }

    let refused = client
        .notify_batch([(a.as_str(), "fine"), (a.as_str(), &*"x".repeat(9000))])
        .await;
    assert!(matches!(refused, Err(OrmError::Validation(_))));
    client.notify(&a, "sentinel").await.unwrap();
    assert_eq!(
        next_of(&mut on_a).await.payload,
        "sentinel",
        "the valid half was not sent either"
    );
    assert_eq!(
        client
            .notify_batch(Vec::<(String, String)>::new())
            .await
            .unwrap(),
        0
    );
}

// ---- fan-out --------------------------------------------------------------

#[tokio::test]
async fn two_subscribers_of_one_channel_each_receive_every_message() {
    let channel = unique("two");
    let hub = hub().await;
    let mut first = hub.subscribe(&channel).await.unwrap();
    let mut second = hub.clone().subscribe(&channel).await.unwrap();
    let client = client().await;
    for i in 0..50 {
        client.notify(&channel, &i.to_string()).await.unwrap();
    }
    for i in 0..50 {
        assert_eq!(next_of(&mut first).await.payload, i.to_string());
        assert_eq!(next_of(&mut second).await.payload, i.to_string());
    }
    let stats = hub.stats();
    assert_eq!(stats.channels.len(), 1);
    let channel_stats = &stats.channels[0];
    assert_eq!(
        (
            channel_stats.subscribers,
            channel_stats.received,
            channel_stats.delivered,
            channel_stats.dropped
        ),
        (2, 50, 100, 0)
    );
}

#[tokio::test]
async fn a_stalled_subscriber_does_not_affect_a_fast_one() {
    let channel = unique("stalled");
    let hub = hub().await;
    let mut stalled = hub
        .subscribe_with(&channel, 10, QueuePolicy::DropOldest)
        .await
        .unwrap();
    let mut fast = hub.subscribe(&channel).await.unwrap();
    let publisher = raw_client(&TestServer::shared().url()).await;
    publisher
        .execute(
            "SELECT pg_notify($1, n::text) FROM generate_series(0, 999) AS n",
            &[&channel],
        )
        .await
        .unwrap();

    for i in 0..1000 {
        assert_eq!(next_of(&mut fast).await.payload, i.to_string());
    }
    let mut seen = Vec::new();
    while let Some(event) = stalled.try_next_event().unwrap() {
        seen.push(event);
    }
    assert_eq!(seen[0], ListenerEvent::Lagged { dropped: 990 });
    assert_eq!(seen.len(), 11);
    let stats = hub.stats().channels[0].clone();
    assert_eq!(
        (stats.received, stats.delivered, stats.dropped),
        (1000, 1010, 990)
    );
}

#[tokio::test]
async fn the_first_subscription_listens_and_dropping_the_last_unlistens() {
    let channel = unique("lifecycle");
    let hub = hub().await;
    assert!(hub.server_channels().await.unwrap().is_empty());

    let first = hub.subscribe(&channel).await.unwrap();
    assert_eq!(
        hub.server_channels().await.unwrap(),
        std::slice::from_ref(&channel)
    );
    let second = hub.subscribe(&channel).await.unwrap();
    drop(first);
    assert_eq!(
        hub.server_channels().await.unwrap(),
        std::slice::from_ref(&channel)
    );
    drop(second);
    eventually("UNLISTEN after the last drop", || async {
        hub.server_channels().await.unwrap().is_empty()
    })
    .await;
    assert!(hub.stats().channels.is_empty());

    // And back again.
    let mut again = hub.subscribe(&channel).await.unwrap();
    client().await.notify(&channel, "again").await.unwrap();
    assert_eq!(next_of(&mut again).await.payload, "again");
}

#[tokio::test]
async fn subscriptions_racing_on_a_new_channel_each_return_listening() {
    let channel = unique("racing");
    let hub = hub().await;
    let (first, second) = tokio::join!(hub.subscribe(&channel), hub.subscribe(&channel));
    let (mut first, mut second) = (first.unwrap(), second.unwrap());
    // No wait: each subscribe returned after its own LISTEN was acknowledged.
    client().await.notify(&channel, "both").await.unwrap();
    assert_eq!(next_of(&mut first).await.payload, "both");
    assert_eq!(next_of(&mut second).await.payload, "both");
}

#[tokio::test]
async fn a_subscription_made_while_reconnecting_is_listened_to_by_the_reconnect() {
    let server = TestServer::shared();
    let proxy = FaultProxy::start(server.port()).await.unwrap();
    let config =
        PgListenerConfig::new().backoff(Duration::from_millis(20), Duration::from_millis(100));
    let hub = PgNotifyHub::connect_with(&proxy.url_for(&server.url()), config)
        .await
        .unwrap();
    proxy.set_mode(ProxyMode::Refuse);
    proxy.cut_all();
    eventually("the hub to reconnect", || async {
        hub.state() == pgorm::listen::ListenerState::Reconnecting
    })
    .await;
    let channel = unique("while_reconnecting");
    // Returns at once: nothing is sent while the connection is down.
    let mut subscription = within("subscribe", hub.subscribe(&channel)).await.unwrap();
    proxy.set_mode(ProxyMode::Pass);
    let marker = within("the marker", subscription.next_event())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(marker, ListenerEvent::Reconnected { .. }),
        "{marker:?}"
    );
    assert_eq!(
        hub.server_channels().await.unwrap(),
        std::slice::from_ref(&channel)
    );
    client().await.notify(&channel, "listened").await.unwrap();
    assert_eq!(next_of(&mut subscription).await.payload, "listened");
}

#[tokio::test]
async fn subscribers_keep_receiving_across_a_backend_kill_with_the_marker_in_order() {
    let channel = unique("hub_kill");
    let name = unique("hub_app");
    let hub = named_hub(&name).await;
    let mut reconnects = hub.reconnects();
    let mut subscriptions = vec![
        hub.subscribe(&channel).await.unwrap(),
        hub.subscribe(&channel).await.unwrap(),
    ];
    let admin = raw_client(&TestServer::shared().url()).await;
    send(&admin, &channel, "before").await;
    for subscription in &mut subscriptions {
        assert_eq!(next_of(subscription).await.payload, "before");
    }
    terminate_backends(&admin, &name).await;
    within("the watch", reconnects.changed()).await.unwrap();
    assert_eq!(*reconnects.borrow(), 1);
    send(&admin, &channel, "after").await;
    for subscription in &mut subscriptions {
        let marker = within("marker", subscription.next_event())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(marker, ListenerEvent::Reconnected { generation: 1 });
        assert_eq!(next_of(subscription).await.payload, "after");
    }
    assert_eq!(hub.stats().reconnects, 1);
}

/// How [`read_until`] reads a subscription.
#[derive(Clone, Copy)]
enum Read {
    /// `next_batch`: whole shared batches.
    Batches,
    /// `next_ref`: one lent notification at a time.
    Lent,
}

/// Reads `subscription` until `count` notifications have come (or been
/// reported dropped): notifications as payloads, markers as `L<n>` / `R<n>`.
async fn read_until(subscription: &mut Subscription, count: usize, read: Read) -> Vec<String> {
    let mut seen = Vec::new();
    let mut notifications = 0;
    while notifications < count {
        let before = seen.len();
        let marker = match read {
            Read::Batches => match next_or_fail(subscription.next_batch()).await {
                ListenerEvent::Notification(batch) => {
                    assert!(!batch.is_empty(), "a batch is never empty");
                    seen.extend(batch.iter().map(|n| n.payload.clone()));
                    None
                }
                marker => Some(describe_marker(&marker)),
            },
            Read::Lent => match next_or_fail(subscription.next_ref()).await {
                ListenerEvent::Notification(notification) => {
                    seen.push(notification.payload.clone());
                    None
                }
                marker => Some(describe_marker(&marker)),
            },
        };
        match marker {
            Some((dropped, text)) => {
                notifications += dropped;
                seen.push(text);
            }
            None => notifications += seen.len() - before,
        }
    }
    seen
}

/// The next event of a read, failing the test when the subscription ends,
/// fails or does not answer.
async fn next_or_fail<N>(
    read: impl std::future::Future<Output = Option<pgorm::OrmResult<ListenerEvent<N>>>>,
) -> ListenerEvent<N> {
    within("the next read", read)
        .await
        .expect("the subscription ended")
        .expect("the subscription failed")
}

/// A marker as (notifications it says were dropped, `L<n>` or `R<n>`).
fn describe_marker<N: std::fmt::Debug>(event: &ListenerEvent<N>) -> (usize, String) {
    match event {
        ListenerEvent::Lagged { dropped } => (*dropped as usize, format!("L{dropped}")),
        ListenerEvent::Reconnected { generation } => (0, format!("R{generation}")),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn batches_carry_every_notification_in_order_with_gaps_and_reconnects_between() {
    let channel = unique("batches");
    let name = unique("batch_app");
    let hub = named_hub(&name).await;
    let mut batches = hub.subscribe(&channel).await.unwrap();
    let mut singles = hub.subscribe(&channel).await.unwrap();
    let mut small = hub
        .subscribe_with(&channel, 10, QueuePolicy::DropNewest)
        .await
        .unwrap();
    let admin = raw_client(&TestServer::shared().url()).await;
    admin
        .execute(
            "SELECT pg_notify($1, n::text) FROM generate_series(0, 999) AS n",
            &[&channel],
        )
        .await
        .unwrap();

    let all: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    assert_eq!(read_until(&mut batches, 1000, Read::Batches).await, all);
    for i in 0..1000 {
        assert_eq!(next_of(&mut singles).await.payload, i.to_string());
    }
    // Mixed: one notification, then the rest as batches, then the gap.
    let mut kept = vec![next_of(&mut small).await.payload.clone()];
    kept.extend(read_until(&mut small, 999, Read::Batches).await);
    let expected: Vec<String> = (0..10)
        .map(|i| i.to_string())
        .chain(["L990".to_string()])
        .collect();
    assert_eq!(kept, expected);

    let mut reconnects = hub.reconnects();
    terminate_backends(&admin, &name).await;
    within("the reconnect", reconnects.changed()).await.unwrap();
    send(&admin, &channel, "after").await;
    assert_eq!(
        read_until(&mut batches, 1, Read::Batches).await,
        ["R1", "after"]
    );
    assert_eq!(next_of(&mut singles).await.payload, "after");

    let stats = hub.stats().channels[0].clone();
    assert_eq!(
        (stats.received, stats.delivered, stats.dropped),
        (1001, 1001 + 1001 + 10, 990),
        "the small queue still holds \"after\": not delivered yet"
    );
}

#[tokio::test]
async fn lent_reads_see_every_notification_and_marker_in_order_and_mix_with_other_reads() {
    let channel = unique("lent");
    let name = unique("lent_app");
    let hub = named_hub(&name).await;
    let mut lent = hub.subscribe(&channel).await.unwrap();
    let mut mixed = hub.subscribe(&channel).await.unwrap();
    let mut small = hub
        .subscribe_with(&channel, 10, QueuePolicy::DropOldest)
        .await
        .unwrap();
    let admin = raw_client(&TestServer::shared().url()).await;
    admin
        .execute(
            "SELECT pg_notify($1, n::text) FROM generate_series(0, 999) AS n",
            &[&channel],
        )
        .await
        .unwrap();

    let all: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    assert_eq!(read_until(&mut lent, 1000, Read::Lent).await, all);
    // Lent, shared and batch reads of one subscription, in turn.
    let mut seen = Vec::new();
    while seen.len() < 1000 {
        seen.extend(read_until(&mut mixed, 1, Read::Lent).await);
        if seen.len() < 1000 {
            seen.push(next_of(&mut mixed).await.payload.clone());
        }
        if seen.len() < 1000 {
            let batch = within("a batch", mixed.next_batch())
                .await
                .unwrap()
                .unwrap();
            let ListenerEvent::Notification(batch) = batch else {
                panic!("a batch, not {batch:?}");
            };
            seen.extend(batch.iter().map(|n| n.payload.clone()));
        }
    }
    assert_eq!(seen, all);
    // A queue of 10 that fell behind: the gap first, then the newest 10.
    let expected: Vec<String> = std::iter::once("L990".to_string())
        .chain((990..1000).map(|i| i.to_string()))
        .collect();
    assert_eq!(read_until(&mut small, 1000, Read::Lent).await, expected);

    let mut reconnects = hub.reconnects();
    terminate_backends(&admin, &name).await;
    within("the reconnect", reconnects.changed()).await.unwrap();
    send(&admin, &channel, "after").await;
    for subscription in [&mut lent, &mut mixed, &mut small] {
        assert_eq!(
            read_until(subscription, 1, Read::Lent).await,
            ["R1", "after"]
        );
        let stats = subscription.stats();
        assert_eq!(
            (
                stats.received,
                stats.delivered + stats.dropped,
                stats.queued
            ),
            (1001, 1001, 0),
            "every lent notification counts as delivered"
        );
    }
}

#[tokio::test]
async fn a_thousand_subscribers_share_one_connection() {
    let channels: Vec<String> = (0..10).map(|_| unique("fanout")).collect();
    let name = unique("fanout_app");
    let hub = PgNotifyHub::connect_with(
        &TestServer::shared().url(),
        PgListenerConfig::new().application_name(&name),
    )
    .await
    .unwrap();
    let mut subscriptions = Vec::new();
    for i in 0..1000 {
        subscriptions.push(hub.subscribe(&channels[i % 10]).await.unwrap());
    }
    let client = client().await;
    for channel in &channels {
        for i in 0..5 {
            client.notify(channel, &i.to_string()).await.unwrap();
        }
    }
    for (i, subscription) in subscriptions.iter_mut().enumerate() {
        for expected in 0..5 {
            let notification = next_of(subscription).await;
            assert_eq!(notification.channel, channels[i % 10]);
            assert_eq!(notification.payload, expected.to_string());
        }
    }
    let observer = raw_client(&TestServer::shared().url()).await;
    assert_eq!(
        backends_named(&observer, &name).await.len(),
        1,
        "one connection"
    );
    let stats = hub.stats();
    assert_eq!(stats.received, 50);
    assert!(stats
        .channels
        .iter()
        .all(|c| c.subscribers == 100 && c.delivered == 500));
}

#[tokio::test]
async fn block_producer_and_preset_channels_are_refused_for_hubs() {
    let hub = hub().await;
    let refused = hub
        .subscribe_with("c", 10, QueuePolicy::BlockProducer)
        .await;
    assert!(matches!(refused, Err(OrmError::Validation(_))));
    let refused = PgNotifyHub::connect_with(
        &TestServer::shared().url(),
        PgListenerConfig::new().channels(["preset"]),
    )
    .await;
    assert!(matches!(refused, Err(OrmError::Validation(_))));
}

#[tokio::test]
async fn closing_the_hub_ends_every_subscription() {
    let hub = hub().await;
    let mut subscription = hub.subscribe(&unique("closing_hub")).await.unwrap();
    within("close", hub.close()).await.unwrap();
    assert!(within("end", subscription.next()).await.is_none());
    assert!(matches!(
        hub.subscribe("late").await,
        Err(OrmError::Closed { .. })
    ));
}

#[tokio::test]
async fn a_pg_client_hub_takes_no_pool_slot() {
    let client = PgClient::connect_with(&TestServer::shared().url(), PoolConfig::new().max_size(1))
        .await
        .unwrap();
    let hub = client.hub().await.unwrap();
    let channel = unique("client_hub");
    let mut subscription = hub.subscribe(&channel).await.unwrap();
    client.notify(&channel, "pooled").await.unwrap();
    assert_eq!(next_of(&mut subscription).await.payload, "pooled");
    assert_eq!(client.pool().status().size, 1);
}

// ---- typed channels -------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderEvent {
    order_id: i64,
    status: String,
}

#[tokio::test]
async fn typed_events_round_trip_and_a_malformed_payload_does_not_end_the_stream() {
    let orders = Channel::<OrderEvent>::new(unique("orders")).unwrap();
    let hub = hub().await;
    let mut events = hub.subscribe_typed(&orders).await.unwrap();
    let client = client().await;

    let paid = OrderEvent {
        order_id: 42,
        status: "paid".into(),
    };
    orders.notify(&client, &paid).await.unwrap();
    client.notify(orders.name(), "{not json").await.unwrap();
    let shipped = OrderEvent {
        order_id: 42,
        status: "shipped".into(),
    };
    orders.notify(&client, &shipped).await.unwrap();

    assert_eq!(within("typed", events.next()).await.unwrap().unwrap(), paid);
    match within("typed", events.next()).await.unwrap() {
        Err(OrmError::Decode {
            channel, payload, ..
        }) => {
            assert_eq!(channel, orders.name());
            assert_eq!(payload, "{not json");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    assert_eq!(
        within("typed", events.next_event()).await.unwrap().unwrap(),
        TypedEvent::Message(shipped)
    );
    let stats = events.stats();
    assert_eq!(
        (stats.received, stats.delivered, stats.queued, stats.dropped),
        (3, 3, 0, 0),
        "the malformed payload was delivered (as an error)"
    );
    assert!(Channel::<OrderEvent>::new("").is_err());
    let huge = OrderEvent {
        order_id: 1,
        status: "x".repeat(8000),
    };
    assert!(matches!(
        orders.notify(&client, &huge).await,
        Err(OrmError::Validation(
            ValidationError::PayloadTooLarge { .. }
        ))
    ));
}

// ---- handlers -------------------------------------------------------------

#[tokio::test]
async fn handlers_respect_their_concurrency_limit() {
    let channel = unique("concurrency");
    let hub = hub().await;
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let guard = hub
        .on_with(&channel, HandlerOptions::new().concurrency(3), move |_n| {
            let (running, peak) = (r.clone(), p.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok::<(), std::io::Error>(())
            }
        })
        .await
        .unwrap();
    let client = client().await;
    client
        .notify_batch((0..30).map(|i| (channel.clone(), i.to_string())))
        .await
        .unwrap();
    eventually("30 calls", || async { guard.stats().succeeded == 30 }).await;
    assert_eq!(peak.load(Ordering::SeqCst), 3);
}

#[derive(Default)]
struct Recorded(Mutex<Vec<String>>);

impl ListenerHooks for Recorded {
    fn on_connect(&self) {
        self.0.lock().unwrap().push("connect".into());
    }
    fn on_disconnect(&self, _cause: &OrmError) {
        self.0.lock().unwrap().push("disconnect".into());
    }
    fn on_reconnect_attempt(&self, attempt: u32, _delay: Duration) {
        self.0.lock().unwrap().push(format!("attempt {attempt}"));
    }
    fn on_reconnect(&self, generation: u64, _attempts: u32) {
        self.0
            .lock()
            .unwrap()
            .push(format!("reconnect {generation}"));
    }
    fn on_notification(&self, notification: &pgorm::PgNotification) {
        self.0
            .lock()
            .unwrap()
            .push(format!("notification {}", notification.payload));
    }
    fn on_handler_error(&self, channel: &str, error: &(dyn std::error::Error + Send + Sync)) {
        let _ = channel;
        self.0.lock().unwrap().push(format!("error {error}"));
    }
    fn on_handler_panic(&self, _channel: &str) {
        self.0.lock().unwrap().push("panic".into());
    }
    fn on_handler_timeout(&self, _channel: &str, _after: Duration) {
        self.0.lock().unwrap().push("timeout".into());
    }
}

#[tokio::test]
async fn failing_panicking_and_slow_handlers_are_counted_and_others_go_on() {
    let (bad, good) = (unique("bad_handler"), unique("good_handler"));
    let recorded = Arc::new(Recorded::default());
    let hub = PgNotifyHub::connect_with(
        &TestServer::shared().url(),
        PgListenerConfig::new().hooks(recorded.clone()),
    )
    .await
    .unwrap();
    let bad_guard = hub
        .on_with(
            &bad,
            HandlerOptions::new().timeout(Duration::from_millis(100)),
            |n: pgorm::PgNotification| async move {
                match n.payload.as_str() {
                    "fail" => Err("refused".to_string()),
                    "panic" => panic!("handler panic (expected by the test)"),
                    "slow" => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        Ok(())
                    }
                    _ => Ok(()),
                }
            },
        )
        .await
        .unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let good_guard = hub
        .on(&good, move |_n| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();

    let client = client().await;
    for payload in ["fail", "panic", "slow", "ok"] {
        client.notify(&bad, payload).await.unwrap();
        client.notify(&good, payload).await.unwrap();
    }
    eventually("the bad handler's four calls", || async {
        let stats = bad_guard.stats();
        stats.failed + stats.panicked + stats.timed_out + stats.succeeded == 4
    })
    .await;
    let stats = bad_guard.stats();
    assert_eq!(
        (
            stats.failed,
            stats.panicked,
            stats.timed_out,
            stats.succeeded
        ),
        (1, 1, 1, 1)
    );
    eventually("the good handler", || async {
        good_guard.stats().succeeded == 4
    })
    .await;
    assert_eq!(handled.load(Ordering::SeqCst), 4);
    let events = recorded.0.lock().unwrap().clone();
    for expected in ["error refused", "panic", "timeout"] {
        assert!(
            events.iter().any(|e| e == expected),
            "{expected} missing from {events:?}"
        );
    }
    assert_eq!(hub.state(), pgorm::listen::ListenerState::Connected);

    drop(bad_guard);
    eventually("UNLISTEN of the bad channel", || async {
        hub.server_channels().await.unwrap() == [good.clone()]
    })
    .await;
}

#[tokio::test]
async fn hooks_see_a_reconnect_in_order() {
    let name = unique("hooked");
    let channel = unique("hooked_channel");
    let recorded = Arc::new(Recorded::default());
    let config = PgListenerConfig::new()
        .application_name(&name)
        .channels([channel.as_str()])
        .hooks(recorded.clone());
    let mut listener = PgListener::connect_with(&TestServer::shared().url(), config)
        .await
        .unwrap();
    let admin = raw_client(&TestServer::shared().url()).await;
    send(&admin, &channel, "one").await;
    next_notification(&mut listener).await;
    terminate_backends(&admin, &name).await;
    assert!(matches!(
        next_event(&mut listener).await,
        ListenerEvent::Reconnected { .. }
    ));
    send(&admin, &channel, "two").await;
    next_notification(&mut listener).await;

    let events = recorded.0.lock().unwrap().clone();
    assert_eq!(
        events,
        [
            "connect",
            "notification one",
            "disconnect",
            "attempt 1",
            "reconnect 1",
            "notification two"
        ]
    );
}
