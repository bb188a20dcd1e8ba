//! LISTEN/NOTIFY (feature `listen`): [`PgListener`] receives notifications
//! on a dedicated connection; [`PgNotifyHub`] shares one connection among
//! many subscribers and runs handlers; [`notify`] and [`notify_batch`] send
//! them; [`ListenerHooks`] observes it all. With the `json` feature,
//! `Channel<T>` types the payloads.
//!
//! # Delivery semantics
//!
//! PostgreSQL delivers a notification to every session listening to its
//! channel when the sending transaction commits, in commit order, and never
//! for a rolled-back transaction. It is best-effort: a session that is not
//! connected when the notification is sent never gets it. pgorm makes every
//! loss visible instead of silent:
//!
//! - a reconnect puts a [`ListenerEvent::Reconnected`] marker in the stream,
//!   after every channel is listened to again: resync there;
//! - a full queue drops per [`QueuePolicy`], counts each drop in
//!   [`ListenerStats::dropped`], and puts one [`ListenerEvent::Lagged`]
//!   marker exactly where the gap is.
//!
//! [`PgListener::next`] skips the markers; [`PgListener::next_event`] shows
//! them.
//!
//! # Example
//!
//! ```
//! use pgorm::listen::{ListenerEvent, PgListener, PgListenerConfig, QueuePolicy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> pgorm::OrmResult<()> {
//! # let database_url = pgorm_testkit::TestServer::shared().url();
//! let config = PgListenerConfig::new()
//!     .channels(["cache_invalidate"])
//!     .queue_policy(QueuePolicy::DropOldest);
//! let mut listener = PgListener::connect_with(&database_url, config).await?;
//!
//! let client = pgorm::PgClient::connect(&database_url).await?;
//! pgorm::listen::notify(&client, "cache_invalidate", "user:7").await?;
//!
//! match listener.next_event().await {
//!     Some(Ok(ListenerEvent::Notification(n))) => assert_eq!(n.payload, "user:7"),
//!     Some(Ok(ListenerEvent::Reconnected { .. })) => { /* reload the whole cache */ }
//!     Some(Ok(ListenerEvent::Lagged { .. })) => { /* reload the whole cache */ }
//!     Some(Ok(_)) => {}
//!     Some(Err(error)) => return Err(error),
//!     None => {}
//! }
//! # Ok(()) }
//! ```

mod batch;
mod channel;
mod command;
mod config;
mod driver;
mod event;
mod fanout;
mod handler;
mod health;
mod hooks;
mod hub;
mod listener;
mod publish;
mod queue;
#[cfg(test)]
mod review_queue_tests;
mod router;
mod run;
mod session;
mod sink;
#[cfg(feature = "json")]
mod typed;

pub use batch::{ListenerBatch, NotificationRef};
pub use channel::{validate_channel, MAX_CHANNEL_LEN};
pub use config::{
    ListenerSession, PgListenerConfig, QueuePolicy, DEFAULT_APPLICATION_NAME,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_QUEUE_CAPACITY,
};
pub use event::{ListenerEvent, ListenerState, ListenerStats, PgNotification};
pub use fanout::NotificationBatch;
pub use handler::{HandlerGuard, HandlerOptions, HandlerStats};
pub use hooks::ListenerHooks;
pub use hub::{ChannelStats, HubStats, PgNotifyHub, Subscription, SubscriptionStats};
pub use listener::{PgListener, PgListenerEventStream, PgListenerHandle, PgListenerStream};
pub use publish::{notify, notify_batch, validate_payload, MAX_PAYLOAD_LEN};
#[cfg(feature = "json")]
pub use typed::{Channel, TypedEvent, TypedSubscription};

/// Logs through `tracing` with the `tracing` feature; compiles to nothing
/// (but still type-checks its arguments) without it.
macro_rules! trace {
    ($level:ident, $($arg:tt)+) => {{
        #[cfg(feature = "tracing")]
        tracing::$level!($($arg)+);
        #[cfg(not(feature = "tracing"))]
        if false {
            let _ = format_args!($($arg)+);
        }
    }};
}
pub(crate) use trace;
