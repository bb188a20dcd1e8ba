//! Listener settings ([`PgListenerConfig`], [`QueuePolicy`]) and the
//! reconnect backoff they describe.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{OrmResult, ValidationError};
use crate::listen::channel::validate_channel;
use crate::listen::hooks::{HookSlot, ListenerHooks};

/// What a full queue does with the next notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueuePolicy {
    /// Discard the oldest queued notification to make room (the default).
    /// The consumer sees the newest state, and a `Lagged` marker where the
    /// gap is.
    #[default]
    DropOldest,
    /// Discard the incoming notification. The consumer sees everything up to
    /// the gap, then a `Lagged` marker, then what came after.
    DropNewest,
    /// Stop reading the connection until the consumer makes room: nothing is
    /// dropped. Because a listener that stops reading holds back the
    /// server's notification queue for the whole cluster, a block that lasts
    /// longer than [`PgListenerConfig::block_timeout`] falls back to
    /// [`DropOldest`](QueuePolicy::DropOldest) until the consumer has drained
    /// half the queue.
    ///
    /// While a statement of the listener's own waits for its reply (a
    /// `listen`/`unlisten` from the consumer, the health check), the listener
    /// reads on even when blocked, so that the consumer can change its
    /// channels with a full queue: notifications that arrive ahead of the
    /// reply wait beyond the queue's capacity until the queue takes them.
    BlockProducer,
}

/// Settings of a [`PgListener`](crate::listen::PgListener) (and of a hub).
///
/// Built with `PgListenerConfig::new()` and `#[must_use]` builder methods;
/// each default is documented on its method. Invalid values are reported
/// when the listener is created, as [`OrmError::Validation`](crate::OrmError::Validation).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PgListenerConfig {
    pub(crate) channels: Vec<String>,
    pub(crate) queue_capacity: usize,
    pub(crate) queue_policy: QueuePolicy,
    pub(crate) block_timeout: Duration,
    pub(crate) reconnect: bool,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) max_reconnect_attempts: Option<u32>,
    pub(crate) health_interval: Duration,
    pub(crate) health_timeout: Duration,
    /// Set explicitly; else the URL's, else [`DEFAULT_CONNECT_TIMEOUT`].
    pub(crate) connect_timeout: Option<Duration>,
    /// Set explicitly; else the URL's, else `"pgorm-listener"`.
    pub(crate) application_name: Option<String>,
    pub(crate) retry_first_connect: bool,
    pub(crate) end_abandoned_backends: bool,
    pub(crate) on_connect: Option<OnConnect>,
    pub(crate) hooks: HookSlot,
}

/// How long opening a connection may take when neither the configuration
/// nor the URL (`connect_timeout`) says.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The application name of a listener's session when neither the
/// configuration nor the URL (`application_name`) says.
pub const DEFAULT_APPLICATION_NAME: &str = "pgorm-listener";

/// The error a callback returns.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What an `on_connect` callback returns, boxed.
pub(crate) type OnConnectFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

/// A stored `on_connect` callback; `Debug` does not show it.
#[derive(Clone)]
pub(crate) struct OnConnect(
    pub(crate) Arc<dyn Fn(ListenerSession) -> OnConnectFuture + Send + Sync>,
);

impl std::fmt::Debug for OnConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnConnect(..)")
    }
}

/// What an [`on_connect`](PgListenerConfig::on_connect) callback gets: the
/// listener's new session, already listening to every channel, before any of
/// its notifications is handed out.
///
/// [`client`](Self::client) queries on the listener's own connection (for
/// instance, to load what changed while it was away). Drop the value when
/// the callback is done: the connection cannot close while it is held.
pub struct ListenerSession {
    client: Arc<tokio_postgres::Client>,
    generation: u64,
}

