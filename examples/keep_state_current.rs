//! Load state once and keep it current: `on_connect` (re)loads a price table
//! into memory on every session, before any of that session's notifications;
//! each notification then updates one row. A hub handler does the same with
//! `on_events`, and `shutdown` waits for it.
//!
//! Run it with `cargo run --example keep_state_current`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgorm::listen::ListenerSession;
use pgorm::prelude::*;

type Prices = Arc<Mutex<HashMap<i32, i64>>>;

/// Replaces `prices` with the whole table, read on `client`.
async fn load_all(
    client: &tokio_postgres::Client,
    prices: &Prices,
) -> Result<(), tokio_postgres::Error> {
    let rows = client
        .query("SELECT id, price FROM menu_prices", &[])
        .await?;
    let fresh: HashMap<i32, i64> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    *prices.lock().unwrap() = fresh;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (database_url, _server) = pgorm_testkit::database_url_or_spawn()?;
    let client = PgClient::connect(&database_url).await?;
    client
        .execute(
            "CREATE TABLE IF NOT EXISTS menu_prices (id int PRIMARY KEY, price bigint NOT NULL)",
            &[],
        )
        .await?;
    client.execute("TRUNCATE menu_prices", &[]).await?;
    client
        .execute("INSERT INTO menu_prices VALUES (1, 100), (2, 200)", &[])
        .await?;

    // A listener: on_connect runs after "menu_prices" is listened to, so nothing
    // committed after its snapshot can be missed.
    let prices: Prices = Arc::default();
    let loaded = prices.clone();
    let config = PgListenerConfig::new()
        .channels(["menu_prices"])
        .retry_first_connect(true)
        .on_connect(move |session: ListenerSession| {
            let prices = loaded.clone();
            async move {
                load_all(session.client(), &prices).await?;
                println!(
                    "session {}: loaded {} prices",
                    session.generation(),
                    prices.lock().unwrap().len()
                );
                Ok::<_, tokio_postgres::Error>(())
            }
        });
    let mut listener = PgListener::connect_with(&database_url, config).await?;
    assert_eq!(prices.lock().unwrap().len(), 2);

    // Another task may change channels through a handle while this one reads.
    let handle = listener.handle();
    tokio::spawn(async move { handle.listen("audit").await }).await??;

    let tx = client.transaction().await?;
    tx.execute("UPDATE menu_prices SET price = 150 WHERE id = 1", &[])
        .await?;
    pgorm::notify(&tx, "menu_prices", "1").await?;
    tx.commit().await?;

    while let Some(event) = listener.next_event().await {
        match event? {
            ListenerEvent::Notification(n) => {
                let id: i32 = n.payload.parse()?;
                let row = client
                    .query_opt("SELECT price FROM menu_prices WHERE id = $1", &[&id])
                    .await?;
                let mut prices = prices.lock().unwrap();
                match row {
                    Some(row) => prices.insert(id, row.get(0)),
                    None => prices.remove(&id),
                };
                break;
            }
            // on_connect has reloaded everything before the Reconnected
            // marker; a Lagged marker means this consumer fell behind.
            ListenerEvent::Lagged { .. } => {
                let fresh = client
                    .query("SELECT id, price FROM menu_prices", &[])
                    .await?;
                *prices.lock().unwrap() =
                    fresh.iter().map(|row| (row.get(0), row.get(1))).collect();
            }
            _ => {}
        }
    }
    assert_eq!(prices.lock().unwrap()[&1], 150);
    println!("listener: price 1 is now {}", prices.lock().unwrap()[&1]);
    listener.close().await?;

    // A hub handler that sees the gap markers, then a graceful shutdown.
    let hub = client.hub().await?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let guard = hub
        .on_events(
            "menu_prices",
            HandlerOptions::new(),
            move |event: ListenerEvent| {
                let seen = record.clone();
                async move {
                    match event {
                        ListenerEvent::Notification(n) => seen.lock().unwrap().push(n.payload),
                        _gap => seen.lock().unwrap().clear(), // Reconnected or Lagged: start over
                    }
                    Ok::<(), std::io::Error>(())
                }
            },
        )
        .await?;
    let mut audit = hub.subscribe("menu_prices").await?;
    client
        .notify_batch([("menu_prices", "1"), ("menu_prices", "2")])
        .await?;
    while audit.stats().delivered < 2 {
        audit.next().await.transpose()?;
    }
    let SubscriptionStats {
        received,
        delivered,
        queued,
        dropped,
        ..
    } = audit.stats();
    assert_eq!(received, delivered + queued as u64 + dropped);
    let HubStats {
        received,
        routed,
        unrouted,
        hook_panics,
        ..
    } = hub.stats();
    assert_eq!(received, routed + unrouted);
    println!(
        "hub: received {received}, routed {routed}, unrouted {unrouted}, hook panics {hook_panics}"
    );

    hub.shutdown(Duration::from_secs(5)).await?; // waits for the handler's queued and running calls
    assert_eq!(*seen.lock().unwrap(), ["1", "2"]);
    println!("handler: {:?}", guard.stats());
    Ok(())
}
