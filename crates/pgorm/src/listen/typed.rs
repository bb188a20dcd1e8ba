//! Typed channels (feature `json`): [`Channel<T>`] names a channel and the
//! type its payloads carry as JSON, for publishing and for hub subscriptions.

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::GenericClient;
use crate::error::{OrmError, OrmResult};
use crate::listen::channel::validate_channel;
use crate::listen::event::{ListenerEvent, PgNotification};
use crate::listen::hub::{PgNotifyHub, Subscription, SubscriptionStats};
use crate::listen::publish::notify;

/// A channel whose payloads are `T` as JSON. The name is validated once, at
/// [`new`](Self::new).
///
/// ```
/// use pgorm::listen::{Channel, PgNotifyHub};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// struct OrderPaid { order_id: i64, cents: i64 }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> pgorm::OrmResult<()> {
/// # let database_url = pgorm_testkit::TestServer::shared().url();
/// let orders = Channel::<OrderPaid>::new("orders")?;
/// let hub = PgNotifyHub::connect(&database_url).await?;
/// let mut paid = hub.subscribe_typed(&orders).await?;
///
/// let client = pgorm::PgClient::connect(&database_url).await?;
/// orders.notify(&client, &OrderPaid { order_id: 42, cents: 1999 }).await?;
/// assert_eq!(paid.next().await.unwrap()?, OrderPaid { order_id: 42, cents: 1999 });
/// # Ok(()) }
/// ```
pub struct Channel<T> {
    name: String,
    payload: PhantomData<fn() -> T>,
}

impl<T> Clone for Channel<T> {
    fn clone(&self) -> Self {
        Channel {
            name: self.name.clone(),
            payload: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Channel<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name)
            .field("payload", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> Channel<T> {
    /// Names a typed channel.
    ///
    /// # Errors
    /// [`OrmError::Validation`] for an invalid channel name.
    pub fn new(name: impl Into<String>) -> OrmResult<Self> {
        let name = name.into();
        validate_channel(&name)?;
        Ok(Channel {
            name,
            payload: PhantomData,
        })
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Serialises `value` to JSON and sends it (see
    /// [`notify`](crate::listen::notify): inside a transaction, delivered on
    /// commit).
    ///
    /// # Errors
    /// [`OrmError::Encode`] if `value` cannot be serialised,
    /// [`OrmError::Validation`] if the JSON is 8000 bytes or more.
    pub async fn notify<C: GenericClient + ?Sized>(&self, client: &C, value: &T) -> OrmResult<()> {
        let payload = serde_json::to_string(value).map_err(|source| OrmError::Encode {
            source: Box::new(source),
        })?;
        notify(client, &self.name, &payload).await
    }

    fn decode(&self, notification: &PgNotification) -> OrmResult<T> {
        serde_json::from_str(&notification.payload).map_err(|source| OrmError::Decode {
            channel: notification.channel.clone(),
            payload: notification.payload.clone(),
            source: Box::new(source),
        })
    }
}

/// An item of a [`TypedSubscription`]'s events: a decoded message or a gap
/// marker.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TypedEvent<T> {
    /// A decoded payload.
    Message(T),
    /// See [`ListenerEvent::Reconnected`].
    Reconnected {
        /// How many reconnects have completed.
        generation: u64,
    },
    /// See [`ListenerEvent::Lagged`].
    Lagged {
        /// How many notifications are missing here.
        dropped: u64,
    },
}

/// A hub subscription whose payloads are decoded as `T`. A payload that does
/// not decode is an [`OrmError::Decode`] for that one message (with the raw
/// payload), and the subscription goes on.
pub struct TypedSubscription<T> {
    channel: Channel<T>,
    subscription: Subscription,
}

impl<T> std::fmt::Debug for TypedSubscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedSubscription")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl<T: Serialize + DeserializeOwned> TypedSubscription<T> {
    /// The next message (markers passed over). `Some(Err(OrmError::Decode))`
    /// for a payload that is not a `T`; the next call goes on.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn next(&mut self) -> Option<OrmResult<T>> {
        let notification = self.subscription.next().await?;
        Some(notification.and_then(|n| self.channel.decode(&n)))
    }

    /// The next message or marker, in order.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn next_event(&mut self) -> Option<OrmResult<TypedEvent<T>>> {
        let event = self.subscription.next_event().await?;
        Some(event.and_then(|event| self.typed(event)))
    }

    fn typed(&self, event: ListenerEvent<Arc<PgNotification>>) -> OrmResult<TypedEvent<T>> {
        Ok(match event {
            ListenerEvent::Notification(n) => TypedEvent::Message(self.channel.decode(&n)?),
            ListenerEvent::Reconnected { generation } => TypedEvent::Reconnected { generation },
            ListenerEvent::Lagged { dropped } => TypedEvent::Lagged { dropped },
        })
    }

    /// The subscription's counters (see [`Subscription::stats`]); a payload
    /// that does not decode counts as delivered.
    pub fn stats(&self) -> SubscriptionStats {
        self.subscription.stats()
    }

    /// The untyped subscription underneath.
    pub fn into_inner(self) -> Subscription {
        self.subscription
    }
}

impl<T: Serialize + DeserializeOwned> Stream for TypedSubscription<T> {
    type Item = OrmResult<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        Pin::new(&mut this.subscription)
            .poll_next(cx)
            .map(|item| item.map(|n| n.and_then(|n| this.channel.decode(&n))))
    }
}

impl PgNotifyHub {
    /// Subscribes to a typed channel with the hub's default queue.
    ///
    /// # Errors
    /// As [`subscribe`](PgNotifyHub::subscribe).
    pub async fn subscribe_typed<T: Serialize + DeserializeOwned>(
        &self,
        channel: &Channel<T>,
    ) -> OrmResult<TypedSubscription<T>> {
        Ok(TypedSubscription {
            channel: channel.clone(),
            subscription: self.subscribe(channel.name()).await?,
        })
    }
}
