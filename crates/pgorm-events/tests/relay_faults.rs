//! The relay under faults: killed between publish and mark, nats-server
//! restarted, PostgreSQL restarted, and two relays on one table.

mod relay_support;
mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pgorm::{GenericClient, PgClient};
use pgorm_events::relay::{relay_lag, Relay};
use pgorm_events::{Events, EventsConfig, NewEvent};
use relay_support::*;
use serde_json::json;
use support::*;

fn order(n: u64) -> NewEvent {
    NewEvent::new("order.placed", &json!({"n": n})).expect("event")
}

async fn publish_range(client: &PgClient, events: &Events, range: std::ops::Range<u64>) {
    let batch: Vec<NewEvent> = range.map(order).collect();
    events.publish_batch(client, batch).await.expect("publish");
}

/// Waits until the stream holds `count` messages and the table no relay
/// rows, then returns the messages (each checked to be there once).
async fn settle(
    js: &async_nats::jetstream::Context,
    client: &PgClient,
    events: &Events,
    count: u64,
) -> Vec<Relayed> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let lag = relay_lag(client, events)
            .await
            .map(|l| l.events)
            .unwrap_or(-1);
        if lag == 0 && stream_len(js).await >= count {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "relay did not settle (lag {lag})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let messages = read_stream(js).await;
    assert_each_once(&messages);
    messages
}

