//! `PgListener::next_batch`: notifications read in place, in order, with the
//! gap markers where the gaps are; counters that balance at every snapshot;
//! cancel safety; and mixing with `next`.

mod support;

use std::time::Duration;

use pgorm::listen::{ListenerEvent, PgListener, PgListenerConfig, QueuePolicy};
use support::*;

async fn listener(config: PgListenerConfig) -> PgListener {
    PgListener::connect_with(&TestServer::shared().url(), config)
        .await
        .expect("listener")
}

/// What one batch holds: notifications as their payloads, markers as
/// `L<n>` / `R<n>`. Checks that the stats balance after the batch was
/// handed out, and that it counts as delivered.
async fn next_batch(listener: &mut PgListener) -> Vec<String> {
    let delivered_before = listener.stats().delivered;
    let batch = within("the next batch", listener.next_batch())
        .await
        .expect("the listener ended")
        .expect("the listener failed");
    let mut seen = Vec::new();
    let mut notifications = 0;
    for event in batch {
        seen.push(match event {
            ListenerEvent::Notification(n) => {
                notifications += 1;
                let owned = n.to_notification();
                assert_eq!(
                    (
                        owned.process_id,
                        owned.channel.as_str(),
                        owned.payload.as_str()
                    ),
                    (n.process_id(), n.channel(), n.payload())
                );
                assert_eq!(owned.received_at, n.received_at());
                n.payload().to_string()
            }
            ListenerEvent::Lagged { dropped } => format!("L{dropped}"),
            ListenerEvent::Reconnected { generation } => format!("R{generation}"),
            _ => "?".into(),
        });
    }
    let stats = listener.stats();
    assert_eq!(
        stats.received,
        stats.delivered + stats.queued as u64 + stats.dropped,
        "{stats:?}"
    );
    assert_eq!(stats.delivered, delivered_before + notifications);
    seen
}

/// Reads batches until `count` notifications (and any markers) were seen.
async fn read_batches(listener: &mut PgListener, count: usize) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    while seen
        .iter()
        .filter(|event| !is_marker(event.as_str()))
        .count()
        < count
    {
        seen.extend(next_batch(listener).await);
    }
    seen
}

fn is_marker(event: &str) -> bool {
    event.starts_with('L') || event.starts_with('R')
}

fn numbers(range: std::ops::Range<i32>) -> Vec<String> {
    range.map(|n| n.to_string()).collect()
}

#[tokio::test]
async fn a_batch_holds_what_arrived_in_order_read_in_place() {
    let channel = unique("batch_order");
    let mut listener = listener(PgListenerConfig::new().channels([&channel])).await;
    let client = raw_client(&TestServer::shared().url()).await;
    send_numbered(&client, &channel, 0, 2000).await;
    send_numbered(&client, &channel, 2000, 1000).await;
    let seen = read_batches(&mut listener, 3000).await;
    assert_eq!(seen, numbers(0..3000));
    let stats = listener.stats();
    assert_eq!(
        (stats.received, stats.delivered, stats.queued),
        (3000, 3000, 0)
    );
}

