//! Worker pools against a real server: delays, retries, dead events,
//! routing, transactional handlers, fencing, shutdown.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use pgorm::{GenericClient, PgClient};
use pgorm_events::{
    EventHooks, EventWorkers, Events, NewEvent, Outcome, OutcomeKind, Router, WorkerConfig,
};
use serde_json::json;
use support::*;

fn fast() -> WorkerConfig {
    WorkerConfig::new()
        .poll_interval(Duration::from_millis(200))
        .backoff(Duration::from_millis(100), Duration::from_secs(2))
        .lease(Duration::from_secs(5))
}

async fn server_now(client: &PgClient) -> SystemTime {
    client
        .query_one("SELECT clock_timestamp()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn delayed_events_never_run_early_and_start_promptly() {
    let (_url, client, events) = setup().await;
    let lateness = Arc::new(Mutex::new(Vec::new()));
    let router = {
        let lateness = lateness.clone();
        Router::new().on("tick", move |event| {
            let lateness = lateness.clone();
            async move {
                // The server runs on this machine: one clock.
                let now = SystemTime::now();
                // Negative means early.
                let late = match now.duration_since(event.run_at) {
                    Ok(late) => late.as_secs_f64(),
                    Err(early) => -early.duration().as_secs_f64(),
                };
                lateness.lock().unwrap().push(late);
                Ok(())
            }
        })
    };
    // The poll is far longer than the delays: only the next-due timer can
    // start them on time.
    let config = WorkerConfig::new().poll_interval(Duration::from_secs(20));
    let workers = EventWorkers::start(client.clone(), events.clone(), router, config)
        .await
        .unwrap();
    for i in 0..20u64 {
        let delay = Duration::from_millis(150 + 60 * i);
        events
            .publish(
                &client,
                NewEvent::new("tick", &json!(i)).unwrap().delay(delay),
            )
            .await
            .unwrap();
    }
    until("all delayed events ran", || async {
        lateness.lock().unwrap().len() == 20
    })
    .await;
    let mut late = lateness.lock().unwrap().clone();
    late.sort_by(f64::total_cmp);
    println!(
        "delayed start lateness (ms): min {:.2} p50 {:.2} max {:.2}",
        late[0] * 1e3,
        late[10] * 1e3,
        late[19] * 1e3
    );
    assert!(late[0] >= 0.0, "an event ran {:.3}s early", -late[0]);
    assert!(late[19] < 2.0, "an event started {:.3}s late", late[19]);
    assert_eq!(workers.stats().database_errors, 0);
    workers.shutdown().await.unwrap();
}

/// Records the kind of every outcome, by name.
#[derive(Clone, Default)]
struct Kinds(Arc<Mutex<Vec<&'static str>>>);

impl EventHooks for Kinds {
    fn on_outcome(&self, outcome: &Outcome) {
        let kind = match outcome.kind {
            OutcomeKind::Completed => "completed",
            OutcomeKind::Retried { .. } => "retried",
            OutcomeKind::Dead { .. } => "dead",
            OutcomeKind::LeaseLost => "lease_lost",
            _ => "other",
        };
        self.0.lock().unwrap().push(kind);
        if kind == "dead" {
            panic!("a panicking hook is contained");
        }
    }
}

#[tokio::test]
async fn retries_follow_the_backoff_and_end_dead_with_the_error_kept_then_requeue_works() {
    let (_url, client, events) = setup().await;
    let starts = Arc::new(Mutex::new(Vec::new()));
    let healed = Arc::new(AtomicBool::new(false));
    let router = {
        let starts = starts.clone();
        let healed = healed.clone();
        let client = client.clone();
        Router::new().on("flaky", move |event| {
            let starts = starts.clone();
            let healed = healed.clone();
            let client = client.clone();
            async move {
                let now = server_now(&client).await;
                starts.lock().unwrap().push(now);
                if healed.load(Ordering::SeqCst) {
                    return Ok(());
                }
                Err(format!("boom on attempt {}", event.attempt).into())
            }
        })
    };
    let kinds = Kinds::default();
    let config = fast().hooks(kinds.clone());
    let workers = EventWorkers::start(client.clone(), events.clone(), router, config)
        .await
        .unwrap();
    let id = events
        .publish(
            &client,
            NewEvent::new("flaky", &json!({})).unwrap().max_attempts(4),
        )
        .await
        .unwrap()
        .id()
        .unwrap();
    until("the event is dead", || async {
        stats(&events, &client).await.dead == 1
    })
    .await;
    let starts_seen = starts.lock().unwrap().clone();
    assert_eq!(starts_seen.len(), 4);
    for (k, pair) in starts_seen.windows(2).enumerate() {
        let gap = pair[1].duration_since(pair[0]).unwrap();
        let full = Duration::from_millis(100) * 2u32.pow(k as u32);
        assert!(
            gap >= full.mul_f64(0.75),
            "retry {} came after {gap:?}, backoff {full:?}",
            k + 1
        );
        println!(
            "retry {} after {gap:?} (backoff {full:?} minus up to 25%)",
            k + 1
        );
    }
    let dead = events.list_dead(&client, 0, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, id);
    assert_eq!(dead[0].attempts, 4);
    assert_eq!(dead[0].last_error, "boom on attempt 4");
    let worker_stats = workers.stats();
    assert_eq!((worker_stats.retried, worker_stats.dead), (3, 1));
    assert_eq!(worker_stats.by_type["flaky"].dead, 1);

    healed.store(true, Ordering::SeqCst);
    assert_eq!(events.requeue_dead(&client, &[id]).await.unwrap(), 1);
    until("the requeued event is done", || async {
        workers.stats().processed == 1
    })
    .await;
    let stats = stats(&events, &client).await;
    assert_eq!((stats.depth, stats.dead), (0, 0));
    assert_eq!(
        *kinds.0.lock().unwrap(),
        ["retried", "retried", "retried", "dead", "completed"]
    );
    workers.shutdown().await.unwrap();
}

#[tokio::test]
async fn panics_and_timeouts_are_failed_attempts() {
    let (_url, client, events) = setup().await;
    let router = Router::new()
        .on("panics", |_event| async { panic!("handler exploded") })
        .on("hangs", |_event| async {
            std::future::pending::<()>().await;
            Ok(())
        });
    let config = fast().handler_timeout(Duration::from_millis(200));
    let workers = EventWorkers::start(client.clone(), events.clone(), router, config)
        .await
        .unwrap();
    for event_type in ["panics", "hangs"] {
        events
            .publish(
                &client,
                NewEvent::new(event_type, &json!({}))
                    .unwrap()
                    .max_attempts(1),
            )
            .await
            .unwrap();
    }
    until("both are dead", || async {
        stats(&events, &client).await.dead == 2
    })
    .await;
    let mut errors: Vec<String> = events
        .list_dead(&client, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.last_error)
        .collect();
    errors.sort();
    assert_eq!(errors[0], "handler panicked: handler exploded");
    assert!(
        errors[1].starts_with("handler timed out after"),
        "{}",
        errors[1]
    );
    workers.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unknown_event_type_is_counted_and_ends_dead_not_dropped() {
    let (_url, client, events) = setup().await;
    let router = Router::new().on("known", |_event| async { Ok(()) });
    let workers = EventWorkers::start(client.clone(), events.clone(), router, fast())
        .await
        .unwrap();
    events
        .publish(
            &client,
            NewEvent::new("unknown.type", &json!({"x": 1}))
                .unwrap()
                .max_attempts(2),
        )
        .await
        .unwrap();
    until("it is dead", || async {
        stats(&events, &client).await.dead == 1
    })
    .await;
    let dead = events.list_dead(&client, 0, 10).await.unwrap();
    assert_eq!(dead[0].event_type, "unknown.type");
    assert_eq!(
        dead[0].last_error,
        "no route for event type \"unknown.type\""
    );
    assert_eq!(dead[0].payload, json!({"x": 1}));
    let worker_stats = workers.stats();
    assert_eq!(worker_stats.unrouted, 2);
    assert_eq!((worker_stats.retried, worker_stats.dead), (1, 1));
    // Purge removes it for good.
    assert_eq!(events.purge_dead(&client, &[dead[0].id]).await.unwrap(), 1);
    assert_eq!(stats(&events, &client).await.dead, 0);
    workers.shutdown().await.unwrap();
}

#[tokio::test]
async fn routes_by_wildcard_prefix_and_included_router() {
    let (_url, client, events) = setup().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = |label: &'static str| {
        let seen = seen.clone();
        move |event: pgorm_events::Event| {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .push(format!("{label}:{}", event.event_type));
                Ok(())
            }
        }
    };
    let billing = Router::new().on("invoice.paid", record("billing"));
    let router = Router::new()
        .on("order.*", record("wildcard"))
        .on_prefix("audit.", record("prefix"))
        .include("billing", billing);
    let workers = EventWorkers::start(client.clone(), events.clone(), router, fast())
        .await
        .unwrap();
    for event_type in [
        "order.created",
        "audit.login.failed",
        "billing.invoice.paid",
    ] {
        events
            .publish(&client, NewEvent::new(event_type, &json!({})).unwrap())
            .await
            .unwrap();
    }
    until("all three ran", || async {
        seen.lock().unwrap().len() == 3
    })
    .await;
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        [
            "billing:billing.invoice.paid",
            "prefix:audit.login.failed",
            "wildcard:order.created"
        ]
    );
    workers.shutdown().await.unwrap();
}

