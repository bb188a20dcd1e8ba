//! Opening dedicated connections (outside any pool) with a remembered TLS
//! connector, behind one object-safe trait so that handles stay non-generic.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Client, Config, Socket};

use crate::error::{OrmError, OrmResult};

/// A boxed future, as the connector returns it.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The I/O half of a tokio-postgres connection, whatever its TLS stream type.
pub(crate) trait RawConnection: Send + 'static {
    /// `tokio_postgres::Connection::poll_message`: drives the connection and
    /// yields notices and notifications. `None` and `Some(Err)` are terminal.
    fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<AsyncMessage, tokio_postgres::Error>>>;

    /// Where notifications lifted out of the byte stream wait, for a
    /// connection opened by [`PlainConnector`](crate::tap::PlainConnector).
    fn tap(&self) -> Option<&crate::tap::NotificationTap> {
        None
    }
}

impl<S, T> RawConnection for tokio_postgres::Connection<S, T>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<AsyncMessage, tokio_postgres::Error>>> {
        tokio_postgres::Connection::poll_message(self, cx)
    }
}

/// A connection's two halves: the client that sends statements and the
/// connection that must be polled for anything to happen.
pub(crate) type Connected = (Client, Box<dyn RawConnection>);

/// Opens dedicated connections.
pub(crate) trait Connector: Send + Sync + 'static {
    fn connect<'a>(&'a self, config: &'a Config) -> BoxFuture<'a, OrmResult<Connected>>;
}

/// The [`Connector`] for any tokio-postgres TLS connector (or `NoTls`).
pub(crate) struct TlsConnector<T>(pub(crate) T);

impl<T> Connector for TlsConnector<T>
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    fn connect<'a>(&'a self, config: &'a Config) -> BoxFuture<'a, OrmResult<Connected>> {
        Box::pin(async move {
            let (client, connection) = config
                .connect(self.0.clone())
                .await
                .map_err(OrmError::connection)?;
            Ok((client, Box::new(connection) as Box<dyn RawConnection>))
        })
    }
}

/// Describes where a configuration points, for `Debug` output and messages:
/// hosts, ports, user and database, never the password.
pub(crate) fn describe_target(config: &Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    format!(
        "host={} port={} user={} dbname={}",
        hosts.join(","),
        ports.join(","),
        config.get_user().unwrap_or("?"),
        config.get_dbname().unwrap_or("?"),
    )
}
