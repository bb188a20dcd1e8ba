//! Cache invalidation driven by a trigger: the database announces every
//! change to `users` with `pg_notify`, and a hub subscription evicts the
//! cached rows, a batch at a time. A gap marker (reconnect or drop) clears
//! the whole cache.
//!
//! Run it with `cargo run --example cache_invalidation`.

use std::collections::HashMap;
use std::time::Duration;

use pgorm::listen::{ListenerEvent, PgNotifyHub};
use pgorm::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (database_url, _server) = pgorm_testkit::database_url_or_spawn()?;
    let client = PgClient::connect(&database_url).await?;
    let setup = client.connection().await?;
    setup
        .batch_execute(
            "DROP TABLE IF EXISTS users CASCADE;
             CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL);
             INSERT INTO users VALUES (1, 'ada'), (2, 'grace');
             CREATE OR REPLACE FUNCTION notify_user_changed() RETURNS trigger AS $$
             BEGIN
                 PERFORM pg_notify('user_changed', COALESCE(NEW.id, OLD.id)::text);
                 RETURN NULL;
             END;
             $$ LANGUAGE plpgsql;
             CREATE TRIGGER user_changed AFTER INSERT OR UPDATE OR DELETE ON users
             FOR EACH ROW EXECUTE FUNCTION notify_user_changed();",
        )
        .await?;
    drop(setup);

    let hub = PgNotifyHub::connect(&database_url).await?;
    // Subscribe first, then fill the cache: nothing changed in between is missed.
    let mut changes = hub.subscribe("user_changed").await?;
    let mut cache: HashMap<i32, String> = HashMap::new();
    for row in client.query("SELECT id, name FROM users", &[]).await? {
        cache.insert(row.get(0), row.get(1));
    }
    println!("cached: {cache:?}");

    // Somebody else changes the table; the trigger announces it.
    client
        .execute("UPDATE users SET name = 'Ada Lovelace' WHERE id = 1", &[])
        .await?;
    client
        .execute("DELETE FROM users WHERE id = 2", &[])
        .await?;

    // Whole batches: every change that arrived together, evicted in one go
    // (one subscription here, but a batch costs the same with hundreds).
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(300), changes.next_batch()).await
    {
        match event? {
            ListenerEvent::Notification(batch) => {
                for notification in batch.iter() {
                    let id: i32 = notification.payload.parse()?;
                    cache.remove(&id);
                    println!("evicted user {id}");
                }
            }
            ListenerEvent::Reconnected { .. } | ListenerEvent::Lagged { .. } => {
                println!("missed changes: clearing the cache");
                cache.clear();
            }
            _ => {}
        }
    }
    // Read-through: reload what is missing.
    for row in client.query("SELECT id, name FROM users", &[]).await? {
        cache.entry(row.get(0)).or_insert_with(|| row.get(1));
    }
    println!("cached: {cache:?}");
    hub.close().await?;
    Ok(())
}
