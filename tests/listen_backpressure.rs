//! Queue policies under floods with a stalled consumer: exact counts, gap
//! markers where the gaps are, bounded queues, and no false alarms.

mod support;

use std::time::Duration;

use pgorm::listen::{ListenerEvent, PgListener, PgListenerConfig, QueuePolicy};
use support::*;

/// Commits `count` notifications with payloads `0..count` in one transaction.
async fn flood(channel: &str, count: i32) {
    let client = raw_client(&TestServer::shared().url()).await;
    client
        .execute(
            "SELECT pg_notify($1, n::text) FROM generate_series(0, $2 - 1) AS n",
            &[&channel, &count],
        )
        .await
        .expect("flood");
}

async fn listener(channel: &str, capacity: usize, policy: QueuePolicy) -> PgListener {
    let config = PgListenerConfig::new()
        .channels([channel])
        .queue_capacity(capacity)
        .queue_policy(policy);
    PgListener::connect_with(&TestServer::shared().url(), config)
        .await
        .expect("listener")
}

async fn received(listener: &PgListener, count: u64) {
    eventually("the listener to read the flood", || async {
        listener.stats().received == count
    })
    .await;
}

/// Every queued event, notifications as their numeric payloads.
fn drain(listener: &mut PgListener) -> Vec<Result<u64, ListenerEvent>> {
    let mut events = Vec::new();
    loop {
        match listener.try_next_event().expect("the listener is open") {
            Some(ListenerEvent::Notification(n)) => events.push(Ok(n.payload.parse().unwrap())),
            Some(marker) => events.push(Err(marker)),
            None => return events,
        }
    }
}

#[tokio::test]
async fn drop_oldest_keeps_the_newest_and_marks_the_gap_before_them() {
    let channel = unique("drop_oldest");
    let mut listener = listener(&channel, 100, QueuePolicy::DropOldest).await;
    flood(&channel, 1000).await;
    received(&listener, 1000).await;

    let stats = listener.stats();
    assert_eq!((stats.dropped, stats.queued), (900, 100));
    let events = drain(&mut listener);
    assert_eq!(events[0], Err(ListenerEvent::Lagged { dropped: 900 }));
    let kept: Vec<u64> = events[1..].iter().map(|e| *e.as_ref().unwrap()).collect();
    assert_eq!(kept, (900..1000).collect::<Vec<_>>());
}

#[tokio::test]
async fn drop_newest_keeps_the_oldest_and_marks_the_gap_after_them() {
    let channel = unique("drop_newest");
    let mut listener = listener(&channel, 100, QueuePolicy::DropNewest).await;
    flood(&channel, 1000).await;
    received(&listener, 1000).await;

    assert_eq!(listener.stats().dropped, 900);
    let events = drain(&mut listener);
    let kept: Vec<u64> = events[..100].iter().map(|e| *e.as_ref().unwrap()).collect();
    assert_eq!(kept, (0..100).collect::<Vec<_>>());
    assert_eq!(events[100..], [Err(ListenerEvent::Lagged { dropped: 900 })]);

    // Later notifications come after the marker.
    flood(&channel, 1).await;
    assert_eq!(next_notification(&mut listener).await.payload, "0");
}

#[tokio::test]
async fn block_producer_stops_reading_and_loses_nothing() {
    let channel = unique("block");
    let capacity = 100;
    let mut listener = listener(&channel, capacity, QueuePolicy::BlockProducer).await;
    flood(&channel, 5000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Stalled: the listener read at most a queue and one batch, and left the
    // rest on the socket.
    let stats = listener.stats();
    assert_eq!(stats.queued, capacity);
    assert!(stats.received <= (capacity + 1024) as u64, "{stats:?}");
    assert!(stats.received < 5000, "{stats:?}");

    for expected in 0..5000 {
        let notification = next_notification(&mut listener).await;
        assert_eq!(notification.payload, expected.to_string());
        assert!(listener.stats().queued <= capacity);
    }
    let stats = listener.stats();
    assert_eq!(
        (stats.received, stats.delivered, stats.dropped),
        (5000, 5000, 0)
    );
}

#[tokio::test]
async fn a_block_past_its_timeout_falls_back_to_dropping_the_oldest_with_markers() {
    let channel = unique("block_timeout");
    let config = PgListenerConfig::new()
        .channels([channel.as_str()])
        .queue_capacity(10)
        .queue_policy(QueuePolicy::BlockProducer)
        .block_timeout(Duration::from_millis(200));
    let mut listener = PgListener::connect_with(&TestServer::shared().url(), config)
        .await
        .unwrap();
    flood(&channel, 2000).await;
    received(&listener, 2000).await;

    let stats = listener.stats();
    assert!(stats.dropped > 0, "{stats:?}");
    assert!(stats.queued <= 10, "{stats:?}");
    let events = drain(&mut listener);
    let marked: u64 = events
        .iter()
        .map(|event| match event {
            Err(ListenerEvent::Lagged { dropped }) => *dropped,
            _ => 0,
        })
        .sum();
    let delivered: Vec<u64> = events
        .iter()
        .filter_map(|e| e.as_ref().ok().copied())
        .collect();
    assert_eq!(marked, listener.stats().dropped, "every drop is marked");
    assert_eq!(delivered.len() as u64 + marked, 2000, "nothing unaccounted");
    assert!(
        delivered.windows(2).all(|pair| pair[0] < pair[1]),
        "in order"
    );
    assert_eq!(delivered.last(), Some(&1999));
}

#[tokio::test]
async fn a_slow_consumer_is_not_mistaken_for_a_dead_connection() {
    let channel = unique("slow");
    let config = PgListenerConfig::new()
        .channels([channel.as_str()])
        .queue_capacity(10)
        .queue_policy(QueuePolicy::BlockProducer)
        .health_check(Duration::from_millis(50), Duration::from_millis(100));
    let mut listener = PgListener::connect_with(&TestServer::shared().url(), config)
        .await
        .unwrap();
    flood(&channel, 1000).await;
    // Blocked for ten health timeouts.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for expected in 0..1000 {
        assert_eq!(
            next_notification(&mut listener).await.payload,
            expected.to_string()
        );
    }
    let stats = listener.stats();
    assert_eq!((stats.reconnects, stats.dropped), (0, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_keeps_up_never_sees_drops_with_the_default_capacity() {
    let channel = unique("keeps_up");
    let mut listener = PgListener::connect_with(
        &TestServer::shared().url(),
        PgListenerConfig::new().channels([channel.as_str()]),
    )
    .await
    .unwrap();
    let total = 50_000;
    let consumer = tokio::spawn(async move {
        let mut count = 0u64;
        while count < total {
            match within("the burst", listener.next_event()).await {
                Some(Ok(ListenerEvent::Notification(_))) => count += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        listener.stats()
    });
    flood(&channel, total as i32).await;
    let stats = consumer.await.unwrap();
    assert_eq!(
        (stats.received, stats.delivered, stats.dropped),
        (total, total, 0)
    );
}
