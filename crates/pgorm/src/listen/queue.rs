//! The bounded queue between a connection driver and one consumer: applies
//! the [`QueuePolicy`], keeps `Lagged`/`Reconnected` markers in order with
//! the notifications, and wakes each side once per batch.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::error::{OrmError, OrmResult};
use crate::listen::config::QueuePolicy;
use crate::listen::driver::Sink;
use crate::listen::event::{ListenerEvent, PgNotification};

/// How a queue holds a notification: owned (one consumer) or shared (a
/// hub's subscribers, where the copy is made by the consumer that needs it,
/// on its own task, and only if another subscriber still holds it).
pub(crate) trait Queued: Send + 'static {
    fn into_notification(self) -> PgNotification;
}

impl Queued for PgNotification {
    fn into_notification(self) -> PgNotification {
        self
    }
}

impl Queued for Arc<PgNotification> {
    fn into_notification(self) -> PgNotification {
        Arc::try_unwrap(self).unwrap_or_else(|shared| PgNotification::clone(&shared))
    }
}

/// An entry of the queue: a notification or a marker.
pub(crate) enum Item<N> {
    Notification(N),
    Reconnected(u64),
    Lagged(u64),
}

impl<N: Queued> Item<N> {
    fn into_event(self) -> ListenerEvent {
        match self {
            Item::Notification(n) => ListenerEvent::Notification(n.into_notification()),
            Item::Reconnected(generation) => ListenerEvent::Reconnected { generation },
            Item::Lagged(dropped) => ListenerEvent::Lagged { dropped },
        }
    }
}

/// Counts kept outside the queue's lock, so that several queues (a hub
/// channel's subscribers) can share one set.
#[derive(Debug, Default)]
pub(crate) struct QueueCounters {
    pub(crate) delivered: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

/// What [`EventQueue::push_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Every notification of the batch was queued or dropped by policy.
    All,
    /// `BlockProducer`: the queue is full; what is left of the batch stays
    /// with the producer, which is woken when the consumer has made room.
    Blocked,
}

pub(crate) struct EventQueue<N = PgNotification> {
    state: Mutex<QueueState<N>>,
    counters: Arc<QueueCounters>,
}

struct QueueState<N> {
    items: VecDeque<Item<N>>,
    /// How many of `items` are notifications (markers do not count against
    /// the capacity).
    queued: usize,
    capacity: usize,
    policy: QueuePolicy,
    /// `BlockProducer` timed out and drops the oldest until the consumer has
    /// drained half the queue.
    overflowing: bool,
    consumer: Option<Waker>,
    producer: Option<Waker>,
    end: End,
}

enum End {
    Open,
    /// The producer is done; after the queued events the consumer gets this
    /// error (if any), then the end of the stream.
    Finished(Option<OrmError>),
    /// The consumer has seen the end.
    Drained,
}

/// Whether `slot` already holds a waker that wakes the same task as `waker`;
/// if not, stores a clone.
fn register(slot: &mut Option<Waker>, waker: &Waker) {
    if !slot.as_ref().is_some_and(|held| held.will_wake(waker)) {
        *slot = Some(waker.clone());
    }
}

