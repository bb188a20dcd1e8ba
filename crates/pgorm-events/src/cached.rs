//! [`Cached`]: a [`GenericClient`] over a [`PgClient`]'s pool that prepares
//! each statement once per pooled connection (`prepare_cached`), so the
//! worker's hot statements (claim, complete, renew) cost one round trip
//! instead of a parse and an execute.

use pgorm::tokio_postgres::{Client, Row, Statement};
use pgorm::{GenericClient, OrmError, OrmResult, Params, PgClient};

/// Runs statements on a pooled connection with cached prepared statements.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cached<'a>(pub(crate) &'a PgClient);

fn orm(source: pgorm::tokio_postgres::Error) -> OrmError {
    let closed = source.is_closed()
        || std::error::Error::source(&source).is_some_and(|s| s.is::<std::io::Error>());
    if closed {
        OrmError::Connection { source }
    } else {
        OrmError::Query { source }
    }
}

impl GenericClient for Cached<'_> {
    async fn query(&self, sql: &str, params: Params<'_>) -> OrmResult<Vec<Row>> {
        let connection = self.0.connection().await?;
        let statement = connection.prepare_cached(sql).await.map_err(orm)?;
        Client::query(&connection, &statement, params)
            .await
            .map_err(orm)
    }

    async fn query_opt(&self, sql: &str, params: Params<'_>) -> OrmResult<Option<Row>> {
        let connection = self.0.connection().await?;
        let statement = connection.prepare_cached(sql).await.map_err(orm)?;
        Client::query_opt(&connection, &statement, params)
            .await
            .map_err(orm)
    }

    async fn execute(&self, sql: &str, params: Params<'_>) -> OrmResult<u64> {
        let connection = self.0.connection().await?;
        let statement = connection.prepare_cached(sql).await.map_err(orm)?;
        Client::execute(&connection, &statement, params)
            .await
            .map_err(orm)
    }

    async fn prepare(&self, sql: &str) -> OrmResult<Statement> {
        let connection = self.0.connection().await?;
        connection.prepare_cached(sql).await.map_err(orm)
    }
}
