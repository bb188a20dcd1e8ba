//! [`PgClient`], the recommended handle: a pool for statements plus the
//! settings (and TLS connector) to open dedicated connections, and
//! [`PgTransaction`], a transaction on one pooled connection.

use std::sync::Arc;

use deadpool_postgres::{Object, Pool};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Config, NoTls, Row, Socket, Statement};

use crate::client::{GenericClient, Params, RowStream, StreamingClient};
use crate::connect::PlainConnector;
use crate::connect::{describe_target, Connector, TlsConnector};
use crate::error::{OrmError, OrmResult};
use crate::pool::{build_pool, parse_url, PoolConfig};

/// The recommended way to talk to PostgreSQL: a connection pool, plus what it
/// takes to open dedicated connections with the same settings.
///
/// Cheap to clone (clones share the pool). Each [`GenericClient`] call takes
/// a pooled connection for its duration; use [`transaction`](Self::transaction)
/// to run several statements on one connection.
///
/// ```no_run
/// use pgorm::prelude::*;
///
/// # async fn run() -> OrmResult<()> {
/// let client = PgClient::connect("postgres://app@localhost/app").await?;
/// let row = client.query_one("SELECT $1::int + 1", &[&41i32]).await?;
/// assert_eq!(row.get::<_, i32>(0), 42);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgClient {
    pool: Pool,
    config: Arc<Config>,
    connector: Arc<dyn Connector>,
}

impl std::fmt::Debug for PgClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PgClient")
            .field("target", &describe_target(&self.config))
            .field("pool_size", &status.size)
            .field("pool_max_size", &status.max_size)
            .field("pool_available", &status.available)
            .finish()
    }
}

impl PgClient {
    /// Connects without TLS and with [`PoolConfig`]'s defaults.
    ///
    /// One connection is opened at once, so a wrong URL, password or host
    /// fails here rather than at the first query.
    ///
    /// # Errors
    /// [`OrmError::Config`] for an unparsable URL, [`OrmError::Connection`]
    /// when the server cannot be reached or refuses the login.
    pub async fn connect(database_url: &str) -> OrmResult<PgClient> {
        Self::connect_with(database_url, PoolConfig::default()).await
    }

    /// Connects without TLS, with a pool configured by `pool_config`.
    ///
    /// # Errors
    /// As [`connect`](Self::connect), and [`OrmError::Validation`] for an
    /// invalid `pool_config`.
    pub async fn connect_with(database_url: &str, pool_config: PoolConfig) -> OrmResult<PgClient> {
        Self::build(database_url, pool_config, NoTls, Arc::new(PlainConnector)).await
    }

    /// Connects with any tokio-postgres TLS connector (for instance
    /// [`tls::rustls_connector`](crate::tls::rustls_connector) with the
    /// `rustls` feature). The connector is kept for dedicated connections.
    ///
    /// # Errors
    /// As [`connect_with`](Self::connect_with).
    pub async fn connect_with_tls<T>(
        database_url: &str,
        pool_config: PoolConfig,
        tls: T,
    ) -> OrmResult<PgClient>
    where
        T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
        T::Stream: Sync + Send,
        T::TlsConnect: Sync + Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let connector = Arc::new(TlsConnector(tls.clone()));
        Self::build(database_url, pool_config, tls, connector).await
    }

    async fn build<T>(
        database_url: &str,
        pool_config: PoolConfig,
        tls: T,
        connector: Arc<dyn Connector>,
    ) -> OrmResult<PgClient>
    where
        T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
        T::Stream: Sync + Send,
        T::TlsConnect: Sync + Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let config = parse_url(database_url)?;
        let pool = build_pool(config.clone(), tls, &pool_config)?;
        let client = PgClient {
            pool,
            config: Arc::new(config),
            connector,
        };
        drop(client.connection().await?);
        Ok(client)
    }

    /// The underlying deadpool pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The parsed connection settings (its `Debug` output hides the password).
    pub fn pg_config(&self) -> &Config {
        &self.config
    }

    /// Takes a connection from the pool; it goes back when dropped.
    ///
    /// # Errors
    /// [`OrmError::PoolExhausted`] when none becomes free within the pool's
    /// wait timeout, [`OrmError::Connection`] when a new one cannot be opened.
    pub async fn connection(&self) -> OrmResult<Object> {
        Ok(self.pool.get().await?)
    }

    /// Begins a transaction on one pooled connection.
    ///
    /// Finish it with [`PgTransaction::commit`] or
    /// [`PgTransaction::rollback`]; dropped unfinished (say, by `?` on an
    /// error), it is rolled back.
    ///
    /// # Errors
    /// As [`connection`](Self::connection), and the error of `BEGIN`.
    pub async fn transaction(&self) -> OrmResult<PgTransaction> {
        let connection = self.connection().await?;
        connection
            .batch_execute("BEGIN")
            .await
            .map_err(OrmError::query)?;
        Ok(PgTransaction {
            connection: Some(connection),
        })
    }

    /// What opens dedicated connections (outside the pool) with this
    /// client's TLS connector.
    #[cfg_attr(not(feature = "listen"), allow(dead_code))]
    pub(crate) fn connector(&self) -> Arc<dyn Connector> {
        self.connector.clone()
    }
}

