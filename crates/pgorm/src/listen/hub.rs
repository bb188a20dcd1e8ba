//! [`PgNotifyHub`]: one dedicated connection, many in-process subscribers.
//! The connection driver is the listener's; the hub's part is the router
//! that copies each notification into the queue of every subscription of its
//! channel.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures_core::Stream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Config, Socket};

use crate::connect::{describe_target, Connector, PlainConnector, TlsConnector};
use crate::error::{OrmError, OrmResult, ValidationError};
use crate::listen::channel::validate_channel;
use crate::listen::config::{PgListenerConfig, QueuePolicy};
use crate::listen::driver::{self, ended_abnormally, ChannelCommand, Command, DriverShared};
use crate::listen::event::{ListenerEvent, ListenerState, PgNotification};
use crate::listen::fanout::{FanoutQueue, FanoutReceiver, NotificationBatch};
use crate::listen::handler::Handlers;
use crate::listen::hooks::HookSlot;
use crate::listen::listener::{server_channels, skip_markers};
use crate::listen::queue::QueueCounters;
use crate::listen::sink::{Dropped, Pushed, Sink};
use crate::pool::parse_url;
use crate::PgClient;

/// Fans one dedicated connection out to many subscribers in this process.
///
/// Cheap to clone; clones share the connection. Each [`Subscription`] has
/// its own bounded queue and policy, so a slow subscriber never delays or
/// drops notifications for another. Reconnects, health checks and hooks are
/// the listener's ([`PgListenerConfig`]); every subscription gets the
/// `Reconnected` marker in order with its notifications.
///
/// # Channels
///
/// The hub listens to every channel that has at least one subscription.
/// Each [`subscribe`](Self::subscribe) sends its own `LISTEN` and returns
/// once the server has acknowledged it (a `LISTEN` on a channel already
/// listened to changes nothing on the server), so two subscriptions racing
/// on a new channel both return listening. While the hub is reconnecting,
/// `subscribe` returns at once and the reconnect listens to the channel;
/// such a subscription then receives the `Reconnected` marker first. When
/// the last subscription of a channel is dropped, the hub sends `UNLISTEN`
/// in the background (not if a new subscription of the channel came first);
/// notifications of the channel that arrive before it takes effect are
/// counted as [`unrouted`](HubStats::unrouted).
///
/// # Closing
///
/// The connection closes when [`close`](Self::close) or
/// [`shutdown`](Self::shutdown) is called, or when the last clone of the hub
/// is dropped (subscriptions and handler guards hold no reference that
/// keeps it open). Then every subscription receives what was queued, then
/// the end; handlers finish as [`HandlerGuard`](crate::listen::HandlerGuard)
/// says.
///
/// ```
/// use pgorm::listen::PgNotifyHub;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> pgorm::OrmResult<()> {
/// # let database_url = pgorm_testkit::TestServer::shared().url();
/// let hub = PgNotifyHub::connect(&database_url).await?;
/// let mut cache = hub.subscribe("cache_invalidate").await?;
/// let mut audit = hub.subscribe("cache_invalidate").await?;
///
/// let client = pgorm::PgClient::connect(&database_url).await?;
/// pgorm::notify(&client, "cache_invalidate", "user:7").await?;
///
/// assert_eq!(cache.next().await.unwrap()?.payload, "user:7");
/// assert_eq!(audit.next().await.unwrap()?.payload, "user:7");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgNotifyHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    commands: mpsc::Sender<Command>,
    shared: Arc<DriverShared>,
    router: Arc<Router>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The dispatchers of the handlers registered on this hub.
    handlers: Handlers,
    target: String,
}

impl std::fmt::Debug for PgNotifyHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgNotifyHub")
            .field("target", &self.inner.target)
            .field("state", &self.state())
            .field("channels", &self.inner.shared.channels())
            .finish_non_exhaustive()
    }
}

/// Counters of one channel of a hub, from [`PgNotifyHub::stats`].
/// `delivered` and `dropped` add up over every subscription the channel has
/// had, so they do not balance with `received` (each notification is
/// received once and delivered or dropped once per subscriber): each
/// subscription's own [`SubscriptionStats`] do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelStats {
    /// The channel.
    pub channel: String,
    /// Live subscriptions.
    pub subscribers: usize,
    /// Notifications that arrived on the channel (counted once, however
    /// many subscribers it has).
    pub received: u64,
    /// Notifications handed to subscribers (one per subscriber that took it).
    pub delivered: u64,
    /// Notifications dropped by subscriber queue policies (one per
    /// subscriber that dropped it).
    pub dropped: u64,
}

