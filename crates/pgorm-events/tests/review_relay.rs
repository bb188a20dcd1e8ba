//! Hostile review (r2) of the NATS relay: each test is marked with its
//! finding number.

mod relay_support;
mod support;

use pgorm::{GenericClient, PgClient};
use pgorm_events::relay::{relay_lag, store_rules, Relay};
use pgorm_events::{Events, EventsConfig, NewEvent};
use relay_support::*;
use serde_json::json;
use support::*;

// Finding 5: the JetStream message id is `<schema>:<event id>` only. Two
// databases (shards, tenants, or two services on the default schema
// `pgorm_events`) relaying into one stream produce the same ids, so the
// stream's duplicate window silently drops the second database's events;
// the relay counts them as "duplicates" and deletes the rows. Nothing in the
// stream and nothing in PostgreSQL is left of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding5_two_databases_relaying_into_one_stream_lose_no_event() {
    let nats = NatsServer::spawn().expect("nats-server");
    let js = jetstream(&nats).await;
    let events = Events::new(EventsConfig::new()).unwrap();
    let mut relays = Vec::new();
    let mut clients = Vec::new();
    for shard in 0..2 {
        let url = TestServer::shared().create_database().await.unwrap();
        let client = PgClient::connect(&url).await.unwrap();
        events.migrate(&client).await.unwrap();
        let relay = Relay::start(client.clone(), events.clone(), config(&nats))
            .await
            .unwrap();
        events
            .publish(
                &client,
                NewEvent::new("order.created", &json!({ "shard": shard })).unwrap(),
            )
            .await
            .unwrap();
        // Relayed (acknowledged and marked) before the next shard starts.
        until("the shard's event relayed", || async {
            relay_lag(&client, &events).await.unwrap().events == 0
        })
        .await;
        relays.push(relay);
        clients.push(client);
    }
    let messages = read_stream(&js).await;
    let stats: Vec<_> = relays.iter().map(|relay| relay.stats()).collect();
    for relay in relays {
        relay.shutdown().await;
    }
    let shards: Vec<_> = messages
        .iter()
        .map(|message| message.payload["shard"].clone())
        .collect();
    assert_eq!(
        shards.len(),
        2,
        "one event per database was relayed and deleted, the stream holds {shards:?}; \
         relay stats {stats:?}"
    );
}

// Finding 6: an event too large for the NATS server (max_payload, 1 MB by
// default; a jsonb payload can be far larger) fails its publish on every
// round. The relay retries the same batch, head first in id order, forever:
// every later relay-lane event is stuck behind it, with only `errors`
// growing. The docs promise an event the relay cannot publish goes back to
// the workers with its reason (for a bad subject) and "no head-of-line
// blocking".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding6_one_oversized_event_does_not_stop_the_relay() {
    let nats = NatsServer::spawn().expect("nats-server");
    let js = jetstream(&nats).await;
    let url = TestServer::shared().create_database().await.unwrap();
    let client = PgClient::connect(&url).await.unwrap();
    let events = Events::new(EventsConfig::new()).unwrap();
    events.migrate(&client).await.unwrap();
    let relay = Relay::start(client.clone(), events.clone(), config(&nats))
        .await
        .unwrap();
    let big = "x".repeat(2 * 1024 * 1024);
    events
        .publish(
            &client,
            NewEvent::new("order.big", &json!({ "big": big })).unwrap(),
        )
        .await
        .unwrap();
    events
        .publish(
            &client,
            NewEvent::new("order.small", &json!({ "small": true })).unwrap(),
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut relayed = 0;
    while started.elapsed() < std::time::Duration::from_secs(15) {
        relayed = stream_len(&js).await;
        if relayed >= 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let stats = relay.stats();
    let lag = relay_lag(&client, &events).await.unwrap();
    relay.shutdown().await;
    assert_eq!(
        relayed, 1,
        "the small event behind an oversized one was not relayed within 15 s; \
         lag {lag:?}, stats {stats:?}"
    );
}

// Finding 7: relay-lane events still fire the wake-up trigger: each such
// commit NOTIFYs (taking the cluster-wide notify lock the relay page names
// as the first reason to move to the relay) and wakes every worker pool of
// the schema for a claim that can find nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding7_relay_lane_events_send_no_worker_wake_up() {
    use pgorm::tokio_postgres::{connect, AsyncMessage, NoTls};
    let url = TestServer::shared().create_database().await.unwrap();
    let client = PgClient::connect(&url).await.unwrap();
    let events = Events::new(EventsConfig::new()).unwrap();
    events.migrate(&client).await.unwrap();
    store_rules(&client, &events, &["order.**".to_owned()])
        .await
        .unwrap();

    let (listener, mut connection) = connect(&url, NoTls).await.unwrap();
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let Ok(AsyncMessage::Notification(note)) = message {
                let _ = sender.send(note.channel().to_owned());
            }
        }
    });
    let channel = EventsConfig::new().wakeup_channel();
    listener
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .await
        .unwrap();

    // A relay-lane event, then a worker-lane one, each committed alone:
    // notifications arrive in commit order.
    events
        .publish(&client, NewEvent::new("order.created", &json!({})).unwrap())
        .await
        .unwrap();
    events
        .publish(&client, NewEvent::new("n", &json!({})).unwrap())
        .await
        .unwrap();
    let lane: Vec<bool> = client
        .query("SELECT relay FROM pgorm_events.events ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(lane, [true, false]);
    within("the worker-lane wake-up", received.recv())
        .await
        .unwrap();
    // The wake-up for the worker event has arrived; was there another one?
    listener.batch_execute("SELECT 1").await.unwrap();
    let mut wake_ups = 1;
    while received.try_recv().is_ok() {
        wake_ups += 1;
    }
    assert_eq!(wake_ups, 1, "a relay-lane commit woke the workers");
}
