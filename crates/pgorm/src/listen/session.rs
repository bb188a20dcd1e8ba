//! One connection of the driver: opening it (connect, `LISTEN` to every
//! wanted channel, catch up with changes made meanwhile, run the
//! application's `on_connect`), the statements in flight on it, and reading
//! notifications off it.

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;
use tokio_postgres::{AsyncMessage, Client, Config, SimpleQueryMessage};

use crate::connect::{Connector, RawConnection};
use crate::error::{OrmError, OrmResult};
use crate::listen::channel::quote_identifier;
use crate::listen::command::DriverShared;
use crate::listen::config::{BoxError, ListenerSession, OnConnect};
use crate::listen::event::{ListenerEvent, RawEvent, RawNotification};
use crate::listen::health::Health;
use crate::listen::trace;
use crate::tap::wake_after_other_tasks;

/// One connection and what is in flight on it.
pub(super) struct Session {
    pub(super) client: Arc<Client>,
    pub(super) connection: Box<dyn RawConnection>,
    /// The channels this session has sent `LISTEN` for (and not `UNLISTEN`).
    pub(super) listening: BTreeSet<String>,
    /// Statements in flight, in the order they were started.
    operations: Vec<Operation>,
    pub(super) health: Health,
    /// Who this session is on the server, if it could tell.
    pub(super) backend: Option<Backend>,
}

/// A server backend, identified so that a later session can end it without
/// ever hitting another session that reuses its process id.
#[derive(Debug, Clone)]
pub(super) struct Backend {
    pid: i32,
    /// `backend_start`, as the server printed it.
    started: String,
}

/// A statement sent on behalf of a command or the health check.
struct Operation {
    future: Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send>>,
    kind: OperationKind,
}

pub(super) enum OperationKind {
    /// A command; `added` is the channel it added, so a refusal can undo it.
    Command {
        reply: oneshot::Sender<OrmResult<()>>,
        added: Option<String>,
    },
    Health,
    /// The future answers its caller itself, or nobody waits for it.
    Answered,
}

impl Session {
    pub(super) fn start(&mut self, sql: String, kind: OperationKind) {
        let client = self.client.clone();
        self.operations.push(Operation {
            future: Box::pin(async move { client.batch_execute(&sql).await }),
            kind,
        });
    }

    /// Whether a statement is waiting for its reply.
    pub(super) fn has_operations(&self) -> bool {
        !self.operations.is_empty()
    }

    /// Sends `LISTEN`/`UNLISTEN` for the difference between `wanted` and what
    /// this session listens to.
    pub(super) fn sync(&mut self, wanted: &BTreeSet<String>) {
        let sql = sync_statements(wanted, &self.listening);
        if !sql.is_empty() {
            self.listening = wanted.clone();
            self.start(sql, OperationKind::Answered);
        }
    }

    pub(super) fn server_channels(&mut self, reply: oneshot::Sender<OrmResult<Vec<String>>>) {
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

    /// Ends the backend of an earlier session that the health check gave up,
    /// if it still lives (it can linger on the server for hours, holding its
    /// `LISTEN` registrations and pinning the cluster's notification queue).
    /// Matched by process id and start time, never this session's own, and
    /// only while idle since before its check went unanswered (the check
    /// was sent at least `check_timeout` ago; half of that leaves room for
    /// the way there), so that a backend some pooler handed on to a busy
    /// client is left alone. Best effort: nobody waits for it.
    pub(super) fn terminate(&mut self, earlier: Backend, check_timeout: Duration) {
        let client = self.client.clone();
        let quiet_for = check_timeout.as_secs_f64() / 2.0;
        self.operations.push(Operation {
            future: Box::pin(async move {
                let ended = client
                    .query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE pid = $1 AND backend_start = $2::text::timestamptz \
                         AND pid <> pg_backend_pid() AND state = 'idle' \
                         AND state_change < now() - make_interval(secs => $3)",
                        &[&earlier.pid, &earlier.started, &quiet_for],
                    )
                    .await;
                match ended {
                    Ok(rows) if !rows.is_empty() => {
                        trace!(info, "ended the earlier listener backend {}", earlier.pid);
                    }
                    Ok(_) => {}
                    Err(error) => {
                        trace!(debug, "could not end the earlier backend: {error}");
                        let _ = error;
                    }
                }
                Ok(())
            }),
            kind: OperationKind::Answered,
        });
    }

