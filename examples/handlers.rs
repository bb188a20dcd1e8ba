//! Handlers: async functions the hub runs for each notification, with a
//! concurrency limit, a timeout per call, and panic isolation. Failures are
//! counted and reported to hooks; they never stop the hub.
//!
//! Run it with `cargo run --example handlers`.

use std::time::Duration;

use pgorm::listen::{HandlerOptions, ListenerHooks, PgListenerConfig, PgNotifyHub};
use pgorm::prelude::*;

/// Hooks that print what operators would send to their metrics.
struct PrintHooks;

impl ListenerHooks for PrintHooks {
    fn on_handler_error(&self, channel: &str, error: &(dyn std::error::Error + Send + Sync)) {
        println!("hook: handler on {channel} failed: {error}");
    }
    fn on_handler_timeout(&self, channel: &str, after: Duration) {
        println!("hook: handler on {channel} timed out after {after:?}");
    }
    fn on_handler_panic(&self, channel: &str) {
        println!("hook: handler on {channel} panicked (contained)");
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (database_url, _server) = pgorm_testkit::database_url_or_spawn()?;
    let client = PgClient::connect(&database_url).await?;
    let hub =
        PgNotifyHub::connect_with(&database_url, PgListenerConfig::new().hooks(PrintHooks)).await?;

    let options = HandlerOptions::new()
        .concurrency(4)
        .timeout(Duration::from_millis(200));
    let emails = hub
        .on_with("send_email", options, |notification| async move {
            match notification.payload.as_str() {
                "bounce" => Err(format!("mailbox of {} is full", notification.payload)),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    Ok(())
                }
                "bug" => panic!("a bug in the handler"),
                to => {
                    println!("sent an email to {to}");
                    Ok(())
                }
            }
        })
        .await?;

    // Keep the example's output readable: the panic is expected.
    std::panic::set_hook(Box::new(|_| {}));
    client
        .notify_batch(
            [
                "ada@example.com",
                "bounce",
                "slow",
                "bug",
                "grace@example.com",
            ]
            .map(|to| ("send_email", to)),
        )
        .await?;

    while {
        let stats = emails.stats();
        stats.succeeded + stats.failed + stats.timed_out + stats.panicked < 5
    } {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("handler stats: {:?}", emails.stats());
    drop(emails); // unsubscribes: the hub sends UNLISTEN
    hub.close().await?;
    Ok(())
}
