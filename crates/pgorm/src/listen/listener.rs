//! [`PgListener`], the single-consumer front end of the connection driver;
//! [`PgListenerHandle`], its cloneable control handle; and
//! [`PgListenerStream`], the listener as a `Stream`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Config, Socket};

use crate::connect::{describe_target, Connector, PlainConnector, TlsConnector};
use crate::error::{OrmError, OrmResult};
use crate::listen::batch::ListenerBatch;
use crate::listen::channel::validate_channel;
use crate::listen::command::{ended_abnormally, ChannelCommand, Command, DriverShared};
use crate::listen::config::PgListenerConfig;
use crate::listen::driver;
use crate::listen::event::{ListenerEvent, ListenerState, ListenerStats, PgNotification};
use crate::listen::hooks::HookSlot;
use crate::listen::queue::{Counts, EventQueue, Receiver};
use crate::pool::parse_url;
use crate::PgClient;

/// Receives PostgreSQL notifications on a dedicated connection.
///
/// A background task owns the connection: it listens, reads notifications
/// into a bounded queue (see [`QueuePolicy`](crate::listen::QueuePolicy)),
/// checks the connection's health, and reconnects after any loss, listening
/// to every channel again. The consumer reads with [`next`](Self::next),
/// [`next_event`](Self::next_event) (which also shows the gap markers),
/// [`try_next`](Self::try_next) or [`into_stream`](Self::into_stream).
///
/// Receiving takes `&mut self`; to change channels or read the state from
/// other tasks while one task receives, take a cloneable
/// [`handle`](Self::handle).
///
/// Dropping a listener stops its task and closes its connection;
/// [`close`](Self::close) does the same and reports whether it went cleanly.
///
/// ```
/// use pgorm::listen::PgListener;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> pgorm::OrmResult<()> {
/// # let database_url = pgorm_testkit::TestServer::shared().url();
/// let mut listener = PgListener::connect(&database_url).await?;
/// listener.listen("order_events").await?;
///
/// let client = pgorm::PgClient::connect(&database_url).await?;
/// pgorm::listen::notify(&client, "order_events", "order 42 paid").await?;
///
/// if let Some(notification) = listener.next().await {
///     let notification = notification?;
///     assert_eq!(notification.channel, "order_events");
///     assert_eq!(notification.payload, "order 42 paid");
/// }
/// listener.close().await?;
/// # Ok(()) }
/// ```
pub struct PgListener {
    /// The one strong reference to the command sender: dropping the listener
    /// stops the driver, whatever handles remain.
    commands: Arc<mpsc::Sender<Command>>,
    handle: PgListenerHandle,
    receiver: Receiver,
    task: tokio::task::JoinHandle<()>,
}

/// A cloneable control handle of a [`PgListener`], from
/// [`PgListener::handle`]: listen, unlisten, state and counters from any
/// task while another one receives.
///
/// A handle does not keep the listener alive: once the listener is dropped
/// or closed, its methods return [`OrmError::Closed`] and `state()` says
/// [`ListenerState::Closed`].
///
/// ```
/// use pgorm::listen::PgListener;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> pgorm::OrmResult<()> {
/// # let database_url = pgorm_testkit::TestServer::shared().url();
/// let mut listener = PgListener::connect(&database_url).await?;
/// let handle = listener.handle();
/// let subscriber = tokio::spawn(async move { handle.listen("jobs").await });
/// subscriber.await.expect("the task ran")?;
///
/// let client = pgorm::PgClient::connect(&database_url).await?;
/// pgorm::notify(&client, "jobs", "7").await?;
/// assert_eq!(listener.next().await.unwrap()?.payload, "7");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgListenerHandle {
    commands: Weak<mpsc::Sender<Command>>,
    shared: Arc<DriverShared>,
    queue: Arc<EventQueue>,
    hooks: HookSlot,
    target: Arc<str>,
}

impl std::fmt::Debug for PgListenerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgListenerHandle")
            .field("target", &self.target)
            .field("state", &self.state())
            .field("channels", &self.channels())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for PgListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgListener")
            .field("target", &self.handle.target)
            .field("state", &self.state())
            .field("channels", &self.channels())
            .field("stats", &self.stats())
            .finish()
    }
}

