//! Hostile review (r3) of completions riding on claims: each test is
//! marked with its finding number; `holds_*` tests are probes that pass.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgorm::{GenericClient, PgClient};
use pgorm_events::{
    EventHooks, EventWorkers, Events, NewEvent, Outcome, OutcomeKind, Router, WorkerConfig,
};
use serde_json::json;
use support::*;

type Outcomes = Arc<Mutex<HashMap<i64, Vec<OutcomeKind>>>>;

/// Records every outcome the pool reports, by event id.
struct Recorder(Outcomes);

impl EventHooks for Recorder {
    fn on_outcome(&self, outcome: &Outcome) {
        self.0
            .lock()
            .unwrap()
            .entry(outcome.event_id)
            .or_default()
            .push(outcome.kind.clone());
    }
}

fn fast() -> WorkerConfig {
    WorkerConfig::new()
        .poll_interval(Duration::from_millis(200))
        .backoff(Duration::from_millis(100), Duration::from_secs(2))
        .lease(Duration::from_secs(5))
}

/// Handlers of type "gated" wait for a permit of `gate`; `entered` and
/// `returned` count them. Type "free" returns at once.
struct Gated {
    gate: Arc<tokio::sync::Semaphore>,
    entered: Arc<std::sync::atomic::AtomicU32>,
    returned: Arc<std::sync::atomic::AtomicU32>,
    /// The ids of the gated events that returned, in order.
    returned_ids: Arc<Mutex<Vec<i64>>>,
}