impl std::fmt::Debug for ListenerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerSession")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl ListenerSession {
    pub(crate) fn new(client: Arc<tokio_postgres::Client>, generation: u64) -> Self {
        ListenerSession { client, generation }
    }

    /// A client on the listener's own connection. Statements on it run
    /// between the session's `LISTEN`s and its first notification.
    pub fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }

    /// 0 for the first session; then the reconnect generation that this
    /// session's [`Reconnected`](crate::listen::ListenerEvent::Reconnected)
    /// marker will carry.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// The default queue capacity: enough for what one large transaction
/// commits at once, arriving in a single read.
pub const DEFAULT_QUEUE_CAPACITY: usize = 32_768;

impl Default for PgListenerConfig {
    fn default() -> Self {
        PgListenerConfig {
            channels: Vec::new(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            queue_policy: QueuePolicy::DropOldest,
            block_timeout: Duration::from_secs(30),
            reconnect: true,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            max_reconnect_attempts: None,
            health_interval: Duration::from_secs(10),
            health_timeout: Duration::from_secs(5),
            connect_timeout: None,
            application_name: None,
            retry_first_connect: false,
            end_abandoned_backends: true,
            on_connect: None,
            hooks: HookSlot::default(),
        }
    }
}

impl PgListenerConfig {
    /// The defaults, as documented on each method.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Channels to listen to as soon as the connection is up (default none).
    #[must_use]
    pub fn channels(mut self, channels: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.channels.extend(channels.into_iter().map(Into::into));
        self
    }

    /// How many notifications may wait for the consumer (default
    /// [`DEFAULT_QUEUE_CAPACITY`], 32 768). The consumer takes up to 256 at
    /// a time into a buffer of its own, so memory stays below (capacity +
    /// 256) times the size of a notification, whatever the burst. At least 1.
    #[must_use]
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    /// What a full queue does (default [`QueuePolicy::DropOldest`]).
    #[must_use]
    pub fn queue_policy(mut self, policy: QueuePolicy) -> Self {
        self.queue_policy = policy;
        self
    }

    /// With [`QueuePolicy::BlockProducer`], how long a full queue may go
    /// without the consumer taking anything before the listener falls back
    /// to dropping the oldest (default 30 s). A consumer that keeps taking,
    /// however slowly, restarts the wait.
    #[must_use]
    pub fn block_timeout(mut self, timeout: Duration) -> Self {
        self.block_timeout = timeout;
        self
    }

    /// Whether to reconnect after the connection is lost (default `true`).
    /// With `false`, the consumer receives one error saying why, then `None`.
    #[must_use]
    pub fn reconnect(mut self, reconnect: bool) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// Bounds of the delay between failed reconnect attempts (default
    /// 100 ms to 10 s). The first attempt after a loss is immediate; each
    /// failure doubles the delay, up to `max`, with random jitter of up to
    /// half the delay.
    #[must_use]
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// How many consecutive failed reconnect attempts to make before giving
    /// up with an error (default `None`: forever, with the delay capped by
    /// [`backoff`](Self::backoff)).
    #[must_use]
    pub fn max_reconnect_attempts(mut self, attempts: Option<u32>) -> Self {
        self.max_reconnect_attempts = attempts;
        self
    }

    /// Every `interval`, a lightweight round trip checks the connection; no
    /// reply within `timeout` counts as a lost connection (default 10 s and
    /// 5 s). This finds half-open connections that TCP keepalives (also set)
    /// would find only much later. Paused while a `BlockProducer` listener
    /// waits for its consumer.
    #[must_use]
    pub fn health_check(mut self, interval: Duration, timeout: Duration) -> Self {
        self.health_interval = interval;
        self.health_timeout = timeout;
        self
    }

