//! Shared helpers of pgorm-events' integration tests: every test runs
//! against the real PostgreSQL server that pgorm-testkit starts.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use pgorm::PgClient;
use pgorm_events::{Events, EventsConfig, QueueStats};
#[allow(unused_imports)]
pub use pgorm_testkit::{FaultProxy, ProxyMode, TestServer};

/// A deadline that only catches hangs: far above any normal duration.
pub const HANG: Duration = Duration::from_secs(30);

/// A fresh database on the shared server, a client on it, and migrated
/// tables in a schema of the given name.
pub async fn setup_schema(schema: &str) -> (String, PgClient, Events) {
    let url = TestServer::shared()
        .create_database()
        .await
        .expect("create a test database");
    let client = PgClient::connect(&url).await.expect("client");
    let events = Events::new(EventsConfig::new().schema(schema)).expect("events");
    events.migrate(&client).await.expect("migrate");
    (url, client, events)
}

/// As [`setup_schema`] with the default schema.
pub async fn setup() -> (String, PgClient, Events) {
    setup_schema("pgorm_events").await
}

/// Awaits `future`, failing the test if it takes longer than [`HANG`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(HANG, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not finish within {HANG:?}"),
    }
}

/// Polls `condition` every 10 ms until it holds, failing after [`HANG`].
pub async fn until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// The queue's stats, failing the test on an error.
pub async fn stats(events: &Events, client: &PgClient) -> QueueStats {
    events.stats(client).await.expect("stats")
}
