//! The one error type of pgorm-events, [`EventsError`].

use pgorm::OrmError;

/// The result type of every fallible pgorm-events operation.
pub type EventsResult<T> = Result<T, EventsError>;

/// The error a handler returns: any error, kept as the event's last error
/// (its `Display` text, with the text of each `source` appended).
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong in pgorm-events.
///
/// The lower-level error, when there is one, is kept as the
/// [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventsError {
    /// A statement failed or the connection was lost (pgorm's error, with
    /// the server's SQLSTATE when there is one).
    #[error("database error: {source}")]
    Database {
        /// pgorm's error.
        #[from]
        #[source]
        source: OrmError,
    },

    /// An event payload could not be encoded as JSON.
    #[error("event payload could not be encoded as JSON: {source}")]
    Encode {
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },

    /// A setting (of [`EventsConfig`](crate::EventsConfig),
    /// [`WorkerConfig`](crate::WorkerConfig), a [`Router`](crate::Router)
    /// or a [`NewEvent`](crate::NewEvent)) was rejected before anything was
    /// sent to the server.
    #[error("invalid setting {setting}: {reason}")]
    Setting {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The lease on an event had expired (and the event may have been taken
    /// by another worker) when its outcome was written: the outcome was not
    /// recorded. This is the fence that keeps a rescued event to one
    /// accepted outcome.
    #[error("the lease on event {id} was lost; its outcome was not recorded")]
    LeaseLost {
        /// The event's id.
        id: i64,
    },

    /// An operation did not finish in time, for instance the release of a
    /// stopping pool's unfinished events over a connection that was cut
    /// off without an error. What it left undone is undone: events it did
    /// not release are taken again when their leases expire.
    #[error("{operation} did not finish within {after:?}")]
    TimedOut {
        /// What did not finish.
        operation: &'static str,
        /// How long it was given.
        after: std::time::Duration,
    },

    /// The database holds a newer schema version than this release knows.
    #[error("schema version {found} is newer than the newest this release knows ({known})")]
    SchemaTooNew {
        /// The version found in the database.
        found: i32,
        /// The newest version this release ships.
        known: i32,
    },
}

impl EventsError {
    pub(crate) fn setting(setting: &'static str, reason: impl Into<String>) -> Self {
        EventsError::Setting {
            setting,
            reason: reason.into(),
        }
    }

    /// Whether this is [`EventsError::LeaseLost`].
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, EventsError::LeaseLost { .. })
    }
}

/// An error's text with its sources, as stored in `last_error`.
pub(crate) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}
