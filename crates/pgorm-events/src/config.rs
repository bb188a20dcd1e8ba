//! Settings: [`EventsConfig`] (where the tables live, how long completed
//! events are kept) and [`WorkerConfig`] (how a worker pool claims and
//! retries).

use std::sync::Arc;
use std::time::Duration;

use crate::error::{EventsError, EventsResult};
use crate::hooks::EventHooks;

/// Where the event tables live and what happens to completed events.
///
/// ```
/// use std::time::Duration;
/// use pgorm_events::EventsConfig;
///
/// let config = EventsConfig::new()
///     .schema("billing_events")
///     .keep_completed(Duration::from_secs(3600));
/// assert_eq!(config.schema_name(), "billing_events");
/// assert_eq!(config.wakeup_channel(), "pgorm_events.billing_events");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventsConfig {
    schema: String,
    keep_completed: Option<Duration>,
}

/// The longest schema name accepted, so the wake-up channel
/// (`pgorm_events.<schema>`) stays within PostgreSQL's 63-byte limit.
pub const MAX_SCHEMA_LEN: usize = 50;

/// The largest [`WorkerConfig::concurrency`] accepted: a pool holds up to
/// twice that many events, counted by a semaphore, whose limit this is half
/// of.
pub const MAX_CONCURRENCY: usize = tokio::sync::Semaphore::MAX_PERMITS / 2;

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            schema: "pgorm_events".to_owned(),
            keep_completed: None,
        }
    }
}

impl EventsConfig {
    /// The defaults: schema `pgorm_events`, completed events deleted at once.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The schema holding the tables (default `pgorm_events`). It is always
    /// quoted, so its case and characters are kept as given. At most
    /// [`MAX_SCHEMA_LEN`] bytes, no NUL and no `$`.
    #[must_use]
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Keep completed events in `completed_events` for `retention` (pruned
    /// in batches by worker pools) instead of deleting them at once (the
    /// default).
    #[must_use]
    pub fn keep_completed(mut self, retention: Duration) -> Self {
        self.keep_completed = Some(retention);
        self
    }

    /// The schema name, as given.
    pub fn schema_name(&self) -> &str {
        &self.schema
    }

    /// How long completed events are kept; `None` when they are deleted at
    /// once.
    pub fn completed_retention(&self) -> Option<Duration> {
        self.keep_completed
    }

    /// The channel wake-ups are sent on: `pgorm_events.<schema>`.
    pub fn wakeup_channel(&self) -> String {
        format!("pgorm_events.{}", self.schema)
    }

    pub(crate) fn validate(&self) -> EventsResult<()> {
        let schema = &self.schema;
        if schema.is_empty() {
            return Err(EventsError::setting("schema", "is empty"));
        }
        if schema.len() > MAX_SCHEMA_LEN {
            return Err(EventsError::setting(
                "schema",
                format!("is {} bytes; at most {MAX_SCHEMA_LEN}", schema.len()),
            ));
        }
        if schema.contains('\0') || schema.contains('$') {
            return Err(EventsError::setting(
                "schema",
                "must not contain a NUL byte or `$`",
            ));
        }
        Ok(())
    }
}

/// How a worker pool claims, leases, retries and stops.
///
/// Every setting has a documented default; [`EventWorkers::start`]
/// validates them.
///
/// [`EventWorkers::start`]: crate::EventWorkers::start
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    pub(crate) hooks: HooksSlot,
    pub(crate) concurrency: usize,
    pub(crate) max_batch: usize,
    pub(crate) lease: Duration,
    pub(crate) handler_timeout: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) prune_interval: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            hooks: HooksSlot(None),
            concurrency: 8,
            max_batch: 100,
            lease: Duration::from_secs(30),
            handler_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_secs(2),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(3600),
            shutdown_timeout: Duration::from_secs(30),
            prune_interval: Duration::from_secs(60),
        }
    }
}

