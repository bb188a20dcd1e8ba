//! The SQL a model's calls send: identifiers quoted once here, values
//! always as parameters.

use std::fmt::Write;

use super::Model;
use crate::error::{OrmResult, ValidationError};

/// Quotes `name` as an SQL identifier: `"` around it, inner `"` doubled.
///
/// # Errors
/// [`ValidationError::Identifier`] for an empty name, a NUL byte, or more
/// than 63 bytes (PostgreSQL would silently truncate it).
pub fn quote_identifier(name: &str) -> OrmResult<String> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.contains('\0') {
        Some("it contains a NUL byte")
    } else if name.len() > 63 {
        Some("it is longer than PostgreSQL's 63 bytes")
    } else {
        None
    };
    if let Some(reason) = reason {
        return Err(ValidationError::Identifier {
            name: name.to_owned(),
            reason,
        }
        .into());
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// The model's table, quoted and schema-qualified when it has a schema.
///
/// # Errors
/// As [`quote_identifier`].
pub fn qualified_table<M: Model>() -> OrmResult<String> {
    let table = quote_identifier(M::TABLE)?;
    Ok(match M::SCHEMA {
        Some(schema) => format!("{}.{table}", quote_identifier(schema)?),
        None => table,
    })
}

/// `"a", "b"`, each prefixed by `prefix` (e.g. `t.`).
pub(crate) fn column_list(columns: &[&str], prefix: &str) -> OrmResult<String> {
    let mut out = String::new();
    for (i, column) in columns.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(prefix);
        out.push_str(&quote_identifier(column)?);
    }
    Ok(out)
}

/// `"a" = $n AND "b" = $n+1`, numbering from `first`.
fn key_condition<M: Model>(first: usize) -> OrmResult<String> {
    let mut out = String::new();
    for (i, column) in M::KEY_COLUMNS.iter().enumerate() {
        if i > 0 {
            out.push_str(" AND ");
        }
        write!(out, "{} = ${}", quote_identifier(column)?, first + i).expect("write to String");
    }
    Ok(out)
}

pub(crate) fn select_by_key<M: Model>() -> OrmResult<String> {
    Ok(format!(
        "SELECT {} FROM {} WHERE {}",
        column_list(M::COLUMNS, "")?,
        qualified_table::<M>()?,
        key_condition::<M>(1)?
    ))
}

/// One query over many keys: `= ANY($1)` for one key column; for several,
/// each column `= ANY($i)` (which also types the arrays) and the exact
/// tuples through `unnest` of the same arrays.
pub(crate) fn select_by_keys<M: Model>() -> OrmResult<String> {
    let columns = column_list(M::COLUMNS, "t.")?;
    let table = qualified_table::<M>()?;
    let mut any = String::new();
    for (i, column) in M::KEY_COLUMNS.iter().enumerate() {
        if i > 0 {
            any.push_str(" AND ");
        }
        write!(any, "t.{} = ANY(${})", quote_identifier(column)?, i + 1).expect("write to String");
    }
    if M::KEY_COLUMNS.len() == 1 {
        return Ok(format!("SELECT {columns} FROM {table} t WHERE {any}"));
    }
    let arrays: Vec<String> = (1..=M::KEY_COLUMNS.len())
        .map(|i| format!("${i}"))
        .collect();
    Ok(format!(
        "SELECT {columns} FROM {table} t WHERE {any} AND ({}) IN (SELECT * FROM unnest({}))",
        column_list(M::KEY_COLUMNS, "t.")?,
        arrays.join(", ")
    ))
}

pub(crate) fn insert<M: Model>() -> OrmResult<String> {
    let table = qualified_table::<M>()?;
    let returning = column_list(M::COLUMNS, "")?;
    if M::INSERT_COLUMNS.is_empty() {
        return Ok(format!(
            "INSERT INTO {table} DEFAULT VALUES RETURNING {returning}"
        ));
    }
    let values: Vec<String> = (1..=M::INSERT_COLUMNS.len())
        .map(|i| format!("${i}"))
        .collect();
    Ok(format!(
        "INSERT INTO {table} ({}) VALUES ({}) RETURNING {returning}",
        column_list(M::INSERT_COLUMNS, "")?,
        values.join(", ")
    ))
}

/// `None` when the model has no column to update.
pub(crate) fn update<M: Model>() -> OrmResult<Option<String>> {
    if M::UPDATE_COLUMNS.is_empty() {
        return Ok(None);
    }
    let mut set = String::new();
    for (i, column) in M::UPDATE_COLUMNS.iter().enumerate() {
        if i > 0 {
            set.push_str(", ");
        }
        write!(set, "{} = ${}", quote_identifier(column)?, i + 1).expect("write to String");
    }
    Ok(Some(format!(
        "UPDATE {} SET {set} WHERE {} RETURNING {}",
        qualified_table::<M>()?,
        key_condition::<M>(M::UPDATE_COLUMNS.len() + 1)?,
        column_list(M::COLUMNS, "")?
    )))
}

pub(crate) fn delete<M: Model>() -> OrmResult<String> {
    Ok(format!(
        "DELETE FROM {} WHERE {}",
        qualified_table::<M>()?,
        key_condition::<M>(1)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_with_inner_quotes_doubled() {
        assert_eq!(quote_identifier("select").unwrap(), "\"select\"");
        assert_eq!(
            quote_identifier("Order \"Items\"").unwrap(),
            "\"Order \"\"Items\"\"\""
        );
    }

    #[test]
    fn unusable_identifiers_are_refused() {
        assert!(quote_identifier("").is_err());
        assert!(quote_identifier("a\0b").is_err());
        assert!(quote_identifier(&"x".repeat(64)).is_err());
        assert!(quote_identifier(&"x".repeat(63)).is_ok());
    }
}
