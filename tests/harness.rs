//! The test harness itself: server lifecycle controls and the fault proxy
//! behave as the reliability tests rely on.

mod support;

use std::time::Duration;

use support::{raw_client, within, FaultProxy, ProxyMode, TestServer};

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("query")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_the_port_and_the_data() {
    let server = TestServer::spawn().unwrap();
    let port = server.port();
    let before = raw_client(&server.url()).await;
    before
        .batch_execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
        .await
        .unwrap();

    tokio::task::block_in_place(|| server.restart()).unwrap();

    assert_eq!(server.port(), port);
    assert!(
        before.query_one("SELECT 1", &[]).await.is_err(),
        "a session from before the restart must be gone"
    );
    let after = raw_client(&server.url()).await;
    let kept: i32 = after
        .query_one("SELECT x FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_refuses_connections_until_started_again() {
    let server = TestServer::spawn().unwrap();
    tokio::task::block_in_place(|| server.kill()).unwrap();
    assert!(!server.is_running());
    let refused = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls).await;
    assert!(refused.is_err(), "nothing should listen after a kill");

    tokio::task::block_in_place(|| server.start()).unwrap();
    let client = raw_client(&server.url()).await;
    assert_eq!(
        client
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

#[tokio::test]
async fn the_proxy_passes_traffic_by_default() {
    let server = TestServer::shared();
    let proxy = FaultProxy::start(server.port()).await.unwrap();
    let client = raw_client(&proxy.url_for(&server.url())).await;
    assert_eq!(
        client
            .query_one("SELECT 2", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );
    assert_eq!(proxy.active_connections(), 1);
}

#[tokio::test]
async fn cutting_closes_open_connections_and_new_ones_still_work() {
    let server = TestServer::shared();
    let proxy = FaultProxy::start(server.port()).await.unwrap();
    let url = proxy.url_for(&server.url());
    let cut = raw_client(&url).await;
    let pid = backend_pid(&cut).await;

    proxy.cut_all();

    let error = within("query on a cut connection", cut.query_one("SELECT 1", &[]))
        .await
        .unwrap_err();
    assert!(
        error.is_closed() || std::error::Error::source(&error).is_some(),
        "{error}"
    );
    let fresh = raw_client(&url).await;
    assert_ne!(backend_pid(&fresh).await, pid);
}

#[tokio::test]
async fn refuse_mode_rejects_new_connections_but_keeps_open_ones() {
    let server = TestServer::shared();
    let proxy = FaultProxy::start(server.port()).await.unwrap();
    let url = proxy.url_for(&server.url());
    let open = raw_client(&url).await;

    proxy.set_mode(ProxyMode::Refuse);
    let refused = within(
        "refused connect",
        tokio_postgres::connect(&url, tokio_postgres::NoTls),
    )
    .await;
    assert!(refused.is_err(), "a new connection must be refused");
    assert_eq!(
        open.query_one("SELECT 3", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        3
    );

    proxy.set_mode(ProxyMode::Pass);
    raw_client(&url).await;
}

#[tokio::test]
async fn blackhole_mode_stalls_traffic_without_closing_and_pass_resumes_it() {
    let server = TestServer::shared();
    let proxy = FaultProxy::start(server.port()).await.unwrap();
    let client = raw_client(&proxy.url_for(&server.url())).await;
    backend_pid(&client).await;

    proxy.set_mode(ProxyMode::Blackhole);
    let stalled = tokio::time::timeout(
        Duration::from_millis(500),
        client.query_one("SELECT 4", &[]),
    )
    .await;
    assert!(stalled.is_err(), "no reply may come through a blackhole");
    assert_eq!(proxy.active_connections(), 1, "the socket stays open");
    assert!(!client.is_closed());

    proxy.set_mode(ProxyMode::Pass);
    let row = within(
        "query after the blackhole",
        client.query_one("SELECT 5", &[]),
    )
    .await
    .unwrap();
    assert_eq!(row.get::<_, i32>(0), 5);
}

#[test]
fn binaries_are_found_on_this_machine() {
    let bin = pgorm_testkit::locate_binaries().unwrap();
    assert!(bin.join("initdb").is_file() && bin.join("postgres").is_file());
}
