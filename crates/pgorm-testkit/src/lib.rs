//! Test infrastructure for pgorm: a real, throwaway PostgreSQL server and a
//! fault-injecting TCP proxy. A dev-only crate, used by pgorm's integration
//! tests, its examples and its benchmark; never a dependency of pgorm itself.
//!
//! - [`TestServer`]: `initdb` + `postgres` from the installed binaries, in a
//!   temporary directory, on a free loopback port, with its own superuser.
//!   It can be stopped, started, restarted (same port, same data) and killed
//!   with SIGKILL. [`TestServer::shared`] gives one server per test process.
//! - [`FaultProxy`]: sits between a client and the server and can pass
//!   traffic, cut every connection, refuse new ones, or blackhole (keep the
//!   sockets open and forward nothing, like a dead network path).
//! - [`database_url_or_spawn`]: what examples and the benchmark call: the
//!   `DATABASE_URL` environment variable when it is set, else a server of
//!   their own.
//! - [`NatsServer`]: a throwaway `nats-server` with JetStream on a free
//!   loopback port, restartable and killable like the PostgreSQL one.
//!
//! When no PostgreSQL server binaries are installed, starting a server fails
//! at once with [`Error::NoBinaries`], which says how to install them.

#![warn(missing_docs)]

mod binaries;
mod nats;
mod process;
mod proxy;
mod server;
mod tls;

pub use binaries::locate as locate_binaries;
pub use nats::{locate_nats_server, NatsServer};
pub use proxy::{FaultProxy, ProxyMode};
pub use server::{ServerOptions, TestServer, SUPERUSER};

/// Why a test server or proxy could not be set up.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// No PostgreSQL server binaries were found on this machine.
    NoBinaries(String),
    /// `initdb` or `postgres` failed; the message carries their output.
    Setup(String),
    /// A file or process operation failed.
    Io(std::io::Error),
    /// The server refused a setup statement.
    Postgres(tokio_postgres::Error),
    /// No `nats-server` binary was found (for [`NatsServer`]).
    NoNatsServer(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NoBinaries(looked) => write!(
                f,
                "no PostgreSQL server binaries (initdb, postgres) found: {looked}. \
                 Install them, e.g. `apt-get install -y postgresql` on Debian or Ubuntu, \
                 or point PG_BIN at the directory that holds them"
            ),
            Error::NoNatsServer(looked) => write!(
                f,
                "no nats-server binary found: {looked}. Install it, e.g. \
                 `apt-get install -y nats-server` on Debian or Ubuntu, or set NATS_SERVER \
                 to its path"
            ),
            Error::Setup(message) => write!(f, "test server setup failed: {message}"),
            Error::Io(error) => write!(f, "test server setup failed: {error}"),
            Error::Postgres(error) => write!(f, "test server setup failed: {error}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(error) => Some(error),
            Error::Postgres(error) => Some(error),
            Error::NoBinaries(_) | Error::Setup(_) | Error::NoNatsServer(_) => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Self {
        Error::Io(error)
    }
}

/// The database an example or benchmark should use: `DATABASE_URL` when it is
/// set, otherwise a fresh [`TestServer`], returned so the caller keeps it
/// alive for as long as it needs the URL.
///
/// # Errors
/// As [`TestServer::spawn`].
pub fn database_url_or_spawn() -> Result<(String, Option<TestServer>), Error> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Ok((url, None)),
        _ => {
            let server = TestServer::spawn()?;
            Ok((server.url(), Some(server)))
        }
    }
}
