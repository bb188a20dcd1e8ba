use std::time::Duration;

use pgorm_testkit::TestServer;

use super::*;

async fn tcp_socket_for(settings: &str) -> TcpStream {
    let server = TestServer::shared();
    let config: Config = format!("{}?{settings}", server.url()).parse().unwrap();
    let target = Target::Tcp(IpAddr::from([127, 0, 0, 1]));
    match open_socket(&target, server.port(), &config).await.unwrap() {
        PlainSocket::Tcp(stream) => stream,
        PlainSocket::Unix(_) => panic!("a TCP target opened a Unix socket"),
    }
}

#[tokio::test]
async fn the_socket_gets_the_urls_tcp_user_timeout_and_keepalive_settings() {
    let stream = tcp_socket_for(
        "tcp_user_timeout=7&keepalives_idle=11&keepalives_interval=3&keepalives_retries=4",
    )
    .await;
    let socket = socket2::SockRef::from(&stream);
    assert!(socket.tcp_nodelay().unwrap());
    #[cfg(target_os = "linux")]
    assert_eq!(
        socket.tcp_user_timeout().unwrap(),
        Some(Duration::from_secs(7))
    );
    assert!(socket.keepalive().unwrap());
    assert_eq!(
        socket.tcp_keepalive_time().unwrap(),
        Duration::from_secs(11)
    );
    assert_eq!(
        socket.tcp_keepalive_interval().unwrap(),
        Duration::from_secs(3)
    );
    assert_eq!(socket.tcp_keepalive_retries().unwrap(), 4);
}

#[tokio::test]
async fn keepalives_0_leaves_keepalive_off_and_no_user_timeout_leaves_the_default() {
    let stream = tcp_socket_for("keepalives=0").await;
    let socket = socket2::SockRef::from(&stream);
    assert!(!socket.keepalive().unwrap());
    #[cfg(target_os = "linux")]
    assert_eq!(socket.tcp_user_timeout().unwrap(), None);
}

#[tokio::test]
async fn keepalives_are_on_by_default_with_two_hours_idle_as_in_tokio_postgres() {
    let stream = tcp_socket_for("").await;
    let socket = socket2::SockRef::from(&stream);
    assert!(socket.keepalive().unwrap());
    assert_eq!(
        socket.tcp_keepalive_time().unwrap(),
        Duration::from_secs(2 * 60 * 60)
    );
}

#[test]
fn only_what_the_tap_path_honours_exactly_is_tapped() {
    let tapped = |url: &str| tap_can_honour(&url.parse().unwrap());
    assert!(tapped("postgres://u@db:5432/app"));
    assert!(tapped("host=/run/postgresql user=u"));
    assert!(tapped("hostaddr=127.0.0.1 user=u"));
    assert!(tapped("host=db hostaddr=127.0.0.1 user=u"));
    assert!(tapped("postgres://u@db/app?target_session_attrs=any"));
    assert!(!tapped("postgres://u@db1,db2/app"));
    assert!(!tapped("host=db port=5432,5433 user=u"));
    assert!(!tapped("hostaddr=127.0.0.1,127.0.0.2 user=u"));
    assert!(!tapped(
        "postgres://u@db/app?target_session_attrs=read-write"
    ));
    assert!(!tapped(
        "postgres://u@db/app?target_session_attrs=read-only"
    ));
    assert!(!tapped("postgres://u@db/app?load_balance_hosts=random"));
    assert!(!tapped("user=u"));
}

#[tokio::test]
async fn a_host_name_is_tried_at_each_of_its_addresses_and_tapped() {
    // `localhost` may resolve to ::1 first, where the test server does not
    // listen: the next address is tried, as tokio-postgres does.
    let server = TestServer::shared();
    let url = server.url().replace("127.0.0.1", "localhost");
    let config: Config = url.parse().unwrap();
    let (client, connection) = PlainConnector.connect(&config).await.unwrap();
    assert!(connection.tap().is_some());
    drop((client, connection));
}
