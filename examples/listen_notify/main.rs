//! The basic LISTEN/NOTIFY example: a listener on a dedicated connection,
//! and a publisher (here, the same program) sending it three notifications.
//!
//! Run it with `cargo run --example listen_notify`. With `DATABASE_URL` set
//! it uses that database; without, it starts a throwaway PostgreSQL server.

use pgorm::listen::PgListener;
use pgorm::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (database_url, _server) = pgorm_testkit::database_url_or_spawn()?;

    let mut listener = PgListener::connect(&database_url).await?;
    listener.listen("order_events").await?;
    println!("listening on order_events");

    // Anyone can publish: another service, a trigger, psql. Here, a task of
    // this program, through the pool.
    let client = PgClient::connect(&database_url).await?;
    let publisher = tokio::spawn(async move {
        for order in 1..=3 {
            pgorm::notify(&client, "order_events", &format!("order {order} paid")).await?;
        }
        OrmResult::Ok(())
    });

    let mut received = 0;
    while let Some(message) = listener.next().await {
        let message = message?;
        println!("{} {}", message.channel, message.payload);
        received += 1;
        if received == 3 {
            break;
        }
    }
    publisher.await??;

    let stats = listener.stats();
    println!(
        "received {}, dropped {}, reconnects {}",
        stats.received, stats.dropped, stats.reconnects
    );
    listener.close().await?;
    Ok(())
}
