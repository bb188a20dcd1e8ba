//! PgListener's delivery semantics against a real server.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use pgorm::listen::{
    ListenerEvent, ListenerState, PgListener, PgListenerConfig, PgListenerStream, PgNotification,
};
use pgorm::prelude::*;
use support::*;

async fn listener_on(channels: &[&str]) -> PgListener {
    let config = PgListenerConfig::new().channels(channels.iter().copied());
    PgListener::connect_with(&TestServer::shared().url(), config)
        .await
        .expect("listener")
}

async fn publisher() -> tokio_postgres::Client {
    raw_client(&TestServer::shared().url()).await
}

#[tokio::test]
async fn a_notification_from_another_connection_arrives_with_its_details() {
    let channel = unique("round_trip");
    let mut listener = listener_on(&[]).await;
    listener.listen(&channel).await.unwrap();
    let publisher = publisher().await;
    send(&publisher, &channel, "hello").await;

    let notification = next_notification(&mut listener).await;
    assert_eq!(notification.channel, channel);
    assert_eq!(notification.payload, "hello");
    let sender_pid: i32 = publisher
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(notification.process_id, sender_pid);
    assert!(notification.received_at <= std::time::SystemTime::now());
    assert_eq!(listener.state(), ListenerState::Connected);
    assert_eq!(listener.stats().received, 1);
    assert_eq!(listener.stats().delivered, 1);
}

#[tokio::test]
async fn each_notification_is_routed_with_its_own_channel() {
    let channels: Vec<String> = (0..10).map(|_| unique("routed")).collect();
    let names: Vec<&str> = channels.iter().map(String::as_str).collect();
    let mut listener = listener_on(&names).await;
    let publisher = publisher().await;
    for (i, channel) in channels.iter().enumerate().rev() {
        send(&publisher, channel, &i.to_string()).await;
    }
    for (i, channel) in channels.iter().enumerate().rev() {
        let notification = next_notification(&mut listener).await;
        assert_eq!(&notification.channel, channel);
        assert_eq!(notification.payload, i.to_string());
    }
    assert_eq!(listener.channels(), {
        let mut sorted = channels.clone();
        sorted.sort();
        sorted
    });
}

#[tokio::test]
async fn unlisten_stops_delivery_of_that_channel_only() {
    let (gone, kept) = (unique("gone"), unique("kept"));
    let mut listener = listener_on(&[&gone, &kept]).await;
    listener.unlisten(&gone).await.unwrap();
    let publisher = publisher().await;
    send(&publisher, &gone, "must not arrive").await;
    send(&publisher, &kept, "sentinel").await;
    // Notifications of one sender arrive in order: had the first been
    // delivered, it would come before the sentinel.
    let notification = next_notification(&mut listener).await;
    assert_eq!(
        (notification.channel.as_str(), notification.payload.as_str()),
        (kept.as_str(), "sentinel")
    );
    assert_eq!(listener.channels(), [kept]);
}

#[tokio::test]
async fn unlisten_all_stops_every_channel() {
    let (a, b) = (unique("all_a"), unique("all_b"));
    let mut listener = listener_on(&[&a, &b]).await;
    listener.unlisten_all().await.unwrap();
    assert!(listener.channels().is_empty());
    let publisher = publisher().await;
    send(&publisher, &a, "x").await;
    send(&publisher, &b, "y").await;
    let sentinel = unique("all_sentinel");
    listener.listen(&sentinel).await.unwrap();
    send(&publisher, &sentinel, "after").await;
    assert_eq!(next_notification(&mut listener).await.channel, sentinel);
}

#[tokio::test]
async fn a_transaction_delivers_on_commit_in_order_and_nothing_on_rollback() {
    let channel = unique("tx");
    let mut listener = listener_on(&[&channel]).await;
    let mut publisher = publisher().await;

    let rolled_back = publisher.transaction().await.unwrap();
    for i in 0..3 {
        rolled_back
            .execute(
                "SELECT pg_notify($1, $2)",
                &[&channel, &format!("rolled back {i}")],
            )
            .await
            .unwrap();
    }
    rolled_back.rollback().await.unwrap();

    let committed = publisher.transaction().await.unwrap();
    for i in 0..5 {
        committed
            .execute("SELECT pg_notify($1, $2)", &[&channel, &i.to_string()])
            .await
            .unwrap();
    }
    // Nothing before the commit.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(listener.try_next().unwrap().is_none());
    committed.commit().await.unwrap();

    let payloads: Vec<String> = {
        let mut payloads = Vec::new();
        for _ in 0..5 {
            payloads.push(next_notification(&mut listener).await.payload);
        }
        payloads
    };
    assert_eq!(payloads, ["0", "1", "2", "3", "4"]);
    // They were read together: one wake-up, one timestamp.
    assert_eq!(listener.stats().received, 5);
}

