//! [`Router`]: which handler runs an event, by exact type, wildcard pattern
//! or prefix, with sub-routers included under a prefix.
//!
//! Patterns are dot-separated. In a pattern given to [`Router::on`], a `*`
//! segment matches exactly one segment and a final `**` segment matches one
//! or more; anything else matches itself. [`Router::on_prefix`] matches every
//! type that starts with the given text.
//!
//! One handler runs per event: an exact route beats a wildcard, a wildcard
//! with more literal segments beats one with fewer (then the earlier
//! registered), and wildcards beat prefixes (the longest prefix wins). An
//! event that matches nothing is not dropped: the attempt fails with "no
//! route", is counted in [`WorkerStats::unrouted`](crate::WorkerStats), and
//! is retried until it is dead, where it stays visible.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use pgorm::PgTransaction;

use crate::error::{EventsError, EventsResult, HandlerError};
use crate::event::Event;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

pub(crate) type PlainHandler =
    Arc<dyn Fn(Event) -> BoxFuture<Result<(), HandlerError>> + Send + Sync>;
pub(crate) type TransactionalHandler = Arc<
    dyn Fn(Event, PgTransaction) -> BoxFuture<Result<PgTransaction, HandlerError>> + Send + Sync,
>;

/// A registered handler.
#[derive(Clone)]
pub(crate) enum Handler {
    Plain(PlainHandler),
    Transactional(TransactionalHandler),
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Handler::Plain(_) => "Handler::Plain",
            Handler::Transactional(_) => "Handler::Transactional",
        })
    }
}

#[derive(Debug, Clone)]
struct Wildcard {
    pattern: String,
    segments: Vec<String>,
    handler: Handler,
}

impl Wildcard {
    fn literal_segments(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| *s != "*" && *s != "**")
            .count()
    }

    fn matches(&self, event_type: &str) -> bool {
        let parts: Vec<&str> = event_type.split('.').collect();
        let mut index = 0;
        for (position, segment) in self.segments.iter().enumerate() {
            if segment == "**" && position + 1 == self.segments.len() {
                return parts.len() > index;
            }
            let Some(part) = parts.get(index) else {
                return false;
            };
            if segment != "*" && segment != part {
                return false;
            }
            index += 1;
        }
        index == parts.len()
    }
}

