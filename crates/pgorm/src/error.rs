//! The one error type of pgorm, [`OrmError`], and what a caller can ask of it.

use std::time::Duration;

use tokio_postgres::error::SqlState;

/// The result type of every fallible pgorm operation.
pub type OrmResult<T> = Result<T, OrmError>;

/// Everything that can go wrong in pgorm.
///
/// Match on the variant to decide what to do; the lower-level error, when
/// there is one, is kept as the [`source`](std::error::Error::source). No
/// variant's message contains a password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OrmError {
    /// The connection string or configuration could not be used.
    #[error("invalid database configuration: {source}")]
    Config {
        /// The parser's error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// A connection could not be opened, or was lost while in use.
    #[error("database connection failed: {source}")]
    Connection {
        /// The driver's error (I/O, TLS, authentication, closed socket).
        #[source]
        source: tokio_postgres::Error,
    },

    /// A dedicated connection's socket could not be opened (listeners open
    /// plain connections themselves).
    #[error("database connection to {target} failed: {source}")]
    Socket {
        /// The host and port (or socket path) tried.
        target: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The server rejected a statement, or its reply was not what the call
    /// expected. [`OrmError::sqlstate`] gives the SQLSTATE when the server
    /// sent one.
    #[error("query failed: {}", describe_query_error(.source))]
    Query {
        /// The driver's error, with the server's details when there are some.
        #[source]
        source: tokio_postgres::Error,
    },

    /// The connection pool failed to hand out a connection.
    #[error("connection pool error: {source}")]
    Pool {
        /// The pool's error.
        #[source]
        source: deadpool_postgres::PoolError,
    },

    /// Every connection of the pool stayed in use for the whole wait timeout.
    #[error(
        "connection pool exhausted: no connection became free within the wait timeout \
         (raise the pool's max_size or wait_timeout, or return connections sooner)"
    )]
    PoolExhausted {
        /// The pool's timeout error.
        #[source]
        source: deadpool_postgres::PoolError,
    },

    /// A query that must return a row returned none.
    #[error("no row found")]
    NotFound,

    /// The input was rejected before anything was sent to the server.
    #[error("invalid input: {0}")]
    Validation(#[from] ValidationError),

    /// An operation did not finish within its deadline.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What timed out, e.g. `"connect"`.
        operation: &'static str,
        /// The deadline that passed.
        after: Duration,
    },

    /// A listener's connection was lost and not re-established: reconnecting
    /// is disabled (`attempts` is 0) or every attempt failed.
    #[error("{}", describe_disconnect(*.attempts, .cause))]
    Disconnected {
        /// How many reconnect attempts were made.
        attempts: u32,
        /// Why the connection was lost, or why the last attempt failed.
        #[source]
        cause: Box<OrmError>,
    },

    /// A notification payload could not be decoded (typed channels). Only
    /// that one message is affected.
    #[error("payload on channel {channel:?} could not be decoded: {source}")]
    Decode {
        /// The channel it arrived on.
        channel: String,
        /// The raw payload, as received.
        payload: String,
        /// The decoder's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A value could not be encoded as a payload (typed channels).
    #[error("payload could not be encoded: {source}")]
    Encode {
        /// The encoder's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A callback of the application's (a listener's `on_connect`) returned
    /// an error or panicked.
    #[error("the {callback} callback failed: {source}")]
    Callback {
        /// Which callback, e.g. `"on_connect"`.
        callback: &'static str,
        /// Its error (for a panic, a description of it).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A row has no column of the name a [`FromRow`](crate::model::FromRow)
    /// type reads.
    #[error("column {column:?} is not in the row (wanted as {rust_type})")]
    ColumnNotFound {
        /// The column's name.
        column: String,
        /// The Rust type it was to be read as.
        rust_type: &'static str,
    },

    /// A column's value could not be read as the Rust type asked for: the
    /// types do not match, the value is NULL and the type is not an
    /// `Option`, or a JSON column does not fit the type.
    #[error("column {column:?} of SQL type {sql_type} could not be read as {rust_type}: {source}")]
    ColumnDecode {
        /// The column's name.
        column: String,
        /// The column's SQL type, as the server names it (`int4`, `jsonb`…).
        sql_type: String,
        /// The Rust type it was to be read as.
        rust_type: &'static str,
        /// Why: the driver's error, or for a JSON document that does not
        /// fit, where and what kind of mismatch (never the document's
        /// values, which may be secrets).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The handle was closed (by `close()`, or because the task behind it
    /// stopped); nothing more will come from it.
    #[error("closed: {reason}")]
    Closed {
        /// Why it is closed.
        reason: String,
    },
}

/// Input that pgorm refuses before it reaches the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// A channel name was empty.
    #[error("channel name is empty")]
    EmptyChannel,
    /// A channel name contained a NUL byte, which PostgreSQL cannot store.
    #[error("channel name {name:?} contains a NUL byte")]
    NulInChannel {
        /// The name as given.
        name: String,
    },
    /// A channel name was longer than PostgreSQL's 63-byte identifier limit;
    /// the server would silently truncate it and notifications would never
    /// match.
    #[error("channel name is {len} bytes long; PostgreSQL identifiers are at most {max} bytes")]
    ChannelTooLong {
        /// The name's length in bytes.
        len: usize,
        /// The limit, 63.
        max: usize,
    },
    /// A notification payload was at or above PostgreSQL's 8000-byte limit.
    #[error("payload is {len} bytes; PostgreSQL accepts notification payloads shorter than {limit} bytes")]
    PayloadTooLarge {
        /// The payload's length in bytes (UTF-8).
        len: usize,
        /// The limit, 8000.
        limit: usize,
    },
    /// A payload contained a NUL byte, which a text payload cannot carry.
    #[error("payload contains a NUL byte")]
    NulInPayload,
    /// A table, schema or column name cannot be an SQL identifier.
    #[error("invalid identifier {name:?}: {reason}")]
    Identifier {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A configuration value was out of range.
    #[error("invalid setting {setting}: {reason}")]
    Setting {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl OrmError {
    /// The SQLSTATE the server sent with this error, if any.
    pub fn sqlstate(&self) -> Option<&SqlState> {
        match self {
            OrmError::Query { source } | OrmError::Connection { source } => source.code(),
            _ => None,
        }
    }

    /// The server's full error report (message, detail, hint, constraint…)
    /// when the server sent one.
    pub fn db_error(&self) -> Option<&tokio_postgres::error::DbError> {
        match self {
            OrmError::Query { source } | OrmError::Connection { source } => source.as_db_error(),
            _ => None,
        }
    }

    /// Whether this is [`OrmError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, OrmError::NotFound)
    }

    /// Whether this error means the connection is unusable (failed to open,
    /// or lost).
    pub fn is_connection(&self) -> bool {
        matches!(self, OrmError::Connection { .. } | OrmError::Socket { .. })
    }

    /// Whether this is a timeout, including waiting for a pooled connection.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            OrmError::Timeout { .. } | OrmError::PoolExhausted { .. }
        )
    }

    /// Wraps an error from a statement: a lost connection becomes
    /// [`OrmError::Connection`], anything else [`OrmError::Query`].
    pub(crate) fn query(source: tokio_postgres::Error) -> Self {
        if source.is_closed() || io_source(&source) {
            OrmError::Connection { source }
        } else {
            OrmError::Query { source }
        }
    }

    /// Wraps an error from opening a connection.
    #[cfg_attr(not(feature = "listen"), allow(dead_code))]
    pub(crate) fn connection(source: tokio_postgres::Error) -> Self {
        OrmError::Connection { source }
    }

    pub(crate) fn closed(reason: impl Into<String>) -> Self {
        OrmError::Closed {
            reason: reason.into(),
        }
    }
}

impl From<deadpool_postgres::PoolError> for OrmError {
    fn from(source: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::{PoolError, TimeoutType};
        match source {
            PoolError::Timeout(TimeoutType::Wait) => OrmError::PoolExhausted { source },
            PoolError::Backend(source) => OrmError::Connection { source },
            source => OrmError::Pool { source },
        }
    }
}

fn describe_disconnect(attempts: u32, cause: &OrmError) -> String {
    if attempts == 0 {
        format!("listener connection lost and reconnecting is disabled: {cause}")
    } else {
        format!("listener connection lost; gave up after {attempts} reconnect attempts: {cause}")
    }
}

fn io_source(error: &tokio_postgres::Error) -> bool {
    std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>())
}

/// The server's message with its SQLSTATE and detail, or the driver's text.
fn describe_query_error(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(detail) = db.detail() {
                text.push_str(": ");
                text.push_str(detail);
            }
            text
        }
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_errors_say_what_and_how_much() {
        let error = OrmError::from(ValidationError::PayloadTooLarge {
            len: 8000,
            limit: 8000,
        });
        assert_eq!(
            error.to_string(),
            "invalid input: payload is 8000 bytes; PostgreSQL accepts notification payloads shorter than 8000 bytes"
        );
    }
}
