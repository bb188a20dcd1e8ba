//! Numbers to watch: [`QueueStats`] (what is in the tables) and
//! [`WorkerStats`] (what a worker pool has done).

use std::collections::HashMap;
use std::time::Duration;

/// What is in the event tables, from [`Events::stats`](crate::Events::stats).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Every event in the queue table (due + delayed + running + expired).
    pub depth: u64,
    /// Due now and not claimed.
    pub due: u64,
    /// Not due yet (delayed, or waiting for a retry).
    pub delayed: u64,
    /// Claimed under a live lease.
    pub running: u64,
    /// Claimed under a lease that has expired (its worker died or stalled);
    /// the next claim takes them.
    pub expired_leases: u64,
    /// How long the oldest due event has waited.
    pub oldest_due_age: Option<Duration>,
    /// Dead events.
    pub dead: u64,
    /// The same, per event type.
    pub by_type: HashMap<String, TypeQueueStats>,
}

/// [`QueueStats`] of one event type.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct TypeQueueStats {
    /// Due now and not claimed.
    pub due: u64,
    /// Not due yet.
    pub delayed: u64,
    /// Claimed under a live lease.
    pub running: u64,
    /// Claimed under an expired lease.
    pub expired_leases: u64,
    /// How long the oldest due event has waited.
    pub oldest_due_age: Option<Duration>,
    /// Dead events.
    pub dead: u64,
}

/// What one worker pool has done since it started, from
/// [`EventWorkers::stats`](crate::EventWorkers::stats).
///
/// Every claimed event is, at any instant, counted in exactly one of
/// `running`, `processed`, `retried`, `dead`, `lease_lost`, `released`
/// (`claimed == running + processed + retried + dead + lease_lost +
/// released`), except while an outcome is being written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Events claimed.
    pub claimed: u64,
    /// Handlers running now (or outcomes being written).
    pub running: u64,
    /// Completed.
    pub processed: u64,
    /// Failed and scheduled for a retry.
    pub retried: u64,
    /// Failed for the last time and moved to dead events.
    pub dead: u64,
    /// Attempts whose event had no route (also counted as retried or dead).
    pub unrouted: u64,
    /// Outcomes rejected because the lease had been lost, or that could not
    /// be written after bounded retries (the event is taken again when its
    /// lease expires).
    pub lease_lost: u64,
    /// Given back unfinished at shutdown.
    pub released: u64,
    /// Statements of the pool that failed (claims, renewals, outcomes).
    pub database_errors: u64,
    /// Counters per event type.
    pub by_type: HashMap<String, TypeWorkerStats>,
}

/// [`WorkerStats`] of one event type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TypeWorkerStats {
    /// Completed.
    pub processed: u64,
    /// Scheduled for a retry.
    pub retried: u64,
    /// Moved to dead events.
    pub dead: u64,
}
