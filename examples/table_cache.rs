//! A typed in-memory copy of a table, kept in sync through its change feed.
//!
//! The order matters: subscribe first, then load the table, so a change
//! committed during the load is applied again afterwards (applying the
//! current row twice is harmless) and nothing is missed. A `Resync` means
//! changes may have been lost: load the table again.
//!
//! Run it with `cargo run --example table_cache`.

use std::collections::HashMap;

use pgorm::changes::{self, Change, ChangeFeed};
use pgorm::prelude::*;

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "cached_products")]
struct Product {
    #[orm(key, generated)]
    id: i64,
    name: String,
    price_cents: i64,
}

/// The cache: every product by id.
#[derive(Default)]
struct Cache {
    products: HashMap<i64, Product>,
    reloads: u32,
}

impl Cache {
    async fn reload(&mut self, client: &PgClient) -> OrmResult<()> {
        let rows: Vec<Product> = client
            .query_as("SELECT * FROM cached_products", &[])
            .await?;
        self.products = rows.into_iter().map(|p| (p.id, p)).collect();
        self.reloads += 1;
        Ok(())
    }

    async fn apply(&mut self, change: Change<Product>, client: &PgClient) -> OrmResult<()> {
        match change {
            Change::Inserted(product) | Change::Updated(product) => {
                self.products.insert(product.id, product);
            }
            Change::Deleted(id) => {
                self.products.remove(&id);
            }
            // Something may have been missed: start over from the table.
            _ => self.reload(client).await?,
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (database_url, _server) = pgorm_testkit::database_url_or_spawn()?;
    let client = PgClient::connect(&database_url).await?;
    client
        .execute(
            "CREATE TABLE IF NOT EXISTS cached_products (
                 id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 name text NOT NULL,
                 price_cents bigint NOT NULL)",
            &[],
        )
        .await?;
    client.execute("TRUNCATE cached_products", &[]).await?;
    client
        .execute(
            "INSERT INTO cached_products (name, price_cents) VALUES ('tea', 250), ('cake', 400)",
            &[],
        )
        .await?;
    let installed = changes::install::<Product>(&client).await?;
    println!("feed installed now: {installed}");

    // Subscribe, then load.
    let hub = client.hub().await?;
    let mut feed = ChangeFeed::<Product, _>::subscribe(&hub, client.clone()).await?;
    let mut cache = Cache::default();
    cache.reload(&client).await?;
    println!("loaded {} products", cache.products.len());

    // Some writes: single rows and one bulk statement.
    let coffee = client
        .insert(&Product {
            id: 0,
            name: "coffee".into(),
            price_cents: 300,
        })
        .await?;
    client
        .execute(
            "UPDATE cached_products SET price_cents = price_cents + 10",
            &[],
        )
        .await?;
    client.delete(&coffee).await?;
    client
        .execute(
            "INSERT INTO cached_products (name, price_cents) \
             SELECT 'bulk ' || n, n FROM generate_series(1, 1000) n",
            &[],
        )
        .await?;

    // Apply changes until the cache matches the table.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let table: Vec<Product> = client
            .query_as("SELECT * FROM cached_products", &[])
            .await?;
        let table: HashMap<i64, Product> = table.into_iter().map(|p| (p.id, p)).collect();
        if table == cache.products {
            break;
        }
        let change = tokio::time::timeout_at(deadline, feed.next())
            .await
            .map_err(|_| "the cache did not catch up within 30 s")?
            .ok_or("the feed ended")??;
        cache.apply(change, &client).await?;
    }
    println!(
        "cache in sync: {} products (tea now {} cents), {} load(s), {} notifications",
        cache.products.len(),
        cache
            .products
            .values()
            .find(|p| p.name == "tea")
            .map_or(0, |p| p.price_cents),
        cache.reloads,
        feed.stats().received
    );
    hub.close().await?;
    Ok(())
}