fn gated_router() -> (Router, Gated) {
    use std::sync::atomic::Ordering;
    let gated = Gated {
        gate: Arc::new(tokio::sync::Semaphore::new(0)),
        entered: Arc::default(),
        returned: Arc::default(),
        returned_ids: Arc::default(),
    };
    let (gate, entered, returned, returned_ids) = (
        gated.gate.clone(),
        gated.entered.clone(),
        gated.returned.clone(),
        gated.returned_ids.clone(),
    );
    let router = Router::new()
        .on("gated", move |event| {
            let (gate, entered, returned) = (gate.clone(), entered.clone(), returned.clone());
            let returned_ids = returned_ids.clone();
            async move {
                entered.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.unwrap().forget();
                returned_ids.lock().unwrap().push(event.id);
                returned.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .on("free", |_event| async { Ok(()) });
    (router, gated)
}

/// An `on_claim` hook that, once armed, holds the coordinator after its
/// next claim (the claim is timed before the hook runs) until released.
#[derive(Clone, Default)]
struct Hold {
    armed: Arc<std::sync::atomic::AtomicBool>,
    holding: Arc<std::sync::atomic::AtomicBool>,
    released: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

impl Hold {
    fn release(&self) {
        *self.released.0.lock().unwrap() = true;
        self.released.1.notify_all();
    }
}

impl EventHooks for Hold {
    fn on_claim(&self, _claim: &pgorm_events::Claim) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.armed.swap(false, SeqCst) {
            self.holding.store(true, SeqCst);
            // The worker's other tasks move to another thread meanwhile.
            tokio::task::block_in_place(|| {
                let (lock, released) = &*self.released;
                let done = lock.lock().unwrap();
                // (A hang guard: never holds longer than HANG.)
                let (_done, _) = released
                    .wait_timeout_while(done, HANG, |done| !*done)
                    .unwrap();
            });
        }
    }
}

/// Publishes two "gated" events, A and B, in one statement; their ids.
async fn publish_gated_pair(events: &Events, client: &PgClient) -> (i64, i64) {
    let ids = events
        .publish_batch(
            client,
            vec![
                NewEvent::new("gated", &json!("a")).unwrap(),
                NewEvent::new("gated", &json!("b")).unwrap(),
            ],
        )
        .await
        .unwrap()
        .inserted;
    assert_eq!(ids.len(), 2);
    (ids[0], ids[1])
}

async fn count(client: &PgClient, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

// Finding 1: `claim_completing` commits the completions and the claim in
// one statement, then decodes the claimed rows; an undecodable payload is
// buried by a second statement, and if that one fails the whole call
// returns `Err`. The coordinator then answers the carried completions
// `None` ("not written"), although they were committed: each task writes
// its completion again alone, finds no row, and reports `LeaseLost`
// (counted in `lease_lost`, `on_outcome` says the outcome was rejected)
// for an event whose completion was accepted and whose lease never
// expired. Before the change completions were never in a statement whose
// caller could fail after the commit for another reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn finding1_completions_committed_with_a_claim_are_not_reported_lost_when_the_claim_part_fails_after_commit(
) {
    let (url, client, events) = setup_schema("r3_f1").await;
    // The bury of an undecodable payload fails (as any statement may: a cut
    // connection, a statement timeout, a full disk).
    client
        .execute(
            "CREATE FUNCTION r3_f1.no_bury() RETURNS trigger LANGUAGE plpgsql AS \
             $$BEGIN RAISE EXCEPTION 'injected: the bury fails'; END$$",
            &[],
        )
        .await
        .unwrap();
    client
        .execute(
            "CREATE TRIGGER no_bury BEFORE INSERT ON r3_f1.dead_events \
             FOR EACH ROW EXECUTE FUNCTION r3_f1.no_bury()",
            &[],
        )
        .await
        .unwrap();
    let (a, b) = publish_gated_pair(&events, &client).await;
    let outcomes: Outcomes = Arc::default();
    let (router, gated) = gated_router();
    let workers = EventWorkers::start(
        client.clone(),
        events.clone(),
        router,
        fast().concurrency(2).hooks(Recorder(outcomes.clone())),
    )
    .await
    .unwrap();
    // One full claim took both: the pool is busy, no slot is free.
    until("both handlers entered", || async {
        gated.entered.load(std::sync::atomic::Ordering::SeqCst) == 2
    })
    .await;

    // Hold the queue table so that the pool's next claim waits.
    let locker = PgClient::connect(&url).await.unwrap();
    let tx = locker.transaction().await.unwrap();
    tx.execute("LOCK TABLE r3_f1.events IN ACCESS EXCLUSIVE MODE", &[])
        .await
        .unwrap();
    // A returns: its slot frees and the pool's claim (1 slot) waits on the
    // lock. Then B returns; its completion waits for the pool.
    gated.gate.add_permits(1);
    until("a returned", || async {
        gated.returned.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    gated.gate.add_permits(1);
    until("b returned", || async {
        gated.returned.load(std::sync::atomic::Ordering::SeqCst) == 2
    })
    .await;
    // (Orchestration only: lets B's completion reach the coordinator.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A good urgent event for the waiting claim (full: the pool stays busy)
    // and an undecodable one for the claim after it, which carries B.
    events
        .publish(&tx, NewEvent::new("free", &json!("c")).unwrap())
        .await
        .unwrap();
    tx.execute(
        "INSERT INTO r3_f1.events (event_type, payload, priority) VALUES ('free', '1e400', 5)",
        &[],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    until("a and b have outcomes", || async {
        let outcomes = outcomes.lock().unwrap();
        outcomes.contains_key(&a) && outcomes.contains_key(&b)
    })
    .await;
    // Both completions were written: neither event is queued any more.
    let left = count(
        &client,
        &format!("SELECT count(*) FROM r3_f1.events WHERE id IN ({a}, {b})"),
    )
    .await;
    assert_eq!(left, 0, "a and b were completed");
    let stats = workers.stats();
    let reported: Vec<_> = {
        let outcomes = outcomes.lock().unwrap();
        vec![outcomes[&a].clone(), outcomes[&b].clone()]
    };
    workers.shutdown().await.unwrap();
    assert!(
        reported
            .iter()
            .all(|kinds| matches!(kinds.as_slice(), [OutcomeKind::Completed])),
        "completions that were committed were reported as {reported:?} \
         (lease_lost = {}, processed = {})",
        stats.lease_lost,
        stats.processed
    );
    assert_eq!(stats.lease_lost, 0);
}

// Holds: a database error inside the combined statement (here the claim
// part fails) rolls the whole statement back, completions included; the
// carried completions are then written alone by their tasks, and each is
// reported `Completed` once (nothing lost, nothing applied twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn holds_a_combined_statement_that_fails_rolls_back_and_its_completions_are_written_alone_once(
) {
    use std::sync::atomic::Ordering::SeqCst;
    let (url, client, events) = setup_schema("r3_h1").await;
    // Claiming an event of type "boom" fails the claim statement.
    client
        .execute(
            "CREATE FUNCTION r3_h1.no_claim() RETURNS trigger LANGUAGE plpgsql AS \
             $$BEGIN IF NEW.event_type = 'boom' AND NEW.lease_token IS NOT NULL THEN \
             RAISE EXCEPTION 'injected: the claim fails'; END IF; RETURN NEW; END$$",
            &[],
        )
        .await
        .unwrap();
    client
        .execute(
            "CREATE TRIGGER no_claim BEFORE UPDATE ON r3_h1.events \
             FOR EACH ROW EXECUTE FUNCTION r3_h1.no_claim()",
            &[],
        )
        .await
        .unwrap();
    let (a, b) = publish_gated_pair(&events, &client).await;
    let outcomes: Outcomes = Arc::default();
    let (router, gated) = gated_router();
    let workers = EventWorkers::start(
        client.clone(),
        events.clone(),
        router.on("boom", |_event| async { Ok(()) }),
        fast().concurrency(2).hooks(Recorder(outcomes.clone())),
    )
    .await
    .unwrap();
    until("both handlers entered", || async {
        gated.entered.load(SeqCst) == 2
    })
    .await;
    let locker = PgClient::connect(&url).await.unwrap();
    let tx = locker.transaction().await.unwrap();
    tx.execute("LOCK TABLE r3_h1.events IN ACCESS EXCLUSIVE MODE", &[])
        .await
        .unwrap();
    gated.gate.add_permits(1);
    until("a returned", || async { gated.returned.load(SeqCst) == 1 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    gated.gate.add_permits(1);
    until("b returned", || async { gated.returned.load(SeqCst) == 2 }).await;
    // (Orchestration only: lets B's completion reach the coordinator.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    events
        .publish(&tx, NewEvent::new("free", &json!("c")).unwrap())
        .await
        .unwrap();
    events
        .publish(&tx, NewEvent::new("boom", &json!("d")).unwrap().priority(5))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    until("a and b have outcomes", || async {
        let outcomes = outcomes.lock().unwrap();
        outcomes.contains_key(&a) && outcomes.contains_key(&b)
    })
    .await;
    let left = count(
        &client,
        &format!("SELECT count(*) FROM r3_h1.events WHERE id IN ({a}, {b})"),
    )
    .await;
    let stats = workers.stats();
    let reported: Vec<_> = {
        let outcomes = outcomes.lock().unwrap();
        vec![outcomes[&a].clone(), outcomes[&b].clone()]
    };
    workers.shutdown().await.unwrap();
    assert_eq!(left, 0);
    assert!(
        reported
            .iter()
            .all(|kinds| matches!(kinds.as_slice(), [OutcomeKind::Completed])),
        "{reported:?}"
    );
    assert_eq!(stats.lease_lost, 0);
    assert!(stats.database_errors >= 1, "the combined claim failed");
}

// Holds: a busy pool shut down mid-burst writes every completion of a
// handler that returned before `shutdown()` returns: no handled event is
// left in the queue or released, each has exactly one outcome, and the
// counters balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn holds_shutdown_of_a_busy_pool_writes_every_pending_completion_first() {
    let (_url, client, events) = setup_schema("r3_h2").await;
    let handled: Arc<Mutex<HashMap<i64, u32>>> = Arc::default();
    let router = {
        let handled = handled.clone();
        Router::new().on("k", move |event| {
            let handled = handled.clone();
            async move {
                tokio::task::yield_now().await;
                *handled.lock().unwrap().entry(event.id).or_default() += 1;
                Ok(())
            }
        })
    };
    let outcomes: Outcomes = Arc::default();
    let workers = EventWorkers::start(
        client.clone(),
        events.clone(),
        router,
        fast()
            .concurrency(4)
            .max_batch(100)
            .hooks(Recorder(outcomes.clone())),
    )
    .await
    .unwrap();
    events
        .publish_batch(
            &client,
            (0..3_000)
                .map(|i| NewEvent::new("k", &json!(i)).unwrap())
                .collect(),
        )
        .await
        .unwrap();
    until("a few hundred handled", || async {
        handled.lock().unwrap().len() >= 300
    })
    .await;
    let report = within("shutdown", workers.shutdown()).await.unwrap();
    let handled = handled.lock().unwrap().clone();
    let outcomes = outcomes.lock().unwrap().clone();
    assert!(report.drained);
    assert_eq!(report.released, 0);
    assert!(handled.values().all(|&n| n == 1));
    // Every handled event has exactly one outcome, Completed, and is gone.
    assert_eq!(outcomes.len(), handled.len());
    assert!(outcomes
        .values()
        .all(|kinds| matches!(kinds.as_slice(), [OutcomeKind::Completed])));
    let queued = count(&client, "SELECT count(*) FROM r3_h2.events").await;
    assert_eq!(queued as usize, 3_000 - handled.len());
    let leased = count(
        &client,
        "SELECT count(*) FROM r3_h2.events WHERE lease_token IS NOT NULL",
    )
    .await;
    assert_eq!(leased, 0);
}

// Finding 2: the pool decides whether its sweeps (claims from the head of
// the due index) are slow (dead index entries under a held snapshot) by
// timing the claim statement; over 10 ms it switches to claiming from its
// cursor, and an event that sorts before the cursor (a more urgent
// priority) then waits for the next sweep, up to a second, while the
// backlog behind the cursor flows. A claim that carries completions is
// timed too, so a completion that waits (here for a row lock another
// session holds for a moment, as a renewal or a rescue attempt does) makes
// a healthy index look slow and puts an urgent event behind hundreds of
// low-priority ones. Before the change completions never slowed a claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn finding2_a_slow_completion_riding_on_a_sweep_does_not_send_urgent_events_behind_the_backlog(
) {
    use std::sync::atomic::Ordering::SeqCst;
    let (url, client, events) = setup_schema("r3_f2").await;
    publish_gated_pair(&events, &client).await;
    events
        .publish_batch(
            &client,
            (0..300)
                .map(|i| NewEvent::new("n", &json!(i)).unwrap().priority(5))
                .collect(),
        )
        .await
        .unwrap();
    let order: Arc<Mutex<Vec<i64>>> = Arc::default();
    let hold = Hold::default();
    let (router, gated) = gated_router();
    let router = {
        let order_n = order.clone();
        router
            .on("n", move |event| {
                let order = order_n.clone();
                async move {
                    order.lock().unwrap().push(event.id);
                    Ok(())
                }
            })
            .on("urgent", {
                let order = order.clone();
                move |event| {
                    let order = order.clone();
                    async move {
                        order.lock().unwrap().push(event.id);
                        Ok(())
                    }
                }
            })
    };
    let workers = EventWorkers::start(
        client.clone(),
        events.clone(),
        router,
        fast().concurrency(2).hooks(hold.clone()),
    )
    .await
    .unwrap();
    // The first claim took A and B (priority 0): the pool is busy.
    until("both handlers entered", || async {
        gated.entered.load(SeqCst) == 2
    })
    .await;
    // The next claim (A's slot) stops the coordinator in its hook, after
    // the claim was timed, while B returns: B's completion then rides on
    // the claim after it, a sweep.
    hold.armed.store(true, SeqCst);
    gated.gate.add_permits(1);
    until("the coordinator held after the next claim", || async {
        hold.holding.load(SeqCst)
    })
    .await;
    gated.gate.add_permits(1);
    until("b returned", || async { gated.returned.load(SeqCst) == 2 }).await;
    // Another session holds the row of the second to return (B) for a
    // moment; its completion cannot have been written yet (the coordinator
    // is held).
    let b = gated.returned_ids.lock().unwrap()[1];
    let row_holder = PgClient::connect(&url).await.unwrap();
    let row_tx = row_holder.transaction().await.unwrap();
    row_tx
        .query_one(
            &format!("SELECT id FROM r3_f2.events WHERE id = {b} FOR UPDATE"),
            &[],
        )
        .await
        .unwrap();
    // (Orchestration only: lets B's completion reach the coordinator.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    hold.release();
    // The sweep carrying B's completion now waits for B's row.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let urgent = events
        .publish(&client, NewEvent::new("urgent", &json!({})).unwrap())
        .await
        .unwrap()
        .id()
        .unwrap();
    let mark = order.lock().unwrap().len();
    row_tx.rollback().await.unwrap();

    until("the urgent event handled", || async {
        order.lock().unwrap().contains(&urgent)
    })
    .await;
    let behind = {
        let order = order.lock().unwrap();
        order.iter().position(|&id| id == urgent).unwrap() - mark
    };
    workers.shutdown().await.unwrap();
    assert!(
        behind <= 4,
        "an urgent event published while the pool was busy waited behind {behind} \
         low-priority events (the pool took its slow completion for a slow sweep)"
    );
}

// Finding 3 (minor): `WorkerConfig::validate` accepts any concurrency of at
// least 1, but the pool now sizes a semaphore and a channel at twice it:
// a concurrency above tokio's permit limit / 2 (which started before the
// change) now panics inside `EventWorkers::start` instead of starting or
// being refused with `EventsError::Setting`.
#[tokio::test]
async fn finding3_a_concurrency_the_config_accepts_does_not_panic_the_pool_start() {
    let (_url, client, events) = setup_schema("r3_f3").await;
    let started = tokio::spawn(async move {
        let workers = EventWorkers::start(
            client,
            events,
            Router::new().on("x", |_event| async { Ok(()) }),
            // tokio's Semaphore::MAX_PERMITS (usize::MAX >> 3).
            WorkerConfig::new().concurrency(usize::MAX >> 3),
        )
        .await;
        if let Ok(workers) = workers {
            workers.shutdown().await.unwrap();
        }
    });
    let joined = within("start", started).await;
    assert!(
        !joined.as_ref().is_err_and(|e| e.is_panic()),
        "EventWorkers::start panicked for a concurrency validate() accepts: {joined:?}"
    );
}