    /// How long opening a connection (connect, log in, `LISTEN` to every
    /// channel) may take, and separately how long the
    /// [`on_connect`](Self::on_connect) callback may run. Default: the URL's
    /// `connect_timeout` if it has one, else [`DEFAULT_CONNECT_TIMEOUT`]
    /// (10 s); set here, it overrides the URL's.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// The `application_name` the listener's session shows in
    /// `pg_stat_activity`. Default: the URL's `application_name` if it has
    /// one, else [`DEFAULT_APPLICATION_NAME`] (`"pgorm-listener"`); set here,
    /// it overrides the URL's.
    #[must_use]
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// Whether a failed first connect is retried with the reconnect backoff
    /// (and [`max_reconnect_attempts`](Self::max_reconnect_attempts)) instead
    /// of failing at once (default `false`: a wrong URL or password fails
    /// `connect` straight away). Every error is retried, a refused login
    /// included; `connect` returns once a session is up, or with
    /// [`OrmError::Disconnected`](crate::OrmError::Disconnected) when the
    /// attempts run out.
    #[must_use]
    pub fn retry_first_connect(mut self, retry: bool) -> Self {
        self.retry_first_connect = retry;
        self
    }

    /// Whether, after the health check gave a session up and a new one is
    /// up, the listener ends the old session's backend if the server still
    /// has it (default `true`). A path that died without a FIN or RST leaves
    /// the backend alive for as long as the server's own keepalives allow
    /// (hours by default), holding its `LISTEN`s and pinning the cluster's
    /// notification queue. The backend is matched by process id, start time,
    /// and an idle state unchanged since before the check failed; ending it
    /// needs the right to signal it (the same role, or `pg_signal_backend`).
    /// Turn it off when the listener connects through a session-mode pooler,
    /// which hands a backend on to other clients.
    #[must_use]
    pub fn end_abandoned_backends(mut self, end: bool) -> Self {
        self.end_abandoned_backends = end;
        self
    }

    /// An async callback that runs on every session of the listener (or
    /// hub), the first included: after every channel is listened to and
    /// before any notification of that session is handed out, with a client
    /// on the listener's own connection. The one place to (re)load state that
    /// notifications keep current: nothing committed after the callback's
    /// snapshot can be missed, since the session was already listening. (A
    /// hub listens to the channels of its subscriptions: on its first
    /// session it has none yet, so subscribe first and load after; on a
    /// reconnect the callback runs with every subscribed channel listened to.)
    ///
    /// It must finish within the [`connect_timeout`](Self::connect_timeout).
    /// An error, a panic or the timeout fails the session like a failed
    /// connect: the first `connect` returns
    /// [`OrmError::Callback`](crate::OrmError::Callback) (or
    /// [`OrmError::Timeout`](crate::OrmError::Timeout)), and a reconnect
    /// tries again after the backoff. Notifications that arrive while it runs
    /// are kept and handed out after it (and after the session's
    /// `Reconnected` marker).
    ///
    /// ```
    /// use pgorm::listen::{ListenerSession, PgListener, PgListenerConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> pgorm::OrmResult<()> {
    /// # let database_url = pgorm_testkit::TestServer::shared().url();
    /// let config = PgListenerConfig::new()
    ///     .channels(["prices"])
    ///     .on_connect(|session: ListenerSession| async move {
    ///         let row = session.client().query_one("SELECT 42", &[]).await?;
    ///         let answer: i32 = row.get(0);
    ///         println!("session {}: reloaded {answer} prices", session.generation());
    ///         Ok::<_, tokio_postgres::Error>(())
    ///     });
    /// let listener = PgListener::connect_with(&database_url, config).await?;
    /// # listener.close().await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn on_connect<F, Fut, E>(mut self, callback: F) -> Self
    where
        F: Fn(ListenerSession) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.on_connect = Some(OnConnect(Arc::new(move |session| {
            let call = callback(session);
            Box::pin(async move { call.await.map_err(Into::into) })
        })));
        self
    }

    /// Callbacks for connects, disconnects, reconnects, notifications,
    /// drops and handler failures (default none).
    #[must_use]
    pub fn hooks(mut self, hooks: impl ListenerHooks) -> Self {
        self.hooks = HookSlot::new(hooks);
        self
    }