/// Counters of a hub, from [`PgNotifyHub::stats`]. Every snapshot
/// balances: `received == routed + unrouted`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct HubStats {
    /// Notifications read from the connection.
    pub received: u64,
    /// Notifications handed to a channel with at least one subscription
    /// (counted once, however many subscriptions the channel has; see
    /// [`ChannelStats`] and [`SubscriptionStats`] for what each subscriber
    /// did with them).
    pub routed: u64,
    /// Notifications that arrived for a channel with no subscription left
    /// (its `UNLISTEN` was still on the way).
    pub unrouted: u64,
    /// Completed reconnects.
    pub reconnects: u64,
    /// Calls of the [`ListenerHooks`](crate::listen::ListenerHooks) that
    /// panicked (contained: the hub went on), handler hooks included.
    pub hook_panics: u64,
    /// Per channel with at least one subscription, sorted by name.
    pub channels: Vec<ChannelStats>,
}

/// Counters of one [`Subscription`], from [`Subscription::stats`]. Every
/// snapshot balances: `received == delivered + queued + dropped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SubscriptionStats {
    /// Notifications the hub routed to this subscription.
    pub received: u64,
    /// Notifications the subscription has returned (from `next`,
    /// `next_event`, `next_batch`, `try_next_event` or the `Stream`).
    pub delivered: u64,
    /// Notifications its queue policy discarded (announced by `Lagged`
    /// markers).
    pub dropped: u64,
    /// Notifications waiting: in the queue, or taken from it by the
    /// subscription but not yet returned.
    pub queued: usize,
}

impl PgNotifyHub {
    /// Connects without TLS, with the default [`PgListenerConfig`].
    ///
    /// # Errors
    /// As [`PgListener::connect`](crate::listen::PgListener::connect).
    pub async fn connect(database_url: &str) -> OrmResult<PgNotifyHub> {
        Self::connect_with(database_url, PgListenerConfig::default()).await
    }

    /// Connects without TLS with `config`. Its queue capacity and policy are
    /// the defaults of [`subscribe`](Self::subscribe).
    ///
    /// # Errors
    /// As [`PgListener::connect_with`](crate::listen::PgListener::connect_with);
    /// [`OrmError::Validation`] also when `config` has channels (subscribe
    /// instead) or the `BlockProducer` policy (see
    /// [`subscribe_with`](Self::subscribe_with)).
    pub async fn connect_with(
        database_url: &str,
        config: PgListenerConfig,
    ) -> OrmResult<PgNotifyHub> {
        let pg_config = parse_url(database_url)?;
        Self::start(Arc::new(PlainConnector), pg_config, config).await
    }

