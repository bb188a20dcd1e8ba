//! [`PgNotifyHub`]: one dedicated connection, many in-process subscribers,
//! and [`Subscription`], one subscriber's queue. The connection driver is
//! the listener's; the router (`router.rs`) copies each notification into
//! the queue of every subscription of its channel.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::task::AbortHandle;

use futures_core::Stream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Config, Socket};

use crate::connect::{describe_target, Connector, PlainConnector, TlsConnector};
use crate::error::{OrmError, OrmResult, ValidationError};
use crate::listen::channel::validate_channel;
use crate::listen::command::{ended_abnormally, ChannelCommand, Command, DriverShared};
use crate::listen::config::{PgListenerConfig, QueuePolicy};
use crate::listen::driver;
use crate::listen::event::{ListenerEvent, ListenerState, PgNotification};
use crate::listen::fanout::{FanoutReceiver, NextRef, NotificationBatch};
use crate::listen::hooks::HookSlot;
use crate::listen::listener::{server_channels, skip_markers};
use crate::listen::router::Router;
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

/// Counters of one channel of a hub, from [`PgNotifyHub::stats`], since
/// the channel's current run of subscriptions began (when its last
/// subscription is dropped, the channel and its counters go; a later
/// subscription starts from zero). `delivered` and `dropped` add up over the
/// subscriptions of that run, so they do not balance with `received` (each
/// notification is received once and delivered or dropped once per
/// subscriber): each subscription's own [`SubscriptionStats`] do.
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
    /// `next_event`, `next_ref`, `next_batch`, `try_next_event` or the
    /// `Stream`).
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
        let (id, queue) = self
            .inner
            .router
            .add(&self.inner.shared, channel, capacity, policy)?;
        let subscription = Subscription {
            channel: channel.to_owned(),
            id,
            receiver: FanoutReceiver::new(queue),
            hub: Arc::downgrade(&self.inner),
        };
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

/// The dispatchers of a hub's handlers, for [`PgNotifyHub::shutdown`].
pub(crate) struct Handlers {
    /// Each dispatcher holds a receiver until it ends: `closed()` resolves
    /// once every dispatcher has ended (or none was started).
    pub(crate) running: watch::Sender<()>,
    /// To cancel the dispatchers still running when a shutdown times out.
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Handlers {
    pub(crate) fn new() -> Self {
        Handlers {
            running: watch::channel(()).0,
            tasks: Mutex::new(Vec::new()),
        }
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<AbortHandle>> {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn register(&self, task: AbortHandle) {
        let mut tasks = self.lock_tasks();
        tasks.retain(|task| !task.is_finished());
        tasks.push(task);
    }

    /// Cancels every dispatcher still running, and with it their calls.
    pub(crate) fn abort_all(&self) {
        let tasks = std::mem::take(&mut *self.lock_tasks());
        for task in tasks {
            task.abort();
        }
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

/// One subscriber's view of a hub channel: its own bounded queue, with the
/// same reading methods as [`PgListener`](crate::listen::PgListener).
///
/// Notifications come as `Arc<PgNotification>`: every subscriber of a
/// channel shares the one the hub read, so fanning out to many subscribers
/// copies nothing (`notification.payload` reads the same;
/// `Arc::unwrap_or_clone` gives an owned one). With many subscribers,
/// [`next_ref`](Self::next_ref) (one lent `&PgNotification` at a time) and
/// [`next_batch`](Self::next_batch) (a shared run at once) are cheaper: they
/// touch no reference count per notification.
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
    // An async read, as tokio's `recv` and sqlx's `recv`: not `Iterator::next`.
    #[allow(clippy::should_implement_trait)]
    #[inline]
    pub fn next(&mut self) -> impl Future<Output = Option<OrmResult<Arc<PgNotification>>>> + '_ {
        // As `next_ref`: the future itself, not an `async fn`'s around it.
        std::future::poll_fn(|cx| skip_markers(|| self.receiver.poll_next(cx)))
    }

    /// The next event, markers included, in order.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`next`](Self::next).
    #[inline]
    pub fn next_event(
        &mut self,
    ) -> impl Future<Output = Option<OrmResult<ListenerEvent<Arc<PgNotification>>>>> + '_ {
        std::future::poll_fn(|cx| self.receiver.poll_next(cx))
    }

    /// The next event, markers included, in order, with its notification
    /// lent rather than shared: a `&PgNotification` that borrows the
    /// subscription until the next read. It is the cheapest way to read one
    /// notification at a time: no reference count is touched per
    /// notification, which with many subscribers of a busy channel is most
    /// of what [`next_event`](Self::next_event) costs. `Arc::new(n.clone())`
    /// or `n.clone()` keeps one beyond the next read.
    ///
    /// ```
    /// use pgorm::listen::{ListenerEvent, PgNotifyHub};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> pgorm::OrmResult<()> {
    /// # let database_url = pgorm_testkit::TestServer::shared().url();
    /// let hub = PgNotifyHub::connect(&database_url).await?;
    /// let mut subscription = hub.subscribe("prices").await?;
    ///
    /// let client = pgorm::PgClient::connect(&database_url).await?;
    /// pgorm::listen::notify_batch(&client, [("prices", "10"), ("prices", "12")]).await?;
    ///
    /// let mut total = 0;
    /// let mut seen = 0;
    /// while seen < 2 {
    ///     match subscription.next_ref().await.unwrap()? {
    ///         ListenerEvent::Notification(notification) => {
    ///             total += notification.payload.parse::<u32>().unwrap();
    ///             seen += 1;
    ///         }
    ///         _marker => { /* Reconnected or Lagged: resync */ }
    ///     }
    /// }
    /// assert_eq!(total, 22);
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    /// Cancel safe, as [`next`](Self::next).
    #[inline]
    pub fn next_ref(
        &mut self,
    ) -> impl Future<Output = Option<OrmResult<ListenerEvent<&PgNotification>>>> + '_ {
        // The future itself, not an `async fn`'s around it: a read is one
        // future's poll, not two.
        NextRef::new(&mut self.receiver)
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
    #[inline]
    pub fn next_batch(
        &mut self,
    ) -> impl Future<Output = Option<OrmResult<ListenerEvent<NotificationBatch>>>> + '_ {
        std::future::poll_fn(|cx| self.receiver.poll_next_batch(cx))
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
            hub.router
                .remove(&hub.shared, &hub.commands, &self.channel, self.id);
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