fn payload_numbers(messages: &[Relayed]) -> HashSet<u64> {
    messages
        .iter()
        .map(|m| m.payload["n"].as_u64().expect("n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_publish_and_mark_republishes_without_doubles() {
    let nats = NatsServer::spawn().expect("nats-server");
    let (url, client, events) = setup_schema("relay_crash").await;
    pgorm_events::relay::store_rules(&client, &events, &["order.**".to_owned()])
        .await
        .unwrap();
    publish_range(&client, &events, 0..2000).await;

    // Hold row locks on every relay row: the relay can read and publish
    // them, but its marking DELETE waits.
    let blocker = PgClient::connect(&url).await.unwrap();
    let hold = blocker.transaction().await.unwrap();
    hold.query(
        "SELECT id FROM relay_crash.events WHERE relay FOR UPDATE",
        &[],
    )
    .await
    .unwrap();

    let mut first = Isolated::start(&url, &events, config(&nats)).await;
    let js = jetstream(&nats).await;
    until("the first batch is in the stream", || async {
        stream_len(&js).await >= 500
    })
    .await;
    until("the relay waits to mark", || async {
        let rows = client
            .query(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query LIKE 'DELETE FROM%'",
                &[],
            )
            .await
            .unwrap();
        rows[0].get::<_, i64>(0) == 1
    })
    .await;
    // Crash: the runtime vanishes mid-batch; its waiting DELETE is ended too.
    first.kill();
    client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND query LIKE 'DELETE FROM%'",
            &[],
        )
        .await
        .unwrap();
    hold.rollback().await.unwrap();
    assert_eq!(first.relay.stats().relayed, 0, "nothing was marked");
    let published_before = stream_len(&js).await;
    assert!(published_before >= 500);
    assert_eq!(
        relay_lag(&client, &events).await.unwrap().events,
        2000,
        "all still unmarked"
    );

    let second = Isolated::start(&url, &events, config(&nats)).await;
    let messages = settle(&js, &client, &events, 2000).await;
    assert_eq!(messages.len(), 2000);
    assert_eq!(payload_numbers(&messages), (0..2000).collect());
    let stats = second.relay.stats();
    assert_eq!(stats.relayed, 2000);
    assert!(
        stats.duplicates >= published_before,
        "republished batch was deduplicated: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restart_during_relaying_loses_and_doubles_nothing() {
    let nats = NatsServer::spawn().expect("nats-server");
    let (_url, client, events) = setup_schema("relay_nats_restart").await;
    let relay = Relay::start(
        client.clone(),
        events.clone(),
        config(&nats).batch_size(100),
    )
    .await
    .expect("relay");
    let js = jetstream(&nats).await;
    let mut n = 0;
    for round in 0..30 {
        publish_range(&client, &events, n..n + 100).await;
        n += 100;
        if round == 10 {
            until("some relayed", || async { relay.stats().relayed > 0 }).await;
            nats.restart().expect("restart nats");
        }
        if round == 20 {
            nats.kill().expect("kill nats");
            tokio::time::sleep(Duration::from_millis(300)).await;
            nats.start().expect("start nats");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let js = if stream_len(&js).await == 0 {
        jetstream(&nats).await
    } else {
        js
    };
    let messages = settle(&js, &client, &events, n).await;
    assert_eq!(messages.len() as u64, n);
    assert_eq!(payload_numbers(&messages), (0..n).collect());
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_during_relaying_loses_and_doubles_nothing() {
    let nats = NatsServer::spawn().expect("nats-server");
    let server = TestServer::spawn().expect("own server");
    let url = server.create_database().await.expect("database");
    let client = PgClient::connect(&url).await.expect("client");
    let events = Events::new(EventsConfig::new()).unwrap();
    events.migrate(&client).await.unwrap();
    let relay = Relay::start(
        client.clone(),
        events.clone(),
        config(&nats).batch_size(100),
    )
    .await
    .expect("relay");
    let js = jetstream(&nats).await;
    publish_range(&client, &events, 0..3000).await;
    until("relaying", || async { relay.stats().relayed > 0 }).await;
    server.restart().expect("restart postgres");
    // The pool drops dead connections as they fail; retry until fresh.
    let mut published = false;
    for _ in 0..100 {
        if events
            .publish_batch(&client, (3000..4000).map(order).collect())
            .await
            .is_ok()
        {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(published, "could not publish after the restart");
    // Once more, while the relay works through the second part.
    server.restart().expect("restart postgres again");
    let messages = within("settle", async {
        loop {
            if let Ok(lag) = relay_lag(&client, &events).await {
                if lag.events == 0 && stream_len(&js).await >= 4000 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        read_stream(&js).await
    })
    .await;
    assert_each_once(&messages);
    assert_eq!(messages.len(), 4000);
    assert_eq!(payload_numbers(&messages), (0..4000).collect());
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_one_publishes_and_the_other_takes_over_when_it_dies() {
    let nats = NatsServer::spawn().expect("nats-server");
    let (url, client, events) = setup_schema("relay_standby").await;
    let takeover = Duration::from_secs(2);
    let mut a = Isolated::start(&url, &events, config(&nats).takeover(takeover)).await;
    let mut b = Isolated::start(&url, &events, config(&nats).takeover(takeover)).await;
    until("one is active", || async {
        a.relay.stats().active || b.relay.stats().active
    })
    .await;
    publish_range(&client, &events, 0..1000).await;
    let js = jetstream(&nats).await;
    settle(&js, &client, &events, 1000).await;
    let (sa, sb) = (a.relay.stats(), b.relay.stats());
    assert!(sa.active != sb.active, "exactly one active: {sa:?} {sb:?}");
    let (active, standby) = if sa.active {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert_eq!(active.relay.stats().relayed, 1000);
    assert_eq!(standby.relay.stats().relayed, 0, "the standby published");

    active.kill();
    let killed = Instant::now();
    until("the standby takes over", || async {
        standby.relay.stats().active
    })
    .await;
    let took = killed.elapsed();
    eprintln!("takeover after {took:?} (configured {takeover:?})");
    // Generous margin over the configured time: a loaded machine is slow.
    assert!(took < takeover * 3, "takeover took {took:?}");
    publish_range(&client, &events, 1000..2000).await;
    let messages = settle(&js, &client, &events, 2000).await;
    assert_eq!(payload_numbers(&messages), (0..2000).collect());
    assert_eq!(standby.relay.stats().relayed, 1000);
}
