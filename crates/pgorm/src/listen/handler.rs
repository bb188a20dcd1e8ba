//! Handlers: async functions that a hub runs for each notification of a
//! channel (and, if asked, for each gap marker), with a concurrency limit, a
//! per-call timeout and panic isolation; and the hub's graceful
//! [`shutdown`](PgNotifyHub::shutdown), which waits for them.
//!
//! A handler's dispatcher is a task started with `tokio::spawn` by
//! [`PgNotifyHub::on_with`] (or its siblings): it runs on the runtime of the
//! task that registered the handler, not on the hub's connection task, and
//! its calls run there too.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::error::{OrmError, OrmResult, ValidationError};
use crate::listen::config::QueuePolicy;
use crate::listen::event::{ListenerEvent, PgNotification};
use crate::listen::hooks::{contain, HookSlot};
use crate::listen::hub::{PgNotifyHub, Subscription};
use crate::listen::trace;

/// How a handler runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HandlerOptions {
    concurrency: usize,
    timeout: Duration,
    capacity: Option<usize>,
    policy: QueuePolicy,
}

impl Default for HandlerOptions {
    fn default() -> Self {
        HandlerOptions {
            concurrency: 1,
            timeout: Duration::from_secs(30),
            capacity: None,
            policy: QueuePolicy::DropOldest,
        }
    }
}

impl HandlerOptions {
    /// One call at a time, 30 s per call, the hub's queue capacity with
    /// `DropOldest`.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How many calls may run at once (default 1: in order). At least 1.
    #[must_use]
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// How long one call may run before it is cancelled and counted as
    /// timed out (default 30 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The queue between the hub and the handler: notifications wait here
    /// while all calls are busy (default: the hub's capacity, `DropOldest`).
    #[must_use]
    pub fn queue(mut self, capacity: usize, policy: QueuePolicy) -> Self {
        self.capacity = Some(capacity);
        self.policy = policy;
        self
    }
}

/// What a handler has done so far. Calls for gap markers (see
/// [`PgNotifyHub::on_events`]) are counted with the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct HandlerStats {
    /// Calls that returned `Ok`.
    pub succeeded: u64,
    /// Calls that returned `Err`.
    pub failed: u64,
    /// Calls that panicked, in the handler function itself or in the future
    /// it returned (contained; the hub, this handler and the others go on).
    pub panicked: u64,
    /// Calls cancelled by the timeout.
    pub timed_out: u64,
    /// Notifications the handler never saw: dropped by its queue.
    pub dropped: u64,
    /// `Reconnected` markers seen (notifications may have been missed at
    /// each). Reconnects with nothing between them while the handler was
    /// busy merge into one marker, so this can be below the hub's count.
    pub reconnects: u64,
    /// Calls cancelled before they finished: by a
    /// [`shutdown`](PgNotifyHub::shutdown) that timed out, or by dropping
    /// the guard.
    pub cancelled: u64,
}

#[derive(Default)]
struct Counters {
    succeeded: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    timed_out: AtomicU64,
    dropped: AtomicU64,
    reconnects: AtomicU64,
    cancelled: AtomicU64,
}

/// Keeps a handler registered; dropping it unsubscribes (the hub sends
/// `UNLISTEN` if it was the channel's last subscription) and cancels calls
/// still running.
///
/// The guard does not keep the hub open. When the hub stops (closed, shut
/// down, or its last clone dropped), the handler's subscription ends: the
/// handler is called for what its queue still held, then lets its running
/// calls finish and stops. Its [`stats`](Self::stats) stay readable.
pub struct HandlerGuard {
    channel: String,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for HandlerGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerGuard")
            .field("channel", &self.channel)
            .field("stats", &self.stats())
            .finish()
    }
}

impl HandlerGuard {
    /// The channel handled.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The handler's counters.
    pub fn stats(&self) -> HandlerStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        HandlerStats {
            succeeded: load(&self.counters.succeeded),
            failed: load(&self.counters.failed),
            panicked: load(&self.counters.panicked),
            timed_out: load(&self.counters.timed_out),
            dropped: load(&self.counters.dropped),
            reconnects: load(&self.counters.reconnects),
            cancelled: load(&self.counters.cancelled),
        }
    }
}

