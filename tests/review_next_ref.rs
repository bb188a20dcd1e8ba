//! Review of `Subscription::next_ref` (lent hub reads), the router's
//! received count and the tap's one-pass parse, against a real server.

mod support;

use std::time::Duration;

use pgorm::listen::{ListenerEvent, PgListener, PgListenerConfig, PgNotifyHub, QueuePolicy};
use support::*;

/// A hub whose backend is found by `name` and that reconnects quickly.
async fn named_hub(name: &str) -> PgNotifyHub {
    let config = PgListenerConfig::new()
        .application_name(name)
        .backoff(Duration::from_millis(20), Duration::from_millis(200));
    PgNotifyHub::connect_with(&TestServer::shared().url(), config)
        .await
        .expect("hub")
}

/// What one read returned: payload numbers, a gap, a reconnect, or nothing
/// (a cancelled or non-blocking read that found nothing).
#[derive(Debug)]
enum Read {
    Numbers(Vec<u64>),
    Lagged(u64),
    Reconnected(u64),
    Nothing,
}

fn number(payload: &str) -> u64 {
    payload.parse().expect("a numbered payload")
}

fn event<N>(event: ListenerEvent<N>, numbers: impl FnOnce(N) -> Vec<u64>) -> Read {
    match event {
        ListenerEvent::Notification(n) => Read::Numbers(numbers(n)),
        ListenerEvent::Lagged { dropped } => Read::Lagged(dropped),
        ListenerEvent::Reconnected { generation } => Read::Reconnected(generation),
        _ => panic!("an unexpected event"),
    }
}

/// While a publisher floods the channel from another task of a
/// multi-threaded runtime, one subscription is read by every kind of read
/// in turn (lent, shared, batch, non-blocking, and lent reads cancelled by
/// `select!` while pending). Every notification comes in order or is
/// announced by a `Lagged` of exactly the gap's size, and after every read
/// the subscription's counts balance and `delivered` is what was returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_read_mixed_under_a_concurrent_flood_keeps_order_gaps_and_counts() {
    const ROUNDS: u64 = 30;
    const PER_ROUND: u64 = 100;
    const TOTAL: u64 = ROUNDS * PER_ROUND;
    let channel = unique("rv_flood");
    let hub = named_hub(&unique("rv_flood_app")).await;
    let mut small = hub
        .subscribe_with(&channel, 64, QueuePolicy::DropOldest)
        .await
        .unwrap();
    let publisher = {
        let channel = channel.clone();
        tokio::spawn(async move {
            let admin = raw_client(&TestServer::shared().url()).await;
            for round in 0..ROUNDS {
                send_numbered(
                    &admin,
                    &channel,
                    (round * PER_ROUND) as i32,
                    PER_ROUND as i32,
                )
                .await;
                tokio::task::yield_now().await;
            }
        })
    };
    let (mut returned, mut lagged) = (0u64, 0u64);
    let (mut last, mut gap) = (None::<u64>, 0u64);
    let mut turn = 0u32;
    within("reading the flood", async {
        while returned + lagged < TOTAL {
            turn += 1;
            let read = match turn % 6 {
                0 => event(small.next_ref().await.unwrap().unwrap(), |n| {
                    vec![number(&n.payload)]
                }),
                1 => event(small.next_event().await.unwrap().unwrap(), |n| {
                    vec![number(&n.payload)]
                }),
                2 => event(small.next_batch().await.unwrap().unwrap(), |b| {
                    b.iter().map(|n| number(&n.payload)).collect()
                }),
                3 => tokio::select! {
                    biased;
                    read = small.next_ref() => event(read.unwrap().unwrap(), |n| {
                        vec![number(&n.payload)]
                    }),
                    // Ready on its second poll: cancels a pending lent read.
                    () = tokio::task::yield_now() => Read::Nothing,
                },
                4 => match small.try_next_event().unwrap() {
                    Some(read) => event(read, |n| vec![number(&n.payload)]),
                    None => {
                        tokio::task::yield_now().await;
                        Read::Nothing
                    }
                },
                _ => {
                    // Two lent reads in a row: the second finds the first's
                    // batch spent or not.
                    let first = event(small.next_ref().await.unwrap().unwrap(), |n| {
                        vec![number(&n.payload)]
                    });
                    if let Read::Numbers(numbers) = &first {
                        assert_eq!(numbers.len(), 1);
                    }
                    first
                }
            };
            match read {
                Read::Numbers(numbers) => {
                    assert!(!numbers.is_empty(), "an empty batch");
                    for n in numbers {
                        assert_eq!(n, last.map_or(0, |l| l + 1) + gap, "order and gaps");
                        last = Some(n);
                        gap = 0;
                        returned += 1;
                    }
                }
                Read::Lagged(dropped) => {
                    assert!(dropped > 0);
                    gap += dropped;
                    lagged += dropped;
                }
                Read::Reconnected(generation) => panic!("no reconnect here, got R{generation}"),
                Read::Nothing => {}
            }
            let stats = small.stats();
            assert_eq!(
                stats.received,
                stats.delivered + stats.queued as u64 + stats.dropped,
                "{stats:?}"
            );
            assert_eq!(stats.delivered, returned, "delivered is what was returned");
            assert!(stats.dropped >= lagged, "{stats:?} with {lagged} announced");
        }
    })
    .await;
    within("the publisher", publisher).await.unwrap();
    assert_eq!(returned + lagged, TOTAL);
    let stats = small.stats();
    assert_eq!(
        (stats.received, stats.delivered, stats.dropped, stats.queued),
        (TOTAL, returned, lagged, 0)
    );
    let hub_stats = hub.stats();
    assert_eq!(hub_stats.received, hub_stats.routed + hub_stats.unrouted);
    assert_eq!(hub_stats.routed, TOTAL);
    within("close", hub.close()).await.unwrap();
    assert!(within("the end", small.next_ref()).await.is_none());
    assert!(within("the end again", small.next_ref()).await.is_none());
}

