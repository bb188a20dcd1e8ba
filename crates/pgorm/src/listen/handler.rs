//! Handlers: async functions that a hub runs for each notification of a
//! channel, with a concurrency limit, a per-call timeout and panic
//! isolation.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

use crate::error::{OrmResult, ValidationError};
use crate::listen::config::QueuePolicy;
use crate::listen::event::{ListenerEvent, PgNotification};
use crate::listen::hooks::HookSlot;
use crate::listen::hub::{PgNotifyHub, Subscription};

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

/// What a handler has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct HandlerStats {
    /// Calls that returned `Ok`.
    pub succeeded: u64,
    /// Calls that returned `Err`.
    pub failed: u64,
    /// Calls that panicked (contained; the hub and other handlers go on).
    pub panicked: u64,
    /// Calls cancelled by the timeout.
    pub timed_out: u64,
    /// Notifications the handler never saw: dropped by its queue.
    pub dropped: u64,
    /// Reconnects seen (notifications may have been missed at each).
    pub reconnects: u64,
}

#[derive(Default)]
struct Counters {
    succeeded: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    timed_out: AtomicU64,
    dropped: AtomicU64,
    reconnects: AtomicU64,
}

/// Keeps a handler registered; dropping it unsubscribes (the hub sends
/// `UNLISTEN` if it was the channel's last subscription) and cancels calls
/// still running.
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
    /// A call that fails, panics or times out is counted (see
    /// [`HandlerGuard::stats`]) and reported to the hooks; it never stops
    /// the hub, this handler or any other.
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
        if options.concurrency == 0 {
            return Err(ValidationError::Setting {
                setting: "concurrency",
                reason: "must be at least 1".into(),
            }
            .into());
        }
        let subscription = match options.capacity {
            Some(capacity) => {
                self.subscribe_with(channel, capacity, options.policy)
                    .await?
            }
            None => self.subscribe(channel).await?,
        };
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(dispatch(
            subscription,
            options,
            Arc::new(handler),
            counters.clone(),
            self.hooks(),
        ));
        Ok(HandlerGuard {
            channel: channel.to_owned(),
            counters,
            task,
        })
    }
}

/// Reads the subscription and runs the handler, at most `concurrency` calls
/// at once.
async fn dispatch<F, Fut, E>(
    mut subscription: Subscription,
    options: HandlerOptions,
    handler: Arc<F>,
    counters: Arc<Counters>,
    hooks: HookSlot,
) where
    F: Fn(PgNotification) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let channel = subscription.channel().to_owned();
    let slots = Arc::new(Semaphore::new(options.concurrency));
    let mut running: JoinSet<CallOutcome> = JoinSet::new();
    loop {
        tokio::select! {
            event = subscription.next_event() => match event {
                Some(Ok(ListenerEvent::Notification(notification))) => {
                    let Ok(slot) = slots.clone().acquire_owned().await else { return };
                    // The last subscriber to take a notification owns it;
                    // others copy it here, for the handler.
                    let call = handler(Arc::unwrap_or_clone(notification));
                    let timeout = options.timeout;
                    running.spawn(async move {
                        let _slot = slot;
                        let result = tokio::time::timeout(timeout, call).await;
                        result.map(|call| call.map_err(Into::into))
                    });
                }
                Some(Ok(ListenerEvent::Lagged { dropped })) => {
                    counters.dropped.fetch_add(dropped, Ordering::Relaxed);
                }
                Some(Ok(ListenerEvent::Reconnected { .. })) => {
                    counters.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                // The hub stopped: let the calls in flight finish.
                Some(Err(_)) | None => break,
            },
            Some(outcome) = running.join_next(), if !running.is_empty() => {
                record(outcome, &channel, options.timeout, &counters, &hooks);
            }
        }
    }
    while let Some(outcome) = running.join_next().await {
        record(outcome, &channel, options.timeout, &counters, &hooks);
    }
}

/// A call's result, or the timeout that cancelled it.
type CallOutcome =
    Result<Result<(), Box<dyn std::error::Error + Send + Sync>>, tokio::time::error::Elapsed>;

fn record(
    outcome: Result<CallOutcome, tokio::task::JoinError>,
    channel: &str,
    timeout: Duration,
    counters: &Counters,
    hooks: &HookSlot,
) {
    match outcome {
        Ok(Ok(Ok(()))) => {
            counters.succeeded.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Ok(Err(error))) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            crate::listen::trace!(warn, "handler on {channel:?} failed: {error}");
            hooks.call(|hooks| hooks.on_handler_error(channel, error.as_ref()));
        }
        Ok(Err(_elapsed)) => {
            counters.timed_out.fetch_add(1, Ordering::Relaxed);
            crate::listen::trace!(warn, "handler on {channel:?} timed out after {timeout:?}");
            hooks.call(|hooks| hooks.on_handler_timeout(channel, timeout));
        }
        Err(join_error) if join_error.is_panic() => {
            counters.panicked.fetch_add(1, Ordering::Relaxed);
            crate::listen::trace!(error, "handler on {channel:?} panicked");
            hooks.call(|hooks| hooks.on_handler_panic(channel));
        }
        // Cancelled: only when the guard is dropped, which ends this loop.
        Err(_cancelled) => {}
    }
}
