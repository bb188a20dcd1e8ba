//! [`RelayConfig`]: where and what the relay publishes, and its timings.

use std::time::Duration;

use super::{rules, RelayError};

/// The settings of a [`Relay`](super::Relay).
///
/// ```
/// use std::time::Duration;
/// use pgorm_events::relay::RelayConfig;
///
/// let config = RelayConfig::new("nats://127.0.0.1:4222")
///     .stream("ORDERS")
///     .subject_prefix("shop.events")
///     .rule("order.*")
///     .rule("invoice.**")
///     .takeover(Duration::from_secs(5));
/// // An event of type "order.created" goes to subject "shop.events.order.created".
/// assert_eq!(config.subject_of("order.created"), "shop.events.order.created");
/// ```
#[derive(Clone)]
pub struct RelayConfig {
    pub(crate) nats_url: String,
    pub(crate) stream: String,
    pub(crate) subject_prefix: String,
    pub(crate) rules: Vec<String>,
    pub(crate) batch_size: usize,
    pub(crate) poll_interval: Duration,
    pub(crate) takeover: Duration,
    pub(crate) ack_timeout: Duration,
    pub(crate) duplicate_window: Duration,
    pub(crate) create_stream: bool,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL can carry credentials: only its host part is shown.
        let host = self
            .nats_url
            .rsplit_once('@')
            .map_or(self.nats_url.as_str(), |(_, host)| host);
        f.debug_struct("RelayConfig")
            .field("nats_host", &host)
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("rules", &self.rules)
            .field("batch_size", &self.batch_size)
            .field("poll_interval", &self.poll_interval)
            .field("takeover", &self.takeover)
            .field("ack_timeout", &self.ack_timeout)
            .field("duplicate_window", &self.duplicate_window)
            .field("create_stream", &self.create_stream)
            .finish()
    }
}

impl RelayConfig {
    /// Defaults for the NATS server at `nats_url`: stream `PGORM_EVENTS`,
    /// subject prefix `events`, no rules yet, batches of 1,000, a 5 ms poll,
    /// 10 s takeover, 10 s ack timeout, a two-minute duplicate window, and
    /// the stream created when missing.
    pub fn new(nats_url: impl Into<String>) -> RelayConfig {
        RelayConfig {
            nats_url: nats_url.into(),
            stream: "PGORM_EVENTS".to_owned(),
            subject_prefix: "events".to_owned(),
            rules: Vec::new(),
            batch_size: 1000,
            poll_interval: Duration::from_millis(5),
            takeover: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(10),
            duplicate_window: Duration::from_secs(120),
            create_stream: true,
        }
    }

    /// The JetStream stream to publish to.
    pub fn stream(mut self, name: impl Into<String>) -> Self {
        self.stream = name.into();
        self
    }

    /// The subject prefix: an event of type `T` goes to `<prefix>.T`.
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subject_prefix = prefix.into();
        self
    }

    /// Adds a rule: events whose type matches `pattern` (exact, `a.*`,
    /// `a.**`; segments of ASCII letters, digits, `_` and `-`) are relayed.
    pub fn rule(mut self, pattern: impl Into<String>) -> Self {
        self.rules.push(pattern.into());
        self
    }

    /// Events per batch (published together, marked in one statement).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size;
        self
    }

    /// How often an idle relay looks for new events.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How soon a standby takes over after the active relay died (at least
    /// 1 s; the server's keepalive settings have a one-second grain). The
    /// lock's session sets the server-side `tcp_keepalives_*` and
    /// `tcp_user_timeout` from it, replacing any given in the URL's
    /// `options` on that one session.
    pub fn takeover(mut self, takeover: Duration) -> Self {
        self.takeover = takeover;
        self
    }

    /// How long to wait for JetStream's acknowledgement of a publish.
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// The duplicate window of a stream the relay creates. It must cover the
    /// longest time between a publish and its retry (a crash and restart).
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// Whether to create the stream (file storage, subjects `<prefix>.>`)
    /// when it does not exist. Off: it must exist and cover the subjects.
    pub fn create_stream(mut self, create: bool) -> Self {
        self.create_stream = create;
        self
    }

    /// The subject an event of type `event_type` is published to.
    pub fn subject_of(&self, event_type: &str) -> String {
        format!("{}.{event_type}", self.subject_prefix)
    }

    pub(crate) fn validate(&self) -> Result<(), RelayError> {
        let bad = |setting: &'static str, reason: &str| {
            Err(RelayError::Setting {
                setting,
                reason: reason.to_owned(),
            })
        };
        if self.nats_url.is_empty() {
            return bad("nats_url", "is empty");
        }
        if self.stream.is_empty()
            || !self
                .stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return bad(
                "stream",
                "must be ASCII letters, digits, `_` and `-`, not empty",
            );
        }
        rules::validate_prefix(&self.subject_prefix)?;
        if self.rules.is_empty() {
            return bad("rules", "at least one rule is needed");
        }
        for pattern in &self.rules {
            rules::rule(pattern)?;
        }
        if self.batch_size == 0 || self.batch_size > 100_000 {
            return bad("batch_size", "must be between 1 and 100000");
        }
        if self.poll_interval.is_zero() {
            return bad("poll_interval", "must not be zero");
        }
        if self.takeover < Duration::from_secs(1) {
            return bad("takeover", "must be at least 1 s");
        }
        if self.ack_timeout.is_zero() {
            return bad("ack_timeout", "must not be zero");
        }
        if self.duplicate_window < Duration::from_secs(1) {
            return bad("duplicate_window", "must be at least 1 s");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_rejected_and_debug_hides_credentials() {
        let ok = RelayConfig::new("nats://user:secret@127.0.0.1:4222").rule("a.*");
        assert!(ok.validate().is_ok());
        assert!(!format!("{ok:?}").contains("secret"));
        assert!(RelayConfig::new("nats://x").validate().is_err());
        assert!(ok.clone().stream("a.b").validate().is_err());
        assert!(ok.clone().subject_prefix("a.>").validate().is_err());
        assert!(ok.clone().rule("a b").validate().is_err());
        assert!(ok.clone().batch_size(0).validate().is_err());
        assert!(ok
            .clone()
            .takeover(Duration::from_millis(10))
            .validate()
            .is_err());
    }
}