    /// Connects with parsed settings and any tokio-postgres TLS connector.
    ///
    /// # Errors
    /// As [`connect_with`](Self::connect_with).
    pub async fn connect_with_tls<T>(
        pg_config: Config,
        tls: T,
        config: PgListenerConfig,
    ) -> OrmResult<PgNotifyHub>
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        Self::start(Arc::new(TlsConnector(tls)), pg_config, config).await
    }

    pub(crate) async fn start(
        connector: Arc<dyn Connector>,
        pg_config: Config,
        config: PgListenerConfig,
    ) -> OrmResult<PgNotifyHub> {
        if !config.channels.is_empty() {
            return Err(ValidationError::Setting {
                setting: "channels",
                reason: "a hub listens to the channels of its subscriptions; subscribe instead"
                    .into(),
            }
            .into());
        }
        check_policy(config.queue_policy)?;
        let target = describe_target(&pg_config);
        let router = Arc::new(Router::new(&config));
        let handle = driver::start(connector, pg_config, config, router.clone()).await?;
        Ok(PgNotifyHub {
            inner: Arc::new(HubInner {
                commands: handle.commands,
                shared: handle.shared,
                router,
                task: Mutex::new(Some(handle.task)),
                handlers: Handlers::new(),
                target,
            }),
        })
    }

    /// Subscribes to `channel` with the hub's default queue capacity and
    /// policy. Sends `LISTEN` and returns once the server has acknowledged
    /// it, so every notification committed on `channel` after that is
    /// delivered; while the hub is reconnecting it returns at once, and the
    /// reconnect listens to the channel before its `Reconnected` marker.
    ///
    /// # Errors
    /// [`OrmError::Validation`] for an invalid channel name;
    /// [`OrmError::Closed`] after the hub has stopped; the server's error if
    /// it refused the `LISTEN`.
    ///
    /// # Cancel safety
    /// If cancelled, no subscription is made; the hub's session may listen
    /// to the channel until it notices (an `UNLISTEN` follows).
    pub async fn subscribe(&self, channel: &str) -> OrmResult<Subscription> {
        let router = &self.inner.router;
        self.subscribe_with(channel, router.capacity, router.policy)
            .await
    }

    /// Subscribes to `channel` with its own queue capacity and policy.
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe). [`QueuePolicy::BlockProducer`] is
    /// refused with [`OrmError::Validation`]: it would stop the shared
    /// connection and stall every other subscriber; use a
    /// [`PgListener`](crate::listen::PgListener) for that.
    pub async fn subscribe_with(
        &self,
        channel: &str,
        capacity: usize,
        policy: QueuePolicy,
    ) -> OrmResult<Subscription> {
        validate_channel(channel)?;
        check_policy(policy)?;
        if capacity == 0 {
            return Err(ValidationError::Setting {
                setting: "capacity",
                reason: "must be at least 1".into(),
            }
            .into());
        }
        let subscription = self
            .inner
            .router
            .add(&self.inner, channel, capacity, policy)?;
        let (reply, answer) = oneshot::channel();
        let stopped = || OrmError::closed("the hub has stopped");
        self.inner
            .commands
            .send(Command::Channels(
                ChannelCommand::Listen {
                    channel: channel.to_owned(),
                    remember: false,
                },
                reply,
            ))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())??;
        Ok(subscription)
    }

    /// The reconnect generation as a [`watch`] channel: 0 until the first
    /// reconnect, then 1, 2, … For code that prefers watching a counter to
    /// reading the in-order `Reconnected` markers.
    pub fn reconnects(&self) -> watch::Receiver<u64> {
        self.inner.router.reconnects.subscribe()
    }

    /// Where the connection stands now.
    pub fn state(&self) -> ListenerState {
        self.inner.shared.state()
    }

    pub(crate) fn hooks(&self) -> HookSlot {
        self.inner.router.hooks.clone()
    }

    pub(crate) fn handlers(&self) -> &Handlers {
        &self.inner.handlers
    }

    /// Counters of the hub and of each subscribed channel, in one snapshot:
    /// `received == routed + unrouted` holds in every one.
    pub fn stats(&self) -> HubStats {
        let router = &self.inner.router;
        let routes = router.lock();
        let mut channels: Vec<ChannelStats> = routes
            .iter()
            .map(|(channel, route)| {
                let delivered = route.counters.delivered.load(Ordering::Relaxed);
                let dropped = route.counters.dropped.load(Ordering::Relaxed);
                ChannelStats {
                    channel: channel.clone(),
                    subscribers: route.subscribers.len(),
                    received: route.received,
                    delivered,
                    dropped,
                }
            })
            .collect();
        let received = router.received.load(Ordering::Relaxed);
        let routed = router.routed.load(Ordering::Relaxed);
        let unrouted = router.unrouted.load(Ordering::Relaxed);
        drop(routes);
        channels.sort_by(|a, b| a.channel.cmp(&b.channel));
        HubStats {
            received,
            routed,
            unrouted,
            reconnects: self.inner.shared.reconnects.load(Ordering::Relaxed),
            hook_panics: router.hooks.panics(),
            channels,
        }
    }

    /// What the server says the hub's session listens to
    /// (`pg_listening_channels()` on the hub's own connection), sorted.
    ///
    /// # Errors
    /// [`OrmError::Closed`] while reconnecting or after the hub has stopped.
    pub async fn server_channels(&self) -> OrmResult<Vec<String>> {
        server_channels(&self.inner.commands).await
    }

    /// Closes the connection (after `UNLISTEN *`) and stops the hub for every
    /// clone. Subscriptions receive what was queued, then `None`. Handlers
    /// handle what their queues held, then stop; use
    /// [`shutdown`](Self::shutdown) to wait for them.
    ///
    /// # Errors
    /// As [`PgListener::close`](crate::listen::PgListener::close).
    pub async fn close(&self) -> OrmResult<()> {
        let (reply, answer) = oneshot::channel();
        let result = match self.inner.commands.send(Command::Close(reply)).await {
            Ok(()) => answer.await.unwrap_or_else(|_| Err(ended_abnormally())),
            Err(_) => self.inner.shared.end_result(),
        };
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        result
    }
}