    pub(crate) fn validate(&self) -> OrmResult<()> {
        let setting = |setting: &'static str, reason: &str| {
            Err(ValidationError::Setting {
                setting,
                reason: reason.to_string(),
            }
            .into())
        };
        for channel in &self.channels {
            validate_channel(channel)?;
        }
        if self.queue_capacity == 0 {
            return setting("queue_capacity", "must be at least 1");
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            return setting("backoff", "min must be above zero and at most max");
        }
        if self.health_interval.is_zero() || self.health_timeout.is_zero() {
            return setting("health_check", "interval and timeout must be above zero");
        }
        if self
            .connect_timeout
            .is_some_and(|timeout| timeout.is_zero())
        {
            return setting("connect_timeout", "must be above zero");
        }
        if self.block_timeout.is_zero() {
            return setting("block_timeout", "must be above zero");
        }
        if self.max_reconnect_attempts == Some(0) {
            return setting(
                "max_reconnect_attempts",
                "Some(0) would never reconnect; use reconnect(false)",
            );
        }
        Ok(())
    }

    /// The delay before reconnect attempt `attempt` (1-based): none for the
    /// first, then `min * 2^(attempt - 2)` capped at `max`, minus a random
    /// part of up to half, drawn from `jitter` (0.0 to 1.0).
    pub(crate) fn backoff_delay(&self, attempt: u32, jitter: f64) -> Duration {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        let doublings = (attempt - 2).min(31);
        let full = self
            .backoff_min
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_max);
        full.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// A small xorshift generator for backoff jitter; no need for a crate.
#[derive(Debug)]
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Jitter(seed | 1)
    }

    /// A number in `0.0..1.0`.
    pub(crate) fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PgListenerConfig {
        PgListenerConfig::new().backoff(Duration::from_millis(100), Duration::from_secs(2))
    }

    #[test]
    fn the_first_reconnect_attempt_is_immediate() {
        assert_eq!(config().backoff_delay(1, 0.0), Duration::ZERO);
    }

    #[test]
    fn backoff_doubles_from_min_and_stops_at_max() {
        let delays: Vec<u128> = (2..=8)
            .map(|attempt| config().backoff_delay(attempt, 0.0).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(
            config().backoff_delay(u32::MAX, 0.0),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn jitter_takes_off_at_most_half() {
        assert_eq!(config().backoff_delay(3, 1.0), Duration::from_millis(100));
        assert_eq!(config().backoff_delay(3, 0.5), Duration::from_millis(150));
    }

    #[test]
    fn jitter_values_stay_in_range_and_vary() {
        let mut jitter = Jitter(42);
        let values: Vec<f64> = (0..1000).map(|_| jitter.next()).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        assert!(values.iter().any(|v| *v < 0.1) && values.iter().any(|v| *v > 0.9));
    }

    #[test]
    fn invalid_settings_are_reported_by_name() {
        use crate::error::OrmError;
        let setting_of = |config: PgListenerConfig| match config.validate() {
            Err(OrmError::Validation(ValidationError::Setting { setting, .. })) => setting,
            other => panic!("expected a setting error, got {other:?}"),
        };
        assert_eq!(
            setting_of(PgListenerConfig::new().queue_capacity(0)),
            "queue_capacity"
        );
        assert_eq!(
            setting_of(
                PgListenerConfig::new().backoff(Duration::from_secs(2), Duration::from_secs(1))
            ),
            "backoff"
        );
        assert_eq!(
            setting_of(PgListenerConfig::new().max_reconnect_attempts(Some(0))),
            "max_reconnect_attempts"
        );
        assert!(matches!(
            PgListenerConfig::new().channels([""]).validate(),
            Err(OrmError::Validation(ValidationError::EmptyChannel))
        ));
        assert!(PgListenerConfig::new().validate().is_ok());
    }
}
