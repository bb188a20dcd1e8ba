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

/// A name no other test uses, for channels and application names.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}_{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Sends `NOTIFY` through a plain tokio-postgres client.
pub async fn send(client: &tokio_postgres::Client, channel: &str, payload: &str) {
    client
        .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
        .await
        .expect("pg_notify");
}

/// Sends `count` notifications numbered from `from` (the payloads) on
/// `channel`, in one statement (so they commit, and arrive, together).
pub async fn send_numbered(client: &tokio_postgres::Client, channel: &str, from: i32, count: i32) {
    client
        .execute(
            "SELECT pg_notify($1, n::text) FROM generate_series($2::int, $2::int + $3::int - 1) n",
            &[&channel, &from, &count],
        )
        .await
        .expect("pg_notify");
}

/// The next event of `listener`, failing the test on a hang or an end.
pub async fn next_event(listener: &mut pgorm::listen::PgListener) -> pgorm::listen::ListenerEvent {
    within("the next listener event", listener.next_event())
        .await
        .expect("the listener ended")
        .expect("the listener failed")
}

/// The next notification of `listener`, failing the test on a hang or an end.
pub async fn next_notification(
    listener: &mut pgorm::listen::PgListener,
) -> pgorm::listen::PgNotification {
    within("the next notification", listener.next())
        .await
        .expect("the listener ended")
        .expect("the listener failed")
}

/// Pids of sessions with this application name.
pub async fn backends_named(client: &tokio_postgres::Client, application_name: &str) -> Vec<i32> {
    client
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&application_name],
        )
        .await
        .expect("pg_stat_activity")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Polls `condition` every 10 ms until it holds, failing after [`HANG`].
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Terminates every session with this application name, as an operator
/// (or a failover) would.
pub async fn terminate_backends(client: &tokio_postgres::Client, application_name: &str) {
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&application_name],
        )
        .await
        .expect("pg_terminate_backend");
}

/// A URL that requires TLS to the shared server (by a name its certificate
/// covers) and a connector that trusts the server's authority.
pub fn tls_url_and_connector() -> (String, pgorm::tls::MakeRustlsConnect) {
    let server = TestServer::shared();
    let tls = pgorm::tls::rustls_connector_with_pem_roots(server.ca_certificate_pem().as_bytes())
        .expect("the test authority's certificate");
    let url = format!(
        "{}?sslmode=require",
        server.url().replace("127.0.0.1", "localhost")
    );
    (url, tls)
}

/// Reads a change feed until `done` says the collected changes are
/// complete (within the hang deadline).
pub async fn collect_until<M: pgorm::model::Model>(
    feed: &mut pgorm::changes::ChangeFeed<M, pgorm::PgClient>,
    mut done: impl FnMut(&[pgorm::changes::Change<M>]) -> bool,
) -> Vec<pgorm::changes::Change<M>> {
    let mut seen = Vec::new();
    within("the changes", async {
        while !done(&seen) {
            let batch = feed.next_batch().await.expect("ended").expect("failed");
            seen.extend(batch);
        }
    })
    .await;
    seen
}