fn check_policy(policy: QueuePolicy) -> OrmResult<()> {
    if policy == QueuePolicy::BlockProducer {
        return Err(ValidationError::Setting {
            setting: "queue_policy",
            reason: "BlockProducer would stall every subscriber of the shared connection; \
                     hub subscriptions drop (DropOldest or DropNewest), or use a PgListener"
                .into(),
        }
        .into());
    }
    Ok(())
}

/// The hub's [`Sink`]: channel name → subscriptions.
struct Router {
    routes: Mutex<HashMap<String, Route>>,
    /// Notifications taken from the driver; `routed` and `unrouted` split
    /// them. All three change, and are read, under the routes lock, so that
    /// `received == routed + unrouted` in every snapshot.
    received: AtomicU64,
    routed: AtomicU64,
    unrouted: AtomicU64,
    /// The consumers a push found waiting, woken once the routes lock is
    /// released. Kept between batches so that routing allocates nothing for
    /// them; only the driver's pushes use it (never two at once).
    wake: Mutex<Vec<Waker>>,
    reconnects: watch::Sender<u64>,
    /// Why the hub stopped, for subscriptions made after it did.
    finished: Mutex<Option<String>>,
    hooks: HookSlot,
    capacity: usize,
    policy: QueuePolicy,
}

struct Route {
    subscribers: Vec<(u64, Arc<FanoutQueue>)>,
    counters: Arc<QueueCounters>,
    received: u64,
}

