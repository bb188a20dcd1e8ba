//! Hostile review of the LISTEN/NOTIFY performance changes (`next_batch`,
//! `NotificationRef`, the tap's shared text per read, whole-batch queue
//! moves, the hub's one-at-a-time fast path).
//!
//! Finding 1: `NotificationRef`'s derived `PartialEq` compares offsets into
//! the read's shared text, so two notifications with the same process id,
//! channel, payload and arrival time compare unequal as views while their
//! owned forms (`to_notification()`) compare equal.
//!
//! The other tests are edge checks that hold on the reviewed code.

mod support;

use std::time::Duration;

use pgorm::listen::{
    ListenerEvent, NotificationRef, PgListener, PgListenerConfig, PgNotifyHub, QueuePolicy,
};
use support::*;

/// A payload of exactly `len` bytes, numbered at the front, padded with
/// three-byte characters (so that read boundaries fall inside characters)
/// and ASCII to the exact length.
fn wide_payload(number: usize, len: usize) -> String {
    let mut payload = format!("{number:05}:");
    while payload.len() + 3 <= len {
        payload.push('€');
    }
    while payload.len() < len {
        payload.push('a');
    }
    assert_eq!(payload.len(), len);
    payload
}

/// Sends `payloads` on `channel` in one transaction, so that the server
/// writes them back to back (and they straddle the listener's reads).
async fn send_all(client: &tokio_postgres::Client, channel: &str, payloads: &[String]) {
    client
        .execute(
            "SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS t(p, n) ORDER BY n",
            &[&channel, &payloads],
        )
        .await
        .expect("pg_notify");
}

/// Mixed sizes: 7999-byte payloads (the largest the server takes), empty
/// ones and short multi-byte ones, interleaved.
fn mixed_payloads(count: usize) -> Vec<String> {
    (0..count)
        .map(|n| match n % 4 {
            0 => wide_payload(n, 7999),
            1 => format!("{n:05}:"),
            2 => format!("{n:05}:ü€𝄞"),
            _ => wide_payload(n, 7998),
        })
        .collect()
}

#[tokio::test]
async fn payloads_of_7999_bytes_straddling_reads_arrive_intact_in_batches() {
    let server = TestServer::shared();
    // A channel with multi-byte characters: the view's channel stretch must
    // be cut on char boundaries too.
    let channel = unique("größe_€");
    let config = PgListenerConfig::new()
        .channels([channel.as_str()])
        .queue_capacity(10_000)
        .queue_policy(QueuePolicy::DropNewest);
    let mut listener = PgListener::connect_with(&server.url(), config)
        .await
        .expect("listener");
    let client = raw_client(&server.url()).await;
    let payloads = mixed_payloads(400);
    send_all(&client, &channel, &payloads).await;
    // The server refuses 8000 bytes; nothing of it reaches the listener.
    let refused = client
        .execute(
            "SELECT pg_notify($1, $2)",
            &[&channel, &wide_payload(999, 8000)],
        )
        .await;
    assert!(refused.is_err(), "the server takes at most 7999 bytes");
    send_all(&client, &channel, &payloads[..4]).await;

    let mut seen = Vec::new();
    while seen.len() < 404 {
        let batch = within("a batch", listener.next_batch())
            .await
            .expect("open")
            .expect("no error");
        for event in batch {
            match event {
                ListenerEvent::Notification(n) => {
                    assert_eq!(n.channel(), channel);
                    seen.push(n.payload().to_owned());
                }
                other => panic!("no marker expected: {other:?}"),
            }
        }
        let stats = listener.stats();
        assert_eq!(
            stats.received,
            stats.delivered + stats.queued as u64 + stats.dropped,
            "{stats:?}"
        );
    }
    let mut expected = payloads.clone();
    expected.extend_from_slice(&payloads[..4]);
    assert_eq!(seen.len(), expected.len());
    for (at, (got, want)) in seen.iter().zip(&expected).enumerate() {
        assert!(got == want, "notification {at} differs");
    }
    let stats = listener.stats();
    assert_eq!(
        (stats.received, stats.delivered, stats.dropped),
        (404, 404, 0)
    );
}

