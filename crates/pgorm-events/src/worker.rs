//! [`EventWorkers`]: a pool of handler slots that claims due events in
//! batches sized to its free slots, under leases it renews while handlers
//! run, woken by NOTIFY through the hub, a jittered poll, and a timer for
//! the next delayed event or expiring lease.
//!
//! # How an event moves
//!
//! 1. The coordinator task claims up to `free slots` events in one
//!    statement (`FOR UPDATE SKIP LOCKED`, expired leases included: that is
//!    the rescue of events whose worker died). A slot is free once its
//!    handler returns; while the pool is busy, the completions waiting
//!    are written by the next claim statement (one commit per round), else
//!    by a completer task. At most twice `concurrency` events are held.
//! 2. Each runs in its own task: the handler runs in a further task, so a
//!    panic or a timeout is contained and becomes a failed attempt.
//! 3. The outcome (done, retry with backoff, dead) is written fenced by the
//!    lease token; a rejected outcome is counted as `lease_lost`.
//! 4. A heartbeat renews the leases of running events every third of the
//!    lease.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgorm::listen::{ListenerEvent, PgNotifyHub, Subscription};
use pgorm::PgClient;
use tokio::sync::{mpsc, oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinHandle};

use crate::backoff::{jittered, retry_delay};
use crate::cached::Cached;
use crate::config::WorkerConfig;
use crate::error::{describe, EventsError, EventsResult, HandlerError};
use crate::event::ClaimedEvent;
use crate::events::ClaimCursor;
use crate::events::Events;
use crate::hooks::{Claim, Outcome, OutcomeKind};
use crate::router::{Handler, Router};
use crate::stats::{TypeWorkerStats, WorkerStats};

/// How many times an outcome write is tried before the pool leaves the
/// event to be reclaimed when its lease expires.
const OUTCOME_WRITE_ATTEMPTS: u32 = 6;

/// A running worker pool. Stop it with [`shutdown`](Self::shutdown);
/// dropped without it, every task of the pool is aborted at once and its
/// events are taken again when their leases expire.
///
/// ```
/// use std::time::Duration;
/// use pgorm::PgClient;
/// use pgorm_events::{EventWorkers, Events, EventsConfig, NewEvent, Router, WorkerConfig};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let url = pgorm_testkit::TestServer::shared().create_database().await?;
/// let client = PgClient::connect(&url).await?;
/// let events = Events::new(EventsConfig::new())?;
/// events.migrate(&client).await?;
///
/// let (done_tx, mut done) = tokio::sync::mpsc::channel(1);
/// let router = Router::new().on("greeting", move |event| {
///     let done_tx = done_tx.clone();
///     async move {
///         done_tx.send(event.payload["name"].to_string()).await?;
///         Ok(())
///     }
/// });
/// let workers = EventWorkers::start(client.clone(), events.clone(), router, WorkerConfig::new()).await?;
///
/// events.publish(&client, NewEvent::new("greeting", &serde_json::json!({"name": "ada"}))?).await?;
/// assert_eq!(done.recv().await.as_deref(), Some("\"ada\""));
///
/// let report = workers.shutdown().await?;
/// assert_eq!(report.released, 0);
/// # Ok(()) }
/// ```
pub struct EventWorkers {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    coordinator: Option<JoinHandle<()>>,
    /// Told by the coordinator once it has seen the stop and will claim no
    /// more (it goes on writing completions until the pool is done).
    claiming_stopped: Option<oneshot::Receiver<()>>,
    background: Vec<JoinHandle<()>>,
    /// Kept so the wake-up subscription lives as long as the pool.
    hub: PgNotifyHub,
    /// Whether the pool opened the hub itself (and closes it at shutdown).
    owns_hub: bool,
}

impl std::fmt::Debug for EventWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventWorkers")
            .field("schema", &self.shared.events.config().schema_name())
            .field("concurrency", &self.shared.config.concurrency)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// What a graceful shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Whether every running handler finished within the shutdown timeout
    /// (true when none was running, even if a claim was abandoned).
    pub drained: bool,
    /// How many unfinished events were given back for others to take.
    pub released: u64,
}

struct InFlight {
    token: i64,
    abort: AbortHandle,
}

struct Shared {
    client: PgClient,
    events: Events,
    router: Router,
    config: WorkerConfig,
    wake: Notify,
    /// Set by a wake-up from the hub: the claim after it is followed by one
    /// more shortly after, for events of transactions that committed
    /// alongside the notifier and skipped their own NOTIFY (debounce).
    notified: AtomicBool,
    /// Handler slots: one per running handler, freed when it returns.
    slots: Arc<Semaphore>,
    /// Held events (claimed, outcome not yet written): twice the slots, so
    /// the next claim can run while the last batch's outcomes are written.
    unsettled: Arc<Semaphore>,
    in_flight: Mutex<HashMap<i64, InFlight>>,
    counters: Counters,
    completions: mpsc::Sender<Completion>,
}

