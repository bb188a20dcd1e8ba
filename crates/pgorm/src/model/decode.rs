//! Reading one column of a row into a Rust type, with typed errors instead
//! of the panics of `Row::get`.

use tokio_postgres::types::FromSql;
use tokio_postgres::Row;

use crate::error::{OrmError, OrmResult};

/// Whether `row` has a column named `column`.
pub fn has_column(row: &Row, column: &str) -> bool {
    row.columns().iter().any(|c| c.name() == column)
}

/// Reads the column named `column` as a `T` (`Option<T>` for a column that
/// may be NULL). When several columns have that name, the first is read.
///
/// # Errors
/// [`OrmError::ColumnNotFound`] when the row has no such column;
/// [`OrmError::ColumnDecode`] when its value does not fit `T`.
pub fn decode<'a, T: FromSql<'a>>(row: &'a Row, column: &str) -> OrmResult<T> {
    match row.columns().iter().position(|c| c.name() == column) {
        Some(index) => decode_at(row, index),
        None => Err(OrmError::ColumnNotFound {
            column: column.to_owned(),
            rust_type: std::any::type_name::<T>(),
        }),
    }
}

/// Reads the column at `index` as a `T`.
///
/// # Errors
/// [`OrmError::ColumnNotFound`] when the row has fewer columns (the column
/// is named by its index); [`OrmError::ColumnDecode`] when its value does
/// not fit `T`.
pub fn decode_at<'a, T: FromSql<'a>>(row: &'a Row, index: usize) -> OrmResult<T> {
    let Some(column) = row.columns().get(index) else {
        return Err(OrmError::ColumnNotFound {
            column: format!("#{index}"),
            rust_type: std::any::type_name::<T>(),
        });
    };
    row.try_get(index).map_err(|source| OrmError::ColumnDecode {
        column: column.name().to_owned(),
        sql_type: column.type_().name().to_owned(),
        rust_type: std::any::type_name::<T>(),
        source,
    })
}

/// A value stored as `json` or `jsonb` and read or written through serde
/// (feature `json`): tokio-postgres' `Json` wrapper.
#[cfg(feature = "json")]
pub use tokio_postgres::types::Json;

/// Reads a `json`/`jsonb` column named `column` into `T` through serde.
///
/// # Errors
/// As [`decode`]; a document that does not fit `T`, or NULL, is
/// [`OrmError::ColumnDecode`].
#[cfg(feature = "json")]
pub fn decode_json<T: serde::de::DeserializeOwned>(row: &Row, column: &str) -> OrmResult<T> {
    decode::<Json<T>>(row, column).map(|json| json.0)
}

/// Reads a `json`/`jsonb` column that may be NULL: NULL is `None`.
///
/// # Errors
/// As [`decode_json`].
#[cfg(feature = "json")]
pub fn decode_json_opt<T: serde::de::DeserializeOwned>(
    row: &Row,
    column: &str,
) -> OrmResult<Option<T>> {
    decode::<Option<Json<T>>>(row, column).map(|json| json.map(|json| json.0))
}
