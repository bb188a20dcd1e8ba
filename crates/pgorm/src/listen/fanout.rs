//! A hub subscription's queue. The hub reads a run of notifications of one
//! channel and hands the same run to every subscriber: each queue holds
//! [`NotificationBatch`]es (a shared run and the stretch of it still
//! queued), so fanning a run out costs one reference count per subscriber,
//! not one per notification.
//!
//! Policies are the drop policies only (hubs refuse `BlockProducer`); a drop
//! shortens a batch and puts a `Lagged` marker where the gap is. Markers are
//! merged as in the listener's queue, so they stay bounded however often the
//! connection flaps while a subscriber is stuck.
//!
//! Nothing here wakes a consumer: pushes return the waker, and the router
//! wakes it once it holds no lock.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::error::{OrmError, OrmResult};
use crate::listen::config::QueuePolicy;
use crate::listen::event::{ListenerEvent, PgNotification};
use crate::listen::queue::{
    first_notification, mark_gap, merge_markers_at_front, push_marker, Consumer, Counts,
    QueueCounters, Taken, TAKE_AT_ONCE,
};
use crate::listen::run::Run;

/// Consecutive notifications of one channel, with no gap between them,
/// shared with every other subscriber of the channel: reading a batch copies
/// nothing, and receiving one costs the same whether it holds one
/// notification or hundreds. From [`Subscription::next_batch`].
///
/// It dereferences to a slice, so `batch.len()`, `batch.iter()` and
/// `batch[0].payload` read it in place. Holding a batch keeps the whole run
/// it came from (at most 256 notifications, what the hub read in one go) in
/// memory.
///
/// [`Subscription::next_batch`]: crate::listen::Subscription::next_batch
#[derive(Clone)]
pub struct NotificationBatch {
    run: Arc<Run>,
    start: usize,
    end: usize,
}

impl NotificationBatch {
    /// A batch of all of `run`.
    pub(crate) fn new(run: Run) -> Self {
        let end = run.notifications().len();
        NotificationBatch {
            run: Arc::new(run),
            start: 0,
            end,
        }
    }

    /// The first `len` notifications.
    fn prefix(&self, len: usize) -> Self {
        NotificationBatch {
            end: self.start + len,
            ..self.clone()
        }
    }

    /// Without the first `count` notifications.
    fn skip(&self, count: usize) -> Self {
        NotificationBatch {
            start: self.start + count,
            ..self.clone()
        }
    }

    /// The same notifications, on a run of their own when they are a small
    /// part of the shared one: a queue that trimmed a batch must not keep
    /// the whole run alive, or its memory would not be bounded by its
    /// capacity. The copy is of `Arc`s, not of notifications.
    fn compacted(self) -> Self {
        if self.len() * 4 < self.run.notifications().len() {
            NotificationBatch::new(Run::new(self.to_vec(), None))
        } else {
            self
        }
    }
}

impl std::ops::Deref for NotificationBatch {
    type Target = [Arc<PgNotification>];

    #[inline]
    fn deref(&self) -> &Self::Target {
        &self.run.notifications()[self.start..self.end]
    }
}

impl std::fmt::Debug for NotificationBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Payloads are the application's data: only how many.
        f.debug_struct("NotificationBatch")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

type Item = ListenerEvent<NotificationBatch>;

/// The queue between the hub's router and one subscription.
///
/// Its counters live under its lock with the items, so that a snapshot
/// always balances: `received == delivered + queued + dropped`. The
/// channel's totals (shared by every subscription of the channel) are
/// changed under the same lock.
pub(crate) struct FanoutQueue {
    state: Mutex<State>,
    channel: Arc<QueueCounters>,
}

struct State {
    items: VecDeque<Item>,
    /// Notifications in `items` (markers do not count against the
    /// capacity).
    queued: usize,
    /// Notifications offered to this queue.
    received: u64,
    /// Notifications the consumer took.
    delivered: u64,
    /// Notifications the policy dropped.
    dropped: u64,
    capacity: usize,
    policy: QueuePolicy,
    consumer: Consumer,
}

/// What a push did: the router wakes `consumer` and reports `dropped`
/// once it holds no lock.
#[must_use]
pub(crate) struct Pushed {
    /// Notifications the policy dropped.
    pub(crate) dropped: u64,
    /// The consumer to wake, if it waits.
    pub(crate) consumer: Option<Waker>,
}