impl PgListener {
    /// Connects without TLS, with the default [`PgListenerConfig`].
    ///
    /// # Errors
    /// [`OrmError::Config`] for an unparsable URL; [`OrmError::Connection`],
    /// [`OrmError::Socket`] or [`OrmError::Timeout`] when the first
    /// connection cannot be opened (by default the first connection is not
    /// retried, so a wrong URL fails at once; see
    /// [`PgListenerConfig::retry_first_connect`]).
    pub async fn connect(database_url: &str) -> OrmResult<PgListener> {
        Self::connect_with(database_url, PgListenerConfig::default()).await
    }

    /// Connects without TLS, with `config`. Settings in the URL (such as
    /// `application_name` or `connect_timeout`) stand unless `config` sets
    /// them explicitly.
    ///
    /// # Errors
    /// As [`connect`](Self::connect), and [`OrmError::Validation`] for an
    /// invalid setting or channel name in `config`;
    /// [`OrmError::Callback`] when the
    /// [`on_connect`](PgListenerConfig::on_connect) callback failed.
    pub async fn connect_with(
        database_url: &str,
        config: PgListenerConfig,
    ) -> OrmResult<PgListener> {
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
    ) -> OrmResult<PgListener>
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
    ) -> OrmResult<PgListener> {
        let target = describe_target(&pg_config).into();
        let queue = Arc::new(EventQueue::new(config.queue_capacity, config.queue_policy));
        let driver = driver::start(connector, pg_config, config, queue.clone()).await?;
        let commands = Arc::new(driver.commands);
        Ok(PgListener {
            handle: PgListenerHandle {
                commands: Arc::downgrade(&commands),
                shared: driver.shared,
                queue: queue.clone(),
                hooks: driver.hooks,
                target,
            },
            commands,
            receiver: Receiver::new(queue),
            task: driver.task,
        })
    }

    /// A cloneable handle to change channels and read the state from other
    /// tasks while this one receives.
    pub fn handle(&self) -> PgListenerHandle {
        self.handle.clone()
    }

    /// Starts listening to `channel`; see [`PgListenerHandle::listen`].
    ///
    /// # Errors
    /// As [`PgListenerHandle::listen`].
    ///
    /// # Cancel safety
    /// As [`PgListenerHandle::listen`].
    pub async fn listen(&self, channel: &str) -> OrmResult<()> {
        self.handle.listen(channel).await
    }

    /// Stops listening to `channel`; see [`PgListenerHandle::unlisten`].
    ///
    /// # Errors
    /// As [`PgListenerHandle::listen`].
    pub async fn unlisten(&self, channel: &str) -> OrmResult<()> {
        self.handle.unlisten(channel).await
    }

    /// What the server says this listener's session listens to; see
    /// [`PgListenerHandle::server_channels`].
    ///
    /// # Errors
    /// As [`PgListenerHandle::server_channels`].
    pub async fn server_channels(&self) -> OrmResult<Vec<String>> {
        self.handle.server_channels().await
    }

    /// Stops listening to every channel.
    ///
    /// # Errors
    /// [`OrmError::Closed`] after the listener has stopped.
    pub async fn unlisten_all(&self) -> OrmResult<()> {
        self.handle.unlisten_all().await
    }

    /// Everything that has arrived and not been read yet, handed out in
    /// place: notifications as [`NotificationRef`](crate::listen::NotificationRef) views (`&str` channel and
    /// payload over what the listener already read) and, in order with them,
    /// the gap markers. Waits until there is at least one event.
    ///
    /// The cheapest way to read a busy listener: one call per wake-up instead
    /// of one per notification, and no copy unless asked for
    /// ([`NotificationRef::to_notification`](crate::listen::NotificationRef::to_notification)). The batch borrows the
    /// listener; everything in it counts as delivered once it is returned,
    /// whether or not it is read to the end. A batch holds at most a few
    /// hundred events.
    ///
    /// `None` once the listener has stopped; just before that, one `Err`
    /// says why if it stopped on its own.
    ///
    /// ```
    /// use pgorm::listen::{ListenerEvent, PgListener, PgListenerConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> pgorm::OrmResult<()> {
    /// # let database_url = pgorm_testkit::TestServer::shared().url();
    /// let config = PgListenerConfig::new().channels(["price_ticks"]);
    /// let mut listener = PgListener::connect_with(&database_url, config).await?;
    ///
    /// let client = pgorm::PgClient::connect(&database_url).await?;
    /// let ticks = ["a:1", "b:2", "a:3"].map(|tick| ("price_ticks", tick));
    /// pgorm::listen::notify_batch(&client, ticks).await?;
    ///
    /// let mut seen = 0;
    /// let mut kept = Vec::new();
    /// while seen < 3 {
    ///     let Some(batch) = listener.next_batch().await else { break };
    ///     for event in batch? {
    ///         match event {
    ///             ListenerEvent::Notification(n) => {
    ///                 seen += 1;
    ///                 // Read in place; copy only what outlives the batch.
    ///                 if n.payload().starts_with("a:") {
    ///                     kept.push(n.to_notification());
    ///                 }
    ///             }
    ///             // A gap or a reconnect, exactly where it happened.
    ///             _ => { /* resync */ }
    ///         }
    ///     }
    /// }
    /// assert_eq!(kept.len(), 2);
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped before it completes, nothing is
    /// handed out; it stays queued for the next call.
    pub async fn next_batch(&mut self) -> Option<OrmResult<ListenerBatch<'_>>> {
        let ready = std::future::poll_fn(|cx| self.receiver.poll_batch(cx)).await;
        match ready? {
            Ok(()) => Some(Ok(ListenerBatch::new(self.receiver.lent()))),
            Err(error) => Some(Err(error)),
        }
    }

    /// The next notification; gap markers are passed over.
    ///
    /// `None` once the listener has stopped; just before that, one `Err`
    /// says why if it stopped on its own (for example, it gave up
    /// reconnecting).
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped before it completes, no
    /// notification is lost; it stays queued for the next call.
    // An async read, as tokio's `recv` and sqlx's `recv`: not `Iterator::next`.
    #[allow(clippy::should_implement_trait)]
    #[inline]
    pub fn next(&mut self) -> impl Future<Output = Option<OrmResult<PgNotification>>> + '_ {
        // The future itself, not an `async fn`'s around it: a read is one
        // future's poll, and the notification is moved out once, not twice.
        std::future::poll_fn(|cx| skip_markers(|| self.receiver.poll_next(cx)))
    }

    /// The next event: a notification or, in order with them, a
    /// [`ListenerEvent::Reconnected`] or [`ListenerEvent::Lagged`] marker.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`next`](Self::next).
    #[inline]
    pub fn next_event(&mut self) -> impl Future<Output = Option<OrmResult<ListenerEvent>>> + '_ {
        // As `next`: the future itself.
        std::future::poll_fn(|cx| self.receiver.poll_next(cx))
    }

    /// The next queued notification without waiting (markers passed over):
    /// `Ok(None)` when nothing is queued now.
    ///
    /// # Errors
    /// Once the listener has stopped and its queue is empty: the reason it
    /// stopped, once, then [`OrmError::Closed`].
    pub fn try_next(&mut self) -> OrmResult<Option<PgNotification>> {
        loop {
            match self.try_next_event()? {
                None => return Ok(None),
                Some(ListenerEvent::Notification(notification)) => return Ok(Some(notification)),
                Some(_marker) => continue,
            }
        }
    }

    /// The next queued event without waiting, markers included: `Ok(None)`
    /// when nothing is queued now.
    ///
    /// # Errors
    /// As [`try_next`](Self::try_next).
    pub fn try_next_event(&mut self) -> OrmResult<Option<ListenerEvent>> {
        match self.receiver.try_next() {
            None => Ok(None),
            Some(Some(item)) => item.map(Some),
            Some(None) => Err(OrmError::closed("the listener has stopped")),
        }
    }

    /// This listener as a [`Stream`] of notifications (markers skipped).
    /// Use [`PgListenerStream::events`] for the markers too.
    pub fn into_stream(self) -> PgListenerStream {
        PgListenerStream { listener: self }
    }

    /// Where the connection stands now.
    pub fn state(&self) -> ListenerState {
        self.handle.state()
    }

    /// Counters since the listener was created; what the consumer's batch
    /// holds but `next` has not returned yet counts as queued.
    pub fn stats(&self) -> ListenerStats {
        self.handle.stats_with(self.receiver.counts())
    }

    /// The channels listened to (or to be listened to again after a
    /// reconnect), sorted.
    pub fn channels(&self) -> Vec<String> {
        self.handle.channels()
    }

    /// Stops listening (`UNLISTEN *`), closes the connection and waits for
    /// the background task to end. Queued notifications are discarded.
    ///
    /// # Errors
    /// When `UNLISTEN` or the goodbye to the server failed or timed out
    /// (5 s each); the connection is closed and the task ended regardless.
    /// [`OrmError::Closed`] when the background task had ended abnormally
    /// (it panicked, or its runtime shut down). A listener that gave up
    /// reconnecting closes with `Ok`: its consumer was told why.
    pub async fn close(self) -> OrmResult<()> {
        let PgListener {
            commands,
            handle,
            task,
            ..
        } = self;
        let (reply, answer) = oneshot::channel();
        let result = match commands.send(Command::Close(reply)).await {
            Ok(()) => answer.await.unwrap_or_else(|_| Err(ended_abnormally())),
            Err(_) => handle.shared.end_result(),
        };
        drop(commands);
        match task.await {
            Err(joined) if joined.is_panic() => Err(ended_abnormally()),
            _ => result,
        }
    }
}

