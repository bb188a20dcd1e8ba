//! The bounded queue between a connection driver and one consumer: applies
//! the [`QueuePolicy`], keeps `Lagged`/`Reconnected` markers in order with
//! the notifications, and wakes each side once per batch.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::error::{OrmError, OrmResult};
use crate::listen::config::QueuePolicy;
use crate::listen::event::{ListenerEvent, RawEvent};
use crate::listen::sink::{Dropped, Pushed, Sink};

/// Counts kept outside the queues' locks, so that several queues (a hub
/// channel's subscribers) can share one set.
#[derive(Debug, Default)]
pub(crate) struct QueueCounters {
    pub(crate) delivered: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

/// How many items a consumer takes from the shared queue under one lock.
/// Held by the consumer, they are beyond the queue's capacity: memory stays
/// below capacity plus this.
pub(super) const TAKE_AT_ONCE: usize = 256;

/// What a consumer's take from a queue found.
pub(super) enum Taken {
    /// This many notifications (and maybe markers) were taken.
    Some(usize),
    /// Nothing queued yet.
    Nothing,
    /// The stream has ended, with this error if it did not end on request.
    End(Option<OrmError>),
}

/// The consumer's end of an [`EventQueue`]: takes items in batches into a
/// buffer of its own, so the queue's lock is taken once per batch, not once
/// per notification.
pub(crate) struct Receiver {
    queue: Arc<EventQueue>,
    taken: VecDeque<RawEvent>,
    /// Notifications in `taken` not handed out yet.
    taken_notifications: usize,
    /// `taken` was lent out whole as a batch: every item of it is delivered,
    /// and it is cleared before anything else reads it.
    lent: bool,
}

impl Receiver {
    pub(crate) fn new(queue: Arc<EventQueue>) -> Self {
        Receiver {
            queue,
            taken: VecDeque::new(),
            taken_notifications: 0,
            lent: false,
        }
    }

    /// Forgets the batch lent out last, if any.
    #[inline]
    fn reclaim(&mut self) {
        if self.lent {
            self.lent = false;
            self.taken.clear();
        }
    }

    /// Lends out everything taken but not yet handed out, or when that is
    /// nothing, one take from the queue: all of it counts as delivered from
    /// now on, and [`lent`](Self::lent) shows it. `Pending` (with the
    /// consumer's waker registered) when nothing is queued.
    ///
    /// Cancel safe: nothing is handed out unless `Ready(Some(Ok))` is
    /// returned.
    pub(crate) fn poll_batch(&mut self, cx: &mut Context<'_>) -> Poll<Option<OrmResult<()>>> {
        self.reclaim();
        if self.taken.is_empty() {
            match self.queue.take_batch(&mut self.taken, Some(cx.waker())) {
                Taken::Some(notifications) => self.taken_notifications += notifications,
                Taken::Nothing => return Poll::Pending,
                Taken::End(Some(error)) => return Poll::Ready(Some(Err(error))),
                Taken::End(None) => return Poll::Ready(None),
            }
        }
        self.taken_notifications = 0;
        self.lent = true;
        Poll::Ready(Some(Ok(())))
    }

    /// What the last [`poll_batch`](Self::poll_batch) lent out (empty if it
    /// lent nothing since the last read).
    pub(crate) fn lent(&self) -> &VecDeque<RawEvent> {
        static NOTHING: VecDeque<RawEvent> = VecDeque::new();
        if self.lent {
            &self.taken
        } else {
            &NOTHING
        }
    }

    /// The next taken event, its notification made owned.
    #[inline]
    fn pop_taken(&mut self) -> Option<ListenerEvent> {
        Some(match self.taken.pop_front()? {
            ListenerEvent::Notification(notification) => {
                self.taken_notifications -= 1;
                ListenerEvent::Notification(notification.to_notification())
            }
            ListenerEvent::Reconnected { generation } => ListenerEvent::Reconnected { generation },
            ListenerEvent::Lagged { dropped } => ListenerEvent::Lagged { dropped },
        })
    }

