//! The connection driver: one background task that owns a dedicated
//! connection and does all its I/O. It serves commands (listen, unlisten,
//! close), reads notifications in batches into a [`Sink`], and reconnects.
//! Front ends (the listener, the hub) only talk to it through a command
//! channel and the sink. Opening a session is [`session`]'s job, the health
//! check [`health`]'s.
//!
//! [`session`]: crate::listen::session
//! [`health`]: crate::listen::health

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Sleep;
use tokio_postgres::Config;

use crate::connect::Connector;
use crate::error::{OrmError, OrmResult};
use crate::listen::command::{ended_abnormally, Command, DriverShared};
use crate::listen::config::{
    Jitter, PgListenerConfig, DEFAULT_APPLICATION_NAME, DEFAULT_CONNECT_TIMEOUT,
};
use crate::listen::event::{ListenerEvent, ListenerState, RawEvent};
use crate::listen::health::{Check, HealthCheck, HEALTH_CHECK};
use crate::listen::hooks::HookSlot;
use crate::listen::session::{
    open_session, read_notifications, Opened, Opening, OperationKind, Session,
};
use crate::listen::sink::{Pushed, Sink};
use crate::listen::trace;

/// How many notifications one wake-up reads before it hands them over and
/// lets other tasks (the consumer) run.
const MAX_BATCH: usize = 256;

/// How long closing may spend on `UNLISTEN` and the goodbye to the server.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A started driver: the handle's half.
pub(crate) struct DriverHandle {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) shared: Arc<DriverShared>,
    pub(crate) hooks: HookSlot,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

/// Applies the listener's defaults to the connection settings, where neither
/// the configuration nor the URL says otherwise: a setting given in the URL
/// stands unless the configuration sets it explicitly.
fn apply_defaults(pg_config: &mut Config, config: &PgListenerConfig) {
    match &config.application_name {
        Some(name) => {
            pg_config.application_name(name);
        }
        None if pg_config.get_application_name().is_none() => {
            pg_config.application_name(DEFAULT_APPLICATION_NAME);
        }
        None => {}
    }
    match config.connect_timeout {
        Some(timeout) => {
            pg_config.connect_timeout(timeout);
        }
        None if pg_config.get_connect_timeout().is_none() => {
            pg_config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        None => {}
    }
    // A listener sits idle for long stretches: probe sooner than the
    // kernel's two hours, unless the URL tuned keepalives (or turned them
    // off) itself.
    let untuned = pg_config.get_keepalives_idle() == Config::new().get_keepalives_idle()
        && pg_config.get_keepalives_interval().is_none()
        && pg_config.get_keepalives_retries().is_none();
    if pg_config.get_keepalives() && untuned {
        pg_config
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
    }
}

/// Opens the first session (its errors go to the caller), then runs the
/// driver in a background task.
pub(crate) async fn start(
    connector: Arc<dyn Connector>,
    mut pg_config: Config,
    config: PgListenerConfig,
    sink: Arc<dyn Sink>,
) -> OrmResult<DriverHandle> {
    config.validate()?;
    apply_defaults(&mut pg_config, &config);
    let shared = Arc::new(DriverShared::new(config.channels.iter().cloned()));
    let (commands, receiver) = mpsc::channel(64);
    let hooks = config.hooks.clone();
    let mut driver = Driver {
        opening: Arc::new(Opening {
            connector,
            timeout: pg_config
                .get_connect_timeout()
                .copied()
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            pg_config,
            shared: shared.clone(),
            health_interval: config.health_interval,
            on_connect: config.on_connect.clone(),
        }),
        health: HealthCheck {
            interval: config.health_interval,
            timeout: config.health_timeout,
        },
        config,
        commands: receiver,
        shared: shared.clone(),
        sink,
        pending: VecDeque::new(),
        blocked: None,
        jitter: Jitter::new(),
    };
    let session = match driver.connect(None).await {
        Ok(session) => session,
        Err(stop) => {
            shared.set_state(ListenerState::Closed);
            return Err(match stop {
                Stop::GaveUp(error) => error,
                // No handle exists yet to close or drop.
                Stop::Close(_) | Stop::HandleDropped => OrmError::closed("closed while connecting"),
            });
        }
    };
    driver.hooks().call(|hooks| hooks.on_connect());
    // The guard is made before the task first runs: a task dropped before
    // it was ever polled (its runtime went away) ends the queues too.
    let guard = EndGuard {
        sink: driver.sink.clone(),
        shared: shared.clone(),
        stopped: false,
    };
    let task = tokio::spawn(driver.run(session, guard));
    Ok(DriverHandle {
        commands,
        shared,
        hooks,
        task,
    })
}

struct Driver {
    opening: Arc<Opening>,
    health: HealthCheck,
    config: PgListenerConfig,
    commands: mpsc::Receiver<Command>,
    shared: Arc<DriverShared>,
    sink: Arc<dyn Sink>,
    /// Events read but not yet taken by the sink (a blocked `BlockProducer`
    /// queue), kept in order across reconnects.
    pending: VecDeque<RawEvent>,
    /// While the sink blocks: when the block times out.
    blocked: Option<Pin<Box<Sleep>>>,
    jitter: Jitter,
}

/// Why a connected session ended.
enum SessionEnd {
    Lost(OrmError),
    Close(oneshot::Sender<OrmResult<()>>),
    HandleDropped,
}

/// Why the driver stopped while disconnected.
enum Stop {
    Close(oneshot::Sender<OrmResult<()>>),
    HandleDropped,
    GaveUp(OrmError),
}

/// Finishes the sink with an error and marks the driver closed if the
/// driver task ends any other way than through [`Driver::stop`]: a panic,
/// or its runtime shutting down. Nothing ever hangs a consumer.
struct EndGuard {
    sink: Arc<dyn Sink>,
    shared: Arc<DriverShared>,
    stopped: bool,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if !self.stopped {
            self.shared.end_abnormally();
            self.sink.finish(Some(ended_abnormally()));
        }
    }
}

