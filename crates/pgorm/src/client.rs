//! The query traits every pgorm handle implements: [`GenericClient`] for
//! one-shot statements and [`StreamingClient`] for rows read as a stream.
//!
//! They are implemented for `tokio_postgres::Client`,
//! `tokio_postgres::Transaction`, deadpool's pooled connections and
//! transactions, and pgorm's own [`PgClient`](crate::PgClient) and
//! [`PgTransaction`](crate::PgTransaction), so code written against them
//! runs unchanged inside or outside a transaction.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

use crate::error::{OrmError, OrmResult};

/// Statement parameters, as tokio-postgres takes them.
pub type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Runs SQL statements. Every method sends `sql` with bind parameters
/// (`$1`, `$2`, …); nothing is interpolated into the text.
///
/// # Errors
/// Every method returns [`OrmError::Query`] when the server rejects the
/// statement ([`OrmError::sqlstate`] tells which SQLSTATE), and
/// [`OrmError::Connection`] when the connection is lost.
pub trait GenericClient: Sync {
    /// Runs a query and returns all its rows.
    fn query(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> impl Future<Output = OrmResult<Vec<Row>>> + Send;

    /// Runs a query that returns at most one row.
    ///
    /// # Errors
    /// [`OrmError::Query`] also when the query returns more than one row.
    fn query_opt(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> impl Future<Output = OrmResult<Option<Row>>> + Send;

    /// Runs a query that returns exactly one row.
    ///
    /// # Errors
    /// [`OrmError::NotFound`] when the query returns no row; [`OrmError::Query`]
    /// when it returns more than one.
    fn query_one(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> impl Future<Output = OrmResult<Row>> + Send {
        async move { self.query_opt(sql, params).await?.ok_or(OrmError::NotFound) }
    }

    /// Runs a statement and returns the number of rows it affected.
    fn execute(&self, sql: &str, params: Params<'_>)
        -> impl Future<Output = OrmResult<u64>> + Send;

    /// Prepares a statement, to inspect its parameter and column types.
    fn prepare(&self, sql: &str) -> impl Future<Output = OrmResult<Statement>> + Send;
}

/// Runs a query and hands its rows over one at a time, as the server sends
/// them, instead of collecting them first.
pub trait StreamingClient: Sync {
    /// Starts a query; the rows arrive through the returned [`RowStream`].
    ///
    /// # Errors
    /// As [`GenericClient`]; errors that happen after the first row arrive as
    /// items of the stream.
    fn query_stream(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> impl Future<Output = OrmResult<RowStream>> + Send;
}

pin_project_lite::pin_project! {
    /// The rows of a query, as a [`Stream`] of `OrmResult<Row>`.
    ///
    /// When the query ran on a pooled connection, the stream holds that
    /// connection and returns it to the pool when dropped.
    pub struct RowStream {
        #[pin]
        rows: tokio_postgres::RowStream,
        connection: Option<deadpool_postgres::Object>,
    }
}

impl RowStream {
    pub(crate) fn new(
        rows: tokio_postgres::RowStream,
        connection: Option<deadpool_postgres::Object>,
    ) -> Self {
        RowStream { rows, connection }
    }

    /// The number of rows the statement affected, known once the stream has
    /// ended.
    pub fn rows_affected(&self) -> Option<u64> {
        self.rows.rows_affected()
    }
}

impl std::fmt::Debug for RowStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowStream")
            .field("pooled", &self.connection.is_some())
            .finish_non_exhaustive()
    }
}

impl Stream for RowStream {
    type Item = OrmResult<Row>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.project()
            .rows
            .poll_next(cx)
            .map(|item| item.map(|row| row.map_err(OrmError::query)))
    }
}

/// Implements both traits for a type that derefs to `tokio_postgres::Client`
/// or `tokio_postgres::Transaction` (`$inner`).
macro_rules! impl_client_traits {
    ($ty:ty => $inner:ty) => {
        impl GenericClient for $ty {
            async fn query(&self, sql: &str, params: Params<'_>) -> OrmResult<Vec<Row>> {
                <$inner>::query(self, sql, params)
                    .await
                    .map_err(OrmError::query)
            }

            async fn query_opt(&self, sql: &str, params: Params<'_>) -> OrmResult<Option<Row>> {
                <$inner>::query_opt(self, sql, params)
                    .await
                    .map_err(OrmError::query)
            }

            async fn execute(&self, sql: &str, params: Params<'_>) -> OrmResult<u64> {
                <$inner>::execute(self, sql, params)
                    .await
                    .map_err(OrmError::query)
            }

            async fn prepare(&self, sql: &str) -> OrmResult<Statement> {
                <$inner>::prepare(self, sql).await.map_err(OrmError::query)
            }
        }

        impl StreamingClient for $ty {
            async fn query_stream(&self, sql: &str, params: Params<'_>) -> OrmResult<RowStream> {
                let rows = <$inner>::query_raw(self, sql, params.iter().copied())
                    .await
                    .map_err(OrmError::query)?;
                Ok(RowStream::new(rows, None))
            }
        }
    };
}

impl_client_traits!(tokio_postgres::Client => tokio_postgres::Client);
impl_client_traits!(tokio_postgres::Transaction<'_> => tokio_postgres::Transaction<'_>);
impl_client_traits!(deadpool_postgres::Object => tokio_postgres::Client);
impl_client_traits!(deadpool_postgres::Transaction<'_> => tokio_postgres::Transaction<'_>);
