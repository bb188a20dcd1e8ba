//! Shared helpers of pgorm-events' integration tests: every test runs
//! against the real PostgreSQL server that pgorm-testkit starts.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use pgorm::{GenericClient, PgClient};
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

/// A snapshot held open (REPEATABLE READ, first statement run) on a
/// connection of its own, until the transaction ends: vacuum removes no
/// dead row or index entry meanwhile.
pub async fn held_snapshot(url: &str) -> (PgClient, pgorm::PgTransaction) {
    let holder = PgClient::connect(url).await.unwrap();
    let snapshot = holder.transaction().await.unwrap();
    snapshot
        .execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", &[])
        .await
        .unwrap();
    snapshot
        .query_one("SELECT count(*) FROM pg_class", &[])
        .await
        .unwrap();
    (holder, snapshot)
}

/// A [`held_snapshot`] and 300,000 dead entries at the head of the due
/// index of `schema`: sweeps stay slow (over 10 ms) even once their hint
/// bits are set.
pub async fn held_snapshot_with_dead_entries(
    url: &str,
    client: &PgClient,
    schema: &str,
) -> (PgClient, pgorm::PgTransaction) {
    let held = held_snapshot(url).await;
    client
        .execute(
            &format!(
                "INSERT INTO {schema}.events (event_type, payload) \
                 SELECT 'gone', '{{}}' FROM generate_series(1, 300000)"
            ),
            &[],
        )
        .await
        .unwrap();
    client
        .execute(
            &format!("DELETE FROM {schema}.events WHERE event_type = 'gone'"),
            &[],
        )
        .await
        .unwrap();
    held
}
