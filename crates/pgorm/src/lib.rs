//! pgorm: a PostgreSQL ORM core for tokio, built on tokio-postgres and
//! deadpool-postgres, whose headline capability is first-class
//! LISTEN/NOTIFY.
//!
//! # Quick start
//!
//! ```
//! use pgorm::prelude::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> OrmResult<()> {
//! # let server = pgorm_testkit::TestServer::shared();
//! # let database_url = server.url();
//! let client = PgClient::connect(&database_url).await?;
//! client
//!     .execute("CREATE TABLE IF NOT EXISTS users (id int PRIMARY KEY, name text)", &[])
//!     .await?;
//!
//! let tx = client.transaction().await?;
//! tx.execute("INSERT INTO users VALUES ($1, $2)", &[&1i32, &"ada"]).await?;
//! let name: String = tx
//!     .query_one("SELECT name FROM users WHERE id = $1", &[&1i32])
//!     .await?
//!     .get(0);
//! tx.rollback().await?;
//! assert_eq!(name, "ada");
//!
//! // No row is a typed error, not a panic.
//! let missing = client.query_one("SELECT 1 WHERE false", &[]).await;
//! assert!(matches!(missing, Err(OrmError::NotFound)));
//! # Ok(())
//! # }
//! ```
//!
//! # What is here
//!
//! | item | what it is |
//! |---|---|
//! | [`PgClient`] | the recommended handle: a pool plus the settings to open dedicated connections |
//! | [`GenericClient`], [`StreamingClient`] | the query traits, implemented for pgorm's and tokio-postgres' clients and transactions and for pooled connections |
//! | [`create_pool`], [`PoolConfig`] | deadpool-postgres pools with validated settings |
//! | [`OrmError`], [`OrmResult`] | one error type with a variant per failure a caller can act on |
//! | [`model`] | rows as Rust types: `FromRow`, `Model`, and find/insert/update/delete/`query_as` on every client |
//! | [`prelude`] | `use pgorm::prelude::*;` |
//!
//! # Features
//!
//! | feature | adds |
//! |---|---|
//! | `listen` | [`listen`]: LISTEN/NOTIFY — `PgListener` on a dedicated connection, `PgNotifyHub` fan-out, handlers, hooks, `notify` |
//! | `json` | typed channels with JSON payloads (`listen::Channel`), `json` model fields, and [`changes`]: typed change feeds of tables |
//! | `derive` | `#[derive(FromRow, Model)]` for [`model`] |
//! | `tracing` | connection events of listeners through `tracing` (never payloads) |
//! | `rustls` | [`tls`]: TLS through rustls with the ring provider |

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

#[cfg(feature = "json")]
pub mod changes;
mod client;
#[cfg_attr(not(feature = "listen"), allow(dead_code))]
mod connect;
mod error;
#[cfg(feature = "listen")]
pub mod listen;
pub mod model;
mod pg_client;
mod pool;
pub mod prelude;
#[cfg_attr(not(feature = "listen"), allow(dead_code))]
mod tap;
#[cfg(feature = "rustls")]
pub mod tls;

pub use client::{GenericClient, Params, RowStream, StreamingClient};
pub use error::{OrmError, OrmResult, ValidationError};
pub use pg_client::{PgClient, PgTransaction};
pub use pool::{create_pool, create_pool_with_config, PoolConfig};
pub use tokio_postgres::{types::ToSql, Row, Statement};

#[cfg(feature = "listen")]
pub use listen::{notify, PgListener, PgNotification};

/// The pool pgorm is built on, re-exported so its types match.
pub use deadpool_postgres;
/// The driver pgorm is built on, re-exported so its types match.
pub use tokio_postgres;