impl Driver {
    fn hooks(&self) -> &HookSlot {
        &self.config.hooks
    }

    async fn run(mut self, session: Session, mut guard: EndGuard) {
        self.serve(session).await;
        guard.stopped = true;
    }

    /// Serves sessions until closed, dropped, or out of reconnect attempts;
    /// then stops.
    async fn serve(&mut self, mut session: Session) {
        loop {
            let end = std::future::poll_fn(|cx| self.poll_session(&mut session, cx)).await;
            let cause = match end {
                SessionEnd::Close(reply) => {
                    let result = session.close(true, CLOSE_TIMEOUT).await;
                    self.stop(None);
                    let _ = reply.send(result);
                    return;
                }
                SessionEnd::HandleDropped => {
                    let _ = session.close(false, CLOSE_TIMEOUT).await;
                    self.stop(None);
                    return;
                }
                SessionEnd::Lost(cause) => cause,
            };
            trace!(warn, "listener connection lost: {cause}");
            self.hooks().call(|hooks| hooks.on_disconnect(&cause));
            // Only a session the health check gave up can have a backend the
            // server does not know is abandoned.
            let abandoned = matches!(
                cause,
                OrmError::Timeout {
                    operation: HEALTH_CHECK,
                    ..
                }
            );
            let earlier = session
                .backend
                .clone()
                .filter(|_| abandoned && self.config.end_abandoned_backends);
            session.release();
            self.blocked = None;
            match self.connect(Some(cause)).await {
                Ok(new_session) => {
                    session = new_session;
                    if let Some(earlier) = earlier {
                        session.terminate(earlier, self.health.timeout);
                    }
                }
                Err(Stop::Close(reply)) => {
                    self.stop(None);
                    let _ = reply.send(Ok(()));
                    return;
                }
                Err(Stop::HandleDropped) => {
                    self.stop(None);
                    return;
                }
                Err(Stop::GaveUp(error)) => {
                    trace!(error, "listener gave up: {error}");
                    self.stop(Some(error));
                    return;
                }
            }
        }
    }

