//! What is stored and handed to handlers: [`NewEvent`] (to publish),
//! [`Event`] (a claimed event as a handler sees it), [`ClaimedEvent`] (an
//! event with the lease that fences its outcome), [`DeadEvent`].

use std::time::{Duration, SystemTime};

use pgorm::Row;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{EventsError, EventsResult};

/// The default of [`NewEvent::max_attempts`].
pub const DEFAULT_MAX_ATTEMPTS: i32 = 25;

/// An event to publish: a type, a JSON payload and options.
///
/// ```
/// use std::time::Duration;
/// use pgorm_events::NewEvent;
///
/// let event = NewEvent::new("order.created", &serde_json::json!({"order": 7}))?
///     .delay(Duration::from_secs(5))
///     .max_attempts(3)
///     .priority(-1)
///     .idempotency_key("order-7-created");
/// assert_eq!(event.event_type(), "order.created");
/// # Ok::<(), pgorm_events::EventsError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct NewEvent {
    pub(crate) event_type: String,
    pub(crate) payload: String,
    pub(crate) priority: i16,
    pub(crate) run_at: Option<SystemTime>,
    pub(crate) delay: Option<Duration>,
    pub(crate) max_attempts: i32,
    pub(crate) idempotency_key: Option<String>,
}

impl NewEvent {
    /// An event of `event_type` with `payload` encoded as JSON, due now.
    ///
    /// # Errors
    /// [`EventsError::Encode`] when the payload cannot be encoded.
    pub fn new(event_type: impl Into<String>, payload: &impl Serialize) -> EventsResult<NewEvent> {
        let payload =
            serde_json::to_string(payload).map_err(|source| EventsError::Encode { source })?;
        Ok(NewEvent {
            event_type: event_type.into(),
            payload,
            priority: 0,
            run_at: None,
            delay: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            idempotency_key: None,
        })
    }

    /// Not before `run_at` (the server's clock decides). Replaces a
    /// [`delay`](Self::delay).
    pub fn run_at(mut self, run_at: SystemTime) -> Self {
        self.run_at = Some(run_at);
        self.delay = None;
        self
    }

    /// Not before `delay` from the moment the server inserts it. Replaces a
    /// [`run_at`](Self::run_at).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self.run_at = None;
        self
    }

    /// How many attempts before the event is dead (default 25, at least 1).
    pub fn max_attempts(mut self, max_attempts: i32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Lower runs first among due events (default 0).
    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }

    /// While an event with this key is queued, retrying or running, a
    /// publish with the same key inserts nothing and says so
    /// ([`Published::Duplicate`](crate::Published::Duplicate)). Once the
    /// event is completed or dead, the key is free again.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// The event type.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    pub(crate) fn validate(&self) -> EventsResult<()> {
        if self.event_type.is_empty() {
            return Err(EventsError::setting("event_type", "is empty"));
        }
        if self.max_attempts < 1 {
            return Err(EventsError::setting("max_attempts", "must be at least 1"));
        }
        if self.event_type.contains('\0') || self.payload.contains('\0') {
            return Err(EventsError::setting(
                "event",
                "type and payload must not contain NUL",
            ));
        }
        Ok(())
    }

    pub(crate) fn delay_secs(&self) -> Option<f64> {
        self.delay.map(|delay| delay.as_secs_f64())
    }
}

/// An event as a handler sees it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Event {
    /// The event's id (stable across retries, dead and re-queue).
    pub id: i64,
    /// Its type, as published.
    pub event_type: String,
    /// Its payload.
    pub payload: serde_json::Value,
    /// This attempt's number, from 1.
    pub attempt: i32,
    /// The attempt after which a failure makes it dead.
    pub max_attempts: i32,
    /// Its priority (lower first).
    pub priority: i16,
    /// When it was due.
    pub run_at: SystemTime,
    /// When it was published.
    pub created_at: SystemTime,
    /// Its idempotency key, if it has one.
    pub idempotency_key: Option<String>,
}

impl Event {
    /// The payload decoded as `T`.
    ///
    /// # Errors
    /// serde_json's error when it does not fit `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.payload)
    }
}

/// An event claimed under a lease, from [`Events::claim`](crate::Events::claim).
///
/// Its outcome ([`Events::complete`](crate::Events::complete),
/// [`Events::fail`](crate::Events::fail)) is accepted only while the lease
/// it carries is still the event's lease.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedEvent {
    pub(crate) event: Event,
    pub(crate) lease_token: i64,
}

impl ClaimedEvent {
    /// The event.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// The lease token that fences its outcome.
    pub fn lease_token(&self) -> i64 {
        self.lease_token
    }

    pub(crate) fn from_row(row: &Row) -> EventsResult<ClaimedEvent> {
        let payload: String = row.get(2);
        let payload =
            serde_json::from_str(&payload).map_err(|source| EventsError::Encode { source })?;
        Ok(ClaimedEvent {
            event: Event {
                id: row.get(0),
                event_type: row.get(1),
                payload,
                priority: row.get(3),
                attempt: row.get(4),
                max_attempts: row.get(5),
                run_at: row.get(6),
                created_at: row.get(7),
                idempotency_key: row.get(8),
            },
            lease_token: row.get(9),
        })
    }
}

/// An event that used up its attempts, with its last error.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DeadEvent {
    /// The event's id.
    pub id: i64,
    /// Its type.
    pub event_type: String,
    /// Its payload. If serde_json cannot decode the stored JSON (a number
    /// beyond `f64`, say), this is the stored text as a JSON string.
    pub payload: serde_json::Value,
    /// How many attempts were made.
    pub attempts: i32,
    /// Its attempt limit.
    pub max_attempts: i32,
    /// The error of the last attempt.
    pub last_error: String,
    /// Its idempotency key, if it had one.
    pub idempotency_key: Option<String>,
    /// When it was published.
    pub created_at: SystemTime,
    /// When it died.
    pub died_at: SystemTime,
}
