//! Hostile review (r2) of the NATS relay: each test is marked with its
//! finding number.

mod relay_support;
mod support;

use pgorm::PgClient;
use pgorm_events::relay::{relay_lag, Relay};
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
