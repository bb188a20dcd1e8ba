//! [`EventHooks`]: callbacks that observe every outcome a worker pool
//! writes, for metrics beyond [`WorkerStats`](crate::WorkerStats).
//!
//! Hooks run on the event's task after the outcome is written, with no lock
//! of the pool held; a panic in a hook is caught and logged, never spread.

use std::time::Duration;

/// What happened to one claimed event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutcomeKind {
    /// Completed (for a transactional handler: committed with its writes).
    Completed,
    /// Failed; retried after `retry_in`.
    Retried {
        /// The attempt's error.
        error: String,
        /// The backoff before the next attempt.
        retry_in: Duration,
    },
    /// Failed for the last time; moved to dead events.
    Dead {
        /// The attempt's error, kept as the dead event's last error.
        error: String,
    },
    /// The outcome was rejected: the lease had been lost.
    LeaseLost,
}

/// One outcome, as hooks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outcome {
    /// The event's id.
    pub event_id: i64,
    /// Its type.
    pub event_type: String,
    /// The attempt's number, from 1.
    pub attempt: i32,
    /// Whether the event had no route.
    pub unrouted: bool,
    /// From the claim to the written outcome.
    pub duration: Duration,
    /// What happened.
    pub kind: OutcomeKind,
}

/// One claim statement of a worker pool, as hooks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Claim {
    /// How many events the pool asked for (its free slots, at most
    /// `max_batch`).
    pub requested: usize,
    /// How many it got.
    pub claimed: usize,
    /// The statement's round trip (in a busy pool it also writes the
    /// completions that were waiting, in the same transaction).
    pub duration: Duration,
}

/// Observes a worker pool. Every method has an empty default.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use pgorm_events::{EventHooks, Outcome, OutcomeKind, WorkerConfig};
///
/// #[derive(Default)]
/// struct DeadCounter(AtomicU64);
///
/// impl EventHooks for DeadCounter {
///     fn on_outcome(&self, outcome: &Outcome) {
///         if matches!(outcome.kind, OutcomeKind::Dead { .. }) {
///             self.0.fetch_add(1, Ordering::Relaxed);
///         }
///     }
/// }
///
/// let config = WorkerConfig::new().hooks(DeadCounter::default());
/// # let _ = config;
/// ```
pub trait EventHooks: Send + Sync + 'static {
    /// After an outcome of a claimed event was written (or rejected).
    fn on_outcome(&self, outcome: &Outcome) {
        let _ = outcome;
    }

    /// After each successful claim statement, on the pool's coordinator
    /// task (keep it short: the next claim waits for it).
    fn on_claim(&self, claim: &Claim) {
        let _ = claim;
    }
}
