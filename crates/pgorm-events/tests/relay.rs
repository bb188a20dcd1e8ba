//! The relay against real PostgreSQL and a real nats-server: every
//! committed relay-lane event in the stream exactly once, in the stated
//! order, none from rolled-back transactions; workers leave the lane alone.

mod relay_support;
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgorm::{GenericClient, PgClient};
use pgorm_events::relay::{relay_lag, store_rules, Relay, RelayConfig, RelayError};
use pgorm_events::NewEvent;
use relay_support::*;
use serde_json::json;
use support::*;

const PRODUCERS: u64 = 8;
const TOTAL: u64 = 10_000;

/// One transaction a producer ran.
#[derive(Debug, Clone)]
struct Tx {
    /// Clock tick taken before BEGIN.
    begun: u64,
    /// Clock tick taken after COMMIT returned (u64::MAX: rolled back).
    committed: u64,
    /// (producer, tx) of the events it published, `size` of them.
    key: (u64, u64),
    size: u64,
}

async fn producer(
    client: PgClient,
    events: pgorm_events::Events,
    clock: Arc<AtomicU64>,
    producer: u64,
    quota: u64,
) -> Vec<Tx> {
    let mut done = Vec::new();
    let mut committed = 0;
    let mut tx_no = 0;
    while committed < quota {
        // Two transactions interleaved: the first publishes first (lower
        // ids) and commits last, after a pause that lets the relay run.
        let mut open = Vec::new();
        for _ in 0..2 {
            let size = ((tx_no % 5) + 1).min(quota.saturating_sub(committed).max(1));
            let rollback = tx_no % 7 == 3;
            let begun = clock.fetch_add(1, Ordering::SeqCst);
            let tx = client.transaction().await.expect("begin");
            for seq in 0..size {
                let event = NewEvent::new(
                    format!("order.p{producer}"),
                    &json!({"producer": producer, "tx": tx_no, "seq": seq, "rollback": rollback}),
                )
                .expect("event");
                events.publish(&tx, event).await.expect("publish");
            }
            if !rollback {
                committed += size;
            }
            open.push((tx, rollback, begun, tx_no, size));
            tx_no += 1;
        }
        if producer % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        while let Some((tx, rollback, begun, number, size)) = open.pop() {
            let committed_at = if rollback {
                tx.rollback().await.expect("rollback");
                u64::MAX
            } else {
                tx.commit().await.expect("commit");
                clock.fetch_add(1, Ordering::SeqCst)
            };
            done.push(Tx {
                begun,
                committed: committed_at,
                key: (producer, number),
                size,
            });
        }
    }
    assert_eq!(committed, quota, "producer {producer} overshot its quota");
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_concurrent_events_arrive_once_each_in_commit_order() {
    let nats = NatsServer::spawn().expect("nats-server");
    let (url, client, events) = setup().await;
    let relay = Relay::start(client.clone(), events.clone(), config(&nats))
        .await
        .expect("relay");

    let clock = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let client = PgClient::connect(&url).await.expect("producer client");
        tasks.push(tokio::spawn(producer(
            client,
            events.clone(),
            clock.clone(),
            p,
            TOTAL / PRODUCERS,
        )));
    }
    let mut txs = Vec::new();
    for task in tasks {
        txs.extend(within("producers", task).await.expect("producer"));
    }

    let js = jetstream(&nats).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while stream_len(&js).await < TOTAL || relay.stats().relayed < TOTAL {
        assert!(
            std::time::Instant::now() < deadline,
            "relay stalled: {:?}",
            relay.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing more arrives later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let messages = read_stream(&js).await;
    assert_eq!(
        messages.len() as u64,
        TOTAL,
        "stream holds exactly the committed events"
    );
    assert_each_once(&messages);

    // Stream position of each (producer, tx, seq).
    let mut position: HashMap<(u64, u64, u64), usize> = HashMap::new();
    for (index, message) in messages.iter().enumerate() {
        let p = &message.payload;
        assert_eq!(
            p["rollback"],
            json!(false),
            "an event of a rolled-back transaction was relayed"
        );
        assert_eq!(message.subject, format!("out.order.p{}", p["producer"]));
        let key = (
            p["producer"].as_u64().unwrap(),
            p["tx"].as_u64().unwrap(),
            p["seq"].as_u64().unwrap(),
        );
        assert!(position.insert(key, index).is_none());
    }
    // Every committed event is there; each transaction's events are
    // contiguous-in-order (publish order).
    let mut spans = Vec::new();
    for tx in txs.iter().filter(|tx| tx.committed != u64::MAX) {
        let at: Vec<usize> = (0..tx.size)
            .map(|seq| position[&(tx.key.0, tx.key.1, seq)])
            .collect();
        assert!(
            at.windows(2).all(|w| w[0] < w[1]),
            "transaction {:?} out of publish order",
            tx.key
        );
        spans.push((tx.begun, tx.committed, at[0], *at.last().unwrap()));
    }
    // Committed-before-began implies relayed-before: sweep the transactions
    // by begin tick, keeping the latest position of any that committed
    // earlier.
    let mut by_commit = spans.clone();
    by_commit.sort_by_key(|s| s.1);
    spans.sort_by_key(|s| s.0);
    let mut next = 0;
    let mut latest_before: Option<usize> = None;
    let mut checked = 0;
    for (begun, _, first, _) in &spans {
        while next < by_commit.len() && by_commit[next].1 < *begun {
            latest_before = latest_before.max(Some(by_commit[next].3));
            next += 1;
        }
        if let Some(latest) = latest_before {
            assert!(
                latest < *first,
                "a transaction that committed earlier was relayed later"
            );
            checked += 1;
        }
    }
    assert!(
        checked > 1000,
        "the order check compared too few transactions ({checked})"
    );

    let lag = relay_lag(&client, &events).await.expect("lag");
    assert_eq!(lag.events, 0);
    let stats = relay.stats();
    assert!(stats.active);
    assert_eq!(stats.relayed, TOTAL);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_leave_the_relay_lane_alone_and_other_types_to_workers() {
    let nats = NatsServer::spawn().expect("nats-server");
    let (_url, client, events) = setup_schema("relay_lanes").await;
    store_rules(&client, &events, &["order.*".to_owned()])
        .await
        .expect("rules");
    events
        .publish(
            &client,
            NewEvent::new("order.created", &json!({"n": 1})).unwrap(),
        )
        .await
        .unwrap();
    events
        .publish(
            &client,
            NewEvent::new("user.created", &json!({"n": 2})).unwrap(),
        )
        .await
        .unwrap();
    // A worker's claim only sees the worker lane.
    let claimed = events
        .claim(&client, 10, Duration::from_secs(30))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].event().event_type, "user.created");
    let lag = relay_lag(&client, &events).await.expect("lag");
    assert_eq!(lag.events, 1);

    let relay = Relay::start(
        client.clone(),
        events.clone(),
        config(&nats).rule("order.*"),
    )
    .await
    .expect("relay");
    until("relayed", || async { relay.stats().relayed == 1 }).await;
    let js = jetstream(&nats).await;
    let messages = read_stream(&js).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].subject, "out.order.created");
    assert_eq!(messages[0].payload, json!({"n": 1}));
    relay.shutdown().await;
}

