//! How listeners open their connection: every setting of the connection
//! string means what it means to libpq and tokio-postgres, on the tapped
//! plain path, on the untapped one and over TLS.

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use pgorm::listen::{PgListener, PgListenerConfig};
use pgorm::OrmError;
use pgorm_testkit::{ServerOptions, SUPERUSER};
use support::*;

/// A connect timeout far above [`HANG`]: a connect that waits for it is
/// caught as a hang instead of passing as a timeout.
const LONGER_THAN_HANG: Duration = Duration::from_secs(120);

/// A second server whose sessions are read-only, as a standby's are.
fn read_only_server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        TestServer::spawn_with(
            ServerOptions::default().setting("default_transaction_read_only", "on"),
        )
        .expect("start a read-only server")
    })
}

/// A key-value connection string over the Unix sockets of `servers` (local
/// connections need no password, so servers with different passwords can
/// share one string).
fn unix_socket_url(servers: &[&TestServer], extra: &str) -> String {
    let hosts: Vec<String> = servers
        .iter()
        .map(|server| server.socket_directory().display().to_string())
        .collect();
    let ports: Vec<String> = servers
        .iter()
        .map(|server| server.port().to_string())
        .collect();
    format!(
        "host={} port={} user={SUPERUSER} dbname=postgres {extra}",
        hosts.join(","),
        ports.join(","),
    )
}

async fn publisher() -> tokio_postgres::Client {
    raw_client(&TestServer::shared().url()).await
}

fn listener_config(channel: &str) -> PgListenerConfig {
    PgListenerConfig::new()
        .channels([channel])
        .connect_timeout(LONGER_THAN_HANG)
}

#[tokio::test]
async fn sslmode_require_on_a_plain_listener_fails_at_once_with_the_tls_error() {
    // The server supports TLS and answers the SSLRequest with 'S'; a
    // listener without TLS must fail as tokio-postgres does, not wait for
    // its connect timeout.
    let url = format!("{}?sslmode=require", TestServer::shared().url());
    let channel = unique("require_plain");
    let result = within(
        "a plain listener with sslmode=require",
        PgListener::connect_with(&url, listener_config(&channel)),
    )
    .await;
    let error = result.expect_err("TLS cannot be used without a TLS connector");
    assert!(
        !matches!(error, OrmError::Timeout { .. }),
        "expected the TLS error, got {error:?}"
    );
    assert!(
        error.is_connection(),
        "expected a connection error: {error:?}"
    );
}

#[tokio::test]
async fn sslmode_prefer_and_disable_on_a_plain_listener_connect_and_deliver() {
    let publisher = publisher().await;
    for mode in ["prefer", "disable"] {
        let url = format!("{}?sslmode={mode}", TestServer::shared().url());
        let channel = unique("ssl_optional");
        let mut listener = within(
            "a plain listener with an optional sslmode",
            PgListener::connect_with(&url, listener_config(&channel)),
        )
        .await
        .unwrap_or_else(|error| panic!("sslmode={mode}: {error:?}"));
        for payload in ["", "über", &"p".repeat(7999)] {
            send(&publisher, &channel, payload).await;
            assert_eq!(next_notification(&mut listener).await.payload, payload);
        }
        listener.close().await.unwrap();
    }
}

#[tokio::test]
async fn a_read_write_url_refuses_a_lone_read_only_server() {
    // One host, so the old tapped path opened it without asking whether it
    // takes writes; libpq and tokio-postgres refuse it.
    let read_only = tokio::task::spawn_blocking(read_only_server).await.unwrap();
    let channel = unique("read_only_refused");
    for url in [
        unix_socket_url(&[read_only], "target_session_attrs=read-write"),
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/postgres?target_session_attrs=read-write",
            read_only.password(),
            read_only.port()
        ),
    ] {
        let result = within(
            "a read-write listener on a read-only server",
            PgListener::connect_with(&url, listener_config(&channel)),
        )
        .await;
        let error = result.expect_err("a read-only server must be refused");
        assert!(error.is_connection(), "{error:?}");
    }
    // The same URL without the requirement connects.
    let url = unix_socket_url(&[read_only], "");
    let listener = within(
        "a listener on a read-only server",
        PgListener::connect_with(&url, listener_config(&channel)),
    )
    .await
    .unwrap();
    listener.close().await.unwrap();
}