impl FanoutQueue {
    /// A queue with a drop `policy` (the hub refuses `BlockProducer`);
    /// `channel` holds the totals of the channel's subscriptions.
    pub(crate) fn new(capacity: usize, policy: QueuePolicy, channel: Arc<QueueCounters>) -> Self {
        debug_assert!(policy != QueuePolicy::BlockProducer);
        FanoutQueue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                queued: 0,
                received: 0,
                delivered: 0,
                dropped: 0,
                capacity,
                policy,
                consumer: Consumer::new(),
            }),
            channel,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // As `EventQueue::lock`: the state is consistent between statements.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `batch` by the policy. Wakes nobody: the caller wakes the
    /// returned consumer once it holds no lock.
    pub(crate) fn push(&self, batch: &NotificationBatch) -> Pushed {
        let mut state = self.lock();
        let dropped = state.offer(batch);
        state.received += batch.len() as u64;
        state.dropped += dropped;
        if dropped > 0 {
            self.channel.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        Pushed {
            dropped,
            consumer: state.consumer.take_waker(),
        }
    }

    /// Queues a `Reconnected` marker, merged with the markers before it (see
    /// [`push_marker`]). Returns the consumer to wake.
    pub(crate) fn push_reconnected(&self, generation: u64) -> Option<Waker> {
        let mut state = self.lock();
        push_marker(&mut state.items, ListenerEvent::Reconnected { generation });
        state.consumer.take_waker()
    }

    /// Ends the stream: the consumer gets what is queued, then `error` (if
    /// any), then `None`. Returns the consumer to wake.
    pub(crate) fn finish(&self, error: Option<OrmError>) -> Option<Waker> {
        let mut state = self.lock();
        state.consumer.finish(error);
        state.consumer.take_waker()
    }

    /// Moves items into the consumer's buffer under one lock, until about
    /// [`TAKE_AT_ONCE`] notifications have moved. When nothing is queued,
    /// registers `consumer` (if given) and says whether the stream is open.
    fn take(&self, into: &mut VecDeque<Item>, consumer: Option<&Waker>) -> Taken {
        let mut state = self.lock();
        if state.items.is_empty() {
            return state.consumer.found_empty(consumer);
        }
        let mut moved = 0;
        while moved < TAKE_AT_ONCE {
            let Some(item) = state.items.pop_front() else {
                break;
            };
            if let ListenerEvent::Notification(batch) = &item {
                moved += batch.len();
            }
            into.push_back(item);
        }
        state.queued -= moved;
        state.delivered += moved as u64;
        self.channel
            .delivered
            .fetch_add(moved as u64, Ordering::Relaxed);
        Taken::Some(moved)
    }

    /// The queue's counters, in one snapshot.
    fn counts(&self) -> Counts {
        let state = self.lock();
        Counts {
            received: state.received,
            delivered: state.delivered,
            dropped: state.dropped,
            queued: state.queued,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().items.len()
    }
}

impl State {
    /// Queues `batch` by the policy; returns how many notifications were
    /// dropped (of the queue's or of the batch's).
    fn offer(&mut self, batch: &NotificationBatch) -> u64 {
        let len = batch.len();
        if len == 0 {
            return 0;
        }
        if self.queued + len <= self.capacity {
            self.items
                .push_back(ListenerEvent::Notification(batch.clone()));
            self.queued += len;
            return 0;
        }
        match self.policy {
            QueuePolicy::DropNewest => {
                let room = self.capacity - self.queued;
                if room > 0 {
                    self.items
                        .push_back(ListenerEvent::Notification(batch.prefix(room).compacted()));
                    self.queued += room;
                }
                let dropped = len - room;
                self.mark_lagged_at_back(dropped);
                dropped as u64
            }
            _ => {
                // Only the newest `capacity` can stay: make room for as many
                // of the batch as that allows, then drop the rest of it.
                let kept = len.min(self.capacity);
                let from_queue = (self.queued + kept).saturating_sub(self.capacity);
                self.drop_oldest(from_queue);
                let from_batch = len - kept;
                if from_batch > 0 {
                    self.mark_lagged_at_back(from_batch);
                }
                self.items.push_back(ListenerEvent::Notification(
                    batch.skip(from_batch).compacted(),
                ));
                self.queued += kept;
                (from_queue + from_batch) as u64
            }
        }
    }

    fn mark_lagged_at_back(&mut self, count: usize) {
        push_marker(
            &mut self.items,
            ListenerEvent::Lagged {
                dropped: count as u64,
            },
        );
    }

    /// Removes the `count` oldest notifications, marking each gap where it
    /// is (after any marker queued before it), then merges the markers that
    /// the removal joined, so that they stay bounded.
    fn drop_oldest(&mut self, mut count: usize) {
        while count > 0 {
            let Some(index) = first_notification(&self.items) else {
                break;
            };
            let ListenerEvent::Notification(batch) = &mut self.items[index] else {
                unreachable!("found a notification batch at {index}");
            };
            let dropped = count.min(batch.len());
            batch.start += dropped;
            if batch.is_empty() {
                self.items.remove(index);
            } else {
                *batch = batch.clone().compacted();
            }
            count -= dropped;
            self.queued -= dropped;
            mark_gap(&mut self.items, index, dropped as u64);
        }
        merge_markers_at_front(&mut self.items);
    }
}

/// A subscription's end of a [`FanoutQueue`]: takes batches under one lock
/// into a buffer of its own, and hands them out whole or one notification at
/// a time.
pub(crate) struct FanoutReceiver {
    queue: Arc<FanoutQueue>,
    /// The batch being read one notification at a time: what is left of it
    /// comes before anything in `taken`. Reading the next notification of it
    /// is the common case, and looks at nothing else. A view read
    /// ([`NextRef`]) leaves it here spent until the next read, as the view
    /// borrows it; an owned read lets it go once spent.
    current: Option<NotificationBatch>,
    /// Taken from the queue, after `current`.
    taken: VecDeque<Item>,
}

/// What [`FanoutReceiver::advance`] found next.
enum Found<N> {
    /// A notification, at the front of `current`.
    Notification,
    /// A marker, removed; an error; or the end of the stream (`None`).
    Other(Option<OrmResult<ListenerEvent<N>>>),
}

impl FanoutReceiver {
    pub(crate) fn new(queue: Arc<FanoutQueue>) -> Self {
        FanoutReceiver {
            queue,
            current: None,
            taken: VecDeque::new(),
        }
    }

    /// Whether the next event is a notification of `current`.
    #[inline]
    fn has_current(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|batch| batch.start < batch.end)
    }

    /// Readies the next event once `current` is spent: the next batch of
    /// `taken` (taken from the queue first if `taken` is empty) becomes
    /// `current`, or the next marker is removed and returned. `None` when
    /// nothing is queued now; the consumer's waker, if given, is registered.
    fn advance<N>(&mut self, consumer: Option<&Waker>) -> Option<Found<N>> {
        // Spent: let its run go back to the hub's spares.
        self.current = None;
        loop {
            let other = match self.taken.pop_front() {
                Some(ListenerEvent::Notification(batch)) => {
                    if batch.is_empty() {
                        continue;
                    }
                    self.current = Some(batch);
                    return Some(Found::Notification);
                }
                Some(ListenerEvent::Reconnected { generation }) => {
                    Some(Ok(ListenerEvent::Reconnected { generation }))
                }
                Some(ListenerEvent::Lagged { dropped }) => {
                    Some(Ok(ListenerEvent::Lagged { dropped }))
                }
                None => match self.queue.take(&mut self.taken, consumer) {
                    Taken::Some(_) => continue,
                    Taken::Nothing => return None,
                    Taken::End(error) => error.map(Err),
                },
            };
            return Some(Found::Other(other));
        }
    }

    /// The next notification of `current`, which
    /// [`has_current`](Self::has_current) or [`advance`](Self::advance)
    /// found there, lent: `current` stays, spent or not, until the next
    /// read.
    #[inline]
    fn lend_current(&mut self) -> &Arc<PgNotification> {
        let Some(batch) = self.current.as_mut() else {
            unreachable!("a notification is at the front of current");
        };
        batch.start += 1;
        &batch.run.notifications()[batch.start - 1]
    }

    /// The next notification or marker; `None` when nothing is queued now.
    #[inline]
    fn next(
        &mut self,
        consumer: Option<&Waker>,
    ) -> Option<Option<OrmResult<ListenerEvent<Arc<PgNotification>>>>> {
        if !self.has_current() {
            if let Found::Other(other) = self.advance(consumer)? {
                return Some(other);
            }
        }
        let notification = Arc::clone(self.lend_current());
        if !self.has_current() {
            // Spent: its run may go back to the hub now, so that the last
            // reader of a notification holds the only reference to it.
            self.current = None;
        }
        Some(Some(Ok(ListenerEvent::Notification(notification))))
    }

    /// The next batch (what is left of it) or marker; `None` when nothing
    /// is queued now.
    fn next_batch(
        &mut self,
        consumer: Option<&Waker>,
    ) -> Option<Option<OrmResult<ListenerEvent<NotificationBatch>>>> {
        if !self.has_current() {
            if let Found::Other(other) = self.advance(consumer)? {
                return Some(other);
            }
        }
        let batch = self.current.take()?;
        Some(Some(Ok(ListenerEvent::Notification(batch))))
    }

    /// The next notification or marker, or `Pending` with the consumer's
    /// waker registered. Cancel safe: nothing is removed unless returned.
    #[inline]
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<OrmResult<ListenerEvent<Arc<PgNotification>>>>> {
        self.next(Some(cx.waker()))
            .map_or(Poll::Pending, Poll::Ready)
    }

    /// As [`poll_next`](Self::poll_next), a whole batch at a time.
    pub(crate) fn poll_next_batch(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<OrmResult<ListenerEvent<NotificationBatch>>>> {
        self.next_batch(Some(cx.waker()))
            .map_or(Poll::Pending, Poll::Ready)
    }

    /// The next event if one is queued: `None` when nothing is queued now,
    /// `Some(None)` at the end of the stream.
    pub(crate) fn try_next(
        &mut self,
    ) -> Option<Option<OrmResult<ListenerEvent<Arc<PgNotification>>>>> {
        self.next(None)
    }

    /// The queue's counters, counting what this receiver holds as queued,
    /// not delivered (so they still balance).
    pub(crate) fn counts(&self) -> Counts {
        let held = self.current.as_ref().map_or(0, |batch| batch.len())
            + self
                .taken
                .iter()
                .map(|item| match item {
                    ListenerEvent::Notification(batch) => batch.len(),
                    _ => 0,
                })
                .sum::<usize>();
        let mut counts = self.queue.counts();
        counts.delivered -= held as u64;
        counts.queued += held;
        counts
    }
}

/// The future of [`Subscription::next_ref`]: the next event, its
/// notification a view into the batch the receiver holds.
///
/// [`Subscription::next_ref`]: crate::listen::Subscription::next_ref
pub(crate) struct NextRef<'a> {
    receiver: Option<&'a mut FanoutReceiver>,
}

