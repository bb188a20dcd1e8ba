//! [`ListenerBatch`], what one [`PgListener::next_batch`] hands out in
//! place, and [`NotificationRef`], one notification of it viewed without
//! copying.
//!
//! [`PgListener::next_batch`]: crate::listen::PgListener::next_batch

use std::collections::vec_deque;
use std::time::SystemTime;

use crate::listen::event::{ListenerEvent, PgNotification, RawEvent, RawNotification};

/// The events a [`PgListener`](crate::listen::PgListener) had read when the
/// consumer asked, from [`PgListener::next_batch`]: notifications and, in
/// order with them, the gap markers, handed out in place.
///
/// It is an iterator of [`ListenerEvent<NotificationRef>`]: each
/// notification is a view of what the listener already read, with `&str`
/// channel and payload; [`NotificationRef::to_notification`] makes an owned
/// [`PgNotification`] only for the ones worth keeping. The whole batch
/// counts as delivered when it is handed out (see
/// [`ListenerStats`](crate::listen::ListenerStats)); it borrows the
/// listener, which reuses the batch's memory on its next read.
///
/// [`PgListener::next_batch`]: crate::listen::PgListener::next_batch
pub struct ListenerBatch<'a> {
    events: vec_deque::Iter<'a, RawEvent>,
}

impl<'a> ListenerBatch<'a> {
    pub(crate) fn new(events: &'a std::collections::VecDeque<RawEvent>) -> Self {
        ListenerBatch {
            events: events.iter(),
        }
    }
}

impl<'a> Iterator for ListenerBatch<'a> {
    type Item = ListenerEvent<NotificationRef<'a>>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        self.events.next().map(view)
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.events.size_hint()
    }

    #[inline]
    fn fold<B, F: FnMut(B, Self::Item) -> B>(self, init: B, mut f: F) -> B {
        // VecDeque's own fold walks its two halves without a check per item.
        self.events.fold(init, |acc, event| f(acc, view(event)))
    }
}

impl ExactSizeIterator for ListenerBatch<'_> {}

impl std::iter::FusedIterator for ListenerBatch<'_> {}

impl std::fmt::Debug for ListenerBatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Payloads are the application's data: only how many events are left.
        f.debug_struct("ListenerBatch")
            .field("len", &self.events.len())
            .finish_non_exhaustive()
    }
}

#[inline]
fn view(event: &RawEvent) -> ListenerEvent<NotificationRef<'_>> {
    match event {
        ListenerEvent::Notification(notification) => {
            ListenerEvent::Notification(NotificationRef { notification })
        }
        ListenerEvent::Reconnected { generation } => ListenerEvent::Reconnected {
            generation: *generation,
        },
        ListenerEvent::Lagged { dropped } => ListenerEvent::Lagged { dropped: *dropped },
    }
}

/// One notification of a [`ListenerBatch`], viewed where the listener read
/// it: its channel and payload are stretches of the text the listener kept
/// of one read off the connection, so reading them copies nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NotificationRef<'a> {
    notification: &'a RawNotification,
}

impl<'a> NotificationRef<'a> {
    /// The process id of the server backend that sent `NOTIFY`.
    #[inline]
    pub fn process_id(&self) -> i32 {
        self.notification.process_id
    }

    /// The channel, exactly as the sender named it.
    #[inline]
    pub fn channel(&self) -> &'a str {
        self.notification.channel()
    }

    /// The payload (empty when none was given).
    #[inline]
    pub fn payload(&self) -> &'a str {
        self.notification.payload()
    }

    /// When the listener read it from the connection.
    #[inline]
    pub fn received_at(&self) -> SystemTime {
        self.notification.received_at()
    }

    /// An owned copy, to keep beyond the batch.
    pub fn to_notification(&self) -> PgNotification {
        self.notification.to_notification()
    }
}

impl std::fmt::Debug for NotificationRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // As the batch: the payload is the application's data.
        f.debug_struct("NotificationRef")
            .field("process_id", &self.process_id())
            .field("channel", &self.channel())
            .finish_non_exhaustive()
    }
}