#[tokio::test]
async fn a_read_write_url_leaves_the_listener_on_the_writable_server() {
    let read_only = tokio::task::spawn_blocking(read_only_server).await.unwrap();
    let url = unix_socket_url(
        &[read_only, TestServer::shared()],
        "target_session_attrs=read-write",
    );
    let channel = unique("read_write");
    let mut listener = within(
        "a read-write listener given a read-only server first",
        PgListener::connect_with(&url, listener_config(&channel)),
    )
    .await
    .unwrap();
    // Only the writable (shared) server can reach it.
    let publisher = publisher().await;
    send(&publisher, &channel, "on the writable one").await;
    assert_eq!(
        next_notification(&mut listener).await.payload,
        "on the writable one"
    );
}

#[tokio::test]
async fn a_read_only_url_refuses_a_writable_server() {
    let url = unix_socket_url(&[TestServer::shared()], "target_session_attrs=read-only");
    let channel = unique("read_only_wanted");
    let result = within(
        "a read-only listener on a writable server",
        PgListener::connect_with(&url, listener_config(&channel)),
    )
    .await;
    assert!(result.expect_err("refused").is_connection());
}

#[tokio::test]
async fn a_random_load_balanced_url_connects_and_delivers() {
    let url = format!("{}?load_balance_hosts=random", TestServer::shared().url());
    let channel = unique("load_balanced");
    let mut listener = within(
        "a load-balanced listener",
        PgListener::connect_with(&url, listener_config(&channel)),
    )
    .await
    .unwrap();
    let publisher = publisher().await;
    send(&publisher, &channel, "balanced").await;
    assert_eq!(next_notification(&mut listener).await.payload, "balanced");
}

#[tokio::test]
async fn a_tls_listener_receives_bursts_and_the_largest_payloads_in_order() {
    let (url, tls) = tls_url_and_connector();
    let channel = unique("tls_burst");
    let name = unique("tls_burst_listener");
    let config = listener_config(&channel).application_name(&name);
    let mut listener = within(
        "a TLS listener",
        PgListener::connect_with_tls(url.parse().unwrap(), tls, config),
    )
    .await
    .unwrap();
    let publisher = publisher().await;
    let encrypted: bool = publisher
        .query_one(
            "SELECT ssl FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE application_name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted, "the listener's session must use TLS");

    // One transaction: every notification arrives together at commit.
    const BURST: i32 = 3000;
    publisher
        .execute(
            "SELECT pg_notify($1, i::text) FROM generate_series(1, $2::int) AS i",
            &[&channel, &BURST],
        )
        .await
        .unwrap();
    for expected in 1..=BURST {
        let notification = next_notification(&mut listener).await;
        assert_eq!(notification.channel, channel);
        assert_eq!(notification.payload, expected.to_string());
    }
    let largest = ["é".repeat(3999) + "x", "z".repeat(7999), String::new()];
    for payload in &largest {
        send(&publisher, &channel, payload).await;
    }
    for payload in &largest {
        assert_eq!(&next_notification(&mut listener).await.payload, payload);
    }
    let stats = listener.stats();
    assert_eq!(stats.received, BURST as u64 + largest.len() as u64);
    listener.close().await.unwrap();
}

#[tokio::test]
async fn a_tls_connector_with_sslmode_disable_delivers_over_the_plain_socket() {
    // tokio-postgres keeps the raw socket, which the TLS tap never sees:
    // notifications then come from tokio-postgres itself.
    let (url, tls) = tls_url_and_connector();
    let url = url.replace("sslmode=require", "sslmode=disable");
    let channel = unique("tls_disabled");
    let mut listener = within(
        "a TLS-capable listener told not to use TLS",
        PgListener::connect_with_tls(url.parse().unwrap(), tls, listener_config(&channel)),
    )
    .await
    .unwrap();
    let publisher = publisher().await;
    for payload in ["", "plain", &"q".repeat(7999)] {
        send(&publisher, &channel, payload).await;
        assert_eq!(next_notification(&mut listener).await.payload, payload);
    }
}