impl Drop for HandlerGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PgNotifyHub {
    /// Runs `handler` for every notification on `channel`, one call at a
    /// time, each within 30 s (see [`on_with`](Self::on_with)).
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe).
    pub async fn on<F, Fut, E>(&self, channel: &str, handler: F) -> OrmResult<HandlerGuard>
    where
        F: Fn(PgNotification) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        self.on_with(channel, HandlerOptions::default(), handler)
            .await
    }

    /// Runs `handler` for every notification on `channel` with `options`.
    ///
    /// A call that fails, panics (in `handler` itself or in the future it
    /// returns) or times out is counted (see [`HandlerStats`]) and reported
    /// to the hooks; it never stops the hub, this handler or any other. Gap
    /// markers are counted (`dropped`, `reconnects`) but not handed to the
    /// handler: use [`on_events`](Self::on_events) to resync at them.
    ///
    /// The handler runs on the runtime of the task that calls `on_with`: its
    /// dispatcher is started with `tokio::spawn` (so this must be called
    /// within a tokio runtime), and so are its calls. The guard does not
    /// keep the hub open; see [`HandlerGuard`] for what happens when the hub
    /// stops, and [`shutdown`](Self::shutdown) to wait for running calls.
    ///
    /// # Errors
    /// As [`subscribe_with`](Self::subscribe_with), and
    /// [`OrmError::Validation`](crate::OrmError::Validation) for a
    /// concurrency of 0.
    pub async fn on_with<F, Fut, E>(
        &self,
        channel: &str,
        options: HandlerOptions,
        handler: F,
    ) -> OrmResult<HandlerGuard>
    where
        F: Fn(PgNotification) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let call = move |event: ListenerEvent| match event {
            ListenerEvent::Notification(notification) => Some(handler(notification)),
            _marker => None,
        };
        self.register(channel, options, Markers::Counted, call)
            .await
    }

    /// As [`on_with`](Self::on_with), but `handler` also receives the gap
    /// markers, in order with the notifications: a
    /// [`ListenerEvent::Reconnected`] after a reconnect and a
    /// [`ListenerEvent::Lagged`] where the handler's queue dropped
    /// notifications. That is where a handler that keeps state resyncs it.
    ///
    /// A marker call is a call like any other: it takes a concurrency slot,
    /// has the timeout, and is contained and counted in [`HandlerStats`]
    /// (the markers are also counted in `dropped` and `reconnects`). With
    /// the default concurrency of 1, every call, marker or notification,
    /// starts after the previous one has finished, in stream order.
    ///
    /// ```
    /// use pgorm::listen::{HandlerOptions, ListenerEvent, PgNotifyHub};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> pgorm::OrmResult<()> {
    /// # let database_url = pgorm_testkit::TestServer::shared().url();
    /// let hub = PgNotifyHub::connect(&database_url).await?;
    /// let _guard = hub
    ///     .on_events("cache_invalidate", HandlerOptions::new(), |event| async move {
    ///         match event {
    ///             ListenerEvent::Notification(n) => { /* evict n.payload */ }
    ///             _gap => { /* Reconnected or Lagged: reload the whole cache */ }
    ///         }
    ///         Ok::<(), std::io::Error>(())
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`on_with`](Self::on_with).
    pub async fn on_events<F, Fut, E>(
        &self,
        channel: &str,
        options: HandlerOptions,
        handler: F,
    ) -> OrmResult<HandlerGuard>
    where
        F: Fn(ListenerEvent) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let call = move |event: ListenerEvent| Some(handler(event));
        self.register(channel, options, Markers::Called, call).await
    }

    async fn register<C, Fut, E>(
        &self,
        channel: &str,
        options: HandlerOptions,
        markers: Markers,
        call: C,
    ) -> OrmResult<HandlerGuard>
    where
        C: Fn(ListenerEvent) -> Option<Fut> + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        if options.concurrency == 0 {
            return Err(ValidationError::Setting {
                setting: "concurrency",
                reason: "must be at least 1".into(),
            }
            .into());
        }
        // Held from before the subscription exists, so that a shutdown that
        // starts now waits for this handler.
        let running = self.handlers().running.subscribe();
        let subscription = match options.capacity {
            Some(capacity) => {
                self.subscribe_with(channel, capacity, options.policy)
                    .await?
            }
            None => self.subscribe(channel).await?,
        };
        let counters = Arc::new(Counters::default());
        let dispatcher = Dispatcher {
            channel: channel.to_owned(),
            options,
            markers,
            call: Arc::new(call),
            counters: counters.clone(),
            hooks: self.hooks(),
        };
        let task = tokio::spawn(dispatcher.run(subscription, running));
        self.handlers().register(task.abort_handle());
        Ok(HandlerGuard {
            channel: channel.to_owned(),
            counters,
            task,
        })
    }

    /// Closes the hub (as [`close`](Self::close)), then waits up to
    /// `timeout` for every handler registered on it to finish: each is
    /// called for what its queue still held when the hub closed, and its
    /// running calls complete. Handlers still running at the deadline are
    /// cancelled, with their calls (aborted at their next `.await`).
    ///
    /// The wait covers handlers registered through any clone of the hub;
    /// handlers whose guard was dropped are already cancelled. The timeout
    /// starts once the hub is closed (closing has its own bounds, as
    /// [`close`](Self::close)). A handler call that awaits `shutdown` waits
    /// for itself: it is cancelled at the deadline.
    ///
    /// # Errors
    /// [`OrmError::Timeout`] (operation `"hub shutdown"`) when handlers were
    /// still running at the deadline and were cancelled; otherwise what
    /// [`close`](Self::close) returned.
    ///
    /// # Cancel safety
    /// If cancelled, the hub is closed or closing, and the handlers go on
    /// until they finish or their guards are dropped: nothing is cancelled
    /// on the shutdown's behalf.
    pub async fn shutdown(&self, timeout: Duration) -> OrmResult<()> {
        let closed = self.close().await;
        let handlers = self.handlers();
        if tokio::time::timeout(timeout, handlers.running.closed())
            .await
            .is_err()
        {
            handlers.abort_all();
            // Cancelled tasks are dropped by their runtime soon after: wait
            // (briefly) so that their calls are counted as cancelled when
            // this returns.
            let _ = tokio::time::timeout(ABORT_GRACE, handlers.running.closed()).await;
            trace!(
                warn,
                "hub shutdown: handler calls still running after {timeout:?} were cancelled"
            );
            return Err(OrmError::Timeout {
                operation: "hub shutdown",
                after: timeout,
            });
        }
        closed
    }
}

