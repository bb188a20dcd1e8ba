//! A full server crash (the postmaster killed with SIGKILL, then started
//! again on the same port, with crash recovery) under a PgListener and a
//! PgNotifyHub with two subscriptions: both reconnect on their own, every
//! consumer sees the `Reconnected` marker in order, notifications sent after
//! the restart arrive, and the counters balance. Once on the server's own
//! port, once through a FaultProxy.

mod support;

use std::sync::Arc;
use std::time::Duration;

use pgorm::listen::{
    ListenerEvent, ListenerState, PgListener, PgListenerConfig, PgNotifyHub, Subscription,
};
use support::*;

fn fast_reconnect(name: &str) -> PgListenerConfig {
    PgListenerConfig::new()
        .application_name(name)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect_timeout(Duration::from_secs(2))
}

async fn next_of(subscription: &mut Subscription) -> ListenerEvent<Arc<pgorm::PgNotification>> {
    within("the next subscription event", subscription.next_event())
        .await
        .expect("the subscription ended")
        .expect("the subscription failed")
}

fn payload_of(event: &ListenerEvent<Arc<pgorm::PgNotification>>) -> Option<&str> {
    match event {
        ListenerEvent::Notification(notification) => Some(&notification.payload),
        _ => None,
    }
}

/// Kills the postmaster of `server` under a listener and a hub connected to
/// `url` (the server's port or a proxy in front of it), then starts it again
/// and checks that everything comes back as documented.
async fn survive_a_crash(server: &TestServer, url: &str) {
    let channels = [unique("crash_a"), unique("crash_b")];
    let listener_name = unique("crash_listener");
    let hub_name = unique("crash_hub");
    let mut listener = PgListener::connect_with(
        url,
        fast_reconnect(&listener_name).channels(channels.iter().cloned()),
    )
    .await
    .unwrap();
    let hub = PgNotifyHub::connect_with(url, fast_reconnect(&hub_name))
        .await
        .unwrap();
    let mut subscriptions = [
        hub.subscribe(&channels[0]).await.unwrap(),
        hub.subscribe(&channels[1]).await.unwrap(),
    ];

    let admin = raw_client(&server.url()).await;
    let old_backends = [
        backends_named(&admin, &listener_name).await,
        backends_named(&admin, &hub_name).await,
    ];
    for channel in &channels {
        send(&admin, channel, &format!("before {channel}")).await;
    }
    for channel in &channels {
        assert_eq!(
            next_notification(&mut listener).await.payload,
            format!("before {channel}")
        );
    }
    for (subscription, channel) in subscriptions.iter_mut().zip(&channels) {
        let event = next_of(subscription).await;
        assert_eq!(
            payload_of(&event),
            Some(format!("before {channel}").as_str())
        );
    }
    drop(admin);

    tokio::task::block_in_place(|| server.kill()).unwrap();
    assert!(!server.is_running());
    // The orphaned backends exit on their own and close their sockets.
    eventually("the listener and the hub to notice the crash", || async {
        listener.state() == ListenerState::Reconnecting
            && hub.state() == ListenerState::Reconnecting
    })
    .await;
    tokio::task::block_in_place(|| server.start()).unwrap();

    // Nothing can come before the marker: the old sessions are gone, and
    // nothing was sent while the server was down.
    assert_eq!(
        next_event(&mut listener).await,
        ListenerEvent::Reconnected { generation: 1 }
    );
    for subscription in &mut subscriptions {
        assert_eq!(
            next_of(subscription).await,
            ListenerEvent::Reconnected { generation: 1 }
        );
    }
    assert_eq!(listener.state(), ListenerState::Connected);
    assert_eq!(hub.state(), ListenerState::Connected);
    let mut expected_channels = channels.to_vec();
    expected_channels.sort();
    assert_eq!(
        within("the listener's channels", listener.server_channels())
            .await
            .unwrap(),
        expected_channels
    );
    assert_eq!(
        within("the hub's channels", hub.server_channels())
            .await
            .unwrap(),
        expected_channels
    );

    let admin = raw_client(&server.url()).await;
    let new_backends = [
        backends_named(&admin, &listener_name).await,
        backends_named(&admin, &hub_name).await,
    ];
    for (old, new) in old_backends.iter().zip(&new_backends) {
        assert_eq!(new.len(), 1, "one session each after the crash");
        assert_ne!(old, new);
    }
    for channel in &channels {
        send(&admin, channel, &format!("after {channel}")).await;
    }
    for channel in &channels {
        assert_eq!(
            next_notification(&mut listener).await.payload,
            format!("after {channel}")
        );
    }
    for (subscription, channel) in subscriptions.iter_mut().zip(&channels) {
        let event = next_of(subscription).await;
        assert_eq!(
            payload_of(&event),
            Some(format!("after {channel}").as_str())
        );
    }

    // Four notifications in, four out; nothing queued, nothing dropped.
    let stats = listener.stats();
    assert_eq!(
        stats.received,
        stats.delivered + stats.queued as u64 + stats.dropped,
        "the listener's counters balance: {stats:?}"
    );
    assert_eq!(
        (stats.received, stats.delivered, stats.dropped, stats.queued),
        (4, 4, 0, 0),
        "{stats:?}"
    );
    assert_eq!(stats.reconnects, 1);
    let stats = hub.stats();
    assert_eq!(
        (stats.received, stats.unrouted, stats.reconnects),
        (4, 0, 1)
    );
    for channel in &stats.channels {
        assert_eq!(
            (
                channel.subscribers,
                channel.received,
                channel.delivered,
                channel.dropped
            ),
            (1, 2, 2, 0),
            "{channel:?}"
        );
    }
    assert_eq!(stats.channels.len(), 2);
    assert_eq!(*hub.reconnects().borrow(), 1);

    within("closing the listener", listener.close())
        .await
        .unwrap();
    within("closing the hub", hub.close()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_server_is_reconnected_to_by_a_listener_and_a_hub_with_markers_in_order() {
    let server = TestServer::spawn().unwrap();
    survive_a_crash(&server, &server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_server_behind_a_proxy_is_reconnected_to_with_markers_in_order() {
    let server = TestServer::spawn().unwrap();
    let proxy = FaultProxy::start(server.port()).await.unwrap();
    survive_a_crash(&server, &proxy.url_for(&server.url())).await;
    // Closed listeners leave nothing behind, not even the crashed sessions.
    eventually("the proxy to hold no connection", || async {
        proxy.active_connections() == 0
    })
    .await;
}
