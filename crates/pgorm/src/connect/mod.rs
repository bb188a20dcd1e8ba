//! Opening dedicated connections (outside any pool) with a remembered TLS
//! connector, behind one object-safe trait so that handles stay non-generic.
//!
//! Where it can, a connection carries a [`TapStream`](crate::tap::TapStream)
//! that lifts notifications out of the bytes the server sends:
//! - without TLS, [`PlainConnector`] opens the socket itself and puts the
//!   tap beneath the connection, for every URL whose settings it can honour
//!   exactly as tokio-postgres would; other URLs (several hosts,
//!   `target_session_attrs`, random load balancing) go to tokio-postgres'
//!   own connect, untapped;
//! - with TLS, [`TlsConnector`] runs tokio-postgres' own connect with a
//!   TLS connector that puts the tap above the TLS stream (`TappingTls`),
//!   so every setting applies unchanged and the tap reads decrypted bytes.
//!
//! Notifications a tap did not lift (an untapped connection, a session that
//! fell back to a plain socket under `sslmode=prefer`) come from
//! `poll_message` as usual; the driver takes both.

mod plain;
mod tapping_tls;

use std::any::TypeId;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Socket};

use crate::error::{OrmError, OrmResult};
use crate::tap::NotificationTap;

pub(crate) use plain::PlainConnector;
use tapping_tls::TappingTls;

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
    /// connection that carries a tap.
    fn tap(&self) -> Option<&NotificationTap> {
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

/// A tapped connection: the connection, and the tap its stream fills.
struct TappedConnection<S, T> {
    connection: tokio_postgres::Connection<S, T>,
    tap: Arc<NotificationTap>,
}

impl<S, T> RawConnection for TappedConnection<S, T>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<AsyncMessage, tokio_postgres::Error>>> {
        self.connection.poll_message(cx)
    }

    fn tap(&self) -> Option<&NotificationTap> {
        Some(&self.tap)
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
///
/// `NoTls` goes to [`PlainConnector`]: wrapped, it would no longer tell
/// tokio-postgres that it cannot encrypt (a hook private to tokio-postgres),
/// and `sslmode=prefer` would then ask the server for TLS and fail.
pub(crate) struct TlsConnector<T>(pub(crate) T);

impl<T> Connector for TlsConnector<T>
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    fn connect<'a>(&'a self, config: &'a Config) -> BoxFuture<'a, OrmResult<Connected>> {
        if TypeId::of::<T>() == TypeId::of::<NoTls>() {
            return PlainConnector.connect(config);
        }
        Box::pin(async move {
            let tap = Arc::new(NotificationTap::default());
            let (client, connection) = config
                .connect(TappingTls::new(self.0.clone(), tap.clone()))
                .await
                .map_err(OrmError::connection)?;
            let connection = TappedConnection { connection, tap };
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

#[cfg(test)]
mod tests;
