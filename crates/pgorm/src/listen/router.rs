//! The hub's [`Sink`]: routes each notification the driver reads to the
//! queue of every subscription of its channel, and keeps the hub's counters.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use tokio::sync::{mpsc, watch};

use crate::error::{OrmError, OrmResult};
use crate::listen::command::{Command, DriverShared};
use crate::listen::config::{PgListenerConfig, QueuePolicy};
use crate::listen::event::{ListenerEvent, PgNotification, RawEvent};
use crate::listen::fanout::{FanoutQueue, NotificationBatch};
use crate::listen::hooks::HookSlot;
use crate::listen::queue::QueueCounters;
use crate::listen::run::{Run, Spares};
use crate::listen::sink::{Dropped, Pushed, Sink};

/// The hub's [`Sink`]: channel name → subscriptions.
pub(super) struct Router {
    pub(super) routes: Mutex<HashMap<String, Route>>,
    /// Notifications taken from the driver; `routed` and `unrouted` split
    /// them. All three change, and are read, under the routes lock, so that
    /// `received == routed + unrouted` in every snapshot.
    pub(super) received: AtomicU64,
    pub(super) routed: AtomicU64,
    pub(super) unrouted: AtomicU64,
    /// The consumers a push found waiting, woken once the routes lock is
    /// released. Kept between batches so that routing allocates nothing for
    /// them; only the driver's pushes use it (never two at once).
    wake: Mutex<Vec<Waker>>,
    pub(super) reconnects: watch::Sender<u64>,
    /// Why the hub stopped, for subscriptions made after it did.
    finished: Mutex<Option<String>>,
    pub(super) hooks: HookSlot,
    pub(super) capacity: usize,
    pub(super) policy: QueuePolicy,
    /// The notifications of dropped runs, filled in again for new ones.
    spares: Arc<Spares>,
}

pub(super) struct Route {
    pub(super) subscribers: Vec<(u64, Arc<FanoutQueue>)>,
    pub(super) counters: Arc<QueueCounters>,
    pub(super) received: u64,
}