/// A completion for the coordinator, which writes all that are waiting in
/// one statement (with its next claim, when a slot is free). The reply: `Some(true)` accepted, `Some(false)` lease
/// lost, `None` the statement failed (the sender then writes it alone).
struct Completion {
    lease: (i64, i64),
    reply: oneshot::Sender<Option<bool>>,
}

#[derive(Default)]
struct Counters {
    claimed: AtomicU64,
    running: AtomicU64,
    processed: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    unrouted: AtomicU64,
    lease_lost: AtomicU64,
    released: AtomicU64,
    database_errors: AtomicU64,
    by_type: Mutex<HashMap<String, TypeWorkerStats>>,
}

impl Counters {
    fn per_type(&self, event_type: &str, update: impl FnOnce(&mut TypeWorkerStats)) {
        let mut by_type = self.by_type.lock().unwrap_or_else(|e| e.into_inner());
        update(by_type.entry(event_type.to_owned()).or_default());
    }
}

impl EventWorkers {
    /// Starts a pool: it subscribes to the wake-up channel on a hub of its
    /// own (one dedicated connection) and starts claiming at once. The
    /// tables must exist ([`Events::migrate`]).
    ///
    /// # Errors
    /// [`EventsError::Setting`] for an invalid `config` or `router`; the
    /// hub's connection error.
    pub async fn start(
        client: PgClient,
        events: Events,
        router: Router,
        config: WorkerConfig,
    ) -> EventsResult<EventWorkers> {
        config.validate()?;
        router.validate()?;
        let hub = client.hub().await?;
        let mut workers = Self::start_with_hub(client, events, router, config, hub).await?;
        // The pool opened this hub: it closes it at shutdown.
        workers.owns_hub = true;
        Ok(workers)
    }

