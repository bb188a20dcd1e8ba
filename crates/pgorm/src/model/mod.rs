//! Models: rows as Rust types. [`FromRow`] reads a row into a type by
//! column name; [`Model`] ties a type to a table (name, schema, key,
//! generated columns); [`ModelExt`] gives every
//! [`GenericClient`](crate::GenericClient) — a [`PgClient`](crate::PgClient),
//! a pooled connection, a transaction — find, insert, update, delete and
//! typed queries.
//!
//! Reading never panics: a missing column is [`OrmError::ColumnNotFound`](crate::OrmError::ColumnNotFound), a
//! value that does not fit is [`OrmError::ColumnDecode`](crate::OrmError::ColumnDecode) (naming the column,
//! its SQL type and the Rust type). Every statement is parameterised and
//! every identifier quoted, so a table called `Order Items` or a column
//! called `select` work as they are.
//!
//! # Deriving (feature `derive`)
//!
//! `#[derive(FromRow)]` on a struct with named fields reads each field from
//! the column of the same name. Field attributes, under `#[orm(...)]`:
//!
//! | attribute | effect |
//! |---|---|
//! | `rename = "col"` | read column `col` |
//! | `json` | decode a `json`/`jsonb` column through serde (feature `json`) |
//! | `flatten` | read a nested `FromRow` type from the same row |
//! | `default` | a missing column gives `Default::default()` |
//!
//! `#[derive(Model)]` (with `FromRow`) needs `#[orm(table = "...")]`, takes
//! an optional `schema = "..."`, and reads on fields:
//!
//! | attribute | effect |
//! |---|---|
//! | `key` | part of the primary key (several fields: a composite key, a tuple) |
//! | `generated` | the database fills it (identity, default): left out of inserts and updates |
//!
//! ```
//! use pgorm::model::{FromRow, Model, ModelExt};
//! use pgorm::{GenericClient, PgClient};
//!
//! #[derive(Debug, Clone, PartialEq, FromRow, Model)]
//! #[orm(table = "Order Items")]
//! struct Item {
//!     #[orm(key, generated)]
//!     id: i64,
//!     #[orm(rename = "select")]
//!     label: String,
//!     quantity: Option<i32>,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> pgorm::OrmResult<()> {
//! # let database_url = pgorm_testkit::TestServer::shared().create_database().await.unwrap();
//! let client = PgClient::connect(&database_url).await?;
//! client
//!     .execute(
//!         r#"CREATE TABLE "Order Items" (
//!              id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
//!              "select" text NOT NULL,
//!              quantity int)"#,
//!         &[],
//!     )
//!     .await?;
//!
//! let stored = client
//!     .insert(&Item { id: 0, label: "tea".into(), quantity: Some(2) })
//!     .await?;
//! assert!(stored.id > 0);
//! let found: Option<Item> = client.find(&stored.id).await?;
//! assert_eq!(found, Some(stored.clone()));
//!
//! let items: Vec<Item> = client
//!     .query_as(r#"SELECT * FROM "Order Items" WHERE quantity > $1"#, &[&1i32])
//!     .await?;
//! assert_eq!(items, [stored]);
//! # Ok(()) }
//! ```

mod decode;
mod ext;
mod sql;

pub use decode::{decode, decode_at, has_column};
#[cfg(feature = "json")]
pub use decode::{decode_json, decode_json_opt, Json};
pub use ext::ModelExt;
pub use sql::{qualified_table, quote_identifier};

#[cfg(feature = "derive")]
pub use pgorm_derive::{FromRow, Model};

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::error::OrmResult;

/// A statement parameter owned by a [`Model`]'s parameter list.
pub type BoxedParam<'a> = Box<dyn ToSql + Sync + Send + 'a>;

/// A type that can be read from a row.
///
/// Derive it (feature `derive`), or write it by hand with [`decode`]:
///
/// ```
/// use pgorm::model::{decode, FromRow};
/// use pgorm::{OrmResult, Row};
///
/// struct Name {
///     first: String,
///     last: Option<String>,
/// }
///
/// impl FromRow for Name {
///     fn from_row(row: &Row) -> OrmResult<Self> {
///         Ok(Name { first: decode(row, "first")?, last: decode(row, "last")? })
///     }
/// }
/// ```
pub trait FromRow: Sized {
    /// Reads one row.
    ///
    /// # Errors
    /// [`OrmError::ColumnNotFound`](crate::OrmError::ColumnNotFound) for a
    /// missing column; [`OrmError::ColumnDecode`](crate::OrmError::ColumnDecode)
    /// for a value that does not fit its field.
    fn from_row(row: &Row) -> OrmResult<Self>;
}

/// A type that is the row of one table. Derive it with `#[derive(Model)]`
/// (feature `derive`); the [`ModelExt`] methods build their statements from
/// what it says.
///
/// Column lists name the columns as they are in the database (unquoted);
/// pgorm quotes them.
pub trait Model: FromRow + Send + Sync {
    /// The primary key: the key field's type, or a tuple of them for a
    /// composite key.
    type Key: Send + Sync + Clone;
    /// The table's schema; `None` follows the connection's `search_path`.
    const SCHEMA: Option<&'static str>;
    /// The table's name.
    const TABLE: &'static str;
    /// Every column the model reads, in field order.
    const COLUMNS: &'static [&'static str];
    /// The key's columns, in the order of [`Key`](Self::Key).
    const KEY_COLUMNS: &'static [&'static str];
    /// The columns an insert writes (all but the generated ones), in the
    /// order of [`insert_params`](Self::insert_params).
    const INSERT_COLUMNS: &'static [&'static str];
    /// The columns an update writes (neither key nor generated), in the
    /// order of [`update_params`](Self::update_params).
    const UPDATE_COLUMNS: &'static [&'static str];

    /// This row's key.
    fn key(&self) -> Self::Key;
    /// The key's values, one per key column.
    fn key_params(key: &Self::Key) -> Vec<&(dyn ToSql + Sync)>;
    /// One array per key column holding that column's value of every key,
    /// for one query over many keys.
    fn key_arrays(keys: &[Self::Key]) -> Vec<BoxedParam<'static>>;
    /// Reads a key from the row's columns `start..start + KEY_COLUMNS.len()`.
    ///
    /// # Errors
    /// As [`decode_at`].
    fn key_from_row(row: &Row, start: usize) -> OrmResult<Self::Key>;
    /// The values of [`INSERT_COLUMNS`](Self::INSERT_COLUMNS).
    fn insert_params(&self) -> Vec<BoxedParam<'_>>;
    /// The values of [`UPDATE_COLUMNS`](Self::UPDATE_COLUMNS).
    fn update_params(&self) -> Vec<BoxedParam<'_>>;
}
