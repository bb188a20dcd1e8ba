//! Shared helpers of the integration tests: every test runs against the real
//! PostgreSQL server that pgorm-testkit starts for this test process.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

#[allow(unused_imports)]
pub use pgorm_testkit::{FaultProxy, ProxyMode, TestServer};

/// A deadline that only catches hangs: far above any normal duration.
pub const HANG: Duration = Duration::from_secs(30);

/// A fresh database on the shared server, as a URL.
pub async fn fresh_database() -> String {
    TestServer::shared()
        .create_database()
        .await
        .expect("create a test database")
}

/// Awaits `future`, failing the test if it takes longer than [`HANG`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(HANG, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not finish within {HANG:?}"),
    }
}

/// A plain tokio-postgres connection, driven in the background.
pub async fn raw_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(connection);
    client
}