    #[inline]
    fn next(&mut self, consumer: Option<&Waker>) -> Option<Option<OrmResult<ListenerEvent>>> {
        self.reclaim();
        if let Some(event) = self.pop_taken() {
            return Some(Some(Ok(event)));
        }
        match self.queue.take_batch(&mut self.taken, consumer) {
            Taken::Some(notifications) => {
                self.taken_notifications += notifications;
                self.pop_taken().map(|event| Some(Ok(event)))
            }
            Taken::Nothing => None,
            Taken::End(Some(error)) => Some(Some(Err(error))),
            Taken::End(None) => Some(None),
        }
    }

    /// The next event, or `Pending` with the consumer's waker registered.
    ///
    /// Cancel safe: an event is removed only when it is returned.
    #[inline]
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<OrmResult<ListenerEvent>>> {
        match self.next(Some(cx.waker())) {
            Some(item) => Poll::Ready(item),
            None => Poll::Pending,
        }
    }

    /// The next event if one is queued: `None` when nothing is queued now,
    /// `Some(None)` at the end of the stream.
    pub(crate) fn try_next(&mut self) -> Option<Option<OrmResult<ListenerEvent>>> {
        self.next(None)
    }

    /// The queue's counts, with what this receiver holds counted as
    /// queued, not delivered.
    pub(crate) fn counts(&self) -> Counts {
        let mut counts = self.queue.counts();
        let held = self.taken_notifications;
        counts.delivered -= held as u64;
        counts.queued += held;
        counts
    }
}

/// A queue's counters, read under its lock, so that `received == delivered
/// + queued + dropped` holds for every snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Counts {
    /// Notifications the queue took from the driver.
    pub(crate) received: u64,
    /// Taken by the consumer.
    pub(crate) delivered: u64,
    /// Dropped by the policy.
    pub(crate) dropped: u64,
    /// Waiting.
    pub(crate) queued: usize,
}

/// The queue's items are the events themselves, from the driver to the
/// consumer, so whole buffers can change hands.
pub(crate) struct EventQueue {
    state: Mutex<QueueState>,
}

struct QueueState {
    items: VecDeque<RawEvent>,
    /// How many of `items` are notifications (markers do not count against
    /// the capacity).
    queued: usize,
    received: u64,
    delivered: u64,
    dropped: u64,
    capacity: usize,
    policy: QueuePolicy,
    /// `BlockProducer` timed out and drops the oldest until the consumer has
    /// drained half the queue.
    overflowing: bool,
    consumer: Consumer,
    producer: Option<Waker>,
}

/// A queue's hold on its consumer: the task to wake, and how the stream
/// ends.
pub(super) struct Consumer {
    waker: Option<Waker>,
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

impl Consumer {
    pub(super) fn new() -> Self {
        Consumer {
            waker: None,
            end: End::Open,
        }
    }

    /// The consumer's waker, to wake once the lock is released.
    pub(super) fn take_waker(&mut self) -> Option<Waker> {
        self.waker.take()
    }

    /// Ends the stream after what is queued, with `error` (if any).
    pub(super) fn finish(&mut self, error: Option<OrmError>) {
        if matches!(self.end, End::Open) {
            self.end = End::Finished(error);
        }
    }