#[tokio::test]
async fn a_reconnect_marker_comes_in_order_with_the_batch() {
    let channel = unique("batch_reconnect");
    let application_name = unique("batch_reconnect_app");
    let config = PgListenerConfig::new()
        .channels([&channel])
        .application_name(&application_name)
        .backoff(Duration::from_millis(10), Duration::from_millis(100));
    let mut listener = listener(config).await;
    let client = raw_client(&TestServer::shared().url()).await;
    send_numbered(&client, &channel, 0, 10).await;
    eventually("the first ten to be read", || async {
        listener.stats().received == 10
    })
    .await;
    terminate_backends(&client, &application_name).await;
    eventually("the listener to reconnect", || async {
        listener.stats().reconnects == 1
    })
    .await;
    send_numbered(&client, &channel, 10, 10).await;
    let seen = read_batches(&mut listener, 20).await;
    let mut expected = numbers(0..10);
    expected.push("R1".into());
    expected.extend(numbers(10..20));
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn a_gap_marker_comes_where_the_gap_is() {
    let channel = unique("batch_lagged");
    let config = PgListenerConfig::new()
        .channels([&channel])
        .queue_capacity(100)
        .queue_policy(QueuePolicy::DropOldest);
    let mut listener = listener(config).await;
    let client = raw_client(&TestServer::shared().url()).await;
    send_numbered(&client, &channel, 0, 1000).await;
    eventually("the flood to be read", || async {
        listener.stats().received == 1000
    })
    .await;
    let seen = next_batch(&mut listener).await;
    let mut expected = vec!["L900".to_string()];
    expected.extend(numbers(900..1000));
    assert_eq!(seen, expected);
    let stats = listener.stats();
    assert_eq!(
        (stats.delivered, stats.dropped, stats.queued),
        (100, 900, 0)
    );
}

#[tokio::test]
async fn a_cancelled_batch_read_loses_nothing() {
    let channel = unique("batch_cancel");
    let mut listener = listener(PgListenerConfig::new().channels([&channel])).await;
    // Nothing is queued: the read waits, and is cancelled while waiting.
    let waited = tokio::time::timeout(Duration::from_millis(50), listener.next_batch()).await;
    assert!(waited.is_err(), "nothing was sent: the read must wait");
    let client = raw_client(&TestServer::shared().url()).await;
    send_numbered(&client, &channel, 0, 100).await;
    eventually("the hundred to be read", || async {
        listener.stats().received == 100
    })
    .await;
    // Cancelled again, this time with everything queued: a read that is
    // never polled hands out nothing.
    drop(listener.next_batch());
    assert_eq!(listener.stats().delivered, 0);
    assert_eq!(read_batches(&mut listener, 100).await, numbers(0..100));
}

#[tokio::test]
async fn next_and_next_batch_share_one_stream() {
    let channel = unique("batch_mixed");
    let mut listener = listener(PgListenerConfig::new().channels([&channel])).await;
    let client = raw_client(&TestServer::shared().url()).await;
    send_numbered(&client, &channel, 0, 50).await;
    assert_eq!(next_notification(&mut listener).await.payload, "0");
    assert_eq!(next_notification(&mut listener).await.payload, "1");
    // The batch holds what `next` has not returned yet.
    let mut seen = numbers(0..2);
    seen.extend(read_batches(&mut listener, 48).await);
    assert_eq!(seen, numbers(0..50));
    send_numbered(&client, &channel, 50, 1).await;
    assert_eq!(next_notification(&mut listener).await.payload, "50");
    let stats = listener.stats();
    assert_eq!((stats.received, stats.delivered, stats.queued), (51, 51, 0));
}

#[tokio::test]
async fn a_partly_read_batch_counts_as_delivered_and_the_next_read_goes_on() {
    let channel = unique("batch_partly");
    let mut listener = listener(PgListenerConfig::new().channels([&channel])).await;
    let client = raw_client(&TestServer::shared().url()).await;
    send_numbered(&client, &channel, 0, 10).await;
    eventually("the ten to be read", || async {
        listener.stats().received == 10
    })
    .await;
    {
        // Only the first of the ten is read before the batch goes away.
        let mut batch = within("a batch", listener.next_batch())
            .await
            .expect("open")
            .expect("no error");
        let first = batch.next().expect("a notification");
        assert!(matches!(first, ListenerEvent::Notification(n) if n.payload() == "0"));
    }
    let stats = listener.stats();
    assert_eq!(stats.delivered, 10, "the whole batch counts as delivered");
    assert_eq!(
        stats.received,
        stats.delivered + stats.queued as u64 + stats.dropped
    );
    send_numbered(&client, &channel, 10, 1).await;
    let seen = read_batches(&mut listener, 1).await;
    assert_eq!(seen.last().map(String::as_str), Some("10"));
}

#[tokio::test]
async fn a_listener_that_gives_up_ends_its_batches_with_the_reason_then_none() {
    let server = TestServer::shared();
    let proxy = FaultProxy::start(server.port()).await.unwrap();
    let channel = unique("batch_end");
    let config = PgListenerConfig::new()
        .channels([&channel])
        .backoff(Duration::from_millis(10), Duration::from_millis(20))
        .max_reconnect_attempts(Some(2));
    let mut listener = PgListener::connect_with(&proxy.url_for(&server.url()), config)
        .await
        .expect("listener");
    let client = raw_client(&server.url()).await;
    send_numbered(&client, &channel, 0, 5).await;
    eventually("the five to be read", || async {
        listener.stats().received == 5
    })
    .await;
    proxy.set_mode(ProxyMode::Refuse);
    proxy.cut_all();
    // What was read before the loss comes first, then why it ended, then
    // the end.
    assert_eq!(read_batches(&mut listener, 5).await, numbers(0..5));
    let ended = within("the reason", listener.next_batch()).await;
    assert!(matches!(ended, Some(Err(_))), "{ended:?}");
    let after = within("the end", listener.next_batch()).await;
    assert!(after.is_none(), "{after:?}");
}
