//! What a listener hands to its consumer: notifications, in-order gap
//! markers, and the listener's state and counters.

use std::time::SystemTime;

/// One notification, as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgNotification {
    /// The process id of the server backend that sent `NOTIFY`.
    pub process_id: i32,
    /// The channel, exactly as the sender named it.
    pub channel: String,
    /// The payload (empty when none was given).
    pub payload: String,
    /// When the listener read it from the connection.
    pub received_at: SystemTime,
}

/// An item of a listener's stream of events: a notification, or a marker
/// telling the consumer exactly where in that stream something was missed.
///
/// Markers are queued in order with the notifications: every notification
/// before a marker was received before the gap, every notification after it
/// was received after.
///
/// `N` is how the notification is held: owned for a
/// [`PgListener`](crate::listen::PgListener), shared (`Arc<PgNotification>`)
/// for a hub [`Subscription`](crate::listen::Subscription), whose
/// subscribers all receive the same notification without copying it, and a
/// [`NotificationBatch`](crate::listen::NotificationBatch) of them from
/// [`Subscription::next_batch`](crate::listen::Subscription::next_batch).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenerEvent<N = PgNotification> {
    /// A notification.
    Notification(N),
    /// The connection was lost and is back, with every channel listened to
    /// again. Notifications sent while it was down are lost: resync state
    /// that notifications keep current. `generation` counts reconnects,
    /// starting at 1.
    Reconnected {
        /// How many reconnects have completed, this one included.
        generation: u64,
    },
    /// The queue was full and `dropped` notifications were discarded here
    /// (by the queue policy).
    Lagged {
        /// How many notifications are missing at this point.
        dropped: u64,
    },
}

/// Where a listener's connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenerState {
    /// Opening its first connection.
    Connecting,
    /// Connected and listening.
    Connected,
    /// The connection was lost; reconnecting.
    Reconnecting,
    /// Closed, or gave up reconnecting; nothing more will arrive.
    Closed,
}

impl ListenerState {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            ListenerState::Connecting => 0,
            ListenerState::Connected => 1,
            ListenerState::Reconnecting => 2,
            ListenerState::Closed => 3,
        }
    }

    pub(crate) fn from_u8(value: u8) -> Self {
        match value {
            0 => ListenerState::Connecting,
            1 => ListenerState::Connected,
            2 => ListenerState::Reconnecting,
            _ => ListenerState::Closed,
        }
    }
}

/// A listener's counters since it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ListenerStats {
    /// Notifications read from the connection and taken by the queue (a
    /// `BlockProducer` listener that waits for room holds back what it read
    /// beyond that until the queue takes it).
    pub received: u64,
    /// Notifications handed to the consumer.
    pub delivered: u64,
    /// Notifications discarded by the queue policy.
    pub dropped: u64,
    /// Completed reconnects.
    pub reconnects: u64,
    /// Notifications waiting now: in the queue, or taken by the consumer's
    /// batch but not yet returned by `next` (seen from a
    /// [`PgListenerHandle`](crate::listen::PgListenerHandle), those count
    /// as delivered). `received == delivered + queued + dropped` holds in
    /// every snapshot.
    pub queued: usize,
    /// Calls of the [hooks](crate::listen::ListenerHooks) that panicked
    /// (each was contained; the listener went on).
    pub hook_panics: u64,
}

pub(crate) use crate::tap::RawNotification;

/// What travels from the connection driver to the queues.
pub(crate) type RawEvent = ListenerEvent<RawNotification>;
