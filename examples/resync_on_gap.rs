//! Keeping an in-memory cache exact with notifications, and resyncing it at
//! the gap markers: `Reconnected` (the connection was lost; notifications
//! sent meanwhile are gone) and `Lagged` (the queue was full and some were
//! dropped).
//!
//! The example provokes both: it terminates its own listener's backend, then
//! floods a deliberately tiny queue.
//!
//! Run it with `cargo run --example resync_on_gap`.

use std::collections::HashMap;
use std::time::Duration;

use pgorm::listen::{ListenerEvent, PgListener, PgListenerConfig, QueuePolicy};
use pgorm::prelude::*;

/// Prices by product id, kept in step with the `prices` table.
struct PriceCache {
    prices: HashMap<i32, i64>,
    full_reloads: u32,
}

impl PriceCache {
    async fn reload_all(&mut self, client: &PgClient) -> OrmResult<()> {
        self.prices = client
            .query("SELECT id, cents FROM prices", &[])
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        self.full_reloads += 1;
        Ok(())
    }

    async fn reload_one(&mut self, client: &PgClient, id: i32) -> OrmResult<()> {
        match client
            .query_opt("SELECT cents FROM prices WHERE id = $1", &[&id])
            .await?
        {
            Some(row) => self.prices.insert(id, row.get(0)),
            None => self.prices.remove(&id),
        };
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (database_url, _server) = pgorm_testkit::database_url_or_spawn()?;
    let client = PgClient::connect(&database_url).await?;
    client.execute("DROP TABLE IF EXISTS prices", &[]).await?;
    client
        .execute(
            "CREATE TABLE prices (id int PRIMARY KEY, cents bigint NOT NULL)",
            &[],
        )
        .await?;
    client
        .execute(
            "INSERT INTO prices SELECT g, 100 FROM generate_series(1, 10) g",
            &[],
        )
        .await?;

    // A tiny queue, so that the flood below overflows it.
    let config = PgListenerConfig::new()
        .channels(["price_changed"])
        .application_name("resync-example")
        .queue_capacity(8)
        .queue_policy(QueuePolicy::DropOldest);
    let mut listener = client.listener_with(config).await?;

    // Subscribe first, then load: nothing changed in between is missed.
    let mut cache = PriceCache {
        prices: HashMap::new(),
        full_reloads: 0,
    };
    cache.reload_all(&client).await?;

    // 1. A lost connection: terminate the listener's own backend.
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'resync-example'",
            &[],
        )
        .await?;
    handle_until_quiet(&mut listener, &mut cache, &client).await?;

    // 2. A burst larger than the queue while the consumer is away: ten
    // notifications in one transaction, for a queue of eight. (PostgreSQL
    // folds identical notifications of one transaction into one, so each
    // payload here is distinct.)
    client
        .execute(
            "WITH changed AS (UPDATE prices SET cents = cents + 1 RETURNING id)
             SELECT pg_notify('price_changed', id::text) FROM changed",
            &[],
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    handle_until_quiet(&mut listener, &mut cache, &client).await?;

    let stats = listener.stats();
    println!(
        "cache holds {} prices after {} full reloads; listener stats: {stats:?}",
        cache.prices.len(),
        cache.full_reloads
    );
    assert!(cache.prices.values().all(|cents| *cents == 101));
    listener.close().await?;
    Ok(())
}

/// Applies events until none arrives for half a second.
async fn handle_until_quiet(
    listener: &mut PgListener,
    cache: &mut PriceCache,
    client: &PgClient,
) -> OrmResult<()> {
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(500), listener.next_event()).await
    {
        match event? {
            ListenerEvent::Notification(notification) => {
                if let Ok(id) = notification.payload.parse() {
                    cache.reload_one(client, id).await?;
                }
            }
            ListenerEvent::Reconnected { generation } => {
                println!("reconnected (generation {generation}): reloading everything");
                cache.reload_all(client).await?;
            }
            ListenerEvent::Lagged { dropped } => {
                println!("{dropped} notifications dropped: reloading everything");
                cache.reload_all(client).await?;
            }
            other => println!("ignoring {other:?}"),
        }
    }
    Ok(())
}