/// A reconnect, then the hub's close, while a batch is partly lent: the
/// rest of the batch first, then the marker, then what came after it, then
/// the end; counts balance throughout.
#[tokio::test]
async fn a_reconnect_and_the_close_while_a_batch_is_partly_lent_come_after_its_rest() {
    let channel = unique("rv_partly");
    let name = unique("rv_partly_app");
    let hub = named_hub(&name).await;
    let mut lent = hub.subscribe(&channel).await.unwrap();
    let mut batches = hub.subscribe(&channel).await.unwrap();
    let admin = raw_client(&TestServer::shared().url()).await;
    send_numbered(&admin, &channel, 0, 50).await;
    let first = within("the first", lent.next_ref()).await.unwrap().unwrap();
    assert!(matches!(first, ListenerEvent::Notification(n) if n.payload == "0"));
    eventually("all 50 routed", || {
        let received = lent.stats().received;
        async move { received == 50 }
    })
    .await;
    let stats = lent.stats();
    assert_eq!((stats.received, stats.delivered, stats.queued), (50, 1, 49));

    let mut reconnects = hub.reconnects();
    terminate_backends(&admin, &name).await;
    within("the reconnect", reconnects.changed()).await.unwrap();
    send(&admin, &channel, "after").await;

    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("after") {
        let read = within("a lent read", lent.next_ref())
            .await
            .unwrap()
            .unwrap();
        seen.push(match read {
            ListenerEvent::Notification(n) => n.payload.clone(),
            ListenerEvent::Lagged { dropped } => format!("L{dropped}"),
            ListenerEvent::Reconnected { generation } => format!("R{generation}"),
            other => panic!("unexpected {other:?}"),
        });
    }
    let expected: Vec<String> = (1..50)
        .map(|n| n.to_string())
        .chain(["R1".into(), "after".into()])
        .collect();
    assert_eq!(seen, expected);
    let stats = lent.stats();
    assert_eq!(
        (stats.received, stats.delivered, stats.dropped, stats.queued),
        (51, 51, 0, 0)
    );

    // The other subscription: one lent, then the rest as a batch.
    let one = within("one lent", batches.next_ref())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(one, ListenerEvent::Notification(n) if n.payload == "0"));
    send_numbered(&admin, &channel, 100, 3).await;
    eventually("the 3 routed", || {
        let received = batches.stats().received;
        async move { received == 54 }
    })
    .await;
    within("close", hub.close()).await.unwrap();
    let mut rest = Vec::new();
    while let Some(read) = within("the rest", batches.next_batch()).await {
        match read.unwrap() {
            ListenerEvent::Notification(batch) => {
                rest.extend(batch.iter().map(|n| n.payload.clone()))
            }
            ListenerEvent::Reconnected { generation } => rest.push(format!("R{generation}")),
            other => panic!("unexpected {other:?}"),
        }
    }
    let expected: Vec<String> = (1..50)
        .map(|n| n.to_string())
        .chain(["R1".into(), "after".into()])
        .chain((100..103).map(|n| n.to_string()))
        .collect();
    assert_eq!(rest, expected);
    let stats = batches.stats();
    assert_eq!(
        (stats.received, stats.delivered, stats.dropped, stats.queued),
        (54, 54, 0, 0)
    );
    let mut tail = Vec::new();
    while let Some(read) = within("the rest of the lent one", lent.next_ref()).await {
        match read.unwrap() {
            ListenerEvent::Notification(n) => tail.push(n.payload.clone()),
            _ => panic!("an unexpected marker"),
        }
    }
    assert_eq!(tail, ["100", "101", "102"]);
    assert!(within("the end of the lent one", lent.next_ref())
        .await
        .is_none());
}