impl WorkerConfig {
    /// The defaults, as documented on each method.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How many handlers run at once (default 8). A claim takes at most
    /// as many events as there are free slots. A slot frees when its
    /// handler returns, while the completion is still being written (with
    /// the pool's next claim while it is busy), so a pool holds at most
    /// twice this many events at a time. At most [`MAX_CONCURRENCY`].
    #[must_use]
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// The most events one claim statement takes (default 100).
    #[must_use]
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch;
        self
    }

    /// How long a claim holds an event before another worker may take it
    /// (default 30 s). Renewed every third of it while the handler runs, so
    /// only a dead or stalled pool loses its leases. At least 100 ms.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long a handler may run before it is cancelled and the attempt
    /// counts as failed (default 5 minutes).
    #[must_use]
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = timeout;
        self
    }

    /// The polling fallback (default 2 s): with no wake-up, the pool looks
    /// for due events after a random time between 80% and 120% of this, so
    /// pools do not poll in step. A missed wake-up delays work by at most
    /// this much.
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Retry delays (default 1 s doubling up to 1 hour): the retry after
    /// attempt `n` waits `base · 2^(n-1)`, capped at `max`, minus a random
    /// jitter of up to 25%.
    #[must_use]
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    /// How long a graceful [`shutdown`](crate::EventWorkers::shutdown) lets
    /// running handlers finish (default 30 s) before it cancels them and
    /// releases their events (the release itself gets up to a lease). Zero
    /// cancels running handlers at once.
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// How often completed events past their retention are pruned (default
    /// 60 s; only with [`EventsConfig::keep_completed`]).
    #[must_use]
    pub fn prune_interval(mut self, interval: Duration) -> Self {
        self.prune_interval = interval;
        self
    }

    /// Observes every outcome (default: none).
    #[must_use]
    pub fn hooks(mut self, hooks: impl EventHooks) -> Self {
        self.hooks = HooksSlot(Some(Arc::new(hooks)));
        self
    }

    pub(crate) fn validate(&self) -> EventsResult<()> {
        if self.concurrency == 0 {
            return Err(EventsError::setting("concurrency", "must be at least 1"));
        }
        // The pool holds up to twice this many events, counted by a
        // semaphore.
        if self.concurrency > MAX_CONCURRENCY {
            return Err(EventsError::setting(
                "concurrency",
                format!("must be at most {MAX_CONCURRENCY}"),
            ));
        }
        if self.max_batch == 0 {
            return Err(EventsError::setting("max_batch", "must be at least 1"));
        }
        if self.lease < Duration::from_millis(100) {
            return Err(EventsError::setting("lease", "must be at least 100 ms"));
        }
        if self.handler_timeout.is_zero() {
            return Err(EventsError::setting("handler_timeout", "must not be zero"));
        }
        if self.poll_interval < Duration::from_millis(10) {
            return Err(EventsError::setting(
                "poll_interval",
                "must be at least 10 ms",
            ));
        }
        if self.backoff_base > self.backoff_max {
            return Err(EventsError::setting("backoff", "base must not exceed max"));
        }
        if self.prune_interval.is_zero() {
            return Err(EventsError::setting("prune_interval", "must not be zero"));
        }
        Ok(())
    }
}

/// The hooks of a pool, if any (a newtype so the config stays `Debug`).
#[derive(Clone)]
pub(crate) struct HooksSlot(pub(crate) Option<Arc<dyn EventHooks>>);

impl std::fmt::Debug for HooksSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        assert!(EventsConfig::new().validate().is_ok());
        assert!(EventsConfig::new().schema("").validate().is_err());
        assert!(EventsConfig::new().schema("a$b").validate().is_err());
        assert!(EventsConfig::new()
            .schema("x".repeat(51))
            .validate()
            .is_err());
        assert!(EventsConfig::new()
            .schema("Odd \"name\"")
            .validate()
            .is_ok());
    }

    #[test]
    fn worker_settings_are_checked() {
        assert!(WorkerConfig::new().validate().is_ok());
        assert!(WorkerConfig::new().concurrency(0).validate().is_err());
        assert!(WorkerConfig::new()
            .lease(Duration::from_millis(1))
            .validate()
            .is_err());
        assert!(WorkerConfig::new()
            .backoff(Duration::from_secs(2), Duration::from_secs(1))
            .validate()
            .is_err());
    }
}