impl GenericClient for PgClient {
    async fn query(&self, sql: &str, params: Params<'_>) -> OrmResult<Vec<Row>> {
        self.connection().await?.query(sql, params).await
    }

    async fn query_opt(&self, sql: &str, params: Params<'_>) -> OrmResult<Option<Row>> {
        self.connection().await?.query_opt(sql, params).await
    }

    async fn execute(&self, sql: &str, params: Params<'_>) -> OrmResult<u64> {
        GenericClient::execute(&self.connection().await?, sql, params).await
    }

    /// Prepares on a pooled connection (cached there). The statement is
    /// good for inspecting types; statements run through `PgClient` are sent
    /// as SQL text, since the next call may use another connection.
    async fn prepare(&self, sql: &str) -> OrmResult<Statement> {
        self.connection()
            .await?
            .prepare_cached(sql)
            .await
            .map_err(OrmError::query)
    }
}

impl StreamingClient for PgClient {
    async fn query_stream(&self, sql: &str, params: Params<'_>) -> OrmResult<RowStream> {
        let connection = self.connection().await?;
        let rows = connection
            .query_raw(sql, params.iter().copied())
            .await
            .map_err(OrmError::query)?;
        Ok(RowStream::new(rows, Some(connection)))
    }
}

/// A transaction on one pooled connection, from [`PgClient::transaction`].
///
/// Statements run through its [`GenericClient`] and [`StreamingClient`]
/// implementations. Dropping it without [`commit`](Self::commit) rolls it
/// back: inside a tokio runtime a `ROLLBACK` is sent and the connection goes
/// back to the pool; outside one, the connection is closed, which rolls back
/// on the server.
pub struct PgTransaction {
    connection: Option<Object>,
}

impl std::fmt::Debug for PgTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTransaction").finish_non_exhaustive()
    }
}

impl PgTransaction {
    fn client(&self) -> &Object {
        self.connection
            .as_ref()
            .expect("a PgTransaction holds its connection until it is consumed")
    }

    /// Commits the transaction.
    ///
    /// # Errors
    /// The server's error, for instance a deferred constraint that fails at
    /// commit; the transaction is then rolled back.
    pub async fn commit(mut self) -> OrmResult<()> {
        self.finish("COMMIT").await
    }

    /// Rolls the transaction back.
    ///
    /// # Errors
    /// When the connection is lost (the server rolls back anyway).
    pub async fn rollback(mut self) -> OrmResult<()> {
        self.finish("ROLLBACK").await
    }

    async fn finish(&mut self, statement: &str) -> OrmResult<()> {
        let connection = self
            .connection
            .take()
            .expect("a PgTransaction holds its connection until it is consumed");
        connection
            .batch_execute(statement)
            .await
            .map_err(OrmError::query)
    }
}

impl Drop for PgTransaction {
    fn drop(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        let mut unfinished = DetachOnDrop(Some(connection));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let rolled_back = match unfinished.0.as_ref() {
                    Some(connection) => connection.batch_execute("ROLLBACK").await.is_ok(),
                    None => false,
                };
                if rolled_back {
                    // Clean again: back to the pool.
                    drop(unfinished.0.take());
                }
            });
        }
    }
}

/// Holds a connection whose transaction may still be open. Unless it is taken
/// out first, dropping it closes the connection instead of returning it to the
/// pool, and the server rolls the transaction back.
struct DetachOnDrop(Option<Object>);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        if let Some(connection) = self.0.take() {
            drop(Object::take(connection));
        }
    }
}

impl GenericClient for PgTransaction {
    async fn query(&self, sql: &str, params: Params<'_>) -> OrmResult<Vec<Row>> {
        self.client().query(sql, params).await
    }

    async fn query_opt(&self, sql: &str, params: Params<'_>) -> OrmResult<Option<Row>> {
        self.client().query_opt(sql, params).await
    }

    async fn execute(&self, sql: &str, params: Params<'_>) -> OrmResult<u64> {
        GenericClient::execute(self.client(), sql, params).await
    }

    async fn prepare(&self, sql: &str) -> OrmResult<Statement> {
        GenericClient::prepare(self.client(), sql).await
    }
}

impl StreamingClient for PgTransaction {
    async fn query_stream(&self, sql: &str, params: Params<'_>) -> OrmResult<RowStream> {
        self.client().query_stream(sql, params).await
    }
}
