//! Typed events: a `Channel<T>` carries `T` as JSON. Publishing serialises
//! and checks the size; subscribing decodes, and a payload that does not
//! decode is an error for that message only.
//!
//! Run it with `cargo run --example typed_events`.

use pgorm::listen::Channel;
use pgorm::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OrderEvent {
    Placed { order_id: i64, cents: i64 },
    Paid { order_id: i64 },
    Shipped { order_id: i64, carrier: String },
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (database_url, _server) = pgorm_testkit::database_url_or_spawn()?;
    let client = PgClient::connect(&database_url).await?;
    let orders = Channel::<OrderEvent>::new("order_events")?;

    let hub = client.hub().await?;
    let mut events = hub.subscribe_typed(&orders).await?;

    orders
        .notify(
            &client,
            &OrderEvent::Placed {
                order_id: 7,
                cents: 2599,
            },
        )
        .await?;
    // A foreign publisher sends something else on the same channel.
    client.notify("order_events", "not json at all").await?;
    orders
        .notify(&client, &OrderEvent::Paid { order_id: 7 })
        .await?;
    orders
        .notify(
            &client,
            &OrderEvent::Shipped {
                order_id: 7,
                carrier: "DHL".into(),
            },
        )
        .await?;

    for _ in 0..4 {
        match events.next().await {
            Some(Ok(event)) => println!("event: {event:?}"),
            Some(Err(OrmError::Decode {
                payload, source, ..
            })) => {
                println!("skipped a payload that is not an OrderEvent ({source}): {payload:?}")
            }
            Some(Err(other)) => return Err(other.into()),
            None => break,
        }
    }
    hub.close().await?;
    Ok(())
}
