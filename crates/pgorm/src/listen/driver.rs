//! The connection driver: one background task that owns a dedicated
//! connection and does all its I/O. It serves commands (listen, unlisten,
//! close), reads notifications in batches into a [`Sink`], runs the health
//! check, and reconnects. Front ends (the listener, the hub) only talk to it
//! through a command channel and the sink.

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};
use tokio_postgres::{AsyncMessage, Client, Config};

use crate::connect::{Connector, RawConnection};
use crate::error::{OrmError, OrmResult};
use crate::listen::channel::quote_identifier;
use crate::listen::config::{Jitter, PgListenerConfig};
use crate::listen::event::{ListenerEvent, ListenerState, PgNotification};
use crate::listen::queue::Pushed;
use crate::listen::trace;

/// How many notifications one wake-up reads before it hands them over and
/// lets other tasks (the consumer) run.
const MAX_BATCH: usize = 256;

/// How long closing may spend on `UNLISTEN` and the goodbye to the server.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the driver puts what it reads.
pub(crate) trait Sink: Send + Sync + 'static {
    /// Takes events from the front of `batch`, applying queue policies.
    /// Returns [`Pushed::Blocked`] (leaving the rest in `batch`) when a
    /// `BlockProducer` queue is full; `producer` is woken when there is room.
    /// The second value is how many notifications were dropped.
    fn push_batch(&self, batch: &mut VecDeque<ListenerEvent>, producer: &Waker) -> (Pushed, u64);

    /// A block lasted longer than the block timeout: stop blocking.
    fn fall_back_to_dropping(&self);

    /// The driver has stopped; `error` says why, if it was not asked to.
    fn finish(&self, error: Option<OrmError>);
}

/// A request from a front end.
pub(crate) enum Command {
    /// A change to the channels listened to, answered once the server has
    /// acknowledged it (at once while disconnected: the reconnect applies it).
    Channels(ChannelCommand, oneshot::Sender<OrmResult<()>>),
    /// Bring the server's LISTEN set in line with the wanted channels (sent
    /// by a hub when a channel's last subscription is dropped).
    Sync,
    /// `pg_listening_channels()` of the driver's own session.
    ServerChannels(oneshot::Sender<OrmResult<Vec<String>>>),
    Close(oneshot::Sender<OrmResult<()>>),
}

/// A change to the channels listened to.
pub(crate) enum ChannelCommand {
    /// `LISTEN`. With `remember`, the channel is also added to the wanted
    /// set (a listener); without, the caller manages that set (a hub).
    Listen {
        channel: String,
        remember: bool,
    },
    Unlisten(String),
    UnlistenAll,
}

impl ChannelCommand {
    /// Records the change in the wanted set. Returns the channel if this
    /// added it, so that a refused `LISTEN` can take it out again.
    fn record(&self, wanted: &mut BTreeSet<String>) -> Option<String> {
        match self {
            ChannelCommand::Listen {
                channel,
                remember: true,
            } => wanted.insert(channel.clone()).then(|| channel.clone()),
            ChannelCommand::Listen { .. } => None,
            ChannelCommand::Unlisten(channel) => {
                wanted.remove(channel);
                None
            }
            ChannelCommand::UnlistenAll => {
                wanted.clear();
                None
            }
        }
    }

    /// Records the change in what `listening` says the session listens to
    /// and returns the statement that makes it. A `LISTEN` is sent even when
    /// already listening: its reply must wait for an acknowledgement, which
    /// an earlier `LISTEN` still in flight may not have had yet.
    fn statement(self, listening: &mut BTreeSet<String>) -> String {
        match self {
            ChannelCommand::Listen { channel, .. } => {
                let sql = format!("LISTEN {}", quote_identifier(&channel));
                listening.insert(channel);
                sql
            }
            ChannelCommand::Unlisten(channel) => {
                let sql = format!("UNLISTEN {}", quote_identifier(&channel));
                listening.remove(&channel);
                sql
            }
            ChannelCommand::UnlistenAll => {
                listening.clear();
                "UNLISTEN *".to_string()
            }
        }
    }
}

/// What the driver and its front end share.
pub(crate) struct DriverShared {
    state: AtomicU8,
    pub(crate) received: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    /// The channels the listener should be listening to: kept across
    /// reconnects, changed at once by commands.
    channels: Mutex<BTreeSet<String>>,
    /// A [`Command::Sync`] could not be queued (the channel was full); the
    /// driver syncs after draining its commands.
    sync_requested: AtomicBool,
}

