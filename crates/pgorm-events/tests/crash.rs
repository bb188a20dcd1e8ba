//! Crashes and faults against a real server: two pools sharing a table,
//! a pool whose runtime dies mid-handler, a server restart, a wake-up
//! listener cut off.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgorm::listen::{PgListenerConfig, PgNotifyHub};
use pgorm::PgClient;
use pgorm_events::{EventWorkers, Events, EventsConfig, NewEvent, Router, WorkerConfig};
use serde_json::json;
use support::*;

type Seen = Arc<Mutex<HashMap<i64, u32>>>;

/// A router whose handler for `job` counts each event id in `seen`.
fn counting_router(seen: &Seen) -> Router {
    let seen = seen.clone();
    Router::new().on("job", move |event| {
        let seen = seen.clone();
        async move {
            *seen.lock().unwrap().entry(event.id).or_default() += 1;
            Ok(())
        }
    })
}

async fn publish_jobs(events: &Events, client: &PgClient, count: usize) -> Vec<i64> {
    let mut ids = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
        let batch = chunk
            .iter()
            .map(|i| NewEvent::new("job", &json!({ "i": i })).unwrap())
            .collect();
        ids.extend(events.publish_batch(client, batch).await.unwrap().inserted);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_on_two_runtimes_handle_10000_events_none_twice_none_lost() {
    let (url, client, events) = setup().await;
    let seen: Seen = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let pools: Vec<_> = (0..2)
        .map(|_| {
            let (url, events, seen, stop) =
                (url.clone(), events.clone(), seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let client = PgClient::connect(&url).await.unwrap();
                    let config = WorkerConfig::new()
                        .concurrency(12)
                        .max_batch(50)
                        .poll_interval(Duration::from_millis(200));
                    let workers =
                        EventWorkers::start(client, events, counting_router(&seen), config)
                            .await
                            .unwrap();
                    while !stop.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let stats = workers.stats();
                    workers.shutdown().await.unwrap();
                    stats
                })
            })
        })
        .collect();
    let started = Instant::now();
    let ids = publish_jobs(&events, &client, 10_000).await;
    until("10,000 events handled", || async {
        seen.lock().unwrap().len() == 10_000
    })
    .await;
    let elapsed = started.elapsed();
    until("the queue is empty", || async {
        stats(&events, &client).await.depth == 0
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let pool_stats: Vec<_> = pools.into_iter().map(|p| p.join().unwrap()).collect();
    let seen = seen.lock().unwrap();
    assert!(
        ids.iter().all(|id| seen.get(id) == Some(&1)),
        "an event was lost or handled twice"
    );
    assert_eq!(pool_stats[0].processed + pool_stats[1].processed, 10_000);
    assert!(pool_stats
        .iter()
        .all(|s| s.processed > 0 && s.lease_lost == 0));
    println!(
        "two pools: 10,000 events published and handled in {elapsed:?} ({:.0}/s); split {} / {}",
        10_000.0 / elapsed.as_secs_f64(),
        pool_stats[0].processed,
        pool_stats[1].processed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_runtime_dies_mid_handler_has_its_events_rescued_and_completed_once() {
    let (url, client, events) = setup().await;
    let lease = Duration::from_secs(1);
    let started_a = Arc::new(AtomicU64::new(0));
    let (dead_tx, dead_rx) = std::sync::mpsc::channel::<Instant>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let pool_a = {
        let (url, events, started_a) = (url.clone(), events.clone(), started_a.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let router = Router::new().on("job", move |_event| {
                let started_a = started_a.clone();
                async move {
                    started_a.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                    Ok(())
                }
            });
            let workers = runtime.block_on(async move {
                let client = PgClient::connect(&url).await.unwrap();
                let config = WorkerConfig::new().lease(lease);
                EventWorkers::start(client, events, router, config)
                    .await
                    .unwrap()
            });
            runtime.block_on(async { ready_rx.await.unwrap() });
            // The crash: the runtime goes away with the handlers mid-flight.
            drop(runtime);
            dead_tx.send(Instant::now()).unwrap();
            drop(workers);
        })
    };
    let ids = publish_jobs(&events, &client, 5).await;
    until("pool A runs all five", || async {
        started_a.load(Ordering::SeqCst) == 5
    })
    .await;
    ready_tx.send(()).unwrap();
    let died = dead_rx.recv().unwrap();
    pool_a.join().unwrap();
    assert_eq!(stats(&events, &client).await.depth, 5);

    let seen: Seen = Arc::default();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let router = {
        let (seen, attempts) = (seen.clone(), attempts.clone());
        Router::new().on("job", move |event| {
            let (seen, attempts) = (seen.clone(), attempts.clone());
            async move {
                *seen.lock().unwrap().entry(event.id).or_default() += 1;
                attempts.lock().unwrap().push(event.attempt);
                Ok(())
            }
        })
    };
    let config = WorkerConfig::new().poll_interval(Duration::from_millis(200));
    let pool_b = EventWorkers::start(client.clone(), events.clone(), router, config)
        .await
        .unwrap();
    until("pool B completes the five", || async {
        pool_b.stats().processed == 5
    })
    .await;
    let rescue_after = died.elapsed();
    until("the queue is empty", || async {
        stats(&events, &client).await.depth == 0
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    assert!(ids.iter().all(|id| seen.get(id) == Some(&1)), "{seen:?}");
    assert!(attempts.lock().unwrap().iter().all(|a| *a == 2));
    assert_eq!(pool_b.stats().lease_lost, 0);
    println!("events of the dead pool rescued and completed within {rescue_after:?} of its death (lease {lease:?})");
    pool_b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_during_processing_loses_nothing() {
    let server = TestServer::spawn().expect("a server of this test's own");
    let url = server.create_database().await.unwrap();
    let client = PgClient::connect(&url).await.unwrap();
    let events = Events::new(EventsConfig::new()).unwrap();
    events.migrate(&client).await.unwrap();
    let seen: Seen = Arc::default();
    let router = {
        let seen = seen.clone();
        Router::new().on("job", move |event| {
            let seen = seen.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                *seen.lock().unwrap().entry(event.id).or_default() += 1;
                Ok(())
            }
        })
    };
    let ids = publish_jobs(&events, &client, 3000).await;
    let hub = PgNotifyHub::connect_with(
        &url,
        PgListenerConfig::new().backoff(Duration::from_millis(50), Duration::from_millis(500)),
    )
    .await
    .unwrap();
    let config = WorkerConfig::new()
        .concurrency(8)
        .lease(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(200));
    let workers = EventWorkers::start_with_hub(client.clone(), events.clone(), router, config, hub)
        .await
        .unwrap();
    until("some events are handled", || async {
        seen.lock().unwrap().len() >= 300
    })
    .await;
    let server = Arc::new(server);
    let restarting = server.clone();
    tokio::task::spawn_blocking(move || restarting.restart())
        .await
        .unwrap()
        .expect("restart");
    until("every event is handled", || async {
        seen.lock().unwrap().len() == ids.len()
    })
    .await;
    until("the queue is empty", || async {
        matches!(events.stats(&client).await, Ok(s) if s.depth == 0 && s.dead == 0)
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    assert!(ids.iter().all(|id| seen.contains_key(id)));
    let twice = seen.values().filter(|n| **n > 1).count();
    let stats = workers.stats();
    println!(
        "restart: {} events, {twice} handled twice (at least once), {} database errors, {} outcomes lost",
        ids.len(),
        stats.database_errors,
        stats.lease_lost
    );
    workers.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_the_wakeup_listener_cut_off_polling_still_delivers() {
    let (url, client, events) = setup().await;
    let proxy = FaultProxy::start(TestServer::shared().port())
        .await
        .unwrap();
    let hub = PgNotifyHub::connect(&proxy.url_for(&url)).await.unwrap();
    let seen: Seen = Arc::default();
    let poll = Duration::from_millis(300);
    let config = WorkerConfig::new().poll_interval(poll);
    let workers = EventWorkers::start_with_hub(
        client.clone(),
        events.clone(),
        counting_router(&seen),
        config,
        hub,
    )
    .await
    .unwrap();
    publish_jobs(&events, &client, 1).await;
    until("the first event", || async {
        seen.lock().unwrap().len() == 1
    })
    .await;

    // The listener's path dies silently: wake-ups are lost, no error shows.
    proxy.set_mode(ProxyMode::Blackhole);
    let published = Instant::now();
    publish_jobs(&events, &client, 5).await;
    until("the five events, by polling", || async {
        seen.lock().unwrap().len() == 6
    })
    .await;
    println!(
        "delivered by polling in {:?} (poll {poll:?} ±20%)",
        published.elapsed()
    );
    assert!(seen.lock().unwrap().values().all(|n| *n == 1));

    // Cut entirely (the hub's connection closed, reconnects refused).
    proxy.set_mode(ProxyMode::Refuse);
    proxy.cut_all();
    let published = Instant::now();
    publish_jobs(&events, &client, 5).await;
    until("five more, by polling", || async {
        seen.lock().unwrap().len() == 11
    })
    .await;
    println!(
        "with the listener cut: delivered by polling in {:?}",
        published.elapsed()
    );
    workers.shutdown().await.unwrap();
}