impl Router {
    fn new(config: &PgListenerConfig) -> Self {
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
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Route>> {
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
    /// agree). The caller then asks the driver to `LISTEN`.
    fn add(
        &self,
        hub: &Arc<HubInner>,
        channel: &str,
        capacity: usize,
        policy: QueuePolicy,
    ) -> OrmResult<Subscription> {
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
        hub.shared.lock_channels().insert(channel.to_owned());
        Ok(Subscription {
            channel: channel.to_owned(),
            id,
            receiver: FanoutReceiver::new(queue),
            hub: Arc::downgrade(hub),
        })
    }

    fn remove(&self, hub: &HubInner, channel: &str, id: u64) {
        let mut routes = self.lock();
        let Some(route) = routes.get_mut(channel) else {
            return;
        };
        route
            .subscribers
            .retain(|(subscriber, _)| *subscriber != id);
        if route.subscribers.is_empty() {
            routes.remove(channel);
            hub.shared.update_channels(&hub.commands, |wanted| {
                wanted.remove(channel);
            });
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
        let batch = NotificationBatch::new(notifications);
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
        batch: &mut VecDeque<ListenerEvent>,
        _producer: &Waker,
        drops: &mut Vec<Dropped>,
    ) -> Pushed {
        let mut wake = self.take_wake_buffer();
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
        for event in batch.drain(..) {
            match event {
                ListenerEvent::Notification(notification) => {
                    self.received.fetch_add(1, Ordering::Relaxed);
                    match groups
                        .iter_mut()
                        .find(|(channel, _)| *channel == notification.channel)
                    {
                        Some((_, group)) => group.push(Arc::new(notification)),
                        None => {
                            let channel = notification.channel.clone();
                            // Most batches are of one channel: room for all.
                            let room = if groups.is_empty() { total } else { 1 };
                            let mut group = Vec::with_capacity(room);
                            group.push(Arc::new(notification));
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
        drop(routes);
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

/// One subscriber's view of a hub channel: its own bounded queue, with the
/// same reading methods as [`PgListener`](crate::listen::PgListener).
///
/// Notifications come as `Arc<PgNotification>`: every subscriber of a
/// channel shares the one the hub read, so fanning out to many subscribers
/// copies nothing (`notification.payload` reads the same;
/// `Arc::unwrap_or_clone` gives an owned one). With many subscribers,
/// [`next_batch`](Self::next_batch) is cheaper still: it hands over a shared
/// run of notifications at once.
///
/// Dropping the last subscription of a channel makes the hub `UNLISTEN` it.
/// A subscription is also a [`Stream`] of `OrmResult<Arc<PgNotification>>`
/// (markers skipped). [`stats`](Self::stats) counts what it received,
/// returned, dropped and holds.
pub struct Subscription {
    channel: String,
    id: u64,
    receiver: FanoutReceiver,
    hub: std::sync::Weak<HubInner>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Subscription {
    /// The channel subscribed to.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// This subscription's counters, in one snapshot that balances:
    /// `received == delivered + queued + dropped`. Readable after the hub
    /// has stopped.
    pub fn stats(&self) -> SubscriptionStats {
        let counts = self.receiver.counts();
        SubscriptionStats {
            received: counts.received,
            delivered: counts.delivered,
            dropped: counts.dropped,
            queued: counts.queued,
        }
    }

    /// The next notification (markers passed over); `None` once the hub has
    /// stopped (after one `Err` if it stopped on its own).
    ///
    /// # Cancel safety
    /// Cancel safe: a notification is removed only when it is returned.
    pub async fn next(&mut self) -> Option<OrmResult<Arc<PgNotification>>> {
        std::future::poll_fn(|cx| skip_markers(|| self.receiver.poll_next(cx))).await
    }

    /// The next event, markers included, in order.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`next`](Self::next).
    #[inline]
    pub async fn next_event(&mut self) -> Option<OrmResult<ListenerEvent<Arc<PgNotification>>>> {
        std::future::poll_fn(|cx| self.receiver.poll_next(cx)).await
    }

    /// The next [`NotificationBatch`] (the notifications that arrived
    /// together, in order, with no gap inside), or the next marker, in
    /// order. Reading a batch copies nothing and touches no reference count
    /// per notification, so a channel with many subscribers is cheapest read
    /// this way. `None` once the hub has stopped (after one `Err` if it
    /// stopped on its own).
    ///
    /// Batches and single notifications can be mixed: a batch holds what
    /// [`next`](Self::next) has not yet returned of it.
    ///
    /// ```
    /// use pgorm::listen::{ListenerEvent, PgNotifyHub};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> pgorm::OrmResult<()> {
    /// # let database_url = pgorm_testkit::TestServer::shared().url();
    /// let hub = PgNotifyHub::connect(&database_url).await?;
    /// let mut subscription = hub.subscribe("orders").await?;
    ///
    /// let client = pgorm::PgClient::connect(&database_url).await?;
    /// pgorm::listen::notify_batch(&client, [("orders", "1"), ("orders", "2"), ("orders", "3")]).await?;
    ///
    /// let mut seen = Vec::new();
    /// while seen.len() < 3 {
    ///     match subscription.next_batch().await.unwrap()? {
    ///         ListenerEvent::Notification(batch) => {
    ///             seen.extend(batch.iter().map(|n| n.payload.clone()));
    ///         }
    ///         _marker => { /* Reconnected or Lagged: resync */ }
    ///     }
    /// }
    /// assert_eq!(seen, ["1", "2", "3"]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    /// Cancel safe, as [`next`](Self::next).
    pub async fn next_batch(&mut self) -> Option<OrmResult<ListenerEvent<NotificationBatch>>> {
        std::future::poll_fn(|cx| self.receiver.poll_next_batch(cx)).await
    }

    /// The next queued event without waiting: `Ok(None)` when nothing is
    /// queued now.
    ///
    /// # Errors
    /// Once the hub has stopped and the queue is empty: why, once, then
    /// [`OrmError::Closed`].
    pub fn try_next_event(&mut self) -> OrmResult<Option<ListenerEvent<Arc<PgNotification>>>> {
        match self.receiver.try_next() {
            None => Ok(None),
            Some(Some(item)) => item.map(Some),
            Some(None) => Err(OrmError::closed("the hub has stopped")),
        }
    }
}

impl Stream for Subscription {
    type Item = OrmResult<Arc<PgNotification>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let receiver = &mut self.get_mut().receiver;
        skip_markers(|| receiver.poll_next(cx))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.router.remove(&hub, &self.channel, self.id);
        }
    }
}

impl PgClient {
    /// A hub on a dedicated connection with this client's settings and TLS,
    /// and the default [`PgListenerConfig`]. It takes no pool slot.
    ///
    /// # Errors
    /// As [`PgNotifyHub::connect`].
    pub async fn hub(&self) -> OrmResult<PgNotifyHub> {
        self.hub_with(PgListenerConfig::default()).await
    }

    /// A hub on a dedicated connection with this client's settings, TLS and
    /// `config`.
    ///
    /// # Errors
    /// As [`PgNotifyHub::connect_with`].
    pub async fn hub_with(&self, config: PgListenerConfig) -> OrmResult<PgNotifyHub> {
        PgNotifyHub::start(self.connector(), self.pg_config().clone(), config).await
    }
}
