//! A graceful shutdown ends within its timeouts even when the pool's
//! connection is cut off without an error (a half-open connection): the
//! claim in progress and the release are abandoned, not awaited forever.

mod support;

use std::time::{Duration, Instant};

use pgorm::listen::PgNotifyHub;
use pgorm::PgClient;
use pgorm_events::{EventWorkers, Events, EventsError, NewEvent, Router, WorkerConfig};
use support::*;

/// A pool whose statements go through `proxy` and whose wake-ups come
/// straight from the server (so that only the statements are cut off).
async fn pool_behind(
    proxy: &FaultProxy,
    url: &str,
    events: &Events,
    router: Router,
    config: WorkerConfig,
) -> (PgClient, EventWorkers) {
    let client = PgClient::connect(&proxy.url_for(url)).await.unwrap();
    let hub = PgNotifyHub::connect(url).await.unwrap();
    let workers = EventWorkers::start_with_hub(client.clone(), events.clone(), router, config, hub)
        .await
        .unwrap();
    (client, workers)
}

#[tokio::test]
async fn a_claim_hanging_on_a_cut_off_connection_does_not_hang_the_shutdown() {
    let (url, _client, events) = setup().await;
    let proxy = FaultProxy::start(TestServer::shared().port())
        .await
        .unwrap();
    let timeout = Duration::from_millis(500);
    let config = WorkerConfig::new()
        .shutdown_timeout(timeout)
        .poll_interval(Duration::from_millis(100));
    let (_pool_client, workers) = pool_behind(&proxy, &url, &events, Router::new(), config).await;

    // The next claim (the poll, or this wake-up) is sent into the void.
    proxy.set_mode(ProxyMode::Blackhole);
    workers.wake();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let report = within("the shutdown", workers.shutdown()).await.unwrap();
    println!("shutdown with a hanging claim: {:?}", started.elapsed());
    assert!(!report.drained, "the claim never ended: {report:?}");
    assert_eq!(report.released, 0);
}

#[tokio::test]
async fn a_release_hanging_on_a_cut_off_connection_times_out() {
    let (url, client, events) = setup().await;
    let proxy = FaultProxy::start(TestServer::shared().port())
        .await
        .unwrap();
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel(1);
    let router = Router::new().on("stuck", move |_event| {
        let started_tx = started_tx.clone();
        async move {
            let _ = started_tx.send(()).await;
            std::future::pending::<()>().await;
            Ok(())
        }
    });
    let timeout = Duration::from_millis(500);
    let config = WorkerConfig::new().concurrency(1).shutdown_timeout(timeout);
    let (_pool_client, workers) = pool_behind(&proxy, &url, &events, router, config).await;
    let event = NewEvent::new("stuck", &serde_json::json!({})).unwrap();
    events.publish(&client, event).await.unwrap();
    within("the handler's start", started_rx.recv()).await;

    // The handler never finishes; its release is sent into the void.
    proxy.set_mode(ProxyMode::Blackhole);
    let started = Instant::now();
    let error = within("the shutdown", workers.shutdown())
        .await
        .unwrap_err();
    println!("shutdown with a hanging release: {:?}", started.elapsed());
    assert!(
        matches!(error, EventsError::TimedOut { after, .. } if after == timeout),
        "{error:?}"
    );

    // The event is still leased to the stopped pool, never lost: its lease
    // expires and it is taken again.
    let stats = stats(&events, &client).await;
    assert_eq!(stats.running, 1, "{stats:?}");
}
