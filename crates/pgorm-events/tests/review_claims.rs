//! Hostile review (4th, of the claim plan): a pool in cursor mode whose
//! claim from the cursor ends after its next sweep came due must still
//! sweep at once, not wait for its poll.
//!
//! Its only deadline (5 s, five times the documented "at most about a
//! second") tells a sweep that ran at once from a wait for the 30 s poll.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use pgorm::{GenericClient, PgClient};
use pgorm_events::{Claim, EventHooks, EventWorkers, HandlerError, NewEvent, Router, WorkerConfig};
use serde_json::json;
use support::*;

/// Every claim a pool reports: (requested, claimed, duration), for the
/// assertion messages only (never a pass/fail criterion).
#[derive(Clone, Default)]
struct Claims(Arc<Mutex<Vec<(usize, usize, Duration)>>>);

impl EventHooks for Claims {
    fn on_claim(&self, claim: &Claim) {
        self.0
            .lock()
            .unwrap()
            .push((claim.requested, claim.claimed, claim.duration));
    }
}

impl Claims {
    fn summary(&self) -> String {
        let claims = self.0.lock().unwrap();
        let slow = claims
            .iter()
            .filter(|c| c.2 > Duration::from_millis(10))
            .count();
        format!("{} claims, {} of them over 10 ms", claims.len(), slow)
    }
}

/// Handlers of "urgent" and "gated" record the order in which events ran;
/// "gated" then waits for a permit of the returned semaphore.
fn ordered() -> (Router, Arc<Mutex<Vec<i64>>>, Arc<tokio::sync::Semaphore>) {
    let order: Arc<Mutex<Vec<i64>>> = Arc::default();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let record = |order: Arc<Mutex<Vec<i64>>>| {
        move |event: pgorm_events::Event| {
            let order = order.clone();
            async move {
                order.lock().unwrap().push(event.id);
                Ok::<(), HandlerError>(())
            }
        }
    };
    let gated = {
        let (order, gate) = (order.clone(), gate.clone());
        move |event: pgorm_events::Event| {
            let (order, gate) = (order.clone(), gate.clone());
            async move {
                order.lock().unwrap().push(event.id);
                gate.acquire().await.unwrap().forget();
                Ok::<(), HandlerError>(())
            }
        }
    };
    let router = Router::new()
        .on("urgent", record(order.clone()))
        .on("gated", gated);
    (router, order, gate)
}

// Finding (older than this review, fixed with it): in cursor mode
// `until_sweep` is `None` once the sweep is due (`cursor()` returns `None`
// both when sweeps are fast and when the timed sweep is due now). A claim
// from the cursor that ends past the sweep time (it waited for a lock,
// such as CREATE INDEX's SHARE lock, a pooled connection, the network)
// therefore sets no timer: the coordinator sleeps until a wake-up, a
// completion or the poll. An urgent event that sorts before the cursor
// (or an expired lease) then waits for the poll (here 30 s), not "at most
// about a second".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_claim_that_ends_past_the_sweep_time_keeps_the_sweep_timer() {
    let (url, client, events) = setup_schema("rc_f2").await;
    let (_holder, snapshot) = held_snapshot_with_dead_entries(&url, &client, "rc_f2").await;
    let (router, order, gate) = ordered();
    let claims = Claims::default();
    let workers = EventWorkers::start(
        client.clone(),
        events.clone(),
        router,
        WorkerConfig::new()
            .concurrency(4)
            .poll_interval(Duration::from_secs(30))
            .hooks(claims.clone()),
    )
    .await
    .unwrap();
    // The first claim, a sweep, was slow: cursor mode. A low-priority event
    // whose handler runs until the end of the test is claimed by a sweep
    // (the pool has no cursor yet), which sets the cursor at priority 5.
    until("the pool's first claim", || async {
        !claims.0.lock().unwrap().is_empty()
    })
    .await;
    let held = events
        .publish(
            &client,
            NewEvent::new("gated", &json!({})).unwrap().priority(5),
        )
        .await
        .unwrap()
        .id()
        .unwrap();
    until("the held event started", || async {
        order.lock().unwrap().contains(&held)
    })
    .await;
    let swept_at = Instant::now();
    // An urgent event, due in 300 ms (its wake-up comes now, while it is
    // not yet due; it sorts before the cursor).
    let urgent = events
        .publish(
            &client,
            NewEvent::new("urgent", &json!({}))
                .unwrap()
                .run_at(SystemTime::now() + Duration::from_millis(300)),
        )
        .await
        .unwrap()
        .id()
        .unwrap();
    // (Orchestration only: lets the claims after its wake-up finish.)
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Well within the second after the sweep, another session takes the
    // lock CREATE INDEX takes; the pool's next claim (from its cursor)
    // waits for it until past the sweep time.
    let locker = PgClient::connect(&url).await.unwrap();
    let lock = locker.transaction().await.unwrap();
    lock.execute("LOCK TABLE rc_f2.events IN SHARE MODE", &[])
        .await
        .unwrap();
    let locked_after = swept_at.elapsed();
    workers.wake();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    lock.commit().await.unwrap();
    let released = Instant::now();
    // The urgent event is due; the pool's next sweep should run at once.
    let ran = tokio::time::timeout(Duration::from_secs(5), async {
        while !order.lock().unwrap().contains(&urgent) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .is_ok();
    let waited = released.elapsed();
    let summary = claims.summary();
    let first_sweep = claims.0.lock().unwrap()[0].2;
    gate.add_permits(1);
    within("shutdown", workers.shutdown()).await.unwrap();
    snapshot.commit().await.unwrap();
    assert!(
        first_sweep > Duration::from_millis(10),
        "orchestration: the first sweep took {first_sweep:?}, not slow: no cursor mode"
    );
    assert!(
        locked_after < Duration::from_millis(900),
        "orchestration: the lock came {locked_after:?} after the sweep"
    );
    assert!(
        ran,
        "an urgent event (sorting before a cursor-mode pool's cursor) had not run {waited:?} \
         after a claim from the cursor that waited for a lock past the sweep time \
         ended: no sweep timer was set, the pool waits for its poll (30 s). Claims: {summary}"
    );
}
