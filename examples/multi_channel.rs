//! One listener, several channels: route by channel name, and add or remove
//! channels while running.
//!
//! Run it with `cargo run --example multi_channel`.

use pgorm::listen::{PgListener, PgListenerConfig};
use pgorm::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (database_url, _server) = pgorm_testkit::database_url_or_spawn()?;
    let client = PgClient::connect(&database_url).await?;

    let config = PgListenerConfig::new().channels(["user_events", "order_events"]);
    let mut listener = PgListener::connect_with(&database_url, config).await?;
    listener.listen("payment_events").await?;
    println!("listening on {:?}", listener.channels());

    for (channel, payload) in [
        ("user_events", "user 7 signed up"),
        ("order_events", "order 42 placed"),
        ("payment_events", "order 42 paid"),
    ] {
        pgorm::notify(&client, channel, payload).await?;
    }
    for _ in 0..3 {
        let Some(message) = listener.next().await else {
            break;
        };
        let message = message?;
        match message.channel.as_str() {
            "user_events" => println!("users:    {}", message.payload),
            "order_events" => println!("orders:   {}", message.payload),
            "payment_events" => println!("payments: {}", message.payload),
            other => println!("unexpected channel {other}"),
        }
    }

    // Channels come and go at run time. Once unlisten returns, nothing more
    // arrives from that channel.
    listener.unlisten("user_events").await?;
    pgorm::notify(&client, "user_events", "not delivered").await?;
    pgorm::notify(&client, "order_events", "order 43 placed").await?;
    if let Some(message) = listener.next().await {
        let message = message?;
        println!("after unlisten: {} {}", message.channel, message.payload);
    }
    println!("now listening on {:?}", listener.channels());
    listener.close().await?;
    Ok(())
}