impl DriverShared {
    pub(crate) fn state(&self) -> ListenerState {
        ListenerState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, state: ListenerState) {
        self.state.store(state.to_u8(), Ordering::Release);
    }

    pub(crate) fn channels(&self) -> Vec<String> {
        self.lock_channels().iter().cloned().collect()
    }

    /// Changes the wanted channels from outside the driver (a hub) and asks
    /// the driver to apply the change, without waiting for it.
    pub(crate) fn update_channels(
        &self,
        commands: &mpsc::Sender<Command>,
        change: impl FnOnce(&mut BTreeSet<String>),
    ) {
        change(&mut self.lock_channels());
        // If the command channel is full, the flag is seen when the driver
        // drains it; the second try covers a driver that drained everything
        // between the first try and the flag.
        if let Err(mpsc::error::TrySendError::Full(_)) = commands.try_send(Command::Sync) {
            self.sync_requested.store(true, Ordering::Release);
            let _ = commands.try_send(Command::Sync);
        }
    }

    pub(crate) fn lock_channels(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A started driver: the handle's half.
pub(crate) struct DriverHandle {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) shared: Arc<DriverShared>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

/// Opens the first connection (its errors go to the caller), then runs the
/// driver in a background task.
pub(crate) async fn start(
    connector: Arc<dyn Connector>,
    mut pg_config: Config,
    config: PgListenerConfig,
    sink: Arc<dyn Sink>,
) -> OrmResult<DriverHandle> {
    config.validate()?;
    pg_config
        .application_name(&config.application_name)
        .connect_timeout(config.connect_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3);
    let shared = Arc::new(DriverShared {
        state: AtomicU8::new(ListenerState::Connecting.to_u8()),
        received: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        channels: Mutex::new(config.channels.iter().cloned().collect()),
        sync_requested: AtomicBool::new(false),
    });
    let (commands, receiver) = mpsc::channel(64);
    let mut driver = Driver {
        connector,
        pg_config,
        config,
        commands: receiver,
        shared: shared.clone(),
        sink,
        pending: VecDeque::new(),
        blocked: None,
        jitter: Jitter::new(),
    };
    let session = match driver.open_session().await {
        Ok(Opened {
            session, mut early, ..
        }) => {
            driver.pending.append(&mut early);
            session
        }
        Err(error) => {
            driver.shared.set_state(ListenerState::Closed);
            return Err(error);
        }
    };
    trace!(
        info,
        "listener connected to {}",
        crate::connect::describe_target(&driver.pg_config)
    );
    driver.shared.set_state(ListenerState::Connected);
    driver.config.hooks.call(|hooks| hooks.on_connect());
    let task = tokio::spawn(driver.run(session));
    Ok(DriverHandle {
        commands,
        shared,
        task,
    })
}

struct Driver {
    connector: Arc<dyn Connector>,
    pg_config: Config,
    config: PgListenerConfig,
    commands: mpsc::Receiver<Command>,
    shared: Arc<DriverShared>,
    sink: Arc<dyn Sink>,
    /// Events read but not yet taken by the sink (a blocked `BlockProducer`
    /// queue), kept in order across reconnects.
    pending: VecDeque<ListenerEvent>,
    /// While the sink blocks: when the block times out.
    blocked: Option<Pin<Box<Sleep>>>,
    jitter: Jitter,
}

/// One connection and what is in flight on it.
struct Session {
    client: Arc<Client>,
    connection: Box<dyn RawConnection>,
    /// The channels this session has sent `LISTEN` for (and not `UNLISTEN`).
    listening: BTreeSet<String>,
    operations: Vec<Operation>,
    health: Health,
}

/// A statement sent on behalf of a command or the health check.
struct Operation {
    future: Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send>>,
    kind: OperationKind,
}

enum OperationKind {
    /// A command; `channel` is the one it added, so a refusal can undo it.
    Command {
        reply: oneshot::Sender<OrmResult<()>>,
        added: Option<String>,
    },
    Health,
    /// The future answers its caller itself.
    Answered,
}

enum Health {
    /// Waiting for the next check.
    Idle(Pin<Box<Sleep>>),
    /// A check is in flight and must answer by this deadline.
    Checking(Pin<Box<Sleep>>),
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

impl Session {
    fn start(&mut self, sql: String, kind: OperationKind) {
        let client = self.client.clone();
        self.operations.push(Operation {
            future: Box::pin(async move { client.batch_execute(&sql).await }),
            kind,
        });
    }

    /// Sends `LISTEN`/`UNLISTEN` for the difference between `wanted` and what
    /// this session listens to.
    fn sync(&mut self, wanted: &BTreeSet<String>) {
        let sql = sync_statements(wanted, &self.listening);
        if !sql.is_empty() {
            self.listening = wanted.clone();
            self.start(sql, OperationKind::Answered);
        }
    }

    fn server_channels(&mut self, reply: oneshot::Sender<OrmResult<Vec<String>>>) {
        let client = self.client.clone();
        self.operations.push(Operation {
            future: Box::pin(async move {
                let channels = client
                    .query("SELECT pg_listening_channels()", &[])
                    .await
                    .map(|rows| rows.iter().map(|row| row.get(0)).collect());
                let _ = reply.send(channels.map_err(OrmError::query));
                Ok(())
            }),
            kind: OperationKind::Answered,
        });
    }

    /// Polls every operation; answers those that finished. Returns the
    /// health check's result when it finished.
    fn poll_operations(
        &mut self,
        shared: &DriverShared,
        cx: &mut Context<'_>,
    ) -> Option<Result<(), tokio_postgres::Error>> {
        let mut health = None;
        let mut index = 0;
        while index < self.operations.len() {
            let Poll::Ready(result) = self.operations[index].future.as_mut().poll(cx) else {
                index += 1;
                continue;
            };
            match self.operations.swap_remove(index).kind {
                OperationKind::Health => health = Some(result),
                OperationKind::Answered => {}
                OperationKind::Command { reply, added } => {
                    let _ = reply.send(match result {
                        Ok(()) => Ok(()),
                        // The connection went away: the command is
                        // remembered and applied by the reconnect.
                        Err(error) if error.is_closed() => Ok(()),
                        Err(error) => {
                            if let Some(channel) = added {
                                shared.lock_channels().remove(&channel);
                            }
                            Err(OrmError::query(error))
                        }
                    });
                }
            }
        }
        health
    }

    /// Answers every command still in flight when the session ends: its
    /// effect is remembered and applied on reconnect (or moot on close).
    fn release(self) {
        for operation in self.operations {
            if let OperationKind::Command { reply, .. } = operation.kind {
                let _ = reply.send(Ok(()));
            }
        }
    }
}

impl Driver {
    async fn run(mut self, mut session: Session) {
        loop {
            let end = std::future::poll_fn(|cx| self.poll_session(&mut session, cx)).await;
            match end {
                SessionEnd::Close(reply) => {
                    let result = self.close_session(session, true).await;
                    self.stop(None);
                    let _ = reply.send(result);
                    return;
                }
                SessionEnd::HandleDropped => {
                    let _ = self.close_session(session, false).await;
                    self.stop(None);
                    return;
                }
                SessionEnd::Lost(cause) => {
                    trace!(warn, "listener connection lost: {cause}");
                    self.config.hooks.call(|hooks| hooks.on_disconnect(&cause));
                    session.release();
                    self.blocked = None;
                    match self.reconnect(cause).await {
                        Ok(new_session) => session = new_session,
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
        }
    }

    fn stop(&mut self, error: Option<OrmError>) {
        self.shared.set_state(ListenerState::Closed);
        // What a blocked sink did not take yet was read before the end: hand
        // it over, dropping the oldest (counted and marked) if the queue is
        // still full.
        self.sink.fall_back_to_dropping();
        let _ = self.sink.push_batch(&mut self.pending, Waker::noop());
        self.sink.finish(error);
    }

    /// Reconnects until it works, gives up, or is told to stop. The first
    /// attempt is immediate, then the delay backs off.
    async fn reconnect(&mut self, cause: OrmError) -> Result<Session, Stop> {
        if !self.config.reconnect {
            return Err(Stop::GaveUp(OrmError::Disconnected {
                attempts: 0,
                cause: Box::new(cause),
            }));
        }
        self.shared.set_state(ListenerState::Reconnecting);
        let mut last_error = cause;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            if let Some(max) = self.config.max_reconnect_attempts {
                if attempt > max {
                    return Err(Stop::GaveUp(OrmError::Disconnected {
                        attempts: max,
                        cause: Box::new(last_error),
                    }));
                }
            }
            let delay = self.config.backoff_delay(attempt, self.jitter.next());
            trace!(debug, "listener reconnect attempt {attempt} in {delay:?}");
            self.config
                .hooks
                .call(|hooks| hooks.on_reconnect_attempt(attempt, delay));
            if !delay.is_zero() {
                self.while_disconnected(tokio::time::sleep(delay)).await?;
            }
            let opening = open_session(
                self.connector.clone(),
                self.pg_config.clone(),
                self.shared.channels(),
                self.config.connect_timeout,
                self.config.health_interval,
            );
            match self.while_disconnected(opening).await? {
                Ok(mut opened) => {
                    if let Err(error) = self.catch_up_channels(&mut opened).await {
                        last_error = error;
                        continue;
                    }
                    let Opened {
                        session, mut early, ..
                    } = opened;
                    let generation = self.shared.reconnects.fetch_add(1, Ordering::AcqRel) + 1;
                    self.shared.set_state(ListenerState::Connected);
                    // Only now, with every LISTEN in place: a consumer that
                    // resyncs on the marker cannot race the re-subscription.
                    self.pending
                        .push_back(ListenerEvent::Reconnected { generation });
                    self.pending.append(&mut early);
                    trace!(
                        info,
                        "listener reconnected (generation {generation}, attempt {attempt})"
                    );
                    self.config
                        .hooks
                        .call(|hooks| hooks.on_reconnect(generation, attempt));
                    return Ok(session);
                }
                Err(error) => {
                    trace!(
                        debug,
                        "listener reconnect attempt {attempt} failed: {error}"
                    );
                    last_error = error;
                }
            }
        }
    }

    /// Runs `future` while serving commands and handing pending events to
    /// the sink, as the connection is down.
    async fn while_disconnected<F: Future>(&mut self, future: F) -> Result<F::Output, Stop> {
        let mut future = std::pin::pin!(future);
        std::future::poll_fn(|cx| {
            if !self.pending.is_empty() {
                let _ = self.sink.push_batch(&mut self.pending, cx.waker());
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

    /// Commands that arrived while a reconnect was opening a session changed
    /// the channel set after it was read: apply the difference.
    async fn catch_up_channels(&mut self, opened: &mut Opened) -> OrmResult<()> {
        let wanted = self.shared.lock_channels().clone();
        let sql = sync_statements(&wanted, &opened.session.listening);
        if !sql.is_empty() {
            let client = opened.session.client.clone();
            run_statement(
                &mut opened.session,
                &mut opened.early,
                client.batch_execute(&sql),
            )
            .await?;
            opened.session.listening = wanted;
        }
        Ok(())
    }

    async fn open_session(&mut self) -> OrmResult<Opened> {
        open_session(
            self.connector.clone(),
            self.pg_config.clone(),
            self.shared.channels(),
            self.config.connect_timeout,
            self.config.health_interval,
        )
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
        if self.shared.sync_requested.swap(false, Ordering::AcqRel) {
            session.sync(&self.shared.lock_channels());
        }
        // New statements are polled once before the socket so that their
        // requests go out in this wake-up.
        let health = session.poll_operations(&self.shared, cx);
        if let Some(end) = self.poll_health(session, health, cx) {
            return Poll::Ready(end);
        }

        if !self.flush_pending(cx) {
            // A BlockProducer queue is full: leave the socket alone.
            return Poll::Pending;
        }
        let (read, end) = read_notifications(
            session.connection.as_mut(),
            &mut self.pending,
            MAX_BATCH,
            cx,
        );
        let end = end.map(SessionEnd::Lost);
        if read > 0 {
            self.shared
                .received
                .fetch_add(read as u64, Ordering::Relaxed);
            self.config.hooks.call(|hooks| {
                let start = self.pending.len() - read;
                for event in self.pending.range(start..) {
                    if let ListenerEvent::Notification(notification) = event {
                        hooks.on_notification(notification);
                    }
                }
            });
            self.flush_pending(cx);
        }
        if let Some(end) = end {
            return Poll::Ready(end);
        }
        let health = session.poll_operations(&self.shared, cx);
        match self.poll_health(session, health, cx) {
            Some(end) => Poll::Ready(end),
            None => Poll::Pending,
        }
    }

    /// Hands pending events to the sink. Returns `false` while a
    /// `BlockProducer` queue refuses them, handling the block timeout.
    fn flush_pending(&mut self, cx: &mut Context<'_>) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        loop {
            let (pushed, dropped) = self.sink.push_batch(&mut self.pending, cx.waker());
            if dropped > 0 {
                trace!(warn, "listener queue full: dropped {dropped} notifications");
                self.config.hooks.call(|hooks| hooks.on_drop(None, dropped));
            }
            if pushed == Pushed::All {
                self.blocked = None;
                return true;
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
            self.config
                .hooks
                .call(|hooks| hooks.on_block_timeout(timeout));
            self.sink.fall_back_to_dropping();
            self.blocked = None;
        }
    }

    /// Starts a check when one is due, or ends the session when a check
    /// misses its deadline. Paused while a blocked queue keeps the driver
    /// from reading (a slow consumer is not a dead server).
    fn poll_health(
        &mut self,
        session: &mut Session,
        finished: Option<Result<(), tokio_postgres::Error>>,
        cx: &mut Context<'_>,
    ) -> Option<SessionEnd> {
        let interval = self.config.health_interval;
        let timeout = self.config.health_timeout;
        match finished {
            Some(Err(error)) => return Some(SessionEnd::Lost(OrmError::connection(error))),
            Some(Ok(())) => session.health = Health::Idle(Box::pin(tokio::time::sleep(interval))),
            None => {}
        }
        if self.blocked.is_some() {
            if let Health::Checking(deadline) = &mut session.health {
                deadline.as_mut().reset(Instant::now() + timeout);
            }
            return None;
        }
        match &mut session.health {
            Health::Idle(next) => {
                if next.as_mut().poll(cx).is_ready() {
                    session.health = Health::Checking(Box::pin(tokio::time::sleep(timeout)));
                    session.start(String::new(), OperationKind::Health);
                    // Poll the new statement (sends it) and arm the deadline.
                    let health = session.poll_operations(&self.shared, cx);
                    return self.poll_health(session, health, cx);
                }
            }
            Health::Checking(deadline) => {
                if deadline.as_mut().poll(cx).is_ready() {
                    return Some(SessionEnd::Lost(OrmError::Timeout {
                        operation: "listener health check",
                        after: timeout,
                    }));
                }
            }
        }
        None
    }

    /// Says goodbye: `UNLISTEN *` (when asked), then the protocol's
    /// Terminate, within [`CLOSE_TIMEOUT`]. Notifications still arriving are
    /// discarded: nobody consumes them any more.
    async fn close_session(&mut self, mut session: Session, unlisten: bool) -> OrmResult<()> {
        session.operations.clear();
        self.pending.clear();
        let mut discarded = VecDeque::new();
        let unlistened = if unlisten {
            let client = session.client.clone();
            let statement = client.batch_execute("UNLISTEN *");
            tokio::time::timeout(
                CLOSE_TIMEOUT,
                run_statement(&mut session, &mut discarded, statement),
            )
            .await
            .unwrap_or(Err(OrmError::Timeout {
                operation: "UNLISTEN on close",
                after: CLOSE_TIMEOUT,
            }))
        } else {
            Ok(())
        };
        let Session {
            client,
            mut connection,
            ..
        } = session;
        // With the last client gone, the connection sends Terminate and ends.
        drop(client);
        let goodbye = tokio::time::timeout(
            CLOSE_TIMEOUT,
            std::future::poll_fn(|cx| {
                discarded.clear();
                match read_notifications(connection.as_mut(), &mut discarded, usize::MAX, cx) {
                    (_, Some(OrmError::Closed { .. })) => Poll::Ready(Ok(())),
                    (_, Some(error)) => Poll::Ready(Err(error)),
                    (_, None) => Poll::Pending,
                }
            }),
        )
        .await
        .unwrap_or(Err(OrmError::Timeout {
            operation: "closing the listener's connection",
            after: CLOSE_TIMEOUT,
        }));
        unlistened.and(goodbye)
    }
}

/// The `LISTEN` and `UNLISTEN` statements, as one simple-query string, that
/// take a session listening to `listening` to `wanted`.
fn sync_statements(wanted: &BTreeSet<String>, listening: &BTreeSet<String>) -> String {
    let mut sql = String::new();
    for channel in wanted.difference(listening) {
        sql.push_str(&format!("LISTEN {};", quote_identifier(channel)));
    }
    for channel in listening.difference(wanted) {
        sql.push_str(&format!("UNLISTEN {};", quote_identifier(channel)));
    }
    sql
}

/// A freshly opened session and the notifications that arrived while its
/// `LISTEN` ran.
struct Opened {
    session: Session,
    early: VecDeque<ListenerEvent>,
}

/// Connects and listens to `channels` in one round trip, within `timeout`.
async fn open_session(
    connector: Arc<dyn Connector>,
    pg_config: Config,
    channels: Vec<String>,
    timeout: Duration,
    health_interval: Duration,
) -> OrmResult<Opened> {
    let opening = async {
        let (client, connection) = connector.connect(&pg_config).await?;
        let mut session = Session {
            client: Arc::new(client),
            connection,
            listening: channels.into_iter().collect(),
            operations: Vec::new(),
            health: Health::Idle(Box::pin(tokio::time::sleep(health_interval))),
        };
        let mut early = VecDeque::new();
        // Every channel in one round trip, however many there are.
        let sql = sync_statements(&session.listening, &BTreeSet::new());
        if !sql.is_empty() {
            let client = session.client.clone();
            run_statement(&mut session, &mut early, client.batch_execute(&sql)).await?;
        }
        Ok(Opened { session, early })
    };
    match tokio::time::timeout(timeout, opening).await {
        Ok(opened) => opened,
        Err(_) => Err(OrmError::Timeout {
            operation: "connect",
            after: timeout,
        }),
    }
}

/// Awaits `statement` while driving the session's connection, appending the
/// notifications that arrive meanwhile to `into`.
async fn run_statement<T>(
    session: &mut Session,
    into: &mut VecDeque<ListenerEvent>,
    statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> OrmResult<T> {
    let mut statement = std::pin::pin!(statement);
    std::future::poll_fn(|cx| {
        // Once to send the request, once more for a reply read just now.
        if let Poll::Ready(result) = statement.as_mut().poll(cx) {
            return Poll::Ready(result.map_err(OrmError::query));
        }
        let (_, end) = read_notifications(session.connection.as_mut(), into, usize::MAX, cx);
        if let Some(error) = end {
            return Poll::Ready(Err(error));
        }
        statement
            .as_mut()
            .poll(cx)
            .map(|result| result.map_err(OrmError::query))
    })
    .await
}

/// Reads messages until the socket has nothing more or `limit`
/// notifications were read; notifications go to `into`. Returns how many
/// were read and, if the connection ended, why.
fn read_notifications(
    connection: &mut dyn RawConnection,
    into: &mut VecDeque<ListenerEvent>,
    limit: usize,
    cx: &mut Context<'_>,
) -> (usize, Option<OrmError>) {
    // One timestamp per wake-up: everything read now arrived together.
    let received_at = SystemTime::now();
    let mut read = 0;
    while read < limit {
        let polled = connection.poll_message(cx);
        // Notifications the connection's stream lifted out, already owned.
        if let Some(tap) = connection.tap() {
            // What is left of the budget; everything once the connection
            // has ended, so that nothing lifted is lost.
            let ended = matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_))));
            let budget = if ended { usize::MAX } else { limit - read };
            read += tap.drain(budget, |lifted| {
                into.push_back(ListenerEvent::Notification(PgNotification {
                    process_id: lifted.process_id,
                    channel: lifted.channel,
                    payload: lifted.payload,
                    received_at: lifted.received_at,
                }));
            });
        }
        match polled {
            Poll::Ready(Some(Ok(AsyncMessage::Notification(notification)))) => {
                read += 1;
                into.push_back(ListenerEvent::Notification(PgNotification {
                    process_id: notification.process_id(),
                    channel: notification.channel().to_owned(),
                    payload: notification.payload().to_owned(),
                    received_at,
                }));
            }
            Poll::Ready(Some(Ok(AsyncMessage::Notice(notice)))) => {
                trace!(debug, "listener got a notice: {}", notice.message());
                let _ = notice;
            }
            Poll::Ready(Some(Ok(_))) => {}
            Poll::Ready(Some(Err(error))) => return (read, Some(OrmError::connection(error))),
            Poll::Ready(None) => {
                let error = OrmError::closed("the server closed the listener's connection");
                return (read, Some(error));
            }
            Poll::Pending if read < limit => return (read, None),
            // The tap holds more than the budget took: come back for it.
            Poll::Pending => {}
        }
    }
    // The limit was reached with more to read: come back after the
    // consumer has had a turn.
    cx.waker().wake_by_ref();
    (read, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn sync_statements_listen_to_the_missing_and_unlisten_the_extra_in_one_string() {
        assert_eq!(
            sync_statements(&set(&["a", "B c"]), &BTreeSet::new()),
            "LISTEN \"B c\";LISTEN \"a\";"
        );
        assert_eq!(
            sync_statements(&set(&["keep", "new"]), &set(&["keep", "old\"; --"])),
            "LISTEN \"new\";UNLISTEN \"old\"\"; --\";"
        );
        assert_eq!(sync_statements(&set(&["same"]), &set(&["same"])), "");
    }
}
