//! A busy channel read a batch at a time: `PgListener::next_batch` hands out
//! everything that arrived together, each notification viewed in place
//! (`&str` channel and payload, nothing copied). Here a price feed keeps
//! the latest price per symbol; only the notifications worth keeping are
//! made owned. A gap marker (reconnect or drop) in the batch says the
//! prices may be stale: the example reloads them there.
//!
//! Run it with `cargo run --example batch_read`.

use std::collections::HashMap;
use std::time::Duration;

use pgorm::listen::{ListenerEvent, PgListener, PgListenerConfig, PgNotification};
use pgorm::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (database_url, _server) = pgorm_testkit::database_url_or_spawn()?;
    let config = PgListenerConfig::new().channels(["price_ticks"]);
    let mut listener = PgListener::connect_with(&database_url, config).await?;

    // A feed: 10 000 ticks of four symbols, "symbol:price:sequence",
    // committed in one transaction. (PostgreSQL folds identical
    // notifications of one transaction into one: the sequence keeps them
    // apart.)
    let client = PgClient::connect(&database_url).await?;
    client
        .execute(
            "SELECT pg_notify('price_ticks', (ARRAY['ACME','GLOBEX','INITECH','HOOLI'])[1 + n % 4]
                                             || ':' || (100 + n % 7)::text || ':' || n::text)
             FROM generate_series(0, 9999) AS n",
            &[],
        )
        .await?;

    let mut latest: HashMap<String, u32> = HashMap::new();
    // The one notification of the whole feed that we keep beyond its batch.
    let mut first_hooli: Option<PgNotification> = None;
    let (mut ticks, mut batches) = (0, 0);
    while ticks < 10_000 {
        let batch = tokio::time::timeout(Duration::from_secs(10), listener.next_batch())
            .await?
            .ok_or("the listener stopped")??;
        batches += 1;
        for event in batch {
            match event {
                ListenerEvent::Notification(tick) => {
                    ticks += 1;
                    // In place: `payload()` borrows what the listener read.
                    let mut fields = tick.payload().split(':');
                    let (Some(symbol), Some(price)) = (fields.next(), fields.next()) else {
                        continue;
                    };
                    let price: u32 = price.parse()?;
                    match latest.get_mut(symbol) {
                        Some(known) => *known = price,
                        None => {
                            latest.insert(symbol.to_owned(), price);
                        }
                    }
                    if symbol == "HOOLI" && first_hooli.is_none() {
                        // Owned only on request.
                        first_hooli = Some(tick.to_notification());
                    }
                }
                // Something was missed exactly here: start over from the
                // source of truth (here, there is none to reload from).
                ListenerEvent::Reconnected { .. } | ListenerEvent::Lagged { .. } => latest.clear(),
                _ => {}
            }
        }
    }
    let mut prices: Vec<_> = latest.into_iter().collect();
    prices.sort();
    println!("{ticks} ticks in {batches} batches; latest prices: {prices:?}");
    if let Some(tick) = first_hooli {
        println!("first HOOLI tick: {:?}", tick.payload);
    }
    let stats = listener.stats();
    println!(
        "received {}, delivered {}, queued {}, dropped {}",
        stats.received, stats.delivered, stats.queued, stats.dropped
    );
    listener.close().await?;
    Ok(())
}