impl Router {
    pub(super) fn new(config: &PgListenerConfig) -> Self {
        Router {
            routes: Mutex::new(HashMap::new()),
            received: AtomicU64::new(0),
            routed: AtomicU64::new(0),
            unrouted: AtomicU64::new(0),
            wake: Mutex::new(Vec::new()),
            reconnects: watch::channel(0).0,
            finished: Mutex::new(None),
            hooks: config.hooks.clone(),
            capacity: config.queue_capacity,
            policy: config.queue_policy,
            spares: Arc::default(),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Route>> {
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The buffer for wakers, emptied, without holding its lock.
    fn take_wake_buffer(&self) -> Vec<Waker> {
        std::mem::take(
            &mut *self
                .wake
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Wakes `wakers` (no pgorm lock is held), then keeps the buffer.
    fn wake_all(&self, mut wakers: Vec<Waker>) {
        for waker in wakers.drain(..) {
            waker.wake();
        }
        *self
            .wake
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = wakers;
    }

    /// Adds a subscription of `channel` to the routes and to the channels
    /// the driver must listen to (both under the routes lock, so they always
    /// agree). The caller then asks the driver to `LISTEN`. Returns the
    /// subscription's id and queue.
    pub(super) fn add(
        &self,
        shared: &DriverShared,
        channel: &str,
        capacity: usize,
        policy: QueuePolicy,
    ) -> OrmResult<(u64, Arc<FanoutQueue>)> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let mut routes = self.lock();
        if let Some(reason) = self
            .finished
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            return Err(OrmError::closed(format!("the hub has stopped: {reason}")));
        }
        let route = routes.entry(channel.to_owned()).or_insert_with(|| Route {
            subscribers: Vec::new(),
            counters: Arc::default(),
            received: 0,
        });
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(FanoutQueue::new(capacity, policy, route.counters.clone()));
        route.subscribers.push((id, queue.clone()));
        shared.lock_channels().insert(channel.to_owned());
        Ok((id, queue))
    }

    /// Takes subscription `id` off `channel`; the last one of a channel asks
    /// the driver to `UNLISTEN` it.
    pub(super) fn remove(
        &self,
        shared: &DriverShared,
        commands: &mpsc::Sender<Command>,
        channel: &str,
        id: u64,
    ) {
        let mut routes = self.lock();
        let Some(route) = routes.get_mut(channel) else {
            return;
        };
        route
            .subscribers
            .retain(|(subscriber, _)| *subscriber != id);
        if route.subscribers.is_empty() {
            routes.remove(channel);
            // The wanted set changes under the routes lock, so that it always
            // matches the routes; the driver is woken after.
            shared.lock_channels().remove(channel);
            drop(routes);
            shared.request_sync(commands);
        }
    }

    /// Hands `notifications` (all of `channel`) to every subscription of the
    /// channel as one shared batch: one lock and one reference count per
    /// subscription, however many notifications there are. Consumers to
    /// wake go to `wake`; what the policies dropped goes to `drops` (one
    /// record for the channel).
    fn deliver(
        &self,
        routes: &mut HashMap<String, Route>,
        channel: &str,
        notifications: Vec<Arc<PgNotification>>,
        wake: &mut Vec<Waker>,
        drops: &mut Vec<Dropped>,
    ) {
        let count = notifications.len() as u64;
        let Some(route) = routes.get_mut(channel) else {
            self.unrouted.fetch_add(count, Ordering::Relaxed);
            return;
        };
        self.routed.fetch_add(count, Ordering::Relaxed);
        route.received += count;
        let batch = NotificationBatch::new(Run::new(notifications, Some(self.spares.clone())));
        let mut dropped = 0;
        for (_, queue) in &route.subscribers {
            let pushed = queue.push(&batch);
            dropped += pushed.dropped;
            wake.extend(pushed.consumer);
        }
        if dropped > 0 {
            drops.push(Dropped {
                channel: Some(channel.to_owned()),
                count: dropped,
            });
        }
    }
}

impl Sink for Router {
    fn push_batch(
        &self,
        batch: &mut VecDeque<RawEvent>,
        _producer: &Waker,
        drops: &mut Vec<Dropped>,
    ) -> Pushed {
        let mut wake = self.take_wake_buffer();
        // Spare notifications to fill in, held for the whole batch: two
        // takes of their lock per batch, not one per notification.
        let mut spares = self.spares.take();
        let mut routes = self.lock();
        // Notifications between markers, grouped by channel in arrival order.
        let mut groups: Vec<(String, Vec<Arc<PgNotification>>)> = Vec::new();
        let mut flush = |routes: &mut HashMap<String, Route>,
                         groups: &mut Vec<(String, Vec<Arc<PgNotification>>)>,
                         wake: &mut Vec<Waker>| {
            for (channel, notifications) in groups.drain(..) {
                self.deliver(routes, &channel, notifications, wake, drops);
            }
        };
        let total = batch.len();
        let mut reconnected = None;
        // Added once, under the routes lock, as the stats read it.
        let mut received = 0;
        for event in batch.drain(..) {
            match event {
                ListenerEvent::Notification(notification) => {
                    received += 1;
                    match groups
                        .iter_mut()
                        .find(|(channel, _)| channel == notification.channel())
                    {
                        Some((_, group)) => group.push(spares.notification(&notification)),
                        None => {
                            let channel = notification.channel().to_owned();
                            // Most batches are of one channel: room for all.
                            let room = if groups.is_empty() { total } else { 1 };
                            let mut group = spares.run(room);
                            group.push(spares.notification(&notification));
                            groups.push((channel, group));
                        }
                    }
                }
                ListenerEvent::Reconnected { generation } => {
                    flush(&mut routes, &mut groups, &mut wake);
                    for route in routes.values() {
                        for (_, queue) in &route.subscribers {
                            wake.extend(queue.push_reconnected(generation));
                        }
                    }
                    reconnected = Some(generation);
                }
                // The driver never queues Lagged: queues make their own.
                ListenerEvent::Lagged { .. } => {}
            }
        }
        flush(&mut routes, &mut groups, &mut wake);
        self.received.fetch_add(received, Ordering::Relaxed);
        drop(routes);
        self.spares.put_back(spares);
        if let Some(generation) = reconnected {
            // Watchers run no code here, but wake up: outside the lock too.
            self.reconnects.send_replace(generation);
        }
        self.wake_all(wake);
        Pushed::All
    }

    fn fall_back_to_dropping(&self) {}

    fn finish(&self, error: Option<OrmError>) {
        let mut wake = self.take_wake_buffer();
        let mut routes = self.lock();
        let reason = error.as_ref().map(ToString::to_string);
        *self
            .finished
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(reason.clone().unwrap_or_else(|| "closed".into()));
        for route in routes.values_mut() {
            for (_, queue) in route.subscribers.drain(..) {
                wake.extend(
                    queue.finish(
                        reason
                            .as_ref()
                            .map(|reason| OrmError::closed(format!("the hub stopped: {reason}"))),
                    ),
                );
            }
        }
        routes.clear();
        drop(routes);
        self.wake_all(wake);
    }
}
