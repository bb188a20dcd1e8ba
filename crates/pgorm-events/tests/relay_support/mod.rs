//! Helpers of the relay tests: a throwaway nats-server, a relay in a
//! runtime of its own (so a test can kill it by dropping the runtime), and
//! reading the whole stream back.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use pgorm::PgClient;
use pgorm_events::relay::{Relay, RelayConfig};
use pgorm_events::Events;
pub use pgorm_testkit::NatsServer;

/// The stream every relay test publishes to.
pub const STREAM: &str = "RELAYTEST";

/// A relay config for `nats` relaying `order.**` quickly.
pub fn config(nats: &NatsServer) -> RelayConfig {
    RelayConfig::new(nats.url())
        .stream(STREAM)
        .subject_prefix("out")
        .rule("order.**")
        .batch_size(500)
        .takeover(Duration::from_secs(2))
        .ack_timeout(Duration::from_secs(3))
}

/// A relay running on a runtime of its own: dropping the runtime is a crash
/// (its tasks and connections vanish without any cleanup).
pub struct Isolated {
    pub runtime: Option<tokio::runtime::Runtime>,
    pub relay: Arc<Relay>,
}

impl Isolated {
    /// Starts a relay with its own pool on its own runtime.
    pub async fn start(url: &str, events: &Events, config: RelayConfig) -> Isolated {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("relay runtime");
        let url = url.to_owned();
        let events = events.clone();
        let relay = runtime
            .spawn(async move {
                let client = PgClient::connect(&url).await.expect("relay client");
                Relay::start(client, events, config)
                    .await
                    .expect("relay start")
            })
            .await
            .expect("relay task");
        Isolated {
            runtime: Some(runtime),
            relay: Arc::new(relay),
        }
    }

    /// Kills the relay: its runtime is dropped mid-flight.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One message of the stream.
#[derive(Debug, Clone)]
pub struct Relayed {
    pub sequence: u64,
    pub subject: String,
    pub event_id: i64,
    pub payload: serde_json::Value,
}

/// A JetStream context on `nats`.
pub async fn jetstream(nats: &NatsServer) -> jetstream::Context {
    let client = async_nats::connect(nats.url()).await.expect("nats connect");
    jetstream::new(client)
}

/// Every message of the stream, in stream order.
pub async fn read_stream(js: &jetstream::Context) -> Vec<Relayed> {
    let mut stream = js.get_stream(STREAM).await.expect("stream");
    let info = stream.info().await.expect("stream info").clone();
    let mut out = Vec::with_capacity(info.state.messages as usize);
    for sequence in info.state.first_sequence..=info.state.last_sequence {
        if info.state.messages == 0 {
            break;
        }
        let message = stream.get_raw_message(sequence).await.expect("message");
        let event_id = message
            .headers
            .get("Pgorm-Event-Id")
            .expect("event id header")
            .as_str()
            .parse()
            .expect("numeric id");
        out.push(Relayed {
            sequence,
            subject: message.subject.to_string(),
            event_id,
            payload: serde_json::from_slice(&message.payload).expect("json payload"),
        });
    }
    out
}

/// How many messages the stream holds (0 before it exists).
pub async fn stream_len(js: &jetstream::Context) -> u64 {
    match js.get_stream(STREAM).await {
        Ok(mut stream) => stream.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Fails the test if any event id is in the stream twice; returns the count
/// per id.
pub fn assert_each_once(messages: &[Relayed]) -> HashMap<i64, usize> {
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for message in messages {
        *seen.entry(message.event_id).or_default() += 1;
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "events in the stream more than once: {doubled:?}"
    );
    seen
}