#[tokio::test]
async fn a_burst_held_back_by_the_network_arrives_intact_through_next_and_the_hub() {
    let server = TestServer::shared();
    let proxy = FaultProxy::start(server.port()).await.unwrap();
    let url = proxy.url_for(&server.url());
    let channel = unique("burst_€");
    let mut listener = PgListener::connect_with(
        &url,
        PgListenerConfig::new()
            .channels([channel.as_str()])
            .queue_capacity(10_000),
    )
    .await
    .expect("listener");
    let hub = PgNotifyHub::connect(&url).await.expect("hub");
    let mut subscription = hub.subscribe(&channel).await.expect("subscribe");
    let client = raw_client(&server.url()).await;
    // Everything the server sends waits in the proxy, then comes in one
    // burst: reads are full and messages straddle them.
    proxy.set_mode(ProxyMode::Blackhole);
    let payloads = mixed_payloads(200);
    for chunk in payloads.chunks(50) {
        send_all(&client, &channel, chunk).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.set_mode(ProxyMode::Pass);

    for (at, want) in payloads.iter().enumerate() {
        let got = next_notification(&mut listener).await;
        assert!(&got.payload == want, "listener: notification {at} differs");
        let got = within("hub", subscription.next())
            .await
            .expect("open")
            .expect("ok");
        assert!(&got.payload == want, "hub: notification {at} differs");
    }
    let stats = hub.stats();
    assert_eq!(stats.received, stats.routed + stats.unrouted, "{stats:?}");
    assert_eq!(stats.routed, 200);
    let stats = listener.stats();
    assert_eq!(
        (stats.received, stats.delivered, stats.queued),
        (200, 200, 0)
    );
}

/// Finding 1. Two notifications that are the same in every field the view
/// shows (process id, channel, payload, arrival time) must compare equal as
/// views, as they do as owned notifications.
#[tokio::test]
async fn review_f1_equal_notifications_of_one_batch_compare_equal_as_views() {
    let server = TestServer::shared();
    let proxy = FaultProxy::start(server.port()).await.unwrap();
    let channel = unique("same_twice");
    let mut listener = PgListener::connect_with(
        &proxy.url_for(&server.url()),
        PgListenerConfig::new().channels([channel.as_str()]),
    )
    .await
    .expect("listener");
    let client = raw_client(&server.url()).await;
    // The same notification twice, from one backend, in two transactions
    // (PostgreSQL folds duplicates only within one), held back by the proxy
    // so that both come in one read (one arrival time).
    proxy.set_mode(ProxyMode::Blackhole);
    let sql = format!(
        "BEGIN; NOTIFY \"{channel}\", 'same'; COMMIT; BEGIN; NOTIFY \"{channel}\", 'same'; COMMIT"
    );
    client.batch_execute(&sql).await.expect("notify twice");
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.set_mode(ProxyMode::Pass);
    eventually("both to be read", || async {
        listener.stats().received == 2
    })
    .await;
    let batch = within("a batch", listener.next_batch())
        .await
        .expect("open")
        .expect("no error");
    let views: Vec<NotificationRef<'_>> = batch
        .filter_map(|event| match event {
            ListenerEvent::Notification(n) => Some(n),
            _ => None,
        })
        .collect();
    assert_eq!(views.len(), 2, "both in one batch");
    let (first, second) = (views[0], views[1]);
    assert_eq!(
        first.to_notification(),
        second.to_notification(),
        "the same notification twice, read together"
    );
    assert_eq!(
        first, second,
        "views of equal notifications must compare equal, as their owned forms do"
    );
}

/// Hub counters under a flood of routed and unrouted notifications, read
/// from another task while the router works: `received == routed +
/// unrouted` in every snapshot; a subscription that overflows balances and
/// its `Lagged` markers add up to what it dropped, in order with batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_counters_balance_in_every_snapshot_under_a_flood() {
    let server = TestServer::shared();
    let routed_channel = unique("hub_flood_routed");
    let unrouted_channel = unique("hub_flood_unrouted");
    let hub = PgNotifyHub::connect(&server.url()).await.expect("hub");
    let mut subscription = hub
        .subscribe_with(&routed_channel, 100, QueuePolicy::DropOldest)
        .await
        .expect("subscribe");
    // Listen to the unrouted channel too (a second subscription, dropped at
    // once, would UNLISTEN it): keep one that never reads.
    let _idle = hub
        .subscribe_with(&unrouted_channel, 1, QueuePolicy::DropNewest)
        .await
        .expect("subscribe");
    let watcher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut snapshots = 0u64;
            loop {
                let stats = hub.stats();
                assert_eq!(stats.received, stats.routed + stats.unrouted, "{stats:?}");
                snapshots += 1;
                if stats.received >= 4000 {
                    return snapshots;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let client = raw_client(&server.url()).await;
    for round in 0..4 {
        send_numbered(&client, &routed_channel, round * 500, 500).await;
        send_numbered(&client, &unrouted_channel, round * 500, 500).await;
    }
    within("the watcher", watcher).await.expect("watcher");
    let stats = hub.stats();
    assert_eq!((stats.received, stats.routed), (4000, 4000), "{stats:?}");
    let sub = subscription.stats();
    assert_eq!(sub.received, 2000);
    assert_eq!(
        sub.received,
        sub.delivered + sub.queued as u64 + sub.dropped,
        "{sub:?}"
    );
    // What is queued: gap markers that add up to the drops, then the newest
    // notifications in order.
    let mut lagged = 0;
    let mut last = None;
    while subscription.stats().queued > 0 {
        let event = within("a batch", subscription.next_batch())
            .await
            .expect("open")
            .expect("ok");
        match event {
            ListenerEvent::Lagged { dropped } => {
                assert!(last.is_none(), "a gap after the kept notifications");
                lagged += dropped;
            }
            ListenerEvent::Notification(batch) => {
                for n in batch.iter() {
                    let number: i32 = n.payload.parse().unwrap();
                    assert!(last.is_none_or(|last| number == last + 1));
                    last = Some(number);
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(lagged, sub.dropped);
    assert_eq!(last, Some(1999));
}

/// Over TLS the tap reads decrypted bytes: 7999-byte multi-byte payloads
/// straddling its reads arrive intact through `next_batch` too.
#[tokio::test]
async fn large_payloads_over_tls_arrive_intact_in_batches() {
    let (url, tls) = tls_url_and_connector();
    let client = pgorm::PgClient::connect_with_tls(&url, pgorm::PoolConfig::default(), tls)
        .await
        .expect("tls client");
    let channel = unique("tls_größe");
    let mut listener = client
        .listener_with(
            PgListenerConfig::new()
                .channels([channel.as_str()])
                .queue_capacity(10_000),
        )
        .await
        .expect("tls listener");
    let sender = raw_client(&TestServer::shared().url()).await;
    let payloads = mixed_payloads(200);
    send_all(&sender, &channel, &payloads).await;
    let mut seen = Vec::new();
    while seen.len() < payloads.len() {
        let batch = within("a batch", listener.next_batch())
            .await
            .expect("open")
            .expect("no error");
        for event in batch {
            match event {
                ListenerEvent::Notification(n) => seen.push(n.payload().to_owned()),
                other => panic!("no marker expected: {other:?}"),
            }
        }
    }
    assert!(seen == payloads, "the payloads differ");
}