    /// Polls every operation in the order they were started (a statement is
    /// sent when first polled, so this keeps `LISTEN` and `UNLISTEN` of one
    /// channel in order); answers those that finished. Returns the health
    /// check's result when it finished.
    pub(super) fn poll_operations(
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
            match self.operations.remove(index).kind {
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

    /// Says goodbye: `UNLISTEN *` (when asked), then the protocol's
    /// Terminate, each within `timeout`. Commands still in flight are
    /// dropped (their callers learn the listener has stopped), and so are
    /// notifications still arriving: nobody consumes them any more.
    pub(super) async fn close(mut self, unlisten: bool, timeout: Duration) -> OrmResult<()> {
        self.operations.clear();
        let mut discarded = VecDeque::new();
        let unlistened = if unlisten {
            let client = self.client.clone();
            let statement = client.batch_execute("UNLISTEN *");
            tokio::time::timeout(timeout, run_statement(&mut self, &mut discarded, statement))
                .await
                .unwrap_or(Err(OrmError::Timeout {
                    operation: "UNLISTEN on close",
                    after: timeout,
                }))
        } else {
            Ok(())
        };
        let Session {
            client,
            mut connection,
            ..
        } = self;
        // With the last client gone, the connection sends Terminate and ends.
        // A client still held elsewhere (an `on_connect` callback that kept
        // its session) would keep it open: then the socket is closed as it
        // is, which the server takes as the end of the session too.
        if Arc::strong_count(&client) > 1 {
            return unlistened;
        }
        drop(client);
        let goodbye = tokio::time::timeout(
            timeout,
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
            after: timeout,
        }));
        unlistened.and(goodbye)
    }

    /// Answers every command still in flight when the session ends: its
    /// effect is remembered and applied on reconnect (or moot on close).
    pub(super) fn release(self) {
        for operation in self.operations {
            if let OperationKind::Command { reply, .. } = operation.kind {
                let _ = reply.send(Ok(()));
            }
        }
    }
}

/// The `LISTEN` and `UNLISTEN` statements, as one simple-query string, that
/// take a session listening to `listening` to `wanted`.
pub(super) fn sync_statements(wanted: &BTreeSet<String>, listening: &BTreeSet<String>) -> String {
    let mut sql = String::new();
    for channel in wanted.difference(listening) {
        sql.push_str(&format!("LISTEN {};", quote_identifier(channel)));
    }
    for channel in listening.difference(wanted) {
        sql.push_str(&format!("UNLISTEN {};", quote_identifier(channel)));
    }
    sql
}

/// What every session is opened with.
pub(super) struct Opening {
    pub(super) connector: Arc<dyn Connector>,
    pub(super) pg_config: Config,
    pub(super) shared: Arc<DriverShared>,
    /// `connect_timeout`: bounds each host's attempt (in the connection
    /// settings, as libpq does), the `LISTEN` round trip, and separately the
    /// `on_connect` callback.
    pub(super) timeout: Duration,
    pub(super) health_interval: Duration,
    pub(super) on_connect: Option<OnConnect>,
}

/// A freshly opened session and the notifications that arrived while it was
/// being set up (after its `LISTEN`s, so they belong to it).
pub(super) struct Opened {
    pub(super) session: Session,
    pub(super) early: VecDeque<RawEvent>,
}

