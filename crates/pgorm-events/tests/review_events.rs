//! Hostile review (r2) of the debounced wake-ups, the claim cursor and the
//! migrations: each test is marked with its finding number.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgorm::{GenericClient, PgClient};
use pgorm_events::{
    Claim, EventHooks, EventWorkers, Events, EventsConfig, NewEvent, Router, WorkerConfig,
};
use serde_json::json;
use support::*;

/// A router that records the id of every "n" event it handles.
fn recording() -> (Router, Arc<Mutex<HashSet<i64>>>) {
    let seen: Arc<Mutex<HashSet<i64>>> = Arc::default();
    let counted = seen.clone();
    let router = Router::new().on("n", move |event| {
        let counted = counted.clone();
        async move {
            counted.lock().unwrap().insert(event.id);
            Ok(())
        }
    });
    (router, seen)
}

/// Waits up to `limit` for `ids` to be handled; returns how many were.
async fn handled_within(seen: &Mutex<HashSet<i64>>, ids: &[i64], limit: Duration) -> usize {
    let started = Instant::now();
    loop {
        let done = {
            let seen = seen.lock().unwrap();
            ids.iter().filter(|id| seen.contains(id)).count()
        };
        if done == ids.len() || started.elapsed() > limit {
            return done;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn publish_one(events: &Events, client: &impl GenericClient, priority: i16) -> i64 {
    events
        .publish(
            client,
            NewEvent::new("n", &json!({})).unwrap().priority(priority),
        )
        .await
        .unwrap()
        .id()
        .unwrap()
}

// Finding 1: the debounce lock is a transaction-level advisory lock taken by
// a *deferred* trigger. `SET CONSTRAINTS ALL IMMEDIATE` (a common idiom to
// check deferred foreign keys early) fires that trigger mid-transaction, so
// the lock is then held for the rest of that transaction, and every other
// transaction's wake-up on the schema is dropped for as long as it runs.
// docs/en/events.md: "A long transaction does not hold the lock while it
// runs, only while it commits." Events then wait for the poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding1_an_early_constraint_check_does_not_silence_other_publishers() {
    use pgorm::tokio_postgres::{connect, AsyncMessage, NoTls};
    let (url, client, events) = setup_schema("r2_wake").await;
    // The wake-up channel, listened to directly (a worker pool would also
    // find the events by its periodic sweeps when its sweeps are slow).
    let (listener, mut connection) = connect(&url, NoTls).await.unwrap();
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let Ok(AsyncMessage::Notification(note)) = message {
                let _ = sender.send(note.channel().to_owned());
            }
        }
    });
    let channel = events.config().wakeup_channel();
    listener
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .await
        .unwrap();
    // Control: a plain publish is woken for.
    publish_one(&events, &client, 0).await;
    within("the control wake-up", received.recv())
        .await
        .unwrap();

    // Another session publishes and checks its constraints early, then
    // goes on with its (long) work.
    let other = PgClient::connect(&url).await.unwrap();
    let long = other.transaction().await.unwrap();
    publish_one(&events, &long, 0).await;
    long.execute("SET CONSTRAINTS ALL IMMEDIATE", &[])
        .await
        .unwrap();

    // An ordinary event committed in a later 10 ms window of the debounce
    // lock still gets its wake-up (one committed within the same window as
    // the early check waits for the poll: documented in events.md).
    tokio::time::sleep(Duration::from_millis(50)).await;
    publish_one(&events, &client, 0).await;
    let woken = tokio::time::timeout(Duration::from_secs(10), received.recv()).await;
    long.rollback().await.unwrap();
    assert!(
        woken.is_ok(),
        "a committed event sent no wake-up while another transaction ran after \
         SET CONSTRAINTS ALL IMMEDIATE (workers find it at their poll)"
    );
}

