//! pgorm-events: durable events on PostgreSQL. A table is the queue, so an
//! event published in a transaction exists if and only if that transaction
//! commits; NOTIFY wakes workers at once, a jittered poll covers any lost
//! wake-up, and leased claims make sure a crashed worker's events are taken
//! again and settled once.
//!
//! # Quick start
//!
//! ```
//! use pgorm::PgClient;
//! use pgorm_events::{EventWorkers, Events, EventsConfig, NewEvent, Router, WorkerConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let url = pgorm_testkit::TestServer::shared().create_database().await?;
//! let client = PgClient::connect(&url).await?;
//! let events = Events::new(EventsConfig::new())?;
//! events.migrate(&client).await?; // idempotent, versioned
//!
//! let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
//! let router = Router::new().on("order.*", move |event| {
//!     let seen_tx = seen_tx.clone();
//!     async move {
//!         seen_tx.send(event.event_type)?;
//!         Ok(())
//!     }
//! });
//! let workers = EventWorkers::start(client.clone(), events.clone(), router, WorkerConfig::new()).await?;
//!
//! let tx = client.transaction().await?;
//! events.publish(&tx, NewEvent::new("order.created", &serde_json::json!({"id": 1}))?).await?;
//! tx.commit().await?;
//!
//! assert_eq!(seen.recv().await.as_deref(), Some("order.created"));
//! workers.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! - **At least once.** A committed event is handled until a handler
//!   returns `Ok` and the completion is written, or it is dead. A handler
//!   can run more than once for one event (its worker died after the side
//!   effect, or its lease expired while it ran): make handlers idempotent.
//! - **Exactly-once effects for database writes of transactional
//!   handlers** ([`Router::on_transactional`]): the writes and the
//!   completion commit together, fenced by the lease.
//! - **One accepted outcome per attempt.** Outcomes are fenced by the lease
//!   token: a worker whose lease expired cannot complete or fail the event.
//! - **No ordering across workers.** Due events are claimed in
//!   `(priority, run_at, id)` order, but handlers run concurrently and
//!   retries go back in time order, so completion order is not publish
//!   order.
//! - **Never early.** An event does not start before its `run_at` by the
//!   server's clock.
//!
//! # What is here
//!
//! | item | what it is |
//! |---|---|
//! | [`Events`] | the tables of one schema: `migrate`, `publish`, `publish_batch`, `claim`/`complete`/`fail`, `stats`, dead events |
//! | [`NewEvent`], [`Published`], [`BatchPublished`] | what to publish and what a publish did |
//! | [`Router`] | exact, wildcard and prefix routes; `include` sub-routers |
//! | [`EventWorkers`], [`WorkerConfig`] | a worker pool and its settings |
//! | [`QueueStats`], [`WorkerStats`], [`EventHooks`] | numbers to watch, and callbacks on every outcome |
//! | [`EventsError`] | the one error type |

#![warn(missing_docs)]

mod backoff;
mod cached;
mod config;
mod error;
mod event;
mod events;
mod hooks;
mod router;
mod sql;
mod stats;
mod worker;

#[cfg(feature = "nats")]
pub mod relay;

pub use config::{EventsConfig, WorkerConfig, MAX_CONCURRENCY, MAX_SCHEMA_LEN};
pub use error::{EventsError, EventsResult, HandlerError};
pub use event::{ClaimedEvent, DeadEvent, Event, NewEvent, DEFAULT_MAX_ATTEMPTS};
pub use events::{BatchPublished, Events, Published};
pub use hooks::{Claim, EventHooks, Outcome, OutcomeKind};
pub use router::Router;
pub use stats::{QueueStats, TypeQueueStats, TypeWorkerStats, WorkerStats};
pub use worker::{EventWorkers, ShutdownReport};