impl<N: Queued> EventQueue<N> {
    pub(crate) fn new(capacity: usize, policy: QueuePolicy, counters: Arc<QueueCounters>) -> Self {
        EventQueue {
            state: Mutex::new(QueueState {
                items: VecDeque::with_capacity(capacity.min(1024)),
                queued: 0,
                capacity,
                policy,
                overflowing: false,
                consumer: None,
                producer: None,
                end: End::Open,
            }),
            counters,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState<N>> {
        // The state stays consistent between statements; a panic elsewhere
        // while holding the lock must not take the listener down with it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `items` under one lock, applying the policy (never blocking),
    /// and wakes the consumer once. Returns how many notifications it dropped.
    pub(crate) fn push_all(&self, items: impl IntoIterator<Item = Item<N>>) -> u64 {
        let mut state = self.lock();
        let mut dropped = 0;
        for item in items {
            if let Offer::QueuedWithDrop = state.offer(item, false) {
                dropped += 1;
            }
        }
        self.after_push(state, dropped)
    }

    fn after_push(&self, mut state: std::sync::MutexGuard<'_, QueueState<N>>, dropped: u64) -> u64 {
        let consumer = state.consumer.take();
        drop(state);
        if dropped > 0 {
            self.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        if let Some(consumer) = consumer {
            consumer.wake();
        }
        dropped
    }

    /// `BlockProducer` waited too long: drop the oldest from now on, until
    /// the consumer has drained half the queue.
    pub(crate) fn fall_back_to_dropping(&self) {
        self.lock().overflowing = true;
    }

    /// Ends the stream: the consumer gets what is queued, then `error` (if
    /// any), then `None`.
    pub(crate) fn finish(&self, error: Option<OrmError>) {
        let mut state = self.lock();
        if matches!(state.end, End::Open) {
            state.end = End::Finished(error);
        }
        self.after_push(state, 0);
    }

    /// The next event, or `Pending` with the consumer's waker registered.
    ///
    /// Cancel safe: an event is removed only when it is returned.
    pub(crate) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<OrmResult<ListenerEvent>>> {
        match self.take_next(Some(cx.waker())) {
            Some(item) => Poll::Ready(item),
            None => Poll::Pending,
        }
    }

    /// The next event if one is queued: `None` when nothing is queued now,
    /// `Some(None)` at the end of the stream.
    pub(crate) fn try_next(&self) -> Option<Option<OrmResult<ListenerEvent>>> {
        self.take_next(None)
    }

    fn take_next(&self, consumer: Option<&Waker>) -> Option<Option<OrmResult<ListenerEvent>>> {
        let mut state = self.lock();
        let Some(item) = state.items.pop_front() else {
            return match std::mem::replace(&mut state.end, End::Drained) {
                End::Open => {
                    state.end = End::Open;
                    if let Some(waker) = consumer {
                        register(&mut state.consumer, waker);
                    }
                    None
                }
                End::Finished(Some(error)) => Some(Some(Err(error))),
                End::Finished(None) | End::Drained => Some(None),
            };
        };
        let is_notification = matches!(item, Item::Notification(_));
        let mut producer = None;
        if is_notification {
            state.queued -= 1;
            if state.queued <= state.capacity / 2 {
                state.overflowing = false;
                // Waking the blocked producer for every free slot would cost
                // a wake-up per notification: wait until half is free.
                producer = state.producer.take();
            }
        }
        drop(state);
        if is_notification {
            self.counters.delivered.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(producer) = producer {
            producer.wake();
        }
        // Converting (and, for a shared notification, copying) happens here,
        // outside the lock, on the consumer's task.
        Some(Some(Ok(item.into_event())))
    }

    /// (delivered, dropped, queued).
    pub(crate) fn counts(&self) -> (u64, u64, usize) {
        let queued = self.lock().queued;
        (
            self.counters.delivered.load(Ordering::Relaxed),
            self.counters.dropped.load(Ordering::Relaxed),
            queued,
        )
    }
}

impl EventQueue<PgNotification> {
    /// Moves events from the front of `batch` into the queue, applying the
    /// policy, and wakes the consumer once. With `BlockProducer` and a full
    /// queue, what is left stays in `batch` and `producer` is woken when the
    /// consumer has made room. Returns how many notifications were dropped.
    pub(crate) fn push_batch(
        &self,
        batch: &mut VecDeque<ListenerEvent>,
        producer: &Waker,
    ) -> (Pushed, u64) {
        let mut state = self.lock();
        let blocking = state.policy == QueuePolicy::BlockProducer && !state.overflowing;
        let mut pushed = Pushed::All;
        let mut dropped = 0;
        while let Some(event) = batch.pop_front() {
            let item = match event {
                ListenerEvent::Notification(notification) => Item::Notification(notification),
                ListenerEvent::Reconnected { generation } => Item::Reconnected(generation),
                ListenerEvent::Lagged { dropped } => Item::Lagged(dropped),
            };
            match state.offer(item, blocking) {
                Offer::Queued => {}
                Offer::QueuedWithDrop => dropped += 1,
                Offer::Refused(item) => {
                    batch.push_front(item.into_event());
                    register(&mut state.producer, producer);
                    pushed = Pushed::Blocked;
                    break;
                }
            }
        }
        (pushed, self.after_push(state, dropped))
    }
}

impl Sink for EventQueue<PgNotification> {
    fn push_batch(&self, batch: &mut VecDeque<ListenerEvent>, producer: &Waker) -> (Pushed, u64) {
        EventQueue::push_batch(self, batch, producer)
    }

    fn fall_back_to_dropping(&self) {
        EventQueue::fall_back_to_dropping(self);
    }

    fn finish(&self, error: Option<OrmError>) {
        EventQueue::finish(self, error);
    }
}

/// What [`QueueState::offer`] did with an item.
enum Offer<N> {
    Queued,
    /// Queued, and one notification was dropped by the policy to make room
    /// (or the item itself was).
    QueuedWithDrop,
    /// A blocking queue is full; the notification comes back.
    Refused(Item<N>),
}

impl<N> QueueState<N> {
    /// Queues one item by the policy.
    fn offer(&mut self, item: Item<N>, blocking: bool) -> Offer<N> {
        let notification = match item {
            Item::Notification(notification) => notification,
            Item::Reconnected(generation) => {
                // Consecutive reconnects with nothing between them merge: one
                // resync covers both.
                match self.items.back_mut() {
                    Some(Item::Reconnected(last)) => *last = generation,
                    _ => self.items.push_back(Item::Reconnected(generation)),
                }
                return Offer::Queued;
            }
            marker => {
                self.items.push_back(marker);
                return Offer::Queued;
            }
        };
        if self.queued < self.capacity {
            self.items.push_back(Item::Notification(notification));
            self.queued += 1;
            return Offer::Queued;
        }
        if blocking {
            return Offer::Refused(Item::Notification(notification));
        }
        if self.policy == QueuePolicy::DropNewest {
            match self.items.back_mut() {
                Some(Item::Lagged(dropped)) => *dropped += 1,
                _ => self.items.push_back(Item::Lagged(1)),
            }
        } else {
            self.drop_oldest();
            self.items.push_back(Item::Notification(notification));
        }
        Offer::QueuedWithDrop
    }

    /// Removes the oldest notification and records the gap where it was.
    fn drop_oldest(&mut self) {
        let Some(index) = self
            .items
            .iter()
            .position(|item| matches!(item, Item::Notification(_)))
        else {
            return;
        };
        self.items.remove(index);
        match index.checked_sub(1).map(|before| &mut self.items[before]) {
            Some(Item::Lagged(dropped)) => *dropped += 1,
            _ => self.items.insert(index, Item::Lagged(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listen::event::PgNotification;
    use std::task::Waker;

    fn notification(payload: &str) -> ListenerEvent {
        ListenerEvent::Notification(PgNotification {
            process_id: 1,
            channel: "c".into(),
            payload: payload.into(),
            received_at: std::time::SystemTime::UNIX_EPOCH,
        })
    }

    fn queue(capacity: usize, policy: QueuePolicy) -> EventQueue {
        EventQueue::new(capacity, policy, Arc::default())
    }

    fn batch(payloads: &[&str]) -> VecDeque<ListenerEvent> {
        payloads.iter().map(|p| notification(p)).collect()
    }

    /// Everything the consumer would see now, notifications as payloads and
    /// markers as `L<n>` / `R<n>`.
    fn drain(queue: &EventQueue) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some(Some(Ok(event))) = queue.try_next() {
            seen.push(match event {
                ListenerEvent::Notification(n) => n.payload,
                ListenerEvent::Lagged { dropped } => format!("L{dropped}"),
                ListenerEvent::Reconnected { generation } => format!("R{generation}"),
            });
        }
        seen
    }

    #[test]
    fn drop_oldest_keeps_the_newest_and_marks_the_gap_before_them() {
        let queue = queue(3, QueuePolicy::DropOldest);
        let (pushed, dropped) =
            queue.push_batch(&mut batch(&["1", "2", "3", "4", "5"]), Waker::noop());
        assert_eq!((pushed, dropped), (Pushed::All, 2));
        queue.push_batch(&mut batch(&["6"]), Waker::noop());
        assert_eq!(drain(&queue), ["L3", "4", "5", "6"]);
        assert_eq!(queue.counts(), (3, 3, 0));
    }

    #[test]
    fn drop_newest_keeps_the_oldest_and_marks_the_gap_after_them() {
        let queue = queue(2, QueuePolicy::DropNewest);
        queue.push_batch(&mut batch(&["1", "2", "3", "4"]), Waker::noop());
        assert_eq!(drain(&queue), ["1", "2", "L2"]);
        queue.push_batch(&mut batch(&["5"]), Waker::noop());
        assert_eq!(drain(&queue), ["5"]);
        assert_eq!(queue.counts(), (3, 2, 0));
    }

    #[test]
    fn a_gap_after_a_reconnect_is_marked_after_the_reconnect() {
        let queue = queue(2, QueuePolicy::DropOldest);
        let mut events = batch(&["1"]);
        events.push_back(ListenerEvent::Reconnected { generation: 1 });
        events.extend(batch(&["2", "3", "4"]));
        queue.push_batch(&mut events, Waker::noop());
        // "1" and "2" are dropped: "1" before the reconnect, "2" after.
        assert_eq!(drain(&queue), ["L1", "R1", "L1", "3", "4"]);
    }

    #[test]
    fn block_producer_keeps_the_rest_and_resumes_at_half() {
        let queue = queue(4, QueuePolicy::BlockProducer);
        let mut rest = batch(&["1", "2", "3", "4", "5", "6"]);
        let (pushed, dropped) = queue.push_batch(&mut rest, Waker::noop());
        assert_eq!((pushed, dropped), (Pushed::Blocked, 0));
        assert_eq!(rest.len(), 2);
        assert!(queue.lock().producer.is_some());
        queue.try_next();
        assert!(
            queue.lock().producer.is_some(),
            "one free slot is not enough to wake"
        );
        queue.try_next();
        assert!(
            queue.lock().producer.is_none(),
            "half drained wakes the producer"
        );
        assert_eq!(queue.push_batch(&mut rest, Waker::noop()).0, Pushed::All);
        assert_eq!(drain(&queue), ["3", "4", "5", "6"]);
        assert_eq!(queue.counts().1, 0);
    }

    #[test]
    fn block_producer_falls_back_to_drop_oldest_until_half_drained() {
        let queue = queue(4, QueuePolicy::BlockProducer);
        let mut rest = batch(&["1", "2", "3", "4", "5", "6"]);
        queue.push_batch(&mut rest, Waker::noop());
        queue.fall_back_to_dropping();
        assert_eq!(queue.push_batch(&mut rest, Waker::noop()), (Pushed::All, 2));
        assert_eq!(drain(&queue), ["L2", "3", "4", "5", "6"]);
        let mut more = batch(&["7", "8", "9", "10", "11"]);
        assert_eq!(
            queue.push_batch(&mut more, Waker::noop()).0,
            Pushed::Blocked
        );
    }

    #[test]
    fn consecutive_reconnects_merge_into_the_newest() {
        let queue = queue(4, QueuePolicy::DropOldest);
        let reconnected = |generation| ListenerEvent::Reconnected { generation };
        let mut events: VecDeque<_> = [reconnected(1), reconnected(2)].into();
        events.extend(batch(&["a"]));
        queue.push_batch(&mut events, Waker::noop());
        queue.push_batch(&mut [reconnected(3)].into(), Waker::noop());
        assert_eq!(drain(&queue), ["R2", "a", "R3"]);
    }

    #[test]
    fn the_end_comes_after_the_queue_with_the_error_once() {
        let queue = queue(4, QueuePolicy::DropOldest);
        queue.push_batch(&mut batch(&["last"]), Waker::noop());
        queue.finish(Some(OrmError::closed("test")));
        assert!(matches!(
            queue.try_next(),
            Some(Some(Ok(ListenerEvent::Notification(_))))
        ));
        assert!(matches!(
            queue.try_next(),
            Some(Some(Err(OrmError::Closed { .. })))
        ));
        assert!(matches!(queue.try_next(), Some(None)));
        assert!(matches!(queue.try_next(), Some(None)));
    }

    #[test]
    fn an_open_empty_queue_has_nothing_yet() {
        let queue = queue(4, QueuePolicy::DropOldest);
        assert!(queue.try_next().is_none());
    }
}