impl PgListenerHandle {
    /// Starts listening to `channel` (exact and case-sensitive).
    ///
    /// Returns once the server has acknowledged: every notification
    /// committed on `channel` after that is delivered. If the connection is
    /// down, it returns at once and the channel is listened to as part of
    /// the reconnect, which a [`ListenerEvent::Reconnected`] announces.
    ///
    /// # Errors
    /// [`OrmError::Validation`] for an empty name, a NUL byte, or more than
    /// 63 bytes (nothing is sent); [`OrmError::Closed`] after the listener
    /// has stopped.
    ///
    /// # Cancel safety
    /// If cancelled, the channel may or may not be listened to; it is listed
    /// by [`channels`](Self::channels) either way.
    pub async fn listen(&self, channel: &str) -> OrmResult<()> {
        validate_channel(channel)?;
        let channel = channel.to_owned();
        self.command(ChannelCommand::Listen {
            channel,
            remember: true,
        })
        .await
    }

    /// Stops listening to `channel`. Notifications of that channel already
    /// queued are still delivered.
    ///
    /// # Errors
    /// As [`listen`](Self::listen).
    pub async fn unlisten(&self, channel: &str) -> OrmResult<()> {
        validate_channel(channel)?;
        self.command(ChannelCommand::Unlisten(channel.to_owned()))
            .await
    }