#[tokio::test]
async fn payloads_arrive_byte_for_byte_at_the_edges() {
    let channel = unique("payload");
    let mut listener = listener_on(&[&channel]).await;
    let client = PgClient::connect(&TestServer::shared().url())
        .await
        .unwrap();
    let largest = "x".repeat(7999);
    let multibyte = "żółw 🐢 — 東京 ".repeat(100);
    for payload in ["", largest.as_str(), multibyte.as_str()] {
        pgorm::notify(&client, &channel, payload).await.unwrap();
        assert_eq!(next_notification(&mut listener).await.payload, payload);
    }
}

#[tokio::test]
async fn invalid_channel_names_are_refused_before_reaching_the_server() {
    let listener = listener_on(&[]).await;
    let cases = ["", "nul\0byte", &"x".repeat(64)];
    for name in cases {
        let error = listener.listen(name).await.unwrap_err();
        assert!(
            matches!(error, OrmError::Validation(_)),
            "{name:?}: {error:?}"
        );
    }
    assert!(listener.channels().is_empty());
    let refused = PgListener::connect_with(
        &TestServer::shared().url(),
        PgListenerConfig::new().channels(["ok", ""]),
    )
    .await;
    assert!(matches!(refused, Err(OrmError::Validation(_))));
}

#[tokio::test]
async fn hostile_channel_names_are_just_exact_names() {
    let url = fresh_database().await;
    let admin = raw_client(&url).await;
    admin
        .batch_execute("CREATE TABLE victim (x int)")
        .await
        .unwrap();
    let hostile = [
        "x\"; DROP TABLE victim; --",
        "with space",
        "semi;colon",
        "'quoted'",
        "Orders",
        "orders",
    ];
    let mut listener = PgListener::connect_with(&url, PgListenerConfig::new().channels(hostile))
        .await
        .unwrap();
    admin
        .query("SELECT x FROM victim", &[])
        .await
        .expect("the table survives");
    for name in hostile {
        send(&admin, name, name).await;
        let notification = next_notification(&mut listener).await;
        assert_eq!(notification.channel, name, "case and characters are kept");
        assert_eq!(notification.payload, name);
    }
}

#[tokio::test]
async fn listen_then_notify_never_races_the_acknowledgement() {
    let mut listener = listener_on(&[]).await;
    let publisher = publisher().await;
    for round in 0..200 {
        let channel = unique("race");
        listener.listen(&channel).await.unwrap();
        send(&publisher, &channel, &round.to_string()).await;
        let notification = next_notification(&mut listener).await;
        assert_eq!(
            (notification.channel, notification.payload),
            (channel, round.to_string())
        );
    }
}

#[tokio::test]
async fn close_unlistens_and_leaves_no_backend() {
    let name = unique("closing");
    let config = PgListenerConfig::new()
        .application_name(&name)
        .channels(["a", "b"]);
    let listener = PgListener::connect_with(&TestServer::shared().url(), config)
        .await
        .unwrap();
    let observer = publisher().await;
    assert_eq!(backends_named(&observer, &name).await.len(), 1);
    within("close", listener.close()).await.unwrap();
    assert!(backends_named(&observer, &name).await.is_empty());
}

#[tokio::test]
async fn dropping_a_listener_or_its_stream_leaves_no_backend() {
    let observer = publisher().await;
    for as_stream in [false, true] {
        let name = unique("dropped");
        let config = PgListenerConfig::new()
            .application_name(&name)
            .channels(["c"]);
        let listener = PgListener::connect_with(&TestServer::shared().url(), config)
            .await
            .unwrap();
        assert_eq!(backends_named(&observer, &name).await.len(), 1);
        if as_stream {
            drop(listener.into_stream());
        } else {
            drop(listener);
        }
        eventually("the backend to go away", || async {
            backends_named(&observer, &name).await.is_empty()
        })
        .await;
    }
}

#[tokio::test]
async fn into_stream_works_with_stream_combinators() {
    let channel = unique("stream");
    let listener = listener_on(&[&channel]).await;
    let publisher = publisher().await;
    for i in 0..5 {
        send(&publisher, &channel, &i.to_string()).await;
    }
    let stream: PgListenerStream = listener.into_stream();
    let evens: Vec<String> = within(
        "stream",
        stream
            .filter_map(|item| async move {
                let notification: PgNotification = item.ok()?;
                (notification.payload.parse::<u32>().ok()? % 2 == 0).then_some(notification.payload)
            })
            .take(3)
            .collect(),
    )
    .await;
    assert_eq!(evens, ["0", "2", "4"]);
}

#[tokio::test]
async fn next_is_cancel_safe_in_select() {
    let channel = unique("cancel");
    let mut listener = listener_on(&[&channel]).await;
    let publisher = publisher().await;
    // Cancel many pending next() calls, then check nothing was lost.
    for _ in 0..50 {
        tokio::select! {
            _ = listener.next() => panic!("nothing was sent yet"),
            _ = tokio::task::yield_now() => {}
        }
    }
    for i in 0..20 {
        send(&publisher, &channel, &i.to_string()).await;
        tokio::select! {
            biased;
            _ = tokio::task::yield_now() => {}
            _ = listener.next() => {}
        }
    }
    let mut seen = listener.stats().delivered;
    while seen < 20 {
        next_notification(&mut listener).await;
        seen += 1;
    }
    assert_eq!(listener.stats().delivered, 20);
    assert_eq!(listener.stats().received, 20);
}