/// Connects, listens to every wanted channel in one round trip, catches up
/// with changes made meanwhile, then runs `on_connect` (`generation` 0 for
/// the first session), each step within the timeout.
pub(super) async fn open_session(opening: Arc<Opening>, generation: u64) -> OrmResult<Opened> {
    let timeout = opening.timeout;
    let timed_out = |operation, after| OrmError::Timeout { operation, after };
    // The timeout applies to each host in turn (tokio-postgres moves on to
    // the next when one does not answer), so the whole opening may take one
    // timeout per host, and one more for logging in and listening.
    let hosts = opening.pg_config.get_hosts().len().max(1) as u32;
    let opening_limit = timeout.saturating_mul(hosts + 1);
    let mut opened = tokio::time::timeout(opening_limit, connect_and_listen(&opening))
        .await
        .map_err(|_| timed_out("connect", opening_limit))??;
    if let Some(on_connect) = &opening.on_connect {
        let context = ListenerSession::new(opened.session.client.clone(), generation);
        // On a task of its own: a panic, even in the synchronous part of
        // the callback, ends that task only.
        let on_connect = on_connect.clone();
        let call = CallbackTask(tokio::spawn(async move { (on_connect.0)(context).await }));
        let Opened { session, early } = &mut opened;
        let outcome =
            tokio::time::timeout(timeout, drive(session.connection.as_mut(), early, call))
                .await
                .map_err(|_| timed_out("on_connect", timeout))??;
        outcome.map_err(|source| OrmError::Callback {
            callback: "on_connect",
            source,
        })?;
        // Channels changed while the callback ran are listened to before
        // the session hands out anything.
        tokio::time::timeout(timeout, catch_up(&opening.shared, &mut opened))
            .await
            .map_err(|_| timed_out("connect", timeout))??;
    }
    Ok(opened)
}

async fn connect_and_listen(opening: &Opening) -> OrmResult<Opened> {
    let (client, connection) = opening.connector.connect(&opening.pg_config).await?;
    let mut opened = Opened {
        session: Session {
            client: Arc::new(client),
            connection,
            listening: BTreeSet::new(),
            operations: Vec::new(),
            health: Health::new(opening.health_interval),
            backend: None,
        },
        early: VecDeque::new(),
    };
    // Who the session is, and every channel, in one round trip however
    // many channels there are.
    let wanted = opening.shared.lock_channels().clone();
    let sql = format!(
        "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid();{}",
        sync_statements(&wanted, &BTreeSet::new())
    );
    let Opened { session, early } = &mut opened;
    let client = session.client.clone();
    let replies = run_statement(session, early, client.simple_query(&sql)).await?;
    session.listening = wanted;
    session.backend = replies.iter().find_map(|reply| match reply {
        SimpleQueryMessage::Row(row) => Some(Backend {
            pid: row.get(0)?.parse().ok()?,
            started: row.get(1)?.to_owned(),
        }),
        _ => None,
    });
    catch_up(&opening.shared, &mut opened).await?;
    Ok(opened)
}

/// Commands that arrived while the session was being opened changed the
/// channel set after it was read: apply the difference until none is left.
async fn catch_up(shared: &DriverShared, opened: &mut Opened) -> OrmResult<()> {
    loop {
        let wanted = shared.lock_channels().clone();
        let sql = sync_statements(&wanted, &opened.session.listening);
        if sql.is_empty() {
            return Ok(());
        }
        let Opened { session, early } = opened;
        let client = session.client.clone();
        run_statement(session, early, client.batch_execute(&sql)).await?;
        session.listening = wanted;
    }
}

/// The `on_connect` callback's task, aborted when dropped (an opening given
/// up, or closed, must not leave the callback running).
struct CallbackTask(tokio::task::JoinHandle<Result<(), BoxError>>);

impl Drop for CallbackTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Future for CallbackTask {
    /// The task's result; a panic becomes an error, contained.
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|joined| match joined {
            Ok(result) => result,
            Err(error) => Err(Box::new(error) as BoxError),
        })
    }
}

/// Awaits `statement` while driving the session's connection, appending the
/// notifications that arrive meanwhile to `into`.
pub(super) async fn run_statement<T>(
    session: &mut Session,
    into: &mut VecDeque<RawEvent>,
    statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> OrmResult<T> {
    drive(session.connection.as_mut(), into, statement)
        .await?
        .map_err(OrmError::query)
}

/// Awaits `future` while driving `connection` (so that statements on its
/// client get their replies), appending the notifications that arrive
/// meanwhile to `into`. An error if the connection ends first.
async fn drive<F: Future>(
    connection: &mut dyn RawConnection,
    into: &mut VecDeque<RawEvent>,
    future: F,
) -> OrmResult<F::Output> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        // Once to send a request, once more for a reply read just now.
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        let (_, end) = read_notifications(connection, into, usize::MAX, cx);
        if let Some(error) = end {
            return Poll::Ready(Err(error));
        }
        future.as_mut().poll(cx).map(Ok)
    })
    .await
}