    /// What the server says this listener's session listens to
    /// (`pg_listening_channels()` run on the listener's own connection): a
    /// diagnostic to compare with [`channels`](Self::channels).
    ///
    /// # Errors
    /// [`OrmError::Closed`] while reconnecting or after the listener has
    /// stopped; the query's error otherwise.
    pub async fn server_channels(&self) -> OrmResult<Vec<String>> {
        server_channels(&*self.commands()?).await
    }

    /// Stops listening to every channel.
    ///
    /// # Errors
    /// [`OrmError::Closed`] after the listener has stopped.
    pub async fn unlisten_all(&self) -> OrmResult<()> {
        self.command(ChannelCommand::UnlistenAll).await
    }

    async fn command(&self, change: ChannelCommand) -> OrmResult<()> {
        let (reply, answer) = oneshot::channel();
        self.commands()?
            .send(Command::Channels(change, reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    fn commands(&self) -> OrmResult<Arc<mpsc::Sender<Command>>> {
        self.commands.upgrade().ok_or_else(stopped)
    }

    /// Where the connection stands now.
    pub fn state(&self) -> ListenerState {
        self.shared.state()
    }

    /// Counters since the listener was created. Seen from a handle, what the
    /// consumer has taken into its batch counts as delivered.
    pub fn stats(&self) -> ListenerStats {
        self.stats_with(self.queue.counts())
    }

    fn stats_with(&self, counts: Counts) -> ListenerStats {
        ListenerStats {
            received: counts.received,
            delivered: counts.delivered,
            dropped: counts.dropped,
            reconnects: self
                .shared
                .reconnects
                .load(std::sync::atomic::Ordering::Relaxed),
            queued: counts.queued,
            hook_panics: self.hooks.panics(),
        }
    }

    /// The channels listened to (or to be listened to again after a
    /// reconnect), sorted.
    pub fn channels(&self) -> Vec<String> {
        self.shared.channels()
    }
}

fn stopped() -> OrmError {
    OrmError::closed("the listener has stopped")
}

/// Asks a driver for `pg_listening_channels()` of its session.
pub(crate) async fn server_channels(commands: &mpsc::Sender<Command>) -> OrmResult<Vec<String>> {
    let (reply, answer) = oneshot::channel();
    let stopped = || OrmError::closed("the listener has stopped");
    commands
        .send(Command::ServerChannels(reply))
        .await
        .map_err(|_| stopped())?;
    let mut channels = answer.await.map_err(|_| stopped())??;
    channels.sort();
    Ok(channels)
}

/// Polls `poll_event` until it gives something other than a marker.
#[inline]
pub(crate) fn skip_markers<N>(
    mut poll_event: impl FnMut() -> Poll<Option<OrmResult<ListenerEvent<N>>>>,
) -> Poll<Option<OrmResult<N>>> {
    loop {
        return match poll_event() {
            Poll::Ready(Some(Ok(ListenerEvent::Notification(notification)))) => {
                Poll::Ready(Some(Ok(notification)))
            }
            Poll::Ready(Some(Ok(_marker))) => continue,
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        };
    }
}

/// A [`PgListener`] as a [`Stream`], from [`PgListener::into_stream`].
///
/// Yields `OrmResult<PgNotification>` (markers skipped), or
/// `OrmResult<ListenerEvent>` after [`events`](Self::events). Dropping the
/// stream drops the listener.
#[derive(Debug)]
pub struct PgListenerStream {
    listener: PgListener,
}

impl PgListenerStream {
    /// The same listener as a stream of [`ListenerEvent`]s, markers
    /// included.
    pub fn events(self) -> PgListenerEventStream {
        PgListenerEventStream {
            listener: self.listener,
        }
    }

    /// The listener behind the stream, for `listen`, `state` or `stats`.
    pub fn listener(&self) -> &PgListener {
        &self.listener
    }

    /// Turns the stream back into the listener.
    pub fn into_inner(self) -> PgListener {
        self.listener
    }
}

impl Stream for PgListenerStream {
    type Item = OrmResult<PgNotification>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let receiver = &mut self.get_mut().listener.receiver;
        skip_markers(|| receiver.poll_next(cx))
    }
}

/// A [`PgListener`] as a [`Stream`] of [`ListenerEvent`]s, from
/// [`PgListenerStream::events`].
#[derive(Debug)]
pub struct PgListenerEventStream {
    listener: PgListener,
}

impl PgListenerEventStream {
    /// The listener behind the stream.
    pub fn listener(&self) -> &PgListener {
        &self.listener
    }
}

impl Stream for PgListenerEventStream {
    type Item = OrmResult<ListenerEvent>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().listener.receiver.poll_next(cx)
    }
}

impl PgClient {
    /// A listener on a dedicated connection with this client's settings and
    /// TLS, and the default [`PgListenerConfig`]. It takes no pool slot.
    ///
    /// # Errors
    /// As [`PgListener::connect`].
    pub async fn listener(&self) -> OrmResult<PgListener> {
        self.listener_with(PgListenerConfig::default()).await
    }

    /// A listener on a dedicated connection with this client's settings and
    /// TLS, and `config`. It takes no pool slot.
    ///
    /// # Errors
    /// As [`PgListener::connect_with`].
    pub async fn listener_with(&self, config: PgListenerConfig) -> OrmResult<PgListener> {
        PgListener::start(self.connector(), self.pg_config().clone(), config).await
    }
}