// Finding 2: the claim cursor only ever moves forward in claim order
// (priority first). Once a pool in cursor mode (slow sweeps: dead index
// entries under a held snapshot) claims an event of priority 5, every later
// event of priority 0 sorts before the cursor for the rest of the pool's
// life: only sweeps take them, and a sweep runs only when the coordinator
// happens to loop a second after the last one (the poll, in an idle pool),
// max_batch events at a time. docs/en/events.md: such an event "waits for
// the next sweep, at most about a second".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding2_more_urgent_events_after_a_low_priority_claim_are_not_throttled() {
    let (url, client, events) = setup_schema("r2_cursor").await;
    // A snapshot held open for the whole test keeps 300,000 dead entries at
    // the head of the due index: sweeps stay slow (over 10 ms) even once
    // their hint bits are set.
    let (_holder, snapshot) = held_snapshot_with_dead_entries(&url, &client, "r2_cursor").await;

    let (router, seen) = recording();
    let empty = Arc::new(AtomicU64::new(0));
    let config = WorkerConfig::new()
        .concurrency(20)
        .max_batch(20)
        .poll_interval(Duration::from_secs(5))
        .hooks(CountEmpty(empty.clone()));
    let workers = EventWorkers::start(client.clone(), events.clone(), router, config)
        .await
        .unwrap();
    // One low-urgency event: the pool's cursor moves to priority 5.
    let low = publish_one(&events, &client, 5).await;
    assert_eq!(
        handled_within(&seen, &[low], Duration::from_secs(10)).await,
        1
    );
    // Then a burst of normal (more urgent) events.
    let empty_before = empty.load(Ordering::Relaxed);
    let batch = (0..600)
        .map(|i| NewEvent::new("n", &json!({ "i": i })).unwrap())
        .collect();
    let published = events.publish_batch(&client, batch).await.unwrap();
    let ids: Vec<i64> = published.inserted;
    assert_eq!(ids.len(), 600);
    let done = handled_within(&seen, &ids, Duration::from_secs(20)).await;
    let empty_claims = empty.load(Ordering::Relaxed) - empty_before;
    workers.shutdown().await.unwrap();
    snapshot.commit().await.unwrap();
    assert_eq!(
        done, 600,
        "only {done} of 600 priority-0 events ran within 20 s after a priority-5 claim \
         ({empty_claims} claims came back empty meanwhile)"
    );
    // Finding 2b: meanwhile next_due_from (any priority, run_at after the
    // cursor's) reports those events as due now, so the coordinator spins
    // on empty claims every millisecond until the next sweep.
    assert!(
        empty_claims < 100,
        "{empty_claims} empty claims while 600 due events waited"
    );
}

// Finding 3: the migrations fill in `{s}`, then `{channel}`, then
// `{wake_lock_class}` one after the other, so a schema name that contains a
// placeholder is rewritten inside the already quoted identifier: the
// migration targets another schema, and a `"` in the name then escapes the
// identifier's quotes (the channel literal does not double it). The name
// passes `EventsConfig` validation (only NUL and `$` are refused).
#[tokio::test]
async fn finding3_a_schema_name_with_braces_migrates_and_publishes() {
    let url = TestServer::shared().create_database().await.unwrap();
    let client = PgClient::connect(&url).await.unwrap();
    for schema in ["a{channel}b", "x{channel}\"y", "{wake_lock_class}"] {
        let events = Events::new(EventsConfig::new().schema(schema)).unwrap();
        let migrated = events.migrate(&client).await;
        assert!(migrated.is_ok(), "schema {schema:?}: {migrated:?}");
        events
            .publish(&client, NewEvent::new("n", &json!({})).unwrap())
            .await
            .unwrap();
        assert_eq!(events.stats(&client).await.unwrap().depth, 1, "{schema:?}");
    }
}

/// Counts the claim statements that came back empty.
struct CountEmpty(Arc<AtomicU64>);

impl EventHooks for CountEmpty {
    fn on_claim(&self, claim: &Claim) {
        if claim.claimed == 0 {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// Finding 8: `migrate` takes its advisory lock inside the DO block, but
// under REPEATABLE READ (a caller's transaction, or a database whose
// default_transaction_isolation is 'repeatable read') the statement's
// snapshot is taken before the lock wait. A second migrate that waited for
// a first one then reads version 0 from that stale snapshot and re-runs
// migration 1: "relation already exists" instead of the documented "two
// processes starting at once are safe".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding8_concurrent_migrations_are_safe_under_repeatable_read() {
    let url = TestServer::shared().create_database().await.unwrap();
    let admin = PgClient::connect(&url).await.unwrap();
    let database: String = admin
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    admin
        .execute(
            &format!(
                "ALTER DATABASE \"{database}\" SET default_transaction_isolation = 'repeatable read'"
            ),
            &[],
        )
        .await
        .unwrap();
    let first = PgClient::connect(&url).await.unwrap();
    let second = PgClient::connect(&url).await.unwrap();
    let events = Events::new(EventsConfig::new().schema("r2_rr")).unwrap();
    let tx = first.transaction().await.unwrap();
    events.migrate(&tx).await.unwrap();
    let waiting = tokio::spawn({
        let events = events.clone();
        async move { events.migrate(&second).await }
    });
    until("the second migrate waits for the lock", || {
        let admin = admin.clone();
        async move {
            admin
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 1
        }
    })
    .await;
    tx.commit().await.unwrap();
    let result = within("the second migrate", waiting).await.unwrap();
    assert!(matches!(result, Ok(4)), "{result:?}");
}