#[tokio::test]
async fn bad_rules_are_rejected_before_the_server() {
    let (_url, client, events) = setup_schema("relay_bad_rules").await;
    for pattern in ["order created", "order.>", "a..b", "a.**.b", ""] {
        let error = store_rules(&client, &events, &[pattern.to_owned()])
            .await
            .expect_err(pattern);
        assert!(matches!(error, RelayError::Setting { .. }), "{error}");
    }
    let error = Relay::start(
        client.clone(),
        events.clone(),
        RelayConfig::new("nats://127.0.0.1:1"),
    )
    .await
    .expect_err("no rules");
    assert!(matches!(
        error,
        RelayError::Setting {
            setting: "rules",
            ..
        }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_transaction_elsewhere_does_not_hold_the_relay_back() {
    let nats = NatsServer::spawn().expect("nats-server");
    let (_url, client, events) = setup_schema("relay_long_tx").await;
    let relay = Relay::start(client.clone(), events.clone(), config(&nats))
        .await
        .expect("relay");
    // A transaction with a transaction id, open for the whole test, in
    // another database of the same cluster.
    let other = PgClient::connect(&TestServer::shared().create_database().await.unwrap())
        .await
        .unwrap();
    let long = other.transaction().await.unwrap();
    long.query("CREATE TABLE held (x int)", &[]).await.unwrap();
    // And one in this database that published an event and stays open.
    let open = client.transaction().await.unwrap();
    events
        .publish(
            &open,
            NewEvent::new("order.open", &json!({"n": 0})).unwrap(),
        )
        .await
        .unwrap();

    events
        .publish(
            &client,
            NewEvent::new("order.later", &json!({"n": 1})).unwrap(),
        )
        .await
        .unwrap();
    until("relayed despite the open transactions", || async {
        relay.stats().relayed == 1
    })
    .await;
    open.commit().await.unwrap();
    until("the late commit is relayed too", || async {
        relay.stats().relayed == 2
    })
    .await;
    let js = jetstream(&nats).await;
    let messages = read_stream(&js).await;
    let subjects: Vec<&str> = messages.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(subjects, ["out.order.later", "out.order.open"]);
    long.rollback().await.unwrap();
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_events_follow_the_completed_retention() {
    let nats = NatsServer::spawn().expect("nats-server");
    let url = TestServer::shared().create_database().await.unwrap();
    let client = PgClient::connect(&url).await.unwrap();
    let events = pgorm_events::Events::new(
        pgorm_events::EventsConfig::new()
            .schema("relay_keep")
            .keep_completed(Duration::from_secs(3600)),
    )
    .unwrap();
    events.migrate(&client).await.unwrap();
    let relay = Relay::start(client.clone(), events.clone(), config(&nats))
        .await
        .expect("relay");
    events
        .publish(
            &client,
            NewEvent::new("order.kept", &json!({"n": 7})).unwrap(),
        )
        .await
        .unwrap();
    until("relayed", || async { relay.stats().relayed == 1 }).await;
    let kept: i64 = client
        .query_one(
            "SELECT count(*) FROM relay_keep.completed_events WHERE event_type = 'order.kept'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "the relayed event is kept like a completed one");
    assert_eq!(relay_lag(&client, &events).await.unwrap().events, 0);
    relay.shutdown().await;
}