/// How long a shutdown that cancelled handlers waits for them to be gone.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// What a dispatcher does with gap markers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Markers {
    /// Counts them only.
    Counted,
    /// Counts them and calls the handler.
    Called,
}

/// Reads a handler's subscription and runs its calls.
struct Dispatcher<C> {
    channel: String,
    options: HandlerOptions,
    markers: Markers,
    /// The handler: `None` for an event it does not take.
    call: Arc<C>,
    counters: Arc<Counters>,
    hooks: HookSlot,
}

impl<C, Fut, E> Dispatcher<C>
where
    C: Fn(ListenerEvent) -> Option<Fut> + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    /// Runs the calls, at most `concurrency` at once, until the
    /// subscription ends; then lets the running calls finish. `_running`
    /// tells a shutdown when this has ended.
    async fn run(self, mut subscription: Subscription, _running: watch::Receiver<()>) {
        let slots = Arc::new(Semaphore::new(self.options.concurrency));
        let mut running = Calls {
            set: JoinSet::new(),
            counters: self.counters.clone(),
        };
        loop {
            tokio::select! {
                event = subscription.next_event() => match event {
                    Some(Ok(event)) => {
                        let Some(event) = self.count(event) else { continue };
                        let Ok(slot) = slots.clone().acquire_owned().await else { return };
                        // The user's function runs here, contained: a panic
                        // before it returns a future counts like one inside.
                        let call = match contain(|| (self.call)(event)) {
                            Some(Some(call)) => call,
                            Some(None) => continue,
                            None => {
                                self.record(Err(CallError::Panicked));
                                continue;
                            }
                        };
                        let timeout = self.options.timeout;
                        running.set.spawn(async move {
                            let _slot = slot;
                            let result = tokio::time::timeout(timeout, call).await;
                            result.map(|call| call.map_err(Into::into))
                        });
                    }
                    // The hub stopped: let the calls in flight finish.
                    Some(Err(_)) | None => break,
                },
                Some(outcome) = running.set.join_next(), if !running.set.is_empty() => {
                    self.record_joined(outcome);
                }
            }
        }
        while let Some(outcome) = running.set.join_next().await {
            self.record_joined(outcome);
        }
    }

    /// Counts a marker; returns the event if the handler is to be called
    /// for it.
    fn count(&self, event: ListenerEvent<Arc<PgNotification>>) -> Option<ListenerEvent> {
        let event = match event {
            // The last subscriber to take a notification owns it; others
            // copy it here, for the handler.
            ListenerEvent::Notification(notification) => {
                return Some(ListenerEvent::Notification(Arc::unwrap_or_clone(
                    notification,
                )))
            }
            ListenerEvent::Lagged { dropped } => {
                self.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
                ListenerEvent::Lagged { dropped }
            }
            ListenerEvent::Reconnected { generation } => {
                // One per marker: markers with nothing between them merge.
                self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                ListenerEvent::Reconnected { generation }
            }
        };
        (self.markers == Markers::Called).then_some(event)
    }

    fn record_joined(&self, outcome: Result<CallOutcome, tokio::task::JoinError>) {
        match outcome {
            Ok(Ok(result)) => self.record(result.map_err(CallError::Failed)),
            Ok(Err(_elapsed)) => self.record(Err(CallError::TimedOut)),
            Err(join_error) if join_error.is_panic() => self.record(Err(CallError::Panicked)),
            // Cancelled: only when the guard is dropped or a shutdown timed
            // out, which ends this dispatcher.
            Err(_cancelled) => {
                self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts a call's outcome and tells the hooks (no lock held).
    fn record(&self, outcome: Result<(), CallError>) {
        let (channel, counters, hooks) = (&self.channel, &self.counters, &self.hooks);
        match outcome {
            Ok(()) => {
                counters.succeeded.fetch_add(1, Ordering::Relaxed);
            }
            Err(CallError::Failed(error)) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                trace!(warn, "handler on {channel:?} failed: {error}");
                hooks.call(|hooks| hooks.on_handler_error(channel, error.as_ref()));
            }
            Err(CallError::TimedOut) => {
                let timeout = self.options.timeout;
                counters.timed_out.fetch_add(1, Ordering::Relaxed);
                trace!(warn, "handler on {channel:?} timed out after {timeout:?}");
                hooks.call(|hooks| hooks.on_handler_timeout(channel, timeout));
            }
            Err(CallError::Panicked) => {
                counters.panicked.fetch_add(1, Ordering::Relaxed);
                trace!(error, "handler on {channel:?} panicked");
                hooks.call(|hooks| hooks.on_handler_panic(channel));
            }
        }
    }
}

/// A dispatcher's calls in flight. Dropped with calls still running (the
/// dispatcher was cancelled), it counts them as cancelled as they go.
struct Calls {
    set: JoinSet<CallOutcome>,
    counters: Arc<Counters>,
}

impl Drop for Calls {
    fn drop(&mut self) {
        let cancelled = self.set.len() as u64;
        self.counters
            .cancelled
            .fetch_add(cancelled, Ordering::Relaxed);
    }
}

/// A call's result, or the timeout that cancelled it.
type CallOutcome =
    Result<Result<(), Box<dyn std::error::Error + Send + Sync>>, tokio::time::error::Elapsed>;

/// How a call went wrong.
enum CallError {
    Failed(Box<dyn std::error::Error + Send + Sync>),
    TimedOut,
    Panicked,
}