/// Maps event types to handlers. Build it with the `on*` methods and
/// [`include`](Self::include), then give it to
/// [`EventWorkers::start`](crate::EventWorkers::start).
///
/// ```
/// use pgorm_events::Router;
///
/// let billing = Router::new()
///     .on("invoice.paid", |event| async move {
///         println!("paid: {}", event.payload);
///         Ok(())
///     });
/// let router = Router::new()
///     .on("order.*", |_event| async { Ok(()) })
///     .on_prefix("audit.", |_event| async { Ok(()) })
///     .include("billing", billing);
///
/// assert_eq!(router.route_of("billing.invoice.paid").as_deref(), Some("billing.invoice.paid"));
/// assert_eq!(router.route_of("order.created").as_deref(), Some("order.*"));
/// assert_eq!(router.route_of("order.created.late"), None);
/// assert_eq!(router.route_of("audit.login.failed").as_deref(), Some("audit.*"));
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Router {
    exact: HashMap<String, Handler>,
    wildcards: Vec<Wildcard>,
    prefixes: Vec<(String, Handler)>,
    errors: Vec<String>,
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `handler` for events whose type matches `pattern` (exact, or
    /// with `*`/`**` segments). The event is done when the handler returns
    /// `Ok`; an `Err`, a panic or a timeout fails the attempt.
    pub fn on<F, Fut>(self, pattern: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let handler: PlainHandler = Arc::new(move |event| Box::pin(handler(event)));
        self.add(pattern.into(), Handler::Plain(handler))
    }

    /// Runs `handler` inside the transaction that marks the event done: the
    /// handler gets the transaction, writes through it, and hands it back;
    /// its writes and the completion then commit together. If the handler
    /// fails (or the lease was lost), the transaction rolls back, writes
    /// included. The handler must not commit it.
    ///
    /// ```
    /// use pgorm::GenericClient;
    /// use pgorm_events::Router;
    ///
    /// let router = Router::new().on_transactional("order.paid", |event, tx| async move {
    ///     tx.execute("INSERT INTO ledger (event_id) VALUES ($1)", &[&event.id]).await?;
    ///     Ok(tx)
    /// });
    /// # let _ = router;
    /// ```
    pub fn on_transactional<F, Fut>(self, pattern: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Event, PgTransaction) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<PgTransaction, HandlerError>> + Send + 'static,
    {
        let handler: TransactionalHandler = Arc::new(move |event, tx| Box::pin(handler(event, tx)));
        self.add(pattern.into(), Handler::Transactional(handler))
    }

    /// Runs `handler` for every event whose type starts with `prefix`
    /// (plain text, no wildcards).
    pub fn on_prefix<F, Fut>(mut self, prefix: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let prefix = prefix.into();
        if prefix.is_empty() {
            self.errors.push("an empty prefix".to_owned());
            return self;
        }
        let handler: PlainHandler = Arc::new(move |event| Box::pin(handler(event)));
        self.prefixes.push((prefix, Handler::Plain(handler)));
        self
    }

    /// Adds every route of `router` under `prefix`: its pattern `p` becomes
    /// `prefix.p` (and its prefix `q` becomes `prefix.q`). An empty
    /// `prefix` adds them as they are.
    pub fn include(mut self, prefix: &str, router: Router) -> Self {
        let join = |pattern: &str| {
            if prefix.is_empty() {
                pattern.to_owned()
            } else {
                format!("{prefix}.{pattern}")
            }
        };
        self.errors.extend(router.errors);
        for (pattern, handler) in router.exact {
            self = self.add(join(&pattern), handler);
        }
        for wildcard in router.wildcards {
            self = self.add(join(&wildcard.pattern), wildcard.handler);
        }
        for (pattern, handler) in router.prefixes {
            self.prefixes.push((join(&pattern), handler));
        }
        self
    }

    fn add(mut self, pattern: String, handler: Handler) -> Self {
        if pattern.is_empty() {
            self.errors.push("an empty pattern".to_owned());
            return self;
        }
        let segments: Vec<String> = pattern.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            self.errors
                .push(format!("pattern {pattern:?} has an empty segment"));
            return self;
        }
        if let Some(position) = segments.iter().position(|s| s == "**") {
            if position + 1 != segments.len() {
                self.errors.push(format!(
                    "pattern {pattern:?}: `**` must be the last segment"
                ));
                return self;
            }
        }
        let wild = segments.iter().any(|s| s == "*" || s == "**");
        if wild {
            if self.wildcards.iter().any(|w| w.pattern == pattern) {
                self.errors
                    .push(format!("pattern {pattern:?} is registered twice"));
                return self;
            }
            self.wildcards.push(Wildcard {
                pattern,
                segments,
                handler,
            });
            // Most literal segments first; stable, so earlier wins ties.
            self.wildcards
                .sort_by_key(|w| std::cmp::Reverse(w.literal_segments()));
        } else if self.exact.insert(pattern.clone(), handler).is_some() {
            self.errors
                .push(format!("pattern {pattern:?} is registered twice"));
        }
        self
    }

    /// The pattern (or `prefix*` for a prefix route) that would run an event
    /// of `event_type`, if any.
    pub fn route_of(&self, event_type: &str) -> Option<String> {
        if self.exact.contains_key(event_type) {
            return Some(event_type.to_owned());
        }
        if let Some(wildcard) = self.wildcards.iter().find(|w| w.matches(event_type)) {
            return Some(wildcard.pattern.clone());
        }
        self.longest_prefix(event_type)
            .map(|(prefix, _)| format!("{prefix}*"))
    }

    pub(crate) fn resolve(&self, event_type: &str) -> Option<&Handler> {
        if let Some(handler) = self.exact.get(event_type) {
            return Some(handler);
        }
        if let Some(wildcard) = self.wildcards.iter().find(|w| w.matches(event_type)) {
            return Some(&wildcard.handler);
        }
        self.longest_prefix(event_type).map(|(_, handler)| handler)
    }

    fn longest_prefix(&self, event_type: &str) -> Option<&(String, Handler)> {
        self.prefixes
            .iter()
            .filter(|(prefix, _)| event_type.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
    }

    pub(crate) fn validate(&self) -> EventsResult<()> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(EventsError::setting("router", self.errors.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ok(_: Event) -> Result<(), HandlerError> {
        Ok(())
    }

    #[test]
    fn exact_beats_wildcard_beats_prefix() {
        let router = Router::new()
            .on_prefix("order.", ok)
            .on("order.*", ok)
            .on("order.created", ok);
        assert_eq!(
            router.route_of("order.created").as_deref(),
            Some("order.created")
        );
        assert_eq!(router.route_of("order.paid").as_deref(), Some("order.*"));
        assert_eq!(
            router.route_of("order.paid.late").as_deref(),
            Some("order.*")
        );
        assert_eq!(router.route_of("user.created"), None);
    }

    #[test]
    fn single_and_multi_segment_wildcards() {
        let router = Router::new().on("a.*.c", ok).on("a.**", ok).on("*.x", ok);
        assert_eq!(router.route_of("a.b.c").as_deref(), Some("a.*.c"));
        assert_eq!(router.route_of("a.b.d").as_deref(), Some("a.**"));
        assert_eq!(router.route_of("a").as_deref(), None);
        assert_eq!(router.route_of("z.x").as_deref(), Some("*.x"));
        assert_eq!(router.route_of("z.y.x"), None);
    }

    #[test]
    fn include_puts_routes_under_a_prefix() {
        let inner = Router::new()
            .on("paid", ok)
            .on("refund.*", ok)
            .on_prefix("tmp", ok);
        let router = Router::new().include("billing", Router::new().include("invoice", inner));
        assert_eq!(
            router.route_of("billing.invoice.paid").as_deref(),
            Some("billing.invoice.paid")
        );
        assert_eq!(
            router.route_of("billing.invoice.refund.x").as_deref(),
            Some("billing.invoice.refund.*")
        );
        assert_eq!(
            router.route_of("billing.invoice.tmp42").as_deref(),
            Some("billing.invoice.tmp*")
        );
        assert_eq!(router.route_of("paid"), None);
        assert!(router.validate().is_ok());
    }

    #[test]
    fn bad_patterns_are_reported_at_start() {
        assert!(Router::new().on("", ok).validate().is_err());
        assert!(Router::new().on("a..b", ok).validate().is_err());
        assert!(Router::new().on("a.**.b", ok).validate().is_err());
        assert!(Router::new().on("a", ok).on("a", ok).validate().is_err());
    }
}
