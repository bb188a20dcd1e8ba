//! PgListener across failures: killed backends, restarted and stopped
//! servers, dead network paths, and the configured limits on reconnecting.

mod support;

use std::time::Duration;

use pgorm::listen::{ListenerEvent, ListenerState, PgListener, PgListenerConfig};
use pgorm::prelude::*;
use support::*;

fn fast_reconnect(name: &str) -> PgListenerConfig {
    PgListenerConfig::new()
        .application_name(name)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect_timeout(Duration::from_secs(2))
}

/// Waits for a notification with `payload`, collecting the events on the way.
async fn events_until(listener: &mut PgListener, payload: &str) -> Vec<ListenerEvent> {
    let mut seen = Vec::new();
    loop {
        let event = next_event(listener).await;
        let done = matches!(&event, ListenerEvent::Notification(n) if n.payload == payload);
        seen.push(event);
        if done {
            return seen;
        }
    }
}

#[tokio::test]
async fn a_terminated_backend_is_replaced_and_the_consumer_told_in_order() {
    let server = TestServer::shared();
    let name = unique("terminated");
    let channel = unique("terminated_channel");
    let config = fast_reconnect(&name).channels([channel.as_str()]);
    let mut listener = PgListener::connect_with(&server.url(), config)
        .await
        .unwrap();
    let admin = raw_client(&server.url()).await;

    send(&admin, &channel, "before").await;
    assert_eq!(next_notification(&mut listener).await.payload, "before");

    let old = backends_named(&admin, &name).await;
    let terminated: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&old[0]])
        .await
        .unwrap()
        .get(0);
    assert!(terminated);

    // Nothing can arrive before the marker: the old session is gone.
    assert_eq!(
        next_event(&mut listener).await,
        ListenerEvent::Reconnected { generation: 1 }
    );
    send(&admin, &channel, "after").await;
    let events = events_until(&mut listener, "after").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(listener.stats().reconnects, 1);
    assert_eq!(listener.state(), ListenerState::Connected);
    let new = backends_named(&admin, &name).await;
    assert_eq!(new.len(), 1);
    assert_ne!(new, old);
    assert_eq!(listener.channels(), [channel]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_reconnected_to_with_every_channel() {
    let server = TestServer::spawn().unwrap();
    let channels = [unique("restart_a"), unique("restart_b")];
    let config = fast_reconnect("restarted").channels(channels.iter().cloned());
    let mut listener = PgListener::connect_with(&server.url(), config)
        .await
        .unwrap();

    tokio::task::block_in_place(|| server.restart()).unwrap();

    assert_eq!(
        next_event(&mut listener).await,
        ListenerEvent::Reconnected { generation: 1 }
    );
    let admin = raw_client(&server.url()).await;
    for channel in &channels {
        send(&admin, channel, channel).await;
        assert_eq!(&next_notification(&mut listener).await.payload, channel);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_for_several_backoff_steps_is_waited_for_and_listens_made_meanwhile_apply() {
    let server = TestServer::spawn().unwrap();
    let config =
        fast_reconnect("outage").backoff(Duration::from_millis(50), Duration::from_millis(200));
    let mut listener = PgListener::connect_with(&server.url(), config)
        .await
        .unwrap();

    tokio::task::block_in_place(|| server.stop()).unwrap();
    eventually("the listener to notice", || async {
        listener.state() == ListenerState::Reconnecting
    })
    .await;
    let channel = unique("while_down");
    within("listen while down", listener.listen(&channel))
        .await
        .unwrap();
    assert_eq!(listener.channels(), std::slice::from_ref(&channel));
    // 50 + 100 + 200 + 200 … ms: well past several backoff steps.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(listener.state(), ListenerState::Reconnecting);
    tokio::task::block_in_place(|| server.start()).unwrap();

    assert_eq!(
        next_event(&mut listener).await,
        ListenerEvent::Reconnected { generation: 1 }
    );
    let admin = raw_client(&server.url()).await;
    send(&admin, &channel, "remembered").await;
    assert_eq!(next_notification(&mut listener).await.payload, "remembered");
}

#[tokio::test]
async fn a_blackholed_connection_is_found_by_the_health_check_and_replaced() {
    let server = TestServer::shared();
    let proxy = FaultProxy::start(server.port()).await.unwrap();
    let channel = unique("blackholed");
    let config = fast_reconnect("blackholed")
        .channels([channel.as_str()])
        .health_check(Duration::from_millis(100), Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(500))
        // A loaded machine may miss 500 ms on the first connect too.
        .retry_first_connect(true);
    let mut listener = PgListener::connect_with(&proxy.url_for(&server.url()), config)
        .await
        .unwrap();

    proxy.set_mode(ProxyMode::Blackhole);
    eventually("the health check to fail", || async {
        listener.state() == ListenerState::Reconnecting
    })
    .await;
    // Reconnect attempts into the blackhole time out; the path comes back.
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.set_mode(ProxyMode::Pass);
    proxy.cut_all();

    assert!(matches!(
        next_event(&mut listener).await,
        ListenerEvent::Reconnected { .. }
    ));
    let admin = raw_client(&server.url()).await;
    send(&admin, &channel, "back").await;
    assert_eq!(next_notification(&mut listener).await.payload, "back");
}

#[tokio::test]
async fn a_cut_connection_is_replaced() {
    let server = TestServer::shared();
    let proxy = FaultProxy::start(server.port()).await.unwrap();
    let channel = unique("cut");
    let config = fast_reconnect("cut").channels([channel.as_str()]);
    let mut listener = PgListener::connect_with(&proxy.url_for(&server.url()), config)
        .await
        .unwrap();
    proxy.cut_all();
    assert_eq!(
        next_event(&mut listener).await,
        ListenerEvent::Reconnected { generation: 1 }
    );
    let admin = raw_client(&server.url()).await;
    send(&admin, &channel, "through").await;
    assert_eq!(next_notification(&mut listener).await.payload, "through");
}

#[tokio::test]
async fn without_reconnect_a_lost_connection_ends_the_stream_with_one_error() {
    let server = TestServer::shared();
    let name = unique("no_reconnect");
    let config = fast_reconnect(&name).reconnect(false);
    let mut listener = PgListener::connect_with(&server.url(), config)
        .await
        .unwrap();
    let admin = raw_client(&server.url()).await;
    terminate_backends(&admin, &name).await;

    let error = within("the error", listener.next())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(error, OrmError::Disconnected { attempts: 0, .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("reconnecting is disabled"),
        "{error}"
    );
    assert!(within("the end", listener.next()).await.is_none());
    assert_eq!(listener.state(), ListenerState::Closed);
    assert!(matches!(
        listener.listen("late").await,
        Err(OrmError::Closed { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_reconnect_attempts_ends_the_stream_with_an_error_that_counts_them() {
    let server = TestServer::spawn().unwrap();
    let config = fast_reconnect("limited")
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .max_reconnect_attempts(Some(3));
    let mut listener = PgListener::connect_with(&server.url(), config)
        .await
        .unwrap();
    tokio::task::block_in_place(|| server.stop()).unwrap();

    let error = within("the error", listener.next_event())
        .await
        .unwrap()
        .unwrap_err();
    match &error {
        OrmError::Disconnected { attempts, cause } => {
            assert_eq!(*attempts, 3);
            assert!(cause.is_connection(), "{cause:?}");
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(!error.to_string().contains(server.password()));
    assert!(within("the end", listener.next_event()).await.is_none());
    within("close after the end", listener.close())
        .await
        .unwrap();
}
