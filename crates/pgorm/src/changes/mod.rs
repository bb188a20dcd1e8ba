//! Typed change feeds of tables (feature `json`): [`install`] puts
//! statement-level triggers on a [`Model`]'s table, and a [`ChangeFeed`]
//! turns their notifications into typed [`Change`]s.
//!
//! # How it works
//!
//! - The triggers fire once per statement (`AFTER INSERT/UPDATE/DELETE …
//!   FOR EACH STATEMENT`, with transition tables), so a bulk statement costs
//!   one `NOTIFY` per chunk of keys, not one per row. A payload is
//!   `{"op":"I|U|D","keys":[{"id":1},…]}`, always under PostgreSQL's
//!   8000-byte limit. An UPDATE that changes a key sends the old key as a
//!   delete and the new one as an insert.
//! - A key of one `smallint`, `integer`, `bigint` or `uuid` column takes a
//!   fast path that computes nothing per row: one `array_agg` of the keys
//!   per statement, sent in slices of a fixed number of keys (sized at
//!   install for the type's widest text), each rendered by one
//!   `array_to_string`; a one-row statement reads its key with one plain
//!   `SELECT`. Statements of more than 1,000,000 rows, and other keys,
//!   render each key with `to_json`. The payloads are the same either way.
//! - The channel is derived from schema and table ([`channel_name`]); it is
//!   a valid channel (at most 63 bytes, a hash suffix for long names).
//! - Notifications are delivered at commit, in commit order. The feed reads
//!   each batch of them with one query and yields the rows as they are
//!   now: inserted and updated rows, deleted keys (also for a row that was
//!   changed and then deleted before the feed fetched it).
//! - Whenever something may have been missed — the hub reconnected, the
//!   subscription's queue overflowed, a fetch failed, the table was
//!   truncated (a fourth trigger, `AFTER TRUNCATE`) — the feed yields
//!   [`Change::Resync`]: reload the table.
//!
//! # Example
//!
//! ```
//! use pgorm::changes::{self, Change, ChangeFeed};
//! use pgorm::model::{FromRow, Model, ModelExt};
//! use pgorm::{GenericClient, PgClient};
//!
//! #[derive(Debug, Clone, PartialEq, FromRow, Model)]
//! #[orm(table = "prices")]
//! struct Price {
//!     #[orm(key)]
//!     sku: String,
//!     cents: i64,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> pgorm::OrmResult<()> {
//! # let database_url = pgorm_testkit::TestServer::shared().create_database().await.unwrap();
//! let client = PgClient::connect(&database_url).await?;
//! client
//!     .execute("CREATE TABLE prices (sku text PRIMARY KEY, cents bigint NOT NULL)", &[])
//!     .await?;
//! changes::install::<Price>(&client).await?;
//!
//! let hub = client.hub().await?;
//! let mut feed = ChangeFeed::<Price, _>::subscribe(&hub, client.clone()).await?;
//!
//! client.insert(&Price { sku: "tea".into(), cents: 250 }).await?;
//! match feed.next().await.unwrap()? {
//!     Change::Inserted(price) => assert_eq!(price.cents, 250),
//!     Change::Resync => { /* reload everything */ }
//!     other => panic!("unexpected {other:?}"),
//! }
//! # Ok(()) }
//! ```

mod feed;
mod install;

pub use feed::ChangeFeed;
pub use install::{channel_name, install, uninstall, FEED_VERSION, KEY_BYTES_PER_NOTIFICATION};

use crate::model::Model;

/// One change of a table, as a [`ChangeFeed`] yields it.
#[non_exhaustive]
pub enum Change<M: Model> {
    /// A row was inserted; this is the row as it is now.
    Inserted(M),
    /// A row was updated; this is the row as it is now.
    Updated(M),
    /// The row with this key is gone.
    Deleted(M::Key),
    /// Changes may have been missed (reconnect, overflow, failed fetch,
    /// TRUNCATE):
    /// reload the table.
    Resync,
}

impl<M: Model + std::fmt::Debug> std::fmt::Debug for Change<M>
where
    M::Key: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Inserted(row) => f.debug_tuple("Inserted").field(row).finish(),
            Change::Updated(row) => f.debug_tuple("Updated").field(row).finish(),
            Change::Deleted(key) => f.debug_tuple("Deleted").field(key).finish(),
            Change::Resync => f.write_str("Resync"),
        }
    }
}

impl<M: Model + Clone> Clone for Change<M> {
    fn clone(&self) -> Self {
        match self {
            Change::Inserted(row) => Change::Inserted(row.clone()),
            Change::Updated(row) => Change::Updated(row.clone()),
            Change::Deleted(key) => Change::Deleted(key.clone()),
            Change::Resync => Change::Resync,
        }
    }
}

impl<M: Model + PartialEq> PartialEq for Change<M>
where
    M::Key: PartialEq,
{
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Change::Inserted(a), Change::Inserted(b))
            | (Change::Updated(a), Change::Updated(b)) => a == b,
            (Change::Deleted(a), Change::Deleted(b)) => a == b,
            (Change::Resync, Change::Resync) => true,
            _ => false,
        }
    }
}
