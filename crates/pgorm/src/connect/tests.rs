use std::time::Duration;

use pgorm_testkit::TestServer;

use super::*;

/// A deadline that only catches hangs.
const HANG: Duration = Duration::from_secs(30);

/// Listens on a channel of its own, notifies it `payloads` from the same
/// session, and returns what came through the tap and how many
/// notifications `poll_message` yielded instead. (The tests run at once on
/// one database: a shared channel would hear the others' notifications.)
async fn notify_self(
    connector: &dyn Connector,
    url: &str,
    payloads: &[String],
) -> (Vec<String>, usize) {
    let config: Config = url.parse().unwrap();
    let (client, mut connection) = connector.connect(&config).await.unwrap();
    assert!(connection.tap().is_some(), "the connection carries a tap");
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let channel = format!(
        "tapped_{}",
        CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut sql = format!("LISTEN {channel};");
    for payload in payloads {
        sql.push_str(&format!("NOTIFY {channel}, '{payload}';"));
    }
    let mut statement = std::pin::pin!(client.batch_execute(&sql));
    let mut lifted = Vec::new();
    let mut from_poll_message = 0;
    let mut statement_done = false;
    let drive = std::future::poll_fn(|cx| loop {
        if !statement_done {
            if let Poll::Ready(result) = statement.as_mut().poll(cx) {
                result.unwrap();
                statement_done = true;
            }
        }
        let polled = connection.poll_message(cx);
        connection.tap().unwrap().drain(usize::MAX, |notification| {
            lifted.push(notification.payload().to_owned())
        });
        match polled {
            Poll::Ready(Some(Ok(AsyncMessage::Notification(_)))) => from_poll_message += 1,
            Poll::Ready(Some(Ok(_))) => {}
            Poll::Ready(other) => panic!("the connection ended: {other:?}"),
            Poll::Pending => {
                if statement_done && lifted.len() + from_poll_message == payloads.len() {
                    return Poll::Ready(());
                }
                return Poll::Pending;
            }
        }
    });
    tokio::time::timeout(HANG, drive).await.expect("hang");
    (lifted, from_poll_message)
}

fn payloads() -> Vec<String> {
    let mut payloads: Vec<String> = (0..500).map(|i| i.to_string()).collect();
    payloads.push("é".repeat(3999) + "x");
    payloads.push("z".repeat(7999));
    payloads.push(String::new());
    payloads
}

#[cfg(feature = "rustls")]
#[tokio::test]
async fn tls_connections_lift_notifications_through_the_tap() {
    let server = TestServer::shared();
    let tls = crate::tls::rustls_connector_with_pem_roots(server.ca_certificate_pem().as_bytes())
        .unwrap();
    let url = format!(
        "{}?sslmode=require",
        server.url().replace("127.0.0.1", "localhost")
    );
    let (lifted, from_poll_message) = notify_self(&TlsConnector(tls), &url, &payloads()).await;
    assert_eq!(from_poll_message, 0, "every notification is lifted");
    assert_eq!(lifted, payloads());
}

#[tokio::test]
async fn plain_connections_lift_notifications_through_the_tap() {
    let url = TestServer::shared().url();
    let (lifted, from_poll_message) = notify_self(&PlainConnector, &url, &payloads()).await;
    assert_eq!(from_poll_message, 0, "every notification is lifted");
    assert_eq!(lifted, payloads());
}

#[tokio::test]
async fn no_tls_through_the_tls_connector_still_prefers_without_asking() {
    // The test server supports TLS: a wrapped NoTls would ask for it under
    // sslmode=prefer and then fail the handshake.
    let url = format!("{}?sslmode=prefer", TestServer::shared().url());
    let (lifted, _) = notify_self(&TlsConnector(NoTls), &url, &["one".to_string()]).await;
    assert_eq!(lifted, ["one"]);
}
