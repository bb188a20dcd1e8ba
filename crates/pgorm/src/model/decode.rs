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
        source: Box::new(source),
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
    let raw = decode::<Json<Box<serde_json::value::RawValue>>>(row, column)?;
    from_json(row, column, &raw.0)
}

/// `raw` as a `T`; a mismatch is reported without the document's values
/// (serde_json's messages quote them: "invalid type: string \"…\"").
#[cfg(feature = "json")]
fn from_json<T: serde::de::DeserializeOwned>(
    row: &Row,
    column: &str,
    raw: &serde_json::value::RawValue,
) -> OrmResult<T> {
    serde_json::from_str(raw.get()).map_err(|error| OrmError::ColumnDecode {
        column: column.to_owned(),
        sql_type: row
            .columns()
            .iter()
            .find(|c| c.name() == column)
            .map_or_else(String::new, |c| c.type_().name().to_owned()),
        rust_type: std::any::type_name::<T>(),
        source: format!(
            "the JSON document does not fit the type ({:?} error at line {}, column {})",
            error.classify(),
            error.line(),
            error.column()
        )
        .into(),
    })
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
    match decode::<Option<Json<Box<serde_json::value::RawValue>>>>(row, column)? {
        Some(raw) => from_json(row, column, &raw.0).map(Some),
        None => Ok(None),
    }
}