    /// As [`start`](Self::start), with wake-ups from `hub` (shared with the
    /// rest of the application, or connected another way). The pool only
    /// subscribes; it never closes a hub it was given.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub async fn start_with_hub(
        client: PgClient,
        events: Events,
        router: Router,
        config: WorkerConfig,
        hub: PgNotifyHub,
    ) -> EventsResult<EventWorkers> {
        config.validate()?;
        router.validate()?;
        let subscription = hub.subscribe(&events.config().wakeup_channel()).await?;
        let (completions, completion_queue) = mpsc::channel(config.concurrency.saturating_mul(2));
        let shared = Arc::new(Shared {
            completions,
            client,
            events,
            router,
            slots: Arc::new(Semaphore::new(config.concurrency)),
            unsettled: Arc::new(Semaphore::new(config.concurrency.saturating_mul(2))),
            config,
            wake: Notify::new(),
            notified: AtomicBool::new(false),
            in_flight: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let (claiming_stopped_tx, claiming_stopped) = oneshot::channel();
        let (completer, completer_queue) = mpsc::channel(4);
        let coordinator = tokio::spawn(coordinate(
            shared.clone(),
            stopped,
            completion_queue,
            completer,
            claiming_stopped_tx,
        ));
        let background = vec![
            tokio::spawn(complete_forwarded(shared.clone(), completer_queue)),
            tokio::spawn(listen_for_wakeups(shared.clone(), subscription)),
            tokio::spawn(heartbeat(shared.clone())),
        ];
        Ok(EventWorkers {
            shared,
            stop,
            coordinator: Some(coordinator),
            claiming_stopped: Some(claiming_stopped),
            background,
            hub,
            owns_hub: false,
        })
    }

    /// The pool's counters now.
    pub fn stats(&self) -> WorkerStats {
        let c = &self.shared.counters;
        WorkerStats {
            claimed: c.claimed.load(Ordering::Relaxed),
            running: c.running.load(Ordering::Relaxed),
            processed: c.processed.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            dead: c.dead.load(Ordering::Relaxed),
            unrouted: c.unrouted.load(Ordering::Relaxed),
            lease_lost: c.lease_lost.load(Ordering::Relaxed),
            released: c.released.load(Ordering::Relaxed),
            database_errors: c.database_errors.load(Ordering::Relaxed),
            by_type: c.by_type.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    /// Wakes the pool to look for due events now (as a NOTIFY would).
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// Stops gracefully: no more claims; running handlers get up to the
    /// shutdown timeout to finish; what is still running then is cancelled
    /// and released at once (its attempt not counted) so another pool can
    /// take it.
    ///
    /// The shutdown timeout bounds the wait for the claim in progress to
    /// end and the handlers to finish (together); the release gets up to a
    /// lease. A claim that does not end in time (its connection cut off
    /// without an error, say) is abandoned; it may still run on the server
    /// when the connection comes back, and what it leases then (events
    /// published meanwhile included) is taken again when those leases
    /// expire, the attempt counted.
    ///
    /// # Errors
    /// The release statement's error, or [`EventsError::TimedOut`] when it
    /// did not finish within a lease (the unreleased events are then taken
    /// again when their leases expire).
    pub async fn shutdown(mut self) -> EventsResult<ShutdownReport> {
        let _ = self.stop.send(true);
        let timeout = self.shared.config.shutdown_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let claiming_stopped = match self.claiming_stopped.take() {
            // An error means the coordinator is gone: it claims no more.
            Some(claiming_stopped) => tokio::time::timeout_at(deadline, claiming_stopped)
                .await
                .is_ok(),
            None => true,
        };
        if !claiming_stopped {
            tracing::warn!(
                schema = %self.shared.events.config().schema_name(),
                "a claim did not end within the shutdown timeout; it is abandoned"
            );
        }
        // Past the deadline (a claim that did not end) this only looks once.
        let drained = tokio::time::timeout_at(deadline, async {
            while !self.in_flight_is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_ok();
        // The coordinator ends before the leftovers are taken: one that is
        // running on another thread at this moment (handling a claim's
        // rows) would otherwise start events after they were collected.
        // It ends at its next await; only a hook that blocks holds it, and
        // no longer than a lease matters.
        let lease = self.shared.config.lease;
        if let Some(coordinator) = self.coordinator.take() {
            coordinator.abort();
            let _ = tokio::time::timeout(lease, coordinator).await;
        }
        let leftovers: Vec<(i64, i64)> = {
            let mut in_flight = self
                .shared
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            in_flight
                .drain()
                .map(|(id, entry)| {
                    entry.abort.abort();
                    (id, entry.token)
                })
                .collect()
        };
        for task in self.background.drain(..) {
            task.abort();
        }
        let client = Cached(&self.shared.client);
        let release = self.shared.events.release(&client, &leftovers);
        // After a lease the events are taken again anyway.
        let released =
            tokio::time::timeout(lease, release)
                .await
                .map_err(|_| EventsError::TimedOut {
                    operation: "releasing the unfinished events",
                    after: lease,
                })??;
        self.shared
            .counters
            .released
            .fetch_add(released, Ordering::Relaxed);
        if self.owns_hub {
            if let Err(error) = self.hub.close().await {
                tracing::debug!(%error, "closing the pool's wake-up hub failed");
            }
        }
        Ok(ShutdownReport { drained, released })
    }

    fn in_flight_is_empty(&self) -> bool {
        self.shared
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }
}

impl Drop for EventWorkers {
    fn drop(&mut self) {
        if let Some(coordinator) = self.coordinator.take() {
            coordinator.abort();
        }
        for task in self.background.drain(..) {
            task.abort();
        }
        let in_flight = self
            .shared
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for entry in in_flight.values() {
            entry.abort.abort();
        }
    }
}

/// A sweep (a claim from the head of the due index, rescuing expired
/// leases too) slower than this means the index holds many dead entries
/// (a long-held snapshot elsewhere keeps them): claims then start at the
/// cursor, with a sweep every [`SWEEP_EVERY`].
const SLOW_SWEEP: Duration = Duration::from_millis(10);
/// How often a pool whose sweeps are slow still sweeps: for events that
/// committed late behind the cursor, more urgent priorities, and expired
/// leases.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// A sweep that takes longer than a tenth of [`SWEEP_EVERY`] (a snapshot
/// held for minutes leaves hundreds of thousands of dead entries to walk)
/// comes again only after this many times its own duration, so that sweeps
/// never take more than about a tenth of the coordinator's time.
const SWEEP_SHARE: u32 = 10;
/// How far behind the last claimed event's due time the cursor stays, so
/// that events of transactions that commit a little late are claimed by
/// the next claim, not the next sweep.
const CURSOR_MARGIN: Duration = Duration::from_millis(250);

/// Where a pool's claims start. While sweeps are fast every claim is one
/// (the exact, simple claim). Once one is slow, claims start just behind the
/// last event claimed (the index entries before it are of events already
/// taken), and a sweep runs every [`SWEEP_EVERY`] (or [`SWEEP_SHARE`] times
/// as long as the last one took, if that is longer), which also measures
/// again whether sweeps are still slow.
#[derive(Default)]
struct ClaimPlan {
    cursor: Option<ClaimCursor>,
    last_sweep: Option<Instant>,
    /// How long the last sweep that decided took.
    last_took: Duration,
    sweeps_slow: bool,
    /// A sweep that carried completions was slow: the next claim is a sweep
    /// without them, whose time decides (a completion waiting for a row
    /// lock says nothing about the index).
    slow_with_completions: bool,
}

impl ClaimPlan {
    /// While claims start at the cursor, the time left to the next sweep
    /// (zero once it is due), so that an event behind the cursor waits at
    /// most that long even if the last claim from the cursor ended after
    /// the sweep was due.
    fn until_sweep(&self) -> Option<Duration> {
        if !self.sweeps_slow || self.cursor.is_none() {
            return None;
        }
        let since = self.last_sweep?.elapsed();
        Some(self.sweep_interval().saturating_sub(since))
    }

    /// How long after a sweep the next one runs while sweeps are slow.
    fn sweep_interval(&self) -> Duration {
        SWEEP_EVERY.max(self.last_took.saturating_mul(SWEEP_SHARE))
    }

    /// Whether the next claim is a sweep that must carry no completions.
    fn must_time_sweep(&self) -> bool {
        self.slow_with_completions
    }

    /// The cursor the next claim starts at, or `None` for a sweep.
    fn cursor(&self) -> Option<ClaimCursor> {
        let recent = self
            .last_sweep
            .is_some_and(|at| at.elapsed() < self.sweep_interval());
        if self.sweeps_slow && recent && !self.slow_with_completions {
            self.cursor
        } else {
            None
        }
    }

    /// Records a claim: a sweep (`swept`) that took `took`, carrying
    /// completions (`carried`) or not.
    fn record(&mut self, swept: bool, carried: bool, took: Duration, claimed: &[ClaimedEvent]) {
        if swept {
            self.last_sweep = Some(Instant::now());
            let slow = took > SLOW_SWEEP;
            // Only a sweep without completions may say that sweeps are slow
            // (and how far apart they must be).
            self.slow_with_completions = slow && carried;
            if !self.slow_with_completions {
                self.sweeps_slow = slow;
                self.last_took = took;
            }
            // A sweep starts at the head: whatever it claimed is where the
            // backlog is now, even if that sorts before the old cursor (a
            // more urgent priority). Keeping the old cursor would leave
            // such events to sweeps alone, max_batch per sweep.
            self.cursor = None;
        }
        let newest = claimed
            .iter()
            .map(|claimed| ClaimCursor {
                priority: claimed.event.priority,
                run_at: claimed
                    .event
                    .run_at
                    .checked_sub(CURSOR_MARGIN)
                    .unwrap_or(claimed.event.run_at),
                id: i64::MIN,
            })
            .max();
        if newest > self.cursor {
            self.cursor = newest;
        }
    }
}

/// How long after a wake-up's claim the follow-up claim runs.
const FOLLOW_UP: Duration = Duration::from_millis(5);

/// Claims while there is work and free slots. While the pool is busy (its
/// last claim was full) the completions that are waiting ride on the next
/// claim statement; otherwise they go to the completer task, so that an
/// idle pool's claim after a wake-up never waits for a completion's commit.
/// With no slot free it writes them alone. Otherwise it waits for a
/// wake-up, a freed slot, a completion, the poll, or the next due time.
/// Once stopped it claims no more, tells `claiming_stopped`, and goes on
/// writing completions until the pool aborts it.
async fn coordinate(
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
    mut completions: mpsc::Receiver<Completion>,
    completer: mpsc::Sender<Vec<Completion>>,
    claiming_stopped: oneshot::Sender<()>,
) {
    let mut failures: u32 = 0;
    let mut plan = ClaimPlan::default();
    let mut busy = false;
    let mut claiming_stopped = Some(claiming_stopped);
    let max_batch = shared.config.max_batch;
    let mut pending: Vec<Completion> = Vec::with_capacity(max_batch);
    loop {
        let stopping = *stopped.borrow();
        if stopping {
            if let Some(claiming_stopped) = claiming_stopped.take() {
                let _ = claiming_stopped.send(());
            }
        }
        while pending.len() < max_batch {
            match completions.try_recv() {
                Ok(completion) => pending.push(completion),
                Err(_) => break,
            }
        }
        let free = if stopping {
            0
        } else {
            shared
                .slots
                .available_permits()
                .min(shared.unsettled.available_permits())
                .min(max_batch)
        };
        let mut next_due = None;
        if free == 0 && !pending.is_empty() {
            write_completions(&shared, &mut pending).await;
            continue;
        }
        // A sweep that has to be timed carries no completions (their row
        // locks could make it look slow).
        if (!busy || plan.must_time_sweep()) && !pending.is_empty() {
            let batch = std::mem::replace(&mut pending, Vec::with_capacity(max_batch));
            if let Err(returned) = completer.send(batch).await {
                // The completer is gone (the pool is being dropped): the
                // completions are answered as failed and written alone.
                pending = returned.0;
                answer_completions(&mut pending, None);
            }
        }
        if free > 0 {
            let claim_started = Instant::now();
            let cursor = plan.cursor();
            let carried = !pending.is_empty();
            let client = Cached(&shared.client);
            let lease = shared.config.lease;
            let result = if pending.is_empty() {
                match cursor {
                    Some(cursor) => shared.events.claim_from(&client, free, lease, cursor).await,
                    None => shared.events.claim(&client, free, lease).await,
                }
            } else {
                let leases: Vec<(i64, i64)> = pending.iter().map(|c| c.lease).collect();
                let result = shared
                    .events
                    .claim_completing(&client, &leases, free, lease, cursor)
                    .await;
                match result {
                    Ok((accepted, claimed)) => {
                        answer_completions(&mut pending, Some(&accepted));
                        claimed
                    }
                    Err(error) => Err(error),
                }
            };
            match result {
                Ok(claimed) => {
                    failures = 0;
                    let took = claim_started.elapsed();
                    plan.record(cursor.is_none(), carried, took, &claimed);
                    observe_claim(&shared, free, claimed.len(), took);
                    let full = claimed.len() == free;
                    busy = full;
                    for event in claimed {
                        start_event(&shared, event);
                    }
                    if full {
                        continue;
                    }
                    let due = match cursor {
                        Some(cursor) => shared.events.next_due_from(&client, cursor).await,
                        None => shared.events.next_due(&client).await,
                    };
                    match due {
                        Ok(due) => next_due = due,
                        Err(error) => database_error(&shared, "next due", &error),
                    }
                    if let Some(wait) = plan.until_sweep() {
                        next_due = Some(next_due.map_or(wait, |due| due.min(wait)));
                    }
                    if shared.notified.swap(false, Ordering::Relaxed) {
                        next_due = Some(next_due.map_or(FOLLOW_UP, |due| due.min(FOLLOW_UP)));
                    }
                }
                Err(error) => {
                    busy = false;
                    database_error(&shared, "claim", &error);
                    // The completions carried are written alone by their
                    // tasks, with retries.
                    answer_completions(&mut pending, None);
                    failures = failures.saturating_add(1);
                    let pause = Duration::from_millis(50)
                        .saturating_mul(1 << failures.min(6))
                        .min(shared.config.poll_interval);
                    tokio::select! {
                        _ = tokio::time::sleep(jittered(pause)) => {}
                        _ = stopped.changed() => {}
                    }
                    continue;
                }
            }
        }
        // A next due time just in the past (clock granularity) is retried
        // after a millisecond, never in a busy loop.
        let next_due = next_due.map(|due| due + Duration::from_millis(1));
        tokio::select! {
            _ = stopped.changed(), if !stopping => {}
            _ = shared.wake.notified() => {}
            _ = completions.recv_many(&mut pending, max_batch) => {}
            _ = tokio::time::sleep(jittered(shared.config.poll_interval)), if !stopping => {}
            _ = tokio::time::sleep(next_due.unwrap_or_default()), if next_due.is_some() && !stopping => {}
        }
    }
}

/// Writes the completions the coordinator hands over while the pool is not
/// busy, one statement per batch.
async fn complete_forwarded(shared: Arc<Shared>, mut batches: mpsc::Receiver<Vec<Completion>>) {
    while let Some(mut batch) = batches.recv().await {
        write_completions(&shared, &mut batch).await;
    }
}

/// Writes the waiting completions in one statement and answers them.
async fn write_completions(shared: &Shared, pending: &mut Vec<Completion>) {
    let leases: Vec<(i64, i64)> = pending.iter().map(|c| c.lease).collect();
    match shared
        .events
        .complete_leases(&Cached(&shared.client), &leases)
        .await
    {
        Ok(accepted) => answer_completions(pending, Some(&accepted)),
        Err(error) => {
            database_error(shared, "complete", &error);
            answer_completions(pending, None);
        }
    }
}

/// Answers every waiting completion: accepted or lease lost, or `None`
/// when the statement failed (the sender then writes it alone).
fn answer_completions(pending: &mut Vec<Completion>, accepted: Option<&[(i64, i64)]>) {
    for completion in pending.drain(..) {
        let verdict = accepted.map(|accepted| accepted.contains(&completion.lease));
        let _ = completion.reply.send(verdict);
    }
}

/// Traces a claim and tells the hooks (contained: a panicking hook is
/// logged, never spread).
fn observe_claim(shared: &Shared, requested: usize, claimed: usize, duration: Duration) {
    tracing::debug!(
        schema = %shared.events.config().schema_name(),
        requested,
        claimed,
        micros = duration.as_micros() as u64,
        "pgorm-events claim"
    );
    if let Some(hooks) = &shared.config.hooks.0 {
        let claim = Claim {
            requested,
            claimed,
            duration,
        };
        let call = std::panic::AssertUnwindSafe(|| hooks.on_claim(&claim));
        if std::panic::catch_unwind(call).is_err() {
            tracing::error!("an EventHooks::on_claim call panicked");
        }
    }
}

fn database_error(shared: &Shared, what: &'static str, error: &EventsError) {
    shared
        .counters
        .database_errors
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        schema = %shared.events.config().schema_name(),
        operation = what,
        error = %error,
        "pgorm-events statement failed"
    );
}

fn start_event(shared: &Arc<Shared>, claimed: ClaimedEvent) {
    let slot = shared.slots.clone().try_acquire_owned();
    let held = shared.unsettled.clone().try_acquire_owned();
    let (Ok(slot), Ok(held)) = (slot, held) else {
        // Cannot happen: only this task takes slots, and it claimed no more
        // than were free. The lease expires and the event is taken again.
        tracing::error!(id = claimed.event.id, "no free slot for a claimed event");
        return;
    };
    shared.counters.claimed.fetch_add(1, Ordering::Relaxed);
    shared.counters.running.fetch_add(1, Ordering::Relaxed);
    let id = claimed.event.id;
    let token = claimed.lease_token;
    // Held while spawning, so the task cannot remove its entry before it
    // is inserted.
    let mut in_flight = shared.in_flight.lock().unwrap_or_else(|e| e.into_inner());
    let task = tokio::spawn(run_event(shared.clone(), claimed, slot, held));
    in_flight.insert(
        id,
        InFlight {
            token,
            abort: task.abort_handle(),
        },
    );
}

/// Ends an event's task, however it ends: frees its hold, drops the
/// in-flight entry (if it is still this lease's), wakes the coordinator.
struct EventTaskGuard {
    shared: Arc<Shared>,
    id: i64,
    token: i64,
    _held: OwnedSemaphorePermit,
}

impl Drop for EventTaskGuard {
    fn drop(&mut self) {
        {
            let mut in_flight = self
                .shared
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if in_flight
                .get(&self.id)
                .is_some_and(|e| e.token == self.token)
            {
                in_flight.remove(&self.id);
            }
        }
        self.shared.counters.running.fetch_sub(1, Ordering::Relaxed);
        self.shared.wake.notify_one();
    }
}

enum Attempt {
    /// The handler succeeded; the completion is still to be written.
    Succeeded,
    /// The handler succeeded and its transaction committed the completion.
    Committed,
    Failed {
        error: String,
        unrouted: bool,
    },
    LeaseLost,
}

async fn run_event(
    shared: Arc<Shared>,
    claimed: ClaimedEvent,
    slot: OwnedSemaphorePermit,
    held: OwnedSemaphorePermit,
) {
    let _guard = EventTaskGuard {
        shared: shared.clone(),
        id: claimed.event.id,
        token: claimed.lease_token,
        _held: held,
    };
    let started = Instant::now();
    let attempt = attempt(&shared, &claimed).await;
    // The handler is done: its slot is free for the next claim while the
    // outcome is written (the hold stays until then).
    drop(slot);
    shared.wake.notify_one();
    settle(&shared, &claimed, attempt, started).await;
}

async fn attempt(shared: &Shared, claimed: &ClaimedEvent) -> Attempt {
    let event = &claimed.event;
    if event.attempt > event.max_attempts {
        // Rescued after its last attempt's worker stopped without an outcome.
        return Attempt::Failed {
            error: format!(
                "the worker of attempt {} stopped without an outcome (its lease expired)",
                event.max_attempts
            ),
            unrouted: false,
        };
    }
    let timeout = shared.config.handler_timeout;
    match shared.router.resolve(&event.event_type).cloned() {
        None => Attempt::Failed {
            error: format!("no route for event type {:?}", event.event_type),
            unrouted: true,
        },
        Some(Handler::Plain(handler)) => match contained(handler(event.clone()), timeout).await {
            Ok(()) => Attempt::Succeeded,
            Err(error) => Attempt::Failed {
                error,
                unrouted: false,
            },
        },
        Some(Handler::Transactional(handler)) => {
            let tx = match shared.client.transaction().await {
                Ok(tx) => tx,
                Err(error) => {
                    return Attempt::Failed {
                        error: format!("could not begin the handler's transaction: {error}"),
                        unrouted: false,
                    }
                }
            };
            let tx = match contained(handler(event.clone(), tx), timeout).await {
                Ok(tx) => tx,
                Err(error) => {
                    return Attempt::Failed {
                        error,
                        unrouted: false,
                    }
                }
            };
            match shared.events.complete(&tx, claimed).await {
                Ok(()) => {}
                Err(EventsError::LeaseLost { .. }) => return Attempt::LeaseLost,
                Err(error) => {
                    return Attempt::Failed {
                        error: format!("completing in the handler's transaction failed: {error}"),
                        unrouted: false,
                    }
                }
            }
            match tx.commit().await {
                Ok(()) => Attempt::Committed,
                Err(error) => Attempt::Failed {
                    error: format!("committing the handler's transaction failed: {error}"),
                    unrouted: false,
                },
            }
        }
    }
}

/// Runs a handler's future in a task of its own, so that a panic is caught
/// and a timeout cancels it; the error becomes text for `last_error`.
async fn contained<T: Send + 'static>(
    future: std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, HandlerError>> + Send>>,
    timeout: Duration,
) -> Result<T, String> {
    struct AbortOnDrop(AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let task = tokio::spawn(future);
    let _abort = AbortOnDrop(task.abort_handle());
    match tokio::time::timeout(timeout, task).await {
        Err(_) => Err(format!("handler timed out after {timeout:?}")),
        Ok(Err(join)) if join.is_panic() => {
            let panic = join.into_panic();
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string panic payload".to_owned());
            Err(format!("handler panicked: {message}"))
        }
        Ok(Err(_)) => Err("handler task was cancelled".to_owned()),
        Ok(Ok(Err(error))) => Err(describe(&*error)),
        Ok(Ok(Ok(value))) => Ok(value),
    }
}

/// Writes the outcome, counts it, and tells the hooks.
async fn settle(shared: &Shared, claimed: &ClaimedEvent, attempt: Attempt, started: Instant) {
    let event = &claimed.event;
    let counters = &shared.counters;
    let unrouted = matches!(attempt, Attempt::Failed { unrouted: true, .. });
    if unrouted {
        counters.unrouted.fetch_add(1, Ordering::Relaxed);
    }
    let Some(kind) = write_outcome(shared, claimed, attempt).await else {
        // Not written: the lease expires and the event is claimed again.
        counters.lease_lost.fetch_add(1, Ordering::Relaxed);
        return;
    };
    match &kind {
        OutcomeKind::Completed => {
            counters.processed.fetch_add(1, Ordering::Relaxed);
            counters.per_type(&event.event_type, |t| t.processed += 1);
        }
        OutcomeKind::Retried { retry_in, .. } => {
            counters.retried.fetch_add(1, Ordering::Relaxed);
            counters.per_type(&event.event_type, |t| t.retried += 1);
            tracing::debug!(
                id = event.id,
                attempt = event.attempt,
                ?retry_in,
                "event attempt failed; retry scheduled"
            );
        }
        OutcomeKind::Dead { .. } => {
            counters.dead.fetch_add(1, Ordering::Relaxed);
            counters.per_type(&event.event_type, |t| t.dead += 1);
            tracing::warn!(id = event.id, event_type = %event.event_type, attempts = event.attempt, "event is dead");
        }
        OutcomeKind::LeaseLost => {
            counters.lease_lost.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                id = event.id,
                "lease lost before the outcome was written; the outcome was rejected"
            );
        }
    }
    if let Some(hooks) = &shared.config.hooks.0 {
        let outcome = Outcome {
            event_id: event.id,
            event_type: event.event_type.clone(),
            attempt: event.attempt,
            unrouted,
            duration: started.elapsed(),
            kind,
        };
        let call = std::panic::AssertUnwindSafe(|| hooks.on_outcome(&outcome));
        if std::panic::catch_unwind(call).is_err() {
            tracing::error!(id = event.id, "an EventHooks::on_outcome call panicked");
        }
    }
}

/// Writes the outcome fenced by the lease, retrying on database errors a
/// bounded number of times; `None` when it could not be written.
async fn write_outcome(
    shared: &Shared,
    claimed: &ClaimedEvent,
    attempt: Attempt,
) -> Option<OutcomeKind> {
    let event = &claimed.event;
    let error = match attempt {
        Attempt::Committed => return Some(OutcomeKind::Completed),
        Attempt::LeaseLost => return Some(OutcomeKind::LeaseLost),
        Attempt::Succeeded => None,
        Attempt::Failed { error, .. } => Some(error),
    };
    let retry_in = retry_delay(
        shared.config.backoff_base,
        shared.config.backoff_max,
        event.attempt,
    );
    if error.is_none() {
        match complete_batched(shared, claimed).await {
            Some(true) => return Some(OutcomeKind::Completed),
            Some(false) => return Some(OutcomeKind::LeaseLost),
            None => {} // written alone below, with retries
        }
    }
    for write in 0..OUTCOME_WRITE_ATTEMPTS {
        let result = match &error {
            None => shared
                .events
                .complete(&Cached(&shared.client), claimed)
                .await
                .map(|()| OutcomeKind::Completed),
            Some(error) => shared
                .events
                .fail(&Cached(&shared.client), claimed, error, retry_in)
                .await
                .map(|dead| {
                    if dead {
                        OutcomeKind::Dead {
                            error: error.clone(),
                        }
                    } else {
                        OutcomeKind::Retried {
                            error: error.clone(),
                            retry_in,
                        }
                    }
                }),
        };
        match result {
            Ok(kind) => return Some(kind),
            Err(EventsError::LeaseLost { .. }) => return Some(OutcomeKind::LeaseLost),
            Err(db) => {
                database_error(shared, "outcome", &db);
                if write + 1 < OUTCOME_WRITE_ATTEMPTS {
                    tokio::time::sleep(Duration::from_millis(100) * (1 << write)).await;
                }
            }
        }
    }
    None
}

/// Hands a completion to the coordinator and waits for its verdict.
async fn complete_batched(shared: &Shared, claimed: &ClaimedEvent) -> Option<bool> {
    let (reply, verdict) = oneshot::channel();
    let completion = Completion {
        lease: (claimed.event.id, claimed.lease_token),
        reply,
    };
    shared.completions.send(completion).await.ok()?;
    verdict.await.ok().flatten()
}

/// Turns every item of the wake-up subscription into a wake-up (a
/// reconnect or a gap may hide a wake-up, so they wake too). When the hub
/// stops, polling carries on alone.
async fn listen_for_wakeups(shared: Arc<Shared>, mut subscription: Subscription) {
    while let Some(item) = subscription.next_event().await {
        if let Err(error) = &item {
            tracing::warn!(%error, "pgorm-events wake-up subscription failed; polling continues");
        }
        if matches!(item, Ok(ListenerEvent::Reconnected { .. })) {
            tracing::debug!("wake-up listener reconnected");
        }
        shared.notified.store(true, Ordering::Relaxed);
        shared.wake.notify_one();
    }
    tracing::warn!("pgorm-events wake-up subscription ended; polling continues");
}

/// Renews the leases of running events every third of the lease, and
/// prunes completed events past their retention.
async fn heartbeat(shared: Arc<Shared>) {
    let every = shared.config.lease / 3;
    let mut since_prune = Duration::ZERO;
    loop {
        tokio::time::sleep(every).await;
        let held: Vec<(i64, i64)> = shared
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, entry)| (*id, entry.token))
            .collect();
        if !held.is_empty() {
            match shared
                .events
                .renew(&Cached(&shared.client), &held, shared.config.lease)
                .await
            {
                Ok(renewed) if renewed.len() < held.len() => {
                    tracing::warn!(
                        lost = held.len() - renewed.len(),
                        "leases could not be renewed (expired and taken by another worker)"
                    );
                }
                Ok(_) => {}
                Err(error) => database_error(&shared, "renew", &error),
            }
        }
        since_prune += every;
        if since_prune >= shared.config.prune_interval
            && shared.events.config().completed_retention().is_some()
        {
            since_prune = Duration::ZERO;
            if let Err(error) = shared
                .events
                .prune_completed(&Cached(&shared.client), 1000)
                .await
            {
                database_error(&shared, "prune", &error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn claimed(n: usize) -> Vec<ClaimedEvent> {
        (0..n)
            .map(|i| ClaimedEvent {
                event: crate::event::Event {
                    id: i as i64,
                    event_type: "t".into(),
                    payload: serde_json::Value::Null,
                    attempt: 1,
                    max_attempts: 3,
                    priority: 0,
                    run_at: SystemTime::now(),
                    created_at: SystemTime::now(),
                    idempotency_key: None,
                },
                lease_token: 1,
            })
            .collect()
    }

    #[test]
    fn the_first_claim_is_a_sweep() {
        let plan = ClaimPlan::default();
        assert!(plan.cursor().is_none());
        assert!(plan.until_sweep().is_none());
    }

    #[test]
    fn a_slow_sweep_without_completions_moves_claims_to_the_cursor() {
        let mut plan = ClaimPlan::default();
        plan.record(true, false, Duration::from_millis(50), &claimed(3));
        assert!(plan.cursor().is_some());
        assert_eq!(plan.sweep_interval(), SWEEP_EVERY);
        assert!(plan.until_sweep().is_some_and(|left| left <= SWEEP_EVERY));
    }

    #[test]
    fn a_slow_sweep_that_carried_completions_is_timed_again_without_them() {
        let mut plan = ClaimPlan::default();
        plan.record(true, true, Duration::from_millis(50), &claimed(3));
        assert!(plan.must_time_sweep());
        assert!(plan.cursor().is_none());
        plan.record(true, false, Duration::from_millis(1), &claimed(3));
        assert!(!plan.must_time_sweep());
        assert!(plan.cursor().is_none(), "the index is fine");
    }

    #[test]
    fn a_due_sweep_still_has_a_timer() {
        let mut plan = ClaimPlan::default();
        plan.record(true, false, Duration::from_millis(50), &claimed(3));
        // The sweep came due while a claim from the cursor was running.
        plan.last_sweep = Some(Instant::now() - Duration::from_secs(2));
        assert!(plan.cursor().is_none(), "the next claim is the sweep");
        assert_eq!(plan.until_sweep(), Some(Duration::ZERO));
    }

    #[test]
    fn a_very_slow_sweep_spaces_out_the_next() {
        let mut plan = ClaimPlan::default();
        plan.record(true, false, Duration::from_millis(400), &claimed(1));
        assert_eq!(plan.sweep_interval(), Duration::from_secs(4));
        assert!(plan.cursor().is_some());
        assert!(plan
            .until_sweep()
            .is_some_and(|left| left > SWEEP_EVERY && left <= Duration::from_secs(4)));
    }
}