    /// The consumer found the queue empty: while the stream is open,
    /// registers `waker` (if given) and says nothing is queued yet; else the
    /// end, with its error the first time.
    pub(super) fn found_empty(&mut self, waker: Option<&Waker>) -> Taken {
        match std::mem::replace(&mut self.end, End::Drained) {
            End::Open => {
                self.end = End::Open;
                if let Some(waker) = waker {
                    register(&mut self.waker, waker);
                }
                Taken::Nothing
            }
            End::Finished(error) => Taken::End(error),
            End::Drained => Taken::End(None),
        }
    }
}

/// Whether `slot` already holds a waker that wakes the same task as `waker`;
/// if not, stores a clone.
fn register(slot: &mut Option<Waker>, waker: &Waker) {
    if !slot.as_ref().is_some_and(|held| held.will_wake(waker)) {
        *slot = Some(waker.clone());
    }
}

impl EventQueue {
    pub(crate) fn new(capacity: usize, policy: QueuePolicy) -> Self {
        EventQueue {
            state: Mutex::new(QueueState {
                items: VecDeque::with_capacity(capacity.min(1024)),
                queued: 0,
                received: 0,
                delivered: 0,
                dropped: 0,
                capacity,
                policy,
                overflowing: false,
                consumer: Consumer::new(),
                producer: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // The state stays consistent between statements; a panic elsewhere
        // while holding the lock must not take the listener down with it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Releases the lock, then wakes the consumer.
    fn after_push(mut state: std::sync::MutexGuard<'_, QueueState>) {
        let consumer = state.consumer.take_waker();
        drop(state);
        if let Some(consumer) = consumer {
            consumer.wake();
        }
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
        state.consumer.finish(error);
        Self::after_push(state);
    }

    /// Moves up to [`TAKE_AT_ONCE`] items into the consumer's own buffer
    /// under one lock. When nothing is queued, registers `consumer` (if
    /// given) and says whether the stream is still open.
    fn take_batch(&self, into: &mut VecDeque<RawEvent>, consumer: Option<&Waker>) -> Taken {
        let mut state = self.lock();
        if state.items.is_empty() {
            return state.consumer.found_empty(consumer);
        }
        let notifications;
        if state.items.len() <= TAKE_AT_ONCE && into.is_empty() {
            // Everything, by exchanging buffers.
            notifications = state.queued;
            std::mem::swap(&mut state.items, into);
        } else {
            let count = TAKE_AT_ONCE.min(state.items.len());
            notifications = state
                .items
                .range(..count)
                .filter(|item| matches!(item, ListenerEvent::Notification(_)))
                .count();
            into.extend(state.items.drain(..count));
        }
        state.queued -= notifications;
        state.delivered += notifications as u64;
        let mut producer = None;
        if state.queued <= state.capacity / 2 {
            state.overflowing = false;
            // Waking a blocked producer for every free slot would cost a
            // wake-up per notification: wait until half is free.
            producer = state.producer.take();
        }
        drop(state);
        if let Some(producer) = producer {
            producer.wake();
        }
        Taken::Some(notifications)
    }

    /// The counters, in one snapshot.
    pub(crate) fn counts(&self) -> Counts {
        let state = self.lock();
        Counts {
            received: state.received,
            delivered: state.delivered,
            dropped: state.dropped,
            queued: state.queued,
        }
    }

    /// Moves events from the front of `batch` into the queue, applying the
    /// policy, and wakes the consumer once. With `BlockProducer` and a full
    /// queue, what is left stays in `batch` and `producer` is woken when the
    /// consumer has made room. Returns how many notifications were dropped.
    pub(crate) fn push_batch(
        &self,
        batch: &mut VecDeque<RawEvent>,
        producer: &Waker,
    ) -> (Pushed, u64) {
        let mut state = self.lock();
        let blocking = state.policy == QueuePolicy::BlockProducer && !state.overflowing;
        let mut pushed = Pushed::All;
        let mut dropped = 0;
        // The common case, a consumer that keeps up: the queue is empty and
        // the batch fits, so the buffers change hands instead of the items.
        // Or a batch of notifications only, with room for all of them: moved
        // in one go (markers need merging, and a full queue its policy).
        if batch.len() <= state.capacity.saturating_sub(state.queued) {
            let notifications = batch
                .iter()
                .filter(|event| matches!(event, ListenerEvent::Notification(_)))
                .count();
            if notifications == batch.len() {
                if state.items.is_empty() {
                    std::mem::swap(&mut state.items, batch);
                } else {
                    state.items.append(batch);
                }
                state.queued += notifications;
                state.received += notifications as u64;
                Self::after_push(state);
                return (Pushed::All, 0);
            }
        }
        while let Some(item) = batch.pop_front() {
            let notification = matches!(item, ListenerEvent::Notification(_));
            match state.offer(item, blocking) {
                Offer::Queued => {}
                Offer::QueuedWithDrop => dropped += 1,
                Offer::Refused(item) => {
                    batch.push_front(item);
                    register(&mut state.producer, producer);
                    pushed = Pushed::Blocked;
                    break;
                }
            }
            state.received += u64::from(notification);
        }
        state.dropped += dropped;
        Self::after_push(state);
        (pushed, dropped)
    }
}

impl Sink for EventQueue {
    fn push_batch(
        &self,
        batch: &mut VecDeque<RawEvent>,
        producer: &Waker,
        drops: &mut Vec<Dropped>,
    ) -> Pushed {
        let (pushed, dropped) = EventQueue::push_batch(self, batch, producer);
        if dropped > 0 {
            drops.push(Dropped {
                channel: None,
                count: dropped,
            });
        }
        pushed
    }

    fn fall_back_to_dropping(&self) {
        EventQueue::fall_back_to_dropping(self);
    }

    fn finish(&self, error: Option<OrmError>) {
        EventQueue::finish(self, error);
    }
}

/// What [`QueueState::offer`] did with an item.
enum Offer {
    Queued,
    /// Queued, and one notification was dropped by the policy to make room
    /// (or the item itself was).
    QueuedWithDrop,
    /// A blocking queue is full; the notification comes back.
    Refused(RawEvent),
}

impl QueueState {
    /// Queues one item by the policy.
    fn offer(&mut self, item: RawEvent, blocking: bool) -> Offer {
        let notification = match item {
            ListenerEvent::Notification(notification) => notification,
            marker => {
                push_marker(&mut self.items, marker);
                return Offer::Queued;
            }
        };
        if self.queued < self.capacity {
            self.items
                .push_back(ListenerEvent::Notification(notification));
            self.queued += 1;
            return Offer::Queued;
        }
        if blocking {
            return Offer::Refused(ListenerEvent::Notification(notification));
        }
        if self.policy == QueuePolicy::DropNewest {
            // The queued notifications of the same read must not keep the
            // dropped ones' text alive: a queue full of reads' first few
            // notifications would pin far more than its capacity says.
            for item in self.items.iter_mut().rev() {
                match item {
                    ListenerEvent::Notification(kept) if kept.shares_text(&notification) => {
                        kept.detach();
                    }
                    ListenerEvent::Notification(_) => break,
                    _ => {}
                }
            }
            push_marker(&mut self.items, ListenerEvent::Lagged { dropped: 1 });
        } else {
            self.drop_oldest();
            // Its read's earlier notifications may be dropped later, after
            // the queued ones were detached: it gets a text of its own now
            // (a copy, on the drop path only).
            let mut notification = notification;
            notification.detach();
            self.items
                .push_back(ListenerEvent::Notification(notification));
        }
        Offer::QueuedWithDrop
    }

    /// Removes the oldest notification and records the gap where it was.
    /// As for `DropNewest`, the queued notifications of the same read must
    /// not keep its text alive: they are detached.
    fn drop_oldest(&mut self) {
        let Some(index) = first_notification(&self.items) else {
            return;
        };
        let removed = match self.items.remove(index) {
            Some(ListenerEvent::Notification(removed)) => Some(removed),
            _ => None,
        };
        if let Some(removed) = &removed {
            for item in self.items.range_mut(index..) {
                match item {
                    ListenerEvent::Notification(kept) if kept.shares_text(removed) => {
                        kept.detach();
                    }
                    ListenerEvent::Notification(_) => break,
                    _ => {}
                }
            }
        }
        mark_gap(&mut self.items, index, 1);
        merge_markers_at_front(&mut self.items);
    }
}

/// Where the oldest notification of `items` is.
pub(super) fn first_notification<N>(items: &VecDeque<ListenerEvent<N>>) -> Option<usize> {
    items
        .iter()
        .position(|item| matches!(item, ListenerEvent::Notification(_)))
}

/// Records `dropped` notifications missing just before `items[index]`:
/// adds them to the `Lagged` marker there, or inserts one.
pub(super) fn mark_gap<N>(items: &mut VecDeque<ListenerEvent<N>>, index: usize, dropped: u64) {
    match index.checked_sub(1).map(|before| &mut items[before]) {
        Some(ListenerEvent::Lagged { dropped: before }) => *before += dropped,
        _ => items.insert(index, ListenerEvent::Lagged { dropped }),
    }
}

/// Merges the markers before the first notification of `items`, as
/// [`push_marker`] would have had they been pushed one after the other.
/// Dropping the oldest notification joins the markers on either side of it;
/// merging keeps them bounded.
pub(super) fn merge_markers_at_front<N>(items: &mut VecDeque<ListenerEvent<N>>) {
    let run = first_notification(items).unwrap_or(items.len());
    // A run that push_marker built has at most three markers.
    if run <= 3 {
        return;
    }
    let mut merged = VecDeque::with_capacity(3);
    for marker in items.drain(..run) {
        push_marker(&mut merged, marker);
    }
    for marker in merged.into_iter().rev() {
        items.push_front(marker);
    }
}

/// Appends a marker after the last notification of `items`, merged with the
/// markers already there, so that markers stay bounded however often the
/// connection flaps while the consumer is stuck: between two notifications
/// there are at most a `Lagged` (drops before the newest reconnect), a
/// `Reconnected` (the newest) and a `Lagged` (drops after it). A consumer
/// resyncs at a `Reconnected` anyway, so the reconnects and drops before it
/// need no markers of their own; the dropped counts add up.
pub(super) fn push_marker<N>(items: &mut VecDeque<ListenerEvent<N>>, marker: ListenerEvent<N>) {
    match marker {
        ListenerEvent::Lagged { dropped } => match items.back_mut() {
            Some(ListenerEvent::Lagged { dropped: last }) => *last += dropped,
            _ => items.push_back(ListenerEvent::Lagged { dropped }),
        },
        ListenerEvent::Reconnected { generation } => {
            let mut before = 0;
            if let Some(ListenerEvent::Lagged { dropped }) = items.back() {
                before = *dropped;
                items.pop_back();
            }
            if let Some(ListenerEvent::Reconnected { .. }) = items.back() {
                items.pop_back();
                if let Some(ListenerEvent::Lagged { dropped }) = items.back_mut() {
                    *dropped += before;
                    before = 0;
                }
            }
            if before > 0 {
                items.push_back(ListenerEvent::Lagged { dropped: before });
            }
            items.push_back(ListenerEvent::Reconnected { generation });
        }
        notification => items.push_back(notification),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listen::event::RawNotification;
    use crate::tap::ReadText;
    use std::task::Waker;

    fn notification(payload: &str) -> RawEvent {
        ListenerEvent::Notification(RawNotification::from_parts(
            1,
            "c",
            payload,
            std::time::SystemTime::UNIX_EPOCH,
        ))
    }

    fn queue(capacity: usize, policy: QueuePolicy) -> Arc<EventQueue> {
        Arc::new(EventQueue::new(capacity, policy))
    }

    /// (delivered, dropped, queued), after checking that they add up to
    /// what was received.
    fn triple(counts: Counts) -> (u64, u64, usize) {
        assert_eq!(
            counts.received,
            counts.delivered + counts.dropped + counts.queued as u64,
            "{counts:?}"
        );
        (counts.delivered, counts.dropped, counts.queued)
    }

    fn batch(payloads: &[&str]) -> VecDeque<RawEvent> {
        payloads.iter().map(|p| notification(p)).collect()
    }

    /// Everything the consumer would see now, notifications as payloads and
    /// markers as `L<n>` / `R<n>`.
    fn drain(queue: &Arc<EventQueue>) -> Vec<String> {
        let mut seen = Vec::new();
        let mut receiver = Receiver::new(queue.clone());
        while let Some(Some(Ok(event))) = receiver.try_next() {
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
        assert_eq!(triple(queue.counts()), (3, 3, 0));
    }

    /// A notification kept by `DropNewest` gets a text of its own: the
    /// dropped ones of its read are not kept alive through it.
    #[test]
    fn drop_newest_keeps_no_dropped_text_alive() {
        let queue = queue(2, QueuePolicy::DropNewest);
        let text = ReadText::shared(std::time::SystemTime::UNIX_EPOCH, "c1c2c3".into());
        let read: VecDeque<RawEvent> = (0..3u32)
            .map(|i| {
                ListenerEvent::Notification(RawNotification::new(
                    1,
                    text.clone(),
                    (2 * i, 2 * i + 1),
                    (2 * i + 1, 2 * i + 2),
                ))
            })
            .collect();
        queue.push_batch(&mut read.clone(), Waker::noop());
        drop(read);
        assert_eq!(Arc::strong_count(&text), 1, "only the test holds the text");
        assert_eq!(drain(&queue), ["1", "2", "L1"]);
    }

    #[test]
    fn drop_newest_keeps_the_oldest_and_marks_the_gap_after_them() {
        let queue = queue(2, QueuePolicy::DropNewest);
        queue.push_batch(&mut batch(&["1", "2", "3", "4"]), Waker::noop());
        assert_eq!(drain(&queue), ["1", "2", "L2"]);
        queue.push_batch(&mut batch(&["5"]), Waker::noop());
        assert_eq!(drain(&queue), ["5"]);
        assert_eq!(triple(queue.counts()), (3, 2, 0));
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
    fn block_producer_keeps_the_rest_and_resumes_when_half_is_free() {
        let queue = queue(4, QueuePolicy::BlockProducer);
        let mut rest = batch(&["1", "2", "3", "4", "5", "6"]);
        let (pushed, dropped) = queue.push_batch(&mut rest, Waker::noop());
        assert_eq!((pushed, dropped), (Pushed::Blocked, 0));
        assert_eq!(rest.len(), 2);
        assert!(queue.lock().producer.is_some());
        // The consumer takes what is queued in one step, which frees the
        // queue and wakes the producer.
        let mut receiver = Receiver::new(queue.clone());
        assert!(matches!(receiver.try_next(), Some(Some(Ok(_)))));
        assert!(
            queue.lock().producer.is_none(),
            "room was made: producer woken"
        );
        assert_eq!(
            triple(receiver.counts()),
            (1, 0, 3),
            "taken but not returned counts as queued"
        );
        assert_eq!(queue.push_batch(&mut rest, Waker::noop()).0, Pushed::All);
        let mut seen = Vec::new();
        while let Some(Some(Ok(ListenerEvent::Notification(n)))) = receiver.try_next() {
            seen.push(n.payload);
        }
        assert_eq!(seen, ["2", "3", "4", "5", "6"]);
        assert_eq!(triple(receiver.counts()), (6, 0, 0));
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
        let mut queue = Receiver::new(queue);
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
    fn markers_stay_bounded_when_the_connection_flaps_while_the_consumer_is_stuck() {
        let queue = queue(2, QueuePolicy::DropOldest);
        queue.push_batch(&mut batch(&["1", "2"]), Waker::noop());
        for generation in 1..=1000 {
            let mut events: VecDeque<_> = [ListenerEvent::Reconnected { generation }].into();
            events.extend(batch(&["x", "y"]));
            queue.push_batch(&mut events, Waker::noop());
        }
        assert!(queue.lock().items.len() <= 2 * 3 + 2, "markers merge");
        assert_eq!(drain(&queue), ["L2000", "R1000", "x", "y"]);
        assert_eq!(triple(queue.counts()), (2, 2000, 0));
    }

    #[test]
    fn merged_markers_keep_a_gap_after_the_newest_reconnect_after_it() {
        let mut items: VecDeque<ListenerEvent> = VecDeque::new();
        let lagged = |dropped| ListenerEvent::Lagged { dropped };
        let reconnected = |generation| ListenerEvent::Reconnected { generation };
        push_marker(&mut items, lagged(1));
        push_marker(&mut items, reconnected(1));
        push_marker(&mut items, lagged(2));
        assert_eq!(items, [lagged(1), reconnected(1), lagged(2)]);
        push_marker(&mut items, reconnected(2));
        assert_eq!(items, [lagged(3), reconnected(2)]);
        push_marker(&mut items, lagged(4));
        push_marker(&mut items, lagged(1));
        assert_eq!(items, [lagged(3), reconnected(2), lagged(5)]);
    }

    #[test]
    fn an_open_empty_queue_has_nothing_yet() {
        let queue = queue(4, QueuePolicy::DropOldest);
        assert!(Receiver::new(queue).try_next().is_none());
    }
}