#[tokio::test]
async fn a_pg_client_listener_takes_no_pool_slot_and_names_itself() {
    let url = fresh_database().await;
    let client = PgClient::connect_with(
        &url,
        PoolConfig::new()
            .max_size(1)
            .wait_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let mut listener = client.listener().await.unwrap();
    let status = client.pool().status();
    assert_eq!((status.size, status.available), (1, 1), "{status:?}");

    let channel = unique("client_listener");
    listener.listen(&channel).await.unwrap();
    // The only pooled connection is still free for the publisher.
    pgorm::notify(&client, &channel, "via pool").await.unwrap();
    assert_eq!(next_notification(&mut listener).await.payload, "via pool");

    let observer = raw_client(&url).await;
    let listeners: i64 = observer
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE application_name = 'pgorm-listener' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        listeners, 1,
        "the default application name shows the listener"
    );
}

#[tokio::test]
async fn a_pg_client_listener_uses_the_clients_tls() {
    let (url, tls) = tls_url_and_connector();
    let client = PgClient::connect_with_tls(&url, PoolConfig::default(), tls)
        .await
        .unwrap();
    let name = unique("tls_listener");
    let mut listener = client
        .listener_with(PgListenerConfig::new().application_name(&name))
        .await
        .unwrap();
    let encrypted: bool = client
        .query_one(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted);
    let channel = unique("tls_channel");
    listener.listen(&channel).await.unwrap();
    pgorm::notify(&client, &channel, "secret").await.unwrap();
    assert_eq!(next_notification(&mut listener).await.payload, "secret");
}

#[tokio::test]
async fn debug_output_names_the_target_but_never_the_password() {
    let server = TestServer::shared();
    let listener = listener_on(&["debugged"]).await;
    let debug = format!("{listener:?}");
    assert!(!debug.contains(server.password()), "{debug}");
    assert!(
        debug.contains("debugged") && debug.contains("Connected"),
        "{debug}"
    );
    let stream_debug = format!("{:?}", listener.into_stream());
    assert!(!stream_debug.contains(server.password()));
    let config_debug = format!("{:?}", PgListenerConfig::new());
    assert!(config_debug.contains("queue_capacity"));
}

#[tokio::test]
async fn a_wrong_password_fails_connect_at_once() {
    let server = TestServer::shared();
    let url = server.url().replace(server.password(), "not-the-password");
    let error = within("connect", PgListener::connect(&url))
        .await
        .unwrap_err();
    assert!(matches!(error, OrmError::Connection { .. }), "{error:?}");
    assert!(!error.to_string().contains("not-the-password"));
}

#[test]
fn public_types_are_send_and_debug() {
    fn send_and_debug<T: Send + std::fmt::Debug>() {}
    send_and_debug::<PgListener>();
    send_and_debug::<PgListenerStream>();
    send_and_debug::<pgorm::listen::PgListenerEventStream>();
    send_and_debug::<PgListenerConfig>();
    send_and_debug::<PgNotification>();
    send_and_debug::<ListenerEvent>();
    fn sync<T: Sync>() {}
    sync::<PgListener>();
}

#[tokio::test]
async fn a_multi_host_url_works_through_tokio_postgres_own_connect() {
    // Plain single-host connections are read by pgorm's own notification
    // tap; other URLs take notifications from tokio-postgres. Both deliver.
    let server = TestServer::shared();
    let url = format!(
        "host=127.0.0.1,127.0.0.1 port={port},{port} user={user} password={password} dbname=postgres",
        port = server.port(),
        user = pgorm_testkit::SUPERUSER,
        password = server.password(),
    );
    let channel = unique("multi_host");
    let mut listener =
        PgListener::connect_with(&url, PgListenerConfig::new().channels([channel.as_str()]))
            .await
            .unwrap();
    let publisher = publisher().await;
    for payload in ["", "one", &"x".repeat(7999)] {
        send(&publisher, &channel, payload).await;
        assert_eq!(next_notification(&mut listener).await.payload, payload);
    }
    assert!(!format!("{listener:?}").contains(server.password()));
}

#[tokio::test]
async fn a_listener_over_a_unix_socket_reads_through_the_tap() {
    let server = TestServer::shared();
    let url = format!(
        "host={} port={} user={} dbname=postgres",
        server.socket_directory().display(),
        server.port(),
        pgorm_testkit::SUPERUSER,
    );
    let channel = unique("unix_socket");
    let name = unique("unix_listener");
    let config = PgListenerConfig::new()
        .channels([channel.as_str()])
        .application_name(&name);
    let mut listener = PgListener::connect_with(&url, config).await.unwrap();
    let publisher = publisher().await;
    let on_socket: Option<String> = publisher
        .query_one(
            "SELECT client_addr::text FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        on_socket, None,
        "a Unix-socket session has no client address"
    );
    for payload in ["", "über", &"y".repeat(7999)] {
        send(&publisher, &channel, payload).await;
        assert_eq!(next_notification(&mut listener).await.payload, payload);
    }
}