#[tokio::test]
async fn transactional_handler_writes_roll_back_with_a_failed_attempt() {
    let (_url, client, events) = setup().await;
    client
        .execute("CREATE TABLE ledger (event_id bigint, attempt int)", &[])
        .await
        .unwrap();
    let router = Router::new().on_transactional("order.paid", |event, tx| async move {
        tx.execute(
            "INSERT INTO ledger VALUES ($1, $2)",
            &[&event.id, &event.attempt],
        )
        .await?;
        if event.attempt == 1 {
            return Err("first attempt fails after writing".into());
        }
        Ok(tx)
    });
    let workers = EventWorkers::start(client.clone(), events.clone(), router, fast())
        .await
        .unwrap();
    let id = events
        .publish(&client, NewEvent::new("order.paid", &json!({})).unwrap())
        .await
        .unwrap()
        .id()
        .unwrap();
    until("the event is done", || async {
        workers.stats().processed == 1
    })
    .await;
    let rows: Vec<(i64, i32)> = client
        .query("SELECT event_id, attempt FROM ledger", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, [(id, 2)]);
    assert_eq!(stats(&events, &client).await.depth, 0);
    workers.shutdown().await.unwrap();
}

#[tokio::test]
async fn transactional_writes_roll_back_when_the_lease_was_lost() {
    let (_url, client, events) = setup().await;
    client
        .execute("CREATE TABLE ledger (event_id bigint)", &[])
        .await
        .unwrap();
    events
        .publish(&client, NewEvent::new("x", &json!({})).unwrap())
        .await
        .unwrap();
    let claimed = events
        .claim(&client, 1, Duration::from_secs(30))
        .await
        .unwrap()
        .remove(0);
    // Someone else settles the event first (as a rescuer would).
    client
        .execute(
            "UPDATE pgorm_events.events SET lease_token = lease_token + 1",
            &[],
        )
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO ledger VALUES ($1)", &[&claimed.event().id])
        .await
        .unwrap();
    let error = events.complete(&tx, &claimed).await.unwrap_err();
    assert!(error.is_lease_lost(), "{error}");
    drop(tx);
    let count: i64 = client
        .query_one("SELECT count(*) FROM ledger", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
}

#[tokio::test]
async fn a_late_completion_after_the_lease_expired_and_the_event_was_rescued_is_rejected() {
    let (_url, client, events) = setup().await;
    events
        .publish(&client, NewEvent::new("x", &json!({})).unwrap())
        .await
        .unwrap();
    let stale = events
        .claim(&client, 1, Duration::from_millis(200))
        .await
        .unwrap()
        .remove(0);
    assert!(events
        .claim(&client, 1, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(stats(&events, &client).await.expired_leases, 1);
    let rescued = events
        .claim(&client, 1, Duration::from_secs(30))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(rescued.event().id, stale.event().id);
    assert_eq!(rescued.event().attempt, 2);
    assert_ne!(rescued.lease_token(), stale.lease_token());
    let error = events.complete(&client, &stale).await.unwrap_err();
    assert!(error.is_lease_lost(), "{error}");
    let error = events
        .fail(&client, &stale, "late", Duration::ZERO)
        .await
        .unwrap_err();
    assert!(error.is_lease_lost(), "{error}");
    events.complete(&client, &rescued).await.unwrap();
    assert!(events
        .complete(&client, &rescued)
        .await
        .unwrap_err()
        .is_lease_lost());
    assert_eq!(stats(&events, &client).await.depth, 0);
}

#[tokio::test]
async fn graceful_shutdown_releases_unfinished_events_for_others_at_once() {
    let (_url, client, events) = setup().await;
    let started = Arc::new(AtomicU32::new(0));
    let router = {
        let started = started.clone();
        Router::new().on("slow", move |_event| {
            let started = started.clone();
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
                Ok(())
            }
        })
    };
    let config = fast()
        .concurrency(3)
        .shutdown_timeout(Duration::from_millis(200));
    let workers = EventWorkers::start(client.clone(), events.clone(), router, config)
        .await
        .unwrap();
    events
        .publish_batch(
            &client,
            (0..3)
                .map(|i| NewEvent::new("slow", &json!(i)).unwrap())
                .collect(),
        )
        .await
        .unwrap();
    until("three handlers run", || async {
        started.load(Ordering::SeqCst) == 3
    })
    .await;
    let report = workers.shutdown().await.unwrap();
    assert!(!report.drained);
    assert_eq!(report.released, 3);
    let stats = stats(&events, &client).await;
    assert_eq!((stats.due, stats.running), (3, 0));
    // Attempts are not counted for released events.
    let claimed = events
        .claim(&client, 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    assert!(claimed.iter().all(|c| c.event().attempt == 1));
}

#[tokio::test]
async fn kept_completed_events_are_pruned_after_their_retention() {
    let url = TestServer::shared().create_database().await.unwrap();
    let client = PgClient::connect(&url).await.unwrap();
    let events =
        Events::new(pgorm_events::EventsConfig::new().keep_completed(Duration::from_millis(300)))
            .unwrap();
    events.migrate(&client).await.unwrap();
    events
        .publish_batch(
            &client,
            (0..5)
                .map(|i| NewEvent::new("k", &json!(i)).unwrap())
                .collect(),
        )
        .await
        .unwrap();
    let claimed = events
        .claim(&client, 10, Duration::from_secs(30))
        .await
        .unwrap();
    let done = events.complete_many(&client, &claimed).await.unwrap();
    assert_eq!(done.len(), 5);
    let kept = || async {
        client
            .query_one("SELECT count(*) FROM pgorm_events.completed_events", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(kept().await, 5);
    assert_eq!(events.prune_completed(&client, 2).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(events.prune_completed(&client, 2).await.unwrap(), 5);
    assert_eq!(kept().await, 0);
}

#[tokio::test]
async fn stats_report_due_delayed_running_and_oldest_age() {
    let (_url, client, events) = setup().await;
    events
        .publish(&client, NewEvent::new("a", &json!({})).unwrap())
        .await
        .unwrap();
    events
        .publish(&client, NewEvent::new("a", &json!({})).unwrap())
        .await
        .unwrap();
    events
        .publish(
            &client,
            NewEvent::new("b", &json!({}))
                .unwrap()
                .delay(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    events
        .claim(&client, 1, Duration::from_secs(30))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stats = stats(&events, &client).await;
    assert_eq!(
        (stats.depth, stats.due, stats.delayed, stats.running),
        (3, 1, 1, 1)
    );
    assert!(stats.oldest_due_age.unwrap() >= Duration::from_millis(40));
    assert_eq!(stats.by_type["a"].due, 1);
    assert_eq!(stats.by_type["b"].delayed, 1);
}

#[tokio::test]
async fn an_event_whose_last_attempt_died_with_its_worker_ends_dead_without_running_again() {
    let (_url, client, events) = setup().await;
    events
        .publish(
            &client,
            NewEvent::new("job", &json!({})).unwrap().max_attempts(1),
        )
        .await
        .unwrap();
    // Attempt 1 is claimed by a worker that then vanishes.
    let abandoned = events
        .claim(&client, 1, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(abandoned.len(), 1);
    let ran = Arc::new(AtomicU32::new(0));
    let router = {
        let ran = ran.clone();
        Router::new().on("job", move |_event| {
            let ran = ran.clone();
            async move {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
    };
    let workers = EventWorkers::start(client.clone(), events.clone(), router, fast())
        .await
        .unwrap();
    until("the abandoned event is dead", || async {
        stats(&events, &client).await.dead == 1
    })
    .await;
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    let dead = events.list_dead(&client, 0, 10).await.unwrap();
    assert_eq!(
        dead[0].last_error,
        "the worker of attempt 1 stopped without an outcome (its lease expired)"
    );
    workers.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_undecodable_payload_goes_dead_instead_of_blocking_claims() {
    let (_url, client, events) = setup().await;
    client
        .execute(
            "INSERT INTO pgorm_events.events (event_type, payload) VALUES ('odd', '1e400')",
            &[],
        )
        .await
        .unwrap();
    events
        .publish(&client, NewEvent::new("fine", &json!(1)).unwrap())
        .await
        .unwrap();
    let claimed = events
        .claim(&client, 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].event().event_type, "fine");
    let dead = events.list_dead(&client, 0, 10).await.unwrap();
    // Listed with the stored text, since it cannot be decoded.
    // (PostgreSQL prints the numeric in full.)
    let text = dead[0].payload.as_str().unwrap();
    assert!(text.starts_with("1000") && text.len() == 401, "{text}");
    let stats = stats(&events, &client).await;
    assert_eq!((stats.dead, stats.running), (1, 1));
    let last_error: String = client
        .query_one("SELECT last_error FROM pgorm_events.dead_events", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        last_error.starts_with("the payload could not be decoded"),
        "{last_error}"
    );
}

#[tokio::test]
async fn shutdown_leaves_a_hub_it_was_given_open() {
    let (url, client, events) = setup().await;
    let hub = pgorm::listen::PgNotifyHub::connect(&url).await.unwrap();
    let router = Router::new().on("x", |_event| async { Ok(()) });
    let workers =
        EventWorkers::start_with_hub(client.clone(), events.clone(), router, fast(), hub.clone())
            .await
            .unwrap();
    workers.shutdown().await.unwrap();
    let mut other = hub.subscribe("still_open").await.unwrap();
    pgorm::listen::notify(&client, "still_open", "yes")
        .await
        .unwrap();
    let notification = within("the notification", other.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(notification.payload, "yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_held_snapshot_urgent_and_back_dated_events_are_still_claimed_once() {
    let (url, client, events) = setup_schema("held_snapshot").await;
    // A snapshot held open for the whole test: the index entries of every
    // claimed or completed event stay behind, dead.
    let (_holder, snapshot) = held_snapshot(&url).await;

    let seen: Arc<Mutex<std::collections::HashMap<i64, u32>>> = Arc::default();
    let counted = seen.clone();
    let router = Router::new().on("n", move |event| {
        let counted = counted.clone();
        async move {
            *counted.lock().unwrap().entry(event.id).or_default() += 1;
            Ok(())
        }
    });
    let workers = EventWorkers::start(
        client.clone(),
        events.clone(),
        router,
        fast().concurrency(16).max_batch(100),
    )
    .await
    .unwrap();
    for _ in 0..4 {
        let batch = (0..2_500)
            .map(|i| NewEvent::new("n", &json!({ "i": i })).unwrap())
            .collect();
        events.publish_batch(&client, batch).await.unwrap();
    }
    until("10,000 events handled", || async {
        seen.lock().unwrap().len() == 10_000
    })
    .await;
    // Behind any cursor in claim order: more urgent, and due an hour ago.
    let an_hour_ago = server_now(&client).await - Duration::from_secs(3600);
    let urgent = events
        .publish(
            &client,
            NewEvent::new("n", &json!({})).unwrap().priority(-5),
        )
        .await
        .unwrap()
        .id()
        .unwrap();
    let back_dated = events
        .publish(
            &client,
            NewEvent::new("n", &json!({})).unwrap().run_at(an_hour_ago),
        )
        .await
        .unwrap()
        .id()
        .unwrap();
    until("the urgent and the back-dated event handled", || async {
        let seen = seen.lock().unwrap();
        seen.contains_key(&urgent) && seen.contains_key(&back_dated)
    })
    .await;
    workers.shutdown().await.unwrap();
    snapshot.commit().await.unwrap();
    assert_eq!(stats(&events, &client).await.depth, 0);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 10_002);
    assert!(seen.values().all(|&count| count == 1));
}

#[tokio::test]
async fn a_busy_pool_keeps_every_completion_it_writes_with_its_next_claim_once() {
    // Completions ride on the pool's next claim statement while slots are
    // free; kept completed events show each completion landed exactly once,
    // and the queue ends empty with no lease lost.
    let url = TestServer::shared().create_database().await.unwrap();
    let client = PgClient::connect(&url).await.unwrap();
    let events =
        Events::new(pgorm_events::EventsConfig::new().keep_completed(Duration::from_secs(3600)))
            .unwrap();
    events.migrate(&client).await.unwrap();
    let in_handler = Arc::new(AtomicU32::new(0));
    let most_at_once = Arc::new(AtomicU32::new(0));
    let router = {
        let (in_handler, most_at_once) = (in_handler.clone(), most_at_once.clone());
        Router::new().on("k", move |_event| {
            let (in_handler, most_at_once) = (in_handler.clone(), most_at_once.clone());
            async move {
                let now = in_handler.fetch_add(1, Ordering::SeqCst) + 1;
                most_at_once.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                in_handler.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
    };
    let workers = EventWorkers::start(
        client.clone(),
        events.clone(),
        router,
        fast().concurrency(4).max_batch(100),
    )
    .await
    .unwrap();
    events
        .publish_batch(
            &client,
            (0..2_000)
                .map(|i| NewEvent::new("k", &json!(i)).unwrap())
                .collect(),
        )
        .await
        .unwrap();
    until("2,000 events handled", || async {
        workers.stats().processed == 2_000
    })
    .await;
    assert_eq!(workers.stats().lease_lost, 0);
    let report = workers.shutdown().await.unwrap();
    assert!(report.drained);
    assert_eq!(report.released, 0);
    assert!(most_at_once.load(Ordering::SeqCst) <= 4);
    assert_eq!(stats(&events, &client).await.depth, 0);
    let (kept, distinct): (i64, i64) = {
        let row = client
            .query_one(
                "SELECT count(*), count(DISTINCT id) FROM pgorm_events.completed_events",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((kept, distinct), (2_000, 2_000));
}
