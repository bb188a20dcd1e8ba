//! Plain connections opened by pgorm itself, so that a [`TapStream`] can
//! sit beneath the connection. The socket is opened as tokio-postgres opens
//! it (`connect_socket.rs`): each address of the host in turn, each with the
//! connect timeout, `TCP_NODELAY`, `tcp_user_timeout` (Linux) and the
//! keepalive settings. A configuration this path cannot honour exactly goes
//! to tokio-postgres' own connect, untapped.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::{Host, LoadBalanceHosts, TargetSessionAttrs};
use tokio_postgres::{Config, NoTls};

use super::{BoxFuture, Connected, Connector, RawConnection, TappedConnection};
use crate::error::{OrmError, OrmResult};
use crate::tap::{NotificationTap, TapStream};

/// A plain socket pgorm opened itself.
pub(crate) enum PlainSocket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for PlainSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlainSocket::Tcp(stream) => Pin::new(stream).poll_read(cx, out),
            PlainSocket::Unix(stream) => Pin::new(stream).poll_read(cx, out),
        }
    }
}

impl AsyncWrite for PlainSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PlainSocket::Tcp(stream) => Pin::new(stream).poll_write(cx, data),
            PlainSocket::Unix(stream) => Pin::new(stream).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlainSocket::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            PlainSocket::Unix(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlainSocket::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            PlainSocket::Unix(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

/// The connector for plain connections: opens the socket itself so that a
/// [`TapStream`] can sit under the connection.
pub(crate) struct PlainConnector;

impl Connector for PlainConnector {
    fn connect<'a>(&'a self, config: &'a Config) -> BoxFuture<'a, OrmResult<Connected>> {
        Box::pin(async move {
            if !tap_can_honour(config) {
                let (client, connection) =
                    config.connect(NoTls).await.map_err(OrmError::connection)?;
                return Ok((client, Box::new(connection) as Box<dyn RawConnection>));
            }
            connect_tapped(config).await
        })
    }
}

/// Whether opening the socket here gives exactly what tokio-postgres' own
/// connect would: one host (or host address) and port, any session, no
/// shuffling. Several hosts are tried in turn, `target_session_attrs` asks
/// the server after startup, and random load balancing shuffles addresses:
/// tokio-postgres does each of these itself.
fn tap_can_honour(config: &Config) -> bool {
    let hosts = config.get_hosts().len().max(config.get_hostaddrs().len());
    hosts == 1
        && config.get_ports().len() <= 1
        && config.get_target_session_attrs() == TargetSessionAttrs::Any
        && config.get_load_balance_hosts() == LoadBalanceHosts::Disable
}

/// Where one attempt connects.
#[derive(Debug, Clone)]
enum Target {
    Tcp(IpAddr),
    Unix(PathBuf),
}

impl Target {
    /// The address for error messages (never a password: there is none).
    fn describe(&self, port: u16) -> String {
        match self {
            Target::Tcp(address) => std::net::SocketAddr::new(*address, port).to_string(),
            Target::Unix(directory) => format!("{}/.s.PGSQL.{port}", directory.display()),
        }
    }
}

/// tokio-postgres' `connect` for one host: the host address if given, else
/// every address the host name resolves to, in turn, each a whole attempt
/// (socket and startup); the last error if none succeeds.
async fn connect_tapped(config: &Config) -> OrmResult<Connected> {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let targets = match (config.get_hostaddrs().first(), config.get_hosts().first()) {
        (Some(address), _) => vec![Target::Tcp(*address)],
        (None, Some(Host::Tcp(name))) => tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|source| OrmError::Socket {
                target: format!("{name}:{port}"),
                source,
            })?
            .map(|address| Target::Tcp(address.ip()))
            .collect(),
        (None, Some(Host::Unix(directory))) => vec![Target::Unix(directory.clone())],
        (None, None) => Vec::new(),
    };
    let mut last_error = None;
    for target in targets {
        match connect_once(&target, port, config).await {
            Ok(connected) => return Ok(connected),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| OrmError::Socket {
        target: super::describe_target(config),
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            "could not resolve any addresses",
        ),
    }))
}

async fn connect_once(target: &Target, port: u16, config: &Config) -> OrmResult<Connected> {
    let socket = open_socket(target, port, config).await?;
    let tap = Arc::new(NotificationTap::default());
    let (client, connection) = config
        .connect_raw(TapStream::new(socket, tap.clone()), NoTls)
        .await
        .map_err(OrmError::connection)?;
    let connection = TappedConnection { connection, tap };
    Ok((client, Box::new(connection) as Box<dyn RawConnection>))
}

/// Opens `target` with the connect timeout, and for TCP sets what
/// tokio-postgres sets: `TCP_NODELAY`, `TCP_USER_TIMEOUT` (Linux) and the
/// keepalive settings (when `keepalives` is on).
async fn open_socket(target: &Target, port: u16, config: &Config) -> OrmResult<PlainSocket> {
    let connect = async {
        let opened: io::Result<PlainSocket> = match target {
            Target::Tcp(address) => {
                let stream = TcpStream::connect((*address, port)).await?;
                configure_tcp(&stream, config)?;
                Ok(PlainSocket::Tcp(stream))
            }
            Target::Unix(directory) => {
                let path = directory.join(format!(".s.PGSQL.{port}"));
                Ok(PlainSocket::Unix(UnixStream::connect(path).await?))
            }
        };
        opened
    };
    let opened = match config.get_connect_timeout() {
        Some(timeout) => {
            tokio::time::timeout(*timeout, connect)
                .await
                .map_err(|_| OrmError::Timeout {
                    operation: "connect",
                    after: *timeout,
                })?
        }
        None => connect.await,
    };
    opened.map_err(|source| OrmError::Socket {
        target: target.describe(port),
        source,
    })
}

fn configure_tcp(stream: &TcpStream, config: &Config) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let socket = socket2::SockRef::from(stream);
    #[cfg(target_os = "linux")]
    if let Some(timeout) = config.get_tcp_user_timeout() {
        socket.set_tcp_user_timeout(Some(*timeout))?;
    }
    if config.get_keepalives() {
        socket.set_tcp_keepalive(&keepalive(config))?;
    }
    Ok(())
}

/// The keepalive settings, as tokio-postgres builds them (the same
/// platforms skip interval and retries).
fn keepalive(config: &Config) -> socket2::TcpKeepalive {
    #[allow(unused_mut)]
    let mut keepalive = socket2::TcpKeepalive::new().with_time(config.get_keepalives_idle());
    #[cfg(not(any(
        target_os = "aix",
        target_os = "redox",
        target_os = "solaris",
        target_os = "openbsd"
    )))]
    if let Some(interval) = config.get_keepalives_interval() {
        keepalive = keepalive.with_interval(interval);
    }
    #[cfg(not(any(
        target_os = "aix",
        target_os = "redox",
        target_os = "solaris",
        target_os = "windows",
        target_os = "openbsd"
    )))]
    if let Some(retries) = config.get_keepalives_retries() {
        keepalive = keepalive.with_retries(retries);
    }
    keepalive
}

#[cfg(test)]
mod tests;