    fn stop(&mut self, error: Option<OrmError>) {
        self.shared.set_state(ListenerState::Closed);
        // What a blocked sink did not take yet was read before the end: hand
        // it over, dropping the oldest (counted and marked) if the queue is
        // still full.
        self.sink.fall_back_to_dropping();
        self.push_pending(Waker::noop());
        self.sink.finish(error);
        // Commands already queued get an answer, not a dropped reply (which
        // a handle would take for an abnormal end): another close finds the
        // listener closed; anything else, stopped.
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            let stopped = || OrmError::closed("the listener has stopped");
            match command {
                Command::Close(reply) => {
                    let _ = reply.send(Ok(()));
                }
                Command::Channels(_, reply) => {
                    let _ = reply.send(Err(stopped()));
                }
                Command::ServerChannels(reply) => {
                    let _ = reply.send(Err(stopped()));
                }
                Command::Sync => {}
            }
        }
    }

    /// Opens a session: the first (`cause` is `None`) with one attempt
    /// unless the configuration retries it, a reconnect until it works,
    /// gives up, or is told to stop. The first reconnect attempt is
    /// immediate, then the delay backs off.
    async fn connect(&mut self, cause: Option<OrmError>) -> Result<Session, Stop> {
        let first = cause.is_none();
        let retry = if first {
            self.config.retry_first_connect
        } else {
            self.config.reconnect
        };
        if !first {
            self.shared.set_state(ListenerState::Reconnecting);
        }
        let mut last_error = match cause {
            Some(cause) if !retry => {
                return Err(Stop::GaveUp(OrmError::Disconnected {
                    attempts: 0,
                    cause: Box::new(cause),
                }))
            }
            cause => cause,
        };
        let generation = if first {
            0
        } else {
            self.shared.reconnects.load(Ordering::Acquire) + 1
        };
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            if let Some(max) = self.config.max_reconnect_attempts {
                if attempt > max {
                    if let Some(cause) = last_error.take() {
                        return Err(Stop::GaveUp(OrmError::Disconnected {
                            attempts: max,
                            cause: Box::new(cause),
                        }));
                    }
                }
            }
            let delay = self.config.backoff_delay(attempt, self.jitter.next());
            if !first {
                trace!(debug, "listener reconnect attempt {attempt} in {delay:?}");
                self.hooks()
                    .call(|hooks| hooks.on_reconnect_attempt(attempt, delay));
            }
            if !delay.is_zero() {
                self.while_disconnected(tokio::time::sleep(delay)).await?;
            }
            let opening = open_session(self.opening.clone(), generation);
            let error = match self.while_disconnected(opening).await? {
                Ok(opened) => return Ok(self.connected(opened, first, attempt)),
                Err(error) => error,
            };
            trace!(debug, "listener connect attempt {attempt} failed: {error}");
            if first && !retry {
                return Err(Stop::GaveUp(error));
            }
            last_error = Some(error);
        }
    }

    /// A session is open and listening: state, marker, early notifications.
    fn connected(&mut self, opened: Opened, first: bool, attempt: u32) -> Session {
        let Opened { session, early } = opened;
        self.shared.set_state(ListenerState::Connected);
        if first {
            trace!(
                info,
                "listener connected to {}",
                crate::connect::describe_target(&self.opening.pg_config)
            );
        } else {
            let generation = self.shared.reconnects.fetch_add(1, Ordering::AcqRel) + 1;
            // Only now, with every LISTEN in place: a consumer that resyncs
            // on the marker cannot race the re-subscription.
            self.pending
                .push_back(ListenerEvent::Reconnected { generation });
            trace!(
                info,
                "listener reconnected (generation {generation}, attempt {attempt})"
            );
            self.hooks()
                .call(|hooks| hooks.on_reconnect(generation, attempt));
        }
        self.take_in(early);
        session
    }

    /// Adds notifications read off the connection to what waits for the
    /// sink, telling the hooks about each.
    fn take_in(&mut self, mut events: VecDeque<RawEvent>) {
        self.tell_hooks(&events, 0);
        self.pending.append(&mut events);
    }

    /// `on_notification` for every notification of `events[from..]`, each
    /// call contained on its own.
    fn tell_hooks(&self, events: &VecDeque<RawEvent>, from: usize) {
        if !self.hooks().is_set() {
            return;
        }
        for event in events.range(from..) {
            if let ListenerEvent::Notification(notification) = event {
                // The hooks see the public, owned form (made only for them).
                let notification = notification.to_notification();
                self.hooks()
                    .call(|hooks| hooks.on_notification(&notification));
            }
        }
    }

    /// Runs `future` while serving commands and handing pending events to
    /// the sink, as the connection is down.
    async fn while_disconnected<F: Future>(&mut self, future: F) -> Result<F::Output, Stop> {
        let mut future = std::pin::pin!(future);
        std::future::poll_fn(|cx| {
            if !self.pending.is_empty() {
                self.push_pending(cx.waker());
            }
            loop {
                match self.commands.poll_recv(cx) {
                    Poll::Ready(Some(Command::Channels(change, reply))) => {
                        change.record(&mut self.shared.lock_channels());
                        let _ = reply.send(Ok(()));
                    }
                    // The reconnect listens to the wanted set as it is then.
                    Poll::Ready(Some(Command::Sync)) => {}
                    Poll::Ready(Some(Command::ServerChannels(reply))) => {
                        let _ = reply.send(Err(OrmError::closed(
                            "the connection is down; the listener is reconnecting",
                        )));
                    }
                    Poll::Ready(Some(Command::Close(reply))) => {
                        return Poll::Ready(Err(Stop::Close(reply)));
                    }
                    Poll::Ready(None) => return Poll::Ready(Err(Stop::HandleDropped)),
                    Poll::Pending => break,
                }
            }
            future.as_mut().poll(cx).map(Ok)
        })
        .await
    }

    /// One wake-up of a connected session: commands, then the socket, then
    /// the statements in flight and the health check.
    fn poll_session(&mut self, session: &mut Session, cx: &mut Context<'_>) -> Poll<SessionEnd> {
        loop {
            match self.commands.poll_recv(cx) {
                Poll::Ready(Some(Command::Channels(change, reply))) => {
                    let added = change.record(&mut self.shared.lock_channels());
                    let sql = change.statement(&mut session.listening);
                    session.start(sql, OperationKind::Command { reply, added });
                }
                Poll::Ready(Some(Command::Sync)) => {
                    session.sync(&self.shared.lock_channels());
                }
                Poll::Ready(Some(Command::ServerChannels(reply))) => session.server_channels(reply),
                Poll::Ready(Some(Command::Close(reply))) => {
                    return Poll::Ready(SessionEnd::Close(reply))
                }
                Poll::Ready(None) => return Poll::Ready(SessionEnd::HandleDropped),
                Poll::Pending => break,
            }
        }
        if self.shared.take_sync_request() {
            session.sync(&self.shared.lock_channels());
        }
        // New statements are polled once before the socket so that their
        // requests go out in this wake-up (or, while the tap still holds a
        // wake-up's budget of lifted notifications and the connection is
        // not polled, in one of the next few).
        let health = session.poll_operations(&self.shared, cx);
        if let Some(end) = self.poll_health(session, health, cx) {
            return Poll::Ready(end);
        }

        // A BlockProducer queue that is full stops the reading, unless a
        // statement waits for its reply behind notifications: then read on
        // (what arrives waits beyond the queue's capacity) until it comes,
        // so that a consumer's own listen() cannot deadlock it.
        if !self.flush_pending(cx) && !session.has_operations() {
            return Poll::Pending;
        }
        let before = self.pending.len();
        let (read, end) = read_notifications(
            session.connection.as_mut(),
            &mut self.pending,
            MAX_BATCH,
            cx,
        );
        if read > 0 {
            self.tell_hooks(&self.pending, before);
            self.flush_pending(cx);
        }
        if let Some(end) = end {
            return Poll::Ready(SessionEnd::Lost(end));
        }
        let health = session.poll_operations(&self.shared, cx);
        match self.poll_health(session, health, cx) {
            Some(end) => Poll::Ready(end),
            None => Poll::Pending,
        }
    }

    fn poll_health(
        &mut self,
        session: &mut Session,
        mut finished: Option<Result<(), tokio_postgres::Error>>,
        cx: &mut Context<'_>,
    ) -> Option<SessionEnd> {
        // Paused while a full queue keeps the driver from reading; not while
        // it reads on for a statement's reply, which a dead path would never
        // bring.
        let paused = self.blocked.is_some() && !session.has_operations();
        loop {
            match self.health.poll(&mut session.health, finished, paused, cx) {
                Check::Wait => return None,
                Check::Lost(error) => return Some(SessionEnd::Lost(error)),
                Check::Start => {
                    session.start(String::new(), OperationKind::Health);
                    // Poll the new statement (sends it), then arm the
                    // deadline.
                    finished = session.poll_operations(&self.shared, cx);
                }
            }
        }
    }

    /// Hands pending events to the sink, then tells the hooks what its
    /// policies dropped (with no lock held).
    fn push_pending(&mut self, producer: &Waker) -> Pushed {
        let mut drops = Vec::new();
        let pushed = self
            .sink
            .push_batch(&mut self.pending, producer, &mut drops);
        for dropped in drops {
            trace!(
                warn,
                "listener queue full: dropped {} notifications",
                dropped.count
            );
            self.hooks()
                .call(|hooks| hooks.on_drop(dropped.channel.as_deref(), dropped.count));
        }
        pushed
    }

    /// Hands pending events to the sink. Returns `false` while a
    /// `BlockProducer` queue refuses them, handling the block timeout.
    fn flush_pending(&mut self, cx: &mut Context<'_>) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        loop {
            let before = self.pending.len();
            let pushed = self.push_pending(cx.waker());
            if pushed == Pushed::All {
                self.blocked = None;
                return true;
            }
            if self.pending.len() < before {
                // The consumer made room: the block timeout measures a
                // consumer that takes nothing, not one that keeps up.
                self.blocked = None;
            }
            let timeout = self.config.block_timeout;
            let deadline = self
                .blocked
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
            if deadline.as_mut().poll(cx).is_pending() {
                return false;
            }
            trace!(
                warn,
                "listener consumer blocked the connection for {timeout:?}: dropping the oldest until it catches up"
            );
            self.hooks().call(|hooks| hooks.on_block_timeout(timeout));
            self.sink.fall_back_to_dropping();
            self.blocked = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(url: &str, config: PgListenerConfig) -> Config {
        let mut pg_config: Config = url.parse().unwrap();
        apply_defaults(&mut pg_config, &config);
        pg_config
    }

    #[test]
    fn a_url_setting_stands_unless_the_config_sets_it() {
        let url = "postgres://u@h/d?application_name=from_url&connect_timeout=3";
        let from_url = applied(url, PgListenerConfig::new());
        assert_eq!(from_url.get_application_name(), Some("from_url"));
        assert_eq!(
            from_url.get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );

        let config = PgListenerConfig::new()
            .application_name("from_config")
            .connect_timeout(Duration::from_secs(7));
        let from_config = applied(url, config);
        assert_eq!(from_config.get_application_name(), Some("from_config"));
        assert_eq!(
            from_config.get_connect_timeout(),
            Some(&Duration::from_secs(7))
        );

        let neither = applied("postgres://u@h/d", PgListenerConfig::new());
        assert_eq!(
            neither.get_application_name(),
            Some(DEFAULT_APPLICATION_NAME)
        );
        assert_eq!(
            neither.get_connect_timeout(),
            Some(&DEFAULT_CONNECT_TIMEOUT)
        );
    }

    #[test]
    fn keepalives_tuned_in_the_url_stand_and_untuned_ones_get_the_listener_defaults() {
        let tuned = applied(
            "postgres://u@h/d?keepalives_idle=30&keepalives_interval=2",
            PgListenerConfig::new(),
        );
        assert_eq!(tuned.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(
            tuned.get_keepalives_interval(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(tuned.get_keepalives_retries(), None);

        let off = applied("postgres://u@h/d?keepalives=0", PgListenerConfig::new());
        assert!(!off.get_keepalives());
        assert_eq!(off.get_keepalives_interval(), None);

        let untuned = applied("postgres://u@h/d", PgListenerConfig::new());
        assert_eq!(untuned.get_keepalives_idle(), Duration::from_secs(10));
        assert_eq!(
            untuned.get_keepalives_interval(),
            Some(Duration::from_secs(5))
        );
        assert_eq!(untuned.get_keepalives_retries(), Some(3));
    }
}