/// Reads messages until the socket has nothing more or `limit`
/// notifications were read; notifications go to `into`. Returns how many
/// were read and, if the connection ended, why.
pub(super) fn read_notifications(
    connection: &mut dyn RawConnection,
    into: &mut VecDeque<RawEvent>,
    limit: usize,
    cx: &mut Context<'_>,
) -> (usize, Option<OrmError>) {
    // One timestamp per wake-up: everything read now arrived together.
    let received_at = SystemTime::now();
    let mut read = 0;
    // What the tap lifted and an earlier wake-up left (it was over that
    // one's budget) comes first, and the connection is read only once it
    // is under the budget: each poll of the connection can read the socket
    // once more, and the tap would hold ever more than the driver takes.
    if let Some(tap) = connection.tap() {
        read += tap.drain(limit, |lifted| {
            into.push_back(ListenerEvent::Notification(lifted));
        });
    }
    while read < limit {
        let polled = connection.poll_message(cx);
        // Notifications the connection's stream lifted out, already owned:
        // what the budget allows, or everything once the connection ended.
        if let Some(tap) = connection.tap() {
            let budget = match polled {
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) => usize::MAX,
                _ => limit - read,
            };
            read += tap.drain(budget, |lifted| {
                into.push_back(ListenerEvent::Notification(lifted));
            });
        }
        match polled {
            Poll::Ready(Some(Ok(AsyncMessage::Notification(notification)))) => {
                read += 1;
                into.push_back(ListenerEvent::Notification(RawNotification::from_parts(
                    notification.process_id(),
                    notification.channel(),
                    notification.payload(),
                    received_at,
                )));
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
            Poll::Pending => {
                if read >= limit {
                    // The tap may hold more than the budget took.
                    wake_after_other_tasks(cx);
                }
                return (read, None);
            }
        }
    }
    // The limit was reached with more to read: come back after the
    // consumer has had a turn.
    wake_after_other_tasks(cx);
    (read, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tap::NotificationTap;

    /// A connection whose every poll reads the socket once: `per_read`
    /// notifications lifted into its tap, and nothing for the connection.
    struct Reading {
        tap: NotificationTap,
        per_read: usize,
        polls: usize,
    }

    impl RawConnection for Reading {
        fn poll_message(
            &mut self,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<AsyncMessage, tokio_postgres::Error>>> {
            self.polls += 1;
            for _ in 0..self.per_read {
                self.tap.lift(RawNotification::from_parts(
                    1,
                    "c",
                    "p",
                    SystemTime::UNIX_EPOCH,
                ));
            }
            Poll::Pending
        }

        fn tap(&self) -> Option<&NotificationTap> {
            Some(&self.tap)
        }
    }

    /// A read lifts more than a wake-up's budget takes: the rest is taken
    /// first by the next wake-up, which reads the socket only once under
    /// the budget, so the tap never holds more than the budget and one read.
    #[test]
    fn what_the_tap_holds_is_taken_before_the_socket_is_read_again() {
        let (limit, per_read) = (256, 670);
        let mut connection = Reading {
            tap: NotificationTap::default(),
            per_read,
            polls: 0,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut into = VecDeque::new();
        let mut taken = 0;
        for _ in 0..20 {
            let (read, end) = read_notifications(&mut connection, &mut into, limit, &mut cx);
            assert!(end.is_none());
            assert!(read <= limit, "a wake-up takes at most its budget");
            taken += read;
            assert!(
                connection.tap.len() < limit + per_read,
                "the tap holds {} after {} reads",
                connection.tap.len(),
                connection.polls
            );
        }
        assert_eq!(into.len(), taken);
        assert_eq!(taken + connection.tap.len(), connection.polls * per_read);
        assert!(
            connection.polls < 20,
            "wake-ups with a backlog read no socket"
        );
    }

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
