//! Connection pools over deadpool-postgres: [`create_pool`] and
//! [`create_pool_with_config`] with a validated [`PoolConfig`].

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Config, NoTls, Socket};

use crate::error::{OrmError, OrmResult, ValidationError};

/// The pool's size and timeouts.
///
/// Built with `PoolConfig::new()` (or `Default`) and the builder methods;
/// every default is documented on its method.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolConfig {
    max_size: usize,
    wait_timeout: Duration,
    create_timeout: Duration,
    recycle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_size: 16,
            wait_timeout: Duration::from_secs(30),
            create_timeout: Duration::from_secs(10),
            recycle_timeout: Duration::from_secs(5),
        }
    }
}

impl PoolConfig {
    /// The defaults: 16 connections, 30 s wait, 10 s to open, 5 s to recycle.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The most connections the pool opens (default 16; at least 1).
    #[must_use]
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.max_size = max_size;
        self
    }

    /// How long a caller waits for a free connection before
    /// [`OrmError::PoolExhausted`] (default 30 s).
    #[must_use]
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// How long opening a new connection may take (default 10 s).
    #[must_use]
    pub fn create_timeout(mut self, timeout: Duration) -> Self {
        self.create_timeout = timeout;
        self
    }

    /// How long checking a returned connection may take (default 5 s).
    #[must_use]
    pub fn recycle_timeout(mut self, timeout: Duration) -> Self {
        self.recycle_timeout = timeout;
        self
    }

    /// The configured maximum number of connections.
    pub fn get_max_size(&self) -> usize {
        self.max_size
    }

    fn validate(&self) -> OrmResult<()> {
        if self.max_size == 0 {
            return Err(ValidationError::Setting {
                setting: "max_size",
                reason: "a pool needs at least one connection".into(),
            }
            .into());
        }
        Ok(())
    }
}

/// Creates a pool for `database_url` (a `postgres://` URL or a key=value
/// string) without TLS and with [`PoolConfig`]'s defaults. No connection is
/// opened until one is needed.
///
/// # Errors
/// [`OrmError::Config`] when the URL cannot be parsed.
pub fn create_pool(database_url: &str) -> OrmResult<Pool> {
    create_pool_with_config(database_url, PoolConfig::default())
}

/// Creates a pool for `database_url` with `config`, without TLS.
///
/// # Errors
/// [`OrmError::Config`] for an unparsable URL, [`OrmError::Validation`] for
/// an invalid `config`.
pub fn create_pool_with_config(database_url: &str, config: PoolConfig) -> OrmResult<Pool> {
    let pg_config = parse_url(database_url)?;
    build_pool(pg_config, NoTls, &config)
}

pub(crate) fn parse_url(database_url: &str) -> OrmResult<Config> {
    database_url
        .parse::<Config>()
        .map_err(|source| OrmError::Config { source })
}

pub(crate) fn build_pool<T>(pg_config: Config, tls: T, config: &PoolConfig) -> OrmResult<Pool>
where
    T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
    T::Stream: Sync + Send,
    T::TlsConnect: Sync + Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    config.validate()?;
    let manager = Manager::from_config(
        pg_config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(config.max_size)
        .wait_timeout(Some(config.wait_timeout))
        .create_timeout(Some(config.create_timeout))
        .recycle_timeout(Some(config.recycle_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|error| {
            // Only reachable without a runtime, which the builder sets above.
            OrmError::closed(format!("the pool could not be built: {error}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_of_zero_connections_is_rejected() {
        let error =
            create_pool_with_config("postgres://u@localhost/db", PoolConfig::new().max_size(0))
                .unwrap_err();
        assert!(matches!(
            error,
            OrmError::Validation(ValidationError::Setting {
                setting: "max_size",
                ..
            })
        ));
    }

    #[test]
    fn an_unparsable_url_is_a_config_error_without_the_password() {
        let error = create_pool("postgres://user:hunter2@localhost:notaport/db").unwrap_err();
        assert!(matches!(error, OrmError::Config { .. }), "{error:?}");
        assert!(!error.to_string().contains("hunter2"));
        assert!(!format!("{error:?}").contains("hunter2"));
    }
}