impl<'a> NextRef<'a> {
    pub(crate) fn new(receiver: &'a mut FanoutReceiver) -> Self {
        NextRef {
            receiver: Some(receiver),
        }
    }
}

impl<'a> std::future::Future for NextRef<'a> {
    type Output = Option<OrmResult<ListenerEvent<&'a PgNotification>>>;

    #[inline]
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let receiver = self
            .receiver
            .take()
            .expect("NextRef polled after it completed");
        if !receiver.has_current() {
            match receiver.advance(Some(cx.waker())) {
                None => {
                    self.receiver = Some(receiver);
                    return Poll::Pending;
                }
                Some(Found::Other(other)) => return Poll::Ready(other),
                Some(Found::Notification) => {}
            }
        }
        Poll::Ready(Some(Ok(ListenerEvent::Notification(
            &**receiver.lend_current(),
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listen::run::Spares;
    use std::future::Future;

    fn batch(payloads: &[&str]) -> NotificationBatch {
        let run: Vec<_> = payloads
            .iter()
            .map(|payload| {
                Arc::new(PgNotification {
                    process_id: 1,
                    channel: "c".into(),
                    payload: (*payload).into(),
                    received_at: std::time::SystemTime::UNIX_EPOCH,
                })
            })
            .collect();
        NotificationBatch::new(Run::new(run, None))
    }

    fn queue(capacity: usize, policy: QueuePolicy) -> Arc<FanoutQueue> {
        Arc::new(FanoutQueue::new(capacity, policy, Arc::default()))
    }

    /// Pushes `batch` and returns how many were dropped.
    fn push(queue: &FanoutQueue, batch: &NotificationBatch) -> u64 {
        queue.push(batch).dropped
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

    fn describe(event: ListenerEvent<Arc<PgNotification>>) -> String {
        match event {
            ListenerEvent::Notification(n) => n.payload.clone(),
            ListenerEvent::Lagged { dropped } => format!("L{dropped}"),
            ListenerEvent::Reconnected { generation } => format!("R{generation}"),
        }
    }

    /// Everything the consumer would see now, one at a time, notifications
    /// as payloads and markers as `L<n>` / `R<n>`.
    fn drain(receiver: &mut FanoutReceiver) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some(Some(Ok(event))) = receiver.try_next() {
            seen.push(describe(event));
        }
        seen
    }

    #[test]
    fn drop_oldest_keeps_the_newest_and_marks_the_gap_before_them() {
        let queue = queue(3, QueuePolicy::DropOldest);
        assert_eq!(push(&queue, &batch(&["1", "2"])), 0);
        assert_eq!(push(&queue, &batch(&["3", "4", "5"])), 2);
        assert_eq!(push(&queue, &batch(&["6"])), 1);
        let mut receiver = FanoutReceiver::new(queue.clone());
        assert_eq!(drain(&mut receiver), ["L3", "4", "5", "6"]);
        assert_eq!(triple(receiver.counts()), (3, 3, 0));
    }

    #[test]
    fn drop_oldest_with_a_batch_larger_than_the_queue_keeps_its_newest() {
        let queue = queue(2, QueuePolicy::DropOldest);
        push(&queue, &batch(&["1"]));
        let _ = queue.push_reconnected(1);
        assert_eq!(push(&queue, &batch(&["2", "3", "4", "5"])), 3);
        let mut receiver = FanoutReceiver::new(queue);
        // "1" before the reconnect, "2" and "3" after it.
        assert_eq!(drain(&mut receiver), ["L1", "R1", "L2", "4", "5"]);
        assert_eq!(triple(receiver.counts()), (2, 3, 0));
    }

    #[test]
    fn drop_newest_keeps_the_oldest_and_marks_the_gap_after_them() {
        let queue = queue(2, QueuePolicy::DropNewest);
        assert_eq!(push(&queue, &batch(&["1", "2", "3"])), 1);
        assert_eq!(push(&queue, &batch(&["4"])), 1);
        let mut receiver = FanoutReceiver::new(queue.clone());
        assert_eq!(drain(&mut receiver), ["1", "2", "L2"]);
        push(&queue, &batch(&["5"]));
        assert_eq!(drain(&mut receiver), ["5"]);
        assert_eq!(triple(receiver.counts()), (3, 2, 0));
    }

    #[test]
    fn batches_and_single_notifications_read_the_same_queue_in_order() {
        let queue = queue(8, QueuePolicy::DropOldest);
        push(&queue, &batch(&["1", "2", "3"]));
        let _ = queue.push_reconnected(1);
        let _ = queue.push_reconnected(2);
        push(&queue, &batch(&["4"]));
        let mut receiver = FanoutReceiver::new(queue);
        let mut seen = Vec::new();
        let first = receiver.try_next().unwrap().unwrap().unwrap();
        seen.push(describe(first));
        assert_eq!(
            triple(receiver.counts()),
            (1, 0, 3),
            "taken, not returned: queued"
        );
        while let Some(Some(Ok(event))) = receiver.next_batch(None) {
            seen.push(match event {
                ListenerEvent::Notification(batch) => {
                    batch.iter().map(|n| n.payload.as_str()).collect()
                }
                ListenerEvent::Reconnected { generation } => format!("R{generation}"),
                ListenerEvent::Lagged { dropped } => format!("L{dropped}"),
            });
        }
        assert_eq!(seen, ["1", "23", "R2", "4"]);
        assert_eq!(triple(receiver.counts()), (4, 0, 0));
    }

    /// Everything readable now through view reads, as [`drain`] does.
    fn drain_refs(receiver: &mut FanoutReceiver) -> Vec<String> {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut seen = Vec::new();
        loop {
            let mut read = std::pin::pin!(NextRef::new(receiver));
            match read.as_mut().poll(&mut cx) {
                Poll::Ready(Some(Ok(ListenerEvent::Notification(n)))) => {
                    seen.push(n.payload.clone())
                }
                Poll::Ready(Some(Ok(ListenerEvent::Lagged { dropped }))) => {
                    seen.push(format!("L{dropped}"))
                }
                Poll::Ready(Some(Ok(ListenerEvent::Reconnected { generation }))) => {
                    seen.push(format!("R{generation}"))
                }
                Poll::Pending | Poll::Ready(_) => return seen,
            }
        }
    }

    #[test]
    fn view_reads_see_what_single_reads_see_and_count_each_as_delivered() {
        let fill = || {
            let queue = queue(3, QueuePolicy::DropOldest);
            push(&queue, &batch(&["1", "2"]));
            push(&queue, &batch(&["3", "4", "5"]));
            let _ = queue.push_reconnected(1);
            push(&queue, &batch(&["6"]));
            FanoutReceiver::new(queue)
        };
        let (mut singles, mut views) = (fill(), fill());
        let expected = drain(&mut singles);
        assert_eq!(expected, ["L3", "4", "5", "R1", "6"]);
        assert_eq!(drain_refs(&mut views), expected);
        assert_eq!(triple(views.counts()), triple(singles.counts()));
    }

    #[test]
    fn view_reads_mix_with_single_and_batch_reads_in_order() {
        let queue = queue(16, QueuePolicy::DropOldest);
        push(&queue, &batch(&["1", "2", "3"]));
        push(&queue, &batch(&["4", "5"]));
        let mut receiver = FanoutReceiver::new(queue.clone());
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut view = |receiver: &mut FanoutReceiver| -> String {
            let mut read = std::pin::pin!(NextRef::new(receiver));
            match read.as_mut().poll(&mut cx) {
                Poll::Ready(Some(Ok(ListenerEvent::Notification(n)))) => n.payload.clone(),
                _ => panic!("a notification"),
            }
        };
        assert_eq!(view(&mut receiver), "1");
        assert_eq!(
            describe(receiver.try_next().unwrap().unwrap().unwrap()),
            "2"
        );
        assert_eq!(view(&mut receiver), "3");
        // The first batch is spent but still held: a single read passes it.
        assert_eq!(triple(receiver.counts()), (3, 0, 2));
        assert_eq!(view(&mut receiver), "4");
        assert_eq!(view(&mut receiver), "5");
        // A batch read after a spent batch finds nothing, and registers.
        assert!(receiver.next_batch(None).is_none());
        push(&queue, &batch(&["6", "7"]));
        assert_eq!(view(&mut receiver), "6");
        let Some(Some(Ok(ListenerEvent::Notification(rest)))) = receiver.next_batch(None) else {
            panic!("the rest of the batch");
        };
        assert_eq!(
            rest.iter().map(|n| n.payload.as_str()).collect::<Vec<_>>(),
            ["7"]
        );
        assert!(receiver.try_next().is_none());
        assert_eq!(triple(receiver.counts()), (7, 0, 0));
    }

    #[test]
    fn a_view_read_ends_with_the_stream_after_what_is_queued() {
        let queue = queue(4, QueuePolicy::DropOldest);
        push(&queue, &batch(&["1"]));
        let _ = queue.finish(Some(OrmError::closed("test")));
        let mut receiver = FanoutReceiver::new(queue);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut poll = |receiver: &mut FanoutReceiver| {
            let mut read = std::pin::pin!(NextRef::new(receiver));
            match read.as_mut().poll(&mut cx) {
                Poll::Ready(Some(Ok(ListenerEvent::Notification(n)))) => n.payload.clone(),
                Poll::Ready(Some(Err(_))) => "error".into(),
                Poll::Ready(None) => "end".into(),
                _ => "other".into(),
            }
        };
        assert_eq!(poll(&mut receiver), "1");
        assert_eq!(poll(&mut receiver), "error");
        assert_eq!(poll(&mut receiver), "end");
    }

    /// A batch whose run gives its notifications back to `spares`, made as
    /// the router makes them.
    fn spared_batch(spares: &Arc<Spares>, payloads: &[&str]) -> NotificationBatch {
        let mut kept = spares.take();
        let mut run = kept.run(payloads.len());
        for payload in payloads {
            let raw = crate::listen::event::RawNotification::from_parts(
                1,
                "c",
                payload,
                std::time::SystemTime::UNIX_EPOCH,
            );
            run.push(kept.notification(&raw));
        }
        spares.put_back(kept);
        NotificationBatch::new(Run::new(run, Some(spares.clone())))
    }

    /// A run is filled in again only once no subscriber holds any of it: a
    /// slow subscriber's batch keeps its notifications as they were, however
    /// many runs the others have read and dropped meanwhile.
    #[test]
    fn a_slow_subscriber_keeps_its_batch_while_the_others_runs_are_filled_in_again() {
        let spares = Arc::new(Spares::default());
        let (fast, slow) = (
            queue(64, QueuePolicy::DropOldest),
            queue(64, QueuePolicy::DropOldest),
        );
        let mut fast_receiver = FanoutReceiver::new(fast.clone());
        let mut slow_receiver = FanoutReceiver::new(slow.clone());
        let first = spared_batch(&spares, &["1", "2", "3"]);
        let _ = fast.push(&first);
        let _ = slow.push(&first);
        drop(first);
        let Some(Some(Ok(ListenerEvent::Notification(held)))) = slow_receiver.next_batch(None)
        else {
            panic!("the slow subscriber's batch");
        };
        for round in 0..4 {
            assert_eq!(drain_refs(&mut fast_receiver).len(), 3);
            // The fast subscriber's read that finds nothing lets its spent
            // batch go.
            assert!(fast_receiver.next_batch(None).is_none());
            let payloads = [round.to_string(), "x".into(), "y".into()];
            let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
            let next = spared_batch(&spares, &refs);
            let _ = fast.push(&next);
        }
        let payloads: Vec<&str> = held.iter().map(|n| n.payload.as_str()).collect();
        assert_eq!(payloads, ["1", "2", "3"], "the held run was not reused");
        drop(held);
        assert!(slow_receiver.next_batch(None).is_none());
        assert_eq!(
            spares.take().len(),
            3,
            "the first run came back once the slow subscriber let it go"
        );
    }

    /// Reading one notification at a time and then finding nothing releases
    /// the spent batch (its run goes back to the spares), and the counts
    /// balance at each step.
    #[test]
    fn a_spent_batch_is_released_by_the_read_that_finds_nothing() {
        let spares = Arc::new(Spares::default());
        let queue = queue(8, QueuePolicy::DropOldest);
        let mut receiver = FanoutReceiver::new(queue.clone());
        let _ = queue.push(&spared_batch(&spares, &["1", "2"]));
        assert_eq!(
            describe(receiver.try_next().unwrap().unwrap().unwrap()),
            "1"
        );
        assert_eq!(triple(receiver.counts()), (1, 0, 1));
        {
            let mut cx = Context::from_waker(Waker::noop());
            let mut read = std::pin::pin!(NextRef::new(&mut receiver));
            match read.as_mut().poll(&mut cx) {
                Poll::Ready(Some(Ok(ListenerEvent::Notification(n)))) => assert_eq!(n.payload, "2"),
                _ => panic!("a notification"),
            }
        }
        assert_eq!(triple(receiver.counts()), (2, 0, 0));
        assert_eq!(spares.take().len(), 0, "spent but held");
        assert!(receiver.try_next().is_none());
        assert_eq!(spares.take().len(), 2, "released");
    }

    #[test]
    fn pushes_hand_back_the_waiting_consumer_instead_of_waking_it() {
        let queue = queue(4, QueuePolicy::DropOldest);
        let mut receiver = FanoutReceiver::new(queue.clone());
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(receiver.poll_next(&mut cx).is_pending());
        let pushed = queue.push(&batch(&["1"]));
        assert!(!woken.0.load(Ordering::SeqCst), "not woken by the push");
        pushed.consumer.expect("the waiting consumer").wake();
        assert!(woken.0.load(Ordering::SeqCst));
        assert!(receiver.poll_next(&mut cx).is_ready());
        assert!(receiver.poll_next(&mut cx).is_pending());
        assert!(queue.push_reconnected(1).is_some());
        assert!(queue.finish(None).is_none(), "the consumer was taken");
    }

    #[derive(Default)]
    struct Woken(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn markers_stay_bounded_when_the_connection_flaps_while_the_consumer_is_stuck() {
        let queue = queue(2, QueuePolicy::DropOldest);
        push(&queue, &batch(&["1", "2"]));
        for generation in 1..=1000 {
            let _ = queue.push_reconnected(generation);
            push(&queue, &batch(&["x", "y"]));
        }
        assert!(queue.len() <= 2 * 3 + 2, "markers merge: {}", queue.len());
        let mut receiver = FanoutReceiver::new(queue);
        assert_eq!(drain(&mut receiver), ["L2000", "R1000", "x", "y"]);
        assert_eq!(triple(receiver.counts()), (2, 2000, 0));
    }

    /// Review 2 (R2-4): a queue's capacity does not bound the memory it
    /// pins. `DropNewest` keeps `batch.prefix(room)` and `DropOldest` trims
    /// with `batch.start += n`: either way the queued stretch keeps the
    /// router's whole run (up to MAX_BATCH notifications of up to 8000
    /// bytes) alive. A capacity-1 subscription that is behind pins a whole
    /// run per queued stretch: hundreds of times what its capacity says.
    #[test]
    fn a_trimmed_queue_pins_no_more_notifications_than_its_capacity() {
        for policy in [QueuePolicy::DropNewest, QueuePolicy::DropOldest] {
            let queue = queue(1, policy);
            let payloads: Vec<String> = (0..256).map(|i| i.to_string()).collect();
            let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
            let run = batch(&refs);
            let _ = push(&queue, &run);
            drop(run);
            let pinned: usize = queue
                .lock()
                .items
                .iter()
                .map(|item| match item {
                    ListenerEvent::Notification(batch) => batch.run.notifications().len(),
                    _ => 0,
                })
                .sum();
            assert!(
                pinned <= 2,
                "{policy:?}: a queue of capacity 1 pins {pinned} notifications in memory"
            );
        }
    }

    #[test]
    fn markers_stay_bounded_under_drop_newest_too() {
        let queue = queue(2, QueuePolicy::DropNewest);
        push(&queue, &batch(&["1", "2"]));
        for generation in 1..=1000 {
            let _ = queue.push_reconnected(generation);
            push(&queue, &batch(&["x", "y"]));
        }
        assert!(queue.len() <= 2 + 3, "markers merge: {}", queue.len());
        let mut receiver = FanoutReceiver::new(queue);
        assert_eq!(drain(&mut receiver), ["1", "2", "L1998", "R1000", "L2"]);
        assert_eq!(triple(receiver.counts()), (2, 2000, 0));
    }

    // ---- review: mixed reads against a model --------------------------------

    /// One step of [`mixed_reads_keep_order_gaps_counts_and_wake_ups`].
    #[derive(Debug, Clone)]
    enum Step {
        Push(usize),
        Reconnect,
        /// 0: `poll_next`, 1: `try_next`, 2: a `NextRef`, 3: `poll_next_batch`,
        /// 4: a `NextRef` polled, dropped, then a `poll_next`.
        Read(u8),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            3 => (1usize..6).prop_map(Step::Push),
            1 => Just(Step::Reconnect),
            6 => (0u8..5).prop_map(Step::Read),
        ]
    }

    /// What a read returned, in a form that outlives the read.
    enum Seen {
        Notifications(Vec<u64>),
        Lagged(u64),
        Reconnected(u64),
        Error,
        End,
        Pending,
    }

    fn read(receiver: &mut FanoutReceiver, kind: u8, cx: &mut Context<'_>) -> Seen {
        fn number(n: &PgNotification) -> u64 {
            n.payload.parse().unwrap()
        }
        fn event<N>(
            polled: Poll<Option<OrmResult<ListenerEvent<N>>>>,
            f: impl Fn(N) -> Vec<u64>,
        ) -> Seen {
            match polled {
                Poll::Pending => Seen::Pending,
                Poll::Ready(None) => Seen::End,
                Poll::Ready(Some(Err(_))) => Seen::Error,
                Poll::Ready(Some(Ok(ListenerEvent::Notification(n)))) => Seen::Notifications(f(n)),
                Poll::Ready(Some(Ok(ListenerEvent::Lagged { dropped }))) => Seen::Lagged(dropped),
                Poll::Ready(Some(Ok(ListenerEvent::Reconnected { generation }))) => {
                    Seen::Reconnected(generation)
                }
            }
        }
        match kind {
            0 => event(receiver.poll_next(cx), |n| vec![number(&n)]),
            1 => match receiver.try_next() {
                None => Seen::Pending,
                Some(item) => event(Poll::Ready(item), |n| vec![number(&n)]),
            },
            2 => {
                let mut future = std::pin::pin!(NextRef::new(receiver));
                event(future.as_mut().poll(cx), |n| vec![number(n)])
            }
            3 => event(receiver.poll_next_batch(cx), |b| {
                b.iter().map(|n| number(n)).collect()
            }),
            _ => {
                {
                    let mut future = std::pin::pin!(NextRef::new(&mut *receiver));
                    if let Poll::Ready(polled) = future.as_mut().poll(cx) {
                        return event(Poll::Ready(polled), |n| vec![number(n)]);
                    }
                }
                event(receiver.poll_next(cx), |n| vec![number(&n)])
            }
        }
    }

    proptest::proptest! {
        /// Any mix of reads (shared, lent, batch, non-blocking; lent reads
        /// dropped while pending) over any pushes: notifications come in
        /// order, each gap is announced by exactly as many `Lagged` as it is
        /// long, `Reconnected` sits between what came before and after it,
        /// the counts balance and match what was returned after every step,
        /// a read that waits is woken by the next push, and the end comes
        /// after everything queued, with its error once.
        #[test]
        fn mixed_reads_keep_order_gaps_counts_and_wake_ups(
            capacity in 1usize..6,
            newest in proptest::bool::ANY,
            steps in proptest::collection::vec(step(), 0..60),
            error in proptest::bool::ANY,
        ) {
            let policy = if newest { QueuePolicy::DropNewest } else { QueuePolicy::DropOldest };
            let queue = queue(capacity, policy);
            let mut receiver = FanoutReceiver::new(queue.clone());
            let woken = Arc::new(Woken::default());
            let waker = Waker::from(woken.clone());
            let mut cx = Context::from_waker(&waker);
            let (mut pushed, mut generation) = (0u64, 0u64);
            let mut boundaries = vec![0u64];
            let (mut delivered, mut lagged_total) = (0u64, 0u64);
            let (mut last, mut gap) = (None::<u64>, 0u64);
            let mut waiting = false;
            let mut floor = 0u64;
            let check = |seen: Seen, delivered: &mut u64, lagged_total: &mut u64, last: &mut Option<u64>, gap: &mut u64, boundaries: &Vec<u64>, floor: &mut u64| -> Option<bool> {
                match seen {
                    Seen::Notifications(numbers) => {
                        assert!(!numbers.is_empty(), "an empty batch");
                        for n in numbers {
                            assert_eq!(n, last.map_or(0, |l| l + 1) + *gap, "order and gaps");
                            assert!(n >= *floor, "{n} pushed before a reconnect came after its marker");
                            *last = Some(n);
                            *gap = 0;
                            *delivered += 1;
                        }
                        Some(true)
                    }
                    Seen::Lagged(dropped) => {
                        assert!(dropped > 0);
                        *gap += dropped;
                        *lagged_total += dropped;
                        Some(true)
                    }
                    Seen::Reconnected(g) => {
                        let boundary = boundaries[g as usize];
                        assert!(last.is_none_or(|l| l < boundary), "R{g} after a later notification");
                        assert!(boundary >= *floor, "markers out of order");
                        *floor = boundary;
                        Some(true)
                    }
                    Seen::Pending => Some(false),
                    Seen::Error | Seen::End => None,
                }
            };
            for step in steps {
                match step {
                    Step::Push(count) => {
                        let payloads: Vec<String> = (pushed..pushed + count as u64).map(|n| n.to_string()).collect();
                        let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
                        pushed += count as u64;
                        let result = queue.push(&batch(&refs));
                        if waiting {
                            assert!(result.consumer.is_some(), "a waiting read was not registered");
                            waiting = false;
                        }
                    }
                    Step::Reconnect => {
                        generation += 1;
                        boundaries.push(pushed);
                        let consumer = queue.push_reconnected(generation);
                        if waiting {
                            assert!(consumer.is_some(), "a waiting read was not registered");
                            waiting = false;
                        }
                    }
                    Step::Read(kind) => {
                        let seen = read(&mut receiver, kind, &mut cx);
                        let pending = matches!(seen, Seen::Pending);
                        let more = check(seen, &mut delivered, &mut lagged_total, &mut last, &mut gap, &boundaries, &mut floor);
                        assert!(more.is_some(), "the stream ended early");
                        if pending {
                            let counts = receiver.counts();
                            assert_eq!(counts.queued, 0, "pending with notifications queued");
                            assert_eq!(queue.len(), 0, "pending with markers queued");
                            if kind != 1 {
                                waiting = true;
                            }
                        }
                    }
                }
                let counts = receiver.counts();
                triple(counts);
                assert_eq!(counts.delivered, delivered, "delivered counts what reads returned");
            }
            let _ = queue.finish(error.then(|| OrmError::closed("test")));
            let mut errors = 0;
            for kind in (0u8..5).cycle() {
                let seen = read(&mut receiver, kind, &mut cx);
                assert!(!matches!(seen, Seen::Pending), "pending after the end");
                if matches!(seen, Seen::Error) {
                    errors += 1;
                    continue;
                }
                if check(seen, &mut delivered, &mut lagged_total, &mut last, &mut gap, &boundaries, &mut floor).is_none() {
                    break;
                }
                let counts = receiver.counts();
                triple(counts);
                assert_eq!(counts.delivered, delivered);
            }
            assert_eq!(errors, u32::from(error));
            assert_eq!(delivered + lagged_total, pushed, "every notification delivered or announced");
            let counts = receiver.counts();
            assert_eq!((counts.delivered, counts.dropped, counts.queued), (delivered, lagged_total, 0));
        }
    }
}
