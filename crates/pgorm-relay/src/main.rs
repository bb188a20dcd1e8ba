//! `pgorm-relay`: runs a pgorm-events relay from the events table of a
//! PostgreSQL database to a NATS JetStream stream, and prints its progress
//! (relayed, rate, lag in events and seconds) until stopped with Ctrl-C.
//!
//! ```text
//! pgorm-relay --database-url postgres://app@db/app --nats-url nats://nats:4222 \
//!     --rule 'order.**' --stream ORDERS --prefix shop
//! pgorm-relay --config relay.conf
//! ```
//!
//! Run any number of copies: one relays, the others wait and take over.

mod settings;

use std::time::{Duration, Instant};

use pgorm::PgClient;
use pgorm_events::relay::{relay_lag, Relay};
use pgorm_events::{Events, EventsConfig};
use settings::Settings;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", settings::USAGE);
        return;
    }
    let settings = match Settings::from_args(&args) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("pgorm-relay: {message}\n\n{}", settings::USAGE);
            std::process::exit(2);
        }
    };
    if let Err(message) = run(settings).await {
        eprintln!("pgorm-relay: {message}");
        std::process::exit(1);
    }
}

async fn run(settings: Settings) -> Result<(), String> {
    let client = PgClient::connect(&settings.database_url)
        .await
        .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
    let mut events_config = EventsConfig::new().schema(settings.schema.clone());
    if let Some(retention) = settings.keep_completed {
        events_config = events_config.keep_completed(retention);
    }
    let events = Events::new(events_config).map_err(|e| e.to_string())?;
    events
        .migrate(&client)
        .await
        .map_err(|e| format!("migration failed: {e}"))?;
    let relay = Relay::start(client.clone(), events.clone(), settings.relay_config())
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "pgorm-relay: schema {:?}, stream {:?}, rules {:?}; Ctrl-C stops",
        settings.schema, settings.stream, settings.rules
    );
    let mut ticker = tokio::time::interval(settings.progress);
    ticker.tick().await;
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = ticker.tick() => {}
        }
        let stats = relay.stats();
        let elapsed = last.0.elapsed().as_secs_f64().max(1e-9);
        let rate = (stats.relayed - last.1) as f64 / elapsed;
        last = (Instant::now(), stats.relayed);
        let lag = match relay_lag(&client, &events).await {
            Ok(lag) => format!(
                "lag {} events, oldest {:.1} s",
                lag.events,
                lag.oldest.as_secs_f64()
            ),
            Err(e) => format!("lag unknown ({e})"),
        };
        println!(
            "{} relayed {} ({rate:.0}/s), duplicates {}, {lag}, errors {}{}",
            if stats.active { "active " } else { "standby" },
            stats.relayed,
            stats.duplicates,
            stats.errors,
            stats
                .last_error
                .map(|e| format!(" (last: {e})"))
                .unwrap_or_default(),
        );
    }
    println!("pgorm-relay: stopping");
    tokio::time::timeout(Duration::from_secs(30), relay.shutdown())
        .await
        .map_err(|_| "the relay did not stop within 30 s".to_owned())
}
