//! What an application uses every day: `use pgorm::prelude::*;`.
//!
//! With the `listen` feature it also brings in what the LISTEN/NOTIFY guides
//! use: the listener, the hub and its subscriptions, handlers, hooks,
//! publishing, and (with `json`) typed channels.

#[cfg(feature = "json")]
pub use crate::changes::{Change, ChangeFeed};
pub use crate::client::{GenericClient, RowStream, StreamingClient};
pub use crate::error::{OrmError, OrmResult, ValidationError};
#[cfg(feature = "listen")]
pub use crate::listen::{
    notify, notify_batch, ChannelStats, HandlerGuard, HandlerOptions, HandlerStats, HubStats,
    ListenerEvent, ListenerHooks, ListenerSession, ListenerState, ListenerStats, NotificationBatch,
    PgListener, PgListenerConfig, PgListenerHandle, PgNotification, PgNotifyHub, QueuePolicy,
    Subscription, SubscriptionStats,
};
#[cfg(feature = "json")]
pub use crate::listen::{Channel, TypedEvent, TypedSubscription};
pub use crate::model::{FromRow, Model, ModelExt};
pub use crate::pg_client::{PgClient, PgTransaction};
pub use crate::pool::PoolConfig;
pub use tokio_postgres::Row;