/// Payloads of every length around the one-pass parse's eight-byte words,
/// ASCII and not, on an ASCII and a non-ASCII channel, in one read and one
/// at a time: the hub (lent) and a listener get each exactly as sent.
#[tokio::test]
async fn the_one_pass_parse_reads_every_length_and_position_of_real_notifications() {
    let mut payloads: Vec<String> = Vec::new();
    for length in 0..=40usize {
        let ascii: String = (0..length)
            .map(|i| (b'!' + (i % 90) as u8) as char)
            .collect();
        payloads.push(ascii.clone());
        if length > 0 {
            for at in [0, length / 2, length - 1] {
                let mut chars: Vec<char> = ascii.chars().collect();
                chars[at] = if at % 2 == 0 { 'é' } else { '中' };
                let payload: String = chars.into_iter().collect();
                // A transaction delivers identical notifications once.
                if !payloads.contains(&payload) {
                    payloads.push(payload);
                }
            }
            payloads.push("\u{7f}".repeat(length));
        }
    }
    for channel in [unique("rv_parse"), unique("rv_pärse_中")] {
        let hub = PgNotifyHub::connect(&TestServer::shared().url())
            .await
            .unwrap();
        let mut subscription = hub.subscribe(&channel).await.unwrap();
        let mut listener = PgListener::connect(&TestServer::shared().url())
            .await
            .unwrap();
        listener.listen(&channel).await.unwrap();
        let admin = raw_client(&TestServer::shared().url()).await;
        // All in one transaction (they arrive together), then one by one.
        admin
            .execute(
                "SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS t(p, i) ORDER BY i",
                &[&channel, &payloads],
            )
            .await
            .unwrap();
        for payload in &payloads {
            send(&admin, &channel, payload).await;
        }
        let expected: Vec<&String> = payloads.iter().chain(&payloads).collect();
        let mut lent = Vec::new();
        while lent.len() < expected.len() {
            match within("a lent read", subscription.next_ref())
                .await
                .unwrap()
                .unwrap()
            {
                ListenerEvent::Notification(n) => {
                    assert_eq!(n.channel, channel);
                    lent.push(n.payload.clone());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(lent.iter().collect::<Vec<_>>(), expected);
        let mut heard = Vec::new();
        while heard.len() < expected.len() {
            let n = next_notification(&mut listener).await;
            assert_eq!(n.channel, channel);
            heard.push(n.payload);
        }
        assert_eq!(heard.iter().collect::<Vec<_>>(), expected);
        let stats = subscription.stats();
        assert_eq!(
            (stats.received, stats.delivered, stats.queued),
            (expected.len() as u64, expected.len() as u64, 0)
        );
    }
}

/// `next_ref` in a spawned task of a multi-threaded runtime, with the lent
/// notification held across an `.await`: the read's future is `Send`, and
/// the lent notification too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_task_reads_lent_notifications_and_holds_them_across_awaits() {
    fn assert_send<T: Send>(value: T) -> T {
        value
    }
    let channel = unique("rv_spawned");
    let hub = PgNotifyHub::connect(&TestServer::shared().url())
        .await
        .unwrap();
    let mut subscription = hub.subscribe(&channel).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let read = assert_send(subscription.next_ref()).await;
            if let Some(Ok(ListenerEvent::Notification(n))) = read {
                tokio::task::yield_now().await;
                seen.push(n.payload.clone());
            }
        }
        seen
    });
    let admin = raw_client(&TestServer::shared().url()).await;
    send_numbered(&admin, &channel, 0, 3).await;
    assert_eq!(within("the reader", reader).await.unwrap(), ["0", "1", "2"]);
}
