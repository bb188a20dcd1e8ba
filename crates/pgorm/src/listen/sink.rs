//! The seam between the connection driver and a front end's queues: the
//! driver reads notifications and hands them to a [`Sink`] (the listener's
//! queue, or the hub's router), which applies the queue policies.
//!
//! A sink never calls user code: what the hooks must hear of (drops) is
//! returned in [`Dropped`] records, and the driver calls the hooks once no
//! lock is held.

use std::collections::VecDeque;
use std::task::Waker;

use crate::error::OrmError;
use crate::listen::event::RawEvent;

/// What [`Sink::push_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Every notification of the batch was queued or dropped by policy.
    All,
    /// `BlockProducer`: the queue is full; what is left of the batch stays
    /// with the producer, which is woken when the consumer has made room.
    Blocked,
}

/// Notifications a queue policy dropped, for the `on_drop` hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dropped {
    /// The channel, for a hub subscription; `None` for a listener's queue.
    pub(crate) channel: Option<String>,
    pub(crate) count: u64,
}

/// Where the driver puts what it reads.
pub(crate) trait Sink: Send + Sync + 'static {
    /// Takes events from the front of `batch`, applying queue policies, and
    /// counts every notification it takes as received (under the same lock
    /// as the queues, so that counters balance at every instant). Returns
    /// [`Pushed::Blocked`] (leaving the rest in `batch`) when a
    /// `BlockProducer` queue is full; `producer` is woken when there is room.
    /// Drops are appended to `drops`. Consumers are woken after every lock
    /// is released.
    fn push_batch(
        &self,
        batch: &mut VecDeque<RawEvent>,
        producer: &Waker,
        drops: &mut Vec<Dropped>,
    ) -> Pushed;

    /// A block lasted longer than the block timeout: stop blocking.
    fn fall_back_to_dropping(&self);

    /// The driver has stopped; `error` says why, if it was not asked to.
    fn finish(&self, error: Option<OrmError>);
}
