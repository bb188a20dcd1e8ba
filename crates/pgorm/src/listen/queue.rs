//! The bounded queue between a connection driver and one consumer: applies
//! the [`QueuePolicy`], keeps `Lagged`/`Reconnected` markers in order with
//! the notifications, and wakes each side once per batch.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use crate::error::{OrmError, OrmResult};
use crate::listen::config::QueuePolicy;
use crate::listen::driver::Sink;
use crate::listen::event::ListenerEvent;

/// What [`EventQueue::push_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Every notification of the batch was queued or dropped by policy.
    All,
    /// `BlockProducer`: the queue is full; what is left of the batch stays
    /// with the producer, which is woken when the consumer has made room.
    Blocked,
}

pub(crate) struct EventQueue {
    state: Mutex<QueueState>,
}

struct QueueState {
    events: VecDeque<ListenerEvent>,
    /// How many of `events` are notifications (markers do not count
    /// against the capacity).
    queued: usize,
    capacity: usize,
    policy: QueuePolicy,
    /// `BlockProducer` timed out and drops the oldest until the consumer has
    /// drained half the queue.
    overflowing: bool,
    delivered: u64,
    dropped: u64,
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

impl EventQueue {
    pub(crate) fn new(capacity: usize, policy: QueuePolicy) -> Self {
        EventQueue {
            state: Mutex::new(QueueState {
                events: VecDeque::with_capacity(capacity.min(1024)),
                queued: 0,
                capacity,
                policy,
                overflowing: false,
                delivered: 0,
                dropped: 0,
                consumer: None,
                producer: None,
                end: End::Open,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // A panic while holding the lock cannot leave the state half-updated
        // in a way that matters more than losing the listener.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Moves notifications from the front of `batch` into the queue, applying
    /// the policy, and wakes the consumer once. Returns how many were dropped
    /// by this call.
    pub(crate) fn push_batch(
        &self,
        batch: &mut VecDeque<ListenerEvent>,
        producer: &Waker,
    ) -> (Pushed, u64) {
        let mut state = self.lock();
        let dropped_before = state.dropped;
        let blocking = state.policy == QueuePolicy::BlockProducer && !state.overflowing;
        let mut pushed = Pushed::All;
        while let Some(event) = batch.pop_front() {
            let notification = match event {
                ListenerEvent::Notification(notification) => notification,
                marker => {
                    state.push_marker(marker);
                    continue;
                }
            };
            if state.queued < state.capacity {
                state
                    .events
                    .push_back(ListenerEvent::Notification(notification));
                state.queued += 1;
            } else if blocking {
                batch.push_front(ListenerEvent::Notification(notification));
                if !state
                    .producer
                    .as_ref()
                    .is_some_and(|waker| waker.will_wake(producer))
                {
                    state.producer = Some(producer.clone());
                }
                pushed = Pushed::Blocked;
                break;
            } else if state.policy == QueuePolicy::DropNewest {
                state.dropped += 1;
                match state.events.back_mut() {
                    Some(ListenerEvent::Lagged { dropped }) => *dropped += 1,
                    _ => state.events.push_back(ListenerEvent::Lagged { dropped: 1 }),
                }
            } else {
                state.drop_oldest();
                state
                    .events
                    .push_back(ListenerEvent::Notification(notification));
            }
        }
        let dropped = state.dropped - dropped_before;
        let consumer = state.consumer.take();
        drop(state);
        if let Some(consumer) = consumer {
            consumer.wake();
        }
        (pushed, dropped)
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
        let consumer = state.consumer.take();
        drop(state);
        if let Some(consumer) = consumer {
            consumer.wake();
        }
    }

    /// The next event, or `Pending` with the consumer's waker registered.
    ///
    /// Cancel safe: an event is removed only when it is returned.
    pub(crate) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<OrmResult<ListenerEvent>>> {
        let mut state = self.lock();
        match state.take_next() {
            Some(item) => {
                let producer = state.producer_to_wake();
                drop(state);
                if let Some(producer) = producer {
                    producer.wake();
                }
                Poll::Ready(item)
            }
            None => {
                if !state
                    .consumer
                    .as_ref()
                    .is_some_and(|waker| waker.will_wake(cx.waker()))
                {
                    state.consumer = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    /// The next event if one is queued: `None` when nothing is queued now,
    /// `Some(None)` at the end of the stream.
    pub(crate) fn try_next(&self) -> Option<Option<OrmResult<ListenerEvent>>> {
        let mut state = self.lock();
        let item = state.take_next();
        let producer = state.producer_to_wake();
        drop(state);
        if let Some(producer) = producer {
            producer.wake();
        }
        item
    }

    /// (delivered, dropped, queued).
    pub(crate) fn counts(&self) -> (u64, u64, usize) {
        let state = self.lock();
        (state.delivered, state.dropped, state.queued)
    }
}

impl Sink for EventQueue {
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

impl QueueState {
    /// Queues a marker; it does not count against the capacity. Consecutive
    /// `Reconnected` markers with no notification between them merge into
    /// the newest (one resync covers both).
    fn push_marker(&mut self, marker: ListenerEvent) {
        match (self.events.back_mut(), marker) {
            (
                Some(ListenerEvent::Reconnected { generation: last }),
                ListenerEvent::Reconnected { generation },
            ) => *last = generation,
            (_, marker) => self.events.push_back(marker),
        }
    }

    /// `Some(item)` if there is something for the consumer; `None` if it must
    /// wait.
    fn take_next(&mut self) -> Option<Option<OrmResult<ListenerEvent>>> {
        if let Some(event) = self.events.pop_front() {
            if matches!(event, ListenerEvent::Notification(_)) {
                self.queued -= 1;
                self.delivered += 1;
                if self.overflowing && self.queued <= self.capacity / 2 {
                    self.overflowing = false;
                }
            }
            return Some(Some(Ok(event)));
        }
        match std::mem::replace(&mut self.end, End::Drained) {
            End::Open => {
                self.end = End::Open;
                None
            }
            End::Finished(Some(error)) => Some(Some(Err(error))),
            End::Finished(None) | End::Drained => Some(None),
        }
    }

    /// The blocked producer's waker, once the consumer has drained the queue
    /// to half: waking it for every free slot would cost a wake-up per
    /// notification.
    fn producer_to_wake(&mut self) -> Option<Waker> {
        if self.queued <= self.capacity / 2 {
            self.producer.take()
        } else {
            None
        }
    }

    /// Removes the oldest notification and records the gap where it was.
    fn drop_oldest(&mut self) {
        let Some(index) = self
            .events
            .iter()
            .position(|event| matches!(event, ListenerEvent::Notification(_)))
        else {
            return;
        };
        self.events.remove(index);
        self.dropped += 1;
        match index.checked_sub(1).map(|before| &mut self.events[before]) {
            Some(ListenerEvent::Lagged { dropped }) => *dropped += 1,
            _ => self
                .events
                .insert(index, ListenerEvent::Lagged { dropped: 1 }),
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
        let queue = EventQueue::new(3, QueuePolicy::DropOldest);
        let (pushed, dropped) =
            queue.push_batch(&mut batch(&["1", "2", "3", "4", "5"]), Waker::noop());
        assert_eq!((pushed, dropped), (Pushed::All, 2));
        queue.push_batch(&mut batch(&["6"]), Waker::noop());
        assert_eq!(drain(&queue), ["L3", "4", "5", "6"]);
        assert_eq!(queue.counts(), (3, 3, 0));
    }

    #[test]
    fn drop_newest_keeps_the_oldest_and_marks_the_gap_after_them() {
        let queue = EventQueue::new(2, QueuePolicy::DropNewest);
        queue.push_batch(&mut batch(&["1", "2", "3", "4"]), Waker::noop());
        assert_eq!(drain(&queue), ["1", "2", "L2"]);
        queue.push_batch(&mut batch(&["5"]), Waker::noop());
        assert_eq!(drain(&queue), ["5"]);
        assert_eq!(queue.counts(), (3, 2, 0));
    }

    #[test]
    fn a_gap_after_a_reconnect_is_marked_after_the_reconnect() {
        let queue = EventQueue::new(2, QueuePolicy::DropOldest);
        let mut events = batch(&["1"]);
        events.push_back(ListenerEvent::Reconnected { generation: 1 });
        events.extend(batch(&["2", "3", "4"]));
        queue.push_batch(&mut events, Waker::noop());
        // "1" and "2" are dropped: "1" before the reconnect, "2" after.
        assert_eq!(drain(&queue), ["L1", "R1", "L1", "3", "4"]);
    }

    #[test]
    fn block_producer_keeps_the_rest_and_resumes_at_half() {
        let queue = EventQueue::new(4, QueuePolicy::BlockProducer);
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
        let queue = EventQueue::new(4, QueuePolicy::BlockProducer);
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
        let queue = EventQueue::new(4, QueuePolicy::DropOldest);
        let reconnected = |generation| ListenerEvent::Reconnected { generation };
        let mut events: VecDeque<_> = [reconnected(1), reconnected(2)].into();
        events.extend(batch(&["a"]));
        queue.push_batch(&mut events, Waker::noop());
        queue.push_batch(&mut [reconnected(3)].into(), Waker::noop());
        assert_eq!(drain(&queue), ["R2", "a", "R3"]);
    }

    #[test]
    fn the_end_comes_after_the_queue_with_the_error_once() {
        let queue = EventQueue::new(4, QueuePolicy::DropOldest);
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
        let queue = EventQueue::new(4, QueuePolicy::DropOldest);
        assert!(queue.try_next().is_none());
    }
}
