//! The transactional outbox with pgorm-events: an order and the event that
//! announces it are written in one transaction, so there is never an order
//! without its event or an event without its order. A worker pool then
//! handles the event in a transactional handler: the shipment row and the
//! event's completion commit together, so a retry can never ship twice.
//!
//! Run it with `cargo run --example outbox` (it starts a throwaway server
//! unless `DATABASE_URL` is set).

use std::time::Duration;

use pgorm::prelude::*;
use pgorm_events::{EventWorkers, Events, EventsConfig, NewEvent, Router, WorkerConfig};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (database_url, _server) = pgorm_testkit::database_url_or_spawn()?;
    let client = PgClient::connect(&database_url).await?;
    client
        .execute("DROP TABLE IF EXISTS shipments", &[])
        .await?;
    client.execute("DROP TABLE IF EXISTS orders", &[]).await?;
    client
        .execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, item text NOT NULL)",
            &[],
        )
        .await?;
    client
        .execute(
            "CREATE TABLE shipments (order_id bigint PRIMARY KEY REFERENCES orders, event_id bigint NOT NULL)",
            &[],
        )
        .await?;

    let events = Events::new(EventsConfig::new().schema("outbox_example"))?;
    events.migrate(&client).await?;

    // The handler ships the order inside the transaction that completes the
    // event: both commit, or neither does.
    let router = Router::new().on_transactional("order.created", |event, tx| async move {
        let order_id = event.payload["order_id"]
            .as_i64()
            .ok_or("order_id missing")?;
        tx.execute(
            "INSERT INTO shipments (order_id, event_id) VALUES ($1, $2)",
            &[&order_id, &event.id],
        )
        .await?;
        Ok(tx)
    });
    let workers = EventWorkers::start(
        client.clone(),
        events.clone(),
        router,
        WorkerConfig::new().concurrency(4),
    )
    .await?;

    // The outbox write: the order and its event in the caller's transaction.
    for (id, item) in [(1i64, "kettle"), (2, "teapot"), (3, "mugs")] {
        let tx = client.transaction().await?;
        tx.execute("INSERT INTO orders VALUES ($1, $2)", &[&id, &item])
            .await?;
        events
            .publish(
                &tx,
                NewEvent::new("order.created", &json!({ "order_id": id }))?
                    .idempotency_key(format!("order-{id}-created")),
            )
            .await?;
        tx.commit().await?;
    }

    // A rolled-back order leaves no event behind.
    let tx = client.transaction().await?;
    tx.execute("INSERT INTO orders VALUES (4, 'nothing')", &[])
        .await?;
    events
        .publish(
            &tx,
            NewEvent::new("order.created", &json!({ "order_id": 4 }))?,
        )
        .await?;
    tx.rollback().await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while workers.stats().processed < 3 {
        if tokio::time::Instant::now() > deadline {
            return Err("the events were not handled within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let shipped: i64 = client
        .query_one("SELECT count(*) FROM shipments", &[])
        .await?
        .get(0);
    let stats = events.stats(&client).await?;
    println!(
        "shipped {shipped} orders; queue depth {}, dead {}",
        stats.depth, stats.dead
    );
    assert_eq!(shipped, 3);
    assert_eq!(stats.depth, 0);

    workers.shutdown().await?;
    Ok(())
}
