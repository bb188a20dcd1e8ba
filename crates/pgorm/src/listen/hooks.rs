//! Observability hooks: [`ListenerHooks`], called by listeners and hubs at
//! every event an operator may want to count or log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::OrmError;
use crate::listen::event::PgNotification;
use crate::listen::trace;

/// Callbacks for what happens to a listener or hub. Every method has a
/// no-op default: implement the ones you need, and pass the value to
/// [`PgListenerConfig::hooks`](crate::listen::PgListenerConfig::hooks).
///
/// Hooks run on the listener's background task (handler hooks on the
/// handler's dispatcher): keep them short and never block. pgorm holds no
/// lock of its own while it calls a hook, so a hook may call back into the
/// listener or hub (`stats()`, subscribing, dropping a subscription). A
/// hook that panics is contained: the panic is counted
/// ([`ListenerStats::hook_panics`](crate::listen::ListenerStats::hook_panics),
/// [`HubStats::hook_panics`](crate::listen::HubStats::hook_panics)),
/// logged with the `tracing` feature, and the listener goes on. With the
/// `tracing` feature the same events are also logged.
///
/// On a reconnect the order is: [`on_disconnect`](Self::on_disconnect),
/// then [`on_reconnect_attempt`](Self::on_reconnect_attempt) for each
/// attempt, then [`on_reconnect`](Self::on_reconnect) once every channel is
/// listened to again.
pub trait ListenerHooks: Send + Sync + 'static {
    /// The first connection is up and listening. (To run queries on every
    /// new session before its notifications are handed out, use
    /// [`PgListenerConfig::on_connect`](crate::listen::PgListenerConfig::on_connect).)
    fn on_connect(&self) {}
    /// The connection was lost; `cause` says why.
    fn on_disconnect(&self, cause: &OrmError) {
        let _ = cause;
    }
    /// Reconnect attempt number `attempt` (from 1) starts after `delay`.
    fn on_reconnect_attempt(&self, attempt: u32, delay: Duration) {
        let _ = (attempt, delay);
    }
    /// A reconnect completed after `attempts` attempts; `generation` counts
    /// reconnects.
    fn on_reconnect(&self, generation: u64, attempts: u32) {
        let _ = (generation, attempts);
    }
    /// A notification was read from the connection.
    fn on_notification(&self, notification: &PgNotification) {
        let _ = notification;
    }
    /// A queue policy dropped `dropped` notifications. For a listener,
    /// `channel` is `None`; for a hub, it names the channel, and one call
    /// covers what that channel's subscriptions dropped of one batch, summed
    /// over them.
    fn on_drop(&self, channel: Option<&str>, dropped: u64) {
        let _ = (channel, dropped);
    }
    /// A `BlockProducer` queue blocked the connection for longer than the
    /// block timeout; the listener now drops the oldest until it catches up.
    fn on_block_timeout(&self, blocked_for: Duration) {
        let _ = blocked_for;
    }
    /// A handler returned an error.
    fn on_handler_error(&self, channel: &str, error: &(dyn std::error::Error + Send + Sync)) {
        let _ = (channel, error);
    }
    /// A handler panicked; the panic was contained.
    fn on_handler_panic(&self, channel: &str) {
        let _ = channel;
    }
    /// A handler ran longer than its timeout and was cancelled.
    fn on_handler_timeout(&self, channel: &str, after: Duration) {
        let _ = (channel, after);
    }
}

/// The optional hooks of a configuration, and how many of their calls
/// panicked. `Debug` says only whether there are some.
///
/// Every hook call goes through [`call`](Self::call): the one place where
/// hook code runs, contained, so that a panicking hook is counted and
/// logged instead of taking down the task that called it. Callers hold no
/// pgorm lock while they call.
#[derive(Clone, Default)]
pub(crate) struct HookSlot {
    hooks: Option<Arc<dyn ListenerHooks>>,
    panics: Arc<AtomicU64>,
}

impl std::fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.hooks.is_some() {
            "Some(..)"
        } else {
            "None"
        })
    }
}

impl HookSlot {
    pub(crate) fn new(hooks: impl ListenerHooks) -> Self {
        HookSlot {
            hooks: Some(Arc::new(hooks)),
            panics: Arc::default(),
        }
    }

    /// Calls `event` on the hooks, if there are any. A panic is caught,
    /// counted and logged.
    pub(crate) fn call(&self, event: impl FnOnce(&dyn ListenerHooks)) {
        if let Some(hooks) = &self.hooks {
            if contain(|| event(hooks.as_ref())).is_none() {
                self.panics.fetch_add(1, Ordering::Relaxed);
                trace!(error, "a listener hook panicked; the panic was contained");
            }
        }
    }

    /// Whether there are hooks to call.
    pub(crate) fn is_set(&self) -> bool {
        self.hooks.is_some()
    }

    /// How many hook calls panicked.
    pub(crate) fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }
}

/// Runs user code, catching a panic: `None` if it panicked. Nothing that
/// user code can observe is left half-changed by pgorm across this call
/// (callers hold no lock), so unwind safety is asserted.
pub(crate) fn contain<R>(user_code: impl FnOnce() -> R) -> Option<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(user_code)).ok()
}

/// Shared hooks: keep an `Arc` to read what they recorded.
impl<H: ListenerHooks> ListenerHooks for Arc<H> {
    fn on_connect(&self) {
        H::on_connect(self);
    }
    fn on_disconnect(&self, cause: &OrmError) {
        H::on_disconnect(self, cause);
    }
    fn on_reconnect_attempt(&self, attempt: u32, delay: Duration) {
        H::on_reconnect_attempt(self, attempt, delay);
    }
    fn on_reconnect(&self, generation: u64, attempts: u32) {
        H::on_reconnect(self, generation, attempts);
    }
    fn on_notification(&self, notification: &PgNotification) {
        H::on_notification(self, notification);
    }
    fn on_drop(&self, channel: Option<&str>, dropped: u64) {
        H::on_drop(self, channel, dropped);
    }
    fn on_block_timeout(&self, blocked_for: Duration) {
        H::on_block_timeout(self, blocked_for);
    }
    fn on_handler_error(&self, channel: &str, error: &(dyn std::error::Error + Send + Sync)) {
        H::on_handler_error(self, channel, error);
    }
    fn on_handler_panic(&self, channel: &str) {
        H::on_handler_panic(self, channel);
    }
    fn on_handler_timeout(&self, channel: &str, after: Duration) {
        H::on_handler_timeout(self, channel, after);
    }
}
